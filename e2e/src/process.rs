//! Services as real processes (the same `main` as the shipped binaries, built in this package
//! as `e2e-publisher` and `e2e-ws-server`), for tests that SIGKILL them.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use testkit::{http_get, wait_until};
use tokio::process::Child;

use crate::WAIT;

/// A service process; killed when dropped.
#[derive(Debug)]
pub struct Process {
    /// What it is, for messages (`publisher-a`, `ws-1`).
    pub name: String,
    /// Its HTTP port (ops endpoints; WebSocket for ws-server).
    pub port: u16,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `bin` (a path) with `env`; stderr goes to `<dir>/<name>.log`.
    pub fn start(bin: &str, name: &str, port: u16, env: &[(&str, String)], dir: &Path) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("open log file");
        let child = testkit::service_command(bin, env)
            .env("RUST_LOG", "info")
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        Process { name: name.to_owned(), port, child, log }
    }

    /// The address of its HTTP port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Waits for `/readyz` 200.
    pub async fn wait_ready(&self) {
        let addr = self.addr();
        wait_until(WAIT, &format!("{} ready", self.name), || async {
            http_get(addr, "/readyz").await.map(|r| r.0) == Some(200)
        })
        .await;
    }

    /// A metric's value, if the process answers.
    pub async fn metric(&self, name: &str) -> Option<i64> {
        let (_, body) = http_get(self.addr(), "/metrics").await?;
        body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Its process id, while it runs (for `/proc/<pid>` and signals).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM (a clean shutdown), and reap it; SIGKILL if it takes longer than [`WAIT`].
    pub async fn terminate(&mut self) {
        if let Some(pid) = self.child.id() {
            testkit::terminate(pid);
        }
        if tokio::time::timeout(WAIT, self.child.wait()).await.is_err() {
            self.kill().await;
        }
    }

    /// SIGKILL, and reap it.
    pub async fn kill(&mut self) {
        if let Some(pid) = self.child.id() {
            testkit::kill(pid);
        }
        // Reaping can only fail if it was already reaped.
        let _ = self.child.wait().await;
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}
