//! Changes made with SQL reach WebSocket clients: every operation, every replica, in order.

use e2e::{System, WAIT, WsClient, publisher_config, spawn_publisher};
use serde_json::{Value, json};
use testkit::{PgServer, RedisServer, wait_until};

#[tokio::test]
async fn insert_update_delete_reach_clients_on_every_replica_in_commit_order() {
    let system = System::start(3).await;
    let mut clients = Vec::new();
    for ws in &system.ws {
        clients.push(WsClient::connect(&ws.ws_url()).await);
        clients.push(WsClient::connect_protocol(&ws.ws_url()).await.0);
    }

    system
        .sql(
            "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('Ada', 'Lamp', 'pending', 25.50)",
        )
        .await;
    system.sql("UPDATE orders SET status = 'shipped' WHERE customer_name = 'Ada'").await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Bob', 'Desk')").await;
    system.sql("DELETE FROM orders WHERE customer_name = 'Ada'").await;
    // One transaction, several rows: commit order inside it is statement order.
    system.sql("BEGIN; UPDATE orders SET amount = 1 WHERE customer_name = 'Bob'; UPDATE orders SET amount = 2 WHERE customer_name = 'Bob'; COMMIT;").await;

    for client in &mut clients {
        let events = client.events(6).await;
        let ops: Vec<_> = events.iter().map(|e| e["operation"].as_str().unwrap().to_owned()).collect();
        assert_eq!(ops, ["INSERT", "UPDATE", "INSERT", "DELETE", "UPDATE", "UPDATE"]);

        let (insert, update, delete) = (&events[0], &events[1], &events[3]);
        assert_eq!(insert["table"], "orders");
        assert_eq!(insert["order"]["customer_name"], "Ada");
        assert_eq!(insert["order"]["amount"], json!(25.50));
        assert!(insert.get("old").is_none());
        assert_eq!(update["order"]["status"], "shipped");
        assert_eq!(update["old"]["status"], "pending");
        assert_eq!(delete["order"]["customer_name"], "Ada", "DELETE carries the old row");
        assert_eq!(events[5]["order"]["amount"], json!(2.0));
        assert_eq!(events[5]["old"]["amount"], json!(1.0));

        let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().expect("event id")).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "event ids increase in commit order: {ids:?}");
    }
}

#[tokio::test]
async fn the_original_design_sql_works_verbatim() {
    let system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;

    system.sql("INSERT INTO orders (customer_name, product_name, status) VALUES ('John Doe', 'Premium Widget', 'pending');").await;
    system.sql("UPDATE orders SET status = 'completed' WHERE id = 1;").await;
    system.sql("DELETE FROM orders WHERE id = 1;").await;

    let events = client.events(3).await;
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e["operation"].clone(), e["order"]["id"].clone(), e["order"]["status"].clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (json!("INSERT"), json!(1), json!("pending")),
            (json!("UPDATE"), json!(1), json!("completed")),
            (json!("DELETE"), json!(1), json!("completed")),
        ]
    );
    let row = &events[0]["order"];
    for column in ["id", "customer_name", "product_name", "status", "amount", "created_at", "updated_at"] {
        assert!(row.get(column).is_some(), "column {column} missing from {row}");
    }
    assert_ne!(events[1]["order"]["updated_at"], Value::Null);
}

#[tokio::test]
async fn a_20kb_row_arrives_whole() {
    let system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    let big = "x".repeat(20_000);

    system.sql(&format!("INSERT INTO orders (customer_name, product_name) VALUES ('Big', '{big}')")).await;
    system.sql("UPDATE orders SET status = 'packed' WHERE customer_name = 'Big'").await;

    let events = client.events(2).await;
    assert_eq!(events[0]["order"]["product_name"].as_str().map(str::len), Some(20_000));
    assert_eq!(events[1]["order"]["product_name"].as_str().map(str::len), Some(20_000));
    assert_eq!(events[1]["old"]["status"], "pending");
    // NOTIFY could not carry these (over 8000 bytes): the trigger sent a reference.
    let refs = system.sql("SELECT count(*) FROM realtime_events WHERE octet_length(payload::text) > 8000").await;
    assert_eq!(refs, "2");
}

