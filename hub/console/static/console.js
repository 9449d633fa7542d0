// invoice-hub console: small progressive enhancements; every page works without this file.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
document.addEventListener("DOMContentLoaded", () => {
  // Bring the first invalid field into view and focus it.
  const invalid = document.querySelector("input[aria-invalid='true']");
  if (invalid) {
    invalid.scrollIntoView({ block: "center" });
    invalid.focus();
  }
});
