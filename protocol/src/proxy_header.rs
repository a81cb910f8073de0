//! The PROXY protocol v2 header the proxy starts each TCP connection with, for servers of a
//! profile with `identity: proxy-v2`: the player's real address and port, the address they
//! connected to, and two TLVs of matchplane's (in the range the specification leaves to
//! applications, 0xE0-0xEF) holding what the proxy verified in the player's ticket:
//!
//! | type | value |
//! | --- | --- |
//! | `0xE0` | the player id, UTF-8 |
//! | `0xE1` | the session id, UTF-8 |
//!
//! Building and reading go through the `ppp` crate; the layout is the specification's
//! (`haproxy.org/download/2.9/doc/proxy-protocol.txt`, section 2.2).

use std::net::SocketAddr;

use ppp::v2;

/// The TLV type carrying the verified player id.
pub const TLV_PLAYER_ID: u8 = 0xE0;
/// The TLV type carrying the session id.
pub const TLV_SESSION_ID: u8 = 0xE1;
/// The twelve bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];

/// Whether `bytes` start like a PROXY protocol header (v2's signature, or v1's `PROXY `), as
/// far as they go: what a client must never send a server in a player's name.
pub fn looks_like_header(bytes: &[u8]) -> bool {
    let n = bytes.len().min(SIGNATURE.len());
    let v1 = b"PROXY ";
    let m = bytes.len().min(v1.len());
    n > 0 && (bytes[..n] == SIGNATURE[..n] || bytes[..m] == v1[..m])
}

/// The header of a TCP connection from `player_addr` to `proxy_addr`, for `player` in session
/// `session`. Mixed address families are written as IPv6 (IPv4 mapped).
pub fn encode(player_addr: SocketAddr, proxy_addr: SocketAddr, player: &str, session: &str) -> Vec<u8> {
    let addresses: v2::Addresses = match (player_addr, proxy_addr) {
        (SocketAddr::V4(from), SocketAddr::V4(to)) => {
            v2::IPv4::new(*from.ip(), *to.ip(), from.port(), to.port()).into()
        }
        (from, to) => {
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(a) => a.ip().to_ipv6_mapped(),
                SocketAddr::V6(a) => *a.ip(),
            };
            v2::IPv6::new(v6(from), v6(to), from.port(), to.port()).into()
        }
    };
    v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, addresses)
        .write_tlv(TLV_PLAYER_ID, player.as_bytes())
        .and_then(|b| b.write_tlv(TLV_SESSION_ID, session.as_bytes()))
        .and_then(|b| b.build())
        .expect("player and session ids are far shorter than a TLV's 64 KiB")
}

/// What a server learns from a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identified {
    /// The player's address.
    pub player_addr: SocketAddr,
    pub player_id: String,
    pub session_id: String,
    /// The header's length: the game's own bytes start here.
    pub len: usize,
}

/// Why a header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("more bytes are needed")]
    Incomplete,
    #[error("not a PROXY protocol v2 header: {0}")]
    Invalid(String),
    #[error("the header lacks matchplane's {0}")]
    Missing(&'static str),
}

