//! [`RedisCluster`]: a private Redis Cluster on free ports, owned by one test: a few masters, each
//! with its replicas, every node a `redis-server` without persistence. For tests of cluster mode
//! (slot routing, `MOVED`, seed lists) and of a master's failover: kill a master, wait until one
//! of its replicas serves its slots.
//!
//! The nodes are joined by `redis-cli --cluster create`, as an operator would. The node timeout
//! is 1 s rather than 15 s, so a failover takes a few seconds. Nodes talk to us in raw RESP over
//! a `TcpStream`, like [`RedisServer`](crate::RedisServer)'s probe: no client library, and no
//! client-side view of the cluster that could hide what the nodes themselves report.
//!
//! [`RedisCluster::start_tls`] is the managed-Redis setup (`rediss://` cluster endpoints): every
//! node speaks TLS only, on its client port, its cluster bus and its replication link, with one
//! certificate from a private [`TestCa`] ([`RedisCluster::tls_ca_path`]) and no client
//! certificates. Our own raw RESP then goes over TLS as well.

use std::{
    fmt::{self, Write as _},
    fs::{self, File},
    future::Future,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use rustix::process::Signal;
use tempfile::TempDir;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    process::Command,
    time::Instant,
};
use tokio_rustls::TlsConnector;

use crate::{
    TestCa,
    binaries::{redis_cli_bin, redis_server_bin},
    free_port,
    process::{LaunchError, ServerProcess, launch, launch_on_free_port, log_tail},
    redis::{answers, listen_args},
    tls::server_name,
};

/// How long one node may take to answer `PING` after its start.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds `redis-cli --cluster create`, which itself polls until the nodes agree.
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes may take to agree on a healthy cluster (after creation, after a restart).
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a failover may take: with a 1 s node timeout it is usually 2 to 4 s.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bounds one command to one node (connect, TLS handshake, write, read).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How often the cluster's state is polled.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Attempts of `restart`, which must keep the node's ports and so can only wait for them.
const RESTART_ATTEMPTS: usize = 3;
/// Every slot of a Redis Cluster.
const SLOTS: &str = "16384";

/// A private Redis Cluster: `masters` masters with `replicas_per_master` replicas each, every
/// node a `redis-server` process on its own port, without persistence.
///
/// Nodes are numbered in start order; which ones `redis-cli` made masters is read back from the
/// nodes (use [`RedisCluster::master_for_key`] rather than assuming). Dropping it kills every node
/// and deletes their directories (and the TLS files).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<Node>,
    /// The nodes that were masters when the cluster was created: the seed list.
    masters: Vec<usize>,
    /// Holds a directory per node, `redis-cli.log`, and the TLS files of a TLS cluster.
    dir: TempDir,
    /// The certificates of a [`RedisCluster::start_tls`] cluster, kept across restarts.
    tls: Option<Tls>,
}

/// One CA and server certificate for every node of a TLS cluster (each node's certificate also
/// serves as its client certificate on the cluster bus and for replication), and our client.
struct Tls {
    ca: TestCa,
    /// Trusts `ca`. One for all our connections, so polls resume TLS sessions.
    connector: TlsConnector,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `TlsConnector` has no `Debug`; the CA says which cluster this is.
        f.debug_struct("Tls").field("ca", &self.ca).finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Node {
    process: Option<ServerProcess>,
    port: u16,
    /// The cluster bus port, picked like `port`: the default, `port + 10000`, may be in the
    /// kernel's ephemeral range or taken.
    bus_port: u16,
    /// Holds `nodes.conf` (kept across restarts: the node's identity) and `redis.log`.
    dir: PathBuf,
    /// The node this one replicated when last looked (at start, before a kill, after a restart).
    replica_of: Option<usize>,
}

impl RedisCluster {
    /// Starts `masters * (1 + replicas_per_master)` nodes on free ports, makes them a cluster with
    /// `redis-cli --cluster create`, and returns once every node reports the cluster `ok` with all
    /// 16384 slots assigned, the nodes agree on who serves which slots, and every replica's link
    /// to its master is up.
    ///
    /// Panics, with the logs, when a binary is missing or the cluster does not come up. Redis
    /// needs at least 3 masters.
    pub async fn start(masters: usize, replicas_per_master: usize) -> RedisCluster {
        Self::start_with(masters, replicas_per_master, false).await
    }

