//! Backend settings: each a flag with an environment variable, read once by clap into
//! [`Config`] and validated into [`Settings`] before anything connects or binds.
//!
//! The flags come in groups: the core ones every backend needs, then one group per runtime
//! ([`LocalArgs`], [`KubernetesArgs`]), validated only when that runtime is chosen, and the
//! game-server settings both runtimes hand on to their servers ([`GameServerArgs`]).
//! [`Settings::builder`] makes settings for tests and tools from the same defaults without
//! reading the environment, so an exported variable in a developer's shell changes nothing.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use identity::{PlayerAuthArgs, PlayerAuthSettings};
use protocol::TicketSecret;
use service::cli::seconds;
use service::redis::{RedisArgs, RedisTarget};
use service::telemetry::{LogArgs, LogFormat};

use crate::runtime::kubernetes::PodTemplate;
use matchmaking_core::queues::Queues;
use matchmaking_core::store::FormRules;

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
    #[command(flatten)]
    pub core: CoreArgs,
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    #[command(flatten)]
    pub game: GameServerArgs,
    #[command(flatten)]
    pub players: PlayerAuthArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// What every backend needs, whatever its runtime.
#[derive(Debug, Clone, Args)]
pub struct CoreArgs {
    /// Address of the HTTP API.
    #[arg(long, env = "BIND", default_value = "0.0.0.0:8081")]
    pub bind: SocketAddr,
    /// Redis, shared by every replica.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// PostgreSQL for match history.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "mp")]
    pub redis_key_prefix: String,
    /// Shared HMAC secret for tickets and report tokens.
    #[arg(long, env = "TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: Option<String>,
    /// Operators' bearer token (at least 8 characters): everything a service may do, plus
    /// ending sessions; unset disables the operator endpoints.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The studio's own services' bearer token (at least 32 characters): may join any
    /// player and read any status, session or queue; unset: no service callers.
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
    /// Players per full session.
    #[arg(long, env = "SESSION_SIZE", default_value_t = 12)]
    pub session_size: u32,
    /// Fewest players in a partial session.
    #[arg(long, env = "MIN_PARTIAL_SESSION_SIZE", default_value_t = 2)]
    pub min_partial_session_size: u32,
    /// How long the oldest queued player waits before a partial session forms.
    #[arg(long, env = "FLUSH_WAIT_SECONDS", default_value_t = 15.0)]
    pub flush_wait_seconds: f64,
    /// A YAML file of matchmaking queues and their rules; unset: one `default` queue in join
    /// order from SESSION_SIZE, MIN_PARTIAL_SESSION_SIZE and FLUSH_WAIT_SECONDS.
    #[arg(long, env = "MATCHMAKING_CONFIG")]
    pub matchmaking_config: Option<PathBuf>,
    /// How game servers run.
    #[arg(long, env = "RUNTIME", value_enum, default_value = "local")]
    pub runtime: RuntimeKind,
    /// Warm game servers kept started ahead of demand, at least (per replica with RUNTIME=local,
    /// for the whole cluster with RUNTIME=kubernetes).
    #[arg(long, env = "WARM_POOL_MIN", default_value_t = 0)]
    pub warm_pool_min: u32,
    /// Warm game servers at most (default: twice WARM_POOL_MIN); between the bounds the pool
    /// follows the recent rate of sessions times the measured cold-start time.
    #[arg(long, env = "WARM_POOL_MAX")]
    pub warm_pool_max: Option<u32>,
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
    /// The host name (a Pod's name in Kubernetes), the default `INSTANCE_ID`.
    #[arg(long, env = "HOSTNAME", hide = true)]
    pub hostname: Option<String>,
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
    /// A history row still open whose session Redis has not known for this long (Redis
    /// restarted without its data, or a failover lost it) is ended with reason `lost`.
    #[arg(long, env = "LOST_SESSION_GRACE_SECONDS", default_value_t = 60.0)]
    pub lost_session_grace_seconds: f64,
}

