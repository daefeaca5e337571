//! The active publisher's work within one session: drain the outbox into the replay log,
//! and claim the log (seeding the state when a new history starts). See `relay` for how a
//! publisher becomes active and what a session is.

use std::collections::HashSet;

use protocol::{
    event::{Change, Notification, Operation, parse_notification},
    log::{Append, Claim, Log, StateChange, is_fenced},
    retry::Flow,
};
use sqlx::postgres::{PgListener, PgNotification};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    forward::Redis,
    outbox,
    relay::{QUERY_TIMEOUT, SessionError, bounded},
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
    config: &'a Config,
    stats: &'a Stats,
    log: &'a Log,
    claim: Option<Claim>,
    claimed_generation: u64,
    /// The claim's recent event ids, as a set: built once per claim, not once per drain.
    recent: HashSet<i64>,
    /// Changes from a hand-made legacy trigger: they exist only in the notification.
    legacy: Vec<Change>,
}

impl<'a> Active<'a> {
    pub(crate) fn new(config: &'a Config, stats: &'a Stats, log: &'a Log) -> Self {
        Self { config, stats, log, claim: None, claimed_generation: 0, recent: HashSet::new(), legacy: Vec::new() }
    }

    /// Looks at one notification: the project's trigger's are wake-ups (the outbox has the
    /// change); a legacy payload is kept to append; anything else is skipped with a log line.
    pub(crate) fn note(&mut self, n: &PgNotification) {
        let stats = self.stats;
        stats.notifications.inc();
        match parse_notification(n.payload()) {
            Ok(Notification::Change(change)) if change.id.is_none() => self.legacy.push(change),
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
                self.recent = claim.recent_event_ids.iter().copied().collect();
                self.claim = Some(claim);
            }
            let claim = self.claim.as_ref().expect("claimed above");

            let rows = bounded(QUERY_TIMEOUT, outbox::unpublished(pg, config.batch_max)).await??;
            let full = rows.len() == config.batch_max;
            let mut ids = Vec::with_capacity(rows.len());
            let mut changes = Vec::with_capacity(rows.len() + self.legacy.len());
            for (id, payload) in &rows {
                ids.push(*id);
                if self.recent.contains(id) {
                    continue; // Appended by the previous holder of the log; only the mark is missing.
                }
                match parse_notification(payload) {
                    Ok(Notification::Change(change)) => changes.push(change),
                    _ => {
                        warn!(event_id = id, "realtime_events row is not a change; skipped");
                        stats.skipped.inc();
                    }
                }
            }
            changes.append(&mut self.legacy);
            if changes.is_empty() && ids.is_empty() {
                return Ok(Drained::All);
            }

            let bodies: Vec<(String, Option<String>)> =
                changes.iter().map(|c| (c.to_log_body_rest(), c.row_key())).collect();
            let appends: Vec<Append<'_>> = changes
                .iter()
                .zip(&bodies)
                .map(|(c, (body, key))| Append {
                    body_rest: body,
                    event_id: c.id,
                    state: match (key, c.operation) {
                        (None, _) => StateChange::None,
                        (Some(field), Operation::Delete) => StateChange::Delete { field },
                        (Some(field), _) => StateChange::Set { field, row: c.order.get() },
                    },
                })
                .collect();
            if !appends.is_empty() {
                let appended = {
                    let Some(conn) = redis.connection(shutdown).await? else { return Ok(Drained::Stopped) };
                    log.append(conn, claim.fence, config.log_maxlen, &appends).await
                };
                match appended {
                    Ok(pos) => {
                        stats.published.add(appends.len() as u64);
                        stats.batches.inc();
                        debug!(events = appends.len(), pos, "appended");
                    }
                    Err(e) if is_fenced(&e) => {
                        // Redis lost its data, or another publisher claimed the log. We still
                        // hold the lock if our session is alive: claim again (the next query
                        // fails first if it is not).
                        warn!(error = %e, "log claim lost; claiming again");
                        self.legacy = changes.into_iter().filter(|c| c.id.is_none()).collect();
                        self.claim = None;
                        continue;
                    }
                    Err(e) => {
                        self.legacy = changes.into_iter().filter(|c| c.id.is_none()).collect();
                        if redis.failed(e, shutdown).await? == Flow::Stop {
                            return Ok(Drained::Stopped);
                        }
                        continue;
                    }
                }
            }
            bounded(QUERY_TIMEOUT, outbox::mark_published(pg, &ids)).await??;
            return Ok(if full { Drained::More } else { Drained::All });
        }
    }

    /// Claims the log; seeds the state from the tables when the history is new.
    async fn claim(
        &mut self,
        redis: &mut Redis<'_>,
        pg: &mut PgListener,
        shutdown: &CancellationToken,
    ) -> Result<Option<Claim>, SessionError> {
        let (config, stats, log) = (self.config, self.stats, self.log);
        loop {
            let claimed = {
                let Some(conn) = redis.connection(shutdown).await? else { return Ok(None) };
                log.claim(conn, &new_epoch(), config.batch_max * 2).await
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
            if claim.seeded {
                info!(epoch = %claim.epoch, pos = claim.seq, fence = claim.fence, "claimed the replay log");
                return Ok(Some(claim));
            }
            // A new history: its state starts as the tables are now.
            let rows = bounded(QUERY_TIMEOUT, outbox::snapshot(pg, &config.snapshot_tables)).await??;
            let chunks: Vec<&[(String, String)]> =
                if rows.is_empty() { vec![&[]] } else { rows.chunks(1000).collect() };
            let mut seeded = Ok(());
            for (i, chunk) in chunks.iter().enumerate() {
                let Some(conn) = redis.connection(shutdown).await? else { return Ok(None) };
                seeded = log.seed(conn, claim.fence, chunk, i == 0, i + 1 == chunks.len()).await;
                if seeded.is_err() {
                    break;
                }
            }
            match seeded {
                Ok(()) => {
                    stats.seeded_rows.add(rows.len() as u64);
                    info!(epoch = %claim.epoch, rows = rows.len(), "started a new history; state seeded from the tables");
                    return Ok(Some(Claim { seeded: true, ..claim }));
                }
                Err(e) if is_fenced(&e) => continue,
                Err(e) => {
                    if redis.failed(e, shutdown).await? == Flow::Stop {
                        return Ok(None);
                    }
                }
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
