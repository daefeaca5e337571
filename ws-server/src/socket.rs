//! One WebSocket connection: forward hub events, answer client frames, keep the peer alive,
//! and close with a code that tells the client what to do next.
//!
//! Where the connection stands in the history (resume, dedupe, gap filling) is the `stream`
//! submodule's; `snapshot` serves the state at a position; `conflate` folds a slow client's
//! backlog to the latest event per row; `send` writes one frame with a deadline, watching the
//! queue while the socket is blocked; `read_gate` keeps the loop from polling the socket's read
//! side when it did not wake.
//!
//! | close | when | client should |
//! |---|---|---|
//! | 1001 | the replica shuts down | reconnect (any replica) and resume |
//! | 1007 | a client text frame is not valid UTF-8 | send UTF-8 JSON |
//! | 1009 | a client frame exceeded the hard size limit | send smaller frames |
//! | 1013 | Redis is unreachable while a resume, snapshot or catch-up needs the log | reconnect and resume |
//! | 4008 | more than `WS_QUEUE_CAPACITY` events or `WS_QUEUE_BYTES` bytes wait for the client (default policy) | reconnect and resume |
//! | 4009 | no frame or pong for two heartbeat intervals | reconnect and resume |
//! | 4010 | a plain connection's `?since=` cannot be served | reconnect without `since` |
//!
//! **Slow consumers.** A live send watches the connection's queue in the hub while the socket
//! is blocked, so a client that stopped reading is noticed as soon as its queue passes a bound,
//! not when `WS_SEND_TIMEOUT` runs out. The close frame is then queued behind the frame being
//! written: a client that reads again gets that frame, then the 4008 close. Only one frame is
//! ever in the socket's write buffer, so the hub's bound is what bounds memory. Sends from the
//! replay log (resume, gap fill, snapshot, conflation) are paced by the socket instead, and
//! the queue bound does not apply to them.
//!
//! A client whose socket accepts nothing for `WS_SEND_TIMEOUT` while its queue stays within
//! the bounds (or during a replay) is dropped without a close frame: none could reach it.

mod acks;
mod conflate;
mod read_gate;
mod send;
mod snapshot;
mod stream;
mod subs;

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::Poll,
};

use protocol::{
    frames::{
        CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_INVALID_PAYLOAD, CLOSE_SLOW_CONSUMER, CLOSE_TOKEN_EXPIRED,
        CLOSE_TOO_BIG, CLOSE_TRY_AGAIN_LATER, ClientFrame, ErrorCode, PROTOCOL_VERSION, ServerFrame,
    },
    log::Position,
};
use tokio::{
    sync::OwnedSemaphorePermit,
    time::{Instant, Interval, Sleep},
};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes, error::CapacityError, protocol::CloseFrame};
use tokio_util::{sync::CancellationToken, task::task_tracker::TaskTrackerToken};
use tracing::{debug, info, warn};

use crate::{
    AppState, consumers,
    hub::{Cursor, Feed, Item, Lag, express::Lane},
    view::{Scope, View},
};
use read_gate::ReadGate;
use send::Sender;
pub(crate) use subs::Sub;

/// What a connection writes frames to and reads client frames from: a WebSocket, or an SSE
/// stream (which reads nothing; `sse`).
pub(crate) trait Duplex:
    futures_util::Sink<Message, Error = tungstenite::Error>
    + futures_util::Stream<Item = Result<Message, tungstenite::Error>>
    + Send
{
}
impl<T> Duplex for T where
    T: futures_util::Sink<Message, Error = tungstenite::Error>
        + futures_util::Stream<Item = Result<Message, tungstenite::Error>>
        + Send
{
}
/// A connection's transport, boxed so one connection type serves both.
pub(crate) type Wire = Pin<Box<dyn Duplex>>;

/// How a connection opens: its mode, the default subscription from the URL, and its token.
#[derive(Debug)]
pub(crate) struct Opening {
    pub(crate) mode: Mode,
    /// `?since=` / `Last-Event-ID`.
    pub(crate) since: Option<Position>,
    /// `?snapshot=true`.
    pub(crate) snapshot: bool,
    /// `?conflate=true`.
    pub(crate) conflate: bool,
    /// The default subscription (`None`: `?subscribe=false`, the client subscribes by frame).
    pub(crate) view: Option<View>,
    /// `?consumer=`.
    pub(crate) consumer: Option<consumers::Key>,
    /// `?ack=auto`: every event delivered counts as acknowledged.
    pub(crate) auto_ack: bool,
    /// The token's scope and what else it says.
    pub(crate) token: Token,
}

