//! The proxy against real Redis, a real game-server process, and scripted upstreams.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use protocol::sessions::SessionRecord;
use protocol::ticket::unix_now;
use protocol::{Claims, ErrorCode, GameState, ServerReply, TicketSecret};
use testkit::{LineClient, built_binary, redis_url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "proxy-test-secret-0123456789abcdef";
const PLAYER_SECRET: &str = "proxy-test-player-secret-0123456789abcdef";

fn secret() -> TicketSecret {
    TicketSecret::new(SECRET).unwrap()
}

fn ticket(player: &str, sid: &str) -> String {
    secret().mint(&Claims::game(player, sid, unix_now(), 600))
}

struct Proxy {
    addr: SocketAddr,
    prefix: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Proxy {
    async fn start(backend: &str, extra: &[&str]) -> Proxy {
        let prefix = format!("t{}", uuid_like());
        let redis = redis_url();
        let mut args = vec![
            "proxy",
            "--backend-url",
            backend,
            "--redis-url",
            &redis,
            "--redis-key-prefix",
            &prefix,
            "--ticket-secret",
            SECRET,
            "--player-token-secret",
            PLAYER_SECRET,
            "--first-line-timeout-seconds",
            "0.5",
            "--max-body-bytes",
            "65536",
        ];
        args.extend_from_slice(extra);
        let settings = service::cli::parse_without_env::<proxy::Config, _, _>(args)
            .unwrap()
            .validate()
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(proxy::run(listener, settings, shutdown.clone()));
        Proxy {
            addr,
            prefix,
            shutdown,
            task,
        }
    }

    /// Records a session as the backend does.
    async fn session(&self, sid: &str, state: &str, addr: &str) {
        self.session_with(sid, state, addr, protocol::sessions::Identity::JoinLine)
            .await;
    }

    async fn session_with(&self, sid: &str, state: &str, addr: &str, identity: protocol::sessions::Identity) {
        self.session_of(sid, state, addr, identity, &["p1", "p2", "p3", "p"])
            .await;
    }

    /// Records a session of `players` as the backend does.
    async fn session_of(
        &self,
        sid: &str,
        state: &str,
        addr: &str,
        identity: protocol::sessions::Identity,
        players: &[&str],
    ) {
        let client = redis::Client::open(redis_url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let record = SessionRecord {
            state: serde_json::from_value(serde_json::json!(state)).unwrap(),
            addr: Some(addr.to_owned()),
            identity,
            ..SessionRecord::matched("test", players.iter().map(|p| (*p).to_owned()).collect(), "test-server")
        };
        let _: () = redis::cmd("HSET")
            .arg(protocol::sessions::sessions_key(&self.prefix))
            .arg(sid)
            .arg(serde_json::to_string(&record).unwrap())
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn uuid_like() -> String {
    format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// An upstream that echoes what it received as JSON, answering with `x-want-status`.
async fn echo_upstream(seen: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        seen.fetch_add(1, Ordering::SeqCst);
                        let status = request
                            .headers()
                            .get("x-want-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(200);
                        let header = |name: &str| {
                            request
                                .headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_owned)
                        };
                        let echo = serde_json::json!({
                            "method": request.method().as_str(),
                            "path": request.uri().path(),
                            "query": request.uri().query(),
                            "xff": header("x-forwarded-for"),
                            "proto": header("x-forwarded-proto"),
                            "custom": header("x-custom"),
                            "connection": header("connection"),
                        });
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let echo = serde_json::json!({ "request": echo, "body": String::from_utf8_lossy(&body) });
                        let mut response = Response::new(Full::new(Bytes::from(echo.to_string())));
                        *response.status_mut() = StatusCode::from_u16(status).unwrap();
                        response.headers_mut().insert("x-upstream", "yes".parse().unwrap());
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

async fn http(
    proxy: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, hyper::HeaderMap, serde_json::Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder().method(method).uri(format!("http://{proxy}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(request.body(Full::new(Bytes::from(body))).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, headers, json)
}

#[tokio::test]
async fn http_is_forwarded_with_status_body_and_headers() {
    let seen = Arc::new(AtomicUsize::new(0));
    let upstream = echo_upstream(seen.clone()).await;
    let proxy = Proxy::start(&upstream, &[]).await;
    let (status, headers, body) = http(
        proxy.addr,
        "POST",
        "/api/match/join?x=1",
        &[
            ("x-want-status", "201"),
            ("x-custom", "kept"),
            ("connection", "keep-alive"),
        ],
        br#"{"player_id":"a"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers.get("x-upstream").unwrap(), "yes");
    assert_eq!(body["request"]["method"], "POST");
    assert_eq!(body["request"]["path"], "/match/join", "prefix stripped");
    assert_eq!(body["request"]["query"], "x=1");
    assert_eq!(body["request"]["xff"], "127.0.0.1");
    assert_eq!(body["request"]["proto"], "http");
    assert_eq!(body["request"]["custom"], "kept");
    assert_eq!(body["body"], r#"{"player_id":"a"}"#);
    let (status, _, body) = http(
        proxy.addr,
        "GET",
        "/api/health",
        &[("x-want-status", "503")],
        Vec::new(),
    )
    .await;
    assert_eq!(
        (status, body["request"]["path"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("/health"))
    );

    let before = seen.load(Ordering::SeqCst);
    let (status, _, body) = http(proxy.addr, "POST", "/api/match/join", &[], vec![b'x'; 1024 * 1024]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large"))
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        before,
        "an oversized body never reaches the backend"
    );

    let (status, _, body) = http(proxy.addr, "GET", "/elsewhere", &[], Vec::new()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, _, metrics) = http(proxy.addr, "GET", "/metrics", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("mp_proxy_http_request_duration_seconds_count{status=\"201\"} 1")
    );
    let (status, _, health) = http(proxy.addr, "GET", "/health", &[], Vec::new()).await;
    assert_eq!((status, health["redis"].as_str()), (StatusCode::OK, Some("ok")));
    proxy.stop().await;
}

/// Reads one HTTP/1.1 answer to `request`, sent raw: its status line and body.
async fn raw_http(proxy: SocketAddr, request: &str) -> (String, String) {
    let mut c = TcpStream::connect(proxy).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

#[tokio::test]
async fn every_http_method_gets_an_http_answer() {
    let seen = Arc::new(AtomicUsize::new(0));
    let upstream = echo_upstream(seen.clone()).await;
    let proxy = Proxy::start(&upstream, &[]).await;
    // TRACE and CONNECT are HTTP too: the backend decides on /api, not the game protocol.
    let (status, body) = raw_http(
        proxy.addr,
        "TRACE /api/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status} {body}");
    assert!(body.contains(r#""method":"TRACE""#), "{body}");
    let before = seen.load(Ordering::SeqCst);
    let (status, body) = raw_http(
        proxy.addr,
        "CONNECT 127.0.0.1:22 HTTP/1.1\r\nhost: 127.0.0.1:22\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status} {body}");
    assert!(body.contains("not_found"), "{body}");
    assert_eq!(seen.load(Ordering::SeqCst), before, "no tunnel, nothing forwarded");
    // The proxy's own endpoints are read-only.
    for path in ["/health", "/livez", "/metrics"] {
        let (status, headers, body) = http(proxy.addr, "POST", path, &[], Vec::new()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed")),
            "{path}"
        );
        assert_eq!(headers.get("allow").unwrap(), "GET,HEAD", "{path}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_backend_that_is_down_gets_a_clear_502() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let proxy = Proxy::start(&format!("http://{closed}"), &[]).await;
    let (status, _, body) = http(proxy.addr, "GET", "/api/match/status?player_id=a", &[], Vec::new()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("backend_unavailable"))
    );
    let (status, _, health) = http(proxy.addr, "GET", "/health", &[], Vec::new()).await;
    assert_eq!(
        (status, health["status"].as_str(), health["backend"].as_str()),
        (StatusCode::OK, Some("degraded"), Some("down")),
        "still ready: spliced matches need Redis, not the backend"
    );
    let (status, _, live) = http(proxy.addr, "GET", "/livez", &[], Vec::new()).await;
    assert_eq!((status, live), (StatusCode::OK, serde_json::json!({"status": "ok"})));
    proxy.stop().await;
}

/// A backend that answers its `/health` with 503 (its Redis is down, or it drains) is
/// reachable: the proxy's health says `backend: ok`, and its metric says up.
#[tokio::test]
async fn a_backend_that_answers_503_is_reachable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let answer = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = Proxy::start(&format!("http://{addr}"), &[]).await;
    let health = testkit::eventually(Duration::from_secs(5), || async {
        let (_, _, health) = http(proxy.addr, "GET", "/health", &[], Vec::new()).await;
        (health["backend"] == "ok").then_some(health)
    })
    .await;
    assert_eq!(health["status"], "ok");
    let (_, _, metrics) = http(proxy.addr, "GET", "/metrics", &[], Vec::new()).await;
    let metrics = metrics
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| metrics.to_string());
    assert!(
        metrics.contains("mp_dependency_up{dependency=\"backend\"} 1"),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_full_match_plays_out_through_the_proxy() {
    let sid = "0b5b0c9e-8d4e-4f39-9a1e-5a0c6f0e7d11";
    let mut server = tokio::process::Command::new(built_binary("game-server"))
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--session-id",
            sid,
            "--players",
            "p1,p2,p3",
        ])
        .env("TICKET_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(server.stdout.take().unwrap());
    let mut listening = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut out, &mut listening)
        .await
        .unwrap();
    let game_addr = listening.trim().strip_prefix("LISTENING ").unwrap().to_owned();

    let proxy = Proxy::start("http://127.0.0.1:9", &[]).await;
    proxy.session(sid, "matched", &game_addr).await;
    let mut clients = Vec::new();
    for player in ["p1", "p2", "p3"] {
        let mut c = LineClient::connect(proxy.addr).await;
        c.send(&format!("JOIN {}", ticket(player, sid))).await;
        assert!(matches!(c.recv().await, Some(ServerReply::Welcome { player_id, .. }) if player_id == player));
        clients.push(c);
    }
    clients[0].send("REQUEST_MATCH 1").await;
    assert_eq!(clients[0].recv().await, Some(ServerReply::RunningLength(1)));
    for c in &mut clients {
        assert_eq!(c.recv().await, Some(ServerReply::State(GameState::Running)));
        assert_eq!(c.recv().await, Some(ServerReply::State(GameState::Stop)));
        assert_eq!(c.recv().await, None);
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(10), server.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );
    let (_, _, metrics) = http(proxy.addr, "GET", "/metrics", &[], Vec::new()).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("mp_proxy_routes_total{outcome=\"routed\"} 3")
    );
    proxy.stop().await;
}

/// A listener standing in for a game server that counts every connection it gets.
async fn counting_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // Echo, like a server would answer.
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn bad_tickets_never_open_a_connection_to_any_server() {
    let (addr, count) = counting_server().await;
    let proxy = Proxy::start("http://127.0.0.1:9", &[]).await;
    let sid = "5e1d6a30-34c4-4a5a-9f0e-3e3f2b1f7a01";
    let allocating = "7c0c8a51-0b1f-4f0a-8d2e-9a4b5c6d7e8f";
    let ended = "9d9b2a3e-1c1d-4e4f-8a8b-7c7d6e6f5a5b";
    proxy.session(sid, "matched", &addr).await;
    proxy.session(allocating, "allocating", &addr).await;
    proxy.session(ended, "ended", &addr).await;
    let now = unix_now();
    let cases = [
        (
            TicketSecret::new("forger")
                .unwrap()
                .mint(&Claims::game("p1", sid, now, 600)),
            ErrorCode::BadTicket,
        ),
        (
            secret().mint(&Claims::game("p1", sid, now - 7200, 600)),
            ErrorCode::ExpiredTicket,
        ),
        (secret().mint(&Claims::report(sid, now, 600)), ErrorCode::BadTicket),
        ("not-a-ticket".to_owned(), ErrorCode::BadTicket),
        (ticket("p1", "some-other-session"), ErrorCode::UnknownSession),
        (ticket("p1", allocating), ErrorCode::UnknownSession),
        (ticket("p1", ended), ErrorCode::SessionOver),
    ];
    for (token, code) in cases {
        let mut c = LineClient::connect(proxy.addr).await;
        c.send(&format!("JOIN {token}")).await;
        assert_eq!(c.recv().await, Some(ServerReply::Error(code.clone())), "{code}");
        assert_eq!(c.recv().await, None);
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "no refused connection reached the server"
    );
    // The valid ticket does reach it, with the JOIN line passed on.
    let mut c = LineClient::connect(proxy.addr).await;
    let good = ticket("p1", sid);
    c.send(&format!("JOIN {good}")).await;
    let mut echoed = Vec::new();
    let mut raw = [0u8; 2048];
    while !echoed.ends_with(b"\n") {
        let n = c.stream().read(&mut raw).await.unwrap();
        assert!(n > 0);
        echoed.extend_from_slice(&raw[..n]);
    }
    assert_eq!(String::from_utf8(echoed).unwrap(), format!("JOIN {good}\n"));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    drop(c);
    proxy.stop().await;
}

/// A player released from its session's roster (its place given to backfill) is refused with
/// `not_in_roster` on its still valid ticket; one placed into the roster after the proxy looked
/// the route up gets in (a player the cached roster lacks makes the proxy read it again).
#[tokio::test]
async fn only_players_on_the_roster_reach_the_server() {
    let (addr, count) = counting_server().await;
    let proxy = Proxy::start("http://127.0.0.1:9", &[]).await;
    let sid = "0f8d4a1c-2b3e-4c5d-8e9f-a0b1c2d3e4f5";
    let none = protocol::sessions::Identity::None;
    proxy.session_of(sid, "matched", &addr, none, &["p1"]).await;
    // The route is looked up (and cached) for "p1".
    let mut p1 = LineClient::connect(proxy.addr).await;
    p1.send(&format!("JOIN {}", ticket("p1", sid))).await;
    eventually_equal(|| count.load(Ordering::SeqCst), 1).await;
    // "gone" was released before: its ticket verifies, but the roster does not have it.
    let mut gone = LineClient::connect(proxy.addr).await;
    gone.send(&format!("JOIN {}", ticket("gone", sid))).await;
    assert_eq!(gone.recv().await, Some(ServerReply::Error(ErrorCode::NotInRoster)));
    assert_eq!(gone.recv().await, None);
    // "new" is placed by backfill while the route is cached: it gets in.
    proxy.session_of(sid, "matched", &addr, none, &["p1", "new"]).await;
    let mut new = LineClient::connect(proxy.addr).await;
    new.send(&format!("JOIN {}", ticket("new", sid))).await;
    eventually_equal(|| count.load(Ordering::SeqCst), 2).await;
    let (_, _, metrics) = http(proxy.addr, "GET", "/metrics", &[], Vec::new()).await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("mp_proxy_routes_total{outcome=\"not_in_roster\"} 1"),
        "{metrics}"
    );
    drop((p1, new));
    proxy.stop().await;
}

async fn eventually_equal(read: impl Fn() -> usize, want: usize) {
    for _ in 0..200 {
        if read() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read(), want);
}

/// `addr` as `/proc/net/tcp` writes it.
fn proc_net_tcp_addr(addr: SocketAddr) -> String {
    let SocketAddr::V4(v4) = addr else {
        panic!("a loopback IPv4 address: {addr}")
    };
    format!("{:08X}:{:04X}", u32::from_le_bytes(v4.ip().octets()), v4.port())
}

/// Whether the machine's TCP socket to `peer` (from `local`, or from anywhere) has its
/// keepalive timer running: `/proc/net/tcp`'s timer 2, the socket timer, which on an
/// established socket is keepalive's.
fn keepalive_running(local: Option<SocketAddr>, peer: SocketAddr) -> bool {
    let (local, peer) = (local.map(proc_net_tcp_addr), proc_net_tcp_addr(peer));
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let row = table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[2] == peer && local.as_ref().is_none_or(|local| f[1] == local))
        .unwrap_or_else(|| panic!("no socket {local:?} -> {peer}"));
    row[5].starts_with("02:")
}

/// Both sockets of a spliced connection run TCP keepalive, so a client or server that vanishes
/// without closing is noticed and the connection dropped; the player's own socket (the test's)
/// does not, so the check tells them apart.
#[tokio::test]
async fn both_legs_of_a_spliced_connection_watch_for_a_vanished_peer() {
    let (addr, count) = counting_server().await;
    let proxy = Proxy::start("http://127.0.0.1:9", &[]).await;
    let sid = "0b7e4b8e-6f0e-4d8e-9a51-2f9c3d7e1a42";
    proxy.session(sid, "matched", &addr).await;
    let mut c = LineClient::connect(proxy.addr).await;
    c.send(&format!("JOIN {}", ticket("p1", sid))).await;
    let mut echoed = [0u8; 2048];
    assert!(c.stream().read(&mut echoed).await.unwrap() > 0);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let player = c.stream().local_addr().unwrap();
    // The only connection to this server is the proxy's.
    assert!(
        keepalive_running(None, addr.parse().unwrap()),
        "the proxy's leg to the server"
    );
    assert!(
        keepalive_running(Some(proxy.addr), player),
        "the proxy's leg to the player"
    );
    assert!(!keepalive_running(Some(player), proxy.addr), "the player's own socket");
    drop(c);
    proxy.stop().await;
}

#[tokio::test]
async fn slowloris_garbage_idle_floods_and_vanishing_clients_leave_it_serving() {
    let (addr, count) = counting_server().await;
    let seen = Arc::new(AtomicUsize::new(0));
    let upstream = echo_upstream(seen).await;
    // Every client here comes from 127.0.0.1: lift the per-source limit above the flood.
    let proxy = Proxy::start(&upstream, &["--rate-limit-burst", "10000"]).await;
    let sid = "1a2b3c4d-0000-4000-8000-000000000001";
    proxy.session(sid, "matched", &addr).await;

    // Garbage first bytes: one error line, closed.
    let mut garbage = LineClient::connect(proxy.addr).await;
    garbage.send_raw(b"\x17\x03\x01\x02\x00hello\n").await.unwrap();
    assert_eq!(garbage.recv().await, Some(ServerReply::Error(ErrorCode::BadRequest)));
    // An over-long JOIN line.
    let mut long = LineClient::connect(proxy.addr).await;
    long.send_raw(&[b"JOIN ".as_slice(), &[b'x'; 3000]].concat())
        .await
        .unwrap();
    assert_eq!(long.recv().await, Some(ServerReply::Error(ErrorCode::LineTooLong)));

    // Slowloris: a byte at a time, never a newline, is cut off at the first-line timeout.
    let mut slow = TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"J").await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut sink))
        .await
        .expect("closed")
        .ok();

    // 2,000 idle connections at once; the proxy keeps serving others meanwhile.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let (status, _, _) = http(proxy.addr, "GET", "/api/x", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    drop(idle);

    // Clients that vanish mid-splice.
    for _ in 0..100 {
        let mut c = TcpStream::connect(proxy.addr).await.unwrap();
        c.write_all(format!("JOIN {}\nPING\n", ticket("p", sid)).as_bytes())
            .await
            .unwrap();
        drop(c);
    }
    let mut c = LineClient::connect(proxy.addr).await;
    c.send(&format!("JOIN {}", ticket("p", sid))).await;
    let mut raw = [0u8; 4096];
    assert!(
        c.stream().read(&mut raw).await.unwrap() > 0,
        "a spliced session still works"
    );
    assert!(count.load(Ordering::SeqCst) >= 1);
    let (status, _, metrics) = http(proxy.addr, "GET", "/metrics", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let text = metrics.as_str().unwrap();
    assert!(text.contains("outcome=\"first_line_timeout\""), "{text}");
    assert!(text.contains("outcome=\"bad_request\"} 1"));
    drop(c);
    proxy.stop().await;
}

#[tokio::test]
async fn one_source_over_its_rate_is_refused_and_others_are_not() {
    let proxy = Proxy::start(
        "http://127.0.0.1:9",
        &["--rate-limit-per-second", "0.01", "--rate-limit-burst", "5"],
    )
    .await;
    let mut refused = 0;
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    for mut c in conns {
        // Say nothing: an admitted connection is closed silently at the first-line timeout,
        // a refused one is told why at once.
        let mut answer = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut answer)).await;
        if answer == "ERROR rate_limited\n" {
            refused += 1;
        } else {
            assert_eq!(answer, "");
        }
    }
    assert_eq!(refused, 5, "the burst of five passes, the rest are refused");
    proxy.stop().await;
}

#[tokio::test]
async fn shutdown_refuses_new_connections_and_drains_spliced_ones() {
    let (addr, _) = counting_server().await;
    let proxy = Proxy::start("http://127.0.0.1:9", &["--drain-seconds", "1"]).await;
    let sid = "2b2b2b2b-0000-4000-8000-000000000002";
    proxy.session(sid, "matched", &addr).await;
    let mut c = TcpStream::connect(proxy.addr).await.unwrap();
    c.write_all(format!("JOIN {}\n", ticket("p", sid)).as_bytes())
        .await
        .unwrap();
    let mut raw = [0u8; 4096];
    assert!(c.read(&mut raw).await.unwrap() > 0);
    let started = tokio::time::Instant::now();
    proxy.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(TcpStream::connect(proxy.addr).await.is_err(), "no longer accepting");
    // The spliced session goes on during the drain...
    c.write_all(b"PING\n").await.unwrap();
    let n = c.read(&mut raw).await.unwrap();
    assert_eq!(&raw[..n], b"PING\n");
    // ...and is closed when it is over.
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut raw))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(started.elapsed() >= Duration::from_millis(900));
    tokio::time::timeout(Duration::from_secs(10), proxy.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A certificate authority for one test, issuing `localhost` certificates.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A `localhost` certificate with a key of `algorithm`, written to `dir` as `name.crt` and
    /// `name.key` (PEM).
    fn issue(
        &self,
        dir: &std::path::Path,
        name: &str,
        algorithm: &'static rcgen::SignatureAlgorithm,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        // ring cannot generate RSA keys: RSA uses the identity crate's test key.
        let key = if algorithm == &rcgen::PKCS_RSA_SHA256 {
            let pem = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../identity/tests/keys/rsa.pem"))
                .unwrap();
            rcgen::KeyPair::from_pem_and_sign_algo(&pem, algorithm).unwrap()
        } else {
            rcgen::KeyPair::generate_for(algorithm).unwrap()
        };
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// A TLS client trusting `ca` only, offering `versions`, asking for ALPN `http/1.1`.
async fn tls_connect(
    addr: SocketAddr,
    ca: &rustls::pki_types::CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, stream))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// Writes `request` and reads until the peer closes.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(stream: &mut S, request: &[u8]) -> String {
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn scratch_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-proxy-tls-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn counter(metrics: &str, name: &str, outcome: &str) -> u64 {
    let prefix = format!("{name}{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Sends `line` and waits for the echo server behind the proxy to send it back.
async fn echo_line(stream: &mut tokio_rustls::client::TlsStream<TcpStream>, line: &str) {
    stream.write_all(line.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(line.as_bytes()) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the connection was dropped");
        got.extend_from_slice(&buf[..n]);
    }
}

/// TLS on the public port: the API and game connections over TLS 1.3 and 1.2 with ALPN
/// `http/1.1`; plain bytes get one line saying the port speaks TLS; a handshake that stalls,
/// or never starts, is dropped on the first-line timeout; a certificate from another CA is
/// refused by the client; every outcome is counted.
#[tokio::test]
async fn tls_serves_the_api_and_game_connections_and_refuses_what_is_not_tls() {
    let dir = scratch_dir();
    let ca = TestCa::new();
    let (cert, key) = ca.issue(&dir, "server", &rcgen::PKCS_ECDSA_P256_SHA256);
    let seen = Arc::new(AtomicUsize::new(0));
    let upstream = echo_upstream(seen.clone()).await;
    let (cert, key) = (cert.to_str().unwrap().to_owned(), key.to_str().unwrap().to_owned());
    let proxy = Proxy::start(&upstream, &["--tls-cert-file", &cert, "--tls-key-file", &key]).await;
    let (game, _) = counting_server().await;
    let sid = "7a0c9d6e-1b2c-4d3e-8f40-5a6b7c8d9e01";
    proxy.session(sid, "matched", &game).await;

    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12][..]] {
        let mut tls = tls_connect(proxy.addr, &ca.der, versions).await.unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let answer = exchange(
            &mut tls,
            b"GET /api/queues HTTP/1.1\r\nHost: localhost\r\nx-custom: over-tls\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("over-tls"), "{answer}");
        assert!(
            answer.contains(r#""proto":"https""#),
            "X-Forwarded-Proto says TLS: {answer}"
        );

        // A game connection: the JOIN line and the game's bytes reach the server and come back.
        let mut tls = tls_connect(proxy.addr, &ca.der, versions).await.unwrap();
        tls.write_all(format!("JOIN {}\nhello\n", ticket("p1", sid)).as_bytes())
            .await
            .unwrap();
        let mut echoed = vec![0u8; 0];
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&echoed).contains("hello\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&echoed));
            echoed.extend_from_slice(&buf[..n]);
        }
        assert!(String::from_utf8_lossy(&echoed).starts_with("JOIN "));
    }

    // Plain HTTP on the TLS port: told so, in plain text, and closed.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = exchange(&mut plain, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("This port speaks TLS"),
        "{answer}"
    );
    // A JOIN line in clear: the same, and no server is dialled.
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = exchange(&mut plain, format!("JOIN {}\n", ticket("p1", sid)).as_bytes()).await;
    assert!(answer.contains("This port speaks TLS"), "{answer}");
    // Silent, and a handshake that stalls after its first bytes: dropped on the timeout (0.5 s).
    for opening in [&b""[..], &b"\x16\x03\x01\x02\x00\x01"[..]] {
        let mut stalled = TcpStream::connect(proxy.addr).await.unwrap();
        stalled.write_all(opening).await.unwrap();
        let mut sink = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut sink)).await;
        assert!(matches!(read, Ok(Ok(_)) | Ok(Err(_))), "dropped, not held open");
    }
    // A client trusting another CA refuses the certificate.
    let stranger = TestCa::new();
    assert!(
        tls_connect(proxy.addr, &stranger.der, &[&rustls::version::TLS13])
            .await
            .is_err()
    );

    let mut tls = tls_connect(proxy.addr, &ca.der, &[&rustls::version::TLS13])
        .await
        .unwrap();
    let metrics = exchange(
        &mut tls,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let handshakes = |outcome| counter(&metrics, "mp_proxy_tls_handshakes_total", outcome);
    assert_eq!(handshakes("ok"), 5, "{metrics}");
    assert_eq!(handshakes("not_tls"), 2, "{metrics}");
    assert_eq!(handshakes("timed_out"), 2, "{metrics}");
    assert_eq!(handshakes("failed"), 1, "the stranger's alert: {metrics}");
    assert_eq!(counter(&metrics, "mp_proxy_routes_total", "routed"), 2, "{metrics}");
    proxy.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A replaced certificate (here ECDSA from one CA to RSA from another) is used for new
/// connections within seconds, while a game connection opened before goes on; a broken
/// replacement keeps the one in use and is counted. With `TLS_BIND`, `BIND` stays plain, and
/// a TLS hello there is counted and closed.
#[tokio::test]
async fn a_replaced_certificate_is_picked_up_without_dropping_a_connection() {
    let dir = scratch_dir();
    let (first_ca, second_ca) = (TestCa::new(), TestCa::new());
    let (cert, key) = first_ca.issue(&dir, "live", &rcgen::PKCS_ECDSA_P256_SHA256);
    let tls_port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let (cert_arg, key_arg, bind_arg) = (
        cert.to_str().unwrap().to_owned(),
        key.to_str().unwrap().to_owned(),
        tls_port.to_string(),
    );
    let proxy = Proxy::start(
        "http://127.0.0.1:9",
        &[
            "--tls-cert-file",
            &cert_arg,
            "--tls-key-file",
            &key_arg,
            "--tls-bind",
            &bind_arg,
        ],
    )
    .await;
    let (game, _) = counting_server().await;
    let sid = "7a0c9d6e-1b2c-4d3e-8f40-5a6b7c8d9e02";
    proxy.session(sid, "matched", &game).await;
    // TLS_BIND is bound by the proxy as it starts.
    let started = std::time::Instant::now();
    let mut open = loop {
        match tls_connect(tls_port, &first_ca.der, &[&rustls::version::TLS13]).await {
            Ok(open) => break open,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "TLS_BIND never answered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    open.write_all(format!("JOIN {}\n", ticket("p1", sid)).as_bytes())
        .await
        .unwrap();
    echo_line(&mut open, "before\n").await;

    // BIND is plain: a JOIN works in clear, a TLS hello is counted and closed.
    let mut plain = LineClient::connect(proxy.addr).await;
    plain.send(&format!("JOIN {}", ticket("p2", sid))).await;
    let mut hello = TcpStream::connect(proxy.addr).await.unwrap();
    let answer = exchange(&mut hello, b"\x16\x03\x01\x00\x05hello").await;
    assert!(answer.is_empty(), "{answer:?}");

    // Replaced by a pair of another kind from another CA, each file swapped whole.
    let (new_cert, new_key) = second_ca.issue(&dir, "next", &rcgen::PKCS_RSA_SHA256);
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let started = std::time::Instant::now();
    while tls_connect(tls_port, &second_ca.der, &[&rustls::version::TLS13])
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tls_connect(tls_port, &first_ca.der, &[&rustls::version::TLS13])
            .await
            .is_err()
    );
    echo_line(&mut open, "after\n").await;

    // A broken replacement: the pair in use stays, and the failure is counted.
    std::fs::write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let metrics = || async {
        let mut tls = tls_connect(tls_port, &second_ca.der, &[&rustls::version::TLS13])
            .await
            .unwrap();
        exchange(
            &mut tls,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await
    };
    let started = std::time::Instant::now();
    loop {
        let text = metrics().await;
        if counter(&text, "mp_proxy_tls_reloads_total", "failed") == 1 {
            assert_eq!(counter(&text, "mp_proxy_tls_reloads_total", "loaded"), 1, "{text}");
            assert_eq!(
                counter(&text, "mp_proxy_routes_total", "tls_on_plain_port"),
                1,
                "{text}"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the broken replacement was not reported: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    echo_line(&mut open, "still\n").await;
    drop(plain);
    proxy.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opens `/play` on `proxy` as a browser would, offering `subprotocol`.
async fn play_socket(
    proxy: SocketAddr,
    subprotocol: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{proxy}/play").into_client_request().unwrap();
    if let Some(subprotocol) = subprotocol {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", subprotocol.parse().unwrap());
    }
    let stream = TcpStream::connect(proxy).await.unwrap();
    tokio_tungstenite::client_async(request, stream).await.map(|(ws, _)| ws)
}

/// The next message's bytes, or the close frame's code.
async fn next_message(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Result<Vec<u8>, u16> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message within 5 s")
        {
            Some(Ok(Message::Binary(bytes))) => return Ok(bytes.to_vec()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map_or(1005, |f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    }
}

/// WebSocket game connections on `/play` (subprotocol `matchplane.v1`): the ticket in the
/// first message, then bytes both ways as binary messages, with the same checks as a TCP
/// `JOIN`; refusals close with a code that says why, and what is not a WebSocket with the
/// subprotocol is refused before any upgrade.
#[tokio::test]
async fn browsers_play_over_a_websocket_with_their_ticket_first() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let (game, count) = counting_server().await;
    let proxy = Proxy::start("http://127.0.0.1:9", &[]).await;
    let sid = "7a0c9d6e-1b2c-4d3e-8f40-5a6b7c8d9e03";
    proxy.session(sid, "matched", &game).await;

    let mut ws = play_socket(proxy.addr, Some("matchplane.v1")).await.unwrap();
    let mine = ticket("p1", sid);
    ws.send(Message::text(mine.clone())).await.unwrap();
    // The built-in server's mode: the JOIN line goes on to the server (here echoed back).
    assert_eq!(
        next_message(&mut ws).await.unwrap(),
        format!("JOIN {mine}\n").into_bytes()
    );
    ws.send(Message::binary(b"GET_STATE\n".to_vec())).await.unwrap();
    assert_eq!(next_message(&mut ws).await.unwrap(), b"GET_STATE\n");
    ws.send(Message::text("READY\n")).await.unwrap();
    assert_eq!(next_message(&mut ws).await.unwrap(), b"READY\n");
    // The player closes: the proxy answers the close frame (a clean close, not 1006).
    let mut leaving = play_socket(proxy.addr, Some("matchplane.v1")).await.unwrap();
    leaving.send(Message::text(ticket("p2", sid))).await.unwrap();
    next_message(&mut leaving).await.unwrap();
    leaving
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    assert_eq!(next_message(&mut leaving).await, Err(1000));
    // A server that takes a PROXY v2 header: it names the player and the proxy's own side of
    // the WebSocket's connection.
    let v2 = "7a0c9d6e-1b2c-4d3e-8f40-5a6b7c8d9e04";
    proxy
        .session_with(v2, "matched", &game, protocol::sessions::Identity::ProxyV2)
        .await;
    let mut identified = play_socket(proxy.addr, Some("matchplane.v1")).await.unwrap();
    identified.send(Message::text(ticket("p1", v2))).await.unwrap();
    let header = next_message(&mut identified).await.unwrap();
    let read = protocol::proxy_header::decode(&header).unwrap();
    assert_eq!((read.player_id.as_str(), read.session_id.as_str()), ("p1", v2));
    assert_eq!(read.player_addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    // IPv4 addresses: source 16..20, destination 20..24, source port 24..26, destination port 26..28.
    assert_eq!(&header[20..24], &[127, 0, 0, 1], "the proxy's own address");
    assert_eq!(
        u16::from_be_bytes([header[26], header[27]]),
        proxy.addr.port(),
        "the proxy's own port"
    );
    drop(identified);
    // A message over 64 KiB: closed with 1009.
    ws.send(Message::binary(vec![b'x'; 70 * 1024])).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Err(1009));

    // Refusals, each before any server is dialled.
    let dialled = count.load(Ordering::SeqCst);
    let forged = TicketSecret::new("not-the-secret")
        .unwrap()
        .mint(&Claims::game("p1", sid, unix_now(), 60));
    let unknown = ticket("p1", "7a0c9d6e-1b2c-4d3e-8f40-5a6b7c8d9eff");
    for (first, code) in [(forged, 4001), (unknown, 4003), ("garbage".to_owned(), 4001)] {
        let mut ws = play_socket(proxy.addr, Some("matchplane.v1")).await.unwrap();
        ws.send(Message::text(first)).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Err(code));
    }
    // Nothing sent within the first-line timeout (0.5 s): 1008.
    let mut late = play_socket(proxy.addr, Some("matchplane.v1")).await.unwrap();
    assert_eq!(next_message(&mut late).await, Err(1008));
    assert_eq!(count.load(Ordering::SeqCst), dialled, "no server dialled for a refusal");
    // No subprotocol, or another: refused with a clear HTTP answer, never upgraded.
    for offered in [None, Some("chat")] {
        match play_socket(proxy.addr, offered).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 422);
            }
            other => panic!("{offered:?}: {other:?}"),
        }
    }
    let (status, _, body) = http(proxy.addr, "GET", "/play", &[], Vec::new()).await;
    assert_eq!(status, 422, "{body}");
    proxy.stop().await;
}

/// A CORS preflight for `POST /api/match/join` from `origin`.
async fn preflight(proxy: SocketAddr, origin: &str) -> (StatusCode, hyper::HeaderMap, serde_json::Value) {
    let headers = [
        ("origin", origin),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "authorization, content-type"),
    ];
    http(proxy, "OPTIONS", "/api/match/join", &headers, Vec::new()).await
}

/// CORS for the API from `ALLOWED_ORIGINS` only: a preflight from a listed origin is answered
/// here (the backend never sees it) with what it may send, one from another origin is refused;
/// answers to a listed origin carry it back; `/play` refuses a page of another origin.
#[tokio::test]
async fn the_api_answers_cors_for_listed_origins_only() {
    let seen = Arc::new(AtomicUsize::new(0));
    let upstream = echo_upstream(seen.clone()).await;
    let proxy = Proxy::start(
        &upstream,
        &["--allowed-origins", "https://game.example,http://localhost:3000/"],
    )
    .await;
    let (status, headers, _) = preflight(proxy.addr, "https://game.example").await;
    assert_eq!(status, 204);
    assert!(!headers.contains_key("x-upstream"), "preflights are the proxy's");
    assert_eq!(headers["access-control-allow-origin"], "https://game.example");
    assert_eq!(headers["access-control-allow-methods"], "GET, POST, DELETE");
    assert_eq!(headers["access-control-allow-headers"], "authorization, content-type");
    assert_eq!(headers["vary"], "origin");
    let (status, headers, body) = preflight(proxy.addr, "https://evil.example").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    assert!(!headers.contains_key("access-control-allow-origin"));
    assert!(!headers.contains_key("x-upstream"), "preflights are the proxy's");

    let (status, headers, _) = http(
        proxy.addr,
        "GET",
        "/api/queues",
        &[("origin", "http://localhost:3000")],
        Vec::new(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["access-control-allow-origin"], "http://localhost:3000");
    let (_, headers, _) = http(
        proxy.addr,
        "GET",
        "/api/queues",
        &[("origin", "https://evil.example")],
        Vec::new(),
    )
    .await;
    assert!(!headers.contains_key("access-control-allow-origin"));
    let (_, headers, _) = http(proxy.addr, "GET", "/api/queues", &[], Vec::new()).await;
    assert!(!headers.contains_key("access-control-allow-origin"));

    // A WebSocket from a page of another origin.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{}/play", proxy.addr).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "matchplane.v1".parse().unwrap());
    request
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("{other:?}"),
    }
    proxy.stop().await;

    // A setting that is not an origin is refused with one line.
    for bad in ["game.example", "https://game.example/path", "*"] {
        let error = service::cli::parse_without_env::<proxy::Config, _, _>([
            "proxy",
            "--ticket-secret",
            SECRET,
            "--player-auth",
            "none",
            "--allowed-origins",
            bad,
        ])
        .unwrap()
        .validate()
        .unwrap_err();
        assert!(error.starts_with("ALLOWED_ORIGINS"), "{bad}: {error}");
    }
}

/// The connections (by serial) the scripted backend was asked for each path on.
static HITS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Vec<usize>>>> =
    std::sync::LazyLock::new(Default::default);
static SERIAL: AtomicUsize = AtomicUsize::new(0);

/// A backend scripted byte by byte: each request's answer is chosen by its path. Counts the
/// connections that carry forwarded requests (the proxy's own health checks aside).
async fn raw_backend(accepted: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let accepted = accepted.clone();
            let serial = SERIAL.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut counted = false;
                loop {
                    // One request head (the scripted requests have no body).
                    let head_end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    buf.drain(..head_end);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    if !counted && path != "/health" {
                        counted = true;
                        accepted.fetch_add(1, Ordering::SeqCst);
                    }
                    // Paths ending in -once fail only the first time they are asked for.
                    let first = {
                        let mut hits = HITS.lock().unwrap();
                        let seen = hits.entry(path.clone()).or_default();
                        seen.push(serial);
                        seen.len() == 1
                    };
                    let draining = "HTTP/1.1 503 Service Unavailable\r\nmatchplane-draining: 1\r\ncontent-length: 8\r\n\r\ndraining";
                    let (answer, close): (String, bool) = match path.as_str() {
                        "/draining-once" | "/draining-post-once" if first => (draining.into(), false),
                        "/draining-always" => (draining.into(), false),
                        "/silent-once" | "/silent-post-once" if first => (String::new(), true),
                        "/chunked" => (
                            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-kind: chunked\r\n\
                             keep-alive: timeout=5\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n"
                                .into(),
                            false,
                        ),
                        "/close" => ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into(), true),
                        "/cut" => ("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial".into(), true),
                        "/garbage" => ("SSH-2.0-OpenSSH_9.2\r\n\r\n".into(), true),
                        "/until-close" => ("HTTP/1.0 200 OK\r\n\r\nuntil close".into(), true),
                        "/silent" => (String::new(), true),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(11)).await;
                            ("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow".into(), false)
                        }
                        other => (
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{other}", other.len()),
                            false,
                        ),
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// One kept-alive connection to the proxy.
async fn kept_alive(proxy: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(proxy).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> (StatusCode, hyper::HeaderMap, String) {
    sender.ready().await.unwrap();
    let request = Request::get(path)
        .header("host", "proxy")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&body).into_owned())
}

/// The proxy's HTTP/1.1 with the backend: a player's connection keeps one backend connection
/// for all its requests, and gives it to the next player's connection when it closes; chunked
/// answers (with an interim 100 and trailers), answers until close and `Connection: close`
/// arrive whole, hop-by-hop headers stay behind; a backend that closes, cuts an answer off,
/// speaks something else or says nothing gets a 502 that says so, and the next request works.
#[tokio::test]
async fn the_backend_is_spoken_to_over_kept_alive_http11() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let upstream = raw_backend(accepted.clone()).await;
    let proxy = Proxy::start(&upstream, &[]).await;

    let mut first = kept_alive(proxy.addr).await;
    for path in ["/a", "/b", "/c"] {
        let (status, _, body) = get(&mut first, &format!("/api{path}")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, path));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one backend connection for the player's connection"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = kept_alive(proxy.addr).await;
    let (status, _, body) = get(&mut second, "/api/d").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/d"));
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "the idle connection is taken again");

    let (status, headers, body) = get(&mut second, "/api/chunked").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello, world"));
    assert_eq!(headers["x-kind"], "chunked");
    assert!(!headers.contains_key("keep-alive") && !headers.contains_key("transfer-encoding"));
    assert!(!headers.contains_key("x-trailer"));
    let (status, _, body) = get(&mut second, "/api/e").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "/e"),
        "the chunked answer was read to its end"
    );

    let (status, headers, body) = get(&mut second, "/api/close").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert!(!headers.contains_key("connection") || headers["connection"] != "close");
    let (status, _, body) = get(&mut second, "/api/until-close").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "until close"));
    let before = accepted.load(Ordering::SeqCst);
    let (status, _, body) = get(&mut second, "/api/f").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/f"));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        before + 1,
        "a closed backend connection is replaced"
    );

    for (path, message) in [
        ("/api/cut", "the backend's answer was cut off"),
        ("/api/garbage", "the backend's answer was cut off"),
        ("/api/silent", "the matchmaking backend is unavailable"),
    ] {
        let (status, _, body) = get(&mut second, path).await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{path}");
        assert_eq!(body["error"]["code"], "backend_unavailable", "{path}");
        assert_eq!(body["error"]["message"], message, "{path}");
        let (status, _, body) = get(&mut second, "/api/g").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "/g"), "after {path}");
    }
    proxy.stop().await;
}

