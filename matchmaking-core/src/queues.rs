//! The matchmaking queues and their rules, from `MATCHMAKING_CONFIG` (a YAML file) or, without
//! it, the one `default` queue built from `SESSION_SIZE`, `MIN_PARTIAL_SESSION_SIZE` and
//! `FLUSH_WAIT_SECONDS` (join order, exactly as before queues existed).
//!
//! A queue is *plain* when it only groups players in join order (no teams, skill, latency,
//! `match_on`, parties or maximum wait): such queues are formed by one atomic Redis script, as
//! the default queue always was. Every other queue is formed by the rule former
//! ([`crate::forming`]) and committed by a script that claims only tickets still queued.
//!
//! Loading checks the whole file and reports every mistake, one line each.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

/// The queue a join without `"queue"` goes to.
pub const DEFAULT_QUEUE: &str = "default";

/// The matching rules of a first-come queue, as the form script takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FormRules {
    pub size: u32,
    pub min_partial: u32,
    pub flush_wait_ms: i64,
}
/// Most queues in one file.
const MAX_QUEUES: usize = 64;
/// Most players in one session.
const MAX_SESSION: u32 = 1000;

/// How a queue's sessions are sized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// `size` players; fewer (at least `min`) once the oldest has waited `flush_wait_ms`.
    Fifo { size: u32, min: u32, flush_wait_ms: i64 },
    /// `teams` teams of exactly `team_size` players.
    Teams { teams: u32, team_size: u32 },
}

impl Shape {
    /// Players in a full session.
    pub fn full(&self) -> u32 {
        match *self {
            Shape::Fifo { size, .. } => size,
            Shape::Teams { teams, team_size } => teams * team_size,
        }
    }
}

/// A limit that starts at `start` and grows by `widen_by` every `every_ms` the oldest ticket
/// has waited, up to `limit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub start: f64,
    pub widen_by: f64,
    pub every_ms: i64,
    pub limit: f64,
}

impl Window {
    /// The window after waiting `wait_ms`.
    pub fn at(&self, wait_ms: i64) -> f64 {
        if self.widen_by <= 0.0 || self.every_ms <= 0 || wait_ms <= 0 {
            return self.start;
        }
        let steps = (wait_ms / self.every_ms) as f64;
        (self.start + self.widen_by * steps).min(self.limit)
    }
}

/// The skill rule.
#[derive(Debug, Clone, PartialEq)]
pub struct SkillRule {
    /// The numeric attribute holding a player's skill.
    pub attribute: String,
    /// The player token claim a player's own join takes its skill from.
    pub claim: Option<String>,
    /// Allowed spread (max - min over a session's tickets).
    pub window: Window,
    pub balance_teams: bool,
}

/// The latency rule.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencyRule {
    /// The attribute holding a map region -> measured round trip in ms.
    pub attribute: String,
    /// Allowed latency of every player to the session's region.
    pub window: Window,
}

/// One validated queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub name: String,
    pub shape: Shape,
    /// Largest party (1: no parties).
    pub max_party: u32,
    /// String attributes that must be equal within a session.
    pub match_on: Vec<String>,
    pub skill: Option<SkillRule>,
    pub latency: Option<LatencyRule>,
    /// Attributes a player's own join may set.
    pub client_attributes: Vec<String>,
    /// A ticket still queued after this ends `timed_out`.
    pub max_wait_ms: Option<i64>,
    /// The server profile its sessions run (`None`: the built-in game server). The backend,
    /// which reads the profiles from the same file, checks that it exists.
    pub server: Option<String>,
    /// Whether running sessions take players into open slots, and how.
    pub backfill: Option<BackfillRule>,
}

/// A queue's backfill: running sessions of it may ask for players (through the server SDK),
/// and with `on_leave` matchplane asks for them itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackfillRule {
    /// A player gone from a running session for `leave_grace_ms` gives up its place, and the
    /// session asks for a player in its stead.
    pub on_leave: bool,
    pub leave_grace_ms: i64,
    /// A request still open after this long ends unfilled.
    pub max_ms: i64,
}

/// A backfill request's longest life when the queue does not say.
pub const BACKFILL_MAX_SECONDS: f64 = 60.0;
/// How long a player may be gone before `on_leave` gives its place away, when the queue does
/// not say.
pub const LEAVE_GRACE_SECONDS: f64 = 10.0;

