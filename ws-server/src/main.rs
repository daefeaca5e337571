//! Run with `cargo run --release --bin ws-server` (configuration: README.md, `.env.example`).

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
    let config = match ws_server::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(config.log_format, "info,ws_server=info");

    let listener = match TcpListener::bind((config.bind_addr, config.port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{} (WS_BIND_ADDR, PORT): {e}", config.bind_addr, config.port);
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
    match ws_server::run(config, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
