//! The coordinator: starts the worker processes that hold the clients, paces the writes,
//! hands each round's COMMIT instants to the workers, merges what they counted, and reports.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::clock::now_ns;
use crate::procfs::{self, ProcSample};
use crate::report::{self, Report, Round};
use crate::tag::Tag;
use crate::wire::{FromWorker, RoundCounts, ToWorker};
use crate::writer::{Ops, Writers};

/// The scenarios that write and count deliveries (or, `Idle`, only hold connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// 100 clients, 100 ev/s.
    Latency,
    /// 1,000 clients × 100 ev/s (or `--clients 10000 --rate 10`).
    Fanout,
    /// Every client on its own customer (our server's `?filter=`).
    Filtered,
    /// Step the rate up until lag or loss.
    Throughput,
    /// Hold connections; RSS per connection.
    Idle,
}

impl Scenario {
    /// The scenario's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Latency => "latency",
            Scenario::Fanout => "fanout",
            Scenario::Filtered => "filtered",
            Scenario::Throughput => "throughput",
            Scenario::Idle => "idle",
        }
    }

    fn defaults(self) -> (u32, f64) {
        match self {
            Scenario::Latency => (100, 100.0),
            Scenario::Fanout => (1000, 100.0),
            Scenario::Filtered => (10_000, 1000.0),
            Scenario::Throughput => (1000, 250.0),
            Scenario::Idle => (10_000, 0.0),
        }
    }
}

/// Options of every client scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The system's PostgreSQL (its `orders` table); not needed by `idle`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// A URL clients connect to, `ws://…` (WebSocket) or `http://…/events` (SSE); repeat it:
    /// clients go round-robin over them.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
    /// Clients (default: the scenario's).
    #[arg(long)]
    pub clients: Option<u32>,
    /// Write rate, events/s (default: the scenario's; throughput's first step).
    #[arg(long)]
    pub rate: Option<f64>,
    /// How long each round writes (`10s`, `500ms`, `2m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long clients may take, after the last write, to receive everything.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Writer connections.
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Statements written (`filtered` always inserts: an UPDATE would move rows between views).
    #[arg(long, value_enum, default_value_t = Ops::Mixed)]
    pub ops: Ops,
    /// Clients per worker process (each process may hold 20,000 files).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..=15_000))]
    pub clients_per_worker: u32,
    /// A process to measure, `NAME=PID` (repeatable): CPU per 1,000 deliveries, RSS per connection.
    #[arg(long = "watch-pid", value_parser = parse_watch)]
    pub watch: Vec<(String, u32)>,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// A label stored in the report (e.g. `ours`, `node`).
    #[arg(long)]
    pub label: Option<String>,
    /// Throughput: stop stepping at this rate.
    #[arg(long, default_value_t = 64_000.0)]
    pub max_rate: f64,
    /// Throughput: a step is clean only with p99 at or under this, ms.
    #[arg(long, default_value_t = 100.0)]
    pub lag_limit_ms: f64,
    /// Idle: how long connections are held before RSS is read.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub hold: Duration,
}

