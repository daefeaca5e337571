//! Durable consumers: a named reader whose acknowledged position the server keeps in Redis,
//! so a client that was away resumes after its last ack on any replica, without storing a
//! position itself.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{<channel>}:consumers` | hash | consumer key → `EPOCH:POS`, the last acknowledged position |
//! | `{<channel>}:consumers:at` | hash | consumer key → Unix milliseconds of that ack |
//!
//! The keys share the log's hash tag (one Redis Cluster slot with it). With auth on, a key is
//! the token's `sub`, `/`, then the name, so two users' consumers of the same name never meet
//! (names cannot hold `/`, so the split is unambiguous). An ack only moves a consumer forward
//! within a history; one in a newer history replaces it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use protocol::store::Lua;
use protocol::{channel::ChannelName, log::Position};
use redis::aio::ConnectionLike;
use tokio_util::sync::CancellationToken;

use crate::AppState;

/// Longest consumer name.
const MAX_NAME: usize = 128;

/// A consumer's storage key (its name, scoped by the token's subject when auth is on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    key: String,
    name: String,
}

impl Key {
    /// The key for consumer `name` of token subject `sub`; with auth on (`authenticated`) a
    /// token without `sub` cannot own one (its name would be shared with every such token).
    pub(crate) fn new(name: &str, sub: Option<&str>, authenticated: bool) -> Result<Self, String> {
        if authenticated && sub.is_none() {
            return Err(format!(
                "consumer {name:?} needs a token with a \"sub\" claim (consumer names belong to the token's subject)"
            ));
        }
        let valid = !name.is_empty()
            && name.len() <= MAX_NAME
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !valid {
            return Err(format!(
                "invalid consumer name {name:?}: use 1 to {MAX_NAME} letters, digits, '-', '_', '.' or ':', e.g. vendor-42"
            ));
        }
        let key = match sub {
            Some(sub) => format!("{sub}/{name}"),
            None => name.to_owned(),
        };
        Ok(Self { key, name: name.to_owned() })
    }

    /// The name the client gave.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// Stores an ack unless the consumer is already further along in the same history;
/// returns the stored position.
const ACK: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local epoch, pos = string.match(cur, '^(.*):(%d+)$')
  if epoch == ARGV[2] and tonumber(pos) >= tonumber(ARGV[3]) then return cur end
end
local v = ARGV[2] .. ':' .. ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], v)
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
return v
";

/// The consumers of one channel.
#[derive(Debug)]
pub(crate) struct Consumers {
    positions: String,
    acked_at: String,
    ack: Lua,
}

impl Consumers {
    pub(crate) fn new(channel: &ChannelName) -> Self {
        Self {
            positions: format!("{{{channel}}}:consumers"),
            acked_at: format!("{{{channel}}}:consumers:at"),
            ack: Lua::new(ACK),
        }
    }

    /// Where the consumer resumes: after its last ack (`None`: never acked).
    pub(crate) async fn position<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        key: &Key,
    ) -> redis::RedisResult<Option<Position>> {
        let stored: Option<String> = redis::cmd("HGET").arg(&self.positions).arg(&key.key).query_async(conn).await?;
        Ok(stored.and_then(|s| Position::parse(&s).ok()))
    }

    /// Records that the consumer processed everything up to `position`.
    pub(crate) async fn ack<C: ConnectionLike>(
        &self,
        conn: &mut C,
        key: &Key,
        position: &Position,
    ) -> redis::RedisResult<Position> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let stored: String = self
            .ack
            .key(&self.positions)
            .key(&self.acked_at)
            .arg(&key.key)
            .arg(&position.epoch)
            .arg(position.pos)
            .arg(now.to_string())
            .invoke_async(conn)
            .await?;
        Ok(Position::parse(&stored).unwrap_or_else(|_| position.clone()))
    }

    /// Every consumer and its position.
    pub(crate) async fn list<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
    ) -> redis::RedisResult<Vec<(String, Position)>> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL").arg(&self.positions).query_async(conn).await?;
        Ok(all.into_iter().filter_map(|(k, v)| Some((k, Position::parse(&v).ok()?))).collect())
    }
}

/// Most consumers listed in `/metrics` (the furthest behind first).
const MAX_LISTED: usize = 1000;
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// Keeps `ws_consumer_lag_events` current: every consumer in Redis and how far behind the
/// newest position its last ack is (a consumer of an older history counts the whole new one).
pub(crate) async fn watch(state: &AppState, shutdown: &CancellationToken) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(mut conn) = state.history.conn().await else { continue };
        let (Ok(Some(head)), Ok(list)) =
            (state.history.log.head(&mut conn).await, state.consumers.list(&mut conn).await)
        else {
            continue;
        };
        let mut lag: Vec<(String, i64)> = list
            .into_iter()
            .map(|(key, at)| {
                let behind = if at.epoch == head.epoch { head.pos.saturating_sub(at.pos) } else { head.pos };
                (key, i64::try_from(behind).unwrap_or(i64::MAX))
            })
            .collect();
        lag.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        lag.truncate(MAX_LISTED);
        state.stats.consumer_lag.replace(lag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_scoped_by_subject() {
        assert_eq!(Key::new("vendor-1", Some("alice/x"), true).unwrap().key, "alice/x/vendor-1");
        assert_eq!(Key::new("vendor-1", None, false).unwrap().key, "vendor-1");
        assert!(Key::new("vendor-1", None, true).unwrap_err().contains("\"sub\" claim"));
        for bad in ["", "a/b", "a b", &"x".repeat(MAX_NAME + 1)] {
            let err = Key::new(bad, None, false).unwrap_err();
            assert!(err.contains("e.g. vendor-42"), "{err}");
        }
    }
}
