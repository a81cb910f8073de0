//! Connections to the backend for forwarded API requests, and HTTP/1.1 on them.
//!
//! A player's HTTP/1.1 connection sends its requests one after another, so it needs one
//! backend connection at a time (a [`Lane`]): taken when its first request is forwarded, used
//! in the player connection's own task, and given back when the player's connection closes.
//! Given-back connections wait in an idle list for the next player's connection, newest first,
//! for at most [`IDLE_FOR`] (under the backend's own 10 s keep-alive), and every connection is
//! checked just before a request goes out on it: one the backend has closed, or with bytes
//! nobody asked for, is dropped.
//!
//! The exchange itself is plain HTTP/1.1 with the backend, which is ours: the request's head
//! and body in one write, the answer's head parsed by `httparse`, its body by its
//! `Content-Length` or chunked, then the connection kept or closed as the answer says. It costs
//! a fraction of a general-purpose client's machinery (no connection task, no channels, no body
//! stream), and the proxy's HTTP path is most of a player's time to play.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long a backend connection may wait idle to be used again.
const IDLE_FOR: Duration = Duration::from_secs(5);
/// Idle backend connections kept at most (beyond them, given-back connections are closed).
const IDLE_MAX: usize = 1024;
/// How long a connection to the backend may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The largest answer head and the most header lines taken from the backend.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
/// The largest answer body taken from the backend (its answers are a few KiB).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// Where the backend is, and its idle connections.
pub(crate) struct Backend {
    /// `host:port` of `BACKEND_URL`.
    authority: String,
    /// The `Host` header sent to it.
    host: HeaderValue,
    idle: Mutex<Vec<(TcpStream, Instant)>>,
}

/// Why a request got no whole answer from the backend.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// No answer: the backend could not be reached, or its connection failed or closed before
    /// an answer's head came.
    Unreachable(std::io::Error),
    /// An answer began but was cut off, or was not HTTP.
    CutOff(std::io::Error),
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::Unreachable(e) => write!(f, "no answer: {e}"),
            ForwardError::CutOff(e) => write!(f, "answer cut off: {e}"),
        }
    }
}

/// A request as it goes to the backend.
pub(crate) struct Outgoing<'a> {
    pub method: &'a Method,
    /// The origin-form target: path and query.
    pub target: &'a str,
    /// The headers to send (hop-by-hop ones, `Host`, `Content-Length` and `Expect` left out by
    /// the caller).
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// The backend's answer.
pub(crate) struct Answer {
    pub status: StatusCode,
    /// Its headers but the ones that describe the hop (`Connection`, `Keep-Alive`,
    /// `Transfer-Encoding`, `Content-Length`, ...).
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Backend {
    /// The backend of `BACKEND_URL` (`http://host:port`, validated by the settings).
    pub(crate) fn new(backend_url: &str) -> Backend {
        let uri: hyper::Uri = backend_url.parse().expect("BACKEND_URL is validated at start");
        let authority = uri.authority().expect("BACKEND_URL has a host");
        let port = authority.port_u16().unwrap_or(80);
        Backend {
            authority: format!("{}:{port}", authority.host()),
            host: HeaderValue::from_str(authority.as_str()).expect("an authority is a header value"),
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection that is still open and quiet (true: reused), or a new one.
    async fn connect(&self) -> std::io::Result<(TcpStream, bool)> {
        if let Some(stream) = self.idle() {
            return Ok((stream, true));
        }
        Ok((self.connect_new().await?, false))
    }

    /// The newest idle connection that is still open and quiet.
    fn idle(&self) -> Option<TcpStream> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().expect("the idle list is never poisoned");
                let now = Instant::now();
                // Oldest first in the list: the stale ones are at the front.
                let fresh_from = idle.partition_point(|(_, since)| now.duration_since(*since) > IDLE_FOR);
                idle.drain(..fresh_from);
                idle.pop()
            };
            let (stream, _) = candidate?;
            if quiet(&stream) {
                return Some(stream);
            }
        }
    }

