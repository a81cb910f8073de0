//! How game servers are started and stopped: one per session, behind [`SessionRuntime`].
//!
//! The supervisor only ever sees this trait, so the local runtime (child processes) and the
//! Kubernetes runtime (pods) are interchangeable. A runtime must honour the spec's ready
//! timeout itself, because only it knows how to clean up a half-started server (kill the
//! child, delete the pod). Runtimes start, watch and stop servers and report what they see to
//! the [`Sessions`] service; they never write session state themselves. A runtime that needs
//! work of its own while the backend runs (a Pod reaper) hands it over as [`Task`]s.

pub mod kubernetes;
mod local;
pub(crate) mod warm;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeSettings;
use crate::sessions::Sessions;

/// A named background task a runtime needs while the backend runs; it returns when its token
/// is cancelled.
pub type Task = (&'static str, BoxFuture<'static, ()>);

/// Everything a runtime needs to start one session's server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    pub session_id: String,
    pub players: Vec<String>,
    /// The teams' players, when the queue has teams (handed on as `TEAMS`).
    pub teams: Vec<Vec<String>>,
    /// Where the server POSTs its result.
    pub report_url: String,
    /// The bearer token for that report.
    pub report_token: String,
    /// Give up (and clean up) if the server is not ready by then.
    pub ready_timeout: Duration,
}

impl ServerSpec {
    /// The `TEAMS` setting: teams separated by `;`, players by `,`; `None` without teams.
    pub fn teams_setting(&self) -> Option<String> {
        (!self.teams.is_empty()).then(|| {
            self.teams
                .iter()
                .map(|team| team.join(","))
                .collect::<Vec<_>>()
                .join(";")
        })
    }
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

    /// At start, before any session is formed: matches the servers that exist against the
    /// live sessions, removing servers nobody needs and reporting sessions whose server is gone.
    fn recover<'a>(&'a self, _sessions: &'a Sessions) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Its warm pool, when it keeps one.
    fn warm_servers(&self) -> Option<protocol::api::WarmServers> {
        None
    }

    /// The background tasks this runtime needs, stopping when `stop` is cancelled.
    fn tasks(&self, _sessions: Sessions, _stop: CancellationToken) -> Vec<Task> {
        Vec::new()
    }
}

/// The runtime `settings` choose; `None` for `RUNTIME=none` (dry runs, no servers).
pub(crate) async fn build(
    settings: &RuntimeSettings,
    secret: &protocol::TicketSecret,
) -> anyhow::Result<Option<Arc<dyn SessionRuntime>>> {
    Ok(match settings {
        RuntimeSettings::Local(local) => Some(Arc::new(local::LocalRuntime::new(local.clone(), secret.clone()))),
        RuntimeSettings::Kubernetes {
            template,
            kubeconfig,
            finished_pod_grace,
            api_timeout,
            warm,
        } => {
            let config = match kubeconfig {
                Some(path) => {
                    let file = kube::config::Kubeconfig::read_from(path)
                        .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                    kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                        .await
                        .with_context(|| format!("using the kubeconfig {}", path.display()))?
                }
                None => kube::Config::infer()
                    .await
                    .context("connecting to the Kubernetes API (in-cluster config, or KUBECONFIG outside)")?,
            };
            // The Pod watch is quiet for long stretches (kube-runtime bounds its idleness), so
            // only the other calls get a bound on their answer: without one, a call on a
            // connection to an API server that went silent (its node gone, a load balancer
            // dropping the flow) would wait for ever.
            let mut bounded = config.clone();
            bounded.read_timeout = Some(*api_timeout);
            bounded.write_timeout = Some(*api_timeout);
            bounded.reset_reader_on_write = true;
            let calls = kube::Client::try_from(bounded).context("building the Kubernetes client")?;
            let watches = kube::Client::try_from(config).context("building the Kubernetes client")?;
            Some(Arc::new(
                kubernetes::KubernetesRuntime::with_clients(calls, watches, (**template).clone())
                    .with_reap_grace(*finished_pod_grace)
                    .with_warm_pool(*warm, secret.clone()),
            ))
        }
        RuntimeSettings::None => None,
    })
}
