//! Who joins, and how: the `fifo` scenario (plain joins to the default queue, as the original
//! clients) and the `ranked` scenario: skills normal around 1500 ± 300, three regions with
//! latency spreads, 20% of tickets parties of two, two game modes, joined by the studio's
//! service to the `ranked` queue (skill and parties come from a service).
//!
//! The `churn` scenario: players join the `casual` queue themselves and leave running matches
//! at a set rate, for backfill to fill the gaps.
//!
//! The same tickets can be matched in join order offline ([`join_order_quality`]), the
//! baseline a rule queue's sessions are compared with.

use std::collections::BTreeMap;

use protocol::api::{JoinRequest, PartyMember};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

/// The rule queue the ranked scenario joins (see `examples/queues.yaml`).
pub const RANKED_QUEUE: &str = "ranked";
/// The queue the churn and rollout scenarios join: in `examples/queues.yaml` one whose running
/// matches backfill players who left; the rollout demo gives it a queue file of its own.
pub const CHURN_QUEUE: &str = "casual";
/// The regions players measure.
pub const REGIONS: [&str; 3] = ["eu", "us", "asia"];
/// Round trip between two regions' players and servers, before jitter.
const DISTANCE_MS: [[f64; 3]; 3] = [[0.0, 85.0, 160.0], [85.0, 0.0, 120.0], [160.0, 120.0, 0.0]];

/// How players join.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Plain joins to the default queue.
    Fifo,
    /// Ranked tickets (skill, latency, parties, modes) to the `ranked` queue.
    Ranked,
    /// Players join the `casual` queue (which backfills); while matches run, players leave
    /// (`--churn-percent-per-minute`), some come back within the queue's leave grace, and
    /// each who leaves for good is replaced by a new player, whom backfill places into the
    /// running match.
    Churn,
    /// Players join the `casual` queue themselves, while an operator rolls a new server
    /// version out: once half the players have started, the weights go from `--rollout-from`
    /// to `--rollout-to` and `--rollout-from` is drained (needs ADMIN_TOKEN); the summary says
    /// how long the drain took to end the old version's last session, and what it cost.
    Rollout,
}

/// One player of a ticket.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub player: String,
    pub skill: f64,
    pub latency_ms: BTreeMap<&'static str, f64>,
}

/// One ticket: a player, or a party of two led by its first member.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    pub members: Vec<Member>,
    pub mode: &'static str,
}

impl Ticket {
    /// The join a service sends for it.
    pub fn join_request(&self) -> JoinRequest {
        let attributes = |m: &Member, leader: bool| -> Map<String, Value> {
            let mut a = Map::new();
            a.insert("skill".into(), json!(m.skill));
            a.insert("latency_ms".into(), json!(m.latency_ms));
            if leader {
                a.insert("mode".into(), json!(self.mode));
            }
            a
        };
        JoinRequest {
            player_id: self.members[0].player.clone(),
            queue: Some(RANKED_QUEUE.to_owned()),
            attributes: Some(attributes(&self.members[0], true)),
            party: (self.members.len() > 1).then(|| {
                self.members[1..]
                    .iter()
                    .map(|m| PartyMember {
                        player_id: m.player.clone(),
                        attributes: Some(attributes(m, false)),
                    })
                    .collect()
            }),
        }
    }

    /// The party's skill for the window: its members' mean.
    pub fn skill(&self) -> f64 {
        self.members.iter().map(|m| m.skill).sum::<f64>() / self.members.len() as f64
    }
}

/// Adds each region's `measured` round trip (ms) to every player's drawn latency there; a
/// region measured as not answering is left out of every map. Regions not measured stay as
/// drawn.
pub fn add_measured(tickets: &mut [Ticket], measured: &[(String, Option<f64>)]) {
    for member in tickets.iter_mut().flat_map(|t| t.members.iter_mut()) {
        for (region, trip) in measured {
            let Some(key) = REGIONS.iter().find(|r| *r == region) else {
                continue;
            };
            match trip {
                Some(ms) => {
                    if let Some(drawn) = member.latency_ms.get_mut(key) {
                        *drawn = ((*drawn + ms) * 10.0).round() / 10.0;
                    }
                }
                None => {
                    member.latency_ms.remove(key);
                }
            }
        }
    }
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Ranked tickets holding `players` players in all (ids `<prefix>-<n>`), the same for a seed.
pub fn ranked(prefix: &str, players: usize, seed: u64) -> Vec<Ticket> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tickets = Vec::new();
    let mut n = 0;
    while n < players {
        let size = if players - n >= 2 && rng.random_bool(0.2) { 2 } else { 1 };
        let home = match rng.random_range(0..100) {
            0..40 => 0,
            40..75 => 1,
            _ => 2,
        };
        let base = (1500.0 + 300.0 * normal(&mut rng)).clamp(0.0, 3000.0);
        let members = (0..size)
            .map(|k| {
                let skill = if k == 0 {
                    base
                } else {
                    (base + 100.0 * normal(&mut rng)).clamp(0.0, 3000.0)
                };
                let latency_ms = REGIONS
                    .iter()
                    .enumerate()
                    .map(|(r, name)| {
                        let near = if r == home { 10.0 } else { DISTANCE_MS[home][r] };
                        (*name, (near + rng.random_range(0.0..45.0)).round())
                    })
                    .collect();
                Member {
                    player: format!("{prefix}-{}", n + k),
                    skill: skill.round(),
                    latency_ms,
                }
            })
            .collect();
        n += size;
        tickets.push(Ticket {
            members,
            mode: if rng.random_bool(0.5) { "ctf" } else { "koth" },
        });
    }
    tickets
}

