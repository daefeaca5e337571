//! Run with `orders-bench latency --database-url postgres://… --url ws://127.0.0.1:8080/ws
//! --url ws://127.0.0.1:8081/ws` (`orders-bench --help` for every scenario).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use orders_bench::compare::{self, CompareArgs};
use orders_bench::publisher::{self, PublisherArgs};
use orders_bench::report;
use orders_bench::scenario::{self, RunArgs, Scenario};
use orders_bench::worker::{self, WorkerArgs};

/// Black-box benchmark of a realtime orders pipeline: SQL writes in, WebSocket clients out.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Commit → client latency: 100 clients, 100 ev/s.
    Latency(RunArgs),
    /// Fan-out: 1,000 clients × 100 ev/s (e.g. `--clients 10000 --rate 10` for the other).
    Fanout(RunArgs),
    /// Every client on its own customer (`?filter=customer_name=eq.…`): 10,000 × 1,000 ev/s.
    Filtered(RunArgs),
    /// Doubles the write rate until lag or loss: the highest clean rate, and what gave out.
    Throughput(RunArgs),
    /// Holds connections: RSS per connection of each `--watch-pid`.
    Idle(RunArgs),
    /// Committed rows → the Redis replay log (our system only).
    Publisher(PublisherArgs),
    /// Median ratios of repeated runs' JSON reports, two systems side by side.
    Compare(CompareArgs),
    /// (internal) one process's share of the clients, started by the others.
    #[command(hide = true)]
    Worker(WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let worker_process = matches!(cli.command, Command::Worker(_));
    // Workers are single-threaded (several processes give the parallelism); the coordinator
    // paces writers and must not be starved by them.
    let runtime = if worker_process {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Latency(a) => scenario::run(Scenario::Latency, a).await.map(drop),
            Command::Fanout(a) => scenario::run(Scenario::Fanout, a).await.map(drop),
            Command::Filtered(a) => scenario::run(Scenario::Filtered, a).await.map(drop),
            Command::Throughput(a) => scenario::run(Scenario::Throughput, a).await.map(drop),
            Command::Idle(a) => scenario::run(Scenario::Idle, a).await.map(drop),
            Command::Publisher(a) => publisher::run(a).await.map(drop),
            Command::Compare(a) => compare::run(&a).and_then(|lines| lines.iter().try_for_each(|l| report::print(l))),
            Command::Worker(a) => worker::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
