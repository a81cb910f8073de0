//! The matcher: every replica forms sessions from every queue, as soon as a join fills one and
//! on a short tick for partial sessions, widening windows and timeouts, so leftovers are
//! matched (or time out) without any further joins. Plain queues form in one atomic script;
//! rule queues are formed by the replica holding the queue's lease and committed by a script
//! that claims only tickets still queued, so replicas never put a player in two sessions.

use service::backoff::Policy;
use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use super::Matchmaking;
use crate::sessions::supervisor::Supervisor;

/// How often partial sessions are checked for; bounds the extra wait past FLUSH_WAIT.
const TICK: Duration = Duration::from_millis(200);
/// Sessions formed per script call; more are formed in further calls at once.
const BATCH: usize = 64;
/// Sessions one round of a rule queue may form: a round reads every waiting ticket, so it
/// places as much as it can per read.
const RULE_BATCH: usize = 512;

/// Retries of a round of forming that failed (Redis down or failing over).
pub(crate) const FORM: Policy = Policy::new("matcher_form", Duration::from_millis(500), Duration::from_secs(5));

/// One replica's matcher.
pub(crate) struct Matcher {
    pub matchmaking: Matchmaking,
    pub supervisor: Supervisor,
    /// The matcher waits while this replica supervises this many sessions.
    pub max_active: usize,
}

/// Forms sessions until `stop` is cancelled.
pub(crate) async fn run(matcher: Matcher, stop: CancellationToken) {
    let Matcher {
        matchmaking,
        supervisor,
        max_active,
    } = matcher;
    let mut last_depth = Instant::now() - Duration::from_secs(10);
    let mut failures = FORM.start();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = matchmaking.wake().notified() => {}
            () = sleep(TICK) => {}
        }
        if let Some(until) = supervisor.backoff().paused_until() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = sleep_until(until) => {}
            }
        }
        for queue in matchmaking.queues().iter() {
            loop {
                let batch = if queue.is_plain() { BATCH } else { RULE_BATCH };
                let room = max_active.saturating_sub(supervisor.active()).min(batch);
                if room == 0 {
                    break;
                }
                match matchmaking.form(queue, room).await {
                    Ok(formed) => {
                        failures.reset();
                        let full_batch = formed.len() == room;
                        for session in formed {
                            supervisor.launch(session);
                        }
                        if !full_batch || stop.is_cancelled() {
                            break;
                        }
                    }
                    Err(e) => {
                        if !failures
                            .pause(&format!("forming sessions of {}: {e}", queue.name), &stop)
                            .await
                        {
                            return;
                        }
                        break;
                    }
                }
            }
        }
        if last_depth.elapsed() >= Duration::from_secs(1) {
            last_depth = Instant::now();
            if let Ok(depths) = matchmaking.depths().await {
                let now = matchmaking_core::store::now_ms();
                for (name, depth) in depths {
                    let oldest = depth
                        .oldest_joined_ms
                        .map_or(0.0, |joined| (now - joined) as f64 / 1000.0);
                    matchmaking.metrics().set_queue_depth(name, depth.tickets, oldest);
                }
            }
        }
    }
}
