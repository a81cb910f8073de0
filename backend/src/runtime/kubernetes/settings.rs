//! The `kubernetes` runtime's settings: the game-server Pods it creates and how it talks to
//! the API server.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use service::cli::seconds;
use service::telemetry::LogFormat;

use super::PodTemplate;
use crate::runtime::game_server::GameServerArgs;
use crate::runtime::warm::Bounds;

/// The `kubernetes` runtime's settings: the game-server Pods it creates.
#[derive(Debug, Clone, Args)]
pub struct KubernetesArgs {
    /// The kubeconfig file to reach the API server with; unset: the in-cluster service
    /// account, else the files in `KUBECONFIG`, else `~/.kube/config` (as kubectl).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// How long a finished game-server pod is kept (for `kubectl logs`) before it is deleted.
    #[arg(long, env = "FINISHED_POD_GRACE_SECONDS", default_value_t = 30.0)]
    pub finished_pod_grace_seconds: f64,
    /// How long one Kubernetes API call (a create, claim or delete; not the pod watch) may wait
    /// for its answer before it fails and is retried.
    #[arg(long, env = "KUBE_API_TIMEOUT_SECONDS", default_value_t = 30.0)]
    pub kube_api_timeout_seconds: f64,
    /// Kubernetes namespace for game-server pods.
    #[arg(long, env = "NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Container image for game-server pods.
    #[arg(long, env = "GAME_SERVER_IMAGE", default_value = "matchplane/game-server:dev")]
    pub game_server_image: String,
    /// Image pull policy for game-server pods.
    #[arg(long, env = "GAME_SERVER_PULL_POLICY", default_value = "IfNotPresent")]
    pub game_server_pull_policy: String,
    /// CPU request of a game-server pod.
    #[arg(long, env = "GAME_SERVER_CPU_REQUEST", default_value = "50m")]
    pub game_server_cpu_request: String,
    /// CPU limit of a game-server pod.
    #[arg(long, env = "GAME_SERVER_CPU_LIMIT", default_value = "500m")]
    pub game_server_cpu_limit: String,
    /// Memory request of a game-server pod.
    #[arg(long, env = "GAME_SERVER_MEMORY_REQUEST", default_value = "16Mi")]
    pub game_server_memory_request: String,
    /// Memory limit of a game-server pod.
    #[arg(long, env = "GAME_SERVER_MEMORY_LIMIT", default_value = "64Mi")]
    pub game_server_memory_limit: String,
    /// Node selector for game-server pods: `key=value,key=value`.
    #[arg(long, env = "GAME_SERVER_NODE_SELECTOR", default_value = "")]
    pub game_server_node_selector: String,
    /// Tolerations for game-server pods, as a JSON array of Kubernetes tolerations.
    #[arg(long, env = "GAME_SERVER_TOLERATIONS", default_value = "")]
    pub game_server_tolerations: String,
    /// Secrets the kubelet pulls game-server images with (a private registry): `name,name`, in
    /// the game servers' namespace.
    #[arg(long, env = "GAME_SERVER_IMAGE_PULL_SECRETS", default_value = "")]
    pub game_server_image_pull_secrets: String,
    /// The Secret holding the ticket secret, mounted into game-server pods.
    #[arg(long, env = "TICKET_SECRET_NAME", default_value = "matchplane-ticket")]
    pub ticket_secret_name: String,
    /// The key of the ticket secret in that Secret.
    #[arg(long, env = "TICKET_SECRET_KEY", default_value = "ticket-secret")]
    pub ticket_secret_key: String,
}

/// A region's cluster (`REGIONS`): a context of a kubeconfig file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub context: String,
    /// `None`: the runtime's kubeconfig, else `KUBECONFIG`'s files, else `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
}

/// What the `kubernetes` runtime needs.
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    pub(crate) template: PodTemplate,
    /// `None`: in-cluster configuration (or the default kubeconfig).
    pub(crate) kubeconfig: Option<PathBuf>,
    /// How long finished Pods are kept before they are deleted.
    pub(crate) finished_pod_grace: Duration,
    /// How long one API call (not the watch) may wait for its answer.
    pub(crate) api_timeout: Duration,
    /// The warm Pod pool's bounds, for the whole cluster (`max` 0: no warm Pods).
    pub(crate) warm: Bounds,
}

impl KubernetesArgs {
    /// The game-server Pod template; needs no secret or database.
    pub fn pod_template(&self, game: &GameServerArgs) -> Result<PodTemplate, String> {
        let mut node_selector = BTreeMap::new();
        for pair in self
            .game_server_node_selector
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("GAME_SERVER_NODE_SELECTOR must be key=value pairs, got {pair:?}"))?;
            node_selector.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        let tolerations = if self.game_server_tolerations.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&self.game_server_tolerations)
                .map_err(|e| format!("GAME_SERVER_TOLERATIONS must be a JSON array of tolerations: {e}"))?
        };
        let image_pull_secrets = self
            .game_server_image_pull_secrets
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(|name| {
                dns_subdomain(name).then(|| name.to_owned()).ok_or_else(|| {
                    format!("GAME_SERVER_IMAGE_PULL_SECRETS must be Secret names separated by commas, got {name:?}")
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Pods log JSON for the cluster's log pipeline, whatever the backend itself writes.
        let extra_env = game.env(LogFormat::Json);
        Ok(PodTemplate {
            namespace: self.namespace.clone(),
            image: self.game_server_image.clone(),
            pull_policy: self.game_server_pull_policy.clone(),
            cpu_request: self.game_server_cpu_request.clone(),
            cpu_limit: self.game_server_cpu_limit.clone(),
            memory_request: self.game_server_memory_request.clone(),
            memory_limit: self.game_server_memory_limit.clone(),
            node_selector,
            tolerations,
            image_pull_secrets,
            secret_name: self.ticket_secret_name.clone(),
            secret_key: self.ticket_secret_key.clone(),
            // Open timeout + longest match + time to drain and report.
            active_deadline_seconds: GameServerArgs::whole_seconds(
                &game.open_timeout_seconds,
                protocol::server::DEFAULT_OPEN_TIMEOUT_SECONDS.ceil() as i64,
            ) + GameServerArgs::whole_seconds(
                &game.max_match_seconds,
                i64::try_from(protocol::server::DEFAULT_MAX_MATCH_SECONDS).unwrap_or(i64::MAX),
            ) + 120,
            extra_env,
        })
    }

    /// Checks the settings: the Pod template, the kubeconfig, the time bounds.
    pub fn validate(&self, game: &GameServerArgs, warm: Bounds) -> Result<KubernetesSettings, String> {
        Ok(KubernetesSettings {
            template: self.pod_template(game)?,
            kubeconfig: self.kubeconfig.clone().filter(|p| !p.as_os_str().is_empty()),
            finished_pod_grace: seconds("FINISHED_POD_GRACE_SECONDS", self.finished_pod_grace_seconds)?,
            api_timeout: match seconds("KUBE_API_TIMEOUT_SECONDS", self.kube_api_timeout_seconds)? {
                zero if zero.is_zero() => return Err("KUBE_API_TIMEOUT_SECONDS must be above 0".into()),
                timeout => timeout,
            },
            warm,
        })
    }
}

/// Whether `name` is a valid object name (an RFC 1123 subdomain), as the API server requires
/// of a Secret's.
fn dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
