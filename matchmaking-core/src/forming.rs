//! The rule former: which sessions a rule queue's waiting tickets make now, and which tickets
//! have waited too long. Pure and clocked by the caller, so every rule is tested on explicit
//! times; the matcher commits its plan through a script that claims only tickets still queued.
//!
//! The algorithm, for one queue:
//! - tickets are taken oldest first (queue order; requeued tickets are at the head); each
//!   ticket not yet placed *anchors* a search with the windows its own wait allows (the
//!   widest any younger ticket could allow, so every session formed satisfies its rules as
//!   widened by its oldest ticket's wait);
//! - candidates come from an index of the anchor's `match_on` bucket sorted by skill, walked
//!   outward from the anchor's skill, nearest first: a search stops at the edge of the skill
//!   window and looks at a bounded number of tickets, so the cost per session does not grow
//!   with the queue (no pairs are compared);
//! - with a latency rule, each region the anchor may use is searched, keeping only tickets
//!   whose every player is within the latency window there; the best region wins (full
//!   sessions first, then the lowest worst latency, then the smallest skill spread);
//! - parties are tickets: whole, and on one team. A ticket joins a search only if the sizes
//!   still pack into the teams. Teams are then filled largest party first, each into the team
//!   with the least total skill when the queue balances teams, and improved by swaps;
//! - a ticket that anchors no session and has waited `max_wait_seconds` ends `timed_out`.
//!
//! Backfill requests (running sessions' open slots, [`Backfill`]) are placed first, oldest
//! first: each open team looks for the waiting tickets nearest the skill it wants, in its
//! session's `match_on` bucket, keeping the session's skill spread and every newcomer's latency
//! to the session's region within the windows the request's own wait allows; a party goes
//! whole onto one team with room for all of it. What they take is gone before new sessions
//! form.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;

use crate::queues::{Queue, Shape};

/// Tickets looked at per search, beyond the session's own size.
const SCAN_SLACK: usize = 64;
/// Tickets looked at per search, per player of a full session.
const SCAN_PER_PLAYER: usize = 8;

/// One waiting ticket (a player, or a party led by its first player).
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    /// The leader's player id.
    pub id: String,
    /// Changes whenever the ticket is queued anew, so a plan never claims a newer ticket.
    pub version: u64,
    /// Queue order, lowest first.
    pub order: f64,
    pub joined_ms: i64,
    /// The leader first.
    pub players: Vec<String>,
    /// Each player's skill, aligned with `players` (empty without a skill rule).
    pub skills: Vec<f64>,
    /// Each player's latency by region in ms, aligned with `players` (empty without a
    /// latency rule).
    pub latencies: Vec<Vec<(String, f64)>>,
    /// The `match_on` values, in the queue's order.
    pub match_key: Vec<String>,
}

/// How good a session is.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Quality {
    /// Max - min of the tickets' skills (a party counts as its mean).
    pub skill_spread: Option<f64>,
    /// Max - min of the teams' total skill.
    pub team_skill_gap: Option<f64>,
    /// The worst latency of any player to the session's region.
    pub max_latency_ms: Option<f64>,
    /// How long the oldest ticket had waited.
    pub max_wait_ms: i64,
}

/// A session the plan forms.
#[derive(Debug, Clone, PartialEq)]
pub struct Formed {
    /// Indices into [`Pool::tickets`].
    pub tickets: Vec<usize>,
    /// Ticket indices per team (empty for a queue without teams).
    pub teams: Vec<Vec<usize>>,
    pub region: Option<String>,
    pub quality: Quality,
}

/// What one round does.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub sessions: Vec<Formed>,
    /// Tickets that end `timed_out`.
    pub expired: Vec<usize>,
    /// Tickets placed into running sessions' open slots.
    pub backfilled: Vec<Filled>,
    /// Backfill requests (indices into the requests given) open `max_seconds` and ending
    /// unfilled.
    pub expired_backfills: Vec<usize>,
}

/// A running session's request for players: its open slots and what a newcomer must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Backfill {
    pub session_id: String,
    /// When its slots opened; its wait widens its windows as a ticket's wait does.
    pub since_ms: i64,
    /// Open slots per team (one entry for a session without teams).
    pub slots: Vec<u32>,
    /// The session's `match_on` values, in the queue's order.
    pub match_key: Vec<String>,
    /// The lowest and highest skill of the session's tickets, with a skill rule.
    pub skill_range: Option<(f64, f64)>,
    /// Per `slots` entry: the skill a newcomer is looked for nearest.
    pub targets: Vec<f64>,
    /// The session's region, with a latency rule.
    pub region: Option<String>,
}

/// A ticket placed into a running session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Filled {
    /// Index into the requests given.
    pub request: usize,
    /// Index into the request's `slots` (its team, in a session with teams).
    pub team: usize,
    /// Index into [`Pool::tickets`].
    pub ticket: usize,
}

/// What the search allows a ticket that has waited `wait_ms`: (skill spread, latency in ms).
pub fn allowed(queue: &Queue, wait_ms: i64) -> (Option<f64>, Option<f64>) {
    (
        queue.skill.as_ref().map(|s| s.window.at(wait_ms)),
        queue.latency.as_ref().map(|l| l.window.at(wait_ms)),
    )
}

/// The tickets of a skill index, nearest to `key` first: `below` (the entries under `key`) and
/// `above` (those from it up) merged outward, so a search can stop at the first one too far.
fn nearest_first<'a>(
    key: i64,
    below: impl DoubleEndedIterator<Item = &'a (i64, usize)>,
    above: impl Iterator<Item = &'a (i64, usize)>,
) -> impl Iterator<Item = usize> {
    let (mut down, mut up) = (below.rev().peekable(), above.peekable());
    std::iter::from_fn(move || {
        let next = match (down.peek(), up.peek()) {
            (Some(&&(dk, _)), Some(&&(uk, _))) => {
                if key - dk <= uk - key {
                    down.next()
                } else {
                    up.next()
                }
            }
            (Some(_), None) => down.next(),
            (None, Some(_)) => up.next(),
            (None, None) => None,
        };
        next.map(|&(_, t)| t)
    })
}

