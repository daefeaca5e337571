//! The outbox backlog as metrics: how many committed changes are not yet published
//! (`publisher_outbox_backlog`) and how old the oldest of them is
//! (`publisher_outbox_backlog_age_seconds`), read from `realtime_events` every
//! `keepalive_interval`.
//!
//! It reads on a PostgreSQL connection of its own, not on the relay's session: while Redis is
//! down the relay's session waits inside the Redis reconnect (forward.rs), and that is exactly
//! when the backlog grows; and a slow count must never hold up a drain. Every publisher reads
//! it, the standby too: it is the database's number, so a standby shows a backlog that a dead
//! or stuck active publisher leaves behind (aggregate with `max`, not `sum`). When PostgreSQL
//! cannot be read the gauges keep their last values; `publisher_postgres_up` says why.
//!
//! The same read gives the WAL retained by the logical capture slot
//! (`publisher_slot_retained_wal_bytes`), in either mode: a slot left behind keeps WAL too.

use std::time::{Duration, Instant};

use protocol::{
    ops::Counter,
    retry::{Flow, Supervisor},
};
use sqlx::{ConnectOptions, PgConnection, postgres::PgConnectOptions};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    relay::{SessionError, bounded},
    stats::Stats,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Both the client's bound on one read and the server's `statement_timeout` for it, so the
/// server gives up on a count the client no longer waits for.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Committed changes not yet published, and the age in seconds of the oldest (0 without any).
/// Both ends of the age come from PostgreSQL's clock: no skew with the publisher's.
const BACKLOG: &str = "SELECT count(*), \
     COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)::float8 \
     FROM realtime_events WHERE published_at IS NULL";

/// The slot's retained WAL in bytes (from its restart position to the current WAL end) and
/// whether it is streamed; 0 and false without the slot.
const SLOT: &str = "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn), 0)::int8, \
     coalesce(s.active, false) FROM (SELECT 1) one \
     LEFT JOIN pg_replication_slots s ON s.slot_name = $1 AND s.database = current_database()";

/// Keeps the backlog gauges of `stats` fresh until shutdown, reconnecting with backoff.
pub(crate) async fn run(config: &Config, stats: &Stats, shutdown: &CancellationToken) {
    let mut supervisor =
        Supervisor::new("backlog", config.retry).for_server(protocol::env::redact_url(&config.database_url));
    // Not exported: the relay's session already counts PostgreSQL outages.
    let reconnects = Counter::default();
    loop {
        let started = Instant::now();
        let ended = session(config, stats, shutdown).await;
        // A fatal error (bad credentials) is logged by the supervisor, and ends the relay too.
        match supervisor.after(started, ended, &reconnects, shutdown).await {
            Ok(Flow::Retry) => {}
            Ok(Flow::Stop) | Err(_) => return,
        }
    }
}

async fn session(config: &Config, stats: &Stats, shutdown: &CancellationToken) -> Result<(), SessionError> {
    let options: PgConnectOptions = config.database_url.parse()?;
    let timeout_ms = READ_TIMEOUT.as_millis().to_string();
    let options = options.application_name("publisher-backlog").options([("statement_timeout", timeout_ms.as_str())]);
    let connect = bounded(CONNECT_TIMEOUT, options.connect());
    let mut conn: PgConnection = tokio::select! {
        biased;
        () = shutdown.cancelled() => return Ok(()),
        conn = connect => conn??,
    };
    // The first read waits one period, which leaves the relay time to apply the migrations
    // that create the table on a fresh database.
    let period = config.keepalive_interval;
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    // A slow read pushes the next one back rather than bunching reads up behind it.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let read = async {
            every.tick().await;
            bounded(READ_TIMEOUT, read(&mut conn, config.slot.as_str())).await
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            // Dropping a read half way is fine: shutdown drops the connection with it.
            read = read => {
                let ((count, age), (retained, active)) = read??;
                stats.backlog.set(count);
                stats.backlog_age.set(age);
                stats.slot_retained.set(retained);
                stats.slot_active.set(i64::from(active));
            }
        }
    }
}

/// The backlog's size and the age of its oldest change; the slot's retained WAL and activity.
async fn read(conn: &mut PgConnection, slot: &str) -> Result<((i64, f64), (i64, bool)), sqlx::Error> {
    // Unnamed: planned with the outbox as it is now (see `outbox::unpublished`).
    let backlog = sqlx::query_as(BACKLOG).persistent(false).fetch_one(&mut *conn).await?;
    let slot = sqlx::query_as(SLOT).bind(slot).fetch_one(&mut *conn).await?;
    Ok((backlog, slot))
}
