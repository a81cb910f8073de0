//! `backend conformance`: starts one server of a profile exactly as the local runtime starts
//! a session's (its environment, free ports, private home, process group, output watched),
//! with this process standing in for the backend's SDK calls, and says part by part what the
//! server meets of the hosting contract:
//!
//! | part | required | met when |
//! | --- | --- | --- |
//! | `warm` | with `warm_pool` | started warm, it polls for a session (and polls again after an empty answer) |
//! | `start` | yes | ready by the profile's `ready` within the timeout, without exiting (a warm server: it takes the session it is handed and says ready for it) |
//! | `tcp` | with a TCP port | its first TCP port accepts a connection |
//! | `identity` | `none`, `proxy-v2` | a connection opened as the proxy would (nothing, or a PROXY v2 header) is kept open or answered |
//! | `health` | with `health_timeout_seconds` | health calls come at least that often |
//! | `stays-up` | yes | it runs for the whole observation (or ends by itself with status 0, for `ends: exit`) |
//! | `stop` | yes | it exits within `stop_grace_seconds` of SIGTERM |
//! | `result` | `ends: sdk` | a well-formed report for its session arrived before it exited |
//! | `cleanup` | yes | nothing of its process group is left |
//!
//! SDK calls made with a wrong token are refused (401) and counted against `sdk-token`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use protocol::api::{MatchStatus, Recorded, ReportReceipt, ResultReport, SignalReceipt, WarmSession};
use protocol::sessions::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, timeout};

use crate::runtime::local::{LocalSettings, WarmLaunch, start_profile};
use crate::runtime::{Ends, Profile, SdkReady, ServerExit, ServerSpec};

/// What the run is told.
#[derive(Debug, Clone)]
pub struct Options {
    pub players: Vec<String>,
    pub ready_timeout: Duration,
    /// How long the server is watched once ready, before it is asked to stop.
    pub observe: Duration,
}

