//! Backend settings: each a flag with an environment variable, read once by clap into
//! [`Config`] and validated into [`Settings`] before anything connects or binds.
//!
//! The configuration is composed of the parts' own groups, each validated by its part: the
//! core settings here (Redis, tokens, the replica's name and addresses, the timeouts the
//! supervisor and the shutdown use), matchmaking's ([`MatchmakingArgs`]: the queues), the
//! history's ([`HistoryArgs`]: PostgreSQL), the runtimes' ([`RuntimeArgs`]: which runtime,
//! its warm pool, each runtime's group validated only when chosen, and the game-server
//! settings both hand on), and identity's (player tokens). [`Settings::builder`] makes
//! settings for tests and tools from the same defaults without reading the environment, so an
//! exported variable in a developer's shell changes nothing.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser};
use identity::{PlayerAuthArgs, PlayerAuthSettings};
use matchmaking_core::queues::{FormRules, Queues};
use protocol::TicketSecret;
use service::cli::seconds;
use service::redis::{RedisArgs, RedisTarget};
use service::telemetry::LogArgs;

pub use crate::history::HistoryArgs;
pub use crate::matchmaking::MatchmakingArgs;
use crate::runtime::profiles::{Profiles, Target};
pub use crate::runtime::settings::{RuntimeArgs, RuntimeKind, RuntimeSettings};

/// The raw command line and environment.
#[derive(Debug, Clone, Parser)]
#[command(name = "backend", version, about = "matchplane's matchmaking control plane")]
pub struct Config {
    #[command(flatten)]
    pub core: CoreArgs,
    #[command(flatten)]
    pub matchmaking: MatchmakingArgs,
    #[command(flatten)]
    pub history: HistoryArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
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
    /// A server not ready by then fails its session, and its players go back to the queue.
    #[arg(long, env = "SERVER_READY_TIMEOUT_SECONDS", default_value_t = 60.0)]
    pub server_ready_timeout_seconds: f64,
    /// The proxy's public host, returned to matched players as `connect_host`.
    #[arg(long, env = "PUBLIC_HOST", default_value = "127.0.0.1")]
    pub public_host: String,
    /// The proxy's public port, returned to matched players as `connect_port`.
    #[arg(long, env = "PUBLIC_PORT", default_value_t = 8080)]
    pub public_port: u16,
    /// Whether the proxy's public port speaks TLS, returned to matched players as
    /// `connect_tls`.
    #[arg(long, env = "PUBLIC_TLS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub public_tls: bool,
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
    /// On SIGTERM, how long to go on serving everything (joins too) while `/health` already
    /// says not ready, so load balancers and Kubernetes' endpoints stop sending requests here
    /// before joins are refused. The grace for running matches follows it.
    #[arg(long, env = "SHUTDOWN_DELAY_SECONDS", default_value_t = 0.0)]
    pub shutdown_delay_seconds: f64,
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
    /// The server profiles, and which queue runs which (the built-in server alone without
    /// MATCHMAKING_CONFIG).
    pub(crate) profiles: Arc<Profiles>,
    pub(crate) ready_timeout: Duration,
    pub(crate) public_host: String,
    pub(crate) public_port: u16,
    pub(crate) public_tls: bool,
    pub(crate) instance_id: String,
    /// `None`: derive from the bound listener.
    pub(crate) internal_url: Option<String>,
    pub(crate) ticket_ttl: Duration,
    pub(crate) shutdown_grace: Duration,
    pub(crate) shutdown_delay: Duration,
    /// How long an open history row's session may be unknown to Redis before it is `lost`.
    pub(crate) lost_grace: Duration,
    pub(crate) runtime: RuntimeSettings,
    /// The regions (`REGIONS`); `None`: one region, the public address above.
    pub(crate) regions: Option<Arc<crate::runtime::regions::Regions>>,
}

impl Settings {
    /// Where the players of a session in `region` reach its server: that region's proxy with
    /// `REGIONS` (for a session without one, or of a region no longer listed, the proxy of the
    /// first region up, where its server started), the public address otherwise. Host, port,
    /// TLS.
    pub(crate) fn proxy_of(&self, region: Option<&str>) -> (&str, u16, bool) {
        match self.regions.as_deref().and_then(|regions| regions.of(region)) {
            Some(r) => (&r.proxy_host, r.proxy_port, r.tls),
            None => (&self.public_host, self.public_port, self.public_tls),
        }
    }
}

