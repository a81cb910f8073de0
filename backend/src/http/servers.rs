//! The game servers' routes, each under its session's report token: the result, and the
//! server SDK's ready and health calls.

use std::sync::Arc;

use axum::Json;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use matchmaking_core::queues::DEFAULT_QUEUE;
use matchmaking_core::store::{EndOutcome, ServerSignal};
use protocol::Audience;
use protocol::api::{
    ApiErrorCode, BackfillAsk, BackfillReceipt, BackfillStatus, EndReason, MatchStatus, Recorded, ReportReceipt,
    ResultReport, Roster, RosterWait, SignalReceipt,
};
use protocol::sessions::SessionState;
use tokio::time::Instant;

use super::error::{ApiError, ApiResult};
use super::{ApiJson, AppState};

/// Players a report for a session Redis no longer knows may name, at most.
const MAX_REPORTED_PLAYERS: usize = 1000;

/// Reasons a game server may report; the others are the backend's to give.
fn reportable(reason: EndReason) -> bool {
    matches!(
        reason,
        EndReason::Completed | EndReason::Abandoned | EndReason::NoShow | EndReason::Terminated
    )
}

/// Checks the request's bearer token is session `session_id`'s report token, before anything
/// of the body is read.
fn authorize(state: &AppState, request: &Request, session_id: &str) -> ApiResult<()> {
    authorize_as(state, request, Audience::Report, session_id)
}

/// Checks the request's bearer token is a token for `audience` naming `id` (a session's, or a
/// warm server's).
fn authorize_as(state: &AppState, request: &Request, audience: Audience, id: &str) -> ApiResult<()> {
    let what = if audience == Audience::Warm {
        "warm server token"
    } else {
        "report token"
    };
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| identity::bearer_token(v.as_bytes()))
        .ok_or_else(|| ApiError::Unauthorized(format!("a {what} is required")))?;
    let claims = state
        .settings
        .secret
        .verify(token, audience, protocol::ticket::unix_now())
        .map_err(|e| ApiError::Unauthorized(format!("{what} refused: {e}")))?;
    if claims.sid != id {
        return Err(ApiError::Forbidden(format!(
            "the {what} is for another {}",
            if audience == Audience::Warm {
                "server"
            } else {
                "session"
            }
        )));
    }
    Ok(())
}

/// `?wait=S` of a warm server's poll.
#[derive(Debug, serde::Deserialize)]
pub(super) struct PollQuery {
    wait: Option<f64>,
}

/// How long a warm server's poll waits when it does not say.
const DEFAULT_POLL_SECONDS: f64 = 25.0;

