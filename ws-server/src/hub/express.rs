//! Express lanes: the hub writes each event's frame straight to the sockets of the connections
//! that are caught up and take every event, instead of waking one task per connection.
//!
//! A connection's task does everything else as before (handshake, replay, snapshots, client
//! frames, heartbeats, slow consumers); when it is idle and caught up it *hands over*: from then
//! on a shard (one task per core, each walking its share of the lanes) writes the connection's
//! events with one non-blocking `write` each, of bytes framed once per event for every client.
//! Whatever a shard cannot do simply (the socket did not take the whole frame, an event that
//! does not follow the connection's position, a break in the stream) it *hands back*: the lane
//! wakes the task, which continues from the lane's position with its own feed, exactly where
//! the shard stopped. A write by the task (a ping, a close, a pong tungstenite queued) takes
//! the lane back first, through [`LaneIo`], so the two never write at once and every frame is
//! whole on the wire.
//!
//! **Exactly once.** The lane records the hub item through which it was dealt with (`upto`):
//! the shard takes only the item right after it, and the task resumes its feed right after it.
//! A shard that had already walked past a lane when the lane was handed over would miss the
//! connection's next event: the handover looks at how far the shard got (`started`) after
//! publishing itself, and takes the lane straight back if the shard may have passed it (both
//! sides use sequentially consistent atomics, so one of them sees the other).

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll, ready},
    time::SystemTime,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::Notify,
};
use tokio_util::sync::CancellationToken;

use super::{Cursor, Event, Hub, Item, Totals};
use crate::stats::Stats;

/// One connection's lane, shared by its task, its transport ([`LaneIo`]) and a shard.
#[derive(Debug)]
pub(crate) struct Lane {
    /// Set while the shard writes this connection's events (and the task does not).
    express: AtomicBool,
    /// The connection ended: its shard drops the lane.
    closed: AtomicBool,
    /// The last write by the task left bytes in tungstenite's buffer: no handover until they
    /// are out.
    dirty: AtomicBool,
    state: Mutex<State>,
    /// The connection's task, woken when the shard hands the lane back.
    task: AtomicWaker,
    shard: usize,
}

#[derive(Debug, Default)]
struct State {
    /// The socket, until the connection ends (then the lane lets go of it at once, so the
    /// socket closes when the connection does, not when its shard next looks).
    tcp: Option<Arc<TcpStream>>,
    /// Totals through the last hub item dealt with for this connection: by the shard while
    /// express, or by the task's feed when it handed over.
    upto: Totals,
    /// The position of the last event sent.
    cursor: Option<Cursor>,
    /// The first position the shard sent since the last handover.
    first: Option<u64>,
    /// The part of a frame the socket did not take: written before anything else.
    rest: Bytes,
}

/// What the task takes back from the lane.
#[derive(Debug)]
pub(crate) struct Handback {
    /// Where the connection's feed continues.
    pub(crate) upto: Totals,
    /// The last position sent (the task's own if the shard sent nothing).
    pub(crate) cursor: Option<Cursor>,
    /// The first position the shard sent, if it sent any.
    pub(crate) first: Option<u64>,
    /// Part of a frame still waits to be written: flush before anything else.
    pub(crate) rest: bool,
}

