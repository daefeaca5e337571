//! Run with `cargo run --release --bin publisher` (configuration: README.md, `.env.example`).

use std::process::ExitCode;

use protocol::{retry::error_chain, telemetry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: failed to read .env: {e}");
        return ExitCode::from(2);
    }
    let config = match publisher::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format, "info,publisher=debug,sqlx::postgres::notice=warn");

    let addr = ("0.0.0.0", config.health_port);
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on port {} (HEALTH_PORT): {e}", config.health_port);
            return ExitCode::from(2);
        }
    };
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    // Detached on purpose: it only cancels the token and ends with the process.
    tokio::spawn(async move {
        protocol::shutdown::signal().await;
        signal.cancel();
    });
    match publisher::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
