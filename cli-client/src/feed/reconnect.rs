//! The reconnect policy: after a failed attempt or a dropped connection, report it, then wait
//! out the next delay from the shared [`RetryPolicy`](protocol::retry::RetryPolicy) schedule
//! and try the next URL (replicas, round robin), or give up once `max_retries` attempts in a
//! row have failed. The schedule starts over after a session that stayed up long enough.
//!
//! Retrying alone recovers nothing that was published while disconnected: that comes back only
//! through the `subscribe` with `since` that `resume` sends after the next `hello` (and not at
//! all on a legacy connection, which cannot be asked to replay).

use tokio::time::{Instant, sleep_until};

use super::{DisconnectReason, Feed, FeedItem, State};

impl Feed {
    /// Reports `reason` and schedules the next attempt (to the next URL), or gives up.
    pub(super) fn fail(&mut self, url: String, reason: DisconnectReason, session_started: Instant) {
        self.pending.push_back(FeedItem::Disconnected { url, reason: reason.clone() });
        if self.config.max_retries.is_some_and(|max| self.failures >= max) {
            self.state = State::GaveUp(reason);
            return;
        }
        self.failures += 1;
        self.url_index = (self.url_index + 1) % self.config.urls.len().max(1);
        let delay = self.backoff.next_delay(session_started.into_std());
        let next_url = (self.config.urls.len() > 1).then(|| self.config.urls[self.url_index].clone());
        self.pending.push_back(FeedItem::Retrying {
            delay,
            attempt: self.failures,
            max_retries: self.config.max_retries,
            next_url,
        });
        self.state = State::Wait { until: Instant::now() + delay };
    }

    /// Waits until `until`, the end of the delay [`Feed::fail`] chose, then lets the next
    /// attempt start; shutdown cuts the wait short and ends the feed.
    ///
    /// Cancel-safe: the state changes only once one of the two happened.
    pub(super) async fn wait(&mut self, until: Instant) {
        tokio::select! {
            biased;
            () = self.shutdown.cancelled() => self.state = State::Done,
            () = sleep_until(until) => self.state = State::Connect,
        }
    }
}
