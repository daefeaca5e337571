//! Rough commit → client latency and burst throughput:
//! `cargo run --release -p e2e --example latency [N] [BURST]`.
//!
//! Starts private PostgreSQL and Redis, the publisher and one ws-server in-process, then
//! commits N single-row INSERTs one after another and times, for each, from the moment the
//! COMMIT returned to the moment a WebSocket client had the event; then commits BURST rows in
//! one statement and times until the client has them all. (The project's benchmark will
//! replace this with CPU, memory and many-client figures too.)

use std::time::{Duration, Instant};

use e2e::{System, WsClient};
use sqlx::Connection;

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let burst: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let system = System::start(1).await;
    let mut client = WsClient::connect(&system.ws[0].ws_url()).await;
    let mut db = sqlx::PgConnection::connect(&system.pg.url()).await.expect("connect");

    let mut after_commit = Vec::with_capacity(n);
    let mut whole = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        sqlx::query("INSERT INTO orders (customer_name, product_name) VALUES ($1, 'latency probe')")
            .bind(format!("c{i}"))
            .execute(&mut db)
            .await
            .expect("insert");
        let committed = Instant::now();
        let event = client.next_json().await;
        assert_eq!(event["order"]["customer_name"], format!("c{i}"));
        after_commit.push(committed.elapsed());
        whole.push(started.elapsed());
    }
    report("COMMIT returned → client has event", &mut after_commit);
    report("INSERT sent → client has event", &mut whole);

    let started = Instant::now();
    sqlx::query(
        "INSERT INTO orders (customer_name, product_name) SELECT 'burst' || g, 'p' FROM generate_series(1, $1) g",
    )
    .bind(burst as i64)
    .execute(&mut db)
    .await
    .expect("burst insert");
    let committed = started.elapsed();
    for _ in 0..burst {
        client.next_json().await;
    }
    let all = started.elapsed();
    print_burst(burst, committed, all);
}

#[allow(clippy::print_stdout)] // The report is this tool's output.
fn print_burst(n: usize, committed: Duration, all: Duration) {
    println!(
        "burst of {n} rows in one transaction: committed in {:.0}ms, all at the client after {:.0}ms ({:.0} events/s end to end)",
        committed.as_secs_f64() * 1000.0,
        all.as_secs_f64() * 1000.0,
        n as f64 / all.as_secs_f64()
    );
}

#[allow(clippy::print_stdout)] // The report is this tool's output.
fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(samples[samples.len() - 1])
    );
}
