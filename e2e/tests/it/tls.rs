//! TLS to PostgreSQL and Redis, as managed services require: a PostgreSQL that refuses plain
//! TCP (`ssl=on`, hostssl only) and a Redis on `--tls-port` only, both on certificates of a
//! CA the test makes. The services connect with `sslmode=verify-full&sslrootcert=…` and
//! `rediss://` with `REDIS_TLS_CA_FILE`, to one server and to a Redis Cluster whose nodes and
//! bus speak only TLS; with another CA they stay up, not ready, and say which setting fixes it.
//! Logical capture's replication connection goes over TLS too (the publisher's own tunnel).

use e2e::{WAIT, WsClient, publisher_config, spawn_publisher, spawn_ws, ws_config};
use sqlx::{Connection, PgConnection};
use testkit::{PgServer, RedisServer, TestCa, wait_until};

/// `url` with TLS verified against the CA at `ca`.
fn verified(url: &str, ca: &std::path::Path) -> String {
    format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display())
}

fn pem(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).expect("read the CA")
}

#[tokio::test]
async fn events_flow_over_tls_to_postgres_and_redis_verified_against_their_ca() {
    let (pg, redis) = tokio::join!(PgServer::start_tls(), RedisServer::start_tls());
    let (pg_ca, redis_ca) = (pg.tls_ca_path().expect("tls"), redis.tls_ca_path().expect("tls"));
    assert!(redis.url().starts_with("rediss://"));
    let database_url = verified(&pg.url(), pg_ca);

    let mut publisher_config = publisher_config(&database_url, &redis.url());
    publisher_config.redis_tls_ca = Some(pem(redis_ca));
    let publisher = spawn_publisher(publisher_config).await;
    let mut config = ws_config(&redis.url());
    config.redis_tls_ca = Some(pem(redis_ca));
    let ws = spawn_ws(config).await;
    publisher.wait_ready().await;
    ws.wait_ready().await;

    let mut client = WsClient::connect(&ws.ws_url()).await;
    let mut conn = PgConnection::connect(&database_url).await.expect("connect over TLS");
    sqlx::query("INSERT INTO orders (customer_name, product_name) VALUES ('Over', 'TLS')")
        .execute(&mut conn)
        .await
        .expect("insert");
    let event = client.next_json().await;
    assert_eq!(event["order"]["customer_name"], "Over");
    // The servers take nothing else: plain TCP is refused (so the flow above was TLS).
    let plain = format!("{}?sslmode=disable", pg.url());
    assert!(PgConnection::connect(&plain).await.is_err(), "PostgreSQL refuses plain TCP");
}

#[tokio::test]
async fn logical_capture_streams_its_slot_over_tls_verified_against_the_ca() {
    let (pg, redis) = tokio::join!(PgServer::start_tls_logical(), RedisServer::start());
    let database_url = verified(&pg.url(), pg.tls_ca_path().expect("tls"));
    let mut config = publisher_config(&database_url, &redis.url());
    config.capture = publisher::Capture::Logical;
    let publisher = spawn_publisher(config).await;
    publisher.wait_ready().await;
    // The server refuses replication connections without TLS; this one has it.
    let ssl = "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)";
    assert_eq!(pg.psql("postgres", ssl).await, "t", "the slot is streamed over TLS");

    let mut conn = PgConnection::connect(&database_url).await.expect("connect over TLS");
    sqlx::query("INSERT INTO orders (customer_name, product_name) VALUES ('Logical', 'TLS')")
        .execute(&mut conn)
        .await
        .expect("insert");
    let frames = testkit::wait_for(WAIT, "the change in the log", || async {
        let frames = e2e::history::log_frames(&redis.url()).await;
        (!frames.is_empty()).then_some(frames)
    })
    .await;
    assert_eq!(frames[0]["order"]["customer_name"], "Logical");
    assert_eq!(pg.psql("postgres", "SELECT mode FROM realtime_capture").await, "logical");
    drop(publisher);
}

#[tokio::test]
async fn another_ca_keeps_the_services_up_and_not_ready_naming_the_setting_that_fixes_it() {
    let (pg, redis) = tokio::join!(PgServer::start_tls(), RedisServer::start_tls());
    let other = TestCa::new();

    // PostgreSQL's certificate checked against a CA that did not sign it.
    let mut config = publisher_config(&verified(&pg.url(), other.ca_path()), &redis.url());
    config.redis_tls_ca = Some(pem(redis.tls_ca_path().expect("tls")));
    let publisher = spawn_publisher(config).await;
    // Redis's certificate checked against the system's store (no REDIS_TLS_CA_FILE).
    let ws = spawn_ws(ws_config(&redis.url())).await;
    wait_until(WAIT, "both services log the certificate problem with its fix", || async {
        !publisher.logs(&["UnknownIssuer", "sslrootcert="]).is_empty()
            && !ws.logs(&["UnknownIssuer", "REDIS_TLS_CA_FILE="]).is_empty()
    })
    .await;
    assert_eq!(publisher.readyz().await, 503);
    assert_eq!(ws.readyz().await, 503);
    assert_eq!(publisher.readyz().await, 503, "still up, not ready");
}

#[tokio::test]
async fn a_redis_cluster_over_tls_carries_events_verified_against_its_ca() {
    let (pg, cluster) = tokio::join!(PgServer::start(), testkit::RedisCluster::start_tls(3, 0));
    let ca = pem(cluster.tls_ca_path().expect("tls"));
    assert!(cluster.url().starts_with("rediss://"));
    // One node's URL for the publisher (the cluster is detected over TLS), the seed list for
    // the replica; both with the cluster's CA.
    let mut publisher_config = publisher_config(&pg.url(), &cluster.url());
    publisher_config.redis_tls_ca = Some(ca.clone());
    let publisher = spawn_publisher(publisher_config).await;
    let mut config = ws_config(&cluster.urls());
    config.redis_tls_ca = Some(ca);
    let ws = spawn_ws(config).await;
    publisher.wait_ready().await;
    ws.wait_ready().await;
    assert!(!publisher.logs(&["connected to redis", "cluster=true"]).is_empty());

    let mut client = WsClient::connect(&ws.ws_url()).await;
    let mut conn = PgConnection::connect(&pg.url()).await.expect("connect");
    sqlx::query("INSERT INTO orders (customer_name, product_name) VALUES ('Cluster', 'TLS')")
        .execute(&mut conn)
        .await
        .expect("insert");
    assert_eq!(client.next_json().await["order"]["product_name"], "TLS");
}
