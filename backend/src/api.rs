//! The HTTP API, compatible with the original system's clients. Every body is a typed value
//! of `protocol::api`; every write goes through the sessions service or the store's scripts.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use identity::{Authenticator, Caller};
use protocol::api::{
    ActiveSessions, BackendHealth, DependencyState, EndReason, HealthStatus, JoinRequest, Live, MatchResponse,
    MatchStatus, PlayerMatch, PlayerMatches, QueueInfo, QueueList, Recorded, ReportReceipt, ResultReport, SessionEnded,
    SessionView,
};
use protocol::player::is_valid_player_id;
use protocol::sessions::Placement;
use protocol::sessions::{SessionRecord, SessionState};
use protocol::{Audience, Claims};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Access, Class};
use crate::config::Settings;
use crate::error::{ApiError, ApiResult};
use crate::events::{Waiters, Watch};
use crate::health::Health;
use crate::history::{History, MatchRow, from_ms};
use crate::metrics::{JoinResult, Metrics};
use crate::queues::DEFAULT_QUEUE;
use crate::sessions::Sessions;
use crate::store::{CancelOutcome, EndOutcome, JoinOutcome, PlayerView, now_ms};
use crate::tickets::{self, Joiner, TicketError};

/// Largest accepted request body.
const BODY_LIMIT: usize = 64 * 1024;
/// Longest long poll.
const MAX_WAIT_SECONDS: f64 = 30.0;
/// Every request is cut off after this (a long poll included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(40);

/// What handlers share.
pub(crate) struct AppState {
    pub sessions: Sessions,
    /// The dependencies as last checked.
    pub health: Arc<Health>,
    pub history: History,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub waiters: Arc<Waiters>,
    /// Woken when a join may have filled a session.
    pub matcher_wake: Arc<Notify>,
    /// Cancelled on SIGTERM: no more joins, not ready.
    pub draining: CancellationToken,
    /// Resolves callers from their bearer tokens.
    pub auth: Authenticator,
    /// The runtime, for its warm pool's state.
    pub runtime: Option<Arc<dyn crate::runtime::SessionRuntime>>,
}

/// The API router. Each class of routes has its caller checked by a layer before anything
/// else of the request is read (see [`crate::auth`]).
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let class = |class: Class| middleware::from_fn_with_state((state.clone(), class), auth::require);
    let player = Router::new()
        .route("/match/join", post(join))
        .route("/match/join/{player_id}", delete(leave))
        .route("/match/status", get(status))
        .route("/players/{player_id}/matches", get(player_matches))
        .route_layer(class(Class::Player));
    let service = Router::new()
        .route("/queues", get(queues))
        .route("/sessions/active", get(active_sessions))
        .route("/sessions/{session_id}", get(session))
        .route_layer(class(Class::Service));
    let operator = Router::new()
        .route("/match/{session_id}/end", post(operator_end))
        .route_layer(class(Class::Operator));
    Router::new()
        .merge(player)
        .merge(service)
        .merge(operator)
        .route("/health", get(health))
        .route("/livez", get(live))
        .route("/metrics", get(metrics))
        .route("/internal/sessions/{session_id}/result", post(result_report))
        .fallback(|| async { ApiError::NotFound("not_found", "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                Json(protocol::api::ErrorBody::new(
                    "method_not_allowed",
                    "method not allowed",
                )),
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Times out, measures and logs every request.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = match timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable("request timed out".into()).into_response(),
    };
    let status = response.status().as_u16();
    let took = started.elapsed();
    state.metrics.http(method.as_str(), &route, status, took);
    if status >= 500 {
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
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge(BODY_LIMIT)
            } else {
                ApiError::Malformed(e.body_text())
            }
        })?;
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
            end_reason: None,
            wait_ms: None,
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
                    let (spread, latency) = crate::forming::allowed(q, wait);
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
                response.players = record.players;
                response.placement = placement_of(record.placement);
                match record.state {
                    SessionState::Allocating => {}
                    SessionState::Matched => {
                        response.connect_host = self.settings.public_host.clone();
                        response.connect_port = self.settings.public_port;
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
        placement: placement_of(record.placement),
    }
}

