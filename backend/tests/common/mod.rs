//! Test kit for backend tests: the ephemeral Redis and PostgreSQL that `make test` starts
//! (`MP_TEST_REDIS_URL`, `MP_TEST_DATABASE_URL`), with a key prefix and a database per test.
#![allow(dead_code, unused_imports)]

use matchmaking_core::store::Store;

pub use testkit::LineClient as GameClient;
pub use testkit::{built_binary, eventually, fresh_database, redis_url, unique_prefix};

/// Joins `players` to `queue` as the studio's service and waits until each is matched; returns
/// each one's status body.
pub async fn matched_in(http: &Http, queue: &str, players: &[&str]) -> Vec<serde_json::Value> {
    for p in players {
        let (status, body) = http
            .post_as(
                &service_auth(),
                "/match/join",
                serde_json::json!({"player_id": p, "queue": queue}),
            )
            .await;
        assert!(status.is_success(), "{body}");
    }
    let mut statuses = Vec::new();
    for p in players {
        statuses.push(
            eventually(Duration::from_secs(60), || async {
                let body = http.status(p, 5.0).await;
                (body["status"] == "matched").then_some(body)
            })
            .await,
        );
    }
    statuses
}

/// Session `sid` as `GET /sessions/{id}` shows it, and how long its server took to be ready
/// (`ready_at` - `created_at`).
pub async fn ready_after(http: &Http, sid: &str) -> (serde_json::Value, time::Duration) {
    let (_, view) = http.get(&format!("/sessions/{sid}")).await;
    let at = |field: &str| {
        let text = view[field].as_str().unwrap_or_else(|| panic!("no {field} in {view}"));
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    };
    let took = at("ready_at") - at("created_at");
    (view, took)
}

pub async fn store() -> Store {
    Store::connect(&redis_url(), &unique_prefix()).await.unwrap()
}

use std::net::SocketAddr;
use std::time::Duration;

use backend::config::SettingsBuilder;
use backend::{RuntimeKind, Settings};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "backend-test-secret-0123456789abcdef";
pub const ADMIN: &str = "admin-token-for-tests";
/// The studio's services' token in tests.
pub const SERVICE: &str = "service-token-for-tests-0123456789abcdef";
/// The HS256 key of the test "identity service".
pub const PLAYER_SECRET: &str = "player-token-secret-for-tests-0123456789";

/// `Authorization` for `player`, as the studio's identity service would issue it.
pub fn player_auth(player: &str) -> String {
    format!(
        "Bearer {}",
        identity::mint_hs256(PLAYER_SECRET.as_bytes(), player, 600, None, None)
    )
}

/// `Authorization` for the studio's services.
pub fn service_auth() -> String {
    format!("Bearer {SERVICE}")
}

/// `Authorization` for an operator.
pub fn admin_auth() -> String {
    format!("Bearer {ADMIN}")
}

/// Settings for a test backend with `RUNTIME=none`, built in code (never from the shell's
/// environment); tests chain what they change and call `build`.
pub fn settings(prefix: &str, database_url: &str) -> SettingsBuilder {
    Settings::builder()
        .redis_url(&redis_url())
        .database_url(database_url)
        .key_prefix(prefix)
        .ticket_secret(SECRET)
        .admin_token(ADMIN)
        .service_token(SERVICE)
        .player_token_secret(PLAYER_SECRET)
        .runtime(RuntimeKind::None)
}

/// [`settings`] with the local runtime and this binary as the game server.
pub fn local_settings(prefix: &str, database_url: &str, game_server: &std::path::Path) -> SettingsBuilder {
    settings(prefix, database_url)
        .runtime(RuntimeKind::Local)
        .game_server_bin(game_server)
        // Wrapper scripts standing in for the server need the usual tools.
        .game_server_path("/usr/local/bin:/usr/bin:/bin")
}

/// A backend running in this process on a loopback port.
pub struct Backend {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    pub http: Http,
}

