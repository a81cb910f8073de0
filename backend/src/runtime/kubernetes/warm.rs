//! Warm Pods: game-server Pods started without a session, labelled `matchplane.io/warm`, one
//! pool for the whole cluster for the built-in game server, and one for each server profile
//! with a `warm_pool` (its Pods labelled `matchplane.io/profile` too).
//!
//! A profile's warm Pod takes its session through the SDK: it polls `MATCHPLANE_WARM_URL`,
//! and only a Pod that is Ready and has polled is claimed. Its claim is the same label patch;
//! its hand-over is an offer through Redis that it takes, then its own ready call for the
//! session (see [`crate::runtime::warm::hand_over_sdk`]).
//!
//! **Claim.** A session takes a Ready, unclaimed warm Pod from the replica's Pod watch and
//! claims it with a merge patch that adds its session label under the precondition of the
//! resource version it read: the API server applies at most one of two claims of one Pod,
//! whichever replicas send them, and the loser (`409 Conflict`) tries another Pod: every
//! candidate if need be, since in a burst the watch still shows Pods other replicas have just
//! claimed, and a conflict costs a round trip where a cold start costs the Pod's start. The same
//! patch lowers the Pod's `activeDeadlineSeconds` to its age plus a session's deadline. The
//! session is then handed over on the Pod's game port (a signed `ASSIGN`, as with local warm
//! servers); a Pod that does not take it loses its session label first (so its deletion is not
//! taken for the session's server going away) and is deleted, and the next one is tried. With
//! no warm Pod left, the session's Pod is created cold.
//!
//! **Pool.** Every replica follows demand from its Pod watch: each Pod that gains a session
//! label (created cold, or a warm one claimed) is a session given a server, whichever replica
//! started it, and the time warm Pods take from creation to Ready is the cold-start time. One
//! replica at a time, the holder of a Redis lease, acts on it: it creates warm Pods up to the
//! target, deletes the surplus (newest first, each under its resource version, so a Pod claimed
//! meanwhile is never deleted as idle), and replaces warm Pods that finished while idle or
//! waited longer than [`WARM_LIFETIME_SECONDS`].

use std::collections::{HashMap, HashSet};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pod::{
    PodState, PodTemplate, WARM_LIFETIME_SECONDS, claim_patch, game_address, is_warm, pod_state, port_address,
    profile_of, render_warm_builtin_pod, render_warm_profile_pod, session_of, unclaim_patch, unclaimed_warm,
    version_of, warm_pod_name,
};
use super::watch::PodWatch;
use super::{delete_pod, is_code};
use crate::runtime::SessionBook;
use crate::runtime::profiles::{PortProtocol, Profile};
use crate::runtime::warm::WarmState;

/// How often the pool is checked against demand.
const POOL_TICK: Duration = Duration::from_millis(250);
/// The pool lease's time to live (renewed every tick by its holder).
const LEASE: Duration = Duration::from_secs(3);
/// Warm Pods being created at once, at most.
const MAX_WARMING: usize = 32;
/// Warm Pods a session claims that then fail its hand-over, at most, before it starts its Pod
/// cold (each failure deletes a Pod; a claim lost to another session counts for nothing).
const MAX_HAND_OVERS: usize = 8;
/// A warm Pod this close to its lifetime is replaced rather than handed a session.
const RETIRE_MARGIN_SECONDS: i64 = 60;

/// Which server a pool's Pods run.
pub(crate) enum Flavor {
    /// The built-in game server (or a version of it), handed its session on its game port.
    Builtin(Arc<Profile>),
    /// A profile's server, taking its session through the SDK from `base_url`/`<pod name>`.
    Profile { profile: Arc<Profile>, base_url: String },
}

/// How long a warm Pod of a profile's token to poll for its session lasts: its whole life.
const WARM_TOKEN_TTL_SECONDS: i64 = 2 * 86_400;