/// A past session's view, from its history row.
fn view_of_row(row: MatchRow) -> SessionView {
    SessionView {
        session_id: row.session_id.to_string(),
        status: serde_json::from_value(serde_json::Value::String(row.status)).unwrap_or(MatchStatus::Unknown),
        players: row.players,
        instance: row.backend_instance,
        server: row.server_name,
        addr: None,
        created_at: row.created_at,
        ready_at: row.ready_at,
        started_at: row.started_at,
        ended_at: row.ended_at,
        end_reason: row.end_reason.and_then(|r| r.parse().ok()),
        requested_seconds: row.requested_seconds.and_then(|s| u64::try_from(s).ok()),
        placement: placement_of(row.placement),
    }
}

#[derive(serde::Deserialize)]
struct JoinQuery {
    /// Once queued, long poll for up to this many seconds (as `GET /match/status` with
    /// `wait`), so a client learns its match without a second request.
    wait: Option<f64>,
}

async fn join(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
    query: Result<Query<JoinQuery>, QueryRejection>,
    ApiJson(body): ApiJson<JoinRequest>,
) -> ApiResult<Json<MatchResponse>> {
    let Query(query) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    let wait = checked_wait(query.wait)?;
    check_player(&body.player_id)?;
    access.may_act_as(&body.player_id)?;
    let player = body.player_id.as_str();
    if wait == 0.0 {
        let (view, now) = enqueue(&state, &access, &body).await?;
        return Ok(Json(state.response(player, view, now)));
    }
    // Watch before joining, so the session forming right after the join is not missed.
    let watch = state.waiters.watch(player);
    let mut notified = std::pin::pin!(watch.notify.notified());
    notified.as_mut().enable();
    let (first, now) = enqueue(&state, &access, &body).await?;
    if !waits(&first) {
        return Ok(Json(state.response(player, first, now)));
    }
    let current = wait_until(&state, player, (&watch, notified), wait, |v| !waits(v)).await?;
    Ok(Json(state.response(player, current, now_ms())))
}

