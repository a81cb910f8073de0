//! Player-token verification (HS256 key, as the backend and proxy run it) on arbitrary
//! input: never a panic, and nothing accepted that the key did not sign for a `sub`.
#![no_main]

use std::sync::LazyLock;

use identity::{PlayerAuthArgs, PlayerAuthMode, PlayerVerifier};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "fuzz-player-token-secret-0123456789abcdef";

static VERIFIER: LazyLock<(tokio::runtime::Runtime, PlayerVerifier)> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let args = PlayerAuthArgs {
        player_auth: PlayerAuthMode::Jwt,
        player_token_secret: Some(KEY.into()),
        player_jwks: None,
        player_jwks_ca: None,
        player_token_issuer: None,
        player_token_audience: None,
    };
    let settings = args.validate().unwrap();
    let verifier = runtime.block_on(PlayerVerifier::start(&settings)).unwrap();
    (runtime, verifier)
});

fuzz_target!(|data: &[u8]| {
    let (runtime, verifier) = &*VERIFIER;
    let Ok(token) = std::str::from_utf8(data) else { return };
    if let Ok(claims) = runtime.block_on(verifier.verify(token)) {
        assert!(!claims.sub.is_empty(), "accepted a token without a subject");
        // Accepted means signed with the key: the fuzzer cannot forge HMAC, so a random
        // input that verifies is a bug.
        panic!("an unsigned token verified: {token:?}");
    }
});
