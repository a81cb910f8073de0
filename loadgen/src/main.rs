//! The `loadgen` binary.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about = "matchplane's client swarm and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    log: service::telemetry::LogArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Simulated players through the proxy: join, wait, connect, play, verify; then a summary.
    Swarm(loadgen::swarm::SwarmArgs),
    /// The floor under a swarm: as many players at once, each asking once for its status
    /// (nothing queued), through the same proxy; p50/p99 of the answers.
    Floor(loadgen::floor::FloorArgs),
    /// Drive POST /match/join at full speed against a backend with RUNTIME=none.
    BenchMatchmaker(loadgen::bench_matchmaker::BenchMatchmakerArgs),
    /// Echo traffic direct, through matchplane's proxy and through HAProxy, side by side.
    BenchProxy(loadgen::bench_proxy::BenchProxyArgs),
    /// Game datagrams to a UDP echo server, direct and through matchplane's proxy, side by side.
    BenchUdp(loadgen::bench_udp::BenchUdpArgs),
    /// Print a player token (HS256, from PLAYER_TOKEN_SECRET), as a studio's identity service
    /// would issue it: for trying the API or a game by hand.
    Token(TokenArgs),
    /// Join as one player and, once matched, let an unmodified game client play through a local
    /// address: it connects (TCP) or sends its datagrams (UDP) there as to any server.
    Relay(loadgen::relay::RelayArgs),
    /// Players of a hosted third-party server (BZFlag, Sauerbraten): join, get matched, reach
    /// the server through the proxy and complete the game's own handshake; then a summary.
    Hosted(loadgen::hosted::HostedArgs),
    /// Measure the round trip to each region's proxy with its latency probe, and print the
    /// latency map (JSON) a join carries.
    Probe(loadgen::probe::ProbeArgs),
}

#[derive(Debug, clap::Args)]
struct TokenArgs {
    /// The player id (the token's `sub`).
    #[arg(long)]
    player: String,
    /// How long the token is valid.
    #[arg(long, default_value_t = 3600)]
    ttl_seconds: u64,
    /// A claim more, `NAME=VALUE` (repeatable): `--claim mmr=1650` for a queue that reads
    /// skill from the token. A VALUE that is JSON (a number, true, a list) is taken as such.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
    /// The key to sign with (HS256), as the studio's identity service would.
    #[arg(long, env = "PLAYER_TOKEN_SECRET", hide_env_values = true)]
    player_token_secret: Option<String>,
    /// `iss` of the token.
    #[arg(long, env = "PLAYER_TOKEN_ISSUER")]
    player_token_issuer: Option<String>,
    /// `aud` of the token.
    #[arg(long, env = "PLAYER_TOKEN_AUDIENCE")]
    player_token_audience: Option<String>,
}

/// `--claim NAME=VALUE`s as token claims; a registered claim or a malformed one is refused.
fn extra_claims(claims: &[String]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut extra = serde_json::Map::new();
    for claim in claims {
        let Some((name, value)) = claim.split_once('=').filter(|(name, _)| !name.is_empty()) else {
            return Err(format!("--claim must be NAME=VALUE, got {claim:?}"));
        };
        if ["sub", "iat", "exp", "iss", "aud", "nbf"].contains(&name) {
            return Err(format!(
                "--claim {name}: that claim is set by --player, --ttl-seconds or PLAYER_TOKEN_ISSUER/AUDIENCE"
            ));
        }
        let value = serde_json::from_str(value).unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        extra.insert(name.to_owned(), value);
    }
    Ok(extra)
}

