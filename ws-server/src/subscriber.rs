//! The replica's single Redis pub/sub session: SUBSCRIBE to the channel, validate each
//! message once, put it in order (the `sequencer`), hand it to the hub; reconnect with backoff
//! and resubscribe when it breaks.
//!
//! redis-rs ends a pub/sub stream without an error when the connection drops, so the end
//! of the stream counts as a disconnect; a PING every `keepalive_interval` catches a
//! connection that is half-open. Messages published while this replica is not subscribed
//! are not delivered by Redis pub/sub, and retrying alone never brings them back: after each
//! SUBSCRIBE the sequencer reads them from the replay log, from the last position this
//! replica saw, before it forwards live messages (docs/design.md).

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use protocol::{
    event::Operation,
    retry::{Flow, Retry, Supervisor},
    store::{Conn, Received, RedisTarget, Timeouts},
};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{AppState, history::LOG_TIMEOUT, hub::Event, sequencer::Sequencer, stats::REDIS, view::Lazy};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a Redis subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Connecting, SUBSCRIBE, PING or a log read failed.
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    /// The subscription broke (the server closed the connection, a cluster slot moved).
    #[error("subscription lost: {0}")]
    Lost(&'static str),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

impl Retry for SessionError {
    fn is_fatal(&self) -> bool {
        // Only a URL that cannot work is fatal. A refused password is retried: credentials are
        // often rotated on the server first (the replica stays up and not ready meanwhile).
        matches!(self, Self::Redis(e) if e.kind() == redis::ErrorKind::InvalidClientConfig)
    }
}

/// Runs Redis subscriptions until shutdown.
pub(crate) async fn run(state: &AppState, shutdown: &CancellationToken) -> Result<(), SessionError> {
    let target =
        RedisTarget::open(&state.config.redis_url, state.config.redis_cluster, state.config.redis_tls_ca.as_deref())?;
    let mut supervisor =
        Supervisor::new("redis", state.config.retry).for_server(protocol::env::redact_url(&state.config.redis_url));
    // Outlives sessions: the last position seen is where the next session catches up from.
    let mut sequencer = Sequencer::new(state);
    loop {
        let started = Instant::now();
        let ended = session(state, &target, &mut sequencer, shutdown).await;
        if supervisor.after(started, ended, &state.stats.redis_reconnects, shutdown).await? == Flow::Stop {
            return Ok(());
        }
    }
}

async fn session(
    state: &AppState,
    target: &RedisTarget,
    sequencer: &mut Sequencer<'_>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let channel = state.config.redis_channel.as_str();
    let timeouts = Timeouts { connect: COMMAND_TIMEOUT, response: COMMAND_TIMEOUT };
    let mut subscription = bounded(target.subscribe(channel, timeouts)).await??;
    let log_timeouts = Timeouts { connect: COMMAND_TIMEOUT, response: LOG_TIMEOUT };
    let mut conn = bounded(target.connect(log_timeouts)).await??;
    let _lent = Lent::new(state, conn.clone());
    let _up = state.stats.readiness.up_while(REDIS);
    info!(channel, cluster = conn.is_cluster(), "subscribed to redis");

    // Subscribed first, so everything published from now on reaches the stream; then the
    // log fills in what was published before. The sequencer drops the overlap.
    sequencer.catch_up(&mut conn).await?;

    let mut keepalive = tokio::time::interval(state.config.keepalive_interval);
    keepalive.reset();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(()),
            // Cancel-safe: the subscription buffers messages; `next` takes one or none.
            received = subscription.next() => {
                let payload = match received {
                    Received::Message(payload) => payload,
                    Received::Lost(why) => return Err(SessionError::Lost(why)),
                };
                state.stats.messages_in.inc();
                match validate_payload(payload, sequencer.epoch()) {
                    // Not cancel-safe if cancelled mid-fill, but it runs inside this arm's
                    // body, which `select!` never cancels.
                    Ok(event) => sequencer.live(&mut conn, event).await?,
                    Err((reason, payload)) => skip(state, &payload, &reason),
                }
                keepalive.reset();
            }
            _ = keepalive.tick() => {
                let key = &state.history.log.keys().meta;
                bounded(subscription.ping(key)).await??;
                bounded(conn.ping(key)).await??;
                debug!("redis ping ok");
            }
        }
    }
}

/// Lends the session's log connection to the replica's connections until the session ends.
struct Lent<'a>(&'a AppState);

impl<'a> Lent<'a> {
    fn new(state: &'a AppState, conn: Conn) -> Self {
        state.history.set_conn(Some(conn));
        Self(state)
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        self.0.history.set_conn(None);
    }
}

pub(crate) fn skip(state: &AppState, payload: &[u8], reason: &str) {
    state.stats.skipped.inc();
    let preview = String::from_utf8_lossy(&payload[..payload.len().min(200)]).into_owned();
    warn!(%reason, payload = %preview, "skipping message that is not an event");
}

/// What the replica needs to know of an event; parsed once per event, never per client.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default)]
    pos: Option<u64>,
    // When the trigger recorded the change, for the delivery-latency histogram. Raw, so that
    // a `ts` that is not a string costs the event nothing but its latency sample.
    #[serde(default, borrow)]
    ts: Option<&'a RawValue>,
    // Checked by deserializing (a message without them is not an event); not read yet.
    #[serde(rename = "operation")]
    _operation: Operation,
    #[serde(rename = "order")]
    _order: IgnoredAny,
}

