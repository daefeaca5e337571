//! Where the replay log lives: one Redis server, or a Redis Cluster.
//!
//! `REDIS_URL` names one server, any node of a cluster, or a comma list of cluster seed nodes;
//! `REDIS_CLUSTER` says which (`auto`, the default: a comma list is a cluster, and a single
//! URL is asked `INFO cluster` when connecting; `true`; `false`). Everything above this module
//! sees one [`Conn`] either way: redis-rs's cluster client routes each call by its key's slot
//! and follows `MOVED`/`ASK` and topology changes, and every key of the log shares one hash
//! tag (`protocol::log`), so each atomic step runs on one node.
//!
//! Pub/sub differs: a single server gets `PUBLISH`/`SUBSCRIBE`; a cluster gets sharded pub/sub
//! (`SPUBLISH` in the append script, `SSUBSCRIBE` on the replicas), which stays on the nodes
//! of the log's slot instead of being broadcast over the whole cluster bus. The shard channel
//! is the channel name itself: `orders_updates` hashes to the same slot as the log's keys
//! `{orders_updates}:…`, as Redis requires of a script.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline,
    ProtocolVersion, PushInfo, PushKind, RedisError, RedisFuture, RedisResult, TlsCertificates, Value,
    aio::{ConnectionLike, MultiplexedConnection, PubSub},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};
use tokio::sync::mpsc;

/// Whether `REDIS_URL` names a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterMode {
    /// A comma list is a cluster; one URL is asked when connecting.
    #[default]
    Auto,
    /// A cluster, whatever the server says.
    Cluster,
    /// One server (or a managed endpoint that proxies a cluster).
    Single,
}

impl std::str::FromStr for ClusterMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "true" | "yes" | "1" => Ok(Self::Cluster),
            "false" | "no" | "0" => Ok(Self::Single),
            other => Err(format!("{other:?}")),
        }
    }
}

/// Splits a `REDIS_URL` value into its URLs (one, or a comma list of seed nodes).
pub fn split_urls(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned).collect()
}

/// The Redis deployment a service talks to.
#[derive(Clone)]
pub struct RedisTarget {
    urls: Vec<String>,
    mode: ClusterMode,
    single: redis::Client,
    /// The CA `rediss://` certificates must chain to, if not the system's trust store.
    ca: Option<Vec<u8>>,
    /// The cluster's nodes as last seen, seeds for the next connection besides `urls`: a
    /// `REDIS_URL` naming one node must not strand the service when that node dies.
    learned: Arc<Mutex<Vec<ConnectionInfo>>>,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| crate::env::redact_url(u)).collect();
        f.debug_struct("RedisTarget").field("urls", &urls).field("mode", &self.mode).finish()
    }
}

/// Timeouts of one connection: to connect, and for each reply.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting (and, for a cluster, discovering its slots).
    pub connect: Duration,
    /// One call, including the cluster client's redirects and retries.
    pub response: Duration,
}

