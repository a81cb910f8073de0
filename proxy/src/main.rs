//! The `proxy` binary: parse config, bind, serve until SIGTERM or ctrl-c, then drain.

use std::process::ExitCode;

use proxy::Config;

/// mimalloc: forwarded requests allocate and free many small buffers; glibc malloc was a
/// large share of the backend's CPU under bursts, and the proxy serves the same traffic.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config: Config = match service::cli::parse("proxy") {
        Ok(config) => config,
        Err(code) => return code,
    };
    let settings = match config.validate() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("proxy: {e}");
            return ExitCode::from(2);
        }
    };
    service::telemetry::init(&config.log, "info");
    service::cli::serve("proxy", config.bind, |listener, shutdown| {
        proxy::run(listener, settings, shutdown)
    })
}
