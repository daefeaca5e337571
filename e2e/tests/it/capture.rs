//! Logical capture (`PUBLISHER_CAPTURE=logical`): the trigger emits a logical decoding message
//! instead of a NOTIFY, and the publisher streams them from a replication slot of a real
//! PostgreSQL with `wal_level=logical`. Every change reaches the log once, in commit order;
//! the slot is acknowledged only after the append, so a publisher killed between the two
//! replays and repeats nothing; modes switch with a restart and lose nothing; a standby takes
//! the slot over; a slot that stops advancing shows in the metrics.

use std::{
    collections::{BTreeMap, HashSet},
    time::Duration,
};

use e2e::{
    Process, WAIT,
    history::{log_frames, state, table},
    publisher_config, spawn_publisher, write_mix,
};
use publisher::Capture;
use serde_json::Value;
use sqlx::postgres::PgListener;
use testkit::{PgServer, RedisServer, wait_until};
use tokio::sync::watch;

const SLOT: &str = "orders_realtime";

fn logical_config(pg: &PgServer, redis: &RedisServer) -> publisher::Config {
    let mut config = publisher_config(&pg.url(), &redis.url());
    config.capture = Capture::Logical;
    config.standby_poll = Duration::from_millis(200);
    config
}

/// Writers committing a mix of changes until [`Writers::stop`].
struct Writers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<usize>>,
}

impl Writers {
    fn start(pg: &PgServer, n: u64) -> Writers {
        let (stop, rx) = watch::channel(false);
        let tasks = (0..n).map(|seed| tokio::spawn(write_mix(pg.url(), 7 + seed, rx.clone()))).collect();
        Writers { stop, tasks }
    }

    async fn stop(self) -> usize {
        self.stop.send_replace(true);
        let mut committed = 0;
        for task in self.tasks {
            committed += task.await.expect("writer did not panic");
        }
        committed
    }
}

