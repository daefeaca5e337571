//! The outbox queries: read unpublished events in id order, mark them published (with the
//! log position they were appended at), prune, and the reads that start a new history in one
//! consistent snapshot (the previous history's newest events, the backlog, the tables).
//!
//! They run on the publisher's PostgreSQL session (the `PgListener` connection doubles as an
//! executor; notifications that arrive during a query are buffered by sqlx, not lost).

use std::time::Duration;

use protocol::signed::NotifyKey;
use sqlx::{PgExecutor, Row, postgres::PgListener};

/// Unpublished events, oldest id first: `(id, change JSON)`.
///
/// Rows of transactions not yet committed are invisible here and picked up by a later call, so
/// a transaction that took its id early and committed late is never skipped.
///
/// This and the other statements that run once per second or less are unnamed, planned with the
/// outbox as it is at each call: a cached generic plan from when the table was small scans all
/// of it if the table grows without an analyze (see [`mark_published`]).
pub(crate) async fn unpublished(conn: &mut PgListener, limit: usize) -> sqlx::Result<Vec<(i64, String)>> {
    sqlx::query("SELECT id, payload::text FROM realtime_events WHERE published_at IS NULL ORDER BY id LIMIT $1")
        .persistent(false)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// The trigger's signing key (`protocol::signed`), if the migration made one and this
/// session's role may read it.
pub(crate) async fn notify_key(pg: &mut PgListener) -> sqlx::Result<Option<NotifyKey>> {
    let readable: Option<bool> = sqlx::query_scalar(
        "SELECT to_regclass('realtime_notify_key') IS NOT NULL
                AND has_table_privilege('realtime_notify_key', 'SELECT')",
    )
    .persistent(false)
    .fetch_one(&mut *pg)
    .await?;
    if readable != Some(true) {
        return Ok(None);
    }
    let key: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as("SELECT inner_key, outer_key FROM realtime_notify_key")
        .persistent(false)
        .fetch_optional(&mut *pg)
        .await?;
    Ok(key.map(|(inner, outer)| NotifyKey::new(&inner, &outer)))
}

/// The newest outbox id committed (0 for none): the floor of what a session may append
/// without a read (see `active`'s `Unread`).
pub(crate) async fn newest_id(conn: &mut PgListener) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM realtime_events").persistent(false).fetch_one(conn).await
}

/// The events among `ids` (notified ones), in no particular order: `(id, change JSON)`, the
/// change `None` when the event is published already. An id without a visible row is left out.
///
/// One id (each notification, at a steady rate) is read with `id = $1`: that statement's generic
/// plan is the primary key's index scan, which PostgreSQL caches after five runs. `id = ANY($1)`
/// costs less as a custom plan than as its generic one, so it is planned again at every bind:
/// about 0.13 ms of PostgreSQL's CPU before each event's read on this machine, on the path from
/// COMMIT to the client (docs/benchmarks.md, "Query plans on the event path"). Batches keep
/// `ANY`: one plan per batch.
pub(crate) async fn events_of(conn: &mut PgListener, ids: &[i64]) -> sqlx::Result<Vec<(i64, Option<String>)>> {
    let query = match ids {
        [id] => sqlx::query(
            "SELECT id, CASE WHEN published_at IS NULL THEN payload::text END FROM realtime_events WHERE id = $1",
        )
        .bind(*id),
        _ => sqlx::query(
            "SELECT id, CASE WHEN published_at IS NULL THEN payload::text END FROM realtime_events WHERE id = ANY($1)",
        )
        .bind(ids),
    };
    query.fetch_all(&mut *conn).await?.into_iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
}

