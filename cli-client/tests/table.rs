//! `cli-client table` in a real terminal: tmux on a private socket (`-S`, in a temporary
//! directory) runs it in a pane; the
//! test reads the screen with `capture-pane`, types with `send-keys`, and changes rows with
//! SQL. Needs tmux (Debian package `tmux`): under CI (`CI=true`) its absence fails the test,
//! elsewhere the test is skipped with a message.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use e2e::{System, WAIT};
use tokio::time::{Instant, sleep};

/// A tmux server of this test's own (its socket in a private directory); killed on drop,
/// whatever the test's outcome, and the directory removed after it.
struct Tmux {
    socket: String,
    _dir: tempfile::TempDir,
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-S", &self.socket, "kill-server"]).stderr(Stdio::null()).status();
    }
}

impl Tmux {
    /// Whether tmux is installed: `false` (after saying why) outside CI; panics in CI.
    fn available() -> bool {
        let found = Command::new("tmux").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status();
        if found.is_ok_and(|s| s.success()) {
            return true;
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "tmux is required in CI for the table tests: install the Debian package `tmux`"
        );
        eprintln!("skipped: tmux is not installed (Debian: apt-get install tmux)");
        false
    }

    /// A session of `width`×`height` running `command`.
    fn start(width: u16, height: u16, command: &str) -> Tmux {
        let dir = tempfile::tempdir().expect("a directory for the socket");
        let socket = dir.path().join("tmux.sock").to_str().expect("a UTF-8 path").to_owned();
        let tmux = Tmux { socket, _dir: dir };
        let (w, h) = (width.to_string(), height.to_string());
        // `-f /dev/null`: no user configuration; the pane's shell stays after the command for the checks.
        let ok = Command::new("tmux")
            .args(["-S", &tmux.socket, "-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", &w, "-y", &h, command])
            .env_remove("TMUX")
            .status()
            .expect("tmux runs");
        assert!(ok.success(), "tmux new-session failed");
        tmux
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux").args(["-S", &self.socket]).args(args).output().expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The visible screen, as text.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "t"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Waits until `ready` holds for the screen; returns that screen.
    async fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if ready(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no {what} within {WAIT:?}; the screen:\n{screen}");
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the command's `echo exit=$?; stty -a` and checks the terminal was given back:
    /// exit code `code`, the alternate screen left, canonical mode, echo and signals back.
    /// Returns the screen.
    async fn exited(&self, code: i32) -> String {
        let screen = self.wait_for("exit", |s| s.contains("exit=") && s.contains("icanon")).await;
        assert!(screen.contains(&format!("exit={code}\n")), "exit code {code} expected:\n{screen}");
        assert_eq!(self.tmux(&["display-message", "-p", "-t", "t", "#{alternate_on}"]).trim(), "0");
        let modes: Vec<&str> = screen.split(|c: char| c.is_whitespace() || c == ';').collect();
        for mode in ["icanon", "echo", "isig"] {
            assert!(modes.contains(&mode), "{mode} not restored:\n{screen}");
        }
        screen
    }
}

/// The text of the cell in `column` on the row whose id is `id`, read by the header's layout.
fn cell(screen: &str, id: i64, column: &str) -> Option<String> {
    let header = screen.lines().find(|l| l.trim_start().starts_with("id"))?;
    let start = header.find(column)?;
    let row = screen.lines().find(|l| l.split_whitespace().next() == Some(id.to_string().as_str()))?;
    let rest: String = row.chars().skip(header[..start].chars().count()).collect();
    Some(rest.split("  ").next().unwrap_or_default().trim().to_owned())
}

#[tokio::test]
async fn a_change_in_postgres_shows_up_in_its_cell_and_q_leaves_a_sane_terminal() {
    if !Tmux::available() {
        return;
    }
    let system = System::start(1).await;
    for (name, product, amount) in [("Ann Lee", "Desk lamp", "49.90"), ("Bob Ray", "Standing desk", "320.00")] {
        let sql = format!(
            "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('{name}', '{product}', 'pending', {amount})"
        );
        system.sql(&sql).await;
    }
    let command = format!(
        "{} table --url {}; echo \"exit=$?\"; stty -a; sleep 120",
        env!("CARGO_BIN_EXE_cli-client"),
        system.ws[0].ws_url()
    );
    let tmux = Tmux::start(160, 30, &command);

    // The snapshot first.
    let screen = tmux.wait_for("snapshot", |s| cell(s, 2, "customer_name").as_deref() == Some("Bob Ray")).await;
    assert_eq!(cell(&screen, 1, "status").as_deref(), Some("pending"), "{screen}");
    assert_eq!(tmux.tmux(&["display-message", "-p", "-t", "t", "#{alternate_on}"]).trim(), "1");

    // An UPDATE lands in the right cell, highlighted; the other row is untouched.
    system.sql("UPDATE orders SET status = 'shipped' WHERE id = 1").await;
    let screen = tmux.wait_for("the update", |s| cell(s, 1, "status").as_deref() == Some("shipped")).await;
    assert_eq!(cell(&screen, 2, "status").as_deref(), Some("pending"), "{screen}");
    assert!(screen.contains("connected") && screen.contains("2 rows"), "status line: {screen}");
    if let Some(path) = std::env::var_os("CLI_TABLE_CAPTURE") {
        // How docs/cli-table.txt is made: CLI_TABLE_CAPTURE=$PWD/docs/cli-table.txt cargo test …
        std::fs::write(path, &screen).expect("the capture is written");
    }
    let styled = tmux.tmux(&["capture-pane", "-p", "-e", "-t", "t"]);
    assert!(styled.contains("43m") || styled.contains("48;5;3m"), "the changed cell is highlighted:\n{styled}");

    // A DELETE removes the row; an INSERT adds one.
    system.sql("DELETE FROM orders WHERE id = 2").await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Cy', 'Desk')").await;
    let screen = tmux.wait_for("delete and insert", |s| cell(s, 3, "customer_name").as_deref() == Some("Cy")).await;
    assert_eq!(cell(&screen, 2, "customer_name"), None, "{screen}");

    // Pause queues; unpausing applies what came meanwhile.
    tmux.keys(&["p"]);
    tmux.wait_for("pause", |s| s.contains("PAUSED")).await;
    system.sql("UPDATE orders SET status = 'void' WHERE id = 3").await;
    tmux.wait_for("a queued change", |s| s.contains("(1 queued)")).await;
    assert_ne!(cell(&tmux.screen(), 3, "status").as_deref(), Some("void"));
    tmux.keys(&["p"]);
    tmux.wait_for("the queued change applied", |s| cell(s, 3, "status").as_deref() == Some("void")).await;

    // `/` edits the filter: a fresh snapshot with only the matching rows.
    tmux.keys(&["/"]);
    tmux.wait_for("the filter prompt", |s| s.contains("filter: ")).await;
    tmux.keys(&["-l", "status=eq.void"]);
    tmux.keys(&["Enter"]);
    let screen =
        tmux.wait_for("the filtered snapshot", |s| s.contains("1 rows") && s.contains("filter status=eq.void")).await;
    assert_eq!((cell(&screen, 1, "status"), cell(&screen, 3, "status").as_deref()), (None, Some("void")), "{screen}");
    // A filter the server refuses: its reason on the status line, the previous filter kept.
    tmux.keys(&["/"]);
    tmux.wait_for("the filter prompt", |s| s.contains("filter: status=eq.void")).await;
    for _ in 0.."status=eq.void".len() {
        tmux.keys(&["BSpace"]);
    }
    tmux.keys(&["-l", "status"]);
    tmux.keys(&["Enter"]);
    let screen = tmux.wait_for("the refusal", |s| s.contains("HTTP 400")).await;
    assert!(screen.contains("filter status=eq.void"), "{screen}");
    tmux.wait_for("the previous view back", |s| cell(s, 3, "status").as_deref() == Some("void")).await;

    // Help opens and closes; the table follows a resize.
    tmux.keys(&["?"]);
    tmux.wait_for("help", |s| s.contains("edit the filter")).await;
    tmux.keys(&["x"]);
    tmux.wait_for("help closed", |s| !s.contains("edit the filter")).await;
    tmux.tmux(&["resize-window", "-t", "t", "-x", "90", "-y", "16"]);
    tmux.wait_for("a redraw at the new size", |s| {
        let lines: Vec<&str> = s.lines().collect();
        lines.len() == 16 && lines.last().is_some_and(|l| l.contains("rows"))
    })
    .await;

    // q: exit code 0, the alternate screen left, echo and canonical mode back.
    tmux.keys(&["q"]);
    tmux.exited(0).await;
}

#[tokio::test]
async fn a_panic_with_the_table_on_screen_still_leaves_a_sane_terminal() {
    if !Tmux::available() {
        return;
    }
    let system = System::start(1).await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Ann Lee', 'Desk lamp')").await;
    // The debug build panics on its first snapshot when CLI_CLIENT_TEST_PANIC is set.
    let command = format!(
        "CLI_CLIENT_TEST_PANIC=1 RUST_BACKTRACE=0 {} table --url {}; echo \"exit=$?\"; stty -a; sleep 120",
        env!("CARGO_BIN_EXE_cli-client"),
        system.ws[0].ws_url()
    );
    let tmux = Tmux::start(160, 40, &command);
    let screen = tmux.exited(101).await;
    assert!(screen.contains("panicking on the snapshot"), "the panic message is readable:\n{screen}");
}

#[tokio::test]
async fn without_a_terminal_table_points_to_watch_json_and_exits_2() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_cli-client"))
        .args(["table", "--url", "ws://127.0.0.1:1/ws"])
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("watch --json"));
}