#[tokio::test]
async fn a_hand_made_database_from_the_original_design_is_upgraded_in_place() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    pg.create_database("legacy").await;
    pg.psql("legacy", include_str!("fixtures/legacy_schema.sql")).await;

    let publisher = spawn_publisher(publisher_config(&pg.url_for("legacy"), &redis.url())).await;
    publisher.wait_ready().await;
    let ws = e2e::spawn_ws(e2e::ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let mut client = WsClient::connect(&ws.ws_url()).await;

    // Rows kept, columns upgraded, the old trigger replaced (one event per change, not two).
    let rows =
        pg.psql("legacy", "SELECT id, customer_name, product_name, status, amount FROM orders ORDER BY id").await;
    assert_eq!(rows.trim(), "1|Ann|Widget|pending|10.50\n2|Bob|Gadget|shipped|");
    let types = pg
        .psql("legacy", "SELECT data_type FROM information_schema.columns WHERE table_name = 'orders' AND column_name IN ('id', 'created_at') ORDER BY column_name")
        .await;
    assert_eq!(types.trim(), "timestamp with time zone\nbigint");

    pg.psql("legacy", &format!("UPDATE orders SET product_name = '{}' WHERE id = 1", "y".repeat(300))).await;
    pg.psql(
        "legacy",
        "INSERT INTO orders (customer_name, product_name, status) VALUES ('John Doe', 'Premium Widget', 'pending')",
    )
    .await;
    let events = client.events(2).await;
    assert_eq!(
        (events[0]["operation"].as_str(), events[0]["old"]["product_name"].as_str()),
        (Some("UPDATE"), Some("Widget"))
    );
    assert_eq!((events[1]["operation"].as_str(), events[1]["order"]["id"].as_i64()), (Some("INSERT"), Some(3)));

    // With the project's trigger installed, a two-field payload is no committed change: dropped.
    pg.psql(
        "legacy",
        r#"SELECT pg_notify('orders_channel', '{"operation": "DELETE", "order": {"id": 2, "status": "shipped"}}')"#,
    )
    .await;
    pg.psql("legacy", "UPDATE orders SET status = 'after' WHERE id = 2").await;
    let next = client.next_json().await;
    assert_eq!((next["operation"].as_str(), next["order"]["status"].as_str()), (Some("UPDATE"), Some("after")));
    // The very next position: had the old trigger survived, or the payload been taken, another
    // event would sit in between.
    assert_eq!(next["pos"].as_u64(), events[1]["pos"].as_u64().map(|p| p + 1), "no legacy-shaped event");
    assert_eq!(publisher.metric("publisher_notifications_rejected_total").await, 1);
    drop(ws);
    drop(publisher);
}

#[tokio::test]
async fn a_notify_that_is_not_a_committed_change_never_becomes_a_row() {
    let system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Real', 'Row')").await;
    assert_eq!(client.next_json().await["order"]["customer_name"], "Real");

    // Anyone who may connect can NOTIFY; the outbox is what the trigger wrote in the transaction.
    let forged = r#"{"operation":"INSERT","order":{"id":998,"customer_name":"Forged"}}"#;
    system.sql(&format!("SELECT pg_notify('orders_channel', '{forged}')")).await;
    let with_id = r#"{"id":999999,"table":"orders","operation":"INSERT","order":{"id":997,"customer_name":"Forged"}}"#;
    system.sql(&format!("SELECT pg_notify('orders_channel', '{with_id}')")).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Next', 'Row')").await;

    let next = client.next_json().await;
    assert_eq!(next["order"]["customer_name"], "Next", "nothing forged reached the client: {next}");
    let publisher = &system.publisher;
    assert_eq!(publisher.metric("publisher_notifications_rejected_total").await, 1);
    assert_eq!(publisher.logs(&["rejected a notification", "Forged"]).len(), 1);
    let state = e2e::history::state(&system.redis.url()).await;
    assert_eq!(state, e2e::history::table(&system.pg).await, "the snapshot state is the table: {state:?}");
}

