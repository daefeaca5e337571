//! The `check` command: walks the pipeline from the database to the WebSockets and says, for
//! each part, whether it works and, when it does not, the precise cause and its fix.
//!
//! 1. PostgreSQL reachable (`select 1`); a failure says which: refused, unknown host, role
//!    missing, database missing, password refused, or not allowed (pg_hba)
//! 2. table `orders` exists (`to_regclass`)
//! 3. a trigger on `orders` whose function calls `pg_notify` (`pg_trigger`, `pg_proc`); 2 and 3
//!    are skipped when 1 fails, 3 when 2 does
//! 4. Redis answers `PING` (refused and a refused password told apart); a Redis Cluster is
//!    named as one, and fails when `CLUSTER INFO` is not ok or some of its 16384 slots are unserved
//! 5. the publisher's `/readyz`, and 6. its outbox backlog from `/metrics`
//!    (`publisher_outbox_backlog`, `publisher_outbox_backlog_age_seconds`): committed changes
//!    not yet published, failed when the oldest is older than `--max-backlog-age`; and the WAL
//!    the logical capture slot keeps (`publisher_slot_retained_wal_bytes`), failed above
//!    `--max-retained-wal-mb`
//! 7. every ws-server (`--url`, each): its `/readyz`, then a WebSocket handshake (and its hello)
//!
//! Each check has its own timeout, so a server that accepts connections and then hangs fails
//! its check instead of hanging the command. URLs are shown with their password redacted.

mod http;
mod postgres;
mod publisher;

use std::{io::Write as _, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use protocol::env::redact_url;
use serde::Serialize;
use sqlx::{Connection as _, PgConnection};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    args::exit,
    feed::{self, Dial, Inbound, Params, Protocol},
    view::{self, Color},
};

const MIGRATIONS_FIX: &str = "start the publisher once (it applies the sql/ migrations), or run the files in sql/ \
                              in order: psql \"$DATABASE_URL\" -f <file> for each";

/// What to check, and how long each check may take.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// PostgreSQL (`DATABASE_URL`).
    pub database_url: String,
    /// Redis (`REDIS_URL`).
    pub redis_url: String,
    /// The CA file for `rediss://` (`REDIS_TLS_CA_FILE`), if not the system's trust store.
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// Every ws-server replica's WebSocket endpoint.
    pub ws_urls: Vec<String>,
    /// The publisher's HTTP address (`/readyz`, `/metrics`).
    pub publisher_url: String,
    /// The oldest unpublished change may be this old before the backlog check fails.
    pub max_backlog_age: Duration,
    /// Bytes of WAL the logical capture slot may keep before the slot check fails.
    pub max_retained_wal: u64,
    /// The token and TLS settings for the WebSocket handshakes.
    pub params: Params,
    /// TLS for `wss://` URLs.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Per-check timeout.
    pub timeout: Duration,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// What was checked (`PostgreSQL`, `orders table`, …).
    pub name: String,
    /// How it went.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// It works.
    #[serde(rename = "ok")]
    Passed {
        /// What was found.
        detail: String,
    },
    /// It does not.
    #[serde(rename = "fail")]
    Failed {
        /// What went wrong.
        problem: String,
        /// What to do about it.
        fix: String,
    },
    /// Not run because something it needs failed.
    Skipped {
        /// Which earlier check it needed.
        reason: String,
    },
}

impl Outcome {
    fn failed(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Failed { problem: problem.into(), fix: fix.into() }
    }
}

/// The result of the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every check passed.
    AllPassed,
    /// At least one check failed.
    SomeFailed,
}

impl Verdict {
    /// The process exit code (see [`exit`]).
    pub fn exit_code(self) -> u8 {
        match self {
            Self::AllPassed => exit::OK,
            Self::SomeFailed => exit::FAILED,
        }
    }
}

/// Runs every check and prints the results on stdout: one line each as they come, or with
/// `json` one JSON object at the end (`{"ok":…,"checks":[{"name","status",…}]}`).
pub async fn run_and_print(config: &CheckConfig, json: bool, color: Color) -> Verdict {
    let mut results = Vec::new();
    let verdict = run(config, |result| {
        if json {
            results.push(result.clone());
        } else {
            // A failing stdout has nowhere to be reported; the exit code still tells the result.
            let _ = writeln!(std::io::stdout().lock(), "{}", view::check_line(result, color));
        }
    })
    .await;
    if json {
        let doc = serde_json::json!({ "ok": verdict == Verdict::AllPassed, "checks": results });
        let _ = writeln!(std::io::stdout().lock(), "{doc}");
    }
    verdict
}

