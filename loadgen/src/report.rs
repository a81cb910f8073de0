//! What a swarm saw: per-client records, and the summary built from them — outcomes, latency
//! percentiles per phase, sessions and their sizes, and client-side invariant checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use protocol::sessions::Placement;

use crate::host_cpu::Busy;
use crate::scenario::{QualitySummary, Scenario};
use crate::stats::{Summary, summarize};

/// How one client's life ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    JoinFailed(String),
    StatusFailed(String),
    NotMatched(String),
    ConnectFailed(String),
    Refused(String),
    Protocol(String),
    WrongLength(String),
    Timeout,
    /// The queue could not place the ticket within its `max_wait_seconds`.
    TimedOut,
}

impl Outcome {
    /// The kind, for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::JoinFailed(_) => "join_failed",
            Outcome::StatusFailed(_) => "status_failed",
            Outcome::NotMatched(_) => "not_matched",
            Outcome::ConnectFailed(_) => "connect_failed",
            Outcome::Refused(_) => "refused",
            Outcome::Protocol(_) => "protocol_error",
            Outcome::WrongLength(_) => "wrong_length",
            Outcome::Timeout => "timeout",
            Outcome::TimedOut => "timed_out",
        }
    }

    fn detail(&self) -> String {
        match self {
            Outcome::Ok | Outcome::Timeout | Outcome::TimedOut => String::new(),
            Outcome::JoinFailed(d)
            | Outcome::StatusFailed(d)
            | Outcome::NotMatched(d)
            | Outcome::ConnectFailed(d)
            | Outcome::Refused(d)
            | Outcome::Protocol(d)
            | Outcome::WrongLength(d) => d.clone(),
        }
    }
}

/// One simulated player's record.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    pub player: String,
    pub outcome: Outcome,
    pub session_id: Option<String>,
    /// The session's roster as the backend told this player.
    pub session_players: Vec<String>,
    pub running_length: Option<u64>,
    pub join_to_matched: Option<Duration>,
    pub matched_to_connected: Option<Duration>,
    pub connected_to_running: Option<Duration>,
    /// The time to play: from its first join to its match running.
    pub join_to_running: Option<Duration>,
    /// When its match was running.
    pub running_at: Option<Instant>,
    pub match_lasted: Option<Duration>,
    pub life: Option<Duration>,
    /// API calls retried after a transient failure (503, 429, a dropped connection).
    pub retries: u32,
    /// Times the client joined again because the matchmaker no longer knew it.
    pub rejoins: u32,
    /// Times its match broke off and the matchmaker queued its ticket again (its server's
    /// region lost): it then played its next session.
    pub requeues: u32,
    /// Times its match broke off while its session still ran, and it connected again.
    pub reconnects: u32,
    /// Its session's queue, teams, region and quality, as its status told it.
    pub placement: Placement,
    /// The team the game server said it is on (`TEAM`).
    pub team_told: Option<Vec<String>>,
    /// Everyone on its ticket, itself included, when it joined as a party.
    pub party: Vec<String>,
    /// The queue it joined.
    pub queue: String,
    /// Placed into a running match by backfill: when the slot it took opened (ms since the
    /// epoch), and how long from then until its match was running for it.
    pub backfill_since_ms: Option<i64>,
    pub backfill_wait: Option<Duration>,
    /// When it started (ms since the epoch): whether it was waiting when its slot opened.
    pub started_ms: i64,
    /// Churn: it left its match for good.
    pub left_for_good: bool,
    /// Churn: times it left and came back within the leave grace.
    pub came_back: u32,
}

impl ClientRecord {
    pub fn new(player: String) -> Self {
        ClientRecord {
            player,
            outcome: Outcome::Timeout,
            session_id: None,
            session_players: Vec::new(),
            backfill_since_ms: None,
            backfill_wait: None,
            started_ms: 0,
            left_for_good: false,
            came_back: 0,
            running_length: None,
            join_to_matched: None,
            matched_to_connected: None,
            connected_to_running: None,
            join_to_running: None,
            running_at: None,
            match_lasted: None,
            life: None,
            retries: 0,
            rejoins: 0,
            requeues: 0,
            reconnects: 0,
            placement: Placement::default(),
            team_told: None,
            party: Vec::new(),
            queue: "default".to_owned(),
        }
    }
}

/// Latency percentiles per phase.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Latencies {
    pub join_to_matched: Summary,
    pub matched_to_connected: Summary,
    pub connected_to_running: Summary,
    /// The time to play: first join to the match running.
    pub join_to_running: Summary,
    pub whole_life: Summary,
}

/// A rollout during a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RolloutSummary {
    pub from: String,
    pub to: String,
    /// From the drain to the old version's last session ending (`None`: not within the run).
    pub drain_to_drained_ms: Option<f64>,
    /// Sessions of the old version a player saw fail (not played to its end): the target is 0.
    pub sessions_lost: usize,
}

/// What backfill did in a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BackfillReport {
    /// Players placed into a running match's open slot.
    pub slots_filled: usize,
    /// From the slot opening to the newcomer's match running.
    pub slot_to_running: Summary,
    /// The same, for the newcomers already waiting when their slot opened (what matchplane
    /// takes), and for those who joined after it (the slot waited for a player).
    pub waiting_slot_to_running: Summary,
    pub late_slot_to_running: Summary,
    /// Churn: players who left their match for good (each replaced by a new player).
    pub left_for_good: usize,
    /// Churn: times players left and came back within the leave grace.
    pub came_back: u64,
}

/// Client-side checks of the session invariants (docs/architecture.md).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Invariants {
    /// Players that appear in the rosters of two different sessions.
    pub players_in_two_sessions: Vec<String>,
    /// Sessions whose size is outside [min, max].
    pub sizes_out_of_bounds: Vec<String>,
    /// Sessions whose members were told different rosters.
    pub inconsistent_rosters: Vec<String>,
    /// Players whose own session's roster does not list them.
    pub not_in_own_roster: Vec<String>,
    /// Sessions whose teams are not equal in size or do not make up the roster, or whose
    /// game server told a player another team.
    pub teams_wrong: Vec<String>,
    /// Parties (by first member) whose members were not all in one session on one team.
    pub parties_split: Vec<String>,
    pub ok: bool,
}

/// A failure, for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Failure {
    pub player: String,
    pub kind: &'static str,
    pub detail: String,
}

/// How many failures the summary lists one by one.
const LISTED_FAILURES: usize = 20;

