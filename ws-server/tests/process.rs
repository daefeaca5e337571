//! The shipped `ws-server` executable: configuration errors and SIGTERM with clients connected.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use testkit::{RedisServer, free_port, http_get, terminate, wait_until};
use tokio::process::Command;
use tokio_tungstenite::{connect_async, tungstenite::Message};

const WAIT: Duration = Duration::from_secs(20);

fn ws_server(vars: &[(&str, String)]) -> Command {
    testkit::service_command(env!("CARGO_BIN_EXE_ws-server"), vars)
}

#[tokio::test]
async fn bad_configuration_stops_at_start_naming_each_variable() {
    let output =
        ws_server(&[("PORT", "eighty".into()), ("WS_SEND_TIMEOUT", "0".into()), ("REDIS_URL", "localhost".into())])
            .output()
            .await
            .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in
        ["PORT=\"eighty\"", "WS_SEND_TIMEOUT", "REDIS_URL=\"localhost\": expected a URL starting with redis://"]
    {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_promptly() {
    let redis = RedisServer::start().await;
    let port = free_port();
    let mut child =
        ws_server(&[("REDIS_URL", redis.url()), ("PORT", port.to_string()), ("WS_BIND_ADDR", "127.0.0.1".into())])
            .spawn()
            .expect("starts");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(WAIT, "ws-server ready", || async { http_get(addr, "/readyz").await.map(|r| r.0) == Some(200) }).await;

    let mut clients = Vec::new();
    for path in ["/ws", "/"] {
        let (ws, _) = connect_async(format!("ws://{addr}{path}")).await.expect("connects");
        clients.push(ws);
    }

    let started = Instant::now();
    terminate(child.id().expect("running"));
    for ws in &mut clients {
        let close = tokio::time::timeout(WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                    Some(Ok(_)) => continue,
                    other => panic!("connection ended without a close frame: {other:?}"),
                }
            }
        })
        .await
        .expect("close frame in time");
        assert_eq!(close, Some(1001));
    }
    let status =
        tokio::time::timeout(Duration::from_secs(5), child.wait()).await.expect("exits in time").expect("wait");
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(3), "stopped in {:?}", started.elapsed());
}
