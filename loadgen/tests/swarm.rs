//! The swarm against the real stack (backend with the local runtime and the real game-server,
//! the proxy, Redis, PostgreSQL), with a handful of clients, checking its own report.

use std::time::Duration;

use clap::Parser;
use loadgen::swarm::SwarmArgs;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "swarm-test-secret-0123456789abcdef";
const PLAYER_SECRET: &str = "swarm-test-player-secret-0123456789abcdef";
const SERVICE_TOKEN: &str = "swarm-test-service-token-0123456789abcdef";

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    swarm: SwarmArgs,
}

/// Backend (local runtime, real game servers) and proxy on Redis and PostgreSQL.
struct Stack {
    proxy_url: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    async fn start(configure: impl FnOnce(backend::SettingsBuilder) -> backend::SettingsBuilder) -> Stack {
        let prefix = testkit::unique_prefix();
        let db = testkit::fresh_database().await;
        let game_server = testkit::built_binary("game-server");
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy_listener.local_addr().unwrap();
        let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend_listener.local_addr().unwrap();
        let redis = testkit::redis_url();
        let backend = configure(
            backend::Settings::builder()
                .redis_url(&redis)
                .database_url(&db)
                .key_prefix(&prefix)
                .ticket_secret(SECRET)
                .player_token_secret(PLAYER_SECRET)
                .runtime(backend::RuntimeKind::Local)
                .game_server_bin(&game_server)
                .public_address("127.0.0.1", proxy_addr.port()),
        )
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
        let tasks = vec![
            tokio::spawn(backend::run(backend_listener, backend, shutdown.clone())),
            tokio::spawn(proxy::run(proxy_listener, proxy, shutdown.clone())),
        ];
        // Both ready (the backend past its start-up, the proxy with Redis) before any player.
        for url in [backend_url.clone(), format!("http://{proxy_addr}")] {
            let client = loadgen::http::HttpClient::new(&url, Duration::from_secs(2));
            testkit::eventually(Duration::from_secs(30), || async { client.text("/health").await.ok() }).await;
        }
        Stack {
            proxy_url: format!("http://{proxy_addr}"),
            shutdown,
            tasks,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await.unwrap().unwrap();
        }
    }
}

