//! The active publisher's work within one session: forward notified events into the replay
//! log, catch up from the outbox, and claim the log (building a new history when Redis has
//! none: see `history`). See `relay` for how a publisher becomes active and what a session is.
//!
//! Two ways into the log, one dedupe:
//!
//! - **Notified** ([`Active::forward`]): a notification names its event's outbox id. A change
//!   the trigger signed (`protocol::signed`) is appended straight from the notification; the rows of
//!   other notified ids are read by id (the outbox row is the change, whatever an unsigned
//!   payload says). Either way events go out in notification order, which is commit order. The
//!   read of the next batch runs while Redis appends the current one, and the marks are written
//!   by `marks` meanwhile, so a burst costs one Redis step per batch on the critical path.
//! - **Catch-up** ([`Active::drain`]): unpublished rows in id order, for whatever no
//!   notification brought (the session's start, a keepalive, legacy payloads, after a Redis
//!   failure). It first waits for this session's marks to be committed, so `published_at IS
//!   NULL` is then exactly what this session has not appended.
//!
//! An event is appended by neither path twice: the notified path skips ids this session
//! appended and has not marked yet (`Marks::contains`) and rows already marked (the read asks
//! for `published_at IS NULL`); events a previous holder of the log appended and did not mark
//! are in the claim's tail (`recent`), and only get their mark. A signed change is not read, so
//! the read's check is replaced by an exact record ([`Unread`]): every id above a floor that
//! this session appended. Anyone may repeat a signed notification they saw (LISTEN is open to
//! all), and a notification can arrive after a catch-up appended its event; both are in the
//! record, or below the floor, where the change is read as before.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    time::Duration,
};

use protocol::{
    event::{Change, Notification, parse_notification},
    log::{Claim, Log, is_fenced},
    retry::Flow,
    signed::{NotifyKey, Opened},
};
use sqlx::postgres::{PgListener, PgNotification};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    batch::Batch,
    capture::Capture,
    config::Config,
    forward::Redis,
    history::{self, Built},
    marks::Marks,
    outbox,
    relay::{DRAIN_TIMEOUT, QUERY_TIMEOUT, SessionError, bounded},
    stats::Stats,
};

/// What a drain did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Drained {
    /// The outbox had no more than one batch: wait for the next wake-up.
    All,
    /// A full batch went out: drain again.
    More,
    /// Shutdown was requested.
    Stopped,
}

/// The active publisher's state within one session.
pub(crate) struct Active<'a> {
    pub(crate) config: &'a Config,
    pub(crate) stats: &'a Stats,
    pub(crate) log: &'a Log,
    claim: Option<Claim>,
    claimed_generation: u64,
    /// The claim's recent `event id → position`, built once per claim, not once per drain.
    recent: HashMap<i64, u64>,
    /// Changes from a hand-made legacy trigger (legacy mode only): they exist only in the
    /// notification.
    legacy: Vec<Change>,
    /// Notified events not forwarded yet, in notification (commit) order.
    notified: VecDeque<Noted>,
    /// The trigger's signing key, if this session may read it.
    key: Option<NotifyKey>,
    /// Which signed changes may be appended without a read.
    unread: Unread,
    /// How many wake-ups were noted, and how many of those are settled: appended (or found
    /// published) or left to a catch-up that has since completed. Logical capture
    /// acknowledges its slot up to the newest commit whose wake-ups are all settled.
    noted: u64,
    pub(crate) settled: u64,
    /// The newest position this publisher knows to be in the log of the claimed history.
    appended: u64,
    /// A batch whose append failed without an answer: Redis may have written and published it
    /// (at the positions after `appended`) before it went away.
    pub(crate) in_doubt: Option<InDoubt>,
}

/// An append whose outcome is unknown. If Redis comes back with its data, the claim shows
/// whether the batch is in the log. If Redis lost its data, replicas may still have delivered
/// the batch at these positions, so the new history's bridge re-offers it there.
#[derive(Debug)]
pub(crate) struct InDoubt {
    pub(crate) epoch: String,
    /// The position its first event would have had.
    pub(crate) first: u64,
    pub(crate) batch: Batch,
}

