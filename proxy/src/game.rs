//! Game connections: verify the `JOIN` ticket, find the session's server, splice.
//!
//! The ticket is checked (signature, audience, expiry) before anything else, and the only
//! address ever dialled is the one the backend recorded for a session that is `matched`, so
//! a connection reaches a game server only with a valid ticket for that server's session.

use service::backoff::Policy;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::BoxFuture;
use protocol::{Audience, ClientCommand, ErrorCode, ServerReply};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, copy_buf};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use protocol::sessions::{Identity, SessionRecord, SessionState};

use crate::Context;
use crate::metrics::Route;

/// How long a looked-up server address is reused.
const ROUTE_TTL: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Once one side is done, how long the other direction may still flush.
const SPLICE_LINGER: Duration = Duration::from_secs(2);
/// Copy buffer per direction.
const SPLICE_BUFFER: usize = 64 * 1024;
/// A spliced connection's idle seconds before TCP keepalive probes its peer, the seconds
/// between probes, and the probes unanswered before the connection is dropped.
const KEEPALIVE: (u32, u32, u32) = (30, 10, 3);
/// How long data sent on a spliced connection may go unacknowledged before it is dropped, ms.
const UNACKNOWLEDGED_MS: u32 = 60_000;

/// Lets a spliced connection notice a peer that vanished without closing (its host lost power
/// or dropped off the network: no FIN, no RST). Without this, a match whose server and client
/// both vanished would hold its two sockets and two pipes here for ever, and a client whose
/// server vanished would wait on it for as long. With it, the proxy drops the connection
/// within about a minute of the peer going silent, idle or not, and closes the other side.
fn notice_silence(stream: &TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt};
    let (idle, interval, probes) = KEEPALIVE;
    let set = setsockopt(stream, sockopt::KeepAlive, &true)
        .and_then(|()| setsockopt(stream, sockopt::TcpKeepIdle, &idle))
        .and_then(|()| setsockopt(stream, sockopt::TcpKeepInterval, &interval))
        .and_then(|()| setsockopt(stream, sockopt::TcpKeepCount, &probes))
        .and_then(|()| setsockopt(stream, sockopt::TcpUserTimeout, &UNACKNOWLEDGED_MS));
    if let Err(e) = set {
        tracing::debug!(error = %e, "cannot set a spliced connection's keepalive");
    }
}

/// Moves bytes both ways until one side is done, then lets the other direction flush for a
/// moment and closes both: a peer that never closes cannot hold a finished session open.
/// Uses the kernel's `splice(2)` through a pipe per direction, so payload bytes never enter
/// user space; falls back to buffered copies where pipes cannot be had.
/// Returns the bytes moved client→server and server→client.
async fn splice(client: &mut TcpStream, server: &mut TcpStream) -> (u64, u64) {
    match (zero_copy::Pipe::new(), zero_copy::Pipe::new()) {
        (Ok(up_pipe), Ok(down_pipe)) => {
            let up = zero_copy::one_way(client, server, up_pipe);
            let down = zero_copy::one_way(server, client, down_pipe);
            both_ways(up, down).await
        }
        _ => copy_both(client, server).await,
    }
}

/// Copies both ways through buffers (a TLS client's bytes are decrypted here, and a system
/// without pipes splices nothing): bytes client → server, server → client.
async fn copy_both<C: AsyncRead + AsyncWrite + Unpin>(client: &mut C, server: &mut TcpStream) -> (u64, u64) {
    let (client_read, mut client_write) = tokio::io::split(client);
    let (server_read, mut server_write) = server.split();
    let mut client_read = BufReader::with_capacity(SPLICE_BUFFER, client_read);
    let mut server_read = BufReader::with_capacity(SPLICE_BUFFER, server_read);
    let up = async {
        let n = copy_buf(&mut client_read, &mut server_write).await.unwrap_or(0);
        let _ = server_write.shutdown().await;
        n
    };
    let down = async {
        let n = copy_buf(&mut server_read, &mut client_write).await.unwrap_or(0);
        let _ = client_write.shutdown().await;
        n
    };
    both_ways(up, down).await
}