/// What the connection's token allows (everything when auth is off).
#[derive(Debug, Clone, Default)]
pub(crate) struct Token {
    pub(crate) scope: Scope,
    /// The token's `sub`, which scopes consumer names.
    pub(crate) subject: Option<String>,
    /// When the token stops being valid (its `exp` plus `WS_JWT_LEEWAY`); the connection is
    /// closed then unless refreshed.
    pub(crate) expires_at: Option<Instant>,
}

/// Which frames the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No protocol negotiated: event frames only (clients of the original design).
    Plain,
    /// `orders.v1`: hello, events, pong and error frames, and the resume frames.
    Protocol,
    /// Server-Sent Events: the protocol's frames as events, no client frames.
    Sse,
}

impl Mode {
    /// Whether the client gets the protocol's frames besides events.
    pub(crate) fn speaks(self) -> bool {
        self != Self::Plain
    }
}

/// What woke a connection's task.
enum Wake {
    Shutdown,
    TokenExpired,
    Hub(Result<Item, Lag>),
    /// The express lane's shard handed the live stream back.
    HandedBack,
    Inbound(Option<Result<Message, tungstenite::Error>>),
    Heartbeat,
    AckFlush,
}

/// How a connection ended, for logs and metrics.
#[derive(Debug)]
enum End {
    ClientClosed,
    Shutdown,
    /// Closed with 4008 (the queue passed a bound).
    SlowConsumer(Lag),
    /// The queue passed a bound during a live send; the slow-consumer policy decides what
    /// follows (close, or conflate and continue). Never the end of a connection by itself.
    /// `frame_queued`: the frame being sent went into the socket's buffer, ahead of anything
    /// sent next, so it counts as sent.
    Overflow {
        lag: Lag,
        frame_queued: bool,
    },
    HeartbeatTimeout,
    SendFailed(&'static str),
    ReadFailed(String),
    /// A client frame over the hard limit (closed with 1009).
    FrameTooLarge,
    /// A client text frame that is not UTF-8 (closed with 1007).
    InvalidUtf8,
    /// A plain connection's resume could not be served (closed with 4010).
    CannotResume,
    /// Redis did not answer a log read (closed with 1013).
    RedisUnavailable(String),
    /// The token expired unrefreshed (closed with 4011).
    TokenExpired,
}

/// One connection's state.
struct Conn<'a> {
    ws: Wire,
    /// Keeps the loop from polling `ws`'s read side after every hub event.
    read_gate: ReadGate,
    mode: Mode,
    conn_id: u64,
    state: &'a AppState,
    sender: Sender,
    shutdown: CancellationToken,
    rx: Feed<'a>,
    /// The last position sent, covered by a snapshot, or skipped because the client said it
    /// had it. Nothing at or before it is sent again.
    cursor: Option<Cursor>,
    /// The first position sent after the cursor last jumped: from there to the cursor this
    /// connection sent everything. Tells a `since` already covered from one that rewinds.
    first_sent: Option<u64>,
    /// Fold the backlog instead of closing when this client falls behind.
    conflate: bool,
    last_heard: Instant,
    /// What the client subscribed to; all share the cursor.
    subs: Vec<Sub>,
    /// What the token allows, its subject and expiry.
    token: Token,
    /// Fires at the token's expiry; allocated only for a token that expires (`arm_token_timer`).
    token_timer: Option<Pin<Box<Sleep>>>,
    /// Every event delivered counts as acknowledged for the connection's consumers.
    auto_ack: bool,
    /// The newest position delivered and not yet stored for auto-acking consumers.
    unacked: Option<Cursor>,
    /// Client frames allowed now (refilled at `WS_MAX_CLIENT_FRAMES_PER_SECOND`).
    /// (f32: it packs with the flags; the budget is a few hundred frames at most.)
    frame_budget: f32,
    budget_at: Instant,
    /// The connection's express lane (`hub::express`), if it is a plain TCP WebSocket.
    lane: Option<Arc<Lane>>,
    /// Whether the lane's shard writes the live stream now (and the feed is not read).
    express: bool,
    _held: Held,
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(lane) = &self.lane {
            lane.close();
        }
    }
}

