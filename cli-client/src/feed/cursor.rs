//! Where the feed is in the server's history, and which events to let through: the pure part
//! of resuming, with no socket in sight.
//!
//! The cursor remembers a position (`epoch:pos`) to resume from: the last event delivered, or
//! the position a `hello`, `snapshot`, `subscribed` or `reset` named. It decides what to
//! `subscribe` to after each handshake, and filters events:
//!
//! - an event at or before the position (same epoch) was delivered already: dropped;
//! - while a `subscribe` is unanswered, an event that does not follow the position directly
//!   is held back: the server may have sent it live before it read the `subscribe`, and then
//!   sends it again, in order, in the replay. Held events are let through (those still new)
//!   once the answer arrives, in position order;
//! - an event without a position (a pre-log publisher, a legacy server) cannot be placed and is
//!   delivered as it comes.

use std::collections::VecDeque;

use protocol::{
    frames::{EventFrame, SnapshotRow},
    log::Position,
};

use super::{FeedItem, OnReset, Start};

/// Held events beyond this many are dropped: the replay that is on its way sends them again.
const MAX_HELD: usize = 10_000;

/// What to ask the server for after a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscribe {
    /// Every event after this position, then live ones.
    Since(Position),
    /// A snapshot of the current rows, then every event after its position.
    Snapshot,
    /// Live events from now on (no position is known).
    Live,
}

impl Subscribe {
    /// The client frame for it, carrying `params` (it replaces the default subscription the
    /// URL made, so it must ask for the same view).
    pub(crate) fn frame(&self, params: &super::Params) -> protocol::frames::ClientFrame {
        let (since, snapshot) = match self {
            Self::Since(position) => (Some(position.clone()), false),
            Self::Snapshot => (None, true),
            Self::Live => (None, false),
        };
        protocol::frames::ClientFrame::Subscribe(protocol::frames::Subscribe {
            since,
            snapshot,
            filter: params.filter.clone(),
            select: params.select.clone(),
            table: params.table.clone(),
            consumer: params.consumer.clone(),
            ..Default::default()
        })
    }
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Handed on.
    Delivered,
    /// Already delivered before.
    Duplicate,
    /// Kept until the `subscribe` is answered.
    Held,
}

/// What to do after a `reset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AfterReset {
    /// Send this `subscribe`.
    Subscribe(Subscribe),
    /// Stop (`--on-reset exit`).
    Exit,
}

/// The feed's place in the history.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    /// Where to resume from.
    position: Option<Position>,
    /// Whether an event or a snapshot was delivered.
    seen: bool,
    /// Whether the next `subscribe` asks for a snapshot.
    want_snapshot: bool,
    /// The `subscribe` sent and not answered yet.
    awaiting: Option<Subscribe>,
    /// Events held back while `awaiting`.
    held: Vec<(Position, EventFrame, String)>,
}

impl Cursor {
    /// A cursor for a feed that starts as `start` says.
    pub(crate) fn new(start: &Start) -> Self {
        match start {
            Start::Live => Self::default(),
            Start::Since(position) => Self { position: Some(position.clone()), ..Self::default() },
            Start::Snapshot => Self { want_snapshot: true, ..Self::default() },
        }
    }

    /// The position to resume from, if known.
    pub(crate) fn position(&self) -> Option<&Position> {
        self.position.as_ref()
    }

    /// Whether anything (an event, a snapshot) was delivered.
    pub(crate) fn seen(&self) -> bool {
        self.seen
    }

    /// Whether a `subscribe` is waiting for its answer.
    pub(crate) fn awaiting(&self) -> Option<&Subscribe> {
        self.awaiting.as_ref()
    }

    /// A connection opened and the server said hello (`position`: its newest then). Returns
    /// what to subscribe to, if anything: a snapshot when one is wanted, else every event
    /// after the known position. Without either, the connection's live stream is all there is,
    /// and the hello's position becomes the place to resume from after a disconnect.
    pub(crate) fn opened(&mut self, position: Option<Position>) -> Option<Subscribe> {
        self.awaiting = None;
        self.held.clear();
        let subscribe = if self.want_snapshot {
            Subscribe::Snapshot
        } else if let Some(position) = &self.position {
            Subscribe::Since(position.clone())
        } else {
            self.position = position;
            return None;
        };
        self.awaiting = Some(subscribe.clone());
        Some(subscribe)
    }

