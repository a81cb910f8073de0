//! Warm game servers with the local runtime and the real game-server binary: sessions take
//! warm servers and play on them (report included), the pool refills, a warm server that dies
//! is replaced, an empty pool falls back to cold starts, and under three replicas no server is
//! handed two sessions. (The pool's sizing policy is tested on a paused clock in
//! `runtime::warm`.)

mod common;

use std::collections::HashSet;
use std::time::Duration;

use backend::config::SettingsBuilder;
use common::{Backend, built_binary, eventually, local_settings};

async fn local_backend(prefix: &str, db: &str, adjust: impl FnOnce(SettingsBuilder) -> SettingsBuilder) -> Backend {
    let bin = built_binary("game-server");
    // Servers of sessions nobody plays are terminated soon after the backend is told to stop.
    let settings = local_settings(prefix, db, &bin).shutdown_grace_seconds(0.5);
    Backend::start(adjust(settings).build().unwrap()).await
}

/// Live processes started as warm servers by this test process (the local runtime names them
/// `warm-<backend pid>-<n>`), by pid.
fn warm_pids() -> HashSet<String> {
    let tag = format!("WARM_SERVER_ID=warm-{}-", std::process::id());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.to_owned();
            pid.parse::<u32>().ok()?;
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .any(|var| var.starts_with(tag.as_bytes()))
                .then_some(pid)
        })
        .collect()
}