impl RedisTarget {
    /// The deployment `url` (one URL or a comma list) names, in `mode`.
    ///
    /// # Errors
    /// A URL redis-rs cannot use (`InvalidClientConfig`), or a comma list with
    /// `REDIS_CLUSTER=false`.
    pub fn open(url: &str, mode: ClusterMode, ca: Option<&[u8]>) -> RedisResult<Self> {
        let urls = split_urls(url);
        let Some(first) = urls.first() else {
            return Err(RedisError::from((ErrorKind::InvalidClientConfig, "REDIS_URL is empty")));
        };
        if urls.len() > 1 && mode == ClusterMode::Single {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "REDIS_URL lists several nodes but REDIS_CLUSTER=false; list one URL, or set REDIS_CLUSTER=true",
            )));
        }
        let ca = ca.map(<[u8]>::to_vec);
        let single = client(first, ca.as_ref())?;
        for other in &urls[1..] {
            client(other, ca.as_ref())?;
        }
        Ok(Self { urls, mode, single, ca, learned: Arc::default() })
    }

    /// Whether this is a cluster: from the setting, or else by asking the first node.
    pub async fn is_cluster(&self, timeouts: Timeouts) -> RedisResult<bool> {
        match self.mode {
            ClusterMode::Cluster => Ok(true),
            ClusterMode::Single => Ok(false),
            ClusterMode::Auto if self.urls.len() > 1 => Ok(true),
            // Known from an earlier connection: the one URL may name a node that is gone.
            ClusterMode::Auto if !self.learned().is_empty() => Ok(true),
            ClusterMode::Auto => {
                let mut conn =
                    self.single.get_multiplexed_async_connection_with_config(&single_config(timeouts)).await?;
                cluster_enabled(&mut conn).await
            }
        }
    }

    /// A connection for commands, to the one server or to the cluster.
    pub async fn connect(&self, timeouts: Timeouts) -> RedisResult<Conn> {
        if self.is_cluster(timeouts).await? {
            let client = self.cluster_builder(timeouts)?.build()?;
            let mut conn = client.get_async_connection().await?;
            self.learn(&mut conn).await;
            return Ok(Conn::Cluster(conn));
        }
        let mut conn = self.single.get_multiplexed_async_connection_with_config(&single_config(timeouts)).await?;
        redis::cmd("PING").query_async::<()>(&mut conn).await?;
        Ok(Conn::Single(conn))
    }

    /// A subscription to `channel`: `SUBSCRIBE` on one server, `SSUBSCRIBE` on a cluster.
    pub async fn subscribe(&self, channel: &str, timeouts: Timeouts) -> RedisResult<Subscription> {
        if self.is_cluster(timeouts).await? {
            let (tx, rx) = mpsc::unbounded_channel();
            let client =
                self.cluster_builder(timeouts)?.use_protocol(ProtocolVersion::RESP3).push_sender(tx).build()?;
            let mut conn = client.get_async_connection().await?;
            conn.ssubscribe(channel).await?;
            return Ok(Subscription::Cluster { conn, pushes: rx, confirmed: false });
        }
        let mut pubsub = self.single.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(Subscription::Single(Box::new(pubsub)))
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Vec<ConnectionInfo>> {
        self.learned.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers the nodes `conn`'s cluster has now (best effort: the next connection simply
    /// has fewer seeds if this fails), addressed like the first URL (credentials, TLS).
    async fn learn(&self, conn: &mut ClusterConnection) {
        let Ok(nodes) = redis::cmd("CLUSTER").arg("NODES").query_async::<String>(conn).await else { return };
        let Ok(template) = self.urls[0].as_str().into_connection_info() else { return };
        let seeds: Vec<ConnectionInfo> = node_addresses(&nodes)
            .into_iter()
            .map(|(host, port)| {
                let addr = match template.addr() {
                    ConnectionAddr::TcpTls { insecure, tls_params, .. } => {
                        ConnectionAddr::TcpTls { host, port, insecure: *insecure, tls_params: tls_params.clone() }
                    }
                    _ => ConnectionAddr::Tcp(host, port),
                };
                template.clone().set_addr(addr)
            })
            .collect();
        if !seeds.is_empty() {
            *self.learned() = seeds;
        }
    }

    fn cluster_builder(&self, timeouts: Timeouts) -> RedisResult<ClusterClientBuilder> {
        let mut seeds = Vec::new();
        for url in &self.urls {
            seeds.push(url.as_str().into_connection_info()?);
        }
        seeds.extend(self.learned().iter().cloned());
        let builder = ClusterClientBuilder::new(seeds);
        let builder = match &self.ca {
            Some(pem) => builder.certs(TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) }),
            None => builder,
        };
        Ok(builder
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            // The cluster client retries redirects and reconnects inside one call; bound the
            // whole of it, so a call during a failover fails in time and the caller's own
            // backoff (and log) takes over.
            .overall_response_timeout(Some(timeouts.response)))
    }
}

/// `(ip, port)` of the nodes a `CLUSTER NODES` reply lists that are not failed:
/// `<id> <ip:port@cport[,hostname]> <flags> …` per line.
fn node_addresses(reply: &str) -> Vec<(String, u16)> {
    reply
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, address, flags) = (fields.next()?, fields.next()?, fields.next()?);
            if flags.split(',').any(|f| matches!(f, "fail" | "fail?" | "handshake" | "noaddr")) {
                return None;
            }
            let (ip, port) = address.split(['@', ',']).next()?.rsplit_once(':')?;
            Some((ip.to_owned(), port.parse().ok().filter(|p| *p != 0)?))
        })
        .collect()
}

