//! `loadgen bench-matchmaker`: drives `POST /match/join` at full speed against a backend
//! (meant for `RUNTIME=none`) and reports joins/s and players placed in sessions/s.
//!
//! Placement is read from the backend's own `mp_sessions_formed_total` counters, so the
//! figure is what the matcher did, not what the client assumed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use protocol::api::JoinRequest;

use crate::http::{CredentialArgs, HttpClient};
use crate::stats::{Summary, summarize};

/// Settings of one run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchMatchmakerArgs {
    /// Backend base URL (or the proxy's, with `/api`).
    #[arg(long, env = "TARGET_URL", default_value = "http://127.0.0.1:8081")]
    pub target_url: String,
    /// Distinct players to join.
    #[arg(long, default_value_t = 60_000)]
    pub players: usize,
    /// Requests in flight at once (one keep-alive connection each).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Prefix of the generated player ids (make it unique per run).
    #[arg(long, default_value = "bench")]
    pub id_prefix: String,
    /// Write the result as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

/// What a run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchMatchmakerResult {
    pub players: usize,
    pub errors: usize,
    pub join_seconds: f64,
    pub joins_per_second: f64,
    pub players_placed: u64,
    pub place_seconds: f64,
    pub placed_per_second: f64,
    pub join_latency: Summary,
}

/// Sum over `mp_sessions_formed_total{size="n"}` of n times the count.
fn players_placed(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix("mp_sessions_formed_total{size=\""))
        .filter_map(|rest| {
            let (size, rest) = rest.split_once("\"}")?;
            Some(size.parse::<u64>().ok()? * rest.trim().parse::<u64>().ok()?)
        })
        .sum()
}

/// Runs the benchmark.
pub async fn run(args: BenchMatchmakerArgs) -> anyhow::Result<BenchMatchmakerResult> {
    let client = HttpClient::new(&args.target_url, Duration::from_secs(30));
    let placed_before = players_placed(&client.text("/metrics").await?);
    // Tokens are minted before the clock starts: a real identity service issues them, not
    // the client in the middle of a join.
    let authorizations: Arc<Vec<Option<String>>> = Arc::new(
        (0..args.players)
            .map(|i| {
                args.credentials
                    .authorization(&format!("{}-{i}", args.id_prefix), Duration::from_secs(3600))
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, next, errors, last_error) = (client.clone(), next.clone(), errors.clone(), last_error.clone());
        let authorizations = authorizations.clone();
        let (total, prefix) = (args.players, args.id_prefix.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return latencies;
                }
                let body = JoinRequest::player(&format!("{prefix}-{i}"));
                let t = Instant::now();
                match client
                    .json::<serde_json::Value>(Method::POST, "/match/join", Some(&body), authorizations[i].as_deref())
                    .await
                {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        *last_error.lock().unwrap() = Some(e.to_string());
                    }
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(args.players);
    for worker in workers {
        latencies.extend(worker.await?);
    }
    let join_seconds = started.elapsed().as_secs_f64();

    // Placement finishes when the counters stop moving short of a full session.
    let joined = (args.players - errors.load(Ordering::Relaxed)) as u64;
    let placed_at = AtomicU64::new(0);
    let mut placed = 0;
    let mut still = 0;
    let mut place_seconds = join_seconds;
    while still < 20 {
        let now = players_placed(&client.text("/metrics").await?) - placed_before;
        if now != placed {
            placed = now;
            place_seconds = started.elapsed().as_secs_f64();
            still = 0;
        } else {
            still += 1;
        }
        placed_at.store(placed, Ordering::Relaxed);
        if placed >= joined {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some(e) = last_error.lock().unwrap().take() {
        tracing::warn!(error = %e, "last join error");
    }
    let result = BenchMatchmakerResult {
        players: args.players,
        errors: errors.load(Ordering::Relaxed),
        join_seconds,
        joins_per_second: args.players as f64 / join_seconds,
        players_placed: placed,
        place_seconds,
        placed_per_second: placed as f64 / place_seconds,
        join_latency: summarize(&latencies),
    };
    Ok(result)
}

#[cfg(test)]
mod tests {
    #[test]
    fn placed_players_come_from_the_size_labels() {
        let metrics = "# TYPE mp_sessions_formed_total counter\nmp_sessions_formed_total{size=\"12\"} 10\nmp_sessions_formed_total{size=\"3\"} 2\nmp_joins_total{result=\"queued\"} 5\n";
        assert_eq!(super::players_placed(metrics), 126);
    }
}
