//! `loadgen swarm`: simulated players doing what a real game client does, through the proxy
//! only — join (waiting in the join itself until matched), long-poll if still queued, connect
//! with the ticket, ask for a match length, and play until `STATE stop` — each checking what
//! it saw. It never ends sessions itself.
//!
//! In the `ranked` scenario the studio's service joins each ticket (skill, latency map, mode,
//! and for a fifth of them a party of two) to the `ranked` queue; every player, party members
//! too, then waits for its own status and plays as above, and checks its team.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hyper::Method;
use protocol::api::{JoinRequest, MatchResponse, MatchStatus};
use protocol::sessions::EndReason;
use protocol::{GameState, LineCodec, ServerReply};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::codec::Framed;

use crate::http::{CredentialArgs, HttpClient, HttpError};
use crate::report::{ClientRecord, Outcome, Report, Setup};
use crate::scenario::{CHURN_QUEUE, RANKED_QUEUE, Scenario, join_order_quality, ranked};

/// Settings of a swarm (the contract names).
#[derive(Debug, Clone, clap::Args)]
pub struct SwarmArgs {
    /// The proxy (the API is under /api there).
    #[arg(long, env = "TARGET_URL", default_value = "http://127.0.0.1:8080")]
    pub target_url: String,
    /// Simulated players.
    #[arg(long, env = "CLIENTS", default_value_t = 50)]
    pub clients: usize,
    /// Players started per second; 0 starts them all at once.
    #[arg(long, env = "SPAWN_RATE", default_value_t = 0.0)]
    pub spawn_rate: f64,
    /// Match length each player asks for, in seconds.
    #[arg(long, env = "MATCH_DURATION", default_value_t = 30.0)]
    pub match_duration: f64,
    /// Connect game traffic here (host or host:port) instead of the returned connect address,
    /// e.g. through a port-forward.
    #[arg(long, env = "GAME_SERVER_HOST_OVERRIDE")]
    pub connect_override: Option<String>,
    /// Prefix of player ids; unique per run by default.
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// Largest session the backend forms (SESSION_SIZE), for the size check.
    #[arg(long, env = "SESSION_SIZE", default_value_t = 12)]
    pub session_size: usize,
    /// Smallest session the backend forms (MIN_PARTIAL_SESSION_SIZE), for the size check.
    #[arg(long, env = "MIN_PARTIAL_SESSION_SIZE", default_value_t = 2)]
    pub min_session_size: usize,
    /// Give up on a player after this long (default: 3 minutes plus the match length).
    #[arg(long)]
    pub client_timeout: Option<f64>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Draw the latency distributions here (SVG).
    #[arg(long)]
    pub chart: Option<std::path::PathBuf>,
    /// Progress output: auto (a bar on a terminal), bar, lines, or none.
    #[arg(long, default_value = "auto")]
    pub progress: String,
    /// Who joins: players joining the default queue themselves (fifo), or ranked tickets
    /// (skill, latency, modes, parties of two) joined to the `ranked` queue by the studio's
    /// service (needs SERVICE_TOKEN). Set --session-size and --min-session-size to the ranked
    /// queue's teams × team_size.
    #[arg(long, env = "SCENARIO", value_enum, default_value = "fifo")]
    pub scenario: Scenario,
    /// Fail the run when more than this share of the players (percent) time out in their
    /// queue (max_wait_seconds passed without a session); up to it they are not failures.
    #[arg(long, default_value_t = 100.0, value_parser = percent)]
    pub max_timed_out_percent: f64,
    /// Seed of the ranked scenario's tickets (default: a new one per run).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Ranked: each region's proxy, `name=host:port`, comma-separated. At its start the swarm
    /// measures each with the latency probe (UDP, the median of 5) and adds the round trip to
    /// every player's drawn latency to that region; a region that does not answer is left out
    /// of the latency maps, as a client leaves out a region it cannot reach.
    #[arg(long, value_delimiter = ',')]
    pub probe_regions: Vec<String>,
    /// A player whose session ends under it otherwise than completed (its server killed, its
    /// Pod evicted) joins again and plays its next match, as a game client whose player chose
    /// to play on would; without it that player's run fails.
    #[arg(long)]
    pub rejoin_after_failure: bool,
    /// Churn: the share of players in a running match who leave it per minute (percent).
    #[arg(long, env = "CHURN_PERCENT_PER_MINUTE", default_value_t = 10.0, value_parser = percent)]
    pub churn_percent_per_minute: f64,
    /// Churn: the share of leavers who come back within the queue's leave grace (percent);
    /// the others leave for good, and a new player joins in their stead.
    #[arg(long, default_value_t = 50.0, value_parser = percent)]
    pub come_back_percent: f64,
    /// Churn: the queue's `leave_grace_seconds`; a player who comes back does so well within it.
    #[arg(long, default_value_t = 5.0)]
    pub leave_grace_seconds: f64,
    /// Rollout: the server profile whose versions are rolled (`game-server`: the built-in one).
    #[arg(long, default_value = "game-server")]
    pub rollout_profile: String,
    /// Rollout: the version rolled away from (its weight goes to 0, then it drains).
    #[arg(long, default_value = "old")]
    pub rollout_from: String,
    /// Rollout: the version rolled to (its weight goes to 100).
    #[arg(long, default_value = "new")]
    pub rollout_to: String,
    /// Rollout: the operator token the weight change and the drain are made with.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub credentials: CredentialArgs,
}

