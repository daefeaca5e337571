//! The publisher: its `/readyz`, and its outbox backlog from `/metrics`
//! (`publisher_outbox_backlog`, `publisher_outbox_backlog_age_seconds`): committed changes not
//! yet published, and how old the oldest is; and the WAL the logical capture slot keeps.

use protocol::env::redact_url;

use super::{CheckConfig, Outcome, http, one_line};

/// `/readyz`: refused (down) or not ready, each with its fix.
pub(super) async fn check_publisher(config: &CheckConfig) -> Outcome {
    let url = redact_url(&config.publisher_url);
    let base = config.publisher_url.trim_end_matches('/');
    let down_fix = format!(
        "start the publisher, or point --publisher-url at its HTTP address (now {url}; it listens on \
         HEALTH_PORT, 9100 by default)"
    );
    match http::get(&format!("{base}/readyz"), config.tls.as_ref(), config.timeout).await {
        Ok((200, _)) => Outcome::Passed { detail: format!("{url}/readyz is ready") },
        Ok((status, body)) => Outcome::failed(
            format!("publisher not ready: {url}/readyz answered {status}: {}", one_line(&body)),
            "it is running but not connected to PostgreSQL or Redis: see the checks above and its log",
        ),
        Err(err) => Outcome::failed(format!("publisher down: {url}: {err}"), down_fix),
    }
}

/// The backlog: failed ("growing") when the oldest unpublished change is older than
/// `max_backlog_age`; skipped when `/metrics` cannot be reached (the publisher check says why).
pub(super) async fn check_backlog(config: &CheckConfig) -> Outcome {
    let url = redact_url(&config.publisher_url);
    let body = match metrics(config).await {
        Ok(body) => body,
        Err(outcome) => return outcome,
    };
    let (Some(count), Some(age)) =
        (metric(&body, "publisher_outbox_backlog"), metric(&body, "publisher_outbox_backlog_age_seconds"))
    else {
        return Outcome::failed(
            format!("{url}/metrics has no publisher_outbox_backlog gauges"),
            "is --publisher-url the publisher (not a ws-server)? An older publisher does not report its backlog",
        );
    };
    let limit = config.max_backlog_age.as_secs_f64();
    if count > 0.0 && age > limit {
        return Outcome::failed(
            format!(
                "backlog growing: {count} committed {} not yet published, the oldest {age:.0}s old (limit {limit:.0}s)",
                if count == 1.0 { "change" } else { "changes" }
            ),
            "the publisher cannot publish: check Redis (above) and the publisher's log; it catches up by \
             itself once Redis takes writes again",
        );
    }
    Outcome::Passed { detail: format!("{count} unpublished, oldest {age:.1}s old") }
}

/// The logical capture slot (`publisher_slot_retained_wal_bytes`, `publisher_slot_active`):
/// failed when it keeps more WAL than `max_retained_wal`, which a slot nobody streams or
/// acknowledges does, until the server's disk is full (or `max_slot_wal_keep_size` invalidates it).
pub(super) async fn check_slot(config: &CheckConfig) -> Outcome {
    let body = match metrics(config).await {
        Ok(body) => body,
        Err(outcome) => return outcome,
    };
    let (Some(retained), Some(active)) =
        (metric(&body, "publisher_slot_retained_wal_bytes"), metric(&body, "publisher_slot_active"))
    else {
        return Outcome::Passed { detail: "not reported (a publisher without logical capture)".to_owned() };
    };
    let limit = config.max_retained_wal as f64;
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    if retained > limit {
        return Outcome::failed(
            format!(
                "the replication slot keeps {:.0} MiB of WAL (limit {:.0} MiB){}",
                mib(retained),
                mib(limit),
                if active == 1.0 { ", streamed but not acknowledged" } else { ", and no publisher streams it" }
            ),
            "the publisher in logical mode acknowledges only what reached Redis: check Redis and the publisher's \
             log. A slot left behind by PUBLISHER_CAPTURE=logical is dropped by a publisher in notify mode, or \
             by hand: SELECT pg_drop_replication_slot('orders_realtime'). Cap it with max_slot_wal_keep_size",
        );
    }
    if retained == 0.0 && active == 0.0 {
        return Outcome::Passed { detail: "no logical capture slot (PUBLISHER_CAPTURE=notify)".to_owned() };
    }
    Outcome::Passed {
        detail: format!(
            "{} retaining {:.1} MiB of WAL (limit {:.0} MiB)",
            if active == 1.0 { "streamed," } else { "not streamed now," },
            mib(retained),
            mib(limit)
        ),
    }
}

/// The publisher's `/metrics` text; the outcome to report when it cannot be had.
async fn metrics(config: &CheckConfig) -> Result<String, Outcome> {
    let url = redact_url(&config.publisher_url);
    let base = config.publisher_url.trim_end_matches('/');
    match http::get(&format!("{base}/metrics"), config.tls.as_ref(), config.timeout).await {
        Ok((200, body)) => Ok(body),
        Ok((status, _)) => Err(Outcome::failed(format!("{url}/metrics answered {status}"), "see the publisher's log")),
        Err(_) => Err(Outcome::Skipped { reason: "needs the publisher's /metrics".to_owned() }),
    }
}

/// The value of an unlabelled gauge in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_are_read_from_prometheus_text_by_their_exact_name() {
        let text = "# HELP publisher_outbox_backlog x\n# TYPE publisher_outbox_backlog gauge\n\
                    publisher_outbox_backlog 3\npublisher_outbox_backlog_age_seconds 12.5\n";
        assert_eq!(metric(text, "publisher_outbox_backlog"), Some(3.0));
        assert_eq!(metric(text, "publisher_outbox_backlog_age_seconds"), Some(12.5));
        assert_eq!(metric(text, "publisher_outbox"), None);
    }
}
