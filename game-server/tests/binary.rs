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

/// A warm server `id` (no session until a hand-over), started and listening.
async fn warm(id: &str) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_game-server"))
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .env("WARM_SERVER_ID", id)
        .env("TICKET_SECRET", common::SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr = listening(&mut child).await;
    (child, addr)
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

/// Sends one line on a new connection and returns the one line answered ("" when closed).
async fn answer(addr: std::net::SocketAddr, line: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    timeout(Duration::from_secs(10), BufReader::new(stream).read_line(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    answer.trim().to_owned()
}

#[tokio::test]
async fn a_warm_server_takes_one_signed_handover_then_plays_that_session() {
    use protocol::ticket::unix_now;
    use protocol::{Handover, TicketSecret, handover};
    let players = roster(2);
    let (url, mut reports) = report_receiver(vec![]).await;
    let (mut child, addr) = warm("warm-1").await;
    let now = unix_now();
    let mut valid = Handover::new("warm-1", SESSION, players.clone(), now);
    valid.report_url = Some(url);
    valid.report_token = Some(REPORT_TOKEN.into());
    let secret = common::secret();

    // Before its hand-over the server refuses everything else, one ERROR line each.
    assert_eq!(
        answer(addr, &format!("JOIN {}", common::ticket("p1", SESSION))).await,
        "ERROR wrong_session"
    );
    assert_eq!(answer(addr, "HELLO there").await, "ERROR join_required");
    let forged = TicketSecret::new("another-secret").unwrap().mint_handover(&valid);
    let other_server = secret.mint_handover(&Handover {
        srv: "warm-2".into(),
        ..valid.clone()
    });
    let expired = secret.mint_handover(&Handover {
        iat: now - 600,
        exp: now - 300,
        ..valid.clone()
    });
    let a_game_ticket = common::ticket("p1", SESSION);
    for (what, token, code) in [
        ("forged", forged.as_str(), "bad_ticket"),
        ("for another server", &other_server, "bad_ticket"),
        ("expired", &expired, "expired_ticket"),
        ("a player's ticket", &a_game_ticket, "bad_ticket"),
        ("garbage", "x.y.z", "bad_ticket"),
    ] {
        assert_eq!(
            answer(addr, &handover::assign(token)).await,
            format!("ERROR {code}"),
            "{what}"
        );
    }

    // The real one: taken, and the server is now that session's.
    let token = secret.mint_handover(&valid);
    assert_eq!(
        answer(addr, handover::assign(&token).trim_end()).await,
        format!("ASSIGNED {SESSION}")
    );
    // The same hand-over again is just a bad first line for a session server.
    assert_eq!(
        answer(addr, handover::assign(&token).trim_end()).await,
        "ERROR join_required"
    );
    let mut clients = Vec::new();
    for player in &players {
        clients.push(common::joined(addr, player).await);
    }
    clients[0].send("REQUEST_MATCH 1").await;
    clients[0].expect(ServerReply::RunningLength(1)).await;
    let status = timeout(Duration::from_secs(20), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");
    let report = reports.recv().await.unwrap();
    assert_eq!(report.authorization, format!("Bearer {REPORT_TOKEN}"));
    assert_eq!(report.report.session_id, SESSION);
    assert_eq!(report.report.end_reason, EndReason::Completed);
}

#[tokio::test]
async fn a_warm_server_stopped_unused_exits_zero_and_warm_settings_are_exclusive() {
    let (mut child, _) = warm("warm-1").await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = timeout(Duration::from_secs(5), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status}");

    let out = Command::new(env!("CARGO_BIN_EXE_game-server"))
        .args(["--port", "0"])
        .env("WARM_SERVER_ID", "warm-1")
        .env("SESSION_ID", SESSION)
        .env("TICKET_SECRET", common::SECRET)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("WARM_SERVER_ID starts a warm server"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// A stop asked for the moment a server says `LISTENING` (a pool shrinking right after a
/// start) is a clean stop, not death by the signal's default action: the handlers are in place
/// before the line is printed.
#[tokio::test]
async fn a_sigterm_right_after_listening_is_a_clean_stop() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for i in 0..20 {
        let (mut child, _) = warm(&format!("warm-term-{i}")).await;
        let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
        kill(pid, Signal::SIGTERM).unwrap();
        let status = timeout(Duration::from_secs(5), child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "start {i}: exit status {status}");
    }
}

#[tokio::test]
async fn a_hand_over_of_a_big_roster_is_taken_and_an_endless_line_refused() {
    use protocol::ticket::unix_now;
    use protocol::{Handover, handover};
    let (_child, addr) = warm("warm-big").await;
    // Far over a game line's 1,024 bytes, far under the hand-over's cap.
    assert_eq!(
        answer(
            addr,
            &format!("ASSIGN {}", "x".repeat(game_server::warm::MAX_HANDOVER_BYTES + 10))
        )
        .await,
        "ERROR line_too_long"
    );
    // 200 players with the longest ids there are, and a report target: a long line.
    let players: Vec<String> = (0..200).map(|i| format!("{i:0>128}")).collect();
    let mut big = Handover::new("warm-big", SESSION, players, unix_now());
    big.report_url = Some(format!("http://127.0.0.1:9/internal/sessions/{SESSION}/result"));
    big.report_token = Some(REPORT_TOKEN.repeat(10));
    let token = common::secret().mint_handover(&big);
    assert!(token.len() > 30_000);
    assert_eq!(
        answer(addr, handover::assign(&token).trim_end()).await,
        format!("ASSIGNED {SESSION}")
    );
}
