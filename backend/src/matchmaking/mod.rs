//! The matchmaking service: the one way in for joins and cancels, where a player stands, and
//! the rounds of forming the matcher runs. The queue rules, tickets, forming and the Redis
//! scripts are `matchmaking_core`'s; this is the replica's side of them: its queues with their
//! store handles scoped once at start, its metrics, its instance id, and the wake-up a join
//! gives the matcher when it may have filled a session.
//!
//! Once formed, a session belongs to the sessions service ([`crate::sessions`]).

pub(crate) mod matcher;
pub(crate) mod metrics;
mod settings;

pub use settings::MatchmakingArgs;

mod backfill;
pub use backfill::{BackfillChange, BackfillError};

use std::sync::Arc;

use matchmaking_core::queues::{DEFAULT_QUEUE, Queue, Queues};
use matchmaking_core::round;
use matchmaking_core::store::{
    self, CancelOutcome, FormedSession, JoinOutcome, PlayerView, QueueDepth, QueueStore, Store, now_ms,
};
use matchmaking_core::tickets::{self, Joiner, TicketError};
use protocol::api::JoinRequest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::metrics::{JoinResult, MatchmakingMetrics};

/// Why a join was refused.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// No queue of that name; `known` lists the queues there are.
    #[error("no queue {name:?}; queues: {known}")]
    UnknownQueue { name: String, known: String },
    /// The request does not make a ticket of its queue.
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// This replica is shutting down and takes no more joins.
    #[error("this backend is shutting down; retry")]
    Draining,
    /// `player` of the ticket is already queued in `queue`.
    #[error("{player} is already queued in {queue}; leave it first")]
    AlreadyQueued { player: String, queue: String },
    /// `player` of the ticket is already in a session.
    #[error("{player} is already in a session")]
    InSession { player: String },
    #[error(transparent)]
    Store(#[from] redis::RedisError),
}

/// The matchmaking service. Cheap to clone.
#[derive(Clone)]
pub struct Matchmaking {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    queues: Arc<Queues>,
    /// Each queue with its store handle, in the queues' order.
    scoped: Vec<(Queue, QueueStore)>,
    metrics: Arc<MatchmakingMetrics>,
    instance: String,
    /// Notified when a join may have filled a session.
    wake: Arc<Notify>,
    /// Cancelled when this replica stops taking joins (shutdown's first phase).
    accepting: CancellationToken,
    /// The regions (`REGIONS`): sessions form only in those up.
    regions: Option<Arc<crate::runtime::regions::Regions>>,
}

impl Matchmaking {
    pub(crate) fn new(
        store: Store,
        queues: Arc<Queues>,
        metrics: Arc<MatchmakingMetrics>,
        instance: &str,
        accepting: CancellationToken,
        regions: Option<Arc<crate::runtime::regions::Regions>>,
    ) -> Matchmaking {
        let scoped = queues.iter().map(|q| (q.clone(), store.queue(&q.name))).collect();
        Matchmaking {
            inner: Arc::new(Inner {
                store,
                queues,
                scoped,
                metrics,
                instance: instance.to_owned(),
                wake: Arc::new(Notify::new()),
                accepting,
                regions,
            }),
        }
    }

    /// A service for tests and tools, with metrics of its own, over `queues`.
    pub fn standalone(store: Store, instance: &str, queues: Queues) -> Matchmaking {
        Matchmaking::new(
            store,
            Arc::new(queues),
            Arc::new(MatchmakingMetrics::default()),
            instance,
            CancellationToken::new(),
            None,
        )
    }

    /// Every queue.
    pub fn queues(&self) -> &Queues {
        &self.inner.queues
    }

    /// Queue `name` with its store handle.
    fn scoped(&self, name: &str) -> Option<&(Queue, QueueStore)> {
        self.inner.scoped.iter().find(|(q, _)| q.name == name)
    }

    /// Matchmaking's metrics.
    pub(crate) fn metrics(&self) -> &MatchmakingMetrics {
        &self.inner.metrics
    }

    /// Notified when a join may have filled a session.
    pub(crate) fn wake(&self) -> &Notify {
        &self.inner.wake
    }

    /// Whether this replica still takes joins.
    pub(crate) fn accepting(&self) -> bool {
        !self.inner.accepting.is_cancelled()
    }

