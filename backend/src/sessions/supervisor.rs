//! Session supervision: one task per session this replica formed, from `allocating` to
//! `ended`.
//!
//! A session's task starts its server through the runtime, has the sessions service mark it
//! ready (players then get tickets), and waits for the server to go away, the session to end
//! elsewhere (an operator stop, a report), or the end of the shutdown grace. Whatever happens,
//! the session ends exactly once (the first end wins) and the server is gone: terminated, then
//! killed if it does not drain.

use service::backoff::{Backoff, Policy};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::TicketSecret;
use protocol::api::EndReason;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::{SessionsMetrics, Supervised};
use crate::runtime::profiles::{CLIENT_VERSION, Profiles};
use crate::runtime::{Ends, ServerExit, ServerHandle, ServerSpec, SessionRuntime};
use crate::sessions::Sessions;
use matchmaking_core::store::{FormedSession, ReadyOutcome, ServerRoute, ServerSignal};

/// Pauses session forming after servers fail to start, longer after each failure up to 30 s;
/// a successful start clears it. Keeps a broken runtime from spinning players through
/// failures. (The supervisor logs each failed start; the pause is counted as a retry.)
pub(crate) const FORMING_PAUSE: Policy = Policy::new(
    "forming_after_failed_start",
    Duration::from_secs(1),
    Duration::from_secs(30),
)
.quiet();

/// Whether forming is paused, and for how long after the next failure.
pub(crate) struct StartBackoff {
    /// Until when forming waits, and the run of failures so far; behind one lock as they change
    /// together, held only to read or set them.
    state: Mutex<(Option<Instant>, Backoff)>,
}

impl Default for StartBackoff {
    fn default() -> Self {
        StartBackoff {
            state: Mutex::new((None, FORMING_PAUSE.start())),
        }
    }
}

impl StartBackoff {
    fn failed(&self, error: &dyn std::fmt::Display) {
        let mut state = self.state.lock().unwrap();
        let wait = state.1.retry(error);
        state.0 = Some(Instant::now() + wait);
    }

    fn succeeded(&self) {
        let mut state = self.state.lock().unwrap();
        state.0 = None;
        state.1.reset();
    }

    /// When forming may resume, if it is paused.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.state.lock().unwrap().0.filter(|until| *until > Instant::now())
    }
}

/// What every session task needs besides the session.
pub(crate) struct SupervisorConfig {
    /// `None`: dry runs, no servers.
    pub runtime: Option<Arc<dyn SessionRuntime>>,
    pub secret: TicketSecret,
    /// Base URL game servers use to reach this backend.
    pub internal_url: String,
    pub ready_timeout: Duration,
    /// Which server each queue's sessions run.
    pub profiles: Arc<Profiles>,
    /// Gives the places of players gone too long to backfill, in queues that backfill on leave.
    pub backfill: Option<crate::matchmaking::Matchmaking>,
}

struct Inner {
    sessions: Sessions,
    config: SupervisorConfig,
    metrics: Arc<SessionsMetrics>,
    tracker: TaskTracker,
    /// Cancelled when the shutdown grace is over: every server is terminated.
    hard_stop: CancellationToken,
    backoff: StartBackoff,
}

/// Supervises this replica's sessions. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    pub(crate) fn new(sessions: Sessions, config: SupervisorConfig, metrics: Arc<SessionsMetrics>) -> Self {
        Supervisor {
            inner: Arc::new(Inner {
                sessions,
                config,
                metrics,
                tracker: TaskTracker::new(),
                hard_stop: CancellationToken::new(),
                backoff: StartBackoff::default(),
            }),
        }
    }

    /// The start-failure backoff the matcher honours.
    pub(crate) fn backoff(&self) -> &StartBackoff {
        &self.inner.backoff
    }

    /// Sessions this replica supervises now.
    pub(crate) fn active(&self) -> usize {
        self.inner.sessions.supervised()
    }

    /// Takes charge of a session just formed by this replica.
    pub(crate) fn launch(&self, formed: FormedSession) {
        let supervision = self.inner.sessions.supervise(&formed.session_id);
        let inner = self.inner.clone();
        let span = tracing::info_span!("session", session = %formed.session_id, players = formed.players.len());
        self.inner.tracker.spawn(tracing::Instrument::instrument(
            async move {
                supervise(&inner, &formed, &supervision).await;
                drop(supervision);
            },
            span,
        ));
    }

    /// Waits up to `grace` for every session to end by itself, then terminates the rest and
    /// waits for them to be gone.
    pub(crate) async fn drain(&self, grace: Duration) {
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
}