/// Quality of sessions: mean skill spread, mean and worst max latency.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct QualitySummary {
    pub sessions: usize,
    pub mean_skill_spread: f64,
    pub mean_max_latency_ms: f64,
    pub worst_latency_ms: f64,
}

impl QualitySummary {
    /// Summarises (skill spread, max latency) per session.
    pub fn of(sessions: &[(f64, f64)]) -> QualitySummary {
        if sessions.is_empty() {
            return QualitySummary::default();
        }
        let n = sessions.len() as f64;
        QualitySummary {
            sessions: sessions.len(),
            mean_skill_spread: sessions.iter().map(|s| s.0).sum::<f64>() / n,
            mean_max_latency_ms: sessions.iter().map(|s| s.1).sum::<f64>() / n,
            worst_latency_ms: sessions.iter().map(|s| s.1).fold(0.0, f64::max),
        }
    }
}

/// The same tickets matched in join order into sessions of `size` players (a party kept
/// whole; a ticket that does not fit waits for the next session), each on the region with the
/// lowest worst latency: the baseline for a rule queue's quality.
pub fn join_order_quality(tickets: &[Ticket], size: usize) -> QualitySummary {
    let mut sessions = Vec::new();
    let mut waiting: Vec<&Ticket> = Vec::new();
    for ticket in tickets {
        waiting.push(ticket);
        let mut chosen = Vec::new();
        let mut players = 0;
        for t in &waiting {
            if players + t.members.len() <= size {
                players += t.members.len();
                chosen.push(*t);
            }
        }
        if players < size {
            continue;
        }
        waiting.retain(|t| !chosen.iter().any(|c| std::ptr::eq(*c, *t)));
        let skills: Vec<f64> = chosen.iter().map(|t| t.skill()).collect();
        let spread = skills.iter().copied().fold(f64::MIN, f64::max) - skills.iter().copied().fold(f64::MAX, f64::min);
        let latency = REGIONS
            .iter()
            .map(|r| {
                chosen
                    .iter()
                    .flat_map(|t| t.members.iter().map(|m| m.latency_ms[r]))
                    .fold(0.0, f64::max)
            })
            .fold(f64::MAX, f64::min);
        sessions.push((spread, latency));
    }
    QualitySummary::of(&sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_round_trips_add_to_the_drawn_latencies_and_a_silent_region_is_left_out() {
        let mut tickets = ranked("m", 4, 9);
        let drawn = tickets.clone();
        add_measured(
            &mut tickets,
            &[
                ("eu".into(), Some(0.25)),
                ("asia".into(), None),
                ("mars".into(), Some(1.0)),
            ],
        );
        for (after, before) in tickets
            .iter()
            .flat_map(|t| &t.members)
            .zip(drawn.iter().flat_map(|t| &t.members))
        {
            assert_eq!(
                after.latency_ms["eu"],
                ((before.latency_ms["eu"] + 0.25) * 10.0).round() / 10.0
            );
            assert_eq!(after.latency_ms["us"], before.latency_ms["us"]);
            assert!(!after.latency_ms.contains_key("asia"));
        }
    }

    #[test]
    fn ranked_tickets_look_like_the_scenario_says() {
        let tickets = ranked("p", 10_000, 7);
        assert_eq!(tickets, ranked("p", 10_000, 7), "same seed, same tickets");
        let players: usize = tickets.iter().map(|t| t.members.len()).sum();
        assert_eq!(players, 10_000);
        let parties = tickets.iter().filter(|t| t.members.len() == 2).count() as f64;
        assert!((0.17..0.23).contains(&(parties / tickets.len() as f64)), "{parties}");
        let skills: Vec<f64> = tickets.iter().flat_map(|t| t.members.iter().map(|m| m.skill)).collect();
        let mean = skills.iter().sum::<f64>() / skills.len() as f64;
        let sd = (skills.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / skills.len() as f64).sqrt();
        assert!(
            (1480.0..1520.0).contains(&mean) && (280.0..320.0).contains(&sd),
            "{mean} ± {sd}"
        );
        let body = serde_json::to_value(tickets.iter().find(|t| t.members.len() == 2).unwrap().join_request()).unwrap();
        assert_eq!(body["queue"], "ranked");
        assert_eq!(body["party"].as_array().unwrap().len(), 1);
        assert!(body["attributes"]["latency_ms"]["asia"].is_number());
        let baseline = join_order_quality(&tickets, 6);
        assert!(
            baseline.sessions > 1500 && baseline.mean_skill_spread > 300.0,
            "{baseline:?}"
        );
    }
}