/// One part's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Not asked of this profile; said for information.
    Info,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Part {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

/// The SDK calls the server made, as the stand-in backend saw them.
#[derive(Default)]
struct Calls {
    ready: usize,
    health: Vec<Instant>,
    results: Vec<Result<ResultReport, String>>,
    bad_token: usize,
}

struct StandIn {
    session_id: String,
    token: String,
    calls: Mutex<Calls>,
    ready: Notify,
    /// For a warm server: its id, its token, and the session it is handed on its second poll.
    warm: Option<WarmStandIn>,
}

struct WarmStandIn {
    id: String,
    token: String,
    session: WarmSession,
    polls: Mutex<usize>,
    polled: Notify,
}

/// Runs the conformance check of `profile` and returns its parts, in order.
pub async fn check(
    profile: Arc<Profile>,
    path: Option<std::ffi::OsString>,
    options: &Options,
) -> anyhow::Result<Vec<Part>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let internal = format!("http://{}", listener.local_addr()?);
    let session_id = uuid::Uuid::new_v4().to_string();
    let secret =
        protocol::TicketSecret::new(uuid::Uuid::new_v4().simple().to_string()).expect("a secret that is not empty");
    let teams = Vec::new();
    let mut spec = ServerSpec::new(
        &session_id,
        options.players.clone(),
        teams,
        &internal,
        &secret,
        options.ready_timeout,
    )
    .running("conformance", profile.clone());
    let warm_id = format!("conformance-warm-{}", uuid::Uuid::new_v4().simple());
    let stand_in = Arc::new(StandIn {
        session_id: session_id.clone(),
        token: spec.report_token.clone(),
        calls: Mutex::new(Calls::default()),
        ready: Notify::new(),
        warm: profile.warm.map(|_| WarmStandIn {
            id: warm_id.clone(),
            token: secret.mint(&protocol::Claims::warm(&warm_id, protocol::ticket::unix_now(), 3600)),
            session: WarmSession {
                session_id: session_id.clone(),
                players: spec.players.clone(),
                teams: spec.teams.clone(),
                queue: spec.queue.clone(),
                report_url: spec.report_url.clone(),
                report_token: spec.report_token.clone(),
            },
            polls: Mutex::new(0),
            polled: Notify::new(),
        }),
    });
    let app = Router::new()
        .route("/internal/sessions/{session_id}/{call}", post(sdk_call))
        .route("/internal/warm/{server_id}/session", post(warm_poll))
        .with_state(stand_in.clone());
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let waiting = stand_in.clone();
    spec = spec.with_sdk_ready(SdkReady::new(move || {
        let stand_in = waiting.clone();
        Box::pin(async move {
            loop {
                let notified = stand_in.ready.notified();
                if stand_in.calls.lock().unwrap().ready > 0 {
                    return;
                }
                notified.await;
            }
        })
    }));

    let mut parts = Vec::new();
    let mut part = |name, verdict, detail: String| parts.push(Part { name, verdict, detail });
    let settings = LocalSettings::for_profiles(path);
    let began = Instant::now();
    let started = match &stand_in.warm {
        None => start_profile(&settings, &spec).await,
        Some(warm) => {
            let polled = stand_in.clone();
            let polling = SdkReady::new(move || {
                let stand_in = polled.clone();
                Box::pin(async move {
                    let warm = stand_in.warm.as_ref().expect("a warm stand-in");
                    loop {
                        let notified = warm.polled.notified();
                        if *warm.polls.lock().unwrap() >= 2 {
                            return;
                        }
                        notified.await;
                    }
                })
            });
            let url = format!("{internal}/internal/warm/{}", warm.id);
            let launch = WarmLaunch {
                profile: &profile,
                id: &warm.id,
                url,
                token: warm.token.clone(),
                polling: &polling,
                ready_timeout: options.ready_timeout,
            };
            match launch.start(&settings).await {
                Ok(mut server) => {
                    part(
                        "warm",
                        Verdict::Pass,
                        format!(
                            "started warm, it polled for a session (and again after an empty answer) in {:.2} s",
                            began.elapsed().as_secs_f64()
                        ),
                    );
                    let handed = Instant::now();
                    match timeout(options.ready_timeout, spec.sdk_ready.wait()).await {
                        Ok(()) => Ok(server),
                        Err(_) => {
                            server.kill().await;
                            Err(crate::runtime::StartError::Timeout(options.ready_timeout))
                        }
                    }
                    .inspect(|_| {
                        part(
                            "start",
                            Verdict::Pass,
                            format!(
                                "took the session it was handed and said ready in {:.2} s",
                                handed.elapsed().as_secs_f64()
                            ),
                        );
                    })
                }
                Err(e) => {
                    part("warm", Verdict::Fail, format!("started warm: {e}"));
                    serving.abort();
                    return Ok(parts);
                }
            }
        }
    };
    let mut server = match started {
        Ok(server) if stand_in.warm.is_some() => server,
        Ok(server) => {
            part(
                "start",
                Verdict::Pass,
                format!(
                    "ready ({}) in {:.2} s",
                    profile.ready.as_str(),
                    began.elapsed().as_secs_f64()
                ),
            );
            server
        }
        Err(e) => {
            part("start", Verdict::Fail, e.to_string());
            serving.abort();
            return Ok(parts);
        }
    };
    let pgid = server
        .name()
        .strip_prefix("local-")
        .and_then(|p| p.parse::<i32>().ok())
        .unwrap_or(0);

    let addr = server.addr().to_owned();
    if addr.is_empty() {
        part("tcp", Verdict::Info, "no TCP port declared".into());
    } else {
        match timeout(Duration::from_secs(3), TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => part("tcp", Verdict::Pass, format!("{addr} accepts connections")),
            Ok(Err(e)) => part("tcp", Verdict::Fail, format!("{addr}: {e}")),
            Err(_) => part(
                "tcp",
                Verdict::Fail,
                format!("{addr}: no answer to a connect within 3 s"),
            ),
        }
        let (verdict, detail) = open_as_proxy(&addr, profile.identity, &session_id, &options.players).await;
        part("identity", verdict, detail);
    }
    if let Some(udp) = server.udp_addr() {
        part("udp", Verdict::Info, format!("its first UDP port is {udp}"));
    }

    // Watched for a while, as a session would be.
    let observed = timeout(options.observe, server.wait()).await;
    let health = stand_in.calls.lock().unwrap().health.clone();
    if let Some(limit) = profile.health_timeout {
        let mut last = began;
        let mut worst = Duration::ZERO;
        for at in health.iter().chain(std::iter::once(&Instant::now())) {
            worst = worst.max(at.saturating_duration_since(last));
            last = *at;
        }
        let verdict = if worst <= limit { Verdict::Pass } else { Verdict::Fail };
        part(
            "health",
            verdict,
            format!(
                "{} calls; the longest silence {:.1} s (limit {:.0} s)",
                health.len(),
                worst.as_secs_f64(),
                limit.as_secs_f64()
            ),
        );
    } else {
        part(
            "health",
            Verdict::Info,
            format!("{} calls (no health_timeout_seconds)", health.len()),
        );
    }
    let exit = match observed {
        Ok(exit) => {
            let by_itself_ok = profile.ends == Ends::Exit && exit == ServerExit::Exited(Some(0));
            part(
                "stays-up",
                if by_itself_ok { Verdict::Pass } else { Verdict::Fail },
                format!("it ended by itself before asked to stop: {exit:?}"),
            );
            part("stop", Verdict::Info, "it had already ended".into());
            exit
        }
        Err(_) => {
            part(
                "stays-up",
                Verdict::Pass,
                format!("running after {:.0} s", options.observe.as_secs_f64()),
            );
            let asked = Instant::now();
            server.terminate().await;
            match timeout(profile.stop_grace, server.wait()).await {
                Ok(exit) => {
                    part(
                        "stop",
                        Verdict::Pass,
                        format!("exited {:.2} s after SIGTERM: {exit:?}", asked.elapsed().as_secs_f64()),
                    );
                    exit
                }
                Err(_) => {
                    server.kill().await;
                    let exit = timeout(Duration::from_secs(10), server.wait())
                        .await
                        .unwrap_or(ServerExit::Lost("not reaped".into()));
                    part(
                        "stop",
                        Verdict::Fail,
                        format!(
                            "still running {:.0} s after SIGTERM (stop_grace_seconds); killed",
                            profile.stop_grace.as_secs_f64()
                        ),
                    );
                    exit
                }
            }
        }
    };

    let calls = std::mem::take(&mut *stand_in.calls.lock().unwrap());
    let reports: Vec<String> = calls
        .results
        .iter()
        .map(|r| match r {
            Ok(report) => format!("{} with {} players", report.end_reason, report.players.len()),
            Err(e) => format!("refused: {e}"),
        })
        .collect();
    let good_report = calls.results.iter().any(Result::is_ok);
    match profile.ends {
        Ends::Sdk => part(
            "result",
            if good_report { Verdict::Pass } else { Verdict::Fail },
            if reports.is_empty() {
                format!("no result report before it exited ({exit:?})")
            } else {
                reports.join("; ")
            },
        ),
        Ends::Exit => part("result", Verdict::Info, format!("ends by exiting: {exit:?}")),
    }
    if calls.bad_token > 0 {
        part(
            "sdk-token",
            Verdict::Fail,
            format!("{} SDK calls without its report token", calls.bad_token),
        );
    }
    sleep(Duration::from_millis(100)).await;
    let left = pgid > 0 && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None).is_ok();
    part(
        "cleanup",
        if left { Verdict::Fail } else { Verdict::Pass },
        if left {
            format!("processes of its group {pgid} are still running; killed")
        } else {
            "nothing of it is left".into()
        },
    );
    if left {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
    }
    serving.abort();
    Ok(parts)
}

