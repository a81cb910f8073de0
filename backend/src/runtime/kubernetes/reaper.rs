//! Pods that outlive the replica that created them: the reaper, which every replica runs off
//! its Pod watch, and reconcile at start.

use service::backoff::Policy;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use protocol::sessions::SessionState;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

use super::delete_pod;
use super::pod::{PodState, is_warm, label_selector, pod_state, profile_of, session_of};
use super::watch::{Change, PodWatch};
use crate::runtime::SessionBook;
use matchmaking_core::store::now_ms;

/// At start: deletes game-server Pods whose session is not live, and reports live sessions
/// older than `min_age` that have no Pod as lost. Returns (pods deleted, sessions failed).
pub async fn reconcile(
    pods: &Api<Pod>,
    sessions: &dyn SessionBook,
    min_age: Duration,
) -> anyhow::Result<(usize, usize)> {
    let listed = pods.list(&ListParams::default().labels(&label_selector())).await?;
    let live = sessions.live().await?;
    let live_ids: HashSet<&str> = live.iter().map(|s| s.session_id.as_str()).collect();
    let mut with_pod = HashSet::new();
    let mut deleted = 0;
    for pod in &listed.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Unclaimed warm Pods are the pool's (the reaper removes them if the pool is off).
        if is_warm(pod) && session_of(pod).is_none() {
            continue;
        }
        match session_of(pod) {
            Some(sid) if live_ids.contains(sid.as_str()) => {
                with_pod.insert(sid);
            }
            _ => {
                tracing::warn!(pod = %name, "deleting a game-server pod without a live session");
                if delete_pod(pods, &name, &DeleteParams::default(), Duration::from_millis(200)).await {
                    deleted += 1;
                }
            }
        }
    }
    let now = now_ms();
    let min_age_ms = millis(min_age);
    let mut failed = 0;
    for session in live.iter().filter(|s| !with_pod.contains(&s.session_id)) {
        if now - session.record.created_ms < min_age_ms {
            continue;
        }
        sessions.server_lost(&session.session_id, "no pod at start").await?;
        failed += 1;
    }
    Ok((deleted, failed))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Where a Pod's session stands, as its record says.
enum Standing {
    /// Not ended; `serves`: this Pod is its server (or it has none yet).
    Live { serves: bool },
    /// Ended; `reported_by`: this Pod was its server and reported its result, so it is
    /// exiting by itself.
    Ended { reported_by: bool },
    /// Redis does not know it.
    Unknown,
}

impl Standing {
    /// Whether the session is live, and whether it is live with this Pod as its server.
    fn serves_live(&self) -> (bool, bool) {
        match self {
            Standing::Live { serves } => (true, *serves),
            _ => (false, false),
        }
    }

    fn reported_by_it(&self) -> bool {
        matches!(self, Standing::Ended { reported_by: true })
    }
}

/// How often matched sessions are checked against the Pods the watch holds (besides after
/// every relist): a Pod deleted while no replica watched is noticed within this plus
/// `min_age`.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// Acts on every change the Pod watch sees: a Pod that finished, or vanished, while its
/// session is live is reported to the sessions service (which ends the session; a no-op after
/// a report or another end); finished Pods are deleted after `grace`, running Pods whose
/// session is over or unknown, or plays on another Pod, at once. After each (re)list and every
/// few seconds, matched sessions with no Pod left are reported too, and Pods that are not
/// their session's server are found. Idempotent, so every replica runs it; a Pod kept before
/// its deletion is deleted by the replica that formed its session, the others standing by (see
/// [`Reaper::reap`]).
pub(crate) struct Reaper {
    pub pods: Api<Pod>,
    pub watch: PodWatch,
    pub sessions: Arc<dyn SessionBook>,
    pub grace: Duration,
    pub min_age: Duration,
    /// Whether this replica keeps warm Pods; without a pool, unclaimed warm Pods are deleted.
    pub warm_pool: bool,
    /// The profiles whose sessions end when their server exits: a Pod of one that Succeeded
    /// completed its session (its supervisor, when alive, ends it the same way).
    pub ends_by_exit: HashSet<String>,
}

/// How much longer than its keep a replica that did not form a Pod's session waits before
/// deleting it, and the most it adds at random to that (see [`Reaper::reap`]).
const BACKUP_WAIT: Duration = Duration::from_secs(3);
const REAP_SPREAD: Duration = Duration::from_millis(500);

/// Retries of acting on a Pod change (reading or ending its session): a change is retried
/// until Redis answers, so it is never missed.
pub(crate) const REAPER: Policy = Policy::new("kubernetes_reaper", Duration::from_millis(200), Duration::from_secs(10));

