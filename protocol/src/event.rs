//! The change event: what the trigger sends on NOTIFY and what the publisher emits to Redis.
//!
//! The trigger (`sql/0002_notify.sql`) sends one of three shapes on `orders_channel`:
//!
//! - full: `{"id":7,"table":"orders","operation":"UPDATE","order":{…},"old":{…},"ts":"…"}`
//! - reference, when the full JSON would pass NOTIFY's 8000-byte limit:
//!   `{"id":7,"table":"orders","operation":"UPDATE","ref":true}`; the publisher reads the
//!   full change from the `realtime_events` table
//! - legacy, from the original hand-written trigger: `{"operation":"INSERT","order":{…}}`
//!
//! The publisher serializes each change exactly once, into the event JSON that Redis carries
//! and every WebSocket client receives unchanged:
//! `{"type":"event","id":7,"table":"orders","operation":"UPDATE","order":{…},"old":{…},"ts":"…"}`.
//! Row bodies stay raw JSON text end to end: nothing re-encodes a row.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The table a legacy payload (which names none) is taken to come from.
pub const LEGACY_TABLE: &str = "orders";

/// What happened to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    /// A row was inserted; `order` is the new row.
    Insert,
    /// A row was updated; `order` is the new row, `old` the previous one.
    Update,
    /// A row was deleted; `order` is the deleted row.
    Delete,
}

impl Operation {
    /// The SQL keyword (`INSERT`, `UPDATE`, `DELETE`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// Why a payload on the notification channel was not a change.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or JSON of another shape.
    #[error("payload is not a change event: {0}")]
    Shape(#[from] serde_json::Error),
    /// JSON of the right shape but without the row.
    #[error("payload has no \"order\" object and is not a reference (\"ref\": true with an \"id\")")]
    MissingRow,
    /// `order` or `old` is not a JSON object.
    #[error("payload field {field:?} must be a JSON object")]
    NotAnObject {
        /// The offending field.
        field: &'static str,
    },
}

/// A parsed notification payload.
#[derive(Debug)]
pub enum Notification {
    /// The whole change was in the payload.
    Change(Change),
    /// The change was too large for NOTIFY; read event `id` from `realtime_events`.
    Reference {
        /// The `realtime_events.id` to read.
        id: i64,
    },
}

/// One row change, with row bodies kept as raw JSON.
#[derive(Debug, Clone)]
pub struct Change {
    /// `realtime_events.id`; `None` for a legacy payload.
    pub id: Option<i64>,
    /// The table the row belongs to.
    pub table: String,
    /// INSERT, UPDATE or DELETE.
    pub operation: Operation,
    /// The row (the old row for DELETE).
    pub order: Box<RawValue>,
    /// The previous row, for UPDATE.
    pub old: Option<Box<RawValue>>,
    /// When the trigger ran (database clock, RFC 3339).
    pub ts: Option<String>,
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    table: Option<String>,
    operation: Operation,
    #[serde(default, borrow)]
    order: Option<&'a RawValue>,
    #[serde(default, borrow)]
    old: Option<&'a RawValue>,
    #[serde(default)]
    ts: Option<String>,
    #[serde(default, rename = "ref")]
    reference: bool,
}

#[derive(Serialize)]
struct EventOut<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<i64>,
    table: &'a str,
    operation: Operation,
    order: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
}

/// Parses a payload received on the notification channel.
///
/// # Errors
/// [`PayloadError`] names what is wrong; the caller logs it and skips the payload.
pub fn parse_notification(payload: &str) -> Result<Notification, PayloadError> {
    let p: Payload<'_> = serde_json::from_str(payload)?;
    if p.reference {
        return p.id.map(|id| Notification::Reference { id }).ok_or(PayloadError::MissingRow);
    }
    let order = p.order.ok_or(PayloadError::MissingRow)?;
    ensure_object(order, "order")?;
    if let Some(old) = p.old {
        ensure_object(old, "old")?;
    }
    Ok(Notification::Change(Change {
        id: p.id,
        table: p.table.unwrap_or_else(|| LEGACY_TABLE.to_owned()),
        operation: p.operation,
        order: without_lone_surrogates(order),
        old: p.old.map(without_lone_surrogates),
        ts: p.ts,
    }))
}

