//! Starting a new history when Redis has none (first start, or Redis lost its data), so that
//! nothing committed is lost for anyone watching, and nobody is told to start over who need
//! not be.
//!
//! All of it is read in one REPEATABLE READ snapshot of PostgreSQL:
//!
//! 1. **The bridge.** The newest events of the previous history that the outbox recorded at
//!    consecutive positions (`PUBLISHER_BRIDGE_EVENTS` at most) are appended again, in their
//!    old order, as the new history's first positions; the new history's meta says which old
//!    positions they stand for. A replica or client at old position `p` inside that range
//!    continues at the new position that re-offers `p`: what it saw is not sent again, what
//!    it missed (Redis died before delivering it) is.
//! 2. **The backlog.** Every change committed and not yet published (committed while Redis was
//!    down) follows as an event, in id order, exactly as the drain would have sent it.
//! 3. **The seed.** The state hash is filled from the tables as of the same snapshot, so it
//!    stands at the position after the backlog: a snapshot plus the events after it is the
//!    table.
//!
//! Then the events are marked published with their new positions, and only then is the
//! history marked seeded. A publisher that dies half-way leaves a history with entries and no
//! seed; the next claim replaces it by another new one (its positions may have been seen), which
//! bridges from whatever was recorded last.

use std::collections::HashSet;

use protocol::{
    event::{Notification, parse_notification},
    log::{Bridge, Claim, is_fenced},
    retry::Flow,
};
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    active::Active,
    batch::Batch,
    forward::Redis,
    outbox::{self, Snapshot},
    relay::{QUERY_TIMEOUT, SessionError, bounded},
};

/// Rows written to the state hash per call.
const SEED_CHUNK: usize = 1000;

/// How building a new history ended.
#[derive(Debug)]
pub(crate) enum Built {
    /// The history is complete and seeded: append to it.
    Ready(Claim),
    /// Redis failed or another publisher claimed the log meanwhile: claim again.
    Again,
    /// Shutdown was requested.
    Stopped,
}

/// A step of the build: done, or the build ends as [`Built`] says.
type Step<T> = Result<T, Built>;

/// One Redis call of the build, evaluating to its value; any failure abandons the build,
/// returning `Ok(Err(built))` from the enclosing function. The history then has entries and
/// no seed, so the next claim replaces it. A fenced call means someone else holds the log now;
/// any other failure is retried after the reconnect delay.
macro_rules! on_redis {
    ($redis:expr, $shutdown:expr, |$conn:ident| $call:expr) => {{
        let result = match $redis.connection($shutdown).await? {
            Some($conn) => $call.await,
            None => return Ok(Err(Built::Stopped)),
        };
        match result {
            Ok(value) => value,
            Err(e) if is_fenced(&e) => {
                warn!(error = %e, "log claim lost while starting a new history; claiming again");
                return Ok(Err(Built::Again));
            }
            Err(e) => {
                let flow = $redis.failed(e, $shutdown).await?;
                return Ok(Err(if flow == Flow::Stop { Built::Stopped } else { Built::Again }));
            }
        }
    }};
}

/// Builds the new, empty history `claim` names. See the module docs.
pub(crate) async fn build(
    active: &Active<'_>,
    redis: &mut Redis<'_>,
    pg: &mut PgListener,
    claim: Claim,
    shutdown: &CancellationToken,
) -> Result<Built, SessionError> {
    let mut snapshot = bounded(QUERY_TIMEOUT, Snapshot::begin(pg)).await??;
    match fill(active, redis, &mut snapshot, &claim, shutdown).await {
        Ok(Ok(())) => bounded(QUERY_TIMEOUT, snapshot.commit()).await??,
        Ok(Err(built)) => {
            snapshot.rollback().await;
            return Ok(built);
        }
        Err(e) => {
            snapshot.rollback().await;
            return Err(e);
        }
    }
    // Seeded only now that the marks are committed (see the module docs).
    Ok(match seeded(active, redis, &claim, shutdown).await? {
        Ok(()) => Built::Ready(Claim { seeded: true, ..claim }),
        Err(built) => built,
    })
}

async fn seeded(
    active: &Active<'_>,
    redis: &mut Redis<'_>,
    claim: &Claim,
    shutdown: &CancellationToken,
) -> Result<Step<()>, SessionError> {
    on_redis!(redis, shutdown, |conn| active.log.seed(conn, claim, &[], false, true));
    Ok(Ok(()))
}

