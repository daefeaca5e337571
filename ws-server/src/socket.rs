//! One WebSocket connection: forward hub events, answer client frames, keep the peer alive,
//! and close with a code that tells the client what to do next.
//!
//! Where the connection stands in the history (resume, dedupe, gap filling) is the `stream`
//! submodule's; `snapshot` serves the state at a position; `conflate` folds a slow client's
//! backlog to the latest event per row; `send` writes one frame with a deadline, watching the
//! queue while the socket is blocked.
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

mod conflate;
mod send;
mod snapshot;
mod stream;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use protocol::{
    frames::{
        CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_INVALID_PAYLOAD, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG,
        CLOSE_TRY_AGAIN_LATER, ClientFrame, ErrorCode, PROTOCOL_VERSION, ServerFrame,
    },
    log::Position,
};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, error::CapacityError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    AppState,
    hub::{Cursor, Feed, Item, Lag},
};
use send::Sender;

/// Which frames the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No protocol negotiated: event frames only (clients of the original design).
    Plain,
    /// `orders.v1`: hello, events, pong and error frames, and the resume frames.
    Protocol,
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
}

/// One connection's state.
struct Conn<'a> {
    ws: WebSocket,
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
}

/// Serves one upgraded connection until it ends. `since` is the connection's `?since=`.
pub(crate) async fn serve(
    ws: WebSocket,
    mode: Mode,
    since: Option<Position>,
    conn_id: u64,
    state: &AppState,
    shutdown: CancellationToken,
) {
    // The feed's first item is the event right after `newest`: that is where this
    // connection's stream starts, and what `hello` announces.
    let (rx, newest) = state.hub.subscribe();
    let mut conn = Conn {
        ws,
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
    };
    let end = conn.run(since).await;
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
}

impl Conn<'_> {
    async fn run(&mut self, since: Option<Position>) -> End {
        if self.mode == Mode::Protocol {
            let hello = ServerFrame::Hello {
                protocol: PROTOCOL_VERSION,
                server_id: self.state.server_id.clone(),
                max_frame_bytes: self.state.config.max_frame_bytes,
                position: self.cursor.as_ref().map(Cursor::to_position),
            };
            if let Err(end) = self.send_frame(&hello).await {
                return end;
            }
        }
        if let Some(since) = since
            && let Err(end) = self.subscribe_live(Some(since), false, false).await
        {
            return end;
        }

        let interval = self.state.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval(interval);
        heartbeat.reset();
        loop {
            let step = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => Err(self.going_away().await),
                // Cancel-safe: the feed takes nothing until it returns an item.
                item = self.rx.recv() => self.on_hub(item).await,
                // Cancel-safe: tungstenite keeps partial frames in its own buffer.
                inbound = self.ws.recv() => {
                    self.last_heard = Instant::now();
                    match inbound {
                        None | Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
                        Some(Err(e)) => Err(self.on_read_error(e).await),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(msg)) => self.answer(msg).await,
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_heard.elapsed() >= interval * 2 {
                        self.close(CLOSE_HEARTBEAT_TIMEOUT, "no pong within two heartbeat intervals").await;
                        Err(End::HeartbeatTimeout)
                    } else {
                        self.send_live(Message::Ping(Default::default())).await
                    }
                }
            };
            let step = match step {
                Err(End::Overflow { lag, .. }) => self.on_overflow(lag).await,
                other => other,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_hub(&mut self, item: Result<Item, Lag>) -> Result<(), End> {
        match item {
            Ok(Item::Event(event)) => self.deliver(event).await,
            Ok(Item::Break(brk)) => self.on_break(&brk).await,
            Err(lag) => self.on_overflow(lag).await,
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
                if self.mode == Mode::Protocol {
                    let position = self.cursor.as_ref().map(Cursor::to_position);
                    self.send_frame(&ServerFrame::Subscribed { position }).await?;
                }
                Ok(())
            }
            other => other,
        }
    }

    /// A read that failed: close with the code the protocol promises when there is one.
    async fn on_read_error(&mut self, error: axum::Error) -> End {
        let error = match error.into_inner().downcast::<tungstenite::Error>() {
            Ok(error) => *error,
            Err(other) => return End::ReadFailed(other.to_string()),
        };
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
            Message::Text(text) => match ClientFrame::parse(&text) {
                Ok(ClientFrame::Ping { id }) => ServerFrame::Pong { id },
                Ok(ClientFrame::Subscribe { since, snapshot, conflate }) => {
                    return self.subscribe_live(since, snapshot, conflate).await;
                }
                Err((code, message)) => error_frame(code, message),
            },
            Message::Binary(_) => error_frame(
                ErrorCode::BinaryNotSupported,
                "binary frames are not part of the protocol; send JSON text frames".into(),
            ),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
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
        let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
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
    ServerFrame::Error { code, message }
}
