//! The backend's start-up and shutdown, in named phases.
//!
//! [`App::start`] connects (Redis, PostgreSQL lazily), builds the runtime, recovers (schema,
//! heartbeat, servers and sessions left over from before this start), then serves: it spawns
//! the background tasks and the HTTP server. [`App::shutdown`] stops taking joins, lets running
//! matches finish for the grace period, stops serving HTTP (so result reports land until then),
//! stops the background work, and lets the history writer flush.
//!
//! One root token belongs to the app; each phase of the shutdown cancels a child of it, in
//! order, and the root goes last. If an essential task dies before shutdown, the app asks to
//! be shut down by cancelling the `shutdown` token it was started with.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use identity::{Authenticator, PlayerVerifier};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::health::{Dependencies, Health};
use crate::history::History;
use crate::history::HistoryMetrics;
use crate::http::metrics::HttpMetrics;
use crate::matchmaking::metrics::MatchmakingMetrics;
use crate::matchmaking::{Matchmaking, matcher};
use crate::metrics::Metrics;
use crate::operators::Operators;
use crate::operators::window::Window;
use crate::sessions::Sessions;
use crate::sessions::events;
use crate::sessions::events::Waiters;
use crate::sessions::janitor::Janitor;
use crate::sessions::metrics::SessionsMetrics;
use crate::sessions::supervisor::{Supervisor, SupervisorConfig};
use crate::{http, runtime};
use matchmaking_core::queues::Queues;
use matchmaking_core::store::Store;
use service::cli::Unreachable;

/// Every retry policy of the backend's parts, so each op's retries are counted from 0.
const RETRIES: [service::backoff::Policy; 8] = [
    crate::matchmaking::matcher::FORM,
    crate::sessions::REDIS_STEP,
    crate::sessions::events::SUBSCRIBE,
    crate::sessions::supervisor::FORMING_PAUSE,
    crate::runtime::kubernetes::CREATE_POD,
    crate::runtime::kubernetes::DELETE_POD,
    crate::runtime::kubernetes::reaper::REAPER,
    crate::history::WRITER,
];

/// Most sessions one replica supervises at once; the matcher waits when it is reached.
const MAX_ACTIVE_SESSIONS: usize = 2000;
/// After the HTTP server stops, how long the history writer may keep flushing.
const HISTORY_FLUSH: Duration = Duration::from_secs(5);
/// How long open HTTP connections may take to close once serving stops.
const HTTP_CLOSE: Duration = Duration::from_secs(5);

/// The tokens of the shutdown phases, each a child of the app's root.
struct Phases {
    root: CancellationToken,
    /// Cancelled at once: not ready (load balancers stop sending), everything still served
    /// for `SHUTDOWN_DELAY_SECONDS`.
    unready: CancellationToken,
    /// Cancelled first: no more joins, no more sessions formed, not ready.
    joins: CancellationToken,
    /// Cancelled after the sessions drained: the HTTP server stops.
    http: CancellationToken,
    /// Then the events listener, the janitor and the runtime's own tasks stop.
    background: CancellationToken,
    /// Last: the history writer flushes what is left and stops.
    history: CancellationToken,
}

impl Phases {
    fn new() -> Phases {
        let root = CancellationToken::new();
        Phases {
            unready: root.child_token(),
            joins: root.child_token(),
            http: root.child_token(),
            background: root.child_token(),
            history: root.child_token(),
            root,
        }
    }
}

