//! UDP on the public port number: each player's datagrams relayed to and from the UDP port of
//! their session's server, after the player's ticket was verified in a JOIN (the framing is in
//! `protocol::udp`).
//!
//! A *flow* is one player's, in one session: a random 64-bit connection id handed back in the
//! WELCOME, the client's current address, and a socket of the proxy's own connected to the
//! server, so the server sees each player as one distinct source address and only the game's
//! bytes. Client datagrams are read by one task and sent on with a non-blocking send on the
//! flow's socket; each flow's task relays the server's datagrams back. Nothing reaches a
//! server before a ticket was verified for its session, and nothing is answered that is larger
//! than what asked: malformed datagrams, unknown ids and datagrams over a flow's rate are
//! dropped in silence (each counted by reason). A flow ends after `UDP_IDLE_SECONDS` without a
//! datagram from its client, or when its server's port is gone.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use protocol::udp::{self, FromClient};
use protocol::{Audience, ErrorCode};
use service::bucket::TokenBucket;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Context;
use crate::metrics::{UdpMetrics, UdpOutcome as Outcome};

/// The largest datagram relayed (IPv4's UDP payload limit).
const MAX_DATAGRAM: usize = 65_507;
/// How often idle flows are looked for.
const SWEEP: Duration = Duration::from_secs(1);

