//! The `local` runtime with the real game-server binary: full matches end to end, and
//! servers that fail to start (invariant 4).

mod common;

use std::time::Duration;

use backend::config::SettingsBuilder;
use common::{Backend, GameClient, built_binary, eventually, local_settings};
use protocol::{GameState, ServerReply};
use sqlx::Row;

/// A backend with the local runtime and the real game-server, with `adjust` applied to its
/// settings; returns it and its database.
async fn local_backend(adjust: impl FnOnce(SettingsBuilder) -> SettingsBuilder) -> (Backend, String) {
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let bin = built_binary("game-server");
    let settings = adjust(local_settings(&prefix, &db, &bin)).build().unwrap();
    (Backend::start(settings).await, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_four_players_play_two_sessions_to_the_end() {
    let (backend, db) = local_backend(|s| s.flush_wait_seconds(600.0)).await;
    let http = backend.http.clone();
    let players: Vec<String> = (0..24).map(|i| format!("e2e-{i:02}")).collect();
    for p in &players {
        assert_eq!(http.join(p).await.1["status"], "queued");
    }
    let mut plays = Vec::new();
    for (i, player) in players.iter().enumerate() {
        let http = http.clone();
        let player = player.clone();
        plays.push(tokio::spawn(async move {
            // Long-poll until matched, as a real client does.
            let matched = eventually(Duration::from_secs(30), || async {
                let body = http.status(&player, 10.0).await;
                (body["status"] == "matched").then_some(body)
            })
            .await;
            assert_eq!(matched["connect_port"], 8080);
            assert_eq!(matched["connect_tls"], false);
            assert_eq!(matched["connect_ws"], "ws://127.0.0.1:8080/play");
            let sid = matched["session_id"].as_str().unwrap().to_owned();
            let (_, session) = http.get(&format!("/sessions/{sid}")).await;
            let addr = session["addr"].as_str().unwrap().to_owned();
            let mut client = GameClient::connect(&addr).await;
            client
                .send(&format!("JOIN {}", matched["ticket"].as_str().unwrap()))
                .await;
            match client.recv().await {
                Some(ServerReply::Welcome {
                    session_id, player_id, ..
                }) => {
                    assert_eq!(
                        (session_id.as_str(), player_id.as_str()),
                        (sid.as_str(), player.as_str())
                    );
                }
                other => panic!("{player}: {other:?}"),
            }
            if i % 12 == 0 {
                client.send("REQUEST_MATCH 1").await;
            }
            let mut states = Vec::new();
            while let Some(reply) = client.recv().await {
                if let ServerReply::State(state) = reply {
                    states.push(state);
                }
            }
            assert_eq!(states, vec![GameState::Running, GameState::Stop], "{player}");
            (sid, session["server"].as_str().unwrap().to_owned())
        }));
    }
    let mut sessions = std::collections::HashMap::new();
    for play in plays {
        let (sid, server) = play.await.unwrap();
        sessions.insert(sid, server);
    }
    assert_eq!(sessions.len(), 2);

    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    eventually(Duration::from_secs(30), || async {
        let ended: i64 =
            sqlx::query_scalar("SELECT count(*) FROM matches WHERE end_reason = 'completed' AND requested_seconds = 1")
                .fetch_one(&pool)
                .await
                .unwrap();
        (ended == 2).then_some(())
    })
    .await;
    let attended: i64 =
        sqlx::query_scalar("SELECT count(*) FROM match_players WHERE joined_at IS NOT NULL AND left_at IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(attended, 24);
    // One truth for an ended session: /sessions/{id} says what history says, the reported
    // start and requested length included.
    for sid in sessions.keys() {
        let (_, session) = http.get(&format!("/sessions/{sid}")).await;
        assert_eq!(session["status"], "ended", "{session}");
        assert_eq!(session["requested_seconds"], 1, "{session}");
        assert!(session["started_at"].is_string(), "{session}");
        let player = session["players"][0].as_str().unwrap();
        let (_, history) = http.get(&format!("/players/{player}/matches")).await;
        let row = history["matches"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["session_id"] == *sid)
            .unwrap_or_else(|| panic!("{history}"));
        assert_eq!(
            (
                &session["started_at"],
                &session["ended_at"],
                &session["requested_seconds"]
            ),
            (&row["started_at"], &row["ended_at"], &row["requested_seconds"]),
            "{session} against {row}"
        );
    }
    // Invariant 5: every server is gone.
    for server in sessions.values() {
        let pid = server.strip_prefix("local-").unwrap();
        eventually(Duration::from_secs(10), || async {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        })
        .await;
    }
    let body = http.status("e2e-00", 0.0).await;
    assert_eq!(
        (body["status"].as_str(), body["end_reason"].as_str()),
        (Some("ended"), Some("completed"))
    );
    backend.stop().await;
}

/// Joins `a` and `b`, waits until they are matched, and returns `a`'s status, the session and
/// its server's pid (the local runtime names servers `local-<pid>`).
async fn matched_pair(http: &common::Http, a: &str, b: &str) -> (serde_json::Value, serde_json::Value, String) {
    http.join(a).await;
    http.join(b).await;
    let matched = eventually(Duration::from_secs(20), || async {
        let body = http.status(a, 5.0).await;
        (body["status"] == "matched").then_some(body)
    })
    .await;
    let sid = matched["session_id"].as_str().unwrap().to_owned();
    let (_, session) = http.get(&format!("/sessions/{sid}")).await;
    let pid = common::local_server_pid(&session);
    (matched, session, pid)
}

/// Writes an executable script standing in for the game server.
fn fake_server(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("fake-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

async fn failed_start_requeues_at_the_head(script: &str, ready_timeout: f64) {
    let dir = std::env::temp_dir().join(format!("mp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = fake_server(&dir, &script.replace("DIR", dir.to_str().unwrap()));
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let settings = local_settings(&prefix, &db, &bin)
        .session_size(2)
        .flush_wait_seconds(600.0)
        .server_ready_timeout_seconds(ready_timeout)
        .build()
        .unwrap();
    let backend = Backend::start(settings).await;
    let http = backend.http.clone();
    for p in ["first", "second", "third"] {
        http.join(p).await;
    }
    // The first two form a session whose server fails; they go back to the head of the queue,
    // so the next session is the same two again, not the third player who joined after them.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows = eventually(Duration::from_secs(30), || async {
        let rows = sqlx::query("SELECT players, status, end_reason FROM matches ORDER BY created_at")
            .fetch_all(&pool)
            .await
            .unwrap();
        (rows.len() >= 2 && rows[0].get::<String, _>("status") == "ended").then_some(rows)
    })
    .await;
    assert_eq!(rows[0].get::<Vec<String>, _>("players"), vec!["first", "second"]);
    assert_eq!(
        rows[0].get::<Option<String>, _>("end_reason").as_deref(),
        Some("failed")
    );
    assert_eq!(rows[1].get::<Vec<String>, _>("players"), vec!["first", "second"]);
    assert_eq!(http.status("third", 0.0).await["status"], "queued");
    backend.stop().await;
    // Whatever the fake server started is gone (invariant 5).
    all_gone(&pids_in(&dir)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_exits_at_once_fails_and_requeues() {
    failed_start_requeues_at_the_head("exit 3", 10.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_listens_times_out_and_requeues() {
    failed_start_requeues_at_the_head("echo $$ > DIR/pid.$$\nexec sleep 60", 1.0).await;
}

/// A wrapper script that starts a helper, then fails: the helper goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapper_whose_server_fails_leaves_no_child_behind() {
    failed_start_requeues_at_the_head("sleep 300 &\necho $! > DIR/pid.$!\nexit 3", 10.0).await;
}

/// The pids fake servers wrote to `dir` (as `pid.<pid>` files).
fn pids_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .into_string()
                .ok()?
                .strip_prefix("pid.")
                .map(String::from)
        })
        .collect()
}

/// Waits until no process of `pids` exists.
async fn all_gone(pids: &[String]) {
    for pid in pids {
        eventually(Duration::from_secs(10), || async {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        })
        .await;
    }
}

/// A server started through a wrapper script that also starts a helper process: when the
/// server is killed mid-match, the session fails and the helper is gone too (the whole
/// process group is signalled, and cleared when its leader exits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_server_killed_mid_match_fails_and_takes_its_children() {
    let dir = std::env::temp_dir().join(format!("mp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let game_server = built_binary("game-server");
    let wrapper = fake_server(
        &dir,
        &format!(
            "sleep 300 &\necho $! > {dir}/helper\nexec {bin} \"$@\"",
            dir = dir.display(),
            bin = game_server.display()
        ),
    );
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let settings = local_settings(&prefix, &db, &wrapper)
        .session_size(2)
        .flush_wait_seconds(600.0)
        .build()
        .unwrap();
    let backend = Backend::start(settings).await;
    let http = backend.http.clone();
    let (_, _, leader) = matched_pair(&http, "w1", "w2").await;
    let helper = std::fs::read_to_string(dir.join("helper")).unwrap().trim().to_owned();
    assert!(std::path::Path::new(&format!("/proc/{helper}")).exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader.parse().unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let body = eventually(Duration::from_secs(20), || async {
        let body = http.status("w1", 2.0).await;
        (body["status"] == "ended").then_some(body)
    })
    .await;
    assert_eq!(body["end_reason"], "failed");
    all_gone(&[leader, helper]).await;
    backend.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_joins_then_terminates_servers_after_the_grace() {
    let (backend, db) =
        local_backend(|s| s.session_size(2).flush_wait_seconds(600.0).shutdown_grace_seconds(1.0)).await;
    let http = backend.http.clone();
    let (matched, session, pid) = matched_pair(&http, "s1", "s2").await;
    // A player is in a match that would run for a minute.
    let mut client = GameClient::connect(session["addr"].as_str().unwrap()).await;
    client
        .send(&format!("JOIN {}", matched["ticket"].as_str().unwrap()))
        .await;
    assert!(matches!(client.recv().await, Some(ServerReply::Welcome { .. })));
    client.send("REQUEST_MATCH 60").await;
    assert_eq!(client.recv().await, Some(ServerReply::RunningLength(60)));

    backend.shutdown.cancel();
    // Draining once the backend has taken the signal (its shutdown runs as a task of its own):
    // not ready, no more joins.
    let status = eventually(Duration::from_secs(10), || async {
        let (status, health) = http.get("/health").await;
        (health["draining"].as_bool() == Some(true)).then_some(status)
    })
    .await;
    assert_eq!(status, hyper::StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = http.join("late").await;
    assert_eq!(status, hyper::StatusCode::SERVICE_UNAVAILABLE);
    // After the 1 s grace the server is told to stop: the player sees it end...
    let mut states = Vec::new();
    while let Some(reply) = client.recv().await {
        if let ServerReply::State(state) = reply {
            states.push(state);
        }
    }
    assert_eq!(states.last(), Some(&GameState::Stop));
    tokio::time::timeout(Duration::from_secs(60), backend.task)
        .await
        .expect("backend stops")
        .unwrap()
        .unwrap();
    // ...nothing is left running, and the session ended with the server's own report.
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "game server {pid} is gone"
    );
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let reason = eventually(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT end_reason FROM matches")
            .fetch_one(&pool)
            .await
            .ok()
            .flatten()
    })
    .await;
    assert_eq!(reason, "terminated");
}

/// With SHUTDOWN_DELAY_SECONDS, a stopping backend says it is not ready at once and goes on
/// taking joins for the delay (load balancers stop sending meanwhile); only then are joins
/// refused, with the answer marking the refusal as a draining replica's (the proxy sends it on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_backend_is_unready_first_and_takes_joins_through_its_delay() {
    // A session whose server runs keeps the HTTP server up through the 5 s grace after joins
    // are refused (with none, it closes at once, and a refused join could not be seen).
    let (backend, _db) = local_backend(|s| {
        s.session_size(2)
            .flush_wait_seconds(600.0)
            .shutdown_delay_seconds(5.0)
            .shutdown_grace_seconds(5.0)
    })
    .await;
    let http = backend.http.clone();
    let _running = matched_pair(&http, "d1", "d2").await;
    backend.shutdown.cancel();
    let began = std::time::Instant::now();
    let status = eventually(Duration::from_secs(10), || async {
        let (status, health) = http.get("/health").await;
        (health["draining"].as_bool() == Some(true)).then_some(status)
    })
    .await;
    assert_eq!(status, hyper::StatusCode::SERVICE_UNAVAILABLE, "not ready at once");
    let (status, body) = http.join("early").await;
    assert_eq!(
        status,
        hyper::StatusCode::OK,
        "joins are taken through the delay: {body}"
    );
    // The same player again (a join is idempotent, so no session forms) until it is refused.
    let refused = eventually(Duration::from_secs(10), || async {
        let (status, body) = http.join("early").await;
        (status == hyper::StatusCode::SERVICE_UNAVAILABLE).then(|| (began.elapsed(), body))
    })
    .await;
    assert!(
        refused.0 >= Duration::from_millis(4500),
        "refused after the delay, not {:?}",
        refused.0
    );
    assert_eq!(refused.1["error"]["code"], "unavailable", "{}", refused.1);
    tokio::time::timeout(Duration::from_secs(60), backend.task)
        .await
        .expect("backend stops")
        .unwrap()
        .unwrap();
}

/// A backend binary on `port` under `instance`, with the local runtime running `game_server`.
fn backend_process(
    port: u16,
    instance: &str,
    prefix: &str,
    db: &str,
    game_server: &std::path::Path,
) -> tokio::process::Child {
    tokio::process::Command::new(built_binary("backend"))
        .env_clear()
        .envs([
            ("BIND", format!("127.0.0.1:{port}")),
            ("REDIS_URL", common::redis_url()),
            ("DATABASE_URL", db.to_owned()),
            ("REDIS_KEY_PREFIX", prefix.to_owned()),
            ("TICKET_SECRET", "replaced-replica-secret-0123456789abcdef".to_owned()),
            ("SERVICE_TOKEN", common::SERVICE.to_owned()),
            ("PLAYER_AUTH", "none".to_owned()),
            ("INSTANCE_ID", instance.to_owned()),
            ("RUNTIME", "local".to_owned()),
            ("GAME_SERVER_BIN", game_server.display().to_string()),
            ("SESSION_SIZE", "2".to_owned()),
            ("FLUSH_WAIT_SECONDS", "600".to_owned()),
            ("SHUTDOWN_GRACE_SECONDS", "0".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The end reason the history recorded for `session` (waiting up to 20 s for the writer). On
/// a timeout the panic says what was read last and where the outbox stands, so a history
/// that never caught up can be told from one that could not be read.
async fn history_end_reason(pool: &sqlx::PgPool, prefix: &str, session: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let read =
            sqlx::query_scalar::<_, Option<String>>("SELECT end_reason FROM matches WHERE session_id = $1::uuid")
                .bind(session)
                .fetch_optional(pool)
                .await;
        let last = match read {
            Ok(Some(Some(reason))) => return reason,
            other => format!("{other:?}"),
        };
        if tokio::time::Instant::now() > deadline {
            let keys = matchmaking_core::keys::Keys::new(prefix);
            let outbox = keys.outbox();
            let mut redis = redis::Client::open(common::redis_url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let length: redis::RedisResult<u64> = redis::cmd("XLEN").arg(&outbox).query_async(&mut redis).await;
            let parked: redis::RedisResult<redis::Value> = redis::cmd("XRANGE")
                .arg(keys.outbox_dead())
                .arg("-")
                .arg("+")
                .query_async(&mut redis)
                .await;
            let consumers: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&outbox)
                .arg("history")
                .query_async(&mut redis)
                .await;
            panic!(
                "session {session}'s end never reached the history within 20 s: last read {last}; \
                 outbox length {length:?}, its consumers {consumers:?}, parked events {parked:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica SIGKILLed while its session is still allocating, replaced at once by one under
/// a new `INSTANCE_ID` (a new Pod after a crash). The orphaned server reports `terminated` to
/// the replacement before any janitor takes the old replica for dead: the session fails and
/// its players go back to the head of the queue (invariant 4), and then play.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_replaced_mid_allocation_requeues_the_orphaned_sessions_players() {
    let dir = std::env::temp_dir().join(format!("mp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // The real server starts at once, but its LISTENING line is held back for 3 s: the
    // session stays allocating while the server runs.
    let slow_ready = fake_server(
        &dir,
        &format!(
            "echo $$ > {dir}/pid.$$\n{bin} \"$@\" > {dir}/out.$$ &\nsleep 3\nhead -n 1 {dir}/out.$$\nwait",
            bin = built_binary("game-server").display(),
            dir = dir.display()
        ),
    );
    let prefix = common::unique_prefix();
    let db = common::fresh_database().await;
    let port = testkit::free_port().await;
    let mut first = backend_process(port, "replica-a", &prefix, &db, &slow_ready);
    testkit::listening(port).await;
    let http = common::Http::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    http.join("q1").await;
    http.join("q2").await;
    let allocating = eventually(Duration::from_secs(20), || async {
        let body = http.status("q1", 0.0).await;
        (body["status"] == "allocating").then_some(body)
    })
    .await;
    let orphaned = allocating["session_id"].as_str().unwrap().to_owned();
    http.join("q3").await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    // The replacement takes the same address; its servers are ready at once.
    let second = backend_process(port, "replica-b", &prefix, &db, &built_binary("game-server"));
    testkit::listening(port).await;
    // A client of its own: the old one's pooled connections were to the killed replica (one
    // reused at the wrong moment is reset; seen once under load).
    let http = common::Http::new(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    // The orphan's report failed its session, which requeued q1 and q2 ahead of q3: they
    // form the next session together.
    let body = eventually(Duration::from_secs(30), || async {
        let body = http.status("q1", 2.0).await;
        (body["status"] == "matched" && body["session_id"] != orphaned.as_str()).then_some(body)
    })
    .await;
    assert_eq!(body["players"], serde_json::json!(["q1", "q2"]));
    assert_eq!(http.status("q3", 0.0).await["status"], "queued");
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let reason = history_end_reason(&pool, &prefix, &orphaned).await;
    assert_eq!(reason, "failed");
    // A graceful stop: its server is terminated and reaped before it exits.
    let mut second = second;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(second.id().unwrap()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    second.wait().await.unwrap();
    // The orphaned wrapper finishes by itself once its held-back line is out.
    all_gone(&pids_in(&dir)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
