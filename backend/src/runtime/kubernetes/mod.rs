//! The `kubernetes` runtime: one bare Pod per session.
//!
//! The Pod runs the game server under the `restricted` Pod Security Standard, with no
//! service-account token, resource limits and `activeDeadlineSeconds` as a hard cap; the ticket
//! secret comes from a Secret ([`pod`]). Each replica watches every game-server Pod once
//! ([`watch`]); a session's start waits on that watch until its Pod is Ready (its IP is the
//! server address), finishes, disappears, or the ready timeout passes (then the Pod is
//! deleted), and a running session's server counts as lost as soon as its Pod finishes, is
//! deleted or evicted by anyone else, or stops being Ready. API calls that fail with 409, 429,
//! 5xx or a transport error are retried with backoff; Pod creations are bounded in parallel.
//!
//! Pods outlive the replica that created them: the [`reaper`] (run by every replica) reports
//! the sessions of Pods that finished or vanished without a report to the sessions service and
//! deletes finished Pods, and at start [`reconcile`] deletes Pods without a live session and
//! reports live sessions without a Pod.

mod pod;
pub(crate) mod reaper;
pub mod settings;
mod warm;
mod watch;

use service::backoff::Policy;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use self::pod::{PodState, game_address};
pub use self::pod::{
    PodTemplate, pod_name, render_pod, render_warm_builtin_pod, render_warm_pod, render_warm_profile_pod, warm_pod_name,
};
pub use self::reaper::reconcile;
use self::watch::{PodWatch, Seen};
use super::profiles::{PortProtocol, Ready};
use super::{ServerExit, ServerHandle, ServerSpec, SessionBook, SessionRuntime, StartError, Task};

/// Pod creations in flight at once, per replica.
const PARALLEL_CREATES: usize = 16;
/// How long a finished Pod is kept (for `kubectl logs`) before the reaper deletes it.
const REAP_GRACE: Duration = Duration::from_secs(30);
/// Live sessions younger than this are not failed for lacking a Pod at start: their replica
/// may be creating it.
const RECONCILE_MIN_AGE: Duration = Duration::from_secs(30);
/// Matched sessions ready for less than this are not failed for lacking a Pod in the watch's
/// store: the list that misses it may predate it.
const RESYNC_MIN_AGE: Duration = Duration::from_secs(10);

/// Whether an API failure is worth another try: conflicts, throttling, server errors and
/// transport problems.
fn retryable(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.code == 409 || status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

fn is_code(error: &kube::Error, code: u16) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == code)
}

/// Retries of creating a session's Pod (a 5xx, a 429, a transport error).
pub(crate) const CREATE_POD: Policy = Policy::new(
    "kubernetes_create_pod",
    Duration::from_millis(200),
    Duration::from_secs(5),
);
/// Retries of deleting a Pod, five tries at most (the reaper deletes what is left later).
pub(crate) const DELETE_POD: Policy = Policy::new(
    "kubernetes_delete_pod",
    Duration::from_millis(200),
    Duration::from_secs(5),
);

/// Creates Pods and follows them through the replica's one Pod watch.
pub struct KubernetesRuntime {
    pods: Api<Pod>,
    watch: PodWatch,
    template: PodTemplate,
    creations: Semaphore,
    /// The first pause between retries of an API call (shorter in tests); see [`CREATE_POD`].
    backoff: Duration,
    /// How long finished Pods are kept before the reaper deletes them.
    reap_grace: Duration,
    /// The built-in server's warm Pod pools, when `WARM_POOL_MAX` > 0, by
    /// [`pool_key`](crate::runtime::warm::pool_key): one, or one per version.
    builtin_warm: HashMap<String, Arc<warm::WarmPods>>,
    /// The warm Pod pools of profiles with a `warm_pool`, by
    /// [`pool_key`](crate::runtime::warm::pool_key): one per version of a profile with versions.
    profile_warm: HashMap<String, Arc<warm::WarmPods>>,
    /// What warm Pods of profiles are offered their sessions through; given with the tasks.
    book: OnceLock<Arc<dyn SessionBook>>,
    /// The profiles whose sessions end when their server exits (0: completed).
    ends_by_exit: std::collections::HashSet<String>,
}

impl KubernetesRuntime {
    /// Starts the replica's Pod watch at once (it stops when the runtime is dropped).
    pub fn new(client: kube::Client, template: PodTemplate) -> Self {
        KubernetesRuntime::with_clients(client.clone(), client, template)
    }

