// REST calls to the hub. Every call resolves, never throws: `{ok, status, data, code,
// error}`, where `code` is the hub's JSON error code. So a page can say "not available
// yet" for an endpoint this hub does not have (404) as calmly as a network error.
//
// Signed in (auth.js), every call carries `Authorization: Bearer`; a 401 tells `auth`,
// which shows the sign-in box. Images and downloads are fetched here too (as blobs), so
// they carry the header: never a token in a URL.

import { auth } from "./auth.js";

async function request(path, as = "json", token = undefined) {
  let resp;
  const headers = { accept: as === "json" ? "application/json" : "*/*" };
  const bearer = token === undefined ? auth.token : token;
  if (bearer) headers.authorization = `Bearer ${bearer}`;
  try {
    resp = await fetch(path, { headers, cache: "no-store" });
  } catch (e) {
    return { ok: false, status: 0, error: "hub unreachable" };
  }
  if (!resp.ok) {
    let error = `HTTP ${resp.status}`;
    let code = null;
    try {
      const body = await resp.json();
      code = body?.error ?? null;
      if (body && body.message) error = `${body.error || resp.status}: ${body.message}`;
    } catch (_) { /* not JSON */ }
    // A 401 to the token in use (not to one being checked) means sign in again.
    if (resp.status === 401 && token === undefined && bearer === auth.token) auth.unauthorized(401, code || "unauthorized");
    return { ok: false, status: resp.status, code, error };
  }
  try {
    const data = as === "json" ? await resp.json() : as === "blob" ? await resp.blob() : await resp.text();
    return { ok: true, status: resp.status, data };
  } catch (e) {
    return { ok: false, status: resp.status, error: `bad response: ${e.message}` };
  }
}

const enc = encodeURIComponent;

export const api = {
  rooms: () => request("/api/rooms"),
  /** The hub's dashboard settings (map tiles under GPS tracks). */
  dashboard: () => request("/api/dashboard"),
  /** Asks the hub about a token before signing in with it (no side effects). */
  checkToken: (token) => request("/api/rooms", "json", token),
  series: (room) => request(`/api/rooms/${enc(room)}/series`),
  history: (room, { metric, device, from, to, limit, step } = {}) => {
    const q = new URLSearchParams();
    if (device) q.set("device", device);
    if (metric) q.set("metric", metric);
    if (from) q.set("from", from);
    if (to) q.set("to", to);
    if (limit) q.set("limit", String(limit));
    if (step) q.set("step", step);
    return request(`/api/rooms/${enc(room)}/history?${q}`);
  },
  historyCsvUrl: (room, { metric, from }) => {
    const q = new URLSearchParams({ format: "csv" });
    if (metric) q.set("metric", metric);
    if (from) q.set("from", from);
    return `/api/rooms/${enc(room)}/history?${q}`;
  },
  fetchBlob: (url) => request(url, "blob"),
  plotUrl: (room, { metric, window, theme, width, height }) => {
    const q = new URLSearchParams({ metric, window, theme });
    if (width) q.set("width", String(width));
    if (height) q.set("height", String(height));
    return `/api/rooms/${enc(room)}/plot.svg?${q}`;
  },
};
