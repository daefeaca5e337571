//! The shipped `publisher` executable: configuration errors, waiting for dependencies, and
//! SIGTERM.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use testkit::{PgServer, RedisServer, free_port, http_get, terminate, wait_until};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(20);

fn publisher(vars: &[(&str, String)]) -> Command {
    testkit::service_command(env!("CARGO_BIN_EXE_publisher"), vars)
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
    assert_eq!(pg.psql("postgres", "SELECT count(*) FROM _sqlx_migrations").await, "7", "migrations applied");

    let started = Instant::now();
    terminate(child.id().expect("running"));
    let status = exit_within(&mut child, Duration::from_secs(5)).await;
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(3), "stopped in {:?}", started.elapsed());
}

async fn metric(port: u16, name: &str) -> Option<i64> {
    let (_, body) = http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics").await?;
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Event ids in the replay log, in log order.
async fn logged_event_ids(redis_url: &str) -> Vec<i64> {
    logged(redis_url).await.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test]
async fn a_standby_takes_over_within_seconds_when_the_active_publisher_is_killed() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let env = |port: u16| {
        vec![
            ("DATABASE_URL", pg.url()),
            ("REDIS_URL", redis.url()),
            ("HEALTH_PORT", port.to_string()),
            ("PUBLISHER_STANDBY_POLL", "200ms".to_owned()),
            ("RETRY_MAX_DELAY", "1s".to_owned()),
        ]
    };
    let (port_a, port_b) = (free_port(), free_port());
    let mut active = publisher(&env(port_a)).spawn().expect("starts");
    wait_until(WAIT, "first publisher active", || async { metric(port_a, "publisher_active").await == Some(1) }).await;
    let mut standby = publisher(&env(port_b)).spawn().expect("starts");
    wait_until(WAIT, "second publisher ready", || async { readyz(port_b).await == 200 }).await;
    assert_eq!(metric(port_b, "publisher_active").await, Some(0), "the second one waits as standby");

    // A writer keeps committing while the active publisher is killed.
    let url = pg.url();
    let writer = tokio::spawn(async move {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        for i in 0..300 {
            sqlx::query("INSERT INTO orders (customer_name, product_name) VALUES ($1, 'failover')")
                .bind(format!("c{i}"))
                .execute(&mut conn)
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    wait_until(WAIT, "some events published", || async { logged_event_ids(&redis.url()).await.len() >= 50 }).await;
    testkit::kill(active.id().expect("running"));
    let killed_at = Instant::now();
    active.wait().await.expect("reaped");
    wait_until(WAIT, "standby active", || async { metric(port_b, "publisher_active").await == Some(1) }).await;
    let takeover = killed_at.elapsed();
    eprintln!("standby took over {takeover:?} after the SIGKILL");
    assert!(takeover < Duration::from_secs(3), "took over in {takeover:?}");

    writer.await.unwrap();
    wait_until(WAIT, "all 300 events in the log", || async { logged_event_ids(&redis.url()).await.len() >= 300 }).await;
    let ids = logged_event_ids(&redis.url()).await;
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique, (1..=300).collect::<Vec<_>>(), "every event, none lost");
    assert_eq!(ids.len(), 300, "none twice in the log");
    terminate(standby.id().unwrap());
    exit_within(&mut standby, Duration::from_secs(5)).await;
}

/// `(position, event id)` of every log entry, in log order.
async fn logged(redis_url: &str) -> Vec<(u64, i64)> {
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let log = protocol::log::Log::new(&protocol::channel::ChannelName::parse("orders_updates").unwrap());
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = log.read_after(&mut conn, after, 1000).await.unwrap();
        let Some((last, _)) = page.last() else { return entries };
        after = *last;
        for (pos, frame) in page {
            let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
            entries.push((pos, frame["id"].as_i64().unwrap()));
        }
    }
}

/// Every event id in `1..=n` once, at consecutive positions from 1.
fn assert_exactly_once(entries: &[(u64, i64)], n: i64) {
    let positions: Vec<u64> = entries.iter().map(|(pos, _)| *pos).collect();
    assert_eq!(positions, (1..=entries.len() as u64).collect::<Vec<_>>(), "consecutive positions");
    let mut ids: Vec<i64> = entries.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    let len = ids.len();
    ids.dedup();
    assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "every event, none lost");
    assert_eq!(len, n as usize, "none twice in the log");
}

