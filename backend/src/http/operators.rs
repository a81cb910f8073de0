//! The operator routes: ending a session.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use matchmaking_core::store::EndOutcome;
use protocol::api::{ApiErrorCode, EndReason, MatchStatus, SessionEnded};

use super::error::{ApiError, ApiResult};
use super::{AppState, check_session_id};

pub(super) async fn operator_end(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
) -> ApiResult<Json<SessionEnded>> {
    check_session_id(&session_id)?;
    let end_reason = match state.sessions.end(&session_id, EndReason::Stopped, None).await? {
        EndOutcome::Unknown => {
            return Err(ApiError::NotFound(
                ApiErrorCode::UnknownSession,
                format!("no session {session_id}"),
            ));
        }
        EndOutcome::Ended { .. } => {
            tracing::info!(session = %session_id, "session stopped by an operator");
            Some(EndReason::Stopped)
        }
        EndOutcome::AlreadyEnded { reason } => reason,
    };
    Ok(Json(SessionEnded {
        session_id,
        status: MatchStatus::Ended,
        end_reason,
    }))
}
