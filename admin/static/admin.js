// Doorway admin: the little JavaScript every page shares. Served from the doorway; no inline scripts
// (the Content-Security-Policy forbids them), no external libraries.
//
// 1. CSRF: every state-changing request must carry the session's token (see admin/security.py). The
//    token is in <meta name="csrf-token">; this adds it as the X-CSRF-Token header to same-origin fetch()
//    and XMLHttpRequest calls, and as a hidden csrf_token field to any POST form that lacks one (forms
//    rendered by the server already have it; this covers forms built by scripts).
// 2. Small page helpers: the phone menu, confirmations (forms with data-confirm), busy buttons (forms with
//    data-busy), local times (<time data-t="unix seconds">), and Doorway.fetchJSON for the page scripts.
"use strict";

document.documentElement.classList.add("js");

(function () {
  const SAFE = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") || "" : "";
  }

  function sameOrigin(url) {
    try {
      return new URL(url, window.location.href).origin === window.location.origin;
    } catch (e) {
      return false;
    }
  }

  // fetch(): add the header to same-origin, state-changing requests.
  const originalFetch = window.fetch.bind(window);
  window.fetch = function (input, init) {
    init = init || {};
    const request = input instanceof Request ? input : null;
    const method = (init.method || (request && request.method) || "GET").toUpperCase();
    const url = request ? request.url : String(input);
    if (!SAFE.has(method) && sameOrigin(url) && csrfToken()) {
      const headers = new Headers(init.headers || (request && request.headers) || {});
      if (!headers.has("X-CSRF-Token")) {
        headers.set("X-CSRF-Token", csrfToken());
      }
      init = Object.assign({}, init, { headers: headers, credentials: "same-origin" });
    }
    return originalFetch(input, init);
  };

  // XMLHttpRequest: remember method and URL at open(), add the header at send().
  const originalOpen = XMLHttpRequest.prototype.open;
  const originalSend = XMLHttpRequest.prototype.send;
  XMLHttpRequest.prototype.open = function (method, url) {
    this._doorwayMethod = String(method || "GET").toUpperCase();
    this._doorwayUrl = String(url);
    return originalOpen.apply(this, arguments);
  };
  XMLHttpRequest.prototype.send = function () {
    if (!SAFE.has(this._doorwayMethod) && sameOrigin(this._doorwayUrl) && csrfToken()) {
      this.setRequestHeader("X-CSRF-Token", csrfToken());
    }
    return originalSend.apply(this, arguments);
  };

  function addTokenField(form) {
    if ((form.getAttribute("method") || "get").toLowerCase() !== "post") return;
    if (!sameOrigin(form.action || window.location.href)) return;
    if (form.querySelector('input[name="csrf_token"]') || !csrfToken()) return;
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = "csrf_token";
    input.value = csrfToken();
    form.appendChild(input);
  }

  // Forms added later get the field when they are submitted (capture: before anyone else sees it).
  document.addEventListener("submit", function (event) {
    if (event.target instanceof HTMLFormElement) addTokenField(event.target);
  }, true);

  function loginAgain() {
    window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
  }

  // JSON from the doorway's API: the parsed body, or an Error with the API's own message. A 401 (the
  // session ended) sends the browser to the login page.
  function fetchJSON(url, options) {
    const init = Object.assign({ headers: { Accept: "application/json" }, credentials: "same-origin" }, options || {});
    if (init.body !== undefined && typeof init.body !== "string") {
      init.body = JSON.stringify(init.body);
      init.headers = Object.assign({ "Content-Type": "application/json" }, init.headers);
    }
    return fetch(url, init).then(function (response) {
      if (response.status === 401) {
        loginAgain();
        throw new Error("not logged in");
      }
      return response.json().catch(function () { return {}; }).then(function (body) {
        if (!response.ok) throw new Error(body.error || response.status + " " + response.statusText);
        return body;
      });
    });
  }

  function pad(n) { return String(n).padStart(2, "0"); }

  function localTime(seconds) {
    const d = new Date(seconds * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function showLocalTimes(root) {
    (root || document).querySelectorAll("time[data-t]").forEach(function (el) {
      const t = parseFloat(el.getAttribute("data-t"));
      if (isFinite(t)) el.textContent = localTime(t);
    });
  }

  window.Doorway = { fetchJSON: fetchJSON, localTime: localTime, showLocalTimes: showLocalTimes, loginAgain: loginAgain };

  // Confirm before sending forms that undo something (unpairing); then show that the form is busy.
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    const question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    const busy = form.getAttribute("data-busy");
    const button = form.querySelector('button[type="submit"]');
    if (busy && button) {
      // After the submit has started: a disabled button's own value would not be sent.
      window.setTimeout(function () { button.disabled = true; button.textContent = busy; }, 0);
    }
  });

  function setUpMenu() {
    const button = document.querySelector(".menu-button");
    const nav = document.getElementById("site-nav");
    if (!button || !nav) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      const open = nav.classList.toggle("open");
      button.setAttribute("aria-expanded", open ? "true" : "false");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form").forEach(addTokenField);
    setUpMenu();
    showLocalTimes(document);
  });
})();