/// A request the backend replica it reached did nothing with goes to another one once, on a
/// new connection (a Service balances it): a 503 from a replica that is shutting down (any
/// method), and an idempotent request that got no answer at all. A POST that got no answer
/// is not sent again (it may have been done), nor is a request refused twice.
#[tokio::test]
async fn a_request_a_replica_did_nothing_with_goes_to_another_once() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let upstream = raw_backend(accepted.clone()).await;
    let proxy = Proxy::start(&upstream, &[]).await;
    let post = |path: &'static str| {
        let proxy = proxy.addr;
        async move {
            let mut sender = kept_alive(proxy).await;
            sender.ready().await.unwrap();
            let request = Request::post(path)
                .header("host", "proxy")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    // First, on a new connection (nothing idle yet): a POST without an answer.
    let (status, body) = post("/api/silent-post-once").await;
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "a POST without an answer is not sent again: {body}"
    );
    assert_eq!(HITS.lock().unwrap()["/silent-post-once"].len(), 1);
    let mut player = kept_alive(proxy.addr).await;
    let (status, _, body) = get(&mut player, "/api/draining-once").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/draining-once"));
    let tries = HITS.lock().unwrap()["/draining-once"].clone();
    assert!(
        tries.len() == 2 && tries[0] != tries[1],
        "the second try is on another connection: {tries:?}"
    );
    let (status, _, body) = get(&mut player, "/api/silent-once").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "/silent-once"));

    let (status, body) = post("/api/draining-post-once").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "/draining-post-once"),
        "a refusal by a draining replica is safe to send on, POST too"
    );

    let (status, headers, body) = get(&mut player, "/api/draining-always").await;
    assert_eq!((status, body.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "draining"));
    assert!(headers.contains_key(protocol::api::DRAINING_HEADER));
    assert_eq!(
        HITS.lock().unwrap()["/draining-always"].len(),
        2,
        "one more try, not more"
    );
    proxy.stop().await;
}