async fn supervise(inner: &Inner, formed: &FormedSession, supervision: &super::Supervision) {
    let stop = supervision.stopped();
    let sid = formed.session_id.as_str();
    let sessions = &inner.sessions;
    let Some(runtime) = inner.config.runtime.clone() else {
        sessions.end_with_retry(sid, EndReason::DryRun).await;
        return;
    };
    let spec = ServerSpec::new(
        sid,
        formed.players.clone(),
        formed.teams.clone(),
        &inner.config.internal_url,
        &inner.config.secret,
        inner.config.ready_timeout,
    )
    .running(
        &formed.queue,
        inner
            .config
            .profiles
            .pick_for(&formed.queue, formed.match_on.get(CLIENT_VERSION).map(String::as_str)),
    )
    .in_region(formed.region.clone())
    .with_sdk_ready(sessions.sdk_ready(sid));
    let profile = spec.profile.clone();
    let started = Instant::now();
    let allocating = inner.metrics.supervised(Supervised::Allocating);
    let outcome = tokio::select! {
        outcome = runtime.start(spec) => Some(outcome),
        () = stop.cancelled() => None,
        () = inner.hard_stop.cancelled() => None,
    };
    drop(allocating);
    let mut server = match outcome {
        None if inner.hard_stop.is_cancelled() => {
            // Still allocating: the players go back to the head of the queue.
            sessions
                .fail(sid, "the backend stopped while the server was starting")
                .await;
            return;
        }
        None => {
            tracing::info!("session ended while its server was starting");
            return;
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "server failed to start; players go back to the head of the queue");
            inner.backoff.failed(&e);
            inner.metrics.server_start_failed(&e);
            sessions.fail(sid, &format!("the server did not start: {e}")).await;
            return;
        }
        Some(Ok(server)) => server,
    };
    inner.backoff.succeeded();
    inner.metrics.server_start(started.elapsed());
    inner.metrics.version_started(&profile);

    let route = ServerRoute {
        server: server.name(),
        addr: server.addr(),
        udp_addr: server.udp_addr(),
        identity: profile.identity,
        version: profile.version.as_deref(),
    };
    match sessions.mark_ready(formed, &route).await {
        Some(ReadyOutcome::Ready) => {}
        Some(ReadyOutcome::NotAllocating) => {
            tracing::info!("session ended before its server was ready; stopping it");
            stop_server(server.as_mut(), profile.stop_grace).await;
            return;
        }
        None => {
            stop_server(server.as_mut(), profile.stop_grace).await;
            sessions
                .fail(sid, "Redis did not answer when the server was ready")
                .await;
            return;
        }
    }

    let matched = inner.metrics.supervised(Supervised::Matched);
    // matchplane's own cap on the session's length, for every profile that sets one.
    let cap = async {
        match profile.max_session {
            Some(cap) => tokio::time::sleep(cap).await,
            None => std::future::pending().await,
        }
    };
    let empty = async {
        match profile.empty_grace {
            Some(grace) => empty_for(sessions, sid, grace).await,
            None => std::future::pending().await,
        }
    };
    // A queue that backfills on leave: a player gone its leave grace gives its place away.
    let on_leave = inner.config.backfill.as_ref().filter(|m| {
        m.queues()
            .get(&formed.queue)
            .is_some_and(|q| q.backfill.is_some_and(|b| b.on_leave))
    });
    let left_behind = async {
        match on_leave {
            Some(matchmaking) => release_gone(matchmaking, sid, supervision.left()).await,
            None => std::future::pending().await,
        }
    };
    let unhealthy = async {
        match profile.health_timeout {
            Some(limit) => silent_for(sessions, sid, limit).await,
            None => std::future::pending().await,
        }
    };
    let (reason, exit) = tokio::select! {
        exit = server.wait() => (exit_reason(profile.ends, &exit), Some(exit)),
        () = left_behind => unreachable!("releasing players gone too long goes on until the session ends"),
        () = unhealthy => {
            tracing::warn!(limit = ?profile.health_timeout, "the server made no SDK health call within the profile's health_timeout_seconds; failing its session and stopping it");
            // Ended first: a report the server makes while it drains cannot pass for its end.
            sessions.fail(sid, "the server made no SDK health call within its profile's health_timeout_seconds").await;
            stop_server(server.as_mut(), profile.stop_grace).await;
            (EndReason::Failed, None)
        }
        reason = empty => {
            tracing::info!(grace = ?profile.empty_grace, %reason, "no player connected for the profile's empty_grace_seconds; stopping its server");
            stop_server(server.as_mut(), profile.stop_grace).await;
            (reason, None)
        }
        () = stop.cancelled() => {
            // Ended. By the server's own report: it is exiting by itself, so it is waited for
            // (within its stop grace) and not deleted, and a Pod is kept for
            // FINISHED_POD_GRACE_SECONDS (for `kubectl logs`). Otherwise (an operator's stop,
            // a failure): stopped.
            if !reported(sessions, sid).await || timeout(profile.stop_grace, server.wait()).await.is_err() {
                stop_server(server.as_mut(), profile.stop_grace).await;
            }
            (EndReason::Stopped, None)
        }
        () = cap => {
            tracing::info!(cap = ?profile.max_session, "the session reached its profile's max_session_seconds; stopping its server");
            stop_server(server.as_mut(), profile.stop_grace).await;
            (EndReason::Terminated, None)
        }
        () = inner.hard_stop.cancelled() => {
            if runtime.servers_outlive_backend() {
                // The match goes on without us: the reaper of a live replica ends it.
                tracing::info!(server = server.name(), "backend stopping; the server carries on");
                return;
            }
            stop_server(server.as_mut(), profile.stop_grace).await;
            (EndReason::Terminated, None)
        }
    };
    drop(matched);
    if let Some(exit) = &exit
        && *exit != ServerExit::Exited(Some(0))
    {
        // A server that reported its result stops listening on its way out (a Pod then goes
        // unready before it exits): it is finishing, not lost, and is left to exit by itself
        // (its Pod kept for FINISHED_POD_GRACE_SECONDS, for `kubectl logs`).
        let finishing = matches!(exit, ServerExit::Lost(_)) && reported(sessions, sid).await;
        if finishing {
            tracing::debug!(?exit, "server reported and is exiting");
        } else {
            tracing::warn!(?exit, "server went away abnormally");
            if matches!(exit, ServerExit::Lost(_)) {
                // Lost to us (no longer ready, evicted): make sure nothing of it keeps running.
                server.kill().await;
            }
        }
    }
    // A report, an operator stop or this very end: the first one counted, this is a no-op
    // then. A server that exits without having reported fails its session.
    match (reason, &exit) {
        (EndReason::Failed, Some(exit)) => {
            sessions
                .fail(sid, &format!("the server went away while running: {exit:?}"))
                .await;
        }
        _ => {
            sessions.end_with_retry(sid, reason).await;
        }
    }
}

