//! The one vocabulary of a session's life. The Redis scripts write each change as a
//! [`SessionEvent`] (JSON) to the outbox stream and the events channel in the same atomic step
//! that makes it; the history writer, the long polls and the supervisors all read this type.

use protocol::api::{EndReason, ResultReport};
use protocol::sessions::Placement;
use serde::{Deserialize, Serialize};

/// One change in a session's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEvent {
    pub session_id: String,
    /// The roster (every player whose standing this event changes). A session whose players
    /// were all released has none (Lua writes that empty list as `{}`).
    #[serde(deserialize_with = "protocol::sessions::list_or_empty_object")]
    pub players: Vec<String>,
    /// When the change happened, in ms since the Unix epoch.
    pub at_ms: i64,
    #[serde(flatten)]
    pub change: Change,
}

/// What changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// Formed by `instance`; its server is starting (`allocating`). `placement`: its queue,
    /// teams, region and quality.
    Formed {
        instance: String,
        #[serde(flatten)]
        placement: Placement,
    },
    /// Its server is ready (`matched`), running `version` of its profile when the profile
    /// lists versions.
    Ready {
        server: String,
        addr: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        version: Option<String>,
    },
    /// Over. `requeued`: it failed before its server was ready, and its players went back to
    /// the head of the queue.
    Ended {
        reason: EndReason,
        requeued: bool,
        #[serde(default)]
        report: Option<ResultReport>,
    },
    /// The game server's result report, arriving after the session had already ended.
    Reported { report: ResultReport },
    /// `players` (a ticket: one player, or a party) were placed into the running session's
    /// open slots on team `team` (counted from 0; 0 without teams), by a backfill request open
    /// since `since_ms`.
    Backfilled { team: usize, since_ms: i64 },
    /// `players` were released from the running session's roster (gone too long, or released
    /// by its server): their places are open to backfill.
    Released,
    /// `players` (one) opened a first connection to the session's server, as the proxy saw it.
    Connected,
    /// `players` (one) closed its last connection to the session's server.
    Left,
    /// Not a session's change: these players' ticket in `queue` waited too long (published
    /// for long polls only; `session_id` is `timed_out`).
    TimedOut { queue: String },
}

impl Change {
    /// The game server's result report it carries (an end's, or one arriving after the end).
    pub fn report(&self) -> Option<&ResultReport> {
        match self {
            Change::Ended { report, .. } => report.as_ref(),
            Change::Reported { report } => Some(report),
            _ => None,
        }
    }

    /// The event's `kind`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Formed { .. } => "formed",
            Change::Ready { .. } => "ready",
            Change::Ended { .. } => "ended",
            Change::Reported { .. } => "reported",
            Change::Backfilled { .. } => "backfilled",
            Change::Released => "released",
            Change::Connected => "connected",
            Change::Left => "left",
            Change::TimedOut { .. } => "timed_out",
        }
    }
}

impl SessionEvent {
    /// Decodes an event as the scripts write it.
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<SessionEvent> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_read_as_the_scripts_write_them() {
        let formed = br#"{"kind":"formed","session_id":"s","players":["a","b"],"at_ms":5,"instance":"i"}"#;
        assert_eq!(
            SessionEvent::from_json(formed).unwrap(),
            SessionEvent {
                session_id: "s".into(),
                players: vec!["a".into(), "b".into()],
                at_ms: 5,
                change: Change::Formed {
                    instance: "i".into(),
                    placement: Placement::default()
                },
            }
        );
        let ranked = br#"{"kind":"formed","session_id":"s","players":["a","b"],"at_ms":5,"instance":"i",
            "queue":"r","teams":[["a"],["b"]],"region":"eu","skill_spread":3.5,"max_wait_ms":10}"#;
        match SessionEvent::from_json(ranked).unwrap().change {
            Change::Formed { placement, .. } => {
                assert_eq!(placement.teams, vec![vec!["a".to_owned()], vec!["b".to_owned()]]);
                assert_eq!(placement.region.as_deref(), Some("eu"));
                assert_eq!(placement.skill_spread, Some(3.5));
            }
            other => panic!("{other:?}"),
        }
        // Every player released before the end: Lua writes the empty roster as an object.
        let empty =
            br#"{"at_ms":9,"kind":"ended","players":{},"reason":"abandoned","requeued":false,"session_id":"s"}"#;
        assert!(SessionEvent::from_json(empty).unwrap().players.is_empty());
        let connected = br#"{"at_ms":8,"kind":"connected","players":["a"],"session_id":"s"}"#;
        assert_eq!(SessionEvent::from_json(connected).unwrap().change, Change::Connected);
        let ended = br#"{"at_ms":7,"kind":"ended","players":["a"],"reason":"failed","requeued":true,"session_id":"s"}"#;
        assert!(matches!(
            SessionEvent::from_json(ended).unwrap().change,
            Change::Ended {
                reason: EndReason::Failed,
                requeued: true,
                report: None
            }
        ));
    }
}
