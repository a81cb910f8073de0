//! The whole stack (backend with real game servers, proxy, PostgreSQL) on a Redis of the
//! test's own, which fails mid-swarm: SIGKILLed and restarted with its append-only file,
//! restarted empty, and failed over by Sentinels to its replica. Every client must finish its
//! match (re-joining when the matchmaker forgot it), and every session must end up with
//! exactly one closed history row.

use std::collections::HashSet;
use std::time::Duration;

use clap::Parser;
use loadgen::report::Report;
use loadgen::swarm::SwarmArgs;
use sqlx::Row;
use testkit::{RedisServer, eventually};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "faults-test-secret-0123456789abcdef";
const PLAYER_SECRET: &str = "faults-test-player-secret-0123456789abcdef";
const SERVICE: &str = "faults-test-service-token-0123456789abcdef";
const MASTER: &str = "mp-primary";

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    swarm: SwarmArgs,
}

/// Where the stack finds Redis.
enum Where {
    Url(String),
    Sentinels(Vec<String>),
}

struct Stack {
    db: String,
    proxy: String,
    backend: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Stack {
    async fn start(redis: Where) -> Stack {
        let prefix = testkit::unique_prefix();
        let db = testkit::fresh_database().await;
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy_listener.local_addr().unwrap();
        let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend_listener.local_addr().unwrap();
        let mut backend = backend::Settings::builder()
            .database_url(&db)
            .key_prefix(&prefix)
            .ticket_secret(SECRET)
            .player_token_secret(PLAYER_SECRET)
            .service_token(SERVICE)
            .runtime(backend::RuntimeKind::Local)
            .game_server_bin(testkit::built_binary("game-server"))
            .session_size(4)
            .flush_wait_seconds(2.0)
            .lost_session_grace_seconds(2.0)
            .public_address("127.0.0.1", proxy_addr.port());
        let backend_url = format!("http://{backend_addr}");
        let mut proxy_args = vec![
            "proxy".to_owned(),
            "--backend-url".into(),
            backend_url.clone(),
            "--redis-key-prefix".into(),
            prefix.clone(),
            "--ticket-secret".into(),
            SECRET.into(),
            "--player-token-secret".into(),
            PLAYER_SECRET.into(),
        ];
        match &redis {
            Where::Url(url) => {
                backend = backend.redis_url(url);
                proxy_args.extend(["--redis-url".into(), url.clone()]);
            }
            Where::Sentinels(sentinels) => {
                backend = backend.redis_sentinels(sentinels, MASTER);
                proxy_args.extend([
                    "--redis-sentinels".into(),
                    sentinels.join(","),
                    "--redis-sentinel-master".into(),
                    MASTER.into(),
                ]);
            }
        }
        let proxy = service::cli::parse_without_env::<proxy::Config, _, _>(proxy_args)
            .unwrap()
            .validate()
            .unwrap();
        let shutdown = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(backend::run(
                backend_listener,
                backend.build().unwrap(),
                shutdown.clone(),
            )),
            tokio::spawn(proxy::run(proxy_listener, proxy, shutdown.clone())),
        ];
        testkit::listening(proxy_addr.port()).await;
        testkit::listening(backend_addr.port()).await;
        Stack {
            db,
            proxy: format!("http://{proxy_addr}"),
            backend: backend_url,
            shutdown,
            tasks,
        }
    }

    /// A swarm of `clients` joining at 8 per second, playing matches of `seconds`.
    fn swarm(&self, clients: usize, seconds: u32) -> JoinHandle<Report> {
        let args = service::cli::parse_without_env::<Wrapper, _, _>([
            "swarm",
            "--target-url",
            &self.proxy,
            "--clients",
            &clients.to_string(),
            "--spawn-rate",
            "8",
            "--match-duration",
            &seconds.to_string(),
            "--session-size",
            "4",
            "--client-timeout",
            "120",
            "--progress",
            "none",
            "--player-token-secret",
            PLAYER_SECRET,
        ])
        .unwrap()
        .swarm;
        tokio::spawn(async move { loadgen::swarm::run(args).await.unwrap() })
    }

    /// Waits until some session is being played.
    async fn some_session_matched(&self) {
        let client = loadgen::http::HttpClient::new(&self.backend, Duration::from_secs(5));
        let auth = format!("Bearer {SERVICE}");
        eventually(Duration::from_secs(30), || async {
            let body: serde_json::Value = client
                .json(hyper::Method::GET, "/sessions/active", None, Some(&auth))
                .await
                .ok()?;
            body["sessions"]
                .as_array()?
                .iter()
                .any(|s| s["status"] == "matched")
                .then_some(())
        })
        .await;
    }