impl Lane {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("lane lock is never poisoned")
    }

    /// Whether the shard writes this connection's events now.
    pub(crate) fn is_express(&self) -> bool {
        self.express.load(SeqCst)
    }

    /// Whether tungstenite's buffer holds bytes the socket has not taken.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(SeqCst)
    }

    /// Hands the connection to its shard: its feed took everything through `upto`, and the
    /// last position it sent is `cursor`. `false`: the shard may already have walked past
    /// the next item, so the task keeps the lane (and its feed yields that item).
    pub(crate) fn hand_over(&self, hub: &Hub, upto: Totals, cursor: Option<Cursor>) -> bool {
        {
            let mut state = self.lock();
            if !state.rest.is_empty() {
                return false;
            }
            state.upto = upto;
            state.cursor = cursor;
            state.first = None;
            self.express.store(true, SeqCst);
        }
        if hub.express.shards[self.shard].started.load(SeqCst) > upto.items {
            // Taken straight back: whatever the shard did meanwhile is in the handback.
            self.express.store(false, SeqCst);
            return false;
        }
        true
    }

    /// Takes the lane back (if the shard still has it) and says where the connection stands.
    pub(crate) fn take_back(&self) -> Handback {
        let state = self.lock();
        self.express.store(false, SeqCst);
        Handback { upto: state.upto, cursor: state.cursor.clone(), first: state.first, rest: !state.rest.is_empty() }
    }

    /// Resolves once the shard handed the lane back.
    pub(crate) fn poll_handed_back(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.task.register(cx.waker());
        if self.is_express() { Poll::Pending } else { Poll::Ready(()) }
    }

    /// The connection ended.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        self.express.store(false, SeqCst);
        self.closed.store(true, SeqCst);
        state.tcp = None;
    }

    /// The shard's part: offers the items the shard took, in order, to this lane, writing every
    /// frame the connection gets with one `writev`. Adds one to `sent[i]` for each item `i`
    /// the connection got. `scratch` is the shard's, reused from lane to lane.
    fn offer<'b>(&self, batch: &'b [Taken], sent: &mut [u64], scratch: &mut Scratch<'b>) {
        if !self.express.load(SeqCst) {
            return;
        }
        let mut state = self.lock();
        if !self.express.load(SeqCst) {
            return; // taken back meanwhile
        }
        // Items at or before `upto` were the task's (it handed over after them).
        let from = batch.partition_point(|t| t.through.items <= state.upto.items);
        let mut cursor = state.cursor.clone();
        let mut upto = state.upto;
        // Which items go out (index in `batch`), and whether the lane must go back after them.
        let Scratch { out, slices } = scratch;
        out.clear();
        slices.clear();
        let mut stop = false;
        for (i, taken) in batch.iter().enumerate().skip(from) {
            let event = match &taken.item {
                Item::Event(event) if taken.through.items == upto.items + 1 => event,
                // A break, or (never expected) an item the lane missed: the task's to handle.
                _ => {
                    stop = true;
                    break;
                }
            };
            match follows(cursor.as_ref(), event) {
                Follows::Next => {
                    out.push(i);
                    if let Some(at) = event.cursor() {
                        cursor = Some(at);
                    }
                }
                Follows::Sent => {}
                Follows::Gap => {
                    stop = true;
                    break;
                }
            }
            upto = taken.through;
        }
        let Some(tcp) = state.tcp.clone() else { return self.hand_back(state) };
        slices.extend(out.iter().map(|&i| std::io::IoSlice::new(&batch[i].wire)));
        let written = match slices.as_slice() {
            [] => Ok(0),
            [one] => tcp.try_write(one),
            many => tcp.try_write_vectored(many),
        };
        let Ok(mut n) = written else {
            // Blocked, or failed (the task meets the error on its own next write or read).
            return self.hand_back(state);
        };
        // The frames written whole, and the one written in part (which counts as sent: the
        // task writes its rest first); the connection stops after it.
        for &i in out.iter() {
            let taken = &batch[i];
            let len = taken.wire.len();
            let Item::Event(event) = &taken.item else { unreachable!("only events go out") };
            state.upto = taken.through;
            if let Some(at) = event.cursor() {
                state.first.get_or_insert(at.pos);
                state.cursor = Some(at);
            }
            sent[i] += 1;
            if n < len {
                state.rest = taken.wire.slice(n..);
                return self.hand_back(state);
            }
            n -= len;
        }
        // Everything went out: the lane stands after the last item it looked at.
        state.upto = upto;
        state.cursor = cursor;
        if stop {
            self.hand_back(state);
        }
    }

    fn hand_back(&self, state: MutexGuard<'_, State>) {
        self.express.store(false, SeqCst);
        drop(state);
        self.task.wake();
    }
}

