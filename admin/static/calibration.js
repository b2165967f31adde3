// Doorway admin, the calibration page: while a step runs, ask /api/calibration/run twice a second, move the
// progress bar and show what the step does now; reload the page when the step ends, so it shows the stored
// result. The cancel button posts to /api/calibration/cancel without leaving the page.
"use strict";

(function () {
  const POLL_MS = 500;

  function poll() {
    window.Doorway.fetchJSON("/api/calibration/run").then(function (run) {
      if (run.state !== "running") {
        window.location.reload();
        return;
      }
      const bar = document.querySelector("[data-run-progress]");
      if (bar) { bar.value = run.progress; bar.textContent = Math.round(run.progress * 100) + " %"; }
      const message = document.querySelector("[data-run-message]");
      if (message) message.textContent = run.message;
      window.setTimeout(poll, POLL_MS);
    }).catch(function () { window.setTimeout(poll, POLL_MS * 4); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!document.querySelector("[data-calibration-running]")) return;
    window.setTimeout(poll, POLL_MS);
    const form = document.querySelector("[data-cancel-form]");
    if (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        window.Doorway.fetchJSON("/api/calibration/cancel", { method: "POST" }).catch(function () {});
      });
    }
  });
})();
