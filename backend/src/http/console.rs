//! The console: its page's files (built into the binary) and its sign-in. The page reads the
//! same operator endpoints any tool does, authenticated by the sign-in's cookie (see
//! [`super::auth`]). Every answer here forbids framing, sniffing and any script, style or
//! connection not from this origin (no inline script at all).

use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use identity::Caller;
use protocol::operators::ConsoleLogin;

use super::AppState;
use super::auth::console_cookie;
use super::error::{ApiError, ApiResult};
use super::operators::{Peer, actor, audit};
use crate::history::NewAction;
use crate::operators::console::{COOKIE, LIFETIME, valid_name};

/// The page's files: path under `/console/`, content type, bytes.
const FILES: [(&str, &str, &str); 4] = [
    ("", "text/html; charset=utf-8", include_str!("../../console/index.html")),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../../console/console.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../console/favicon.svg"),
    ),
];

/// Nothing but this origin's own files and endpoints.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(to_slash))
        .route("/console/", get(file))
        .route("/console/{file}", get(file))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/session", get(session))
        .layer(axum::middleware::map_response(guarded))
}

/// Every console answer: the security headers, and never cached but the page's files.
async fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// `/console` → `/console/` (relative, so it holds under the proxy's `/api` too).
async fn to_slash() -> Response {
    (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, "console/")]).into_response()
}

async fn file(path: Option<axum::extract::Path<String>>) -> Response {
    let wanted = path.as_ref().map_or("", |p| p.0.as_str());
    match FILES.iter().find(|(name, _, _)| *name == wanted) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => ApiError::NotFound(protocol::api::ApiErrorCode::NotFound, "no such file".into()).into_response(),
    }
}

/// Whether the request came over TLS to the proxy (the proxy says so; the backend's own port
/// is plain).
fn over_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

fn cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    // A cookie is 64 hex digits or empty: always a valid header value.
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("a cookie header")
}

/// A sign-in or sign-out request must come from the console's own page: JSON (which a
/// cross-site form cannot send without a preflight this server never grants) and not marked
/// cross-site by the browser.
fn same_site_json(headers: &HeaderMap) -> ApiResult<()> {
    if super::auth::cross_site(headers) {
        return Err(ApiError::Forbidden(
            "a cross-site request may not sign in to the console".into(),
        ));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        });
    if json {
        Ok(())
    } else {
        Err(ApiError::Invalid("send the sign-in as application/json".into()))
    }
}

/// `POST /console/login` `{"token", "name"}`: the operator token, once; a cookie from then on.
async fn login(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    request: Request,
) -> ApiResult<Response> {
    let headers = request.headers().clone();
    same_site_json(&headers)?;
    let super::ApiJson(body) = super::ApiJson::<ConsoleLogin>::from_request(request, &()).await?;
    let name = body.name.as_deref().unwrap_or("operator");
    if !valid_name(name) {
        return Err(ApiError::Invalid(
            "name must be 1-64 characters of A-Z a-z 0-9 _ . @ -".into(),
        ));
    }
    let bearer = format!("Bearer {}", body.token);
    let is_operator = matches!(state.auth.caller(Some(bearer.as_bytes())).await, Ok(Caller::Operator));
    let (_, _, remote) = actor(None, &headers, peer.as_deref().copied());
    if !is_operator {
        tracing::warn!(name, remote = ?remote, "console sign-in refused: not the operator token");
        return Err(ApiError::Unauthorized("that is not the operator token".into()));
    }
    super::operators::audit_writable(&state)?;
    let (value, sign_in) = state.operators.sign_in(name).await?;
    audit(
        &state,
        NewAction {
            actor: name.to_owned(),
            via: "console",
            remote,
            action: "sign_in",
            target: "console".into(),
            outcome: "signed_in".into(),
        },
    )
    .await;
    let mut response = Json(sign_in.session()).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie(&value, LIFETIME.as_secs(), over_tls(&headers)),
    );
    Ok(response)
}

/// `POST /console/logout`: ends the sign-in everywhere (CSRF token required).
async fn logout(
    State(state): State<Arc<AppState>>,
    peer: Option<Extension<Peer>>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (value, sign_in) = signed_in(&state, &method, &headers).await?;
    state.operators.sign_out(&value).await?;
    let (_, _, remote) = actor(None, &headers, peer.as_deref().copied());
    audit(
        &state,
        NewAction {
            actor: sign_in.name,
            via: "console",
            remote,
            action: "sign_out",
            target: "console".into(),
            outcome: "signed_out".into(),
        },
    )
    .await;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie("", 0, over_tls(&headers)));
    Ok(response)
}

/// `GET /console/session`: who is signed in, and the CSRF token; 401 when nobody is.
async fn session(
    State(state): State<Arc<AppState>>,
    method: axum::http::Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, sign_in) = signed_in(&state, &method, &headers).await?;
    Ok(Json(sign_in.session()).into_response())
}

/// The request's cookie and the sign-in it stands for, checked as every cookie request is.
async fn signed_in(
    state: &AppState,
    method: &axum::http::Method,
    headers: &HeaderMap,
) -> ApiResult<(String, crate::operators::console::SignIn)> {
    let Some(value) = console_cookie(headers).map(str::to_owned) else {
        return Err(ApiError::Unauthorized("not signed in to the console".into()));
    };
    let sign_in = super::auth::console_access(state, method, headers, &value).await?;
    Ok((value, sign_in))
}
