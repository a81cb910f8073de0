//! What the API server's storage and the kubelet share: a Pod's key, the clock, what is
//! recorded of each Pod, the node's fixed settings, and [`PodStorage`], all a kubelet reads
//! and writes of the storage (so the kubelet depends on this, not on the cluster).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// A Pod's key: namespace and name.
pub type Key = (String, String);

/// What kube-sim reports of each Pod it ever held, for tests and the demo's figures (times in
/// ms since the Unix epoch).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub session: Option<String>,
    pub created_ms: i64,
    pub started_ms: Option<i64>,
    pub ready_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    pub deleted_ms: Option<i64>,
    pub phase: Option<String>,
    pub reason: Option<String>,
}

/// Everything the kubelet needs that is fixed at start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// What a container runs when its image is none of `images`: the built-in game server.
    pub game_server_bin: std::path::PathBuf,
    /// The images the kubelet knows, each with the program that is its entrypoint: a Pod with
    /// one runs that program with the container's `args` (a studio's server image).
    pub images: HashMap<String, std::path::PathBuf>,
    /// The namespaces that exist, each with its Pod Security `enforce` level (`None`: none
    /// enforced); a Pod in any other namespace is refused, as a real API server refuses it.
    pub namespaces: HashMap<String, Option<String>>,
    /// `secret/key` → value.
    pub secrets: HashMap<(String, String), String>,
    pub log_dir: Option<std::path::PathBuf>,
    /// Unknown fields in a create without `fieldValidation` are refused (`Strict`) rather
    /// than warned about.
    pub strict_by_default: bool,
    /// The Roles every API call is held to (`403 Forbidden` otherwise); `None` allows all.
    pub rbac: Option<crate::rbac::Rbac>,
    /// The NetworkPolicies enforced on connections to Pod IPs; `None` lets everything through.
    pub network: Option<std::sync::Arc<crate::network::Network>>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(crate) fn timestamp(ms: i64) -> Time {
    Time(Timestamp::from_millisecond(ms).unwrap_or(Timestamp::UNIX_EPOCH))
}

pub fn now() -> Time {
    timestamp(now_ms())
}

/// What a kubelet reads and writes of the API server's storage.
pub trait PodStorage: Send + Sync + 'static {
    /// The node's settings.
    fn config(&self) -> &NodeConfig;
    /// The Pod as stored now.
    fn pod(&self, key: &Key) -> Option<Pod>;
    /// Changes a Pod (its status, as the kubelet reports) and its record; false if it is gone.
    fn update_pod(&self, key: &Key, change: &mut dyn FnMut(&mut Pod, &mut PodRecord)) -> bool;
    /// Removes a Pod for good (the end of a deletion).
    fn remove_pod(&self, key: &Key);
    /// Changes what is recorded of a Pod.
    fn record_pod(&self, key: &Key, change: &mut dyn FnMut(&mut PodRecord));
    /// A free loopback address for a Pod listening on `port`.
    fn pod_ip(&self, port: u16) -> Ipv4Addr;
}

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

impl NodeConfig {
    /// The system namespaces (no level enforced) and `namespace` enforcing `level`.
    pub fn namespaces_with(namespace: &str, level: Option<&str>) -> HashMap<String, Option<String>> {
        let mut all: HashMap<String, Option<String>> =
            SYSTEM_NAMESPACES.iter().map(|n| ((*n).to_owned(), None)).collect();
        all.insert(namespace.to_owned(), level.map(str::to_owned));
        all
    }
}
