//! `loadgen floor`: what a burst of requests costs on its own, the floor under a swarm's
//! join → matched.
//!
//! CLIENTS players ask at once, each on a connection of its own through the proxy, for their
//! status (`GET /api/match/status`, answered at once): the same way in and out as a swarm's
//! join (a new client connection, the proxy's forwarding to the backend, the player token
//! checked, one Redis read), with nothing queued, matched or started. Run on a fresh stack
//! beside a swarm of as many players, its p99 is the part of the swarm's p99 join → matched
//! that no matchmaker could remove on the same machine: a join goes the same way, and more.

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use protocol::api::{MatchResponse, MatchStatus};
use serde::Serialize;
use tokio::time::Instant;

use crate::host_cpu::{Busy, Ticks};
use crate::http::{CredentialArgs, HttpClient};
use crate::stats::{Summary, summarize};

#[derive(Debug, Clone, clap::Args)]
pub struct FloorArgs {
    /// The proxy (or backend) base URL; requests go to `<url>/api/match/status`.
    #[arg(long, env = "TARGET_URL", default_value = "http://127.0.0.1:8080")]
    pub target_url: String,
    /// Players asking at once.
    #[arg(long, env = "CLIENTS", default_value_t = 50)]
    pub clients: usize,
    /// Player id prefix (default: unique per run), so the ids are players nobody queued.
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// Also write the result here as JSON.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

/// The burst's outcome.
#[derive(Debug, Serialize)]
pub struct FloorResult {
    pub clients: usize,
    /// Requests answered 200 with the status `unknown`.
    pub ok: usize,
    /// Requests that failed, or answered anything else; the first few reasons.
    pub errors: usize,
    pub first_errors: Vec<String>,
    /// From each player's start to its answer read, over the `ok` requests.
    pub latency_ms: Summary,
    /// From the first player's start to the last answer.
    pub wall_seconds: f64,
    /// How busy this machine's CPUs were meanwhile (Linux).
    pub cpu_busy: Option<Busy>,
}

/// Sends the burst and waits for every answer. Tokens are minted before the clock starts, as
/// a game client holds its token before the player presses "play".
pub async fn run(args: FloorArgs) -> anyhow::Result<FloorResult> {
    anyhow::ensure!(args.clients > 0, "CLIENTS must be at least 1");
    let prefix = args.id_prefix.clone().unwrap_or_else(|| crate::run_prefix("floor"));
    let api = Arc::new(HttpClient::new(
        &format!("{}/api", args.target_url.trim_end_matches('/')),
        Duration::from_secs(30),
    ));
    let players: Vec<(String, Option<String>)> = (0..args.clients)
        .map(|i| {
            let player = format!("{prefix}-{i}");
            let auth = args.credentials.authorization(&player, Duration::from_secs(3600));
            (format!("/match/status?player_id={player}"), auth)
        })
        .collect();
    let cpu_before = Ticks::now();
    let started = Instant::now();
    let tasks: Vec<_> = players
        .into_iter()
        .map(|(path, auth)| {
            let api = api.clone();
            tokio::spawn(async move {
                let at = Instant::now();
                let answer = api
                    .json::<MatchResponse>(Method::GET, &path, None, auth.as_deref())
                    .await;
                match answer {
                    Ok(status) if status.status == MatchStatus::Unknown => Ok(at.elapsed()),
                    Ok(status) => Err(format!("expected unknown, got {:?}", status.status)),
                    Err(e) => Err(e.to_string()),
                }
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(args.clients);
    let mut first_errors = Vec::new();
    let mut errors = 0;
    for task in tasks {
        match task.await? {
            Ok(latency) => latencies.push(latency),
            Err(e) => {
                errors += 1;
                if first_errors.len() < 5 {
                    first_errors.push(e);
                }
            }
        }
    }
    let wall = started.elapsed();
    let cpu_busy = cpu_before
        .zip(Ticks::now())
        .and_then(|(before, after)| Busy::between(before, after, wall.as_secs_f64()));
    Ok(FloorResult {
        clients: args.clients,
        ok: latencies.len(),
        errors,
        first_errors,
        latency_ms: summarize(&latencies),
        wall_seconds: wall.as_secs_f64(),
        cpu_busy,
    })
}

/// The summary line.
pub fn render(result: &FloorResult) -> String {
    let l = &result.latency_ms;
    let mut line = format!(
        "floor: {} players at once, one status request each (nothing queued): {} ok, {} failed; p50 {:.1} ms p90 {:.1} ms p99 {:.1} ms max {:.1} ms; all answered in {:.3} s",
        result.clients, result.ok, result.errors, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms, result.wall_seconds
    );
    if let Some(cpu) = &result.cpu_busy {
        line.push_str(&format!("; this machine's CPUs {}", cpu.describe()));
    }
    for e in &result.first_errors {
        line.push_str(&format!("\n  failed: {e}"));
    }
    line
}
