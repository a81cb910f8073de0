//! How game servers are started and stopped: one per session, behind [`SessionRuntime`].
//!
//! The supervisor only ever sees this trait, so the local runtime (child processes) and the
//! Kubernetes runtime (pods) are interchangeable. A runtime must honour the spec's ready
//! timeout itself, because only it knows how to clean up a half-started server (kill the
//! child, delete the pod). Runtimes start, watch and stop servers and report what they see
//! through [`SessionBook`], the little they may read of the sessions and report to them; they
//! never write session state themselves, and a runtime is testable with a book of its own,
//! without Redis. A runtime that needs work of its own while the backend runs (a Pod reaper)
//! hands it over as [`Task`]s.

mod game_server;
pub mod kubernetes;
pub(crate) mod local;
pub mod profiles;
pub mod region_health;
pub mod regions;
pub mod settings;
pub(crate) mod versions;
pub(crate) mod warm;

pub use profiles::{Ends, Profile};
pub use settings::{RuntimeKind, RuntimeSettings};

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use matchmaking_core::store::{self, LiveSession};
use protocol::sessions::SessionRecord;

/// What a runtime may read of the sessions and report to them. The sessions service is the
/// book in the backend; tests hand a runtime a book of their own.
pub trait SessionBook: Send + Sync {
    /// This replica's instance id (the `instance` of the sessions it forms).
    fn instance(&self) -> &str;
    /// Every session not yet ended.
    fn live(&self) -> BoxFuture<'_, store::Result<Vec<LiveSession>>>;
    /// One session's record, if it is still known.
    fn record<'a>(&'a self, session_id: &'a str) -> BoxFuture<'a, store::Result<Option<SessionRecord>>>;
    /// The session's server went away (a Pod that finished or vanished): the session fails,
    /// its players requeued if it was still allocating. A no-op for a session already over.
    fn server_lost<'a>(&'a self, session_id: &'a str, why: &'a str) -> BoxFuture<'a, store::Result<()>>;
    /// The region the session's server runs in is down (`REGIONS`): the session fails and its
    /// players are requeued at the head, even if it was running. A no-op for one already over.
    fn region_lost<'a>(&'a self, session_id: &'a str, why: &'a str) -> BoxFuture<'a, store::Result<()>> {
        self.server_lost(session_id, why)
    }
    /// The session's server exited with status 0 by itself and its profile ends by exit (a
    /// Pod that Succeeded): the session is `completed`, as its supervisor would have ended it.
    /// A no-op for a session already over.
    fn server_completed<'a>(&'a self, session_id: &'a str, why: &'a str) -> BoxFuture<'a, store::Result<()>>;
    /// Takes or keeps, for `ttl`, the lease on keeping the cluster's warm servers (one
    /// replica creates and deletes them at a time): whether this replica holds it now.
    fn warm_pool_lease(&self, ttl: Duration) -> BoxFuture<'_, store::Result<bool>>;
    /// Whether warm server `id` of a profile is polling for its session, and whether it has
    /// taken the one offered to it.
    fn warm_server_state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, store::Result<(bool, bool)>>;
    /// Offers `session` to warm server `id` of a profile: whether it was offered.
    fn offer_warm<'a>(
        &'a self,
        id: &'a str,
        session: &'a protocol::api::WarmSession,
    ) -> BoxFuture<'a, store::Result<bool>>;
}

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
    /// The queue the session formed in.
    pub queue: String,
    /// The server to run.
    pub profile: Arc<Profile>,
    /// The region its server runs in (`REGIONS`); `None`: the first region, or the only one.
    pub region: Option<String>,
    /// Resolves once the server has called the SDK's ready (waited on for `ready: sdk`).
    pub sdk_ready: SdkReady,
}

/// Resolves once a session's server has said it is ready through the SDK: the sessions
/// service makes one per session, as the call may reach any replica.
#[derive(Clone)]
pub struct SdkReady(Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>);

impl SdkReady {
    pub fn new(wait: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static) -> SdkReady {
        SdkReady(Arc::new(wait))
    }

    /// One that never resolves: the server's readiness is seen another way.
    pub fn never() -> SdkReady {
        SdkReady::new(|| Box::pin(std::future::pending()))
    }

    /// Resolves once the server has called ready.
    pub fn wait(&self) -> BoxFuture<'static, ()> {
        (self.0)()
    }
}

impl std::fmt::Debug for SdkReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SdkReady")
    }
}

/// Report tokens outlive any match: open timeout + the longest match + margin.
const REPORT_TOKEN_TTL_SECONDS: i64 = 2 * 86_400;

