// A room, live: device cards (latest value, unit and age of each metric; online or
// offline from presence; controls), panels as the room's layout says (layout.js: by
// default a chart per metric; live canvas for 5m/15m, the hub's plotters SVG for 1h,
// rollup bands for 24h to 1y), CSV download, kiosk mode, and the connection's recovery.
//
// Every (device, metric) has one Series in `store`; panels draw those shared series
// (panels.js, timeline.js; zoom.js zooms those with a time axis), so rebuilding panels
// after a layout edit copies nothing. Readings only touch data structures when they
// arrive; the DOM is brought up to date once per animation frame (cards) and the charts
// draw in their own frame loop.

import { api } from "./api.js";
import { Series, drawBands } from "./chart.js";
import { LayoutBar, panelSpecs } from "./layout.js";
import { isBinary } from "./timeline.js";
import { chartFor, describe, panelLabel } from "./panels.js";
import { startKiosk } from "./kiosk.js";
import { zoomable } from "./zoom.js";
import { colorFor, swatchColor } from "./colors.js";
import { el, fmtAge, fmtValue } from "./format.js";
import { perf } from "./perf.js";
import { RoomConnection } from "./ws.js";

// Live canvas windows, the hub's plot (memory holds an hour), and long windows charted
// from the hub's rollup tiers (a min–max band and the mean: no raw points are loaded).
const WINDOWS = [
  { key: "5m", ms: 5 * 60e3, live: true },
  { key: "15m", ms: 15 * 60e3, live: true },
  { key: "1h", ms: 3600e3, live: false },
  { key: "24h", ms: 86400e3, live: false, rollup: true },
  { key: "7d", ms: 7 * 86400e3, live: false, rollup: true },
  { key: "30d", ms: 30 * 86400e3, live: false, rollup: true },
  { key: "1y", ms: 365 * 86400e3, live: false, rollup: true },
];
/** History the live charts load when the room opens: the longest live window. */
const BACKFILL = "-15m";
/** Points asked for per metric; a room with more in the window is asked again in
 *  buckets (`step`), whose means chart the same at this width. */
const BACKFILL_LIMIT = 10000;
const BACKFILL_STEP = "5s";
/** Panel kinds with a time axis, which zoom and pan (zoom.js). */
const ZOOMABLE = new Set(["timeseries", "timeline", "track"]);
const COMMAND_TIMEOUT_MS = 15000;
const PLOT_REFRESH_MS = 15000;
const CARD_REFRESH_MS = 200;

const COMMANDS = {
  set_interval: { label: "Set interval", arg: "ms", argLabel: "Interval (ms)", min: 20, step: 1, value: 1000 },
  set_setpoint: { label: "Set setpoint", arg: "value", argLabel: "Setpoint", step: "any", value: 21 },
  reboot: { label: "Reboot", arg: null },
};