impl Backend {
    pub async fn start(settings: Settings) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Backend::start_on(listener, settings).await
    }

    /// Starts on a listener bound beforehand (when the settings must name its address).
    pub async fn start_on(listener: TcpListener, settings: Settings) -> Backend {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .try_init();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(backend::run(listener, settings, shutdown.clone()));
        let http = Http::new(addr);
        for _ in 0..100 {
            if http.get("/health").await.0 == StatusCode::OK {
                return Backend {
                    addr,
                    shutdown,
                    task,
                    http,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("backend did not become healthy");
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("backend stops")
            .unwrap()
            .unwrap();
    }
}

/// `method path` with `body` as JSON, as the operator (the admin token).
pub async fn as_admin(
    http: &Http,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (StatusCode, serde_json::Value) {
    let auth = admin_auth();
    let mut headers = vec![("authorization", auth.as_str())];
    if body.is_some() {
        headers.push(("content-type", "application/json"));
    }
    let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    http.request(method, path, &headers, body).await
}

/// A small JSON-over-HTTP client; every request is bounded.
#[derive(Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub fn new(addr: SocketAddr) -> Http {
        Http {
            base: format!("http://{addr}"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Sends exactly these headers (no `Authorization` unless given).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, serde_json::Value) {
        let (status, _, json) = self.exchange(method, path, headers, body).await;
        (status, json)
    }

    /// [`Http::request`], with the answer's headers.
    pub async fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (StatusCode, hyper::HeaderMap, serde_json::Value) {
        let mut builder = Request::builder().method(method).uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(Bytes::from(body))).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(45), self.client.request(request))
            .await
            .expect("response within 45 s")
            .expect("HTTP request");
        let status = response.status();
        let answer_headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, answer_headers, json)
    }

    /// A GET as the studio's services.
    pub async fn get(&self, path: &str) -> (StatusCode, serde_json::Value) {
        self.request(Method::GET, path, &[("authorization", &service_auth())], Vec::new())
            .await
    }

    /// A JSON POST as the studio's services.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
        self.post_as(&service_auth(), path, body).await
    }

    /// A JSON POST with this `Authorization`.
    pub async fn post_as(&self, auth: &str, path: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/json"), ("authorization", auth)],
            body.to_string().into_bytes(),
        )
        .await
    }

    /// A join by the player, with the player's own token.
    pub async fn join(&self, player: &str) -> (StatusCode, serde_json::Value) {
        self.post_as(
            &player_auth(player),
            "/match/join",
            serde_json::json!({ "player_id": player }),
        )
        .await
    }

    /// The player's status, asked with the player's own token.
    pub async fn status(&self, player: &str, wait: f64) -> serde_json::Value {
        let path = format!("/match/status?player_id={player}&wait={wait}");
        let (code, body) = self
            .request(
                Method::GET,
                &path,
                &[("authorization", &player_auth(player))],
                Vec::new(),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        body
    }
}

/// A TCP forwarder that can be unplugged: stands between a backend and PostgreSQL to take
/// the database away mid-test (every open connection is cut, new ones are refused).
pub struct Plug {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

use std::sync::Arc;

impl Plug {
    pub async fn new(target: SocketAddr) -> Plug {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (flag, cuts) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Plug { addr, up, cut }
    }

