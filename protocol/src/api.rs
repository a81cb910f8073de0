//! Bodies of the HTTP API (DESIGN §4) and of the game server's result report, shared by the
//! backend that serves them and the clients (loadgen, game-server, tests) that send them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `POST /match/join` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub player_id: String,
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
}

/// The answer of `/match/join` and `/match/status`, in the original system's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Why the session ended, once ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
}

/// The error body of every non-2xx answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// See [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    /// An error body with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// Why a session ended (DESIGN §5).
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
}

impl EndReason {
    /// Every reason, for metrics and tests.
    pub const ALL: [EndReason; 7] = [
        EndReason::Completed,
        EndReason::Abandoned,
        EndReason::NoShow,
        EndReason::Terminated,
        EndReason::Failed,
        EndReason::Stopped,
        EndReason::DryRun,
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

#[cfg(test)]
mod tests {
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
            end_reason: None,
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
