//! The janitor: renews this replica's heartbeat and ends the sessions nobody supervises any
//! more: this replica's own from before a restart, and those of replicas whose heartbeat
//! stopped. Several replicas doing this at once is harmless: the first end wins, and only
//! the winner requeues.

use std::collections::HashMap;
use std::time::Duration;

use protocol::sessions::SessionState;
use tokio_util::sync::CancellationToken;

use crate::sessions::Sessions;
use matchmaking_core::store::now_ms;

/// How often the janitor runs and the heartbeat is renewed.
const EVERY: Duration = Duration::from_secs(5);
/// How long a heartbeat lasts: a replica silent this long is taken for dead.
pub(crate) const HEARTBEAT_TTL: Duration = Duration::from_secs(20);
/// Own sessions younger than this are never taken for orphans (their task may be starting).
const ORPHAN_MIN_AGE_MS: i64 = 30_000;

/// One replica's janitor.
#[derive(Clone)]
pub(crate) struct Janitor {
    pub sessions: Sessions,
    /// Whether servers outlive their backend (Pods): then a matched session of a dead replica
    /// plays on, and the runtime reports it when its server finishes.
    pub servers_outlive_backend: bool,
}

impl Janitor {
    /// Says this replica is alive.
    pub(crate) async fn heartbeat(&self) -> matchmaking_core::store::Result<()> {
        self.sessions
            .store()
            .heartbeat(self.sessions.instance(), HEARTBEAT_TTL)
            .await
    }

    /// Heartbeats and reaps orphans every few seconds until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(EVERY) => {}
            }
            if let Err(e) = self.heartbeat().await {
                tracing::warn!(error = %e, "heartbeat failed");
                continue;
            }
            if let Err(e) = self.reap_orphans(false).await {
                tracing::warn!(error = %e, "janitor pass failed");
            }
            if let Err(e) = self.stop_forgotten().await {
                tracing::warn!(error = %e, "janitor: checking supervised sessions failed");
            }
        }
    }

    /// Stops the servers of sessions this replica supervises that are over: ended elsewhere
    /// (an operator's stop, a result report taken by another replica) while this replica's
    /// events subscription was down or being renewed, so their end's event never reached it; or
    /// no longer known to Redis (it restarted without its data, or a failover lost them), when
    /// their players were told `unknown` and may be playing elsewhere already. Returns how many
    /// it stopped.
    pub(crate) async fn stop_forgotten(&self) -> matchmaking_core::store::Result<usize> {
        let sessions = &self.sessions;
        let supervised = sessions.supervised_ids();
        let live = sessions.store().sessions_live(&supervised).await?;
        let over: Vec<String> = supervised
            .into_iter()
            .zip(live)
            .filter_map(|(sid, live)| (!live).then_some(sid))
            .collect();
        // Usually none: only then a second look, to tell the two apart in the log.
        let known = sessions.store().sessions_known(&over).await?;
        for (sid, known) in over.iter().zip(known) {
            if known {
                tracing::info!(session = %sid, "this session ended while its event was missed; stopping its server");
            } else {
                tracing::warn!(session = %sid, "Redis no longer knows this session; stopping its server");
            }
            sessions.ended_elsewhere(sid);
        }
        Ok(over.len())
    }

    /// Ends every live session nobody supervises; `first_run` (at start) takes all of this
    /// replica's own as orphans, however young. Returns how many it ended.
    pub(crate) async fn reap_orphans(&self, first_run: bool) -> matchmaking_core::store::Result<usize> {
        let sessions = &self.sessions;
        let me = sessions.instance();
        let now = now_ms();
        let mut reaped = 0;
        let mut alive: HashMap<String, bool> = HashMap::new();
        for live in sessions.live().await? {
            let owner = live.record.instance.as_str();
            let orphan = if owner == me {
                !sessions.supervises(&live.session_id)
                    && (first_run || now - live.record.created_ms > ORPHAN_MIN_AGE_MS)
            } else {
                let owner_alive = match alive.get(owner) {
                    Some(known) => *known,
                    None => {
                        let known = sessions.store().instance_alive(owner).await?;
                        alive.insert(owner.to_owned(), known);
                        known
                    }
                };
                !owner_alive
            };
            let server_lives_on = live.record.state != SessionState::Allocating && self.servers_outlive_backend;
            if orphan && !server_lives_on {
                tracing::warn!(session = %live.session_id, %owner, "ending a session nobody supervises");
                sessions
                    .fail(&live.session_id, &format!("its replica {owner} is gone"))
                    .await;
                reaped += 1;
            }
        }
        Ok(reaped)
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    use super::*;
    use matchmaking_core::store::Store;

    /// A supervised session that ended without this replica hearing of it, or that Redis
    /// forgot, has its server stopped; a live one is left alone.
    #[tokio::test]
    async fn the_servers_of_ended_and_forgotten_sessions_are_stopped() {
        let store = Store::connect(&testkit::redis_url(), &testkit::unique_prefix())
            .await
            .unwrap();
        let sessions = Sessions::standalone(store.clone(), "r1");
        let mut redis = redis::Client::open(testkit::redis_url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        // As the scripts keep them: every session in the sessions hash, the live ones in `live`.
        for sid in ["live", "ended"] {
            let _: () = redis.hset(store.keys().sessions(), sid, "{}").await.unwrap();
        }
        let _: () = redis.zadd(store.keys().live(), "live", 1).await.unwrap();
        let (live, ended, forgotten) = (
            sessions.supervise("live"),
            sessions.supervise("ended"),
            sessions.supervise("forgotten"),
        );
        let janitor = Janitor {
            sessions: sessions.clone(),
            servers_outlive_backend: false,
        };
        assert_eq!(janitor.stop_forgotten().await.unwrap(), 2);
        assert!(!live.stopped().is_cancelled());
        assert!(ended.stopped().is_cancelled());
        assert!(forgotten.stopped().is_cancelled());
    }
}
