//! Open-loop paced writes: write `seq` is due at `start + seq / rate`, whatever happened to
//! the writes before it (a closed loop would slow down with the system and hide its lag).
//! Writes go round-robin over several connections; each is one autocommit statement, so the
//! instant `execute` returns is the instant its COMMIT returned.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use sqlx::{Connection, PgConnection};

use crate::clock::now_ns;
use crate::tag::{Tag, customer, product};
use crate::wire::Write;

/// Which statements a run writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ops {
    /// INSERT only.
    Insert,
    /// UPDATE of one row per writer connection only.
    Update,
    /// INSERT and UPDATE alternately.
    Mixed,
}

/// The writer connections, each with the row it updates.
#[derive(Debug)]
pub struct Writers {
    conns: Vec<(PgConnection, i64)>,
    tag: Tag,
}

/// How one round's writing went.
#[derive(Debug, Clone, Serialize)]
pub struct WriteStats {
    /// Writes attempted.
    pub attempted: u32,
    /// Writes that failed (excluded from what clients should receive).
    pub errors: u32,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Committed writes per second over the round.
    pub per_s: f64,
    /// Largest delay of a write's start behind its schedule, ms: the writers' own lag.
    pub max_behind_ms: f64,
}

impl Writers {
    /// Connects `n` writers and inserts the row each one updates (customer `ob<tag>`, which no
    /// client counts: its product name is not a write's).
    pub async fn connect(database_url: &str, n: usize, tag: Tag) -> Result<Writers> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            let mut conn = tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(database_url))
                .await
                .context("connecting to the database timed out")?
                .context("connecting to the database")?;
            let (id,): (i64,) = sqlx::query_as(
                "INSERT INTO orders (customer_name, product_name, status) VALUES ($1, 'ob:setup', 'pending') RETURNING id::bigint",
            )
            .bind(customer(tag, None))
            .fetch_one(&mut conn)
            .await
            .context("inserting a writer's row (is this a database with the orders table?)")?;
            conns.push((conn, id));
        }
        Ok(Writers { conns, tag })
    }

    /// Writes `rate × duration` rows on schedule; `customers` > 0 spreads them over that many
    /// customers (write `seq` is for customer `seq % customers`).
    pub async fn round(
        &mut self,
        round: u32,
        rate: f64,
        duration: Duration,
        ops: Ops,
        customers: u32,
    ) -> Result<(Vec<Write>, WriteStats)> {
        let total = (rate * duration.as_secs_f64()).round().max(1.0) as u32;
        let nw = self.conns.len() as u32;
        let start = tokio::time::Instant::now() + Duration::from_millis(20);
        let t0 = now_ns();
        let tag = self.tag;
        let mut tasks = Vec::new();
        // One task per connection, so a COMMIT's return is timestamped as soon as it arrives,
        // not when a shared task next polls that writer. Each task hands its connection back.
        for (w, (mut conn, row)) in std::mem::take(&mut self.conns).into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let db = &mut conn;
                let mut out = Vec::new();
                let mut behind = Duration::ZERO;
                let mut first_error = None;
                for seq in (w as u32..total).step_by(nw as usize) {
                    let due = start + Duration::from_secs_f64(f64::from(seq) / rate);
                    tokio::time::sleep_until(due).await;
                    behind = behind.max(tokio::time::Instant::now().saturating_duration_since(due));
                    let cust = if customers > 0 { seq % customers } else { 0 };
                    let name = customer(tag, (customers > 0).then_some(cust));
                    let update = match ops {
                        Ops::Insert => false,
                        Ops::Update => true,
                        Ops::Mixed => seq % 2 == 1,
                    };
                    let result = if update {
                        sqlx::query("UPDATE orders SET customer_name = $1, product_name = $2, status = 'paid' WHERE id = $3::bigint")
                            .bind(name)
                            .bind(product(tag, round, seq))
                            .bind(row)
                            .execute(&mut *db)
                            .await
                    } else {
                        sqlx::query("INSERT INTO orders (customer_name, product_name, status) VALUES ($1, $2, 'pending')")
                            .bind(name)
                            .bind(product(tag, round, seq))
                            .execute(&mut *db)
                            .await
                    };
                    let committed = now_ns();
                    match result {
                        Ok(_) => out.push(Write(seq, cust, committed)),
                        Err(e) => {
                            first_error.get_or_insert_with(|| e.to_string());
                            out.push(Write(seq, cust, 0));
                        }
                    }
                }
                (conn, row, out, behind, first_error)
            }));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(task.await.context("a writer task panicked")?);
        }
        let elapsed_s = (now_ns() - t0) as f64 / 1e9;
        let mut writes = Vec::with_capacity(total as usize);
        let mut stats = WriteStats { attempted: total, errors: 0, first_error: None, per_s: 0.0, max_behind_ms: 0.0 };
        for (conn, row, out, behind, err) in results {
            self.conns.push((conn, row));
            stats.errors += out.iter().filter(|w| w.2 == 0).count() as u32;
            stats.max_behind_ms = stats.max_behind_ms.max(behind.as_secs_f64() * 1e3);
            if stats.first_error.is_none() {
                stats.first_error = err;
            }
            writes.extend(out);
        }
        writes.sort_by_key(|w| w.0);
        stats.per_s = f64::from(total - stats.errors) / elapsed_s.max(1e-9);
        Ok((writes, stats))
    }
}
