//! The `sql/` migrations, embedded in the binary and applied with sqlx's migrator (which
//! takes an advisory lock, so two publishers starting together apply them once).

use std::borrow::Cow;

use futures_util::FutureExt;

use sqlx::{
    PgConnection,
    error::BoxDynError,
    migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator},
};

/// `(version, description, sql)` of each file in `sql/`, in order. Files are never edited
/// once released: sqlx refuses to start when an applied migration's checksum changes.
const FILES: &[(i64, &str, &str)] = &[
    (1, "orders", include_str!("../../sql/0001_orders.sql")),
    (2, "realtime events", include_str!("../../sql/0002_realtime_events.sql")),
    (3, "notify", include_str!("../../sql/0003_notify.sql")),
    (4, "published marks", include_str!("../../sql/0004_published_marks.sql")),
    (5, "log positions", include_str!("../../sql/0005_log_positions.sql")),
    (6, "capture", include_str!("../../sql/0006_capture.sql")),
    (7, "signed wake-ups", include_str!("../../sql/0007_signed_wakeups.sql")),
];

#[derive(Debug)]
struct Embedded;

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> futures_util::future::BoxFuture<'s, Result<Vec<Migration>, BoxDynError>> {
        let migrations = FILES
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(*version, Cow::Borrowed(description), MigrationType::Simple, Cow::Borrowed(sql), false)
            })
            .collect();
        Box::pin(async move { Ok(migrations) })
    }
}

/// Applies every pending migration on `conn`.
///
/// # Errors
/// The migration that failed, or a changed checksum of an applied one.
pub(crate) async fn apply(conn: &mut PgConnection) -> Result<(), MigrateError> {
    migrator()?.run_direct(conn).await
}

/// Resolving embedded migrations does no I/O, so this completes at once. Kept out of the
/// async fn because `Migrator::new`'s higher-ranked source bound would make callers' futures
/// fail the `Send` check.
fn migrator() -> Result<Migrator, MigrateError> {
    Migrator::new(Embedded).now_or_never().expect("embedded migrations resolve without waiting")
}