/// The `local` runtime's settings.
#[derive(Debug, Clone, Args)]
pub struct LocalArgs {
    /// The game-server binary for the local runtime.
    #[arg(long, env = "GAME_SERVER_BIN", default_value = "game-server")]
    pub game_server_bin: PathBuf,
    /// Log filter passed to local game servers as RUST_LOG.
    #[arg(long, env = "GAME_SERVER_LOG", default_value = "warn")]
    pub game_server_log: String,
    /// The search path handed to local game servers (their only inherited variable).
    #[arg(long = "game-server-path", env = "PATH", hide = true)]
    pub path: Option<OsString>,
}

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
    /// The Secret holding the ticket secret, mounted into game-server pods.
    #[arg(long, env = "TICKET_SECRET_NAME", default_value = "matchplane-ticket")]
    pub ticket_secret_name: String,
    /// The key of the ticket secret in that Secret.
    #[arg(long, env = "TICKET_SECRET_KEY", default_value = "ticket-secret")]
    pub ticket_secret_key: String,
}

/// Game-server settings both runtimes hand on to their servers, when set.
#[derive(Debug, Clone, Args)]
pub struct GameServerArgs {
    /// The servers' START_POLICY.
    #[arg(long = "game-start-policy", env = "START_POLICY")]
    pub start_policy: Option<String>,
    /// The servers' START_GRACE_SECONDS.
    #[arg(long = "game-start-grace-seconds", env = "START_GRACE_SECONDS")]
    pub start_grace_seconds: Option<String>,
    /// The servers' OPEN_TIMEOUT_SECONDS.
    #[arg(long = "game-open-timeout-seconds", env = "OPEN_TIMEOUT_SECONDS")]
    pub open_timeout_seconds: Option<String>,
    /// The servers' EMPTY_GRACE_SECONDS.
    #[arg(long = "game-empty-grace-seconds", env = "EMPTY_GRACE_SECONDS")]
    pub empty_grace_seconds: Option<String>,
    /// The servers' MAX_MATCH_SECONDS.
    #[arg(long = "game-max-match-seconds", env = "MAX_MATCH_SECONDS")]
    pub max_match_seconds: Option<String>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(crate) redis: RedisTarget,
    pub(crate) database_url: String,
    pub(crate) key_prefix: String,
    pub(crate) secret: TicketSecret,
    pub(crate) admin_token: Option<String>,
    pub(crate) service_token: Option<String>,
    /// How player tokens are verified.
    pub(crate) players: PlayerAuthSettings,
    /// Every queue (the default queue alone without MATCHMAKING_CONFIG).
    pub(crate) queues: Arc<Queues>,
    pub(crate) ready_timeout: Duration,
    pub(crate) public_host: String,
    pub(crate) public_port: u16,
    pub(crate) instance_id: String,
    /// `None`: derive from the bound listener.
    pub(crate) internal_url: Option<String>,
    pub(crate) ticket_ttl: Duration,
    pub(crate) shutdown_grace: Duration,
    /// How long an open history row's session may be unknown to Redis before it is `lost`.
    pub(crate) lost_grace: Duration,
    pub(crate) runtime: RuntimeSettings,
}

/// The chosen runtime and its own settings.
#[derive(Debug, Clone)]
pub enum RuntimeSettings {
    Local(LocalSettings),
    Kubernetes {
        template: Box<PodTemplate>,
        /// `None`: in-cluster configuration (or the default kubeconfig).
        kubeconfig: Option<PathBuf>,
        /// How long finished Pods are kept before they are deleted.
        finished_pod_grace: Duration,
        /// How long one API call (not the watch) may wait for its answer.
        api_timeout: Duration,
        /// The warm Pod pool's bounds, for the whole cluster (`max` 0: no warm Pods).
        warm: crate::runtime::warm::Bounds,
    },
    None,
}