impl<'a> Active<'a> {
    pub(crate) fn new(config: &'a Config, stats: &'a Stats, log: &'a Log, key: Option<NotifyKey>) -> Self {
        Self {
            config,
            stats,
            log,
            claim: None,
            claimed_generation: 0,
            recent: HashMap::new(),
            legacy: Vec::new(),
            notified: VecDeque::new(),
            key,
            unread: Unread::new(0),
            noted: 0,
            settled: 0,
            appended: 0,
            in_doubt: None,
        }
    }

    /// Looks at one notification. The project's trigger's are wake-ups: the outbox row, written
    /// in the same transaction, is the change, whatever the payload says. A payload without an
    /// outbox id is not a committed change we can vouch for: kept only in legacy mode, and
    /// otherwise rejected with a log line (anyone who may connect can `pg_notify`).
    pub(crate) fn note(&mut self, n: &PgNotification) {
        let stats = self.stats;
        stats.notifications.inc();
        // The trigger's payloads begin with the id: nothing else of them is used, unless they
        // are signed.
        if let Some(id) = trigger_id(n.payload()) {
            let change = match self.key.as_ref().map(|key| key.open(n.payload())) {
                Some(Opened::Signed(change)) => Some(change),
                Some(Opened::Forged) => {
                    // Read as an unsigned one: the outbox decides.
                    debug!(event_id = id, "a notification's signature is not the trigger's; reading its row");
                    stats.forged.inc();
                    None
                }
                Some(Opened::Unsigned) | None => None,
            };
            self.notified.push_back(Noted { id, change });
            return;
        }
        match parse_notification(n.payload()) {
            Ok(Notification::Change(change)) if change.id.is_none() => {
                if self.config.legacy_payloads {
                    self.legacy.push(change);
                } else {
                    let preview: String = n.payload().chars().take(200).collect();
                    warn!(
                        payload = %preview,
                        "rejected a notification that is not from the realtime_notify trigger (no outbox id); \
                         set PUBLISHER_LEGACY_PAYLOADS=true only for a database with a hand-made legacy trigger"
                    );
                    stats.rejected.inc();
                }
            }
            Ok(Notification::Change(change)) => self.notified.extend(change.id.map(Noted::id)),
            Ok(Notification::Reference { id }) => self.notified.push_back(Noted::id(id)),
            Err(err) => {
                let preview: String = n.payload().chars().take(200).collect();
                warn!(error = %err, payload = %preview, "skipping malformed notification");
                stats.skipped.inc();
            }
        }
    }

    /// Notes the outbox id a logical replication message carries (the trigger's, in logical
    /// capture): a wake-up like a notification.
    pub(crate) fn note_id(&mut self, id: i64) {
        self.stats.notifications.inc();
        self.noted += 1;
        self.notified.push_back(Noted::id(id));
    }

    /// Catches up from the outbox: one batch of unpublished rows in id order (after this
    /// session's marks are committed: see the module docs).
    pub(crate) async fn drain(
        &mut self,
        redis: &mut Redis<'_>,
        pg: &mut PgListener,
        marks: &mut Marks,
        shutdown: &CancellationToken,
    ) -> Result<Drained, SessionError> {
        let (config, log) = (self.config, self.log);
        // Everything notified so far is committed, so visible to the reads below (or, in the
        // moment a slot's commit takes to become visible, to the next catch-up's).
        self.notified.clear();
        let noted = self.noted;
        loop {
            marks.flush().await?;
            if !self.ensure_claim(redis, pg, shutdown).await? {
                return Ok(Drained::Stopped);
            }
            let claim = self.claim.as_ref().expect("claimed above");

            let rows = bounded(DRAIN_TIMEOUT, outbox::unpublished(pg, config.batch_max)).await??;
            let full = rows.len() == config.batch_max;
            let (mut batch, mut done) = self.batch_of(rows.iter().map(|(id, payload)| (*id, payload.as_str())), marks);
            let legacy = std::mem::take(&mut self.legacy);
            for change in &legacy {
                let current = match change.row_key() {
                    Some(key) => {
                        let (table, id) = key.split_once(':').expect("row keys are table:id");
                        bounded(DRAIN_TIMEOUT, outbox::current_row(pg, table, id)).await??
                    }
                    None => None,
                };
                batch.push_verified(change.clone(), current);
            }
            if batch.is_empty() && done.is_empty() {
                self.settled = self.settled.max(noted);
                return Ok(Drained::All);
            }

            if !batch.is_empty() {
                marks.reserve(batch.ids());
                let appended = {
                    let Some(conn) = redis.connection(shutdown).await? else {
                        marks.release();
                        return Ok(Drained::Stopped);
                    };
                    log.append(conn, claim, Some(self.appended), config.log_maxlen, &batch.appends()).await
                };
                match self.outcome(redis, marks, batch, appended, shutdown).await? {
                    Appended::Ok(positions) => done.extend(positions),
                    Appended::Again => {
                        self.legacy = legacy;
                        continue;
                    }
                    Appended::Stopped => return Ok(Drained::Stopped),
                }
            }
            let epoch = self.claim.as_ref().expect("claimed above").epoch.clone();
            marks.send(&epoch, done).await?;
            if !full {
                self.settled = self.settled.max(noted);
            }
            return Ok(if full { Drained::More } else { Drained::All });
        }
    }