async fn unpublished(pg: &PgServer) -> i64 {
    pg.psql("postgres", "SELECT count(*) FROM realtime_events WHERE published_at IS NULL").await.parse().unwrap()
}

/// The marks are written after the append and off the critical path, so a killed publisher can
/// leave a whole burst in the log and unmarked. Its successor must mark those rows, not append
/// them again: the claim's tail covers the mark window.
#[tokio::test]
async fn a_publisher_killed_after_appending_and_before_marking_leaves_no_duplicate_and_no_loss() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let env = |port: u16| {
        vec![
            ("DATABASE_URL", pg.url()),
            ("REDIS_URL", redis.url()),
            ("HEALTH_PORT", port.to_string()),
            ("RETRY_MAX_DELAY", "1s".to_owned()),
        ]
    };
    let port = free_port();
    let mut first = publisher(&env(port)).spawn().expect("starts");
    wait_until(WAIT, "first publisher active", || async { metric(port, "publisher_active").await == Some(1) }).await;

    // Every mark statement now hangs: the appends go on, nothing leaves the unpublished set.
    pg.psql(
        "postgres",
        "CREATE FUNCTION test_stall_marks() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM pg_sleep(600); RETURN NULL; END $$; \
         CREATE TRIGGER test_stall_marks BEFORE UPDATE ON realtime_events \
         FOR EACH STATEMENT EXECUTE FUNCTION test_stall_marks()",
    )
    .await;
    let burst = 3000; // more than the old claim tail of two batches
    // With a second notification for the first event, in the same transaction: it arrives
    // while that event is appended and its mark still pending, and must not append it again.
    pg.psql(
        "postgres",
        &format!(
            "INSERT INTO orders (customer_name, product_name) SELECT 'c' || g, 'burst' FROM generate_series(1, {burst}) g; \
             SELECT pg_notify('orders_channel', '{{\"id\" : 1, \"table\" : \"orders\", \"operation\" : \"INSERT\", \"ref\" : true}}')"
        ),
    )
    .await;
    wait_until(WAIT, "the burst in the log", || async { logged(&redis.url()).await.len() >= burst }).await;
    assert_eq!(unpublished(&pg).await, burst as i64, "appended, and not one mark committed");
    tokio::time::sleep(Duration::from_millis(300)).await; // a repeat would be in the log by now
    assert_exactly_once(&logged(&redis.url()).await, burst as i64);

    testkit::kill(first.id().expect("running"));
    first.wait().await.expect("reaped");
    pg.psql(
        "postgres",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE 'UPDATE realtime_events%' AND pid <> pg_backend_pid()",
    )
    .await;
    // Dropping the trigger waits for the stalled statement's lock: it goes once terminated.
    pg.psql("postgres", "DROP TRIGGER test_stall_marks ON realtime_events").await;

    let port = free_port();
    let mut second = publisher(&env(port)).spawn().expect("starts");
    wait_until(WAIT, "the burst marked by the successor", || async { unpublished(&pg).await == 0 }).await;
    pg.psql(
        "postgres",
        "INSERT INTO orders (customer_name, product_name) SELECT 'd' || g, 'after' FROM generate_series(1, 10) g",
    )
    .await;
    let total = burst + 10;
    wait_until(WAIT, "the rows after the takeover in the log", || async { logged(&redis.url()).await.len() >= total })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a late duplicate would show by now
    assert_exactly_once(&logged(&redis.url()).await, total as i64);
    let positions: String =
        pg.psql("postgres", "SELECT count(DISTINCT log_pos) FROM realtime_events WHERE log_pos IS NOT NULL").await;
    assert_eq!(positions, total.to_string(), "each event marked with its own position");
    terminate(second.id().unwrap());
    exit_within(&mut second, Duration::from_secs(5)).await;
}

