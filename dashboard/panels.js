// The panel kinds beside the line chart and the state timeline: stat (the latest value,
// large, with a trend arrow and a sparkline), gauge (the latest value on a min..max
// arc) and GPS track (latitude and longitude as a path on our own canvas, the latest
// position marked, with its speed; over map tiles when the hub has a tile server). Each
// is a LineChart with its own draw, so it takes shared series, the frame loop and
// offscreen skipping from there; the track also zooms like one (zoom.js), over the time
// strip under its map.

import { LineChart, drawTimeAxis } from "./chart.js";
import { fmtValue } from "./format.js";
import { drawAttribution, drawTiles, mapConfig } from "./tiles.js";
import { TimelineChart } from "./timeline.js";

/** The chart that draws a panel of `spec.kind` on `canvas`. */
export function chartFor(spec, canvas, opts) {
  switch (spec.kind) {
    case "timeline": return new TimelineChart(canvas, opts);
    case "stat": return new StatChart(canvas, opts);
    case "gauge": return new GaugeChart(canvas, { ...opts, min: spec.min, max: spec.max });
    case "track": return new TrackChart(canvas, { ...opts, lat: spec.refs[0].metric, lon: spec.refs[1]?.metric });
    default: return new LineChart(canvas, opts);
  }
}

const LABELS = {
  timeseries: (t, per) => `Live chart of ${t}, one line per ${per}`,
  timeline: (t, per) => `State timeline of ${t}, one row per ${per}`,
  stat: (t) => `Latest value of ${t}, with its trend`,
  gauge: (t) => `Gauge of ${t}`,
  track: (t) => `GPS track of ${t}, one path per device`,
};

/** The accessible name of a panel's canvas. */
export function panelLabel(kind, title, per) {
  return (LABELS[kind] || LABELS.timeseries)(title, per);
}

/** Writes panel `p`'s text alternative (p.alt): each line's latest value, min and max
 *  over the last `ms` (named `windowName`). */
export function describe(p, ms, windowName) {
  const since = Date.now() - ms;
  const parts = [];
  for (const [key, s] of p.chart.series) {
    if (!s.length) continue;
    let lo = Infinity, hi = -Infinity;
    for (let i = Math.max(s.start, s.lowerBound(since)); i < s.end; i++) { lo = Math.min(lo, s.v[i]); hi = Math.max(hi, s.v[i]); }
    const u = p.chart.unit ? ` ${p.chart.unit}` : "";
    const last = fmtValue(s.v[s.end - 1]);
    parts.push(lo <= hi
      ? `${key}: latest ${last}${u}, min ${fmtValue(lo)}, max ${fmtValue(hi)}`
      : `${key}: latest ${last}${u}`);
  }
  const text = parts.length ? `${p.title} over the last ${windowName}. ${parts.sort().join("; ")}.` : `${p.title}: no readings yet.`;
  if (p.alt.textContent !== text) p.alt.textContent = text;
}

/** The newest point at or before `t` of a Series, as an index (or -1). */
function atOrBefore(s, t) {
  const i = s.lowerBound(t);
  if (i < s.end && s.ts[i] === t) return i;
  return i - 1 >= s.start ? i - 1 : -1;
}

/** The visible series (key, Series) with data, by key. */
function shown(chart) {
  return [...chart.series].filter(([k, s]) => !chart.hidden.has(k) && s.length).sort(([a], [b]) => (a < b ? -1 : 1));
}

function begin(chart, now) {
  chart.dirty = false;
  chart.drawnAt = now;
  if (!chart.theme) chart.readTheme();
  const { ctx, width: W, height: H, theme } = chart;
  ctx.setTransform(chart.dpr, 0, 0, chart.dpr, 0, 0);
  ctx.fillStyle = theme.bg;
  ctx.fillRect(0, 0, W, H);
  ctx.font = theme.font;
  chart.labelBoxes = [];
  return { ctx, W, H, theme };
}

