//! The `proxy` binary: parse config, bind, serve until SIGTERM or ctrl-c, then drain.

use std::process::ExitCode;

use clap::Parser;
use proxy::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(config) => config,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            eprintln!(
                "proxy: {}",
                text.lines()
                    .next()
                    .unwrap_or("invalid arguments")
                    .trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
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
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match proxy::run(listener, settings, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "proxy failed");
                ExitCode::FAILURE
            }
        }
    })
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else {
        tracing::error!("cannot listen for SIGTERM");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt"),
    }
    shutdown.cancel();
}
