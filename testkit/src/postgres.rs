//! [`PgServer`]: a private PostgreSQL cluster in a temporary directory, on a free port, tuned for
//! tests (no fsync) and owned by one test. Applying the project's `sql/` is left to the tests'
//! own helpers, which know which migrations they want.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI containers) the cluster
//! belongs to the `postgres` system user and `initdb`/`postgres` run as that user.
//!
//! [`PgServer::start_tls`] is the managed-database setup: TCP connections must use TLS, with a
//! certificate from a private [`TestCa`]. Clients add `sslmode=verify-full&sslrootcert=` with
//! [`PgServer::tls_ca_path`] to [`PgServer::url`]; the testkit's own `psql` runs do the same.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use rustix::process::{Pid, Signal};
use tempfile::TempDir;
use tokio::{net::TcpStream, process::Command};

use crate::{
    TestCa,
    binaries::pg_bin_dir,
    process::{LaunchError, ServerProcess, launch, launch_on_free_port},
};

/// Covers crash recovery after `kill`, which replays the WAL before accepting connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const INITDB_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds one `psql` run, so a hung server fails the test instead of hanging it.
const PSQL_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of `restart`, which must keep its port and so can only wait for it.
const RESTART_ATTEMPTS: usize = 3;

/// A private PostgreSQL server process, with its own data directory and port.
///
/// Dropping it kills the server and deletes the data directory.
#[derive(Debug)]
pub struct PgServer {
    process: Option<ServerProcess>,
    port: u16,
    owner: Option<SystemUser>,
    /// The certificate and key of a [`PgServer::start_tls`] server, kept across restarts.
    tls: Option<TestCa>,
    /// `wal_level=logical` ([`PgServer::start_logical`]), for replication slots.
    logical: bool,
    dir: TempDir,
}

impl PgServer {
    /// Creates a cluster with `initdb` and starts it on a free port, returning once it accepts
    /// connections. The superuser is `postgres`, with `trust` authentication.
    ///
    /// Panics, with the server log, when the binaries are missing or the server does not start.
    pub async fn start() -> PgServer {
        Self::start_with(false, false).await
    }

    /// [`PgServer::start`] with `wal_level=logical`: logical replication slots work (the
    /// publisher's `PUBLISHER_CAPTURE=logical`). Replication connections are trusted like the rest.
    pub async fn start_logical() -> PgServer {
        Self::start_with(false, true).await
    }

    /// [`PgServer::start`] with TLS (`ssl = on`) and a certificate for `localhost` and
    /// `127.0.0.1` from a private CA ([`PgServer::tls_ca_path`]). TCP connections without TLS are
    /// rejected (`hostnossl … reject` in `pg_hba.conf`); the Unix socket stays as it was.
    pub async fn start_tls() -> PgServer {
        Self::start_with(true, false).await
    }

    /// [`PgServer::start_tls`] with `wal_level=logical` (replication connections over TCP need TLS
    /// too).
    pub async fn start_tls_logical() -> PgServer {
        Self::start_with(true, true).await
    }

    async fn start_with(tls: bool, logical: bool) -> PgServer {
        let owner = SystemUser::for_postgres();
        let dir = tempfile::Builder::new()
            .prefix("testkit-pg-")
            .tempdir()
            .expect("failed to create a temporary directory for PostgreSQL");
        if let Some(owner) = &owner {
            // tempfile makes the directory 0700 and owned by root; initdb creates `data` inside.
            std::os::unix::fs::chown(dir.path(), Some(owner.uid), Some(owner.gid))
                .unwrap_or_else(|err| panic!("failed to chown {} to postgres: {err}", dir.path().display()));
        }
        let mut server = PgServer { process: None, port: 0, owner, tls: None, logical, dir };
        server.initdb().await;
        if tls {
            server.enable_tls();
        }

        let (port, process) = launch_on_free_port("PostgreSQL", |port| server.launch(port)).await;
        server.port = port;
        server.process = Some(process);
        server
    }

