//! The active publisher's work within one session: drain the outbox into the replay log, and
//! claim the log (building a new history when Redis has none: see `history`). See `relay` for
//! how a publisher becomes active and what a session is.

use std::collections::HashMap;

use protocol::{
    event::{Change, Notification, parse_notification},
    log::{Claim, Log, is_fenced},
    retry::Flow,
};
use sqlx::postgres::{PgListener, PgNotification};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    batch::Batch,
    config::Config,
    forward::Redis,
    history::{self, Built},
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
    pub(crate) fn new(config: &'a Config, stats: &'a Stats, log: &'a Log) -> Self {
        Self {
            config,
            stats,
            log,
            claim: None,
            claimed_generation: 0,
            recent: HashMap::new(),
            legacy: Vec::new(),
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
            Ok(_) => {}
            Err(err) => {
                let preview: String = n.payload().chars().take(200).collect();
                warn!(error = %err, payload = %preview, "skipping malformed notification");
                stats.skipped.inc();
            }
        }
    }

    pub(crate) async fn drain(
        &mut self,
        redis: &mut Redis<'_>,
        pg: &mut PgListener,
        shutdown: &CancellationToken,
    ) -> Result<Drained, SessionError> {
        let (config, stats, log) = (self.config, self.stats, self.log);
        loop {
            // Claim (again) on every new Redis connection: see the module docs.
            if self.claim.is_none() || self.claimed_generation != redis.generation() {
                let Some(claim) = self.claim(redis, pg, shutdown).await? else {
                    return Ok(Drained::Stopped);
                };
                self.claimed_generation = redis.generation();
                self.recent = claim.recent.iter().copied().collect();
                self.appended = claim.seq;
                // The claim settled it: the history it names is complete, and its tail shows
                // what of the batch reached it.
                self.in_doubt = None;
                self.claim = Some(claim);
            }
            let claim = self.claim.as_ref().expect("claimed above");

            let rows = bounded(DRAIN_TIMEOUT, outbox::unpublished(pg, config.batch_max)).await??;
            let full = rows.len() == config.batch_max;
            let mut marks = Vec::with_capacity(rows.len());
            let mut batch = Batch::default();
            for (id, payload) in &rows {
                if let Some(&pos) = self.recent.get(id) {
                    // Appended by the previous holder of the log; only the mark is missing.
                    marks.push((*id, Some(pos)));
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
            if batch.is_empty() && marks.is_empty() {
                return Ok(Drained::All);
            }

            if !batch.is_empty() {
                let appended = {
                    let Some(conn) = redis.connection(shutdown).await? else { return Ok(Drained::Stopped) };
                    log.append(conn, claim, config.log_maxlen, &batch.appends()).await
                };
                match appended {
                    Ok(last) => {
                        stats.published.add(batch.len() as u64);
                        stats.batches.inc();
                        debug!(events = batch.len(), pos = last, "appended");
                        for at in batch.changed_at() {
                            stats.append_latency.observe_since(at);
                        }
                        marks.extend(batch.marks(last));
                        self.appended = last;
                    }
                    Err(e) if is_fenced(&e) => {
                        // Redis lost its data, or another publisher claimed the log. We still
                        // hold the lock if our session is alive: claim again (the next query
                        // fails first if it is not).
                        warn!(error = %e, "log claim lost; claiming again");
                        self.legacy = legacy;
                        self.claim = None;
                        continue;
                    }
                    Err(e) => {
                        self.legacy = legacy;
                        let first = self.appended + 1;
                        self.in_doubt = Some(InDoubt { epoch: claim.epoch.clone(), first, batch });
                        if redis.failed(e, shutdown).await? == Flow::Stop {
                            return Ok(Drained::Stopped);
                        }
                        continue;
                    }
                }
            }
            bounded(DRAIN_TIMEOUT, outbox::mark_published(pg, &claim.epoch, &marks)).await??;
            return Ok(if full { Drained::More } else { Drained::All });
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
                log.claim(conn, &new_epoch(), config.batch_max * 2, restart, bridge.as_ref()).await
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
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
    }
}
