//! A warm server: started ahead of demand with no session, it waits on its game port for the
//! backend's hand-over — one `ASSIGN <token>` line, the token signed like a ticket for the
//! audience `matchplane-handover` and naming this server's `WARM_SERVER_ID` — answers
//! `ASSIGNED <session_id>`, and from then on is the session's server like any other.
//!
//! Anything else on the port while warm is refused with one `ERROR` line: a player's `JOIN`
//! (`wrong_session`: this server has no session yet), a forged, expired or misdirected token
//! (`bad_ticket`, `expired_ticket`), garbage (`join_required`), a line over
//! [`MAX_HANDOVER_BYTES`] (`line_too_long`). Only the first valid hand-over is taken.

use std::sync::Arc;

use futures_util::StreamExt;
use protocol::{ErrorCode, Handover, LineCodec, handover};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::timeout;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::ServerConfig;
use crate::conn::refuse;

/// The longest hand-over line: a token carrying a roster of up to 1,000 players of 128
/// characters, base64-encoded, and the report target.
pub const MAX_HANDOVER_BYTES: usize = 256 * 1024;

/// Waits for the hand-over on `listener` and returns the session's settings, or `None` when
/// `shutdown` came first (a warm server stopped unused). `config` is the warm server's own
/// (its `warm` id set).
pub async fn await_handover(
    listener: &TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<ServerConfig>> {
    let server = config
        .warm
        .clone()
        .ok_or_else(|| anyhow::anyhow!("not a warm server (WARM_SERVER_ID is unset)"))?;
    let secret = Arc::new(config.secret.clone());
    let (handed, mut received) = mpsc::channel::<(Handover, TcpStream)>(4);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(None),
            Some((handover, stream)) = received.recv() => {
                let session = match config.clone().with_handover(&handover) {
                    Ok(session) => session,
                    Err(e) => {
                        tracing::warn!(error = %e, "a signed hand-over with settings this server cannot use");
                        let (r, w) = stream.into_split();
                        refuse(FramedRead::new(r, LineCodec::new()), FramedWrite::new(w, LineCodec::new()), ErrorCode::BadTicket, config.write_timeout).await;
                        continue;
                    }
                };
                let mut stream = stream;
                let line = handover::assigned(&handover.sid);
                if !matches!(timeout(config.write_timeout, stream.write_all(line.as_bytes())).await, Ok(Ok(()))) {
                    tracing::warn!("the hand-over's answer could not be written; taking the session anyway");
                }
                tracing::info!(session = %handover.sid, players = handover.players.len(), "handed a session");
                return Ok(Some(session));
            }
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (secret, server, handed) = (secret.clone(), server.clone(), handed.clone());
                let (join_timeout, write_timeout) = (config.join_timeout, config.write_timeout);
                connections.spawn(async move {
                    let (r, w) = stream.into_split();
                    let mut lines = FramedRead::new(r, LineCodec::with_max(MAX_HANDOVER_BYTES));
                    let first = match timeout(join_timeout, lines.next()).await {
                        Ok(Some(Ok(line))) => line,
                        Ok(Some(Err(protocol::CodecError::LineTooLong))) => {
                            refuse(lines, FramedWrite::new(w, LineCodec::new()), ErrorCode::LineTooLong, write_timeout).await;
                            return;
                        }
                        _ => return,
                    };
                    let text = String::from_utf8_lossy(&first);
                    let code = match handover::parse_assign(&text) {
                        Some(token) => match secret.verify_handover(token, &server, protocol::ticket::unix_now()) {
                            Ok(handover) => {
                                let stream = lines.into_inner().reunite(w).expect("the halves of one stream");
                                let _ = handed.send((handover, stream)).await;
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "hand-over refused");
                                ErrorCode::from(&e)
                            }
                        },
                        None if text.trim_start().to_ascii_uppercase().starts_with("JOIN") => ErrorCode::WrongSession,
                        None => ErrorCode::JoinRequired,
                    };
                    refuse(lines, FramedWrite::new(w, LineCodec::new()), code, write_timeout).await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