/// Runs every check in order, handing each result to `report` as soon as it is known.
pub async fn run(config: &CheckConfig, mut report: impl FnMut(&CheckResult)) -> Verdict {
    let mut verdict = Verdict::AllPassed;
    let mut record = |name: &str, outcome: Outcome| {
        if matches!(outcome, Outcome::Failed { .. }) {
            verdict = Verdict::SomeFailed;
        }
        report(&CheckResult { name: name.to_owned(), outcome });
    };

    match connect_postgres(config).await {
        Err(outcome) => {
            record("PostgreSQL", outcome);
            let skipped = || Outcome::Skipped { reason: "needs PostgreSQL".to_owned() };
            record("orders table", skipped());
            record("notify trigger", skipped());
        }
        Ok(mut conn) => {
            record(
                "PostgreSQL",
                Outcome::Passed { detail: format!("reachable at {}", redact_url(&config.database_url)) },
            );
            let table = check_table(&mut conn, config.timeout).await;
            let table_exists = matches!(table, Outcome::Passed { .. });
            record("orders table", table);
            if table_exists {
                record("notify trigger", check_trigger(&mut conn, config.timeout).await);
            } else {
                record("notify trigger", Outcome::Skipped { reason: "needs the orders table".to_owned() });
            }
            // A polite goodbye; the process exits right after, so a failure here changes nothing.
            let _ = timeout(config.timeout, conn.close()).await;
        }
    }
    record("Redis", check_redis(config).await);
    record("publisher", publisher::check_publisher(config).await);
    // Also when /readyz says not ready: that is when the backlog grows.
    record("outbox backlog", publisher::check_backlog(config).await);
    record("replication slot", publisher::check_slot(config).await);
    let several = config.ws_urls.len() > 1;
    for url in &config.ws_urls {
        let name = if several { format!("ws-server {}", redact_url(url)) } else { "ws-server".to_owned() };
        record(&name, check_ws(config, url).await);
    }
    verdict
}

async fn connect_postgres(config: &CheckConfig) -> Result<PgConnection, Outcome> {
    let url = redact_url(&config.database_url);
    let mut conn = match timeout(config.timeout, PgConnection::connect(&config.database_url)).await {
        Err(_elapsed) => {
            return Err(Outcome::failed(
                format!("{url}: no connection within {}s", config.timeout.as_secs()),
                format!("is PostgreSQL at {url} up and reachable (a firewall dropping packets looks like this)?"),
            ));
        }
        Ok(Err(err)) => return Err(postgres::diagnose(&url, &err)),
        Ok(Ok(conn)) => conn,
    };
    match timeout(config.timeout, sqlx::query_scalar::<_, i32>("select 1").fetch_one(&mut conn)).await {
        Ok(Ok(_)) => Ok(conn),
        Ok(Err(err)) => Err(Outcome::failed(format!("{url}: select 1 failed: {err}"), "see PostgreSQL's log")),
        Err(_elapsed) => Err(Outcome::failed(
            format!("{url}: select 1 got no answer within {}s", config.timeout.as_secs()),
            "PostgreSQL is overloaded or stuck: see its log",
        )),
    }
}

async fn check_table(conn: &mut PgConnection, limit: Duration) -> Outcome {
    let query = sqlx::query_scalar::<_, Option<String>>("select to_regclass('public.orders')::text").fetch_one(conn);
    match timeout(limit, query).await {
        Ok(Ok(Some(_))) => Outcome::Passed { detail: "public.orders exists".to_owned() },
        Ok(Ok(None)) => {
            Outcome::Failed { problem: "table public.orders does not exist".to_owned(), fix: MIGRATIONS_FIX.to_owned() }
        }
        Ok(Err(err)) => Outcome::Failed {
            problem: format!("looking up public.orders failed: {err}"),
            fix: MIGRATIONS_FIX.to_owned(),
        },
        Err(_elapsed) => Outcome::Failed {
            problem: format!("looking up public.orders got no answer within {}s", limit.as_secs()),
            fix: MIGRATIONS_FIX.to_owned(),
        },
    }
}

