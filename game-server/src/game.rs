//! The authoritative match: one actor task owns all state and every timer.
//!
//! Connections talk to it through a [`GameHandle`]; it answers each client through that
//! client's bounded outbound queue with `try_send`, so a stalled client can never delay a
//! broadcast to the others. A client whose queue is full is dropped: its queue closes, and its
//! connection task writes what is left and hangs up.
//!
//! Time comes only from `tokio::time`, so every grace period is testable with a paused clock.

use std::collections::HashMap;
use std::time::Duration;

use protocol::api::{EndReason, PlayerResult, ResultReport};
use protocol::{ClientCommand, ErrorCode, GameState, ServerReply};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

/// When a match with a set length starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartPolicy {
    /// When every rostered player has joined, or `start_grace` after the length was set.
    Roster,
    /// At the first valid `REQUEST_MATCH`, as the original system did.
    FirstRequest,
}

/// What the match needs to know; validated by the config before it gets here.
#[derive(Debug, Clone)]
pub struct MatchSettings {
    pub session_id: String,
    pub roster: Vec<String>,
    /// The roster in teams (empty without teams): each player learns its team after `WELCOME`.
    pub teams: Vec<Vec<String>>,
    pub start_policy: StartPolicy,
    pub start_grace: Duration,
    pub open_timeout: Duration,
    pub empty_grace: Duration,
    pub max_match_seconds: u64,
    /// How many replies may wait for one client before it is dropped as too slow.
    pub outbound_queue: usize,
}

/// A connection's id, unique for the life of the process.
pub type ClientId = u64;

enum Event {
    Join {
        player: String,
        outbound: mpsc::Sender<ServerReply>,
        reply: oneshot::Sender<Result<ClientId, ErrorCode>>,
    },
    Command {
        client: ClientId,
        command: ClientCommand,
    },
    Leave {
        client: ClientId,
    },
    Roster {
        players: Vec<String>,
        teams: Vec<Vec<String>>,
    },
}

/// The connections' way in to the match. Cheap to clone.
#[derive(Clone)]
pub struct GameHandle {
    events: mpsc::Sender<Event>,
}

impl GameHandle {
    /// Registers a verified player's connection. On success the `WELCOME` (and, while
    /// running, `STATE running` and `RUNNING_LENGTH`) are already queued on `outbound`.
    /// A previous connection of the same player is closed.
    pub async fn join(&self, player: String, outbound: mpsc::Sender<ServerReply>) -> Result<ClientId, ErrorCode> {
        let (reply, answer) = oneshot::channel();
        let event = Event::Join {
            player,
            outbound,
            reply,
        };
        if self.events.send(event).await.is_err() {
            return Err(ErrorCode::SessionOver);
        }
        answer.await.unwrap_or(Err(ErrorCode::SessionOver))
    }

    /// Passes a joined client's command on; the answer arrives on its outbound queue.
    pub async fn command(&self, client: ClientId, command: ClientCommand) {
        let _ = self.events.send(Event::Command { client, command }).await;
    }

    /// Tells the match a client's connection is gone. Idempotent.
    pub async fn leave(&self, client: ClientId) {
        let _ = self.events.send(Event::Leave { client }).await;
    }

    /// The session's roster changed (backfill placed players, or some were released): the
    /// newcomers may join, even while running, and the others hear of them; a released
    /// player's connection is closed and it may not join again.
    pub async fn roster(&self, players: Vec<String>, teams: Vec<Vec<String>>) {
        let _ = self.events.send(Event::Roster { players, teams }).await;
    }
}

/// Maps the match's monotonic clock to wall-clock time for the report, so a paused test clock
/// still yields consistent timestamps.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    origin: Instant,
    wall: OffsetDateTime,
}

impl WallClock {
    fn now() -> Self {
        WallClock {
            origin: Instant::now(),
            wall: OffsetDateTime::now_utc(),
        }
    }

    fn at(&self, instant: Instant) -> OffsetDateTime {
        self.wall + instant.saturating_duration_since(self.origin)
    }
}

#[derive(Default)]
struct Attendance {
    joined_at: Option<Instant>,
    left_at: Option<Instant>,
    client: Option<ClientId>,
}

