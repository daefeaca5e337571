//! The relay: one PostgreSQL session at a time that is either the standby or the active
//! publisher, moving events from the outbox (`realtime_events`) to the Redis replay log.
//!
//! - **Standby.** Two publishers may run; the one holding a session-level advisory lock is
//!   active, the other polls for the lock every `standby_poll`. The lock lives and dies with
//!   the PostgreSQL session, so a killed active publisher frees it at once.
//! - **Active.** LISTEN on the channel (or stream the logical slot: `capture`); the events
//!   notified are read from the outbox by id and appended to the log in notification order
//!   (one atomic Redis step per batch: position, stream, state, PUBLISH); then marked
//!   published, off the critical path (`marks`). At the start, every `keepalive_interval` and
//!   after a Redis failure a catch-up reads unpublished events in id order instead (`active`). A crash between append and mark leaves at most the
//!   mark window unmarked; the claim made before appending returns that many of the log's
//!   newest event ids, so no repeat reaches the log.
//! - **Claim.** Before its first append on each Redis connection, the active publisher claims
//!   the log: this fences off a previous publisher (its next append fails) and, when Redis has
//!   lost its data, starts a new epoch and seeds the state from the tables.
//!
//! sqlx's `PgListener` would reconnect by itself after some errors, silently losing the
//! notifications of the gap; here any error ends the session and a new one starts, which
//! drains the outbox first. Nothing depends on a notification arriving: they only wake the drain.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use protocol::{
    env::redact_url,
    log::Log,
    retry::{Flow, Retry, Supervisor},
};
use sqlx::{Connection, PgConnection, postgres::PgListener};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{
    active::{Active, Drained},
    capture::{self, Capture, Slot},
    config::Config,
    forward::{FatalError, Redis},
    marks::Marks,
    migrate, outbox,
    stats::{POSTGRES, Stats},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// The drain's statements (one batch read, one batch of marks) take milliseconds; a longer wait
/// means a frozen or partitioned server, so this deadline bounds how long a freeze that catches
/// a drain goes unnoticed (an idle session notices within `KEEPALIVE_TIMEOUT`). Pruning and a
/// new history's reads keep the longer `QUERY_TIMEOUT`.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// A `SELECT 1` that takes longer means a dead (half-open) connection or a frozen server.
/// With the 1 s keepalive interval a frozen PostgreSQL is noticed within about 3 s.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a PostgreSQL session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting, LISTEN or a query failed.
    #[error("postgres error")]
    Sql(#[from] sqlx::Error),
    /// Applying the `sql/` migrations failed.
    #[error("failed to apply migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The server closed the connection.
    #[error("connection lost")]
    Lost,
    /// Connecting or a query took too long.
    #[error("postgres did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis refused us for good (bad credentials).
    #[error(transparent)]
    Redis(#[from] FatalError),
    /// Logical capture cannot work as configured (the message says what to change).
    #[error("{0}")]
    Capture(String),
    /// The replication connection of logical capture failed.
    #[error("replication connection failed")]
    Replication(#[source] pgwire_replication::PgWireError),
}

impl Retry for SessionError {
    fn is_fatal(&self) -> bool {
        use sqlx::migrate::MigrateError as M;
        match self {
            // A missing database needs a person. A wrong password or role is retried:
            // credentials are often rotated on the server first, and the service should
            // recover by itself once they match (it stays up and not ready meanwhile).
            Self::Sql(sqlx::Error::Database(e)) => matches!(e.code().as_deref(), Some("3D000")),
            // An applied migration was edited, or the database is ahead of this binary.
            Self::Migrate(M::VersionMismatch(_) | M::VersionMissing(_) | M::Dirty(_)) => true,
            Self::Redis(_) | Self::Capture(_) => true,
            _ => false,
        }
    }
}

/// Runs sessions until shutdown, reconnecting to PostgreSQL with backoff.
pub(crate) async fn run(config: &Config, stats: &Stats, shutdown: &CancellationToken) -> Result<(), SessionError> {
    let mut redis = Redis::new(config, stats)?;
    let log = Log::new(&config.redis_channel);
    let mut migrated = !config.migrate;
    let mut supervisor = Supervisor::new("postgres", config.retry).for_server(redact_url(&config.database_url));
    loop {
        let started = Instant::now();
        let ended = session(config, stats, &mut redis, &log, &mut migrated, shutdown).await;
        stats.leader.set(0);
        if supervisor.after(started, ended, &stats.pg_reconnects, shutdown).await? == Flow::Stop {
            return Ok(());
        }
    }
}

async fn session(
    config: &Config,
    stats: &Stats,
    redis: &mut Redis<'_>,
    log: &Log,
    migrated: &mut bool,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    if !*migrated {
        let mut conn = bounded(CONNECT_TIMEOUT, PgConnection::connect(&config.database_url)).await??;
        migrate::apply(&mut conn).await?;
        // Closing politely is a courtesy; the migrations are committed either way.
        let _ = conn.close().await;
        *migrated = true;
        info!("migrations applied");
    }

    let mut pg = bounded(CONNECT_TIMEOUT, PgListener::connect(&config.database_url)).await??;
    // We watch the connection ourselves: a lost connection must end this session (so the next
    // one drains the outbox), not be silently replaced by sqlx's own reconnect, which would
    // also block for the pool's acquire timeout while PostgreSQL is down.
    pg.ignore_pool_close_event(true);
    pg.eager_reconnect(false);
    let _up = stats.readiness.up_while(POSTGRES);

    let lock_key = advisory_lock_key(config.pg_channel.as_str());
    if !try_lock(&mut pg, lock_key).await? {
        info!("another publisher is active; waiting as standby");
        redis.ping(shutdown).await?;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(config.standby_poll) => {
                    if try_lock(&mut pg, lock_key).await? {
                        break;
                    }
                }
            }
        }
    }
    // The wake-ups first, then the trigger's mode: whatever commits in between is in the
    // outbox, which the first drain reads.
    let mut slot = match config.capture {
        Capture::Notify => {
            bounded(QUERY_TIMEOUT, pg.listen(config.pg_channel.as_str())).await??;
            capture::set_mode(&mut pg, Capture::Notify).await?;
            capture::drop_unused_slot(&mut pg, config.slot.as_str()).await?;
            None
        }
        Capture::Logical => {
            let slot = Slot::open(config, &mut pg).await?;
            capture::set_mode(&mut pg, Capture::Logical).await?;
            Some(slot)
        }
    };
    stats.leader.set(1);
    if slot.is_some() {
        info!(channel = %config.pg_channel, slot = %config.slot, "active publisher; streaming the replication slot");
    } else {
        info!(channel = %config.pg_channel, "active publisher; listening on postgres");
    }

    let mut marks =
        Marks::start(&config.database_url, config.mark_window.max(config.batch_max) / 4, stats.mark_commits.clone())
            .await?;
    // Without the key (an older schema, or a role that may not read it) every wake-up is read.
    let key = match slot {
        None => bounded(QUERY_TIMEOUT, outbox::notify_key(&mut pg)).await??,
        Some(_) => None,
    };
    if slot.is_none() && key.is_none() {
        info!("no signing key readable (realtime_notify_key): every notified event is read from the outbox");
    }
    let mut active = Active::new(config, stats, log, key);
    let mut keepalive = tokio::time::interval(config.keepalive_interval);
    keepalive.reset();
    let mut prune = tokio::time::interval(config.prune_interval);
    let mut wake = true; // Catch up with whatever committed while no session was active.
    loop {
        if wake {
            match active.drain(redis, &mut pg, &mut marks, shutdown).await? {
                Drained::Stopped => return stopped(marks).await,
                Drained::More => continue,
                Drained::All => wake = false,
            }
        }
        if active.has_notified() {
            let forwarded = match slot.as_mut() {
                None => active.forward(redis, &mut pg, &mut marks, shutdown, take_buffered).await?,
                Some(slot) => {
                    let more = |a: &mut Active<'_>, _: &mut PgListener| {
                        slot.ack(a.settled);
                        slot.take_buffered(a)
                    };
                    active.forward(redis, &mut pg, &mut marks, shutdown, more).await?
                }
            };
            match forwarded {
                Drained::Stopped => return stopped(marks).await,
                // No claim on this Redis connection yet, or an append failed.
                Drained::More => wake = true,
                Drained::All => wake = active.needs_catch_up(),
            }
            continue;
        }
        // The appends paused: the marks held back go out when the next events have had
        // `marks::LINGER` to join them.
        let marks_due = marks.due();
        // Everything received is in the log now (forwarded, or drained from the outbox).
        if let Some(slot) = slot.as_mut() {
            slot.ack(active.settled);
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return stopped(marks).await,
            // Cancel-safe: sqlx buffers partial reads in the connection.
            received = pg.try_recv(), if slot.is_none() => {
                active.note(&received?.ok_or(SessionError::Lost)?);
                // Take every notification already here: one forward serves them all.
                take_buffered(&mut active, &mut pg)?;
                wake = active.needs_catch_up();
            }
            // Cancel-safe: a channel receive.
            received = next_message(&mut slot, stats) => {
                let slot = slot.as_mut().expect("only with a slot");
                if let Some(id) = received? {
                    active.note_id(id);
                }
                slot.take_buffered(&mut active)?;
            }
            () = tokio::time::sleep_until(marks_due.unwrap_or_else(tokio::time::Instant::now)), if marks_due.is_some() => {
                marks.dispatch().await?;
            }
            _ = keepalive.tick() => {
                // Doubles as the check that the session is alive, and as a catch-up should a
                // notification ever go missing.
                bounded(KEEPALIVE_TIMEOUT, sqlx::query("SELECT 1").execute(&mut pg)).await??;
                redis.ping(shutdown).await?;
                active.verify_head(redis, shutdown).await?;
                active.raise_floor();
                wake = true;
            }
            _ = prune.tick() => {
                if slot.is_none() {
                    capture::drop_unused_slot(&mut pg, config.slot.as_str()).await?;
                }
                let deleted = bounded(QUERY_TIMEOUT, outbox::prune(&mut pg, config.outbox_retention, config.outbox_max_rows)).await??;
                if deleted > 0 {
                    stats.pruned.add(deleted);
                    debug!(deleted, "pruned published events");
                }
            }
        }
    }
}

