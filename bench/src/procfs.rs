//! What `/proc` says about the watched processes (CPU time, resident memory) and about the
//! machine (load average, how busy the CPUs were over one second before the run).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// One reading of a process: CPU seconds used so far (user + system) and resident memory.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// User + system CPU seconds since the process started.
    pub cpu_s: f64,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime) are the 12th and 13th after the name.
    let ticks = |i: usize| -> Result<u64> { fields.get(i).context("short /proc stat")?.parse().context("utime/stime") };
    let cpu_ticks = ticks(11)? + ticks(12)?;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let Some(rss_kib) = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    else {
        bail!("no VmRSS in /proc/{pid}/status (a zombie?)");
    };
    Ok(ProcSample { cpu_s: cpu_ticks as f64 / hz, rss_kib })
}

/// How busy the machine was just before a run.
#[derive(Debug, Clone, Serialize)]
pub struct MachineLoad {
    /// `/proc/loadavg`'s first three fields.
    pub loadavg: String,
    /// Share of all CPUs' time not idle over one second, in percent.
    pub busy_pct: f64,
    /// Online CPUs.
    pub cpus: usize,
}

/// The machine's CPU time so far (`/proc/stat`), to tell how busy it was over an interval.
#[derive(Debug, Clone, Copy)]
pub struct MachineTimes {
    idle: u64,
    total: u64,
}

impl MachineTimes {
    pub fn now() -> Result<Self> {
        let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
        let line = stat.lines().next().context("empty /proc/stat")?;
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
        // idle + iowait count as idle.
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Ok(Self { idle, total: v.iter().sum() })
    }

    /// Share of all CPUs' time not idle since `self`, in percent.
    pub fn busy_pct_since(self) -> Result<f64> {
        let now = Self::now()?;
        let total = now.total.saturating_sub(self.total).max(1) as f64;
        Ok(100.0 * (1.0 - now.idle.saturating_sub(self.idle) as f64 / total))
    }
}

/// Samples `/proc/stat` one second apart, and reads `/proc/loadavg`.
pub async fn machine_load() -> Result<MachineLoad> {
    let start = MachineTimes::now()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy_pct = start.busy_pct_since()?;
    let loadavg = std::fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    let loadavg = loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(MachineLoad { loadavg, busy_pct, cpus })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_and_memory() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 100, "{s:?}");
        assert!(s.cpu_s >= 0.0);
    }
}
