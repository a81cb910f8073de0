//! The `game-server` binary: parse config, bind, print `LISTENING <ip:port>`, serve one match.

use std::io::Write;
use std::process::ExitCode;

use game_server::Config;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let config: Config = match service::cli::parse("game-server") {
        Ok(config) => config,
        Err(code) => return code,
    };
    let settings = match config.validate() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("game-server: {e}");
            return ExitCode::from(2);
        }
    };
    service::telemetry::init(&config.log, "info");

    // One session needs one thread: a single-threaded runtime keeps memory and start-up small.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("game-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        // Stops asked for from here on are clean, however soon they come after LISTENING.
        let shutdown = CancellationToken::new();
        service::cli::cancel_on_signal(shutdown.clone());
        // A whole roster connects at once; the backlog takes any connection cap.
        let backlog = u32::try_from(config.max_connections).unwrap_or(u32::MAX).max(1024);
        let listener = match service::net::listen(std::net::SocketAddr::new(config.bind, config.port), backlog) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("game-server: cannot listen on {}:{}: {e}", config.bind, config.port);
                return ExitCode::FAILURE;
            }
        };
        match listener.local_addr() {
            Ok(addr) => {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "LISTENING {addr}").and_then(|()| stdout.flush());
            }
            Err(e) => {
                eprintln!("game-server: {e}");
                return ExitCode::FAILURE;
            }
        }
        if config.exit_on_stdin_close {
            tokio::spawn(cancel_on_stdin_close(shutdown.clone()));
        }
        let settings = if settings.warm.is_some() {
            match game_server::warm::await_handover(&listener, settings, shutdown.clone()).await {
                Ok(Some(session)) => session,
                Ok(None) => {
                    tracing::info!("stopped while warm, without a session");
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    tracing::error!(error = %e, "waiting for a hand-over failed");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            settings
        };
        match game_server::run(listener, settings, shutdown).await {
            Ok(report) => {
                tracing::info!(reason = %report.end_reason, "exiting");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "match task failed");
                ExitCode::FAILURE
            }
        }
    });
    // The stdin watcher blocks a thread in read(2); do not wait for it.
    runtime.shutdown_background();
    code
}

/// Cancels `shutdown` when standard input reaches end of file (the parent is gone).
async fn cancel_on_stdin_close(shutdown: CancellationToken) {
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 256];
    loop {
        match tokio::io::AsyncReadExt::read(&mut stdin, &mut sink).await {
            Ok(0) | Err(_) => break,
            Ok(_) => continue,
        }
    }
    tracing::info!("standard input closed: the parent is gone; draining");
    shutdown.cancel();
}
