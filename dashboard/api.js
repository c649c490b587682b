// REST calls to the hub. Every call resolves, never throws: `{ok, status, data, code,
// error}`, where `code` is the hub's JSON error code. So a page can say "not available
// yet" for an endpoint this hub does not have (404) as calmly as a network error.

async function request(path, as = "json") {
  let resp;
  try {
    resp = await fetch(path, { headers: { accept: as === "json" ? "application/json" : "*/*" }, cache: "no-store" });
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
  series: (room) => request(`/api/rooms/${enc(room)}/series`),
  history: (room, { metric, device, from, limit, step } = {}) => {
    const q = new URLSearchParams();
    if (device) q.set("device", device);
    if (metric) q.set("metric", metric);
    if (from) q.set("from", from);
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
