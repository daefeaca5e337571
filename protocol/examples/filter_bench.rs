//! What matching one event against N subscriptions costs, with [`Index`] and by testing every
//! filter: `cargo run --release -p protocol --example filter_bench`.
//!
//! Subscription i is `customer_name=eq.customer-<i>` (one matches the event); in the second
//! variant every tenth is `amount=gte.<x>` instead, which no index can serve. Each figure is the
//! median of several runs. Also times [`Filter::parse`], [`Index::insert`] and
//! [`Select::project`]. Prints a markdown table (the one in `docs/filters-bench.md`).

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use protocol::filter::{Filter, Index, Select};
use serde_json::{Map, Value};

const EVENT_ROW: &str = r#"{"id":48213,"customer_name":"customer-0","product_name":"Espresso machine, stainless",
"status":"pending","amount":249.90,"currency":"EUR","region":"eu-west","priority":2,"paid":false,
"created_at":"2026-12-01T10:15:30.123456+00:00","updated_at":"2026-12-01T10:15:31.5+00:00"}"#;

const SIZES: [usize; 5] = [1, 100, 1_000, 10_000, 100_000];
const RUNS: usize = 7;
/// Roughly how long one run takes; the number of events per run follows from it.
const RUN_TARGET: Duration = Duration::from_millis(30);

/// The median over [`RUNS`] runs of the time per call of `f`, in nanoseconds.
fn per_call_ns(mut f: impl FnMut()) -> f64 {
    // Calibrate: how many calls fill a run.
    let mut calls = 1u32;
    loop {
        let started = Instant::now();
        for _ in 0..calls {
            f();
        }
        if started.elapsed() >= RUN_TARGET / 4 || calls >= 1 << 24 {
            break;
        }
        calls *= 2;
    }
    let calls = calls * 4;
    let mut runs: Vec<f64> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..calls {
                f();
            }
            started.elapsed().as_secs_f64() * 1e9 / f64::from(calls)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[RUNS / 2]
}

fn filters(n: usize, unindexed_every: Option<usize>) -> Vec<Filter> {
    (0..n)
        .map(|i| {
            let text = match unindexed_every {
                // Spread over the amounts, so some match and some do not.
                Some(every) if i % every == every - 1 => format!("amount=gte.{}", (i * 37) % 500),
                _ => format!("customer_name=eq.customer-{i}"),
            };
            Filter::parse([text.as_str()]).expect("valid filter")
        })
        .collect()
}

fn human(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

#[allow(clippy::print_stdout)] // The table is this tool's output.
fn main() {
    let row: Map<String, Value> = serde_json::from_str(EVENT_ROW).expect("the event row is a JSON object");
    println!("| subscriptions | unindexed | matches | `Index::matching` per event | testing every filter | ratio |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for unindexed_every in [None, Some(10)] {
        for n in SIZES {
            let filters = filters(n, unindexed_every);
            let mut index = Index::new();
            for (k, f) in filters.iter().enumerate() {
                index.insert(k, f);
            }
            let mut out = Vec::new();
            index.matching(&row, &mut out);
            let matches = out.len();
            let brute: Vec<usize> = (0..n).filter(|k| filters[*k].matches(&row)).collect();
            out.sort_unstable();
            assert_eq!(out, brute, "the index and the scan disagree");

            let indexed = per_call_ns(|| {
                out.clear();
                index.matching(black_box(&row), &mut out);
                black_box(&out);
            });
            let scan = per_call_ns(|| {
                out.clear();
                for (k, f) in filters.iter().enumerate() {
                    if f.matches(black_box(&row)) {
                        out.push(k);
                    }
                }
                black_box(&out);
            });
            let ratio = scan / indexed;
            let ratio = if ratio < 10.0 { format!("{ratio:.1}×") } else { format!("{ratio:.0}×") };
            println!(
                "| {n} | {} | {matches} | {} | {} | {ratio} |",
                index.unindexed_len(),
                human(indexed),
                human(scan)
            );
        }
    }

    let texts: Vec<String> = (0..10_000).map(|i| format!("customer_name=eq.customer-{i}")).collect();
    let mut i = 0;
    let parse_eq = per_call_ns(|| {
        i = (i + 1) % texts.len();
        black_box(Filter::parse([black_box(texts[i].as_str())]).expect("valid"));
    });
    let complex = ["status=in.(pending,\"on hold\",shipped)", "amount=gte.100", "customer_name=ilike.*smith*"];
    let parse_complex = per_call_ns(|| {
        black_box(Filter::parse(black_box(complex)).expect("valid"));
    });
    let filters = filters(100_000, None);
    let mut index = Index::new();
    let started = Instant::now();
    for (k, f) in filters.iter().enumerate() {
        index.insert(k, f);
    }
    let insert = started.elapsed().as_secs_f64() * 1e9 / 100_000.0;
    let select = Select::parse("id,status,amount").expect("valid");
    let project = per_call_ns(|| {
        black_box(select.project(black_box(&row)));
    });
    let parse_row = per_call_ns(|| {
        black_box(serde_json::from_str::<Map<String, Value>>(black_box(EVENT_ROW)).expect("valid"));
    });
    println!();
    println!("| operation | time |");
    println!("|---|---:|");
    println!("| `Filter::parse` of `customer_name=eq.customer-<i>` | {} |", human(parse_eq));
    println!("| `Filter::parse` of `{}` | {} |", complex.join("&"), human(parse_complex));
    println!("| `Index::insert`, per filter, filling 100 000 | {} |", human(insert));
    println!("| `Select::project` of `id,status,amount` from the 11-column row | {} |", human(project));
    println!("| for scale: `serde_json` parse of that row into a `Map` | {} |", human(parse_row));
}