impl Reaper {
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut changes = self.watch.changes();
        let deleting = Arc::new(Mutex::new(HashSet::<String>::new()));
        let mut backoff = REAPER.start();
        let mut resync = tokio::time::interval(RESYNC_EVERY);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let change = tokio::select! {
                () = stop.cancelled() => return,
                change = changes.recv() => match change {
                    Some(change) => change,
                    None => return,
                },
                _ = resync.tick() => {
                    if !self.watch.synced() {
                        continue;
                    }
                    Change::Resynced
                }
            };
            // A change is retried (after a pause) until Redis answers: it is not seen twice.
            loop {
                match self.act(&change, &deleting).await {
                    Ok(()) => {
                        backoff.reset();
                        break;
                    }
                    Err(e) => {
                        if !backoff.pause(&e, &stop).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    async fn act(
        &self,
        change: &Change,
        deleting: &Arc<Mutex<HashSet<String>>>,
    ) -> matchmaking_core::store::Result<()> {
        match change {
            Change::Pod(name) => match self.watch.get(name) {
                Some(pod) => self.pod_changed(&pod, deleting).await,
                None => Ok(()),
            },
            Change::Deleted {
                name,
                session: Some(sid),
            } => {
                deleting.lock().unwrap().remove(name);
                if self.serves_live(sid, name).await?.1 {
                    self.sessions
                        .server_lost(sid, &format!("pod {name} deleted before its server reported"))
                        .await?;
                }
                Ok(())
            }
            Change::Deleted { name, session: None } => {
                deleting.lock().unwrap().remove(name);
                Ok(())
            }
            Change::Resynced => self.resync(deleting).await,
        }
    }

    /// Whether `sid` is live, and whether it is live with the Pod `name` as its server. A
    /// session's server is the Pod its record names once it is matched; before that, any Pod
    /// with its label. Another Pod with the label is not its server: a warm Pod whose claim
    /// was applied though the replica could not learn so, while the session started cold.
    /// That Pod going away must not fail the session playing elsewhere.
    async fn serves_live(&self, sid: &str, name: &str) -> matchmaking_core::store::Result<(bool, bool)> {
        Ok(self.standing(sid, name).await?.0.serves_live())
    }

    /// Where session `sid` stands for its Pod `name`, and whether this replica formed it (and
    /// so deletes its Pods first, see [`Reaper::reap`]).
    async fn standing(&self, sid: &str, name: &str) -> matchmaking_core::store::Result<(Standing, bool)> {
        Ok(match self.sessions.record(sid).await? {
            Some(record) => {
                let ours = record.instance == self.sessions.instance();
                let standing = if record.state == SessionState::Ended {
                    Standing::Ended {
                        reported_by: record.reported && record.server.as_deref() == Some(name),
                    }
                } else {
                    Standing::Live {
                        serves: record.server.as_deref().is_none_or(|server| server == name),
                    }
                };
                (standing, ours)
            }
            None => (Standing::Unknown, false),
        })
    }

    async fn pod_changed(
        &self,
        pod: &Pod,
        deleting: &Arc<Mutex<HashSet<String>>>,
    ) -> matchmaking_core::store::Result<()> {
        let Some(name) = pod.metadata.name.clone() else {
            return Ok(());
        };
        let Some(sid) = session_of(pod) else {
            self.sessionless(pod, name, deleting);
            return Ok(());
        };
        // Already being deleted (by us, an operator or the kubelet's deadline): its end
        // arrives as a later event, and deleting it again would do nothing.
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let finished = match pod_state(pod) {
            PodState::Finished(why) => Some(why),
            _ => None,
        };
        if terminating && finished.is_none() {
            return Ok(());
        }
        let (standing, ours) = self.standing(&sid, &name).await?;
        let (_, serves) = standing.serves_live();
        if let Some(why) = &finished
            && serves
        {
            if why == "Succeeded" && profile_of(pod).is_some_and(|p| self.ends_by_exit.contains(p)) {
                self.sessions
                    .server_completed(&sid, &format!("pod {name} exited with status 0"))
                    .await?;
            } else {
                self.sessions
                    .server_lost(&sid, &format!("pod {name} finished without a report: {why}"))
                    .await?;
            }
        }
        // Not its session's server: the session is over (or unknown), or it plays on the
        // Pod its record names, and this one (a stray) would wait for a hand-over that never
        // comes.
        let finished = finished.is_some();
        if (finished || !serves) && !terminating {
            self.reap(name, self.keep(finished || standing.reported_by_it()), ours, deleting);
        }
        Ok(())
    }

    /// How long a session's Pod is kept before it is deleted: a running one (its session
    /// over) is told to drain now; a finished one, or one whose server reported its result
    /// and is exiting by itself, is kept a little for `kubectl logs`.
    fn keep(&self, finished_or_finishing: bool) -> Duration {
        if finished_or_finishing {
            self.grace
        } else {
            Duration::ZERO
        }
    }

    /// Deletes a Pod after `wait`, once: not again while that delete is under way, nor once
    /// the API server took it, until the watch shows the Pod gone (its deletion, or a relist
    /// without it). A change the watch saw before the deletion must not send a second one.
    ///
    /// Every replica reaps, so a Pod kept for `wait` would be deleted by each of them at the
    /// same moment. The replica that formed its session (`first`) deletes it after `wait`; the
    /// others wait [`BACKUP_WAIT`] more (and a random share of [`REAP_SPREAD`], so that among
    /// themselves one goes first), and leave it alone if the watch by then shows it deleted or
    /// being deleted. One delete per Pod instead of one per replica, and a Pod whose session's
    /// replica is gone is still deleted, a little later.
    fn reap(&self, name: String, wait: Duration, first: bool, deleting: &Arc<Mutex<HashSet<String>>>) {
        if !deleting.lock().unwrap().insert(name.clone()) {
            return;
        }
        let (pods, watch, deleting) = (self.pods.clone(), self.watch.clone(), deleting.clone());
        tokio::spawn(async move {
            if !wait.is_zero() {
                let after = if first {
                    wait
                } else {
                    wait + BACKUP_WAIT + REAP_SPREAD.mul_f64(fastrand::f64())
                };
                sleep(after).await;
                match watch.get(&name) {
                    // Gone (or the watch relists: a Pod still there shows up as a change again).
                    None => {
                        deleting.lock().unwrap().remove(&name);
                        return;
                    }
                    // Being deleted: its deletion shows up as its end.
                    Some(pod) if pod.metadata.deletion_timestamp.is_some() => return,
                    Some(_) => {}
                }
            }
            if !delete_pod(&pods, &name, &DeleteParams::default(), Duration::from_millis(200)).await {
                deleting.lock().unwrap().remove(&name);
            }
        });
    }

    /// A Pod without a session: a finished warm Pod is kept for `grace` (for `kubectl logs`)
    /// and deleted; an idle warm Pod is left to the pool, or deleted when this replica keeps no
    /// pool; a Pod that is neither (a warm Pod given up after a failed hand-over whose deletion
    /// did not happen) is deleted.
    fn sessionless(&self, pod: &Pod, name: String, deleting: &Arc<Mutex<HashSet<String>>>) {
        if pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        let finished = matches!(pod_state(pod), PodState::Finished(_));
        let wait = match (is_warm(pod), finished) {
            (true, true) => self.grace,
            (true, false) if self.warm_pool => return,
            _ => Duration::ZERO,
        };
        // A warm Pod is nobody's session's: every replica waits its share.
        self.reap(name, wait, false, deleting);
    }

    /// After a (re)list: a matched session whose Pod is not there lost its server while the
    /// watch was down (or before this replica started). And a Pod that is not its session's
    /// server is reaped as a change to it would have it: its session is known to have ended,
    /// or plays on the Pod its record names. Such a Pod (a stray warm Pod with the session's
    /// label) is stopped by nobody else, and changes by itself only at its deadline. A Pod
    /// whose session Redis does not know is left to its own end.
    async fn resync(&self, deleting: &Arc<Mutex<HashSet<String>>>) -> matchmaking_core::store::Result<()> {
        // The Pods before the sessions: a Pod's session was written before the Pod was made,
        // so a Pod seen here whose session is not in the later list has really ended.
        let pods = self.watch.pods();
        let names: HashSet<&str> = pods.iter().filter_map(|pod| pod.metadata.name.as_deref()).collect();
        // Deletions the watch can no longer show (it missed them while it relisted).
        deleting.lock().unwrap().retain(|name| names.contains(name.as_str()));
        let with_pod: HashSet<String> = pods.iter().filter_map(|pod| session_of(pod)).collect();
        let old_enough = now_ms() - millis(self.min_age);
        let live = self.sessions.live().await?;
        let servers: HashMap<&str, (Option<&str>, bool)> = live
            .iter()
            .map(|s| {
                let ours = s.record.instance == self.sessions.instance();
                (s.session_id.as_str(), (s.record.server.as_deref(), ours))
            })
            .collect();
        for pod in &pods {
            let (Some(name), Some(sid)) = (pod.metadata.name.as_deref(), session_of(pod)) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() || deleting.lock().unwrap().contains(name) {
                continue;
            }
            let (stray, reported, ours) = match servers.get(sid.as_str()) {
                Some((server, ours)) => (server.is_some_and(|server| server != name), false, *ours),
                None => match self.standing(&sid, name).await? {
                    (ended @ Standing::Ended { .. }, ours) => (true, ended.reported_by_it(), ours),
                    _ => (false, false, false),
                },
            };
            if stray {
                let finished = matches!(pod_state(pod), PodState::Finished(_));
                self.reap(name.to_owned(), self.keep(finished || reported), ours, deleting);
            }
        }
        for live in &live {
            let record = &live.record;
            // The Pod its record names, when it names one (see `serves_live`).
            let has_pod = match &record.server {
                Some(server) => names.contains(server.as_str()),
                None => with_pod.contains(&live.session_id),
            };
            if record.state == SessionState::Matched
                && record.ready_ms.is_some_and(|ready| ready < old_enough)
                && !has_pod
            {
                self.sessions
                    .server_lost(&live.session_id, "its pod is gone (found on a relist)")
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_reaper_backs_off_doubling_to_ten_seconds() {
        let mut backoff = super::REAPER.start();
        let steps = [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000];
        for step in steps {
            let wait = backoff.retry(&"Redis is down").as_millis();
            assert!((step / 2..=step).contains(&wait), "{wait} ms for a {step} ms step");
        }
    }
}
