//! [`RedisServer`]: a private `redis-server` on a free port with persistence off, owned by one
//! test. A restart therefore comes back empty, like a Redis that lost its memory; tests of
//! "Redis went away" rely on that.
//!
//! [`RedisServer::start_tls`] is the managed-Redis setup: TLS only (`rediss://`), with a
//! certificate from a private [`TestCa`] ([`RedisServer::tls_ca_path`]) and no client
//! certificates.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use rustix::process::{Pid, Signal};
use tempfile::TempDir;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    process::Command,
};
use tokio_rustls::TlsConnector;

use crate::{
    TestCa,
    binaries::redis_server_bin,
    process::{LaunchError, ServerProcess, launch, launch_on_free_port},
    tls::server_name,
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
    /// The certificate and key of a [`RedisServer::start_tls`] server, kept across restarts.
    tls: Option<TestCa>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and returns once it answers `PING`.
    ///
    /// Panics, with the server log, when the binary is missing or the server does not start.
    pub async fn start() -> RedisServer {
        Self::start_with(None, false).await
    }

    /// [`RedisServer::start`] with TLS only: the port speaks TLS (plain TCP is not served at all),
    /// with a certificate for `localhost` and `127.0.0.1` from a private CA
    /// ([`RedisServer::tls_ca_path`]); clients need no certificate. [`RedisServer::url`] is then
    /// `rediss://127.0.0.1:{port}`.
    pub async fn start_tls() -> RedisServer {
        Self::start_with(None, true).await
    }

    /// [`RedisServer::start`] with `requirepass password`: clients must authenticate
    /// (`redis://:password@…`, see [`RedisServer::url_with_password`]).
    pub async fn start_with_password(password: &str) -> RedisServer {
        Self::start_with(Some(password.to_owned()), false).await
    }

    async fn start_with(password: Option<String>, tls: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("testkit-redis-")
            .tempdir()
            .expect("failed to create a temporary directory for Redis");
        let tls = tls.then(|| TestCa::create_in(dir.path()));
        let mut server = RedisServer { process: None, port: 0, dir, password, tls };
        let (port, process) = launch_on_free_port("Redis", |port| server.launch(port)).await;
        server.port = port;
        server.process = Some(process);
        server
    }

    /// The TCP port the server listens on (127.0.0.1); the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}` (`rediss://` with TLS), with the password when the server
    /// requires one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => self.url_with_password(password),
            None => format!("{}://127.0.0.1:{}", self.scheme(), self.port),
        }
    }

    /// `redis://:{password}@127.0.0.1:{port}` (`rediss://` with TLS; right or wrong password:
    /// tests of refused credentials).
    pub fn url_with_password(&self, password: &str) -> String {
        format!("{}://:{password}@127.0.0.1:{}", self.scheme(), self.port)
    }

    /// The CA certificate (PEM) that signed a [`RedisServer::start_tls`] server's certificate, for
    /// the clients' CA file setting; `None` without TLS.
    pub fn tls_ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(TestCa::ca_path)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "rediss" } else { "redis" }
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
        listen_args(&mut command, port, self.tls.as_ref());
        command
            // No RDB snapshots, no AOF: a restart starts empty and nothing touches the disk.
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let password = self.password.as_deref();
        // One client configuration for all the probes of this launch.
        let connector = self.tls.as_ref().map(TestCa::connector);
        let connector = connector.as_ref();
        launch("redis-server", command, &self.log_path(), READY_TIMEOUT, |pid| answers(port, pid, password, connector))
            .await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Explicit, so the server is dead before its directory is deleted.
        drop(self.process.take());
    }
}

