// Bastion console: progressive enhancement only (every page works without it).
// The inbox subscribes to its server-sent events and swaps in the fresh list when the org's
// pending approvals change, without reloading the page.
(function () {
  "use strict";
  function liveInbox() {
    var box = document.getElementById("inbox");
    var status = document.getElementById("live-status");
    if (!box || !status || !window.EventSource) { return; }
    var source = new EventSource(status.getAttribute("data-stream"));
    var refreshing = false;
    function refresh() {
      if (refreshing) { return; }
      refreshing = true;
      fetch(box.getAttribute("data-partial"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) { box.innerHTML = html; } })
        .finally(function () { refreshing = false; });
    }
    source.addEventListener("ready", function () { status.textContent = "live"; status.classList.add("on"); });
    source.addEventListener("changed", refresh);
    source.onerror = function () { status.textContent = "reconnecting…"; status.classList.remove("on"); };
  }
  document.addEventListener("DOMContentLoaded", liveInbox);
})();
