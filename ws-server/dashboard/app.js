// The dashboard's I/O: the WebSocket (reconnects with backoff across the servers, resuming
// from the last position), the controls, and drawing. Frames are folded by model.js at once;
// the DOM is updated at most once per animation frame, whatever the rate of changes.

import {
  COLUMNS,
  Dashboard,
  LOG_CAP,
  backoffDelay,
  buildFilters,
  connectUrl,
  defaultServer,
  describe,
  formatCell,
  formatPosition,
  formatTime,
  parsePosition,
  parseServers,
} from "./model.js";

/** Rows drawn at most (newest ids first); the model holds them all. */
const ROW_CAP = 500;
/** No answer to the upgrade within this long: try the next server. */
const CONNECT_TIMEOUT_MS = 5000;

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const authRequired = document.querySelector('meta[name="orders-auth"]')?.content === "required";

const el = {
  status: $("status"),
  server: $("server"),
  banner: $("banner"),
  rate: $("rate"),
  rows: $("rows"),
  lag: $("lag"),
  position: $("position"),
  head: document.querySelector("#orders thead tr"),
  body: document.querySelector("#orders tbody"),
  empty: $("empty"),
  rowsNote: $("rows-note"),
  log: $("log"),
  form: $("filters"),
  fStatus: $("f-status"),
  fCustomer: $("f-customer"),
  fAdvanced: $("f-advanced"),
  note: $("filter-note"),
  servers: $("servers"),
  token: $("token"),
  probe: $("probe"),
};

// ---- state ----------------------------------------------------------------------------

const fallbackServer = defaultServer(location.href);
let servers = safely(() => parseServers(params.get("servers"), fallbackServer), [fallbackServer]);
let token = sessionStorage.getItem("orders-token") || "";
el.fStatus.value = params.get("status") || "";
el.fCustomer.value = params.get("customer") || "";
el.fAdvanced.value = params.getAll("filter").join(" & ");
el.servers.value = params.get("servers") || "";
el.token.value = token;
$("token-field").hidden = !authRequired && !token;
// Without a token nothing connects: show where it goes.
if (authRequired && !token) el.form.querySelector("details").open = true;

const model = new Dashboard({ filters: safely(() => buildFilters(controls()), []), since: parsePosition(params.get("since")) });
let socket = null;
let hello = false; // the current socket has said hello
let serverIndex = Math.floor(Math.random() * servers.length); // spreads pages over replicas
let attempt = 0;
let retryTimer = null;
let retryAt = 0;
let connectTimer = null;

// What the next frame must draw.
const ui = {
  rebuild: true,
  dirty: new Map(), // id -> changed columns, or null when gone
  logSeen: 0,
  columns: [...COLUMNS],
  shown: [], // ids drawn, in order
  trs: new Map(), // id -> <tr>
};

function safely(fn, fallback) {
  try {
    return fn();
  } catch (e) {
    showNote(e.message, true);
    return fallback;
  }
}

function controls() {
  return { status: el.fStatus.value, customer: el.fCustomer.value, advanced: el.fAdvanced.value };
}

// ---- connection -----------------------------------------------------------------------

function connect() {
  clearTimeout(retryTimer);
  retryTimer = null;
  const server = servers[serverIndex % servers.length];
  let ws;
  try {
    ws = new WebSocket(connectUrl(server, token), "orders.v1");
  } catch (e) {
    dropped(null, `cannot connect to ${server}: ${e.message}`);
    return;
  }
  socket = ws;
  hello = false;
  el.server.textContent = server;
  connectTimer = setTimeout(() => ws.close(), CONNECT_TIMEOUT_MS);
  ws.onmessage = (message) => {
    if (socket !== ws) return;
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch {
      return;
    }
    if (frame.type === "hello") {
      hello = true;
      clearTimeout(connectTimer);
    }
    if (frame.type === "subscribed") attempt = 0;
    receive(frame);
  };
  ws.onclose = (event) => {
    if (socket !== ws) return;
    const why = event.reason ? `${event.code} ${event.reason}` : `code ${event.code}`;
    const text = hello
      ? `connection to ${model.server ?? server} closed (${why})`
      : `could not connect to ${server}${authRequired ? " (is the token valid? try Test connection)" : ""}`;
    dropped(ws, text);
  };
}

