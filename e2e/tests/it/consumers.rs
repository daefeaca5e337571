//! Durable consumers (docs/protocol.md, "Durable consumers"): a named reader whose last
//! acknowledged position the server keeps in Redis, so it resumes after it on any replica.

use std::time::Duration;

use e2e::{Service, WAIT, WsClient, spawn_ws, ws_config};
use serde_json::{Value, json};
use testkit::{RedisServer, http_get, wait_until};

use crate::support::{Sse, Writer, claims, consumer_in, hs_config, hs256, positions};

/// Longer than the 5 s refresh of `ws_consumer_lag_events`.
const LAG_REFRESH: Duration = Duration::from_secs(12);

fn kinds(frames: &[Value]) -> Vec<&str> {
    frames.iter().map(|f| f["type"].as_str().unwrap_or("?")).collect()
}

/// `ws_consumer_lag_events{consumer="<key>"}` in `ws`'s `/metrics`, if listed.
async fn lag(ws: &Service, key: &str) -> Option<i64> {
    let (_, body) = http_get(ws.addr, "/metrics").await?;
    let series = format!("ws_consumer_lag_events{{consumer=\"{key}\"}} ");
    body.lines().find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
}

async fn wait_for_lag(ws: &Service, key: &str, behind: i64) {
    let listed = async {
        while lag(ws, key).await != Some(behind) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(LAG_REFRESH, listed).await.is_err() {
        let (_, body) = http_get(ws.addr, "/metrics").await.unwrap_or_default();
        let series: Vec<&str> = body.lines().filter(|l| l.contains("consumer")).collect();
        panic!("{key} not listed {behind} behind on {} within {LAG_REFRESH:?}: {series:#?}", ws.addr);
    }
}

async fn ack(client: &mut WsClient, position: Value) -> Value {
    client.send_json(&json!({"type": "ack", "position": position})).await;
    client.next_json().await
}

async fn two_replicas(redis: &RedisServer) -> (Service, Service) {
    let (one, two) = (spawn_ws(ws_config(&redis.url())).await, spawn_ws(ws_config(&redis.url())).await);
    one.wait_ready().await;
    two.wait_ready().await;
    (one, two)
}

/// A consumer that acked, disconnected and missed 1,000 changes gets exactly those from
/// another replica (consecutive after its ack, nothing twice, nothing older), then live ones;
/// `/metrics` shows how far behind it was, and that it caught up.
#[tokio::test]
async fn a_durable_consumer_gets_exactly_what_it_missed_from_another_replica() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "durable").await;
    let (one, two) = two_replicas(&redis).await;

    let (mut a, _) = WsClient::connect_protocol(&format!("{}?consumer=vendor-1", one.ws_url())).await;
    writer.inserts(10, "Bob").await;
    assert_eq!(positions(&a.events(10).await), (1..=10).collect::<Vec<_>>(), "a new consumer starts live");
    for pos in [4, 10] {
        let acked = ack(&mut a, writer.at(pos)).await;
        assert_eq!(acked, json!({"type": "acked", "consumer": "vendor-1", "position": writer.at(pos)}));
    }
    assert_eq!(writer.consumer("vendor-1").await, Some(format!("{}:10", writer.epoch)));
    drop(a);

    let last = writer.inserts(1000, "Bob").await;
    assert_eq!(last, 1010);
    for ws in [&one, &two] {
        wait_for_lag(ws, "vendor-1", 1000).await;
    }

    let (mut b, _) = WsClient::connect_protocol(&format!("{}?consumer=vendor-1", two.ws_url())).await;
    let frames = b.frames_until("subscribed").await;
    let (subscribed, missed) = frames.split_last().unwrap();
    assert!(kinds(missed).iter().all(|k| *k == "event"), "{:?}", kinds(missed));
    assert_eq!(positions(missed), (11..=1010).collect::<Vec<_>>(), "exactly the missed changes, in order");
    assert_eq!(subscribed["position"], writer.at(1010));
    writer.inserts(5, "Bob").await;
    assert_eq!(positions(&b.events(5).await), [1011, 1012, 1013, 1014, 1015], "then live ones");
    assert_eq!(ack(&mut b, writer.at(1015)).await["position"], writer.at(1015));
    for ws in [&one, &two] {
        wait_for_lag(ws, "vendor-1", 0).await;
    }
    drop(b);

    // The same through a subscribe frame, on the first replica again.
    writer.inserts(3, "Bob").await;
    let (mut c, _) = WsClient::connect_protocol(&format!("{}?subscribe=false", one.ws_url())).await;
    c.send_json(&json!({"type": "subscribe", "consumer": "vendor-1"})).await;
    let frames = c.frames_until("subscribed").await;
    assert_eq!(kinds(&frames), ["event", "event", "event", "subscribed"]);
    assert_eq!(positions(&frames[..3]), [1016, 1017, 1018]);
}