async fn check_trigger(conn: &mut PgConnection, limit: Duration) -> Outcome {
    // Any trigger is not enough: sql/0001 installs one that only touches updated_at. Like the
    // migration that replaces hand-made notify triggers, look for pg_notify in the function.
    let query = sqlx::query_as::<_, (String, bool)>(
        "select t.tgname::text, p.prosrc ilike '%pg_notify%' \
         from pg_trigger t join pg_proc p on p.oid = t.tgfoid \
         where t.tgrelid = 'public.orders'::regclass and not t.tgisinternal order by 1",
    )
    .fetch_all(&mut *conn);
    let triggers = match timeout(limit, query).await {
        Ok(Ok(triggers)) => triggers,
        Ok(Err(err)) => {
            return Outcome::Failed {
                problem: format!("listing triggers failed: {err}"),
                fix: MIGRATIONS_FIX.to_owned(),
            };
        }
        Err(_elapsed) => {
            return Outcome::Failed {
                problem: format!("listing triggers got no answer within {}s", limit.as_secs()),
                fix: MIGRATIONS_FIX.to_owned(),
            };
        }
    };
    let (notifying, others): (Vec<_>, Vec<_>) = triggers.into_iter().partition(|(_, notifies)| *notifies);
    let names =
        |triggers: Vec<(String, bool)>| triggers.into_iter().map(|(name, _)| name).collect::<Vec<_>>().join(", ");
    if !notifying.is_empty() {
        // The trigger's mode (sql/0006): which wake-up the publisher set it to send.
        let mode = sqlx::query_scalar::<_, String>("select mode from realtime_capture").fetch_optional(&mut *conn);
        let how = match timeout(limit, mode).await {
            Ok(Ok(Some(mode))) if mode == "logical" => {
                "; in logical capture mode: it emits logical decoding messages instead (PUBLISHER_CAPTURE=logical)"
            }
            _ => "",
        };
        return Outcome::Passed { detail: format!("{} on orders calls pg_notify{how}", names(notifying)) };
    }
    let problem = if others.is_empty() {
        "no trigger on orders, so changes never reach the publisher".to_owned()
    } else {
        format!(
            "no trigger on orders calls pg_notify (found only {}), so changes never reach the publisher",
            names(others)
        )
    };
    Outcome::Failed { problem, fix: MIGRATIONS_FIX.to_owned() }
}

