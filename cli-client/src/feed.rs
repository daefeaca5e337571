//! The feed: a WebSocket client for ws-server that reconnects by itself and reports what
//! happened as a sequence of [`FeedItem`]s (connected, event, disconnected, retrying).
//!
//! Each connection offers `orders.v1` and falls back to a plain connection for an older server
//! (see [`Protocol`]). Pings from the server are answered by tungstenite as long as the feed is
//! being read. A server that goes silent is noticed: after half of `idle_timeout` without any
//! frame the feed pings it, and after `idle_timeout` it reconnects. Reconnect delays come from
//! the shared [`RetryPolicy`]; `max_retries` bounds how many attempts in a row may fail.
//!
//! What a disconnect loses: events committed while no connection is open are not replayed,
//! because the feed does not yet ask to resume. It tracks the last event id it delivered
//! ([`Feed::last_event_id`]) so that resuming (`since`) and subscription filters can be sent
//! right after each handshake, in one place, when the protocol offers them.

mod connect;
mod inbound;
mod session;

use std::{collections::VecDeque, fmt, time::Duration};

use protocol::{
    env::redact_url,
    frames::{CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG, EventFrame},
    retry::{Backoff, RetryPolicy},
};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

pub use connect::Protocol;
pub(crate) use connect::handshake;
pub(crate) use inbound::{Inbound, classify};

use session::{Session, Step};

/// How the feed connects and when it gives up.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// ws-server's WebSocket endpoint (`ws://…`).
    pub url: String,
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
}

impl FeedConfig {
    /// Defaults for `url`: the shared retry policy, retry forever, 10 s connect timeout, 60 s
    /// idle timeout, 2 s hello timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            retry: RetryPolicy::default(),
            max_retries: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(2),
        }
    }
}

/// Something that happened on the feed.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    /// A connection is open.
    Connected {
        /// The replica that accepted it, from its `hello` frame (none from an older server).
        server_id: Option<String>,
        /// The protocol the connection speaks.
        protocol: Protocol,
    },
    /// A row change.
    Event {
        /// The parsed event.
        frame: EventFrame,
        /// The frame's text exactly as the server sent it.
        raw: String,
    },
    /// A connection attempt failed, or an open connection ended.
    Disconnected {
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
    /// Reading or writing failed.
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
        _ => None,
    }
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
    /// `max_retries` attempts in a row failed.
    #[error("gave up on {url} after {retries} {}; last error: {last}", if *retries == 1 { "retry" } else { "retries" })]
    GaveUp {
        /// The URL, password redacted.
        url: String,
        /// The limit that was reached.
        retries: u32,
        /// The last failure.
        last: DisconnectReason,
    },
}

/// A reconnecting WebSocket feed. Call [`Feed::next`] in a loop.
#[derive(Debug)]
pub struct Feed {
    config: FeedConfig,
    shutdown: CancellationToken,
    backoff: Backoff,
    state: State,
    pending: VecDeque<FeedItem>,
    /// Attempts made since the last successful handshake.
    failures: u32,
    last_event_id: Option<i64>,
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
        Self {
            config,
            shutdown,
            backoff,
            state: State::Connect,
            pending: VecDeque::new(),
            failures: 0,
            last_event_id: None,
        }
    }

    /// The id of the last event returned, if any carried one: the position to resume from.
    pub fn last_event_id(&self) -> Option<i64> {
        self.last_event_id
    }

    /// The next thing that happened; `Ok(None)` once shutdown was requested (an open connection
    /// is closed with 1001 first, for at most a second).
    ///
    /// # Errors
    /// [`FeedError::GaveUp`] when `max_retries` attempts in a row failed (after the last
    /// [`FeedItem::Disconnected`] was returned); [`FeedError::InvalidUrl`] when the URL can
    /// never work.
    ///
    /// # Cancel safety
    /// Cancel-safe: dropping the future loses no event; the connection stays as it was.
    pub async fn next(&mut self) -> Result<Option<FeedItem>, FeedError> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                if let FeedItem::Event { frame: EventFrame { id: Some(id), .. }, .. } = &item {
                    self.last_event_id = Some(*id);
                }
                return Ok(Some(item));
            }
            match &mut self.state {
                State::Done => return Ok(None),
                State::GaveUp(last) => {
                    let last = last.clone();
                    self.state = State::Done;
                    return Err(FeedError::GaveUp {
                        url: redact_url(&self.config.url),
                        retries: self.config.max_retries.unwrap_or_default(),
                        last,
                    });
                }
                State::Wait { until } => {
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => self.state = State::Done,
                        () = sleep_until(*until) => self.state = State::Connect,
                    }
                }
                State::Connect => {
                    let started = Instant::now();
                    let attempt = tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => {
                            self.state = State::Done;
                            continue;
                        }
                        attempt = handshake(&self.config.url, self.config.connect_timeout) => attempt,
                    };
                    match attempt {
                        Ok((ws, protocol)) => {
                            self.failures = 0;
                            let mut session = Session::new(ws, protocol);
                            if protocol == Protocol::Legacy {
                                // No hello will come: the connection is all there is to report.
                                session.announce(None, &mut self.pending);
                            }
                            self.state = State::Open(Box::new(session));
                        }
                        Err(err) if err.is_fatal() => {
                            self.state = State::Done;
                            return Err(FeedError::InvalidUrl {
                                url: redact_url(&self.config.url),
                                reason: err.to_string(),
                            });
                        }
                        Err(err) => self.fail(DisconnectReason::ConnectFailed(err.to_string()), started),
                    }
                }
                State::Open(session) => match session.step(&self.config, &self.shutdown, &mut self.pending).await {
                    Step::Continue => {}
                    Step::Shutdown => {
                        session.close().await;
                        self.state = State::Done;
                    }
                    Step::Ended(reason) => {
                        // The handshake worked, so say so before saying it ended.
                        session.announce(None, &mut self.pending);
                        let started = session.opened;
                        self.fail(reason, started);
                    }
                },
            }
        }
    }

    /// Reports `reason` and schedules the next attempt, or gives up.
    fn fail(&mut self, reason: DisconnectReason, session_started: Instant) {
        self.pending.push_back(FeedItem::Disconnected { reason: reason.clone() });
        if self.config.max_retries.is_some_and(|max| self.failures >= max) {
            self.state = State::GaveUp(reason);
            return;
        }
        self.failures += 1;
        let delay = self.backoff.next_delay(session_started.into_std());
        self.pending.push_back(FeedItem::Retrying {
            delay,
            attempt: self.failures,
            max_retries: self.config.max_retries,
        });
        self.state = State::Wait { until: Instant::now() + delay };
    }
}

#[cfg(test)]
mod tests;
