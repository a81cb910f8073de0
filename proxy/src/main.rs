//! The `proxy` binary: parse config, bind, serve until SIGTERM or ctrl-c, then drain.

use std::process::ExitCode;

use proxy::Config;

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