/// Opens a connection as the proxy would for `mode`, and says whether the server kept it.
async fn open_as_proxy(addr: &str, mode: Identity, session_id: &str, players: &[String]) -> (Verdict, String) {
    let Ok(Ok(mut stream)) = timeout(Duration::from_secs(3), TcpStream::connect(addr)).await else {
        return (Verdict::Fail, format!("cannot connect to {addr}"));
    };
    let player = players.first().map_or("conformance", String::as_str);
    let sent = match mode {
        Identity::None => "nothing",
        Identity::ProxyV2 => {
            let from = stream.local_addr().unwrap_or_else(|_| ([127, 0, 0, 1], 0).into());
            let to = stream.peer_addr().unwrap_or_else(|_| ([127, 0, 0, 1], 0).into());
            let header = protocol::proxy_header::encode(from, to, player, session_id);
            if let Err(e) = stream.write_all(&header).await {
                return (Verdict::Fail, format!("writing a PROXY v2 header: {e}"));
            }
            "a PROXY v2 header"
        }
        Identity::JoinLine => {
            let _ = stream.write_all(b"JOIN conformance-ticket\n").await;
            "a JOIN line (its ticket is not one it can verify)"
        }
    };
    let mut buf = [0u8; 256];
    let verdict = |ok: bool| {
        if mode == Identity::JoinLine {
            Verdict::Info
        } else if ok {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    };
    match timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
        Err(_) => (verdict(true), format!("sent {sent}; the connection is held open")),
        Ok(Ok(0)) => (
            verdict(false),
            format!("sent {sent}; the server closed the connection at once"),
        ),
        Ok(Ok(n)) => (
            verdict(true),
            format!(
                "sent {sent}; the server answered {:?}",
                String::from_utf8_lossy(&buf[..n.min(40)])
            ),
        ),
        Ok(Err(e)) => (verdict(false), format!("sent {sent}; {e}")),
    }
}

