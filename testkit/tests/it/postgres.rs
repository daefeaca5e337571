//! `PgServer`: queries, databases, and data surviving stop, kill and restart.

use std::time::Duration;

use testkit::{PgServer, wait_until};

use crate::helpers::accepts_connections;

#[tokio::test]
async fn postgres_answers_queries_on_its_port() {
    testkit::init_test_logging();
    let pg = PgServer::start().await;

    assert_eq!(pg.psql("postgres", "SELECT 1 + 1").await, "2");
    assert_eq!(pg.psql("postgres", "SHOW port").await, pg.port().to_string());
    assert_eq!(pg.url(), format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port()));
    assert!(accepts_connections(pg.port()).await);
    assert!(pg.log_path().exists());
}

#[tokio::test]
async fn postgres_creates_databases() {
    let pg = PgServer::start().await;

    pg.create_database("orders_test").await;

    assert_eq!(pg.psql("orders_test", "SELECT current_database()").await, "orders_test");
    assert!(pg.url_for("orders_test").ends_with(&format!(":{}/orders_test", pg.port())));
    let rows = pg.psql("postgres", "SELECT 'a', 1 UNION ALL SELECT 'b', 2").await;
    assert_eq!(rows, "a|1\nb|2");
}

#[tokio::test]
#[should_panic(expected = "does_not_exist")]
async fn psql_panics_with_the_error() {
    let pg = PgServer::start().await;
    pg.psql("postgres", "SELECT * FROM does_not_exist").await;
}

#[tokio::test]
async fn restarted_postgres_keeps_its_port_and_data() {
    let mut pg = PgServer::start().await;
    let port = pg.port();
    pg.psql("postgres", "CREATE TABLE t (v text); INSERT INTO t VALUES ('kept')").await;

    pg.stop().await;
    assert!(!accepts_connections(port).await, "stopped server still listens");
    pg.restart().await;

    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("postgres", "SELECT v FROM t").await, "kept");
}

#[tokio::test]
async fn killed_postgres_recovers_committed_data_on_restart() {
    let mut pg = PgServer::start().await;
    pg.psql("postgres", "CREATE TABLE t (v int); INSERT INTO t VALUES (42)").await;

    pg.kill().await;
    assert!(!accepts_connections(pg.port()).await, "killed server still listens");
    pg.restart().await;

    assert_eq!(pg.psql("postgres", "SELECT v FROM t").await, "42");
}

#[tokio::test]
async fn postgres_restarts_while_running_and_after_repeated_kills() {
    let mut pg = PgServer::start().await;
    pg.restart().await;
    for _ in 0..2 {
        // A session is open during the kill, so the postmaster has a backend to take down too.
        let session = pg.psql("postgres", "SELECT pg_sleep(0)");
        session.await;
        pg.kill().await;
        pg.restart().await;
    }
    assert_eq!(pg.psql("postgres", "SELECT 'up'").await, "up");
}

#[tokio::test]
async fn dropped_postgres_stops_listening() {
    let pg = PgServer::start().await;
    let port = pg.port();
    let dir = pg.log_path().parent().unwrap().to_path_buf();

    drop(pg);

    assert!(!accepts_connections(port).await);
    wait_until(Duration::from_secs(5), "the data directory to be removed", || {
        let exists = dir.exists();
        async move { !exists }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_servers_start_in_parallel() {
    let servers = futures_join(4).await;
    let mut ports: Vec<u16> = servers.iter().map(PgServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    for pg in &servers {
        assert_eq!(pg.psql("postgres", "SHOW port").await, pg.port().to_string());
    }
}

async fn futures_join(n: usize) -> Vec<PgServer> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        set.spawn(PgServer::start());
    }
    let mut servers = Vec::new();
    while let Some(server) = set.join_next().await {
        servers.push(server.unwrap());
    }
    servers
}