/// `loadgen token`.
fn token(args: &TokenArgs) -> ExitCode {
    if !protocol::player::is_valid_player_id(&args.player) {
        eprintln!("loadgen: --player must be 1-128 characters of A-Z a-z 0-9 _ . : -");
        return ExitCode::from(2);
    }
    let Some(secret) = args.player_token_secret.as_deref().filter(|s| !s.is_empty()) else {
        eprintln!("loadgen: PLAYER_TOKEN_SECRET (--player-token-secret) is required to mint a player token");
        return ExitCode::from(2);
    };
    let extra = match extra_claims(&args.claims) {
        Ok(extra) => extra,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "{}",
        identity::mint_hs256_with(
            secret.as_bytes(),
            &args.player,
            args.ttl_seconds.max(60),
            args.player_token_issuer.as_deref().filter(|s| !s.is_empty()),
            args.player_token_audience.as_deref().filter(|s| !s.is_empty()),
            extra,
        )
    );
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Token(args) = &cli.command {
        return token(args);
    }
    service::telemetry::init(&cli.log, "warn");
    // A swarm holds thousands of sockets at once: room for them before the runtime's threads
    // start, so that its burst of connections never waits for the descriptor table to grow.
    if let Err(e) = service::cli::prepare_for_connections() {
        tracing::warn!(error = %e, "cannot raise the open-file limit or size the descriptor table ahead");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Swarm(args) => swarm(args).await,
            Command::Token(args) => token(&args),
            Command::Floor(args) => floor(args).await,
            Command::Relay(args) => {
                let stop = tokio_util::sync::CancellationToken::new();
                let on_signal = stop.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    on_signal.cancel();
                });
                match loadgen::relay::run(args, stop).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("loadgen: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::BenchUdp(args) => match loadgen::bench_udp::run(args).await {
                Ok(results) => {
                    print!("{}", loadgen::bench_udp::render(&results));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::Probe(args) => match loadgen::probe::run(&args).await {
                Ok(map) => {
                    println!("{}", serde_json::json!({ "latency_ms": map }));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("loadgen: {e:#}");
                    ExitCode::from(2)
                }
            },
            Command::Hosted(args) => match loadgen::hosted::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen: {e:#}");
                    ExitCode::FAILURE
                }
            },
            Command::BenchProxy(args) => {
                let kept = args.clone();
                match loadgen::bench_proxy::run(args).await {
                    Ok(results) => {
                        print!("{}", loadgen::bench_proxy::render(&results));
                        let report = loadgen::bench_proxy::Report::new(&kept, &results);
                        if let Some(path) = &kept.json
                            && let Err(e) = std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap_or_default())
                        {
                            eprintln!("loadgen: cannot write {}: {e}", path.display());
                            return ExitCode::FAILURE;
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("loadgen: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
            Command::BenchMatchmaker(args) => {
                let json = args.json.clone();
                let args_concurrency = args.concurrency;
                match loadgen::bench_matchmaker::run(args).await {
                    Ok(result) => {
                        println!(
                            "bench-matchmaker ({:?}): {} players in {} tickets joined in {:.2} s = {:.0} tickets/s ({} errors); {} players placed in {:.2} s = {:.0} players/s; join latency p50 {:.2} ms p99 {:.2} ms",
                            result.scenario, result.players, result.tickets, result.join_seconds, result.tickets_per_second,
                            result.errors, result.players_placed, result.place_seconds, result.placed_per_second,
                            result.join_latency.p50_ms, result.join_latency.p99_ms
                        );
                        if let Some(c) = &result.redis_ceiling {
                            println!(
                                "  redis-only ceiling (the same joins through the backend's store, {} at once, no HTTP): {} tickets in {:.2} s = {:.0} tickets/s, p50 {:.2} ms p99 {:.2} ms; HTTP path / ceiling = x{:.2}",
                                args_concurrency, c.tickets, c.seconds, c.tickets_per_second, c.join_latency.p50_ms, c.join_latency.p99_ms, c.ratio
                            );
                            println!(
                                "  (measured {}, {:.1} s after the joins)",
                                if c.quiet { "once the history had caught up" } else { "while the history was still catching up" },
                                c.quiet_after_seconds
                            );
                        }
                        if let Some(formed) = &result.formed {
                            let t = &formed.time_to_match_ms;
                            println!(
                                "  time to match (join to session formed), {} players in {} sessions: p50 {:.0} ms p90 {:.0} ms p99 {:.0} ms max {:.0} ms",
                                formed.players, formed.sessions, t.p50_ms, t.p90_ms, t.p99_ms, t.max_ms
                            );
                            if let Some(base) = &formed.join_order {
                                let q = &formed.quality;
                                println!(
                                    "  quality: mean skill spread {:.0} (join order: {:.0}); worst latency per session mean {:.0} ms, worst {:.0} ms (join order: mean {:.0} ms, worst {:.0} ms)",
                                    q.mean_skill_spread, base.mean_skill_spread, q.mean_max_latency_ms, q.worst_latency_ms,
                                    base.mean_max_latency_ms, base.worst_latency_ms
                                );
                            }
                        }
                        if let Some(path) = json
                            && let Err(e) = std::fs::write(&path, serde_json::to_vec_pretty(&result).unwrap_or_default())
                        {
                            eprintln!("loadgen: cannot write {}: {e}", path.display());
                            return ExitCode::FAILURE;
                        }
                        if result.errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
                    }
                    Err(e) => {
                        eprintln!("loadgen: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

async fn floor(args: loadgen::floor::FloorArgs) -> ExitCode {
    let json = args.json.clone();
    let result = match loadgen::floor::run(args).await {
        Ok(result) => result,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", loadgen::floor::render(&result));
    if let Some(path) = json
        && let Err(e) = std::fs::write(&path, serde_json::to_vec_pretty(&result).unwrap_or_default())
    {
        eprintln!("loadgen: cannot write {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    if result.errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn swarm(args: loadgen::swarm::SwarmArgs) -> ExitCode {
    let (json, chart) = (args.json.clone(), args.chart.clone());
    let report = match loadgen::swarm::run(args).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.render());
    if let Some(path) = json {
        match std::fs::write(&path, serde_json::to_vec_pretty(&report).unwrap_or_default()) {
            Ok(()) => println!("report JSON: {}", path.display()),
            Err(e) => eprintln!("loadgen: cannot write {}: {e}", path.display()),
        }
    }
    if let Some(path) = chart {
        match std::fs::write(&path, report.chart_svg()) {
            Ok(()) => println!("latency chart: {}", path.display()),
            Err(e) => eprintln!("loadgen: cannot write {}: {e}", path.display()),
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn claims_are_json_values_or_strings_and_the_registered_ones_are_refused() {
        let claims = super::extra_claims(&["mmr=1650".into(), "region=eu".into(), "roles=[\"a\"]".into()]).unwrap();
        assert_eq!(claims["mmr"], 1650);
        assert_eq!(claims["region"], "eu");
        assert_eq!(claims["roles"], serde_json::json!(["a"]));
        for bad in ["sub=bob", "exp=1", "=3", "novalue"] {
            assert!(super::extra_claims(&[bad.into()]).is_err(), "{bad}");
        }
    }
}
