//! The report: one line per scenario round on stdout, and the same figures as JSON. Latency
//! percentiles count lost deliveries as infinitely late, so a percentile that falls among
//! them is `null` in JSON and `inf` on the line, never a flattering number.

use std::io::Write as _;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use serde::Serialize;

use crate::procfs::{MachineLoad, ProcSample};
use crate::wire::RoundCounts;
use crate::writer::WriteStats;

/// Latency percentiles from COMMIT returning to receipt, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// 99.9th percentile.
    pub p99_9: Option<f64>,
    /// Largest (`null` when anything was lost).
    pub max: Option<f64>,
}

/// A watched process over one round.
#[derive(Debug, Clone, Serialize)]
pub struct Watched {
    /// The name given with `--watch-pid NAME=PID`.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// CPU seconds it used during the round (writes and drain).
    pub cpu_s: f64,
    /// `cpu_s` per 1,000 deliveries (all clients').
    pub cpu_s_per_1000_deliveries: Option<f64>,
    /// RSS before any client connected, KiB.
    pub rss_kib_before_clients: u64,
    /// RSS with every client connected, before the first write, KiB.
    pub rss_kib_with_clients: u64,
    /// RSS after the round, KiB.
    pub rss_kib_after: u64,
}

/// One round of a scenario: one write rate for `duration_s`.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// The scenario's name.
    pub scenario: String,
    /// Clients connected.
    pub clients: u32,
    /// Target write rate, events/s.
    pub rate: f64,
    /// Seconds of writing.
    pub duration_s: f64,
    /// How the writes went.
    pub writes: WriteStats,
    /// Latency, ms.
    pub latency_ms: Latency,
    /// Deliveries expected (committed writes × clients whose filter matches).
    pub expected: u64,
    /// Distinct deliveries received.
    pub deliveries: u64,
    /// Deliveries per second, from the first write's schedule to the last receipt.
    pub deliveries_per_s: f64,
    /// Events per second delivered: `deliveries_per_s` over the mean fan-out per event.
    pub events_per_s_delivered: f64,
    /// Must be 0.
    pub lost: u64,
    /// Must be 0.
    pub duplicates: u64,
    /// Receipts outside the client's filter. Must be 0.
    pub misdelivered: u64,
    /// Receipts before the writer's COMMIT returned (latency counted as 0).
    pub early: u64,
    /// Receipts after their round was counted (already counted as lost).
    pub late: u64,
    /// Frames that were none of this run's writes.
    pub foreign: u64,
    /// Clients whose connection ended during the run.
    pub closed_clients: u32,
    /// The watched processes.
    pub watched: Vec<Watched>,
    /// CPU seconds orders-bench itself (coordinator and workers) used during the round.
    pub load_generator_cpu_s: f64,
    /// Seconds from the round's first write to the last worker's count (what `cpu_s` covers).
    pub wall_s: f64,
    /// Share of all the machine's CPUs busy over `wall_s`, percent: near 100, the machine
    /// itself was the limit.
    pub machine_busy_pct: f64,
    /// The merged latency histogram (ns), HdrHistogram V2, hex.
    pub histogram: String,
}

impl Round {
    /// Nothing lost, duplicated or misdelivered, no client dropped, every write committed.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.misdelivered == 0
            && self.closed_clients == 0
            && self.writes.errors == 0
    }
}

/// The whole report of one `orders-bench` run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The scenario.
    pub scenario: String,
    /// Free text from `--label` (e.g. which system was measured).
    pub label: Option<String>,
    /// Seconds since the Unix epoch at start.
    pub started_unix_s: u64,
    /// How busy the machine was during the second before the run.
    pub machine_before: MachineLoad,
    /// URLs the clients were spread over.
    pub urls: Vec<String>,
    /// Worker processes holding the clients.
    pub workers: usize,
    /// Clients asked for, and connected.
    pub clients_requested: u32,
    /// Clients connected.
    pub clients_connected: u32,
    /// Each watched process's RSS growth while the clients connected (before any write), KiB.
    pub rss_growth_kib: Vec<(String, i64)>,
    /// The watched processes' summed RSS growth over the clients connected: memory per held
    /// connection when the watched processes are the replicas (`null` when none is watched).
    pub rss_kib_per_connection: Option<f64>,
    /// The rounds (one, or the throughput steps).
    pub rounds: Vec<Round>,
    /// Throughput: the highest rate whose round was clean and kept up; and what gave out.
    pub highest_clean_rate: Option<f64>,
    /// Throughput: why the step after `highest_clean_rate` failed.
    pub saturated: Option<String>,
}

