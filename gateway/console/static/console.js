// Consentry console: small progressive enhancements; every page works without them.
"use strict";
(function () {
  // Typed confirmation: the destructive button unlocks only once the id is typed exactly.
  // (The server checks the typed text again; this only saves a round trip.)
  document.querySelectorAll("form.confirm").forEach(function (form) {
    var input = form.querySelector("input[data-expect]");
    var button = form.querySelector("button[type=submit]");
    if (!input || !button) return;
    var sync = function () { button.disabled = input.value.trim() !== input.dataset.expect; };
    input.addEventListener("input", sync);
    sync();
  });

  // Verify: drop an image on the zone (or pick one) and the form submits it.
  var zone = document.getElementById("dropzone");
  var fileInput = document.getElementById("image");
  var form = document.getElementById("verify-form");
  if (zone && fileInput && form) {
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.add("over"); });
    });
    zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      zone.classList.remove("over");
      if (!e.dataTransfer || !e.dataTransfer.files.length) return;
      fileInput.files = e.dataTransfer.files;
      form.dataset.via = "drop";
      form.requestSubmit();
    });
    fileInput.addEventListener("change", function () { if (fileInput.files.length) form.requestSubmit(); });
  }

  var print = document.getElementById("print");
  if (print) print.addEventListener("click", function () { window.print(); });
})();