/// With SHUTDOWN_DELAY_SECONDS a stopping proxy says it is not ready at once and goes on
/// accepting and forwarding for the delay, while load balancers stop sending players to it;
/// only then does its port close.
#[tokio::test]
async fn a_stopping_proxy_is_unready_first_and_serves_through_its_delay() {
    let upstream = raw_backend(Arc::new(AtomicUsize::new(0))).await;
    let proxy = Proxy::start(&upstream, &["--shutdown-delay-seconds", "4"]).await;
    let mut before = kept_alive(proxy.addr).await;
    let (status, _, _) = get(&mut before, "/health").await;
    assert_eq!(status, StatusCode::OK);
    proxy.shutdown.cancel();
    let began = std::time::Instant::now();
    let status = testkit::eventually(Duration::from_secs(5), || async {
        let mut probe = kept_alive(proxy.addr).await;
        let (status, _, _) = get(&mut probe, "/health").await;
        (status == StatusCode::SERVICE_UNAVAILABLE).then_some(status)
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "not ready at once");
    let mut during = kept_alive(proxy.addr).await;
    let (status, headers, body) = get(&mut during, "/api/during").await;
    assert_eq!(
        headers.get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..]),
        "each answer moves its client off the stopping proxy"
    );
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "/during"),
        "a new player is served through the delay"
    );
    let (status, _, body) = get(&mut before, "/api/kept").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "/kept"),
        "so is a kept-alive one"
    );
    let closed_after = testkit::eventually(Duration::from_secs(10), || async {
        TcpStream::connect(proxy.addr).await.is_err().then(|| began.elapsed())
    })
    .await;
    assert!(
        closed_after >= Duration::from_millis(3500),
        "the port closes after the delay, not {closed_after:?}"
    );
    tokio::time::timeout(Duration::from_secs(40), proxy.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// A player connection gets 10 s to send each request's head: one that trickles a head, or
/// sits idle after its answer, is closed; a request that takes longer to answer (a long poll)
/// is never cut.
#[tokio::test]
async fn a_slow_or_idle_head_is_cut_but_a_slow_answer_is_not() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let upstream = raw_backend(accepted).await;
    let proxy = Proxy::start(&upstream, &[]).await;
    let answered = async {
        let mut slow = kept_alive(proxy.addr).await;
        let (status, _, body) = get(&mut slow, "/api/slow").await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "slow"),
            "an 11 s answer is waited for"
        );
    };
    let trickled = async {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /api/a HTTP/1.1\r\nhost: p\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 256];
        let n = stream.read(&mut answer).await.unwrap();
        assert!(
            answer[..n].starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer[..n])
        );
        // Half a head, then nothing.
        stream.write_all(b"GET /api/b HTTP/1.1\r\nhost: p\r\n").await.unwrap();
        let began = std::time::Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a trickled head is cut");
        assert!(
            began.elapsed() >= Duration::from_secs(8),
            "not before its time: {:?}",
            began.elapsed()
        );
    };
    let idle = async {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream
            .write_all(b"GET /api/c HTTP/1.1\r\nhost: p\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0u8; 256];
        let n = stream.read(&mut answer).await.unwrap();
        assert!(n > 0);
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "an idle kept-alive connection is closed");
    };
    tokio::join!(answered, trickled, idle);
    proxy.stop().await;
}

