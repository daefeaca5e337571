//! How committed changes wake the publisher (`PUBLISHER_CAPTURE`): NOTIFY, or a logical
//! replication slot.
//!
//! Either way the trigger writes the outbox row and the wake-up carries only its id; what the
//! trigger sends is decided by the one row of `realtime_capture`, which the active publisher
//! sets at the start of its session (`sql/0006_capture.sql`). So switching modes takes only a
//! restart with the other setting, and loses nothing: whatever committed while neither wake-up
//! reached a publisher is in the outbox, unpublished, and the session's first drain appends it.
//!
//! - **notify**: `pg_notify` in the trigger, `LISTEN` here (`relay`). The notification queue's
//!   commit-time lock serializes every notifying commit of the database (docs/limits.md).
//! - **logical**: `pg_logical_emit_message(true, <channel>, <id>)` in the trigger, decoded at
//!   commit in commit order by the built-in `pgoutput` plugin from a slot this module creates,
//!   streamed over a replication connection ([`Slot`]). No global lock: the message is one more
//!   WAL record of the writing transaction.
//!
//! The slot's position is acknowledged only once every id received before it is in the Redis
//! log ([`Slot::ack`], after each append and when idle), so a crash between the append and the acknowledgement replays those
//! messages; their rows are published by then and read as such (the same dedupe as a repeated
//! notification). The outbox stays the record of what is published: a slot that is lost
//! (dropped, or invalidated by `max_slot_wal_keep_size`) is recreated, and the catch-up covers
//! what it missed.

use std::{collections::VecDeque, fmt, path::PathBuf, str::FromStr, time::Duration};

use futures_util::FutureExt;
use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};
use sqlx::postgres::PgListener;
use tracing::{info, warn};

mod tunnel;

use tunnel::{SslMode, Tunnel};

use crate::{
    active::Active,
    config::Config,
    relay::{QUERY_TIMEOUT, SessionError, bounded},
    stats::Stats,
};

/// `PUBLISHER_CAPTURE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// `pg_notify` + `LISTEN` (the default: works on every PostgreSQL).
    Notify,
    /// A logical replication slot (`wal_level=logical`; no commit-time lock).
    Logical,
}

impl Capture {
    /// The `realtime_capture.mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notify => "notify",
            Self::Logical => "logical",
        }
    }
}

impl fmt::Display for Capture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Capture {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "notify" => Ok(Self::Notify),
            "logical" => Ok(Self::Logical),
            _ => Err(()),
        }
    }
}

/// Makes the trigger wake publishers the `capture` way from the next commit on.
pub(crate) async fn set_mode(pg: &mut PgListener, capture: Capture) -> Result<(), SessionError> {
    let changed = bounded(
        QUERY_TIMEOUT,
        sqlx::query("UPDATE realtime_capture SET mode = $1, set_at = now() WHERE mode <> $1")
            .bind(capture.as_str())
            .execute(&mut *pg),
    )
    .await?;
    match changed {
        Ok(done) if done.rows_affected() > 0 => {
            info!(capture = %capture, "the trigger now wakes publishers by {}", wake_up(capture));
            Ok(())
        }
        Ok(_) => Ok(()),
        // A schema applied by hand without sql/0006 (PUBLISHER_MIGRATE=false): its trigger
        // can only notify.
        Err(sqlx::Error::Database(e)) if capture == Capture::Notify && e.code().as_deref() == Some("42P01") => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Err(SessionError::Capture(
            "PUBLISHER_CAPTURE=logical needs the realtime_capture table of sql/0006_capture.sql: \
             apply it (or let the publisher migrate: PUBLISHER_MIGRATE=true)"
                .into(),
        )),
        Err(e) => Err(e.into()),
    }
}

fn wake_up(capture: Capture) -> &'static str {
    match capture {
        Capture::Notify => "NOTIFY",
        Capture::Logical => "logical decoding messages",
    }
}

