//! Helpers for tests of subscription views (`filter`, `select`, `table`; docs/protocol.md,
//! "Additions of protocol 1.1"):
//!
//! - [`url`]: a WebSocket URL with query parameters, each value percent-encoded
//! - [`Fold`]: a client's copy of its view, folded the way the protocol says (upsert on
//!   INSERT/UPDATE, remove on DELETE and on `"view":"leave"`), checking every step
//! - [`sql_view`], [`sql_matches`], [`expected`]: what PostgreSQL itself says a view holds and
//!   which events it gets, so no test re-implements the filter semantics it checks
//! - [`until_pong`]: a barrier on one connection
//! - [`upgrade_refusal`]: the HTTP answer to a WebSocket upgrade the server refuses

use std::{collections::BTreeMap, net::SocketAddr};

use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::{WAIT, WsClient};

/// Percent-encodes `text` for a URL query component: everything but `A-Z a-z 0-9 - . _ ~`.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `base?k1=v1&k2=v2…`, each value percent-encoded; a key may repeat (`filter`).
pub fn url(base: &str, params: &[(&str, &str)]) -> String {
    if params.is_empty() {
        return base.to_owned();
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    format!("{base}?{}", query.join("&"))
}

/// The position of an event frame (`pos`).
pub fn pos(frame: &Value) -> u64 {
    frame["pos"].as_u64().unwrap_or_else(|| panic!("an event with a position: {frame}"))
}

/// The row id of an event or snapshot row (`order.id`).
pub fn row_id(order: &Value) -> i64 {
    order["id"].as_i64().unwrap_or_else(|| panic!("a row with an id: {order}"))
}

/// A client's copy of its view: a snapshot, then every event folded in, checking at each step
/// that the event makes sense for what the copy holds (an `enter` for a row it does not hold,
/// an UPDATE, `leave` or DELETE for one it holds, positions increasing).
#[derive(Debug, Default, Clone)]
pub struct Fold {
    /// Its name in messages.
    pub name: String,
    /// The rows it holds, by id.
    pub rows: BTreeMap<i64, Value>,
    /// The epoch and position of the last event applied (or of the snapshot).
    pub position: Option<(String, u64)>,
    /// The snapshot's position, once one came.
    pub snapshot_at: Option<u64>,
    /// Every event frame applied, in order.
    pub events: Vec<Value>,
    /// `"view":"enter"` events applied.
    pub enters: usize,
    /// `"view":"leave"` events applied.
    pub leaves: usize,
    /// Steps that did not make sense.
    pub violations: Vec<String>,
    /// Events before the snapshot frame are covered by it (a `subscribe` frame's snapshot).
    awaiting_snapshot: bool,
    /// Whether it holds the whole view (it started from a snapshot), so the steps can be checked.
    complete: bool,
}

impl Fold {
    /// A fold that starts with the snapshot it is about to be sent (events before it are
    /// ignored, as the protocol says).
    pub fn new(name: impl Into<String>) -> Fold {
        Fold { name: name.into(), awaiting_snapshot: true, ..Fold::default() }
    }

    /// A fold of the events only (no snapshot): its rows are what the events brought.
    pub fn events_only(name: impl Into<String>) -> Fold {
        Fold { name: name.into(), ..Fold::default() }
    }

    /// A fold that already holds `rows`, the view as of `epoch:pos` (a client resuming with
    /// `since`); `snapshot_at` is `pos`.
    pub fn resuming(name: impl Into<String>, rows: BTreeMap<i64, Value>, epoch: &str, pos: u64) -> Fold {
        Fold {
            name: name.into(),
            rows,
            position: Some((epoch.to_owned(), pos)),
            snapshot_at: Some(pos),
            complete: true,
            ..Fold::default()
        }
    }

    /// The ids it holds.
    pub fn ids(&self) -> Vec<i64> {
        self.rows.keys().copied().collect()
    }

    /// The positions of the events applied.
    pub fn positions(&self) -> Vec<u64> {
        self.events.iter().map(pos).collect()
    }

    /// Applies a frame: a snapshot or an event; other frames are ignored.
    pub fn apply(&mut self, frame: &Value) {
        match frame["type"].as_str() {
            Some("snapshot") => {
                self.awaiting_snapshot = false;
                self.complete = true;
                self.rows.clear();
                for row in frame["rows"].as_array().expect("snapshot rows") {
                    let order = &row["order"];
                    if self.rows.insert(row_id(order), order.clone()).is_some() {
                        self.violations.push(format!("{}: row {} twice in the snapshot", self.name, order["id"]));
                    }
                }
                let at = &frame["position"];
                if let (Some(epoch), Some(p)) = (at["epoch"].as_str(), at["pos"].as_u64()) {
                    self.position = Some((epoch.to_owned(), p));
                    self.snapshot_at = Some(p);
                }
            }
            Some("event") if self.awaiting_snapshot => {}
            Some("event") => self.apply_event(frame),
            _ => {}
        }
    }

    fn apply_event(&mut self, frame: &Value) {
        let name = &self.name;
        let epoch = frame["epoch"].as_str().unwrap_or_default().to_owned();
        let at = pos(frame);
        if let Some((e, p)) = &self.position
            && *e == epoch
            && at <= *p
        {
            self.violations.push(format!("{name}: position {at} after {p} (not increasing)"));
        }
        let id = row_id(&frame["order"]);
        let held = self.rows.contains_key(&id);
        let view = frame.get("view").and_then(Value::as_str);
        let (should_hold, keep) = match (frame["operation"].as_str(), view) {
            (Some("INSERT"), None) => (false, true),
            (Some("UPDATE"), None) => (true, true),
            (Some("UPDATE"), Some("enter")) => {
                self.enters += 1;
                (false, true)
            }
            (Some("UPDATE"), Some("leave")) => {
                self.leaves += 1;
                (true, false)
            }
            (Some("DELETE"), None) => (true, false),
            _ => {
                self.violations.push(format!("{name}: an event of an unknown kind: {frame}"));
                (held, true)
            }
        };
        if self.complete && held != should_hold {
            let what = if held { "it holds" } else { "it does not hold" };
            self.violations.push(format!("{name}: {frame} for row {id}, which {what}"));
        }
        if keep {
            self.rows.insert(id, frame["order"].clone());
        } else {
            self.rows.remove(&id);
        }
        self.position = Some((epoch, at));
        self.events.push(frame.clone());
    }
}

/// `SELECT row_to_json(o) FROM orders o WHERE <condition>`, by id: the rows a view of that
/// condition holds, rendered the way the trigger renders them.
pub async fn sql_view(pool: &PgPool, condition: &str) -> BTreeMap<i64, Value> {
    let sql = format!("SELECT row_to_json(o)::text FROM orders o WHERE {condition}");
    let rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .map(|r| {
            let row: Value = serde_json::from_str(r).expect("row_to_json is JSON");
            (row_id(&row), row)
        })
        .collect()
}

/// For each row (JSON of an `orders` row), whether PostgreSQL finds `<condition>` true for
/// it: the rows are read back as `orders` records (`json_populate_recordset`) and filtered with
/// the condition as written.
pub async fn sql_matches(pool: &PgPool, rows: &[&Value], condition: &str) -> Vec<bool> {
    if rows.is_empty() {
        return Vec::new();
    }
    let sql = format!(
        "SELECT ordinality FROM json_populate_recordset(NULL::orders, $1::text::json) WITH ORDINALITY AS t \
         WHERE {condition}"
    );
    let array = Value::Array(rows.iter().map(|r| (*r).clone()).collect()).to_string();
    let hits: Vec<i64> =
        sqlx::query_scalar(&sql).bind(array).fetch_all(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = vec![false; rows.len()];
    for hit in hits {
        out[usize::try_from(hit - 1).expect("ordinality starts at 1")] = true;
    }
    out
}

/// How a view of `<condition>` receives each of `events` (complete event frames, as an
/// unfiltered client gets them), decided by PostgreSQL: `(pos, operation, view)` of each
/// event it gets, in order. An UPDATE is `enter` when only the new row matches, `leave` when
/// only the old one does.
pub async fn expected(pool: &PgPool, events: &[Value], condition: &str) -> Vec<(u64, String, Option<String>)> {
    let mut rows = Vec::new();
    for e in events {
        rows.push(&e["order"]);
        if e["operation"] == "UPDATE" {
            rows.push(&e["old"]);
        }
    }
    let matches = sql_matches(pool, &rows, condition).await;
    let mut matches = matches.into_iter();
    let mut out = Vec::new();
    for e in events {
        let op = e["operation"].as_str().expect("an operation").to_owned();
        let new_in = matches.next().expect("one per row");
        let view = if op == "UPDATE" {
            let old_in = matches.next().expect("one per old row");
            match (old_in, new_in) {
                (true, true) => Some(None),
                (false, true) => Some(Some("enter".to_owned())),
                (true, false) => Some(Some("leave".to_owned())),
                (false, false) => None,
            }
        } else {
            new_in.then_some(None)
        };
        if let Some(view) = view {
            out.push((pos(e), op, view));
        }
    }
    out
}

/// `(pos, operation, view)` of event frames, to compare with [`expected`].
pub fn deliveries(events: &[Value]) -> Vec<(u64, String, Option<String>)> {
    events
        .iter()
        .map(|e| {
            (
                pos(e),
                e["operation"].as_str().unwrap_or("?").to_owned(),
                e.get("view").and_then(Value::as_str).map(Into::into),
            )
        })
        .collect()
}

/// Sends a `ping` tagged `tag` and returns the frames before its `pong`.
///
/// A barrier: a connection handles every event its replica's hub holds before it reads a
/// client frame, so once any client of the replica got event P, every event up to P that is
/// for this connection comes before the pong.
pub async fn until_pong(client: &mut WsClient, tag: &str) -> Vec<Value> {
    client.send_json(&json!({"type": "ping", "id": tag})).await;
    let mut out = Vec::new();
    loop {
        let frame = client.next_json().await;
        if frame["type"] == "pong" && frame["id"] == tag {
            return out;
        }
        out.push(frame);
    }
}

/// The answer to a WebSocket upgrade of `path` (with its query) that the server refuses:
/// `(status, body)`; `(101, "")` when it accepted.
pub async fn upgrade_refusal(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("send the request");
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
                if status == 101 {
                    return (101, String::new());
                }
                let length = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok())?
                });
                if length.is_some_and(|n| body.len() >= n) {
                    return (status, body.to_owned());
                }
            }
            let n = stream.read(&mut buf).await.expect("read the response");
            if n == 0 {
                let (head, body) = text.split_once("\r\n\r\n").expect("a whole response head");
                let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
                return (status, body.to_owned());
            }
            raw.extend_from_slice(&buf[..n]);
        }
    };
    timeout(WAIT, exchange).await.unwrap_or_else(|_| panic!("no answer to the upgrade of {path} within {WAIT:?}"))
}