    /// One event: delivered onto `out`, dropped as a duplicate, or held.
    pub(crate) fn event(&mut self, frame: EventFrame, raw: String, out: &mut VecDeque<FeedItem>) -> Fate {
        let Some(position) = frame.epoch.clone().zip(frame.pos).map(|(epoch, pos)| Position { epoch, pos }) else {
            out.push_back(FeedItem::Event { frame, raw });
            self.seen = true;
            return Fate::Delivered;
        };
        if self.is_duplicate(&position) {
            tracing::debug!(%position, "duplicate event dropped");
            return Fate::Duplicate;
        }
        let in_order = self.position.as_ref().is_some_and(|p| p.epoch == position.epoch && p.pos + 1 == position.pos);
        if self.awaiting.is_some() && !in_order {
            if self.held.len() < MAX_HELD {
                self.held.push((position, frame, raw));
            } else {
                tracing::debug!(%position, "too many events held while resuming; dropped (the replay repeats it)");
            }
            return Fate::Held;
        }
        self.deliver(position, frame, raw, out);
        Fate::Delivered
    }

    /// The server confirmed the `subscribe`: every event after `position` follows. Lets held
    /// events through and returns what had been asked for.
    pub(crate) fn subscribed(&mut self, position: Option<Position>, out: &mut VecDeque<FeedItem>) -> Option<Subscribe> {
        let asked = self.awaiting.take();
        self.release(out);
        if let Some(position) = position {
            match &self.position {
                Some(p) if p.epoch == position.epoch && p.pos >= position.pos => {}
                _ => self.position = Some(position),
            }
        }
        asked
    }

    /// A snapshot arrived: it is delivered onto `out`, its position becomes the place to
    /// resume from, and held events still newer than it follow.
    pub(crate) fn snapshot(
        &mut self,
        position: Option<Position>,
        rows: Vec<SnapshotRow>,
        raw: String,
        out: &mut VecDeque<FeedItem>,
    ) {
        if self.awaiting == Some(Subscribe::Snapshot) {
            self.awaiting = None;
        }
        self.want_snapshot = false;
        self.seen = true;
        self.position.clone_from(&position);
        out.push_back(FeedItem::Snapshot { position, rows, raw });
        if self.awaiting.is_none() {
            self.release(out);
        }
    }

    /// The server cannot serve the position asked for; `newest` is its position now. Returns
    /// what to do as `policy` says.
    pub(crate) fn reset(&mut self, policy: OnReset, newest: Option<Position>) -> AfterReset {
        self.awaiting = None;
        let next = match policy {
            OnReset::Exit => return AfterReset::Exit,
            OnReset::Snapshot => {
                self.want_snapshot = true;
                Subscribe::Snapshot
            }
            OnReset::Live => {
                self.position.clone_from(&newest);
                newest.map_or(Subscribe::Live, Subscribe::Since)
            }
        };
        self.awaiting = Some(next.clone());
        AfterReset::Subscribe(next)
    }

    /// Redis lost its data and the server moved this connection into the new history: `from`
    /// (where we are, in the old one) is `to` there. Nothing was missed; resume from `to`.
    pub(crate) fn rebased(&mut self, from: &Position, to: Position) {
        if self.position.as_ref() == Some(from) {
            tracing::info!(%from, %to, "redis lost its history; continuing in the new one");
            self.position = Some(to);
        } else {
            tracing::debug!(%from, %to, position = ?self.position, "rebase for another position ignored");
        }
    }

    /// The `subscribe` was refused (an `error` frame) or never answered: carry on with the
    /// live stream as it is. Returns what had been asked for.
    pub(crate) fn give_up_waiting(&mut self, out: &mut VecDeque<FeedItem>) -> Option<Subscribe> {
        let asked = self.awaiting.take();
        // Do not ask again on the next connection: the server cannot do it.
        self.want_snapshot = false;
        self.release(out);
        asked
    }

    /// The connection ended: what was held comes again in the next replay.
    pub(crate) fn disconnected(&mut self) {
        self.awaiting = None;
        self.held.clear();
    }

    fn is_duplicate(&self, position: &Position) -> bool {
        self.position.as_ref().is_some_and(|p| p.epoch == position.epoch && position.pos <= p.pos)
    }

    fn deliver(&mut self, position: Position, frame: EventFrame, raw: String, out: &mut VecDeque<FeedItem>) {
        self.position = Some(position);
        self.seen = true;
        out.push_back(FeedItem::Event { frame, raw });
    }

