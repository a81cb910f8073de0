//! Process plumbing every matchplane binary shares, kept apart from the contracts in
//! `protocol`:
//! - [`backoff`]: the one retry policy, with jitter, each retry counted and logged once;
//! - [`bucket`]: the one token bucket behind every rate limit;
//! - [`cli`]: config parsing (a bad config is one line and exit status 2), duration settings,
//!   signals, and [`cli::serve`], the rest of a multi-threaded server's `main`;
//! - [`telemetry`]: the logging set-up;
//! - [`net`]: listening sockets with a backlog sized for bursts;
//! - [`metrics`]: Prometheus exposition through `prometheus-client`, shared buckets and guards;
//! - `redis` (feature `redis`): Redis connections that survive restarts and follow failovers.

pub mod backoff;
pub mod bucket;
pub mod cli;
pub mod metrics;
pub mod net;
pub mod telemetry;

#[cfg(feature = "redis")]
pub mod redis;
