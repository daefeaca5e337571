//! The hub: one broadcast ring per replica that every connection reads from.
//!
//! Each event is stored once, as shared bytes (`Utf8Bytes` is reference-counted), and every
//! connection sends those same bytes: no per-client copy or re-encode. The ring's capacity is
//! each connection's queue bound: a connection that falls that far behind observes
//! `RecvError::Lagged` and is closed as a slow consumer, without slowing anyone else.

use axum::extract::ws::Utf8Bytes;
use tokio::sync::broadcast;

/// Fan-out of event frames to every connection of this replica.
#[derive(Debug)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Utf8Bytes>,
}

impl Hub {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { tx: broadcast::channel(capacity).0 }
    }

    /// Sends one event frame to every connection.
    pub(crate) fn publish(&self, frame: Utf8Bytes) {
        // No connections is fine: the event simply has no audience on this replica.
        let _ = self.tx.send(frame);
    }

    /// A new connection's view of the stream, starting with the next event.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Utf8Bytes> {
        self.tx.subscribe()
    }
}
