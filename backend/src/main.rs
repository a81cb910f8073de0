//! The `backend` binary: parse config, bind, serve until SIGTERM or ctrl-c, then drain.

use std::process::ExitCode;

use backend::Config;
use clap::{Parser, Subcommand};

/// mimalloc: a request's many short-lived allocations (headers, JSON, Redis replies) cost a
/// quarter of the backend's CPU in glibc malloc under a join burst.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "backend",
    version,
    about = "matchplane's matchmaking control plane",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print, as YAML, exactly the Pod the kubernetes runtime would create for a session, or
    /// with --warm a warm Pod (pod settings from the same environment variables as the server).
    RenderPod {
        #[arg(long, required_unless_present = "warm")]
        session_id: Option<String>,
        /// Comma-separated roster.
        #[arg(long, value_delimiter = ',', required_unless_present = "warm")]
        players: Vec<String>,
        /// A warm Pod (no session; a session claims it and hands it its roster).
        #[arg(long, conflicts_with_all = ["session_id", "players", "teams"])]
        warm: bool,
        /// Teams, separated by `;`, each a comma-separated list of players.
        #[arg(long)]
        teams: Option<String>,
        /// A session of this queue of MATCHMAKING_CONFIG: the Pod of its server profile (with
        /// --warm, a warm Pod of that profile, which needs a `warm_pool`).
        #[arg(long)]
        queue: Option<String>,
        /// With --queue, when its server has versions: the Pod of this version (its image,
        /// labelled with it).
        #[arg(long, requires = "queue")]
        version: Option<String>,
    },
    /// Start one server of a profile of MATCHMAKING_CONFIG as the local runtime would, stand
    /// in for the backend's SDK calls, and say part by part what it meets of the hosting
    /// contract (exit 0 when every required part is met, 1 when one is not, 2 on bad input).
    Conformance {
        /// The profile's name (under `servers:`).
        #[arg(long)]
        server: String,
        /// The roster handed to the server as MATCHPLANE_PLAYERS.
        #[arg(long, value_delimiter = ',', default_value = "conformance-a,conformance-b")]
        players: Vec<String>,
        /// How long it may take to be ready.
        #[arg(long, default_value_t = 30.0)]
        ready_timeout_seconds: f64,
        /// How long it is watched once ready, before SIGTERM.
        #[arg(long, default_value_t = 3.0)]
        observe_seconds: f64,
    },
}

