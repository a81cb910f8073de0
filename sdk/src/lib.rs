//! The server SDK: what a game server hosted by matchplane may call and read.
//!
//! No server needs it: one that reads nothing and calls nothing is hosted all the same (its
//! profile says when it is ready and how it ends). A server that wants more uses the SDK:
//!
//! - [`Session::from_env`]: its session, roster, teams, queue and ports (`MATCHPLANE_*`);
//! - [`Host::from_env`] and [`Host::session`]: the same for a server that may be started warm
//!   (a profile with `warm_pool`): its ports at once, its session once matchplane hands it one;
//! - [`Backend::ready`]: "ready for players" (profiles with `ready: sdk`);
//! - [`Backend::health`] and [`Backend::keep_healthy`]: "still alive" (profiles with
//!   `health_timeout_seconds` fail a server that goes quiet);
//! - [`read_identity`]: the verified player behind a connection (profiles with
//!   `identity: proxy-v2`), read from the PROXY protocol v2 header the proxy sends first;
//! - [`Backend::report`]: the session's result (profiles with `ends: sdk`), retried;
//! - [`stop_signal`]: matchplane asks the server to stop (SIGTERM; SIGKILL follows after the
//!   profile's `stop_grace_seconds`).
//!
//! Each call is one plain HTTP `POST` with the session's report token, which any language can
//! make; the repository's `docs/servers.md` lists them byte for byte.

mod http;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use protocol::api::{
    BackfillAsk, BackfillReceipt, MatchStatus, Recorded, ReportReceipt, ResultReport, Roster, RosterWait, SignalReceipt,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

pub use http::{BadReportUrl, Endpoint};
pub use protocol::api::{BackfillStatus, EndReason, PlayerResult, Slots};

/// How long one call may take before it is tried again.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a roster long poll waits.
const ROSTER_WAIT: Duration = Duration::from_secs(25);

/// Why a call or a reading failed.
#[derive(Debug, thiserror::Error)]
pub enum SdkError {
    /// A `MATCHPLANE_*` variable is missing or malformed.
    #[error("{0}")]
    Environment(String),
    /// The server was started without a report URL and token: there is no backend to call.
    #[error("no MATCHPLANE_REPORT_URL and MATCHPLANE_REPORT_TOKEN: this server has no backend to call")]
    NoBackend,
    /// The backend refused the call for good (a 4xx other than 408 and 429).
    #[error("the backend refused the {call} call: {status} {body}")]
    Refused {
        call: &'static str,
        status: u16,
        body: String,
    },
    /// The backend could not be reached, or kept failing, within the call's budget.
    #[error("the {call} call did not get through: {why}")]
    Unreachable { call: &'static str, why: String },
}

/// The session a server was started for, as its environment says.
#[derive(Debug, Clone)]
pub struct Session {
    pub session_id: String,
    /// Every rostered player.
    pub players: Vec<String>,
    /// The teams' players, when the queue has teams.
    pub teams: Vec<Vec<String>>,
    /// The queue the session formed in.
    pub queue: String,
    /// The address the server's ports are reached at (the Pod's IP, or 127.0.0.1).
    pub host: Option<String>,
    /// Each declared port by its name (lower case, as the profile spells it).
    pub ports: BTreeMap<String, u16>,
    /// The backend's calls, when the runtime handed over a report URL and token.
    pub backend: Option<Backend>,
}

impl Session {
    /// Reads the session from this process's environment.
    pub fn from_env() -> Result<Session, SdkError> {
        Session::from_vars(std::env::vars())
    }