/// A running backend.
pub struct App {
    phases: Phases,
    supervisor: Supervisor,
    shutdown_grace: Duration,
    shutdown_delay: Duration,
    http: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

/// What the connect phase opens.
struct Connected {
    store: Store,
    history: History,
    metrics: PartsMetrics,
}

/// Each part's metrics, registered by the part in the one registry.
struct PartsMetrics {
    registry: Arc<Metrics>,
    matchmaking: Arc<MatchmakingMetrics>,
    sessions: Arc<SessionsMetrics>,
    history: Arc<HistoryMetrics>,
    http: HttpMetrics,
    /// What the parts count for operators, sent to Redis in the background.
    window: Arc<Window>,
}

impl PartsMetrics {
    /// Every part's metrics, each series with labels known now (the queues', the retry
    /// policies') at 0.
    fn new(queues: &[&str]) -> PartsMetrics {
        let window = Arc::new(Window::default());
        let parts = PartsMetrics {
            registry: Arc::new(Metrics::default()),
            matchmaking: Arc::new(MatchmakingMetrics::new(queues, window.clone())),
            sessions: Arc::new(SessionsMetrics::new(queues, window.clone())),
            window,
            history: Arc::new(HistoryMetrics::default()),
            http: HttpMetrics::default(),
        };
        parts.registry.register(|registry| {
            parts.matchmaking.register(registry);
            parts.sessions.register(registry);
            parts.history.register(registry);
            parts.http.register(registry);
            service::backoff::register(registry, &RETRIES);
        });
        parts
    }
}

impl App {
    /// Starts the backend on `listener`. `shutdown` is the signal to stop; the app cancels it
    /// itself when an essential task dies.
    pub async fn start(listener: TcpListener, settings: Settings, shutdown: CancellationToken) -> anyhow::Result<App> {
        let bound = listener.local_addr()?;
        let Connected {
            store,
            history,
            metrics,
        } = connect(&settings).await?;
        // The warm pool's books (and metrics) exist with or without a pool.
        let warm = Arc::new(runtime::warm::WarmState::new(settings.runtime.warm_bounds()));
        metrics.registry.register(|registry| warm.register(registry));
        if let Some(regions) = &settings.regions {
            metrics.registry.register(|registry| regions.board.register(registry));
        }
        let internal = internal_url(&settings, bound);
        let runtime = runtime::build(
            &settings.runtime,
            &settings.secret,
            warm,
            &settings.profiles,
            &internal,
            settings.regions.clone(),
        )
        .await?;

        let phases = Phases::new();
        let matchmaking = Matchmaking::new(
            store.clone(),
            settings.queues.clone(),
            metrics.matchmaking.clone(),
            &settings.instance_id,
            phases.joins.clone(),
            settings.regions.clone(),
        );
        let sessions = Sessions::new(store, metrics.sessions.clone(), &settings.instance_id);
        let janitor = Janitor {
            sessions: sessions.clone(),
            servers_outlive_backend: runtime.as_ref().is_some_and(|r| r.servers_outlive_backend()),
        };
        recover(&history, &janitor, runtime.as_deref()).await?;
        runtime::versions::load(sessions.store(), &settings.profiles).await;
        let health = Arc::new(Health::default());
        metrics.registry.register(|registry| health.up.register(registry));
        let dependencies = Dependencies {
            store: sessions.store().clone(),
            history: history.clone(),
            metrics: metrics.history.clone(),
        };
        health.check(&dependencies).await;

        let supervisor = Supervisor::new(
            sessions.clone(),
            SupervisorConfig {
                runtime: runtime.clone(),
                secret: settings.secret.clone(),
                internal_url: internal,
                ready_timeout: settings.ready_timeout,
                profiles: settings.profiles.clone(),
                backfill: Some(matchmaking.clone()),
            },
            metrics.sessions.clone(),
        );
        let waiters = Arc::new(Waiters::default());
        let mut background: Vec<(&'static str, BoxFuture<'static, ()>)> = vec![
            (
                "matcher",
                Box::pin(matcher::run(
                    matcher::Matcher {
                        matchmaking: matchmaking.clone(),
                        supervisor: supervisor.clone(),
                        max_active: MAX_ACTIVE_SESSIONS,
                    },
                    phases.joins.clone(),
                )),
            ),
            (
                "events",
                Box::pin(events::listen(
                    sessions.clone(),
                    waiters.clone(),
                    phases.background.clone(),
                )),
            ),
            ("janitor", Box::pin(janitor.run(phases.background.clone()))),
            (
                "reconciler",
                Box::pin(
                    history
                        .clone()
                        .run_reconciler(settings.lost_grace, phases.background.clone()),
                ),
            ),
            (
                "health",
                Box::pin(health.clone().run(dependencies, phases.background.clone())),
            ),
            (
                "history",
                Box::pin(history.clone().run_writer(phases.history.clone(), HISTORY_FLUSH)),
            ),
        ];
        if let Some(runtime) = &runtime {
            background.extend(runtime.tasks(Arc::new(sessions.clone()), phases.background.clone()));
        }
        let tasks: Vec<JoinHandle<()>> = background
            .into_iter()
            .map(|(name, task)| essential(name, &shutdown, task))
            .collect();

        let auth = authenticator(&settings).await?;
        let operators = Arc::new(Operators::new(
            sessions.store().clone(),
            history.clone(),
            settings.profiles.clone(),
            settings.admin_token.as_deref().unwrap_or_default(),
            Queues::clone(&settings.queues),
            &settings.instance_id,
        ));
        let counting = metrics
            .window
            .clone()
            .run(sessions.store().clone(), phases.background.clone());
        let store_for_versions = sessions.store().clone();
        let state = Arc::new(http::AppState {
            operators: operators.clone(),
            auth,
            matchmaking: Arc::new(matchmaking),
            sessions: Arc::new(sessions),
            health,
            history: Arc::new(history),
            settings: settings.clone(),
            metrics: metrics.registry,
            http_metrics: metrics.http,
            waiters,
            runtime: runtime.clone(),
            unready: phases.unready.clone(),
        });
        let reporting = {
            let state = state.clone();
            operators.run_reports(move || http::probes::backend_health(&state), phases.background.clone())
        };
        let mut tasks = tasks;
        tasks.push(essential("operators' reports", &shutdown, Box::pin(reporting)));
        tasks.push(essential("operators' counts", &shutdown, Box::pin(counting)));
        if settings.profiles.iter().any(|p| !p.versions.is_empty()) {
            let following = runtime::versions::run(
                store_for_versions,
                settings.profiles.clone(),
                settings.queues.clone(),
                phases.background.clone(),
            );
            tasks.push(essential("versions", &shutdown, Box::pin(following)));
        }
        let http = {
            let stop = phases.http.clone();
            let app = http::router(state);
            tokio::spawn(serve_http(listener, app, stop))
        };
        tracing::info!(addr = %bound, instance = %settings.instance_id, runtime = settings.runtime.name(), "backend ready");
        Ok(App {
            phases,
            supervisor,
            shutdown_grace: settings.shutdown_grace,
            shutdown_delay: settings.shutdown_delay,
            http,
            tasks,
        })
    }

