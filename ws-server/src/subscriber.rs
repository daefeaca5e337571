//! The replica's single Redis pub/sub session: SUBSCRIBE to the channel, validate each
//! message once, hand it to the hub; reconnect with backoff and resubscribe when it breaks.
//!
//! redis-rs ends a pub/sub stream without an error when the connection drops, so the end
//! of the stream counts as a disconnect; a PING every `keepalive_interval` catches a
//! connection that is half-open. Messages published while this replica is not subscribed
//! are not delivered by Redis pub/sub; the replay log is what fills that gap (docs/design.md).

use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use protocol::{
    event::Operation,
    retry::{Flow, Retry, Supervisor},
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{AppState, stats::REDIS};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a Redis subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting, SUBSCRIBE or PING failed.
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    /// The server closed the connection.
    #[error("subscription stream ended (connection lost)")]
    Lost,
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl Retry for SessionError {
    fn is_fatal(&self) -> bool {
        matches!(self, Self::Redis(e) if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig))
    }
}

/// Runs Redis subscriptions until shutdown.
pub(crate) async fn run(state: &AppState, shutdown: &CancellationToken) -> Result<(), SessionError> {
    let client = redis::Client::open(state.config.redis_url.as_str())?;
    let mut supervisor = Supervisor::new("redis", state.config.retry);
    loop {
        let started = Instant::now();
        let ended = session(state, &client, shutdown).await;
        if supervisor.after(started, ended, &state.stats.redis_reconnects, shutdown).await? == Flow::Stop {
            return Ok(());
        }
    }
}

async fn session(state: &AppState, client: &redis::Client, shutdown: &CancellationToken) -> Result<(), SessionError> {
    let channel = state.config.redis_channel.as_str();
    let mut pubsub = bounded(client.get_async_pubsub()).await??;
    bounded(pubsub.subscribe(channel)).await??;
    let (mut sink, mut stream) = pubsub.split();
    let _up = state.stats.readiness.up_while(REDIS);
    info!(channel, "subscribed to redis");

    let mut keepalive = tokio::time::interval(state.config.keepalive_interval);
    keepalive.reset();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            msg = stream.next() => {
                let msg = msg.ok_or(SessionError::Lost)?;
                state.stats.messages_in.inc();
                match validate(msg.get_payload_bytes()) {
                    Ok(frame) => state.hub.publish(frame),
                    Err(reason) => {
                        state.stats.skipped.inc();
                        let preview = String::from_utf8_lossy(&msg.get_payload_bytes()[..msg.get_payload_bytes().len().min(200)]).into_owned();
                        warn!(%reason, payload = %preview, "skipping message that is not an event");
                    }
                }
                keepalive.reset();
            }
            _ = keepalive.tick() => {
                bounded(sink.ping::<redis::Value>()).await??;
                debug!("redis ping ok");
            }
        }
    }
}

/// What the replica needs to know of an event; parsed once per event, never per client.
#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type")]
    kind: String,
    #[allow(dead_code)] // Checked by deserializing; read by filters later.
    operation: Operation,
    #[allow(dead_code)]
    order: IgnoredAny,
}

/// Checks that a channel message is an event and turns it into the shared frame bytes.
fn validate(payload: &[u8]) -> Result<Utf8Bytes, String> {
    let text = std::str::from_utf8(payload).map_err(|e| format!("not UTF-8: {e}"))?;
    let probe: Probe = serde_json::from_str(text).map_err(|e| format!("not an event: {e}"))?;
    if probe.kind != "event" {
        return Err(format!("type is {:?}, expected \"event\"", probe.kind));
    }
    Ok(Utf8Bytes::from(text))
}

async fn bounded<T>(fut: impl Future<Output = T>) -> Result<T, SessionError> {
    timeout(COMMAND_TIMEOUT, fut).await.map_err(|_| SessionError::Timeout(COMMAND_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pass_and_foreign_messages_do_not() {
        let ok = br#"{"type":"event","id":1,"table":"orders","operation":"INSERT","order":{"id":1}}"#;
        assert_eq!(validate(ok).unwrap().as_str().as_bytes(), ok);
        for bad in
            [&b"hello"[..], b"{\"type\":\"event\"}", br#"{"type":"x","operation":"INSERT","order":{}}"#, b"\xff\xfe"]
        {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