impl Config {
    /// Checks every setting the chosen runtime uses, each group by its part; the error is one
    /// line naming the setting.
    pub fn validate(&self) -> Result<Settings, String> {
        let core = &self.core;
        let secret = TicketSecret::from_setting(core.ticket_secret.as_deref())?;
        let history = self.history.validate()?;
        let rules = self.matchmaking.rules()?;
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
        let runtime = self
            .runtime
            .validate(self.log.log_format, core.backend_internal_url.as_deref())?;
        let (queues, profiles) = self.queues_and_profiles(rules, &runtime)?;
        let regions = self.regions(&runtime, &profiles)?;
        Ok(Settings {
            redis: core.redis.validate()?,
            database_url: history.database_url,
            key_prefix: prefix.to_owned(),
            secret,
            admin_token: core.admin_token.clone().filter(|t| !t.is_empty()),
            service_token: core.service_token.clone().filter(|t| !t.is_empty()),
            players,
            queues: Arc::new(queues),
            profiles: Arc::new(profiles),
            ready_timeout,
            public_host: core.public_host.clone(),
            public_port: core.public_port,
            public_tls: core.public_tls,
            instance_id,
            internal_url: core
                .backend_internal_url
                .clone()
                .map(|u| u.trim_end_matches('/').to_owned()),
            ticket_ttl: Duration::from_secs(u64::from(core.ticket_ttl_seconds.max(1))),
            shutdown_grace: seconds("SHUTDOWN_GRACE_SECONDS", core.shutdown_grace_seconds)?,
            shutdown_delay: seconds("SHUTDOWN_DELAY_SECONDS", core.shutdown_delay_seconds)?,
            lost_grace: history.lost_grace,
            runtime,
            regions,
        })
    }

