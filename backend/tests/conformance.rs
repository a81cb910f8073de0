//! `backend conformance`: a server is started as the local runtime starts a session's, and
//! each part of the hosting contract is said met or not: a server built on the SDK meets every
//! part; one that goes quiet, never reports, or ignores SIGTERM is told which parts it misses;
//! a profile that is not there is bad input.

mod common;

use std::path::Path;
use std::process::Output;

fn run(file: &Path, server: &str) -> Output {
    std::process::Command::new(common::built_binary("backend"))
        .args(["conformance", "--server", server, "--observe-seconds", "3.5"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("MATCHMAKING_CONFIG", file)
        .output()
        .unwrap()
}

/// The report's line for `part`, e.g. `PASS  start     ready (sdk) in 0.51 s`.
fn line<'a>(stdout: &'a str, part: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(part))
        .unwrap_or_else(|| panic!("no {part} line in:\n{stdout}"))
        .trim()
}

#[test]
fn each_part_of_the_contract_is_said_met_or_not() {
    let dir = std::env::temp_dir().join(format!("mp-conformance-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let sdk = common::built_binary("sdk-example-server");
    let deaf = dir.join("deaf");
    std::fs::write(
        &deaf,
        "#!/usr/bin/env python3\nimport os, signal, socket, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ns = socket.socket()\ns.bind((\"127.0.0.1\", int(os.environ[\"MATCHPLANE_PORT_GAME\"])))\ns.listen()\ntime.sleep(600)\n",
    )
    .unwrap();
    std::fs::set_permissions(&deaf, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let file = dir.join("servers.yaml");
    std::fs::write(
        &file,
        format!(
            r#"
servers:
  good:
    command: ["{sdk}", "--ready-after-ms", "300"]
    ports: [{{name: game, protocol: tcp}}, {{name: udp, protocol: udp}}]
    ready: sdk
    identity: proxy-v2
    ends: sdk
    health_timeout_seconds: 3
  warm:
    command: ["{sdk}"]
    ports: [{{name: game, protocol: tcp}}]
    ready: sdk
    identity: proxy-v2
    ends: sdk
    warm_pool: {{min: 1, max: 2}}
  quiet:
    command: ["{sdk}", "--no-report", "--health-for-seconds", "1"]
    ports: [{{name: game, protocol: tcp}}]
    ready: sdk
    identity: proxy-v2
    ends: sdk
    health_timeout_seconds: 2
  deaf:
    command: ["{deaf}"]
    ports: [{{name: game, protocol: tcp}}]
    stop_grace_seconds: 1
queues:
  - {{name: q, session_size: 2, server: good}}
"#,
            sdk = sdk.display(),
            deaf = deaf.display()
        ),
    )
    .unwrap();

    let good = run(&file, "good");
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert_eq!(
        good.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&good.stderr)
    );
    for part in [
        "start", "tcp", "identity", "health", "stays-up", "stop", "result", "cleanup",
    ] {
        assert!(line(&stdout, part).starts_with("PASS"), "{stdout}");
    }
    assert!(line(&stdout, "identity").contains("WELCOME conformance-a"), "{stdout}");
    assert!(
        line(&stdout, "result").contains("terminated with 2 players"),
        "{stdout}"
    );
    assert!(stdout.contains("8 of 8 required parts met"), "{stdout}");

    // Started warm, it polls, takes the session it is handed, and plays it as a cold one.
    let warm = run(&file, "warm");
    let stdout = String::from_utf8_lossy(&warm.stdout);
    assert_eq!(warm.status.code(), Some(0), "{stdout}");
    assert!(line(&stdout, "warm").starts_with("PASS"), "{stdout}");
    assert!(
        line(&stdout, "start").contains("took the session it was handed"),
        "{stdout}"
    );
    assert!(line(&stdout, "result").starts_with("PASS"), "{stdout}");

    let quiet = run(&file, "quiet");
    let stdout = String::from_utf8_lossy(&quiet.stdout);
    assert_eq!(quiet.status.code(), Some(1), "{stdout}");
    assert!(line(&stdout, "health").starts_with("FAIL"), "{stdout}");
    assert!(line(&stdout, "result").starts_with("FAIL"), "{stdout}");
    assert!(line(&stdout, "start").starts_with("PASS"), "{stdout}");

    let deaf = run(&file, "deaf");
    let stdout = String::from_utf8_lossy(&deaf.stdout);
    assert_eq!(deaf.status.code(), Some(1), "{stdout}");
    assert!(line(&stdout, "start").contains("ready (port)"), "{stdout}");
    assert!(line(&stdout, "stop").starts_with("FAIL"), "{stdout}");
    assert!(
        line(&stdout, "cleanup").starts_with("PASS"),
        "killed, group and all: {stdout}"
    );

    let missing = run(&file, "nowhere");
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("there is no server profile \"nowhere\" (profiles: deaf, good, quiet, warm)"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
