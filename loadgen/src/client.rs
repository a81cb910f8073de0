//! The client side of a game connection through matchplane, for any game: join a queue and wait
//! to be matched, then reach the session's server through the proxy with the ticket: over TCP
//! with the one-line preamble (`JOIN <ticket>\n`, after which the stream carries the game's own
//! bytes), or over UDP with the proxy's framing (`protocol::udp`). `loadgen relay` puts this in
//! front of an unmodified game client.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::Method;
use protocol::api::{JoinRequest, MatchResponse, MatchStatus};
use protocol::udp::{self, FromProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

use crate::http::{HttpClient, HttpError};

/// Why a player could not get to play.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Http(#[from] HttpError),
    #[error("not matched within {0:?} (last status {1})")]
    NotMatched(Duration, String),
    #[error("the session ended before play: {0}")]
    Ended(String),
    #[error("the proxy refused the JOIN: {0}")]
    Refused(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Joins `queue` (the default queue when `None`) as `player` and long-polls its status until it
/// is matched, `patience` runs out, or its session ends first.
pub async fn join_and_wait(
    http: &HttpClient,
    authorization: Option<&str>,
    player: &str,
    queue: Option<&str>,
    patience: Duration,
) -> Result<MatchResponse, ClientError> {
    let mut request = JoinRequest::player(player);
    request.queue = queue.map(str::to_owned);
    let mut status: MatchResponse = http
        .json(Method::POST, "/match/join", Some(&request), authorization)
        .await?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match status.status {
            MatchStatus::Matched => return Ok(status),
            MatchStatus::Ended | MatchStatus::TimedOut => {
                return Err(ClientError::Ended(format!("{:?}", status.end_reason)));
            }
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ClientError::NotMatched(patience, format!("{:?}", status.status)));
        }
        status = http
            .json(
                Method::GET,
                &format!("/match/status?player_id={player}&wait=5"),
                None,
                authorization,
            )
            .await?;
    }
}

/// Where a matched player connects: the answer's `connect_host:connect_port`, resolved.
pub async fn proxy_address(status: &MatchResponse) -> io::Result<SocketAddr> {
    tokio::net::lookup_host((status.connect_host.as_str(), status.connect_port))
        .await?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "connect_host does not resolve"))
}

/// A TCP connection to the session's server through the proxy at `proxy`, its ticket sent:
/// from here on the stream carries the game's own bytes both ways.
pub async fn connect_tcp(proxy: SocketAddr, ticket: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    stream.write_all(format!("JOIN {ticket}\n").as_bytes()).await?;
    Ok(stream)
}

/// A player's UDP flow to the session's server through the proxy.
pub struct UdpFlow {
    socket: UdpSocket,
    id: u64,
    buf: Vec<u8>,
}

impl UdpFlow {
    /// Opens the flow: a JOIN with the ticket, resent every 250 ms until the proxy's WELCOME
    /// (or REFUSED) or `patience` runs out.
    pub async fn open(proxy: SocketAddr, ticket: &str, patience: Duration) -> Result<UdpFlow, ClientError> {
        let local: SocketAddr = if proxy.is_ipv4() {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(proxy).await?;
        let nonce = fastrand::u32(..).to_be_bytes();
        let join = udp::join(nonce, ticket);
        let mut buf = vec![0u8; 65_536];
        let deadline = tokio::time::Instant::now() + patience;
        while tokio::time::Instant::now() < deadline {
            socket.send(&join).await?;
            let Ok(received) = tokio::time::timeout(Duration::from_millis(250), socket.recv(&mut buf)).await else {
                continue;
            };
            match udp::parse_proxy(&buf[..received?]) {
                Some(FromProxy::Welcome { nonce: n, id }) if n == nonce => return Ok(UdpFlow { socket, id, buf }),
                Some(FromProxy::Refused { nonce: n, code }) if n == nonce => {
                    return Err(ClientError::Refused(code.to_owned()));
                }
                _ => {}
            }
        }
        Err(ClientError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            "no WELCOME from the proxy",
        )))
    }

    /// The connection id the proxy handed back.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends one game datagram to the server.
    pub async fn send(&self, payload: &[u8]) -> io::Result<()> {
        self.socket.send(&udp::data(self.id, payload)).await.map(|_| ())
    }

    /// The server's next game datagram (anything else from the proxy is skipped).
    pub async fn recv(&mut self) -> io::Result<&[u8]> {
        loop {
            let n = self.socket.recv(&mut self.buf).await?;
            if matches!(udp::parse_proxy(&self.buf[..n]), Some(FromProxy::Data { .. })) {
                return Ok(&self.buf[1..n]);
            }
        }
    }
}
