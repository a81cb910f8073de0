//! Start-up mistakes: a bad or unreachable Redis, a bad PostgreSQL URL, a game-server binary
//! that is not there. Each is one line on stderr naming the problem, exit status 2, and no
//! terminal colour codes in what is written to a file or pipe.

use std::process::Command;

use testkit::built_binary;

const SECRET: &str = "startup-test-secret-0123456789abcd";

/// Runs `binary` with `env` (and nothing else from the environment); returns its exit
/// status and the lines of stderr that are not log records.
fn start(binary: &str, env: &[(&str, String)]) -> (Option<i32>, Vec<String>, String) {
    let output = Command::new(built_binary(binary))
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains('\x1b'), "colour codes in piped output: {stderr:?}");
    let lines = stderr
        .lines()
        .filter(|l| l.starts_with(&format!("{binary}: ")))
        .map(String::from)
        .collect();
    (output.status.code(), lines, stderr)
}

async fn backend_env(redis: &str) -> Vec<(&'static str, String)> {
    vec![
        ("BIND", format!("127.0.0.1:{}", testkit::free_port().await)),
        ("REDIS_URL", redis.to_owned()),
        ("DATABASE_URL", "postgres://mp@127.0.0.1:1/postgres".to_owned()),
        ("TICKET_SECRET", SECRET.to_owned()),
        ("PLAYER_AUTH", "none".to_owned()),
        ("RUNTIME", "none".to_owned()),
    ]
}

#[tokio::test]
async fn an_unreachable_redis_is_one_line_and_exit_2() {
    let port = testkit::free_port().await;
    let url = format!("redis://127.0.0.1:{port}");
    let (code, lines, all) = start("backend", &backend_env(&url).await);
    assert_eq!(code, Some(2), "{all}");
    assert_eq!(lines.len(), 1, "{all}");
    assert!(
        lines[0].starts_with(&format!("backend: cannot reach Redis at 127.0.0.1:{port}: ")),
        "{lines:?}"
    );
    assert_eq!(lines[0].matches("refused").count(), 1, "said once: {lines:?}");

    let mut env = backend_env("").await;
    env.retain(|(k, _)| *k != "REDIS_URL" && *k != "DATABASE_URL");
    env.extend([("BACKEND_URL", "http://127.0.0.1:1".to_owned()), ("REDIS_URL", url)]);
    let (code, lines, all) = start("proxy", &env);
    assert_eq!(code, Some(2), "{all}");
    assert_eq!(lines.len(), 1, "{all}");
    assert!(lines[0].starts_with("proxy: cannot reach Redis at"), "{lines:?}");
}

/// Tickets are HS256 tokens: a TICKET_SECRET under 32 bytes is refused by the backend and the
/// proxy, with one line that says why, before anything starts.
#[tokio::test]
async fn a_short_ticket_secret_is_one_line_and_exit_2() {
    let mut env = backend_env(&testkit::redis_url()).await;
    for (k, v) in &mut env {
        if *k == "TICKET_SECRET" {
            *v = "abc".to_owned();
        }
    }
    let (code, lines, all) = start("backend", &env);
    assert_eq!(code, Some(2), "{all}");
    assert_eq!(
        lines,
        [
            "backend: TICKET_SECRET must be at least 32 bytes (tickets are HS256 tokens signed with it), got 3; generate one with `openssl rand -hex 32`"
        ],
        "{all}"
    );
    env.retain(|(k, _)| *k != "DATABASE_URL" && *k != "RUNTIME");
    env.push(("BACKEND_URL", "http://127.0.0.1:1".to_owned()));
    let (code, lines, all) = start("proxy", &env);
    assert_eq!(code, Some(2), "{all}");
    assert_eq!(lines.len(), 1, "{all}");
    assert!(
        lines[0].starts_with("proxy: TICKET_SECRET must be at least 32 bytes"),
        "{lines:?}"
    );
}

#[tokio::test]
async fn bad_urls_and_a_missing_game_server_are_refused_before_anything_starts() {
    let redis = testkit::redis_url();
    let cases: [(&str, String, &str); 4] = [
        (
            "REDIS_URL",
            "http://127.0.0.1:6379".into(),
            "backend: REDIS_URL is not a Redis URL",
        ),
        (
            "DATABASE_URL",
            "mysql://127.0.0.1/x".into(),
            "backend: DATABASE_URL is not a PostgreSQL URL",
        ),
        (
            "REDIS_SENTINELS",
            "host:notaport".into(),
            "backend: REDIS_SENTINELS: \"host:notaport\" has no valid port",
        ),
        (
            "RUNTIME",
            "local".into(),
            "backend: GAME_SERVER_BIN /no/such/game-server is not an executable file",
        ),
    ];
    for (name, value, want) in cases {
        let mut env = backend_env(&redis).await;
        env.retain(|(k, _)| *k != name);
        env.push((name, value));
        env.push(("GAME_SERVER_BIN", "/no/such/game-server".into()));
        let (code, lines, all) = start("backend", &env);
        assert_eq!(code, Some(2), "{name}: {all}");
        assert_eq!(lines.len(), 1, "{name}: {all}");
        assert!(lines[0].starts_with(want), "{name}: {lines:?}");
    }
}

#[tokio::test]
async fn a_queue_file_with_mistakes_is_one_line_per_mistake_and_exit_2() {
    let dir = std::env::temp_dir().join(format!("mp-startup-queues-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("queues.yaml");
    std::fs::write(
        &file,
        "queues:\n  - {name: duo, teams: 2, team_size: 2, max_party_size: 3}\n  - {name: casual, session_size: 0}\n  - {name: x, session_size: 2, colour: red}\n",
    )
    .unwrap();
    let mut env = backend_env(&testkit::redis_url()).await;
    env.push(("MATCHMAKING_CONFIG", file.display().to_string()));
    let (code, lines, all) = start("backend", &env);
    assert_eq!(code, Some(2), "{all}");
    let head = format!("backend: MATCHMAKING_CONFIG {}: ", file.display());
    assert_eq!(lines.len(), 3, "{all}");
    assert!(lines.iter().all(|l| l.starts_with(&head)), "{lines:?}");
    assert!(
        lines[0].contains("queue \"duo\": max_party_size must be 1 to team_size (2), got 3"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("queue \"casual\": session_size must be 1 to 1000, got 0"),
        "{lines:?}"
    );
    assert!(lines[2].contains("queue \"x\": unknown field `colour`"), "{lines:?}");
    // The example shipped with the code loads.
    env.retain(|(k, _)| *k != "MATCHMAKING_CONFIG");
    env.push((
        "MATCHMAKING_CONFIG",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/queues.yaml").to_owned(),
    ));
    env.push(("REDIS_URL", "redis://127.0.0.1:1".to_owned()));
    let (code, lines, all) = start("backend", &env);
    assert_eq!(code, Some(2), "{all}");
    assert!(
        lines[0].starts_with("backend: cannot reach Redis"),
        "validation passed: {lines:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
