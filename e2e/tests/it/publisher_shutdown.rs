//! The publisher's shutdown is bounded by `PUBLISHER_SHUTDOWN_GRACE`, even when a dependency
//! holds the drain in flight, and cutting that drain short loses nothing.

use std::time::Duration;

use e2e::{WAIT, history::log_frames, publisher_config, spawn_publisher};
use sqlx::{Connection, PgConnection};
use testkit::{PgServer, RedisServer, wait_for, wait_until};

#[tokio::test]
async fn publisher_shutdown_finishes_within_its_grace_while_postgres_holds_the_drain() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let grace = Duration::from_millis(500);
    let mut config = publisher_config(&pg.url(), &redis.url());
    config.shutdown_grace = grace;
    let publisher = spawn_publisher(config.clone()).await;
    wait_until(WAIT, "the publisher is active", || async { publisher.metric("publisher_active").await == 1 }).await;
    // A first change through: the session's claim (and the new history's seeding, which read
    // the outbox with other queries) is done before the lock is taken, so the query that waits
    // on it is the drain's.
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('before', 'grace')").await;
    wait_until(WAIT, "the first change in the log", || async { log_frames(&redis.url()).await.len() == 1 }).await;
    // And marked (a mark waits 10 ms for others to share its commit): else the statement that
    // waits on the lock below is the mark, not the drain.
    wait_until(WAIT, "the first change marked", || async {
        pg.psql("postgres", "SELECT count(*) FROM realtime_events WHERE published_at IS NULL").await == "0"
    })
    .await;

    // Hold the outbox: the next drain's query waits for this lock (up to its 30 s query
    // timeout), which the publisher cannot cut short from inside.
    let mut locker = PgConnection::connect(&pg.url()).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut locker).await.expect("begin");
    sqlx::query("LOCK TABLE realtime_events IN ACCESS EXCLUSIVE MODE").execute(&mut locker).await.expect("lock");
    // The test configuration's keepalive (1 s) wakes a drain without any notification.
    // The drain's own query: the backlog gauges' reader waits on the same lock, but it does not
    // hold shutdown up.
    wait_until(WAIT, "a drain waiting on the outbox lock", || async {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'SELECT id, payload%'",
        )
        .await
            == "1"
    })
    .await;

    let took = publisher.stop().await;
    assert!(took >= grace, "the drain in flight got its grace: stopped after {took:?}");
    assert!(took < grace + Duration::from_secs(2), "stopped {took:?} after shutdown; the grace is {grace:?}");

    // Nothing was lost by cutting the drain short: once the lock goes, the next publisher
    // takes over (the old session's advisory lock dies with its backend) and publishes.
    sqlx::query("ROLLBACK").execute(&mut locker).await.expect("rollback");
    let next = spawn_publisher(config).await;
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('after', 'grace')").await;
    let frames = wait_for(WAIT, "the change in the log", || async {
        let frames = log_frames(&redis.url()).await;
        (frames.len() > 1).then_some(frames)
    })
    .await;
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0]["order"]["customer_name"], "before");
    assert_eq!(frames[1]["order"]["customer_name"], "after");
    next.stop().await;
}
