//! Operators' weights and drains of profiles' versions, at run time. What an operator sets is
//! kept in Redis (`{P}:versions`, one JSON document per profile), so it survives restarts and
//! every replica reads it: each puts the weights in force within [`FOLLOW_EVERY`]. Without a
//! document, a profile's versions keep the queue file's weights.
//!
//! A drained version gets no new session (its weight is 0 whatever was set); its running
//! sessions play to their end; it is marked drained, with the time, once none is left live.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use matchmaking_core::store::{Store, now_ms};
use protocol::operators::{ProfileVersions, VersionView};
use protocol::sessions::SessionState;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::profiles::{Profile, Profiles};
use crate::history::from_ms;

/// How often a replica reads the settings.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How often a replica looks for draining versions whose last session ended.
const DRAINED_EVERY: Duration = Duration::from_secs(2);

/// One profile's settings as an operator last set them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VersionSettings {
    /// Weights set, by version (a version left out keeps the queue file's).
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    /// Versions draining, and when the last session of each ended (once it did).
    #[serde(default)]
    pub draining: BTreeMap<String, Option<i64>>,
}

impl VersionSettings {
    /// The weights in force for `profile`'s versions, in its order: a drained version's is 0.
    pub(crate) fn weights(&self, profile: &Profile) -> Vec<u32> {
        profile
            .versions
            .iter()
            .map(|v| {
                if self.draining.contains_key(&v.name) {
                    0
                } else {
                    self.weights.get(&v.name).copied().unwrap_or(v.weight)
                }
            })
            .collect()
    }
}

/// Every profile's settings from Redis (an unreadable document counts as none).
pub(crate) async fn read_all(store: &Store) -> matchmaking_core::store::Result<HashMap<String, VersionSettings>> {
    Ok(store
        .version_settings()
        .await?
        .into_iter()
        .filter_map(|(profile, raw)| Some((profile, serde_json::from_str(&raw).ok()?)))
        .collect())
}

/// One profile's settings.
pub(crate) async fn read(store: &Store, profile: &str) -> matchmaking_core::store::Result<VersionSettings> {
    Ok(store
        .profile_version_settings(profile)
        .await?
        .and_then(|raw| serde_json::from_str(&raw).ok())
        .unwrap_or_default())
}

pub(crate) async fn write(
    store: &Store,
    profile: &str,
    settings: &VersionSettings,
) -> matchmaking_core::store::Result<()> {
    // Strings and numbers: encoding cannot fail.
    let json = serde_json::to_string(settings).expect("version settings encode");
    store.put_version_settings(profile, &json).await
}

/// Puts every profile's settings in force on this replica.
fn follow(profiles: &Profiles, all: &HashMap<String, VersionSettings>) {
    for profile in profiles.iter().filter(|p| !p.versions.is_empty()) {
        let Some(picker) = profiles.picker(&profile.name) else {
            continue;
        };
        let settings = all.get(&profile.name).cloned().unwrap_or_default();
        let weights = settings.weights(profile);
        let draining: Vec<bool> = profile
            .versions
            .iter()
            .map(|v| settings.draining.contains_key(&v.name))
            .collect();
        picker.set_draining(&draining);
        if picker.set_weights(&weights) {
            let split: Vec<String> = profile
                .versions
                .iter()
                .zip(&weights)
                .map(|(v, w)| format!("{}={w}", v.name))
                .collect();
            tracing::info!(profile = %profile.name, weights = %split.join(","), "version weights in force");
        }
    }
}

/// Puts the settings Redis holds in force once, before the replica forms sessions or keeps warm
/// servers (so a restarted replica never starts one of a drained version in its first
/// moments); unreachable, the file's weights stay until [`run`] reads them.
pub(crate) async fn load(store: &Store, profiles: &Profiles) {
    if profiles.iter().all(|p| p.versions.is_empty()) {
        return;
    }
    match read_all(store).await {
        Ok(all) => follow(profiles, &all),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the version settings at start; the file's weights are in force until Redis answers")
        }
    }
}

/// Live sessions by profile and version, as their records say (a session names its version
/// once its server is ready).
async fn live_by_version(
    store: &Store,
    profiles: &Profiles,
    queues: &matchmaking_core::queues::Queues,
) -> matchmaking_core::store::Result<HashMap<(String, String), u64>> {
    let mut counts = HashMap::new();
    for live in store.live_sessions().await? {
        if live.record.state == SessionState::Ended {
            continue;
        }
        let Some(version) = live.record.placement.version.clone() else {
            continue;
        };
        let queue = live.record.placement.queue.as_deref().unwrap_or("default");
        if queues.get(queue).is_none() {
            continue;
        }
        let profile = profiles.for_queue(queue).name.clone();
        *counts.entry((profile, version)).or_default() += 1;
    }
    Ok(counts)
}

