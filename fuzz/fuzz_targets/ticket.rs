//! Ticket and report-token verification on arbitrary input: never a panic, never accepted
//! unless it is exactly what the secret signed. Inputs that are a real ticket with bytes
//! flipped are produced by minting one and letting the fuzzer's bytes edit it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{Audience, Claims, TicketSecret};

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let secret = TicketSecret::new(b"fuzz-ticket-secret".to_vec()).unwrap();
    // Arbitrary text as a ticket.
    if let Ok(text) = std::str::from_utf8(data) {
        for audience in [Audience::Game, Audience::Report] {
            if let Ok(claims) = secret.verify(text, audience, NOW) {
                // Only what was minted with this secret verifies: re-minting the claims gives
                // the same token.
                assert_eq!(
                    secret.mint(&claims),
                    text,
                    "a ticket the secret never signed was accepted"
                );
            }
        }
    }
    // A real ticket, edited at the positions the input names.
    let real = secret.mint(&Claims::game("player-1", "session-1", NOW, 600));
    let mut edited = real.clone().into_bytes();
    for pair in data.chunks(2) {
        if let [at, byte] = pair {
            let i = usize::from(*at) % edited.len();
            edited[i] = *byte;
        }
    }
    if let Ok(text) = String::from_utf8(edited)
        && text != real
    {
        assert!(
            secret.verify(&text, Audience::Game, NOW).is_err(),
            "an edited ticket verified: {text}"
        );
    }
});
