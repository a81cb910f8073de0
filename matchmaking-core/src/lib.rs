//! matchplane's matchmaking core: what a queue is, what a ticket is, how sessions are formed
//! from tickets, and the Redis state every backend replica shares, changed only by atomic
//! scripts. It knows nothing of HTTP, Kubernetes or PostgreSQL, so the load generator and the
//! benchmarks use the backend's own join and forming code without building the backend.
//!
//! - [`queues`]: the queue file (rules, windows, parties, teams) and the default queue;
//! - [`tickets`]: a join request checked against its queue, and a waiting ticket's document;
//! - [`forming`]: a round's plan for a rule queue, made in memory from the waiting tickets;
//! - [`round`]: one round of forming on one queue, from the read to the commit;
//! - [`store`]: the Redis state and its scripts, with the key names of [`keys`];
//! - [`lifecycle`]: the events of a session's life the scripts write;
//! - [`backfill`]: a running session's request for players.

pub mod backfill;
pub mod forming;
pub mod keys;
pub mod lifecycle;
pub mod queues;
pub mod round;
pub mod store;
pub mod tickets;
