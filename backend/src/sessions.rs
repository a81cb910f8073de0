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

use crate::forming::{Formed, Pool};
use crate::metrics::Metrics;
use crate::queues::{Queue, Queues};
use crate::store::{ENDED_RETENTION, EndOutcome, FormRules, FormedSession, LiveSession, ReadyOutcome, Store, now_ms};
use crate::tickets;

/// How long a replica's lease on forming a rule queue lasts without renewal.
const LEASE: Duration = Duration::from_secs(2);

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
    queues: Arc<Queues>,
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
    pub(crate) fn new(store: Store, metrics: Arc<Metrics>, instance: &str, queues: Arc<Queues>) -> Sessions {
        Sessions {
            inner: Arc::new(Inner {
                store,
                metrics,
                instance: instance.to_owned(),
                queues,
                supervised: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A service for tests and tools, with metrics of its own and only the default queue.
    pub fn standalone(store: Store, instance: &str, rules: FormRules) -> Sessions {
        Sessions::with_queues(store, instance, Queues::default_only(rules))
    }

    /// A service for tests and tools, with metrics of its own, over `queues`.
    pub fn with_queues(store: Store, instance: &str, queues: Queues) -> Sessions {
        Sessions::new(store, Arc::new(Metrics::default()), instance, Arc::new(queues))
    }

    /// Every queue.
    pub(crate) fn queues(&self) -> &Queues {
        &self.inner.queues
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// This replica's instance id.
    pub(crate) fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Forms up to `max` sessions from `queue`, owned by this replica: a plain queue in join
    /// order by one script; a rule queue by the former, if this replica holds its lease (one
    /// replica forms each rule queue at a time; the commit claims only tickets still queued,
    /// so a lease that lapses mid-round costs a retry, never a ticket).
    pub async fn form(&self, queue: &Queue, max: usize) -> crate::store::Result<Vec<FormedSession>> {
        let formed = match queue.fifo_rules() {
            Some(rules) => {
                self.inner
                    .store
                    .form_plain(&queue.name, &rules, now_ms(), &self.inner.instance, max)
                    .await?
            }
            None => self.form_by_rules(queue, max).await?,
        };
        for session in &formed {
            self.inner.metrics.session_formed(session.players.len());
            tracing::debug!(session = %session.session_id, queue = %queue.name, players = session.players.len(), "session formed");
        }
        Ok(formed)
    }

    /// One round of the rule former on `queue`.
    async fn form_by_rules(&self, queue: &Queue, max: usize) -> crate::store::Result<Vec<FormedSession>> {
        let store = &self.inner.store;
        if !store.lease(&queue.name, &self.inner.instance, LEASE).await? {
            return Ok(Vec::new());
        }
        let stored = store.waiting_tickets(&queue.name).await?;
        if stored.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut pool = Pool::new(queue, stored.iter().filter_map(|t| tickets::decode(queue, t)).collect());
        let plan = pool.form(now, max);
        if plan.sessions.is_empty() && plan.expired.is_empty() {
            return Ok(Vec::new());
        }
        let sessions: Vec<PlannedSession> = plan
            .sessions
            .iter()
            .map(|formed| PlannedSession::new(&pool, queue, formed))
            .collect();
        let expire: Vec<(&str, u64)> = plan
            .expired
            .iter()
            .map(|&t| (pool.tickets()[t].id.as_str(), pool.tickets()[t].version))
            .collect();
        let body = serde_json::json!({
            "sessions": sessions,
            "expire": expire,
            "retention_ms": u64::try_from(ENDED_RETENTION.as_millis()).unwrap_or(u64::MAX),
        });
        let placed = store
            .place(&queue.name, &body.to_string(), now, &self.inner.instance)
            .await?;
        if !placed.stale.is_empty() {
            tracing::debug!(queue = %queue.name, stale = placed.stale.len(), "tickets changed since read; their sessions wait for the next round");
        }
        if !placed.expired.is_empty() {
            self.inner.metrics.timed_out(&queue.name, placed.expired.len());
            tracing::info!(queue = %queue.name, tickets = placed.expired.len(), "tickets timed out");
        }
        let formed: std::collections::HashSet<&str> = placed.formed.iter().map(String::as_str).collect();
        Ok(sessions
            .into_iter()
            .filter(|s| formed.contains(s.session_id.as_str()))
            .map(|s| {
                self.inner.metrics.session_quality(&s.placement);
                FormedSession {
                    session_id: s.session_id,
                    players: s.players,
                    joined_ms: s.joined_ms,
                    queue: queue.name.clone(),
                    teams: s.placement.teams,
                }
            })
            .collect())
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

/// A session of a plan, as the place script takes it.
#[derive(serde::Serialize)]
struct PlannedSession {
    session_id: String,
    /// (ticket id, version) of each ticket.
    tickets: Vec<(String, u64)>,
    /// Team by team (ticket by ticket without teams).
    players: Vec<String>,
    joined_ms: Vec<i64>,
    #[serde(flatten)]
    placement: protocol::sessions::Placement,
}

impl PlannedSession {
    fn new(pool: &Pool<'_>, queue: &Queue, formed: &Formed) -> PlannedSession {
        let tickets = pool.tickets();
        let order: Vec<usize> = if formed.teams.is_empty() {
            formed.tickets.clone()
        } else {
            formed.teams.concat()
        };
        let mut players = Vec::new();
        let mut joined_ms = Vec::new();
        for &t in &order {
            for p in &tickets[t].players {
                players.push(p.clone());
                joined_ms.push(tickets[t].joined_ms);
            }
        }
        let teams = formed
            .teams
            .iter()
            .map(|team| team.iter().flat_map(|&t| tickets[t].players.iter().cloned()).collect())
            .collect();
        PlannedSession {
            session_id: uuid::Uuid::new_v4().to_string(),
            tickets: formed
                .tickets
                .iter()
                .map(|&t| (tickets[t].id.clone(), tickets[t].version))
                .collect(),
            players,
            joined_ms,
            placement: protocol::sessions::Placement {
                queue: Some(queue.name.clone()),
                teams,
                region: formed.region.clone(),
                skill_spread: formed.quality.skill_spread,
                team_skill_gap: formed.quality.team_skill_gap,
                max_latency_ms: formed.quality.max_latency_ms,
                max_wait_ms: Some(formed.quality.max_wait_ms),
            },
        }
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
