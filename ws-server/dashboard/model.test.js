// Tests of model.js, run in a real browser by the e2e suite (e2e/tests/it/dashboard.rs):
// `(await import("./model.test.js")).run()` resolves to {passed, failed: [{name, message}]}.
// No framework: a failed assertion throws, and run() collects each test's outcome.

import {
  Dashboard,
  LOG_CAP,
  RateCounter,
  backoffDelay,
  buildFilters,
  changedColumns,
  connectUrl,
  defaultServer,
  describe,
  parsePosition,
  parseServers,
  parseTs,
} from "./model.js";

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function eq(actual, expected, what = "value") {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what}: expected ${e}, got ${a}`);
}
function ok(condition, what) {
  if (!condition) throw new Error(what);
}

const EPOCH = "k3xq9a";
const order = (id, fields = {}) => ({ id, customer_name: "Ada", product_name: "Widget", status: "pending", amount: 10, ...fields });
const event = (pos, operation, row, extra = {}) => ({ type: "event", epoch: EPOCH, pos, table: "orders", operation, order: row, ...extra });
const ids = (d) => [...d.rows.keys()].sort((a, b) => a - b);

/** A dashboard that said hello and got a snapshot of `rows` at `pos`. */
function live(rows = [], pos = 10, options = {}) {
  const d = new Dashboard(options);
  const hello = d.receive({ type: "hello", protocol: 1, server_id: "ws-a" }, 0);
  const filter = options.filters?.length ? { filter: options.filters } : {};
  eq(hello.send, [{ type: "subscribe", table: "orders", ...filter, snapshot: true }], "the first subscribe asks for a snapshot of the view");
  d.receive({ type: "snapshot", position: { epoch: EPOCH, pos }, rows: rows.map((o) => ({ table: "orders", order: o })) }, 0);
  d.receive({ type: "subscribed", position: { epoch: EPOCH, pos } }, 0);
  return d;
}

test("a snapshot replaces the rows and sets the position", () => {
  const d = live([order(1), order(2)], 7);
  eq(ids(d), [1, 2]);
  eq(d.position, { epoch: EPOCH, pos: 7 });
  eq(d.status, "live");
  eq(d.server, "ws-a");
});

test("INSERT adds, UPDATE changes in place naming the changed columns, DELETE removes", () => {
  const d = live([order(1)]);
  const ins = d.receive(event(11, "INSERT", order(2)), 1);
  eq(ids(d), [1, 2]);
  ok(ins.rows.get(2).includes("customer_name"), "an inserted row is new in every column");
  const upd = d.receive(event(12, "UPDATE", order(1, { status: "shipped", amount: 12 }), { old: order(1) }), 2);
  eq(d.rows.get(1).status, "shipped");
  eq(upd.rows.get(1), ["status", "amount"], "the changed cells");
  eq(upd.entries[0].changes, [{ column: "status", from: "pending", to: "shipped" }, { column: "amount", from: 10, to: 12 }]);
  const del = d.receive(event(13, "DELETE", order(2)), 3);
  eq(ids(d), [1]);
  eq(del.rows.get(2), null, "a removed row");
  eq(d.position.pos, 13);
  eq(d.log.filter((e) => e.kind === "event").map((e) => [e.op, e.pos]), [["INSERT", 11], ["UPDATE", 12], ["DELETE", 13]]);
});

test("a row leaving the view is removed; one entering it is added", () => {
  const d = live([order(1), order(2)], 10, { filters: ["status=eq.pending"] });
  d.receive(event(11, "UPDATE", order(1, { status: "shipped" }), { view: "leave" }), 1);
  eq(ids(d), [2]);
  d.receive(event(12, "UPDATE", order(3, { status: "pending" }), { view: "enter", old: order(3, { status: "new" }) }), 2);
  eq(ids(d), [2, 3]);
  ok(describe(d.log.at(-1)).includes("entered the view"), describe(d.log.at(-1)));
  ok(describe(d.log.at(-2)).includes("left the view"), describe(d.log.at(-2)));
});

test("events at or before the applied position are ignored (a replay overlap)", () => {
  const d = live([order(1)], 10);
  d.receive(event(11, "INSERT", order(2)), 1);
  const again = d.receive(event(11, "INSERT", order(2)), 2);
  eq(again.entries, [], "a duplicate adds no log entry");
  d.receive(event(9, "DELETE", order(1)), 3);
  eq(ids(d), [1, 2], "an old event changes nothing");
});

test("events of other tables are not orders", () => {
  const d = live([order(1)]);
  d.receive({ ...event(11, "INSERT", { id: 5, name: "x" }), table: "customers" }, 1);
  eq(ids(d), [1]);
});

test("a reconnect resumes after the last position with the same view", () => {
  const d = live([order(1)], 10, { filters: ["amount=gte.5"] });
  d.receive(event(11, "INSERT", order(2)), 1);
  d.closed(2, "closed 1006");
  eq(d.status, "reconnecting");
  const hello = d.receive({ type: "hello", protocol: 1, server_id: "ws-b" }, 3);
  eq(hello.send, [{ type: "subscribe", table: "orders", filter: ["amount=gte.5"], since: { epoch: EPOCH, pos: 11 } }]);
  d.receive(event(12, "INSERT", order(3)), 4);
  d.receive({ type: "subscribed", position: { epoch: EPOCH, pos: 12 } }, 5);
  eq([d.status, d.server, ids(d)], ["live", "ws-b", [1, 2, 3]]);
});

test("a reset takes a fresh snapshot and says so", () => {
  const d = live([order(1), order(2)], 10);
  const reset = d.receive({ type: "reset", reason: "beyond_retention", position: { epoch: EPOCH, pos: 900 } }, 1);
  eq(d.status, "reset");
  eq(reset.send, [{ type: "subscribe", table: "orders", snapshot: true }]);
  ok(reset.entries[0].text.includes("history reset"), reset.entries[0].text);
  // Events before the new snapshot are covered by it.
  d.receive(event(901, "DELETE", order(1)), 2);
  eq(ids(d), [1, 2]);
  const snap = d.receive({ type: "snapshot", position: { epoch: EPOCH, pos: 901 }, rows: [{ table: "orders", order: order(2) }] }, 3);
  ok(snap.snapshot, "all rows replaced");
  d.receive({ type: "subscribed", position: { epoch: EPOCH, pos: 901 } }, 4);
  eq([d.status, ids(d), d.position.pos], ["live", [2], 901]);
});

test("a reset while resuming asks for a snapshot, not the lost position", () => {
  const d = live([order(1)], 10);
  d.closed(1);
  d.receive({ type: "hello", protocol: 1, server_id: "ws-b" }, 2);
  const reset = d.receive({ type: "reset", reason: "history_lost", position: { epoch: "new", pos: 3 } }, 3);
  eq(reset.send[0].snapshot, true);
  ok(!("since" in reset.send[0]), "no since after a reset");
});

test("a new filter re-subscribes with a snapshot; the old view's events in between are ignored", () => {
  const d = live([order(1), order(2, { status: "shipped" })], 10);
  const send = d.setFilters(["status=eq.shipped"], true);
  eq(send, [{ type: "subscribe", table: "orders", filter: ["status=eq.shipped"], snapshot: true }]);
  d.receive(event(11, "INSERT", order(3)), 1);
  eq(ids(d), [1, 2], "not applied: the snapshot covers it");
  d.receive({ type: "snapshot", position: { epoch: EPOCH, pos: 11 }, rows: [{ table: "orders", order: order(2, { status: "shipped" }) }] }, 2);
  eq([ids(d), d.filters], [[2], ["status=eq.shipped"]]);
});

test("a filter the server refuses keeps the old view", () => {
  const d = live([order(1)], 10, { filters: ["status=eq.pending"] });
  d.setFilters(["amount=zz.1"], true);
  d.receive({ type: "error", code: "invalid_filter", message: "unknown operator zz" }, 1);
  eq([d.filters, d.filterError, d.pending], [["status=eq.pending"], "unknown operator zz", null]);
  d.receive(event(11, "INSERT", order(2)), 2);
  eq(ids(d), [1, 2], "the old view goes on");
});

test("a filter changed while disconnected is taken with a snapshot on the next connection", () => {
  const d = live([order(1)], 10);
  d.closed(1);
  d.setFilters(["status=eq.paid"], false);
  const hello = d.receive({ type: "hello", protocol: 1, server_id: "ws-a" }, 2);
  eq(hello.send, [{ type: "subscribe", table: "orders", filter: ["status=eq.paid"], snapshot: true }]);
});

test("the log keeps the newest LOG_CAP entries", () => {
  const d = live([], 0, { logCap: 50 });
  for (let i = 1; i <= 120; i += 1) d.receive(event(i, "INSERT", order(i)), i);
  eq(d.log.length, 50);
  eq(d.log[0].pos, 71, "the oldest kept");
  eq(d.log.at(-1).pos, 120);
  eq(d.rows.size, 120, "rows are not capped by the log");
  ok(LOG_CAP === 500, "the default cap");
  d.clearLog();
  eq(d.log.length, 0);
});

test("several changes to one row in one batch merge their changed columns", () => {
  const d = live([order(1)], 10);
  const a = d.receive(event(11, "UPDATE", order(1, { status: "paid" })), 1);
  const b = d.receive(event(12, "UPDATE", order(1, { status: "paid", amount: 99 })), 2);
  eq([a.rows.get(1), b.rows.get(1)], [["status"], ["amount"]]);
});

test("lag is measured from the event's ts; the rate over the window", () => {
  const d = live([], 0);
  const ts = "2026-11-26T17:48:09.100523+00:00";
  const at = Date.parse("2026-11-26T17:48:09.100Z") + 42;
  d.receive(event(1, "INSERT", order(1), { ts }), at);
  eq(d.lagMs, 42);
  eq(parseTs(ts), Date.parse("2026-11-26T17:48:09.100Z"));
  const r = new RateCounter(1000);
  r.add(0, 5);
  eq(r.rate(500), 5);
  eq(r.rate(1001), 0);
});

test("backoff grows exponentially with jitter, between half and all of a capped ceiling", () => {
  eq([0, 1, 2, 3].map((n) => backoffDelay(n, { min: 100, max: 1000 }, () => 1)), [100, 200, 400, 800]);
  eq(backoffDelay(10, { min: 100, max: 1000 }, () => 1), 1000);
  eq(backoffDelay(10, { min: 100, max: 1000 }, () => 0), 500);
  for (let n = 0; n < 50; n += 1) {
    const d = backoffDelay(n, { min: 100, max: 1000 });
    ok(d >= 50 && d <= 1000, `delay ${d}`);
  }
});

test("server lists, the default server and connection URLs", () => {
  eq(parseServers("ws://a:1/ws, http://b:2/ws  c:3", "ws://x/ws"), ["ws://a:1/ws", "ws://b:2/ws", "ws://c:3/ws"]);
  eq(parseServers("", "ws://x/ws"), ["ws://x/ws"]);
  eq(defaultServer("https://h.example/dash/?servers=1#x"), "wss://h.example/dash/ws");
  eq(defaultServer("http://127.0.0.1:8080/"), "ws://127.0.0.1:8080/ws");
  const url = new URL(connectUrl("ws://a:1/ws", "t.o.k"));
  eq([url.searchParams.get("protocol"), url.searchParams.get("subscribe"), url.searchParams.get("access_token")], ["orders.v1", "false", "t.o.k"]);
  ok(!new URL(connectUrl("ws://a:1/ws", "")).searchParams.has("access_token"), "no empty token");
});

test("the controls' filters in PostgREST syntax", () => {
  eq(buildFilters({ status: "pending" }), ["status=eq.pending"]);
  eq(buildFilters({ status: "pending, on hold" }), ['status=in.(pending,"on hold")']);
  eq(buildFilters({ customer: " Bob " }), ["customer_name=ilike.*Bob*"]);
  eq(buildFilters({ advanced: "amount=gte.100\nproduct_name=like.*Widget*&id=not.in.(1,2)" }), [
    "amount=gte.100",
    "product_name=like.*Widget*",
    "id=not.in.(1,2)",
  ]);
  let error = null;
  try {
    buildFilters({ advanced: "amount>100" });
  } catch (e) {
    error = e.message;
  }
  ok(error && error.includes("amount>100"), `a malformed filter is named: ${error}`);
});

test("a start position replays from it; positions parse as EPOCH:POS", () => {
  eq(parsePosition("k3xq9a:1042"), { epoch: "k3xq9a", pos: 1042 });
  eq([parsePosition("k3xq9a"), parsePosition(""), parsePosition("a:b")], [null, null, null]);
  const d = new Dashboard({ since: { epoch: EPOCH, pos: 5 } });
  eq(d.receive({ type: "hello", protocol: 1, server_id: "ws-a" }, 0).send, [{ type: "subscribe", table: "orders", since: { epoch: EPOCH, pos: 5 } }]);
});

test("changed columns compare values, not identity", () => {
  eq(changedColumns({ a: 1, b: [1] }, { a: 1, b: [1], c: null }), ["c"]);
});

/** Runs every test; never throws. */
export async function run() {
  const failed = [];
  for (const { name, fn } of tests) {
    try {
      await fn();
    } catch (e) {
      failed.push({ name, message: String(e && e.stack ? e.stack : e) });
    }
  }
  return { passed: tests.length - failed.length, failed, total: tests.length };
}
