// Our own small canvas line chart: one line per device, a scrolling time axis.
//
// Readings go into compact per-series arrays (Float64Array time and value). Nothing is
// drawn when a reading arrives: the chart is marked dirty and one shared
// requestAnimationFrame loop redraws the dirty, visible charts, at most once per frame
// each, within a per-frame time budget (charts that do not fit wait for the next frame,
// stalest first). Dense series are reduced to min/max per pixel column, so drawing costs
// O(points in view) arithmetic but only O(width) path segments per line.

import { niceTicks, timeStep, timeTicks, valueLabels } from "./axis.js";
import { perf } from "./perf.js";

/** Points kept per series: 15 minutes at 10 Hz with room to spare. */
const SERIES_CAP = 10000;
/** A pause longer than this between two points breaks the line. */
const GAP_MS = 15000;
/** Milliseconds of drawing per animation frame, all charts together. */
const FRAME_BUDGET_MS = 8;
/** Without new data, the time axis still scrolls at this period. */
const IDLE_REDRAW_MS = 500;
/** New data redraws a chart at most this often (20 fps): at 10 Hz per device and a
 *  5-minute axis (about 2 px/s) more frames would show nothing new. */
const MIN_REDRAW_MS = 50;

/** Time series of one device: sorted by time, oldest points dropped past the cap. */
export class Series {
  constructor(cap = SERIES_CAP) {
    this.cap = cap;
    this.ts = new Float64Array(cap * 2);
    this.v = new Float64Array(cap * 2);
    this.start = 0;
    this.end = 0;
  }

  get length() { return this.end - this.start; }

  lastTs() { return this.end > this.start ? this.ts[this.end - 1] : -Infinity; }

  push(ts, value) {
    if (ts < this.lastTs()) { this.merge([{ ts, value }]); return; }
    if (ts === this.lastTs()) { this.v[this.end - 1] = value; return; }
    if (this.end === this.ts.length) this.compact();
    this.ts[this.end] = ts;
    this.v[this.end] = value;
    this.end += 1;
    if (this.end - this.start > this.cap) this.start += 1;
  }

  compact() {
    const n = this.end - this.start;
    this.ts.copyWithin(0, this.start, this.end);
    this.v.copyWithin(0, this.start, this.end);
    this.start = 0;
    this.end = n;
  }

  /** Merges points (any order, e.g. history) with what we have; equal times keep ours. */
  merge(points) {
    const have = new Map();
    for (let i = this.start; i < this.end; i++) have.set(this.ts[i], this.v[i]);
    for (const p of points) if (!have.has(p.ts)) have.set(p.ts, p.value);
    const keys = Array.from(have.keys()).sort((a, b) => a - b).slice(-this.cap);
    this.start = 0;
    this.end = keys.length;
    for (let i = 0; i < keys.length; i++) {
      this.ts[i] = keys[i];
      this.v[i] = have.get(keys[i]);
    }
  }

  clear() { this.start = this.end = 0; }

  /** First index with ts >= t. */
  lowerBound(t) {
    let lo = this.start, hi = this.end;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.ts[mid] < t) lo = mid + 1; else hi = mid;
    }
    return lo;
  }
}

// ---------------------------------------------------------------------------------------
// The shared frame loop.

const charts = new Set();
let rafPending = false;

function schedule() {
  if (rafPending) return;
  rafPending = true;
  requestAnimationFrame(frame);
}

// A governor: when frames come late (the page or the machine is too busy), charts
// redraw less often, down to twice a second, and speed up again when frames are on
// time. Cards, input and the WebSocket keep the main thread they need.
let lastFrame = 0;
let frameEma = 16.7;
let redrawMs = MIN_REDRAW_MS;
const MAX_REDRAW_MS = 500;

