//! The sessions service: the one owner of every step of a session's life that writes state.
//!
//! Forming, marking ready and ending all go through [`Sessions`], whoever asks (the matcher,
//! a supervisor task, the API, the janitor, a runtime reporting a lost server). Each step is
//! one atomic store script, then the same follow-up every time: the metric, the log line, and,
//! for an end, stopping the session's server if this replica supervises it. Whether an end
//! requeues the players is decided in one place too: the end script requeues exactly the
//! sessions that fail while still `allocating` (their server never became ready).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::api::{EndReason, ResultReport};
use protocol::sessions::SessionRecord;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::{EndOutcome, FormRules, FormedSession, LiveSession, ReadyOutcome, Store, now_ms};

/// How long a step that must not be lost (an end, a ready mark) keeps retrying Redis.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// The sessions service. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    metrics: Arc<Metrics>,
    instance: String,
    rules: FormRules,
    /// Sessions this replica supervises, each with the token that stops its server.
    supervised: Mutex<HashMap<String, CancellationToken>>,
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
    pub(crate) fn new(store: Store, metrics: Arc<Metrics>, instance: &str, rules: FormRules) -> Sessions {
        Sessions {
            inner: Arc::new(Inner {
                store,
                metrics,
                instance: instance.to_owned(),
                rules,
                supervised: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A service for tests and tools, with metrics of its own.
    pub fn standalone(store: Store, instance: &str, rules: FormRules) -> Sessions {
        Sessions::new(store, Arc::new(Metrics::default()), instance, rules)
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// This replica's instance id.
    pub(crate) fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Forms up to `max` sessions from the queue, owned by this replica.
    pub(crate) async fn form(&self, max: usize) -> crate::store::Result<Vec<FormedSession>> {
        let formed = self
            .inner
            .store
            .form(&self.inner.rules, now_ms(), &self.inner.instance, max)
            .await?;
        for session in &formed {
            self.inner.metrics.session_formed(session.players.len());
            tracing::debug!(session = %session.session_id, players = session.players.len(), "session formed");
        }
        Ok(formed)
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
    pub(crate) async fn mark_ready(&self, formed: &FormedSession, server: &str, addr: &str) -> Option<ReadyOutcome> {
        let sid = formed.session_id.as_str();
        let outcome = retry(|| self.inner.store.mark_ready(sid, server, addr, now_ms())).await?;
        if outcome == ReadyOutcome::Ready {
            let now = now_ms();
            for joined in &formed.joined_ms {
                let waited = Duration::from_millis(u64::try_from(now - joined).unwrap_or(0));
                self.inner.metrics.join_to_matched(waited);
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
    ) -> crate::store::Result<EndOutcome> {
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
    pub async fn server_lost(&self, sid: &str, why: &str) -> crate::store::Result<EndOutcome> {
        tracing::warn!(session = sid, why, "the session's server is gone");
        self.end(sid, EndReason::Failed, None).await
    }

    /// The session ended (here or on another replica): stop its server if it is ours.
    pub(crate) fn ended_elsewhere(&self, sid: &str) {
        if let Some(stop) = self.inner.supervised.lock().unwrap().get(sid) {
            stop.cancel();
        }
    }

    /// One session's record, if Redis still holds it.
    pub async fn record(&self, sid: &str) -> crate::store::Result<Option<SessionRecord>> {
        self.inner.store.session(sid).await
    }

    /// Every session not yet ended.
    pub async fn live(&self) -> crate::store::Result<Vec<LiveSession>> {
        self.inner.store.live_sessions().await
    }
}

/// Runs a Redis step, retrying with backoff for up to [`RETRY_FOR`]; `None` if Redis stayed
/// down.
async fn retry<T, F, Fut>(mut step: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::store::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match step().await {
            Ok(value) => return Some(value),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "Redis step failed; retrying");
                sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(error = %e, "Redis step failed for good; the janitor will finish the job");
                return None;
            }
        }
    }
}
