//! `kube-sim`: a Kubernetes API server for Pods and a kubelet on one machine, so matchplane's
//! `kubernetes` runtime runs unchanged (through an ordinary kubeconfig) where there is no
//! cluster: tests, CI and `make demo-kubernetes`. It is a test bed, not a product.
//!
//! The API ([`api`]) serves core/v1 Pods as a real API server does for the calls kube-rs makes:
//! create (validated, 422 with causes), get, merge patch (labels, annotations, a lower
//! `activeDeadlineSeconds`; a resource version in the patch is a precondition), delete with a
//! grace period, list with label and
//! field selectors and pages, and watch from a resource version with bookmarks, 410 Gone for a
//! version older than the kept history and a server-side timeout. The kubelet ([`kubelet`])
//! runs each Pod's container as the real `game-server` on a loopback address of its own (the
//! Pod IP), honours the readiness and liveness probes, `restartPolicy: Never` and
//! `activeDeadlineSeconds`, and reports phase and conditions. `/sim/*` sets the start delay and
//! injects faults: evict, delete, kill or un-ready a Pod, cut every watch, compact the history,
//! answer the next calls with an error status. With policies loaded, [`network`] enforces
//! NetworkPolicy on connections to Pod IPs through [`relay`].

pub mod api;
pub mod cluster;
pub mod kubelet;
pub mod network;
pub mod node;
pub mod pod_security;
pub mod rbac;
pub mod relay;
pub mod selector;
pub mod validate;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use cluster::{Behaviour, CallCount, Cluster, Fault, NodeConfig, PodRecord, Verb};
pub use rbac::Rbac;

/// How unknown fields in a create are treated when the request does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FieldValidation {
    /// Refused with 422 (stricter than a real API server's default, to catch mistakes).
    Strict,
    /// Stored, with a `Warning` header (a real API server's default).
    Warn,
}

/// kube-sim's settings.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "kube-sim",
    version,
    about = "A Kubernetes API server for Pods and a kubelet on one machine (a test bed)"
)]
pub struct Config {
    /// Address to serve the API on (plain HTTP, loopback).
    #[arg(long, env = "KUBE_SIM_BIND", default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,
    /// Write a kubeconfig for this server here once listening.
    #[arg(long, env = "KUBE_SIM_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig's default namespace; it exists beside the system namespaces (`default`,
    /// `kube-system`, ...), and a Pod in any other is refused.
    #[arg(long, env = "KUBE_SIM_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// The Pod Security level `--namespace` enforces on create (its
    /// `pod-security.kubernetes.io/enforce` label): privileged, baseline or restricted.
    #[arg(long, env = "KUBE_SIM_POD_SECURITY", default_value = "restricted")]
    pub pod_security: String,
    /// The program every container runs (default: `game-server` beside this binary).
    #[arg(long, env = "GAME_SERVER_BIN")]
    pub game_server_bin: Option<PathBuf>,
    /// An image the kubelet knows, as `IMAGE=PROGRAM`: a container with that image runs PROGRAM
    /// (its entrypoint) with the container's `args`. Repeatable; other images run the game
    /// server.
    #[arg(
        long = "image",
        env = "KUBE_SIM_IMAGES",
        value_delimiter = ',',
        value_name = "IMAGE=PROGRAM"
    )]
    pub images: Vec<String>,
    /// A Secret key the kubelet can give containers, as `NAME/KEY=VALUE`; `VALUE` of the form
    /// `env:VAR` is read from that environment variable. Repeatable.
    #[arg(long = "secret", value_name = "NAME/KEY=VALUE")]
    pub secrets: Vec<String>,
    /// Scheduling and image pull: how long each Pod waits before its container starts.
    #[arg(long, env = "KUBE_SIM_START_DELAY_MS", default_value_t = 0)]
    pub start_delay_ms: u64,
    /// Every how many ms a watch that allows bookmarks receives one.
    #[arg(long, env = "KUBE_SIM_BOOKMARK_INTERVAL_MS", default_value_t = 5000)]
    pub bookmark_interval_ms: u64,
    /// The longest a watch call lasts (clients ask for less with timeoutSeconds).
    #[arg(long, env = "KUBE_SIM_MAX_WATCH_SECONDS", default_value_t = 1800)]
    pub max_watch_seconds: u64,
    /// Events kept for watches to resume from; older resource versions get 410 Gone.
    #[arg(long, env = "KUBE_SIM_HISTORY", default_value_t = 10_000)]
    pub history: usize,
    /// Unknown fields in a create without `fieldValidation`.
    #[arg(long, env = "KUBE_SIM_FIELD_VALIDATION", value_enum, default_value = "strict")]
    pub field_validation: FieldValidation,
    /// Hold every API call to the Roles this manifest binds to its ServiceAccount, granted in
    /// `--namespace` (a call they do not grant is answered 403 Forbidden, as a real API server
    /// answers it); unset, every call is allowed.
    #[arg(long, env = "KUBE_SIM_RBAC", value_name = "FILE")]
    pub rbac: Option<PathBuf>,
    /// Enforce the NetworkPolicies of this manifest (repeatable), as if created in
    /// `--namespace`, on connections to Pod IPs: a connection they do not admit is reset and
    /// counted at `/sim/network`. Unset, every connection is let through. Linux only (the
    /// caller of each connection is found in `/proc`).
    #[arg(
        long = "network-policy",
        env = "KUBE_SIM_NETWORK_POLICY",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    pub network_policies: Vec<PathBuf>,
    /// A program run on this machine that the NetworkPolicies see as a Pod with these labels in
    /// `--namespace`, as `KEY=VALUE[,KEY=VALUE...]@PROGRAM` (the backend and proxy of a demo).
    /// Repeatable; any other process outside kube-sim's Pods is outside the cluster.
    #[arg(long = "host-workload", value_name = "LABELS@PROGRAM")]
    pub host_workloads: Vec<String>,
    /// Where each container's output goes (`<namespace>_<pod>.log`); discarded when unset.
    #[arg(long, env = "KUBE_SIM_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    #[command(flatten)]
    pub log: service::telemetry::LogArgs,
}