    /// A runtime that makes its calls through `calls` and watches its Pods through `watches`
    /// (a client without a read timeout: the watch may be quiet for a long time).
    pub fn with_clients(calls: kube::Client, watches: kube::Client, template: PodTemplate) -> Self {
        let pods = Api::namespaced(calls, &template.namespace);
        KubernetesRuntime {
            watch: PodWatch::start(Api::namespaced(watches, &template.namespace), &template.namespace),
            pods,
            template,
            creations: Semaphore::new(PARALLEL_CREATES),
            backoff: Duration::from_millis(200),
            reap_grace: REAP_GRACE,
            builtin_warm: HashMap::new(),
            profile_warm: HashMap::new(),
            book: OnceLock::new(),
            ends_by_exit: std::collections::HashSet::new(),
        }
    }

    /// The same runtime keeping warm Pods of the built-in server within `books`' bounds (for
    /// the whole cluster; a pool for each of its versions, if it has any), handed their
    /// sessions with tokens signed by `secret`.
    pub(crate) fn with_warm_pool(
        mut self,
        books: Arc<crate::runtime::warm::WarmState>,
        secret: protocol::TicketSecret,
        profiles: &crate::runtime::profiles::Profiles,
    ) -> Self {
        self.builtin_warm = crate::runtime::warm::builtin_pools(profiles, books)
            .into_iter()
            .map(|(profile, books)| {
                let key = crate::runtime::warm::pool_key(&profile);
                let flavor = warm::Flavor::Builtin(profile);
                (key, Arc::new(warm::WarmPods::new(books, secret.clone(), flavor)))
            })
            .collect();
        self
    }

    /// The same runtime keeping warm Pods of each profile of `profiles` with a `warm_pool`
    /// (for the whole cluster, within `overrides`' bounds for the profiles it names: a region's),
    /// which poll `internal_url`'s `/internal/warm/<pod>` with tokens signed by `secret`.
    pub fn with_profile_pools(
        mut self,
        profiles: &crate::runtime::profiles::Profiles,
        secret: &protocol::TicketSecret,
        internal_url: &str,
        overrides: &std::collections::BTreeMap<String, crate::runtime::warm::Bounds>,
    ) -> Self {
        self.ends_by_exit = profiles
            .iter()
            .filter(|p| !p.builtin && p.ends == crate::runtime::profiles::Ends::Exit)
            .map(|p| p.name.clone())
            .collect();
        let base_url = format!("{}/internal/warm", internal_url.trim_end_matches('/'));
        // A profile with versions keeps warm Pods of each version (each of its image,
        // labelled with its version): a session claims one of its version's.
        let mut pools = HashMap::new();
        for profile in profiles.iter().filter(|p| !p.builtin) {
            let bounds = overrides.get(&profile.name).copied().or(profile.warm);
            let Some(bounds) = bounds.filter(|b| b.enabled() && profile.warm.is_some()) else {
                continue;
            };
            for (profile, retired) in crate::runtime::warm::pools_of(profiles, profile) {
                let flavor = warm::Flavor::Profile {
                    profile: profile.clone(),
                    base_url: base_url.clone(),
                };
                let books = Arc::new(crate::runtime::warm::WarmState::new(bounds).retired_when(retired));
                pools.insert(
                    crate::runtime::warm::pool_key(&profile),
                    Arc::new(warm::WarmPods::new(books, secret.clone(), flavor)),
                );
            }
        }
        self.profile_warm = pools;
        self
    }

    /// The warm pool `spec`'s sessions take their server from, if it has one.
    fn pool_of(&self, profile: &crate::runtime::Profile) -> Option<&Arc<warm::WarmPods>> {
        let key = crate::runtime::warm::pool_key(profile);
        if profile.builtin {
            self.builtin_warm.get(&key)
        } else {
            self.profile_warm.get(&key)
        }
    }

    /// The same runtime with another retry pause (tests use a short one).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// The same runtime keeping finished Pods this long (tests use zero).
    pub fn with_reap_grace(mut self, grace: Duration) -> Self {
        self.reap_grace = grace;
        self
    }

    async fn create(&self, pod: &Pod) -> Result<(), StartError> {
        let _permit = self
            .creations
            .acquire()
            .await
            .map_err(|e| StartError::Spawn(e.to_string()))?;
        let mut backoff = CREATE_POD.with_floor(self.backoff).start();
        loop {
            match self.pods.create(&PostParams::default(), pod).await {
                Ok(_) => return Ok(()),
                // The name is the session's: an earlier attempt of ours already created it.
                Err(e) if is_code(&e, 409) => return Ok(()),
                Err(e) if retryable(&e) => backoff.sleep(&e).await,
                Err(e) => return Err(StartError::Spawn(format!("creating the pod: {e}"))),
            }
        }
    }

