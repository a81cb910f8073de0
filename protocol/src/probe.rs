//! The TCP latency probe on the proxy's public port. A client opens a connection and sends
//! `PING <token>\n` (the token 1–64 printable ASCII characters of its choice, a `\r` before the
//! `\n` allowed); the proxy answers `PONG <token>\n`, as long as the line it answers. Further
//! `PING` lines on the same connection are answered the same way, up to [`MAX_PINGS`] a
//! connection; anything else, or a line not sent within the proxy's first-line timeout, closes
//! it. The time from a `PING` written to its `PONG` read is one round trip to that proxy; the
//! connect itself is another.

/// A probe line's start.
pub const PING: &[u8] = b"PING ";
/// A probe token's length, at most.
pub const MAX_TOKEN: usize = 64;
/// A probe line's length with its `\r\n`, at most.
pub const MAX_LINE: usize = PING.len() + MAX_TOKEN + 2;
/// `PING` lines answered on one connection, at most.
pub const MAX_PINGS: usize = 32;

/// The token of the probe line `line` (without its `\n`), if it is one.
pub fn ping_token(line: &[u8]) -> Option<&str> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let token = line.strip_prefix(PING)?;
    if token.is_empty() || token.len() > MAX_TOKEN || !token.iter().all(u8::is_ascii_graphic) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// The probe line for `token`.
pub fn ping(token: &str) -> String {
    format!("PING {token}\n")
}

/// The answer to `token`'s probe line.
pub fn pong(token: &str) -> String {
    format!("PONG {token}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_line_is_answered_by_a_pong_line_as_long() {
        assert_eq!(ping_token(b"PING 1733580000123"), Some("1733580000123"));
        assert_eq!(ping_token(b"PING a:b-c\r"), Some("a:b-c"));
        assert_eq!(ping("x-1").len(), pong("x-1").len());
        assert_eq!(pong("x-1"), "PONG x-1\n");
        for bad in [
            &b"PING "[..],
            b"PING a b",
            b"ping abc",
            b"PING \xff",
            b"PONG abc",
            &[b"PING ".as_slice(), &[b'a'; MAX_TOKEN + 1]].concat(),
        ] {
            assert_eq!(ping_token(bad), None, "{bad:?}");
        }
        assert!(ping_token(&[b"PING ".as_slice(), &[b'a'; MAX_TOKEN]].concat()).is_some());
    }
}
