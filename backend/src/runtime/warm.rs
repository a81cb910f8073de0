//! How many warm servers to keep: between `WARM_POOL_MIN` and `WARM_POOL_MAX`, enough to
//! cover the sessions that will form while one more server starts cold, with headroom.
//!
//! Demand is the recent rate of sessions given a server (the higher of the last 5 s and the
//! last 30 s, so a burst counts at once and a steady stream is not forgotten between its
//! sessions), times the measured cold-start time (a moving average of real starts), times
//! [`HEADROOM`]. When sessions stop forming, both windows empty and the pool shrinks back to
//! the minimum. Time comes from `tokio::time`, so the policy is tested on a paused clock.
//!
//! Where servers share the backend's machine (the local runtime), a refill is paced by
//! [`Demand::starts_at_once`]: while sessions are still claiming servers and the idle ones
//! cover what demand may claim during one cold start, replacements start one at a time, so a
//! burst's own claims do not compete for the CPU with the start-up of their replacements. Once
//! the idle servers run that low, or the claims pause for [`CLAIMS_PAUSED`], they start as fast
//! as allowed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::profiles::{Picker, Profile, Profiles};

/// The short and the long window demand is measured over.
const SHORT: Duration = Duration::from_secs(5);
const LONG: Duration = Duration::from_secs(30);
/// Warm servers per session expected while one starts cold.
const HEADROOM: f64 = 2.0;
/// No session given a server for this long: a burst is over, and a refill runs at full speed.
const CLAIMS_PAUSED: Duration = Duration::from_secs(1);
/// Assumed cold start before one was measured.
const FIRST_GUESS: Duration = Duration::from_secs(1);
/// Weight of the newest cold start in the moving average.
const SMOOTHING: f64 = 0.3;

/// The pool's bounds (`WARM_POOL_MIN`, `WARM_POOL_MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: usize,
    pub max: usize,
}

impl Bounds {
    /// Whether warm servers are kept at all.
    pub fn enabled(&self) -> bool {
        self.max > 0
    }
}

/// Recent demand and cold-start time, and the pool size they call for.
#[derive(Debug)]
pub struct Demand {
    bounds: Bounds,
    starts: VecDeque<Instant>,
    cold_start: Option<Duration>,
}

impl Demand {
    pub fn new(bounds: Bounds) -> Demand {
        Demand {
            bounds,
            starts: VecDeque::new(),
            cold_start: None,
        }
    }

    /// A session was given a server (warm or cold) at `now`.
    pub fn session_started(&mut self, now: Instant) {
        self.starts.push_back(now);
    }

    /// A server took `took` from spawn to listening.
    pub fn cold_start_took(&mut self, took: Duration) {
        self.cold_start = Some(match self.cold_start {
            None => took,
            Some(avg) => avg.mul_f64(1.0 - SMOOTHING) + took.mul_f64(SMOOTHING),
        });
    }

    /// The measured cold-start time (a first guess until one was measured).
    pub fn cold_start(&self) -> Duration {
        self.cold_start.unwrap_or(FIRST_GUESS)
    }

    /// Sessions per second recently (the higher of the short and the long window).
    pub fn rate(&mut self, now: Instant) -> f64 {
        while self.starts.front().is_some_and(|t| now.duration_since(*t) > LONG) {
            self.starts.pop_front();
        }
        let short = self
            .starts
            .iter()
            .rev()
            .take_while(|t| now.duration_since(**t) <= SHORT)
            .count();
        (short as f64 / SHORT.as_secs_f64()).max(self.starts.len() as f64 / LONG.as_secs_f64())
    }

    /// Sessions expected to claim a warm server while one more starts cold.
    pub fn claims_per_cold_start(&mut self, now: Instant) -> usize {
        // A saturating float-to-int conversion, as in `target`.
        (self.rate(now) * self.cold_start().as_secs_f64()).ceil() as usize
    }

