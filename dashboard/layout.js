// Saved layouts of a room (GET/PUT /api/rooms/{room}/layout): which panels show, in
// what order and size, overlaying which series, and which device cards are hidden.
//
// This module owns the layout document and the editing of it; room.js draws whatever
// `panelSpecs` says. A layout is chosen by `?layout=NAME` in the URL, else the room's
// default, else none (the automatic view: a chart per metric, by name). Editing works
// on a draft copy; Save writes the whole set back to the hub, so every browser that
// opens the room (or follows a link with `?layout=NAME`) sees the same view.

import { auth } from "./auth.js";
import { el } from "./format.js";

const NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const SIZES = ["normal", "wide", "full"];
const LAT = ["lat", "latitude"];
const LON = ["lon", "lng", "longitude"];

async function call(room, method, body) {
  const headers = { accept: "application/json" };
  if (auth.token) headers.authorization = `Bearer ${auth.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  try {
    const resp = await fetch(`/api/rooms/${encodeURIComponent(room)}/layout`, {
      method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = await resp.json().catch(() => null);
    if (!resp.ok) return { ok: false, status: resp.status, error: data?.message ? `${data.error}: ${data.message}` : `HTTP ${resp.status}` };
    return { ok: true, status: resp.status, data };
  } catch (_) {
    return { ok: false, status: 0, error: "hub unreachable" };
  }
}

/** A series reference as a stable string. */
export const refKey = (r) => `${r.device ?? "*"}\u0000${r.metric}`;

/**
 * What to draw, in order: layout panels (pinned first), then, when the layout is
 * automatic or has `auto`, one panel per metric that no panel shows and that is not
 * hidden, of the kind `autoKind(metric)` says (a state timeline for 0/1 series), and
 * one GPS track for a `lat` and a `lon` metric. Each spec: {id, kind, title, size, pinned, refs:[{metric, device?}], auto}.
 */
export function panelSpecs(layout, metrics, autoKind = () => "timeseries") {
  const specs = [];
  const covered = new Set();
  if (layout) {
    const panels = layout.panels.map((p, i) => ({ p, i }));
    panels.sort((a, b) => (b.p.pinned ? 1 : 0) - (a.p.pinned ? 1 : 0) || a.i - b.i);
    for (const { p, i } of panels) {
      specs.push({ id: `p${i}`, index: i, kind: p.kind, title: p.title, size: p.size || "normal", pinned: !!p.pinned,
        refs: p.series, min: p.min, max: p.max, auto: false });
      for (const r of p.series) if (!r.device) covered.add(r.metric);
    }
  }
  if (!layout || layout.auto !== false) {
    const hidden = new Set(layout?.hidden_metrics || []);
    const free = (m) => m && !covered.has(m) && !hidden.has(m);
    // Latitude and longitude together are one GPS track, where latitude would be.
    const lat = metrics.find((m) => LAT.includes(m)), lon = metrics.find((m) => LON.includes(m));
    const track = free(lat) && free(lon);
    for (const m of metrics) {
      if (track && m === lat) {
        specs.push({ id: "auto:track", kind: "track", title: "GPS track", size: "normal", pinned: false, refs: [{ metric: lat }, { metric: lon }], auto: true });
        continue;
      }
      if (track && m === lon) continue;
      if (covered.has(m) || hidden.has(m)) continue;
      specs.push({ id: `auto:${m}`, kind: autoKind(m), size: "normal", pinned: false, refs: [{ metric: m }], auto: true });
    }
  }
  return specs;
}

/**
 * The layout toolbar of a room: a picker (automatic or a saved layout), Edit, and while
 * editing Save (as a name, optionally the default), Cancel and Reset to automatic.
 * `onChange(layout|null, editing)` redraws the room.
 */
export class LayoutBar {
  constructor(room, { wanted, ui, onChange }) {
    this.room = room;
    this.ui = ui;
    this.onChange = onChange;
    this.set = { default: null, layouts: [] };
    this.current = null; // the layout shown (a saved one, or the draft while editing)
    this.editing = false;
    this.wanted = wanted; // ?layout=NAME
    this.loaded = false;

    this.picker = el("select", { id: "layout-pick", "aria-label": "Layout", onchange: () => this.pick(this.picker.value || null) });
    this.editBtn = el("button", { type: "button", class: "btn", "aria-pressed": "false", onclick: () => this.startEdit() }, "Edit layout");
    this.nameIn = el("input", { id: "layout-name", type: "text", pattern: NAME.source, required: true, size: 10, value: "main" });
    this.defaultIn = el("input", { id: "layout-default", type: "checkbox", checked: true });
    this.status = el("span", { class: "muted small", role: "status", "aria-live": "polite" });
    this.editTools = el("div", { class: "layout-edit", hidden: true },
      el("label", { for: "layout-name" }, "Name"), this.nameIn,
      el("label", { class: "check" }, this.defaultIn, "Default"),
      el("button", { type: "button", class: "btn primary", onclick: () => this.save() }, "Save layout"),
      el("button", { type: "button", class: "btn", onclick: () => this.cancel() }, "Cancel"),
      el("button", { type: "button", class: "btn", onclick: () => this.reset() }, "Reset to automatic"));
    this.el = el("div", { class: "layout-bar", dataset: { testid: "layout-bar" } },
      this.picker, this.editBtn, this.editTools, this.status);
    this.fillPicker();
  }

  async load() {
    const res = await call(this.room, "GET");
    if (res.ok) this.set = { default: res.data.default ?? null, layouts: res.data.layouts || [] };
    this.loaded = true;
    let name = this.wanted ?? this.set.default;
    if (this.wanted && !this.byName(this.wanted)) {
      this.ui.notice(`This room has no layout named “${this.wanted}”: showing the automatic one.`, "warn");
      name = null;
    }
    this.current = name ? this.byName(name) : null;
    this.fillPicker();
    this.onChange(this.current, false);
  }

  byName(name) { return this.set.layouts.find((l) => l.name === name) || null; }

  fillPicker() {
    const shown = this.current?.name ?? "";
    this.picker.replaceChildren(el("option", { value: "" }, "Automatic"),
      ...this.set.layouts.map((l) => el("option", { value: l.name },
        l.name + (l.name === this.set.default ? " (default)" : ""))));
    this.picker.value = this.editing ? shown : (this.byName(shown) ? shown : "");
  }

  /** Shows a saved layout (or the automatic one) and puts it in the URL. */
  pick(name) {
    this.current = name ? this.byName(name) : null;
    this.setUrl(name);
    this.onChange(this.current, false);
  }

  setUrl(name) {
    const base = `#/rooms/${encodeURIComponent(this.room)}`;
    const q = new URLSearchParams(location.hash.split("?")[1] || "");
    if (name) q.set("layout", name); else q.delete("layout");
    const s = q.toString();
    history.replaceState(null, "", s ? `${base}?${s}` : base);
  }

  /** Editing starts from what is shown: every panel made explicit, new metrics still
   *  appearing (auto) unless the layout said otherwise. */
  startEdit(metrics) {
    const from = this.current;
    this.draft = from ? structuredClone(from) : { name: "main", auto: true, hidden_metrics: [], hidden_devices: [], device_order: [], panels: [] };
    this.draft.hidden_metrics ||= [];
    this.draft.hidden_devices ||= [];
    this.draft.device_order ||= [];
    this.editing = true;
    this.nameIn.value = this.draft.name;
    this.defaultIn.checked = !this.set.default || this.set.default === this.draft.name;
    this.editTools.hidden = false;
    this.editBtn.hidden = true;
    this.picker.disabled = true;
    this.status.textContent = "Editing: changes show at once and are kept when you save.";
    this.onChange(this.draft, true, { materialize: true });
  }

  /** Called by the room after it drew the first editing view, with its specs. */
  materialize(specs) {
    this.draft.panels = specs.map((s) => {
      const p = { kind: s.kind, series: s.refs.map((r) => ({ ...r })), size: s.size || "normal", pinned: !!s.pinned };
      if (s.title) p.title = s.title;
      if (s.min !== undefined && s.min !== null) p.min = s.min;
      if (s.max !== undefined && s.max !== null) p.max = s.max;
      return p;
    });
  }

  /** Applies `fn(draft)` and redraws. */
  edit(fn) {
    fn(this.draft);
    this.onChange(this.draft, true);
  }

  // Panel edits, by index into draft.panels.
  togglePin(i) { this.edit((d) => { d.panels[i].pinned = !d.panels[i].pinned; }); }
  resize(i) { this.edit((d) => { const p = d.panels[i]; p.size = SIZES[(SIZES.indexOf(p.size || "normal") + 1) % SIZES.length]; }); }
  hide(i) {
    this.edit((d) => {
      const [p] = d.panels.splice(i, 1);
      // A whole metric's chart stays away: automatic charts would bring it back.
      for (const r of p.series) if (!r.device && !d.hidden_metrics.includes(r.metric)) d.hidden_metrics.push(r.metric);
    });
  }
  /** Moves panel i one place earlier (-1) or later (+1) in the order shown. */
  move(i, by, order) {
    const at = order.indexOf(i), to = at + by;
    if (at < 0 || to < 0 || to >= order.length) return;
    this.edit((d) => {
      const j = order[to];
      [d.panels[i], d.panels[j]] = [d.panels[j], d.panels[i]];
      // Keep pinned-ness with the place, so a move never jumps across the pinned block.
      [d.panels[i].pinned, d.panels[j].pinned] = [d.panels[j].pinned, d.panels[i].pinned];
    });
  }
  overlay(i, ref) {
    this.edit((d) => {
      const p = d.panels[i];
      if (p.series.length >= 16 || p.series.some((r) => refKey(r) === refKey(ref))) return;
      // A chart of "every device" made explicit keeps what it showed and adds one more.
      p.series.push(ref);
    });
  }
  /** Moves device card `name` one place earlier; `shown` is the cards' order now. */
  moveDevice(name, shown) {
    this.edit((d) => {
      const order = shown.slice();
      const k = order.indexOf(name);
      if (k > 0) [order[k - 1], order[k]] = [order[k], order[k - 1]];
      d.device_order = order.slice(0, 256);
    });
  }
  setKind(i, kind) { this.edit((d) => { d.panels[i].kind = kind; }); }
  hideDevice(name) { this.edit((d) => { if (!d.hidden_devices.includes(name)) d.hidden_devices.push(name); }); }

  /** The editing buttons of a room panel `p` (room.js's): kind, pin, move, size,
   *  overlay one of `seriesKeys` ("device\u0000metric"), hide. `order` is the
   *  draft's panel indexes in the order shown. */
  panelButtons(p, order, seriesKeys) {
    const i = p.spec.index;
    const name = p.spec.title || [...p.metrics].join(", ");
    const b = (label, aria, onclick, extra = {}) => el("button", { type: "button", class: "btn small", "aria-label": `${aria} ${name}`, onclick, ...extra }, label);
    const overlay = el("select", { class: "overlay-pick", "aria-label": `Overlay a series on ${name}`, onchange: () => {
      const [dev, metric] = overlay.value.split("\u0000");
      if (metric) this.overlay(i, { metric, device: dev });
    } }, el("option", { value: "" }, "+ series"),
    seriesKeys.sort().filter((k) => {
      const [dev, metric] = k.split("\u0000");
      return !p.spec.refs.some((r) => r.metric === metric && r.device === dev);
    }).map((k) => el("option", { value: k }, k.replace("\u0000", " · "))));
    const kinds = ["timeseries", "timeline", "stat", "gauge"].concat(p.spec.refs.length === 2 ? ["track"] : []);
    const kind = el("select", { class: "kind-pick", "aria-label": `Kind of ${name}`, onchange: () => this.setKind(i, kind.value) },
      kinds.map((k) => el("option", { value: k, selected: k === p.spec.kind }, k)));
    return [
      kind,
      b(p.spec.pinned ? "Unpin" : "Pin", p.spec.pinned ? "Unpin" : "Pin", () => this.togglePin(i), { "aria-pressed": String(p.spec.pinned) }),
      b("←", "Move earlier:", () => this.move(i, -1, order)),
      b("→", "Move later:", () => this.move(i, +1, order)),
      b("Size", "Change the size of", () => this.resize(i)),
      overlay,
      b("Hide", "Hide", () => this.hide(i)),
    ];
  }

  async save() {
    const name = this.nameIn.value.trim();
    if (!NAME.test(name)) { this.nameIn.reportValidity(); this.status.textContent = "A layout name is 1 to 64 letters, digits, '_', '.' or '-'."; return; }
    const layout = { ...this.draft, name };
    const layouts = this.set.layouts.filter((l) => l.name !== name && l.name !== this.draft.name);
    layouts.push(layout);
    let def = this.set.default;
    if (this.defaultIn.checked) def = name;
    else if (def === name || def === this.draft.name) def = null;
    if (def && !layouts.some((l) => l.name === def)) def = null;
    const next = { default: def, layouts };
    const res = await call(this.room, "PUT", next);
    if (!res.ok) { this.status.textContent = `Not saved: ${res.error}`; return; }
    this.set = next;
    this.finish(layout, `Saved layout “${name}”.`);
  }

  cancel() { this.finish(this.current, "Edit cancelled."); }

  /** Drops the layout shown from the room's set: the room is automatic again (or shows
   *  its default, if another layout is the default). */
  async reset() {
    const name = this.current?.name;
    const layouts = this.set.layouts.filter((l) => l.name !== name);
    const def = this.set.default === name ? null : this.set.default;
    const next = { default: def, layouts };
    const res = await call(this.room, "PUT", next);
    if (!res.ok) { this.status.textContent = `Not reset: ${res.error}`; return; }
    this.set = next;
    this.finish(null, "Back to the automatic layout.");
  }

  finish(layout, message) {
    this.editing = false;
    this.draft = null;
    this.current = layout;
    this.editTools.hidden = true;
    this.editBtn.hidden = false;
    this.picker.disabled = false;
    this.fillPicker();
    this.setUrl(layout?.name ?? null);
    this.status.textContent = message;
    this.onChange(layout, false);
  }
}

export { SIZES };