    /// The `REGIONS` file, checked as a whole (every mistake one line, each naming the file),
    /// each region's target of the runtime's kind.
    fn regions(
        &self,
        runtime: &RuntimeSettings,
        profiles: &crate::runtime::profiles::Profiles,
    ) -> Result<Option<Arc<crate::runtime::regions::Regions>>, String> {
        use crate::runtime::regions::{RegionTarget, Regions, parse};
        let Some(path) = &self.runtime.regions else {
            return Ok(None);
        };
        let shown = path.display();
        let text = std::fs::read_to_string(path).map_err(|e| format!("REGIONS {shown}: cannot read it: {e}"))?;
        let mut mistakes = Vec::new();
        let regions = parse(&text).unwrap_or_else(|m| {
            mistakes = m;
            Vec::new()
        });
        for region in &regions {
            let fits = matches!(
                (&region.target, runtime),
                (RegionTarget::Local, RuntimeSettings::Local(_))
                    | (RegionTarget::Kubernetes { .. }, RuntimeSettings::Kubernetes(_))
            );
            for profile in region.profile_warm.keys() {
                if !profiles.get(profile).is_some_and(|p| !p.builtin && p.warm.is_some()) {
                    mistakes.push(format!(
                        "region {:?}: warm_pools names {profile:?}, which is no server profile with a warm_pool",
                        region.name
                    ));
                }
            }
            if !fits {
                mistakes.push(format!(
                    "region {:?}: its target must be of RUNTIME's kind (local with RUNTIME=local, a kubeconfig context with RUNTIME=kubernetes; none with RUNTIME=none)",
                    region.name
                ));
            }
        }
        let thresholds = crate::runtime::region_health::Thresholds {
            down_after: Duration::from_secs(u64::from(self.runtime.region_down_after_seconds.max(1))),
            up_after: Duration::from_secs(u64::from(self.runtime.region_up_after_seconds.max(1))),
        };
        if mistakes.is_empty() {
            Ok(Some(Arc::new(Regions::new(regions, thresholds))))
        } else {
            Err(mistakes
                .iter()
                .map(|m| format!("REGIONS {shown}: {m}"))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    }

    /// The queues and the server profiles: from the queue file, checked as a whole (every
    /// mistake one line, each naming the file), or the default queue and the built-in server.
    fn queues_and_profiles(&self, rules: FormRules, runtime: &RuntimeSettings) -> Result<(Queues, Profiles), String> {
        let target = match runtime {
            RuntimeSettings::Local(_) => Target::Local {
                path: self.runtime.local.path.as_deref(),
            },
            RuntimeSettings::Kubernetes(_) => Target::Kubernetes,
            RuntimeSettings::None => Target::None,
        };
        match self.matchmaking.file() {
            Some(path) => self.queue_file(path, rules, target),
            None => Ok((Queues::default_only(rules), Profiles::builtin_only())),
        }
    }

    /// The queue file at `path`, its profiles checked for `target`.
    fn queue_file(&self, path: &Path, rules: FormRules, target: Target<'_>) -> Result<(Queues, Profiles), String> {
        let shown = path.display();
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("MATCHMAKING_CONFIG {shown}: cannot read it: {e}"))?;
        let queues = self.matchmaking.queues(rules, Some(&text));
        let profiles = Profiles::parse(&text, queues.as_ref().ok(), target);
        match (queues, profiles) {
            (Ok(queues), Ok(profiles)) => Ok((queues, profiles)),
            (queues, profiles) => Err(queues
                .err()
                .into_iter()
                .chain(profiles.err())
                .flatten()
                .map(|m| format!("MATCHMAKING_CONFIG {shown}: {m}"))
                .collect::<Vec<_>>()
                .join("\n")),
        }
    }

    /// The server profile `queue` runs, for `backend render-pod --queue [--version V]`: the file
    /// checked as a whole (every mistake one line), and that profile for the kubernetes runtime
    /// (its image), as its version `version` runs it when it has versions (which must then be
    /// named).
    pub fn kubernetes_profile(
        &self,
        queue: &str,
        version: Option<&str>,
    ) -> Result<Arc<crate::runtime::Profile>, String> {
        let Some(path) = self.matchmaking.file() else {
            return Err(format!("--queue {queue}: MATCHMAKING_CONFIG names no queue file"));
        };
        let (queues, profiles) = self.queue_file(path, self.matchmaking.rules()?, Target::None)?;
        let shown = path.display();
        if queues.get(queue).is_none() {
            return Err(format!("MATCHMAKING_CONFIG {shown}: there is no queue {queue:?}"));
        }
        let mut profile = profiles.for_queue(queue);
        let names = || {
            profile
                .versions
                .iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match version {
            None if !profile.versions.is_empty() => {
                return Err(format!(
                    "--queue {queue}: server {:?} has versions ({}): name one with --version",
                    profile.name,
                    names()
                ));
            }
            None => {}
            Some(version) => match profile.versions.iter().find(|v| v.name == version) {
                Some(v) => profile = v.profile.clone(),
                None if profile.versions.is_empty() => {
                    return Err(format!(
                        "--version {version}: server {:?} of queue {queue:?} has no versions",
                        profile.name
                    ));
                }
                None => {
                    return Err(format!(
                        "--version {version}: server {:?} has no such version (it has {})",
                        profile.name,
                        names()
                    ));
                }
            },
        }
        if !profile.builtin && profile.image.is_none() {
            return Err(format!(
                "MATCHMAKING_CONFIG {shown}: server {:?}: needs `image` to run with RUNTIME=kubernetes",
                profile.name
            ));
        }
        Ok(profile)
    }

    /// The server profile `name` of the queue file, checked for the local runtime (the file
    /// as a whole, every mistake one line), and the PATH its command is found in: for
    /// `backend conformance`.
    pub fn local_profile(
        &self,
        name: &str,
    ) -> Result<(Arc<crate::runtime::Profile>, Option<std::ffi::OsString>), String> {
        let Some(path) = self.matchmaking.file() else {
            return Err("MATCHMAKING_CONFIG names no queue file to take the profile from".into());
        };
        let search = self.runtime.local.path.clone();
        let target = Target::Local {
            path: search.as_deref(),
        };
        let (_, profiles) = self.queue_file(path, self.matchmaking.rules()?, target)?;
        match profiles.get(name) {
            Some(profile) if !profile.builtin => Ok((profile.clone(), search)),
            Some(_) => Err(format!(
                "{name} is the built-in game server; its own tests check it (name a profile of MATCHMAKING_CONFIG)"
            )),
            None => Err(format!(
                "MATCHMAKING_CONFIG {}: there is no server profile {name:?} (profiles: {})",
                path.display(),
                profiles
                    .iter()
                    .filter(|p| !p.builtin)
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Every default, and nothing from the environment.
    pub fn defaults() -> Config {
        service::cli::parse_without_env(["backend"]).expect("every setting has a default or is optional")
    }
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
        self.0.history.database_url = Some(url.to_owned());
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
        self.0.matchmaking.session_size = size;
        self
    }

    pub fn min_partial_session_size(mut self, size: u32) -> Self {
        self.0.matchmaking.min_partial_session_size = size;
        self
    }

    pub fn flush_wait_seconds(mut self, seconds: f64) -> Self {
        self.0.matchmaking.flush_wait_seconds = seconds;
        self
    }

    /// Queues from this YAML file (`MATCHMAKING_CONFIG`).
    pub fn matchmaking_config(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.matchmaking.matchmaking_config = Some(path.into());
        self
    }

    /// `REGIONS`: the regions file at `path`.
    pub fn regions(mut self, path: impl Into<PathBuf>) -> Self {
        self.0.runtime.regions = Some(path.into());
        self
    }

    /// How long a region's target may not answer before it is down, and how long it must
    /// answer to come back (`REGION_DOWN_AFTER_SECONDS`, `REGION_UP_AFTER_SECONDS`).
    pub fn region_thresholds(mut self, down_after_seconds: u32, up_after_seconds: u32) -> Self {
        self.0.runtime.region_down_after_seconds = down_after_seconds;
        self.0.runtime.region_up_after_seconds = up_after_seconds;
        self
    }

    pub fn runtime(mut self, runtime: RuntimeKind) -> Self {
        self.0.runtime.runtime = runtime;
        self
    }

    /// The warm pool's bounds (`WARM_POOL_MIN`, `WARM_POOL_MAX`).
    pub fn warm_pool(mut self, min: u32, max: u32) -> Self {
        self.0.runtime.warm_pool_min = min;
        self.0.runtime.warm_pool_max = Some(max);
        self
    }

    pub fn game_server_bin(mut self, binary: impl Into<PathBuf>) -> Self {
        self.0.runtime.local.game_server_bin = binary.into();
        self
    }

    /// The search path local game servers get (wrapper scripts need one).
    pub fn game_server_path(mut self, path: impl Into<OsString>) -> Self {
        self.0.runtime.local.path = Some(path.into());
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

    pub fn shutdown_delay_seconds(mut self, seconds: f64) -> Self {
        self.0.core.shutdown_delay_seconds = seconds;
        self
    }

    pub fn instance_id(mut self, id: &str) -> Self {
        self.0.core.instance_id = Some(id.to_owned());
        self
    }

    /// The `kubernetes` runtime against the API server in this kubeconfig, creating Pods in
    /// `namespace`; pods report to `internal_url`.
    pub fn kubernetes(mut self, kubeconfig: impl Into<PathBuf>, namespace: &str, internal_url: &str) -> Self {
        self.0.runtime.runtime = RuntimeKind::Kubernetes;
        self.0.runtime.kubernetes.kubeconfig = Some(kubeconfig.into());
        self.0.runtime.kubernetes.namespace = namespace.to_owned();
        self.0.core.backend_internal_url = Some(internal_url.to_owned());
        self
    }

    pub fn lost_session_grace_seconds(mut self, seconds: f64) -> Self {
        self.0.history.lost_session_grace_seconds = seconds;
        self
    }

    pub fn finished_pod_grace_seconds(mut self, seconds: f64) -> Self {
        self.0.runtime.kubernetes.finished_pod_grace_seconds = seconds;
        self
    }

    pub fn kube_api_timeout_seconds(mut self, seconds: f64) -> Self {
        self.0.runtime.kubernetes.kube_api_timeout_seconds = seconds;
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
        assert_eq!(config.matchmaking.session_size, 12);
        assert_eq!(config.runtime.runtime, RuntimeKind::Local);
        assert!(config.core.ticket_secret.is_none());
    }

    #[test]
    fn game_server_bin_must_be_an_executable_file() {
        let base = Settings::builder()
            .database_url("postgres://x/y")
            .ticket_secret(&"s".repeat(32))
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
            .ticket_secret(&"s".repeat(32))
            .player_auth(identity::PlayerAuthMode::None)
            .game_server_bin(std::path::Path::new("/bin/sh"));
        let warm = |s: &Settings| match &s.runtime {
            RuntimeSettings::Local(local) => local.warm,
            _ => unreachable!(),
        };
        let off = base.clone().build().unwrap();
        assert!(!warm(&off).enabled(), "no warm servers unless asked");
        let mut config = base.clone();
        config.0.runtime.warm_pool_min = 5;
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
            .ticket_secret(&"s".repeat(32))
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
            .ticket_secret(&"s".repeat(32))
            .player_auth(identity::PlayerAuthMode::None);
        let mut broken_pods = base.clone();
        broken_pods.0.runtime.kubernetes.game_server_node_selector = "no-equals-sign".into();
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
        let mut pull = base.clone().runtime(RuntimeKind::Kubernetes);
        pull.0.core.backend_internal_url = Some("http://backend:8081".into());
        pull.0.runtime.kubernetes.game_server_image_pull_secrets = " registry-a , registry.b ".into();
        let RuntimeSettings::Kubernetes(k) = pull.clone().build().unwrap().runtime else {
            panic!("the kubernetes runtime")
        };
        assert_eq!(k.template.image_pull_secrets, ["registry-a", "registry.b"]);
        for bad in ["Registry", "-a", "a_b", "a..b"] {
            pull.0.runtime.kubernetes.game_server_image_pull_secrets = bad.into();
            let err = pull.clone().build().unwrap_err();
            assert!(err.contains("GAME_SERVER_IMAGE_PULL_SECRETS"), "{bad}: {err}");
        }
        assert!(matches!(
            base.runtime(RuntimeKind::None).build().unwrap().runtime,
            RuntimeSettings::None
        ));
    }
}