/// In notify mode: drops this publisher's slot left from logical mode, which would otherwise
/// keep WAL on the server forever. A slot still in use (a walsender that has not noticed its
/// client is gone) is left for the next session.
pub(crate) async fn drop_unused_slot(pg: &mut PgListener, slot: &str) -> Result<(), SessionError> {
    let dropped: Result<Option<bool>, sqlx::Error> = bounded(
        QUERY_TIMEOUT,
        sqlx::query_scalar(
            "SELECT CASE WHEN active THEN false ELSE pg_drop_replication_slot(slot_name) IS NOT NULL END
             FROM pg_replication_slots WHERE slot_name = $1 AND database = current_database() AND plugin = 'pgoutput'",
        )
        .bind(slot)
        .fetch_optional(&mut *pg),
    )
    .await?;
    match dropped {
        Ok(Some(true)) => info!(slot, "dropped the replication slot of logical capture (PUBLISHER_CAPTURE=notify)"),
        Ok(Some(false)) => warn!(slot, "the replication slot of logical capture is still in use; dropping it later"),
        Ok(None) => {}
        // Not allowed to (no REPLICATION attribute): say so, the slot keeps WAL.
        Err(e) => warn!(slot, error = %e, "could not drop the replication slot of logical capture; drop it by hand: \
             SELECT pg_drop_replication_slot('{slot}')"),
    }
    Ok(())
}

/// How long the replication connection may take to start streaming.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The replication stream of the publisher's slot: the ids the trigger's messages carry, in
/// commit order.
pub(crate) struct Slot {
    client: ReplicationClient,
    /// The TLS connection the client goes through, if `sslmode` asks for one.
    _tunnel: Option<Tunnel>,
    channel: String,
    /// How many of the trigger's ids the stream has delivered.
    delivered: u64,
    /// Commit and keepalive positions, each with how many ids were delivered before it, oldest
    /// first: a position may be acknowledged once that many ids are settled.
    positions: VecDeque<(u64, Lsn)>,
    acked: Lsn,
}

impl Slot {
    /// Checks the server's settings, creates the (empty) publication and the slot if missing,
    /// and starts streaming from the slot's confirmed position.
    pub(crate) async fn open(config: &Config, pg: &mut PgListener) -> Result<Self, SessionError> {
        let name = config.slot.as_str();
        let wal_level: String =
            bounded(QUERY_TIMEOUT, sqlx::query_scalar("SHOW wal_level").fetch_one(&mut *pg)).await??;
        if wal_level != "logical" {
            return Err(SessionError::Capture(format!(
                "PUBLISHER_CAPTURE=logical needs wal_level=logical, and the server has wal_level={wal_level}: \
                 set it (ALTER SYSTEM SET wal_level = logical, or the managed service's parameter: README, \
                 \"Capture through logical replication\") and restart PostgreSQL, or use PUBLISHER_CAPTURE=notify"
            )));
        }
        ensure_publication(pg, name).await?;
        ensure_slot(pg, name).await?;

        let (replication, tunnel) = replication_config(config).await?;
        let mut client = ReplicationClient::connect(replication).await.map_err(SessionError::Replication)?;
        match tokio::time::timeout(START_TIMEOUT, client.wait_started()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(replication_error(e)),
            Err(_) => return Err(SessionError::Timeout(START_TIMEOUT)),
        }
        info!(slot = name, "streaming the replication slot (PUBLISHER_CAPTURE=logical)");
        Ok(Self {
            client,
            _tunnel: tunnel,
            channel: config.pg_channel.as_str().to_owned(),
            delivered: 0,
            positions: VecDeque::new(),
            acked: Lsn::ZERO,
        })
    }

    /// The next event of the stream; the id when it is one of the trigger's messages.
    /// Cancel-safe (a channel receive).
    pub(crate) async fn recv(&mut self, stats: &Stats) -> Result<Option<i64>, SessionError> {
        let event = self.client.recv().await.map_err(replication_error)?.ok_or(SessionError::Lost)?;
        Ok(self.take(event, stats))
    }