impl ServerSpec {
    /// The spec of session `session_id`'s server: it reports to `internal_url` (the
    /// backend's base URL) with a report token signed by `secret`, and must be ready within
    /// `ready_timeout`. The supervisor and `backend render-pod` both build specs this way.
    pub fn new(
        session_id: &str,
        players: Vec<String>,
        teams: Vec<Vec<String>>,
        internal_url: &str,
        secret: &protocol::TicketSecret,
        ready_timeout: Duration,
    ) -> ServerSpec {
        let claims = protocol::Claims::report(session_id, protocol::ticket::unix_now(), REPORT_TOKEN_TTL_SECONDS);
        ServerSpec {
            session_id: session_id.to_owned(),
            players,
            teams,
            report_url: format!(
                "{}/internal/sessions/{session_id}/result",
                internal_url.trim_end_matches('/')
            ),
            report_token: secret.mint(&claims),
            ready_timeout,
            queue: matchmaking_core::queues::DEFAULT_QUEUE.to_owned(),
            profile: Arc::new(Profile::builtin()),
            region: None,
            sdk_ready: SdkReady::never(),
        }
    }

    /// The same spec, its server in `region`.
    pub fn in_region(mut self, region: Option<String>) -> ServerSpec {
        self.region = region;
        self
    }

    /// The same spec, waiting on `ready` for a `ready: sdk` server.
    pub fn with_sdk_ready(mut self, ready: SdkReady) -> ServerSpec {
        self.sdk_ready = ready;
        self
    }

    /// The same spec for a session of `queue`, running `profile`.
    pub fn running(mut self, queue: &str, profile: Arc<Profile>) -> ServerSpec {
        queue.clone_into(&mut self.queue);
        self.profile = profile;
        self
    }

    /// The environment every server of a profile gets (besides its ports): `MATCHPLANE_*`.
    pub fn contract_env(&self) -> Vec<(String, String)> {
        [
            ("MATCHPLANE_SESSION_ID", self.session_id.clone()),
            ("MATCHPLANE_PLAYERS", self.players.join(",")),
            ("MATCHPLANE_TEAMS", self.teams_setting().unwrap_or_default()),
            ("MATCHPLANE_QUEUE", self.queue.clone()),
            ("MATCHPLANE_REPORT_URL", self.report_url.clone()),
            ("MATCHPLANE_REPORT_TOKEN", self.report_token.clone()),
            ("MATCHPLANE_VERSION", self.profile.version.clone().unwrap_or_default()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

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

impl std::fmt::Display for ServerExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServerExit::Exited(Some(code)) => write!(f, "it exited with status {code}"),
            ServerExit::Exited(None) => f.write_str("it was killed by a signal"),
            ServerExit::Lost(why) => write!(f, "it was lost: {why}"),
        }
    }
}

/// A ready server. Dropping it must not leave the server running forever; callers still
/// terminate or kill explicitly.
pub trait ServerHandle: Send {
    /// A name for logs and history (pod name, or `local-<pid>`).
    fn name(&self) -> &str;
    /// `ip:port` of the game port (a profile's first TCP port), for the proxy; empty when the
    /// server has no TCP port.
    fn addr(&self) -> &str;
    /// `ip:port` of its first UDP port, when it has one.
    fn udp_addr(&self) -> Option<&str> {
        None
    }
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
    fn recover<'a>(&'a self, _sessions: &'a dyn SessionBook) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether its target answers now (a cluster's API); a region whose probe keeps failing
    /// goes down. Local servers always answer.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Its warm pool, when it keeps one.
    fn warm_servers(&self) -> Option<protocol::api::WarmServers> {
        None
    }

    /// Its warm pools of profiles, by profile name.
    fn warm_profiles(&self) -> std::collections::BTreeMap<String, protocol::api::WarmServers> {
        std::collections::BTreeMap::new()
    }

    /// The background tasks this runtime needs, stopping when `stop` is cancelled.
    fn tasks(&self, _sessions: Arc<dyn SessionBook>, _stop: CancellationToken) -> Vec<Task> {
        Vec::new()
    }
}