    /// On a cluster, checks that the log still reaches the last position appended: a failover
    /// can lose the newest writes while the cluster client carries on, and without a further
    /// append (whose position check would notice) nothing else would. If it went back, the claim
    /// is dropped: the next drain claims again and starts a new history that re-offers them.
    pub(crate) async fn verify_head(
        &mut self,
        redis: &mut Redis<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let Some(claim) = self.claim.as_ref().filter(|_| redis.is_cluster()) else { return Ok(()) };
        let Some(conn) = redis.connection(shutdown).await? else { return Ok(()) };
        match self.log.head(conn).await {
            Ok(head) if head.as_ref().is_some_and(|h| h.epoch == claim.epoch && h.pos >= self.appended) => {}
            Ok(head) => {
                warn!(
                    appended = self.appended,
                    ?head,
                    "the cluster's log went back (a failover lost writes?); claiming again"
                );
                self.claim = None;
            }
            Err(e) => {
                redis.failed(e, shutdown).await?;
            }
        }
        Ok(())
    }

    /// Once a second (the keepalive; appends do it too, at most as often): ids appended before
    /// the last raise go below the floor, so the record keeps about a second of them.
    pub(crate) fn raise_floor(&mut self) {
        self.unread.raise();
    }

    /// Whether events were notified and not forwarded yet.
    pub(crate) fn has_notified(&self) -> bool {
        !self.notified.is_empty()
    }

    /// Whether a catch-up is due for what a notification brought (legacy payloads).
    pub(crate) fn needs_catch_up(&self) -> bool {
        !self.legacy.is_empty()
    }

    /// Forwards the notified events (see the module docs): reads and prepares the next batch
    /// of them while Redis appends the current one. `more` takes the notifications that
    /// arrived meanwhile (sqlx buffers them during the reads). [`Drained::More`] asks for a
    /// catch-up (no claim yet on this Redis connection, or an append failed).
    pub(crate) async fn forward(
        &mut self,
        redis: &mut Redis<'_>,
        pg: &mut PgListener,
        marks: &mut Marks,
        shutdown: &CancellationToken,
        mut more: impl FnMut(&mut Self, &mut PgListener) -> Result<(), SessionError>,
    ) -> Result<Drained, SessionError> {
        let (config, log) = (self.config, self.log);
        let window = config.mark_window.max(config.batch_max);
        if self.claim.is_none() || self.claimed_generation != redis.generation() {
            return Ok(Drained::More);
        }
        let mut notified = std::mem::take(&mut self.notified);
        let mut next = self.next_notified(&mut notified, pg, marks).await;
        self.notified = notified;
        loop {
            let Some((batch, mut done, popped)) = next? else { return Ok(Drained::All) };
            if shutdown.is_cancelled() {
                return Ok(Drained::Stopped);
            }
            let epoch = self.claim.as_ref().expect("checked").epoch.clone();
            if batch.is_empty() {
                marks.send(&epoch, done).await?;
                self.settled += popped;
                more(self, pg)?;
                let mut notified = std::mem::take(&mut self.notified);
                next = self.next_notified(&mut notified, pg, marks).await;
                self.notified = notified;
                continue;
            }
            marks.wait_below(window.saturating_sub(batch.len())).await?;
            marks.reserve(batch.ids());
            let Some(conn) = redis.connection(shutdown).await? else {
                marks.release();
                return Ok(Drained::Stopped);
            };
            let claim = self.claim.as_ref().expect("checked");
            let appends = batch.appends();
            let append = log.append(conn, claim, Some(self.appended), config.log_maxlen, &appends);
            // The next batch is read and parsed meanwhile: the ids of this one are reserved, so
            // they are not among it.
            let mut notified = std::mem::take(&mut self.notified);
            let read = self.next_notified(&mut notified, pg, marks);
            let (appended, read) = tokio::join!(append, read);
            drop(appends);
            // What the read left in `notified` keeps its place, before what arrives next.
            self.notified = notified;
            match self.outcome(redis, marks, batch, appended, shutdown).await? {
                Appended::Ok(positions) => {
                    done.extend(positions);
                    marks.send(&epoch, done).await?;
                    self.settled += popped;
                }
                Appended::Again => return Ok(Drained::More),
                Appended::Stopped => return Ok(Drained::Stopped),
            }
            if self.claim.is_none() || self.claimed_generation != redis.generation() {
                return Ok(Drained::More);
            }
            more(self, pg)?;
            next = match read {
                Ok(None) => {
                    let mut notified = std::mem::take(&mut self.notified);
                    let next = self.next_notified(&mut notified, pg, marks).await;
                    self.notified = notified;
                    next
                }
                read => read,
            };
        }
    }