/// Runs both directions; once one ends, the other gets [`SPLICE_LINGER`] to finish.
async fn both_ways(
    up: impl std::future::Future<Output = u64>,
    down: impl std::future::Future<Output = u64>,
) -> (u64, u64) {
    tokio::pin!(up, down);
    tokio::select! {
        n = &mut up => (n, timeout(SPLICE_LINGER, &mut down).await.unwrap_or(0)),
        n = &mut down => (timeout(SPLICE_LINGER, &mut up).await.unwrap_or(0), n),
    }
}

/// Zero-copy forwarding with `splice(2)`, driven by tokio's readiness.
mod zero_copy {
    use std::io;
    use std::os::fd::OwnedFd;

    use nix::fcntl::{OFlag, SpliceFFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    /// Most bytes asked for per fill; the pipe's capacity is what bounds a move.
    const CHUNK: usize = 1 << 20;

    /// A non-blocking pipe, the kernel-side buffer between two sockets.
    ///
    /// Left at the default size (16 pages): pipe pages count against a per-user quota
    /// (`fs.pipe-user-pages-soft`, 64 MiB by default), past which every new pipe gets only two
    /// pages. Enlarged 1 MiB pipes would spend that quota after 32 connections; default ones last
    /// 512 connections, and the bulk benchmark showed no throughput difference between the two.
    pub struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
    }

    impl Pipe {
        pub fn new() -> io::Result<Pipe> {
            let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
            Ok(Pipe { read, write })
        }
    }

    fn flags() -> SpliceFFlags {
        SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
    }

    /// Moves `from` → `to` until `from` ends; then shuts `to` for writing. Returns the bytes
    /// moved. The pipe is only refilled once empty, so `EAGAIN` on a fill always means the
    /// socket has nothing to read, and on a drain that the socket cannot take more.
    pub async fn one_way(from: &TcpStream, to: &TcpStream, pipe: Pipe) -> u64 {
        let mut total = 0u64;
        let moved: io::Result<()> = async {
            loop {
                let filled = loop {
                    from.readable().await?;
                    match from.try_io(Interest::READABLE, || {
                        nix::fcntl::splice(from, None, &pipe.write, None, CHUNK, flags()).map_err(io::Error::from)
                    }) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                };
                if filled == 0 {
                    return Ok(());
                }
                // Let the other connections' work run first, then top the pipe up with what
                // arrived meanwhile: under load one drain carries more, and the receiving end
                // wakes once for it instead of once per segment. When nothing else is waiting
                // the yield returns at once. The top-up is a plain call, outside the readiness
                // bookkeeping: its `EAGAIN` may mean a full pipe, not an empty socket.
                tokio::task::yield_now().await;
                let (topped, ended) = match nix::fcntl::splice(from, None, &pipe.write, None, CHUNK, flags()) {
                    Ok(0) => (0, true),
                    Ok(n) => (n, false),
                    Err(_) => (0, false),
                };
                let mut left = filled + topped;
                while left > 0 {
                    to.writable().await?;
                    match to.try_io(Interest::WRITABLE, || {
                        nix::fcntl::splice(&pipe.read, None, to, None, left, flags()).map_err(io::Error::from)
                    }) {
                        Ok(n) => {
                            left -= n;
                            total += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Err(e),
                    }
                }
                if ended {
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = moved {
            tracing::debug!(error = %e, "splice ended");
        }
        let _ = nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(to), nix::sys::socket::Shutdown::Write);
        total
    }
}

/// Where a session's players' connections go, and how the server learns who they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// Its TCP game port, if it has one.
    pub(crate) tcp: Option<SocketAddr>,
    /// Its UDP game port, if it has one.
    pub(crate) udp: Option<SocketAddr>,
    pub(crate) identity: Identity,
    /// Its roster when looked up: a player released from it (its place given to backfill)
    /// is refused, whatever its ticket says.
    pub(crate) roster: Arc<HashSet<String>>,
}

/// Recently looked-up session servers.
#[derive(Default)]
pub struct Routes {
    cache: Mutex<HashMap<String, (Target, Instant)>>,
}

impl Routes {
    fn get(&self, sid: &str) -> Option<Target> {
        let cache = self.cache.lock().unwrap();
        cache
            .get(sid)
            .filter(|(_, at)| at.elapsed() < ROUTE_TTL)
            .map(|(target, _)| target.clone())
    }

    fn put(&self, sid: &str, target: Target) {
        let mut cache = self.cache.lock().unwrap();
        if cache.len() > 50_000 {
            cache.retain(|_, (_, at)| at.elapsed() < ROUTE_TTL);
        }
        cache.insert(sid.to_owned(), (target, Instant::now()));
    }
}

/// A player's connection: a plain TCP stream (spliced to its server with zero copies), or a
/// TLS one (decrypted here, so its bytes are copied).
pub(crate) trait Client: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Whether the player speaks TLS on it.
    const TLS: bool;
    /// The TCP connection underneath.
    fn tcp(&self) -> &TcpStream;
    /// Moves bytes both ways between the player and `server` until both are done: bytes
    /// player → server, server → player.
    fn relay<'a>(&'a mut self, server: &'a mut TcpStream) -> BoxFuture<'a, (u64, u64)>;
}

impl Client for TcpStream {
    const TLS: bool = false;