/// Marks events as published (they are in the Redis log), recording the position each was
/// appended at in history `epoch` (`None`: not appended, e.g. a row that is not a change).
///
/// One mark (each event, at a steady rate) is an `UPDATE … WHERE id = $2`, whose cached generic
/// plan is the index scan. A batch joins `unnest` of the arrays as an unnamed statement, planned
/// with the arrays it is given: a named one's cached generic plan, made while the table was
/// small or never analyzed (`reltuples` -1, as with autovacuum off), is a hash join over a
/// sequential scan of the whole outbox, at every mark, as the table grows (1.5–3.5 ms each
/// at 9,000 rows, measured).
pub(crate) async fn mark_published<C>(conn: &mut C, epoch: &str, marks: &[(i64, Option<u64>)]) -> sqlx::Result<()>
where
    for<'c> &'c mut C: PgExecutor<'c>,
{
    if let [(id, pos)] = marks {
        sqlx::query(
            "UPDATE realtime_events
             SET published_at = clock_timestamp(),
                 log_epoch = CASE WHEN $3::int8 IS NULL THEN NULL ELSE $1 END,
                 log_pos = $3
             WHERE id = $2",
        )
        .bind(epoch)
        .bind(*id)
        .bind(pos.map(|p| p as i64))
        .execute(&mut *conn)
        .await?;
        return Ok(());
    }
    // Bounded statements: a new history may mark a whole backlog at once.
    for chunk in marks.chunks(10_000) {
        let ids: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
        let positions: Vec<Option<i64>> = chunk.iter().map(|(_, pos)| pos.map(|p| p as i64)).collect();
        sqlx::query(
            "UPDATE realtime_events e
             SET published_at = clock_timestamp(),
                 log_epoch = CASE WHEN m.pos IS NULL THEN NULL ELSE $1 END,
                 log_pos = m.pos
             FROM unnest($2::int8[], $3::int8[]) AS m(id, pos)
             WHERE e.id = m.id",
        )
        .persistent(false)
        .bind(epoch)
        .bind(ids)
        .bind(positions)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The newest position the outbox recorded for history `epoch`, if any. More than Redis holds
/// means Redis came back with less than was appended (restored from an older save).
pub(crate) async fn recorded_head(conn: &mut PgListener, epoch: &str) -> sqlx::Result<Option<u64>> {
    let pos: Option<i64> = sqlx::query_scalar("SELECT max(log_pos) FROM realtime_events WHERE log_epoch = $1")
        .persistent(false)
        .bind(epoch)
        .fetch_one(&mut *conn)
        .await?;
    Ok(pos.map(|p| p as u64))
}

/// Deletes published rows older than `retention`, and beyond the newest `max_rows` published,
/// in batches of 1000 (at most 20 per call, so a large backlog never holds the session long).
/// Returns how many were deleted.
pub(crate) async fn prune(conn: &mut PgListener, retention: Duration, max_rows: usize) -> sqlx::Result<u64> {
    let mut deleted = 0;
    for _ in 0..20 {
        let n = sqlx::query(
            "DELETE FROM realtime_events WHERE id IN (
                 SELECT id FROM realtime_events
                 WHERE published_at IS NOT NULL
                   AND (published_at < clock_timestamp() - make_interval(secs => $1)
                        OR id <= (SELECT id FROM realtime_events WHERE published_at IS NOT NULL
                                  ORDER BY id DESC OFFSET $2 LIMIT 1))
                 ORDER BY id LIMIT 1000)",
        )
        .persistent(false)
        .bind(retention.as_secs_f64())
        .bind(max_rows as i64)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        deleted += n;
        if n < 1000 {
            break;
        }
    }
    Ok(deleted)
}

/// The history the most recently published events were appended to, if any.
pub(crate) async fn previous_epoch(conn: &mut PgListener) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT log_epoch FROM realtime_events
         WHERE published_at IS NOT NULL AND log_epoch IS NOT NULL
         ORDER BY published_at DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await
}