function frame(now) {
  rafPending = false;
  if (lastFrame) {
    const dt = now - lastFrame;
    if (dt < 1000) frameEma = frameEma * 0.9 + dt * 0.1;
  }
  lastFrame = now;
  if (frameEma > 24) redrawMs = Math.min(MAX_REDRAW_MS, redrawMs * 1.15);
  else if (frameEma < 19) redrawMs = Math.max(MIN_REDRAW_MS, redrawMs * 0.97);
  perf.redrawMs = redrawMs;
  const due = [];
  for (const c of charts) if (c.visible && c.needsDraw(now)) due.push(c);
  due.sort((a, b) => a.drawnAt - b.drawnAt);
  const t0 = performance.now();
  let drawn = 0;
  for (const c of due) {
    if (drawn > 0 && performance.now() - t0 > FRAME_BUDGET_MS) break;
    c.draw(now);
    drawn += 1;
  }
  const spent = performance.now() - t0;
  if (drawn) perf.noteDraw(spent, drawn);
  if (due.length > drawn) perf.noteDeferred(due.length - drawn);
  // Keep going while anything is live (time scrolls) or still dirty.
  for (const c of charts) if (c.visible && (c.dirty || c.hasData())) { schedule(); break; }
}

// A slow heartbeat restarts the loop for idle charts (rAF stops in background tabs).
setInterval(() => { if (charts.size) schedule(); }, IDLE_REDRAW_MS);

