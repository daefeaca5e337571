//! Readiness and metrics of one publisher instance.

use std::sync::OnceLock;

use protocol::ops::{Counter, Exposition, Health, Readiness};

pub(crate) const POSTGRES: &str = "postgres";
pub(crate) const REDIS: &str = "redis";

type QueueProbe = Box<dyn Fn() -> usize + Send + Sync>;

/// Counters for `/metrics` and dependency state for `/readyz`.
pub(crate) struct Stats {
    pub(crate) readiness: Readiness,
    pub(crate) notifications: Counter,
    pub(crate) skipped: Counter,
    pub(crate) references: Counter,
    pub(crate) published: Counter,
    pub(crate) batches: Counter,
    pub(crate) pg_reconnects: Counter,
    pub(crate) redis_reconnects: Counter,
    queue_probe: OnceLock<QueueProbe>,
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
            references: Counter::default(),
            published: Counter::default(),
            batches: Counter::default(),
            pg_reconnects: Counter::default(),
            redis_reconnects: Counter::default(),
            queue_probe: OnceLock::new(),
        }
    }

    /// Installs how to read the queue depth (events received, not yet in Redis).
    pub(crate) fn set_queue_probe(&self, probe: impl Fn() -> usize + Send + Sync + 'static) {
        // Set once at start; a second call would be a bug, and keeping the first is harmless.
        let _ = self.queue_probe.set(Box::new(probe));
    }
}

impl Health for Stats {
    fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    fn metrics(&self, out: &mut Exposition) {
        out.counter("publisher_notifications_total", "Notifications received from PostgreSQL.", &self.notifications);
        out.counter("publisher_skipped_total", "Malformed or foreign payloads skipped.", &self.skipped);
        out.counter("publisher_references_total", "Oversized changes read from realtime_events.", &self.references);
        out.counter("publisher_events_published_total", "Events published to Redis.", &self.published);
        out.counter("publisher_batches_total", "Pipelined round trips to Redis.", &self.batches);
        out.counter(
            "publisher_postgres_reconnects_total",
            "PostgreSQL sessions lost and retried.",
            &self.pg_reconnects,
        );
        out.counter("publisher_redis_reconnects_total", "Redis sessions lost and retried.", &self.redis_reconnects);
        let depth = self.queue_probe.get().map_or(0, |p| p());
        out.gauge("publisher_queue_depth", "Events received but not yet published (lag).", depth as i64);
        for (name, up) in [(POSTGRES, self.readiness.is_up(POSTGRES)), (REDIS, self.readiness.is_up(REDIS))] {
            out.gauge(
                &format!("publisher_{name}_up"),
                &format!("Whether the {name} session is connected."),
                i64::from(up),
            );
        }
    }
}
