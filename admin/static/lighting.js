// Doorway admin, the lighting page: show the sliders' values as they move, and send the lights' form to
// /api/lighting/light when a slider is released (or the button pressed) without reloading the page. The
// form still works without this (a normal POST to /lighting/light).
"use strict";

(function () {
  function describe(input) {
    const value = parseInt(input.value, 10);
    return input.name === "brightness" ? (value / 10).toFixed(1) + " %" : value + " K";
  }

  function send(form) {
    const result = form.querySelector("[data-light-result]");
    const body = {
      brightness: parseInt(form.elements.brightness.value, 10),
      cct_k: parseInt(form.elements.cct_k.value, 10),
    };
    window.Doorway.fetchJSON("/api/lighting/light", { method: "POST", body: body }).then(function (answer) {
      if (!result) return;
      result.textContent = answer.state === "missing"
        ? "Kept by the bridge: the room controller is missing; it is sent when the controller is back."
        : "Set.";
    }).catch(function (error) {
      if (result) result.textContent = "Not set: " + error.message;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const form = document.querySelector("[data-light-form]");
    if (!form) return;
    form.querySelectorAll('input[type="range"]').forEach(function (input) {
      const output = form.querySelector('output[data-for="' + input.name + '"]');
      input.addEventListener("input", function () { if (output) output.textContent = describe(input); });
      input.addEventListener("change", function () { send(form); });
    });
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      send(form);
    });
  });
})();
