//! Readiness and metrics behind `/healthz`, `/readyz`, `/metrics`, and the periodic check that
//! keeps readiness current.

use std::time::Duration;

use protocol::ops::{Counter, Health, LabelledCounters, Readiness, Registry};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How often PostgreSQL and the `orders` table are checked. Short, so `/readyz` follows an
/// outage within seconds; the check is one trivial query on a pooled connection.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A check that takes longer counts as PostgreSQL down (a frozen server never answers).
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Readiness names: PostgreSQL answers, and the publisher's migrations created `orders`.
pub(crate) const POSTGRES: &str = "postgres";
pub(crate) const ORDERS_TABLE: &str = "orders_table";

/// The API's readiness and counters.
#[derive(Debug)]
pub(crate) struct Stats {
    readiness: Readiness,
    /// Requests answered, by matched route and status code.
    pub(crate) requests: LabelledCounters,
    /// Readiness checks that failed (PostgreSQL unreachable or too slow).
    pub(crate) check_failures: Counter,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            readiness: Readiness::new(&[POSTGRES, ORDERS_TABLE]),
            requests: LabelledCounters::new(&["method", "route", "status"]),
            check_failures: Counter::default(),
        }
    }
}

impl Health for Stats {
    fn readiness(&self) -> &Readiness {
        &self.readiness
    }
    fn metrics(&self, out: &mut Registry) {
        out.build_info("api", env!("CARGO_PKG_VERSION"));
        out.labelled_counters(
            "api_requests_total",
            "HTTP requests answered, by method, route and status",
            &self.requests,
        );
        out.counter(
            "api_readiness_check_failures_total",
            "Readiness checks PostgreSQL did not answer",
            &self.check_failures,
        );
        out.gauge("api_postgres_up", "Whether PostgreSQL answered the last check", self.readiness.gauge(POSTGRES));
        out.gauge("api_orders_table_up", "Whether the orders table exists", self.readiness.gauge(ORDERS_TABLE));
    }
}

/// Checks PostgreSQL and the `orders` table every [`CHECK_INTERVAL`] until `shutdown`,
/// logging each change of state once.
pub(crate) async fn check(pool: &PgPool, stats: &Stats, shutdown: &CancellationToken) {
    loop {
        let query = sqlx::query_scalar::<_, bool>("SELECT to_regclass('orders') IS NOT NULL").fetch_one(pool);
        let (postgres, table) = match tokio::time::timeout(CHECK_TIMEOUT, query).await {
            Ok(Ok(exists)) => (true, exists),
            Ok(Err(e)) => {
                if stats.readiness.is_up(POSTGRES) {
                    warn!(error = %e, "PostgreSQL check failed");
                }
                stats.check_failures.inc();
                (false, false)
            }
            Err(_) => {
                if stats.readiness.is_up(POSTGRES) {
                    warn!(timeout = ?CHECK_TIMEOUT, "PostgreSQL check timed out");
                }
                stats.check_failures.inc();
                (false, false)
            }
        };
        if postgres && !table && (stats.readiness.is_up(ORDERS_TABLE) || !stats.readiness.is_up(POSTGRES)) {
            warn!("the orders table is missing: the publisher's migrations create it");
        }
        if postgres && table && !stats.readiness.is_ready() {
            info!("PostgreSQL and the orders table are available");
        }
        stats.readiness.set(POSTGRES, postgres);
        stats.readiness.set(ORDERS_TABLE, table);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
        }
    }
}
