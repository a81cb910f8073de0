//! The HTTP API, compatible with the original system's clients. Every body is a typed value
//! of `protocol::api`; every write goes through the sessions service or the store's scripts.

pub(crate) mod auth;
mod console;
pub(crate) mod error;
pub(crate) mod metrics;
pub(crate) mod operators;
mod players;
pub(crate) mod probes;
pub(crate) mod seams;
mod servers;
pub(crate) use servers::roster_key;
mod services;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use identity::Authenticator;
use matchmaking_core::queues::DEFAULT_QUEUE;
use matchmaking_core::store::PlayerView;
use protocol::Claims;
use protocol::api::{ApiErrorCode, MatchResponse, MatchStatus, SessionView};
use protocol::player::is_valid_player_id;
use protocol::sessions::{Placement, SessionRecord, SessionState};
use serde::de::DeserializeOwned;
use tokio::time::{Instant, timeout};

use self::auth::Class;
use self::error::{ApiError, ApiResult, Internal};
use self::metrics::HttpMetrics;
use self::seams::{MatchHistory, Matchmaker, OperatorDesk, SessionDesk};
use crate::config::Settings;
use crate::health::Health;
use crate::history::{MatchRow, from_ms};
use crate::metrics::Metrics;
use crate::sessions::events::Waiters;

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Every request is cut off after this (a long poll included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// What handlers share.
pub(crate) struct AppState {
    /// Joins, cancels, where a player stands.
    pub matchmaking: Arc<dyn Matchmaker>,
    /// Ending sessions, live sessions' records.
    pub sessions: Arc<dyn SessionDesk>,
    /// The dependencies as last checked.
    pub health: Arc<Health>,
    pub history: Arc<dyn MatchHistory>,
    pub settings: Settings,
    /// The registry, for `/metrics`.
    pub metrics: Arc<Metrics>,
    pub http_metrics: HttpMetrics,
    pub waiters: Arc<Waiters>,
    /// Resolves callers from their bearer tokens.
    pub auth: Authenticator,
    /// The runtime, for its warm pool's state.
    pub runtime: Option<Arc<dyn crate::runtime::SessionRuntime>>,
    /// The overview, failures, audit log and console sign-ins.
    pub operators: Arc<dyn OperatorDesk>,
    /// Cancelled when shutdown begins: `/health` says not ready from then on.
    pub unready: tokio_util::sync::CancellationToken,
}

/// The API router. Each class of routes has its caller checked by a layer before anything
/// else of the request is read (see [`crate::http::auth`]).
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let class = |class: Class| middleware::from_fn_with_state((state.clone(), class), auth::require);
    let player = Router::new()
        .route("/match/join", post(players::join))
        .route("/match/join/{player_id}", delete(players::leave))
        .route("/match/status", get(players::status))
        .route("/players/{player_id}/matches", get(players::player_matches))
        .route_layer(class(Class::Player));
    let service = Router::new()
        .route("/queues", get(services::queues))
        .route("/sessions/active", get(services::active_sessions))
        .route("/sessions/{session_id}", get(services::session))
        .route_layer(class(Class::Service));
    let operator = Router::new()
        .route("/match/{session_id}/end", post(operators::operator_end))
        .route("/operator/overview", get(operators::overview))
        .route("/operator/failures", get(operators::failures))
        .route("/operator/audit", get(operators::audit_log))
        .route("/operator/versions", get(operators::versions))
        .route(
            "/operator/versions/{profile}",
            axum::routing::put(operators::set_weights),
        )
        .route("/operator/versions/{profile}/{version}/drain", post(operators::drain))
        .route_layer(class(Class::Operator));
    Router::new()
        .merge(player)
        .merge(service)
        .merge(operator)
        .merge(console::routes())
        .route("/health", get(probes::health))
        .route("/livez", get(probes::live))
        .route("/metrics", get(probes::metrics))
        .route("/internal/sessions/{session_id}/result", post(servers::result_report))
        .route("/internal/sessions/{session_id}/ready", post(servers::ready))
        .route("/internal/sessions/{session_id}/health", post(servers::health))
        .route("/internal/sessions/{session_id}/backfill", post(servers::backfill))
        .route("/internal/sessions/{session_id}/roster", post(servers::roster))
        .route("/internal/warm/{server_id}/session", post(servers::warm_session))
        .fallback(|| async { ApiError::NotFound(ApiErrorCode::NotFound, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(protocol::api::ErrorBody::new(
                    ApiErrorCode::MethodNotAllowed,
                    "method not allowed",
                )),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Times out, measures and logs every request: a failed one once, here (with what a failed
/// dependency said, which the client never sees).
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let mut response = match timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable("request timed out".into()).into_response(),
    };
    if state.unready.is_cancelled() {
        // Stopping: each kept-alive caller (a proxy) is moved off this replica by its next
        // answer, so none is cut while sending when the HTTP server closes idle connections.
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    let status = response.status().as_u16();
    let took = started.elapsed();
    state.http_metrics.http(method.as_str(), &route, status, took);
    if let Some(Internal(cause)) = response.extensions().get::<Internal>() {
        tracing::error!(%method, %route, status, ?took, error = %cause, "request failed: a dependency failed");
    } else if status >= 500 {
        tracing::warn!(%method, %route, status, ?took, "request failed");
    } else {
        tracing::debug!(%method, %route, status, ?took, "request");
    }
    response
}

/// A JSON body with this API's errors: 413 over the limit, 400 not JSON, 422 wrong shape.
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state).await.map_err(unread_body)?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Malformed(format!("request body is not JSON: {e}")))?;
        // serde would take `["a"]` for a struct; every body of this API is an object.
        if !value.is_object() {
            return Err(ApiError::Invalid("request body must be a JSON object".into()));
        }
        serde_json::from_value(value)
            .map(ApiJson)
            .map_err(|e| ApiError::Invalid(format!("request body: {e}")))
    }
}