/// The swarm's summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub clients: usize,
    pub ok: usize,
    /// Clients that failed (not counting `timed_out`).
    pub failed: usize,
    /// Players whose ticket ended `timed_out`: their queue's `max_wait_seconds` passed without
    /// a session (the few a rule queue cannot place at the end of a run). Not failures, up to
    /// `max_timed_out_percent` of the clients.
    pub timed_out: usize,
    /// The most players, in percent of the clients, that may time out in their queue in a
    /// run that passes.
    pub max_timed_out_percent: f64,
    pub outcomes: BTreeMap<&'static str, usize>,
    /// Up to 20 failures, with what went wrong.
    pub failures: Vec<Failure>,
    /// Failures beyond those listed.
    pub failures_not_listed: usize,
    /// API calls retried after transient failures, over all clients.
    pub retries: u64,
    /// Re-joins after the matchmaker forgot a client, over all clients.
    pub rejoins: u64,
    /// Matches that failed under players who were requeued and played their next session
    /// (a region lost), over all clients.
    pub requeues: u64,
    /// Game connections made again to a session that still ran, over all clients.
    pub reconnects: u64,
    pub latency_ms: Latencies,
    /// Backfill: players placed into running matches, how long from a slot opening to the
    /// newcomer's match running, and (churn) who left and who came back.
    pub backfill: BackfillReport,
    /// Sessions per server version (profiles with versions), as players' statuses said.
    pub sessions_per_version: BTreeMap<String, usize>,
    /// Per region sessions were placed in (as players' statuses said): its sessions, its
    /// players, and their time to play.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub regions: BTreeMap<String, RegionReport>,
    /// With regions: each player whose match ran, when it started (ms since the epoch), its
    /// match's region and its time to play in ms, for phases a run marks (a region killed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub time_to_play: Vec<(i64, String, f64)>,
    /// Each session's roster, as its players' statuses last said it (for checks against the
    /// history).
    pub rosters: BTreeMap<String, Vec<String>>,
    /// The rollout scenario: what the operator did, and what it cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSummary>,
    pub sessions: usize,
    /// Session size → how many sessions had it.
    pub session_sizes: BTreeMap<usize, usize>,
    /// Per queue: time to match and the sessions' quality.
    pub queues: BTreeMap<String, QueueReport>,
    pub invariants: Invariants,
    pub wall_seconds: f64,
    pub match_duration_seconds: f64,
    /// This loadgen process's peak resident set, in MiB (Linux), for memory per client.
    pub loadgen_peak_rss_mib: Option<f64>,
    /// How busy this machine's CPUs were from the first join to the last match running
    /// (Linux): near 1 when the stack shares the machine and the run was bounded by its CPU.
    pub cpu_busy_to_last_running: Option<Busy>,
    /// The sessions clients were in at the end, for tests (not serialized).
    #[serde(skip)]
    pub session_ids: Vec<String>,
    /// Raw samples per phase in ms, for the chart (not serialized).
    #[serde(skip)]
    pub samples_ms: Vec<(&'static str, Vec<f64>)>,
}

fn collect(records: &[ClientRecord], pick: impl Fn(&ClientRecord) -> Option<Duration>) -> Vec<Duration> {
    records.iter().filter_map(pick).collect()
}

/// This process's peak resident set size (`VmHWM`), in MiB, where the OS tells it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Checks the rosters (and, in a queue with teams, the teams and parties) the clients were
/// told.
/// With `rosters_change` (a queue that backfills), a session's roster is what its players saw
/// at different times: each must be within the sizes, and the session's players are all that
/// any of them saw; nobody may be in two sessions still.
pub fn check_invariants(
    records: &[ClientRecord],
    min: usize,
    max: usize,
    rosters_change: bool,
) -> (Invariants, BTreeMap<usize, usize>) {
    if rosters_change {
        return check_changing_rosters(records, min, max);
    }
    let mut rosters: HashMap<&str, &Vec<String>> = HashMap::new();
    let mut teams: HashMap<&str, &Vec<Vec<String>>> = HashMap::new();
    let mut inv = Invariants::default();
    let mut inconsistent = HashSet::new();
    let mut teams_wrong = HashSet::new();
    for r in records {
        let Some(sid) = r.session_id.as_deref() else { continue };
        if !r.session_players.contains(&r.player) {
            inv.not_in_own_roster.push(r.player.clone());
        }
        match rosters.get(sid) {
            Some(seen) if **seen != r.session_players => {
                inconsistent.insert(sid.to_owned());
            }
            Some(_) => {}
            None => {
                rosters.insert(sid, &r.session_players);
            }
        }
        if !r.placement.teams.is_empty() {
            match teams.get(sid) {
                Some(seen) if **seen != r.placement.teams => {
                    inconsistent.insert(sid.to_owned());
                }
                Some(_) => {}
                None => {
                    teams.insert(sid, &r.placement.teams);
                }
            }
            // What the game server said must be the team the matchmaker put the player on.
            if let Some(told) = &r.team_told
                && !r
                    .placement
                    .teams
                    .iter()
                    .any(|t| t.contains(&r.player) && same_players(t, told))
            {
                teams_wrong.insert(sid.to_owned());
            }
        }
    }
    for (sid, session_teams) in &teams {
        let sizes: HashSet<usize> = session_teams.iter().map(Vec::len).collect();
        let mut members: Vec<&String> = session_teams.iter().flatten().collect();
        members.sort();
        let mut roster: Vec<&String> = rosters.get(sid).map(|r| r.iter().collect()).unwrap_or_default();
        roster.sort();
        if sizes.len() != 1 || members != roster {
            teams_wrong.insert((*sid).to_owned());
        }
    }
    // Every member of a party in one session, on one team.
    let by_player: HashMap<&str, &ClientRecord> = records.iter().map(|r| (r.player.as_str(), r)).collect();
    let team_of = |r: &ClientRecord| r.placement.teams.iter().position(|t| t.contains(&r.player));
    let mut split = HashSet::new();
    for r in records.iter().filter(|r| r.party.len() > 1 && r.session_id.is_some()) {
        for other in r.party.iter().filter_map(|p| by_player.get(p.as_str())) {
            if other.session_id.is_some() && (other.session_id != r.session_id || team_of(other) != team_of(r)) {
                split.insert(r.party[0].clone());
            }
        }
    }
    let mut owner: HashMap<&str, &str> = HashMap::new();
    let mut twice = HashSet::new();
    let mut sizes = BTreeMap::new();
    for (sid, roster) in &rosters {
        *sizes.entry(roster.len()).or_default() += 1;
        if roster.len() < min || roster.len() > max {
            inv.sizes_out_of_bounds.push((*sid).to_owned());
        }
        for player in roster.iter() {
            if let Some(other) = owner.insert(player, sid)
                && other != *sid
            {
                twice.insert(player.clone());
            }
        }
    }
    let sorted = |set: HashSet<String>| {
        let mut v: Vec<String> = set.into_iter().collect();
        v.sort();
        v
    };
    inv.players_in_two_sessions = sorted(twice);
    inv.inconsistent_rosters = sorted(inconsistent);
    inv.teams_wrong = sorted(teams_wrong);
    inv.parties_split = sorted(split);
    inv.sizes_out_of_bounds.sort();
    inv.ok = inv.players_in_two_sessions.is_empty()
        && inv.sizes_out_of_bounds.is_empty()
        && inv.inconsistent_rosters.is_empty()
        && inv.not_in_own_roster.is_empty()
        && inv.teams_wrong.is_empty()
        && inv.parties_split.is_empty();
    (inv, sizes)
}

