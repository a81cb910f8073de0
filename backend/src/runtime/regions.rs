//! `REGIONS`: the regions sessions are placed in. Each region is where the region forming
//! chose from the players' latency maps puts a session's server: a runtime target of its own
//! (this machine, or a cluster through a kubeconfig context), the public address of its own
//! proxy (what the matched players are pointed at), and its own warm pool bounds.
//!
//! ```yaml
//! regions:
//!   - name: eu
//!     proxy: eu.play.example.com:7777   # host:port the region's players reach
//!     tls: true                         # its proxy speaks TLS (default false)
//!     target: {context: gke-eu}         # a kubeconfig context (KUBECONFIG's file, or `kubeconfig`)
//!     warm_pool: {min: 10, max: 40}     # the built-in game server's
//!     warm_pools: {arena: {min: 2, max: 8}}   # a profile's with a warm_pool
//!   - name: us
//!     proxy: us.play.example.com:7777
//!     target: local
//! ```
//!
//! The file is checked as a whole: every mistake is one line.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::region_health::{RegionBoard, Thresholds};
use super::warm::Bounds;
use super::{ServerHandle, ServerSpec, SessionBook, SessionRuntime, StartError, Task};

/// Where a region's game servers run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegionTarget {
    /// Child processes of this backend.
    Local,
    /// Pods in the cluster of a kubeconfig context.
    Kubernetes {
        context: String,
        kubeconfig: Option<PathBuf>,
    },
}

/// One region, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    /// Where its players reach its proxy.
    pub proxy_host: String,
    pub proxy_port: u16,
    pub tls: bool,
    pub target: RegionTarget,
    /// The built-in game server's warm pool there.
    pub warm: Bounds,
    /// Warm pools of profiles there, by profile name.
    pub profile_warm: BTreeMap<String, Bounds>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    regions: Vec<RegionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionSpec {
    name: String,
    proxy: String,
    #[serde(default)]
    tls: bool,
    target: TargetSpec,
    #[serde(default)]
    warm_pool: Option<BoundsSpec>,
    #[serde(default)]
    warm_pools: BTreeMap<String, BoundsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TargetSpec {
    Named(String),
    Kubernetes(KubernetesSpec),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KubernetesSpec {
    context: String,
    #[serde(default)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct BoundsSpec {
    #[serde(default)]
    min: u32,
    #[serde(default)]
    max: Option<u32>,
}

/// Most regions in one file.
const MAX_REGIONS: usize = 64;
/// A warm pool's bound, at most.
const MAX_WARM: u32 = 10_000;

/// Whether `name` may name a region: 1–32 of `a-z 0-9 -`, starting with a letter or digit.
pub fn is_region_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// The regions of the `REGIONS` file `text`, or every mistake in it, one line each.
pub fn parse(text: &str) -> Result<Vec<Region>, Vec<String>> {
    let file: FileSpec = serde_yaml::from_str(text).map_err(|e| vec![format!("not a regions file: {e}")])?;
    let mut mistakes = Vec::new();
    if file.regions.is_empty() {
        mistakes.push("regions: lists no region".to_owned());
    }
    if file.regions.len() > MAX_REGIONS {
        mistakes.push(format!("regions: at most {MAX_REGIONS}, got {}", file.regions.len()));
    }
    let mut names = HashSet::new();
    let mut clusters: Vec<(&str, &KubernetesSpec)> = Vec::new();
    let mut regions = Vec::new();
    for spec in &file.regions {
        let name = &spec.name;
        let mut mistake = |m: String| mistakes.push(format!("region {name:?}: {m}"));
        if !is_region_name(name) {
            mistake("a name is 1 to 32 of a-z 0-9 -, not starting with -".into());
        } else if !names.insert(name.clone()) {
            mistake("named twice".into());
        }
        let (proxy_host, proxy_port) = match proxy_address(&spec.proxy) {
            Ok(address) => address,
            Err(e) => {
                mistake(format!("proxy {:?}: {e}", spec.proxy));
                (String::new(), 0)
            }
        };
        let target = match &spec.target {
            TargetSpec::Named(local) if local == "local" => RegionTarget::Local,
            TargetSpec::Named(other) => {
                mistake(format!(
                    "target must be local or {{context: <kubeconfig context>}}, got {other:?}"
                ));
                RegionTarget::Local
            }
            TargetSpec::Kubernetes(k) => {
                if k.context.trim().is_empty() {
                    mistake("target's context is empty".into());
                }
                // Each region's runtime owns every game-server Pod of its cluster's namespace.
                if let Some((other, _)) = clusters
                    .iter()
                    .find(|(_, c)| c.context == k.context && c.kubeconfig == k.kubeconfig)
                {
                    mistake(format!(
                        "its cluster (context {:?}) is region {other:?}'s too; a cluster serves one region",
                        k.context
                    ));
                }
                clusters.push((name, k));
                RegionTarget::Kubernetes {
                    context: k.context.clone(),
                    kubeconfig: k.kubeconfig.clone(),
                }
            }
        };
        let mut bounds = |what: &str, spec: Option<BoundsSpec>| -> Bounds {
            let Some(spec) = spec else {
                return Bounds { min: 0, max: 0 };
            };
            let max = spec.max.unwrap_or(spec.min.saturating_mul(2));
            if max > MAX_WARM || spec.min > max {
                mistake(format!(
                    "{what} must have 0 <= min <= max <= {MAX_WARM}, got min {} max {max}",
                    spec.min
                ));
            }
            Bounds {
                min: spec.min as usize,
                max: max as usize,
            }
        };
        let warm = bounds("warm_pool", spec.warm_pool);
        let profile_warm = spec
            .warm_pools
            .iter()
            .map(|(profile, b)| (profile.clone(), bounds(&format!("warm_pools.{profile}"), Some(*b))))
            .collect();
        regions.push(Region {
            name: name.clone(),
            proxy_host,
            proxy_port,
            tls: spec.tls,
            target,
            warm,
            profile_warm,
        });
    }
    if mistakes.is_empty() {
        Ok(regions)
    } else {
        Err(mistakes)
    }
}

/// `host:port` (an IPv6 host in brackets), the port 1–65535.
fn proxy_address(text: &str) -> Result<(String, u16), String> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| "must be host:port".to_owned())?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| "its port must be 1 to 65535".to_owned())?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err("its host is not a host name or address".into());
    }
    Ok((host.to_owned(), port))
}

