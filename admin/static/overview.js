// Doorway admin, the overview: keeps the page live.
//
// 1. Live: the charts under [data-charts="live"] start with the last five minutes from /api/history, then
//    an EventSource on /api/live/stream appends each sample (once a second) and updates every [data-key]
//    element (data-format: num with data-digits/data-unit, text, yesno, up) and the "not running" banners.
//    If the stream ends or breaks, /api/live is asked: 401 means the session ended (to the login page);
//    otherwise the stream is opened again a few seconds later.
// 2. History: the charts under [data-charts="history"] come from /api/history for the chosen span and are
//    refreshed every minute, with the events list.
"use strict";

(function () {
  const HISTORY_REFRESH_MS = 60000;
  const RECONNECT_MS = 5000;

  function charts(kind) {
    const root = document.querySelector('[data-charts="' + kind + '"]');
    if (!root) return [];
    return Array.prototype.map.call(root.querySelectorAll("canvas[data-chart]"), function (canvas) {
      return new window.DoorwayChart(canvas, JSON.parse(canvas.getAttribute("data-chart")));
    });
  }

  function formatValue(el, value) {
    const kind = el.getAttribute("data-format") || "num";
    if (kind === "text") return value === null || value === undefined || value === "" ? (el.hasAttribute("data-empty") ? el.getAttribute("data-empty") : "—") : String(value);
    if (kind === "yesno") return value === null || value === undefined ? "—" : value ? "yes" : "no";
    if (kind === "up") return value ? "Running" : "Not running";
    if (typeof value !== "number" || !isFinite(value)) return "—";
    const unit = el.getAttribute("data-unit");
    return value.toFixed(parseInt(el.getAttribute("data-digits") || "1", 10)) + (unit ? " " + unit : "");
  }

  function showSample(sample) {
    document.querySelectorAll("[data-key]").forEach(function (el) {
      const key = el.getAttribute("data-key");
      if (!(key in sample)) return;
      el.textContent = formatValue(el, sample[key]);
      if (el.getAttribute("data-format") === "up") el.className = "state " + (sample[key] ? "up" : "down");
    });
    document.querySelectorAll("[data-down]").forEach(function (el) {
      el.hidden = Boolean(sample[el.getAttribute("data-down") + "_up"]);
    });
  }

  function setLive(state, text) {
    const dot = document.querySelector("[data-live-state]");
    const label = document.querySelector("[data-live-text]");
    if (dot) dot.setAttribute("data-live-state", state);
    if (label) label.textContent = text;
  }

  function startLive(liveCharts) {
    let source = null;
    function connect() {
      source = new EventSource("/api/live/stream");
      source.onopen = function () { setLive("live", "Live: updated every second."); };
      source.onmessage = function (event) {
        const sample = JSON.parse(event.data);
        showSample(sample);
        liveCharts.forEach(function (chart) { chart.add(sample); });
      };
      source.addEventListener("ended", function () { source.close(); check(); });
      source.onerror = function () {
        // The browser reconnects by itself while it can; a refused stream (401, 503) closes it.
        if (source.readyState === EventSource.CLOSED) check();
        else setLive("lost", "Connection to the doorway lost; reconnecting…");
      };
    }
    function check() {
      setLive("lost", "Live updates stopped; reconnecting…");
      window.Doorway.fetchJSON("/api/live").then(function (sample) {
        showSample(sample);
        window.setTimeout(connect, RECONNECT_MS);
      }).catch(function () { window.setTimeout(check, RECONNECT_MS); });
    }
    connect();
  }

  function showEvents(events) {
    const list = document.querySelector("[data-events]");
    if (!list) return;
    list.textContent = "";
    events.slice(0, 20).forEach(function (e) {
      const item = document.createElement("li");
      item.className = "level-" + e.level;
      const time = document.createElement("time");
      time.textContent = window.Doorway.localTime(e.t);
      const source = document.createElement("span");
      source.className = "source";
      source.textContent = e.source;
      const message = document.createElement("span");
      message.className = "event-message";
      message.textContent = e.message;
      item.append(time, " ", source, " ", message);
      list.appendChild(item);
    });
    if (!events.length) {
      const item = document.createElement("li");
      item.className = "empty";
      item.textContent = "Nothing happened.";
      list.appendChild(item);
    }
  }

  function loadHistory(historyCharts, hours, withEvents) {
    const points = 300;
    return window.Doorway.fetchJSON("/api/history?hours=" + hours + "&points=" + points + "&events=20")
      .then(function (body) {
        // A line breaks where more than two and a half buckets pass without a sample.
        const options = { until: body.until, window: hours * 3600, gap: Math.max(30, body.bucket_s * 2.5) };
        historyCharts.forEach(function (chart) { chart.setData(body.samples, options); });
        if (withEvents) showEvents(body.events);
        return body;
      });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!window.DoorwayChart) return;
    const liveCharts = charts("live");
    const historyCharts = charts("history");
    const select = document.querySelector("[data-history-hours]");
    const hours = function () { return select ? parseFloat(select.value) : 24; };

    // Seed the live charts with what the history holds of the last five minutes, then go live.
    window.Doorway.fetchJSON("/api/history?hours=0.0834&points=60&events=0").then(function (body) {
      liveCharts.forEach(function (chart) { chart.setData(body.samples, { window: 300, gap: 15 }); });
    }).catch(function () { /* Charts start empty. */ }).then(function () {
      liveCharts.forEach(function (chart) { chart.until = null; chart.gap = 15; });
      startLive(liveCharts);
    });

    const refresh = function () { loadHistory(historyCharts, hours(), true).catch(function () { /* next time */ }); };
    refresh();
    window.setInterval(refresh, HISTORY_REFRESH_MS);
    if (select) select.addEventListener("change", refresh);
  });
})();
