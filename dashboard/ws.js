// One dashboard connection to a room: `/ws/{room}/{client}?role=dashboard`.
//
// It reconnects with exponential backoff (and jitter) after any loss, and asks the hub
// to replay what it missed with `since=<last offset>&epoch=<epoch>`, so the page sees
// every reading exactly once: readings at or below the last offset of the same epoch
// are dropped here. Close 1013 (slow consumer) and 1001 (hub stopping) reconnect the same
// way; close 4000 (replaced by a newer connection with our id) stops for good, so two
// tabs never fight over one id.
//
// The socket itself runs in a Worker (ws-worker.js) that parses and batches frames, so
// 8,000 readings a second cost the page ~60 events, not 8,000 (Socket, below).
//
// Token mode (auth.js): the first frame is `{"type":"auth","token":...}` (browsers cannot
// set headers on a WebSocket), the client id is `sub.<random>`, `token_expiring` goes to
// `auth` (which asks the user for a fresh token, sent here as another `auth` frame), and
// a close 1008 (`unauthorized`/`forbidden`) or 4001 (`token expired`) stops reconnecting:
// retrying with the same token cannot help.

import { auth } from "./auth.js";

/**
 * The socket under a RoomConnection. Where the browser has workers, the WebSocket lives
 * in ws-worker.js, which parses its frames and posts them in batches (one main-thread
 * event per ~16 ms instead of one per reading); elsewhere it is a plain WebSocket parsed
 * here. Either way: onopen(), onbatch(msgs) with parsed messages in order, and
 * onclose({code, reason}) once.
 */
class Socket {
  constructor(url, { onopen, onbatch, onclose }) {
    this.isOpen = false;
    this.closed = false;
    const opened = () => { this.isOpen = true; onopen(); };
    const closed = (code, reason) => {
      if (this.closed) return;
      this.closed = true;
      this.isOpen = false;
      this.worker?.terminate();
      onclose({ code, reason });
    };
    if (typeof Worker === "function") {
      const w = (this.worker = new Worker(new URL("./ws-worker.js", import.meta.url)));
      w.onmessage = (e) => {
        const m = e.data;
        if (m.ev === "batch") onbatch(m.msgs);
        else if (m.ev === "open") opened();
        else if (m.ev === "close") closed(m.code, m.reason);
      };
      w.onerror = (e) => { e.preventDefault?.(); closed(1006, "worker failed"); };
      w.postMessage({ op: "open", url });
    } else {
      const ws = (this.ws = new WebSocket(url));
      ws.onopen = opened;
      ws.onmessage = (ev) => {
        let msg;
        try { msg = JSON.parse(ev.data); } catch (_) { return; }
        onbatch([msg]);
      };
      ws.onclose = (ev) => closed(ev.code, ev.reason);
    }
  }

  /** Sends text; false when not open. */
  send(text) {
    if (!this.isOpen) return false;
    if (this.worker) this.worker.postMessage({ op: "send", text }); else this.ws.send(text);
    return true;
  }

  /** Closes without a callback (the connection is being dropped on purpose). */
  close(code, reason) {
    if (this.closed) return;
    this.closed = true;
    this.isOpen = false;
    if (this.worker) {
      this.worker.postMessage({ op: "close", code, reason });
      // Give the worker a moment to send the close frame, then end it.
      const w = this.worker;
      setTimeout(() => w.terminate(), 1000);
    } else {
      try { this.ws.close(code, reason); } catch (_) { /* already closed */ }
    }
  }
}

const BACKOFF_START_MS = 250;
const BACKOFF_MAX_MS = 8000;
/// A connection that stayed up this long resets the backoff.
const STABLE_MS = 5000;

export const CLOSE_GOING_AWAY = 1001;
export const CLOSE_SLOW_CONSUMER = 1013;
export const CLOSE_REPLACED = 4000;
export const CLOSE_POLICY = 1008;
export const CLOSE_TOKEN_EXPIRED = 4001;

