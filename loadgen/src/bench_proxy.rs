//! `loadgen bench-proxy`: the same TCP echo workload several ways in one run — straight to the
//! echo server, through matchplane's proxy, and through HAProxy in TCP mode (as configured by
//! default, and with kernel splicing turned on) — reporting bulk throughput with 1 and 64
//! connections, the round-trip latency of 64-byte ping-pong, and, where the process in the
//! middle is known, the CPU time it spent per GiB echoed, split into user space and kernel.
//!
//! Every connection starts with the same `JOIN <ticket>` line (the proxy needs it to route;
//! the echo server returns it), so every path carries identical bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::sessions::{SessionRecord, SessionState};
use protocol::{Claims, TicketSecret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::stats::{Summary, summarize};

/// Settings of one run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchProxyArgs {
    /// Port for the echo server this command starts on 127.0.0.1 (0: any free port). The
    /// proxies measured must forward to it.
    #[arg(long)]
    pub echo_port: u16,
    /// matchplane's proxy.
    #[arg(long)]
    pub proxy_addr: SocketAddr,
    /// The proxy's process id, to account its CPU time (left out when not given).
    #[arg(long)]
    pub proxy_pid: Option<u32>,
    /// HAProxy in TCP mode, forwarding to the echo port (left out when not given).
    #[arg(long)]
    pub haproxy_addr: Option<SocketAddr>,
    /// HAProxy in TCP mode with `option splice-request` and `option splice-response`.
    #[arg(long)]
    pub haproxy_splice_addr: Option<SocketAddr>,
    /// HAProxy's process id, to account its CPU time (left out when not given).
    #[arg(long)]
    pub haproxy_pid: Option<u32>,
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
    /// CPU time of the process in the middle (for `direct`: this process, the client and the
    /// echo server) over both throughput windows, per GiB echoed.
    pub cpu: Option<CpuPerGib>,
}

/// CPU seconds per GiB echoed, by where they were spent.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct CpuPerGib {
    pub user_s: f64,
    pub kernel_s: f64,
}

impl CpuPerGib {
    pub fn total_s(&self) -> f64 {
        self.user_s + self.kernel_s
    }
}

/// CPU time a process (all its threads) has used so far, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub kernel: f64,
}

impl CpuTimes {
    /// Reads `utime` and `stime` from `/proc/<pid>/stat`; `None` when the process is gone or
    /// this is not Linux.
    pub fn of(pid: u32) -> Option<CpuTimes> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()?? as f64;
        CpuTimes::parse(&stat, ticks)
    }

    /// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may
    /// hold spaces and parentheses itself, so fields are counted from the last `)`: `utime`
    /// and `stime` are fields 14 and 15.
    pub fn parse(stat: &str, ticks_per_second: f64) -> Option<CpuTimes> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_ascii_whitespace().skip(11);
        let user: u64 = fields.next()?.parse().ok()?;
        let kernel: u64 = fields.next()?.parse().ok()?;
        (ticks_per_second > 0.0).then(|| CpuTimes {
            user: user as f64 / ticks_per_second,
            kernel: kernel as f64 / ticks_per_second,
        })
    }

    fn since(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            kernel: self.kernel - earlier.kernel,
        }
    }

    fn plus(self, other: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user + other.user,
            kernel: self.kernel + other.kernel,
        }
    }
}

/// One throughput window: MiB/s echoed, the bytes, and the watched process's CPU time.
struct Window {
    mib_s: f64,
    bytes: u64,
    cpu: Option<CpuTimes>,
}

/// Starts the echo server; returns its address.
async fn echo_server(port: u16) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy_buf(&mut tokio::io::BufReader::with_capacity(64 * 1024, &mut r), &mut w).await;
            });
        }
    });
    Ok(addr)
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