    /// [`RedisCluster::start`] with TLS only, as a managed Redis Cluster: every node's port speaks
    /// TLS (plain TCP is not served at all), and so do the cluster bus and replication. One
    /// private CA ([`RedisCluster::tls_ca_path`]) signed the certificate, for `localhost` and
    /// `127.0.0.1`, that every node serves; clients need no certificate. The URLs are then
    /// `rediss://127.0.0.1:{port}`.
    pub async fn start_tls(masters: usize, replicas_per_master: usize) -> RedisCluster {
        Self::start_with(masters, replicas_per_master, true).await
    }

    async fn start_with(masters: usize, replicas_per_master: usize, tls: bool) -> RedisCluster {
        assert!(masters >= 3, "a Redis Cluster needs at least 3 masters, not {masters}");
        let dir = tempfile::Builder::new()
            .prefix("testkit-redis-cluster-")
            .tempdir()
            .expect("failed to create a temporary directory for the Redis Cluster");
        let tls = tls.then(|| {
            let ca = TestCa::create_in(dir.path());
            Tls { connector: ca.connector(), ca }
        });
        let mut nodes = Vec::new();
        for index in 0..masters * (1 + replicas_per_master) {
            let node_dir = dir.path().join(format!("node-{index}"));
            fs::create_dir(&node_dir).expect("failed to create a Redis Cluster node's directory");
            let mut bus_port = 0;
            let (port, process) = launch_on_free_port("a Redis Cluster node", |port| {
                bus_port = free_port();
                launch_node(&node_dir, port, bus_port, tls.as_ref())
            })
            .await;
            nodes.push(Node { process: Some(process), port, bus_port, dir: node_dir, replica_of: None });
        }
        let mut cluster = RedisCluster { nodes, masters: Vec::new(), dir, tls };
        cluster.create(replicas_per_master).await;
        cluster.wait_until_converged("the new cluster to be ready").await;
        cluster.refresh_roles().await;
        cluster.masters = (0..cluster.nodes.len()).filter(|&node| cluster.nodes[node].replica_of.is_none()).collect();
        assert_eq!(cluster.masters.len(), masters, "redis-cli made other nodes masters than asked: {cluster:?}");
        cluster
    }

    /// `redis://127.0.0.1:{port}` (`rediss://` with TLS) of each node that was a master when the
    /// cluster was created, comma-separated: a seed list (a client learns the rest, and skips a
    /// dead seed).
    pub fn urls(&self) -> String {
        self.masters.iter().map(|&node| self.node_url(node)).collect::<Vec<_>>().join(",")
    }

    /// `redis://127.0.0.1:{port}` (`rediss://` with TLS) of node 0.
    pub fn url(&self) -> String {
        self.node_url(0)
    }

