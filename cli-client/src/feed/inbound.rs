//! What one text frame from the server means, decided by its `type` and the negotiated protocol.
//!
//! Forward compatible on purpose: a frame type this client does not know is skipped, not an
//! error, so a newer server can add frames without breaking older clients. Events are parsed
//! leniently too: a legacy server's `{"operation":…,"order":…}` (no `type`, no `table`) is an
//! event on the `orders` table.

use protocol::{
    event::LEGACY_TABLE,
    frames::{EventFrame, ResetReason, ServerFrame, SnapshotRow},
    log::Position,
};
use serde_json::Value;

use super::Protocol;

/// A classified text frame.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Inbound {
    /// The server's greeting.
    Hello {
        /// The replica that accepted the connection, when it said.
        server_id: Option<String>,
        /// The newest position on that replica when the connection opened, when it said.
        position: Option<Position>,
    },
    /// A row change.
    Event(EventFrame),
    /// A `subscribe` took effect: every event after `position` follows.
    Subscribed {
        /// The last position delivered before live events.
        position: Option<Position>,
    },
    /// The current rows as of `position`.
    Snapshot {
        /// The position the rows reflect.
        position: Option<Position>,
        /// The rows.
        rows: Vec<SnapshotRow>,
    },
    /// The requested `since` cannot be served.
    Reset {
        /// Why.
        reason: ResetReason,
        /// The newest position now.
        position: Option<Position>,
        /// The server's explanation.
        message: String,
    },
    /// Redis lost its data; the new history continues the old one from `position` (`from` in
    /// the old history).
    Rebased {
        /// The last position seen, in the old history.
        from: Position,
        /// The same place in the new history.
        position: Position,
    },
    /// Events were folded into the latest per row.
    Conflated {
        /// Last position delivered before folding.
        from: u64,
        /// Last position covered by the folded events.
        to: u64,
        /// How many events were left out.
        folded: u64,
    },
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
        // Lenient: a hello that lacks a field still says who answered.
        "hello" => Inbound::Hello {
            server_id: text_field(&value, "server_id"),
            position: value.get("position").and_then(|p| serde_json::from_value(p.clone()).ok()),
        },
        "error" => Inbound::ServerError {
            code: text_field(&value, "code").unwrap_or_default(),
            message: text_field(&value, "message").unwrap_or_default(),
        },
        "subscribed" | "snapshot" | "reset" | "rebased" | "conflated" => match serde_json::from_value(value) {
            Ok(ServerFrame::Subscribed { position, .. }) => Inbound::Subscribed { position },
            Ok(ServerFrame::Snapshot { position, rows, .. }) => Inbound::Snapshot { position, rows },
            Ok(ServerFrame::Reset { reason, position, message }) => Inbound::Reset { reason, position, message },
            Ok(ServerFrame::Conflated { from, to, folded }) => Inbound::Conflated { from, to, folded },
            Ok(ServerFrame::Rebased { from, position }) => Inbound::Rebased { from, position },
            Ok(other) => Inbound::Malformed { problem: format!("unexpected frame {other:?}") },
            Err(e) => Inbound::Malformed { problem: format!("invalid {kind:?} frame: {e}") },
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

    fn pos(epoch: &str, pos: u64) -> Option<Position> {
        Some(Position { epoch: epoch.into(), pos })
    }

    #[test]
    fn hello_carries_the_server_id_and_position() {
        let hello = r#"{"type":"hello","protocol":1,"server_id":"ws-1","max_frame_bytes":65536}"#;
        assert_eq!(
            classify(hello, Protocol::OrdersV1),
            Inbound::Hello { server_id: Some("ws-1".into()), position: None }
        );
        let hello = r#"{"type":"hello","protocol":1,"server_id":"ws-1","max_frame_bytes":65536,"position":{"epoch":"e1","pos":42}}"#;
        assert_eq!(
            classify(hello, Protocol::OrdersV1),
            Inbound::Hello { server_id: Some("ws-1".into()), position: pos("e1", 42) }
        );
    }

    #[test]
    fn event_frames_parse_with_every_field() {
        let text = r#"{"type":"event","epoch":"e1","pos":12,"id":7,"table":"orders","operation":"UPDATE","order":{"id":1,"status":"completed"},"old":{"id":1,"status":"pending"},"ts":"2026-11-26T17:39:19.123456+00:00"}"#;
        let Inbound::Event(e) = classify(text, Protocol::OrdersV1) else { panic!("not an event") };
        assert_eq!((e.id, e.operation), (Some(7), Operation::Update));
        assert_eq!((e.epoch.as_deref(), e.pos), (Some("e1"), Some(12)));
        assert_eq!(e.old, Some(json!({"id":1,"status":"pending"})));
        assert_eq!(e.ts.as_deref(), Some("2026-11-26T17:39:19.123456+00:00"));
    }

    #[test]
    fn resume_frames_are_understood() {
        assert_eq!(
            classify(r#"{"type":"subscribed","position":{"epoch":"e1","pos":9}}"#, Protocol::OrdersV1),
            Inbound::Subscribed { position: pos("e1", 9) }
        );
        let snapshot =
            r#"{"type":"snapshot","position":{"epoch":"e1","pos":9},"rows":[{"table":"orders","order":{"id":1}}]}"#;
        let Inbound::Snapshot { position, rows } = classify(snapshot, Protocol::OrdersV1) else { panic!("snapshot") };
        assert_eq!((position, rows.len(), &rows[0].order), (pos("e1", 9), 1, &json!({"id":1})));
        let reset =
            r#"{"type":"reset","reason":"beyond_retention","position":{"epoch":"e1","pos":900},"message":"too old"}"#;
        assert_eq!(
            classify(reset, Protocol::OrdersV1),
            Inbound::Reset {
                reason: ResetReason::BeyondRetention,
                position: pos("e1", 900),
                message: "too old".into()
            }
        );
        assert_eq!(
            classify(r#"{"type":"conflated","from":3,"to":9,"folded":4}"#, Protocol::OrdersV1),
            Inbound::Conflated { from: 3, to: 9, folded: 4 }
        );
        assert!(matches!(
            classify(r#"{"type":"reset","reason":"bored"}"#, Protocol::OrdersV1),
            Inbound::Malformed { .. }
        ));
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
