// edgelb console: small progressive enhancements. Every page works without this file.
// No inline handlers anywhere (the Content-Security-Policy forbids them): behaviour is attached
// here, by data attributes.
"use strict";

// Pages with <body data-refresh="N"> refresh their [data-live] part every N seconds without a
// full reload, while the tab is visible.
(function liveRefresh() {
  const secs = Number(document.body.dataset.refresh || 0);
  const live = document.querySelector("[data-live]");
  if (!secs || !live) return;
  const state = document.getElementById("refresh-state");
  async function refresh() {
    if (document.hidden) return;
    try {
      const resp = await fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const doc = new DOMParser().parseFromString(await resp.text(), "text/html");
      const fresh = doc.querySelector("[data-live]");
      if (fresh) live.replaceChildren(...fresh.childNodes);
      if (state) state.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (e) {
      if (state) state.textContent = "refresh failed: " + e.message;
    }
  }
  setInterval(refresh, secs * 1000);
})();

// <button data-copy="id"> copies the value of the input with that id.
document.querySelectorAll("[data-copy]").forEach(function (btn) {
  btn.addEventListener("click", async function () {
    const input = document.getElementById(btn.dataset.copy);
    if (!input) return;
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
      btn.textContent = "Copied";
    } catch (e) {
      btn.textContent = "Press Ctrl+C";
    }
  });
});