    /// How many warm servers may be starting at once, with `idle` in the pool: one while
    /// sessions are claiming servers (one given a server within [`CLAIMS_PAUSED`]) and the idle
    /// ones cover [`Demand::claims_per_cold_start`], so the refill runs beside the live path
    /// instead of against it; otherwise `fastest`.
    pub fn starts_at_once(&mut self, now: Instant, idle: usize, fastest: usize) -> usize {
        let claiming = self
            .starts
            .back()
            .is_some_and(|t| now.duration_since(*t) < CLAIMS_PAUSED);
        if claiming && idle > self.claims_per_cold_start(now) {
            fastest.min(1)
        } else {
            fastest
        }
    }

    /// How many warm servers to keep now.
    pub fn target(&mut self, now: Instant) -> usize {
        let wanted = (self.rate(now) * self.cold_start().as_secs_f64() * HEADROOM).ceil();
        // A saturating float-to-int conversion: a huge rate asks for the maximum.
        (wanted as usize).clamp(self.bounds.min, self.bounds.max)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// One warm pool's books, the same for both runtimes: the demand that sizes it, what it holds
/// (idle and starting servers, as its runtime last counted them) and what it has done (sessions
/// handed to a warm server, cold starts, servers replaced). The runtime keeps the servers
/// themselves (child processes, or Pods through its watch) and tells the books.
///
/// The books are the pool's metrics, registered by the pool ([`WarmState::register`]) and
/// read by `/health` ([`WarmState::snapshot`]): nothing is copied at scrape time. The counts
/// are gauges and counters (atomics); the demand is behind one `std` mutex, because a sample
/// and the target it changes are read together and every use is a few arithmetic steps,
/// never held across an await. Pools made with [`WarmState::sharing`] (the built-in server's
/// versions) add into the same metrics, each keeping its own counts for `/health`.
pub(crate) struct WarmState {
    bounds: Bounds,
    /// A version's pool keeps no warm server while its version drains.
    retired: Retired,
    demand: Mutex<Demand>,
    /// The metrics, the sums over every pool sharing them.
    servers: Family<StateLabel, Gauge>,
    target: Gauge,
    handed: Counter,
    cold_starts: Counter,
    replaced: Counter,
    /// This pool's own counts: idle, starting, target; handed, cold starts, replaced.
    own: [AtomicU64; 6],
}

/// What the pool should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Warm servers to keep.
    pub(crate) target: usize,
    /// Warm servers that may be starting at once (see [`Demand::starts_at_once`]).
    pub(crate) at_once: usize,
}

/// Indexes into [`WarmState::own`].
const IDLE: usize = 0;
const STARTING: usize = 1;
const TARGET: usize = 2;
const HANDED: usize = 3;
const COLD_STARTS: usize = 4;
const REPLACED: usize = 5;

impl WarmState {
    pub(crate) fn new(bounds: Bounds) -> WarmState {
        let servers = Family::<StateLabel, Gauge>::default();
        for state in ["idle", "starting"] {
            drop(servers.get_or_create(&StateLabel { state }));
        }
        WarmState {
            bounds,
            retired: Retired::never(),
            demand: Mutex::new(Demand::new(bounds)),
            servers,
            target: Gauge::default(),
            handed: Counter::default(),
            cold_starts: Counter::default(),
            replaced: Counter::default(),
            own: Default::default(),
        }
    }

    /// The books of another pool within the same bounds whose counts add into these books'
    /// metrics (one version of the built-in server among others).
    pub(crate) fn sharing(&self) -> WarmState {
        self.sharing_within(self.bounds)
    }

    /// [`WarmState::sharing`] within other bounds (a region's pool).
    pub(crate) fn sharing_within(&self, bounds: Bounds) -> WarmState {
        WarmState {
            bounds,
            retired: Retired::never(),
            demand: Mutex::new(Demand::new(bounds)),
            servers: self.servers.clone(),
            target: self.target.clone(),
            handed: self.handed.clone(),
            cold_starts: self.cold_starts.clone(),
            replaced: self.replaced.clone(),
            own: Default::default(),
        }
    }

    /// Sets this pool's own `which` count to `n`, moving the shared gauge by the difference.
    fn set_own(&self, which: usize, gauge: &Gauge, n: usize) {
        let n = n as u64;
        let before = self.own[which].swap(n, Ordering::Relaxed);
        let delta = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        if n >= before {
            gauge.inc_by(delta(n - before));
        } else {
            gauge.dec_by(delta(before - n));
        }
    }

