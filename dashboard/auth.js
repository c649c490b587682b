// Signing in to a hub with `[auth] mode = "token"`.
//
// The page learns that the hub wants a token from a 401 (the probe of /api/rooms at
// start, or any later REST call), and from a WebSocket closed with 1008. Then it shows
// the sign-in box instead of the view. The token the user pastes is kept in this tab's
// sessionStorage only (never localStorage, never the URL), sent as the WebSocket's first
// frame `{"type":"auth","token":...}` and as `Authorization: Bearer` on REST calls.
//
// Expiry: 30 s before the token's `exp` (on the hub's `token_expiring`, or on our own
// timer from the token's claims, whichever is first) a banner asks for a fresh token
// without blocking the page; it is sent on every open socket. At `exp`, or on close
// 4001, the token is forgotten and the sign-in box says why. With `mode = "none"` none of
// this shows: no 401 ever comes.

import { el } from "./format.js";

const KEY = "telehub.token";
/** How long before `exp` the banner asks for a fresh token (the hub's warning time). */
const WARN_BEFORE_MS = 30000;
const CLIENT_ID = /^[A-Za-z0-9_.-]{1,64}$/;

/** The claims of a JWT, without verifying it (the hub does): null if it is not one. */
export function decodeClaims(token) {
  const parts = String(token).split(".");
  if (parts.length !== 3 || parts.some((p) => !/^[A-Za-z0-9_-]*$/.test(p))) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    const json = new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
    const c = JSON.parse(json);
    return c && typeof c === "object" ? c : null;
  } catch (_) {
    return null;
  }
}

function stored() {
  try { return sessionStorage.getItem(KEY); } catch (_) { return null; }
}
function store(token) {
  try {
    if (token) sessionStorage.setItem(KEY, token); else sessionStorage.removeItem(KEY);
  } catch (_) { /* storage disabled: the token lives in memory for this page */ }
}

const listeners = new Set(); // fn(reason): the sign-in state changed
const renewers = new Set(); // fn(token): a fresh token to send on a socket
let warnTimer = 0;
let expireTimer = 0;
let banner = null; // {root, text, input, error, countdown}
let countdownTimer = 0;

