//! Typed lines of the game protocol.
//!
//! Parsing is total on the server side: any bytes become a [`ClientCommand`], with
//! [`ClientCommand::Unknown`] for everything the protocol does not name, so a server never has
//! to decide what to do with a parse failure. Replies parse strictly, for clients and tests.

use std::fmt;
use std::str::FromStr;

/// The state of one match. It only ever moves forward: open, running, stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GameState {
    Open,
    Running,
    Stop,
}

impl GameState {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GameState::Open => "open",
            GameState::Running => "running",
            GameState::Stop => "stop",
        }
    }
}

impl fmt::Display for GameState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for GameState {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        [GameState::Open, GameState::Running, GameState::Stop]
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseError(format!("unknown state {s:?}")))
    }
}

/// A line a client sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCommand {
    /// `JOIN <ticket>`: the mandatory first line. An empty ticket is kept, to be refused.
    Join(String),
    /// `GET_STATE`.
    GetState,
    /// `GET_RUNNING_LENGTH`.
    GetRunningLength,
    /// `REQUEST_MATCH <seconds>`, with a finite number; the server checks its range.
    RequestMatch(f64),
    /// `PING [nonce]`.
    Ping(Option<String>),
    /// `QUIT`.
    Quit,
    /// Anything else, including empty lines and invalid UTF-8 (kept lossily, for logs).
    Unknown(String),
}

impl ClientCommand {
    /// Parses one line (without terminator). Never fails: unknown input is `Unknown`.
    pub fn parse(line: &[u8]) -> ClientCommand {
        let Ok(text) = std::str::from_utf8(line) else {
            return ClientCommand::Unknown(String::from_utf8_lossy(line).into_owned());
        };
        let text = text.trim();
        let (word, rest) = match text.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((word, rest)) => (word, rest.trim()),
            None => (text, ""),
        };
        let is = |name: &str| word.eq_ignore_ascii_case(name);
        let single_arg = !rest.is_empty() && !rest.contains(|c: char| c.is_ascii_whitespace());
        if is("JOIN") && (rest.is_empty() || single_arg) {
            ClientCommand::Join(rest.to_owned())
        } else if is("GET_STATE") && rest.is_empty() {
            ClientCommand::GetState
        } else if is("GET_RUNNING_LENGTH") && rest.is_empty() {
            ClientCommand::GetRunningLength
        } else if is("REQUEST_MATCH") && single_arg {
            match rest.parse::<f64>() {
                Ok(seconds) if seconds.is_finite() => ClientCommand::RequestMatch(seconds),
                _ => ClientCommand::Unknown(text.to_owned()),
            }
        } else if is("PING") {
            ClientCommand::Ping((!rest.is_empty()).then(|| rest.to_owned()))
        } else if is("QUIT") && rest.is_empty() {
            ClientCommand::Quit
        } else {
            ClientCommand::Unknown(text.to_owned())
        }
    }
}

impl fmt::Display for ClientCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCommand::Join(ticket) => write!(f, "JOIN {ticket}"),
            ClientCommand::GetState => f.write_str("GET_STATE"),
            ClientCommand::GetRunningLength => f.write_str("GET_RUNNING_LENGTH"),
            ClientCommand::RequestMatch(seconds) => write!(f, "REQUEST_MATCH {seconds}"),
            ClientCommand::Ping(Some(nonce)) => write!(f, "PING {nonce}"),
            ClientCommand::Ping(None) => f.write_str("PING"),
            ClientCommand::Quit => f.write_str("QUIT"),
            ClientCommand::Unknown(text) => f.write_str(text),
        }
    }
}

/// The code of an `ERROR <code>` line. Servers and the proxy send the named ones; a client
/// keeps any other as [`ErrorCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The ticket is malformed, forged, or for another audience.
    BadTicket,
    /// The ticket's `exp` has passed.
    ExpiredTicket,
    /// The ticket is for another session.
    WrongSession,
    /// The ticket's player is not on this session's roster.
    NotInRoster,
    /// The session has ended.
    SessionOver,
    /// A command came before `JOIN`.
    JoinRequired,
    /// A line was over the cap.
    LineTooLong,
    /// The server or proxy is at its connection cap.
    ServerFull,
    /// The proxy knows no live session with this id.
    UnknownSession,
    /// The proxy could not reach the session's server.
    ServerUnreachable,
    /// The proxy could not make sense of the first bytes.
    BadRequest,
    /// The proxy is throttling this source.
    RateLimited,
    /// Any code this version does not know.
    Other(String),
}