    /// The TCP port the server listens on (127.0.0.1); the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the `postgres` database as the `postgres` superuser.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// URL of database `db` as the `postgres` superuser.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The CA certificate (PEM) that signed a [`PgServer::start_tls`] server's certificate, for
    /// `sslrootcert=`; `None` without TLS.
    pub fn tls_ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(TestCa::ca_path)
    }

    /// Creates database `name` (panics if it exists or the server is down).
    pub async fn create_database(&self, name: &str) {
        let ident = name.replace('"', "\"\"");
        self.psql("postgres", &format!("CREATE DATABASE \"{ident}\"")).await;
    }

    /// Runs `sql` in database `db` with `psql -X -v ON_ERROR_STOP=1 -At -c` and returns its
    /// output: unaligned rows, one per line, `|` between columns, without the final newline.
    ///
    /// Panics with psql's stderr when it fails.
    pub async fn psql(&self, db: &str, sql: &str) -> String {
        match run_psql(self.port, &self.ssl_options(), db, sql).await {
            Ok(stdout) => stdout,
            Err(err) => panic!("psql on port {} failed for {sql:?}: {err}", self.port),
        }
    }

    /// Shuts the server down cleanly ("fast" shutdown: SIGINT; open sessions are disconnected)
    /// and waits for it to exit. Does nothing if it is not running.
    pub async fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop(Signal::INT).await;
        }
    }

    /// Kills the server and its backends with SIGKILL (a crash) and waits until they are gone.
    /// The next start runs crash recovery. Does nothing if it is not running.
    pub async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await;
        }
    }

    /// Starts the server again on the same port and data directory (stopping it first if it is
    /// running), and returns once it accepts connections. Committed data survives.
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
                Err(err) => panic!("failed to restart PostgreSQL: {}", err.message),
            }
        }
    }

    /// The server's log file (stdout and stderr of every start, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Freezes the server and its session processes (SIGSTOP): connections stay open and
    /// nothing answers, as behind a network partition. [`PgServer::thaw`] resumes it.
    pub fn freeze(&self) {
        self.process.as_ref().expect("postgres is running").freeze_all(true);
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.process.as_ref().expect("postgres is running").freeze_all(false);
    }

    /// Makes `role` log in over TCP with its password (SCRAM) instead of `trust`, and reloads
    /// the configuration; psql and other roles keep trust. For tests of refused credentials.
    pub async fn require_password_for(&self, role: &str) {
        let hba = self.data_dir().join("pg_hba.conf");
        let current = std::fs::read_to_string(&hba).expect("pg_hba.conf is readable");
        // First match wins: the role's line goes above initdb's trust lines. With TLS it must not
        // match connections without it, which the `hostnossl … reject` lines below refuse.
        let host = if self.tls.is_some() { "hostssl" } else { "host" };
        let line = format!("{host} all {role} 127.0.0.1/32 scram-sha-256\n{host} all {role} ::1/128 scram-sha-256\n");
        // Writing the existing file keeps its owner (the cluster's user) and mode.
        std::fs::write(&hba, format!("{line}{current}")).expect("pg_hba.conf is writable");
        let reloaded = self.psql("postgres", "SELECT pg_reload_conf()").await;
        assert_eq!(reloaded.trim(), "t", "configuration reloaded");
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes the certificate files into the cluster's directory and makes `pg_hba.conf` refuse
    /// TCP without TLS; [`PgServer::launch`] then turns `ssl` on.
    fn enable_tls(&mut self) {
        let tls_dir = self.dir.path().join("tls");
        std::fs::create_dir(&tls_dir).unwrap_or_else(|err| panic!("failed to create {}: {err}", tls_dir.display()));
        let ca = TestCa::create_in(&tls_dir);
        if let Some(owner) = &self.owner {
            // PostgreSQL reads the key as the cluster's owner and refuses one it does not own
            // (root's would need mode 0640 and the postgres group); the key is already 0600.
            for path in [tls_dir.as_path(), ca.ca_path(), ca.cert_path(), ca.key_path()] {
                std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid))
                    .unwrap_or_else(|err| panic!("failed to chown {} to postgres: {err}", path.display()));
            }
        }
        let hba = self.data_dir().join("pg_hba.conf");
        let current = std::fs::read_to_string(&hba).expect("pg_hba.conf is readable");
        // First match wins: TCP without TLS is refused before initdb's `host … trust` lines, which
        // then only ever see TLS connections. `local` lines (the Unix socket) are untouched.
        let reject = "hostnossl all all all reject\nhostnossl replication all all reject\n";
        // Writing the existing file keeps its owner (the cluster's user) and mode.
        std::fs::write(&hba, format!("{reject}{current}")).expect("pg_hba.conf is writable");
        self.tls = Some(ca);
    }

    /// The libpq options for this server's TLS (`sslmode=verify-full` with its CA), or none.
    fn ssl_options(&self) -> String {
        match self.tls_ca_path() {
            Some(ca) => format!("sslmode=verify-full sslrootcert={}", conninfo_value(&ca.display().to_string())),
            None => String::new(),
        }
    }

    /// A command for a server binary, run as the cluster's owner.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(pg_bin_dir().join(program));
        // The test's working directory may not be readable by the `postgres` user.
        command.current_dir(self.dir.path());
        if let Some(owner) = &self.owner {
            command.uid(owner.uid).gid(owner.gid);
        }
        command
    }

    async fn initdb(&self) {
        let mut command = self.command("initdb");
        command
            .args(["-N", "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-D"])
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(INITDB_TIMEOUT, command.output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => panic!("failed to run initdb from {}: {err}", pg_bin_dir().display()),
            Err(_elapsed) => panic!("initdb did not finish within {INITDB_TIMEOUT:?}"),
        };
        assert!(
            output.status.success(),
            "initdb failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn launch(&self, port: u16) -> Result<ServerProcess, LaunchError> {
        let mut command = self.command("postgres");
        command.arg("-D").arg(self.data_dir());
        let mut settings = vec![
            format!("port={port}"),
            "listen_addresses=127.0.0.1".to_owned(),
            format!("unix_socket_directories={}", self.dir.path().display()),
            // No fsync: the kernel still holds every write, so `kill` (a process crash) loses
            // nothing; only an OS crash would, and the cluster is thrown away anyway.
            // `synchronous_commit` stays on, deliberately: off, a commit is acknowledged before
            // its WAL leaves shared memory, so `kill` would lose the last ~0.5 s of "committed"
            // rows and fault tests of "nothing committed is lost" would fail for the wrong reason.
            // With fsync off it costs only a write(2) per commit.
            "fsync=off".to_owned(),
            "full_page_writes=off".to_owned(),
            // Services under test keep pools; several of them share one server.
            "max_connections=200".to_owned(),
        ];
        if self.logical {
            settings.push("wal_level=logical".to_owned());
        }
        if let Some(tls) = &self.tls {
            settings.extend([
                "ssl=on".to_owned(),
                format!("ssl_cert_file={}", tls.cert_path().display()),
                format!("ssl_key_file={}", tls.key_path().display()),
            ]);
        }
        for setting in settings {
            command.arg("-c").arg(setting);
        }
        let data_dir = self.data_dir();
        let ssl = self.ssl_options();
        launch("postgres", command, &self.log_path(), READY_TIMEOUT, |_pid: Pid| is_ready(port, &ssl, &data_dir)).await
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Explicit, so the server is dead before `dir` (its data directory) is deleted.
        drop(self.process.take());
    }
}