    async fn spawn(&self, spec: ServerSpec) -> Result<Box<dyn ServerHandle>, StartError> {
        // The built-in server and profiles with a warm pool take a hand-over; every other
        // profile starts cold.
        let deadline = if spec.profile.builtin {
            self.template.active_deadline_seconds
        } else {
            pod::profile_deadline(&self.template, &spec.profile)
        };
        if let Some(warm) = self.pool_of(&spec.profile)
            && let Some(claimed) = warm
                .claim(
                    &self.pods,
                    &self.watch,
                    &spec,
                    deadline,
                    self.backoff,
                    self.book.get().map(|b| b.as_ref()),
                )
                .await
        {
            return Ok(Box::new(PodServer {
                pods: self.pods.clone(),
                seen: self.watch.follow(&claimed.name),
                addr: claimed.addr,
                udp_addr: claimed.udp_addr,
                name: claimed.name,
                stopping: false,
                backoff: self.backoff,
            }));
        }
        let profile = spec.profile.clone();
        // Where players reach a ready Pod: the built-in server's game port, or a profile's
        // first TCP and first UDP ports.
        let addresses = |ip: &str| -> Result<(String, Option<String>), StartError> {
            if profile.builtin {
                return Ok((game_address(ip)?, None));
            }
            let at = |protocol| {
                profile
                    .first(protocol)
                    .map(|p| pod::port_address(ip, p.container_port))
                    .transpose()
            };
            Ok((at(PortProtocol::Tcp)?.unwrap_or_default(), at(PortProtocol::Udp)?))
        };
        let began = Instant::now();
        let pod = render_pod(&self.template, &spec);
        let name = pod_name(&spec.session_id);
        // Followed before it exists, so its first event cannot be missed.
        let mut seen = self.watch.follow(&name);
        let deadline = Instant::now() + spec.ready_timeout;
        let ready = timeout_at(deadline, async {
            self.create(&pod).await?;
            let found = loop {
                match &*seen.borrow_and_update() {
                    Seen::Present {
                        state: PodState::Ready(ip),
                        terminating: false,
                    } => break addresses(ip)?,
                    other => starting(other)?,
                }
                if seen.changed().await.is_err() {
                    return Err(StartError::Spawn("the pod watch stopped".into()));
                }
            };
            if matches!(profile.ready, Ready::Sdk) {
                // Running (and past its probe, if it has one): now its own word.
                let said = spec.sdk_ready.wait();
                tokio::pin!(said);
                loop {
                    tokio::select! {
                        () = &mut said => break,
                        changed = seen.changed() => {
                            if changed.is_err() {
                                return Err(StartError::Spawn("the pod watch stopped".into()));
                            }
                            starting(&seen.borrow_and_update())?;
                        }
                    }
                }
            }
            Ok(found)
        })
        .await;
        let error = match ready {
            Ok(Ok((addr, udp_addr))) => {
                if let Some(warm) = self.pool_of(&profile) {
                    warm.cold_start_took(began.elapsed());
                }
                return Ok(Box::new(PodServer {
                    pods: self.pods.clone(),
                    seen,
                    addr,
                    udp_addr,
                    name,
                    stopping: false,
                    backoff: self.backoff,
                }));
            }
            Ok(Err(e)) => e,
            Err(_) => StartError::Timeout(spec.ready_timeout),
        };
        // Whatever exists of it goes at once.
        delete_pod(
            &self.pods,
            &name,
            &DeleteParams::default().grace_period(0),
            self.backoff,
        )
        .await;
        Err(error)
    }
}

/// What a starting Pod's state says: an error if it can no longer become ready.
fn starting(seen: &Seen) -> Result<(), StartError> {
    match seen {
        Seen::Present {
            state: PodState::Finished(why),
            ..
        } => Err(StartError::Exited(format!("pod {why}"))),
        Seen::Present { terminating: true, .. } => Err(StartError::Exited("pod deleted while starting".into())),
        Seen::Gone => Err(StartError::Exited("pod deleted".into())),
        Seen::NotYet | Seen::Present { .. } => Ok(()),
    }
}

