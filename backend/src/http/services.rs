//! The service routes: the queues, live sessions, and one session (live, or from history).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use matchmaking_core::store::now_ms;
use protocol::api::{ActiveSessions, ApiErrorCode, MatchStatus, QueueInfo, QueueList, SessionView};
use protocol::sessions::SessionState;
use serde::Deserialize;

use super::error::{ApiError, ApiResult};
use super::{AppState, check_session_id, view_of_record, view_of_row};

/// `GET /queues`: each queue's depth and how long its head has waited.
pub(super) async fn queues(State(state): State<Arc<AppState>>) -> ApiResult<Json<QueueList>> {
    let depths = state.matchmaking.depths().await?;
    let now = now_ms();
    Ok(Json(QueueList {
        queues: depths
            .into_iter()
            .map(|(name, depth)| QueueInfo {
                name: name.to_owned(),
                depth: depth.tickets,
                oldest_wait_ms: depth.oldest_joined_ms.map(|j| (now - j).max(0)),
            })
            .collect(),
    }))
}

/// `GET /sessions/active`'s filters: each optional, each matched exactly (`player`: one of
/// the session's players).
#[derive(Debug, Deserialize)]
pub(super) struct SessionFilter {
    state: Option<String>,
    queue: Option<String>,
    region: Option<String>,
    profile: Option<String>,
    version: Option<String>,
    player: Option<String>,
    limit: Option<String>,
}

/// The longest filter value taken.
const MAX_FILTER: usize = 128;
/// Most sessions one answer lists.
const MAX_SESSIONS: i64 = 2000;

impl SessionFilter {
    fn check(&self) -> ApiResult<usize> {
        for (name, value) in [
            ("state", &self.state),
            ("queue", &self.queue),
            ("region", &self.region),
            ("profile", &self.profile),
            ("version", &self.version),
            ("player", &self.player),
        ] {
            if value.as_ref().is_some_and(|v| v.chars().count() > MAX_FILTER) {
                return Err(ApiError::Invalid(format!(
                    "{name} is longer than {MAX_FILTER} characters"
                )));
            }
        }
        if let Some(player) = self.player.as_deref()
            && !protocol::player::is_valid_player_id(player)
        {
            return Err(ApiError::Invalid(
                "player must be 1-128 characters of A-Z a-z 0-9 _ . : -".into(),
            ));
        }
        if let Some(state) = self.state.as_deref()
            && !matches!(state, "allocating" | "matched")
        {
            return Err(ApiError::Invalid("state must be allocating or matched".into()));
        }
        let limit = super::whole_number("limit", self.limit.as_deref(), 500, 1, MAX_SESSIONS)?;
        Ok(usize::try_from(limit).unwrap_or(500))
    }

    fn keeps(&self, view: &SessionView, profile: Option<&str>) -> bool {
        let is = |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == have);
        let state = match view.status {
            MatchStatus::Allocating => "allocating",
            MatchStatus::Matched => "matched",
            _ => "",
        };
        is(&self.state, Some(state))
            && is(&self.queue, view.placement.queue.as_deref())
            && is(&self.region, view.placement.region.as_deref())
            && is(&self.profile, profile)
            && is(&self.version, view.placement.version.as_deref())
            && self.player.as_ref().is_none_or(|p| view.players.contains(p))
    }
}

/// `GET /sessions/active?state=&queue=&region=&profile=&version=&player=&limit=`: live sessions,
/// oldest first; `matching` counts them all, `count` those listed.
pub(super) async fn active_sessions(
    State(state): State<Arc<AppState>>,
    query: Result<Query<SessionFilter>, QueryRejection>,
) -> ApiResult<Json<ActiveSessions>> {
    let Query(filter) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let limit = filter.check()?;
    let queues = &state.settings.queues;
    let mut matching = 0;
    let sessions: Vec<SessionView> = state
        .sessions
        .live()
        .await?
        .into_iter()
        .map(|live| view_of_record(live.session_id, live.record))
        .filter(|view| {
            let profile = view
                .placement
                .queue
                .as_deref()
                .and_then(|q| queues.get(q))
                .and_then(|q| q.server.as_deref());
            filter.keeps(view, profile)
        })
        .inspect(|_| matching += 1)
        .collect::<Vec<_>>()
        .into_iter()
        .take(limit)
        .collect();
    Ok(Json(ActiveSessions {
        count: sessions.len(),
        matching,
        sessions,
    }))
}

pub(super) async fn session(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
) -> ApiResult<Json<SessionView>> {
    let id = check_session_id(&session_id)?;
    if let Some(record) = state.sessions.record(&session_id).await? {
        // An ended session's truth is its history row, which holds what its server reported
        // (start, requested length); the record stands in until the row is written, or while
        // PostgreSQL does not answer.
        if record.state == SessionState::Ended
            && let Ok(Some(row)) = state.history.session_row(id).await
        {
            return Ok(Json(view_of_row(row)));
        }
        let live = record.state == SessionState::Matched;
        let mut view = view_of_record(session_id, record);
        if live {
            view.backfill = state.matchmaking.backfill_status(&view.session_id).await?;
        }
        return Ok(Json(view));
    }
    match state.history.session_row(id).await? {
        Some(row) => Ok(Json(view_of_row(row))),
        None => Err(ApiError::NotFound(
            ApiErrorCode::UnknownSession,
            format!("no session {session_id}"),
        )),
    }
}
