//! The game-server settings both runtimes hand on to their servers, when set, and the
//! defaults the servers use when not (the game server's own, from `protocol::server`).

use clap::Args;
use service::telemetry::LogFormat;

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

impl GameServerArgs {
    /// The settings that are set, as the servers' environment.
    pub(crate) fn env(&self, log_format: LogFormat) -> Vec<(String, String)> {
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
    pub(crate) fn whole_seconds(value: &Option<String>, default: i64) -> i64 {
        value
            .as_deref()
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(default, |v| v.ceil() as i64)
    }
}
