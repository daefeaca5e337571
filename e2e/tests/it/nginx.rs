//! The shipped load-balancer configuration, run: a private nginx built from
//! `deploy/nginx-debian.conf` and `deploy/ws-proxy.conf` (only the replica addresses and the
//! listen address substituted) in front of two ws-server replicas (in-process, or real
//! processes where one is SIGKILLed), and in front of a stand-in upstream that writes an event
//! stream one event at a time. If the shipped files stop parsing on Debian's nginx, stop
//! passing the WebSocket upgrade or `?since=`/`Last-Event-ID`, or start buffering event
//! streams, these tests fail.

use std::{net::SocketAddr, path::Path, time::Duration};

use e2e::{Process, SseClient, SseItem, SseRequest, System, WAIT, WsClient};
use serde_json::Value;
use testkit::NginxServer;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    time::timeout,
};

/// Where the site file goes, as on Debian (`/etc/nginx/conf.d/`); its `include` of the routes
/// resolves against nginx's prefix, as `/etc/nginx/` on Debian.
const SITE: &str = "conf.d/orders-realtime.conf";

fn shipped(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The shipped Debian drop-in listening on `listen` with `replicas` as its upstream servers,
/// and the shipped routes it includes.
fn debian_config(listen: SocketAddr, replicas: &[SocketAddr]) -> Vec<(String, String)> {
    let mut site = String::new();
    let (mut servers, mut listens) = (0, 0);
    for line in shipped("nginx-debian.conf").lines() {
        let directive = line.trim();
        if directive.starts_with("server 127.0.0.1:") {
            // The first replica line is replaced by ours, the others dropped.
            if servers == 0 {
                site.extend(replicas.iter().map(|r| format!("    server {r};\n")));
            }
            servers += 1;
        } else if directive == "listen 8000;" {
            site.push_str(&format!("    listen {listen};\n"));
            listens += 1;
        } else {
            site.push_str(line);
            site.push('\n');
        }
    }
    // Substituting nothing would test a config that ships nowhere: fail instead.
    assert!(servers > 0 && listens == 1, "deploy/nginx-debian.conf changed shape; update the substitutions here");
    vec![(SITE.into(), site), ("orders-realtime/ws-proxy.conf".into(), shipped("ws-proxy.conf"))]
}

pub(crate) async fn nginx_in_front_of(system: &System) -> NginxServer {
    let replicas: Vec<SocketAddr> = system.ws.iter().map(|ws| ws.addr).collect();
    NginxServer::start(SITE, |listen| debian_config(listen, &replicas)).await
}

/// `"EPOCH:POS"` of an event frame.
fn position(event: &Value) -> String {
    format!("{}:{}", event["epoch"].as_str().expect("epoch"), event["pos"])
}

#[tokio::test]
async fn websocket_through_the_shipped_nginx_config_reaches_both_replicas_resumes_and_fails_over() {
    let mut system = System::start(2).await;
    let nginx = nginx_in_front_of(&system).await;
    let url = format!("ws://{}/ws", nginx.addr());

    // least_conn: with the first connection open, the second goes to the other replica.
    let (mut a, hello_a) = WsClient::connect_protocol(&url).await;
    let (mut b, hello_b) = WsClient::connect_protocol(&url).await;
    assert_ne!(hello_a["server_id"], hello_b["server_id"], "nginx spread the clients: {hello_a} {hello_b}");

    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Via', 'nginx')").await;
    let first = a.events(1).await.remove(0);
    assert_eq!(first["order"]["customer_name"], "Via");
    assert_eq!(b.events(1).await[0]["id"], first["id"], "the same event through both replicas");

    // A client that went away resumes through nginx: `?since=` and `Last-Event-ID` both arrive.
    drop(b);
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Missed', 'x')").await;
    let live = a.events(1).await.remove(0);
    let mut by_query = WsClient::connect(&format!("{url}?since={}", position(&first))).await;
    assert_eq!(by_query.next_json().await["id"], live["id"], "?since= replays the missed event");
    let mut by_header = WsClient::connect_with_last_event_id(&url, &position(&first)).await;
    assert_eq!(by_header.next_json().await["id"], live["id"], "Last-Event-ID replays the missed event");

    // A replica shuts down: its clients are told to go away, and new connections through nginx
    // land on the one left (proxy_next_upstream skips the refused replica).
    let gone = system.ws.remove(0);
    gone.stop().await;
    // Replicas without WS_SERVER_ID or HOSTNAME call themselves ws-<port>.
    let left_id = format!("ws-{}", system.ws[0].addr.port());
    for _ in 0..3 {
        let (_client, hello) = WsClient::connect_protocol(&url).await;
        assert_eq!(hello["server_id"], left_id, "a new connection lands on the replica that is still up");
    }
    let (mut after, _) = WsClient::connect_protocol(&url).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('After', 'failover')").await;
    assert_eq!(after.events(1).await[0]["order"]["customer_name"], "After");
    drop(nginx);
}

/// A ws-server replica as a real process named `name` (its hello's `server_id`), so it can be
/// SIGKILLed.
pub(crate) async fn replica(name: &str, system: &System, dir: &Path) -> Process {
    let port = testkit::free_port();
    let env = [
        ("REDIS_URL", system.redis.url()),
        ("PORT", port.to_string()),
        ("WS_BIND_ADDR", "127.0.0.1".to_owned()),
        ("WS_SERVER_ID", name.to_owned()),
        ("RETRY_MIN_DELAY", "50ms".to_owned()),
        ("RETRY_MAX_DELAY", "500ms".to_owned()),
    ];
    let process = Process::start(env!("CARGO_BIN_EXE_e2e-ws-server"), name, port, &env, dir);
    process.wait_ready().await;
    process
}

/// An event stream through nginx: 200, `text/event-stream`, the retry hint, then hello; the
/// stream and hello's data.
async fn sse_via(nginx: &NginxServer, last_event_id: Option<&str>) -> (SseClient, Value) {
    let mut request = SseRequest::new(nginx.addr(), "/events");
    if let Some(id) = last_event_id {
        request = request.last_event_id(id);
    }
    let mut sse = request.send().await;
    assert_eq!(sse.status, 200, "{}", sse.status_line);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.next_event().await.retry, Some(1000), "the retry hint first");
    let hello = sse.next_event().await;
    assert!(hello.is("hello"), "{hello}");
    (sse, hello.json())
}

