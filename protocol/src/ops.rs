//! Operations endpoints shared by the services: `/healthz` (the process is alive), `/readyz`
//! (every dependency is connected; 503 otherwise) and `/metrics` (Prometheus).
//!
//! Metrics are `prometheus-client` metrics, registered in a [`Registry`] that belongs to one
//! service instance rather than in a global recorder, so several services can run in one test
//! process and each reports only its own numbers. The field types here ([`Counter`], [`Gauge`],
//! …) keep the services' call sites short (`stats.published.add(n)`) and hide the crate's
//! generics; the crate does the bookkeeping and the encoding.
//!
//! `/metrics` speaks two formats, chosen by the request's `Accept` header ([`Format`]):
//! OpenMetrics 1.0 for a client that asks for `application/openmetrics-text` (Prometheus does,
//! by default), and the classic text format 0.0.4 for everyone else (`curl`, and `promtool
//! check metrics`, which parses only the classic format: it rejects OpenMetrics' `info` type
//! and lints its counter families, named without `_total`). The numbers are the same in both.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use prometheus_client::{
    encoding::{prometheus_text, text},
    metrics::{counter, gauge, histogram, info::Info},
    registry::{self, Unit},
};

/// Which dependencies are connected right now.
#[derive(Debug)]
pub struct Readiness {
    // A 0/1 gauge per dependency: it is also the `<service>_<name>_up` metric.
    checks: Vec<(&'static str, Gauge)>,
}

impl Readiness {
    /// All named dependencies start disconnected.
    pub fn new(names: &[&'static str]) -> Self {
        Self { checks: names.iter().map(|n| (*n, Gauge::default())).collect() }
    }

    /// Marks dependency `name` connected or not.
    ///
    /// # Panics
    /// If `name` was not declared in [`Readiness::new`] (a programming error).
    pub fn set(&self, name: &str, up: bool) {
        self.gauge(name).set(i64::from(up));
    }

    /// Marks `name` connected until the returned guard is dropped (the session ended).
    pub fn up_while(&self, name: &'static str) -> UpGuard<'_> {
        self.set(name, true);
        UpGuard { readiness: self, name }
    }

    /// Whether dependency `name` is connected.
    pub fn is_up(&self, name: &str) -> bool {
        self.checks.iter().any(|(n, g)| *n == name && g.get() == 1)
    }

    /// Whether every dependency is connected.
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|(_, g)| g.get() == 1)
    }

    /// Dependency `name`'s state as a gauge (1 connected, 0 not), to register as a metric.
    ///
    /// # Panics
    /// If `name` was not declared in [`Readiness::new`] (a programming error).
    pub fn gauge(&self, name: &str) -> &Gauge {
        self.checks.iter().find(|(n, _)| *n == name).map(|(_, g)| g).expect("readiness check is declared")
    }

