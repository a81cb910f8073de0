//! A typed body for every request and response of the HTTP API, and the game server's result
//! report, shared by the backend that serves them and the clients (proxy, loadgen, game-server,
//! tests) that send or read them.

pub use crate::sessions::EndReason;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `POST /match/join` body. Only `player_id` is required: the original clients send nothing
/// else and land in the `default` queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub player_id: String,
    /// The queue to wait in (`default` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The player's attributes: strings, numbers, or region → ms maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
    /// The other players of the joining player's party (services and operators only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party: Option<Vec<PartyMember>>,
}

impl JoinRequest {
    /// A plain join of `player` to the default queue.
    pub fn player(player: &str) -> JoinRequest {
        JoinRequest {
            player_id: player.to_owned(),
            queue: None,
            attributes: None,
            party: None,
        }
    }
}

/// A party member in a join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartyMember {
    pub player_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Where a player stands, as `/match/join` and `/match/status` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchStatus {
    Queued,
    Allocating,
    Matched,
    Ended,
    Unknown,
    /// The ticket waited its queue's longest wait without being placed.
    TimedOut,
}

/// The answer of `/match/join` and `/match/status`, in the original system's shape, with the
/// queue's fields after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MatchResponse {
    pub status: MatchStatus,
    /// `pending:<player_id>` while queued, the session's UUID once formed.
    pub session_id: String,
    pub players: Vec<String>,
    /// The proxy's public host, once matched; empty before.
    pub connect_host: String,
    /// The proxy's public port, once matched; 0 before.
    pub connect_port: u16,
    /// The player's game ticket, once matched.
    pub ticket: Option<String>,
    /// Whether `connect_host:connect_port` speaks TLS, once matched (left out before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_tls: Option<bool>,
    /// The WebSocket URL of the game connection (`ws[s]://<host>:<port>/play`), once matched
    /// to a server with a TCP port (left out otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_ws: Option<String>,
    /// Why the session ended, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// How long the ticket has waited, while queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<i64>,
    /// The session's players connected to its server now, as the proxy sees them (left out
    /// when none is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connected: Vec<String>,
    /// A player placed into a running session by backfill: when the slot it took opened (ms
    /// since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill_since_ms: Option<i64>,
    /// The queue; while queued, `skill_spread` and `max_latency_ms` say what the search allows
    /// now; in a session, its teams, region and quality.
    #[serde(flatten)]
    pub placement: crate::sessions::Placement,
}

/// The header a backend replica that is shutting down puts on a `503` it answered before
/// doing anything (a join it no longer takes): the request may go to another replica, which
/// the proxy does once.
pub const DRAINING_HEADER: &str = "matchplane-draining";

/// Every `error.code` an HTTP answer of matchplane carries (the backend's API, and the
/// proxy's own answers), with the status it goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiErrorCode {
    /// 400: the body is not JSON (or could not be read).
    Malformed,
    /// 422: well-formed, but not a valid request (a field's value, a body's shape).
    Invalid,
    /// 422: a join names a queue there is not.
    UnknownQueue,
    /// 404: no such endpoint.
    NotFound,
    /// 404: no such session.
    UnknownSession,
    /// 404: the player is not queued (a leave).
    NotQueued,
    /// 409: a player of the ticket is already queued in another queue.
    AlreadyQueued,
    /// 409: a player of the ticket is already in a session.
    InSession,
    /// 409: the session is not running (still starting, or over): it takes no backfill.
    NotRunning,
    /// 409: the session's queue does not backfill (it has no `backfill` settings).
    NoBackfill,
    /// 413: the body is over the limit.
    TooLarge,
    /// 401: no token, or one that does not verify.
    Unauthorized,
    /// 403: a token that may not do this.
    Forbidden,
    /// 405: the endpoint does not answer this method.
    MethodNotAllowed,
    /// 429: too many requests for this player (the proxy's limit).
    Throttled,
    /// 503: the backend cannot answer now (shutting down, keys unavailable, timed out).
    Unavailable,
    /// 503: Redis is down.
    RedisUnavailable,
    /// 503: PostgreSQL is down.
    DatabaseUnavailable,
    /// 502: the proxy could not reach the backend, or its answer was cut off.
    BackendUnavailable,
    /// 504: the backend did not answer the proxy in time.
    BackendTimeout,
}

