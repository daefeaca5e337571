//! Publisher configuration, read from the environment (and `.env`) once at start.

use std::{fmt, net::IpAddr, time::Duration};

use crate::capture::Capture;
use protocol::{
    channel::{ChannelName, DEFAULT_PG_CHANNEL, DEFAULT_REDIS_CHANNEL},
    env::{ConfigErrors, Env, redact_url},
    retry::RetryPolicy,
    store::ClusterMode,
    telemetry::LogFormat,
};

/// Everything the publisher needs to run.
#[derive(Clone)]
pub struct Config {
    /// PostgreSQL to LISTEN on (`DATABASE_URL`).
    pub database_url: String,
    /// Redis to publish to (`REDIS_URL`).
    pub redis_url: String,
    /// Whether `REDIS_URL` is a Redis Cluster (`REDIS_CLUSTER`: `auto`, the default, asks it).
    pub redis_cluster: ClusterMode,
    /// The CA (PEM) a `rediss://` server's certificate must chain to (`REDIS_TLS_CA_FILE`);
    /// without it, the system's trust store.
    pub redis_tls_ca: Option<Vec<u8>>,
    /// The NOTIFY channel (`PUBLISHER_PG_CHANNEL`, default `orders_channel`); in logical mode,
    /// the prefix of the trigger's logical messages.
    pub pg_channel: ChannelName,
    /// How the trigger wakes the publisher (`PUBLISHER_CAPTURE`: `notify`, the default, or
    /// `logical`, through a replication slot; see `capture`).
    pub capture: Capture,
    /// The replication slot and the publication of logical capture (`PUBLISHER_SLOT`, default
    /// `orders_realtime`).
    pub slot: ChannelName,
    /// The Redis pub/sub channel (`REDIS_CHANNEL`, default `orders_updates`).
    pub redis_channel: ChannelName,
    /// Address the ops endpoints bind (`PUBLISHER_BIND_ADDR`, default 0.0.0.0).
    pub bind_addr: IpAddr,
    /// Port of `/healthz`, `/readyz`, `/metrics` (`HEALTH_PORT`, default 9100).
    pub health_port: u16,
    /// Apply the embedded `sql/` migrations at start (`PUBLISHER_MIGRATE`, default true).
    pub migrate: bool,
    /// Accept the original design's two-field NOTIFY payload (`{"operation","order"}`) from a
    /// hand-made trigger, for a database the publisher may not migrate
    /// (`PUBLISHER_LEGACY_PAYLOADS`, default false). Off, such payloads are rejected: with the
    /// project's trigger a notification only wakes the publisher, and the outbox is the truth.
    pub legacy_payloads: bool,
    /// Newest events of the previous history re-offered when Redis lost its data
    /// (`PUBLISHER_BRIDGE_EVENTS`, default 10000): replicas and clients up to this many events
    /// behind continue in the new history without a reset.
    pub bridge_events: usize,
    /// Largest number of events read from the outbox and appended to Redis in one step
    /// (`PUBLISHER_BATCH`, default 512).
    pub batch_max: usize,
    /// Most events appended to the log whose published marks are not committed yet
    /// (`PUBLISHER_MARK_WINDOW`, default 16384): marks are written off the critical path, and
    /// a claim reads this many (and two batches) of the log's newest entries to find what a
    /// killed predecessor appended and did not mark. Narrowed to fit `PUBLISHER_LOG_MAXLEN`
    /// less two batches, and never below one batch.
    pub mark_window: usize,
    /// Entries the Redis replay log keeps (`PUBLISHER_LOG_MAXLEN`, default 100000; trimmed
    /// approximately). Clients can resume from any position still in it.
    pub log_maxlen: usize,
    /// Published outbox rows older than this are deleted (`PUBLISHER_OUTBOX_RETENTION`, 24h).
    pub outbox_retention: Duration,
    /// At most this many published rows are kept (`PUBLISHER_OUTBOX_MAX_ROWS`, 1000000).
    pub outbox_max_rows: usize,
    /// How often pruning runs.
    pub prune_interval: Duration,
    /// How often a standby tries to become the active publisher (`PUBLISHER_STANDBY_POLL`, 1s).
    pub standby_poll: Duration,
    /// Tables whose rows seed the snapshot state when a new history starts
    /// (`PUBLISHER_SNAPSHOT_TABLES`, default `orders`; each needs an `id` column).
    pub snapshot_tables: Vec<String>,
    /// How often an idle PostgreSQL or Redis session is checked with a query/PING.
    pub keepalive_interval: Duration,
    /// Reconnect delays (`RETRY_MIN_DELAY`, `RETRY_MAX_DELAY`).
    pub retry: RetryPolicy,
    /// Time allowed for in-flight events to reach Redis at shutdown (`PUBLISHER_SHUTDOWN_GRACE`).
    pub shutdown_grace: Duration,
    /// `LOG_FORMAT`: text or json.
    pub log_format: LogFormat,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_cluster", &self.redis_cluster)
            .field("redis_tls_ca", &self.redis_tls_ca.as_ref().map(|pem| format!("{} bytes of PEM", pem.len())))
            .field("pg_channel", &self.pg_channel.as_str())
            .field("capture", &self.capture)
            .field("slot", &self.slot.as_str())
            .field("redis_channel", &self.redis_channel.as_str())
            .field("bind_addr", &self.bind_addr)
            .field("health_port", &self.health_port)
            .field("migrate", &self.migrate)
            .field("legacy_payloads", &self.legacy_payloads)
            .field("bridge_events", &self.bridge_events)
            .field("batch_max", &self.batch_max)
            .field("mark_window", &self.mark_window)
            .field("log_maxlen", &self.log_maxlen)
            .field("outbox_retention", &self.outbox_retention)
            .field("snapshot_tables", &self.snapshot_tables)
            .field("retry", &self.retry)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// Every invalid or unusable variable, listed together.
    pub fn from_env() -> Result<Self, ConfigErrors> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads configuration through `lookup` (tests pass a map).
    ///
    /// # Errors
    /// Every invalid or unusable variable, listed together.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        let mut env = Env::new(&lookup);
        let config = Self {
            database_url: env.database_url("DATABASE_URL", "postgres://postgres@localhost:5432/postgres"),
            redis_url: env.url_list("REDIS_URL", "redis://127.0.0.1:6379", &["redis", "rediss"]),
            redis_cluster: env.parse("REDIS_CLUSTER", ClusterMode::Auto, "auto, true or false"),
            redis_tls_ca: env.pem_file("REDIS_TLS_CA_FILE"),
            pg_channel: env.channel("PUBLISHER_PG_CHANNEL", DEFAULT_PG_CHANNEL),
            capture: env.parse("PUBLISHER_CAPTURE", Capture::Notify, "notify or logical"),
            slot: env.channel("PUBLISHER_SLOT", "orders_realtime"),
            redis_channel: env.channel("REDIS_CHANNEL", DEFAULT_REDIS_CHANNEL),
            bind_addr: env.parse(
                "PUBLISHER_BIND_ADDR",
                IpAddr::from([0, 0, 0, 0]),
                "an IP address (e.g. 0.0.0.0 or 127.0.0.1)",
            ),
            health_port: env.parse("HEALTH_PORT", 9100, "a port number (0-65535)"),
            migrate: env.flag("PUBLISHER_MIGRATE", true),
            legacy_payloads: env.flag("PUBLISHER_LEGACY_PAYLOADS", false),
            bridge_events: env.parse("PUBLISHER_BRIDGE_EVENTS", 10_000, "a whole number of events (0: no bridge)"),
            batch_max: env.positive("PUBLISHER_BATCH", 512),
            mark_window: env.positive("PUBLISHER_MARK_WINDOW", 16_384),
            log_maxlen: env.positive("PUBLISHER_LOG_MAXLEN", 100_000),
            outbox_retention: env.duration("PUBLISHER_OUTBOX_RETENTION", Duration::from_secs(24 * 3600)),
            outbox_max_rows: env.positive("PUBLISHER_OUTBOX_MAX_ROWS", 1_000_000),
            prune_interval: Duration::from_secs(10),
            standby_poll: env.duration("PUBLISHER_STANDBY_POLL", Duration::from_secs(1)),
            snapshot_tables: env
                .string("PUBLISHER_SNAPSHOT_TABLES", "orders")
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
            // Short: a killed Redis is noticed within it (nothing else is sent to an idle one).
            keepalive_interval: Duration::from_secs(1),
            retry: env.retry_policy(),
            shutdown_grace: env.duration("PUBLISHER_SHUTDOWN_GRACE", Duration::from_secs(5)),
            log_format: env.log_format(),
        };
        // The claim's tail must still be in the log: a window the log cannot hold is narrowed
        // (never below one batch).
        let mut config = config;
        config.mark_window =
            config.mark_window.min(config.log_maxlen.saturating_sub(2 * config.batch_max)).max(config.batch_max);
        for table in &config.snapshot_tables {
            if ChannelName::parse(table).is_err() {
                env.invalid("PUBLISHER_SNAPSHOT_TABLES", table.clone(), "expected table names of a-z, 0-9 and _");
            }
        }
        if config.standby_poll.is_zero() {
            env.invalid("PUBLISHER_STANDBY_POLL", "0", "expected a duration above zero (e.g. 1s)");
        }
        env.finish()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_suit_a_local_run() {
        let c = config(&[]).unwrap();
        assert_eq!(c.pg_channel.as_str(), "orders_channel");
        assert_eq!(c.redis_channel.as_str(), "orders_updates");
        assert_eq!(c.health_port, 9100);
        assert_eq!(c.bind_addr, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.shutdown_grace, Duration::from_secs(5));
        assert!(c.migrate);
        assert!(!c.legacy_payloads, "legacy payloads only when asked for");
        assert_eq!(c.bridge_events, 10_000);
        assert_eq!(c.capture, Capture::Notify, "logical capture only when asked for");
        assert_eq!(c.slot.as_str(), "orders_realtime");
    }