    /// Notes every event already received, without waiting (the slot's counterpart of the
    /// buffered notifications).
    pub(crate) fn take_buffered(&mut self, active: &mut Active<'_>) -> Result<(), SessionError> {
        while let Some(event) = self.client.recv().now_or_never() {
            let event = event.map_err(replication_error)?.ok_or(SessionError::Lost)?;
            if let Some(id) = self.take(event, active.stats) {
                active.note_id(id);
            }
        }
        Ok(())
    }

    fn take(&mut self, event: ReplicationEvent, stats: &Stats) -> Option<i64> {
        match event {
            ReplicationEvent::Message { prefix, content, .. } if prefix == self.channel => {
                match std::str::from_utf8(&content).ok().and_then(|s| s.parse::<i64>().ok()) {
                    Some(id) => {
                        self.delivered += 1;
                        return Some(id);
                    }
                    None => {
                        let preview = String::from_utf8_lossy(&content[..content.len().min(200)]).into_owned();
                        warn!(payload = %preview, "skipping a logical message on the channel that is not an outbox id");
                        stats.skipped.inc();
                    }
                }
            }
            ReplicationEvent::Commit { end_lsn, .. } => self.reached(end_lsn),
            // Everything before a keepalive's position was decoded and sent: acknowledging it
            // lets the slot move past WAL that holds none of our messages (other tables,
            // other databases), which would otherwise be retained.
            ReplicationEvent::KeepAlive { wal_end, .. } => self.reached(wal_end),
            _ => {}
        }
        None
    }

    fn reached(&mut self, lsn: Lsn) {
        match self.positions.back_mut() {
            // Nothing delivered since: the newer position replaces the older.
            Some((delivered, last)) if *delivered == self.delivered => *last = (*last).max(lsn),
            _ => self.positions.push_back((self.delivered, lsn)),
        }
    }

    /// Acknowledges the newest position before which at most `settled` ids were delivered:
    /// every one of them is in the log (or found published), so the server may discard that
    /// WAL. Called after each append and whenever the relay is idle.
    pub(crate) fn ack(&mut self, settled: u64) {
        let mut lsn = None;
        while let Some(&(delivered, at)) = self.positions.front() {
            if delivered > settled {
                break;
            }
            lsn = Some(at);
            self.positions.pop_front();
        }
        if let Some(lsn) = lsn.filter(|lsn| *lsn > self.acked) {
            self.client.update_applied_lsn(lsn);
            self.acked = lsn;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Release the slot at once, so a standby can take it over.
        self.client.abort();
    }
}

async fn ensure_publication(pg: &mut PgListener, name: &str) -> Result<(), SessionError> {
    let exists: bool = bounded(
        QUERY_TIMEOUT,
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(name)
            .fetch_one(&mut *pg),
    )
    .await??;
    if exists {
        return Ok(());
    }
    // No tables: pgoutput needs a publication, and the messages are not a table's.
    let created =
        bounded(QUERY_TIMEOUT, sqlx::query(&format!("CREATE PUBLICATION \"{name}\"")).execute(&mut *pg)).await?;
    match created {
        Ok(_) => {
            info!(publication = name, "created the (empty) publication logical capture streams through");
            Ok(())
        }
        // Created by a publisher starting at the same time.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => Err(SessionError::Capture(format!(
            "PUBLISHER_CAPTURE=logical: not allowed to create the publication {name} ({}): run \
             CREATE PUBLICATION \"{name}\"; as the database owner, or grant CREATE on the database",
            e.message()
        ))),
        Err(e) => Err(e.into()),
    }
}