    /// Reads the session from `vars` (name, value), as [`Session::from_env`] does.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Session, SdkError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let get = |name: &str| vars.get(&format!("MATCHPLANE_{name}")).map(String::as_str);
        let session_id = get("SESSION_ID")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| SdkError::Environment("MATCHPLANE_SESSION_ID is not set".into()))?
            .to_owned();
        let list = |s: &str| -> Vec<String> { s.split(',').filter(|p| !p.is_empty()).map(str::to_owned).collect() };
        let teams = get("TEAMS")
            .filter(|t| !t.is_empty())
            .map(|t| t.split(';').map(list).collect())
            .unwrap_or_default();
        let ports = ports(&vars)?;
        let backend = match (get("REPORT_URL"), get("REPORT_TOKEN")) {
            (Some(url), Some(token)) if !url.is_empty() && !token.is_empty() => Some(Backend::new(url, token)?),
            (None, None) => None,
            _ => {
                return Err(SdkError::Environment(
                    "MATCHPLANE_REPORT_URL and MATCHPLANE_REPORT_TOKEN come together".into(),
                ));
            }
        };
        Ok(Session {
            session_id,
            players: get("PLAYERS").map(list).unwrap_or_default(),
            teams,
            queue: get("QUEUE").unwrap_or_default().to_owned(),
            host: get("HOST").filter(|h| !h.is_empty()).map(str::to_owned),
            ports,
            backend,
        })
    }

    /// The number of declared port `name`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.get(&name.to_ascii_lowercase()).copied()
    }

    /// The backend's calls, or [`SdkError::NoBackend`].
    pub fn backend(&self) -> Result<&Backend, SdkError> {
        self.backend.as_ref().ok_or(SdkError::NoBackend)
    }
}

/// What a server knows as it starts: where to bind, and how it gets its session, from its
/// environment (started for a session), or from matchplane once it is handed one (started
/// warm, with `MATCHPLANE_WARM_URL` and `MATCHPLANE_WARM_TOKEN`).
#[derive(Debug, Clone)]
pub struct Host {
    /// The address the server's ports are reached at (the Pod's IP, or 127.0.0.1).
    pub host: Option<String>,
    /// Each declared port by its name (lower case).
    pub ports: BTreeMap<String, u16>,
    /// The environment, for a server started for its session.
    vars: BTreeMap<String, String>,
    /// Where a warm server polls for its session.
    warm: Option<Endpoint>,
}

/// How long one poll of a warm server waits for its session.
const POLL_SECONDS: u32 = 25;

impl Host {
    /// Reads what is known at start from this process's environment.
    pub fn from_env() -> Result<Host, SdkError> {
        Host::from_vars(std::env::vars())
    }

    /// Reads what is known at start from `vars` (name, value).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Host, SdkError> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let warm = match (vars.get("MATCHPLANE_WARM_URL"), vars.get("MATCHPLANE_WARM_TOKEN")) {
            (Some(url), Some(token)) => Some(Endpoint::from_base(url, token.clone()).map_err(|_| {
                SdkError::Environment(format!(
                    "MATCHPLANE_WARM_URL must look like http://host[:port]/path, got {url:?}"
                ))
            })?),
            (None, None) => None,
            _ => {
                return Err(SdkError::Environment(
                    "MATCHPLANE_WARM_URL and MATCHPLANE_WARM_TOKEN come together".into(),
                ));
            }
        };
        if warm.is_none() && !vars.contains_key("MATCHPLANE_SESSION_ID") {
            return Err(SdkError::Environment(
                "neither MATCHPLANE_SESSION_ID nor MATCHPLANE_WARM_URL is set: this server was not started by matchplane".into(),
            ));
        }
        Ok(Host {
            host: vars.get("MATCHPLANE_HOST").filter(|h| !h.is_empty()).cloned(),
            ports: ports(&vars)?,
            vars,
            warm,
        })
    }

    /// The number of declared port `name`.
    pub fn port(&self, name: &str) -> Option<u16> {
        self.ports.get(&name.to_ascii_lowercase()).copied()
    }

    /// Whether the server was started warm, without a session yet.
    pub fn is_warm(&self) -> bool {
        self.warm.is_some()
    }

    /// The server's session: at once for a server started for it; for a warm server, once
    /// matchplane hands it one (polling as long as that takes, and again after any failure
    /// to reach the backend). `None` once `stop` is cancelled first: a warm server being
    /// stopped without ever having had a session.
    pub async fn session(&self, stop: &CancellationToken) -> Result<Option<Session>, SdkError> {
        let Some(endpoint) = &self.warm else {
            return Session::from_vars(self.vars.clone()).map(Some);
        };
        let call = format!("session?wait={POLL_SECONDS}");
        let limit = Duration::from_secs(u64::from(POLL_SECONDS) + 5);
        loop {
            let answer = tokio::select! {
                answer = http::post(endpoint, &call, b"", limit) => answer,
                () = stop.cancelled() => return Ok(None),
            };
            match answer {
                Ok(answer) if answer.status == 200 => {
                    let handed: protocol::api::WarmSession = receipt("session", &answer)?;
                    return Ok(Some(Session {
                        backend: Some(Backend::new(&handed.report_url, &handed.report_token)?),
                        session_id: handed.session_id,
                        players: handed.players,
                        teams: handed.teams,
                        queue: handed.queue,
                        host: self.host.clone(),
                        ports: self.ports.clone(),
                    }));
                }
                Ok(answer) if answer.status == 204 => continue,
                Ok(answer) if !answer.retryable() => {
                    return Err(SdkError::Refused {
                        call: "session",
                        status: answer.status,
                        body: String::from_utf8_lossy(&answer.body).into_owned(),
                    });
                }
                Ok(answer) => tracing::warn!(status = answer.status, "polling for a session failed; polling again"),
                Err(why) => tracing::warn!(%why, "polling for a session failed; polling again"),
            }
            tokio::select! {
                () = sleep(Duration::from_secs(1)) => {}
                () = stop.cancelled() => return Ok(None),
            }
        }
    }
}

