//! How game servers are started and stopped: one per session, behind [`SessionRuntime`].
//!
//! The supervisor only ever sees this trait, so the local runtime (child processes) and the
//! Kubernetes runtime (pods) are interchangeable. A runtime must honour the spec's ready
//! timeout itself, because only it knows how to clean up a half-started server (kill the
//! child, delete the pod).

pub mod kubernetes;
pub mod local;

use std::time::Duration;

use futures_util::future::BoxFuture;

/// Everything a runtime needs to start one session's server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub session_id: String,
    pub players: Vec<String>,
    /// Where the server POSTs its result.
    pub report_url: String,
    /// The bearer token for that report.
    pub report_token: String,
    /// Give up (and clean up) if the server is not ready by then.
    pub ready_timeout: Duration,
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("server not ready within {0:?}")]
    Timeout(Duration),
    #[error("server exited before it was ready: {0}")]
    Exited(String),
    #[error("cannot start server: {0}")]
    Spawn(String),
}

/// How a server went away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerExit {
    /// It exited by itself with this status (0 is a normal end after its report).
    Exited(Option<i32>),
    /// It was killed, evicted or deleted.
    Lost(String),
}

/// A ready server. Dropping it must not leave the server running forever; callers still
/// terminate or kill explicitly.
pub trait ServerHandle: Send {
    /// A name for logs and history (pod name, or `local-<pid>`).
    fn name(&self) -> &str;
    /// `ip:port` of the game port, for the proxy.
    fn addr(&self) -> &str;
    /// Resolves once the server is gone.
    fn wait(&mut self) -> BoxFuture<'_, ServerExit>;
    /// Asks the server to drain (it ends its match with `terminated` and reports).
    fn terminate(&mut self) -> BoxFuture<'_, ()>;
    /// Stops the server at once.
    fn kill(&mut self) -> BoxFuture<'_, ()>;
}

/// Starts game servers.
pub trait SessionRuntime: Send + Sync + 'static {
    /// Starts a server and waits until it is ready, it fails, or the spec's ready timeout.
    fn start(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Box<dyn ServerHandle>, StartError>>;

    /// Whether servers live on when the backend that started them stops (Pods do, child
    /// processes do not). Then a stopping backend leaves running matches alone, and other
    /// replicas do not fail them: the Kubernetes reaper ends them when their Pods finish.
    fn servers_outlive_backend(&self) -> bool {
        false
    }
}
