// Map tiles under the GPS track, for hubs whose `[dashboard] map_tiles` names a tile
// server (GET /api/dashboard, asked once per page): the Web Mercator projection that
// slippy-map tiles use, the zoom that fits a track, and one bounded cache of tile images
// shared by every track panel. Without a template the track keeps its own projection and
// no request leaves the hub.

import { api } from "./api.js";

const TILE = 256;
/** Tile images kept at most (about 16 MiB of decoded 256x256 tiles). */
const MAX_CACHED = 64;

let asked = null;
/** The hub's map settings `{tiles, attribution, max_zoom}`, or null (none configured). */
export function mapConfig() {
  if (!asked) asked = api.dashboard().then((r) => (r.ok ? r.data?.map ?? null : null));
  return asked;
}

/** World pixel coordinates at zoom 0 (0..256) of a (lat, lon) in degrees. */
export function mercator(lat, lon) {
  const clamped = Math.max(-85.05112878, Math.min(85.05112878, lat));
  const s = Math.sin((clamped * Math.PI) / 180);
  return {
    x: ((lon + 180) / 360) * TILE,
    y: (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * TILE,
  };
}

/** The tile (z, x, y) holding a (lat, lon) at zoom z. */
export function tileOf(lat, lon, z) {
  const p = mercator(lat, lon);
  const n = 2 ** z;
  return { z, x: Math.floor((p.x / TILE) * n), y: Math.floor((p.y / TILE) * n) };
}

const cache = new Map(); // url -> HTMLImageElement, oldest first

function tileUrl(template, z, x, y) {
  return template.replaceAll("{z}", z).replaceAll("{x}", x).replaceAll("{y}", y);
}

/** The image of one tile: cached, or started now (`onload` redraws the chart). */
function image(url, chart) {
  let img = cache.get(url);
  if (img) {
    cache.delete(url); // most recently used goes last
    cache.set(url, img);
    return img;
  }
  img = new Image();
  img.crossOrigin = "anonymous"; // a tile server that allows it keeps the canvas readable
  img.onload = () => chart.invalidate();
  img.src = url;
  cache.set(url, img);
  while (cache.size > MAX_CACHED) cache.delete(cache.keys().next().value);
  return img;
}

/**
 * A Web Mercator projection centred on the box (la0..la1, lo0..lo1) at the largest zoom
 * up to `map.max_zoom` whose pixels fit it in (pw x ph) around (cx, cy); it draws the
 * tiles that cover the canvas and returns {xOf, yOf, metresPerPx, z, tiles}.
 */
export function drawTiles(chart, ctx, W, H, map, box, area) {
  const { la0, la1, lo0, lo1 } = box;
  const a = mercator(la1, lo0), b = mercator(la0, lo1);
  const spanX = Math.max(b.x - a.x, 1e-9), spanY = Math.max(b.y - a.y, 1e-9);
  const fit = Math.log2(Math.min(area.pw / spanX, area.ph / spanY));
  const z = Math.max(0, Math.min(map.max_zoom, Math.floor(fit)));
  const scale = 2 ** z;
  const mid = { x: ((a.x + b.x) / 2) * scale, y: ((a.y + b.y) / 2) * scale };
  // canvas = world * scale + offset, whole pixels so that tiles meet without seams
  const ox = Math.round(area.cx - mid.x), oy = Math.round(area.cy - mid.y);
  const n = 2 ** z;
  const tiles = [];
  for (let ty = Math.floor(-oy / TILE); ty * TILE + oy < H; ty++) {
    if (ty < 0 || ty >= n) continue;
    for (let tx = Math.floor(-ox / TILE); tx * TILE + ox < W; tx++) {
      const wx = ((tx % n) + n) % n; // the world repeats east and west
      const img = image(tileUrl(map.tiles, z, wx, ty), chart);
      if (img.complete && img.naturalWidth) ctx.drawImage(img, tx * TILE + ox, ty * TILE + oy, TILE, TILE);
      tiles.push(`${z}/${wx}/${ty}`);
    }
  }
  const midLat = (la0 + la1) / 2;
  return {
    z,
    tiles,
    xOf: (lon) => mercator(0, lon).x * scale + ox,
    yOf: (lat) => mercator(lat, 0).y * scale + oy,
    metresPerPx: (Math.cos((midLat * Math.PI) / 180) * 2 * Math.PI * 6378137) / (TILE * scale),
  };
}

/** The attribution the tile server asks for, bottom right, on a veil for contrast. */
export function drawAttribution(ctx, W, H, text, theme) {
  if (!text) return;
  ctx.font = "11px system-ui, sans-serif";
  const w = ctx.measureText(text).width + 8;
  ctx.fillStyle = theme.bg;
  ctx.globalAlpha = 0.8;
  ctx.fillRect(W - w, H - 16, w, 16);
  ctx.globalAlpha = 1;
  ctx.fillStyle = theme.text;
  ctx.textAlign = "right";
  ctx.textBaseline = "bottom";
  ctx.fillText(text, W - 4, H - 3);
  ctx.font = theme.font;
}
