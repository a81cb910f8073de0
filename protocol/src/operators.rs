//! The operator endpoints' bodies: what the console reads, and what any operator's tool can
//! read the same way (`GET /operator/overview`, `/operator/failures`, `/operator/audit`, the
//! console's sign-in).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::api::{BackendHealth, EndReason};

/// `GET /operator/overview`: the whole deployment, as of `generated_at` (all replicas).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// Every configured queue, in the configuration's order.
    pub queues: Vec<QueueStats>,
    /// Join → session formed, every queue together.
    pub time_to_match: LatencyWindows,
    /// Join → the server ready and the player matched, every queue together.
    pub time_to_play: LatencyWindows,
    /// Live sessions by state.
    pub sessions: SessionCounts,
    /// Sessions that ended `failed`, per second, over the windows.
    pub failed_per_s: Rates,
    /// Every replica that reported in the last 15 minutes; `gone` once it stops.
    pub replicas: Vec<Replica>,
    /// The latest session failures, newest first (at most 20; all of them at
    /// `GET /operator/failures`).
    pub failures: Vec<Failure>,
}

/// One queue in the overview.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    pub name: String,
    /// Tickets waiting (a party is one ticket).
    pub depth: u64,
    /// How long the ticket at the head has waited; `null` when none waits.
    pub oldest_wait_ms: Option<i64>,
    /// Players joining, per second.
    pub players_in_per_s: Rates,
    /// Players placed into sessions, per second.
    pub players_out_per_s: Rates,
    /// Tickets that waited the queue's `max_wait_seconds`, per second.
    pub timed_out_per_s: Rates,
    /// What the queue's windows allow for the ticket at its head now (its wait widens them).
    pub allows_now: Allows,
    /// The server profile its sessions run; `null`: the built-in game server.
    pub profile: Option<String>,
    /// The replica forming its sessions now (rule queues hold a lease); `null` for the
    /// `default` queue, which every replica forms.
    pub formed_by: Option<String>,
    pub time_to_match: LatencyWindows,
    pub time_to_play: LatencyWindows,
}

/// What a queue's windows allow now; `null` where the queue sets no such rule.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Allows {
    pub skill_spread: Option<f64>,
    pub max_latency_ms: Option<f64>,
}

/// A rate over the last 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Rates {
    pub m1: f64,
    pub m5: f64,
    pub m15: f64,
}

/// Latency percentiles over the last 1, 5 and 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LatencyWindows {
    pub m1: Latency,
    pub m5: Latency,
    pub m15: Latency,
}

/// Percentiles of one window, estimated from a histogram (as Prometheus's
/// `histogram_quantile` does); `null` when nothing was observed.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Live sessions by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SessionCounts {
    pub allocating: u64,
    pub matched: u64,
}

/// How a replica looks from its last report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Taking joins, every dependency up.
    Ready,
    /// Serving, some dependency down.
    Degraded,
    /// Shutting down.
    Draining,
    /// No report for longer than a replica reports.
    Gone,
}

/// One replica in the overview: its own health as it last reported it, and what it owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    pub state: ReplicaState,
    /// How long ago it last reported.
    pub seen_ms_ago: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// The rule queues it forms now.
    pub forms: Vec<String>,
    /// Whether it keeps the cluster's warm Pods now.
    pub keeps_warm_pods: bool,
    /// Its `GET /health`, as it last reported it.
    pub health: BackendHealth,
}

/// One session failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub session_id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Always `failed` today.
    pub reason: EndReason,
    /// What failed, in words (a start that timed out, a server that exited, a Pod deleted).
    pub detail: String,
    /// The replica that saw it.
    pub instance: String,
}

/// `GET /operator/failures`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureList {
    /// Newest first; the latest 200 are kept.
    pub failures: Vec<Failure>,
}

/// One operator action, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who: the name given at the console's sign-in, or `api` for the operator token.
    pub actor: String,
    /// `console` or `api`.
    pub via: String,
    /// The caller's address (the first `X-Forwarded-For` hop through a proxy).
    pub remote: Option<String>,
    /// What, such as `end_session`.
    pub action: String,
    /// On what, such as a session id.
    pub target: String,
    /// What came of it, such as `ended`, `already_ended`, `unknown_session`.
    pub outcome: String,
}

/// `GET /operator/audit?limit=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    /// Newest first.
    pub entries: Vec<AuditEntry>,
}

/// `POST /console/login`: the operator token, and a name the audit log records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleLogin {
    pub token: String,
    /// 1-64 characters of `A-Z a-z 0-9 _ . @ -`; `operator` when left out.
    #[serde(default)]
    pub name: Option<String>,
}

/// `GET /console/session` (and the answer to a sign-in): who is signed in, and the token every
/// state-changing request of the console carries in `X-CSRF-Token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    pub name: String,
    pub csrf_token: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `GET /operator/versions`: every server profile with versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsList {
    pub profiles: Vec<ProfileVersions>,
}

/// One profile's versions as operators see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileVersions {
    pub profile: String,
    /// The queues whose sessions run it.
    pub queues: Vec<String>,
    pub versions: Vec<VersionView>,
}

/// One version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    pub name: String,
    /// Its weight in the queue file.
    pub file_weight: u32,
    /// Its weight in force: an operator's when set, 0 while draining, else the file's.
    pub weight: u32,
    pub draining: bool,
    /// When its last session ended after it began draining; `null` until then.
    #[serde(with = "time::serde::rfc3339::option")]
    pub drained_at: Option<OffsetDateTime>,
    /// Its live sessions (with their server ready).
    pub live_sessions: u64,
}

/// `PUT /operator/versions/{profile}`: new weights for some or all of its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetWeights {
    /// Whole numbers (`3` or `3.0`, as JSON allows).
    #[serde(deserialize_with = "whole_numbers")]
    pub weights: std::collections::BTreeMap<String, u32>,
}

/// A map of whole numbers, written as integers or as numbers with no fraction.
fn whole_numbers<'de, D>(deserializer: D) -> Result<std::collections::BTreeMap<String, u32>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error as _;
    let raw = std::collections::BTreeMap::<String, serde_json::Number>::deserialize(deserializer)?;
    raw.into_iter()
        .map(|(key, number)| {
            let whole = number.as_u64().or_else(|| {
                number
                    .as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(f))
                    .map(|f| f as u64)
            });
            match whole.and_then(|w| u32::try_from(w).ok()) {
                Some(w) => Ok((key, w)),
                None => Err(D::Error::custom(format!(
                    "the weight of {key:?} must be a whole number from 0 to 1000, got {number}"
                ))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::SetWeights;

    #[test]
    fn weights_are_whole_numbers_however_json_writes_them() {
        let set: SetWeights = serde_json::from_str(r#"{"weights": {"a": 3, "b": 299.0}}"#).unwrap();
        assert_eq!(set.weights, [("a".to_owned(), 3), ("b".to_owned(), 299)].into());
        for bad in [
            r#"{"weights": {"a": 2.5}}"#,
            r#"{"weights": {"a": -1}}"#,
            r#"{"weights": {"a": "1"}}"#,
        ] {
            assert!(serde_json::from_str::<SetWeights>(bad).is_err(), "{bad}");
        }
    }
}
