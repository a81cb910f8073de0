//! HTTP on the shared port: `/api/*` forwarded to the backend with the prefix stripped,
//! `/health` and `/metrics` served here.

use protocol::api::ApiErrorCode;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::Context;
use crate::metrics::Route;
use crate::upstream::{ForwardError, LaneSlot, Outgoing};

/// The longest a forwarded request may take (a 30 s long poll fits).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(45);

/// An error answer: `code`'s status and body.
fn json_error(code: ApiErrorCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = json_response(&protocol::api::ErrorBody::new(code, message));
    *response.status_mut() = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response
}

/// Serves HTTP on one connection until it closes or `cancel` asks for a graceful close.
pub async fn serve<S>(stream: S, caller: Caller, ctx: Arc<Context>, cancel: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // This connection's backend connection, lent to each of its requests in turn.
    let lane = Arc::new(LaneSlot::new(ctx.upstream.clone()));
    let service_lane = lane.clone();
    let caller = Arc::new(caller);
    let activity = Arc::new(Activity::new());
    let service_activity = activity.clone();
    let service = service_fn(move |request| {
        let ctx = ctx.clone();
        let lane = service_lane.clone();
        let caller = caller.clone();
        let activity = service_activity.clone();
        async move {
            activity.busy.store(true, Ordering::Relaxed);
            let mut response = handle(request, &caller, &ctx, &lane).await;
            activity.done();
            if ctx.unready.is_cancelled() && response.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                // Stopping: each kept-alive client is moved off this proxy by its next answer
                // (it opens a new connection, which the load balancer gives a ready proxy),
                // so none is cut while sending when the drain closes idle connections.
                response
                    .headers_mut()
                    .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    // No timer of hyper's: one per request; the head timeout is `watch`'s, one per connection.
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = watch(&activity) => {}
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = timeout(Duration::from_secs(5), connection).await;
        }
    }
    lane.release();
}

/// Who is at the other end of one connection, and how it came in.
pub(crate) struct Caller {
    pub(crate) peer: SocketAddr,
    /// The proxy's own address of the connection (a PROXY header names it).
    pub(crate) local: SocketAddr,
    /// Whether the connection speaks TLS (`X-Forwarded-Proto: https`).
    pub(crate) tls: bool,
    /// `peer`'s address as X-Forwarded-For says it, formatted once per connection.
    peer_ip: HeaderValue,
}

impl Caller {
    pub(crate) fn new(peer: SocketAddr, local: SocketAddr, tls: bool) -> Caller {
        let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a header value");
        Caller {
            peer,
            local,
            tls,
            peer_ip,
        }
    }
}

/// A player's connection gets this long to send a request's head, from its start or from the
/// end of its previous request; an idle kept-alive connection is closed after it.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether a connection is handling a request, and since when it has not been.
struct Activity {
    began: Instant,
    /// Milliseconds from `began` to the end of the last request.
    idle_since_ms: AtomicU64,
    busy: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            began: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
        }
    }

    fn done(&self) {
        let ms = u64::try_from(self.began.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since_ms.store(ms, Ordering::Relaxed);
        self.busy.store(false, Ordering::Relaxed);
    }
}

/// Finishes once the connection has gone [`HEAD_TIMEOUT`] without a request being handled:
/// idle, or sending a head too slowly. (A request being answered, a long poll say, is never
/// cut.)
async fn watch(activity: &Activity) {
    let mut deadline = activity.began + HEAD_TIMEOUT;
    loop {
        tokio::time::sleep_until(deadline).await;
        if activity.busy.load(Ordering::Relaxed) {
            deadline = Instant::now() + HEAD_TIMEOUT;
            continue;
        }
        let due = activity.began + Duration::from_millis(activity.idle_since_ms.load(Ordering::Relaxed)) + HEAD_TIMEOUT;
        if Instant::now() >= due {
            return;
        }
        deadline = due;
    }
}

