//! Readiness and metrics of one ws-server replica.

use protocol::ops::{Counter, Gauge, Health, Histogram, Readiness, Registry};

pub(crate) const REDIS: &str = "redis";

/// Counters for `/metrics` and dependency state for `/readyz`.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) readiness: Readiness,
    pub(crate) connections: Gauge,
    pub(crate) accepted: Counter,
    pub(crate) rejected_full: Counter,
    pub(crate) messages_in: Counter,
    pub(crate) messages_out: Counter,
    pub(crate) skipped: Counter,
    pub(crate) bad_frames: Counter,
    pub(crate) slow_consumers: Counter,
    pub(crate) heartbeat_timeouts: Counter,
    pub(crate) send_failures: Counter,
    pub(crate) redis_reconnects: Counter,
    pub(crate) gap_filled: Counter,
    pub(crate) history_breaks: Counter,
    pub(crate) rebases: Counter,
    pub(crate) resumes: Counter,
    pub(crate) replayed_out: Counter,
    pub(crate) snapshots: Counter,
    pub(crate) resets: Counter,
    pub(crate) conflations: Counter,
    pub(crate) folded: Counter,
    pub(crate) frames_too_large: Counter,
    pub(crate) invalid_utf8: Counter,
    /// Seconds from an event's `ts` to its live frame sent to a client.
    pub(crate) delivery_latency: Histogram,
}

impl Stats {
    pub(crate) fn new() -> Self {
        Self {
            readiness: Readiness::new(&[REDIS]),
            connections: Gauge::default(),
            accepted: Counter::default(),
            rejected_full: Counter::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            skipped: Counter::default(),
            bad_frames: Counter::default(),
            slow_consumers: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            send_failures: Counter::default(),
            redis_reconnects: Counter::default(),
            gap_filled: Counter::default(),
            history_breaks: Counter::default(),
            rebases: Counter::default(),
            resumes: Counter::default(),
            replayed_out: Counter::default(),
            snapshots: Counter::default(),
            resets: Counter::default(),
            conflations: Counter::default(),
            folded: Counter::default(),
            frames_too_large: Counter::default(),
            invalid_utf8: Counter::default(),
            delivery_latency: Histogram::latency(),
        }
    }
}

impl Health for Stats {
    fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    fn metrics(&self, out: &mut Registry) {
        out.build_info("ws", env!("CARGO_PKG_VERSION"));
        out.gauge("ws_open_connections", "WebSocket connections open now.", &self.connections);
        out.counter("ws_connections_total", "WebSocket connections accepted.", &self.accepted);
        out.counter("ws_connections_rejected_total", "Connections refused at WS_MAX_CONNECTIONS.", &self.rejected_full);
        out.counter("ws_messages_in_total", "Messages received from Redis.", &self.messages_in);
        out.counter("ws_messages_out_total", "Event frames sent to clients.", &self.messages_out);
        out.counter(
            "ws_history_rebases_total",
            "New histories (Redis lost its data) this replica continued through their bridge.",
            &self.rebases,
        );
        out.counter("ws_skipped_total", "Redis messages that were not events, skipped.", &self.skipped);
        out.counter("ws_bad_client_frames_total", "Client frames answered with an error frame.", &self.bad_frames);
        out.counter("ws_dropped_slow_total", "Connections closed as slow consumers (4008).", &self.slow_consumers);
        out.counter(
            "ws_heartbeat_timeouts_total",
            "Connections closed for missing pongs (4009).",
            &self.heartbeat_timeouts,
        );
        out.counter(
            "ws_send_failures_total",
            "Connections dropped on a failed or timed-out send.",
            &self.send_failures,
        );
        out.counter("ws_redis_reconnects_total", "Redis subscriptions lost and retried.", &self.redis_reconnects);
        out.counter(
            "ws_gap_filled_events_total",
            "Events this replica missed on the channel and read from the replay log.",
            &self.gap_filled,
        );
        out.counter(
            "ws_history_breaks_total",
            "Holes the replica could not fill (Redis lost its history, or the log was trimmed).",
            &self.history_breaks,
        );
        out.counter("ws_resumes_total", "Client resumes from a position (subscribe since, ?since=).", &self.resumes);
        out.counter(
            "ws_replayed_events_total",
            "Event frames sent to clients from the replay log (resumes, catch-ups).",
            &self.replayed_out,
        );
        out.counter("ws_snapshots_total", "Snapshots served.", &self.snapshots);
        out.counter("ws_resets_total", "reset frames sent (and plain resumes closed with 4010).", &self.resets);
        out.counter("ws_conflations_total", "Slow conflating clients sent a folded backlog.", &self.conflations);
        out.counter(
            "ws_conflated_events_total",
            "Events left out by conflation (a later one replaced them).",
            &self.folded,
        );
        out.counter(
            "ws_closed_frame_too_large_total",
            "Connections closed with 1009 (a client frame over the hard limit).",
            &self.frames_too_large,
        );
        out.counter(
            "ws_closed_invalid_utf8_total",
            "Connections closed with 1007 (a text frame that is not UTF-8).",
            &self.invalid_utf8,
        );
        out.histogram(
            "ws_delivery_latency_seconds",
            "Seconds from a change's ts (the trigger's clock, at the write) to its live frame sent to a client.",
            &self.delivery_latency,
        );
        out.gauge("ws_redis_up", "Whether the Redis subscription is live.", self.readiness.gauge(REDIS));
    }
}
