//! Line framing for the game protocol.
//!
//! Lines are `\n` terminated; a trailing `\r` is dropped. A line whose content is longer than
//! [`MAX_LINE_BYTES`] is refused as soon as the buffer proves it, before more is buffered: the
//! decoder never holds more than `MAX_LINE_BYTES + 1` bytes of an unfinished line (the extra
//! byte being a possible `\r`).

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// The longest line, in bytes, without its `\r\n` or `\n` terminator.
pub const MAX_LINE_BYTES: usize = 1024;

/// Why a stream of lines cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer sent a line longer than the cap; the connection should be closed.
    #[error("line longer than the cap")]
    LineTooLong,
    /// The transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into lines and writes typed lines with a `\n` terminator.
#[derive(Debug, Clone)]
pub struct LineCodec {
    /// How far the buffer has already been searched for `\n`, so a slow line is scanned once.
    scanned: usize,
    /// The longest line accepted.
    max: usize,
}

impl Default for LineCodec {
    fn default() -> Self {
        LineCodec::with_max(MAX_LINE_BYTES)
    }
}

impl LineCodec {
    /// A codec with nothing buffered, for game-protocol lines ([`MAX_LINE_BYTES`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec for lines of up to `max` bytes (a warm server's hand-over carries a whole
    /// roster).
    pub fn with_max(max: usize) -> Self {
        LineCodec { scanned: 0, max }
    }
}

impl Decoder for LineCodec {
    type Item = Bytes;
    type Error = CodecError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        // Never look further than a legal line can reach: content, `\r`, `\n`.
        let limit = buf.len().min(self.max + 2);
        let start = self.scanned.min(limit);
        match buf[start..limit].iter().position(|&b| b == b'\n') {
            Some(offset) => {
                let newline = start + offset;
                self.scanned = 0;
                let mut line = buf.split_to(newline + 1);
                line.truncate(newline);
                if line.last() == Some(&b'\r') {
                    line.truncate(newline - 1);
                }
                if line.len() > self.max {
                    return Err(CodecError::LineTooLong);
                }
                Ok(Some(line.freeze()))
            }
            None if buf.len() > self.max + 1 => Err(CodecError::LineTooLong),
            None => {
                self.scanned = limit;
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CodecError> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            // An unterminated tail at end of stream is not a line; drop it.
            None => {
                buf.clear();
                self.scanned = 0;
                Ok(None)
            }
        }
    }
}

/// Anything with a canonical one-line wire form: the [`fmt::Display`] output, without newline.
pub trait WireLine: fmt::Display {}

impl WireLine for crate::ClientCommand {}
impl WireLine for crate::ServerReply {}

impl<T: WireLine> Encoder<T> for LineCodec {
    type Error = CodecError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), CodecError> {
        let text = item.to_string();
        dst.reserve(text.len() + 1);
        dst.put_slice(text.as_bytes());
        dst.put_u8(b'\n');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(codec: &mut LineCodec, buf: &mut BytesMut) -> Result<Vec<Bytes>, CodecError> {
        let mut out = Vec::new();
        while let Some(line) = codec.decode(buf)? {
            out.push(line);
        }
        Ok(out)
    }

    #[test]
    fn splits_lines_and_drops_cr() {
        let mut codec = LineCodec::new();
        let mut buf = BytesMut::from(&b"GET_STATE\r\nPING x\n\npartial"[..]);
        let lines = decode_all(&mut codec, &mut buf).unwrap();
        assert_eq!(
            lines,
            vec![Bytes::from("GET_STATE"), Bytes::from("PING x"), Bytes::new()]
        );
        assert_eq!(&buf[..], b"partial");
    }

    #[test]
    fn accepts_exactly_the_cap_with_crlf() {
        let mut codec = LineCodec::new();
        let mut raw = vec![b'a'; MAX_LINE_BYTES];
        raw.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&raw[..]);
        let line = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(line.len(), MAX_LINE_BYTES);
    }

    #[test]
    fn refuses_one_byte_over_the_cap() {
        let mut codec = LineCodec::new();
        let mut raw = vec![b'a'; MAX_LINE_BYTES + 1];
        raw.push(b'\n');
        let mut buf = BytesMut::from(&raw[..]);
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::LineTooLong)));
    }

    #[test]
    fn refuses_an_unterminated_line_once_it_passes_the_cap() {
        let mut codec = LineCodec::new();
        let mut buf = BytesMut::new();
        for _ in 0..=MAX_LINE_BYTES {
            buf.put_u8(b'x');
            assert!(codec.decode(&mut buf).unwrap().is_none());
        }
        buf.put_u8(b'x');
        assert!(matches!(codec.decode(&mut buf), Err(CodecError::LineTooLong)));
    }

    #[test]
    fn unterminated_tail_at_eof_is_dropped() {
        let mut codec = LineCodec::new();
        let mut buf = BytesMut::from(&b"QUIT"[..]);
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        assert!(buf.is_empty());
    }

    proptest! {
        /// Arbitrary bytes in arbitrary chunks: no panic, no line over the cap, and never more
        /// than one line's worth of unfinished input held.
        #[test]
        fn arbitrary_bytes_never_panic_or_overbuffer(
            data in proptest::collection::vec(any::<u8>(), 0..8192),
            chunk in 1usize..2048,
        ) {
            let mut codec = LineCodec::new();
            let mut buf = BytesMut::new();
            'feed: for piece in data.chunks(chunk) {
                buf.extend_from_slice(piece);
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(line)) => prop_assert!(line.len() <= MAX_LINE_BYTES),
                        Ok(None) => {
                            prop_assert!(buf.len() <= MAX_LINE_BYTES + 1);
                            break;
                        }
                        Err(CodecError::LineTooLong) => break 'feed,
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
            }
        }

        /// Lines of printable text made only of legal sizes all come back unchanged.
        #[test]
        fn legal_lines_round_trip(lines in proptest::collection::vec("[ -~]{0,1024}", 0..8)) {
            let mut codec = LineCodec::new();
            let mut buf = BytesMut::new();
            for line in &lines {
                buf.extend_from_slice(line.as_bytes());
                buf.put_u8(b'\n');
            }
            let got = decode_all(&mut codec, &mut buf).unwrap();
            let want: Vec<Bytes> = lines.iter().map(|l| Bytes::from(l.clone())).collect();
            prop_assert_eq!(got, want);
        }
    }
}
