//! Backfill: a running session asking for players. Its request is a ticket of the session's
//! own (its queue, `match_on` values, skill and region) with open slots per team, kept in Redis
//! and placed by the rule former before new sessions form ([`crate::forming::Pool::plan`]).
//!
//! This module builds a request from the session's record: what a newcomer must match, and the
//! skill each short team looks for nearest (with `balance_teams`, the skill that evens the
//! teams' totals; otherwise the session's mean).

use protocol::sessions::SessionRecord;
use serde::{Deserialize, Serialize};

use crate::forming;
use crate::queues::{Queue, Shape};
use crate::store::StoredTicket;
use crate::tickets;

/// A session's open backfill request as Redis keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillRequest {
    pub queue: String,
    /// When its slots first opened (ms since the epoch; set by the store).
    #[serde(default)]
    pub since_ms: i64,
    /// Open slots per team (one entry without teams).
    #[serde(deserialize_with = "protocol::sessions::list_or_empty_object")]
    pub slots: Vec<u32>,
    /// The session's `match_on` values, in the queue's order.
    #[serde(default, deserialize_with = "protocol::sessions::list_or_empty_object")]
    pub key: Vec<String>,
    /// Lowest and highest skill of the session's tickets, with a skill rule.
    #[serde(default)]
    pub skill_range: Option<(f64, f64)>,
    /// Per `slots` entry, the skill a newcomer is looked for nearest.
    #[serde(default, deserialize_with = "protocol::sessions::list_or_empty_object")]
    pub targets: Vec<f64>,
    #[serde(default)]
    pub region: Option<String>,
}

impl BackfillRequest {
    /// The request of session `session_id`, as the former takes it.
    pub fn for_former(&self, session_id: &str) -> forming::Backfill {
        forming::Backfill {
            session_id: session_id.to_owned(),
            since_ms: self.since_ms,
            slots: self.slots.clone(),
            match_key: self.key.clone(),
            skill_range: self.skill_range,
            targets: self.targets.clone(),
            region: self.region.clone(),
        }
    }
}

/// How many `slots` entries a session of `queue` has: its teams, or one.
pub fn slot_entries(queue: &Queue) -> usize {
    match queue.shape {
        Shape::Teams { teams, .. } => teams as usize,
        Shape::Fifo { .. } => 1,
    }
}

/// Players in a full team of `queue` (0 without teams).
pub fn team_size(queue: &Queue) -> u32 {
    match queue.shape {
        Shape::Teams { team_size, .. } => team_size,
        Shape::Fifo { .. } => 0,
    }
}

/// The request for `slots` (one entry per [`slot_entries`]) of running session `record` of
/// `queue`: what its tickets say a newcomer must match.
pub fn request(queue: &Queue, record: &SessionRecord, slots: Vec<u32>) -> BackfillRequest {
    let decoded: Vec<forming::Ticket> = record
        .tickets
        .iter()
        .filter_map(|doc| {
            let stored = StoredTicket {
                id: String::new(),
                order: 0.0,
                joined_ms: 0,
                doc: doc.clone(),
            };
            tickets::decode(queue, &stored)
        })
        .collect();
    let key = decoded.first().map(|t| t.match_key.clone()).unwrap_or_default();
    // Each ticket counts as its mean skill, as the former counts it.
    let mean = |t: &forming::Ticket| t.skills.iter().sum::<f64>() / t.skills.len().max(1) as f64;
    let skill_range = queue.skill.as_ref().and_then(|_| {
        decoded.iter().map(mean).fold(None, |range, s| match range {
            None => Some((s, s)),
            Some((lo, hi)) => Some((f64::min(lo, s), f64::max(hi, s))),
        })
    });
    let mut skill_of = std::collections::HashMap::new();
    for t in &decoded {
        for (i, p) in t.players.iter().enumerate() {
            skill_of.insert(p.as_str(), t.skills.get(i).copied().unwrap_or_else(|| mean(t)));
        }
    }
    let present: Vec<f64> = record
        .players
        .iter()
        .filter_map(|p| skill_of.get(p.as_str()).copied())
        .collect();
    let session_mean = if present.is_empty() {
        skill_range.map_or(0.0, |(lo, hi)| (lo + hi) / 2.0)
    } else {
        present.iter().sum::<f64>() / present.len() as f64
    };
    let balance = queue.skill.as_ref().is_some_and(|s| s.balance_teams);
    let targets = if balance && record.placement.teams.len() == slots.len() && slots.len() > 1 {
        // Totals as they would be with every open slot at the mean; each short team then
        // looks for what brings it to the teams' average total.
        let totals: Vec<f64> = record
            .placement
            .teams
            .iter()
            .map(|team| {
                team.iter()
                    .map(|p| skill_of.get(p.as_str()).copied().unwrap_or(session_mean))
                    .sum()
            })
            .collect();
        let open: u32 = slots.iter().sum();
        let average = (totals.iter().sum::<f64>() + f64::from(open) * session_mean) / totals.len() as f64;
        totals
            .iter()
            .zip(&slots)
            .map(|(&total, &n)| {
                if n == 0 {
                    session_mean
                } else {
                    (average - total) / f64::from(n)
                }
            })
            .collect()
    } else {
        vec![session_mean; slots.len()]
    };
    BackfillRequest {
        queue: queue.name.clone(),
        since_ms: 0,
        slots,
        key,
        skill_range,
        targets,
        region: record.placement.region.clone(),
    }
}
