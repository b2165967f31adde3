// Doorway admin: the little JavaScript every page shares. Served from the doorway; no inline scripts
// (the Content-Security-Policy forbids them), no external libraries.
//
// 1. CSRF: every state-changing request must carry the session's token (see admin/security.py). The
//    token is in <meta name="csrf-token">; this adds it as the X-CSRF-Token header to same-origin fetch()
//    and XMLHttpRequest calls, and as a hidden csrf_token field to any POST form that lacks one (forms
//    rendered by the server already have it; this covers forms built by scripts).
// 2. Status: elements with [data-status] under [data-status-url] are refreshed every few seconds.
"use strict";

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

  function refreshStatus(root) {
    const url = root.getAttribute("data-status-url");
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (response) {
        if (response.status === 401) {
          window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
          return null;
        }
        return response.ok ? response.json() : null;
      })
      .then(function (data) {
        if (!data) return;
        root.querySelectorAll("[data-status]").forEach(function (card) {
          const part = data[card.getAttribute("data-status")];
          if (!part) return;
          const ok = part.up && !part.error;
          const state = card.querySelector('[data-field="state"]');
          const error = card.querySelector('[data-field="error"]');
          if (state) {
            state.textContent = ok ? "Running" : part.up ? "Answering, with a problem" : "Not running";
            state.className = "state " + (ok ? "up" : "down");
          }
          if (error) error.textContent = part.error || "";
        });
      })
      .catch(function () { /* The doorway is unreachable; try again at the next tick. */ });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("form").forEach(addTokenField);
    document.querySelectorAll("[data-status-url]").forEach(function (root) {
      window.setInterval(function () { refreshStatus(root); }, 5000);
    });
  });
})();