struct Client {
    player: String,
    outbound: mpsc::Sender<ServerReply>,
}

/// The match state; owned by the actor task.
struct Match {
    settings: MatchSettings,
    clock: WallClock,
    state: GameState,
    opened_at: Instant,
    length: Option<u64>,
    length_set_at: Option<Instant>,
    started_at: Option<Instant>,
    empty_since: Option<Instant>,
    ended: Option<(EndReason, Instant)>,
    attendance: HashMap<String, Attendance>,
    /// Everyone ever on the roster, in order (the report's players).
    ever: Vec<String>,
    clients: HashMap<ClientId, Client>,
    next_client: ClientId,
}

/// Starts the match actor. It ends the match on its own timers, or with `terminated` when
/// `shutdown` is cancelled, and then resolves to the result report.
pub fn spawn(
    settings: MatchSettings,
    shutdown: CancellationToken,
) -> (GameHandle, tokio::task::JoinHandle<ResultReport>) {
    let (events_tx, events) = mpsc::channel(256);
    let now = Instant::now();
    let attendance = settings
        .roster
        .iter()
        .map(|p| (p.clone(), Attendance::default()))
        .collect();
    let ever = settings.roster.clone();
    let game = Match {
        settings,
        clock: WallClock::now(),
        state: GameState::Open,
        opened_at: now,
        length: None,
        length_set_at: None,
        started_at: None,
        empty_since: None,
        ended: None,
        attendance,
        ever,
        clients: HashMap::new(),
        next_client: 1,
    };
    let task = tokio::spawn(game.run(events, shutdown));
    (GameHandle { events: events_tx }, task)
}

