// The dashboard's entry point: the hash router, the header (connection status, theme
// toggle, breadcrumbs), the notice banner, and `window.telehub` for tests and the
// curious (state, perf counters).
//
// Token mode (auth.js): a probe of /api/rooms at start learns whether the hub wants a
// token; while it does and none is held, the sign-in box replaces the view, and every
// sign-in change (signed in, refused, expired, signed out) routes again.
//
// Routes:  #/                  the rooms of this hub
//          #/rooms/{room}      one room, live; `?layout=NAME` shows a saved layout
//          #/alerts            the alerts page (alerts.js); `?room=&state=` filter it

import { renderHome } from "./home.js";
import { renderRoom } from "./room.js";
import { newClientId } from "./ws.js";
import { perf } from "./perf.js";
import { el } from "./format.js";
import { api } from "./api.js";
import { auth, renderSignIn } from "./auth.js";
import { renderAlerts, startAlerts } from "./alerts.js";

/** This tab's client id: random per page load, so two tabs never replace each other. */
export const CLIENT_ID = newClientId();

const ROOM_ID = /^[A-Za-z0-9_.-]{1,64}$/;
const view = document.getElementById("view");
const connEl = document.getElementById("conn");
const noticeEl = document.getElementById("notice");
const crumbsEl = document.getElementById("crumbs");
const themeBtn = document.getElementById("theme");
const accountEl = document.getElementById("account");

let current = null; // the mounted view: { destroy(), state? }

/** The header and banner, as the views use them. */
export const ui = {
  /** state: live | connecting | waiting | offline | replaced | idle */
  setConn(state, text, detail = "") {
    connEl.dataset.state = state;
    const t = connEl.querySelector(".conn-text");
    if (t.textContent !== text) t.textContent = text;
    let d = connEl.querySelector(".conn-detail");
    if (!d) {
      d = el("span", { class: "conn-detail", "aria-hidden": "true" });
      connEl.append(d);
    }
    d.textContent = detail;
  },
  /** Shows a banner; kind: info | warn | error. actions: [{label, onclick}] */
  notice(text, kind = "info", actions = []) {
    if (!text) { noticeEl.hidden = true; noticeEl.replaceChildren(); return; }
    noticeEl.dataset.kind = kind;
    noticeEl.replaceChildren(
      el("span", { class: "notice-text" }, text),
      ...actions.map((a) => el("button", { type: "button", class: "btn small", onclick: a.onclick }, a.label)),
      el("button", { type: "button", class: "icon-btn close", "aria-label": "Dismiss", onclick: () => ui.notice(null) }, "×"),
    );
    noticeEl.hidden = false;
  },
  crumbs(parts) {
    crumbsEl.replaceChildren(
      ...parts.map((p, i) => {
        const last = i === parts.length - 1;
        return el("span", { class: "crumb" }, last
          ? el("span", { "aria-current": "page" }, p.label)
          : el("a", { href: p.href }, p.label));
      }),
    );
  },
};

function parseRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const m = hash.match(/^\/rooms\/([^/?]+)\/?(?:\?(.*))?$/);
  if (m) {
    let room;
    try { room = decodeURIComponent(m[1]); } catch (_) { room = ""; }
    return { name: "room", room, params: new URLSearchParams(m[2] || "") };
  }
  const a = hash.match(/^\/alerts\/?(?:\?(.*))?$/);
  if (a) return { name: "alerts", params: new URLSearchParams(a[1] || "") };
  return { name: "home" };
}

function route() {
  current?.destroy();
  current = null;
  ui.notice(null);
  view.replaceChildren();
  updateAccount();
  if (auth.required && !auth.token) {
    document.title = "Sign in · telehub";
    ui.crumbs([{ label: "Sign in" }]);
    ui.setConn("offline", "Signed out");
    current = renderSignIn(view, { verify: (token) => api.checkToken(token) });
    current.focus();
    routed = true;
    return;
  }
  const r = parseRoute();
  if (r.name === "room") {
    if (!ROOM_ID.test(r.room)) {
      ui.crumbs([{ label: "Rooms", href: "#/" }, { label: "invalid room" }]);
      view.append(el("section", { class: "pad" },
        el("h1", {}, "Not a room name"),
        el("p", {}, "Room names are 1 to 64 characters of letters, digits, '_', '.' and '-'."),
        el("p", {}, el("a", { href: "#/" }, "Back to the rooms"))));
      ui.setConn("idle", "Not connected");
      return;
    }
    document.title = `${r.room} · telehub`;
    ui.crumbs([{ label: "Rooms", href: "#/" }, { label: r.room }]);
    current = renderRoom(view, r.room, { ui, clientId: CLIENT_ID, params: r.params });
  } else if (r.name === "alerts") {
    current = renderAlerts(view, { ui, params: r.params });
  } else {
    document.title = "telehub";
    ui.crumbs([{ label: "Rooms" }]);
    current = renderHome(view, { ui });
  }
  // Move focus to the new content for keyboard and screen-reader users, but not on the
  // first load (the page would scroll for no reason).
  if (routed) view.focus({ preventScroll: true });
  routed = true;
}
let routed = false;

// ---------------------------------------------------------------------------------------
// Theme: the system preference unless the user picked one with the toggle.

const dark = window.matchMedia("(prefers-color-scheme: dark)");
function effectiveTheme() {
  return document.documentElement.dataset.theme || (dark.matches ? "dark" : "light");
}
function themeChanged() {
  const t = effectiveTheme();
  themeBtn.setAttribute("aria-pressed", String(t === "dark"));
  themeBtn.title = t === "dark" ? "Switch to the light theme" : "Switch to the dark theme";
  window.dispatchEvent(new CustomEvent("telehub-theme", { detail: t }));
}
themeBtn.addEventListener("click", () => {
  const next = effectiveTheme() === "dark" ? "light" : "dark";
  document.documentElement.dataset.theme = next;
  try { localStorage.setItem("telehub.theme", next); } catch (_) { /* ignore */ }
  themeChanged();
});
dark.addEventListener("change", themeChanged);

function updateAccount() {
  accountEl.hidden = !auth.token;
  accountEl.querySelector(".account-name").textContent = auth.token ? auth.user() : "";
}
document.getElementById("signout").addEventListener("click", () => auth.signOut());
// Every change of the sign-in state but a renewal (the sockets carry on) re-renders.
auth.onChange((reason) => { if (reason === "renewed") updateAccount(); else route(); });

window.telehub = {
  clientId: CLIENT_ID,
  perf,
  get view() { return current?.state ?? null; },
  /** The client id the room's socket uses (`sub.<tab>` when signed in). */
  get client() { return current?.conn?.client ?? null; },
  theme: effectiveTheme,
};

window.addEventListener("hashchange", route);
themeChanged();
auth.load();
// Does this hub want a token (401)? With auth.mode = "none" the answer is a room list
// and nothing changes; a held token that the hub refuses is forgotten here.
api.rooms().then(() => { route(); startAlerts(); });
