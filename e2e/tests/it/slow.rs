//! Slow consumers: a client that stops reading is closed with 4008 once more than
//! `WS_QUEUE_CAPACITY` events or `WS_QUEUE_BYTES` bytes wait for it, while its send is blocked,
//! and gets what was in flight, then the close, when it reads again. Everyone else keeps
//! receiving everything.
//!
//! The tests publish frames without positions straight to the channel (the ws-server forwards
//! them as they come), and keep publishing until the replica reports the close: how much the
//! kernel's socket buffers absorb first is not the test's business.

use std::time::Duration;

use e2e::{Service, WAIT, WsClient, spawn_ws, ws_config};
use futures_util::StreamExt;
use serde_json::Value;
use testkit::RedisServer;
use tokio::{
    net::{TcpSocket, TcpStream},
    time::timeout,
};
use tokio_tungstenite::{
    WebSocketStream, client_async,
    tungstenite::{Message, protocol::CloseFrame},
};

use e2e::history::event_frame as event;

async fn publish(redis: &RedisServer, frames: impl IntoIterator<Item = String>) {
    e2e::history::publish_frames(&redis.url(), frames).await;
}

/// A plain client with a tiny receive buffer that reads nothing until told to.
struct StuckClient {
    ws: WebSocketStream<TcpStream>,
}

impl StuckClient {
    async fn connect(ws: &Service) -> StuckClient {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = timeout(WAIT, socket.connect(ws.addr)).await.expect("connect in time").unwrap();
        let (ws, _) = timeout(WAIT, client_async(ws.ws_url(), stream)).await.expect("handshake in time").unwrap();
        StuckClient { ws }
    }

    /// Reads everything now: the event ids that arrived, then the close frame's code and reason.
    async fn read_until_close(mut self) -> (Vec<u64>, u16, String) {
        let mut ids = Vec::new();
        let read = async {
            while let Some(msg) = self.ws.next().await {
                match msg.expect("the connection stays intact up to the close frame") {
                    Message::Text(text) => {
                        let frame: Value = serde_json::from_str(&text).unwrap();
                        ids.push(frame["id"].as_u64().unwrap());
                    }
                    Message::Close(Some(CloseFrame { code, reason })) => return (u16::from(code), reason.to_string()),
                    Message::Close(None) => panic!("a close frame without a code"),
                    _ => {}
                }
            }
            panic!("the connection ended without a close frame")
        };
        let (code, reason) = timeout(WAIT, read).await.expect("the close frame arrives in time");
        (ids, code, reason)
    }
}

/// Publishes chunks of `chunk` events of `padding` bytes until `ws` reports a slow consumer;
/// `fast` reads every event of each chunk before the next. Returns how many were published.
async fn publish_until_closed(
    redis: &RedisServer,
    ws: &Service,
    fast: &mut WsClient,
    chunk: u64,
    padding: usize,
) -> u64 {
    let limit = 64 * 1024 * 1024 / padding as u64; // 64 MB: far beyond any socket buffers
    let mut next = 0;
    while ws.metric("ws_dropped_slow_total").await == 0 {
        assert!(next < limit, "no slow consumer noticed after {next} events");
        publish(redis, (next..next + chunk).map(|n| event(n, padding))).await;
        for n in next..next + chunk {
            assert_eq!(fast.next_json().await["id"], n, "the fast client gets every event in order");
        }
        next += chunk;
    }
    next
}

/// `fell N events (B bytes) behind`, read back from a 4008 reason.
fn lag_in(reason: &str) -> (u64, u64) {
    let rest = reason.strip_prefix("slow consumer: fell ").unwrap_or_else(|| panic!("{reason}"));
    let (events, rest) = rest.split_once(" events (").unwrap_or_else(|| panic!("{reason}"));
    let (bytes, rest) = rest.split_once(" bytes) behind").unwrap_or_else(|| panic!("{reason}"));
    assert_eq!(rest, "; reconnect", "{reason}");
    (events.parse().unwrap(), bytes.parse().unwrap())
}

