//! The player routes: join, long-polled status, leave, and a player's match history. Each
//! checks that the caller may act as the player it names.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use identity::Caller;
use matchmaking_core::store::{CancelOutcome, PlayerView, now_ms};
use matchmaking_core::tickets::Joiner;
use protocol::api::{ApiErrorCode, JoinRequest, MatchResponse, MatchStatus, PlayerMatch, PlayerMatches};
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use super::auth::Access;
use super::error::{ApiError, ApiResult};
use super::{ApiJson, AppState, check_player, status_of, view_of_row};
use crate::runtime::profiles::CLIENT_VERSION;
use crate::sessions::events::Watch;
use matchmaking_core::queues::DEFAULT_QUEUE;

/// Longest long poll.
const MAX_WAIT_SECONDS: f64 = 30.0;

#[derive(serde::Deserialize)]
pub(super) struct JoinQuery {
    /// Once queued, long poll for up to this many seconds (as `GET /match/status` with
    /// `wait`), so a client learns its match without a second request.
    wait: Option<f64>,
}

pub(super) async fn join(
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
    let joiner = match access {
        Access::Open => Joiner::Player(None),
        Access::Caller(Caller::Player(claims)) => Joiner::Player(Some(&claims.claims)),
        Access::Caller(_) | Access::Console { .. } => Joiner::Service,
    };
    takes_client_version(state, body)?;
    Ok(state.matchmaking.join(body, joiner).await?)
}

/// A queue that keeps players with servers of their client's version takes a join only for a
/// version its profile has and does not drain.
fn takes_client_version(state: &AppState, body: &JoinRequest) -> ApiResult<()> {
    let queue = body.queue.as_deref().unwrap_or(DEFAULT_QUEUE);
    let pins = state
        .settings
        .queues
        .get(queue)
        .is_some_and(|q| q.match_on.iter().any(|m| m == CLIENT_VERSION));
    let version = body
        .attributes
        .as_ref()
        .and_then(|a| a.get(CLIENT_VERSION))
        .and_then(serde_json::Value::as_str);
    match version {
        Some(version) if pins && !state.settings.profiles.for_queue(queue).versions.is_empty() => state
            .settings
            .profiles
            .takes_client_version(queue, version)
            .map_err(ApiError::Invalid),
        _ => Ok(()),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct StatusQuery {
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

pub(super) async fn status(
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
    let first = state.matchmaking.player(&player).await?;
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
pub(super) fn checked_wait(wait: Option<f64>) -> ApiResult<f64> {
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
        let current = state.matchmaking.player(player).await?;
        if done(&current) || Instant::now() >= deadline {
            return Ok(current);
        }
    }
}

pub(super) async fn leave(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
    Path(player): Path<String>,
) -> ApiResult<StatusCode> {
    check_player(&player)?;
    access.may_act_as(&player)?;
    match state.matchmaking.cancel(&player).await? {
        CancelOutcome::Cancelled => Ok(StatusCode::NO_CONTENT),
        CancelOutcome::InSession => Err(ApiError::Conflict(
            ApiErrorCode::InSession,
            format!("{player} is already in a session"),
        )),
        CancelOutcome::NotQueued => Err(ApiError::NotFound(
            ApiErrorCode::NotQueued,
            format!("{player} is not queued"),
        )),
    }
}

pub(super) async fn player_matches(
    State(state): State<Arc<AppState>>,
    Extension(access): Extension<Access>,
    Path(player): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> ApiResult<Json<PlayerMatches>> {
    check_player(&player)?;
    access.may_act_as(&player)?;
    let number = |name: &str, default: i64, min: i64, max: i64| {
        super::whole_number(name, query.get(name).map(String::as_str), default, min, max)
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
