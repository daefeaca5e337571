//! The shipped `orders-api` executable: configuration errors, serving, and SIGTERM.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use testkit::{PgServer, free_port, http_get, terminate, wait_until};

fn api(vars: &[(&str, String)]) -> tokio::process::Command {
    testkit::service_command(env!("CARGO_BIN_EXE_orders-api"), vars)
}

#[tokio::test]
async fn bad_configuration_stops_at_start_naming_each_variable() {
    let output = api(&[
        ("DATABASE_URL", "mysql://root:hunter2@db/app".into()),
        ("API_PORT", "ninety".into()),
        ("API_MAX_BODY_BYTES", "lots".into()),
    ])
    .output()
    .await
    .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in ["invalid configuration", "DATABASE_URL", "API_PORT=\"ninety\"", "API_MAX_BODY_BYTES=\"lots\""] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(!stderr.contains("hunter2"), "password echoed: {stderr}");
}

#[tokio::test]
async fn serves_without_migrating_and_stops_on_sigterm() {
    let pg = PgServer::start().await;
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut child =
        api(&[("DATABASE_URL", pg.url()), ("API_PORT", port.to_string()), ("API_BIND_ADDR", "127.0.0.1".into())])
            .spawn()
            .expect("starts");

    wait_until(Duration::from_secs(20), "postgres checked", || async {
        http_get(addr, "/readyz").await.is_some_and(|(_, body)| body.contains(r#""postgres":"up""#))
    })
    .await;
    let (status, body) = http_get(addr, "/readyz").await.expect("answers");
    assert_eq!(status, 503, "no orders table: {body}");
    assert_eq!(pg.psql("postgres", "SELECT to_regclass('orders') IS NULL").await, "t", "the API never migrates");

    let started = Instant::now();
    terminate(child.id().expect("running"));
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exited").expect("wait");
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(3), "stopped in {:?}", started.elapsed());
}
