//! What a feed is asked to do: which URLs it connects to, where its stream starts, what a
//! `reset` leads to, and how long it waits for what. Plain data with defaults; `args` builds it
//! from the command line, and the rest of `feed` only reads it.

use std::{sync::Arc, time::Duration};

use protocol::{env::redact_url, log::Position, retry::RetryPolicy};

/// What the server is asked to send: the default subscription's `filter`, `select`, `table`
/// and durable `consumer`, and the token to open it with. They mean exactly what the server's
/// URL parameters of the same names mean (docs/protocol.md): they go on the upgrade URL, so a
/// bad one is refused before the connection opens, and into every `subscribe` the feed sends,
/// which replaces the default subscription and must keep them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Params {
    /// PostgREST filters (`status=eq.pending`), ANDed.
    pub filter: Vec<String>,
    /// The columns to receive (`id,status`).
    pub select: Option<String>,
    /// Only events of this table.
    pub table: Option<String>,
    /// A durable consumer's name.
    pub consumer: Option<String>,
    /// A JWT, sent as `Authorization: Bearer` (not on the URL, where proxies log it).
    pub token: Option<String>,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never in a debug log.
        f.debug_struct("Params")
            .field("filter", &self.filter)
            .field("select", &self.select)
            .field("table", &self.table)
            .field("consumer", &self.consumer)
            .field("token", &self.token.as_ref().map(|_| "REDACTED"))
            .finish()
    }
}

impl Params {
    /// The query parameters for the upgrade URL, in the server's names.
    pub fn query_pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs: Vec<(&'static str, &str)> = self.filter.iter().map(|f| ("filter", f.as_str())).collect();
        pairs.extend(self.select.as_deref().map(|v| ("select", v)));
        pairs.extend(self.table.as_deref().map(|v| ("table", v)));
        pairs.extend(self.consumer.as_deref().map(|v| ("consumer", v)));
        pairs
    }

    /// `url` with these parameters appended to its query, percent-encoded.
    pub fn apply_to(&self, url: &str) -> String {
        let pairs = self.query_pairs();
        if pairs.is_empty() {
            return url.to_owned();
        }
        let encoded = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        // A fragment never reaches the server; keep it last if someone wrote one.
        let (base, fragment) = url.split_once('#').map_or((url, None), |(b, f)| (b, Some(f)));
        let joiner = if base.contains('?') { if base.ends_with(['?', '&']) { "" } else { "&" } } else { "?" };
        let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
        format!("{base}{joiner}{encoded}{fragment}")
    }
}

/// Where a feed starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Start {
    /// Live events from the moment the first connection opens.
    #[default]
    Live,
    /// Every event after this position, then live ones.
    Since(Position),
    /// A snapshot of the current rows, then every event after it.
    Snapshot,
}

/// What to do when the server cannot serve the position asked for (`reset`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnReset {
    /// Take a fresh snapshot and continue after it.
    #[default]
    Snapshot,
    /// Continue with live events from now; what happened in between is not shown.
    Live,
    /// Stop with [`FeedError::Reset`](super::FeedError::Reset).
    Exit,
}

/// How the feed connects, where it starts, and when it gives up.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// ws-server WebSocket endpoints (`ws://…`), tried in turn: the first, then the next one
    /// after each failure.
    pub urls: Vec<String>,
    /// Reconnect delays.
    pub retry: RetryPolicy,
    /// Give up after this many reconnect attempts in a row fail; `None` retries forever.
    /// `Some(0)` gives up as soon as a connection fails or drops.
    pub max_retries: Option<u32>,
    /// Deadline for TCP connect plus WebSocket handshake.
    pub connect_timeout: Duration,
    /// Reconnect when nothing at all (no frame, no ping, no pong) arrives for this long.
    pub idle_timeout: Duration,
    /// How long to wait for the `hello` frame before reporting the connection without it.
    pub hello_timeout: Duration,
    /// How long a `subscribe` may go without an answer (and without replayed events) before
    /// the feed carries on without it.
    pub answer_timeout: Duration,
    /// Where the first connection starts.
    pub start: Start,
    /// What a `reset` leads to.
    pub on_reset: OnReset,
    /// Filter, select, table, consumer and token.
    pub params: Params,
    /// The TLS settings for `wss://` URLs (built once: loading the system store is slow).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl FeedConfig {
    /// Defaults for `urls`: the shared retry policy, retry forever, 10 s connect timeout, 60 s
    /// idle timeout, 2 s hello timeout, 15 s answer timeout, live start, snapshot on reset.
    pub fn new<S: Into<String>>(urls: impl IntoIterator<Item = S>) -> Self {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            retry: RetryPolicy::default(),
            max_retries: None,
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(2),
            answer_timeout: Duration::from_secs(15),
            start: Start::Live,
            on_reset: OnReset::Snapshot,
            params: Params::default(),
            tls: None,
        }
    }

    /// The URLs, passwords redacted, comma-separated.
    pub fn urls_display(&self) -> String {
        self.urls.iter().map(|url| redact_url(url)).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_go_on_the_url_percent_encoded_in_the_servers_names() {
        let params = Params {
            filter: vec!["status=eq.pending".into(), "customer_name=in.(\"A, B\",C)".into()],
            select: Some("id,status".into()),
            table: Some("orders".into()),
            consumer: Some("ops 1".into()),
            token: Some("secret".into()),
        };
        assert_eq!(
            params.apply_to("ws://h:1/ws"),
            "ws://h:1/ws?filter=status%3Deq.pending&filter=customer_name%3Din.%28%22A%2C+B%22%2CC%29\
             &select=id%2Cstatus&table=orders&consumer=ops+1"
        );
        assert_eq!(params.apply_to("ws://h/ws?x=1#f").split('#').nth(1), Some("f"));
        assert!(params.apply_to("ws://h/ws?x=1").starts_with("ws://h/ws?x=1&filter="));
        assert_eq!(Params::default().apply_to("ws://h/ws"), "ws://h/ws");
        assert!(!format!("{params:?}").contains("secret"));
        let decoded: Vec<(String, String)> =
            serde_urlencoded::from_str(params.apply_to("ws://h/ws").split_once('?').unwrap().1).unwrap();
        assert_eq!(decoded[1].1, "customer_name=in.(\"A, B\",C)");
    }
}
