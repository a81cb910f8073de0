//! matchplane's public entry point: one listener for the HTTP API and for game
//! sessions.
//!
//! Each connection's first bytes decide what it is: an HTTP request is served as HTTP
//! (`/api/*` forwarded to the backend); a `JOIN <ticket>` line is verified and spliced to the
//! session's game server; anything else gets one error line and is closed. Connections are
//! capped, new ones are rate limited per source address, and a connection that says nothing
//! within the first-line timeout is closed.

mod classify;
pub mod config;
mod ends;
mod game;
mod health;
mod http;
mod limits;
mod metrics;
mod play;
mod probe;
mod tls;
mod udp;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use protocol::{ErrorCode, ServerReply};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, Settings, TlsSettings};

use crate::classify::Kind;
use crate::metrics::Route;
use crate::metrics::{ConnKind, Metrics};

/// What every connection shares.
struct Context {
    settings: Settings,
    redis: service::redis::RedisLink,
    /// Where session records live.
    sessions_key: String,
    /// Records players' connections to session servers.
    presence: matchmaking_core::store::Presence,
    /// The backend's health checks.
    backend: Client<HttpConnector, Full<Bytes>>,
    /// Forwarded API requests' connections to the backend.
    upstream: Arc<upstream::Backend>,
    metrics: Metrics,
    routes: game::Routes,
    /// Closes the game connections of sessions that fail.
    ends: Arc<ends::Ends>,
    /// Redis and the backend as last checked.
    health: health::Health,
    /// Cancelled when shutdown begins: not ready, still accepting for the shutdown delay.
    unready: CancellationToken,
    /// Cancelled after the shutdown delay: no new connections.
    draining: CancellationToken,
    limiter: limits::RateLimiter<std::net::IpAddr>,
    permits: Arc<Semaphore>,
    /// Verifies player tokens (when keys are configured) for the per-player limit.
    players: Option<identity::PlayerVerifier>,
    player_limiter: limits::RateLimiter<String>,
}

/// Descriptors one spliced game connection holds: two sockets and two pipes.
const FDS_PER_GAME_CONNECTION: u64 = 6;

/// `MAX_CONNECTIONS` when it is not set.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;

/// The connection limit in force, from `MAX_CONNECTIONS` as set and the open-file limit, and
/// whether a limit that was set is more than the open-file limit holds (past which accepting
/// fails, and is retried, rather than refusing with `server_full`). Unset, it is
/// [`DEFAULT_MAX_CONNECTIONS`] or what the open-file limit holds, whichever is lower: a
/// default that fits the machine.
pub fn connection_limit(asked: Option<usize>, open_files: Option<u64>) -> (usize, bool) {
    let holds = open_files.map(|n| usize::try_from(n / FDS_PER_GAME_CONNECTION).unwrap_or(usize::MAX));
    match (asked, holds) {
        (Some(asked), Some(holds)) => (asked, asked > holds),
        (Some(asked), None) => (asked, false),
        (None, Some(holds)) => (DEFAULT_MAX_CONNECTIONS.min(holds).max(1), false),
        (None, None) => (DEFAULT_MAX_CONNECTIONS, false),
    }
}

/// [`connection_limit`] on this process's open-file limit, said in one line at start.
fn resolve_connection_limit(asked: Option<usize>) -> usize {
    let open_files = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    let (limit, short) = connection_limit(asked, open_files);
    if short {
        tracing::warn!(
            open_files,
            max_connections = limit,
            "the open-file limit holds fewer spliced game connections than MAX_CONNECTIONS; raise the hard limit (ulimit -Hn) or lower MAX_CONNECTIONS"
        );
    } else {
        tracing::info!(
            open_files,
            max_connections = limit,
            set = asked.is_some(),
            "connection limit"
        );
    }
    limit
}

