//! The PostgreSQL session: connect, apply migrations (once), `LISTEN`, and turn each
//! notification into event JSON on the queue to the forwarder.
//!
//! sqlx's `PgListener` would reconnect by itself after some errors, silently losing every
//! notification sent during the gap; this module never lets it: any lost connection or error
//! ends the session, and the supervisor opens a new one (after which the durable catch-up
//! from `realtime_events` is what recovers the gap). A half-open connection is noticed by a
//! `SELECT 1` every `keepalive_interval` while idle.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use protocol::{
    event::{Notification, parse_notification},
    retry::{Flow, Retry, Supervisor},
};
use sqlx::{Connection, PgConnection, postgres::PgListener};
use tokio::{sync::mpsc, time::timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    migrate,
    stats::{POSTGRES, Stats},
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl Retry for SessionError {
    fn is_fatal(&self) -> bool {
        use sqlx::migrate::MigrateError as M;
        match self {
            // Wrong password/user or missing database: a person has to fix the URL.
            Self::Sql(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("28P01" | "28000" | "3D000"))
            }
            // An applied migration was edited, or the database is ahead of this binary.
            Self::Migrate(M::VersionMismatch(_) | M::VersionMissing(_) | M::Dirty(_)) => true,
            _ => false,
        }
    }
}

/// Runs PostgreSQL sessions until shutdown, reconnecting with backoff.
pub(crate) async fn run(
    config: &Config,
    stats: &Stats,
    events_tx: mpsc::Sender<String>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let mut migrated = !config.migrate;
    let mut supervisor = Supervisor::new("postgres", config.retry);
    loop {
        let started = Instant::now();
        let ended = session(config, stats, &events_tx, &mut migrated, shutdown).await;
        if supervisor.after(started, ended, &stats.pg_reconnects, shutdown).await? == Flow::Stop {
            return Ok(());
        }
    }
}

async fn session(
    config: &Config,
    stats: &Stats,
    events_tx: &mpsc::Sender<String>,
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

    let mut listener = bounded(CONNECT_TIMEOUT, PgListener::connect(&config.database_url)).await??;
    // We watch the connection ourselves; the pool's close event is not how we stop.
    listener.ignore_pool_close_event(true);
    bounded(QUERY_TIMEOUT, listener.listen(config.pg_channel.as_str())).await??;
    let _up = stats.readiness.up_while(POSTGRES);
    info!(channel = %config.pg_channel, "listening on postgres");

    let mut keepalive = tokio::time::interval(config.keepalive_interval);
    keepalive.reset();
    let mut batch = Vec::with_capacity(config.batch_max);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            // Cancel-safe: sqlx buffers partial reads in the connection.
            received = listener.try_recv() => {
                batch.push(received?.ok_or(SessionError::Lost)?);
                // Take every notification that has already arrived, so they reach Redis
                // together in one pipelined round trip.
                while batch.len() < config.batch_max {
                    match listener.try_recv().now_or_never() {
                        Some(next) => batch.push(next?.ok_or(SessionError::Lost)?),
                        None => break,
                    }
                }
                for n in batch.drain(..) {
                    stats.notifications.inc();
                    let Some(event) = to_event(&mut listener, stats, n.payload()).await? else { continue };
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return Ok(()),
                        sent = events_tx.send(event) => if sent.is_err() { return Ok(()) },
                    }
                }
                keepalive.reset();
            }
            _ = keepalive.tick() => {
                bounded(QUERY_TIMEOUT, sqlx::query("SELECT 1").execute(&mut listener)).await??;
            }
        }
    }
}

/// The event JSON for one payload, or `None` for a payload that is skipped.
async fn to_event(listener: &mut PgListener, stats: &Stats, payload: &str) -> Result<Option<String>, SessionError> {
    let change = match parse_notification(payload) {
        Ok(Notification::Change(change)) => change,
        Ok(Notification::Reference { id }) => {
            stats.references.inc();
            let full: Option<String> = bounded(
                QUERY_TIMEOUT,
                sqlx::query_scalar("SELECT payload::text FROM realtime_events WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *listener),
            )
            .await??;
            let Some(full) = full else {
                warn!(event_id = id, "referenced event is gone from realtime_events (pruned?); skipped");
                stats.skipped.inc();
                return Ok(None);
            };
            match parse_notification(&full) {
                Ok(Notification::Change(change)) => change,
                Ok(Notification::Reference { .. }) | Err(_) => {
                    warn!(event_id = id, "realtime_events row is not a change; skipped");
                    stats.skipped.inc();
                    return Ok(None);
                }
            }
        }
        Err(err) => {
            let preview: String = payload.chars().take(200).collect();
            warn!(error = %err, payload = %preview, "skipping malformed notification");
            stats.skipped.inc();
            return Ok(None);
        }
    };
    debug!(event_id = ?change.id, operation = change.operation.as_str(), table = %change.table, "notification received");
    Ok(Some(change.to_event_json()))
}

async fn bounded<T>(limit: Duration, fut: impl Future<Output = T>) -> Result<T, SessionError> {
    timeout(limit, fut).await.map_err(|_| SessionError::Timeout(limit))
}
