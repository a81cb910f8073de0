//! Starting a profile's own server program: any executable, told its session and ports only
//! through its environment and command line.
//!
//! The backend picks a free loopback port for each declared port, hands them over as
//! `MATCHPLANE_PORT_<NAME>` (and `${...}` in the command and `env`), and runs the program in a
//! private home directory (its `HOME` and working directory, removed when it is gone) with no
//! environment of the backend's. It is ready when the profile says: every port bound by its
//! process group (`port`) or a line of its output matching (`log`). Its output is read for as
//! long as it runs (a full pipe would stall it), logged at `debug` under the target
//! `game_server`, and bounded: a server writing faster than [`FLOOD_RATE`] for longer than
//! its burst allows is killed, as one that floods its output is broken. The last lines are
//! kept, so a server that fails to start says why.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use service::bucket::TokenBucket;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::timeout;

use super::bound;
use super::process::{Group, Home, LocalServer, Output};
use super::settings::LocalSettings;
use crate::runtime::profiles::{PortProtocol, Profile, Ready, substitute};
use crate::runtime::{SdkReady, ServerSpec, StartError};

/// Output a server may write per second, sustained ...
pub(super) const FLOOD_RATE: u64 = 256 * 1024;
/// ... and in one burst above that rate.
const FLOOD_BURST: u64 = 4 * 1024 * 1024;
/// The longest output line kept (longer lines are cut, not refused).
const MAX_LINE: usize = 4096;
/// How often `ready: port` looks at the kernel's socket tables.
const PORT_POLL: Duration = Duration::from_millis(50);

/// Free loopback ports, one per declared port, of the right protocol: each is bound to port 0
/// and held until all are picked (so no two are the same), then let go for the server to bind.
fn free_ports(protocols: &[PortProtocol]) -> std::io::Result<Vec<u16>> {
    enum Held {
        Tcp(std::net::TcpListener),
        Udp(std::net::UdpSocket),
    }
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for protocol in protocols {
        let socket = match protocol {
            PortProtocol::Tcp => Held::Tcp(std::net::TcpListener::bind("127.0.0.1:0")?),
            PortProtocol::Udp => Held::Udp(std::net::UdpSocket::bind("127.0.0.1:0")?),
        };
        ports.push(match &socket {
            Held::Tcp(s) => s.local_addr()?.port(),
            Held::Udp(s) => s.local_addr()?.port(),
        });
        held.push(socket);
    }
    Ok(ports)
}

/// Reads `stream` line by line until it ends: each line is logged, kept for the tail, matched
/// against `ready`, and charged to the budget; a flood kills the group.
async fn watch_output(
    stream: impl AsyncBufRead + Unpin,
    name: String,
    output: Arc<Output>,
    budget: Arc<Mutex<TokenBucket>>,
    ready: Option<(regex::Regex, watch::Sender<bool>)>,
    pgid: Option<nix::unistd::Pid>,
) {
    let mut stream = stream;
    let mut line = Vec::with_capacity(256);
    loop {
        let (used, end_of_line) = match stream.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => match buf.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    let room = MAX_LINE.saturating_sub(line.len());
                    line.extend_from_slice(&buf[..at.min(room)]);
                    (at + 1, true)
                }
                None => {
                    let room = MAX_LINE.saturating_sub(line.len());
                    line.extend_from_slice(&buf[..buf.len().min(room)]);
                    (buf.len(), false)
                }
            },
        };
        stream.consume(used);
        if !budget
            .lock()
            .unwrap()
            .take(used as f64, FLOOD_RATE as f64, FLOOD_BURST as f64)
        {
            let why = format!("flooded its output (over {} KiB/s)", FLOOD_RATE / 1024);
            *output.flooded.lock().unwrap() = Some(why.clone());
            tracing::warn!(server = %name, "{why}; killing it");
            if let Some(pgid) = pgid {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            break;
        }
        if end_of_line {
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches('\r');
            tracing::debug!(target: "game_server", server = %name, "{text}");
            output.keep(text);
            if let Some((re, tx)) = &ready
                && !*tx.borrow()
                && re.is_match(text)
            {
                let _ = tx.send(true);
            }
            line.clear();
        }
    }
    // Keep draining silently once flooded or past the budget, so the server never blocks
    // on a full pipe while it is being killed.
    let mut sink = tokio::io::sink();
    let _ = tokio::io::copy_buf(&mut stream, &mut sink).await;
}

/// Starts `spec`'s profile program and waits until it is ready, it exits, or the ready
/// timeout (then it is killed, with everything it started).
pub(super) async fn start(settings: &LocalSettings, spec: &ServerSpec) -> Result<LocalServer, StartError> {
    let launch = Launch {
        profile: &spec.profile,
        vars: spec.contract_env(),
        home: &spec.session_id,
        ready_timeout: spec.ready_timeout,
        sdk_ready: &spec.sdk_ready,
    };
    launch.run(settings).await
}

/// One start of a profile's program: a session's, or a warm server's.
pub(super) struct Launch<'a> {
    pub(super) profile: &'a Profile,
    /// Its `MATCHPLANE_*` environment, but for the ports and `MATCHPLANE_HOST`.
    pub(super) vars: Vec<(String, String)>,
    /// Its home directory's name.
    pub(super) home: &'a str,
    pub(super) ready_timeout: Duration,
    /// What `ready: sdk` waits on.
    pub(super) sdk_ready: &'a SdkReady,
}

