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
//!
//! With `WARM_POOL_MAX` > 0 the runtime keeps warm servers: started with a `WARM_SERVER_ID`
//! and no session, they wait on their game port. A session takes one from the pool (each is
//! taken once: the pool belongs to this backend, which alone can hand its children a session)
//! and hands it the session in a signed `ASSIGN` line; a warm server that does not answer
//! `ASSIGNED` is killed and the next one tried, and an empty pool starts the server cold. A
//! background task keeps the pool at the size demand calls for (see [`super::warm`]),
//! replacing warm servers that died and stopping those no longer needed.
//!
//! Sessions of a queue whose profile is not the built-in server run that profile's program
//! (see [`program`]). A profile with a `warm_pool` has a pool of its own, kept the same way:
//! its warm servers start with `MATCHPLANE_WARM_URL` and `MATCHPLANE_WARM_TOKEN` instead of a
//! session, are warm once they poll that URL for a session (the SDK does), and a session is
//! offered to one through Redis (any replica may answer its poll); one that does not take its
//! offer within [`super::warm::HANDOVER_TIMEOUT`], or then does not say it is ready for the session, is
//! killed and the next one tried. Every other profile starts cold.

mod bound;
mod process;
mod program;
mod settings;

use process::{Group, LocalServer};
pub use settings::{LocalArgs, LocalSettings};

use std::collections::{HashMap, VecDeque};
use std::os::unix::ffi::OsStrExt as _;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use super::profiles::{Profile, Profiles};
use super::warm::{Plan, WarmState, pool_key, pools_of};
use super::{ServerHandle, ServerSpec, SessionBook, SessionRuntime, StartError, Task};

/// How long a warm server may take to start listening.
const WARM_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the pool is checked against demand.
const POOL_TICK: Duration = Duration::from_millis(100);
/// Warm servers started at once, at most.
const MAX_WARMING: usize = 16;

/// Spawns `game-server` processes.
/// Starts `spec`'s profile program as the local runtime does for a session (for the
/// conformance runner, which has no sessions).
pub(crate) async fn start_profile(
    settings: &LocalSettings,
    spec: &ServerSpec,
) -> Result<Box<dyn ServerHandle>, StartError> {
    Ok(Box::new(program::start(settings, spec).await?))
}

pub(crate) struct LocalRuntime {
    spawner: Arc<Spawner>,
    /// The built-in server's warm pools, by [`pool_key`]: one, or one per version.
    builtin_pools: HashMap<String, ProfilePool>,
    /// The pools of profiles with a `warm_pool`, by [`pool_key`]: one per version of a
    /// profile with versions.
    profile_pools: HashMap<String, ProfilePool>,
    /// Where warm servers of profiles poll for their session.
    internal_url: String,
    /// What warm servers of profiles are offered their sessions through; given with the tasks.
    book: OnceLock<Arc<dyn SessionBook>>,
}

/// The warm servers of one profile, or of one version of it.
struct ProfilePool {
    /// What they run (a version's own profile, with versions).
    profile: Arc<Profile>,
    pool: Arc<WarmPool>,
}

/// How long a warm server's token to poll for its session lasts.
const WARM_TOKEN_TTL_SECONDS: i64 = 2 * 86_400;

/// What spawning a server needs.
struct Spawner {
    settings: LocalSettings,
    secret: protocol::TicketSecret,
}

impl LocalRuntime {
    /// A runtime spawning the configured binary, whose servers verify tickets with `secret`.
    /// `warm`: the books of its warm pool (kept when their bounds allow any warm server).
    pub(crate) fn new(
        settings: LocalSettings,
        secret: protocol::TicketSecret,
        warm: Arc<WarmState>,
        profiles: &Profiles,
        internal_url: &str,
        profile_warm: &std::collections::BTreeMap<String, super::warm::Bounds>,
    ) -> Self {
        if settings.keeper.is_none() {
            tracing::warn!(
                "setpriv (util-linux) is not in PATH: servers of a profile will outlive this backend if it is killed"
            );
        }
        let mut profile_pools = HashMap::new();
        for profile in profiles.iter().filter(|p| !p.builtin) {
            // A region's own bounds for the profile's pool (`REGIONS`), else the profile's.
            let bounds = profile_warm.get(&profile.name).copied().or(profile.warm);
            let Some(bounds) = bounds.filter(|b| b.enabled() && profile.warm.is_some()) else {
                continue;
            };
            // A profile with versions keeps warm servers of each version (each runs its own
            // command): a session is handed one of its version's.
            for (profile, retired) in pools_of(profiles, profile) {
                let books = WarmState::new(bounds).retired_when(retired);
                let pool = Arc::new(WarmPool::new(Arc::new(books)));
                profile_pools.insert(pool_key(&profile), ProfilePool { profile, pool });
            }
        }
        LocalRuntime {
            spawner: Arc::new(Spawner { settings, secret }),
            builtin_pools: super::warm::builtin_pools(profiles, warm)
                .into_iter()
                .map(|(profile, books)| {
                    let pool = Arc::new(WarmPool::new(books));
                    (pool_key(&profile), ProfilePool { profile, pool })
                })
                .collect(),
            profile_pools,
            internal_url: internal_url.trim_end_matches('/').to_owned(),
            book: OnceLock::new(),
        }
    }