// ---------------------------------------------------------------------------------------

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{windowMs:number, unit?:string, colorFor:(device:string)=>string, label:string}} opts
   */
  constructor(canvas, opts) {
    this.canvas = canvas;
    // For tests and the curious: the chart behind a canvas (its labelBoxes, series).
    canvas.telehubChart = this;
    this.ctx = canvas.getContext("2d", { alpha: false });
    this.windowMs = opts.windowMs;
    this.unit = opts.unit || "";
    this.label = opts.label;
    this.colorFor = opts.colorFor;
    this.series = new Map(); // device -> Series
    this.view = null; // {from, to, series: Map(device -> Series)} while zoomed (zoom.js)
    this.hidden = new Set(); // devices toggled off in the legend
    this.dirty = true;
    this.drawnAt = 0;
    this.visible = true;
    this.width = 0;
    this.height = 0;
    this.dpr = 1;
    this.theme = null;
    this.resize();
    this.ro = new ResizeObserver(() => { this.resize(); this.invalidate(); });
    this.ro.observe(canvas);
    this.io = new IntersectionObserver((entries) => {
      for (const e of entries) this.visible = e.isIntersecting;
      if (this.visible) this.invalidate();
    });
    this.io.observe(canvas);
    charts.add(this);
    schedule();
  }

  destroy() {
    charts.delete(this);
    this.ro.disconnect();
    this.io.disconnect();
  }

  hasData() {
    for (const s of this.series.values()) if (s.length) return true;
    return false;
  }

  needsDraw(now) {
    const since = now - this.drawnAt;
    return (this.dirty && since >= redrawMs) || since >= IDLE_REDRAW_MS;
  }

  invalidate() {
    this.dirty = true;
    schedule();
  }

  themeChanged() {
    this.theme = null;
    this.invalidate();
  }

  setWindow(ms) {
    this.windowMs = ms;
    this.invalidate();
  }

  setUnit(unit) {
    if (unit && unit !== this.unit) { this.unit = unit; this.invalidate(); }
  }

  seriesFor(device) {
    let s = this.series.get(device);
    if (!s) { s = new Series(); this.series.set(device, s); }
    return s;
  }

  /** The value drawn for a point of GET /history when zoomed (zoom.js): a raw point's
   *  value, a bucket's mean. */
  bucketValue(p) { return typeof p.value === "number" ? p.value : p.mean; }

  /** The time range drawn and the series over it: following now, or the range zoomed
   *  into (zoom.js), drawn from the series it fetched. */
  timeRange() {
    const tEnd = this.view ? this.view.to : Date.now();
    const tStart = this.view ? this.view.from : tEnd - this.windowMs;
    return { tStart, tEnd, series: this.view?.series || this.series };
  }

  /** Draws `series` (shared with other charts, filled by its owner) as line `key`. */
  attach(key, series) {
    if (this.series.get(key) === series) return;
    this.series.set(key, series);
    this.invalidate();
  }

  push(device, ts, value) {
    this.seriesFor(device).push(ts, value);
    this.dirty = true;
    schedule();
  }

  merge(device, points) {
    this.seriesFor(device).merge(points);
    this.invalidate();
  }

  clear() {
    for (const s of this.series.values()) s.clear();
    this.invalidate();
  }

  toggle(device, shown) {
    if (shown) this.hidden.delete(device); else this.hidden.add(device);
    this.invalidate();
  }

  resize() {
    const r = this.canvas.getBoundingClientRect();
    this.dpr = Math.min(window.devicePixelRatio || 1, 2);
    this.width = Math.max(1, Math.round(r.width));
    this.height = Math.max(1, Math.round(r.height));
    this.canvas.width = Math.round(this.width * this.dpr);
    this.canvas.height = Math.round(this.height * this.dpr);
  }

  /** A transparent offscreen layer of w x h device pixels, cleared, for rasterColumns. */
  pixelLayer(w, h) {
    let l = this.layer;
    if (!l || l.canvas.width !== w || l.canvas.height !== h) {
      const canvas = document.createElement("canvas");
      canvas.width = w;
      canvas.height = h;
      const image = new ImageData(w, h);
      l = this.layer = { canvas, ctx: canvas.getContext("2d"), image, pix: new Uint32Array(image.data.buffer) };
    } else {
      l.pix.fill(0);
    }
    return l;
  }

  readTheme() {
    const cs = getComputedStyle(this.canvas);
    const v = (name, dflt) => cs.getPropertyValue(name).trim() || dflt;
    this.theme = {
      bg: v("--chart-bg", "#fff"),
      grid: v("--chart-grid", "#e5e7eb"),
      axis: v("--chart-axis", "#6b7280"),
      text: v("--chart-text", "#374151"),
      threshold: v("--err", "#b42318"),
      // Kiosk mode sets a larger size, for reading across a room.
      font: `${v("--chart-font-size", "12px")} ${cs.fontFamily || "system-ui, sans-serif"}`,
    };
  }

  draw(now) {
    this.dirty = false;
    this.drawnAt = now;
    if (!this.theme) this.readTheme();
    const { ctx, width: W, height: H, theme } = this;
    ctx.setTransform(this.dpr, 0, 0, this.dpr, 0, 0);
    ctx.fillStyle = theme.bg;
    ctx.fillRect(0, 0, W, H);
    ctx.font = theme.font;

    const { tStart, tEnd, series } = this.timeRange();
    const span = tEnd - tStart;

    // Value range over what is in view.
    let lo = Infinity, hi = -Infinity, any = false;
    const ranges = [];
    for (const [device, s] of series) {
      if (this.hidden.has(device) || !s.length) continue;
      const a = Math.max(s.start, s.lowerBound(tStart) - 1);
      const b = s.end;
      if (a >= b) continue;
      for (let i = a; i < b; i++) {
        const y = s.v[i];
        if (y < lo) lo = y;
        if (y > hi) hi = y;
      }
      any = true;
      ranges.push([device, s, a, b]);
    }
    // Alert thresholds (alerts.js sets `thresholds`) stay in view beside the data.
    const marks = any ? (this.thresholds || []) : [];
    for (const m of marks) { if (m < lo) lo = m; if (m > hi) hi = m; }

    const padR = 12, padT = 10, padB = 24;
    const ph = Math.max(10, H - padT - padB);

    if (!any) { lo = 0; hi = 1; }
    if (hi - lo < 1e-9) { const m = Math.abs(hi) * 0.05 || 1; lo -= m; hi += m; }
    const yTicks = niceTicks(lo, hi, Math.max(2, Math.floor(ph / 40)));
    lo = Math.min(lo, yTicks[0]);
    hi = Math.max(hi, yTicks[yTicks.length - 1]);
    // The value axis is as wide as its widest label: nothing is ever clipped.
    const yLabels = valueLabels(yTicks);
    let labelW = 0;
    for (const l of yLabels) labelW = Math.max(labelW, ctx.measureText(l).width);
    const padL = Math.ceil(Math.max(28, labelW + 12));
    const pw = Math.max(10, W - padL - padR);
    const yOf = (v) => padT + ph - ((v - lo) / (hi - lo)) * ph;
    const pxPerMs = pw / span;
    // Fetched buckets are `step` apart: only a longer pause is a gap.
    const gap = Math.max(GAP_MS, (this.view?.step || 0) * 2.5);
    this.plot = { padL, pw, tStart, tEnd };
    const xOf = (t) => padL + (t - tStart) * pxPerMs;
    /** Where each label was drawn, in CSS pixels (tests check that all are inside). */
    const boxes = (this.labelBoxes = []);

    // Grid and labels.
    ctx.strokeStyle = theme.grid;
    ctx.lineWidth = 1;
    ctx.fillStyle = theme.text;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.beginPath();
    yTicks.forEach((t, i) => {
      const y = Math.round(yOf(t)) + 0.5;
      ctx.moveTo(padL, y);
      ctx.lineTo(padL + pw, y);
      const w = ctx.measureText(yLabels[i]).width;
      ctx.fillText(yLabels[i], padL - 6, y);
      boxes.push({ text: yLabels[i], x0: padL - 6 - w, x1: padL - 6, y0: y - 7, y1: y + 7 });
    });
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    let lastX1 = -Infinity;
    for (const { t, label } of timeTicks(tStart, tEnd, timeStep(span, pw))) {
      const x = Math.round(xOf(t)) + 0.5;
      ctx.moveTo(x, padT);
      ctx.lineTo(x, padT + ph);
      // Centred under its tick, unless that would leave the canvas or overlap the last.
      const w = ctx.measureText(label).width;
      const x0 = x - w / 2;
      if (x0 < padL - 4 || x0 + w > W - 2 || x0 < lastX1 + 8) continue;
      ctx.fillText(label, x0, padT + ph + 6);
      boxes.push({ text: label, x0, x1: x0 + w, y0: padT + ph + 6, y1: padT + ph + 20 });
      lastX1 = x0 + w;
    }
    ctx.stroke();
    ctx.strokeStyle = theme.axis;
    ctx.beginPath();
    ctx.moveTo(padL + 0.5, padT);
    ctx.lineTo(padL + 0.5, padT + ph + 0.5);
    ctx.lineTo(padL + pw, padT + ph + 0.5);
    ctx.stroke();

    if (!any) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for readings…", padL + pw / 2, padT + ph / 2);
      return;
    }

    // Lines, clipped to the plot area.
    ctx.save();
    ctx.beginPath();
    ctx.rect(padL, padT - 2, pw + 1, ph + 4);
    ctx.clip();
    // Many lines: thinner and bevelled, which rasterises much faster than round joins.
    ctx.lineWidth = ranges.length > 12 ? 1.2 : 1.6;
    ctx.lineJoin = ranges.length > 12 ? "bevel" : "round";
    let segments = 0;
    // Dense lines, or every line of a chart of many, are rasterised by us into one pixel
    // layer (see rasterColumns): 200 canvas paths a chart cost far more to raster.
    const many = ranges.length > 12;
    const rastered = ([, , a, b]) => many || b - a > pw * 1.5;
    const dense = ranges.filter(rastered);
    if (dense.length) {
      const dpr = this.dpr;
      const lw = Math.round(pw * dpr), lh = Math.round(ph * dpr);
      const layer = this.pixelLayer(lw, lh);
      const pxPerMsDev = lw / span;
      const scaleY = (lh - 1) / (hi - lo);
      const half = Math.max(0.5, (ctx.lineWidth * dpr) / 2);
      for (const [device, s, a, b] of dense) {
        segments += rasterColumns(layer.pix, lw, lh, s, a, b, tStart, pxPerMsDev, hi, scaleY, half, rgba32(this.colorFor(device)), gap);
      }
      layer.ctx.putImageData(layer.image, 0, 0);
      ctx.drawImage(layer.canvas, padL, padT, pw, ph);
    }
    for (const r of ranges) {
      const [device, s, , b] = r;
      const color = this.colorFor(device);
      if (!rastered(r)) {
        const a = r[2];
        ctx.strokeStyle = color;
        ctx.beginPath();
        segments += traceAll(ctx, s, a, b, xOf, yOf, gap);
        ctx.stroke();
      }
      ctx.fillStyle = color;
      // The newest point of each line gets a dot, so a live value is easy to spot.
      const lx = xOf(s.ts[b - 1]), ly = yOf(s.v[b - 1]);
      if (lx >= padL && many) {
        ctx.fillRect(lx - 2, ly - 2, 4, 4); // a square: 200 arcs cost more than they show
      } else if (lx >= padL) {
        ctx.beginPath();
        ctx.arc(lx, ly, 2.6, 0, Math.PI * 2);
        ctx.fill();
      }
    }
    // Alert thresholds: dashed lines across the plot; their rows, for tests.
    this.thresholdYs = marks.map((m) => Math.round(yOf(m)) + 0.5);
    if (marks.length) {
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = theme.threshold;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      for (const y of this.thresholdYs) { ctx.moveTo(padL, y); ctx.lineTo(padL + pw, y); }
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.restore();
    perf.noteSegments(segments);
  }
}

