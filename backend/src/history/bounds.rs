//! How long the history waits on PostgreSQL, and what it does with a connection it gave up on.

use std::time::Duration;

use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgConnection;

/// How long the history waits on PostgreSQL before it gives up and tries again.
///
/// A replica that stops answering in the middle of a transaction (its node lost power, its
/// network is cut: no FIN reaches PostgreSQL) leaves that transaction open, with its row locks,
/// until TCP keepalive notices, hours later by default. Without a bound every other replica's
/// writer that touches one of those sessions would wait behind it, silently, for as long.
/// With one, PostgreSQL ends the stuck transaction after `idle_in_transaction` (releasing its
/// locks), and a statement waiting on a lock fails after `lock` (SQLSTATE 55P03): the batch
/// stays in the outbox, the failure is logged and counted, and the write is tried again.
///
/// The same can happen the other way round: PostgreSQL's host goes silent (power, a network
/// cut, a failover that moves its address), and a query sent on a connection to it waits for
/// an answer that never comes, for ever if nothing of it is left unacknowledged. So every
/// operation (a batch, a read, a ping) gives up after `answer`, migrations after `migration`,
/// and a connection given up on is closed, never returned to the pool.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub lock: Duration,
    pub idle_in_transaction: Duration,
    pub answer: Duration,
    pub migration: Duration,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            lock: Duration::from_secs(5),
            idle_in_transaction: Duration::from_secs(15),
            answer: Duration::from_secs(30),
            migration: Duration::from_secs(600),
        }
    }
}

impl Bounds {
    /// The `BEGIN` of a bounded transaction: the settings are `SET LOCAL`, so they hold for
    /// that transaction only (and work through a transaction-pooling PgBouncer too).
    pub(super) fn begin(&self) -> String {
        format!(
            "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
            self.lock.as_millis(),
            self.idle_in_transaction.as_millis()
        )
    }
}

/// A pooled connection in use: closed, not returned to the pool, unless the operation on it
/// finished. sqlx returns a connection dropped mid-operation to the pool by pinging it first,
/// and that ping has no bound of its own: on a connection to a silent server it would hold
/// the connection, and its place in the pool, for ever.
pub(super) struct InUse {
    pub(super) conn: PoolConnection<Postgres>,
    pub(super) finished: bool,
}

impl Drop for InUse {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

/// The error of an operation PostgreSQL did not answer in time.
pub(super) fn unanswered(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("PostgreSQL did not answer within {limit:?}"),
    ))
}

/// Bounds the migrating session (see [`History::migrate`]): its lock waits, and how long it may
/// sit idle, in a transaction or not (`idle_session_timeout` is PostgreSQL 14's; older
/// servers skip it). Undone with `RESET ALL`.
pub(super) async fn bound_migrating_session(conn: &mut PgConnection, bounds: &Bounds) -> Result<(), sqlx::Error> {
    let lock = format!("{}ms", bounds.lock.as_millis());
    let idle = format!("{}ms", bounds.idle_in_transaction.as_millis());
    sqlx::query(
        "SELECT set_config('lock_timeout', $1, false),
                set_config('idle_in_transaction_session_timeout', $2, false),
                CASE WHEN current_setting('server_version_num')::int >= 140000
                     THEN set_config('idle_session_timeout', $2, false) END",
    )
    .bind(lock)
    .bind(idle)
    .execute(conn)
    .await
    .map(drop)
}
