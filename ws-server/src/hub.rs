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

pub(crate) mod express;
mod gates;

use std::{
    collections::VecDeque,
    ops::Sub,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use protocol::{frames::ResetReason, log::Position};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::view::Lazy;
use gates::{Gate, Gates};
use protocol::filter::Filter;
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
    /// Set by the feed that yields it: the position of the event this feed yielded before it.
    /// The feed saw every event between the two, and none was for its connection (a gated
    /// feed skips those), so a connection at or past `after` may take this one as the next.
    pub(crate) after: Option<Cursor>,
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
pub(crate) struct Totals {
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
    /// An event's WebSocket frame (`express`); its payload is the event's `frame`.
    wire: bytes::Bytes,
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
    /// The slot of the item after `taken`: `Ok(None)` when there is none yet, `Err(())` when it
    /// already left the ring.
    fn after(&self, taken: Totals) -> Result<Option<&Slot>, ()> {
        if self.base.items > taken.items {
            return Err(());
        }
        // Items base+1 ..= head are slots[0 ..]; the one wanted is taken+1.
        let index = usize::try_from(taken.items - self.base.items).expect("the ring fits in memory");
        Ok(self.slots.get(index))
    }

    fn push(&mut self, mut item: Item, bound: Bound) {
        let (bytes, wire) = match &mut item {
            Item::Event(e) => {
                // Framed once for every client; the event's text becomes a view of the frame.
                let wire = express::text_frame(e.frame.as_bytes());
                let payload = wire.slice(wire.len() - e.frame.len()..);
                e.frame = Utf8Bytes::try_from(payload).expect("the frame's payload is the event's text");
                (e.frame.len() as u64, wire)
            }
            Item::Break(_) => (0, bytes::Bytes::new()),
        };
        let events = u64::from(matches!(item, Item::Event(_)));
        let h = self.head;
        self.head = Totals { items: h.items + 1, events: h.events + events, bytes: h.bytes + bytes };
        self.slots.push_back(Slot { through: self.head, item, wire });
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
    /// Gated feeds' filters: woken only for the events they match (`gates`).
    gates: Mutex<Gates>,
    /// Connections whose events the hub writes itself (`express`).
    pub(crate) express: express::Lanes,
}

impl Hub {
    pub(crate) fn new(bound: Bound) -> Self {
        let ring = Ring { slots: VecDeque::new(), base: Totals::default(), head: Totals::default(), newest: None };
        // One shard per core: each writes its share of the express lanes.
        let shards = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            ring: RwLock::new(ring),
            bound,
            pushed: Notify::new(),
            gates: Mutex::default(),
            express: express::Lanes::new(shards),
        }
    }

    /// Totals through the newest item.
    fn head(&self) -> Totals {
        self.ring.read().expect("hub lock is never poisoned").head
    }

    /// The item after `taken` and its frame, moving `taken` past it: `None` when there is
    /// none yet, `Some((None, _))` when it left the ring (`taken` moves to the newest item).
    fn take_framed(&self, taken: &mut Totals) -> Option<(Option<Item>, bytes::Bytes)> {
        let ring = self.ring.read().expect("hub lock is never poisoned");
        let Ok(slot) = ring.after(*taken) else {
            *taken = ring.head;
            return Some((None, bytes::Bytes::new()));
        };
        let slot = slot?;
        *taken = slot.through;
        Some((Some(slot.item.clone()), slot.wire.clone()))
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
        let gated = match &item {
            Item::Event(event) => Some(event.clone()),
            Item::Break(_) => None,
        };
        let number = {
            let mut ring = self.ring.write().expect("hub lock is never poisoned");
            if cursor.is_some() {
                ring.newest = cursor;
            }
            ring.push(item, self.bound);
            ring.head.items
        };
        {
            let mut gates = self.gates.lock().expect("gates lock is never poisoned");
            if !gates.is_empty() {
                let cap = usize::try_from(self.bound.events).unwrap_or(usize::MAX).saturating_add(1);
                match &gated {
                    // Parsed once here for every gated connection (and kept for their views).
                    Some(event) => gates.offer_event(number, event.parsed.get(&event.frame), cap),
                    None => gates.offer_all(number, cap),
                }
            }
        }
        self.pushed.notify_waiters();
    }

    /// A new connection's view of the stream, and the position it starts after: the first
    /// item the feed yields comes right after that position (`None`: no event yet).
    pub(crate) fn subscribe(&self) -> (Feed<'_>, Option<Cursor>) {
        let ring = self.ring.read().expect("hub lock is never poisoned");
        (Feed { hub: self, taken: ring.head, gate: None, last: ring.newest.clone() }, ring.newest.clone())
    }
}

/// How often a gated feed whose send is blocked looks whether its items left the ring.
const GATED_OVERFLOW_CHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// A gated feed's registration.
#[derive(Debug)]
struct Gated {
    gate: Arc<Gate>,
    keys: Vec<u64>,
}

/// One connection's place in the hub.
#[derive(Debug)]
pub(crate) struct Feed<'a> {
    hub: &'a Hub,
    /// Totals through the last item taken (or where the feed started).
    taken: Totals,
    /// `Some`: woken only for the items its filters match.
    gate: Option<Gated>,
    /// The position of the last event yielded (or where the feed started, or `None` after it
    /// skipped items without looking): what the next event's `after` says.
    last: Option<Cursor>,
}