    fn tcp(&self) -> &TcpStream {
        self
    }

    fn relay<'a>(&'a mut self, server: &'a mut TcpStream) -> BoxFuture<'a, (u64, u64)> {
        Box::pin(splice(self, server))
    }
}

impl Client for tokio_rustls::server::TlsStream<TcpStream> {
    const TLS: bool = true;

    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }

    fn relay<'a>(&'a mut self, server: &'a mut TcpStream) -> BoxFuture<'a, (u64, u64)> {
        Box::pin(copy_both(self, server))
    }
}

/// Sends one `ERROR <code>` line and closes.
pub async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, code: ErrorCode) {
    let _ = timeout(Duration::from_secs(2), async {
        stream.write_all(ServerReply::Error(code).line().as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}

/// How long a game connection waits for Redis to answer its session lookup (a restart or a
/// failover in progress) before it is refused.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(3);

/// Retries of a session lookup in Redis, within [`LOOKUP_PATIENCE`]; logged at `debug` (an
/// outage fails many connections at once, and each failure is logged once, when it gives up).
pub const SESSION_LOOKUP: Policy =
    Policy::new("session_lookup", Duration::from_millis(50), Duration::from_millis(500)).quiet();

/// Where session `sid`'s server is, for `player`: refused with `not_in_roster` when the
/// player is not on the session's roster (read again from Redis before refusing, since
/// backfill may have placed the player a moment ago).
pub(crate) async fn lookup(ctx: &Context, sid: &str, player: Option<&str>) -> Result<Target, ErrorCode> {
    let rostered = |target: &Target| player.is_none_or(|p| target.roster.contains(p));
    if let Some(target) = ctx.routes.get(sid)
        && rostered(&target)
    {
        return Ok(target);
    }
    let target = fetch(ctx, sid).await?;
    if rostered(&target) {
        Ok(target)
    } else {
        Err(ErrorCode::NotInRoster)
    }
}

/// Reads session `sid`'s route from Redis (and caches it).
async fn fetch(ctx: &Context, sid: &str) -> Result<Target, ErrorCode> {
    let deadline = Instant::now() + LOOKUP_PATIENCE;
    let mut backoff = SESSION_LOOKUP.start();
    let raw = loop {
        let record: Result<Option<Vec<u8>>, _> = redis::cmd("HGET")
            .arg(&ctx.sessions_key)
            .arg(sid)
            .query_async(&mut ctx.redis.conn())
            .await;
        match record {
            Ok(raw) => break raw,
            Err(e) if Instant::now() + SESSION_LOOKUP.cap() < deadline => backoff.sleep(&e).await,
            Err(e) => {
                tracing::warn!(error = %e, "session lookup failed");
                return Err(ErrorCode::ServerUnreachable);
            }
        }
    };
    let record = raw.and_then(|raw| serde_json::from_slice::<SessionRecord>(&raw).ok());
    match record {
        Some(record) if record.state == SessionState::Ended => Err(ErrorCode::SessionOver),
        Some(record) if record.state == SessionState::Matched => {
            let parse = |addr: &Option<String>| -> Result<Option<SocketAddr>, ErrorCode> {
                addr.as_deref()
                    .map(|a| a.parse().map_err(|_| ErrorCode::ServerUnreachable))
                    .transpose()
            };
            let target = Target {
                tcp: parse(&record.addr)?,
                udp: parse(&record.udp_addr)?,
                identity: record.identity,
                roster: Arc::new(record.players.into_iter().collect()),
            };
            ctx.routes.put(sid, target.clone());
            Ok(target)
        }
        Some(_) => Err(ErrorCode::UnknownSession),
        None => Err(ErrorCode::UnknownSession),
    }
}

fn outcome(code: &ErrorCode) -> Route {
    match code {
        ErrorCode::BadTicket => Route::BadTicket,
        ErrorCode::ExpiredTicket => Route::ExpiredTicket,
        ErrorCode::UnknownSession => Route::UnknownSession,
        ErrorCode::SessionOver => Route::SessionOver,
        ErrorCode::ServerUnreachable => Route::ServerUnreachable,
        ErrorCode::NotInRoster => Route::NotInRoster,
        _ => Route::BadRequest,
    }
}

/// A verified ticket's session and where its server is.
pub(crate) struct Resolved {
    pub(crate) claims: protocol::Claims,
    pub(crate) addr: SocketAddr,
    pub(crate) identity: Identity,
}

/// Verifies `ticket` and finds its session's TCP server; counts and answers why not.
pub(crate) async fn resolve(ctx: &Context, ticket: &str) -> Result<Resolved, ErrorCode> {
    let verified = ctx
        .settings
        .secret
        .verify(ticket, Audience::Game, protocol::ticket::unix_now())
        .map_err(|e| ErrorCode::from(&e));
    let routed = match verified {
        Ok(claims) => lookup(ctx, &claims.sid, claims.sub.as_deref())
            .await
            .and_then(|target| match target.tcp {
                Some(addr) => Ok(Resolved {
                    claims,
                    addr,
                    identity: target.identity,
                }),
                // A session whose server has no TCP port: its players come over UDP.
                None => Err(ErrorCode::UnknownSession),
            }),
        Err(code) => Err(code),
    };
    routed.inspect_err(|code| ctx.metrics.route(outcome(code)))
}

/// Dials the server of `to` and sends what it gets first, as its identity mode says: the
/// `JOIN` line (`join_line`) and the game's bytes after it, only the game's bytes, or a PROXY
/// v2 header for `peer` (connected to `local`) and then the game's bytes. Counts and answers
/// why not; returns the server and how many bytes went ahead.
pub(crate) async fn dial(
    ctx: &Context,
    to: &Resolved,
    join_line: &[u8],
    game_bytes: &[u8],
    (peer, local): (SocketAddr, SocketAddr),
) -> Result<(TcpStream, u64), ErrorCode> {
    // A client never speaks for the proxy: a PROXY protocol header of its own is refused
    // before any byte moves.
    if to.identity == Identity::ProxyV2 && protocol::proxy_header::looks_like_header(game_bytes) {
        ctx.metrics.route(Route::ProxyHeader);
        return Err(ErrorCode::BadRequest);
    }
    let Ok(Ok(mut server)) = timeout(CONNECT_TIMEOUT, TcpStream::connect(to.addr)).await else {
        ctx.metrics.route(Route::ServerUnreachable);
        return Err(ErrorCode::ServerUnreachable);
    };
    let _ = server.set_nodelay(true);
    notice_silence(&server);
    // The server learns who the player is as its profile says.
    let first: Vec<u8> = match to.identity {
        Identity::JoinLine => [join_line, game_bytes].concat(),
        Identity::None => game_bytes.to_vec(),
        Identity::ProxyV2 => {
            let player = to.claims.sub.as_deref().unwrap_or_default();
            let mut bytes = protocol::proxy_header::encode(peer, local, player, &to.claims.sid);
            bytes.extend_from_slice(game_bytes);
            bytes
        }
    };
    if !first.is_empty() && server.write_all(&first).await.is_err() {
        ctx.metrics.route(Route::ServerUnreachable);
        return Err(ErrorCode::ServerUnreachable);
    }
    ctx.metrics.route(Route::Routed);
    Ok((server, first.len() as u64))
}

/// Verifies a game connection's `JOIN` line (`buf[..newline]`), connects it to its session's
/// server as the server's profile says, and moves bytes both ways until either side closes
/// or `cancel` (the end of the drain).
pub async fn route<C: Client>(mut client: C, buf: BytesMut, newline: usize, ctx: &Context, cancel: CancellationToken) {
    let ticket = match ClientCommand::parse(&buf[..newline]) {
        ClientCommand::Join(ticket) => ticket,
        _ => {
            ctx.metrics.route(Route::BadRequest);
            refuse(client, ErrorCode::BadRequest).await;
            return;
        }
    };
    let to = match resolve(ctx, &ticket).await {
        Ok(to) => to,
        Err(code) => {
            refuse(client, code).await;
            return;
        }
    };
    let (Ok(peer), Ok(local)) = (client.tcp().peer_addr(), client.tcp().local_addr()) else {
        return;
    };
    // What the client sent after its JOIN line is the game's own bytes.
    let (mut server, up_front) = match dial(ctx, &to, &buf[..=newline], &buf[newline + 1..], (peer, local)).await {
        Ok(dialled) => dialled,
        Err(code) => {
            refuse(client, code).await;
            return;
        }
    };
    notice_silence(client.tcp());
    tracing::debug!(session = %to.claims.sid, player = ?to.claims.sub, addr = %to.addr, "spliced");
    let closed = to.claims.sub.as_ref().map(|player| track(ctx, &to.claims.sid, player));
    let session = ctx.ends.watch(&to.claims.sid);
    tokio::select! {
        (up, down) = client.relay(&mut server) => {
            ctx.metrics.spliced(up + up_front, down);
        }
        () = cancel.cancelled() => tracing::debug!(session = %to.claims.sid, "drain over: closing a spliced connection"),
        () = session.failed() => tracing::debug!(session = %to.claims.sid, "session failed: closing a spliced connection"),
    }
    drop(closed);
}

/// Retries of recording a player's connection in Redis; logged at `debug` (an outage fails
/// many at once, and each is logged once, when it gives up).
pub const PRESENCE: Policy = Policy::new("presence", Duration::from_millis(50), Duration::from_secs(1)).quiet();
/// How long recording one change may keep trying.
const PRESENCE_PATIENCE: Duration = Duration::from_secs(10);

/// Records that `player`'s connection to session `sid`'s server opened, and that it closed once
/// the returned sender is dropped, in that order, off the connection's path.
pub(crate) fn track(ctx: &Context, sid: &str, player: &str) -> tokio::sync::oneshot::Sender<()> {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let (link, presence) = (ctx.redis.clone(), ctx.presence.clone());
    let (sid, player) = (sid.to_owned(), player.to_owned());
    tokio::spawn(async move {
        let mut closed_rx = Some(closed_rx);
        for opened in [true, false] {
            if !opened && let Some(closed) = closed_rx.take() {
                let _ = closed.await;
            }
            let now_ms = matchmaking_core::store::now_ms();
            let deadline = Instant::now() + PRESENCE_PATIENCE;
            let mut backoff = PRESENCE.start();
            loop {
                match presence.record(&mut link.conn(), &sid, &player, opened, now_ms).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() + PRESENCE.cap() < deadline => backoff.sleep(&e).await,
                    Err(e) => {
                        tracing::warn!(session = %sid, %player, opened, error = %e, "could not record a player's connection");
                        break;
                    }
                }
            }
        }
    });
    closed_tx
}

#[cfg(test)]
mod tests {
    use nix::sys::socket::{getsockopt, sockopt};

    use super::*;

    #[tokio::test]
    async fn a_spliced_connection_probes_a_silent_peer_and_bounds_unacknowledged_data() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        assert!(!getsockopt(&stream, sockopt::KeepAlive).unwrap());
        notice_silence(&stream);
        let (idle, interval, probes) = KEEPALIVE;
        assert!(getsockopt(&stream, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepIdle).unwrap(), idle);
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepInterval).unwrap(), interval);
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepCount).unwrap(), probes);
        assert_eq!(getsockopt(&stream, sockopt::TcpUserTimeout).unwrap(), UNACKNOWLEDGED_MS);
        // Dropped within about a minute of going silent, idle or not.
        assert!(idle + interval * probes <= 60 && UNACKNOWLEDGED_MS <= 60_000);
    }
}
