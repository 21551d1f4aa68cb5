// Live updates without a framework: every few seconds fetch this page again and swap in the
// parts marked data-live (by id). Forms marked data-confirm ask before they are sent.
(function () {
  "use strict";
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) { e.preventDefault(); }
  });
  var parts = document.querySelectorAll("[data-live]");
  if (!parts.length) { return; }
  var every = Number(document.body.getAttribute("data-refresh") || "5") * 1000;
  function refresh() {
    if (document.hidden) { return; }
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (old) {
          var next = fresh.getElementById(old.id);
          // a part with a field being filled in is left alone until the field is sent or emptied
          var typing = Array.prototype.some.call(old.querySelectorAll("textarea"), function (t) {
            return t.value !== "" || t === document.activeElement;
          });
          if (next && !typing) { old.replaceWith(document.importNode(next, true)); }
        });
      })
      .catch(function () { /* the next tick tries again */ });
  }
  window.setInterval(refresh, every);
}());