/// What a connection is opened with, boxed so that its task holds one pointer to it until
/// the connection state is built (an async fn keeps its arguments for its whole life).
pub(crate) struct Setup {
    pub(crate) ws: Wire,
    /// Its express lane, if it is a plain TCP WebSocket.
    pub(crate) lane: Option<Arc<Lane>>,
    pub(crate) opening: Opening,
    pub(crate) conn_id: u64,
    pub(crate) shutdown: CancellationToken,
    pub(crate) held: Held,
}

/// Held for a connection's life: its slot (`WS_MAX_CONNECTIONS`), and shutdown's wait for it.
pub(crate) type Held = (OwnedSemaphorePermit, TaskTrackerToken);

/// Where a connection's stream starts, from its opening.
struct Start {
    since: Option<Position>,
    snapshot: bool,
    conflate: bool,
}

/// Serves one connection until it ends. Spawned as a task of its own (not awaited inside
/// another future) so that the task holds this and nothing else: every idle connection pays
/// for its task's state (docs/benchmarks.md, idle).
pub(crate) async fn serve(state: Arc<AppState>, setup: Box<Setup>) {
    let sse = setup.opening.mode == Mode::Sse;
    state.stats.accepted.inc();
    state.stats.connections.add(1);
    if sse {
        state.stats.sse_streams.add(1);
    }
    let (mut conn, start) = Conn::open(&state, setup);
    let end = match Box::pin(conn.begin(start)).await {
        Ok(()) => conn.run().await,
        Err(end) => end,
    };
    Box::pin(conn.store_acks()).await;
    let conn_id = conn.conn_id;
    match &end {
        End::SlowConsumer(lag) => {
            // Counted when noticed (`close_slow`); the close may have waited for the client.
            info!(conn_id, events = lag.events, bytes = lag.bytes, "slow consumer closed");
        }
        End::SendFailed(why) => {
            state.stats.send_failures.inc();
            info!(conn_id, why, "connection dropped");
        }
        End::ReadFailed(error) => {
            debug!(conn_id, %error, "connection read failed");
        }
        End::HeartbeatTimeout => {
            state.stats.heartbeat_timeouts.inc();
            info!(conn_id, "closed silent connection");
        }
        End::RedisUnavailable(error) => {
            warn!(conn_id, %error, "closed a connection that needed the log while redis was unavailable");
        }
        other => debug!(conn_id, end = ?other, "connection ended"),
    }
    drop(conn);
    state.stats.connections.add(-1);
    if sse {
        state.stats.sse_streams.add(-1);
    }
}

impl<'a> Conn<'a> {
    fn open(state: &'a AppState, setup: Box<Setup>) -> (Self, Start) {
        // The feed's first item is the event right after `newest`: that is where this
        // connection's stream starts, and what `hello` announces.
        let (rx, newest) = state.hub.subscribe();
        let Setup { ws, lane, opening, conn_id, shutdown, held } = *setup;
        let Opening { mode, since, snapshot, conflate, view, consumer, auto_ack, token } = opening;
        let subs = view.map(|view| Sub { id: None, view, from: None, consumer }).into_iter().collect();
        let mut conn = Conn {
            ws,
            read_gate: ReadGate::new(),
            mode,
            conn_id,
            state,
            sender: Sender::new(state.config.send_timeout),
            shutdown,
            rx,
            cursor: newest,
            first_sent: None,
            conflate: false,
            last_heard: Instant::now(),
            subs,
            token,
            token_timer: None,
            auto_ack,
            unacked: None,
            frame_budget: state.config.max_client_frames_per_second as f32,
            budget_at: Instant::now(),
            lane,
            express: false,
            _held: held,
        };
        conn.regate();
        (conn, Start { since, snapshot, conflate })
    }
}

