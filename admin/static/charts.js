// Doorway admin: a small line chart on a <canvas>, without libraries (nothing is loaded from outside the
// doorway). One chart draws a few series of one unit against time: a legend with each series' latest
// value, a y axis with round ticks, a time axis in the browser's local time, gaps where a value is missing
// or samples stop. It redraws at the canvas's CSS size and the screen's pixel ratio whenever that changes.
//
//   const chart = new DoorwayChart(canvas, {title, unit, min, series: [{key, label, scale}]});
//   chart.setData(samples, {until, window, gap});   // samples: [{t: unix seconds, key: value, ...}]
//   chart.add(sample);                               // live: append, keep the last `window` seconds
"use strict";

(function () {
  const FONT = '12px system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", sans-serif';
  const TIME_STEPS = [5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

  function cssVar(name, fallback) {
    const value = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return value || fallback;
  }

  function niceStep(span, count) {
    const raw = span / Math.max(1, count);
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const n = raw / magnitude;
    return (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * magnitude;
  }

  function format(value, step) {
    const digits = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)));
    return value.toFixed(digits);
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function timeLabel(t, step) {
    const d = new Date(t * 1000);
    const hm = pad(d.getHours()) + ":" + pad(d.getMinutes());
    if (step < 60) return hm + ":" + pad(d.getSeconds());
    if (step < 86400 || d.getHours() !== 0 || d.getMinutes() !== 0) return hm;
    return d.getDate() + "/" + (d.getMonth() + 1);
  }

  function DoorwayChart(canvas, spec) {
    this.canvas = canvas;
    this.spec = spec;
    this.samples = [];
    this.window = 300;
    this.gap = 5;
    this.until = null;
    this.pending = false;
    const self = this;
    if (window.ResizeObserver) {
      new ResizeObserver(function () { self.draw(); }).observe(canvas);
    } else {
      window.addEventListener("resize", function () { self.draw(); });
    }
  }

  DoorwayChart.prototype.setData = function (samples, options) {
    this.samples = samples.filter(function (s) { return typeof s.t === "number"; });
    this.until = options.until || null;
    this.window = options.window || this.window;
    this.gap = options.gap || this.gap;
    this.draw();
  };

  DoorwayChart.prototype.add = function (sample) {
    if (typeof sample.t !== "number") return;
    this.samples.push(sample);
    const oldest = sample.t - this.window;
    while (this.samples.length && this.samples[0].t < oldest) this.samples.shift();
    this.until = null;
    this.schedule();
  };

  DoorwayChart.prototype.schedule = function () {
    if (this.pending) return;
    this.pending = true;
    const self = this;
    window.requestAnimationFrame(function () { self.pending = false; self.draw(); });
  };

  DoorwayChart.prototype.value = function (sample, series) {
    const v = sample[series.key];
    return typeof v === "number" && isFinite(v) ? v * (series.scale || 1) : null;
  };

  DoorwayChart.prototype.draw = function () {
    const canvas = this.canvas;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    const ratio = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    const fg = cssVar("--fg", "#1d1d1b");
    const muted = cssVar("--muted", "#5d5d58");
    const line = cssVar("--line", "#d9d9d4");
    const spec = this.spec;
    const self = this;
    const colours = spec.series.map(function (_, i) { return cssVar("--series-" + (i % 4 + 1), fg); });

    // Legend: title, then each series with its latest value.
    const last = this.samples.length ? this.samples[this.samples.length - 1] : null;
    let x = 4;
    let y = 10;
    ctx.fillStyle = fg;
    ctx.fillText(spec.title + " (" + spec.unit + ")", x, y);
    x += ctx.measureText(spec.title + " (" + spec.unit + ")").width + 12;
    spec.series.forEach(function (series, i) {
      const v = last ? self.value(last, series) : null;
      const text = series.label + (v === null ? "" : " " + v.toFixed(Math.abs(v) >= 100 ? 0 : 1));
      const w = ctx.measureText(text).width + 16;
      if (x + w > width) { x = 4; y += 16; }
      ctx.fillStyle = colours[i];
      ctx.fillRect(x, y - 4, 10, 8);
      ctx.fillStyle = muted;
      ctx.fillText(text, x + 14, y);
      x += w + 6;
    });

    const until = this.until || (last ? last.t : Date.now() / 1000);
    const since = until - this.window;
    const top = y + 14;
    const bottom = height - 18;
    let low = Infinity;
    let high = -Infinity;
    this.samples.forEach(function (sample) {
      if (sample.t < since) return;
      spec.series.forEach(function (series) {
        const v = self.value(sample, series);
        if (v !== null) { low = Math.min(low, v); high = Math.max(high, v); }
      });
    });
    if (low === Infinity) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.fillText("no data", width / 2, (top + bottom) / 2);
      ctx.textAlign = "left";
      return;
    }
    if (typeof spec.min === "number") low = Math.min(low, spec.min);
    if (high - low < 1e-9) { high += 1; low -= spec.min === low ? 0 : 1; }
    const step = niceStep(high - low, Math.max(2, Math.floor((bottom - top) / 35)));
    low = Math.floor(low / step) * step;
    high = Math.ceil(high / step) * step;

    let left = 0;
    for (let v = low; v <= high + step / 2; v += step) left = Math.max(left, ctx.measureText(format(v, step)).width);
    left += 10;
    const right = width - 6;
    const yOf = function (v) { return bottom - (v - low) / (high - low) * (bottom - top); };
    const xOf = function (t) { return left + (t - since) / (until - since) * (right - left); };

    // Grid and axes.
    ctx.strokeStyle = line;
    ctx.lineWidth = 1;
    ctx.fillStyle = muted;
    ctx.textAlign = "right";
    for (let v = low; v <= high + step / 2; v += step) {
      const py = Math.round(yOf(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, py); ctx.lineTo(right, py); ctx.stroke();
      ctx.fillText(format(v, step), left - 5, py);
    }
    const tStep = TIME_STEPS.find(function (s) { return (right - left) / ((until - since) / s) >= 70; }) || 86400;
    const offset = new Date().getTimezoneOffset() * 60;
    ctx.textAlign = "center";
    for (let t = Math.ceil((since - offset) / tStep) * tStep + offset; t <= until; t += tStep) {
      const px = Math.round(xOf(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(px, top); ctx.lineTo(px, bottom + 3); ctx.stroke();
      ctx.fillText(timeLabel(t, tStep), px, height - 8);
    }
    ctx.textAlign = "left";

    // The series: a gap where a value is missing or samples are further apart than `gap` seconds. A
    // sample alone between gaps (the first one after the page opens, say) is a dot: a line needs two.
    ctx.save();
    ctx.beginPath(); ctx.rect(left, top - 2, right - left, bottom - top + 4); ctx.clip();
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    spec.series.forEach(function (series, i) {
      ctx.strokeStyle = colours[i];
      ctx.fillStyle = colours[i];
      const segments = [];
      let segment = [];
      let previous = null;
      self.samples.forEach(function (sample) {
        const v = self.value(sample, series);
        if (v === null || (previous !== null && sample.t - previous > self.gap)) {
          if (segment.length) segments.push(segment);
          segment = [];
        }
        if (v === null) { previous = null; return; }
        segment.push([xOf(sample.t), yOf(v)]);
        previous = sample.t;
      });
      if (segment.length) segments.push(segment);
      segments.forEach(function (points) {
        ctx.beginPath();
        if (points.length === 1) {
          ctx.arc(points[0][0], points[0][1], 2, 0, 2 * Math.PI);
          ctx.fill();
          return;
        }
        points.forEach(function (point, k) {
          if (k === 0) ctx.moveTo(point[0], point[1]); else ctx.lineTo(point[0], point[1]);
        });
        ctx.stroke();
      });
    });
    ctx.restore();
  };

  window.DoorwayChart = DoorwayChart;
})();
