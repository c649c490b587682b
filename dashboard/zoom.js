// Zoom and pan over time, for every panel with a time axis: line charts, state
// timelines and GPS tracks (whose time strip under the map is their time axis). Drag
// across a panel to zoom into that span, double-click to go back to following now, arrow
// keys (or Shift + wheel) to pan, + and - (or Ctrl + wheel) to zoom in and out, and a
// "Live" button to return. A zoomed panel draws the range fetched from GET /history at a
// step that keeps it under MAX_POINTS points per series, so zooming into the past reaches
// what the live series no longer hold.
//
// What a chart offers for this (chart.js, timeline.js, panels.js):
//   chart.plot        {padL, pw, tStart, tEnd} of its last draw: where its time axis is;
//   chart.view        set here while zoomed, {from, to, step, series, loading, fetched};
//                     the chart draws view.series over [from, to] instead of following now;
//   chart.bucketValue(point) the value of a history point or bucket ({value} or {min,
//                     max, mean}) for this kind of chart.

import { api } from "./api.js";
import { Series } from "./chart.js";
import { el } from "./format.js";

/** Points per series a zoomed panel asks for at most. */
const MAX_POINTS = 2000;
/** Shortest span one can zoom into. */
const MIN_SPAN_MS = 10e3;
/** Longest: a year. */
const MAX_SPAN_MS = 365 * 86400e3;
/** What one arrow press pans, as a part of the span. */
const PAN_PART = 0.25;

/** Zoom handlers attached and not yet destroyed (tests check that a room's teardown
 *  leaves none behind). */
let attached = 0;
export function activeZooms() { return attached; }

/** A `step` for GET /history that gives at most MAX_POINTS buckets over `span`. */
export function stepFor(span) {
  const s = Math.ceil(span / MAX_POINTS / 1000);
  return s <= 1 ? null : `${s}s`;
}

/**
 * Makes `panel` (room.js's: chart, canvas, fig, title, metrics, wants, keyOf) zoomable.
 * `room` names the room, `liveTools` is where the Live button goes. Returns {reset,
 * show, destroy}; destroy removes every listener, the band and the button.
 */