function waiting(chart, ctx, W, H) {
  ctx.fillStyle = chart.theme.text;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.fillText("waiting for readings…", W / 2, H / 2);
}

/** Text at the largest size up to `max` px that fits `width`. */
function fitText(ctx, text, family, max, width) {
  let size = max;
  ctx.font = `600 ${size}px ${family}`;
  const w = ctx.measureText(text).width;
  if (w > width) size = Math.max(10, Math.floor((size * width) / w));
  ctx.font = `600 ${size}px ${family}`;
  return size;
}

export class StatChart extends LineChart {
  draw(now) {
    const { ctx, W, H, theme } = begin(this, now);
    const rows = shown(this);
    if (!rows.length) return waiting(this, ctx, W, H);
    const family = getComputedStyle(this.canvas).fontFamily || "system-ui, sans-serif";
    const [key, s] = rows[0];
    const color = this.colorFor(key);
    const last = s.v[s.end - 1];
    const tEnd = Date.now(), tStart = tEnd - this.windowMs;
    // Trend: the latest value against the one a tenth of the window earlier.
    const j = atOrBefore(s, s.ts[s.end - 1] - this.windowMs / 10);
    const prev = j >= 0 ? s.v[j] : last;
    const eps = Math.abs(prev) * 1e-3 + 1e-12;
    const trend = last > prev + eps ? "▲" : last < prev - eps ? "▼" : "▶";
    const text = `${fmtValue(last)}${this.unit ? ` ${this.unit}` : ""}`;
    const max = Math.min(72, H * 0.38);
    const size = fitText(ctx, text, family, max, W - 24 - max * 0.9);
    ctx.fillStyle = theme.text;
    ctx.textBaseline = "middle";
    const y = H * 0.36;
    // The value and its arrow, centred together.
    const tw = ctx.measureText(text).width;
    const x0 = (W - tw - size * 0.9) / 2;
    ctx.textAlign = "left";
    ctx.fillText(text, x0, y);
    ctx.font = `${Math.round(size * 0.5)}px ${family}`;
    ctx.fillStyle = color;
    ctx.fillText(trend, x0 + tw + size * 0.25, y);
    ctx.textAlign = "center";
    this.labelBoxes.push({ text, x0, x1: x0 + tw + size * 0.9, y0: y - size / 2, y1: y + size / 2 });
    this.stat = { key, value: last, text, trend };
    ctx.font = theme.font;
    ctx.fillStyle = theme.text;
    ctx.fillText(rows.length > 1 ? `${key} (and ${rows.length - 1} more)` : key, W / 2, y + size * 0.75);
    // Sparkline over the window.
    const a = Math.max(s.start, s.lowerBound(tStart)), b = s.end;
    let lo = Infinity, hi = -Infinity;
    for (let i = a; i < b; i++) { lo = Math.min(lo, s.v[i]); hi = Math.max(hi, s.v[i]); }
    if (b - a < 2) return;
    if (hi - lo < 1e-12) { lo -= 1; hi += 1; }
    const top = H * 0.68, h = H * 0.26;
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    const step = Math.max(1, Math.floor((b - a) / (W * 2)));
    for (let i = a; i < b; i += step) {
      const x = 8 + ((s.ts[i] - tStart) / this.windowMs) * (W - 16);
      const yy = top + h - ((s.v[i] - lo) / (hi - lo)) * h;
      if (i === a) ctx.moveTo(x, yy); else ctx.lineTo(x, yy);
    }
    ctx.stroke();
  }
}

export class GaugeChart extends LineChart {
  constructor(canvas, opts) {
    super(canvas, opts);
    this.min = opts.min;
    this.max = opts.max;
  }

