//! The feed against a fake in-process ws-server (and against nothing at all).

use super::*;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::{net::TcpListener, time::timeout};
use tokio_tungstenite::{
    WebSocketStream, accept_hdr_async,
    tungstenite::{
        Message,
        handshake::server::{Request, Response},
        http::HeaderValue,
        protocol::{CloseFrame, frame::coding::CloseCode},
    },
};

type ServerSocket = WebSocketStream<tokio::net::TcpStream>;

/// A one-connection ws-server on a free port: it picks `orders.v1` when `speaks_v1` (and the
/// client offers it), then hands the socket to `script`. Connections the script does not want
/// (e.g. the client's first, subprotocol-offering attempt at a legacy server) are handled too.
async fn fake_server<F, Fut>(speaks_v1: bool, script: F) -> String
where
    F: Fn(ServerSocket) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            // The callback's error type is tungstenite's (`ErrorResponse`), large or not.
            #[allow(clippy::result_large_err)]
            let callback = move |request: &Request, mut response: Response| {
                let offered = request.headers().get("sec-websocket-protocol").is_some();
                if speaks_v1 && offered {
                    response.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("orders.v1"));
                }
                Ok(response)
            };
            if let Ok(ws) = accept_hdr_async(tcp, callback).await {
                script(ws).await;
            }
        }
    });
    url
}

fn fast(url: &str) -> FeedConfig {
    let retry = RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
        ..RetryPolicy::default()
    };
    FeedConfig { retry, ..FeedConfig::new(url) }
}

async fn next(feed: &mut Feed) -> FeedItem {
    timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("feed item within 5s")
        .expect("no feed error")
        .expect("feed open")
}

const EVENT: &str = r#"{"type":"event","id":7,"table":"orders","operation":"UPDATE","order":{"id":1,"status":"completed"},"old":{"id":1,"status":"pending"},"ts":"2026-11-26T17:39:19.123456+00:00"}"#;

#[tokio::test]
async fn a_v1_server_is_greeted_and_its_events_delivered_raw() {
    let url = fake_server(true, |mut ws| async move {
        let hello = r#"{"type":"hello","protocol":1,"server_id":"ws-test","max_frame_bytes":65536}"#;
        for text in [hello, r#"{"type":"from_the_future","x":1}"#, "not json", EVENT] {
            ws.send(Message::text(text)).await.unwrap();
        }
        let frame = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
        ws.close(Some(frame)).await.unwrap();
        while ws.next().await.is_some() {}
    })
    .await;
    let mut feed = Feed::new(fast(&url), CancellationToken::new());
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Connected { server_id: Some("ws-test".into()), protocol: Protocol::OrdersV1 }
    );
    let FeedItem::Event { frame, raw } = next(&mut feed).await else { panic!("expected the event") };
    assert_eq!((raw.as_str(), frame.id), (EVENT, Some(7)));
    assert_eq!(feed.last_event_id(), Some(7));
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Disconnected {
            reason: DisconnectReason::Closed { code: 1001, reason: "server shutting down".into() }
        }
    );
    assert!(matches!(next(&mut feed).await, FeedItem::Retrying { attempt: 1, .. }));
    assert!(matches!(next(&mut feed).await, FeedItem::Connected { .. }), "reconnects to the same server");
}

#[tokio::test]
async fn an_older_server_without_the_subprotocol_still_works() {
    let url = fake_server(false, |mut ws| async move {
        ws.send(Message::text(r#"{"operation":"INSERT","order":{"id":3,"status":"pending"}}"#)).await.unwrap();
        while ws.next().await.is_some() {}
    })
    .await;
    let mut feed = Feed::new(fast(&url), CancellationToken::new());
    assert_eq!(next(&mut feed).await, FeedItem::Connected { server_id: None, protocol: Protocol::Legacy });
    let FeedItem::Event { frame, .. } = next(&mut feed).await else { panic!("expected the event") };
    assert_eq!((frame.table.as_str(), frame.order["id"].as_i64()), ("orders", Some(3)));
}

#[tokio::test]
async fn a_silent_server_is_noticed_and_left() {
    // Never reads, so never answers the probe ping either: a hung server.
    let url = fake_server(true, |ws| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(ws);
    })
    .await;
    let config = FeedConfig {
        idle_timeout: Duration::from_millis(300),
        hello_timeout: Duration::from_millis(50),
        max_retries: Some(0),
        ..fast(&url)
    };
    let mut feed = Feed::new(config, CancellationToken::new());
    assert_eq!(next(&mut feed).await, FeedItem::Connected { server_id: None, protocol: Protocol::OrdersV1 });
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Disconnected { reason: DisconnectReason::Silent(Duration::from_millis(300)) }
    );
    let gave_up = timeout(Duration::from_secs(1), feed.next()).await.unwrap();
    assert!(matches!(gave_up, Err(FeedError::GaveUp { retries: 0, .. })), "{gave_up:?}");
}

