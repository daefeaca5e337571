//! The publisher: PostgreSQL `LISTEN orders_channel` → Redis `PUBLISH orders_updates`.
//!
//! - [`config`]: [`Config`] from the environment
//! - `migrate`: the embedded `sql/` migrations, applied at start
//! - `listen`: the PostgreSQL session — LISTEN, turn notifications into event JSON, reconnect
//! - `forward`: the Redis session — pipelined PUBLISH of everything queued, reconnect
//! - `stats`: readiness and metrics behind `/healthz`, `/readyz`, `/metrics`
//!
//! The two sessions are joined by a bounded queue and reconnect independently. While Redis is
//! down, events wait in the queue; when it is full the listener stops reading and PostgreSQL
//! holds further notifications in its own queue, so nothing received is dropped. What a
//! disconnect from PostgreSQL loses on its own (NOTIFYs sent while no session listens) is
//! recorded in `realtime_events`; catching up from it is the durable path (docs/design.md).

pub mod config;
mod forward;
mod listen;
mod migrate;
mod stats;

use std::sync::Arc;

use tokio::{net::TcpListener, sync::mpsc};
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::Config;
use stats::Stats;

/// Why the publisher stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL refused us in a way retrying cannot fix.
    #[error("postgres session failed")]
    Postgres(#[source] listen::SessionError),
    /// Redis refused us in a way retrying cannot fix.
    #[error("redis session failed")]
    Redis(#[source] forward::SessionError),
    /// The health endpoint server failed.
    #[error("health server failed")]
    Health(#[source] std::io::Error),
}

/// Runs the publisher until `shutdown` is cancelled or a fatal error occurs.
///
/// `health` is the bound listener for `/healthz`, `/readyz` and `/metrics`.
///
/// # Errors
/// A fatal session error (bad credentials, unknown database, a changed migration) or a failed
/// health server. Transient failures are retried forever.
pub async fn run(config: Config, health: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
    let stats = Arc::new(Stats::new());
    let (events_tx, events_rx) = mpsc::channel::<String>(config.buffer);
    let stats_queue = events_tx.downgrade();
    stats.set_queue_probe(move || stats_queue.upgrade().map_or(0, |tx| tx.max_capacity() - tx.capacity()));

    info!(config = ?config, addr = ?health.local_addr().ok(), "publisher starting");
    // Whichever part ends first (shutdown, or a fatal error) stops the others; all three are
    // awaited, so the forwarder's drain of the queue is never cut short.
    let token = shutdown.child_token();
    let http = async {
        let app = protocol::ops::router(stats.clone());
        let result = axum::serve(health, app).with_graceful_shutdown(token.clone().cancelled_owned()).await;
        token.cancel();
        result.map_err(Error::Health)
    };
    let listen = async {
        let result = listen::run(&config, &stats, events_tx, &token).await;
        token.cancel();
        result.map_err(Error::Postgres)
    };
    let forward = async {
        let result = forward::run(&config, &stats, events_rx, &token).await;
        token.cancel();
        result.map_err(Error::Redis)
    };
    let (listened, forwarded, served) = tokio::join!(listen, forward, http);
    info!("publisher stopped");
    listened.and(forwarded).and(served)
}

/// Tests spawn `run` on a multi-threaded runtime; keep its future `Send` (a higher-ranked
/// bound deep inside can silently break that).
#[cfg(test)]
#[allow(dead_code)]
fn run_is_send(config: Config, health: TcpListener, shutdown: CancellationToken) {
    fn is_send<T: Send>(_: T) {}
    is_send(run(config, health, shutdown));
}
