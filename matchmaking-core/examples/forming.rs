//! The cost of forming with many tickets waiting (`make bench-forming`): the rule former on
//! N tickets in memory, then, against a Redis (`REDIS_URL`), whole rounds of the rule queue
//! (lease, read every waiting ticket, plan, commit) with N tickets queued.
//!
//! `cargo run --release -p matchmaking-core --example forming -- [N]`

use std::time::Instant;

use matchmaking_core::forming::{Pool, Ticket};
use matchmaking_core::queues::Queues;
use matchmaking_core::round;
use matchmaking_core::store::{Store, now_ms};

const QUEUE: &str = "queues:
  - name: ranked
    teams: 2
    team_size: 3
    max_party_size: 2
    match_on: [mode]
    skill: {attribute: skill, max_spread: 100, widen_by: 50, widen_every_seconds: 5, max_spread_limit: 600, balance_teams: true}
    latency: {attribute: latency_ms, max_ms: 60, widen_by: 20, widen_every_seconds: 5, max_ms_limit: 200}
    max_wait_seconds: 3600
";
const REGIONS: [&str; 3] = ["eu", "us", "asia"];

/// A deterministic spread of tickets: skills across 600-2400, homes across three regions, a
/// fifth of them pairs.
fn tickets(n: usize, joined: i64) -> Vec<Ticket> {
    (0..n)
        .map(|i| {
            let size = if i % 5 == 0 { 2 } else { 1 };
            let skill = 600.0 + ((i * 7919) % 1800) as f64;
            let home = (i * 31) % 3;
            let players: Vec<String> = (0..size).map(|k| format!("f{i}-{k}")).collect();
            let latency: Vec<(String, f64)> = REGIONS
                .iter()
                .enumerate()
                .map(|(r, name)| {
                    (
                        (*name).to_owned(),
                        if r == home { 20.0 + (i % 40) as f64 } else { 120.0 },
                    )
                })
                .collect();
            Ticket {
                id: players[0].clone(),
                version: i as u64,
                order: i as f64,
                joined_ms: joined + i as i64 / 100,
                skills: vec![skill; size],
                latencies: vec![latency; size],
                players,
                match_key: vec![if i % 2 == 0 { "ctf" } else { "koth" }.to_owned()],
            }
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(100_000), |a| a.parse())?;
    let queues = Queues::parse(QUEUE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let queue = queues.get("ranked").expect("defined above");
    let now = now_ms();

    // In memory: index and one round that places everyone it can.
    for round in 0..3 {
        let all = tickets(n, now - 1000);
        let started = Instant::now();
        let mut pool = Pool::new(queue, all);
        let indexed = started.elapsed();
        let plan = pool.form(now, usize::MAX);
        let formed = started.elapsed();
        println!(
            "in memory, {n} tickets (round {round}): index {:.1} ms, form {:.1} ms, {} sessions, {:.2} µs per session",
            indexed.as_secs_f64() * 1e3,
            (formed - indexed).as_secs_f64() * 1e3,
            plan.sessions.len(),
            (formed - indexed).as_secs_f64() * 1e6 / plan.sessions.len().max(1) as f64
        );
    }

    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("(set REDIS_URL for rounds against Redis)");
        return Ok(());
    };
    let prefix = format!("forming-{}", std::process::id());
    let store = Store::connect(&url, &prefix).await?;
    let ranked = store.queue("ranked");
    let started = Instant::now();
    for t in tickets(n, now - 1000) {
        let attributes: Vec<serde_json::Value> = t
            .players
            .iter()
            .enumerate()
            .map(|(k, _)| {
                serde_json::json!({"skill": t.skills[k], "mode": t.match_key[0],
                    "latency_ms": t.latencies[k].iter().cloned().collect::<std::collections::BTreeMap<String, f64>>()})
            })
            .collect();
        let doc = serde_json::json!({"players": t.players, "attributes": attributes}).to_string();
        ranked.join(&t.players, Some(&doc), t.joined_ms).await?;
    }
    println!("queued {n} tickets in {:.1} s", started.elapsed().as_secs_f64());
    // Rounds of at most 512 sessions, as the matcher runs them, with the queue still full.
    for round in 0..5 {
        let waiting = ranked.depth().await?;
        let started = Instant::now();
        let formed = round::run(queue, &ranked, "bench", 512, None).await?.formed;
        println!(
            "Redis round {round} with {waiting} tickets waiting: {} sessions in {:.1} ms",
            formed.len(),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
    let mut conn = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{{{prefix}}}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        redis::cmd("DEL").arg(&keys).query_async::<()>(&mut conn).await?;
    }
    Ok(())
}
