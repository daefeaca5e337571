//! Soak test of the whole system:
//! `cargo run --release -p e2e --example soak -- --minutes 30`.
//!
//! Private PostgreSQL and Redis (testkit), two publishers (active + standby) and two ws-server
//! replicas as real processes (this executable re-run as each service, through the same
//! `protocol::service::main` as the shipped binaries), so their memory and descriptors can be
//! read from `/proc`. For the whole run:
//!
//! - SQL writers commit a steady mix of inserts, updates and deletes (about `--rate` committed
//!   row changes/s in all; one transaction in ten rolls back and must leave no trace);
//! - WebSocket clients ([`e2e::Follower`]: snapshot, then events, resuming with `?since=` their
//!   last position) drop their connection every few seconds and come back on the other replica;
//! - at a third of the run the active publisher is SIGKILLed (the standby takes over, and a new
//!   standby is started); at two thirds a ws-server replica is restarted (SIGTERM, same port);
//! - every `--sample-secs` the RSS (`VmRSS`) and open descriptors of every process are sampled.
//!
//! At the end it checks that every committed change is in the replay log exactly once (against
//! the writers' own count and the outbox), that Redis's state equals the table, and that every
//! client has every change after its snapshot exactly once, in order, and ended with a copy
//! equal to the table. It prints the samples (flat = no growth) and exits 1 if a check failed.
//! Every process it started is killed when it ends, however it ends.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    process::ExitCode,
    time::{Duration, Instant},
};

use e2e::{
    Follower, Process, Rng, WAIT,
    history::{log_frames, state, table},
};
use sqlx::{Connection, PgConnection};
use testkit::{PgServer, RedisServer, free_port, wait_for};
use tokio::{sync::watch, task::JoinSet};

/// Set in the environment of the processes this executable starts as services.
const ROLE_VAR: &str = "SOAK_SERVE";

fn main() -> ExitCode {
    match std::env::var(ROLE_VAR).as_deref() {
        Ok("publisher") => return protocol::service::main::<publisher::Publisher>(),
        Ok("ws-server") => return protocol::service::main::<ws_server::WsServer>(),
        _ => {}
    }
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}\nusage: soak [--minutes 30] [--rate 80] [--writers 4] [--clients 8] [--sample-secs 60]");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    // Every wait inside is bounded but the writers' queries; this bounds the whole run, and
    // dropping the run kills every process it started.
    let limit = args.duration + Duration::from_secs(5 * 60);
    let passed = runtime.block_on(async {
        tokio::time::timeout(limit, soak(args)).await.unwrap_or_else(|_| {
            eprintln!("soak: FAIL: not finished within {limit:?}");
            false
        })
    });
    if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

#[derive(Debug, Clone, Copy)]
struct Args {
    duration: Duration,
    rate: f64,
    writers: u64,
    clients: usize,
    sample_every: Duration,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut out = Args {
            duration: Duration::from_secs(30 * 60),
            rate: 80.0,
            writers: 4,
            clients: 8,
            sample_every: Duration::from_secs(60),
        };
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let number: f64 = value.parse().map_err(|_| format!("{flag} {value:?}: expected a number"))?;
            if number <= 0.0 {
                return Err(format!("{flag} {value:?}: expected a number above zero"));
            }
            match flag.as_str() {
                "--minutes" => out.duration = Duration::from_secs_f64(number * 60.0),
                "--rate" => out.rate = number,
                "--writers" => out.writers = number as u64,
                "--clients" => out.clients = number as usize,
                "--sample-secs" => out.sample_every = Duration::from_secs_f64(number),
                other => return Err(format!("unknown option {other}")),
            }
        }
        Ok(out)
    }
}

/// Prints a line stamped with the time since the start.
#[derive(Debug, Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn say(&self, what: &str) {
        let t = self.0.elapsed().as_secs();
        eprintln!("soak {:>2}:{:02}  {what}", t / 60, t % 60);
    }
}