/// What the `local` runtime needs.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    pub(crate) binary: PathBuf,
    /// The servers' RUST_LOG.
    pub(crate) log_filter: String,
    /// The servers' PATH.
    pub(crate) path: Option<OsString>,
    /// Further game-server environment (START_POLICY, ..., LOG_FORMAT).
    pub(crate) env: Vec<(String, String)>,
    /// The warm pool's bounds (`max` 0: no warm servers).
    pub(crate) warm: crate::runtime::warm::Bounds,
}

impl RuntimeSettings {
    /// The runtime's name, as `RUNTIME` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            RuntimeSettings::Local(_) => "local",
            RuntimeSettings::Kubernetes { .. } => "kubernetes",
            RuntimeSettings::None => "none",
        }
    }
}

impl GameServerArgs {
    /// The settings that are set, as the servers' environment.
    fn env(&self, log_format: LogFormat) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("START_POLICY", &self.start_policy),
            ("START_GRACE_SECONDS", &self.start_grace_seconds),
            ("OPEN_TIMEOUT_SECONDS", &self.open_timeout_seconds),
            ("EMPTY_GRACE_SECONDS", &self.empty_grace_seconds),
            ("MAX_MATCH_SECONDS", &self.max_match_seconds),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name.to_owned(), v)))
        .collect();
        env.push(("LOG_FORMAT".to_owned(), log_format.as_str().to_owned()));
        env
    }

    /// A setting in whole seconds, rounded up, or `default`.
    fn whole_seconds(value: &Option<String>, default: i64) -> i64 {
        value
            .as_deref()
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(default, |v| v.ceil() as i64)
    }
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
            secret_name: self.ticket_secret_name.clone(),
            secret_key: self.ticket_secret_key.clone(),
            // Open timeout + longest match + time to drain and report.
            active_deadline_seconds: GameServerArgs::whole_seconds(&game.open_timeout_seconds, 60)
                + GameServerArgs::whole_seconds(&game.max_match_seconds, 86_400)
                + 120,
            extra_env,
        })
    }
}