    /// The next batch of notified events, read and prepared, and how many notified ids it
    /// took; `None` when none are waiting.
    async fn next_notified(
        &self,
        notified: &mut VecDeque<Noted>,
        pg: &mut PgListener,
        marks: &Marks,
    ) -> Result<Option<(Batch, Vec<(i64, Option<u64>)>, u64)>, SessionError> {
        let wait_visible = self.config.capture == Capture::Logical;
        let taken = take_notified(notified, marks, &self.unread, self.config.batch_max);
        let Some((rows, popped)) = read_notified(taken, pg, wait_visible, self.stats).await? else {
            return Ok(None);
        };
        let (batch, done) = self.batch_of(rows.iter().map(|(id, payload)| (*id, payload.as_str())), marks);
        Ok(Some((batch, done, popped)))
    }

    /// The batch to append for outbox rows, and the marks of rows that need no append (in the
    /// log already, or not a change).
    fn batch_of<'r>(
        &self,
        rows: impl Iterator<Item = (i64, &'r str)>,
        marks: &Marks,
    ) -> (Batch, Vec<(i64, Option<u64>)>) {
        let mut done = Vec::new();
        let mut batch = Batch::default();
        for (id, payload) in rows {
            if let Some(&pos) = self.recent.get(&id) {
                // Appended by the previous holder of the log; only the mark is missing.
                done.push((id, Some(pos)));
                continue;
            }
            if marks.contains(id) {
                continue; // appended by this session, its mark on its way
            }
            match parse_notification(payload) {
                Ok(Notification::Change(change)) => batch.push(change),
                _ => {
                    warn!(event_id = id, "realtime_events row is not a change; skipped");
                    self.stats.skipped.inc();
                    done.push((id, None));
                }
            }
        }
        (batch, done)
    }

    /// Claims the log if this Redis connection has no claim yet. `false`: shutdown.
    async fn ensure_claim(
        &mut self,
        redis: &mut Redis<'_>,
        pg: &mut PgListener,
        shutdown: &CancellationToken,
    ) -> Result<bool, SessionError> {
        // Claim (again) on every new Redis connection: see the module docs.
        if self.claim.is_none() || self.claimed_generation != redis.generation() {
            let Some(claim) = self.claim(redis, pg, shutdown).await? else {
                return Ok(false);
            };
            self.claimed_generation = redis.generation();
            // Whatever was appended so far (by anyone) is committed, so at or below the floor.
            let newest = bounded(QUERY_TIMEOUT, outbox::newest_id(pg)).await??;
            self.unread = Unread::new(newest);
            self.recent = claim.recent.iter().copied().collect();
            self.appended = claim.seq;
            // The claim settled it: the history it names is complete, and its tail shows
            // what of the batch reached it.
            self.in_doubt = None;
            self.claim = Some(claim);
        }
        Ok(true)
    }

