//! An example game server written with the SDK, for a `proxy-v2`, `ready: sdk`, `ends: sdk`
//! profile, started for its session or warm (`warm_pool`: it binds its ports, then waits to
//! be handed a session): on its TCP port `game`, each connection starts with the proxy's PROXY v2 header,
//! gets `WELCOME <player>`, then has its lines echoed; on its UDP port `udp`, if the profile
//! declares one, each datagram comes back prefixed with `echo `. The server says it is ready once it listens, calls health every
//! second, and once every rostered player has come and gone (or on SIGTERM) reports the
//! result with each player's attendance and exits 0.
//!
//! Flags (for tests and the conformance runner's demonstrations of a broken server):
//! `--ready-after-ms N` takes that long to start (before it waits for a session, when warm); `--health-for-seconds N` stops calling
//! health after N seconds (a hung server); `--no-report` exits without reporting.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matchplane_sdk::{EndReason, Host, PlayerResult};
use protocol::api::ResultReport;
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct Flags {
    ready_after: Duration,
    health_for: Option<Duration>,
    report: bool,
}

fn flags() -> Result<Flags, String> {
    let mut flags = Flags {
        report: true,
        ..Flags::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match arg.as_str() {
            "--ready-after-ms" => flags.ready_after = Duration::from_millis(number(&arg)?),
            "--health-for-seconds" => flags.health_for = Some(Duration::from_secs(number(&arg)?)),
            "--no-report" => flags.report = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(flags)
}

/// Each player's first join and last leave.
type Attendance = BTreeMap<String, (Option<OffsetDateTime>, Option<OffsetDateTime>, usize)>;

fn main() -> ExitCode {
    let flags = match flags() {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("sdk-example-server: {e}");
            return ExitCode::from(2);
        }
    };
    let host = match Host::from_env() {
        Ok(host) => host,
        Err(e) => {
            eprintln!("sdk-example-server: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sdk-example-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(host, flags))
}

async fn serve(start: Host, flags: Flags) -> ExitCode {
    let stop = match matchplane_sdk::stop_signal() {
        Ok(stop) => stop,
        Err(e) => {
            eprintln!("sdk-example-server: signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let host = start.host.clone().unwrap_or_else(|| "127.0.0.1".into());
    let (tcp, udp) = (start.port("game"), start.port("udp"));
    if tcp.is_none() && udp.is_none() {
        eprintln!("sdk-example-server: declare a tcp port `game`, a udp port `udp`, or both");
        return ExitCode::from(2);
    }
    let listener = match tcp {
        Some(port) => match TcpListener::bind((host.as_str(), port)).await {
            Ok(listener) => Some(listener),
            Err(e) => {
                eprintln!("sdk-example-server: cannot listen on {host}:{port}: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if let Some(port) = udp {
        match tokio::net::UdpSocket::bind((host.as_str(), port)).await {
            Ok(socket) => {
                tokio::spawn(udp_echo(socket));
            }
            Err(e) => {
                eprintln!("sdk-example-server: cannot bind udp {host}:{port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Loading what a match needs (here: nothing but time).
    tokio::time::sleep(flags.ready_after).await;
    if start.is_warm() {
        println!("warm: serving tcp {tcp:?} udp {udp:?} on {host}; waiting for a session");
    }
    let session = match start.session(&stop).await {
        Ok(Some(session)) => session,
        Ok(None) => {
            println!("stopped while warm, without a session");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sdk-example-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "serving tcp {tcp:?} udp {udp:?} on {host} for session {}",
        session.session_id
    );
    let backend = session.backend.clone();
    if let Some(backend) = &backend {
        match backend.ready(Duration::from_secs(10)).await {
            Ok(status) => println!("ready; the session is {status:?}"),
            Err(e) => {
                eprintln!("sdk-example-server: {e}");
                return ExitCode::FAILURE;
            }
        }
        let health_stop = stop.child_token();
        backend.keep_healthy(Duration::from_secs(1), health_stop.clone());
        if let Some(limit) = flags.health_for {
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                println!("going quiet: no more health calls");
                health_stop.cancel();
            });
        }
    }

    let started = OffsetDateTime::now_utc();
    let attendance: Arc<Mutex<Attendance>> = Arc::new(Mutex::new(
        session.players.iter().map(|p| (p.clone(), (None, None, 0))).collect(),
    ));
    let changed = Arc::new(Notify::new());
    let everyone_left = {
        let attendance = attendance.clone();
        move || {
            let a = attendance.lock().unwrap();
            !a.is_empty() && a.values().all(|(joined, _, open)| joined.is_some() && *open == 0)
        }
    };
    let reason = loop {
        tokio::select! {
            () = stop.cancelled() => break EndReason::Terminated,
            () = changed.notified() => {}
            accepted = accept(listener.as_ref()) => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(connection(stream, session.session_id.clone(), attendance.clone(), changed.clone(), stop.clone()));
            }
        }
        if everyone_left() {
            break EndReason::Completed;
        }
    };
    println!("ending: {reason}");
    if flags.report
        && let Some(backend) = &backend
    {
        let report = ResultReport {
            session_id: session.session_id.clone(),
            end_reason: reason,
            requested_seconds: None,
            started_at: Some(started),
            ended_at: OffsetDateTime::now_utc(),
            players: attendance
                .lock()
                .unwrap()
                .iter()
                .map(|(player, (joined, left, _))| PlayerResult {
                    player_id: player.clone(),
                    joined_at: *joined,
                    left_at: *left,
                })
                .collect(),
        };
        match backend.report(&report, Duration::from_secs(10)).await {
            Ok(recorded) => println!("reported: {recorded:?}"),
            Err(e) => eprintln!("sdk-example-server: {e}"),
        }
    }
    ExitCode::SUCCESS
}

/// The next connection, or never without a TCP port.
async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Sends each datagram back to its sender, prefixed with `echo `.
async fn udp_echo(socket: tokio::net::UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let mut reply = b"echo ".to_vec();
        reply.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&reply, from).await;
    }
}

async fn connection(
    mut stream: tokio::net::TcpStream,
    session_id: String,
    attendance: Arc<Mutex<Attendance>>,
    changed: Arc<Notify>,
    stop: CancellationToken,
) {
    let who = tokio::time::timeout(
        Duration::from_secs(5),
        matchplane_sdk::read_identity(&mut stream, Some(&session_id)),
    )
    .await;
    let player = match who {
        Ok(Ok(player)) => player,
        Ok(Err(e)) => {
            eprintln!("refused a connection: {e}");
            return;
        }
        Err(_) => {
            eprintln!("refused a connection: no PROXY header within 5 s");
            return;
        }
    };
    {
        let mut a = attendance.lock().unwrap();
        let Some(entry) = a.get_mut(&player.player_id) else {
            eprintln!("refused {}: not on the roster", player.player_id);
            return;
        };
        entry.0.get_or_insert_with(OffsetDateTime::now_utc);
        entry.2 += 1;
    }
    println!("{} joined from {}", player.player_id, player.addr);
    let (read, mut write) = stream.split();
    let mut lines = BufReader::new(read).lines();
    if write
        .write_all(format!("WELCOME {}\n", player.player_id).as_bytes())
        .await
        .is_ok()
    {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                line = lines.next_line() => match line {
                    Ok(Some(line)) => {
                        if write.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    _ => break,
                },
            }
        }
    }
    {
        let mut a = attendance.lock().unwrap();
        if let Some(entry) = a.get_mut(&player.player_id) {
            entry.1 = Some(OffsetDateTime::now_utc());
            entry.2 -= 1;
        }
    }
    println!("{} left", player.player_id);
    changed.notify_one();
}
