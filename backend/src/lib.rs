//! matchplane's matchmaking control plane (DESIGN §4–7).
//!
//! [`run`] serves the HTTP API on a bound listener and runs the replica's background work:
//! the matcher, session supervision, the janitor, the events listener and the history writer.
//! On shutdown it stops taking joins, lets running matches finish for the grace period,
//! terminates what is left, and only then stops serving HTTP, so result reports still land.

pub mod api;
pub mod config;
pub mod error;
pub mod events;
pub mod history;
pub mod matcher;
pub mod metrics;
pub mod runtime;
pub mod store;
pub mod supervisor;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use config::{Config, RuntimeKind, Settings};

use crate::store::{FormRules, Store};
use crate::supervisor::{Supervisor, SupervisorConfig};

/// Most sessions one replica supervises at once; the matcher waits when it is reached.
const MAX_ACTIVE_SESSIONS: usize = 2000;
/// How often the janitor runs and the heartbeat is renewed.
const JANITOR_EVERY: Duration = Duration::from_secs(5);
/// How long a heartbeat lasts: a replica silent this long is taken for dead.
const HEARTBEAT_TTL: Duration = Duration::from_secs(20);
/// After the HTTP server stops, how long the history writer may keep flushing.
const HISTORY_FLUSH: Duration = Duration::from_secs(5);

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
) -> tokio::task::JoinHandle<()> {
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

/// Serves the backend on `listener` until `shutdown` is cancelled, then drains.
pub async fn run(listener: TcpListener, settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let bound = listener.local_addr()?;
    let store = Store::connect(&settings.redis_url, &settings.key_prefix)
        .await
        .with_context(|| format!("connecting to Redis at {}", settings.redis_url))?;
    let metrics = Arc::new(metrics::Metrics::default());
    let history = history::History::new(
        &settings.database_url,
        store.clone(),
        &settings.instance_id,
        metrics.clone(),
    )
    .context("DATABASE_URL")?;
    let mut pods = None;
    let runtime: Option<Arc<dyn runtime::SessionRuntime>> = match settings.runtime {
        RuntimeKind::Local => Some(Arc::new(runtime::local::LocalRuntime::new(
            settings.game_server_bin.clone(),
            String::from_utf8_lossy(settings.secret.expose()).into_owned(),
            settings.game_server_log.clone(),
        ))),
        RuntimeKind::Kubernetes => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API (in-cluster config, or KUBECONFIG outside)")?;
            pods = Some(kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
                client.clone(),
                &settings.namespace,
            ));
            Some(Arc::new(runtime::kubernetes::KubernetesRuntime::new(
                client,
                settings.pod_template.clone(),
            )))
        }
        RuntimeKind::None => None,
    };
    if let Some(pods) = &pods {
        match runtime::kubernetes::reconcile(pods, &store, Duration::from_secs(30)).await {
            Ok((0, 0)) => {}
            Ok((deleted, failed)) => tracing::warn!(deleted, failed, "reconciled pods against sessions"),
            Err(e) => tracing::warn!(error = %e, "could not reconcile pods against sessions"),
        }
    }
    let supervisor = Supervisor::new(
        store.clone(),
        SupervisorConfig {
            instance: settings.instance_id.clone(),
            runtime,
            secret: settings.secret.clone(),
            internal_url: internal_url(&settings, bound),
            ready_timeout: settings.ready_timeout,
        },
        metrics.clone(),
    );
    match tokio::time::timeout(Duration::from_secs(10), history.migrate()).await {
        Ok(Ok(())) => tracing::info!("history: migrations applied"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "history: PostgreSQL not ready; starting anyway, history waits in the outbox")
        }
        Err(_) => tracing::warn!("history: PostgreSQL did not answer; starting anyway, history waits in the outbox"),
    }
    store
        .heartbeat(&settings.instance_id, HEARTBEAT_TTL)
        .await
        .context("first heartbeat")?;
    match supervisor.reap_orphans(true).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(sessions = n, "ended sessions left over from before this start"),
        Err(e) => tracing::warn!(error = %e, "could not check for left-over sessions"),
    }

    let draining = CancellationToken::new();
    let waiters = Arc::new(events::Waiters::default());
    let matcher_wake = Arc::new(Notify::new());
    let state = Arc::new(api::AppState {
        store: store.clone(),
        history: history.clone(),
        settings: settings.clone(),
        metrics: metrics.clone(),
        waiters: waiters.clone(),
        supervisor: supervisor.clone(),
        matcher_wake: matcher_wake.clone(),
        draining: draining.clone(),
    });

    let rules = FormRules {
        size: settings.session_size,
        min_partial: settings.min_partial,
        flush_wait_ms: i64::try_from(settings.flush_wait.as_millis()).unwrap_or(i64::MAX),
    };
    let background = CancellationToken::new();
    let history_stop = CancellationToken::new();
    let mut tasks = vec![
        essential(
            "matcher",
            &shutdown,
            matcher::run(
                matcher::Matcher {
                    store: store.clone(),
                    supervisor: supervisor.clone(),
                    rules,
                    instance: settings.instance_id.clone(),
                    max_active: MAX_ACTIVE_SESSIONS,
                    metrics: metrics.clone(),
                    wake: matcher_wake,
                },
                draining.clone(),
            ),
        ),
        essential(
            "events",
            &shutdown,
            events::listen(store.clone(), waiters, supervisor.clone(), background.clone()),
        ),
        essential(
            "janitor",
            &shutdown,
            janitor(
                store.clone(),
                supervisor.clone(),
                settings.instance_id.clone(),
                background.clone(),
            ),
        ),
        essential(
            "history",
            &shutdown,
            history.clone().run_writer(history_stop.clone(), HISTORY_FLUSH),
        ),
    ];
    if let Some(pods) = pods {
        let reaper =
            runtime::kubernetes::reaper(pods, store.clone(), runtime::kubernetes::REAP_GRACE, background.clone());
        tasks.push(essential("pod reaper", &shutdown, reaper));
    }

    let http_stop = CancellationToken::new();
    let server = {
        let http_stop = http_stop.clone();
        let app = api::router(state);
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { http_stop.cancelled().await })
                .await
        })
    };
    tracing::info!(addr = %bound, instance = %settings.instance_id, runtime = ?settings.runtime, "backend ready");

    shutdown.cancelled().await;
    tracing::info!("shutting down: no more joins");
    draining.cancel();
    supervisor.drain(settings.shutdown_grace).await;
    http_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(5), server).await.is_err() {
        tracing::warn!("HTTP connections still open after 5 s; closing");
    }
    background.cancel();
    history_stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(HISTORY_FLUSH + Duration::from_secs(2), task).await;
    }
    tracing::info!("backend stopped");
    Ok(())
}

/// Renews this replica's heartbeat and ends sessions nobody supervises.
async fn janitor(store: Store, supervisor: Supervisor, instance: String, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(JANITOR_EVERY) => {}
        }
        if let Err(e) = store.heartbeat(&instance, HEARTBEAT_TTL).await {
            tracing::warn!(error = %e, "heartbeat failed");
            continue;
        }
        if let Err(e) = supervisor.reap_orphans(false).await {
            tracing::warn!(error = %e, "janitor pass failed");
        }
    }
}
