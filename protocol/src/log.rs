//! The replay log in Redis: one total order of events, shared by the publisher (which writes
//! it) and every ws-server (which fills gaps and serves resumes and snapshots from it).
//!
//! Keys share one hash tag, so every atomic step touches one Redis Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{<channel>}:meta` | hash | `epoch` (names this history), `seq` (last position), `fence` (publisher leadership), `seeded` |
//! | `{<channel>}:log` | stream | one entry per event, id `<pos>-1`; fields `f` (the frame) and `e` (the event id) |
//! | `{<channel>}:state` | hash | current row per `<table>:<row id>` (row JSON), for snapshots |
//!
//! The publish script assigns each event the next position, writes the frame (with `epoch` and
//! `pos`) to the stream, updates the state, and PUBLISHes the same frame — one atomic step, so a
//! position means the same event in the log, on the channel and in the state. The epoch is a
//! random name chosen when the history starts (first start, or Redis restarted empty): a
//! position is only meaningful within its epoch.

use std::fmt;

use redis::{Script, aio::ConnectionLike};
use serde::{Deserialize, Serialize};

use crate::channel::ChannelName;

/// The keys of one channel's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `{channel}:meta`.
    pub meta: String,
    /// `{channel}:log`.
    pub log: String,
    /// `{channel}:state`.
    pub state: String,
}

impl Keys {
    /// The keys for events published on `channel`.
    pub fn new(channel: &ChannelName) -> Self {
        Self {
            meta: format!("{{{channel}}}:meta"),
            log: format!("{{{channel}}}:log"),
            state: format!("{{{channel}}}:state"),
        }
    }
}

/// A place in the history: the epoch and the position of the last event seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The history this position belongs to.
    pub epoch: String,
    /// The position of the last event seen (0: none yet).
    pub pos: u64,
}

impl Position {
    /// Parses the text form `epoch:pos` (as printed by `cli-client` and used by SSE ids).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (epoch, pos) = text.rsplit_once(':').ok_or("expected EPOCH:POS, e.g. k3xq9a:1042")?;
        let pos = pos.parse().map_err(|_| format!("position {pos:?} is not a whole number"))?;
        if epoch.is_empty() {
            return Err("the epoch before ':' is empty".into());
        }
        Ok(Self { epoch: epoch.to_owned(), pos })
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.epoch, self.pos)
    }
}

/// One event to append: the frame body after `{`, and what it does to the state.
#[derive(Debug, Clone)]
pub struct Append<'a> {
    /// The event JSON without its opening `{` (the script puts `epoch` and `pos` first).
    pub body_rest: &'a str,
    /// `realtime_events.id`, if the event has one (for dedupe after a takeover).
    pub event_id: Option<i64>,
    /// The state change.
    pub state: StateChange<'a>,
}

/// What an event does to the current-state hash.
#[derive(Debug, Clone, Copy)]
pub enum StateChange<'a> {
    /// Set `field` to `row`.
    Set {
        /// `<table>:<id>`.
        field: &'a str,
        /// The row JSON.
        row: &'a str,
    },
    /// Remove `field`.
    Delete {
        /// `<table>:<id>`.
        field: &'a str,
    },
    /// The row has no `id`: the state does not track it.
    None,
}

/// `KEYS`: meta, log, state. `ARGV`: channel, fence, maxlen, then 5 per event: body rest,
/// event id, state field, `S`/`D`/`-`, row.
const PUBLISH: &str = r#"
local meta, log, state = KEYS[1], KEYS[2], KEYS[3]
if redis.call('HGET', meta, 'fence') ~= ARGV[2] then
  return redis.error_reply('FENCED another publisher took over, or redis lost its data')
end
local epoch = redis.call('HGET', meta, 'epoch')
local seq = tonumber(redis.call('HGET', meta, 'seq'))
local prefix = '{"type":"event","epoch":"' .. epoch .. '","pos":'
for i = 4, #ARGV, 5 do
  seq = seq + 1
  local frame = prefix .. string.format('%d', seq) .. ',' .. ARGV[i]
  if ARGV[i + 1] ~= '' then
    redis.call('XADD', log, 'MAXLEN', '~', ARGV[3], string.format('%d-1', seq), 'f', frame, 'e', ARGV[i + 1])
  else
    redis.call('XADD', log, 'MAXLEN', '~', ARGV[3], string.format('%d-1', seq), 'f', frame)
  end
  if ARGV[i + 3] == 'S' then
    redis.call('HSET', state, ARGV[i + 2], ARGV[i + 4])
  elseif ARGV[i + 3] == 'D' then
    redis.call('HDEL', state, ARGV[i + 2])
  end
  redis.call('PUBLISH', ARGV[1], frame)
