//! The one `main` of the daemons: load `.env`, read the configuration, set up logging, bind,
//! run until SIGINT/SIGTERM, and turn the outcome into an exit code.

use std::{net::SocketAddr, process::ExitCode};

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use crate::{env::ConfigErrors, retry::error_chain, shutdown, telemetry};

/// What a daemon provides to [`main`].
pub trait Daemon {
    /// Its configuration.
    type Config;
    /// Its fatal error.
    type Error: std::error::Error;
    /// `RUST_LOG` default; every service so far keeps the shared one.
    const DEFAULT_LOG_FILTER: &'static str = telemetry::DEFAULT_FILTER;

    /// Reads the configuration from the process environment.
    fn load() -> Result<Self::Config, ConfigErrors>;
    /// The log format it asks for.
    fn log_format(config: &Self::Config) -> telemetry::LogFormat;
    /// Where to listen, and the variables that set it (for the error message).
    fn listen_addr(config: &Self::Config) -> (SocketAddr, &'static str);
    /// The runtime's threads: [`Threads::Single`] runs every task on the main thread (no
    /// wake-up crosses threads, which is what a pipeline of one task after another wants).
    fn threads(_config: &Self::Config) -> Threads {
        Threads::PerCore
    }
    /// Runs until `shutdown` is cancelled.
    fn run(
        config: Self::Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>>;
}

/// How many threads a daemon's runtime has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One: tokio's current-thread runtime.
    Single,
    /// Tokio's multi-threaded runtime with this many workers.
    Workers(usize),
    /// Tokio's multi-threaded runtime, one worker per core (its default).
    PerCore,
}

impl Threads {
    /// `0`: one per core, `1`: single-threaded, `n`: `n` workers.
    pub fn from_count(n: usize) -> Self {
        match n {
            0 => Self::PerCore,
            1 => Self::Single,
            n => Self::Workers(n),
        }
    }

    fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self {
            Self::Single => tokio::runtime::Builder::new_current_thread(),
            Self::Workers(n) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n);
                b
            }
            Self::PerCore => tokio::runtime::Builder::new_multi_thread(),
        };
        builder.enable_all().build()
    }
}

/// Binds with SO_REUSEADDR, so a restarted server gets its port back at once even while the
/// connections it closed linger in TIME_WAIT.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Runs daemon `D` as a process. Exit codes: 0 after a requested shutdown, 1 after a fatal
/// error, 2 for unusable configuration (the message names each variable).
pub fn main<D: Daemon>() -> ExitCode {
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("error: failed to read .env: {e}");
        return ExitCode::from(2);
    }
    let config = match D::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(D::log_format(&config), D::DEFAULT_LOG_FILTER);
    let runtime = match D::threads(&config).runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (addr, vars) = D::listen_addr(&config);
        let listener = match listen(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {addr} ({vars}): {e}");
                return ExitCode::from(2);
            }
        };
        let token = CancellationToken::new();
        let signal = token.clone();
        // Detached on purpose: it only cancels the token and ends with the process.
        tokio::spawn(async move {
            shutdown::signal().await;
            signal.cancel();
        });
        match D::run(config, listener, token).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {}", error_chain(&e));
                ExitCode::FAILURE
            }
        }
    })
}
