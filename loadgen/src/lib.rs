//! matchplane's load generator: the client swarm and the benchmarks.

pub mod bench_matchmaker;
pub mod bench_proxy;
pub mod bench_udp;
pub mod client;
pub mod floor;
pub mod host_cpu;
pub mod hosted;
pub mod http;
pub mod probe;
pub mod relay;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod swarm;

/// A player id prefix unique to this run (`<kind>-<pid>-<unix ms>`), so a run's players are
/// nobody another run queued.
pub fn run_prefix(kind: &str) -> String {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{kind}-{}-{stamp}", std::process::id())
}
