//! The hub: one ring of recent events per replica that every connection reads from, and the
//! bound on how far behind it a connection may fall.
//!
//! Each event is stored once, as shared bytes (`Utf8Bytes` is reference-counted) beside its
//! position (the epoch is a shared `Arc<str>`), and every connection sends those same bytes: no
//! per-client copy or re-encode, and no per-client parse.
//!
//! **The queue bound.** Every item carries the hub's running totals through it (items, events,
//! bytes), and a connection's [`Feed`] remembers the totals through the last item it took. What
//! it has not taken yet is its queue: `head - taken`, in events and in bytes. The ring keeps
//! only the newest items that fit both bounds (`WS_QUEUE_CAPACITY` events, `WS_QUEUE_BYTES`
//! bytes, but always the newest item, whatever its size), so an item leaves the ring exactly
//! when every queue still holding it passed a bound: a feed whose next item is gone has
//! overflowed, and says so ([`Lag`]). The bounds are exact (nothing is rounded), the replica's
//! memory for the ring is at most `WS_QUEUE_BYTES` plus one event however many connections
//! lag, and a connection can see that it overflowed without taking anything
//! ([`Feed::overflowed`]), which is how a connection stuck in a blocked send notices.
//!
//! The subscriber keeps the ring gap-free within an epoch (it fills gaps from the replay log
//! before forwarding). When it cannot, because Redis lost its history or the log was trimmed
//! past what the replica missed, it says so with a [`Break`] in the ring, so every connection
//! learns where the stream continues and protocol clients are told to take a snapshot.

use std::{
    collections::VecDeque,
    ops::Sub,
    sync::{Arc, RwLock},
    time::SystemTime,
};

use axum::extract::ws::Utf8Bytes;
use protocol::{frames::ResetReason, log::Position};

use crate::view::Lazy;
use tokio::sync::{Notify, broadcast::error::TryRecvError};

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
    /// Its rows, parsed by the first connection whose subscriptions need them.
    pub(crate) parsed: Lazy,
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

/// How far behind the hub a connection may fall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bound {
    /// Events not yet taken (`WS_QUEUE_CAPACITY`).
    pub(crate) events: u64,
    /// Bytes of event frames not yet taken (`WS_QUEUE_BYTES`); the newest item always fits.
    pub(crate) bytes: u64,
}

/// A connection's queue: what the hub holds that it has not taken yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lag {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
}

/// The hub's running totals through some item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals {
    /// Items (events and breaks): a feed's next item is the one numbered `items + 1`.
    items: u64,
    events: u64,
    bytes: u64,
}

impl Sub for Totals {
    type Output = Lag;
    fn sub(self, taken: Totals) -> Lag {
        Lag { events: self.events - taken.events, bytes: self.bytes - taken.bytes }
    }
}

#[derive(Debug)]
struct Slot {
    /// Totals through this item.
    through: Totals,
    item: Item,
}

#[derive(Debug)]
struct Ring {
    slots: VecDeque<Slot>,
    /// Totals through the last item that left the ring (the one before `slots[0]`).
    base: Totals,
    /// Totals through the newest item.
    head: Totals,
    /// The newest position put in the ring, read with a new feed's start.
    newest: Option<Cursor>,
}

impl Ring {
    fn push(&mut self, item: Item, bound: Bound) {
        let bytes = match &item {
            Item::Event(e) => e.frame.len() as u64,
            Item::Break(_) => 0,
        };
        let events = u64::from(matches!(item, Item::Event(_)));
        let h = self.head;
        self.head = Totals { items: h.items + 1, events: h.events + events, bytes: h.bytes + bytes };
        self.slots.push_back(Slot { through: self.head, item });
        // A feed about to take `slots[0]` holds the whole ring in its queue; drop the oldest
        // while that passes a bound, keeping the newest item whatever its size.
        while self.slots.len() > 1 {
            let lag = self.head - self.base;
            if lag.events <= bound.events && lag.bytes <= bound.bytes {
                break;
            }
            let gone = self.slots.pop_front().expect("the ring holds more than one item");
            self.base = gone.through;
        }
    }
}

/// Fan-out of event frames to every connection of this replica.
#[derive(Debug)]
pub(crate) struct Hub {
    ring: RwLock<Ring>,
    bound: Bound,
    /// Woken on every push, for feeds waiting for an item or for their queue to overflow.
    pushed: Notify,
}

impl Hub {
    pub(crate) fn new(bound: Bound) -> Self {
        let ring = Ring { slots: VecDeque::new(), base: Totals::default(), head: Totals::default(), newest: None };
        Self { ring: RwLock::new(ring), bound, pushed: Notify::new() }
    }

    /// Sends one event to every connection.
    pub(crate) fn publish(&self, event: Event) {
        let cursor = event.cursor();
        self.push(Item::Event(event), cursor);
    }