    /// A new connection: through a Service, possibly to another replica.
    async fn connect_new(&self) -> std::io::Result<TcpStream> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.authority))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"))??;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn give_back(&self, stream: TcpStream) {
        let mut idle = self.idle.lock().expect("the idle list is never poisoned");
        if idle.len() < IDLE_MAX {
            idle.push((stream, Instant::now()));
        }
    }
}

/// Whether an idle connection is still open and has nothing to read, as it should.
fn quiet(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The lane of one player's connection, lent to each of its requests in turn.
pub(crate) struct LaneSlot {
    backend: Arc<Backend>,
    lane: Mutex<Option<Lane>>,
}

impl LaneSlot {
    pub(crate) fn new(backend: Arc<Backend>) -> LaneSlot {
        LaneSlot {
            backend,
            lane: Mutex::new(None),
        }
    }

    /// The lane, for one request. (Requests on one connection come one after another; were
    /// two ever to overlap, the second would get a lane of its own.)
    pub(crate) fn take(&self) -> Lane {
        self.lane
            .lock()
            .expect("a lane slot is never poisoned")
            .take()
            .unwrap_or_else(|| Lane::new(self.backend.clone()))
    }

    /// The lane back after its request. A request dropped half way (a timeout, the player
    /// gone) never gives it back, and its connection, in an unknown state, is closed.
    pub(crate) fn put(&self, lane: Lane) {
        *self.lane.lock().expect("a lane slot is never poisoned") = Some(lane);
    }

    /// Gives the lane's connection to the idle list; call once the player's connection closed.
    pub(crate) fn release(&self) {
        let lane = self.lane.lock().expect("a lane slot is never poisoned").take();
        if let Some(mut lane) = lane {
            lane.release();
        }
    }
}

/// The backend connection of one player's connection.
pub(crate) struct Lane {
    backend: Arc<Backend>,
    held: Option<TcpStream>,
    /// Read buffer, kept between requests.
    buf: BytesMut,
    /// Write buffer for a request's head and body.
    out: Vec<u8>,
}

impl Lane {
    pub(crate) fn new(backend: Arc<Backend>) -> Lane {
        Lane {
            backend,
            held: None,
            buf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    /// Sends `request` and reads the whole answer. A request whose reused connection turns
    /// out closed before any answer byte (the backend closed it just then) is sent once more.
    /// And once per request, it goes to another replica (a new connection, which a Service
    /// balances) when the one it reached did nothing with it: the connection could not be
    /// made, an idempotent request got no answer at all, or a replica that is shutting down
    /// refused it (503 with [`protocol::api::DRAINING_HEADER`]). A rollout of the backend
    /// then costs players nothing.
    pub(crate) async fn send(&mut self, request: &Outgoing<'_>) -> Result<Answer, ForwardError> {
        encode(request, &self.backend.host, &mut self.out);
        let (mut stale_retried, mut elsewhere) = (false, false);
        loop {
            let held = self.held.take().filter(quiet);
            let (mut stream, reused) = match held {
                Some(stream) => (stream, true),
                None if elsewhere => match self.backend.connect_new().await {
                    Ok(stream) => (stream, false),
                    Err(e) => return Err(ForwardError::Unreachable(e)),
                },
                None => match self.backend.connect().await {
                    Ok(connected) => connected,
                    Err(_) => {
                        elsewhere = true;
                        continue;
                    }
                },
            };
            self.buf.clear();
            match exchange(&mut stream, &self.out, &mut self.buf, request.method).await {
                Ok((answer, _)) if !elsewhere && draining(&answer) => elsewhere = true,
                Ok((answer, keep)) => {
                    if keep && self.buf.is_empty() {
                        self.held = Some(stream);
                    }
                    return Ok(answer);
                }
                Err(Failure::BeforeAnswer(_)) if reused && !stale_retried => stale_retried = true,
                Err(Failure::BeforeAnswer(_)) if !elsewhere && idempotent(request.method) => elsewhere = true,
                Err(Failure::BeforeAnswer(e)) => return Err(ForwardError::Unreachable(e)),
                Err(Failure::CutOff(e)) => return Err(ForwardError::CutOff(e)),
            }
        }
    }

    /// Gives the backend connection back to the idle list. Call once the player's
    /// connection has closed.
    pub(crate) fn release(&mut self) {
        if let Some(stream) = self.held.take() {
            self.backend.give_back(stream);
        }
    }
}

/// A replica that is shutting down refused the request without doing anything.
fn draining(answer: &Answer) -> bool {
    answer.status == StatusCode::SERVICE_UNAVAILABLE && answer.headers.contains_key(protocol::api::DRAINING_HEADER)
}

/// Whether sending `method` twice does what sending it once does (RFC 9110, 9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The request's head and body, as one buffer.
fn encode(request: &Outgoing<'_>, host: &HeaderValue, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(request.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in request.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !request.body.is_empty()
        || !matches!(
            *request.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        )
    {
        use std::io::Write as _;
        let _ = write!(out, "content-length: {}\r\n", request.body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(request.body);
}

enum Failure {
    /// Nothing of an answer came.
    BeforeAnswer(std::io::Error),
    /// Part of an answer came, or what came is not HTTP.
    CutOff(std::io::Error),
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

/// One request and its answer on `stream`: the answer, and whether the connection may carry
/// another request.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut BytesMut,
    method: &Method,
) -> Result<(Answer, bool), Failure> {
    stream.write_all(request).await.map_err(Failure::BeforeAnswer)?;
    // The head, skipping any interim (1xx) answer.
    let (status, headers, keep, length) = loop {
        if let Some(head) = parse_head(buf).map_err(Failure::CutOff)? {
            if head.0.is_informational() {
                continue;
            }
            break head;
        }
        if buf.len() >= MAX_HEAD {
            return Err(Failure::CutOff(invalid("the backend's answer head is too large")));
        }
        buf.reserve(4096);
        match stream.read_buf(buf).await {
            Ok(0) if buf.is_empty() => {
                return Err(Failure::BeforeAnswer(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(Failure::CutOff(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(e) if buf.is_empty() => return Err(Failure::BeforeAnswer(e)),
            Err(e) => return Err(Failure::CutOff(e)),
        }
    };
    let no_body = *method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let (body, keep) = match length {
        _ if no_body => (Bytes::new(), keep),
        Length::Exactly(n) => {
            if n > MAX_BODY {
                return Err(Failure::CutOff(invalid("the backend's answer is too large")));
            }
            while buf.len() < n {
                buf.reserve(n - buf.len());
                if stream.read_buf(buf).await.map_err(Failure::CutOff)? == 0 {
                    return Err(Failure::CutOff(std::io::ErrorKind::UnexpectedEof.into()));
                }
            }
            (buf.split_to(n).freeze(), keep)
        }
        Length::Chunked => (read_chunked(stream, buf).await.map_err(Failure::CutOff)?, keep),
        Length::UntilClose => {
            loop {
                if buf.len() > MAX_BODY {
                    return Err(Failure::CutOff(invalid("the backend's answer is too large")));
                }
                buf.reserve(4096);
                if stream.read_buf(buf).await.map_err(Failure::CutOff)? == 0 {
                    break;
                }
            }
            (buf.split().freeze(), false)
        }
    };
    Ok((Answer { status, headers, body }, keep))
}

enum Length {
    Exactly(usize),
    Chunked,
    UntilClose,
}

/// The answer head at the start of `buf`, taken off it; `None` while it is incomplete.
#[allow(clippy::type_complexity)]
fn parse_head(buf: &mut BytesMut) -> std::io::Result<Option<(StatusCode, HeaderMap, bool, Length)>> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let used = match response.parse(buf) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("the backend's answer is not HTTP: {e}"))),
    };
    let status = response
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| invalid("the backend's answer has no valid status"))?;
    let mut keep = response.version == Some(1);
    let mut length = Length::UntilClose;
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| invalid("a bad header name"))?;
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| invalid("a bad Content-Length"))?;
            if matches!(length, Length::Chunked) {
                continue;
            }
            length = Length::Exactly(n);
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            if h.value.eq_ignore_ascii_case(b"chunked") {
                length = Length::Chunked;
            } else {
                return Err(invalid("a transfer coding other than chunked"));
            }
            continue;
        }
        if name == header::CONNECTION {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    keep = true;
                }
            }
            continue;
        }
        if hop_by_hop(&name) {
            continue;
        }
        let value = HeaderValue::from_bytes(h.value).map_err(|_| invalid("a bad header value"))?;
        headers.append(name, value);
    }
    buf.advance(used);
    if matches!(length, Length::UntilClose) {
        keep = false;
    }
    Ok(Some((status, headers, keep, length)))
}

