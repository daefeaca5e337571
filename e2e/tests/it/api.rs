//! Writes through the HTTP API reach WebSocket and SSE clients like any other change: the API
//! writes rows, the trigger and the publisher do the rest.

use std::net::SocketAddr;

use e2e::{System, WsClient, sse::SseClient};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

/// `method path` with a JSON body on a fresh connection; the status and the body's JSON
/// (`null` for an empty body).
async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.expect("read");
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, if body.is_empty() { Value::Null } else { serde_json::from_str(body).expect("JSON body") })
}

#[tokio::test]
async fn writes_through_the_api_reach_websocket_and_sse_clients() {
    let system = System::start(1).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = orders_api::Config::from_lookup(|k| (k == "DATABASE_URL").then(|| system.pg.url())).expect("config");
    let shutdown = CancellationToken::new();
    let api = tokio::spawn(orders_api::run(config, listener, shutdown.clone()));
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    // The SSE stream with a filter and a select, as a browser page for one customer might ask.
    let mut sse = SseClient::get(system.ws[0].addr, "/events?filter=customer_name=eq.Ada&select=amount").await;
    assert_eq!(sse.status, 200, "{sse:?}");
    // The retry hint, then hello: the stream is subscribed before the writes.
    sse.events_until("hello").await;

    let (status, created) =
        send(addr, "POST", "/orders", r#"{"customer_name":"Ada","product_name":"Lamp","amount":10}"#).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().expect("an id");
    let (status, added) = send(addr, "POST", &format!("/orders/{id}/amount"), r#"{"amount":5}"#).await;
    assert_eq!((status, &added["amount"]), (200, &json!(15.0)), "{added}");
    let (status, _) = send(addr, "DELETE", &format!("/orders/{id}"), "").await;
    assert_eq!(status, 204);

    let events = client.events(3).await;
    let ops: Vec<_> = events.iter().map(|e| e["operation"].as_str().unwrap_or_default()).collect();
    assert_eq!(ops, ["INSERT", "UPDATE", "DELETE"], "{events:?}");
    assert_eq!(events[0]["order"]["customer_name"], "Ada");
    assert_eq!(events[1]["order"]["amount"], json!(15.0));
    assert_eq!(events[1]["old"]["amount"], json!(10.0));
    assert!(events.iter().all(|e| e["order"]["id"] == id), "{events:?}");

    let changes = sse.changes(3).await;
    let ops: Vec<_> = changes.iter().map(|e| e["operation"].as_str().unwrap_or_default()).collect();
    assert_eq!(ops, ["INSERT", "UPDATE", "DELETE"], "{changes:?}");
    for (change, frame) in changes.iter().zip(&events) {
        assert_eq!((&change["epoch"], &change["pos"]), (&frame["epoch"], &frame["pos"]), "the same events, in order");
        assert_eq!(change["order"], json!({"id": id, "amount": frame["order"]["amount"]}), "only the selected columns");
    }

    shutdown.cancel();
    api.await.expect("no panic").expect("clean shutdown");
}