impl ApiErrorCode {
    /// Every code.
    pub const ALL: [ApiErrorCode; 20] = [
        ApiErrorCode::Malformed,
        ApiErrorCode::Invalid,
        ApiErrorCode::UnknownQueue,
        ApiErrorCode::NotFound,
        ApiErrorCode::UnknownSession,
        ApiErrorCode::NotQueued,
        ApiErrorCode::AlreadyQueued,
        ApiErrorCode::InSession,
        ApiErrorCode::NotRunning,
        ApiErrorCode::NoBackfill,
        ApiErrorCode::TooLarge,
        ApiErrorCode::Unauthorized,
        ApiErrorCode::Forbidden,
        ApiErrorCode::MethodNotAllowed,
        ApiErrorCode::Throttled,
        ApiErrorCode::Unavailable,
        ApiErrorCode::RedisUnavailable,
        ApiErrorCode::DatabaseUnavailable,
        ApiErrorCode::BackendUnavailable,
        ApiErrorCode::BackendTimeout,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiErrorCode::Malformed => "malformed",
            ApiErrorCode::Invalid => "invalid",
            ApiErrorCode::UnknownQueue => "unknown_queue",
            ApiErrorCode::NotFound => "not_found",
            ApiErrorCode::UnknownSession => "unknown_session",
            ApiErrorCode::NotQueued => "not_queued",
            ApiErrorCode::AlreadyQueued => "already_queued",
            ApiErrorCode::InSession => "in_session",
            ApiErrorCode::NotRunning => "not_running",
            ApiErrorCode::NoBackfill => "no_backfill",
            ApiErrorCode::TooLarge => "too_large",
            ApiErrorCode::Unauthorized => "unauthorized",
            ApiErrorCode::Forbidden => "forbidden",
            ApiErrorCode::MethodNotAllowed => "method_not_allowed",
            ApiErrorCode::Throttled => "throttled",
            ApiErrorCode::Unavailable => "unavailable",
            ApiErrorCode::RedisUnavailable => "redis_unavailable",
            ApiErrorCode::DatabaseUnavailable => "database_unavailable",
            ApiErrorCode::BackendUnavailable => "backend_unavailable",
            ApiErrorCode::BackendTimeout => "backend_timeout",
        }
    }

    /// The HTTP status an answer with this code has.
    pub fn status(self) -> u16 {
        match self {
            ApiErrorCode::Malformed => 400,
            ApiErrorCode::Unauthorized => 401,
            ApiErrorCode::Forbidden => 403,
            ApiErrorCode::NotFound | ApiErrorCode::UnknownSession | ApiErrorCode::NotQueued => 404,
            ApiErrorCode::MethodNotAllowed => 405,
            ApiErrorCode::AlreadyQueued
            | ApiErrorCode::InSession
            | ApiErrorCode::NotRunning
            | ApiErrorCode::NoBackfill => 409,
            ApiErrorCode::TooLarge => 413,
            ApiErrorCode::Invalid | ApiErrorCode::UnknownQueue => 422,
            ApiErrorCode::Throttled => 429,
            ApiErrorCode::BackendUnavailable => 502,
            ApiErrorCode::Unavailable | ApiErrorCode::RedisUnavailable | ApiErrorCode::DatabaseUnavailable => 503,
            ApiErrorCode::BackendTimeout => 504,
        }
    }
}

impl fmt::Display for ApiErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ApiErrorCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ApiErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown error code {s:?}"))
    }
}

