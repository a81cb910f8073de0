//! The `local` runtime: each session's server is a child process of this backend.
//!
//! The child listens on a free loopback port (`--port 0`) and announces it with its one
//! `LISTENING <ip:port>` line. Its standard input is a pipe held by the backend and the child
//! runs with `EXIT_ON_STDIN_CLOSE`: if the backend dies, even by SIGKILL, the pipe closes and
//! every child drains and exits, so no server outlives its backend.
//!
//! Each server is the leader of a process group of its own, and every signal goes to the whole
//! group: a server started through a wrapper script stops with everything the script started,
//! and whatever is left in the group when the server exits (or fails to start) is killed.

use std::os::unix::ffi::OsStrExt as _;
use std::process::Stdio;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::timeout;

use super::{ServerExit, ServerHandle, ServerSpec, SessionRuntime, StartError};
use crate::config::LocalSettings;

/// Spawns `game-server` processes.
pub(crate) struct LocalRuntime {
    settings: LocalSettings,
    secret: protocol::TicketSecret,
}

impl LocalRuntime {
    /// A runtime spawning the configured binary, whose servers verify tickets with `secret`.
    pub(crate) fn new(settings: LocalSettings, secret: protocol::TicketSecret) -> Self {
        LocalRuntime { settings, secret }
    }

    async fn spawn(&self, spec: ServerSpec) -> Result<Box<dyn ServerHandle>, StartError> {
        let binary = &self.settings.binary;
        let mut command = Command::new(binary);
        // Only what the server needs: never the backend's own secrets and URLs.
        command.env_clear();
        if let Some(path) = &self.settings.path {
            command.env("PATH", path);
        }
        command
            .env("GAME_BIND", "127.0.0.1")
            .env("GAME_PORT", "0")
            .env("SESSION_ID", &spec.session_id)
            .env("PLAYERS", spec.players.join(","))
            .env("TICKET_SECRET", std::ffi::OsStr::from_bytes(self.secret.expose()))
            .env("REPORT_URL", &spec.report_url)
            .env("REPORT_TOKEN", &spec.report_token)
            .env("EXIT_ON_STDIN_CLOSE", "true")
            .env("RUST_LOG", &self.settings.log_filter)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(teams) = spec.teams_setting() {
            command.env("TEAMS", teams);
        }
        command.envs(self.settings.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .spawn()
            .map_err(|e| StartError::Spawn(format!("{}: {e}", binary.display())))?;
        let mut child = Group::new(child);
        let stdin = child.child.stdin.take();
        let stdout = child
            .child
            .stdout
            .take()
            .ok_or_else(|| StartError::Spawn("no stdout pipe".into()))?;
        let mut line = String::new();
        let read = timeout(spec.ready_timeout, BufReader::new(stdout).read_line(&mut line)).await;
        let addr = match read {
            Err(_) => {
                let _ = child.kill().await;
                return Err(StartError::Timeout(spec.ready_timeout));
            }
            Ok(Err(e)) => {
                let _ = child.kill().await;
                return Err(StartError::Exited(format!("reading its output: {e}")));
            }
            Ok(Ok(_)) => match line
                .trim()
                .strip_prefix("LISTENING ")
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            {
                Some(mut addr) => {
                    if addr.ip().is_unspecified() {
                        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                    }
                    addr.to_string()
                }
                None => {
                    let status = match timeout(std::time::Duration::from_secs(2), child.child.wait()).await {
                        Ok(Ok(status)) => status.to_string(),
                        _ => format!("unexpected first line {:?}", line.trim()),
                    };
                    let _ = child.kill().await;
                    return Err(StartError::Exited(status));
                }
            },
        };
        let name = format!("local-{}", child.pgid.map_or(0, nix::unistd::Pid::as_raw));
        Ok(Box::new(LocalServer {
            child,
            _stdin: stdin,
            name,
            addr,
        }))
    }
}

impl SessionRuntime for LocalRuntime {
    fn start(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Box<dyn ServerHandle>, StartError>> {
        Box::pin(self.spawn(spec))
    }
}

/// A server process and the process group it leads.
struct Group {
    child: Child,
    /// The group's id (the leader's pid); `None` if the spawn gave no pid, or once the leader
    /// was reaped and the group killed.
    pgid: Option<nix::unistd::Pid>,
}

impl Group {
    fn new(child: Child) -> Group {
        let pgid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(nix::unistd::Pid::from_raw);
        Group { child, pgid }
    }

    /// Sends `signal` to every process of the group (the leader may be gone already).
    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pgid) = self.pgid {
            let _ = nix::sys::signal::killpg(pgid, signal);
        }
    }

    /// Kills the whole group and reaps the leader.
    async fn kill(&mut self) -> std::io::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let killed = self.child.kill().await;
        self.pgid = None;
        killed
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Whatever the server left behind goes with it.
        self.signal(nix::sys::signal::Signal::SIGKILL);
    }
}

struct LocalServer {
    child: Group,
    /// Held open for the child's life: closing it tells the child its parent is gone.
    _stdin: Option<ChildStdin>,
    name: String,
    addr: String,
}

impl ServerHandle for LocalServer {
    fn name(&self) -> &str {
        &self.name
    }

    fn addr(&self) -> &str {
        &self.addr
    }

    fn wait(&mut self) -> BoxFuture<'_, ServerExit> {
        Box::pin(async move {
            let exit = match self.child.child.wait().await {
                Ok(status) if status.code().is_some() => ServerExit::Exited(status.code()),
                Ok(status) => ServerExit::Lost(status.to_string()),
                Err(e) => ServerExit::Lost(e.to_string()),
            };
            // The server is gone: nothing it started may outlive it. Then forget the group id,
            // which may be reused once the group is empty.
            self.child.signal(nix::sys::signal::Signal::SIGKILL);
            self.child.pgid = None;
            exit
        })
    }

    fn terminate(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.child.signal(nix::sys::signal::Signal::SIGTERM);
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.child.kill().await;
        })
    }
}
