//! Nothing committed is lost: the outbox catch-up, late commits, a Redis that loses its data,
//! and retention. These read the replay log in Redis directly; no ws-server is involved.

use std::{collections::HashSet, time::Duration};

use e2e::{
    WAIT,
    history::{log_frames, state, table},
    publisher_config, spawn_publisher,
};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use testkit::{PgServer, RedisServer, wait_for, wait_until};

/// Waits until the log holds `n` frames; returns them.
async fn wait_for_log(redis: &RedisServer, n: usize) -> Vec<Value> {
    wait_for(WAIT, &format!("{n} events in the log"), || async {
        let frames = log_frames(&redis.url()).await;
        (frames.len() >= n).then_some(frames)
    })
    .await
}

fn event_ids(frames: &[Value]) -> Vec<i64> {
    frames.iter().map(|f| f["id"].as_i64().expect("event id")).collect()
}

fn assert_positions_consecutive(frames: &[Value]) {
    let positions: Vec<u64> = frames.iter().map(|f| f["pos"].as_u64().expect("pos")).collect();
    let expected: Vec<u64> = (positions[0]..positions[0] + positions.len() as u64).collect();
    assert_eq!(positions, expected, "positions are consecutive");
    let epochs: HashSet<&str> = frames.iter().map(|f| f["epoch"].as_str().expect("epoch")).collect();
    assert_eq!(epochs.len(), 1, "one epoch");
}

#[tokio::test]
async fn catch_up_after_the_publisher_was_down_while_1000_rows_changed() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;
    publisher.wait_ready().await;
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('first', 'x')").await;
    wait_for_log(&redis, 1).await;
    publisher.stop().await;

    // 1000 changes while no publisher runs: 500 inserts, 300 updates, 200 deletes.
    pg.psql(
        "postgres",
        "INSERT INTO orders (customer_name, product_name) SELECT 'c' || g, 'p' FROM generate_series(1, 500) g;
         UPDATE orders SET status = 'shipped' WHERE id BETWEEN 2 AND 301;
         DELETE FROM orders WHERE id BETWEEN 302 AND 501;",
    )
    .await;

    let publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;
    let frames = wait_for_log(&redis, 1001).await;
    assert_eq!(frames.len(), 1001, "every change once");
    assert_positions_consecutive(&frames);
    let ids = event_ids(&frames);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, (1..=1001).collect::<Vec<_>>(), "every event id exactly once");
    assert_eq!(state(&redis.url()).await, table(&pg).await, "the state in Redis equals the table");
    wait_until(WAIT, "every event marked", || async {
        pg.psql("postgres", "SELECT count(*) FROM realtime_events WHERE published_at IS NULL").await == "0"
    })
    .await;
    drop(publisher);
}

#[tokio::test]
async fn a_transaction_that_commits_late_is_not_skipped() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;
    publisher.wait_ready().await;

    // T1 takes event id 1 and stays open; T2 takes id 2 and commits first.
    let mut t1 = PgConnection::connect(&pg.url()).await.unwrap();
    sqlx::query("BEGIN").execute(&mut t1).await.unwrap();
    sqlx::query("INSERT INTO orders (customer_name, product_name) VALUES ('late', 'x')")
        .execute(&mut t1)
        .await
        .unwrap();
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('early', 'y')").await;
    let frames = wait_for_log(&redis, 1).await;
    assert_eq!(frames[0]["order"]["customer_name"], "early");

    // Restart the publisher while T1 is open, so the late event cannot ride on a live NOTIFY
    // being received by the same session that saw id 2.
    publisher.stop().await;
    let publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;
    publisher.wait_ready().await;
    sqlx::query("COMMIT").execute(&mut t1).await.unwrap();

    let frames = wait_for_log(&redis, 2).await;
    assert_eq!(event_ids(&frames), [2, 1], "the late commit is published after the early one, not skipped");
    assert_eq!(frames[1]["order"]["customer_name"], "late");
    drop(publisher);
}