    /// Adds `n` to this pool's own `which` count and to the shared `counter`.
    fn count_own(&self, which: usize, counter: &Counter, n: u64) {
        self.own[which].fetch_add(n, Ordering::Relaxed);
        counter.inc_by(n);
    }

    /// The books of a version's pool, which keeps no warm server while `retired` says its
    /// version drains.
    pub(crate) fn retired_when(mut self, retired: Retired) -> WarmState {
        self.retired = retired;
        self
    }

    /// How many warm servers demand calls for now (none while the pool's version drains).
    fn target(&self, demand: &mut Demand, now: Instant) -> usize {
        if self.retired.now() { 0 } else { demand.target(now) }
    }

    /// The pool's bounds.
    pub(crate) fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// The pool's metrics, in `registry` (every one at 0 from the start, pool or not).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "mp_warm_servers",
            "Warm game servers by state (idle: ready to be handed a session; starting); with the kubernetes runtime, the cluster's pool as this replica's watch sees it",
            self.servers.clone(),
        );
        registry.register(
            "mp_warm_pool_target",
            "The warm pool size demand calls for now, within WARM_POOL_MIN and WARM_POOL_MAX",
            self.target.clone(),
        );
        registry.register(
            "mp_warm_handed",
            "Sessions this replica handed to a warm server",
            self.handed.clone(),
        );
        registry.register(
            "mp_warm_cold_starts",
            "Sessions this replica started cold while it keeps a warm pool (the pool had none to give)",
            self.cold_starts.clone(),
        );
        registry.register(
            "mp_warm_replaced",
            "Warm servers that died while idle and were replaced, seen by this replica",
            self.replaced.clone(),
        );
    }

    /// A session was given a server (warm or cold) at `now`.
    pub(crate) fn session_started(&self, now: Instant) {
        self.demand.lock().expect("demand lock").session_started(now);
    }

    /// A session was handed to a warm server.
    pub(crate) fn handed(&self) {
        self.count_own(HANDED, &self.handed, 1);
    }

    /// A session's server started cold and took `took`.
    pub(crate) fn cold_start(&self, took: Duration) {
        self.count_own(COLD_STARTS, &self.cold_starts, 1);
        self.started(took);
    }

    /// A server (a warm one, or a session's) took `took` to start.
    pub(crate) fn started(&self, took: Duration) {
        self.demand.lock().expect("demand lock").cold_start_took(took);
    }

    /// Warm servers that died while idle, to be replaced.
    pub(crate) fn replaced(&self, n: usize) {
        self.count_own(REPLACED, &self.replaced, n as u64);
    }

    /// The runtime counted `idle` and `starting` warm servers at `now`: what the pool should
    /// do, starting at most `fastest` at once.
    pub(crate) fn plan(&self, idle: usize, starting: usize, now: Instant, fastest: usize) -> Plan {
        let (target, at_once) = {
            let mut demand = self.demand.lock().expect("demand lock");
            (self.target(&mut demand, now), demand.starts_at_once(now, idle, fastest))
        };
        self.set_own(IDLE, &self.servers.get_or_create(&StateLabel { state: "idle" }), idle);
        self.set_own(
            STARTING,
            &self.servers.get_or_create(&StateLabel { state: "starting" }),
            starting,
        );
        self.set_own(TARGET, &self.target, target);
        Plan { target, at_once }
    }

    /// The pool as `/health` shows it.
    pub(crate) fn snapshot(&self) -> protocol::api::WarmServers {
        let own = |which: usize| self.own[which].load(Ordering::Relaxed);
        protocol::api::WarmServers {
            idle: usize::try_from(own(IDLE)).unwrap_or(usize::MAX),
            starting: usize::try_from(own(STARTING)).unwrap_or(usize::MAX),
            target: self.target(&mut self.demand.lock().expect("demand lock"), Instant::now()),
            handed: own(HANDED),
            cold_starts: own(COLD_STARTS),
            replaced: own(REPLACED),
        }
    }
}

