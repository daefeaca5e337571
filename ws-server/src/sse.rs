//! Server-Sent Events: the same connection as a WebSocket one (`socket`), written as an
//! event stream.
//!
//! - every change is an unnamed event (`EventSource.onmessage` gets it) with `id: EPOCH:POS`
//!   and the same JSON as the WebSocket frame as `data:`;
//! - the protocol's other frames are named events (`event: hello`, `snapshot`, `subscribed`,
//!   `reset`, `rebased`, `conflated`, `error`), with `id:` where they carry a position the
//!   stream continues after, so `Last-Event-ID` always resumes at the right place. `hello`
//!   names the replica's newest position, which a resuming stream (`Last-Event-ID`, `since`,
//!   a durable consumer) has not reached yet: it replays from further back first. There the
//!   hello sets no `id:`, or a stream cut before the replay's end would come back after
//!   events it never received;
//! - a heartbeat comment (`: heartbeat`) every `WS_HEARTBEAT_INTERVAL`, and a `retry:` hint;
//! - where a WebSocket would be closed with a code, the stream ends with
//!   `event: close` and `data: {"code":…,"reason":"…"}`.
//!
//! The body is fed through a channel of one chunk: a frame is handed over only when the
//! previous one was taken by the HTTP connection, so a slow reader backs up into the hub's
//! queue bound exactly as a slow WebSocket does.

use std::{
    fmt::Write as _,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::PollSender;

/// The `retry:` hint: how long a browser waits before reconnecting.
pub(crate) const RETRY_MS: u64 = 1000;

/// One SSE stream, as a connection's transport.
pub(crate) struct SseWire {
    tx: PollSender<Bytes>,
    /// Whether `hello` sets `id:` (the stream continues after its position: no replay).
    hello_id: bool,
    /// Resolves when the body was dropped (the client went away).
    gone: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl std::fmt::Debug for SseWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseWire").finish_non_exhaustive()
    }
}

impl SseWire {
    /// A stream and the body that carries it. `resumes`: the stream starts with a replay from
    /// an older position than the replica's newest (then `hello` sets no `id:`).
    pub(crate) fn new(resumes: bool) -> (Self, impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send) {
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let first = Bytes::from(format!("retry: {RETRY_MS}\n\n"));
        tx.try_send(first).expect("a new channel has room");
        let watch = tx.clone();
        let gone = Box::pin(async move { watch.closed().await });
        let body = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) });
        (Self { tx: PollSender::new(tx), hello_id: !resumes, gone }, body)
    }
}

/// The SSE text of one frame; `None` for what SSE does not carry. `hello_id`: whether a
/// `hello` sets `id:` to its position.
pub(crate) fn encode(msg: &Message, hello_id: bool) -> Option<String> {
    match msg {
        Message::Text(text) => Some(encode_frame(text.as_str(), hello_id)),
        Message::Ping(_) => Some(": heartbeat\n\n".to_owned()),
        Message::Close(frame) => {
            let (code, reason) = frame.as_ref().map_or((1000, ""), |f| (u16::from(f.code), f.reason.as_str()));
            let data = serde_json::json!({ "code": code, "reason": reason });
            Some(format!("event: close\ndata: {data}\n\n"))
        }
        Message::Pong(_) | Message::Binary(_) | Message::Frame(_) => None,
    }
}

fn encode_frame(frame: &str, hello_id: bool) -> String {
    let mut out = String::with_capacity(frame.len() + 48);
    match frame_type(frame) {
        Some("event") => {
            if let Some((epoch, pos)) = event_position(frame) {
                let _ = writeln!(out, "id: {epoch}:{pos}");
            }
        }
        Some(kind) => {
            let _ = writeln!(out, "event: {kind}");
            let positioned = match kind {
                "hello" => hello_id,
                "snapshot" | "subscribed" | "rebased" => true,
                _ => false,
            };
            if positioned && let Some(position) = control_position(frame) {
                let _ = writeln!(out, "id: {position}");
            }
        }
        None => {}
    }
    // Frames are compact JSON: no raw newline can split the data line.
    let _ = write!(out, "data: {frame}\n\n");
    out
}

