//! The SDK's HTTP: one JSON `POST` per connection over plain HTTP/1.1 to the backend's
//! internal address, with the session's report token.
//!
//! The calls go to an in-cluster or loopback address and need nothing of HTTP but a request
//! line, four headers and a status line, so the SDK speaks exactly that instead of linking a
//! full client into every game server.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The longest answer read; the backend's are a few dozen bytes.
const MAX_RESPONSE: usize = 64 * 1024;

/// Where the SDK's calls go: `http://host[:port]/internal/sessions/<id>` and its token.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host:port` to dial, and to send as `Host`.
    authority: String,
    /// The session's path, without a trailing `/`: each call appends its own name.
    base: String,
    token: String,
}

/// The URL cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
#[error("MATCHPLANE_REPORT_URL must look like http://host[:port]/internal/sessions/<id>/result, got {0:?}")]
pub struct BadReportUrl(pub String);

impl Endpoint {
    /// From the report URL the runtime hands over (`MATCHPLANE_REPORT_URL`): the other calls
    /// are its siblings (`…/ready`, `…/health`). `https` is refused, since the calls stay
    /// inside the cluster.
    pub fn from_report_url(url: &str, token: String) -> Result<Self, BadReportUrl> {
        let bad = || BadReportUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => return Err(bad()),
        };
        if authority.is_empty() || authority.contains(['@', ' ']) || path.contains([' ', '\r', '\n', '?', '#']) {
            return Err(bad());
        }
        let base = path.strip_suffix("/result").ok_or_else(bad)?;
        let has_port = match authority.rfind(':') {
            Some(i) => authority[i + 1..].parse::<u16>().is_ok() && !authority[i..].contains(']'),
            None => false,
        };
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Endpoint {
            authority,
            base: base.to_owned(),
            token,
        })
    }

    /// Calls under `url` itself (`http://host[:port]/path`): a warm server's poll URL.
    pub fn from_base(url: &str, token: String) -> Result<Self, BadReportUrl> {
        let endpoint = Endpoint::from_report_url(&format!("{}/result", url.trim_end_matches('/')), token)?;
        if endpoint.base.is_empty() {
            return Err(BadReportUrl(url.to_owned()));
        }
        Ok(endpoint)
    }

    /// The path of call `name` (`result`, `ready`, `health`).
    pub fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// `host:port` the calls go to.
    pub fn authority(&self) -> &str {
        &self.authority
    }
}

/// An answer: its status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// Whether a failed call is worth another try: no answer at all, 408, 429 or 5xx.
    pub fn retryable(&self) -> bool {
        matches!(self.status, 408 | 429 | 500..=599)
    }
}

/// Posts `body` to call `name` of `endpoint`, waiting at most `limit` for the whole exchange.
pub async fn post(endpoint: &Endpoint, name: &str, body: &[u8], limit: Duration) -> Result<Answer, String> {
    match timeout(limit, exchange(endpoint, name, body)).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

async fn exchange(endpoint: &Endpoint, name: &str, body: &[u8]) -> Result<Answer, String> {
    let mut stream = TcpStream::connect(&endpoint.authority)
        .await
        .map_err(|e| format!("connect to {}: {e}", endpoint.authority))?;
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        endpoint.path(name),
        endpoint.authority,
        endpoint.token,
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.map_err(|e| format!("write: {e}"))?;
    // `Connection: close`: the answer ends where the stream does.
    let mut response = Vec::with_capacity(512);
    let mut chunk = [0u8; 2048];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) if response.len() + n <= MAX_RESPONSE => response.extend_from_slice(&chunk[..n]),
            Ok(_) => return Err(format!("an answer over {MAX_RESPONSE} bytes")),
            Err(e) if response.is_empty() => return Err(format!("read: {e}")),
            Err(_) => break,
        }
    }
    parse(&response)
}

/// The status line and the body after the blank line (the backend never chunks these answers).
fn parse(response: &[u8]) -> Result<Answer, String> {
    let line_end = response
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| "no HTTP status line".to_owned())?;
    let line = String::from_utf8_lossy(&response[..line_end]);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP status line: {:?}", line.trim_end()))?;
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| response[i + 4..].to_vec())
        .unwrap_or_default();
    Ok(Answer { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_are_the_report_urls_siblings() {
        let e = Endpoint::from_report_url("http://backend:8081/internal/sessions/abc/result", "t".into()).unwrap();
        assert_eq!(e.authority(), "backend:8081");
        assert_eq!(e.path("result"), "/internal/sessions/abc/result");
        assert_eq!(e.path("ready"), "/internal/sessions/abc/ready");
        let e = Endpoint::from_report_url("http://backend/internal/sessions/abc/result", "t".into()).unwrap();
        assert_eq!(e.authority(), "backend:80");
        let e = Endpoint::from_report_url("http://h:1/result", "t".into()).unwrap();
        assert_eq!(e.path("ready"), "/ready");
        let e = Endpoint::from_report_url("http://[::1]:9000/s/x/result", "t".into()).unwrap();
        assert_eq!(
            (e.authority(), e.path("health").as_str()),
            ("[::1]:9000", "/s/x/health")
        );
        for bad in [
            "https://backend/x/result",
            "backend:80/x/result",
            "http:///x/result",
            "http://user@host/x/result",
            "http://h/a b/result",
            "http://h/x/results",
            "http://h",
            "http://h/x/result?y=1",
        ] {
            assert!(Endpoint::from_report_url(bad, "t".into()).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_are_read_to_their_status_and_body() {
        let a = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (200, &b"{}"[..]));
        assert!(!a.retryable());
        assert!(parse(b"HTTP/1.1 503 x\r\n\r\n").unwrap().retryable());
        assert!(!parse(b"HTTP/1.1 403 x\r\n\r\n").unwrap().retryable());
        assert!(parse(b"garbage\r\n").is_err());
        assert!(parse(b"").is_err());
    }
}
