//! One round of forming on one queue: a first-come queue forms in join order inside one
//! script; a rule queue is read, planned in memory ([`crate::forming`]) and committed by a
//! script that claims only tickets still queued at the version read, so a plan made from a
//! stale read costs a retry, never a ticket.
//!
//! One replica forms each rule queue at a time, under a short lease in Redis: a replica that
//! stops renewing it (gone, or stalled) hands the queue to the next within [`LEASE`].

use std::collections::HashSet;
use std::time::Duration;

use protocol::sessions::Placement;

use crate::forming::{Backfill, Formed, Pool};
use crate::queues::Queue;
use crate::store::{Backfilled, ENDED_RETENTION, FormedSession, QueueStore, Result, now_ms};
use crate::tickets;

/// How long a replica's lease on forming a rule queue lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(2);

/// What one round did.
#[derive(Debug, Default)]
pub struct Round {
    /// The sessions formed, owned by the replica that ran the round.
    pub formed: Vec<FormedSession>,
    /// Where and how well each session of a rule queue placed its players (none for a
    /// first-come queue).
    pub placements: Vec<Placement>,
    /// Tickets that waited their queue's longest wait and left it.
    pub timed_out: usize,
    /// Tickets of the plan that changed since they were read: their sessions wait for the
    /// next round.
    pub stale: usize,
    /// Players placed into running sessions' open slots.
    pub backfilled: Vec<Backfilled>,
    /// Backfill requests that ended unfilled.
    pub backfills_ended: u64,
}

/// The regions sessions may be placed in now (with regions configured).
#[derive(Debug, Clone, Default)]
pub struct RegionsUp {
    /// The regions up: a latency rule places sessions only in these.
    pub up: HashSet<String>,
    /// Where a session not placed by latency goes (a queue without a latency rule): the first
    /// region up; `None` when every region is down.
    pub first: Option<String>,
}

/// Forms up to `max` sessions from `queue` (whose state `store` is) as of now, owned by
/// `instance`, in the regions up of `regions` (`None`: no regions configured, any region a
/// latency map names). With every region down nothing forms: the tickets wait. A rule queue
/// forms only while `instance` holds its lease; without it the round is empty.
pub async fn run(
    queue: &Queue,
    store: &QueueStore,
    instance: &str,
    max: usize,
    regions: Option<&RegionsUp>,
) -> Result<Round> {
    let first = match regions {
        Some(RegionsUp { first: None, .. }) => return Ok(Round::default()),
        Some(RegionsUp { first, .. }) => first.as_deref(),
        None => None,
    };
    if let Some(rules) = queue.fifo_rules() {
        return Ok(Round {
            formed: store.form(&rules, now_ms(), instance, max, first).await?,
            ..Round::default()
        });
    }
    if !store.lease(instance, LEASE).await? {
        return Ok(Round::default());
    }
    let stored = store.waiting_tickets().await?;
    let requests: Vec<(String, crate::backfill::BackfillRequest)> = if queue.backfill.is_some() {
        store.store().backfill_requests(&queue.name).await?
    } else {
        Vec::new()
    };
    if stored.is_empty() && requests.is_empty() {
        return Ok(Round::default());
    }
    let now = now_ms();
    let mut pool = Pool::within(
        queue,
        stored.iter().filter_map(|t| tickets::decode(queue, t)).collect(),
        regions.map(|r| &r.up),
    );
    let backfills: Vec<Backfill> = requests.iter().map(|(sid, r)| r.for_former(sid)).collect();
    let plan = pool.plan(now, max, &backfills);
    if plan.sessions.is_empty()
        && plan.expired.is_empty()
        && plan.backfilled.is_empty()
        && plan.expired_backfills.is_empty()
    {
        return Ok(Round::default());
    }
    let filled: Vec<PlannedBackfill> = plan
        .backfilled
        .iter()
        .map(|f| {
            let t = &pool.tickets()[f.ticket];
            PlannedBackfill {
                session_id: backfills[f.request].session_id.clone(),
                since_ms: backfills[f.request].since_ms,
                team: f.team,
                ticket: (t.id.clone(), t.version),
                players: t.players.clone(),
                joined_ms: vec![t.joined_ms; t.players.len()],
            }
        })
        .collect();
    let ended: Vec<(&str, i64)> = plan
        .expired_backfills
        .iter()
        .map(|&r| (backfills[r].session_id.as_str(), backfills[r].since_ms))
        .collect();
    let sessions: Vec<PlannedSession> = plan
        .sessions
        .iter()
        .map(|formed| PlannedSession::new(&pool, queue, formed, first))
        .collect();
    let expire: Vec<(&str, u64)> = plan
        .expired
        .iter()
        .map(|&t| (pool.tickets()[t].id.as_str(), pool.tickets()[t].version))
        .collect();
    let body = serde_json::json!({
        "backfills": filled,
        "backfills_ended": ended,
        "size": queue.shape.full(),
        "sessions": sessions,
        "expire": expire,
        "retention_ms": u64::try_from(ENDED_RETENTION.as_millis()).unwrap_or(u64::MAX),
    });
    let placed = store.place(&body.to_string(), now, instance).await?;
    let committed: HashSet<&str> = placed.formed.iter().map(String::as_str).collect();
    let mut round = Round {
        timed_out: placed.expired.len(),
        stale: placed.stale.len(),
        backfilled: placed.backfilled,
        backfills_ended: placed.backfills_ended,
        ..Round::default()
    };
    for (s, formed) in sessions.into_iter().zip(&plan.sessions) {
        if !committed.contains(s.session_id.as_str()) {
            continue;
        }
        // Every ticket of a session shares its match_on values: the first one's say them.
        let match_on = formed
            .tickets
            .first()
            .map(|&t| {
                queue
                    .match_on
                    .iter()
                    .cloned()
                    .zip(pool.tickets()[t].match_key.iter().cloned())
                    .collect()
            })
            .unwrap_or_default();
        round.formed.push(FormedSession {
            session_id: s.session_id,
            players: s.players,
            joined_ms: s.joined_ms,
            queue: queue.name.clone(),
            teams: s.placement.teams.clone(),
            match_on,
            region: s.placement.region.clone(),
        });
        round.placements.push(s.placement);
    }
    Ok(round)
}