/// Headers that describe one hop, never passed on (`Connection`, `Transfer-Encoding` and
/// `Content-Length` are read before this).
pub(crate) fn hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || *name == header::PROXY_AUTHENTICATE
        || *name == header::PROXY_AUTHORIZATION
        || name.as_str() == "keep-alive"
}

/// A chunked body from `buf` and then `stream`, trailers dropped.
async fn read_chunked(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Bytes> {
    let mut body = BytesMut::new();
    loop {
        // The chunk-size line.
        let line_end = loop {
            if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            if buf.len() > 4096 {
                return Err(invalid("a chunk-size line is too long"));
            }
            fill(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[..line_end]).map_err(|_| invalid("a bad chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| invalid("a bad chunk size"))?;
        buf.advance(line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    buf.advance(at + 2);
                    if at == 0 {
                        return Ok(body.freeze());
                    }
                    continue;
                }
                if buf.len() > MAX_HEAD {
                    return Err(invalid("the trailers are too large"));
                }
                fill(stream, buf).await?;
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("the backend's answer is too large"));
        }
        while buf.len() < size + 2 {
            fill(stream, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(invalid("a chunk does not end with CRLF"));
        }
        buf.advance(size + 2);
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<()> {
    buf.reserve(4096);
    if stream.read_buf(buf).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> (StatusCode, HeaderMap, bool, Length) {
        let mut buf = BytesMut::from(text);
        parse_head(&mut buf).unwrap().unwrap()
    }

    #[test]
    fn answer_heads_say_their_length_and_whether_the_connection_stays() {
        let (status, headers, keep, length) = head(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\nkeep-alive: timeout=5\r\n\r\n",
        );
        assert_eq!(status, 200);
        assert!(keep);
        assert!(matches!(length, Length::Exactly(12)));
        assert_eq!(headers.len(), 1, "hop-by-hop and length headers are not passed on");
        let (_, _, keep, _) = head("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
        assert!(!keep);
        let (_, _, keep, length) = head("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert!(keep && matches!(length, Length::Chunked));
        let (_, _, keep, length) = head("HTTP/1.0 200 OK\r\n\r\n");
        assert!(!keep && matches!(length, Length::UntilClose));
        let mut partial = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-le");
        assert!(parse_head(&mut partial).unwrap().is_none());
        let mut garbage = BytesMut::from("SSH-2.0-OpenSSH\r\n\r\n");
        assert!(parse_head(&mut garbage).is_err());
        let mut bad_length = BytesMut::from("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n");
        assert!(parse_head(&mut bad_length).is_err());
    }

    #[test]
    fn requests_are_written_with_their_length_and_the_backends_host() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        let mut out = Vec::new();
        let host = HeaderValue::from_static("backend:8081");
        encode(
            &Outgoing {
                method: &Method::POST,
                target: "/match/join?wait=1",
                headers: &headers,
                body: b"{}",
            },
            &host,
            &mut out,
        );
        assert_eq!(
            out,
            b"POST /match/join?wait=1 HTTP/1.1\r\nhost: backend:8081\r\nauthorization: Bearer t\r\ncontent-length: 2\r\n\r\n{}"
        );
        encode(
            &Outgoing {
                method: &Method::GET,
                target: "/queues",
                headers: &HeaderMap::new(),
                body: b"",
            },
            &host,
            &mut out,
        );
        assert_eq!(out, b"GET /queues HTTP/1.1\r\nhost: backend:8081\r\n\r\n");
    }
}
