//! A writer of realistic load: what the fault tests commit while they break things.

use std::time::Duration;

use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

use crate::Rng;

/// One writer: single and multi-row transactions of inserts, updates and deletes (some roll
/// back), until `stop` turns true; returns how many committed.
pub async fn write_mix(url: String, seed: u64, stop: watch::Receiver<bool>) -> usize {
    let mut rng = Rng(seed);
    let mut conn = PgConnection::connect(&url).await.expect("writer connects");
    let mut committed = 0;
    while !*stop.borrow() {
        let statements = 1 + rng.below(3);
        let mut tx = conn.begin().await.expect("begin");
        let mut ok = true;
        for _ in 0..statements {
            let sql = match rng.below(10) {
                0..=4 => format!(
                    "INSERT INTO orders (customer_name, product_name, status, amount) VALUES ('c{}', 'p{}', 'pending', {})",
                    rng.below(50),
                    rng.below(20),
                    rng.below(1000)
                ),
                5..=7 => format!(
                    "UPDATE orders SET status = '{}', amount = amount + 1 WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)",
                    ["paid", "shipped", "completed"][rng.below(3) as usize]
                ),
                _ => "DELETE FROM orders WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)".to_owned(),
            };
            // Concurrent writers may deadlock on the same rows; such a transaction just fails.
            if sqlx::query(&sql).execute(&mut *tx).await.is_err() {
                ok = false;
                break;
            }
        }
        if ok && rng.below(10) != 0 {
            if tx.commit().await.is_ok() {
                committed += 1;
            }
        } else {
            // Rolled back on purpose (or after an error): must leave no trace downstream.
            let _ = tx.rollback().await;
        }
        tokio::time::sleep(Duration::from_millis(5 + rng.below(20))).await;
    }
    committed
}