/// The newest `limit` positions recorded for history `epoch`, newest first.
pub(crate) async fn recorded_positions(conn: &mut PgListener, epoch: &str, limit: usize) -> sqlx::Result<Vec<u64>> {
    let positions: Vec<i64> = sqlx::query_scalar(
        "SELECT log_pos FROM realtime_events WHERE log_epoch = $1 AND log_pos IS NOT NULL
         ORDER BY log_pos DESC LIMIT $2",
    )
    .bind(epoch)
    .bind(limit as i64)
    .fetch_all(&mut *conn)
    .await?;
    Ok(positions.into_iter().map(|p| p as u64).collect())
}

/// One REPEATABLE READ snapshot of the outbox and the tables, in which a new history is built:
/// whatever it reads (the previous history's newest events, the backlog, the rows) is one
/// moment of the database, so the seeded state is exactly the tables after those events.
pub(crate) struct Snapshot<'c> {
    conn: &'c mut PgListener,
}

impl<'c> Snapshot<'c> {
    pub(crate) async fn begin(conn: &'c mut PgListener) -> sqlx::Result<Self> {
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ").execute(&mut *conn).await?;
        Ok(Self { conn })
    }

    /// The connection, for statements that belong in the snapshot's transaction.
    pub(crate) fn conn(&mut self) -> &mut PgListener {
        self.conn
    }

    /// The events recorded at positions `from..=to` of history `epoch`, in position order:
    /// `(position, id, change JSON)`.
    pub(crate) async fn recorded_range(
        &mut self,
        epoch: &str,
        from: u64,
        to: u64,
    ) -> sqlx::Result<Vec<(u64, i64, String)>> {
        sqlx::query(
            "SELECT log_pos, id, payload::text FROM realtime_events
             WHERE log_epoch = $1 AND log_pos BETWEEN $2 AND $3 ORDER BY log_pos",
        )
        .bind(epoch)
        .bind(from as i64)
        .bind(to as i64)
        .fetch_all(&mut *self.conn)
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get::<i64, _>(0)? as u64, row.try_get(1)?, row.try_get(2)?)))
        .collect()
    }

    /// Up to `limit` unpublished events with ids above `after`, oldest id first. Paging by
    /// id is exact here: the snapshot does not change between pages.
    pub(crate) async fn unpublished_after(&mut self, after: i64, limit: usize) -> sqlx::Result<Vec<(i64, String)>> {
        sqlx::query(
            "SELECT id, payload::text FROM realtime_events WHERE published_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit as i64)
        .fetch_all(&mut *self.conn)
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
    }

    /// The rows of `tables` as `(<table>:<id>, row JSON)`.
    pub(crate) async fn rows(&mut self, tables: &[String]) -> sqlx::Result<Vec<(String, String)>> {
        let mut rows = Vec::new();
        for table in tables {
            // Table names are validated at startup (a-z, 0-9, _); quote them anyway.
            let sql = format!(
                "SELECT $1 || ':' || (row_to_json(t)->>'id'), row_to_json(t)::text FROM \"{table}\" t
                 WHERE row_to_json(t)->>'id' IS NOT NULL"
            );
            for row in sqlx::query(&sql).bind(table).fetch_all(&mut *self.conn).await? {
                rows.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        Ok(rows)
    }

    pub(crate) async fn commit(self) -> sqlx::Result<()> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        Ok(())
    }

    pub(crate) async fn rollback(self) {
        // On an error path: the session is dropped if the connection is broken anyway.
        let _ = sqlx::query("ROLLBACK").execute(&mut *self.conn).await;
    }
}

/// The current row of a legacy change (`table:id`), read to verify what a legacy payload
/// claims before it touches the snapshot state: `None` when no such row exists.
pub(crate) async fn current_row(conn: &mut PgListener, table: &str, id: &str) -> sqlx::Result<Option<String>> {
    // Table names come from the config's validated list (a-z, 0-9, _); quoted anyway.
    let sql = format!("SELECT row_to_json(t)::text FROM \"{table}\" t WHERE (row_to_json(t)->>'id') = $1");
    sqlx::query_scalar(&sql).bind(id).fetch_optional(&mut *conn).await
}
