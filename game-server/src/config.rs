//! Settings of the game server: every one a flag with an environment variable.
//! [`Config::validate`] turns them into a [`ServerConfig`] or one clear line saying what is
//! wrong, before anything binds.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use protocol::TicketSecret;
use protocol::player::is_valid_player_id;

use crate::game::{MatchSettings, StartPolicy};
use matchplane_sdk::Backend;

/// The raw command line and environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "game-server",
    version,
    about = "matchplane's authoritative TCP game server, one process per session"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "GAME_BIND", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Port to listen on; 0 picks a free one (read it from the LISTENING line).
    #[arg(long, env = "GAME_PORT", default_value_t = protocol::server::DEFAULT_PORT)]
    pub port: u16,
    /// This server's session id; tickets must name it.
    #[arg(long, env = "SESSION_ID")]
    pub session_id: Option<String>,
    /// The roster: comma-separated player ids allowed to join.
    #[arg(long, env = "PLAYERS", value_delimiter = ',')]
    pub players: Vec<String>,
    /// The roster in teams: teams separated by `;`, players by `,` (every player on exactly
    /// one team). Each player is told its team right after `WELCOME`.
    #[arg(long, env = "TEAMS")]
    pub teams: Option<String>,
    /// Shared HMAC secret for tickets.
    #[arg(long, env = "TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: Option<String>,
    /// When a match with a set length starts.
    #[arg(long, env = "START_POLICY", value_enum, default_value = "roster")]
    pub start_policy: StartPolicy,
    /// With the roster policy, start this long after the length was set even if players are missing.
    #[arg(long, env = "START_GRACE_SECONDS", default_value_t = 10.0)]
    pub start_grace_seconds: f64,
    /// End with `no_show` if still open after this long.
    #[arg(long, env = "OPEN_TIMEOUT_SECONDS", default_value_t = protocol::server::DEFAULT_OPEN_TIMEOUT_SECONDS)]
    pub open_timeout_seconds: f64,
    /// End with `abandoned` when no player has been connected for this long while running.
    #[arg(long, env = "EMPTY_GRACE_SECONDS", default_value_t = 5.0)]
    pub empty_grace_seconds: f64,
    /// The longest running length a client may request.
    #[arg(long, env = "MAX_MATCH_SECONDS", default_value_t = protocol::server::DEFAULT_MAX_MATCH_SECONDS)]
    pub max_match_seconds: u64,
    /// Where to POST the result report when the match stops (http only).
    #[arg(long, env = "REPORT_URL")]
    pub report_url: Option<String>,
    /// Bearer token for the result report.
    #[arg(long, env = "REPORT_TOKEN", hide_env_values = true)]
    pub report_token: Option<String>,
    /// Close connections that have not sent a valid JOIN within this long.
    #[arg(long, env = "JOIN_TIMEOUT_SECONDS", default_value_t = 5.0)]
    pub join_timeout_seconds: f64,
    /// Most connections open at once; more are told `ERROR server_full` and closed.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 256)]
    pub max_connections: usize,
    /// Start warm: no session yet; the backend hands one over on the game port, in a token
    /// naming this id (SESSION_ID, PLAYERS, TEAMS and the report target come with it).
    #[arg(long, env = "WARM_SERVER_ID")]
    pub warm_server_id: Option<String>,
    /// Drain as on SIGTERM when standard input closes: a parent process that dies (even by
    /// SIGKILL) takes its servers with it.
    #[arg(long, env = "EXIT_ON_STDIN_CLOSE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub exit_on_stdin_close: bool,
    #[command(flatten)]
    pub log: service::telemetry::LogArgs,
}

/// Validated settings, ready for [`crate::run`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub game: MatchSettings,
    pub secret: TicketSecret,
    pub report: Option<Backend>,
    /// How long the result report is retried before the server exits anyway.
    pub report_budget: Duration,
    pub join_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    /// A warm server's id: it waits for a hand-over before it has a session.
    pub warm: Option<String>,
}

/// Defaults that are not operator settings.
const OUTBOUND_QUEUE: usize = 64;
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const REPORT_BUDGET: Duration = Duration::from_secs(10);

