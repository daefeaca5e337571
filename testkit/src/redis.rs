//! [`RedisServer`]: a private `redis-server` on a free port with persistence off, owned by one
//! test. A restart therefore comes back empty, like a Redis that lost its memory; tests of
//! "Redis went away" rely on that.

use std::{path::PathBuf, process::Stdio, time::Duration};

use rustix::process::{Pid, Signal};
use tempfile::TempDir;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};

use crate::{
    binaries::redis_server_bin,
    process::{LaunchError, ServerProcess, launch, launch_on_free_port},
};

const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds one readiness probe (connect, write, read).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts of `restart`, which must keep its port and so can only wait for it.
const RESTART_ATTEMPTS: usize = 3;

/// A private Redis server process on its own port, without persistence.
///
/// Dropping it kills the server and deletes its directory.
#[derive(Debug)]
pub struct RedisServer {
    process: Option<ServerProcess>,
    port: u16,
    dir: TempDir,
    /// `requirepass` of the default user, kept across restarts.
    password: Option<String>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and returns once it answers `PING`.
    ///
    /// Panics, with the server log, when the binary is missing or the server does not start.
    pub async fn start() -> RedisServer {
        Self::start_with(None).await
    }

    /// [`RedisServer::start`] with `requirepass password`: clients must authenticate
    /// (`redis://:password@…`, see [`RedisServer::url_with_password`]).
    pub async fn start_with_password(password: &str) -> RedisServer {
        Self::start_with(Some(password.to_owned())).await
    }

    async fn start_with(password: Option<String>) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("testkit-redis-")
            .tempdir()
            .expect("failed to create a temporary directory for Redis");
        let mut server = RedisServer { process: None, port: 0, dir, password };
        let (port, process) = launch_on_free_port("Redis", |port| server.launch(port)).await;
        server.port = port;
        server.process = Some(process);
        server
    }

    /// The TCP port the server listens on (127.0.0.1); the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}`, with the password when the server requires one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => self.url_with_password(password),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// `redis://:{password}@127.0.0.1:{port}` (right or wrong: tests of refused credentials).
    pub fn url_with_password(&self, password: &str) -> String {
        format!("redis://:{password}@127.0.0.1:{}", self.port)
    }

    /// Shuts the server down cleanly (SIGTERM) and waits for it to exit. Nothing is saved.
    /// Does nothing if it is not running.
    pub async fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop(Signal::TERM).await;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, like a network
    /// partition; [`RedisServer::thaw`] resumes it with its data.
    pub fn freeze(&self) {
        self.process.as_ref().expect("redis is running").freeze(true);
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.process.as_ref().expect("redis is running").freeze(false);
    }

    /// Kills the server with SIGKILL and waits until it is gone. Does nothing if it is not running.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Starts the server again on the same port (stopping it first if it is running), and
    /// returns once it answers. It comes back empty.
    ///
    /// Panics if it cannot start, for instance because another process took the port meanwhile.
    pub async fn restart(&mut self) {
        self.stop().await;
        for attempt in 1..=RESTART_ATTEMPTS {
            match self.launch(self.port).await {
                Ok(process) => {
                    self.process = Some(process);
                    return;
                }
                // The port is ours to keep, so all we can do is give its holder a moment.
                Err(err) if err.port_in_use && attempt < RESTART_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => panic!("failed to restart Redis: {}", err.message),
            }
        }
    }

    /// The server's log file (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    async fn launch(&self, port: u16) -> Result<ServerProcess, LaunchError> {
        let mut command = Command::new(redis_server_bin());
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            // No RDB snapshots, no AOF: a restart starts empty and nothing touches the disk.
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let password = self.password.as_deref();
        launch("redis-server", command, &self.log_path(), READY_TIMEOUT, |pid| answers(port, pid, password)).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Explicit, so the server is dead before its directory is deleted.
        drop(self.process.take());
    }
}

/// True when the server on `port` answers `PING` with `+PONG` and is the process `pid`: another
/// test's Redis on a port we also picked would answer `PING` as well.
pub(crate) async fn answers(port: u16, pid: Pid, password: Option<&str>) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        if let Some(password) = password {
            let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
            stream.write_all(auth.as_bytes()).await.ok()?;
        }
        // QUIT makes the server close the connection, so the whole reply can be read to the end.
        stream.write_all(b"PING\r\nINFO server\r\nQUIT\r\n").await.ok()?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await.ok()?;
        Some(String::from_utf8_lossy(&reply).into_owned())
    };
    let expected = if password.is_some() { "+OK\r\n+PONG\r\n" } else { "+PONG\r\n" };
    match tokio::time::timeout(PROBE_TIMEOUT, exchange).await {
        Ok(Some(reply)) => reply.starts_with(expected) && info_process_id(&reply) == Some(pid.as_raw_pid()),
        // Not listening yet, or too slow this time: the caller polls again.
        Ok(None) | Err(_) => false,
    }
}

/// The `process_id:` field of an `INFO server` reply.
fn info_process_id(reply: &str) -> Option<i32> {
    reply.lines().find_map(|line| line.strip_prefix("process_id:")).and_then(|pid| pid.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_process_id_reads_the_field() {
        let reply = "+PONG\r\n$40\r\n# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\n\r\n+OK\r\n";
        assert_eq!(info_process_id(reply), Some(4242));
        assert_eq!(info_process_id("+PONG\r\n"), None);
    }

    #[tokio::test]
    async fn launch_on_a_port_held_by_another_redis_reports_port_in_use() {
        let other = RedisServer::start().await;
        let server = RedisServer::start().await;

        // `other` answers PING on that port; only the pid check tells the two apart.
        let err = server.launch(other.port()).await.unwrap_err();

        assert!(err.port_in_use, "{}", err.message);
        assert!(err.message.contains("exited during startup"), "{}", err.message);
    }
}
