//! The backend's Prometheus metrics, exposed at `/metrics` through `prometheus-client`.
//!
//! Counters and histograms are lock-free or hold a lock only to record; the per-state session
//! gauges move only through [`service::metrics::GaugeGuard`]s, so they cannot drift.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use protocol::api::EndReason;
use service::metrics::{GaugeGuard, latency_histogram};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SizeLabel {
    size: usize,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

/// What happened to a join, as `mp_joins_total` counts it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JoinResult {
    Queued,
    AlreadyQueued,
    InSession,
    Cancelled,
}

/// A state of the sessions this replica supervises, as `mp_sessions` counts them.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Supervised {
    Allocating,
    Matched,
}

/// Every metric the backend exports.
pub(crate) struct Metrics {
    /// Parts register their own metrics into it at start (the warm pool); held to render.
    registry: Mutex<Registry>,
    joins: Family<ResultLabel, Counter>,
    sessions_formed: Family<SizeLabel, Counter>,
    sessions_ended: Family<ReasonLabel, Counter>,
    sessions: Family<StateLabel, Gauge>,
    queue_depth: Family<QueueLabel, Gauge>,
    timed_out: Family<QueueLabel, Counter>,
    skill_spread: Family<QueueLabel, Histogram, fn() -> Histogram>,
    team_skill_gap: Family<QueueLabel, Histogram, fn() -> Histogram>,
    max_latency: Family<QueueLabel, Histogram, fn() -> Histogram>,
    outbox_backlog: Gauge,
    history_written: Counter,
    history_failures: Counter,
    history_lost: Counter,
    join_to_matched: Family<QueueLabel, Histogram, fn() -> Histogram>,
    server_start: Histogram,
    http: Family<HttpLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(&[], &[])
    }
}

impl Metrics {
    /// Every metric, each with known labels at 0 from the start (so rates and alerts have
    /// something to read before the first event): `retries`, the retry policies of the parts;
    /// `queues`, the queues' names.
    pub(crate) fn new(retries: &[service::backoff::Policy], queues: &[&str]) -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            joins: Family::default(),
            sessions_formed: Family::default(),
            sessions_ended: Family::default(),
            sessions: Family::default(),
            queue_depth: Family::default(),
            timed_out: Family::default(),
            skill_spread: Family::new_with_constructor(skill_histogram),
            team_skill_gap: Family::new_with_constructor(skill_histogram),
            max_latency: Family::new_with_constructor(latency_ms_histogram),
            outbox_backlog: Gauge::default(),
            history_written: Counter::default(),
            history_failures: Counter::default(),
            history_lost: Counter::default(),
            join_to_matched: Family::new_with_constructor(latency_histogram),
            server_start: latency_histogram(),
            http: Family::new_with_constructor(latency_histogram),
            registry: Mutex::new(Registry::default()),
        };
        registry.register("mp_joins", "Join requests by result", metrics.joins.clone());
        registry.register(
            "mp_sessions_formed",
            "Sessions formed by this replica, by size",
            metrics.sessions_formed.clone(),
        );
        registry.register(
            "mp_sessions_ended",
            "Sessions ended through this replica, by reason",
            metrics.sessions_ended.clone(),
        );
        registry.register(
            "mp_sessions",
            "Sessions supervised by this replica, by state",
            metrics.sessions.clone(),
        );
        registry.register(
            "mp_queue_depth",
            "Tickets waiting in each queue (all replicas)",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "mp_tickets_timed_out",
            "Tickets that waited their queue's max_wait_seconds, by queue",
            metrics.timed_out.clone(),
        );
        registry.register(
            "mp_session_skill_spread",
            "Skill spread (max - min) of the sessions this replica formed, by queue",
            metrics.skill_spread.clone(),
        );
        registry.register(
            "mp_session_team_skill_gap",
            "Gap between the strongest and weakest team's total skill, by queue",
            metrics.team_skill_gap.clone(),
        );
        registry.register(
            "mp_session_max_latency_ms",
            "Worst player latency to the chosen region of the sessions formed, by queue",
            metrics.max_latency.clone(),
        );
        registry.register(
            "mp_history_outbox_backlog",
            "History events not yet written to PostgreSQL",
            metrics.outbox_backlog.clone(),
        );
        registry.register(
            "mp_history_events_written",
            "History events written to PostgreSQL",
            metrics.history_written.clone(),
        );
        registry.register(
            "mp_history_write_failures",
            "Failed history write attempts (retried)",
            metrics.history_failures.clone(),
        );
        registry.register(
            "mp_history_lost_sessions",
            "History rows ended `lost`: their session was gone from Redis",
            metrics.history_lost.clone(),
        );
        registry.register(
            "mp_join_to_matched_seconds",
            "Time from a player's join to a ready server, by queue",
            metrics.join_to_matched.clone(),
        );
        registry.register(
            "mp_server_start_seconds",
            "Time for a game server to become ready",
            metrics.server_start.clone(),
        );
        registry.register(
            "mp_http_request_duration_seconds",
            "HTTP requests by method, route and status",
            metrics.http.clone(),
        );
        for state in [Supervised::Allocating, Supervised::Matched] {
            drop(metrics.sessions.get_or_create(&StateLabel { state: state.label() }));
        }
        for result in JoinResult::ALL {
            drop(metrics.joins.get_or_create(&ResultLabel { result: result.label() }));
        }
        for reason in EndReason::ALL {
            drop(metrics.sessions_ended.get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            }));
        }
        for queue in queues {
            let label = QueueLabel {
                queue: (*queue).to_owned(),
            };
            drop(metrics.queue_depth.get_or_create(&label));
            drop(metrics.timed_out.get_or_create(&label));
            for family in [
                &metrics.skill_spread,
                &metrics.team_skill_gap,
                &metrics.max_latency,
                &metrics.join_to_matched,
            ] {
                drop(family.get_or_create(&label));
            }
        }
        service::backoff::register(&mut registry, retries);
        Metrics {
            registry: Mutex::new(registry),
            ..metrics
        }
    }
}