/// A body that could not be read: over the limit, or cut off.
pub(crate) fn unread_body(e: axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(BODY_LIMIT)
    } else {
        ApiError::Malformed(e.body_text())
    }
}

/// A query parameter that is a whole number from `min` to `max`, `default` when absent: 422
/// otherwise.
pub(crate) fn whole_number(name: &str, raw: Option<&str>, default: i64, min: i64, max: i64) -> ApiResult<i64> {
    match raw {
        None => Ok(default),
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::Invalid(format!(
                "{name} must be a whole number from {min} to {max}"
            ))),
        },
    }
}

fn check_player(id: &str) -> ApiResult<()> {
    if is_valid_player_id(id) {
        Ok(())
    } else {
        Err(ApiError::Invalid(
            "player_id must be 1-128 characters of A-Z a-z 0-9 _ . : -".into(),
        ))
    }
}

impl AppState {
    /// The status answer for `player` as it stands in `view`, as of `now_ms`.
    fn response(&self, player: &str, view: PlayerView, now_ms: i64) -> MatchResponse {
        let mut response = MatchResponse {
            status: MatchStatus::Unknown,
            session_id: String::new(),
            players: Vec::new(),
            connect_host: String::new(),
            connect_port: 0,
            ticket: None,
            connect_tls: None,
            connect_ws: None,
            end_reason: None,
            wait_ms: None,
            connected: Vec::new(),
            backfill_since_ms: None,
            placement: Placement::default(),
        };
        match view {
            PlayerView::Unknown => {}
            PlayerView::Queued { queue, joined_ms, .. } => {
                response.status = MatchStatus::Queued;
                response.session_id = format!("pending:{player}");
                response.players = vec![player.to_owned()];
                let wait = joined_ms.map_or(0, |j| (now_ms - j).max(0));
                response.wait_ms = Some(wait);
                if let Some(q) = self.settings.queues.get(&queue) {
                    let (spread, latency) = matchmaking_core::forming::allowed(q, wait);
                    response.placement.skill_spread = spread;
                    response.placement.max_latency_ms = latency;
                }
                response.placement.queue = Some(queue);
            }
            PlayerView::TimedOut { queue, .. } => {
                response.status = MatchStatus::TimedOut;
                response.session_id = format!("pending:{player}");
                response.players = vec![player.to_owned()];
                response.placement.queue = Some(queue);
            }
            PlayerView::InSession { session_id, record } => {
                response.status = status_of(record.state);
                response.session_id = session_id;
                response.backfill_since_ms = record.backfilled.get(player).copied();
                response.players = record.players;
                response.placement = placement_of(record.placement);
                if record.state != SessionState::Ended {
                    response.connected = record.connected;
                }
                match record.state {
                    SessionState::Allocating => {}
                    SessionState::Matched => {
                        // Its region's proxy (`REGIONS`), or the one public address.
                        let (host, port, tls) = self.settings.proxy_of(response.placement.region.as_deref());
                        response.connect_host = host.to_owned();
                        response.connect_port = port;
                        response.connect_tls = Some(tls);
                        if record.addr.as_deref().is_some_and(|a| !a.is_empty()) {
                            let host = if host.contains(':') {
                                format!("[{host}]")
                            } else {
                                host.to_owned()
                            };
                            let scheme = if tls { "wss" } else { "ws" };
                            response.connect_ws = Some(format!("{scheme}://{host}:{port}/play"));
                        }
                        let ttl = i64::try_from(self.settings.ticket_ttl.as_secs()).unwrap_or(600);
                        let claims = Claims::game(player, &response.session_id, protocol::ticket::unix_now(), ttl);
                        response.ticket = Some(self.settings.secret.mint(&claims));
                    }
                    SessionState::Ended => response.end_reason = record.end_reason,
                }
            }
        }
        // The default queue answers in the original system's shape, field for field.
        if response.placement.queue.as_deref() == Some(DEFAULT_QUEUE) {
            response.wait_ms = None;
            response.connected = Vec::new();
            response.placement = Placement::default();
        }
        response
    }
}

