//! Whether each region (`REGIONS`) can take sessions now, as this replica sees it.
//!
//! A region goes down when its target's API has not answered for `REGION_DOWN_AFTER_SECONDS`
//! (probed every second), or when more than half of at least [`START_MIN`] server starts there
//! failed within [`START_WINDOW`]. While down, forming places no session there (the next region
//! every player's latency allows takes them), a start there fails at once, and every live
//! session there ends `failed` with its players requeued at the head. It comes back by itself
//! once its API has answered for `REGION_UP_AFTER_SECONDS` without a miss; a region that goes
//! down again within twice that of coming back waits twice as long the next time (up to
//! [`MAX_HOLD_FACTOR`] times), so a flapping region does not take sessions only to lose them.
//!
//! [`RegionHealth`] is the state machine on an explicit clock; [`RegionBoard`] holds every
//! region's, counts the changes and answers what forming, starts and `/health` ask.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

/// How far back server starts count towards a region's failure rate.
pub const START_WINDOW: Duration = Duration::from_secs(60);
/// Starts within [`START_WINDOW`] before their failure rate can mark a region down.
pub const START_MIN: usize = 5;
/// How much longer than `up_after` a flapping region may have to stay healthy.
pub const MAX_HOLD_FACTOR: u32 = 8;

/// When a region goes down and comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// The API unanswered this long: down.
    pub down_after: Duration,
    /// Down, the API answering this long without a miss: up again.
    pub up_after: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            down_after: Duration::from_secs(10),
            up_after: Duration::from_secs(30),
        }
    }
}

/// A region's state changing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Down, and why.
    Down(String),
    Up,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    reason: String,
}

/// One region's health on an explicit clock.
#[derive(Debug)]
pub struct RegionHealth {
    thresholds: Thresholds,
    down: Option<Down>,
    /// Since when its API has not answered (no answer since).
    unreachable_since: Option<Instant>,
    /// Down: since when its API has answered every probe.
    healthy_since: Option<Instant>,
    /// Recent server starts: when, and whether they succeeded.
    starts: VecDeque<(Instant, bool)>,
    /// How long it must stay healthy to come back this time.
    hold: Duration,
    /// When it last came back.
    came_up: Option<Instant>,
}

