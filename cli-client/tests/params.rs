//! `--filter`, `--select`, `--table`, `--token` / `ORDERS_TOKEN` on `watch`, against real
//! ws-servers (one with auth on): they mean what the server's parameters mean, and a refusal
//! is one clear line and exit code 2.

mod support;

use std::{process::Stdio, time::Duration};

use e2e::{System, WAIT};
use serde_json::{Value, json};
use testkit::terminate;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    time::timeout,
};

/// Starts `cli-client watch --json args…`, waits for `connected`, runs `write`, and returns
/// the first `n` events printed; then SIGTERM and exit code 0.
async fn watch_events(system: &System, args: &[&str], env: &[(&str, &str)], sql: &[&str], n: usize) -> Vec<Value> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cli-client"));
    command.args(["watch", "--json"]).args(args).env_remove("ORDERS_TOKEN");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let connected = timeout(WAIT, stderr.next_line()).await.expect("status in time").unwrap().unwrap_or_default();
    assert!(connected.starts_with("connected to"), "{connected}");
    for statement in sql {
        system.sql(statement).await;
    }
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    for _ in 0..n {
        let line = timeout(WAIT, stdout.next_line()).await.expect("an event in time").unwrap().expect("stdout open");
        events.push(serde_json::from_str(&line).expect("one JSON object per line"));
    }
    terminate(child.id().unwrap());
    let status = timeout(Duration::from_secs(5), child.wait()).await.expect("exits in time").unwrap();
    assert_eq!(status.code(), Some(0));
    events
}

const PENDING: &str =
    "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('Ann', 'Lamp', 'pending', 120)";
const DONE: &str =
    "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('Bob', 'Desk', 'completed', 5)";
const MARKER: &str =
    "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('Cy', 'Marker', 'pending', 200)";

#[tokio::test]
async fn filter_and_select_mean_what_the_servers_parameters_mean() {
    let system = System::start(1).await;
    let url = system.ws[0].ws_url();
    let args = ["--url", &url, "--filter", "status=eq.pending", "--filter", "amount=gte.100", "--select", "id,status"];
    let events = watch_events(&system, &args, &[], &[DONE, PENDING, DONE, MARKER], 2).await;
    let orders: Vec<&Value> = events.iter().map(|e| &e["order"]).collect();
    // Only the matching rows, only the selected columns (`id` always comes along).
    assert_eq!(orders, [&json!({"id": 2, "status": "pending"}), &json!({"id": 4, "status": "pending"})], "{events:?}");

    // A filter whose value needs encoding (spaces, commas, quotes, parentheses) reaches the
    // server intact, and `--table` narrows by table.
    let args = ["--url", &url, "--filter", r#"customer_name=in.("Cy, Jr",Bob)"#, "--table", "orders"];
    let named = "INSERT INTO orders (customer_name, product_name) VALUES ('Cy, Jr', 'Chair')";
    let events = watch_events(&system, &args, &[], &[PENDING, named], 1).await;
    assert_eq!(events[0]["order"]["customer_name"], "Cy, Jr", "{events:?}");
}

#[tokio::test]
async fn tokens_from_the_flag_or_orders_token_open_an_auth_server_and_refusals_exit_2() {
    let system = System::start(0).await;
    let ws = support::auth_ws(&system.redis.url()).await;
    let url = ws.ws_url();

    // No token: the server's 401, as one line, with what to do; exit 2.
    let run = support::run(&["watch", "--url", &url], &[]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    let line = run.stderr.trim();
    assert!(!line.contains('\n'), "one line: {line}");
    assert!(line.contains("HTTP 401") && line.contains("no token") && line.contains("--token"), "{line}");

    // A bad filter: the server's 400, naming the problem.
    let token = support::token("ops", json!({}));
    let run = support::run(&["watch", "--url", &url, "--token", &token, "--filter", "status"], &[]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("HTTP 400") && run.stderr.contains("--filter"), "{run:?}");

    // Asking for a column outside the token's `select`: 403.
    let narrow = support::token("ops", json!({"select": ["id", "status"]}));
    let run =
        support::run(&["watch", "--url", &url, "--select", "id,amount"], &[("ORDERS_TOKEN", narrow.as_str())]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("HTTP 403"), "{run:?}");
    assert!(!run.stderr.contains(&narrow), "the token is never printed: {run:?}");

    // A durable consumer needs a token with `sub` to scope its name: the server's 400, exit 2.
    let anonymous = support::token_without_sub();
    let run = support::run(&["watch", "--url", &url, "--token", &anonymous, "--consumer", "ops-1"], &[]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(run.stderr.contains("HTTP 400") && run.stderr.contains("consumer"), "{run:?}");

    // A good token through ORDERS_TOKEN (with a durable consumer its `sub` scopes): events
    // arrive, within the token's scope.
    let scoped = support::token("ops", json!({"filter": ["customer_name=eq.Cy"]}));
    let args = ["--url", &url, "--consumer", "ops-1"];
    let events = watch_events(&system, &args, &[("ORDERS_TOKEN", scoped.as_str())], &[PENDING, MARKER], 1).await;
    assert_eq!(events[0]["order"]["customer_name"], "Cy", "{events:?}");
    ws.stop().await;
}