    /// Stops the backend, phase by phase.
    pub async fn shutdown(self) {
        let App {
            phases,
            supervisor,
            shutdown_grace,
            shutdown_delay,
            http,
            tasks,
        } = self;
        phases.unready.cancel();
        if !shutdown_delay.is_zero() {
            tracing::info!(delay = ?shutdown_delay, "shutting down: not ready; serving on while load balancers notice");
            tokio::time::sleep(shutdown_delay).await;
        }
        tracing::info!("shutting down: no more joins");
        phases.joins.cancel();
        supervisor.drain(shutdown_grace).await;
        phases.http.cancel();
        if tokio::time::timeout(HTTP_CLOSE, http).await.is_err() {
            tracing::warn!("HTTP connections still open after {HTTP_CLOSE:?}; closing");
        }
        phases.background.cancel();
        phases.history.cancel();
        for task in tasks {
            let _ = tokio::time::timeout(HISTORY_FLUSH + Duration::from_secs(2), task).await;
        }
        phases.root.cancel();
        tracing::info!("backend stopped");
    }
}

/// The caller resolver: player keys loaded (a JWKS file must read), static tokens set.
async fn authenticator(settings: &Settings) -> anyhow::Result<Authenticator> {
    let players = match &settings.players.keys {
        Some(_) => Some(Arc::new(
            PlayerVerifier::start(&settings.players)
                .await
                .map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    Ok(Authenticator::new(
        settings.players.mode,
        players,
        settings.service_token.as_deref(),
        settings.admin_token.as_deref(),
    ))
}

/// A client gets this long to send a request's headers, and an idle keep-alive connection is
/// closed after it: slow or silent connections never pile up.
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (HTTP/1.1) until `stop`, then lets open requests finish.
pub(crate) async fn serve_http(listener: TcpListener, app: axum::Router, stop: CancellationToken) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => (stream, peer),
                Err(e) => {
                    // Out of descriptors, say: wait for some to close rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let inner = hyper_util::service::TowerToHyperService::new(app.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(http::operators::Peer(peer));
            hyper::service::Service::call(&inner, request)
        });
        let connection = graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection closed with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves the backend on `listener` until `shutdown` is cancelled, then drains.
pub async fn run(listener: TcpListener, settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let app = App::start(listener, settings, shutdown.clone()).await?;
    shutdown.cancelled().await;
    app.shutdown().await;
    Ok(())
}

/// Phase "connect": Redis (required), PostgreSQL (lazily: history waits in the outbox).
async fn connect(settings: &Settings) -> anyhow::Result<Connected> {
    let store = Store::open(settings.redis.clone(), &settings.key_prefix)
        .await
        .map_err(|e| Unreachable(format!("cannot reach {}: {e}", settings.redis.describe())))?;
    let queues: Vec<&str> = settings.queues.iter().map(|q| q.name.as_str()).collect();
    let metrics = PartsMetrics::new(&queues);
    metrics.sessions.known_versions(&settings.profiles);
    let history = History::new(
        &settings.database_url,
        store.clone(),
        &settings.instance_id,
        metrics.history.clone(),
    )
    .context("DATABASE_URL")?;
    Ok(Connected {
        store,
        history,
        metrics,
    })
}

/// Phase "recover": the history schema, this replica's first heartbeat, then servers and
/// sessions left over from before this start.
async fn recover(
    history: &History,
    janitor: &Janitor,
    runtime: Option<&dyn runtime::SessionRuntime>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(Duration::from_secs(10), history.migrate()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "history: PostgreSQL not ready; starting anyway, history waits in the outbox")
        }
        Err(_) => tracing::warn!("history: PostgreSQL did not answer; starting anyway, history waits in the outbox"),
    }
    if let Some(runtime) = runtime
        && let Err(e) = runtime.recover(&janitor.sessions).await
    {
        tracing::warn!(error = %e, "could not reconcile servers against sessions");
    }
    janitor.heartbeat().await.context("first heartbeat")?;
    match janitor.reap_orphans(true).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(sessions = n, "ended sessions left over from before this start"),
        Err(e) => tracing::warn!(error = %e, "could not check for left-over sessions"),
    }
    Ok(())
}

