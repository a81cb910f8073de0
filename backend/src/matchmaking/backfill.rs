//! Backfill, the matchmaking service's side: a running session's server (through the SDK) or
//! matchplane itself (a player gone `leave_grace_seconds` in a queue with `on_leave`) opens
//! slots; the rule former of the session's queue places waiting tickets into them before new
//! sessions form ([`matchmaking_core::round`]).

use matchmaking_core::backfill::{self, BackfillRequest};
use matchmaking_core::forming::allowed;
use matchmaking_core::queues::Queue;
use matchmaking_core::store::{self, BackfillOutcome, Release, SlotsMode, now_ms};
use protocol::api::{BackfillStatus, Slots};
use protocol::sessions::SessionState;

use super::Matchmaking;
use crate::history::from_ms;

/// Why a backfill change was refused.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("no session {0}")]
    UnknownSession(String),
    #[error("session {0} is not running ({1}): only a running session takes backfill")]
    NotRunning(String, String),
    #[error("queue {0:?} does not backfill: give it a `backfill` block in the queue file")]
    NoBackfill(String),
    #[error("{0}")]
    BadSlots(String),
    #[error(transparent)]
    Store(#[from] redis::RedisError),
}

/// What a change left.
#[derive(Debug, Clone)]
pub struct BackfillChange {
    pub status: BackfillStatus,
    pub released: Vec<String>,
    pub players: Vec<String>,
}

impl Matchmaking {
    /// Releases `release` from session `sid`'s roster, then sets (or with `mode` adds) its open
    /// slots.
    pub async fn backfill(
        &self,
        sid: &str,
        slots: &Slots,
        mode: SlotsMode,
        release: Release<'_>,
    ) -> Result<BackfillChange, BackfillError> {
        let store = &self.inner.store;
        let record = store
            .session(sid)
            .await?
            .ok_or_else(|| BackfillError::UnknownSession(sid.to_owned()))?;
        if record.state != SessionState::Matched {
            return Err(BackfillError::NotRunning(
                sid.to_owned(),
                record.state.as_str().to_owned(),
            ));
        }
        let name = record.placement.queue.clone().unwrap_or_else(|| "default".to_owned());
        let queue = self
            .queues()
            .get(&name)
            .filter(|q| q.backfill.is_some())
            .ok_or_else(|| BackfillError::NoBackfill(name.clone()))?;
        let entries = backfill::slot_entries(queue);
        let slots = match slots {
            Slots::Total(n) if entries == 1 => vec![*n],
            Slots::Total(_) => {
                return Err(BackfillError::BadSlots(format!(
                    "queue {name:?} has {entries} teams: give slots per team, as a list of {entries} numbers"
                )));
            }
            Slots::PerTeam(list) if list.len() == entries => list.clone(),
            Slots::PerTeam(list) => {
                return Err(BackfillError::BadSlots(format!(
                    "slots lists {} numbers; queue {name:?} has {entries} {}",
                    list.len(),
                    if entries == 1 {
                        "session without teams: give one"
                    } else {
                        "teams"
                    }
                )));
            }
        };
        let request = backfill::request(queue, &record, slots);
        let now = now_ms();
        let outcome = store
            .open_backfill(
                sid,
                &request,
                mode,
                (queue.shape.full(), backfill::team_size(queue)),
                release,
                now,
            )
            .await?;
        match outcome {
            BackfillOutcome::Unknown => Err(BackfillError::UnknownSession(sid.to_owned())),
            BackfillOutcome::NotRunning { state } => Err(BackfillError::NotRunning(sid.to_owned(), state)),
            BackfillOutcome::Open {
                slots,
                since_ms,
                released,
                players,
            } => {
                if since_ms > 0 {
                    // Placed at the next round, without waiting for the tick.
                    self.inner.wake.notify_one();
                }
                let request = BackfillRequest {
                    since_ms,
                    slots,
                    ..request
                };
                Ok(BackfillChange {
                    status: status(queue, &request, now),
                    released,
                    players,
                })
            }
        }
    }

    /// Gives the places of running session `sid`'s players gone (no connection) its queue's
    /// `leave_grace_seconds` to backfill: releases them and opens a slot on each one's team.
    /// Returns who was released, and when the next player gone now will have been gone its
    /// grace.
    pub async fn release_gone(&self, sid: &str) -> Result<Gone, BackfillError> {
        let Some(record) = self.inner.store.session(sid).await? else {
            return Ok(Gone::default());
        };
        let queue = record.placement.queue.as_deref().unwrap_or("default");
        let Some((queue, rule)) = self
            .queues()
            .get(queue)
            .and_then(|q| q.backfill.filter(|b| b.on_leave).map(|b| (q, b)))
        else {
            return Ok(Gone::default());
        };
        if record.state != SessionState::Matched {
            return Ok(Gone::default());
        }
        let cutoff = now_ms() - rule.leave_grace_ms;
        let rostered = |p: &String| record.players.contains(p);
        let next_due_ms = record
            .left_ms
            .iter()
            .filter(|&(p, &at)| at > cutoff && rostered(p))
            .map(|(_, &at)| at + rule.leave_grace_ms)
            .min();
        let gone: Vec<String> = record
            .left_ms
            .iter()
            .filter(|&(p, &at)| at <= cutoff && rostered(p))
            .map(|(p, _)| p.clone())
            .collect();
        if gone.is_empty() {
            return Ok(Gone {
                released: Vec::new(),
                next_due_ms,
            });
        }
        let entries = backfill::slot_entries(queue);
        let mut slots = vec![0u32; entries];
        for player in &gone {
            let team = record
                .placement
                .teams
                .iter()
                .position(|team| team.contains(player))
                .filter(|&t| t < entries)
                .unwrap_or(0);
            slots[team] += 1;
        }
        let change = self
            .backfill(
                sid,
                &Slots::PerTeam(slots),
                SlotsMode::Add,
                Release {
                    players: &gone,
                    gone_since: Some(cutoff),
                },
            )
            .await?;
        Ok(Gone {
            released: change.released,
            next_due_ms,
        })
    }

    /// Session `sid`'s open request, as its server and operators read it.
    pub async fn backfill_status(&self, sid: &str) -> store::Result<Option<BackfillStatus>> {
        let Some(request) = self.inner.store.backfill_request(sid).await? else {
            return Ok(None);
        };
        Ok(self
            .queues()
            .get(&request.queue)
            .map(|queue| status(queue, &request, now_ms())))
    }
}

/// What [`Matchmaking::release_gone`] did.
#[derive(Debug, Default)]
pub struct Gone {
    /// The players released now.
    pub released: Vec<String>,
    /// When the next player gone now (ms since the Unix epoch) will have been gone its grace.
    pub next_due_ms: Option<i64>,
}

/// What `request` of `queue` is and allows at `now`.
fn status(queue: &Queue, request: &BackfillRequest, now: i64) -> BackfillStatus {
    let open = request.since_ms > 0 && request.slots.iter().any(|&n| n > 0);
    let wait = if open { (now - request.since_ms).max(0) } else { 0 };
    let (skill_spread, max_latency_ms) = allowed(queue, wait);
    BackfillStatus {
        slots: request.slots.clone(),
        since: open.then(|| from_ms(request.since_ms)),
        wait_ms: wait,
        skill_spread,
        max_latency_ms,
        expires: open
            .then(|| queue.backfill.map(|b| from_ms(request.since_ms + b.max_ms)))
            .flatten(),
    }
}
