//! The feed: a WebSocket client for ws-server that reconnects by itself, resumes where it left
//! off, and reports what happened as a sequence of [`FeedItem`]s (connected, event, snapshot,
//! resumed, disconnected, retrying, …).
//!
//! Each connection offers `orders.v1` and falls back to a plain connection for an older server
//! (see [`Protocol`]). Pings from the server are answered by tungstenite as long as the feed is
//! being read. A server that goes silent is noticed: after half of `idle_timeout` without any
//! frame the feed pings it, and after `idle_timeout` it reconnects. Reconnect delays come from
//! the shared [`RetryPolicy`]; `max_retries` bounds how many attempts in a row may fail; each
//! attempt after a failure goes to the next of the configured URLs (replicas), round robin.
//!
//! Resuming: the feed remembers the position (`epoch:pos`) of the last event it returned
//! ([`Feed::position`]). Right after each `hello` it sends `subscribe` with `since` that
//! position, so the server replays what was missed; events at or before it are dropped, so
//! nothing is returned twice (see `cursor`). A `--since` start does the same on the first
//! connection, a snapshot start asks for `snapshot: true` instead. When the server cannot serve
//! the position (`reset`), [`OnReset`] decides. A legacy connection (no `orders.v1`) gets no
//! `subscribe`: what happened while disconnected is not replayed there.

mod connect;
mod cursor;
mod inbound;
mod session;

use std::{collections::VecDeque, fmt, time::Duration};

use protocol::{
    env::redact_url,
    frames::{
        CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_HISTORY_LOST, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG, EventFrame,
        ResetReason, SnapshotRow,
    },
    log::Position,
    retry::{Backoff, RetryPolicy},
};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

pub use connect::Protocol;
pub(crate) use connect::handshake;
pub use cursor::Subscribe;
pub(crate) use inbound::{Inbound, classify};

use cursor::{AfterReset, Cursor, Fate};
use session::{Session, Step};

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
    /// Stop with [`FeedError::Reset`].
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
    /// The server could not serve the position asked for and [`OnReset::Exit`] was configured.
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

