//! `cli-client watch` resuming: after a replica goes away (on another replica, from the last
//! position it printed), from `--since`, and starting with `--snapshot`. The shipped binary
//! against the real pipeline.

use std::{process::Stdio, time::Duration};

use e2e::{System, WAIT};
use serde_json::Value;
use testkit::terminate;
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{Child, ChildStdout, Command},
    sync::mpsc,
    time::timeout,
};

/// A running `cli-client watch`, its stdout read line by line and its stderr collected.
struct Watcher {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: mpsc::UnboundedReceiver<String>,
    /// Every stderr line read so far.
    status: Vec<String>,
}

impl Watcher {
    /// Starts `cli-client watch <args>` and waits until it says it is connected.
    async fn start(args: &[&str]) -> Watcher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cli-client"))
            .arg("watch")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cli-client starts");
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (tx, stderr) = mpsc::unbounded_channel();
        // Drains stderr so the child never blocks on it; ends with the child.
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr_lines.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut watcher = Watcher { child, stdout, stderr, status: Vec::new() };
        watcher.wait_status("connected to").await;
        watcher
    }

    /// Waits for a stderr line containing `needle`; returns it.
    async fn wait_status(&mut self, needle: &str) -> String {
        if let Some(line) = self.status.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let found = timeout(WAIT, async {
            while let Some(line) = self.stderr.recv().await {
                self.status.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!("stderr ended without {needle:?}; it said:\n{}", self.status.join("\n")),
            Err(_) => panic!("no {needle:?} on stderr within {WAIT:?}; it said:\n{}", self.status.join("\n")),
        }
    }

    /// Every stderr line so far, one per line, for failure messages.
    fn status_so_far(&mut self) -> String {
        while let Ok(line) = self.stderr.try_recv() {
            self.status.push(line);
        }
        self.status.join("\n")
    }

    /// The next stdout line, parsed as JSON.
    async fn next_json(&mut self) -> Value {
        let line = match timeout(WAIT, self.stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(other) => panic!("stdout ended ({other:?}); stderr:\n{}", self.status_so_far()),
            Err(_) => panic!("no stdout line within {WAIT:?}; stderr:\n{}", self.status_so_far()),
        };
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"))
    }

    /// `n` event lines.
    async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut events = Vec::new();
        for _ in 0..n {
            let event = self.next_json().await;
            assert_eq!(event["type"], "event", "{event}");
            events.push(event);
        }
        events
    }

    /// Asserts that nothing was printed after event `last` (nothing twice, nothing extra): a
    /// row committed now is the next line, at the very next position. Returns its event.
    async fn assert_next_after(&mut self, system: &System, last: &Value) -> Value {
        insert(system, &["Marker"]).await;
        let next = self.next_json().await;
        let (epoch, pos) = position(last);
        assert_eq!((customer(&next), position(&next)), ("Marker", (epoch, pos + 1)), "printed more before the marker");
        next
    }

    /// SIGTERM; asserts exit code 0 and returns every stderr line.
    async fn stop(mut self) -> Vec<String> {
        terminate(self.child.id().expect("still running"));
        let status = timeout(Duration::from_secs(5), self.child.wait()).await.expect("exits in time").unwrap();
        assert_eq!(status.code(), Some(0), "stderr:\n{}", self.status.join("\n"));
        while let Ok(Some(line)) = timeout(Duration::from_secs(5), self.stderr.recv()).await {
            self.status.push(line);
        }
        self.status
    }
}

/// `epoch:pos` of an event or snapshot frame.
fn position(frame: &Value) -> (String, u64) {
    let (epoch, pos) = match frame["type"].as_str() {
        Some("snapshot") => (&frame["position"]["epoch"], &frame["position"]["pos"]),
        _ => (&frame["epoch"], &frame["pos"]),
    };
    (
        epoch.as_str().unwrap_or_else(|| panic!("no epoch in {frame}")).to_owned(),
        pos.as_u64().unwrap_or_else(|| panic!("no pos in {frame}")),
    )
}

