//! Snapshots: the current rows at a known position, so that the events after it apply on top
//! with no gap and nothing twice.
//!
//! The state and its position come from one atomic read in Redis. The rows are passed through
//! as the raw JSON Redis holds (no parse into values, no re-encode), each under its table.

use std::time::Duration;

use protocol::log::{Position, Snapshot};
use protocol::store::Conn as RedisConn;
use serde::Serialize;
use serde_json::{Map, Value, value::RawValue};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, warn};

use super::{Conn, End};
use crate::hub::Cursor;

/// How long a snapshot waits for the publisher to seed a new history's state.
const SEED_WAIT: Duration = Duration::from_secs(30);
const SEED_POLL: Duration = Duration::from_millis(50);

impl Conn<'_> {
    /// Sends the state as of a known position for the connection's only subscription; events
    /// after it follow.
    pub(super) async fn snapshot(&mut self, conn: &mut RedisConn) -> Result<(), End> {
        if let Some(position) = self.snapshot_for(conn, 0).await? {
            // The snapshot's rows include every event up to its position.
            let first = position.pos + 1;
            self.jump(position, Some(first));
        }
        Ok(())
    }

    /// Sends subscription `index`'s rows (only those its view holds, with its columns) as of
    /// a known position, and returns the position.
    pub(super) async fn snapshot_for(&mut self, conn: &mut RedisConn, index: usize) -> Result<Option<Cursor>, End> {
        let Some(snap) = self.seeded_snapshot(conn).await? else {
            let error = format!("the state of the new history was not seeded within {SEED_WAIT:?}");
            return Err(self.redis_unavailable(error).await);
        };
        let position = snap.epoch.map(|epoch| Position { epoch, pos: snap.pos });
        let sub = self.subs.get(index);
        let view = sub.map(|s| &s.view).filter(|v| !v.is_everything());
        let mut shaped: Vec<String> = Vec::new();
        let mut rows: Vec<SnapshotRow<'_>> = Vec::with_capacity(snap.rows.len());
        let mut tables: Vec<&str> = Vec::new();
        for (field, row) in &snap.rows {
            let table = field.split_once(':').map_or(field.as_str(), |(table, _)| table);
            match view {
                None => match serde_json::from_str::<&RawValue>(row) {
                    Ok(order) => rows.push(SnapshotRow { table, order }),
                    Err(error) => warn!(field, %error, "state row is not JSON; left out of the snapshot"),
                },
                Some(view) => match serde_json::from_str::<Map<String, Value>>(row) {
                    Ok(order) if view.holds(table, &order) => {
                        shaped.push(serde_json::to_string(&view.project(&order)).expect("rows serialize"));
                        tables.push(table);
                    }
                    Ok(_) => {}
                    Err(error) => warn!(field, %error, "state row is not JSON; left out of the snapshot"),
                },
            }
        }
        for (table, row) in tables.into_iter().zip(&shaped) {
            rows.push(SnapshotRow { table, order: serde_json::from_str(row).expect("just serialized") });
        }
        let id = sub.and_then(|s| s.id.as_deref());
        let frame = serde_json::to_string(&SnapshotFrame { kind: "snapshot", id, position: position.as_ref(), rows })
            .expect("snapshot frames always serialize");
        self.send(Message::Text(frame.into())).await?;
        self.state.stats.snapshots.inc();
        Ok(position.map(Cursor::from))
    }

    /// The state, once the publisher has seeded it for the current epoch.
    ///
    /// A new history (Redis lost its data) starts with an empty state that the publisher fills
    /// from the tables in chunks; a snapshot taken meanwhile would lack rows, so it waits for
    /// `seeded`. `None` when seeding did not finish within [`SEED_WAIT`].
    async fn seeded_snapshot(&mut self, conn: &mut RedisConn) -> Result<Option<Snapshot>, End> {
        let state = self.state;
        let log = &state.history.log;
        let deadline = Instant::now() + SEED_WAIT;
        loop {
            // One atomic read: the rows, their position, and whether seeding is complete.
            let snap = self.redis(log.snapshot(conn).await).await?;
            if snap.epoch.is_none() || snap.seeded {
                return Ok(Some(snap));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            if self.shutdown.is_cancelled() {
                return Err(self.going_away().await);
            }
            debug!(conn_id = self.conn_id, "waiting for the publisher to seed the new history's state");
            tokio::time::sleep(SEED_POLL).await;
        }
    }
}

/// `ServerFrame::Snapshot`, with the rows passed through as the raw JSON Redis holds.
#[derive(Serialize)]
struct SnapshotFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    position: Option<&'a Position>,
    rows: Vec<SnapshotRow<'a>>,
}

#[derive(Serialize)]
struct SnapshotRow<'a> {
    table: &'a str,
    order: &'a RawValue,
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::frames::ServerFrame;

    #[test]
    fn snapshot_frames_read_as_the_protocol_type() {
        let position = Position { epoch: "e".into(), pos: 3 };
        let order = serde_json::from_str::<&RawValue>(r#"{"id":1,"status":"new"}"#).unwrap();
        let frame = SnapshotFrame {
            kind: "snapshot",
            id: None,
            position: Some(&position),
            rows: vec![SnapshotRow { table: "orders", order }],
        };
        let parsed: ServerFrame = serde_json::from_str(&serde_json::to_string(&frame).unwrap()).unwrap();
        assert_eq!(
            parsed,
            ServerFrame::Snapshot {
                id: None,
                position: Some(position),
                rows: vec![protocol::frames::SnapshotRow {
                    table: "orders".into(),
                    order: serde_json::json!({"id":1,"status":"new"})
                }],
            }
        );
    }
}
