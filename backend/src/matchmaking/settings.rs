//! Matchmaking's settings: the queues, from a file or the one default queue.

use std::path::{Path, PathBuf};

use clap::Args;
use matchmaking_core::queues::{FormRules, Queues};
use service::cli::seconds;

/// The queues and their rules.
#[derive(Debug, Clone, Args)]
pub struct MatchmakingArgs {
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
}

impl MatchmakingArgs {
    /// The default queue's rules, checked.
    pub fn rules(&self) -> Result<FormRules, String> {
        if self.session_size < 1 || self.session_size > 1000 {
            return Err(format!("SESSION_SIZE must be 1 to 1000, got {}", self.session_size));
        }
        if self.min_partial_session_size < 1 || self.min_partial_session_size > self.session_size {
            return Err(format!(
                "MIN_PARTIAL_SESSION_SIZE must be 1 to SESSION_SIZE ({}), got {}",
                self.session_size, self.min_partial_session_size
            ));
        }
        let flush_wait = seconds("FLUSH_WAIT_SECONDS", self.flush_wait_seconds)?;
        Ok(FormRules {
            size: self.session_size,
            min_partial: self.min_partial_session_size,
            flush_wait_ms: i64::try_from(flush_wait.as_millis()).unwrap_or(i64::MAX),
        })
    }

    /// The queue file, when one is set.
    pub fn file(&self) -> Option<&Path> {
        self.matchmaking_config.as_deref().filter(|p| !p.as_os_str().is_empty())
    }

    /// The queues of the file's `text` (each checked, every mistake one entry), or the default
    /// queue alone with `rules` when there is no file.
    pub fn queues(&self, rules: FormRules, text: Option<&str>) -> Result<Queues, Vec<String>> {
        match text {
            Some(text) => Queues::parse(text),
            None => Ok(Queues::default_only(rules)),
        }
    }
}
