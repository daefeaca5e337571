//! The outbox queries: read unpublished events in id order, mark them published, prune, and
//! take the consistent table snapshot that seeds a new history's state.
//!
//! They run on the publisher's PostgreSQL session (the `PgListener` connection doubles as an
//! executor; notifications that arrive during a query are buffered by sqlx, not lost).

use std::time::Duration;

use sqlx::{Row, postgres::PgListener};

/// Unpublished events, oldest id first: `(id, change JSON)`.
///
/// Rows of transactions not yet committed are invisible here and picked up by a later call, so
/// a transaction that took its id early and committed late is never skipped.
pub(crate) async fn unpublished(conn: &mut PgListener, limit: usize) -> sqlx::Result<Vec<(i64, String)>> {
    sqlx::query("SELECT id, payload::text FROM realtime_events WHERE published_at IS NULL ORDER BY id LIMIT $1")
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect()
}

/// Marks events as published (they are in the Redis log).
pub(crate) async fn mark_published(conn: &mut PgListener, ids: &[i64]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("UPDATE realtime_events SET published_at = clock_timestamp() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut *conn)
        .await?;
    Ok(())
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

/// The rows of `tables` as `(<table>:<id>, row JSON)`, read in one REPEATABLE READ snapshot
/// that also marks every event visible in it as published: those changes are already in the
/// rows, so a new history starts from this state and continues with later events only.
pub(crate) async fn snapshot(conn: &mut PgListener, tables: &[String]) -> sqlx::Result<Vec<(String, String)>> {
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ").execute(&mut *conn).await?;
    let result = async {
        let mut rows = Vec::new();
        for table in tables {
            // Table names are validated at startup (a-z, 0-9, _); quote them anyway.
            let sql = format!(
                "SELECT $1 || ':' || (row_to_json(t)->>'id'), row_to_json(t)::text FROM \"{table}\" t
                 WHERE row_to_json(t)->>'id' IS NOT NULL"
            );
            for row in sqlx::query(&sql).bind(table).fetch_all(&mut *conn).await? {
                rows.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        sqlx::query("UPDATE realtime_events SET published_at = clock_timestamp() WHERE published_at IS NULL")
            .execute(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>(rows)
    }
    .await;
    match result {
        Ok(rows) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(rows)
        }
        Err(e) => {
            // The session is about to be dropped on this error anyway; roll back politely.
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}
