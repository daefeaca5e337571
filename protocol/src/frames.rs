//! WebSocket frames, protocol `orders.v1` (documented in `docs/protocol.md`).
//!
//! A plain connection (no protocol negotiated) receives nothing but event frames, so clients
//! written for the original design, which parse every frame as an event, keep working. A client
//! that negotiates [`SUBPROTOCOL`] also receives `hello`, `pong` and `error` frames.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{event::Operation, log::Position};

/// The protocol name a client offers in `Sec-WebSocket-Protocol` (or `?protocol=`).
pub const SUBPROTOCOL: &str = "orders.v1";
/// The protocol version announced in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Close code: the server is shutting down or restarting; reconnect (to any replica).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: the replica cannot serve the stream right now (Redis unreachable while the log
/// is needed); reconnect and resume.
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
/// Close code: a frame was larger than the hard limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: a text frame was not valid UTF-8.
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// Close code: the client fell behind the live stream and its queue overflowed.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code: the replica lost its Redis history mid-stream (Redis restarted empty);
/// reconnect and take a snapshot.
pub const CLOSE_HISTORY_LOST: u16 = 4010;
/// Close code: the connection's token expired and was not refreshed (an `auth` frame);
/// reconnect with a new token.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4011;
/// Close code: the client did not answer pings.
pub const CLOSE_HEARTBEAT_TIMEOUT: u16 = 4009;

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// First frame on a protocol connection.
    Hello {
        /// Protocol version ([`PROTOCOL_VERSION`]).
        protocol: u32,
        /// The replica that accepted the connection.
        server_id: String,
        /// Largest client frame accepted, in bytes.
        max_frame_bytes: usize,
        /// The newest position on this replica when the connection opened (resume from it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        position: Option<Position>,
    },
    /// A row change.
    Event(EventFrame),
    /// A `subscribe` took effect: every event after `position` follows, none missing, none twice.
    Subscribed {
        /// The subscription (absent for the connection's default one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The last position delivered before live events (the snapshot's, the `since`
        /// position after replay, or the newest at subscribe time).
        position: Option<Position>,
    },
    /// An `unsubscribe` took effect: nothing more is sent for subscription `id`.
    Unsubscribed {
        /// The subscription.
        id: String,
    },
    /// An `ack` was stored: the durable consumer resumes after `position`.
    Acked {
        /// The consumer.
        consumer: String,
        /// The position stored.
        position: Position,
    },
    /// An `auth` frame's token was accepted: the connection's scope is the new token's.
    Authenticated {
        /// When the token expires (Unix seconds); refresh before then.
        exp: u64,
    },
    /// The current rows as of `position` (answer to `subscribe` with `snapshot: true`).
    Snapshot {
        /// The subscription (absent for the connection's default one).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// The position the rows reflect; events after it follow.
        position: Option<Position>,
        /// One entry per row.
        rows: Vec<SnapshotRow>,
    },
    /// The requested `since` cannot be served; take a snapshot (`subscribe` with
    /// `snapshot: true`) and continue from its position.
    Reset {
        /// Why.
        reason: ResetReason,
        /// The newest position now.
        position: Option<Position>,
        /// What happened and what to do.
        message: String,
    },
    /// Redis lost its data and the publisher started a new history that re-offers the old
    /// one's newest events: the connection's place `from` in the old history is `position` in
    /// the new one, and the events after it follow, none missing, none twice. Resume from
    /// positions of the new history from now on; no snapshot is needed.
    Rebased {
        /// The last position seen, in the old history.
        from: Position,
        /// The same place in the new history.
        position: Position,
    },
    /// Conflated delivery: events after `from` up to `to` were folded into the latest event per
    /// row, which follow this frame (in position order).
    Conflated {
        /// Last position delivered before folding.
        from: u64,
        /// Last position covered by the folded events.
        to: u64,
        /// How many events were left out because a later one for the same row replaced them.
        folded: u64,
    },
    /// Answer to a client `ping`.
    Pong {
        /// The `id` the ping carried, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// A client frame was not understood; the connection stays open.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// The subscription the refused frame named, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        /// What was wrong and how to fix it.
        message: String,
    },
}