const NAMED_CODES: [(ErrorCode, &str); 12] = [
    (ErrorCode::BadTicket, "bad_ticket"),
    (ErrorCode::ExpiredTicket, "expired_ticket"),
    (ErrorCode::WrongSession, "wrong_session"),
    (ErrorCode::NotInRoster, "not_in_roster"),
    (ErrorCode::SessionOver, "session_over"),
    (ErrorCode::JoinRequired, "join_required"),
    (ErrorCode::LineTooLong, "line_too_long"),
    (ErrorCode::ServerFull, "server_full"),
    (ErrorCode::UnknownSession, "unknown_session"),
    (ErrorCode::ServerUnreachable, "server_unreachable"),
    (ErrorCode::BadRequest, "bad_request"),
    (ErrorCode::RateLimited, "rate_limited"),
];

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::Other(code) => code,
            named => NAMED_CODES
                .iter()
                .find(|(code, _)| code == named)
                .map(|(_, text)| *text)
                .unwrap_or("unknown"),
        }
    }

    fn from_wire(text: &str) -> ErrorCode {
        NAMED_CODES
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(code, _)| code.clone())
            .unwrap_or_else(|| ErrorCode::Other(text.to_owned()))
    }
}

impl From<&crate::TicketError> for ErrorCode {
    /// The code a refused ticket is answered with: `expired_ticket` when only its time is up,
    /// `bad_ticket` for everything else (a client cannot fix those by waiting).
    fn from(error: &crate::TicketError) -> ErrorCode {
        match error {
            crate::TicketError::Expired => ErrorCode::ExpiredTicket,
            _ => ErrorCode::BadTicket,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line a server (or the proxy, for `ERROR`) sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerReply {
    /// `WELCOME <session_id> <player_id> <state>`.
    Welcome {
        session_id: String,
        player_id: String,
        state: GameState,
    },
    /// `TEAM <n> <player,player,...>`: right after `WELCOME` in a session with teams, the
    /// player's team (numbered from 1) and everyone on it.
    Team { team: u32, players: Vec<String> },
    /// `JOINED <player_id> [team]`: broadcast to the others when backfill places a player into
    /// the running match (with its team, numbered from 1, in a session with teams).
    Joined { player_id: String, team: Option<u32> },
    /// `RELEASED <player_id>`: broadcast when a player leaves the roster for good (its place
    /// goes to backfill).
    Released(String),
    /// `STATE <state>`, as an answer or a broadcast.
    State(GameState),
    /// `RUNNING_LENGTH <whole seconds>`, 0 while unset.
    RunningLength(u64),
    /// `PONG [nonce]`.
    Pong(Option<String>),
    /// `BYE`, before the server closes after `QUIT`.
    Bye,
    /// `UNKNOWN`, for anything it did not understand.
    Unknown,
    /// `ERROR <code>`; the connection is closed after it.
    Error(ErrorCode),
}

/// A reply line that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply: {0}")]
pub struct ParseError(pub String);

impl ServerReply {
    /// The reply as it goes on the wire, with its `\n`.
    pub fn line(&self) -> String {
        format!("{self}\n")
    }

    /// Parses one reply line (without terminator).
    pub fn parse(line: &str) -> Result<ServerReply, ParseError> {
        let line = line.trim();
        let mut words = line.split_ascii_whitespace();
        let word = words.next().unwrap_or_default();
        let args: Vec<&str> = words.collect();
        let bad = || ParseError(line.chars().take(120).collect());
        let reply = match (word.to_ascii_uppercase().as_str(), args.as_slice()) {
            ("WELCOME", [session, player, state]) => ServerReply::Welcome {
                session_id: (*session).to_owned(),
                player_id: (*player).to_owned(),
                state: state.parse()?,
            },
            ("TEAM", [team, players]) => ServerReply::Team {
                team: team.parse().map_err(|_| bad())?,
                players: players.split(',').map(str::to_owned).collect(),
            },
            ("JOINED", [player]) => ServerReply::Joined {
                player_id: (*player).to_owned(),
                team: None,
            },
            ("JOINED", [player, team]) => ServerReply::Joined {
                player_id: (*player).to_owned(),
                team: Some(team.parse().map_err(|_| bad())?),
            },
            ("RELEASED", [player]) => ServerReply::Released((*player).to_owned()),
            ("STATE", [state]) => ServerReply::State(state.parse()?),
            ("RUNNING_LENGTH", [n]) => ServerReply::RunningLength(n.parse().map_err(|_| bad())?),
            ("PONG", []) => ServerReply::Pong(None),
            ("PONG", _) => ServerReply::Pong(Some(line[4..].trim().to_owned())),
            ("BYE", []) => ServerReply::Bye,
            ("UNKNOWN", []) => ServerReply::Unknown,
            ("ERROR", [code]) => ServerReply::Error(ErrorCode::from_wire(code)),
            _ => return Err(bad()),
        };
        Ok(reply)
    }
}

impl fmt::Display for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerReply::Welcome {
                session_id,
                player_id,
                state,
            } => write!(f, "WELCOME {session_id} {player_id} {state}"),
            ServerReply::Team { team, players } => write!(f, "TEAM {team} {}", players.join(",")),
            ServerReply::Joined { player_id, team: None } => write!(f, "JOINED {player_id}"),
            ServerReply::Joined {
                player_id,
                team: Some(team),
            } => write!(f, "JOINED {player_id} {team}"),
            ServerReply::Released(player) => write!(f, "RELEASED {player}"),
            ServerReply::State(state) => write!(f, "STATE {state}"),
            ServerReply::RunningLength(n) => write!(f, "RUNNING_LENGTH {n}"),
            ServerReply::Pong(Some(nonce)) => write!(f, "PONG {nonce}"),
            ServerReply::Pong(None) => f.write_str("PONG"),
            ServerReply::Bye => f.write_str("BYE"),
            ServerReply::Unknown => f.write_str("UNKNOWN"),
            ServerReply::Error(code) => write!(f, "ERROR {code}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_are_case_insensitive_and_trimmed() {
        assert_eq!(ClientCommand::parse(b"  get_state \r"), ClientCommand::GetState);
        assert_eq!(
            ClientCommand::parse(b"Request_Match 30.0"),
            ClientCommand::RequestMatch(30.0)
        );
        assert_eq!(
            ClientCommand::parse(b"join abc.def.ghi"),
            ClientCommand::Join("abc.def.ghi".into())
        );
        assert_eq!(ClientCommand::parse(b"JOIN"), ClientCommand::Join(String::new()));
        assert_eq!(
            ClientCommand::parse(b"ping  hello world"),
            ClientCommand::Ping(Some("hello world".into()))
        );
    }

    #[test]
    fn malformed_commands_are_unknown() {
        for raw in [
            &b""[..],
            b"REQUEST_MATCH",
            b"REQUEST_MATCH abc",
            b"REQUEST_MATCH inf",
            b"REQUEST_MATCH NaN",
            b"GET_STATE now",
            b"QUIT please",
            b"JOIN a b",
            b"\xff\xfe",
            b"HELLO",
        ] {
            assert!(
                matches!(ClientCommand::parse(raw), ClientCommand::Unknown(_)),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn replies_parse_and_unknown_error_codes_survive() {
        assert_eq!(
            ServerReply::parse("ERROR banana").unwrap(),
            ServerReply::Error(ErrorCode::Other("banana".into()))
        );
        assert_eq!(
            ServerReply::parse("state RUNNING").unwrap(),
            ServerReply::State(GameState::Running)
        );
        assert!(ServerReply::parse("RUNNING_LENGTH -1").is_err());
        assert!(ServerReply::parse("WELCOME a b").is_err());
    }

    #[test]
    fn every_named_error_code_round_trips() {
        for (code, text) in NAMED_CODES {
            assert_eq!(code.as_str(), text);
            assert_eq!(
                ServerReply::parse(&ServerReply::Error(code.clone()).to_string()).unwrap(),
                ServerReply::Error(code)
            );
        }
    }

    fn token() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_.:-]{1,40}"
    }

    fn state() -> impl Strategy<Value = GameState> {
        prop_oneof![Just(GameState::Open), Just(GameState::Running), Just(GameState::Stop)]
    }

    fn command() -> impl Strategy<Value = ClientCommand> {
        prop_oneof![
            token().prop_map(ClientCommand::Join),
            Just(ClientCommand::GetState),
            Just(ClientCommand::GetRunningLength),
            (-1e9f64..1e9).prop_map(ClientCommand::RequestMatch),
            proptest::option::of(token()).prop_map(ClientCommand::Ping),
            Just(ClientCommand::Quit),
        ]
    }

    fn reply() -> impl Strategy<Value = ServerReply> {
        prop_oneof![
            (token(), token(), state()).prop_map(|(session_id, player_id, state)| ServerReply::Welcome {
                session_id,
                player_id,
                state
            }),
            state().prop_map(ServerReply::State),
            (any::<u32>(), prop::collection::vec(token(), 1..4))
                .prop_map(|(team, players)| ServerReply::Team { team, players }),
            (token(), proptest::option::of(any::<u32>()))
                .prop_map(|(player_id, team)| ServerReply::Joined { player_id, team }),
            token().prop_map(ServerReply::Released),
            any::<u64>().prop_map(ServerReply::RunningLength),
            proptest::option::of(token()).prop_map(ServerReply::Pong),
            Just(ServerReply::Bye),
            Just(ServerReply::Unknown),
            prop::sample::select(NAMED_CODES.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>())
                .prop_map(ServerReply::Error),
        ]
    }

    proptest! {
        #[test]
        fn every_command_round_trips(cmd in command()) {
            prop_assert_eq!(ClientCommand::parse(cmd.to_string().as_bytes()), cmd);
        }

        #[test]
        fn every_reply_round_trips(r in reply()) {
            prop_assert_eq!(ServerReply::parse(&r.to_string()).unwrap(), r);
        }

        #[test]
        fn any_bytes_parse_to_some_command(raw in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = ClientCommand::parse(&raw);
        }
    }
}
