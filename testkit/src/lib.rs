//! What matchplane's integration tests share, so no crate writes it again:
//! - the Redis and PostgreSQL that `make test` starts (`MP_TEST_REDIS_URL`,
//!   `MP_TEST_DATABASE_URL`), with a key prefix and a database per test;
//! - the binaries `make test` built, found next to the test executable;
//! - [`LineClient`], a game-protocol client whose every receive is bounded;
//! - [`eventually`], polling for a condition with a deadline;
//! - [`RedisServer`], a Redis (or Sentinel) of a test's own, to kill and restart;
//! - [`Relay`], a TCP relay in front of a service, whose links can go silent.

mod redis_server;
mod relay;

pub use redis_server::RedisServer;
pub use relay::Relay;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use protocol::{LineCodec, ServerReply};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// How long any single receive may take before the test fails.
pub const RECEIVE_LIMIT: Duration = Duration::from_secs(20);

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with `make test`, which starts Redis and PostgreSQL")
    })
}

/// The test Redis; a run without it is a broken run, not a skipped test.
pub fn redis_url() -> String {
    required("MP_TEST_REDIS_URL")
}

/// The test PostgreSQL's admin URL.
pub fn database_admin_url() -> String {
    required("MP_TEST_DATABASE_URL")
}

/// A Redis key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// A loopback port free right now, for a process the test starts to listen on, and not one
/// this process was given before.
///
/// It is taken below the kernel's ephemeral range (`ip_local_port_range`) where there is room:
/// a port the kernel picked for port 0 could be picked again, for an outgoing connection or a
/// game server listening on port 0 in a test running beside this one, before the process it
/// was meant for binds it.
pub async fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    for _ in 0..1000 {
        let port = if ephemeral > 11_000 {
            10_000 + (uuid::Uuid::new_v4().as_u128() % u128::from(ephemeral - 10_000)) as u16
        } else {
            0
        };
        let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await else {
            continue;
        };
        let port = listener.local_addr().expect("a bound address").port();
        let mut given = GIVEN.lock().expect("ports lock");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free loopback port");
}

/// Waits (up to 30 s) until something listens on loopback `port`.
pub async fn listening(port: u16) {
    eventually(std::time::Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
    })
    .await;
}

/// A fresh database for one test; returns its URL.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let admin = database_admin_url();
    let name = format!("t{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect("the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("CREATE DATABASE");
    let base = admin.rsplit_once('/').expect("a database URL").0;
    format!("{base}/{name}")
}

/// A workspace binary that `make test` built, next to this test executable.
pub fn built_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (`make test` does: cargo build --workspace --bins)",
        path.display()
    );
    path
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A game-protocol client; every receive fails the test after [`RECEIVE_LIMIT`].
pub struct LineClient {
    framed: Framed<TcpStream, LineCodec>,
}

impl LineClient {
    /// Connects to a game server or the proxy.
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs) -> LineClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        LineClient {
            framed: Framed::new(stream, LineCodec::new()),
        }
    }

    /// Sends one line (the `\n` is added).
    pub async fn send(&mut self, line: &str) {
        self.framed
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("send a line");
    }

    /// Sends raw bytes, as a misbehaving client would.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.framed.get_mut().write_all(bytes).await
    }

    /// The next reply, or `None` once the peer closed the connection.
    pub async fn recv(&mut self) -> Option<ServerReply> {
        let line = tokio::time::timeout(RECEIVE_LIMIT, self.framed.next())
            .await
            .expect("a reply within the receive limit")?;
        let line = line.ok()?;
        let text = std::str::from_utf8(&line).expect("replies are UTF-8");
        Some(ServerReply::parse(text).expect("a well-formed reply"))
    }

    /// Asserts the next reply.
    pub async fn expect(&mut self, want: ServerReply) {
        assert_eq!(self.recv().await, Some(want));
    }

    /// Asserts the peer closed the connection.
    pub async fn expect_closed(&mut self) {
        assert_eq!(self.recv().await, None, "connection should be closed");
    }

    /// The underlying socket, for raw reads.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.framed.get_mut()
    }
}
