// A room, live: device cards (latest value, unit and age of each metric; online or
// offline from presence; controls), a chart per metric (live canvas for 5m/15m, the
// hub's plotters SVG for 1h/24h), CSV download, and the connection's recovery.
//
// Readings only touch data structures when they arrive; the DOM is brought up to date
// once per animation frame (cards) and the charts draw in their own frame loop.

import { api } from "./api.js";
import { LineChart } from "./chart.js";
import { colorFor, swatchColor } from "./colors.js";
import { el, fmtAge, fmtValue } from "./format.js";
import { perf } from "./perf.js";
import { RoomConnection } from "./ws.js";

const WINDOWS = [
  { key: "5m", ms: 5 * 60e3, live: true },
  { key: "15m", ms: 15 * 60e3, live: true },
  { key: "1h", ms: 3600e3, live: false },
  { key: "24h", ms: 86400e3, live: false },
];
/** History the live charts load when the room opens: the longest live window. */
const BACKFILL = "-15m";
/** Points asked for per metric; a room with more in the window is asked again in
 *  buckets (`step`), whose means chart the same at this width. */
const BACKFILL_LIMIT = 10000;
const BACKFILL_STEP = "5s";
const COMMAND_TIMEOUT_MS = 15000;
const PLOT_REFRESH_MS = 15000;
const CARD_REFRESH_MS = 200;

const COMMANDS = {
  set_interval: { label: "Set interval", arg: "ms", argLabel: "Interval (ms)", min: 20, step: 1, value: 1000 },
  set_setpoint: { label: "Set setpoint", arg: "value", argLabel: "Setpoint", step: "any", value: 21 },
  reboot: { label: "Reboot", arg: null },
};