export const auth = {
  /** The hub asked for a token (a 401 or a close 1008 was seen). */
  required: false,
  token: null,
  claims: null,
  /** Why the sign-in box is shown: {text, kind: "info" | "error"} or null. */
  message: null,

  /** Reads the tab's token, if any (at start). */
  load() {
    const t = stored();
    const c = t ? decodeClaims(t) : null;
    if (t && c && !expired(c)) { this.token = t; this.claims = c; this.required = true; schedule(); }
    else if (t) store(null);
  },

  /** `Authorization` for REST calls, when signed in. */
  headers() {
    return this.token ? { authorization: `Bearer ${this.token}` } : {};
  },

  /** The dashboard client id for this page: `sub.<random>` when signed in (the hub lets
   *  a dashboard token connect as its `sub` or `sub.` + anything), else `base`. */
  clientId(base) {
    const sub = this.claims?.sub;
    if (typeof sub !== "string") return base;
    const id = `${sub}.${base.replace(/^dash-/, "")}`;
    return CLIENT_ID.test(id) ? id : base;
  },

  /** The user's name for the header. */
  user() {
    return typeof this.claims?.sub === "string" ? this.claims.sub : "signed in";
  },

  /** Checks a pasted token before it is tried: an error text, or null. */
  check(token, { renewing = false } = {}) {
    const c = decodeClaims(token);
    if (!c) return "This is not a token: a token has three parts separated by dots (eyJ…).";
    if (typeof c.sub !== "string" || !c.sub) return "This token names no user (no sub claim).";
    if (!/^[A-Za-z0-9_.-]{1,51}$/.test(c.sub)) {
      return "This token's user (sub) cannot name a dashboard: at most 51 letters, digits, '_', '.' or '-'.";
    }
    if (typeof c.exp !== "number") return "This token has no expiry (exp claim).";
    if (expired(c)) return `This token expired at ${fmtTime(c.exp)}.`;
    if (c.role === "device") return "This is a device token; the dashboard needs a dashboard (or admin) token.";
    if (renewing && this.claims && c.sub !== this.claims.sub) {
      return `A fresh token must be for the same user (${this.claims.sub}), not ${c.sub}.`;
    }
    return null;
  },

  /** Signs in with `token` (already checked and accepted by the hub). */
  signIn(token) {
    this.token = token;
    this.claims = decodeClaims(token);
    this.required = true;
    this.message = null;
    store(token);
    schedule();
    hideBanner();
    emit("signed-in");
  },

  /** Signs out: forgets the token; the views close their sockets as they re-render. */
  signOut() {
    forget();
    this.message = { text: "Signed out. The token was removed from this tab.", kind: "info" };
    emit("signed-out");
  },

  /** A REST 401: the hub wants a token, or refused ours. */
  unauthorized(status = 401, code = "unauthorized") {
    const had = !!this.token;
    const wasRequired = this.required;
    this.required = true;
    if (had) {
      const why = this.claims && expired(this.claims)
        ? `Your token expired at ${fmtTime(this.claims.exp)}. Paste a new one to continue.`
        : `The hub refused your token (${status} ${code}): it may be expired, revoked, badly signed or for another hub.`;
      forget();
      this.message = { text: why, kind: "error" };
      emit("refused");
    } else if (!wasRequired) {
      this.message = null;
      emit("required");
    }
  },

  /** The socket was closed for the token: 1008 (`unauthorized`/`forbidden`) or 4001. */
  closedBySocket(code, reason) {
    if (code === 4001) {
      const exp = this.claims?.exp;
      forget();
      this.required = true;
      this.message = { text: `Your token expired${exp ? ` at ${fmtTime(exp)}` : ""} and the hub closed the connection (4001 token expired). Paste a new token to continue.`, kind: "error" };
      emit("expired");
      return;
    }
    if (reason === "forbidden") return; // the token is fine, just not for this room: the view says so
    const had = !!this.token;
    forget();
    this.required = true;
    this.message = had
      ? { text: `The hub refused your token (1008 ${reason || "unauthorized"}).`, kind: "error" }
      : null;
    emit("refused");
  },

  /** The hub's `token_expiring` (or our own timer): ask for a fresh token. */
  expiring(exp) {
    if (!this.token) return;
    showBanner(typeof exp === "number" ? exp : this.claims?.exp);
  },

  /** Sign-in changes: fn(reason). Returns an unsubscribe function. */
  onChange(fn) { listeners.add(fn); return () => listeners.delete(fn); },
  /** Fresh tokens to send on a socket: fn(token). Returns an unsubscribe function. */
  onRenew(fn) { renewers.add(fn); return () => renewers.delete(fn); },
};

function expired(c) {
  return typeof c.exp === "number" && c.exp * 1000 <= Date.now();
}

function fmtTime(exp) {
  return new Date(exp * 1000).toLocaleTimeString();
}

function emit(reason) {
  for (const fn of [...listeners]) fn(reason);
}

function forget() {
  auth.token = null;
  auth.claims = null;
  store(null);
  clearTimeout(warnTimer);
  clearTimeout(expireTimer);
  hideBanner();
}

/** Our own expiry timers, from the token's `exp`. */
function schedule() {
  clearTimeout(warnTimer);
  clearTimeout(expireTimer);
  const exp = auth.claims?.exp;
  if (typeof exp !== "number") return;
  const left = exp * 1000 - Date.now();
  // setTimeout holds 2^31-1 ms (24.8 days); longer tokens are re-checked then.
  const cap = (ms) => Math.min(Math.max(0, ms), 2 ** 31 - 1);
  warnTimer = setTimeout(() => {
    if (exp * 1000 - Date.now() > WARN_BEFORE_MS + 1000) schedule(); else auth.expiring(exp);
  }, cap(left - WARN_BEFORE_MS));
  const token = auth.token;
  expireTimer = setTimeout(() => {
    if (exp * 1000 > Date.now() + 1000) { schedule(); return; }
    if (auth.token !== token) return;
    forget();
    auth.message = { text: `Your token expired at ${fmtTime(exp)}. Paste a new token to continue.`, kind: "error" };
    emit("expired");
  }, cap(left + 500));
}

// ---- the expiry banner ------------------------------------------------------------------

