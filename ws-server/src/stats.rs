//! Readiness and metrics of one ws-server replica.

use protocol::ops::{Counter, Gauge, Health, Histogram, LabelledGauges, Readiness, Registry};

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
    pub(crate) express_out: Counter,
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
    pub(crate) subscriptions_made: Counter,
    pub(crate) limit_refusals: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) auth_failures: Counter,
    pub(crate) origins_refused: Counter,
    pub(crate) tokens_expired: Counter,
    pub(crate) acks: Counter,
    pub(crate) sse_streams: Gauge,
    /// Durable consumers and how many events each is behind (refreshed by `consumers::watch`).
    pub(crate) consumer_lag: LabelledGauges,
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
            express_out: Counter::default(),
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
            subscriptions_made: Counter::default(),
            limit_refusals: Counter::default(),
            rate_limited: Counter::default(),
            auth_failures: Counter::default(),
            origins_refused: Counter::default(),
            tokens_expired: Counter::default(),
            acks: Counter::default(),
            sse_streams: Gauge::default(),
            consumer_lag: LabelledGauges::new("consumer"),
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
            "ws_express_deliveries_total",
            "Event frames the hub wrote straight to caught-up connections (WS_EXPRESS); part of ws_messages_out_total.",
            &self.express_out,
        );
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
        out.counter(
            "ws_subscriptions_total",
            "Subscriptions made (URL default ones and subscribe frames).",
            &self.subscriptions_made,
        );
        out.counter(
            "ws_limit_refusals_total",
            "Subscriptions refused at WS_MAX_SUBSCRIPTIONS or WS_MAX_FILTERS.",
            &self.limit_refusals,
        );
        out.counter(
            "ws_client_frames_rate_limited_total",
            "Client frames dropped over WS_MAX_CLIENT_FRAMES_PER_SECOND (each answered with an error frame).",
            &self.rate_limited,
        );
        out.counter(
            "ws_auth_failures_total",
            "Requests and auth frames refused for their token (401, or an unauthorized error frame).",
            &self.auth_failures,
        );
        out.counter(
            "ws_origins_refused_total",
            "Requests refused for an Origin not in WS_ALLOWED_ORIGINS (403).",
            &self.origins_refused,
        );
        out.counter(
            "ws_tokens_expired_total",
            "Connections closed because their token expired unrefreshed (4011).",
            &self.tokens_expired,
        );
        out.counter("ws_consumer_acks_total", "Durable consumer positions stored.", &self.acks);
        out.gauge(
            "ws_open_sse_streams",
            "Server-Sent Events streams open now (also counted in ws_open_connections).",
            &self.sse_streams,
        );
        out.labelled_gauges(
            "ws_consumer_lag_events",
            "Events each durable consumer is behind the newest position (from its last ack).",
            &self.consumer_lag,
        );
        out.gauge("ws_redis_up", "Whether the Redis subscription is live.", self.readiness.gauge(REDIS));
    }
}