#[tokio::test]
async fn shutdown_closes_an_open_connection_with_going_away() {
    let (close_tx, mut close_rx) = tokio::sync::mpsc::unbounded_channel();
    let url = fake_server(true, move |mut ws| {
        let close_tx = close_tx.clone();
        async move {
            ws.send(Message::text(r#"{"type":"hello","server_id":"s"}"#)).await.unwrap();
            while let Some(Ok(message)) = ws.next().await {
                if let Message::Close(frame) = message {
                    // The test may be over already; then nobody needs the code.
                    let _ = close_tx.send(frame.map(|f| u16::from(f.code)));
                }
            }
        }
    })
    .await;
    let shutdown = CancellationToken::new();
    let mut feed = Feed::new(fast(&url), shutdown.clone());
    assert!(matches!(next(&mut feed).await, FeedItem::Connected { .. }));
    shutdown.cancel();
    let end = timeout(Duration::from_secs(2), feed.next()).await.expect("shutdown is prompt");
    assert!(matches!(end, Ok(None)), "{end:?}");
    let code = timeout(Duration::from_secs(2), close_rx.recv()).await.expect("server saw the close");
    assert_eq!(code, Some(Some(1001)));
}

#[test]
fn disconnect_reasons_read_well() {
    let closed = DisconnectReason::Closed { code: 1001, reason: "server shutting down".into() };
    assert_eq!(closed.to_string(), "server closed the connection with 1001 (server going away): server shutting down");
    let slow = DisconnectReason::Closed { code: 4008, reason: String::new() };
    assert_eq!(slow.to_string(), "server closed the connection with 4008 (client fell behind)");
    assert_eq!(
        DisconnectReason::Silent(Duration::from_secs(60)).to_string(),
        "nothing received for 60s, not even a pong"
    );
}

#[tokio::test]
async fn gives_up_after_max_retries_failed_attempts() {
    let config = FeedConfig { max_retries: Some(2), ..fast("ws://127.0.0.1:1/ws") };
    let mut feed = Feed::new(config, CancellationToken::new());
    let mut items = Vec::new();
    let err = loop {
        match timeout(Duration::from_secs(5), feed.next()).await.expect("no hang") {
            Ok(Some(item)) => items.push(item),
            Ok(None) => panic!("feed ended without giving up"),
            Err(err) => break err,
        }
    };
    let attempts: Vec<u32> = items
        .iter()
        .filter_map(|i| match i {
            FeedItem::Retrying { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [1, 2]);
    let disconnects = items.iter().filter(|i| matches!(i, FeedItem::Disconnected { .. })).count();
    assert_eq!(disconnects, 3, "the first attempt and two retries: {items:?}");
    assert!(matches!(err, FeedError::GaveUp { retries: 2, .. }), "{err}");
    assert!(feed.next().await.unwrap().is_none(), "a feed that gave up stays ended");
}

#[tokio::test]
async fn shutdown_ends_the_feed_while_waiting_to_retry() {
    let retry = RetryPolicy {
        min_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(60),
        ..RetryPolicy::default()
    };
    let shutdown = CancellationToken::new();
    let mut feed = Feed::new(FeedConfig { retry, ..FeedConfig::new("ws://127.0.0.1:1/ws") }, shutdown.clone());
    assert!(matches!(next(&mut feed).await, FeedItem::Disconnected { .. }));
    assert!(matches!(next(&mut feed).await, FeedItem::Retrying { .. }));
    shutdown.cancel();
    let end = timeout(Duration::from_secs(1), feed.next()).await.expect("shutdown is prompt");
    assert!(matches!(end, Ok(None)));
}