impl Queue {
    /// The default queue: join order, from the session settings.
    pub fn fifo(name: &str, rules: FormRules) -> Queue {
        Queue {
            name: name.to_owned(),
            shape: Shape::Fifo {
                size: rules.size,
                min: rules.min_partial,
                flush_wait_ms: rules.flush_wait_ms,
            },
            max_party: 1,
            match_on: Vec::new(),
            skill: None,
            latency: None,
            client_attributes: Vec::new(),
            max_wait_ms: None,
            server: None,
            backfill: None,
        }
    }

    /// Formed by the join-order script alone (see the module docs). A queue that backfills is
    /// formed by the rule former, which places backfill requests before new sessions.
    pub fn is_plain(&self) -> bool {
        matches!(self.shape, Shape::Fifo { .. })
            && self.max_party == 1
            && self.match_on.is_empty()
            && self.skill.is_none()
            && self.latency.is_none()
            && self.max_wait_ms.is_none()
            && self.backfill.is_none()
    }

    /// A plain queue's rules, as the join-order script takes them.
    pub fn fifo_rules(&self) -> Option<FormRules> {
        match self.shape {
            Shape::Fifo {
                size,
                min,
                flush_wait_ms,
            } if self.is_plain() => Some(FormRules {
                size,
                min_partial: min,
                flush_wait_ms,
            }),
            _ => None,
        }
    }

    /// Whether `name` is an attribute this queue reads or lets clients set.
    pub fn knows_attribute(&self, name: &str) -> bool {
        self.match_on.iter().any(|a| a == name)
            || self.skill.as_ref().is_some_and(|s| s.attribute == name)
            || self.latency.as_ref().is_some_and(|l| l.attribute == name)
            || self.client_attributes.iter().any(|a| a == name)
    }
}

/// Every queue of a deployment. Cheap to share behind an `Arc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Queues {
    queues: Vec<Queue>,
}

impl Queues {
    /// Only the default queue, from the session settings.
    pub fn default_only(rules: FormRules) -> Queues {
        Queues {
            queues: vec![Queue::fifo(DEFAULT_QUEUE, rules)],
        }
    }

