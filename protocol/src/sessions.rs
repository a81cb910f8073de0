//! The session record: the contract between the backend, which writes it, and the proxy, which
//! routes game connections by it.
//!
//! Every record of a deployment lives in one Redis hash, [`sessions_key`], as a JSON
//! [`SessionRecord`] under the session id. The key carries the deployment's hash tag
//! (`{<REDIS_KEY_PREFIX>}`), like every other matchplane key, so the backend's scripts may touch
//! it together with the queue on a Redis Cluster.

use serde::{Deserialize, Serialize};

use crate::api::EndReason;

/// The Redis hash holding every session record of the deployment under `prefix`.
pub fn sessions_key(prefix: &str) -> String {
    format!("{{{prefix}}}:sessions")
}

/// Where a session is in its life: `allocating` → `matched` → `ended`, never backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Formed; its server is starting.
    Allocating,
    /// Its server is ready for players; `addr` says where.
    Matched,
    /// Over; `end_reason` says why.
    Ended,
}

/// One session as Redis holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub state: SessionState,
    /// The roster, in join order.
    pub players: Vec<String>,
    /// Each player's join time (ms since the Unix epoch), aligned with `players`.
    pub joined_ms: Vec<i64>,
    pub created_ms: i64,
    /// The backend replica that formed the session and supervises it.
    pub instance: String,
    /// The game server's name (a Pod, or `local-<pid>`), once matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The game server's `ip:port`, once matched: where the proxy sends players.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<EndReason>,
    /// Whether the game server's result report arrived.
    #[serde(default)]
    pub reported: bool,
}

impl SessionRecord {
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
            state: SessionState::Matched,
            players: vec!["a".into(), "b".into()],
            joined_ms: vec![1, 2],
            created_ms: 3,
            instance: "i1".into(),
            server: Some("local-9".into()),
            addr: Some("127.0.0.1:9".into()),
            ready_ms: Some(4),
            ended_ms: None,
            end_reason: None,
            reported: false,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert!(json.get("ended_ms").is_none());
        assert_eq!(json["state"], "matched");
        assert_eq!(serde_json::from_value::<SessionRecord>(json).unwrap(), record);
        assert_eq!(record.route(), Some("127.0.0.1:9"));
        assert_eq!(sessions_key("mp"), "{mp}:sessions");
    }
}