/**
 * A time axis without grid lines, for panels that are not line charts (timelines, the
 * track's time strip): ticks at `y` under the plot from `padL` over `pw` pixels, their
 * labels below, none overlapping or leaving the canvas. Adds the labels' boxes to `boxes`.
 */
export function drawTimeAxis(ctx, { tStart, tEnd, padL, pw, y, W, theme, boxes }) {
  const xOf = (t) => padL + ((t - tStart) / (tEnd - tStart)) * pw;
  ctx.strokeStyle = theme.grid;
  ctx.fillStyle = theme.text;
  ctx.textBaseline = "top";
  ctx.textAlign = "left";
  ctx.beginPath();
  let lastX1 = -Infinity;
  for (const { t, label } of timeTicks(tStart, tEnd, timeStep(tEnd - tStart, pw))) {
    const x = Math.round(xOf(t)) + 0.5;
    ctx.moveTo(x, y - 6);
    ctx.lineTo(x, y - 2);
    const w = ctx.measureText(label).width;
    const x0 = x - w / 2;
    if (x0 < padL - 4 || x0 + w > W - 2 || x0 < lastX1 + 8) continue;
    ctx.fillText(label, x0, y);
    boxes.push({ text: label, x0, x1: x0 + w, y0: y, y1: y + 14 });
    lastX1 = x0 + w;
  }
  ctx.stroke();
}

