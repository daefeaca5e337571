//! Folding a backlog to the latest event per row, for clients that chose conflation over being
//! closed when they fall behind.
//!
//! The key of a row is its table and the `id` in `order`. An event whose row has no `id` (or
//! that cannot be read) is never folded away: nothing later can be known to replace it. The
//! survivors keep their positions and are sent in position order, so a client applying them
//! ends in the same state as one that applied every event.

use std::collections::HashMap;

use protocol::frames::{ResetReason, ServerFrame};
use serde::Deserialize;
use serde_json::Value;
use tokio::time::Instant;
use tracing::info;

use super::{Conn, End};
use crate::{history::Page, hub::Cursor, view::Lazy};

impl Conn<'_> {
    /// The receiver overflowed and this client chose conflation: send the latest event per
    /// row of what it missed, after a `conflated` frame, and continue live.
    pub(super) async fn conflate_backlog(&mut self, missed: u64) -> Result<(), End> {
        let mut conn = self.log_conn().await?;
        let state = self.state;
        let history = &state.history;
        let Some(current) = self.redis(history.log.head_with_bridge(&mut conn).await).await? else { return Ok(()) };
        let mut cursor = match &self.cursor {
            Some(c) if *c.epoch == current.position.epoch => c.clone(),
            Some(_) => self.adopt_epoch(&mut conn, &current).await?,
            None => Cursor::new(current.position.epoch.as_str().into(), 0),
        };
        let head = current.position;
        let mut folder = Folder::new(cursor.pos);
        while cursor.pos < head.pos {
            match self.redis(history.page(&mut conn, &cursor.epoch, cursor.pos).await).await? {
                Page::End | Page::OtherEpoch => break,
                Page::Trimmed { first } => {
                    let message = format!(
                        "events after {} are no longer in the log; subscribe with \"snapshot\": true",
                        cursor.to_position()
                    );
                    self.cannot_serve(ResetReason::BeyondRetention, Some(head.clone()), message).await?;
                    cursor.pos = first - 1;
                    folder = Folder::new(cursor.pos);
                }
                Page::Frames(frames) => {
                    for (pos, frame) in frames.into_iter().take_while(|(pos, _)| *pos <= head.pos) {
                        folder.push(pos, frame);
                        cursor.pos = pos;
                    }
                }
            }
        }
        self.jump(cursor.clone(), self.first_sent.or(Some(cursor.pos + 1)));
        if folder.is_empty() {
            return Ok(());
        }
        let folded = folder.finish();
        info!(
            conn_id = self.conn_id,
            missed,
            from = folded.from,
            to = folded.to,
            folded = folded.folded,
            "conflated a backlog"
        );
        self.send_frame(&ServerFrame::Conflated { from: folded.from, to: folded.to, folded: folded.folded }).await?;
        self.state.stats.conflations.inc();
        self.state.stats.folded.add(folded.folded);
        let epoch = cursor.epoch.clone();
        for (pos, frame) in folded.events {
            let at = Cursor::new(epoch.clone(), pos);
            self.send_shaped(Some(&at), &frame, &Lazy::default(), true, None).await?;
        }
        self.last_heard = Instant::now();
        Ok(())
    }
}

/// A backlog being folded.
#[derive(Debug)]
struct Folder {
    from: u64,
    to: u64,
    /// In position order; `None` where a later event for the same row replaced it.
    kept: Vec<Option<(u64, String)>>,
    /// Row key → index in `kept` of its latest event.
    latest: HashMap<String, usize>,
    folded: u64,
}

/// The result: what to send after a `conflated{from, to, folded}` frame.
#[derive(Debug)]
struct Folded {
    from: u64,
    to: u64,
    folded: u64,
    events: Vec<(u64, String)>,
}

impl Folder {
    /// Folds events after position `from`.
    fn new(from: u64) -> Self {
        Self { from, to: from, kept: Vec::new(), latest: HashMap::new(), folded: 0 }
    }

    /// Adds the next event (positions must increase).
    fn push(&mut self, pos: u64, frame: String) {
        debug_assert!(pos > self.to, "positions increase");
        self.to = pos;
        let index = self.kept.len();
        if let Some(key) = row_key(&frame)
            && let Some(previous) = self.latest.insert(key, index)
        {
            self.kept[previous] = None;
            self.folded += 1;
        }
        self.kept.push(Some((pos, frame)));
    }

    /// Whether no event was added.
    fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    fn finish(self) -> Folded {
        Folded { from: self.from, to: self.to, folded: self.folded, events: self.kept.into_iter().flatten().collect() }
    }
}

#[derive(Deserialize)]
struct Row {
    table: String,
    order: RowId,
}

#[derive(Deserialize)]
struct RowId {
    #[serde(default)]
    id: Value,
}

/// `table` and `order.id` of an event frame, if it has both.
fn row_key(frame: &str) -> Option<String> {
    let row: Row = serde_json::from_str(frame).ok()?;
    match row.order.id {
        Value::Null => None,
        id => Some(format!("{}:{id}", row.table)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(table: &str, id: Value, v: u32) -> String {
        serde_json::json!({"type":"event","table":table,"operation":"UPDATE","order":{"id":id,"v":v}}).to_string()
    }

    #[test]
    fn keeps_the_latest_event_per_row_in_position_order() {
        let mut f = Folder::new(10);
        f.push(11, frame("orders", 1.into(), 1));
        f.push(12, frame("orders", 2.into(), 1));
        f.push(13, frame("orders", 1.into(), 2));
        f.push(14, frame("other", 1.into(), 1)); // another table: another row
        f.push(15, frame("orders", 2.into(), 2));
        let folded = f.finish();
        assert_eq!((folded.from, folded.to, folded.folded), (10, 15, 2));
        let positions: Vec<u64> = folded.events.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, [13, 14, 15]);
    }

    #[test]
    fn events_without_a_row_id_are_never_folded_away() {
        let mut f = Folder::new(0);
        f.push(1, frame("orders", Value::Null, 1));
        f.push(2, frame("orders", Value::Null, 2));
        f.push(3, "not json".into());
        f.push(4, frame("orders", "a".into(), 1));
        f.push(5, frame("orders", "a".into(), 2));
        let folded = f.finish();
        assert_eq!(folded.folded, 1);
        assert_eq!(folded.events.iter().map(|(p, _)| *p).collect::<Vec<_>>(), [1, 2, 3, 5]);
    }

    #[test]
    fn an_empty_backlog_covers_nothing() {
        let f = Folder::new(7);
        assert!(f.is_empty());
        let folded = f.finish();
        assert_eq!((folded.from, folded.to, folded.events.len()), (7, 7, 0));
    }
}