/// Checks that a message is an event in the publisher's format and turns it into the hub's
/// item: the shared frame bytes (one copy of the payload) and its position. `epoch` is the
/// current epoch, shared rather than allocated per event. Anything else on the channel (a
/// hand-made PUBLISH, another program's messages) is not relayed: only the publisher writes
/// frames with a place in the history.
#[cfg(test)]
pub(crate) fn validate(payload: &[u8], epoch: Option<&Arc<str>>) -> Result<Event, String> {
    validate_payload(payload.to_vec(), epoch).map_err(|(reason, _)| reason)
}

/// [`validate`] for a message's own bytes (no copy); a message that is not an event comes back
/// with the reason.
fn validate_payload(payload: Vec<u8>, epoch: Option<&Arc<str>>) -> Result<Event, (String, Vec<u8>)> {
    let text = String::from_utf8(payload).map_err(|e| (format!("not UTF-8: {}", e.utf8_error()), e.into_bytes()))?;
    match probe(&text, epoch) {
        Ok(Probed { epoch, pos, changed_at }) => {
            Ok(Event { epoch, pos, changed_at, frame: Utf8Bytes::from(text), parsed: Lazy::default(), after: None })
        }
        Err(reason) => Err((reason, text.into_bytes())),
    }
}

/// [`validate`] for a frame read from the log, already owned: no copy.
pub(crate) fn validate_owned(text: String, epoch: Option<&Arc<str>>) -> Result<Event, String> {
    let Probed { epoch, pos, changed_at } = probe(&text, epoch)?;
    Ok(Event { epoch, pos, changed_at, frame: Utf8Bytes::from(text), parsed: Lazy::default(), after: None })
}

/// What the hub's [`Event`] carries besides the frame.
struct Probed {
    epoch: Option<Arc<str>>,
    pos: Option<u64>,
    changed_at: Option<SystemTime>,
}

fn probe(text: &str, epoch: Option<&Arc<str>>) -> Result<Probed, String> {
    let probe: Probe<'_> = serde_json::from_str(text).map_err(|e| format!("not an event: {e}"))?;
    if probe.kind != "event" {
        return Err(format!("type is {:?}, expected \"event\"", probe.kind));
    }
    let changed_at =
        probe.ts.and_then(|raw| raw.get().strip_prefix('"')?.strip_suffix('"')).and_then(protocol::timestamp::parse);
    let (Some(name), Some(pos)) = (probe.epoch, probe.pos) else {
        return Err("not written by the publisher (no \"epoch\" and \"pos\"); not relayed".into());
    };
    let shared = match epoch {
        Some(current) if **current == *name => current.clone(),
        _ => Arc::from(name.as_ref()),
    };
    Ok(Probed { epoch: Some(shared), pos: Some(pos), changed_at })
}

async fn bounded<T>(fut: impl Future<Output = T>) -> Result<T, SessionError> {
    timeout(COMMAND_TIMEOUT, fut).await.map_err(|_| SessionError::Timeout(COMMAND_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_pass_and_foreign_messages_do_not() {
        let ok =
            br#"{"type":"event","epoch":"k3x","pos":1,"id":1,"table":"orders","operation":"INSERT","order":{"id":1}}"#;
        let event = validate(ok, None).unwrap();
        assert_eq!(event.frame.as_str().as_bytes(), ok);
        assert_eq!((event.epoch.as_deref(), event.pos), (Some("k3x"), Some(1)));
        let hand_made = br#"{"type":"event","id":1,"table":"orders","operation":"INSERT","order":{"id":1}}"#;
        for bad in [
            &b"hello"[..],
            b"{\"type\":\"event\"}",
            br#"{"type":"x","operation":"INSERT","order":{}}"#,
            b"\xff\xfe",
            hand_made,
        ] {
            assert!(validate(bad, None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn positions_are_read_once_and_the_epoch_is_shared() {
        let current: Arc<str> = Arc::from("k3x");
        let framed = br#"{"type":"event","epoch":"k3x","pos":42,"id":1,"operation":"INSERT","order":{"id":1}}"#;
        let event = validate(framed, Some(&current)).unwrap();
        assert_eq!(event.pos, Some(42));
        assert!(Arc::ptr_eq(event.epoch.as_ref().unwrap(), &current), "no allocation for a known epoch");
        let other = validate(framed, Some(&Arc::from("zzz"))).unwrap();
        assert_eq!(other.epoch.as_deref(), Some("k3x"));
        let half = br#"{"type":"event","epoch":"k3x","operation":"INSERT","order":{"id":1}}"#;
        assert!(validate(half, None).is_err(), "no position without both fields: not the publisher's");
    }

    #[test]
    fn the_change_time_is_read_from_ts_and_a_bad_ts_only_loses_it() {
        let stamped =
            br#"{"type":"event","epoch":"e","pos":1,"id":1,"operation":"INSERT","order":{"id":1},"ts":"2026-12-01T20:50:00.5+00:00"}"#;
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_796_158_200_500);
        assert_eq!(validate(stamped, None).unwrap().changed_at, Some(at));
        for ts in [r#""soon""#, "12", "null", r#"{"at":1}"#] {
            let frame = format!(
                r#"{{"type":"event","epoch":"e","pos":1,"id":1,"operation":"INSERT","order":{{"id":1}},"ts":{ts}}}"#
            );
            assert_eq!(validate(frame.as_bytes(), None).expect("still an event").changed_at, None, "{ts}");
        }
    }
}