/// `POST /internal/warm/{server_id}/session[?wait=S]`: a warm server of a profile waits for
/// the session it is handed (200), or for `wait` seconds (204, and it polls again).
pub(super) async fn warm_session(
    State(state): State<Arc<AppState>>,
    Path(server_id): Path<String>,
    query: Result<Query<PollQuery>, QueryRejection>,
    request: Request,
) -> ApiResult<axum::response::Response> {
    authorize_as(&state, &request, Audience::Warm, &server_id)?;
    let Query(query) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let wait = super::players::checked_wait(Some(query.wait.unwrap_or(DEFAULT_POLL_SECONDS)))?;
    let found = state
        .sessions
        .warm_poll(&server_id, Duration::from_secs_f64(wait))
        .await?;
    Ok(match found {
        Some(session) => {
            tracing::info!(server = %server_id, session = %session.session_id, "a warm server took its session");
            Json(session).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// `POST /internal/sessions/{id}/ready`: the server SDK's "ready for players".
pub(super) async fn ready(
    state: State<Arc<AppState>>,
    path: Path<String>,
    request: Request,
) -> ApiResult<Json<SignalReceipt>> {
    signal(state, path, request, ServerSignal::Ready).await
}

/// `POST /internal/sessions/{id}/health`: the server SDK's "still alive".
pub(super) async fn health(
    state: State<Arc<AppState>>,
    path: Path<String>,
    request: Request,
) -> ApiResult<Json<SignalReceipt>> {
    signal(state, path, request, ServerSignal::Health).await
}

/// Keeps a server's SDK call and answers with the session's status. The body is empty or a
/// JSON object (nothing of it is read yet).
async fn signal(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    request: Request,
    signal: ServerSignal,
) -> ApiResult<Json<SignalReceipt>> {
    authorize(&state, &request, &session_id)?;
    let body = axum::body::Bytes::from_request(request, &state)
        .await
        .map_err(super::unread_body)?;
    if !body.is_empty() {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
            .map_err(|e| ApiError::Malformed(format!("the body must be empty or a JSON object: {e}")))?;
    }
    let Some(state_now) = state.sessions.server_signal(&session_id, signal).await? else {
        return Err(ApiError::NotFound(
            ApiErrorCode::UnknownSession,
            format!("no session {session_id}"),
        ));
    };
    let status = match state_now {
        SessionState::Allocating => MatchStatus::Allocating,
        SessionState::Matched => MatchStatus::Matched,
        SessionState::Ended => MatchStatus::Ended,
    };
    tracing::debug!(session = %session_id, signal = signal.as_str(), ?status, "server signal");
    Ok(Json(SignalReceipt { session_id, status }))
}

/// The game server's result: its session's report token is checked before the body is read.
pub(super) async fn result_report(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    request: Request,
) -> ApiResult<Json<ReportReceipt>> {
    authorize(&state, &request, &session_id)?;
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
        // Redis no longer knows it (restarted empty, or a failover lost its latest writes).
        // The token says this server ran this session: its result closes the history row,
        // which would otherwise end `lost`. PostgreSQL unreachable: 503, and the server retries.
        EndOutcome::Unknown => {
            let Ok(sid) = uuid::Uuid::parse_str(&session_id) else {
                return Err(ApiError::NotFound(
                    ApiErrorCode::UnknownSession,
                    format!("no session {session_id}"),
                ));
            };
            // With no roster left to hold them to, the report's players become the row's: each
            // must be a player id, and a session holds no more than the largest queue allows.
            if let Some(bad) = report
                .players
                .iter()
                .find(|p| !protocol::player::is_valid_player_id(&p.player_id))
            {
                return Err(ApiError::Invalid(format!("{:?} is no player id", bad.player_id)));
            }
            if report.players.len() > MAX_REPORTED_PLAYERS {
                return Err(ApiError::Invalid(format!(
                    "a report names at most {MAX_REPORTED_PLAYERS} players"
                )));
            }
            state.history.end_from_report(sid, &report).await?;
            tracing::warn!(session = %session_id, reason = %report.end_reason, "a result report for a session Redis no longer knows: written to the history from the report");
            Recorded::History
        }
        EndOutcome::Ended { .. } => Recorded::Ended,
        EndOutcome::AlreadyEnded { .. } => Recorded::AlreadyEnded,
    };
    tracing::info!(session = %session_id, reason = %report.end_reason, ?recorded, "result report");
    Ok(Json(ReportReceipt { session_id, recorded }))
}

/// `POST /internal/sessions/{id}/backfill`: a running session's server asks for players: its
/// open slots from now on (0 withdraws), after releasing the players it names.
pub(super) async fn backfill(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    request: Request,
) -> ApiResult<Json<BackfillReceipt>> {
    authorize(&state, &request, &session_id)?;
    let ApiJson(ask) = ApiJson::<BackfillAsk>::from_request(request, &state).await?;
    if let Some(bad) = ask.release.iter().find(|p| !protocol::player::is_valid_player_id(p)) {
        return Err(ApiError::Invalid(format!(
            "release names {bad:?}, which is no player id"
        )));
    }
    if ask.release.len() > 1000 {
        return Err(ApiError::Invalid("release names more than 1000 players".into()));
    }
    let change = state.matchmaking.backfill(&session_id, &ask).await?;
    tracing::info!(session = %session_id, slots = ?change.status.slots, released = ?change.released, "a server asked for backfill");
    Ok(Json(BackfillReceipt {
        session_id,
        backfill: change.status,
        released: change.released,
        players: change.players,
    }))
}

/// The waiters' key of session `sid`'s roster watchers (a player id never starts with `#`).
pub(crate) fn roster_key(sid: &str) -> String {
    format!("#{sid}")
}

/// How often a roster long poll reads the record again, should a notification be lost.
const ROSTER_RECHECK: Duration = Duration::from_secs(2);

/// `POST /internal/sessions/{id}/roster`: the roster, once its version is past `after` (or the
/// session is over, or `wait` seconds have passed).
pub(super) async fn roster(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    request: Request,
) -> ApiResult<Json<Roster>> {
    authorize(&state, &request, &session_id)?;
    let body = axum::body::Bytes::from_request(request, &state)
        .await
        .map_err(super::unread_body)?;
    let ask: RosterWait = if body.is_empty() {
        RosterWait::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::Invalid(format!("the body must be {{\"after\", \"wait\"}}: {e}")))?
    };
    let wait = super::players::checked_wait(ask.wait)?;
    let deadline = Instant::now() + Duration::from_secs_f64(wait);
    let key = roster_key(&session_id);
    loop {
        let watch = state.waiters.watch(&key);
        let mut notified = std::pin::pin!(watch.notify.notified());
        notified.as_mut().enable();
        let Some(record) = state.sessions.record(&session_id).await? else {
            return Err(ApiError::NotFound(
                ApiErrorCode::UnknownSession,
                format!("no session {session_id}"),
            ));
        };
        let over = record.state == SessionState::Ended;
        let backfills = state
            .matchmaking
            .backfills(record.placement.queue.as_deref().unwrap_or(DEFAULT_QUEUE));
        if record.roster_version > ask.after || over || !backfills || Instant::now() >= deadline {
            let backfill: Option<BackfillStatus> = if over {
                None
            } else {
                state.matchmaking.backfill_status(&session_id).await?
            };
            return Ok(Json(Roster {
                session_id,
                status: match record.state {
                    SessionState::Allocating => MatchStatus::Allocating,
                    SessionState::Matched => MatchStatus::Matched,
                    SessionState::Ended => MatchStatus::Ended,
                },
                backfills,
                version: record.roster_version,
                players: record.players,
                teams: record.placement.teams,
                backfill,
            }));
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = tokio::time::sleep(ROSTER_RECHECK) => {}
        }
    }
}
