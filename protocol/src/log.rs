//! The replay log in Redis: one total order of events, shared by the publisher (which writes
//! it) and every ws-server (which fills gaps and serves resumes and snapshots from it).
//!
//! Keys share one hash tag, so every atomic step touches one Redis Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{<channel>}:meta` | hash | `epoch` (names this history), `seq` (last position), `fence` (publisher leadership), `seeded`, and the [`Bridge`] from the previous history (`bridge_epoch`, `bridge_from`, `bridge_to`) |
//! | `{<channel>}:log` | stream | one entry per event, id `<pos>-1`; fields `f` (the frame) and `e` (the event id) |
//! | `{<channel>}:state` | hash | current row per `<table>:<row id>` (row JSON), for snapshots |
//!
//! The publish script assigns each event the next position, writes the frame (with `epoch` and
//! `pos`) to the stream, updates the state, and PUBLISHes (SPUBLISHes on a cluster) the same frame — one atomic step, so a
//! position means the same event in the log, on the channel and in the state. The epoch is a
//! random name chosen when the history starts (first start, or Redis restarted empty): a
//! position is only meaningful within its epoch, or through the new history's [`Bridge`].
//!
//! Every frame begins with [`frame_prefix`]: the publisher builds it, the script checks that
//! the epoch in it is the current one and writes it verbatim, and replicas recognise a
//! history's frames by it. One definition, tested against what the real script writes.

use std::fmt;

use redis::aio::ConnectionLike;
use serde::{Deserialize, Serialize};

use crate::{
    channel::ChannelName,
    store::{LogConnection, Lua},
};

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

/// How every frame of history `epoch` begins; the position and the event body follow
/// (see [`frame`]).
pub fn frame_prefix(epoch: &str) -> String {
    format!(r#"{{"type":"event","epoch":"{epoch}","pos":"#)
}

/// The frame the publish script writes for the event with body `body_rest` (see
/// [`Append::body_rest`]) at `pos` of `epoch`.
pub fn frame(epoch: &str, pos: u64, body_rest: &str) -> String {
    format!("{}{pos},{body_rest}", frame_prefix(epoch))
}

/// How a new history continues an old one: its positions `1..=to - from + 1` re-offer the old
/// history's events at positions `from..=to`, in the same order. Written by the publisher
/// when Redis lost its data, from the positions the outbox recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// The history the new one continues.
    pub epoch: String,
    /// The oldest old position re-offered.
    pub from: u64,
    /// The newest old position re-offered.
    pub to: u64,
}

impl Bridge {
    /// Where `old` (a position in the bridged history) stands in the new history, whose name
    /// is `epoch`: everything up to the returned position was already seen at `old`. `None`
    /// when `old` is of another history, or older than what the bridge re-offers.
    pub fn translate(&self, epoch: &str, old: &Position) -> Option<Position> {
        if old.epoch != self.epoch || old.pos + 1 < self.from || old.pos > self.to {
            return None;
        }
        Some(Position { epoch: epoch.to_owned(), pos: old.pos + 1 - self.from })
    }
}

/// The current history and, when it continues an older one, its bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The current epoch and its newest position.
    pub position: Position,
    /// The bridge from the previous history, if this one re-offers it.
    pub bridge: Option<Bridge>,
}