/// Waits until the log holds every outbox event, then checks: each exactly once, one history
/// with consecutive positions, each row's changes in their commit order, and the state equal
/// to the table.
async fn assert_log_complete(pg: &PgServer, redis: &RedisServer) -> Vec<Value> {
    let ids: Vec<i64> = pg
        .psql("postgres", "SELECT id FROM realtime_events ORDER BY id")
        .await
        .lines()
        .map(|l| l.parse().expect("an id"))
        .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    let frames = loop {
        let frames = log_frames(&redis.url()).await;
        if frames.len() >= ids.len() {
            break frames;
        }
        if tokio::time::Instant::now() > deadline {
            // Say which changes are missing, and what the outbox says of them.
            let logged: HashSet<i64> = frames.iter().filter_map(|f| f["id"].as_i64()).collect();
            let missing: Vec<String> = ids.iter().filter(|id| !logged.contains(id)).map(ToString::to_string).collect();
            let rows = pg
                .psql(
                    "postgres",
                    &format!(
                        "SELECT id, published_at IS NOT NULL, log_epoch, log_pos FROM realtime_events WHERE id IN ({})",
                        missing.iter().take(20).cloned().collect::<Vec<_>>().join(",")
                    ),
                )
                .await;
            panic!("{} of {} events not in the log after {WAIT:?}; the first: {rows}", missing.len(), ids.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let logged: Vec<i64> = frames.iter().map(|f| f["id"].as_i64().expect("event id")).collect();
    assert_eq!(logged.iter().collect::<HashSet<_>>().len(), logged.len(), "no event twice");
    let mut sorted = logged.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ids, "every committed change in the log");
    let positions: Vec<u64> = frames.iter().map(|f| f["pos"].as_u64().expect("pos")).collect();
    assert_eq!(positions, (positions[0]..positions[0] + positions.len() as u64).collect::<Vec<_>>(), "consecutive");
    assert_eq!(frames.iter().map(|f| f["epoch"].as_str()).collect::<HashSet<_>>().len(), 1, "one history");
    // Changes of one row are ordered by its row lock: their event ids rise in commit order.
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    // Keyed by the row id's JSON text.
    for frame in &frames {
        let row = &frame["order"]["id"];
        let id = frame["id"].as_i64().expect("id");
        if let Some(before) = last.insert(row.to_string(), id) {
            assert!(
                before < id,
                "row {row}: event {id} after {before}, out of commit order: {:?}",
                frames
                    .iter()
                    .filter(|f| &f["order"]["id"] == row)
                    .map(|f| (&f["id"], &f["operation"], &f["pos"]))
                    .collect::<Vec<_>>()
            );
        }
    }
    wait_until(WAIT, "the state in Redis equals the table", || async { state(&redis.url()).await == table(pg).await })
        .await;
    frames
}

async fn slot_active(pg: &PgServer) -> String {
    pg.psql("postgres", &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}'")).await
}

/// Waits until the slot's acknowledged position reaches the WAL written so far.
async fn wait_acknowledged(pg: &PgServer) {
    let lsn = pg.psql("postgres", "SELECT pg_current_wal_lsn()").await;
    let sql = format!("SELECT confirmed_flush_lsn >= '{lsn}' FROM pg_replication_slots WHERE slot_name = '{SLOT}'");
    wait_until(WAIT, "the slot acknowledged up to the current WAL", || async {
        pg.psql("postgres", &sql).await == "t"
    })
    .await;
}

#[tokio::test]
async fn logical_capture_moves_every_change_in_commit_order_without_a_notify() {
    let (pg, redis) = tokio::join!(PgServer::start_logical(), RedisServer::start());
    let publisher = spawn_publisher(logical_config(&pg, &redis)).await;
    publisher.wait_ready().await;
    assert_eq!(pg.psql("postgres", "SELECT mode FROM realtime_capture").await, "logical", "the trigger was switched");
    assert_eq!(slot_active(&pg).await, "t", "the publisher streams its slot");
    let mut listener = PgListener::connect(&pg.url()).await.expect("connect");
    listener.listen("orders_channel").await.expect("listen");

    let writers = Writers::start(&pg, 3);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let committed = writers.stop().await;
    assert!(committed > 50, "the writers committed {committed} transactions");
    assert_log_complete(&pg, &redis).await;

    let notified = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(notified.is_err(), "no NOTIFY was sent: {notified:?}");
    // Acknowledged once appended (keepalives move it past WAL without our messages too).
    wait_acknowledged(&pg).await;
    wait_until(WAIT, "publisher_slot_active 1", || async { publisher.metric("publisher_slot_active").await == 1 })
        .await;
    drop(publisher);
}

fn start_publisher_process(pg: &PgServer, redis: &RedisServer, dir: &std::path::Path) -> Process {
    crate::support::start_publisher("publisher", pg, redis, dir, &[("PUBLISHER_CAPTURE", "logical")])
}

#[tokio::test]
async fn a_publisher_killed_between_the_append_and_the_acknowledgement_repeats_and_loses_nothing() {
    let (pg, redis) = tokio::join!(PgServer::start_logical(), RedisServer::start());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = start_publisher_process(&pg, &redis, dir.path());
    first.wait_ready().await;

    let writers = Writers::start(&pg, 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill().await;
    let committed = writers.stop().await;
    assert!(committed > 50, "the writers committed {committed} transactions");
    wait_until(WAIT, "the killed publisher's slot is free", || async { slot_active(&pg).await == "f" }).await;

    // The messages after the slot's acknowledged position, read without consuming them: some
    // are of events already in the log (appended, not acknowledged: acknowledgements go out
    // every second), which the next publisher receives again.
    let pending: HashSet<i64> = pg
        .psql(
            "postgres",
            &format!(
                "SELECT convert_from(substring(data from 16 + length('orders_channel')), 'UTF8')
                 FROM pg_logical_slot_peek_binary_changes('{SLOT}', NULL, NULL, 'proto_version', '1',
                      'publication_names', '{SLOT}', 'messages', 'true')
                 WHERE get_byte(data, 0) = 77"
            ),
        )
        .await
        .lines()
        .map(|l| l.parse().expect("an outbox id"))
        .collect();
    let logged: HashSet<i64> = log_frames(&redis.url()).await.iter().map(|f| f["id"].as_i64().expect("id")).collect();
    let replayed = pending.intersection(&logged).count();
    assert!(replayed > 0, "the kill fell between an append and its acknowledgement ({} pending)", pending.len());

    let mut second = start_publisher_process(&pg, &redis, dir.path());
    second.wait_ready().await;
    assert_log_complete(&pg, &redis).await;
    second.terminate().await;
}

#[tokio::test]
async fn switching_capture_modes_by_restarting_the_publisher_loses_nothing() {
    let (pg, redis) = tokio::join!(PgServer::start_logical(), RedisServer::start());
    let mut writers = None;
    for capture in [Capture::Notify, Capture::Logical, Capture::Notify, Capture::Logical, Capture::Notify] {
        let mut config = logical_config(&pg, &redis);
        config.capture = capture;
        let publisher = spawn_publisher(config).await;
        publisher.wait_ready().await;
        // Once the schema is complete: a row committed between two of the first run's
        // migrations is the original design's (sql/0004 takes it as relayed already).
        writers.get_or_insert_with(|| Writers::start(&pg, 2));
        assert_eq!(pg.psql("postgres", "SELECT mode FROM realtime_capture").await, capture.to_string());
        tokio::time::sleep(Duration::from_millis(700)).await;
        publisher.stop().await;
        // Changes committed while no publisher runs wait in the outbox.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let committed = writers.expect("started").stop().await;
    assert!(committed > 50, "the writers committed {committed} transactions");
    let publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;
    assert_log_complete(&pg, &redis).await;
    // Back in notify mode: the slot, which would keep WAL forever, is gone.
    let slots = "SELECT count(*) FROM pg_replication_slots";
    wait_until(WAIT, "the slot dropped", || async { pg.psql("postgres", slots).await == "0" }).await;
    drop(publisher);
}

#[tokio::test]
async fn a_standby_takes_the_slot_over_when_the_active_publisher_dies() {
    let (pg, redis) = tokio::join!(PgServer::start_logical(), RedisServer::start());
    let a = spawn_publisher(logical_config(&pg, &redis)).await;
    a.wait_ready().await;
    wait_until(WAIT, "a is active", || async { a.metric("publisher_active").await == 1 }).await;
    let b = spawn_publisher(logical_config(&pg, &redis)).await;
    b.wait_ready().await;
    assert_eq!(b.metric("publisher_active").await, 0, "b waits as standby");

    let writers = Writers::start(&pg, 2);
    tokio::time::sleep(Duration::from_millis(800)).await;
    a.abort();
    wait_until(WAIT, "b took over", || async { b.metric("publisher_active").await == 1 }).await;
    wait_until(WAIT, "b streams the slot", || async { slot_active(&pg).await == "t" }).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    writers.stop().await;
    assert_log_complete(&pg, &redis).await;
    drop(b);
}

#[tokio::test]
async fn a_slot_that_stops_advancing_shows_its_retained_wal_in_the_metrics() {
    let (pg, redis) = tokio::join!(PgServer::start_logical(), RedisServer::start());
    let publisher = spawn_publisher(logical_config(&pg, &redis)).await;
    publisher.wait_ready().await;
    let before = publisher.metric("publisher_slot_retained_wal_bytes").await;

    // Redis stops answering: nothing can be appended, so nothing is acknowledged.
    redis.freeze();
    let writers = Writers::start(&pg, 2);
    wait_until(WAIT, "the retained WAL grows by 256 kB", || async {
        publisher.metric("publisher_slot_retained_wal_bytes").await > before + 256 * 1024
    })
    .await;
    writers.stop().await;
    redis.thaw();
    assert_log_complete(&pg, &redis).await;
    wait_acknowledged(&pg).await;
    drop(publisher);
}

#[tokio::test]
async fn logical_capture_without_wal_level_logical_stops_and_names_the_fix() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let publisher = spawn_publisher(logical_config(&pg, &redis)).await;
    let error = publisher.finished().await.expect_err("a fatal configuration error");
    for needle in
        ["wal_level=logical", "wal_level=replica", "ALTER SYSTEM SET wal_level = logical", "PUBLISHER_CAPTURE=notify"]
    {
        assert!(error.contains(needle), "{needle:?} not in {error}");
    }
    assert_eq!(pg.psql("postgres", "SELECT mode FROM realtime_capture").await, "notify", "the trigger still notifies");
}
