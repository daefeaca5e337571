//! One open connection: reads frames, answers to timers (hello, ping probe, silence) and turns
//! what arrives into [`FeedItem`]s; the reconnect loop around it lives in the parent module.

use std::{collections::VecDeque, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::{
    self, Message,
    protocol::{CloseFrame, frame::coding::CloseCode},
};
use tokio_util::sync::CancellationToken;

use super::{
    DisconnectReason, FeedConfig, FeedItem, Protocol,
    connect::WsStream,
    inbound::{Inbound, classify},
};

/// One open connection.
#[derive(Debug)]
pub(super) struct Session {
    ws: WsStream,
    protocol: Protocol,
    pub(super) opened: Instant,
    /// When anything (frame, ping, pong) last arrived.
    last_seen: Instant,
    /// Whether a ping was sent since `last_seen`.
    probed: bool,
    /// Whether `Connected` was reported.
    announced: bool,
    /// The server's close frame, once received; the stream ends right after it.
    close: Option<DisconnectReason>,
}

pub(super) enum Step {
    Continue,
    Shutdown,
    Ended(DisconnectReason),
}

impl Session {
    pub(super) fn new(ws: WsStream, protocol: Protocol) -> Self {
        let now = Instant::now();
        Self { ws, protocol, opened: now, last_seen: now, probed: false, announced: false, close: None }
    }

    pub(super) fn announce(&mut self, server_id: Option<String>, pending: &mut VecDeque<FeedItem>) {
        if !self.announced {
            self.announced = true;
            pending.push_back(FeedItem::Connected { server_id, protocol: self.protocol });
        }
    }

    /// Waits for one message or timer and pushes what it means onto `pending`.
    ///
    /// Cancel-safe: `StreamExt::next` on the socket loses nothing when dropped, and every
    /// deadline is derived from fields that only change once something happened.
    pub(super) async fn step(
        &mut self,
        config: &FeedConfig,
        shutdown: &CancellationToken,
        pending: &mut VecDeque<FeedItem>,
    ) -> Step {
        let silent_at = self.last_seen + config.idle_timeout;
        let probe_at = self.last_seen + config.idle_timeout / 2;
        let hello_at = self.opened + config.hello_timeout;
        let mut wake = silent_at;
        if !self.probed {
            wake = wake.min(probe_at);
        }
        if !self.announced {
            wake = wake.min(hello_at);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Step::Shutdown,
            message = self.ws.next() => self.receive(message, pending),
            () = sleep_until(wake) => {
                let now = Instant::now();
                if !self.announced && now >= hello_at {
                    // A server that speaks orders.v1 but sent no hello yet: report anyway.
                    self.announce(None, pending);
                    Step::Continue
                } else if now >= silent_at {
                    Step::Ended(DisconnectReason::Silent(config.idle_timeout))
                } else if !self.probed && now >= probe_at {
                    self.probed = true;
                    self.ping().await
                } else {
                    Step::Continue
                }
            }
        }
    }

    fn receive(
        &mut self,
        message: Option<Result<Message, tungstenite::Error>>,
        pending: &mut VecDeque<FeedItem>,
    ) -> Step {
        let message = match message {
            None | Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                return Step::Ended(self.close.take().unwrap_or(DisconnectReason::Lost));
            }
            Some(Err(err)) => {
                return Step::Ended(self.close.take().unwrap_or(DisconnectReason::Broken(err.to_string())));
            }
            Some(Ok(message)) => message,
        };
        self.last_seen = Instant::now();
        self.probed = false;
        match message {
            Message::Text(text) => self.text(text.as_str(), pending),
            Message::Close(frame) => {
                self.close = Some(match frame {
                    Some(CloseFrame { code, reason }) => {
                        DisconnectReason::Closed { code: code.into(), reason: reason.as_str().to_owned() }
                    }
                    None => DisconnectReason::Closed { code: 1005, reason: String::new() },
                });
            }
            Message::Binary(bytes) => tracing::debug!(bytes = bytes.len(), "binary frame skipped"),
            // tungstenite queues the pong for a ping itself and sends it on the next read.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
        Step::Continue
    }

    fn text(&mut self, text: &str, pending: &mut VecDeque<FeedItem>) {
        match classify(text, self.protocol) {
            Inbound::Hello { server_id } => {
                if self.announced {
                    tracing::debug!(?server_id, "late hello ignored");
                }
                self.announce(server_id, pending);
            }
            Inbound::Event(frame) => {
                self.announce(None, pending);
                pending.push_back(FeedItem::Event { frame, raw: text.to_owned() });
            }
            Inbound::ServerError { code, message } => tracing::warn!(code, message, "server reported an error"),
            Inbound::Skip { kind } => tracing::debug!(kind, "frame skipped"),
            Inbound::Malformed { problem } => tracing::warn!(problem, frame = text, "unreadable frame skipped"),
        }
    }

    async fn ping(&mut self) -> Step {
        match timeout(Duration::from_secs(5), self.ws.send(Message::Ping(Default::default()))).await {
            Ok(Ok(())) => Step::Continue,
            Ok(Err(err)) => Step::Ended(DisconnectReason::Broken(err.to_string())),
            Err(_elapsed) => Step::Ended(DisconnectReason::Broken("sending a ping timed out".to_owned())),
        }
    }

    /// Says goodbye with 1001 (going away), giving the server at most a second.
    pub(super) async fn close(&mut self) {
        let frame = CloseFrame { code: CloseCode::Away, reason: "client exiting".into() };
        // Best effort: the process is exiting either way, and the server copes with a dropped socket.
        let _ = timeout(Duration::from_secs(1), self.ws.close(Some(frame))).await;
    }
}
