//! What the shipped daemons print when nobody set `RUST_LOG`: lifecycle lines, and no line per
//! event or batch (README, "RUST_LOG").

use e2e::{WAIT, history::log_frames};
use testkit::{PgServer, RedisServer, free_port, http_get, wait_for, wait_until};

#[tokio::test]
async fn the_publisher_prints_no_line_per_batch_at_the_default_level() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let dir = tempfile::tempdir().expect("a log directory");
    let log = dir.path().join("publisher.log");
    let port = free_port();
    // No RUST_LOG: service_command starts from an empty environment.
    let env = [("DATABASE_URL", pg.url()), ("REDIS_URL", redis.url()), ("HEALTH_PORT", port.to_string())];
    let mut child = testkit::service_command(env!("CARGO_BIN_EXE_e2e-publisher"), &env)
        .stderr(std::fs::File::create(&log).expect("create the log file"))
        .spawn()
        .expect("start the publisher");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(WAIT, "the publisher is active", || async {
        http_get(addr, "/metrics").await.is_some_and(|(_, body)| body.contains("\npublisher_active 1"))
    })
    .await;

    // Three batches: one committed statement each, each appended before the next commits.
    for n in 1..=3 {
        pg.psql("postgres", &format!("INSERT INTO orders (customer_name, product_name) VALUES ('c{n}', 'p')")).await;
        wait_for(WAIT, &format!("{n} events in the log"), || async {
            (log_frames(&redis.url()).await.len() >= n).then_some(())
        })
        .await;
    }
    testkit::terminate(child.id().expect("running"));
    let status = tokio::time::timeout(WAIT, child.wait()).await.expect("exits in time").expect("exit status");
    assert!(status.success(), "{status}");

    let text = std::fs::read_to_string(&log).expect("read the log");
    assert!(text.contains("active publisher"), "lifecycle lines are printed:\n{text}");
    assert!(text.contains("publisher stopped"), "lifecycle lines are printed:\n{text}");
    assert!(!text.contains("appended"), "no line per batch at the default level:\n{text}");
    assert!(!text.contains("DEBUG"), "nothing at debug:\n{text}");
}
