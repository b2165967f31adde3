// Doorway admin, the pairing page: while a code is shown, ask /api/pairing/status every two seconds and
// reload the page when the attempt ends (paired, failed, expired or cancelled), so it shows the outcome.
// The page works without this; it only saves pressing reload.
"use strict";

(function () {
  const POLL_MS = 2000;

  function poll() {
    window.Doorway.fetchJSON("/api/pairing/status").then(function (attempt) {
      if (attempt.state !== "waiting") {
        window.location.reload();
        return;
      }
      const message = document.querySelector("[data-pairing-message]");
      if (message) message.textContent = attempt.message;
      window.setTimeout(poll, POLL_MS);
    }).catch(function () { window.setTimeout(poll, POLL_MS * 2); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("[data-pairing-waiting]")) window.setTimeout(poll, POLL_MS);
  });
})();
