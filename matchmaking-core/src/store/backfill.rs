//! Running sessions' backfill requests in Redis: opened, changed or withdrawn by one script that
//! also releases players from the roster, read by the rule former of their queue, and placed by
//! the same script that forms sessions ([`crate::round`]).

use std::collections::HashMap;

use redis::AsyncCommands;
use serde::Deserialize;

use super::{BACKFILL, Json, Result, Store};
use crate::backfill::BackfillRequest;

/// How a request's slots are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotsMode {
    /// The open slots are these now (0 everywhere withdraws the request).
    Set,
    /// These slots open on top of those open.
    Add,
}

/// What opening (or changing) a request did.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BackfillOutcome {
    Unknown,
    /// The session is not running (allocating, or ended).
    NotRunning {
        state: String,
    },
    /// The request now: its open slots (capped by the room the roster leaves), since when
    /// (0: none open); the players released and the roster after.
    Open {
        #[serde(deserialize_with = "protocol::sessions::list_or_empty_object")]
        slots: Vec<u32>,
        since_ms: i64,
        #[serde(deserialize_with = "protocol::sessions::list_or_empty_object")]
        released: Vec<String>,
        #[serde(deserialize_with = "protocol::sessions::list_or_empty_object")]
        players: Vec<String>,
    },
}

/// Which players a change releases from the roster first.
#[derive(Debug, Clone, Default)]
pub struct Release<'a> {
    pub players: &'a [String],
    /// Only those whose last connection closed at or before this (ms); `None`: any.
    pub gone_since: Option<i64>,
}

impl Store {
    /// Releases `release`'s players from session `sid`'s roster, then sets or adds (`mode`) the
    /// open slots of its request as `request` says, capped at the room left in each team of
    /// `team_size` (0: no teams) or in the session of `size`.
    pub async fn open_backfill(
        &self,
        sid: &str,
        request: &BackfillRequest,
        mode: SlotsMode,
        (size, team_size): (u32, u32),
        release: Release<'_>,
        now_ms: i64,
    ) -> Result<BackfillOutcome> {
        let k = self.keys();
        let Json(outcome) = BACKFILL
            .key(k.sessions())
            .key(k.backfill())
            .key(k.player_session())
            .key(k.outbox())
            .arg(sid)
            .arg(now_ms)
            .arg(k.events())
            .arg(serde_json::to_string(request).expect("requests serialize"))
            .arg(match mode {
                SlotsMode::Set => "set",
                SlotsMode::Add => "add",
            })
            .arg(size)
            .arg(team_size)
            .arg(serde_json::to_string(release.players).expect("lists serialize"))
            .arg(release.gone_since.map(|ms| ms.to_string()).unwrap_or_default())
            .invoke_async(&mut self.conn())
            .await?;
        Ok(outcome)
    }

    /// Session `sid`'s open request, if it has one.
    pub async fn backfill_request(&self, sid: &str) -> Result<Option<BackfillRequest>> {
        let raw: Option<String> = self.conn().hget(self.keys().backfill(), sid).await?;
        Ok(raw.and_then(|raw| decode(sid, &raw)))
    }

    /// Every open request of queue `queue`, by session id.
    pub async fn backfill_requests(&self, queue: &str) -> Result<Vec<(String, BackfillRequest)>> {
        let all: HashMap<String, String> = self.conn().hgetall(self.keys().backfill()).await?;
        let mut open: Vec<(String, BackfillRequest)> = all
            .into_iter()
            .filter_map(|(sid, raw)| decode(&sid, &raw).map(|r| (sid, r)))
            .filter(|(_, r)| r.queue == queue)
            .collect();
        open.sort_by(|a, b| a.1.since_ms.cmp(&b.1.since_ms).then_with(|| a.0.cmp(&b.0)));
        Ok(open)
    }
}

fn decode(sid: &str, raw: &str) -> Option<BackfillRequest> {
    serde_json::from_str(raw)
        .inspect_err(|e| tracing::error!(session = sid, error = %e, "a backfill request does not decode"))
        .ok()
}
