//! Matchmaking's metrics: joins by result, sessions formed by size, each queue's depth,
//! timed-out tickets and the quality of the sessions it formed. Registered by the part
//! ([`MatchmakingMetrics::register`]), every known series at 0 from the start.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::operators::window::Window;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SizeLabel {
    size: usize,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueLabel {
    pub(crate) queue: String,
}

/// What happened to a join, as `mp_joins_total` counts it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum JoinResult {
    Queued,
    AlreadyQueued,
    InSession,
    Cancelled,
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

/// Matchmaking's metrics.
pub(crate) struct MatchmakingMetrics {
    joins: Family<ResultLabel, Counter>,
    sessions_formed: Family<SizeLabel, Counter>,
    queue_depth: Family<QueueLabel, Gauge>,
    oldest_wait: Family<QueueLabel, Gauge<f64, AtomicU64>>,
    join_to_formed: Family<QueueLabel, Histogram, fn() -> Histogram>,
    timed_out: Family<QueueLabel, Counter>,
    skill_spread: Family<QueueLabel, Histogram, fn() -> Histogram>,
    team_skill_gap: Family<QueueLabel, Histogram, fn() -> Histogram>,
    max_latency: Family<QueueLabel, Histogram, fn() -> Histogram>,
    backfilled: Family<QueueLabel, Counter>,
    backfill_wait: Family<QueueLabel, Histogram, fn() -> Histogram>,
    backfills_ended: Family<QueueLabel, Counter>,
    /// The same events, counted for operators across replicas.
    window: Arc<Window>,
}

impl Default for MatchmakingMetrics {
    fn default() -> Self {
        MatchmakingMetrics::new(&[], Arc::default())
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

impl MatchmakingMetrics {
    /// The metrics, every join result and each of `queues`' series at 0.
    pub(crate) fn new(queues: &[&str], window: Arc<Window>) -> MatchmakingMetrics {
        let metrics = MatchmakingMetrics {
            joins: Family::default(),
            sessions_formed: Family::default(),
            queue_depth: Family::default(),
            oldest_wait: Family::default(),
            join_to_formed: Family::new_with_constructor(service::metrics::latency_histogram),
            timed_out: Family::default(),
            skill_spread: Family::new_with_constructor(skill_histogram),
            team_skill_gap: Family::new_with_constructor(skill_histogram),
            max_latency: Family::new_with_constructor(latency_ms_histogram),
            backfilled: Family::default(),
            backfill_wait: Family::new_with_constructor(service::metrics::latency_histogram),
            backfills_ended: Family::default(),
            window,
        };
        for result in JoinResult::ALL {
            drop(metrics.joins.get_or_create(&ResultLabel { result: result.label() }));
        }
        for queue in queues {
            let label = QueueLabel {
                queue: (*queue).to_owned(),
            };
            drop(metrics.queue_depth.get_or_create(&label));
            drop(metrics.oldest_wait.get_or_create(&label));
            drop(metrics.join_to_formed.get_or_create(&label));
            drop(metrics.timed_out.get_or_create(&label));
            for family in [&metrics.skill_spread, &metrics.team_skill_gap, &metrics.max_latency] {
                drop(family.get_or_create(&label));
            }
        }
        metrics
    }

    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register("mp_joins", "Join requests by result", self.joins.clone());
        registry.register(
            "mp_sessions_formed",
            "Sessions formed by this replica, by size",
            self.sessions_formed.clone(),
        );
        registry.register(
            "mp_queue_depth",
            "Tickets waiting in each queue (all replicas)",
            self.queue_depth.clone(),
        );
        registry.register(
            "mp_queue_oldest_wait_seconds",
            "How long the ticket at the head of each queue has waited (0 when the queue is empty)",
            self.oldest_wait.clone(),
        );
        registry.register(
            "mp_join_to_formed_seconds",
            "Time from a player's join to the session formed for them (the matchmaker's part of the time to play), by queue",
            self.join_to_formed.clone(),
        );
        registry.register(
            "mp_tickets_timed_out",
            "Tickets that waited their queue's max_wait_seconds, by queue",
            self.timed_out.clone(),
        );
        registry.register(
            "mp_session_skill_spread",
            "Skill spread (max - min) of the sessions this replica formed, by queue",
            self.skill_spread.clone(),
        );
        registry.register(
            "mp_session_team_skill_gap",
            "Gap between the strongest and weakest team's total skill, by queue",
            self.team_skill_gap.clone(),
        );
        registry.register(
            "mp_backfilled_players",
            "Players this replica placed into running sessions' open slots, by queue",
            self.backfilled.clone(),
        );
        registry.register(
            "mp_backfill_wait_seconds",
            "Time from a running session's slot opening to a player placed into it, by queue",
            self.backfill_wait.clone(),
        );
        registry.register(
            "mp_backfill_requests_expired",
            "Backfill requests that ended unfilled at their queue's max_seconds, by queue",
            self.backfills_ended.clone(),
        );
        registry.register(
            "mp_session_max_latency_ms",
            "Worst player latency to the chosen region of the sessions formed, by queue",
            self.max_latency.clone(),
        );
    }

    /// Counts `players` placed into a running session by a request open for `waited_seconds`.
    pub(crate) fn backfilled(&self, queue: &str, players: usize, waited_seconds: f64) {
        let label = QueueLabel {
            queue: queue.to_owned(),
        };
        self.backfilled.get_or_create(&label).inc_by(players as u64);
        self.backfill_wait.get_or_create(&label).observe(waited_seconds);
    }

    /// Counts backfill requests that ended unfilled.
    pub(crate) fn backfills_expired(&self, queue: &str, n: u64) {
        let label = QueueLabel {
            queue: queue.to_owned(),
        };
        self.backfills_ended.get_or_create(&label).inc_by(n);
    }

    /// Counts a join by what happened to it.
    pub(crate) fn join(&self, result: JoinResult) {
        self.joins.get_or_create(&ResultLabel { result: result.label() }).inc();
    }

    /// A new ticket of `players` joined `queue`.
    pub(crate) fn joined(&self, queue: &str, players: usize) {
        self.window.players_in(queue, players);
    }

    /// Counts a formed session by its size.
    pub(crate) fn session_formed(&self, size: usize) {
        self.sessions_formed.get_or_create(&SizeLabel { size }).inc();
    }

    /// Sets a queue's depth and how long its oldest ticket has waited.
    pub(crate) fn set_queue_depth(&self, queue: &str, depth: u64, oldest_wait_seconds: f64) {
        let label = QueueLabel {
            queue: queue.to_owned(),
        };
        self.queue_depth
            .get_or_create(&label)
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.oldest_wait.get_or_create(&label).set(oldest_wait_seconds.max(0.0));
    }

    /// Records how long each player of a session formed in `queue` waited for it.
    pub(crate) fn formed_after(&self, queue: &str, waited_seconds: impl IntoIterator<Item = f64>) {
        let histogram = self.join_to_formed.get_or_create(&QueueLabel {
            queue: queue.to_owned(),
        });
        let mut players = 0;
        for waited in waited_seconds {
            let waited = waited.max(0.0);
            histogram.observe(waited);
            self.window.time_to_match(queue, Duration::from_secs_f64(waited));
            players += 1;
        }
        self.window.players_out(queue, players);
    }

    /// Counts tickets of `queue` that timed out.
    pub(crate) fn timed_out(&self, queue: &str, tickets: usize) {
        self.timed_out
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .inc_by(tickets as u64);
        self.window.timed_out(queue, tickets);
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
}