/// The URL game servers report to: `BACKEND_INTERNAL_URL`, or the bound address (loopback
/// when bound to all addresses).
fn internal_url(settings: &Settings, bound: SocketAddr) -> String {
    if let Some(url) = &settings.internal_url {
        return url.clone();
    }
    let ip = if bound.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        bound.ip().to_string()
    };
    let host = if ip.contains(':') { format!("[{ip}]") } else { ip };
    format!("http://{host}:{}", bound.port())
}

/// Runs an essential background task; if it ends before shutdown (or panics), shuts down.
fn essential(
    name: &'static str,
    shutdown: &CancellationToken,
    task: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let result = tokio::spawn(task).await;
        if !shutdown.is_cancelled() {
            match result {
                Ok(()) => tracing::error!(task = name, "essential task stopped; shutting down"),
                Err(e) => tracing::error!(task = name, error = %e, "essential task failed; shutting down"),
            }
            shutdown.cancel();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_with_known_labels_exists_at_zero_from_the_start() {
        let parts = PartsMetrics::new(&["default", "ranked"]);
        let warm = runtime::warm::WarmState::new(runtime::warm::Bounds { min: 0, max: 0 });
        parts.registry.register(|registry| warm.register(registry));
        let text = parts.registry.render();
        let mut lines: Vec<String> = [
            "mp_joins_total{result=\"queued\"} 0",
            "mp_joins_total{result=\"cancelled\"} 0",
            "mp_sessions_ended_total{reason=\"completed\"} 0",
            "mp_sessions_ended_total{reason=\"lost\"} 0",
            "mp_sessions{state=\"matched\"} 0",
            "mp_queue_depth{queue=\"ranked\"} 0",
            "mp_tickets_timed_out_total{queue=\"default\"} 0",
            "mp_join_to_matched_seconds_count{queue=\"ranked\"} 0",
            "mp_session_skill_spread_count{queue=\"ranked\"} 0",
            "mp_history_outbox_backlog 0",
            "mp_history_events_written_total 0",
            "mp_history_lost_sessions_total 0",
            "mp_warm_servers{state=\"idle\"} 0",
            "mp_warm_cold_starts_total 0",
            "mp_queue_oldest_wait_seconds{queue=\"ranked\"} 0.0",
            "mp_join_to_formed_seconds_count{queue=\"default\"} 0",
            "mp_server_start_failures_total{reason=\"timeout\"} 0",
            "mp_server_start_failures_total{reason=\"spawn\"} 0",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        lines.extend(
            RETRIES
                .iter()
                .map(|p| format!("mp_retries_total{{op=\"{}\"}} 0", p.op())),
        );
        for line in lines {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn each_part_records_into_the_one_registry() {
        use crate::matchmaking::metrics::JoinResult;
        use crate::sessions::metrics::Supervised;
        let m = PartsMetrics::new(&[]);
        m.matchmaking.join(JoinResult::Queued);
        m.matchmaking.join(JoinResult::Queued);
        m.sessions.server_start(Duration::from_millis(3));
        m.sessions.server_start(Duration::from_secs(2));
        let guard = m.sessions.supervised(Supervised::Allocating);
        let text = m.registry.render();
        assert!(text.contains("mp_joins_total{result=\"queued\"} 2"), "{text}");
        assert!(text.contains("mp_server_start_seconds_bucket{le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("mp_server_start_seconds_count 2"), "{text}");
        assert!(text.contains("mp_sessions{state=\"allocating\"} 1"), "{text}");
        drop(guard);
        assert!(m.registry.render().contains("mp_sessions{state=\"allocating\"} 0"));
        m.matchmaking.session_quality(&protocol::sessions::Placement {
            queue: Some("ranked".into()),
            skill_spread: Some(40.0),
            max_latency_ms: Some(55.0),
            ..Default::default()
        });
        m.matchmaking.set_queue_depth("ranked", 7, 1.5);
        m.http.http("GET", "/health", 200, Duration::from_millis(1));
        let text = m.registry.render();
        assert!(
            text.contains("mp_session_skill_spread_bucket{le=\"50.0\",queue=\"ranked\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mp_session_max_latency_ms_count{queue=\"ranked\"} 1"),
            "{text}"
        );
        assert!(text.contains("mp_queue_depth{queue=\"ranked\"} 7"), "{text}");
        assert!(
            text.contains("mp_queue_oldest_wait_seconds{queue=\"ranked\"} 1.5"),
            "{text}"
        );
        assert!(!text.contains("mp_session_team_skill_gap_count"), "{text}");
        assert!(
            text.contains("mp_http_request_duration_seconds_count{method=\"GET\",route=\"/health\",status=\"200\"} 1"),
            "{text}"
        );
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads until the server closes; None if it is still open after `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Vec<u8>> {
        let mut seen = Vec::new();
        tokio::time::timeout(within, async {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()
        .map(|()| seen)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_headers_and_idle_keep_alive_connections_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve_http(listener, app, stop.clone()));

        // Slow clients: headers begun and never finished.
        let mut slow = Vec::new();
        for _ in 0..200 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            slow.push(stream);
        }
        // A client that made one request and then keeps the connection idle.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut answer = [0u8; 256];
        let n = idle.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));

        let limit = HEADER_READ_TIMEOUT + Duration::from_secs(5);
        for stream in &mut slow {
            let seen = closed_within(stream, limit).await.expect("a slow client is cut off");
            assert!(!seen.starts_with(b"HTTP/1.1 200"));
        }
        assert!(
            closed_within(&mut idle, limit).await.is_some(),
            "an idle connection is closed"
        );

        // A well-behaved client is served as before.
        let mut fresh = tokio::net::TcpStream::connect(addr).await.unwrap();
        fresh
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let seen = closed_within(&mut fresh, limit).await.unwrap();
        assert!(seen.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&seen));
        stop.cancel();
        server.await.unwrap();
    }
}