/// The regions of `REGIONS` and their health as this replica sees it.
#[derive(Debug)]
pub struct Regions {
    /// In the file's order.
    pub list: Vec<Region>,
    pub board: RegionBoard,
}

impl Regions {
    /// `list`, every region up, going down and back by `thresholds`.
    pub fn new(list: Vec<Region>, thresholds: Thresholds) -> Regions {
        let board = RegionBoard::new(list.iter().map(|r| r.name.as_str()), thresholds);
        Regions { list, board }
    }

    /// The region whose servers a session of `region` runs in (see [`RegionBoard::resolve`]).
    pub fn of(&self, region: Option<&str>) -> Option<&Region> {
        let name = self.board.resolve(region);
        self.list.iter().find(|r| r.name == name)
    }
}

/// How often each region's target is probed.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may take before it counts as unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The runtimes of every region: a session's server starts in its region's (the first
/// region's for a session without one, or of a region no longer listed), unless that region
/// is down. Each region's runtime sees only its own sessions, and a watch per region probes
/// its target, and fails its sessions while it is down.
pub(crate) struct Regional {
    runtimes: Vec<(String, Arc<dyn SessionRuntime>)>,
    regions: Arc<Regions>,
}

impl Regional {
    pub(crate) fn new(runtimes: Vec<(String, Arc<dyn SessionRuntime>)>, regions: Arc<Regions>) -> Regional {
        assert!(!runtimes.is_empty(), "at least one region");
        Regional { runtimes, regions }
    }

    /// The region a session of `region` runs in, and its runtime.
    fn of(&self, region: Option<&str>) -> (&str, &Arc<dyn SessionRuntime>) {
        let name = self.regions.board.resolve(region);
        let (name, runtime) = self
            .runtimes
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or(&self.runtimes[0]);
        (name, runtime)
    }

    /// `sessions` as region `name`'s runtime sees them: only its own live sessions.
    fn book_of(&self, name: &str, sessions: &Arc<dyn SessionBook>) -> Arc<dyn SessionBook> {
        Arc::new(RegionBook {
            region: name.to_owned(),
            regions: self.regions.clone(),
            inner: sessions.clone(),
        })
    }
}

