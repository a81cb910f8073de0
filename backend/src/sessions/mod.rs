//! The sessions service: the one owner of every step of a session's life that writes state
//! once it is formed (forming is the matchmaking service's).
//!
//! Marking ready and ending go through [`Sessions`], whoever asks (a supervisor task, the API,
//! the janitor, a runtime reporting a lost server). Each step is
//! one atomic store script, then the same follow-up every time: the metric, the log line, and,
//! for an end, stopping the session's server if this replica supervises it. Whether an end
//! requeues the players is decided in one place too: the end script requeues exactly the
//! sessions that fail while still `allocating` (their server never became ready).

pub(crate) mod events;
pub(crate) mod janitor;
pub(crate) mod metrics;
pub(crate) mod supervisor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use protocol::api::{EndReason, ResultReport};
use protocol::sessions::SessionRecord;
use service::backoff::Policy;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use matchmaking_core::store::{
    EndOutcome, FormedSession, LiveSession, ReadyOutcome, ServerRoute, ServerSignal, Store, now_ms,
};
use protocol::sessions::SessionState;

use self::metrics::SessionsMetrics;

/// How long a step that must not be lost (an end, a ready mark) keeps retrying Redis.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// How often a start waiting for a `ready: sdk` server looks in Redis for a ready call that
/// reached another replica (one reaching this replica wakes it at once).
const SDK_READY_POLL: Duration = Duration::from_millis(200);

/// Retries of a session step's Redis script (marking ready, ending).
pub(crate) const REDIS_STEP: Policy = Policy::new("session_step", Duration::from_millis(100), Duration::from_secs(2));

/// The sessions service. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    metrics: Arc<SessionsMetrics>,
    instance: String,
    /// Sessions this replica supervises, each with the token that stops its server and what
    /// wakes it when one of its players leaves.
    supervised: Mutex<HashMap<String, Watch>>,
    /// Waits on this replica for what a server says through the SDK (a session's ready call,
    /// a warm server's session), woken at once when it reaches this replica (on another it is
    /// seen in Redis).
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

/// What the supervisor of one session is told from its events.
#[derive(Clone)]
struct Watch {
    stop: CancellationToken,
    left: Arc<Notify>,
}

/// This replica's charge of one session: holds the token that stops its server, and gives the
/// session up when dropped.
pub(crate) struct Supervision {
    sessions: Sessions,
    session_id: String,
    watch: Watch,
}

impl Supervision {
    /// Cancelled when the session ends anywhere: its server must go.
    pub(crate) fn stopped(&self) -> &CancellationToken {
        &self.watch.stop
    }

    /// Notified when one of its players closes its last connection (as the proxy saw it); a
    /// leave while nobody waits is kept for the next wait.
    pub(crate) fn left(&self) -> &Notify {
        &self.watch.left
    }
}

impl Drop for Supervision {
    fn drop(&mut self) {
        self.sessions.inner.supervised.lock().unwrap().remove(&self.session_id);
    }
}