/// A client for one URL: `rediss://` verified against `ca` when given, else the system's trust store.
///
/// # Errors
/// A URL redis-rs cannot use.
pub fn client(url: &str, ca: Option<&Vec<u8>>) -> RedisResult<redis::Client> {
    match ca {
        Some(pem) if url.starts_with("rediss://") => {
            redis::Client::build_with_tls(url, TlsCertificates { client_tls: None, root_cert: Some(pem.clone()) })
        }
        _ => redis::Client::open(url),
    }
}

fn single_config(timeouts: Timeouts) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeouts.connect))
        .set_response_timeout(Some(timeouts.response))
}

/// `INFO cluster` of a node says `cluster_enabled:1`.
pub async fn cluster_enabled<C: ConnectionLike>(conn: &mut C) -> RedisResult<bool> {
    let info: String = redis::cmd("INFO").arg("cluster").query_async(conn).await?;
    Ok(info.lines().any(|line| line.trim() == "cluster_enabled:1"))
}

/// A command connection to one server or to a cluster; cheap to clone (both multiplex).
#[derive(Clone)]
pub enum Conn {
    /// One server.
    Single(MultiplexedConnection),
    /// A cluster: each call goes to the node serving its key's slot.
    Cluster(ClusterConnection),
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_cluster() { "Conn::Cluster" } else { "Conn::Single" })
    }
}

impl Conn {
    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Checks that the server holding `key` answers: PING on one server. On a cluster PING
    /// goes to every master, and one that is down elsewhere (with `cluster-require-full-coverage
    /// no`) would fail the check although the log's slot is served; so the node of `key`'s slot
    /// is asked instead.
    pub async fn ping(&mut self, key: &str) -> RedisResult<()> {
        match self {
            Self::Single(c) => redis::cmd("PING").query_async::<()>(c).await,
            Self::Cluster(c) => ping_slot(c, key).await,
        }
    }
}

async fn ping_slot(conn: &mut ClusterConnection, key: &str) -> RedisResult<()> {
    redis::cmd("EXISTS").arg(key).query_async::<Value>(conn).await.map(drop)
}

/// A connection the replay log can be written through: it says which pub/sub the append
/// script must use.
pub trait LogConnection: ConnectionLike + Send {
    /// `SPUBLISH` (a cluster) rather than `PUBLISH`.
    fn sharded(&self) -> bool {
        false
    }
}

impl LogConnection for MultiplexedConnection {}

impl LogConnection for ClusterConnection {
    fn sharded(&self) -> bool {
        true
    }
}

impl LogConnection for Conn {
    fn sharded(&self) -> bool {
        self.is_cluster()
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A Lua script, run with `EVALSHA` and, when the node lacks it, `EVAL`.
///
/// redis-rs's `Script` answers `NOSCRIPT` with `SCRIPT LOAD`, which a cluster client sends to
/// every master: one master down elsewhere (its slots unserved, `cluster-require-full-coverage
/// no`) then fails every first use of a script on the log's node, and so does a replica
/// promoted by a failover (script caches are not replicated). `EVAL` goes by key, to the node
/// that runs it, and caches the script there.
#[derive(Debug, Clone)]
pub struct Lua {
    code: &'static str,
    sha: String,
}

impl Lua {
    /// The script `code`.
    pub fn new(code: &'static str) -> Self {
        Self { code, sha: redis::Script::new(code).get_hash().to_owned() }
    }

    /// A call with its first key.
    pub fn key(&self, key: impl redis::ToRedisArgs) -> LuaCall<'_> {
        let mut call = LuaCall { lua: self, keys: Vec::new(), args: Vec::new() };
        call.key(key);
        call
    }
}

/// A call of a [`Lua`] script being built: keys, then arguments.
#[derive(Debug)]
pub struct LuaCall<'a> {
    lua: &'a Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl LuaCall<'_> {
    /// Adds a key (`KEYS[n]`).
    pub fn key(&mut self, key: impl redis::ToRedisArgs) -> &mut Self {
        self.keys.extend(key.to_redis_args());
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub fn arg(&mut self, arg: impl redis::ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    /// Runs it: `EVALSHA`, then `EVAL` if the node does not have the script yet.
    pub async fn invoke_async<T: redis::FromRedisValue>(&self, conn: &mut impl ConnectionLike) -> RedisResult<T> {
        match self.command("EVALSHA", self.lua.sha.as_bytes()).query_async(&mut *conn).await {
            Err(e) if e.kind() == ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.command("EVAL", self.lua.code.as_bytes()).query_async(conn).await
            }
            result => result,
        }
    }

    fn command(&self, verb: &str, script: &[u8]) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script).arg(self.keys.len()).arg(&self.keys).arg(&self.args);
        cmd
    }
}

