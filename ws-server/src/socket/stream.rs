//! Where one connection stands in the history, and what it sends next.
//!
//! A connection keeps a cursor: the last position it sent (or that a snapshot, or the client's
//! `since`, covers). Hub events at or before it are skipped, the next one is sent, and one
//! further ahead means a gap: the connection reads the missing events from the replay log.
//! The same catch-up serves resumes: take the hub receiver first (the connection already
//! holds one), replay the log after the cursor, then drain what the receiver queued meanwhile,
//! skipping what the replay sent. When the receiver is empty the connection is live, and only
//! then is `subscribed` sent. A receiver that lags during the replay just means more replay.
//!
//! When Redis lost its data, a cursor (or a `since`) of the old history is translated through
//! the new history's bridge where it reaches back that far: the connection goes on from the
//! same place, and a protocol client is told its new position with a `rebased` frame.
//!
//! What cannot be served is said, never skipped: a protocol client gets a `reset` frame and
//! keeps its connection; a plain one that asked for `?since=` is closed with 4010.

use protocol::store::Conn as RedisConn;
use protocol::{
    frames::{CLOSE_HISTORY_LOST, ResetReason, ServerFrame},
    log::{Head, Position},
};
use std::time::Duration;

use tokio::{sync::broadcast::error::TryRecvError, time::Instant};
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info};

use super::{Conn, End, subs::Shape};

/// How long a resume from a position ahead of its history's newest waits for the new history
/// that re-offers it (the publisher starts one within about a second of noticing), and how
/// often it looks.
const AHEAD_WAIT: Duration = Duration::from_secs(5);
const AHEAD_POLL: Duration = Duration::from_millis(50);
use crate::{
    history::{PAGE, Page},
    hub::{
        Break, Cursor, Event, Item,
        express::{Follows, follows},
    },
    view::Lazy,
};

/// What to do with a hub event.
enum Verdict {
    Send,
    Skip,
    /// It does not follow the cursor: read the log first.
    Gap,
}

/// Whether draining the receiver reached the live edge.
#[derive(PartialEq, Eq)]
enum Drained {
    Live,
    Behind,
}