#[tokio::test]
async fn legacy_mode_relays_two_field_payloads_but_the_state_follows_the_table() {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let mut config = publisher_config(&pg.url(), &redis.url());
    config.legacy_payloads = true;
    let publisher = spawn_publisher(config).await;
    publisher.wait_ready().await;
    let ws = e2e::spawn_ws(e2e::ws_config(&redis.url())).await;
    ws.wait_ready().await;
    let mut client = WsClient::connect(&ws.ws_url()).await;
    pg.psql("postgres", "INSERT INTO orders (customer_name, product_name) VALUES ('Ann', 'Widget')").await;
    assert_eq!(client.next_json().await["order"]["customer_name"], "Ann");

    // A hand-made trigger's payloads: relayed (legacy mode trusts NOTIFY), but a row the table
    // does not have never enters snapshots, and a row it has enters as the table holds it.
    let forged = r#"{"operation":"INSERT","order":{"id":998,"customer_name":"Ghost"}}"#;
    pg.psql("postgres", &format!("SELECT pg_notify('orders_channel', '{forged}')")).await;
    let stale = r#"{"operation":"UPDATE","order":{"id":1,"customer_name":"Stale"}}"#;
    pg.psql("postgres", &format!("SELECT pg_notify('orders_channel', '{stale}')")).await;
    let events = client.events(2).await;
    assert_eq!(events[0]["order"]["customer_name"], "Ghost");
    assert_eq!(events[1]["order"]["customer_name"], "Stale");
    wait_until(WAIT, "both legacy events appended", || async {
        e2e::history::log_frames(&redis.url()).await.len() == 3
    })
    .await;
    let state = e2e::history::state(&redis.url()).await;
    assert_eq!(state, e2e::history::table(&pg).await, "the state follows the table, not the payloads: {state:?}");
    drop(ws);
    drop(publisher);
}

#[tokio::test]
async fn malformed_and_foreign_payloads_are_skipped_with_a_log_line() {
    let system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;

    system.sql("SELECT pg_notify('orders_channel', 'not json')").await;
    system.sql(r#"SELECT pg_notify('orders_channel', '{"hello": "world"}')"#).await;
    system.sql(r#"SELECT pg_notify('orders_channel', '{"operation": "TRUNCATE", "order": {}}')"#).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('After', 'Garbage')").await;

    let event = client.next_json().await;
    assert_eq!(event["order"]["customer_name"], "After", "the next real event arrives, nothing else does");
    let publisher = &system.publisher;
    wait_until(WAIT, "three skip log lines", || async {
        publisher.logs(&["skipping malformed notification"]).len() == 3
    })
    .await;
    assert_eq!(publisher.logs(&["skipping malformed notification", "payload=not json"]).len(), 1);
    assert_eq!(system.publisher.metric("publisher_skipped_total").await, 3);

    // Foreign messages published straight to Redis are skipped by ws-server too.
    let client_redis = redis::Client::open(system.redis.url()).unwrap();
    let mut conn = client_redis.get_multiplexed_async_connection().await.unwrap();
    let _: i64 =
        redis::cmd("PUBLISH").arg("orders_updates").arg("{\"not\":\"an event\"}").query_async(&mut conn).await.unwrap();
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Next', 'One')").await;
    assert_eq!(client.next_json().await["order"]["customer_name"], "Next");
    let ws = &system.ws[0];
    wait_until(WAIT, "ws-server skip log", || async {
        !ws.logs(&["skipping message that is not an event"]).is_empty()
    })
    .await;
}
