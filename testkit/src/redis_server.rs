//! Redis servers of a test's own, for faults the shared one must not suffer: SIGKILL and
//! restart (with or without its append-only file), replicas, and Sentinels.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, free_port};

/// One `redis-server` (or Sentinel) process on loopback, in a directory of its own; killed
/// when dropped.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A Redis on a free port; `aof`: every write is in the append-only file (fsync always)
    /// before it is answered, so a SIGKILL loses nothing.
    pub async fn start(aof: bool) -> RedisServer {
        let mut args = vec!["--save".to_owned(), String::new()];
        if aof {
            args.extend(["--appendonly", "yes", "--appendfsync", "always"].map(String::from));
        } else {
            args.extend(["--appendonly", "no"].map(String::from));
        }
        RedisServer::start_with(args, "redis").await
    }

    /// A replica of the Redis on `primary_port`.
    pub async fn replica_of(primary_port: u16) -> RedisServer {
        let args = ["--save", "", "--appendonly", "no", "--replicaof", "127.0.0.1"]
            .into_iter()
            .map(String::from)
            .chain([primary_port.to_string()])
            .collect();
        RedisServer::start_with(args, "replica").await
    }

    /// A Sentinel watching the primary on `primary_port` as `master` (quorum 2), quick to
    /// declare it down (1 s) and to fail over.
    pub async fn sentinel(primary_port: u16, master: &str) -> RedisServer {
        let dir = scratch("sentinel");
        let config = dir.join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "sentinel monitor {master} 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds {master} 1000\n\
                 sentinel failover-timeout {master} 5000\n\
                 sentinel parallel-syncs {master} 1\n"
            ),
        )
        .expect("write sentinel.conf");
        let mut server = RedisServer {
            port: free_port().await,
            dir,
            args: vec![config.display().to_string(), "--sentinel".to_owned()],
            child: None,
        };
        server.spawn().await;
        server
    }

    async fn start_with(args: Vec<String>, name: &str) -> RedisServer {
        let mut server = RedisServer {
            port: free_port().await,
            dir: scratch(name),
            args,
            child: None,
        };
        server.spawn().await;
        server
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command.args(&self.args).args([
            "--bind",
            "127.0.0.1",
            "--port",
            &self.port.to_string(),
            "--dir",
            &self.dir.display().to_string(),
            "--logfile",
            "redis.log",
        ]);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)");
        self.child = Some(child);
        crate::listening(self.port).await;
    }

    /// SIGKILL: no shutdown, no save.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (with what its append-only file kept).
    pub async fn restart(&mut self) {
        self.kill();
        // The port was ours a moment ago; wait until the kernel lets it go.
        eventually(Duration::from_secs(10), || async {
            std::net::TcpListener::bind(("127.0.0.1", self.port)).ok().map(drop)
        })
        .await;
        self.spawn().await;
    }

    /// Its directory (data files and `redis.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}
