// Axis ticks and their labels, for the canvas charts: round value ticks labelled with
// the significant digits their spacing needs (SI prefixes from 10^4 up), and time ticks
// in the viewer's local time zone, with the date when the window spans days.
//
// Pure functions of numbers: the chart measures the labels these return and sizes its
// margins to fit them, so no label is ever clipped.

/** About `count` round tick values covering [lo, hi]. */
export function niceTicks(lo, hi, count) {
  const span = hi - lo;
  const raw = span / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  const ticks = [];
  for (let t = Math.floor(lo / step) * step; t <= hi + step * 0.5; t += step) ticks.push(+t.toPrecision(12));
  if (ticks.length < 2) ticks.push(ticks[0] + step);
  return ticks;
}

const PREFIXES = ["", "k", "M", "G", "T", "P", "E"];

/**
 * Labels for value ticks: as many decimals as the tick spacing needs and no more, and
 * past 10^4 an SI prefix (12.5k, 3.2M) so a label stays short whatever the magnitude.
 */
export function valueLabels(ticks) {
  const step = ticks.length > 1 ? Math.abs(ticks[1] - ticks[0]) : Math.abs(ticks[0]) || 1;
  const maxAbs = Math.max(...ticks.map(Math.abs));
  let scale = 1, prefix = "";
  if (maxAbs >= 1e4) {
    const k = Math.min(PREFIXES.length - 1, Math.floor(Math.log10(maxAbs) / 3));
    scale = 10 ** (3 * k);
    prefix = PREFIXES[k];
  }
  const s = step / scale;
  if (!(s > 0) || !Number.isFinite(s)) return ticks.map((t) => String(t));
  // Steps too small for 6 decimals, or values past the largest prefix: scientific.
  if (s < 1e-6 || maxAbs >= 1e21) {
    const digits = Math.min(15, Math.max(1, Math.ceil(Math.log10(maxAbs / step)) + 1));
    return ticks.map((t) => (Math.abs(t) < step / 2 ? "0" : t.toExponential(Math.max(0, digits - 1))));
  }
  const d = s >= 1 ? 0 : Math.min(6, Math.ceil(-Math.log10(s) - 1e-9));
  return ticks.map((t) => {
    const v = t / scale;
    if (Math.abs(v) < s / 2) return "0";
    return `${v.toFixed(d)}${prefix}`;
  });
}

const HOUR = 3600e3, DAY = 86400e3;
const TIME_STEPS = [1e3, 2e3, 5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3, 600e3, 900e3, 1800e3,
  HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 182 * DAY, 365 * DAY];

/** The tick spacing for a window of `windowMs` over `px` pixels: about one per 90 px. */
export function timeStep(windowMs, px, minPx = 90) {
  const target = windowMs / Math.max(1, px / minPx);
  return TIME_STEPS.find((s) => s >= target) || TIME_STEPS[TIME_STEPS.length - 1];
}

/**
 * Time ticks between tStart and tEnd, on round local times (midnight for day steps),
 * each with its label: HH:MM(:SS), and the date instead at midnight when the window
 * spans more than a day (every label is a date for steps of a day or more).
 */
export function timeTicks(tStart, tEnd, step) {
  const spansDays = tEnd - tStart > DAY;
  const out = [];
  let t = firstTick(tStart, step);
  for (let n = 0; t <= tEnd && n < 500; n++) {
    out.push({ t, label: timeLabel(t, step, spansDays) });
    t = nextTick(t, step);
  }
  return out;
}

function firstTick(t, step) {
  if (step < DAY) {
    // Round in local time (the zone offset of t, so a half-hour zone rounds right).
    const tz = new Date(t).getTimezoneOffset() * 60000;
    return Math.ceil((t - tz) / step) * step + tz;
  }
  const d = new Date(t);
  d.setHours(0, 0, 0, 0);
  if (d.getTime() < t) d.setDate(d.getDate() + 1);
  return d.getTime();
}

function nextTick(t, step) {
  if (step < DAY) return t + step;
  const d = new Date(t);
  d.setDate(d.getDate() + Math.round(step / DAY));
  return d.getTime();
}

const dateFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });

function timeLabel(t, step, spansDays) {
  const d = new Date(t);
  if (step >= DAY || (spansDays && d.getHours() === 0 && d.getMinutes() === 0)) return dateFmt.format(d);
  const hh = String(d.getHours()).padStart(2, "0");
  const mm = String(d.getMinutes()).padStart(2, "0");
  if (step >= 60e3) return `${hh}:${mm}`;
  return `${hh}:${mm}:${String(d.getSeconds()).padStart(2, "0")}`;
}
