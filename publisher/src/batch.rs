//! A batch of changes on its way to the replay log: each serialized once, with what it does to
//! the snapshot state, and the positions the append gave it.

use std::time::SystemTime;

use protocol::{
    event::{Change, Operation},
    log::{Append, StateChange},
};

/// What one entry does to the state hash.
#[derive(Debug, Clone)]
enum Row {
    Set(Box<str>),
    Delete,
    /// Leave the state alone (an unverified legacy change).
    Keep,
}

#[derive(Debug, Clone)]
struct Entry {
    id: Option<i64>,
    /// The change's `ts` (the trigger's clock), for the append latency.
    changed_at: Option<SystemTime>,
    body: String,
    key: Option<String>,
    row: Row,
}

/// Changes ready to append, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Batch {
    entries: Vec<Entry>,
}

impl Batch {
    /// Adds a change whose row is the truth (an outbox row: written by the trigger in the
    /// transaction that made the change).
    pub(crate) fn push(&mut self, change: Change) {
        let row = match change.operation {
            Operation::Delete => Row::Delete,
            Operation::Insert | Operation::Update => Row::Set(change.order.get().into()),
        };
        self.push_with(change, row);
    }

    /// Adds a legacy change with the row as the table holds it now (`current`, read by the
    /// caller): the state follows the table, never the payload, so a forged or stale
    /// notification cannot put a row into snapshots.
    pub(crate) fn push_verified(&mut self, change: Change, current: Option<String>) {
        let row = match (change.operation, current) {
            (Operation::Delete, None) => Row::Delete,
            (Operation::Insert | Operation::Update, Some(row)) => Row::Set(row.into()),
            _ => Row::Keep,
        };
        self.push_with(change, row);
    }

    fn push_with(&mut self, change: Change, row: Row) {
        let key = change.row_key();
        let row = if key.is_some() { row } else { Row::Keep };
        let changed_at = change.ts.as_deref().and_then(protocol::timestamp::parse);
        self.entries.push(Entry { id: change.id, changed_at, body: change.to_log_body_rest(), key, row });
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When each change was made (its `ts`), where known.
    pub(crate) fn changed_at(&self) -> impl Iterator<Item = SystemTime> + '_ {
        self.entries.iter().filter_map(|e| e.changed_at)
    }

    /// The outbox event ids in the batch.
    pub(crate) fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.entries.iter().filter_map(|e| e.id)
    }

    /// The appends, borrowing the serialized bodies.
    pub(crate) fn appends(&self) -> Vec<Append<'_>> {
        self.entries
            .iter()
            .map(|e| Append {
                body_rest: &e.body,
                event_id: e.id,
                state: match (&e.key, &e.row) {
                    (Some(field), Row::Set(row)) => StateChange::Set { field, row },
                    (Some(field), Row::Delete) => StateChange::Delete { field },
                    _ => StateChange::None,
                },
            })
            .collect()
    }

    /// `(event id, position)` of the outbox events in the batch, given the position the
    /// append returned for its last entry (positions are consecutive, in batch order).
    pub(crate) fn marks(&self, last: u64) -> impl Iterator<Item = (i64, Option<u64>)> + '_ {
        let first = last + 1 - self.entries.len() as u64;
        self.entries.iter().zip(first..).filter_map(|(e, pos)| Some((e.id?, Some(pos))))
    }
}

#[cfg(test)]
mod tests {
    use protocol::event::{Notification, parse_notification};

    use super::*;

    fn change(payload: &str) -> Change {
        match parse_notification(payload) {
            Ok(Notification::Change(c)) => c,
            other => panic!("not a change: {other:?}"),
        }
    }

    #[test]
    fn positions_follow_batch_order_and_skip_events_without_ids() {
        let mut batch = Batch::default();
        batch.push(change(r#"{"id":7,"table":"orders","operation":"INSERT","order":{"id":1}}"#));
        batch.push_verified(change(r#"{"operation":"INSERT","order":{"id":2}}"#), None);
        batch.push(change(r#"{"id":9,"table":"orders","operation":"DELETE","order":{"id":1}}"#));
        assert_eq!(batch.marks(12).collect::<Vec<_>>(), vec![(7, Some(10)), (9, Some(12))]);
    }

    #[test]
    fn legacy_changes_touch_the_state_only_as_the_table_confirms() {
        let mut batch = Batch::default();
        let forged = change(r#"{"operation":"INSERT","order":{"id":998,"customer_name":"nobody"}}"#);
        batch.push_verified(forged, None);
        let real = change(r#"{"operation":"UPDATE","order":{"id":5,"status":"stale"}}"#);
        batch.push_verified(real, Some(r#"{"id":5,"status":"current"}"#.into()));
        let gone = change(r#"{"operation":"DELETE","order":{"id":6}}"#);
        batch.push_verified(gone, None);
        let appends = batch.appends();
        assert!(matches!(appends[0].state, StateChange::None), "a row the table lacks stays out");
        assert!(matches!(appends[1].state, StateChange::Set { row: r#"{"id":5,"status":"current"}"#, .. }));
        assert!(matches!(appends[2].state, StateChange::Delete { field: "orders:6" }));
    }
}
