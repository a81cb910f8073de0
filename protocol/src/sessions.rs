//! The session record contract between the backend, which writes it, and the proxy, which
//! routes by it: a Redis hash at `<REDIS_KEY_PREFIX>:s:<session_id>` whose field `state` is
//! `allocating`, `matched` or `ended`, and whose field `addr` is the game server's
//! `ip:port` once `matched`.

/// The Redis key of a session's record.
pub fn session_key(prefix: &str, session_id: &str) -> String {
    format!("{prefix}:s:{session_id}")
}

/// The `state` value of a session whose server is ready for players.
pub const STATE_MATCHED: &str = "matched";
/// The `state` value of a session that is over.
pub const STATE_ENDED: &str = "ended";
