//! Health answers from the last background checks: a PostgreSQL that accepts connections and
//! never answers leaves the replica ready (matching goes on) and `/health` still answers within
//! a readiness probe's default 1 s timeout; `/livez` depends on nothing.

mod common;

use std::time::Duration;

use common::{Backend, eventually, settings};
use hyper::StatusCode;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_postgres_never_slows_health_down() {
    // Accepts connections and never says a word: every PostgreSQL call waits until its timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let db = format!("postgres://mp@{silent_addr}/nowhere");
    let backend = Backend::start(settings(&common::unique_prefix(), &db).build().unwrap()).await;

    for _ in 0..5 {
        let (status, health) = tokio::time::timeout(Duration::from_secs(1), backend.http.get("/health"))
            .await
            .expect("health answers within a probe's timeout");
        assert_eq!(status, StatusCode::OK, "{health}");
        assert_eq!(
            (
                health["status"].as_str(),
                health["postgres"].as_str(),
                health["redis"].as_str()
            ),
            (Some("degraded"), Some("down"), Some("ok"))
        );
    }
    let (status, live) = backend.http.get("/livez").await;
    assert_eq!((status, live), (StatusCode::OK, serde_json::json!({"status": "ok"})));

    // Joins go on meanwhile.
    let (status, body) = backend.http.join("while-pg-hangs").await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("queued")));
    eventually(Duration::from_secs(5), || async {
        let (_, health) = backend.http.get("/health").await;
        (health["history_backlog"] == 0).then_some(())
    })
    .await;
    backend.stop().await;
    held.abort();
}
