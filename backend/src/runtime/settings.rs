//! The runtimes' settings: which runtime, its warm pool's bounds, each runtime's own group
//! (validated only when that runtime is chosen), and the game-server settings both hand on.
//! The backend's configuration is composed of these; this part validates them.

use clap::{Args, ValueEnum};
use service::telemetry::LogFormat;

pub use super::game_server::GameServerArgs;
pub use super::kubernetes::settings::{KubernetesArgs, KubernetesSettings};
pub use super::local::{LocalArgs, LocalSettings};
use super::warm::Bounds;

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

/// How game servers run, and the warm pool's bounds.
#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
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
    /// A YAML file of regions: each a target of RUNTIME's kind, its proxy's public address and
    /// its warm pool; sessions start in the region forming chose. Without it: one region.
    #[arg(long, env = "REGIONS")]
    pub regions: Option<std::path::PathBuf>,
    /// With REGIONS: a region whose target's API has not answered for this long is down (new
    /// sessions go elsewhere, its sessions fail and their players are requeued).
    #[arg(long, env = "REGION_DOWN_AFTER_SECONDS", default_value_t = 10)]
    pub region_down_after_seconds: u32,
    /// With REGIONS: a region down comes back once its API has answered this long without a
    /// miss (twice as long, up to 8 times, for a region that went down again soon after).
    #[arg(long, env = "REGION_UP_AFTER_SECONDS", default_value_t = 30)]
    pub region_up_after_seconds: u32,
    #[command(flatten)]
    pub local: LocalArgs,
    #[command(flatten)]
    pub kubernetes: KubernetesArgs,
    #[command(flatten)]
    pub game: GameServerArgs,
}

/// The chosen runtime and its own settings.
#[derive(Debug, Clone)]
pub enum RuntimeSettings {
    Local(LocalSettings),
    Kubernetes(Box<KubernetesSettings>),
    None,
}

impl RuntimeSettings {
    /// The warm pool's bounds (none without a runtime).
    pub(crate) fn warm_bounds(&self) -> Bounds {
        match self {
            RuntimeSettings::Local(local) => local.warm,
            RuntimeSettings::Kubernetes(kubernetes) => kubernetes.warm,
            RuntimeSettings::None => Bounds { min: 0, max: 0 },
        }
    }

    /// The runtime's name, as `RUNTIME` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            RuntimeSettings::Local(_) => "local",
            RuntimeSettings::Kubernetes(_) => "kubernetes",
            RuntimeSettings::None => "none",
        }
    }
}

impl RuntimeArgs {
    /// Checks the chosen runtime's settings (the others are not looked at): one line naming the
    /// setting when one is wrong. `log_format`: the backend's, handed to local servers;
    /// `internal_url`: `BACKEND_INTERNAL_URL`, which Pods need.
    pub fn validate(&self, log_format: LogFormat, internal_url: Option<&str>) -> Result<RuntimeSettings, String> {
        let warm_min = self.warm_pool_min;
        let warm_max = self.warm_pool_max.unwrap_or(warm_min.saturating_mul(2));
        if warm_max < warm_min || warm_max > 10_000 {
            return Err(format!(
                "WARM_POOL_MAX must be WARM_POOL_MIN ({warm_min}) to 10000, got {warm_max}"
            ));
        }
        if warm_max > 0 && self.runtime == RuntimeKind::None {
            return Err(
                "WARM_POOL_MIN/WARM_POOL_MAX keep warm game servers; RUNTIME=none starts none (unset them)".into(),
            );
        }
        let warm = Bounds {
            min: warm_min as usize,
            max: warm_max as usize,
        };
        Ok(match self.runtime {
            RuntimeKind::Local => RuntimeSettings::Local(self.local.validate(self.game.env(log_format), warm)?),
            RuntimeKind::Kubernetes => {
                if internal_url.is_none_or(str::is_empty) {
                    return Err(
                        "BACKEND_INTERNAL_URL is required with RUNTIME=kubernetes: the URL pods reach the backend at"
                            .into(),
                    );
                }
                RuntimeSettings::Kubernetes(Box::new(self.kubernetes.validate(&self.game, warm)?))
            }
            RuntimeKind::None => RuntimeSettings::None,
        })
    }
}