/** The socket is gone: note it, move to the next server, and retry after a backoff. */
function dropped(ws, reason) {
  clearTimeout(connectTimer);
  if (ws && socket === ws) socket = null;
  hello = false;
  model.closed(Date.now(), reason);
  serverIndex += 1;
  const delay = backoffDelay(attempt, { min: 250, max: 10000 });
  attempt += 1;
  retryAt = Date.now() + delay;
  retryTimer = setTimeout(connect, delay);
  schedule();
}

/** Ctrl+R and the button: drop the connection (if any) and connect now, resuming. */
function reconnectNow(reason = "reconnecting (asked)") {
  clearTimeout(retryTimer);
  clearTimeout(connectTimer);
  if (socket) {
    const ws = socket;
    socket = null;
    ws.onclose = null;
    ws.onmessage = null;
    ws.close(1000, "reconnect");
  }
  model.closed(Date.now(), reason);
  attempt = 0;
  connect();
  schedule();
}

function connected() {
  return socket !== null && socket.readyState === WebSocket.OPEN && hello;
}

function send(frames) {
  for (const frame of frames) if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
}

function receive(frame) {
  const out = model.receive(frame, Date.now());
  send(out.send);
  if (out.snapshot) {
    ui.rebuild = true;
    ui.dirty.clear();
    for (const order of model.rows.values()) addColumns(order);
  } else {
    for (const [id, columns] of out.rows) {
      const before = ui.dirty.get(id);
      ui.dirty.set(id, columns && before ? [...new Set([...before, ...columns])] : columns);
      if (columns) addColumns(model.rows.get(id));
    }
  }
  if (frame.type === "reset") showBanner("History reset: the server could not continue from this page's position, so it took a fresh snapshot.");
  if (frame.type === "error" && model.filterError) showNote(model.filterError, true);
  if (frame.type === "snapshot") describeView();
  schedule();
}

/** Columns beyond COLUMNS get their own column at the end (the table has a rebuild). */
function addColumns(order) {
  for (const column of Object.keys(order || {})) {
    if (!ui.columns.includes(column)) {
      ui.columns.push(column);
      ui.rebuild = true;
    }
  }
}

// ---- drawing --------------------------------------------------------------------------

let scheduled = false;
let raf = 0;
let fallback = 0;

/** One draw per animation frame; a timer too, since hidden tabs get no frames. */
function schedule() {
  if (scheduled) return;
  scheduled = true;
  const run = () => {
    if (!scheduled) return;
    scheduled = false;
    cancelAnimationFrame(raf);
    clearTimeout(fallback);
    draw();
  };
  raf = requestAnimationFrame(run);
  fallback = setTimeout(run, 250);
}

function draw() {
  drawStatus();
  drawCounters();
  if (ui.rebuild) rebuildRows();
  else drawDirtyRows();
  drawLog();
}

const STATUS_TEXT = { connecting: "Connecting", live: "Live", reconnecting: "Reconnecting", reset: "History reset" };

function drawStatus() {
  const state = model.status;
  el.status.dataset.state = state;
  let text = STATUS_TEXT[state] ?? state;
  if (!socket && retryTimer) text += ` in ${Math.max(0, (retryAt - Date.now()) / 1000).toFixed(1)} s`;
  el.status.textContent = text;
  if (model.server) el.server.textContent = model.server;
  el.server.title = servers.join(", ");
}

function drawCounters() {
  const now = Date.now();
  const rate = model.rate.rate(now);
  el.rate.textContent = rate >= 10 ? Math.round(rate).toString() : rate.toFixed(1);
  el.rows.textContent = model.rows.size.toLocaleString();
  el.lag.textContent = model.lagMs === null ? "–" : `${Math.round(model.lagMs)} ms`;
  el.position.textContent = formatPosition(model.position) || "–";
  el.position.title = el.position.textContent;
}

