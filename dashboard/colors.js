// Series colours: one per device id, the same in every chart, on every reload and in the
// hub's server-side plots (src/render/palette.rs holds the same table and hash; a unit
// test there reads this file and checks that both agree).
//
// The palette is Okabe–Ito's colour-blind-safe set, extended with four hues, each in a
// light-theme and a dark-theme shade: every shade has at least 3:1 contrast against its
// theme's chart background (WCAG 2 non-text contrast), 4:1 on dark. A device's colour is
// FNV-1a (32 bit) of the UTF-8 bytes of its id, modulo the palette length, so it does not
// depend on arrival order or on which other devices are in the room.

/** name, light-theme shade, dark-theme shade. Keep in step with src/render/palette.rs. */
export const PALETTE = [
  { name: "orange", light: "#c28600", dark: "#e69f00" },
  { name: "sky blue", light: "#1d99e0", dark: "#56b4e9" },
  { name: "bluish green", light: "#009e73", dark: "#009e73" },
  { name: "yellow", light: "#9e940d", dark: "#f0e442" },
  { name: "blue", light: "#0072b2", dark: "#0081c9" },
  { name: "vermillion", light: "#d55e00", dark: "#d55e00" },
  { name: "reddish purple", light: "#cb77a6", dark: "#cc79a7" },
  { name: "wine", light: "#882255", dark: "#d0458b" },
  { name: "indigo", light: "#332288", dark: "#7e6bda" },
  { name: "rose", light: "#cc6677", dark: "#cc6677" },
  { name: "brown", light: "#9c6b30", dark: "#a47032" },
];

const utf8 = new TextEncoder();

/** FNV-1a, 32 bit, of the UTF-8 bytes of `s`. */
export function fnv1a(s) {
  let h = 0x811c9dc5;
  for (const b of utf8.encode(s)) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

const indexCache = new Map();
/** The palette slot of a device id. */
export function colorIndex(id) {
  let i = indexCache.get(id);
  if (i === undefined) {
    i = fnv1a(id) % PALETTE.length;
    if (indexCache.size < 10000) indexCache.set(id, i);
  }
  return i;
}

const dark = window.matchMedia("(prefers-color-scheme: dark)");
let theme = "light";
function readTheme() {
  theme = document.documentElement.dataset.theme || (dark.matches ? "dark" : "light");
}
readTheme();
window.addEventListener("telehub-theme", readTheme);
dark.addEventListener("change", readTheme);

/** The colour of device `id` in the current (or the given) theme, as #rrggbb. */
export function colorFor(id, t = theme) {
  const p = PALETTE[colorIndex(id)];
  return t === "dark" ? p.dark : p.light;
}

/** The CSS value for a swatch of device `id`: follows the theme without a redraw. */
export function swatchColor(id) {
  return `var(--series-${colorIndex(id)})`;
}

// The swatches' custom properties, from the table above (the one definition on this side).
{
  const vars = (t) => PALETTE.map((p, i) => `--series-${i}: ${p[t]};`).join(" ");
  const css = `:root { ${vars("light")} }
@media (prefers-color-scheme: dark) { :root:not([data-theme="light"]) { ${vars("dark")} } }
:root[data-theme="dark"] { ${vars("dark")} }`;
  const style = document.createElement("style");
  style.id = "series-colors";
  style.textContent = css;
  document.head.append(style);
}