/// A player nobody can be matched with gives up at its time limit and leaves the queue, so
/// that no later session waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_that_gives_up_leaves_the_queue() {
    let stack = Stack::start(|b| b.session_size(3)).await;
    let prefix = format!("gives-up-{}", std::process::id());
    let args = service::cli::parse_without_env::<Wrapper, _, _>([
        "swarm",
        "--target-url",
        &stack.proxy_url,
        "--clients",
        "1",
        "--client-timeout",
        "1",
        "--id-prefix",
        &prefix,
        "--progress",
        "none",
        "--player-token-secret",
        PLAYER_SECRET,
    ])
    .unwrap()
    .swarm;
    let report = loadgen::swarm::run(args).await.unwrap();
    assert_eq!(report.outcomes.get("timeout"), Some(&1), "{}", report.render());
    let player = format!("{prefix}-0");
    let api = loadgen::http::HttpClient::new(&format!("{}/api", stack.proxy_url), Duration::from_secs(5));
    let auth = format!(
        "Bearer {}",
        identity::mint_hs256(PLAYER_SECRET.as_bytes(), &player, 60, None, None)
    );
    let status: protocol::api::MatchResponse = api
        .json(
            hyper::Method::GET,
            &format!("/match/status?player_id={player}"),
            None,
            Some(&auth),
        )
        .await
        .unwrap();
    assert_eq!(status.status, protocol::api::MatchStatus::Unknown, "{status:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_swarm_plays_through_the_proxy_and_reports_it() {
    let stack = Stack::start(|b| b.session_size(3)).await;
    let dir = std::env::temp_dir().join(format!("swarm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, chart) = (dir.join("report.json"), dir.join("latency.svg"));
    let target = stack.proxy_url.clone();
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
    // The time to play: every player saw its match running, after being matched.
    let l = &report.latency_ms;
    assert_eq!(l.join_to_running.count, 6);
    // Each player's join → running includes its join → matched, so every percentile does too.
    assert!(l.join_to_running.p50_ms >= l.join_to_matched.p50_ms);
    assert!(l.join_to_running.max_ms >= l.join_to_matched.max_ms);
    assert!(l.join_to_running.p50_ms < l.whole_life.p50_ms);
    // This machine's CPUs, read from before the first join to just after the last match ran.
    let cpu = report
        .cpu_busy_to_last_running
        .expect("/proc/stat is readable on Linux");
    assert!(cpu.busy > 0.0 && cpu.busy <= 1.0 && cpu.cpus >= 1, "{cpu:?}");
    assert!(
        cpu.seconds * 1000.0 >= l.join_to_running.max_ms && cpu.seconds <= report.wall_seconds,
        "{cpu:?}, {}",
        report.render()
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
        "cpu_busy_to_last_running",
    ] {
        assert!(parsed.get(key).is_some(), "report JSON lacks {key}");
    }
    assert_eq!(parsed["invariants"]["ok"], true);
    assert_eq!(parsed["outcomes"]["ok"], 6);
    assert_eq!(parsed["latency_ms"]["join_to_running"]["count"], 6);
    assert!(std::fs::read_to_string(&chart).unwrap().contains("<polyline"));

    stack.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A queue of 2 teams of 2 with parties, modes, skill and latency windows that widen fast, and
/// a short max wait for the few left over.
const RANKED_QUEUES: &str = "queues:
  - name: ranked
    teams: 2
    team_size: 2
    max_party_size: 2
    match_on: [mode]
    skill: {attribute: skill, max_spread: 100, widen_by: 300, widen_every_seconds: 1, max_spread_limit: 3000, balance_teams: true}
    latency: {attribute: latency_ms, max_ms: 60, widen_by: 60, widen_every_seconds: 1, max_ms_limit: 400}
    client_attributes: [latency_ms]
    max_wait_seconds: 4
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranked_swarm_joins_parties_as_the_service_and_checks_teams() {
    let dir = std::env::temp_dir().join(format!("swarm-ranked-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let queues = dir.join("queues.yaml");
    std::fs::write(&queues, RANKED_QUEUES).unwrap();
    let stack = Stack::start(|b| b.service_token(SERVICE_TOKEN).matchmaking_config(&queues)).await;
    let args = service::cli::parse_without_env::<Wrapper, _, _>([
        "swarm",
        "--target-url",
        &stack.proxy_url,
        "--clients",
        "24",
        "--match-duration",
        "1",
        "--session-size",
        "4",
        "--min-session-size",
        "4",
        "--progress",
        "none",
        "--scenario",
        "ranked",
        "--seed",
        "11",
        "--player-token-secret",
        PLAYER_SECRET,
        "--service-token",
        SERVICE_TOKEN,
    ])
    .unwrap()
    .swarm;
    let report = loadgen::swarm::run(args).await.unwrap();
    let text = report.render();
    eprintln!("{text}");
    assert!(report.passed(), "{text}");
    assert_eq!(report.clients, 24);
    assert_eq!(report.ok + report.timed_out, 24, "{text}");
    assert!(report.sessions >= 3, "most players play: {text}");
    assert_eq!(
        report.session_sizes.keys().copied().collect::<Vec<_>>(),
        vec![4],
        "{text}"
    );
    let ranked = &report.queues["ranked"];
    assert_eq!((ranked.players, ranked.timed_out), (report.ok, report.timed_out));
    assert_eq!(ranked.join_to_matched_ms.count, report.ok);
    let quality = ranked.quality.expect("ranked sessions carry their quality");
    assert_eq!(quality.sessions, report.sessions);
    assert!(ranked.join_order.is_some() && ranked.mean_team_skill_gap.is_some());
    assert!(
        text.contains("queue ranked: ") && text.contains("the same tickets in join order"),
        "{text}"
    );
    // Parties were joined (this seed has some), each on one team (the invariants above).
    assert!(ranked.players_in_parties >= 2, "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["scenario"], "ranked");
    assert_eq!(json["invariants"]["parties_split"], serde_json::json!([]));

    // Without the service's token the scenario cannot join anyone.
    let args = service::cli::parse_without_env::<Wrapper, _, _>([
        "swarm",
        "--target-url",
        &stack.proxy_url,
        "--scenario",
        "ranked",
    ])
    .unwrap()
    .swarm;
    let error = loadgen::swarm::run(args).await.unwrap_err().to_string();
    assert!(error.contains("SERVICE_TOKEN"), "{error}");
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Parser)]
struct FloorWrapper {
    #[command(flatten)]
    floor: loadgen::floor::FloorArgs,
}

fn floor_args(target: &str, secret: &str) -> loadgen::floor::FloorArgs {
    service::cli::parse_without_env::<FloorWrapper, _, _>([
        "floor",
        "--target-url",
        target,
        "--clients",
        "40",
        "--id-prefix",
        "floor-test",
        "--player-token-secret",
        secret,
    ])
    .unwrap()
    .floor
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_asks_each_player_status_once_and_queues_nobody() {
    let stack = Stack::start(|b| b).await;
    let result = loadgen::floor::run(floor_args(&stack.proxy_url, PLAYER_SECRET))
        .await
        .unwrap();
    let line = loadgen::floor::render(&result);
    assert_eq!((result.clients, result.ok, result.errors), (40, 40, 0), "{line}");
    let l = result.latency_ms;
    assert_eq!(l.count, 40);
    assert!(0.0 < l.p50_ms && l.p50_ms <= l.p99_ms && l.p99_ms <= l.max_ms, "{line}");
    assert!(result.wall_seconds * 1000.0 >= l.max_ms, "{line}");
    // How busy the CPUs were over the burst, where a clock tick passed in it.
    if let Some(cpu) = result.cpu_busy {
        assert!(
            (0.0..=1.0).contains(&cpu.busy) && cpu.seconds == result.wall_seconds,
            "{line}"
        );
        assert!(line.contains("; this machine's CPUs "), "{line}");
    }
    assert!(
        line.starts_with("floor: 40 players at once") && line.contains("40 ok, 0 failed"),
        "{line}"
    );

    // The same players again: still unknown to the matchmaker (a status request queues nobody).
    let again = loadgen::floor::run(floor_args(&stack.proxy_url, PLAYER_SECRET))
        .await
        .unwrap();
    assert_eq!((again.ok, again.errors), (40, 0), "{}", loadgen::floor::render(&again));

    // Tokens the stack does not trust: every request fails, and the result says why.
    let refused = loadgen::floor::run(floor_args(&stack.proxy_url, "not-the-players-secret-0123456789abcdef"))
        .await
        .unwrap();
    let line = loadgen::floor::render(&refused);
    assert_eq!(
        (refused.ok, refused.errors, refused.latency_ms.count),
        (0, 40, 0),
        "{line}"
    );
    assert!(
        refused.first_errors.len() == 5 && refused.first_errors[0].contains("status 401"),
        "{line}"
    );
    stack.stop().await;
}

/// The example profiles (`examples/servers.yaml`): BZFlag's and Sauerbraten's own servers.
fn example_servers() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/servers.yaml")
}

/// Whether Debian's package for `program` is installed; says so once when it is not.
fn installed(program: &str, package: &str) -> bool {
    let there = std::path::Path::new(program).exists();
    if !there {
        eprintln!("SKIPPED: {program} is not installed (apt-get install {package}); .ci/run installs it");
    }
    there
}

/// `loadgen hosted`: players of BZFlag's and Sauerbraten's own servers join, are matched, reach
/// the servers through the proxy with their tickets (TCP and UDP) and complete each game's
/// own handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosted_players_complete_each_games_own_handshake_through_the_proxy() {
    if !installed("/usr/games/bzfs", "bzflag-server") || !installed("/usr/games/cube2-server", "cube2-server") {
        return;
    }
    let stack = Stack::start(|b| b.matchmaking_config(example_servers())).await;
    for game in ["bzflag", "sauerbraten"] {
        let args = service::cli::parse_without_env::<HostedWrapper, _, _>([
            "hosted",
            "--target-url",
            &stack.proxy_url,
            "--queue",
            game,
            "--game",
            game,
            "--clients",
            "4",
            "--player-token-secret",
            PLAYER_SECRET,
        ])
        .unwrap()
        .hosted;
        loadgen::hosted::run(args)
            .await
            .unwrap_or_else(|e| panic!("{game}: {e:#}"));
    }
    stack.stop().await;
}

#[derive(Parser)]
struct HostedWrapper {
    #[command(flatten)]
    hosted: loadgen::hosted::HostedArgs,
}

#[derive(Parser)]
struct RelayWrapper {
    #[command(flatten)]
    relay: loadgen::relay::RelayArgs,
}

/// `loadgen relay` lets an unmodified game client play: the client talks to a local address
/// exactly as to its server (BZFlag's TCP handshake; Sauerbraten's ENet CONNECT over UDP) and
/// the relay speaks matchplane's side to the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_client_plays_through_the_relay_over_tcp_and_udp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !installed("/usr/games/bzfs", "bzflag-server") || !installed("/usr/games/cube2-server", "cube2-server") {
        return;
    }
    let stack = Stack::start(|b| b.matchmaking_config(example_servers())).await;
    let relay = |queue: &str, transport: &str, player: String| {
        service::cli::parse_without_env::<RelayWrapper, _, _>([
            "relay",
            "--target-url",
            &stack.proxy_url,
            "--queue",
            queue,
            "--transport",
            transport,
            "--player",
            &player,
            "--player-token-secret",
            PLAYER_SECRET,
        ])
        .unwrap()
        .relay
    };
    let stop = CancellationToken::new();
    // Four players make a session of either queue; each has a relay.
    let pid = std::process::id();
    let opened = futures_util::future::join_all(
        (0..4).map(|i| loadgen::relay::open_owned(relay("bzflag", "tcp", format!("tank-{pid}-{i}")))),
    )
    .await;
    for relay in opened {
        let relay = relay.unwrap();
        let local = relay.local;
        tokio::spawn(relay.serve(stop.clone()));
        let mut game = tokio::net::TcpStream::connect(local).await.unwrap();
        game.write_all(b"BZFLAG\r\n\r\n").await.unwrap();
        let mut hello = [0u8; 8];
        tokio::time::timeout(Duration::from_secs(10), game.read_exact(&mut hello))
            .await
            .expect("bzfs answers")
            .unwrap();
        assert_eq!(&hello, b"BZFS0221");
    }
    let opened = futures_util::future::join_all(
        (0..4).map(|i| loadgen::relay::open_owned(relay("sauerbraten", "udp", format!("frag-{pid}-{i}")))),
    )
    .await;
    for relay in opened {
        let relay = relay.unwrap();
        let local = relay.local;
        tokio::spawn(relay.serve(stop.clone()));
        let game = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        game.send_to(&loadgen::hosted::enet_connect(0x5EED_0001), local)
            .await
            .unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), game.recv_from(&mut buf))
            .await
            .expect("the server answers")
            .unwrap();
        assert_eq!(buf[4], 0x83, "VERIFY_CONNECT: {:02x?}", &buf[..n]);
        assert!(buf[..n].ends_with(&0x5EED_0001u32.to_be_bytes()));
    }
    stop.cancel();
    stack.stop().await;
}
