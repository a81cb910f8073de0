//! matchplane's load generator: the client swarm and the benchmarks.

pub mod bench_matchmaker;
pub mod bench_proxy;
pub mod floor;
pub mod http;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod swarm;
