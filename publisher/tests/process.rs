//! The shipped `publisher` executable: configuration errors, waiting for dependencies, and
//! SIGTERM.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use testkit::{PgServer, RedisServer, free_port, http_get, terminate, wait_until};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(20);

fn publisher(vars: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_publisher"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn readyz(port: u16) -> u16 {
    http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/readyz").await.map_or(0, |(s, _)| s)
}

async fn exit_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    tokio::time::timeout(limit, child.wait()).await.expect("exited in time").expect("wait")
}

#[tokio::test]
async fn bad_configuration_stops_at_start_naming_each_variable() {
    let output = publisher(&[
        ("DATABASE_URL", "mysql://root:hunter2@db/app".into()),
        ("HEALTH_PORT", "ninety".into()),
        ("RETRY_MAX_DELAY", "30".into()),
    ])
    .output()
    .await
    .expect("runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in
        ["invalid configuration", "DATABASE_URL", "postgres://", "HEALTH_PORT=\"ninety\"", "RETRY_MAX_DELAY=\"30\""]
    {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(!stderr.contains("hunter2"), "password echoed: {stderr}");
}

#[tokio::test]
async fn waits_for_dependencies_that_are_down_at_start_then_stops_on_sigterm() {
    let (mut pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    pg.stop().await;
    let port = free_port();
    let mut child = publisher(&[
        ("DATABASE_URL", pg.url()),
        ("REDIS_URL", redis.url()),
        ("HEALTH_PORT", port.to_string()),
        ("RETRY_MAX_DELAY", "1s".into()),
    ])
    .spawn()
    .expect("starts");

    wait_until(WAIT, "healthz while postgres is down", || async {
        http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/healthz").await.is_some()
    })
    .await;
    assert_eq!(readyz(port).await, 503, "not ready while postgres is down");
    pg.restart().await;
    wait_until(WAIT, "ready once postgres is back", || async { readyz(port).await == 200 }).await;
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM _sqlx_migrations").await, "3", "migrations applied");

    let started = Instant::now();
    terminate(child.id().expect("running"));
    let status = exit_within(&mut child, Duration::from_secs(5)).await;
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(3), "stopped in {:?}", started.elapsed());
}