/// Reads a header from the start of `bytes` (a connection's first bytes).
pub fn decode(bytes: &[u8]) -> Result<Identified, HeaderError> {
    let header = match v2::Header::try_from(bytes) {
        Ok(header) => header,
        Err(v2::ParseError::Incomplete(_) | v2::ParseError::Partial(..)) => return Err(HeaderError::Incomplete),
        Err(e) => return Err(HeaderError::Invalid(e.to_string())),
    };
    let player_addr = match header.addresses {
        v2::Addresses::IPv4(a) => SocketAddr::from((a.source_address, a.source_port)),
        v2::Addresses::IPv6(a) => SocketAddr::from((a.source_address, a.source_port)),
        _ => return Err(HeaderError::Invalid("no IP addresses".into())),
    };
    let mut player_id = None;
    let mut session_id = None;
    for tlv in header.tlvs() {
        let tlv = tlv.map_err(|e| HeaderError::Invalid(e.to_string()))?;
        let text =
            || String::from_utf8(tlv.value.to_vec()).map_err(|_| HeaderError::Invalid("a TLV is not UTF-8".into()));
        match tlv.kind {
            TLV_PLAYER_ID => player_id = Some(text()?),
            TLV_SESSION_ID => session_id = Some(text()?),
            _ => {}
        }
    }
    Ok(Identified {
        player_addr,
        player_id: player_id.ok_or(HeaderError::Missing("player id TLV (0xE0)"))?,
        session_id: session_id.ok_or(HeaderError::Missing("session id TLV (0xE1)"))?,
        len: header.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes, laid out by hand from the specification: the signature; `0x21` (version 2,
    /// PROXY); `0x11` (AF_INET, STREAM); the length of what follows; source address,
    /// destination address, source port, destination port, all in network order; then each TLV
    /// as type, 16-bit length, value.
    #[test]
    fn an_ipv4_header_is_the_specifications_layout_byte_for_byte() {
        let header = encode(
            "192.0.2.10:51000".parse().unwrap(),
            "198.51.100.1:8080".parse().unwrap(),
            "alice",
            "s-1",
        );
        let mut want = SIGNATURE.to_vec();
        want.extend([0x21, 0x11]);
        let body_len: u16 = 12 + (3 + 5) + (3 + 3);
        want.extend(body_len.to_be_bytes());
        want.extend([192, 0, 2, 10, 198, 51, 100, 1]);
        want.extend(51000u16.to_be_bytes());
        want.extend(8080u16.to_be_bytes());
        want.extend([0xE0, 0, 5]);
        want.extend(b"alice");
        want.extend([0xE1, 0, 3]);
        want.extend(b"s-1");
        assert_eq!(header, want);
    }

    #[test]
    fn an_ipv6_header_uses_family_0x21_and_mixed_families_are_mapped() {
        let header = encode(
            "[2001:db8::1]:4000".parse().unwrap(),
            "[::1]:8080".parse().unwrap(),
            "p",
            "s",
        );
        assert_eq!(&header[12..16], &[0x21, 0x21, 0, 36 + 4 + 4]);
        let mixed = encode("192.0.2.10:1".parse().unwrap(), "[::1]:2".parse().unwrap(), "p", "s");
        assert_eq!(mixed[13], 0x21);
        assert_eq!(
            decode(&mixed).unwrap().player_addr,
            "[::ffff:192.0.2.10]:1".parse().unwrap()
        );
    }

    #[test]
    fn a_header_reads_back_with_where_the_game_bytes_start() {
        let mut bytes = encode(
            "10.1.2.3:5555".parse().unwrap(),
            "10.0.0.1:8080".parse().unwrap(),
            "bob",
            "sid-9",
        );
        let len = bytes.len();
        bytes.extend(b"HELLO\n");
        let got = decode(&bytes).unwrap();
        assert_eq!(got.player_addr, "10.1.2.3:5555".parse().unwrap());
        assert_eq!(
            (got.player_id.as_str(), got.session_id.as_str(), got.len),
            ("bob", "sid-9", len)
        );
        assert_eq!(&bytes[got.len..], b"HELLO\n");
        assert_eq!(decode(&bytes[..10]), Err(HeaderError::Incomplete));
        assert!(matches!(
            decode(b"GET / HTTP/1.1\r\n\r\n"),
            Err(HeaderError::Invalid(_))
        ));
    }

    #[test]
    fn header_lookalikes_are_recognised_from_their_first_byte() {
        assert!(looks_like_header(&SIGNATURE[..1]));
        assert!(looks_like_header(&SIGNATURE));
        assert!(looks_like_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"));
        assert!(looks_like_header(b"PRO"));
        assert!(!looks_like_header(b"PING\n"));
        assert!(!looks_like_header(b""));
        assert!(!looks_like_header(b"\r\nx"));
    }
}
