//! matchplane's authoritative game server: one process per session.
//!
//! [`run`] serves a bound listener until the match stops, reports the result through the server
//! SDK (`matchplane-sdk`), and returns it.
//! The binary's `main` only parses config, prints `LISTENING`, wires signals and calls `run`;
//! tests call the same `run` on `127.0.0.1:0`.

pub mod config;
pub mod conn;
pub mod game;
pub mod warm;

use std::sync::Arc;
use std::time::Duration;

use protocol::api::ResultReport;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, ServerConfig};
pub use game::{MatchSettings, StartPolicy};

/// How long open connections get to finish writing once the match is over.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Serves the session on `listener` until the match stops (on its own, or with `terminated`
/// when `shutdown` is cancelled), delivers the result report if configured, and returns it.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<ResultReport> {
    let (game, mut game_task) = game::spawn(config.game.clone(), shutdown);
    // Backfill changes the roster while the match runs: the backend says so.
    let watching = CancellationToken::new();
    let _stop_watching = watching.clone().drop_guard();
    if let Some(backend) = &config.report {
        let mut changes = backend.watch_roster(watching.clone());
        let game = game.clone();
        tokio::spawn(async move {
            while let Some(roster) = changes.recv().await {
                game.roster(roster.players, roster.teams).await;
            }
        });
    }
    let admission = Admission {
        ctx: Arc::new(conn::ConnContext {
            session_id: config.game.session_id.clone(),
            secret: config.secret.clone(),
            game,
            join_timeout: config.join_timeout,
            write_timeout: config.write_timeout,
            outbound_queue: config.game.outbound_queue,
            backend: config.report.clone(),
        }),
        permits: Arc::new(Semaphore::new(config.max_connections)),
        tracker: TaskTracker::new(),
        cancel: CancellationToken::new(),
    };

    let report = loop {
        tokio::select! {
            finished = &mut game_task => break finished?,
            accepted = listener.accept() => admission.admit(accepted).await,
        }
    };

    // Late arrivals still get an answer (`ERROR session_over`) while the report goes out.
    if let Some(backend) = &config.report {
        let delivery = async {
            match backend.report(&report, config.report_budget).await {
                Ok(recorded) => tracing::info!(?recorded, "result reported"),
                Err(e) => tracing::error!(error = %e, "the result report did not land"),
            }
        };
        tokio::pin!(delivery);
        loop {
            tokio::select! {
                _ = &mut delivery => break,
                accepted = listener.accept() => admission.admit(accepted).await,
            }
        }
    }
    drop(listener);
    admission.cancel.cancel();
    admission.tracker.close();
    if timeout(DRAIN_GRACE, admission.tracker.wait()).await.is_err() {
        tracing::warn!("some connections did not finish within the drain grace; closing them");
    }
    Ok(report)
}

/// Admits connections up to the cap, each on its own tracked task.
struct Admission {
    ctx: Arc<conn::ConnContext>,
    permits: Arc<Semaphore>,
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl Admission {
    async fn admit(&self, accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>) {
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                sleep(Duration::from_millis(50)).await;
                return;
            }
        };
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let _ = stream.set_nodelay(true);
                let ctx = self.ctx.clone();
                let cancel = self.cancel.clone();
                self.tracker.spawn(async move {
                    conn::serve(stream, ctx, cancel).await;
                    drop(permit);
                });
            }
            Err(_) => {
                // Best effort, never waits: the socket is closed right after.
                let _ = stream.try_write(
                    protocol::ServerReply::Error(protocol::ErrorCode::ServerFull)
                        .line()
                        .as_bytes(),
                );
            }
        }
    }
}