end
redis.call('HSET', meta, 'seq', string.format('%d', seq))
return seq
"#;

/// `KEYS`: meta, log, state. `ARGV`: epoch to use if the history is new, tail length.
/// Returns fence, epoch, seq, seeded, and the event ids of the last `tail` entries.
const CLAIM: &str = r#"
local meta, log, state = KEYS[1], KEYS[2], KEYS[3]
local fence = redis.call('HINCRBY', meta, 'fence', 1)
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', log, state)
  redis.call('HSET', meta, 'epoch', epoch, 'seq', '0', 'seeded', '0')
end
local ids = {}
for _, entry in ipairs(redis.call('XREVRANGE', log, '+', '-', 'COUNT', ARGV[2])) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then table.insert(ids, fields[j + 1]) end
  end
end
return {fence, epoch, redis.call('HGET', meta, 'seq'), redis.call('HGET', meta, 'seeded'), ids}
"#;

/// `KEYS`: meta, state. `ARGV`: fence, flags (`F`: first chunk, clear the state; `D`: last
/// chunk, mark seeded), then field/row pairs to add.
const SEED: &str = r#"
local meta, state = KEYS[1], KEYS[2]
if redis.call('HGET', meta, 'fence') ~= ARGV[1] then
  return redis.error_reply('FENCED another publisher took over, or redis lost its data')
end
if string.find(ARGV[2], 'F') then redis.call('DEL', state) end
if #ARGV > 2 then redis.call('HSET', state, unpack(ARGV, 3)) end
if string.find(ARGV[2], 'D') then redis.call('HSET', meta, 'seeded', '1') end
return 1
"#;

/// `KEYS`: meta, state. Returns epoch, seq, seeded, and the state as field/row pairs, atomically.
const SNAPSHOT: &str = r#"
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'seeded')
return {meta[1], meta[2], meta[3], redis.call('HGETALL', KEYS[2])}
"#;

/// Leadership as the publish script checks it: who may append, to which history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The fencing token the publish script requires.
    pub fence: i64,
    /// The history appended to.
    pub epoch: String,
    /// Last position at claim time.
    pub seq: u64,
    /// Whether the state hash was filled from the table for this epoch.
    pub seeded: bool,
    /// Event ids of the newest log entries (what a crashed predecessor may have appended but
    /// not marked as published).
    pub recent_event_ids: Vec<i64>,
}

/// A consistent view of the state: rows as of position `pos`.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The history.
    pub epoch: Option<String>,
    /// Position the rows reflect.
    pub pos: u64,
    /// Whether the state is complete: false while the publisher is still seeding a new
    /// history from the tables (a snapshot then would lack rows).
    pub seeded: bool,
    /// `(<table>:<id>, row JSON)` pairs.
    pub rows: Vec<(String, String)>,
}

/// Redis calls on the log.
#[derive(Debug, Clone)]
pub struct Log {
    keys: Keys,
    channel: String,
    publish: Script,
    claim: Script,
    seed: Script,
    snapshot: Script,
}

/// Whether a Redis error is the publish script refusing a fenced-off publisher.
pub fn is_fenced(err: &redis::RedisError) -> bool {
    err.to_string().contains("FENCED")
}

impl Log {
    /// The log of events published on `channel`.
    pub fn new(channel: &ChannelName) -> Self {
        Self {
            keys: Keys::new(channel),
            channel: channel.as_str().to_owned(),
            publish: Script::new(PUBLISH),
            claim: Script::new(CLAIM),
            seed: Script::new(SEED),
            snapshot: Script::new(SNAPSHOT),
        }
    }

    /// The keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Takes over appending: bumps the fence (a previous publisher's next append fails),
    /// starting a new epoch named `new_epoch` if Redis has no history.
    pub async fn claim<C: ConnectionLike>(
        &self,
        conn: &mut C,
        new_epoch: &str,
        tail: usize,
    ) -> redis::RedisResult<Claim> {
        let (fence, epoch, seq, seeded, ids): (i64, String, u64, String, Vec<i64>) = self
            .claim
            .key(&self.keys.meta)
            .key(&self.keys.log)
            .key(&self.keys.state)
            .arg(new_epoch)
            .arg(tail)
            .invoke_async(conn)
            .await?;
        Ok(Claim { fence, epoch, seq, seeded: seeded == "1", recent_event_ids: ids })
    }

