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