impl Drop for Feed<'_> {
    fn drop(&mut self) {
        if let Some(gated) = self.gate.take() {
            self.hub.gates.lock().expect("gates lock is never poisoned").unregister(&gated.gate, &gated.keys);
        }
    }
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
            if let Some(gate) = self.gate.as_ref().map(|g| g.gate.clone()) {
                // A permit is kept by `notify_one`: an offer between the look and the wait is not lost.
                // (The waits are outside the matches: a scrutinee's temporary would be held
                // across them, in every waiting connection's state.)
                match self.next() {
                    Ok(item) => return Ok(item),
                    Err(Some(lag)) => return Err(lag),
                    Err(None) => {}
                }
                gate.notify.notified().await;
                continue;
            }
            let pushed = self.hub.pushed.notified();
            tokio::pin!(pushed);
            // Registered before looking, so a push between the look and the wait still wakes us.
            pushed.as_mut().enable();
            match self.next() {
                Ok(item) => return Ok(item),
                Err(Some(lag)) => return Err(lag),
                Err(None) => {}
            }
            pushed.await;
        }
    }

    /// Resolves once this feed's queue has passed a bound, without taking anything: for a
    /// connection whose send is blocked. The next `recv` reports the same lag.
    ///
    /// # Cancel safety
    /// Cancel-safe: it only looks.
    pub(crate) async fn overflowed(&self) -> Lag {
        if let Some(gated) = &self.gate {
            loop {
                if let Some(lag) = self.gated_overflow(gated) {
                    return lag;
                }
                // Its items leave the ring when other connections' events are pushed, which do
                // not wake it: look again now and then while the send is blocked. Taking the
                // permit is harmless: `recv` looks at the queue before it waits.
                let _ = tokio::time::timeout(GATED_OVERFLOW_CHECK, gated.gate.notify.notified()).await;
            }
        }
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

    /// Where the feed stands when it has taken every item and is not gated (what an express
    /// lane continues from); `None` otherwise.
    pub(crate) fn caught_up(&self) -> Option<Totals> {
        let head = self.hub.head();
        (self.gate.is_none() && head.items == self.taken.items).then_some(self.taken)
    }

    /// Continues after the item `upto` (where an express lane stopped), whose event's
    /// position, or the last one before it, is `last`.
    pub(crate) fn resume_at(&mut self, upto: Totals, last: Option<Cursor>) {
        self.taken = upto;
        self.last = last;
    }

    /// Moves to the newest item, leaving everything before it untaken (the caller reads it
    /// from the replay log).
    pub(crate) fn skip_to_newest(&mut self) {
        self.taken = self.hub.ring.read().expect("hub lock is never poisoned").head;
        self.last = None;
        if let Some(gated) = &self.gate {
            gated.gate.items.lock().expect("gate lock is never poisoned").clear();
        }
    }

    /// Sets which events wake this feed: `Some(filters)` only those matching one of them (an
    /// empty list: only breaks), `None` every event. Returns the newest position as of the
    /// change: events after it are offered by the new filters.
    pub(crate) fn gate_on(&mut self, filters: Option<&[&Filter]>) -> Option<Cursor> {
        let mut gates = self.hub.gates.lock().expect("gates lock is never poisoned");
        match (filters, self.gate.take()) {
            (Some(filters), gated) => {
                let gated = gated.unwrap_or_else(|| Gated { gate: Arc::default(), keys: Vec::new() });
                let keys = gates.register(&gated.gate, &gated.keys, filters);
                self.gate = Some(Gated { gate: gated.gate, keys });
            }
            (None, Some(gated)) => {
                gates.unregister(&gated.gate, &gated.keys);
                // What it skipped while gated was never looked at: the connection finds the gap
                // against its cursor and reads it from the log.
                self.skip_to_newest();
            }
            (None, None) => {}
        }
        self.hub.ring.read().expect("hub lock is never poisoned").newest.clone()
    }

    /// A gated feed's overflow: its oldest matched item left the ring before it was taken.
    fn gated_overflow(&self, gated: &Gated) -> Option<Lag> {
        let items = gated.gate.items.lock().expect("gate lock is never poisoned");
        let first = *items.front()?;
        let ring = self.hub.ring.read().expect("hub lock is never poisoned");
        (first > self.taken.items && first <= ring.base.items)
            .then(|| Lag { events: items.len() as u64, bytes: (ring.head - ring.base).bytes })
    }

    /// What this feed has not taken yet.
    #[cfg(test)]
    fn lag(&self) -> Lag {
        self.hub.ring.read().expect("hub lock is never poisoned").head - self.taken
    }

    /// Takes the next item: `Err(None)` when there is none, `Err(Some(lag))` when it left the
    /// ring (this feed overflowed; it moves to the newest item).
    fn next(&mut self) -> Result<Item, Option<Lag>> {
        let item = match &self.gate {
            Some(gated) => self.next_gated(&gated.gate.clone()),
            None => self.next_item(),
        }?;
        Ok(self.vouch(item))
    }

    /// Notes where the yielded item leaves this feed, and what the event before it was.
    fn vouch(&mut self, item: Item) -> Item {
        match item {
            Item::Event(mut event) => {
                event.after = self.last.take();
                self.last = event.cursor().or_else(|| event.after.clone());
                Item::Event(event)
            }
            Item::Break(brk) => {
                self.last = Some(brk.resume.clone());
                Item::Break(brk)
            }
        }
    }

    /// The next item its gate was offered.
    fn next_gated(&mut self, gate: &Gate) -> Result<Item, Option<Lag>> {
        let mut items = gate.items.lock().expect("gate lock is never poisoned");
        let ring = self.hub.ring.read().expect("hub lock is never poisoned");
        while let Some(&n) = items.front() {
            if n <= self.taken.items {
                items.pop_front(); // from before the feed last moved
                continue;
            }
            if n <= ring.base.items {
                let lag = Lag { events: items.len() as u64, bytes: (ring.head - ring.base).bytes };
                items.clear();
                self.taken = ring.head;
                self.last = None;
                return Err(Some(lag));
            }
            let index = usize::try_from(n - ring.base.items - 1).expect("the ring fits in memory");
            let slot = ring.slots.get(index).ok_or(None)?;
            items.pop_front();
            self.taken = slot.through;
            return Ok(slot.item.clone());
        }
        Err(None)
    }

    fn next_item(&mut self) -> Result<Item, Option<Lag>> {
        let ring = self.hub.ring.read().expect("hub lock is never poisoned");
        let Ok(slot) = ring.after(self.taken) else {
            let lag = ring.head - self.taken;
            self.taken = ring.head;
            self.last = None;
            return Err(Some(lag));
        };
        let slot = slot.ok_or(None)?;
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
            after: None,
        }
    }

    fn sized(pos: u64, bytes: usize) -> Event {
        Event {
            epoch: Some("e".into()),
            pos: Some(pos),
            frame: Utf8Bytes::from("x".repeat(bytes)),
            changed_at: None,
            parsed: Lazy::default(),
            after: None,
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
            after: None,
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

    fn row(pos: u64, customer: &str) -> Event {
        let frame = format!(
            r#"{{"type":"event","epoch":"e","pos":{pos},"table":"orders","operation":"INSERT","order":{{"id":{pos},"customer":"{customer}"}}}}"#
        );
        Event {
            epoch: Some("e".into()),
            pos: Some(pos),
            changed_at: None,
            frame: frame.into(),
            parsed: Lazy::default(),
            after: None,
        }
    }

    fn customer(c: &str) -> Filter {
        Filter::parse([format!("customer=eq.{c}").as_str()]).unwrap()
    }

    #[test]
    fn a_gated_feed_gets_only_its_matches_and_what_it_skipped_is_vouched_for() {
        let hub = Hub::new(Bound { events: 8, bytes: UNBOUNDED });
        hub.publish(row(1, "x"));
        let (mut bob, _) = hub.subscribe();
        let start = bob.gate_on(Some(&[&customer("bob")]));
        assert_eq!(start.map(|c| c.pos), Some(1));
        for (pos, c) in [(2, "al"), (3, "bob"), (4, "al"), (5, "al"), (6, "al"), (7, "al"), (8, "bob")] {
            hub.publish(row(pos, c));
        }
        let Ok(Item::Event(first)) = bob.try_recv() else { panic!("bob's first event") };
        assert_eq!((first.pos, first.after.map(|a| a.pos)), (Some(3), Some(1)));
        let Ok(Item::Event(second)) = bob.try_recv() else { panic!("bob's second event") };
        assert_eq!((second.pos, second.after.map(|a| a.pos)), (Some(8), Some(3)), "4..=7 skipped, vouched for");
        assert_eq!(bob.try_recv().map(pos), Err(TryRecvError::Empty));
        assert_eq!(bob.gate.as_ref().unwrap().gate.items.lock().unwrap().len(), 0, "only matches were offered");
    }

    #[test]
    fn an_idle_gated_feed_never_overflows_and_breaks_reach_it() {
        let hub = Hub::new(Bound { events: 2, bytes: UNBOUNDED });
        let (mut quiet, _) = hub.subscribe();
        quiet.gate_on(Some(&[&customer("nobody")]));
        for pos in 1..=50 {
            hub.publish(row(pos, "al"));
        }
        assert_eq!(quiet.try_recv().map(pos), Err(TryRecvError::Empty));
        let head = Position { epoch: "f".into(), pos: 9 };
        hub.publish_break(Break { reason: ResetReason::HistoryLost, resume: Cursor::new("f".into(), 3), head });
        assert_eq!(quiet.try_recv().map(pos), Ok(3), "a break reaches every feed");
    }

    #[tokio::test]
    async fn a_gated_feed_that_falls_behind_on_its_matches_overflows() {
        let hub = Hub::new(Bound { events: 3, bytes: UNBOUNDED });
        let (mut bob, _) = hub.subscribe();
        bob.gate_on(Some(&[&customer("bob")]));
        hub.publish(row(1, "bob"));
        let lag = {
            let noticed = bob.overflowed();
            tokio::pin!(noticed);
            assert!(futures_util::poll!(noticed.as_mut()).is_pending(), "its match is still in the ring");
            for pos in 2..=5 {
                hub.publish(row(pos, "al"));
            }
            tokio::time::timeout(std::time::Duration::from_secs(5), noticed).await.expect("noticed")
        };
        assert_eq!(lag.events, 1);
        assert!(matches!(bob.try_recv(), Err(TryRecvError::Lagged(1))));
        hub.publish(row(6, "bob"));
        assert_eq!(bob.try_recv().map(pos), Ok(6), "it continues with the newest");
    }

    #[test]
    fn ungating_skips_to_the_newest_and_drops_the_registration() {
        let hub = Hub::new(Bound { events: 8, bytes: UNBOUNDED });
        let (mut feed, _) = hub.subscribe();
        feed.gate_on(Some(&[&customer("bob")]));
        hub.publish(row(1, "al"));
        assert_eq!(feed.gate_on(None).map(|c| c.pos), Some(1));
        assert!(hub.gates.lock().unwrap().is_empty());
        hub.publish(row(2, "al"));
        let Ok(Item::Event(next)) = feed.try_recv() else { panic!("every event now") };
        assert_eq!((next.pos, next.after), (Some(2), None), "nothing vouched for across the switch");
        drop(feed);
    }

    /// What one event costs the replica as gated subscriptions grow: the push (parse once,
    /// index lookup, offers) and the matched feeds taking their items. Run with
    /// `cargo test --release -p ws-server --lib publish_cost -- --ignored --nocapture`
    /// (figures in docs/filters-bench.md).
    #[test]
    #[ignore = "a benchmark: prints figures, asserts nothing"]
    #[allow(clippy::print_stdout, reason = "a benchmark prints its table")]
    fn publish_cost_as_gated_subscriptions_grow() {
        use std::time::Instant;
        println!("| gated feeds | each event matches | per event (push + matched feeds take it) |");
        println!("|---:|---:|---:|");
        for feeds in [1usize, 100, 1_000, 10_000, 100_000] {
            let hub = Hub::new(Bound { events: 1024, bytes: UNBOUNDED });
            let filters: Vec<Filter> = (0..feeds).map(|i| customer(&format!("c{i}"))).collect();
            let mut rxs: Vec<Feed<'_>> = filters
                .iter()
                .map(|f| {
                    let (mut rx, _) = hub.subscribe();
                    rx.gate_on(Some(&[f]));
                    rx
                })
                .collect();
            let events = 20_000u64;
            let started = Instant::now();
            for pos in 1..=events {
                let target = (pos as usize * 7919) % feeds;
                hub.publish(row(pos, &format!("c{target}")));
                assert!(rxs[target].try_recv().is_ok());
            }
            let per = started.elapsed().as_nanos() as f64 / events as f64;
            println!("| {feeds} | 1 | {:.2} µs |", per / 1000.0);
        }
        // For comparison: ungated feeds, each of which looks at every event.
        for feeds in [1usize, 100, 1_000, 10_000] {
            let hub = Hub::new(Bound { events: 1024, bytes: UNBOUNDED });
            let mut rxs: Vec<Feed<'_>> = (0..feeds).map(|_| hub.subscribe().0).collect();
            let events = 2_000u64;
            let started = Instant::now();
            for pos in 1..=events {
                hub.publish(row(pos, "c0"));
                for rx in &mut rxs {
                    assert!(rx.try_recv().is_ok());
                }
            }
            let per = started.elapsed().as_nanos() as f64 / events as f64;
            println!("| ungated: {feeds} | all | {:.2} µs |", per / 1000.0);
        }
    }
}
