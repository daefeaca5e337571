//! Run with `cargo run -p cli-client -- [watch|table|check] [--url ws://localhost:8080/ws]` (`--help`: all options).

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use cli_client::{
    args::{Cli, Command, ViewArgs, exit},
    check, clock,
    feed::FeedConfig,
    table,
    view::{Color, Printer},
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
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    // Detached on purpose: it only cancels the token, and the process exits when the command returns.
    tokio::spawn(async move {
        protocol::shutdown::signal().await;
        token.cancel();
    });

    let code = match command {
        Command::Watch(args) => match with_tls(args.feed_config(), &args.view) {
            Err(code) => code,
            Ok(config) => {
                let color = Color::resolve(args.no_color, no_color_env, is_terminal);
                let mut printer = Printer::stdio(args.format(color), clock::local_zone());
                watch::run(config, &mut printer, shutdown)
                    .await
                    .map_or_else(|e| report(e.exit_code(), e), |()| exit::OK)
            }
        },
        Command::Table(_) if !is_terminal => report(
            exit::USAGE,
            anyhow::anyhow!("`table` needs a terminal on stdout; for scripts and pipes use `cli-client watch --json`"),
        ),
        Command::Table(args) => match with_tls(args.feed_config(), &args.view) {
            Err(code) => code,
            Ok(config) => table::run(config, shutdown).await.map_or_else(|e| report(e.exit_code(), e), |()| exit::OK),
        },
        Command::Check(args) => {
            let color = Color::resolve(args.no_color, no_color_env, is_terminal);
            match args.check_config() {
                Ok(config) => check::run_and_print(&config, args.json, color).await.exit_code(),
                Err(err) => report(exit::USAGE, err),
            }
        }
    };
    ExitCode::from(code)
}

/// `config` with the TLS settings `view` asks for; the exit code when they cannot be built.
fn with_tls(mut config: FeedConfig, view: &ViewArgs) -> Result<FeedConfig, u8> {
    config.tls = view.tls(&config.urls).map_err(|e| report(exit::USAGE, e))?;
    Ok(config)
}

/// Prints `err` with its whole chain of causes and returns `code`.
fn report(code: u8, err: impl Into<anyhow::Error>) -> u8 {
    eprintln!("error: {:#}", err.into());
    code
}
