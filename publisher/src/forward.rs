//! The Redis session: PUBLISH every queued event on the Redis channel, everything already
//! queued in one pipelined round trip.
//!
//! A batch leaves the queue only once Redis has acknowledged it: when the session breaks
//! mid-batch, the same batch is sent again on the next session (at-least-once; event ids
//! let later hops drop the repeat). Redis pub/sub itself keeps nothing for a subscriber
//! that is disconnected at the time; the replay log is what covers that (docs/design.md).

use std::time::{Duration, Instant};

use protocol::retry::{Flow, Retry, Supervisor};
use redis::{AsyncConnectionConfig, aio::MultiplexedConnection};
use tokio::{sync::mpsc, time::timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    stats::{REDIS, Stats},
};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a Redis session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting or a command failed.
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
}

impl Retry for SessionError {
    fn is_fatal(&self) -> bool {
        let Self::Redis(e) = self;
        matches!(e.kind(), redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig)
    }
}

/// Runs Redis sessions until shutdown, then publishes what is still queued (bounded by the
/// shutdown grace).
pub(crate) async fn run(
    config: &Config,
    stats: &Stats,
    mut events_rx: mpsc::Receiver<String>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let client = redis::Client::open(config.redis_url.as_str())?;
    let mut pending: Vec<String> = Vec::with_capacity(config.batch_max);
    let mut supervisor = Supervisor::new("redis", config.retry);
    let result = loop {
        let started = Instant::now();
        let ended = session(config, stats, &client, &mut events_rx, &mut pending, shutdown).await;
        match supervisor.after(started, ended, &stats.redis_reconnects, shutdown).await {
            Ok(Flow::Retry) => continue,
            Ok(Flow::Stop) => break Ok(()),
            Err(e) => break Err(e),
        }
    };

    // Drain: the listener has stopped; publish what it queued, if Redis lets us in time.
    events_rx.close();
    while let Some(event) = events_rx.recv().await {
        pending.push(event);
    }
    if !pending.is_empty() {
        let drain = async {
            let mut conn = connect(&client).await?;
            for chunk in pending.chunks(config.batch_max) {
                publish(&mut conn, config, chunk).await?;
                stats.published.add(chunk.len() as u64);
            }
            Ok::<_, SessionError>(())
        };
        match timeout(config.shutdown_grace, drain).await {
            Ok(Ok(())) => info!(events = pending.len(), "queued events published before shutdown"),
            Ok(Err(e)) => warn!(events = pending.len(), error = %e, "queued events not published at shutdown"),
            Err(_) => warn!(events = pending.len(), "shutdown grace elapsed with events still queued"),
        }
    }
    result
}

async fn connect(client: &redis::Client) -> Result<MultiplexedConnection, SessionError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(COMMAND_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    Ok(client.get_multiplexed_async_connection_with_config(&config).await?)
}

async fn session(
    config: &Config,
    stats: &Stats,
    client: &redis::Client,
    events_rx: &mut mpsc::Receiver<String>,
    pending: &mut Vec<String>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let mut conn = connect(client).await?;
    redis::cmd("PING").query_async::<()>(&mut conn).await?;
    let _up = stats.readiness.up_while(REDIS);
    info!(channel = %config.redis_channel, "connected to redis");

    let mut keepalive = tokio::time::interval(config.keepalive_interval);
    keepalive.reset();
    loop {
        // A batch left over from a broken session goes first, unchanged, keeping order.
        if !pending.is_empty() {
            publish(&mut conn, config, pending).await?;
            stats.published.add(pending.len() as u64);
            stats.batches.inc();
            debug!(events = pending.len(), "published");
            pending.clear();
            keepalive.reset();
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            // Cancel-safe: recv_many takes nothing unless it returns.
            n = events_rx.recv_many(pending, config.batch_max) => if n == 0 { return Ok(()) },
            _ = keepalive.tick() => redis::cmd("PING").query_async::<()>(&mut conn).await?,
        }
    }
}

async fn publish(conn: &mut MultiplexedConnection, config: &Config, events: &[String]) -> Result<(), SessionError> {
    let mut pipe = redis::pipe();
    for event in events {
        pipe.publish(config.redis_channel.as_str(), event).ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}