async fn check_redis(config: &CheckConfig) -> Outcome {
    let url = redact_url(&config.redis_url);
    let fix = format!("start Redis, or point REDIS_URL / --redis-url at it (now {url})");
    // Any seed node that answers will do: a cluster node reports on the whole cluster.
    let ca = match config.redis_ca_file.as_deref().map(protocol::env::read_pem_certificates) {
        None => None,
        Some(Ok(pem)) => Some(pem),
        Some(Err(reason)) => {
            return Outcome::failed(
                format!("--redis-ca-file / REDIS_TLS_CA_FILE: {reason}"),
                "name a PEM file of the CA",
            );
        }
    };
    let ping = async {
        let mut last = None;
        for node in protocol::store::split_urls(&config.redis_url) {
            let attempt = async {
                let client = protocol::store::client(&node, ca.as_ref())?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let pong = redis::cmd("PING").query_async::<String>(&mut conn).await?;
                let cluster = if protocol::store::cluster_enabled(&mut conn).await? {
                    Some(redis::cmd("CLUSTER").arg("INFO").query_async::<String>(&mut conn).await?)
                } else {
                    None
                };
                Ok::<_, redis::RedisError>((pong, cluster))
            };
            match attempt.await {
                Ok(answer) => return Ok(answer),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no URL given"))))
    };
    match timeout(config.timeout, ping).await {
        Ok(Ok((pong, None))) => Outcome::Passed { detail: format!("{url} answered PING with {pong} (one server)") },
        Ok(Ok((_, Some(info)))) => cluster_outcome(&url, &info),
        Ok(Err(err)) if err.is_connection_refusal() => {
            Outcome::failed(format!("{url}: connection refused (nothing listens there)"), fix)
        }
        Ok(Err(err)) if is_auth_error(&err) => Outcome::failed(
            format!("{url}: authentication failed ({err})"),
            "put Redis's password in REDIS_URL / --redis-url: redis://:PASSWORD@host:6379 (or USER:PASSWORD@ with an ACL user)",
        ),
        Ok(Err(err)) => {
            let fix = protocol::retry::tls_fix("redis", &format!("{err:?}")).map_or(fix, str::to_owned);
            Outcome::Failed { problem: format!("{url}: {err}"), fix }
        }
        Err(_elapsed) => {
            Outcome::Failed { problem: format!("{url}: no answer to PING within {}s", config.timeout.as_secs()), fix }
        }
    }
}

/// A Redis Cluster passes when `CLUSTER INFO` says it is ok and all 16384 slots are served.
fn cluster_outcome(url: &str, info: &str) -> Outcome {
    let field = |name: &str| {
        info.lines().find_map(|line| line.trim().strip_prefix(name)?.strip_prefix(':')).unwrap_or("?").to_owned()
    };
    let (state, ok, masters, nodes) =
        (field("cluster_state"), field("cluster_slots_ok"), field("cluster_size"), field("cluster_known_nodes"));
    let summary = format!("{url} is a Redis Cluster: {masters} masters, {nodes} nodes, {ok} of 16384 slots served");
    if state == "ok" && ok == "16384" {
        return Outcome::Passed { detail: format!("{summary}, state ok") };
    }
    Outcome::failed(
        format!("{summary}, state {state}: events for unserved slots cannot be published or read"),
        "a master is down with no replica to take over: start it again (or add a replica), then check          `redis-cli --cluster check <host:port>`; `redis-cli --cluster fix` reassigns slots nobody serves",
    )
}

/// Whether Redis refused the credentials (none given, or wrong ones).
fn is_auth_error(err: &redis::RedisError) -> bool {
    let text = err.to_string();
    err.kind() == redis::ErrorKind::AuthenticationFailed
        || ["NOAUTH", "WRONGPASS", "invalid password"].iter().any(|needle| text.contains(needle))
}

fn one_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().chars().filter(|c| !c.is_control()).take(200).collect()
}

async fn check_ws(config: &CheckConfig, ws_url: &str) -> Outcome {
    let url = redact_url(ws_url);
    let start_fix = "start ws-server, or pass its WebSocket endpoint with --url (e.g. ws://localhost:8080/ws)";
    let Some(readyz) = http::readyz_url(ws_url) else {
        return Outcome::failed(format!("{url}: not a ws:// or wss:// URL"), start_fix);
    };
    match http::get(&readyz, config.tls.as_ref(), config.timeout).await {
        Ok((200, _)) => {}
        Ok((status, body)) => {
            return Outcome::failed(
                format!("{url}: /readyz answered {status}: {}", one_line(&body)),
                "the replica is up but not connected to Redis: check Redis (above) and the replica's log",
            );
        }
        Err(err) => return Outcome::failed(format!("{url}: {err}"), start_fix),
    }
    let deadline = Instant::now() + config.timeout;
    let dial = Dial { params: &config.params, tls: config.tls.as_ref() };
    let (mut ws, protocol) = match feed::handshake(ws_url, dial, config.timeout).await {
        Ok(connection) => connection,
        Err(err) => {
            let fix = if err.is_refusal() {
                "pass a valid token with --token / ORDERS_TOKEN, or the CA with --ca-file"
            } else {
                start_fix
            };
            return Outcome::failed(format!("{url}: {err}"), fix);
        }
    };
    let detail = match protocol {
        Protocol::Legacy => format!("{url} accepted a WebSocket (older server without orders.v1)"),
        Protocol::OrdersV1 => {
            // The hello frame comes first; a server that does not send it still passed the handshake.
            let server = loop {
                match timeout_at(deadline, ws.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => {
                        if let Inbound::Hello { server_id, .. } = feed::classify(text.as_str(), protocol) {
                            break server_id;
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(Some(Err(_)) | None) | Err(_) => break None,
                }
            };
            let server = server.map(|id| format!(", server {id}")).unwrap_or_default();
            format!("{url} accepted a WebSocket (protocol orders.v1{server})")
        }
    };
    // Best effort: the check has its answer, and the server copes with a dropped socket.
    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    Outcome::Passed { detail: format!("{detail}; ready") }
}
