//! Backend settings (DESIGN §9): each a flag with an environment variable, validated before
//! anything connects or binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use protocol::TicketSecret;
use protocol::cli::seconds;

/// How game servers are started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// A child process per session, on this machine.
    Local,
    /// A Pod per session, through the Kubernetes API.
    Kubernetes,
    /// No server: sessions are formed, recorded and ended at once with `dry_run`.
    None,
}

/// The raw command line and environment.
#[derive(Debug, Clone, Parser)]
#[command(name = "backend", version, about = "matchplane's matchmaking control plane")]
pub struct Config {
    /// Address of the HTTP API.
    #[arg(long, env = "BIND", default_value = "0.0.0.0:8081")]
    pub bind: SocketAddr,
    /// Redis, shared by every replica.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// PostgreSQL for match history.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "mp")]
    pub redis_key_prefix: String,
    /// Shared HMAC secret for tickets and report tokens.
    #[arg(long, env = "TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: Option<String>,
    /// Bearer token for operator endpoints; unset disables them.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Players per full session.
    #[arg(long, env = "SESSION_SIZE", default_value_t = 12)]
    pub session_size: u32,
    /// Fewest players in a partial session.
    #[arg(long, env = "MIN_PARTIAL_SESSION_SIZE", default_value_t = 2)]
    pub min_partial_session_size: u32,
    /// How long the oldest queued player waits before a partial session forms.
    #[arg(long, env = "FLUSH_WAIT_SECONDS", default_value_t = 15.0)]
    pub flush_wait_seconds: f64,
    /// How game servers run.
    #[arg(long, env = "RUNTIME", value_enum, default_value = "local")]
    pub runtime: RuntimeKind,
    /// The game-server binary for the local runtime.
    #[arg(long, env = "GAME_SERVER_BIN", default_value = "game-server")]
    pub game_server_bin: PathBuf,
    /// Log filter passed to local game servers as RUST_LOG.
    #[arg(long, env = "GAME_SERVER_LOG", default_value = "warn")]
    pub game_server_log: String,
    /// A server not ready by then fails its session, and its players go back to the queue.
    #[arg(long, env = "SERVER_READY_TIMEOUT_SECONDS", default_value_t = 60.0)]
    pub server_ready_timeout_seconds: f64,
    /// The proxy's public host, returned to matched players as `connect_host`.
    #[arg(long, env = "PUBLIC_HOST", default_value = "127.0.0.1")]
    pub public_host: String,
    /// The proxy's public port, returned to matched players as `connect_port`.
    #[arg(long, env = "PUBLIC_PORT", default_value_t = 8080)]
    pub public_port: u16,
    /// This replica's name in session records; defaults to the host name.
    #[arg(long, env = "INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// URL at which game servers reach this backend's result endpoint; defaults to the
    /// bound address on loopback (right for the local runtime).
    #[arg(long, env = "BACKEND_INTERNAL_URL")]
    pub backend_internal_url: Option<String>,
    /// Lifetime of a player's ticket.
    #[arg(long, env = "TICKET_TTL_SECONDS", default_value_t = 600)]
    pub ticket_ttl_seconds: u32,
    /// On SIGTERM, how long running matches may go on before their servers are terminated.
    #[arg(long, env = "SHUTDOWN_GRACE_SECONDS", default_value_t = 30.0)]
    pub shutdown_grace_seconds: f64,
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
    /// The Secret holding the ticket secret, mounted into game-server pods.
    #[arg(long, env = "TICKET_SECRET_NAME", default_value = "matchplane-ticket")]
    pub ticket_secret_name: String,
    /// The key of the ticket secret in that Secret.
    #[arg(long, env = "TICKET_SECRET_KEY", default_value = "ticket-secret")]
    pub ticket_secret_key: String,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub redis_url: String,
    pub database_url: String,
    pub key_prefix: String,
    pub secret: TicketSecret,
    pub admin_token: Option<String>,
    pub session_size: u32,
    pub min_partial: u32,
    pub flush_wait: Duration,
    pub runtime: RuntimeKind,
    pub game_server_bin: PathBuf,
    pub game_server_log: String,
    pub ready_timeout: Duration,
    pub public_host: String,
    pub public_port: u16,
    pub instance_id: String,
    /// `None`: derive from the bound listener.
    pub internal_url: Option<String>,
    pub ticket_ttl: Duration,
    pub shutdown_grace: Duration,
    pub namespace: String,
    pub game_server_image: String,
    /// Game-server pods, for the kubernetes runtime.
    pub pod_template: crate::runtime::kubernetes::PodTemplate,
}

/// Game-server settings the runtimes pass on when they are set in the backend's environment.
pub const GAME_SERVER_PASSTHROUGH: [&str; 6] = [
    "START_POLICY",
    "START_GRACE_SECONDS",
    "OPEN_TIMEOUT_SECONDS",
    "EMPTY_GRACE_SECONDS",
    "MAX_MATCH_SECONDS",
    "LOG_FORMAT",
];

