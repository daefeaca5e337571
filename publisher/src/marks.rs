//! Published marks, written off the critical path: a task on a PostgreSQL connection of its
//! own sets `published_at` (with the log positions) for events already in the Redis log, while
//! the session goes on reading and appending.
//!
//! The guarantee stays as it was: an event leaves the outbox's unpublished set only after Redis
//! has it (marks are queued only after their append succeeded). What changes is how many events
//! may be in the log and not yet marked: up to `PUBLISHER_MARK_WINDOW`, not one batch. So:
//!
//! - **The session knows them exactly.** [`Marks`] holds the ids of every event this session
//!   appended (or is appending) whose mark is not committed yet ([`Marks::contains`]). Together
//!   with `published_at` in the outbox (what is committed) that is exactly what this session
//!   appended: the NOTIFY path skips those ids, and the outbox read (catch-up) waits for the
//!   marks to settle ([`Marks::flush`]) before it reads, so it never sees an event of ours twice.
//! - **A successor knows them from the log.** A publisher killed with marks pending leaves at
//!   most the window (and one batch in doubt) in the log unmarked; the claim returns the newest
//!   `window + 2 × PUBLISHER_BATCH` entries' event ids, so the next active publisher marks those
//!   rows instead of appending them again.
//!
//! Marks are committed in the order they were queued, several queued batches in one statement
//! when they pile up (which is what keeps up with a burst: one commit, one fsync, for many
//! batches). Between bursts they wait [`LINGER`] for the events that follow: one commit for
//! every event would be one more fsync for every commit the writers make, on the disk their
//! commits wait for. A failed mark ends the session like any other PostgreSQL error: the marks not
//! committed are recovered by the next claim, as above.

use std::collections::{HashSet, VecDeque};

use protocol::ops::Counter;
use sqlx::{Connection, PgConnection};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    outbox,
    relay::{QUERY_TIMEOUT, SessionError, bounded},
};

/// Most marks committed in one statement (`outbox::mark_published` chunks larger ones anyway).
const COALESCE: usize = 10_000;

/// How long the first held mark waits, once the appends pause, for the marks of the events
/// that follow it. Unmarked events in the log are this session's ([`Marks::contains`]) or, after
/// a crash, in the next claim's tail, so the wait changes what is committed when, never what
/// is appended.
pub(crate) const LINGER: std::time::Duration = std::time::Duration::from_millis(10);

type Queued = (String, Vec<(i64, Option<u64>)>);

/// The marks of one session: the writer task and what it has not committed yet.
pub(crate) struct Marks {
    tx: Option<mpsc::UnboundedSender<Queued>>,
    settled: watch::Receiver<u64>,
    task: Option<JoinHandle<Result<(), SessionError>>>,
    /// Marks queued so far (events, not batches).
    queued: u64,
    /// The ids of each queued batch, oldest first, until its marks are committed.
    batches: VecDeque<(u64, Vec<i64>)>,
    /// Appended (or being appended) by this session, mark not committed yet.
    pending: HashSet<i64>,
    /// Reserved by [`Marks::reserve`] for an append in progress.
    reserved: Vec<i64>,
    /// Marks held back while a burst is appended (see [`Marks::send`]), and their history.
    held: Vec<(i64, Option<u64>)>,
    held_epoch: String,
    /// When the first of `held` was queued.
    held_since: Option<tokio::time::Instant>,
    /// How many marks are held back at most.
    hold: usize,
}

impl std::fmt::Debug for Marks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Marks").field("queued", &self.queued).field("pending", &self.pending.len()).finish()
    }
}

impl Marks {
    /// Starts the writer on a connection of its own. Up to `hold` marks are held back while
    /// appends go on ([`Marks::send`]).
    pub(crate) async fn start(database_url: &str, hold: usize, commits: Counter) -> Result<Self, SessionError> {
        let conn = bounded(QUERY_TIMEOUT, PgConnection::connect(database_url)).await??;
        let (tx, rx) = mpsc::unbounded_channel();
        let (settled_tx, settled) = watch::channel(0);
        let task = tokio::spawn(write(conn, rx, settled_tx, commits));
        Ok(Self {
            tx: Some(tx),
            settled,
            task: Some(task),
            queued: 0,
            batches: VecDeque::new(),
            pending: HashSet::new(),
            reserved: Vec::new(),
            held: Vec::new(),
            held_epoch: String::new(),
            held_since: None,
            hold,
        })
    }

    /// Whether this session appended (or is appending) event `id` and its mark is not
    /// committed yet.
    pub(crate) fn contains(&self, id: i64) -> bool {
        self.pending.contains(&id)
    }

