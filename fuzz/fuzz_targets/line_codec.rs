//! The game protocol's framing and parsing, as the game server and the proxy run them on
//! whatever a client sends: the line codec over arbitrary chunks, then each line parsed as a
//! client command; and every server reply line the codec yields parsed back. Nothing may
//! panic, no line may exceed the codec's limit, and a reply's own rendering must parse to
//! itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use protocol::{ClientCommand, LineCodec, ServerReply};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = LineCodec::new();
    let mut buffer = BytesMut::new();
    // The first byte picks a chunk size: the same stream arriving in different pieces.
    let (chunk, stream) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c % 17) + 1, rest),
        None => return,
    };
    for piece in stream.chunks(chunk) {
        buffer.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(line)) => {
                    assert!(line.len() <= 4096, "a line longer than the limit came through");
                    let _ = ClientCommand::parse(&line);
                    if let Ok(text) = std::str::from_utf8(&line)
                        && let Ok(reply) = ServerReply::parse(text)
                    {
                        assert_eq!(ServerReply::parse(&reply.line()).ok(), Some(reply));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    let _ = codec.decode_eof(&mut buffer);
});