/// A ticket of a plan placed into a running session, as the place script takes it.
#[derive(serde::Serialize)]
struct PlannedBackfill {
    session_id: String,
    since_ms: i64,
    /// Index into the request's slots.
    team: usize,
    ticket: (String, u64),
    players: Vec<String>,
    joined_ms: Vec<i64>,
}

/// A session of a plan, as the place script takes it.
#[derive(serde::Serialize)]
struct PlannedSession {
    session_id: String,
    /// (ticket id, version) of each ticket.
    tickets: Vec<(String, u64)>,
    /// Team by team (ticket by ticket without teams).
    players: Vec<String>,
    joined_ms: Vec<i64>,
    #[serde(flatten)]
    placement: Placement,
}

impl PlannedSession {
    /// The session `formed`, in its region or else `first`.
    fn new(pool: &Pool<'_>, queue: &Queue, formed: &Formed, first: Option<&str>) -> PlannedSession {
        let tickets = pool.tickets();
        let order: Vec<usize> = if formed.teams.is_empty() {
            formed.tickets.clone()
        } else {
            formed.teams.concat()
        };
        let mut players = Vec::new();
        let mut joined_ms = Vec::new();
        for &t in &order {
            for p in &tickets[t].players {
                players.push(p.clone());
                joined_ms.push(tickets[t].joined_ms);
            }
        }
        let teams = formed
            .teams
            .iter()
            .map(|team| team.iter().flat_map(|&t| tickets[t].players.iter().cloned()).collect())
            .collect();
        PlannedSession {
            session_id: uuid::Uuid::new_v4().to_string(),
            tickets: formed
                .tickets
                .iter()
                .map(|&t| (tickets[t].id.clone(), tickets[t].version))
                .collect(),
            players,
            joined_ms,
            placement: Placement {
                queue: Some(queue.name.clone()),
                teams,
                region: formed.region.clone().or_else(|| first.map(str::to_owned)),
                skill_spread: formed.quality.skill_spread,
                team_skill_gap: formed.quality.team_skill_gap,
                max_latency_ms: formed.quality.max_latency_ms,
                max_wait_ms: Some(formed.quality.max_wait_ms),
                version: None,
            },
        }
    }
}
