//! The contracts between matchplane's parts, and nothing else (process plumbing lives in the
//! `service` crate):
//!
//! - [`codec`]: the newline-delimited framing of the game protocol, with a hard line cap.
//! - [`handover`]: the `ASSIGN`/`ASSIGNED` lines that hand a warm game server its session.
//! - [`line`]: typed client commands and server replies for every line of the game protocol,
//!   and the `ERROR` codes, including the one each ticket refusal maps to.
//! - [`ticket`]: minting and verifying the HS256 game tickets, result-report tokens and warm
//!   servers' hand-overs.
//! - [`api`]: a typed body for every request and response of the HTTP API, and the result
//!   report.
//! - [`player`]: the one definition of a valid player id.
//! - [`proxy_header`]: the PROXY protocol v2 header carrying a verified player to a server.
//! - [`server`]: the defaults of the game server's settings the runtimes rely on.
//! - [`sessions`]: the session record the backend writes and the proxy routes by.
//! - [`udp`]: the framing of game datagrams between a client and the proxy.

pub mod api;
pub mod codec;
pub mod handover;
pub mod line;
pub mod operators;
pub mod player;
pub mod probe;
pub mod proxy_header;
pub mod server;
pub mod sessions;
pub mod ticket;
pub mod udp;

pub use codec::{CodecError, LineCodec, MAX_LINE_BYTES};
pub use line::{ClientCommand, ErrorCode, GameState, ServerReply};
pub use ticket::{Audience, Claims, Handover, TicketError, TicketSecret};