/// The arguments that make `redis-server` listen on `port` of 127.0.0.1: plain, or with `tls`
/// TLS only (its certificate, and the CA it verifies peers with).
pub(crate) fn listen_args(command: &mut Command, port: u16, tls: Option<&TestCa>) {
    match tls {
        // `--port 0` turns the plain listener off: the one port speaks TLS only.
        Some(tls) => {
            command.args(["--port", "0", "--tls-port", &port.to_string()]);
            command.arg("--tls-cert-file").arg(tls.cert_path());
            command.arg("--tls-key-file").arg(tls.key_path());
            // What Redis verifies peers' certificates with; `--tls-auth-clients no`: clients need none.
            command.arg("--tls-ca-cert-file").arg(tls.ca_path());
            command.args(["--tls-auth-clients", "no"]);
        }
        None => {
            command.args(["--port", &port.to_string()]);
        }
    }
    command.args(["--bind", "127.0.0.1"]);
}

/// True when the server on `port` answers `PING` with `+PONG` and is the process `pid`: another
/// test's Redis on a port we also picked would answer `PING` as well. Over TLS when `tls` is given
/// (a client trusting the server's CA).
pub(crate) async fn answers(port: u16, pid: Pid, password: Option<&str>, tls: Option<&TlsConnector>) -> bool {
    let expected = if password.is_some() { "+OK\r\n+PONG\r\n" } else { "+PONG\r\n" };
    match ping(port, password, tls).await {
        Some(reply) => reply.starts_with(expected) && info_process_id(&reply) == Some(pid.as_raw_pid()),
        // Not listening yet, or too slow this time: the caller polls again.
        None => false,
    }
}

/// Sends `AUTH` (with a password), `PING`, `INFO server` and `QUIT` to the server on `port`,
/// over TLS when `tls` is given, and returns the whole reply; `None` when the connection, the
/// TLS handshake or the exchange fails or takes longer than [`PROBE_TIMEOUT`].
async fn ping(port: u16, password: Option<&str>, tls: Option<&TlsConnector>) -> Option<String> {
    let exchange = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        match tls {
            Some(tls) => exchange(tls.connect(server_name(), stream).await.ok()?, password).await,
            None => exchange(stream, password).await,
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange).await.ok().flatten()
}

async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, password: Option<&str>) -> Option<String> {
    if let Some(password) = password {
        let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
        stream.write_all(auth.as_bytes()).await.ok()?;
    }
    // QUIT makes the server close the connection, so the whole reply can be read to the end.
    stream.write_all(b"PING\r\nINFO server\r\nQUIT\r\n").await.ok()?;
    let mut reply = Vec::new();
    // Over TLS too: Redis ends the session with a close_notify, so this is a clean end of stream.
    stream.read_to_end(&mut reply).await.ok()?;
    Some(String::from_utf8_lossy(&reply).into_owned())
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

    #[tokio::test]
    async fn tls_server_answers_only_over_tls_with_its_ca() {
        let mut server = RedisServer::start_tls().await;
        let port = server.port();
        assert_eq!(server.url(), format!("rediss://127.0.0.1:{port}"));
        let ca = server.tls.as_ref().unwrap();
        assert_eq!(std::fs::read_to_string(server.tls_ca_path().unwrap()).unwrap(), ca.ca_pem());
        let trusted = ca.connector();

        let reply = ping(port, None, Some(&trusted)).await.expect("a reply over TLS");
        assert!(reply.starts_with("+PONG\r\n") && info_process_id(&reply).is_some(), "{reply}");
        let plain = ping(port, None, None).await;
        assert!(!plain.as_deref().unwrap_or_default().contains("+PONG"), "{plain:?}");
        let other_ca = TestCa::new();
        assert_eq!(ping(port, None, Some(&other_ca.connector())).await, None);

        server.restart().await;
        assert_eq!(server.url(), format!("rediss://127.0.0.1:{port}"));
        let reply = ping(port, None, Some(&trusted)).await.expect("a reply over TLS after the restart");
        assert!(reply.starts_with("+PONG\r\n"), "{reply}");
        assert!(RedisServer::start().await.tls_ca_path().is_none());
    }

    #[tokio::test]
    async fn tls_launch_on_a_taken_port_reports_port_in_use() {
        let mut server = RedisServer::start_tls().await;
        server.stop().await;
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();

        let err = server.launch(taken.local_addr().unwrap().port()).await.unwrap_err();

        assert!(err.port_in_use, "{}", err.message);
    }
}