fn check_changing_rosters(records: &[ClientRecord], min: usize, max: usize) -> (Invariants, BTreeMap<usize, usize>) {
    let mut inv = Invariants::default();
    let mut players: HashMap<&str, Vec<&String>> = HashMap::new();
    let mut out_of_bounds = HashSet::new();
    let mut largest: HashMap<&str, usize> = HashMap::new();
    for r in records {
        let Some(sid) = r.session_id.as_deref() else { continue };
        if !r.session_players.contains(&r.player) {
            inv.not_in_own_roster.push(r.player.clone());
        }
        let n = r.session_players.len();
        // A session shrinks by leavers and grows again by backfill: never past its size, and
        // never below the least one forms with unless someone it formed with left.
        if n > max || (n < min && r.backfill_since_ms.is_none()) {
            out_of_bounds.insert(sid.to_owned());
        }
        let entry = largest.entry(sid).or_default();
        *entry = (*entry).max(n);
        let seen = players.entry(sid).or_default();
        for p in &r.session_players {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
    }
    let mut owner: HashMap<&str, &str> = HashMap::new();
    let mut twice = HashSet::new();
    for (sid, seen) in &players {
        for p in seen {
            if let Some(other) = owner.insert(p.as_str(), sid)
                && other != *sid
            {
                twice.insert((*p).clone());
            }
        }
    }
    let mut sizes = BTreeMap::new();
    for n in largest.values() {
        *sizes.entry(*n).or_default() += 1;
    }
    inv.players_in_two_sessions = twice.into_iter().collect();
    inv.players_in_two_sessions.sort();
    inv.sizes_out_of_bounds = out_of_bounds.into_iter().collect();
    inv.sizes_out_of_bounds.sort();
    inv.ok = inv.players_in_two_sessions.is_empty()
        && inv.sizes_out_of_bounds.is_empty()
        && inv.not_in_own_roster.is_empty();
    (inv, sizes)
}

/// Whether two lists name the same players, in any order.
fn same_players(a: &[String], b: &[String]) -> bool {
    let mut a: Vec<&String> = a.iter().collect();
    let mut b: Vec<&String> = b.iter().collect();
    a.sort();
    b.sort();
    a == b
}

/// What one queue's players saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueReport {
    /// Players matched in it.
    pub players: usize,
    /// Of those, players that joined in a party.
    pub players_in_parties: usize,
    pub sessions: usize,
    /// Players whose ticket ended `timed_out` in it.
    pub timed_out: usize,
    /// Each matched player's join → matched, as the client saw it.
    pub join_to_matched_ms: Summary,
    /// Its sessions' skill spread and worst latency (queues with such rules).
    pub quality: Option<QualitySummary>,
    /// Mean gap between its sessions' teams' total skills (queues that balance teams).
    pub mean_team_skill_gap: Option<f64>,
    /// The longest its oldest ticket had waited when a session formed.
    pub max_wait_ms: Option<i64>,
    /// The same players' tickets matched in join order (the ranked scenario).
    pub join_order: Option<QualitySummary>,
}

/// What one region's players saw.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RegionReport {
    pub sessions: usize,
    /// Players whose match ran there.
    pub players: usize,
    /// Their time to play (first join to the match running, a failover's wait included).
    pub join_to_running: Summary,
}

/// Per region, the sessions, players and time to play of the players whose match ran there.
fn per_region(records: &[ClientRecord]) -> BTreeMap<String, RegionReport> {
    let mut regions: BTreeMap<String, (HashSet<&str>, Vec<Duration>)> = BTreeMap::new();
    for r in records {
        let (Some(region), Some(sid), Some(to_running)) =
            (r.placement.region.as_ref(), r.session_id.as_deref(), r.join_to_running)
        else {
            continue;
        };
        let (sessions, times) = regions.entry(region.clone()).or_default();
        sessions.insert(sid);
        times.push(to_running);
    }
    regions
        .into_iter()
        .map(|(region, (sessions, times))| {
            let report = RegionReport {
                sessions: sessions.len(),
                players: times.len(),
                join_to_running: summarize(&times),
            };
            (region, report)
        })
        .collect()
}

/// What each queue's players saw, by queue name (`default` when a session names none).
fn per_queue(records: &[ClientRecord], join_order: Option<QualitySummary>) -> BTreeMap<String, QueueReport> {
    /// One queue's matched records, its sessions' placements, its timed-out players.
    #[derive(Default)]
    struct Seen<'a> {
        matched: Vec<&'a ClientRecord>,
        sessions: HashMap<&'a str, &'a Placement>,
        timed_out: usize,
    }
    let mut queues: BTreeMap<String, Seen> = BTreeMap::new();
    for r in records {
        let seen = queues.entry(r.queue.clone()).or_default();
        if r.outcome == Outcome::TimedOut {
            seen.timed_out += 1;
        }
        if let (Some(sid), Some(_)) = (r.session_id.as_deref(), r.join_to_matched) {
            seen.matched.push(r);
            seen.sessions.insert(sid, &r.placement);
        }
    }
    queues
        .into_iter()
        .map(
            |(
                name,
                Seen {
                    matched,
                    sessions,
                    timed_out,
                },
            )| {
                let placements: Vec<&Placement> = sessions.values().copied().collect();
                let quality: Vec<(f64, f64)> = placements
                    .iter()
                    .filter_map(|p| Some((p.skill_spread?, p.max_latency_ms?)))
                    .collect();
                let gaps: Vec<f64> = placements.iter().filter_map(|p| p.team_skill_gap).collect();
                let ranked = name == crate::scenario::RANKED_QUEUE;
                let report = QueueReport {
                    players: matched.len(),
                    players_in_parties: matched.iter().filter(|r| r.party.len() > 1).count(),
                    sessions: sessions.len(),
                    timed_out,
                    join_to_matched_ms: summarize(&collect_refs(&matched, |r| r.join_to_matched)),
                    quality: (!quality.is_empty()).then(|| QualitySummary::of(&quality)),
                    mean_team_skill_gap: (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64),
                    max_wait_ms: placements.iter().filter_map(|p| p.max_wait_ms).max(),
                    join_order: join_order.filter(|_| ranked),
                };
                (name, report)
            },
        )
        .collect()
}

