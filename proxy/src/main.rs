//! The `proxy` binary: parse config, bind, serve until SIGTERM or ctrl-c, then drain.

use std::process::ExitCode;

use proxy::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config: Config = match protocol::cli::parse("proxy") {
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
    protocol::telemetry::init("info");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind(config.bind).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("proxy: cannot listen on {}: {e}", config.bind);
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(protocol::cli::cancel_on_signal(shutdown.clone()));
        match proxy::run(listener, settings, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "proxy failed");
                ExitCode::FAILURE
            }
        }
    })
}
