//! Server profiles on the local runtime: a studio's own server program, told its session and
//! ports through its environment, reached by players through the proxy with their tickets, as
//! its profile's identity mode says; started, watched, capped and stopped by matchplane.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Backend, Http, eventually, local_settings, start_proxy};
use serde_json::Value;
use sqlx::Row as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A directory of its own for each test: the queue file and the servers' scripts.
fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-profiles-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An executable script in `dir`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A TCP server nobody here would ship, in Python: it listens on the port matchplane picked,
/// serves each rostered player once (answering with the hex of every byte it received up to
/// and including `hello\n`, its session id and its `MAP`), and exits 0 once all have been served.
const ECHO_SERVER: &str = r#"#!/usr/bin/env python3
import os, socket, sys
port = int(os.environ["MATCHPLANE_PORT_GAME"])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen(16)
print("serving", os.environ["MATCHPLANE_SESSION_ID"], "in", os.environ["MATCHPLANE_QUEUE"], flush=True)
players = os.environ["MATCHPLANE_PLAYERS"].split(",")
for _ in players:
    c, _ = s.accept()
    data = b""
    while b"hello\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    reply = "GOT %s %s %s %s\n" % (data.hex(), os.environ["MATCHPLANE_SESSION_ID"], os.environ.get("MAP", ""), sys.argv[1])
    c.sendall(reply.encode())
    c.close()
sys.exit(0)
"#;

/// A backend on the local runtime with the queue file `queues` (its `SCRIPT` replaced by the
/// scripts' directory), a proxy in front of it, and the history database.
async fn stack(dir: &Path, queues: &str, ready_timeout: f64) -> (Backend, SocketAddr, String) {
    stack_with(dir, queues, ready_timeout, &[]).await
}

/// [`stack`] with further proxy flags.
async fn stack_with(
    dir: &Path,
    queues: &str,
    ready_timeout: f64,
    proxy_flags: &[&str],
) -> (Backend, SocketAddr, String) {
    let file = dir.join("queues.yaml");
    std::fs::write(&file, queues.replace("SCRIPT", dir.to_str().unwrap())).unwrap();
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let settings = local_settings(&prefix, &db, &common::built_binary("game-server"))
        .matchmaking_config(&file)
        .server_ready_timeout_seconds(ready_timeout)
        .build()
        .unwrap();
    let backend = Backend::start(settings).await;
    let mut flags = vec!["--player-rate-limit-per-second", "0"];
    flags.extend_from_slice(proxy_flags);
    let (proxy, _stop) = start_proxy(backend.addr, &prefix, &flags).await;
    (backend, proxy, db)
}

/// Connects through the proxy with `status`'s ticket, sends `hello`, and returns the server's
/// one reply line and this connection's own address (what the server should see as the player's).
async fn say_hello(proxy: SocketAddr, status: &Value) -> (String, SocketAddr) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let me = stream.local_addr().unwrap();
    let ticket = status["ticket"].as_str().unwrap();
    stream
        .write_all(format!("JOIN {ticket}\nhello\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), BufReader::new(stream).read_line(&mut line))
        .await
        .expect("the server answers")
        .unwrap();
    (line.trim_end().to_owned(), me)
}

async fn end_reason(db: &str, session: &str) -> String {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    eventually(Duration::from_secs(30), || async {
        let row = sqlx::query("SELECT end_reason FROM matches WHERE session_id::text = $1")
            .bind(session)
            .fetch_optional(&pool)
            .await
            .unwrap();
        row.and_then(|r| r.get::<Option<String>, _>("end_reason"))
    })
    .await
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// `identity: none`: the server reads only the game's bytes (the proxy consumed the `JOIN`
/// line it verified), gets its session, queue, ports and `env` (with `${...}` replaced), and
/// the session completes when it exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_server_of_a_profile_gets_only_the_games_bytes_and_completes_when_it_exits_0() {
    let dir = scratch();
    script(&dir, "echo-server", ECHO_SERVER);
    let queues = r#"
servers:
  echo:
    command: ["SCRIPT/echo-server", "port=${PORT_GAME}"]
    ports: [{name: game, protocol: tcp}]
    ready: port
    identity: none
    ends: exit
    env: {MAP: "dm-${MATCHPLANE_QUEUE}"}
queues:
  - {name: echo-duel, session_size: 2, server: echo}
"#;
    let (backend, proxy, db) = stack(&dir, queues, 20.0).await;
    let statuses = common::matched_in(&backend.http, "echo-duel", &["ann", "ben"]).await;
    let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
    let (_, session) = backend.http.get(&format!("/sessions/{sid}")).await;
    let port = session["addr"].as_str().unwrap().rsplit(':').next().unwrap().to_owned();
    for status in &statuses {
        let (reply, _) = say_hello(proxy, status).await;
        let words: Vec<&str> = reply.split(' ').collect();
        assert_eq!(words[0], "GOT", "{reply}");
        assert_eq!(hex(words[1]), b"hello\n", "only the game's bytes reach the server");
        assert_eq!(&words[2..], [sid.as_str(), "dm-echo-duel", &format!("port={port}")]);
    }
    assert_eq!(end_reason(&db, &sid).await, "completed");
    assert_eq!(backend.http.status("ann", 0.0).await["status"], "ended");
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `identity: proxy-v2`: each connection starts with a PROXY v2 header carrying the player's
/// real address and the verified player and session ids; a client's own header is refused and
/// never reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_v2_server_learns_each_players_address_and_verified_ids_from_the_header() {
    let dir = scratch();
    script(&dir, "echo-server", ECHO_SERVER);
    let queues = r#"
servers:
  echo:
    command: ["SCRIPT/echo-server", "v2"]
    ports: [{name: game, protocol: tcp}]
    identity: proxy-v2
queues:
  - {name: duel, session_size: 2, server: echo}
"#;
    let (backend, proxy, db) = stack(&dir, queues, 20.0).await;
    let statuses = common::matched_in(&backend.http, "duel", &["cat", "dan"]).await;
    let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();

    // A client that sends a header of its own after its JOIN line is refused.
    let mut forger = TcpStream::connect(proxy).await.unwrap();
    let mut forged = format!("JOIN {}\n", statuses[0]["ticket"].as_str().unwrap()).into_bytes();
    forged.extend(protocol::proxy_header::encode(
        "6.6.6.6:6".parse().unwrap(),
        "6.6.6.6:7".parse().unwrap(),
        "dan",
        &sid,
    ));
    forger.write_all(&forged).await.unwrap();
    let mut line = String::new();
    BufReader::new(forger).read_line(&mut line).await.unwrap();
    assert_eq!(line.trim_end(), "ERROR bad_request");

    for (status, player) in statuses.iter().zip(["cat", "dan"]) {
        let (reply, me) = say_hello(proxy, status).await;
        let words: Vec<&str> = reply.split(' ').collect();
        let bytes = hex(words[1]);
        let header = protocol::proxy_header::decode(&bytes).expect("a PROXY v2 header first");
        assert_eq!(header.player_addr, me, "the player's own address");
        assert_eq!(
            (header.player_id.as_str(), header.session_id.as_str()),
            (player, sid.as_str())
        );
        assert_eq!(&bytes[header.len..], b"hello\n", "then the game's bytes");
    }
    assert_eq!(end_reason(&db, &sid).await, "completed");
    // The refusal was counted.
    let metrics = Http::new(proxy)
        .get("/metrics")
        .await
        .1
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        metrics.contains(r#"mp_proxy_routes_total{outcome="proxy_header"} 1"#),
        "{metrics}"
    );
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The pids a script recorded in `dir`.
fn recorded_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect()
}

async fn all_gone(pids: &[i32]) {
    assert!(!pids.is_empty(), "the script recorded its pid");
    eventually(Duration::from_secs(10), || async {
        pids.iter()
            .all(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), None).is_err())
            .then_some(())
    })
    .await;
}