/// Gives the places of session `sid`'s players gone their queue's leave grace to backfill, for
/// as long as the session runs (never resolves): woken by each player's `left` event, it
/// releases whoever is gone its grace by then and sleeps until the next one will be. A missed
/// event (the events subscription renewing) delays a release by [`LEAVE_RECHECK`] at most;
/// Redis errors only delay it.
async fn release_gone(matchmaking: &crate::matchmaking::Matchmaking, sid: &str, left: &tokio::sync::Notify) {
    loop {
        let wait = match matchmaking.release_gone(sid).await {
            Ok(gone) => {
                if !gone.released.is_empty() {
                    tracing::info!(
                        released = ?gone.released,
                        "players gone their queue's leave grace: their places go to backfill"
                    );
                }
                gone.next_due_ms
                    .map_or(LEAVE_RECHECK, |due| {
                        Duration::from_millis(u64::try_from(due - matchmaking_core::store::now_ms()).unwrap_or(0))
                    })
                    .min(LEAVE_RECHECK)
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not release players gone too long");
                EMPTY_CHECK
            }
        };
        tokio::select! {
            () = left.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// How long a session that backfills on leave goes without looking at its players' leaves when
/// no event wakes it.
const LEAVE_RECHECK: Duration = Duration::from_secs(30);

/// Whether session `sid`'s server reported its result: it is then exiting by itself. A
/// record Redis cannot give says no (the server is stopped as before).
async fn reported(sessions: &Sessions, sid: &str) -> bool {
    matches!(sessions.record(sid).await, Ok(Some(record)) if record.reported)
}

/// How often a session with an empty grace looks at who is connected (and one with a health
/// timeout at its server's last health call).
const EMPTY_CHECK: Duration = Duration::from_secs(1);

/// Resolves once no player has been connected to session `sid`'s server for `grace`, as the
/// proxy reports connections: `abandoned` when players had been connected, `no_show` when none
/// ever was (the grace then counts from the server being ready). Redis errors only delay it.
async fn empty_for(sessions: &Sessions, sid: &str, grace: Duration) -> EndReason {
    let ready = matchmaking_core::store::now_ms();
    let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(EMPTY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(Some(record)) = sessions.store().session(sid).await else {
            continue;
        };
        if !record.connected.is_empty() {
            continue;
        }
        let (since, reason) = match record.empty_since_ms {
            Some(since) => (since, EndReason::Abandoned),
            None => (record.ready_ms.unwrap_or(ready), EndReason::NoShow),
        };
        if matchmaking_core::store::now_ms() - since >= grace_ms {
            return reason;
        }
    }
}

/// Resolves once session `sid`'s server has made no SDK health call for `limit`, counting
/// from its being ready. Redis errors only delay it: matchplane's own outage fails no server.
async fn silent_for(sessions: &Sessions, sid: &str, limit: Duration) {
    let ready = matchmaking_core::store::now_ms();
    let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(EMPTY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(last) = sessions.store().server_signal(sid, ServerSignal::Health).await else {
            continue;
        };
        let last = last.unwrap_or(ready).max(ready);
        if matchmaking_core::store::now_ms() - last >= limit_ms {
            return;
        }
    }
}

/// How a session whose server went away by itself ended: a server that ends by exiting has
/// completed with status 0 and failed otherwise; one that reports through the SDK failed if it
/// exited without its report (a report that came first has ended the session already).
fn exit_reason(ends: Ends, exit: &ServerExit) -> EndReason {
    match (ends, exit) {
        (Ends::Exit, ServerExit::Exited(Some(0))) => EndReason::Completed,
        _ => EndReason::Failed,
    }
}

/// How long a killed server may take to be reaped.
const REAP_GRACE: Duration = Duration::from_secs(15);

/// SIGTERM, `grace` to drain (and report), then SIGKILL.
async fn stop_server(server: &mut dyn ServerHandle, grace: Duration) {
    server.terminate().await;
    if timeout(grace, server.wait()).await.is_err() {
        tracing::warn!(
            server = server.name(),
            ?grace,
            "server did not stop within its grace; killing it"
        );
        server.kill().await;
        let _ = timeout(REAP_GRACE, server.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_that_ends_by_exiting_completes_with_status_0_only() {
        assert_eq!(
            exit_reason(Ends::Exit, &ServerExit::Exited(Some(0))),
            EndReason::Completed
        );
        assert_eq!(exit_reason(Ends::Exit, &ServerExit::Exited(Some(3))), EndReason::Failed);
        assert_eq!(
            exit_reason(Ends::Exit, &ServerExit::Lost("killed".into())),
            EndReason::Failed
        );
        // The built-in server reports first; its exit alone never completes a session.
        assert_eq!(exit_reason(Ends::Sdk, &ServerExit::Exited(Some(0))), EndReason::Failed);
    }
}
