//! Express lanes (`hub::express`): the hub writes events straight to caught-up connections,
//! and hands a connection back to its task for anything else. These tests make the two take
//! turns as often as they can, and check that every client still gets every event exactly
//! once, in order, in whole frames.

use std::time::Duration;

use e2e::{WAIT, spawn_ws, ws_config};
use futures_util::{SinkExt, StreamExt};
use testkit::{RedisServer, wait_until};
use tokio_tungstenite::{
    client_async,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

const EVENTS: u64 = 3000;

/// How a test client behaves.
#[derive(Clone, Copy)]
struct Style {
    /// Offer `orders.v1`.
    protocol: bool,
    /// Send a WebSocket ping and a protocol ping every few frames, so the server's task
    /// writes pongs between the hub's frames.
    ping: bool,
    /// A 4 KiB receive buffer and pauses while reading: the server's socket fills, and the
    /// connection's task takes over from the hub until the client caught up.
    slow: bool,
}

/// Reads events until `EVENTS` arrived (or `WAIT` passed without one). Returns the event ids
/// in the order they came.
async fn follow(addr: std::net::SocketAddr, style: Style) -> Vec<u64> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    if style.protocol {
        request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("orders.v1"));
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if style.slow {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let stream = socket.connect(addr).await.expect("connect");
    let (mut ws, _) = client_async(request, stream).await.expect("handshake");
    let mut ids = Vec::new();
    let mut frames = 0u64;
    while (ids.len() as u64) < EVENTS {
        let msg = match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(msg))) => msg,
            other => panic!("after {} events: {other:?}", ids.len()),
        };
        let Message::Text(text) = msg else { continue };
        let frame: serde_json::Value = serde_json::from_str(&text).expect("every frame is whole JSON");
        if frame["type"] == "event" {
            ids.push(frame["id"].as_u64().expect("an id"));
        }
        frames += 1;
        if style.slow && frames.is_multiple_of(50) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if style.ping && frames.is_multiple_of(7) {
            ws.send(Message::Ping(frames.to_be_bytes().to_vec().into())).await.expect("ping");
            ws.send(Message::Text(format!(r#"{{"type":"ping","id":"{frames}"}}"#).into())).await.expect("ping");
        }
    }
    ids
}

// Several threads: the clients must keep up with their own pings (a slow client starved of
// CPU would fairly be closed as silent, 4009).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_client_gets_every_event_once_in_order_while_the_hub_and_its_task_take_turns() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    // Not short: a slow client's pong comes after what fills its socket buffers, and two
    // intervals without one close it (4009), fairly, on a loaded machine. Server pings in the
    // middle of the stream are the next test's.
    config.heartbeat_interval = Duration::from_secs(3);
    config.queue_capacity = 100_000;
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;

    let mut clients = Vec::new();
    for i in 0..12 {
        let style = Style { protocol: i % 3 != 0, ping: i % 2 == 0, slow: i % 4 == 1 };
        clients.push(tokio::spawn(follow(ws.addr, style)));
    }
    wait_until(WAIT, "every client connected", || async { ws.metric("ws_open_connections").await == 12 }).await;
    // Bursts with pauses: lanes go idle, hand over, and get the next burst from the hub.
    for chunk in (1..=EVENTS).collect::<Vec<_>>().chunks(150) {
        e2e::history::publish_frames(&redis.url(), chunk.iter().map(|n| e2e::history::event_frame(*n, 1000))).await;
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let want: Vec<u64> = (1..=EVENTS).collect();
    for client in clients {
        let ids = client.await.expect("client task");
        assert!(
            ids == want,
            "{} events, first out of order at {:?}",
            ids.len(),
            ids.iter().zip(&want).position(|(a, b)| a != b)
        );
    }
    let total = 12 * EVENTS as i64;
    assert_eq!(ws.metric("ws_messages_out_total").await, total);
    let express = ws.metric("ws_express_deliveries_total").await;
    assert!(express > total / 2, "most events went by the hub's lanes: {express} of {total}");
    assert!(express < total, "the slow clients' tasks took over when their sockets filled: {express} of {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_take_the_lanes_back_between_frames() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.heartbeat_interval = Duration::from_millis(20);
    config.queue_capacity = 100_000;
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(tokio::spawn(follow(ws.addr, Style { protocol: i % 2 == 0, ping: false, slow: false })));
    }
    wait_until(WAIT, "every client connected", || async { ws.metric("ws_open_connections").await == 4 }).await;
    // A steady trickle, so pings (every 20 ms) fall between the hub's frames.
    for chunk in (1..=EVENTS).collect::<Vec<_>>().chunks(30) {
        e2e::history::publish_frames(&redis.url(), chunk.iter().map(|n| e2e::history::event_frame(*n, 100))).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let want: Vec<u64> = (1..=EVENTS).collect();
    for client in clients {
        assert!(client.await.expect("client task") == want, "every event once, in order");
    }
    assert_eq!(ws.metric("ws_messages_out_total").await, 4 * EVENTS as i64);
    let express = ws.metric("ws_express_deliveries_total").await;
    assert!(express > 2 * EVENTS as i64, "most by the lanes, the rest by the tasks around their pings: {express}");
    assert_eq!(ws.metric("ws_heartbeat_timeouts_total").await, 0);
}

#[tokio::test]
async fn with_ws_express_off_every_event_goes_through_the_connections_task() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.express = false;
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;
    let client = tokio::spawn(async move {
        let url = ws.ws_url();
        let ids = follow_n(&url, 50).await;
        (ids, ws)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    e2e::history::publish_frames(&redis.url(), (1..=50).map(|n| e2e::history::event_frame(n, 0))).await;
    let (ids, ws) = client.await.unwrap();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
    assert_eq!(ws.metric("ws_messages_out_total").await, 50);
    assert_eq!(ws.metric("ws_express_deliveries_total").await, 0);
}

async fn follow_n(url: &str, n: usize) -> Vec<u64> {
    let mut client = e2e::WsClient::connect(url).await;
    let mut ids = Vec::new();
    while ids.len() < n {
        ids.push(client.next_json().await["id"].as_u64().unwrap());
    }
    ids
}