  draw(now) {
    const { ctx, W, H, theme } = begin(this, now);
    const rows = shown(this);
    if (!rows.length) return waiting(this, ctx, W, H);
    const [key, s] = rows[0];
    const value = s.v[s.end - 1];
    // Without a configured scale: the window's range, rounded out.
    let lo = this.min, hi = this.max;
    if (lo === undefined || lo === null || hi === undefined || hi === null) {
      let a = Infinity, b = -Infinity;
      for (let i = s.start; i < s.end; i++) { a = Math.min(a, s.v[i]); b = Math.max(b, s.v[i]); }
      const pad = (b - a) * 0.1 || Math.abs(b) * 0.1 || 1;
      lo ??= a - pad;
      hi ??= b + pad;
    }
    const f = Math.max(0, Math.min(1, (value - lo) / (hi - lo)));
    // The arc spans 252°: its ends reach 0.59 r below the centre.
    const r = Math.max(10, Math.min(W * 0.38, (H - 30) / 1.75));
    const cx = W / 2, cy = 8 + r * 1.08;
    const a0 = Math.PI * 0.8, a1 = Math.PI * 2.2;
    ctx.lineCap = "round";
    ctx.lineWidth = Math.max(8, r * 0.16);
    ctx.strokeStyle = theme.grid;
    ctx.beginPath();
    ctx.arc(cx, cy, r, a0, a1);
    ctx.stroke();
    ctx.strokeStyle = this.colorFor(key);
    ctx.beginPath();
    ctx.arc(cx, cy, r, a0, a0 + (a1 - a0) * f);
    ctx.stroke();
    ctx.lineCap = "butt";
    // Alert thresholds (alerts.js sets `thresholds`): a mark across the arc at each one
    // within the scale.
    const marks = (this.thresholds || []).filter((t) => t >= lo && t <= hi);
    ctx.strokeStyle = theme.threshold;
    ctx.lineWidth = 3;
    for (const t of marks) {
      const a = a0 + (a1 - a0) * ((t - lo) / (hi - lo));
      const w = Math.max(8, r * 0.16);
      ctx.beginPath();
      ctx.moveTo(cx + Math.cos(a) * (r - w), cy + Math.sin(a) * (r - w));
      ctx.lineTo(cx + Math.cos(a) * (r + w), cy + Math.sin(a) * (r + w));
      ctx.stroke();
    }
    const family = getComputedStyle(this.canvas).fontFamily || "system-ui, sans-serif";
    const text = `${fmtValue(value)}${this.unit ? ` ${this.unit}` : ""}`;
    fitText(ctx, text, family, Math.min(40, r * 0.45), r * 1.4);
    ctx.fillStyle = theme.text;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(text, cx, cy - r * 0.1);
    ctx.font = theme.font;
    ctx.fillText(key, cx, cy + r * 0.3);
    ctx.textAlign = "left";
    ctx.fillText(fmtValue(lo), Math.max(2, cx - r - 10), Math.min(H - 8, cy + r * 0.75));
    ctx.textAlign = "right";
    ctx.fillText(fmtValue(hi), Math.min(W - 2, cx + r + 10), Math.min(H - 8, cy + r * 0.75));
    this.gauge = { key, value, min: lo, max: hi, fraction: f, thresholds: marks };
  }
}

const EARTH_M = 6371008.8;

/** Metres between two (lat, lon) in degrees (haversine). */
export function distanceM(lat1, lon1, lat2, lon2) {
  const r = Math.PI / 180;
  const dLat = (lat2 - lat1) * r, dLon = (lon2 - lon1) * r;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * r) * Math.cos(lat2 * r) * Math.sin(dLon / 2) ** 2;
  return 2 * EARTH_M * Math.asin(Math.min(1, Math.sqrt(h)));
}

/** Text in the current fill; over a map, on a `halo` of the background so it reads. */
function haloText(ctx, text, x, y, halo) {
  if (halo) {
    const { strokeStyle, lineWidth } = ctx;
    ctx.strokeStyle = halo;
    ctx.lineWidth = 4;
    ctx.lineJoin = "round";
    ctx.strokeText(text, x, y);
    ctx.strokeStyle = strokeStyle;
    ctx.lineWidth = lineWidth;
  }
  ctx.fillText(text, x, y);
}

