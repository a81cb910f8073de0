//! `loadgen bench-proxy`: the same TCP echo workload several ways in one run — straight to the
//! echo server, through matchplane's proxy, and through HAProxy in TCP mode (as configured by
//! default, and with kernel splicing turned on) — reporting bulk throughput with 1 and 64
//! connections, the round-trip latency of 64-byte ping-pong, and, where the process in the
//! middle is known, the CPU time it spent per GiB echoed, split into user space and kernel.
//!
//! On a shared machine one window of each path is at the mercy of whatever else runs, so the
//! paths are measured in rounds: every round measures each path once, in an order rotated
//! round by round, and a path's throughput is its median over the rounds.
//!
//! Every connection starts with the same `JOIN <ticket>` line (the proxy needs it to route;
//! the echo server returns it), so every path carries identical bytes. Two more paths measure
//! the proxy for servers of other identity modes: `none` (the proxy consumes the line, so the
//! echo server returns nothing of it) and `proxy-v2` (the proxy writes a PROXY v2 header in its
//! place, which the echo server returns and the client checks).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::sessions::{Identity, SessionRecord};
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
    /// Ping-pong round trips per path, spread evenly over the rounds.
    #[arg(long, default_value_t = 20_000)]
    pub round_trips: usize,
    /// Rounds: each measures every path once, in an order rotated round by round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Write the result as JSON here (see [`Report`]).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Where the processes were allowed to run, as the caller placed them (for example
    /// "shared" or "the proxy on CPU 1"), recorded in the JSON beside the figures.
    #[arg(long)]
    pub placement: Option<String>,
}

/// What `--json` writes: the figures with the conditions they were measured under, since the
/// same paths read differently under another CPU placement or congestion control.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report<'a> {
    /// `--placement` as given, or null.
    pub placement: Option<&'a str>,
    /// `net.ipv4.tcp_congestion_control` during the run, or null where it cannot be read.
    pub tcp_congestion_control: Option<String>,
    pub seconds_per_window: f64,
    pub rounds: u32,
    pub paths: &'a [PathResult],
}

impl<'a> Report<'a> {
    pub fn new(args: &'a BenchProxyArgs, paths: &'a [PathResult]) -> Report<'a> {
        let congestion = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        Report {
            placement: args.placement.as_deref(),
            tcp_congestion_control: congestion,
            seconds_per_window: args.seconds,
            rounds: args.rounds,
            paths,
        }
    }
}

/// One path's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathResult {
    pub path: String,
    /// Medians over the rounds.
    pub throughput_1_mib_s: f64,
    pub throughput_64_mib_s: f64,
    /// Each round's figure, in the order measured.
    pub rounds_1_mib_s: Vec<f64>,
    pub rounds_64_mib_s: Vec<f64>,
    /// Every round's ping-pong samples together.
    pub ping_pong: Summary,
    /// CPU time of the process in the middle (for `direct`: this process, the client and the
    /// echo server) over every throughput window, per GiB echoed.
    pub cpu: Option<CpuPerGib>,
    /// CPU time of the middle and of this process (the clients and the echo server) together,
    /// per GiB echoed: what the whole path costs the machine (for `direct`: the same as `cpu`).
    pub machine_cpu: Option<CpuPerGib>,
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
    /// This process's CPU time.
    own_cpu: Option<CpuTimes>,
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

/// What the echo server returns of a connection's preamble, by the session's identity mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returns {
    /// The JOIN line itself (`join-line`, and the paths that do not route).
    JoinLine,
    /// Nothing: the proxy consumed it (`none`).
    Nothing,
    /// The PROXY v2 header the proxy wrote in its place (`proxy-v2`).
    ProxyHeader,
}

/// What a connection of a path sends first, and what comes back of it.
type Preamble<'a> = (&'a [u8], Returns);

/// One path: its name, where it connects, the pid of the process in the middle, its preamble.
type PathSpec<'a> = (&'a str, SocketAddr, Option<u32>, Preamble<'a>);

