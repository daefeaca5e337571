//! Writing one frame to a client: with a deadline (`WS_SEND_TIMEOUT`), and for the live
//! stream while watching the connection's queue in the hub, so a blocked socket does not hide
//! a queue that passed its bound.
//!
//! A frame is written and flushed before the next one starts, so tungstenite's buffer never
//! holds more than that frame and a control frame.

use std::{future::poll_fn, time::Duration};

use futures_util::SinkExt;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use super::{End, Wire};
use crate::hub::Feed;

/// Sends with a deadline, so one stuck client never holds its task forever.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sender {
    send_timeout: Duration,
}

impl Sender {
    pub(super) fn new(send_timeout: Duration) -> Self {
        Self { send_timeout }
    }

    pub(super) async fn send(&self, ws: &mut Wire, msg: Message) -> Result<(), End> {
        match tokio::time::timeout(self.send_timeout, ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::SendFailed("write failed")),
            Err(_) => Err(End::SendFailed("send timed out")),
        }
    }

    /// [`Self::send`], returning `End::Overflow` as soon as `rx` overflows while the socket
    /// is blocked. The send's steps are taken one by one to know whether the frame went into
    /// the socket's buffer before that happened.
    pub(super) async fn send_watching(&self, ws: &mut Wire, rx: &Feed<'_>, msg: Message) -> Result<(), End> {
        let deadline = Instant::now() + self.send_timeout;
        // Giving up in the first step leaves the frame unsent; in the second, it stays in
        // tungstenite's buffer and goes out before anything sent after it.
        let ready = tokio::select! {
            biased;
            ready = poll_fn(|cx| ws.poll_ready_unpin(cx)) => ready,
            lag = rx.overflowed() => return Err(End::Overflow { lag, frame_queued: false }),
            () = sleep_until(deadline) => return Err(End::SendFailed("send timed out")),
        };
        ready.and_then(|()| ws.start_send_unpin(msg)).map_err(|_| End::SendFailed("write failed"))?;
        tokio::select! {
            biased;
            flushed = poll_fn(|cx| ws.poll_flush_unpin(cx)) => flushed.map_err(|_| End::SendFailed("write failed")),
            lag = rx.overflowed() => Err(End::Overflow { lag, frame_queued: true }),
            () = sleep_until(deadline) => Err(End::SendFailed("send timed out")),
        }
    }

    /// Flushes what waits to be written (the rest of an express lane's frame), with the
    /// deadline, as the second step of [`Self::send_watching`]: the frame counts as sent.
    pub(super) async fn flush_watching(&self, ws: &mut Wire, rx: &Feed<'_>) -> Result<(), End> {
        let deadline = Instant::now() + self.send_timeout;
        tokio::select! {
            biased;
            flushed = poll_fn(|cx| ws.poll_flush_unpin(cx)) => flushed.map_err(|_| End::SendFailed("write failed")),
            lag = rx.overflowed() => Err(End::Overflow { lag, frame_queued: true }),
            () = sleep_until(deadline) => Err(End::SendFailed("send timed out")),
        }
    }
}