/// `ends: sdk`: the server's own report decides how its session ended (here `abandoned`,
/// though it then exits 0); the report is the documented call, made with the documented
/// variables.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ends_through_the_sdk_reports_its_own_result() {
    let dir = scratch();
    script(
        &dir,
        "reporter",
        r#"#!/bin/sh
echo up
sleep 0.3
curl -sS -X POST "$MATCHPLANE_REPORT_URL" -H "authorization: Bearer $MATCHPLANE_REPORT_TOKEN"   -H 'content-type: application/json' -d '{"session_id": "'"$MATCHPLANE_SESSION_ID"'",
  "end_reason": "abandoned", "started_at": null, "ended_at": "'"$(date -u +%FT%TZ)"'", "players": []}'
"#,
    );
    let queues = r#"
servers:
  reporter: {command: ["SCRIPT/reporter"], ports: [{name: game, protocol: tcp}], ready: {log: "^up$"}, ends: sdk}
queues:
  - {name: solo, session_size: 1, server: reporter}
"#;
    let (backend, _proxy, db) = stack(&dir, queues, 20.0).await;
    let status = common::matched_in(&backend.http, "solo", &["r1"]).await;
    assert_eq!(
        end_reason(&db, status[0]["session_id"].as_str().unwrap()).await,
        "abandoned"
    );
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// An echo server that never ends by itself: each connection's lines come back.
const CHAT_SERVER: &str = r#"#!/usr/bin/env python3
import os, socketserver
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
            self.wfile.flush()
socketserver.ThreadingTCPServer.allow_reuse_address = True
server = socketserver.ThreadingTCPServer(("127.0.0.1", int(os.environ["MATCHPLANE_PORT_GAME"])), Echo)
server.daemon_threads = True
server.serve_forever()
"#;

/// Connects `status`'s player through the proxy and checks the server echoes a line.
async fn connect_and_echo(proxy: SocketAddr, status: &Value) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    let ticket = status["ticket"].as_str().unwrap();
    stream
        .write_all(format!("JOIN {ticket}\nhi\n").as_bytes())
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut line))
        .await
        .expect("an echo")
        .unwrap();
    assert_eq!(line, "hi\n");
    stream
}

/// Who is connected, as `/sessions/{id}` shows it, once it is `want`.
async fn connected_becomes(http: &Http, sid: &str, want: &[&str]) {
    eventually(Duration::from_secs(10), || async {
        let (_, session) = http.get(&format!("/sessions/{sid}")).await;
        let connected: Vec<String> = session
            .get("connected")
            .map(|c| serde_json::from_value(c.clone()).unwrap())
            .unwrap_or_default();
        (connected == want).then_some(())
    })
    .await;
}

/// The proxy reports every player's connections, for any server and with no SDK: the
/// session lists who is connected now, the history records each player's connect and leave
/// times, and `empty_grace_seconds` stops a server nobody is connected to: `abandoned` once its
/// players left, `no_show` when none ever came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_are_seen_connecting_and_leaving_and_an_empty_server_is_stopped() {
    let dir = scratch();
    script(&dir, "chat", CHAT_SERVER);
    let queues = r#"
servers:
  chat:
    command: ["SCRIPT/chat"]
    ports: [{name: game, protocol: tcp}]
    empty_grace_seconds: 1.5
    stop_grace_seconds: 1
queues:
  - {name: chat, session_size: 2, server: chat}
  - {name: nobody, session_size: 1, server: chat}
"#;
    let (backend, proxy, db) = stack(&dir, queues, 20.0).await;
    let http = &backend.http;
    let statuses = common::matched_in(http, "chat", &["amy", "bob"]).await;
    let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
    connected_becomes(http, &sid, &[]).await;

    let amy = connect_and_echo(proxy, &statuses[0]).await;
    connected_becomes(http, &sid, &["amy"]).await;
    // A second connection of the same player changes nothing; closing one of two neither.
    let amy_again = connect_and_echo(proxy, &statuses[0]).await;
    let bob = connect_and_echo(proxy, &statuses[1]).await;
    connected_becomes(http, &sid, &["amy", "bob"]).await;
    drop(amy_again);
    tokio::time::sleep(Duration::from_millis(300)).await;
    connected_becomes(http, &sid, &["amy", "bob"]).await;
    let status = http.status("bob", 0.0).await;
    assert_eq!(status["connected"], serde_json::json!(["amy", "bob"]), "{status}");
    drop(amy);
    connected_becomes(http, &sid, &["bob"]).await;
    // Still running while anyone is connected, however long.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(http.status("amy", 0.0).await["status"], "matched");
    drop(bob);
    assert_eq!(end_reason(&db, &sid).await, "abandoned");

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows = sqlx::query(
        "SELECT player_id, joined_at, left_at FROM match_players WHERE session_id::text = $1 ORDER BY player_id",
    )
    .bind(&sid)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let joined: Option<time::OffsetDateTime> = row.get("joined_at");
        let left: Option<time::OffsetDateTime> = row.get("left_at");
        let (joined, left) = (joined.expect("joined_at"), left.expect("left_at"));
        assert!(
            left > joined,
            "{}: joined {joined}, left {left}",
            row.get::<String, _>("player_id")
        );
    }

    let alone = common::matched_in(http, "nobody", &["nia"]).await;
    assert_eq!(
        end_reason(&db, alone[0]["session_id"].as_str().unwrap()).await,
        "no_show"
    );
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A UDP game server nobody here would ship: it answers each datagram with where it came from
/// and what it said.
const UDP_ECHO: &str = r#"#!/usr/bin/env python3
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(os.environ["MATCHPLANE_PORT_GAME"])))
while True:
    data, addr = s.recvfrom(65535)
    s.sendto(b"from %s:%d: " % (addr[0].encode(), addr[1]) + data, addr)
"#;