/// Derived per ticket.
#[derive(Debug, Clone)]
struct Entry {
    /// Mean of the players' skills (0 without a skill rule).
    skill: f64,
    /// `skill` in thousandths, the index key.
    key: i64,
    bucket: usize,
    /// (region, worst player latency), for the regions every player measured; by region.
    latency: Vec<(u16, f64)>,
}

impl Entry {
    fn latency_to(&self, region: u16) -> Option<f64> {
        self.latency
            .binary_search_by_key(&region, |&(r, _)| r)
            .ok()
            .map(|i| self.latency[i].1)
    }
}

/// One queue's waiting tickets, indexed for a round of forming.
pub struct Pool<'q> {
    queue: &'q Queue,
    tickets: Vec<Ticket>,
    entries: Vec<Entry>,
    regions: Vec<String>,
    /// Per `match_on` bucket: (skill key, ticket index) of every ticket not yet placed.
    buckets: Vec<BTreeSet<(i64, usize)>>,
    bucket_ids: HashMap<Vec<String>, usize>,
}

/// A search's result.
struct Found {
    tickets: Vec<usize>,
    players: usize,
}

impl<'q> Pool<'q> {
    /// Indexes `tickets` (in any order) for `queue`.
    pub fn new(queue: &'q Queue, tickets: Vec<Ticket>) -> Pool<'q> {
        Pool::within(queue, tickets, None)
    }

    /// Indexes `tickets` for `queue`, placing sessions only in the regions of `usable` (the
    /// regions up now); `None`: any region a latency map names.
    pub fn within(queue: &'q Queue, mut tickets: Vec<Ticket>, usable: Option<&HashSet<String>>) -> Pool<'q> {
        tickets.sort_by(|a, b| a.order.total_cmp(&b.order).then_with(|| a.joined_ms.cmp(&b.joined_ms)));
        let mut regions: Vec<String> = Vec::new();
        let mut region_ids: HashMap<String, u16> = HashMap::new();
        let mut bucket_ids: HashMap<Vec<String>, usize> = HashMap::new();
        let mut buckets: Vec<BTreeSet<(i64, usize)>> = Vec::new();
        let mut entries = Vec::with_capacity(tickets.len());
        for (i, t) in tickets.iter().enumerate() {
            let skill = if t.skills.is_empty() {
                0.0
            } else {
                t.skills.iter().sum::<f64>() / t.skills.len() as f64
            };
            let key = (skill * 1000.0).round() as i64;
            let bucket = *bucket_ids.entry(t.match_key.clone()).or_insert_with(|| {
                buckets.push(BTreeSet::new());
                buckets.len() - 1
            });
            buckets[bucket].insert((key, i));
            let latency = if queue.latency.is_some() {
                worst_latencies(&t.latencies, usable, &mut regions, &mut region_ids)
            } else {
                Vec::new()
            };
            entries.push(Entry {
                skill,
                key,
                bucket,
                latency,
            });
        }
        Pool {
            queue,
            tickets,
            entries,
            regions,
            buckets,
            bucket_ids,
        }
    }

    /// The tickets, in queue order (plans refer to them by index).
    pub fn tickets(&self) -> &[Ticket] {
        &self.tickets
    }

    /// Forms up to `max_sessions` sessions as of `now_ms`, and times out what waited too long.
    pub fn form(&mut self, now_ms: i64, max_sessions: usize) -> Plan {
        self.plan(now_ms, max_sessions, &[])
    }

    /// Fills `requests` (running sessions' open slots) first, then forms up to `max_sessions`
    /// sessions of what is left, as of `now_ms`; times out what waited too long.
    pub fn plan(&mut self, now_ms: i64, max_sessions: usize, requests: &[Backfill]) -> Plan {
        let mut plan = Plan::default();
        let mut placed = vec![false; self.tickets.len()];
        let max_ms = self.queue.backfill.map_or(i64::MAX, |b| b.max_ms);
        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by_key(|&r| (requests[r].since_ms, r));
        for r in order {
            if now_ms - requests[r].since_ms >= max_ms {
                plan.expired_backfills.push(r);
                continue;
            }
            for (team, ticket) in self.fill(&requests[r], now_ms) {
                placed[ticket] = true;
                let e = &self.entries[ticket];
                self.buckets[e.bucket].remove(&(e.key, ticket));
                plan.backfilled.push(Filled {
                    request: r,
                    team,
                    ticket,
                });
            }
        }
        for anchor in 0..self.tickets.len() {
            if placed[anchor] {
                continue;
            }
            if plan.sessions.len() < max_sessions
                && let Some(formed) = self.best_for(anchor, now_ms)
            {
                for &t in &formed.tickets {
                    placed[t] = true;
                    let e = &self.entries[t];
                    self.buckets[e.bucket].remove(&(e.key, t));
                }
                plan.sessions.push(formed);
                continue;
            }
            let wait = now_ms - self.tickets[anchor].joined_ms;
            if self.queue.max_wait_ms.is_some_and(|max| wait >= max) {
                placed[anchor] = true;
                let e = &self.entries[anchor];
                self.buckets[e.bucket].remove(&(e.key, anchor));
                plan.expired.push(anchor);
            }
        }
        plan
    }

    /// The tickets (with the `slots` entry each goes to) that fill `request` now: per open
    /// team, the nearest in skill to what it wants first, within the windows the request's
    /// own wait allows. Does not remove them from the index.
    fn fill(&self, request: &Backfill, now_ms: i64) -> Vec<(usize, usize)> {
        let Some(&bucket) = self.bucket_ids.get(&request.match_key) else {
            return Vec::new();
        };
        let (spread, latency) = allowed(self.queue, now_ms - request.since_ms);
        let spread = spread.unwrap_or(f64::INFINITY);
        let region = match (&request.region, latency) {
            (Some(name), Some(_)) => match self.regions.iter().position(|r| r == name) {
                Some(r) => Some(u16::try_from(r).unwrap_or(u16::MAX)),
                // No waiting ticket measured the session's region.
                None => return Vec::new(),
            },
            _ => None,
        };
        let (mut lo, mut hi) = request.skill_range.unwrap_or((f64::INFINITY, f64::NEG_INFINITY));
        let mut open: Vec<usize> = request.slots.iter().map(|&n| n as usize).collect();
        let mut taken: Vec<(usize, usize)> = Vec::new();
        // The team with the most open slots looks first.
        let mut teams: Vec<usize> = (0..open.len()).filter(|&t| open[t] > 0).collect();
        teams.sort_by_key(|&t| std::cmp::Reverse(open[t]));
        let budget = SCAN_SLACK + SCAN_PER_PLAYER * open.iter().sum::<usize>();
        for team in teams {
            let target = request.targets.get(team).copied().unwrap_or(0.0);
            let key = (target * 1000.0).round() as i64;
            let set = &self.buckets[bucket];
            let mut nearest = nearest_first(key, set.range(..(key, 0)), set.range((key, 0)..));
            let mut looked = 0;
            while open[team] > 0 && looked < budget {
                let Some(c) = nearest.next() else { break };
                looked += 1;
                if taken.iter().any(|&(_, t)| t == c) {
                    continue;
                }
                let e = &self.entries[c];
                if self.queue.skill.is_some() && lo <= hi {
                    // Every newcomer's skill must lie in [hi - spread, lo + spread]: nearest
                    // first, nothing after one further out than both ends can.
                    let (a, b) = (hi - spread, lo + spread);
                    if (e.skill < a || e.skill > b)
                        && (e.skill - target).abs() > (a - target).abs().max((b - target).abs())
                    {
                        break;
                    }
                }
                let size = self.tickets[c].players.len();
                if size > open[team] {
                    continue;
                }
                if let Some(r) = region
                    && !e.latency_to(r).is_some_and(|ms| ms <= latency.unwrap_or(f64::INFINITY))
                {
                    continue;
                }
                if self.queue.skill.is_some() {
                    let (new_lo, new_hi) = (lo.min(e.skill), hi.max(e.skill));
                    if new_hi - new_lo > spread {
                        continue;
                    }
                    (lo, hi) = (new_lo, new_hi);
                }
                open[team] -= size;
                taken.push((team, c));
            }
        }
        taken
    }

    /// The best session `anchor` can form now, if any.
    fn best_for(&self, anchor: usize, now_ms: i64) -> Option<Formed> {
        let wait = now_ms - self.tickets[anchor].joined_ms;
        let (spread, latency) = allowed(self.queue, wait);
        let spread = spread.unwrap_or(f64::INFINITY);
        let (target, least) = match self.queue.shape {
            Shape::Fifo {
                size,
                min,
                flush_wait_ms,
            } => (
                size as usize,
                if wait >= flush_wait_ms {
                    min as usize
                } else {
                    size as usize
                },
            ),
            Shape::Teams { teams, team_size } => ((teams * team_size) as usize, (teams * team_size) as usize),
        };
        let regions: Vec<Option<u16>> = match latency {
            Some(limit) => self.entries[anchor]
                .latency
                .iter()
                .filter(|&&(_, ms)| ms <= limit)
                .map(|&(r, _)| Some(r))
                .collect(),
            None => vec![None],
        };
        let mut best: Option<(Formed, (bool, f64, f64))> = None;
        for region in regions {
            let found = self.search(anchor, region, spread, latency.unwrap_or(f64::INFINITY), target);
            if found.players < least {
                continue;
            }
            let formed = self.session(found.tickets, region, now_ms);
            let score = (
                found.players < target,
                formed.quality.max_latency_ms.unwrap_or(0.0),
                formed.quality.skill_spread.unwrap_or(0.0),
            );
            if best.as_ref().is_none_or(|(_, s)| score < *s) {
                best = Some((formed, score));
            }
        }
        best.map(|(formed, _)| formed)
    }

    /// Tickets for a session around `anchor`, nearest in skill first, within the windows.
    fn search(&self, anchor: usize, region: Option<u16>, spread: f64, latency: f64, target: usize) -> Found {
        let a = &self.entries[anchor];
        let mut found = Found {
            tickets: vec![anchor],
            players: self.tickets[anchor].players.len(),
        };
        let mut sizes = vec![found.players];
        let (mut lo, mut hi) = (a.skill, a.skill);
        let bucket = &self.buckets[a.bucket];
        let mut nearest = nearest_first(
            a.key,
            bucket.range(..(a.key, anchor)),
            bucket.range((Bound::Excluded((a.key, anchor)), Bound::Unbounded)),
        );
        let budget = SCAN_SLACK + SCAN_PER_PLAYER * target;
        let mut looked = 0;
        while found.players < target && looked < budget {
            let Some(c) = nearest.next() else { break };
            let e = &self.entries[c];
            // Nearest first: everything after this one is at least as far.
            if (e.skill - a.skill).abs() > spread {
                break;
            }
            looked += 1;
            let size = self.tickets[c].players.len();
            if found.players + size > target {
                continue;
            }
            if let Some(r) = region
                && !e.latency_to(r).is_some_and(|ms| ms <= latency)
            {
                continue;
            }
            let (new_lo, new_hi) = (lo.min(e.skill), hi.max(e.skill));
            if new_hi - new_lo > spread {
                continue;
            }
            if let Shape::Teams { teams, team_size } = self.queue.shape {
                sizes.push(size);
                if pack(&sizes, teams as usize, team_size as usize).is_none() {
                    sizes.pop();
                    continue;
                }
            }
            found.tickets.push(c);
            found.players += size;
            (lo, hi) = (new_lo, new_hi);
        }
        found
    }

    /// The session of `tickets` in `region`: teams and quality.
    fn session(&self, tickets: Vec<usize>, region: Option<u16>, now_ms: i64) -> Formed {
        let teams = match self.queue.shape {
            Shape::Teams { teams, team_size } => {
                let balance = self.queue.skill.as_ref().is_some_and(|s| s.balance_teams);
                self.teams(&tickets, teams as usize, team_size as usize, balance)
            }
            Shape::Fifo { .. } => Vec::new(),
        };
        let has_skill = self.queue.skill.is_some();
        let skills = tickets.iter().map(|&t| self.entries[t].skill);
        let skill_spread = has_skill.then(|| {
            let (lo, hi) = skills.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| (lo.min(s), hi.max(s)));
            hi - lo
        });
        let team_skill_gap = (has_skill && !teams.is_empty()).then(|| {
            let totals: Vec<f64> = teams.iter().map(|team| self.total_skill(team)).collect();
            spread_of(&totals)
        });
        let max_latency_ms = region.map(|r| {
            tickets
                .iter()
                .filter_map(|&t| self.entries[t].latency_to(r))
                .fold(0.0, f64::max)
        });
        let oldest = tickets
            .iter()
            .map(|&t| self.tickets[t].joined_ms)
            .min()
            .unwrap_or(now_ms);
        Formed {
            teams,
            region: region.map(|r| self.regions[usize::from(r)].clone()),
            quality: Quality {
                skill_spread,
                team_skill_gap,
                max_latency_ms,
                max_wait_ms: (now_ms - oldest).max(0),
            },
            tickets,
        }
    }

    fn total_skill(&self, team: &[usize]) -> f64 {
        team.iter()
            .map(|&t| self.entries[t].skill * self.tickets[t].players.len() as f64)
            .sum()
    }

    /// Splits `tickets` (whose sizes pack) into `teams` of `team_size`; with `balance`, as
    /// even in total skill as the greedy fill and pairwise swaps make them.
    fn teams(&self, tickets: &[usize], teams: usize, team_size: usize, balance: bool) -> Vec<Vec<usize>> {
        let size = |t: usize| self.tickets[t].players.len();
        let weight = |t: usize| self.entries[t].skill * size(t) as f64;
        let mut order = tickets.to_vec();
        order.sort_by(|&a, &b| size(b).cmp(&size(a)).then(weight(b).total_cmp(&weight(a))));
        let mut out: Vec<Vec<usize>> = vec![Vec::new(); teams];
        let mut room = vec![team_size; teams];
        let mut total: Vec<f64> = vec![0.0; teams];
        let mut greedy_ok = true;
        for &t in &order {
            let pick = (0..teams).filter(|&i| room[i] >= size(t)).min_by(|&i, &j| {
                if balance {
                    total[i].total_cmp(&total[j]).then(i.cmp(&j))
                } else {
                    i.cmp(&j)
                }
            });
            let Some(i) = pick else {
                greedy_ok = false;
                break;
            };
            out[i].push(t);
            room[i] -= size(t);
            total[i] += weight(t);
        }
        if !greedy_ok {
            // The balanced fill boxed itself in: first fit decreasing always packs (the
            // search only admitted sizes it packs).
            let sizes: Vec<usize> = order.iter().map(|&t| size(t)).collect();
            let bins = pack(&sizes, teams, team_size).expect("the search admitted only sizes that pack");
            out = vec![Vec::new(); teams];
            for (k, &t) in order.iter().enumerate() {
                out[bins[k]].push(t);
            }
            total = out.iter().map(|team| self.total_skill(team)).collect();
        }
        if balance {
            // Swap equal-sized tickets between teams while that narrows the gap.
            for _ in 0..32 {
                let gap = spread_of(&total);
                let mut best: Option<(f64, usize, usize, usize, usize)> = None;
                for i in 0..teams {
                    for j in i + 1..teams {
                        for (x, &a) in out[i].iter().enumerate() {
                            for (y, &b) in out[j].iter().enumerate() {
                                if size(a) != size(b) {
                                    continue;
                                }
                                let delta = weight(b) - weight(a);
                                let mut after = total.clone();
                                after[i] += delta;
                                after[j] -= delta;
                                let new_gap = spread_of(&after);
                                if new_gap + 1e-9 < best.map_or(gap, |b| b.0) {
                                    best = Some((new_gap, i, x, j, y));
                                }
                            }
                        }
                    }
                }
                let Some((_, i, x, j, y)) = best else { break };
                let (a, b) = (out[i][x], out[j][y]);
                out[i][x] = b;
                out[j][y] = a;
                total[i] += weight(b) - weight(a);
                total[j] += weight(a) - weight(b);
            }
        }
        out
    }
}

/// Max - min.
fn spread_of(values: &[f64]) -> f64 {
    let (lo, hi) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    });
    if values.is_empty() { 0.0 } else { hi - lo }
}

