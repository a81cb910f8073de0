//! The UDP framing between a game client and the proxy's public port (the same number as its
//! TCP port). The proxy strips it: a session's server sees only the game's own datagrams.
//!
//! Every datagram starts with one byte saying what it is:
//!
//! | byte 0 | from | then | meaning |
//! | --- | --- | --- | --- |
//! | `0x01` JOIN | client | 4-byte nonce, the ticket (ASCII) | open (or reopen) the player's flow |
//! | `0x81` WELCOME | proxy | the JOIN's nonce, 8-byte connection id | the flow is open |
//! | `0x82` REFUSED | proxy | the JOIN's nonce, an error code (ASCII, e.g. `bad_ticket`) | it is not |
//! | `0x02` DATA | client | 8-byte connection id, payload | a game datagram for the server |
//! | `0x02` DATA | proxy | payload | a game datagram from the server |
//! | `0x03` PROBE | client | 0–64 bytes of the client's choice | a latency probe |
//! | `0x83` ECHO | proxy | the PROBE's bytes | its answer, exactly as long as the PROBE |
//!
//! The nonce is the client's choice (it matches a WELCOME to its JOIN when JOINs are resent).
//! Answers are never larger than the JOIN they answer, and nothing else is answered: a
//! datagram that is malformed, names no live connection id, or exceeds its flow's rate is
//! dropped in silence. A JOIN for a player who already has a flow in that session returns the
//! same connection id, and a DATA datagram with a live id from a new address moves the flow
//! there (a client behind a NAT whose mapping changed keeps playing).

/// The first byte of each kind of datagram.
pub const JOIN: u8 = 0x01;
pub const DATA: u8 = 0x02;
pub const PROBE: u8 = 0x03;
pub const WELCOME: u8 = 0x81;
pub const REFUSED: u8 = 0x82;
pub const ECHO: u8 = 0x83;

/// A PROBE's bytes after its kind, at most (a longer one is malformed).
pub const MAX_PROBE_PAYLOAD: usize = 64;

/// A connection id's length in bytes.
pub const ID_LEN: usize = 8;
/// A JOIN's nonce length in bytes.
pub const NONCE_LEN: usize = 4;
/// The framing's bytes in front of a client's payload.
pub const DATA_OVERHEAD: usize = 1 + ID_LEN;

/// A datagram from a client, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromClient<'a> {
    Join { nonce: [u8; NONCE_LEN], ticket: &'a str },
    Data { id: u64, payload: &'a [u8] },
    Probe { payload: &'a [u8] },
}

/// Reads a client's datagram; `None` for anything malformed.
pub fn parse_client(datagram: &[u8]) -> Option<FromClient<'_>> {
    let (&kind, rest) = datagram.split_first()?;
    match kind {
        JOIN => {
            let nonce: [u8; NONCE_LEN] = rest.get(..NONCE_LEN)?.try_into().ok()?;
            let ticket = std::str::from_utf8(&rest[NONCE_LEN..]).ok()?;
            (!ticket.is_empty() && ticket.is_ascii()).then_some(FromClient::Join { nonce, ticket })
        }
        DATA => {
            let id = u64::from_be_bytes(rest.get(..ID_LEN)?.try_into().ok()?);
            Some(FromClient::Data {
                id,
                payload: &rest[ID_LEN..],
            })
        }
        PROBE => (rest.len() <= MAX_PROBE_PAYLOAD).then_some(FromClient::Probe { payload: rest }),
        _ => None,
    }
}

/// A PROBE datagram (`payload` at most [`MAX_PROBE_PAYLOAD`] bytes, or it is malformed).
pub fn probe(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(PROBE);
    out.extend_from_slice(payload);
    out
}

/// The ECHO answering a PROBE of `payload`: as long as the PROBE.
pub fn echo(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + payload.len());
    out.push(ECHO);
    out.extend_from_slice(payload);
    out
}

/// A JOIN datagram.
pub fn join(nonce: [u8; NONCE_LEN], ticket: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ticket.len());
    out.push(JOIN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(ticket.as_bytes());
    out
}

/// A client's DATA datagram.
pub fn data(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_OVERHEAD + payload.len());
    out.push(DATA);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A WELCOME datagram.
pub fn welcome(nonce: [u8; NONCE_LEN], id: u64) -> [u8; 1 + NONCE_LEN + ID_LEN] {
    let mut out = [0u8; 1 + NONCE_LEN + ID_LEN];
    out[0] = WELCOME;
    out[1..1 + NONCE_LEN].copy_from_slice(&nonce);
    out[1 + NONCE_LEN..].copy_from_slice(&id.to_be_bytes());
    out
}