/** GPS track: opts.lat and opts.lon name the two metrics; keys are "device · metric". */
export class TrackChart extends LineChart {
  constructor(canvas, opts) {
    super(canvas, opts);
    this.latMetric = opts.lat;
    this.lonMetric = opts.lon;
    this.map = null; // the hub's map tiles, once known (tiles.js)
    mapConfig().then((m) => { if (m) { this.map = m; this.invalidate(); } });
  }

  /**
   * Per device: [{t, lat, lon}] in [tStart, tEnd] of `series`, each latitude paired with
   * the longitude of the same time. Live fixes pair with the newest longitude at most
   * 5 s older (a device sends the two in one batch, not always in one reading); the
   * buckets of a zoomed range (`exact`) both start at multiples of the step, so they
   * pair only with the bucket of the same start.
   */
  tracks(series, tStart, tEnd, exact) {
    const tolerance = exact ? 0 : 5000;
    const by = new Map();
    for (const [key, s] of series) {
      const [dev, metric] = key.split(" · ");
      if (this.hidden.has(key)) continue;
      let d = by.get(dev);
      if (!d) { d = {}; by.set(dev, d); }
      if (metric === this.latMetric) d.lat = s; else if (metric === this.lonMetric) d.lon = s;
    }
    const out = [];
    for (const [dev, { lat, lon }] of [...by].sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (!lat || !lon || !lat.length || !lon.length) continue;
      const pts = [];
      for (let i = Math.max(lat.start, lat.lowerBound(tStart)); i < lat.end && lat.ts[i] <= tEnd; i++) {
        const j = atOrBefore(lon, lat.ts[i]);
        if (j < 0 || lat.ts[i] - lon.ts[j] > tolerance) continue;
        pts.push({ t: lat.ts[i], lat: lat.v[i], lon: lon.v[j] });
      }
      if (pts.length) out.push({ dev, pts });
    }
    return out;
  }

