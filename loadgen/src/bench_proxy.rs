//! `loadgen bench-proxy`: the same TCP echo workload three ways in one run — straight to the
//! echo server, through matchplane's proxy, and through HAProxy in TCP mode — reporting bulk
//! throughput with 1 and 64 connections and the round-trip latency of 64-byte ping-pong.
//!
//! Every connection starts with the same `JOIN <ticket>` line (the proxy needs it to route;
//! the echo server returns it), so the three paths carry identical bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::{Claims, TicketSecret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::{Summary, summarize};

/// Settings of one run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchProxyArgs {
    /// Port for the echo server this command starts on 127.0.0.1.
    #[arg(long)]
    pub echo_port: u16,
    /// matchplane's proxy.
    #[arg(long)]
    pub proxy_addr: SocketAddr,
    /// HAProxy in TCP mode, forwarding to the echo port (left out when not given).
    #[arg(long)]
    pub haproxy_addr: Option<SocketAddr>,
    /// Redis the proxy routes by: a session record pointing at the echo server is written.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: String,
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "mp")]
    pub redis_key_prefix: String,
    /// The proxy's ticket secret, to mint the benchmark's ticket.
    #[arg(long, env = "TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: String,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Ping-pong round trips per latency measurement.
    #[arg(long, default_value_t = 20_000)]
    pub round_trips: usize,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One path's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathResult {
    pub path: String,
    pub throughput_1_mib_s: f64,
    pub throughput_64_mib_s: f64,
    pub ping_pong: Summary,
}

async fn echo_server(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy_buf(&mut tokio::io::BufReader::with_capacity(64 * 1024, &mut r), &mut w).await;
            });
        }
    });
    Ok(())
}

/// Connects and completes the JOIN exchange (the echo of the JOIN line).
async fn open(addr: SocketAddr, join: &[u8]) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(join).await?;
    let mut back = vec![0u8; join.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await??;
    anyhow::ensure!(back == join, "the path did not return the JOIN line");
    Ok(stream)
}

async fn throughput(addr: SocketAddr, join: &[u8], connections: usize, seconds: f64) -> anyhow::Result<f64> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let stream = open(addr, join).await?;
        let (received, stop) = (received.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) = stream.into_split();
            let writer_stop = stop.clone();
            let writer = tokio::spawn(async move {
                let chunk = vec![0x5au8; 64 * 1024];
                while !writer_stop.load(Ordering::Relaxed) {
                    if w.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            });
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if !stop.load(Ordering::Relaxed) {
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            let _ = writer.await;
        }));
    }
    // Warm up, then count over the measured window.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start_bytes = received.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    Ok(bytes as f64 / elapsed / (1024.0 * 1024.0))
}

async fn ping_pong(addr: SocketAddr, join: &[u8], round_trips: usize) -> anyhow::Result<Summary> {
    let mut stream = open(addr, join).await?;
    let ping = [0x42u8; 64];
    let mut pong = [0u8; 64];
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..round_trips + 200 {
        let t = Instant::now();
        stream.write_all(&ping).await?;
        stream.read_exact(&mut pong).await?;
        if i >= 200 {
            samples.push(t.elapsed());
        }
    }
    Ok(summarize(&samples))
}

/// Runs the three paths and returns their figures, direct first.
pub async fn run(args: BenchProxyArgs) -> anyhow::Result<Vec<PathResult>> {
    echo_server(args.echo_port).await?;
    let echo: SocketAddr = ([127, 0, 0, 1], args.echo_port).into();
    let secret = TicketSecret::new(args.ticket_secret.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sid = format!("bench-proxy-{}", std::process::id());
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let key = protocol::sessions::session_key(&args.redis_key_prefix, &sid);
    redis::cmd("HSET")
        .arg(&key)
        .arg("state")
        .arg(protocol::sessions::STATE_MATCHED)
        .arg("addr")
        .arg(echo.to_string())
        .query_async::<()>(&mut conn)
        .await?;
    redis::cmd("EXPIRE")
        .arg(&key)
        .arg(3600)
        .query_async::<()>(&mut conn)
        .await?;
    let ticket = secret.mint(&Claims::game("bench", &sid, protocol::ticket::unix_now(), 3600));
    let join = format!("JOIN {ticket}\n").into_bytes();

    let mut paths = vec![("direct".to_owned(), echo), ("matchplane".to_owned(), args.proxy_addr)];
    if let Some(haproxy) = args.haproxy_addr {
        paths.push(("haproxy".to_owned(), haproxy));
    }
    let mut results = Vec::new();
    for (name, addr) in paths {
        eprintln!("bench-proxy: measuring {name} ({addr}) ...");
        results.push(PathResult {
            throughput_1_mib_s: throughput(addr, &join, 1, args.seconds).await?,
            throughput_64_mib_s: throughput(addr, &join, 64, args.seconds).await?,
            ping_pong: ping_pong(addr, &join, args.round_trips).await?,
            path: name,
        });
    }
    Ok(results)
}

/// The results as a table with ratios against the direct path and HAProxy.
pub fn render(results: &[PathResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<11} {:>12} {:>12} {:>11} {:>11}",
        "path", "1 conn MiB/s", "64 conn MiB/s", "p50 RTT µs", "p99 RTT µs"
    );
    for r in results {
        let _ = writeln!(
            out,
            "{:<11} {:>12.0} {:>13.0} {:>11.1} {:>11.1}",
            r.path,
            r.throughput_1_mib_s,
            r.throughput_64_mib_s,
            r.ping_pong.p50_ms * 1000.0,
            r.ping_pong.p99_ms * 1000.0
        );
    }
    let find = |name: &str| results.iter().find(|r| r.path == name);
    if let (Some(direct), Some(mp)) = (find("direct"), find("matchplane")) {
        let _ = writeln!(
            out,
            "matchplane vs direct: throughput x{:.2} (1 conn), x{:.2} (64 conns); added p50 {:.1} µs",
            mp.throughput_1_mib_s / direct.throughput_1_mib_s,
            mp.throughput_64_mib_s / direct.throughput_64_mib_s,
            (mp.ping_pong.p50_ms - direct.ping_pong.p50_ms) * 1000.0
        );
        if let Some(hp) = find("haproxy") {
            let _ = writeln!(
                out,
                "matchplane vs haproxy: throughput x{:.2} (1 conn), x{:.2} (64 conns); added p50 {:.1} µs vs haproxy's {:.1} µs",
                mp.throughput_1_mib_s / hp.throughput_1_mib_s,
                mp.throughput_64_mib_s / hp.throughput_64_mib_s,
                (mp.ping_pong.p50_ms - direct.ping_pong.p50_ms) * 1000.0,
                (hp.ping_pong.p50_ms - direct.ping_pong.p50_ms) * 1000.0
            );
        }
    }
    out
}
