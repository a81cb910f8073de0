//! `loadgen probe`: what a game client measures before it joins. It sends the proxies' latency
//! probe (a UDP PROBE answered by an ECHO, or a TCP `PING` line answered `PONG`) to each
//! region's proxy a few times and prints, as JSON, the latency map a join carries in its
//! `latency_ms` attribute: each region's median round trip in milliseconds. A region whose
//! proxy answers no probe is left out of the map, as a client leaves out a region it cannot
//! reach.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};

/// How the probes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// PROBE datagrams to the proxy's public port (what a UDP game measures).
    Udp,
    /// `PING` lines on one connection to the proxy's public port (the connect not counted).
    Tcp,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// Each region's proxy, `name=host:port`, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub regions: Vec<String>,
    /// Probes per region; the median counts.
    #[arg(long, default_value_t = 5)]
    pub count: usize,
    /// `udp` or `tcp`.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    pub transport: Transport,
    /// How long to wait for each answer.
    #[arg(long, default_value_t = 1.0)]
    pub timeout_seconds: f64,
}

/// A region's name and its proxy's address from `name=host:port`.
pub fn parse_region(text: &str) -> anyhow::Result<(String, SocketAddr)> {
    let (name, addr) = text
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--regions: {text:?} is not name=host:port"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        anyhow::bail!("--regions: {name:?} is not a region name (letters, digits, - _ .)");
    }
    let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| anyhow::anyhow!("--regions: {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--regions: {addr:?} names no address"))?;
    Ok((name.to_owned(), addr))
}

/// The median round trip of `count` probes to the proxy at `addr`, each answered within
/// `wait`; `None` when none was.
pub async fn measure(addr: SocketAddr, transport: Transport, count: usize, wait: Duration) -> Option<Duration> {
    let mut trips = match transport {
        Transport::Udp => udp_trips(addr, count, wait).await,
        Transport::Tcp => tcp_trips(addr, count, wait).await,
    };
    if trips.is_empty() {
        return None;
    }
    trips.sort();
    Some(trips[trips.len() / 2])
}

async fn udp_trips(addr: SocketAddr, count: usize, wait: Duration) -> Vec<Duration> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let Ok(socket) = UdpSocket::bind(local).await else {
        return Vec::new();
    };
    if socket.connect(addr).await.is_err() {
        return Vec::new();
    }
    let mut trips = Vec::new();
    let mut buf = [0u8; 1 + protocol::udp::MAX_PROBE_PAYLOAD];
    for i in 0..count as u64 {
        let token = i.to_be_bytes();
        let sent = Instant::now();
        if socket.send(&protocol::udp::probe(&token)).await.is_err() {
            continue;
        }
        // Echoes of earlier probes that came late are skipped: only this one's counts.
        let answered = timeout(wait, async {
            loop {
                let n = socket.recv(&mut buf).await.ok()?;
                if let Some(protocol::udp::FromProxy::Echo { payload }) = protocol::udp::parse_proxy(&buf[..n])
                    && payload == token
                {
                    return Some(sent.elapsed());
                }
            }
        })
        .await;
        if let Ok(Some(trip)) = answered {
            trips.push(trip);
        }
    }
    trips
}

async fn tcp_trips(addr: SocketAddr, count: usize, wait: Duration) -> Vec<Duration> {
    let Ok(Ok(stream)) = timeout(wait, TcpStream::connect(addr)).await else {
        return Vec::new();
    };
    let _ = stream.set_nodelay(true);
    let mut stream = BufReader::new(stream);
    let mut trips = Vec::new();
    for i in 0..count.min(protocol::probe::MAX_PINGS) {
        let token = format!("p{i}");
        let sent = Instant::now();
        if stream
            .get_mut()
            .write_all(protocol::probe::ping(&token).as_bytes())
            .await
            .is_err()
        {
            break;
        }
        let mut line = String::new();
        match timeout(wait, stream.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 && line == protocol::probe::pong(&token) => trips.push(sent.elapsed()),
            _ => break,
        }
    }
    trips
}

/// Measures every region of `args`: the latency map, in milliseconds, of those that answered.
pub async fn run(args: &ProbeArgs) -> anyhow::Result<BTreeMap<String, f64>> {
    if args.count == 0 {
        anyhow::bail!("--count must be at least 1");
    }
    if !(args.timeout_seconds.is_finite() && args.timeout_seconds > 0.0 && args.timeout_seconds <= 60.0) {
        anyhow::bail!("--timeout-seconds must be above 0 and at most 60");
    }
    let regions = args
        .regions
        .iter()
        .map(|r| parse_region(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let wait = Duration::from_secs_f64(args.timeout_seconds);
    let mut map = BTreeMap::new();
    for (name, addr) in regions {
        match measure(addr, args.transport, args.count, wait).await {
            Some(trip) => {
                let ms = (trip.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0;
                eprintln!("probe: {name} ({addr}): {ms} ms");
                map.insert(name, ms);
            }
            None => eprintln!("probe: {name} ({addr}): no answer; left out"),
        }
    }
    Ok(map)
}