/// `backend conformance`.
fn conformance(config: &Config, server: &str, players: Vec<String>, ready_timeout: f64, observe: f64) -> ExitCode {
    let seconds = |what: &str, value: f64| {
        (value.is_finite() && value > 0.0 && value <= 3600.0)
            .then(|| std::time::Duration::from_secs_f64(value))
            .ok_or_else(|| format!("--{what} must be > 0 and at most 3600"))
    };
    let checked = (|| {
        if players.is_empty() || players.iter().any(|p| !protocol::player::is_valid_player_id(p)) {
            return Err("--players must be ids of 1-128 characters of A-Z a-z 0-9 _ . : -".to_owned());
        }
        let options = backend::conformance::Options {
            players,
            ready_timeout: seconds("ready-timeout-seconds", ready_timeout)?,
            observe: seconds("observe-seconds", observe)?,
        };
        let (profile, path) = config.local_profile(server)?;
        Ok((options, profile, path))
    })();
    let (options, profile, path) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            for line in e.lines() {
                eprintln!("backend: {line}");
            }
            return ExitCode::from(2);
        }
    };
    service::telemetry::init(&config.log, "warn");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(backend::conformance::check(profile, path, &options)) {
        Ok(parts) if backend::conformance::print(server, &parts) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("backend: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `backend render-pod`.
fn render_pod(
    config: &Config,
    session_id: &str,
    players: Vec<String>,
    teams: Option<&str>,
    queue: Option<&str>,
    version: Option<&str>,
) -> ExitCode {
    use protocol::player::is_valid_player_id;
    if !is_valid_player_id(session_id) || players.iter().any(|p| !is_valid_player_id(p)) {
        eprintln!("backend: --session-id and --players must be ids of 1-128 characters of A-Z a-z 0-9 _ . : -");
        return ExitCode::from(2);
    }
    let teams: Vec<Vec<String>> = teams
        .unwrap_or_default()
        .split(';')
        .filter(|t| !t.is_empty())
        .map(|t| t.split(',').map(str::to_owned).collect())
        .collect();
    if teams.iter().flatten().any(|p| !players.contains(p)) {
        eprintln!("backend: every player of --teams must be in --players");
        return ExitCode::from(2);
    }
    let template = match config.runtime.kubernetes.pod_template(&config.runtime.game) {
        Ok(template) => template,
        Err(e) => {
            eprintln!("backend: {e}");
            return ExitCode::from(2);
        }
    };
    let internal = config
        .core
        .backend_internal_url
        .clone()
        .unwrap_or_else(|| "http://matchplane-backend:8081".to_owned());
    // The backend signs a report token per session; without the secret, say where it goes.
    let secret = config.core.ticket_secret.as_deref().map(protocol::TicketSecret::new);
    let placeholder = protocol::TicketSecret::new("unset".to_owned()).expect("a secret that is not empty");
    let mut spec = backend::runtime::ServerSpec::new(
        session_id,
        players,
        teams,
        &internal,
        match &secret {
            Some(Ok(secret)) => secret,
            _ => &placeholder,
        },
        std::time::Duration::from_secs(60),
    );
    if !matches!(secret, Some(Ok(_))) {
        "minted-per-session-with-TICKET_SECRET".clone_into(&mut spec.report_token);
    }
    if let Some(queue) = queue {
        match config.kubernetes_profile(queue, version) {
            Ok(profile) => spec = spec.running(queue, profile),
            Err(e) => {
                eprintln!("backend: {e}");
                return ExitCode::from(2);
            }
        }
    }
    print_pod(&backend::runtime::kubernetes::render_pod(&template, &spec))
}

/// `backend render-pod --warm [--queue Q [--version V]]`.
fn render_warm_pod(config: &Config, queue: Option<&str>, version: Option<&str>) -> ExitCode {
    use backend::runtime::kubernetes::{
        render_warm_builtin_pod, render_warm_pod, render_warm_profile_pod, warm_pod_name,
    };
    let rendered = config
        .runtime
        .kubernetes
        .pod_template(&config.runtime.game)
        .and_then(|template| {
            let name = warm_pod_name();
            let Some(queue) = queue else {
                return Ok(render_warm_pod(&template, &name));
            };
            let profile = config.kubernetes_profile(queue, version)?;
            if profile.builtin {
                return Ok(render_warm_builtin_pod(&template, &profile, &name));
            }
            if profile.warm.is_none() {
                return Err(format!("--warm --queue {queue}: its server profile has no warm_pool"));
            }
            let internal = config
                .core
                .backend_internal_url
                .clone()
                .unwrap_or_else(|| "http://matchplane-backend:8081".to_owned());
            let url = format!("{}/internal/warm/{name}", internal.trim_end_matches('/'));
            Ok(render_warm_profile_pod(
                &template,
                &profile,
                &name,
                &url,
                "minted-per-pod-with-TICKET_SECRET",
            ))
        });
    match rendered {
        Ok(pod) => print_pod(&pod),
        Err(e) => {
            eprintln!("backend: {e}");
            ExitCode::from(2)
        }
    }
}

fn print_pod(pod: &k8s_openapi::api::core::v1::Pod) -> ExitCode {
    match serde_yaml::to_string(pod) {
        Ok(yaml) => {
            print!("{yaml}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backend: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli: Cli = match service::cli::parse("backend") {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let config = cli.config;
    if let Some(Command::Conformance {
        server,
        players,
        ready_timeout_seconds,
        observe_seconds,
    }) = cli.command
    {
        return conformance(&config, &server, players, ready_timeout_seconds, observe_seconds);
    }
    if let Some(Command::RenderPod {
        session_id,
        players,
        teams,
        warm,
        queue,
        version,
    }) = cli.command
    {
        let (queue, version) = (queue.as_deref(), version.as_deref());
        return match session_id {
            Some(session_id) if !warm => render_pod(&config, &session_id, players, teams.as_deref(), queue, version),
            _ => render_warm_pod(&config, queue, version),
        };
    }
    let settings = match config.validate() {
        Ok(settings) => settings,
        Err(e) => {
            // One line per mistake (a queue file may hold several).
            for line in e.lines() {
                eprintln!("backend: {line}");
            }
            return ExitCode::from(2);
        }
    };
    service::telemetry::init(&config.log, "info,sqlx=warn");
    service::cli::serve("backend", config.core.bind, |listener, shutdown| {
        backend::run(listener, settings, shutdown)
    })
}
