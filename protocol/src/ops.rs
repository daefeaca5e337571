//! Operations endpoints shared by the services: `/healthz` (the process is alive), `/readyz`
//! (every dependency is connected; 503 otherwise) and `/metrics` (Prometheus text format).
//!
//! Metrics are plain atomics owned by each service instance rather than a global recorder, so
//! several services can run in one test process and each reports only its own numbers.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};

/// Which dependencies are connected right now.
#[derive(Debug)]
pub struct Readiness {
    checks: Vec<(&'static str, AtomicBool)>,
}

impl Readiness {
    /// All named dependencies start disconnected.
    pub fn new(names: &[&'static str]) -> Self {
        Self { checks: names.iter().map(|n| (*n, AtomicBool::new(false))).collect() }
    }

    /// Marks dependency `name` connected or not.
    ///
    /// # Panics
    /// If `name` was not declared in [`Readiness::new`] (a programming error).
    pub fn set(&self, name: &str, up: bool) {
        let (_, flag) = self.checks.iter().find(|(n, _)| *n == name).expect("readiness check is declared");
        flag.store(up, Ordering::Relaxed);
    }

    /// Marks `name` connected until the returned guard is dropped (the session ended).
    pub fn up_while(&self, name: &'static str) -> UpGuard<'_> {
        self.set(name, true);
        UpGuard { readiness: self, name }
    }

    /// Whether dependency `name` is connected.
    pub fn is_up(&self, name: &str) -> bool {
        self.checks.iter().any(|(n, f)| *n == name && f.load(Ordering::Relaxed))
    }

    /// Whether every dependency is connected.
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|(_, f)| f.load(Ordering::Relaxed))
    }

    fn to_json(&self) -> String {
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checks
            .iter()
            .map(|(n, f)| ((*n).to_owned(), (if f.load(Ordering::Relaxed) { "up" } else { "down" }).into()))
            .collect();
        serde_json::json!({ "ready": self.is_ready(), "checks": checks }).to_string()
    }
}

/// Marks a dependency disconnected when dropped.
#[derive(Debug)]
pub struct UpGuard<'a> {
    readiness: &'a Readiness,
    name: &'static str,
}

impl Drop for UpGuard<'_> {
    fn drop(&mut self) {
        self.readiness.set(self.name, false);
    }
}

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `n` (may be negative).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Builds a Prometheus text exposition.
#[derive(Debug, Default)]
pub struct Exposition(String);

impl Exposition {
    /// Appends a counter.
    pub fn counter(&mut self, name: &str, help: &str, c: &Counter) {
        self.sample(name, help, "counter", c.get() as i64);
    }
    /// Appends a gauge.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) {
        self.sample(name, help, "gauge", value);
    }
    fn sample(&mut self, name: &str, help: &str, kind: &str, value: i64) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
}

/// What a service exposes on its operations endpoints.
pub trait Health: Send + Sync + 'static {
    /// Dependency state for `/readyz`.
    fn readiness(&self) -> &Readiness;
    /// Appends this service's metrics for `/metrics`.
    fn metrics(&self, out: &mut Exposition);
}

/// `/healthz`, `/readyz` and `/metrics` for `health`.
pub fn router<H: Health>(health: Arc<H>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<H>))
        .route("/metrics", get(metrics::<H>))
        .with_state(health)
}

async fn readyz<H: Health>(State(h): State<Arc<H>>) -> impl IntoResponse {
    let r = h.readiness();
    let status = if r.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], r.to_json())
}

async fn metrics<H: Health>(State(h): State<Arc<H>>) -> impl IntoResponse {
    let mut out = Exposition::default();
    h.metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_check() {
        let r = Readiness::new(&["postgres", "redis"]);
        assert!(!r.is_ready());
        r.set("postgres", true);
        assert!(!r.is_ready() && r.is_up("postgres"));
        r.set("redis", true);
        assert!(r.is_ready());
        assert_eq!(r.to_json(), r#"{"checks":{"postgres":"up","redis":"up"},"ready":true}"#);
    }

    #[test]
    fn exposition_is_prometheus_text() {
        let c = Counter::default();
        c.add(3);
        let mut e = Exposition::default();
        e.counter("x_total", "Things.", &c);
        assert_eq!(e.0, "# HELP x_total Things.\n# TYPE x_total counter\nx_total 3\n");
    }
}