async fn ensure_slot(pg: &mut PgListener, name: &str) -> Result<(), SessionError> {
    let existing: Option<(String, Option<String>, Option<String>)> = bounded(
        QUERY_TIMEOUT,
        sqlx::query_as(
            "SELECT coalesce(plugin, ''), database::text, wal_status FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(name)
        .fetch_optional(&mut *pg),
    )
    .await??;
    let database: String =
        bounded(QUERY_TIMEOUT, sqlx::query_scalar("SELECT current_database()::text").fetch_one(&mut *pg)).await??;
    match existing {
        Some((plugin, Some(db), status)) if plugin == "pgoutput" && db == database => {
            if status.as_deref() != Some("lost") {
                return Ok(());
            }
            // Invalidated (max_slot_wal_keep_size): it can stream nothing any more. The outbox
            // catch-up covers what it missed.
            warn!(
                slot = name,
                "the replication slot was invalidated (WAL removed: max_slot_wal_keep_size); recreating it"
            );
            bounded(QUERY_TIMEOUT, sqlx::query("SELECT pg_drop_replication_slot($1)").bind(name).execute(&mut *pg))
                .await??;
        }
        Some((plugin, db, _)) => {
            return Err(SessionError::Capture(format!(
                "the replication slot {name} exists but is not this database's pgoutput slot (plugin {plugin:?}, \
                 database {db:?}): set PUBLISHER_SLOT to another name, or drop it"
            )));
        }
        None => {}
    }
    let created = bounded(
        QUERY_TIMEOUT,
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')").bind(name).execute(&mut *pg),
    )
    .await?;
    match created {
        Ok(_) => {
            info!(slot = name, "created the logical replication slot");
            Ok(())
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42710") => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42501") => Err(SessionError::Capture(format!(
            "PUBLISHER_CAPTURE=logical: the role may not create replication slots ({}): \
             ALTER ROLE <role> REPLICATION (on RDS/Aurora: GRANT rds_replication TO <role>)",
            e.message()
        ))),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("53400") => Err(SessionError::Capture(format!(
            "PUBLISHER_CAPTURE=logical: no free replication slot ({}): raise max_replication_slots and restart \
             PostgreSQL, or drop an unused slot",
            e.message()
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The replication connection's settings, from `DATABASE_URL`, and the TLS tunnel it goes
/// through when `sslmode` is `prefer`, `require`, `verify-ca` or `verify-full`.
async fn replication_config(config: &Config) -> Result<(ReplicationConfig, Option<Tunnel>), SessionError> {
    let target = Target::parse(&config.database_url).map_err(SessionError::Capture)?;
    let tunnel = match target.ssl {
        Some(mode) if !target.host.starts_with('/') => {
            Some(Tunnel::open(&target.host, target.port, mode, target.root_cert.as_deref()).await?)
        }
        _ => None,
    };
    let (host, port) = match &tunnel {
        Some(tunnel) => (tunnel.socket_dir().display().to_string(), 5432),
        None => (target.host, target.port),
    };
    let mut replication = ReplicationConfig::new(
        host,
        target.user,
        target.password,
        target.database,
        config.slot.as_str(),
        config.slot.as_str(),
    );
    replication.port = port;
    replication.start_lsn = Lsn::ZERO; // the slot's confirmed position
    // Acknowledgements reach the server within a second (the WAL it may drop, and the lag
    // pg_replication_slots shows).
    replication.status_interval = Duration::from_secs(1);
    replication.idle_wakeup_interval = Duration::from_secs(1);
    replication.application_name = Some("publisher-capture".into());
    Ok((replication, tunnel))
}

/// Where the replication connection goes: `DATABASE_URL` taken apart as libpq reads it.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    /// `None`: no TLS (`sslmode` absent, `disable` or `allow`; a Unix socket never has it).
    ssl: Option<SslMode>,
    root_cert: Option<PathBuf>,
}

impl Target {
    fn parse(database_url: &str) -> Result<Self, String> {
        let url = url::Url::parse(database_url).map_err(|e| format!("DATABASE_URL is not a URL: {e}"))?;
        let query = |key: &str| url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned());
        let decode = protocol::env::percent_decode;
        let host = query("host").or_else(|| url.host_str().filter(|h| !h.is_empty()).map(str::to_owned));
        let host = host.unwrap_or_else(|| "localhost".into());
        let port = match query("port") {
            Some(p) => p.parse().map_err(|_| format!("DATABASE_URL: port={p} is not a port"))?,
            None => url.port().unwrap_or(5432),
        };
        let user = query("user")
            .or_else(|| Some(decode(url.username())).filter(|u| !u.is_empty()))
            .or_else(|| std::env::var("PGUSER").ok())
            .unwrap_or_else(|| "postgres".into());
        let password = query("password")
            .or_else(|| url.password().map(decode))
            .or_else(|| std::env::var("PGPASSWORD").ok())
            .unwrap_or_default();
        let database = query("dbname")
            .or_else(|| Some(decode(url.path().trim_start_matches('/'))).filter(|d| !d.is_empty()))
            .unwrap_or_else(|| user.clone());
        let ssl = match query("sslmode").as_deref() {
            None | Some("disable" | "allow") => None,
            Some("prefer") => Some(SslMode::Prefer),
            Some("require") => Some(SslMode::Require),
            Some("verify-ca") => Some(SslMode::VerifyCa),
            Some("verify-full") => Some(SslMode::VerifyFull),
            Some(other) => return Err(format!("DATABASE_URL: unknown sslmode={other}")),
        };
        let root_cert = query("sslrootcert").map(PathBuf::from);
        // A bracketed IPv6 host is given to the socket without its brackets.
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        Ok(Self { host, port, user, password, database, ssl, root_cert })
    }
}

/// A replication error as a session error: what a person must fix is fatal, the rest retried.
fn replication_error(e: PgWireError) -> SessionError {
    let text = e.to_string();
    if let PgWireError::Auth(_) = e {
        // Retried like sqlx's refused password: credentials are often rotated server-side first.
        return SessionError::Replication(e);
    }
    if text.contains("must be superuser or replication role")
        || text.contains("permission denied to start WAL sender")
        || text.contains("no pg_hba.conf entry for replication connection")
    {
        return SessionError::Capture(format!(
            "PUBLISHER_CAPTURE=logical: PostgreSQL refused the replication connection ({text}): the role needs \
             the REPLICATION attribute (ALTER ROLE <role> REPLICATION; on RDS/Aurora GRANT rds_replication), and \
             pg_hba.conf a `replication` line for it"
        ));
    }
    SessionError::Replication(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_name_themselves() {
        assert_eq!("logical".parse(), Ok(Capture::Logical));
        assert_eq!(" NOTIFY ".parse(), Ok(Capture::Notify));
        assert_eq!("wal".parse::<Capture>(), Err(()));
        assert_eq!(Capture::Logical.to_string(), "logical");
    }

    #[test]
    fn the_database_url_is_taken_apart_as_libpq_would() {
        let t = Target::parse("postgres://app:s%40cret@db.example:6543/shop?sslmode=disable").unwrap();
        assert_eq!(
            t,
            Target {
                host: "db.example".into(),
                port: 6543,
                user: "app".into(),
                password: "s@cret".into(),
                database: "shop".into(),
                ssl: None,
                root_cert: None
            }
        );
        let t = Target::parse("postgresql:///shop?host=/var/run/postgresql&user=app").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.user.as_str(), t.database.as_str()),
            ("/var/run/postgresql", 5432, "app", "shop")
        );
        let t = Target::parse("postgres://u@h/d?sslmode=verify-full&sslrootcert=/etc/ca.pem").unwrap();
        assert_eq!((t.ssl, t.root_cert), (Some(SslMode::VerifyFull), Some(PathBuf::from("/etc/ca.pem"))));
        assert_eq!(Target::parse("postgres://u@h/d?sslmode=prefer").unwrap().ssl, Some(SslMode::Prefer));
        assert_eq!(Target::parse("postgres://u@h/d?sslmode=disable").unwrap().ssl, None);
        let t = Target::parse("postgres://u@[::1]:5433/d").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 5433));
        assert_eq!(Target::parse("postgres://u@h").unwrap().database, "u", "the database defaults to the user");
    }
}
