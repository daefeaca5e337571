//! The replica's place in the history: it keeps the hub's stream gap-free and duplicate-free
//! across Redis sessions.
//!
//! It remembers the last position put in the hub (across sessions). After each SUBSCRIBE it
//! reads the log after that position and forwards what the replica missed while it was not
//! subscribed; live messages at or before the last position are then the overlap between the
//! log and the channel, and are dropped. A live message that skips positions (the channel lost
//! something) is preceded by the missing events, read from the log. A fresh replica starts at
//! the head of the log: it owes nothing to anyone yet.
//!
//! When Redis lost its data, the publisher's new history re-offers the newest events of the old
//! one and says which old positions they stand for (`protocol::log::Bridge`): the replica
//! translates its last position into the new history and goes on filling from there, so it
//! forwards what it missed and nothing twice, and connections do the same translation.
//!
//! Two holes cannot be filled, and both are announced in the hub as a [`Break`] rather than
//! skipped silently: a new history whose bridge does not reach back to the last position seen
//! (the old positions mean nothing now; the new history is forwarded from its oldest retained
//! event), or the log was trimmed past the last position seen (the replica was away longer than
//! retention).

use std::sync::Arc;

use protocol::store::Conn;
use protocol::{
    frames::ResetReason,
    log::{Head, Position},
};
use tracing::{debug, info, warn};

use crate::{
    AppState,
    history::{PAGE, Page},
    hub::{Break, Cursor, Event},
    subscriber::{SessionError, skip, validate_owned},
};

/// The last position this replica put in its hub.
#[derive(Debug)]
pub(crate) struct Sequencer<'a> {
    state: &'a AppState,
    last: Option<Cursor>,
}

impl<'a> Sequencer<'a> {
    pub(crate) fn new(state: &'a AppState) -> Self {
        Self { state, last: None }
    }

    /// The epoch of the last position, for sharing its name with incoming events.
    pub(crate) fn epoch(&self) -> Option<&Arc<str>> {
        self.last.as_ref().map(|c| &c.epoch)
    }

    /// Called right after SUBSCRIBE: forwards what was appended since the last position.
    pub(crate) async fn catch_up(&mut self, conn: &mut Conn) -> Result<(), SessionError> {
        let Some(head) = self.state.history.log.head_with_bridge(conn).await? else {
            debug!("no history in redis yet; live events will start it");
            return Ok(());
        };
        match &self.last {
            None => {
                info!(position = %head.position, "starting at the head of the replay log");
                self.last = Some(head.position.into());
            }
            Some(last) if *last.epoch == head.position.epoch => self.fill(conn).await?,
            Some(_) => {
                self.other_history(conn, head).await?;
                self.fill(conn).await?;
            }
        }
        Ok(())
    }

    /// One live message from the channel.
    pub(crate) async fn live(&mut self, conn: &mut Conn, event: Event) -> Result<(), SessionError> {
        let Some(at) = event.cursor() else {
            // A frame without a position cannot be placed or deduplicated: forward it as is.
            self.state.hub.publish(event);
            return Ok(());
        };
        match &self.last {
            None => {}
            Some(last) if last.epoch != at.epoch => {
                let head = self.state.history.log.head_with_bridge(conn).await?;
                let head = head.unwrap_or_else(|| Head { position: at.to_position(), bridge: None });
                self.other_history(conn, head).await?;
                self.fill(conn).await?;
            }
            Some(last) if at.pos > last.pos + 1 => {
                warn!(last = last.pos, received = at.pos, "live stream skipped positions; reading them from the log");
                self.fill(conn).await?;
            }
            Some(_) => {}
        }
        if let Some(last) = &self.last {
            if last.epoch == at.epoch && at.pos <= last.pos {
                debug!(pos = at.pos, "already forwarded from the log; dropped");
                return Ok(());
            }
            if last.epoch != at.epoch || at.pos != last.pos + 1 {
                // The log could not supply the missing events. Connections notice the gap and
                // try the log themselves; a protocol client is told if that fails too.
                warn!(last = %last.to_position(), received = %at.to_position(), "forwarding past a gap the log could not fill");
            }
        }
        self.forward(event, at);
        Ok(())
    }

    fn forward(&mut self, event: Event, at: Cursor) {
        self.state.hub.publish(event);
        self.last = Some(at);
    }

    /// Forwards every logged event after the last position. Stops at the first short page:
    /// whatever is appended after that reaches the subscription live.
    async fn fill(&mut self, conn: &mut Conn) -> Result<(), SessionError> {
        let mut filled = 0_u64;
        while let Some(last) = self.last.clone() {
            match self.state.history.page(conn, &last.epoch, last.pos).await? {
                Page::End | Page::OtherEpoch => break,
                Page::Trimmed { first } => {
                    let head = self.state.history.log.head(conn).await?.unwrap_or_else(|| last.to_position());
                    warn!(
                        last = %last.to_position(), first,
                        "the replay log no longer holds what this replica missed; telling connections"
                    );
                    self.announce(ResetReason::BeyondRetention, Cursor::new(last.epoch.clone(), first - 1), head);
                }
                Page::Frames(frames) => {
                    let short = frames.len() < PAGE;
                    for (pos, frame) in frames {
                        match validate_owned(frame, Some(&last.epoch)) {
                            Ok(event) if event.pos == Some(pos) => {
                                let at = event.cursor().expect("validated with a position");
                                self.forward(event, at);
                                filled += 1;
                            }
                            Ok(event) => skip(self.state, event.frame.as_bytes(), "log entry id and frame disagree"),
                            Err(reason) => skip(self.state, b"(log entry)", &reason),
                        }
                    }
                    if short {
                        break;
                    }
                }
            }
        }
        if filled > 0 {
            self.state.stats.gap_filled.add(filled);
            let position = self.last.as_ref().map(Cursor::to_position);
            info!(events = filled, position = ?position, "filled the gap from the replay log");
        }
        Ok(())
    }

    /// Redis holds another history than the one this replica followed: its data was lost.
    /// Continue in the new one where its bridge re-offers our last position; announce a break
    /// where it does not.
    async fn other_history(&mut self, conn: &mut Conn, head: Head) -> Result<(), SessionError> {
        let last = self.last.as_ref().map(Cursor::to_position);
        if let Some(last) = last
            && let Some(to) = head.translate(&last)
        {
            info!(from = %last, to = %to, "redis lost its history; the new one re-offers what this replica missed");
            self.state.stats.rebases.inc();
            self.last = Some(to.into());
            return Ok(());
        }
        self.history_lost(conn, head.position).await
    }

    /// The new history does not reach back to what this replica saw: tell connections.
    async fn history_lost(&mut self, conn: &mut Conn, head: Position) -> Result<(), SessionError> {
        // Forward the new history from its oldest retained event: nothing of it was seen yet.
        let first = self.state.history.log.first_pos(conn).await?;
        let resume = Cursor::new(head.epoch.as_str().into(), first.map_or(head.pos, |f| f.saturating_sub(1)));
        warn!(
            previous = ?self.last.as_ref().map(Cursor::to_position), now = %head,
            "redis lost its history; telling connections and following the new one"
        );
        self.announce(ResetReason::HistoryLost, resume, head);
        Ok(())
    }

    fn announce(&mut self, reason: ResetReason, resume: Cursor, head: Position) {
        self.state.stats.history_breaks.inc();
        self.last = Some(resume.clone());
        self.state.hub.publish_break(Break { reason, resume, head });
    }
}
