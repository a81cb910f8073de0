//! What operators see and do, for the console and any operator's tool: the overview of every
//! queue, session, replica and failure (cluster-wide, from Redis), the audit log (PostgreSQL),
//! and the console's sign-ins (Redis, shared by every replica).

pub(crate) mod console;
pub(crate) mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use matchmaking_core::queues::{DEFAULT_QUEUE, Queues};
use matchmaking_core::store::{Store, now_ms};
use protocol::api::BackendHealth;
use protocol::operators::{
    Allows, Failure, Overview, ProfileVersions, QueueStats, Replica, ReplicaState, SessionCounts,
};
use protocol::sessions::SessionState;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::window::{Counted, recent_slots};
use crate::history::{History, from_ms};
use crate::runtime::profiles::{Profile, Profiles};
use crate::runtime::versions::{self, Refused, VersionSettings};

/// How often a replica reports itself.
const REPORT_EVERY: Duration = Duration::from_secs(2);
/// A replica silent this long is `gone`.
const GONE_AFTER_MS: i64 = 10_000;
/// A gone replica's report is forgotten this long after it.
const FORGET_AFTER_MS: i64 = 15 * 60_000;
/// One overview serves every console for this long: several consoles cost one read.
const OVERVIEW_FRESH: Duration = Duration::from_secs(1);
/// Failures in the overview.
const OVERVIEW_FAILURES: usize = 20;

/// How a replica that reported `health` `seen_ms_ago` looks.
fn replica_state(seen_ms_ago: i64, health: &BackendHealth) -> ReplicaState {
    if seen_ms_ago > GONE_AFTER_MS {
        ReplicaState::Gone
    } else if health.draining {
        ReplicaState::Draining
    } else if !health.ready || health.status != protocol::api::HealthStatus::Ok {
        ReplicaState::Degraded
    } else {
        ReplicaState::Ready
    }
}

/// A replica's report, as `{P}:replicas` keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Report {
    reported_ms: i64,
    started_ms: i64,
    health: BackendHealth,
}

/// The operators' reads, and this replica's reports.
pub(crate) struct Operators {
    store: Store,
    history: History,
    /// The server profiles, for their versions.
    profiles: Arc<Profiles>,
    /// `ADMIN_TOKEN` (empty when unset: then nobody signs in to the console).
    operator_token: String,
    queues: Queues,
    instance: String,
    started_ms: i64,
    last: Mutex<Option<(Instant, Arc<Overview>)>>,
}