/// Each `MATCHPLANE_PORT_<NAME>` of `vars`, by its lower-case name.
fn ports(vars: &BTreeMap<String, String>) -> Result<BTreeMap<String, u16>, SdkError> {
    let mut ports = BTreeMap::new();
    for (name, value) in vars {
        if let Some(port) = name.strip_prefix("MATCHPLANE_PORT_") {
            let number = value
                .parse::<u16>()
                .map_err(|_| SdkError::Environment(format!("{name} is not a port number: {value:?}")))?;
            ports.insert(port.to_ascii_lowercase(), number);
        }
    }
    Ok(ports)
}

/// The backend's calls for one session, authorized by its report token.
#[derive(Debug, Clone)]
pub struct Backend {
    endpoint: Endpoint,
}

impl Backend {
    /// The calls of the session whose result goes to `report_url` with `token`.
    pub fn new(report_url: &str, token: &str) -> Result<Backend, SdkError> {
        let endpoint = Endpoint::from_report_url(report_url, token.to_owned())
            .map_err(|e| SdkError::Environment(e.to_string()))?;
        Ok(Backend { endpoint })
    }

    /// Where the calls go.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Says the server is ready for players (with `ready: sdk`, players get their tickets only
    /// after this). Retried for up to `budget`. Returns the session's status: `ended` means
    /// it is over already and the server should stop.
    pub async fn ready(&self, budget: Duration) -> Result<MatchStatus, SdkError> {
        let answer = self.call("ready", b"{}", budget).await?;
        Ok(receipt::<SignalReceipt>("ready", &answer)?.status)
    }

    /// Says the server is alive (one try). Returns the session's status, as [`Backend::ready`].
    pub async fn health(&self) -> Result<MatchStatus, SdkError> {
        let answer = self.call("health", b"{}", Duration::ZERO).await?;
        Ok(receipt::<SignalReceipt>("health", &answer)?.status)
    }

