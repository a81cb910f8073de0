//! The game server's settings that others rely on: the defaults of the settings a runtime may
//! leave unset, which the runtimes need to bound a server's life (a Pod's deadline).

/// `OPEN_TIMEOUT_SECONDS`: a session still `open` this long ends `no_show`.
pub const DEFAULT_OPEN_TIMEOUT_SECONDS: f64 = 60.0;

/// `MAX_MATCH_SECONDS`: the longest running length a client may request.
pub const DEFAULT_MAX_MATCH_SECONDS: u64 = 86_400;

/// `GAME_PORT`: the game port a server listens on when told none (a Pod's container port).
pub const DEFAULT_PORT: u16 = 7777;