impl SessionRuntime for Regional {
    fn start(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Box<dyn ServerHandle>, StartError>> {
        let (name, runtime) = self.of(spec.region.as_deref());
        let (name, runtime) = (name.to_owned(), runtime.clone());
        Box::pin(async move {
            let board = &self.regions.board;
            if !board.is_up(&name) {
                // Failing at once requeues its players, for a session in a region up.
                return Err(StartError::Spawn(format!("region {name} is down")));
            }
            let started = runtime.start(spec).await;
            board.started(&name, started.is_ok(), tokio::time::Instant::now());
            started
        })
    }

    fn servers_outlive_backend(&self) -> bool {
        self.runtimes.iter().any(|(_, r)| r.servers_outlive_backend())
    }

    /// Each region's, with its own sessions; a region whose target does not answer is down
    /// from the start (the others recover, and the backend starts).
    fn recover<'a>(&'a self, sessions: &'a dyn SessionBook) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            for (name, runtime) in &self.runtimes {
                let book = RegionBook {
                    region: name.clone(),
                    regions: self.regions.clone(),
                    inner: Borrowed(sessions),
                };
                if let Err(e) = runtime.recover(&book).await {
                    let why = format!("its target did not answer at start: {e:#}");
                    self.regions.board.down_now(name, why, tokio::time::Instant::now());
                }
            }
            Ok(())
        })
    }

    fn warm_servers(&self) -> Option<protocol::api::WarmServers> {
        let each: Vec<_> = self.runtimes.iter().filter_map(|(_, r)| r.warm_servers()).collect();
        (!each.is_empty()).then(|| super::warm::total(each))
    }

    /// Each region's pools as `<region>/<pool>`, its built-in server's as
    /// `<region>/game-server`.
    fn warm_profiles(&self) -> BTreeMap<String, protocol::api::WarmServers> {
        let mut all = BTreeMap::new();
        for (name, runtime) in &self.runtimes {
            if let Some(builtin) = runtime.warm_servers() {
                all.insert(format!("{name}/{}", super::profiles::BUILTIN), builtin);
            }
            for (pool, books) in runtime.warm_profiles() {
                all.insert(format!("{name}/{pool}"), books);
            }
        }
        all
    }

    fn tasks(&self, sessions: Arc<dyn SessionBook>, stop: CancellationToken) -> Vec<Task> {
        let mut tasks = Vec::new();
        for (name, runtime) in &self.runtimes {
            let book = self.book_of(name, &sessions);
            tasks.extend(runtime.tasks(book.clone(), stop.clone()));
            let watch = RegionWatch {
                name: name.clone(),
                runtime: runtime.clone(),
                regions: self.regions.clone(),
                book,
            };
            tasks.push(("region watch", Box::pin(watch.run(stop.clone()))));
        }
        tasks
    }
}

/// Probes one region's target and fails its sessions while it is down.
struct RegionWatch {
    name: String,
    runtime: Arc<dyn SessionRuntime>,
    regions: Arc<Regions>,
    /// The region's own sessions.
    book: Arc<dyn SessionBook>,
}

impl RegionWatch {
    async fn run(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(PROBE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let answer = match tokio::time::timeout(PROBE_TIMEOUT, self.runtime.probe()).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {} s", PROBE_TIMEOUT.as_secs())),
            };
            if let Err(e) = &answer {
                tracing::debug!(region = %self.name, error = %e, "the region's target did not answer its probe");
            }
            let board = &self.regions.board;
            board.probed(&self.name, answer.is_ok(), tokio::time::Instant::now());
            if !board.is_up(&self.name) {
                self.fail_sessions().await;
            }
        }
    }

    /// Fails every live session of the region (its players requeued at the head).
    async fn fail_sessions(&self) {
        let live = match self.book.live().await {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(region = %self.name, error = %e, "could not read the region's sessions; trying again");
                return;
            }
        };
        let why = format!("region {} is down", self.name);
        for session in live {
            if let Err(e) = self.book.region_lost(&session.session_id, &why).await {
                tracing::warn!(session = %session.session_id, error = %e, "could not fail the session of a region down; trying again");
            }
        }
    }
}

/// What one region's runtime sees of the sessions: only the live sessions whose servers run
/// there, so a cluster's reaper never fails the sessions of another.
struct RegionBook<B> {
    region: String,
    regions: Arc<Regions>,
    inner: B,
}

/// A borrowed book, for [`SessionRuntime::recover`].
struct Borrowed<'a>(&'a dyn SessionBook);

/// What a [`RegionBook`] reads through: an owned book, or a borrowed one.
trait Inner: Send + Sync {
    fn book(&self) -> &dyn SessionBook;
}

impl Inner for Arc<dyn SessionBook> {
    fn book(&self) -> &dyn SessionBook {
        self.as_ref()
    }
}

impl Inner for Borrowed<'_> {
    fn book(&self) -> &dyn SessionBook {
        self.0
    }
}

impl<B: Inner> SessionBook for RegionBook<B> {
    fn instance(&self) -> &str {
        self.inner.book().instance()
    }

