//! The shipped load-balancer configuration, run: a private nginx built from
//! `deploy/nginx-debian.conf` and `deploy/ws-proxy.conf` (only the replica addresses and the
//! listen address substituted) in front of two ws-server replicas (or, for event streams until
//! ws-server serves `/events`, a stand-in upstream). If the shipped files stop parsing on
//! Debian's nginx, stop passing the WebSocket upgrade or `?since=`/`Last-Event-ID`, or start
//! buffering event streams, these tests fail.

use std::{net::SocketAddr, path::Path, time::Duration};

use e2e::{System, WAIT, WsClient};
use serde_json::Value;
use testkit::NginxServer;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
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

async fn nginx_in_front_of(system: &System) -> NginxServer {
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

/// A minimal server-sent-events reader: `GET path` with optional `Last-Event-ID`, then one
/// `(id, data)` per event as the lines arrive. It asks with HTTP/1.0 so the body comes without
/// chunked encoding (nginx then ends it by closing), and the lines are the events' own.
struct Sse {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
}

impl Sse {
    async fn open(addr: SocketAddr, path: &str, last_event_id: Option<&str>) -> Sse {
        let mut stream = timeout(WAIT, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{resume}\r\n");
        stream.write_all(request.as_bytes()).await.expect("send request");
        let mut lines = BufReader::new(stream).lines();
        let status = Self::line(&mut lines).await;
        assert!(status.starts_with("HTTP/1.1 200"), "SSE answered {status:?}");
        let mut content_type = String::new();
        loop {
            let header = Self::line(&mut lines).await;
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-type")
            {
                content_type = value.trim().to_owned();
            }
        }
        assert!(content_type.starts_with("text/event-stream"), "content type {content_type:?}");
        Sse { lines }
    }

    async fn line(lines: &mut tokio::io::Lines<BufReader<TcpStream>>) -> String {
        timeout(WAIT, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no SSE line within {WAIT:?} (buffered by the proxy?)"))
            .expect("read")
            .expect("stream open")
    }

    /// The next event that carries data, as `(id, data)`; comments (keep-alives) are skipped.
    async fn next_event(&mut self) -> (String, Value) {
        let (mut id, mut data) = (String::new(), String::new());
        loop {
            let line = Self::line(&mut self.lines).await;
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                return (id, serde_json::from_str(&data).expect("SSE data is JSON"));
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs GET /events (SSE) on ws-server, which is not on this branch yet; run with --ignored once it lands"]
async fn sse_through_the_shipped_nginx_config_streams_unbuffered_and_resumes_with_last_event_id() {
    let system = System::start(2).await;
    let nginx = nginx_in_front_of(&system).await;
    let mut a = Sse::open(nginx.addr(), "/events", None).await;
    let mut b = Sse::open(nginx.addr(), "/events", None).await;

    // Arriving within the wait at all proves nginx does not buffer the stream: one small event
    // never fills a proxy buffer.
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Via', 'sse')").await;
    let (id, first) = a.next_event().await;
    assert_eq!(first["order"]["customer_name"], "Via");
    assert_eq!(id, position(&first), "the SSE id is EPOCH:POS");
    assert_eq!(b.next_event().await.1["id"], first["id"]);

    drop(b);
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Missed', 'sse')").await;
    let (_, live) = a.next_event().await;
    let mut resumed = Sse::open(nginx.addr(), "/events", Some(&id)).await;
    let (_, replayed) = resumed.next_event().await;
    assert_eq!(replayed["id"], live["id"], "Last-Event-ID through nginx replays the missed event");
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

    let mut events = Sse::open(nginx.addr(), "/events", Some("e:5")).await;
    let (id, first) = events.next_event().await;
    assert_eq!((id.as_str(), first["n"].as_i64()), ("e:6", Some(1)), "the first event before the stream ends");
    next_tx.send(()).unwrap();
    let (id, second) = events.next_event().await;
    assert_eq!((id.as_str(), second["n"].as_i64()), ("e:7", Some(2)));

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
