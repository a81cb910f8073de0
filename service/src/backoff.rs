//! The one retry policy of every retry loop in the workspace.
//!
//! A [`Policy`] names what is retried (its `op`, the label of the retries metric) and bounds the
//! waits: the step starts at the policy's floor and doubles after every failed try up to its
//! cap, and each wait is drawn uniformly from `[step / 2, step]`. The jitter keeps clients that
//! failed together (every replica when Redis restarts, every connection when a session lookup
//! fails) from retrying together; no wait is ever longer than the cap.
//!
//! Each retry is counted in `mp_retries_total{op}` and logged once, here: the loop that retries
//! logs nothing of its own for it. The counter family is the process's; each binary registers
//! it with [`register`], with every op it may retry, so each starts at 0.

use std::fmt::Display;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

/// Every retry of this process, by op.
static RETRIES: LazyLock<Family<OpLabel, Counter>> = LazyLock::new(Family::default);

/// How loud a retry is in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loudness {
    /// `warn`: a dependency failing under a background task.
    Warn,
    /// `debug`: retries on a request's path, many at once in an outage (the request's own
    /// failure is what is logged).
    Debug,
}

/// What is retried and how long the waits between tries may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    op: &'static str,
    floor: Duration,
    cap: Duration,
    loudness: Loudness,
}

impl Policy {
    /// Retries of `op` with steps from `floor`, doubling to `cap` (a `cap` under `floor` is
    /// taken as `floor`).
    pub const fn new(op: &'static str, floor: Duration, cap: Duration) -> Policy {
        Policy {
            op,
            floor,
            cap,
            loudness: Loudness::Warn,
        }
    }

    /// The same policy, logging its retries at `debug`.
    pub const fn quiet(mut self) -> Policy {
        self.loudness = Loudness::Debug;
        self
    }

    /// The same policy from another floor (tests shorten waits this way).
    pub const fn with_floor(mut self, floor: Duration) -> Policy {
        self.floor = floor;
        self
    }

    /// Its label in the retries metric.
    pub const fn op(&self) -> &'static str {
        self.op
    }

    /// The longest wait.
    pub fn cap(&self) -> Duration {
        self.cap.max(self.floor)
    }

    /// A fresh run of retries.
    pub fn start(self) -> Backoff {
        Backoff {
            counter: RETRIES.get_or_create(&OpLabel { op: self.op }).clone(),
            step: self.floor,
            retries: 0,
            policy: self,
        }
    }
}

/// One run of retries under a [`Policy`]: failures since the last success.
#[derive(Debug)]
pub struct Backoff {
    policy: Policy,
    step: Duration,
    retries: u32,
    counter: Counter,
}

impl Backoff {
    /// A try failed with `error` and will be retried: counts and logs the retry and answers
    /// how long to wait before it.
    pub fn retry(&mut self, error: &dyn Display) -> Duration {
        self.retries += 1;
        self.counter.inc();
        let wait = self.next_wait();
        let (op, retry) = (self.policy.op, self.retries);
        match self.policy.loudness {
            Loudness::Warn => tracing::warn!(op, retry, ?wait, %error, "retrying"),
            Loudness::Debug => tracing::debug!(op, retry, ?wait, %error, "retrying"),
        }
        wait
    }

    /// [`Backoff::retry`], then the wait; `false` (at once) when `stop` is cancelled first.
    pub fn pause(
        &mut self,
        error: &dyn Display,
        stop: &CancellationToken,
    ) -> impl Future<Output = bool> + Send + use<> {
        let wait = self.retry(error);
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = stop.cancelled() => false,
                () = tokio::time::sleep(wait) => true,
            }
        }
    }

    /// [`Backoff::retry`], then the wait, whatever happens meanwhile.
    pub fn sleep(&mut self, error: &dyn Display) -> tokio::time::Sleep {
        tokio::time::sleep(self.retry(error))
    }

    /// A try succeeded: the next failure starts again from the floor.
    pub fn reset(&mut self) {
        self.step = self.policy.floor;
        self.retries = 0;
    }

    /// Failed tries since the last success.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// The wait before the next try: uniformly in `[step / 2, step]`; the step doubles, up to
    /// the cap.
    fn next_wait(&mut self) -> Duration {
        let step = self.step.min(self.policy.cap());
        self.step = step.saturating_mul(2).min(self.policy.cap());
        let half = step / 2;
        let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=spread))
    }
}

/// Registers the retries counter in `registry`, each of `policies`' ops at 0 from the start.
pub fn register(registry: &mut Registry, policies: &[Policy]) {
    for policy in policies {
        drop(RETRIES.get_or_create(&OpLabel { op: policy.op }));
    }
    registry.register(
        "mp_retries",
        "Failed tries of an operation that were retried, by operation",
        RETRIES.clone(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_floor_to_the_cap_each_within_its_jitter() {
        let policy = Policy::new("test_doubling", Duration::from_millis(200), Duration::from_secs(10));
        for _ in 0..50 {
            let mut backoff = policy.start();
            let steps = [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000];
            for step in steps {
                let wait = backoff.retry(&"failed").as_millis();
                assert!(
                    (step / 2..=step).contains(&wait),
                    "a wait of {wait} ms for a step of {step} ms"
                );
            }
        }
    }

    #[test]
    fn waits_are_spread_not_all_the_same() {
        let policy = Policy::new("test_spread", Duration::from_secs(1), Duration::from_secs(1));
        let waits: std::collections::BTreeSet<Duration> = (0..20).map(|_| policy.start().retry(&"x")).collect();
        assert!(waits.len() > 10, "{waits:?}");
    }

    #[test]
    fn a_success_starts_the_next_failures_from_the_floor() {
        let mut backoff = Policy::new("test_reset", Duration::from_millis(100), Duration::from_secs(5)).start();
        for _ in 0..6 {
            backoff.retry(&"x");
        }
        assert_eq!(backoff.retries(), 6);
        backoff.reset();
        assert_eq!(backoff.retries(), 0);
        assert!(backoff.retry(&"x") <= Duration::from_millis(100));
    }

    #[test]
    fn every_op_is_counted_from_zero_and_each_retry_once() {
        let a = Policy::new("test_counted_a", Duration::from_millis(1), Duration::from_millis(2));
        let b = Policy::new("test_counted_b", Duration::from_millis(1), Duration::from_millis(2));
        let mut registry = Registry::default();
        register(&mut registry, &[a, b]);
        let text = crate::metrics::render(&registry);
        assert!(text.contains("mp_retries_total{op=\"test_counted_a\"} 0"), "{text}");
        assert!(text.contains("mp_retries_total{op=\"test_counted_b\"} 0"), "{text}");
        let mut backoff = a.start();
        backoff.retry(&"x");
        backoff.retry(&"x");
        let text = crate::metrics::render(&registry);
        assert!(text.contains("mp_retries_total{op=\"test_counted_a\"} 2"), "{text}");
        assert!(text.contains("mp_retries_total{op=\"test_counted_b\"} 0"), "{text}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_ends_at_once_when_stopped() {
        let stop = CancellationToken::new();
        let mut backoff = Policy::new("test_pause", Duration::from_secs(60), Duration::from_secs(60)).start();
        let started = tokio::time::Instant::now();
        assert!(backoff.pause(&"x", &stop).await, "waited it out");
        assert!(started.elapsed() >= Duration::from_secs(30));
        stop.cancel();
        let started = tokio::time::Instant::now();
        assert!(!backoff.pause(&"x", &stop).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
