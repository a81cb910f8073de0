//! One way to start logging for every matchplane binary: `tracing` to stderr, filtered by
//! `RUST_LOG` (default given by the binary), as text or, with `LOG_FORMAT=json`, as JSON lines
//! for a cluster's log pipeline. Stdout stays free for machine-read output such as the game
//! server's `LISTENING` line. Both settings are flags with environment variables ([`LogArgs`]),
//! flattened into each binary's config, so they are read once, with the rest of it.

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The spelling of `LOG_FORMAT`, to hand the same setting to a child process.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The logging settings of a binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, ignore_case = true, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, in `tracing`'s `EnvFilter` syntax; the binary's default when unset.
    #[arg(long, env = "RUST_LOG")]
    pub log_filter: Option<String>,
}

/// Colour codes only for a person at a terminal: never in a file, a pipe or a log collector,
/// and never with `NO_COLOR` set (to anything but the empty string).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(args: &LogArgs, default_filter: &str) {
    let filter = args
        .log_filter
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR")))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        assert!(super::colour(true, None));
        assert!(super::colour(true, Some("".into())));
        assert!(!super::colour(true, Some("1".into())));
        assert!(!super::colour(false, None));
    }
}