    /// Calls [`Backend::health`] every `period` until `stop` is cancelled or the session has
    /// ended (then `stop` is cancelled, so the server learns its session is over). Failed
    /// calls are logged and tried again next period.
    pub fn keep_healthy(&self, period: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let backend = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                match backend.health().await {
                    Ok(MatchStatus::Ended) => {
                        tracing::info!("the backend says the session has ended; stopping");
                        stop.cancel();
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "health call failed"),
                }
            }
        })
    }

    /// Reports the session's result, retried with backoff for up to `budget`. Returns whether
    /// it ended the session (or found it ended already, adding attendance).
    pub async fn report(&self, report: &ResultReport, budget: Duration) -> Result<Recorded, SdkError> {
        let body = serde_json::to_vec(report).expect("reports always serialize");
        let answer = self.call("result", &body, budget).await?;
        Ok(receipt::<ReportReceipt>("result", &answer)?.recorded)
    }

    /// Asks for players: the session's open slots from now on (a number, or one per team; 0
    /// withdraws the request), after releasing `release` from the roster (players who left for
    /// good). Retried for up to `budget`. The slots in force are capped at the room the roster
    /// leaves; the answer says what they are.
    pub async fn backfill(
        &self,
        slots: Slots,
        release: Vec<String>,
        budget: Duration,
    ) -> Result<BackfillReceipt, SdkError> {
        let body = serde_json::to_vec(&BackfillAsk { slots, release }).expect("asks serialize");
        let answer = self.call("backfill", &body, budget).await?;
        receipt("backfill", &answer)
    }

    /// The roster once its version is past `after` (players placed by backfill, or released),
    /// or the session is over, or `wait` has passed (at most 30 s). One try.
    pub async fn roster(&self, after: u64, wait: Duration) -> Result<Roster, SdkError> {
        let ask = RosterWait {
            after,
            wait: Some(wait.min(ROSTER_WAIT).as_secs_f64()),
        };
        let body = serde_json::to_vec(&ask).expect("waits serialize");
        let limit = wait.min(ROSTER_WAIT) + CALL_TIMEOUT;
        match http::post(&self.endpoint, "roster", &body, limit).await {
            Ok(answer) if (200..300).contains(&answer.status) => receipt("roster", &answer),
            Ok(answer) if answer.retryable() => Err(SdkError::Unreachable {
                call: "roster",
                why: format!("status {}", answer.status),
            }),
            Ok(answer) => Err(SdkError::Refused {
                call: "roster",
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body).into_owned(),
            }),
            Err(why) => Err(SdkError::Unreachable { call: "roster", why }),
        }
    }

    /// Follows the roster until `stop` is cancelled or the session is over: every change
    /// (players placed by backfill, or released) arrives on the returned channel, newest
    /// version last. Failed calls are logged and tried again a second later.
    pub fn watch_roster(&self, stop: CancellationToken) -> tokio::sync::mpsc::Receiver<Roster> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let backend = self.clone();
        tokio::spawn(async move {
            let mut version = 0;
            loop {
                let answer = tokio::select! {
                    answer = backend.roster(version, ROSTER_WAIT) => answer,
                    () = stop.cancelled() => return,
                };
                match answer {
                    Ok(roster) => {
                        // A session over, or of a queue that never backfills: nothing to follow.
                        let over = roster.status == MatchStatus::Ended || !roster.backfills;
                        if roster.version > version {
                            version = roster.version;
                            if tx.send(roster).await.is_err() {
                                return;
                            }
                        }
                        if over {
                            return;
                        }
                    }
                    Err(SdkError::Refused { status, .. }) => {
                        // Nothing to follow here (a backend without backfill, or the session
                        // unknown to it): the roster stays as the environment said.
                        tracing::info!(status, "the backend has no roster to follow");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "roster call failed; trying again");
                        tokio::select! {
                            () = sleep(Duration::from_secs(1)) => {}
                            () = stop.cancelled() => return,
                        }
                    }
                }
            }
        });
        rx
    }

    /// Posts `body` to call `name`, trying again with backoff (100 ms doubling to 2 s) while the
    /// answer is missing or retryable and `budget` lasts; a zero budget tries once.
    async fn call(&self, name: &'static str, body: &[u8], budget: Duration) -> Result<http::Answer, SdkError> {
        let deadline = Instant::now() + budget;
        let mut backoff = Duration::from_millis(100);
        for attempt in 1u32.. {
            let left = deadline.saturating_duration_since(Instant::now());
            let why = match http::post(
                &self.endpoint,
                name,
                body,
                left.max(Duration::from_millis(500)).min(CALL_TIMEOUT),
            )
            .await
            {
                Ok(answer) if (200..300).contains(&answer.status) => return Ok(answer),
                Ok(answer) if !answer.retryable() => {
                    return Err(SdkError::Refused {
                        call: name,
                        status: answer.status,
                        body: String::from_utf8_lossy(&answer.body).into_owned(),
                    });
                }
                Ok(answer) => format!("status {}", answer.status),
                Err(why) => why,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(SdkError::Unreachable { call: name, why });
            }
            tracing::warn!(call = name, attempt, %why, "call failed; retrying");
            sleep(backoff.min(left)).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        unreachable!("the loop returns")
    }
}

