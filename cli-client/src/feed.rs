//! The feed: a WebSocket client for ws-server that reconnects by itself, resumes where it left
//! off, and reports what happened as a sequence of [`FeedItem`]s (connected, event, snapshot,
//! resumed, disconnected, retrying, …).
//!
//! Each connection offers `orders.v1` and falls back to a plain connection for an older server
//! (see [`Protocol`]). Pings from the server are answered by tungstenite as long as the feed is
//! being read. A server that goes silent is noticed: after half of `idle_timeout` without any
//! frame the feed pings it, and after `idle_timeout` it reconnects. Reconnect delays come from
//! the shared [`RetryPolicy`](protocol::retry::RetryPolicy); `max_retries` bounds how many
//! attempts in a row may fail; each attempt after a failure goes to the next of the configured
//! URLs (replicas), round robin.
//!
//! Resuming: the feed remembers the position (`epoch:pos`) of the last event it returned
//! ([`Feed::position`]). Right after each `hello` it sends `subscribe` with `since` that
//! position, so the server replays what was missed; events at or before it are dropped, so
//! nothing is returned twice (see `cursor`). A `--since` start does the same on the first
//! connection, a snapshot start asks for `snapshot: true` instead. When the server cannot serve
//! the position (`reset`), [`OnReset`] decides. A legacy connection (no `orders.v1`) gets no
//! `subscribe`: what happened while disconnected is not replayed there.
//!
//! Submodules, from the outside in:
//!
//! - `config`: [`FeedConfig`], [`Start`] and [`OnReset`]: what the feed is asked to do
//! - `item`: [`FeedItem`] and [`DisconnectReason`]: what the feed reports
//! - `error`: [`FeedError`] and [`reset_explanation`]: why the feed stops for good
//! - `attempt`: one connection attempt, raced against shutdown: an open session or a failure
//! - `reconnect`: after a failure, the backoff delay, the next URL, or giving up
//! - `connect`: the WebSocket handshake itself, `orders.v1` with a legacy fallback (also used
//!   by `check`)
//! - `session`: one open connection: reads frames, sends what is queued, runs the timers
//! - `inbound`: what one text frame from the server is
//! - `resume`: what a session's steps mean for the stream: `Connected`, the `subscribe`, events
//!   and the answers to a `subscribe`
//! - `cursor`: the position to resume from and the dedupe of events, with no socket in sight
//!
//! This file keeps the [`Feed`] itself: its state, and [`Feed::next`], which moves it from one
//! state to the next by calling into the submodules.

mod attempt;
mod config;
mod connect;
mod cursor;
mod error;
mod inbound;
mod item;
mod reconnect;
mod resume;
mod session;

use std::collections::VecDeque;

use protocol::{log::Position, retry::Backoff};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{FeedConfig, OnReset, Params, Start};
pub use connect::Protocol;
pub(crate) use connect::{Dial, handshake};
pub use cursor::Subscribe;
pub use error::{FeedError, reset_explanation};
pub(crate) use inbound::{Inbound, classify};
pub use item::{DisconnectReason, FeedItem};

use cursor::Cursor;
use resume::Flow;
use session::Session;

/// A reconnecting, resuming WebSocket feed. Call [`Feed::next`] in a loop.
#[derive(Debug)]
pub struct Feed {
    config: FeedConfig,
    shutdown: CancellationToken,
    backoff: Backoff,
    state: State,
    pending: VecDeque<FeedItem>,
    /// Attempts made since the last successful handshake.
    failures: u32,
    /// Which URL the next attempt goes to (modulo their number).
    url_index: usize,
    cursor: Cursor,
}

#[derive(Debug)]
enum State {
    Connect,
    Wait { until: Instant },
    Open(Box<Session>),
    GaveUp(DisconnectReason),
    Done,
}

impl Feed {
    /// A feed that connects on the first call to [`Feed::next`] and stops when `shutdown` is
    /// cancelled.
    pub fn new(config: FeedConfig, shutdown: CancellationToken) -> Self {
        let backoff = config.retry.backoff();
        let cursor = Cursor::new(&config.start);
        Self {
            config,
            shutdown,
            backoff,
            state: State::Connect,
            pending: VecDeque::new(),
            failures: 0,
            url_index: 0,
            cursor,
        }
    }

    /// The position to resume from (`--since`): that of the last event or snapshot returned,
    /// or, before any, where the server said the stream started.
    pub fn position(&self) -> Option<&Position> {
        self.cursor.position()
    }

    /// Whether any event or snapshot was returned.
    pub fn seen_any(&self) -> bool {
        self.cursor.seen()
    }

    /// The next thing that happened; `Ok(None)` once shutdown was requested (an open connection
    /// is closed with 1001 first, for at most a second).
    ///
    /// # Errors
    /// [`FeedError::GaveUp`] when `max_retries` attempts in a row failed (after the last
    /// [`FeedItem::Disconnected`] was returned); [`FeedError::InvalidUrl`] when the URL can
    /// never work; [`FeedError::Reset`] when the server cannot resume and [`OnReset::Exit`] is
    /// configured.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future loses no event; the connection stays as it was.
    pub async fn next(&mut self) -> Result<Option<FeedItem>, FeedError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Ok(Some(item));
            }
            match &mut self.state {
                State::Done => return Ok(None),
                State::GaveUp(last) => {
                    let last = last.clone();
                    self.state = State::Done;
                    return Err(FeedError::GaveUp {
                        url: self.config.urls_display(),
                        retries: self.config.max_retries.unwrap_or_default(),
                        last,
                    });
                }
                State::Wait { until } => {
                    let until = *until;
                    self.wait(until).await;
                }
                State::Connect => self.attempt().await?,
                State::Open(session) => {
                    let flow =
                        resume::advance(session, &mut self.cursor, &self.config, &self.shutdown, &mut self.pending)
                            .await;
                    match flow {
                        Flow::Continue => {}
                        Flow::Shutdown => {
                            session.close().await;
                            self.state = State::Done;
                        }
                        Flow::End(reason) => {
                            // The handshake worked, so say so before saying it ended.
                            session.announce(None, None, &mut self.pending);
                            let (url, started) = (session.url.clone(), session.opened);
                            self.cursor.disconnected();
                            self.fail(url, reason, started);
                        }
                        Flow::Stop(err) => {
                            session.close().await;
                            self.state = State::Done;
                            return Err(err);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