impl Operators {
    pub(crate) fn new(
        store: Store,
        history: History,
        profiles: Arc<Profiles>,
        operator_token: &str,
        queues: Queues,
        instance: &str,
    ) -> Operators {
        Operators {
            store,
            history,
            profiles,
            operator_token: operator_token.to_owned(),
            queues,
            instance: instance.to_owned(),
            started_ms: now_ms(),
            last: Mutex::new(None),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn history(&self) -> &History {
        &self.history
    }

    pub(crate) fn operator_token(&self) -> &str {
        &self.operator_token
    }

    /// The overview, read at most once per [`OVERVIEW_FRESH`] however many ask.
    pub(crate) async fn overview(&self) -> matchmaking_core::store::Result<Arc<Overview>> {
        let mut last = self.last.lock().await;
        if let Some((at, overview)) = last.as_ref()
            && at.elapsed() < OVERVIEW_FRESH
        {
            return Ok(overview.clone());
        }
        let overview = Arc::new(self.read_overview().await?);
        *last = Some((Instant::now(), overview.clone()));
        Ok(overview)
    }

    async fn read_overview(&self) -> matchmaking_core::store::Result<Overview> {
        let now = now_ms();
        let stores: Vec<_> = self.queues.iter().map(|q| self.store.queue(&q.name)).collect();
        let names: Vec<&str> = self.queues.iter().map(|q| q.name.as_str()).collect();
        let slots = recent_slots(now);
        let (depths, counted, (formers, warm_keeper), live, reports, failures) = tokio::try_join!(
            self.store.queue_depths(stores.iter()),
            self.store.stats(&slots),
            self.store.lease_holders(&names),
            self.store.live_sessions(),
            self.store.replica_reports(),
            self.failures(OVERVIEW_FAILURES),
        )?;
        let counted = Counted::new(counted, now);
        let queues = self
            .queues
            .iter()
            .zip(depths)
            .zip(&formers)
            .map(|((queue, depth), former)| {
                let oldest_wait_ms = depth.oldest_joined_ms.map(|j| (now - j).max(0));
                let (skill_spread, max_latency_ms) =
                    matchmaking_core::forming::allowed(queue, oldest_wait_ms.unwrap_or(0));
                let name = queue.name.as_str();
                QueueStats {
                    name: name.to_owned(),
                    depth: depth.tickets,
                    oldest_wait_ms,
                    players_in_per_s: counted.rates(&format!("in|{name}")),
                    players_out_per_s: counted.rates(&format!("out|{name}")),
                    timed_out_per_s: counted.rates(&format!("to|{name}")),
                    allows_now: Allows {
                        skill_spread,
                        max_latency_ms,
                    },
                    profile: queue.server.clone(),
                    formed_by: if name == DEFAULT_QUEUE { None } else { former.clone() },
                    time_to_match: counted.latency("ttm", Some(name)),
                    time_to_play: counted.latency("ttp", Some(name)),
                }
            })
            .collect();
        let mut sessions = SessionCounts::default();
        for live in &live {
            match live.record.state {
                SessionState::Allocating => sessions.allocating += 1,
                SessionState::Matched => sessions.matched += 1,
                SessionState::Ended => {}
            }
        }
        let replicas = self
            .replicas(reports, now, &names, &formers, warm_keeper.as_deref())
            .await;
        Ok(Overview {
            generated_at: from_ms(now),
            queues,
            time_to_match: counted.latency("ttm", None),
            time_to_play: counted.latency("ttp", None),
            sessions,
            failed_per_s: counted.rates("failed"),
            replicas,
            failures,
        })
    }

    /// The replicas' reports as the overview shows them; reports long gone are forgotten.
    async fn replicas(
        &self,
        reports: std::collections::HashMap<String, String>,
        now: i64,
        queues: &[&str],
        formers: &[Option<String>],
        warm_keeper: Option<&str>,
    ) -> Vec<Replica> {
        let mut forgotten = Vec::new();
        let mut replicas = BTreeMap::new();
        for (instance, raw) in reports {
            let Ok(report) = serde_json::from_str::<Report>(&raw) else {
                forgotten.push(instance);
                continue;
            };
            let seen_ms_ago = (now - report.reported_ms).max(0);
            if seen_ms_ago > FORGET_AFTER_MS {
                forgotten.push(instance);
                continue;
            }
            let state = replica_state(seen_ms_ago, &report.health);
            let forms = queues
                .iter()
                .zip(formers)
                .filter(|(_, holder)| holder.as_deref() == Some(instance.as_str()))
                .map(|(q, _)| (*q).to_owned())
                .collect();
            replicas.insert(
                instance.clone(),
                Replica {
                    state,
                    seen_ms_ago,
                    started_at: from_ms(report.started_ms),
                    forms,
                    keeps_warm_pods: warm_keeper == Some(instance.as_str()),
                    health: report.health,
                },
            );
        }
        if let Err(e) = self.store.forget_replicas(&forgotten).await {
            tracing::debug!(error = %e, "could not forget old replica reports");
        }
        replicas.into_values().collect()
    }

    /// Every profile with versions, as operators see it.
    pub(crate) async fn versions(&self) -> matchmaking_core::store::Result<Vec<ProfileVersions>> {
        versions::views(&self.store, &self.profiles, &self.queues).await
    }

    /// Sets weights of `profile`'s versions (in force here at once, on every replica within
    /// a second): what is in force now, or why not.
    pub(crate) async fn set_weights(
        &self,
        profile: &str,
        weights: &BTreeMap<String, u32>,
    ) -> matchmaking_core::store::Result<Result<String, Refused>> {
        self.change_versions(profile, |p, current| versions::with_weights(p, current, weights))
            .await
    }

    /// Drains `version` of `profile`: no new session; its running ones play on.
    pub(crate) async fn drain(
        &self,
        profile: &str,
        version: &str,
    ) -> matchmaking_core::store::Result<Result<String, Refused>> {
        self.change_versions(profile, |p, current| versions::with_drain(p, current, version))
            .await
    }

    async fn change_versions(
        &self,
        profile: &str,
        change: impl FnOnce(&Profile, VersionSettings) -> Result<VersionSettings, Refused>,
    ) -> matchmaking_core::store::Result<Result<String, Refused>> {
        let profile = match versions::versioned(&self.profiles, profile) {
            Ok(p) => p.clone(),
            Err(e) => return Ok(Err(e)),
        };
        let current = versions::read(&self.store, &profile.name).await?;
        let next = match change(&profile, current) {
            Ok(next) => next,
            Err(e) => return Ok(Err(e)),
        };
        versions::write(&self.store, &profile.name, &next).await?;
        if let Some(picker) = self.profiles.picker(&profile.name) {
            picker.set_weights(&next.weights(&profile));
            let draining: Vec<bool> = profile
                .versions
                .iter()
                .map(|v| next.draining.contains_key(&v.name))
                .collect();
            picker.set_draining(&draining);
        }
        Ok(Ok(versions::describe(&profile, &next)))
    }

    /// The latest `limit` failures, newest first.
    pub(crate) async fn failures(&self, limit: usize) -> matchmaking_core::store::Result<Vec<Failure>> {
        Ok(self
            .store
            .failures(limit)
            .await?
            .iter()
            .filter_map(|raw| serde_json::from_str(raw).ok())
            .collect())
    }

    /// Reports this replica (its `GET /health`, as `health` makes it) every
    /// [`REPORT_EVERY`] until `stop`.
    pub(crate) async fn run_reports(
        self: Arc<Self>,
        health: impl Fn() -> BackendHealth + Send + 'static,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let report = Report {
                reported_ms: now_ms(),
                started_ms: self.started_ms,
                health: health(),
            };
            // A report holds strings and numbers only.
            let report = serde_json::to_string(&report).expect("a replica report encodes");
            if let Err(e) = self.store.report_replica(&self.instance, &report).await {
                tracing::debug!(error = %e, "could not report this replica to operators");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::api::{DependencyState, HealthStatus};

    use super::*;

    #[test]
    fn a_replica_is_gone_when_silent_and_otherwise_as_its_health_says() {
        let mut health = BackendHealth {
            status: HealthStatus::Ok,
            ready: true,
            draining: false,
            instance: "a".into(),
            runtime: "local".into(),
            redis: DependencyState::Ok,
            postgres: DependencyState::Ok,
            history_backlog: Some(0),
            sessions_supervised: 0,
            warm_servers: None,
            warm_profiles: BTreeMap::new(),
            regions: BTreeMap::new(),
        };
        assert_eq!(replica_state(2_000, &health), ReplicaState::Ready);
        assert_eq!(replica_state(GONE_AFTER_MS + 1, &health), ReplicaState::Gone);
        health.status = HealthStatus::Degraded;
        health.postgres = DependencyState::Down;
        assert_eq!(replica_state(0, &health), ReplicaState::Degraded);
        health.draining = true;
        assert_eq!(replica_state(0, &health), ReplicaState::Draining);
        assert_eq!(replica_state(GONE_AFTER_MS + 1, &health), ReplicaState::Gone);
    }
}