    fn live(&self) -> BoxFuture<'_, matchmaking_core::store::Result<Vec<matchmaking_core::store::LiveSession>>> {
        Box::pin(async move {
            let mut live = self.inner.book().live().await?;
            let board = &self.regions.board;
            live.retain(|s| board.resolve(s.record.placement.region.as_deref()) == self.region);
            Ok(live)
        })
    }

    fn record<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<Option<protocol::sessions::SessionRecord>>> {
        self.inner.book().record(session_id)
    }

    fn server_lost<'a>(
        &'a self,
        session_id: &'a str,
        why: &'a str,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<()>> {
        self.inner.book().server_lost(session_id, why)
    }

    fn region_lost<'a>(
        &'a self,
        session_id: &'a str,
        why: &'a str,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<()>> {
        self.inner.book().region_lost(session_id, why)
    }

    fn server_completed<'a>(
        &'a self,
        session_id: &'a str,
        why: &'a str,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<()>> {
        self.inner.book().server_completed(session_id, why)
    }

    fn warm_pool_lease(&self, ttl: Duration) -> BoxFuture<'_, matchmaking_core::store::Result<bool>> {
        self.inner.book().warm_pool_lease(ttl)
    }

    fn warm_server_state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, matchmaking_core::store::Result<(bool, bool)>> {
        self.inner.book().warm_server_state(id)
    }

    fn offer_warm<'a>(
        &'a self,
        id: &'a str,
        session: &'a protocol::api::WarmSession,
    ) -> BoxFuture<'a, matchmaking_core::store::Result<bool>> {
        self.inner.book().offer_warm(id, session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regions_file_reads_every_region_and_its_targets() {
        let regions = parse(
            "regions:
  - name: eu
    proxy: eu.play.example:7777
    tls: true
    target: {context: gke-eu, kubeconfig: /etc/kube/eu.yaml}
    warm_pool: {min: 10, max: 40}
    warm_pools: {arena: {min: 2}}
  - name: us-east
    proxy: '[2001:db8::1]:7000'
    target: local
",
        )
        .unwrap();
        assert_eq!(regions.len(), 2);
        let eu = &regions[0];
        assert_eq!(
            (eu.proxy_host.as_str(), eu.proxy_port, eu.tls),
            ("eu.play.example", 7777, true)
        );
        assert_eq!(
            eu.target,
            RegionTarget::Kubernetes {
                context: "gke-eu".into(),
                kubeconfig: Some("/etc/kube/eu.yaml".into())
            }
        );
        assert_eq!(eu.warm, Bounds { min: 10, max: 40 });
        assert_eq!(eu.profile_warm["arena"], Bounds { min: 2, max: 4 });
        let us = &regions[1];
        assert_eq!((us.proxy_host.as_str(), us.proxy_port), ("2001:db8::1", 7000));
        assert_eq!(
            (us.target.clone(), us.warm),
            (RegionTarget::Local, Bounds { min: 0, max: 0 })
        );
    }

    #[test]
    fn every_mistake_is_one_line() {
        let got = parse(
            "regions:
  - {name: eu, proxy: 'eu:7777', target: local}
  - {name: eu, proxy: 'nowhere', target: local}
  - {name: Bad_Name, proxy: 'x:0', target: mars}
  - {name: ok, proxy: 'x:1', target: {context: ''}, warm_pool: {min: 5, max: 2}}
  - {name: a, proxy: 'a:1', target: {context: kind-a}}
  - {name: b, proxy: 'b:1', target: {context: kind-a}}
",
        )
        .unwrap_err();
        assert_eq!(
            got,
            [
                r#"region "eu": named twice"#,
                r#"region "eu": proxy "nowhere": must be host:port"#,
                r#"region "Bad_Name": a name is 1 to 32 of a-z 0-9 -, not starting with -"#,
                r#"region "Bad_Name": proxy "x:0": its port must be 1 to 65535"#,
                r#"region "Bad_Name": target must be local or {context: <kubeconfig context>}, got "mars""#,
                r#"region "ok": target's context is empty"#,
                r#"region "ok": warm_pool must have 0 <= min <= max <= 10000, got min 5 max 2"#,
                r#"region "b": its cluster (context "kind-a") is region "a"'s too; a cluster serves one region"#,
            ]
        );
        assert_eq!(parse("regions: []").unwrap_err(), ["regions: lists no region"]);
        let unknown = parse("regions:\n  - {name: eu, proxy: 'a:1', target: local, colour: red}\n").unwrap_err();
        assert!(unknown[0].starts_with("not a regions file:"), "{unknown:?}");
    }
}