impl Match {
    async fn run(mut self, mut events: mpsc::Receiver<Event>, shutdown: CancellationToken) -> ResultReport {
        tracing::info!(session = %self.settings.session_id, roster = self.settings.roster.len(), "match open");
        let mut events_open = true;
        while self.state != GameState::Stop {
            let deadline = self.next_deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => self.end(EndReason::Terminated, Instant::now()),
                event = events.recv(), if events_open => match event {
                    Some(event) => self.handle(event, Instant::now()),
                    None => events_open = false,
                },
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.on_timer(Instant::now());
                }
            }
        }
        self.report()
    }

    fn next_deadline(&self) -> Option<Instant> {
        let s = &self.settings;
        match self.state {
            GameState::Open => {
                let no_show = self.opened_at + s.open_timeout;
                let grace = match (s.start_policy, self.length_set_at) {
                    (StartPolicy::Roster, Some(set)) => Some(set + s.start_grace),
                    _ => None,
                };
                Some(grace.map_or(no_show, |g| g.min(no_show)))
            }
            GameState::Running => {
                let started = self.started_at?;
                let complete = started + Duration::from_secs(self.length.unwrap_or(0));
                let abandon = self.empty_since.map(|since| since + s.empty_grace);
                Some(abandon.map_or(complete, |a| a.min(complete)))
            }
            GameState::Stop => None,
        }
    }

    fn on_timer(&mut self, now: Instant) {
        let s = &self.settings;
        match self.state {
            GameState::Open => {
                let grace_over = s.start_policy == StartPolicy::Roster
                    && self.length_set_at.is_some_and(|set| now >= set + s.start_grace);
                if grace_over {
                    self.start(now);
                } else if now >= self.opened_at + s.open_timeout {
                    self.end(EndReason::NoShow, now);
                }
            }
            GameState::Running => {
                let started = self.started_at.unwrap_or(now);
                if now >= started + Duration::from_secs(self.length.unwrap_or(0)) {
                    self.end(EndReason::Completed, now);
                } else if self.empty_since.is_some_and(|since| now >= since + s.empty_grace) {
                    self.end(EndReason::Abandoned, now);
                }
            }
            GameState::Stop => {}
        }
    }

    fn handle(&mut self, event: Event, now: Instant) {
        match event {
            Event::Join {
                player,
                outbound,
                reply,
            } => {
                let result = self.join(player, outbound, now);
                let _ = reply.send(result);
            }
            Event::Command { client, command } => self.command(client, command, now),
            Event::Leave { client } => self.leave(client, now),
            Event::Roster { players, teams } => self.roster(players, teams, now),
        }
    }

    fn roster(&mut self, players: Vec<String>, teams: Vec<Vec<String>>, now: Instant) {
        if self.state == GameState::Stop {
            return;
        }
        let added: Vec<String> = players
            .iter()
            .filter(|p| !self.settings.roster.contains(p))
            .cloned()
            .collect();
        let removed: Vec<String> = self
            .settings
            .roster
            .iter()
            .filter(|p| !players.contains(p))
            .cloned()
            .collect();
        self.settings.roster = players;
        self.settings.teams = teams;
        for player in &removed {
            let client = self.attendance.get(player).and_then(|seat| seat.client);
            if let Some(client) = client {
                tracing::info!(%player, "player released from the roster; closing its connection");
                self.leave(client, now);
            }
            self.broadcast(ServerReply::Released(player.clone()));
        }
        for player in added {
            self.attendance.entry(player.clone()).or_default();
            if !self.ever.contains(&player) {
                self.ever.push(player.clone());
            }
            let team = self
                .settings
                .teams
                .iter()
                .position(|team| team.contains(&player))
                .map(|i| u32::try_from(i + 1).unwrap_or(u32::MAX));
            tracing::info!(%player, ?team, state = %self.state, "player placed into the match by backfill");
            self.broadcast(ServerReply::Joined {
                player_id: player,
                team,
            });
        }
    }

    fn join(
        &mut self,
        player: String,
        outbound: mpsc::Sender<ServerReply>,
        now: Instant,
    ) -> Result<ClientId, ErrorCode> {
        if self.state == GameState::Stop {
            return Err(ErrorCode::SessionOver);
        }
        if !self.settings.roster.contains(&player) {
            return Err(ErrorCode::NotInRoster);
        }
        let previous = self.attendance.entry(player.clone()).or_default().client;
        if let Some(previous) = previous {
            tracing::info!(%player, "player reconnected; closing the older connection");
            self.clients.remove(&previous);
        }
        let id = self.next_client;
        self.next_client += 1;
        let seat = self.attendance.get_mut(&player).expect("checked above");
        seat.joined_at.get_or_insert(now);
        seat.left_at = None;
        seat.client = Some(id);
        self.clients.insert(
            id,
            Client {
                player: player.clone(),
                outbound,
            },
        );
        self.empty_since = None;
        tracing::info!(%player, client = id, state = %self.state, "player joined");

        let team = self.settings.teams.iter().position(|team| team.contains(&player));
        self.send(
            id,
            ServerReply::Welcome {
                session_id: self.settings.session_id.clone(),
                player_id: player,
                state: self.state,
            },
        );
        if let Some(index) = team {
            self.send(
                id,
                ServerReply::Team {
                    team: u32::try_from(index + 1).unwrap_or(u32::MAX),
                    players: self.settings.teams[index].clone(),
                },
            );
        }
        if self.state == GameState::Running {
            self.send(id, ServerReply::State(GameState::Running));
            self.send(id, ServerReply::RunningLength(self.length.unwrap_or(0)));
        }
        self.maybe_start_full_roster(now);
        Ok(id)
    }

    fn command(&mut self, client: ClientId, command: ClientCommand, now: Instant) {
        if !self.clients.contains_key(&client) {
            return;
        }
        let reply = match command {
            ClientCommand::GetState => ServerReply::State(self.state),
            ClientCommand::GetRunningLength => ServerReply::RunningLength(self.length.unwrap_or(0)),
            ClientCommand::RequestMatch(seconds) => match self.valid_length(seconds) {
                None => ServerReply::Unknown,
                Some(whole) => {
                    if self.state == GameState::Open && self.length.is_none() {
                        self.length = Some(whole);
                        self.length_set_at = Some(now);
                        tracing::info!(seconds = whole, "running length set");
                    }
                    let reply = ServerReply::RunningLength(self.length.unwrap_or(whole));
                    self.send(client, reply);
                    if self.state == GameState::Open && self.settings.start_policy == StartPolicy::FirstRequest {
                        self.start(now);
                    } else {
                        self.maybe_start_full_roster(now);
                    }
                    return;
                }
            },
            ClientCommand::Ping(nonce) => ServerReply::Pong(nonce),
            ClientCommand::Quit => {
                self.send(client, ServerReply::Bye);
                self.leave(client, now);
                return;
            }
            ClientCommand::Join(_) | ClientCommand::Unknown(_) => ServerReply::Unknown,
        };
        self.send(client, reply);
    }

    /// A requested length as whole seconds (rounded up), if `0 < seconds <= max`.
    fn valid_length(&self, seconds: f64) -> Option<u64> {
        let max = self.settings.max_match_seconds;
        (seconds > 0.0 && seconds <= max as f64).then(|| (seconds.ceil() as u64).clamp(1, max))
    }

    fn leave(&mut self, client: ClientId, now: Instant) {
        let Some(gone) = self.clients.remove(&client) else {
            return;
        };
        if let Some(seat) = self.attendance.get_mut(&gone.player)
            && seat.client == Some(client)
        {
            seat.client = None;
            seat.left_at = Some(now);
        }
        tracing::info!(player = %gone.player, client, "player left");
        if self.clients.is_empty() && self.state == GameState::Running {
            self.empty_since = Some(now);
        }
    }

    fn maybe_start_full_roster(&mut self, now: Instant) {
        let everyone_joined = self
            .settings
            .roster
            .iter()
            .all(|p| self.attendance.get(p).is_some_and(|seat| seat.joined_at.is_some()));
        if self.state == GameState::Open
            && self.settings.start_policy == StartPolicy::Roster
            && self.length.is_some()
            && everyone_joined
        {
            self.start(now);
        }
    }

    fn start(&mut self, now: Instant) {
        self.state = GameState::Running;
        self.started_at = Some(now);
        if self.clients.is_empty() {
            self.empty_since = Some(now);
        }
        tracing::info!(
            seconds = self.length.unwrap_or(0),
            players = self.clients.len(),
            "match running"
        );
        self.broadcast(ServerReply::State(GameState::Running));
    }

    fn end(&mut self, reason: EndReason, now: Instant) {
        self.state = GameState::Stop;
        self.ended = Some((reason, now));
        tracing::info!(%reason, "match over");
        self.broadcast(ServerReply::State(GameState::Stop));
        for (id, client) in self.clients.drain() {
            if let Some(seat) = self.attendance.get_mut(&client.player)
                && seat.client == Some(id)
            {
                seat.client = None;
                seat.left_at = Some(now);
            }
        }
    }

    /// Queues a reply for one client; a client whose queue is full or gone is dropped.
    fn send(&mut self, client: ClientId, reply: ServerReply) {
        let Some(target) = self.clients.get(&client) else {
            return;
        };
        if let Err(e) = target.outbound.try_send(reply) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "too far behind",
                mpsc::error::TrySendError::Closed(_) => "gone",
            };
            tracing::warn!(client, why, "dropping client");
            self.leave(client, Instant::now());
        }
    }

    fn broadcast(&mut self, reply: ServerReply) {
        let ids: Vec<ClientId> = self.clients.keys().copied().collect();
        for id in ids {
            self.send(id, reply.clone());
        }
    }

    fn report(&self) -> ResultReport {
        let (reason, ended) = self.ended.unwrap_or((EndReason::Terminated, Instant::now()));
        let players: Vec<PlayerResult> = self
            .ever
            .iter()
            .map(|player| {
                let seat = &self.attendance[player];
                PlayerResult {
                    player_id: player.clone(),
                    joined_at: seat.joined_at.map(|t| self.clock.at(t)),
                    left_at: seat.left_at.map(|t| self.clock.at(t)),
                }
            })
            .collect();
        ResultReport {
            session_id: self.settings.session_id.clone(),
            end_reason: reason,
            requested_seconds: self.length,
            started_at: self.started_at.map(|t| self.clock.at(t)),
            ended_at: self.clock.at(ended),
            players,
        }
    }
}