function traceAll(ctx, s, a, b, xOf, yOf, gap) {
  let prevT = -Infinity;
  for (let i = a; i < b; i++) {
    const t = s.ts[i];
    const x = xOf(t), y = yOf(s.v[i]);
    if (t - prevT > gap) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    prevT = t;
  }
  return b - a;
}

/**
 * Dense lines (several points per pixel column) are rasterised here, straight into a
 * pixel buffer: per device-pixel column one vertical run from the column's min to its
 * max, stretched to meet the previous column's last value so the line stays connected.
 * This is exact to the pixel, costs one run per column whatever the number of points,
 * and skips the canvas's path machinery entirely: with 50 lines of 10 Hz data, stroking
 * cost ~125 ms a chart in Chromium's software raster, this costs a few.
 */
function rasterColumns(pix, w, h, s, a, b, tStart, pxPerMs, hi, scaleY, half, color, gap) {
  let col = NaN, mn = 0, mx = 0, last = NaN, lastFx = NaN, prevLast = NaN, prevT = -Infinity, n = 0;
  const run = (c, lo, top) => {
    if (c < 0 || c >= w) return;
    const y0 = Math.max(0, Math.floor(lo - half + 0.5));
    const y1 = Math.min(h - 1, Math.ceil(top + half - 0.5));
    for (let y = y0, i = y0 * w + c; y <= y1; y++, i += w) pix[i] = color;
    n += 1;
  };
  const flush = () => {
    let lo = mn, top = mx;
    if (prevLast === prevLast) { if (prevLast < lo) lo = prevLast; if (prevLast > top) top = prevLast; }
    run(col, lo, top);
  };
  for (let i = a; i < b; i++) {
    const t = s.ts[i];
    const fx = (t - tStart) * pxPerMs;
    const x = Math.floor(fx);
    const y = (hi - s.v[i]) * scaleY;
    const breaks = t - prevT > gap;
    prevT = t;
    if (x !== col || breaks) {
      if (col === col) flush();
      prevLast = breaks ? NaN : last;
      if (!breaks && col === col && x > col + 1) {
        // A sparse line: the segment to this point crosses empty columns; each gets the
        // run the segment covers in it, and this column starts where the segment enters.
        const yAt = (u) => last + ((y - last) * (u - lastFx)) / (fx - lastFx);
        for (let c = Math.max(col + 1, 0), end = Math.min(x - 1, w - 1); c <= end; c++) {
          const y0 = yAt(c), y1 = yAt(c + 1);
          run(c, Math.min(y0, y1), Math.max(y0, y1));
        }
        prevLast = yAt(x);
      }
      col = x; mn = mx = last = y; lastFx = fx;
    } else {
      last = y;
      lastFx = fx;
      if (y < mn) mn = y;
      if (y > mx) mx = y;
    }
  }
  if (col === col) flush();
  return n;
}