/// Serves `listener` until `shutdown`; then stops accepting, closes HTTP connections
/// gracefully, and lets spliced game connections run on for the drain period.
pub async fn run(listener: TcpListener, settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let redis = service::redis::RedisLink::connect(settings.redis.clone(), std::time::Duration::from_secs(3))
        .await
        .map_err(|e| service::cli::Unreachable(format!("cannot reach {}: {e}", settings.redis.describe())))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(std::time::Duration::from_secs(3)));
    // Idle connections are dropped before the backend's own keep-alive timeout closes them,
    // so a request is never sent down a connection the backend is closing.
    let backend = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(5))
        .pool_max_idle_per_host(1024)
        .build(connector);
    let players = match &settings.players.keys {
        Some(_) => Some(
            identity::PlayerVerifier::start(&settings.players)
                .await
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let upstream = Arc::new(upstream::Backend::new(&settings.backend_url));
    let max_connections = resolve_connection_limit(settings.max_connections);
    let ctx = Arc::new(Context {
        players,
        player_limiter: limits::RateLimiter::new(settings.player_rate_per_second, settings.player_rate_burst),
        limiter: limits::RateLimiter::new(settings.rate_per_second, settings.rate_burst),
        permits: Arc::new(Semaphore::new(max_connections)),
        sessions_key: protocol::sessions::sessions_key(&settings.key_prefix),
        presence: matchmaking_core::store::Presence::new(&settings.key_prefix),
        settings,
        redis,
        backend,
        upstream,
        metrics: Metrics::new(&[game::SESSION_LOOKUP, game::PRESENCE, ends::SUBSCRIBE]),
        routes: game::Routes::default(),
        ends: Arc::new(ends::Ends::default()),
        health: health::Health::default(),
        unready: CancellationToken::new(),
        draining: CancellationToken::new(),
    });
    ctx.health.check(&ctx).await;
    let checks = tokio::spawn(health::run(ctx.clone(), ctx.draining.clone()));
    let ends_stop = CancellationToken::new();
    let ends_task = tokio::spawn(ends::listen(
        ctx.redis.clone(),
        ctx.settings.key_prefix.clone(),
        ctx.ends.clone(),
        ends_stop.clone(),
    ));
    let tracker = TaskTracker::new();
    let soft = ctx.draining.clone();
    let hard = CancellationToken::new();
    // UDP on the public port's number: players of servers with a UDP port. Its flows go on
    // through the drain, as spliced connections do.
    let public = listener.local_addr()?;
    let udp_socket = tokio::net::UdpSocket::bind(public)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind UDP {public} (the public port's number): {e}"))?;
    let udp_stop = CancellationToken::new();
    let relay = udp::Relay::new(udp_socket, ctx.settings.udp_idle, ctx.settings.udp_flow_rate);
    let udp_task = tokio::spawn(udp::serve(ctx.clone(), relay, udp_stop.clone()));
    // TLS: on BIND itself, or on a listener of its own beside a plain BIND.
    let tls_stop = CancellationToken::new();
    let (plain, secure, acceptor) = match &ctx.settings.tls {
        None => (Some(listener), None, None),
        Some(tls) => {
            tokio::spawn(tls::watch(tls.certificates.clone(), ctx.clone(), tls_stop.clone()));
            let acceptor = tls::acceptor(tls.certificates.clone());
            match tls.bind {
                None => (None, Some(listener), Some(acceptor)),
                Some(bind) => {
                    let secure = service::net::listen(bind, service::net::BURST_BACKLOG)
                        .map_err(|e| anyhow::anyhow!("cannot listen on TLS_BIND {bind}: {e}"))?;
                    (Some(listener), Some(secure), Some(acceptor))
                }
            }
        }
    };
    tracing::info!(
        plain = ?plain.as_ref().and_then(|l| l.local_addr().ok()),
        tls = ?secure.as_ref().and_then(|l| l.local_addr().ok()),
        backend = %ctx.settings.backend_url,
        "proxy ready"
    );
    // Shutdown: not ready at once, the port closed after the delay.
    let stop_accepting = CancellationToken::new();
    {
        let (unready, stop_accepting, delay) =
            (ctx.unready.clone(), stop_accepting.clone(), ctx.settings.shutdown_delay);
        tokio::spawn(async move {
            shutdown.cancelled().await;
            unready.cancel();
            if !delay.is_zero() {
                tracing::info!(
                    ?delay,
                    "shutting down: not ready; accepting on while load balancers notice"
                );
                tokio::time::sleep(delay).await;
            }
            stop_accepting.cancel();
        });
    }
    loop {
        let (accepted, on_tls) = tokio::select! {
            () = stop_accepting.cancelled() => break,
            accepted = accept(plain.as_ref()) => (accepted, false),
            accepted = accept(secure.as_ref()) => (accepted, true),
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if !ctx.limiter.allow(peer.ip()) {
            ctx.metrics.route(Route::RateLimited);
            if !on_tls {
                let _ = stream.try_write(ServerReply::Error(ErrorCode::RateLimited).line().as_bytes());
            }
            continue;
        }
        let Ok(permit) = ctx.permits.clone().try_acquire_owned() else {
            ctx.metrics.route(Route::ServerFull);
            if !on_tls {
                let _ = stream.try_write(ServerReply::Error(ErrorCode::ServerFull).line().as_bytes());
            }
            continue;
        };
        let (ctx, soft, hard) = (ctx.clone(), soft.clone(), hard.clone());
        let acceptor = acceptor.clone().filter(|_| on_tls);
        tracker.spawn(async move {
            match acceptor {
                None => connection(stream, peer, ctx, permit, soft, hard).await,
                Some(acceptor) => {
                    let limit = ctx.settings.first_line_timeout;
                    let shaken = {
                        let _pending = ctx.metrics.open(ConnKind::Pending);
                        tokio::select! {
                            tls = tls::handshake(&acceptor, stream, limit, &ctx.metrics) => tls,
                            () = soft.cancelled() => None,
                        }
                    };
                    if let Some(tls) = shaken {
                        connection(tls, peer, ctx, permit, soft, hard).await;
                    }
                }
            }
        });
    }
    drop(plain);
    drop(secure);
    tls_stop.cancel();
    tracing::info!(drain = ?ctx.settings.drain, "shutting down: no new connections; draining");
    soft.cancel();
    tracker.close();
    if timeout(ctx.settings.drain, tracker.wait()).await.is_err() {
        tracing::warn!("drain period over; closing the remaining game connections");
        hard.cancel();
        let _ = timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
    }
    udp_stop.cancel();
    ends_stop.cancel();
    let _ = udp_task.await;
    let _ = ends_task.await;
    let _ = checks.await;
    Ok(())
}

/// The next connection on `listener`; never without one.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn connection<C: game::Client>(
    mut stream: C,
    peer: SocketAddr,
    ctx: Arc<Context>,
    _permit: OwnedSemaphorePermit,
    soft: CancellationToken,
    hard: CancellationToken,
) {
    let _ = stream.tcp().set_nodelay(true);
    let mut buf = BytesMut::with_capacity(protocol::MAX_LINE_BYTES + 2);
    let kind = {
        let _pending = ctx.metrics.open(ConnKind::Pending);
        tokio::select! {
            kind = classify::first_bytes(&mut stream, &mut buf, ctx.settings.first_line_timeout) => kind,
            () = soft.cancelled() => return,
        }
    };
    match kind {
        Kind::Http => {
            let _open = ctx.metrics.open(ConnKind::Http);
            let local = stream
                .tcp()
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
            let caller = http::Caller::new(peer, local, C::TLS);
            http::serve(classify::Prefixed::new(buf.freeze(), stream), caller, ctx.clone(), soft).await;
        }
        Kind::Join { newline } => {
            let _open = ctx.metrics.open(ConnKind::Game);
            game::route(stream, buf, newline, &ctx, hard).await;
        }
        Kind::Ping { newline } => {
            ctx.metrics.route(Route::Probe);
            probe::answer(stream, buf, newline, ctx.settings.first_line_timeout).await;
        }
        Kind::Garbage => {
            ctx.metrics.route(Route::BadRequest);
            game::refuse(stream, ErrorCode::BadRequest).await;
        }
        Kind::ProxyHeader => {
            ctx.metrics.route(Route::ProxyHeader);
            game::refuse(stream, ErrorCode::BadRequest).await;
        }
        // A TLS client on a plain port: nothing it could read is worth sending.
        Kind::TlsHello => ctx.metrics.route(Route::TlsOnPlainPort),
        Kind::TooLong => {
            ctx.metrics.route(Route::LineTooLong);
            game::refuse(stream, ErrorCode::LineTooLong).await;
        }
        Kind::TimedOut => ctx.metrics.route(Route::FirstLineTimeout),
        Kind::Closed => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_fits_the_open_file_limit_unless_set() {
        // A stock machine's hard limit of 20,000 descriptors holds 3,333 spliced connections:
        // the default takes that, and says nothing is wrong.
        assert_eq!(connection_limit(None, Some(20_000)), (3_333, false));
        assert_eq!(connection_limit(None, Some(1 << 20)), (DEFAULT_MAX_CONNECTIONS, false));
        assert_eq!(connection_limit(None, None), (DEFAULT_MAX_CONNECTIONS, false));
        assert_eq!(connection_limit(None, Some(3)), (1, false));
        // A limit that was set is kept, and flagged when the descriptors run out first.
        assert_eq!(connection_limit(Some(20_000), Some(20_000)), (20_000, true));
        assert_eq!(connection_limit(Some(3_000), Some(20_000)), (3_000, false));
        assert_eq!(connection_limit(Some(500), None), (500, false));
    }
}
