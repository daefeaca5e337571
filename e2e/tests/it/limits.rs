//! Limits (docs/protocol.md, "Limits"): subscriptions per connection, filters per
//! subscription, client frames per second. Each refusal is said (an error frame, or HTTP 400
//! on the URL) and counted; the connection and its other subscriptions go on. (The frame size
//! limits are covered by `websocket` and `close_codes`.)

use std::time::Duration;

use e2e::{Service, WsClient, spawn_ws};
use serde_json::{Value, json};
use testkit::RedisServer;

use crate::support::{UPGRADE, Writer, config, positions, request};

async fn server(redis: &RedisServer, vars: &[(&str, &str)]) -> Service {
    let ws = spawn_ws(config(&redis.url(), vars)).await;
    ws.wait_ready().await;
    ws
}

fn is_error(frame: &Value, code: &str) -> bool {
    frame["type"] == "error" && frame["code"] == code
}

/// WS_MAX_SUBSCRIPTIONS=2: a third subscription is refused with `limit_exceeded`, the two
/// others keep receiving; replacing one at the limit is not a new one; the default
/// subscription counts.
#[tokio::test]
async fn a_subscription_over_ws_max_subscriptions_is_refused_and_the_others_go_on() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "subs").await;
    let ws = server(&redis, &[("WS_MAX_SUBSCRIPTIONS", "2")]).await;
    let (mut c, _) = WsClient::connect_protocol(&format!("{}?subscribe=false", ws.ws_url())).await;
    c.send_json(&json!({"type": "subscribe", "id": "s1"})).await;
    assert_eq!(c.next_json().await["id"], "s1");
    c.send_json(&json!({"type": "subscribe", "id": "s2", "filter": "id=lte.3"})).await;
    assert_eq!(c.next_json().await, json!({"type": "subscribed", "id": "s2", "position": writer.at(0)}));
    c.send_json(&json!({"type": "subscribe", "id": "s3", "filter": "customer_name=eq.Bob"})).await;
    let refused = c.next_json().await;
    assert!(is_error(&refused, "limit_exceeded"), "{refused}");
    assert_eq!(refused["id"], "s3", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("WS_MAX_SUBSCRIPTIONS"), "{refused}");
    assert_eq!(ws.metric("ws_limit_refusals_total").await, 1);

    // Replacing s1 at the limit is allowed.
    c.send_json(&json!({"type": "subscribe", "id": "s1", "filter": "customer_name=eq.Bob"})).await;
    assert_eq!(c.next_json().await["type"], "subscribed");
    writer
        .insert(&[
            json!({"id": 1, "customer_name": "Bob"}),
            json!({"id": 2, "customer_name": "Alice"}),
            json!({"id": 4, "customer_name": "Bob"}),
            json!({"id": 5, "customer_name": "Alice"}),
        ])
        .await;
    writer.insert(&[json!({"id": 6, "customer_name": "Bob"})]).await;
    let events = c.events(4).await;
    let routed: Vec<(u64, Value)> = events.iter().map(|e| (e["pos"].as_u64().unwrap(), e["subs"].clone())).collect();
    assert_eq!(
        routed,
        [(1, json!(["s1", "s2"])), (2, json!(["s2"])), (3, json!(["s1"])), (5, json!(["s1"]))],
        "both subscriptions keep receiving, s3 nothing"
    );
    assert_eq!(ws.metric("ws_limit_refusals_total").await, 1, "a replacement is not refused");

    // Room again after an unsubscribe.
    c.send_json(&json!({"type": "unsubscribe", "id": "s2"})).await;
    assert_eq!(c.next_json().await, json!({"type": "unsubscribed", "id": "s2"}));
    c.send_json(&json!({"type": "subscribe", "id": "s3"})).await;
    assert_eq!(c.next_json().await["id"], "s3");

    // The default subscription (from the URL) is one of the two.
    let (mut d, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    d.send_json(&json!({"type": "subscribe", "id": "x"})).await;
    assert_eq!(d.next_json().await["id"], "x");
    d.send_json(&json!({"type": "subscribe", "id": "y"})).await;
    let refused = d.next_json().await;
    assert!(is_error(&refused, "limit_exceeded") && refused["id"] == "y", "{refused}");
    assert_eq!(ws.metric("ws_limit_refusals_total").await, 2);
    writer.insert(&[json!({"id": 7, "customer_name": "Bob"})]).await;
    assert_eq!(d.events(1).await[0]["subs"], json!(["default", "x"]));
}