/// Ready when a session works, on *this* server: a port taken by another test's cluster would
/// also accept connections, but it reports another data directory.
async fn is_ready(port: u16, ssl: &str, data_dir: &Path) -> bool {
    // A cheap TCP check first, so no psql process is spawned while the server is still starting.
    let connect = TcpStream::connect(("127.0.0.1", port));
    if !matches!(tokio::time::timeout(Duration::from_secs(1), connect).await, Ok(Ok(_))) {
        return false;
    }
    run_psql(port, ssl, "postgres", "SHOW data_directory").await.is_ok_and(|shown| Path::new(&shown) == data_dir)
}

/// Runs `psql` against 127.0.0.1:`port` as `postgres`, with the libpq options `ssl` (`sslmode=…`,
/// or empty for libpq's default); `Err` holds what went wrong.
async fn run_psql(port: u16, ssl: &str, db: &str, sql: &str) -> Result<String, String> {
    let conninfo =
        format!("host=127.0.0.1 port={port} user=postgres dbname={} connect_timeout=5 {ssl}", conninfo_value(db));
    let mut command = Command::new(pg_bin_dir().join("psql"));
    command
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", &conninfo, "-c", sql])
        // The explicit conninfo wins over PGHOST and friends, but PGOPTIONS would still apply.
        .env_remove("PGOPTIONS")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(PSQL_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => return Err(format!("failed to run psql: {err}")),
        Err(_elapsed) => return Err(format!("psql did not finish within {PSQL_TIMEOUT:?}")),
    };
    if output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout.strip_suffix('\n').unwrap_or(&stdout).to_owned())
    } else {
        Err(format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim_end()))
    }
}