    /// Fills the state from the table, in chunks: `first` clears what a failed earlier attempt
    /// left, `last` marks the state complete for this epoch.
    pub async fn seed<C: ConnectionLike>(
        &self,
        conn: &mut C,
        fence: i64,
        rows: &[(String, String)],
        first: bool,
        last: bool,
    ) -> redis::RedisResult<()> {
        let flags = format!("{}{}-", if first { "F" } else { "" }, if last { "D" } else { "" });
        let mut call = self.seed.key(&self.keys.meta);
        call.key(&self.keys.state).arg(fence).arg(flags);
        for (field, row) in rows {
            call.arg(field).arg(row);
        }
        call.invoke_async::<()>(conn).await
    }

    /// Appends events atomically (positions, stream, state, PUBLISH); returns the last position.
    ///
    /// # Errors
    /// A Redis error; [`is_fenced`] tells a lost leadership apart.
    pub async fn append<C: ConnectionLike>(
        &self,
        conn: &mut C,
        fence: i64,
        maxlen: usize,
        events: &[Append<'_>],
    ) -> redis::RedisResult<u64> {
        let mut call = self.publish.key(&self.keys.meta);
        call.key(&self.keys.log).key(&self.keys.state).arg(&self.channel).arg(fence).arg(maxlen);
        for e in events {
            call.arg(e.body_rest).arg(e.event_id.map(|i| i.to_string()).unwrap_or_default());
            match e.state {
                StateChange::Set { field, row } => call.arg(field).arg("S").arg(row),
                StateChange::Delete { field } => call.arg(field).arg("D").arg(""),
                StateChange::None => call.arg("").arg("-").arg(""),
            };
        }
        call.invoke_async(conn).await
    }

    /// The current epoch and last position, if a history exists.
    pub async fn head<C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<Option<Position>> {
        let (epoch, seq): (Option<String>, Option<u64>) =
            redis::cmd("HMGET").arg(&self.keys.meta).arg("epoch").arg("seq").query_async(conn).await?;
        Ok(epoch.map(|epoch| Position { epoch, pos: seq.unwrap_or(0) }))
    }

    /// The oldest position still in the log, if any.
    pub async fn first_pos<C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<Option<u64>> {
        let entries: Vec<(String, Vec<(String, String)>)> =
            redis::cmd("XRANGE").arg(&self.keys.log).arg("-").arg("+").arg("COUNT").arg(1).query_async(conn).await?;
        Ok(entries.first().and_then(|(id, _)| entry_pos(id)))
    }

    /// Up to `count` frames after position `after`, in order, with their positions.
    pub async fn read_after<C: ConnectionLike + Send>(
        &self,
        conn: &mut C,
        after: u64,
        count: usize,
    ) -> redis::RedisResult<Vec<(u64, String)>> {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(&self.keys.log)
            .arg(format!("{}-1", after + 1))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(conn)
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let pos = entry_pos(&id)?;
                let frame = fields.into_iter().find(|(k, _)| k == "f")?.1;
                Some((pos, frame))
            })
            .collect())
    }

    /// The state and the position it reflects, read atomically.
    pub async fn snapshot<C: ConnectionLike>(&self, conn: &mut C) -> redis::RedisResult<Snapshot> {
        let (epoch, seq, seeded, flat): (Option<String>, Option<u64>, Option<String>, Vec<String>) =
            self.snapshot.key(&self.keys.meta).key(&self.keys.state).invoke_async(conn).await?;
        let mut rows = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(field), Some(row)) = (it.next(), it.next()) {
            rows.push((field, row));
        }
        Ok(Snapshot { epoch, pos: seq.unwrap_or(0), seeded: seeded.as_deref() == Some("1"), rows })
    }
}

fn entry_pos(id: &str) -> Option<u64> {
    id.split_once('-')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let keys = Keys::new(&ChannelName::parse("orders_updates").unwrap());
        assert_eq!(keys.meta, "{orders_updates}:meta");
        assert_eq!(keys.log, "{orders_updates}:log");
        assert_eq!(keys.state, "{orders_updates}:state");
    }

    #[test]
    fn positions_round_trip_through_text() {
        let p = Position::parse("k3xq9a:1042").unwrap();
        assert_eq!(p, Position { epoch: "k3xq9a".into(), pos: 1042 });
        assert_eq!(p.to_string(), "k3xq9a:1042");
        for bad in ["1042", "k3:x", ":5", ""] {
            assert!(Position::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn entry_ids_map_to_positions() {
        assert_eq!(entry_pos("1042-1"), Some(1042));
        assert_eq!(entry_pos("garbage"), None);
    }
}
