//! One connection attempt: the handshake to the URL the rotation points at, raced against
//! shutdown, ending in an open session or in a failure handed to the reconnect policy.
//!
//! A URL that can never work (not a `ws://` URL, none at all) stops the feed here instead:
//! retrying it would only repeat the same error forever.

use protocol::env::redact_url;
use tokio::time::Instant;

use super::{
    DisconnectReason, Feed, FeedError, Protocol, State,
    connect::{Dial, handshake},
    resume,
    session::Session,
};

impl Feed {
    /// Attempts a connection: on success the state becomes `Open`, on a retryable failure the
    /// reconnect policy takes over, and on shutdown the state becomes `Done`.
    ///
    /// # Errors
    /// [`FeedError::InvalidUrl`] when there is no URL, or when the URL can never work.
    ///
    /// # Cancel safety
    /// Cancel-safe: nothing changes until the handshake (or shutdown) completes, and a handshake
    /// dropped half-way shares nothing.
    pub(super) async fn attempt(&mut self) -> Result<(), FeedError> {
        let Some(url) = self.config.urls.get(self.url_index % self.config.urls.len().max(1)).cloned() else {
            self.state = State::Done;
            return Err(FeedError::InvalidUrl { url: String::new(), reason: "no ws:// URL to connect to".to_owned() });
        };
        let started = Instant::now();
        let dial = Dial { params: &self.config.params, tls: self.config.tls.as_ref() };
        let attempt = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => {
                self.state = State::Done;
                return Ok(());
            }
            attempt = handshake(&url, dial, self.config.connect_timeout) => attempt,
        };
        match attempt {
            Ok((ws, protocol)) => {
                self.failures = 0;
                let mut session = Session::new(ws, protocol, url);
                if protocol == Protocol::Legacy {
                    resume::legacy_opened(&mut session, &mut self.cursor, &mut self.pending);
                }
                self.state = State::Open(Box::new(session));
            }
            Err(err) if err.is_fatal() => {
                self.state = State::Done;
                return Err(FeedError::InvalidUrl { url: redact_url(&url), reason: err.to_string() });
            }
            Err(err) if err.is_refusal() => {
                self.state = State::Done;
                return Err(FeedError::Refused { url: redact_url(&url), reason: err.to_string() });
            }
            Err(err) => self.fail(url, DisconnectReason::ConnectFailed(err.to_string()), started),
        }
        Ok(())
    }
}