/// The cluster's warm Pods of one pool as this replica sees and keeps them.
pub(crate) struct WarmPods {
    pub(crate) secret: protocol::TicketSecret,
    pub(crate) flavor: Flavor,
    /// The pool's books: demand, counts, and what it has done (shared with the local runtime's
    /// pool, and the pool's metrics).
    pub(crate) books: Arc<WarmState>,

    /// Warm Pods this replica is claiming (or claimed, until its watch shows the claim).
    claiming: Mutex<HashSet<String>>,
    /// Warm Pods this replica created and has not seen Ready yet: when, and whether its watch
    /// has seen them at all.
    creating: Mutex<HashMap<String, (Instant, bool)>>,
}

/// One warm Pod claimed for a session and handed it.
pub(crate) struct Claimed {
    pub(crate) name: String,
    pub(crate) addr: String,
    pub(crate) udp_addr: Option<String>,
}

impl WarmPods {
    pub(crate) fn new(books: Arc<WarmState>, secret: protocol::TicketSecret, flavor: Flavor) -> WarmPods {
        WarmPods {
            secret,
            flavor,
            books,
            claiming: Mutex::new(HashSet::new()),
            creating: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `pod` is of this pool's server (a warm Pod, or a session's): of its profile,
    /// and of its version when the profile has versions.
    fn mine(&self, pod: &Pod) -> bool {
        match &self.flavor {
            Flavor::Builtin(profile) => profile_of(pod).is_none() && version_of(pod) == profile.version.as_deref(),
            Flavor::Profile { profile, .. } => {
                profile_of(pod) == Some(profile.name.as_str()) && version_of(pod) == profile.version.as_deref()
            }
        }
    }

    /// A new warm Pod of this pool, named `name`.
    fn render(&self, template: &PodTemplate, name: &str) -> Pod {
        match &self.flavor {
            Flavor::Builtin(profile) => render_warm_builtin_pod(template, profile, name),
            Flavor::Profile { profile, base_url } => {
                let token = self.secret.mint(&protocol::Claims::warm(
                    name,
                    protocol::ticket::unix_now(),
                    WARM_TOKEN_TTL_SECONDS,
                ));
                render_warm_profile_pod(template, profile, name, &format!("{base_url}/{name}"), &token)
            }
        }
    }

    /// Where players reach a claimed Pod at `ip`: its TCP and UDP addresses.
    fn addresses(&self, ip: &str) -> Result<(String, Option<String>), crate::runtime::StartError> {
        match &self.flavor {
            Flavor::Builtin(_) => Ok((game_address(ip)?, None)),
            Flavor::Profile { profile, .. } => {
                let at = |protocol| {
                    profile
                        .first(protocol)
                        .map(|p| port_address(ip, p.container_port))
                        .transpose()
                };
                Ok((at(PortProtocol::Tcp)?.unwrap_or_default(), at(PortProtocol::Udp)?))
            }
        }
    }

    /// A cold start (a session's Pod created and Ready) took this long.
    pub(crate) fn cold_start_took(&self, took: Duration) {
        self.books.cold_start(took);
    }

    /// Claims a Ready warm Pod for `spec`'s session and hands the session over; `None` when no
    /// warm Pod could be had (then the caller starts one cold).
    pub(crate) async fn claim(
        &self,
        pods: &Api<Pod>,
        watch: &PodWatch,
        spec: &crate::runtime::ServerSpec,
        session_deadline_seconds: i64,
        backoff: Duration,
        book: Option<&dyn SessionBook>,
    ) -> Option<Claimed> {
        let mut candidates: Vec<Arc<Pod>> = watch
            .pods()
            .into_iter()
            .filter(|pod| {
                self.mine(pod) && unclaimed_warm(pod) && matches!(pod_state(pod), PodState::Ready(_)) && !retiring(pod)
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        // Each session tries the Pods in an order of its own (by a hash of its id and the Pod's
        // name), so sessions formed at once on any replica rarely meet on one Pod, and one that
        // loses a claim does not go on to the Pods next to it, which sessions started near it
        // have likely taken too (as walking one shared order from different places would).
        candidates.sort_by_cached_key(|pod| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            spec.session_id.hash(&mut hasher);
            pod.metadata.name.hash(&mut hasher);
            hasher.finish()
        });
        let mut failed = 0;
        for pod in candidates {
            if failed == MAX_HAND_OVERS {
                break;
            }
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            // A profile's warm Pod is warm once it has polled for its session.
            if let Flavor::Profile { .. } = self.flavor {
                let book = book?;
                if !matches!(book.warm_server_state(&name).await, Ok((true, _))) {
                    continue;
                }
            }
            if !self.claiming.lock().expect("claiming lock").insert(name.clone()) {
                continue;
            }
            let patch = claim_patch(&pod, &spec.session_id, session_deadline_seconds);
            let claim_started = Instant::now();
            let claimed = match pods.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Ok(claimed) => claimed,
                // Gone: the next.
                Err(e) if is_code(&e, 404) => {
                    self.claiming.lock().expect("claiming lock").remove(&name);
                    continue;
                }
                // A conflict is another session's claim (here or on another replica), or this
                // claim's own earlier attempt: the client retries a 504 or 503 by itself, and
                // the API server may have applied the attempt it answered so. Any other failure
                // (a connection cut after the request went out) leaves the outcome open too. The
                // Pod as it is now says whether it is this session's.
                Err(e) => match pods.get_opt(&name).await {
                    Ok(Some(now)) if session_of(&now).as_deref() == Some(spec.session_id.as_str()) => {
                        tracing::info!(pod = %name, error = %e, "a warm pod's claim was applied though its answer was an error; handing it over");
                        now
                    }
                    read => {
                        self.claiming.lock().expect("claiming lock").remove(&name);
                        match read {
                            Ok(_) if is_code(&e, 409) => {
                                tracing::debug!(pod = %name, "a warm pod's claim was lost to another session's; trying the next");
                                continue;
                            }
                            Ok(_) => {
                                tracing::warn!(pod = %name, error = %e, "claiming a warm pod failed; starting the session's pod cold")
                            }
                            Err(read) => {
                                tracing::warn!(pod = %name, error = %e, %read, "claiming a warm pod failed and its outcome could not be read; starting the session's pod cold")
                            }
                        }
                        return None;
                    }
                },
            };
            let addr = match pod_state(&claimed) {
                PodState::Ready(ip) => self.addresses(&ip).ok(),
                _ => None,
            };
            let claim_took = claim_started.elapsed();
            let handed = match (&addr, &self.flavor, book) {
                (None, ..) => Err(anyhow::anyhow!("the claimed pod is no longer ready")),
                (Some((addr, _)), Flavor::Builtin(_), _) => {
                    crate::runtime::warm::hand_over(&self.secret, &name, addr, spec).await
                }
                (Some(_), Flavor::Profile { .. }, Some(book)) => {
                    crate::runtime::warm::hand_over_sdk(book, &name, spec).await
                }
                (Some(_), Flavor::Profile { .. }, None) => Err(anyhow::anyhow!("no sessions to hand over through")),
            };
            match handed.map(|()| addr) {
                Ok(Some((addr, udp_addr))) => {
                    self.books.handed();
                    tracing::info!(
                        session = %spec.session_id,
                        pod = %name,
                        claim_ms = claim_took.as_millis(),
                        hand_over_ms = (claim_started.elapsed() - claim_took).as_millis(),
                        "session handed to a warm pod"
                    );
                    return Some(Claimed { name, addr, udp_addr });
                }
                Ok(None) => unreachable!("handed over only with an address"),
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "a warm pod failed its hand-over; deleting it, trying the next");
                    failed += 1;
                    give_up(pods, &name, backoff).await;
                }
            }
        }
        None
    }
}