impl Config {
    /// Checks every setting the chosen runtime uses; the error is one line naming the setting.
    pub fn validate(&self) -> Result<Settings, String> {
        let core = &self.core;
        let secret = TicketSecret::new(core.ticket_secret.clone().unwrap_or_default())
            .map_err(|_| "TICKET_SECRET (--ticket-secret) is required and must not be empty".to_owned())?;
        let database_url = core
            .database_url
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or("DATABASE_URL (--database-url) is required")?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err("DATABASE_URL is not a PostgreSQL URL: it must start with postgres:// or postgresql://".into());
        }
        if let Err(e) = database_url.parse::<sqlx::postgres::PgConnectOptions>() {
            return Err(format!("DATABASE_URL is not a PostgreSQL URL: {e}"));
        }
        if core.session_size < 1 || core.session_size > 1000 {
            return Err(format!("SESSION_SIZE must be 1 to 1000, got {}", core.session_size));
        }
        if core.min_partial_session_size < 1 || core.min_partial_session_size > core.session_size {
            return Err(format!(
                "MIN_PARTIAL_SESSION_SIZE must be 1 to SESSION_SIZE ({}), got {}",
                core.session_size, core.min_partial_session_size
            ));
        }
        let prefix = core.redis_key_prefix.trim();
        if prefix.is_empty() || prefix.contains(|c: char| c.is_whitespace() || c == '{' || c == '}') {
            return Err("REDIS_KEY_PREFIX must be a non-empty word without braces".into());
        }
        if core
            .admin_token
            .as_deref()
            .is_some_and(|t| !t.is_empty() && t.len() < 8)
        {
            return Err("ADMIN_TOKEN must be at least 8 characters".into());
        }
        if core
            .service_token
            .as_deref()
            .is_some_and(|t| !t.is_empty() && t.len() < 32)
        {
            return Err("SERVICE_TOKEN must be at least 32 characters".into());
        }
        let players = self.players.validate()?;
        let instance_id = [&core.instance_id, &core.hostname]
            .into_iter()
            .flatten()
            .map(|id| id.trim())
            .find(|id| !id.is_empty())
            .map(str::to_owned)
            .or_else(etc_hostname)
            .unwrap_or_else(|| "backend".to_owned());
        let ready_timeout = seconds("SERVER_READY_TIMEOUT_SECONDS", core.server_ready_timeout_seconds)?;
        if ready_timeout.is_zero() {
            return Err("SERVER_READY_TIMEOUT_SECONDS must be > 0".into());
        }
        let warm_min = core.warm_pool_min;
        let warm_max = core.warm_pool_max.unwrap_or(warm_min.saturating_mul(2));
        if warm_max < warm_min || warm_max > 10_000 {
            return Err(format!(
                "WARM_POOL_MAX must be WARM_POOL_MIN ({warm_min}) to 10000, got {warm_max}"
            ));
        }
        if warm_max > 0 && core.runtime == RuntimeKind::None {
            return Err(
                "WARM_POOL_MIN/WARM_POOL_MAX keep warm game servers; RUNTIME=none starts none (unset them)".into(),
            );
        }
        let warm = crate::runtime::warm::Bounds {
            min: warm_min as usize,
            max: warm_max as usize,
        };
        let runtime = match core.runtime {
            RuntimeKind::Local => RuntimeSettings::Local(LocalSettings {
                warm,
                binary: find_executable(&self.local.game_server_bin, self.local.path.as_deref()).ok_or_else(|| {
                    format!(
                        "GAME_SERVER_BIN {} is not an executable file{} (RUNTIME=local starts one per session)",
                        self.local.game_server_bin.display(),
                        if self.local.game_server_bin.components().count() > 1 {
                            ""
                        } else {
                            " in PATH"
                        }
                    )
                })?,
                log_filter: self.local.game_server_log.clone(),
                path: self.local.path.clone(),
                env: self.game.env(self.log.log_format),
            }),
            RuntimeKind::Kubernetes => {
                if core.backend_internal_url.as_deref().is_none_or(str::is_empty) {
                    return Err(
                        "BACKEND_INTERNAL_URL is required with RUNTIME=kubernetes: the URL pods reach the backend at"
                            .into(),
                    );
                }
                RuntimeSettings::Kubernetes {
                    template: Box::new(self.kubernetes.pod_template(&self.game)?),
                    kubeconfig: self.kubernetes.kubeconfig.clone().filter(|p| !p.as_os_str().is_empty()),
                    finished_pod_grace: seconds(
                        "FINISHED_POD_GRACE_SECONDS",
                        self.kubernetes.finished_pod_grace_seconds,
                    )?,
                    api_timeout: match seconds("KUBE_API_TIMEOUT_SECONDS", self.kubernetes.kube_api_timeout_seconds)? {
                        zero if zero.is_zero() => return Err("KUBE_API_TIMEOUT_SECONDS must be above 0".into()),
                        timeout => timeout,
                    },
                    warm,
                }
            }
            RuntimeKind::None => RuntimeSettings::None,
        };
        let flush_wait = seconds("FLUSH_WAIT_SECONDS", core.flush_wait_seconds)?;
        let rules = FormRules {
            size: core.session_size,
            min_partial: core.min_partial_session_size,
            flush_wait_ms: i64::try_from(flush_wait.as_millis()).unwrap_or(i64::MAX),
        };
        let queues = match core.matchmaking_config.as_deref().filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => Queues::load(path)?,
            None => Queues::default_only(rules),
        };
        Ok(Settings {
            redis: core.redis.validate()?,
            database_url,
            key_prefix: prefix.to_owned(),
            secret,
            admin_token: core.admin_token.clone().filter(|t| !t.is_empty()),
            service_token: core.service_token.clone().filter(|t| !t.is_empty()),
            players,
            queues: Arc::new(queues),
            ready_timeout,
            public_host: core.public_host.clone(),
            public_port: core.public_port,
            instance_id,
            internal_url: core
                .backend_internal_url
                .clone()
                .map(|u| u.trim_end_matches('/').to_owned()),
            ticket_ttl: Duration::from_secs(u64::from(core.ticket_ttl_seconds.max(1))),
            shutdown_grace: seconds("SHUTDOWN_GRACE_SECONDS", core.shutdown_grace_seconds)?,
            lost_grace: seconds("LOST_SESSION_GRACE_SECONDS", core.lost_session_grace_seconds)?,
            runtime,
        })
    }

    /// Every default, and nothing from the environment.
    pub fn defaults() -> Config {
        service::cli::parse_without_env(["backend"]).expect("every setting has a default or is optional")
    }
}

