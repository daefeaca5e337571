//! What the feed reports: [`FeedItem`]s, one per thing that happened (a connection opened, an
//! event, a snapshot, a resume, a reset, a disconnect, a retry), and the [`DisconnectReason`]
//! a connection ended for, with the wording `view` prints for it.
//!
//! Items describe what happened, not how to show it: rendering stays in `view`.

use std::{fmt, time::Duration};

use protocol::{
    frames::{
        CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_HISTORY_LOST, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG, EventFrame,
        ResetReason, SnapshotRow,
    },
    log::Position,
};

use super::{Protocol, Subscribe};

/// Something that happened on the feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    /// A connection is open.
    Connected {
        /// The URL it was opened to.
        url: String,
        /// The replica that accepted it, from its `hello` frame (none from an older server).
        server_id: Option<String>,
        /// The protocol the connection speaks.
        protocol: Protocol,
        /// The replica's newest position when the connection opened, from its `hello`.
        position: Option<Position>,
    },
    /// A row change.
    Event {
        /// The parsed event.
        frame: EventFrame,
        /// The frame's text exactly as the server sent it.
        raw: String,
    },
    /// The current rows, as of `position`; the events after it follow.
    Snapshot {
        /// The position the rows reflect.
        position: Option<Position>,
        /// One entry per row, as the server sent them.
        rows: Vec<SnapshotRow>,
        /// The frame's text exactly as the server sent it.
        raw: String,
    },
    /// A `subscribe` with `since` took effect: every event after `from` was replayed, live
    /// events follow.
    Resumed {
        /// The position resumed after.
        from: Position,
        /// The replica, when its hello named it.
        server_id: Option<String>,
        /// The URL of the connection.
        url: String,
    },
    /// The server could not serve the position asked for; `then` is what the feed does next.
    Reset {
        /// The position that was refused (none when none was known).
        from: Option<Position>,
        /// Why.
        reason: ResetReason,
        /// The server's explanation.
        message: String,
        /// What the feed asks for now.
        then: Subscribe,
    },
    /// The server did not do what a `subscribe` asked (it refused it, or did not answer): the
    /// connection carries on with what it sends.
    NotResumed {
        /// What was asked for.
        asked: Subscribe,
        /// What went wrong.
        problem: String,
    },
    /// The server folded events into the latest one per row; those follow.
    Conflated {
        /// Last position delivered before folding.
        from: u64,
        /// Last position covered by the folded events.
        to: u64,
        /// How many events were left out.
        folded: u64,
    },
    /// A connection attempt failed, or an open connection ended.
    Disconnected {
        /// The URL of the connection or attempt.
        url: String,
        /// Why.
        reason: DisconnectReason,
    },
    /// The next attempt starts after `delay`.
    Retrying {
        /// How long the feed waits before the attempt.
        delay: Duration,
        /// This attempt's number among the attempts in a row (1 after a success).
        attempt: u32,
        /// The configured limit, if any.
        max_retries: Option<u32>,
        /// The URL the attempt goes to, when there are several to choose from.
        next_url: Option<String>,
    },
}

/// Why a connection ended or never opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The attempt failed: refused, timed out, an HTTP error, a bad handshake.
    ConnectFailed(String),
    /// The server closed the connection with a close frame.
    Closed {
        /// The close code (1005 when the frame had none).
        code: u16,
        /// The server's reason text.
        reason: String,
    },
    /// The connection ended without a close frame.
    Lost,
    /// Reading or writing failed, or the server misbehaved.
    Broken(String),
    /// Nothing arrived for this long, not even an answer to a ping.
    Silent(Duration),
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectFailed(error) => write!(f, "could not connect: {error}"),
            Self::Closed { code, reason } => {
                write!(f, "server closed the connection with {code}")?;
                if let Some(meaning) = close_code_meaning(*code) {
                    write!(f, " ({meaning})")?;
                }
                if !reason.is_empty() {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            Self::Lost => f.write_str("connection lost (no close frame)"),
            Self::Broken(error) => write!(f, "connection error: {error}"),
            Self::Silent(idle) => write!(f, "nothing received for {}s, not even a pong", idle.as_secs()),
        }
    }
}

fn close_code_meaning(code: u16) -> Option<&'static str> {
    match code {
        1000 => Some("normal closure"),
        CLOSE_GOING_AWAY => Some("server going away"),
        CLOSE_TOO_BIG => Some("message too big"),
        1011 => Some("server error"),
        CLOSE_SLOW_CONSUMER => Some("client fell behind"),
        CLOSE_HEARTBEAT_TIMEOUT => Some("heartbeat timeout"),
        CLOSE_HISTORY_LOST => Some("server lost its history"),
        _ => None,
    }
}
