//! WebSocket game connections: `GET /play` with `Upgrade: websocket` and the subprotocol
//! `matchplane.v1`, for browsers, which cannot open a TCP connection.
//!
//! The first message carries the ticket (browsers cannot set headers on a WebSocket), as text
//! or binary, alone or as a `JOIN <ticket>` line; it gets the same checks as a TCP `JOIN`
//! (verified, looked up, the server dialled as its profile says, the player tracked). From
//! then on each binary message is bytes to the server (a text message: its UTF-8 bytes), and
//! each chunk the server sends is one binary message back. The proxy pings every
//! [`PING_EVERY`] and closes a connection that has said nothing for [`SILENCE`].
//!
//! Refusals close with a code saying why: 4000 + the game protocol's error (4001
//! `bad_ticket`, 4002 `expired_ticket`, 4003 `unknown_session`, 4004 `session_over`, 4005
//! `server_unreachable`, 4006 `bad_request`), 1008 for a ticket not sent within the first-line
//! timeout, 1009 for a message over [`MAX_MESSAGE`], 1007 for a text message that is not
//! UTF-8; and 1000 when the server closes.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use protocol::ErrorCode;
use protocol::api::ApiErrorCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::Context;

/// The subprotocol a game connection speaks.
pub(crate) const SUBPROTOCOL: &str = "matchplane.v1";
/// The largest message either way (a game's messages are small; a ticket is under 1 KiB).
const MAX_MESSAGE: usize = 64 * 1024;
/// Not a close code: the player closed first, and its close is answered as it was sent.
const PEER_CLOSED: u16 = 0;
/// How often an idle connection is pinged.
const PING_EVERY: Duration = Duration::from_secs(20);
/// A connection that sends nothing (not even a pong) for this long is closed.
const SILENCE: Duration = Duration::from_secs(60);

/// Whether `request` asks for a WebSocket.
pub(crate) fn is_upgrade(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Answers a `/play` request: `101 Switching Protocols` and the game connection on its own
/// task, or a refusal saying what is missing.
pub(crate) fn upgrade(
    mut request: Request<Incoming>,
    addresses: (std::net::SocketAddr, std::net::SocketAddr),
    ctx: std::sync::Arc<Context>,
) -> Result<Response<Full<Bytes>>, (ApiErrorCode, String)> {
    let bad = |m: &str| Err((ApiErrorCode::Invalid, m.to_owned()));
    if request.method() != hyper::Method::GET {
        return Err((ApiErrorCode::MethodNotAllowed, "/play takes GET".into()));
    }
    if !is_upgrade(&request) {
        return bad("/play is a WebSocket: send Upgrade: websocket");
    }
    let headers = request.headers();
    // A browser page of another origin may not open a game connection when origins are listed.
    if !ctx.settings.allowed_origins.is_empty()
        && let Some(origin) = headers.get(header::ORIGIN)
        && !ctx
            .settings
            .allowed_origins
            .iter()
            .any(|a| a.as_bytes() == origin.as_bytes())
    {
        return Err((ApiErrorCode::Forbidden, "this origin is not in ALLOWED_ORIGINS".into()));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).and_then(|v| v.to_str().ok()) != Some("13") {
        return bad("Sec-WebSocket-Version must be 13");
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return bad("Sec-WebSocket-Key is missing");
    };
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        return bad("the WebSocket subprotocol must be matchplane.v1 (Sec-WebSocket-Protocol)");
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgraded.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        play(ws, addresses, &ctx).await;
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let set = response.headers_mut();
    set.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    set.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    set.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    set.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    Ok(response)
}

/// The close code for a refusal of the game protocol.
fn refusal(code: &ErrorCode) -> u16 {
    4000 + match code {
        ErrorCode::BadTicket => 1,
        ErrorCode::ExpiredTicket => 2,
        ErrorCode::UnknownSession => 3,
        ErrorCode::SessionOver => 4,
        ErrorCode::ServerUnreachable => 5,
        _ => 6,
    }
}

async fn close<S>(ws: &mut WebSocketStream<S>, code: u16, reason: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.to_owned().into(),
    };
    let _ = timeout(Duration::from_secs(2), ws.close(Some(frame))).await;
}

