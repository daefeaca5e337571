//! In-process services and the whole pipeline.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use protocol::retry::RetryPolicy;
use testkit::{PgServer, RedisServer, wait_until};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{WAIT, http_get, logs};

/// Fast reconnects, so fault tests finish quickly; still exponential with jitter.
fn test_retry() -> RetryPolicy {
    RetryPolicy { min_delay: Duration::from_millis(100), max_delay: Duration::from_secs(2), ..RetryPolicy::default() }
}

/// A publisher configuration for the given servers.
pub fn publisher_config(database_url: &str, redis_url: &str) -> publisher::Config {
    let mut config = publisher::Config::from_lookup(|k| match k {
        "DATABASE_URL" => Some(database_url.to_owned()),
        "REDIS_URL" => Some(redis_url.to_owned()),
        _ => None,
    })
    .expect("test configuration is valid");
    config.retry = test_retry();
    config.keepalive_interval = Duration::from_secs(1);
    config
}

/// A ws-server configuration for the given Redis.
pub fn ws_config(redis_url: &str) -> ws_server::Config {
    let mut config = ws_server::Config::with_redis(redis_url);
    config.retry = test_retry();
    config.keepalive_interval = Duration::from_secs(1);
    config
}

/// One service running in-process.
#[derive(Debug)]
pub struct Service {
    /// Where its HTTP endpoints (and, for ws-server, WebSocket) listen.
    pub addr: SocketAddr,
    span: String,
    token: CancellationToken,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Service {
    /// `ws://addr/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The HTTP status of `/readyz`.
    pub async fn readyz(&self) -> u16 {
        http_get(self.addr, "/readyz").await.map_or(0, |(status, _)| status)
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        wait_until(WAIT, &format!("{} ready", self.addr), || async { self.readyz().await == 200 }).await;
    }

    /// The value of metric `name` in `/metrics`.
    pub async fn metric(&self, name: &str) -> i64 {
        let (_, body) = http_get(self.addr, "/metrics").await.expect("/metrics answers");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not in {body}"))
    }

    /// This service's log lines (info and above) that contain every one of `needles`.
    pub fn logs(&self, needles: &[&str]) -> Vec<String> {
        let mut all = vec![self.span.as_str()];
        all.extend_from_slice(needles);
        logs::matching(&all)
    }

    /// Cancels the service and waits for it to finish; returns how long that took.
    pub async fn stop(mut self) -> Duration {
        let started = Instant::now();
        self.token.cancel();
        let handle = self.handle.take().expect("not stopped yet");
        let result =
            tokio::time::timeout(WAIT, handle).await.expect("service stops in time").expect("service did not panic");
        result.expect("service stopped cleanly");
        started.elapsed()
    }

    /// Waits (bounded) for the service to end by itself, as after a fatal error; its result.
    pub async fn finished(mut self) -> Result<(), String> {
        let handle = self.handle.take().expect("not stopped yet");
        tokio::time::timeout(WAIT, handle).await.expect("service ends in time").expect("service did not panic")
    }

    /// Aborts the service task at once, as a crash would (no drain, no close frames).
    pub fn abort(mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A listener on a port below the ephemeral range ([`testkit::free_port`]), so a test can stop
/// a service and start another on the same port without another socket taking it meanwhile.
async fn bind_free_port() -> TcpListener {
    for _ in 0..10 {
        if let Ok(listener) = protocol::service::listen(([127, 0, 0, 1], testkit::free_port()).into()) {
            return listener;
        }
    }
    panic!("could not bind a free port on 127.0.0.1")
}

/// Starts a publisher in-process, its health endpoint on a free port.
pub async fn spawn_publisher(config: publisher::Config) -> Service {
    let listener = bind_free_port().await;
    let addr = listener.local_addr().expect("bound");
    let token = CancellationToken::new();
    logs::init();
    let run = publisher::run(config, listener, token.clone())
        .instrument(tracing::info_span!("publisher", port = addr.port()));
    let handle = tokio::spawn(async move { run.await.map_err(|e| protocol::retry::error_chain(&e).to_string()) });
    Service { addr, span: format!("publisher{{port={}}}", addr.port()), token, handle: Some(handle) }
}

/// Starts a ws-server in-process on a free port.
pub async fn spawn_ws(config: ws_server::Config) -> Service {
    spawn_ws_on(config, bind_free_port().await)
}

/// Starts a ws-server in-process on `listener` (e.g. the port of a replica that stopped).
pub fn spawn_ws_on(config: ws_server::Config, listener: TcpListener) -> Service {
    let addr = listener.local_addr().expect("bound");
    let token = CancellationToken::new();
    logs::init();
    let run = ws_server::run(config, listener, token.clone())
        .instrument(tracing::info_span!("ws_server", port = addr.port()));
    let handle = tokio::spawn(async move { run.await.map_err(|e| protocol::retry::error_chain(&e).to_string()) });
    Service { addr, span: format!("ws_server{{port={}}}", addr.port()), token, handle: Some(handle) }
}

/// PostgreSQL, Redis, a publisher and ws-server replicas, all private to one test.
#[derive(Debug)]
pub struct System {
    /// The private PostgreSQL.
    pub pg: PgServer,
    /// The private Redis.
    pub redis: RedisServer,
    /// The publisher.
    pub publisher: Service,
    /// The ws-server replicas.
    pub ws: Vec<Service>,
}

impl System {
    /// Starts everything and waits until every service is ready.
    pub async fn start(replicas: usize) -> System {
        let (pg, redis) = tokio::join!(PgServer::start(), RedisServer::start());
        let publisher = spawn_publisher(publisher_config(&pg.url(), &redis.url())).await;
        let mut ws = Vec::new();
        for _ in 0..replicas {
            ws.push(spawn_ws(ws_config(&redis.url())).await);
        }
        let system = System { pg, redis, publisher, ws };
        system.wait_ready().await;
        system
    }

    /// Waits until the publisher and every replica report ready.
    pub async fn wait_ready(&self) {
        self.publisher.wait_ready().await;
        for ws in &self.ws {
            ws.wait_ready().await;
        }
    }

    /// Runs SQL as psql would, in the `postgres` database; returns psql's unaligned output.
    pub async fn sql(&self, sql: &str) -> String {
        self.pg.psql("postgres", sql).await
    }
}