/// Where an event stands against a connection's last position (what `socket::stream` decides
/// on too, before it looks at a gated feed's skips).
pub(crate) enum Follows {
    /// The next one to send (or an event with no position, forwarded as it comes).
    Next,
    /// At or before the position: already sent.
    Sent,
    /// Further ahead, or in another history: the log has what lies between.
    Gap,
}

pub(crate) fn follows(cursor: Option<&Cursor>, event: &Event) -> Follows {
    let (Some(epoch), Some(pos)) = (&event.epoch, event.pos) else {
        return Follows::Next; // a pre-log publisher's frame: forwarded as it comes
    };
    match cursor {
        None => Follows::Next,
        Some(c) if c.epoch != *epoch => Follows::Gap,
        Some(c) if pos <= c.pos => Follows::Sent,
        Some(c) if pos == c.pos + 1 => Follows::Next,
        Some(_) => Follows::Gap,
    }
}

/// A server's text frame around `payload`: FIN, opcode 1, unmasked (RFC 6455 §5.2), the same
/// bytes for every client.
pub(super) fn text_frame(payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(0x81);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// An item a shard took from the hub, with the totals through it and its frame.
struct Taken {
    item: Item,
    through: Totals,
    wire: Bytes,
}

/// What a shard reuses from lane to lane: which items go out, and their frames for `writev`.
#[derive(Default)]
struct Scratch<'b> {
    out: Vec<usize>,
    slices: Vec<std::io::IoSlice<'b>>,
}

/// The most items a shard takes at once (each lane gets them in one `writev`).
const BATCH_ITEMS: usize = 64;

/// The shards, and where new lanes go.
#[derive(Debug)]
pub(crate) struct Lanes {
    shards: Vec<Shard>,
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct Shard {
    /// Lanes registered since the shard last looked.
    incoming: Mutex<Vec<Arc<Lane>>>,
    changed: Notify,
    /// The number of the item the shard is walking (or walked last).
    started: AtomicU64,
}

impl Lanes {
    pub(super) fn new(shards: usize) -> Self {
        Self { shards: (0..shards.max(1)).map(|_| Shard::default()).collect(), next: AtomicUsize::new(0) }
    }

    /// A lane for a new connection on `tcp`, in one of the shards.
    pub(crate) fn register(&self, tcp: Arc<TcpStream>) -> Arc<Lane> {
        let shard = self.next.fetch_add(1, SeqCst) % self.shards.len();
        let lane = Arc::new(Lane {
            express: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dirty: AtomicBool::new(false),
            state: Mutex::new(State { tcp: Some(tcp), ..State::default() }),
            task: AtomicWaker::new(),
            shard,
        });
        let target = &self.shards[shard];
        target.incoming.lock().expect("lanes lock is never poisoned").push(lane.clone());
        target.changed.notify_one();
        lane
    }
}

/// How many lanes a shard writes to before it lets other tasks on its thread run.
const WALK_CHUNK: usize = 512;

/// Runs every shard until `shutdown`.
pub(crate) async fn run(hub: &Hub, stats: &Stats, shutdown: &CancellationToken) {
    let shards = (0..hub.express.shards.len()).map(|i| walk(hub, i, stats, shutdown));
    futures_util::future::join_all(shards).await;
}

/// One shard: takes every hub item in order and offers it to each of its lanes.
async fn walk(hub: &Hub, index: usize, stats: &Stats, shutdown: &CancellationToken) {
    let shard = &hub.express.shards[index];
    let mut lanes: Vec<Arc<Lane>> = Vec::new();
    let mut taken = hub.head();
    shard.started.store(taken.items, SeqCst);
    loop {
        let pushed = hub.pushed.notified();
        let changed = shard.changed.notified();
        tokio::pin!(pushed, changed);
        // Registered before looking, so a push or a registration in between still wakes us.
        pushed.as_mut().enable();
        changed.as_mut().enable();
        lanes.append(&mut shard.incoming.lock().expect("lanes lock is never poisoned"));
        // Everything waiting, up to a batch: under load each lane gets several frames per write.
        let mut batch = Vec::new();
        let mut lagged = false;
        while batch.len() < BATCH_ITEMS {
            match hub.take_framed(&mut taken) {
                None => break,
                Some((Some(item), wire)) => batch.push(Taken { item, through: taken, wire }),
                Some((None, _)) => {
                    lagged = true;
                    batch.clear();
                    break;
                }
            }
        }
        if lagged {
            shard.started.store(taken.items, SeqCst);
            // The shard fell out of the ring: every connection it carried is behind, and
            // its task finds by how much.
            for lane in &lanes {
                if lane.express.load(SeqCst) {
                    lane.hand_back(lane.lock());
                }
            }
            continue;
        }
        if batch.is_empty() {
            // Nothing new: drop the lanes of ended connections while idle, then wait.
            lanes.retain(|lane| !lane.closed.load(SeqCst));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = &mut pushed => {}
                () = &mut changed => {}
            }
            continue;
        }
        shard.started.store(taken.items, SeqCst);
        let mut sent = vec![0u64; batch.len()];
        let mut scratch = Scratch::default();
        let mut i = 0;
        while i < lanes.len() {
            let lane = &lanes[i];
            if lane.closed.load(SeqCst) {
                lanes.swap_remove(i);
                continue;
            }
            lane.offer(&batch, &mut sent, &mut scratch);
            i += 1;
            if i % WALK_CHUNK == 0 {
                tokio::task::yield_now().await;
            }
        }
        for (taken, sent) in batch.iter().zip(sent) {
            if sent > 0 {
                count(stats, &taken.item, sent);
            }
        }
    }
}