    /// Every history row closed (within a minute), exactly one per session the clients saw;
    /// returns the end reasons.
    async fn history_closed(&self, report_sessions: &HashSet<String>) -> Vec<String> {
        let pool = sqlx::PgPool::connect(&self.db).await.unwrap();
        let rows = eventually(Duration::from_secs(60), || async {
            let rows = sqlx::query("SELECT session_id::text AS sid, status, end_reason FROM matches")
                .fetch_all(&pool)
                .await
                .ok()?;
            rows.iter()
                .all(|r| r.get::<String, _>("status") == "ended")
                .then_some(rows)
        })
        .await;
        let ids: Vec<String> = rows.iter().map(|r| r.get::<String, _>("sid")).collect();
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "one row per session");
        for sid in report_sessions {
            assert!(unique.contains(sid), "session {sid}, played by clients, has a row");
        }
        rows.iter()
            .map(|r| r.get::<Option<String>, _>("end_reason").unwrap())
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("stops")
                .unwrap()
                .unwrap();
        }
    }
}

fn check_all_played(report: &Report) {
    assert!(report.passed(), "{}", report.render());
    assert_eq!(report.ok, report.clients, "{}", report.render());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_with_its_aof_loses_nothing() {
    let mut redis = RedisServer::start(true).await;
    let stack = Stack::start(Where::Url(redis.url())).await;
    let swarm = stack.swarm(32, 3);
    stack.some_session_matched().await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart().await;
    let report = swarm.await.unwrap();
    check_all_played(&report);
    assert_eq!(report.rejoins, 0, "nothing was forgotten: {}", report.render());
    let reasons = stack
        .history_closed(&report.session_ids.iter().cloned().collect())
        .await;
    assert!(!reasons.iter().any(|r| r == "lost"), "{reasons:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_closes_every_row_and_players_rejoin() {
    let mut redis = RedisServer::start(false).await;
    let stack = Stack::start(Where::Url(redis.url())).await;
    // Matches long enough that the janitor stops the servers of the forgotten sessions
    // before they end.
    let swarm = stack.swarm(32, 8);
    stack.some_session_matched().await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;
    let report = swarm.await.unwrap();
    check_all_played(&report);
    assert!(
        report.rejoins > 0,
        "players were forgotten and joined again: {}",
        report.render()
    );
    // The forgotten sessions' servers, stopped by the janitor, report `terminated` under their
    // signed tokens: their rows close with that, not `lost`.
    let reasons = stack
        .history_closed(&report.session_ids.iter().cloned().collect())
        .await;
    assert!(reasons.iter().any(|r| r == "terminated"), "{reasons:?}");
    assert!(!reasons.iter().any(|r| r == "lost"), "{reasons:?}");
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_mid_swarm_is_followed() {
    let mut primary = RedisServer::start(false).await;
    let replica = RedisServer::replica_of(primary.port).await;
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        sentinels.push(RedisServer::sentinel(primary.port, MASTER).await);
    }
    // The replica is in sync and every Sentinel knows it before the primary is lost.
    let replica_addr = replica.addr();
    for sentinel in &sentinels {
        let client = redis::Client::open(sentinel.url()).unwrap();
        eventually(Duration::from_secs(30), || async {
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg(MASTER)
                .query_async(&mut conn)
                .await
                .ok()?;
            replicas
                .iter()
                .any(|r| {
                    r.get("name") == Some(&replica_addr)
                        && r.get("master-link-status").map(String::as_str) == Some("ok")
                })
                .then_some(())
        })
        .await;
    }
    let addrs: Vec<String> = sentinels.iter().map(RedisServer::addr).collect();
    let stack = Stack::start(Where::Sentinels(addrs)).await;
    let swarm = stack.swarm(32, 3);
    stack.some_session_matched().await;
    primary.kill();
    let report = swarm.await.unwrap();
    check_all_played(&report);
    // The replica was promoted and the stack wrote to it.
    let mut conn = redis::Client::open(replica.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await.unwrap();
    assert_eq!(role.first(), Some(&redis::Value::BulkString(b"master".to_vec())));
    stack
        .history_closed(&report.session_ids.iter().cloned().collect())
        .await;
    stack.stop().await;
}
