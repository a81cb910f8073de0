//! The game servers' route: a session's result, under that session's report token.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::header;
use matchmaking_core::store::EndOutcome;
use protocol::Audience;
use protocol::api::{ApiErrorCode, EndReason, Recorded, ReportReceipt, ResultReport};

use super::error::{ApiError, ApiResult};
use super::{ApiJson, AppState};

/// Reasons a game server may report; the others are the backend's to give.
fn reportable(reason: EndReason) -> bool {
    matches!(
        reason,
        EndReason::Completed | EndReason::Abandoned | EndReason::NoShow | EndReason::Terminated
    )
}

/// The game server's result: its session's report token is checked before the body is read.
pub(super) async fn result_report(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    request: Request,
) -> ApiResult<Json<ReportReceipt>> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| identity::bearer_token(v.as_bytes()))
        .ok_or_else(|| ApiError::Unauthorized("a report token is required".into()))?;
    let claims = state
        .settings
        .secret
        .verify(token, Audience::Report, protocol::ticket::unix_now())
        .map_err(|e| ApiError::Unauthorized(format!("report token refused: {e}")))?;
    if claims.sid != session_id {
        return Err(ApiError::Forbidden("the report token is for another session".into()));
    }
    let ApiJson(report) = ApiJson::<ResultReport>::from_request(request, &state).await?;
    if report.session_id != session_id {
        return Err(ApiError::Invalid("session_id in the body differs from the path".into()));
    }
    if !reportable(report.end_reason) {
        return Err(ApiError::Invalid(format!(
            "a game server cannot report {}",
            report.end_reason
        )));
    }
    let recorded = match state
        .sessions
        .end(&session_id, report.end_reason, Some(&report))
        .await?
    {
        EndOutcome::Unknown => {
            return Err(ApiError::NotFound(
                ApiErrorCode::UnknownSession,
                format!("no session {session_id}"),
            ));
        }
        EndOutcome::Ended { .. } => Recorded::Ended,
        EndOutcome::AlreadyEnded { .. } => Recorded::AlreadyEnded,
    };
    tracing::info!(session = %session_id, reason = %report.end_reason, ?recorded, "result report");
    Ok(Json(ReportReceipt { session_id, recorded }))
}
