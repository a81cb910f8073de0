//! The session record: the contract between the backend, which writes it, and the proxy, which
//! routes game connections by it.
//!
//! Every record of a deployment lives in one Redis hash, [`sessions_key`], as a JSON
//! [`SessionRecord`] under the session id. The key carries the deployment's hash tag
//! (`{<REDIS_KEY_PREFIX>}`), like every other matchplane key, so the backend's scripts may touch
//! it together with the queue on a Redis Cluster.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The Redis hash holding every session record of the deployment under `prefix`.
pub fn sessions_key(prefix: &str) -> String {
    format!("{{{prefix}}}:sessions")
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The running length elapsed.
    Completed,
    /// Every player was gone for the empty grace while running.
    Abandoned,
    /// The match never started before the open timeout.
    NoShow,
    /// The server was told to stop (SIGTERM).
    Terminated,
    /// The server never became ready, or died.
    Failed,
    /// An operator ended it.
    Stopped,
    /// `RUNTIME=none`: formed and recorded, then ended at once.
    DryRun,
    /// Redis no longer knows the session (it restarted without its data, or a failover lost
    /// the latest writes): the history reconciler closed its row. A real end recorded later
    /// takes its place.
    Lost,
}

impl EndReason {
    /// Every reason, for metrics and tests.
    pub const ALL: [EndReason; 8] = [
        EndReason::Completed,
        EndReason::Abandoned,
        EndReason::NoShow,
        EndReason::Terminated,
        EndReason::Failed,
        EndReason::Stopped,
        EndReason::DryRun,
        EndReason::Lost,
    ];

    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Completed => "completed",
            EndReason::Abandoned => "abandoned",
            EndReason::NoShow => "no_show",
            EndReason::Terminated => "terminated",
            EndReason::Failed => "failed",
            EndReason::Stopped => "stopped",
            EndReason::DryRun => "dry_run",
            EndReason::Lost => "lost",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EndReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        EndReason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown end reason {s:?}"))
    }
}

/// How a session's server learns who each player is; the proxy has verified every ticket
/// before a byte reaches the server, whatever the mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Identity {
    /// The server receives only the game's own bytes: the proxy consumes the `JOIN` line.
    None,
    /// Each TCP connection starts with a PROXY protocol v2 header: the player's address, and
    /// the verified player id and session id in TLVs.
    ProxyV2,
    /// The `JOIN <ticket>` line is passed on (the built-in game server's mode).
    #[default]
    JoinLine,
}

impl Identity {
    /// Every mode, as profiles spell them.
    pub const ALL: [Identity; 3] = [Identity::None, Identity::ProxyV2, Identity::JoinLine];

    /// The spelling in profiles and session records.
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::None => "none",
            Identity::ProxyV2 => "proxy-v2",
            Identity::JoinLine => "join-line",
        }
    }

    fn is_join_line(&self) -> bool {
        *self == Identity::JoinLine
    }
}

impl FromStr for Identity {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Identity::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an identity mode (none, proxy-v2 or join-line)"))
    }
}

/// Where a session is in its life: `allocating` → `matched` → `ended`, never backwards. The
/// order of the variants is that of a session's life (`Ord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Formed; its server is starting.
    Allocating,
    /// Its server is ready for players; `addr` says where.
    Matched,
    /// Over; `end_reason` says why.
    Ended,
}

impl SessionState {
    /// Every state, in the order of a session's life.
    pub const ALL: [SessionState; 3] = [SessionState::Allocating, SessionState::Matched, SessionState::Ended];

    /// The wire and database spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Allocating => "allocating",
            SessionState::Matched => "matched",
            SessionState::Ended => "ended",
        }
    }
}

impl std::str::FromStr for SessionState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        SessionState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown session state {s:?}"))
    }
}

/// What the matchmaker decided about a session: its queue, teams, region and quality. Every
/// field is optional: sessions of the default queue have no teams, region or skill.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// The queue it formed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// Each team's players (a party always on one team).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "lists_or_empty_objects"
    )]
    pub teams: Vec<Vec<String>>,
    /// The region chosen from the players' latency maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Max - min of its tickets' skills (a party counts as its mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_spread: Option<f64>,
    /// Max - min of its teams' total skills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_skill_gap: Option<f64>,
    /// The worst latency of any player to the region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
    /// How long its oldest ticket had waited when it formed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<i64>,
    /// The version of its server profile it runs, when the profile lists versions (set once
    /// its server is ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A list, also when written as `{}` (Lua's JSON encoder cannot tell an empty list from an
/// empty object).
pub fn list_or_empty_object<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Object(map) if map.is_empty() => Ok(Vec::new()),
        other => serde_json::from_value(other).map_err(serde::de::Error::custom),
    }
}