/// The error body of every non-2xx answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// See [`ErrorBody`]. `code` is one of [`ApiErrorCode`]'s spellings; it stays a string so a
/// client reads a code added after it was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    /// An error body with this code and message.
    pub fn new(code: ApiErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.as_str().to_owned(),
                message: message.into(),
            },
        }
    }

    /// The code, if this version knows it.
    pub fn code(&self) -> Option<ApiErrorCode> {
        self.error.code.parse().ok()
    }
}

/// What a game server reports when its session stops:
/// `POST {REPORT_URL}` with `Authorization: Bearer {REPORT_TOKEN}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultReport {
    pub session_id: String,
    pub end_reason: EndReason,
    /// The running length in whole seconds, if a client set one.
    pub requested_seconds: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub ended_at: OffsetDateTime,
    /// Every rostered player, joined or not.
    pub players: Vec<PlayerResult>,
}

/// One rostered player's attendance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerResult {
    pub player_id: String,
    /// When the player first joined; `None` if never.
    #[serde(with = "time::serde::rfc3339::option")]
    pub joined_at: Option<OffsetDateTime>,
    /// When the player's last connection closed; `None` if never joined, or still connected
    /// when the session stopped (then it left at `ended_at`).
    #[serde(with = "time::serde::rfc3339::option")]
    pub left_at: Option<OffsetDateTime>,
}

/// A session as `GET /sessions/{id}` and `GET /sessions/active` show it, and as each row of a
/// player's history does: one shape whether the session is live (read from Redis) or over
/// (read from the PostgreSQL history). Fields a source does not know are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView {
    pub session_id: String,
    /// `allocating`, `matched` or `ended`.
    pub status: MatchStatus,
    pub players: Vec<String>,
    /// The backend replica that formed it.
    pub instance: Option<String>,
    /// The game server's name (a Pod, or `local-<pid>`).
    pub server: Option<String>,
    /// The game server's `ip:port`, while the session is live.
    pub addr: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When its server became ready.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ready_at: Option<OffsetDateTime>,
    /// When the match started, as the server reported it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub end_reason: Option<EndReason>,
    /// The running length a client asked for, as the server reported it.
    pub requested_seconds: Option<u64>,
    /// Its players connected to its server now, as the proxy sees them (left out when none
    /// is, and for ended sessions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connected: Vec<String>,
    /// Its open backfill request, while it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillStatus>,
    /// Its queue, teams, region and quality.
    #[serde(flatten)]
    pub placement: crate::sessions::Placement,
}

/// `GET /sessions/active`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveSessions {
    /// Sessions listed here (at most the `limit` asked for).
    pub count: usize,
    /// Live sessions that match the filters, listed or not.
    #[serde(default)]
    pub matching: usize,
    /// Oldest first.
    pub sessions: Vec<SessionView>,
}

/// One row of `GET /players/{id}/matches`: the session, and this player's attendance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerMatch {
    #[serde(flatten)]
    pub session: SessionView,
    /// When the player first connected to the server, if it did.
    #[serde(with = "time::serde::rfc3339::option")]
    pub joined_at: Option<OffsetDateTime>,
    /// When the player's last connection closed, if it did before the end.
    #[serde(with = "time::serde::rfc3339::option")]
    pub left_at: Option<OffsetDateTime>,
}

/// `GET /players/{id}/matches?limit=&offset=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerMatches {
    pub player_id: String,
    /// Newest first.
    pub matches: Vec<PlayerMatch>,
    /// The `offset` of the next page, when there is one.
    pub next_offset: Option<i64>,
}

/// One queue in `GET /queues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    /// Tickets waiting (a party is one ticket).
    pub depth: u64,
    /// How long the ticket at the head has waited; `null` when none waits.
    pub oldest_wait_ms: Option<i64>,
}

/// `GET /queues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
}

/// `POST /match/{session_id}/end`: the session is over (now, or already before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub session_id: String,
    /// Always `ended`.
    pub status: MatchStatus,
    /// Why it ended: `stopped`, or the earlier reason if it had already ended.
    pub end_reason: Option<EndReason>,
}

