//! What a feed is asked to do: which URLs it connects to, where its stream starts, what a
//! `reset` leads to, and how long it waits for what. Plain data with defaults; `args` builds it
//! from the command line, and the rest of `feed` only reads it.

use std::time::Duration;

use protocol::{env::redact_url, log::Position, retry::RetryPolicy};

/// Where a feed starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Start {
    /// Live events from the moment the first connection opens.
    #[default]
    Live,
    /// Every event after this position, then live ones.
    Since(Position),
    /// A snapshot of the current rows, then every event after it.
    Snapshot,
}

/// What to do when the server cannot serve the position asked for (`reset`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnReset {
    /// Take a fresh snapshot and continue after it.
    #[default]
    Snapshot,
    /// Continue with live events from now; what happened in between is not shown.
    Live,
    /// Stop with [`FeedError::Reset`](super::FeedError::Reset).
    Exit,
}

/// How the feed connects, where it starts, and when it gives up.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// ws-server WebSocket endpoints (`ws://…`), tried in turn: the first, then the next one
    /// after each failure.
    pub urls: Vec<String>,
    /// Reconnect delays.
    pub retry: RetryPolicy,
    /// Give up after this many reconnect attempts in a row fail; `None` retries forever.
    /// `Some(0)` gives up as soon as a connection fails or drops.
    pub max_retries: Option<u32>,
    /// Deadline for TCP connect plus WebSocket handshake.
    pub connect_timeout: Duration,
    /// Reconnect when nothing at all (no frame, no ping, no pong) arrives for this long.
    pub idle_timeout: Duration,
    /// How long to wait for the `hello` frame before reporting the connection without it.
    pub hello_timeout: Duration,
    /// How long a `subscribe` may go without an answer (and without replayed events) before
    /// the feed carries on without it.
    pub answer_timeout: Duration,
    /// Where the first connection starts.
    pub start: Start,
    /// What a `reset` leads to.
    pub on_reset: OnReset,
}

impl FeedConfig {
    /// Defaults for `urls`: the shared retry policy, retry forever, 10 s connect timeout, 60 s
    /// idle timeout, 2 s hello timeout, 15 s answer timeout, live start, snapshot on reset.
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            retry: RetryPolicy::default(),
            max_retries: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(15),
            start: Start::Live,
            on_reset: OnReset::Snapshot,
        }
    }

    /// The URLs, passwords redacted, comma-separated.
    pub fn urls_display(&self) -> String {
        self.urls.iter().map(|url| redact_url(url)).collect::<Vec<_>>().join(", ")
    }
}