    /// Tells every connection that the stream jumps to `brk.resume`.
    pub(crate) fn publish_break(&self, brk: Break) {
        let cursor = Some(brk.resume.clone());
        self.push(Item::Break(Arc::new(brk)), cursor);
    }

    fn push(&self, item: Item, cursor: Option<Cursor>) {
        {
            let mut ring = self.ring.write().expect("hub lock is never poisoned");
            if cursor.is_some() {
                ring.newest = cursor;
            }
            ring.push(item, self.bound);
        }
        self.pushed.notify_waiters();
    }

    /// A new connection's view of the stream, and the position it starts after: the first
    /// item the feed yields comes right after that position (`None`: no event yet).
    pub(crate) fn subscribe(&self) -> (Feed<'_>, Option<Cursor>) {
        let ring = self.ring.read().expect("hub lock is never poisoned");
        (Feed { hub: self, taken: ring.head }, ring.newest.clone())
    }
}

/// One connection's place in the hub.
#[derive(Debug)]
pub(crate) struct Feed<'a> {
    hub: &'a Hub,
    /// Totals through the last item taken (or where the feed started).
    taken: Totals,
}

impl Feed<'_> {
    /// The next item, or `Lagged(events)` when this feed's queue passed a bound; the feed
    /// then continues at the newest item (what it skipped is in the replay log). Never
    /// `Closed`: the hub lives as long as the connections. Same contract as a broadcast
    /// receiver's `try_recv`.
    pub(crate) fn try_recv(&mut self) -> Result<Item, TryRecvError> {
        self.next().map_err(|lag| lag.map_or(TryRecvError::Empty, |lag| TryRecvError::Lagged(lag.events)))
    }

    /// Waits for the next item; `Err` when this feed's queue passed a bound (it then
    /// continues at the newest item).
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing is taken until the item is returned.
    pub(crate) async fn recv(&mut self) -> Result<Item, Lag> {
        loop {
            let pushed = self.hub.pushed.notified();
            tokio::pin!(pushed);
            // Registered before looking, so a push between the look and the wait still wakes us.
            pushed.as_mut().enable();
            match self.next() {
                Ok(item) => return Ok(item),
                Err(Some(lag)) => return Err(lag),
                Err(None) => pushed.await,
            }
        }
    }

    /// Resolves once this feed's queue has passed a bound, without taking anything: for a
    /// connection whose send is blocked. The next `recv` reports the same lag.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only looks.
    pub(crate) async fn overflowed(&self) -> Lag {
        loop {
            let pushed = self.hub.pushed.notified();
            tokio::pin!(pushed);
            pushed.as_mut().enable();
            {
                let ring = self.hub.ring.read().expect("hub lock is never poisoned");
                if ring.base.items > self.taken.items {
                    return ring.head - self.taken;
                }
            }
            pushed.await;
        }
    }

    /// Moves to the newest item, leaving everything before it untaken (the caller reads it
    /// from the replay log).
    pub(crate) fn skip_to_newest(&mut self) {
        self.taken = self.hub.ring.read().expect("hub lock is never poisoned").head;
    }

    /// What this feed has not taken yet.
    #[cfg(test)]
    fn lag(&self) -> Lag {
        self.hub.ring.read().expect("hub lock is never poisoned").head - self.taken
    }

    /// Takes the next item: `Err(None)` when there is none, `Err(Some(lag))` when it left the
    /// ring (this feed overflowed; it moves to the newest item).
    fn next(&mut self) -> Result<Item, Option<Lag>> {
        let ring = self.hub.ring.read().expect("hub lock is never poisoned");
        if ring.base.items > self.taken.items {
            let lag = ring.head - self.taken;
            self.taken = ring.head;
            return Err(Some(lag));
        }
        // Items base+1 ..= head are slots[0 ..]; ours is taken+1.
        let index = usize::try_from(self.taken.items - ring.base.items).expect("the ring fits in memory");
        let slot = ring.slots.get(index).ok_or(None)?;
        self.taken = slot.through;
        Ok(slot.item.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn event(pos: u64) -> Event {
        Event {
            epoch: Some("e".into()),
            pos: Some(pos),
            changed_at: None,
            frame: Utf8Bytes::from(format!("{pos}")),
            parsed: Lazy::default(),
        }
    }

    fn sized(pos: u64, bytes: usize) -> Event {
        Event {
            epoch: Some("e".into()),
            pos: Some(pos),
            frame: Utf8Bytes::from("x".repeat(bytes)),
            changed_at: None,
            parsed: Lazy::default(),
        }
    }

    fn pos(item: Item) -> u64 {
        match item {
            Item::Event(e) => e.pos.expect("test events have positions"),
            Item::Break(b) => b.resume.pos,
        }
    }

    const UNBOUNDED: u64 = u64::MAX;

    #[test]
    fn a_feed_starts_right_after_the_position_it_is_given() {
        let hub = Hub::new(Bound { events: 8, bytes: UNBOUNDED });
        assert_eq!(hub.subscribe().1, None, "no event yet");
        hub.publish(event(1));
        let (mut rx, after) = hub.subscribe();
        assert_eq!(after, Some(Cursor::new("e".into(), 1)));
        hub.publish(Event {
            epoch: None,
            pos: None,
            changed_at: None,
            frame: "legacy".into(),
            parsed: Lazy::default(),
        });
        hub.publish(event(2));
        assert_eq!(hub.subscribe().1.map(|c| c.pos), Some(2), "frames without a position do not move it");
        let Ok(Item::Event(first)) = rx.try_recv() else { panic!("an event") };
        assert_eq!(first.frame.as_str(), "legacy");
        assert_eq!(rx.try_recv().map(pos), Ok(2));
        assert_eq!(rx.try_recv().map(pos), Err(TryRecvError::Empty));
    }

    #[test]
    fn the_event_bound_is_exact_not_rounded() {
        // 5 is not a power of two: a broadcast channel would have allowed 8.
        let hub = Hub::new(Bound { events: 5, bytes: UNBOUNDED });
        let (mut rx, _) = hub.subscribe();
        for p in 1..=5 {
            hub.publish(event(p));
        }
        assert_eq!(rx.lag(), Lag { events: 5, bytes: 5 });
        assert_eq!(rx.try_recv().map(pos), Ok(1), "five queued events fit");
        hub.publish(event(6));
        hub.publish(event(7)); // now 2..=7 wait: six
        assert_eq!(rx.try_recv().map(pos), Err(TryRecvError::Lagged(6)));
        assert_eq!(rx.try_recv().map(pos), Err(TryRecvError::Empty), "it continues at the newest item");
        hub.publish(event(8));
        assert_eq!(rx.try_recv().map(pos), Ok(8));
    }

    #[test]
    fn the_byte_bound_is_exact_and_the_newest_event_always_fits() {
        let hub = Hub::new(Bound { events: UNBOUNDED, bytes: 100 });
        let (mut rx, _) = hub.subscribe();
        hub.publish(sized(1, 60));
        hub.publish(sized(2, 40));
        assert_eq!(rx.lag(), Lag { events: 2, bytes: 100 });
        assert_eq!(rx.try_recv().map(pos), Ok(1), "100 bytes fit in 100");
        assert_eq!(rx.try_recv().map(pos), Ok(2));

        // One event larger than the bound is still delivered to a feed that keeps up...
        hub.publish(sized(3, 500));
        assert_eq!(rx.try_recv().map(pos), Ok(3));
        // ...but a second one queued behind it passes the bound.
        hub.publish(sized(4, 500));
        hub.publish(sized(5, 1));
        assert_eq!(rx.try_recv().map(pos), Err(TryRecvError::Lagged(2)));
    }

    #[test]
    fn breaks_count_as_items_but_not_as_events_or_bytes() {
        let hub = Hub::new(Bound { events: 2, bytes: UNBOUNDED });
        let (mut rx, _) = hub.subscribe();
        hub.publish(event(1));
        let head = Position { epoch: "f".into(), pos: 9 };
        hub.publish_break(Break { reason: ResetReason::HistoryLost, resume: Cursor::new("f".into(), 3), head });
        hub.publish(event(4));
        assert_eq!(rx.lag(), Lag { events: 2, bytes: 2 });
        assert_eq!(hub.subscribe().1, Some(Cursor::new("e".into(), 4)));
        assert_eq!([rx.try_recv().map(pos), rx.try_recv().map(pos), rx.try_recv().map(pos)], [Ok(1), Ok(3), Ok(4)]);
    }

    #[tokio::test]
    async fn a_feed_that_takes_nothing_learns_that_it_overflowed() {
        let hub = Hub::new(Bound { events: 3, bytes: UNBOUNDED });
        let (mut rx, _) = hub.subscribe();
        hub.publish(event(1));
        assert_eq!(rx.recv().await.map(pos), Ok(1));
        for p in 2..=4 {
            hub.publish(event(p));
        }
        let lag = {
            let overflowed = rx.overflowed();
            tokio::pin!(overflowed);
            assert!(overflowed.as_mut().now_or_never().is_none(), "three queued events are within the bound");
            hub.publish(event(5));
            tokio::time::timeout(std::time::Duration::from_secs(5), overflowed).await.expect("woken by the push")
        };
        assert_eq!(lag, Lag { events: 4, bytes: 4 });
        assert_eq!(rx.recv().await.map(pos), Err(lag), "recv reports the same lag");
    }

    #[tokio::test]
    async fn recv_waits_for_the_next_push() {
        let hub = Arc::new(Hub::new(Bound { events: 3, bytes: UNBOUNDED }));
        let publisher = hub.clone();
        let (mut rx, _) = hub.subscribe();
        let push = tokio::spawn(async move {
            tokio::task::yield_now().await;
            publisher.publish(event(1));
        });
        let item = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.expect("woken by the push");
        assert_eq!(item.map(pos), Ok(1));
        push.await.expect("publisher task");
    }
}