    /// Queues `body`'s ticket (its queue's, as `joiner` may ask for it), idempotently, and says
    /// where its player stands (with the time that was read).
    pub async fn join(&self, body: &JoinRequest, joiner: Joiner<'_>) -> Result<(PlayerView, i64), JoinError> {
        let name = body.queue.as_deref().unwrap_or(DEFAULT_QUEUE);
        let (queue, store) = self.scoped(name).ok_or_else(|| JoinError::UnknownQueue {
            name: name.to_owned(),
            known: self
                .inner
                .queues
                .iter()
                .map(|q| q.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        let ticket = tickets::check(queue, body, joiner)?;
        self.check_regions(queue, body)?;
        if !self.accepting() {
            return Err(JoinError::Draining);
        }
        let player = &body.player_id;
        let now = now_ms();
        let view = match store.join(&ticket.players, ticket.doc.as_deref(), now).await? {
            JoinOutcome::Queued { new, depth } => {
                self.inner.metrics.join(if new {
                    JoinResult::Queued
                } else {
                    JoinResult::AlreadyQueued
                });
                if new {
                    self.inner.metrics.joined(&queue.name, ticket.players.len());
                }
                if depth >= u64::from(queue.shape.full()) {
                    self.inner.wake.notify_one();
                }
                if new {
                    PlayerView::Queued {
                        queue: queue.name.clone(),
                        ticket: player.clone(),
                        joined_ms: Some(now),
                    }
                } else {
                    self.inner.store.player(player).await?
                }
            }
            JoinOutcome::InSession { session_id, record } => {
                self.inner.metrics.join(JoinResult::InSession);
                PlayerView::InSession { session_id, record }
            }
            JoinOutcome::Busy {
                player,
                queue: Some(queue),
            } => return Err(JoinError::AlreadyQueued { player, queue }),
            JoinOutcome::Busy { player, queue: None } => return Err(JoinError::InSession { player }),
        };
        Ok((view, now))
    }

    /// With `REGIONS`, each player's latency map must name a region listed there (others it
    /// names are never chosen: a client's list may be older than the deployment's).
    fn check_regions(&self, queue: &Queue, body: &JoinRequest) -> Result<(), TicketError> {
        let (Some(regions), Some(latency)) = (&self.inner.regions, &queue.latency) else {
            return Ok(());
        };
        let members = body.party.iter().flatten().map(|m| (&m.player_id, &m.attributes));
        for (player, attributes) in std::iter::once((&body.player_id, &body.attributes)).chain(members) {
            let Some(map) = attributes
                .as_ref()
                .and_then(|a| a.get(&latency.attribute))
                .and_then(serde_json::Value::as_object)
            else {
                continue;
            };
            if !regions.list.iter().any(|r| map.contains_key(&r.name)) {
                let known: Vec<&str> = regions.list.iter().map(|r| r.name.as_str()).collect();
                return Err(TicketError::Invalid(format!(
                    "{player}: {:?} names no region of this deployment ({})",
                    latency.attribute,
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Takes `player`'s ticket (its whole party) out of its queue, unless already in a session.
    pub async fn cancel(&self, player: &str) -> store::Result<CancelOutcome> {
        let outcome = self.inner.store.cancel(player).await?;
        if outcome == CancelOutcome::Cancelled {
            self.inner.metrics.join(JoinResult::Cancelled);
        }
        Ok(outcome)
    }

    /// Where `player` stands, read atomically.
    pub async fn player(&self, player: &str) -> store::Result<PlayerView> {
        self.inner.store.player(player).await
    }

    /// Each queue's name and depth, in the queues' order.
    pub async fn depths(&self) -> store::Result<Vec<(&str, QueueDepth)>> {
        let depths = self
            .inner
            .store
            .queue_depths(self.inner.scoped.iter().map(|(_, s)| s))
            .await?;
        Ok(self
            .inner
            .scoped
            .iter()
            .map(|(q, _)| q.name.as_str())
            .zip(depths)
            .collect())
    }

    /// Forms up to `max` sessions from `queue`, owned by this replica (see
    /// [`matchmaking_core::round`]), and counts what the round did.
    pub async fn form(&self, queue: &Queue, max: usize) -> store::Result<Vec<FormedSession>> {
        let Some((queue, store)) = self.scoped(&queue.name) else {
            return Ok(Vec::new());
        };
        let metrics = &self.inner.metrics;
        let regions = self.inner.regions.as_ref().map(|r| r.board.up_now());
        let round = round::run(queue, store, &self.inner.instance, max, regions.as_ref()).await?;
        if round.stale > 0 {
            tracing::debug!(queue = %queue.name, stale = round.stale, "tickets changed since read; their sessions wait for the next round");
        }
        if round.timed_out > 0 {
            metrics.timed_out(&queue.name, round.timed_out);
            tracing::info!(queue = %queue.name, tickets = round.timed_out, "tickets timed out");
        }
        for placement in &round.placements {
            metrics.session_quality(placement);
        }
        let now = now_ms();
        for filled in &round.backfilled {
            metrics.backfilled(
                &queue.name,
                filled.players.len(),
                (now - filled.since_ms).max(0) as f64 / 1000.0,
            );
            tracing::info!(session = %filled.session_id, queue = %queue.name, players = ?filled.players, "backfilled a running session");
        }
        if round.backfills_ended > 0 {
            metrics.backfills_expired(&queue.name, round.backfills_ended);
            tracing::info!(queue = %queue.name, requests = round.backfills_ended, "backfill requests ended unfilled at the queue's max_seconds");
        }
        for session in &round.formed {
            metrics.session_formed(session.players.len());
            metrics.formed_after(
                &session.queue,
                session.joined_ms.iter().map(|joined| (now - joined) as f64 / 1000.0),
            );
            tracing::debug!(session = %session.session_id, queue = %queue.name, players = session.players.len(), "session formed");
        }
        Ok(round.formed)
    }
}
