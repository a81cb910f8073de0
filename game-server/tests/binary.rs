//! The built `game-server` binary, as a parent process (the backend's local runtime) sees it:
//! `--port 0`, the `LISTENING` line, a full 12-player match, the result report, exit codes.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{SESSION, report_receiver, roster};
use protocol::api::EndReason;
use protocol::{GameState, ServerReply};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

const REPORT_TOKEN: &str = "report-token-for-test";

fn command(players: &[String], report_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_game-server"));
    cmd.args(["--bind", "127.0.0.1", "--port", "0"])
        .env("SESSION_ID", SESSION)
        .env("PLAYERS", players.join(","))
        .env("TICKET_SECRET", common::SECRET)
        .env("REPORT_URL", report_url)
        .env("REPORT_TOKEN", REPORT_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

async fn listening(child: &mut Child) -> std::net::SocketAddr {
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    timeout(Duration::from_secs(10), BufReader::new(stdout).read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    line.trim()
        .strip_prefix("LISTENING ")
        .expect("LISTENING line")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn twelve_players_play_a_one_second_match_and_the_result_is_reported() {
    let players = roster(12);
    // The first report attempt gets a 503: the server must retry.
    let (url, mut reports) = report_receiver(vec![503]).await;
    let mut child = command(&players, &url).spawn().unwrap();
    let addr = listening(&mut child).await;

    let mut clients = Vec::new();
    for player in &players {
        clients.push(common::joined(addr, player).await);
    }
    clients[0].send("REQUEST_MATCH 1").await;
    clients[0].expect(ServerReply::RunningLength(1)).await;
    let plays = clients.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(reply) = c.recv().await {
                seen.push(reply);
            }
            seen
        })
    });
    for play in plays {
        let seen = play.await.unwrap();
        assert_eq!(
            seen,
            vec![
                ServerReply::State(GameState::Running),
                ServerReply::State(GameState::Stop)
            ]
        );
    }

    let status = timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    let first = reports.recv().await.unwrap();
    let second = reports.recv().await.expect("retried after the 503");
    assert_eq!(first.report, second.report);
    assert_eq!(second.authorization, format!("Bearer {REPORT_TOKEN}"));
    assert_eq!(second.path, format!("/internal/sessions/{SESSION}/result"));
    let report = second.report;
    assert_eq!(report.session_id, SESSION);
    assert_eq!(report.end_reason, EndReason::Completed);
    assert_eq!(report.requested_seconds, Some(1));
    let ran = report.ended_at - report.started_at.unwrap();
    assert!(
        ran >= time::Duration::seconds(1) && ran < time::Duration::seconds(3),
        "ran {ran}"
    );
    assert_eq!(report.players.len(), 12);
    assert!(
        report
            .players
            .iter()
            .all(|p| p.joined_at.is_some() && p.left_at.is_some())
    );
}

#[tokio::test]
async fn sigterm_drains_with_terminated_and_exits_zero() {
    let players = roster(2);
    let (url, mut reports) = report_receiver(vec![]).await;
    let mut child = command(&players, &url).spawn().unwrap();
    let addr = listening(&mut child).await;
    let mut p1 = common::joined(addr, "p1").await;
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    p1.expect(ServerReply::State(GameState::Stop)).await;
    p1.expect_closed().await;
    let status = timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(reports.recv().await.unwrap().report.end_reason, EndReason::Terminated);
}

#[tokio::test]
async fn an_unreachable_report_url_gives_up_within_the_budget_and_exits_zero() {
    // Nothing listens on the discard port of loopback; the server retries, then exits anyway.
    let mut child = command(&roster(1), "http://127.0.0.1:9/result")
        .arg("--open-timeout-seconds")
        .arg("0.2")
        .spawn()
        .unwrap();
    let _ = listening(&mut child).await;
    let status = timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn bad_config_exits_2_with_one_line_before_binding() {
    for (args, env_secret, needle) in [
        (vec!["--port", "0"], true, "SESSION_ID"),
        (vec!["--port", "0", "--session-id", "s"], true, "PLAYERS"),
        (
            vec!["--port", "0", "--session-id", "s", "--players", "a"],
            false,
            "TICKET_SECRET",
        ),
        (vec!["--port", "not-a-port"], true, "not-a-port"),
        (
            vec![
                "--port",
                "0",
                "--session-id",
                "s",
                "--players",
                "a",
                "--start-policy",
                "whenever",
            ],
            true,
            "whenever",
        ),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_game-server"));
        cmd.args(&args).env_clear();
        if env_secret {
            cmd.env("TICKET_SECRET", "x");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "nothing bound, nothing printed");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn closing_stdin_drains_when_asked_to() {
    let (url, mut reports) = report_receiver(vec![]).await;
    let mut child = command(&roster(1), &url)
        .arg("--exit-on-stdin-close")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = listening(&mut child).await;
    drop(child.stdin.take());
    let status = timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    assert_eq!(reports.recv().await.unwrap().report.end_reason, EndReason::Terminated);
}