/// A REFUSED datagram.
pub fn refused(nonce: [u8; NONCE_LEN], code: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + NONCE_LEN + code.len());
    out.push(REFUSED);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(code.as_bytes());
    out
}

/// A datagram from the proxy, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FromProxy<'a> {
    Welcome { nonce: [u8; NONCE_LEN], id: u64 },
    Refused { nonce: [u8; NONCE_LEN], code: &'a str },
    Data { payload: &'a [u8] },
    Echo { payload: &'a [u8] },
}

/// Reads the proxy's datagram (the client side); `None` for anything malformed.
pub fn parse_proxy(datagram: &[u8]) -> Option<FromProxy<'_>> {
    let (&kind, rest) = datagram.split_first()?;
    match kind {
        WELCOME if rest.len() == NONCE_LEN + ID_LEN => Some(FromProxy::Welcome {
            nonce: rest[..NONCE_LEN].try_into().ok()?,
            id: u64::from_be_bytes(rest[NONCE_LEN..].try_into().ok()?),
        }),
        REFUSED if rest.len() >= NONCE_LEN => Some(FromProxy::Refused {
            nonce: rest[..NONCE_LEN].try_into().ok()?,
            code: std::str::from_utf8(&rest[NONCE_LEN..]).ok()?,
        }),
        DATA => Some(FromProxy::Data { payload: rest }),
        ECHO if rest.len() <= MAX_PROBE_PAYLOAD => Some(FromProxy::Echo { payload: rest }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_echoed_in_exactly_as_many_bytes() {
        let p = probe(b"\x00\x00\x01\x8f-rtt");
        assert_eq!(p, b"\x03\x00\x00\x01\x8f-rtt");
        let Some(FromClient::Probe { payload }) = parse_client(&p) else {
            panic!("a probe")
        };
        let e = echo(payload);
        assert_eq!(e.len(), p.len());
        assert_eq!(
            parse_proxy(&e),
            Some(FromProxy::Echo {
                payload: b"\x00\x00\x01\x8f-rtt"
            })
        );
        assert_eq!(parse_client(&[PROBE]), Some(FromClient::Probe { payload: b"" }));
        assert_eq!(parse_client(&probe(&[7; MAX_PROBE_PAYLOAD])).map(|_| ()), Some(()));
        assert_eq!(
            parse_client(&probe(&[7; MAX_PROBE_PAYLOAD + 1])),
            None,
            "too long to answer"
        );
    }

    #[test]
    fn every_kind_of_datagram_reads_back_byte_for_byte() {
        let nonce = [1, 2, 3, 4];
        let j = join(nonce, "abc.def");
        assert_eq!(j, b"\x01\x01\x02\x03\x04abc.def");
        assert_eq!(
            parse_client(&j),
            Some(FromClient::Join {
                nonce,
                ticket: "abc.def"
            })
        );
        let d = data(0x0102_0304_0506_0708, b"hi");
        assert_eq!(d, b"\x02\x01\x02\x03\x04\x05\x06\x07\x08hi");
        assert_eq!(
            parse_client(&d),
            Some(FromClient::Data {
                id: 0x0102_0304_0506_0708,
                payload: b"hi"
            })
        );
        let w = welcome(nonce, 42);
        assert_eq!(w.len(), 13);
        assert_eq!(parse_proxy(&w), Some(FromProxy::Welcome { nonce, id: 42 }));
        let r = refused(nonce, "bad_ticket");
        assert_eq!(
            parse_proxy(&r),
            Some(FromProxy::Refused {
                nonce,
                code: "bad_ticket"
            })
        );
        assert_eq!(parse_proxy(b"\x02game"), Some(FromProxy::Data { payload: b"game" }));
    }

    #[test]
    fn malformed_datagrams_read_as_nothing() {
        for bad in [
            &b""[..],
            b"\x00anything",
            b"\x01\x01\x02",         // a JOIN's nonce cut short
            b"\x01\x01\x02\x03\x04", // no ticket
            b"\x01\x01\x02\x03\x04\xff\xfe",
            b"\x02\x01\x02\x03", // an id cut short
            b"GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(parse_client(bad), None, "{bad:?}");
        }
        assert_eq!(parse_proxy(b"\x81short"), None);
    }
}