function compareIds(a, b) {
  return typeof a === "number" && typeof b === "number" ? b - a : String(b).localeCompare(String(a));
}

function rebuildRows() {
  ui.rebuild = false;
  ui.dirty.clear();
  el.head.replaceChildren(
    ...ui.columns.map((c) => {
      const th = document.createElement("th");
      th.dataset.col = c;
      th.scope = "col";
      th.textContent = c === "customer_name" ? "customer" : c === "product_name" ? "product" : c.replace(/_at$/, "").replace("_", " ");
      return th;
    }),
  );
  const ids = [...model.rows.keys()].sort(compareIds).slice(0, ROW_CAP);
  ui.trs = new Map();
  ui.shown = ids;
  const fragment = document.createDocumentFragment();
  for (const id of ids) {
    const tr = makeRow(id, model.rows.get(id));
    ui.trs.set(id, tr);
    fragment.append(tr);
  }
  el.body.replaceChildren(fragment);
  drawRowsNote();
}

function makeRow(id, order) {
  const tr = document.createElement("tr");
  tr.dataset.id = String(id);
  for (const column of ui.columns) {
    const td = document.createElement("td");
    td.dataset.col = column;
    fillCell(td, column, order[column]);
    tr.append(td);
  }
  return tr;
}

function fillCell(td, column, value) {
  if (column === "status" && value !== null && value !== undefined) {
    const badge = document.createElement("span");
    badge.className = "status";
    badge.dataset.status = String(value).toLowerCase();
    badge.textContent = String(value);
    td.replaceChildren(badge);
  } else {
    td.textContent = formatCell(column, value);
  }
}

/** Restarts a highlight: alternating between two identical animations needs no reflow. */
function flash(node, kind) {
  const a = node.classList.contains(`${kind}-a`);
  node.classList.remove(`${kind}-${a ? "a" : "b"}`);
  node.classList.add(`${kind}-${a ? "b" : "a"}`);
}

/** More changed rows than this in one frame: a flood, drawn without highlights (thousands of
 *  running animations would cost every frame more than the flood itself). */
const HIGHLIGHT_MAX = 60;

function drawDirtyRows() {
  let refill = false;
  const highlight = ui.dirty.size <= HIGHLIGHT_MAX;
  for (const [id, columns] of ui.dirty) {
    const order = model.rows.get(id);
    const tr = ui.trs.get(id);
    if (!order) {
      if (tr) {
        tr.remove();
        ui.trs.delete(id);
        ui.shown.splice(ui.shown.indexOf(id), 1);
        if (model.rows.size > ui.shown.length) refill = true;
      }
      continue;
    }
    if (tr) {
      for (const td of tr.children) {
        const column = td.dataset.col;
        if (columns && !columns.includes(column)) continue;
        fillCell(td, column, order[column]);
        if (highlight && column !== "updated_at") flash(td, "flash");
      }
      continue;
    }
    // A new row: into its place by id, if it is among the newest ROW_CAP.
    let lo = 0;
    let hi = ui.shown.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (compareIds(ui.shown[mid], id) < 0) lo = mid + 1;
      else hi = mid;
    }
    if (lo >= ROW_CAP) continue;
    const row = makeRow(id, order);
    if (highlight) flash(row, "new");
    el.body.insertBefore(row, ui.trs.get(ui.shown[lo]) ?? null);
    ui.shown.splice(lo, 0, id);
    ui.trs.set(id, row);
    if (ui.shown.length > ROW_CAP) {
      const last = ui.shown.pop();
      ui.trs.get(last)?.remove();
      ui.trs.delete(last);
    }
  }
  ui.dirty.clear();
  if (refill) rebuildRows();
  drawRowsNote();
}

