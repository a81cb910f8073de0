//! Delivery of the result report to the backend: one JSON `POST` over plain HTTP/1.1,
//! retried with exponential backoff inside a fixed budget, never blocking the exit for longer.
//!
//! The report goes to an in-cluster or loopback address, so this speaks exactly the HTTP it
//! needs (one request per connection, status line parsed) instead of linking a full client.

use std::time::Duration;

use protocol::api::ResultReport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};

/// Where and how to report.
#[derive(Debug, Clone)]
pub struct ReportTarget {
    /// `host:port` to dial, and to send as `Host`.
    authority: String,
    /// Request path, starting with `/`.
    path: String,
    token: String,
}

/// The URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("REPORT_URL must look like http://host[:port]/path, got {0:?}")]
pub struct BadReportUrl(String);

impl ReportTarget {
    /// Parses an `http://` URL; `https` is refused, since the report stays inside the cluster.
    pub fn new(url: &str, token: String) -> Result<Self, BadReportUrl> {
        let bad = || BadReportUrl(url.to_owned());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains(['@', ' ']) || path.contains([' ', '\r', '\n']) {
            return Err(bad());
        }
        let has_port = match authority.rfind(':') {
            Some(i) => authority[i + 1..].parse::<u16>().is_ok() && !authority[i..].contains(']'),
            None => false,
        };
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(ReportTarget {
            authority,
            path: path.to_owned(),
            token,
        })
    }
}

/// How one attempt went.
enum Attempt {
    Delivered,
    /// The backend refused the report for good (4xx other than 408 and 429).
    Refused(u16),
    /// Worth another try.
    Retry(String),
}

/// Posts `report`, retrying with backoff for at most `budget`. Returns whether it landed.
pub async fn deliver(target: &ReportTarget, report: &ResultReport, budget: Duration) -> bool {
    let body = serde_json::to_vec(report).expect("reports always serialize");
    let deadline = Instant::now() + budget;
    let mut backoff = Duration::from_millis(100);
    for attempt in 1u32.. {
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = match timeout(left.min(Duration::from_secs(3)), post(target, &body)).await {
            Ok(outcome) => outcome,
            Err(_) => Attempt::Retry("timed out".into()),
        };
        match outcome {
            Attempt::Delivered => {
                tracing::info!(attempt, "result reported");
                return true;
            }
            Attempt::Refused(status) => {
                tracing::error!(status, "backend refused the result report");
                return false;
            }
            Attempt::Retry(why) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    tracing::error!(attempt, %why, "giving up on the result report");
                    return false;
                }
                tracing::warn!(attempt, %why, "result report failed; retrying");
                sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    false
}

async fn post(target: &ReportTarget, body: &[u8]) -> Attempt {
    let mut stream = match TcpStream::connect(&target.authority).await {
        Ok(stream) => stream,
        Err(e) => return Attempt::Retry(format!("connect: {e}")),
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority,
        target.token,
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    if let Err(e) = stream.write_all(&request).await {
        return Attempt::Retry(format!("write: {e}"));
    }
    // The status line is all that matters; read until it is complete.
    let mut response = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !response.contains(&b'\n') && response.len() < 4096 {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) => return Attempt::Retry(format!("read: {e}")),
        }
    }
    let status_line = String::from_utf8_lossy(&response);
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok());
    match status {
        Some(200..=299) => Attempt::Delivered,
        Some(code @ 400..=499) if code != 408 && code != 429 => Attempt::Refused(code),
        Some(code) => Attempt::Retry(format!("status {code}")),
        None => Attempt::Retry("no HTTP status line".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_report_urls() {
        let t = ReportTarget::new("http://backend:8081/internal/sessions/abc/result", "t".into()).unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("backend:8081", "/internal/sessions/abc/result")
        );
        let t = ReportTarget::new("http://backend", "t".into()).unwrap();
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("backend:80", "/"));
        let t = ReportTarget::new("http://[::1]:9000/r", "t".into()).unwrap();
        assert_eq!(t.authority, "[::1]:9000");
        for bad in [
            "https://backend/x",
            "backend:80/x",
            "http:///x",
            "http://user@host/x",
            "http://h/a b",
        ] {
            assert!(ReportTarget::new(bad, "t".into()).is_err(), "{bad}");
        }
    }
}
