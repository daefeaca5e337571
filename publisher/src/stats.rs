//! Readiness and metrics of one publisher instance.

use protocol::ops::{Counter, Gauge, Health, Readiness, Registry};

pub(crate) const POSTGRES: &str = "postgres";
pub(crate) const REDIS: &str = "redis";

/// Counters for `/metrics` and dependency state for `/readyz`.
pub(crate) struct Stats {
    pub(crate) readiness: Readiness,
    pub(crate) notifications: Counter,
    pub(crate) skipped: Counter,
    pub(crate) published: Counter,
    pub(crate) batches: Counter,
    pub(crate) claims: Counter,
    pub(crate) seeded_rows: Counter,
    pub(crate) pruned: Counter,
    pub(crate) pg_reconnects: Counter,
    pub(crate) redis_reconnects: Counter,
    pub(crate) leader: Gauge,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").field("readiness", &self.readiness).finish_non_exhaustive()
    }
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            readiness: Readiness::new(&[POSTGRES, REDIS]),
            notifications: Counter::default(),
            skipped: Counter::default(),
            published: Counter::default(),
            batches: Counter::default(),
            claims: Counter::default(),
            seeded_rows: Counter::default(),
            pruned: Counter::default(),
            pg_reconnects: Counter::default(),
            redis_reconnects: Counter::default(),
            leader: Gauge::default(),
        }
    }
}

impl Health for Stats {
    fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    fn metrics(&self, out: &mut Registry) {
        out.build_info("publisher", env!("CARGO_PKG_VERSION"));
        out.counter("publisher_notifications_total", "Notifications received from PostgreSQL.", &self.notifications);
        out.counter("publisher_skipped_total", "Malformed or foreign payloads skipped.", &self.skipped);
        out.counter("publisher_events_published_total", "Events appended to the log and published.", &self.published);
        out.counter("publisher_batches_total", "Atomic appends to Redis (one per batch).", &self.batches);
        out.counter("publisher_claims_total", "Claims of the replay log (takeovers, reconnects).", &self.claims);
        out.counter("publisher_seeded_rows_total", "Rows loaded into the snapshot state.", &self.seeded_rows);
        out.counter("publisher_pruned_total", "Published outbox rows deleted by retention.", &self.pruned);
        out.counter(
            "publisher_postgres_reconnects_total",
            "PostgreSQL sessions lost and retried.",
            &self.pg_reconnects,
        );
        out.counter("publisher_redis_reconnects_total", "Redis sessions lost and retried.", &self.redis_reconnects);
        out.gauge("publisher_active", "1 on the active publisher, 0 on a standby.", &self.leader);
        for name in [POSTGRES, REDIS] {
            out.gauge(
                &format!("publisher_{name}_up"),
                &format!("Whether the {name} session is connected."),
                self.readiness.gauge(name),
            );
        }
    }
}
