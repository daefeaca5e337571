//! The orders HTTP API: create, read, list, update and delete rows of the `orders` table, and
//! add to an order's amount atomically. Every write goes through PostgreSQL, so the trigger
//! puts it in the outbox and the publisher relays it to WebSocket/SSE clients like any other
//! change.
//!
//! - [`config`]: [`Config`] from the environment
//! - `routes`: the `/orders` handlers and their SQL (bound parameters only)
//! - `query`: the read routes' query strings (filters, `select`, `order`, `limit`, `cursor`)
//! - `cursor`: the opaque `cursor` token of keyset pagination
//! - `body`: request bodies, checked member by member
//! - `openapi`: the OpenAPI 3.1 document at `/openapi.json`, generated from the handlers
//! - `problem`: errors as RFC 9457 `application/problem+json`
//! - `stats`: readiness (PostgreSQL, the `orders` table) and metrics behind `/healthz`,
//!   `/readyz`, `/metrics`
//!
//! The API does not migrate: the publisher owns the schema. Without the `orders` table,
//! `/readyz` says so and the routes answer 503.

mod body;
pub mod config;
mod cursor;
mod openapi;
mod problem;
mod query;
mod routes;
mod stats;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use sqlx::postgres::PgPoolOptions;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::Config;
use problem::Problem;
use stats::Stats;

/// Open requests get this long to finish after shutdown is requested; then `run` returns.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A request waits at most this long for a pooled connection before it gets a 503, so an
/// unreachable PostgreSQL answers quickly instead of holding the client.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pooled connections: enough for concurrent writers without crowding PostgreSQL's
/// `max_connections` (100 by default) when several replicas run.
const MAX_CONNECTIONS: u32 = 16;

/// The API as a daemon, for `protocol::service::main`.
#[derive(Debug)]
pub struct Api;

impl protocol::service::Daemon for Api {
    type Config = Config;
    type Error = Error;

    fn load() -> Result<Config, protocol::env::ConfigErrors> {
        Config::from_env()
    }
    fn log_format(config: &Config) -> protocol::telemetry::LogFormat {
        config.log_format
    }
    fn listen_addr(config: &Config) -> (std::net::SocketAddr, &'static str) {
        ((config.bind_addr, config.port).into(), "API_BIND_ADDR, API_PORT")
    }
    fn run(
        config: Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Error>> {
        run(config, listener, shutdown)
    }
}

/// Why the API stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `DATABASE_URL` cannot be used to connect (its options are unusable).
    #[error("cannot use DATABASE_URL")]
    Database(#[source] sqlx::Error),
    /// The HTTP server failed.
    #[error("HTTP server failed")]
    Http(#[source] std::io::Error),
}

/// Serves the API and the ops endpoints on `listener` until `shutdown` is cancelled.
///
/// PostgreSQL need not be up: connections are made on demand, `/readyz` reports 503 and the
/// routes answer 503 until it is.
///
/// # Errors
/// An unusable `DATABASE_URL`, or a failed HTTP server.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), Error> {
    info!(config = ?config, addr = ?listener.local_addr().ok(), "orders-api starting");
    let pool = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy(&config.database_url)
        .map_err(Error::Database)?;
    let stats = Arc::new(Stats::new());
    let token = shutdown.child_token();
    let app = router(&config, pool.clone(), stats.clone());
    let check = stats::check(&pool, &stats, &token);
    let http = async {
        let served = axum::serve(listener, app).with_graceful_shutdown(token.clone().cancelled_owned());
        let grace = async {
            token.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let result = tokio::select! {
            biased;
            result = served => result.map_err(Error::Http),
            () = grace => {
                warn!(grace = ?SHUTDOWN_GRACE, "shutdown grace elapsed with requests open; stopping anyway");
                Ok(())
            }
        };
        // A failed server stops the readiness check too.
        token.cancel();
        result
    };
    let ((), result) = tokio::join!(check, http);
    pool.close().await;
    info!("orders-api stopped");
    result
}

/// The whole service: `/orders` routes, `/openapi.json`, ops endpoints, problem responses for unknown paths
/// and methods, the body limit and the request counter.
fn router(config: &Config, pool: sqlx::PgPool, stats: Arc<Stats>) -> Router {
    let app = Arc::new(routes::App { pool, max_body_bytes: config.max_body_bytes });
    routes::router(app)
        .route("/openapi.json", axum::routing::get(openapi::serve))
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .merge(protocol::ops::router(stats.clone()))
        .fallback(|request: Request| async move { Problem::no_route(request.uri().path()) })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(stats, count))
}

/// Counts each answered request by method, route pattern (never the raw path, which would
/// make a series per order id) and status.
async fn count(State(stats): State<Arc<Stats>>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str).to_owned();
    let response = next.run(request).await.into_response();
    stats.requests.inc(&[&method, &route, response.status().as_str()]);
    response
}

/// Tests spawn `run` on a multi-threaded runtime; keep its future `Send`.
#[cfg(test)]
#[allow(dead_code)]
fn run_is_send(config: Config, listener: TcpListener, shutdown: CancellationToken) {
    fn is_send<T: Send>(_: T) {}
    is_send(run(config, listener, shutdown));
}