function showBanner(exp) {
  const host = document.getElementById("auth-banner");
  if (!host) return;
  if (!banner) {
    const input = el("input", {
      id: "renew-token", name: "token", type: "password", autocomplete: "off", spellcheck: "false",
      required: true, placeholder: "eyJ…", "aria-describedby": "renew-text renew-error",
    });
    const text = el("p", { id: "renew-text", class: "auth-banner-text" });
    const countdown = el("span", { class: "auth-countdown", "aria-hidden": "true" });
    const error = el("p", { id: "renew-error", class: "auth-error", role: "alert" });
    const form = el("form", { class: "auth-renew", onsubmit: (e) => {
      e.preventDefault();
      const token = input.value.trim();
      const problem = auth.check(token, { renewing: true });
      if (problem) { error.textContent = problem; input.focus(); return; }
      input.value = "";
      error.textContent = "";
      auth.token = token;
      auth.claims = decodeClaims(token);
      store(token);
      schedule();
      hideBanner();
      for (const fn of [...renewers]) fn(token);
      emit("renewed");
    } },
    el("label", { for: "renew-token" }, "Fresh token"), input,
    el("button", { type: "submit", class: "btn primary small" }, "Renew"));
    const root = el("div", { class: "auth-banner-inner" },
      el("div", { class: "auth-banner-head" }, text, countdown), form, error);
    host.replaceChildren(root);
    banner = { text, countdown, input, error };
  }
  banner.text.textContent = exp
    ? `Your token expires at ${fmtTime(exp)}. Paste a fresh token to stay connected.`
    : "Your token expires soon. Paste a fresh token to stay connected.";
  const tick = () => {
    const s = Math.max(0, Math.round((exp * 1000 - Date.now()) / 1000));
    banner.countdown.textContent = exp ? `${s} s left` : "";
  };
  clearInterval(countdownTimer);
  if (exp) { tick(); countdownTimer = setInterval(tick, 1000); }
  if (host.hidden) {
    host.hidden = false;
    // Announce once (the countdown is not read out every second).
    const live = document.getElementById("auth-live");
    if (live) live.textContent = banner.text.textContent;
  }
}

function hideBanner() {
  clearInterval(countdownTimer);
  const host = document.getElementById("auth-banner");
  if (host) { host.hidden = true; host.replaceChildren(); }
  banner = null;
}

// ---- the sign-in box --------------------------------------------------------------------

/** Renders the sign-in box into `root`; `verify(token)` asks the hub (resolves to
 *  {ok, status, code}). */
export function renderSignIn(root, { verify }) {
  const input = el("input", {
    id: "signin-token", name: "token", type: "password", autocomplete: "off", spellcheck: "false",
    required: true, placeholder: "eyJ…", "aria-describedby": "signin-help signin-msg",
  });
  const msg = el("p", { id: "signin-msg", class: "signin-msg", role: "alert" });
  const show = (m) => {
    msg.textContent = m?.text || "";
    msg.dataset.kind = m?.kind || "info";
    msg.hidden = !m;
  };
  show(auth.message);
  const button = el("button", { type: "submit", class: "btn primary" }, "Sign in");
  let busy = false;
  const form = el("form", { class: "signin-form", "aria-labelledby": "signin-h", onsubmit: async (e) => {
    e.preventDefault();
    if (busy) return;
    const token = input.value.trim();
    const problem = auth.check(token);
    if (problem) { show({ text: problem, kind: "error" }); input.focus(); return; }
    busy = true;
    button.disabled = true;
    show({ text: "Checking the token with the hub…", kind: "info" });
    const res = await verify(token);
    busy = false;
    button.disabled = false;
    if (res.ok) { input.value = ""; auth.signIn(token); return; }
    show({
      text: res.status === 401 || res.status === 403
        ? `The hub refused this token (${res.status} ${res.code || (res.status === 401 ? "unauthorized" : "forbidden")}): it may be expired, badly signed or for another hub.`
        : `Could not reach the hub to check the token (${res.error || res.status}).`,
      kind: "error",
    });
    input.focus();
  } },
  el("label", { for: "signin-token" }, "Access token"),
  el("div", { class: "signin-row" }, input, button));
  root.append(el("section", { class: "signin pad" },
    el("div", { class: "signin-card" },
      el("h1", { id: "signin-h" }, "Sign in"),
      el("p", { id: "signin-help", class: "muted" },
        "This hub asks for an access token. Paste a dashboard token (made with ",
        el("code", {}, "telehub token --role dashboard"),
        "). It stays in this tab only and is forgotten when the tab closes."),
      msg, form)));
  return { destroy() {}, state: { signIn: true }, focus: () => input.focus() };
}