/// Sends `datagram` and returns the proxy's answer, or `None` after `wait`.
async fn ask(socket: &tokio::net::UdpSocket, proxy: SocketAddr, datagram: &[u8], wait: Duration) -> Option<Vec<u8>> {
    socket.send_to(datagram, proxy).await.unwrap();
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

fn udp_counter(metrics: &str, outcome: &str) -> u64 {
    let prefix = format!("mp_proxy_udp_datagrams_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// UDP on the proxy's public port number: the ticket in a JOIN opens the player's flow and
/// the proxy hands back a connection id; the server sees only the game's datagrams, from one
/// address of the proxy's per player; a client whose address changes keeps its flow; unknown
/// ids, garbage and forged tickets reach nothing and are never answered with more than they
/// sent; a flow over its rate is cut down; a silent flow expires, and the player is then no
/// longer connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_players_reach_their_server_through_the_public_port_with_their_tickets() {
    use protocol::udp::{self, FromProxy};
    let dir = scratch();
    script(&dir, "udp-echo", UDP_ECHO);
    let queues = r#"
servers:
  udp:
    command: ["SCRIPT/udp-echo"]
    ports: [{name: game, protocol: udp}]
    empty_grace_seconds: 1
queues:
  - {name: udp, session_size: 1, server: udp}
"#;
    let flags = ["--udp-idle-seconds", "2", "--udp-flow-rate-per-second", "50"];
    let (backend, proxy, db) = stack_with(&dir, queues, 60.0, &flags).await;
    let http = &backend.http;
    let status = common::matched_in(http, "udp", &["uma"]).await.remove(0);
    let sid = status["session_id"].as_str().unwrap().to_owned();
    let ticket = status["ticket"].as_str().unwrap();
    let (_, session) = http.get(&format!("/sessions/{sid}")).await;
    assert!(session["addr"].is_null(), "no TCP port: {session}");
    let metrics = || async {
        Http::new(proxy)
            .get("/metrics")
            .await
            .1
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // Before any JOIN, nothing is answered and nothing reaches the server.
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let wait = Duration::from_millis(400);
    assert_eq!(ask(&client, proxy, &udp::data(12345, b"sneak"), wait).await, None);
    assert_eq!(ask(&client, proxy, b"\xffgarbage", wait).await, None);
    // A forged ticket is refused, in fewer bytes than it took.
    let forged = protocol::TicketSecret::new("not-the-secret".to_owned())
        .unwrap()
        .mint(&protocol::Claims::game("uma", &sid, protocol::ticket::unix_now(), 60));
    let join = udp::join([9, 9, 9, 9], &forged);
    let answer = ask(&client, proxy, &join, Duration::from_secs(5))
        .await
        .expect("an answer");
    assert!(answer.len() <= join.len());
    assert_eq!(
        udp::parse_proxy(&answer),
        Some(FromProxy::Refused {
            nonce: [9, 9, 9, 9],
            code: "bad_ticket"
        })
    );

    // The real ticket opens the flow; the same JOIN again gets the same id.
    let welcome = ask(&client, proxy, &udp::join([1, 2, 3, 4], ticket), Duration::from_secs(5))
        .await
        .unwrap();
    let Some(FromProxy::Welcome { nonce, id }) = udp::parse_proxy(&welcome) else {
        panic!("{welcome:?}")
    };
    assert_eq!(nonce, [1, 2, 3, 4]);
    let again = ask(&client, proxy, &udp::join([5, 6, 7, 8], ticket), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        udp::parse_proxy(&again),
        Some(FromProxy::Welcome {
            nonce: [5, 6, 7, 8],
            id
        })
    );
    let echo = ask(&client, proxy, &udp::data(id, b"ping"), Duration::from_secs(5))
        .await
        .unwrap();
    let Some(FromProxy::Data { payload }) = udp::parse_proxy(&echo) else {
        panic!("{echo:?}")
    };
    let text = String::from_utf8(payload.to_vec()).unwrap();
    let (source, said) = text.strip_prefix("from ").unwrap().split_once(": ").unwrap();
    assert_eq!(said, "ping", "only the game's bytes");
    assert_ne!(
        source,
        client.local_addr().unwrap().to_string(),
        "the proxy's own address"
    );
    connected_becomes(http, &sid, &["uma"]).await;

    // A NAT rebinding: a new client address with the same id keeps the flow and its source.
    let moved = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo = ask(&moved, proxy, &udp::data(id, b"moved"), Duration::from_secs(5))
        .await
        .unwrap();
    let Some(FromProxy::Data { payload }) = udp::parse_proxy(&echo) else {
        panic!("{echo:?}")
    };
    assert_eq!(String::from_utf8_lossy(payload), format!("from {source}: moved"));

    // A storm from one client: the flow's rate (50/s, as many at once) holds.
    for i in 0..300u32 {
        moved.send_to(&udp::data(id, &i.to_be_bytes()), proxy).await.unwrap();
    }
    let mut answered = 0;
    let mut buf = vec![0u8; 2048];
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), moved.recv_from(&mut buf)).await {
        answered += 1;
    }
    assert!((40..=70).contains(&answered), "{answered} of 300 got through");
    let text = metrics().await;
    // What the kernel did not drop first (a burst can overflow a socket's buffer) was cut down.
    assert!(udp_counter(&text, "rate_limited") >= 100, "{text}");
    assert!(udp_counter(&text, "unknown_flow") >= 1 && udp_counter(&text, "malformed") >= 1);
    assert!(text.contains("mp_proxy_udp_rebinds_total 1"), "{text}");

    // Silence: the flow expires, its id is dead, and the player is no longer connected.
    connected_becomes(http, &sid, &[]).await;
    assert_eq!(ask(&moved, proxy, &udp::data(id, b"late"), wait).await, None);
    // And with nobody connected, the server is stopped after its empty grace.
    assert_eq!(end_reason(&db, &sid).await, "abandoned");
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// ENet's CONNECT command, as a client opens its connection (enet's `protocol.h`): the
/// protocol header (no peer yet: peer id 0xFFF, with the sent-time flag, and the sent time),
/// the command header (CONNECT, acknowledge flag; channel 0xFF; reliable sequence 1), and the
/// connect body with `connect_id`; every field big-endian.
fn enet_connect(connect_id: u32) -> Vec<u8> {
    let mut packet = Vec::new();
    packet.extend(0x8FFFu16.to_be_bytes());
    packet.extend(0x1234u16.to_be_bytes());
    packet.extend([0x82, 0xFF]);
    packet.extend(1u16.to_be_bytes());
    packet.extend(0u16.to_be_bytes()); // outgoing peer id
    packet.extend([0xFF, 0xFF]); // incoming and outgoing session ids
    for field in [1400u32, 32768, 3, 0, 0, 5000, 2, 2, connect_id, 0] {
        // mtu, window size, channels, bandwidth in and out, throttle interval,
        // acceleration, deceleration, connect id, data
        packet.extend(field.to_be_bytes());
    }
    packet
}

/// A UDP dedicated game server nobody here wrote, unmodified: Cube 2: Sauerbraten's
/// (Debian's `cube2-server`), a UDP profile. The player reaches it through the proxy's public
/// port with its ticket and opens an ENet connection, the game's own protocol: the server's
/// VERIFY_CONNECT answers it with the client's connect id. Once the player is silent, its flow
/// expires and the empty server is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sauerbratens_own_udp_server_runs_as_a_profile_and_its_players_reach_it_with_tickets() {
    use protocol::udp::{self, FromProxy};
    if !Path::new("/usr/games/cube2-server").exists() {
        eprintln!(
            "SKIPPED: /usr/games/cube2-server is not installed (apt-get install cube2-server); .ci/run installs it"
        );
        return;
    }
    let dir = scratch();
    let queues = r#"
servers:
  sauerbraten:
    command: ["/usr/games/cube2-server", "-i${HOST}", "-j${PORT_GAME}", "-c4"]
    ports: [{name: game, protocol: udp}]
    ready: port
    identity: none
    empty_grace_seconds: 1
queues:
  - {name: sauer, session_size: 1, server: sauerbraten}
"#;
    let (backend, proxy, db) = stack_with(&dir, queues, 60.0, &["--udp-idle-seconds", "2"]).await;
    let status = common::matched_in(&backend.http, "sauer", &["fragger"]).await.remove(0);
    let sid = status["session_id"].as_str().unwrap().to_owned();
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let join = udp::join([7, 7, 7, 7], status["ticket"].as_str().unwrap());
    let welcome = ask(&client, proxy, &join, Duration::from_secs(5))
        .await
        .expect("a WELCOME");
    let Some(FromProxy::Welcome { id, .. }) = udp::parse_proxy(&welcome) else {
        panic!("{welcome:?}")
    };
    let answer = ask(
        &client,
        proxy,
        &udp::data(id, &enet_connect(0xCAFE_BABE)),
        Duration::from_secs(5),
    )
    .await
    .expect("the server answers");
    let Some(FromProxy::Data { payload }) = udp::parse_proxy(&answer) else {
        panic!("{answer:?}")
    };
    // The protocol header (4 bytes, with the sent time), then VERIFY_CONNECT (3, acknowledge
    // flag) whose body ends with our connect id.
    assert_eq!(payload[4], 0x83, "VERIFY_CONNECT: {payload:02x?}");
    assert_eq!(&payload[payload.len() - 4..], &0xCAFE_BABEu32.to_be_bytes());
    connected_becomes(&backend.http, &sid, &["fragger"]).await;
    assert_eq!(end_reason(&db, &sid).await, "abandoned");
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that is never ready, or exits at once: the session fails, its players go back to
/// the head of the queue, and nothing it started is left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_server_that_never_binds_or_exits_at_once_fails_and_requeues_its_players() {
    let dir = scratch();
    script(
        &dir,
        "never-binds",
        "#!/bin/sh\necho $$ > \"$HOME/../never.pid\"\nsleep 300 &\necho $! > \"$HOME/../never-child.pid\"\nwait\n",
    );
    script(&dir, "exits", "#!/bin/sh\necho \"cannot load map\" >&2\nexit 3\n");
    let queues = r#"
servers:
  never: {command: ["SCRIPT/never-binds"], ports: [{name: game, protocol: udp}]}
  exits: {command: ["SCRIPT/exits"], ports: [{name: game, protocol: tcp}]}
queues:
  - {name: never, session_size: 2, flush_wait_seconds: 600, server: never}
  - {name: exits, session_size: 2, flush_wait_seconds: 600, server: exits}
"#;
    let (backend, _proxy, db) = stack(&dir, queues, 1.5).await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    for (queue, players) in [("never", ["n1", "n2", "n3"]), ("exits", ["e1", "e2", "e3"])] {
        for p in players {
            backend
                .http
                .post_as(
                    &common::service_auth(),
                    "/match/join",
                    serde_json::json!({"player_id": p, "queue": queue}),
                )
                .await;
        }
        let rows = eventually(Duration::from_secs(60), || async {
            let rows = sqlx::query(
                "SELECT players, end_reason FROM matches WHERE queue = $1 AND end_reason IS NOT NULL ORDER BY created_at",
            )
            .bind(queue)
            .fetch_all(&pool)
            .await
            .unwrap();
            (rows.len() >= 2).then_some(rows)
        })
        .await;
        for row in &rows[..2] {
            assert_eq!(row.get::<Option<String>, _>("end_reason").as_deref(), Some("failed"));
            // Requeued at the head: the same two again, never the third who joined later.
            assert_eq!(row.get::<Vec<String>, _>("players"), vec![players[0], players[1]]);
        }
    }
    // The private home is `<tmp>/matchplane-servers-<uid>/<session>`: its parent holds the pids.
    let homes = std::env::temp_dir().join(format!("matchplane-servers-{}", nix::unistd::getuid()));
    let pids: Vec<i32> = ["never.pid", "never-child.pid"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(homes.join(f)).ok()?.trim().parse().ok())
        .collect();
    all_gone(&pids).await;
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `max_session_seconds` and `stop_grace_seconds`: a server still running at the cap gets
/// SIGTERM; one that ignores it is killed, with all it started, once its grace is over; the
/// session ends `terminated`. A server flooding its output is killed and its session fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matchplane_caps_a_session_kills_a_server_ignoring_sigterm_and_one_flooding_its_output() {
    let dir = scratch();
    script(
        &dir,
        "stubborn",
        "#!/bin/sh\ntrap '' TERM\necho $$ > SCRIPT/$MATCHPLANE_SESSION_ID.pid\necho up\nwhile true; do sleep 0.2; done\n"
            .replace("SCRIPT", dir.to_str().unwrap())
            .as_str(),
    );
    script(&dir, "flood", "#!/bin/sh\necho up\nsleep 0.5\nexec yes flooding\n");
    let queues = r#"
servers:
  stubborn:
    command: ["SCRIPT/stubborn"]
    ports: [{name: game, protocol: tcp}]
    ready: {log: "^up$"}
    max_session_seconds: 1
    stop_grace_seconds: 1
  flood:
    command: ["SCRIPT/flood"]
    ports: [{name: game, protocol: tcp}]
    ready: {log: "^up$"}
queues:
  - {name: stubborn, session_size: 1, server: stubborn}
  - {name: flood, session_size: 1, server: flood}
"#;
    let (backend, _proxy, db) = stack(&dir, queues, 20.0).await;
    let stubborn = common::matched_in(&backend.http, "stubborn", &["s1"]).await;
    let flood = common::matched_in(&backend.http, "flood", &["f1"]).await;
    let sid = stubborn[0]["session_id"].as_str().unwrap();
    assert_eq!(end_reason(&db, sid).await, "terminated");
    all_gone(&recorded_pids(&dir)).await;
    assert_eq!(
        end_reason(&db, flood[0]["session_id"].as_str().unwrap()).await,
        "failed"
    );
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A dedicated game server nobody here wrote, unmodified: BZFlag's `bzfs` (Debian's
/// `bzflag-server`), a TCP profile with `identity: none`. Each player reaches it through the
/// proxy with a ticket and speaks BZFlag's own handshake (`BZFLAG\r\n\r\n`, answered with
/// `BZFS` and the protocol version). `-time 3 -g`: its game clock starts with its first player
/// and it serves one game, so it exits 0 three seconds later, and the session completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bzflags_own_server_runs_as_a_profile_and_its_players_reach_it_with_tickets() {
    let bzfs = Path::new("/usr/games/bzfs");
    if !bzfs.exists() {
        eprintln!("SKIPPED: /usr/games/bzfs is not installed (apt-get install bzflag-server); .ci/run installs it");
        return;
    }
    let dir = scratch();
    let queues = r#"
servers:
  bzflag:
    command: ["/usr/games/bzfs", "-p", "${PORT_GAME}", "-i", "127.0.0.1", "-g", "-time", "3", "-a", "0", "0"]
    ports: [{name: game, protocol: tcp}]
    ready: port
    identity: none
    ends: exit
    max_session_seconds: 120
queues:
  - {name: bzflag, session_size: 2, server: bzflag}
"#;
    let (backend, proxy, db) = stack(&dir, queues, 20.0).await;
    let statuses = common::matched_in(&backend.http, "bzflag", &["tank-1", "tank-2"]).await;
    let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
    for status in &statuses {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let ticket = status["ticket"].as_str().unwrap();
        stream
            .write_all(format!("JOIN {ticket}\nBZFLAG\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut hello = [0u8; 9];
        tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut hello),
        )
        .await
        .expect("bzfs answers")
        .unwrap();
        assert_eq!(&hello[..4], b"BZFS", "{:?}", String::from_utf8_lossy(&hello));
        assert_eq!(&hello[4..8], b"0221", "BZFlag protocol 0221");
    }
    // Without a ticket nothing reaches it.
    let mut stranger = TcpStream::connect(proxy).await.unwrap();
    stranger.write_all(b"BZFLAG\r\n\r\n").await.unwrap();
    let mut line = String::new();
    BufReader::new(stranger).read_line(&mut line).await.unwrap();
    assert!(line.starts_with("ERROR"), "{line}");
    assert_eq!(end_reason(&db, &sid).await, "completed");
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The SDK's example server as a profile, on every SDK part at once: `ready: sdk` (players get
/// tickets only once it says so, well after it binds), `identity: proxy-v2` read with the
/// SDK (each player greeted by its verified id), health calls, and `ends: sdk` (its report,
/// made once both players have come and gone, completes the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_built_on_the_sdk_says_when_it_is_ready_who_each_player_is_and_how_it_ended() {
    let dir = scratch();
    let server = common::built_binary("sdk-example-server");
    let queues = format!(
        r#"
servers:
  sdk:
    command: ["{}", "--ready-after-ms", "2500"]
    ports: [{{name: game, protocol: tcp}}]
    ready: sdk
    identity: proxy-v2
    ends: sdk
    health_timeout_seconds: 5
queues:
  - {{name: duel, session_size: 2, server: sdk}}
"#,
        server.display()
    );
    let (backend, proxy, db) = stack(&dir, &queues, 20.0).await;
    let statuses = common::matched_in(&backend.http, "duel", &["sam", "sue"]).await;
    let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
    let (view, took) = common::ready_after(&backend.http, &sid).await;
    assert!(
        took >= time::Duration::milliseconds(2500),
        "ready only once the server said so: {view}"
    );
    for (status, player) in statuses.iter().zip(["sam", "sue"]) {
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let ticket = status["ticket"].as_str().unwrap();
        stream
            .write_all(format!("JOIN {ticket}\nping\n").as_bytes())
            .await
            .unwrap();
        let mut lines = BufReader::new(stream).lines();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .unwrap()
                .unwrap()
        };
        assert_eq!(next().await.as_deref(), Some(format!("WELCOME {player}").as_str()));
        assert_eq!(next().await.as_deref(), Some("ping"));
    }
    assert_eq!(end_reason(&db, &sid).await, "completed");
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that stops making SDK health calls fails its session after the profile's
/// `health_timeout_seconds`, and is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_calling_health_fails_its_session() {
    let dir = scratch();
    let server = common::built_binary("sdk-example-server");
    let queues = format!(
        r#"
servers:
  hangs:
    command: ["{}", "--health-for-seconds", "1"]
    ports: [{{name: game, protocol: tcp}}]
    ready: sdk
    identity: proxy-v2
    ends: sdk
    health_timeout_seconds: 2
queues:
  - {{name: solo, session_size: 1, server: hangs}}
"#,
        server.display()
    );
    let (backend, _proxy, db) = stack(&dir, &queues, 20.0).await;
    let statuses = common::matched_in(&backend.http, "solo", &["hal"]).await;
    let sid = statuses[0]["session_id"].as_str().unwrap();
    assert_eq!(end_reason(&db, sid).await, "failed");
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `warm_pool`: servers of a profile started ahead of demand, each warm once it polls for a
/// session through the SDK. Of two sessions formed at once with one warm server, one takes it
/// and the other finds the pool empty and starts cold (only it waits out the server's 6 s
/// start); both play through the proxy and complete with the server's report; the pool
/// refills; and `/health` shows it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiles_warm_servers_take_their_sessions_through_the_sdk() {
    let dir = scratch();
    let server = common::built_binary("sdk-example-server");
    let queues = format!(
        r#"
servers:
  warm:
    command: ["{}", "--ready-after-ms", "6000"]
    ports: [{{name: game, protocol: tcp}}]
    ready: sdk
    identity: proxy-v2
    ends: sdk
    warm_pool: {{min: 1, max: 1}}
queues:
  - {{name: warm, session_size: 1, server: warm}}
"#,
        server.display()
    );
    let (backend, proxy, db) = stack(&dir, &queues, 20.0).await;
    let pool = || async {
        let (_, health) = backend.http.get("/health").await;
        health["warm_profiles"]["warm"].clone()
    };
    eventually(Duration::from_secs(20), || async {
        (pool().await["idle"] == 1).then_some(())
    })
    .await;

    // Two sessions at once with one warm server: one takes it, the other starts cold (the
    // pool's refill takes the server's whole 6 s start).
    let statuses = common::matched_in(&backend.http, "warm", &["wendy", "colin"]).await;
    let mut cold = 0;
    for (status, player) in statuses.iter().zip(["wendy", "colin"]) {
        let sid = status["session_id"].as_str().unwrap().to_owned();
        let (_, took) = common::ready_after(&backend.http, &sid).await;
        if took >= time::Duration::milliseconds(5500) {
            cold += 1;
        }
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let ticket = status["ticket"].as_str().unwrap();
        stream.write_all(format!("JOIN {ticket}\n").as_bytes()).await.unwrap();
        let mut line = String::new();
        let mut reader = BufReader::new(stream);
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line.trim_end(), format!("WELCOME {player}"));
        drop(reader);
        assert_eq!(end_reason(&db, &sid).await, "completed");
    }
    let after = pool().await;
    assert_eq!(
        (after["handed"].as_u64(), after["cold_starts"].as_u64()),
        (Some(1), Some(1)),
        "{after}"
    );
    assert_eq!(cold, 1, "only the cold session waited out the server's start");
    // The pool refills.
    eventually(Duration::from_secs(20), || async {
        (pool().await["idle"] == 1).then_some(())
    })
    .await;
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A profile with versions keeps warm servers of each version: a session is handed one of its
/// own version's (each version's pool counts its own), and a version that drains keeps none: its
/// idle servers are stopped while the other version's pool stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_version_keeps_its_own_warm_servers_and_a_drained_one_keeps_none() {
    let dir = scratch();
    let server = common::built_binary("sdk-example-server");
    let queues = format!(
        r#"
servers:
  warm:
    command: ["{}"]
    ports: [{{name: game, protocol: tcp}}]
    ready: sdk
    identity: proxy-v2
    ends: sdk
    warm_pool: {{min: 1, max: 1}}
    versions:
      - {{name: a, weight: 1}}
      - {{name: b, weight: 1}}
queues:
  - {{name: warm, session_size: 1, server: warm}}
"#,
        server.display()
    );
    let (backend, proxy, db) = stack(&dir, &queues, 20.0).await;
    let pool = |key: &'static str| {
        let http = backend.http.clone();
        async move {
            let (_, health) = http.get("/health").await;
            health["warm_profiles"][key].clone()
        }
    };
    for key in ["warm@a", "warm@b"] {
        eventually(Duration::from_secs(20), || async {
            (pool(key).await["idle"] == 1).then_some(())
        })
        .await;
    }
    // Two sessions, one of each version (weights 1:1), each handed a warm server of its own.
    let mut versions = Vec::new();
    for player in ["ann", "bea"] {
        let statuses = common::matched_in(&backend.http, "warm", &[player]).await;
        let status = &statuses[0];
        versions.push(status["version"].as_str().unwrap().to_owned());
        let mut stream = TcpStream::connect(proxy).await.unwrap();
        let ticket = status["ticket"].as_str().unwrap();
        stream.write_all(format!("JOIN {ticket}\n").as_bytes()).await.unwrap();
        let mut line = String::new();
        let mut reader = BufReader::new(stream);
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(line.trim_end(), format!("WELCOME {player}"));
        drop(reader);
        let sid = status["session_id"].as_str().unwrap();
        assert_eq!(end_reason(&db, sid).await, "completed");
    }
    versions.sort();
    assert_eq!(versions, ["a", "b"]);
    for key in ["warm@a", "warm@b"] {
        let books = pool(key).await;
        assert_eq!(
            (books["handed"].as_u64(), books["cold_starts"].as_u64()),
            (Some(1), Some(0)),
            "{key}: {books}"
        );
    }
    // Drain b: its warm server goes; a's pool refills and stays.
    let (status, body) = backend
        .http
        .post_as(
            &common::admin_auth(),
            "/operator/versions/warm/b/drain",
            serde_json::json!({}),
        )
        .await;
    assert!(status.is_success(), "{body}");
    // Its pool's target is 0 (none is started for it) and its idle one is stopped.
    eventually(Duration::from_secs(20), || async {
        let b = pool("warm@b").await;
        (b["target"] == 0 && b["idle"] == 0 && b["starting"] == 0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), || async {
        (pool("warm@a").await["idle"] == 1).then_some(())
    })
    .await;
    assert_eq!(pool("warm@b").await["target"], 0);
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The built-in game server has versions too: each version is a build of its own (here a
/// wrapper that notes each session it runs, then runs the server), new sessions are split by
/// weight, each plays through the proxy as the built-in server does, and its record and
/// history say which version it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_servers_versions_run_their_own_builds_split_by_weight() {
    let dir = scratch();
    let game_server = common::built_binary("game-server");
    script(
        &dir,
        "build-2",
        &format!(
            "#!/bin/sh\necho \"$SESSION_ID\" >> {}/build-2.log\nexec {} \"$@\"\n",
            dir.display(),
            game_server.display()
        ),
    );
    let queues = r#"
servers:
  game-server:
    versions:
      - {name: "1", weight: 1}
      - {name: "2", weight: 1, command: ["SCRIPT/build-2"]}
queues:
  - {name: casual, session_size: 2}
"#;
    let (backend, proxy, db) = stack(&dir, queues, 10.0).await;
    let http = &backend.http;
    let mut by_version: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for n in 0..4 {
        let (a, b) = (format!("b{n}a"), format!("b{n}b"));
        let statuses = common::matched_in(http, "casual", &[&a, &b]).await;
        let version = statuses[0]["version"]
            .as_str()
            .unwrap_or_else(|| panic!("the status says the version: {}", statuses[0]))
            .to_owned();
        let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
        common::play_to_the_end(&proxy.to_string(), &statuses).await;
        assert_eq!(end_reason(&db, &sid).await, "completed");
        by_version.entry(version).or_default().push(sid);
    }
    assert_eq!(by_version.get("1").map(Vec::len), Some(2), "{by_version:?}");
    assert_eq!(by_version.get("2").map(Vec::len), Some(2), "{by_version:?}");
    // Version 2's sessions, and only they, ran its build.
    let mut ran: Vec<String> = std::fs::read_to_string(dir.join("build-2.log"))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    ran.sort();
    let mut want = by_version["2"].clone();
    want.sort();
    assert_eq!(ran, want);
    // The operators see the built-in server's versions.
    let (_, versions) = common::as_admin(http, hyper::Method::GET, "/operator/versions", None).await;
    assert!(versions.to_string().contains("game-server"), "{versions}");
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let recorded: i64 = sqlx::query("SELECT count(*) AS n FROM matches WHERE version = '2'")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
    assert_eq!(recorded, 2);
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The built-in server's versions with a warm pool (`WARM_POOL_MIN`/`MAX`): each version keeps
/// warm servers of its own build, a session is handed one of its version's, `/health` lists
/// each pool, the metrics add them up, and a drained version keeps none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_servers_versions_keep_warm_servers_of_their_own_builds() {
    let dir = scratch();
    let game_server = common::built_binary("game-server");
    script(
        &dir,
        "build-2",
        &format!(
            "#!/bin/sh\necho \"${{SESSION_ID:-warm $WARM_SERVER_ID}}\" >> {}/build-2.log\nexec {} \"$@\"\n",
            dir.display(),
            game_server.display()
        ),
    );
    let file = dir.join("queues.yaml");
    let queues = r#"
servers:
  game-server:
    versions:
      - {name: "1", weight: 1}
      - {name: "2", weight: 1, command: ["SCRIPT/build-2"]}
queues:
  - {name: casual, session_size: 2}
"#;
    std::fs::write(&file, queues.replace("SCRIPT", dir.to_str().unwrap())).unwrap();
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let settings = local_settings(&prefix, &db, &game_server)
        .matchmaking_config(&file)
        .warm_pool(1, 1)
        .build()
        .unwrap();
    let backend = Backend::start(settings).await;
    let (proxy, _stop) = start_proxy(backend.addr, &prefix, &["--player-rate-limit-per-second", "0"]).await;
    let http = &backend.http;
    let health = || async { http.get("/health").await.1 };
    eventually(Duration::from_secs(20), || async {
        let h = health().await;
        let pools = &h["warm_profiles"];
        (pools["game-server@1"]["idle"] == 1 && pools["game-server@2"]["idle"] == 1).then_some(())
    })
    .await;
    // Version 2's warm server runs its build (and version 1's does not).
    let log = || std::fs::read_to_string(dir.join("build-2.log")).unwrap_or_default();
    assert_eq!(log().lines().filter(|l| l.starts_with("warm ")).count(), 1, "{}", log());
    let mut versions = Vec::new();
    for n in 0..2 {
        let (a, b) = (format!("w{n}a"), format!("w{n}b"));
        let statuses = common::matched_in(http, "casual", &[&a, &b]).await;
        versions.push(statuses[0]["version"].as_str().unwrap().to_owned());
        let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
        common::play_to_the_end(&proxy.to_string(), &statuses).await;
        assert_eq!(end_reason(&db, &sid).await, "completed");
    }
    versions.sort();
    assert_eq!(versions, ["1", "2"]);
    // Each was handed a warm server of its own version; no session was started cold (so none
    // ran build-2 but as a warm server).
    let h = health().await;
    for key in ["game-server@1", "game-server@2"] {
        let books = &h["warm_profiles"][key];
        assert_eq!(
            (books["handed"].as_u64(), books["cold_starts"].as_u64()),
            (Some(1), Some(0)),
            "{key}: {h}"
        );
    }
    assert!(log().lines().all(|l| l.starts_with("warm ")), "{}", log());
    assert_eq!(
        h["warm_servers"]["handed"], 2,
        "the built-in server's pools together: {h}"
    );
    let (_, metrics) = http.get("/metrics").await;
    let metrics = metrics.as_str().unwrap();
    assert!(metrics.lines().any(|l| l == "mp_warm_handed_total 2"), "{metrics}");

    // Drain version 2: its pool's target is 0 and its idle server stops; version 1's stays.
    let (status, body) = http
        .post_as(
            &common::admin_auth(),
            "/operator/versions/game-server/2/drain",
            serde_json::json!({}),
        )
        .await;
    assert!(status.is_success(), "{body}");
    eventually(Duration::from_secs(20), || async {
        let h = health().await;
        let two = &h["warm_profiles"]["game-server@2"];
        (two["target"] == 0 && two["idle"] == 0 && two["starting"] == 0).then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), || async {
        (health().await["warm_profiles"]["game-server@1"]["idle"] == 1).then_some(())
    })
    .await;
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that tells each rostered player which version it is: `VERSION <MATCHPLANE_VERSION>
/// <its first argument>`, then exits 0 once all have been told.
const VERSION_SERVER: &str = r#"#!/usr/bin/env python3
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["MATCHPLANE_PORT_GAME"])))
s.listen(16)
for _ in os.environ["MATCHPLANE_PLAYERS"].split(","):
    c, _ = s.accept()
    c.recv(4096)
    c.sendall(("VERSION %s %s\n" % (os.environ["MATCHPLANE_VERSION"], sys.argv[1])).encode())
    c.close()
