//! HTTP errors: one enum, mapped to a code of [`ApiErrorCode`] (which gives the status) and
//! the `{"error": {"code", "message"}}` body. Turning an error into a response has no side
//! effect: a dependency's failure is reported to the client without internals, and its
//! detail rides in the response's extensions ([`Internal`]) to the observing layer, which logs
//! every failed request once.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use matchmaking_core::tickets::TicketError;
use protocol::api::{ApiErrorCode, ErrorBody};

use crate::matchmaking::{BackfillError, JoinError};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    Invalid(String),
    /// 422 with a code of its own.
    #[error("{1}")]
    Unprocessable(ApiErrorCode, String),
    #[error("{1}")]
    NotFound(ApiErrorCode, String),
    #[error("{1}")]
    Conflict(ApiErrorCode, String),
    #[error("request body over {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    /// 503 from a replica that is shutting down, before it did anything: the answer says so
    /// ([`DRAINING`]), and the proxy sends the request on to another replica.
    #[error("{0}")]
    Draining(String),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
}

/// Handler result.
pub type ApiResult<T> = Result<T, ApiError>;

/// What a failed dependency said, for the observing layer's log line (never the client's).
#[derive(Debug, Clone)]
pub(crate) struct Internal(pub(crate) String);

impl ApiError {
    /// The code the client gets, and the message.
    fn code_and_message(&self) -> (ApiErrorCode, String) {
        match self {
            ApiError::Malformed(m) => (ApiErrorCode::Malformed, m.clone()),
            ApiError::Invalid(m) => (ApiErrorCode::Invalid, m.clone()),
            ApiError::Unprocessable(code, m) | ApiError::NotFound(code, m) | ApiError::Conflict(code, m) => {
                (*code, m.clone())
            }
            ApiError::TooLarge(_) => (ApiErrorCode::TooLarge, self.to_string()),
            ApiError::Unauthorized(m) => (ApiErrorCode::Unauthorized, m.clone()),
            ApiError::Forbidden(m) => (ApiErrorCode::Forbidden, m.clone()),
            ApiError::Unavailable(m) | ApiError::Draining(m) => (ApiErrorCode::Unavailable, m.clone()),
            ApiError::Redis(_) => (
                ApiErrorCode::RedisUnavailable,
                "the matchmaking store is unavailable".into(),
            ),
            ApiError::Database(_) => (ApiErrorCode::DatabaseUnavailable, "match history is unavailable".into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, message) = self.code_and_message();
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(ErrorBody::new(code, message))).into_response();
        if matches!(self, ApiError::Draining(_)) {
            response.headers_mut().insert(
                protocol::api::DRAINING_HEADER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        if matches!(self, ApiError::Redis(_) | ApiError::Database(_)) {
            response.extensions_mut().insert(Internal(self.to_string()));
        }
        response
    }
}

/// A refused join, as the API answers it.
impl From<JoinError> for ApiError {
    fn from(e: JoinError) -> Self {
        match e {
            JoinError::UnknownQueue { .. } => ApiError::Unprocessable(ApiErrorCode::UnknownQueue, e.to_string()),
            JoinError::Ticket(TicketError::Forbidden(m)) => ApiError::Forbidden(m),
            JoinError::Ticket(TicketError::Invalid(m)) => ApiError::Invalid(m),
            JoinError::Draining => ApiError::Draining(e.to_string()),
            JoinError::AlreadyQueued { .. } => ApiError::Conflict(ApiErrorCode::AlreadyQueued, e.to_string()),
            JoinError::InSession { .. } => ApiError::Conflict(ApiErrorCode::InSession, e.to_string()),
            JoinError::Store(e) => ApiError::Redis(e),
        }
    }
}

/// A refused backfill change, as the API answers it.
impl From<BackfillError> for ApiError {
    fn from(e: BackfillError) -> Self {
        match e {
            BackfillError::UnknownSession(_) => ApiError::NotFound(ApiErrorCode::UnknownSession, e.to_string()),
            BackfillError::NotRunning(..) => ApiError::Conflict(ApiErrorCode::NotRunning, e.to_string()),
            BackfillError::NoBackfill(_) => ApiError::Conflict(ApiErrorCode::NoBackfill, e.to_string()),
            BackfillError::BadSlots(m) => ApiError::Invalid(m),
            BackfillError::Store(e) => ApiError::Redis(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_draining_replicas_refusal_says_it_is_one() {
        let refused = ApiError::from(JoinError::Draining).into_response();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[protocol::api::DRAINING_HEADER], "1");
        let other = ApiError::Unavailable("the queue is full".into()).into_response();
        assert_eq!(other.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!other.headers().contains_key(protocol::api::DRAINING_HEADER));
    }
}
