//! Contracts shared by several matchplane binaries.
//!
//! - [`codec`]: the newline-delimited framing of the game protocol, with a hard line cap.
//! - [`line`]: typed client commands and server replies for every line of DESIGN §2.
//! - [`ticket`]: minting and verifying the HS256 tickets of DESIGN §3.
//! - [`api`]: request and response bodies of the HTTP API (DESIGN §4) and the result report.
//! - [`player`]: the one definition of a valid player id.
//! - [`prom`]: Prometheus text-format helpers.
//! - [`sessions`]: the Redis session record the backend writes and the proxy routes by.
//! - `telemetry` (feature `telemetry`): the logging set-up every binary shares.
//! - `cli` (feature `binary`): config parsing, duration settings and signals for `main`;
//!   with feature `server`, `cli::serve`, the rest of a multi-threaded server's `main`.

pub mod api;
#[cfg(feature = "binary")]
pub mod cli;
pub mod codec;
pub mod line;
pub mod player;
pub mod prom;
pub mod sessions;
#[cfg(feature = "telemetry")]
pub mod telemetry;
pub mod ticket;

pub use codec::{CodecError, LineCodec, MAX_LINE_BYTES};
pub use line::{ClientCommand, ErrorCode, GameState, ServerReply};
pub use ticket::{Audience, Claims, TicketError, TicketSecret};