/// Inside the snapshot: bridge, backlog, marks and the seeded rows (all but the final flag).
async fn fill(
    active: &Active<'_>,
    redis: &mut Redis<'_>,
    snapshot: &mut Snapshot<'_>,
    claim: &Claim,
    shutdown: &CancellationToken,
) -> Result<Step<()>, SessionError> {
    let (config, stats, log) = (active.config, active.stats, active.log);
    let mut marks: Vec<(i64, Option<u64>)> = Vec::new();

    // 1. The bridge from the previous history.
    let previous = bounded(QUERY_TIMEOUT, snapshot.previous_epoch(&claim.epoch)).await??;
    let mut bridged = HashSet::new();
    if let Some(previous) = previous
        && config.bridge_events > 0
    {
        let tail = bounded(QUERY_TIMEOUT, snapshot.recorded_tail(&previous, config.bridge_events)).await??;
        let mut changes = Vec::with_capacity(tail.len());
        for (pos, id, payload) in tail {
            match parse_notification(&payload) {
                Ok(Notification::Change(change)) => changes.push((pos, id, change)),
                // It parsed when it was first appended, so the row was edited since. Leaving
                // it out would shift every position after it: the bridge starts after it.
                _ => {
                    warn!(event_id = id, "recorded event is no longer a change; the bridge starts after it");
                    changes.clear();
                }
            }
        }
        // A batch whose append went unanswered just before Redis went away may have reached
        // replicas at the positions after the recorded ones: re-offer it there too.
        let doubt = active
            .in_doubt
            .as_ref()
            .filter(|d| d.epoch == previous && changes.last().is_none_or(|(last, ..)| d.first == last + 1));
        let from = changes.first().map(|(pos, ..)| *pos).or(doubt.map(|d| d.first));
        let to = doubt.map(|d| d.first + d.batch.len() as u64 - 1).or(changes.last().map(|(pos, ..)| *pos));
        if let (Some(from), Some(to)) = (from, to) {
            let bridge = Bridge { epoch: previous.clone(), from, to };
            on_redis!(redis, shutdown, |conn| log.set_bridge(conn, claim, &bridge));
            info!(
                epoch = %claim.epoch, previous = %previous, from = bridge.from, to = bridge.to,
                "new history re-offers the newest events of the previous one"
            );
            let mut changes = changes.into_iter().peekable();
            while changes.peek().is_some() {
                let mut batch = Batch::default();
                for (_, id, change) in changes.by_ref().take(config.batch_max) {
                    bridged.insert(id);
                    batch.push(change);
                }
                let last =
                    on_redis!(redis, shutdown, |conn| log.append(conn, claim, config.log_maxlen, &batch.appends()));
                marks.extend(batch.marks(last));
                stats.reoffered.add(batch.len() as u64);
            }
            if let Some(doubt) = doubt {
                let batch = &doubt.batch;
                bridged.extend(batch.ids());
                let last =
                    on_redis!(redis, shutdown, |conn| log.append(conn, claim, config.log_maxlen, &batch.appends()));
                marks.extend(batch.marks(last));
                stats.reoffered.add(batch.len() as u64);
            }
        }
    }

    // 2. The backlog, in id order.
    let mut after = i64::MIN;
    let mut backlog = 0_usize;
    loop {
        let rows = bounded(QUERY_TIMEOUT, snapshot.unpublished_after(after, config.batch_max)).await??;
        let Some(&(last_id, _)) = rows.last() else { break };
        after = last_id;
        let mut batch = Batch::default();
        for (id, payload) in &rows {
            if bridged.contains(id) {
                continue;
            }
            match parse_notification(payload) {
                Ok(Notification::Change(change)) => batch.push(change),
                _ => {
                    warn!(event_id = id, "realtime_events row is not a change; skipped");
                    stats.skipped.inc();
                    marks.push((*id, None));
                }
            }
        }
        if !batch.is_empty() {
            let last = on_redis!(redis, shutdown, |conn| log.append(conn, claim, config.log_maxlen, &batch.appends()));
            marks.extend(batch.marks(last));
            stats.published.add(batch.len() as u64);
            stats.batches.inc();
            // Backlog events are as late as the outage made them; re-offered ones are not
            // measured (they were appended once already).
            for at in batch.changed_at() {
                stats.append_latency.observe_since(at);
            }
            backlog += batch.len();
        }
        if rows.len() < config.batch_max {
            break;
        }
    }

    // 3. Marks, with the new positions, in the same transaction as the reads.
    bounded(QUERY_TIMEOUT, outbox::mark_published(snapshot.conn(), &claim.epoch, &marks)).await??;

    // 4. The state as of the same snapshot, in chunks; the flag that completes it comes last.
    let rows = bounded(QUERY_TIMEOUT, snapshot.rows(&config.snapshot_tables)).await??;
    let chunks: Vec<&[(String, String)]> = if rows.is_empty() { vec![&[]] } else { rows.chunks(SEED_CHUNK).collect() };
    for (i, chunk) in chunks.iter().enumerate() {
        on_redis!(redis, shutdown, |conn| log.seed(conn, claim, chunk, i == 0, false));
    }
    stats.seeded_rows.add(rows.len() as u64);
    info!(epoch = %claim.epoch, backlog, rows = rows.len(), "started a new history: backlog appended, state seeded");
    Ok(Ok(()))
}
