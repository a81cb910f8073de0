//! The operator routes: ending a session, the overview, failures and the audit log. Every
//! action is written to the audit log: who (the console's signed-in name, or `api` for the
//! operator token), from where, what, on what, and what came of it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::{Extension, Json};
use identity::Caller;
use matchmaking_core::store::EndOutcome;
use protocol::api::{ApiErrorCode, EndReason, MatchStatus, SessionEnded};
use protocol::operators::{AuditLog, FailureList, Overview, ProfileVersions, SetWeights, VersionsList};
use serde::Deserialize;

use super::auth::Access;
use super::error::{ApiError, ApiResult};
use super::{AppState, check_session_id};
use crate::history::NewAction;
use crate::runtime::versions::Refused;

/// The TCP peer of a request's connection, as the server saw it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer(pub(crate) SocketAddr);

/// Most entries or failures one read returns.
const MAX_LIST: i64 = 200;

/// `?limit=` of the list endpoints: 1-200, 50 by default.
#[derive(Debug, Deserialize)]
pub(super) struct Limit {
    limit: Option<String>,
}

impl Limit {
    fn get(&self) -> ApiResult<i64> {
        super::whole_number("limit", self.limit.as_deref(), 50, 1, MAX_LIST)
    }
}

/// Who acts, from where: the audit log's `actor`, `via` and `remote`.
pub(crate) fn actor(
    access: Option<&Access>,
    headers: &HeaderMap,
    peer: Option<Peer>,
) -> (String, &'static str, Option<String>) {
    let (actor, via) = match access {
        Some(Access::Console { name }) => (name.clone(), "console"),
        Some(Access::Caller(Caller::Operator)) | Some(_) | None => ("api".to_owned(), "api"),
    };
    // Through the proxy, the last X-Forwarded-For hop is the client the proxy saw.
    let forwarded = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(|v| v.trim().chars().take(64).collect::<String>())
        .filter(|v| !v.is_empty());
    let remote = match (forwarded, peer) {
        (Some(client), Some(Peer(peer))) => Some(format!("{client} via {}", peer.ip())),
        (Some(client), None) => Some(client),
        (None, Some(Peer(peer))) => Some(peer.ip().to_string()),
        (None, None) => None,
    };
    (actor, via, remote)
}

/// Refuses an action while the audit log cannot be written: nothing is done unrecorded.
pub(crate) fn audit_writable(state: &AppState) -> ApiResult<()> {
    if state.health.postgres_ok() {
        Ok(())
    } else {
        Err(ApiError::Unavailable(
            "the audit log (PostgreSQL) cannot be written now, so nothing was done; try again when it is back".into(),
        ))
    }
}

/// Writes `action` to the audit log; a write that fails now is logged in full instead.
pub(crate) async fn audit(state: &AppState, action: NewAction) {
    if let Err(e) = state.operators.record(&action).await {
        tracing::error!(
            actor = %action.actor, via = action.via, remote = ?action.remote, action = action.action,
            target = %action.target, outcome = %action.outcome, error = %e,
            "operator action done but not written to the audit log"
        );
    } else {
        tracing::info!(
            actor = %action.actor, via = action.via, action = action.action, target = %action.target,
            outcome = %action.outcome, "operator action"
        );
    }
}

