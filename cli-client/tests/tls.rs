//! `wss://`: through a TLS terminator with a private CA in front of a real ws-server, `watch`
//! works with `--ca-file` (or `SSL_CERT_FILE`) and, without it, fails with a line saying the
//! issuer is unknown and how to fix it; a certificate for another name, or an expired one,
//! says so.

mod support;

use std::{process::Stdio, time::Duration};

use e2e::{System, WAIT};
use serde_json::Value;
use support::tls::TlsFront;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    time::timeout,
};

async fn first_event(system: &System, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cli-client"));
    command.args(["watch", "--json"]).args(args).env_remove("SSL_CERT_FILE");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child =
        command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let connected = timeout(WAIT, stderr.next_line()).await.expect("status in time").unwrap().unwrap_or_default();
    assert!(connected.starts_with("connected to wss://"), "{connected}");
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Tia', 'Secure')").await;
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(WAIT, stdout.next_line()).await.expect("an event in time").unwrap().expect("stdout open");
    child.kill().await.unwrap();
    serde_json::from_str(&line).unwrap()
}

#[tokio::test]
async fn wss_works_with_the_private_ca_and_says_what_is_wrong_without_it() {
    let system = System::start(1).await;
    let front = TlsFront::start(system.ws[0].addr).await;
    let url = front.wss_url();
    let ca = front.ca_file.to_str().unwrap();

    let event = first_event(&system, &["--url", &url, "--ca-file", ca], &[]).await;
    assert_eq!(event["order"]["product_name"], "Secure");
    let event = first_event(&system, &["--url", &url], &[("SSL_CERT_FILE", ca)]).await;
    assert_eq!(event["order"]["customer_name"], "Tia");

    let started = std::time::Instant::now();
    let run = support::run(&["watch", "--url", &url], &[]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("unknown issuer") && run.stderr.contains("--ca-file"), "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(15), "a certificate error is not retried");

    // The certificate is for localhost, not 127.0.0.1.
    let by_ip = format!("wss://127.0.0.1:{}/ws", front.port);
    let run = support::run(&["watch", "--url", &by_ip, "--ca-file", ca], &[]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("name mismatch"), "{run:?}");

    // check: the replica's /readyz over https and the handshake over wss, with the same CA.
    // Nothing else of this system is given to check: dead ports, never the machine's own servers.
    let dead = testkit::free_port();
    let (pg, redis) = (format!("postgres://postgres@127.0.0.1:{dead}/postgres"), format!("redis://127.0.0.1:{dead}"));
    let env = [("DATABASE_URL", pg.as_str()), ("REDIS_URL", redis.as_str())];
    let publisher = format!("http://127.0.0.1:{dead}");
    let checked =
        support::run(&["check", "--json", "--url", &url, "--ca-file", ca, "--publisher-url", &publisher], &env).await;
    let doc: serde_json::Value = serde_json::from_str(checked.stdout.trim()).expect("JSON");
    let ws = doc["checks"].as_array().unwrap().iter().find(|c| c["name"] == "ws-server").expect("a ws-server check");
    assert_eq!(ws["status"], "ok", "{doc}");
    let checked = support::run(&["check", "--json", "--url", &url, "--publisher-url", &publisher], &env).await;
    let doc: serde_json::Value = serde_json::from_str(checked.stdout.trim()).expect("JSON");
    let ws = doc["checks"].as_array().unwrap().iter().find(|c| c["name"] == "ws-server").expect("a ws-server check");
    assert!(ws["problem"].as_str().unwrap().contains("unknown issuer"), "{doc}");

    let expired = TlsFront::start_expired(system.ws[0].addr).await;
    let ca = expired.ca_file.to_str().unwrap();
    let run = support::run(&["watch", "--url", &expired.wss_url(), "--ca-file", ca], &[]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("expired") && run.stderr.contains("renew"), "{run:?}");

    let missing = support::run(&["watch", "--url", &url, "--ca-file", "/nonexistent/ca.pem"], &[]).await;
    assert_eq!(missing.code, Some(2), "{missing:?}");
    assert!(missing.stderr.contains("/nonexistent/ca.pem"), "{missing:?}");
}

/// The shipped TLS server block (deploy/nginx-tls.conf) beside the shipped Debian drop-in, in a
/// private nginx in front of `system`'s replica: wss:// through it reaches the replica.
#[tokio::test]
async fn wss_through_the_shipped_nginx_tls_config_reaches_the_replicas() {
    let system = System::start(1).await;
    let ca = testkit::TestCa::new();
    let tls_port = testkit::free_port();
    let replica = system.ws[0].addr;
    let nginx = testkit::NginxServer::start("conf.d/orders-realtime.conf", |listen| {
        let site = shipped("nginx-debian.conf")
            .replace("listen 8000;", &format!("listen {listen};"))
            .replace("server 127.0.0.1:8080;", &format!("server {replica};"))
            .replace("    server 127.0.0.1:8081;\n", "");
        let tls = shipped("nginx-tls.conf")
            .replace("listen 8443 ssl;", &format!("listen 127.0.0.1:{tls_port} ssl;"))
            .replace("orders-realtime/tls/server.pem", &ca.cert_path().display().to_string())
            .replace("orders-realtime/tls/server.key", &ca.key_path().display().to_string());
        assert!(
            site.contains(&replica.to_string()) && tls.contains(&tls_port.to_string()),
            "the shipped files changed shape"
        );
        vec![
            ("conf.d/orders-realtime.conf".into(), format!("{site}\n{tls}")),
            ("orders-realtime/ws-proxy.conf".into(), shipped("ws-proxy.conf")),
        ]
    })
    .await;
    let url = format!("wss://127.0.0.1:{tls_port}/ws");
    let event = first_event(&system, &["--url", &url, "--ca-file", ca.ca_path().to_str().unwrap()], &[]).await;
    assert_eq!(event["order"]["product_name"], "Secure");
    drop(nginx);
}

fn shipped(file: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}
