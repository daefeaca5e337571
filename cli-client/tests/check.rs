//! `cli-client check` against real servers: every part passes on a healthy system (two
//! replicas, the publisher), and each failure names its precise cause and fix: connection
//! refused, role missing, database missing, password refused, trigger missing, publisher down,
//! backlog growing. Read through `check --json`, the scripts' format.

mod support;

use std::time::Duration;

use e2e::{System, WAIT};
use serde_json::Value;

/// `check --json` with `args`, PostgreSQL and Redis from `database_url` / `redis_url`.
async fn check(args: &[&str], database_url: &str, redis_url: &str) -> (Option<i32>, Value) {
    let mut all = vec!["check", "--json"];
    all.extend_from_slice(args);
    let run = support::run(&all, &[("DATABASE_URL", database_url), ("REDIS_URL", redis_url)]).await;
    let doc: Value = serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"));
    (run.code, doc)
}

/// The check named `name`.
fn named<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no {name}: {doc}"))
}

/// Asserts that check `name` failed with `cause` in its problem and `fix` in its fix.
fn assert_failed(doc: &Value, name: &str, cause: &str, fix: &str) {
    let check = named(doc, name);
    assert_eq!(check["status"], "fail", "{check}");
    let (problem, remedy) = (check["problem"].as_str().unwrap(), check["fix"].as_str().unwrap());
    assert!(problem.contains(cause), "{name}: expected {cause:?} in {problem:?}");
    assert!(remedy.contains(fix), "{name}: expected {fix:?} in {remedy:?}");
}

