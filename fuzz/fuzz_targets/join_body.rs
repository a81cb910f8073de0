//! The join body as the API reads it: JSON into the join request, then the player-id rule.
//! Never a panic; an accepted id is 1-128 characters of `[A-Za-z0-9_.:-]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::api::JoinRequest;
use protocol::player::is_valid_player_id;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<JoinRequest>(data)
        && is_valid_player_id(&request.player_id)
    {
        let id = &request.player_id;
        assert!((1..=128).contains(&id.len()));
        assert!(id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)));
        // It survives a round trip through the answer.
        let encoded = serde_json::to_vec(&request).unwrap();
        assert_eq!(serde_json::from_slice::<JoinRequest>(&encoded).unwrap().player_id, *id);
    }
});