    /// Holds `ids` as this session's before their append starts, so that nothing reads them
    /// as unappended meanwhile. Followed by [`Marks::send`] (appended) or [`Marks::release`].
    pub(crate) fn reserve(&mut self, ids: impl IntoIterator<Item = i64>) {
        for id in ids {
            self.pending.insert(id);
            self.reserved.push(id);
        }
    }

    /// The reserved ids were not appended (the append failed or was refused).
    pub(crate) fn release(&mut self) {
        for id in self.reserved.drain(..) {
            self.pending.remove(&id);
        }
    }

    /// Queues marks of events now in the log (and ends the reservation). They are held back
    /// until `hold` of them wait or [`Marks::dispatch`] is called (the appends paused): during a
    /// burst the marks then neither take PostgreSQL's time from the reads nor cost a commit per
    /// batch.
    pub(crate) async fn send(&mut self, epoch: &str, marks: Vec<(i64, Option<u64>)>) -> Result<(), SessionError> {
        self.reserved.clear();
        if marks.is_empty() {
            return Ok(());
        }
        if !self.held.is_empty() && self.held_epoch != epoch {
            self.dispatch().await?;
        }
        if self.held.is_empty() {
            epoch.clone_into(&mut self.held_epoch);
            self.held_since = Some(tokio::time::Instant::now());
        }
        self.pending.extend(marks.iter().map(|(id, _)| *id));
        self.held.extend(marks);
        if self.held.len() >= self.hold {
            self.dispatch().await?;
        }
        Ok(())
    }

    /// When the held marks go to the writer if no more come meanwhile ([`LINGER`] after the
    /// first); `None` when none are held.
    pub(crate) fn due(&self) -> Option<tokio::time::Instant> {
        self.held_since.map(|since| since + LINGER)
    }

    /// Hands the held marks to the writer.
    pub(crate) async fn dispatch(&mut self) -> Result<(), SessionError> {
        self.held_since = None;
        if self.held.is_empty() {
            return Ok(());
        }
        let marks = std::mem::take(&mut self.held);
        let ids: Vec<i64> = marks.iter().map(|(id, _)| *id).collect();
        self.queued += ids.len() as u64;
        self.batches.push_back((self.queued, ids));
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send((self.held_epoch.clone(), marks)).is_ok());
        if !sent {
            return Err(self.failure().await);
        }
        self.settle();
        Ok(())
    }

    /// Waits until at most `limit` events are appended and unmarked.
    pub(crate) async fn wait_below(&mut self, limit: usize) -> Result<(), SessionError> {
        self.settle();
        if self.pending.len() - self.reserved.len() > limit {
            self.dispatch().await?;
        }
        while self.pending.len() - self.reserved.len() > limit {
            if self.settled.changed().await.is_err() {
                return Err(self.failure().await);
            }
            self.settle();
        }
        Ok(())
    }

    /// Waits until every queued mark is committed.
    pub(crate) async fn flush(&mut self) -> Result<(), SessionError> {
        self.dispatch().await?;
        self.wait_below(0).await
    }

    /// Forgets the batches whose marks are committed.
    fn settle(&mut self) {
        let settled = *self.settled.borrow_and_update();
        while let Some((upto, _)) = self.batches.front() {
            if *upto > settled {
                break;
            }
            let (_, ids) = self.batches.pop_front().expect("checked");
            for id in ids {
                self.pending.remove(&id);
            }
        }
    }

    /// Why the writer stopped.
    async fn failure(&mut self) -> SessionError {
        self.tx = None;
        match self.task.take() {
            Some(task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) | Err(_) => SessionError::Lost,
            },
            None => SessionError::Lost,
        }
    }
}

impl Drop for Marks {
    fn drop(&mut self) {
        // Marks not committed by now are recovered by the next claim (see the module docs).
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The writer: commits queued marks in order, coalescing what has piled up.
async fn write(
    mut conn: PgConnection,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    settled: watch::Sender<u64>,
    commits: Counter,
) -> Result<(), SessionError> {
    let mut done = 0_u64;
    while let Some((epoch, mut marks)) = rx.recv().await {
        // Another epoch waits for the next statement: one statement records one history.
        let mut next = None;
        while marks.len() < COALESCE {
            match rx.try_recv() {
                Ok((e, more)) if e == epoch => marks.extend(more),
                Ok(other) => {
                    next = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        done += mark(&mut conn, &epoch, &marks).await?;
        commits.inc();
        settled.send_replace(done);
        if let Some((epoch, marks)) = next {
            done += mark(&mut conn, &epoch, &marks).await?;
            commits.inc();
            settled.send_replace(done);
        }
    }
    let _ = conn.close().await;
    Ok(())
}

async fn mark(conn: &mut PgConnection, epoch: &str, marks: &[(i64, Option<u64>)]) -> Result<u64, SessionError> {
    bounded(QUERY_TIMEOUT, outbox::mark_published(conn, epoch, marks)).await??;
    Ok(marks.len() as u64)
}