fn passthrough() -> Vec<(String, String)> {
    GAME_SERVER_PASSTHROUGH
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| ((*name).to_owned(), value)))
        .collect()
}

impl Config {
    /// The game-server Pod template from these settings; needs no secret or database.
    pub fn pod_template(&self) -> Result<crate::runtime::kubernetes::PodTemplate, String> {
        let mut node_selector = std::collections::BTreeMap::new();
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
        let env = passthrough();
        let number = |name: &str, default: i64| {
            env.iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.parse::<f64>().ok())
                .map_or(default, |v| v.ceil() as i64)
        };
        Ok(crate::runtime::kubernetes::PodTemplate {
            namespace: self.namespace.clone(),
            image: self.game_server_image.clone(),
            pull_policy: self.game_server_pull_policy.clone(),
            cpu_request: self.game_server_cpu_request.clone(),
            cpu_limit: self.game_server_cpu_limit.clone(),
            memory_request: self.game_server_memory_request.clone(),
            memory_limit: self.game_server_memory_limit.clone(),
            node_selector,
            tolerations,
            secret_name: self.ticket_secret_name.clone(),
            secret_key: self.ticket_secret_key.clone(),
            // Open timeout + longest match + time to drain and report.
            active_deadline_seconds: number("OPEN_TIMEOUT_SECONDS", 60) + number("MAX_MATCH_SECONDS", 86_400) + 120,
            extra_env: env,
        })
    }

    /// Checks every setting; the error is one line naming the setting.
    pub fn validate(&self) -> Result<Settings, String> {
        let secret = TicketSecret::new(self.ticket_secret.clone().unwrap_or_default())
            .map_err(|_| "TICKET_SECRET (--ticket-secret) is required and must not be empty".to_owned())?;
        let database_url = self
            .database_url
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or("DATABASE_URL (--database-url) is required")?;
        if self.session_size < 1 || self.session_size > 1000 {
            return Err(format!("SESSION_SIZE must be 1 to 1000, got {}", self.session_size));
        }
        if self.min_partial_session_size < 1 || self.min_partial_session_size > self.session_size {
            return Err(format!(
                "MIN_PARTIAL_SESSION_SIZE must be 1 to SESSION_SIZE ({}), got {}",
                self.session_size, self.min_partial_session_size
            ));
        }
        let prefix = self.redis_key_prefix.trim();
        if prefix.is_empty() || prefix.contains(char::is_whitespace) {
            return Err("REDIS_KEY_PREFIX must be a non-empty word".into());
        }
        if self.admin_token.as_deref().is_some_and(|t| t.len() < 8) {
            return Err("ADMIN_TOKEN must be at least 8 characters".into());
        }
        let instance_id = match &self.instance_id {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => host_name(),
        };
        if self.runtime == RuntimeKind::Kubernetes && self.backend_internal_url.as_deref().is_none_or(str::is_empty) {
            return Err(
                "BACKEND_INTERNAL_URL is required with RUNTIME=kubernetes: the URL pods reach the backend at".into(),
            );
        }
        let pod_template = self.pod_template()?;
        let ready_timeout = seconds("SERVER_READY_TIMEOUT_SECONDS", self.server_ready_timeout_seconds)?;
        if ready_timeout.is_zero() {
            return Err("SERVER_READY_TIMEOUT_SECONDS must be > 0".into());
        }
        Ok(Settings {
            redis_url: self.redis_url.clone(),
            database_url,
            key_prefix: prefix.to_owned(),
            secret,
            admin_token: self.admin_token.clone().filter(|t| !t.is_empty()),
            session_size: self.session_size,
            min_partial: self.min_partial_session_size,
            flush_wait: seconds("FLUSH_WAIT_SECONDS", self.flush_wait_seconds)?,
            runtime: self.runtime,
            game_server_bin: self.game_server_bin.clone(),
            game_server_log: self.game_server_log.clone(),
            ready_timeout,
            public_host: self.public_host.clone(),
            public_port: self.public_port,
            instance_id,
            internal_url: self
                .backend_internal_url
                .clone()
                .map(|u| u.trim_end_matches('/').to_owned()),
            ticket_ttl: Duration::from_secs(u64::from(self.ticket_ttl_seconds.max(1))),
            shutdown_grace: seconds("SHUTDOWN_GRACE_SECONDS", self.shutdown_grace_seconds)?,
            namespace: self.namespace.clone(),
            game_server_image: self.game_server_image.clone(),
            pod_template,
        })
    }
}

/// The host name (a pod's name in Kubernetes), for `INSTANCE_ID`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "backend".to_owned())
}