/// What the backend did with a result report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recorded {
    /// The report ended the session.
    Ended,
    /// The session had already ended; the report added attendance only.
    AlreadyEnded,
    /// Redis no longer knew the session (restarted empty, or a failover lost its latest
    /// writes): the report closed its history row itself.
    History,
}

/// `POST /internal/sessions/{id}/result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportReceipt {
    pub session_id: String,
    pub recorded: Recorded,
}

/// `POST /internal/sessions/{id}/ready` and `…/health`: the session as the backend sees it.
/// `ended` tells the server its session is over (an operator ended it, or it failed): it
/// should stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalReceipt {
    pub session_id: String,
    /// `allocating` (not yet ready), `matched` (players have tickets) or `ended`.
    pub status: MatchStatus,
}

/// Open slots: a number for the whole session, or one number per team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Slots {
    Total(u32),
    PerTeam(Vec<u32>),
}

/// `POST /internal/sessions/{id}/backfill`: a running session's server asks for players.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillAsk {
    /// The open slots from now on (0: withdraw the request), capped at the room the roster
    /// leaves: a number (a session without teams), or one number per team.
    pub slots: Slots,
    /// Players to take off the roster first (they left for good): their places become room.
    #[serde(default)]
    pub release: Vec<String>,
}

/// A session's backfill request, as its server and operators read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillStatus {
    /// Open slots per team (one entry without teams); all 0 when none is open.
    pub slots: Vec<u32>,
    /// When the slots opened (absent when none is).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub since: Option<OffsetDateTime>,
    /// How long it has been open, in ms.
    pub wait_ms: i64,
    /// What its wait allows now: the session's skill spread with the newcomers, and every
    /// newcomer's latency to the session's region (absent without such a rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skill_spread: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
    /// When it ends unfilled, if still open then.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires: Option<OffsetDateTime>,
}

/// `POST /internal/sessions/{id}/backfill`: the request after the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackfillReceipt {
    pub session_id: String,
    pub backfill: BackfillStatus,
    /// The players the call took off the roster.
    pub released: Vec<String>,
    /// The roster after.
    pub players: Vec<String>,
}

/// `POST /internal/sessions/{id}/roster`: the roster as it is now (or once it changed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Roster {
    pub session_id: String,
    /// `matched` while running, `ended` once over.
    pub status: MatchStatus,
    /// Whether the session's queue backfills at all (when not, the roster never changes and
    /// there is nothing to follow).
    pub backfills: bool,
    /// Changes with every player placed by backfill or released.
    pub version: u64,
    pub players: Vec<String>,
    /// Each team's players (empty without teams).
    #[serde(default)]
    pub teams: Vec<Vec<String>>,
    /// Its open backfill request, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<BackfillStatus>,
}

/// `POST /internal/sessions/{id}/roster`: wait (up to `wait` seconds, default 0) for a roster
/// newer than version `after` (default 0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterWait {
    #[serde(default)]
    pub after: u64,
    #[serde(default)]
    pub wait: Option<f64>,
}

/// `POST /internal/warm/{server_id}/session`: the session handed to a warm server of a
/// profile, and how to report for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmSession {
    pub session_id: String,
    pub players: Vec<String>,
    /// The teams' players, when the queue has teams.
    #[serde(default)]
    pub teams: Vec<Vec<String>>,
    pub queue: String,
    /// Where the result report goes (the other SDK calls are its siblings), and its token.
    pub report_url: String,
    pub report_token: String,
}

/// Whether a dependency answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DependencyState {
    Ok,
    Down,
}

impl DependencyState {
    pub fn from_ok(ok: bool) -> DependencyState {
        if ok { DependencyState::Ok } else { DependencyState::Down }
    }
}

/// `ok` when every dependency answers, `degraded` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Degraded,
}