impl SessionRuntime for KubernetesRuntime {
    fn start(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Box<dyn ServerHandle>, StartError>> {
        Box::pin(self.spawn(spec))
    }

    fn servers_outlive_backend(&self) -> bool {
        true
    }

    fn recover<'a>(&'a self, sessions: &'a dyn SessionBook) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let (deleted, failed) = reconcile(&self.pods, sessions, RECONCILE_MIN_AGE).await?;
            if deleted + failed > 0 {
                tracing::warn!(deleted, failed, "reconciled pods against sessions");
            }
            Ok(())
        })
    }

    /// One short list of the game-server Pods: the API answering, and letting us read them.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let list = kube::api::ListParams::default().labels(&pod::label_selector()).limit(1);
            self.pods.list(&list).await.map(drop).map_err(|e| e.to_string())
        })
    }

    fn warm_servers(&self) -> Option<protocol::api::WarmServers> {
        (!self.builtin_warm.is_empty())
            .then(|| crate::runtime::warm::total(self.builtin_warm.values().map(|w| w.books.snapshot())))
    }

    fn warm_profiles(&self) -> std::collections::BTreeMap<String, protocol::api::WarmServers> {
        // The built-in server's versions' pools are listed too, as a profile's are.
        let versions = self.builtin_warm.iter().filter(|(key, _)| key.contains('@'));
        self.profile_warm
            .iter()
            .chain(versions)
            .map(|(name, warm)| (name.clone(), warm.books.snapshot()))
            .collect()
    }

    fn tasks(&self, sessions: Arc<dyn SessionBook>, stop: CancellationToken) -> Vec<Task> {
        let _ = self.book.set(sessions.clone());
        let mut tasks: Vec<Task> = Vec::new();
        for warm in self.builtin_warm.values().chain(self.profile_warm.values()) {
            let keeper = warm::Keeper {
                pods: self.pods.clone(),
                watch: self.watch.clone(),
                template: self.template.clone(),
                warm: warm.clone(),
                sessions: sessions.clone(),
            };
            tasks.push(("warm pods", Box::pin(keeper.run(stop.clone()))));
        }
        let reaper = reaper::Reaper {
            pods: self.pods.clone(),
            watch: self.watch.clone(),
            sessions,
            grace: self.reap_grace,
            min_age: RESYNC_MIN_AGE,
            warm_pool: !self.builtin_warm.is_empty() || !self.profile_warm.is_empty(),
            ends_by_exit: self.ends_by_exit.clone(),
        };
        tasks.push(("pod reaper", Box::pin(reaper.run(stop))));
        tasks
    }
}

/// Deletes a Pod, retrying what is worth retrying; true when this call deleted it (a Pod
/// already gone, or one that could not be deleted, is false).
async fn delete_pod(pods: &Api<Pod>, name: &str, params: &DeleteParams, backoff: Duration) -> bool {
    let mut retries = DELETE_POD.with_floor(backoff).start();
    for _ in 0..5 {
        match pods.delete(name, params).await {
            Ok(_) => return true,
            Err(e) if is_code(&e, 404) => return false,
            Err(e) if retryable(&e) => retries.sleep(&e).await,
            Err(e) => {
                tracing::warn!(pod = name, error = %e, "deleting the pod failed");
                return false;
            }
        }
    }
    tracing::warn!(pod = name, "deleting the pod kept failing; giving up for now");
    false
}

/// A session's ready Pod.
struct PodServer {
    pods: Api<Pod>,
    seen: tokio::sync::watch::Receiver<Seen>,
    name: String,
    addr: String,
    udp_addr: Option<String>,
    /// Set once we asked for the Pod to go: then its draining is expected, not a loss.
    stopping: bool,
    backoff: Duration,
}

impl PodServer {
    async fn gone(&mut self) -> ServerExit {
        loop {
            let exit = match &*self.seen.borrow_and_update() {
                Seen::Present {
                    state: PodState::Finished(why),
                    ..
                } if why == "Succeeded" => Some(ServerExit::Exited(Some(0))),
                Seen::Present {
                    state: PodState::Finished(why),
                    ..
                } => Some(ServerExit::Lost(format!("pod {why}"))),
                Seen::Gone => Some(ServerExit::Lost("pod deleted".into())),
                Seen::Present { terminating: true, .. } if !self.stopping => Some(ServerExit::Lost(
                    "pod being deleted (evicted, or deleted by someone else)".into(),
                )),
                Seen::Present {
                    state: PodState::Pending,
                    ..
                } if !self.stopping => Some(ServerExit::Lost("pod no longer ready".into())),
                _ => None,
            };
            if let Some(exit) = exit {
                return exit;
            }
            if self.seen.changed().await.is_err() {
                return ServerExit::Lost("the pod watch stopped".into());
            }
        }
    }
}

impl ServerHandle for PodServer {
    fn name(&self) -> &str {
        &self.name
    }

    fn addr(&self) -> &str {
        &self.addr
    }

    fn udp_addr(&self) -> Option<&str> {
        self.udp_addr.as_deref()
    }

    fn wait(&mut self) -> BoxFuture<'_, ServerExit> {
        Box::pin(self.gone())
    }

    fn terminate(&mut self) -> BoxFuture<'_, ()> {
        // A normal delete: the kubelet sends SIGTERM, the server drains and reports.
        self.stopping = true;
        Box::pin(async move {
            delete_pod(&self.pods, &self.name, &DeleteParams::default(), self.backoff).await;
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        self.stopping = true;
        Box::pin(async move {
            delete_pod(
                &self.pods,
                &self.name,
                &DeleteParams::default().grace_period(0),
                self.backoff,
            )
            .await;
        })
    }
}