/** A random client id valid per the protocol's id rule (`A-Za-z0-9_.-`, 1..64). */
export function newClientId() {
  const bytes = new Uint8Array(6);
  crypto.getRandomValues(bytes);
  return "dash-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class RoomConnection {
  /**
   * @param {string} room
   * @param {string} client
   * @param {object} handlers  onStatus(status), onWelcome(msg, info), onMessage(msg)
   */
  constructor(room, client, handlers) {
    this.room = room;
    this.baseClient = client;
    this.client = client;
    this.unrenew = null;
    this.h = handlers;
    this.ws = null;
    this.offset = null; // last offset seen (null: nothing seen yet)
    this.epoch = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = false;
    this.openedAt = 0;
    this.status = { state: "idle" };
  }

  start() {
    this.stopped = false;
    this.unrenew?.();
    // A fresh token from the expiry banner: send it on this socket.
    this.unrenew = auth.onRenew((token) => { this.send({ type: "auth", token }); });
    this.connect();
  }

  /** Closes for good (leaving the room page). */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.unrenew?.();
    this.unrenew = null;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, "bye");
    }
  }

  setStatus(s) {
    this.status = s;
    this.h.onStatus?.(s);
  }

  url() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    // A tab that falls behind (a phone on a train) gets each series' newest value and a
    // `skipped` count instead of being closed and reconnecting into the same overload.
    const q = new URLSearchParams({ role: "dashboard", overflow: "latest" });
    if (this.offset !== null && this.epoch) {
      q.set("since", String(this.offset));
      q.set("epoch", this.epoch);
    }
    return `${proto}//${location.host}/ws/${encodeURIComponent(this.room)}/${encodeURIComponent(this.client)}?${q}`;
  }

  connect() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    if (auth.required && !auth.token) {
      // The hub would wait 5 s for a token and close: wait for the sign-in instead.
      this.stopped = true;
      this.setStatus({ state: "signed-out" });
      return;
    }
    this.client = auth.clientId(this.baseClient);
    this.setStatus({ state: this.attempt === 0 ? "connecting" : "reconnecting", attempt: this.attempt });
    let welcomed = false;
    const onopen = () => {
      this.openedAt = performance.now();
      if (auth.token) ws.send(JSON.stringify({ type: "auth", token: auth.token }));
    };
    const onbatch = (msgs) => {
      for (const msg of msgs) {
        if (this.ws !== ws) return; // closed or replaced while handling this batch
        if (msg.type === "token_expiring") {
          auth.expiring(msg.exp);
          continue;
        }
        if (msg.type === "welcome") {
          welcomed = true;
          this.onWelcome(msg);
          continue;
        }
        if (msg.type === "reading" && typeof msg.offset === "number") {
          // Exactly once: a replayed reading we already have is dropped.
          if (this.offset !== null && msg.offset <= this.offset) continue;
          this.offset = msg.offset;
        }
        this.h.onMessage?.(msg);
      }
    };
    const onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (performance.now() - this.openedAt > STABLE_MS && welcomed) this.attempt = 0;
      if (ev.code === CLOSE_REPLACED) {
        this.stopped = true;
        this.setStatus({ state: "replaced" });
        return;
      }
      if (ev.code === CLOSE_POLICY || ev.code === CLOSE_TOKEN_EXPIRED) {
        this.stopped = true;
        this.setStatus({ state: "refused", code: ev.code, reason: ev.reason });
        auth.closedBySocket(ev.code, ev.reason);
        return;
      }
      let why = "connection lost";
      if (ev.code === CLOSE_SLOW_CONSUMER) why = "the hub dropped this page as a slow consumer";
      else if (ev.code === CLOSE_GOING_AWAY) {
        why = ev.reason && ev.reason !== "server shutting down"
          ? `the hub closed the connection (${ev.reason})`
          : "the hub is restarting";
      }
      else if (!welcomed) why = "hub unreachable";
      this.scheduleReconnect(why, ev.code);
    };
    let ws;
    try {
      ws = new Socket(this.url(), { onopen, onbatch, onclose });
    } catch (e) {
      this.scheduleReconnect(`cannot connect: ${e.message}`);
      return;
    }
    this.ws = ws;
  }

  onWelcome(msg) {
    const since = this.offset;
    const reconnect = since !== null;
    const sameEpoch = reconnect && msg.epoch === this.epoch;
    let recovered = true;
    if (reconnect) {
      if (!sameEpoch) {
        // The hub lost this room's history: offsets start over. Accept whatever it
        // replays of the new epoch (recovered:false) or go live from its offset.
        recovered = false;
        this.offset = msg.recovered === false ? 0 : msg.offset;
      } else if (msg.recovered === false) {
        // Replay starts at the oldest offset the hub keeps; we keep our offset so
        // nothing is taken twice, and the page refetches history for the gap.
        recovered = false;
      } else if (msg.recovered === undefined) {
        // A hub without history replays nothing: complete only if nothing happened.
        recovered = msg.offset === since;
        this.offset = msg.offset;
      }
    } else {
      this.offset = msg.offset;
    }
    this.epoch = msg.epoch;
    this.setStatus({ state: "live" });
    this.h.onWelcome?.(msg, { reconnect, recovered, since });
  }

  scheduleReconnect(why, code) {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** this.attempt);
    // 1013: the hub asked us to back off a little, but catching up soon matters more.
    const delay = Math.round(base * (0.7 + Math.random() * 0.6));
    this.attempt += 1;
    const until = performance.now() + delay;
    this.setStatus({ state: "waiting", why, code, attempt: this.attempt, until });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Retries at once (the "Reconnect now" button). */
  retryNow() {
    if (this.stopped && this.status.state !== "replaced") return;
    this.stopped = false;
    if (!this.ws) this.connect();
  }

  /** Sends a JSON message; false when not connected. */
  send(obj) {
    return !!this.ws && this.ws.send(JSON.stringify(obj));
  }
}