  draw(now) {
    const { ctx, W, H, theme } = begin(this, now);
    const { tStart, tEnd, series } = this.timeRange();
    const tracks = this.tracks(series, tStart, tEnd, !!this.view?.step);
    this.track = { devices: tracks.map((t) => ({ device: t.dev, points: t.pts.length })), from: tStart, to: tEnd };
    // The time strip under the map: the track's time axis, where zoom.js maps a drag.
    const stripH = 24, Hm = H - stripH, pad = 24;
    this.plot = { padL: pad, pw: Math.max(10, W - 2 * pad), tStart, tEnd };
    if (!tracks.length) {
      waiting(this, ctx, W, Hm);
      this.drawTimeStrip(ctx, tracks, Hm, W, theme);
      return;
    }
    let la0 = Infinity, la1 = -Infinity, lo0 = Infinity, lo1 = -Infinity;
    for (const { pts } of tracks) for (const p of pts) {
      la0 = Math.min(la0, p.lat); la1 = Math.max(la1, p.lat);
      lo0 = Math.min(lo0, p.lon); lo1 = Math.max(lo1, p.lon);
    }
    const padT = 16, pw = W - 2 * pad, ph = Math.max(10, Hm - padT - 26);
    let xOf, yOf, metresPerPx;
    if (this.map) {
      // Web Mercator, as the hub's tile server draws its tiles.
      const p = drawTiles(this, ctx, W, Hm, this.map, { la0, la1, lo0, lo1 }, { pw, ph, cx: W / 2, cy: padT + ph / 2 });
      ({ xOf, yOf, metresPerPx } = p);
      this.track.map = { z: p.z, tiles: p.tiles };
    } else {
      // Equirectangular around the middle latitude: true shapes at city scale.
      const k = Math.cos((((la0 + la1) / 2) * Math.PI) / 180);
      const spanX = Math.max((lo1 - lo0) * k, 1e-5), spanY = Math.max(la1 - la0, 1e-5);
      const scale = Math.min(pw / spanX, ph / spanY);
      const cxm = (lo0 + lo1) / 2, cym = (la0 + la1) / 2;
      xOf = (lon) => W / 2 + (lon - cxm) * k * scale;
      yOf = (lat) => padT + ph / 2 - (lat - cym) * scale;
      metresPerPx = ((Math.PI / 180) * EARTH_M) / scale;
    }
    // A scale bar: metres across a fifth of the width.
    const metres = (pw / 5) * metresPerPx;
    const nice = 10 ** Math.floor(Math.log10(metres));
    const bar = [1, 2, 5].map((m) => m * nice).filter((m) => m <= metres).pop() || nice;
    const barPx = bar / metresPerPx;
    ctx.strokeStyle = theme.axis;
    ctx.fillStyle = theme.text;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.moveTo(pad, Hm - 10);
    ctx.lineTo(pad + barPx, Hm - 10);
    ctx.stroke();
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    haloText(ctx, bar >= 1000 ? `${bar / 1000} km` : `${bar} m`, pad + barPx + 6, Hm - 4, this.map && theme.bg);
    const summary = [];
    for (const { dev, pts } of tracks) {
      const color = this.colorFor(dev);
      ctx.strokeStyle = color;
      ctx.lineWidth = 2;
      ctx.lineJoin = "round";
      ctx.beginPath();
      pts.forEach((p, i) => (i ? ctx.lineTo(xOf(p.lon), yOf(p.lat)) : ctx.moveTo(xOf(p.lon), yOf(p.lat))));
      ctx.stroke();
      const last = pts[pts.length - 1];
      const x = xOf(last.lon), y = yOf(last.lat);
      ctx.fillStyle = color;
      ctx.beginPath();
      ctx.arc(x, y, 5, 0, Math.PI * 2);
      ctx.fill();
      ctx.strokeStyle = theme.bg;
      ctx.lineWidth = 2;
      ctx.stroke();
      // Speed from the last two fixes a few seconds apart.
      let speed = null;
      for (let i = pts.length - 2; i >= 0; i--) {
        const dt = (last.t - pts[i].t) / 1000;
        if (dt >= 2) { speed = distanceM(pts[i].lat, pts[i].lon, last.lat, last.lon) / dt; break; }
      }
      const label = `${dev}${speed === null ? "" : ` · ${(speed * 3.6).toFixed(1)} km/h`}`;
      ctx.fillStyle = theme.text;
      ctx.textBaseline = "middle";
      ctx.textAlign = x > W - 140 ? "right" : "left";
      haloText(ctx, label, x + (x > W - 140 ? -9 : 9), y, this.map && theme.bg);
      summary.push({ device: dev, lat: last.lat, lon: last.lon, speed_kmh: speed === null ? null : speed * 3.6 });
    }
    this.track.latest = summary;
    if (this.map) drawAttribution(ctx, W, Hm, this.map.attribution, theme);
    this.drawTimeStrip(ctx, tracks, Hm, W, theme);
  }

  /** Under the map from `y`: each device's fixes as a bar in its colour along the time
   *  axis of the range shown. */
  drawTimeStrip(ctx, tracks, y, W, theme) {
    const { padL, pw, tStart, tEnd } = this.plot;
    ctx.fillStyle = theme.bg;
    ctx.fillRect(0, y, W, this.height - y);
    const xOf = (t) => padL + ((t - tStart) / (tEnd - tStart)) * pw;
    const barH = Math.max(1, Math.min(3, 6 / Math.max(1, tracks.length)));
    tracks.forEach(({ dev, pts }, k) => {
      ctx.fillStyle = this.colorFor(dev);
      ctx.fillRect(xOf(pts[0].t), y + 1 + k * barH, Math.max(2, xOf(pts[pts.length - 1].t) - xOf(pts[0].t)), barH);
    });
    drawTimeAxis(ctx, { tStart, tEnd, padL, pw, y: y + 9, W, theme, boxes: this.labelBoxes });
  }
}