fn customer(event: &Value) -> &str {
    event["order"]["customer_name"].as_str().unwrap_or_default()
}

async fn insert(system: &System, customers: &[&str]) {
    for name in customers {
        system.sql(&format!("INSERT INTO orders (customer_name, product_name) VALUES ('{name}', 'Widget')")).await;
    }
}

/// Asserts one epoch and consecutive positions: no gap, no duplicate.
fn assert_consecutive(events: &[Value]) {
    let positions: Vec<(String, u64)> = events.iter().map(position).collect();
    let (epoch, first) = positions[0].clone();
    let expected: Vec<(String, u64)> = (0..events.len() as u64).map(|i| (epoch.clone(), first + i)).collect();
    assert_eq!(positions, expected, "positions must follow each other: {events:#?}");
}

#[tokio::test]
async fn after_its_replica_stops_it_resumes_on_the_next_url_with_no_gap_and_no_duplicate() {
    let mut system = System::start(2).await;
    let (url1, url2) = (system.ws[0].ws_url(), system.ws[1].ws_url());
    let mut watcher = Watcher::start(&["--json", "--url", &format!("{url1},{url2}")]).await;
    let first = watcher.wait_status("connected to").await;
    assert!(first.starts_with(&format!("connected to {url1} ")), "starts with the first URL: {first}");

    insert(&system, &["Before 1", "Before 2", "Before 3"]).await;
    let mut events = watcher.events(3).await;
    let (epoch, last_before) = position(&events[2]);

    // Replica 1 goes away (its clients get 1001); rows committed meanwhile must not be lost.
    system.ws.remove(0).stop().await;
    insert(&system, &["Missed 1", "Missed 2", "Missed 3"]).await;
    events.extend(watcher.events(3).await);
    watcher.wait_status(&format!("connected to {url2} ")).await;
    let resumed = watcher.wait_status("resumed from").await;
    assert!(resumed.starts_with(&format!("resumed from {epoch}:{last_before} on server ")), "{resumed}");

    insert(&system, &["Live 1", "Live 2", "Live 3"]).await;
    events.extend(watcher.events(3).await);
    let marker = watcher.assert_next_after(&system, &events[8]).await;

    let names: Vec<&str> = events.iter().map(customer).collect();
    assert_eq!(
        names,
        ["Before 1", "Before 2", "Before 3", "Missed 1", "Missed 2", "Missed 3", "Live 1", "Live 2", "Live 3"]
    );
    assert_consecutive(&events);

    let (_, last) = position(&marker);
    let status = watcher.stop().await;
    assert!(status.iter().any(|l| l.contains("1001")), "the replica said it was going away: {status:#?}");
    let hint = format!("last position: {epoch}:{last} (resume with --since {epoch}:{last})");
    assert_eq!(status.last(), Some(&hint), "{status:#?}");
}

#[tokio::test]
async fn since_replays_what_followed_a_position_then_goes_live() {
    let system = System::start(1).await;
    let url = system.ws[0].ws_url();
    let mut first_run = Watcher::start(&["--json", "--url", &url]).await;
    insert(&system, &["One", "Two", "Three"]).await;
    let seen = first_run.events(3).await;
    let status = first_run.stop().await;
    let (epoch, one) = position(&seen[0]);
    let (_, three) = position(&seen[2]);
    assert!(status.contains(&format!("last position: {epoch}:{three} (resume with --since {epoch}:{three})")));

    insert(&system, &["Offline"]).await;
    let since = format!("{epoch}:{one}");
    let mut second_run = Watcher::start(&["--json", "--url", &url, "--since", &since]).await;
    let mut events = second_run.events(3).await;
    assert_eq!(events.iter().map(customer).collect::<Vec<_>>(), ["Two", "Three", "Offline"]);
    let resumed = second_run.wait_status("resumed from").await;
    assert!(resumed.starts_with(&format!("resumed from {since} on server ")), "{resumed}");
    insert(&system, &["Live"]).await;
    events.extend(second_run.events(1).await);
    assert_eq!(customer(&events[3]), "Live");
    second_run.assert_next_after(&system, &events[3]).await;
    assert_eq!(position(&events[0]), (epoch.clone(), one + 1));
    assert_consecutive(&events);
    second_run.stop().await;
}