#[tokio::test]
async fn the_table_reconnects_and_resumes_after_its_replica_restarts_and_ctrl_c_leaves_cleanly() {
    if !Tmux::available() {
        return;
    }
    let system = System::start(0).await;
    // The replica's listening socket, and a second handle on it for the replacement, so the
    // port is never released in between.
    let socket = std::net::TcpListener::bind(("127.0.0.1", testkit::free_port())).expect("bind");
    socket.set_nonblocking(true).expect("nonblocking");
    let spare = socket.try_clone().expect("clone the listening socket");
    let old = e2e::spawn_ws_on(e2e::ws_config(&system.redis.url()), tokio::net::TcpListener::from_std(socket).unwrap());
    old.wait_ready().await;
    system.sql("INSERT INTO orders (customer_name, product_name) VALUES ('Dee', 'Shelf')").await;
    let command = format!(
        "{} table --url {}; echo \"exit=$?\"; stty -a; sleep 120",
        env!("CARGO_BIN_EXE_cli-client"),
        old.ws_url()
    );
    let tmux = Tmux::start(160, 20, &command);
    tmux.wait_for("snapshot", |s| cell(s, 1, "customer_name").as_deref() == Some("Dee")).await;

    old.stop().await;
    tmux.wait_for("the disconnect", |s| s.contains("reconnecting")).await;
    // Changed while no replica runs: the resume replays it.
    system.sql("UPDATE orders SET status = 'missed' WHERE id = 1").await;
    let replica =
        e2e::spawn_ws_on(e2e::ws_config(&system.redis.url()), tokio::net::TcpListener::from_std(spare).unwrap());
    let screen = tmux
        .wait_for("the replayed change", |s| {
            cell(s, 1, "status").as_deref() == Some("missed") && s.contains("connected")
        })
        .await;
    assert!(screen.contains("1 rows"), "{screen}");
    system.sql("UPDATE orders SET status = 'live' WHERE id = 1").await;
    tmux.wait_for("a live change", |s| cell(s, 1, "status").as_deref() == Some("live")).await;
    // Ctrl-C (a key in raw mode) leaves as cleanly as q.
    tmux.keys(&["C-c"]);
    tmux.exited(0).await;
    replica.stop().await;
}