async fn handle(
    request: Request<Incoming>,
    caller: &Caller,
    ctx: &Arc<Context>,
    lane: &LaneSlot,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    let path = request.uri().path();
    let response = if path == "/play" {
        match crate::play::upgrade(request, (caller.peer, caller.local), ctx.clone()) {
            Ok(switching) => switching,
            Err((code, message)) => json_error(code, &message),
        }
    } else if path == "/api" || path.starts_with("/api/") {
        let rest = &path["/api".len()..];
        let private = backend_private(rest) || (!ctx.settings.console && is_console(rest));
        let limited = matches!(
            (request.method(), rest),
            (&hyper::Method::POST, "/match/join") | (&hyper::Method::GET, "/match/status")
        );
        let allowed = allowed_origin(&request, ctx);
        let mut response = if is_preflight(&request) {
            preflight(allowed.as_ref())
        } else if private {
            json_error(ApiErrorCode::NotFound, "no such endpoint")
        } else if let Some(throttled) = player_limit(&request, limited, ctx).await {
            throttled
        } else {
            forward(request, caller, ctx, lane).await
        };
        if let Some(origin) = allowed {
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        response
    } else if matches!(path, "/health" | "/livez" | "/metrics")
        && !matches!(*request.method(), hyper::Method::GET | hyper::Method::HEAD)
    {
        let mut response = json_error(ApiErrorCode::MethodNotAllowed, "method not allowed");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        response
    } else if path == "/health" {
        health(ctx)
    } else if path == "/livez" {
        json_response(&protocol::api::Live::OK)
    } else if path == "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from(ctx.metrics.render())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(service::metrics::CONTENT_TYPE),
        );
        response
    } else {
        json_error(ApiErrorCode::NotFound, "no such endpoint; the API is under /api")
    };
    ctx.metrics.http(response.status().as_u16(), started.elapsed());
    response
}

/// The request's `Origin`, when it is one of `ALLOWED_ORIGINS`.
fn allowed_origin(request: &Request<Incoming>, ctx: &Context) -> Option<HeaderValue> {
    let origin = request.headers().get(header::ORIGIN)?;
    ctx.settings
        .allowed_origins
        .iter()
        .any(|allowed| allowed.as_bytes() == origin.as_bytes())
        .then(|| origin.clone())
}