/// Connects and completes the JOIN exchange (what the echo server returns of it).
async fn open(addr: SocketAddr, join: &[u8], returns: Returns) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(join).await?;
    let exchange = async {
        match returns {
            Returns::JoinLine => {
                let mut back = vec![0u8; join.len()];
                stream.read_exact(&mut back).await?;
                anyhow::ensure!(back == join, "the path did not return the JOIN line");
            }
            Returns::Nothing => {}
            Returns::ProxyHeader => {
                let mut header = vec![0u8; 16];
                stream.read_exact(&mut header).await?;
                let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
                header.resize(16 + rest, 0);
                stream.read_exact(&mut header[16..]).await?;
                let seen = protocol::proxy_header::decode(&header).map_err(|e| anyhow::anyhow!("{e}"))?;
                anyhow::ensure!(seen.player_id == "bench", "the header names {:?}", seen.player_id);
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await??;
    Ok(stream)
}

async fn throughput(
    addr: SocketAddr,
    (join, returns): Preamble<'_>,
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
        streams.push(open(addr, join, returns).await?);
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
    let start_own = CpuTimes::of(std::process::id());
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let end_cpu = watched.and_then(CpuTimes::of);
    let end_own = CpuTimes::of(std::process::id());
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
    Ok(Window {
        mib_s: bytes as f64 / elapsed / MIB,
        bytes,
        cpu: start_cpu.zip(end_cpu).map(|(start, end)| end.since(start)),
        own_cpu: start_own.zip(end_own).map(|(start, end)| end.since(start)),
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// CPU per GiB over the windows, of the process `cpu` picks, when every window has it.
fn cpu_per_gib(windows: &[Window], cpu: impl Fn(&Window) -> Option<CpuTimes>) -> Option<CpuPerGib> {
    let cpu = windows
        .iter()
        .try_fold(CpuTimes::default(), |sum, w| cpu(w).map(|c| sum.plus(c)))?;
    let gib = windows.iter().map(|w| w.bytes).sum::<u64>() as f64 / (MIB * 1024.0);
    (gib > 0.0).then(|| CpuPerGib {
        user_s: cpu.user / gib,
        kernel_s: cpu.kernel / gib,
    })
}

/// Adds `round_trips` ping-pong round-trip times (after 200 unrecorded ones) to `samples`.
async fn ping_pong(
    addr: SocketAddr,
    (join, returns): Preamble<'_>,
    round_trips: usize,
    samples: &mut Vec<Duration>,
) -> anyhow::Result<()> {
    let mut stream = open(addr, join, returns).await?;
    let ping = [0x42u8; 64];
    let mut pong = [0u8; 64];
    for i in 0..round_trips + 200 {
        let t = Instant::now();
        stream.write_all(&ping).await?;
        stream.read_exact(&mut pong).await?;
        if i >= 200 {
            samples.push(t.elapsed());
        }
    }
    Ok(())
}

/// The median of `values` (the mean of the middle two when even); 0 when empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The order paths are measured in, round `round`: rotated by one path per round.
fn round_order(paths: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..paths).map(move |i| (i + round) % paths.max(1))
}

/// What one path has gathered over the rounds so far.
#[derive(Default)]
struct Gathered {
    one: Vec<Window>,
    many: Vec<Window>,
    samples: Vec<Duration>,
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
        addr: Some(echo.to_string()),
        ..SessionRecord::matched("bench-proxy", vec!["bench".into()], "echo")
    };
    let key = protocol::sessions::sessions_key(&args.redis_key_prefix);
    // One session per identity mode, each with its own ticket.
    let mut joins = Vec::new();
    for identity in [Identity::JoinLine, Identity::None, Identity::ProxyV2] {
        let sid = format!("{sid}-{}", identity.as_str());
        let record = SessionRecord {
            identity,
            ..record.clone()
        };
        redis::cmd("HSET")
            .arg(&key)
            .arg(&sid)
            .arg(serde_json::to_string(&record)?)
            .query_async::<()>(&mut conn)
            .await?;
        let ticket = secret.mint(&Claims::game("bench", &sid, protocol::ticket::unix_now(), 3600));
        joins.push((sid, format!("JOIN {ticket}\n").into_bytes()));
    }
    let (line, none, v2) = (&joins[0].1, &joins[1].1, &joins[2].1);

    let mut paths: Vec<PathSpec<'_>> = vec![
        ("direct", echo, Some(std::process::id()), (line, Returns::JoinLine)),
        ("matchplane", args.proxy_addr, args.proxy_pid, (line, Returns::JoinLine)),
        (
            "mp identity none",
            args.proxy_addr,
            args.proxy_pid,
            (none, Returns::Nothing),
        ),
        (
            "mp proxy-v2",
            args.proxy_addr,
            args.proxy_pid,
            (v2, Returns::ProxyHeader),
        ),
    ];
    if let Some(haproxy) = args.haproxy_addr {
        paths.push(("haproxy", haproxy, args.haproxy_pid, (line, Returns::JoinLine)));
    }
    if let Some(haproxy) = args.haproxy_splice_addr {
        paths.push(("haproxy+splice", haproxy, args.haproxy_pid, (line, Returns::JoinLine)));
    }
    let rounds = args.rounds.max(1) as usize;
    let mut gathered: Vec<Gathered> = paths.iter().map(|_| Gathered::default()).collect();
    for round in 0..rounds {
        // Round trips left over from an uneven split go to the first round.
        let trips = args.round_trips / rounds + if round == 0 { args.round_trips % rounds } else { 0 };
        for i in round_order(paths.len(), round) {
            let (name, addr, pid, preamble) = paths[i];
            eprintln!(
                "bench-proxy: round {}/{rounds}: measuring {name} ({addr}) ...",
                round + 1
            );
            let g = &mut gathered[i];
            g.one.push(throughput(addr, preamble, 1, args.seconds, pid).await?);
            g.many.push(throughput(addr, preamble, 64, args.seconds, pid).await?);
            ping_pong(addr, preamble, trips, &mut g.samples).await?;
        }
    }
    let results = paths
        .iter()
        .zip(gathered)
        .map(|(&(name, _, pid, _), g)| {
            let rounds_1_mib_s: Vec<f64> = g.one.iter().map(|w| w.mib_s).collect();
            let rounds_64_mib_s: Vec<f64> = g.many.iter().map(|w| w.mib_s).collect();
            let windows: Vec<Window> = g.one.into_iter().chain(g.many).collect();
            let own_is_middle = pid == Some(std::process::id());
            PathResult {
                path: name.to_owned(),
                throughput_1_mib_s: median(&rounds_1_mib_s),
                throughput_64_mib_s: median(&rounds_64_mib_s),
                rounds_1_mib_s,
                rounds_64_mib_s,
                ping_pong: summarize(&g.samples),
                cpu: cpu_per_gib(&windows, |w| w.cpu),
                machine_cpu: cpu_per_gib(&windows, |w| {
                    if own_is_middle {
                        // Direct: the endpoints are the middle, so the machine's figure is the
                        // same reading (a second read of this process, a moment later, would
                        // differ from it by a clock tick).
                        w.cpu
                    } else {
                        w.cpu.zip(w.own_cpu).map(|(middle, own)| middle.plus(own))
                    }
                }),
            }
        })
        .collect();
    for (sid, _) in &joins {
        redis::cmd("HDEL")
            .arg(&key)
            .arg(sid)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(results)
}

/// The results as a table with ratios against the direct path and each HAProxy.
pub fn render(results: &[PathResult]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<15} {:>12} {:>13} {:>11} {:>11} {:>10} {:>10} {:>13}",
        "path", "1 conn MiB/s", "64 conn MiB/s", "p50 RTT µs", "p99 RTT µs", "CPU s/GiB", "in kernel", "machine s/GiB"
    );
    for r in results {
        let (cpu, kernel) = match r.cpu {
            Some(c) if c.total_s() > 0.0 => (
                format!("{:.3}", c.total_s()),
                format!("{:.1}%", 100.0 * c.kernel_s / c.total_s()),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        let machine = r
            .machine_cpu
            .map_or_else(|| "-".to_owned(), |c| format!("{:.3}", c.total_s()));
        let _ = writeln!(
            out,
            "{:<15} {:>12.0} {:>13.0} {:>11.1} {:>11.1} {:>10} {:>10} {:>13}",
            r.path,
            r.throughput_1_mib_s,
            r.throughput_64_mib_s,
            r.ping_pong.p50_ms * 1000.0,
            r.ping_pong.p99_ms * 1000.0,
            cpu,
            kernel,
            machine
        );
    }
    let rounds = results.first().map_or(0, |r| r.rounds_64_mib_s.len());
    let _ = writeln!(
        out,
        "throughput: median of {rounds} round(s); CPU s/GiB: CPU time of the process in the middle per GiB echoed (direct: the client and echo server); machine s/GiB: the middle's and the client and echo server's together"
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
    for name in ["mp identity none", "mp proxy-v2"] {
        if let Some(other) = find(name) {
            let _ = writeln!(
                out,
                "{name} vs matchplane (join-line): throughput x{:.2} (1 conn), x{:.2} (64 conns); added p50 {:.1} µs vs {:.1} µs",
                other.throughput_1_mib_s / mp.throughput_1_mib_s,
                other.throughput_64_mib_s / mp.throughput_64_mib_s,
                added_p50(other),
                added_p50(mp)
            );
        }
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
            if rounds > 1 {
                let by_round = |ours: &[f64], theirs: &[f64]| {
                    ours.iter()
                        .zip(theirs)
                        .map(|(a, b)| format!("x{:.2}", a / b))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let _ = writeln!(
                    out,
                    "  round by round: {} (1 conn); {} (64 conns)",
                    by_round(&mp.rounds_1_mib_s, &hp.rounds_1_mib_s),
                    by_round(&mp.rounds_64_mib_s, &hp.rounds_64_mib_s)
                );
            }
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
        let window = |cpu| Window {
            mib_s: 0.0,
            bytes: gib,
            cpu,
            own_cpu: Some(CpuTimes { user: 1.0, kernel: 1.0 }),
        };
        let measured = || window(Some(CpuTimes { user: 0.5, kernel: 1.5 }));
        assert_eq!(
            cpu_per_gib(&[measured(), measured()], |w| w.cpu),
            Some(CpuPerGib {
                user_s: 0.5,
                kernel_s: 1.5
            })
        );
        assert_eq!(cpu_per_gib(&[measured(), window(None)], |w| w.cpu), None);
        assert_eq!(
            cpu_per_gib(&[measured(), window(None)], |w| w.own_cpu),
            Some(CpuPerGib {
                user_s: 1.0,
                kernel_s: 1.0
            })
        );
        assert_eq!(cpu_per_gib(&[], |w| w.cpu), None);
    }

    #[test]
    fn the_table_compares_medians_and_each_round() {
        let path = |name: &str, one: [f64; 2], many: [f64; 2], p50_ms: f64| PathResult {
            path: name.to_owned(),
            throughput_1_mib_s: median(&one),
            throughput_64_mib_s: median(&many),
            rounds_1_mib_s: one.to_vec(),
            rounds_64_mib_s: many.to_vec(),
            ping_pong: Summary {
                count: 10,
                p50_ms,
                ..Summary::default()
            },
            cpu: Some(CpuPerGib {
                user_s: 0.1,
                kernel_s: 0.4,
            }),
            machine_cpu: Some(CpuPerGib {
                user_s: 0.3,
                kernel_s: 1.2,
            }),
        };
        let table = render(&[
            path("direct", [2000.0, 2000.0], [3000.0, 3000.0], 0.050),
            path("matchplane", [1100.0, 900.0], [1000.0, 1200.0], 0.080),
            path("haproxy+splice", [1000.0, 1000.0], [1000.0, 1000.0], 0.110),
        ]);
        assert!(table.contains("median of 2 round(s)"), "{table}");
        assert!(
            table.contains("matchplane vs haproxy+splice: throughput x1.00 (1 conn), x1.10 (64 conns); added p50 30.0 µs vs 60.0 µs"),
            "{table}"
        );
        assert!(
            table.contains("  round by round: x1.10 x0.90 (1 conn); x1.00 x1.20 (64 conns)"),
            "{table}"
        );
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("matchplane") && l.ends_with("1.500")),
            "{table}"
        );
    }

    #[test]
    fn medians_and_rotated_rounds() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[3.0]), 3.0);
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let orders: Vec<Vec<usize>> = (0..4).map(|r| round_order(3, r).collect()).collect();
        assert_eq!(orders, [vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1], vec![0, 1, 2]]);
        assert_eq!(round_order(0, 2).count(), 0);
    }
}