fn count(stats: &Stats, item: &Item, sent: u64) {
    stats.messages_out.add(sent);
    stats.express_out.add(sent);
    if let Item::Event(Event { changed_at: Some(changed_at), .. }) = item {
        let elapsed = SystemTime::now().duration_since(*changed_at).unwrap_or_default().as_secs_f64();
        for _ in 0..sent {
            stats.delivery_latency.observe(elapsed);
        }
    }
}

/// A connection's transport: its socket as hyper handed it over, with every write by the
/// task going through the lane, which it takes back first (and whose unwritten rest of a
/// frame it writes before anything else).
pub(crate) struct LaneIo<T> {
    io: T,
    lane: Option<Arc<Lane>>,
}

impl<T> LaneIo<T> {
    pub(crate) fn new(io: T, lane: Option<Arc<Lane>>) -> Self {
        Self { io, lane }
    }
}

impl<T: AsyncWrite + Unpin> LaneIo<T> {
    /// Takes the lane back and writes what the shard left unwritten.
    fn poll_own(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(lane) = &self.lane else { return Poll::Ready(Ok(())) };
        let mut state = lane.lock();
        if lane.express.swap(false, SeqCst) {
            // Written from within one of the task's futures (tungstenite flushing a pong while
            // it reads, say): wake the task, so it sees the lane back before it waits again.
            lane.task.wake();
        }
        while !state.rest.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &state.rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            state.rest.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LaneIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for LaneIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(lane) = &this.lane {
            // Until the socket takes all of `buf`, tungstenite holds bytes.
            lane.dirty.store(true, SeqCst);
        }
        ready!(this.poll_own(cx))?;
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        if let Some(lane) = &this.lane {
            lane.dirty.store(n < buf.len(), SeqCst);
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_own(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_own(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Read, time::Duration};

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::{
        hub::{Bound, Break},
        view::Lazy,
    };
    use protocol::{frames::ResetReason, log::Position};
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn event(pos: u64, text: &str) -> Event {
        Event {
            epoch: Some("e".into()),
            pos: Some(pos),
            changed_at: None,
            frame: Utf8Bytes::from(text.to_owned()),
            parsed: Lazy::default(),
            after: None,
        }
    }

    /// A hub with its shards running, and a real loopback connection whose server side has a lane.
    struct Rig {
        hub: &'static Hub,
        lane: Arc<Lane>,
        client: std::net::TcpStream,
        shutdown: CancellationToken,
    }

    async fn rig() -> Rig {
        let hub: &'static Hub = Box::leak(Box::new(Hub::new(Bound { events: 64, bytes: u64::MAX })));
        let stats: &'static Stats = Box::leak(Box::new(Stats::new()));
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move { run(hub, stats, &token).await });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let lane = hub.express.register(Arc::new(server));
        Rig { hub, lane, client, shutdown }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            self.shutdown.cancel();
        }
    }

    fn read_exactly(client: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        client.read_exact(&mut out).unwrap();
        out
    }

    /// `read_exactly` while a shard runs on this runtime: the read blocks this worker, and a
    /// shard woken from here waits in its LIFO slot, which no other worker can steal, until it
    /// is handed to another thread (seen once in CI: the read timed out).
    fn read_from_shard(client: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        tokio::task::block_in_place(|| read_exactly(client, n))
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[test]
    fn frames_are_rfc6455_server_text_frames() {
        assert_eq!(&text_frame(b"hi")[..], &[0x81, 2, b'h', b'i']);
        let mid = text_frame(&[b'x'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = text_frame(&vec![b'y'; 70_000]);
        assert_eq!(&big[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handed_over_lane_gets_each_event_framed_once_and_in_order() {
        let mut rig = rig().await;
        let upto = rig.hub.head();
        assert!(rig.lane.hand_over(rig.hub, upto, None));
        for pos in 1..=3 {
            rig.hub.publish(event(pos, &format!("event {pos}")));
        }
        let got = read_from_shard(&mut rig.client, 3 * 9);
        let want: Vec<u8> = (1..=3).flat_map(|p| text_frame(format!("event {p}").as_bytes()).to_vec()).collect();
        assert_eq!(got, want);
        until("the lane's position", || rig.lane.lock().cursor.as_ref().is_some_and(|c| c.pos == 3)).await;
        // An event it already has is skipped, not sent again; the lane stays with the shard.
        rig.hub.publish(event(3, "again"));
        rig.hub.publish(event(4, "event 4"));
        assert_eq!(read_from_shard(&mut rig.client, 9), text_frame(b"event 4").to_vec());
        assert!(rig.lane.is_express());
        let back = rig.lane.take_back();
        assert_eq!((back.cursor.map(|c| c.pos), back.first, back.rest), (Some(4), Some(1), false));
        assert_eq!(back.upto, rig.hub.head(), "the feed continues after the last item");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gap_or_a_break_hands_the_lane_back_where_it_stopped() {
        let mut rig = rig().await;
        assert!(rig.lane.hand_over(rig.hub, rig.hub.head(), Some(Cursor::new("e".into(), 4))));
        rig.hub.publish(event(5, "five"));
        let after_five = rig.hub.head();
        rig.hub.publish(event(7, "seven")); // 6 is missing: the task reads it from the log
        until("the handback", || !rig.lane.is_express()).await;
        let back = rig.lane.take_back();
        assert_eq!(back.upto, after_five, "the feed yields 7 next, which the task finds a gap");
        assert_eq!(read_from_shard(&mut rig.client, 6), text_frame(b"five").to_vec());

        assert!(rig.lane.hand_over(rig.hub, rig.hub.head(), back.cursor));
        let head = Position { epoch: "f".into(), pos: 1 };
        rig.hub.publish_break(Break { reason: ResetReason::HistoryLost, resume: Cursor::new("f".into(), 0), head });
        until("the handback", || !rig.lane.is_express()).await;
    }

    /// Items as a shard takes them: totals from 1 (after `upto`), the frame framed once.
    fn batch(items: Vec<Item>, upto: Totals) -> Vec<Taken> {
        let mut through = upto;
        items
            .into_iter()
            .map(|item| {
                let wire = match &item {
                    Item::Event(e) => text_frame(e.frame.as_bytes()),
                    Item::Break(_) => Bytes::new(),
                };
                through = Totals { items: through.items + 1, events: through.events + 1, bytes: through.bytes };
                Taken { item, through, wire }
            })
            .collect()
    }

    #[tokio::test]
    async fn a_batch_goes_out_in_one_write_skipping_what_was_sent_and_stopping_at_a_gap() {
        // No shard runs here: the test plays the shard, with a real socket.
        let hub: &'static Hub = Box::leak(Box::new(Hub::new(Bound { events: 64, bytes: u64::MAX })));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let lane = hub.express.register(Arc::new(listener.accept().await.unwrap().0));
        let upto = Totals::default();
        assert!(lane.hand_over(hub, upto, Some(Cursor::new("e".into(), 1))));
        let items = [1, 2, 3, 5, 6].map(|p| Item::Event(event(p, &format!("e{p}")))).to_vec();
        let taken = batch(items, upto);
        let mut sent = vec![0; taken.len()];
        lane.offer(&taken, &mut sent, &mut Scratch::default());
        // 1 was sent before the handover; 2 and 3 go out together; 5 is a gap: the lane goes
        // back to its task, standing after 3.
        assert_eq!(sent, [0, 1, 1, 0, 0]);
        let want: Vec<u8> = [text_frame(b"e2"), text_frame(b"e3")].concat();
        assert_eq!(read_exactly(&mut client, want.len()), want);
        assert!(!lane.is_express());
        let back = lane.take_back();
        assert_eq!(
            (back.upto, back.cursor.map(|c| c.pos), back.first, back.rest),
            (taken[2].through, Some(3), Some(2), false)
        );

        // Handed over again after 3: a batch that starts with what the task already took is
        // cut to what follows, and ends with the lane still on the shard.
        assert!(lane.hand_over(hub, taken[2].through, Some(Cursor::new("e".into(), 3))));
        let items = [3, 4].map(|p| Item::Event(event(p, &format!("e{p}")))).to_vec();
        let again = batch(items, taken[1].through);
        let mut sent = vec![0; 2];
        lane.offer(&again, &mut sent, &mut Scratch::default());
        assert_eq!(sent, [0, 1]);
        assert_eq!(read_exactly(&mut client, 4), text_frame(b"e4").to_vec());
        assert!(lane.is_express());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_handover_once_the_shard_walked_past_the_next_item() {
        let rig = rig().await;
        let upto = rig.hub.head();
        rig.hub.publish(event(1, "one"));
        until("the shard", || rig.hub.express.shards[rig.lane.shard].started.load(SeqCst) > upto.items).await;
        // A feed that took nothing since `upto` must not hand over: the shard is past item 1.
        assert!(!rig.lane.hand_over(rig.hub, upto, None));
        assert!(!rig.lane.is_express());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_socket_does_not_take_is_written_first_and_whole() {
        let mut rig = rig().await;
        let upto = rig.hub.head();
        assert!(rig.lane.hand_over(rig.hub, upto, None));
        // The client reads nothing: the socket fills, one frame goes in part, the lane comes back.
        let big = "z".repeat(256 * 1024);
        let mut published = 0u64;
        while rig.lane.is_express() {
            published += 1;
            assert!(published < 200, "the socket never filled");
            rig.hub.publish(event(published, &big));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let back = rig.lane.take_back();
        let sent = back.cursor.map_or(0, |c| c.pos);
        // The task writes through LaneIo: the rest of the partial frame goes out before its own.
        let tcp = rig.lane.lock().tcp.clone().unwrap();
        let mut io = LaneIo::new(crate::net::Shared(tcp), Some(rig.lane.clone()));
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            rig.client.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let mut buf = vec![0; 64 * 1024];
            loop {
                match rig.client.read(&mut buf) {
                    Ok(0) | Err(_) => return all,
                    Ok(n) => all.extend_from_slice(&buf[..n]),
                }
            }
        });
        io.write_all(&text_frame(b"after")).await.unwrap();
        io.flush().await.unwrap();
        let all = reader.join().unwrap();
        let mut want: Vec<u8> = (0..sent).flat_map(|_| text_frame(big.as_bytes()).to_vec()).collect();
        want.extend_from_slice(&text_frame(b"after"));
        assert!(back.rest || sent > 0, "something was sent before the socket filled");
        assert_eq!(all.len(), want.len(), "every frame the lane counted as sent arrived whole, then the task's");
        assert!(all == want);
    }
}
