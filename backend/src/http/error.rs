//! HTTP errors: one enum, mapped to a status and the `{"error": {"code", "message"}}` body.
//! Dependency failures are logged here and reported to the client without internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use matchmaking_core::tickets::TicketError;
use protocol::api::ErrorBody;

use crate::matchmaking::JoinError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Invalid(String),
    /// 422 with a code of its own.
    #[error("{1}")]
    Unprocessable(&'static str, String),
    #[error("{1}")]
    NotFound(&'static str, String),
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match &self {
            ApiError::Malformed(m) => (StatusCode::BAD_REQUEST, "malformed", m.clone()),
            ApiError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", m.clone()),
            ApiError::Unprocessable(code, m) => (StatusCode::UNPROCESSABLE_ENTITY, *code, m.clone()),
            ApiError::NotFound(code, m) => (StatusCode::NOT_FOUND, *code, m.clone()),
            ApiError::Conflict(code, m) => (StatusCode::CONFLICT, *code, m.clone()),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", self.to_string()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m.clone()),
            ApiError::Redis(e) => {
                tracing::error!(error = %e, "Redis failed during a request");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "redis_unavailable",
                    "the matchmaking store is unavailable".into(),
                )
            }
            ApiError::Database(e) => {
                tracing::error!(error = %e, "PostgreSQL failed during a request");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "match history is unavailable".into(),
                )
            }
        };
        (status, Json(ErrorBody::new(code, message))).into_response()
    }
}

/// A refused join, as the API answers it.
impl From<JoinError> for ApiError {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::UnknownQueue { .. } => ApiError::Unprocessable("unknown_queue", e.to_string()),
            JoinError::Ticket(TicketError::Forbidden(m)) => ApiError::Forbidden(m),
            JoinError::Ticket(TicketError::Invalid(m)) => ApiError::Invalid(m),
            JoinError::Draining => ApiError::Unavailable(e.to_string()),
            JoinError::AlreadyQueued { .. } => ApiError::Conflict("already_queued", e.to_string()),
            JoinError::InSession { .. } => ApiError::Conflict("in_session", e.to_string()),
            JoinError::Store(e) => ApiError::Redis(e),
        }
    }
}
