// The inbox updates itself while open: every few seconds it fetches the content
// fragment and swaps it in, unless the reader is typing in or focused on a form.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var status = document.getElementById("live-status");
  if (!live) { return; }
  var seconds = parseInt(live.getAttribute("data-poll-seconds"), 10) || 5;
  var url = live.getAttribute("data-fragment");
  function busy() {
    var el = document.activeElement;
    if (el && live.contains(el) && el !== document.body) { return true; }
    var fields = live.querySelectorAll("input[type=text]");
    for (var i = 0; i < fields.length; i++) { if (fields[i].value) { return true; } }
    var open = live.querySelectorAll("details[open]");
    return open.length > 0;
  }
  function refresh() {
    if (document.hidden || busy()) { return; }
    fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      if (r.status === 401) { status.textContent = "Signed out: reload to sign in again."; return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html !== null && html !== undefined && !busy()) {
        live.innerHTML = html;
        status.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
      }
    }).catch(function () { status.textContent = "Cannot reach the inbox; retrying."; });
  }
  window.setInterval(refresh, seconds * 1000);
})();
