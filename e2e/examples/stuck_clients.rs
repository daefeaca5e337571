//! Memory of one ws-server replica with many clients that never read:
//! `cargo run --release -p e2e --example stuck_clients [CLIENTS] [ROWS] [ROW_BYTES]`
//! (defaults 1000, 2000, 20000).
//!
//! Starts private PostgreSQL and Redis and the publisher in this process, and the ws-server as
//! a child process at its default settings (this same executable, run as `stuck_clients
//! serve`: the ws-server's own `main`), so its resident memory is its own. Opens CLIENTS plain
//! WebSocket clients that never read and one that reads everything, then commits ROWS rows of
//! ROW_BYTES each (50 per transaction) and samples `VmRSS` in `/proc/<pid>/status` every 20 ms
//! until the reading client has every row and every stuck client has been closed as a slow
//! consumer. Prints the RSS before the clients, with them idle, the peak (`VmHWM`) and the end.

use std::{
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use e2e::{WsClient, publisher_config, spawn_publisher};
use sqlx::Connection;
use testkit::{PgServer, RedisServer, wait_until};

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        return protocol::service::main::<ws_server::WsServer>();
    }
    let arg = |n: usize, default: usize| std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (clients, rows, row_bytes) = (arg(1, 1000), arg(2, 2000), arg(3, 20_000));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    runtime.block_on(measure(clients, rows, row_bytes));
    ExitCode::SUCCESS
}

/// `VmRSS` / `VmHWM` of a process, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the ws-server is running");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> i64 {
    let (_, body) = e2e::http_get(addr, "/metrics").await.expect("/metrics answers");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} in /metrics"))
}

async fn measure(clients: usize, rows: usize, row_bytes: usize) {
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
    let _publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;

    let port = testkit::free_port();
    let exe = std::env::current_exe().expect("this executable's path");
    let env = [("REDIS_URL", redis.url()), ("PORT", port.to_string()), ("WS_BIND_ADDR", "127.0.0.1".to_owned())];
    let mut child = testkit::service_command(exe.to_str().expect("a UTF-8 path"), &env)
        .arg("serve")
        .spawn()
        .expect("start the ws-server");
    let pid = child.id().expect("the ws-server is running");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(e2e::WAIT, "ws-server ready", || async {
        e2e::http_get(addr, "/readyz").await.map(|r| r.0) == Some(200)
    })
    .await;
    let url = format!("ws://{addr}/ws");
    let started_kib = status_kib(pid, "VmRSS");

    let mut stuck = Vec::with_capacity(clients);
    for _ in 0..clients {
        stuck.push(WsClient::connect(&url).await);
    }
    let mut reader = WsClient::connect(&url).await;
    let idle_kib = status_kib(pid, "VmRSS");

    let peak = Arc::new(AtomicU64::new(idle_kib));
    let sampler = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                peak.fetch_max(status_kib(pid, "VmRSS"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    let began = Instant::now();
    let writer = tokio::spawn({
        let url = pg.url();
        async move {
            let mut db = sqlx::PgConnection::connect(&url).await.expect("connect");
            for chunk in (0..rows).collect::<Vec<_>>().chunks(50) {
                sqlx::query(
                    "INSERT INTO orders (customer_name, product_name) SELECT 'stuck', repeat('x', $2) FROM generate_series(1, $1)",
                )
                .bind(chunk.len() as i32)
                .bind(row_bytes as i32)
                .execute(&mut db)
                .await
                .expect("insert");
            }
        }
    });
    for _ in 0..rows {
        reader.next_json().await;
    }
    let delivered = began.elapsed();
    writer.await.expect("the writer finished");
    wait_until(Duration::from_secs(60), "every stuck client closed", || async {
        metric(addr, "ws_dropped_slow_total").await >= clients as i64
    })
    .await;
    sampler.abort();
    let hwm_kib = status_kib(pid, "VmHWM");
    let end_kib = status_kib(pid, "VmRSS");
    let closed = metric(addr, "ws_dropped_slow_total").await;
    report(
        clients,
        rows,
        row_bytes,
        [started_kib, idle_kib, peak.load(Ordering::Relaxed), hwm_kib, end_kib],
        closed,
        delivered,
    );
    drop(stuck);
    // Killing the child is all the cleanup it needs; it may already be gone.
    let _ = child.kill().await;
}

#[allow(clippy::print_stdout)] // The report is this tool's output.
fn report(clients: usize, rows: usize, row_bytes: usize, kib: [u64; 5], closed: i64, delivered: Duration) {
    let mib = |k: u64| k as f64 / 1024.0;
    let [started, idle, peak, hwm, end] = kib;
    println!(
        "{clients} stuck clients, {rows} rows of {row_bytes} bytes: reader had every row after {:.1}s; {closed} closed as slow consumers",
        delivered.as_secs_f64()
    );
    println!(
        "ws-server VmRSS: {:.1} MiB at start, {:.1} MiB with the clients idle, {:.1} MiB peak sampled (VmHWM {:.1} MiB), {:.1} MiB at the end",
        mib(started),
        mib(idle),
        mib(peak),
        mib(hwm),
        mib(end)
    );
}