    /// What an append's result means for the session: the positions to mark, or claim again.
    async fn outcome(
        &mut self,
        redis: &mut Redis<'_>,
        marks: &mut Marks,
        batch: Batch,
        appended: redis::RedisResult<u64>,
        shutdown: &CancellationToken,
    ) -> Result<Appended, SessionError> {
        let stats = self.stats;
        match appended {
            Ok(last) => {
                stats.published.add(batch.len() as u64);
                stats.batches.inc();
                debug!(events = batch.len(), pos = last, "appended");
                for at in batch.changed_at() {
                    stats.append_latency.observe_since(at);
                }
                self.appended = last;
                self.unread.appended(batch.ids());
                Ok(Appended::Ok(batch.marks(last).collect()))
            }
            Err(e) if is_fenced(&e) => {
                // Redis lost its data, or another publisher claimed the log. We still hold the
                // lock if our session is alive: claim again (the next query fails first if it
                // is not).
                warn!(error = %e, "log claim lost; claiming again");
                marks.release();
                self.claim = None;
                Ok(Appended::Again)
            }
            Err(e) => {
                marks.release();
                let claim = self.claim.as_ref().expect("appended with a claim");
                let first = self.appended + 1;
                self.in_doubt = Some(InDoubt { epoch: claim.epoch.clone(), first, batch });
                if redis.failed(e, shutdown).await? == Flow::Stop {
                    return Ok(Appended::Stopped);
                }
                Ok(Appended::Again)
            }
        }
    }

    /// Claims the log; builds a new history when Redis has no complete one.
    async fn claim(
        &mut self,
        redis: &mut Redis<'_>,
        pg: &mut PgListener,
        shutdown: &CancellationToken,
    ) -> Result<Option<Claim>, SessionError> {
        let (config, stats, log) = (self.config, self.stats, self.log);
        let mut restart = false;
        let mut replaced = 0;
        loop {
            // A bridge that could not be kept twice in a row: start the next history without one.
            let bridge = if replaced < 2 { history::plan(self, pg).await? } else { None };
            let claimed = {
                let Some(conn) = redis.connection(shutdown).await? else { return Ok(None) };
                log.claim(conn, &new_epoch(), claim_tail(config), restart, bridge.as_ref()).await
            };
            let claim = match claimed {
                Ok(claim) => claim,
                Err(e) => {
                    if redis.failed(e, shutdown).await? == Flow::Stop {
                        return Ok(None);
                    }
                    continue;
                }
            };
            stats.claims.inc();
            restart = false;
            if claim.seeded {
                let recorded = bounded(QUERY_TIMEOUT, outbox::recorded_head(pg, &claim.epoch)).await??;
                // On a cluster a batch in doubt that the log lacks may still have reached
                // replicas: the old master can publish it and die before its replica, now the
                // master, has it. Its positions may have been seen, so only a new history
                // (whose bridge re-offers the batch) is safe. One server publishes only what
                // its log holds.
                let doubt_lost = redis.is_cluster()
                    && self
                        .in_doubt
                        .as_ref()
                        .is_some_and(|d| d.epoch == claim.epoch && claim.seq + 1 < d.first + d.batch.len() as u64);
                if doubt_lost {
                    warn!(
                        epoch = %claim.epoch, redis = claim.seq,
                        "the cluster's log lacks a batch whose append went unanswered (a failover?); starting a new history"
                    );
                    restart = true;
                    continue;
                }
                if recorded.is_some_and(|pos| pos > claim.seq) {
                    // Positions after `claim.seq` were seen by clients; appending there again
                    // would give them other events. Only a new history is safe.
                    warn!(
                        epoch = %claim.epoch, redis = claim.seq, recorded = ?recorded,
                        "redis holds less of the history than was appended (restored from an older save?); starting a new history"
                    );
                    restart = true;
                    continue;
                }
                info!(epoch = %claim.epoch, pos = claim.seq, fence = claim.fence, "claimed the replay log");
                return Ok(Some(claim));
            }
            match history::build(self, redis, pg, claim, shutdown).await? {
                Built::Ready(claim) => {
                    self.in_doubt = None;
                    return Ok(Some(claim));
                }
                Built::Again => {}
                Built::Replace => {
                    restart = true;
                    replaced += 1;
                }
                Built::Stopped => return Ok(None),
            }
        }
    }
}

/// The outbox id at the start of a payload as `realtime_notify()` writes it
/// (`{"id" : 7, "table" : …`, json_build_object's spacing), without parsing the rest: a
/// notification is a wake-up for the outbox row it names, whatever else it says.
fn trigger_id(payload: &str) -> Option<i64> {
    let rest = payload.strip_prefix(r#"{"id" : "#)?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    if end == 0 || !rest[end..].starts_with(',') {
        return None;
    }
    rest[..end].parse().ok()
}