/// `3s`, `250ms`, `2m`, or bare seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| c.is_ascii_alphabetic()).map_or((s, "s"), |i| s.split_at(i));
    let v: f64 = num.trim().parse().map_err(|_| format!("{s:?}: expected e.g. 10s, 500ms, 2m"))?;
    let secs = match unit {
        "ms" => v / 1e3,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_watch(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or_else(|| format!("{s:?}: expected NAME=PID"))?;
    let pid = pid.parse().map_err(|_| format!("{s:?}: PID must be a number"))?;
    Ok((name.to_string(), pid))
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Worker {
    async fn send(&mut self, msg: &ToWorker) -> Result<()> {
        let mut line = serde_json::to_vec(msg)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await.context("writing to a worker")?;
        Ok(())
    }

    async fn recv(&mut self, within: Duration) -> Result<FromWorker> {
        let line = tokio::time::timeout(within, self.stdout.next_line())
            .await
            .with_context(|| format!("a worker did not answer within {within:?}"))?
            .context("reading a worker's answer")?
            .context("a worker exited early (its error is above)")?;
        serde_json::from_str(&line).with_context(|| format!("a worker's answer is not understood: {line}"))
    }
}

fn samples(watch: &[(String, u32)]) -> Result<Vec<ProcSample>> {
    watch.iter().map(|(name, pid)| procfs::sample(*pid).with_context(|| format!("watching {name}"))).collect()
}

/// Runs one scenario against the system behind `args.urls` and `args.database_url`.
pub async fn run(scenario: Scenario, args: RunArgs) -> Result<Report> {
    let (default_clients, default_rate) = scenario.defaults();
    let clients = args.clients.unwrap_or(default_clients);
    let rate = args.rate.unwrap_or(default_rate);
    let filtered = scenario == Scenario::Filtered;
    let ops = if filtered { Ops::Insert } else { args.ops };
    let machine_before = procfs::machine_load().await?;
    let started_unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Distinct per run (the clock's low bits and the pid), so earlier runs' rows never count.
    let tag = Tag(((now_ns() / 1000) as u32) ^ std::process::id().rotate_left(16));

    let before_clients = samples(&args.watch)?;
    let mut workers = spawn_workers(&args, clients, tag, filtered)?;
    let result =
        drive(scenario, &args, &mut workers, clients, rate, ops, tag, before_clients, machine_before.busy_pct).await;
    stop_workers(workers).await;
    let (rounds, connected, with_clients, highest_clean_rate, saturated) = result?;

    let rss_growth_kib: Vec<(String, i64)> = args
        .watch
        .iter()
        .zip(&with_clients)
        .map(|((name, _), (before, with))| (name.clone(), with.rss_kib as i64 - before.rss_kib as i64))
        .collect();
    let rss_kib_per_connection = (!rss_growth_kib.is_empty() && connected > 0)
        .then(|| rss_growth_kib.iter().map(|(_, k)| *k as f64).sum::<f64>() / f64::from(connected));
    let report = Report {
        scenario: scenario.name().to_string(),
        label: args.label.clone(),
        started_unix_s,
        machine_before,
        urls: args.urls.clone(),
        workers: clients.div_ceil(args.clients_per_worker).max(1) as usize,
        clients_requested: clients,
        clients_connected: connected,
        rss_growth_kib,
        rss_kib_per_connection,
        rounds,
        highest_clean_rate,
        saturated,
    };
    if scenario == Scenario::Idle {
        let per: Vec<String> =
            report.rss_growth_kib.iter().map(|(n, k)| format!(" {n} +{:.1} MiB", *k as f64 / 1024.0)).collect();
        report::print(&format!(
            "idle       {connected:>6} clients held {:?}: RSS per connection {} KiB ({}); machine busy {:.0}% before",
            args.hold,
            report.rss_kib_per_connection.map_or("-".to_string(), |k| format!("{k:.2}")),
            per.concat().trim_start(),
            report.machine_before.busy_pct
        ))?;
    }
    if scenario == Scenario::Throughput {
        report::print(&format!(
            "throughput highest clean rate {}; then {}",
            report.highest_clean_rate.map_or("none (the first step failed)".to_string(), |r| format!("{r:.0} ev/s")),
            report.saturated.as_deref().unwrap_or("-")
        ))?;
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

type Driven = (Vec<Round>, u32, Vec<(ProcSample, ProcSample)>, Option<f64>, Option<String>);

#[allow(clippy::too_many_arguments)] // One call site; a struct would only rename these.
async fn drive(
    scenario: Scenario,
    args: &RunArgs,
    workers: &mut [Worker],
    clients: u32,
    rate: f64,
    ops: Ops,
    tag: Tag,
    before_clients: Vec<ProcSample>,
    busy_pct: f64,
) -> Result<Driven> {
    // Every worker connects its clients, then says how it went.
    let connect_within = Duration::from_secs(30) + Duration::from_millis(u64::from(clients) * 5);
    let mut connected = 0;
    for w in workers.iter_mut() {
        match w.recv(connect_within).await? {
            FromWorker::Ready { connected: c, failed, first_error } => {
                if failed > 0 {
                    bail!("{failed} clients could not connect: {}", first_error.unwrap_or_default());
                }
                connected += c;
            }
            FromWorker::Round(_) => bail!("a worker answered a round before one was sent"),
        }
    }
    // Let the servers finish registering the last subscriptions before anything is written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_clients = samples(&args.watch)?;
    let pairs: Vec<_> = before_clients.iter().copied().zip(with_clients.iter().copied()).collect();

    if scenario == Scenario::Idle {
        tokio::time::sleep(args.hold).await;
        let held = samples(&args.watch)?;
        let pairs = before_clients.into_iter().zip(held).collect();
        return Ok((Vec::new(), connected, pairs, None, None));
    }

    let database_url = args.database_url.as_deref().context("--database-url (or DATABASE_URL) is required")?;
    let mut writers = Writers::connect(database_url, args.writers, tag).await?;
    let customers = if scenario == Scenario::Filtered { clients } else { 0 };
    let mut rounds = Vec::new();
    let mut highest_clean_rate = None;
    let mut saturated = None;
    let mut step_rate = rate;
    // The load generator's own CPU (this process and the workers), to show how much of the
    // machine the measurement itself took.
    let mut own: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    own.push(std::process::id());
    let own_cpu = || own.iter().filter_map(|pid| procfs::sample(*pid).ok()).map(|s| s.cpu_s).sum::<f64>();
    for round in 0.. {
        let start = samples(&args.watch)?;
        let own_start = own_cpu();
        let machine_start = procfs::MachineTimes::now()?;
        let t0 = now_ns();
        let (writes, stats) = writers.round(round, step_rate, args.duration, ops, customers).await?;
        let committed = writes.iter().filter(|w| w.2 != 0).count() as u64;
        let drain_ms = args.drain.as_millis() as u64;
        for w in workers.iter_mut() {
            w.send(&ToWorker::Round { round, drain_ms, writes: writes.clone() }).await?;
        }
        let mut counts: Vec<RoundCounts> = Vec::new();
        for w in workers.iter_mut() {
            match w.recv(args.drain + Duration::from_secs(30)).await? {
                FromWorker::Round(c) if c.round == round => counts.push(c),
                other => bail!("a worker answered {other:?} to round {round}"),
            }
        }
        let end = samples(&args.watch)?;
        let load_generator_cpu_s = own_cpu() - own_start;
        let machine_busy_pct = machine_start.busy_pct_since()?;
        let wall_s = now_ns().saturating_sub(t0) as f64 / 1e9;
        let (hist, sum) = report::merge(&counts)?;
        let window_s = (sum.last_receipt_ns.saturating_sub(t0)) as f64 / 1e9;
        let deliveries_per_s = if window_s > 0.0 { sum.delivered as f64 / window_s } else { 0.0 };
        let fanout = if committed > 0 { sum.expected as f64 / committed as f64 } else { 0.0 };
        let watched = args
            .watch
            .iter()
            .enumerate()
            .map(|(i, (name, pid))| {
                report::watched(name, *pid, before_clients[i], with_clients[i], start[i], end[i], sum.delivered)
            })
            .collect();
        let mut bytes = Vec::new();
        hdrhistogram::serialization::Serializer::serialize(
            &mut hdrhistogram::serialization::V2Serializer::new(),
            &hist,
            &mut bytes,
        )
        .expect("serializing to a Vec cannot fail");
        let r = Round {
            scenario: scenario.name().to_string(),
            clients: connected,
            rate: step_rate,
            duration_s: args.duration.as_secs_f64(),
            latency_ms: report::latency(&hist, sum.lost),
            writes: stats,
            expected: sum.expected,
            deliveries: sum.delivered,
            deliveries_per_s,
            events_per_s_delivered: if fanout > 0.0 { deliveries_per_s / fanout } else { 0.0 },
            lost: sum.lost,
            duplicates: sum.duplicates,
            misdelivered: sum.misdelivered,
            early: sum.early,
            late: sum.late,
            foreign: sum.foreign,
            closed_clients: sum.closed,
            watched,
            load_generator_cpu_s,
            wall_s,
            machine_busy_pct,
            histogram: crate::tag::hex(&bytes),
        };
        report::print(&report::line(&r, busy_pct))?;
        let verdict = step_verdict(&r, args.lag_limit_ms);
        rounds.push(r);
        if scenario != Scenario::Throughput {
            break;
        }
        match verdict {
            None => highest_clean_rate = Some(step_rate),
            Some(why) => {
                saturated = Some(why);
                break;
            }
        }
        step_rate *= 2.0;
        if step_rate > args.max_rate {
            saturated = Some(format!("nothing: stopped at --max-rate {}", args.max_rate));
            break;
        }
    }
    Ok((rounds, connected, pairs, highest_clean_rate, saturated))
}

/// Why a throughput step is not clean, or `None` when it is.
fn step_verdict(r: &Round, lag_limit_ms: f64) -> Option<String> {
    if !r.is_clean() {
        return Some(format!(
            "delivery: lost {}, duplicated {}, misdelivered {}, {} clients closed, {} write errors",
            r.lost, r.duplicates, r.misdelivered, r.closed_clients, r.writes.errors
        ));
    }
    if r.writes.per_s < 0.95 * r.rate || r.writes.max_behind_ms > 250.0 {
        return Some(format!(
            "writes: PostgreSQL committed {:.0}/s of {:.0}/s asked (writers up to {:.0} ms behind schedule); {}",
            r.writes.per_s,
            r.rate,
            r.writes.max_behind_ms,
            busiest(r)
        ));
    }
    match r.latency_ms.p99 {
        Some(p99) if p99 <= lag_limit_ms => None,
        p99 => Some(format!(
            "delivery lag: p99 {} ms over the {lag_limit_ms} ms limit; {}",
            p99.map_or("inf".into(), |v| format!("{v:.1}")),
            busiest(r)
        )),
    }
}

/// Where the CPU went during a step, busiest first, so a step that lagged says whether the
/// servers, the load generator or the machine as a whole ran out: "machine 97% busy; bench 1.31
/// cores, ws-1 0.22 cores".
fn busiest(r: &Round) -> String {
    let wall_s = r.wall_s.max(1e-9);
    let mut cores: Vec<(&str, f64)> = r.watched.iter().map(|w| (w.name.as_str(), w.cpu_s / wall_s)).collect();
    cores.push(("bench", r.load_generator_cpu_s / wall_s));
    cores.sort_by(|a, b| b.1.total_cmp(&a.1));
    let list: Vec<String> = cores.iter().map(|(name, c)| format!("{name} {c:.2} cores")).collect();
    format!("machine {:.0}% busy; {}", r.machine_busy_pct, list.join(", "))
}

fn spawn_workers(args: &RunArgs, clients: u32, tag: Tag, filtered: bool) -> Result<Vec<Worker>> {
    let exe = std::env::current_exe().context("finding this executable to start workers")?;
    let per = args.clients_per_worker;
    let mut workers = Vec::new();
    let mut first = 0;
    while first < clients || workers.is_empty() {
        let count = per.min(clients - first);
        let mut cmd = Command::new(&exe);
        cmd.arg("worker").arg("--first").arg(first.to_string()).arg("--count").arg(count.to_string());
        cmd.arg("--tag").arg(tag.0.to_string());
        for url in &args.urls {
            cmd.arg("--url").arg(url);
        }
        if filtered {
            cmd.arg("--filtered");
        }
        // kill_on_drop: an error on the way never leaves a worker holding sockets.
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        workers.push(Worker { child, stdin, stdout });
        first += count;
        if clients == 0 {
            break;
        }
    }
    Ok(workers)
}

async fn stop_workers(workers: Vec<Worker>) {
    for mut w in workers {
        // A worker that already died cannot be told; it is reaped below all the same.
        let _ = w.send(&ToWorker::Stop).await;
        drop(w.stdin);
        if tokio::time::timeout(Duration::from_secs(10), w.child.wait()).await.is_err() {
            // Stuck: kill it (and reap it) rather than leave it behind.
            let _ = w.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("ten").is_err());
    }

    #[test]
    fn watch_pids_parse() {
        assert_eq!(parse_watch("ws1=42"), Ok(("ws1".to_string(), 42)));
        assert!(parse_watch("ws1").is_err());
        assert!(parse_watch("ws1=x").is_err());
    }
}