function drawRowsNote() {
  el.empty.hidden = model.rows.size > 0;
  el.rowsNote.textContent = model.rows.size > ui.shown.length ? `newest ${ui.shown.length} of ${model.rows.size.toLocaleString()}` : "";
}

function drawLog() {
  if (model.seq === ui.logSeen) return;
  const fresh = [];
  for (let i = model.log.length - 1; i >= 0 && model.log[i].seq > ui.logSeen && fresh.length < LOG_CAP; i -= 1) {
    fresh.push(model.log[i]);
  }
  ui.logSeen = model.seq;
  const fragment = document.createDocumentFragment();
  for (const entry of fresh) fragment.append(logItem(entry)); // newest first
  el.log.prepend(fragment);
  while (el.log.childElementCount > LOG_CAP) el.log.lastElementChild.remove();
}

function span(className, text) {
  const node = document.createElement("span");
  node.className = className;
  node.textContent = text;
  return node;
}

function logItem(entry) {
  const li = document.createElement("li");
  const time = document.createElement("time");
  const at = entry.kind === "event" && entry.ts ? Date.parse(entry.ts) : entry.at;
  time.textContent = formatTime(Number.isNaN(at) ? entry.at : at);
  time.dateTime = new Date(Number.isNaN(at) ? entry.at : at).toISOString();
  if (entry.kind === "notice") {
    li.className = `notice ${entry.level}`;
    li.append(time, span("what", entry.text));
    return li;
  }
  li.dataset.op = entry.op;
  li.dataset.id = String(entry.id);
  if (entry.pos !== undefined) li.dataset.pos = String(entry.pos);
  if (entry.view) li.dataset.view = entry.view;
  time.title = "committed (database clock)";
  const what = span("what", "");
  if (entry.op === "UPDATE" && entry.changes.length) {
    what.append(`order ${entry.id}: `);
    entry.changes.forEach((c, i) => {
      const change = span("change", "");
      const name = document.createElement("b");
      name.textContent = c.column;
      change.append(name, " ", span("from", formatCell(c.column, c.from)), ` → ${formatCell(c.column, c.to)}`);
      what.append(i ? ", " : "", change);
    });
    if (entry.view) what.append(entry.view === "enter" ? " (entered the view)" : " (left the view)");
  } else {
    what.textContent = describe(entry);
  }
  li.append(time, span("op", entry.op), span("pos", entry.pos === undefined ? "" : `#${entry.pos}`), what);
  return li;
}

// ---- controls -------------------------------------------------------------------------

function showNote(text, error = false) {
  el.note.textContent = text;
  el.note.classList.toggle("error", error);
}

function describeView() {
  showNote(model.filters.length ? `Showing orders where ${model.filters.join(" and ")}` : "");
}

let bannerTimer = 0;
function showBanner(text, ms = 8000) {
  el.banner.textContent = text;
  el.banner.hidden = false;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => {
    el.banner.hidden = true;
  }, ms);
}

function applyFilters() {
  let filters;
  try {
    filters = buildFilters(controls());
  } catch (e) {
    showNote(e.message, true);
    return;
  }
  showNote(filters.length ? "Subscribing…" : "");
  send(model.setFilters(filters, connected()));
  if (!connected()) describeView();
  // The view is in the address, so it can be bookmarked and shared (a category page).
  const url = new URL(location.href);
  for (const key of ["status", "customer", "filter"]) url.searchParams.delete(key);
  const { status, customer, advanced } = controls();
  if (status.trim()) url.searchParams.set("status", status.trim());
  if (customer.trim()) url.searchParams.set("customer", customer.trim());
  for (const f of advanced.split(/\n|&/).map((s) => s.trim()).filter(Boolean)) url.searchParams.append("filter", f);
  history.replaceState(null, "", url);
}

el.form.addEventListener("submit", (event) => {
  event.preventDefault();
  applyFilters();
});

$("clear-filters").addEventListener("click", () => {
  el.fStatus.value = "";
  el.fCustomer.value = "";
  el.fAdvanced.value = "";
  applyFilters();
});

