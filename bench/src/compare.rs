//! `orders-bench compare`: reads the JSON reports of repeated runs of one scenario against two
//! systems (e.g. ours and the Node reference, interleaved) and prints, per figure, each side's
//! median and the median of the per-repetition ratios with their spread: one run's ratio
//! swings on a busy machine, the median of several with its range is what can be quoted.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Options of `compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Reports of the system measured (`a`), in repetition order.
    #[arg(long = "a", required = true, num_args = 1..)]
    pub a: Vec<PathBuf>,
    /// Reports of the system it is compared with (`b`), same order.
    #[arg(long = "b", required = true, num_args = 1..)]
    pub b: Vec<PathBuf>,
    /// Names of the two sides in the output.
    #[arg(long, default_value = "ours")]
    pub a_name: String,
    /// See `a_name`.
    #[arg(long, default_value = "node")]
    pub b_name: String,
}

/// One figure read from a report: its name and how to read it.
const FIGURES: &[(&str, &str)] = &[
    ("p50 ms", "/rounds/0/latency_ms/p50"),
    ("p90 ms", "/rounds/0/latency_ms/p90"),
    ("p99 ms", "/rounds/0/latency_ms/p99"),
    ("p99.9 ms", "/rounds/0/latency_ms/p99_9"),
    ("max ms", "/rounds/0/latency_ms/max"),
    ("written ev/s", "/rounds/0/writes/per_s"),
    ("deliveries/s", "/rounds/0/deliveries_per_s"),
    ("cpu s per 1k deliveries (watched, summed)", "cpu"),
    ("rss KiB per connection (watched, summed)", "rss"),
    ("highest clean rate ev/s", "/highest_clean_rate"),
    ("lost + duplicated (must be 0)", "loss"),
];

fn figure(report: &Value, how: &str) -> Option<f64> {
    let rounds = report["rounds"].as_array();
    match how {
        "cpu" => {
            let watched = report.pointer("/rounds/0/watched")?.as_array()?;
            (!watched.is_empty()).then(|| watched.iter().filter_map(|w| w["cpu_s_per_1000_deliveries"].as_f64()).sum())
        }
        "rss" => report["rss_kib_per_connection"].as_f64(),
        "loss" => rounds.filter(|rs| !rs.is_empty()).map(|rs| {
            rs.iter().map(|r| r["lost"].as_f64().unwrap_or(0.0) + r["duplicates"].as_f64().unwrap_or(0.0)).sum()
        }),
        pointer => report.pointer(pointer)?.as_f64(),
    }
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

fn read(path: &PathBuf) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not a report", path.display()))
}

/// The comparison's lines.
pub fn run(args: &CompareArgs) -> Result<Vec<String>> {
    if args.a.len() != args.b.len() {
        bail!(
            "{} reports of {} but {} of {}: give one of each per repetition",
            args.a.len(),
            args.a_name,
            args.b.len(),
            args.b_name
        );
    }
    let a: Vec<Value> = args.a.iter().map(read).collect::<Result<_>>()?;
    let b: Vec<Value> = args.b.iter().map(read).collect::<Result<_>>()?;
    let scenario = a[0]["scenario"].as_str().unwrap_or("?").to_string();
    let mut lines = vec![format!(
        "{scenario}: {} repetitions; machine busy before each run: {} {:?}, {} {:?} %",
        a.len(),
        args.a_name,
        a.iter().map(|r| r["machine_before"]["busy_pct"].as_f64().unwrap_or(f64::NAN).round()).collect::<Vec<_>>(),
        args.b_name,
        b.iter().map(|r| r["machine_before"]["busy_pct"].as_f64().unwrap_or(f64::NAN).round()).collect::<Vec<_>>(),
    )];
    for (name, how) in FIGURES {
        let fa: Vec<Option<f64>> = a.iter().map(|r| figure(r, how)).collect();
        let fb: Vec<Option<f64>> = b.iter().map(|r| figure(r, how)).collect();
        // RSS growth per connection means something only when connections are all that
        // changed (idle); in a writing run it is the allocator's and the GC's noise.
        if fa.iter().chain(&fb).all(Option::is_none) || (*how == "rss" && scenario != "idle") {
            continue;
        }
        let mut ratios: Vec<f64> =
            fa.iter().zip(&fb).filter_map(|(x, y)| Some((*x)? / (*y)?)).filter(|r| r.is_finite()).collect();
        let show = |v: &[Option<f64>]| -> String {
            let mut known: Vec<f64> = v.iter().flatten().copied().collect();
            let missing = v.len() - known.len();
            let m = median(&mut known).map_or("-".into(), |m| format!("{m:.4}"));
            let range = match (known.first(), known.last()) {
                (Some(lo), Some(hi)) => format!(" [{lo:.4}–{hi:.4}]"),
                _ => String::new(),
            };
            // A latency percentile is null when lost deliveries reach it: say so.
            let inf = if missing > 0 { format!(" ({missing} inf/none)") } else { String::new() };
            format!("{m}{range}{inf}")
        };
        let ratio = match median(&mut ratios) {
            Some(m) => format!(
                "{}/{} {m:.2}× (spread {:.2}–{:.2}×, n={})",
                args.a_name,
                args.b_name,
                ratios[0],
                ratios[ratios.len() - 1],
                ratios.len()
            ),
            None => "no ratio".into(),
        };
        lines.push(format!("  {name:<42} {} {} | {} {} | {ratio}", args.a_name, show(&fa), args.b_name, show(&fb)));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn figures_are_read_from_a_report() {
        let r: Value = serde_json::json!({
            "rounds": [{"latency_ms": {"p99": 2.5}, "lost": 1, "duplicates": 0,
                        "watched": [{"cpu_s_per_1000_deliveries": 0.25}, {"cpu_s_per_1000_deliveries": 0.5}]}],
            "rss_kib_per_connection": 7.0
        });
        assert_eq!(figure(&r, "/rounds/0/latency_ms/p99"), Some(2.5));
        assert_eq!(figure(&r, "cpu"), Some(0.75));
        assert_eq!(figure(&r, "rss"), Some(7.0));
        assert_eq!(figure(&r, "loss"), Some(1.0));
        assert_eq!(figure(&r, "/highest_clean_rate"), None);
    }
}
