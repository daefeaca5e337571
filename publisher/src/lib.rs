//! The publisher: PostgreSQL outbox (`realtime_events`, woken by `LISTEN orders_channel`)
//! → the Redis replay log and `PUBLISH orders_updates`, in one atomic step per batch.
//!
//! - [`config`]: [`Config`] from the environment
//! - `migrate`: the embedded `sql/` migrations, applied at start
//! - `relay`: the PostgreSQL session: standby/active election, wake-ups, keepalive
//! - `capture`: what wakes the publisher (`PUBLISHER_CAPTURE`): LISTEN, or a logical
//!   replication slot streaming the trigger's messages
//! - `active`: the active publisher's forwarding (notified ids → outbox rows → replay log),
//!   catch-up (unpublished rows → replay log) and claim
//! - `history`: a new history when Redis has none: bridge, backlog, seed, in one snapshot
//! - `marks`: the published marks, committed on a connection of their own off the critical path
//! - `batch`: changes serialized once on their way to the log, and the positions they got
//! - `outbox`: the outbox queries (unpublished, mark with positions, prune, the snapshot reads)
//! - `forward`: the Redis connection with reconnect
//! - `backlog`: the outbox backlog gauges, read on a connection of their own
//! - `stats`: readiness and metrics behind `/healthz`, `/readyz`, `/metrics`
//!
//! Nothing is held only in memory: an event leaves the outbox's unpublished set only after
//! Redis has it, so a publisher that is down, disconnected, or killed loses nothing; the next
//! active publisher continues from the outbox (docs/design.md, "Delivery guarantees").

mod active;
mod backlog;
mod batch;
mod capture;
pub mod config;
mod forward;
mod history;
mod marks;
mod migrate;
mod outbox;
mod relay;
mod stats;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use capture::Capture;
pub use config::Config;
use stats::Stats;

/// The publisher as a daemon, for `protocol::service::main`.
#[derive(Debug)]
pub struct Publisher;

impl protocol::service::Daemon for Publisher {
    type Config = Config;
    type Error = Error;

    fn load() -> Result<Config, protocol::env::ConfigErrors> {
        Config::from_env()
    }
    fn log_format(config: &Config) -> protocol::telemetry::LogFormat {
        config.log_format
    }
    /// One thread: the relay, its Redis connection's driver and the marks task hand work to
    /// each other for every event, and on one thread no hand-over wakes another thread
    /// (1-client latency p50 0.71 → 0.61 ms, docs/benchmarks.md). PostgreSQL and Redis do the
    /// heavy lifting in their own processes.
    fn threads(_config: &Config) -> protocol::service::Threads {
        protocol::service::Threads::Single
    }
    fn listen_addr(config: &Config) -> (std::net::SocketAddr, &'static str) {
        ((config.bind_addr, config.health_port).into(), "PUBLISHER_BIND_ADDR, HEALTH_PORT")
    }
    fn run(
        config: Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Error>> {
        run(config, listener, shutdown)
    }
}

/// Why the publisher stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL or Redis refused us in a way retrying cannot fix.
    #[error("relay session failed")]
    Relay(#[source] relay::SessionError),
    /// The health endpoint server failed.
    #[error("health server failed")]
    Health(#[source] std::io::Error),
}

/// Runs the publisher until `shutdown` is cancelled or a fatal error occurs.
///
/// `health` is the bound listener for `/healthz`, `/readyz` and `/metrics`. After `shutdown`,
/// the batch in flight gets `shutdown_grace` to reach Redis and be marked; then `run` returns
/// regardless.
///
/// # Errors
/// A fatal session error (bad credentials, unknown database, a changed migration) or a failed
/// health server. Transient failures are retried forever.
pub async fn run(config: Config, health: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
    let stats = Arc::new(Stats::new());
    info!(config = ?config, addr = ?health.local_addr().ok(), "publisher starting");
    // Whichever part ends first (shutdown, or a fatal error) stops the other; both are awaited.
    let token = shutdown.child_token();
    let http = async {
        let app = protocol::ops::router(stats.clone());
        let result = axum::serve(health, app).with_graceful_shutdown(token.clone().cancelled_owned()).await;
        token.cancel();
        result.map_err(Error::Health)
    };
    let relay = async {
        let result = relay::run(&config, &stats, &token).await;
        token.cancel();
        result.map_err(Error::Relay)
    };
    // The backlog gauges never stop the others: they retry what is transient.
    let backlog = async {
        backlog::run(&config, &stats, &token).await;
        Ok(())
    };
    // The relay checks the token between steps, but a step can hang on a dependency that
    // stopped answering (a query waits up to its 30 s timeout), and the health server waits
    // for open requests. Past the grace such a part is dropped. That loses nothing: a batch
    // leaves the outbox's unpublished set only once Redis has it, and the next active
    // publisher's claim sees what this one appended.
    let (relayed, served, _) = tokio::join!(
        within_grace(relay, &token, &config),
        within_grace(http, &token, &config),
        within_grace(backlog, &token, &config)
    );
    info!("publisher stopped");
    relayed.and(served)
}

/// `part`'s result, or `Ok(())` once it has run `shutdown_grace` past the cancellation of `token`.
async fn within_grace(
    part: impl Future<Output = Result<(), Error>>,
    token: &CancellationToken,
    config: &Config,
) -> Result<(), Error> {
    let grace = async {
        token.cancelled().await;
        tokio::time::sleep(config.shutdown_grace).await;
    };
    tokio::select! {
        biased;
        result = part => result,
        () = grace => {
            warn!(grace = ?config.shutdown_grace, "shutdown grace elapsed with work in flight; stopping anyway");
            Ok(())
        }
    }
}
/// Tests spawn `run` on a multi-threaded runtime; keep its future `Send` (a higher-ranked
/// bound deep inside can silently break that).
#[cfg(test)]
#[allow(dead_code)]
fn run_is_send(config: Config, health: TcpListener, shutdown: CancellationToken) {
    fn is_send<T: Send>(_: T) {}
    is_send(run(config, health, shutdown));
}