/// What handling one step of an open session leads to.
enum Flow {
    Continue,
    End(DisconnectReason),
    Stop(FeedError),
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
                    tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => self.state = State::Done,
                        () = sleep_until(*until) => self.state = State::Connect,
                    }
                }
                State::Connect => {
                    let Some(url) = self.config.urls.get(self.url_index % self.config.urls.len().max(1)).cloned()
                    else {
                        self.state = State::Done;
                        return Err(FeedError::InvalidUrl {
                            url: String::new(),
                            reason: "no ws:// URL to connect to".to_owned(),
                        });
                    };
                    let started = Instant::now();
                    let attempt = tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => {
                            self.state = State::Done;
                            continue;
                        }
                        attempt = handshake(&url, self.config.connect_timeout) => attempt,
                    };
                    match attempt {
                        Ok((ws, protocol)) => {
                            self.failures = 0;
                            let mut session = Session::new(ws, protocol, url);
                            if protocol == Protocol::Legacy {
                                // No hello will come, and no subscribe can be sent: the
                                // connection is all there is to report, and what it cannot do.
                                session.announce(None, None, &mut self.pending);
                                if let Some(asked) = self.cursor.opened(None) {
                                    let problem = "older server without orders.v1".to_owned();
                                    self.pending.push_back(FeedItem::NotResumed { asked, problem });
                                    self.cursor.give_up_waiting(&mut self.pending);
                                }
                            }
                            self.state = State::Open(Box::new(session));
                        }
                        Err(err) if err.is_fatal() => {
                            self.state = State::Done;
                            return Err(FeedError::InvalidUrl { url: redact_url(&url), reason: err.to_string() });
                        }
                        Err(err) => self.fail(url, DisconnectReason::ConnectFailed(err.to_string()), started),
                    }
                }
                State::Open(session) => {
                    let flow = match session.step(&self.config, &self.shutdown).await {
                        Step::Continue => Flow::Continue,
                        Step::Shutdown => {
                            session.close().await;
                            self.state = State::Done;
                            continue;
                        }
                        Step::Ended(reason) => Flow::End(reason),
                        Step::HelloTimeout => {
                            // A server that speaks orders.v1 but sent no hello yet: report anyway.
                            opened(session, &mut self.cursor, &self.config, None, None, &mut self.pending);
                            Flow::Continue
                        }
                        Step::AnswerTimeout => {
                            let problem = format!("no answer within {}s", self.config.answer_timeout.as_secs());
                            not_resumed(&mut self.cursor, problem, &mut self.pending);
                            Flow::Continue
                        }
                        Step::Frame(inbound, raw) => {
                            frame(session, &mut self.cursor, &self.config, inbound, raw, &mut self.pending)
                        }
                    };
                    match flow {
                        Flow::Continue => {}
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

    /// Reports `reason` and schedules the next attempt (to the next URL), or gives up.
    fn fail(&mut self, url: String, reason: DisconnectReason, session_started: Instant) {
        self.pending.push_back(FeedItem::Disconnected { url, reason: reason.clone() });
        if self.config.max_retries.is_some_and(|max| self.failures >= max) {
            self.state = State::GaveUp(reason);
            return;
        }
        self.failures += 1;
        self.url_index = (self.url_index + 1) % self.config.urls.len().max(1);
        let delay = self.backoff.next_delay(session_started.into_std());
        let next_url = (self.config.urls.len() > 1).then(|| self.config.urls[self.url_index].clone());
        self.pending.push_back(FeedItem::Retrying {
            delay,
            attempt: self.failures,
            max_retries: self.config.max_retries,
            next_url,
        });
        self.state = State::Wait { until: Instant::now() + delay };
    }
}

/// The connection is known to be open (`hello`, or a protocol server that sent none in time):
/// report it, and send the `subscribe` that puts the stream where the cursor wants it.
fn opened(
    session: &mut Session,
    cursor: &mut Cursor,
    config: &FeedConfig,
    server_id: Option<String>,
    position: Option<Position>,
    pending: &mut VecDeque<FeedItem>,
) {
    if session.announced() {
        tracing::debug!(?server_id, "late hello ignored");
        return;
    }
    session.announce(server_id, position.clone(), pending);
    if let Some(subscribe) = cursor.opened(position) {
        send(session, config, &subscribe);
    }
}

/// The `subscribe` in flight will not be answered: say so, then carry on with what was held.
fn not_resumed(cursor: &mut Cursor, problem: String, pending: &mut VecDeque<FeedItem>) {
    if let Some(asked) = cursor.awaiting().cloned() {
        pending.push_back(FeedItem::NotResumed { asked, problem });
    }
    cursor.give_up_waiting(pending);
}

fn send(session: &mut Session, config: &FeedConfig, subscribe: &Subscribe) {
    session.queue(&subscribe.frame());
    session.answer_deadline = Some(Instant::now() + config.answer_timeout);
}

/// What one text frame does to the stream.
fn frame(
    session: &mut Session,
    cursor: &mut Cursor,
    config: &FeedConfig,
    inbound: Inbound,
    raw: String,
    pending: &mut VecDeque<FeedItem>,
) -> Flow {
    match inbound {
        Inbound::Hello { server_id, position } => opened(session, cursor, config, server_id, position, pending),
        Inbound::Event(event) => {
            if !session.announced() && session.protocol == Protocol::OrdersV1 {
                opened(session, cursor, config, None, None, pending);
            }
            if cursor.event(event, raw, pending) == Fate::Delivered && cursor.awaiting().is_some() {
                // The replay is making progress: keep waiting for its end.
                session.answer_deadline = Some(Instant::now() + config.answer_timeout);
            }
        }
        Inbound::Subscribed { position } => {
            session.answer_deadline = None;
            if let Some(Subscribe::Since(from)) = cursor.subscribed(position, pending) {
                pending.push_back(FeedItem::Resumed {
                    from,
                    server_id: session.server_id().map(str::to_owned),
                    url: session.url.clone(),
                });
            }
        }
        Inbound::Snapshot { position, rows } => {
            cursor.snapshot(position, rows, raw, pending);
            if cursor.awaiting().is_none() {
                session.answer_deadline = None;
            }
        }
        Inbound::Reset { reason, position, message } => {
            session.answer_deadline = None;
            session.resets += 1;
            if session.resets > 3 {
                return Flow::End(DisconnectReason::Broken(format!(
                    "the server refused {} positions in a row ({message})",
                    session.resets
                )));
            }
            let from = cursor.position().cloned();
            match cursor.reset(config.on_reset, position) {
                AfterReset::Exit => return Flow::Stop(FeedError::Reset { from, reason, message }),
                AfterReset::Subscribe(then) => {
                    send(session, config, &then);
                    pending.push_back(FeedItem::Reset { from, reason, message, then });
                }
            }
        }
        Inbound::Conflated { from, to, folded } => pending.push_back(FeedItem::Conflated { from, to, folded }),
        Inbound::ServerError { code, message } => {
            if cursor.awaiting().is_some() {
                // The one frame this client sends is `subscribe`: the error is about it.
                session.answer_deadline = None;
                not_resumed(cursor, format!("{code}: {message}"), pending);
            } else {
                tracing::warn!(code, message, "server reported an error");
            }
        }
        Inbound::Skip { kind } => tracing::debug!(kind, "frame skipped"),
        Inbound::Malformed { problem } => tracing::warn!(problem, frame = raw, "unreadable frame skipped"),
    }
    Flow::Continue
}

#[cfg(test)]
mod tests;