impl RegionHealth {
    /// A region up.
    pub fn new(thresholds: Thresholds) -> RegionHealth {
        RegionHealth {
            thresholds,
            down: None,
            unreachable_since: None,
            healthy_since: None,
            starts: VecDeque::new(),
            hold: thresholds.up_after,
            came_up: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.down.is_none()
    }

    /// How long it must stay healthy to come back, were it down now.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// A probe of its API answered (`ok`) or not, at `now`.
    pub fn probed(&mut self, ok: bool, now: Instant) -> Option<Change> {
        if ok {
            self.unreachable_since = None;
            self.down.as_ref()?;
            let since = *self.healthy_since.get_or_insert(now);
            (now.duration_since(since) >= self.hold).then(|| self.come_up(now))
        } else {
            self.healthy_since = None;
            let since = *self.unreachable_since.get_or_insert(now);
            let unreachable = now.duration_since(since);
            (self.down.is_none() && unreachable >= self.thresholds.down_after)
                .then(|| self.go_down(format!("its API has not answered for {} s", unreachable.as_secs()), now))
        }
    }

    /// Down at once, for `reason` (its target unreachable at start), unless down already.
    pub fn fail_now(&mut self, reason: String, now: Instant) -> Option<Change> {
        self.down.is_none().then(|| self.go_down(reason, now))
    }

    /// A server start there succeeded (`ok`) or failed, at `now`. Starts while down (there
    /// are none, but for a race) do not count.
    pub fn started(&mut self, ok: bool, now: Instant) -> Option<Change> {
        self.down.is_none().then_some(())?;
        self.starts.push_back((now, ok));
        while self
            .starts
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at) > START_WINDOW)
        {
            self.starts.pop_front();
        }
        let failed = self.starts.iter().filter(|(_, ok)| !ok).count();
        let n = self.starts.len();
        (n >= START_MIN && failed * 2 > n).then(|| {
            self.go_down(
                format!(
                    "{failed} of its last {n} server starts failed within {} s",
                    START_WINDOW.as_secs()
                ),
                now,
            )
        })
    }

    fn go_down(&mut self, reason: String, now: Instant) -> Change {
        // Down again soon after coming back: it has to prove itself for longer.
        let flapping = self
            .came_up
            .is_some_and(|up| now.duration_since(up) < self.hold.saturating_mul(2));
        self.hold = if flapping {
            self.hold
                .saturating_mul(2)
                .min(self.thresholds.up_after.saturating_mul(MAX_HOLD_FACTOR))
        } else {
            self.thresholds.up_after
        };
        self.down = Some(Down {
            since: now,
            reason: reason.clone(),
        });
        self.healthy_since = None;
        self.starts.clear();
        Change::Down(reason)
    }

    fn come_up(&mut self, now: Instant) -> Change {
        self.down = None;
        self.healthy_since = None;
        self.came_up = Some(now);
        Change::Up
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabel {
    region: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabel {
    region: String,
    to: &'static str,
}

/// Every region's health, as this replica sees it.
#[derive(Debug)]
pub struct RegionBoard {
    /// In the `REGIONS` file's order.
    regions: Vec<(String, Mutex<RegionHealth>)>,
    up: Family<RegionLabel, Gauge>,
    changes: Family<ChangeLabel, Counter>,
}

impl RegionBoard {
    /// Every region of `names` up.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>, thresholds: Thresholds) -> RegionBoard {
        let board = RegionBoard {
            regions: names
                .into_iter()
                .map(|n| (n.to_owned(), Mutex::new(RegionHealth::new(thresholds))))
                .collect(),
            up: Family::default(),
            changes: Family::default(),
        };
        for (name, _) in &board.regions {
            board.up.get_or_create(&RegionLabel { region: name.clone() }).set(1);
            for to in ["down", "up"] {
                drop(board.changes.get_or_create(&ChangeLabel {
                    region: name.clone(),
                    to,
                }));
            }
        }
        board
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mp_region_up",
            "Whether each region takes new sessions (1) or is down (0), as this replica sees it",
            self.up.clone(),
        );
        registry.register(
            "mp_region_changes",
            "Times each region went down or came back",
            self.changes.clone(),
        );
    }

    fn health(&self, region: &str) -> Option<std::sync::MutexGuard<'_, RegionHealth>> {
        self.regions
            .iter()
            .find(|(n, _)| n == region)
            .map(|(_, h)| h.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// What forming may use now: the regions up, and the first of them (in the file's order).
    pub fn up_now(&self) -> matchmaking_core::round::RegionsUp {
        let up: Vec<String> = self
            .regions
            .iter()
            .filter(|(_, h)| h.lock().unwrap_or_else(std::sync::PoisonError::into_inner).is_up())
            .map(|(n, _)| n.clone())
            .collect();
        matchmaking_core::round::RegionsUp {
            first: up.first().cloned(),
            up: up.into_iter().collect(),
        }
    }

    /// Whether `region` is listed and up.
    pub fn is_up(&self, region: &str) -> bool {
        self.health(region).is_some_and(|h| h.is_up())
    }

    /// The region a session of `region` runs in: itself if listed, else the first region (a
    /// session formed before `REGIONS` listed it; forming gives every session a region).
    pub fn resolve<'a>(&'a self, region: Option<&'a str>) -> &'a str {
        match region {
            Some(r) if self.regions.iter().any(|(n, _)| n == r) => r,
            _ => self.regions.first().map_or("", |(n, _)| n.as_str()),
        }
    }

    /// A probe of `region`'s API answered or not.
    pub fn probed(&self, region: &str, ok: bool, now: Instant) -> Option<Change> {
        let change = self.health(region)?.probed(ok, now);
        self.changed(region, change)
    }

    /// `region` down at once, for `reason`.
    pub fn down_now(&self, region: &str, reason: String, now: Instant) -> Option<Change> {
        let change = self.health(region)?.fail_now(reason, now);
        self.changed(region, change)
    }

    /// A server start in `region` succeeded or failed.
    pub fn started(&self, region: &str, ok: bool, now: Instant) -> Option<Change> {
        let change = self.health(region)?.started(ok, now);
        self.changed(region, change)
    }

    fn changed(&self, region: &str, change: Option<Change>) -> Option<Change> {
        let label = RegionLabel {
            region: region.to_owned(),
        };
        match &change {
            Some(Change::Down(why)) => {
                tracing::error!(region, why = %why, "region down: new sessions go to other regions, its sessions fail and their players are requeued");
                self.up.get_or_create(&label).set(0);
            }
            Some(Change::Up) => {
                tracing::warn!(region, "region back up: it takes new sessions again");
                self.up.get_or_create(&label).set(1);
            }
            None => return None,
        }
        let to = if matches!(change, Some(Change::Up)) {
            "up"
        } else {
            "down"
        };
        self.changes
            .get_or_create(&ChangeLabel {
                region: region.to_owned(),
                to,
            })
            .inc();
        change
    }

    /// Each region's state for `/health`, at `now`.
    pub fn snapshot(&self, now: Instant) -> BTreeMap<String, protocol::api::RegionState> {
        self.regions
            .iter()
            .map(|(name, h)| {
                let h = h.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let state = match &h.down {
                    None => protocol::api::RegionState {
                        up: true,
                        down_seconds: None,
                        reason: None,
                    },
                    Some(down) => protocol::api::RegionState {
                        up: false,
                        down_seconds: Some(now.duration_since(down.since).as_secs()),
                        reason: Some(down.reason.clone()),
                    },
                };
                (name.clone(), state)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn health() -> (RegionHealth, Instant) {
        (RegionHealth::new(Thresholds::default()), Instant::now())
    }

    #[test]
    fn an_api_unanswered_for_the_threshold_marks_it_down_and_not_a_moment_before() {
        let (mut h, t0) = health();
        for s in 0..10 {
            assert_eq!(h.probed(false, t0 + S * s), None, "at {s} s");
        }
        assert_eq!(
            h.probed(false, t0 + S * 10),
            Some(Change::Down("its API has not answered for 10 s".into()))
        );
        assert!(!h.is_up());
        // One answer in between starts the count again.
        let (mut h, t0) = health();
        h.probed(false, t0);
        h.probed(true, t0 + S * 9);
        assert_eq!(h.probed(false, t0 + S * 10), None);
        assert_eq!(h.probed(false, t0 + S * 19), None);
        assert!(matches!(h.probed(false, t0 + S * 20), Some(Change::Down(_))));
    }

    #[test]
    fn it_comes_back_only_after_answering_for_the_hold_without_a_miss() {
        let (mut h, t0) = health();
        h.probed(false, t0);
        assert!(h.probed(false, t0 + S * 10).is_some());
        // Answers from 11 s, a miss at 30 s: the count starts again at 31 s.
        for s in 11..30 {
            assert_eq!(h.probed(true, t0 + S * s), None);
        }
        assert_eq!(h.probed(false, t0 + S * 30), None);
        for s in 31..61 {
            assert_eq!(h.probed(true, t0 + S * s), None, "at {s} s");
        }
        assert_eq!(h.probed(true, t0 + S * 61), Some(Change::Up));
        assert!(h.is_up());
    }

    #[test]
    fn a_region_flapping_waits_twice_as_long_each_time_up_to_a_cap_and_then_forgets() {
        let (mut h, t0) = health();
        let mut now = t0;
        let mut holds = Vec::new();
        for _ in 0..6 {
            h.probed(false, now);
            now += S * 10;
            assert!(matches!(h.probed(false, now), Some(Change::Down(_))));
            holds.push(h.hold().as_secs());
            h.probed(true, now);
            now += h.hold();
            assert_eq!(h.probed(true, now), Some(Change::Up));
            // Down again 5 s after coming back.
            now += S * 5;
        }
        assert_eq!(holds, [30, 60, 120, 240, 240, 240]);
        // Up for long enough: the next outage waits the first hold again.
        now += S * 600;
        h.probed(false, now);
        assert!(h.probed(false, now + S * 10).is_some());
        assert_eq!(h.hold(), S * 30);
    }

    #[test]
    fn more_than_half_of_enough_recent_starts_failing_marks_it_down() {
        let (mut h, t0) = health();
        // Four failures alone are too few to judge.
        for s in 0..4 {
            assert_eq!(h.started(false, t0 + S * s), None);
        }
        // Five starts, four failed.
        assert_eq!(
            h.started(true, t0 + S * 4),
            Some(Change::Down("4 of its last 5 server starts failed within 60 s".into()))
        );
        // Half failing is not more than half; old starts fall out of the window.
        let (mut h, t0) = health();
        for (s, ok) in [(0, false), (1, true), (2, false), (3, true), (4, true), (5, false)] {
            assert_eq!(h.started(ok, t0 + S * s), None);
        }
        assert_eq!(h.started(false, t0 + S * 63), None, "the first three starts are old");
        // A local region (its probe always answers) comes back after the hold.
        let (mut h, t0) = health();
        for s in 0..5 {
            h.started(false, t0 + S * s);
        }
        assert!(!h.is_up());
        assert_eq!(h.started(false, t0 + S * 5), None, "starts while down do not count");
        h.probed(true, t0 + S * 5);
        assert_eq!(h.probed(true, t0 + S * 34), None);
        assert_eq!(h.probed(true, t0 + S * 35), Some(Change::Up));
        // With a clean slate.
        assert_eq!(h.started(false, t0 + S * 36), None);
    }

    #[test]
    fn the_board_answers_what_is_usable_and_where_a_session_without_a_region_goes() {
        let board = RegionBoard::new(["eu", "us"], Thresholds::default());
        let t0 = Instant::now();
        let up = board.up_now();
        assert_eq!(
            (up.up, up.first.as_deref()),
            (["eu", "us"].map(String::from).into(), Some("eu"))
        );
        assert_eq!((board.resolve(None), board.resolve(Some("mars"))), ("eu", "eu"));
        board.probed("eu", false, t0);
        assert!(board.probed("eu", false, t0 + S * 10).is_some());
        let up = board.up_now();
        assert_eq!((up.up, up.first.as_deref()), (["us".to_owned()].into(), Some("us")));
        assert_eq!((board.resolve(None), board.resolve(Some("us"))), ("eu", "us"));
        assert!(!board.is_up("eu") && board.is_up("us") && !board.is_up("mars"));
        let eu = &board.snapshot(t0 + S * 14)["eu"];
        assert_eq!((eu.up, eu.down_seconds), (false, Some(4)));
        assert_eq!(eu.reason.as_deref(), Some("its API has not answered for 10 s"));
        assert_eq!(board.probed("mars", false, t0), None);
        board.probed("us", false, t0);
        board.probed("us", false, t0 + S * 10);
        assert_eq!(board.up_now().first, None, "every region down: nothing forms");
    }
}