    /// `redis://127.0.0.1:{port}` (`rediss://` with TLS) of every node, in node order, masters
    /// and replicas.
    pub fn node_urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|node| self.node_url(node)).collect()
    }

    /// The CA certificate (PEM) that signed the nodes' certificate in a
    /// [`RedisCluster::start_tls`] cluster, for the clients' CA file setting; `None` without TLS.
    pub fn tls_ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|tls| tls.ca.ca_path())
    }

    /// The TCP port `node` listens on (127.0.0.1; TLS only in a TLS cluster); the same across
    /// restarts.
    pub fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    /// The log file of `node` (stdout and stderr of every start, appended).
    pub fn log_path(&self, node: usize) -> PathBuf {
        self.nodes[node].dir.join("redis.log")
    }

    /// The node serving `key`'s slot as master, as the first running node that answers sees it.
    ///
    /// Panics when no node answers or none serves the slot.
    pub async fn master_for_key(&self, key: &str) -> usize {
        let mut seen = Vec::new();
        for (index, _) in self.running() {
            let slot = match self.query(index, &["CLUSTER", "KEYSLOT", key]).await {
                Ok(slot) => slot.parse::<u16>().unwrap_or_else(|err| panic!("CLUSTER KEYSLOT replied {slot:?}: {err}")),
                Err(err) => {
                    seen.push(format!("node {index}: {err}"));
                    continue;
                }
            };
            let table = match self.query(index, &["CLUSTER", "NODES"]).await {
                Ok(table) => table,
                Err(err) => {
                    seen.push(format!("node {index}: {err}"));
                    continue;
                }
            };
            let Some(owner) = slot_owners(&table).into_iter().find(|range| range.start <= slot && slot <= range.end)
            else {
                panic!("node {index} says no node serves slot {slot} (key {key:?}):\n{table}");
            };
            return self.node_on_port(owner.port);
        }
        panic!("no node answered which one serves key {key:?}: {}", seen.join("; "))
    }

    /// Kills `node` with SIGKILL and waits until it is gone. Does nothing if it is not running.
    ///
    /// First notes which node each running node replicates, for
    /// [`RedisCluster::wait_for_failover`].
    pub async fn kill(&mut self, node: usize) {
        self.refresh_roles().await;
        if let Some(mut process) = self.nodes[node].process.take() {
            process.kill().await;
        }
    }

    /// Waits until one of the replicas of `killed` (a master stopped with
    /// [`RedisCluster::kill`]) is promoted to master and the running nodes agree on a healthy
    /// cluster again (as [`RedisCluster::start`] waits for); returns the promoted node.
    ///
    /// Panics, with what it saw last and the replicas' logs, if that takes more than 30 s;
    /// at once if `killed` is running or had no replica.
    pub async fn wait_for_failover(&self, killed: usize) -> usize {
        assert!(self.nodes[killed].process.is_none(), "node {killed} is running: kill it first");
        let replicas: Vec<usize> =
            self.running().filter(|(_, node)| node.replica_of == Some(killed)).map(|(index, _)| index).collect();
        assert!(!replicas.is_empty(), "node {killed} had no running replica to take over: {self:?}");
        let replicas = &replicas;
        let what = format!("a replica of node {killed} (one of nodes {replicas:?}) to take over its slots");
        let promoted = poll(FAILOVER_TIMEOUT, &what, move || async move {
            let mut roles = Vec::new();
            let mut promoted = None;
            for &replica in replicas {
                let role = match self.query(replica, &["INFO", "replication"]).await {
                    Ok(info) => info_field(&info, "role").unwrap_or("(no role)").to_owned(),
                    Err(err) => err,
                };
                if role == "master" {
                    promoted = Some(replica);
                }
                roles.push(format!("node {replica}: {role}"));
            }
            let Some(promoted) = promoted else { return Err(roles.join(", ")) };
            self.check_converged().await.map_err(|err| format!("node {promoted} is master, but {err}"))?;
            Ok(promoted)
        })
        .await;
        promoted.unwrap_or_else(|err| panic!("{err}\n{}", self.log_tails(replicas.iter().copied())))
    }

    /// The nodes that replicate `master`, as the roles were last read.
    pub fn replicas_of(&self, master: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&node| self.nodes[node].replica_of == Some(master)).collect()
    }

    /// Freezes `node` (SIGSTOP): it answers nothing and, for a replica, replication to it stops
    /// while its master goes on writing, so a failover to it afterwards loses the newest writes.
    /// [`RedisCluster::thaw`] resumes it.
    pub fn freeze(&self, node: usize) {
        self.nodes[node].process.as_ref().expect("the node is running").freeze(true);
    }

    /// Resumes a frozen node (SIGCONT).
    pub fn thaw(&self, node: usize) {
        self.nodes[node].process.as_ref().expect("the node is running").freeze(false);
    }

    /// Starts `node` again on its ports and with its `nodes.conf` (stopping it first if it is
    /// running), and returns once the cluster is healthy again, as [`RedisCluster::start`] waits
    /// for. It comes back empty; a failed-over master comes back as a replica of its successor.
    ///
    /// Panics if it cannot start, for instance because another process took a port meanwhile.
    pub async fn restart(&mut self, node: usize) {
        if let Some(process) = self.nodes[node].process.take() {
            process.stop(Signal::TERM).await;
        }
        let (dir, port, bus_port) = (self.nodes[node].dir.clone(), self.nodes[node].port, self.nodes[node].bus_port);
        for attempt in 1..=RESTART_ATTEMPTS {
            match launch_node(&dir, port, bus_port, self.tls.as_ref()).await {
                Ok(process) => {
                    self.nodes[node].process = Some(process);
                    break;
                }
                // The ports are ours to keep, so all we can do is give their holder a moment.
                Err(err) if err.port_in_use && attempt < RESTART_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => panic!("failed to restart Redis Cluster node {node}: {}", err.message),
            }
        }
        self.wait_until_converged(&format!("node {node} to rejoin the cluster")).await;
        self.refresh_roles().await;
    }

    /// Runs `redis-cli --cluster create` over every node, output in `redis-cli.log`.
    async fn create(&self, replicas_per_master: usize) {
        let log_path = self.dir.path().join("redis-cli.log");
        let log = File::create(&log_path).expect("failed to create redis-cli.log");
        let mut command = Command::new(redis_cli_bin());
        command
            .args(["--cluster", "create"])
            .args(self.nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)))
            .args(["--cluster-replicas", &replicas_per_master.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("failed to duplicate the log file handle"))
            .stderr(log)
            .kill_on_drop(true);
        if let Some(tls) = &self.tls {
            command.arg("--tls").arg("--cacert").arg(tls.ca.ca_path());
        }
        let mut child = command.spawn().unwrap_or_else(|err| panic!("failed to run redis-cli --cluster create: {err}"));
        let failure = match tokio::time::timeout(CREATE_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) if status.success() => return,
            Ok(Ok(status)) => format!("failed ({status})"),
            Ok(Err(err)) => format!("could not be waited for: {err}"),
            Err(_elapsed) => {
                let _ = child.kill().await;
                format!("did not finish within {CREATE_TIMEOUT:?} (killed it)")
            }
        };
        panic!(
            "redis-cli --cluster create {failure}\n--- {} ---\n{}\n{}",
            log_path.display(),
            log_tail(&log_path),
            self.log_tails(0..self.nodes.len())
        );
    }

    /// Polls [`RedisCluster::check_converged`]; panics with what it saw last and the logs.
    async fn wait_until_converged(&self, what: &str) {
        let converged = poll(CONVERGE_TIMEOUT, what, || self.check_converged()).await;
        converged.unwrap_or_else(|err| panic!("{err}\n{}", self.log_tails(0..self.nodes.len())));
    }

    /// `Ok` when every running node reports `cluster_state:ok` with every slot assigned and every
    /// node known, every replica's link to its master is up, and all of them agree on who serves
    /// which slots; otherwise the first thing that is not so yet.
    async fn check_converged(&self) -> Result<(), String> {
        let mut owners: Option<(usize, Vec<SlotRange>)> = None;
        for (index, _) in self.running() {
            let info = self.query(index, &["CLUSTER", "INFO"]).await.map_err(|err| format!("node {index}: {err}"))?;
            let known = self.nodes.len().to_string();
            for (field, expected) in
                [("cluster_state", "ok"), ("cluster_slots_assigned", SLOTS), ("cluster_known_nodes", &known)]
            {
                let value = info_field(&info, field);
                if value != Some(expected) {
                    return Err(format!("node {index} reports {field}:{}, not {expected}", value.unwrap_or("?")));
                }
            }
            let replication =
                self.query(index, &["INFO", "replication"]).await.map_err(|err| format!("node {index}: {err}"))?;
            let link = info_field(&replication, "master_link_status");
            if info_field(&replication, "role") == Some("slave") && link != Some("up") {
                return Err(format!("replica node {index} reports master_link_status:{}", link.unwrap_or("?")));
            }
            // A node can be `ok` while still holding an outdated slot map, e.g. a restarted master
            // that has not heard of its successor yet.
            let table = self.query(index, &["CLUSTER", "NODES"]).await.map_err(|err| format!("node {index}: {err}"))?;
            let node_owners = slot_owners(&table);
            match &owners {
                None => owners = Some((index, node_owners)),
                Some((first, first_owners)) if *first_owners != node_owners => {
                    return Err(format!(
                        "nodes {first} and {index} disagree on who serves which slots: {first_owners:?} vs {node_owners:?}"
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Notes which node each running node replicates (`INFO replication`); a node that does not
    /// answer keeps what was noted before.
    async fn refresh_roles(&mut self) {
        for index in 0..self.nodes.len() {
            if self.nodes[index].process.is_none() {
                continue;
            }
            let Ok(info) = self.query(index, &["INFO", "replication"]).await else { continue };
            self.nodes[index].replica_of = match info_field(&info, "role") {
                Some("slave") => info_field(&info, "master_port")
                    .and_then(|port| port.parse().ok())
                    .and_then(|port: u16| self.nodes.iter().position(|node| node.port == port)),
                _ => None,
            };
        }
    }

    /// Sends `command` to `node` (over TLS in a TLS cluster) and returns the text of its reply,
    /// as [`pipeline`] does.
    async fn query(&self, node: usize, command: &[&str]) -> Result<String, String> {
        self.pipeline(node, &[command]).await?.remove(0)
    }

    /// [`pipeline`] to `node`, over TLS in a TLS cluster.
    async fn pipeline(&self, node: usize, commands: &[&[&str]]) -> Result<Vec<Result<String, String>>, String> {
        pipeline(self.nodes[node].port, self.tls.as_ref().map(|tls| &tls.connector), commands).await
    }

    fn running(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes.iter().enumerate().filter(|(_, node)| node.process.is_some())
    }

    fn node_url(&self, node: usize) -> String {
        let scheme = if self.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.nodes[node].port)
    }

    fn node_on_port(&self, port: u16) -> usize {
        self.nodes
            .iter()
            .position(|node| node.port == port)
            .unwrap_or_else(|| panic!("the cluster names port {port}, which is none of our nodes: {self:?}"))
    }

    /// The last lines of the logs of `nodes`, for failure messages.
    fn log_tails(&self, nodes: impl IntoIterator<Item = usize>) -> String {
        let mut tails = String::new();
        for node in nodes {
            let path = self.log_path(node);
            let _ = writeln!(tails, "--- last lines of node {node}'s {} ---\n{}", path.display(), log_tail(&path));
        }
        tails
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Explicit, so every node is dead before the directory is deleted.
        for node in &mut self.nodes {
            drop(node.process.take());
        }
    }
}

/// Starts one cluster node in `dir` (TLS only with `tls`) and waits until it answers `PING` (as
/// the process we started).
async fn launch_node(dir: &Path, port: u16, bus_port: u16, tls: Option<&Tls>) -> Result<ServerProcess, LaunchError> {
    let mut command = Command::new(redis_server_bin());
    listen_args(&mut command, port, tls.map(|t| &t.ca));
    if tls.is_some() {
        // The bus and the replication links use the node's certificate, as client and as
        // server: the bus demands a peer certificate whatever `--tls-auth-clients` says.
        command.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
    }
    command
        .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
        .args(["--cluster-port", &bus_port.to_string()])
        // A master is marked failed after 1 s without an answer (the default is 15 s).
        .args(["--cluster-node-timeout", "1000"])
        // Replicas stay with the master they were given, so a failover has a replica to promote.
        .args(["--cluster-allow-replica-migration", "no"])
        // A replica's first sync starts at once, not after the default 5 s wait for more replicas.
        .args(["--repl-diskless-sync-delay", "0"])
        // No RDB snapshots, no AOF: a restart starts empty and only nodes.conf is written.
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .current_dir(dir)
        .stdin(Stdio::null());
    let connector = tls.map(|tls| &tls.connector);
    launch("redis-server", command, &dir.join("redis.log"), READY_TIMEOUT, |pid| answers(port, pid, None, connector))
        .await
}

/// Polls `check` until it returns `Ok`, for at most `timeout`. `Err` says that it timed out
/// waiting for `what`, with the last thing `check` saw instead.
async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    let mut seen = String::from("(no check finished)");
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(now)) => seen = now,
            Err(_elapsed) => {}
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}; last seen: {seen}"));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Sends `commands` on one connection to the node on `port`, over TLS when `tls` is given (a
/// client trusting the nodes' CA), and returns the text of each reply (a simple string, an
/// integer, a bulk string); an inner `Err` holds an error reply (`MOVED …`) or `(nil)`, the outer
/// one why no replies came. `WAIT` counts the replicas that have this connection's writes.
async fn pipeline(
    port: u16,
    tls: Option<&TlsConnector>,
    commands: &[&[&str]],
) -> Result<Vec<Result<String, String>>, String> {
    let mut request = String::new();
    for command in commands {
        let _ = write!(request, "*{}\r\n", command.len());
        for arg in *command {
            let _ = write!(request, "${}\r\n{arg}\r\n", arg.len());
        }
    }
    // QUIT makes the server close the connection, so the whole reply can be read to the end.
    request.push_str("QUIT\r\n");
    let exchange = async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        match tls {
            Some(tls) => exchange(tls.connect(server_name(), stream).await?, request.as_bytes()).await,
            None => exchange(stream, request.as_bytes()).await,
        }
    };
    let reply = match tokio::time::timeout(COMMAND_TIMEOUT, exchange).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(err)) => return Err(format!("port {port}: {err}")),
        Err(_elapsed) => return Err(format!("port {port}: no reply within {COMMAND_TIMEOUT:?}")),
    };
    let mut rest = reply.as_slice();
    let mut replies = Vec::new();
    for _ in commands {
        let (parsed, after) = parse_reply(rest).ok_or_else(|| {
            format!("port {port}: incomplete or unexpected reply {:?}", String::from_utf8_lossy(&reply))
        })?;
        replies.push(parsed);
        rest = after;
    }
    Ok(replies)
}

