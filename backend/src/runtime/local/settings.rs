//! The `local` runtime's settings.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Args;

use crate::runtime::profiles::find_executable;
use crate::runtime::warm::Bounds;

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
    pub(crate) warm: Bounds,
    /// `setpriv`, which ties a profile program's life to the backend's; without it such
    /// programs outlive a backend killed by SIGKILL (said once at start).
    pub(crate) keeper: Option<PathBuf>,
}

impl LocalSettings {
    /// Settings that start only servers of profiles (no built-in binary, no warm pool), with
    /// `path` as their PATH.
    pub(crate) fn for_profiles(path: Option<OsString>) -> LocalSettings {
        let keeper = find_executable(std::path::Path::new("setpriv"), path.as_deref())
            .or_else(|| find_executable(std::path::Path::new("/usr/bin/setpriv"), None));
        LocalSettings {
            binary: PathBuf::new(),
            log_filter: String::new(),
            path,
            env: Vec::new(),
            warm: Bounds { min: 0, max: 0 },
            keeper,
        }
    }
}

impl LocalArgs {
    /// Checks the settings: the game-server binary must be an executable file.
    pub fn validate(&self, env: Vec<(String, String)>, warm: Bounds) -> Result<LocalSettings, String> {
        let keeper = find_executable(std::path::Path::new("setpriv"), self.path.as_deref())
            .or_else(|| find_executable(std::path::Path::new("/usr/bin/setpriv"), None));
        Ok(LocalSettings {
            warm,
            keeper,
            binary: find_executable(&self.game_server_bin, self.path.as_deref()).ok_or_else(|| {
                format!(
                    "GAME_SERVER_BIN {} is not an executable file{} (RUNTIME=local starts one per session)",
                    self.game_server_bin.display(),
                    if self.game_server_bin.components().count() > 1 {
                        ""
                    } else {
                        " in PATH"
                    }
                )
            })?,
            log_filter: self.game_server_log.clone(),
            path: self.path.clone(),
            env,
        })
    }
}
