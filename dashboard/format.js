// Small formatting helpers shared by the views.

/** A reading's value: up to 4 significant decimals, no trailing zeros. */
export function fmtValue(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
  const d = a >= 100 ? 1 : a >= 10 ? 2 : 3;
  return String(+v.toFixed(d));
}

/** "3 s", "4 min", "2 h" since `ts` (epoch ms). */
export function fmtAge(ts, now = Date.now()) {
  if (!ts) return "never";
  const s = Math.max(0, Math.round((now - ts) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

/** Creates an element: el("div", {class: "x", "aria-label": "y"}, child, "text"). */
export function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

/** A stable colour per device: a palette readable on light and dark, then golden-angle hues. */
const PALETTE = ["#2563eb", "#e4572e", "#17a398", "#c2410c", "#8b5cf6", "#db2777", "#0891b2", "#65a30d", "#b45309", "#4f46e5"];
const colors = new Map();
export function colorFor(device) {
  let c = colors.get(device);
  if (!c) {
    const i = colors.size;
    c = i < PALETTE.length ? PALETTE[i] : `hsl(${Math.round((i * 137.508) % 360)} 65% 48%)`;
    colors.set(device, c);
  }
  return c;
}
