//! The CI smoke run: a real pipeline (private PostgreSQL and Redis, the publisher and two
//! replicas, from the e2e harness), and the real `orders-bench` binary driving it for a few
//! seconds. It checks that the benchmark works and that nothing was lost or duplicated; it
//! asserts no timing figure (this machine's timings are not the project's to promise).

use std::time::Duration;

use e2e::System;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_smoke_run_delivers_every_write_once_and_reports_it() {
    let system = tokio::time::timeout(Duration::from_secs(60), System::start(2)).await.expect("system starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let (clients, rate, secs) = (6u64, 40u64, 3u64);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_orders-bench"));
    cmd.arg("latency")
        .args(["--clients", &clients.to_string(), "--rate", &rate.to_string()])
        .args(["--duration", &format!("{secs}s"), "--drain", "5s", "--writers", "2"])
        .args(["--database-url", &system.pg.url()])
        // Two clients on each replica's WebSocket, two on the first one's SSE.
        .args(["--url", &system.ws[0].ws_url(), "--url", &system.ws[1].ws_url()])
        .args(["--url", &format!("http://{}/events", system.ws[0].addr)])
        // The servers run in this test's process: watch it.
        .args(["--watch-pid", &format!("system={}", std::process::id())])
        .arg("--json")
        .arg(&json)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(40), cmd.output())
        .await
        .expect("orders-bench finishes within 40s")
        .expect("orders-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "orders-bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("latency"), "one line per scenario: {stdout}");

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report is written")).expect("the report is JSON");
    assert_eq!(report["clients_connected"], clients, "{report:#}");
    let round = &report["rounds"][0];
    let written = rate * secs;
    assert_eq!(round["writes"]["attempted"], written, "{round:#}");
    assert_eq!(round["writes"]["errors"], 0, "{round:#}");
    assert_eq!(round["expected"], written * clients, "{round:#}");
    assert_eq!(round["deliveries"], written * clients, "{round:#}");
    assert_eq!(round["lost"], 0, "{round:#}");
    assert_eq!(round["duplicates"], 0, "{round:#}");
    assert_eq!(round["closed_clients"], 0, "{round:#}");
    for p in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(round["latency_ms"][p].as_f64().is_some_and(|v| v >= 0.0), "{p}: {round:#}");
    }
    let cpu = &round["watched"][0]["cpu_s_per_1000_deliveries"];
    assert!(cpu.as_f64().is_some_and(|v| v > 0.0), "the watched process's CPU is read: {round:#}");
    assert!(report["machine_before"]["busy_pct"].as_f64().is_some(), "{report:#}");
    let during = round["machine_busy_pct"].as_f64().expect("how busy the machine was during the round");
    assert!((0.0..=100.0).contains(&during) && round["wall_s"].as_f64() > Some(0.0), "{round:#}");
}