/// The latency probe on the public port: `PING` lines over TCP answered `PONG` in as many
/// bytes, several on one connection, and anything else closes it; a UDP PROBE answered by an
/// ECHO exactly as long, and an oversized or malformed one by nothing at all. Both are counted.
#[tokio::test]
async fn the_latency_probe_answers_tcp_and_udp_in_no_more_bytes_than_asked() {
    let proxy = Proxy::start("http://127.0.0.1:9", &[]).await;
    let mut tcp = TcpStream::connect(proxy.addr).await.unwrap();
    for token in ["1733580000123", "second", "third:with-dashes"] {
        let ping = protocol::probe::ping(token);
        tcp.write_all(ping.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; ping.len()];
        tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, format!("PONG {token}\n").as_bytes());
    }
    // Anything else ends the probe: the connection closes with no answer.
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    // A bad probe line gets no answer: the connection closes.
    let mut bad = TcpStream::connect(proxy.addr).await.unwrap();
    bad.write_all(b"PING a b\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), bad.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "");

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(proxy.addr).await.unwrap();
    let probe = protocol::udp::probe(b"\x00\x01rtt-0");
    udp.send(&probe).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, probe.len(), "the echo is exactly as long as the probe");
    assert_eq!(
        protocol::udp::parse_proxy(&buf[..n]),
        Some(protocol::udp::FromProxy::Echo {
            payload: b"\x00\x01rtt-0"
        })
    );
    // Too long to be a probe: dropped, nothing answered (the next probe's echo comes first).
    udp.send(&protocol::udp::probe(&[b'x'; protocol::udp::MAX_PROBE_PAYLOAD + 1]))
        .await
        .unwrap();
    udp.send(&protocol::udp::probe(b"after")).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), udp.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"\x83after");

    let (_, _, metrics) = http(proxy.addr, "GET", "/metrics", &[], Vec::new()).await;
    let metrics = metrics.as_str().unwrap();
    assert_eq!(counter(metrics, "mp_proxy_routes_total", "probe"), 2, "{metrics}");
    assert_eq!(counter(metrics, "mp_proxy_udp_datagrams_total", "probe_answered"), 2);
    assert_eq!(counter(metrics, "mp_proxy_udp_datagrams_total", "malformed"), 1);
    proxy.stop().await;
}

