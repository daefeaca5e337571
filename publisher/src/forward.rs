//! The Redis side: one connection, reconnected with backoff whenever a call fails, and the
//! replay-log calls made through it.
//!
//! Redis failures never end the PostgreSQL session: a caller whose call failed waits here
//! (the backoff delay), then retries on a new connection. Each new connection gets a new
//! `generation`, which tells the relay to claim the log again before appending (a claim
//! fences off any other publisher and shows what the last append really wrote).

use std::time::{Duration, Instant};

use protocol::store::{Conn, RedisTarget, Timeouts};
use protocol::{
    env::redact_url,
    retry::{Flow, Retry, Supervisor},
};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    config::Config,
    stats::{REDIS, Stats},
};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis failure retrying cannot fix.
#[derive(Debug, thiserror::Error)]
#[error("redis refused the publisher")]
pub struct FatalError(#[source] redis::RedisError);

struct Failure(redis::RedisError);

impl std::fmt::Debug for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
impl Retry for Failure {
    fn is_fatal(&self) -> bool {
        // Only a URL that cannot work is fatal. A refused password is retried: credentials are
        // often rotated on the server first (the service stays up and not ready meanwhile).
        matches!(self.0.kind(), redis::ErrorKind::InvalidClientConfig)
    }
}

/// The publisher's Redis connection.
pub(crate) struct Redis<'a> {
    stats: &'a Stats,
    target: RedisTarget,
    conn: Option<Conn>,
    connected_at: Instant,
    generation: u64,
    supervisor: Supervisor,
    /// A key of the log, whose node the keepalive asks (see `Conn::ping`).
    log_key: String,
}

impl<'a> Redis<'a> {
    pub(crate) fn new(config: &Config, stats: &'a Stats) -> Result<Self, FatalError> {
        Ok(Self {
            stats,
            target: RedisTarget::open(&config.redis_url, config.redis_cluster, config.redis_tls_ca.as_deref())
                .map_err(FatalError)?,
            conn: None,
            connected_at: Instant::now(),
            generation: 0,
            supervisor: Supervisor::new("redis", config.retry).for_server(redact_url(&config.redis_url)),
            log_key: protocol::log::Keys::new(&config.redis_channel).meta,
        })
    }

    /// Whether the live connection is to a Redis Cluster (where a failover can lose the newest
    /// writes without the connection breaking).
    pub(crate) fn is_cluster(&self) -> bool {
        self.conn.as_ref().is_some_and(Conn::is_cluster)
    }

    /// Bumped on every new connection.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// The live connection, connecting first if needed (waiting out failures with backoff).
    /// `None` when shutdown was requested meanwhile.
    pub(crate) async fn connection(&mut self, shutdown: &CancellationToken) -> Result<Option<&mut Conn>, FatalError> {
        while self.conn.is_none() {
            self.connected_at = Instant::now();
            match self.target.connect(Timeouts { connect: COMMAND_TIMEOUT, response: COMMAND_TIMEOUT }).await {
                Ok(conn) => {
                    info!(cluster = conn.is_cluster(), "connected to redis");
                    self.conn = Some(conn);
                    self.generation += 1;
                    self.stats.readiness.set(REDIS, true);
                }
                Err(e) => {
                    if self.failed(e, shutdown).await? == Flow::Stop {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(self.conn.as_mut())
    }

    /// Records a failed call: drops the connection, logs the retry with its delay and waits it.
    pub(crate) async fn failed(
        &mut self,
        err: redis::RedisError,
        shutdown: &CancellationToken,
    ) -> Result<Flow, FatalError> {
        self.conn = None;
        self.stats.readiness.set(REDIS, false);
        self.supervisor
            .after(self.connected_at, Err(Failure(err)), &self.stats.redis_reconnects, shutdown)
            .await
            .map_err(|Failure(e)| FatalError(e))
    }

    /// PINGs an idle connection, so a dead one is noticed (and readiness follows).
    pub(crate) async fn ping(&mut self, shutdown: &CancellationToken) -> Result<(), FatalError> {
        let key = self.log_key.clone();
        let Some(conn) = self.connection(shutdown).await? else { return Ok(()) };
        if let Err(e) = conn.ping(&key).await {
            self.failed(e, shutdown).await?;
        }
        Ok(())
    }
}