/// One row of a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRow {
    /// The table the row belongs to.
    pub table: String,
    /// The row.
    pub order: Value,
}

/// Why a resume was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetReason {
    /// `since` is older than the log's retention.
    BeyondRetention,
    /// `since` names another epoch: Redis lost its history (restarted empty) or it is unknown.
    HistoryLost,
}

/// The body of an event frame, as a client reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventFrame {
    /// The history this event belongs to (absent only from a pre-log publisher).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// The event's position in that history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pos: Option<u64>,
    /// Event id (`realtime_events.id`); absent for events from a legacy trigger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// The table the row belongs to.
    pub table: String,
    /// INSERT, UPDATE or DELETE.
    pub operation: Operation,
    /// The row (the deleted row for DELETE).
    pub order: Value,
    /// The previous row, for UPDATE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// When the change was made (database clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
}

/// Machine-readable error codes in `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON.
    InvalidJson,
    /// The frame was JSON but not an object with a known `type`.
    UnknownType,
    /// The frame had a known `type` but wrong fields.
    InvalidFrame,
    /// The frame was larger than `max_frame_bytes`.
    FrameTooLarge,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// A `filter`, `select` or `table` could not be parsed.
    InvalidFilter,
    /// The token does not allow what was asked (a column outside its `select`).
    Forbidden,
    /// A token in an `auth` frame was refused.
    Unauthorized,
    /// `WS_MAX_SUBSCRIPTIONS` or `WS_MAX_FILTERS` would be exceeded.
    LimitExceeded,
    /// The client sent frames faster than `WS_MAX_CLIENT_FRAMES_PER_SECOND`; this one was dropped.
    RateLimited,
    /// `unsubscribe` or `ack` named a subscription or consumer the connection does not hold.
    UnknownSubscription,
}

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// (Re)position a subscription: resume after `since`, or start from a snapshot; with
    /// `filter`, `select` and `table`, only the matching events and columns.
    Subscribe(Subscribe),
    /// Ends subscription `id` (`"default"` names the default one).
    Unsubscribe {
        /// The subscription.
        id: String,
    },
    /// A durable consumer has processed everything up to `position`.
    Ack {
        /// The consumer (as named in `subscribe`); may be left out when the connection has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
        /// The last position processed.
        position: Position,
    },
    /// A new token for this connection (refresh before `exp`).
    Auth {
        /// The JWT.
        token: String,
    },
    /// Application-level ping; answered with `pong` carrying the same `id`.
    Ping {
        /// Echoed back in the `pong`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
}

/// The fields of a `subscribe` frame.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Names the subscription; absent: the connection's default one (the only one before
    /// protocol additions of version 1.1). Another `subscribe` with the same id replaces it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// PostgREST filters (`"status=eq.pending"`), one string or an array, ANDed.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub filter: Vec<String>,
    /// The columns sent (`"id,status"` or an array); the row key `id` always comes along.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "columns")]
    pub select: Option<String>,
    /// Only events of this table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// A durable consumer: the server resumes it after its last `ack`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Resume after this position (events after it are replayed, then live ones follow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Position>,
    /// Send a `snapshot` of the current rows first, then the events after it.
    #[serde(default)]
    pub snapshot: bool,
    /// When this client falls behind, fold missed events into the latest per row
    /// (`conflated` frame) instead of closing the connection.
    #[serde(default)]
    pub conflate: bool,
}

const KNOWN_CLIENT_TYPES: &[&str] = &["ping", "subscribe", "unsubscribe", "ack", "auth"];

/// A string or an array of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Columns as `"a,b"` or `["a","b"]`, kept in the comma form.
fn columns<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(one_or_many(d)?.join(",")))
}