/// `bin` if it is an executable file; a bare name is looked up in `path`, as the spawn does.
fn find_executable(bin: &std::path::Path, path: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let executable = |p: &std::path::Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if bin.components().count() > 1 {
        return executable(bin).then(|| bin.to_path_buf());
    }
    std::env::split_paths(path?)
        .map(|dir| dir.join(bin))
        .find(|candidate| executable(candidate))
}

/// The host name from `/etc/hostname`, when `HOSTNAME` is not set.
fn etc_hostname() -> Option<String> {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

impl Settings {
    /// Settings built in code from the defaults, never from the environment.
    pub fn builder() -> SettingsBuilder {
        SettingsBuilder(Config::defaults())
    }
}

/// Typed construction of [`Settings`]; [`SettingsBuilder::build`] validates as the binary does.
#[derive(Debug, Clone)]
pub struct SettingsBuilder(Config);

impl SettingsBuilder {
    pub fn redis_url(mut self, url: &str) -> Self {
        self.0.core.redis.redis_url = url.to_owned();
        self
    }

    /// Redis through Sentinels watching `master`.
    pub fn redis_sentinels(mut self, sentinels: &[String], master: &str) -> Self {
        self.0.core.redis.redis_sentinels = sentinels.to_vec();
        self.0.core.redis.redis_sentinel_master = master.to_owned();
        self
    }

    pub fn database_url(mut self, url: &str) -> Self {
        self.0.core.database_url = Some(url.to_owned());
        self
    }

    pub fn key_prefix(mut self, prefix: &str) -> Self {
        self.0.core.redis_key_prefix = prefix.to_owned();
        self
    }

    pub fn ticket_secret(mut self, secret: &str) -> Self {
        self.0.core.ticket_secret = Some(secret.to_owned());
        self
    }

    pub fn admin_token(mut self, token: &str) -> Self {
        self.0.core.admin_token = Some(token.to_owned());
        self
    }

    pub fn service_token(mut self, token: &str) -> Self {
        self.0.core.service_token = Some(token.to_owned());
        self
    }

    /// Player tokens are HS256 JWTs signed with `secret`.
    pub fn player_token_secret(mut self, secret: &str) -> Self {
        self.0.players.player_token_secret = Some(secret.to_owned());
        self.0.players.player_jwks = None;
        self
    }

    /// Player tokens are verified with the keys of this JWKS (a file, or an https URL with
    /// `ca` trusted beside the system's authorities).
    pub fn player_jwks(mut self, jwks: &str, ca: Option<PathBuf>) -> Self {
        self.0.players.player_jwks = Some(jwks.to_owned());
        self.0.players.player_jwks_ca = ca;
        self.0.players.player_token_secret = None;
        self
    }

    pub fn player_token_issuer(mut self, issuer: &str) -> Self {
        self.0.players.player_token_issuer = Some(issuer.to_owned());
        self
    }

    pub fn player_token_audience(mut self, audience: &str) -> Self {
        self.0.players.player_token_audience = Some(audience.to_owned());
        self
    }

    /// `PLAYER_AUTH`: `jwt` (the default) or `none` (open player endpoints).
    pub fn player_auth(mut self, mode: identity::PlayerAuthMode) -> Self {
        self.0.players.player_auth = mode;
        self
    }

    pub fn session_size(mut self, size: u32) -> Self {
        self.0.core.session_size = size;
        self
    }

    pub fn min_partial_session_size(mut self, size: u32) -> Self {
        self.0.core.min_partial_session_size = size;
        self
    }

    pub fn flush_wait_seconds(mut self, seconds: f64) -> Self {
        self.0.core.flush_wait_seconds = seconds;
        self
    }

    /// Queues from this YAML file (`MATCHMAKING_CONFIG`).
    pub fn matchmaking_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.core.matchmaking_config = Some(path.into());
        self
    }

    pub fn runtime(mut self, runtime: RuntimeKind) -> Self {
        self.0.core.runtime = runtime;
        self
    }

    /// The warm pool's bounds (`WARM_POOL_MIN`, `WARM_POOL_MAX`).
    pub fn warm_pool(mut self, min: u32, max: u32) -> Self {
        self.0.core.warm_pool_min = min;
        self.0.core.warm_pool_max = Some(max);
        self
    }

    pub fn game_server_bin(mut self, binary: impl Into<PathBuf>) -> Self {
        self.0.local.game_server_bin = binary.into();
        self
    }

    /// The search path local game servers get (wrapper scripts need one).
    pub fn game_server_path(mut self, path: impl Into<OsString>) -> Self {
        self.0.local.path = Some(path.into());
        self
    }

    pub fn server_ready_timeout_seconds(mut self, seconds: f64) -> Self {
        self.0.core.server_ready_timeout_seconds = seconds;
        self
    }

    pub fn shutdown_grace_seconds(mut self, seconds: f64) -> Self {
        self.0.core.shutdown_grace_seconds = seconds;
        self
    }

    pub fn instance_id(mut self, id: &str) -> Self {
        self.0.core.instance_id = Some(id.to_owned());
        self
    }

    /// The `kubernetes` runtime against the API server in this kubeconfig, creating Pods in
    /// `namespace`; pods report to `internal_url`.
    pub fn kubernetes(mut self, kubeconfig: impl Into<PathBuf>, namespace: &str, internal_url: &str) -> Self {
        self.0.core.runtime = RuntimeKind::Kubernetes;
        self.0.kubernetes.kubeconfig = Some(kubeconfig.into());
        self.0.kubernetes.namespace = namespace.to_owned();
        self.0.core.backend_internal_url = Some(internal_url.to_owned());
        self
    }

    pub fn lost_session_grace_seconds(mut self, seconds: f64) -> Self {
        self.0.core.lost_session_grace_seconds = seconds;
        self
    }

    pub fn finished_pod_grace_seconds(mut self, seconds: f64) -> Self {
        self.0.kubernetes.finished_pod_grace_seconds = seconds;
        self
    }

    pub fn kube_api_timeout_seconds(mut self, seconds: f64) -> Self {
        self.0.kubernetes.kube_api_timeout_seconds = seconds;
        self
    }

    pub fn public_address(mut self, host: &str, port: u16) -> Self {
        self.0.core.public_host = host.to_owned();
        self.0.core.public_port = port;
        self
    }

    /// Validates, as the binary does.
    pub fn build(self) -> Result<Settings, String> {
        self.0.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_ignore_the_environment() {
        let config = Config::defaults();
        assert_eq!(config.core.session_size, 12);
        assert_eq!(config.core.runtime, RuntimeKind::Local);
        assert!(config.core.ticket_secret.is_none());
    }

    #[test]
    fn game_server_bin_must_be_an_executable_file() {
        let base = Settings::builder()
            .database_url("postgres://x/y")
            .ticket_secret("s")
            .player_auth(identity::PlayerAuthMode::None);
        assert!(
            base.clone()
                .game_server_bin(std::path::Path::new("/bin/sh"))
                .build()
                .is_ok()
        );
        let plain = std::env::temp_dir().join(format!("mp-not-executable-{}", std::process::id()));
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        for bad in [
            "/no/such/game-server",
            plain.to_str().unwrap(),
            "/tmp",
            "no-such-binary-anywhere",
        ] {
            let err = base
                .clone()
                .game_server_bin(std::path::Path::new(bad))
                .build()
                .unwrap_err();
            assert!(
                err.starts_with(&format!("GAME_SERVER_BIN {bad} is not an executable file")),
                "{err}"
            );
        }
        std::fs::remove_file(&plain).unwrap();
        let base = base.runtime(RuntimeKind::None);
        let err = base.clone().database_url("mysql://x").build().unwrap_err();
        assert!(err.starts_with("DATABASE_URL is not a PostgreSQL URL"), "{err}");
        let err = base.redis_url("http://x").build().unwrap_err();
        assert!(err.starts_with("REDIS_URL is not a Redis URL"), "{err}");
    }

    #[test]
    fn warm_pool_bounds_are_checked() {
        let base = Settings::builder()
            .database_url("postgres://x/y")
            .ticket_secret("s")
            .player_auth(identity::PlayerAuthMode::None)
            .game_server_bin(std::path::Path::new("/bin/sh"));
        let warm = |s: &Settings| match &s.runtime {
            RuntimeSettings::Local(local) => local.warm,
            _ => unreachable!(),
        };
        let off = base.clone().build().unwrap();
        assert!(!warm(&off).enabled(), "no warm servers unless asked");
        let mut config = base.clone();
        config.0.core.warm_pool_min = 5;
        let doubled = config.build().unwrap();
        assert_eq!(
            (warm(&doubled).min, warm(&doubled).max),
            (5, 10),
            "max defaults to twice min"
        );
        let err = base.clone().warm_pool(5, 4).build().unwrap_err();
        assert_eq!(err, "WARM_POOL_MAX must be WARM_POOL_MIN (5) to 10000, got 4");
        let err = base.runtime(RuntimeKind::None).warm_pool(1, 2).build().unwrap_err();
        assert!(err.contains("RUNTIME=none starts none"), "{err}");
    }

    #[test]
    fn player_tokens_need_a_key_unless_player_auth_is_none() {
        let base = Settings::builder()
            .database_url("postgres://x/y")
            .ticket_secret("s")
            .game_server_bin(std::path::Path::new("/bin/sh"));
        let err = base.clone().build().unwrap_err();
        assert!(err.starts_with("PLAYER_AUTH=jwt needs PLAYER_TOKEN_SECRET"), "{err}");
        assert!(base.clone().player_auth(identity::PlayerAuthMode::None).build().is_ok());
        let with_key = base.player_token_secret(&"k".repeat(32));
        assert!(with_key.clone().build().is_ok());
        let err = with_key.clone().service_token("too-short").build().unwrap_err();
        assert!(err.contains("SERVICE_TOKEN"), "{err}");
        let err = with_key.admin_token("short").build().unwrap_err();
        assert!(err.contains("ADMIN_TOKEN"), "{err}");
    }

    #[test]
    fn only_the_chosen_runtime_is_validated() {
        let base = Settings::builder()
            .database_url("postgres://x/y")
            .ticket_secret("s")
            .player_auth(identity::PlayerAuthMode::None);
        let mut broken_pods = base.clone();
        broken_pods.0.kubernetes.game_server_node_selector = "no-equals-sign".into();
        assert!(
            broken_pods
                .clone()
                .runtime(RuntimeKind::Local)
                .game_server_bin(std::path::Path::new("/bin/sh"))
                .build()
                .is_ok()
        );
        broken_pods.0.core.backend_internal_url = Some("http://backend:8081".into());
        let err = broken_pods.runtime(RuntimeKind::Kubernetes).build().unwrap_err();
        assert!(err.contains("GAME_SERVER_NODE_SELECTOR"), "{err}");
        assert!(matches!(
            base.runtime(RuntimeKind::None).build().unwrap().runtime,
            RuntimeSettings::None
        ));
    }
}