impl Conn<'_> {
    /// A live hub event.
    pub(super) async fn deliver(&mut self, event: Event) -> Result<(), End> {
        match self.verdict(&event) {
            Verdict::Send => self.send_event(event).await,
            Verdict::Skip => Ok(()),
            // The log holds this event too: the catch-up sends it, in order.
            // Boxed: rare, and large (it reads the log).
            Verdict::Gap => Box::pin(self.catch_up()).await,
        }
    }

    fn verdict(&self, event: &Event) -> Verdict {
        match follows(self.cursor.as_ref(), event) {
            Follows::Next => Verdict::Send,
            Follows::Sent => Verdict::Skip,
            // A gated feed skipped the events between, in our history: none was for this
            // connection. (Another history than ours stays a gap: the log says which is current.)
            Follows::Gap
                if self.cursor.as_ref().is_some_and(|c| {
                    event.epoch.as_ref() == Some(&c.epoch)
                        && event.after.as_ref().is_some_and(|a| a.epoch == c.epoch && a.pos <= c.pos)
                }) =>
            {
                Verdict::Send
            }
            Follows::Gap => Verdict::Gap,
        }
    }

    async fn send_event(&mut self, event: Event) -> Result<(), End> {
        let at = event.cursor();
        let sent = match self.shape(at.as_ref(), &event.frame, &event.parsed, None) {
            Shape::Raw => self.send_live(Message::Text(event.frame)).await,
            Shape::Nothing => {
                if let Some(at) = at {
                    self.advance(at);
                }
                return Ok(());
            }
            Shape::Frames(frames) => self.send_frames_live(frames).await,
        };
        // A frame already in the socket's buffer when the queue overflowed counts as sent.
        if matches!(sent, Ok(()) | Err(End::Overflow { frame_queued: true, .. })) {
            self.state.stats.messages_out.inc();
            if let Some(changed_at) = event.changed_at {
                self.state.stats.delivery_latency.observe_since(changed_at);
            }
            if let Some(at) = at {
                self.advance(at);
            }
        }
        sent
    }

    /// Several frames for one live event; the event counts as sent once the last is.
    async fn send_frames_live(&mut self, frames: Vec<String>) -> Result<(), End> {
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.into_iter().enumerate() {
            match self.send_live(Message::Text(frame.into())).await {
                Ok(()) => {}
                // Only the last frame's fate decides whether the event counts as sent; an
                // earlier one that overflowed is sent again (after the fold or the close).
                Err(End::Overflow { lag, frame_queued }) => {
                    return Err(End::Overflow { lag, frame_queued: frame_queued && i == last });
                }
                Err(end) => return Err(end),
            }
            if i < last {
                self.state.stats.messages_out.inc();
            }
        }
        Ok(())
    }

    fn advance(&mut self, at: Cursor) {
        if self.auto_ack {
            self.unacked = Some(at.clone());
        }
        if self.cursor.as_ref().is_none_or(|c| c.epoch != at.epoch) || self.first_sent.is_none() {
            self.first_sent = Some(at.pos);
        }
        self.cursor = Some(at);
    }

    /// Moves the cursor without sending (a snapshot, a `since`, a hole): positions from
    /// `first` on are what this connection is responsible for now.
    pub(super) fn jump(&mut self, to: Cursor, first: Option<u64>) {
        self.cursor = Some(to);
        self.first_sent = first;
    }

    /// The hub announced a hole its replica could not fill.
    pub(super) async fn on_break(&mut self, brk: &Break) -> Result<(), End> {
        if let Some(c) = &self.cursor
            && c.epoch == brk.resume.epoch
            && c.pos >= brk.resume.pos
        {
            return Ok(()); // this connection is already past it (it subscribed from the log)
        }
        let had_position = self.cursor.is_some();
        self.jump(brk.resume.clone(), None);
        if had_position && self.mode.speaks() {
            let message = match brk.reason {
                ResetReason::HistoryLost => {
                    "redis lost its history (restarted empty): events may be missing; subscribe with \"snapshot\": true"
                }
                ResetReason::BeyondRetention => {
                    "this replica was disconnected longer than the log's retention: events may be missing; subscribe with \"snapshot\": true"
                }
            };
            self.reset(brk.reason, Some(brk.head.clone()), message.to_owned()).await?;
        } else {
            debug!(conn_id = self.conn_id, reason = ?brk.reason, "stream continues after a hole");
        }
        Ok(())
    }

    /// Replays the log after the cursor, then drains the receiver, until nothing is left.
    pub(super) async fn catch_up(&mut self) -> Result<(), End> {
        loop {
            self.replay().await?;
            if self.drain().await? == Drained::Live {
                // A long replay kept us from reading pongs; the sends going through show the
                // peer is alive.
                self.last_heard = Instant::now();
                return Ok(());
            }
        }
    }

    async fn drain(&mut self) -> Result<Drained, End> {
        loop {
            match self.rx.try_recv() {
                Ok(Item::Event(event)) => match self.verdict(&event) {
                    Verdict::Send => self.send_event(event).await?,
                    Verdict::Skip => {}
                    Verdict::Gap => return Ok(Drained::Behind),
                },
                Ok(Item::Break(brk)) => self.on_break(&brk).await?,
                Err(TryRecvError::Empty) => return Ok(Drained::Live),
                // Continue replaying from the last position sent.
                Err(TryRecvError::Lagged(_)) => return Ok(Drained::Behind),
                Err(TryRecvError::Closed) => return Err(End::Shutdown),
            }
        }
    }

    /// Sends every logged event after the cursor. Stops at the first short page: what is
    /// appended later reaches the receiver.
    async fn replay(&mut self) -> Result<(), End> {
        let Some(mut cursor) = self.cursor.clone() else { return Ok(()) };
        let mut conn = self.log_conn().await?;
        let state = self.state;
        let history = &state.history;
        let Some(head) = self.redis(history.log.head_with_bridge(&mut conn).await).await? else {
            return Ok(()); // Redis holds no history now; the hub announces the next one
        };
        if *cursor.epoch != head.position.epoch {
            cursor = self.adopt_epoch(&mut conn, &head).await?;
        }
        let head = head.position;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(self.going_away().await);
            }
            match self.redis(history.page(&mut conn, &cursor.epoch, cursor.pos).await).await? {
                Page::End | Page::OtherEpoch => return Ok(()),
                Page::Trimmed { first } => {
                    let message = format!(
                        "events after {} are no longer in the log (it keeps positions from {first} on); subscribe with \"snapshot\": true",
                        cursor.to_position()
                    );
                    self.cannot_serve(ResetReason::BeyondRetention, Some(head.clone()), message).await?;
                    cursor.pos = first - 1;
                    self.jump(cursor.clone(), None);
                }
                Page::Frames(frames) => {
                    let short = frames.len() < PAGE;
                    for (pos, frame) in frames {
                        cursor.pos = pos;
                        self.send_shaped(Some(&cursor), &frame, &Lazy::default(), true, None).await?;
                        self.state.stats.replayed_out.inc();
                        self.advance(cursor.clone());
                    }
                    if short {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The log holds another history than the cursor's. Continue from the same place in it
    /// where its bridge reaches back to the cursor; otherwise say so, and continue in it from
    /// its oldest retained event.
    pub(super) async fn adopt_epoch(&mut self, conn: &mut RedisConn, head: &Head) -> Result<Cursor, End> {
        let from = self.cursor.as_ref().map(Cursor::to_position);
        if let Some(from) = from
            && let Some(to) = head.translate(&from)
        {
            self.rebased(from, to.clone()).await?;
            let cursor = Cursor::from(to);
            self.jump(cursor.clone(), None);
            return Ok(cursor);
        }
        let message = format!(
            "redis lost the history {} belongs to, and the new one does not reach back to it; subscribe with \"snapshot\": true",
            self.cursor.as_ref().map_or_else(String::new, |c| c.to_position().to_string())
        );
        let head = &head.position;
        self.cannot_serve(ResetReason::HistoryLost, Some(head.clone()), message).await?;
        let first = self.redis(self.state.history.log.first_pos(conn).await).await?;
        let cursor = Cursor::new(head.epoch.as_str().into(), first.map_or(head.pos, |f| f.saturating_sub(1)));
        self.jump(cursor.clone(), None);
        Ok(cursor)
    }

    /// Tells a protocol client where it stands in the new history (a plain one just gets the
    /// events that follow).
    async fn rebased(&mut self, from: Position, position: Position) -> Result<(), End> {
        self.state.stats.rebases.inc();
        debug!(conn_id = self.conn_id, %from, to = %position, "continuing in the new history");
        if self.mode.speaks() {
            self.send_frame(&ServerFrame::Rebased { from, position }).await?;
        }
        Ok(())
    }

    /// A client `subscribe` (or a `?since=` at connect): reposition, catch up, confirm.
    pub(super) async fn subscribe(
        &mut self,
        since: Option<Position>,
        snapshot: bool,
        conflate: bool,
    ) -> Result<(), End> {
        self.conflate = conflate;
        let mut conn = self.log_conn().await?;
        if snapshot {
            self.snapshot(&mut conn).await?;
        } else if let Some(since) = since {
            let resume = match self.check_since(&mut conn, &since).await? {
                Ok(resume) => resume,
                // The connection stays as it was (protocol); the client decides what next.
                Err((reason, head, message)) => return self.cannot_serve(reason, head, message).await,
            };
            if resume != since {
                self.rebased(since, resume.clone()).await?;
            }
            self.state.stats.resumes.inc();
            self.resume_from(resume);
        } else if self.cursor.is_none()
            && let Some(head) = self.redis(self.state.history.log.head(&mut conn).await).await?
        {
            self.jump(head.into(), None);
        }
        self.catch_up().await?;
        if self.mode.speaks() {
            let position = self.cursor.as_ref().map(Cursor::to_position);
            info!(conn_id = self.conn_id, position = ?position, "subscribed");
            let id = self.subs.first().and_then(|s| s.id.clone());
            self.send_frame(&ServerFrame::Subscribed { id, position }).await?;
        }
        Ok(())
    }

    /// Whether the log can serve every event after `since`, and from which position of the
    /// current history (`since` itself, or translated through the bridge of a new history).
    pub(super) async fn check_since(
        &mut self,
        conn: &mut RedisConn,
        since: &Position,
    ) -> Result<Result<Position, (ResetReason, Option<Position>, String)>, End> {
        let state = self.state;
        let log = &state.history.log;
        let mut current = self.redis(log.head_with_bridge(conn).await).await?;
        // Ahead of the newest position of its own history: the log lost its newest writes (a
        // Redis failover before they reached the replica) after this client saw them. The
        // publisher notices and starts a new history that re-offers them: wait a little for it
        // rather than tell the client to start over. A mistyped position gets its reset after
        // the wait.
        let deadline = Instant::now() + AHEAD_WAIT;
        while current.as_ref().is_some_and(|c| c.position.epoch == since.epoch && since.pos > c.position.pos)
            && Instant::now() < deadline
        {
            tokio::time::sleep(AHEAD_POLL).await;
            current = self.redis(log.head_with_bridge(conn).await).await?;
        }
        let head = current.as_ref().map(|h| h.position.clone());
        let lost = |why: String| {
            Err((
                ResetReason::HistoryLost,
                head.clone(),
                format!("cannot resume from {since}: {why}; subscribe with \"snapshot\": true"),
            ))
        };
        let Some(current) = &current else {
            return Ok(lost("redis holds no history now (it lost its data; the publisher starts a new one)".into()));
        };
        let newest = &current.position;
        if newest.epoch != since.epoch {
            if let Some(resume) = current.translate(since) {
                return Ok(Ok(resume));
            }
            return Ok(lost(match &current.bridge {
                Some(bridge) if bridge.epoch == since.epoch => format!(
                    "redis lost its data; the new history {} re-offers positions {}..={} of {}, not the events after {}",
                    newest.epoch, bridge.from, bridge.to, bridge.epoch, since.pos
                ),
                _ => format!(
                    "{:?} is neither the current history ({newest}) nor one it continues (from before an earlier \
                     loss of redis data, or mistyped)",
                    since.epoch
                ),
            }));
        }
        if since.pos > newest.pos {
            return Ok(lost(format!("it is ahead of the newest position {newest}")));
        }
        if since.pos < newest.pos {
            let first = self.redis(log.first_pos(conn).await).await?;
            if first.is_none_or(|first| since.pos + 1 < first) {
                let kept = first.map_or_else(|| "nothing".to_owned(), |f| format!("positions from {f} on"));
                let message = format!(
                    "cannot resume from {since}: beyond the log's retention (it keeps {kept}); subscribe with \"snapshot\": true"
                );
                return Ok(Err((ResetReason::BeyondRetention, head, message)));
            }
        }
        Ok(Ok(since.clone()))
    }

    /// Points the cursor at a `since` the log can serve, never sending a position twice
    /// unless the client asks for events from before the first one this connection sent.
    fn resume_from(&mut self, since: Position) {
        let since = match &self.cursor {
            Some(c) if *c.epoch == since.epoch => Cursor::new(c.epoch.clone(), since.pos),
            _ => Cursor::from(since),
        };
        match (&self.cursor, self.first_sent) {
            // Everything after `since` was already sent here: nothing to replay.
            (Some(c), Some(first)) if c.epoch == since.epoch && since.pos < c.pos && since.pos + 1 >= first => {}
            (Some(c), Some(_)) if c.epoch == since.epoch && since.pos < c.pos => {
                // The client wants events from before this connection's first one: live events
                // went out before its `subscribe` arrived. Start over from `since`, in order;
                // the events sent early come again, and their positions show it.
                debug!(conn_id = self.conn_id, since = since.pos, first = ?self.first_sent, "subscribe rewinds the stream");
                self.jump(since, None);
            }
            _ => {
                let first = since.pos + 1;
                self.jump(since, Some(first));
            }
        }
    }

    /// Says that a position cannot be served: a `reset` frame on a protocol connection (which
    /// stays open), close 4010 on a plain one (it cannot be told otherwise).
    pub(super) async fn cannot_serve(
        &mut self,
        reason: ResetReason,
        head: Option<Position>,
        message: String,
    ) -> Result<(), End> {
        if self.mode.speaks() {
            return self.reset(reason, head, message).await;
        }
        self.state.stats.resets.inc();
        info!(conn_id = self.conn_id, ?reason, %message, "cannot resume a plain connection; closing");
        // Close reasons are short (123 bytes at most); the log line above has the details.
        let close = match reason {
            ResetReason::HistoryLost => {
                "cannot resume: the position's history is not in redis (unknown, or lost); reconnect without since"
            }
            ResetReason::BeyondRetention => {
                "cannot resume: position beyond the log's retention; reconnect without since"
            }
        };
        self.close(CLOSE_HISTORY_LOST, close).await;
        Err(End::CannotResume)
    }

    async fn reset(&mut self, reason: ResetReason, position: Option<Position>, message: String) -> Result<(), End> {
        self.state.stats.resets.inc();
        info!(conn_id = self.conn_id, ?reason, %message, "reset sent");
        self.send_frame(&ServerFrame::Reset { reason, position, message }).await
    }

    /// The shared log connection; closes with 1013 when Redis stays away.
    pub(super) async fn log_conn(&mut self) -> Result<RedisConn, End> {
        match self.state.history.conn().await {
            Some(conn) => Ok(conn),
            None => Err(self.redis_unavailable("no redis session".into()).await),
        }
    }

    pub(super) async fn redis<T>(&mut self, result: redis::RedisResult<T>) -> Result<T, End> {
        match result {
            Ok(value) => Ok(value),
            Err(err) => Err(self.redis_unavailable(err.to_string()).await),
        }
    }
}
