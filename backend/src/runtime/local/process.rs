//! A local server's process: the process group it leads, what its output has shown, its
//! private directory, and the handle the supervisor holds.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::process::{Child, ChildStdin};

use crate::runtime::{ServerExit, ServerHandle};

/// Lines kept to explain a failed start.
const TAIL_LINES: usize = 8;

/// What a server's output has shown so far.
#[derive(Default)]
pub(crate) struct Output {
    tail: Mutex<VecDeque<String>>,
    /// Why the server was killed for its output, if it was.
    pub(super) flooded: Mutex<Option<String>>,
}

impl Output {
    pub(super) fn keep(&self, line: &str) {
        let mut tail = self.tail.lock().unwrap();
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line.to_owned());
    }

    /// The last lines, for a failure's message.
    pub(super) fn last_lines(&self) -> String {
        let tail = self.tail.lock().unwrap();
        if tail.is_empty() {
            return "no output".into();
        }
        format!("last output: {}", tail.iter().cloned().collect::<Vec<_>>().join(" | "))
    }

    /// Why the server was killed for its output, if it was.
    pub(super) fn flooded(&self) -> Option<String> {
        self.flooded.lock().unwrap().clone()
    }
}

/// A private directory for one server, removed when dropped.
pub(crate) struct Home(pub(super) PathBuf);

impl Home {
    pub(super) fn create(session_id: &str) -> std::io::Result<Home> {
        let dir = std::env::temp_dir()
            .join(format!("matchplane-servers-{}", nix::unistd::getuid()))
            .join(session_id);
        std::fs::create_dir_all(&dir)?;
        Ok(Home(dir))
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server process and the process group it leads.
pub(super) struct Group {
    pub(super) child: Child,
    /// The group's id (the leader's pid); `None` if the spawn gave no pid, or once the leader
    /// was reaped and the group killed.
    pub(super) pgid: Option<nix::unistd::Pid>,
}

impl Group {
    pub(super) fn new(child: Child) -> Group {
        let pgid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(nix::unistd::Pid::from_raw);
        Group { child, pgid }
    }

    /// Sends `signal` to every process of the group (the leader may be gone already).
    pub(super) fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(pgid) = self.pgid {
            let _ = nix::sys::signal::killpg(pgid, signal);
        }
    }

    /// Whether the leader still runs.
    pub(super) fn child_alive(&mut self) -> std::io::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Kills the whole group and reaps the leader.
    pub(super) async fn kill(&mut self) -> std::io::Result<()> {
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

pub(super) struct LocalServer {
    pub(super) child: Group,
    /// Held open for the child's life: closing it tells the child its parent is gone.
    pub(super) _stdin: Option<ChildStdin>,
    pub(super) name: String,
    pub(super) addr: String,
    pub(super) udp_addr: Option<String>,
    /// A profile program's output, watched while it runs.
    pub(super) output: Option<Arc<Output>>,
    /// A profile program's private directory, removed with the server.
    pub(super) _home: Option<Home>,
}

impl ServerHandle for LocalServer {
    fn name(&self) -> &str {
        &self.name
    }

    fn addr(&self) -> &str {
        &self.addr
    }

    fn udp_addr(&self) -> Option<&str> {
        self.udp_addr.as_deref()
    }

    fn wait(&mut self) -> BoxFuture<'_, ServerExit> {
        Box::pin(async move {
            let status = self.child.child.wait().await;
            let flooded = self.output.as_ref().and_then(|o| o.flooded());
            let exit = match status {
                _ if flooded.is_some() => ServerExit::Lost(flooded.unwrap_or_default()),
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
