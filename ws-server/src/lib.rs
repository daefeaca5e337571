//! The ws-server: one Redis subscription per replica, fanned out to WebSocket clients.
//!
//! - [`config`]: [`Config`] from the environment
//! - `auth`: optional JWT auth (`WS_JWT_SECRET`, `WS_JWT_PUBLIC_KEY`) and `Origin` checks
//! - `subscriber`: the Redis pub/sub session, with reconnect and resubscribe
//! - `sequencer`: the replica's position in the history: gap filling from the replay log,
//!   dedupe of the overlap, announcing holes it cannot fill
//! - `history`: the replay log as the replica reads it (shared connection, paged reads)
//! - `hub`: the ring every connection reads from (shared bytes and positions) and each
//!   connection's queue bound, in events and bytes
//! - `socket`: one connection's lifecycle: events out, client frames in, heartbeat, close codes;
//!   resume, snapshot, dedupe and conflation per connection
//! - `view`: subscription views (filter, columns, table within the token's scope) and what an
//!   event becomes for one
//! - `auth`: JWT verification and Origin checks
//! - `consumers`: durable consumers' acknowledged positions in Redis
//! - `sse`: Server-Sent Events as a connection's transport
//! - `dashboard`: the browser dashboard's page and modules, embedded
//! - `http`: routes (`/ws`, `/`, `/events`, `/healthz`, `/readyz`, `/metrics`)
//! - `stats`: readiness and metrics
//!
//! Replicas share nothing but Redis: run as many as you like behind any load balancer.

mod auth;
pub mod config;
mod consumers;
mod dashboard;
mod history;
mod http;
mod hub;
mod net;
mod sequencer;
mod socket;
mod sse;
mod stats;
mod subscriber;
mod upgrade;
mod view;

use std::sync::{Arc, atomic::AtomicU64};

use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

pub use config::Config;
use history::History;
use hub::Hub;
use protocol::log::Log;
use stats::Stats;

/// Why the server stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused us in a way retrying cannot fix.
    #[error("redis subscription failed")]
    Redis(#[source] subscriber::SessionError),
    /// The HTTP server failed.
    #[error("http server failed")]
    Http(#[source] std::io::Error),
}

/// The ws-server as a daemon, for `protocol::service::main`.
#[derive(Debug)]
pub struct WsServer;

impl protocol::service::Daemon for WsServer {
    type Config = Config;
    type Error = Error;

    fn load() -> Result<Config, protocol::env::ConfigErrors> {
        Config::from_env()
    }
    fn log_format(config: &Config) -> protocol::telemetry::LogFormat {
        config.log_format
    }
    fn threads(config: &Config) -> protocol::service::Threads {
        config.threads
    }
    fn listen_addr(config: &Config) -> (std::net::SocketAddr, &'static str) {
        ((config.bind_addr, config.port).into(), "WS_BIND_ADDR, PORT")
    }
    fn run(
        config: Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Error>> {
        run(config, listener, shutdown)
    }
}

/// State shared by the subscriber, the routes and every connection.
#[derive(Debug)]
struct AppState {
    config: Config,
    server_id: String,
    hub: Hub,
    history: History,
    consumers: consumers::Consumers,
    auth: auth::Auth,
    stats: Arc<Stats>,
    connection_slots: Arc<Semaphore>,
    next_conn_id: AtomicU64,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

/// Serves WebSocket clients on `listener` until `shutdown` is cancelled or a fatal error.
///
/// At shutdown every client gets close code 1001 (reconnect elsewhere); connections get
/// `shutdown_grace` to finish.
///
/// # Errors
/// A fatal Redis error (bad credentials) or a failed HTTP server.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
    let token = shutdown.child_token();
    let addr = listener.local_addr().map_err(Error::Http)?;
    let server_id = config.server_id.clone().unwrap_or_else(|| match &config.hostname {
        Some(host) => format!("{host}:{}", addr.port()),
        None => format!("ws-{}", addr.port()),
    });
    let state = Arc::new(AppState {
        server_id,
        hub: Hub::new(hub::Bound { events: config.queue_capacity as u64, bytes: config.queue_bytes as u64 }),
        history: History::new(Log::new(&config.redis_channel)),
        consumers: consumers::Consumers::new(&config.redis_channel),
        auth: auth::Auth::new(&config),
        stats: Arc::new(Stats::new()),
        connection_slots: Arc::new(Semaphore::new(config.max_connections)),
        next_conn_id: AtomicU64::new(1),
        tracker: TaskTracker::new(),
        shutdown: token.clone(),
        config,
    });
    info!(config = ?state.config, %addr, server_id = %state.server_id, "ws-server listening");

    let server = async {
        let app = http::router(state.clone()).into_make_service_with_connect_info::<net::Peer>();
        let result =
            axum::serve(net::Listener(listener), app).with_graceful_shutdown(token.clone().cancelled_owned()).await;
        token.cancel();
        result.map_err(Error::Http)
    };
    let subscriber = async {
        let result = subscriber::run(&state, &token).await;
        token.cancel();
        result.map_err(Error::Redis)
    };
    let (served, subscribed, (), ()) = tokio::join!(
        server,
        subscriber,
        consumers::watch(&state, &token),
        hub::express::run(&state.hub, &state.stats, &token)
    );

    state.tracker.close();
    if tokio::time::timeout(state.config.shutdown_grace, state.tracker.wait()).await.is_err() {
        warn!(open = state.tracker.len(), "shutdown grace elapsed with connections still open");
    }
    info!("ws-server stopped");
    served.and(subscribed)
}
