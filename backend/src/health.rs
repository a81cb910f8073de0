//! The backend's view of its dependencies, kept fresh in the background so `/health` answers
//! at once from the last results: a slow PostgreSQL never makes a readiness probe time out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::history::History;
use crate::history::HistoryMetrics;
use matchmaking_core::store::Store;

/// How often the dependencies are checked.
const EVERY: Duration = Duration::from_secs(1);
/// How long one check may take before the dependency counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The last results.
pub(crate) struct Health {
    /// The same results as `mp_dependency_up`.
    pub(crate) up: service::metrics::DependencyUp,
    redis: AtomicBool,
    postgres: AtomicBool,
    /// History events waiting for PostgreSQL; -1 when Redis did not say.
    backlog: AtomicI64,
}

/// What a health check needs to reach.
pub(crate) struct Dependencies {
    pub store: Store,
    pub history: History,
    pub metrics: Arc<HistoryMetrics>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            up: service::metrics::DependencyUp::new(&["redis", "postgres"]),
            redis: AtomicBool::default(),
            postgres: AtomicBool::default(),
            backlog: AtomicI64::default(),
        }
    }
}

impl Health {
    /// Every dependency up, as a test's starting point.
    #[cfg(test)]
    pub(crate) fn up() -> Health {
        let health = Health::default();
        health.redis.store(true, Ordering::Relaxed);
        health.postgres.store(true, Ordering::Relaxed);
        health
    }

    /// Checks every dependency now, at once, each within [`CHECK_TIMEOUT`].
    pub(crate) async fn check(&self, deps: &Dependencies) {
        let (redis, postgres, backlog) = tokio::join!(
            timeout(CHECK_TIMEOUT, deps.store.ping()),
            timeout(CHECK_TIMEOUT, deps.history.ping()),
            timeout(CHECK_TIMEOUT, deps.store.outbox_len()),
        );
        let (redis, postgres) = (matches!(redis, Ok(Ok(()))), matches!(postgres, Ok(true)));
        self.redis.store(redis, Ordering::Relaxed);
        self.postgres.store(postgres, Ordering::Relaxed);
        self.up.set("redis", redis);
        self.up.set("postgres", postgres);
        let backlog = match backlog {
            Ok(Ok(n)) => {
                deps.metrics.set_outbox_backlog(n);
                i64::try_from(n).unwrap_or(i64::MAX)
            }
            _ => -1,
        };
        self.backlog.store(backlog, Ordering::Relaxed);
    }

    /// Checks every [`EVERY`] until `stop`.
    pub(crate) async fn run(self: Arc<Self>, deps: Dependencies, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
            self.check(&deps).await;
        }
    }

    pub(crate) fn redis_ok(&self) -> bool {
        self.redis.load(Ordering::Relaxed)
    }

    pub(crate) fn postgres_ok(&self) -> bool {
        self.postgres.load(Ordering::Relaxed)
    }

    pub(crate) fn backlog(&self) -> Option<u64> {
        u64::try_from(self.backlog.load(Ordering::Relaxed)).ok()
    }
}