async fn soak(args: Args) -> bool {
    let clock = Clock(Instant::now());
    let dir = tempfile::Builder::new().prefix("soak-").tempdir().expect("a log directory");
    let keep_logs = dir.path().to_owned();
    clock.say(&format!("{args:?}; service logs in {}", keep_logs.display()));
    let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());

    let mut publishers = vec![start_publisher("publisher-1", &pg, &redis, dir.path())];
    active(&publishers).await;
    publishers.push(start_publisher("publisher-2", &pg, &redis, dir.path()));
    let ports = [free_port(), free_port()];
    let mut replicas =
        vec![start_replica("ws-1", ports[0], &redis, dir.path()), start_replica("ws-2", ports[1], &redis, dir.path())];
    for p in publishers.iter().chain(&replicas) {
        p.wait_ready().await;
    }
    let mut samples = Samples::default();
    samples.take(clock, &publishers, &replicas, &redis).await;

    // Writers first, so the clients' first snapshot already has a position.
    let (writers_stop_tx, writers_stop_rx) = watch::channel(false);
    // A transaction carries 1.4 changes on average (one in five has three) and one in ten
    // rolls back: about 1.26 committed changes per transaction.
    let per_writer = Duration::from_secs_f64(args.writers as f64 * 1.26 / args.rate);
    let mut writers = JoinSet::new();
    for w in 0..args.writers {
        writers.spawn(write(pg.url(), 11 + w, per_writer, writers_stop_rx.clone()));
    }
    wait_for(WAIT, "a first event in the log", || async { (!log_frames(&redis.url()).await.is_empty()).then_some(()) })
        .await;

    let urls: Vec<String> = ports.iter().map(|p| format!("ws://127.0.0.1:{p}/ws")).collect();
    let (clients_stop_tx, clients_stop_rx) = watch::channel(false);
    let (churn_stop_tx, churn_stop_rx) = watch::channel(false);
    let mut clients = JoinSet::new();
    let mut churners = JoinSet::new();
    for i in 0..args.clients {
        let (drop_tx, drop_rx) = watch::channel(0u64);
        let mut urls = urls.clone();
        urls.rotate_left(i % 2);
        clients.spawn(Follower::run(format!("client-{i}"), urls, drop_rx, clients_stop_rx.clone()));
        churners.spawn(churn(drop_tx, 100 + i as u64, churn_stop_rx.clone()));
    }
    clock.say(&format!("{} writers at {} changes/s, {} clients churning", args.writers, args.rate, args.clients));

    // The schedule: failover at 1/3, replica restart at 2/3, samples throughout.
    let start = tokio::time::Instant::now();
    let end = start + args.duration;
    let mut next_sample = start + args.sample_every;
    let mut failover_at = Some(start + args.duration / 3);
    let mut restart_at = Some(start + args.duration * 2 / 3);
    loop {
        let next = [Some(next_sample), failover_at, restart_at, Some(end)].into_iter().flatten().min().expect("end");
        tokio::time::sleep_until(next).await;
        let now = tokio::time::Instant::now();
        if failover_at.is_some_and(|t| t <= now) {
            failover_at = None;
            let a = active(&publishers).await;
            clock.say(&format!("SIGKILL the active publisher ({}); the standby takes over", publishers[a].name));
            let took = Instant::now();
            publishers[a].kill().await;
            let b = active(&publishers).await;
            clock.say(&format!("{} is active after {:?}; starting a new standby", publishers[b].name, took.elapsed()));
            publishers[a] = start_publisher(&format!("publisher-{}", publishers.len() + 1), &pg, &redis, dir.path());
            publishers[a].wait_ready().await;
        }
        if restart_at.is_some_and(|t| t <= now) {
            restart_at = None;
            clock.say(&format!("restart replica {} (SIGTERM, then again on port {})", replicas[0].name, ports[0]));
            replicas[0].terminate().await;
            replicas[0] = start_replica("ws-1-again", ports[0], &redis, dir.path());
            replicas[0].wait_ready().await;
        }
        if next_sample <= now {
            next_sample += args.sample_every;
            samples.take(clock, &publishers, &replicas, &redis).await;
        }
        if end <= now {
            break;
        }
    }

    clock.say("stop the writers");
    writers_stop_tx.send_replace(true);
    let mut load = Load::default();
    while let Some(done) = writers.join_next().await {
        load.add(done.expect("writer did not panic"));
    }
    churn_stop_tx.send_replace(true);
    let mut drop_senders = Vec::new();
    while let Some(sender) = churners.join_next().await {
        drop_senders.push(sender.expect("churn did not panic"));
    }
    clock.say(&format!("{load:?}; waiting for the outbox to drain and the clients to catch up"));

    let outcome = check(clock, &pg, &redis, load, clients, clients_stop_tx).await;
    drop(drop_senders);
    samples.take(clock, &publishers, &replicas, &redis).await;
    println_report(&samples.render());
    let mut logs: Vec<_> =
        std::fs::read_dir(&keep_logs).map(|d| d.filter_map(Result::ok).collect()).unwrap_or_default();
    logs.sort_by_key(|entry| entry.file_name());
    for entry in logs {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let count = |level: &str| text.lines().filter(|l| l.contains(&format!(r#""level":"{level}""#))).count();
        println_report(&format!(
            "{}: {} WARN, {} ERROR log lines",
            entry.file_name().to_string_lossy(),
            count("WARN"),
            count("ERROR")
        ));
    }
    let passed = outcome.is_ok();
    match outcome {
        Ok(summary) => println_report(&format!("PASS\n{summary}")),
        Err(problems) => println_report(&format!("FAIL\n{problems}")),
    }
    if !passed {
        // Keep the service logs of a failed run for reading.
        let kept = dir.keep();
        println_report(&format!("service logs kept in {}", kept.display()));
    }
    passed
}

/// The report goes to stdout (the progress lines to stderr), so it can be kept on its own.
#[allow(clippy::print_stdout)]
fn println_report(text: &str) {
    println!("{text}");
}

/// The end-of-run checks; `Ok` holds the summary, `Err` every problem found.
async fn check(
    clock: Clock,
    pg: &PgServer,
    redis: &RedisServer,
    load: Load,
    mut clients: JoinSet<Follower>,
    clients_stop_tx: watch::Sender<bool>,
) -> Result<String, String> {
    let expected_clients = clients.len();
    let mut problems = Vec::new();
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let unpublished =
                pg.psql("postgres", "SELECT count(*) FROM realtime_events WHERE published_at IS NULL").await;
            if unpublished == "0" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if drained.is_err() {
        problems.push("the outbox still had unpublished rows 60 s after the writers stopped".to_owned());
    }

    // The log against the writers' count and the outbox: every committed change once.
    let frames = log_frames(&redis.url()).await;
    let ids: Vec<i64> = frames.iter().filter_map(|f| f["id"].as_i64()).collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    let outbox: HashSet<i64> =
        pg.psql("postgres", "SELECT id FROM realtime_events").await.lines().filter_map(|l| l.parse().ok()).collect();
    let epochs: HashSet<&str> = frames.iter().filter_map(|f| f["epoch"].as_str()).collect();
    let positions_consecutive = frames.iter().enumerate().all(|(i, f)| f["pos"].as_u64() == Some(i as u64 + 1));
    let (lost, extra) = (outbox.difference(&unique).count(), unique.difference(&outbox).count());
    if ids.len() != unique.len() {
        problems.push(format!("{} event ids appear more than once in the log", ids.len() - unique.len()));
    }
    if lost + extra > 0 {
        problems.push(format!("log vs outbox: {lost} committed changes missing, {extra} not in the outbox"));
    }
    if load.ambiguous == 0 && unique.len() as u64 != load.changes {
        problems.push(format!("the writers committed {} changes, the log holds {}", load.changes, unique.len()));
    }
    if epochs.len() != 1 || !positions_consecutive {
        problems.push(format!("the log is not one consecutive history: {} epochs", epochs.len()));
    }
    let expected = table(pg).await;
    if state(&redis.url()).await != expected {
        problems.push("Redis's state differs from SELECT * FROM orders".to_owned());
    }
    let head = frames.last().and_then(|f| f["pos"].as_u64()).unwrap_or(0);

    // Clients had the whole tail pushed to them by now unless something is stuck; the ones
    // still reconnecting (300 ms away after a drop) get a few seconds more.
    clock.say(&format!("log: {} events, head position {head}; stopping the clients", frames.len()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    clients_stop_tx.send_replace(true);
    let mut summary = format!(
        "committed: {} changes in {} transactions ({} rolled back){}; log: {} events, {} unique ids, 1 epoch: {}; outbox rows: {}\n",
        load.changes,
        load.transactions,
        load.rolled_back,
        if load.ambiguous > 0 {
            format!(", {} commits with an unknown outcome", load.ambiguous)
        } else {
            String::new()
        },
        frames.len(),
        unique.len(),
        epochs.len() == 1,
        outbox.len()
    );
    let mut followers = Vec::new();
    while let Some(done) = tokio::time::timeout(Duration::from_secs(30), clients.join_next()).await.ok().flatten() {
        followers.push(done.expect("client did not panic"));
    }
    followers.sort_by(|a, b| a.name.cmp(&b.name));
    for f in &followers {
        let at = f.position.as_ref().map_or(0, |p| p.pos);
        let behind = head.saturating_sub(at);
        summary.push_str(&format!(
            "{}: {} events, {} snapshots, {} resumes, at position {at} ({behind} behind), {} broken promises\n",
            f.name,
            f.events,
            f.snapshots,
            f.resumes,
            f.violations.len()
        ));
        if !f.violations.is_empty() {
            problems.push(format!("{}: {:?}", f.name, &f.violations[..f.violations.len().min(5)]));
        }
        if behind > 0 {
            problems.push(format!("{} ended {behind} events behind the log", f.name));
        }
        if f.state != expected {
            problems.push(format!("{}'s copy differs from SELECT * FROM orders", f.name));
        }
    }
    if followers.len() != expected_clients {
        problems.push(format!("{} of {expected_clients} clients stopped within 30 s", followers.len()));
    }
    if problems.is_empty() { Ok(summary) } else { Err(format!("{summary}{}", problems.join("\n"))) }
}

/// What the writers did.
#[derive(Debug, Default, Clone, Copy)]
struct Load {
    /// Row changes in committed transactions (one outbox row each).
    changes: u64,
    transactions: u64,
    rolled_back: u64,
    /// Commits whose answer was lost: they may or may not have happened.
    ambiguous: u64,
}

impl Load {
    fn add(&mut self, other: Load) {
        self.changes += other.changes;
        self.transactions += other.transactions;
        self.rolled_back += other.rolled_back;
        self.ambiguous += other.ambiguous;
    }
}

/// One writer: a transaction every `every` (1 change, sometimes 3) on rows it owns, so writers
/// never wait on each other; one in ten rolls back.
async fn write(url: String, seed: u64, every: Duration, stop: watch::Receiver<bool>) -> Load {
    let mut rng = Rng(seed);
    let mut conn = PgConnection::connect(&url).await.expect("writer connects");
    let mut mine: Vec<i64> = Vec::new();
    let mut load = Load::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !*stop.borrow() {
        tick.tick().await;
        let statements = if rng.below(5) == 0 { 3 } else { 1 };
        let mut tx = conn.begin().await.expect("begin");
        let (mut changes, mut inserted, mut deleted) = (0, Vec::new(), Vec::new());
        for _ in 0..statements {
            let pick = (!mine.is_empty()).then(|| mine[rng.below(mine.len() as u64) as usize]);
            match (rng.below(20), pick) {
                (0..=9, _) | (_, None) => {
                    let id: i64 = sqlx::query_scalar(
                        "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ($1, $2, 'pending', $3) RETURNING id",
                    )
                    .bind(format!("c{}", rng.below(100)))
                    .bind(format!("p{}", rng.below(30)))
                    .bind(rng.below(1000) as i64)
                    .fetch_one(&mut *tx)
                    .await
                    .expect("insert");
                    inserted.push(id);
                }
                (10..=16, Some(id)) if !deleted.contains(&id) => {
                    sqlx::query("UPDATE orders SET status = $1, amount = amount + 1 WHERE id = $2")
                        .bind(["paid", "shipped", "completed"][rng.below(3) as usize])
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .expect("update");
                }
                (_, Some(id)) if !deleted.contains(&id) => {
                    sqlx::query("DELETE FROM orders WHERE id = $1").bind(id).execute(&mut *tx).await.expect("delete");
                    deleted.push(id);
                }
                // Deleted earlier in this transaction: the statement would change nothing.
                _ => continue,
            }
            changes += 1;
        }
        if rng.below(10) == 0 {
            tx.rollback().await.expect("rollback");
            load.rolled_back += 1;
            continue;
        }
        match tx.commit().await {
            Ok(()) => {
                load.transactions += 1;
                load.changes += changes;
                mine.extend(inserted);
                mine.retain(|id| !deleted.contains(id));
            }
            // The connection is private and PostgreSQL stays up, so this is not expected; if it
            // happens the exact count is unknown and the check says so.
            Err(_) => load.ambiguous += 1,
        }
    }
    load
}

/// Drops one client's connection every 1 to 4 s until stopped; returns the sender, which must
/// outlive the client (a follower takes a closed channel for one more drop, again and again).
async fn churn(drop_tx: watch::Sender<u64>, seed: u64, mut stop: watch::Receiver<bool>) -> watch::Sender<u64> {
    let mut rng = Rng(seed);
    loop {
        let pause = Duration::from_millis(1000 + rng.below(3000));
        tokio::select! {
            _ = stop.changed() => return drop_tx,
            () = tokio::time::sleep(pause) => drop_tx.send_modify(|n| *n += 1),
        }
    }
}

fn start_publisher(name: &str, pg: &PgServer, redis: &RedisServer, dir: &Path) -> Process {
    let port = free_port();
    let env = [
        (ROLE_VAR, "publisher".to_owned()),
        ("DATABASE_URL", pg.url()),
        ("REDIS_URL", redis.url()),
        ("HEALTH_PORT", port.to_string()),
        ("PUBLISHER_BIND_ADDR", "127.0.0.1".to_owned()),
        // The default (100000) would trim the log before a 30-minute run ends, and the check
        // reads every event back from it.
        ("PUBLISHER_LOG_MAXLEN", "10000000".to_owned()),
        ("PUBLISHER_STANDBY_POLL", "500ms".to_owned()),
        ("RETRY_MAX_DELAY", "2s".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ];
    Process::start(&this_exe(), name, port, &env, dir)
}

fn start_replica(name: &str, port: u16, redis: &RedisServer, dir: &Path) -> Process {
    let env = [
        (ROLE_VAR, "ws-server".to_owned()),
        ("REDIS_URL", redis.url()),
        ("PORT", port.to_string()),
        ("WS_BIND_ADDR", "127.0.0.1".to_owned()),
        ("RETRY_MAX_DELAY", "2s".to_owned()),
        ("LOG_FORMAT", "json".to_owned()),
    ];
    Process::start(&this_exe(), name, port, &env, dir)
}

fn this_exe() -> String {
    std::env::current_exe().expect("the path of this executable").to_string_lossy().into_owned()
}

/// Which publisher is active, waiting (bounded) until one is.
async fn active(publishers: &[Process]) -> usize {
    wait_for(WAIT, "an active publisher", || async {
        for (i, p) in publishers.iter().enumerate() {
            if p.metric("publisher_active").await == Some(1) {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// RSS and open descriptors of every process, per sample.
#[derive(Debug, Default)]
struct Samples {
    /// Minutes since the start of each sample.
    at: Vec<f64>,
    /// `name (pid)` → one `(rss_kib, fds)` per sample (`None` before it started / after it ended).
    rows: BTreeMap<String, Vec<Option<(u64, usize)>>>,
}

impl Samples {
    async fn take(&mut self, clock: Clock, publishers: &[Process], replicas: &[Process], redis: &RedisServer) {
        let column = self.at.len();
        self.at.push(clock.0.elapsed().as_secs_f64() / 60.0);
        let mut seen: Vec<(String, Option<u32>)> =
            publishers.iter().chain(replicas).map(|p| (p.name.clone(), p.pid())).collect();
        seen.push(("redis".to_owned(), redis_pid(redis).await));
        for (name, pid) in seen {
            let Some(pid) = pid else { continue };
            let row = self.rows.entry(format!("{name} ({pid})")).or_default();
            row.resize(column + 1, None);
            row[column] = proc_usage(pid);
        }
        for row in self.rows.values_mut() {
            row.resize(column + 1, None);
        }
    }

    fn render(&self) -> String {
        let mut out = String::from("RSS MiB / open fds, sampled at minute:\n");
        out.push_str(&format!("{:<26}", "process (pid)"));
        for t in &self.at {
            out.push_str(&format!("{t:>12.1}"));
        }
        out.push('\n');
        for (name, row) in &self.rows {
            out.push_str(&format!("{name:<26}"));
            for cell in row {
                let text =
                    cell.map_or_else(|| "-".to_owned(), |(rss, fds)| format!("{:.1}/{fds}", rss as f64 / 1024.0));
                out.push_str(&format!("{text:>12}"));
            }
            out.push('\n');
        }
        out
    }
}

/// `VmRSS` (KiB) from `/proc/<pid>/status` and the number of entries in `/proc/<pid>/fd`.
fn proc_usage(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

async fn redis_pid(redis: &RedisServer) -> Option<u32> {
    let client = redis::Client::open(redis.url()).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO").arg("server").query_async(&mut conn).await.ok()?;
    info.lines().find_map(|l| l.strip_prefix("process_id:"))?.trim().parse().ok()
}
