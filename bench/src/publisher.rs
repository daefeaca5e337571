//! The publisher alone: how fast committed rows reach the Redis replay log (our system only;
//! docs/design.md: the stream `{orders_updates}:log`, entry ids `<pos>-1`). No client is
//! involved: it reads the newest log position before and after, so the ws-servers may run or not.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use protocol::store::{ClusterMode, Conn, RedisTarget, Timeouts};
use serde::Serialize;
use sqlx::{Connection, PgConnection};

use crate::clock::now_ns;
use crate::report;

/// Options of the `publisher` scenario.
#[derive(Debug, clap::Args)]
pub struct PublisherArgs {
    /// Our system's PostgreSQL.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
    /// Its Redis, one server or a cluster's node(s) (read only: the log's newest entry).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: String,
    /// The replay log's key.
    #[arg(long, default_value = "{orders_updates}:log")]
    pub log_key: String,
    /// Rows committed in one transaction for the burst.
    #[arg(long, default_value_t = 20_000)]
    pub rows: u32,
    /// How long the single-row writers commit as fast as they can.
    #[arg(long, default_value = "5s", value_parser = crate::scenario::parse_duration)]
    pub duration: Duration,
    /// Single-row writer connections.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// How long to wait for the log to have everything.
    #[arg(long, default_value = "120s", value_parser = crate::scenario::parse_duration)]
    pub timeout: Duration,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// A label stored in the report.
    #[arg(long)]
    pub label: Option<String>,
}

/// What the publisher scenario measured.
#[derive(Debug, Serialize)]
pub struct PublisherReport {
    /// `publisher`.
    pub scenario: &'static str,
    /// `--label`.
    pub label: Option<String>,
    /// How busy the machine was during the second before.
    pub machine_before: crate::procfs::MachineLoad,
    /// Rows in the burst.
    pub burst_rows: u32,
    /// Seconds the burst's INSERT … SELECT took to commit (the trigger ran for every row).
    pub burst_commit_s: f64,
    /// Seconds from that COMMIT returning to the log holding the burst's last row.
    pub burst_commit_to_log_s: f64,
    /// `burst_rows / burst_commit_to_log_s`: the publisher's events/s from committed rows.
    pub publisher_events_per_s: f64,
    /// Single-row transactions (through the trigger) committed per second by `writers` connections.
    pub single_row_commits_per_s: f64,
    /// Seconds after the single-row writers stopped until the log had all of them.
    pub single_row_log_lag_s: f64,
}

async fn newest_pos(con: &mut Conn, key: &str) -> Result<u64> {
    let newest: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await
        .with_context(|| format!("XREVRANGE {key}"))?;
    match newest.first() {
        None => Ok(0),
        Some((id, _)) => id
            .split_once('-')
            .and_then(|(pos, _)| pos.parse().ok())
            .with_context(|| format!("log entry id {id:?} is not <pos>-1")),
    }
}

async fn wait_for_pos(con: &mut Conn, key: &str, pos: u64, timeout: Duration) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = newest_pos(con, key).await?;
        if now >= pos {
            return Ok(now_ns());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the log reached position {now}, not {pos}, within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

/// Runs the scenario, prints its line, writes the JSON.
pub async fn run(args: PublisherArgs) -> Result<PublisherReport> {
    let machine_before = crate::procfs::machine_load().await?;
    // One server or a cluster (the log's slot), as the services find it.
    let target = RedisTarget::open(&args.redis_url, ClusterMode::Auto, None).context("REDIS_URL")?;
    let timeouts = Timeouts { connect: Duration::from_secs(5), response: Duration::from_secs(5) };
    let mut con = target.connect(timeouts).await.context("connecting to Redis")?;
    let mut db = PgConnection::connect(&args.database_url).await.context("connecting to the database")?;

    // Burst: one transaction of `rows` rows; the publisher sees them only once it commits.
    let before = newest_pos(&mut con, &args.log_key).await?;
    let t0 = now_ns();
    sqlx::query(
        "INSERT INTO orders (customer_name, product_name, status) \
         SELECT 'obpub', 'ob:pub:' || g, 'pending' FROM generate_series(1, $1) g",
    )
    .bind(args.rows as i32)
    .execute(&mut db)
    .await
    .context("the burst INSERT")?;
    let committed = now_ns();
    let logged = wait_for_pos(&mut con, &args.log_key, before + u64::from(args.rows), args.timeout).await?;
    let burst_commit_to_log_s = (logged - committed) as f64 / 1e9;

    // Single-row commits, unthrottled, from several connections: what PostgreSQL commits
    // through the trigger here, and whether the publisher keeps up with it.
    let before = newest_pos(&mut con, &args.log_key).await?;
    let mut conns = Vec::new();
    for _ in 0..args.writers.max(1) {
        conns.push(PgConnection::connect(&args.database_url).await.context("connecting a writer")?);
    }
    let start = now_ns();
    let until = tokio::time::Instant::now() + args.duration;
    let counts = futures_util::future::join_all(conns.iter_mut().map(|c| async move {
        let mut n = 0u64;
        while tokio::time::Instant::now() < until {
            sqlx::query(
                "INSERT INTO orders (customer_name, product_name, status) VALUES ('obpub', 'ob:pub:1', 'pending')",
            )
            .execute(&mut *c)
            .await?;
            n += 1;
        }
        Ok::<u64, sqlx::Error>(n)
    }))
    .await;
    let stopped = now_ns();
    let mut total = 0;
    for n in counts {
        total += n.context("a single-row INSERT")?;
    }
    let logged = wait_for_pos(&mut con, &args.log_key, before + total, args.timeout).await?;

    let r = PublisherReport {
        scenario: "publisher",
        label: args.label.clone(),
        machine_before,
        burst_rows: args.rows,
        burst_commit_s: (committed - t0) as f64 / 1e9,
        burst_commit_to_log_s,
        publisher_events_per_s: f64::from(args.rows) / burst_commit_to_log_s.max(1e-9),
        single_row_commits_per_s: total as f64 / ((stopped - start) as f64 / 1e9),
        single_row_log_lag_s: logged.saturating_sub(stopped) as f64 / 1e9,
    };
    report::print(&format!(
        "publisher  burst of {} rows: committed in {:.2}s, in the log {:.2}s after COMMIT ({:.0} events/s); single-row commits {:.0}/s, log {:.3}s behind at the end; machine busy {:.0}% before",
        r.burst_rows,
        r.burst_commit_s,
        r.burst_commit_to_log_s,
        r.publisher_events_per_s,
        r.single_row_commits_per_s,
        r.single_row_log_lag_s,
        r.machine_before.busy_pct
    ))?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&r)?).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(r)
}