/// WS_MAX_FILTERS=2: three filters are an HTTP 400 naming the variable on the URL (`/ws` and
/// `/events`), and `limit_exceeded` in a `subscribe` frame; two are fine.
#[tokio::test]
async fn more_filters_than_ws_max_filters_are_refused() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "filters").await;
    let ws = server(&redis, &[("WS_MAX_FILTERS", "2")]).await;
    let three = "filter=id%3Dgte.1&filter=id%3Dlte.9&filter=customer_name%3Deq.Bob";
    for path in ["/ws", "/events"] {
        let headers: &[(&str, &str)] = if path == "/ws" { UPGRADE } else { &[] };
        let response = request(ws.addr, &format!("{path}?{three}"), headers).await;
        assert_eq!(response.status, 400, "{path}: {response:?}");
        assert!(
            response.body.contains("WS_MAX_FILTERS") && response.body.contains("too many filters: 3"),
            "{response:?}"
        );
        assert_eq!(response.body.matches('\n').count(), 1, "{response:?}");
    }
    assert_eq!(ws.metric("ws_limit_refusals_total").await, 2);
    assert_eq!(ws.metric("ws_connections_total").await, 0);

    let two = "filter=id%3Dgte.1&filter=customer_name%3Deq.Bob";
    let (mut c, _) = WsClient::connect_protocol(&format!("{}?{two}", ws.ws_url())).await;
    c.send_json(&json!({"type": "subscribe", "id": "three", "filter": ["id=gte.1", "id=lte.9", "status=eq.x"]})).await;
    let refused = c.next_json().await;
    assert!(is_error(&refused, "limit_exceeded") && refused["id"] == "three", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("WS_MAX_FILTERS"), "{refused}");
    c.send_json(&json!({"type": "subscribe", "id": "two", "filter": ["id=gte.1", "id=lte.9"]})).await;
    assert_eq!(c.next_json().await["id"], "two");
    assert_eq!(ws.metric("ws_limit_refusals_total").await, 3);
    writer.insert(&[json!({"id": 1, "customer_name": "Bob"}), json!({"id": 2, "customer_name": "Eve"})]).await;
    let events = c.events(2).await;
    assert_eq!(events[0]["subs"], json!(["default", "two"]));
    assert_eq!(events[1]["subs"], json!(["two"]));
}

/// WS_MAX_CLIENT_FRAMES_PER_SECOND=5: a burst of 30 pings gets the burst's pongs and a
/// `rate_limited` error for each of the rest: every frame is answered by one or the other,
/// none silently dropped; the events and the connection go on, and the budget refills.
#[tokio::test]
async fn a_burst_over_the_frame_rate_is_answered_frame_by_frame_and_the_connection_goes_on() {
    let redis = RedisServer::start().await;
    let mut writer = Writer::claim(&redis.url(), "rate").await;
    let ws = server(&redis, &[("WS_MAX_CLIENT_FRAMES_PER_SECOND", "5")]).await;
    let (mut c, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    let (mut bystander, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    for i in 0..30 {
        c.send_json(&json!({"type": "ping", "id": i})).await;
    }
    let appended = writer.inserts(10, "Bob").await;
    assert_eq!(appended, 10);
    let (mut pongs, mut limited, mut events) = (Vec::new(), 0, Vec::new());
    while pongs.len() + limited < 30 || events.len() < 10 {
        let frame = c.next_json().await;
        match frame["type"].as_str() {
            Some("pong") => pongs.push(frame["id"].as_u64().unwrap()),
            Some("event") => events.push(frame),
            _ if is_error(&frame, "rate_limited") => {
                assert!(frame["message"].as_str().unwrap().contains("WS_MAX_CLIENT_FRAMES_PER_SECOND"), "{frame}");
                limited += 1;
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(c.next_json_within(Duration::from_millis(500)).await.is_none(), "one answer per frame, no more");
    assert!(pongs.len() >= 5, "the burst is answered: {pongs:?}");
    assert!(limited >= 20, "the rest is refused, 5 a second: {limited} refused, pongs {pongs:?}");
    assert!(pongs.windows(2).all(|w| w[0] < w[1]) && pongs[..5] == [0, 1, 2, 3, 4], "in order: {pongs:?}");
    assert_eq!(positions(&events), (1..=10).collect::<Vec<_>>(), "events are not limited");
    assert_eq!(ws.metric("ws_client_frames_rate_limited_total").await, i64::try_from(limited).unwrap());
    assert_eq!(positions(&bystander.events(10).await), (1..=10).collect::<Vec<_>>());

    // A second later the budget is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 100..103 {
        c.send_json(&json!({"type": "ping", "id": i})).await;
        assert_eq!(c.next_json().await, json!({"type": "pong", "id": i}));
    }
    writer.inserts(1, "Bob").await;
    assert_eq!(positions(&c.events(1).await), [11]);
}
