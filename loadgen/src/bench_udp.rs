//! `loadgen bench-udp`: game datagrams to a UDP echo server, sent directly and through
//! matchplane's proxy (a JOIN per flow, then the framing), side by side in the same run: round
//! trips per second, their p50/p99, and for the proxy the datagrams it relayed per second of
//! its own CPU time, with 1 and 64 flows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use protocol::sessions::{Identity, SessionRecord};
use protocol::{Claims, TicketSecret};
use tokio::net::UdpSocket;

use crate::client::UdpFlow;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchUdpArgs {
    /// The proxy under test.
    #[arg(long)]
    pub proxy_addr: SocketAddr,
    /// Its pid, to read the CPU time it spends.
    #[arg(long)]
    pub proxy_pid: Option<u32>,
    /// The Redis the proxy routes by (the bench records its session there).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: String,
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "mp")]
    pub redis_key_prefix: String,
    /// The proxy's ticket secret.
    #[arg(long, env = "TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: String,
    /// Seconds per measured window.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Windows per path, alternated.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Datagrams each flow keeps in flight.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Bytes of game payload per datagram.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
}

/// One path's figures, over all its windows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UdpResult {
    pub path: String,
    pub flows: usize,
    pub round_trips_per_second: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Datagrams the proxy relayed (both ways) per second of its CPU time.
    pub relayed_per_cpu_second: Option<f64>,
}

/// A UDP echo server on its own thread: each datagram goes back to its sender.
fn echo_server() -> std::io::Result<SocketAddr> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    });
    Ok(addr)
}

/// The CPU time (user + system) of `pid` so far.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = 100; // USER_HZ on Linux
    Some(Duration::from_millis(ticks * 1000 / hz))
}

/// How a flow sends and receives.
enum Flow {
    Direct(UdpSocket),
    Proxied(UdpFlow),
}

impl Flow {
    async fn send(&self, payload: &[u8]) -> std::io::Result<()> {
        match self {
            Flow::Direct(socket) => socket.send(payload).await.map(|_| ()),
            Flow::Proxied(flow) => flow.send(payload).await,
        }
    }

    async fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Flow::Direct(socket) => socket.recv(buf).await,
            Flow::Proxied(flow) => {
                let payload = flow.recv().await?;
                let n = payload.len().min(buf.len());
                buf[..n].copy_from_slice(&payload[..n]);
                Ok(n)
            }
        }
    }
}

/// Runs `flows` for `seconds`, each keeping `in_flight` datagrams out: round trips and their
/// times in µs. A datagram lost is replaced after 200 ms.
async fn window(flows: Vec<Flow>, in_flight: usize, payload: usize, seconds: f64) -> (u64, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let began = Instant::now();
    let tasks: Vec<_> = flows
        .into_iter()
        .map(|mut flow| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut times = Vec::new();
                let mut datagram = vec![0u8; payload.max(8)];
                let mut buf = vec![0u8; 65_536];
                let stamp = |datagram: &mut Vec<u8>| {
                    let nanos = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    datagram[..8].copy_from_slice(&nanos.to_be_bytes());
                };
                for _ in 0..in_flight {
                    stamp(&mut datagram);
                    let _ = flow.send(&datagram).await;
                }
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(200), flow.recv(&mut buf)).await {
                        Ok(Ok(n)) if n >= 8 => {
                            let sent = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                            let now = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                            times.push(u32::try_from(now.saturating_sub(sent) / 1000).unwrap_or(u32::MAX));
                        }
                        Ok(_) => continue,
                        Err(_) => {}
                    }
                    stamp(&mut datagram);
                    let _ = flow.send(&datagram).await;
                }
                times
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    (all.len() as u64, all)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() as f64 - 1.0) * q).round() as usize])
}

