//! The hub: one broadcast ring per replica that every connection reads from.
//!
//! Each event is stored once, as shared bytes (`Utf8Bytes` is reference-counted) beside its
//! position (the epoch is a shared `Arc<str>`), and every connection sends those same bytes: no
//! per-client copy or re-encode, and no per-client parse. The ring's capacity is each
//! connection's queue bound: a connection that falls that far behind observes
//! `RecvError::Lagged` and applies its slow-consumer policy, without slowing anyone else.
//!
//! The subscriber keeps the ring gap-free within an epoch (it fills gaps from the replay log
//! before forwarding). When it cannot, because Redis lost its history or the log was trimmed
//! past what the replica missed, it says so with a [`Break`] in the ring, so every connection
//! learns where the stream continues and protocol clients are told to take a snapshot.

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use axum::extract::ws::Utf8Bytes;
use protocol::{frames::ResetReason, log::Position};
use tokio::sync::broadcast;

/// A position with a shared epoch name, cheap to copy around per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) epoch: Arc<str>,
    pub(crate) pos: u64,
}

impl Cursor {
    pub(crate) fn new(epoch: Arc<str>, pos: u64) -> Self {
        Self { epoch, pos }
    }

    pub(crate) fn to_position(&self) -> Position {
        Position { epoch: self.epoch.to_string(), pos: self.pos }
    }
}

impl From<Position> for Cursor {
    fn from(p: Position) -> Self {
        Self { epoch: p.epoch.into(), pos: p.pos }
    }
}

/// One event as the hub carries it.
#[derive(Debug, Clone)]
pub(crate) struct Event {
    /// The history it belongs to; `None` for frames of a pre-log publisher.
    pub(crate) epoch: Option<Arc<str>>,
    /// Its position; `None` for frames of a pre-log publisher (forwarded, never placed).
    pub(crate) pos: Option<u64>,
    /// When the change was recorded (the frame's `ts`), if it says.
    pub(crate) changed_at: Option<SystemTime>,
    /// The frame, exactly as the publisher wrote it.
    pub(crate) frame: Utf8Bytes,
}

impl Event {
    /// Where the event sits in the history, if it carries a position.
    pub(crate) fn cursor(&self) -> Option<Cursor> {
        Some(Cursor::new(self.epoch.clone()?, self.pos?))
    }
}

/// The replica's stream has a hole it cannot fill: events up to here are gone for it.
#[derive(Debug)]
pub(crate) struct Break {
    pub(crate) reason: ResetReason,
    /// The stream continues with the event after this position.
    pub(crate) resume: Cursor,
    /// The newest position in Redis when the hole was found.
    pub(crate) head: Position,
}

/// What the ring carries.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Event(Event),
    Break(Arc<Break>),
}

/// Fan-out of event frames to every connection of this replica.
#[derive(Debug)]
pub(crate) struct Hub {
    tx: broadcast::Sender<Item>,
    /// The newest position put in the ring; updated under the lock that also orders sends,
    /// so a new receiver and the position it starts after are read together.
    newest: Mutex<Option<Cursor>>,
}

impl Hub {
    pub(crate) fn new(capacity: usize) -> Self {
        Self { tx: broadcast::channel(capacity).0, newest: Mutex::new(None) }
    }

    /// Sends one event to every connection.
    pub(crate) fn publish(&self, event: Event) {
        let mut newest = self.newest.lock().expect("hub lock is never poisoned");
        if let Some(cursor) = event.cursor() {
            *newest = Some(cursor);
        }
        // No connections is fine: the event simply has no audience on this replica.
        let _ = self.tx.send(Item::Event(event));
    }

    /// Tells every connection that the stream jumps to `brk.resume`.
    pub(crate) fn publish_break(&self, brk: Break) {
        let mut newest = self.newest.lock().expect("hub lock is never poisoned");
        *newest = Some(brk.resume.clone());
        // No connections is fine, as above.
        let _ = self.tx.send(Item::Break(Arc::new(brk)));
    }

    /// A new connection's view of the stream, and the position it starts after: the first
    /// item the receiver yields comes right after that position (`None`: no event yet).
    pub(crate) fn subscribe(&self) -> (broadcast::Receiver<Item>, Option<Cursor>) {
        let newest = self.newest.lock().expect("hub lock is never poisoned");
        (self.tx.subscribe(), newest.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pos: u64) -> Event {
        Event { epoch: Some("e".into()), pos: Some(pos), changed_at: None, frame: Utf8Bytes::from(format!("{pos}")) }
    }

    #[test]
    fn a_receiver_starts_right_after_the_position_it_is_given() {
        let hub = Hub::new(8);
        assert_eq!(hub.subscribe().1, None, "no event yet");
        hub.publish(event(1));
        let (mut rx, after) = hub.subscribe();
        assert_eq!(after, Some(Cursor::new("e".into(), 1)));
        hub.publish(Event { epoch: None, pos: None, changed_at: None, frame: "legacy".into() });
        hub.publish(event(2));
        assert_eq!(hub.subscribe().1.map(|c| c.pos), Some(2), "frames without a position do not move it");
        let Ok(Item::Event(first)) = rx.try_recv() else { panic!("an event") };
        assert_eq!(first.frame.as_str(), "legacy");
    }
}