/// Whether a warm Pod is close enough to its lifetime to be replaced rather than handed out.
fn retiring(pod: &Pod) -> bool {
    age_seconds(pod) >= WARM_LIFETIME_SECONDS - RETIRE_MARGIN_SECONDS
}

fn age_seconds(pod: &Pod) -> i64 {
    pod.metadata.creation_timestamp.as_ref().map_or(0, |created| {
        (k8s_openapi::jiff::Timestamp::now() - created.0).get_seconds().max(0)
    })
}

/// A claimed warm Pod that did not take its session: without its session label first (so
/// nobody takes its deletion for the session's server going away), then deleted at once.
async fn give_up(pods: &Api<Pod>, name: &str, backoff: Duration) {
    if let Err(e) = pods
        .patch(name, &PatchParams::default(), &Patch::Merge(&unclaim_patch()))
        .await
    {
        tracing::warn!(pod = %name, error = %e, "could not release a failed warm pod's claim");
    }
    delete_pod(pods, name, &DeleteParams::default().grace_period(0), backoff).await;
}

/// The cluster's warm Pods as one look at the watch sees them.
#[derive(Debug, Default)]
struct Census {
    /// Ready, unclaimed, not near their lifetime.
    idle: Vec<Arc<Pod>>,
    /// Not Ready yet.
    starting: usize,
    /// Finished while idle.
    finished: Vec<String>,
    /// Ready and unclaimed, but near their lifetime: to be replaced.
    retire: Vec<Arc<Pod>>,
    /// Every unclaimed warm Pod's name (being deleted or not).
    warm: HashSet<String>,
}