#[tokio::test]
async fn concurrent_writers_lose_nothing_and_duplicate_nothing() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;
    publisher.wait_ready().await;

    let mut writers = Vec::new();
    for w in 0..4 {
        let url = pg.url();
        writers.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            for i in 0..100 {
                let mut tx = conn.begin().await.unwrap();
                sqlx::query("INSERT INTO orders (customer_name, product_name) VALUES ($1, 'w')")
                    .bind(format!("w{w}-{i}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("UPDATE orders SET amount = amount + 1 WHERE id = (SELECT max(id) FROM orders)")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let expected: usize = pg.psql("postgres", "SELECT count(*) FROM realtime_events").await.parse().unwrap();
    let frames = wait_for_log(&redis, expected).await;
    let ids = event_ids(&frames);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "no event id twice");
    assert_eq!(ids.len(), expected);
    assert_positions_consecutive(&frames);
    wait_until(WAIT, "state equals table", || async { state(&redis.url()).await == table(&pg).await }).await;
    drop(publisher);
}

#[tokio::test]
async fn redis_losing_its_data_starts_a_new_history_that_carries_the_old_one_and_the_backlog() {
    let (pg, mut redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;
    publisher.wait_ready().await;
    pg.psql(
        "postgres",
        "INSERT INTO orders (customer_name, product_name) SELECT 'c' || g, 'p' FROM generate_series(1, 5) g",
    )
    .await;
    let before = wait_for_log(&redis, 5).await;
    // The marks follow the append (within 10 ms, sharing a commit).
    wait_until(WAIT, "the outbox records where each event went", || async {
        pg.psql("postgres", "SELECT string_agg(log_pos::text, ',' ORDER BY id) FROM realtime_events").await
            == "1,2,3,4,5"
    })
    .await;

    // Committed while Redis is gone: in the outbox only.
    redis.stop().await;
    pg.psql("postgres", "UPDATE orders SET status = 'during' WHERE id IN (2, 4)").await;
    redis.restart().await; // empty: no persistence
    wait_for_log(&redis, 7).await;
    wait_until(WAIT, "state seeded again", || async { state(&redis.url()).await == table(&pg).await }).await;
    pg.psql("postgres", "UPDATE orders SET status = 'done' WHERE id = 3").await;
    let after = wait_for_log(&redis, 8).await;

    assert_ne!(after[0]["epoch"], before[0]["epoch"], "a new history has a new epoch");
    assert_positions_consecutive(&after);
    // The old history's events come first, in their old order (the bridge), then the backlog,
    // then live changes: every committed change is an event, none was folded into the seed.
    assert_eq!(event_ids(&after[..5]), event_ids(&before), "the bridge re-offers the old history");
    assert_eq!(after[5]["order"]["status"], "during");
    assert_eq!(after[6]["order"]["status"], "during");
    assert_eq!(after[7]["order"]["status"], "done");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let log = protocol::log::Log::new(&protocol::channel::ChannelName::parse("orders_updates").unwrap());
    let head = log.head_with_bridge(&mut conn).await.unwrap().expect("a history");
    let bridge = head.bridge.expect("the new history says what it re-offers");
    assert_eq!((bridge.epoch.as_str(), bridge.from), (before[0]["epoch"].as_str().unwrap(), 1));
    // 7 when the publisher had tried to append the backlog as Redis went away: that try may
    // have reached replicas at old positions 6 and 7, so the bridge re-offers it there.
    assert!(bridge.to == 5 || bridge.to == 7, "{bridge:?}");
    assert_eq!(state(&redis.url()).await, table(&pg).await);
    assert_eq!(publisher.metric("publisher_events_reoffered_total").await, bridge.to as i64);
    drop(publisher);
}

#[tokio::test]
async fn published_events_are_pruned_by_count() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let mut config = publisher_config(&pg.url(), &redis.url());
    config.outbox_max_rows = 10;
    config.prune_interval = Duration::from_millis(200);
    let publisher = spawn_publisher(config).await;
    publisher.wait_ready().await;
    pg.psql(
        "postgres",
        "INSERT INTO orders (customer_name, product_name) SELECT 'c' || g, 'p' FROM generate_series(1, 50) g",
    )
    .await;
    wait_for_log(&redis, 50).await;
    wait_until(WAIT, "outbox pruned to 10 rows", || async {
        pg.psql("postgres", "SELECT count(*) FROM realtime_events").await == "10"
    })
    .await;
    let kept = pg.psql("postgres", "SELECT min(id) || '-' || max(id) FROM realtime_events").await;
    assert_eq!(kept, "41-50", "the newest are kept");
    drop(publisher);
}
