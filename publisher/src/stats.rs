//! Readiness and metrics of one publisher instance.

use protocol::ops::{Counter, FloatGauge, Gauge, Health, Histogram, Readiness, Registry};

pub(crate) const POSTGRES: &str = "postgres";
pub(crate) const REDIS: &str = "redis";

/// Counters for `/metrics` and dependency state for `/readyz`.
pub(crate) struct Stats {
    pub(crate) readiness: Readiness,
    pub(crate) notifications: Counter,
    pub(crate) skipped: Counter,
    pub(crate) rejected: Counter,
    pub(crate) forged: Counter,
    pub(crate) unread: Counter,
    pub(crate) reoffered: Counter,
    pub(crate) published: Counter,
    pub(crate) batches: Counter,
    pub(crate) mark_commits: Counter,
    pub(crate) claims: Counter,
    pub(crate) seeded_rows: Counter,
    pub(crate) pruned: Counter,
    pub(crate) pg_reconnects: Counter,
    pub(crate) redis_reconnects: Counter,
    pub(crate) leader: Gauge,
    /// Seconds from a change's `ts` to its append to the replay log:
    /// `stats.append_latency.observe_since(committed_at)` once per appended event.
    pub(crate) append_latency: Histogram,
    /// Outbox rows not yet published, as of the last `backlog` refresh.
    pub(crate) backlog: Gauge,
    /// Age of the oldest of them in seconds (0 without any), as of the last refresh.
    pub(crate) backlog_age: FloatGauge,
    /// WAL the server keeps for the logical capture slot (`PUBLISHER_SLOT`), 0 without one.
    pub(crate) slot_retained: Gauge,
    /// 1 while a replication connection streams the slot.
    pub(crate) slot_active: Gauge,
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
            rejected: Counter::default(),
            forged: Counter::default(),
            unread: Counter::default(),
            reoffered: Counter::default(),
            published: Counter::default(),
            batches: Counter::default(),
            mark_commits: Counter::default(),
            claims: Counter::default(),
            seeded_rows: Counter::default(),
            pruned: Counter::default(),
            pg_reconnects: Counter::default(),
            redis_reconnects: Counter::default(),
            leader: Gauge::default(),
            append_latency: Histogram::latency(),
            backlog: Gauge::default(),
            backlog_age: FloatGauge::default(),
            slot_retained: Gauge::default(),
            slot_active: Gauge::default(),
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
        out.counter(
            "publisher_notifications_rejected_total",
            "Notifications without an outbox row (not from the realtime_notify trigger), dropped.",
            &self.rejected,
        );
        out.counter(
            "publisher_signatures_rejected_total",
            "Notifications whose signature is not the trigger's key (forged, or the key was replaced): read from the outbox instead.",
            &self.forged,
        );
        out.counter(
            "publisher_events_unread_total",
            "Events appended straight from their signed notification, without reading the outbox.",
            &self.unread,
        );
        out.counter(
            "publisher_events_reoffered_total",
            "Events of a previous history appended again when Redis lost its data (the bridge).",
            &self.reoffered,
        );
        out.counter("publisher_events_published_total", "Events appended to the log and published.", &self.published);
        out.counter("publisher_batches_total", "Atomic appends to Redis (one per batch).", &self.batches);
        out.counter(
            "publisher_mark_commits_total",
            "Commits of published marks in the outbox (one for the events that arrive within 10 ms).",
            &self.mark_commits,
        );
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
        out.histogram(
            "publisher_append_latency_seconds",
            "Seconds from a change's ts (the trigger's clock, at the write) to its append to the Redis log.",
            &self.append_latency,
        );
        out.gauge(
            "publisher_outbox_backlog",
            "Committed changes not yet published (realtime_events rows without published_at).",
            &self.backlog,
        );
        out.float_gauge(
            "publisher_outbox_backlog_age_seconds",
            "Age of the oldest unpublished change, 0 when there is none.",
            &self.backlog_age,
        );
        out.gauge(
            "publisher_slot_retained_wal_bytes",
            "WAL PostgreSQL keeps for the logical capture slot (PUBLISHER_SLOT): grows while the slot is not \
             streamed or acknowledged; 0 without a slot.",
            &self.slot_retained,
        );
        out.gauge("publisher_slot_active", "1 while a publisher streams the logical capture slot.", &self.slot_active);
        for name in [POSTGRES, REDIS] {
            out.gauge(
                &format!("publisher_{name}_up"),
                &format!("Whether the {name} session is connected."),
                self.readiness.gauge(name),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use protocol::ops::{Format, registry};

    use super::*;

    #[test]
    fn append_latency_renders_as_a_histogram_in_seconds() {
        let stats = Stats::new();
        stats.append_latency.observe(0.004);
        stats.append_latency.observe_since(SystemTime::now() - Duration::from_secs(2));
        let text = registry(&stats).encode(Format::Text);
        for expected in [
            "# TYPE publisher_append_latency_seconds histogram\n",
            "publisher_append_latency_seconds_bucket{le=\"0.005\"} 1\n",
            "publisher_append_latency_seconds_bucket{le=\"2.5\"} 2\n",
            "publisher_append_latency_seconds_count 2\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
    }
}