pub(super) async fn operator_end(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
    access: Option<Extension<Access>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> ApiResult<Json<SessionEnded>> {
    check_session_id(&session_id)?;
    audit_writable(&state)?;
    let (actor, via, remote) = actor(access.as_deref(), &headers, peer.map(|Extension(p)| p));
    let mut action = NewAction {
        actor,
        via,
        remote,
        action: "end_session",
        target: session_id.clone(),
        outcome: String::new(),
    };
    let ended = state.sessions.end(&session_id, EndReason::Stopped, None).await;
    let answer = match ended {
        Err(e) => {
            action.outcome = "failed: the matchmaking store is unavailable".into();
            Err(ApiError::Redis(e))
        }
        Ok(EndOutcome::Unknown) => {
            action.outcome = "unknown_session".into();
            Err(ApiError::NotFound(
                ApiErrorCode::UnknownSession,
                format!("no session {session_id}"),
            ))
        }
        Ok(EndOutcome::Ended { .. }) => {
            action.outcome = "ended".into();
            Ok(Some(EndReason::Stopped))
        }
        Ok(EndOutcome::AlreadyEnded { reason }) => {
            action.outcome = match reason {
                Some(reason) => format!("already_ended ({reason})"),
                None => "already_ended".into(),
            };
            Ok(reason)
        }
    };
    audit(&state, action).await;
    let end_reason = answer?;
    Ok(Json(SessionEnded {
        session_id,
        status: MatchStatus::Ended,
        end_reason,
    }))
}

/// `GET /operator/overview`.
pub(super) async fn overview(State(state): State<Arc<AppState>>) -> ApiResult<Json<Overview>> {
    Ok(Json(Overview::clone(&*state.operators.overview().await?)))
}

/// `GET /operator/failures?limit=`.
pub(super) async fn failures(
    State(state): State<Arc<AppState>>,
    query: Result<Query<Limit>, QueryRejection>,
) -> ApiResult<Json<FailureList>> {
    let Query(limit) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let limit = usize::try_from(limit.get()?).unwrap_or(50);
    Ok(Json(FailureList {
        failures: state.operators.failures(limit).await?,
    }))
}

/// `GET /operator/audit?limit=`.
pub(super) async fn audit_log(
    State(state): State<Arc<AppState>>,
    query: Result<Query<Limit>, QueryRejection>,
) -> ApiResult<Json<AuditLog>> {
    let Query(limit) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let limit = limit.get()?;
    Ok(Json(AuditLog {
        entries: state.operators.audit(limit).await?,
    }))
}

/// `GET /operator/versions`.
pub(super) async fn versions(State(state): State<Arc<AppState>>) -> ApiResult<Json<VersionsList>> {
    Ok(Json(VersionsList {
        profiles: state.operators.versions().await?,
    }))
}

/// `PUT /operator/versions/{profile}` `{"weights": {...}}`.
pub(super) async fn set_weights(
    State(state): State<Arc<AppState>>,
    Path(profile): Path<String>,
    access: Option<Extension<Access>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    super::ApiJson(body): super::ApiJson<SetWeights>,
) -> ApiResult<Json<ProfileVersions>> {
    audit_writable(&state)?;
    let outcome = state.operators.set_weights(&profile, &body.weights).await;
    let action = ("set_weights", profile.clone());
    version_change(&state, action, access.as_deref(), &headers, peer, outcome, &profile).await
}

/// `POST /operator/versions/{profile}/{version}/drain`.
pub(super) async fn drain(
    State(state): State<Arc<AppState>>,
    Path((profile, version)): Path<(String, String)>,
    access: Option<Extension<Access>>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> ApiResult<Json<ProfileVersions>> {
    audit_writable(&state)?;
    let outcome = state.operators.drain(&profile, &version).await;
    let action = ("drain_version", format!("{profile}/{version}"));
    version_change(&state, action, access.as_deref(), &headers, peer, outcome, &profile).await
}

/// Audits a change of a profile's versions and answers it: the profile's versions now.
async fn version_change(
    state: &AppState,
    (what, target): (&'static str, String),
    access: Option<&Access>,
    headers: &HeaderMap,
    peer: Option<Extension<Peer>>,
    outcome: matchmaking_core::store::Result<Result<String, Refused>>,
    profile: &str,
) -> ApiResult<Json<ProfileVersions>> {
    let (actor, via, remote) = actor(access, headers, peer.map(|Extension(p)| p));
    let (text, answer) = match outcome {
        Ok(Ok(in_force)) => (in_force, Ok(())),
        Ok(Err(refused)) => (format!("refused: {refused}"), Err(refusal(refused))),
        Err(e) => (
            "failed: the matchmaking store is unavailable".to_owned(),
            Err(ApiError::Redis(e)),
        ),
    };
    audit(
        state,
        NewAction {
            actor,
            via,
            remote,
            action: what,
            target,
            outcome: text,
        },
    )
    .await;
    answer?;
    let views = state.operators.versions().await?;
    views
        .into_iter()
        .find(|p| p.profile == profile)
        .map(Json)
        .ok_or_else(|| refusal(Refused::UnknownProfile(profile.to_owned())))
}

fn refusal(refused: Refused) -> ApiError {
    match refused {
        Refused::UnknownProfile(_) | Refused::UnknownVersion { .. } => {
            ApiError::NotFound(ApiErrorCode::NotFound, refused.to_string())
        }
        Refused::Weight(_) | Refused::NoneLeft(_) => ApiError::Invalid(refused.to_string()),
    }
}
