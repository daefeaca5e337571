//! The `check` command: walks the pipeline from the database to the WebSocket and says, for each
//! part, whether it works and how to fix it when it does not.
//!
//! 1. PostgreSQL reachable (`select 1`)
//! 2. table `orders` exists (`to_regclass`)
//! 3. a trigger on `orders` whose function calls `pg_notify` (`pg_trigger`, `pg_proc`); 2 and 3
//!    are skipped when 1 fails, 3 when 2 does
//! 4. Redis answers `PING`
//! 5. ws-server accepts a WebSocket handshake (and says hello, when it speaks `orders.v1`)
//!
//! Each check has its own timeout, so a server that accepts connections and then hangs fails
//! its check instead of hanging the command. URLs are shown with their password redacted.

use std::time::Duration;

use futures_util::StreamExt as _;
use protocol::env::redact_url;
use sqlx::{Connection as _, PgConnection};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    args::exit,
    feed::{self, Inbound, Protocol},
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
    /// ws-server's WebSocket endpoint.
    pub ws_url: String,
    /// Per-check timeout.
    pub timeout: Duration,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// What was checked (`PostgreSQL`, `orders table`, …).
    pub name: &'static str,
    /// How it went.
    pub outcome: Outcome,
}

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It works.
    Passed {
        /// What was found.
        detail: String,
    },
    /// It does not.
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

/// Runs every check in order, handing each result to `report` as soon as it is known.
pub async fn run(config: &CheckConfig, mut report: impl FnMut(&CheckResult)) -> Verdict {
    let mut verdict = Verdict::AllPassed;
    let mut record = |name: &'static str, outcome: Outcome| {
        if matches!(outcome, Outcome::Failed { .. }) {
            verdict = Verdict::SomeFailed;
        }
        report(&CheckResult { name, outcome });
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
    record("ws-server", check_ws(config).await);
    verdict
}

async fn connect_postgres(config: &CheckConfig) -> Result<PgConnection, Outcome> {
    let url = redact_url(&config.database_url);
    let fix = format!("start PostgreSQL, or point DATABASE_URL / --database-url at it (now {url})");
    let fail = |problem: String| Outcome::Failed { problem, fix: fix.clone() };
    let mut conn = match timeout(config.timeout, PgConnection::connect(&config.database_url)).await {
        Err(_elapsed) => return Err(fail(format!("{url}: no connection within {}s", config.timeout.as_secs()))),
        Ok(Err(err)) => return Err(fail(format!("{url}: {err}"))),
        Ok(Ok(conn)) => conn,
    };
    match timeout(config.timeout, sqlx::query_scalar::<_, i32>("select 1").fetch_one(&mut conn)).await {
        Ok(Ok(_)) => Ok(conn),
        Ok(Err(err)) => Err(fail(format!("{url}: select 1 failed: {err}"))),
        Err(_elapsed) => Err(fail(format!("{url}: select 1 got no answer within {}s", config.timeout.as_secs()))),
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
    .fetch_all(conn);
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
        return Outcome::Passed { detail: format!("{} on orders calls pg_notify", names(notifying)) };
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
    let ping = async {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match timeout(config.timeout, ping).await {
        Ok(Ok(pong)) => Outcome::Passed { detail: format!("{url} answered PING with {pong}") },
        Ok(Err(err)) => Outcome::Failed { problem: format!("{url}: {err}"), fix },
        Err(_elapsed) => {
            Outcome::Failed { problem: format!("{url}: no answer to PING within {}s", config.timeout.as_secs()), fix }
        }
    }
}

async fn check_ws(config: &CheckConfig) -> Outcome {
    let url = redact_url(&config.ws_url);
    let deadline = Instant::now() + config.timeout;
    let (mut ws, protocol) = match feed::handshake(&config.ws_url, config.timeout).await {
        Ok(connection) => connection,
        Err(err) => {
            return Outcome::Failed {
                problem: format!("{url}: {err}"),
                fix: "start ws-server, or pass its WebSocket endpoint with --url (e.g. ws://localhost:8080/ws)"
                    .to_owned(),
            };
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
    Outcome::Passed { detail }
}