fn collect_refs(records: &[&ClientRecord], pick: impl Fn(&ClientRecord) -> Option<Duration>) -> Vec<Duration> {
    records.iter().filter_map(|r| pick(r)).collect()
}

/// How a swarm was set up, for its report.
#[derive(Debug, Clone)]
pub struct Setup {
    pub wall: Duration,
    pub min_session_size: usize,
    pub max_session_size: usize,
    /// Sessions' rosters change while they run (a queue that backfills).
    pub rosters_change: bool,
    pub match_duration: f64,
    pub scenario: Scenario,
    /// The scenario's tickets matched in join order (ranked).
    pub join_order: Option<QualitySummary>,
    /// This machine's CPUs from the first join to the last match running.
    pub cpu_busy: Option<Busy>,
    /// The most players, in percent, that may time out in their queue in a run that passes.
    pub max_timed_out_percent: f64,
}

impl Report {
    /// Summarises the records of a run.
    pub fn build(records: &[ClientRecord], setup: &Setup) -> Report {
        let mut outcomes = BTreeMap::new();
        for r in records {
            *outcomes.entry(r.outcome.kind()).or_default() += 1;
        }
        let ok = outcomes.get("ok").copied().unwrap_or(0);
        let timed_out = outcomes.get("timed_out").copied().unwrap_or(0);
        let failures: Vec<Failure> = records
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Ok | Outcome::TimedOut))
            .take(LISTED_FAILURES)
            .map(|r| Failure {
                player: r.player.clone(),
                kind: r.outcome.kind(),
                detail: r.outcome.detail(),
            })
            .collect();
        let phases: [(&'static str, Vec<Duration>); 5] = [
            ("join→matched", collect(records, |r| r.join_to_matched)),
            ("matched→connected", collect(records, |r| r.matched_to_connected)),
            ("connected→running", collect(records, |r| r.connected_to_running)),
            ("join→running", collect(records, |r| r.join_to_running)),
            (
                "whole life",
                collect(records, |r| r.life.filter(|_| r.outcome == Outcome::Ok)),
            ),
        ];
        let (invariants, session_sizes) = check_invariants(
            records,
            setup.min_session_size,
            setup.max_session_size,
            setup.rosters_change,
        );
        let failed = records.len() - ok - timed_out;
        Report {
            scenario: setup.scenario,
            clients: records.len(),
            ok,
            failed,
            timed_out,
            max_timed_out_percent: setup.max_timed_out_percent,
            queues: per_queue(records, setup.join_order),
            outcomes,
            session_ids: {
                let ids: std::collections::BTreeSet<&String> =
                    records.iter().filter_map(|r| r.session_id.as_ref()).collect();
                ids.into_iter().cloned().collect()
            },
            failures_not_listed: failed.saturating_sub(failures.len()),
            failures,
            retries: records.iter().map(|r| u64::from(r.retries)).sum(),
            backfill: BackfillReport {
                slots_filled: records.iter().filter(|r| r.backfill_since_ms.is_some()).count(),
                slot_to_running: summarize(&collect(records, |r| r.backfill_wait)),
                waiting_slot_to_running: summarize(&collect(records, |r| {
                    r.backfill_wait
                        .filter(|_| r.backfill_since_ms.is_some_and(|s| r.started_ms < s))
                })),
                late_slot_to_running: summarize(&collect(records, |r| {
                    r.backfill_wait
                        .filter(|_| r.backfill_since_ms.is_some_and(|s| r.started_ms >= s))
                })),
                left_for_good: records.iter().filter(|r| r.left_for_good).count(),
                came_back: records.iter().map(|r| u64::from(r.came_back)).sum(),
            },
            rollout: None,
            sessions_per_version: {
                let mut per: BTreeMap<String, HashSet<&str>> = BTreeMap::new();
                for r in records {
                    if let (Some(v), Some(sid)) = (&r.placement.version, &r.session_id) {
                        per.entry(v.clone()).or_default().insert(sid);
                    }
                }
                per.into_iter().map(|(v, s)| (v, s.len())).collect()
            },
            rejoins: records.iter().map(|r| u64::from(r.rejoins)).sum(),
            requeues: records.iter().map(|r| u64::from(r.requeues)).sum(),
            reconnects: records.iter().map(|r| u64::from(r.reconnects)).sum(),
            regions: per_region(records),
            rosters: records
                .iter()
                .filter_map(|r| Some((r.session_id.clone()?, r.session_players.clone())))
                .collect(),
            time_to_play: records
                .iter()
                .filter_map(|r| {
                    let (region, to_running) = (r.placement.region.as_ref()?, r.join_to_running?);
                    Some((r.started_ms, region.clone(), to_running.as_secs_f64() * 1000.0))
                })
                .collect(),
            latency_ms: Latencies {
                join_to_matched: summarize(&phases[0].1),
                matched_to_connected: summarize(&phases[1].1),
                connected_to_running: summarize(&phases[2].1),
                join_to_running: summarize(&phases[3].1),
                whole_life: summarize(&phases[4].1),
            },
            sessions: session_sizes.values().sum(),
            session_sizes,
            invariants,
            wall_seconds: setup.wall.as_secs_f64(),
            match_duration_seconds: setup.match_duration,
            loadgen_peak_rss_mib: peak_rss_mib(),
            cpu_busy_to_last_running: setup.cpu_busy,
            samples_ms: phases
                .into_iter()
                .map(|(name, d)| (name, d.iter().map(|x| x.as_secs_f64() * 1000.0).collect()))
                .collect(),
        }
    }

    /// Adds the rollout the run made: the old version's sessions some player of which did not
    /// finish are lost (a drain must stop none).
    pub fn set_rollout(&mut self, records: &[ClientRecord], rollout: crate::swarm::RolloutReport) {
        let lost: HashSet<&str> = records
            .iter()
            .filter(|r| r.placement.version.as_deref() == Some(rollout.from.as_str()) && r.outcome != Outcome::Ok)
            .filter_map(|r| r.session_id.as_deref())
            .collect();
        self.rollout = Some(RolloutSummary {
            drain_to_drained_ms: rollout.drain_to_drained.map(|d| d.as_secs_f64() * 1000.0),
            sessions_lost: lost.len(),
            from: rollout.from,
            to: rollout.to,
        });
    }

    /// Whether the run passed: every client ok (or, in a rule queue, timed out waiting, but
    /// no more than `max_timed_out_percent` of them), some session formed if any ticket timed
    /// out, and every invariant held.
    pub fn passed(&self) -> bool {
        self.failed == 0
            && self
                .rollout
                .as_ref()
                .is_none_or(|r| r.sessions_lost == 0 && r.drain_to_drained_ms.is_some())
            && !self.too_many_timed_out()
            && (self.timed_out == 0 || self.sessions > 0)
            && self.invariants.ok
    }

    fn too_many_timed_out(&self) -> bool {
        self.timed_out as f64 * 100.0 > self.clients as f64 * self.max_timed_out_percent
    }

    /// The human summary.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "== matchplane swarm summary ==");
        let _ = writeln!(
            out,
            "clients: {}   ok: {}   failed: {}   wall time: {:.1} s   match length asked: {} s",
            self.clients, self.ok, self.failed, self.wall_seconds, self.match_duration_seconds
        );
        let outcomes: Vec<String> = self.outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "outcomes: {}", outcomes.join(", "));
        let _ = writeln!(
            out,
            "played: {} of {} players{}",
            self.ok,
            self.clients,
            match (self.timed_out, self.failed) {
                (0, 0) => String::new(),
                (t, 0) => format!(" ({t} timed out in their queue)"),
                (0, f) => format!(" ({f} failed)"),
                (t, f) => format!(" ({t} timed out in their queue, {f} failed)"),
            }
        );
        if self.timed_out > 0 {
            let percent = self.timed_out as f64 * 100.0 / self.clients.max(1) as f64;
            if self.too_many_timed_out() {
                let _ = writeln!(
                    out,
                    "too many timed out: {} players ({percent:.0}%) waited out max_wait_seconds without a session, above the {}% allowed: the queue's rules could not place them",
                    self.timed_out, self.max_timed_out_percent
                );
            } else {
                let _ = writeln!(
                    out,
                    "timed out in their queue: {} players ({percent:.0}%; max_wait_seconds passed without a session: not failures, up to {}%)",
                    self.timed_out, self.max_timed_out_percent
                );
            }
        }
        if self.retries > 0 || self.rejoins > 0 || self.requeues > 0 || self.reconnects > 0 {
            let _ = writeln!(
                out,
                "recovered: {} API calls retried after transient failures, {} re-joins after the matchmaker forgot a player, {} waits for a next session after a failed one, {} game connections made again to a session still running",
                self.retries, self.rejoins, self.requeues, self.reconnects
            );
        }
        let _ = writeln!(
            out,
            "latency (ms)            {:>6} {:>9} {:>9} {:>9} {:>9}",
            "n", "p50", "p90", "p99", "max"
        );
        let l = &self.latency_ms;
        for (name, s) in [
            ("join → matched", &l.join_to_matched),
            ("matched → connected", &l.matched_to_connected),
            ("connected → running", &l.connected_to_running),
            ("join → running", &l.join_to_running),
            ("whole life", &l.whole_life),
        ] {
            let _ = writeln!(
                out,
                "  {name:<21} {:>6} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.max_ms
            );
        }
        let b = &self.backfill;
        if b.slots_filled > 0 || b.left_for_good > 0 || b.came_back > 0 {
            let _ = writeln!(
                out,
                "backfill: {} slots filled; slot opened → newcomer running p50 {:.0} p99 {:.0} max {:.0} ms; {} left for good, {} came back within the grace",
                b.slots_filled,
                b.slot_to_running.p50_ms,
                b.slot_to_running.p99_ms,
                b.slot_to_running.max_ms,
                b.left_for_good,
                b.came_back
            );
            let (w, l) = (&b.waiting_slot_to_running, &b.late_slot_to_running);
            let _ = writeln!(
                out,
                "  {} newcomers were waiting when their slot opened: p50 {:.0} p99 {:.0} ms; {} joined after it (the slot waited for a player): p50 {:.0} p99 {:.0} ms",
                w.count, w.p50_ms, w.p99_ms, l.count, l.p50_ms, l.p99_ms
            );
        }
        if let Some(r) = &self.rollout {
            let _ = writeln!(
                out,
                "rollout: {} → {}, then {} drained; drain → its last session ended: {}; sessions lost: {}",
                r.from,
                r.to,
                r.from,
                r.drain_to_drained_ms
                    .map_or_else(|| "not within the run".to_owned(), |ms| format!("{:.1} s", ms / 1000.0)),
                r.sessions_lost
            );
        }
        if !self.sessions_per_version.is_empty() {
            let per: Vec<String> = self
                .sessions_per_version
                .iter()
                .map(|(v, n)| format!("{v} {n}"))
                .collect();
            let _ = writeln!(out, "sessions per server version: {}", per.join(", "));
        }
        for (region, r) in &self.regions {
            let t = &r.join_to_running;
            let _ = writeln!(
                out,
                "region {region}: {} sessions, {} players; time to play (join → running) p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                r.sessions, r.players, t.p50_ms, t.p99_ms, t.max_ms
            );
        }
        let sizes: Vec<String> = self
            .session_sizes
            .iter()
            .map(|(size, n)| format!("{n}×{size}"))
            .collect();
        let _ = writeln!(
            out,
            "sessions seen: {} (sizes: {})",
            self.sessions,
            if sizes.is_empty() {
                "none".into()
            } else {
                sizes.join(", ")
            }
        );
        let inv = &self.invariants;
        let _ = writeln!(
            out,
            "invariants: {} (players in two sessions: {}, sizes out of bounds: {}, inconsistent rosters: {}, not in own roster: {}, teams wrong: {}, parties split: {})",
            if inv.ok { "ok" } else { "VIOLATED" },
            inv.players_in_two_sessions.len(),
            inv.sizes_out_of_bounds.len(),
            inv.inconsistent_rosters.len(),
            inv.not_in_own_roster.len(),
            inv.teams_wrong.len(),
            inv.parties_split.len()
        );
        for (name, q) in &self.queues {
            let t = &q.join_to_matched_ms;
            let _ = writeln!(
                out,
                "queue {name}: {} players ({} in parties) in {} sessions, {} timed out; join → matched p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} ms",
                q.players, q.players_in_parties, q.sessions, q.timed_out, t.p50_ms, t.p90_ms, t.p99_ms, t.max_ms
            );
            if let Some(quality) = &q.quality {
                let _ = write!(
                    out,
                    "  quality: mean skill spread {:.0}, worst latency per session mean {:.0} ms (worst {:.0} ms)",
                    quality.mean_skill_spread, quality.mean_max_latency_ms, quality.worst_latency_ms
                );
                if let Some(gap) = q.mean_team_skill_gap {
                    let _ = write!(out, ", mean team skill gap {gap:.0}");
                }
                if let Some(wait) = q.max_wait_ms {
                    let _ = write!(out, ", longest wait {:.1} s", wait as f64 / 1000.0);
                }
                let _ = writeln!(out);
            }
            if let Some(base) = &q.join_order {
                let _ = writeln!(
                    out,
                    "  the same tickets in join order: mean skill spread {:.0}, worst latency per session mean {:.0} ms (worst {:.0} ms)",
                    base.mean_skill_spread, base.mean_max_latency_ms, base.worst_latency_ms
                );
            }
        }
        if let Some(cpu) = &self.cpu_busy_to_last_running {
            let _ = writeln!(
                out,
                "this machine's CPUs from the first join to the last match running: {}",
                cpu.describe()
            );
        }
        if let Some(rss) = self.loadgen_peak_rss_mib {
            let _ = writeln!(
                out,
                "loadgen peak RSS: {rss:.1} MiB ({:.1} KiB per client)",
                rss * 1024.0 / self.clients.max(1) as f64
            );
        }
        for f in &self.failures {
            let _ = writeln!(out, "  failed: {} {} {}", f.player, f.kind, f.detail);
        }
        if self.failures_not_listed > 0 {
            let _ = writeln!(out, "  ... and {} more failed", self.failures_not_listed);
        }
        out
    }

    /// The latency distributions as cumulative curves, one per phase, in SVG.
    pub fn chart_svg(&self) -> String {
        const W: f64 = 880.0;
        const H: f64 = 420.0;
        const LEFT: f64 = 70.0;
        const BOTTOM: f64 = 50.0;
        const TOP: f64 = 40.0;
        const RIGHT: f64 = 260.0;
        let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728"];
        let max = self
            .samples_ms
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .fold(1.0f64, f64::max);
        // Log scale from the decade of the fastest sample (0.1 ms, or down to 1 µs) to the slowest.
        let fastest = self
            .samples_ms
            .iter()
            .flat_map(|(_, s)| s.iter().copied())
            .filter(|ms| *ms > 0.0)
            .fold(0.1f64, f64::min);
        let lo = fastest.log10().floor().clamp(-3.0, -1.0);
        let hi = max.max(1.0).log10() + 0.05;
        let floor_ms = 10f64.powf(lo);
        let x = |ms: f64| LEFT + (ms.max(floor_ms).log10() - lo) / (hi - lo) * (W - LEFT - RIGHT);
        let y = |frac: f64| H - BOTTOM - frac * (H - BOTTOM - TOP);
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{LEFT}" y="24" font-size="15">matchplane swarm: latency of the {} of {} players who played{}</text>"#,
            self.ok,
            self.clients,
            match (self.timed_out, self.failed) {
                (0, 0) => String::new(),
                (t, f) => format!(" ({t} timed out in their queue, {f} failed)"),
            }
        );
        let mut decade = floor_ms;
        while decade.log10() <= hi {
            let px = x(decade);
            let _ = writeln!(
                svg,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/>"##,
                H - BOTTOM
            );
            let _ = writeln!(
                svg,
                r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                H - BOTTOM + 16.0,
                (decade * 1e6).round() / 1e6
            );
            decade *= 10.0;
        }
        for frac in [0.0, 0.25, 0.5, 0.75, 0.9, 1.0] {
            let py = y(frac);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/>"##,
                W - RIGHT
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">p{}</text>"#,
                LEFT - 6.0,
                py + 4.0,
                (frac * 100.0).round()
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">milliseconds (log scale)</text>"#,
            (LEFT + W - RIGHT) / 2.0,
            H - 12.0
        );
        // Each curve its own dash and width, the first drawn widest: where curves coincide
        // (a phase that is all of another), every one still shows.
        let dashes = ["", "9 4", "3 3", "12 4 3 4", "1 4"];
        for (i, (name, samples)) in self.samples_ms.iter().enumerate() {
            let color = colors[i % colors.len()];
            let dash = dashes[i % dashes.len()];
            let width = 4.0 - 0.6 * (i % dashes.len()) as f64;
            let mut sorted = samples.clone();
            sorted.sort_by(f64::total_cmp);
            if !sorted.is_empty() {
                let n = sorted.len() as f64;
                let points: Vec<String> = sorted
                    .iter()
                    .enumerate()
                    .map(|(k, ms)| format!("{:.1},{:.1}", x(*ms), y((k + 1) as f64 / n)))
                    .collect();
                let _ = writeln!(
                    svg,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="{width:.1}" stroke-dasharray="{dash}" points="{}"/>"#,
                    points.join(" ")
                );
            }
            let ly = TOP + 20.0 + i as f64 * 22.0;
            let lx = W - RIGHT + 16.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3" stroke-dasharray="{dash}"/>"#,
                lx + 20.0
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}">{name} (n={})</text>"#,
                lx + 26.0,
                ly + 4.0,
                samples.len()
            );
        }
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(match_duration: f64) -> Setup {
        Setup {
            wall: Duration::from_secs(2),
            min_session_size: 2,
            max_session_size: 12,
            rosters_change: false,
            match_duration,
            scenario: Scenario::Fifo,
            join_order: None,
            cpu_busy: None,
            max_timed_out_percent: 100.0,
        }
    }

    #[test]
    fn a_rollout_that_cut_an_old_session_short_fails_the_run() {
        let mut records = vec![
            rec("a", "s1", &["a", "b"]),
            rec("b", "s1", &["a", "b"]),
            rec("c", "s2", &["c", "d"]),
            rec("d", "s2", &["c", "d"]),
        ];
        for r in &mut records {
            r.outcome = Outcome::Ok;
            r.placement.version = Some(
                if r.session_id.as_deref() == Some("s1") {
                    "old"
                } else {
                    "new"
                }
                .to_owned(),
            );
        }
        let rollout = || crate::swarm::RolloutReport {
            from: "old".into(),
            to: "new".into(),
            drain_to_drained: Some(Duration::from_secs(3)),
        };
        let mut report = Report::build(&records, &setup(1.0));
        report.set_rollout(&records, rollout());
        assert_eq!(
            report.sessions_per_version,
            BTreeMap::from([("new".to_owned(), 1), ("old".to_owned(), 1)])
        );
        assert!(report.passed(), "{}", report.render());
        assert!(
            report
                .render()
                .contains("drain → its last session ended: 3.0 s; sessions lost: 0")
        );
        // A player of the old version's session did not finish: that session was lost.
        records[1].outcome = Outcome::Refused("session_over".into());
        let mut report = Report::build(&records, &setup(1.0));
        report.set_rollout(&records, rollout());
        assert_eq!(report.rollout.as_ref().unwrap().sessions_lost, 1);
        assert!(!report.passed());
        // A drain that never finished fails the run too.
        records[1].outcome = Outcome::Ok;
        let mut report = Report::build(&records, &setup(1.0));
        report.set_rollout(
            &records,
            crate::swarm::RolloutReport {
                drain_to_drained: None,
                ..rollout()
            },
        );
        assert!(!report.passed());
    }

    #[test]
    fn rosters_that_change_by_backfill_keep_sizes_and_one_session_per_player() {
        // "a" and "b" formed s1 and saw both; "b" left; "c" was placed in its stead.
        let mut c = rec("c", "s1", &["a", "c"]);
        c.backfill_since_ms = Some(1);
        let records = vec![rec("a", "s1", &["a", "b"]), rec("b", "s1", &["a", "b"]), c.clone()];
        let (inv, sizes) = check_invariants(&records, 2, 2, true);
        assert!(inv.ok, "{inv:?}");
        assert_eq!(sizes[&2], 1);
        // The same rosters would be inconsistent where rosters never change.
        assert!(!check_invariants(&records, 2, 2, false).0.ok);
        // A roster over the size, or a player seen in two sessions, is caught still.
        let over = vec![rec("a", "s1", &["a", "b", "c"])];
        assert!(!check_invariants(&over, 2, 2, true).0.ok);
        let twice = vec![rec("a", "s1", &["a", "b"]), rec("x", "s2", &["x", "b"])];
        let (inv, _) = check_invariants(&twice, 2, 2, true);
        assert_eq!(inv.players_in_two_sessions, ["b"]);
    }

    fn rec(player: &str, sid: &str, roster: &[&str]) -> ClientRecord {
        let mut r = ClientRecord::new(player.into());
        r.outcome = Outcome::Ok;
        r.session_id = Some(sid.into());
        r.session_players = roster.iter().map(|s| s.to_string()).collect();
        r.join_to_matched = Some(Duration::from_millis(10));
        r.life = Some(Duration::from_millis(100));
        r
    }

    #[test]
    fn the_summary_shows_sessions_players_and_time_to_play_per_region() {
        let mut records = vec![
            rec("a", "s1", &["a", "b"]),
            rec("b", "s1", &["a", "b"]),
            rec("c", "s2", &["c", "d"]),
            rec("d", "s2", &["c", "d"]),
            rec("e", "s3", &["e", "f"]),
        ];
        for (r, (region, ms)) in
            records
                .iter_mut()
                .zip([("eu", 100), ("eu", 300), ("us", 200), ("us", 220), ("asia", 900)])
        {
            r.placement.region = Some(region.into());
            r.join_to_running = Some(Duration::from_millis(ms));
        }
        // One whose match never ran counts nowhere.
        records[4].join_to_running = None;
        let report = Report::build(&records, &setup(1.0));
        assert_eq!(report.regions.keys().collect::<Vec<_>>(), ["eu", "us"]);
        let eu = &report.regions["eu"];
        assert_eq!((eu.sessions, eu.players), (1, 2));
        assert_eq!((eu.join_to_running.p50_ms, eu.join_to_running.max_ms), (100.0, 300.0));
        assert!(
            report.render().contains(
                "region us: 1 sessions, 2 players; time to play (join → running) p50 200 ms, p99 220 ms, max 220 ms"
            ),
            "{}",
            report.render()
        );
    }

    #[test]
    fn clean_rosters_pass() {
        let records = [
            rec("a", "s1", &["a", "b"]),
            rec("b", "s1", &["a", "b"]),
            rec("c", "s2", &["c", "d", "e"]),
        ];
        let (inv, sizes) = check_invariants(&records, 2, 12, false);
        assert!(inv.ok);
        assert_eq!(sizes, BTreeMap::from([(2, 1), (3, 1)]));
    }

    #[test]
    fn every_violation_is_caught() {
        let records = [
            rec("a", "s1", &["a", "b"]),
            rec("b", "s1", &["a", "b", "x"]),
            rec("c", "s2", &["c", "a"]),
            rec("d", "s3", &["d"]),
            rec("e", "s4", &["f", "g"]),
        ];
        let (inv, _) = check_invariants(&records, 2, 12, false);
        assert!(!inv.ok);
        assert_eq!(inv.players_in_two_sessions, vec!["a"]);
        assert_eq!(inv.inconsistent_rosters, vec!["s1"]);
        assert_eq!(inv.sizes_out_of_bounds, vec!["s3"]);
        assert_eq!(inv.not_in_own_roster, vec!["e"]);
    }

    fn teamed(player: &str, sid: &str, teams: &[&[&str]], party: &[&str]) -> ClientRecord {
        let roster: Vec<&str> = teams.iter().flat_map(|t| t.iter().copied()).collect();
        let mut r = rec(player, sid, &roster);
        r.queue = "ranked".into();
        r.placement.queue = Some("ranked".into());
        r.placement.teams = teams
            .iter()
            .map(|t| t.iter().map(|p| p.to_string()).collect())
            .collect();
        r.placement.skill_spread = Some(40.0);
        r.placement.max_latency_ms = Some(30.0);
        r.placement.team_skill_gap = Some(10.0);
        r.placement.max_wait_ms = Some(1500);
        r.team_told = r.placement.teams.iter().find(|t| t.contains(&r.player)).cloned();
        r.party = party.iter().map(|p| p.to_string()).collect();
        r
    }

    #[test]
    fn teams_and_parties_are_checked_and_reported_per_queue() {
        let teams: &[&[&str]] = &[&["a", "b"], &["c", "d"]];
        let mut records = vec![
            teamed("a", "s1", teams, &["a", "b"]),
            teamed("b", "s1", teams, &["a", "b"]),
            teamed("c", "s1", teams, &[]),
            teamed("d", "s1", teams, &[]),
            rec("f", "s2", &["f", "g"]),
            rec("g", "s2", &["f", "g"]),
        ];
        let mut late = ClientRecord::new("e".into());
        late.outcome = Outcome::TimedOut;
        late.queue = "ranked".into();
        records.push(late);
        let report = Report::build(&records, &setup(1.0));
        assert!(report.passed(), "{}", report.render());
        assert_eq!((report.ok, report.failed, report.timed_out), (6, 0, 1));
        let ranked = &report.queues["ranked"];
        assert_eq!((ranked.players, ranked.sessions, ranked.timed_out), (4, 1, 1));
        assert_eq!(ranked.quality.unwrap().mean_skill_spread, 40.0);
        assert_eq!(
            (ranked.mean_team_skill_gap, ranked.max_wait_ms),
            (Some(10.0), Some(1500))
        );
        let default = &report.queues["default"];
        assert_eq!((default.players, default.sessions, default.quality), (2, 1, None));
        let text = report.render();
        assert!(
            text.contains("queue ranked: 4 players (2 in parties) in 1 sessions, 1 timed out"),
            "{text}"
        );
        assert!(text.contains("timed out in their queue: 1 players (14%"), "{text}");
        assert!(
            text.contains("played: 6 of 7 players (1 timed out in their queue)"),
            "{text}"
        );
        // Above the share allowed, the same run fails, and says why.
        let strict = Report::build(
            &records,
            &Setup {
                max_timed_out_percent: 10.0,
                ..setup(1.0)
            },
        );
        assert!(!strict.passed());
        assert!(
            strict
                .render()
                .contains("too many timed out: 1 players (14%) waited out max_wait_seconds without a session, above the 10% allowed"),
            "{}",
            strict.render()
        );

        // A party across teams, a server naming another team, teams of unequal size.
        let mut bad = records.clone();
        bad[1] = teamed("b", "s1", &[&["a", "c"], &["b", "d"]], &["a", "b"]);
        bad[2].team_told = Some(vec!["c".into()]);
        let (inv, _) = check_invariants(&bad, 2, 12, false);
        assert_eq!(inv.parties_split, vec!["a"]);
        assert_eq!(
            inv.inconsistent_rosters,
            vec!["s1"],
            "two answers for one session's teams"
        );
        assert!(inv.teams_wrong.contains(&"s1".to_string()));
        let uneven: &[&[&str]] = &[&["a", "b", "c"], &["d"]];
        let lopsided: Vec<ClientRecord> = ["a", "b", "c", "d"]
            .iter()
            .map(|p| teamed(p, "s9", uneven, &[]))
            .collect();
        let (inv, _) = check_invariants(&lopsided, 2, 12, false);
        assert_eq!(inv.teams_wrong, vec!["s9"]);
        assert!(!inv.ok);
        // Only timed-out players and no session at all: that is not a pass.
        let report = Report::build(&records[6..], &setup(1.0));
        assert!(!report.passed());
    }

    #[test]
    fn long_failure_lists_say_how_many_more() {
        let mut records: Vec<ClientRecord> = (0..25)
            .map(|i| {
                let mut r = ClientRecord::new(format!("p{i}"));
                r.outcome = Outcome::Timeout;
                r.retries = 2;
                r
            })
            .collect();
        records[0].rejoins = 1;
        let report = Report::build(&records, &setup(1.0));
        assert_eq!((report.failures.len(), report.failures_not_listed), (20, 5));
        let text = report.render();
        assert!(text.contains("... and 5 more failed"), "{text}");
        assert!(text.contains("recovered: 50 API calls retried"), "{text}");
        assert!(text.contains("1 re-joins"), "{text}");
    }

    #[test]
    fn report_counts_outcomes_and_renders() {
        let mut failed = ClientRecord::new("z".into());
        failed.outcome = Outcome::ConnectFailed("refused".into());
        let records = [rec("a", "s1", &["a", "b"]), rec("b", "s1", &["a", "b"]), failed];
        let busy = Busy {
            cpus: 2,
            seconds: 0.5,
            busy: 0.99,
        };
        let report = Report::build(
            &records,
            &Setup {
                cpu_busy: Some(busy),
                ..setup(5.0)
            },
        );
        assert_eq!(
            (report.clients, report.ok, report.failed, report.sessions),
            (3, 2, 1, 1)
        );
        assert!(!report.passed());
        assert_eq!(report.outcomes["connect_failed"], 1);
        assert_eq!(report.latency_ms.join_to_matched.count, 2);
        let text = report.render();
        assert!(text.contains("failed: z connect_failed refused"));
        assert!(text.contains("from the first join to the last match running: 99% busy over 0.50 s, 2 CPUs"));
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["session_sizes"]["2"], 1);
        assert_eq!(json["cpu_busy_to_last_running"]["busy"], 0.99);
        assert_eq!(json["cpu_busy_to_last_running"]["cpus"], 2);
        let svg = report.chart_svg();
        assert!(svg.starts_with("<svg"));
        assert!(
            svg.contains("latency of the 2 of 3 players who played (0 timed out in their queue, 1 failed)"),
            "{svg}"
        );
        // Every curve has a dash of its own, so one that coincides with another still shows.
        let dashes: std::collections::BTreeSet<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline"))
            .filter_map(|l| l.split("stroke-dasharray=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(dashes.len(), svg.lines().filter(|l| l.starts_with("<polyline")).count());
        // A phase faster than 0.1 ms moves the axis down a decade instead of sitting on it.
        let mut fast = report.clone();
        fast.samples_ms[2].1 = vec![0.04, 0.2];
        let svg = fast.chart_svg();
        assert!(svg.contains(">0.01</text>"), "{svg}");
        assert!(!report.chart_svg().contains(">0.01</text>"));
    }
}