impl Config {
    /// Checks the settings and resolves the secrets and the game-server binary.
    pub fn node(&self) -> anyhow::Result<NodeConfig> {
        let mut secrets = HashMap::new();
        for entry in &self.secrets {
            let (path, value) = entry
                .split_once('=')
                .with_context(|| format!("--secret {entry:?}: expected NAME/KEY=VALUE"))?;
            let (name, key) = path
                .split_once('/')
                .with_context(|| format!("--secret {entry:?}: expected NAME/KEY=VALUE"))?;
            let value = match value.strip_prefix("env:") {
                Some(var) => std::env::var(var).with_context(|| format!("--secret {path}: {var} is not set"))?,
                None => value.to_owned(),
            };
            secrets.insert((name.to_owned(), key.to_owned()), value);
        }
        let game_server_bin = match &self.game_server_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()
                .context("locating this binary")?
                .with_file_name("game-server"),
        };
        anyhow::ensure!(
            game_server_bin.is_file(),
            "the game-server binary {} does not exist (build it, or pass --game-server-bin)",
            game_server_bin.display()
        );
        let rbac = match &self.rbac {
            Some(path) => {
                let yaml = std::fs::read_to_string(path).with_context(|| format!("--rbac {}", path.display()))?;
                Some(
                    rbac::Rbac::from_manifest(&yaml, Some(&self.namespace))
                        .with_context(|| format!("--rbac {}", path.display()))?,
                )
            }
            None => None,
        };
        let mut images = HashMap::new();
        for entry in &self.images {
            let (image, program) = entry
                .split_once('=')
                .with_context(|| format!("--image {entry:?}: expected IMAGE=PROGRAM"))?;
            let program = PathBuf::from(program);
            anyhow::ensure!(
                program.is_file(),
                "--image {image}: {} is not a file",
                program.display()
            );
            images.insert(image.to_owned(), program);
        }
        if let Some(dir) = &self.log_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        anyhow::ensure!(
            pod_security::LEVELS.contains(&self.pod_security.as_str()),
            "--pod-security must be privileged, baseline or restricted, got {:?}",
            self.pod_security
        );
        anyhow::ensure!(
            self.host_workloads.is_empty() || !self.network_policies.is_empty(),
            "--host-workload needs --network-policy (without policies every connection is let through)"
        );
        let network = if self.network_policies.is_empty() {
            None
        } else {
            anyhow::ensure!(
                std::path::Path::new("/proc/net/tcp").exists(),
                "--network-policy needs Linux's /proc (to find who opened each connection)"
            );
            let workloads = self
                .host_workloads
                .iter()
                .map(|w| network::HostWorkload::parse(w))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Some(Arc::new(network::Network::load(
                &self.network_policies,
                &self.namespace,
                workloads,
            )?))
        };
        Ok(NodeConfig {
            network,
            game_server_bin,
            images,
            namespaces: NodeConfig::namespaces_with(&self.namespace, Some(&self.pod_security)),
            secrets,
            log_dir: self.log_dir.clone(),
            strict_by_default: self.field_validation == FieldValidation::Strict,
            rbac,
        })
    }

    pub fn behaviour(&self) -> Behaviour {
        Behaviour {
            start_delay_ms: self.start_delay_ms,
            never_ready: 0,
            bookmark_interval_ms: self.bookmark_interval_ms,
            max_watch_seconds: self.max_watch_seconds,
        }
    }
}

/// A kubeconfig pointing at `addr`, with `namespace` as its default.
pub fn kubeconfig(addr: SocketAddr, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-sim\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: kube-sim\n  context:\n    cluster: kube-sim\n    user: kube-sim\n    namespace: {namespace}\ncurrent-context: kube-sim\nusers:\n- name: kube-sim\n  user: {{}}\n"
    )
}

/// Serves the API on `listener` until `shutdown`; then every container is killed.
pub async fn run(
    listener: TcpListener,
    cluster: Arc<Cluster>,
    kubeconfig_path: Option<(PathBuf, String)>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    if let Some((path, namespace)) = kubeconfig_path {
        std::fs::write(&path, kubeconfig(addr, &namespace)).with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(%addr, "kube-sim serving the Kubernetes API");
    println!("LISTENING {addr}");
    let served = axum::serve(listener, api::router(cluster.clone()))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    cluster.stop_all();
    // Give the kubelets a moment to reap their containers.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    served.context("serving the API")
}

/// Starts kube-sim in this process on a free loopback port (for tests): the cluster, its
/// address, and the token that stops it.
pub async fn start(
    node: NodeConfig,
    behaviour: Behaviour,
) -> anyhow::Result<(Arc<Cluster>, SocketAddr, CancellationToken)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cluster = Cluster::new(node, behaviour, 10_000);
    let shutdown = CancellationToken::new();
    let api = api::router(cluster.clone());
    let stop = shutdown.clone();
    let c = cluster.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, api)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        c.stop_all();
    });
    Ok((cluster, addr, shutdown))
}
