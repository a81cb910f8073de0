//! One way to start logging for every matchplane binary: `tracing` to stderr, filtered by
//! `RUST_LOG` (default given by the binary), as text or, with `LOG_FORMAT=json`, as JSON lines
//! for a cluster's log pipeline. Stdout stays free for machine-read output such as the game
//! server's `LISTENING` line.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
