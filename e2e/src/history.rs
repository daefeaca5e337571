//! Reading back what reached Redis: the replay log and the state, for durability checks.

use std::{collections::BTreeMap, time::Duration};

use protocol::{
    channel::ChannelName,
    log::Log,
    store::{ClusterMode, Conn, RedisTarget, Timeouts},
};
use serde_json::Value;

/// A connection to the server or cluster `redis_url` names (as the services make it).
pub async fn connect(redis_url: &str) -> Conn {
    let target = RedisTarget::open(redis_url, ClusterMode::Auto, None).expect("redis url");
    let timeouts = Timeouts { connect: Duration::from_secs(5), response: Duration::from_secs(5) };
    target.connect(timeouts).await.expect("connect to redis")
}

/// Every frame in the replay log, in position order.
pub async fn log_frames(redis_url: &str) -> Vec<Value> {
    let mut conn = connect(redis_url).await;
    let log = Log::new(&ChannelName::parse(protocol::channel::DEFAULT_REDIS_CHANNEL).expect("valid"));
    let mut frames = Vec::new();
    let mut after = 0;
    loop {
        let page = log.read_after(&mut conn, after, 1000).await.expect("read the log");
        let Some((last, _)) = page.last() else { return frames };
        after = *last;
        frames.extend(page.into_iter().map(|(_, f)| serde_json::from_str::<Value>(&f).expect("frames are JSON")));
    }
}

/// The state hash in Redis, as `<table>:<id>` → row.
pub async fn state(redis_url: &str) -> BTreeMap<String, Value> {
    let mut conn = connect(redis_url).await;
    let log = Log::new(&ChannelName::parse(protocol::channel::DEFAULT_REDIS_CHANNEL).expect("valid"));
    let snapshot = log.snapshot(&mut conn).await.expect("snapshot");
    snapshot.rows.into_iter().map(|(k, v)| (k, serde_json::from_str(&v).expect("rows are JSON"))).collect()
}

/// `SELECT * FROM orders` as `orders:<id>` → row, the way the trigger renders rows.
pub async fn table(pg: &testkit::PgServer) -> BTreeMap<String, Value> {
    pg.psql("postgres", "SELECT row_to_json(o) FROM orders o ORDER BY id")
        .await
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let row: Value = serde_json::from_str(l).expect("row_to_json is JSON");
            (format!("orders:{}", row["id"]), row)
        })
        .collect()
}

/// Applies events (in order) to a state keyed `<table>:<id>`.
pub fn apply(state: &mut BTreeMap<String, Value>, event: &Value) {
    let key = format!("{}:{}", event["table"].as_str().unwrap_or("orders"), event["order"]["id"]);
    if event["operation"] == "DELETE" {
        state.remove(&key);
    } else {
        state.insert(key, event["order"].clone());
    }
}

/// An event frame in the publisher's format (a ws-server relays nothing else) at position
/// `pos` of a test history, its row padded by `padding` bytes: for tests of a ws-server alone.
pub fn event_frame(pos: u64, padding: usize) -> String {
    serde_json::json!({"type":"event","epoch":"test","pos":pos,"id":pos,"table":"orders","operation":"INSERT",
                       "order":{"id":pos,"pad":"p".repeat(padding)}})
    .to_string()
}

/// PUBLISHes `frames` on the channel in one pipeline, as the publisher's script would.
pub async fn publish_frames(redis_url: &str, frames: impl IntoIterator<Item = String>) {
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect to redis");
    let mut pipe = redis::pipe();
    for frame in frames {
        pipe.publish(protocol::channel::DEFAULT_REDIS_CHANNEL, frame).ignore();
    }
    let publish = pipe.query_async::<()>(&mut conn);
    tokio::time::timeout(crate::WAIT, publish).await.expect("publish in time").expect("publish");
}
