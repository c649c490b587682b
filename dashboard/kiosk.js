// Kiosk mode for wall screens (`#/rooms/R?kiosk=1`): controls hidden, text large
// enough to read across a room, the screen kept awake (Wake Lock API where the browser
// has it, asked again whenever the page becomes visible), and while the hub is out of
// reach a banner saying how old the data on screen is. Reconnecting is the room
// connection's own business (ws.js): after a hub restart or a network loss it comes back
// by itself, and the banner goes.

import { el, fmtAge } from "./format.js";

/** Starts kiosk mode on the page; `status()` gives {conn, lastReadingAt}. */
export function startKiosk(status) {
  const html = document.documentElement;
  html.classList.add("kiosk");
  const banner = el("div", { id: "kiosk-stale", class: "kiosk-stale", role: "status", "aria-live": "polite", hidden: true });
  document.body.append(banner);
  const info = { wakeLock: "requesting", stale: false };
  let lock = null;
  let stopped = false;

  async function keepAwake() {
    if (stopped || document.visibilityState !== "visible") return;
    if (!("wakeLock" in navigator)) { info.wakeLock = "unsupported"; return; }
    try {
      lock = await navigator.wakeLock.request("screen");
      info.wakeLock = "held";
      lock.addEventListener("release", () => { if (!stopped) info.wakeLock = "released"; });
    } catch (e) {
      // Refused (no user gesture yet, power saving, a headless browser): say so.
      info.wakeLock = `refused: ${e.name}`;
    }
  }
  const onVisible = () => { if (document.visibilityState === "visible" && info.wakeLock !== "held") keepAwake(); };
  document.addEventListener("visibilitychange", onVisible);
  keepAwake();

  let wasLive = false;
  const tick = () => {
    const { conn, lastReadingAt } = status();
    if (conn === "live") wasLive = true;
    // Stale once a connection that was live is lost (not while first connecting).
    const stale = wasLive && conn !== "live";
    info.stale = stale;
    banner.hidden = !stale;
    if (stale) {
      const age = lastReadingAt ? `data is ${fmtAge(lastReadingAt)} old` : "no data yet";
      const text = `Hub out of reach, reconnecting: ${age}.`;
      if (banner.textContent !== text) banner.textContent = text;
    }
    html.classList.toggle("kiosk-stale-data", stale);
  };
  const timer = setInterval(tick, 1000);
  tick();

  return {
    info,
    /** Call when the connection's state changes, so the banner follows at once. */
    update: tick,
    stop() {
      stopped = true;
      clearInterval(timer);
      document.removeEventListener("visibilitychange", onVisible);
      lock?.release().catch(() => {});
      banner.remove();
      html.classList.remove("kiosk", "kiosk-stale-data");
    },
  };
}