/// Notified events are read from the outbox by id; what no notification brings still arrives:
/// an outbox row written without one (caught up from the outbox), a row too large for NOTIFY
/// (an id-only notification), and a notification naming a published event adds nothing.
#[tokio::test]
async fn events_without_a_usable_notification_are_caught_up_from_the_outbox_once() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let port = free_port();
    let mut child = publisher(&[
        ("DATABASE_URL", pg.url()),
        ("REDIS_URL", redis.url()),
        ("HEALTH_PORT", port.to_string()),
        ("RETRY_MAX_DELAY", "1s".into()),
    ])
    .spawn()
    .expect("starts");
    wait_until(WAIT, "publisher active", || async { metric(port, "publisher_active").await == Some(1) }).await;

    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('a', 'notified')").await;
    wait_until(WAIT, "the notified row", || async { logged(&redis.url()).await.len() == 1 }).await;
    // An outbox row like the trigger's, without its NOTIFY.
    pg.psql(
        "postgres",
        "WITH n AS (SELECT nextval('realtime_events_id_seq') AS id) \
         INSERT INTO realtime_events (id, channel, table_name, operation, payload) \
         SELECT id, 'orders_channel', 'orders', 'INSERT', json_build_object('id', id, 'table', 'orders', \
           'operation', 'INSERT', 'order', json_build_object('id', 4242, 'customer_name', 'silent'), \
           'ts', clock_timestamp()) FROM n",
    )
    .await;
    // Over NOTIFY's limit: the trigger sends the id only.
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('b', repeat('x', 20000))").await;
    // A notification naming the first event again, after it was published.
    pg.psql(
        "postgres",
        r#"SELECT pg_notify('orders_channel', '{"id":1,"table":"orders","operation":"INSERT","order":{"id":1}}')"#,
    )
    .await;
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('c', 'notified')").await;

    wait_until(WAIT, "all four events", || async { logged(&redis.url()).await.len() >= 4 }).await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // past a keepalive catch-up
    let entries = logged(&redis.url()).await;
    assert_exactly_once(&entries, 4);
    let (_, frame) = {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let log = protocol::log::Log::new(&protocol::channel::ChannelName::parse("orders_updates").unwrap());
        let frames = log.read_after(&mut conn, 0, 10).await.unwrap();
        frames.into_iter().find(|(_, f)| f.contains("\"b\"")).expect("the large row")
    };
    let frame: serde_json::Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(frame["order"]["product_name"].as_str().map(str::len), Some(20000), "the large row whole");
    assert_eq!(unpublished(&pg).await, 0);
    terminate(child.id().unwrap());
    exit_within(&mut child, Duration::from_secs(5)).await;
}

/// A publisher on `pg` and `redis`, once active, and its health port.
async fn active_publisher(pg: &PgServer, redis: &RedisServer) -> (Child, u16) {
    let port = free_port();
    let child = publisher(&[("DATABASE_URL", pg.url()), ("REDIS_URL", redis.url()), ("HEALTH_PORT", port.to_string())])
        .spawn()
        .expect("starts");
    wait_until(WAIT, "publisher active", || async { metric(port, "publisher_active").await == Some(1) }).await;
    (child, port)
}

/// `n` single-row commits (each its own notification), `gap_s` seconds apart, as one DO block.
fn paced(n: i64, gap_s: f64) -> String {
    format!(
        "DO $$ BEGIN FOR i IN 1..{n} LOOP \
           INSERT INTO orders (customer_name, product_name) VALUES ('c', 'p' || i); COMMIT; \
           PERFORM pg_sleep({gap_s}); \
         END LOOP; END $$"
    )
}

/// How many sequential scans of the outbox PostgreSQL has counted.
async fn outbox_seq_scans(pg: &PgServer) -> i64 {
    pg.psql("postgres", "SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'realtime_events'")
        .await
        .parse()
        .unwrap()
}

