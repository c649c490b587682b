// Alerts in the dashboard: the bell in the header (the count of firing alerts, on every
// page), the alerts page (#/alerts: firing, pending, acknowledged and resolved, filters,
// ack and silence buttons), a red badge on each device card of the open room whose
// series has a firing alert, and dashed threshold lines on the line charts (marks on the
// gauges) of metrics a rule watches (GET /api/alerts/rules `thresholds`).
//
// Kept to itself: it reads GET /api/alerts (every few seconds and on each page change),
// GET /api/alerts/history for the resolved ones, and POSTs acks and silences. The cards
// are found by their `data-device` and badged from outside room.js, and a line chart by
// its canvas (`telehubChart`, `data-metric`), so the room page knows nothing of alerts.

import { el } from "./format.js";
import { auth } from "./auth.js";

/** How often the bell and the badges ask the hub again. */
const REFRESH_MS = 3000;
const enc = encodeURIComponent;

let firing = []; // the last GET /api/alerts answer, every live instance
let timer = null;
let page = null; // the mounted alerts page's refresh, if any
let rules = []; // GET /api/alerts/rules, asked again every RULES_EVERY refreshes
let rulesAge = Infinity;
const RULES_EVERY = 5;

/** A rule's glob (`*` any run, `?` one character) as a RegExp. */
function globRe(g) {
  return new RegExp(`^${g.replace(/[.+^${}()|[\]\\/-]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`);
}

function paintThresholds() {
  const room = openRoom();
  if (!room) return;
  for (const canvas of document.querySelectorAll("#view canvas[data-metric]")) {
    const chart = canvas.telehubChart;
    // Line charts (dashed lines) and gauges (marks on the arc); the other kinds have no
    // value axis to mark.
    const kind = canvas.closest("figure[data-kind]")?.dataset.kind;
    if (!chart || (kind && kind !== "timeseries" && kind !== "gauge")) continue;
    const metric = canvas.dataset.metric;
    const values = [...new Set(rules
      .filter((r) => globRe(r.room || "*").test(room) && globRe(r.metric || "*").test(metric))
      .flatMap((r) => r.thresholds || []))].sort((a, b) => a - b);
    if (String(values) !== String(chart.thresholds || [])) {
      chart.thresholds = values;
      chart.invalidate();
    }
  }
}

async function call(method, path, body) {
  const headers = { accept: "application/json" };
  if (auth.token) headers.authorization = `Bearer ${auth.token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  try {
    const resp = await fetch(path, { method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body) });
    const data = resp.status === 204 ? null : await resp.json().catch(() => null);
    if (!resp.ok) return { ok: false, status: resp.status, error: data?.message ? `${data.error}: ${data.message}` : `HTTP ${resp.status}` };
    return { ok: true, data };
  } catch (_) {
    return { ok: false, status: 0, error: "hub unreachable" };
  }
}

/** The open room, from the hash (null elsewhere). */
function openRoom() {
  const m = location.hash.match(/^#\/rooms\/([^/?]+)/);
  if (!m) return null;
  try { return decodeURIComponent(m[1]); } catch (_) { return null; }
}

function paintBell() {
  const bell = document.getElementById("bell");
  if (!bell) return;
  const n = firing.filter((a) => a.state === "firing").length;
  bell.dataset.count = String(n);
  bell.querySelector(".bell-count").textContent = n ? String(n) : "";
  bell.setAttribute("aria-label", n === 1 ? "1 alert firing" : `${n} alerts firing`);
  bell.classList.toggle("ringing", n > 0);
}

function paintBadges() {
  const room = openRoom();
  const hot = new Map();
  for (const a of firing) {
    if (a.state === "firing" && a.room === room) hot.set(a.device, (hot.get(a.device) || 0) + 1);
  }
  for (const card of document.querySelectorAll("#view .card[data-device]")) {
    const n = hot.get(card.dataset.device) || 0;
    let b = card.querySelector(".alert-badge");
    if (!n) { b?.remove(); continue; }
    if (!b) {
      b = el("a", { class: "alert-badge", href: `#/alerts?room=${enc(room)}` });
      card.querySelector(".card-head")?.append(b);
    }
    const text = n === 1 ? "1 alert firing" : `${n} alerts firing`;
    if (b.textContent !== text) b.textContent = text;
  }
}

async function refresh() {
  if (auth.required && !auth.token) return;
  const r = await call("GET", "/api/alerts");
  if (r.ok) firing = r.data.alerts || [];
  if (++rulesAge >= RULES_EVERY) {
    const rr = await call("GET", "/api/alerts/rules");
    if (rr.ok) { rules = rr.data.rules || []; rulesAge = 0; }
  }
  paintBell();
  paintBadges();
  paintThresholds();
  page?.();
}

