//! Why the feed stops for good ([`FeedError`]), and the one sentence that explains a `reset`
//! ([`reset_explanation`]), shared by the error and by `view`'s status line for a
//! [`FeedItem::Reset`](super::FeedItem::Reset) so both say the same thing.

use protocol::{frames::ResetReason, log::Position};

use super::DisconnectReason;

/// `cannot resume from e1:5 (beyond_retention): <why>`: the server's explanation (without a
/// repeat of the `cannot resume from …:` it may start with), or a stock one when it gave none.
pub fn reset_explanation(from: Option<&Position>, reason: ResetReason, message: &str) -> String {
    let from = from.map_or_else(|| "the requested position".to_owned(), ToString::to_string);
    let (code, stock) = match reason {
        ResetReason::BeyondRetention => ("beyond_retention", "it is older than the history the server keeps"),
        ResetReason::HistoryLost => {
            ("history_lost", "the server's history was lost, or the position belongs to another history")
        }
    };
    let message = message.trim();
    let why = message.strip_prefix(&format!("cannot resume from {from}:")).unwrap_or(message).trim();
    let why = if why.is_empty() { stock } else { why };
    format!("cannot resume from {from} ({code}): {why}")
}

/// Why the feed stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The URL can never work.
    #[error("cannot connect to {url}: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server refused what was asked for (a filter, select, table, consumer or token),
    /// or its certificate was refused: the settings must change.
    #[error("{url}: {reason}")]
    Refused {
        /// The URL, password redacted.
        url: String,
        /// What was refused, and what to change.
        reason: String,
    },
    /// `max_retries` attempts in a row failed.
    #[error("gave up on {url} after {retries} {}; last error: {last}", if *retries == 1 { "retry" } else { "retries" })]
    GaveUp {
        /// The URLs, passwords redacted.
        url: String,
        /// The limit that was reached.
        retries: u32,
        /// The last failure.
        last: DisconnectReason,
    },
    /// The server could not serve the position asked for and
    /// [`OnReset::Exit`](super::OnReset::Exit) was configured.
    #[error("{}", reset_explanation(from.as_ref(), *reason, message))]
    Reset {
        /// The position that was refused.
        from: Option<Position>,
        /// Why.
        reason: ResetReason,
        /// The server's explanation.
        message: String,
    },
}