sys.exit(0)
"#;

#[tokio::test]
async fn a_profiles_versions_split_new_sessions_by_weight_and_every_record_says_which() {
    let dir = scratch();
    script(&dir, "stable.py", VERSION_SERVER);
    script(&dir, "next.py", VERSION_SERVER);
    let queues = r#"
servers:
  canary:
    command: ["SCRIPT/stable.py", "stable-build"]
    ports: [{name: game, protocol: tcp}]
    ready: port
    versions:
      - {name: stable, weight: 3}
      - {name: next, command: ["SCRIPT/next.py", "next-build"], weight: 1}
      - {name: parked, weight: 0}
queues:
  - {name: duel, session_size: 2, server: canary}
"#;
    let (backend, proxy, db) = stack(&dir, queues, 10.0).await;
    let http = &backend.http;
    // Four sessions one after another: weights 3, 1 and 0 give exactly 3, 1 and 0 of them.
    let mut seen = Vec::new();
    for n in 0..4 {
        let (a, b) = (format!("v{n}a"), format!("v{n}b"));
        let statuses = common::matched_in(http, "duel", &[&a, &b]).await;
        let version = statuses[0]["version"]
            .as_str()
            .expect("the status says the version")
            .to_owned();
        assert_eq!(statuses[1]["version"], statuses[0]["version"]);
        let sid = statuses[0]["session_id"].as_str().unwrap().to_owned();
        let (_, session) = http.get(&format!("/sessions/{sid}")).await;
        assert_eq!(session["version"], version.as_str(), "{session}");
        let (_, live) = http.get(&format!("/sessions/active?version={version}")).await;
        assert_eq!(live["matching"], 1, "{live}");
        let other = if version == "next" { "stable" } else { "next" };
        let (_, live) = http.get(&format!("/sessions/active?version={other}")).await;
        assert_eq!(live["matching"], 0, "{live}");
        // The server is the version's program, told its version.
        let build = if version == "next" {
            "next-build"
        } else {
            "stable-build"
        };
        for status in &statuses {
            let (line, _) = say_hello(proxy, status).await;
            assert_eq!(line, format!("VERSION {version} {build}"));
        }
        assert_eq!(end_reason(&db, &sid).await, "completed");
        seen.push((sid, version));
    }
    let count = |v: &str| seen.iter().filter(|(_, version)| version == v).count();
    assert_eq!((count("stable"), count("next"), count("parked")), (3, 1, 0), "{seen:?}");
    // The history keeps it, and so does an ended session's view (from its row).
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    for (sid, version) in &seen {
        let stored: Option<String> = sqlx::query_scalar("SELECT version FROM matches WHERE session_id::text = $1")
            .bind(sid)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(stored.as_deref(), Some(version.as_str()));
        let (_, session) = http.get(&format!("/sessions/{sid}")).await;
        assert_eq!(session["version"], version.as_str());
    }
    // The split is counted by version, every version there from the start.
    let (_, metrics) = http.request(hyper::Method::GET, "/metrics", &[], Vec::new()).await;
    let metrics = metrics.as_str().unwrap().to_owned();
    for (version, n) in [("stable", 3), ("next", 1), ("parked", 0)] {
        let line = format!("mp_version_sessions_total{{profile=\"canary\",version=\"{version}\"}} {n}");
        assert!(metrics.contains(&line), "no {line:?} in the metrics");
    }
    backend.stop().await;
}