fn receipt<T: serde::de::DeserializeOwned>(call: &'static str, answer: &http::Answer) -> Result<T, SdkError> {
    serde_json::from_slice(&answer.body).map_err(|e| SdkError::Unreachable {
        call,
        why: format!("the answer does not decode: {e}"),
    })
}

/// The verified player behind one connection of a `proxy-v2` profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Player {
    pub player_id: String,
    pub session_id: String,
    /// The player's own address (not the proxy's).
    pub addr: SocketAddr,
}

/// Why a connection's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Header(#[from] protocol::proxy_header::HeaderError),
    #[error("the header names session {found}, not this server's {expected}")]
    OtherSession { found: String, expected: String },
}

/// The fixed part of a v2 header: signature (12), version and command, family and protocol,
/// and the length of what follows (2).
const FIXED: usize = 16;

/// Reads the PROXY protocol v2 header matchplane's proxy sends first on every connection of
/// a `proxy-v2` profile, and nothing after it: the stream's next byte is the game's own.
/// With `session_id`, a header naming another session is refused. Bound the wait with
/// `tokio::time::timeout`; a connection that does not start with a header is an error.
pub async fn read_identity<S: AsyncRead + Unpin>(
    stream: &mut S,
    session_id: Option<&str>,
) -> Result<Player, IdentityError> {
    let mut header = vec![0u8; FIXED];
    stream.read_exact(&mut header).await?;
    if !header.starts_with(&protocol::proxy_header::SIGNATURE) {
        return Err(protocol::proxy_header::HeaderError::Invalid("no PROXY v2 signature".into()).into());
    }
    let rest = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(FIXED + rest, 0);
    stream.read_exact(&mut header[FIXED..]).await?;
    let identified = protocol::proxy_header::decode(&header)?;
    if let Some(expected) = session_id
        && identified.session_id != expected
    {
        return Err(IdentityError::OtherSession {
            found: identified.session_id,
            expected: expected.to_owned(),
        });
    }
    Ok(Player {
        player_id: identified.player_id,
        session_id: identified.session_id,
        addr: identified.player_addr,
    })
}

