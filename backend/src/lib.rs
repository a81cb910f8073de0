//! matchplane's matchmaking control plane.
//!
//! [`run`] serves the HTTP API on a bound listener and runs the replica's background work (see
//! [`App`] for the phases of start-up and shutdown). The parts, each in its own module:
//! - `api`: the HTTP handlers; `events`: pub/sub wake-ups for long polls and supervisors;
//! - [`store`]: the Redis state and its atomic scripts, named by [`keys`];
//! - [`sessions`]: the one owner of forming, marking ready and ending sessions;
//! - `matcher`, `supervisor`, `janitor`: who asks it to, and when;
//! - [`runtime`]: starting and stopping game servers (local processes, Kubernetes Pods);
//! - `history`: the PostgreSQL match history, written from the outbox.

mod api;
mod app;
mod auth;
pub mod config;
mod error;
mod events;
pub mod forming;
mod health;
mod history;
mod janitor;
pub mod keys;
mod lifecycle;
mod matcher;
mod metrics;
pub mod queues;
pub mod runtime;
pub mod sessions;
pub mod store;
mod supervisor;
pub mod tickets;

pub use app::{App, run};
pub use config::{Config, RuntimeKind, Settings, SettingsBuilder};