/// The stand-in for a warm server's poll: the first answered 204 (no session yet), the next
/// with the session.
async fn warm_poll(
    State(stand_in): State<Arc<StandIn>>,
    Path(server_id): Path<String>,
    headers: HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| identity::bearer_token(v.as_bytes()));
    let Some(warm) = stand_in
        .warm
        .as_ref()
        .filter(|w| w.id == server_id && token == Some(w.token.as_str()))
    else {
        stand_in.calls.lock().unwrap().bad_token += 1;
        return (StatusCode::UNAUTHORIZED, "not this warm server's token").into_response();
    };
    let polls = {
        let mut polls = warm.polls.lock().unwrap();
        *polls += 1;
        *polls
    };
    warm.polled.notify_waiters();
    if polls == 1 {
        StatusCode::NO_CONTENT.into_response()
    } else {
        axum::Json(warm.session.clone()).into_response()
    }
}

/// The stand-in for the backend's SDK calls: the session's report token only, as the backend.
async fn sdk_call(
    State(stand_in): State<Arc<StandIn>>,
    Path((session_id, call)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| identity::bearer_token(v.as_bytes()));
    if token != Some(stand_in.token.as_str()) || session_id != stand_in.session_id {
        stand_in.calls.lock().unwrap().bad_token += 1;
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":{"code":"unauthorized","message":"not this session's report token"}}"#.into(),
        );
    }
    let signal = |status| {
        let receipt = SignalReceipt {
            session_id: session_id.clone(),
            status,
        };
        (
            StatusCode::OK,
            serde_json::to_string(&receipt).expect("a receipt encodes"),
        )
    };
    let mut calls = stand_in.calls.lock().unwrap();
    match call.as_str() {
        "ready" => {
            calls.ready += 1;
            stand_in.ready.notify_waiters();
            signal(MatchStatus::Matched)
        }
        "health" => {
            calls.health.push(Instant::now());
            signal(if calls.ready > 0 {
                MatchStatus::Matched
            } else {
                MatchStatus::Allocating
            })
        }
        "result" => match serde_json::from_slice::<ResultReport>(&body) {
            Ok(report) if report.session_id == session_id => {
                calls.results.push(Ok(report));
                let receipt = ReportReceipt {
                    session_id: session_id.clone(),
                    recorded: Recorded::Ended,
                };
                (
                    StatusCode::OK,
                    serde_json::to_string(&receipt).expect("a receipt encodes"),
                )
            }
            Ok(_) => {
                calls
                    .results
                    .push(Err("session_id in the body differs from the path".into()));
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    r#"{"error":{"code":"invalid","message":"session_id differs"}}"#.into(),
                )
            }
            Err(e) => {
                calls.results.push(Err(format!("not a result report: {e}")));
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    r#"{"error":{"code":"invalid","message":"not a result report"}}"#.into(),
                )
            }
        },
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"no such endpoint"}}"#.into(),
        ),
    }
}

/// The report as printed: one line per part, then whether every required part was met.
pub fn print(profile: &str, parts: &[Part]) -> bool {
    println!("conformance of server profile {profile:?}:");
    for part in parts {
        let verdict = match part.verdict {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::Info => "info",
        };
        println!("  {verdict}  {:<9} {}", part.name, part.detail);
    }
    let failed = parts.iter().filter(|p| p.verdict == Verdict::Fail).count();
    let required = parts.iter().filter(|p| p.verdict != Verdict::Info).count();
    println!("{} of {required} required parts met", required - failed);
    failed == 0
}