/// Whether `request` is a CORS preflight: `OPTIONS` with an `Origin` and the method to come.
fn is_preflight(request: &Request<Incoming>) -> bool {
    request.method() == hyper::Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The answer to a preflight, from an allowed origin (204 with what it may send; the origin
/// is added by the caller) or not (403, and the browser sends nothing).
fn preflight(allowed: Option<&HeaderValue>) -> Response<Full<Bytes>> {
    if allowed.is_none() {
        return json_error(ApiErrorCode::Forbidden, "this origin is not in ALLOWED_ORIGINS");
    }
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    response
}

/// The backend's paths that are not for the public: its game servers' result reports and its
/// own metrics. (The backend matches paths exactly and case-sensitively, so no other spelling
/// reaches them.)
fn backend_private(rest: &str) -> bool {
    rest == "/metrics" || rest == "/internal" || rest.starts_with("/internal/")
}

/// The backend's console and its sign-in, served under `/api` only with `PROXY_CONSOLE`.
fn is_console(rest: &str) -> bool {
    rest == "/console" || rest.starts_with("/console/")
}

/// Joins and status polls of a player whose token verifies count against that player's
/// bucket: 429 once it is empty. Anything else (no token, a bad one, a service's) passes on
/// to the backend, which decides.
async fn player_limit(request: &Request<Incoming>, limited: bool, ctx: &Context) -> Option<Response<Full<Bytes>>> {
    if !limited {
        return None;
    }
    let verifier = ctx.players.as_ref()?;
    let token = identity::bearer_token(request.headers().get(header::AUTHORIZATION)?.as_bytes())?;
    let claims = verifier.verify(token).await.ok()?;
    if ctx.player_limiter.allow(claims.sub) {
        return None;
    }
    ctx.metrics.route(Route::PlayerRateLimited);
    let mut response = json_error(
        ApiErrorCode::Throttled,
        "too many joins or status polls for this player; slow down",
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Some(response)
}

/// Readiness, from the last checks: 503 while Redis is down (no game connection can be
/// routed) or the proxy is draining; a backend outage is `degraded` but still ready, since
/// spliced matches go on.
fn health(ctx: &Context) -> Response<Full<Bytes>> {
    let (redis_ok, backend_ok) = (ctx.health.redis_ok(), ctx.health.backend_ok());
    let body = protocol::api::ProxyHealth {
        status: protocol::api::HealthStatus::from_ok(redis_ok && backend_ok),
        redis: protocol::api::DependencyState::from_ok(redis_ok),
        backend: protocol::api::DependencyState::from_ok(backend_ok),
        open_game_connections: ctx.metrics.open_game(),
    };
    let mut response = json_response(&body);
    if !redis_ok || ctx.unready.is_cancelled() {
        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    }
    response
}

fn json_response(body: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("a response body encodes");
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) fn backend_request(ctx: &Context, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("{}{path}", ctx.settings.backend_url))
        .body(Full::new(Bytes::new()))
        .expect("a valid request")
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

async fn forward(
    request: Request<Incoming>,
    caller: &Caller,
    ctx: &Context,
    lanes: &LaneSlot,
) -> Response<Full<Bytes>> {
    let limit = ctx.settings.max_body_bytes;
    let too_large = || json_error(ApiErrorCode::TooLarge, &format!("request body over {limit} bytes"));
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return too_large();
    }
    let (mut parts, body) = request.into_parts();
    let body = if hyper::body::Body::is_end_stream(&body) {
        Bytes::new()
    } else {
        match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return too_large(),
            Err(_) => return json_error(ApiErrorCode::Malformed, "could not read the request body"),
        }
    };
    // The backend's own path: `/api` taken off (origin form, as HTTP/1.1 sends it).
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let target = target.strip_prefix("/api").unwrap_or(target);
    let owned;
    let target = if target.is_empty() || target.starts_with('?') {
        owned = format!("/{target}");
        owned.as_str()
    } else {
        target
    };
    let headers = &mut parts.headers;
    let forwarded_host = headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    // The body is here whole: the backend has nothing to say before it.
    headers.remove(header::EXPECT);
    if headers.keys().any(crate::upstream::hop_by_hop) {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|n| crate::upstream::hop_by_hop(n))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => {
            if let Ok(value) = HeaderValue::from_str(&format!("{earlier}, {}", caller.peer.ip())) {
                headers.insert(X_FORWARDED_FOR.clone(), value);
            }
        }
        None => {
            headers.insert(X_FORWARDED_FOR.clone(), caller.peer_ip.clone());
        }
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if caller.tls { "https" } else { "http" }),
    );
    if let Some(host) = forwarded_host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    let outgoing = Outgoing {
        method: &parts.method,
        target,
        headers,
        body: &body,
    };
    let mut lane = lanes.take();
    let answer = match timeout(FORWARD_TIMEOUT, lane.send(&outgoing)).await {
        Err(_) => return json_error(ApiErrorCode::BackendTimeout, "the backend did not answer in time"),
        Ok(answer) => answer,
    };
    lanes.put(lane);
    match answer {
        Ok(answer) => {
            let mut out = Response::new(Full::new(answer.body));
            *out.status_mut() = answer.status;
            *out.headers_mut() = answer.headers;
            out
        }
        Err(ForwardError::Unreachable(e)) => {
            tracing::warn!(error = %e, "backend unreachable");
            json_error(
                ApiErrorCode::BackendUnavailable,
                "the matchmaking backend is unavailable",
            )
        }
        Err(ForwardError::CutOff(e)) => {
            tracing::warn!(error = %e, "the backend's answer was cut off");
            json_error(ApiErrorCode::BackendUnavailable, "the backend's answer was cut off")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head timeout: 10 s from the start, or from the end of the last request; never while
    /// a request is being answered.
    #[tokio::test(start_paused = true)]
    async fn a_connection_is_cut_after_ten_quiet_seconds_and_never_mid_answer() {
        let activity = Activity::new();
        let began = Instant::now();
        watch(&activity).await;
        assert_eq!(began.elapsed(), HEAD_TIMEOUT, "nothing sent at all");

        let activity = Arc::new(Activity::new());
        let began = Instant::now();
        let answering = activity.clone();
        tokio::spawn(async move {
            // A request from 3 s to 25 s (a long poll), then quiet.
            tokio::time::sleep(Duration::from_secs(3)).await;
            answering.busy.store(true, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(22)).await;
            answering.done();
        });
        watch(&activity).await;
        assert_eq!(began.elapsed(), Duration::from_secs(35), "10 s after the answer");
    }
}