async fn insert(system: &System, name: &str) {
    system.sql(&format!("INSERT INTO orders (customer_name, product_name) VALUES ('{name}', 'sse')")).await;
}

#[tokio::test]
async fn sse_through_the_shipped_nginx_config_streams_unbuffered_and_resumes_after_a_replica_is_killed() {
    let system = System::start(0).await;
    let dir = tempfile::tempdir().expect("log dir");
    let mut replicas = [replica("ws-a", &system, dir.path()).await, replica("ws-b", &system, dir.path()).await];
    let addrs: Vec<SocketAddr> = replicas.iter().map(Process::addr).collect();
    let nginx = NginxServer::start(SITE, |listen| debian_config(listen, &addrs)).await;

    // least_conn: with the first stream open, the second goes to the other replica.
    let (mut a, hello_a) = sse_via(&nginx, None).await;
    let (mut b, hello_b) = sse_via(&nginx, None).await;
    assert_ne!(hello_a["server_id"], hello_b["server_id"], "nginx spread the streams: {hello_a} {hello_b}");

    // Each event arrives before the next is even committed: one small event never fills a
    // proxy buffer, so arriving within the wait at all means nginx does not buffer the stream.
    let mut last_a = String::new();
    for name in ["v1", "v2"] {
        insert(&system, name).await;
        let change = a.next_change().await;
        assert_eq!(change.json()["order"]["customer_name"], name);
        assert_eq!(change.id.as_deref(), Some(position(&change.json()).as_str()), "the SSE id is EPOCH:POS");
        assert_eq!(b.next_change().await.json(), change.json(), "the same event through both replicas");
        last_a = change.id.unwrap();
    }

    // A's replica is SIGKILLed: its stream ends (no close event: nothing could send one).
    let killed = replicas.iter().position(|r| hello_a["server_id"] == r.name.as_str()).expect("a's replica");
    replicas[killed].kill().await;
    let rest = a.read_to_end(WAIT).await;
    assert!(!rest.iter().any(|i| matches!(i, SseItem::Event(e) if e.is_change())), "nothing after the kill: {rest:?}");
    insert(&system, "m1").await; // while A's client is away
    insert(&system, "m2").await;
    let seen_by_b = b.changes(2).await;

    // The client reconnects through nginx with its Last-Event-ID: nginx skips the dead replica,
    // and the survivor replays exactly what was missed, then goes live.
    let (mut resumed, hello) = sse_via(&nginx, Some(&last_a)).await;
    assert_eq!(hello["server_id"], replicas[1 - killed].name.as_str(), "the replica still up");
    let events = resumed.events_until("subscribed").await;
    let missed: Vec<Value> = events.iter().filter(|e| e.is_change()).map(|e| e.json()).collect();
    assert_eq!(missed.len() + 1, events.len(), "only changes before subscribed: {events:?}");
    assert_eq!(missed, seen_by_b, "exactly the missed events, as the other replica sent them");
    let first = last_a.rsplit_once(':').unwrap().1.parse::<u64>().unwrap();
    let positions: Vec<u64> = missed.iter().map(|e| e["pos"].as_u64().unwrap()).collect();
    assert_eq!(positions, [first + 1, first + 2], "consecutive after the Last-Event-ID");
    insert(&system, "l1").await;
    let live = resumed.next_change().await.json();
    assert_eq!((live["order"]["customer_name"].as_str(), live["pos"].as_u64()), (Some("l1"), Some(first + 3)));
    assert_eq!(b.next_change().await.json(), live);
    drop(nginx);
}