impl Conn<'_> {
    /// Opens the stream: a durable consumer's position, hello, the replay or snapshot asked
    /// for. Apart from `run` (and boxed by its caller) so that none of it stays in the state
    /// every connection holds for its life.
    async fn begin(&mut self, start: Start) -> Result<(), End> {
        let Start { mut since, snapshot, conflate } = start;
        if since.is_none()
            && !snapshot
            && let Some(key) = self.subs.first().and_then(|s| s.consumer.clone())
        {
            // A durable consumer resumes after its last ack.
            match Box::pin(self.consumer_position(&key)).await {
                Ok(stored) => since = stored,
                Err(end) => return Err(end),
            }
        }
        if self.mode.speaks() {
            // (SSE leaves the `id:` off a hello that a replay follows: `sse`.)
            let position = self.cursor.as_ref().map(Cursor::to_position);
            let hello = ServerFrame::Hello {
                protocol: PROTOCOL_VERSION,
                server_id: self.state.server_id.clone(),
                max_frame_bytes: self.state.config.max_frame_bytes,
                position,
            };
            self.send_frame(&hello).await?;
        }
        if since.is_some() || snapshot || conflate {
            Box::pin(self.subscribe_live(since, snapshot, conflate)).await?;
        }
        Ok(())
    }

    /// The live stream, until the connection ends.
    async fn run(&mut self) -> End {
        let mut heartbeat = tokio::time::interval(self.state.config.heartbeat_interval);
        heartbeat.reset();
        // Only for a connection with positions to store (`auto_ack`): an interval is a timer
        // allocation.
        let mut ack_flush: Option<Interval> = None;
        loop {
            if let Err(end) = match self.hand_over().await {
                Err(End::Overflow { lag, .. }) => Box::pin(self.on_overflow(lag)).await,
                other => other,
            } {
                return end;
            }
            self.arm_token_timer();
            if self.unacked.is_some() && ack_flush.is_none() {
                ack_flush = Some(tokio::time::interval(ACK_FLUSH));
            }
            let express = self.express;
            let wake = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Wake::Shutdown,
                () = poll_fn(|cx| self.token_timer.as_mut().map_or(Poll::Pending, |t| t.as_mut().poll(cx))), if self.token_timer.is_some() => {
                    Wake::TokenExpired
                }
                // Cancel-safe: the feed takes nothing until it returns an item.
                item = self.rx.recv(), if !express => Wake::Hub(item),
                () = poll_fn(|cx| self.lane.as_ref().map_or(Poll::Pending, |l| l.poll_handed_back(cx))), if express => {
                    Wake::HandedBack
                }
                // Cancel-safe: tungstenite keeps partial frames in its own buffer.
                inbound = poll_fn(|cx| self.read_gate.poll_next(self.ws.as_mut(), cx)) => Wake::Inbound(inbound),
                _ = poll_fn(|cx| heartbeat.poll_tick(cx)) => Wake::Heartbeat,
                _ = poll_fn(|cx| ack_flush.as_mut().map_or(Poll::Pending, |a| a.poll_tick(cx))), if self.unacked.is_some() => {
                    Wake::AckFlush
                }
            };
            // Handled in a future of its own, boxed: what woke the task (and the handling)
            // then takes no room in the state every connection holds for its life.
            let step = Box::pin(self.on_wake(wake)).await;
            let step = match step {
                Err(End::Overflow { lag, .. }) => Box::pin(self.on_overflow(lag)).await,
                other => other,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Handles what woke the task, with the lane back in hand: its cursor is then the
    /// connection's, and its own writes cannot meet the shard's. What is rare (client frames,
    /// closes, overflows, breaks, gaps) is boxed again: this future is allocated for every
    /// wake, sized by its largest await.
    async fn on_wake(&mut self, wake: Wake) -> Result<(), End> {
        if self.express {
            self.take_back().await?;
        }
        match wake {
            Wake::Shutdown => Err(Box::pin(self.going_away()).await),
            Wake::TokenExpired => Err(Box::pin(self.token_expired()).await),
            // Boxed too (1.5 KB): heartbeats and client frames, which also come here, need none of it.
            Wake::Hub(item) => Box::pin(self.on_hub(item)).await,
            Wake::HandedBack => Ok(()),
            Wake::Inbound(inbound) => {
                self.last_heard = Instant::now();
                match inbound {
                    None | Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
                    Some(Err(e)) => Err(Box::pin(self.on_read_error(e)).await),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
                    Some(Ok(msg)) => Box::pin(self.answer(msg)).await,
                }
            }
            Wake::Heartbeat => {
                if self.mode == Mode::Sse {
                    // An event stream cannot answer; a write that goes through is the sign of life.
                    self.last_heard = Instant::now();
                }
                if self.last_heard.elapsed() >= self.state.config.heartbeat_interval * 2 {
                    Box::pin(self.close(CLOSE_HEARTBEAT_TIMEOUT, "no pong within two heartbeat intervals")).await;
                    Err(End::HeartbeatTimeout)
                } else {
                    Box::pin(self.send_live(Message::Ping(Default::default()))).await
                }
            }
            Wake::AckFlush => {
                Box::pin(self.store_acks()).await;
                Ok(())
            }
        }
    }

    /// Keeps `token_timer` at the token's expiry (which an `auth` frame moves).
    fn arm_token_timer(&mut self) {
        match (self.token.expires_at, &mut self.token_timer) {
            (None, timer) => *timer = None,
            (Some(at), Some(timer)) if timer.deadline() == at => {}
            (Some(at), Some(timer)) => timer.as_mut().reset(at),
            (Some(at), timer) => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Hands the live stream to the connection's express lane when the connection is caught
    /// up, takes every event as it is, and nothing of its own waits to be written.
    async fn hand_over(&mut self) -> Result<(), End> {
        let Some(lane) = &self.lane else { return Ok(()) };
        if self.express || self.auto_ack || !self.takes_everything() || lane.is_dirty() {
            return Ok(());
        }
        let Some(upto) = self.rx.caught_up() else { return Ok(()) };
        if lane.hand_over(&self.state.hub, upto, self.cursor.clone()) {
            self.express = true;
            return Ok(());
        }
        // Taken straight back: the shard may have sent the next event meanwhile.
        self.take_back().await
    }

    /// Continues the live stream where the express lane stopped.
    async fn take_back(&mut self) -> Result<(), End> {
        self.express = false;
        let Some(lane) = &self.lane else { return Ok(()) };
        let back = lane.take_back();
        self.rx.resume_at(back.upto, back.cursor.clone());
        if let Some(cursor) = back.cursor
            && self.cursor.as_ref() != Some(&cursor)
        {
            if self.cursor.as_ref().is_none_or(|c| c.epoch != cursor.epoch) || self.first_sent.is_none() {
                self.first_sent = back.first;
            }
            self.cursor = Some(cursor);
        }
        if back.rest {
            // Part of the shard's last frame: it counts as sent, and goes out before anything else.
            return Box::pin(self.sender.flush_watching(&mut self.ws, &self.rx)).await;
        }
        Ok(())
    }

    /// Takes one client frame from the budget (`WS_MAX_CLIENT_FRAMES_PER_SECOND`, a burst of
    /// as many); `false` when it is spent.
    fn take_frame_budget(&mut self) -> bool {
        let rate = self.state.config.max_client_frames_per_second as f64;
        let now = Instant::now();
        let refill = now.duration_since(self.budget_at).as_secs_f64() * rate;
        let budget = (f64::from(self.frame_budget) + refill).min(rate);
        self.budget_at = now;
        if budget < 1.0 {
            self.frame_budget = budget as f32;
            return false;
        }
        self.frame_budget = (budget - 1.0) as f32;
        true
    }

    /// An `auth` frame: the new token's scope replaces the old one for every subscription.
    async fn on_auth(&mut self, token: &str) -> Result<(), End> {
        let state = self.state;
        let claims = match state.auth.verify(token) {
            Ok(claims) => claims,
            Err(error) => {
                state.stats.auth_failures.inc();
                return self.refuse(ErrorCode::Unauthorized, None, format!("token refused: {error}")).await;
            }
        };
        if claims.sub != self.token.subject {
            state.stats.auth_failures.inc();
            let message = "the new token is for another subject (sub); open a new connection for it".to_owned();
            return self.refuse(ErrorCode::Unauthorized, None, message).await;
        }
        let scope = match Scope::from_claims(&claims.filter, claims.select.as_deref()) {
            Ok(scope) => scope,
            Err(message) => {
                state.stats.auth_failures.inc();
                return self.refuse(ErrorCode::Unauthorized, None, message).await;
            }
        };
        let max_filters = state.config.max_filters;
        let mut dropped = Vec::new();
        for sub in &mut self.subs {
            match sub.view.rescoped(&scope, max_filters) {
                Ok(view) => sub.view = view,
                Err(error) => dropped.push((sub.name().to_owned(), error)),
            }
        }
        for (name, _) in &dropped {
            self.subs.retain(|s| s.name() != name);
        }
        self.regate();
        for (name, error) in dropped {
            let message = format!("subscription ended: under the new token, {error}");
            self.refuse(ErrorCode::Forbidden, Some(name), message).await?;
        }
        let expires_at = Some(Instant::now() + state.auth.expires_in(&claims));
        self.token = Token { scope, subject: claims.sub, expires_at };
        info!(conn_id = self.conn_id, exp = claims.exp, "token refreshed");
        self.send_frame(&ServerFrame::Authenticated { exp: claims.exp }).await
    }

    async fn token_expired(&mut self) -> End {
        self.state.stats.tokens_expired.inc();
        info!(conn_id = self.conn_id, "token expired; closing with 4011");
        self.close(CLOSE_TOKEN_EXPIRED, "token expired; reconnect with a new token (or refresh with an auth frame)")
            .await;
        End::TokenExpired
    }

    async fn on_hub(&mut self, item: Result<Item, Lag>) -> Result<(), End> {
        match item {
            Ok(Item::Event(event)) => self.deliver(event).await,
            Ok(Item::Break(brk)) => Box::pin(self.on_break(&brk)).await,
            Err(lag) => Box::pin(self.on_overflow(lag)).await,
        }
    }

    /// The slow-consumer policy, once the queue passed a bound: fold the backlog and continue
    /// (`conflate: true`), or close with 4008.
    async fn on_overflow(&mut self, lag: Lag) -> Result<(), End> {
        if !self.conflate {
            return Err(self.close_slow(lag).await);
        }
        // What the feed skips is in the log, which the fold reads after this point; what is
        // pushed from now on the feed still yields (at or before the fold's end it is skipped).
        self.rx.skip_to_newest();
        self.conflate_backlog(lag.events).await
    }

    async fn close_slow(&mut self, lag: Lag) -> End {
        // Counted now: the close frame may wait behind a blocked frame for the client to read.
        self.state.stats.slow_consumers.inc();
        warn!(conn_id = self.conn_id, events = lag.events, bytes = lag.bytes, "slow consumer; closing with 4008");
        let reason = format!("slow consumer: fell {} events ({} bytes) behind; reconnect", lag.events, lag.bytes);
        self.close(CLOSE_SLOW_CONSUMER, &reason).await;
        End::SlowConsumer(lag)
    }

    /// A `subscribe` (frame or `?since=`) under the slow-consumer policy: a client that
    /// overflows while catching up is closed, or, if it conflates, gets the fold and is then
    /// confirmed as live.
    async fn subscribe_live(&mut self, since: Option<Position>, snapshot: bool, conflate: bool) -> Result<(), End> {
        match self.subscribe(since, snapshot, conflate).await {
            Err(End::Overflow { lag, .. }) => {
                self.on_overflow(lag).await?;
                if self.mode.speaks() {
                    let position = self.cursor.as_ref().map(Cursor::to_position);
                    let id = self.subs.first().and_then(|s| s.id.clone());
                    self.send_frame(&ServerFrame::Subscribed { id, position }).await?;
                }
                Ok(())
            }
            other => other,
        }
    }

    /// A read that failed: close with the code the protocol promises when there is one.
    async fn on_read_error(&mut self, error: tungstenite::Error) -> End {
        match error {
            // Both are counted and logged before the close goes out, so whoever sees the close
            // sees them. MessageTooLong comes from a frame's header (or a fragment past the
            // message limit) before its payload is read; nothing is read after it.
            tungstenite::Error::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                self.state.stats.frames_too_large.inc();
                info!(
                    conn_id = self.conn_id,
                    size,
                    limit = max_size,
                    "client frame over the hard limit; closing with 1009"
                );
                let reason = format!("frame of {size} bytes exceeds the limit of {max_size} bytes");
                self.close(CLOSE_TOO_BIG, &reason).await;
                End::FrameTooLarge
            }
            tungstenite::Error::Utf8(error) => {
                self.state.stats.invalid_utf8.inc();
                info!(conn_id = self.conn_id, %error, "client text frame is not UTF-8; closing with 1007");
                self.close(CLOSE_INVALID_PAYLOAD, "text frame is not valid UTF-8").await;
                End::InvalidUtf8
            }
            other => End::ReadFailed(other.to_string()),
        }
    }

    /// Handles one client data frame.
    async fn answer(&mut self, msg: Message) -> Result<(), End> {
        // Clients of the original design get event frames only; what they send is ignored.
        if self.mode == Mode::Plain {
            return Ok(());
        }
        let max = self.state.config.max_frame_bytes;
        let reply = match msg {
            Message::Text(text) if text.len() > max => error_frame(
                ErrorCode::FrameTooLarge,
                format!("frame of {} bytes exceeds the limit of {max} bytes", text.len()),
            ),
            Message::Text(_) if !self.take_frame_budget() => {
                self.state.stats.rate_limited.inc();
                let limit = self.state.config.max_client_frames_per_second;
                error_frame(
                    ErrorCode::RateLimited,
                    format!(
                        "more than {limit} client frames per second (WS_MAX_CLIENT_FRAMES_PER_SECOND); this frame was dropped, send less often"
                    ),
                )
            }
            Message::Text(text) => match ClientFrame::parse(&text) {
                Ok(ClientFrame::Ping { id }) => ServerFrame::Pong { id },
                Ok(ClientFrame::Subscribe(frame)) => return self.on_subscribe(frame).await,
                Ok(ClientFrame::Unsubscribe { id }) => return self.on_unsubscribe(id).await,
                Ok(ClientFrame::Ack { consumer, position }) => return self.on_ack(consumer, position).await,
                Ok(ClientFrame::Auth { token }) => return self.on_auth(&token).await,
                Err((code, message)) => error_frame(code, message),
            },
            Message::Binary(_) => error_frame(
                ErrorCode::BinaryNotSupported,
                "binary frames are not part of the protocol; send JSON text frames".into(),
            ),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => return Ok(()),
        };
        if matches!(reply, ServerFrame::Error { .. }) {
            self.state.stats.bad_frames.inc();
        }
        self.send_live(Message::Text(reply.to_json().into())).await
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send(Message::Text(frame.to_json().into())).await
    }

    /// Sends a frame paced by the socket (replay, snapshot, control frames around them).
    async fn send(&mut self, msg: Message) -> Result<(), End> {
        self.sender.send(&mut self.ws, msg).await
    }

    /// Sends a frame of the live stream, watching the queue while the socket is blocked:
    /// `End::Overflow` as soon as it passes a bound.
    async fn send_live(&mut self, msg: Message) -> Result<(), End> {
        self.sender.send_watching(&mut self.ws, &self.rx, msg).await
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: code.into(), reason: Utf8Bytes::from(reason) };
        // The connection ends either way; a client that cannot take the close frame is dropped.
        let _ = self.send(Message::Close(Some(frame))).await;
    }

    async fn going_away(&mut self) -> End {
        self.close(CLOSE_GOING_AWAY, "server shutting down; reconnect").await;
        End::Shutdown
    }

    async fn redis_unavailable(&mut self, error: String) -> End {
        self.close(CLOSE_TRY_AGAIN_LATER, "redis unavailable; reconnect and resume").await;
        End::RedisUnavailable(error)
    }
}

fn error_frame(code: ErrorCode, message: String) -> ServerFrame {
    ServerFrame::Error { code, id: None, message }
}

/// How often positions delivered to auto-acking consumers are stored.
const ACK_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    /// Every connection holds its task's state for its whole life (docs/benchmarks.md, idle:
    /// 1,024 bytes with tokio's task header in a release build). What used to grow it: awaiting
    /// the connection inside other futures, which then held their captures beside it; an
    /// async fn's arguments and a match's scrutinee held across awaits; rare paths not boxed.
    #[test]
    fn a_connections_task_state_stays_small() {
        fn future_size<A, B, F>(_: fn(A, B) -> F) -> usize {
            size_of::<F>()
        }
        let size = future_size(super::serve);
        eprintln!("socket::serve's future: {size} bytes");
        // 920: the most that keeps tokio's task cell (32-byte header, 24 bytes beside the
        // future, 48-byte trailer, 128-byte aligned) at 1,024 bytes.
        assert!(
            size <= 920,
            "socket::serve's future is {size} bytes (at most 920 fit a 1,024-byte task); see what made it grow"
        );
    }
}
