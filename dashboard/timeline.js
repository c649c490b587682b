// A state timeline: one row per series, coloured spans for each state over time ("open
// 14:02 to 14:05" at a glance), for binary (0/1) and enumerated series. Draws from the
// same shared Series objects and in the same frame loop as the line chart (it is one,
// with its own draw), and zooms like it (zoom.js: `plot`, `view`, `bucketValue`).

import { LineChart, drawTimeAxis } from "./chart.js";

/** Names of the states 0 and 1 by metric name; anything else is off/on. */
const STATE_NAMES = {
  open: ["closed", "open"],
  door: ["closed", "open"],
  contact: ["closed", "open"],
  window: ["closed", "open"],
  motion: ["clear", "motion"],
  occupancy: ["empty", "occupied"],
  presence: ["away", "present"],
  leak: ["dry", "leak"],
  alarm: ["ok", "alarm"],
};

/** The label of `value` of `metric`: a name for 0 and 1, the number otherwise. */
export function stateName(metric, value) {
  const names = STATE_NAMES[metric.split("/").pop()] || ["off", "on"];
  if (value === 0 || value === 1) return names[value];
  return String(+value.toPrecision(4));
}

/** Whether every value in `series` (any number of Series) is 0 or 1, with some data. */
export function isBinary(seriesList) {
  let n = 0;
  for (const s of seriesList) {
    for (let i = s.start; i < s.end; i++) {
      const v = s.v[i];
      if (v !== 0 && v !== 1) return false;
      n += 1;
    }
  }
  return n > 0;
}

/** Black or white, whichever reads better on `hex` (#rrggbb). */
function inkOn(hex) {
  const n = parseInt(hex.slice(1), 16);
  const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const L = 0.2126 * lin(n >> 16) + 0.7152 * lin((n >> 8) & 255) + 0.0722 * lin(n & 255);
  return L > 0.18 ? "#111111" : "#ffffff";
}

export class TimelineChart extends LineChart {
  /** `metricOf(key)` names the metric of a row, for its state labels. */
  constructor(canvas, opts) {
    super(canvas, opts);
    this.metricOf = opts.metricOf || (() => opts.label);
  }

  /** A bucket of a zoomed range is "on" if the state was 1 at any time in it (its max),
   *  so a short opening never disappears at a coarse step. */
  bucketValue(p) { return typeof p.value === "number" ? p.value : p.max; }

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
    const rows = [...series].filter(([k, s]) => !this.hidden.has(k) && s.length).sort(([a], [b]) => (a < b ? -1 : 1));
    let labelW = 0;
    for (const [k] of rows) labelW = Math.max(labelW, ctx.measureText(k).width);
    const padL = Math.ceil(Math.max(40, labelW + 12)), padR = 12, padT = 8, padB = 24;
    const pw = Math.max(10, W - padL - padR), ph = Math.max(10, H - padT - padB);
    const xOf = (t) => padL + ((t - tStart) / span) * pw;
    this.plot = { padL, pw, tStart, tEnd };
    const boxes = (this.labelBoxes = []);
    this.spans = [];
    ctx.textBaseline = "middle";
    if (!rows.length) {
      ctx.fillStyle = theme.text;
      ctx.textAlign = "center";
      ctx.fillText("waiting for readings…", padL + pw / 2, padT + ph / 2);
      return;
    }
    const rowH = Math.min(36, ph / rows.length);
    rows.forEach(([key, s], r) => {
      const y0 = padT + r * rowH + 2, h = rowH - 4;
      ctx.fillStyle = theme.text;
      ctx.textAlign = "right";
      ctx.fillText(key, padL - 6, y0 + h / 2);
      boxes.push({ text: key, x0: padL - 6 - ctx.measureText(key).width, x1: padL - 6, y0, y1: y0 + h });
      const color = this.colorFor(key);
      const metric = this.metricOf(key);
      // Spans: from each change of value to the next (the last one to the range's end).
      let i = Math.max(s.start, s.lowerBound(tStart) - 1);
      while (i < s.end && s.ts[i] < tEnd) {
        const v = s.v[i];
        let j = i + 1;
        while (j < s.end && s.v[j] === v) j++;
        const t0 = Math.max(tStart, s.ts[i]);
        const t1 = j < s.end ? s.ts[j] : tEnd;
        if (t1 > tStart) {
          const x0 = xOf(t0), x1 = xOf(Math.min(t1, tEnd));
          const on = v !== 0;
          ctx.globalAlpha = on ? 1 : 0.18;
          ctx.fillStyle = on ? color : theme.axis;
          ctx.fillRect(x0, y0, Math.max(1, x1 - x0), h);
          ctx.globalAlpha = 1;
          const label = stateName(metric, v);
          this.spans.push({ key, label, from: s.ts[i], to: j < s.end ? s.ts[j] : null });
          const tw = ctx.measureText(label).width;
          if (x1 - x0 > tw + 8) {
            ctx.fillStyle = on ? inkOn(color) : theme.text;
            ctx.textAlign = "left";
            ctx.fillText(label, x0 + 4, y0 + h / 2);
          }
        }
        i = j;
      }
    });
    drawTimeAxis(ctx, { tStart, tEnd, padL, pw, y: padT + rows.length * rowH + 6, W, theme, boxes });
  }
}
