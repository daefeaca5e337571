//! Starting a new history when Redis has none (first start, or Redis lost its data), so that
//! nothing committed is lost for anyone watching, and nobody is told to start over who need
//! not be.
//!
//! All of it is read in one REPEATABLE READ snapshot of PostgreSQL:
//!
//! 1. **The bridge.** The newest events of the previous history that the outbox recorded at
//!    consecutive positions (`PUBLISHER_BRIDGE_EVENTS` at most) are appended again, in their
//!    old order, as the new history's first positions; the new history's meta says which old
//!    positions they stand for. That bridge is planned ([`plan`]) before the claim and set by
//!    the claim itself, with the epoch, so nobody sees the new history without it; the build
//!    then checks the outbox still holds all of it ([`Built::Replace`] if not). A replica or client at old position `p` inside that range
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
    relay::{DRAIN_TIMEOUT, QUERY_TIMEOUT, SessionError, bounded},
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
    /// Its bridge cannot be kept (planned by a publisher that died, or a recorded row was
    /// edited since): replace it by another new history.
    Replace,
    /// Shutdown was requested.
    Stopped,
}

/// The bridge a new history would get now: the newest run of consecutive recorded positions
/// of the history appended to last (at most `PUBLISHER_BRIDGE_EVENTS`), extended by a batch in
/// doubt right after it. Planned before the claim, so that the claim can start the history and
/// set its bridge in one step: a replica never sees the new history without its bridge.
pub(crate) async fn plan(active: &Active<'_>, pg: &mut PgListener) -> Result<Option<Bridge>, SessionError> {
    let limit = active.config.bridge_events;
    if limit == 0 {
        return Ok(None);
    }
    let doubt = active.in_doubt.as_ref();
    let previous = match doubt {
        // In memory, so newer than anything recorded.
        Some(doubt) => doubt.epoch.clone(),
        None => match bounded(QUERY_TIMEOUT, outbox::previous_epoch(pg)).await?? {
            Some(epoch) => epoch,
            None => return Ok(None),
        },
    };
    let positions = bounded(QUERY_TIMEOUT, outbox::recorded_positions(pg, &previous, limit)).await??;
    let run =
        positions.iter().zip(positions.iter().skip(1)).take_while(|(newer, older)| **newer == **older + 1).count();
    let recorded = positions.first().map(|to| (positions[run], *to));
    let (from, to) = match (recorded, doubt) {
        (Some((from, to)), Some(d)) if d.first == to + 1 => (from, to + d.batch.len() as u64),
        (None, Some(d)) => (d.first, d.first + d.batch.len() as u64 - 1),
        (Some(range), _) => range,
        (None, None) => return Ok(None),
    };
    Ok(Some(Bridge { epoch: previous, from, to }))
}

/// The events `bridge` promises, as batches to append: the recorded ones from the outbox (in
/// this snapshot), then the batch in doubt. `None` when they are not all there any more.
async fn reoffer(
    active: &Active<'_>,
    snapshot: &mut Snapshot<'_>,
    bridge: &Bridge,
) -> Result<Option<Vec<Batch>>, SessionError> {
    let rows = bounded(QUERY_TIMEOUT, snapshot.recorded_range(&bridge.epoch, bridge.from, bridge.to)).await??;
    let mut batches = Vec::new();
    let mut batch = Batch::default();
    let mut next = bridge.from;
    for (pos, _, payload) in rows {
        if pos != next {
            return Ok(None); // a hole: a row was pruned or re-marked since the plan
        }
        match parse_notification(&payload) {
            Ok(Notification::Change(change)) => batch.push(change),
            // It parsed when it was first appended, so the row was edited since.
            _ => return Ok(None),
        }
        next += 1;
        if batch.len() == active.config.batch_max {
            batches.push(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    if next <= bridge.to {
        // The rest must be the batch in doubt, at exactly those positions.
        let Some(doubt) = active
            .in_doubt
            .as_ref()
            .filter(|d| d.epoch == bridge.epoch && d.first == next && d.first + d.batch.len() as u64 == bridge.to + 1)
        else {
            return Ok(None);
        };
        batches.push(doubt.batch.clone());
    }
    Ok(Some(batches))
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
    let mut snapshot = bounded(DRAIN_TIMEOUT, Snapshot::begin(pg)).await??;
    // `claim.seq` follows the build's appends: the next append must find the log there.
    let mut claim = claim;
    match fill(active, redis, &mut snapshot, &mut claim, shutdown).await {
        Ok(Ok(())) => bounded(DRAIN_TIMEOUT, snapshot.commit()).await??,
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

/// Appends `batch` to the history being built, which must be at `claim.seq`; moves that on.
async fn append(
    active: &Active<'_>,
    redis: &mut Redis<'_>,
    claim: &mut Claim,
    batch: &Batch,
    shutdown: &CancellationToken,
) -> Result<Step<()>, SessionError> {
    let (config, log) = (active.config, active.log);
    let at = Some(claim.seq);
    claim.seq = on_redis!(redis, shutdown, |conn| log.append(conn, claim, at, config.log_maxlen, &batch.appends()));
    Ok(Ok(()))
}

/// Inside the snapshot: bridge, backlog, marks and the seeded rows (all but the final flag).
async fn fill(
    active: &Active<'_>,
    redis: &mut Redis<'_>,
    snapshot: &mut Snapshot<'_>,
    claim: &mut Claim,
    shutdown: &CancellationToken,
) -> Result<Step<()>, SessionError> {
    let (config, stats, log) = (active.config, active.stats, active.log);
    let mut marks: Vec<(i64, Option<u64>)> = Vec::new();

    // 1. The bridge from the previous history, as the claim set it.
    let mut bridged = HashSet::new();
    if let Some(bridge) = &claim.bridge {
        let Some(reoffer) = reoffer(active, snapshot, bridge).await? else {
            warn!(?bridge, "the outbox no longer holds what the new history's bridge promises; replacing it");
            return Ok(Err(Built::Replace));
        };
        info!(
            epoch = %claim.epoch, previous = %bridge.epoch, from = bridge.from, to = bridge.to,
            "new history re-offers the newest events of the previous one"
        );
        for batch in &reoffer {
            bridged.extend(batch.ids());
            if let Err(built) = append(active, redis, claim, batch, shutdown).await? {
                return Ok(Err(built));
            }
            marks.extend(batch.marks(claim.seq));
            stats.reoffered.add(batch.len() as u64);
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
            if let Err(built) = append(active, redis, claim, &batch, shutdown).await? {
                return Ok(Err(built));
            }
            marks.extend(batch.marks(claim.seq));
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
    info!(epoch = %claim.epoch, backlog, rows = rows.len(), "started a new history: re-offered events, then the backlog, then the state seeded");
    Ok(Ok(()))
}