/// `?ack=auto` for clients that cannot send frames (plain WebSocket, SSE): what was delivered
/// counts as acknowledged, stored every second and when the connection ends, and the next
/// connection with the same name resumes after it.
#[tokio::test]
async fn auto_ack_resumes_plain_websocket_and_sse_clients_after_what_was_delivered() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "auto").await;
    let (one, two) = two_replicas(&redis).await;

    let mut plain = WsClient::connect(&format!("{}?consumer=plain-1&ack=auto", one.ws_url())).await;
    let mut sse = Sse::open(one.addr, "/events?consumer=sse-1&ack=auto", &[]).await;
    assert_eq!(sse.next().await.event.as_deref(), Some("hello"));
    wait_until(WAIT, "both connections open", || async { one.metric("ws_open_connections").await == 2 }).await;
    writer.inserts(5, "Bob").await;
    assert_eq!(positions(&plain.events(5).await), [1, 2, 3, 4, 5]);
    assert_eq!(positions(&sse.changes(5).await), [1, 2, 3, 4, 5]);
    let at = |pos: u64| Some(format!("auto:{pos}"));
    wait_until(Duration::from_secs(5), "auto acks stored while connected", || async {
        consumer_in(&redis.url(), "plain-1").await == at(5) && consumer_in(&redis.url(), "sse-1").await == at(5)
    })
    .await;

    writer.inserts(2, "Bob").await;
    assert_eq!(positions(&plain.events(2).await), [6, 7]);
    assert_eq!(positions(&sse.changes(2).await), [6, 7]);
    drop((plain, sse));
    wait_until(WAIT, "both connections closed", || async { one.metric("ws_open_connections").await == 0 }).await;
    assert_eq!(writer.consumer("plain-1").await, at(7), "stored when the connection ended");
    assert_eq!(writer.consumer("sse-1").await, at(7), "stored when the stream ended");

    writer.inserts(3, "Bob").await; // 8..=10, while both are away
    let mut plain = WsClient::connect(&format!("{}?consumer=plain-1&ack=auto", two.ws_url())).await;
    assert_eq!(positions(&plain.events(3).await), [8, 9, 10], "after what was delivered, on another replica");
    let mut sse = Sse::open(two.addr, "/events?consumer=sse-1&ack=auto", &[]).await;
    let mut named: Vec<(String, Option<String>)> = Vec::new();
    let mut changes = Vec::new();
    while named.last().map(|(name, _)| name.as_str()) != Some("subscribed") {
        let event = sse.next().await;
        match event.event.clone() {
            Some(name) => named.push((name, event.id.clone())),
            None => {
                assert_eq!(event.id, Some(format!("auto:{}", event.json()["pos"])), "{event:?}");
                changes.push(event.json());
            }
        }
    }
    assert_eq!(
        named,
        // A hello that a replay follows carries no id: it would pass the replayed events.
        [("hello".to_owned(), None), ("subscribed".to_owned(), Some("auto:10".to_owned()))]
    );
    assert_eq!(positions(&changes), [8, 9, 10]);
    writer.inserts(1, "Bob").await;
    assert_eq!(positions(&plain.events(1).await), [11], "then live, nothing twice");
    assert_eq!(positions(&sse.changes(1).await), [11], "then live, nothing twice");
}

/// An ack never moves a consumer back, an ack of a position the connection did not deliver is
/// an error, and acks name a consumer the connection holds.
#[tokio::test]
async fn acks_only_move_forward_and_only_to_delivered_positions() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "acks").await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let (mut c, _) = WsClient::connect_protocol(&format!("{}?consumer=v", ws.ws_url())).await;
    writer.inserts(10, "Bob").await;
    c.events(10).await;
    assert_eq!(ack(&mut c, writer.at(8)).await["position"], writer.at(8));
    let back = ack(&mut c, writer.at(5)).await;
    assert_eq!(back, json!({"type": "acked", "consumer": "v", "position": writer.at(8)}), "never back");
    assert_eq!(writer.consumer("v").await, Some("acks:8".to_owned()));

    for (position, code, needle) in [
        (writer.at(11), "invalid_frame", "not a position this connection delivered"),
        (json!({"epoch": "other", "pos": 3}), "invalid_frame", "not a position this connection delivered"),
    ] {
        let error = ack(&mut c, position.clone()).await;
        assert_eq!(
            (error["type"].as_str(), error["code"].as_str()),
            (Some("error"), Some(code)),
            "{position}: {error}"
        );
        assert!(error["message"].as_str().unwrap().contains(needle), "{error}");
    }
    c.send_json(&json!({"type": "ack", "consumer": "w", "position": writer.at(9)})).await;
    assert_eq!(c.next_json().await["code"], "unknown_subscription");
    let (mut none, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    writer.inserts(1, "Bob").await; // 11
    c.events(1).await;
    none.events(1).await;
    assert_eq!(ack(&mut none, writer.at(11)).await["code"], "unknown_subscription", "no consumer on it");
    assert_eq!(writer.consumer("v").await, Some("acks:8".to_owned()), "refused acks stored nothing");
    drop(c);

    let (mut again, _) = WsClient::connect_protocol(&format!("{}?consumer=v", ws.ws_url())).await;
    let frames = again.frames_until("subscribed").await;
    assert_eq!(positions(&frames[..frames.len() - 1]), [9, 10, 11], "after the furthest ack");
}