/// Writes `request` and reads the reply to the end of the stream.
async fn exchange(mut stream: impl AsyncRead + AsyncWrite + Unpin, request: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(request).await?;
    let mut reply = Vec::new();
    // Over TLS too: Redis ends the session with a close_notify, so this is a clean end of stream.
    stream.read_to_end(&mut reply).await?;
    Ok(reply)
}

/// Reads one RESP2 reply (no arrays: nothing here asks for one) off the front of `bytes`.
fn parse_reply(bytes: &[u8]) -> Option<(Result<String, String>, &[u8])> {
    let end = bytes.windows(2).position(|pair| pair == b"\r\n")?;
    let line = std::str::from_utf8(&bytes[..end]).ok()?;
    let rest = &bytes[end + 2..];
    match line.split_at_checked(1)? {
        ("+" | ":", value) => Some((Ok(value.to_owned()), rest)),
        ("-", error) => Some((Err(error.to_owned()), rest)),
        ("$", "-1") => Some((Err("(nil)".to_owned()), rest)),
        ("$", len) => {
            let len: usize = len.parse().ok()?;
            let body = rest.get(..len)?;
            let after = rest.get(len..)?.strip_prefix(b"\r\n")?;
            Some((Ok(String::from_utf8_lossy(body).into_owned()), after))
        }
        _ => None,
    }
}