/// Buckets for skill spreads and gaps (skill points).
fn skill_histogram() -> Histogram {
    Histogram::new([0.0, 10.0, 25.0, 50.0, 100.0, 150.0, 200.0, 300.0, 450.0, 600.0, 1000.0])
}

/// Buckets for latencies in milliseconds.
fn latency_ms_histogram() -> Histogram {
    Histogram::new([10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 300.0, 500.0])
}

impl JoinResult {
    const ALL: [JoinResult; 4] = [
        JoinResult::Queued,
        JoinResult::AlreadyQueued,
        JoinResult::InSession,
        JoinResult::Cancelled,
    ];

    fn label(self) -> &'static str {
        match self {
            JoinResult::Queued => "queued",
            JoinResult::AlreadyQueued => "already_queued",
            JoinResult::InSession => "in_session",
            JoinResult::Cancelled => "cancelled",
        }
    }
}

impl Supervised {
    fn label(self) -> &'static str {
        match self {
            Supervised::Allocating => "allocating",
            Supervised::Matched => "matched",
        }
    }
}

impl Metrics {
    /// Counts a join by what happened to it.
    pub(crate) fn join(&self, result: JoinResult) {
        self.joins.get_or_create(&ResultLabel { result: result.label() }).inc();
    }

    /// Counts a formed session by its size.
    pub(crate) fn session_formed(&self, size: usize) {
        self.sessions_formed.get_or_create(&SizeLabel { size }).inc();
    }