/// Several pools' books as one (the built-in server's versions, for `/health`).
pub(crate) fn total(pools: impl IntoIterator<Item = protocol::api::WarmServers>) -> protocol::api::WarmServers {
    pools.into_iter().fold(protocol::api::WarmServers::default(), |sum, p| {
        protocol::api::WarmServers {
            idle: sum.idle + p.idle,
            starting: sum.starting + p.starting,
            target: sum.target + p.target,
            handed: sum.handed + p.handed,
            cold_starts: sum.cold_starts + p.cold_starts,
            replaced: sum.replaced + p.replaced,
        }
    })
}

/// The warm pool `profile`'s sessions take their server from: the profile's name, and
/// `@<version>` for a version of it (each version keeps warm servers of its own build).
pub(crate) fn pool_key(profile: &Profile) -> String {
    match &profile.version {
        Some(version) => format!("{}@{version}", profile.name),
        None => profile.name.clone(),
    }
}

/// Whether a pool's servers are still wanted: a version's pool keeps none while its version
/// drains (its idle servers are stopped, none started).
#[derive(Clone)]
pub(crate) struct Retired(Option<(Arc<Picker>, usize)>);

impl Retired {
    pub(crate) fn never() -> Retired {
        Retired(None)
    }

    pub(crate) fn now(&self) -> bool {
        self.0.as_ref().is_some_and(|(picker, index)| picker.drains(*index))
    }
}

/// The warm pools `profile` keeps: one of the profile itself, or with versions one for each
/// version (as the version runs it: its own command or image, labelled with its name), each
/// retired while its version drains.
pub(crate) fn pools_of(profiles: &Profiles, profile: &Arc<Profile>) -> Vec<(Arc<Profile>, Retired)> {
    if profile.versions.is_empty() {
        return vec![(profile.clone(), Retired::never())];
    }
    let picker = profiles.picker(&profile.name);
    profile
        .versions
        .iter()
        .enumerate()
        .map(|(i, v)| (v.profile.clone(), Retired(picker.map(|p| (p.clone(), i)))))
        .collect()
}

/// The built-in game server's warm pools within `books`' bounds: none when they allow no warm
/// server; one, `books` itself (the registered metrics); or with versions one for each
/// version, each adding into `books`' metrics and retired while its version drains.
pub(crate) fn builtin_pools(profiles: &Profiles, books: Arc<WarmState>) -> Vec<(Arc<Profile>, Arc<WarmState>)> {
    let Some(builtin) = profiles
        .get(super::profiles::BUILTIN)
        .filter(|_| books.bounds().enabled())
    else {
        return Vec::new();
    };
    if builtin.versions.is_empty() {
        return vec![(builtin.clone(), books)];
    }
    pools_of(profiles, builtin)
        .into_iter()
        .map(|(version, retired)| (version, Arc::new(books.sharing().retired_when(retired))))
        .collect()
}

/// How long a warm server may take to answer its hand-over.
pub(crate) const HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// Hands `spec`'s session to the warm server `server_id` listening at `addr`: one
/// `ASSIGN <token>` line (the token signed with the ticket secret for the hand-over audience
/// and that server only), answered `ASSIGNED <session>`.
pub(crate) async fn hand_over(
    secret: &protocol::TicketSecret,
    server_id: &str,
    addr: &str,
    spec: &super::ServerSpec,
) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let mut handover = protocol::Handover::new(
        server_id,
        &spec.session_id,
        spec.players.clone(),
        protocol::ticket::unix_now(),
    );
    handover.teams = spec.teams.clone();
    handover.report_url = Some(spec.report_url.clone());
    handover.report_token = Some(spec.report_token.clone());
    let token = secret.mint_handover(&handover);
    let answer = tokio::time::timeout(HANDOVER_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        stream.write_all(protocol::handover::assign(&token).as_bytes()).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        anyhow::Ok(line)
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {HANDOVER_TIMEOUT:?}"))??;
    match protocol::handover::parse_assigned(&answer) {
        Some(session) if session == spec.session_id => Ok(()),
        _ => anyhow::bail!("answered {:?}", answer.trim()),
    }
}

