//! The WebSocket surface: protocol negotiation, bad client frames, slow consumers.

use std::time::Duration;

use e2e::{WAIT, WsClient, spawn_ws, ws_config};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use testkit::{RedisServer, wait_until};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest, http::HeaderValue};

async fn publish(redis: &RedisServer, frames: impl IntoIterator<Item = String>) {
    e2e::history::publish_frames(&redis.url(), frames).await;
}

fn event(n: usize, padding: usize) -> String {
    e2e::history::event_frame(n as u64, padding)
}

#[tokio::test]
async fn plain_clients_get_only_events_and_protocol_clients_get_hello_first() {
    let redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;

    let mut plain = WsClient::connect(&format!("ws://{}/", ws.addr)).await;
    let (mut typed, hello) = WsClient::connect_protocol(&ws.ws_url()).await;
    assert_eq!(hello["protocol"], 1);
    assert_eq!(hello["server_id"], format!("ws-{}", ws.addr.port()));
    let (mut by_query, _) = WsClient::connect_protocol(&format!("{}?protocol=orders.v1", ws.ws_url())).await;

    plain.send_text(r#"{"type":"ping"}"#).await; // ignored: plain clients get events only
    publish(&redis, [event(1, 0)]).await;
    assert_eq!(plain.next_json().await, serde_json::from_str::<serde_json::Value>(&event(1, 0)).unwrap());
    assert_eq!(typed.next_json().await["id"], 1);
    assert_eq!(by_query.next_json().await["id"], 1);

    typed.send_text(r#"{"type":"ping","id":"abc"}"#).await;
    assert_eq!(typed.next_json().await, json!({"type":"pong","id":"abc"}));
}

async fn assert_error_frame(client: &mut WsClient, code: &str) {
    let reply = client.next_json().await;
    assert_eq!((reply["type"].as_str(), reply["code"].as_str()), (Some("error"), Some(code)), "{reply}");
    assert!(!reply["message"].as_str().unwrap_or_default().is_empty(), "{reply}");
}

#[tokio::test]
async fn bad_client_frames_get_error_frames_and_the_connection_stays_up() {
    let redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let (mut bad, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    let (mut bystander, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    let oversized = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(100_000));
    let texts = [
        ("garbage{", "invalid_json"),
        (r#"{"type":"launch_rockets"}"#, "unknown_type"),
        ("[1,2,3]", "unknown_type"),
        (r#"{"type":"ping","id":{"#, "invalid_json"),
        (oversized.as_str(), "frame_too_large"),
    ];
    for (text, code) in texts {
        bad.send_text(text).await;
        assert_error_frame(&mut bad, code).await;
    }
    bad.send_binary(vec![0, 159, 146, 150]).await;
    assert_error_frame(&mut bad, "binary_not_supported").await;

    publish(&redis, [event(7, 0)]).await;
    assert_eq!(bad.next_json().await["id"], 7, "the offending connection still receives events");
    assert_eq!(bystander.next_json().await["id"], 7, "other clients are unaffected");
    assert_eq!(ws.metric("ws_bad_client_frames_total").await, 6);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_with_4008_while_a_fast_client_keeps_up() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.queue_capacity = 32;
    config.send_timeout = Duration::from_secs(30);
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;

    let mut slow = WsClient::connect_small_buffer(&ws.ws_url()).await;
    assert_eq!(slow.next_json().await["type"], "hello");
    let (mut fast, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    // ~8 MB: far more than the slow client's socket buffers plus its 32-event queue. The
    // fast client reads each chunk before the next is published; the slow one reads nothing.
    let total = 800;
    for chunk in (0..total).collect::<Vec<_>>().chunks(16) {
        publish(&redis, chunk.iter().map(|n| event(*n, 10_000))).await;
        for n in chunk {
            assert_eq!(fast.next_json().await["id"], *n);
        }
    }
    // Its task is blocked writing to the full socket; it notices its queue passing 32 events
    // meanwhile and queues the close behind what was in flight, which the client reads now.
    let (code, reason) = slow.expect_close(WAIT).await;
    assert_eq!(code, 4008, "{reason}");
    assert!(reason.contains("slow consumer"), "{reason}");
    assert_eq!(ws.metric("ws_dropped_slow_total").await, 1);
    wait_until(WAIT, "only the fast client remains", || async { ws.metric("ws_open_connections").await == 1 }).await;
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_with_4009() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.heartbeat_interval = Duration::from_millis(200);
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;

    // A client that never reads never answers the server's pings.
    let (mut silent, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    // One that reads answers each ping as it reads it (tungstenite queues the pong and sends
    // it with the next read). It reads until it has answered four pings: by then it has lived
    // through more heartbeat intervals than the two that close a silent client.
    let mut request = ws.ws_url().into_client_request().unwrap();
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("orders.v1"));
    let (mut healthy, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let keep_alive = tokio::spawn(async move {
        let mut pings = 0;
        while pings < 4 {
            match timeout(WAIT, healthy.next()).await.expect("pinged in time") {
                Some(Ok(Message::Ping(_))) => pings += 1,
                Some(Ok(Message::Close(frame))) => panic!("the answering client was closed: {frame:?}"),
                Some(Ok(_)) => {}
                other => panic!("the answering client's connection ended: {other:?}"),
            }
        }
        healthy
    });
    // The silent client must not read (reading answers pings) until the server gave up on it.
    wait_until(WAIT, "heartbeat timeout", || async { ws.metric("ws_heartbeat_timeouts_total").await == 1 }).await;
    let (code, _) = silent.expect_close(WAIT).await;
    assert_eq!(code, 4009);
    let mut healthy = keep_alive.await.unwrap();
    healthy.send(Message::text(r#"{"type":"ping"}"#)).await.unwrap();
    let pong = loop {
        match timeout(WAIT, healthy.next()).await.expect("an answer in time") {
            Some(Ok(Message::Text(text))) => break serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            Some(Ok(Message::Ping(_))) => {}
            other => panic!("the answering client's connection ended: {other:?}"),
        }
    };
    assert_eq!(pong["type"], "pong", "a client that answers pings stays connected");
    assert_eq!(ws.metric("ws_heartbeat_timeouts_total").await, 1, "only the silent client timed out");
}

#[tokio::test]
async fn readyz_fails_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let (_, body) = e2e::http_get(ws.addr, "/readyz").await.unwrap();
    assert_eq!(body, r#"{"checks":{"redis":"up"},"ready":true}"#);

    redis.stop().await;
    wait_until(WAIT, "readyz 503", || async { ws.readyz().await == 503 }).await;
    let (_, body) = e2e::http_get(ws.addr, "/healthz").await.unwrap();
    assert_eq!(body, "ok\n", "liveness stays up while a dependency is down");

    redis.restart().await;
    ws.wait_ready().await;
    let (mut client, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    publish(&redis, [event(1, 0)]).await;
    assert_eq!(client.next_json().await["id"], 1, "resubscribed after the restart");
}
