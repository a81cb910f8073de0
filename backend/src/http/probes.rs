//! What orchestrators and scrapers read: readiness, liveness, metrics. None needs a token.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::api::{BackendHealth, DependencyState, HealthStatus, Live};

use super::AppState;

/// Readiness, from the last dependency checks: answers at once, whatever the dependencies do.
pub(super) async fn health(State(state): State<Arc<AppState>>) -> (StatusCode, Json<BackendHealth>) {
    let body = backend_health(&state);
    let status = if body.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// This replica's health as `GET /health` answers it (and as it reports itself to operators).
pub(crate) fn backend_health(state: &AppState) -> BackendHealth {
    let redis_ok = state.health.redis_ok();
    let postgres_ok = state.health.postgres_ok();
    let draining = state.unready.is_cancelled() || !state.matchmaking.accepting();
    BackendHealth {
        status: HealthStatus::from_ok(redis_ok && postgres_ok),
        ready: redis_ok && !draining,
        draining,
        instance: state.settings.instance_id.clone(),
        runtime: state.settings.runtime.name().to_owned(),
        redis: DependencyState::from_ok(redis_ok),
        postgres: DependencyState::from_ok(postgres_ok),
        history_backlog: state.health.backlog(),
        sessions_supervised: state.sessions.supervised(),
        warm_servers: state.runtime.as_ref().and_then(|r| r.warm_servers()),
        warm_profiles: state.runtime.as_ref().map(|r| r.warm_profiles()).unwrap_or_default(),
        regions: state
            .settings
            .regions
            .as_ref()
            .map(|r| r.board.snapshot(tokio::time::Instant::now()))
            .unwrap_or_default(),
    }
}

/// Liveness: the process serves HTTP. Depends on nothing else, so a dependency's outage never
/// gets a healthy replica restarted.
pub(super) async fn live() -> Json<Live> {
    Json(Live::OK)
}

pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, service::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}
