//! One WebSocket connection: forward hub events, answer client frames, keep the peer alive,
//! and close with a code that tells the client what to do next.
//!
//! Where the connection stands in the history (resume, dedupe, gap filling) is the `stream`
//! submodule's; `snapshot` serves the state at a position; `conflate` folds a slow client's
//! backlog to the latest event per row.
//!
//! | close | when | client should |
//! |---|---|---|
//! | 1001 | the replica shuts down | reconnect (any replica) and resume |
//! | 1009 | a client frame exceeded the hard size limit | send smaller frames |
//! | 1013 | Redis is unreachable while a resume, snapshot or catch-up needs the log | reconnect and resume |
//! | 4008 | the client fell `WS_QUEUE_CAPACITY` events behind (default policy) | reconnect and resume |
//! | 4009 | no frame or pong for two heartbeat intervals | reconnect and resume |
//! | 4010 | a plain connection's `?since=` cannot be served | reconnect without `since` |
//!
//! A client whose socket accepts nothing for `WS_SEND_TIMEOUT` is dropped without a close
//! frame (none could reach it).

mod conflate;
mod snapshot;
mod stream;

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use protocol::{
    frames::{
        CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_SLOW_CONSUMER, CLOSE_TRY_AGAIN_LATER, ClientFrame, ErrorCode,
        PROTOCOL_VERSION, ServerFrame,
    },
    log::Position,
};
use tokio::{
    sync::broadcast::{self, error::RecvError},
    time::{Instant, timeout},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    AppState,
    hub::{Cursor, Item},
};

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
    SlowConsumer(u64),
    HeartbeatTimeout,
    SendFailed(&'static str),
    ReadFailed(String),
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
    rx: broadcast::Receiver<Item>,
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
    // The receiver's first item is the event right after `newest`: that is where this
    // connection's stream starts, and what `hello` announces.
    let (rx, newest) = state.hub.subscribe();
    let mut conn = Conn {
        ws,
        mode,
        conn_id,
        state,
        sender: Sender { send_timeout: state.config.send_timeout },
        shutdown,
        rx,
        cursor: newest,
        first_sent: None,
        conflate: false,
        last_heard: Instant::now(),
    };
    let end = conn.run(since).await;
    match &end {
        End::SlowConsumer(missed) => {
            state.stats.slow_consumers.inc();
            warn!(conn_id, missed, "closed slow consumer");
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
            && let Err(end) = self.subscribe(Some(since), false, false).await
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
                // Cancel-safe: a broadcast receiver loses nothing when the recv future is dropped.
                item = self.rx.recv() => self.on_hub(item).await,
                // Cancel-safe: tungstenite keeps partial frames in its own buffer.
                inbound = self.ws.recv() => {
                    self.last_heard = Instant::now();
                    match inbound {
                        None | Some(Ok(Message::Close(_))) => Err(End::ClientClosed),
                        Some(Err(e)) => Err(End::ReadFailed(e.to_string())),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(msg)) => self.answer(msg).await,
                    }
                }
                _ = heartbeat.tick() => {
                    if self.last_heard.elapsed() >= interval * 2 {
                        self.close(CLOSE_HEARTBEAT_TIMEOUT, "no pong within two heartbeat intervals").await;
                        Err(End::HeartbeatTimeout)
                    } else {
                        self.send(Message::Ping(Default::default())).await
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_hub(&mut self, item: Result<Item, RecvError>) -> Result<(), End> {
        match item {
            Ok(Item::Event(event)) => self.deliver(event).await,
            Ok(Item::Break(brk)) => self.on_break(&brk).await,
            Err(RecvError::Lagged(missed)) if self.conflate => self.conflate_backlog(missed).await,
            Err(RecvError::Lagged(missed)) => {
                let reason = format!("slow consumer: fell {missed} events behind; reconnect");
                self.close(CLOSE_SLOW_CONSUMER, &reason).await;
                Err(End::SlowConsumer(missed))
            }
            Err(RecvError::Closed) => Err(End::Shutdown),
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
                    return self.subscribe(since, snapshot, conflate).await;
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
        self.send_frame(&reply).await
    }

    async fn send_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.send(Message::Text(frame.to_json().into())).await
    }

    async fn send(&mut self, msg: Message) -> Result<(), End> {
        self.sender.send(&mut self.ws, msg).await
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

/// Sends with a deadline, so one stuck client never holds its task forever.
#[derive(Debug, Clone, Copy)]
struct Sender {
    send_timeout: Duration,
}

impl Sender {
    async fn send(&self, ws: &mut WebSocket, msg: Message) -> Result<(), End> {
        match timeout(self.send_timeout, ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::SendFailed("write failed")),
            Err(_) => Err(End::SendFailed("send timed out")),
        }
    }
}