/// The join itself, for a caller that may act as its player: checks the ticket, queues it,
/// and says where the player stands (with the time it was read).
async fn enqueue(state: &AppState, access: &Access, body: &JoinRequest) -> ApiResult<(PlayerView, i64)> {
    let queue_name = body.queue.as_deref().unwrap_or(DEFAULT_QUEUE);
    let queue = state.settings.queues.get(queue_name).ok_or_else(|| {
        ApiError::Unprocessable(
            "unknown_queue",
            format!(
                "no queue {queue_name:?}; queues: {}",
                state
                    .settings
                    .queues
                    .iter()
                    .map(|q| q.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let joiner = match access {
        Access::Open => Joiner::Player(None),
        Access::Caller(Caller::Player(claims)) => Joiner::Player(Some(&claims.claims)),
        Access::Caller(_) => Joiner::Service,
    };
    let ticket = tickets::check(queue, body, joiner).map_err(|e| match e {
        TicketError::Forbidden(m) => ApiError::Forbidden(m),
        TicketError::Invalid(m) => ApiError::Invalid(m),
    })?;
    if state.draining.is_cancelled() {
        return Err(ApiError::Unavailable("this backend is shutting down; retry".into()));
    }
    let player = &body.player_id;
    let now = now_ms();
    let view = match state
        .sessions
        .store()
        .join_ticket(&queue.name, &ticket.players, ticket.doc.as_deref(), now)
        .await?
    {
        JoinOutcome::Queued { new, depth } => {
            state.metrics.join(if new {
                JoinResult::Queued
            } else {
                JoinResult::AlreadyQueued
            });
            if depth >= u64::from(queue.shape.full()) {
                state.matcher_wake.notify_one();
            }
            if new {
                PlayerView::Queued {
                    queue: queue.name.clone(),
                    ticket: player.clone(),
                    joined_ms: Some(now),
                }
            } else {
                state.sessions.store().player(player).await?
            }
        }
        JoinOutcome::InSession { session_id, record } => {
            state.metrics.join(JoinResult::InSession);
            PlayerView::InSession { session_id, record }
        }
        JoinOutcome::Busy {
            player: busy,
            queue: Some(elsewhere),
        } => {
            return Err(ApiError::Conflict(
                "already_queued",
                format!("{busy} is already queued in {elsewhere}; leave it first"),
            ));
        }
        JoinOutcome::Busy {
            player: busy,
            queue: None,
        } => {
            return Err(ApiError::Conflict(
                "in_session",
                format!("{busy} is already in a session"),
            ));
        }
    };
    Ok((view, now))
}

/// `GET /queues`: each queue's depth and how long its head has waited.
async fn queues(State(state): State<Arc<AppState>>) -> ApiResult<Json<QueueList>> {
    let names: Vec<&str> = state.settings.queues.iter().map(|q| q.name.as_str()).collect();
    let depths = state.sessions.store().queue_depths(&names).await?;
    let now = now_ms();
    Ok(Json(QueueList {
        queues: names
            .into_iter()
            .zip(depths)
            .map(|(name, depth)| QueueInfo {
                name: name.to_owned(),
                depth: depth.tickets,
                oldest_wait_ms: depth.oldest_joined_ms.map(|j| (now - j).max(0)),
            })
            .collect(),
    }))
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    player_id: String,
    /// Long poll for up to this many seconds.
    wait: Option<f64>,
    /// The status the client last saw: answer as soon as the status differs from it. Without
    /// it, a long poll waits only while the player is queued or allocating.
    status: Option<MatchStatus>,
}

fn status_key(view: &PlayerView) -> (MatchStatus, Option<&str>) {
    match view {
        PlayerView::Unknown => (MatchStatus::Unknown, None),
        PlayerView::Queued { .. } => (MatchStatus::Queued, None),
        PlayerView::TimedOut { .. } => (MatchStatus::TimedOut, None),
        PlayerView::InSession { session_id, record } => (status_of(record.state), Some(session_id.as_str())),
    }
}

async fn status(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
    query: Result<Query<StatusQuery>, QueryRejection>,
) -> ApiResult<Json<MatchResponse>> {
    let Query(query) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
    check_player(&query.player_id)?;
    access.may_act_as(&query.player_id)?;
    let wait = checked_wait(query.wait)?;
    let player = query.player_id;
    // Watch before the first read, so no change between read and wait is missed.
    let watch = state.waiters.watch(&player);
    let mut notified = std::pin::pin!(watch.notify.notified());
    notified.as_mut().enable();
    let first = state.sessions.store().player(&player).await?;
    // Already different from what the client knows (say, matched before its poll began):
    // answer now rather than wait for the next change.
    let settled = match query.status {
        Some(known) => status_key(&first).0 != known,
        None => !waits(&first),
    };
    if wait == 0.0 || settled {
        return Ok(Json(state.response(&player, first, now_ms())));
    }
    // A client that said what it knows hears of any change (a new session included); one
    // that did not, of the wait's end.
    let known = query.status.is_some();
    let done = |v: &PlayerView| {
        if known {
            status_key(v) != status_key(&first)
        } else {
            !waits(v)
        }
    };
    let current = wait_until(&state, &player, (&watch, notified), wait, done).await?;
    Ok(Json(state.response(&player, current, now_ms())))
}

/// A long poll's length, 0 when not asked for: 422 outside 0 to [`MAX_WAIT_SECONDS`].
fn checked_wait(wait: Option<f64>) -> ApiResult<f64> {
    let wait = wait.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECONDS).contains(&wait) {
        return Err(ApiError::Invalid(format!(
            "wait must be 0 to {MAX_WAIT_SECONDS} seconds"
        )));
    }
    Ok(wait)
}

/// Whether a long poll without a known status waits on this: the player is queued or its
/// session's server is being started.
fn waits(view: &PlayerView) -> bool {
    matches!(status_key(view).0, MatchStatus::Queued | MatchStatus::Allocating)
}

/// Waits up to `wait` seconds, woken through `watch` (its `notified` enabled before the
/// player was last read), until where `player` stands is `done`; answers with where the player
/// stands then (at the deadline, whatever it is).
async fn wait_until<'w>(
    state: &AppState,
    player: &str,
    (watch, mut notified): (&'w Watch<'_>, Pin<&mut Notified<'w>>),
    wait: f64,
    done: impl Fn(&PlayerView) -> bool,
) -> ApiResult<PlayerView> {
    let deadline = Instant::now() + Duration::from_secs_f64(wait);
    loop {
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => {}
            // A lost notification only costs this re-check.
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        notified.set(watch.notify.notified());
        notified.as_mut().enable();
        let current = state.sessions.store().player(player).await?;
        if done(&current) || Instant::now() >= deadline {
            return Ok(current);
        }
    }
}

async fn leave(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
    Path(player): Path<String>,
) -> ApiResult<StatusCode> {
    check_player(&player)?;
    access.may_act_as(&player)?;
    match state.sessions.store().cancel(&player).await? {
        CancelOutcome::Cancelled => {
            state.metrics.join(JoinResult::Cancelled);
            Ok(StatusCode::NO_CONTENT)
        }
        CancelOutcome::InSession => Err(ApiError::Conflict(
            "in_session",
            format!("{player} is already in a session"),
        )),
        CancelOutcome::NotQueued => Err(ApiError::NotFound("not_queued", format!("{player} is not queued"))),
    }
}

fn check_session_id(id: &str) -> ApiResult<uuid::Uuid> {
    uuid::Uuid::parse_str(id).map_err(|_| ApiError::NotFound("unknown_session", format!("no session {id:?}")))
}

async fn operator_end(
    State(state): State<Arc<AppState>>,
    Path(session_id): Path<String>,
) -> ApiResult<Json<SessionEnded>> {
    check_session_id(&session_id)?;
    let end_reason = match state.sessions.end(&session_id, EndReason::Stopped, None).await? {
        EndOutcome::Unknown => {
            return Err(ApiError::NotFound(
                "unknown_session",
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

async fn active_sessions(State(state): State<Arc<AppState>>) -> ApiResult<Json<ActiveSessions>> {
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

async fn session(State(state): State<Arc<AppState>>, Path(session_id): Path<String>) -> ApiResult<Json<SessionView>> {
    let id = check_session_id(&session_id)?;
    if let Some(record) = state.sessions.record(&session_id).await? {
        return Ok(Json(view_of_record(session_id, record)));
    }
    match state.history.session_row(id).await? {
        Some(row) => Ok(Json(view_of_row(row))),
        None => Err(ApiError::NotFound(
            "unknown_session",
            format!("no session {session_id}"),
        )),
    }
}

async fn player_matches(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
    Path(player): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<PlayerMatches>> {
    check_player(&player)?;
    access.may_act_as(&player)?;
    let number = |name: &str, default: i64, min: i64, max: i64| -> ApiResult<i64> {
        match query.get(name) {
            None => Ok(default),
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::Invalid(format!(
                    "{name} must be a whole number from {min} to {max}"
                ))),
            },
        }
    };
    let limit = number("limit", 20, 1, 100)?;
    let offset = number("offset", 0, 0, 1_000_000)?;
    let matches = state.history.player_matches(&player, limit + 1, offset).await?;
    let more = matches.len() as i64 > limit;
    let matches = matches
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(20))
        .map(|m| PlayerMatch {
            session: view_of_row(m.row),
            joined_at: m.joined_at,
            left_at: m.left_at,
        })
        .collect();
    Ok(Json(PlayerMatches {
        player_id: player,
        matches,
        next_offset: more.then_some(offset + limit),
    }))
}

/// Readiness, from the last dependency checks: answers at once, whatever the dependencies do.
async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<BackendHealth>) {
    let redis_ok = state.health.redis_ok();
    let postgres_ok = state.health.postgres_ok();
    let backlog = state.health.backlog();
    let draining = state.draining.is_cancelled();
    let ready = redis_ok && !draining;
    let body = BackendHealth {
        status: HealthStatus::from_ok(redis_ok && postgres_ok),
        ready,
        draining,
        instance: state.settings.instance_id.clone(),
        runtime: state.settings.runtime.name().to_owned(),
        redis: DependencyState::from_ok(redis_ok),
        postgres: DependencyState::from_ok(postgres_ok),
        history_backlog: backlog,
        sessions_supervised: state.sessions.supervised(),
        warm_servers: state.runtime.as_ref().and_then(|r| r.warm_servers()),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// Liveness: the process serves HTTP. Depends on nothing else, so a dependency's outage never
/// gets a healthy replica restarted.
async fn live() -> Json<Live> {
    Json(Live::OK)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, service::metrics::CONTENT_TYPE)],
        state
            .metrics
            .render(state.runtime.as_ref().and_then(|r| r.warm_servers())),
    )
        .into_response()
}

/// Reasons a game server may report; the others are the backend's to give.
fn reportable(reason: EndReason) -> bool {
    matches!(
        reason,
        EndReason::Completed | EndReason::Abandoned | EndReason::NoShow | EndReason::Terminated
    )
}

/// The game server's result: its session's report token is checked before the body is read.
async fn result_report(
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
                "unknown_session",
                format!("no session {session_id}"),
            ));
        }
        EndOutcome::Ended { .. } => Recorded::Ended,
        EndOutcome::AlreadyEnded { .. } => Recorded::AlreadyEnded,
    };
    tracing::info!(session = %session_id, reason = %report.end_reason, ?recorded, "result report");
    Ok(Json(ReportReceipt { session_id, recorded }))
}