#[tokio::test]
async fn the_shipped_nginx_config_streams_events_as_written_and_passes_last_event_id() {
    // A stand-in upstream that writes one event, then the next only once the client has the
    // first: a proxy that buffered the stream would hold the first back and the wait fails.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (request_tx, request_rx) = tokio::sync::oneshot::channel::<String>();
    let (next_tx, next_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let (stream, _) = upstream.accept().await.unwrap();
        let mut stream = BufReader::new(stream);
        let mut request = String::new();
        while !request.ends_with("\r\n\r\n") {
            assert_ne!(stream.read_line(&mut request).await.unwrap(), 0, "request ended early");
        }
        request_tx.send(request).unwrap();
        let stream = stream.get_mut();
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"id: e:6\ndata: {\"n\":1}\n\n").await.unwrap();
        next_rx.await.unwrap();
        stream.write_all(b"id: e:7\ndata: {\"n\":2}\n\n").await.unwrap();
        // Held open like a live stream until the test ends.
        std::future::pending::<()>().await;
    });
    let nginx = NginxServer::start(SITE, |listen| debian_config(listen, &[upstream_addr])).await;

    // HTTP/1.0 here (nginx sends the body unchunked, ending it by closing), HTTP/1.1 (chunked)
    // in the test above: both paths pass events through as written.
    let mut events = SseRequest::new(nginx.addr(), "/events").last_event_id("e:5").http10().send().await;
    assert_eq!(events.status, 200, "{}", events.status_line);
    assert!(!events.is_chunked());
    let first = events.next_change().await;
    assert_eq!((first.id.as_deref(), first.json()["n"].as_i64()), (Some("e:6"), Some(1)), "before the next is written");
    next_tx.send(()).unwrap();
    let second = events.next_change().await;
    assert_eq!((second.id.as_deref(), second.json()["n"].as_i64()), (Some("e:7"), Some(2)));

    let request = timeout(WAIT, request_rx).await.expect("upstream saw the request").unwrap().to_ascii_lowercase();
    assert!(request.starts_with("get /events http/1.1\r\n"), "{request}");
    assert!(request.contains("\r\nlast-event-id: e:5\r\n"), "Last-Event-ID reaches the replica: {request}");
    assert!(!request.contains("connection: upgrade"), "no upgrade asked for a plain request: {request}");
    server.abort();
    drop(nginx);
}

#[tokio::test]
async fn the_shipped_nginx_config_answers_its_own_health_check_without_replicas() {
    // No replica at these addresses: /lb-healthz is nginx's own, and a proxied path fails over
    // to a clear 502 instead of hanging.
    let dead: Vec<SocketAddr> = (0..2).map(|_| SocketAddr::from(([127, 0, 0, 1], testkit::free_port()))).collect();
    let nginx = NginxServer::start(SITE, |listen| debian_config(listen, &dead)).await;
    let (status, body) = e2e::http_get(nginx.addr(), "/lb-healthz").await.expect("nginx answers");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = timeout(Duration::from_secs(10), e2e::http_get(nginx.addr(), "/readyz"))
        .await
        .expect("no hang")
        .expect("nginx answers");
    assert_eq!(status, 502);
}

#[tokio::test]
async fn the_dashboard_and_its_assets_pass_through_the_shipped_nginx_config() {
    let system = System::start(2).await;
    let nginx = nginx_in_front_of(&system).await;
    // Types, caching headers, ETags and 304s, the CSP and `Vary: Accept` all survive the proxy;
    // a tool's GET of `/` still gets the text it got before.
    crate::dashboard::check_http_surface(nginx.addr()).await;
    drop(nginx);
}