/// A flood of UDP probes (from a spoofed source, say) is answered at most at the proxy's
/// probe rate over every source together; the rest are dropped and counted.
#[tokio::test]
async fn a_flood_of_udp_probes_is_answered_only_up_to_the_probe_rate() {
    let proxy = Proxy::start("http://127.0.0.1:9", &[]).await;
    // Serving (its UDP socket bound with its TCP one) once it answers.
    let (status, _, _) = http(proxy.addr, "GET", "/livez", &[], Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(proxy.addr).await.unwrap();
    let probe = protocol::udp::probe(b"flood");
    let sent = 3000u64;
    for _ in 0..sent {
        udp.send(&probe).await.unwrap();
    }
    let (mut answered, mut limited) = (0, 0);
    for _ in 0..100 {
        let (_, _, metrics) = http(proxy.addr, "GET", "/metrics", &[], Vec::new()).await;
        let metrics = metrics.as_str().unwrap().to_owned();
        answered = counter(&metrics, "mp_proxy_udp_datagrams_total", "probe_answered");
        limited = counter(&metrics, "mp_proxy_udp_datagrams_total", "probe_rate_limited");
        if answered + limited == sent {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answered + limited, sent, "every probe was read");
    assert!(limited > 0 && answered < sent, "answered {answered}, dropped {limited}");
    proxy.stop().await;
}
