//! Who may call what. Each route belongs to one class; a layer on the class checks the bearer
//! token before anything else of the request is read, and a player route's handler then
//! checks that the player named is the caller.
//!
//! | class | who |
//! | --- | --- |
//! | player (join, status, leave, a player's matches) | that player, a service, an operator; anyone with `PLAYER_AUTH=none` |
//! | service (sessions) | a service, an operator |
//! | operator (ending a session) | an operator |
//!
//! The result report is the session's report token's alone (see the API). Errors never echo
//! the token.

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use identity::{AuthError, Authenticator, Caller, PlayerAuthMode};

use super::error::{ApiError, ApiResult};

/// What a request may do, as the layer found it; handlers read it from the extensions.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// `PLAYER_AUTH=none` on a player route: open.
    Open,
    /// A caller whose token verified.
    Caller(Caller),
}

impl Access {
    /// Whether this request may act as `player`: 403 for another player's token.
    pub(crate) fn may_act_as(&self, player: &str) -> ApiResult<()> {
        match self {
            Access::Open | Access::Caller(Caller::Service | Caller::Operator) => Ok(()),
            Access::Caller(Caller::Player(claims)) if claims.sub == player => Ok(()),
            Access::Caller(Caller::Player(_)) => Err(ApiError::Forbidden("this token is for another player".into())),
            Access::Caller(Caller::Anonymous) => Err(ApiError::Unauthorized("a bearer token is required".into())),
        }
    }
}

/// The route classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Player,
    Service,
    Operator,
}

async fn caller(auth: &Authenticator, authorization: Option<HeaderValue>) -> ApiResult<Caller> {
    match auth.caller(authorization.as_ref().map(HeaderValue::as_bytes)).await {
        Ok(Caller::Anonymous) => Err(ApiError::Unauthorized(
            "a bearer token is required in Authorization".into(),
        )),
        Ok(caller) => Ok(caller),
        Err(e) if e.keys_unavailable() => Err(ApiError::Unavailable(
            "player tokens cannot be checked right now: the identity service's keys are unavailable".into(),
        )),
        Err(e @ (AuthError::NotBearer | AuthError::Token(_))) => Err(ApiError::Unauthorized(e.to_string())),
    }
}

/// Checks the caller against `class` and records it for the handler.
async fn check(auth: &Authenticator, class: Class, request: &mut Request) -> ApiResult<()> {
    let access = if class == Class::Player && auth.mode() == PlayerAuthMode::None {
        Access::Open
    } else {
        let authorization = request.headers().get(header::AUTHORIZATION).cloned();
        let caller = caller(auth, authorization).await?;
        let allowed = matches!(
            (class, &caller),
            (_, Caller::Operator)
                | (Class::Player | Class::Service, Caller::Service)
                | (Class::Player, Caller::Player(_))
        );
        if !allowed {
            let needs = match class {
                Class::Player => "a player, service or operator token",
                Class::Service => "a service or operator token",
                Class::Operator => "the operator token",
            };
            return Err(ApiError::Forbidden(format!(
                "this endpoint needs {needs}, not a {} token",
                caller.kind()
            )));
        }
        Access::Caller(caller)
    };
    request.extensions_mut().insert(access);
    Ok(())
}

/// The layer for one class of routes.
pub(crate) async fn require(
    State((auth, class)): State<(Authenticator, Class)>,
    mut request: Request,
    next: Next,
) -> Response {
    match check(&auth, class, &mut request).await {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}