/// The next event of the slot's stream (never, without a slot).
async fn next_message(slot: &mut Option<Slot>, stats: &Stats) -> Result<Option<i64>, SessionError> {
    match slot {
        Some(slot) => slot.recv(stats).await,
        None => std::future::pending().await,
    }
}

/// Notifications that arrived meanwhile (sqlx buffers them during queries), noted.
fn take_buffered(active: &mut Active<'_>, pg: &mut PgListener) -> Result<(), SessionError> {
    while let Some(next) = pg.try_recv().now_or_never() {
        active.note(&next?.ok_or(SessionError::Lost)?);
    }
    Ok(())
}

/// At shutdown: the marks already queued are committed (within the shutdown grace; what is not
/// is recovered by the next claim).
async fn stopped(mut marks: Marks) -> Result<(), SessionError> {
    marks.flush().await
}

/// The advisory lock that elects the active publisher of a channel.
fn advisory_lock_key(channel: &str) -> i64 {
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "orders-realtime-publisher:".bytes().chain(channel.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

async fn try_lock(pg: &mut PgListener, key: i64) -> Result<bool, SessionError> {
    Ok(bounded(QUERY_TIMEOUT, sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *pg))
        .await??)
}

pub(crate) async fn bounded<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, SessionError> {
    timeout(limit, fut).await.map_err(|_| SessionError::Timeout(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_key_is_stable_and_per_channel() {
        // Pinned: a changed key would let an old and a new version both be active at once.
        assert_eq!(advisory_lock_key("orders_channel"), PINNED_ORDERS_CHANNEL_KEY);
        assert_ne!(advisory_lock_key("orders_channel"), advisory_lock_key("other_channel"));
    }

    const PINNED_ORDERS_CHANNEL_KEY: i64 = 6_025_432_767_938_846_510;
}
