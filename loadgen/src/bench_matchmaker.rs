//! `loadgen bench-matchmaker`: drives `POST /match/join` at full speed against a backend
//! (meant for `RUNTIME=none`) and reports joins/s and players placed in sessions/s, for the
//! `fifo` scenario (plain joins to the default queue) or the `ranked` one (a service joining
//! ranked tickets with parties to the `ranked` queue).
//!
//! Placement is read from the backend's own `mp_sessions_formed_total` counters, so the
//! figure is what the matcher did, not what the client assumed. With `--redis-url`, the
//! session records are read back too: each player's time from join to its session forming,
//! and, for ranked, the sessions' quality beside the same tickets matched in join order.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use protocol::api::JoinRequest;

use crate::http::{CredentialArgs, HttpClient};
use crate::scenario::{QualitySummary, Scenario, Ticket, join_order_quality, ranked};
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
    /// Who joins: plain joins to the default queue, or ranked tickets (needs SERVICE_TOKEN).
    #[arg(long, value_enum, default_value = "fifo")]
    pub scenario: Scenario,
    /// The backend's Redis, to read the sessions formed back (time to match, quality).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// The backend's REDIS_KEY_PREFIX.
    #[arg(long, default_value = "mp")]
    pub redis_key_prefix: String,
    /// Also measure, in the same run, the Redis-only ceiling of the join path: the backend's own
    /// join code (the same script, keys and arguments) called at the same concurrency straight
    /// against `--redis-url`, no HTTP, under a key prefix of its own (removed after).
    #[arg(long, requires = "redis_url")]
    pub redis_ceiling: bool,
    /// The backend's MATCHMAKING_CONFIG, to build the ranked tickets' documents for the ceiling
    /// exactly as the backend does.
    #[arg(long)]
    pub matchmaking_config: Option<std::path::PathBuf>,
    /// Players per session in the ranked queue, for the join-order baseline.
    #[arg(long, default_value_t = 6)]
    pub ranked_session_size: usize,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

/// What the session records say about one run's sessions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Formed {
    pub sessions: usize,
    pub players: usize,
    /// Each player's time from its join to its session forming, in ms.
    pub time_to_match_ms: Summary,
    /// The sessions formed (ranked: their skill spread and worst latency).
    pub quality: QualitySummary,
    /// The same tickets matched in join order (ranked only).
    pub join_order: Option<QualitySummary>,
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
    pub scenario: Scenario,
    /// Tickets joined (a party is one).
    pub tickets: usize,
    pub tickets_per_second: f64,
    /// Read back from Redis, with `--redis-url`.
    pub formed: Option<Formed>,
    /// The Redis-only ceiling of the same joins, with `--redis-ceiling`.
    pub redis_ceiling: Option<Ceiling>,
}