/// What every test checks once the stuck client reads again: a gap-free run of events from
/// the first one, then 4008 with its reason; the fast client still connected and served.
async fn assert_closed_after_its_data(
    stuck: StuckClient,
    fast: &mut WsClient,
    redis: &RedisServer,
    ws: &Service,
    published: u64,
) -> (u64, u64) {
    let (ids, code, reason) = stuck.read_until_close().await;
    assert_eq!(code, 4008, "{reason}");
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>(), "what arrived is every event up to the close");
    assert!((ids.len() as u64) < published, "the stuck client did not get everything: {} of {published}", ids.len());
    assert_eq!(ws.metric("ws_send_failures_total").await, 0, "closed by the bound, not dropped by the send timeout");
    publish(redis, [event(published, 0)]).await;
    assert_eq!(fast.next_json().await["id"], published, "the fast client is unaffected");
    testkit::wait_until(WAIT, "only the fast client remains", || async { ws.metric("ws_open_connections").await == 1 })
        .await;
    lag_in(&reason)
}

#[tokio::test]
async fn a_stuck_client_is_closed_with_4008_once_more_than_queue_capacity_events_wait() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.queue_capacity = 100; // not a power of two: a broadcast ring would allow 128
    config.send_timeout = Duration::from_secs(120); // the bound must act, not the timeout
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;
    let stuck = StuckClient::connect(&ws).await;
    let (mut fast, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    // Chunks well under the bound, so the fast client never has 100 events waiting.
    let published = publish_until_closed(&redis, &ws, &mut fast, 40, 1000).await;
    let (events, bytes) = assert_closed_after_its_data(stuck, &mut fast, &redis, &ws, published).await;
    // Noticed when the 101st queued event arrived; up to two more chunks may have come before
    // the connection looked and the test saw it.
    assert!((101..=180).contains(&events), "closed for the event bound: {events} events, {bytes} bytes");
    assert!(bytes < 16 * 1024 * 1024, "not for the byte bound: {bytes}");
}

#[tokio::test]
async fn a_stuck_client_is_closed_with_4008_once_more_than_queue_bytes_wait_with_large_rows() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.queue_bytes = 2 * 1024 * 1024;
    config.send_timeout = Duration::from_secs(120);
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;
    let stuck = StuckClient::connect(&ws).await;
    let (mut fast, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    // 80 KB rows: 26 of them pass 2 MiB, long before the 1024-event bound.
    let published = publish_until_closed(&redis, &ws, &mut fast, 16, 80_000).await;
    let (events, bytes) = assert_closed_after_its_data(stuck, &mut fast, &redis, &ws, published).await;
    assert!(bytes > 2 * 1024 * 1024, "closed for the byte bound: {events} events, {bytes} bytes");
    assert!(bytes <= 2 * 1024 * 1024 + 2 * 16 * 80_200, "within two chunks of the bound: {bytes}");
    assert!(events < 1024, "not for the event bound: {events}");
}

#[tokio::test]
async fn a_client_that_stops_reading_at_default_settings_gets_its_data_then_4008_rather_than_a_silent_drop() {
    let redis = RedisServer::start().await;
    let ws = spawn_ws(ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let stuck = StuckClient::connect(&ws).await;
    let (mut fast, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    // 20 KB rows with every setting at its default (1024 events, 16 MiB, 10 s send timeout).
    // Had the connection sat in its blocked send, the send timeout would have dropped it
    // without a close frame and the loop would run out of events.
    let published = publish_until_closed(&redis, &ws, &mut fast, 64, 20_000).await;
    let (events, bytes) = assert_closed_after_its_data(stuck, &mut fast, &redis, &ws, published).await;
    assert!(bytes > 16 * 1024 * 1024 && events < 1024, "closed for the byte bound: {events} events, {bytes} bytes");
}

#[tokio::test]
async fn an_event_larger_than_queue_bytes_still_reaches_a_client_that_reads() {
    let redis = RedisServer::start().await;
    let mut config = ws_config(&redis.url());
    config.queue_bytes = 64 * 1024;
    let ws = spawn_ws(config).await;
    ws.wait_ready().await;
    let (mut client, _) = WsClient::connect_protocol(&ws.ws_url()).await;

    // One event always fits in the queue, whatever its size: only a second one behind it
    // would pass the bound.
    publish(&redis, [event(1, 200_000)]).await;
    let got = client.next_json().await;
    assert_eq!((got["id"].as_u64(), got["order"]["pad"].as_str().map(str::len)), (Some(1), Some(200_000)));
    publish(&redis, [event(2, 0)]).await;
    assert_eq!(client.next_json().await["id"], 2, "still connected");
    assert_eq!(ws.metric("ws_dropped_slow_total").await, 0);
}
