//! The sessions' metrics: ends by reason, the sessions this replica supervises by state, time
//! from join to a ready server, and server start times. Registered by the part, every known
//! series at 0 from the start; the per-state gauges move only through
//! [`service::metrics::GaugeGuard`]s, so they cannot drift.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use protocol::api::EndReason;
use service::metrics::{GaugeGuard, latency_histogram};

use crate::operators::window::Window;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Why a server did not start, as `mp_server_start_failures_total` counts it.
const START_FAILURES: [&str; 3] = ["timeout", "exited", "spawn"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    profile: String,
    version: String,
}

/// A state of the sessions this replica supervises, as `mp_sessions` counts them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Supervised {
    Allocating,
    Matched,
}

impl Supervised {
    fn label(self) -> &'static str {
        match self {
            Supervised::Allocating => "allocating",
            Supervised::Matched => "matched",
        }
    }
}

/// The sessions' metrics.
pub(crate) struct SessionsMetrics {
    ended: Family<ReasonLabel, Counter>,
    supervised: Family<StateLabel, Gauge>,
    join_to_matched: Family<QueueLabel, Histogram, fn() -> Histogram>,
    server_start: Histogram,
    start_failures: Family<ReasonLabel, Counter>,
    version_sessions: Family<VersionLabel, Counter>,
    /// The same events, counted for operators across replicas.
    window: Arc<Window>,
}

impl Default for SessionsMetrics {
    fn default() -> Self {
        SessionsMetrics::new(&[], Arc::default())
    }
}

impl SessionsMetrics {
    /// The metrics, every reason, state and each of `queues`' series at 0.
    pub(crate) fn new(queues: &[&str], window: Arc<Window>) -> SessionsMetrics {
        let metrics = SessionsMetrics {
            ended: Family::default(),
            supervised: Family::default(),
            join_to_matched: Family::new_with_constructor(latency_histogram),
            server_start: latency_histogram(),
            start_failures: Family::default(),
            version_sessions: Family::default(),
            window,
        };
        for reason in START_FAILURES {
            drop(metrics.start_failures.get_or_create(&ReasonLabel { reason }));
        }
        for reason in EndReason::ALL {
            drop(metrics.ended.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            }));
        }
        for state in [Supervised::Allocating, Supervised::Matched] {
            drop(metrics.supervised.get_or_create(&StateLabel { state: state.label() }));
        }
        for queue in queues {
            drop(metrics.join_to_matched.get_or_create(&QueueLabel {
                queue: (*queue).to_owned(),
            }));
        }
        metrics
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "mp_sessions_ended",
            "Sessions ended through this replica, by reason",
            self.ended.clone(),
        );
        registry.register(
            "mp_sessions",
            "Sessions supervised by this replica, by state",
            self.supervised.clone(),
        );
        registry.register(
            "mp_join_to_matched_seconds",
            "Time from a player's join to a ready server, by queue",
            self.join_to_matched.clone(),
        );
        registry.register(
            "mp_server_start_seconds",
            "Time for a game server to become ready",
            self.server_start.clone(),
        );
        registry.register(
            "mp_server_start_failures",
            "Game servers that did not start (their players went back to the head of the queue), by reason: timeout (not ready in time), exited (before it was ready), spawn (could not be started: the runtime refused)",
            self.start_failures.clone(),
        );
        registry.register(
            "mp_version_sessions",
            "Sessions whose server started on each version of a profile with versions (the split of the weights)",
            self.version_sessions.clone(),
        );
    }

    /// Every version of every profile with versions, at 0.
    pub(crate) fn known_versions(&self, profiles: &crate::runtime::profiles::Profiles) {
        for profile in profiles.iter() {
            for version in &profile.versions {
                drop(self.version_sessions.get_or_create(&VersionLabel {
                    profile: profile.name.clone(),
                    version: version.name.clone(),
                }));
            }
        }
    }

    /// Counts a session whose server started on a version of its profile.
    pub(crate) fn version_started(&self, profile: &crate::runtime::profiles::Profile) {
        if let Some(version) = &profile.version {
            self.version_sessions
                .get_or_create(&VersionLabel {
                    profile: profile.name.clone(),
                    version: version.clone(),
                })
                .inc();
        }
    }

    /// Counts an ended session by reason.
    pub(crate) fn session_ended(&self, reason: EndReason) {
        self.ended
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
        if reason == EndReason::Failed {
            self.window.failed();
        }
    }

    /// Counts a supervised session as being in `state` while the guard lives.
    pub(crate) fn supervised(&self, state: Supervised) -> GaugeGuard {
        GaugeGuard::new(&self.supervised.get_or_create(&StateLabel { state: state.label() }))
    }

    /// Records how long a player of `queue` waited from join to a ready server.
    pub(crate) fn join_to_matched(&self, queue: &str, waited: Duration) {
        self.join_to_matched
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .observe(waited.as_secs_f64());
        self.window.time_to_play(queue, waited);
    }

    /// Counts a server that did not start.
    pub(crate) fn server_start_failed(&self, error: &crate::runtime::StartError) {
        let reason = match error {
            crate::runtime::StartError::Timeout(_) => START_FAILURES[0],
            crate::runtime::StartError::Exited(_) => START_FAILURES[1],
            crate::runtime::StartError::Spawn(_) => START_FAILURES[2],
        };
        self.start_failures.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Records how long a server took to become ready.
    pub(crate) fn server_start(&self, took: Duration) {
        self.server_start.observe(took.as_secs_f64());
    }
}
