// The dashboard's logic, with no DOM, timers or sockets: it folds the server's frames
// (docs/protocol.md) into the current rows, an activity log and counters, and says which
// frames to send back. app.js does the I/O; model.test.js tests this in a real browser.

/** The columns shown first, in this order; others follow as they appear. */
export const COLUMNS = ["id", "customer_name", "product_name", "status", "amount", "created_at", "updated_at"];

/** How many log entries are kept (older ones fall off). */
export const LOG_CAP = 500;

/** `{epoch, pos}` as `EPOCH:POS`, the form `?since=` and cli-client use. */
export function formatPosition(position) {
  return position ? `${position.epoch}:${position.pos}` : "";
}

/** `EPOCH:POS` as `{epoch, pos}`, or null when it is not one. */
export function parsePosition(text) {
  const match = /^([^:\s]+):(\d+)$/.exec(String(text || "").trim());
  return match ? { epoch: match[1], pos: Number(match[2]) } : null;
}

/** Milliseconds since 1970 of an RFC 3339 `ts` (microseconds cut to what Date keeps). */
export function parseTs(ts) {
  if (typeof ts !== "string") return NaN;
  return Date.parse(ts.replace(/(\.\d{3})\d+/, "$1"));
}

/**
 * The wait before reconnect attempt `attempt` (0-based): exponential from `min` to `max`,
 * with "equal jitter" (between half and all of it), so replicas restarting together are not
 * hit by every page at once, and no wait is ever near zero.
 */
