//! The shipped `cli-client` executable against a running system.

use std::{process::Stdio, time::Duration};

use e2e::{System, WAIT};
use serde_json::Value;
use testkit::terminate;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{ChildStdout, Command},
};

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line()).await.expect("a line in time").expect("read").expect("stdout open")
}

#[tokio::test]
async fn watch_json_prints_one_event_per_line_and_exits_0_on_sigterm() {
    let system = System::start(1).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_cli-client"))
        .args(["watch", "--json", "--url", &system.ws[0].ws_url()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let connected = tokio::time::timeout(WAIT, stderr.next_line()).await.expect("status in time").unwrap().unwrap();
    assert!(connected.starts_with("connected to"), "{connected}");

    system
        .sql(
            "INSERT INTO orders (customer_name, product_name, status) VALUES ('John Doe', 'Premium Widget', 'pending')",
        )
        .await;
    system.sql("UPDATE orders SET status = 'completed' WHERE id = 1").await;
    system.sql("DELETE FROM orders WHERE id = 1").await;

    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ops = Vec::new();
    for _ in 0..3 {
        let line = next_line(&mut stdout).await;
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert_eq!(event["order"]["id"], 1);
        ops.push(event["operation"].as_str().unwrap().to_owned());
    }
    assert_eq!(ops, ["INSERT", "UPDATE", "DELETE"]);

    terminate(child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await.expect("exits in time").unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn watch_reconnects_after_the_replica_restarts() {
    let system = System::start(0).await;
    // The replica's listening socket, and a second handle on it: the replacement replica
    // serves the same port without it ever being released (no bind race with anything else).
    let socket = std::net::TcpListener::bind(("127.0.0.1", testkit::free_port())).expect("bind");
    socket.set_nonblocking(true).expect("nonblocking");
    let spare = socket.try_clone().expect("clone the listening socket");
    let listener = tokio::net::TcpListener::from_std(socket).expect("tokio listener");
    let old = e2e::spawn_ws_on(e2e::ws_config(&system.redis.url()), listener);
    old.wait_ready().await;
    let url = old.ws_url();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cli-client"))
        .args(["watch", "--json", "--url", &url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();

    // Replace the replica with a new one on the same port.
    old.stop().await;
    let listener = tokio::net::TcpListener::from_std(spare).expect("tokio listener");
    let replica = e2e::spawn_ws_on(e2e::ws_config(&system.redis.url()), listener);

    // The client reconnects with backoff; keep writing until an event shows up.
    let line = tokio::time::timeout(WAIT, async {
        loop {
            system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Again', 'Reconnected')").await;
            if let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_millis(300), stdout.next_line()).await {
                return line;
            }
        }
    })
    .await
    .expect("an event after reconnecting");
    assert!(line.contains("Reconnected"), "{line}");
    replica.stop().await;
    child.kill().await.unwrap();
}

#[tokio::test]
async fn gives_up_with_exit_3_after_max_retries() {
    let port = testkit::free_port();
    let output = Command::new(env!("CARGO_BIN_EXE_cli-client"))
        .args(["watch", "--max-retries", "1", "--url", &format!("ws://127.0.0.1:{port}/ws")])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("gave up"));
}

#[tokio::test]
async fn check_reports_each_dependency_with_a_fix() {
    let system = System::start(1).await;
    let publisher = format!("http://{}", system.publisher.addr);
    let ok = Command::new(env!("CARGO_BIN_EXE_cli-client"))
        .args(["check", "--url", &system.ws[0].ws_url(), "--publisher-url", &publisher])
        .env("DATABASE_URL", system.pg.url())
        .env("REDIS_URL", system.redis.url())
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}");
    assert_eq!(out.lines().filter(|l| l.starts_with("ok")).count(), 8, "{out}");

    let dead = testkit::free_port();
    let bad = Command::new(env!("CARGO_BIN_EXE_cli-client"))
        .args(["check", "--url", &format!("ws://127.0.0.1:{dead}/ws"), "--publisher-url", &publisher])
        .env("DATABASE_URL", system.pg.url())
        .env("REDIS_URL", format!("redis://127.0.0.1:{dead}"))
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{out}");
    let failures: Vec<_> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(failures.len(), 2, "{out}");
    assert!(failures.iter().all(|l| l.contains("fix:")), "{out}");
}
