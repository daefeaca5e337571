//! Fault tests: real servers are killed and restarted under the running services.

use std::time::Duration;

use e2e::{Service, System, WAIT, WsClient};
use testkit::wait_until;

/// The `delay_ms` values of `service`'s reconnect log lines for `session`.
fn retry_delays(service: &Service, session: &str) -> Vec<u64> {
    service
        .logs(&["session ended; reconnecting", &format!("session=\"{session}\"")])
        .iter()
        .filter_map(|l| l.split("delay_ms=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn services_retry_with_growing_delays_while_redis_is_killed_and_recover_after_restart() {
    let mut system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Before', 'Kill')").await;
    assert_eq!(client.next_json().await["order"]["customer_name"], "Before");

    system.redis.kill().await;
    wait_until(WAIT, "both services report the outage", || async {
        system.publisher.readyz().await == 503 && system.ws[0].readyz().await == 503
    })
    .await;
    // Stay down long enough for several attempts on each side.
    wait_until(WAIT, "four retries logged by each service", || async {
        retry_delays(&system.publisher, "redis").len() >= 4 && retry_delays(&system.ws[0], "redis").len() >= 4
    })
    .await;
    // Committed while Redis is down: the publisher holds it and publishes after recovery.
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('During', 'Outage')").await;

    system.redis.restart().await;
    system.wait_ready().await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('After', 'Restart')").await;

    let mut seen = Vec::new();
    while !seen.contains(&"After".to_owned()) {
        seen.push(client.next_json().await["order"]["customer_name"].as_str().unwrap().to_owned());
    }
    assert!(system.publisher.metric("publisher_redis_reconnects_total").await >= 4);
    assert!(system.ws[0].metric("ws_redis_reconnects_total").await >= 4);

    for (service, name) in [(&system.publisher, "publisher"), (&system.ws[0], "ws-server")] {
        let delays = retry_delays(service, "redis");
        // Jitter makes single steps noisy; the schedule must still grow.
        assert!(delays[3] > delays[0], "{name} delays grow: {delays:?}");
        assert!(delays.iter().all(|d| *d <= 2000), "{name} delays stay under the cap: {delays:?}");
    }
}

#[tokio::test]
async fn publisher_listens_again_after_postgres_restarts() {
    let mut system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Before', 'Restart')").await;
    assert_eq!(client.next_json().await["order"]["customer_name"], "Before");

    system.pg.stop().await;
    wait_until(WAIT, "publisher reports postgres down", || async { system.publisher.readyz().await == 503 }).await;
    system.pg.restart().await;
    system.publisher.wait_ready().await;

    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('After', 'Restart')").await;
    assert_eq!(client.next_json().await["order"]["customer_name"], "After");
    assert!(system.publisher.metric("publisher_postgres_reconnects_total").await >= 1);
    let listens = system.publisher.logs(&["listening on postgres"]);
    assert!(listens.len() >= 2, "LISTEN issued again on a new session: {listens:#?}");
}

#[tokio::test]
async fn publisher_notices_a_killed_postgres_and_recovers() {
    let mut system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;

    system.pg.kill().await;
    wait_until(WAIT, "publisher reports postgres down", || async { system.publisher.readyz().await == 503 }).await;
    system.pg.restart().await;
    system.publisher.wait_ready().await;

    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('After', 'Kill')").await;
    let event = client.next_json_within(Duration::from_secs(10)).await.expect("event after postgres was killed");
    assert_eq!(event["order"]["customer_name"], "After");
}

#[tokio::test]
async fn a_frozen_redis_is_noticed_by_the_keepalive_and_recovered_from() {
    let system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;

    // Frozen: connections stay open and nothing answers, as behind a partition. Only a
    // keepalive with a deadline notices; a reader waiting for messages would wait forever.
    system.redis.freeze();
    wait_until(WAIT, "both services report redis down", || async {
        system.publisher.readyz().await == 503 && system.ws[0].readyz().await == 503
    })
    .await;
    system.redis.thaw();
    system.wait_ready().await;

    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('After', 'Thaw')").await;
    let event = client.next_json().await;
    assert_eq!(event["order"]["customer_name"], "After");
}

#[tokio::test]
async fn the_publisher_notices_a_killed_redis_within_about_a_second() {
    let mut system = System::start(1).await;
    system.redis.kill().await;
    let killed = std::time::Instant::now();
    // Nothing is written meanwhile: only the keepalive (1 s) can notice.
    wait_until(WAIT, "publisher reports redis down", || async { system.publisher.readyz().await == 503 }).await;
    let noticed = killed.elapsed();
    assert!(noticed < Duration::from_millis(2500), "noticed after {noticed:?}");
}

#[tokio::test]
async fn a_frozen_postgres_is_noticed_by_the_keepalive_and_recovered_from() {
    let system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    // Past its start (the first history is built with long statements): the steady state.
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Before', 'Freeze')").await;
    assert_eq!(client.next_json().await["order"]["customer_name"], "Before");

    // Frozen (postmaster and session processes): the connection stays open, nothing answers.
    system.pg.freeze();
    let frozen = std::time::Instant::now();
    wait_until(WAIT, "publisher reports postgres down", || async { system.publisher.readyz().await == 503 }).await;
    let noticed = frozen.elapsed();
    // Idle, the keepalive's 2 s deadline notices it; a freeze that catches a drain's statement
    // waits out the drain's 5 s deadline.
    assert!(noticed < Duration::from_secs(8), "a frozen postgres noticed after {noticed:?}");
    system.pg.thaw();
    system.publisher.wait_ready().await;

    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('After', 'Thaw')").await;
    let event = client.next_json().await;
    assert_eq!(event["order"]["customer_name"], "After");
}

#[tokio::test]
async fn a_refused_redis_password_keeps_both_services_up_and_retrying_until_the_server_accepts_it() {
    let pg = testkit::PgServer::start().await;
    let redis = testkit::RedisServer::start_with_password("old-secret");
    let redis = redis.await;
    // Credentials are rotated on the server first: the services already have the new one.
    let url = redis.url_with_password("new-secret");
    let publisher = e2e::spawn_publisher(e2e::publisher_config(&pg.url(), &url)).await;
    let ws = e2e::spawn_ws(e2e::ws_config(&url)).await;
    wait_until(WAIT, "both services retry the refused password", || async {
        retry_delays(&publisher, "redis").len() >= 2 && retry_delays(&ws, "redis").len() >= 2
    })
    .await;
    assert_eq!((publisher.readyz().await, ws.readyz().await), (503, 503), "up, and not ready");
    for service in [&publisher, &ws] {
        let refused = service.logs(&["session ended; reconnecting", "authentication failed"]);
        let line = refused.first().expect("the refusal is logged");
        assert!(line.contains(&format!("127.0.0.1:{}", redis.port())), "names the server: {line}");
        assert!(!line.contains("new-secret"), "never the password: {line}");
    }

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("new-secret").query_async(&mut conn).await.unwrap();
    publisher.wait_ready().await;
    ws.wait_ready().await;
    let mut client = WsClient::connect(&ws.ws_url()).await;
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('After', 'Rotation')").await;
    assert_eq!(client.next_json().await["order"]["customer_name"], "After");
}

#[tokio::test]
async fn an_acl_user_limited_to_the_pipelines_keys_and_channel_is_enough() {
    let pg = testkit::PgServer::start().await;
    let redis = testkit::RedisServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The README's example: the log's keys (one hash tag), the channel, and no admin commands.
    let acl =
        "on >orders-secret resetkeys ~{orders_updates}:* resetchannels &orders_updates +@all -@admin -@dangerous +info";
    let mut setuser = redis::cmd("ACL");
    setuser.arg("SETUSER").arg("orders");
    for part in acl.split(' ') {
        setuser.arg(part);
    }
    let () = setuser.query_async(&mut conn).await.unwrap();
    let url = format!("redis://orders:orders-secret@127.0.0.1:{}", redis.port());
    let publisher = e2e::spawn_publisher(e2e::publisher_config(&pg.url(), &url)).await;
    let ws = e2e::spawn_ws(e2e::ws_config(&url)).await;
    publisher.wait_ready().await;
    ws.wait_ready().await;
    let (mut client, _) = WsClient::connect_protocol(&ws.ws_url()).await;
    client.send_json(&serde_json::json!({"type": "subscribe", "snapshot": true})).await;
    assert_eq!(client.frames_until("subscribed").await[0]["type"], "snapshot");
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('Scoped', 'User')").await;
    assert_eq!(client.events(1).await[0]["order"]["customer_name"], "Scoped");
}

#[tokio::test]
async fn a_refused_postgres_password_keeps_the_publisher_up_and_retrying_until_it_matches() {
    let pg = testkit::PgServer::start().await;
    let redis = testkit::RedisServer::start().await;
    pg.psql("postgres", "CREATE ROLE app LOGIN SUPERUSER PASSWORD 'old-secret'").await;
    pg.require_password_for("app").await;
    let url = format!("postgres://app:new-secret@127.0.0.1:{}/postgres", pg.port());
    let publisher = e2e::spawn_publisher(e2e::publisher_config(&url, &redis.url())).await;
    wait_until(WAIT, "the publisher retries the refused password", || async {
        retry_delays(&publisher, "postgres").len() >= 2
    })
    .await;
    assert_eq!(publisher.readyz().await, 503, "up, and not ready");
    let refused = publisher.logs(&["session ended; reconnecting", "password authentication failed"]);
    let line = refused.first().expect("the refusal is logged");
    assert!(line.contains(&format!("127.0.0.1:{}", pg.port())) && !line.contains("new-secret"), "{line}");

    pg.psql("postgres", "ALTER ROLE app PASSWORD 'new-secret'").await;
    publisher.wait_ready().await;
}