    #[test]
    fn capture_modes_are_named() {
        let c = config(&[("PUBLISHER_CAPTURE", "logical"), ("PUBLISHER_SLOT", "shop_realtime")]).unwrap();
        assert_eq!((c.capture, c.slot.as_str()), (Capture::Logical, "shop_realtime"));
        let err = config(&[("PUBLISHER_CAPTURE", "wal2json"), ("PUBLISHER_SLOT", "Bad-Name")]).unwrap_err().to_string();
        for needle in ["PUBLISHER_CAPTURE=\"wal2json\": expected notify or logical", "PUBLISHER_SLOT"] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn the_ops_port_binds_the_configured_address() {
        let c = config(&[("PUBLISHER_BIND_ADDR", "127.0.0.1")]).unwrap();
        assert_eq!(c.bind_addr, IpAddr::from([127, 0, 0, 1]));
        let c = config(&[("PUBLISHER_BIND_ADDR", "::1")]).unwrap();
        assert_eq!(c.bind_addr, "::1".parse::<IpAddr>().unwrap());

        // A host name is not an address: rejected with the others, not resolved at bind time.
        let err = config(&[("PUBLISHER_BIND_ADDR", "localhost"), ("HEALTH_PORT", "x")]).unwrap_err().to_string();
        for needle in ["PUBLISHER_BIND_ADDR=\"localhost\": expected an IP address", "HEALTH_PORT=\"x\""] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }

    #[test]
    fn bad_values_name_the_variable_and_hide_passwords() {
        let err = config(&[
            ("DATABASE_URL", "mysql://root:hunter2@db/app"),
            ("HEALTH_PORT", "99999"),
            ("PUBLISHER_PG_CHANNEL", "Orders Channel"),
        ])
        .unwrap_err()
        .to_string();
        for needle in ["DATABASE_URL", "postgres://", "HEALTH_PORT=\"99999\"", "PUBLISHER_PG_CHANNEL"] {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
        assert!(!err.contains("hunter2"), "{err}");
    }
}
