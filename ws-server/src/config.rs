//! ws-server configuration, read from the environment (and `.env`) once at start.

use std::{fmt, net::IpAddr, path::Path, time::Duration};

use protocol::{
    channel::{ChannelName, DEFAULT_REDIS_CHANNEL},
    env::{ConfigErrors, Env, redact_url},
    retry::RetryPolicy,
    store::ClusterMode,
    telemetry::LogFormat,
};

use crate::auth::{JwtKey, Origins};

/// Everything a ws-server replica needs to run.
#[derive(Clone)]
pub struct Config {
    /// Address to bind (`WS_BIND_ADDR`, default 0.0.0.0).
    pub bind_addr: IpAddr,
    /// Port for WebSocket and the ops endpoints (`PORT`, default 8080).
    pub port: u16,
    /// Redis to subscribe to (`REDIS_URL`).
    pub redis_url: String,
    /// Whether `REDIS_URL` is a Redis Cluster (`REDIS_CLUSTER`: `auto`, the default, asks it).
    pub redis_cluster: ClusterMode,
    /// The CA (PEM) a `rediss://` server's certificate must chain to (`REDIS_TLS_CA_FILE`);
    /// without it, the system's trust store.
    pub redis_tls_ca: Option<Vec<u8>>,
    /// The Redis pub/sub channel (`REDIS_CHANNEL`, default `orders_updates`).
    pub redis_channel: ChannelName,
    /// This replica's name in `hello` frames and logs (`WS_SERVER_ID`).
    pub server_id: Option<String>,
    /// The host name (`HOSTNAME`); without `WS_SERVER_ID` the id is `HOSTNAME:port`.
    pub hostname: Option<String>,
    /// Events a connection may fall behind before it is closed as a slow consumer
    /// (`WS_QUEUE_CAPACITY`, default 1024). Exact: not rounded.
    pub queue_capacity: usize,
    /// Bytes of event frames a connection may fall behind before it is closed as a slow
    /// consumer (`WS_QUEUE_BYTES`, default 16 MiB); one event always fits, whatever its size.
    /// It is also the most the replica holds for its ring, however many clients lag.
    pub queue_bytes: usize,
    /// Concurrent WebSocket connections (`WS_MAX_CONNECTIONS`, default 10000).
    pub max_connections: usize,
    /// Largest client frame answered normally (`WS_MAX_FRAME_BYTES`, default 65536); larger
    /// frames get an error frame, frames over 16 times this close the connection (1009).
    pub max_frame_bytes: usize,
    /// Subscriptions one connection may hold (`WS_MAX_SUBSCRIPTIONS`, default 16).
    pub max_subscriptions: usize,
    /// Filters one subscription may have (`WS_MAX_FILTERS`, default 16).
    pub max_filters: usize,
    /// Client frames per second a connection may send, and the burst it may save up
    /// (`WS_MAX_CLIENT_FRAMES_PER_SECOND`, default 50); frames over it get a `rate_limited` error.
    pub max_client_frames_per_second: usize,
    /// How often each connection is pinged (`WS_HEARTBEAT_INTERVAL`, default 20s); a client
    /// silent for two intervals is closed (4009).
    pub heartbeat_interval: Duration,
    /// How long one frame may take to reach a client's socket (`WS_SEND_TIMEOUT`, default 10s).
    pub send_timeout: Duration,
    /// Whether the hub writes events straight to caught-up WebSocket connections that take
    /// every event (`WS_EXPRESS`, default true; `hub::express`). Off, every connection's task
    /// writes its own: slower, for comparison.
    pub express: bool,
    /// The runtime's threads (`WS_THREADS`, default 0: one per core; 1: a single-threaded
    /// runtime, the cheapest per delivery when the machine runs one replica per core).
    pub threads: protocol::service::Threads,
    /// Time allowed for connections to close at shutdown (`WS_SHUTDOWN_GRACE`, default 5s).
    pub shutdown_grace: Duration,
    /// How often an idle Redis subscription is checked with PING.
    pub keepalive_interval: Duration,
    /// Reconnect delays (`RETRY_MIN_DELAY`, `RETRY_MAX_DELAY`).
    pub retry: RetryPolicy,
    /// `LOG_FORMAT`: text or json.
    pub log_format: LogFormat,
    /// The token check's key (`WS_JWT_SECRET` for HS256, or `WS_JWT_PUBLIC_KEY`, a PEM file,
    /// for RS256 / ES256), read and checked at start; `None`: auth is off.
    pub(crate) jwt_key: Option<JwtKey>,
    /// Clock skew allowed on a token's `exp` and `nbf`, in whole seconds (`WS_JWT_LEEWAY`,
    /// default 5s).
    pub jwt_leeway: Duration,
    /// When set, a token's `aud` must include it (`WS_JWT_AUDIENCE`). Set it when the issuer
    /// signs tokens for other services with the same key (an Auth0 or Keycloak tenant).
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must be it (`WS_JWT_ISSUER`).
    pub jwt_issuer: Option<String>,
    /// The web pages that may connect (`WS_ALLOWED_ORIGINS`, default `*`: any; see `auth`).
    pub(crate) allowed_origins: Origins,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("bind_addr", &self.bind_addr)
            .field("port", &self.port)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_cluster", &self.redis_cluster)
            .field("redis_tls_ca", &self.redis_tls_ca.as_ref().map(|pem| format!("{} bytes of PEM", pem.len())))
            .field("redis_channel", &self.redis_channel.as_str())
            .field("server_id", &self.server_id)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_bytes", &self.queue_bytes)
            .field("max_connections", &self.max_connections)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("max_filters", &self.max_filters)
            .field("max_client_frames_per_second", &self.max_client_frames_per_second)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("send_timeout", &self.send_timeout)
            .field("express", &self.express)
            .field("threads", &self.threads)
            // JwtKey's Debug names the algorithm and where the key came from, never the key.
            .field("jwt", &self.jwt_key)
            .field("jwt_leeway", &self.jwt_leeway)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("allowed_origins", &self.allowed_origins)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// Every invalid variable, listed together.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `lookup` (tests pass a map).
    ///
    /// # Errors
    /// Every invalid variable, listed together.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut env = Env::new(&lookup);
        let config = Self {
            bind_addr: env.parse(
                "WS_BIND_ADDR",
                IpAddr::from([0, 0, 0, 0]),
                "an IP address (e.g. 0.0.0.0 or 127.0.0.1)",
            ),
            port: env.parse("PORT", 8080, "a port number (0-65535)"),
            redis_url: env.url_list("REDIS_URL", "redis://127.0.0.1:6379", &["redis", "rediss"]),
            redis_cluster: env.parse("REDIS_CLUSTER", ClusterMode::Auto, "auto, true or false"),
            redis_tls_ca: env.pem_file("REDIS_TLS_CA_FILE"),
            redis_channel: env.channel("REDIS_CHANNEL", DEFAULT_REDIS_CHANNEL),
            server_id: lookup("WS_SERVER_ID").filter(|s| !s.trim().is_empty()),
            hostname: lookup("HOSTNAME").filter(|s| !s.trim().is_empty()),
            queue_capacity: env.positive("WS_QUEUE_CAPACITY", 1024),
            // A publisher batch (512 events) arrives at once; 16 MiB lets a client that keeps up
            // take a batch of 32 KB rows without being closed.
            queue_bytes: env.positive("WS_QUEUE_BYTES", 16 * 1024 * 1024),
            max_connections: env.positive("WS_MAX_CONNECTIONS", 10_000),
            max_frame_bytes: env.positive("WS_MAX_FRAME_BYTES", 64 * 1024),
            max_subscriptions: env.positive("WS_MAX_SUBSCRIPTIONS", 16),
            max_filters: env.positive("WS_MAX_FILTERS", 16),
            max_client_frames_per_second: env.positive("WS_MAX_CLIENT_FRAMES_PER_SECOND", 50),
            heartbeat_interval: env.duration("WS_HEARTBEAT_INTERVAL", Duration::from_secs(20)),
            send_timeout: env.duration("WS_SEND_TIMEOUT", Duration::from_secs(10)),
            express: env.flag("WS_EXPRESS", true),
            threads: protocol::service::Threads::from_count(env.parse(
                "WS_THREADS",
                0,
                "a number of threads (0: one per core)",
            )),
            shutdown_grace: env.duration("WS_SHUTDOWN_GRACE", Duration::from_secs(5)),
            keepalive_interval: Duration::from_secs(5),
            retry: env.retry_policy(),
            log_format: env.log_format(),
            jwt_key: jwt_key(&mut env, &lookup),
            jwt_leeway: env.duration("WS_JWT_LEEWAY", Duration::from_secs(5)),
            jwt_audience: lookup("WS_JWT_AUDIENCE").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
            jwt_issuer: lookup("WS_JWT_ISSUER").map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()),
            allowed_origins: {
                let value = env.string("WS_ALLOWED_ORIGINS", "*");
                Origins::parse(&value).unwrap_or_else(|reason| {
                    env.invalid("WS_ALLOWED_ORIGINS", value, reason);
                    Origins::Any
                })
            },
        };
        if config.jwt_key.is_none() {
            // Without a key these would be silently ignored: the operator thinks auth is on.
            for (var, value) in [("WS_JWT_AUDIENCE", &config.jwt_audience), ("WS_JWT_ISSUER", &config.jwt_issuer)] {
                if let Some(value) = value {
                    env.invalid(var, value, "needs WS_JWT_SECRET or WS_JWT_PUBLIC_KEY (auth is off without a key)");
                }
            }
        }
        for (var, d) in [("WS_HEARTBEAT_INTERVAL", config.heartbeat_interval), ("WS_SEND_TIMEOUT", config.send_timeout)]
        {
            if d.is_zero() {
                env.invalid(var, "0", "expected a duration above zero (e.g. 20s)");
            }
        }
        env.finish()?;
        Ok(config)
    }

    /// Every tunable at its default; for tests and embedding.
    pub fn with_redis(redis_url: &str) -> Self {
        Self::from_lookup(|k| (k == "REDIS_URL").then(|| redis_url.to_owned())).expect("defaults are valid")
    }
}