async fn throughput(
    addr: SocketAddr,
    join: &[u8],
    connections: usize,
    seconds: f64,
    watched: Option<u32>,
) -> anyhow::Result<Window> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    // Every connection is open before any carries traffic, so opening does not race the load.
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        streams.push(open(addr, join).await?);
    }
    for stream in streams {
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
    let start_cpu = watched.and_then(CpuTimes::of);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let end_cpu = watched.and_then(CpuTimes::of);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    Ok(Window {
        mib_s: bytes as f64 / elapsed / MIB,
        bytes,
        cpu: start_cpu.zip(end_cpu).map(|(start, end)| end.since(start)),
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// CPU per GiB over the windows, when every window has its CPU time.
fn cpu_per_gib(windows: &[&Window]) -> Option<CpuPerGib> {
    let cpu = windows
        .iter()
        .try_fold(CpuTimes::default(), |sum, w| w.cpu.map(|c| sum.plus(c)))?;
    let gib = windows.iter().map(|w| w.bytes).sum::<u64>() as f64 / (MIB * 1024.0);
    (gib > 0.0).then(|| CpuPerGib {
        user_s: cpu.user / gib,
        kernel_s: cpu.kernel / gib,
    })
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

/// Runs every path given and returns their figures, direct first.
pub async fn run(args: BenchProxyArgs) -> anyhow::Result<Vec<PathResult>> {
    let echo = echo_server(args.echo_port).await?;
    let secret = TicketSecret::new(args.ticket_secret.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sid = format!("bench-proxy-{}", std::process::id());
    let client = redis::Client::open(args.redis_url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    // A matched session whose server is the echo server, recorded as the backend records one.
    let record = SessionRecord {
        state: SessionState::Matched,
        players: vec!["bench".into()],
        joined_ms: vec![0],
        created_ms: 0,
        instance: "bench-proxy".into(),
        server: Some("echo".into()),
        addr: Some(echo.to_string()),
        ready_ms: None,
        ended_ms: None,
        end_reason: None,
        reported: false,
        placement: Default::default(),
    };
    let key = protocol::sessions::sessions_key(&args.redis_key_prefix);
    redis::cmd("HSET")
        .arg(&key)
        .arg(&sid)
        .arg(serde_json::to_string(&record)?)
        .query_async::<()>(&mut conn)
        .await?;
    let ticket = secret.mint(&Claims::game("bench", &sid, protocol::ticket::unix_now(), 3600));
    let join = format!("JOIN {ticket}\n").into_bytes();

    let mut paths = vec![
        ("direct", echo, Some(std::process::id())),
        ("matchplane", args.proxy_addr, args.proxy_pid),
    ];
    if let Some(haproxy) = args.haproxy_addr {
        paths.push(("haproxy", haproxy, args.haproxy_pid));
    }
    if let Some(haproxy) = args.haproxy_splice_addr {
        paths.push(("haproxy+splice", haproxy, args.haproxy_pid));
    }
    let mut results = Vec::new();
    for (name, addr, pid) in paths {
        eprintln!("bench-proxy: measuring {name} ({addr}) ...");
        let one = throughput(addr, &join, 1, args.seconds, pid).await?;
        let many = throughput(addr, &join, 64, args.seconds, pid).await?;
        results.push(PathResult {
            throughput_1_mib_s: one.mib_s,
            throughput_64_mib_s: many.mib_s,
            ping_pong: ping_pong(addr, &join, args.round_trips).await?,
            cpu: cpu_per_gib(&[&one, &many]),
            path: name.to_owned(),
        });
    }
    redis::cmd("HDEL")
        .arg(&key)
        .arg(&sid)
        .query_async::<()>(&mut conn)
        .await?;
    Ok(results)
}

/// The results as a table with ratios against the direct path and each HAProxy.
pub fn render(results: &[PathResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>12} {:>13} {:>11} {:>11} {:>10} {:>10}",
        "path", "1 conn MiB/s", "64 conn MiB/s", "p50 RTT µs", "p99 RTT µs", "CPU s/GiB", "in kernel"
    );
    for r in results {
        let (cpu, kernel) = match r.cpu {
            Some(c) if c.total_s() > 0.0 => (
                format!("{:.3}", c.total_s()),
                format!("{:.1}%", 100.0 * c.kernel_s / c.total_s()),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "{:<15} {:>12.0} {:>13.0} {:>11.1} {:>11.1} {:>10} {:>10}",
            r.path,
            r.throughput_1_mib_s,
            r.throughput_64_mib_s,
            r.ping_pong.p50_ms * 1000.0,
            r.ping_pong.p99_ms * 1000.0,
            cpu,
            kernel
        );
    }
    let _ = writeln!(
        out,
        "CPU s/GiB: CPU time of the process in the middle per GiB echoed (direct: the client and echo server)"
    );
    let find = |name: &str| results.iter().find(|r| r.path == name);
    let Some(direct) = find("direct") else {
        return out;
    };
    let added_p50 = |r: &PathResult| (r.ping_pong.p50_ms - direct.ping_pong.p50_ms) * 1000.0;
    let Some(mp) = find("matchplane") else {
        return out;
    };
    let _ = writeln!(
        out,
        "matchplane vs direct: throughput x{:.2} (1 conn), x{:.2} (64 conns); added p50 {:.1} µs",
        mp.throughput_1_mib_s / direct.throughput_1_mib_s,
        mp.throughput_64_mib_s / direct.throughput_64_mib_s,
        added_p50(mp)
    );
    if let (Some(endpoints), Some(middle)) = (direct.cpu, mp.cpu) {
        // When CPU is what limits (every process here shares the same cores), throughput is
        // inversely proportional to the CPU spent per byte, end to end.
        let _ = writeln!(
            out,
            "CPU-bound ceiling vs direct: x{:.2} for a forwarder as costly as matchplane's proxy, x{:.2} for one spending only its kernel time",
            endpoints.total_s() / (endpoints.total_s() + middle.total_s()),
            endpoints.total_s() / (endpoints.total_s() + middle.kernel_s)
        );
    }
    for name in ["haproxy", "haproxy+splice"] {
        if let Some(hp) = find(name) {
            let _ = writeln!(
                out,
                "matchplane vs {name}: throughput x{:.2} (1 conn), x{:.2} (64 conns); added p50 {:.1} µs vs {:.1} µs",
                mp.throughput_1_mib_s / hp.throughput_1_mib_s,
                mp.throughput_64_mib_s / hp.throughput_64_mib_s,
                added_p50(mp),
                added_p50(hp)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name holding spaces and a `)`; utime 250 and stime 1000 ticks.
        let stat = "4242 (tokio) rt worker) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 1000 0 0 20 0 3 0 1 0";
        let cpu = CpuTimes::parse(stat, 100.0).expect("parses");
        assert_eq!(
            cpu,
            CpuTimes {
                user: 2.5,
                kernel: 10.0
            }
        );
        assert_eq!(CpuTimes::parse("4242 (x) S 1 2", 100.0), None);
        assert_eq!(CpuTimes::parse(stat, 0.0), None);
    }

    #[test]
    fn this_process_has_cpu_times() {
        let cpu = CpuTimes::of(std::process::id()).expect("/proc/self/stat is readable on Linux");
        assert!(cpu.user >= 0.0 && cpu.kernel >= 0.0);
        assert_eq!(CpuTimes::of(u32::MAX), None);
    }

    #[test]
    fn cpu_per_gib_needs_every_window() {
        let gib = 1024 * 1024 * 1024;
        let measured = Window {
            mib_s: 0.0,
            bytes: gib,
            cpu: Some(CpuTimes { user: 0.5, kernel: 1.5 }),
        };
        let unmeasured = Window {
            mib_s: 0.0,
            bytes: gib,
            cpu: None,
        };
        assert_eq!(
            cpu_per_gib(&[&measured, &measured]),
            Some(CpuPerGib {
                user_s: 0.5,
                kernel_s: 1.5
            })
        );
        assert_eq!(cpu_per_gib(&[&measured, &unmeasured]), None);
    }
}