/// Merges the workers' histograms and counts into a round.
pub fn merge(counts: &[RoundCounts]) -> Result<(Histogram<u64>, RoundCounts)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid bounds");
    let mut sum = RoundCounts::default();
    let mut de = Deserializer::new();
    for c in counts {
        let bytes = crate::tag::unhex(&c.histogram).context("a worker's histogram is not hex")?;
        let h: Histogram<u64> = de.deserialize(&mut bytes.as_slice()).context("reading a worker's histogram")?;
        hist.add(&h).context("merging histograms")?;
        sum.expected += c.expected;
        sum.delivered += c.delivered;
        sum.early += c.early;
        sum.lost += c.lost;
        sum.duplicates += c.duplicates;
        sum.misdelivered += c.misdelivered;
        sum.late += c.late;
        sum.foreign += c.foreign;
        sum.closed += c.closed;
        sum.last_receipt_ns = sum.last_receipt_ns.max(c.last_receipt_ns);
    }
    Ok((hist, sum))
}

/// Percentiles over delivered + lost, the lost ones at infinity.
pub fn latency(hist: &Histogram<u64>, lost: u64) -> Latency {
    let delivered = hist.len();
    let total = delivered + lost;
    let at = |q: f64| -> Option<f64> {
        if total == 0 {
            return None;
        }
        // The rank among all expected deliveries; beyond the delivered ones it is a lost one.
        let rank = ((q * total as f64).ceil() as u64).max(1);
        if rank > delivered {
            return None;
        }
        let q_delivered = rank as f64 / delivered as f64;
        Some(hist.value_at_quantile(q_delivered.min(1.0)) as f64 / 1e6)
    };
    Latency {
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p99_9: at(0.999),
        max: if lost == 0 && delivered > 0 { Some(hist.max() as f64 / 1e6) } else { None },
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "inf".to_string(), |v| format!("{v:.2}"))
}

/// The one-line summary of a round.
pub fn line(r: &Round, busy_pct: f64) -> String {
    let l = &r.latency_ms;
    let cpu: Vec<String> = r
        .watched
        .iter()
        .map(|w| match w.cpu_s_per_1000_deliveries {
            Some(c) => format!(" {}={:.4}s/1k", w.name, c),
            None => format!(" {}={:.2}s", w.name, w.cpu_s),
        })
        .collect();
    format!(
        "{:<10} {:>6} clients {:>7.0} ev/s: written {:.0}/s, {} deliveries ({:.0}/s); ms p50 {} p90 {} p99 {} p99.9 {} max {}; lost {} dup {} misdelivered {} early {} closed {}; cpu{} bench={:.1}s; machine busy {:.0}% before, {:.0}% during",
        r.scenario,
        r.clients,
        r.rate,
        r.writes.per_s,
        r.deliveries,
        r.deliveries_per_s,
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p99_9),
        ms(l.max),
        r.lost,
        r.duplicates,
        r.misdelivered,
        r.early,
        r.closed_clients,
        if cpu.is_empty() { " -".to_string() } else { cpu.concat() },
        r.load_generator_cpu_s,
        busy_pct,
        r.machine_busy_pct
    )
}

/// Writes a line to stdout (the tool's output).
pub fn print(line: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// The watched process's figures over a round.
pub fn watched(
    name: &str,
    pid: u32,
    before_clients: ProcSample,
    with_clients: ProcSample,
    round_start: ProcSample,
    round_end: ProcSample,
    deliveries: u64,
) -> Watched {
    let cpu_s = round_end.cpu_s - round_start.cpu_s;
    Watched {
        name: name.to_string(),
        pid,
        cpu_s,
        cpu_s_per_1000_deliveries: (deliveries > 0).then(|| cpu_s * 1000.0 / deliveries as f64),
        rss_kib_before_clients: before_clients.rss_kib,
        rss_kib_with_clients: with_clients.rss_kib,
        rss_kib_after: round_end.rss_kib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(values: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000_000, 3).unwrap();
        values.iter().for_each(|v| h.record(*v).unwrap());
        h
    }

    #[test]
    fn lost_deliveries_count_as_infinitely_late() {
        let h = hist(&[1_000_000; 98]);
        let l = latency(&h, 2);
        assert!((l.p50.unwrap() - 1.0).abs() < 0.01);
        assert!(l.p90.is_some());
        assert_eq!(l.p99, None, "the 99th of 100 is a lost one");
        assert_eq!(l.max, None);
    }

    #[test]
    fn percentiles_without_loss() {
        let values: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let l = latency(&hist(&values), 0);
        assert!((l.p50.unwrap() - 0.5).abs() < 0.01, "{l:?}");
        assert!((l.p99.unwrap() - 0.99).abs() < 0.01, "{l:?}");
        assert!((l.max.unwrap() - 1.0).abs() < 0.01, "{l:?}");
    }
}