/// A live subscription to one channel.
///
/// On a cluster, redis-rs resubscribes by itself after a node went away or the slot moved;
/// what was published in between is not delivered. So any sign of that (a disconnection, an
/// `sunsubscribe` from a node giving up the slot, a second subscribe confirmation) ends the
/// subscription here, and the caller's next session reads the gap from the log.
pub enum Subscription {
    /// `SUBSCRIBE` on one server.
    Single(Box<PubSub>),
    /// `SSUBSCRIBE` on a cluster.
    Cluster {
        /// The connection the subscription was made on (also used for the keepalive).
        conn: ClusterConnection,
        /// Its pushes.
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        /// Whether the first `ssubscribe` confirmation was seen.
        confirmed: bool,
    },
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "Subscription::Single",
            Self::Cluster { .. } => "Subscription::Cluster",
        })
    }
}

/// What a subscription yields.
#[derive(Debug)]
pub enum Received {
    /// A message's payload.
    Message(Vec<u8>),
    /// The subscription is broken (connection lost, slot moved): messages may have been missed.
    Lost(&'static str),
}

impl Subscription {
    /// The next message, or why the subscription ended. Cancel-safe.
    pub async fn next(&mut self) -> Received {
        match self {
            Self::Single(pubsub) => {
                use futures_util::StreamExt;
                match pubsub.on_message().next().await {
                    Some(msg) => Received::Message(msg.get_payload_bytes().to_vec()),
                    None => Received::Lost("subscription stream ended (connection lost)"),
                }
            }
            Self::Cluster { pushes, confirmed, .. } => loop {
                let Some(push) = pushes.recv().await else { return Received::Lost("cluster connection closed") };
                match push.kind {
                    PushKind::SMessage => {
                        if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                            return Received::Message(payload);
                        }
                    }
                    PushKind::SSubscribe if !*confirmed => *confirmed = true,
                    PushKind::SSubscribe => return Received::Lost("resubscribed after a reconnect"),
                    PushKind::SUnsubscribe => return Received::Lost("the node gave up the channel's slot"),
                    PushKind::Disconnection => return Received::Lost("a cluster node connection was lost"),
                    _ => {}
                }
            },
        }
    }

    /// PINGs the server the subscription is on (on a cluster: the node of `key`'s slot, as
    /// [`Conn::ping`]).
    pub async fn ping(&mut self, key: &str) -> RedisResult<()> {
        match self {
            Self::Single(pubsub) => pubsub.ping::<Value>().await.map(drop),
            Self::Cluster { conn, .. } => ping_slot(conn, key).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_give_the_live_nodes_addresses() {
        let reply = "07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected\n\
                     67ed 127.0.0.1:30002@40002,node-b master - 0 1426238316232 2 connected 5461-10922\n\
                     292f 127.0.0.1:30003@40003 master,fail - 1426238316232 0 3 disconnected\n\
                     e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460\n";
        assert_eq!(
            node_addresses(reply),
            vec![("127.0.0.1".to_owned(), 30004), ("127.0.0.1".to_owned(), 30002), ("127.0.0.1".to_owned(), 30001)]
        );
    }

    #[test]
    fn urls_split_on_commas() {
        assert_eq!(split_urls("redis://a:1, redis://b:2,"), vec!["redis://a:1", "redis://b:2"]);
        assert_eq!(split_urls("redis://a:1"), vec!["redis://a:1"]);
    }

    #[test]
    fn a_list_with_cluster_off_is_refused_by_name() {
        let err = RedisTarget::open("redis://a:1,redis://b:2", ClusterMode::Single, None).unwrap_err();
        assert!(err.to_string().contains("REDIS_CLUSTER=false"), "{err}");
        assert!(RedisTarget::open("redis://a:1,redis://b:2", ClusterMode::Auto, None).is_ok());
        assert_eq!("true".parse::<ClusterMode>(), Ok(ClusterMode::Cluster));
        assert!("maybe".parse::<ClusterMode>().is_err());
    }
}
