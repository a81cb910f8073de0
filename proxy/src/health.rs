//! The proxy's view of Redis and the backend, kept fresh in the background so `/health`
//! answers at once from the last results.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::Context;

/// How often the dependencies are checked.
const EVERY: Duration = Duration::from_secs(1);
/// How long one check may take before the dependency counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// The last results.
#[derive(Default)]
pub(crate) struct Health {
    redis: AtomicBool,
    backend: AtomicBool,
}

impl Health {
    /// Checks Redis (session records: every game connection needs them) and the backend's
    /// own readiness, at once.
    pub(crate) async fn check(&self, ctx: &Context) {
        let mut conn = ctx.redis.conn();
        let ping = redis::cmd("PING");
        let (redis, backend) = tokio::join!(
            timeout(CHECK_TIMEOUT, ping.query_async::<String>(&mut conn)),
            timeout(
                CHECK_TIMEOUT,
                ctx.backend.request(crate::http::backend_request(ctx, "/health"))
            ),
        );
        let (redis, backend) = (
            matches!(redis, Ok(Ok(_))),
            // Reachable: any answer. A backend that answers 503 (Redis down, or draining) is
            // up; the proxy's own Redis check says what is down.
            matches!(backend, Ok(Ok(_))),
        );
        self.redis.store(redis, Ordering::Relaxed);
        self.backend.store(backend, Ordering::Relaxed);
        ctx.metrics.dependencies.set("redis", redis);
        ctx.metrics.dependencies.set("backend", backend);
    }

    pub(crate) fn redis_ok(&self) -> bool {
        self.redis.load(Ordering::Relaxed)
    }

    pub(crate) fn backend_ok(&self) -> bool {
        self.backend.load(Ordering::Relaxed)
    }
}

/// Checks every [`EVERY`] until `stop`.
pub(crate) async fn run(ctx: Arc<Context>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
        ctx.health.check(&ctx).await;
    }
}