/// `WS_JWT_SECRET` or `WS_JWT_PUBLIC_KEY` (not both), read and checked; errors go to `env`.
fn jwt_key(env: &mut Env<'_>, lookup: &impl Fn(&str) -> Option<String>) -> Option<JwtKey> {
    let set = |var| lookup(var).filter(|v| !v.trim().is_empty());
    match (set("WS_JWT_SECRET"), set("WS_JWT_PUBLIC_KEY")) {
        (None, None) => None,
        (Some(_), Some(path)) => {
            env.invalid(
                "WS_JWT_PUBLIC_KEY",
                path,
                "set one of WS_JWT_SECRET (HS256) or WS_JWT_PUBLIC_KEY (RS256, ES256), not both",
            );
            None
        }
        // The secret as given, untrimmed: it must match the issuer's byte for byte.
        (Some(secret), None) => {
            JwtKey::from_secret(&secret).inspect_err(|reason| env.invalid("WS_JWT_SECRET", "***", reason.as_str())).ok()
        }
        (None, Some(path)) => {
            let path = path.trim();
            JwtKey::from_pem_file(Path::new(path))
                .inspect_err(|reason| env.invalid("WS_JWT_PUBLIC_KEY", path, reason.as_str()))
                .ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn every_bad_variable_is_named() {
        let vars: HashMap<&str, &str> = [
            ("PORT", "http"),
            ("WS_QUEUE_CAPACITY", "0"),
            ("WS_QUEUE_BYTES", "4MB"),
            ("WS_HEARTBEAT_INTERVAL", "20"),
            ("REDIS_URL", "localhost:6379"),
            ("WS_THREADS", "all"),
        ]
        .into_iter()
        .collect();
        let err = Config::from_lookup(|k| vars.get(k).map(|v| (*v).to_owned())).unwrap_err().to_string();
        for var in ["PORT", "WS_QUEUE_CAPACITY", "WS_QUEUE_BYTES", "WS_HEARTBEAT_INTERVAL", "REDIS_URL", "WS_THREADS"] {
            assert!(err.contains(var), "{var} not in {err}");
        }
    }

    #[test]
    fn defaults() {
        let c = Config::with_redis("redis://127.0.0.1:1");
        assert_eq!((c.port, c.queue_capacity, c.queue_bytes, c.max_frame_bytes), (8080, 1024, 16 << 20, 65536));
        assert_eq!(c.threads, protocol::service::Threads::PerCore);
        let one = Config::from_lookup(|k| (k == "WS_THREADS").then(|| "1".to_owned())).unwrap();
        assert_eq!(one.threads, protocol::service::Threads::Single);
    }
}
