// Home: the rooms of this hub with their devices and dashboards, polled every 2 s.

import { api } from "./api.js";
import { el } from "./format.js";

const POLL_MS = 2000;

export function renderHome(root, { ui }) {
  const list = el("ul", { class: "rooms", "aria-label": "Rooms", dataset: { testid: "rooms" } });
  const empty = el("p", { class: "muted empty", hidden: true },
    "No rooms yet. A room appears when a device or a dashboard connects to it.");
  const updated = el("p", { class: "muted small", "aria-hidden": "true" });
  const input = el("input", {
    id: "room-name", name: "room", required: true, pattern: "[A-Za-z0-9_.\\-]{1,64}", maxlength: 64,
    placeholder: "greenhouse", autocomplete: "off", spellcheck: "false",
  });
  const form = el("form", { class: "open-room", onsubmit: (e) => {
    e.preventDefault();
    if (input.checkValidity()) location.hash = `#/rooms/${encodeURIComponent(input.value)}`;
    else input.reportValidity();
  } },
  el("label", { for: "room-name" }, "Open a room"), input,
  el("button", { class: "btn", type: "submit" }, "Open"));

  root.append(el("section", { class: "home pad" },
    el("div", { class: "home-head" },
      el("div", {}, el("h1", {}, "Rooms"), el("p", { class: "muted" }, "Live rooms on this hub, with their devices and dashboards.")),
      form),
    list, empty, updated));

  const state = { rooms: [], lastOk: 0, error: null };
  const items = new Map(); // room -> {li, devices, dashboards, offset}
  let timer = null;
  let stopped = false;

  function render(rooms) {
    rooms = [...rooms].sort((a, b) => String(a.room).localeCompare(String(b.room)));
    const seen = new Set();
    for (const r of rooms) {
      seen.add(r.room);
      let it = items.get(r.room);
      if (!it) {
        const devices = el("span", { class: "stat-num" });
        const dashboards = el("span", { class: "stat-num" });
        const offset = el("span", { class: "stat-num" });
        const li = el("li", { class: "room", dataset: { room: r.room } },
          el("a", { class: "room-link", href: `#/rooms/${encodeURIComponent(r.room)}` },
            el("span", { class: "room-name" }, r.room),
            el("span", { class: "room-stats" },
              el("span", { class: "stat", dataset: { stat: "devices" } }, devices, el("span", { class: "stat-label" }, " devices")),
              el("span", { class: "stat", dataset: { stat: "dashboards" } }, dashboards, el("span", { class: "stat-label" }, " dashboards")),
              el("span", { class: "stat", dataset: { stat: "readings" } }, offset, el("span", { class: "stat-label" }, " readings")))));
        it = { li, devices, dashboards, offset };
        items.set(r.room, it);
      }
      const nd = (r.devices || []).length, nb = (r.dashboards || []).length;
      it.devices.textContent = nd;
      it.devices.nextSibling.textContent = nd === 1 ? " device" : " devices";
      it.dashboards.textContent = nb;
      it.dashboards.nextSibling.textContent = nb === 1 ? " dashboard" : " dashboards";
      it.offset.textContent = Number(r.offset || 0).toLocaleString("en");
      it.li.classList.toggle("has-devices", nd > 0);
      list.append(it.li); // keeps the sorted order
    }
    for (const [name, it] of items) if (!seen.has(name)) { it.li.remove(); items.delete(name); }
    empty.hidden = rooms.length > 0;
  }

  async function poll() {
    const res = await api.rooms();
    if (stopped) return;
    if (res.ok) {
      state.rooms = res.data.rooms || [];
      state.lastOk = Date.now();
      state.error = null;
      render(state.rooms);
      ui.setConn("live", "Hub reachable", `${state.rooms.length} room${state.rooms.length === 1 ? "" : "s"}`);
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    } else {
      state.error = res.error;
      ui.setConn("waiting", "Hub unreachable", "retrying");
    }
    timer = setTimeout(poll, POLL_MS);
  }
  ui.setConn("connecting", "Contacting the hub…");
  poll();

  return {
    state,
    destroy() { stopped = true; clearTimeout(timer); },
  };
}