/// The row, with every `\uD800`–`\uDFFF` escape that is not half of a pair replaced by `\ufffd`.
///
/// PostgreSQL's `json` type accepts such escapes and `row_to_json` passes them on, and they are
/// valid JSON text, but no string can hold them: serde_json readers (cli-client) reject the
/// whole event, so a committed change would not reach them. The replacement character is what
/// lenient decoders show instead. Rows without such an escape are kept byte for byte.
fn without_lone_surrogates(raw: &RawValue) -> Box<RawValue> {
    let text = raw.get();
    let bytes = text.as_bytes();
    let unit_at = |at: usize| {
        let hex = text.get(at..at + 6)?.strip_prefix("\\u")?;
        u16::from_str_radix(hex, 16).ok()
    };
    let mut fixed = String::new();
    let (mut copied, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        // In valid JSON a backslash always starts an escape: `\u` and four hex digits, or two bytes.
        let Some(unit) = unit_at(i) else {
            i += 2;
            continue;
        };
        let lone = match unit {
            0xD800..=0xDBFF if unit_at(i + 6).is_some_and(|next| (0xDC00..=0xDFFF).contains(&next)) => {
                i += 12; // A pair: one character.
                continue;
            }
            0xD800..=0xDFFF => true,
            _ => false,
        };
        if lone {
            fixed.push_str(&text[copied..i]);
            fixed.push_str("\\ufffd");
            copied = i + 6;
        }
        i += 6;
    }
    if fixed.is_empty() {
        return raw.to_owned();
    }
    fixed.push_str(&text[copied..]);
    RawValue::from_string(fixed).expect("replacing one escape by another keeps the JSON valid")
}

fn ensure_object(raw: &RawValue, field: &'static str) -> Result<(), PayloadError> {
    if raw.get().trim_start().starts_with('{') { Ok(()) } else { Err(PayloadError::NotAnObject { field }) }
}

impl Change {
    /// The event JSON sent to Redis and, unchanged, to every client.
    pub fn to_event_json(&self) -> String {
        serde_json::to_string(&self.out(Some("event"))).expect("serializing strings and raw JSON cannot fail")
    }

    /// The event JSON without `type` and without its opening `{`: the replay log's append
    /// script puts `{"type":"event","epoch":…,"pos":…,` in front of it.
    pub fn to_log_body_rest(&self) -> String {
        let mut json = serde_json::to_string(&self.out(None)).expect("serializing strings and raw JSON cannot fail");
        json.remove(0);
        json
    }

    /// The state key of the row, `<table>:<id>`, when the row has an `id`.
    pub fn row_key(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct RowId {
            id: Option<serde_json::Value>,
        }
        let id = match serde_json::from_str::<RowId>(self.order.get()).ok()?.id? {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return None,
        };
        Some(format!("{}:{id}", self.table))
    }

