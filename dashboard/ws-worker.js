// The room's WebSocket, in a dedicated Worker (started by ws.js): the socket's frames
// arrive and are parsed here, off the page's main thread, and are handed over in
// batches, one postMessage about every BATCH_MS, instead of one main-thread event per
// reading (8,000 a second at 200 devices x 4 metrics x 10 Hz).
//
// Messages from the page:   {op: "open", url} | {op: "send", text} | {op: "close", code, reason}
// Messages to the page:     {ev: "open"} | {ev: "batch", msgs: [parsed JSON, ...]}
//                           | {ev: "close", code, reason}
// Frames that are not JSON are dropped, as the page did before.

const BATCH_MS = 16;

let ws = null;
let batch = [];
let timer = 0;

function flush() {
  timer = 0;
  if (!batch.length) return;
  const msgs = batch;
  batch = [];
  postMessage({ ev: "batch", msgs });
}

self.onmessage = (e) => {
  const m = e.data;
  if (m.op === "open") {
    const sock = new WebSocket(m.url);
    ws = sock;
    sock.onopen = () => postMessage({ ev: "open" });
    sock.onmessage = (ev) => {
      try { batch.push(JSON.parse(ev.data)); } catch (_) { return; }
      if (!timer) timer = setTimeout(flush, BATCH_MS);
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      ws = null;
      clearTimeout(timer);
      flush(); // what arrived before the close comes first
      postMessage({ ev: "close", code: ev.code, reason: ev.reason });
    };
  } else if (m.op === "send") {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(m.text);
  } else if (m.op === "close") {
    const sock = ws;
    ws = null;
    clearTimeout(timer);
    batch = [];
    try { sock?.close(m.code, m.reason); } catch (_) { /* already closed */ }
  }
};