export function backoffDelay(attempt, { min = 250, max = 10000 } = {}, random = Math.random) {
  const ceiling = Math.min(max, min * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/**
 * The WebSocket URLs in `text` (commas or spaces between them). `http(s)://` becomes
 * `ws(s)://`; a bare `host:port` is taken as `ws://host:port/ws`. Empty: `[fallback]`.
 */
export function parseServers(text, fallback) {
  const urls = [];
  for (let item of String(text || "").split(/[\s,]+/)) {
    if (!item) continue;
    if (!/^[a-z]+:\/\//i.test(item)) item = `ws://${item}/ws`;
    const url = new URL(item.replace(/^http/i, "ws"));
    if (url.protocol !== "ws:" && url.protocol !== "wss:") throw new Error(`not a WebSocket URL: ${item}`);
    urls.push(url.href);
  }
  return urls.length ? urls : [fallback];
}

/** The WebSocket endpoint next to a page at `pageUrl` (its own origin, same path prefix). */
export function defaultServer(pageUrl) {
  const url = new URL("ws", pageUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url.href;
}

/**
 * The URL a connection opens: no default subscription (the page subscribes with its view
 * after `hello`, so filter errors come back as frames, not as a failed upgrade), and the
 * token when there is one (browsers cannot set `Authorization` on a WebSocket).
 */
export function connectUrl(server, token) {
  const url = new URL(server);
  url.searchParams.set("protocol", "orders.v1");
  url.searchParams.set("subscribe", "false");
  if (token) url.searchParams.set("access_token", token);
  return url.href;
}

const OPS = "eq|neq|lt|lte|gt|gte|in|is|like|ilike";
const FILTER = new RegExp(`^[A-Za-z_][A-Za-z0-9_]*=(not\\.)?(${OPS})\\..*$`);

/** A value inside `in.(…)`, double-quoted when it holds what would split it (PostgREST). */
function listValue(value) {
  return /[,()"\\\s]/.test(value) ? `"${value.replace(/(["\\])/g, "\\$1")}"` : value;
}

/**
 * The filters of the controls: `status` (one value, or several with commas: `in.(…)`),
 * `customer` (a case-insensitive substring of `customer_name`) and `advanced`, any
 * `column=op.value` filters, one per line or `&`-separated. Throws on a malformed one, naming it.
 */
export function buildFilters({ status = "", customer = "", advanced = "" } = {}) {
  const filters = [];
  const statuses = status.split(",").map((s) => s.trim()).filter(Boolean);
  if (statuses.length === 1) filters.push(`status=eq.${statuses[0]}`);
  else if (statuses.length > 1) filters.push(`status=in.(${statuses.map(listValue).join(",")})`);
  const name = customer.trim();
  if (name) filters.push(`customer_name=ilike.*${name}*`);
  for (const raw of advanced.split(/\n|&/)) {
    const filter = raw.trim();
    if (!filter) continue;
    if (!FILTER.test(filter)) {
      throw new Error(`"${filter}" is not a filter: write column=op.value, e.g. amount=gte.100 (op: ${OPS.replaceAll("|", ", ")})`);
    }
    filters.push(filter);
  }
  return filters;
}

/** Values as the table shows them: amounts with two decimals, times as local clock time. */
export function formatCell(column, value) {
  if (value === null || value === undefined) return "";
  if (column === "amount" && typeof value === "number") return value.toFixed(2);
  if (column.endsWith("_at") && typeof value === "string") {
    const ms = parseTs(value);
    if (!Number.isNaN(ms)) return formatTime(ms);
  }
  return typeof value === "object" ? JSON.stringify(value) : String(value);
}

/** `HH:MM:SS.mmm`, local time. */
export function formatTime(ms) {
  const d = new Date(ms);
  const two = (n) => String(n).padStart(2, "0");
  return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

/** The columns whose values differ between two rows (by their JSON). */
export function changedColumns(before, after) {
  const keys = new Set([...Object.keys(before || {}), ...Object.keys(after || {})]);
  return [...keys].filter((k) => JSON.stringify(before?.[k]) !== JSON.stringify(after?.[k]));
}

/** Events per second over a sliding window. */
export class RateCounter {
  constructor(windowMs = 5000) {
    this.windowMs = windowMs;
    this.times = [];
  }
  add(now, n = 1) {
    for (let i = 0; i < n; i += 1) this.times.push(now);
    this.trim(now);
  }
  trim(now) {
    let drop = 0;
    while (drop < this.times.length && this.times[drop] <= now - this.windowMs) drop += 1;
    if (drop) this.times.splice(0, drop);
    // A flood keeps at most one window of timestamps.
  }
  rate(now) {
    this.trim(now);
    return (this.times.length * 1000) / this.windowMs;
  }
}

/**
 * One dashboard's state: the rows of its view, the position it has applied, the log, and
 * the connection's status. `receive(frame)` returns what changed and the frames to send.
 *
 * status: "connecting" (never live yet), "live", "reconnecting", "reset" (the history could
 * not be continued: a fresh snapshot is on its way).
 */
export class Dashboard {
  constructor({ logCap = LOG_CAP, table = "orders", filters = [], since = null } = {}) {
    this.logCap = logCap;
    this.table = table;
    this.filters = filters;
    this.rows = new Map();
    // A start position (`?since=`) replays what followed it; a snapshot is taken otherwise.
    this.position = since;
    this.status = "connecting";
    this.server = null;
    this.log = [];
    this.seq = 0;
    this.pending = null; // filters of a re-subscription waiting for its snapshot
    this.awaitingSnapshot = false;
    this.filterError = null;
    this.rate = new RateCounter();
    this.lagMs = null;
    this.events = 0;
  }

  /** The subscription for the current view: resume after `position`, or take a snapshot. */
  subscribeFrame(filters = this.filters) {
    const frame = { type: "subscribe", table: this.table };
    if (filters.length) frame.filter = filters;
    if (this.position && !this.awaitingSnapshot) frame.since = this.position;
    else {
      frame.snapshot = true;
      this.awaitingSnapshot = true;
    }
    return frame;
  }

  /** Changes the view. Live: returns the frame to send (the new view's snapshot follows). */
  setFilters(filters, connected) {
    this.filterError = null;
    if (!connected) {
      // The next connection takes a snapshot of the new view.
      this.filters = filters;
      this.pending = null;
      this.awaitingSnapshot = true;
      return [];
    }
    this.pending = filters;
    this.awaitingSnapshot = true;
    return [this.subscribeFrame(filters)];
  }

  /** The socket closed: what was asked and not answered is asked again on the next one. */
  closed(now, reason) {
    if (this.pending) {
      this.filters = this.pending;
      this.pending = null;
    }
    this.server = null;
    if (this.status !== "connecting") this.status = "reconnecting";
    if (reason) this.notice(now, "warn", reason);
  }

  clearLog() {
    this.log = [];
  }

  notice(now, level, text) {
    return this.push({ kind: "notice", level, text, at: now });
  }

  push(entry) {
    this.seq += 1;
    entry.seq = this.seq;
    this.log.push(entry);
    if (this.log.length > this.logCap) this.log.splice(0, this.log.length - this.logCap);
    return entry;
  }

  /**
   * Applies one frame from the server at time `now` (ms since 1970). Returns
   * `{send, rows, snapshot, entries}`: frames to send, the ids of rows that changed (with
   * the changed columns, or `null` for a row that is gone), whether all rows were replaced,
   * and the log entries added.
   */
  receive(frame, now) {
    const out = { send: [], rows: new Map(), snapshot: false, entries: [] };
    const note = (level, text) => out.entries.push(this.notice(now, level, text));
    switch (frame.type) {
      case "hello":
        this.server = frame.server_id ?? null;
        out.send.push(this.subscribeFrame(this.pending ?? this.filters));
        break;
      case "snapshot":
        this.rows = new Map();
        for (const item of frame.rows || []) {
          if (item.table && item.table !== this.table) continue;
          if (item.order && item.order.id !== undefined) this.rows.set(item.order.id, item.order);
        }
        if (this.pending) {
          this.filters = this.pending;
          this.pending = null;
        }
        this.awaitingSnapshot = false;
        this.position = frame.position ?? null;
        out.snapshot = true;
        note("info", `snapshot: ${this.rows.size} row${this.rows.size === 1 ? "" : "s"} at ${formatPosition(this.position) || "the start"}`);
        break;
      case "subscribed":
        if (frame.position) this.position = frame.position;
        this.status = "live";
        break;
      case "event":
        this.event(frame, now, out);
        break;
      case "rebased":
        this.position = frame.position;
        note("info", `history rebased: ${formatPosition(frame.from)} is now ${formatPosition(frame.position)}`);
        break;
      case "reset":
        // The server cannot continue from our position: start again from a snapshot.
        this.status = "reset";
        this.position = null;
        this.awaitingSnapshot = false;
        out.send.push(this.subscribeFrame(this.pending ?? this.filters));
        note("warn", `history reset (${frame.reason}): taking a fresh snapshot`);
        break;
      case "conflated":
        note("warn", `fell behind: ${frame.folded} events folded into the latest state of their rows`);
        break;
      case "authenticated":
        note("info", `token accepted${frame.exp ? `, valid until ${formatTime(frame.exp * 1000)}` : ""}`);
        break;
      case "error":
        if (this.pending && ["invalid_filter", "forbidden", "limit_exceeded", "invalid_frame"].includes(frame.code)) {
          // The server kept the old view: so do we.
          this.pending = null;
          this.awaitingSnapshot = false;
          this.filterError = frame.message;
        }
        note("warn", `${frame.code}: ${frame.message}`);
        break;
      default:
        // pong, acked, unknown frames: nothing to show (clients ignore what they don't know).
        break;
    }
    return out;
  }

  event(frame, now, out) {
    if (frame.table && frame.table !== this.table) return;
    // Covered by the snapshot on its way.
    if (this.awaitingSnapshot) return;
    const at = this.position;
    if (at && frame.epoch === at.epoch && frame.pos <= at.pos) return; // already applied
    if (frame.epoch !== undefined) this.position = { epoch: frame.epoch, pos: frame.pos };
    const order = frame.order || {};
    const id = order.id;
    const before = this.rows.get(id);
    const gone = frame.operation === "DELETE" || frame.view === "leave";
    let columns = null;
    if (gone) this.rows.delete(id);
    else {
      columns = before ? changedColumns(before, order) : Object.keys(order);
      this.rows.set(id, order);
    }
    if (out.rows.has(id) && columns && out.rows.get(id)) {
      columns = [...new Set([...out.rows.get(id), ...columns])];
    }
    out.rows.set(id, columns);
    this.events += 1;
    this.rate.add(now);
    const committed = parseTs(frame.ts);
    if (!Number.isNaN(committed)) this.lagMs = Math.max(0, now - committed);
    const old = frame.old || before;
    const changes =
      frame.operation === "UPDATE" && old
        ? changedColumns(old, order)
            .filter((c) => c !== "updated_at" && c in order)
            .map((c) => ({ column: c, from: old[c], to: order[c] }))
        : [];
    out.entries.push(
      this.push({
        kind: "event",
        op: frame.operation,
        view: frame.view ?? null,
        id,
        epoch: frame.epoch,
        pos: frame.pos,
        ts: frame.ts,
        at: now,
        order,
        changes,
      }),
    );
  }
}

/** One log entry as a line of text (the DOM adds colour and structure around the same parts). */
export function describe(entry) {
  if (entry.kind === "notice") return entry.text;
  const o = entry.order || {};
  const who = [o.customer_name, o.product_name].filter(Boolean).join(" · ");
  const what =
    entry.op === "UPDATE" && entry.changes.length
      ? entry.changes.map((c) => `${c.column}: ${formatCell(c.column, c.from)} → ${formatCell(c.column, c.to)}`).join(", ")
      : [who, o.status].filter(Boolean).join(" · ");
  const view = entry.view === "enter" ? " (entered the view)" : entry.view === "leave" ? " (left the view)" : "";
  return `order ${o.id ?? "?"}${what ? ` — ${what}` : ""}${view}`;
}