fn seconds(name: &str, value: f64, allow_zero: bool) -> Result<Duration, String> {
    let ok = value.is_finite() && value >= 0.0 && (allow_zero || value > 0.0) && value < 1e9;
    if ok {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!(
            "{name} must be a number of seconds {}, got {value}",
            if allow_zero { ">= 0" } else { "> 0" }
        ))
    }
}

/// `TEAMS`: each team's players; every rostered player on exactly one team, or no teams.
fn teams(setting: &str, roster: &[String]) -> Result<Vec<Vec<String>>, String> {
    if setting.trim().is_empty() {
        return Ok(Vec::new());
    }
    let teams: Vec<Vec<String>> = setting
        .split(';')
        .map(|team| team.split(',').map(|p| p.trim().to_owned()).collect())
        .collect();
    check_teams(teams, roster)
}

/// Every rostered player on exactly one team, or no teams.
fn check_teams(teams: Vec<Vec<String>>, roster: &[String]) -> Result<Vec<Vec<String>>, String> {
    if teams.is_empty() {
        return Ok(teams);
    }
    let mut seen = HashSet::new();
    for player in teams.iter().flatten() {
        if !roster.contains(player) {
            return Err(format!("TEAMS names {player:?}, who is not in PLAYERS"));
        }
        if !seen.insert(player.as_str()) {
            return Err(format!("TEAMS names {player:?} twice"));
        }
    }
    if let Some(missing) = roster.iter().find(|p| !seen.contains(p.as_str())) {
        return Err(format!("TEAMS leaves {missing:?} out: every player must be on a team"));
    }
    Ok(teams)
}

/// A roster: valid ids, none twice, at least one.
fn check_roster(roster: Vec<String>) -> Result<Vec<String>, String> {
    if roster.is_empty() {
        return Err("PLAYERS (--players) is required: a comma-separated list of player ids".into());
    }
    if let Some(bad) = roster.iter().find(|p| !is_valid_player_id(p)) {
        return Err(format!("PLAYERS contains an invalid player id {bad:?}"));
    }
    let mut seen = HashSet::new();
    if let Some(dup) = roster.iter().find(|p| !seen.insert(p.as_str())) {
        return Err(format!("PLAYERS lists {dup:?} twice"));
    }
    Ok(roster)
}

const SESSION_ID_RULE: &str = "1-128 characters of A-Z a-z 0-9 _ . : -";

impl ServerConfig {
    /// A warm server's settings with the session `handover` brings (already verified).
    pub fn with_handover(mut self, handover: &protocol::Handover) -> Result<ServerConfig, String> {
        if !is_valid_player_id(&handover.sid) {
            return Err(format!("the hand-over's session id must be {SESSION_ID_RULE}"));
        }
        let roster = check_roster(handover.players.clone())?;
        self.game.teams = check_teams(handover.teams.clone(), &roster)?;
        self.game.roster = roster;
        self.game.session_id = handover.sid.clone();
        self.report = match (&handover.report_url, &handover.report_token) {
            (Some(url), Some(token)) => Some(Backend::new(url, token).map_err(|e| e.to_string())?),
            (None, None) => None,
            _ => return Err("a hand-over names a report URL without its token, or the reverse".into()),
        };
        self.warm = None;
        Ok(self)
    }
}