/// `type` of a frame: serde writes the tag first.
fn frame_type(frame: &str) -> Option<&str> {
    let rest = frame.strip_prefix(r#"{"type":""#)?;
    rest.split_once('"').map(|(kind, _)| kind)
}

/// The epoch and position of an event frame, read from the prefix every frame starts with
/// (`protocol::log::frame_prefix`; rendered frames keep it): no parse per client.
fn event_position(frame: &str) -> Option<(&str, &str)> {
    let rest = frame.strip_prefix(r#"{"type":"event","epoch":""#)?;
    let (epoch, rest) = rest.split_once('"')?;
    let rest = rest.strip_prefix(r#","pos":"#)?;
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    (end > 0).then(|| (epoch, &rest[..end]))
}

fn control_position(frame: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(frame).ok()?;
    let position: protocol::log::Position = serde_json::from_value(value.get("position")?.clone()).ok()?;
    Some(position.to_string())
}

fn gone() -> tungstenite::Error {
    tungstenite::Error::Io(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the SSE client went away"))
}

impl Sink<Message> for SseWire {
    type Error = tungstenite::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tx.poll_reserve(cx).map_err(|_| gone())
    }

    fn start_send(mut self: Pin<&mut Self>, msg: Message) -> Result<(), Self::Error> {
        match encode(&msg, self.hello_id) {
            Some(text) => self.tx.send_item(Bytes::from(text)).map_err(|_| gone()),
            // Nothing to write: give back the slot `poll_ready` reserved.
            None => {
                self.tx.abort_send();
                Ok(())
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A chunk handed to the channel is the body's; the next `poll_ready` waits for it to be taken.
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tx.close();
        Poll::Ready(Ok(()))
    }
}

impl Stream for SseWire {
    type Item = Result<Message, tungstenite::Error>;

    /// An event stream carries nothing from the client: this ends when the client goes away.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.gone.as_mut().poll(cx).map(|()| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::{Utf8Bytes, protocol::CloseFrame};

    #[test]
    fn events_carry_their_position_as_id_and_no_name() {
        let frame = format!("{}7,\"table\":\"orders\"}}", protocol::log::frame_prefix("k3x"));
        let out = encode(&Message::Text(frame.clone().into()), true).unwrap();
        assert_eq!(out, format!("id: k3x:7\ndata: {frame}\n\n"));
    }

    #[test]
    fn control_frames_are_named_and_positions_become_ids() {
        let out = encode_frame(r#"{"type":"snapshot","position":{"epoch":"e","pos":4},"rows":[]}"#, true);
        assert!(out.starts_with("event: snapshot\nid: e:4\ndata: {"), "{out}");
        let out = encode_frame(
            r#"{"type":"reset","reason":"beyond_retention","position":{"epoch":"e","pos":9},"message":"m"}"#,
            true,
        );
        assert!(out.starts_with("event: reset\ndata: "), "a reset moves nothing: {out}");
    }

    #[test]
    fn hello_sets_an_id_only_when_the_stream_continues_after_it() {
        let hello =
            r#"{"type":"hello","protocol":1,"server_id":"s","max_frame_bytes":1,"position":{"epoch":"e","pos":9}}"#;
        assert!(encode_frame(hello, true).starts_with("event: hello\nid: e:9\ndata: {"));
        // A resume replays from before e:9 first: an id of e:9 would skip that replay on a reconnect.
        assert!(encode_frame(hello, false).starts_with("event: hello\ndata: {"));
        let subscribed = r#"{"type":"subscribed","position":{"epoch":"e","pos":12}}"#;
        assert!(encode_frame(subscribed, false).starts_with("event: subscribed\nid: e:12\n"));
    }

    #[test]
    fn heartbeats_are_comments_and_closes_say_why() {
        assert_eq!(encode(&Message::Ping(Bytes::new()), true).unwrap(), ": heartbeat\n\n");
        let close = Message::Close(Some(CloseFrame { code: 4011.into(), reason: Utf8Bytes::from("token expired") }));
        assert_eq!(
            encode(&close, true).unwrap(),
            "event: close\ndata: {\"code\":4011,\"reason\":\"token expired\"}\n\n"
        );
    }
}
