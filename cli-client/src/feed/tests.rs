//! The feed against a fake in-process ws-server (and against nothing at all).

use super::*;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt as _, StreamExt as _};
use protocol::{
    frames::{ClientFrame, ResetReason},
    retry::RetryPolicy,
};
use tokio::{net::TcpListener, sync::mpsc, time::timeout};
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

fn fast_retry() -> RetryPolicy {
    RetryPolicy { min_delay: Duration::from_millis(1), max_delay: Duration::from_millis(2), ..RetryPolicy::default() }
}

fn fast(url: &str) -> FeedConfig {
    FeedConfig { retry: fast_retry(), ..FeedConfig::new([url]) }
}

async fn next(feed: &mut Feed) -> FeedItem {
    timeout(Duration::from_secs(5), feed.next())
        .await
        .expect("feed item within 5s")
        .expect("no feed error")
        .expect("feed open")
}

const EVENT: &str = r#"{"type":"event","epoch":"e1","pos":12,"id":7,"table":"orders","operation":"UPDATE","order":{"id":1,"status":"completed"},"old":{"id":1,"status":"pending"},"ts":"2026-11-26T17:39:19.123456+00:00"}"#;

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
        FeedItem::Connected {
            url: url.clone(),
            server_id: Some("ws-test".into()),
            protocol: Protocol::OrdersV1,
            position: None
        }
    );
    let FeedItem::Event { frame, raw } = next(&mut feed).await else { panic!("expected the event") };
    assert_eq!((raw.as_str(), frame.id), (EVENT, Some(7)));
    assert_eq!(feed.position(), Some(&Position { epoch: "e1".into(), pos: 12 }));
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Disconnected {
            url: url.clone(),
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
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Connected { url: url.clone(), server_id: None, protocol: Protocol::Legacy, position: None }
    );
    let FeedItem::Event { frame, .. } = next(&mut feed).await else { panic!("expected the event") };
    assert_eq!((frame.table.as_str(), frame.order["id"].as_i64()), ("orders", Some(3)));

    // Asked to resume, it says that it cannot, and carries on. (The fake serves one
    // connection at a time: the first feed lets go of it.)
    drop(feed);
    let config = FeedConfig { start: Start::Since(at("e", 1)), ..fast(&url) };
    let mut feed = Feed::new(config, CancellationToken::new());
    let items = take(&mut feed, 3).await;
    assert_eq!(summary(&items), ["connected", "not resumed", "orders:3"]);
}