export function renderRoom(root, room, { ui, clientId, params = new URLSearchParams() }) {
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
    lastReadingAt: 0, // when the last live reading arrived (Date.now())
    kiosk: null, // kiosk mode's state: {wakeLock, stale}
    window: "5m",
    skipped: 0, // readings the hub coalesced away since this tab last caught up
  };
  let destroyed = false;
  const timers = [];
  // "catching up (N readings skipped)" while the hub coalesces this tab's readings.
  const catchingUp = el("span", { class: "pill warn", role: "status", hidden: true, dataset: { testid: "catching-up" } });
  let caughtUpTimer = null;

  // ---- page layout -----------------------------------------------------------------
  // The saved layout (layout.js) decides which panels show; until it has loaded nothing
  // is drawn, so a wall screen never flashes the automatic view first.
  const bar = new LayoutBar(room, {
    wanted: params.get("layout"),
    ui,
    onChange: (l, ed, opts) => {
      layout = l;
      editing = ed;
      if (opts?.materialize) materializeNext = true;
      buildPanels();
    },
  });
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
        onlineCount, catchingUp),
      el("div", { class: "room-tools" }, windowGroup, csvBtn, bar.el)),
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
        el("h3", { id: `${id}-h`, title: name }, state.devices.get(name)?.label || name),
        badge),
      dl, details, ackLine);
    const hideBtn = el("button", { type: "button", class: "btn small", hidden: !editing, "aria-label": `Hide the card of ${name}`,
      onclick: () => bar.hideDevice(name) }, "Hide");
    const upBtn = el("button", { type: "button", class: "btn small", hidden: !editing, "aria-label": `Move the card of ${name} earlier`,
      onclick: () => bar.moveDevice(name, [...cards.children].map((c) => c.dataset.device)) }, "↑");
    card.querySelector(".card-head").append(upBtn, hideBtn);
    cardEls.set(name, { card, badge, dl, rows: new Map(), via: null, hideBtn, upBtn, visible: true });
    cardsSeen.observe(card);
    // Keep cards sorted by name.
    const after = [...cardEls.keys()].filter((k) => k > name).sort()[0];
    cards.insertBefore(card, after ? cardEls.get(after).card : null);
    noDevices.hidden = true;
    if (layout) applyCardLayout();
    updatePresence(name);
  }

  function updatePresence(name) {
    const d = state.devices.get(name);
    const c = cardEls.get(name);
    if (!d || !c) return;
    c.card.classList.toggle("offline", !d.online);
    c.badge.className = `badge ${d.online ? "online" : "offline"}`;
    c.badge.textContent = d.online ? (d.via === "mqtt" || d.via === "http" ? "online · " + d.via : "online") : "offline";
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
        el("dt", { title: metric }, state.devices.get(name)?.names?.get(metric) || metric), el("dd", {}, value, unit, age));
      const rows = [...c.rows.keys(), metric].sort();
      const next = rows[rows.indexOf(metric) + 1];
      c.dl.insertBefore(row, next ? c.rows.get(next).row : null);
      r = { row, value, unit, age };
      c.rows.set(metric, r);
    }
    return r;
  }

  // Only cards on screen are updated (200 cards of changing values cost a style and
  // layout pass each refresh); a card that scrolls into view catches up at once.
  const cardsSeen = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const name = e.target.dataset.device;
      const c = cardEls.get(name);
      if (!c) continue;
      c.visible = e.isIntersecting;
      if (c.visible) for (const metric of state.devices.get(name)?.metrics.keys() || []) markCell(name, metric);
    }
  });

  function flushCards() {
    cardsRaf = 0;
    const now = Date.now();
    for (const key of dirtyCells) {
      const [name, metric] = key.split("\u0000");
      const m = state.devices.get(name)?.metrics.get(metric);
      if (!m) continue;
      const c = cardEls.get(name);
      // An offscreen card's row is made (its metrics are listed), not kept up to date.
      if (c && !c.visible && c.rows.has(metric)) continue;
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
      if (!c.visible) continue;
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
  // Every (device, metric) has one Series here; the charts draw these shared series, so
  // a layout edit redraws panels without losing or copying any data.
  const store = new Map(); // "device\u0000metric" -> Series
  const devicesOf = new Map(); // metric -> Set(device)
  let panels = []; // [{spec, fig, canvas, chart, img, imgNote, legend, legendItems, unitEl, plotTimer, wants}]
  let layout = null; // the layout shown (null: automatic)
  let editing = false;
  const backfilled = new Set();

  function seriesOf(dev, metric) {
    const k = `${dev}\u0000${metric}`;
    let s = store.get(k);
    if (!s) {
      s = new Series();
      store.set(k, s);
      let ds = devicesOf.get(metric);
      if (!ds) { ds = new Set(); devicesOf.set(metric, ds); }
      ds.add(dev);
      for (const p of panels) if (p.wants(dev, metric)) attach(p, dev, metric);
    }
    return s;
  }

  function metricEntry(metric, unit) {
    let m = state.metrics.get(metric);
    if (!m) {
      m = { unit: unit || "" };
      state.metrics.set(metric, m);
      redrawPanels();
      if (state.historyAvailable !== false && initialBackfillDone) backfill([metric]);
    } else if (unit && !m.unit) {
      m.unit = unit;
      for (const p of panels) {
        if (!p.spec.refs.some((r) => r.metric === metric)) continue;
        p.chart.setUnit(unit);
        p.unitEl.textContent = p.metrics.size === 1 ? ` (${unit})` : "";
      }
    }
    return m;
  }

  // Panels are rebuilt (at most once a frame) when the layout or the set of metrics
  // changes; the data stays in `store`.
  let redrawRaf = 0;
  function redrawPanels() {
    if (redrawRaf) return;
    redrawRaf = requestAnimationFrame(() => { redrawRaf = 0; buildPanels(); });
  }

  function buildPanels() {
    if (destroyed || !bar.loaded) return;
    for (const p of panels) { p.chart.destroy(); p.zoom?.destroy(); clearInterval(p.plotTimer); p.fig.remove(); }
    const specs = panelSpecs(layout, [...state.metrics.keys()].sort(), autoKind);
    if (editing && materializeNext) { materializeNext = false; bar.materialize(specs); return buildPanels(); }
    const order = specs.filter((s) => !s.auto).map((s) => s.index);
    panels = specs.map((spec) => makePanel(spec, order));
    maybeTimeline = new Set(specs.filter((x) => x.auto && x.kind === "timeseries").map((x) => x.refs[0].metric)
      .filter((m) => !nonBinary.has(m)));
    for (const p of panels) charts.append(p.fig);
    noCharts.hidden = panels.length > 0;
    applyCardLayout();
    describePanels();
  }
  let materializeNext = false;

  // A metric whose values have all been 0 or 1 is drawn as a state timeline; the first
  // other value makes it a line chart for good.
  const nonBinary = new Set();
  function autoKind(metric) {
    if (nonBinary.has(metric)) return "timeseries";
    const list = [...(devicesOf.get(metric) || [])].map((d) => store.get(`${d}\u0000${metric}`));
    return isBinary(list) ? "timeline" : "timeseries";
  }
  let maybeTimeline = new Set(); // auto line charts of metrics that may be binary yet
  function noteValue(metric, value) {
    if (nonBinary.has(metric)) return;
    if (value === 0 || value === 1) {
      if (maybeTimeline.delete(metric)) redrawPanels();
      return;
    }
    nonBinary.add(metric);
    if (panels.some((p) => p.spec.auto && p.spec.kind === "timeline" && p.metrics.has(metric))) redrawPanels();
  }

  function makePanel(spec, order) {
    const metrics = new Set(spec.refs.map((r) => r.metric));
    const first = spec.refs[0].metric;
    const single = metrics.size === 1;
    const unit = single ? state.metrics.get(first)?.unit || "" : "";
    const title = spec.title || [...metrics].join(", ");
    const id = `chart-${cssId(spec.id)}`;
    const canvas = el("canvas", { role: "img", "aria-label": panelLabel(spec.kind, title, single ? "device" : "series"), dataset: { metric: first } });
    const img = el("img", { class: "plot", alt: `Chart of ${first} rendered by the hub`, hidden: true });
    const imgNote = el("p", { class: "muted small plot-note", hidden: true });
    const legend = el("ul", { class: "legend", "aria-label": `Series in the ${title} chart` });
    const unitEl = el("span", { class: "muted" }, unit ? ` (${unit})` : "");
    const tools = el("div", { class: "chart-tools" });
    // The chart as text, for screen readers: latest, min and max per line over the window.
    const alt = el("p", { id: `${id}-alt`, class: "sr-only chart-alt" });
    canvas.setAttribute("aria-describedby", alt.id);
    const fig = el("figure", { class: `chart size-${spec.size || "normal"}${spec.pinned ? " pinned" : ""}`, "aria-labelledby": `${id}-h`,
      dataset: { metric: first, panel: spec.id, kind: spec.kind } },
      el("figcaption", { class: "chart-head" },
        el("h3", { id: `${id}-h` }, title, unitEl, spec.pinned ? el("span", { class: "pin" }, "pinned") : null),
        tools),
      el("div", { class: "chart-box" }, canvas, img, imgNote),
      alt,
      legend);
    tools.append(el("button", { type: "button", class: "btn small ghost", "aria-label": `Download ${first} as CSV`,
      onclick: () => downloadCsv(first) }, "CSV"));
    const w = WINDOWS.find((x) => x.key === state.window);
    // One metric: a line per device, in the device's colour. Several: a line per series.
    const keyOf = (dev, metric) => (single ? dev : `${dev} · ${metric}`);
    const opts = { windowMs: w.live ? w.ms : 15 * 60e3, unit, label: title, colorFor,
      metricOf: (key) => (single ? first : key.split(" · ").pop()) };
    const chart = chartFor(spec, canvas, opts);
    const wants = (dev, metric) => spec.refs.some((r) => r.metric === metric && (!r.device || r.device === dev));
    const p = { spec, fig, canvas, chart, img, imgNote, legend, legendItems: new Map(), unitEl, plotTimer: 0, wants, keyOf, metrics, alt, title };
    if (editing) tools.prepend(...bar.panelButtons(p, order, [...store.keys()]));
    for (const r of spec.refs) {
      const devs = r.device ? [r.device] : [...(devicesOf.get(r.metric) || [])];
      for (const dev of devs) if (store.has(`${dev}\u0000${r.metric}`)) attach(p, dev, r.metric);
    }
    if (ZOOMABLE.has(spec.kind)) p.zoom = zoomable(p, room, tools);
    if (!w.live) showPlot(p);
    return p;
  }

  function attach(p, dev, metric) {
    const key = p.keyOf(dev, metric);
    p.chart.attach(key, store.get(`${dev}\u0000${metric}`));
    // A track's legend is per device (its path is one line of both series).
    const track = p.spec.kind === "track";
    const item = track ? dev : key;
    if (p.legendItems.has(item)) return;
    const box = el("input", { type: "checkbox", checked: true, onchange: () => {
      for (const k of [...p.chart.series.keys()]) if (track ? k.startsWith(`${dev} · `) : k === key) p.chart.toggle(k, box.checked);
    } });
    const li = el("li", {}, el("label", {}, box,
      el("span", { class: "swatch", style: `background:${swatchColor(item)}`, "aria-hidden": "true" }), item));
    p.legendItems.set(item, li);
    const names = [...p.legendItems.keys()].sort();
    const next = names[names.indexOf(item) + 1];
    p.legend.insertBefore(li, next ? p.legendItems.get(next) : null);
  }

  /** Refreshes each panel's text alternative (every few seconds: screen readers read it
   *  on demand, and rewriting it on every reading would only cost). */
  function describePanels() {
    const w = WINDOWS.find((x) => x.key === state.window);
    for (const p of panels) describe(p, w.live ? w.ms : 15 * 60e3, w.live ? w.key : "15m");
  }
  timers.push(setInterval(describePanels, 3000));

  /** Hidden and ordered device cards of the layout shown. */
  function applyCardLayout() {
    const hidden = new Set(layout?.hidden_devices || []);
    const order = layout?.device_order || [];
    const rank = (n) => { const k = order.indexOf(n); return k < 0 ? order.length : k; };
    const names = [...cardEls.keys()].sort((a, b) => rank(a) - rank(b) || (a < b ? -1 : a > b ? 1 : 0));
    for (const n of names) {
      const c = cardEls.get(n);
      c.card.hidden = hidden.has(n);
      cards.append(c.card);
      c.hideBtn.hidden = !editing;
      c.upBtn.hidden = !editing;
    }
  }

  function setWindow(key) {
    state.window = key;
    const w = WINDOWS.find((x) => x.key === key);
    for (const p of panels) {
      if (w.live) {
        clearInterval(p.plotTimer);
        p.img.hidden = true;
        p.imgNote.hidden = true;
        p.canvas.hidden = false;
        p.chart.setWindow(w.ms);
      } else {
        showPlot(p);
      }
    }
  }

  async function showPlot(c) {
    const metric = c.spec.refs[0].metric;
    c.canvas.hidden = true;
    c.img.hidden = false;
    clearInterval(c.plotTimer);
    const load = async () => {
      const key = state.window;
      const theme = window.telehub?.theme?.() || "light";
      const rect = c.fig.querySelector(".chart-box").getBoundingClientRect();
      const width = Math.max(320, Math.min(2000, Math.round(rect.width)));
      const height = Math.max(200, Math.min(1200, Math.round(rect.height || 260)));
      const w = WINDOWS.find((x) => x.key === key);
      const to = Date.now(), from = to - w.ms;
      const res = w.rollup
        ? await api.history(room, { metric, from: String(from), limit: 100000 })
        : await api.fetchBlob(api.plotUrl(room, { metric, window: key, theme, width, height }));
      if (destroyed || state.window !== key || !panels.includes(c)) return;
      if (res.ok) {
        const old = c.img.src;
        if (w.rollup) {
          const groups = new Map();
          for (const r of res.data.points || []) {
            if (!groups.has(r.device)) groups.set(r.device, { key: r.device, color: colorFor(r.device, theme), rows: [] });
            groups.get(r.device).rows.push(r);
          }
          const bands = drawBands([...groups.values()], { from, to, step: res.data.step, w: width, h: height, themeEl: c.canvas });
          c.img.src = bands.toDataURL("image/png");
          c.img.alt = `${metric}, last ${key}: min to max band and mean (${res.data.resolution} rollups)`;
        } else c.img.src = URL.createObjectURL(res.data);
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
    if (panels.includes(c)) c.plotTimer = setInterval(load, PLOT_REFRESH_MS);
  }

  window.addEventListener("telehub-theme", onTheme);
  function onTheme() {
    for (const p of panels) {
      p.chart.themeChanged();
      if (!WINDOWS.find((w) => w.key === state.window).live) showPlot(p);
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
      for (const [dev, pts] of byDevice) {
        seriesOf(dev, metric).merge(pts);
        for (const pt of pts) noteValue(metric, pt.value);
        device(dev);
      }
      for (const p of panels) if (p.metrics.has(metric)) p.chart.invalidate();
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
        // Names a source announced (MQTT discovery): the card shows them, ids in titles.
        if (s.name) {
          (d.names ||= new Map()).set(s.metric, s.name);
          const dt = cardEls.get(s.device)?.rows.get(s.metric)?.row.querySelector("dt");
          if (dt) dt.textContent = s.name;
        }
        if (s.device_name && d.label !== s.device_name) {
          d.label = s.device_name;
          const h = cardEls.get(s.device)?.card.querySelector("h3");
          if (h) h.textContent = s.device_name;
        }
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
    seriesOf(r.device, r.metric).push(r.ts, r.value);
    noteValue(r.metric, r.value);
    for (const p of panels) if (p.metrics.has(r.metric) && p.wants(r.device, r.metric)) p.chart.invalidate();
  }

  function onMessage(msg) {
    const t0 = performance.now();
    switch (msg.type) {
      case "reading":
        state.readings += 1;
        state.lastReadingAt = Date.now();
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
      case "skipped":
        // The latest value of every series came just before this; the charts get the
        // skipped range from history once the tab has been live for a moment.
        state.skipped += msg.count || 0;
        catchingUp.textContent = `catching up (${state.skipped} readings skipped)`;
        catchingUp.hidden = false;
        clearTimeout(caughtUpTimer);
        caughtUpTimer = setTimeout(() => {
          catchingUp.hidden = true;
          state.skipped = 0;
          if (!destroyed) backfill([...state.metrics.keys()], true);
        }, 3000);
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
    kiosk?.update();
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
  const kiosk = params.get("kiosk") === "1" ? startKiosk(() => ({ conn: state.conn, lastReadingAt: state.lastReadingAt })) : null;
  state.kiosk = kiosk?.info ?? null;
  const conn = new RoomConnection(room, clientId, { onStatus, onWelcome, onMessage });
  conn.start();
  bar.load();
  loadSeries();

  return {
    state,
    conn,
    layouts: bar,
    destroy() {
      destroyed = true;
      conn.stop();
      kiosk?.stop();
      for (const t of timers) clearInterval(t);
      clearTimeout(caughtUpTimer);
      clearInterval(countdown);
      if (cardsRaf) cancelAnimationFrame(cardsRaf);
      clearTimeout(cardsTimer);
      for (const p of panels) { p.chart.destroy(); p.zoom?.destroy(); clearInterval(p.plotTimer); }
      panels = [];
      cancelAnimationFrame(redrawRaf);
      cardsSeen.disconnect();
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
