// Small formatting helpers shared by the views.

/** A reading's value: 6 significant digits without trailing zeros (52.3836, 21.5),
 *  with an SI prefix from a million up (1.23460M), scientific for the tiny. */
export function fmtValue(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e21 || a < 1e-4)) return v.toExponential(3);
  const k = a >= 1e6 ? Math.floor(Math.log10(a) / 3) : 0;
  const s = String(+(v / 10 ** (3 * k)).toPrecision(6));
  return k ? `${s}${" kMGTPE"[k]}` : s;
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
