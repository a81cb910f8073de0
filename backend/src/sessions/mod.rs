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
    /// Sessions this replica supervises, each with the token that stops its server.
    supervised: Mutex<HashMap<String, CancellationToken>>,
    /// Starts on this replica waiting for their server's SDK ready call, woken at once when
    /// the call reaches this replica (a call to another replica is seen in Redis).
    ready_waiters: Mutex<HashMap<String, Arc<Notify>>>,
}

/// This replica's charge of one session: holds the token that stops its server, and gives the
/// session up when dropped.
pub(crate) struct Supervision {
    sessions: Sessions,
    session_id: String,
    stop: CancellationToken,
}

impl Supervision {
    /// Cancelled when the session ends anywhere: its server must go.
    pub(crate) fn stopped(&self) -> &CancellationToken {
        &self.stop
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
                ready_waiters: Mutex::new(HashMap::new()),
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
        let stop = CancellationToken::new();
        self.inner
            .supervised
            .lock()
            .unwrap()
            .insert(session_id.to_owned(), stop.clone());
        Supervision {
            sessions: self.clone(),
            session_id: session_id.to_owned(),
            stop,
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
        self.end(sid, EndReason::Failed, None).await
    }

    /// The session ended (here or on another replica): stop its server if it is ours.
    pub(crate) fn ended_elsewhere(&self, sid: &str) {
        if let Some(stop) = self.inner.supervised.lock().unwrap().get(sid) {
            stop.cancel();
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
            if signal == ServerSignal::Ready
                && let Some(waiter) = self.inner.ready_waiters.lock().unwrap().get(sid)
            {
                waiter.notify_one();
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
        /// Forgets the waiter however the wait ends (ready, or dropped at the timeout).
        struct Waiting<'a>(&'a Sessions, &'a str);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.inner.ready_waiters.lock().unwrap().remove(self.1);
            }
        }
        let notify = Arc::new(Notify::new());
        self.inner
            .ready_waiters
            .lock()
            .unwrap()
            .insert(sid.to_owned(), notify.clone());
        let _waiting = Waiting(self, sid);
        loop {
            if let Ok(Some(_)) = self.inner.store.server_signal(sid, ServerSignal::Ready).await {
                return;
            }
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(SDK_READY_POLL) => {}
            }
        }
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

    fn warm_pool_lease(&self, ttl: Duration) -> BoxFuture<'_, matchmaking_core::store::Result<bool>> {
        Box::pin(self.inner.store.warm_pool_lease(&self.inner.instance, ttl))
    }
}
