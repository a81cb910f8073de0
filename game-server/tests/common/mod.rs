//! Test kit for game-server tests: tickets, a line client whose every receive is bounded, an
//! in-process server on an ephemeral port, and a result-report receiver.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use game_server::{Config, ServerConfig};
use protocol::api::ResultReport;
use protocol::ticket::unix_now;
use protocol::{Claims, ServerReply, TicketSecret};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "kit-secret-0123456789abcdef";
pub const SESSION: &str = "session-kit";
pub const WAIT: Duration = Duration::from_secs(10);

pub fn secret() -> TicketSecret {
    TicketSecret::new(SECRET).unwrap()
}

pub fn ticket(player: &str, session: &str) -> String {
    secret().mint(&Claims::game(player, session, unix_now(), 600))
}

pub fn roster(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("p{i}")).collect()
}

/// Parses a config the way the binary does, from flags.
pub fn config(players: &[String], extra: &[&str]) -> ServerConfig {
    let players = players.join(",");
    let mut args = vec![
        "game-server",
        "--session-id",
        SESSION,
        "--players",
        &players,
        "--ticket-secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    service::cli::parse_without_env::<Config, _, _>(args)
        .unwrap()
        .validate()
        .unwrap()
}

pub struct Server {
    pub addr: SocketAddr,
    pub task: JoinHandle<anyhow::Result<ResultReport>>,
    pub shutdown: CancellationToken,
}

impl Server {
    pub async fn start(config: ServerConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(game_server::run(listener, config, shutdown.clone()));
        Server { addr, task, shutdown }
    }

    pub async fn finish(self) -> ResultReport {
        timeout(Duration::from_secs(30), self.task)
            .await
            .expect("server stops")
            .unwrap()
            .unwrap()
    }
}

pub use testkit::LineClient as Client;

/// Connects and joins as `player`; returns the client after checking the WELCOME.
pub async fn joined(addr: SocketAddr, player: &str) -> Client {
    let mut client = Client::connect(addr).await;
    client.send(&format!("JOIN {}", ticket(player, SESSION))).await;
    match client.recv().await {
        Some(ServerReply::Welcome { player_id, .. }) => assert_eq!(player_id, player),
        other => panic!("{player}: expected WELCOME, got {other:?}"),
    }
    client
}

/// Sends `PING nonce` and checks the `PONG`.
pub async fn ping(client: &mut Client, nonce: &str) {
    client.send(&format!("PING {nonce}")).await;
    client.expect(ServerReply::Pong(Some(nonce.into()))).await;
}

/// A received result report: its `Authorization` header and body.
#[derive(Debug)]
pub struct Received {
    pub authorization: String,
    pub path: String,
    pub report: ResultReport,
}

/// An HTTP endpoint that answers each report with the next status of `statuses` (then 200),
/// and hands every report it parsed to the returned channel.
pub async fn report_receiver(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/internal/sessions/{SESSION}/result",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            let (head, body) = loop {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "request ended early");
                raw.extend_from_slice(&buf[..n]);
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap();
                    while raw.len() < end + 4 + length {
                        let n = stream.read(&mut buf).await.unwrap();
                        raw.extend_from_slice(&buf[..n]);
                    }
                    break (head, raw[end + 4..end + 4 + length].to_vec());
                }
            };
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            // Only results are received here: the roster a server follows is not this
            // backend's (a backend without backfill answers 404, and the server stops asking).
            if !path.ends_with("/result") {
                let _ = stream
                    .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    .await;
                continue;
            }
            let status = statuses.next().unwrap_or(200);
            let _ = stream
                .write_all(format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes())
                .await;
            let authorization = head
                .lines()
                .find_map(|l| l.strip_prefix("Authorization: ").map(str::to_owned))
                .unwrap_or_default();
            let report = serde_json::from_slice(&body).unwrap();
            let _ = tx.send(Received {
                authorization,
                path,
                report,
            });
        }
    });
    (url, rx)
}