export function zoomable(panel, room, liveTools) {
  const { chart, canvas } = panel;
  const box = canvas.parentElement;
  const band = el("div", { class: "zoom-band", hidden: true, "aria-hidden": "true" });
  box.append(band);
  const live = el("button", { type: "button", class: "btn small primary zoom-live", hidden: true,
    "aria-label": `Back to live: ${panel.title}`, onclick: () => reset() }, "Live");
  liveTools.prepend(live);
  canvas.tabIndex = 0;
  canvas.title = "Drag to zoom, double-click for live; arrows pan, + and - zoom";
  const listeners = new AbortController();
  attached += 1;
  let seq = 0;
  let drag = null;

  const timeAt = (clientX) => {
    const r = canvas.getBoundingClientRect();
    const p = chart.plot;
    if (!p) return null;
    const f = (clientX - r.left - p.padL) / p.pw;
    return p.tStart + Math.max(0, Math.min(1, f)) * (p.tEnd - p.tStart);
  };

  function current() {
    const p = chart.plot;
    const to = p ? p.tEnd : Date.now();
    return chart.view ? { from: chart.view.from, to: chart.view.to } : { from: to - chart.windowMs, to };
  }

  /** Shows [from, to] and fetches it from the hub. */
  async function show(from, to) {
    const span = Math.max(MIN_SPAN_MS, Math.min(MAX_SPAN_MS, to - from));
    const mid = (from + to) / 2;
    from = Math.round(mid - span / 2);
    to = Math.round(mid + span / 2);
    const now = Date.now();
    if (to > now) { from -= to - now; to = now; }
    const step = stepFor(span);
    const view = { from, to, step: step ? parseInt(step, 10) * 1000 : 0, series: new Map(), loading: true, points: 0 };
    // Until the range arrives, draw what the live series hold of it.
    for (const [k, s] of chart.series) view.series.set(k, s);
    chart.view = view;
    chart.invalidate();
    live.hidden = false;
    panel.fig.classList.add("zoomed");
    const mine = ++seq;
    const fetched = new Map();
    let points = 0, failed = null;
    await Promise.all([...panel.metrics].map(async (metric) => {
      const res = await api.history(room, { metric, from: String(from), to: String(to), step: step || undefined, limit: 100000 });
      if (!res.ok) { if (res.code !== "unknown_series") failed = res.error; return; }
      for (const p of res.data.points || []) {
        const value = chart.bucketValue(p);
        if (!panel.wants(p.device, metric) || typeof value !== "number") continue;
        const key = panel.keyOf(p.device, metric);
        let s = fetched.get(key);
        if (!s) { s = new Series(MAX_POINTS * 3); fetched.set(key, s); }
        s.push(p.ts, value);
        points += 1;
      }
    }));
    if (mine !== seq || chart.view !== view) return;
    if (!failed) view.series = fetched;
    view.loading = false;
    view.points = points;
    view.error = failed;
    view.fetched = { from, to, step };
    chart.invalidate();
  }

  function reset() {
    seq += 1;
    chart.view = null;
    live.hidden = true;
    panel.fig.classList.remove("zoomed");
    chart.invalidate();
  }

  function zoomBy(factor, at) {
    const { from, to } = current();
    const c = at ?? (from + to) / 2;
    show(c - (c - from) * factor, c + (to - c) * factor);
  }

  function pan(part) {
    const { from, to } = current();
    const d = (to - from) * part;
    if (!chart.view && d > 0) return; // already at now
    show(from + d, to + d);
  }

  const onDown = (e) => {
    if (e.button !== 0 || !chart.plot) return;
    drag = { x: e.clientX, t: timeAt(e.clientX) };
    canvas.setPointerCapture?.(e.pointerId);
  };
  const onMove = (e) => {
    if (!drag) return;
    const r = box.getBoundingClientRect(), c = canvas.getBoundingClientRect();
    const x0 = Math.min(drag.x, e.clientX) - r.left, x1 = Math.max(drag.x, e.clientX) - r.left;
    band.hidden = x1 - x0 < 3;
    Object.assign(band.style, { left: `${x0}px`, width: `${x1 - x0}px`, top: `${c.top - r.top}px`, height: `${c.height}px` });
  };
  const onUp = (e) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    band.hidden = true;
    if (Math.abs(e.clientX - d.x) < 6) return;
    const t = timeAt(e.clientX);
    show(Math.min(d.t, t), Math.max(d.t, t));
  };
  const onKey = (e) => {
    const keys = { ArrowLeft: () => pan(-PAN_PART), ArrowRight: () => pan(PAN_PART), "+": () => zoomBy(0.5), "=": () => zoomBy(0.5),
      "-": () => zoomBy(2), Escape: () => reset(), Home: () => reset() };
    const f = keys[e.key];
    if (!f || e.altKey || e.metaKey) return;
    e.preventDefault();
    f();
  };
  const onWheel = (e) => {
    if (!e.shiftKey && !e.ctrlKey) return; // plain wheel scrolls the page
    e.preventDefault();
    if (e.ctrlKey) zoomBy(e.deltaY > 0 ? 1.5 : 1 / 1.5, timeAt(e.clientX));
    else pan(Math.sign(e.deltaY || e.deltaX) * PAN_PART * 0.5);
  };
  const { signal } = listeners;
  canvas.addEventListener("pointerdown", onDown, { signal });
  canvas.addEventListener("pointermove", onMove, { signal });
  canvas.addEventListener("pointerup", onUp, { signal });
  canvas.addEventListener("dblclick", reset, { signal });
  canvas.addEventListener("keydown", onKey, { signal });
  canvas.addEventListener("wheel", onWheel, { signal, passive: false });
  let destroyed = false;
  return {
    reset,
    show,
    destroy() {
      if (destroyed) return;
      destroyed = true;
      attached -= 1;
      seq += 1;
      listeners.abort();
      band.remove();
      live.remove();
    },
  };
}