/// The join path without HTTP: the backend's store joining the same tickets.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ceiling {
    /// How long the backend's history took to catch up (its outbox to empty) before the
    /// ceiling was measured, so that PostgreSQL writes left over from the HTTP run do not
    /// share the machine with it.
    pub quiet_after_seconds: f64,
    /// Whether it caught up within [`QUIET_PATIENCE`].
    pub quiet: bool,
    pub tickets: usize,
    pub seconds: f64,
    pub tickets_per_second: f64,
    pub join_latency: Summary,
    /// The HTTP run's tickets/s over this.
    pub ratio: f64,
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
    anyhow::ensure!(
        !matches!(args.scenario, Scenario::Churn | Scenario::Rollout),
        "the matchmaker benchmark joins fifo or ranked tickets; churn and rollout are a swarm's scenarios"
    );
    let client = HttpClient::new(&args.target_url, Duration::from_secs(30));
    let placed_before = players_placed(&client.text("/metrics").await?);
    // The joins, with their tokens, are made before the clock starts: a real identity service
    // issues tokens, not the client in the middle of a join.
    let tickets: Vec<Ticket> = match args.scenario {
        Scenario::Fifo | Scenario::Churn | Scenario::Rollout => Vec::new(),
        Scenario::Ranked => ranked(&args.id_prefix, args.players, 42),
    };
    let (bodies, authorizations): (Vec<JoinRequest>, Vec<Option<String>>) = match args.scenario {
        Scenario::Fifo | Scenario::Churn | Scenario::Rollout => (0..args.players)
            .map(|i| {
                let player = format!("{}-{i}", args.id_prefix);
                let auth = args.credentials.authorization(&player, Duration::from_secs(3600));
                (JoinRequest::player(&player), auth)
            })
            .unzip(),
        Scenario::Ranked => {
            let service = args
                .credentials
                .service_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!("the ranked scenario joins as the studio's service: set SERVICE_TOKEN")
                })?;
            tickets
                .iter()
                .map(|t| (t.join_request(), Some(format!("Bearer {service}"))))
                .unzip()
        }
    };
    let total = bodies.len();
    let bodies = Arc::new(bodies);
    let authorizations = Arc::new(authorizations);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, next, errors, last_error) = (client.clone(), next.clone(), errors.clone(), last_error.clone());
        let (authorizations, bodies) = (authorizations.clone(), bodies.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return latencies;
                }
                let t = Instant::now();
                match client
                    .json::<serde_json::Value>(
                        Method::POST,
                        "/match/join",
                        Some(&bodies[i]),
                        authorizations[i].as_deref(),
                    )
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
    let mut latencies = Vec::with_capacity(total);
    for worker in workers {
        latencies.extend(worker.await?);
    }
    let join_seconds = started.elapsed().as_secs_f64();

    // Placement finishes when the counters stop moving short of a full session.
    // Players whose join was answered (a failed ranked join may have been a party of two:
    // then this waits for two players too many, and the counters settling ends the wait).
    let joined = args.players.saturating_sub(errors.load(Ordering::Relaxed)) as u64;
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
    let formed = match &args.redis_url {
        Some(url) => Some(read_back(&args, url, &tickets).await?),
        None => None,
    };
    let tickets_per_second = total as f64 / join_seconds;
    let redis_ceiling = match &args.redis_url {
        Some(url) if args.redis_ceiling => Some(ceiling(&args, url, &bodies, tickets_per_second).await?),
        _ => None,
    };
    let result = BenchMatchmakerResult {
        scenario: args.scenario,
        tickets: total,
        tickets_per_second,
        formed,
        redis_ceiling,
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

/// Longest the ceiling waits for the backend's history to catch up.
const QUIET_PATIENCE: Duration = Duration::from_secs(60);

/// Waits until the backend's history outbox (`{prefix}:outbox`, whose entries the history
/// writer deletes once PostgreSQL has them) is empty, at most `patience`; returns the time
/// waited and whether it emptied.
pub async fn wait_for_history(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    patience: Duration,
) -> anyhow::Result<(Duration, bool)> {
    let outbox = matchmaking_core::keys::Keys::new(prefix).outbox();
    let started = Instant::now();
    loop {
        let left: u64 = redis::cmd("XLEN").arg(&outbox).query_async(conn).await?;
        if left == 0 {
            return Ok((started.elapsed(), true));
        }
        if started.elapsed() >= patience {
            return Ok((started.elapsed(), false));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Joins the same tickets through the backend's store at the same concurrency, straight
/// against Redis, under a key prefix of its own (no matcher drains it), then removes its keys.
/// Measured once the backend's history has caught up, so only the joins load the machine.
async fn ceiling(
    args: &BenchMatchmakerArgs,
    url: &str,
    bodies: &[JoinRequest],
    http_tickets_per_second: f64,
) -> anyhow::Result<Ceiling> {
    use matchmaking_core::tickets::{Joiner, check};

    let queues = match &args.matchmaking_config {
        Some(path) => matchmaking_core::queues::Queues::load(path).map_err(|e| anyhow::anyhow!(e))?,
        None => matchmaking_core::queues::Queues::default_only(matchmaking_core::store::FormRules {
            size: 12,
            min_partial: 1,
            flush_wait_ms: 15_000,
        }),
    };
    let mut joins = Vec::with_capacity(bodies.len());
    for body in bodies {
        let name = body.queue.as_deref().unwrap_or(matchmaking_core::queues::DEFAULT_QUEUE);
        let queue = queues.get(name).ok_or_else(|| {
            anyhow::anyhow!("no queue {name:?} in the matchmaking config (pass --matchmaking-config)")
        })?;
        let ticket =
            check(queue, body, Joiner::Service).map_err(|e| anyhow::anyhow!("ticket for {}: {e}", body.player_id))?;
        joins.push((queue.name.clone(), ticket));
    }
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let (waited, quiet) = wait_for_history(&mut conn, &args.redis_key_prefix, QUIET_PATIENCE).await?;
    if !quiet {
        tracing::warn!(waited = ?waited, "the backend's history did not catch up; measuring the ceiling beside it");
    }
    let prefix = format!("{}-ceiling-{}", args.redis_key_prefix, std::process::id());
    let store = matchmaking_core::store::Store::connect(url, &prefix).await?;
    // Each queue's handle scoped once, as the backend's matchmaking service does.
    let scoped: std::collections::HashMap<String, matchmaking_core::store::QueueStore> =
        queues.iter().map(|q| (q.name.clone(), store.queue(&q.name))).collect();
    let joins: Vec<(matchmaking_core::store::QueueStore, _)> = joins
        .into_iter()
        .map(|(name, ticket)| (scoped[&name].clone(), ticket))
        .collect();
    let joins = Arc::new(joins);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (joins, next) = (joins.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((queue, ticket)) = joins.get(i) else {
                    return anyhow::Ok(latencies);
                };
                let t = Instant::now();
                queue
                    .join(
                        &ticket.players,
                        ticket.doc.as_deref(),
                        matchmaking_core::store::now_ms(),
                    )
                    .await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(joins.len());
    for worker in workers {
        latencies.extend(worker.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    // Its keys go (they share one hash tag, so one pattern finds them all).
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    }
    let tickets_per_second = joins.len() as f64 / seconds;
    Ok(Ceiling {
        quiet_after_seconds: waited.as_secs_f64(),
        quiet,
        tickets: joins.len(),
        seconds,
        tickets_per_second,
        join_latency: summarize(&latencies),
        ratio: http_tickets_per_second / tickets_per_second,
    })
}

/// The run's sessions, read back from their records.
async fn read_back(args: &BenchMatchmakerArgs, url: &str, tickets: &[Ticket]) -> anyhow::Result<Formed> {
    let mut conn = redis::Client::open(url)?.get_multiplexed_async_connection().await?;
    let key = protocol::sessions::sessions_key(&args.redis_key_prefix);
    let mine = format!("{}-", args.id_prefix);
    let mut cursor = 0u64;
    let mut waits = Vec::new();
    let mut quality = Vec::new();
    let mut sessions = 0;
    loop {
        let (next, page): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
            .arg(&key)
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        for (_, raw) in page {
            let Ok(record) = serde_json::from_str::<protocol::sessions::SessionRecord>(&raw) else {
                continue;
            };
            if !record.players.first().is_some_and(|p| p.starts_with(&mine)) {
                continue;
            }
            sessions += 1;
            waits.extend(
                record
                    .joined_ms
                    .iter()
                    .map(|j| Duration::from_millis(u64::try_from(record.created_ms - j).unwrap_or(0))),
            );
            let p = &record.placement;
            if let (Some(spread), Some(latency)) = (p.skill_spread, p.max_latency_ms) {
                quality.push((spread, latency));
            }
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    Ok(Formed {
        sessions,
        players: waits.len(),
        time_to_match_ms: summarize(&waits),
        quality: QualitySummary::of(&quality),
        join_order: (!tickets.is_empty()).then(|| join_order_quality(tickets, args.ranked_session_size)),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn placed_players_come_from_the_size_labels() {
        let metrics = "# TYPE mp_sessions_formed_total counter\nmp_sessions_formed_total{size=\"12\"} 10\nmp_sessions_formed_total{size=\"3\"} 2\nmp_joins_total{result=\"queued\"} 5\n";
        assert_eq!(super::players_placed(metrics), 126);
    }
}