/// Each event's read and mark go by primary key however the outbox grew since its statements
/// were prepared. The mark was an `unnest` join whose cached generic plan, made while the table
/// was small and never analyzed, was a hash join over a sequential scan of the whole outbox:
/// every mark read every row (1.5–3.5 ms each at 9,000 rows).
#[tokio::test]
async fn events_are_marked_by_primary_key_after_the_outbox_grew_unanalyzed() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let (mut child, _) = active_publisher(&pg, &redis).await;
    // No analyze behind the test's back (it would re-plan the cached statements).
    pg.psql("postgres", "ALTER TABLE realtime_events SET (autovacuum_enabled = false)").await;
    // Events one at a time into a small outbox: each its own read and mark, plans cached.
    pg.psql("postgres", &paced(10, 0.02)).await;
    wait_until(WAIT, "the first ten published", || async { unpublished(&pg).await == 0 }).await;
    // The outbox grows (published rows, as after a day of events); it is not analyzed.
    pg.psql(
        "postgres",
        "INSERT INTO realtime_events (id, channel, table_name, operation, payload, published_at) \
         SELECT nextval('realtime_events_id_seq'), 'orders_channel', 'orders', 'INSERT', '{}', now() \
         FROM generate_series(1, 20000)",
    )
    .await;
    let events = 60;
    pg.psql("postgres", &paced(events, 0.02)).await;
    wait_until(WAIT, "the rest published", || async { unpublished(&pg).await == 0 }).await;
    assert_eq!(logged(&redis.url()).await.len(), 10 + events as usize);

    // A backend's counts reach the shared statistics when it exits, at the latest.
    terminate(child.id().unwrap());
    exit_within(&mut child, Duration::from_secs(5)).await;
    wait_until(WAIT, "the publisher's sessions gone", || async {
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
        .await
            == "0"
    })
    .await;
    // The few scans left are the per-second ones (catch-up, backlog) and the migrations'.
    let scans = outbox_seq_scans(&pg).await;
    assert!(scans < events / 2, "{scans} sequential scans of the outbox for {events} events");
}

/// Marks of events that follow each other closely share a commit (and its fsync, on the disk
/// the writers' commits wait for), and none is lost or marked twice for it.
#[tokio::test]
async fn marks_of_events_close_together_share_a_commit() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let (mut child, port) = active_publisher(&pg, &redis).await;
    let before = metric(port, "publisher_mark_commits_total").await.expect("the counter");
    // Single-row commits about a millisecond apart: each is its own notification and append.
    let events = 200;
    pg.psql("postgres", &paced(events, 0.001)).await;
    wait_until(WAIT, "all published", || async { unpublished(&pg).await == 0 }).await;
    let entries = logged(&redis.url()).await;
    assert_exactly_once(&entries, events);
    let commits = metric(port, "publisher_mark_commits_total").await.expect("the counter") - before;
    let appends = metric(port, "publisher_batches_total").await.expect("the counter");
    assert!(commits < events / 2, "{commits} mark commits for {events} events ({appends} appends)");
    terminate(child.id().unwrap());
    exit_within(&mut child, Duration::from_secs(5)).await;
}

/// The trigger's signed notification of event `id`, computed as the trigger does
/// (`sql/0007_signed_wakeups.sql`): what anyone who LISTENs saw and can send again. `sent` is
/// the change sent (an SQL expression of the outbox row), signed as its row's payload is.
fn signed_notification_sql(id: i64, sent: &str) -> String {
    format!(
        "SELECT pg_notify('orders_channel', left(sent, -1) || ', \"sig\" : \"' \
           || encode(sha256(k.outer_key || sha256(k.inner_key || convert_to(payload, 'UTF8'))), 'hex') || '\"}}') \
         FROM (SELECT {sent} AS sent, payload::text AS payload FROM realtime_events WHERE id = {id}) e, \
              realtime_notify_key k"
    )
}

