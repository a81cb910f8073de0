//! Session supervision: one task per session this replica formed, from `allocating` to
//! `ended`, plus the janitor that ends sessions nobody supervises any more.
//!
//! A session's task starts its server through the runtime, marks it ready (players then get
//! tickets), and waits for the server to go away, an operator stop, or the end of the
//! shutdown grace. Whatever happens, the session ends exactly once in Redis (the first end
//! wins) and the server is gone: terminated, then killed if it does not drain.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::api::EndReason;
use protocol::{Claims, TicketSecret};
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::runtime::{ServerExit, ServerHandle, ServerSpec, SessionRuntime};
use crate::store::{EndOutcome, FormedSession, SessionState, Store, now_ms};

/// How long a server gets to drain after SIGTERM (it reports within 10 s) before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(15);
/// Own sessions younger than this are never taken for orphans (their task may be starting).
const ORPHAN_MIN_AGE_MS: i64 = 30_000;
/// Report tokens outlive any match: open timeout + the longest match + margin.
const REPORT_TOKEN_TTL_SECONDS: i64 = 2 * 86_400;

/// Pauses session forming after servers fail to start, doubling up to 30 s; a successful
/// start clears it. Keeps a broken runtime from spinning players through failures.
#[derive(Default)]
pub struct StartBackoff {
    state: Mutex<(Option<Instant>, Duration)>,
}

impl StartBackoff {
    fn failed(&self) {
        let mut state = self.state.lock().unwrap();
        let delay = if state.1.is_zero() {
            Duration::from_secs(1)
        } else {
            (state.1 * 2).min(Duration::from_secs(30))
        };
        *state = (Some(Instant::now() + delay), delay);
    }

    fn succeeded(&self) {
        *self.state.lock().unwrap() = (None, Duration::ZERO);
    }

    /// When forming may resume, if it is paused.
    pub fn paused_until(&self) -> Option<Instant> {
        self.state.lock().unwrap().0.filter(|until| *until > Instant::now())
    }
}

/// What every session task shares.
pub struct SupervisorConfig {
    pub instance: String,
    pub runtime: Option<Arc<dyn SessionRuntime>>,
    pub secret: TicketSecret,
    /// Base URL game servers use to reach this backend.
    pub internal_url: String,
    pub ready_timeout: Duration,
}

struct Inner {
    store: Store,
    config: SupervisorConfig,
    metrics: Arc<Metrics>,
    sessions: Mutex<HashMap<String, CancellationToken>>,
    tracker: TaskTracker,
    /// Cancelled when the shutdown grace is over: every server is terminated.
    hard_stop: CancellationToken,
    backoff: StartBackoff,
}

/// Supervises this replica's sessions. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    pub fn new(store: Store, config: SupervisorConfig, metrics: Arc<Metrics>) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                store,
                config,
                metrics,
                sessions: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
                hard_stop: CancellationToken::new(),
                backoff: StartBackoff::default(),
            }),
        }
    }

    /// The start-failure backoff the matcher honours.
    pub fn backoff(&self) -> &StartBackoff {
        &self.inner.backoff
    }

    /// Sessions this replica supervises now.
    pub fn active(&self) -> usize {
        self.inner.sessions.lock().unwrap().len()
    }

    /// Whether this replica supervises `sid`.
    pub fn owns(&self, sid: &str) -> bool {
        self.inner.sessions.lock().unwrap().contains_key(sid)
    }

    /// Takes charge of a session just formed by this replica.
    pub fn launch(&self, formed: FormedSession) {
        let stop = CancellationToken::new();
        self.inner
            .sessions
            .lock()
            .unwrap()
            .insert(formed.session_id.clone(), stop.clone());
        self.inner.metrics.session_formed(formed.players.len());
        let inner = self.inner.clone();
        self.inner.tracker.spawn(async move {
            let sid = formed.session_id.clone();
            let span = tracing::info_span!("session", session = %sid, players = formed.players.len());
            tracing::Instrument::instrument(supervise(inner.clone(), formed, stop), span).await;
            inner.sessions.lock().unwrap().remove(&sid);
        });
    }

    /// The session ended elsewhere (operator stop, report): stop its server if it is ours.
    pub fn ended_elsewhere(&self, sid: &str) {
        if let Some(stop) = self.inner.sessions.lock().unwrap().get(sid) {
            stop.cancel();
        }
    }

    /// Waits up to `grace` for every session to end by itself, then terminates the rest and
    /// waits for them to be gone.
    pub async fn drain(&self, grace: Duration) {
        self.inner.tracker.close();
        let active = self.active();
        if active > 0 {
            tracing::info!(sessions = active, ?grace, "draining: letting running matches finish");
        }
        if timeout(grace, self.inner.tracker.wait()).await.is_err() {
            tracing::warn!(
                sessions = self.active(),
                "shutdown grace over: terminating the remaining servers"
            );
            self.inner.hard_stop.cancel();
            self.inner.tracker.wait().await;
        }
    }

    /// Ends sessions no live replica supervises: this replica's from before a restart, or
    /// those of replicas whose heartbeat stopped. Several replicas doing this at once is
    /// harmless: the first end wins, and only the winner requeues.
    pub async fn reap_orphans(&self, first_run: bool) -> crate::store::Result<usize> {
        let me = &self.inner.config.instance;
        let now = now_ms();
        let mut reaped = 0;
        let mut alive: HashMap<String, bool> = HashMap::new();
        for session in self.inner.store.live_sessions().await? {
            let owner = session.instance.clone().unwrap_or_default();
            let orphan = if &owner == me {
                !self.owns(&session.session_id)
                    && (first_run || session.created_ms.is_some_and(|c| now - c > ORPHAN_MIN_AGE_MS))
            } else {
                let owner_alive = match alive.get(&owner) {
                    Some(known) => *known,
                    None => {
                        let known = self.inner.store.instance_alive(&owner).await?;
                        alive.insert(owner.clone(), known);
                        known
                    }
                };
                !owner_alive
            };
            let allocating = session.state == SessionState::Allocating;
            // Pods outlive replicas: a matched session's server plays on and the reaper ends
            // the session when its Pod finishes.
            let server_lives_on = !allocating
                && self
                    .inner
                    .config
                    .runtime
                    .as_ref()
                    .is_some_and(|r| r.servers_outlive_backend());
            if orphan && !server_lives_on {
                let requeue = allocating;
                tracing::warn!(session = %session.session_id, %owner, requeue, "ending a session nobody supervises");
                end(&self.inner, &session.session_id, EndReason::Failed, requeue).await;
                reaped += 1;
            }
        }
        Ok(reaped)
    }
}

