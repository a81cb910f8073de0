//! The swarm against the real stack (backend with the local runtime and the real game-server,
//! the proxy, Redis, PostgreSQL), with a handful of clients, checking its own report.

use std::time::Duration;

use clap::Parser;
use loadgen::swarm::SwarmArgs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "swarm-test-secret-0123456789";
const PLAYER_SECRET: &str = "swarm-test-player-secret-0123456789abcdef";

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    swarm: SwarmArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_swarm_plays_through_the_proxy_and_reports_it() {
    let prefix = testkit::unique_prefix();
    let db = testkit::fresh_database().await;
    let game_server = testkit::built_binary("game-server");

    let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy_listener.local_addr().unwrap();
    let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend_listener.local_addr().unwrap();
    let redis = testkit::redis_url();
    let backend = backend::Settings::builder()
        .redis_url(&redis)
        .database_url(&db)
        .key_prefix(&prefix)
        .ticket_secret(SECRET)
        .player_token_secret(PLAYER_SECRET)
        .runtime(backend::RuntimeKind::Local)
        .game_server_bin(&game_server)
        .session_size(3)
        .public_address("127.0.0.1", proxy_addr.port())
        .build()
        .unwrap();
    let backend_url = format!("http://{backend_addr}");
    let proxy = service::cli::parse_without_env::<proxy::Config, _, _>([
        "proxy",
        "--backend-url",
        &backend_url,
        "--redis-url",
        &redis,
        "--redis-key-prefix",
        &prefix,
        "--ticket-secret",
        SECRET,
        "--player-token-secret",
        PLAYER_SECRET,
    ])
    .unwrap()
    .validate()
    .unwrap();
    let shutdown = CancellationToken::new();
    let backend_task = tokio::spawn(backend::run(backend_listener, backend, shutdown.clone()));
    let proxy_task = tokio::spawn(proxy::run(proxy_listener, proxy, shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let dir = std::env::temp_dir().join(format!("swarm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, chart) = (dir.join("report.json"), dir.join("latency.svg"));
    let target = format!("http://{proxy_addr}");
    let args = service::cli::parse_without_env::<Wrapper, _, _>([
        "swarm",
        "--target-url",
        &target,
        "--clients",
        "6",
        "--match-duration",
        "1",
        "--session-size",
        "3",
        "--progress",
        "none",
        "--player-token-secret",
        PLAYER_SECRET,
        "--json",
        json.to_str().unwrap(),
        "--chart",
        chart.to_str().unwrap(),
    ])
    .unwrap()
    .swarm;
    let report = loadgen::swarm::run(args).await.unwrap();
    assert!(report.passed(), "{}", report.render());
    assert_eq!(
        (report.clients, report.ok, report.failed, report.sessions),
        (6, 6, 0, 2)
    );
    assert_eq!(report.session_sizes.get(&3), Some(&2));
    assert_eq!(report.latency_ms.join_to_matched.count, 6);
    assert!(
        report.latency_ms.whole_life.p50_ms >= 1000.0,
        "a 1 s match lasts at least 1 s"
    );

    // The files the CLI writes: the same report as JSON, and a chart.
    std::fs::write(&json, serde_json::to_vec(&report).unwrap()).unwrap();
    std::fs::write(&chart, report.chart_svg()).unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for key in [
        "clients",
        "ok",
        "failed",
        "outcomes",
        "latency_ms",
        "sessions",
        "session_sizes",
        "invariants",
        "wall_seconds",
    ] {
        assert!(parsed.get(key).is_some(), "report JSON lacks {key}");
    }
    assert_eq!(parsed["invariants"]["ok"], true);
    assert_eq!(parsed["outcomes"]["ok"], 6);
    assert!(std::fs::read_to_string(&chart).unwrap().contains("<polyline"));

    shutdown.cancel();
    backend_task.await.unwrap().unwrap();
    proxy_task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