/// One session as Redis holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub state: SessionState,
    /// The roster, in join order.
    #[serde(deserialize_with = "list_or_empty_object")]
    pub players: Vec<String>,
    /// Each player's join time (ms since the Unix epoch), aligned with `players`.
    #[serde(deserialize_with = "list_or_empty_object")]
    pub joined_ms: Vec<i64>,
    pub created_ms: i64,
    /// The backend replica that formed the session and supervises it.
    pub instance: String,
    /// The game server's name (a Pod, or `local-<pid>`), once matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The game server's `ip:port`, once matched: where the proxy sends players' TCP
    /// connections (its first TCP port; unset when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The `ip:port` of its first UDP port, when it has one: where the proxy relays players'
    /// datagrams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp_addr: Option<String>,
    /// How the server learns who each player is (absent: `join-line`).
    #[serde(default, skip_serializing_if = "Identity::is_join_line")]
    pub identity: Identity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// Whether the game server's result report arrived.
    #[serde(default)]
    pub reported: bool,
    /// The players with a connection (or UDP flow) open to the server now, as the proxy
    /// reports them, in order of connecting.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "list_or_empty_object"
    )]
    pub connected: Vec<String>,
    /// Since when no player has been connected, once one had been (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since_ms: Option<i64>,
    /// When each player not connected now closed its last connection (ms since the epoch), for
    /// giving the place of one gone too long to a backfill.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "map_or_empty_list"
    )]
    pub left_ms: BTreeMap<String, i64>,
    /// Changes with every player placed into the session or released from it after it formed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub roster_version: u64,
    /// Each player placed by backfill, with when the slot it took opened (ms since the epoch).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "map_or_empty_list"
    )]
    pub backfilled: BTreeMap<String, i64>,
    /// A rule queue's tickets as they were queued (JSON documents), those it formed with and
    /// those backfill placed since.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "list_or_empty_object"
    )]
    pub tickets: Vec<String>,
    #[serde(flatten)]
    pub placement: Placement,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A JSON object, or `[]` (what Lua's cjson writes for an empty table) as an empty map.
pub fn map_or_empty_list<'de, D, V>(deserializer: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: serde::Deserializer<'de>,
    V: serde::de::DeserializeOwned,
{
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Array(list) if list.is_empty() => Ok(BTreeMap::new()),
        other => serde_json::from_value(other).map_err(serde::de::Error::custom),
    }
}

/// Lists of lists where Lua's cjson may have written an empty one as `{}`.
pub fn lists_or_empty_objects<'de, D, T>(deserializer: D) -> Result<Vec<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let empty = |v: &serde_json::Value| matches!(v, serde_json::Value::Object(map) if map.is_empty());
    match serde_json::Value::deserialize(deserializer)? {
        v if empty(&v) => Ok(Vec::new()),
        serde_json::Value::Array(outer) => outer
            .into_iter()
            .map(|inner| {
                if empty(&inner) {
                    Ok(Vec::new())
                } else {
                    serde_json::from_value(inner).map_err(serde::de::Error::custom)
                }
            })
            .collect(),
        other => serde_json::from_value(other).map_err(serde::de::Error::custom),
    }
}

impl SessionRecord {
    /// A session of `players` formed by `instance` whose server `server` is ready, reached at
    /// no address yet (set `addr`, `udp_addr` and `identity` as the server has them): what tools
    /// and tests write when they stand in for the backend.
    pub fn matched(instance: &str, players: Vec<String>, server: &str) -> SessionRecord {
        SessionRecord {
            state: SessionState::Matched,
            joined_ms: vec![0; players.len()],
            players,
            created_ms: 0,
            instance: instance.to_owned(),
            server: Some(server.to_owned()),
            addr: None,
            udp_addr: None,
            identity: Identity::JoinLine,
            ready_ms: None,
            ended_ms: None,
            end_reason: None,
            reported: false,
            connected: Vec::new(),
            empty_since_ms: None,
            left_ms: BTreeMap::new(),
            roster_version: 0,
            backfilled: BTreeMap::new(),
            tickets: Vec::new(),
            placement: Placement::default(),
        }
    }

    /// The server address players of a `matched` session are sent to.
    pub fn route(&self) -> Option<&str> {
        match self.state {
            SessionState::Matched => self.addr.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_leaves_unset_fields_out() {
        let record = SessionRecord {
            joined_ms: vec![1, 2],
            created_ms: 3,
            addr: Some("127.0.0.1:9".into()),
            ready_ms: Some(4),
            ..SessionRecord::matched("i1", vec!["a".into(), "b".into()], "local-9")
        };
        let json = serde_json::to_value(&record).unwrap();
        assert!(json.get("ended_ms").is_none() && json.get("identity").is_none());
        assert_eq!(json["state"], "matched");
        assert_eq!(serde_json::from_value::<SessionRecord>(json).unwrap(), record);
        assert_eq!(record.route(), Some("127.0.0.1:9"));
        assert_eq!(sessions_key("mp"), "{mp}:sessions");
    }

    #[test]
    fn a_record_from_a_script_reads_with_its_placement() {
        // As Lua writes it: an unknown field (the tickets), numbers, and no teams.
        let raw = r#"{"state":"allocating","players":["a","b"],"joined_ms":[1,2],"created_ms":3,"instance":"i",
            "queue":"ranked","region":"eu","skill_spread":12.5,"max_latency_ms":40,"max_wait_ms":900,
            "tickets":["{}"],"teams":{}}"#;
        let record: SessionRecord = serde_json::from_str(raw).unwrap();
        assert_eq!(record.placement.queue.as_deref(), Some("ranked"));
        assert_eq!(record.placement.region.as_deref(), Some("eu"));
        assert_eq!(record.placement.skill_spread, Some(12.5));
        assert_eq!(record.placement.max_latency_ms, Some(40.0));
        assert!(record.placement.teams.is_empty());
        let json = serde_json::to_value(&record).unwrap();
        assert!(json.get("teams").is_none() && json.get("team_skill_gap").is_none());
    }
}