async fn supervise(inner: Arc<Inner>, formed: FormedSession, stop: CancellationToken) {
    let sid = formed.session_id.as_str();
    let Some(runtime) = inner.config.runtime.clone() else {
        end(&inner, sid, EndReason::DryRun, false).await;
        return;
    };
    let spec = ServerSpec {
        session_id: sid.to_owned(),
        players: formed.players.clone(),
        report_url: format!("{}/internal/sessions/{sid}/result", inner.config.internal_url),
        report_token: inner.config.secret.mint(&Claims::report(
            sid,
            protocol::ticket::unix_now(),
            REPORT_TOKEN_TTL_SECONDS,
        )),
        ready_timeout: inner.config.ready_timeout,
    };
    let started = Instant::now();
    inner.metrics.sessions_allocating.fetch_add(1, Ordering::Relaxed);
    let outcome = tokio::select! {
        outcome = runtime.start(spec) => Some(outcome),
        () = stop.cancelled() => None,
        () = inner.hard_stop.cancelled() => None,
    };
    inner.metrics.sessions_allocating.fetch_sub(1, Ordering::Relaxed);
    let mut server = match outcome {
        None if inner.hard_stop.is_cancelled() => {
            end(&inner, sid, EndReason::Failed, true).await;
            return;
        }
        None => {
            tracing::info!("session ended while its server was starting");
            return;
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "server failed to start; players go back to the head of the queue");
            inner.backoff.failed();
            end(&inner, sid, EndReason::Failed, true).await;
            return;
        }
        Some(Ok(server)) => server,
    };
    inner.backoff.succeeded();
    inner.metrics.server_start(started.elapsed());

    let (name, addr) = (server.name().to_owned(), server.addr().to_owned());
    let ready = retry_redis(|| inner.store.mark_ready(sid, &name, &addr, now_ms())).await;
    match ready {
        Some(true) => {}
        Some(false) => {
            tracing::info!("session ended before its server was ready; stopping it");
            stop_server(server.as_mut()).await;
            return;
        }
        None => {
            stop_server(server.as_mut()).await;
            end(&inner, sid, EndReason::Failed, true).await;
            return;
        }
    }
    let now = now_ms();
    for joined in &formed.joined_ms {
        inner
            .metrics
            .join_to_matched(Duration::from_millis(u64::try_from(now - joined).unwrap_or(0)));
    }
    tracing::info!(
        server = server.name(),
        addr = server.addr(),
        "server ready; players matched"
    );

    inner.metrics.sessions_running.fetch_add(1, Ordering::Relaxed);
    let (reason, exit) = tokio::select! {
        exit = server.wait() => (EndReason::Failed, Some(exit)),
        () = stop.cancelled() => {
            stop_server(server.as_mut()).await;
            (EndReason::Stopped, None)
        }
        () = inner.hard_stop.cancelled() => {
            if runtime.servers_outlive_backend() {
                // The match goes on without us: the reaper of a live replica ends it.
                tracing::info!(server = server.name(), "backend stopping; the server carries on");
                inner.metrics.sessions_running.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            stop_server(server.as_mut()).await;
            (EndReason::Terminated, None)
        }
    };
    inner.metrics.sessions_running.fetch_sub(1, Ordering::Relaxed);
    if let Some(exit) = &exit
        && *exit != ServerExit::Exited(Some(0))
    {
        tracing::warn!(?exit, "server went away abnormally");
    }
    // A report, an operator stop or this very end: the first one counted, this is a no-op
    // then. A server that exits without having reported fails its session.
    end(&inner, sid, reason, false).await;
}

/// SIGTERM, a grace to drain and report, then SIGKILL.
async fn stop_server(server: &mut dyn ServerHandle) {
    server.terminate().await;
    if timeout(TERMINATE_GRACE, server.wait()).await.is_err() {
        tracing::warn!(server = server.name(), "server did not drain in time; killing it");
        server.kill().await;
        let _ = timeout(TERMINATE_GRACE, server.wait()).await;
    }
}

/// Runs a Redis step, retrying with backoff for up to about 30 s; `None` if Redis stayed down.
async fn retry_redis<T, F, Fut>(mut step: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = crate::store::Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    let deadline = Instant::now() + Duration::from_secs(30);
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

/// Ends a session (idempotently) and counts it if this call was the one that ended it.
async fn end(inner: &Inner, sid: &str, reason: EndReason, requeue: bool) {
    let outcome = retry_redis(|| inner.store.end_session(sid, reason, now_ms(), requeue, None)).await;
    if matches!(outcome, Some(EndOutcome::Ended | EndOutcome::Requeued)) {
        inner.metrics.session_ended(reason.as_str());
        tracing::info!(%reason, requeued = requeue, "session ended");
    }
}
