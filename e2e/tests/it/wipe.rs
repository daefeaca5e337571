//! Redis losing its data while clients watch: the new history carries every change committed
//! meanwhile as events and re-offers what replicas may have missed, so a client connected
//! through it, or resuming from a position of the old history, misses nothing, gets nothing
//! twice, and is not told to start over. Only a position the bridge does not reach is reset.

use e2e::{System, WAIT, WsClient, publisher_config, spawn_publisher, spawn_ws, ws_config};
use serde_json::{Value, json};
use testkit::{PgServer, RedisServer, wait_until};

fn names(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["order"]["customer_name"].as_str().expect("a customer name")).collect()
}

async fn insert(system: &System, names: &[&str]) {
    let values: Vec<String> = names.iter().map(|n| format!("('{n}', 'p')")).collect();
    system.sql(&format!("INSERT INTO orders (customer_name, product_name) VALUES {}", values.join(", "))).await;
}

#[tokio::test]
async fn clients_connected_through_a_redis_wipe_miss_nothing_and_are_not_reset() {
    let mut system = System::start(1).await;
    let url = system.ws[0].ws_url();
    let mut plain = WsClient::connect(&url).await;
    let (mut protocol, _) = WsClient::connect_protocol(&url).await;
    protocol.send_json(&json!({"type": "subscribe"})).await;
    assert_eq!(protocol.next_json().await["type"], "subscribed");

    insert(&system, &["a1", "a2", "a3"]).await;
    assert_eq!(names(&plain.events(3).await), ["a1", "a2", "a3"]);
    let seen = protocol.events(3).await;
    let old = json!({"epoch": seen[2]["epoch"], "pos": seen[2]["pos"]});

    system.redis.stop().await;
    wait_until(WAIT, "the publisher notices", || async { system.publisher.readyz().await == 503 }).await;
    insert(&system, &["b1", "b2"]).await; // committed while Redis is gone
    system.redis.restart().await; // empty
    system.wait_ready().await;
    insert(&system, &["c1"]).await;

    let after = plain.events(3).await;
    assert_eq!(names(&after), ["b1", "b2", "c1"], "the backlog, then live, each once");
    assert_ne!(after[0]["epoch"], seen[0]["epoch"], "in the new history");

    let frames = protocol.frames_until("event").await;
    assert_eq!(frames.len(), 2, "a rebase, then events, and no reset: {frames:?}");
    assert_eq!(frames[0]["type"], "rebased", "{frames:?}");
    assert_eq!(frames[0]["from"], old);
    let mut events = vec![frames[1].clone()];
    events.extend(protocol.events(2).await);
    assert_eq!(names(&events), ["b1", "b2", "c1"]);
    let rebased_at = frames[0]["position"]["pos"].as_u64().unwrap();
    let positions: Vec<u64> = events.iter().map(|e| e["pos"].as_u64().unwrap()).collect();
    assert_eq!(positions, [rebased_at + 1, rebased_at + 2, rebased_at + 3], "consecutive after the rebase");
    assert!(plain.next_json_within(std::time::Duration::from_millis(300)).await.is_none(), "nothing more");

    // A client that was away resumes from its old position on any replica: it gets what it
    // missed (a3 was re-offered), then the rest, with no reset.
    let since = format!("{}:{}", seen[1]["epoch"].as_str().unwrap(), seen[1]["pos"]);
    let mut late = WsClient::connect(&format!("{url}?since={since}")).await;
    assert_eq!(names(&late.events(4).await), ["a3", "b1", "b2", "c1"]);
    let ws = &system.ws[0];
    assert!(ws.metric("ws_history_rebases_total").await >= 1);
    assert_eq!(ws.metric("ws_resets_total").await, 0, "nobody was told to start over");
}

#[tokio::test]
async fn a_position_older_than_the_bridge_is_reset_not_skipped() {
    let (pg, mut redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let mut config = publisher_config(&pg.url(), &redis.url());
    config.bridge_events = 2;
    let publisher = spawn_publisher(config).await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    publisher.wait_ready().await;
    ws.wait_ready().await;
    let url = ws.ws_url();
    let mut client = WsClient::connect(&url).await;
    pg.psql(
        "postgres",
        "INSERT INTO orders (customer_name, product_name) SELECT 'c' || g, 'p' FROM generate_series(1, 4) g",
    )
    .await;
    let seen = client.events(4).await;
    let epoch = seen[0]["epoch"].as_str().unwrap().to_owned();

    redis.stop().await;
    // Noticed before anything is written: no append is in doubt, so the bridge is exactly the
    // recorded tail.
    wait_until(WAIT, "the publisher notices", || async { publisher.readyz().await == 503 }).await;
    redis.restart().await;
    wait_until(WAIT, "the publisher is ready again", || async { publisher.readyz().await == 200 }).await;
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('new', 'p')").await;
    assert_eq!(names(&client.events(1).await), ["new"], "the connected client is within reach");

    // Positions 3 and 4 are re-offered; after 2 the client has everything up to it: in reach.
    let (mut resumed, _) = WsClient::connect_protocol(&url).await;
    resumed.send_json(&json!({"type": "subscribe", "since": {"epoch": epoch, "pos": 2}})).await;
    let frames = resumed.frames_until("subscribed").await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["rebased", "event", "event", "event", "subscribed"], "{frames:?}");
    // After 1, event 2 is nowhere: a reset, never a silent skip.
    let (mut too_old, _) = WsClient::connect_protocol(&url).await;
    too_old.send_json(&json!({"type": "subscribe", "since": {"epoch": epoch, "pos": 1}})).await;
    let reset = too_old.next_json().await;
    assert_eq!((reset["type"].as_str(), reset["reason"].as_str()), (Some("reset"), Some("history_lost")), "{reset}");
    assert!(reset["message"].as_str().unwrap().contains("re-offers positions 3..=4"), "{reset}");
}

#[tokio::test]
async fn an_append_left_unanswered_as_redis_died_is_re_offered_at_the_positions_it_would_have_had() {
    let mut system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    insert(&system, &["a1", "a2"]).await;
    assert_eq!(names(&client.events(2).await), ["a1", "a2"]);

    // Frozen: the append of d1 gets no answer (it may or may not have been applied and
    // published at position 3); then Redis dies for good and comes back empty.
    system.redis.freeze();
    insert(&system, &["d1"]).await;
    wait_until(WAIT, "the publisher gives up on the append", || async { system.publisher.readyz().await == 503 }).await;
    system.redis.kill().await;
    system.redis.restart().await;
    system.wait_ready().await;
    insert(&system, &["c1"]).await;

    assert_eq!(names(&client.events(2).await), ["d1", "c1"], "each once, in order");
    let client_redis = redis::Client::open(system.redis.url()).unwrap();
    let mut conn = client_redis.get_multiplexed_async_connection().await.unwrap();
    let log = protocol::log::Log::new(&protocol::channel::ChannelName::parse("orders_updates").unwrap());
    let bridge = log.head_with_bridge(&mut conn).await.unwrap().and_then(|h| h.bridge).expect("a bridge");
    assert_eq!((bridge.from, bridge.to), (1, 3), "recorded 1..=2, and the batch in doubt at 3");
    let frames = e2e::history::log_frames(&system.redis.url()).await;
    assert_eq!(names(&frames), ["a1", "a2", "d1", "c1"], "d1 is not appended twice");
}