/// First fit decreasing of `sizes` into `teams` bins of `team_size`: each size's bin (in the
/// order given), or `None` if they do not fit.
fn pack(sizes: &[usize], teams: usize, team_size: usize) -> Option<Vec<usize>> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| sizes[b].cmp(&sizes[a]));
    let mut room = vec![team_size; teams];
    let mut bins = vec![0; sizes.len()];
    for k in order {
        let i = (0..teams).find(|&i| room[i] >= sizes[k])?;
        room[i] -= sizes[k];
        bins[k] = i;
    }
    Some(bins)
}

/// Per region every player measured (of `usable`, if given): the worst of their latencies,
/// sorted by region id.
fn worst_latencies(
    players: &[Vec<(String, f64)>],
    usable: Option<&HashSet<String>>,
    regions: &mut Vec<String>,
    ids: &mut HashMap<String, u16>,
) -> Vec<(u16, f64)> {
    let Some((first, rest)) = players.split_first() else {
        return Vec::new();
    };
    let mut out: Vec<(u16, f64)> = Vec::with_capacity(first.len());
    for (region, ms) in first {
        if usable.is_some_and(|usable| !usable.contains(region)) {
            continue;
        }
        let mut worst = *ms;
        let everyone = rest.iter().all(|other| {
            other.iter().find(|(r, _)| r == region).is_some_and(|&(_, m)| {
                worst = worst.max(m);
                true
            })
        });
        if !everyone {
            continue;
        }
        let id = *ids.entry(region.clone()).or_insert_with(|| {
            regions.push(region.clone());
            u16::try_from(regions.len() - 1).unwrap_or(u16::MAX)
        });
        out.push((id, worst));
    }
    out.sort_by_key(|&(r, _)| r);
    out.dedup_by_key(|&mut (r, _)| r);
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::queues::Queues;

    const T0: i64 = 1_800_000_000_000;

    fn queue(yaml: &str) -> Queue {
        Queues::parse(&format!("queues:\n  - {yaml}"))
            .unwrap()
            .iter()
            .next()
            .unwrap()
            .clone()
    }

    fn ranked() -> Queue {
        queue(
            "{name: r, teams: 2, team_size: 2, max_party_size: 2, match_on: [mode],
              skill: {attribute: skill, max_spread: 100, widen_by: 50, widen_every_seconds: 5, max_spread_limit: 300, balance_teams: true},
              latency: {attribute: latency_ms, max_ms: 60, widen_by: 20, widen_every_seconds: 10, max_ms_limit: 100},
              max_wait_seconds: 60}",
        )
    }

    /// A ticket of `players` with these skills, one latency map for all, joined at `joined`.
    fn ticket(players: &[&str], skills: &[f64], latency: &[(&str, f64)], joined: i64) -> Ticket {
        Ticket {
            id: players[0].to_owned(),
            version: 1,
            order: joined as f64,
            joined_ms: joined,
            players: players.iter().map(|p| (*p).to_owned()).collect(),
            skills: skills.to_vec(),
            latencies: players
                .iter()
                .map(|_| latency.iter().map(|(r, ms)| ((*r).to_owned(), *ms)).collect())
                .collect(),
            match_key: vec!["ctf".to_owned()],
        }
    }

    fn ids(pool: &Pool, formed: &Formed) -> Vec<String> {
        let mut ids: Vec<String> = formed.tickets.iter().map(|&t| pool.tickets()[t].id.clone()).collect();
        ids.sort();
        ids
    }

    const EU: &[(&str, f64)] = &[("eu", 20.0), ("us", 120.0)];

    #[test]
    fn the_skill_window_widens_with_the_oldest_wait() {
        let q = ranked();
        let tickets = vec![
            ticket(&["a"], &[1000.0], EU, T0),
            ticket(&["b"], &[1100.0], EU, T0 + 1),
            ticket(&["c"], &[1150.0], EU, T0 + 2),
            ticket(&["d"], &[1140.0], EU, T0 + 3),
        ];
        // Spread 150 > 100: nothing at first, nor at 4.999 s.
        for at in [T0 + 10, T0 + 4_999] {
            assert!(
                Pool::new(&q, tickets.clone()).form(at, 10).sessions.is_empty(),
                "at {at}"
            );
        }
        // After 5 s the window is 150.
        let mut pool = Pool::new(&q, tickets);
        let plan = pool.form(T0 + 5_000, 10);
        assert_eq!(plan.sessions.len(), 1);
        let s = &plan.sessions[0];
        assert_eq!(s.quality.skill_spread, Some(150.0));
        assert_eq!(s.quality.max_wait_ms, 5_000);
        assert_eq!(s.region.as_deref(), Some("eu"));
        assert_eq!(s.quality.max_latency_ms, Some(20.0));
        assert!(plan.expired.is_empty());
    }

    #[test]
    fn tighter_sessions_are_preferred_and_the_oldest_anchors() {
        let q = ranked();
        let tickets = vec![
            ticket(&["old"], &[1500.0], EU, T0),
            ticket(&["far1"], &[1590.0], EU, T0 + 1),
            ticket(&["far2"], &[1410.0], EU, T0 + 2),
            ticket(&["n1"], &[1510.0], EU, T0 + 3),
            ticket(&["n2"], &[1490.0], EU, T0 + 4),
            ticket(&["n3"], &[1505.0], EU, T0 + 5),
        ];
        let mut pool = Pool::new(&q, tickets);
        let plan = pool.form(T0 + 10, 10);
        assert_eq!(plan.sessions.len(), 1, "the other two have no session of four");
        assert_eq!(ids(&pool, &plan.sessions[0]), ["n1", "n2", "n3", "old"]);
        assert_eq!(plan.sessions[0].quality.skill_spread, Some(20.0));
    }

    #[test]
    fn parties_stay_whole_on_one_team_and_teams_balance() {
        let q = ranked();
        let tickets = vec![
            ticket(&["p1", "p2"], &[1400.0, 1500.0], EU, T0),
            ticket(&["s1"], &[1480.0], EU, T0 + 1),
            ticket(&["s2"], &[1420.0], EU, T0 + 2),
        ];
        let mut pool = Pool::new(&q, tickets);
        let plan = pool.form(T0 + 10, 10);
        assert_eq!(plan.sessions.len(), 1);
        let s = &plan.sessions[0];
        let team_of = |id: &str| {
            s.teams
                .iter()
                .position(|team| team.iter().any(|&t| pool.tickets()[t].id == id))
                .unwrap()
        };
        assert_ne!(team_of("p1"), team_of("s1"));
        assert_eq!(team_of("s1"), team_of("s2"), "the singles fill the other team");
        // Party 2900 against 2900: even.
        assert_eq!(s.quality.team_skill_gap, Some(0.0));
        // A party's mean (1450) counts for the spread: 1480 - 1420.
        assert_eq!(s.quality.skill_spread, Some(60.0));
    }

    #[test]
    fn team_balance_splits_the_strongest() {
        let q = ranked();
        let tickets = vec![
            ticket(&["a"], &[1000.0], EU, T0),
            ticket(&["b"], &[1090.0], EU, T0 + 1),
            ticket(&["c"], &[1010.0], EU, T0 + 2),
            ticket(&["d"], &[1080.0], EU, T0 + 3),
        ];
        let mut pool = Pool::new(&q, tickets);
        let s = pool.form(T0, 10).sessions.remove(0);
        // {a, b} against {c, d}: 2090 vs 2090.
        assert_eq!(s.quality.team_skill_gap, Some(0.0));
        let unbalanced = queue(
            "{name: r, teams: 2, team_size: 2, skill: {attribute: skill, max_spread: 100}, latency: {attribute: l, max_ms: 60}}",
        );
        let tickets = pool.tickets().to_vec();
        let mut pool = Pool::new(&unbalanced, tickets);
        let s = pool.form(T0, 10).sessions.remove(0);
        assert!(s.quality.team_skill_gap.unwrap() > 0.0, "{s:?}");
    }

    #[test]
    fn the_region_is_the_one_with_the_lowest_worst_latency() {
        let q = ranked();
        let near_both: &[(&str, f64)] = &[("eu", 50.0), ("us", 30.0)];
        let tickets = vec![
            ticket(&["a"], &[1500.0], near_both, T0),
            ticket(&["b"], &[1500.0], &[("eu", 10.0), ("us", 40.0)], T0 + 1),
            ticket(&["c"], &[1500.0], near_both, T0 + 2),
            ticket(&["d"], &[1500.0], near_both, T0 + 3),
        ];
        let mut pool = Pool::new(&q, tickets);
        let s = pool.form(T0, 10).sessions.remove(0);
        assert_eq!(s.region.as_deref(), Some("us"));
        assert_eq!(s.quality.max_latency_ms, Some(40.0));
        // Someone only measured asia: no region all share.
        let mut tickets = pool.tickets().to_vec();
        tickets[3].latencies = vec![vec![("asia".to_owned(), 5.0)]];
        assert!(Pool::new(&q, tickets).form(T0, 10).sessions.is_empty());
    }

    #[test]
    fn a_region_down_is_never_chosen_and_the_next_one_every_latency_allows_is() {
        let q = ranked();
        let maps: [&[(&str, f64)]; 4] = [
            &[("eu", 10.0), ("us", 50.0), ("asia", 200.0)],
            &[("eu", 20.0), ("us", 55.0), ("asia", 190.0)],
            &[("eu", 15.0), ("us", 40.0), ("asia", 180.0)],
            &[("eu", 12.0), ("us", 58.0), ("asia", 170.0)],
        ];
        let tickets: Vec<Ticket> = (0..4)
            .map(|i| ticket(&[["a", "b", "c", "d"][i]], &[1500.0], maps[i], T0 + i as i64))
            .collect();
        let all: HashSet<String> = ["eu", "us", "asia"].map(String::from).into();
        let s = Pool::within(&q, tickets.clone(), Some(&all))
            .form(T0, 10)
            .sessions
            .remove(0);
        assert_eq!(s.region.as_deref(), Some("eu"));
        // eu down: us, where everyone is within 60 ms.
        let without_eu: HashSet<String> = ["us", "asia"].map(String::from).into();
        let s = Pool::within(&q, tickets.clone(), Some(&without_eu))
            .form(T0, 10)
            .sessions
            .remove(0);
        assert_eq!(
            (s.region.as_deref(), s.quality.max_latency_ms),
            (Some("us"), Some(58.0))
        );
        // us down too: asia is beyond every window until the wait widens it past 200 ms, which
        // this queue never does (its limit is 100): the tickets wait, and time out by the rules.
        let asia: HashSet<String> = ["asia".to_owned()].into();
        assert!(
            Pool::within(&q, tickets.clone(), Some(&asia))
                .form(T0 + 59_999, 10)
                .sessions
                .is_empty()
        );
        assert_eq!(
            Pool::within(&q, tickets, Some(&asia))
                .form(T0 + 60_003, 10)
                .expired
                .len(),
            4
        );
    }

    #[test]
    fn the_latency_window_widens_too() {
        let q = ranked();
        let far: &[(&str, f64)] = &[("eu", 75.0)];
        let tickets = vec![
            ticket(&["a"], &[1500.0], far, T0),
            ticket(&["b"], &[1500.0], EU, T0 + 1),
            ticket(&["c"], &[1500.0], EU, T0 + 2),
            ticket(&["d"], &[1500.0], EU, T0 + 3),
        ];
        assert!(Pool::new(&q, tickets.clone()).form(T0 + 9_999, 10).sessions.is_empty());
        let s = Pool::new(&q, tickets).form(T0 + 10_000, 10).sessions.remove(0);
        assert_eq!(s.quality.max_latency_ms, Some(75.0));
    }

    #[test]
    fn match_on_values_never_mix() {
        let q = ranked();
        let mut tickets: Vec<Ticket> = (0..4)
            .map(|i| ticket(&[&format!("p{i}")], &[1500.0], EU, T0 + i))
            .collect();
        tickets[2].match_key = vec!["koth".to_owned()];
        assert!(Pool::new(&q, tickets.clone()).form(T0 + 50_000, 10).sessions.is_empty());
        tickets[2].match_key = vec!["ctf".to_owned()];
        assert_eq!(Pool::new(&q, tickets).form(T0, 10).sessions.len(), 1);
    }

    fn backfilled_queue() -> Queue {
        queue(
            "{name: r, teams: 2, team_size: 2, max_party_size: 2, match_on: [mode],
              skill: {attribute: skill, max_spread: 100, widen_by: 50, widen_every_seconds: 5, max_spread_limit: 300, balance_teams: true},
              latency: {attribute: latency_ms, max_ms: 60, widen_by: 20, widen_every_seconds: 10, max_ms_limit: 100},
              backfill: {on_leave: true, leave_grace_seconds: 5, max_seconds: 30}}",
        )
    }

    /// A request of `sid` for one player on team 2 of a 2v2 in eu whose tickets range 1450-1550.
    fn one_short(sid: &str, since: i64) -> Backfill {
        Backfill {
            session_id: sid.to_owned(),
            since_ms: since,
            slots: vec![0, 1],
            match_key: vec!["ctf".to_owned()],
            skill_range: Some((1450.0, 1550.0)),
            targets: vec![1500.0, 1500.0],
            region: Some("eu".to_owned()),
        }
    }

    fn placed(pool: &Pool, plan: &Plan) -> Vec<(usize, usize, String)> {
        plan.backfilled
            .iter()
            .map(|f| (f.request, f.team, pool.tickets()[f.ticket].id.clone()))
            .collect()
    }

    #[test]
    fn backfill_fills_the_short_team_before_new_sessions_form() {
        let q = backfilled_queue();
        // Four that would form a session of their own: the one nearest 1500 fills the slot
        // first, and the other three wait.
        let tickets = vec![
            ticket(&["a"], &[1440.0], EU, T0),
            ticket(&["b"], &[1490.0], EU, T0 + 1),
            ticket(&["c"], &[1460.0], EU, T0 + 2),
            ticket(&["d"], &[1470.0], EU, T0 + 3),
        ];
        let mut pool = Pool::new(&q, tickets);
        let plan = pool.plan(T0 + 10, 10, &[one_short("s1", T0)]);
        assert_eq!(placed(&pool, &plan), vec![(0, 1, "b".to_owned())]);
        assert!(plan.sessions.is_empty(), "three left: no 2v2");
        // Without the request the four form a session.
        let mut pool = Pool::new(&q, pool.tickets().to_vec());
        assert_eq!(pool.plan(T0 + 10, 10, &[]).sessions.len(), 1);
    }

    #[test]
    fn backfill_keeps_the_rules_widened_by_the_requests_own_wait() {
        let q = backfilled_queue();
        // 1700 makes the session's spread 250: allowed once the request has waited 15 s
        // (100 + 3 x 50), not before, whatever the ticket's own wait.
        let far = vec![ticket(&["far"], &[1700.0], EU, T0 - 60_000)];
        let request = one_short("s1", T0);
        for at in [T0, T0 + 14_999] {
            let mut pool = Pool::new(&q, far.clone());
            assert!(
                pool.plan(at, 10, std::slice::from_ref(&request)).backfilled.is_empty(),
                "at {at}"
            );
        }
        let mut pool = Pool::new(&q, far.clone());
        assert_eq!(
            pool.plan(T0 + 15_000, 10, std::slice::from_ref(&request))
                .backfilled
                .len(),
            1
        );
        // Latency: 75 ms to eu needs the window at 80 (10 s of wait).
        let slow = vec![ticket(&["slow"], &[1500.0], &[("eu", 75.0)], T0)];
        let mut pool = Pool::new(&q, slow.clone());
        assert!(
            pool.plan(T0 + 9_999, 10, std::slice::from_ref(&request))
                .backfilled
                .is_empty()
        );
        let mut pool = Pool::new(&q, slow);
        assert_eq!(
            pool.plan(T0 + 10_000, 10, std::slice::from_ref(&request))
                .backfilled
                .len(),
            1
        );
        // Another mode's ticket, or one that never measured the region, never fits.
        let mut other = ticket(&["koth"], &[1500.0], EU, T0);
        other.match_key = vec!["koth".to_owned()];
        let asia = ticket(&["asia"], &[1500.0], &[("asia", 5.0)], T0);
        let mut pool = Pool::new(&q, vec![other, asia]);
        assert!(pool.plan(T0 + 60_000 - 1, 10, &[request]).backfilled.is_empty());
    }

    #[test]
    fn a_party_too_big_for_the_slot_waits_and_a_fitting_one_goes_whole() {
        let q = backfilled_queue();
        let tickets = vec![
            ticket(&["p1", "p2"], &[1500.0, 1500.0], EU, T0),
            ticket(&["s"], &[1540.0], EU, T0 + 1),
        ];
        let mut pool = Pool::new(&q, tickets.clone());
        let plan = pool.plan(T0 + 10, 10, &[one_short("s1", T0)]);
        assert_eq!(
            placed(&pool, &plan),
            vec![(0, 1, "s".to_owned())],
            "the pair does not fit one slot"
        );
        // Two open on one team: the pair goes there, whole.
        let mut two = one_short("s1", T0);
        two.slots = vec![2, 0];
        let mut pool = Pool::new(&q, tickets.clone());
        let plan = pool.plan(T0 + 10, 10, &[two]);
        assert_eq!(placed(&pool, &plan), vec![(0, 0, "p1".to_owned())]);
        // One open on each team: the pair cannot split.
        let mut split = one_short("s1", T0);
        split.slots = vec![1, 1];
        let mut pool = Pool::new(&q, tickets);
        let plan = pool.plan(T0 + 10, 10, &[split]);
        assert_eq!(placed(&pool, &plan), vec![(0, 0, "s".to_owned())]);
    }

    #[test]
    fn backfill_requests_end_at_their_max_and_the_oldest_fills_first() {
        let q = backfilled_queue();
        let tickets = vec![ticket(&["a"], &[1500.0], EU, T0)];
        let (older, newer) = (one_short("old", T0 - 20_000), one_short("new", T0));
        let mut pool = Pool::new(&q, tickets.clone());
        let plan = pool.plan(T0 + 9_999, 10, &[newer.clone(), older.clone()]);
        assert_eq!(
            placed(&pool, &plan),
            vec![(1, 1, "a".to_owned())],
            "the older request first"
        );
        assert!(plan.expired_backfills.is_empty());
        // 30 s after it opened, the older one ends unfilled and the newer one takes the player.
        let mut pool = Pool::new(&q, tickets);
        let plan = pool.plan(T0 + 10_000, 10, &[newer, older]);
        assert_eq!(plan.expired_backfills, vec![1]);
        assert_eq!(placed(&pool, &plan), vec![(0, 1, "a".to_owned())]);
    }

    #[test]
    fn a_fifo_session_backfills_several_slots_in_queue_skill_order() {
        let q = queue("{name: f, session_size: 4, min_session_size: 2, backfill: {}}");
        let plain = |id: &str, at: i64| Ticket {
            skills: Vec::new(),
            latencies: Vec::new(),
            match_key: Vec::new(),
            ..ticket(&[id], &[], &[], at)
        };
        let tickets = vec![plain("x", T0), plain("y", T0 + 1), plain("z", T0 + 2)];
        let request = Backfill {
            session_id: "s".into(),
            since_ms: T0,
            slots: vec![2],
            match_key: Vec::new(),
            skill_range: None,
            targets: vec![0.0],
            region: None,
        };
        let mut pool = Pool::new(&q, tickets);
        let plan = pool.plan(T0 + 5, 10, &[request]);
        assert_eq!(plan.backfilled.len(), 2);
        assert!(
            plan.sessions.is_empty(),
            "one left of a session of four, before the flush"
        );
    }

    #[test]
    fn tickets_time_out_at_max_wait_and_not_before() {
        let q = ranked();
        let tickets = vec![
            ticket(&["a"], &[1500.0], EU, T0),
            ticket(&["b"], &[1500.0], EU, T0 + 10_000),
        ];
        let plan = Pool::new(&q, tickets.clone()).form(T0 + 59_999, 10);
        assert!(plan.expired.is_empty());
        let mut pool = Pool::new(&q, tickets);
        let plan = pool.form(T0 + 60_000, 10);
        assert_eq!(plan.expired.len(), 1);
        assert_eq!(pool.tickets()[plan.expired[0]].id, "a");
    }

    #[test]
    fn fifo_rule_queues_flush_partial_sessions() {
        let q = queue("{name: f, session_size: 4, min_session_size: 2, flush_wait_seconds: 15, match_on: [mode]}");
        let tickets: Vec<Ticket> = (0..3)
            .map(|i| Ticket {
                skills: Vec::new(),
                latencies: Vec::new(),
                ..ticket(&[&format!("p{i}")], &[], &[], T0 + i)
            })
            .collect();
        assert!(Pool::new(&q, tickets.clone()).form(T0 + 14_999, 10).sessions.is_empty());
        let s = Pool::new(&q, tickets).form(T0 + 15_000, 10).sessions.remove(0);
        assert_eq!(s.tickets.len(), 3);
        assert!(s.teams.is_empty());
        assert_eq!(s.quality.skill_spread, None);
    }

    #[test]
    fn a_hundred_thousand_tickets_form_without_comparing_pairs() {
        let q = ranked();
        let tickets: Vec<Ticket> = (0..100_000)
            .map(|i| {
                let skill = 1000.0 + (i * 7919 % 1000) as f64;
                ticket(&[&format!("p{i}")], &[skill], EU, T0 + i)
            })
            .collect();
        let mut pool = Pool::new(&q, tickets);
        let plan = pool.form(T0 + 200_000, usize::MAX);
        assert_eq!(plan.sessions.len(), 25_000, "everyone placed");
    }

    /// A random queue of singles and pairs.
    fn arbitrary_tickets() -> impl Strategy<Value = Vec<Ticket>> {
        let one = (
            1usize..=2,
            1000.0f64..2000.0,
            0.0f64..100.0,
            prop::sample::select(vec!["eu", "us", "asia"]),
            0.0f64..150.0,
            0i64..120_000,
            any::<bool>(),
        );
        prop::collection::vec(one, 0..120).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, (size, skill, spread, home, far, joined, mode))| {
                    let players: Vec<String> = (0..size).map(|k| format!("t{i}m{k}")).collect();
                    let skills = (0..size).map(|k| skill + spread * k as f64).collect();
                    let latencies = (0..size)
                        .map(|k| {
                            ["eu", "us", "asia"]
                                .iter()
                                .map(|r| {
                                    let base = if *r == home { 15.0 } else { 60.0 + far };
                                    ((*r).to_owned(), base + 5.0 * k as f64)
                                })
                                .collect()
                        })
                        .collect();
                    Ticket {
                        id: players[0].clone(),
                        version: 1,
                        order: joined as f64,
                        joined_ms: T0 + joined,
                        players,
                        skills,
                        latencies,
                        match_key: vec![if mode { "ctf" } else { "koth" }.to_owned()],
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Every plan keeps every rule, as widened by each session's oldest ticket's wait.
        #[test]
        fn every_session_keeps_its_rules(tickets in arbitrary_tickets(), after in 0i64..60_000) {
            let q = ranked();
            // Every ticket joined in the first 120 s.
            let now = T0 + 120_000 + after;
            let mut pool = Pool::new(&q, tickets);
            let plan = pool.form(now, usize::MAX);
            let tickets = pool.tickets();
            let mut seen = vec![false; tickets.len()];
            for s in &plan.sessions {
                let oldest = s.tickets.iter().map(|&t| tickets[t].joined_ms).min().unwrap();
                prop_assert!(oldest <= now);
                let (spread, latency) = allowed(&q, now - oldest);
                let players: usize = s.tickets.iter().map(|&t| tickets[t].players.len()).sum();
                prop_assert_eq!(players, 4);
                prop_assert_eq!(s.teams.len(), 2);
                for team in &s.teams {
                    prop_assert_eq!(team.iter().map(|&t| tickets[t].players.len()).sum::<usize>(), 2);
                }
                let mut in_teams: Vec<usize> = s.teams.concat();
                in_teams.sort_unstable();
                let mut all = s.tickets.clone();
                all.sort_unstable();
                prop_assert_eq!(in_teams, all, "each ticket (a whole party) on exactly one team");
                let means: Vec<f64> = s.tickets.iter().map(|&t| {
                    tickets[t].skills.iter().sum::<f64>() / tickets[t].skills.len() as f64
                }).collect();
                prop_assert!(spread_of(&means) <= spread.unwrap() + 1e-6);
                let region = s.region.as_deref().unwrap();
                for &t in &s.tickets {
                    prop_assert!(!seen[t], "a ticket in two sessions");
                    seen[t] = true;
                    prop_assert_eq!(&tickets[t].match_key, &tickets[s.tickets[0]].match_key);
                    for player in &tickets[t].latencies {
                        let ms = player.iter().find(|(r, _)| r == region).unwrap().1;
                        prop_assert!(ms <= latency.unwrap());
                        prop_assert!(ms <= s.quality.max_latency_ms.unwrap());
                    }
                }
            }
            for &t in &plan.expired {
                prop_assert!(!seen[t], "an expired ticket was placed");
                seen[t] = true;
                prop_assert!(now - tickets[t].joined_ms >= 60_000);
            }
            for (t, placed) in seen.iter().enumerate() {
                if !placed {
                    prop_assert!(now - tickets[t].joined_ms < 60_000, "left waiting past max wait");
                }
            }
        }

        /// Packing accepts exactly the sizes that fit (checked against brute force).
        #[test]
        fn packing_is_sound(sizes in prop::collection::vec(1usize..=3, 0..7), teams in 1usize..=3, team_size in 3usize..=4) {
            match pack(&sizes, teams, team_size) {
                Some(bins) => {
                    let mut load = vec![0; teams];
                    for (k, &b) in bins.iter().enumerate() {
                        load[b] += sizes[k];
                    }
                    prop_assert!(load.iter().all(|&l| l <= team_size));
                }
                None => prop_assert!(sizes.iter().sum::<usize>() > teams * team_size || sizes.iter().any(|&s| s > team_size)
                    || !brute_force_packs(&sizes, teams, team_size)),
            }
        }
    }

    fn brute_force_packs(sizes: &[usize], teams: usize, team_size: usize) -> bool {
        fn go(sizes: &[usize], room: &mut [usize]) -> bool {
            let Some((&s, rest)) = sizes.split_first() else {
                return true;
            };
            for i in 0..room.len() {
                if room[i] >= s {
                    room[i] -= s;
                    let ok = go(rest, room);
                    room[i] += s;
                    if ok {
                        return true;
                    }
                }
            }
            false
        }
        go(sizes, &mut vec![team_size; teams])
    }
}