impl ClientFrame {
    /// Parses a client text frame, telling apart bad JSON, unknown types and bad fields.
    ///
    /// # Errors
    /// An `(ErrorCode, message)` pair ready for an `error` frame.
    pub fn parse(text: &str) -> Result<Self, (ErrorCode, String)> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            (
                ErrorCode::InvalidJson,
                format!("frame is not valid JSON ({e}); send a JSON object like {{\"type\":\"ping\"}}"),
            )
        })?;
        let kind = value.get("type").and_then(Value::as_str).map(str::to_owned);
        match kind.as_deref() {
            Some(k) if KNOWN_CLIENT_TYPES.contains(&k) => {
                let frame: Self = serde_json::from_value(value)
                    .map_err(|e| (ErrorCode::InvalidFrame, format!("invalid {k:?} frame: {e}")))?;
                // As in the text form (`Position::parse`): no history has an empty name.
                if let Self::Subscribe(Subscribe { since: Some(since), .. }) = &frame
                    && since.epoch.is_empty()
                {
                    return Err((
                        ErrorCode::InvalidFrame,
                        "invalid \"subscribe\" frame: since.epoch is empty; resume from a position the server sent"
                            .to_owned(),
                    ));
                }
                Ok(frame)
            }
            _ => Err((
                ErrorCode::UnknownType,
                format!(
                    "unknown frame type {}; expected one of {KNOWN_CLIENT_TYPES:?}",
                    kind.map_or_else(|| "(missing \"type\")".to_owned(), |k| format!("{k:?}"))
                ),
            )),
        }
    }
}

impl ServerFrame {
    /// Serializes the frame to its JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_json_from_the_publisher_parses_as_a_server_frame() {
        let text = r#"{"type":"event","id":1,"table":"orders","operation":"INSERT","order":{"id":5}}"#;
        let frame: ServerFrame = serde_json::from_str(text).unwrap();
        let ServerFrame::Event(e) = frame else { panic!("not an event") };
        assert_eq!((e.id, e.operation, e.order), (Some(1), Operation::Insert, json!({"id":5})));
    }

    #[test]
    fn subscribe_frames_parse_with_defaults() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"subscribe","since":{"epoch":"e1","pos":7}}"#).unwrap(),
            ClientFrame::Subscribe(Subscribe {
                since: Some(Position { epoch: "e1".into(), pos: 7 }),
                ..Subscribe::default()
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"subscribe","since":"e1:7"}"#).unwrap_err().0,
            ErrorCode::InvalidFrame
        );
    }

    #[test]
    fn subscribe_since_an_empty_epoch_is_invalid_as_in_the_text_form() {
        // Found by the `client_frame` fuzz target: the JSON form took what `Position::parse` refuses.
        let (code, message) = ClientFrame::parse(r#"{"type":"subscribe","since":{"epoch":"","pos":5}}"#).unwrap_err();
        assert_eq!(code, ErrorCode::InvalidFrame);
        assert!(message.contains("since.epoch is empty"), "{message}");
        assert!(Position::parse(":5").is_err());
    }

    #[test]
    fn client_frames_are_classified() {
        assert_eq!(ClientFrame::parse(r#"{"type":"ping","id":3}"#).unwrap(), ClientFrame::Ping { id: Some(json!(3)) });
        assert_eq!(ClientFrame::parse("nope").unwrap_err().0, ErrorCode::InvalidJson);
        assert_eq!(ClientFrame::parse(r#"{"type":"dance"}"#).unwrap_err().0, ErrorCode::UnknownType);
        assert_eq!(ClientFrame::parse("[1]").unwrap_err().0, ErrorCode::UnknownType);
    }

    #[test]
    fn error_frame_shape_is_stable() {
        let f = ServerFrame::Error { code: ErrorCode::FrameTooLarge, id: None, message: "m".into() };
        assert_eq!(serde_json::to_value(&f).unwrap(), json!({"type":"error","code":"frame_too_large","message":"m"}));
    }
}
