//! The service routes: the queues, live sessions, and one session (live, or from history).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use matchmaking_core::store::now_ms;
use protocol::api::{ActiveSessions, ApiErrorCode, QueueInfo, QueueList, SessionView};
use protocol::sessions::SessionState;

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

pub(super) async fn active_sessions(State(state): State<Arc<AppState>>) -> ApiResult<Json<ActiveSessions>> {
    let sessions: Vec<SessionView> = state
        .sessions
        .live()
        .await?
        .into_iter()
        .map(|live| view_of_record(live.session_id, live.record))
        .collect();
    Ok(Json(ActiveSessions {
        count: sessions.len(),
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
        return Ok(Json(view_of_record(session_id, record)));
    }
    match state.history.session_row(id).await? {
        Some(row) => Ok(Json(view_of_row(row))),
        None => Err(ApiError::NotFound(
            ApiErrorCode::UnknownSession,
            format!("no session {session_id}"),
        )),
    }
}
