//! Run with `cargo run -p cli-client -- [watch|check] [--url ws://localhost:8080/ws]` (`--help`: all options).

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use cli_client::{
    args::{Cli, Command, exit},
    check,
    clock::UtcOffset,
    view::{Color, Format, Printer},
    watch,
};
use protocol::telemetry::{self, LogFormat};
use tokio_util::sync::CancellationToken;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    // Before parsing: clap reads DATABASE_URL and REDIS_URL, which may come from .env.
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        return ExitCode::from(report(exit::USAGE, anyhow::Error::new(err).context("failed to load .env")));
    }
    let command = Cli::parse().into_command();
    telemetry::init(LogFormat::Text, "warn");
    let no_color_env = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let is_terminal = std::io::stdout().is_terminal();

    let code = match command {
        Command::Watch(args) => {
            let color = Color::resolve(args.no_color, no_color_env, is_terminal);
            let mut printer = Printer::stdio(args.format(color), UtcOffset::local());
            let shutdown = CancellationToken::new();
            let token = shutdown.clone();
            // Detached on purpose: it only cancels the token, and the process exits when watch returns.
            tokio::spawn(async move {
                protocol::shutdown::signal().await;
                token.cancel();
            });
            match watch::run(args.feed_config(), &mut printer, shutdown).await {
                Ok(()) => exit::OK,
                Err(err) => report(err.exit_code(), err),
            }
        }
        Command::Check(args) => {
            let color = Color::resolve(args.no_color, no_color_env, is_terminal);
            let mut printer = Printer::stdio(Format::Human(color), UtcOffset::UTC);
            // A failing stdout has nowhere to be reported; the exit code still tells the result.
            let verdict = check::run(&args.check_config(), |result| drop(printer.check(result))).await;
            verdict.exit_code()
        }
    };
    ExitCode::from(code)
}

/// Prints `err` with its whole chain of causes and returns `code`.
fn report(code: u8, err: impl Into<anyhow::Error>) -> u8 {
    eprintln!("error: {:#}", err.into());
    code
}