/** A CSS colour as a little-endian RGBA pixel for a Uint32Array over ImageData. */
const rgbaCache = new Map();
let probe = null;
function rgba32(color) {
  let v = rgbaCache.get(color);
  if (v === undefined) {
    if (!probe) {
      const c = document.createElement("canvas");
      c.width = c.height = 1;
      probe = c.getContext("2d", { willReadFrequently: true });
    }
    probe.clearRect(0, 0, 1, 1);
    probe.fillStyle = color;
    probe.fillRect(0, 0, 1, 1);
    const [r, g, bl, al] = probe.getImageData(0, 0, 1, 1).data;
    v = ((al << 24) | (bl << 16) | (g << 8) | r) >>> 0;
    rgbaCache.set(color, v);
  }
  return v;
}

/**
 * A long window from the hub's rollup tiers (GET /history past memory answers buckets of
 * min/max/mean): per series a translucent min–max band and its mean line, drawn on a
 * canvas of its own (`w` x `h` CSS pixels) with the theme of `themeEl`. No raw points:
 * a year is about a thousand buckets per series. `groups`: [{key, color, rows}] where a
 * row is a bucket {ts, min, max, mean} or a raw point {ts, value}; `step` (ms) is the
 * bucket width, a longer pause between buckets is drawn as a gap.
 */
