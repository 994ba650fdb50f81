// llm-operator dashboard: live refresh without a reload. Polls /api/head (the event log's head position); when it
// moves, fetches this page again and swaps the content in place. Markup comes from the server's templates, which
// escape every tenant string; it is parsed with DOMParser and moved in (scripts inside never run that way).
(function () {
  "use strict";
  var body = document.body;
  if (body.dataset.live !== "1") { return; }
  var every = parseInt(body.dataset.pollMs || "1000", 10);
  var busy = false;

  function refresh(head) {
    return fetch(window.location.href, { credentials: "same-origin", headers: { "X-Dashboard-Refresh": "1" } })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("content");
        var current = document.getElementById("content");
        if (!fresh || !current) { return; }
        // Keep what the user is typing in a filter field.
        var focused = document.activeElement;
        if (focused && focused.form && current.contains(focused)) { return; }
        current.replaceChildren.apply(current, Array.prototype.slice.call(fresh.childNodes));
        body.dataset.head = String(head);
        var label = document.getElementById("head");
        if (label) { label.textContent = String(head); }
      });
  }

  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch("/api/head", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) {
        if (String(data.head) !== body.dataset.head) { return refresh(data.head); }
      })
      .catch(function () { /* the next tick tries again */ })
      .then(function () { busy = false; });
  }

  window.setInterval(tick, every);
})();