export function renderRoom(root, room, { ui, clientId }) {
  const state = {
    room,
    clientId,
    conn: "connecting",
    epoch: null,
    offset: null,
    readings: 0,
    reconnects: 0,
    closes: [], // the close codes of lost connections, newest last (at most 20)
    lastRecovered: null,
    devices: new Map(), // device -> {online, via, metrics: Map(metric -> {value, unit, ts})}
    metrics: new Map(), // metric -> {unit}
    acks: [], // {id, device, name, ok, result, error}
    historyAvailable: null,
    lastCsv: null, // {url, status, bytes} of the last CSV download
    window: "5m",
  };
  let destroyed = false;
  const timers = [];

  // ---- layout ----------------------------------------------------------------------
  const onlineCount = el("span", { class: "pill", dataset: { testid: "online-count" } }, "0 devices online");
  const windowGroup = el("div", { class: "seg", role: "radiogroup", "aria-label": "Time window" },
    WINDOWS.map((w) => el("label", { class: "seg-opt" },
      el("input", { type: "radio", name: "window", value: w.key, checked: w.key === state.window,
        onchange: () => setWindow(w.key) }),
      el("span", {}, w.key))));
  const csvBtn = el("button", { type: "button", class: "btn", onclick: () => downloadCsv(null) },
    el("span", { "aria-hidden": "true" }, "⤓ "), "CSV");
  const historyNote = el("p", { class: "muted small history-note", role: "status" });
  const cards = el("div", { class: "cards", role: "list", "aria-label": "Devices" });
  const noDevices = el("p", { class: "muted empty" }, "No devices in this room yet. Values appear as soon as a device sends.");
  const charts = el("div", { class: "charts" });
  const noCharts = el("p", { class: "muted empty" }, "No metrics yet.");

  root.append(el("section", { class: "room-page" },
    el("div", { class: "room-head pad" },
      el("div", { class: "room-title" },
        el("h1", {}, el("span", { class: "muted prefix" }, "Room "), room),
        onlineCount),
      el("div", { class: "room-tools" }, windowGroup, csvBtn)),
    el("div", { class: "room-grid" },
      el("section", { class: "panel charts-panel", "aria-labelledby": "charts-h" },
        el("h2", { id: "charts-h", class: "panel-h" }, "Charts"), historyNote, noCharts, charts),
      el("section", { class: "panel devices-panel", "aria-labelledby": "devices-h" },
        el("h2", { id: "devices-h", class: "panel-h" }, "Devices"), noDevices, cards))));

  // ---- devices ---------------------------------------------------------------------
  const cardEls = new Map(); // device -> {card, badge, dl, rows: Map(metric -> {value, unit, age})}
  const dirtyCells = new Set(); // "device\u0000metric"
  let cardsRaf = 0;

  function device(name) {
    let d = state.devices.get(name);
    if (!d) {
      d = { online: false, via: "ws", metrics: new Map() };
      state.devices.set(name, d);
      makeCard(name);
    }
    return d;
  }

  function makeCard(name) {
    const id = `dev-${cssId(name)}`;
    const badge = el("span", { class: "badge", dataset: { testid: "presence" } });
    const dl = el("dl", { class: "metrics" });
    const ackLine = el("p", { class: "cmd-status", role: "status", "aria-live": "polite", dataset: { testid: "cmd-status" } });
    const select = el("select", { id: `${id}-cmd`, name: "command" },
      Object.entries(COMMANDS).map(([k, c]) => el("option", { value: k }, c.label)));
    const argLabel = el("label", { for: `${id}-arg` });
    const arg = el("input", { id: `${id}-arg`, name: "arg", type: "number", required: true });
    const argWrap = el("div", { class: "field" }, argLabel, arg);
    const send = el("button", { type: "submit", class: "btn primary" }, "Send");
    const syncArg = () => {
      const c = COMMANDS[select.value];
      argWrap.hidden = !c.arg;
      arg.disabled = !c.arg;
      if (c.arg) {
        argLabel.textContent = c.argLabel;
        arg.step = String(c.step);
        if (c.min !== undefined) arg.min = String(c.min); else arg.removeAttribute("min");
        arg.value = String(c.value);
      }
    };
    select.addEventListener("change", syncArg);
    syncArg();
    const form = el("form", { class: "cmd-form", onsubmit: (e) => {
      e.preventDefault();
      if (!form.reportValidity()) return;
      const c = COMMANDS[select.value];
      const args = c.arg ? { [c.arg]: Number(arg.value) } : {};
      sendCommand(name, select.value, args, ackLine);
    } },
    el("div", { class: "field" }, el("label", { for: `${id}-cmd` }, "Command"), select),
    argWrap, send);
    const details = el("details", { class: "controls" },
      el("summary", {}, "Controls", el("span", { class: "sr-only" }, ` for ${name}`)), form);
    const card = el("article", { class: "card", role: "listitem", "aria-labelledby": `${id}-h`, dataset: { device: name } },
      el("header", { class: "card-head" },
        el("span", { class: "swatch", style: `background:${swatchColor(name)}`, "aria-hidden": "true" }),
        el("h3", { id: `${id}-h` }, name),
        badge),
      dl, details, ackLine);
    cardEls.set(name, { card, badge, dl, rows: new Map(), via: null });
    // Keep cards sorted by name.
    const after = [...cardEls.keys()].filter((k) => k > name).sort()[0];
    cards.insertBefore(card, after ? cardEls.get(after).card : null);
    noDevices.hidden = true;
    updatePresence(name);
  }

  function updatePresence(name) {
    const d = state.devices.get(name);
    const c = cardEls.get(name);
    if (!d || !c) return;
    c.card.classList.toggle("offline", !d.online);
    c.badge.className = `badge ${d.online ? "online" : "offline"}`;
    c.badge.textContent = d.online ? (d.via === "mqtt" ? "online · mqtt" : "online") : "offline";
    let n = 0;
    for (const x of state.devices.values()) if (x.online) n += 1;
    onlineCount.textContent = `${n} of ${state.devices.size} device${state.devices.size === 1 ? "" : "s"} online`;
  }

  function cell(name, metric) {
    const c = cardEls.get(name);
    let r = c.rows.get(metric);
    if (!r) {
      const value = el("span", { class: "value" });
      const unit = el("span", { class: "unit" });
      const age = el("span", { class: "age" });
      const row = el("div", { class: "metric", dataset: { metric } },
        el("dt", {}, metric), el("dd", {}, value, unit, age));
      const rows = [...c.rows.keys(), metric].sort();
      const next = rows[rows.indexOf(metric) + 1];
      c.dl.insertBefore(row, next ? c.rows.get(next).row : null);
      r = { row, value, unit, age };
      c.rows.set(metric, r);
    }
    return r;
  }

  function flushCards() {
    cardsRaf = 0;
    const now = Date.now();
    for (const key of dirtyCells) {
      const [name, metric] = key.split("\u0000");
      const m = state.devices.get(name)?.metrics.get(metric);
      if (!m) continue;
      const r = cell(name, metric);
      const v = fmtValue(m.value);
      if (r.value.textContent !== v) r.value.textContent = v;
      const u = m.unit || "";
      if (r.unit.textContent !== u) r.unit.textContent = u;
      const a = fmtAge(m.ts, now);
      if (r.age.textContent !== a) r.age.textContent = a;
    }
    dirtyCells.clear();
  }

  // Card values refresh at most 5 times a second: faster is unreadable, and with 50
  // devices each refresh costs a style and layout pass.
  let cardsTimer = 0;
  let cardsFlushedAt = 0;
  function markCell(name, metric) {
    dirtyCells.add(`${name}\u0000${metric}`);
    if (cardsRaf || cardsTimer) return;
    const wait = Math.max(0, CARD_REFRESH_MS - (performance.now() - cardsFlushedAt));
    cardsTimer = setTimeout(() => {
      cardsTimer = 0;
      cardsRaf = requestAnimationFrame(() => { cardsFlushedAt = performance.now(); flushCards(); });
    }, wait);
  }

  // Ages tick every second.
  timers.push(setInterval(() => {
    const now = Date.now();
    for (const [name, d] of state.devices) {
      const c = cardEls.get(name);
      for (const [metric, m] of d.metrics) {
        const r = c.rows.get(metric);
        if (!r) continue;
        const a = fmtAge(m.ts, now);
        if (r.age.textContent !== a) r.age.textContent = a;
        r.row.classList.toggle("stale", now - m.ts > 60000);
      }
    }
  }, 1000));

  // ---- charts ----------------------------------------------------------------------
  const chartEls = new Map(); // metric -> {fig, canvas, chart, img, imgNote, legend, legendItems}
  const backfilled = new Set();

  function metricEntry(metric, unit) {
    let m = state.metrics.get(metric);
    if (!m) {
      m = { unit: unit || "" };
      state.metrics.set(metric, m);
      makeChart(metric);
    } else if (unit && !m.unit) {
      m.unit = unit;
      const c = chartEls.get(metric);
      c.chart.setUnit(unit);
      c.unitEl.textContent = ` (${unit})`;
    }
    return m;
  }

  function makeChart(metric) {
    const unit = state.metrics.get(metric).unit;
    const id = `chart-${cssId(metric)}`;
    const canvas = el("canvas", { role: "img", "aria-label": `Live chart of ${metric}, one line per device`, dataset: { metric } });
    const img = el("img", { class: "plot", alt: `Chart of ${metric} rendered by the hub`, hidden: true });
    const imgNote = el("p", { class: "muted small plot-note", hidden: true });
    const legend = el("ul", { class: "legend", "aria-label": `Devices in the ${metric} chart` });
    const unitEl = el("span", { class: "muted" }, unit ? ` (${unit})` : "");
    const fig = el("figure", { class: "chart", "aria-labelledby": `${id}-h`, dataset: { metric } },
      el("figcaption", { class: "chart-head" },
        el("h3", { id: `${id}-h` }, metric, unitEl),
        el("button", { type: "button", class: "btn small ghost", "aria-label": `Download ${metric} as CSV`,
          onclick: () => downloadCsv(metric) }, "CSV")),
      el("div", { class: "chart-box" }, canvas, img, imgNote),
      legend);
    const names = [...chartEls.keys(), metric].sort();
    const next = names[names.indexOf(metric) + 1];
    charts.insertBefore(fig, next ? chartEls.get(next).fig : null);
    noCharts.hidden = true;
    const w = WINDOWS.find((x) => x.key === state.window);
    const chart = new LineChart(canvas, { windowMs: w.live ? w.ms : 15 * 60e3, unit, label: metric, colorFor });
    const c = { fig, canvas, chart, img, imgNote, legend, legendItems: new Map(), unitEl, plotTimer: 0 };
    chartEls.set(metric, c);
    if (!w.live) showPlot(metric);
    if (state.historyAvailable !== false && initialBackfillDone) backfill([metric]);
  }

  function legendItem(metric, name) {
    const c = chartEls.get(metric);
    if (c.legendItems.has(name)) return;
    const box = el("input", { type: "checkbox", checked: true, onchange: () => c.chart.toggle(name, box.checked) });
    const li = el("li", {}, el("label", {}, box,
      el("span", { class: "swatch", style: `background:${swatchColor(name)}`, "aria-hidden": "true" }), name));
    c.legendItems.set(name, li);
    const names = [...c.legendItems.keys()].sort();
    const next = names[names.indexOf(name) + 1];
    c.legend.insertBefore(li, next ? c.legendItems.get(next) : null);
  }

  function setWindow(key) {
    state.window = key;
    const w = WINDOWS.find((x) => x.key === key);
    for (const [metric, c] of chartEls) {
      if (w.live) {
        clearInterval(c.plotTimer);
        c.img.hidden = true;
        c.imgNote.hidden = true;
        c.canvas.hidden = false;
        c.chart.setWindow(w.ms);
      } else {
        showPlot(metric);
      }
    }
  }

  async function showPlot(metric) {
    const c = chartEls.get(metric);
    c.canvas.hidden = true;
    c.img.hidden = false;
    clearInterval(c.plotTimer);
    const load = async () => {
      const key = state.window;
      const theme = window.telehub?.theme?.() || "light";
      const rect = c.fig.querySelector(".chart-box").getBoundingClientRect();
      const url = api.plotUrl(room, {
        metric, window: key, theme,
        width: Math.max(320, Math.min(2000, Math.round(rect.width))),
        height: Math.max(200, Math.min(1200, Math.round(rect.height || 260))),
      });
      const res = await api.fetchBlob(url);
      if (destroyed || state.window !== key) return;
      if (res.ok) {
        const old = c.img.src;
        c.img.src = URL.createObjectURL(res.data);
        if (old.startsWith("blob:")) URL.revokeObjectURL(old);
        c.img.hidden = false;
        c.imgNote.hidden = true;
      } else {
        c.img.hidden = true;
        c.imgNote.hidden = false;
        c.imgNote.textContent = res.status === 404
          ? `The hub does not render ${key} charts yet (plots not available on this hub).`
          : `Could not load the ${key} chart: ${res.error}.`;
      }
    };
    await load();
    c.plotTimer = setInterval(load, PLOT_REFRESH_MS);
  }

  window.addEventListener("telehub-theme", onTheme);
  function onTheme() {
    for (const [metric, c] of chartEls) {
      c.chart.themeChanged();
      if (!WINDOWS.find((w) => w.key === state.window).live) showPlot(metric);
    }
  }

  // ---- history ---------------------------------------------------------------------
  let initialBackfillDone = false;

  async function backfill(metrics, force = false) {
    const todo = metrics.filter((m) => force || !backfilled.has(m));
    for (const m of todo) backfilled.add(m);
    let failed = null;
    await Promise.all(todo.map(async (metric) => {
      let res = await api.history(room, { metric, from: BACKFILL, limit: BACKFILL_LIMIT });
      if (res.ok && (res.data.points || []).length >= BACKFILL_LIMIT) {
        const coarse = await api.history(room, { metric, from: BACKFILL, step: BACKFILL_STEP, limit: BACKFILL_LIMIT });
        if (coarse.ok) res = coarse;
      }
      if (destroyed) return;
      // A room or series the history does not know yet simply has no past.
      if (!res.ok && (res.code === "unknown_room" || res.code === "unknown_series")) return;
      if (!res.ok) { failed = res; return; }
      const byDevice = new Map();
      for (const p of res.data.points || []) {
        const value = typeof p.value === "number" ? p.value : p.mean;
        if (typeof p.ts !== "number" || typeof value !== "number") continue;
        let arr = byDevice.get(p.device);
        if (!arr) { arr = []; byDevice.set(p.device, arr); }
        arr.push({ ts: p.ts, value });
      }
      const c = chartEls.get(metric);
      if (!c) return;
      for (const [dev, pts] of byDevice) {
        c.chart.merge(dev, pts);
        legendItem(metric, dev);
        device(dev);
      }
    }));
    if (destroyed || !todo.length) return;
    if (failed) {
      state.historyAvailable = false;
      historyNote.textContent = failed.status === 404
        ? "History is not available on this hub yet: charts start from when this page opened."
        : `Could not load history (${failed.error}); charts start from when this page opened.`;
    } else {
      state.historyAvailable = true;
      historyNote.textContent = "";
    }
    return !failed;
  }

  async function loadSeries() {
    const res = await api.series(room);
    if (destroyed) return;
    if (res.ok) {
      for (const s of res.data.series || []) {
        metricEntry(s.metric, s.unit);
        const d = device(s.device);
        if (!d.metrics.has(s.metric) && typeof s.last_value === "number") {
          d.metrics.set(s.metric, { value: s.last_value, unit: s.unit, ts: s.last_ts });
          markCell(s.device, s.metric);
        }
      }
    }
    initialBackfillDone = true;
    await backfill([...state.metrics.keys()]);
  }

  // ---- readings and messages -------------------------------------------------------
  function applyReading(r) {
    const d = device(r.device);
    const m = metricEntry(r.metric, r.unit);
    const prev = d.metrics.get(r.metric);
    if (!prev || r.ts >= prev.ts) {
      d.metrics.set(r.metric, { value: r.value, unit: r.unit || prev?.unit || m.unit, ts: r.ts });
      markCell(r.device, r.metric);
    }
    const c = chartEls.get(r.metric);
    if (!c.legendItems.has(r.device)) legendItem(r.metric, r.device);
    c.chart.push(r.device, r.ts, r.value);
  }

  function onMessage(msg) {
    const t0 = performance.now();
    switch (msg.type) {
      case "reading":
        state.readings += 1;
        state.offset = conn.offset;
        applyReading(msg);
        break;
      case "snapshot":
        for (const s of msg.series || []) {
          applyReading({ device: s.device, metric: s.metric, value: s.value, unit: s.unit, ts: s.ts });
        }
        if (!initialBackfillDone) { /* loadSeries will backfill these metrics */ } else backfill([...state.metrics.keys()]);
        break;
      case "presence":
        if (msg.role === "device") {
          const d = device(msg.client);
          d.online = msg.event === "join";
          if (msg.via) d.via = msg.via;
          updatePresence(msg.client);
        }
        break;
      case "ack":
        settleCommand(msg.id, msg.ok, msg.ok ? msg.result : msg.result, null);
        break;
      case "error":
        if (msg.id && pending.has(msg.id)) settleCommand(msg.id, false, null, msg);
        else ui.notice(`The hub reported an error: ${msg.code}: ${msg.message}`, "warn");
        break;
      default:
        break;
    }
    perf.noteMessage(performance.now() - t0);
  }

  function onWelcome(msg, info) {
    state.epoch = msg.epoch;
    state.offset = conn.offset;
    // Members: every device listed is online; everyone else we knew is not.
    const online = new Map();
    for (const m of msg.members || []) if (m.role === "device") online.set(m.client, m.via || "ws");
    for (const name of online.keys()) device(name);
    for (const [name, d] of state.devices) {
      d.online = online.has(name);
      if (d.online) d.via = online.get(name);
      updatePresence(name);
    }
    if (info.reconnect) {
      state.reconnects += 1;
      state.lastRecovered = info.recovered;
      if (info.recovered) {
        ui.notice(null);
      } else {
        ui.notice("Reconnected, but the hub could not replay every reading this page missed. Reloading history…", "warn");
        backfill([...state.metrics.keys()], true).then((ok) => {
          if (destroyed) return;
          ui.notice(ok
            ? "Reconnected after missing some readings; history was reloaded to fill the gap."
            : "Reconnected after missing some readings. The hub has no history to fill the gap, so the charts may show one.",
          "warn");
        });
      }
    }
  }

  function onStatus(s) {
    state.conn = s.state;
    clearInterval(countdown);
    if (s.state === "live") ui.setConn("live", "Live", `${room}`);
    else if (s.state === "connecting") ui.setConn("connecting", "Connecting…");
    else if (s.state === "reconnecting") ui.setConn("connecting", "Reconnecting…", `attempt ${s.attempt}`);
    else if (s.state === "waiting") {
      state.closes.push(s.code ?? 0);
      if (state.closes.length > 20) state.closes.shift();
      const tick = () => {
        const left = Math.max(0, Math.ceil((s.until - performance.now()) / 1000));
        ui.setConn("waiting", `Disconnected: ${s.why}`, `retry in ${left} s`);
      };
      tick();
      countdown = setInterval(tick, 1000);
    } else if (s.state === "refused") {
      // 1008 forbidden: a good token without this room (unauthorized and 4001 take the
      // page to the sign-in box instead).
      ui.setConn("offline", "Not allowed", `${s.code} ${s.reason || ""}`.trim());
      if (s.reason === "forbidden") {
        ui.notice(`Your token does not give access to room ${room} (the hub closed the connection: ${s.code} forbidden).`, "error",
          [{ label: "All rooms", onclick: () => { location.hash = "#/"; } }]);
      }
    } else if (s.state === "signed-out") {
      ui.setConn("offline", "Signed out");
    } else if (s.state === "replaced") {
      ui.setConn("offline", "Paused: opened elsewhere");
      ui.notice("This room was opened by another connection with this page's id, so this page stopped to let it have the room.", "warn",
        [{ label: "Use this page", onclick: () => { ui.notice(null); conn.retryNow(); } }]);
    }
  }
  let countdown = 0;

  // ---- commands --------------------------------------------------------------------
  const pending = new Map(); // id -> {device, name, line, timer}
  let cmdSeq = 0;

  function sendCommand(name, command, args, line) {
    const id = `${clientId}-c${++cmdSeq}`;
    const ok = conn.send({ type: "command", id, to: name, name: command, args });
    line.className = "cmd-status";
    if (!ok) {
      line.classList.add("err");
      line.textContent = "Not sent: the page is not connected to the hub.";
      return;
    }
    line.classList.add("pending");
    line.textContent = `Sent ${command} (${id}), waiting for the device…`;
    const timer = setTimeout(() => settleCommand(id, false, null, { code: "timeout", message: `no answer within ${COMMAND_TIMEOUT_MS / 1000} s` }), COMMAND_TIMEOUT_MS);
    pending.set(id, { device: name, name: command, line, timer });
  }

  function settleCommand(id, ok, result, error) {
    const p = pending.get(id);
    if (!p) return;
    pending.delete(id);
    clearTimeout(p.timer);
    state.acks.push({ id, device: p.device, name: p.name, ok, result, error: error?.code });
    if (state.acks.length > 50) state.acks.shift();
    p.line.className = `cmd-status ${ok ? "ok" : "err"}`;
    if (ok) p.line.textContent = `✓ ${p.name} acknowledged${result ? `: ${summarize(result)}` : ""}`;
    else if (error) p.line.textContent = `✗ ${p.name} failed: ${error.code}: ${error.message}`;
    else p.line.textContent = `✗ ${p.name} refused by the device${result ? `: ${summarize(result)}` : ""}`;
  }

  // ---- CSV -------------------------------------------------------------------------
  async function downloadCsv(metric) {
    const w = WINDOWS.find((x) => x.key === state.window);
    const url = api.historyCsvUrl(room, { metric, from: `-${w.key}` });
    const res = await api.fetchBlob(url);
    state.lastCsv = { url, status: res.status, bytes: res.ok ? res.data.size : 0 };
    if (!res.ok) {
      ui.notice(res.status === 404
        ? "CSV download is not available: this hub does not serve history yet."
        : `CSV download failed: ${res.error}`, "warn");
      return;
    }
    const a = el("a", { href: URL.createObjectURL(res.data), download: `${room}${metric ? "-" + metric.replace(/\//g, "_") : ""}-${w.key}.csv` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  // ---- start -----------------------------------------------------------------------
  const conn = new RoomConnection(room, clientId, { onStatus, onWelcome, onMessage });
  conn.start();
  loadSeries();

  return {
    state,
    conn,
    destroy() {
      destroyed = true;
      conn.stop();
      for (const t of timers) clearInterval(t);
      clearInterval(countdown);
      if (cardsRaf) cancelAnimationFrame(cardsRaf);
      clearTimeout(cardsTimer);
      for (const c of chartEls.values()) { c.chart.destroy(); clearInterval(c.plotTimer); }
      for (const p of pending.values()) clearTimeout(p.timer);
      window.removeEventListener("telehub-theme", onTheme);
    },
  };
}

function cssId(s) {
  return s.replace(/[^A-Za-z0-9_-]/g, "_");
}

function summarize(v) {
  if (v === null || v === undefined) return "";
  if (typeof v !== "object") return String(v);
  if (v.error && v.message) return `${v.error}: ${v.message}`;
  return Object.entries(v).map(([k, x]) => `${k} ${typeof x === "object" ? JSON.stringify(x) : x}`).join(", ");
}