/// Every path, direct first, with 1 and 64 flows.
pub async fn run(args: BenchUdpArgs) -> anyhow::Result<Vec<UdpResult>> {
    let echo = echo_server()?;
    let secret = TicketSecret::new(args.ticket_secret.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sid = format!("bench-udp-{}", std::process::id());
    let players: Vec<String> = (0..64).map(|i| format!("bench-{i}")).collect();
    // A matched session whose server is the echo server's UDP port, as the backend records one.
    let record = SessionRecord {
        udp_addr: Some(echo.to_string()),
        identity: Identity::None,
        ..SessionRecord::matched("bench-udp", players.clone(), "echo")
    };
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = protocol::sessions::sessions_key(&args.redis_key_prefix);
    redis::cmd("HSET")
        .arg(&key)
        .arg(&sid)
        .arg(serde_json::to_string(&record)?)
        .query_async::<()>(&mut conn)
        .await?;
    let mut results = Vec::new();
    for flows in [1usize, 64] {
        let (mut direct, mut proxied) = ((0u64, Vec::new(), 0.0), (0u64, Vec::new(), 0.0, Duration::ZERO));
        for _ in 0..args.rounds {
            let mut sockets = Vec::new();
            for _ in 0..flows {
                let socket = UdpSocket::bind("127.0.0.1:0").await?;
                socket.connect(echo).await?;
                sockets.push(Flow::Direct(socket));
            }
            let (n, times) = window(sockets, args.in_flight, args.payload, args.seconds).await;
            direct.0 += n;
            direct.1.extend(times);
            direct.2 += args.seconds;

            let mut opened = Vec::new();
            for player in players.iter().take(flows) {
                let ticket = secret.mint(&Claims::game(player, &sid, protocol::ticket::unix_now(), 600));
                opened.push(Flow::Proxied(
                    UdpFlow::open(args.proxy_addr, &ticket, Duration::from_secs(5)).await?,
                ));
            }
            let cpu_before = args.proxy_pid.and_then(cpu_time);
            let (n, times) = window(opened, args.in_flight, args.payload, args.seconds).await;
            let cpu = match (cpu_before, args.proxy_pid.and_then(cpu_time)) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => Duration::ZERO,
            };
            proxied.0 += n;
            proxied.1.extend(times);
            proxied.2 += args.seconds;
            proxied.3 += cpu;
        }
        direct.1.sort_unstable();
        proxied.1.sort_unstable();
        results.push(UdpResult {
            path: "direct".into(),
            flows,
            round_trips_per_second: direct.0 as f64 / direct.2,
            p50_us: percentile(&direct.1, 0.5),
            p99_us: percentile(&direct.1, 0.99),
            relayed_per_cpu_second: None,
        });
        results.push(UdpResult {
            path: "matchplane proxy".into(),
            flows,
            round_trips_per_second: proxied.0 as f64 / proxied.2,
            p50_us: percentile(&proxied.1, 0.5),
            p99_us: percentile(&proxied.1, 0.99),
            relayed_per_cpu_second: (!proxied.3.is_zero()).then(|| 2.0 * proxied.0 as f64 / proxied.3.as_secs_f64()),
        });
    }
    redis::cmd("HDEL")
        .arg(&key)
        .arg(&sid)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(results)
}

/// The results as a table, with the proxy's added latency against direct.
pub fn render(results: &[UdpResult]) -> String {
    let mut out = String::from(
        "path              flows  round trips/s     p50 µs    p99 µs   added p50/p99 µs   relayed datagrams per proxy CPU-second\n",
    );
    for pair in results.chunks(2) {
        let direct = &pair[0];
        for r in pair {
            let added = if r.path == "direct" {
                "-".to_owned()
            } else {
                format!("{:.0}/{:.0}", r.p50_us - direct.p50_us, r.p99_us - direct.p99_us)
            };
            out.push_str(&format!(
                "{:<17} {:>5} {:>14.0} {:>10.0} {:>9.0} {:>18} {:>20}\n",
                r.path,
                r.flows,
                r.round_trips_per_second,
                r.p50_us,
                r.p99_us,
                added,
                r.relayed_per_cpu_second.map_or("-".to_owned(), |v| format!("{v:.0}"))
            ));
        }
    }
    out
}
