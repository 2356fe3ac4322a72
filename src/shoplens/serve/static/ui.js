// shoplens progressive enhancement. Every page works without this file; it only adds
// drag-and-drop onto the photo field, an early size check before uploading, and a
// re-announcement of the result count once the page has loaded.
(function () {
  "use strict";

  function fieldError(input, message) {
    var id = input.id + "-error";
    var node = document.getElementById(id);
    var described = (input.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
    if (!message) {
      if (node) node.remove();
      input.removeAttribute("aria-invalid");
      input.setAttribute("aria-describedby", described.filter(function (d) { return d !== id; }).join(" "));
      return;
    }
    if (!node) {
      node = document.createElement("p");
      node.id = id;
      node.className = "field-error";
      node.setAttribute("role", "alert");
      input.parentNode.appendChild(node);
    }
    node.textContent = "";
    var mark = document.createElement("span");
    mark.className = "error-mark";
    mark.setAttribute("aria-hidden", "true");
    mark.textContent = "!";
    node.append(mark, " Error: " + message);
    input.setAttribute("aria-invalid", "true");
    if (described.indexOf(id) < 0) described.push(id);
    input.setAttribute("aria-describedby", described.join(" "));
  }

  function humanBytes(n) {
    // Same units as the server's messages: "10.4 MB", "200 kB" (rounded up: it is too big).
    return n >= 1e6 ? Math.ceil(n / 1e5) / 10 + " MB" : Math.ceil(n / 1e3) + " kB";
  }

  function checkSize(input) {
    var max = Number(input.dataset.maxBytes || 0);
    var file = input.files && input.files[0];
    var status = document.getElementById(input.id + "-status");
    if (status) status.textContent = file ? "Chosen: " + file.name : "";
    if (file && max && file.size > max) {
      fieldError(input, "The photo is " + humanBytes(file.size) + ", over the limit of " +
        input.dataset.maxText + ". Choose a smaller photo.");
      return false;
    }
    fieldError(input, "");
    return true;
  }

  function enhanceDropzone(zone) {
    var input = zone.querySelector("input[type=file]");
    if (!input) return;
    input.addEventListener("change", function () { checkSize(input); });
    ["dragenter", "dragover"].forEach(function (type) {
      zone.addEventListener(type, function (event) {
        event.preventDefault();
        zone.classList.add("is-dragging");
      });
    });
    ["dragleave", "drop"].forEach(function (type) {
      zone.addEventListener(type, function () { zone.classList.remove("is-dragging"); });
    });
    zone.addEventListener("drop", function (event) {
      event.preventDefault();
      if (!event.dataTransfer || !event.dataTransfer.files.length) return;
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
    input.form.addEventListener("submit", function (event) {
      if (!checkSize(input)) {
        event.preventDefault();
        input.focus();
      }
    });
  }

  function reannounce(region) {
    // Screen readers ignore a live region's text present at load; set it again once.
    var text = region.textContent;
    region.textContent = "";
    window.setTimeout(function () { region.textContent = text; }, 300);
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-dropzone]").forEach(enhanceDropzone);
    document.querySelectorAll("[data-announce]").forEach(reannounce);
  });
})();