/// One player's flow.
struct Flow {
    id: u64,
    key: (String, String),
    /// Where the client is now (it moves with a NAT rebinding).
    client: Mutex<SocketAddr>,
    /// The proxy's socket towards the server, connected to its UDP port.
    upstream: UdpSocket,
    /// When the client was last heard from, in ms since the relay started.
    heard_ms: AtomicU64,
    /// The flow's client datagrams, at most the relay's rate.
    bucket: Mutex<TokenBucket>,
    closed: CancellationToken,
    /// Dropped when the flow ends: the player's connection is then recorded as closed.
    _presence: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Every live flow.
pub(crate) struct Relay {
    socket: Arc<UdpSocket>,
    flows: RwLock<HashMap<u64, Arc<Flow>>>,
    /// A player's flow in a session, by (session id, player id).
    by_player: Mutex<HashMap<(String, String), u64>>,
    started: Instant,
    idle: Duration,
    rate: f64,
    /// Latency probes answered, at most [`PROBES_PER_SECOND`] over every source together.
    probes: Mutex<TokenBucket>,
}

/// Latency probes answered a second, at most, from all sources together: a probe's answer is
/// no larger than the probe, and this bounds what a spoofed source can have sent anywhere.
const PROBES_PER_SECOND: f64 = 1000.0;

/// The public socket's buffers each way (the kernel caps them at `net.core.rmem_max` and
/// `wmem_max`): a burst from many clients waits here rather than being dropped.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

impl Relay {
    pub(crate) fn new(socket: UdpSocket, idle: Duration, rate: f64) -> Arc<Relay> {
        use nix::sys::socket::{setsockopt, sockopt};
        if let Err(e) = setsockopt(&socket, sockopt::RcvBuf, &SOCKET_BUFFER)
            .and_then(|()| setsockopt(&socket, sockopt::SndBuf, &SOCKET_BUFFER))
        {
            tracing::debug!(error = %e, "cannot size the UDP socket's buffers");
        }
        Arc::new(Relay {
            socket: Arc::new(socket),
            flows: RwLock::new(HashMap::new()),
            by_player: Mutex::new(HashMap::new()),
            started: Instant::now(),
            idle,
            rate,
            probes: Mutex::new(TokenBucket::full(PROBES_PER_SECOND)),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn flow(&self, id: u64) -> Option<Arc<Flow>> {
        self.flows.read().unwrap().get(&id).cloned()
    }

    /// Takes one datagram's token from `flow`'s bucket: `rate` a second, a second's worth of burst.
    fn allow(&self, flow: &Flow) -> bool {
        let burst = self.rate.max(1.0);
        flow.bucket.lock().unwrap().take(1.0, self.rate, burst)
    }

    /// Ends a flow: its relay task stops, its socket closes, and the player's connection is
    /// recorded as closed.
    fn close(&self, id: u64) {
        let removed = self.flows.write().unwrap().remove(&id);
        if let Some(flow) = removed {
            let mut by_player = self.by_player.lock().unwrap();
            if by_player.get(&flow.key) == Some(&id) {
                by_player.remove(&flow.key);
            }
            flow.closed.cancel();
        }
    }

    pub(crate) fn flows(&self) -> usize {
        self.flows.read().unwrap().len()
    }
}

/// Serves the public UDP port until `stop`.
pub(crate) async fn serve(ctx: Arc<Context>, relay: Arc<Relay>, stop: CancellationToken) {
    let sweeper = tokio::spawn(sweep(ctx.clone(), relay.clone(), stop.clone()));
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (n, from) = tokio::select! {
            () = stop.cancelled() => break,
            received = relay.socket.recv_from(&mut buf) => match received {
                Ok(received) => received,
                // An ICMP error for an earlier answer, or a transient failure: keep serving.
                Err(_) => continue,
            },
        };
        let metrics = &ctx.metrics.udp;
        match udp::parse_client(&buf[..n]) {
            None => metrics.count(Outcome::Malformed),
            // A latency probe: its bytes back, no more than it sent.
            Some(FromClient::Probe { payload }) => {
                if !relay
                    .probes
                    .lock()
                    .unwrap()
                    .take(1.0, PROBES_PER_SECOND, PROBES_PER_SECOND)
                {
                    metrics.count(Outcome::ProbeRateLimited);
                    continue;
                }
                let _ = relay.socket.try_send_to(&udp::echo(payload), from);
                metrics.count(Outcome::ProbeAnswered);
            }
            Some(FromClient::Data { id, payload }) => {
                let Some(flow) = relay.flow(id) else {
                    metrics.count(Outcome::UnknownFlow);
                    continue;
                };
                if !relay.allow(&flow) {
                    metrics.count(Outcome::RateLimited);
                    continue;
                }
                flow.heard_ms.store(relay.now_ms(), Ordering::Relaxed);
                {
                    let mut client = flow.client.lock().unwrap();
                    if *client != from {
                        tracing::debug!(flow = id, from = %*client, to = %from, "a flow's client moved");
                        *client = from;
                        metrics.rebinds.inc();
                    }
                }
                match flow.upstream.try_send(payload) {
                    Ok(_) => metrics.count(Outcome::ToServer),
                    Err(_) => metrics.count(Outcome::SendFailed),
                }
            }
            Some(FromClient::Join { nonce, ticket }) => {
                if !ctx.limiter.allow(from.ip()) {
                    metrics.count(Outcome::JoinRateLimited);
                    continue;
                }
                // The signature is checked here, so a storm of forged JOINs spawns nothing; the
                // session lookup (Redis, when not cached) runs off this loop.
                let verified = ctx
                    .settings
                    .secret
                    .verify(ticket, Audience::Game, protocol::ticket::unix_now())
                    .map_err(|e| ErrorCode::from(&e))
                    .and_then(|claims| match claims.sub.clone() {
                        Some(player) => Ok((claims.sid, player)),
                        None => Err(ErrorCode::BadTicket),
                    });
                match verified {
                    Ok((sid, player)) => {
                        let (ctx, relay) = (ctx.clone(), relay.clone());
                        tokio::spawn(async move { join(&ctx, &relay, from, nonce, sid, player).await });
                    }
                    Err(code) => refuse(&relay, metrics, from, nonce, &code).await,
                }
            }
        }
    }
    sweeper.abort();
    let ids: Vec<u64> = relay.flows.read().unwrap().keys().copied().collect();
    for id in ids {
        relay.close(id);
    }
    ctx.metrics.udp.flows.set(0);
}

/// Answers a JOIN that was refused, in fewer bytes than it took.
async fn refuse(relay: &Relay, metrics: &UdpMetrics, from: SocketAddr, nonce: [u8; udp::NONCE_LEN], code: &ErrorCode) {
    metrics.count(Outcome::Refused);
    let _ = relay.socket.send_to(&udp::refused(nonce, code.as_str()), from).await;
}

/// Answers a JOIN whose ticket was verified for `player` in session `sid`: finds the session's
/// server's UDP port and opens the player's flow (or moves the one it has to this address).
async fn join(
    ctx: &Arc<Context>,
    relay: &Arc<Relay>,
    from: SocketAddr,
    nonce: [u8; udp::NONCE_LEN],
    sid: String,
    player: String,
) {
    let metrics = &ctx.metrics.udp;
    let server = match crate::game::lookup(ctx, &sid, Some(&player)).await {
        Ok(target) => match target.udp {
            Some(server) => server,
            None => return refuse(relay, metrics, from, nonce, &ErrorCode::UnknownSession).await,
        },
        Err(code) => return refuse(relay, metrics, from, nonce, &code).await,
    };
    let key = (sid, player);
    let existing = relay.by_player.lock().unwrap().get(&key).copied();
    if let Some(flow) = existing.and_then(|id| relay.flow(id)) {
        *flow.client.lock().unwrap() = from;
        flow.heard_ms.store(relay.now_ms(), Ordering::Relaxed);
        metrics.count(Outcome::Welcomed);
        let _ = relay.socket.send_to(&udp::welcome(nonce, flow.id), from).await;
        return;
    }
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let upstream = match UdpSocket::bind(local).await {
        Ok(socket) if socket.connect(server).await.is_ok() => socket,
        _ => return refuse(relay, metrics, from, nonce, &ErrorCode::ServerUnreachable).await,
    };
    // Under the player's lock: two JOINs of one player racing open one flow, and only the
    // flow that stays is recorded as the player's connection.
    let (flow, opened) = {
        let mut by_player = relay.by_player.lock().unwrap();
        match by_player.get(&key).copied().and_then(|other| relay.flow(other)) {
            Some(first) => (first, false),
            None => {
                let mut flows = relay.flows.write().unwrap();
                let id = loop {
                    let id = fastrand::u64(1..);
                    if !flows.contains_key(&id) {
                        break id;
                    }
                };
                let flow = Arc::new(Flow {
                    id,
                    key: key.clone(),
                    client: Mutex::new(from),
                    upstream,
                    heard_ms: AtomicU64::new(relay.now_ms()),
                    bucket: Mutex::new(TokenBucket::full(relay.rate.max(1.0))),
                    closed: CancellationToken::new(),
                    _presence: Some(crate::game::track(ctx, &key.0, &key.1)),
                });
                flows.insert(id, flow.clone());
                by_player.insert(key, id);
                (flow, true)
            }
        }
    };
    if opened {
        metrics.flows.set(i64::try_from(relay.flows()).unwrap_or(i64::MAX));
        tracing::debug!(flow = flow.id, %server, "udp flow opened");
        tokio::spawn(downstream(relay.clone(), flow.clone(), ctx.clone()));
    }
    metrics.count(Outcome::Welcomed);
    let _ = relay.socket.send_to(&udp::welcome(nonce, flow.id), from).await;
}

/// Relays the server's datagrams on `flow` to its client until the flow closes or the
/// server's port is gone.
async fn downstream(relay: Arc<Relay>, flow: Arc<Flow>, ctx: Arc<Context>) {
    let metrics = &ctx.metrics;
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    buf[0] = udp::DATA;
    loop {
        let received = tokio::select! {
            () = flow.closed.cancelled() => return,
            received = flow.upstream.recv(&mut buf[1..]) => received,
        };
        match received {
            Ok(n) => {
                let to = *flow.client.lock().unwrap();
                match relay.socket.try_send_to(&buf[..=n], to) {
                    Ok(_) => metrics.udp.count(Outcome::ToClient),
                    Err(_) => metrics.udp.count(Outcome::SendFailed),
                }
            }
            // ECONNREFUSED: the server's port is closed (it exited).
            Err(e) => {
                tracing::debug!(flow = flow.id, error = %e, "udp flow's server is gone");
                relay.close(flow.id);
                metrics.udp.flows.set(i64::try_from(relay.flows()).unwrap_or(i64::MAX));
                return;
            }
        }
    }
}

/// Ends flows whose client has been silent for the idle time.
async fn sweep(ctx: Arc<Context>, relay: Arc<Relay>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let idle_ms = u64::try_from(relay.idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = relay.now_ms();
        let expired: Vec<u64> = relay
            .flows
            .read()
            .unwrap()
            .values()
            .filter(|f| now.saturating_sub(f.heard_ms.load(Ordering::Relaxed)) >= idle_ms)
            .map(|f| f.id)
            .collect();
        for id in &expired {
            tracing::debug!(flow = id, "udp flow expired");
            relay.close(*id);
        }
        ctx.metrics
            .udp
            .flows
            .set(i64::try_from(relay.flows()).unwrap_or(i64::MAX));
    }
}
