//! What one text frame from the server means, decided by its `type` and the negotiated protocol.
//!
//! Forward compatible on purpose: a frame type this client does not know is skipped, not an
//! error, so a newer server can add frames without breaking older clients. Events are parsed
//! leniently too: a legacy server's `{"operation":…,"order":…}` (no `type`, no `table`) is an
//! event on the `orders` table.

use protocol::{event::LEGACY_TABLE, frames::EventFrame};
use serde_json::Value;

use super::Protocol;

/// A classified text frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inbound {
    /// The server's greeting.
    Hello {
        /// The replica that accepted the connection, when it said.
        server_id: Option<String>,
    },
    /// A row change.
    Event(EventFrame),
    /// The server rejected something this client sent.
    ServerError {
        /// The machine-readable code.
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// Nothing to act on: a `pong`, or a frame type this client does not know.
    Skip {
        /// The frame's `type`.
        kind: String,
    },
    /// Not a frame this client can read (bad JSON, or a known type with wrong fields).
    Malformed {
        /// What is wrong.
        problem: String,
    },
}

/// Classifies one text frame received on a connection speaking `protocol`.
pub(crate) fn classify(text: &str, protocol: Protocol) -> Inbound {
    let value: Value = match serde_json::from_str(text) {
        Ok(value) => value,
        Err(e) => return Inbound::Malformed { problem: format!("not JSON: {e}") },
    };
    if !value.is_object() {
        return Inbound::Malformed { problem: "not a JSON object".to_owned() };
    }
    if protocol == Protocol::Legacy {
        // An older server sends nothing but events, some without a `type`.
        return event(value);
    }
    let kind = value.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    match kind.as_str() {
        "event" => event(value),
        "hello" => Inbound::Hello { server_id: text_field(&value, "server_id") },
        "error" => Inbound::ServerError {
            code: text_field(&value, "code").unwrap_or_default(),
            message: text_field(&value, "message").unwrap_or_default(),
        },
        _ => Inbound::Skip { kind },
    }
}

fn event(mut value: Value) -> Inbound {
    if let Some(fields) = value.as_object_mut() {
        fields.entry("table").or_insert_with(|| LEGACY_TABLE.into());
    }
    match serde_json::from_value(value) {
        Ok(frame) => Inbound::Event(frame),
        Err(e) => Inbound::Malformed { problem: format!("invalid event frame: {e}") },
    }
}

fn text_field(value: &Value, field: &str) -> Option<String> {
    value.get(field).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::event::Operation;
    use serde_json::json;

    #[test]
    fn hello_carries_the_server_id() {
        let hello = r#"{"type":"hello","protocol":1,"server_id":"ws-1","max_frame_bytes":65536}"#;
        assert_eq!(classify(hello, Protocol::OrdersV1), Inbound::Hello { server_id: Some("ws-1".into()) });
    }

    #[test]
    fn event_frames_parse_with_every_field() {
        let text = r#"{"type":"event","id":7,"table":"orders","operation":"UPDATE","order":{"id":1,"status":"completed"},"old":{"id":1,"status":"pending"},"ts":"2026-11-26T17:39:19.123456+00:00"}"#;
        let Inbound::Event(e) = classify(text, Protocol::OrdersV1) else { panic!("not an event") };
        assert_eq!((e.id, e.operation), (Some(7), Operation::Update));
        assert_eq!(e.old, Some(json!({"id":1,"status":"pending"})));
        assert_eq!(e.ts.as_deref(), Some("2026-11-26T17:39:19.123456+00:00"));
    }

    #[test]
    fn unknown_frame_types_are_skipped_not_errors() {
        let text = r#"{"type":"snapshot_begin","position":"12-0"}"#;
        assert_eq!(classify(text, Protocol::OrdersV1), Inbound::Skip { kind: "snapshot_begin".into() });
        assert_eq!(classify(r#"{"type":"pong"}"#, Protocol::OrdersV1), Inbound::Skip { kind: "pong".into() });
    }

    #[test]
    fn legacy_connections_read_every_frame_as_an_event() {
        let text = r#"{"operation":"DELETE","order":{"id":3,"amount":19.99}}"#;
        let Inbound::Event(e) = classify(text, Protocol::Legacy) else { panic!("not an event") };
        assert_eq!((e.operation, e.table.as_str(), e.id), (Operation::Delete, "orders", None));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for text in ["nope", "[1,2]", r#"{"type":"event","operation":"TRUNCATE","order":{}}"#] {
            assert!(matches!(classify(text, Protocol::OrdersV1), Inbound::Malformed { .. }), "{text}");
        }
        assert!(matches!(classify(r#"{"hello":1}"#, Protocol::Legacy), Inbound::Malformed { .. }));
    }

    #[test]
    fn error_frames_are_surfaced() {
        let text = r#"{"type":"error","code":"invalid_json","message":"frame is not valid JSON"}"#;
        assert_eq!(
            classify(text, Protocol::OrdersV1),
            Inbound::ServerError { code: "invalid_json".into(), message: "frame is not valid JSON".into() }
        );
    }
}