/// Follows the settings every [`FOLLOW_EVERY`] until `stop`, and marks draining versions
/// drained once their last live session has ended.
pub(crate) async fn run(
    store: Store,
    profiles: Arc<Profiles>,
    queues: Arc<matchmaking_core::queues::Queues>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_drained_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let all = match read_all(&store).await {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!(error = %e, "could not read the version settings; the weights in force stay");
                continue;
            }
        };
        follow(&profiles, &all);
        let waiting = all.values().any(|s| s.draining.values().any(Option::is_none));
        if waiting && last_drained_check.elapsed() >= DRAINED_EVERY {
            last_drained_check = tokio::time::Instant::now();
            if let Err(e) = mark_drained(&store, &profiles, &queues, &all).await {
                tracing::debug!(error = %e, "could not look for drained versions");
            }
        }
    }
}

/// Marks each draining version with no live session left drained (now).
async fn mark_drained(
    store: &Store,
    profiles: &Profiles,
    queues: &matchmaking_core::queues::Queues,
    all: &HashMap<String, VersionSettings>,
) -> matchmaking_core::store::Result<()> {
    let live = live_by_version(store, profiles, queues).await?;
    for (profile, settings) in all {
        let done: Vec<&String> = settings
            .draining
            .iter()
            .filter(|(version, at)| at.is_none() && !live.contains_key(&(profile.clone(), (*version).clone())))
            .map(|(version, _)| version)
            .collect();
        if done.is_empty() {
            continue;
        }
        // Read again just before writing: an operator's change meanwhile is kept.
        let mut fresh = read(store, profile).await?;
        let now = now_ms();
        for version in done {
            if let Some(at @ None) = fresh.draining.get_mut(version) {
                *at = Some(now);
                tracing::info!(%profile, %version, "version drained: its last session has ended");
            }
        }
        write(store, profile, &fresh).await?;
    }
    Ok(())
}

/// Every profile with versions as operators see it.
pub(crate) async fn views(
    store: &Store,
    profiles: &Profiles,
    queues: &matchmaking_core::queues::Queues,
) -> matchmaking_core::store::Result<Vec<ProfileVersions>> {
    let (all, live) = tokio::try_join!(read_all(store), live_by_version(store, profiles, queues))?;
    Ok(profiles
        .iter()
        .filter(|p| !p.versions.is_empty())
        .map(|profile| {
            let settings = all.get(&profile.name).cloned().unwrap_or_default();
            let weights = settings.weights(profile);
            ProfileVersions {
                profile: profile.name.clone(),
                queues: queues
                    .iter()
                    .filter(|q| q.server.as_deref() == Some(profile.name.as_str()))
                    .map(|q| q.name.clone())
                    .collect(),
                versions: profile
                    .versions
                    .iter()
                    .zip(weights)
                    .map(|(v, weight)| {
                        let drain = settings.draining.get(&v.name);
                        VersionView {
                            name: v.name.clone(),
                            file_weight: v.weight,
                            weight,
                            draining: drain.is_some(),
                            drained_at: drain.copied().flatten().map(from_ms),
                            live_sessions: live.get(&(profile.name.clone(), v.name.clone())).copied().unwrap_or(0),
                        }
                    })
                    .collect(),
            }
        })
        .collect())
}

/// Why a change of a profile's versions is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Refused {
    #[error("no server profile {0:?} has versions")]
    UnknownProfile(String),
    #[error("profile {profile:?} has no version {version:?} (it has {known})")]
    UnknownVersion {
        profile: String,
        version: String,
        known: String,
    },
    #[error("a weight must be 0 to 1000, got {0}")]
    Weight(u32),
    #[error("{0}")]
    NoneLeft(String),
}

/// `settings` with `weights` set (a version given a weight above 0 stops draining).
pub(crate) fn with_weights(
    profile: &Profile,
    mut settings: VersionSettings,
    weights: &BTreeMap<String, u32>,
) -> Result<VersionSettings, Refused> {
    for (version, weight) in weights {
        known(profile, version)?;
        if *weight > 1000 {
            return Err(Refused::Weight(*weight));
        }
        settings.weights.insert(version.clone(), *weight);
        if *weight > 0 {
            settings.draining.remove(version);
        }
    }
    if settings.weights(profile).iter().all(|w| *w == 0) {
        return Err(Refused::NoneLeft(
            "these weights leave no version taking new sessions: give one a weight above 0".into(),
        ));
    }
    Ok(settings)
}

/// `settings` with `version` draining.
pub(crate) fn with_drain(
    profile: &Profile,
    mut settings: VersionSettings,
    version: &str,
) -> Result<VersionSettings, Refused> {
    known(profile, version)?;
    settings.draining.entry(version.to_owned()).or_insert(None);
    if settings.weights(profile).iter().all(|w| *w == 0) {
        return Err(Refused::NoneLeft(format!(
            "draining {version:?} would leave no version taking new sessions: give another version a weight above 0 first"
        )));
    }
    Ok(settings)
}