/// With auth on, consumer names are the token subject's: two subjects using the same name
/// keep two positions.
#[tokio::test]
async fn two_subjects_with_the_same_consumer_name_do_not_share_a_position() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "subjects").await;
    let ws = spawn_ws(hs_config(&redis.url(), &[])).await;
    ws.wait_ready().await;
    let alice = hs256(&claims("alice", json!({})));
    let bob = hs256(&claims("bob", json!({})));
    let url = |token: &str| format!("{}?consumer=shared&access_token={token}", ws.ws_url());
    let (mut a, _) = WsClient::connect_protocol(&url(&alice)).await;
    let (mut b, _) = WsClient::connect_protocol(&url(&bob)).await;
    writer.inserts(10, "Bob").await;
    a.events(10).await;
    b.events(10).await;
    assert_eq!(ack(&mut a, writer.at(10)).await["position"], writer.at(10));
    let acked = ack(&mut b, writer.at(3)).await;
    assert_eq!(acked, json!({"type": "acked", "consumer": "shared", "position": writer.at(3)}), "not alice's 10");
    assert_eq!(writer.consumer("alice/shared").await, Some("subjects:10".to_owned()));
    assert_eq!(writer.consumer("bob/shared").await, Some("subjects:3".to_owned()));
    assert_eq!(writer.consumer("shared").await, None);
    drop((a, b));

    writer.inserts(2, "Bob").await; // 11, 12
    let (mut a, _) = WsClient::connect_protocol(&url(&alice)).await;
    let (mut b, _) = WsClient::connect_protocol(&url(&bob)).await;
    let frames = a.frames_until("subscribed").await;
    assert_eq!(positions(&frames[..frames.len() - 1]), [11, 12]);
    let frames = b.frames_until("subscribed").await;
    assert_eq!(positions(&frames[..frames.len() - 1]), (4..=12).collect::<Vec<_>>());
    wait_for_lag(&ws, "alice/shared", 2).await;
    wait_for_lag(&ws, "bob/shared", 9).await;
}

/// A consumer whose last ack the log no longer reaches gets an explicit `reset` (a plain
/// connection is closed with 4010), never a silent gap.
#[tokio::test]
async fn a_consumer_beyond_the_logs_retention_gets_a_reset() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "retention").await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let mut acking = Vec::new();
    for name in ["typed", "plain", "sse"] {
        acking.push(WsClient::connect_protocol(&format!("{}?consumer={name}", ws.ws_url())).await.0);
    }
    writer.inserts(3, "Bob").await;
    for c in &mut acking {
        c.events(3).await;
        assert_eq!(ack(c, writer.at(3)).await["type"], "acked");
    }
    drop(acking);
    writer.maxlen = 10;
    for _ in 0..6 {
        writer.inserts(50, "Bob").await;
    }
    let first = writer.first_pos().await.unwrap();
    assert!(first > 5, "the log was trimmed (XADD MAXLEN ~ trims whole nodes): first is {first}");

    let (mut typed, _) = WsClient::connect_protocol(&format!("{}?consumer=typed", ws.ws_url())).await;
    let reset = typed.next_json().await;
    assert_eq!(
        (reset["type"].as_str(), reset["reason"].as_str()),
        (Some("reset"), Some("beyond_retention")),
        "{reset}"
    );
    assert_eq!(reset["position"], writer.at(303));
    assert!(reset["message"].as_str().unwrap().contains(&first.to_string()), "{reset}");
    writer.inserts(1, "Bob").await;
    assert_eq!(positions(&typed.events(1).await), [304], "the connection continues live");

    let mut plain = WsClient::connect(&format!("{}?consumer=plain&ack=auto", ws.ws_url())).await;
    let (code, reason) = plain.expect_close(WAIT).await;
    assert_eq!(code, 4010, "{reason}");
    assert!(reason.contains("retention"), "{reason}");

    let mut sse = Sse::open(ws.addr, "/events?consumer=sse&ack=auto", &[]).await;
    assert_eq!(sse.next().await.event.as_deref(), Some("hello"));
    let reset = sse.next().await;
    assert_eq!(reset.event.as_deref(), Some("reset"), "{reset:?}");
    assert_eq!(reset.json()["reason"], "beyond_retention");
    writer.inserts(1, "Bob").await;
    assert_eq!(positions(&sse.changes(1).await), [305], "the stream continues live");
}