    pub fn unplug(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn plug(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The players whose matched status answers are `statuses` (one session's) join its server at
/// `addr` with their tickets and play the match to the end (the first asks for a 1 s match);
/// each sees `WELCOME` for that session and the match's last state `STOP`.
#[allow(dead_code)]
pub async fn play_to_the_end(addr: &str, statuses: &[serde_json::Value]) {
    use protocol::{GameState, ServerReply};
    let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
    let mut clients = Vec::new();
    for status in statuses {
        let mut client = GameClient::connect(addr).await;
        client
            .send(&format!("JOIN {}", status["ticket"].as_str().unwrap()))
            .await;
        assert!(matches!(client.recv().await, Some(ServerReply::Welcome { ref session_id, .. }) if *session_id == sid));
        clients.push(client);
    }
    clients[0].send("REQUEST_MATCH 1").await;
    for client in &mut clients {
        let mut states = Vec::new();
        while let Some(reply) = client.recv().await {
            if let ServerReply::State(state) = reply {
                states.push(state);
            }
        }
        assert_eq!(states.last(), Some(&GameState::Stop));
    }
}

/// The process id of a session's local server, from `GET /sessions/{id}` (`server` is
/// `local-<pid>`).
pub fn local_server_pid(session: &serde_json::Value) -> String {
    let server = session["server"].as_str().expect("a session with a server");
    server.strip_prefix("local-").expect("a local server").to_owned()
}

/// A proxy running in this process in front of `backend`, sharing its Redis key prefix;
/// `extra`: further flags.
pub async fn start_proxy(backend: SocketAddr, prefix: &str, extra: &[&str]) -> (SocketAddr, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let backend_url = format!("http://{backend}");
    let redis = redis_url();
    let mut args = vec![
        "proxy",
        "--backend-url",
        &backend_url,
        "--redis-url",
        &redis,
        "--redis-key-prefix",
        prefix,
        "--ticket-secret",
        SECRET,
        "--player-token-secret",
        PLAYER_SECRET,
    ];
    args.extend_from_slice(extra);
    let settings = service::cli::parse_without_env::<proxy::Config, _, _>(args)
        .unwrap()
        .validate()
        .unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(proxy::run(listener, settings, shutdown.clone()));
    let http = Http::new(addr);
    eventually(Duration::from_secs(10), || {
        let http = http.clone();
        async move { (http.get("/health").await.0 == StatusCode::OK).then_some(()) }
    })
    .await;
    (addr, shutdown)
}

/// The game-server Pod settings the Kubernetes tests use, in namespace `ns`.
pub fn pod_template(ns: &str) -> backend::runtime::kubernetes::PodTemplate {
    backend::runtime::kubernetes::PodTemplate {
        namespace: ns.into(),
        image: "registry.example/matchplane/game-server:1.0".into(),
        pull_policy: "IfNotPresent".into(),
        cpu_request: "50m".into(),
        cpu_limit: "500m".into(),
        memory_request: "16Mi".into(),
        memory_limit: "64Mi".into(),
        node_selector: Default::default(),
        tolerations: Vec::new(),
        image_pull_secrets: Vec::new(),
        secret_name: "matchplane-ticket".into(),
        secret_key: "ticket-secret".into(),
        active_deadline_seconds: 86_580,
        extra_env: Vec::new(),
    }
}

/// Joins one ticket to `queue` (a rule queue with `skill` and `latency_ms`) straight into
/// `store` as the studio's service, at `joined_ms`: its leader `players[0]` and the rest as its
/// party, each with their skill, `mode`, and latencies `eu` 20 ms and `us` 90 ms.
pub async fn join_rule_ticket(
    store: &Store,
    queue: &matchmaking_core::queues::Queue,
    players: &[(&str, f64)],
    mode: &str,
    joined_ms: i64,
) -> matchmaking_core::store::JoinOutcome {
    use serde_json::json;
    let member = |(p, skill): &(&str, f64)| json!({"player_id": p, "attributes": {"skill": skill, "latency_ms": {"eu": 20, "us": 90}}});
    let mut body = json!({"player_id": players[0].0, "queue": queue.name,
        "attributes": {"mode": mode, "skill": players[0].1, "latency_ms": {"eu": 20, "us": 90}}});
    if players.len() > 1 {
        body["party"] = players[1..].iter().map(member).collect();
    }
    let request: protocol::api::JoinRequest = serde_json::from_value(body).unwrap();
    let ticket = matchmaking_core::tickets::check(queue, &request, matchmaking_core::tickets::Joiner::Service).unwrap();
    store
        .queue(&queue.name)
        .join(&ticket.players, ticket.doc.as_deref(), joined_ms)
        .await
        .unwrap()
}
