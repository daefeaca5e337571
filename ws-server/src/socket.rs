//! One WebSocket connection: forward hub events, answer client frames, keep the peer alive,
//! and close with a code that tells the client what to do next.
//!
//! | close | when | client should |
//! |---|---|---|
//! | 1001 | the replica shuts down | reconnect (any replica) |
//! | 1009 | a client frame exceeded the hard size limit | send smaller frames |
//! | 4008 | the client fell `WS_QUEUE_CAPACITY` events behind | reconnect |
//! | 4009 | no frame or pong for two heartbeat intervals | reconnect |
//!
//! A client whose socket accepts nothing for `WS_SEND_TIMEOUT` is dropped without a close
//! frame (none could reach it).

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use protocol::frames::{
    CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_SLOW_CONSUMER, ClientFrame, ErrorCode, PROTOCOL_VERSION,
    ServerFrame,
};
use tokio::{
    sync::broadcast::error::RecvError,
    time::{Instant, timeout},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::AppState;

/// Which frames the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No protocol negotiated: event frames only (clients of the original design).
    Plain,
    /// `orders.v1`: hello, events, pong and error frames.
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
}

/// Serves one upgraded connection until it ends.
pub(crate) async fn serve(mut ws: WebSocket, mode: Mode, conn_id: u64, state: &AppState, shutdown: CancellationToken) {
    let config = &state.config;
    let mut events = state.hub.subscribe();
    let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
    heartbeat.reset();
    let mut last_heard = Instant::now();
    let sender = Sender { send_timeout: config.send_timeout };

    let mut end = if mode == Mode::Protocol {
        let hello = ServerFrame::Hello {
            protocol: PROTOCOL_VERSION,
            server_id: state.server_id.clone(),
            max_frame_bytes: config.max_frame_bytes,
        };
        sender.send(&mut ws, Message::Text(hello.to_json().into())).await.err()
    } else {
        None
    };

    while end.is_none() {
        end = tokio::select! {
            biased;
            () = shutdown.cancelled() => {
                close(&mut ws, &sender, CLOSE_GOING_AWAY, "server shutting down; reconnect").await;
                Some(End::Shutdown)
            }
            // Cancel-safe: a broadcast receiver loses nothing when the recv future is dropped.
            event = events.recv() => match event {
                Ok(frame) => match sender.send(&mut ws, Message::Text(frame)).await {
                    Ok(()) => {
                        state.stats.messages_out.inc();
                        None
                    }
                    Err(end) => Some(end),
                },
                Err(RecvError::Lagged(missed)) => {
                    let reason = format!("slow consumer: fell {missed} events behind; reconnect");
                    close(&mut ws, &sender, CLOSE_SLOW_CONSUMER, &reason).await;
                    Some(End::SlowConsumer(missed))
                }
                Err(RecvError::Closed) => Some(End::Shutdown),
            },
            // Cancel-safe: tungstenite keeps partial frames in its own buffer.
            inbound = ws.recv() => {
                last_heard = Instant::now();
                match inbound {
                    None => Some(End::ClientClosed),
                    Some(Err(e)) => Some(End::ReadFailed(e.to_string())),
                    Some(Ok(Message::Close(_))) => Some(End::ClientClosed),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
                    Some(Ok(msg)) => answer(&mut ws, &sender, mode, state, msg).await.err(),
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= config.heartbeat_interval * 2 {
                    close(&mut ws, &sender, CLOSE_HEARTBEAT_TIMEOUT, "no pong within two heartbeat intervals").await;
                    Some(End::HeartbeatTimeout)
                } else {
                    sender.send(&mut ws, Message::Ping(Default::default())).await.err()
                }
            }
        };
    }

    let end = end.expect("loop exits only with an end");
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
        other => debug!(conn_id, end = ?other, "connection ended"),
    }
}

/// Handles one client data frame.
async fn answer(ws: &mut WebSocket, sender: &Sender, mode: Mode, state: &AppState, msg: Message) -> Result<(), End> {
    // Clients of the original design get event frames only; what they send is ignored.
    if mode == Mode::Plain {
        return Ok(());
    }
    let reply = match msg {
        Message::Text(text) if text.len() > state.config.max_frame_bytes => error_frame(
            ErrorCode::FrameTooLarge,
            format!("frame of {} bytes exceeds the limit of {} bytes", text.len(), state.config.max_frame_bytes),
        ),
        Message::Text(text) => match ClientFrame::parse(&text) {
            Ok(ClientFrame::Ping { id }) => ServerFrame::Pong { id },
            Err((code, message)) => error_frame(code, message),
        },
        Message::Binary(_) => error_frame(
            ErrorCode::BinaryNotSupported,
            "binary frames are not part of the protocol; send JSON text frames".into(),
        ),
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
    };
    if matches!(reply, ServerFrame::Error { .. }) {
        state.stats.bad_frames.inc();
    }
    sender.send(ws, Message::Text(reply.to_json().into())).await
}

fn error_frame(code: ErrorCode, message: String) -> ServerFrame {
    ServerFrame::Error { code, message }
}

async fn close(ws: &mut WebSocket, sender: &Sender, code: u16, reason: &str) {
    let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
    // The connection ends either way; a client that cannot take the close frame is dropped.
    let _ = sender.send(ws, Message::Close(Some(frame))).await;
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
