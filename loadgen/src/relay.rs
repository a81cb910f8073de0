//! `loadgen relay`: lets an unmodified game client play through matchplane. It joins a queue
//! for one player, waits to be matched, then listens on a local address: the game client
//! connects there (TCP) or sends its datagrams there (UDP) as to any server, and the relay
//! speaks matchplane's side to the proxy (the ticket preamble, or the UDP framing) and moves
//! the game's bytes both ways, untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::client::{self, UdpFlow};
use crate::http::{CredentialArgs, HttpClient};

/// The transport the game client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// The proxy's public address (HTTP API under /api).
    #[arg(long, env = "TARGET_URL", default_value = "http://127.0.0.1:8080")]
    pub target_url: String,
    /// The player to join as.
    #[arg(long)]
    pub player: String,
    /// The queue to join (its server profile decides the transport).
    #[arg(long)]
    pub queue: Option<String>,
    /// What the game client speaks.
    #[arg(long, value_enum, default_value = "tcp")]
    pub transport: Transport,
    /// Where the game client connects (port 0: a free one, printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// How long to wait to be matched.
    #[arg(long, default_value_t = 120.0)]
    pub match_timeout_seconds: f64,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

/// A relay whose player is matched and whose local address is open.
pub struct Relay {
    /// Where the game client connects or sends its datagrams.
    pub local: SocketAddr,
    /// The player's session.
    pub session_id: String,
    inner: Inner,
}

enum Inner {
    Tcp {
        listener: TcpListener,
        proxy: SocketAddr,
        ticket: String,
    },
    Udp {
        socket: UdpSocket,
        flow: UdpFlow,
    },
}

/// [`open`], taking its settings.
pub async fn open_owned(args: RelayArgs) -> anyhow::Result<Relay> {
    open(&args).await
}

/// Joins, waits to be matched, and opens the local address (and, for UDP, the player's flow).
pub async fn open(args: &RelayArgs) -> anyhow::Result<Relay> {
    anyhow::ensure!(
        protocol::player::is_valid_player_id(&args.player),
        "--player must be 1-128 characters of A-Z a-z 0-9 _ . : -"
    );
    let http = HttpClient::new(
        &format!("{}/api", args.target_url.trim_end_matches('/')),
        Duration::from_secs(15),
    );
    let authorization = args.credentials.authorization(&args.player, Duration::from_secs(3600));
    let matched = client::join_and_wait(
        &http,
        authorization.as_deref(),
        &args.player,
        args.queue.as_deref(),
        Duration::from_secs_f64(args.match_timeout_seconds.max(1.0)),
    )
    .await?;
    let ticket = matched
        .ticket
        .clone()
        .ok_or_else(|| anyhow::anyhow!("matched without a ticket"))?;
    let proxy = client::proxy_address(&matched).await?;
    let (local, inner) = match args.transport {
        Transport::Tcp => {
            let listener = TcpListener::bind(args.listen).await?;
            (
                listener.local_addr()?,
                Inner::Tcp {
                    listener,
                    proxy,
                    ticket,
                },
            )
        }
        Transport::Udp => {
            let socket = UdpSocket::bind(args.listen).await?;
            let flow = UdpFlow::open(proxy, &ticket, Duration::from_secs(10)).await?;
            (socket.local_addr()?, Inner::Udp { socket, flow })
        }
    };
    Ok(Relay {
        local,
        session_id: matched.session_id,
        inner,
    })
}

impl Relay {
    /// Moves the game's bytes until `stop` (or, over UDP, until the flow fails).
    pub async fn serve(self, stop: CancellationToken) -> anyhow::Result<()> {
        match self.inner {
            Inner::Tcp {
                listener,
                proxy,
                ticket,
            } => loop {
                let (mut game, _) = tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    accepted = listener.accept() => accepted?,
                };
                let (ticket, stop) = (ticket.clone(), stop.clone());
                tokio::spawn(async move {
                    match client::connect_tcp(proxy, &ticket).await {
                        Ok(mut upstream) => {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut game, &mut upstream) => {}
                                () = stop.cancelled() => {}
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot reach the session's server through the proxy"),
                    }
                });
            },
            Inner::Udp { socket, mut flow } => {
                let socket = Arc::new(socket);
                let mut game_client: Option<SocketAddr> = None;
                let mut buf = vec![0u8; 65_536];
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return Ok(()),
                        received = socket.recv_from(&mut buf) => {
                            let (n, from) = received?;
                            game_client = Some(from);
                            flow.send(&buf[..n]).await?;
                        }
                        payload = flow.recv() => {
                            let payload = payload?;
                            if let Some(to) = game_client {
                                socket.send_to(payload, to).await?;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `loadgen relay`: prints `RELAY <local address> <session id>` once the player is matched and
/// the local address is open, then relays until `stop`.
pub async fn run(args: RelayArgs, stop: CancellationToken) -> anyhow::Result<()> {
    let relay = open(&args).await?;
    println!("RELAY {} {}", relay.local, relay.session_id);
    relay.serve(stop).await
}
