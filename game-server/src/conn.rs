//! One client connection: the `JOIN` handshake, then commands in and replies out.
//!
//! Every wait is bounded: the handshake must complete within the join timeout, and every write
//! within the write timeout. Replies come only from the connection's own outbound queue, which
//! the match fills; when the match closes the queue (stop, `QUIT`, a newer connection of the
//! same player, or this client falling behind) the connection writes what is left and closes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{Audience, ClientCommand, CodecError, ErrorCode, LineCodec, ServerReply, TicketSecret};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use tracing::Instrument;

use crate::game::{ClientId, GameHandle};

/// What every connection of this server shares.
pub struct ConnContext {
    pub session_id: String,
    pub secret: TicketSecret,
    pub game: GameHandle,
    pub join_timeout: Duration,
    pub write_timeout: Duration,
    pub outbound_queue: usize,
    /// The backend, asked for the roster when a player with a valid ticket is not on the
    /// roster the match knows (backfill may have placed it a moment ago).
    pub backend: Option<matchplane_sdk::Backend>,
}

/// Serves one connection until it closes, the match closes it, or `shutdown` is cancelled.
pub async fn serve<S>(stream: S, ctx: Arc<ConnContext>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let mut lines = FramedRead::with_capacity(reader, LineCodec::new(), protocol::MAX_LINE_BYTES + 2);
    let mut out = FramedWrite::new(writer, LineCodec::new());

    let player = tokio::select! {
        () = shutdown.cancelled() => return,
        handshake = timeout(ctx.join_timeout, handshake(&mut lines, &ctx)) => match handshake {
            Err(_) => {
                tracing::debug!("no JOIN within the join timeout; closing");
                return;
            }
            Ok(Ok(player)) => player,
            Ok(Err(None)) => return,
            Ok(Err(Some(code))) => {
                refuse(lines, out, code, ctx.write_timeout).await;
                return;
            }
        },
    };

    let (outbound, mut replies) = mpsc::channel(ctx.outbound_queue);
    // Only the match holds the sender once joined: when it drops the client, the replies
    // channel closes and this connection hangs up.
    let mut joined = ctx.game.join(player.clone(), outbound.clone()).await;
    if joined == Err(ErrorCode::NotInRoster)
        && let Some(backend) = &ctx.backend
    {
        // Placed by backfill an instant ago: the roster says so before the match has heard.
        match backend.roster(0, Duration::ZERO).await {
            Ok(roster) if roster.players.contains(&player) => {
                ctx.game.roster(roster.players, roster.teams).await;
                joined = ctx.game.join(player.clone(), outbound).await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not read the roster"),
        }
    } else {
        drop(outbound);
    }
    let client = match joined {
        Ok(client) => client,
        Err(code) => {
            tracing::info!(%player, %code, "join refused");
            refuse(lines, out, code, ctx.write_timeout).await;
            return;
        }
    };

    let span = tracing::info_span!("client", %player, client);
    let too_long = play(client, &mut lines, &mut out, &mut replies, &ctx, &shutdown)
        .instrument(span)
        .await;
    ctx.game.leave(client).await;
    if too_long {
        refuse(lines, out, ErrorCode::LineTooLong, ctx.write_timeout).await;
    }
}

/// Sends `ERROR <code>` and closes gracefully: the write side is shut down first and unread
/// input is discarded for a moment, so the peer reads the error instead of a reset.
pub(crate) async fn refuse<R, W>(
    lines: FramedRead<R, LineCodec>,
    mut out: FramedWrite<W, LineCodec>,
    code: ErrorCode,
    wait: Duration,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    const LINGER: Duration = Duration::from_millis(500);
    const LINGER_BYTES: usize = 256 * 1024;
    if !matches!(timeout(wait, out.send(ServerReply::Error(code))).await, Ok(Ok(()))) {
        return;
    }
    let _ = timeout(wait, out.get_mut().shutdown()).await;
    let mut reader = lines.into_inner();
    let mut sink = [0u8; 4096];
    let mut discarded = 0;
    let _ = timeout(LINGER, async {
        while discarded < LINGER_BYTES {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => discarded += n,
            }
        }
    })
    .await;
}

/// The joined phase: forwards commands to the match and writes its replies, until either side
/// is done. Returns whether it ended on a line over the cap.
async fn play<R, W>(
    client: ClientId,
    lines: &mut FramedRead<R, LineCodec>,
    out: &mut FramedWrite<W, LineCodec>,
    replies: &mut mpsc::Receiver<ServerReply>,
    ctx: &ConnContext,
    shutdown: &CancellationToken,
) -> bool
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            biased;
            reply = replies.recv() => match reply {
                Some(reply) => {
                    if !matches!(timeout(ctx.write_timeout, out.send(reply)).await, Ok(Ok(()))) {
                        tracing::info!("write failed or stalled; closing");
                        return false;
                    }
                }
                None => return false,
            },
            line = lines.next() => match line {
                Some(Ok(line)) => ctx.game.command(client, ClientCommand::parse(&line)).await,
                Some(Err(CodecError::LineTooLong)) => return true,
                Some(Err(CodecError::Io(_))) | None => return false,
            },
            () = shutdown.cancelled() => return false,
        }
    }
}

/// Reads the first line and checks it is a `JOIN` with a valid ticket for this session.
/// `Err(None)` means the peer went away; `Err(Some(code))` is to be sent before closing.
async fn handshake<R>(lines: &mut FramedRead<R, LineCodec>, ctx: &ConnContext) -> Result<String, Option<ErrorCode>>
where
    R: AsyncRead + Unpin,
{
    let line = match lines.next().await {
        None | Some(Err(CodecError::Io(_))) => return Err(None),
        Some(Err(CodecError::LineTooLong)) => return Err(Some(ErrorCode::LineTooLong)),
        Some(Ok(line)) => line,
    };
    let ClientCommand::Join(ticket) = ClientCommand::parse(&line) else {
        return Err(Some(ErrorCode::JoinRequired));
    };
    let claims = ctx
        .secret
        .verify(&ticket, Audience::Game, protocol::ticket::unix_now())
        .map_err(|e| {
            tracing::info!(error = %e, "ticket refused");
            Some(ErrorCode::from(&e))
        })?;
    if claims.sid != ctx.session_id {
        return Err(Some(ErrorCode::WrongSession));
    }
    claims.sub.ok_or(Some(ErrorCode::BadTicket))
}