/// A session's placement as answers show it: sessions from before queues existed are of the
/// default queue.
fn placement_of(mut placement: Placement) -> Placement {
    placement.queue.get_or_insert_with(|| DEFAULT_QUEUE.to_owned());
    placement
}

fn status_of(state: SessionState) -> MatchStatus {
    match state {
        SessionState::Allocating => MatchStatus::Allocating,
        SessionState::Matched => MatchStatus::Matched,
        SessionState::Ended => MatchStatus::Ended,
    }
}

/// A live session's view, from its Redis record.
fn view_of_record(session_id: String, record: SessionRecord) -> SessionView {
    SessionView {
        session_id,
        status: status_of(record.state),
        players: record.players,
        instance: Some(record.instance),
        server: record.server,
        addr: record.addr,
        created_at: from_ms(record.created_ms),
        ready_at: record.ready_ms.map(from_ms),
        started_at: None,
        ended_at: record.ended_ms.map(from_ms),
        end_reason: record.end_reason,
        requested_seconds: None,
        connected: if record.state == SessionState::Ended {
            Vec::new()
        } else {
            record.connected
        },
        backfill: None,
        placement: placement_of(record.placement),
    }
}

/// A past session's view, from its history row.
fn view_of_row(row: MatchRow) -> SessionView {
    SessionView {
        session_id: row.session_id.to_string(),
        status: status_of(row.status),
        players: row.players,
        instance: row.backend_instance,
        server: row.server_name,
        addr: None,
        created_at: row.created_at,
        ready_at: row.ready_at,
        started_at: row.started_at,
        ended_at: row.ended_at,
        end_reason: row.end_reason,
        requested_seconds: row.requested_seconds.and_then(|s| u64::try_from(s).ok()),
        connected: Vec::new(),
        backfill: None,
        placement: placement_of(row.placement),
    }
}

fn check_session_id(id: &str) -> ApiResult<uuid::Uuid> {
    uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError::NotFound(ApiErrorCode::UnknownSession, format!("no session {id:?}")))
}
