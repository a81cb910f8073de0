//! `loadgen hosted`: players of a game server matchplane hosts but did not write. Each joins
//! the queue, waits to be matched, reaches the session's server through the proxy with its
//! ticket (the TCP preamble or the UDP framing) and performs the game's own opening handshake,
//! then leaves; the summary says how many got that far and how long matching took.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{self, ClientError, UdpFlow};
use crate::http::{CredentialArgs, HttpClient};

/// A game whose opening handshake the players perform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Game {
    /// BZFlag over TCP: `BZFLAG\r\n\r\n`, answered `BZFS` and the protocol version.
    Bzflag,
    /// Cube 2: Sauerbraten over UDP: an ENet CONNECT, answered VERIFY_CONNECT.
    Sauerbraten,
}

#[derive(Debug, Clone, clap::Args)]
pub struct HostedArgs {
    /// The proxy's public address (HTTP API under /api).
    #[arg(long, env = "TARGET_URL", default_value = "http://127.0.0.1:8080")]
    pub target_url: String,
    /// The queue whose profile runs the game's server.
    #[arg(long)]
    pub queue: String,
    /// The game the players speak.
    #[arg(long, value_enum)]
    pub game: Game,
    /// Players.
    #[arg(long, env = "CLIENTS", default_value_t = 16)]
    pub clients: usize,
    /// How long each may wait to be matched.
    #[arg(long, default_value_t = 60.0)]
    pub match_timeout_seconds: f64,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

/// ENet's CONNECT command as a client opens its connection (enet's `protocol.h`), big-endian:
/// the protocol header (peer id 0xFFF with the sent-time flag, a sent time), the command header
/// (CONNECT with the acknowledge flag, channel 0xFF, reliable sequence 1) and the connect body.
pub fn enet_connect(connect_id: u32) -> Vec<u8> {
    let mut packet = Vec::with_capacity(52);
    packet.extend(0x8FFFu16.to_be_bytes());
    packet.extend(0x1234u16.to_be_bytes());
    packet.extend([0x82, 0xFF]);
    packet.extend(1u16.to_be_bytes());
    packet.extend(0u16.to_be_bytes());
    packet.extend([0xFF, 0xFF]);
    // mtu, window, channels, bandwidth in and out, throttle interval, acceleration,
    // deceleration, connect id, data
    for field in [1400u32, 32768, 3, 0, 0, 5000, 2, 2, connect_id, 0] {
        packet.extend(field.to_be_bytes());
    }
    packet
}

/// One player's run: joined and matched (how long it took), then the handshake.
async fn play(args: &HostedArgs, http: &HttpClient, player: &str) -> Result<Duration, ClientError> {
    let began = tokio::time::Instant::now();
    let authorization = args.credentials.authorization(player, Duration::from_secs(3600));
    let matched = client::join_and_wait(
        http,
        authorization.as_deref(),
        player,
        Some(&args.queue),
        Duration::from_secs_f64(args.match_timeout_seconds.max(1.0)),
    )
    .await?;
    let to_match = began.elapsed();
    let ticket = matched.ticket.clone().unwrap_or_default();
    let proxy = client::proxy_address(&matched).await?;
    let handshake = async {
        match args.game {
            Game::Bzflag => {
                let mut stream = client::connect_tcp(proxy, &ticket).await?;
                stream.write_all(b"BZFLAG\r\n\r\n").await?;
                let mut hello = [0u8; 8];
                stream.read_exact(&mut hello).await?;
                if &hello[..4] != b"BZFS" {
                    return Err(ClientError::Refused(String::from_utf8_lossy(&hello).into_owned()));
                }
            }
            Game::Sauerbraten => {
                let mut flow = UdpFlow::open(proxy, &ticket, Duration::from_secs(10)).await?;
                let connect_id = fastrand::u32(..);
                flow.send(&enet_connect(connect_id)).await?;
                let answer = flow.recv().await?;
                if answer.get(4) != Some(&0x83) || !answer.ends_with(&connect_id.to_be_bytes()) {
                    return Err(ClientError::Refused(format!("not VERIFY_CONNECT: {answer:02x?}")));
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(15), handshake)
        .await
        .map_err(|_| {
            ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no handshake in 15 s",
            ))
        })??;
    Ok(to_match)
}

/// Runs every player at once and prints the summary; an error when any failed.
pub async fn run(args: HostedArgs) -> anyhow::Result<()> {
    let http = HttpClient::new(
        &format!("{}/api", args.target_url.trim_end_matches('/')),
        Duration::from_secs(15),
    );
    let prefix = crate::run_prefix("hosted");
    let players: Vec<String> = (0..args.clients).map(|i| format!("{prefix}-{i}")).collect();
    let runs = futures_util::future::join_all(players.iter().map(|p| play(&args, &http, p))).await;
    let mut waits: Vec<Duration> = Vec::new();
    let mut failures: std::collections::BTreeMap<String, usize> = Default::default();
    for run in runs {
        match run {
            Ok(wait) => waits.push(wait),
            Err(e) => *failures.entry(e.to_string()).or_default() += 1,
        }
    }
    waits.sort();
    let at = |q: f64| {
        waits
            .get(((waits.len() as f64 - 1.0) * q).round() as usize)
            .map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()))
    };
    println!(
        "hosted {:?}: {} players, {} reached the server and completed its handshake; join -> matched p50 {}, p99 {}",
        args.game,
        args.clients,
        waits.len(),
        at(0.5),
        at(0.99)
    );
    for (why, n) in &failures {
        println!("  {n} failed: {why}");
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} players failed",
        failures.values().sum::<usize>()
    );
    Ok(())
}