    async fn start_session(&self, spec: ServerSpec) -> Result<Box<dyn ServerHandle>, StartError> {
        if !spec.profile.builtin {
            return self.start_program(spec).await;
        }
        let began = Instant::now();
        let pool = self.builtin_pools.get(&pool_key(&spec.profile)).map(|p| &p.pool);
        if let Some(pool) = pool {
            pool.books.session_started(began);
            while let Some(warm) = pool.take() {
                match super::warm::hand_over(&self.spawner.secret, &warm.id, &warm.server.addr, &spec).await {
                    Ok(()) => {
                        pool.books.handed();
                        tracing::info!(session = %spec.session_id, server = %warm.server.name, "session handed to a warm server");
                        return Ok(Box::new(warm.server));
                    }
                    Err(e) => {
                        let mut server = warm.server;
                        tracing::warn!(server = %server.name, error = %e, "a warm server failed its hand-over; killed, trying the next");
                        let _ = server.child.kill().await;
                    }
                }
            }
        }
        let mut env = vec![
            ("SESSION_ID", spec.session_id.clone()),
            ("PLAYERS", spec.players.join(",")),
            ("REPORT_URL", spec.report_url.clone()),
            ("REPORT_TOKEN", spec.report_token.clone()),
        ];
        if let Some(teams) = spec.teams_setting() {
            env.push(("TEAMS", teams));
        }
        // A version of the built-in server may run a build of its own.
        let server = self
            .spawner
            .spawn(&env, spec.ready_timeout, &spec.profile.command)
            .await?;
        if let Some(pool) = pool {
            pool.books.cold_start(began.elapsed());
        }
        Ok(Box::new(server))
    }
}

impl LocalRuntime {
    /// A session of a profile: handed to a warm server of the profile's pool if one takes it,
    /// started cold otherwise.
    async fn start_program(&self, spec: ServerSpec) -> Result<Box<dyn ServerHandle>, StartError> {
        let began = Instant::now();
        let pool = self.profile_pools.get(&pool_key(&spec.profile)).map(|p| &p.pool);
        if let (Some(pool), Some(book)) = (pool, self.book.get()) {
            pool.books.session_started(began);
            while let Some(mut warm) = pool.take() {
                match super::warm::hand_over_sdk(book.as_ref(), &warm.id, &spec).await {
                    Ok(()) => {
                        pool.books.handed();
                        tracing::info!(session = %spec.session_id, server = %warm.server.name, "session handed to a warm server of its profile");
                        return Ok(Box::new(warm.server));
                    }
                    Err(e) => {
                        tracing::warn!(server = %warm.server.name, error = %e, "a warm server of the profile failed its hand-over; killed, trying the next");
                        let _ = warm.server.child.kill().await;
                    }
                }
            }
        }
        let server = program::start(&self.spawner.settings, &spec).await?;
        if let Some(pool) = pool {
            pool.books.cold_start(began.elapsed());
        }
        Ok(Box::new(server))
    }

    /// Starts a warm server of `profile` with id `id`: warm once it polls for its session.
    fn warm_program(&self, profile: Arc<Profile>, book: Arc<dyn SessionBook>) -> StartWarm {
        let settings = self.spawner.settings.clone();
        let secret = self.spawner.secret.clone();
        let base = format!("{}/internal/warm", self.internal_url);
        Arc::new(move |id: String| {
            let (settings, secret, profile, book) = (settings.clone(), secret.clone(), profile.clone(), book.clone());
            let url = format!("{base}/{id}");
            Box::pin(async move {
                let token = secret.mint(&protocol::Claims::warm(
                    &id,
                    protocol::ticket::unix_now(),
                    WARM_TOKEN_TTL_SECONDS,
                ));
                let polling = {
                    let (book, id) = (book.clone(), id.clone());
                    super::SdkReady::new(move || {
                        let (book, id) = (book.clone(), id.clone());
                        Box::pin(async move {
                            while !matches!(book.warm_server_state(&id).await, Ok((true, _))) {
                                tokio::time::sleep(super::warm::HANDOVER_POLL).await;
                            }
                        })
                    })
                };
                let launch = WarmLaunch {
                    profile: &profile,
                    id: &id,
                    url,
                    token,
                    polling: &polling,
                    ready_timeout: WARM_READY_TIMEOUT,
                };
                launch.run(&settings).await
            })
        })
    }
}