/// A backend of `prefix` named `instance`, running `file`'s profiles.
async fn replica(prefix: &str, db: &str, file: &Path, instance: &str) -> Backend {
    let settings = local_settings(prefix, db, &common::built_binary("game-server"))
        .matchmaking_config(file)
        .instance_id(instance)
        // Its sessions' servers are stopped a second into its shutdown.
        .shutdown_grace_seconds(1.0)
        .build()
        .unwrap();
    Backend::start(settings).await
}

/// The versions each of `n` sessions of `queue` ran, joined through `http` one after another
/// (their servers left waiting for their players).
async fn versions_of_sessions(http: &Http, queue: &str, tag: &str, n: usize) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for i in 0..n {
        let (a, b) = (format!("{tag}{i}a"), format!("{tag}{i}b"));
        let statuses = common::matched_in(http, queue, &[&a, &b]).await;
        out.push((statuses[0]["version"].as_str().unwrap().to_owned(), statuses));
    }
    out
}

#[tokio::test]
async fn weights_set_at_run_time_reach_every_replica_survive_restarts_and_a_drain_lets_matches_finish() {
    let dir = scratch();
    script(&dir, "stable.py", VERSION_SERVER);
    script(&dir, "next.py", VERSION_SERVER);
    let file = dir.join("queues.yaml");
    let queues = r#"
servers:
  canary:
    command: ["SCRIPT/stable.py", "stable-build"]
    ports: [{name: game, protocol: tcp}]
    ready: port
    versions:
      - {name: stable, weight: 1}
      - {name: next, command: ["SCRIPT/next.py", "next-build"], weight: 0}
queues:
  - {name: duel, session_size: 2, server: canary}
"#;
    std::fs::write(&file, queues.replace("SCRIPT", dir.to_str().unwrap())).unwrap();
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let first = replica(&prefix, &db, &file, "replica-1").await;
    let second = replica(&prefix, &db, &file, "replica-2").await;
    let (status, list) = common::as_admin(&first.http, hyper::Method::GET, "/operator/versions", None).await;
    assert_eq!(status, 200, "{list}");
    let canary = &list["profiles"][0];
    assert_eq!(canary["profile"], "canary");
    assert_eq!(canary["queues"], serde_json::json!(["duel"]));
    assert_eq!(
        (
            canary["versions"][0]["weight"].as_u64(),
            canary["versions"][1]["weight"].as_u64()
        ),
        (Some(1), Some(0))
    );

    // Weights set on one replica: the other follows within a second, with no restart.
    let body = serde_json::json!({"weights": {"stable": 0, "next": 1}});
    let (status, now) =
        common::as_admin(&first.http, hyper::Method::PUT, "/operator/versions/canary", Some(body)).await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(now["versions"][1]["weight"], 1);
    first.stop().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let on_second = versions_of_sessions(&second.http, "duel", "w", 2).await;
    assert!(on_second.iter().all(|(v, _)| v == "next"), "{on_second:?}");
    // ... and a replica started afterwards reads them from Redis.
    let third = replica(&prefix, &db, &file, "replica-3").await;
    second.stop().await;
    let on_third = versions_of_sessions(&third.http, "duel", "r", 1).await;
    assert_eq!(on_third[0].0, "next");
    let running = on_third[0].1.clone();
    let running_sid = running[0]["session_id"].as_str().unwrap().to_owned();

    // Bad changes are refused and change nothing.
    for (profile, weights, want) in [
        ("nope", serde_json::json!({}), 404),
        ("canary", serde_json::json!({"beta": 1}), 404),
        ("canary", serde_json::json!({"next": 1001}), 422),
        ("canary", serde_json::json!({"next": 0}), 422),
        ("canary", serde_json::json!({"next": -1}), 422),
        ("canary", serde_json::json!({"next": 0.5}), 422),
    ] {
        let path = format!("/operator/versions/{profile}");
        let body = serde_json::json!({ "weights": weights });
        let (status, reply) = common::as_admin(&third.http, hyper::Method::PUT, &path, Some(body)).await;
        assert_eq!(status, want, "{path} {weights}: {reply}");
    }
    for (version, want) in [("next", 422), ("beta", 404)] {
        let path = format!("/operator/versions/canary/{version}/drain");
        let (status, reply) = common::as_admin(&third.http, hyper::Method::POST, &path, None).await;
        assert_eq!(status, want, "{path}: {reply}");
    }
    let (status, _) = third
        .http
        .request(
            hyper::Method::POST,
            "/operator/versions/canary/next/drain",
            &[("authorization", &common::service_auth())],
            Vec::new(),
        )
        .await;
    assert_eq!(status, 403);

    // A drain: no new session on it, and the running one plays to its end.
    let body = serde_json::json!({"weights": {"stable": 1}});
    assert_eq!(
        common::as_admin(&third.http, hyper::Method::PUT, "/operator/versions/canary", Some(body))
            .await
            .0,
        200
    );
    let (status, now) = common::as_admin(
        &third.http,
        hyper::Method::POST,
        "/operator/versions/canary/next/drain",
        None,
    )
    .await;
    assert_eq!(status, 200, "{now}");
    let next = &now["versions"][1];
    assert_eq!(
        (next["draining"].as_bool(), next["weight"].as_u64()),
        (Some(true), Some(0)),
        "{now}"
    );
    assert_eq!(next["live_sessions"], 1, "{now}");
    assert_eq!(next["drained_at"], Value::Null);
    let after = versions_of_sessions(&third.http, "duel", "d", 2).await;
    assert!(after.iter().all(|(v, _)| v == "stable"), "{after:?}");
    assert_eq!(
        third.http.status("r0a", 0.0).await["status"],
        "matched",
        "the drain stops no match"
    );
    // A replica (re)started mid-drain has the drain from its first session on.
    let fourth = replica(&prefix, &db, &file, "replica-4").await;
    let on_fourth = versions_of_sessions(&fourth.http, "duel", "f", 1).await;
    assert_eq!(on_fourth[0].0, "stable", "{on_fourth:?}");
    let (_, list) = common::as_admin(&fourth.http, hyper::Method::GET, "/operator/versions", None).await;
    let next = &list["profiles"][0]["versions"][1];
    assert_eq!(
        (next["draining"].as_bool(), next["live_sessions"].as_u64()),
        (Some(true), Some(1)),
        "{list}"
    );
    let (proxy, _stop) = start_proxy(third.addr, &prefix, &["--player-rate-limit-per-second", "0"]).await;
    for status in &running {
        let (line, _) = say_hello(proxy, status).await;
        assert_eq!(line, "VERSION next next-build");
    }
    assert_eq!(end_reason(&db, &running_sid).await, "completed");
    let drained = eventually(Duration::from_secs(15), || async {
        let (_, list) = common::as_admin(&third.http, hyper::Method::GET, "/operator/versions", None).await;
        let next = list["profiles"][0]["versions"][1].clone();
        next["drained_at"].is_string().then_some(next)
    })
    .await;
    assert_eq!(drained["live_sessions"], 0, "{drained}");
    let (_, list) = common::as_admin(&fourth.http, hyper::Method::GET, "/operator/versions", None).await;
    assert_eq!(list["profiles"][0]["versions"][1]["drained_at"], drained["drained_at"]);
    fourth.stop().await;
    // Every change is in the audit log, refusals included.
    let (_, log) = common::as_admin(&third.http, hyper::Method::GET, "/operator/audit?limit=50", None).await;
    let entries = log["entries"].as_array().unwrap();
    let has = |action: &str, outcome: &str| {
        entries
            .iter()
            .any(|e| e["action"] == action && e["outcome"].as_str().is_some_and(|o| o.starts_with(outcome)))
    };
    assert!(has("set_weights", "stable=0,next=1"), "{log}");
    assert!(has("drain_version", "stable=1,next=0 (draining next)"), "{log}");
    assert!(has("drain_version", "refused: "), "{log}");
    third.stop().await;
}