/// How many of the log's newest entries a claim returns: more than this session can have
/// appended and not marked (the mark window, a batch in doubt), so a successor finds all of
/// them.
fn claim_tail(config: &Config) -> usize {
    config.mark_window.max(config.batch_max) + config.batch_max * 2
}

/// What became of an append.
enum Appended {
    /// In the log: the marks of its events.
    Ok(Vec<(i64, Option<u64>)>),
    /// Not in the log (or not known to be): claim again, then catch up.
    Again,
    /// Shutdown was requested.
    Stopped,
}

/// A notified event waiting to be forwarded: its outbox id, and its change if the
/// notification carried it signed.
#[derive(Debug)]
pub(crate) struct Noted {
    id: i64,
    change: Option<String>,
}

impl Noted {
    fn id(id: i64) -> Self {
        Self { id, change: None }
    }
}

/// Which signed changes are appended without reading their rows: those above `floor` that this
/// session has not appended. Every id above the floor that this session appended is in
/// `appended`, and nobody else appends above it (the floor is the newest committed id when the
/// log was claimed; a previous holder's unmarked appends are the claim's `recent`), so a
/// signed change above the floor and not in `appended` is not in the log. Below the floor the
/// read's `published_at IS NULL` decides, as for any unsigned wake-up.
#[derive(Debug)]
struct Unread {
    floor: i64,
    appended: BTreeSet<i64>,
    /// The newest id appended at the last [`Unread::raise`], and when that was.
    newest_at_raise: i64,
    raised_at: Instant,
}

/// How often the floor rises: the record holds about this long of appended ids.
const RAISE_EVERY: Duration = Duration::from_secs(1);

impl Unread {
    fn new(floor: i64) -> Self {
        Self { floor, appended: BTreeSet::new(), newest_at_raise: floor, raised_at: Instant::now() }
    }

    fn readless(&self, id: i64) -> bool {
        id > self.floor && !self.appended.contains(&id)
    }

    fn appended(&mut self, ids: impl Iterator<Item = i64>) {
        let floor = self.floor;
        self.appended.extend(ids.filter(|&id| id > floor));
        // A stream that never pauses never reaches the keepalive: bound the record here too.
        if self.raised_at.elapsed() >= RAISE_EVERY {
            self.raise();
        }
    }

    fn raise(&mut self) {
        self.floor = self.floor.max(self.newest_at_raise);
        self.appended = self.appended.split_off(&(self.floor + 1));
        self.newest_at_raise = self.appended.last().copied().unwrap_or(self.floor);
        self.raised_at = Instant::now();
    }
}

/// Takes up to `limit` events from the front of `notified`, in notification order: ids this
/// session appended and has not marked are skipped; a signed change is kept if it needs no read
/// (see [`Unread`]). An id notified twice is taken once, at its first place, or at its first
/// signed place (a signed notification is the commit's own; an unsigned one may be a forgery
/// sent earlier). Also how many notifications it took.
fn take_notified(
    notified: &mut VecDeque<Noted>,
    marks: &Marks,
    unread: &Unread,
    limit: usize,
) -> (Vec<(i64, Option<String>)>, u64) {
    let mut taken: Vec<Option<(i64, Option<String>)>> = Vec::with_capacity(limit.min(notified.len()));
    let mut place: HashMap<i64, usize> = HashMap::new();
    let (mut popped, mut events) = (0, 0);
    while events < limit {
        let Some(Noted { id, change }) = notified.pop_front() else { break };
        popped += 1;
        if marks.contains(id) {
            continue;
        }
        let change = change.filter(|_| unread.readless(id));
        match place.get(&id) {
            Some(&at) if change.is_some() && taken[at].as_ref().is_some_and(|(_, c)| c.is_none()) => taken[at] = None,
            Some(_) => continue,
            None => events += 1,
        }
        place.insert(id, taken.len());
        taken.push(Some((id, change)));
    }
    (taken.into_iter().flatten().collect(), popped)
}