/// One start of a warm server of a profile: told to poll `url` with `token` for its session;
/// warm once `polling` resolves (it has polled), failed if it exits or `ready_timeout` passes.
pub(crate) struct WarmLaunch<'a> {
    pub(crate) profile: &'a Profile,
    pub(crate) id: &'a str,
    pub(crate) url: String,
    pub(crate) token: String,
    pub(crate) polling: &'a super::SdkReady,
    pub(crate) ready_timeout: Duration,
}

impl WarmLaunch<'_> {
    async fn run(self, settings: &LocalSettings) -> Result<LocalServer, StartError> {
        let launch = program::Launch {
            profile: self.profile,
            vars: vec![
                ("MATCHPLANE_WARM_URL".to_owned(), self.url),
                ("MATCHPLANE_WARM_TOKEN".to_owned(), self.token),
                // The version it runs is known before its session is.
                (
                    "MATCHPLANE_VERSION".to_owned(),
                    self.profile.version.clone().unwrap_or_default(),
                ),
            ],
            home: self.id,
            ready_timeout: self.ready_timeout,
            sdk_ready: self.polling,
        };
        launch.run(settings).await
    }

    /// The same, for the conformance runner.
    pub(crate) async fn start(self, settings: &LocalSettings) -> Result<Box<dyn ServerHandle>, StartError> {
        Ok(Box::new(self.run(settings).await?))
    }
}

/// Starts one warm server with the given id.
type StartWarm = Arc<dyn Fn(String) -> BoxFuture<'static, Result<LocalServer, StartError>> + Send + Sync>;

impl Spawner {
    /// Starts a server with `session` settings (a session's, or a warm server's id) and waits
    /// for its `LISTENING` line.
    /// `program`: the program and its arguments instead of the configured binary (a version of
    /// the built-in server with a build of its own), when not empty.
    async fn spawn(
        &self,
        session: &[(&str, String)],
        ready_timeout: Duration,
        program: &[String],
    ) -> Result<LocalServer, StartError> {
        let binary = match program.first() {
            Some(own) => std::path::Path::new(own),
            None => self.settings.binary.as_path(),
        };
        let mut command = Command::new(binary);
        command.args(program.iter().skip(1));
        // Only what the server needs: never the backend's own secrets and URLs.
        command.env_clear();
        if let Some(path) = &self.settings.path {
            command.env("PATH", path);
        }
        command
            .env("GAME_BIND", "127.0.0.1")
            .env("GAME_PORT", "0")
            .envs(session.iter().map(|(k, v)| (k, v)))
            .env("TICKET_SECRET", std::ffi::OsStr::from_bytes(self.secret.expose()))
            .env("EXIT_ON_STDIN_CLOSE", "true")
            .env("RUST_LOG", &self.settings.log_filter)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .kill_on_drop(true);
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
        let read = timeout(ready_timeout, BufReader::new(stdout).read_line(&mut line)).await;
        let addr = match read {
            Err(_) => {
                let _ = child.kill().await;
                return Err(StartError::Timeout(ready_timeout));
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
        Ok(LocalServer {
            child,
            _stdin: stdin,
            name,
            addr,
            udp_addr: None,
            output: None,
            _home: None,
        })
    }
}

impl SessionRuntime for LocalRuntime {
    fn start(&self, spec: ServerSpec) -> BoxFuture<'_, Result<Box<dyn ServerHandle>, StartError>> {
        Box::pin(self.start_session(spec))
    }

    fn warm_servers(&self) -> Option<protocol::api::WarmServers> {
        (!self.builtin_pools.is_empty())
            .then(|| super::warm::total(self.builtin_pools.values().map(|p| p.pool.books.snapshot())))
    }

    fn warm_profiles(&self) -> std::collections::BTreeMap<String, protocol::api::WarmServers> {
        // The built-in server's versions' pools are listed too, as a profile's are.
        let versions = self.builtin_pools.iter().filter(|(_, p)| p.profile.version.is_some());
        self.profile_pools
            .iter()
            .chain(versions)
            .map(|(key, p)| (key.clone(), p.pool.books.snapshot()))
            .collect()
    }

    fn tasks(&self, sessions: Arc<dyn SessionBook>, stop: CancellationToken) -> Vec<Task> {
        let _ = self.book.set(sessions.clone());
        let mut tasks: Vec<Task> = Vec::new();
        for p in self.builtin_pools.values() {
            // A version's warm servers run its own build.
            let (spawner, program) = (self.spawner.clone(), p.profile.command.clone());
            let start: StartWarm = Arc::new(move |id: String| {
                let (spawner, program) = (spawner.clone(), program.clone());
                Box::pin(async move {
                    spawner
                        .spawn(&[("WARM_SERVER_ID", id)], WARM_READY_TIMEOUT, &program)
                        .await
                })
            });
            tasks.push(("warm pool", Box::pin(keep_warm(p.pool.clone(), start, stop.clone()))));
        }
        for p in self.profile_pools.values() {
            let start = self.warm_program(p.profile.clone(), sessions.clone());
            tasks.push((
                "warm pool of a profile",
                Box::pin(keep_warm(p.pool.clone(), start, stop.clone())),
            ));
        }
        tasks
    }
}

/// Warm servers of this backend, ready to be handed a session, and the pool's books.
pub(crate) struct WarmPool {
    /// The idle servers themselves, oldest first; a `std` mutex held only to push or pop.
    idle: std::sync::Mutex<VecDeque<Warm>>,
    /// Warm servers being started.
    warming: AtomicUsize,
    books: Arc<WarmState>,
}

/// One idle warm server.
struct Warm {
    id: String,
    server: LocalServer,
}

impl WarmPool {
    fn new(books: Arc<WarmState>) -> WarmPool {
        WarmPool {
            idle: std::sync::Mutex::new(VecDeque::new()),
            warming: AtomicUsize::new(0),
            books,
        }
    }