#[tokio::test]
async fn a_healthy_system_passes_every_check_including_the_publisher_and_each_replica() {
    let system = System::start(2).await;
    let urls = format!("{},{}", system.ws[0].ws_url(), system.ws[1].ws_url());
    let publisher = format!("http://{}", system.publisher.addr);
    let (code, doc) =
        check(&["--url", &urls, "--publisher-url", &publisher], &system.pg.url(), &system.redis.url()).await;
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(doc["ok"], true);
    let names: Vec<&str> = doc["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 9, "{names:?}");
    assert!(
        names[..7]
            == [
                "PostgreSQL",
                "orders table",
                "notify trigger",
                "Redis",
                "publisher",
                "outbox backlog",
                "replication slot"
            ]
    );
    assert!(names[7].starts_with("ws-server ws://") && names[8].starts_with("ws-server ws://"), "{names:?}");
    assert_eq!(named(&doc, "replication slot")["detail"], "no logical capture slot (PUBLISHER_CAPTURE=notify)");
    assert!(doc["checks"].as_array().unwrap().iter().all(|c| c["status"] == "ok"), "{doc}");
}

#[tokio::test]
async fn each_postgres_failure_names_its_cause() {
    let system = System::start(0).await;
    let port = system.pg.port();
    let redis = system.redis.url();
    let dead = testkit::free_port();
    let args = ["--url", "ws://127.0.0.1:1/ws", "--publisher-url", "http://127.0.0.1:1"];

    let (code, doc) = check(&args, &format!("postgres://postgres@127.0.0.1:{dead}/postgres"), &redis).await;
    assert_eq!(code, Some(1));
    assert_failed(&doc, "PostgreSQL", "connection refused", "start PostgreSQL");
    assert_eq!(named(&doc, "orders table")["status"], "skipped");

    let (_, doc) = check(&args, &format!("postgres://nobody@127.0.0.1:{port}/postgres"), &redis).await;
    assert_failed(&doc, "PostgreSQL", "role missing", "createuser");

    let (_, doc) = check(&args, &format!("postgres://postgres@127.0.0.1:{port}/nowhere"), &redis).await;
    assert_failed(&doc, "PostgreSQL", "database missing", "createdb");

    system.sql("CREATE ROLE checker LOGIN PASSWORD 'right'").await;
    system.pg.require_password_for("checker").await;
    let (_, doc) = check(&args, &format!("postgres://checker:wrong@127.0.0.1:{port}/postgres"), &redis).await;
    assert_failed(&doc, "PostgreSQL", "password authentication failed", "password");
    let (_, doc) = check(&args, &format!("postgres://checker:right@127.0.0.1:{port}/postgres"), &redis).await;
    assert_eq!(named(&doc, "PostgreSQL")["status"], "ok", "{doc}");

    // The other failures of this run, each with its own cause.
    assert_failed(&doc, "publisher", "publisher down", "--publisher-url");
    assert_eq!(named(&doc, "outbox backlog")["status"], "skipped");
    assert_failed(&doc, "ws-server", "connection refused", "start ws-server");

    system.sql("DROP TRIGGER orders_realtime_notify ON orders").await;
    let (_, doc) = check(&args, &system.pg.url(), &redis).await;
    assert_failed(&doc, "notify trigger", "no trigger on orders calls pg_notify", "migrations");
}

#[tokio::test]
async fn a_backlog_the_publisher_cannot_publish_is_reported_as_growing() {
    let mut system = System::start(1).await;
    let publisher = format!("http://{}", system.publisher.addr);
    let url = system.ws[0].ws_url();
    system.redis.stop().await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Stuck', 'Outbox')").await;
    let args = ["--url", &url, "--publisher-url", &publisher, "--max-backlog-age", "1"];
    // The gauges are refreshed every second: wait until the change is old enough to count.
    let deadline = tokio::time::Instant::now() + WAIT;
    let doc = loop {
        let (code, doc) = check(&args, &system.pg.url(), &system.redis.url()).await;
        if named(&doc, "outbox backlog")["status"] == "fail" {
            assert_eq!(code, Some(1));
            break doc;
        }
        assert!(tokio::time::Instant::now() < deadline, "no backlog reported within {WAIT:?}: {doc}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_failed(&doc, "outbox backlog", "backlog growing: 1 committed change not yet published", "check Redis");
    assert_eq!(named(&doc, "Redis")["status"], "fail");
}

#[tokio::test]
async fn a_replication_slot_keeping_more_wal_than_the_limit_fails_the_check() {
    let (pg, redis) = tokio::join!(testkit::PgServer::start_logical(), testkit::RedisServer::start());
    let mut config = e2e::publisher_config(&pg.url(), &redis.url());
    config.capture = publisher::Capture::Logical;
    let publisher = e2e::spawn_publisher(config).await;
    publisher.wait_ready().await;
    let url = format!("http://{}", publisher.addr);
    let args = ["--url", "ws://127.0.0.1:1/ws", "--publisher-url", &url];
    let (_, doc) = check(&args, &pg.url(), &redis.url()).await;
    let trigger = named(&doc, "notify trigger")["detail"].as_str().unwrap().to_owned();
    assert!(trigger.contains("in logical capture mode"), "{trigger}");
    // The gauges are refreshed every second.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, doc) = check(&args, &pg.url(), &redis.url()).await;
        let slot = named(&doc, "replication slot");
        if slot["status"] == "ok" && slot["detail"].as_str().unwrap().starts_with("streamed, retaining") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the slot not reported as streamed within {WAIT:?}: {doc}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Redis stops answering: nothing is appended, so nothing acknowledged, while writes go on.
    redis.freeze();
    pg.psql(
        "postgres",
        "INSERT INTO orders (customer_name, product_name) SELECT 'c' || g, 'p' FROM generate_series(1, 3000) g",
    )
    .await;
    let args = ["--url", "ws://127.0.0.1:1/ws", "--publisher-url", &url, "--max-retained-wal-mb", "1"];
    let doc = loop {
        let (code, doc) = check(&args, &pg.url(), &redis.url()).await;
        if named(&doc, "replication slot")["status"] == "fail" {
            assert_eq!(code, Some(1));
            break doc;
        }
        assert!(tokio::time::Instant::now() < deadline, "no retained WAL reported within {WAIT:?}: {doc}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_failed(
        &doc,
        "replication slot",
        "MiB of WAL (limit 1 MiB), streamed but not acknowledged",
        "max_slot_wal_keep_size",
    );
    redis.thaw();
}

#[tokio::test]
async fn redis_refusing_the_password_is_an_authentication_failure_not_a_refusal() {
    let redis = testkit::RedisServer::start_with_password("right-password").await;
    let args = ["--url", "ws://127.0.0.1:1/ws", "--publisher-url", "http://127.0.0.1:1"];
    let pg = format!("postgres://postgres@127.0.0.1:{}/postgres", testkit::free_port());
    let (_, doc) = check(&args, &pg, &format!("redis://127.0.0.1:{}", redis.port())).await;
    assert_failed(&doc, "Redis", "authentication failed", "REDIS_URL");
    let (_, doc) = check(&args, &pg, &redis.url_with_password("wrong")).await;
    assert_failed(&doc, "Redis", "authentication failed", "password");
    let (_, doc) = check(&args, &pg, &redis.url()).await;
    assert_eq!(named(&doc, "Redis")["status"], "ok", "{doc}");
    let (_, doc) = check(&args, &pg, &format!("redis://127.0.0.1:{}", testkit::free_port())).await;
    assert_failed(&doc, "Redis", "connection refused", "start Redis");
}

#[tokio::test]
async fn a_redis_cluster_is_named_and_fails_once_a_master_with_no_replica_is_gone() {
    let mut cluster = testkit::RedisCluster::start(3, 0).await;
    let args = ["--url", "ws://127.0.0.1:1/ws", "--publisher-url", "http://127.0.0.1:1"];
    let pg = format!("postgres://postgres@127.0.0.1:{}/postgres", testkit::free_port());
    let (_, doc) = check(&args, &pg, &cluster.url()).await;
    let redis = named(&doc, "Redis");
    assert_eq!(redis["status"], "ok", "{doc}");
    let detail = redis["detail"].as_str().unwrap();
    assert!(detail.contains("Redis Cluster: 3 masters") && detail.contains("16384 of 16384 slots"), "{detail}");

    // A seed list whose first node is down still reaches the cluster; with a master gone and
    // no replica to promote, its slots go unserved once the others mark it failed.
    cluster.kill(0).await;
    let seeds = cluster.urls();
    testkit::wait_until(WAIT, "the check reports unserved slots", || async {
        let (_, doc) = check(&args, &pg, &seeds).await;
        named(&doc, "Redis")["status"] == "fail"
    })
    .await;
    let (_, doc) = check(&args, &pg, &seeds).await;
    assert_failed(&doc, "Redis", "slots served", "redis-cli --cluster");
}

#[tokio::test]
async fn tls_servers_pass_with_their_ca_and_fail_naming_the_ca_setting_without_it() {
    let (pg, redis) = tokio::join!(testkit::PgServer::start_tls(), testkit::RedisServer::start_tls());
    let (pg_ca, redis_ca) = (pg.tls_ca_path().unwrap().display().to_string(), redis.tls_ca_path().unwrap());
    let args = ["--url", "ws://127.0.0.1:1/ws", "--publisher-url", "http://127.0.0.1:1"];
    let verified = format!("{}?sslmode=verify-full&sslrootcert={pg_ca}", pg.url());
    let with_ca = [&args[..], &["--redis-ca-file", redis_ca.to_str().unwrap()]].concat();
    let (_, doc) = check(&with_ca, &verified, &redis.url()).await;
    assert_eq!(named(&doc, "PostgreSQL")["status"], "ok", "{doc}");
    assert_eq!(named(&doc, "Redis")["status"], "ok", "{doc}");

    let other = testkit::TestCa::new();
    let wrong = format!("{}?sslmode=verify-full&sslrootcert={}", pg.url(), other.ca_path().display());
    let (_, doc) = check(&args, &wrong, &redis.url()).await;
    assert_failed(&doc, "PostgreSQL", "UnknownIssuer", "sslrootcert=");
    assert_failed(&doc, "Redis", "UnknownIssuer", "REDIS_TLS_CA_FILE=");
}
