//! The history's settings: where PostgreSQL is, and when an open row of a forgotten session
//! is ended `lost`.

use std::time::Duration;

use clap::Args;
use service::cli::seconds;

/// PostgreSQL for match history.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// PostgreSQL for match history.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// A history row still open whose session Redis has not known for this long (Redis
    /// restarted without its data, or a failover lost it) is ended with reason `lost`.
    #[arg(long, env = "LOST_SESSION_GRACE_SECONDS", default_value_t = 60.0)]
    pub lost_session_grace_seconds: f64,
}

/// The history's checked settings.
#[derive(Debug, Clone)]
pub struct HistorySettings {
    pub database_url: String,
    pub lost_grace: Duration,
}

impl HistoryArgs {
    /// Checks the settings: a PostgreSQL URL is required.
    pub fn validate(&self) -> Result<HistorySettings, String> {
        let database_url = self
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
        Ok(HistorySettings {
            database_url,
            lost_grace: seconds("LOST_SESSION_GRACE_SECONDS", self.lost_session_grace_seconds)?,
        })
    }
}
