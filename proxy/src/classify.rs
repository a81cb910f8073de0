//! Telling HTTP from game traffic by a connection's first bytes, without losing them.
//!
//! At most [`protocol::MAX_LINE_BYTES`] + 2 bytes are read, within the first-line timeout.
//! An HTTP method followed by a space is enough to hand the connection to the HTTP server
//! (the bytes read are replayed through [`Prefixed`]); a game connection must send a whole
//! `JOIN <ticket>` line first.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::timeout;

/// Every method of HTTP's semantics (RFC 9110) and PATCH: a request with any of them gets an
/// HTTP answer (405 or 404 where nothing serves it), never the game protocol's error.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"TRACE ",
    b"CONNECT ",
];
const JOIN: &[u8] = b"JOIN ";
/// A TLS handshake record's first two bytes (content type 22, major version 3).
const TLS_RECORD: &[u8] = &[0x16, 0x03];

/// What a connection turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An HTTP request; replay the buffer to the HTTP server.
    Http,
    /// A game connection whose first line (without terminator) is `buf[..len]`, with its
    /// `\n` at `buf[newline]`.
    Join { newline: usize },
    /// A latency probe whose first `PING` line ends with the `\n` at `buf[newline]`.
    Ping { newline: usize },
    /// Neither.
    Garbage,
    /// A PROXY protocol header: a client pretending to be a proxy.
    ProxyHeader,
    /// A TLS handshake record: a TLS client on a plain port.
    TlsHello,
    /// A `JOIN` line over the cap.
    TooLong,
    /// Nothing decisive within the timeout.
    TimedOut,
    /// The peer went away first.
    Closed,
}

fn starts_with_ignore_case(buf: &[u8], prefix: &[u8]) -> bool {
    buf.len() >= prefix.len() && buf[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// Whether `buf` can still grow into something recognisable.
fn undecided(buf: &[u8]) -> bool {
    let prefix_of = |candidate: &[u8], ignore_case: bool| {
        buf.len() < candidate.len()
            && if ignore_case {
                candidate[..buf.len()].eq_ignore_ascii_case(buf)
            } else {
                candidate[..buf.len()] == *buf
            }
    };
    METHODS.iter().any(|m| prefix_of(m, false))
        || prefix_of(JOIN, true)
        || prefix_of(protocol::probe::PING, false)
        || prefix_of(TLS_RECORD, false)
        || protocol::proxy_header::looks_like_header(buf)
}

/// Decides what `buf` holds so far; `None` means more bytes are needed.
pub fn decide(buf: &[u8]) -> Option<Kind> {
    if METHODS.iter().any(|m| buf.starts_with(m)) {
        return Some(Kind::Http);
    }
    if starts_with_ignore_case(buf, JOIN) {
        let limit = buf.len().min(protocol::MAX_LINE_BYTES + 2);
        return match buf[..limit].iter().position(|&b| b == b'\n') {
            Some(newline) => Some(Kind::Join { newline }),
            None if buf.len() > protocol::MAX_LINE_BYTES + 1 => Some(Kind::TooLong),
            None => None,
        };
    }
    if buf.starts_with(protocol::probe::PING) {
        let limit = buf.len().min(protocol::probe::MAX_LINE);
        return match buf[..limit].iter().position(|&b| b == b'\n') {
            Some(newline) => Some(Kind::Ping { newline }),
            None if buf.len() >= protocol::probe::MAX_LINE => Some(Kind::Garbage),
            None => None,
        };
    }
    if buf.starts_with(&protocol::proxy_header::SIGNATURE) || buf.starts_with(b"PROXY ") {
        return Some(Kind::ProxyHeader);
    }
    if buf.starts_with(TLS_RECORD) {
        return Some(Kind::TlsHello);
    }
    if undecided(buf) { None } else { Some(Kind::Garbage) }
}

/// Reads until the first bytes decide the kind, or `limit` passes.
pub async fn first_bytes<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut, limit: Duration) -> Kind {
    let read = async {
        loop {
            if !buf.is_empty()
                && let Some(kind) = decide(buf)
            {
                return kind;
            }
            if buf.len() >= protocol::MAX_LINE_BYTES + 2 {
                return Kind::Garbage;
            }
            buf.reserve(protocol::MAX_LINE_BYTES + 2 - buf.len());
            let mut chunk = [0u8; 1100];
            let room = (protocol::MAX_LINE_BYTES + 2 - buf.len()).min(chunk.len());
            match stream.read(&mut chunk[..room]).await {
                Ok(0) | Err(_) => return Kind::Closed,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    timeout(limit, read).await.unwrap_or(Kind::TimedOut)
}

/// A stream whose first bytes come from a buffer already read off it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_on_as_few_bytes_as_possible() {
        assert_eq!(decide(b"GET "), Some(Kind::Http));
        assert_eq!(decide(b"TRACE /api/health HTTP/1.1\r\n"), Some(Kind::Http));
        assert_eq!(decide(b"CONNECT example.com:443 HTTP/1.1\r\n"), Some(Kind::Http));
        assert_eq!(decide(b"CONNEC"), None);
        assert_eq!(decide(b"POST /api/match/join HTTP/1.1\r\n"), Some(Kind::Http));
        assert_eq!(decide(b"GE"), None);
        assert_eq!(decide(b"jo"), None);
        assert_eq!(decide(b"join abc"), None);
        assert_eq!(decide(b"join abc\r\n"), Some(Kind::Join { newline: 9 }));
        assert_eq!(decide(b"JOIN x\nGET_STATE\n"), Some(Kind::Join { newline: 6 }));
        assert_eq!(decide(&protocol::proxy_header::SIGNATURE[..5]), None);
        assert_eq!(decide(&protocol::proxy_header::SIGNATURE), Some(Kind::ProxyHeader));
        assert_eq!(decide(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), Some(Kind::ProxyHeader));
        assert_eq!(decide(b"PROXZ"), Some(Kind::Garbage));
        assert_eq!(
            decide(b"get / HTTP/1.1"),
            Some(Kind::Garbage),
            "methods are case-sensitive"
        );
        assert_eq!(decide(b"\x16\x03\x01"), Some(Kind::TlsHello), "a TLS hello");
        assert_eq!(decide(b"\x16"), None);
        assert_eq!(decide(b"\x16\x04"), Some(Kind::Garbage));
        assert_eq!(decide(b"GET_STATE\n"), Some(Kind::Garbage));
        assert_eq!(decide(b"PIN"), None);
        assert_eq!(decide(b"PING 123"), None);
        assert_eq!(decide(b"PING 123\nPING 4"), Some(Kind::Ping { newline: 8 }));
        assert_eq!(
            decide(&[b"PING ".as_slice(), &[b'1'; 80]].concat()),
            Some(Kind::Garbage)
        );
        let mut long = b"JOIN ".to_vec();
        long.extend(std::iter::repeat_n(b'x', protocol::MAX_LINE_BYTES));
        assert_eq!(decide(&long), Some(Kind::TooLong));
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut a, b" world").await.unwrap();
        drop(a);
        let mut s = Prefixed::new(Bytes::from_static(b"hello"), b);
        let mut all = String::new();
        s.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