/// The changes of `taken` (see [`take_notified`]), in its order: signed ones as they came, the
/// others' unpublished rows read by id. `None` when nothing was taken.
///
/// `wait_visible` (logical capture): a slot can deliver a transaction's commit a moment before
/// the transaction is visible to other sessions (the walsender decodes the commit record, which
/// is written before the commit is published in the process array). A row not found is read
/// again, three times at once and then over about 30 ms, before it is taken for a forged id;
/// skipping a real one would leave it to the next catch-up, out of commit order.
async fn read_notified(
    (taken, popped): (Vec<(i64, Option<String>)>, u64),
    pg: &mut PgListener,
    wait_visible: bool,
    stats: &Stats,
) -> Result<Option<(Vec<(i64, String)>, u64)>, SessionError> {
    if taken.is_empty() {
        return Ok(None);
    }
    let ids: Vec<i64> = taken.iter().filter(|(_, change)| change.is_none()).map(|(id, _)| *id).collect();
    stats.unread.add((taken.len() - ids.len()) as u64);
    let mut rows: HashMap<i64, Option<String>> = HashMap::new();
    if !ids.is_empty() {
        rows.extend(bounded(DRAIN_TIMEOUT, outbox::events_of(pg, &ids)).await??);
    }
    // The gap is microseconds: the first reads again go at once (a query's round trip is the
    // wait), then 1, 2, 4, 8, 16 ms.
    if wait_visible {
        let mut delay = Duration::ZERO;
        let mut immediate = VISIBILITY_READS_AT_ONCE;
        loop {
            let missing: Vec<i64> = ids.iter().copied().filter(|id| !rows.contains_key(id)).collect();
            if missing.is_empty() {
                break;
            }
            if immediate > 0 {
                immediate -= 1;
            } else {
                delay = (delay * 2).max(Duration::from_millis(1));
                if delay > VISIBILITY_WAIT {
                    break;
                }
                tokio::time::sleep(delay).await;
            }
            rows.extend(bounded(DRAIN_TIMEOUT, outbox::events_of(pg, &missing)).await??);
        }
    }
    let rows = taken
        .into_iter()
        .filter_map(|(id, change)| change.or_else(|| rows.remove(&id).flatten()).map(|row| (id, row)))
        .collect();
    Ok(Some((rows, popped)))
}

/// Reads again without a pause before waiting for a notified row to become visible.
const VISIBILITY_READS_AT_ONCE: u32 = 3;

/// The longest single wait for a notified row to become visible (1 + 2 + … + 16 ms in all).
const VISIBILITY_WAIT: Duration = Duration::from_millis(16);

/// A fresh epoch name: time and process id, base 36 (unique per claim that starts a history).
fn new_epoch() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let mut n = nanos ^ (u128::from(std::process::id()) << 64);
    let mut out = Vec::new();
    while n > 0 {
        out.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).expect("base 36 digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trigger_s_payloads_give_their_id_without_a_parse() {
        assert_eq!(
            trigger_id(r#"{"id" : 7, "table" : "orders", "operation" : "INSERT", "order" : {"id":1}}"#),
            Some(7)
        );
        assert_eq!(
            trigger_id(r#"{"id" : 123456789012, "table" : "orders", "operation" : "UPDATE", "ref" : true}"#),
            Some(123_456_789_012)
        );
        // Anything else takes the full parse (and its checks).
        for other in [
            r#"{"id":7,"table":"orders"}"#,
            r#"{"id" : -1, "x" : 1}"#,
            r#"{"id" : 7}"#,
            r#"{"id" : , "x" : 1}"#,
            "not json",
        ] {
            assert_eq!(trigger_id(other), None, "{other}");
        }
    }

    /// The record of appended ids stays about a second long, also while appends never pause
    /// (no keepalive runs then): what falls below the floor is read, not taken unread.
    #[tokio::test(start_paused = true)]
    async fn the_record_of_appended_ids_keeps_about_a_second_of_a_stream_that_never_pauses() {
        let mut unread = Unread::new(10);
        assert!(!unread.readless(10), "at the floor: read");
        assert!(unread.readless(11));
        for second in 0..5_i64 {
            let first = 11 + second * 100;
            unread.appended(first..first + 100);
            tokio::time::advance(RAISE_EVERY).await;
        }
        unread.appended(511..611);
        // Each append a second after the last raise raised the floor to the newest id of that
        // raise: 10, 210, 310, 410, 510. The record holds the ids after it.
        assert_eq!(unread.floor, 510);
        assert_eq!(unread.appended.len(), 100);
        for (id, readless) in [(300, false), (511, false), (610, false), (611, true)] {
            assert_eq!(unread.readless(id), readless, "{id}");
        }
        unread.appended([5, 9].into_iter());
        assert_eq!(unread.appended.len(), 100, "ids below the floor are not recorded");
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
    }
}