impl Launch<'_> {
    /// Starts the program and waits until it is ready, it exits, or the ready timeout (then it
    /// is killed, with everything it started).
    pub(super) async fn run(self, settings: &LocalSettings) -> Result<LocalServer, StartError> {
        let Launch {
            profile,
            mut vars,
            home,
            ready_timeout,
            sdk_ready,
        } = self;
        start_program(settings, profile, &mut vars, home, ready_timeout, sdk_ready).await
    }
}

async fn start_program(
    settings: &LocalSettings,
    profile: &Profile,
    vars: &mut Vec<(String, String)>,
    home: &str,
    ready_timeout: Duration,
    sdk_ready: &SdkReady,
) -> Result<LocalServer, StartError> {
    let protocols: Vec<PortProtocol> = profile.ports.iter().map(|p| p.protocol).collect();
    let ports = free_ports(&protocols).map_err(|e| StartError::Spawn(format!("picking free ports: {e}")))?;
    vars.push((crate::runtime::profiles::HOST.to_owned(), "127.0.0.1".to_owned()));
    for (port, number) in profile.ports.iter().zip(&ports) {
        vars.push((port.variable(), number.to_string()));
    }
    let value = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let home = Home::create(home).map_err(|e| StartError::Spawn(format!("its home directory: {e}")))?;
    let program = &profile.command[0];
    // A backend that dies, even by SIGKILL, takes the server with it: `setpriv` (util-linux)
    // sets the parent-death signal and then becomes the program.
    let mut command = match &settings.keeper {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command.args(["--pdeathsig", "KILL", "--"]).arg(program);
            command
        }
        None => Command::new(program),
    };
    command
        .args(profile.command[1..].iter().map(|a| substitute(a, &value)))
        .env_clear()
        .env("HOME", &home.0)
        .current_dir(&home.0)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .envs(profile.env.iter().map(|(k, v)| (k, substitute(v, &value))))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(path) = &settings.path {
        command.env("PATH", path);
    }
    let mut child = command
        .spawn()
        .map(Group::new)
        .map_err(|e| StartError::Spawn(format!("{program}: {e}")))?;
    let name = format!("local-{}", child.pgid.map_or(0, nix::unistd::Pid::as_raw));
    let stdin = child.child.stdin.take();
    let output = Arc::new(Output::default());
    // Both streams draw on one budget.
    let budget = Arc::new(Mutex::new(TokenBucket::full(FLOOD_BURST as f64)));
    let (ready_tx, mut ready_rx) = watch::channel(false);
    let log_ready = match &profile.ready {
        Ready::Log(re) => Some(re.clone()),
        _ => None,
    };
    let streams: [Option<Box<dyn AsyncBufRead + Unpin + Send>>; 2] = [
        child.child.stdout.take().map(|s| Box::new(BufReader::new(s)) as _),
        child.child.stderr.take().map(|s| Box::new(BufReader::new(s)) as _),
    ];
    for stream in streams.into_iter().flatten() {
        tokio::spawn(watch_output(
            stream,
            name.clone(),
            output.clone(),
            budget.clone(),
            log_ready.clone().map(|re| (re, ready_tx.clone())),
            child.pgid,
        ));
    }
    drop(ready_tx);
    let declared: Vec<(PortProtocol, u16)> = protocols.iter().copied().zip(ports.iter().copied()).collect();
    let pgid = child.pgid.map_or(0, nix::unistd::Pid::as_raw);
    let became_ready = async {
        match &profile.ready {
            Ready::Log(_) => {
                if ready_rx.wait_for(|ready| *ready).await.is_err() {
                    // Both streams ended without a match: the exit below says why.
                    std::future::pending::<()>().await;
                }
            }
            Ready::Sdk => sdk_ready.wait().await,
            Ready::Port | Ready::Listening => loop {
                if bound::all_bound(&declared, pgid) {
                    return;
                }
                tokio::time::sleep(PORT_POLL).await;
            },
        }
    };
    let outcome = timeout(ready_timeout, async {
        tokio::select! {
            () = became_ready => Ok(()),
            status = child.child.wait() => Err(status),
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(status)) => {
            // Let the output of its last moments arrive before saying why.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let status = match (output.flooded(), status) {
                (Some(flood), _) => flood,
                (None, Ok(status)) => status.to_string(),
                (None, Err(e)) => e.to_string(),
            };
            let _ = child.kill().await;
            return Err(StartError::Exited(format!("{status}; {}", output.last_lines())));
        }
        Err(_) => {
            let _ = child.kill().await;
            return Err(StartError::Timeout(ready_timeout));
        }
    }
    let address = |protocol| {
        declared
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, port)| format!("127.0.0.1:{port}"))
    };
    Ok(LocalServer {
        child,
        _stdin: stdin,
        name,
        addr: address(PortProtocol::Tcp).unwrap_or_default(),
        udp_addr: address(PortProtocol::Udp),
        output: Some(output),
        _home: Some(home),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_of_their_protocol() {
        let ports = free_ports(&[PortProtocol::Tcp, PortProtocol::Udp, PortProtocol::Tcp]).unwrap();
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[2]);
        std::net::TcpListener::bind(("127.0.0.1", ports[0])).expect("let go before the start");
        std::net::UdpSocket::bind(("127.0.0.1", ports[1])).expect("let go before the start");
    }
}
