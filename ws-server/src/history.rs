//! The replay log as a replica reads it: one shared Redis connection for log reads (not the
//! pub/sub one), and paged reads that notice a trimmed log or a history that changed underfoot.
//!
//! The subscriber opens the connection with each Redis session and withdraws it when the
//! session ends; connections that resume, snapshot or conflate borrow it (it is multiplexed,
//! so thousands of resumes share one socket). Only plain XRANGE/HMGET/EVALSHA run on it, never
//! a blocking read, so a response timeout is safe there.

use std::time::Duration;

use protocol::log::{Log, frame_prefix};
use protocol::store::Conn;
use tokio::sync::watch;

/// Entries read per XRANGE.
pub(crate) const PAGE: usize = 500;
/// How long a log read may take, and how long a connection waits for Redis to come back.
pub(crate) const LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// The log and the connection to read it with.
#[derive(Debug)]
pub(crate) struct History {
    pub(crate) log: Log,
    conn: watch::Sender<Option<Conn>>,
}

/// One step of a paged read after some position.
#[derive(Debug)]
pub(crate) enum Page {
    /// The next frames, in position order, contiguous with the position read after.
    Frames(Vec<(u64, String)>),
    /// The log no longer holds the next position: it starts at `first`.
    Trimmed { first: u64 },
    /// The next entry belongs to another epoch (Redis lost its data while we read).
    OtherEpoch,
    /// Nothing after the position.
    End,
}

impl History {
    pub(crate) fn new(log: Log) -> Self {
        Self { log, conn: watch::Sender::new(None) }
    }

    /// Makes `conn` (or, with `None`, no connection) the one connections borrow.
    pub(crate) fn set_conn(&self, conn: Option<Conn>) {
        self.conn.send_replace(conn);
    }

    /// The log connection, waiting up to [`LOG_TIMEOUT`] for a Redis session to provide one.
    pub(crate) async fn conn(&self) -> Option<Conn> {
        let mut rx = self.conn.subscribe();
        let ready = tokio::time::timeout(LOG_TIMEOUT, rx.wait_for(Option::is_some)).await;
        // A timeout or a dropped sender both mean: no Redis to read from now.
        ready.ok()?.ok()?.clone()
    }

    /// Up to [`PAGE`] frames of `epoch` after position `after`.
    ///
    /// # Errors
    /// The Redis error (a broken connection or a response timeout).
    pub(crate) async fn page(&self, conn: &mut Conn, epoch: &str, after: u64) -> redis::RedisResult<Page> {
        let mut frames = self.log.read_after(conn, after, PAGE).await?;
        // An entry of another history means Redis was emptied and refilled between our reads.
        let prefix = frame_prefix(epoch);
        if let Some(other) = frames.iter().position(|(_, frame)| !frame.starts_with(&prefix)) {
            if other == 0 {
                return Ok(Page::OtherEpoch);
            }
            frames.truncate(other);
        }
        let Some(&(first, _)) = frames.first() else { return Ok(Page::End) };
        if first != after + 1 {
            return Ok(Page::Trimmed { first });
        }
        Ok(Page::Frames(frames))
    }
}