/// A token cancelled when matchplane asks the server to stop (SIGTERM, or SIGINT by hand):
/// end the match, report, and exit within the profile's `stop_grace_seconds`. Call it inside
/// a Tokio runtime.
pub fn stop_signal() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let stop = CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = interrupt.recv() => tracing::info!("interrupt: stopping"),
        }
        cancel.cancel();
    });
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_session_is_read_from_the_contracts_variables() {
        let s = Session::from_vars(vars(&[
            ("MATCHPLANE_SESSION_ID", "s1"),
            ("MATCHPLANE_PLAYERS", "a,b,c,d"),
            ("MATCHPLANE_TEAMS", "a,b;c,d"),
            ("MATCHPLANE_QUEUE", "duel"),
            ("MATCHPLANE_HOST", "10.0.0.7"),
            ("MATCHPLANE_PORT_GAME", "7777"),
            ("MATCHPLANE_PORT_QUERY", "7778"),
            ("MATCHPLANE_REPORT_URL", "http://b:8081/internal/sessions/s1/result"),
            ("MATCHPLANE_REPORT_TOKEN", "tok"),
            ("HOME", "/tmp"),
        ]))
        .unwrap();
        assert_eq!(s.players, ["a", "b", "c", "d"]);
        assert_eq!(s.teams, [vec!["a", "b"], vec!["c", "d"]]);
        assert_eq!((s.queue.as_str(), s.host.as_deref()), ("duel", Some("10.0.0.7")));
        assert_eq!(
            (s.port("game"), s.port("QUERY"), s.port("x")),
            (Some(7777), Some(7778), None)
        );
        assert_eq!(
            s.backend().unwrap().endpoint().path("ready"),
            "/internal/sessions/s1/ready"
        );
    }

    #[test]
    fn a_broken_environment_is_named() {
        let cases: [(&[(&str, &str)], &str); 4] = [
            (&[], "MATCHPLANE_SESSION_ID is not set"),
            (
                &[("MATCHPLANE_SESSION_ID", "s"), ("MATCHPLANE_PORT_GAME", "x")],
                "MATCHPLANE_PORT_GAME is not a port number",
            ),
            (
                &[("MATCHPLANE_SESSION_ID", "s"), ("MATCHPLANE_REPORT_TOKEN", "t")],
                "come together",
            ),
            (
                &[
                    ("MATCHPLANE_SESSION_ID", "s"),
                    ("MATCHPLANE_REPORT_URL", "ftp://x"),
                    ("MATCHPLANE_REPORT_TOKEN", "t"),
                ],
                "MATCHPLANE_REPORT_URL must look like",
            ),
        ];
        for (pairs, expected) in cases {
            let error = Session::from_vars(vars(pairs)).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        let bare = Session::from_vars(vars(&[("MATCHPLANE_SESSION_ID", "s")])).unwrap();
        assert!(matches!(bare.backend(), Err(SdkError::NoBackend)));
    }

    #[test]
    fn a_warm_server_knows_its_ports_and_where_to_wait_for_its_session() {
        let host = Host::from_vars(vars(&[
            ("MATCHPLANE_WARM_URL", "http://b:8081/internal/warm/w-1"),
            ("MATCHPLANE_WARM_TOKEN", "tok"),
            ("MATCHPLANE_PORT_GAME", "7777"),
            ("MATCHPLANE_HOST", "10.0.0.7"),
        ]))
        .unwrap();
        assert!(host.is_warm());
        assert_eq!(
            (host.port("game"), host.host.as_deref()),
            (Some(7777), Some("10.0.0.7"))
        );
        let cold = Host::from_vars(vars(&[("MATCHPLANE_SESSION_ID", "s1"), ("MATCHPLANE_PORT_GAME", "1")])).unwrap();
        assert!(!cold.is_warm());
        for (pairs, expected) in [
            (&[][..], "neither MATCHPLANE_SESSION_ID nor MATCHPLANE_WARM_URL"),
            (&[("MATCHPLANE_WARM_URL", "http://b/w")][..], "come together"),
            (
                &[("MATCHPLANE_WARM_URL", "b/w"), ("MATCHPLANE_WARM_TOKEN", "t")][..],
                "MATCHPLANE_WARM_URL must look like",
            ),
        ] {
            let error = Host::from_vars(vars(pairs)).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[tokio::test]
    async fn a_cold_servers_session_is_its_environment() {
        let host = Host::from_vars(vars(&[("MATCHPLANE_SESSION_ID", "s1"), ("MATCHPLANE_PLAYERS", "a,b")])).unwrap();
        let session = host.session(&CancellationToken::new()).await.unwrap().unwrap();
        assert_eq!((session.session_id.as_str(), session.players.len()), ("s1", 2));
    }

    #[tokio::test]
    async fn identity_is_read_from_the_header_and_not_a_byte_more() {
        let player: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let mut bytes = protocol::proxy_header::encode(player, "10.0.0.1:8080".parse().unwrap(), "alice", "s1");
        bytes.extend_from_slice(b"HELLO");
        let mut stream = bytes.as_slice();
        let who = read_identity(&mut stream, Some("s1")).await.unwrap();
        assert_eq!((who.player_id.as_str(), who.addr), ("alice", player));
        assert_eq!(stream, b"HELLO");

        let bytes = protocol::proxy_header::encode(player, player, "alice", "s2");
        let refused = read_identity(&mut bytes.as_slice(), Some("s1")).await.unwrap_err();
        assert!(matches!(refused, IdentityError::OtherSession { .. }), "{refused}");
        let garbage = read_identity(&mut &b"JOIN abc\nmore bytes here"[..], None)
            .await
            .unwrap_err();
        assert!(garbage.to_string().contains("no PROXY v2 signature"), "{garbage}");
        let short = read_identity(&mut &bytes[..20], None).await.unwrap_err();
        assert!(matches!(short, IdentityError::Io(_)), "{short}");
    }
}