fn percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a percentage from 0 to 100, got {text:?}")),
    }
}

/// How a ranked ticket is joined: by the service, once its leader's client starts; its other
/// members wait for that join, then follow their own status.
struct Party {
    request: JoinRequest,
    members: Vec<String>,
    joined: watch::Sender<PartyJoin>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PartyJoin {
    Pending,
    Joined,
    Failed,
}

struct Shared {
    api: HttpClient,
    args: SwarmArgs,
    /// Ranked: each player's ticket.
    parties: HashMap<String, Arc<Party>>,
    /// The service's `Authorization`, for ranked joins.
    service_auth: Option<String>,
    done: AtomicUsize,
    matched: AtomicUsize,
    running: AtomicUsize,
    failed: AtomicUsize,
    /// Players started so far (the churn scenario starts one for each who leaves for good).
    started: AtomicUsize,
    /// Where a player who left for good asks for its replacement.
    replacements: tokio::sync::mpsc::UnboundedSender<String>,
    /// Replacements asked for and not yet started.
    pending_replacements: AtomicUsize,
    prefix: String,
}

/// An operator's rollout during the swarm, as it went.
pub struct RolloutReport {
    pub from: String,
    pub to: String,
    /// From the drain to the old version's last session ending (`drained_at`).
    pub drain_to_drained: Option<Duration>,
}

/// Rolls `--rollout-from` out for `--rollout-to`: the weights 0 and 100, then a drain of the
/// old version; waits (up to the client time limit) for the old version's last session to end.
async fn roll_out(shared: Arc<Shared>) -> anyhow::Result<RolloutReport> {
    let args = &shared.args;
    let auth = format!("Bearer {}", args.admin_token.as_deref().unwrap_or_default());
    let profile = &args.rollout_profile;
    let weights = serde_json::json!({"weights": {args.rollout_from.clone(): 0, args.rollout_to.clone(): 100}});
    let (status, body) = shared
        .api
        .send(
            Method::PUT,
            &format!("/operator/versions/{profile}"),
            Some(serde_json::to_vec(&weights)?),
            Some(&auth),
        )
        .await?;
    anyhow::ensure!(
        status.is_success(),
        "setting the weights: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let drain = format!("/operator/versions/{profile}/{}/drain", args.rollout_from);
    let (status, body) = shared
        .api
        .send(Method::POST, &drain, Some(b"{}".to_vec()), Some(&auth))
        .await?;
    anyhow::ensure!(
        status.is_success(),
        "draining: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let drained = Instant::now();
    eprintln!(
        "rollout: {profile} weights {} 0, {} 100; {} draining",
        args.rollout_from, args.rollout_to, args.rollout_from
    );
    let limit = Duration::from_secs_f64(args.client_timeout.unwrap_or(180.0 + args.match_duration));
    while drained.elapsed() < limit {
        let (status, body) = shared
            .api
            .send(Method::GET, "/operator/versions", None, Some(&auth))
            .await?;
        if status.is_success() {
            let list: serde_json::Value = serde_json::from_slice(&body)?;
            let done = list["profiles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["profile"] == profile.as_str())
                .flat_map(|p| p["versions"].as_array().cloned().unwrap_or_default())
                .any(|v| v["name"] == args.rollout_from.as_str() && v["drained_at"].is_string());
            if done {
                return Ok(RolloutReport {
                    from: args.rollout_from.clone(),
                    to: args.rollout_to.clone(),
                    drain_to_drained: Some(drained.elapsed()),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(RolloutReport {
        from: args.rollout_from.clone(),
        to: args.rollout_to.clone(),
        drain_to_drained: None,
    })
}

/// Runs the swarm to the end and returns its report.
pub async fn run(args: SwarmArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.clients > 0, "CLIENTS must be at least 1");
    anyhow::ensure!(args.match_duration > 0.0, "MATCH_DURATION must be > 0");
    let prefix = args.id_prefix.clone().unwrap_or_else(|| crate::run_prefix("swarm"));
    let api = HttpClient::new(
        &format!("{}/api", args.target_url.trim_end_matches('/')),
        Duration::from_secs(40),
    );
    let service_auth = args
        .credentials
        .service_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}"));
    let (players, parties, join_order) = match args.scenario {
        Scenario::Fifo | Scenario::Churn | Scenario::Rollout => (
            (0..args.clients).map(|i| format!("{prefix}-{i}")).collect(),
            HashMap::new(),
            None,
        ),
        Scenario::Ranked => {
            anyhow::ensure!(
                service_auth.is_some(),
                "the ranked scenario joins as the studio's service: set SERVICE_TOKEN"
            );
            let seed = args.seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
            let mut tickets = ranked(&prefix, args.clients, seed);
            if !args.probe_regions.is_empty() {
                let measured = measure_regions(&args.probe_regions).await?;
                eprintln!(
                    "latency probe: {}",
                    measured
                        .iter()
                        .map(|(r, ms)| ms.map_or_else(|| format!("{r} no answer"), |ms| format!("{r} {ms:.2} ms")))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                crate::scenario::add_measured(&mut tickets, &measured);
            }
            let join_order = join_order_quality(&tickets, args.session_size);
            let mut players = Vec::with_capacity(args.clients);
            let mut parties = HashMap::new();
            for ticket in &tickets {
                let members: Vec<String> = ticket.members.iter().map(|m| m.player.clone()).collect();
                let party = Arc::new(Party {
                    request: ticket.join_request(),
                    members: members.clone(),
                    joined: watch::channel(PartyJoin::Pending).0,
                });
                for m in members {
                    parties.insert(m.clone(), party.clone());
                    players.push(m);
                }
            }
            (players, parties, Some(join_order))
        }
    };
    let (replacements, mut replace) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        api,
        parties,
        service_auth,
        args: args.clone(),
        done: AtomicUsize::new(0),
        matched: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        started: AtomicUsize::new(args.clients),
        replacements,
        pending_replacements: AtomicUsize::new(0),
        prefix: prefix.clone(),
    });
    let started = Instant::now();
    let cpu = crate::host_cpu::Sampler::start(CPU_SAMPLE_EVERY);
    let progress = tokio::spawn(show_progress(shared.clone(), started));
    let mut tasks = tokio::task::JoinSet::new();
    let spawn = |tasks: &mut tokio::task::JoinSet<ClientRecord>, player: String| {
        let shared = shared.clone();
        tasks.spawn(async move {
            let record = play(&shared, player).await;
            if record.outcome != Outcome::Ok {
                shared.failed.fetch_add(1, Ordering::Relaxed);
            }
            shared.done.fetch_add(1, Ordering::Relaxed);
            record
        });
    };
    let mut records = Vec::with_capacity(args.clients);
    let mut rollout: Option<tokio::task::JoinHandle<anyhow::Result<RolloutReport>>> = None;
    if args.scenario == Scenario::Rollout {
        anyhow::ensure!(
            args.admin_token.as_deref().is_some_and(|t| !t.is_empty()),
            "the rollout scenario changes weights and drains as an operator: set ADMIN_TOKEN"
        );
    }
    let half = args.clients / 2;
    for (i, player) in players.into_iter().enumerate() {
        if i == half && args.scenario == Scenario::Rollout {
            rollout = Some(tokio::spawn(roll_out(shared.clone())));
        }
        if args.spawn_rate > 0.0 {
            let due = started + Duration::from_secs_f64(i as f64 / args.spawn_rate);
            tokio::time::sleep_until(due.into()).await;
        }
        spawn(&mut tasks, player);
        while let Ok(player) = replace.try_recv() {
            shared.pending_replacements.fetch_sub(1, Ordering::SeqCst);
            spawn(&mut tasks, player);
        }
    }
    // Players who left for good are replaced as they go, until everyone is done.
    loop {
        tokio::select! {
            biased;
            Some(player) = replace.recv() => {
                shared.pending_replacements.fetch_sub(1, Ordering::SeqCst);
                spawn(&mut tasks, player);
            }
            Some(record) = tasks.join_next() => records.push(record?),
            else => {}
        }
        if tasks.is_empty() && shared.pending_replacements.load(Ordering::SeqCst) == 0 {
            break;
        }
    }
    let rollout = match rollout {
        Some(task) => Some(task.await??),
        None => None,
    };
    progress.abort();
    let wall = started.elapsed();
    let last_running = records.iter().filter_map(|r| r.running_at).max();
    let cpu_busy = cpu
        .map(crate::host_cpu::Sampler::stop)
        .zip(last_running)
        .and_then(|(samples, until)| crate::host_cpu::busy_until(&samples, until));
    if matches!(progress_mode(&args), Mode::Bar) {
        eprintln!();
    }
    let mut report = Report::build(
        &records,
        &Setup {
            wall,
            min_session_size: args.min_session_size,
            max_session_size: args.session_size,
            rosters_change: args.scenario == Scenario::Churn,
            match_duration: args.match_duration,
            scenario: args.scenario,
            join_order,
            cpu_busy,
            max_timed_out_percent: args.max_timed_out_percent,
        },
    );
    if let Some(rollout) = rollout {
        report.set_rollout(&records, rollout);
    }
    Ok(report)
}

#[derive(Clone, Copy)]
enum Mode {
    Bar,
    Lines,
    Silent,
}

fn progress_mode(args: &SwarmArgs) -> Mode {
    match args.progress.as_str() {
        "bar" => Mode::Bar,
        "lines" => Mode::Lines,
        "none" => Mode::Silent,
        _ if std::io::stderr().is_terminal() => Mode::Bar,
        _ => Mode::Lines,
    }
}

async fn show_progress(shared: Arc<Shared>, started: Instant) {
    let mode = progress_mode(&shared.args);
    let every = match mode {
        Mode::Bar => Duration::from_millis(200),
        Mode::Lines => Duration::from_secs(5),
        Mode::Silent => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let total = shared.started.load(Ordering::Relaxed);
        let done = shared.done.load(Ordering::Relaxed);
        let matched = shared.matched.load(Ordering::Relaxed);
        let running = shared.running.load(Ordering::Relaxed);
        let failed = shared.failed.load(Ordering::Relaxed);
        let secs = started.elapsed().as_secs_f64();
        match mode {
            Mode::Bar => eprint!("\r{} ", bar_line(total, matched, running, done, failed, secs)),
            _ => eprintln!(
                "swarm: {secs:.0}s: {done}/{total} done, {matched} matched, {running} in play, {failed} failed"
            ),
        }
    }
}

/// The progress bar: half filled as players are matched, full as they finish, so a long
/// match shows as progress too.
fn bar_line(total: usize, matched: usize, running: usize, done: usize, failed: usize, secs: f64) -> String {
    const WIDTH: usize = 30;
    let steps = (matched.min(total) + done.min(total)) * WIDTH / (2 * total.max(1));
    format!(
        "[{}{}] {matched}/{total} matched · {running} in play · {done}/{total} done · {failed} failed · {secs:.0}s",
        "#".repeat(steps),
        "-".repeat(WIDTH - steps)
    )
}

fn connect_addr(args: &SwarmArgs, matched: &MatchResponse) -> String {
    match &args.connect_override {
        Some(o) if o.contains(':') => o.clone(),
        Some(host) => format!("{host}:{}", matched.connect_port),
        None => format!("{}:{}", matched.connect_host, matched.connect_port),
    }
}

/// One player's life; never panics, always returns a record.
async fn play(shared: &Shared, player: String) -> ClientRecord {
    let mut record = ClientRecord::new(player);
    if matches!(shared.args.scenario, Scenario::Churn | Scenario::Rollout) {
        record.queue = CHURN_QUEUE.to_owned();
    }
    if let Some(party) = shared.parties.get(&record.player) {
        record.queue = RANKED_QUEUE.to_owned();
        record.party = party.members.clone();
    }
    let limit = shared.args.client_timeout.unwrap_or(180.0 + shared.args.match_duration);
    // One token for the player's whole life, held before "play" as a game client holds the
    // one its identity service issued: minting it is not part of the time to play.
    let auth = shared
        .args
        .credentials
        .authorization(&record.player, Duration::from_secs(3600));
    let life = Instant::now();
    record.started_ms = matchmaking_core::store::now_ms();
    let outcome = tokio::time::timeout(
        Duration::from_secs_f64(limit),
        lifecycle(shared, &mut record, auth.as_deref(), life),
    )
    .await;
    record.outcome = match outcome {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(outcome)) => outcome,
        Err(_) => {
            // A player that gives up before it is matched leaves the queue, as a game client
            // should: its ticket would otherwise be matched later into a session it never
            // joins, which then waits for it.
            if record.join_to_matched.is_none() {
                let path = format!("/match/join/{}", record.player);
                let leave = shared.api.send(Method::DELETE, &path, None, auth.as_deref());
                let _ = tokio::time::timeout(LEAVE_TIMEOUT, leave).await;
            }
            Outcome::Timeout
        }
    };
    record.life = Some(life.elapsed());
    record
}

/// Each region of `regions` (`name=host:port`) with its proxy's median probe round trip in ms,
/// `None` when it did not answer.
async fn measure_regions(regions: &[String]) -> anyhow::Result<Vec<(String, Option<f64>)>> {
    let mut out = Vec::new();
    for region in regions {
        let (name, addr) = crate::probe::parse_region(region)?;
        let trip = crate::probe::measure(addr, crate::probe::Transport::Udp, 5, Duration::from_secs(1)).await;
        out.push((name, trip.map(|d| d.as_secs_f64() * 1000.0)));
    }
    Ok(out)
}

/// How long a player that gives up waits for its leave to be answered.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often one client may start over: re-join after the matchmaker forgot it, or after its
/// match was cut short by a server that the matchmaker then says is gone.
const MAX_REJOINS: u32 = 5;
/// How often one client waits again after the matchmaker requeued it (its session's region
/// lost): regions lost back to back may requeue a player many times within its time limit,
/// which bounds it anyway.
const MAX_REQUEUES: u32 = 50;

/// Whether an API failure is worth retrying (the stack is restarting or failing over, or
/// throttling): a game client backs off and tries again.
fn transient(error: &HttpError) -> bool {
    match error {
        HttpError::Timeout | HttpError::Transport(_) => true,
        HttpError::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
        HttpError::Body(_) => false,
    }
}

/// An API call, retried with backoff (100 ms doubling to 2 s) while it fails transiently;
/// the client's overall time limit bounds it.
async fn call(
    shared: &Shared,
    record: &mut ClientRecord,
    method: Method,
    path: &str,
    body: Option<&JoinRequest>,
    auth: Option<&str>,
) -> Result<MatchResponse, HttpError> {
    let mut pause = Duration::from_millis(100);
    loop {
        match shared.api.json(method.clone(), path, body, auth).await {
            Err(e) if transient(&e) => {
                tracing::debug!(player = %record.player, %method, path, error = %e, "retrying an API call after a transient failure");
                record.retries += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            other => return other,
        }
    }
}

async fn lifecycle(
    shared: &Shared,
    record: &mut ClientRecord,
    auth: Option<&str>,
    life: Instant,
) -> Result<(), Outcome> {
    let mut requeued = false;
    loop {
        match attempt(shared, record, auth, life, requeued).await {
            Err(Attempt::StartOver) if record.rejoins < MAX_REJOINS => {
                record.rejoins += 1;
                record.session_id = None;
                requeued = false;
            }
            // Its session failed and the matchmaker put its ticket back at the head of the
            // queue (its server's region was lost): it waits for its next session.
            Err(Attempt::Requeued) if record.requeues < MAX_REQUEUES => {
                record.requeues += 1;
                record.session_id = None;
                requeued = true;
            }
            Err(Attempt::Requeued) => return Err(Outcome::NotMatched("requeued too often".into())),
            Err(Attempt::StartOver) => return Err(Outcome::NotMatched("unknown".into())),
            Err(Attempt::Failed(outcome)) => return Err(outcome),
            Ok(()) => return Ok(()),
        }
    }
}

/// Why one attempt stopped.
enum Attempt {
    /// The matchmaker no longer knows the player: join again.
    StartOver,
    /// Its match broke off and the matchmaker queued its ticket again: wait for the next one.
    Requeued,
    Failed(Outcome),
}

impl From<Outcome> for Attempt {
    fn from(outcome: Outcome) -> Self {
        Attempt::Failed(outcome)
    }
}

/// Whether a game connection's failure may pass: the proxy was not reachable, or could not
/// look the session up or reach its server.
fn transient_refusal(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::ConnectFailed(_) => true,
        Outcome::Refused(code) => code == "server_unreachable",
        _ => false,
    }
}

/// Connects to the game, sends the ticket and plays the match. In the churn scenario a player
/// may leave mid-match: it comes back with the same ticket within the queue's leave grace, or
/// leaves for good (and a new player is started in its stead).
async fn connect_and_play(
    shared: &Shared,
    record: &mut ClientRecord,
    status: &MatchResponse,
    ticket: &str,
    (life, matched_at): (Instant, Instant),
) -> Result<(), Outcome> {
    let mut running_at = None;
    loop {
        let mut game = match connect(shared, record, status, ticket).await {
            // Back after the match ended while it was away: it played its part.
            Err(Outcome::Refused(code)) if record.came_back > 0 && code == "session_over" => return Ok(()),
            other => other?,
        };
        if record.matched_to_connected.is_none() {
            record.matched_to_connected = Some(matched_at.elapsed());
        }
        let connected_at = Instant::now();
        shared.running.fetch_add(1, Ordering::Relaxed);
        let played = play_match(shared, record, &mut game, (life, connected_at), &mut running_at).await;
        shared.running.fetch_sub(1, Ordering::Relaxed);
        match played? {
            Played::Finished => return Ok(()),
            Played::Left => {
                drop(game);
                if rand::random_bool(shared.args.come_back_percent / 100.0) {
                    // Back well within the leave grace: the place is still ours.
                    record.came_back += 1;
                    let away = (shared.args.leave_grace_seconds / 3.0).clamp(0.1, 2.0);
                    tokio::time::sleep(Duration::from_secs_f64(away)).await;
                    continue;
                }
                record.left_for_good = true;
                // A new player arrives in its stead about when its place opens (the leave
                // grace later), as players keep arriving in a live game.
                let n = shared.started.fetch_add(1, Ordering::Relaxed);
                shared.pending_replacements.fetch_add(1, Ordering::SeqCst);
                let (tx, player) = (shared.replacements.clone(), format!("{}-{n}", shared.prefix));
                let grace = Duration::from_secs_f64(shared.args.leave_grace_seconds.max(0.0));
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    let _ = tx.send(player);
                });
                return Ok(());
            }
        }
    }
}

/// A game connection of `status`'s session with `ticket`, past its `WELCOME`.
async fn connect(
    shared: &Shared,
    record: &ClientRecord,
    status: &MatchResponse,
    ticket: &str,
) -> Result<Framed<TcpStream, LineCodec>, Outcome> {
    let addr = connect_addr(&shared.args, status);
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|e| Outcome::ConnectFailed(format!("{addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let mut game = Framed::new(stream, LineCodec::new());
    game.get_mut()
        .write_all(format!("JOIN {ticket}\n").as_bytes())
        .await
        .map_err(|e| Outcome::ConnectFailed(e.to_string()))?;
    match next(&mut game).await? {
        ServerReply::Welcome {
            session_id, player_id, ..
        } if session_id == status.session_id && player_id == record.player => Ok(game),
        ServerReply::Error(code) => Err(Outcome::Refused(code.to_string())),
        other => Err(Outcome::Protocol(format!(
            "expected WELCOME for its own session, got {other}"
        ))),
    }
}

/// How a match ended for one player.
enum Played {
    /// It saw `STATE stop`.
    Finished,
    /// It left mid-match (churn).
    Left,
}

/// Joins: the player itself (fifo), waiting in the join until matched as a game client would,
/// or its ticket by the service (ranked): the leader's client has it joined without waiting,
/// the other members wait for that and then ask for their own status; after the matchmaker
/// forgot them, any member has the ticket joined again (idempotent).
async fn join(shared: &Shared, record: &mut ClientRecord, auth: Option<&str>) -> Result<MatchResponse, Outcome> {
    let Some(party) = shared.parties.get(&record.player).cloned() else {
        let mut body = JoinRequest::player(&record.player);
        if matches!(shared.args.scenario, Scenario::Churn | Scenario::Rollout) {
            body.queue = Some(CHURN_QUEUE.to_owned());
        }
        let path = format!("/match/join?wait={LONG_POLL_SECONDS}");
        return call(shared, record, Method::POST, &path, Some(&body), auth)
            .await
            .map_err(|e| Outcome::JoinFailed(e.to_string()));
    };
    if party.members[0] != record.player && record.rejoins == 0 {
        let mut joined = party.joined.subscribe();
        let state = *joined
            .wait_for(|s| *s != PartyJoin::Pending)
            .await
            .map_err(|_| Outcome::JoinFailed("its party was never joined".into()))?;
        if state == PartyJoin::Failed {
            return Err(Outcome::JoinFailed("its party's join failed".into()));
        }
        let path = format!("/match/status?player_id={}", record.player);
        return call(shared, record, Method::GET, &path, None, auth)
            .await
            .map_err(|e| Outcome::StatusFailed(e.to_string()));
    }
    let service = shared.service_auth.clone();
    let joined = call(
        shared,
        record,
        Method::POST,
        "/match/join",
        Some(&party.request),
        service.as_deref(),
    )
    .await;
    party.joined.send_replace(if joined.is_ok() {
        PartyJoin::Joined
    } else {
        PartyJoin::Failed
    });
    joined.map_err(|e| Outcome::JoinFailed(e.to_string()))
}

/// How often this machine's CPU time is read while a swarm runs (its clock ticks are 10 ms).
const CPU_SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// How long one long poll (a join's or a status's) may wait for a match.
const LONG_POLL_SECONDS: u32 = 25;

/// One join (or, `requeued`, the wait of a ticket queued again), wait, connect and match.
async fn attempt(
    shared: &Shared,
    record: &mut ClientRecord,
    auth: Option<&str>,
    life: Instant,
    requeued: bool,
) -> Result<(), Attempt> {
    let status_path = format!("/match/status?player_id={}&wait={LONG_POLL_SECONDS}", record.player);
    let mut status = if requeued {
        call(shared, record, Method::GET, &status_path, None, auth)
            .await
            .map_err(|e| Outcome::StatusFailed(e.to_string()))?
    } else {
        join(shared, record, auth).await?
    };
    while status.status != MatchStatus::Matched {
        match status.status {
            MatchStatus::Queued | MatchStatus::Allocating => {}
            MatchStatus::Unknown => return Err(Attempt::StartOver),
            MatchStatus::TimedOut => return Err(Outcome::TimedOut.into()),
            other => return Err(Outcome::NotMatched(format!("{other:?}").to_lowercase()).into()),
        }
        status = call(shared, record, Method::GET, &status_path, None, auth)
            .await
            .map_err(|e| Outcome::StatusFailed(e.to_string()))?;
    }
    record.join_to_matched = Some(life.elapsed());
    record.session_id = Some(status.session_id.clone());
    record.session_players = status.players.clone();
    record.placement = status.placement.clone();
    record.backfill_since_ms = status.backfill_since_ms;
    shared.matched.fetch_add(1, Ordering::Relaxed);
    let matched_at = Instant::now();
    let ticket = status
        .ticket
        .clone()
        .ok_or_else(|| Outcome::Protocol("matched without a ticket".into()))?;

    // A refusal because the route could not be looked up or the server not reached yet (the
    // stack is restarting or failing over) is retried a few times, as a game client would.
    let mut pause = Duration::from_millis(250);
    let mut tries = 0;
    let mut reconnects = 0;
    loop {
        let played = connect_and_play(shared, record, &status, &ticket, (life, matched_at)).await;
        let outcome = match played {
            Ok(()) => return Ok(()),
            Err(outcome) if tries < 4 && transient_refusal(&outcome) => {
                tracing::debug!(player = %record.player, ?outcome, "retrying a game connection after a transient refusal");
                tries += 1;
                record.retries += 1;
                tokio::time::sleep(pause).await;
                pause *= 2;
                continue;
            }
            Err(outcome) => outcome,
        };
        // Ask the matchmaker, as a game client whose match broke off would: if it no longer
        // knows the player (its state was lost), start over; if it queued the ticket again (or
        // already matched it into another session), wait for that; if the session still runs
        // (a proxy restarted under the connection, or the matchmaker has not yet seen the
        // session's region go down), connect again, for a while; otherwise that is the outcome.
        let path = format!("/match/status?player_id={}", record.player);
        match call(shared, record, Method::GET, &path, None, auth).await {
            Ok(now) if now.status == MatchStatus::Unknown => return Err(Attempt::StartOver),
            Ok(now)
                if matches!(now.status, MatchStatus::Queued | MatchStatus::Allocating)
                    || (now.status == MatchStatus::Matched && now.session_id != status.session_id) =>
            {
                return Err(Attempt::Requeued);
            }
            // Its match played to its end while it was cut off from it (a proxy restarting
            // in its last seconds): the match it was in completed.
            Ok(now)
                if now.status == MatchStatus::Ended
                    && now.session_id == status.session_id
                    && now.end_reason == Some(EndReason::Completed) =>
            {
                record.reconnects += 1;
                return Ok(());
            }
            Ok(now)
                if now.status == MatchStatus::Ended
                    && now.session_id == status.session_id
                    && shared.args.rejoin_after_failure
                    && now.end_reason != Some(EndReason::Completed) =>
            {
                tracing::debug!(player = %record.player, ?outcome, reason = ?now.end_reason, "its session ended under it: joining again");
                return Err(Attempt::StartOver);
            }
            Ok(now)
                if now.status == MatchStatus::Matched
                    && reconnects < MAX_RECONNECTS
                    && !matches!(&outcome, Outcome::Refused(code) if code == "session_over") =>
            {
                tracing::debug!(player = %record.player, ?outcome, "its session still runs: connecting again");
                reconnects += 1;
                record.reconnects += 1;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
            _ => return Err(outcome.into()),
        }
    }
}

/// How often a player whose match broke off while its session still runs connects again.
const MAX_RECONNECTS: u32 = 20;
/// The pause before each of those.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

async fn play_match(
    shared: &Shared,
    record: &mut ClientRecord,
    game: &mut Framed<TcpStream, LineCodec>,
    (life, connected_at): (Instant, Instant),
    running_at: &mut Option<Instant>,
) -> Result<Played, Outcome> {
    game.get_mut()
        .write_all(format!("REQUEST_MATCH {}\n", shared.args.match_duration).as_bytes())
        .await
        .map_err(|e| Outcome::Protocol(e.to_string()))?;
    // Churn: each second in a running match, a player leaves with this chance.
    let leave_chance = if shared.args.scenario == Scenario::Churn {
        shared.args.churn_percent_per_minute / 100.0 / 60.0
    } else {
        0.0
    };
    let mut dice = tokio::time::interval(Duration::from_secs(1));
    dice.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let reply = tokio::select! {
            reply = next(game) => reply?,
            _ = dice.tick(), if leave_chance > 0.0 && running_at.is_some() => {
                if rand::random_bool(leave_chance) {
                    return Ok(Played::Left);
                }
                continue;
            }
        };
        match reply {
            ServerReply::RunningLength(n) => record.running_length = Some(n),
            ServerReply::Team { players, .. } => record.team_told = Some(players),
            ServerReply::State(GameState::Running) if running_at.is_none() => {
                *running_at = Some(Instant::now());
                record.running_at = *running_at;
                record.connected_to_running = Some(connected_at.elapsed());
                record.join_to_running = Some(life.elapsed());
                if let Some(since) = record.backfill_since_ms {
                    // Slot opened → this player running, on the same clock as the backend's.
                    let now = matchmaking_core::store::now_ms();
                    record.backfill_wait = Some(Duration::from_millis(u64::try_from(now - since).unwrap_or(0)));
                }
            }
            ServerReply::State(GameState::Stop) => {
                let Some(running_at) = *running_at else {
                    return Err(Outcome::Protocol("STATE stop before STATE running".into()));
                };
                let lasted = running_at.elapsed();
                record.match_lasted = Some(lasted);
                let length = record.running_length.unwrap_or(0) as f64;
                let lasted = lasted.as_secs_f64();
                // A player placed into a running match (or back after leaving) saw only its end.
                // One that connected again mid-match is not exempt: a short match then is its
                // session ending early (its server stopped), which its status tells.
                let joined_late = record.backfill_since_ms.is_some() || record.came_back > 0;
                if length == 0.0 || (lasted < length - 0.5 && !joined_late) || lasted > length + 3.0 {
                    return Err(Outcome::WrongLength(format!("length {length} s, lasted {lasted:.2} s")));
                }
                return Ok(Played::Finished);
            }
            ServerReply::Error(code) => return Err(Outcome::Refused(code.to_string())),
            _ => {}
        }
    }
}

async fn next(game: &mut Framed<TcpStream, LineCodec>) -> Result<ServerReply, Outcome> {
    match game.next().await {
        None => Err(Outcome::Protocol("connection closed early".into())),
        Some(Err(e)) => Err(Outcome::Protocol(e.to_string())),
        Some(Ok(line)) => {
            let text = String::from_utf8_lossy(&line);
            ServerReply::parse(&text).map_err(|e| Outcome::Protocol(e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bar_line;

    #[test]
    fn the_bar_moves_while_matches_run() {
        let bar = |matched, running, done| bar_line(60, matched, running, done, 0, 1.0);
        assert!(bar(0, 0, 0).starts_with(&format!("[{}]", "-".repeat(30))));
        // Everyone matched and playing: half way, not "0 done" with an empty bar.
        let playing = bar(60, 60, 0);
        assert!(
            playing.starts_with(&format!("[{}{}]", "#".repeat(15), "-".repeat(15))),
            "{playing}"
        );
        assert!(playing.contains("60/60 matched · 60 in play · 0/60 done"), "{playing}");
        assert!(bar(60, 0, 60).starts_with(&format!("[{}]", "#".repeat(30))));
    }
}