    /// The oldest idle warm server, taken out of the pool (so handed at most one session).
    fn take(&self) -> Option<Warm> {
        self.idle.lock().expect("pool lock").pop_front()
    }

    fn idle(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }
}

/// Keeps the pool at the size demand calls for until `stop`: replaces warm servers that died,
/// starts more when demand rises, stops the surplus when it falls. On `stop` every idle warm
/// server is stopped.
/// The number of the last warm server this process started, over all its pools.
static WARM_SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn keep_warm(pool: Arc<WarmPool>, start: StartWarm, stop: CancellationToken) {
    let mut tick = tokio::time::interval(POOL_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let tag = std::process::id();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        // Warm servers that died while idle leave the pool (and are replaced below).
        let dead: Vec<Warm> = {
            let mut idle = pool.idle.lock().expect("pool lock");
            let mut alive = VecDeque::with_capacity(idle.len());
            let mut dead = Vec::new();
            for mut warm in idle.drain(..) {
                if matches!(warm.server.child.child_alive(), Ok(true)) {
                    alive.push_back(warm);
                } else {
                    dead.push(warm);
                }
            }
            *idle = alive;
            dead
        };
        pool.books.replaced(dead.len());
        for mut warm in dead {
            tracing::warn!(server = %warm.server.name, "a warm server died while idle; replacing it");
            let _ = warm.server.child.kill().await;
        }
        let (idle, warming) = (pool.idle(), pool.warming.load(Ordering::Relaxed));
        // (A version that drains keeps none: its idle ones are stopped.)
        let Plan { target, at_once } = pool.books.plan(idle, warming, Instant::now(), MAX_WARMING);
        if idle + warming < target {
            for _ in 0..(target - idle - warming).min(at_once.saturating_sub(warming)) {
                // One numbering for every pool of this backend: ids never repeat across them.
                let serial = WARM_SERIAL.fetch_add(1, Ordering::Relaxed) + 1;
                let id = format!("warm-{tag}-{serial}");
                pool.warming.fetch_add(1, Ordering::Relaxed);
                let (pool, start) = (pool.clone(), start.clone());
                tokio::spawn(async move {
                    let began = Instant::now();
                    let started = start(id.clone()).await;
                    match started {
                        Ok(server) => {
                            pool.books.started(began.elapsed());
                            pool.idle.lock().expect("pool lock").push_back(Warm { id, server });
                        }
                        Err(e) => tracing::warn!(error = %e, "a warm server did not start"),
                    }
                    pool.warming.fetch_sub(1, Ordering::Relaxed);
                });
            }
        } else if idle > target {
            // The surplus, newest first (the oldest have been checked longest).
            let surplus: Vec<Warm> = {
                let mut idle = pool.idle.lock().expect("pool lock");
                let keep = target.min(idle.len());
                idle.drain(keep..).collect()
            };
            for mut warm in surplus {
                tracing::debug!(server = %warm.server.name, "stopping a warm server no longer needed");
                let _ = warm.server.child.kill().await;
            }
        }
    }
    let idle: Vec<Warm> = pool.idle.lock().expect("pool lock").drain(..).collect();
    for mut warm in idle {
        let _ = warm.server.child.kill().await;
    }
}