/// The runtime `settings` choose; `None` for `RUNTIME=none` (dry runs, no servers). With
/// `regions`, one runtime per region, each with its own warm pools.
pub(crate) async fn build(
    settings: &RuntimeSettings,
    secret: &protocol::TicketSecret,
    warm: Arc<warm::WarmState>,
    profiles: &profiles::Profiles,
    internal_url: &str,
    regions: Option<Arc<regions::Regions>>,
) -> anyhow::Result<Option<Arc<dyn SessionRuntime>>> {
    let no_overrides = std::collections::BTreeMap::new();
    let Some(regions) = regions else {
        return Ok(match settings {
            RuntimeSettings::Local(local) => Some(Arc::new(local::LocalRuntime::new(
                local.clone(),
                secret.clone(),
                warm,
                profiles,
                internal_url,
                &no_overrides,
            ))),
            RuntimeSettings::Kubernetes(kubernetes) => Some(Arc::new(
                kubernetes_runtime(kubernetes, None, secret, warm, profiles, internal_url, &no_overrides).await?,
            )),
            RuntimeSettings::None => None,
        });
    };
    let mut each = Vec::new();
    for region in &regions.list {
        // Each region's pools add into the registered metrics.
        let books = Arc::new(warm.sharing_within(region.warm));
        let runtime: Arc<dyn SessionRuntime> = match (settings, &region.target) {
            (RuntimeSettings::Local(local), _) => Arc::new(local::LocalRuntime::new(
                local.clone(),
                secret.clone(),
                books,
                profiles,
                internal_url,
                &region.profile_warm,
            )),
            (RuntimeSettings::Kubernetes(kubernetes), regions::RegionTarget::Kubernetes { context, kubeconfig }) => {
                let cluster = kubernetes::settings::Cluster {
                    context: context.clone(),
                    kubeconfig: kubeconfig.clone(),
                };
                Arc::new(
                    kubernetes_runtime(
                        kubernetes,
                        Some(&cluster),
                        secret,
                        books,
                        profiles,
                        internal_url,
                        &region.profile_warm,
                    )
                    .await
                    .with_context(|| format!("region {}", region.name))?,
                )
            }
            (other, _) => anyhow::bail!("REGIONS with RUNTIME={}: no servers to place", other.name()),
        };
        each.push((region.name.clone(), runtime));
    }
    Ok(Some(Arc::new(regions::Regional::new(each, regions))))
}

/// The Kubernetes runtime of `settings` in the cluster of `cluster` (a region's), or of the
/// settings' kubeconfig (in-cluster, or `KUBECONFIG`'s current context, outside).
async fn kubernetes_runtime(
    settings: &settings::KubernetesSettings,
    cluster: Option<&kubernetes::settings::Cluster>,
    secret: &protocol::TicketSecret,
    warm: Arc<warm::WarmState>,
    profiles: &profiles::Profiles,
    internal_url: &str,
    profile_warm: &std::collections::BTreeMap<String, warm::Bounds>,
) -> anyhow::Result<kubernetes::KubernetesRuntime> {
    let settings::KubernetesSettings {
        template,
        kubeconfig,
        finished_pod_grace,
        api_timeout,
        warm: _,
    } = settings;
    let config = match (cluster, kubeconfig) {
        (Some(cluster), _) => {
            let path = cluster.kubeconfig.as_ref().or(kubeconfig.as_ref());
            let file = match path {
                Some(path) => kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?,
                None => kube::config::Kubeconfig::read()
                    .context("reading the kubeconfig (KUBECONFIG, or ~/.kube/config)")?,
            };
            let options = kube::config::KubeConfigOptions {
                context: Some(cluster.context.clone()),
                ..Default::default()
            };
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("using the kubeconfig context {}", cluster.context))?
        }
        (None, Some(path)) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))?
        }
        (None, None) => kube::Config::infer()
            .await
            .context("connecting to the Kubernetes API (in-cluster config, or KUBECONFIG outside)")?,
    };
    // The Pod watch is quiet for long stretches (kube-runtime bounds its idleness), so only the
    // other calls get a bound on their answer: without one, a call on a connection to an API
    // server that went silent (its node gone, a load balancer dropping the flow) would wait for
    // ever.
    let mut bounded = config.clone();
    bounded.read_timeout = Some(*api_timeout);
    bounded.write_timeout = Some(*api_timeout);
    bounded.reset_reader_on_write = true;
    let calls = kube::Client::try_from(bounded).context("building the Kubernetes client")?;
    let watches = kube::Client::try_from(config).context("building the Kubernetes client")?;
    Ok(
        kubernetes::KubernetesRuntime::with_clients(calls, watches, template.clone())
            .with_reap_grace(*finished_pod_grace)
            .with_warm_pool(warm, secret.clone(), profiles)
            .with_profile_pools(profiles, secret, internal_url, profile_warm),
    )
}