/** Starts the bell (once, at start-up). */
export function startAlerts() {
  if (timer) return;
  const right = document.querySelector(".topbar-right");
  const bell = el("a", { id: "bell", class: "bell", href: "#/alerts", "aria-label": "0 alerts firing", title: "Alerts", dataset: { count: "0" } },
    el("svg", {}),
    el("span", { class: "bell-count", "aria-hidden": "true" }));
  bell.querySelector("svg").outerHTML =
    '<svg aria-hidden="true" viewBox="0 0 24 24" width="20" height="20"><path d="M6 16V11a6 6 0 0 1 12 0v5l2 2H4l2-2zM10 20a2 2 0 0 0 4 0" fill="none" stroke="currentColor" stroke-width="2" stroke-linejoin="round"/></svg>';
  right?.prepend(bell);
  // The room page builds its cards as devices appear: badge them as they come.
  // Only new elements (a room's cards and charts) need painting: the text of a card's
  // values changes thousands of times a second at scale and is not looked at.
  new MutationObserver((records) => {
    const added = records.some((r) => [...r.addedNodes].some((n) => n.nodeType === 1));
    if (added) { paintBadges(); paintThresholds(); }
  }).observe(document.getElementById("view"), { childList: true, subtree: true });
  window.addEventListener("hashchange", () => { rulesAge = Infinity; refresh(); });
  timer = setInterval(refresh, REFRESH_MS);
  refresh();
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

/** #/alerts: every live alert and the recent resolved ones, with filters. */
export function renderAlerts(view, { ui, params }) {
  const filters = {
    room: params.get("room") || "",
    state: params.get("state") || "all",
  };
  const status = el("p", { class: "alerts-status", role: "status", "aria-live": "polite" });
  const roomInput = el("input", { id: "alerts-room", type: "search", placeholder: "any room", value: filters.room,
    oninput: () => { filters.room = roomInput.value.trim(); draw(); } });
  const stateSelect = el("select", { id: "alerts-state", onchange: () => { filters.state = stateSelect.value; draw(); } },
    ...["all", "firing", "pending", "acknowledged", "resolved"].map((s) =>
      el("option", { value: s, selected: s === filters.state }, s)));
  const list = el("div", { class: "alerts-list", role: "list", "aria-label": "Alerts" });
  view.append(el("section", { class: "pad alerts-page" },
    el("h1", {}, "Alerts"),
    el("div", { class: "alerts-filters" },
      el("div", { class: "field" }, el("label", { for: "alerts-room" }, "Room"), roomInput),
      el("div", { class: "field" }, el("label", { for: "alerts-state" }, "State"), stateSelect)),
    status, list));
  let resolved = [];

  async function loadResolved() {
    const r = await call("GET", `/api/alerts/history?from=${Date.now() - 86_400_000}`);
    resolved = r.ok ? (r.data.transitions || []).filter((t) => t.state === "resolved").reverse().slice(0, 50) : [];
  }

  function kind(a) {
    if (a.state === "resolved") return "resolved";
    if (a.ack) return "acknowledged";
    return a.state;
  }

  function row(a) {
    const k = kind(a);
    const actions = [];
    if (a.state !== "resolved") {
      if (!a.ack) actions.push(el("button", { type: "button", class: "btn small", "data-action": "ack", onclick: () => act("ack", a) }, "Acknowledge"));
      actions.push(el("button", { type: "button", class: "btn small", "data-action": "silence", disabled: !!a.silenced_by, onclick: () => act("silence", a) },
        a.silenced_by ? "Silenced" : "Silence 1 h"));
    }
    const facts = [`${a.room} / ${a.device} / ${a.metric}`, `value ${a.value}`, `since ${ago(a.since)}`];
    if (a.ack) facts.push(`acknowledged by ${a.ack.by} ${ago(a.ack.at)}`);
    if (a.silenced_by) facts.push("silenced");
    return el("article", { class: "alert-row", role: "listitem", dataset: { state: k, instance: a.instance || "", severity: a.severity } },
      el("span", { class: "alert-state" }, k),
      el("div", { class: "alert-main" },
        el("strong", {}, a.rule), el("span", { class: "alert-sev" }, a.severity),
        el("div", { class: "alert-facts" }, facts.join(" · "))),
      el("div", { class: "alert-actions" }, actions));
  }

  async function act(what, a) {
    const r = what === "ack"
      ? await call("POST", `/api/alerts/${a.instance.split(":").map(enc).join(":")}/ack`, {})
      : await call("POST", "/api/alerts/silences", {
        matchers: { rule: a.rule, room: a.room, device: a.device, metric: a.metric },
        for: "1h", comment: "from the dashboard" });
    status.textContent = r.ok ? (what === "ack" ? `Acknowledged ${a.rule}` : `Silenced ${a.rule} for 1 h`) : `Could not ${what}: ${r.error}`;
    refresh();
  }

  function draw() {
    const all = [...firing, ...resolved];
    const shown = all.filter((a) =>
      (!filters.room || a.room.includes(filters.room)) && (filters.state === "all" || kind(a) === filters.state));
    const order = { firing: 0, acknowledged: 1, pending: 2, resolved: 3 };
    shown.sort((x, y) => order[kind(x)] - order[kind(y)] || y.since - x.since);
    list.replaceChildren(...(shown.length ? shown.map(row) : [el("p", { class: "empty" }, "No alerts.")]));
    list.dataset.count = String(shown.length);
  }

  document.title = "Alerts · telehub";
  ui.crumbs([{ label: "Rooms", href: "#/" }, { label: "Alerts" }]);
  ui.setConn("idle", "Not streaming");
  page = draw;
  loadResolved().then(() => refresh());
  const resolvedTimer = setInterval(loadResolved, REFRESH_MS * 5);
  draw();
  return { destroy() { page = null; clearInterval(resolvedTimer); }, state: { filters } };
}