impl Head {
    /// `old` translated into the current history, if the bridge covers it (or it is already
    /// of the current history).
    pub fn translate(&self, old: &Position) -> Option<Position> {
        if old.epoch == self.position.epoch {
            return Some(old.clone());
        }
        self.bridge.as_ref()?.translate(&self.position.epoch, old)
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

/// `KEYS`: meta, log, state. `ARGV`: channel, fence, maxlen, epoch, frame prefix (see
/// [`frame_prefix`]), `PUBLISH` or `SPUBLISH`, the position the log must be at (empty: not
/// checked), then 5 per event: body rest, event id, state field, `S`/`D`/`-`, row.
///
/// The position check catches a log that went back under a publisher that kept its
/// connection: a Redis Cluster failover promotes a replica that may lack the newest appends,
/// and the cluster client follows it without a new connection. Appending there again would
/// give positions that clients already saw to other events.
const PUBLISH: &str = r#"
local meta, log, state = KEYS[1], KEYS[2], KEYS[3]
local current = redis.call('HMGET', meta, 'fence', 'epoch', 'seq')
if current[1] ~= ARGV[2] or current[2] ~= ARGV[4] then
  return redis.error_reply('FENCED another publisher took over, or redis lost its data')
end
if ARGV[7] ~= '' and current[3] ~= ARGV[7] then
  return redis.error_reply('FENCED the log is not at the position this publisher appended last (a failover lost writes?)')
end
local seq = tonumber(current[3])
local prefix = ARGV[5]
local publish = ARGV[6]
for i = 8, #ARGV, 5 do
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
  redis.call(publish, ARGV[1], frame)
end
redis.call('HSET', meta, 'seq', string.format('%d', seq))
return seq
"#;

/// `KEYS`: meta, log, state. `ARGV`: epoch to use if a new history starts, tail length,
/// `restart` to start a new history whatever Redis holds, and the bridge a new history gets
/// (bridged epoch, from, to; empty for none). A history whose building was interrupted (entries
/// appended, never seeded) is replaced too: its positions may already have been seen, so it
/// cannot simply be built again. The bridge is set in the same step as the epoch, so nobody
/// ever sees the new history without it.
/// Returns fence, epoch, seq, seeded, (event id, position) pairs of the last `tail` entries,
/// and the history's bridge fields.
const CLAIM: &str = r#"
local meta, log, state = KEYS[1], KEYS[2], KEYS[3]
local fence = redis.call('HINCRBY', meta, 'fence', 1)
local current = redis.call('HMGET', meta, 'epoch', 'seq', 'seeded')
local epoch = current[1]
if not epoch or ARGV[3] == 'restart' or (current[3] == '0' and current[2] ~= '0') then
  epoch = ARGV[1]
  redis.call('DEL', log, state)
  redis.call('HDEL', meta, 'bridge_epoch', 'bridge_from', 'bridge_to')
  redis.call('HSET', meta, 'epoch', epoch, 'seq', '0', 'seeded', '0')
  if ARGV[4] ~= '' then
    redis.call('HSET', meta, 'bridge_epoch', ARGV[4], 'bridge_from', ARGV[5], 'bridge_to', ARGV[6])
  end
end
local tail = {}
for _, entry in ipairs(redis.call('XREVRANGE', log, '+', '-', 'COUNT', ARGV[2])) do
  local fields = entry[2]
  for j = 1, #fields, 2 do
    if fields[j] == 'e' then
      table.insert(tail, fields[j + 1])
      table.insert(tail, string.match(entry[1], '^(%d+)'))
    end
  end
end
local now = redis.call('HMGET', meta, 'seq', 'seeded', 'bridge_epoch', 'bridge_from', 'bridge_to')
return {fence, epoch, now[1], now[2], tail, now[3] or '', now[4] or '0', now[5] or '0'}
"#;

/// `KEYS`: meta. Returns epoch, seq, and the bridge fields.
const HEAD: &str = r#"
return redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'bridge_epoch', 'bridge_from', 'bridge_to')
"#;

/// `KEYS`: meta, state. `ARGV`: fence, epoch, flags (`F`: first chunk, clear the state; `D`:
/// last chunk, mark seeded), then field/row pairs to add.
const SEED: &str = r#"
local meta, state = KEYS[1], KEYS[2]
local current = redis.call('HMGET', meta, 'fence', 'epoch')
if current[1] ~= ARGV[1] or current[2] ~= ARGV[2] then
  return redis.error_reply('FENCED another publisher took over, or redis lost its data')
end
if string.find(ARGV[3], 'F') then redis.call('DEL', state) end
if #ARGV > 3 then redis.call('HSET', state, unpack(ARGV, 4)) end
if string.find(ARGV[3], 'D') then redis.call('HSET', meta, 'seeded', '1') end
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
    /// `(event id, position)` of the newest log entries, newest first (what a crashed
    /// predecessor may have appended but not marked as published).
    pub recent: Vec<(i64, u64)>,
    /// The history's bridge from the previous one, if it has one.
    pub bridge: Option<Bridge>,
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
    publish: Lua,
    claim: Lua,
    seed: Lua,
    snapshot: Lua,
    head: Lua,
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
            publish: Lua::new(PUBLISH),
            claim: Lua::new(CLAIM),
            seed: Lua::new(SEED),
            snapshot: Lua::new(SNAPSHOT),
            head: Lua::new(HEAD),
        }
    }

    /// The keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Takes over appending: bumps the fence (a previous publisher's next append fails),
    /// starting a new epoch named `new_epoch` if Redis has no (complete) history, or if
    /// `restart` says the one it has cannot be trusted. A new history gets `bridge` (in the
    /// same atomic step); an existing one keeps its own.
    pub async fn claim<C: ConnectionLike>(
        &self,
        conn: &mut C,
        new_epoch: &str,
        tail: usize,
        restart: bool,
        bridge: Option<&Bridge>,
    ) -> redis::RedisResult<Claim> {
        type Reply = (i64, String, u64, String, Vec<u64>, String, u64, u64);
        let mut call = self.claim.key(&self.keys.meta);
        call.key(&self.keys.log).key(&self.keys.state).arg(new_epoch).arg(tail).arg(if restart {
            "restart"
        } else {
            ""
        });
        match bridge {
            Some(b) => call.arg(&b.epoch).arg(b.from).arg(b.to),
            None => call.arg("").arg(0).arg(0),
        };
        let (fence, epoch, seq, seeded, flat, bridge_epoch, from, to): Reply = call.invoke_async(conn).await?;
        let recent = flat.chunks_exact(2).map(|pair| (pair[0] as i64, pair[1])).collect();
        let bridge = (!bridge_epoch.is_empty()).then_some(Bridge { epoch: bridge_epoch, from, to });
        Ok(Claim { fence, epoch, seq, seeded: seeded == "1", recent, bridge })
    }

    /// Fills the state from the table, in chunks: `first` clears what a failed earlier attempt
    /// left, `last` marks the state complete for this epoch.
    pub async fn seed<C: ConnectionLike>(
        &self,
        conn: &mut C,
        claim: &Claim,
        rows: &[(String, String)],
        first: bool,
        last: bool,
    ) -> redis::RedisResult<()> {
        let flags = format!("{}{}-", if first { "F" } else { "" }, if last { "D" } else { "" });
        let mut call = self.seed.key(&self.keys.meta);
        call.key(&self.keys.state).arg(claim.fence).arg(&claim.epoch).arg(flags);
        for (field, row) in rows {
            call.arg(field).arg(row);
        }
        call.invoke_async::<()>(conn).await
    }

    /// Appends events atomically (positions, stream, state, PUBLISH or, on a cluster,
    /// SPUBLISH); returns the last position. `after` is the position the log must be at
    /// (`None`: any).
    ///
    /// # Errors
    /// A Redis error; [`is_fenced`] tells a lost leadership, or a log that is not at `after`,
    /// apart.
    pub async fn append<C: LogConnection>(
        &self,
        conn: &mut C,
        claim: &Claim,
        after: Option<u64>,
        maxlen: usize,
        events: &[Append<'_>],
    ) -> redis::RedisResult<u64> {
        let mut call = self.publish.key(&self.keys.meta);
        call.key(&self.keys.log)
            .key(&self.keys.state)
            .arg(&self.channel)
            .arg(claim.fence)
            .arg(maxlen)
            .arg(&claim.epoch)
            .arg(frame_prefix(&claim.epoch))
            .arg(if conn.sharded() { "SPUBLISH" } else { "PUBLISH" })
            .arg(after.map(|p| p.to_string()).unwrap_or_default());
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
        Ok(self.head_with_bridge(conn).await?.map(|head| head.position))
    }

    /// The current epoch, its last position and its bridge from the previous history, read
    /// together.
    pub async fn head_with_bridge<C: ConnectionLike + Send>(&self, conn: &mut C) -> redis::RedisResult<Option<Head>> {
        type Fields = (Option<String>, Option<u64>, Option<String>, Option<u64>, Option<u64>);
        let (epoch, seq, bridge_epoch, from, to): Fields = self.head.key(&self.keys.meta).invoke_async(conn).await?;
        let bridge = match (bridge_epoch, from, to) {
            (Some(epoch), Some(from), Some(to)) => Some(Bridge { epoch, from, to }),
            _ => None,
        };
        Ok(epoch.map(|epoch| Head { position: Position { epoch, pos: seq.unwrap_or(0) }, bridge }))
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
    fn a_bridge_translates_the_positions_it_re_offers() {
        // New positions 1..=5 re-offer old positions 96..=100.
        let bridge = Bridge { epoch: "old".into(), from: 96, to: 100 };
        let at = |pos| Position { epoch: "old".into(), pos };
        let new = |pos| Some(Position { epoch: "new".into(), pos });
        assert_eq!(bridge.translate("new", &at(95)), new(0), "saw everything before the bridge");
        assert_eq!(bridge.translate("new", &at(98)), new(3));
        assert_eq!(bridge.translate("new", &at(100)), new(5));
        assert_eq!(bridge.translate("new", &at(94)), None, "event 95 is re-offered by nobody");
        assert_eq!(bridge.translate("new", &at(101)), None, "beyond what the outbox recorded");
        assert_eq!(bridge.translate("new", &Position { epoch: "other".into(), pos: 98 }), None);
        let head = Head { position: Position { epoch: "new".into(), pos: 9 }, bridge: Some(bridge) };
        assert_eq!(head.translate(&Position { epoch: "new".into(), pos: 4 }), new(4), "the current history as is");
        assert_eq!(head.translate(&at(99)), new(4));
    }

    #[test]
    fn frames_begin_with_their_history_prefix() {
        let f = frame("k3x", 7, r#""id":1,"operation":"INSERT","order":{}}"#);
        assert_eq!(f, r#"{"type":"event","epoch":"k3x","pos":7,"id":1,"operation":"INSERT","order":{}}"#);
        assert!(f.starts_with(&frame_prefix("k3x")));
        assert!(!f.starts_with(&frame_prefix("k3")));
    }

    #[test]
    fn entry_ids_map_to_positions() {
        assert_eq!(entry_pos("1042-1"), Some(1042));
        assert_eq!(entry_pos("garbage"), None);
    }
}
