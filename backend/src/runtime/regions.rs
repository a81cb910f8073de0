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

use futures_util::future::BoxFuture;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

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

/// The runtimes of every region: a session's server starts in its region's (the first
/// region's when forming chose none, or one no longer listed).
pub(crate) struct Regional {
    regions: Vec<(String, Arc<dyn SessionRuntime>)>,
}

impl Regional {
    pub(crate) fn new(regions: Vec<(String, Arc<dyn SessionRuntime>)>) -> Regional {
        assert!(!regions.is_empty(), "at least one region");
        Regional { regions }
    }

    fn of(&self, region: Option<&str>) -> &Arc<dyn SessionRuntime> {
        let found = region.and_then(|name| self.regions.iter().find(|(n, _)| n == name));
        &found.unwrap_or(&self.regions[0]).1
    }
}

impl SessionRuntime for Regional {
    fn start(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Box<dyn ServerHandle>, StartError>> {
        let runtime = self.of(spec.region.as_deref()).clone();
        Box::pin(async move { runtime.start(spec).await })
    }

    fn servers_outlive_backend(&self) -> bool {
        self.regions.iter().any(|(_, r)| r.servers_outlive_backend())
    }

    fn recover<'a>(&'a self, sessions: &'a dyn SessionBook) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            for (_, runtime) in &self.regions {
                runtime.recover(sessions).await?;
            }
            Ok(())
        })
    }

    fn warm_servers(&self) -> Option<protocol::api::WarmServers> {
        let each: Vec<_> = self.regions.iter().filter_map(|(_, r)| r.warm_servers()).collect();
        (!each.is_empty()).then(|| super::warm::total(each))
    }

    /// Each region's pools as `<region>/<pool>`, its built-in server's as
    /// `<region>/game-server`.
    fn warm_profiles(&self) -> BTreeMap<String, protocol::api::WarmServers> {
        let mut all = BTreeMap::new();
        for (name, runtime) in &self.regions {
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
        self.regions
            .iter()
            .flat_map(|(_, r)| r.tasks(sessions.clone(), stop.clone()))
            .collect()
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
            ]
        );
        assert_eq!(parse("regions: []").unwrap_err(), ["regions: lists no region"]);
        let unknown = parse("regions:\n  - {name: eu, proxy: 'a:1', target: local, colour: red}\n").unwrap_err();
        assert!(unknown[0].starts_with("not a regions file:"), "{unknown:?}");
    }
}