impl Config {
    /// Checks every setting; the error is one line naming the setting.
    pub fn validate(&self) -> Result<ServerConfig, String> {
        let warm = self.warm_server_id.clone().filter(|id| !id.is_empty());
        if let Some(id) = &warm {
            if !is_valid_player_id(id) {
                return Err(format!("WARM_SERVER_ID must be {SESSION_ID_RULE}"));
            }
            if self.session_id.is_some()
                || !self.players.is_empty()
                || self.teams.is_some()
                || self.report_url.is_some()
            {
                return Err("WARM_SERVER_ID starts a warm server: SESSION_ID, PLAYERS, TEAMS and REPORT_URL come with its hand-over, not from settings".into());
            }
        }
        let (session_id, roster, teams) = if warm.is_some() {
            (String::new(), Vec::new(), Vec::new())
        } else {
            let session_id = self.session_id.clone().unwrap_or_default();
            if !is_valid_player_id(&session_id) {
                return Err(format!("SESSION_ID (--session-id) is required: {SESSION_ID_RULE}"));
            }
            let roster = check_roster(
                self.players
                    .iter()
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect(),
            )?;
            let teams = teams(self.teams.as_deref().unwrap_or_default(), &roster)?;
            (session_id, roster, teams)
        };
        let secret = TicketSecret::new(self.ticket_secret.clone().unwrap_or_default())
            .map_err(|_| "TICKET_SECRET (--ticket-secret) is required and must not be empty".to_owned())?;
        if self.max_match_seconds == 0 {
            return Err("MAX_MATCH_SECONDS must be at least 1".into());
        }
        if self.max_connections == 0 {
            return Err("MAX_CONNECTIONS must be at least 1".into());
        }
        let report = match (&self.report_url, &self.report_token) {
            (None, _) => None,
            (Some(_), None) => return Err("REPORT_URL is set but REPORT_TOKEN is not".into()),
            (Some(url), Some(token)) => Some(Backend::new(url, token).map_err(|e| e.to_string())?),
        };
        Ok(ServerConfig {
            game: MatchSettings {
                session_id,
                roster,
                teams,
                start_policy: self.start_policy,
                start_grace: seconds("START_GRACE_SECONDS", self.start_grace_seconds, true)?,
                open_timeout: seconds("OPEN_TIMEOUT_SECONDS", self.open_timeout_seconds, false)?,
                empty_grace: seconds("EMPTY_GRACE_SECONDS", self.empty_grace_seconds, true)?,
                max_match_seconds: self.max_match_seconds,
                outbound_queue: OUTBOUND_QUEUE,
            },
            secret,
            report,
            report_budget: REPORT_BUDGET,
            join_timeout: seconds("JOIN_TIMEOUT_SECONDS", self.join_timeout_seconds, false)?,
            write_timeout: WRITE_TIMEOUT,
            max_connections: self.max_connections,
            warm,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        service::cli::parse_without_env::<Config, _, _>(std::iter::once("game-server").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let c = parse(&["--session-id", "s1", "--players", "a,b", "--ticket-secret", "k"])
            .validate()
            .unwrap();
        assert_eq!(c.game.roster, vec!["a", "b"]);
        assert_eq!(c.game.start_grace, Duration::from_secs(10));
        assert_eq!(c.game.open_timeout, Duration::from_secs(60));
        assert_eq!(c.game.empty_grace, Duration::from_secs(5));
        assert_eq!(c.game.max_match_seconds, 86_400);
        assert_eq!(c.game.start_policy, StartPolicy::Roster);
    }

    #[test]
    fn teams_cover_the_roster_exactly() {
        let base = ["--session-id", "s1", "--players", "a,b,c,d", "--ticket-secret", "k"];
        let with = |teams: &str| parse(&[&base[..], &["--teams", teams]].concat()).validate();
        assert_eq!(
            with("a,b;c,d").unwrap().game.teams,
            vec![vec!["a", "b"], vec!["c", "d"]]
        );
        assert!(with("").unwrap().game.teams.is_empty());
        for (bad, why) in [
            ("a,b;c,e", "not in PLAYERS"),
            ("a,b;b,c,d", "twice"),
            ("a,b;c", "leaves \"d\" out"),
        ] {
            let err = with(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn each_bad_setting_is_named() {
        let base = ["--session-id", "s1", "--players", "a,b", "--ticket-secret", "k"];
        let cases: [(&[&str], &str); 7] = [
            (&["--players", "a", "--ticket-secret", "k"], "SESSION_ID"),
            (&["--session-id", "s1", "--ticket-secret", "k"], "PLAYERS"),
            (&["--session-id", "s1", "--players", "a"], "TICKET_SECRET"),
            (
                &["--session-id", "s1", "--players", "a,a", "--ticket-secret", "k"],
                "twice",
            ),
            (
                &["--session-id", "s1", "--players", "a b", "--ticket-secret", "k"],
                "invalid player id",
            ),
            (&[&base[..], &["--report-url", "http://x/y"]].concat(), "REPORT_TOKEN"),
            (
                &[&base[..], &["--open-timeout-seconds", "0"]].concat(),
                "OPEN_TIMEOUT_SECONDS",
            ),
        ];
        for (args, needle) in cases {
            let err = parse(args).validate().unwrap_err();
            assert!(err.contains(needle), "{args:?}: {err}");
            assert!(!err.contains('\n'));
        }
    }
}