    pub fn get(&self, name: &str) -> Option<&Queue> {
        self.queues.iter().find(|q| q.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Queue> {
        self.queues.iter()
    }

    /// Loads and checks `path`; the error lists every mistake, one per line.
    pub fn load(path: &Path) -> Result<Queues, String> {
        let shown = path.display();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("MATCHMAKING_CONFIG {shown}: cannot read it: {e}"))?;
        Queues::parse(&text).map_err(|mistakes| {
            mistakes
                .iter()
                .map(|m| format!("MATCHMAKING_CONFIG {shown}: {m}"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// Parses and checks a queue file; every mistake is one entry.
    pub fn parse(text: &str) -> Result<Queues, Vec<String>> {
        let file: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| vec![format!("not YAML: {e}")])?;
        let Some(map) = file.as_mapping() else {
            return Err(vec!["the file must be a mapping with a `queues` list".into()]);
        };
        let mut mistakes = Vec::new();
        for key in map.keys() {
            // `servers` (the server profiles) is the backend's runtime's to read.
            if !matches!(key.as_str(), Some("queues" | "servers")) {
                mistakes.push(format!(
                    "unknown top-level key {}: only `queues` and `servers` are read",
                    yaml_key(key)
                ));
            }
        }
        let Some(list) = map.get("queues").and_then(serde_yaml::Value::as_sequence) else {
            mistakes.push("`queues` must be a list of queues".into());
            return Err(mistakes);
        };
        if list.is_empty() {
            mistakes.push("`queues` is empty: name at least one queue".into());
        }
        if list.len() > MAX_QUEUES {
            mistakes.push(format!("{} queues: at most {MAX_QUEUES}", list.len()));
        }
        let mut queues = Vec::new();
        let mut names = BTreeSet::new();
        for (i, item) in list.iter().enumerate() {
            let label = match item.get("name").and_then(serde_yaml::Value::as_str) {
                Some(name) => format!("queue {name:?}"),
                None => format!("queues[{i}]"),
            };
            let spec: QueueSpec = match serde_yaml::from_value(item.clone()) {
                Ok(spec) => spec,
                Err(e) => {
                    mistakes.push(format!("{label}: {e}"));
                    continue;
                }
            };
            let before = mistakes.len();
            let queue = spec.check(&mut |m: String| mistakes.push(format!("{label}: {m}")));
            if !names.insert(spec.name.clone()) {
                mistakes.push(format!("{label}: the name is used by another queue"));
            }
            if mistakes.len() == before {
                queues.push(queue);
            }
        }
        if mistakes.is_empty() {
            Ok(Queues { queues })
        } else {
            Err(mistakes)
        }
    }
}

fn yaml_key(key: &serde_yaml::Value) -> String {
    match key.as_str() {
        Some(s) => format!("`{s}`"),
        None => "(not a string)".into(),
    }
}

/// A queue as the file spells it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueueSpec {
    name: String,
    session_size: Option<u32>,
    min_session_size: Option<u32>,
    flush_wait_seconds: Option<f64>,
    teams: Option<u32>,
    team_size: Option<u32>,
    max_party_size: Option<u32>,
    #[serde(default)]
    match_on: Vec<String>,
    skill: Option<SkillSpec>,
    latency: Option<LatencySpec>,
    #[serde(default)]
    client_attributes: Vec<String>,
    max_wait_seconds: Option<f64>,
    server: Option<String>,
    backfill: Option<BackfillSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillSpec {
    #[serde(default)]
    on_leave: bool,
    leave_grace_seconds: Option<f64>,
    #[serde(alias = "backfill_max_seconds")]
    max_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SkillSpec {
    attribute: String,
    claim: Option<String>,
    max_spread: f64,
    #[serde(default)]
    widen_by: f64,
    widen_every_seconds: Option<f64>,
    max_spread_limit: Option<f64>,
    #[serde(default)]
    balance_teams: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencySpec {
    attribute: String,
    max_ms: f64,
    #[serde(default)]
    widen_by: f64,
    widen_every_seconds: Option<f64>,
    max_ms_limit: Option<f64>,
}

/// A queue or attribute name: 1-64 of `A-Z a-z 0-9 _ -`.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn millis(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}

/// Checks one widening window; the names are the rule's and its fields' (for messages).
fn window(
    (prefix, start_name, limit_name): (&str, &str, &str),
    start: f64,
    widen_by: f64,
    every: Option<f64>,
    limit: Option<f64>,
    mistake: &mut dyn FnMut(String),
) -> Window {
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if !ok(start) {
        mistake(format!("{prefix}.{start_name} must be a number >= 0, got {start}"));
    }
    if !ok(widen_by) {
        mistake(format!("{prefix}.widen_by must be a number >= 0, got {widen_by}"));
    }
    let every_ms = match every {
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => millis(s),
        Some(s) => {
            mistake(format!(
                "{prefix}.widen_every_seconds must be > 0 and at most 86400, got {s}"
            ));
            0
        }
        None if widen_by > 0.0 => {
            mistake(format!("{prefix}.widen_by needs {prefix}.widen_every_seconds"));
            0
        }
        None => 0,
    };
    let limit = limit.unwrap_or(start);
    if !ok(limit) || limit < start {
        mistake(format!(
            "{prefix}.{limit_name} ({limit}) must be a number at least {prefix}.{start_name} ({start})"
        ));
    }
    Window {
        start,
        widen_by,
        every_ms,
        limit,
    }
}

impl QueueSpec {
    /// The queue these settings describe; every mistake goes to `mistake`.
    fn check(&self, mistake: &mut dyn FnMut(String)) -> Queue {
        if !is_valid_name(&self.name) {
            mistake("name must be 1-64 characters of A-Z a-z 0-9 _ -".into());
        }
        let fifo_set =
            self.session_size.is_some() || self.min_session_size.is_some() || self.flush_wait_seconds.is_some();
        let shape = match (self.teams, self.team_size) {
            (Some(teams), Some(team_size)) => {
                if fifo_set {
                    mistake("give either teams and team_size, or session_size (with min_session_size and flush_wait_seconds), not both".into());
                }
                if teams < 1 || team_size < 1 || u64::from(teams) * u64::from(team_size) > u64::from(MAX_SESSION) {
                    mistake(format!(
                        "teams ({teams}) and team_size ({team_size}) must be at least 1 and make at most {MAX_SESSION} players"
                    ));
                }
                Shape::Teams { teams, team_size }
            }
            (None, None) => {
                let size = match self.session_size {
                    Some(size) if (1..=MAX_SESSION).contains(&size) => size,
                    Some(size) => {
                        mistake(format!("session_size must be 1 to {MAX_SESSION}, got {size}"));
                        MAX_SESSION
                    }
                    None => {
                        mistake("needs session_size (join-order sessions) or teams and team_size".into());
                        MAX_SESSION
                    }
                };
                let min = self.min_session_size.unwrap_or(size);
                if min < 1 || min > size {
                    mistake(format!(
                        "min_session_size must be 1 to session_size ({size}), got {min}"
                    ));
                }
                let flush = self.flush_wait_seconds.unwrap_or(15.0);
                if !(flush.is_finite() && (0.0..=86_400.0).contains(&flush)) {
                    mistake(format!("flush_wait_seconds must be 0 to 86400, got {flush}"));
                }
                Shape::Fifo {
                    size,
                    min,
                    flush_wait_ms: millis(flush),
                }
            }
            _ => {
                mistake("teams and team_size go together".into());
                Shape::Teams { teams: 1, team_size: 1 }
            }
        };
        let max_party = self.max_party_size.unwrap_or(1);
        let largest = match shape {
            Shape::Fifo { size, .. } => size,
            Shape::Teams { team_size, .. } => team_size,
        };
        if max_party < 1 || max_party > largest {
            let what = match shape {
                Shape::Fifo { .. } => "session_size",
                Shape::Teams { .. } => "team_size",
            };
            mistake(format!(
                "max_party_size must be 1 to {what} ({largest}), got {max_party}"
            ));
        }
        let mut seen = BTreeSet::new();
        for attribute in &self.match_on {
            if !is_valid_name(attribute) {
                mistake(format!(
                    "match_on: {attribute:?} is not an attribute name (1-64 of A-Z a-z 0-9 _ -)"
                ));
            }
            if !seen.insert(attribute.as_str()) {
                mistake(format!("match_on names {attribute:?} twice"));
            }
        }
        let skill = self.skill.as_ref().map(|s| {
            if !is_valid_name(&s.attribute) {
                mistake(format!("skill.attribute {:?} is not an attribute name", s.attribute));
            }
            if s.claim.as_deref().is_some_and(str::is_empty) {
                mistake("skill.claim must not be empty".into());
            }
            if s.balance_teams && !matches!(shape, Shape::Teams { .. }) {
                mistake("skill.balance_teams needs teams and team_size".into());
            }
            SkillRule {
                attribute: s.attribute.clone(),
                claim: s.claim.clone(),
                window: window(
                    ("skill", "max_spread", "max_spread_limit"),
                    s.max_spread,
                    s.widen_by,
                    s.widen_every_seconds,
                    s.max_spread_limit,
                    mistake,
                ),
                balance_teams: s.balance_teams,
            }
        });
        let latency = self.latency.as_ref().map(|l| {
            if !is_valid_name(&l.attribute) {
                mistake(format!("latency.attribute {:?} is not an attribute name", l.attribute));
            }
            LatencyRule {
                attribute: l.attribute.clone(),
                window: window(
                    ("latency", "max_ms", "max_ms_limit"),
                    l.max_ms,
                    l.widen_by,
                    l.widen_every_seconds,
                    l.max_ms_limit,
                    mistake,
                ),
            }
        });
        let mut used = BTreeSet::new();
        for (what, name) in self
            .match_on
            .iter()
            .map(|a| ("match_on", a))
            .chain(skill.iter().map(|s| ("skill.attribute", &s.attribute)))
            .chain(latency.iter().map(|l| ("latency.attribute", &l.attribute)))
        {
            if !used.insert(name.as_str()) && what != "match_on" {
                mistake(format!("{what} {name:?} is already used by another rule"));
            }
        }
        for attribute in &self.client_attributes {
            if !is_valid_name(attribute) {
                mistake(format!("client_attributes: {attribute:?} is not an attribute name"));
            }
            if skill.as_ref().is_some_and(|s| &s.attribute == attribute) {
                mistake(format!(
                    "client_attributes may not list the skill attribute {attribute:?}: skill comes from a service or a token claim"
                ));
            }
        }
        let max_wait_ms = self.max_wait_seconds.map(|s| {
            if !(s.is_finite() && s > 0.0 && s <= 86_400.0) {
                mistake(format!("max_wait_seconds must be > 0 and at most 86400, got {s}"));
            }
            millis(s)
        });
        if let Some(server) = &self.server
            && !is_valid_name(server)
        {
            mistake(format!(
                "server {server:?} is not a profile name (1-64 of A-Z a-z 0-9 _ -)"
            ));
        }
        let backfill = self.backfill.as_ref().map(|b| {
            let mut seconds = |name: &str, value: Option<f64>, default: f64| {
                let v = value.unwrap_or(default);
                if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                    mistake(format!("backfill.{name} must be > 0 and at most 86400, got {v}"));
                }
                millis(v)
            };
            let leave_grace_ms = seconds("leave_grace_seconds", b.leave_grace_seconds, LEAVE_GRACE_SECONDS);
            let max_ms = seconds("max_seconds", b.max_seconds, BACKFILL_MAX_SECONDS);
            if b.leave_grace_seconds.is_some() && !b.on_leave {
                mistake("backfill.leave_grace_seconds needs backfill.on_leave: true".into());
            }
            BackfillRule {
                on_leave: b.on_leave,
                leave_grace_ms,
                max_ms,
            }
        });
        Queue {
            name: self.name.clone(),
            shape,
            max_party,
            match_on: self.match_on.clone(),
            skill,
            latency,
            client_attributes: self.client_attributes.clone(),
            max_wait_ms,
            server: self.server.clone(),
            backfill,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
queues:
  - name: casual
    session_size: 12
    min_session_size: 2
    flush_wait_seconds: 15
  - name: ranked-2v2
    teams: 2
    team_size: 2
    max_party_size: 2
    match_on: [mode]
    skill:
      attribute: skill
      claim: mmr
      max_spread: 100
      widen_by: 50
      widen_every_seconds: 5
      max_spread_limit: 600
      balance_teams: true
    latency:
      attribute: latency_ms
      max_ms: 60
      widen_by: 20
      widen_every_seconds: 10
      max_ms_limit: 200
    client_attributes: [latency_ms]
    max_wait_seconds: 120
"#;

    #[test]
    fn the_example_file_loads() {
        let queues = Queues::parse(EXAMPLE).unwrap();
        let casual = queues.get("casual").unwrap();
        assert!(casual.is_plain());
        assert_eq!(
            casual.fifo_rules().unwrap(),
            FormRules {
                size: 12,
                min_partial: 2,
                flush_wait_ms: 15_000
            }
        );
        let ranked = queues.get("ranked-2v2").unwrap();
        assert!(!ranked.is_plain());
        assert_eq!(ranked.shape, Shape::Teams { teams: 2, team_size: 2 });
        assert_eq!(ranked.shape.full(), 4);
        let skill = ranked.skill.as_ref().unwrap();
        assert_eq!(skill.claim.as_deref(), Some("mmr"));
        assert!(skill.balance_teams);
        assert_eq!(skill.window.at(0), 100.0);
        assert_eq!(skill.window.at(4_999), 100.0);
        assert_eq!(skill.window.at(5_000), 150.0);
        assert_eq!(skill.window.at(24_000), 300.0);
        assert_eq!(skill.window.at(3_600_000), 600.0, "capped at the limit");
        assert_eq!(ranked.latency.as_ref().unwrap().window.at(10_000), 80.0);
        assert_eq!(ranked.max_wait_ms, Some(120_000));
        assert!(ranked.knows_attribute("mode") && ranked.knows_attribute("skill"));
        assert!(!ranked.knows_attribute("color"));
        assert!(queues.get(DEFAULT_QUEUE).is_none(), "a file lists every queue there is");
    }

    #[test]
    fn every_mistake_is_one_line() {
        let bad = r#"
queues:
  - name: "bad name!"
    session_size: 0
  - name: t
    teams: 2
    team_size: 2
    max_party_size: 3
    skill: {attribute: skill, max_spread: 100, widen_by: 10, max_spread_limit: 50, balance_teams: true}
    client_attributes: [skill]
  - name: t
    session_size: 4
    colour: red
  - name: f
    session_size: 4
    skill: {attribute: s, max_spread: 1, balance_teams: true}
    max_wait_seconds: -1
"#;
        let mistakes = Queues::parse(bad).unwrap_err();
        let expect = [
            "queue \"bad name!\": name must be",
            "queue \"bad name!\": session_size must be 1 to 1000, got 0",
            "queue \"t\": max_party_size must be 1 to team_size (2), got 3",
            "queue \"t\": skill.widen_by needs skill.widen_every_seconds",
            "queue \"t\": skill.max_spread_limit (50) must be a number at least skill.max_spread (100)",
            "queue \"t\": client_attributes may not list the skill attribute \"skill\"",
            "queue \"t\": unknown field `colour`",
            "queue \"f\": skill.balance_teams needs teams and team_size",
            "queue \"f\": max_wait_seconds must be > 0",
        ];
        for e in expect {
            assert!(
                mistakes.iter().any(|m| m.starts_with(e)),
                "missing {e:?} in {mistakes:#?}"
            );
        }
        assert!(mistakes.iter().all(|m| !m.contains('\n')), "{mistakes:#?}");
        for text in [
            "",
            "queues: 3",
            "queues: []",
            "[1]",
            "queues: [\n",
            "other: 1\nqueues: [{name: a, session_size: 2}]",
        ] {
            let mistakes = Queues::parse(text).unwrap_err();
            assert!(!mistakes.is_empty(), "{text:?}");
        }
        let dup = "queues: [{name: a, session_size: 2}, {name: a, session_size: 3}]";
        assert_eq!(
            Queues::parse(dup).unwrap_err(),
            vec!["queue \"a\": the name is used by another queue"]
        );
        assert_eq!(
            Queues::parse("queues: [{name: a, teams: 2}]").unwrap_err(),
            vec!["queue \"a\": teams and team_size go together"]
        );
    }

    #[test]
    fn backfill_is_read_with_its_defaults_and_checked() {
        let q = Queues::parse(
            "queues: [{name: a, session_size: 4, backfill: {on_leave: true, leave_grace_seconds: 3}},
                      {name: b, teams: 2, team_size: 2, backfill: {backfill_max_seconds: 30}},
                      {name: c, session_size: 4, backfill: {}}]",
        )
        .unwrap();
        let a = q.get("a").unwrap();
        assert!(!a.is_plain(), "a queue that backfills is formed by the rule former");
        assert_eq!(
            a.backfill,
            Some(BackfillRule {
                on_leave: true,
                leave_grace_ms: 3_000,
                max_ms: 60_000
            })
        );
        let b = q.get("b").unwrap().backfill.unwrap();
        assert!(!b.on_leave);
        assert_eq!(b.max_ms, 30_000);
        assert!(q.get("c").unwrap().backfill.is_some());
        let mistakes = Queues::parse(
            "queues: [{name: a, session_size: 4, backfill: {leave_grace_seconds: 0, max_seconds: -1, every: 1}},
                      {name: b, session_size: 4, backfill: {leave_grace_seconds: 5, max_seconds: 100000}}]",
        )
        .unwrap_err();
        assert_eq!(
            mistakes,
            vec![
                "queue \"a\": unknown field `every`, expected one of `on_leave`, `leave_grace_seconds`, `backfill_max_seconds`, `max_seconds`".to_owned(),
                "queue \"b\": backfill.max_seconds must be > 0 and at most 86400, got 100000".to_owned(),
                "queue \"b\": backfill.leave_grace_seconds needs backfill.on_leave: true".to_owned(),
            ]
        );
    }

    #[test]
    fn loading_names_the_file_on_every_line() {
        let dir = std::env::temp_dir().join(format!("mp-queues-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("queues.yaml");
        std::fs::write(&path, "queues: [{name: a}, {name: b, session_size: 0}]").unwrap();
        let err = Queues::load(&path).unwrap_err();
        assert_eq!(err.lines().count(), 2, "{err}");
        assert!(
            err.lines()
                .all(|l| l.starts_with(&format!("MATCHMAKING_CONFIG {}: queue ", path.display())))
        );
        let err = Queues::load(&dir.join("missing.yaml")).unwrap_err();
        assert!(err.contains("cannot read it"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_default_queue_is_plain_join_order() {
        let rules = FormRules {
            size: 12,
            min_partial: 2,
            flush_wait_ms: 15_000,
        };
        let queues = Queues::default_only(rules);
        let default = queues.get(DEFAULT_QUEUE).unwrap();
        assert!(default.is_plain());
        assert_eq!(default.fifo_rules(), Some(rules));
    }
}