export function drawBands(groups, { from, to, step, w, h, themeEl }) {
  const dpr = window.devicePixelRatio || 1;
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  const cs = getComputedStyle(themeEl);
  const v = (name, dflt) => cs.getPropertyValue(name).trim() || dflt;
  ctx.fillStyle = v("--chart-bg", "#fff");
  ctx.fillRect(0, 0, w, h);
  ctx.font = `${v("--chart-font-size", "12px")} ${cs.fontFamily || "system-ui, sans-serif"}`;
  const lowOf = (r) => r.min ?? r.value, highOf = (r) => r.max ?? r.value, midOf = (r) => r.mean ?? r.value;
  let lo = Infinity, hi = -Infinity;
  for (const g of groups) for (const r of g.rows) { lo = Math.min(lo, lowOf(r)); hi = Math.max(hi, highOf(r)); }
  if (!(lo <= hi)) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { const m = Math.abs(hi) * 0.05 || 1; lo -= m; hi += m; }
  const padR = 12, padT = 10, padB = 24, ph = Math.max(10, h - padT - padB);
  const yTicks = niceTicks(lo, hi, Math.max(2, Math.floor(ph / 40)));
  lo = Math.min(lo, yTicks[0]);
  hi = Math.max(hi, yTicks[yTicks.length - 1]);
  const yLabels = valueLabels(yTicks);
  const padL = Math.ceil(Math.max(28, Math.max(...yLabels.map((l) => ctx.measureText(l).width)) + 12));
  const pw = Math.max(10, w - padL - padR);
  const xOf = (t) => padL + ((t - from) / (to - from)) * pw;
  const yOf = (val) => padT + ph - ((val - lo) / (hi - lo)) * ph;
  ctx.strokeStyle = v("--chart-grid", "#e5e7eb");
  ctx.fillStyle = v("--chart-text", "#374151");
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  yTicks.forEach((t, i) => {
    const y = Math.round(yOf(t)) + 0.5;
    ctx.moveTo(padL, y);
    ctx.lineTo(padL + pw, y);
    ctx.fillText(yLabels[i], padL - 6, y);
  });
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  let lastX1 = -Infinity;
  for (const { t, label } of timeTicks(from, to, timeStep(to - from, pw))) {
    const x = Math.round(xOf(t)) + 0.5;
    ctx.moveTo(x, padT);
    ctx.lineTo(x, padT + ph);
    const tw = ctx.measureText(label).width, x0 = x - tw / 2;
    if (x0 < padL - 4 || x0 + tw > w - 2 || x0 < lastX1 + 8) continue;
    ctx.fillText(label, x0, padT + ph + 6);
    lastX1 = x0 + tw;
  }
  ctx.stroke();
  ctx.save();
  ctx.beginPath();
  ctx.rect(padL, padT - 2, pw + 1, ph + 4);
  ctx.clip();
  const gap = Math.max(step || 0, 1) * 2.5;
  for (const g of groups) {
    // Runs of buckets with no gap between them: a band (max edge forward, min edge back),
    // then the mean line over it.
    const runs = [];
    for (const r of g.rows) {
      const run = runs[runs.length - 1];
      if (run && r.ts - run[run.length - 1].ts <= gap) run.push(r); else runs.push([r]);
    }
    const half = (step || 0) / 2;
    ctx.globalAlpha = 0.22;
    ctx.fillStyle = g.color;
    for (const run of runs) {
      ctx.beginPath();
      run.forEach((r, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, xOf(r.ts + half), yOf(highOf(r))));
      for (let i = run.length - 1; i >= 0; i--) ctx.lineTo(xOf(run[i].ts + half), yOf(lowOf(run[i])));
      ctx.closePath();
      ctx.fill();
    }
    ctx.globalAlpha = 1;
    ctx.strokeStyle = g.color;
    ctx.lineWidth = 1.6;
    ctx.lineJoin = "round";
    for (const run of runs) {
      ctx.beginPath();
      run.forEach((r, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, xOf(r.ts + half), yOf(midOf(r))));
      if (run.length === 1) ctx.lineTo(xOf(run[0].ts + half) + 1, yOf(midOf(run[0])));
      ctx.stroke();
    }
  }
  ctx.restore();
  ctx.strokeStyle = v("--chart-axis", "#6b7280");
  ctx.beginPath();
  ctx.moveTo(padL + 0.5, padT);
  ctx.lineTo(padL + 0.5, padT + ph + 0.5);
  ctx.lineTo(padL + pw, padT + ph + 0.5);
  ctx.stroke();
  if (!groups.some((g) => g.rows.length)) {
    ctx.fillStyle = v("--chart-text", "#374151");
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText("no readings in this window", padL + pw / 2, padT + ph / 2);
  }
  return canvas;
}