    /// Counts an ended session by reason.
    pub(crate) fn session_ended(&self, reason: EndReason) {
        self.sessions_ended
            .get_or_create(&ReasonLabel {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts a supervised session as being in `state` while the guard lives.
    pub(crate) fn supervised(&self, state: Supervised) -> GaugeGuard {
        GaugeGuard::new(&self.sessions.get_or_create(&StateLabel { state: state.label() }))
    }

    pub(crate) fn set_queue_depth(&self, queue: &str, depth: u64) {
        self.queue_depth
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Counts tickets of `queue` that timed out.
    pub(crate) fn timed_out(&self, queue: &str, tickets: usize) {
        self.timed_out
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .inc_by(tickets as u64);
    }

    /// Records a formed session's quality.
    pub(crate) fn session_quality(&self, placement: &protocol::sessions::Placement) {
        let label = QueueLabel {
            queue: placement.queue.clone().unwrap_or_default(),
        };
        for (family, value) in [
            (&self.skill_spread, placement.skill_spread),
            (&self.team_skill_gap, placement.team_skill_gap),
            (&self.max_latency, placement.max_latency_ms),
        ] {
            if let Some(value) = value {
                family.get_or_create(&label).observe(value);
            }
        }
    }

    pub(crate) fn set_outbox_backlog(&self, backlog: u64) {
        self.outbox_backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }

    pub(crate) fn history_written(&self, events: usize) {
        self.history_written.inc_by(events as u64);
    }

    pub(crate) fn history_failed(&self) {
        self.history_failures.inc();
    }

    pub(crate) fn history_lost(&self, rows: u64) {
        self.history_lost.inc_by(rows);
    }

    /// Records how long a player of `queue` waited from join to a ready server.
    pub(crate) fn join_to_matched(&self, queue: &str, waited: Duration) {
        self.join_to_matched
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .observe(waited.as_secs_f64());
    }

    /// Records how long a server took to become ready.
    pub(crate) fn server_start(&self, took: Duration) {
        self.server_start.observe(took.as_secs_f64());
    }

    /// Records one HTTP request.
    pub(crate) fn http(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .observe(took.as_secs_f64());
    }

    /// The text exposition format, with the warm pool as `warm` says it is now (nothing of
    /// it when the replica keeps no pool).
    /// Lets a part register the metrics it owns.
    pub(crate) fn register(&self, part: impl FnOnce(&mut Registry)) {
        part(&mut self.registry.lock().expect("registry lock"));
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        service::metrics::render(&self.registry.lock().expect("registry lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_with_known_labels_exists_at_zero_from_the_start() {
        let policy = service::backoff::Policy::new("test_op", Duration::from_millis(1), Duration::from_millis(2));
        let text = Metrics::new(&[policy], &["default", "ranked"]).render();
        for line in [
            "mp_joins_total{result=\"queued\"} 0",
            "mp_joins_total{result=\"cancelled\"} 0",
            "mp_sessions_ended_total{reason=\"completed\"} 0",
            "mp_sessions_ended_total{reason=\"lost\"} 0",
            "mp_sessions{state=\"matched\"} 0",
            "mp_queue_depth{queue=\"ranked\"} 0",
            "mp_tickets_timed_out_total{queue=\"default\"} 0",
            "mp_join_to_matched_seconds_count{queue=\"ranked\"} 0",
            "mp_session_skill_spread_count{queue=\"ranked\"} 0",
            "mp_retries_total{op=\"test_op\"} 0",
            "mp_history_events_written_total 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn renders_counters_gauges_and_cumulative_buckets() {
        let m = Metrics::default();
        m.join(JoinResult::Queued);
        m.join(JoinResult::Queued);
        m.server_start(Duration::from_millis(3));
        m.server_start(Duration::from_secs(2));
        let guard = m.supervised(Supervised::Allocating);
        let text = m.render();
        assert!(text.contains("mp_joins_total{result=\"queued\"} 2"), "{text}");
        assert!(text.contains("mp_server_start_seconds_bucket{le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("mp_server_start_seconds_count 2"), "{text}");
        assert!(text.contains("mp_sessions{state=\"allocating\"} 1"), "{text}");
        drop(guard);
        assert!(m.render().contains("mp_sessions{state=\"allocating\"} 0"));
        m.session_quality(&protocol::sessions::Placement {
            queue: Some("ranked".into()),
            skill_spread: Some(40.0),
            max_latency_ms: Some(55.0),
            ..Default::default()
        });
        m.set_queue_depth("ranked", 7);
        let text = m.render();
        assert!(
            text.contains("mp_session_skill_spread_bucket{le=\"50.0\",queue=\"ranked\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mp_session_max_latency_ms_count{queue=\"ranked\"} 1"),
            "{text}"
        );
        assert!(text.contains("mp_queue_depth{queue=\"ranked\"} 7"), "{text}");
        assert!(!text.contains("mp_session_team_skill_gap_count"), "{text}");
    }
}
