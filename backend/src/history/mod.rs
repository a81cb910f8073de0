//! Match history in PostgreSQL, written from the Redis outbox.
//!
//! The Redis scripts append every lifecycle change to the outbox stream in the same atomic
//! step that makes it, so matching never waits for PostgreSQL and nothing is lost while it is
//! down: a consumer group (one consumer per replica) reads the stream, applies batches in one
//! transaction, and only then acknowledges and deletes the entries. Entries a dead replica had
//! read are claimed by the others after a while. The upserts commute, so events applied out of
//! order or twice converge on the same rows.

mod audit;
mod bounds;
mod metrics;
mod reads;
mod reconcile;
mod rows;
mod settings;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use matchmaking_core::store::Store;
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use time::OffsetDateTime;

pub(crate) use self::audit::NewAction;
pub(crate) use self::bounds::Bounds;
use self::bounds::{InUse, bound_migrating_session, unanswered};
pub(crate) use self::metrics::HistoryMetrics;
pub(crate) use self::reads::{MatchRow, PlayerMatch};
pub use self::settings::HistoryArgs;
pub(crate) use self::writer::WRITER;

/// The history writer and reader.
#[derive(Clone)]
pub(crate) struct History {
    pool: PgPool,
    store: Store,
    consumer: String,
    metrics: Arc<HistoryMetrics>,
    bounds: Bounds,
    /// Whether this process has applied the migrations once (said at info the first time).
    migrated: Arc<AtomicBool>,
}

/// A time in ms since the Unix epoch, as the store keeps them.
pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl History {
    /// A writer for `database_url`. Connects lazily: the backend starts and matches even when
    /// PostgreSQL is down.
    pub(crate) fn new(
        database_url: &str,
        store: Store,
        consumer: &str,
        metrics: Arc<HistoryMetrics>,
    ) -> Result<History, sqlx::Error> {
        History::bounded(database_url, store, consumer, metrics, Bounds::default())
    }

    /// [`History::new`] with other [`Bounds`].
    pub(crate) fn bounded(
        database_url: &str,
        store: Store,
        consumer: &str,
        metrics: Arc<HistoryMetrics>,
        bounds: Bounds,
    ) -> Result<History, sqlx::Error> {
        // PostgreSQL's notices (such as the migrator's "relation already exists, skipping" at
        // every start) are not news: only warnings and errors are sent.
        let options = PgConnectOptions::from_str(database_url)?.options([("client_min_messages", "warning")]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(3))
            .connect_lazy_with(options);
        Ok(History {
            pool,
            store,
            consumer: consumer.to_owned(),
            metrics,
            bounds,
            migrated: Arc::default(),
        })
    }

    /// Runs `op` on a pooled connection for at most `limit` (the pool bounds the acquiring).
    /// `op` answers its result and whether its connection may go back to the pool; it is
    /// closed instead when `op` says no, when `op` timed out here, and when the caller gave up
    /// on this future.
    async fn within<T, E: From<sqlx::Error>>(
        &self,
        limit: Duration,
        op: impl AsyncFnOnce(&mut PoolConnection<Postgres>) -> (Result<T, E>, bool),
    ) -> Result<T, E> {
        let mut in_use = InUse {
            conn: self.pool.acquire().await?,
            finished: false,
        };
        let (result, keep) = tokio::time::timeout(limit, op(&mut in_use.conn))
            .await
            .map_err(|_| unanswered(limit))?;
        in_use.finished = keep;
        result
    }

    /// [`History::within`] for an operation that leaves its connection as it found it.
    async fn answered<T>(
        &self,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        self.within(self.bounds.answer, async |conn: &mut PoolConnection<Postgres>| {
            (op(&mut **conn).await, true)
        })
        .await
    }

    /// Applies the migrations, within the migration bound. Their locks (the migrator's own
    /// advisory lock included) are waited for at most the lock bound: a migration queued
    /// behind long transactions fails this attempt, and the writer tries again. The migrating
    /// session itself may sit idle at most the idle bound, in a transaction or not: the
    /// migrator's lock belongs to the session, so a replica that vanished while migrating (its
    /// connection left open, as when its node drops off the network) would otherwise hold every
    /// other replica's migrations off until TCP keepalive noticed, hours later by default.
    pub(crate) async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        let bounds = self.bounds;
        self.within(bounds.migration, async |conn: &mut PoolConnection<Postgres>| {
            if let Err(e) = bound_migrating_session(conn, &bounds).await {
                return (Err(e.into()), true);
            }
            let migrated = MIGRATOR.run_direct(&mut **conn).await;
            // The connection goes back to the pool only as it came.
            let reset = sqlx::query("RESET ALL").execute(&mut **conn).await.is_ok();
            (migrated, reset)
        })
        .await?;
        // Start-up and the writer (again after each reconnect) both make sure of the schema;
        // the log says it once.
        if !self.migrated.swap(true, Ordering::Relaxed) {
            tracing::info!("history: migrations applied");
        } else {
            tracing::debug!("history: schema up to date");
        }
        Ok(())
    }

    /// Whether PostgreSQL answers (callers bound the wait).
    pub(crate) async fn ping(&self) -> bool {
        self.answered(async |conn: &mut PgConnection| sqlx::query("SELECT 1").execute(conn).await)
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests;