    fn out(&self, kind: Option<&'static str>) -> EventOut<'_> {
        EventOut {
            kind,
            id: self.id,
            table: &self.table,
            operation: self.operation,
            order: &self.order,
            old: self.old.as_deref(),
            ts: self.ts.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn change(payload: &str) -> Change {
        match parse_notification(payload).expect("valid payload") {
            Notification::Change(c) => c,
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn full_payload_becomes_event_with_every_field() {
        let c = change(
            r#"{"id":7,"table":"orders","operation":"UPDATE","order":{"id":1,"status":"done"},"old":{"id":1,"status":"new"},"ts":"2026-01-01T00:00:00Z"}"#,
        );
        let event: Value = serde_json::from_str(&c.to_event_json()).unwrap();
        assert_eq!(
            event,
            json!({"type":"event","id":7,"table":"orders","operation":"UPDATE",
                   "order":{"id":1,"status":"done"},"old":{"id":1,"status":"new"},
                   "ts":"2026-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn log_body_and_row_key() {
        let c = change(r#"{"id":7,"table":"orders","operation":"INSERT","order":{"id":12,"s":"x"}}"#);
        assert_eq!(c.to_log_body_rest(), r#""id":7,"table":"orders","operation":"INSERT","order":{"id":12,"s":"x"}}"#);
        assert_eq!(c.row_key().as_deref(), Some("orders:12"));
        let c = change(r#"{"operation":"INSERT","order":{"name":"no id"}}"#);
        assert_eq!(c.row_key(), None);
    }

    #[test]
    fn the_log_frame_is_the_event_with_its_position_in_front() {
        let c = change(r#"{"id":7,"table":"orders","operation":"DELETE","order":{"id":3},"ts":"t"}"#);
        let frame: Value = serde_json::from_str(&crate::log::frame("k3x", 12, &c.to_log_body_rest())).unwrap();
        let mut event: Value = serde_json::from_str(&c.to_event_json()).unwrap();
        event["epoch"] = json!("k3x");
        event["pos"] = json!(12);
        assert_eq!(frame, event);
    }

    #[test]
    fn legacy_two_field_payload_is_accepted() {
        let c = change(r#"{"operation": "DELETE", "order": {"id": 3, "amount": 19.99}}"#);
        assert_eq!(c.operation, Operation::Delete);
        assert_eq!(c.id, None);
        assert_eq!(c.table, "orders");
        let event: Value = serde_json::from_str(&c.to_event_json()).unwrap();
        assert_eq!(event["order"]["amount"], json!(19.99));
        assert!(event.get("old").is_none());
    }

    #[test]
    fn row_bodies_are_forwarded_byte_for_byte() {
        let c = change(r#"{"operation":"INSERT","order":{"amount":10.50,"b":"é"}}"#);
        assert!(c.to_event_json().contains(r#""order":{"amount":10.50,"b":"é"}"#));
    }

    #[test]
    fn lone_surrogate_escapes_in_rows_become_replacement_characters() {
        // Found by the `notification` fuzz target: the event was JSON that serde_json (and so
        // cli-client) could not read.
        let c = change(r#"{"operation":"UPDATE","order":{"a":"\ud83d x","b":"\ude00"},"old":{"c":"\udbff\ud800"}}"#);
        let event: Value = serde_json::from_str(&c.to_event_json()).expect("readable event JSON");
        assert_eq!(event["order"], json!({"a":"\u{fffd} x","b":"\u{fffd}"}));
        assert_eq!(event["old"], json!({"c":"\u{fffd}\u{fffd}"}));
        assert!(serde_json::from_str::<crate::frames::EventFrame>(&c.to_event_json()).is_ok());

        // Pairs, escaped backslashes and other escapes are kept byte for byte.
        let row = r#"{"pair":"\ud83d\ude00","not_an_escape":"\\ud800","nul":"\u0000","q":"\"\\"}"#;
        let c = change(&format!(r#"{{"operation":"INSERT","order":{row}}}"#));
        assert_eq!(c.order.get(), row);
    }

    #[test]
    fn reference_payload_names_the_event() {
        let n = parse_notification(r#"{"id":42,"table":"orders","operation":"INSERT","ref":true}"#);
        assert!(matches!(n, Ok(Notification::Reference { id: 42 })));
    }

    #[test]
    fn foreign_payloads_are_rejected_with_a_reason() {
        for bad in [
            "not json",
            "{}",
            r#"{"operation":"TRUNCATE","order":{}}"#,
            r#"{"operation":"INSERT"}"#,
            r#"{"operation":"INSERT","order":[1,2]}"#,
            r#"{"operation":"INSERT","order":{},"old":"x"}"#,
            r#"{"operation":"INSERT","ref":true}"#,
        ] {
            let err = parse_notification(bad).expect_err(bad);
            assert!(!err.to_string().is_empty());
        }
    }
}