impl Sessions {
    pub(crate) fn new(store: Store, metrics: Arc<SessionsMetrics>, instance: &str) -> Sessions {
        Sessions {
            inner: Arc::new(Inner {
                store,
                metrics,
                instance: instance.to_owned(),
                supervised: Mutex::new(HashMap::new()),
                waiters: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A service for tests and tools, with metrics of its own.
    pub fn standalone(store: Store, instance: &str) -> Sessions {
        Sessions::new(store, Arc::new(SessionsMetrics::default()), instance)
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// This replica's instance id.
    pub(crate) fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Takes charge of a session: until the returned guard is dropped, an end anywhere
    /// cancels its [`Supervision::stopped`] token.
    pub(crate) fn supervise(&self, session_id: &str) -> Supervision {
        let watch = Watch {
            stop: CancellationToken::new(),
            left: Arc::new(Notify::new()),
        };
        self.inner
            .supervised
            .lock()
            .unwrap()
            .insert(session_id.to_owned(), watch.clone());
        Supervision {
            sessions: self.clone(),
            session_id: session_id.to_owned(),
            watch,
        }
    }

    /// Sessions this replica supervises now.
    pub(crate) fn supervised(&self) -> usize {
        self.inner.supervised.lock().unwrap().len()
    }

    /// The sessions this replica supervises now.
    pub(crate) fn supervised_ids(&self) -> Vec<String> {
        self.inner.supervised.lock().unwrap().keys().cloned().collect()
    }

    /// Whether this replica supervises `sid`.
    pub(crate) fn supervises(&self, sid: &str) -> bool {
        self.inner.supervised.lock().unwrap().contains_key(sid)
    }

    /// Marks a formed session's server ready (players then get tickets), retrying Redis for a
    /// while; `None` when Redis stayed down.
    pub(crate) async fn mark_ready(&self, formed: &FormedSession, route: &ServerRoute<'_>) -> Option<ReadyOutcome> {
        let sid = formed.session_id.as_str();
        let (server, addr) = (route.server, route.addr);
        let outcome = retry(|| self.inner.store.mark_ready_at(sid, route, now_ms())).await?;
        if outcome == ReadyOutcome::Ready {
            let now = now_ms();
            for joined in &formed.joined_ms {
                let waited = Duration::from_millis(u64::try_from(now - joined).unwrap_or(0));
                self.inner.metrics.join_to_matched(&formed.queue, waited);
            }
            tracing::info!(session = sid, server, addr, "server ready; players matched");
        }
        Some(outcome)
    }

    /// Ends a session (the first end wins), with a result report when the game server sent
    /// one. When this call is the one that ended it: counts it, logs it, and stops its server
    /// if this replica supervises it (other replicas learn it from the events channel).
    pub async fn end(
        &self,
        sid: &str,
        reason: EndReason,
        report: Option<&ResultReport>,
    ) -> matchmaking_core::store::Result<EndOutcome> {
        // Strings, numbers and timestamps: encoding cannot fail.
        let report = report.map(|r| serde_json::to_string(r).expect("a result report encodes"));
        let outcome = self
            .inner
            .store
            .end_session(sid, reason, now_ms(), report.as_deref())
            .await?;
        if let EndOutcome::Ended { requeued, reason } = outcome {
            self.inner.metrics.session_ended(reason);
            tracing::info!(session = sid, %reason, requeued, "session ended");
        }
        if !matches!(outcome, EndOutcome::Unknown) {
            self.ended_elsewhere(sid);
        }
        Ok(outcome)
    }

    /// [`Sessions::end`], retrying Redis for a while; `None` when it stayed down (then the
    /// janitor of some replica finishes the job).
    pub(crate) async fn end_with_retry(&self, sid: &str, reason: EndReason) -> Option<EndOutcome> {
        retry(|| self.end(sid, reason, None)).await
    }

    /// A runtime saw a session's server go away (a Pod that finished or vanished): the session
    /// fails, and its players are requeued if it was still allocating.
    pub async fn server_lost(&self, sid: &str, why: &str) -> matchmaking_core::store::Result<EndOutcome> {
        tracing::warn!(session = sid, why, "the session's server is gone");
        let outcome = self.end(sid, EndReason::Failed, None).await?;
        if matches!(outcome, EndOutcome::Ended { .. }) {
            self.record_failure(sid, why).await;
        }
        Ok(outcome)
    }

    /// The region a session's server runs in is down: the session fails and its players go
    /// back to the head of their queue, even if it was running.
    pub async fn region_lost(&self, sid: &str, why: &str) -> matchmaking_core::store::Result<EndOutcome> {
        let outcome = self.inner.store.fail_requeueing(sid, now_ms()).await?;
        if let EndOutcome::Ended { requeued, reason } = outcome {
            self.inner.metrics.session_ended(reason);
            tracing::warn!(session = sid, why, requeued, "session failed: its region is down");
            self.record_failure(sid, why).await;
        }
        if !matches!(outcome, EndOutcome::Unknown) {
            self.ended_elsewhere(sid);
        }
        Ok(outcome)
    }

    /// Fails a session (its players go back to the head of their queue if it was still
    /// allocating), retrying Redis for a while, and keeps `detail` (what failed) for operators
    /// when this call is the one that ended it.
    pub(crate) async fn fail(&self, sid: &str, detail: &str) -> Option<EndOutcome> {
        let outcome = self.end_with_retry(sid, EndReason::Failed).await;
        if matches!(outcome, Some(EndOutcome::Ended { .. })) {
            self.record_failure(sid, detail).await;
        }
        outcome
    }

    /// Keeps a failure for operators (`GET /operator/failures`); best effort.
    async fn record_failure(&self, sid: &str, detail: &str) {
        let failure = protocol::operators::Failure {
            session_id: sid.to_owned(),
            at: crate::history::from_ms(now_ms()),
            reason: EndReason::Failed,
            detail: detail.to_owned(),
            instance: self.inner.instance.clone(),
        };
        // Strings and a timestamp: encoding cannot fail.
        let json = serde_json::to_string(&failure).expect("a failure encodes");
        if let Err(e) = self.inner.store.record_failure(&json).await {
            tracing::debug!(session = sid, error = %e, "could not keep the failure for operators");
        }
    }

    /// The session ended (here or on another replica): stop its server if it is ours.
    pub(crate) fn ended_elsewhere(&self, sid: &str) {
        if let Some(watch) = self.inner.supervised.lock().unwrap().get(sid) {
            watch.stop.cancel();
        }
    }

    /// A player of session `sid` left (its `left` event): wakes its supervisor here, if any.
    pub(crate) fn player_left(&self, sid: &str) {
        if let Some(watch) = self.inner.supervised.lock().unwrap().get(sid) {
            watch.left.notify_one();
        }
    }

    /// Session `sid`'s server made SDK call `signal`: kept unless the session is over, and a
    /// start on this replica waiting for it is woken. The session's state, `None` if unknown.
    pub async fn server_signal(
        &self,
        sid: &str,
        signal: ServerSignal,
    ) -> matchmaking_core::store::Result<Option<SessionState>> {
        let Some(record) = self.inner.store.session(sid).await? else {
            return Ok(None);
        };
        if record.state != SessionState::Ended {
            self.inner.store.record_server_signal(sid, signal, now_ms()).await?;
            if signal == ServerSignal::Ready {
                self.wake(&format!("ready:{sid}"));
            }
        }
        Ok(Some(record.state))
    }

    /// What a runtime waits on for session `sid`'s `ready: sdk` server: resolves once the
    /// server has called ready, on any replica. Redis errors only delay it (the ready timeout
    /// bounds the wait).
    pub(crate) fn sdk_ready(&self, sid: &str) -> crate::runtime::SdkReady {
        let sessions = self.clone();
        let sid = sid.to_owned();
        crate::runtime::SdkReady::new(move || {
            let sessions = sessions.clone();
            let sid = sid.clone();
            Box::pin(async move { sessions.wait_ready(&sid).await })
        })
    }

    async fn wait_ready(&self, sid: &str) {
        self.wait_for(&format!("ready:{sid}"), None, || async {
            matches!(
                self.inner.store.server_signal(sid, ServerSignal::Ready).await,
                Ok(Some(_))
            )
        })
        .await;
    }

    /// Waits until `check` is true: checked at once, whenever `key` is woken on this replica,
    /// and every [`SDK_READY_POLL`] for what happens on others; until `deadline`, if any.
    /// Whether `check` came true.
    async fn wait_for<F, Fut>(&self, key: &str, deadline: Option<Instant>, mut check: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        /// Forgets the waiter however the wait ends (done, timed out, or dropped).
        struct Waiting<'a>(&'a Sessions, &'a str);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.inner.waiters.lock().unwrap().remove(self.1);
            }
        }
        let notify = Arc::new(Notify::new());
        self.inner
            .waiters
            .lock()
            .unwrap()
            .insert(key.to_owned(), notify.clone());
        let _waiting = Waiting(self, key);
        loop {
            if check().await {
                return true;
            }
            let nap = tokio::time::sleep(SDK_READY_POLL);
            let until = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = notify.notified() => {}
                () = nap => {}
                () = until => return false,
            }
        }
    }

    /// Wakes a wait for `key` on this replica, if there is one.
    fn wake(&self, key: &str) {
        if let Some(waiter) = self.inner.waiters.lock().unwrap().get(key) {
            waiter.notify_one();
        }
    }

    /// Warm server `id`'s poll for its session: the session once one is offered to it (on any
    /// replica), or `None` after `wait`. Each poll says the server is waiting.
    pub async fn warm_poll(
        &self,
        id: &str,
        wait: Duration,
    ) -> matchmaking_core::store::Result<Option<protocol::api::WarmSession>> {
        let deadline = Instant::now() + wait;
        let found: Mutex<matchmaking_core::store::Result<Option<String>>> = Mutex::new(Ok(None));
        self.wait_for(&format!("warm:{id}"), Some(deadline), || async {
            let polled = self.inner.store.warm_poll(id, now_ms()).await;
            let done = !matches!(polled, Ok(None));
            *found.lock().unwrap() = polled;
            done
        })
        .await;
        let Some(raw) = found.into_inner().unwrap()? else {
            return Ok(None);
        };
        // Written by `offer_warm` from a typed value: it decodes, or the hash was tampered with.
        Ok(serde_json::from_str(&raw).ok())
    }

    /// Offers `session` to warm server `id`: whether it was offered (the server was polling
    /// and had none). A poll of the server's waiting on this replica is woken at once.
    pub async fn offer_warm(
        &self,
        id: &str,
        session: &protocol::api::WarmSession,
    ) -> matchmaking_core::store::Result<bool> {
        let raw = serde_json::to_string(session).expect("a warm session encodes");
        let offered = self.inner.store.warm_offer(id, &raw).await?;
        if offered {
            self.wake(&format!("warm:{id}"));
        }
        Ok(offered)
    }

    /// One session's record, if Redis still holds it.
    pub async fn record(&self, sid: &str) -> matchmaking_core::store::Result<Option<SessionRecord>> {
        self.inner.store.session(sid).await
    }

    /// Every session not yet ended.
    pub async fn live(&self) -> matchmaking_core::store::Result<Vec<LiveSession>> {
        self.inner.store.live_sessions().await
    }
}

/// Runs a Redis step, retrying with backoff for up to [`RETRY_FOR`]; `None` if Redis stayed
/// down.
async fn retry<T, F, Fut>(mut step: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = matchmaking_core::store::Result<T>>,
{
    let mut backoff = REDIS_STEP.start();
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match step().await {
            Ok(value) => return Some(value),
            Err(e) if Instant::now() < deadline => backoff.sleep(&e).await,
            Err(e) => {
                tracing::error!(error = %e, "Redis step failed for good; the janitor will finish the job");
                return None;
            }
        }
    }
}

/// The sessions service is what runtimes read and report to: the seam keeps the runtimes from
/// the store and from the rest of the service.
impl crate::runtime::SessionBook for Sessions {
    fn instance(&self) -> &str {
        &self.inner.instance
    }

    fn live(&self) -> BoxFuture<'_, matchmaking_core::store::Result<Vec<LiveSession>>> {
        Box::pin(Sessions::live(self))
    }

    fn record<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<Option<SessionRecord>>> {
        Box::pin(Sessions::record(self, session_id))
    }

    fn server_lost<'a>(
        &'a self,
        session_id: &'a str,
        why: &'a str,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<()>> {
        Box::pin(async move { Sessions::server_lost(self, session_id, why).await.map(drop) })
    }

    fn region_lost<'a>(
        &'a self,
        session_id: &'a str,
        why: &'a str,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<()>> {
        Box::pin(async move { Sessions::region_lost(self, session_id, why).await.map(drop) })
    }

    fn server_completed<'a>(
        &'a self,
        session_id: &'a str,
        why: &'a str,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<()>> {
        Box::pin(async move {
            tracing::info!(session = session_id, why, "the session's server exited by itself");
            self.end(session_id, EndReason::Completed, None).await.map(drop)
        })
    }

    fn warm_pool_lease(&self, ttl: Duration) -> BoxFuture<'_, matchmaking_core::store::Result<bool>> {
        Box::pin(self.inner.store.warm_pool_lease(&self.inner.instance, ttl))
    }

    fn warm_server_state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, matchmaking_core::store::Result<(bool, bool)>> {
        Box::pin(self.inner.store.warm_server_state(id))
    }

    fn offer_warm<'a>(
        &'a self,
        id: &'a str,
        session: &'a protocol::api::WarmSession,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<bool>> {
        Box::pin(Sessions::offer_warm(self, id, session))
    }
}
