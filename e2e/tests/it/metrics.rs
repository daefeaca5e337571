//! `/metrics` as Prometheus and promtool read it: both formats, promtool's lint, and metrics
//! that show real numbers (delivery latency, the outbox backlog).

use std::{net::SocketAddr, process::Stdio};

use e2e::{Service, System, WAIT, WsClient};
use testkit::wait_until;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
    time::timeout,
};

/// `GET /metrics` with an optional `Accept`; the response's `Content-Type` and body.
async fn scrape(addr: SocketAddr, accept: Option<&str>) -> (String, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let accept = accept.map_or_else(String::new, |a| format!("Accept: {a}\r\n"));
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = timeout(WAIT, exchange).await.expect("/metrics answers in time").expect("/metrics answers");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let content_type = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
        .map(|(_, v)| v.trim().to_owned())
        .expect("a Content-Type");
    (content_type, body.to_owned())
}

/// A sample's value as a float (the integer `Service::metric` cannot read `0.25`).
async fn sample(service: &Service, name: &str) -> f64 {
    let (_, body) = scrape(service.addr, None).await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {body}"))
}

/// What `promtool check metrics` says about `exposition`: `None` when it accepts it silently.
async fn promtool_complaints(exposition: &str) -> Option<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool runs (install it: sudo apt-get install -y prometheus, or bash scripts/install-deps.sh)");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin.write_all(exposition.as_bytes()).await.expect("promtool reads its input");
    drop(stdin);
    let output = timeout(WAIT, child.wait_with_output()).await.expect("promtool finishes").expect("promtool ran");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (!output.status.success() || !said.trim().is_empty()).then(|| format!("{}: {said}", output.status))
}

#[tokio::test]
async fn every_service_serves_metrics_that_promtool_accepts_and_prometheus_can_negotiate() {
    let system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    for name in ["One", "Two", "Three"] {
        system.sql(&format!("INSERT INTO orders (customer_name, product_name) VALUES ('{name}', 'Lamp')")).await;
    }
    client.events(3).await;
    // The sample is taken once the send returns, which can be after the client has the frame.
    let ws = &system.ws[0];
    wait_until(WAIT, "three deliveries timed", || async { ws.metric("ws_delivery_latency_seconds_count").await == 3 })
        .await;
    let latency_sum = sample(ws, "ws_delivery_latency_seconds_sum").await;
    assert!(latency_sum > 0.0 && latency_sum < WAIT.as_secs_f64() * 3.0, "sum of three latencies: {latency_sum}");
    let publisher = &system.publisher;
    assert_eq!(publisher.metric("publisher_append_latency_seconds_count").await, 3, "three appends timed");
    let append_sum = sample(publisher, "publisher_append_latency_seconds_sum").await;
    assert!(append_sum > 0.0 && append_sum <= latency_sum, "appended before delivered: {append_sum} vs {latency_sum}");

    for (service, prefix) in [(&system.publisher, "publisher"), (ws, "ws")] {
        let (content_type, text) = scrape(service.addr, None).await;
        assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
        assert!(text.contains(&format!("{prefix}_build_info{{version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{text}");
        assert_eq!(promtool_complaints(&text).await, None, "promtool on {prefix}'s /metrics:\n{text}");

        // What Prometheus asks for by default.
        let accept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let (content_type, open) = scrape(service.addr, Some(accept)).await;
        assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains(&format!("# TYPE {prefix}_build info\n")), "{open}");
    }
}

#[tokio::test]
async fn outbox_backlog_counts_changes_held_while_redis_is_down_and_returns_to_zero() {
    let mut system = System::start(1).await;
    system.redis.kill().await;
    wait_until(WAIT, "the publisher notices redis is down", || async { system.publisher.readyz().await == 503 }).await;
    for n in 1..=4 {
        system.sql(&format!("INSERT INTO orders (customer_name, product_name) VALUES ('Held {n}', 'Lamp')")).await;
    }
    let publisher = &system.publisher;
    wait_until(WAIT, "backlog of 4", || async { publisher.metric("publisher_outbox_backlog").await == 4 }).await;
    wait_until(WAIT, "the oldest held change has an age", || async {
        sample(publisher, "publisher_outbox_backlog_age_seconds").await > 0.0
    })
    .await;

    system.redis.restart().await;
    let publisher = &system.publisher;
    wait_until(WAIT, "backlog drained", || async { publisher.metric("publisher_outbox_backlog").await == 0 }).await;
    assert_eq!(sample(publisher, "publisher_outbox_backlog_age_seconds").await, 0.0);
}
