//! The TCP latency probe (`protocol::probe`): `PING <token>` lines answered `PONG <token>`,
//! each line within the first-line timeout, up to `MAX_PINGS` a connection. (The UDP probe is
//! answered by the UDP relay.)

use std::time::Duration;

use bytes::{Buf, BytesMut};
use protocol::probe::{MAX_LINE, MAX_PINGS, ping_token, pong};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// Answers a probe connection whose first line ends at `buf[newline]`, until it sends
/// something else, stops sending within `limit`, or has had `MAX_PINGS` answers.
pub(crate) async fn answer<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut buf: BytesMut,
    mut newline: usize,
    limit: Duration,
) {
    for _ in 0..MAX_PINGS {
        let Some(token) = ping_token(&buf[..newline]) else {
            return;
        };
        let answer = pong(token);
        if !matches!(timeout(limit, stream.write_all(answer.as_bytes())).await, Ok(Ok(()))) {
            return;
        }
        buf.advance(newline + 1);
        newline = match timeout(limit, next_line(&mut stream, &mut buf)).await {
            Ok(Some(newline)) => newline,
            _ => return,
        };
    }
    let _ = stream.shutdown().await;
}

/// Reads until `buf` holds a whole line (the index of its `\n`); `None` when the peer closes
/// or the line grows past a probe line's length.
async fn next_line<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut BytesMut) -> Option<usize> {
    loop {
        if let Some(newline) = buf.iter().position(|&b| b == b'\n') {
            return (newline < MAX_LINE).then_some(newline);
        }
        if buf.len() >= MAX_LINE {
            return None;
        }
        let mut chunk = [0u8; MAX_LINE];
        match stream.read(&mut chunk[..MAX_LINE - buf.len()]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