/// Joins `player` to `queue` as the studio's service with `client_version`.
async fn join_as_client(http: &Http, queue: &str, player: &str, client_version: &str) -> (hyper::StatusCode, Value) {
    let body =
        serde_json::json!({"player_id": player, "queue": queue, "attributes": {"client_version": client_version}});
    http.post("/match/join", body).await
}

async fn matched_status(http: &Http, player: &str) -> Value {
    eventually(Duration::from_secs(30), || async {
        let status = http.status(player, 5.0).await;
        (status["status"] == "matched").then_some(status)
    })
    .await
}

#[tokio::test]
async fn client_version_keeps_players_with_servers_of_their_version() {
    let dir = scratch();
    script(&dir, "stable.py", VERSION_SERVER);
    script(&dir, "next.py", VERSION_SERVER);
    let queues = r#"
servers:
  canary:
    command: ["SCRIPT/stable.py", "stable-build"]
    ports: [{name: game, protocol: tcp}]
    ready: port
    versions:
      - {name: stable, weight: 1}
      - {name: next, command: ["SCRIPT/next.py", "next-build"], weight: 0}
queues:
  - {name: pinned, session_size: 2, match_on: [client_version], server: canary}
"#;
    let file = dir.join("queues.yaml");
    std::fs::write(&file, queues.replace("SCRIPT", dir.to_str().unwrap())).unwrap();
    let db = common::fresh_database().await;
    let backend = replica(&common::unique_prefix(), &db, &file, "pinning").await;
    let http = &backend.http;
    // Interleaved clients of two versions: never mixed, each on its own version, the one of
    // weight 0 included (weights split only sessions no client pins).
    for (player, version) in [("s1", "stable"), ("n1", "next"), ("s2", "stable"), ("n2", "next")] {
        let (status, body) = join_as_client(http, "pinned", player, version).await;
        assert_eq!(status, 200, "{body}");
    }
    for (a, b, version) in [("s1", "s2", "stable"), ("n1", "n2", "next")] {
        let (first, second) = (matched_status(http, a).await, matched_status(http, b).await);
        assert_eq!(first["session_id"], second["session_id"], "{a} and {b} play together");
        assert_eq!(first["version"], version, "{first}");
    }
    // A version the profile does not have is refused at the join.
    let (status, body) = join_as_client(http, "pinned", "b1", "beta").await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("serves stable, next"),
        "{body}"
    );
    // So is a version that drains; the other still takes players.
    let (status, _) = http
        .request(
            hyper::Method::POST,
            "/operator/versions/canary/next/drain",
            &[("authorization", &common::admin_auth())],
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = join_as_client(http, "pinned", "n3", "next").await;
    assert_eq!(status, 422, "{body}");
    let (status, _) = join_as_client(http, "pinned", "s3", "stable").await;
    assert_eq!(status, 200);
    backend.stop().await;
}