    fn to_json(&self) -> String {
        let checks: serde_json::Map<String, serde_json::Value> = self
            .checks
            .iter()
            .map(|(n, g)| ((*n).to_owned(), (if g.get() == 1 { "up" } else { "down" }).into()))
            .collect();
        serde_json::json!({ "checks": checks, "ready": self.is_ready() }).to_string()
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

/// A monotonically increasing count. A clone counts into the same metric.
#[derive(Debug, Default, Clone)]
pub struct Counter(counter::Counter);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.inc();
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.inc_by(n);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// An integer that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(gauge::Gauge);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.set(v);
    }
    /// Adds `n` (may be negative).
    pub fn add(&self, n: i64) {
        self.0.inc_by(n);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// A fractional value that goes up and down (an age in seconds, say).
#[derive(Debug, Default)]
pub struct FloatGauge(gauge::Gauge<f64, std::sync::atomic::AtomicU64>);

impl FloatGauge {
    /// Sets the value.
    pub fn set(&self, v: f64) {
        self.0.set(v);
    }
    /// The current value.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

type GaugeFamily = prometheus_client::metrics::family::Family<Vec<(&'static str, String)>, gauge::Gauge>;

/// A gauge per value of one label (`ws_consumer_lag_events{consumer="…"}`), the whole set
/// replaced at once by whoever keeps it current. Registered once, like every metric here: the
/// registry exports the series as they are at each scrape.
#[derive(Debug)]
pub struct LabelledGauges {
    label: &'static str,
    family: GaugeFamily,
    /// The label values set by the last [`Self::replace`].
    values: std::sync::Mutex<Vec<String>>,
}

impl LabelledGauges {
    /// No series yet; `label` names the label (`consumer`).
    pub fn new(label: &'static str) -> Self {
        Self { label, family: GaugeFamily::default(), values: std::sync::Mutex::default() }
    }

    /// Makes `values` the series: each label value with its number, and no other.
    pub fn replace(&self, values: impl IntoIterator<Item = (String, i64)>) {
        let values: Vec<(String, i64)> = values.into_iter().collect();
        let mut previous = self.values.lock().expect("never poisoned");
        for gone in previous.iter().filter(|old| !values.iter().any(|(value, _)| value == *old)) {
            self.family.remove(&vec![(self.label, gone.clone())]);
        }
        for (value, v) in &values {
            self.family.get_or_create(&vec![(self.label, value.clone())]).set(*v);
        }
        *previous = values.into_iter().map(|(value, _)| value).collect();
    }
}

type CounterFamily = prometheus_client::metrics::family::Family<Vec<(&'static str, String)>, counter::Counter>;

/// A counter per combination of label values (`api_requests_total{route="…",status="…"}`),
/// each series created on its first increment. The label names are fixed when it is made, so
/// every series of the family has the same ones.
#[derive(Debug)]
pub struct LabelledCounters {
    labels: &'static [&'static str],
    family: CounterFamily,
}

impl LabelledCounters {
    /// No series yet; `labels` names the labels, in the order [`Self::inc`] takes their values.
    pub fn new(labels: &'static [&'static str]) -> Self {
        Self { labels, family: CounterFamily::default() }
    }

    /// Adds one to the series with these label `values` (one per label, in order).
    ///
    /// # Panics
    /// If the number of values is not the number of labels (a programming error).
    pub fn inc(&self, values: &[&str]) {
        assert_eq!(values.len(), self.labels.len(), "one value per label");
        let key = self.labels.iter().zip(values).map(|(l, v)| (*l, (*v).to_owned())).collect();
        self.family.get_or_create(&key).inc();
    }

    /// The series' current value (0 before its first increment).
    pub fn get(&self, values: &[&str]) -> u64 {
        let key = self.labels.iter().zip(values).map(|(l, v)| (*l, (*v).to_owned())).collect();
        self.family.get(&key).map_or(0, |c| c.get())
    }
}

/// Upper bounds of [`Histogram::latency`], in seconds: a healthy pipeline delivers within
/// milliseconds; the long tail is an outage being caught up on (Redis down, a failover).
const LATENCY_BUCKETS: [f64; 15] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// A distribution of observed values (latencies, in seconds).
///
/// Each observation takes the crate's short mutex (one bucket increment); that is far below
/// the cost of the socket write it usually accompanies.
#[derive(Debug)]
pub struct Histogram(histogram::Histogram);

impl Histogram {
    /// A histogram of latencies in seconds, from 1 ms to a minute.
    pub fn latency() -> Self {
        Self(histogram::Histogram::new(LATENCY_BUCKETS))
    }

    /// Records one value.
    pub fn observe(&self, value: f64) {
        self.0.observe(value);
    }

    /// Records the seconds from `then` to now on the wall clock. `then` usually comes from
    /// another machine's clock (PostgreSQL's): a `then` in the future (clock skew) counts as 0.
    pub fn observe_since(&self, then: SystemTime) {
        let elapsed = SystemTime::now().duration_since(then).unwrap_or(Duration::ZERO);
        self.observe(elapsed.as_secs_f64());
    }
}

/// One service instance's metrics, for `/metrics`.
///
/// Names are given as they are exposed (`x_total` for a counter, `x_seconds` for a value in
/// seconds), so a grep for a metric finds where it is defined; the crate wants them without
/// those suffixes (it adds them, and the OpenMetrics `# UNIT`), so they are taken off here.
#[derive(Debug, Default)]
pub struct Registry(registry::Registry);

impl Registry {
    /// Registers `counter` as `name`, which must end in `_total`.
    ///
    /// # Panics
    /// If `name` does not end in `_total` (a programming error).
    pub fn counter(&mut self, name: &str, help: &str, counter: &Counter) {
        let base = name.strip_suffix("_total").expect("counter names end in _total");
        self.register(base, help, counter.0.clone());
    }

    /// Registers `gauge` as `name`.
    pub fn gauge(&mut self, name: &str, help: &str, gauge: &Gauge) {
        self.register(name, help, gauge.0.clone());
    }

    /// Registers `gauge` as `name`.
    pub fn float_gauge(&mut self, name: &str, help: &str, gauge: &FloatGauge) {
        self.register(name, help, gauge.0.clone());
    }

    /// Registers `histogram` as `name`.
    pub fn histogram(&mut self, name: &str, help: &str, histogram: &Histogram) {
        self.register(name, help, histogram.0.clone());
    }

    /// Registers `gauges` as `name`: one series per value of its label, as they are at each
    /// scrape.
    pub fn labelled_gauges(&mut self, name: &str, help: &str, gauges: &LabelledGauges) {
        self.register(name, help, gauges.family.clone());
    }

    /// Registers `<prefix>_build_info`, constant 1, labelled with what this binary is: its
    /// `version` (pass `env!("CARGO_PKG_VERSION")` from the binary's crate) and its build
    /// `profile` (`debug` or `release`, so a debug build in production shows).
    pub fn build_info(&mut self, prefix: &str, version: &'static str) {
        let profile = if cfg!(debug_assertions) { "debug" } else { "release" };
        let labels = vec![("version", version), ("profile", profile)];
        self.0.register(format!("{prefix}_build"), "Which build this process runs (always 1)", Info::new(labels));
    }

    /// Registers `counters` as `name`, which must end in `_total`: one series per combination
    /// of label values seen so far.
    ///
    /// # Panics
    /// If `name` does not end in `_total` (a programming error).
    pub fn labelled_counters(&mut self, name: &str, help: &str, counters: &LabelledCounters) {
        let base = name.strip_suffix("_total").expect("counter names end in _total");
        self.register(base, help, counters.family.clone());
    }

    fn register(&mut self, name: &str, help: &str, metric: impl registry::Metric) {
        // The crate ends every help text with a period itself.
        let help = help.strip_suffix('.').unwrap_or(help);
        match name.strip_suffix("_seconds") {
            Some(base) => self.0.register_with_unit(base, help, Unit::Seconds, metric),
            None => self.0.register(name, help, metric),
        }
    }

    /// The exposition in `format`.
    pub fn encode(&self, format: Format) -> String {
        let mut out = String::new();
        let written = match format {
            Format::OpenMetrics => text::encode(&mut out, &self.0),
            Format::Text => prometheus_text::encode(&mut out, &self.0),
        };
        // Writing to a String cannot fail, and our metrics encode without errors of their own.
        written.expect("encoding metrics into a String cannot fail");
        out
    }
}

/// A `/metrics` exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 (`application/openmetrics-text`).
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4 (`text/plain`).
    Text,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` with a quality at least as high as any range that
    /// `text/plain` matches; the classic text otherwise, also without a header.
    pub fn negotiate(accept: Option<&str>) -> Self {
        let (mut openmetrics, mut text) = (0.0_f32, 0.0_f32);
        for range in accept.unwrap_or_default().split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let quality = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, v)| v.trim().parse().unwrap_or(0.0));
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(quality),
                "text/plain" | "text/*" | "*/*" => text = text.max(quality),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text { Self::OpenMetrics } else { Self::Text }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => prometheus_text::CONTENT_TYPE,
        }
    }
}

/// What a service exposes on its operations endpoints.
pub trait Health: Send + Sync + 'static {
    /// Dependency state for `/readyz`.
    fn readiness(&self) -> &Readiness;
    /// Registers this service's metrics in `out`; called once, when the router is built.
    fn metrics(&self, out: &mut Registry);
}

/// A service's metrics registry, built from [`Health::metrics`].
pub fn registry<H: Health>(health: &H) -> Registry {
    let mut registry = Registry::default();
    health.metrics(&mut registry);
    registry
}

struct Ops<H> {
    health: Arc<H>,
    registry: Registry,
}

/// `/healthz`, `/readyz` and `/metrics` for `health`.
pub fn router<H: Health>(health: Arc<H>) -> Router {
    let registry = registry(&*health);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<H>))
        .route("/metrics", get(metrics::<H>))
        .with_state(Arc::new(Ops { health, registry }))
}

async fn readyz<H: Health>(State(ops): State<Arc<Ops<H>>>) -> impl IntoResponse {
    let r = ops.health.readiness();
    let status = if r.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], r.to_json())
}

async fn metrics<H: Health>(State(ops): State<Arc<Ops<H>>>, headers: HeaderMap) -> impl IntoResponse {
    // A header that is not visible ASCII cannot name a format: treat it as absent.
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    ([(header::CONTENT_TYPE, format.content_type())], ops.registry.encode(format))
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

    struct Demo {
        readiness: Readiness,
        things: Counter,
        open: Gauge,
        age: FloatGauge,
        latency: Histogram,
    }

    impl Health for Demo {
        fn readiness(&self) -> &Readiness {
            &self.readiness
        }
        fn metrics(&self, out: &mut Registry) {
            out.build_info("demo", "1.2.3");
            out.counter("demo_things_total", "Things.", &self.things);
            out.gauge("demo_open", "Open now.", &self.open);
            out.float_gauge("demo_age_seconds", "Age.", &self.age);
            out.histogram("demo_latency_seconds", "Latency.", &self.latency);
            out.gauge("demo_redis_up", "Redis.", self.readiness.gauge("redis"));
        }
    }

    fn demo() -> Demo {
        let demo = Demo {
            readiness: Readiness::new(&["redis"]),
            things: Counter::default(),
            open: Gauge::default(),
            age: FloatGauge::default(),
            latency: Histogram::latency(),
        };
        demo.things.add(3);
        demo.open.add(2);
        demo.open.add(-1);
        demo.age.set(1.5);
        demo.latency.observe(0.003);
        demo.readiness.set("redis", true);
        demo
    }

    #[test]
    fn labelled_gauges_are_exported_as_they_are_at_each_scrape() {
        let lag = LabelledGauges::new("consumer");
        let mut registry = Registry::default();
        registry.labelled_gauges("demo_lag_events", "Lag.", &lag);
        assert!(!registry.encode(Format::Text).contains("demo_lag_events{"));
        lag.replace([("a".to_owned(), 3), ("b/x".to_owned(), 0)]);
        let text = registry.encode(Format::Text);
        assert!(text.contains("demo_lag_events{consumer=\"a\"} 3\n"), "{text}");
        assert!(text.contains("demo_lag_events{consumer=\"b/x\"} 0\n"), "{text}");
        lag.replace([("b/x".to_owned(), 7)]);
        let text = registry.encode(Format::Text);
        assert!(!text.contains("consumer=\"a\""), "a series no longer given is gone: {text}");
        assert!(text.contains("demo_lag_events{consumer=\"b/x\"} 7\n"), "{text}");
    }

    #[test]
    fn labelled_counters_make_a_series_per_combination() {
        let requests = LabelledCounters::new(&["route", "status"]);
        let mut registry = Registry::default();
        registry.labelled_counters("demo_requests_total", "Requests.", &requests);
        requests.inc(&["/a", "200"]);
        requests.inc(&["/a", "200"]);
        requests.inc(&["/a", "404"]);
        assert_eq!((requests.get(&["/a", "200"]), requests.get(&["/b", "200"])), (2, 0));
        let text = registry.encode(Format::Text);
        assert!(text.contains("# TYPE demo_requests_total counter\n"), "{text}");
        assert!(text.contains("demo_requests_total{route=\"/a\",status=\"200\"} 2\n"), "{text}");
        assert!(text.contains("demo_requests_total{route=\"/a\",status=\"404\"} 1\n"), "{text}");
    }

    #[test]
    fn text_format_names_counters_with_total_and_ends_without_eof() {
        let text = registry(&demo()).encode(Format::Text);
        for expected in [
            "# HELP demo_things_total Things.\n# TYPE demo_things_total counter\ndemo_things_total 3\n",
            "# TYPE demo_open gauge\ndemo_open 1\n",
            "demo_age_seconds 1.5\n",
            "demo_latency_seconds_bucket{le=\"0.0025\"} 0\ndemo_latency_seconds_bucket{le=\"0.005\"} 1\n",
            "demo_latency_seconds_bucket{le=\"+Inf\"} 1\n",
            "demo_latency_seconds_count 1\n",
            "# TYPE demo_build_info gauge\ndemo_build_info{version=\"1.2.3\",profile=",
            "demo_redis_up 1\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
        assert!(!text.contains("# EOF") && !text.contains("# UNIT") && !text.contains(".."), "{text}");
    }

    #[test]
    fn openmetrics_format_has_units_info_and_eof() {
        let text = registry(&demo()).encode(Format::OpenMetrics);
        for expected in [
            "# TYPE demo_things counter\ndemo_things_total 3\n",
            "# UNIT demo_latency_seconds seconds\n",
            "# TYPE demo_build info\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn each_registry_reports_only_its_own_instance() {
        let (one, two) = (demo(), demo());
        two.things.add(10);
        assert!(registry(&one).encode(Format::Text).contains("demo_things_total 3\n"));
        assert!(registry(&two).encode(Format::Text).contains("demo_things_total 13\n"));
    }

    #[test]
    fn observations_before_now_count_their_age_and_future_ones_zero() {
        let h = Histogram::latency();
        h.observe_since(SystemTime::now() - Duration::from_secs(20));
        h.observe_since(SystemTime::now() + Duration::from_secs(5));
        let mut out = Registry::default();
        out.histogram("h_seconds", "H.", &h);
        let text = out.encode(Format::Text);
        assert!(text.contains("h_seconds_bucket{le=\"0.001\"} 1\n"), "{text}");
        assert!(text.contains("h_seconds_bucket{le=\"10\"} 1\nh_seconds_bucket{le=\"30\"} 2\n"), "{text}");
    }

    #[test]
    fn accept_header_picks_the_format() {
        use Format::{OpenMetrics, Text};
        // What Prometheus 2.x sends by default, and a scraper that prefers the classic format.
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let classic_first = "text/plain;version=0.0.4;q=1,application/openmetrics-text;version=1.0.0;q=0.9";
        for (accept, expected) in [
            (None, Text),
            (Some("*/*"), Text),
            (Some("text/plain"), Text),
            (Some(prometheus), OpenMetrics),
            (Some(classic_first), Text),
            (Some("Application/OpenMetrics-Text; version=1.0.0"), OpenMetrics),
            (Some("application/openmetrics-text;q=0, */*"), Text),
            (Some("application/openmetrics-text;q=bogus"), Text),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "{accept:?}");
        }
    }
}