/// Signed changes go into the log straight from their notification, without reading the outbox.
/// Anyone may LISTEN and send a signed notification again: a repeat adds nothing, while its
/// event's id is in the session's record and after it went below the floor (read again).
#[tokio::test]
async fn signed_changes_are_appended_without_a_read_and_a_repeat_adds_nothing() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let (mut child, port) = active_publisher(&pg, &redis).await;
    let events = 40;
    pg.psql("postgres", &paced(events, 0.005)).await;
    wait_until(WAIT, "all published", || async { unpublished(&pg).await == 0 }).await;
    assert_exactly_once(&logged(&redis.url()).await, events);
    // A keepalive's catch-up can take a notified event first; nearly all go unread.
    let unread = metric(port, "publisher_events_unread_total").await.expect("the counter");
    assert!(unread >= events - 5, "{unread} of {events} events appended without a read");

    // Repeated at once (in the record), then after two keepalives (below the floor).
    for (round, pause) in [(1, Duration::ZERO), (2, Duration::from_millis(2500))] {
        tokio::time::sleep(pause).await;
        for id in [1, events / 2, events] {
            pg.psql("postgres", &signed_notification_sql(id, "payload::text")).await;
        }
        pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('c', 'after')").await;
        let total = events + round;
        wait_until(WAIT, "the event after the repeats", || async { logged(&redis.url()).await.len() as i64 >= total })
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await; // a late duplicate would show by now
        assert_exactly_once(&logged(&redis.url()).await, total);
    }
    assert_eq!(metric(port, "publisher_signatures_rejected_total").await, Some(0));
    terminate(child.id().unwrap());
    exit_within(&mut child, Duration::from_secs(5)).await;
}

/// What is not signed with the session's key is read from the outbox, as before signing: an
/// altered change with a real signature, a made-up event, a writer whose role may not read the
/// key, and every change after the key was replaced under a running publisher.
#[tokio::test]
async fn without_a_valid_signature_the_outbox_decides() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let (mut child, port) = active_publisher(&pg, &redis).await;
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('a', 'first')").await;
    wait_until(WAIT, "the first event", || async { unpublished(&pg).await == 0 }).await;

    // Event 1 altered, signed as it was; an event that does not exist, with some signature.
    pg.psql("postgres", &signed_notification_sql(1, "replace(payload::text, '\"first\"', '\"forged\"')")).await;
    pg.psql(
        "postgres",
        &format!(
            r#"SELECT pg_notify('orders_channel', '{{"id" : 999, "table" : "orders", "operation" : "INSERT", "order" : {{"id":999}}, "sig" : "{}"}}')"#,
            "ab".repeat(32)
        ),
    )
    .await;
    wait_until(WAIT, "both rejected signatures", || async {
        metric(port, "publisher_signatures_rejected_total").await == Some(2)
    })
    .await;

    // A writer that may write the outbox but not read the key: its changes go unsigned.
    pg.psql(
        "postgres",
        "CREATE ROLE writer; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO writer; GRANT INSERT ON realtime_events TO writer; \
         GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO writer; GRANT SELECT ON realtime_capture TO writer",
    )
    .await;
    let unread = metric(port, "publisher_events_unread_total").await.expect("the counter");
    pg.psql("postgres", "SET ROLE writer; INSERT INTO orders (customer_name, product_name) VALUES ('w', 'keyless')")
        .await;
    wait_until(WAIT, "the writer's event", || async { logged(&redis.url()).await.len() == 2 }).await;
    assert_eq!(metric(port, "publisher_events_unread_total").await, Some(unread), "read, not taken unread");

    // A new key: the running session's no longer matches, and every change is read.
    pg.psql("postgres", "UPDATE realtime_notify_key SET outer_key = decode(repeat(md5(random()::text), 4), 'hex')")
        .await;
    pg.psql("postgres", &paced(5, 0.005)).await;
    wait_until(WAIT, "the events after the new key", || async { logged(&redis.url()).await.len() == 7 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let entries = logged(&redis.url()).await;
    assert_exactly_once(&entries, 7);
    assert_eq!(metric(port, "publisher_signatures_rejected_total").await, Some(7));
    assert_eq!(metric(port, "publisher_events_unread_total").await, Some(unread));
    terminate(child.id().unwrap());
    exit_within(&mut child, Duration::from_secs(5)).await;
}
