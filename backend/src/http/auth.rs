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
//!
//! A request without `Authorization` that carries the console's cookie is the operator who
//! signed in to the console, provided the browser says it is not cross-site
//! (`Sec-Fetch-Site`), and, for anything but a read, that it carries the sign-in's CSRF token
//! in `X-CSRF-Token`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use identity::{AuthError, Authenticator, Caller, PlayerAuthMode};

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::operators::console::SignIn;

/// What a request may do, as the layer found it; handlers read it from the extensions.
#[derive(Debug, Clone)]
pub(crate) enum Access {
    /// `PLAYER_AUTH=none` on a player route: open.
    Open,
    /// A caller whose token verified.
    Caller(Caller),
    /// The operator signed in to the console as `name`.
    Console { name: String },
}

impl Access {
    /// Whether this request may act as `player`: 403 for another player's token.
    pub(crate) fn may_act_as(&self, player: &str) -> ApiResult<()> {
        match self {
            Access::Open | Access::Caller(Caller::Service | Caller::Operator) | Access::Console { .. } => Ok(()),
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

/// The console's cookie, if the request carries one.
pub(crate) fn console_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == crate::operators::console::COOKIE)
        .map(|(_, value)| value)
}

/// Whether the browser marks the request as coming from another site (`Sec-Fetch-Site` other
/// than `same-origin` or `none`; a client that sends none is not a browser's page).
pub(crate) fn cross_site(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|site| !matches!(site.as_bytes(), b"same-origin" | b"none"))
}

/// The console sign-in the request's cookie stands for, checked as the module says.
pub(crate) async fn console_access(
    state: &AppState,
    method: &axum::http::Method,
    headers: &axum::http::HeaderMap,
    cookie: &str,
) -> ApiResult<SignIn> {
    if cross_site(headers) {
        return Err(ApiError::Forbidden(
            "a cross-site request may not use the console's sign-in".into(),
        ));
    }
    let sign_in =
        state.operators.signed_in(cookie).await?.ok_or_else(|| {
            ApiError::Unauthorized("the console sign-in is unknown or has expired: sign in again".into())
        })?;
    let reads = matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD);
    if !reads {
        let given = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !sign_in.csrf_matches(given) {
            return Err(ApiError::Forbidden(
                "this request needs the console's X-CSRF-Token header".into(),
            ));
        }
    }
    Ok(sign_in)
}

/// Checks the caller against `class` and records it for the handler.
async fn check(state: &AppState, class: Class, request: &mut Request) -> ApiResult<()> {
    let auth = &state.auth;
    let access = if class == Class::Player && auth.mode() == PlayerAuthMode::None {
        Access::Open
    } else if !request.headers().contains_key(header::AUTHORIZATION)
        && let Some(cookie) = console_cookie(request.headers())
    {
        let cookie = cookie.to_owned();
        let (method, headers) = (request.method().clone(), request.headers().clone());
        Access::Console {
            name: console_access(state, &method, &headers, &cookie).await?.name,
        }
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
    State((state, class)): State<(Arc<AppState>, Class)>,
    mut request: Request,
    next: Next,
) -> Response {
    match check(&state, class, &mut request).await {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}