    /// Delivers the held events that are still new, in position order.
    fn release(&mut self, out: &mut VecDeque<FeedItem>) {
        let mut held = std::mem::take(&mut self.held);
        held.sort_by_key(|(position, ..)| position.pos);
        for (position, frame, raw) in held {
            if self.is_duplicate(&position) {
                continue;
            }
            self.deliver(position, frame, raw, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::event::Operation;
    use serde_json::json;

    fn at(epoch: &str, pos: u64) -> Position {
        Position { epoch: epoch.into(), pos }
    }

    fn event(epoch: &str, pos: u64) -> (EventFrame, String) {
        let frame = EventFrame {
            epoch: Some(epoch.into()),
            pos: Some(pos),
            id: Some(pos as i64),
            table: "orders".into(),
            operation: Operation::Insert,
            order: json!({"id": pos}),
            old: None,
            ts: None,
        };
        (frame, format!("{epoch}:{pos}"))
    }

    /// Feeds `events` and returns the positions delivered.
    fn feed(cursor: &mut Cursor, events: &[(&str, u64)]) -> Vec<String> {
        let mut out = VecDeque::new();
        for (epoch, pos) in events {
            let (frame, raw) = event(epoch, *pos);
            cursor.event(frame, raw, &mut out);
        }
        delivered(out)
    }

    fn delivered(out: VecDeque<FeedItem>) -> Vec<String> {
        out.into_iter()
            .map(|item| match item {
                FeedItem::Event { raw, .. } => raw,
                FeedItem::Snapshot { position, .. } => format!("snapshot@{}", position.unwrap()),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn tracks_the_last_delivered_position_and_drops_repeats() {
        let mut cursor = Cursor::new(&Start::Live);
        assert_eq!(cursor.opened(Some(at("e1", 2))), None, "nothing to resume on the first connection");
        assert_eq!(cursor.position(), Some(&at("e1", 2)), "the hello's position is the resume point");
        assert!(!cursor.seen());
        assert_eq!(
            feed(&mut cursor, &[("e1", 3), ("e1", 4), ("e1", 3), ("e1", 4), ("e1", 6)]),
            ["e1:3", "e1:4", "e1:6"]
        );
        assert_eq!(cursor.position(), Some(&at("e1", 6)));
        assert!(cursor.seen());
    }

    #[test]
    fn a_new_epoch_is_taken_as_it_comes() {
        let mut cursor = Cursor::new(&Start::Since(at("old", 50)));
        cursor.disconnected();
        assert_eq!(feed(&mut cursor, &[("new", 1), ("new", 1), ("new", 2)]), ["new:1", "new:2"]);
        assert_eq!(cursor.position(), Some(&at("new", 2)));
    }

    #[test]
    fn a_rebase_moves_the_resume_point_into_the_new_history() {
        let mut cursor = Cursor::new(&Start::Live);
        cursor.opened(Some(at("old", 40)));
        feed(&mut cursor, &[("old", 41)]);
        cursor.rebased(&at("old", 40), at("new", 7));
        assert_eq!(cursor.position(), Some(&at("old", 41)), "a rebase of another position is not ours");
        cursor.rebased(&at("old", 41), at("new", 8));
        assert_eq!(cursor.position(), Some(&at("new", 8)));
        assert_eq!(feed(&mut cursor, &[("new", 8), ("new", 9)]), ["new:9"], "the re-offered event is no repeat");
    }

    #[test]
    fn events_without_a_position_always_pass() {
        let mut cursor = Cursor::new(&Start::Live);
        let mut out = VecDeque::new();
        let (mut frame, raw) = event("e", 1);
        (frame.epoch, frame.pos) = (None, None);
        assert_eq!(cursor.event(frame.clone(), raw.clone(), &mut out), Fate::Delivered);
        assert_eq!(cursor.event(frame, raw, &mut out), Fate::Delivered);
        assert_eq!(out.len(), 2);
        assert_eq!(cursor.position(), None);
    }

    #[test]
    fn resuming_holds_live_events_that_overtake_the_replay() {
        let mut cursor = Cursor::new(&Start::Live);
        cursor.opened(None);
        assert_eq!(feed(&mut cursor, &[("e", 1), ("e", 2), ("e", 3)]), ["e:1", "e:2", "e:3"]);
        cursor.disconnected();
        // Reconnected: the server says hello at 7 and gets `since e:3`.
        assert_eq!(cursor.opened(Some(at("e", 7))), Some(Subscribe::Since(at("e", 3))));
        // It sent 8 live before reading the subscribe, then replays 4..=8.
        let mut out = VecDeque::new();
        let (frame, raw) = event("e", 8);
        assert_eq!(cursor.event(frame, raw, &mut out), Fate::Held);
        assert_eq!(
            feed(&mut cursor, &[("e", 4), ("e", 5), ("e", 6), ("e", 7), ("e", 8)]),
            ["e:4", "e:5", "e:6", "e:7", "e:8"]
        );
        let mut out = VecDeque::new();
        assert_eq!(cursor.subscribed(Some(at("e", 8)), &mut out), Some(Subscribe::Since(at("e", 3))));
        assert!(out.is_empty(), "the held copy of 8 is a duplicate by now: {out:?}");
        assert_eq!(feed(&mut cursor, &[("e", 9)]), ["e:9"]);
    }

    #[test]
    fn held_events_the_replay_did_not_repeat_follow_the_answer_in_order() {
        let mut cursor = Cursor::new(&Start::Since(at("e", 3)));
        assert_eq!(cursor.opened(None), Some(Subscribe::Since(at("e", 3))));
        assert_eq!(feed(&mut cursor, &[("e", 7), ("e", 6), ("e", 4)]), ["e:4"]);
        let mut out = VecDeque::new();
        cursor.subscribed(Some(at("e", 4)), &mut out);
        assert_eq!(delivered(out), ["e:6", "e:7"]);
    }

    #[test]
    fn a_snapshot_replaces_the_position_and_drops_what_it_covers() {
        let mut cursor = Cursor::new(&Start::Snapshot);
        assert_eq!(cursor.opened(Some(at("e", 10))), Some(Subscribe::Snapshot));
        // Live events sent before the server read the subscribe: 11 and 12.
        assert!(feed(&mut cursor, &[("e", 11), ("e", 12)]).is_empty());
        let mut out = VecDeque::new();
        cursor.snapshot(Some(at("e", 11)), vec![], "{}".into(), &mut out);
        assert_eq!(delivered(out), ["snapshot@e:11", "e:12"]);
        assert_eq!(feed(&mut cursor, &[("e", 12), ("e", 13)]), ["e:13"]);
        cursor.disconnected();
        assert_eq!(
            cursor.opened(None),
            Some(Subscribe::Since(at("e", 13))),
            "later reconnects resume, no new snapshot"
        );
    }

    #[test]
    fn reset_follows_the_policy() {
        let mut cursor = Cursor::new(&Start::Since(at("gone", 5)));
        cursor.opened(None);
        assert_eq!(cursor.reset(OnReset::Snapshot, Some(at("e2", 40))), AfterReset::Subscribe(Subscribe::Snapshot));
        let mut out = VecDeque::new();
        cursor.snapshot(Some(at("e2", 41)), vec![], "{}".into(), &mut out);
        assert_eq!(cursor.position(), Some(&at("e2", 41)));

        let mut cursor = Cursor::new(&Start::Since(at("gone", 5)));
        cursor.opened(None);
        assert_eq!(
            cursor.reset(OnReset::Live, Some(at("e2", 40))),
            AfterReset::Subscribe(Subscribe::Since(at("e2", 40)))
        );
        assert_eq!(cursor.position(), Some(&at("e2", 40)));
        assert_eq!(cursor.reset(OnReset::Live, None), AfterReset::Subscribe(Subscribe::Live));

        let mut cursor = Cursor::new(&Start::Since(at("gone", 5)));
        cursor.opened(None);
        assert_eq!(cursor.reset(OnReset::Exit, None), AfterReset::Exit);
    }

    #[test]
    fn a_server_that_cannot_resume_gets_the_held_events_released() {
        let mut cursor = Cursor::new(&Start::Snapshot);
        cursor.opened(None);
        assert!(feed(&mut cursor, &[("e", 5), ("e", 6)]).is_empty());
        let mut out = VecDeque::new();
        assert_eq!(cursor.give_up_waiting(&mut out), Some(Subscribe::Snapshot));
        assert_eq!(delivered(out), ["e:5", "e:6"]);
        cursor.disconnected();
        assert_eq!(cursor.opened(None), Some(Subscribe::Since(at("e", 6))), "no second snapshot request");
    }

    #[test]
    fn subscribe_frames_say_what_is_asked() {
        use protocol::frames::ClientFrame;
        assert_eq!(
            Subscribe::Since(at("e", 3)).frame(&Default::default()),
            ClientFrame::Subscribe(protocol::frames::Subscribe {
                since: Some(at("e", 3)),
                snapshot: false,
                conflate: false,
                ..Default::default()
            })
        );
        assert_eq!(
            Subscribe::Snapshot.frame(&Default::default()),
            ClientFrame::Subscribe(protocol::frames::Subscribe {
                since: None,
                snapshot: true,
                conflate: false,
                ..Default::default()
            })
        );
        let text = serde_json::to_string(&Subscribe::Since(at("e", 3)).frame(&Default::default())).unwrap();
        assert_eq!(text, r#"{"type":"subscribe","since":{"epoch":"e","pos":3},"snapshot":false,"conflate":false}"#);
    }
}
