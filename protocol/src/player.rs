//! Player ids: 1–128 characters of `[A-Za-z0-9_.:-]`. One definition, used by the
//! backend to refuse bad joins and by the game server to read its roster.

/// The longest player id.
pub const MAX_PLAYER_ID_LEN: usize = 128;

/// Whether `id` is a valid player id.
pub fn is_valid_player_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_PLAYER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(is_valid_player_id("player-1"));
        assert!(is_valid_player_id("a.b:c_d-E9"));
        assert!(is_valid_player_id(&"x".repeat(128)));
        for bad in ["", "has space", "semi;colon", "ünï", "a/b", "a,b"] {
            assert!(!is_valid_player_id(bad), "{bad}");
        }
        assert!(!is_valid_player_id(&"x".repeat(129)));
    }
}