fn known(profile: &Profile, version: &str) -> Result<(), Refused> {
    if profile.versions.iter().any(|v| v.name == version) {
        Ok(())
    } else {
        Err(Refused::UnknownVersion {
            profile: profile.name.clone(),
            version: version.to_owned(),
            known: profile
                .versions
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
    }
}

/// The profile named `name`, when it has versions.
pub(crate) fn versioned<'a>(profiles: &'a Profiles, name: &str) -> Result<&'a Arc<Profile>, Refused> {
    profiles
        .get(name)
        .filter(|p| !p.versions.is_empty())
        .ok_or_else(|| Refused::UnknownProfile(name.to_owned()))
}

/// The versions of a profile as a short text: `1.4=0,1.5=100 (draining 1.4)`.
pub(crate) fn describe(profile: &Profile, settings: &VersionSettings) -> String {
    let weights: Vec<String> = profile
        .versions
        .iter()
        .zip(settings.weights(profile))
        .map(|(v, w)| format!("{}={w}", v.name))
        .collect();
    let draining: BTreeSet<&str> = settings.draining.keys().map(String::as_str).collect();
    if draining.is_empty() {
        weights.join(",")
    } else {
        format!(
            "{} (draining {})",
            weights.join(","),
            draining.into_iter().collect::<Vec<_>>().join(",")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::profiles::Target;

    fn profiles() -> Profiles {
        let text = "servers:\n  arena:\n    image: a\n    ports: [{name: game, protocol: tcp}]\n    versions: [{name: old, weight: 9}, {name: new, weight: 1}]\nqueues:\n  - {name: dm, session_size: 2, server: arena}\n";
        let queues = matchmaking_core::queues::Queues::parse(text).unwrap();
        Profiles::parse(text, Some(&queues), Target::Kubernetes).unwrap()
    }

    #[test]
    fn weights_set_replace_the_files_and_a_drain_makes_one_zero() {
        let profiles = profiles();
        let arena = versioned(&profiles, "arena").unwrap();
        let none = VersionSettings::default();
        assert_eq!(none.weights(arena), [9, 1]);
        let set = with_weights(arena, none.clone(), &BTreeMap::from([("new".into(), 100)])).unwrap();
        assert_eq!(set.weights(arena), [9, 100]);
        let drained = with_drain(arena, set, "old").unwrap();
        assert_eq!(drained.weights(arena), [0, 100]);
        assert_eq!(describe(arena, &drained), "old=0,new=100 (draining old)");
        // Rolling back: a weight above 0 ends the drain.
        let back = with_weights(
            arena,
            drained,
            &BTreeMap::from([("old".into(), 100), ("new".into(), 0)]),
        )
        .unwrap();
        assert_eq!(back.weights(arena), [100, 0]);
        assert!(back.draining.is_empty());
    }

    #[test]
    fn a_change_that_leaves_no_version_or_names_an_unknown_one_is_refused() {
        let profiles = profiles();
        let arena = versioned(&profiles, "arena").unwrap();
        let none = VersionSettings::default();
        let zero = BTreeMap::from([("old".into(), 0), ("new".into(), 0)]);
        assert!(matches!(
            with_weights(arena, none.clone(), &zero),
            Err(Refused::NoneLeft(_))
        ));
        let only_new = with_weights(arena, none.clone(), &BTreeMap::from([("old".into(), 0)])).unwrap();
        assert!(matches!(with_drain(arena, only_new, "new"), Err(Refused::NoneLeft(_))));
        assert!(matches!(
            with_weights(arena, none.clone(), &BTreeMap::from([("beta".into(), 1)])),
            Err(Refused::UnknownVersion { .. })
        ));
        assert_eq!(
            with_weights(arena, none.clone(), &BTreeMap::from([("new".into(), 1001)])),
            Err(Refused::Weight(1001))
        );
        assert!(matches!(
            versioned(&profiles, "game-server"),
            Err(Refused::UnknownProfile(_))
        ));
        assert!(matches!(versioned(&profiles, "nope"), Err(Refused::UnknownProfile(_))));
    }

    #[test]
    fn following_puts_the_settings_in_force_and_the_split_starts_over() {
        let profiles = profiles();
        let picks =
            |n: usize| -> Vec<String> { (0..n).map(|_| profiles.pick("dm").version.clone().unwrap()).collect() };
        assert_eq!(picks(10).iter().filter(|v| *v == "new").count(), 1);
        let arena = versioned(&profiles, "arena").unwrap();
        let drained = with_drain(arena, VersionSettings::default(), "old").unwrap();
        follow(&profiles, &HashMap::from([("arena".to_owned(), drained)]));
        assert!(picks(20).iter().all(|v| v == "new"));
        // The settings gone: the file's weights again.
        follow(&profiles, &HashMap::new());
        assert_eq!(picks(10).iter().filter(|v| *v == "old").count(), 9);
    }
}