#[tokio::test]
async fn snapshot_prints_the_current_rows_then_the_changes_after_them() {
    let system = System::start(1).await;
    let url = system.ws[0].ws_url();
    // Through the pipeline first, so that the snapshot is sure to hold both rows.
    let mut primer = Watcher::start(&["--json", "--url", &url]).await;
    insert(&system, &["Ann", "Bob"]).await;
    let primed = primer.events(2).await;
    primer.stop().await;
    let (epoch, bob) = position(&primed[1]);

    let mut json = Watcher::start(&["--json", "--snapshot", "--url", &url]).await;
    let snapshot = json.next_json().await;
    assert_eq!(snapshot["type"], "snapshot", "{snapshot}");
    assert_eq!(position(&snapshot), (epoch.clone(), bob));
    let mut names: Vec<&str> =
        snapshot["rows"].as_array().unwrap().iter().map(|r| r["order"]["customer_name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(names, ["Ann", "Bob"]);
    json.wait_status(&format!("--- live from {epoch}:{bob} ---")).await;

    let mut human = Watcher::start(&["--snapshot", "--no-color", "--url", &url]).await;
    let mut lines = Vec::new();
    for _ in 0..3 {
        lines.push(timeout(WAIT, human.stdout.next_line()).await.expect("in time").unwrap().unwrap());
    }
    assert_eq!(lines[0], format!("=== snapshot at {epoch}:{bob}: 2 rows ==="));
    assert!(lines[1].starts_with("SNAPSHOT #") && lines[1].contains("Ann · Widget"), "{lines:?}");
    assert!(lines[2].starts_with("SNAPSHOT #") && lines[2].contains("Bob · Widget"), "{lines:?}");

    insert(&system, &["Cid"]).await;
    let event = json.next_json().await;
    assert_eq!((customer(&event), position(&event)), ("Cid", (epoch.clone(), bob + 1)));
    let line = timeout(WAIT, human.stdout.next_line()).await.expect("in time").unwrap().unwrap();
    assert!(line.contains("INSERT") && line.contains("Cid"), "{line}");
    json.assert_next_after(&system, &event).await;
    json.stop().await;
    human.stop().await;
}

#[tokio::test]
async fn a_position_from_another_history_is_reset_to_a_snapshot_or_exits_4() {
    let system = System::start(1).await;
    let url = system.ws[0].ws_url();
    let mut primer = Watcher::start(&["--json", "--url", &url]).await;
    insert(&system, &["Ann"]).await;
    let (epoch, ann) = position(&primer.events(1).await[0]);
    primer.stop().await;

    let mut recovering = Watcher::start(&["--json", "--url", &url, "--since", "someotherepoch:5"]).await;
    let reset = recovering.wait_status("cannot resume from someotherepoch:5").await;
    assert!(reset.contains("taking a fresh snapshot"), "{reset}");
    let snapshot = recovering.next_json().await;
    assert_eq!((snapshot["type"].as_str(), position(&snapshot)), (Some("snapshot"), (epoch.clone(), ann)));
    recovering.stop().await;

    let output = Command::new(env!("CARGO_BIN_EXE_cli-client"))
        .args(["watch", "--json", "--url", &url, "--since", "someotherepoch:5", "--on-reset", "exit"])
        .stdin(Stdio::null())
        .output();
    let output = timeout(WAIT, output).await.expect("exits in time").unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("cannot resume from someotherepoch:5"), "{stderr}");
    assert!(output.stdout.is_empty(), "stdout stays data only: {}", String::from_utf8_lossy(&output.stdout));
}

#[tokio::test]
async fn a_malformed_since_is_a_usage_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_cli-client"))
        .args(["watch", "--since", "1042"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--since") && stderr.contains("EPOCH:POS"), "{stderr}");
}