impl HealthStatus {
    pub fn from_ok(ok: bool) -> HealthStatus {
        if ok { HealthStatus::Ok } else { HealthStatus::Degraded }
    }
}

/// `GET /livez` of the backend and the proxy: the process is serving. It checks nothing else,
/// so that a dependency's outage never gets a healthy process restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    /// Always `ok`.
    pub status: HealthStatus,
}

impl Live {
    pub const OK: Live = Live {
        status: HealthStatus::Ok,
    };
}

/// The backend's `GET /health` (status 503 when not `ready`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    pub status: HealthStatus,
    /// Taking joins: Redis answers and the backend is not shutting down.
    pub ready: bool,
    pub draining: bool,
    pub instance: String,
    /// `local`, `kubernetes` or `none`.
    pub runtime: String,
    pub redis: DependencyState,
    pub postgres: DependencyState,
    /// History events not yet written to PostgreSQL; `null` when Redis did not say.
    pub history_backlog: Option<u64>,
    /// Sessions this replica supervises.
    pub sessions_supervised: usize,
    /// This replica's warm game servers, when it keeps any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_servers: Option<WarmServers>,
    /// This replica's warm servers of each profile with a `warm_pool`, by profile name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub warm_profiles: std::collections::BTreeMap<String, WarmServers>,
    /// Each region's state as this replica sees it, with `REGIONS`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub regions: std::collections::BTreeMap<String, RegionState>,
}

/// A region in `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    /// Taking new sessions.
    pub up: bool,
    /// Down: for how long, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A replica's warm pool in `GET /health`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarmServers {
    /// Ready to be handed a session.
    pub idle: usize,
    /// Being started.
    pub starting: usize,
    /// The size demand calls for now, within `WARM_POOL_MIN`..`WARM_POOL_MAX`.
    pub target: usize,
    /// Sessions handed to a warm server, and sessions that found the pool empty and started
    /// cold, since start.
    pub handed: u64,
    pub cold_starts: u64,
    /// Warm servers that died while idle and were replaced, since start.
    pub replaced: u64,
}

/// The proxy's own `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyHealth {
    pub status: HealthStatus,
    pub redis: DependencyState,
    pub backend: DependencyState,
    pub open_game_connections: i64,
}

#[cfg(test)]
mod tests {

    #[test]
    fn every_error_code_is_in_the_api_reference_with_its_status() {
        let doc = include_str!("../../docs/api.md");
        let table: Vec<&str> = doc
            .lines()
            .filter(|l| l.starts_with("| 4") || l.starts_with("| 5"))
            .collect();
        for code in ApiErrorCode::ALL {
            let row = table
                .iter()
                .find(|row| row.contains(&format!("`{code}`")))
                .unwrap_or_else(|| panic!("docs/api.md's table of statuses lacks `{code}`"));
            assert!(
                row.starts_with(&format!("| {} |", code.status())),
                "`{code}` is under the wrong status in docs/api.md: {row}"
            );
            assert_eq!(code.as_str().parse::<ApiErrorCode>(), Ok(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{code}\""));
        }
    }

    use super::*;

    #[test]
    fn queued_response_has_the_original_shape() {
        let body = MatchResponse {
            status: MatchStatus::Queued,
            session_id: "pending:p1".into(),
            players: vec!["p1".into()],
            connect_host: String::new(),
            connect_port: 0,
            ticket: None,
            connect_tls: None,
            connect_ws: None,
            end_reason: None,
            wait_ms: None,
            connected: Vec::new(),
            backfill_since_ms: None,
            placement: crate::sessions::Placement::default(),
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"status":"queued","session_id":"pending:p1","players":["p1"],
                "connect_host":"","connect_port":0,"ticket":null})
        );
    }

    #[test]
    fn end_reasons_round_trip() {
        for reason in EndReason::ALL {
            assert_eq!(reason.as_str().parse::<EndReason>().unwrap(), reason);
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }
}
