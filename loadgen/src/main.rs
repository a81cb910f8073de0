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
    /// Drive POST /match/join at full speed against a backend with RUNTIME=none.
    BenchMatchmaker(loadgen::bench_matchmaker::BenchMatchmakerArgs),
    /// Echo traffic direct, through matchplane's proxy and through HAProxy, side by side.
    BenchProxy(loadgen::bench_proxy::BenchProxyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    service::telemetry::init(&cli.log, "warn");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Swarm(args) => swarm(args).await,
            Command::BenchProxy(args) => {
                let json = args.json.clone();
                match loadgen::bench_proxy::run(args).await {
                    Ok(results) => {
                        print!("{}", loadgen::bench_proxy::render(&results));
                        if let Some(path) = json
                            && let Err(e) = std::fs::write(&path, serde_json::to_vec_pretty(&results).unwrap_or_default())
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
                match loadgen::bench_matchmaker::run(args).await {
                    Ok(result) => {
                        println!(
                            "bench-matchmaker: {} joins in {:.2} s = {:.0} joins/s ({} errors); {} players placed in {:.2} s = {:.0} players/s; join latency p50 {:.2} ms p99 {:.2} ms",
                            result.players, result.join_seconds, result.joins_per_second, result.errors,
                            result.players_placed, result.place_seconds, result.placed_per_second,
                            result.join_latency.p50_ms, result.join_latency.p99_ms
                        );
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