/// One game connection over a WebSocket.
async fn play<S>(mut ws: WebSocketStream<S>, (peer, local): (std::net::SocketAddr, std::net::SocketAddr), ctx: &Context)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let _open = ctx.metrics.open(crate::metrics::ConnKind::Game);
    // The ticket first, within the first-line timeout.
    let first = timeout(ctx.settings.first_line_timeout, ws.next()).await;
    let ticket = match first {
        Ok(Some(Ok(Message::Text(text)))) => text.as_str().to_owned(),
        Ok(Some(Ok(Message::Binary(bytes)))) => String::from_utf8_lossy(&bytes).into_owned(),
        Ok(Some(Ok(_))) | Err(_) => {
            ctx.metrics.route(crate::metrics::Route::FirstLineTimeout);
            close(&mut ws, 1008, "send the ticket first").await;
            return;
        }
        Ok(Some(Err(e))) => {
            ctx.metrics.route(crate::metrics::Route::BadRequest);
            tracing::debug!(error = %e, "a WebSocket's first message was refused");
            return;
        }
        Ok(None) => return,
    };
    let ticket = ticket.trim();
    let ticket = ticket.strip_prefix("JOIN ").unwrap_or(ticket).trim().to_owned();
    let to = match crate::game::resolve(ctx, &ticket).await {
        Ok(to) => to,
        Err(code) => {
            close(&mut ws, refusal(&code), code.as_str()).await;
            return;
        }
    };
    let join_line = format!("JOIN {ticket}\n");
    // The PROXY header names the player's address and the proxy's own side of the connection.
    let (mut server, _) = match crate::game::dial(ctx, &to, join_line.as_bytes(), &[], (peer, local)).await {
        Ok(dialled) => dialled,
        Err(code) => {
            close(&mut ws, refusal(&code), code.as_str()).await;
            return;
        }
    };
    let closed = to
        .claims
        .sub
        .as_ref()
        .map(|player| crate::game::track(ctx, &to.claims.sid, player));
    let session = ctx.ends.watch(&to.claims.sid);
    let (mut up, mut down) = (0u64, 0u64);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    let mut heard = Instant::now();
    let (code, reason) = loop {
        tokio::select! {
            message = ws.next() => {
                heard = Instant::now();
                let bytes: Bytes = match message {
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Text(text))) => Bytes::copy_from_slice(text.as_bytes()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    // The reply to the player's close is queued; it is flushed below.
                    Some(Ok(Message::Close(_))) | None => break (PEER_CLOSED, "closed by the player"),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "a WebSocket game connection failed");
                        break match e {
                            tokio_tungstenite::tungstenite::Error::Capacity(_) => (1009, "message too big"),
                            tokio_tungstenite::tungstenite::Error::Utf8(_) => (1007, "text must be UTF-8"),
                            _ => (1002, "protocol error"),
                        };
                    }
                };
                up += bytes.len() as u64;
                if server.write_all(&bytes).await.is_err() {
                    break (1011, "the server went away");
                }
            }
            read = server.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break (1000, "the server closed"),
                Ok(n) => {
                    down += n as u64;
                    if ws.send(Message::Binary(Bytes::copy_from_slice(&chunk[..n]))).await.is_err() {
                        break (1000, "closed by the player");
                    }
                }
            },
            () = session.failed() => break (1011, "the session failed: ask for its status"),
            _ = ping.tick() => {
                if heard.elapsed() >= SILENCE {
                    break (1001, "silent for too long");
                }
                if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                    break (1000, "closed by the player");
                }
            }
        }
    };
    ctx.metrics.spliced(up, down);
    let _ = server.shutdown().await;
    if code == PEER_CLOSED {
        // The player closed: answer its close frame (the handshake a browser waits for to
        // report a clean close rather than 1006).
        let _ = timeout(Duration::from_secs(2), ws.flush()).await;
    } else {
        close(&mut ws, code, reason).await;
    }
    drop(closed);
}
