//! One open connection: reads frames, sends what the feed queued (a `subscribe`), and answers
//! to timers (hello, unanswered subscribe, ping probe, silence). It reports what happened as
//! [`Step`]s; what they mean for the stream is decided in `resume`.

use std::{collections::VecDeque, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use protocol::{frames::ClientFrame, log::Position};
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
    pub(super) protocol: Protocol,
    /// The URL it was opened to.
    pub(super) url: String,
    pub(super) opened: Instant,
    /// When anything (frame, ping, pong) last arrived.
    last_seen: Instant,
    /// Whether a ping was sent since `last_seen`.
    probed: bool,
    /// The replica's id, from its hello; `Some` once `Connected` was reported.
    announced: Option<Option<String>>,
    /// The server's close frame, once received; the stream ends right after it.
    close: Option<DisconnectReason>,
    /// Frames to send, oldest first; one leaves the queue only once it was sent.
    outgoing: VecDeque<String>,
    /// When an unanswered `subscribe` stops being waited for.
    pub(super) answer_deadline: Option<Instant>,
    /// `reset` frames received on this connection.
    pub(super) resets: u32,
}

/// What one step of the session produced.
pub(super) enum Step {
    /// Nothing to report (a ping, a pong, a frame sent).
    Continue,
    /// Shutdown was requested.
    Shutdown,
    /// The connection ended.
    Ended(DisconnectReason),
    /// A text frame, classified, and its text.
    Frame(Box<Inbound>, String),
    /// A protocol connection sent no hello within `hello_timeout`.
    HelloTimeout,
    /// A `subscribe` went unanswered until `answer_deadline`.
    AnswerTimeout,
}

impl Session {
    pub(super) fn new(ws: WsStream, protocol: Protocol, url: String) -> Self {
        let now = Instant::now();
        Self {
            ws,
            protocol,
            url,
            opened: now,
            last_seen: now,
            probed: false,
            announced: None,
            close: None,
            outgoing: VecDeque::new(),
            answer_deadline: None,
            resets: 0,
        }
    }

    /// Whether `Connected` was reported.
    pub(super) fn announced(&self) -> bool {
        self.announced.is_some()
    }

    /// The replica's id, when its hello named it.
    pub(super) fn server_id(&self) -> Option<&str> {
        self.announced.as_ref().and_then(Option::as_deref)
    }

    /// Reports the connection once (`position`: where the server's hello said it was).
    pub(super) fn announce(
        &mut self,
        server_id: Option<String>,
        position: Option<Position>,
        pending: &mut VecDeque<FeedItem>,
    ) {
        if self.announced.is_none() {
            pending.push_back(FeedItem::Connected {
                url: self.url.clone(),
                server_id: server_id.clone(),
                protocol: self.protocol,
                position,
            });
            self.announced = Some(server_id);
        }
    }

    /// Queues `frame` to be sent before the next read.
    pub(super) fn queue(&mut self, frame: &ClientFrame) {
        self.outgoing.push_back(serde_json::to_string(frame).expect("client frames always serialize"));
    }

    /// Sends what is queued, or waits for one message or timer.
    ///
    /// Cancel-safe: `StreamExt::next` on the socket loses nothing when dropped, every deadline
    /// is derived from fields that only change once something happened, and a queued frame
    /// leaves the queue only once sent (dropped mid-send, it may be sent twice, which a
    /// `subscribe` tolerates).
    pub(super) async fn step(&mut self, config: &FeedConfig, shutdown: &CancellationToken) -> Step {
        if let Some(text) = self.outgoing.front() {
            let sent = timeout(Duration::from_secs(5), self.ws.send(Message::text(text.clone()))).await;
            return match sent {
                Ok(Ok(())) => {
                    self.outgoing.pop_front();
                    Step::Continue
                }
                Ok(Err(err)) => Step::Ended(self.close.take().unwrap_or(DisconnectReason::Broken(err.to_string()))),
                Err(_elapsed) => Step::Ended(DisconnectReason::Broken("sending a frame timed out".to_owned())),
            };
        }
        let silent_at = self.last_seen + config.idle_timeout;
        let probe_at = self.last_seen + config.idle_timeout / 2;
        let hello_at = self.opened + config.hello_timeout;
        let mut wake = silent_at;
        if !self.probed {
            wake = wake.min(probe_at);
        }
        if !self.announced() {
            wake = wake.min(hello_at);
        }
        if let Some(answer_at) = self.answer_deadline {
            wake = wake.min(answer_at);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Step::Shutdown,
            message = self.ws.next() => self.receive(message),
            () = sleep_until(wake) => {
                let now = Instant::now();
                if !self.announced() && now >= hello_at {
                    Step::HelloTimeout
                } else if now >= silent_at {
                    Step::Ended(DisconnectReason::Silent(config.idle_timeout))
                } else if self.answer_deadline.is_some_and(|at| now >= at) {
                    self.answer_deadline = None;
                    Step::AnswerTimeout
                } else if !self.probed && now >= probe_at {
                    self.probed = true;
                    self.ping().await
                } else {
                    Step::Continue
                }
            }
        }
    }

    fn receive(&mut self, message: Option<Result<Message, tungstenite::Error>>) -> Step {
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
            Message::Text(text) => {
                let text = text.as_str();
                return Step::Frame(Box::new(classify(text, self.protocol)), text.to_owned());
            }
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