impl Census {
    fn of(pods: &[Arc<Pod>], mine: impl Fn(&Pod) -> bool) -> Census {
        let mut census = Census::default();
        for pod in pods {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            if !is_warm(pod) || session_of(pod).is_some() || !mine(pod) {
                continue;
            }
            census.warm.insert(name.clone());
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match pod_state(pod) {
                PodState::Finished(_) => census.finished.push(name),
                PodState::Ready(_) if retiring(pod) => census.retire.push(pod.clone()),
                PodState::Ready(_) => census.idle.push(pod.clone()),
                PodState::Pending => census.starting += 1,
            }
        }
        census
    }
}

/// What the pool keeper needs.
pub(crate) struct Keeper {
    pub(crate) pods: Api<Pod>,
    pub(crate) watch: PodWatch,
    pub(crate) template: PodTemplate,
    pub(crate) warm: Arc<WarmPods>,
    pub(crate) sessions: Arc<dyn SessionBook>,
}

impl Keeper {
    /// Follows demand on every replica and, while holding the pool lease, keeps the pool at
    /// the size it calls for, until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(POOL_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let creations = Arc::new(Semaphore::new(MAX_WARMING));
        // Pods with a session label already counted as a session started; `None` until the
        // first look (what exists then is not a burst).
        let mut counted: Option<HashSet<String>> = None;
        let mut finished_seen: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if !self.watch.synced() {
                continue;
            }
            let pods = self.watch.pods();
            let now = Instant::now();
            self.follow_demand(&pods, &mut counted, now);
            let mut census = Census::of(&pods, |pod| self.warm.mine(pod));
            let unseen = self.follow_creations(&pods, &census.warm, now);
            self.warm
                .claiming
                .lock()
                .expect("claiming lock")
                .retain(|name| census.idle.iter().any(|p| p.metadata.name.as_deref() == Some(name)));
            let newly_finished: Vec<&String> = census
                .finished
                .iter()
                .filter(|n| finished_seen.insert((*n).clone()))
                .collect();
            for name in &newly_finished {
                tracing::warn!(pod = %name, "a warm pod finished while idle; replacing it");
            }
            self.warm.books.replaced(newly_finished.len());
            finished_seen.retain(|name| census.warm.contains(name));
            let starting = census.starting + unseen;
            // (A version that drains keeps none: its idle warm Pods are deleted.)
            let plan = self.warm.books.plan(census.idle.len(), starting, now, MAX_WARMING);
            match self.sessions.warm_pool_lease(LEASE).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach Redis for the warm pool lease; the pool waits");
                    continue;
                }
            }
            // Finished warm Pods are the reaper's (kept a little for `kubectl logs`); old ones
            // are replaced.
            for pod in &census.retire {
                self.delete_idle(pod);
            }
            let have = census.idle.len() + starting;
            if have < plan.target {
                self.create((plan.target - have).min(creations.available_permits()), &creations);
            } else if census.idle.len() > plan.target {
                // The surplus, newest first (the oldest are the ones to hand out first).
                let idle = &mut census.idle;
                idle.sort_by(|a, b| b.metadata.creation_timestamp.cmp(&a.metadata.creation_timestamp));
                for pod in idle.iter().take(idle.len() - plan.target) {
                    self.delete_idle(pod);
                }
            }
        }
    }

    /// Pods created but not in the watch yet are starting too; a created Pod's first Ready is
    /// its cold start. Answers how many this replica created that its watch has not seen.
    fn follow_creations(&self, pods: &[Arc<Pod>], warm: &HashSet<String>, now: Instant) -> usize {
        let mut creating = self.warm.creating.lock().expect("creating lock");
        for pod in pods {
            let Some(name) = pod.metadata.name.as_ref() else {
                continue;
            };
            let Some((created, seen)) = creating.get_mut(name) else {
                continue;
            };
            *seen = true;
            match pod_state(pod) {
                PodState::Ready(_) => {
                    let took = now.duration_since(*created);
                    creating.remove(name);
                    self.warm.books.started(took);
                }
                PodState::Finished(_) => {
                    creating.remove(name);
                }
                PodState::Pending => {}
            }
        }
        // Seen and gone before Ready, or never seen at all after a minute: forgotten.
        creating.retain(|name, (created, seen)| {
            (warm.contains(name) || !*seen) && now.duration_since(*created) < Duration::from_secs(60)
        });
        creating.values().filter(|(_, seen)| !*seen).count()
    }

    /// Creates `n` warm Pods, each under a permit of `creations`.
    fn create(&self, n: usize, creations: &Arc<Semaphore>) {
        for _ in 0..n {
            let Ok(permit) = creations.clone().try_acquire_owned() else {
                break;
            };
            let name = warm_pod_name();
            let pod = self.warm.render(&self.template, &name);
            self.warm
                .creating
                .lock()
                .expect("creating lock")
                .insert(name.clone(), (Instant::now(), false));
            let (pods, warm) = (self.pods.clone(), self.warm.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match pods.create(&PostParams::default(), &pod).await {
                    // The name is new to this create: a conflict is the client's own
                    // retry (of a 504 or 503) meeting the Pod its first attempt made.
                    Ok(_) => {}
                    Err(e) if is_code(&e, 409) => {}
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %e, "creating a warm pod failed");
                        warm.creating.lock().expect("creating lock").remove(&name);
                    }
                }
            });
        }
    }

    /// Counts each Pod that gained a session label since the last look as a session given a
    /// server now.
    fn follow_demand(&self, pods: &[Arc<Pod>], counted: &mut Option<HashSet<String>>, now: Instant) {
        let with_session: HashSet<String> = pods
            .iter()
            .filter(|pod| session_of(pod).is_some() && self.warm.mine(pod))
            .filter_map(|pod| pod.metadata.name.clone())
            .collect();
        if let Some(before) = counted.as_ref() {
            for _ in with_session.difference(before) {
                self.warm.books.session_started(now);
            }
        }
        *counted = Some(with_session);
    }

    /// Deletes an idle warm Pod under the resource version seen: if a session claimed it
    /// meanwhile, the delete conflicts and the Pod stays.
    fn delete_idle(&self, pod: &Pod) {
        let (Some(name), Some(version)) = (pod.metadata.name.clone(), pod.metadata.resource_version.clone()) else {
            return;
        };
        let pods = self.pods.clone();
        tokio::spawn(async move {
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: Some(version),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match pods.delete(&name, &params).await {
                Ok(_) => tracing::debug!(pod = %name, "deleted a warm pod no longer needed"),
                Err(e) if is_code(&e, 409) || is_code(&e, 404) => {}
                Err(e) => tracing::warn!(pod = %name, error = %e, "deleting a warm pod failed"),
            }
        });
    }
}