function clearLog() {
  model.clearLog();
  ui.logSeen = model.seq;
  el.log.replaceChildren();
}

$("clear-log").addEventListener("click", clearLog);
$("reconnect").addEventListener("click", () => reconnectNow());

$("apply-connection").addEventListener("click", () => {
  const list = safely(() => parseServers(el.servers.value, fallbackServer), null);
  if (!list) return;
  const newToken = el.token.value.trim();
  const tokenChanged = newToken !== token;
  token = newToken;
  if (token) sessionStorage.setItem("orders-token", token);
  else sessionStorage.removeItem("orders-token");
  if (list.join() !== servers.join()) {
    servers = list;
    serverIndex = 0;
    reconnectNow("switching servers");
  } else if (tokenChanged && connected() && token) {
    send([{ type: "auth", token }]); // refreshes the token on the open connection
  } else if (tokenChanged) {
    reconnectNow("reconnecting with the new token");
  }
});

document.addEventListener("keydown", (event) => {
  if (!event.ctrlKey || event.altKey || event.metaKey || event.shiftKey) return;
  const key = event.key.toLowerCase();
  if (key === "r") {
    event.preventDefault();
    reconnectNow();
  } else if (key === "l") {
    event.preventDefault();
    clearLog();
  }
});

// ---- test connection ------------------------------------------------------------------

/** Why an upgrade was refused: the WebSocket API hides it, the same request as SSE shows it. */
async function refusal(server) {
  const url = new URL(connectUrl(server, token));
  url.protocol = url.protocol === "wss:" ? "https:" : "http:";
  url.pathname = url.pathname.replace(/\/(ws)?$/, "/events");
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 3000);
  try {
    const response = await fetch(url, { signal: abort.signal, cache: "no-store" });
    if (response.ok) return "HTTP works but the WebSocket upgrade failed (a proxy that does not pass upgrades?)";
    return `HTTP ${response.status}: ${(await response.text()).trim()}`;
  } catch {
    return null;
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}

function probe(server) {
  const started = performance.now();
  return new Promise((resolve) => {
    let ws;
    try {
      ws = new WebSocket(connectUrl(server, token), "orders.v1");
    } catch (e) {
      resolve({ ok: false, text: e.message });
      return;
    }
    const finish = (ok, text) => {
      clearTimeout(timer);
      ws.onmessage = null;
      ws.onclose = null;
      ws.close(1000);
      resolve({ ok, text });
    };
    const timer = setTimeout(() => finish(false, `no hello within ${CONNECT_TIMEOUT_MS / 1000} s`), CONNECT_TIMEOUT_MS);
    ws.onmessage = (message) => {
      const frame = JSON.parse(message.data);
      if (frame.type !== "hello") return;
      const ms = Math.round(performance.now() - started);
      finish(true, `${frame.server_id} in ${ms} ms, at ${formatPosition(frame.position) || "no history yet"}`);
    };
    ws.onclose = async (event) => {
      clearTimeout(timer);
      resolve({ ok: false, text: (await refusal(server)) ?? `refused (close ${event.code})` });
    };
  });
}

$("test").addEventListener("click", async () => {
  const details = el.form.querySelector("details");
  details.open = true;
  el.probe.replaceChildren(...servers.map((s) => Object.assign(document.createElement("li"), { textContent: `${s}: testing…` })));
  const results = await Promise.all(servers.map(probe));
  el.probe.replaceChildren(
    ...results.map((r, i) => {
      const li = document.createElement("li");
      li.className = r.ok ? "ok" : "bad";
      li.textContent = `${r.ok ? "✓" : "✗"} ${servers[i]}: ${r.text}`;
      return li;
    }),
  );
});

// ---- start ----------------------------------------------------------------------------

setInterval(() => {
  drawStatus();
  drawCounters();
}, 500);
window.addEventListener("pagehide", () => socket?.close(1000, "page closed"));
describeView();
connect();
schedule();