/// How often a hand-over to a warm server of a profile looks whether it has landed.
pub(crate) const HANDOVER_POLL: Duration = Duration::from_millis(50);

/// Hands `spec`'s session to warm server `id` of a profile, which takes its session through
/// the SDK: offered through the book (Redis) to the server polling for it, taken within
/// [`HANDOVER_TIMEOUT`], and then said ready for through the SDK within the spec's ready
/// timeout.
pub(crate) async fn hand_over_sdk(
    book: &dyn super::SessionBook,
    id: &str,
    spec: &super::ServerSpec,
) -> anyhow::Result<()> {
    let session = protocol::api::WarmSession {
        session_id: spec.session_id.clone(),
        players: spec.players.clone(),
        teams: spec.teams.clone(),
        queue: spec.queue.clone(),
        report_url: spec.report_url.clone(),
        report_token: spec.report_token.clone(),
    };
    if !book.offer_warm(id, &session).await? {
        anyhow::bail!("it was not waiting for a session");
    }
    let taken = tokio::time::timeout(HANDOVER_TIMEOUT, async {
        loop {
            if let Ok((_, true)) = book.warm_server_state(id).await {
                return;
            }
            tokio::time::sleep(HANDOVER_POLL).await;
        }
    })
    .await;
    if taken.is_err() {
        anyhow::bail!("it did not take the session within {HANDOVER_TIMEOUT:?}");
    }
    if tokio::time::timeout(spec.ready_timeout, spec.sdk_ready.wait())
        .await
        .is_err()
    {
        anyhow::bail!(
            "it took the session but did not say it was ready within {:?}",
            spec.ready_timeout
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_pool_grows_with_demand_and_shrinks_when_idle() {
        let mut demand = Demand::new(Bounds { min: 2, max: 50 });
        let t0 = Instant::now();
        assert_eq!(demand.target(t0), 2, "idle: the minimum");
        demand.cold_start_took(Duration::from_secs(2));
        assert_eq!(demand.cold_start(), Duration::from_secs(2));
        // A burst: 40 sessions in one second → 8/s over the short window, 2 s cold starts,
        // twice that as headroom.
        for i in 0..40 {
            tokio::time::advance(Duration::from_millis(25)).await;
            demand.session_started(t0 + Duration::from_millis(25 * (i + 1)));
        }
        let now = Instant::now();
        assert_eq!(demand.rate(now), 8.0);
        assert_eq!(demand.target(now), 32);
        // Five seconds later the burst has left the short window; the long one remembers it.
        tokio::time::advance(Duration::from_secs(5)).await;
        let later = Instant::now();
        assert!((demand.rate(later) - 40.0 / 30.0).abs() < 1e-9);
        assert_eq!(demand.target(later), 6);
        // A steady trickle keeps a little; then idle again: back to the minimum.
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(demand.target(Instant::now()), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refill_trickles_while_a_burst_claims_and_the_idle_servers_last() {
        let mut demand = Demand::new(Bounds { min: 100, max: 100 });
        let t0 = Instant::now();
        // No session claims a server: the pool fills as fast as allowed, however full.
        assert_eq!(demand.starts_at_once(t0, 0, 16), 16);
        assert_eq!(demand.starts_at_once(t0, 99, 16), 16);
        // A burst: 50 sessions in half a second with 500 ms cold starts → 10/s over the short
        // window, 5 claims while one server starts.
        demand.cold_start_took(Duration::from_millis(500));
        for _ in 0..50 {
            tokio::time::advance(Duration::from_millis(10)).await;
            demand.session_started(Instant::now());
        }
        let now = Instant::now();
        assert_eq!(demand.claims_per_cold_start(now), 5);
        assert_eq!(
            demand.starts_at_once(now, 50, 16),
            1,
            "plenty idle: the refill trickles"
        );
        assert_eq!(demand.starts_at_once(now, 6, 16), 1);
        assert_eq!(demand.starts_at_once(now, 5, 16), 16, "down to one cold start's claims");
        assert_eq!(demand.starts_at_once(now, 0, 16), 16);
        // The claims pause: the burst is over, the refill catches up at full speed, although
        // the windows still remember the burst.
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(demand.starts_at_once(Instant::now(), 50, 16), 1);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(demand.claims_per_cold_start(Instant::now()), 5);
        assert_eq!(demand.starts_at_once(Instant::now(), 50, 16), 16);
    }

    #[tokio::test(start_paused = true)]
    async fn bounds_cap_the_pool_and_cold_starts_are_averaged() {
        let mut demand = Demand::new(Bounds { min: 0, max: 10 });
        let now = Instant::now();
        for _ in 0..1000 {
            demand.session_started(now);
        }
        assert_eq!(demand.target(now), 10, "capped at the maximum");
        demand.cold_start_took(Duration::from_millis(100));
        demand.cold_start_took(Duration::from_millis(200));
        assert_eq!(demand.cold_start(), Duration::from_millis(130));
        assert!(!Bounds { min: 0, max: 0 }.enabled());
    }
}

#[cfg(test)]
mod books {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_books_are_the_metrics_and_the_health_answer() {
        let state = WarmState::new(Bounds { min: 1, max: 8 });
        let mut registry = Registry::default();
        state.register(&mut registry);
        let text = service::metrics::render(&registry);
        for line in [
            "mp_warm_servers{state=\"idle\"} 0",
            "mp_warm_pool_target 0",
            "mp_warm_handed_total 0",
            "mp_warm_cold_starts_total 0",
            "mp_warm_replaced_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        let now = Instant::now();
        state.session_started(now);
        state.handed();
        state.session_started(now);
        state.cold_start(Duration::from_millis(800));
        state.replaced(2);
        let plan = state.plan(3, 1, now, 4);
        assert!(plan.target >= 1 && plan.target <= 8, "{plan:?}");
        let text = service::metrics::render(&registry);
        for line in [
            "mp_warm_servers{state=\"idle\"} 3".to_owned(),
            "mp_warm_servers{state=\"starting\"} 1".to_owned(),
            format!("mp_warm_pool_target {}", plan.target),
            "mp_warm_handed_total 1".to_owned(),
            "mp_warm_cold_starts_total 1".to_owned(),
            "mp_warm_replaced_total 2".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
        let health = state.snapshot();
        assert_eq!(
            (
                health.idle,
                health.starting,
                health.handed,
                health.cold_starts,
                health.replaced
            ),
            (3, 1, 1, 1, 2)
        );
    }

    /// Pools sharing one pool's metrics (the built-in server's versions) add into them, each
    /// answering `/health` with its own counts; a count that falls moves the sum down.
    #[tokio::test(start_paused = true)]
    async fn pools_sharing_metrics_add_up_and_keep_their_own_counts() {
        let first = WarmState::new(Bounds { min: 1, max: 4 });
        let mut registry = Registry::default();
        first.register(&mut registry);
        let second = first.sharing();
        let now = Instant::now();
        first.plan(2, 1, now, 4);
        second.plan(3, 0, now, 4);
        first.handed();
        second.handed();
        second.cold_start(Duration::from_millis(500));
        let line = |text: &str, want: &str| assert!(text.lines().any(|l| l == want), "{want} in {text}");
        let text = service::metrics::render(&registry);
        line(&text, "mp_warm_servers{state=\"idle\"} 5");
        line(&text, "mp_warm_servers{state=\"starting\"} 1");
        line(&text, "mp_warm_handed_total 2");
        line(&text, "mp_warm_cold_starts_total 1");
        second.plan(1, 0, now, 4);
        line(
            &service::metrics::render(&registry),
            "mp_warm_servers{state=\"idle\"} 3",
        );
        let (a, b) = (first.snapshot(), second.snapshot());
        assert_eq!((a.idle, a.handed, a.cold_starts), (2, 1, 0));
        assert_eq!((b.idle, b.handed, b.cold_starts), (1, 1, 1));
        let both = total([a, b]);
        assert_eq!((both.idle, both.starting, both.handed), (3, 1, 2));
    }
}
