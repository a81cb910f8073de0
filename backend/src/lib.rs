//! matchplane's matchmaking control plane.
//!
//! [`run`] serves the HTTP API on a bound listener and runs the replica's background work (see
//! [`App`] for the phases of start-up and shutdown). The parts, each a folder:
//! - `http`: the router, who may call what, the handlers by caller class, the error type;
//! - [`matchmaking`]: joins, cancels and where a player stands, and the matcher forming
//!   sessions from every queue (over `matchmaking_core`'s queues, tickets, forming and store);
//! - [`sessions`]: the one owner of a session's life once formed (marking ready, ending), the
//!   supervisor starting its server, the janitor, and the events that wake long polls;
//! - [`runtime`]: starting and stopping game servers (local processes, Kubernetes Pods);
//! - `history`: the PostgreSQL match history, written from the outbox;
//! - `app`, `config`, `health`, `metrics`: start-up, settings, dependency checks, exposition.

mod app;
pub mod config;
pub mod conformance;
mod health;
mod history;
mod http;
pub mod matchmaking;
mod metrics;
mod operators;
pub mod runtime;
pub mod sessions;

pub use app::{App, run};
pub use config::{Config, RuntimeKind, Settings, SettingsBuilder};