/// `value` quoted for a libpq conninfo string.
fn conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The system user that owns the cluster when the tests run as root.
#[derive(Debug, Clone, Copy)]
struct SystemUser {
    uid: u32,
    gid: u32,
}

impl SystemUser {
    /// `None` when not root: the cluster then belongs to whoever runs the tests.
    fn for_postgres() -> Option<SystemUser> {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let user = parse_passwd(&passwd, "postgres");
        assert!(
            user.is_some(),
            "PostgreSQL refuses to run as root and there is no `postgres` user to run it as \
             (install PostgreSQL, which creates it: sudo apt-get install -y postgresql; \
             or run the tests as a non-root user)"
        );
        user
    }
}

/// Finds `name`'s uid and gid in the text of /etc/passwd (`name:x:uid:gid:…`).
fn parse_passwd(passwd: &str, name: &str) -> Option<SystemUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(SystemUser { uid, gid })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_passwd_finds_the_user() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgresql:x:7:7::/:/bin/false\n\
                      postgres:x:101:104:PostgreSQL administrator,,,:/var/lib/postgresql:/bin/bash\n";
        let user = parse_passwd(passwd, "postgres").unwrap();
        assert_eq!((user.uid, user.gid), (101, 104));
        assert!(parse_passwd(passwd, "nobody").is_none());
    }

    #[tokio::test]
    async fn launch_on_a_taken_port_reports_port_in_use() {
        let mut server = PgServer::start().await;
        server.stop().await;
        let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = taken.local_addr().unwrap().port();

        let err = server.launch(port).await.unwrap_err();

        assert!(err.port_in_use, "{}", err.message);
        assert!(err.message.contains("postgres.log"), "{}", err.message);
    }

    /// libpq options for verified TLS against `ca`.
    fn verify_full(ca: &Path) -> String {
        format!("sslmode=verify-full sslrootcert={}", conninfo_value(&ca.display().to_string()))
    }

    const SSL_IN_USE: &str = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

    #[tokio::test]
    async fn tls_server_accepts_tcp_only_over_verified_tls() {
        let mut server = PgServer::start_tls().await;
        let port = server.port();
        let ca = server.tls_ca_path().expect("a TLS server has a CA").to_owned();
        assert!(PgServer::start().await.tls_ca_path().is_none());

        assert_eq!(run_psql(port, &verify_full(&ca), "postgres", SSL_IN_USE).await.unwrap(), "t");
        // The `psql` helper (and the readiness probe) go through verified TLS as well.
        assert_eq!(server.psql("postgres", SSL_IN_USE).await, "t");
        let plain = run_psql(port, "sslmode=disable", "postgres", "SELECT 1").await.unwrap_err();
        assert!(plain.contains("no encryption"), "{plain}");
        let other_ca = TestCa::new();
        let wrong = run_psql(port, &verify_full(other_ca.ca_path()), "postgres", "SELECT 1").await.unwrap_err();
        assert!(wrong.contains("certificate verify failed"), "{wrong}");

        server.restart().await;
        assert_eq!(run_psql(port, &verify_full(&ca), "postgres", SSL_IN_USE).await.unwrap(), "t");
        let plain = run_psql(port, "sslmode=disable", "postgres", "SELECT 1").await.unwrap_err();
        assert!(plain.contains("no encryption"), "{plain}");
    }

    #[tokio::test]
    async fn tls_server_keeps_refusing_plain_tcp_for_password_roles() {
        let server = PgServer::start_tls().await;
        server.psql("postgres", "CREATE ROLE app LOGIN PASSWORD 'secret'").await;
        server.require_password_for("app").await;
        // Later conninfo keywords win over run_psql's `user=postgres`.
        let app = "user=app password=secret";
        let ca = server.tls_ca_path().unwrap();

        let tls = run_psql(server.port(), &format!("{} {app}", verify_full(ca)), "postgres", SSL_IN_USE).await;
        assert_eq!(tls.unwrap(), "t");
        let plain = run_psql(server.port(), &format!("sslmode=disable {app}"), "postgres", "SELECT 1").await;
        assert!(plain.as_ref().unwrap_err().contains("no encryption"), "{plain:?}");
    }
}