/// The value of `field` in an `INFO` or `CLUSTER INFO` reply (`field:value` lines).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
}

/// Slots `start..=end`, served by the master on `port`.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SlotRange {
    start: u16,
    end: u16,
    port: u16,
}

/// Who serves which slots, sorted, from a `CLUSTER NODES` reply: lines of
/// `id ip:port@bus-port flags master ping pong epoch link slot…`, where a slot is `N` or `N-M`,
/// or `[N->-id]` / `[N-<-id]` for one being migrated (skipped: its owner is listed as well).
fn slot_owners(table: &str) -> Vec<SlotRange> {
    let mut owners = Vec::new();
    for line in table.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(port) = fields.get(1).and_then(|addr| addr.split('@').next()?.rsplit_once(':')?.1.parse().ok()) else {
            continue;
        };
        for slots in fields.iter().skip(8).filter(|slots| !slots.starts_with('[')) {
            let (start, end) = slots.split_once('-').unwrap_or((slots, slots));
            if let (Ok(start), Ok(end)) = (start.parse(), end.parse()) {
                owners.push(SlotRange { start, end, port });
            }
        }
    }
    owners.sort();
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_owners_reads_ranges_and_single_slots() {
        let table = "\
            07c3 127.0.0.1:30004@31004 slave e7d1 0 1426238317239 4 connected\n\
            67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922 [5460-<-292f]\n\
            292f 127.0.0.1:30003@31003,host master - 0 1426238318243 3 connected 10923-16383\n\
            e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5459 5460\n\
            6ec2 127.0.0.1:30005@31005 master,fail - 1426238316232 1426238316232 0 connected\n";
        assert_eq!(
            slot_owners(table),
            vec![
                SlotRange { start: 0, end: 5459, port: 30001 },
                SlotRange { start: 5460, end: 5460, port: 30001 },
                SlotRange { start: 5461, end: 10922, port: 30002 },
                SlotRange { start: 10923, end: 16383, port: 30003 },
            ]
        );
    }

    #[test]
    fn parse_reply_reads_each_kind() {
        let (reply, rest) = parse_reply(b"$5\r\nhello\r\n:3\r\n").unwrap();
        assert_eq!(reply, Ok("hello".to_owned()));
        assert_eq!(parse_reply(rest).unwrap().0, Ok("3".to_owned()));
        assert_eq!(parse_reply(b"-MOVED 12 127.0.0.1:7000\r\n").unwrap().0, Err("MOVED 12 127.0.0.1:7000".to_owned()));
        assert_eq!(parse_reply(b"$-1\r\n").unwrap().0, Err("(nil)".to_owned()));
        assert_eq!(parse_reply(b"$5\r\nhel"), None);
        assert_eq!(info_field("# Cluster\r\ncluster_state:ok\r\n", "cluster_state"), Some("ok"));
    }

    #[tokio::test]
    async fn a_killed_master_fails_over_to_its_replica() {
        fails_over_and_rejoins(false).await;
    }

    #[tokio::test]
    async fn a_killed_tls_master_fails_over_to_its_replica() {
        fails_over_and_rejoins(true).await;
    }

    #[tokio::test]
    async fn a_tls_cluster_serves_only_over_tls() {
        let started = std::time::Instant::now();
        let cluster = RedisCluster::start_tls(3, 0).await;
        let start_took = started.elapsed();
        let urls = cluster.node_urls();
        assert_eq!(urls, (0..3).map(|node| format!("rediss://127.0.0.1:{}", cluster.port(node))).collect::<Vec<_>>());
        assert_eq!(cluster.urls(), urls.join(","));
        assert_eq!(cluster.url(), urls[0]);
        let ca = &cluster.tls.as_ref().unwrap().ca;
        assert_eq!(fs::read_to_string(cluster.tls_ca_path().unwrap()).unwrap(), ca.ca_pem());

        let key = "testkit:orders:42";
        let master = cluster.master_for_key(key).await;
        let port = cluster.port(master);
        let plain = pipeline(port, None, &[&["PING"]]).await;
        assert!(!matches!(&plain, Ok(replies) if replies[0].as_deref() == Ok("PONG")), "{plain:?}");
        let other_ca = TestCa::new();
        let untrusted = pipeline(port, Some(&other_ca.connector()), &[&["PING"]]).await.unwrap_err();
        assert!(untrusted.contains("UnknownIssuer"), "{untrusted}");

        let moved = cluster.query((master + 1) % 3, &["SET", key, "x"]).await.unwrap_err();
        assert!(moved.starts_with("MOVED ") && moved.ends_with(&format!(" 127.0.0.1:{port}")), "{moved}");
        assert_eq!(cluster.query(master, &["SET", key, "over TLS"]).await, Ok("OK".to_owned()));
        assert_eq!(cluster.query(master, &["GET", key]).await, Ok("over TLS".to_owned()));
        eprintln!("TLS cluster (3 masters) started in {start_took:?}");
    }

    /// Starts a cluster of 3 masters with a replica each (over TLS with `tls`), kills the master
    /// of a key written before (and replicated), and checks that its replica takes over with the
    /// key and that the old master rejoins as its replica.
    async fn fails_over_and_rejoins(tls: bool) {
        let started = std::time::Instant::now();
        let mut cluster = if tls { RedisCluster::start_tls(3, 1).await } else { RedisCluster::start(3, 1).await };
        let start_took = started.elapsed();
        assert_eq!(cluster.tls_ca_path().is_some(), tls);
        let scheme = if tls { "rediss://" } else { "redis://" };
        assert!(cluster.node_urls().iter().all(|url| url.starts_with(scheme)), "{:?}", cluster.node_urls());
        assert_eq!(cluster.node_urls().len(), 6);
        assert_eq!(cluster.urls().split(',').count(), 3);
        assert_eq!(cluster.url(), cluster.node_urls()[0]);

        let key = "testkit:orders:42";
        let master = cluster.master_for_key(key).await;
        let other = (master + 1) % 6;
        let moved = cluster.query(other, &["SET", key, "x"]).await.unwrap_err();
        assert!(moved.starts_with("MOVED "), "node {other} should redirect, said {moved:?}");
        // On one connection, so WAIT counts the replicas that have this SET: it must survive.
        let replies = cluster.pipeline(master, &[&["SET", key, "before"], &["WAIT", "1", "5000"]]).await.unwrap();
        assert_eq!(replies, [Ok("OK".to_owned()), Ok("1".to_owned())]);

        cluster.kill(master).await;
        let killed = std::time::Instant::now();
        let promoted = cluster.wait_for_failover(master).await;
        let failover_took = killed.elapsed();

        assert_ne!(promoted, master);
        assert_eq!(cluster.master_for_key(key).await, promoted);
        assert_eq!(cluster.query(promoted, &["GET", key]).await, Ok("before".to_owned()));
        let info = cluster.query(promoted, &["CLUSTER", "INFO"]).await.unwrap();
        assert_eq!(info_field(&info, "cluster_state"), Some("ok"), "{info}");

        let restarted = std::time::Instant::now();
        cluster.restart(master).await;
        let restart_took = restarted.elapsed();
        let replication = cluster.query(master, &["INFO", "replication"]).await.unwrap();
        assert_eq!(info_field(&replication, "role"), Some("slave"), "{replication}");
        assert_eq!(info_field(&replication, "master_port"), Some(cluster.port(promoted).to_string().as_str()));
        assert_eq!(cluster.master_for_key(key).await, promoted);
        let kind = if tls { "TLS" } else { "plain" };
        eprintln!(
            "{kind} cluster started in {start_took:?}, failed over in {failover_took:?}, rejoined in {restart_took:?}"
        );
    }
}