// On a paused clock: the real defaults (2 s hello, 60 s idle) take no real time, and the
// timeouts fire exactly when due. The sockets are loopback ones, ready as soon as written.
#[tokio::test(start_paused = true)]
async fn a_silent_server_is_noticed_and_left() {
    // Holds the connection and never reads, so never answers the probe ping either: a hung server.
    let url = fake_server(true, |ws| async move {
        std::future::pending::<()>().await;
        drop(ws);
    })
    .await;
    let config = FeedConfig { max_retries: Some(0), ..fast(&url) };
    let idle = config.idle_timeout;
    let mut feed = Feed::new(config, CancellationToken::new());
    assert_eq!(
        next(&mut feed).await,
        FeedItem::Connected { url: url.clone(), server_id: None, protocol: Protocol::OrdersV1, position: None }
    );
    let connected = tokio::time::Instant::now();
    let left = timeout(idle * 2, feed.next()).await.expect("left within two idle timeouts").unwrap().unwrap();
    assert_eq!(left, FeedItem::Disconnected { url, reason: DisconnectReason::Silent(idle) });
    assert!(connected.elapsed() >= idle - FeedConfig::new(["ws://x"]).hello_timeout, "not before the idle timeout");
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

// On a paused clock, so the real retry schedule (100 ms, 200 ms, …) is used and checked.
#[tokio::test(start_paused = true)]
async fn gives_up_after_max_retries_failed_attempts() {
    let config = FeedConfig { max_retries: Some(2), ..FeedConfig::new(["ws://127.0.0.1:1/ws"]) };
    let policy = config.retry;
    let mut feed = Feed::new(config, CancellationToken::new());
    let mut items = Vec::new();
    let started = tokio::time::Instant::now();
    let err = loop {
        match timeout(Duration::from_secs(60), feed.next()).await.expect("no hang") {
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
    // Two waits of the schedule: at least the minimum each, at most the first two steps with jitter.
    let waited = started.elapsed();
    assert!(waited >= policy.min_delay * 2 && waited <= policy.min_delay * 6, "waited {waited:?}");
    assert!(feed.next().await.unwrap().is_none(), "a feed that gave up stays ended");
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_feed_while_waiting_to_retry() {
    let retry = RetryPolicy {
        min_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(60),
        ..RetryPolicy::default()
    };
    let shutdown = CancellationToken::new();
    let mut feed = Feed::new(FeedConfig { retry, ..FeedConfig::new(["ws://127.0.0.1:1/ws"]) }, shutdown.clone());
    assert!(matches!(next(&mut feed).await, FeedItem::Disconnected { .. }));
    assert!(matches!(next(&mut feed).await, FeedItem::Retrying { .. }));
    // Virtual time: the next attempt is due 30 s or more from now, so nothing comes before.
    assert!(timeout(Duration::from_secs(29), feed.next()).await.is_err(), "waits out the retry delay");
    shutdown.cancel();
    let end = timeout(Duration::from_millis(1), feed.next()).await.expect("shutdown is prompt");
    assert!(matches!(end, Ok(None)));
}

fn at(epoch: &str, pos: u64) -> Position {
    Position { epoch: epoch.into(), pos }
}

fn event_at(epoch: &str, pos: u64) -> String {
    format!(
        r#"{{"type":"event","epoch":"{epoch}","pos":{pos},"id":{pos},"table":"orders","operation":"INSERT","order":{{"id":{pos}}}}}"#
    )
}

fn hello(server_id: &str, position: Option<Position>) -> String {
    let position =
        position.map(|p| format!(r#","position":{{"epoch":"{}","pos":{}}}"#, p.epoch, p.pos)).unwrap_or_default();
    format!(r#"{{"type":"hello","protocol":1,"server_id":"{server_id}","max_frame_bytes":65536{position}}}"#)
}

async fn send_all(ws: &mut ServerSocket, frames: &[String]) {
    for text in frames {
        ws.send(Message::text(text.as_str())).await.unwrap();
    }
}

/// The next frame the client sent, parsed.
async fn client_frame(ws: &mut ServerSocket) -> ClientFrame {
    loop {
        match timeout(Duration::from_secs(5), ws.next()).await.expect("a client frame in time") {
            Some(Ok(Message::Text(text))) => return ClientFrame::parse(text.as_str()).expect("a valid client frame"),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

async fn drain(mut ws: ServerSocket) {
    while ws.next().await.is_some() {}
}

/// Positions of the events among `items`, and the other items' kinds, in order.
fn summary(items: &[FeedItem]) -> Vec<String> {
    items
        .iter()
        .map(|item| match item {
            FeedItem::Event { frame, .. } => match (&frame.epoch, frame.pos) {
                (Some(epoch), Some(pos)) => format!("{epoch}:{pos}"),
                _ => format!("{}:{}", frame.table, frame.order["id"]),
            },
            FeedItem::Connected { .. } => "connected".into(),
            FeedItem::Snapshot { position, .. } => format!("snapshot@{}", position.as_ref().unwrap()),
            FeedItem::Resumed { from, .. } => format!("resumed@{from}"),
            FeedItem::Reset { then, .. } => format!("reset->{then:?}"),
            FeedItem::NotResumed { .. } => "not resumed".into(),
            FeedItem::Conflated { .. } => "conflated".into(),
            FeedItem::Disconnected { .. } => "disconnected".into(),
            FeedItem::Retrying { .. } => "retrying".into(),
        })
        .collect()
}

async fn take(feed: &mut Feed, n: usize) -> Vec<FeedItem> {
    let mut items = Vec::new();
    for _ in 0..n {
        items.push(next(feed).await);
    }
    items
}

#[tokio::test]
async fn after_a_disconnect_it_resumes_from_the_last_event_and_prints_nothing_twice() {
    let connections = Arc::new(AtomicUsize::new(0));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel();
    let url = fake_server(true, move |mut ws| {
        let n = connections.fetch_add(1, Ordering::SeqCst);
        let sent_tx = sent_tx.clone();
        async move {
            if n == 0 {
                send_all(&mut ws, &[hello("ws-a", Some(at("e", 0))), event_at("e", 1), event_at("e", 2)]).await;
                ws.close(Some(CloseFrame { code: CloseCode::Away, reason: "bye".into() })).await.unwrap();
                return drain(ws).await;
            }
            // A live event overtakes the replay: sent before the server read the subscribe.
            send_all(&mut ws, &[hello("ws-b", Some(at("e", 4))), event_at("e", 5)]).await;
            sent_tx.send(client_frame(&mut ws).await).unwrap();
            let replay = [2, 3, 4, 5].map(|pos| event_at("e", pos));
            send_all(&mut ws, &replay).await;
            let subscribed = r#"{"type":"subscribed","position":{"epoch":"e","pos":5}}"#.to_owned();
            send_all(&mut ws, &[subscribed, event_at("e", 6)]).await;
            drain(ws).await;
        }
    })
    .await;
    let mut feed = Feed::new(fast(&url), CancellationToken::new());
    let items = take(&mut feed, 11).await;
    assert_eq!(
        summary(&items),
        ["connected", "e:1", "e:2", "disconnected", "retrying", "connected", "e:3", "e:4", "e:5", "resumed@e:2", "e:6"]
    );
    assert!(matches!(&items[9], FeedItem::Resumed { server_id: Some(id), .. } if id == "ws-b"), "{:?}", items[9]);
    assert_eq!(
        sent_rx.recv().await.unwrap(),
        ClientFrame::Subscribe(protocol::frames::Subscribe {
            since: Some(at("e", 2)),
            snapshot: false,
            conflate: false,
            ..Default::default()
        })
    );
    assert_eq!(feed.position(), Some(&at("e", 6)));
    assert!(feed.seen_any());
}

#[tokio::test]
async fn a_reset_takes_a_fresh_snapshot_by_default() {
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel();
    let url = fake_server(true, move |mut ws| {
        let sent_tx = sent_tx.clone();
        async move {
            send_all(&mut ws, &[hello("ws-a", Some(at("e2", 3)))]).await;
            sent_tx.send(client_frame(&mut ws).await).unwrap();
            let reset = r#"{"type":"reset","reason":"history_lost","position":{"epoch":"e2","pos":3},"message":"Redis lost its data"}"#;
            send_all(&mut ws, &[reset.to_owned()]).await;
            sent_tx.send(client_frame(&mut ws).await).unwrap();
            let snapshot = r#"{"type":"snapshot","position":{"epoch":"e2","pos":3},"rows":[{"table":"orders","order":{"id":1}}]}"#;
            send_all(&mut ws, &[snapshot.to_owned(), event_at("e2", 3), event_at("e2", 4)]).await;
            drain(ws).await;
        }
    })
    .await;
    let config = FeedConfig { start: Start::Since(at("old", 9)), ..fast(&url) };
    let mut feed = Feed::new(config, CancellationToken::new());
    let items = take(&mut feed, 4).await;
    assert_eq!(summary(&items), ["connected", "reset->Snapshot", "snapshot@e2:3", "e2:4"]);
    let FeedItem::Reset { from, reason, message, .. } = &items[1] else { unreachable!() };
    assert_eq!(
        (from, *reason, message.as_str()),
        (&Some(at("old", 9)), ResetReason::HistoryLost, "Redis lost its data")
    );
    assert_eq!(
        sent_rx.recv().await.unwrap(),
        ClientFrame::Subscribe(protocol::frames::Subscribe {
            since: Some(at("old", 9)),
            snapshot: false,
            conflate: false,
            ..Default::default()
        })
    );
    assert_eq!(
        sent_rx.recv().await.unwrap(),
        ClientFrame::Subscribe(protocol::frames::Subscribe {
            since: None,
            snapshot: true,
            conflate: false,
            ..Default::default()
        })
    );
    assert_eq!(feed.position(), Some(&at("e2", 4)));
}

#[tokio::test]
async fn on_reset_exit_stops_the_feed_with_a_reset_error() {
    let url = fake_server(true, |mut ws| async move {
        send_all(&mut ws, &[hello("ws-a", None)]).await;
        client_frame(&mut ws).await;
        let reset =
            r#"{"type":"reset","reason":"beyond_retention","position":{"epoch":"e","pos":900},"message":"too old"}"#;
        send_all(&mut ws, &[reset.to_owned()]).await;
        drain(ws).await;
    })
    .await;
    let config = FeedConfig { start: Start::Since(at("e", 1)), on_reset: OnReset::Exit, ..fast(&url) };
    let mut feed = Feed::new(config, CancellationToken::new());
    assert!(matches!(next(&mut feed).await, FeedItem::Connected { .. }));
    let err = timeout(Duration::from_secs(5), feed.next()).await.expect("in time").unwrap_err();
    assert!(matches!(&err, FeedError::Reset { reason: ResetReason::BeyondRetention, .. }), "{err:?}");
    assert_eq!(err.to_string(), "cannot resume from e:1 (beyond_retention): too old");
    assert!(feed.next().await.unwrap().is_none());
}

#[tokio::test]
async fn a_server_without_resume_keeps_streaming_and_says_so() {
    let url = fake_server(true, |mut ws| async move {
        send_all(&mut ws, &[hello("old", None)]).await;
        client_frame(&mut ws).await;
        let error = r#"{"type":"error","code":"unknown_type","message":"unknown frame type \"subscribe\""}"#;
        send_all(&mut ws, &[event_at("e", 9), error.to_owned(), event_at("e", 10)]).await;
        drain(ws).await;
    })
    .await;
    let config = FeedConfig { start: Start::Since(at("e", 3)), ..fast(&url) };
    let mut feed = Feed::new(config, CancellationToken::new());
    let items = take(&mut feed, 4).await;
    assert_eq!(summary(&items), ["connected", "not resumed", "e:9", "e:10"]);
}

#[tokio::test]
async fn reconnects_rotate_through_the_urls() {
    let url = fake_server(true, |mut ws| async move {
        send_all(&mut ws, &[hello("ws-b", None)]).await;
        drain(ws).await;
    })
    .await;
    let dead = "ws://127.0.0.1:1/ws".to_owned();
    let mut feed = Feed::new(
        FeedConfig { retry: fast_retry(), ..FeedConfig::new([dead.clone(), url.clone()]) },
        CancellationToken::new(),
    );
    let items = take(&mut feed, 3).await;
    assert!(matches!(&items[0], FeedItem::Disconnected { url, .. } if *url == dead), "{items:?}");
    assert!(matches!(&items[1], FeedItem::Retrying { next_url: Some(next), .. } if *next == url), "{items:?}");
    assert!(matches!(&items[2], FeedItem::Connected { url: u, server_id: Some(_), .. } if *u == url), "{items:?}");
}

#[tokio::test]
async fn the_subscribe_keeps_the_view_and_a_refused_view_stops_the_feed() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let url = fake_server(true, move |mut ws| {
        let tx = tx.clone();
        async move {
            send_all(&mut ws, &[hello("ws-a", None)]).await;
            let _ = tx.send(client_frame(&mut ws).await);
            let refusal =
                r#"{"type":"error","code":"forbidden","message":"column amount is outside the token's select"}"#;
            send_all(&mut ws, &[refusal.to_owned()]).await;
            drain(ws).await;
        }
    })
    .await;
    let params = Params {
        filter: vec!["status=eq.pending".into()],
        select: Some("id,amount".into()),
        table: Some("orders".into()),
        consumer: Some("ops".into()),
        token: None,
    };
    let config = FeedConfig { start: Start::Snapshot, params, ..fast(&url) };
    let mut feed = Feed::new(config, CancellationToken::new());
    assert!(matches!(next(&mut feed).await, FeedItem::Connected { .. }));
    let err = timeout(Duration::from_secs(5), feed.next()).await.expect("in time").unwrap_err();
    assert!(matches!(&err, FeedError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("refused the subscription (forbidden): column amount"), "{err}");
    let ClientFrame::Subscribe(subscribe) = rx.recv().await.unwrap() else { panic!("a subscribe") };
    // It replaces the URL's default subscription, so it asks for the same view.
    assert_eq!(subscribe.filter, ["status=eq.pending"]);
    assert_eq!(
        (subscribe.select.as_deref(), subscribe.table.as_deref(), subscribe.consumer.as_deref()),
        (Some("id,amount"), Some("orders"), Some("ops"))
    );
    assert!(subscribe.snapshot);
}