/// Joins `players` and waits until each is matched; returns each session id with its server's pid.
async fn matched(http: &common::Http, players: &[String]) -> Vec<(String, String, Vec<serde_json::Value>)> {
    for p in players {
        http.join(p).await;
    }
    let mut sessions: Vec<(String, String, Vec<serde_json::Value>)> = Vec::new();
    for p in players {
        let status = eventually(Duration::from_secs(20), || async {
            let body = http.status(p, 5.0).await;
            (body["status"] == "matched").then_some(body)
        })
        .await;
        let sid = status["session_id"].as_str().unwrap().to_owned();
        match sessions.iter_mut().find(|(s, _, _)| *s == sid) {
            Some((_, _, statuses)) => statuses.push(status),
            None => {
                let (_, session) = http.get(&format!("/sessions/{sid}")).await;
                sessions.push((sid, common::local_server_pid(&session), vec![status]));
            }
        }
    }
    sessions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_take_warm_servers_the_pool_refills_and_a_dead_one_is_replaced() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let backend = local_backend(&prefix, &db, |s| s.session_size(2).warm_pool(2, 2)).await;
    let http = backend.http.clone();
    // Full once both are listening (a process exists a moment before it listens).
    let health = eventually(Duration::from_secs(15), || async {
        let (_, health) = http.get("/health").await;
        (health["warm_servers"]["idle"] == 2).then_some(health)
    })
    .await;
    assert_eq!(health["warm_servers"]["target"], 2, "{health}");
    let pool = warm_pids();
    assert_eq!(pool.len(), 2);
    // Long ids make a hand-over far longer than a game line.
    let players: Vec<String> = ["a", "b"]
        .iter()
        .map(|p| format!("warm-{p}-{}", "x".repeat(120)))
        .collect();
    let sessions = matched(&http, &players).await;
    let (sid, pid, statuses) = &sessions[0];
    assert!(
        pool.contains(pid),
        "the session took a warm server ({pid} not in {pool:?})"
    );
    // The pool refills beside the server in play.
    let idle = eventually(Duration::from_secs(15), || async {
        let mut warm = warm_pids();
        let playing = warm.remove(pid);
        (playing && warm.len() == 2).then_some(warm)
    })
    .await;

    // The warm server is that session's server: players join with their tickets and play,
    // and the result is reported with the hand-over's report token.
    let (_, session) = http.get(&format!("/sessions/{sid}")).await;
    let addr = session["addr"].as_str().unwrap().to_owned();
    common::play_to_the_end(&addr, statuses).await;
    let ended = eventually(Duration::from_secs(15), || async {
        let (_, s) = http.get(&format!("/sessions/{sid}")).await;
        (s["status"] == "ended").then_some(s)
    })
    .await;
    assert_eq!(ended["end_reason"], "completed", "{ended}");

    let (_, health) = http.get("/health").await;
    assert_eq!(
        (
            &health["warm_servers"]["handed"],
            &health["warm_servers"]["cold_starts"]
        ),
        (&serde_json::json!(1), &serde_json::json!(0)),
        "{health}"
    );
    // The same figures for Prometheus.
    let (_, metrics) = http.get("/metrics").await;
    let metrics = metrics.as_str().unwrap();
    for line in [
        "mp_warm_handed_total 1",
        "mp_warm_cold_starts_total 0",
        "mp_warm_pool_target 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    // A warm server killed while idle is replaced by a new one.
    let victim = idle.iter().next().unwrap().clone();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &victim])
            .status()
            .unwrap()
            .success()
    );
    eventually(Duration::from_secs(15), || async {
        let warm = warm_pids();
        (!warm.contains(&victim) && !warm.contains(pid) && warm.len() == 2).then_some(())
    })
    .await;
    let (_, health) = http.get("/health").await;
    assert_eq!(health["warm_servers"]["replaced"], 1, "{health}");
    let (_, metrics) = http.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap()
            .lines()
            .any(|l| l == "mp_warm_replaced_total 1"),
        "{metrics}"
    );
    backend.stop().await;
    // Stopping the backend stops its idle warm servers.
    eventually(Duration::from_secs(15), || async {
        warm_pids().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pool_falls_back_to_cold_starts() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let backend = local_backend(&prefix, &db, |s| s.session_size(2).warm_pool(1, 1)).await;
    eventually(Duration::from_secs(15), || async {
        let (_, health) = backend.http.get("/health").await;
        (health["warm_servers"]["idle"] == 1).then_some(())
    })
    .await;
    let pool = warm_pids();
    // Three sessions form in one round: one takes the warm server, the others start cold.
    let players: Vec<String> = (0..6).map(|i| format!("cold-{i}")).collect();
    let sessions = matched(&backend.http, &players).await;
    assert_eq!(sessions.len(), 3);
    let servers: HashSet<&String> = sessions.iter().map(|(_, pid, _)| pid).collect();
    assert_eq!(servers.len(), 3, "one server per session");
    let warm = sessions.iter().filter(|(_, pid, _)| pool.contains(pid)).count();
    assert!(warm <= 1, "only the one warm server was there to take");
    assert!(sessions.len() - warm >= 2, "the others started cold");
    let (_, health) = backend.http.get("/health").await;
    assert!(health["warm_servers"]["cold_starts"].as_u64().unwrap() >= 2, "{health}");
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_never_hand_one_warm_server_two_sessions() {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(
            local_backend(&prefix, &db, |s| {
                s.session_size(2).warm_pool(3, 3).instance_id(&format!("replica-{i}"))
            })
            .await,
        );
    }
    for replica in &replicas {
        eventually(Duration::from_secs(20), || async {
            let (_, health) = replica.http.get("/health").await;
            (health["warm_servers"]["idle"] == 3).then_some(())
        })
        .await;
    }
    let warm_before = warm_pids();
    // 36 players join through the three replicas at once: 18 sessions.
    let players: Vec<String> = (0..36).map(|i| format!("trio-{i:02}")).collect();
    let joins = players.iter().enumerate().map(|(i, p)| {
        let http = replicas[i % 3].http.clone();
        let p = p.clone();
        async move { http.join(&p).await }
    });
    futures_util::future::join_all(joins).await;
    let sessions = matched(&replicas[0].http, &players).await;
    assert_eq!(sessions.len(), 18);
    let servers: HashSet<&String> = sessions.iter().map(|(_, pid, _)| pid).collect();
    assert_eq!(servers.len(), 18, "every session its own server: {sessions:?}");
    let warm_used = sessions.iter().filter(|(_, pid, _)| warm_before.contains(pid)).count();
    assert!(warm_used >= 3, "warm servers were used ({warm_used})");
    for replica in replicas {
        replica.stop().await;
    }
}
