// stickwarden review console: live updates. Every element with data-live is refreshed from its
// URL every few seconds (an HTML fragment rendered by the daemon). When the daemon cannot be
// reached, a banner says so and since when; the last figures stay on the page. Without this
// script the pages work the same, and a reload refreshes them.
"use strict";
(function () {
  const EVERY_MS = 3000;
  const banner = document.getElementById("offline");
  let failingSince = null;

  function say(text) {
    if (!banner) return;
    banner.textContent = text;
    banner.hidden = false;
  }

  function fine() {
    failingSince = null;
    if (banner) banner.hidden = true;
  }

  function unreachable(why) {
    if (failingSince === null) failingSince = new Date();
    say("The daemon is unreachable since " + failingSince.toLocaleTimeString() + " (" + why +
        "): the figures below are from then.");
  }

  async function refresh(el) {
    let answer;
    try {
      answer = await fetch(el.dataset.live, { credentials: "same-origin", cache: "no-store", redirect: "manual" });
    } catch (e) {
      unreachable("no answer");
      return;
    }
    if (answer.status === 401 || answer.type === "opaqueredirect") {
      say("Your session has ended: reload the page to log in again.");
      return;
    }
    if (!answer.ok) {
      unreachable("HTTP " + answer.status);
      return;
    }
    const html = await answer.text();
    // Do not replace what the user is typing in or has focused.
    if (!el.contains(document.activeElement) || document.activeElement === document.body) {
      el.innerHTML = html;
    }
    fine();
  }

  const live = Array.from(document.querySelectorAll("[data-live]"));
  if (live.length > 0) {
    setInterval(function () { live.forEach(refresh); }, EVERY_MS);
  }
})();
