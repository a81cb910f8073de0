//! Tickets: compact HS256 JWTs signed with the shared `TICKET_SECRET`.
//!
//! A game ticket names a player (`sub`) and a session (`sid`) for the audience
//! `matchplane-game`; a result report token names only a session, for `matchplane-report`.
//! Verification checks the header's algorithm before anything else, so `alg: none` and
//! algorithm-confusion tokens are refused, and compares signatures in constant time.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Clock skew tolerated between the minting and the verifying machine, in seconds.
pub const LEEWAY_SECONDS: i64 = 10;

/// Default lifetime of a game ticket: 10 minutes.
pub const DEFAULT_TICKET_TTL_SECONDS: i64 = 600;

/// The fixed header of every ticket: `{"alg":"HS256","typ":"JWT"}`.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Who a token is for. A token minted for one audience never passes for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A player's ticket to join a game server.
    Game,
    /// A game server's token to report its session's result to the backend.
    Report,
    /// The backend's hand-over of a session to one warm game server.
    Handover,
    /// A warm server of a profile's token to poll for its session (`sid` is the server's id).
    Warm,
}

impl Audience {
    /// The `aud` claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Audience::Game => "matchplane-game",
            Audience::Report => "matchplane-report",
            Audience::Handover => "matchplane-handover",
            Audience::Warm => "matchplane-warm",
        }
    }
}

/// The claims of a ticket or report token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The player id; absent in report tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The session id.
    pub sid: String,
    /// The audience, see [`Audience`].
    pub aud: String,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Expires at, Unix seconds.
    pub exp: i64,
}

impl Claims {
    /// A player's game ticket for `session`, valid for `ttl_seconds` from `now`.
    pub fn game(player: &str, session: &str, now: i64, ttl_seconds: i64) -> Claims {
        Claims {
            sub: Some(player.to_owned()),
            sid: session.to_owned(),
            aud: Audience::Game.as_str().to_owned(),
            iat: now,
            exp: now + ttl_seconds,
        }
    }

    /// A warm server's token to poll for its session, for server `id`, valid for
    /// `ttl_seconds` from `now`.
    pub fn warm(id: &str, now: i64, ttl_seconds: i64) -> Claims {
        Claims {
            sub: None,
            sid: id.to_owned(),
            aud: Audience::Warm.as_str().to_owned(),
            iat: now,
            exp: now + ttl_seconds,
        }
    }

    /// A result report token for `session`, valid for `ttl_seconds` from `now`.
    pub fn report(session: &str, now: i64, ttl_seconds: i64) -> Claims {
        Claims {
            sub: None,
            sid: session.to_owned(),
            aud: Audience::Report.as_str().to_owned(),
            iat: now,
            exp: now + ttl_seconds,
        }
    }
}

/// Why a token was refused. Each maps to one protocol error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Not three base64url parts of JSON, wrong algorithm, or missing claims.
    #[error("malformed ticket")]
    Malformed,
    /// The signature does not match: forged, or signed with another secret.
    #[error("ticket signature does not verify")]
    BadSignature,
    /// Signed correctly but for another audience.
    #[error("ticket is for another audience")]
    WrongAudience,
    /// Issued in the future, beyond the leeway.
    #[error("ticket issued in the future")]
    NotYetValid,
    /// Past its `exp`, beyond the leeway.
    #[error("ticket expired")]
    Expired,
    /// A game ticket is required but this one names no player.
    #[error("ticket names no player")]
    NoPlayer,
    /// A hand-over for another warm server.
    #[error("hand-over is for another server")]
    WrongServer,
}

/// The shared HMAC key. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct TicketSecret(Vec<u8>);

/// The secret was empty.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TICKET_SECRET must not be empty")]
pub struct EmptySecret;

/// The shortest `TICKET_SECRET` the backend and the proxy take: tickets are HS256 tokens, and
/// a shorter key is guessable offline from one ticket.
pub const MIN_SECRET_BYTES: usize = 32;

impl TicketSecret {
    /// The secret a backend or a proxy signs and checks tickets with, from its setting: at
    /// least [`MIN_SECRET_BYTES`], with the one line that says so otherwise.
    pub fn from_setting(value: Option<&str>) -> Result<Self, String> {
        match value.unwrap_or_default() {
            "" => Err("TICKET_SECRET (--ticket-secret) is required and must not be empty".to_owned()),
            short if short.len() < MIN_SECRET_BYTES => Err(format!(
                "TICKET_SECRET must be at least {MIN_SECRET_BYTES} bytes (tickets are HS256 tokens signed with it), got {}; generate one with `openssl rand -hex 32`",
                short.len()
            )),
            secret => Ok(TicketSecret(secret.as_bytes().to_vec())),
        }
    }

    /// Wraps a secret; an empty one is refused, since it would sign for anyone.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, EmptySecret> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(EmptySecret);
        }
        Ok(TicketSecret(bytes))
    }

    /// The key itself, only for handing it to a child process that verifies tickets too.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self) -> HmacSha256 {
        HmacSha256::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// Signs `claims` into a compact token.
    pub fn mint(&self, claims: &Claims) -> String {
        self.sign(claims)
    }

    /// Signs any claims into a compact token.
    fn sign(&self, claims: &impl Serialize) -> String {
        let payload = serde_json::to_vec(claims).expect("claims always serialize");
        let mut token = String::with_capacity(HEADER_B64.len() + payload.len() * 2 + 48);
        token.push_str(HEADER_B64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let mut mac = self.mac();
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        token
    }

    /// Checks signature, audience and time window (with [`LEEWAY_SECONDS`]) at `now`
    /// (Unix seconds) and returns the claims. A game ticket must name a player.
    pub fn verify(&self, token: &str, audience: Audience, now: i64) -> Result<Claims, TicketError> {
        let claims: Claims = self.open(token)?;
        check_window(&claims.aud, claims.iat, claims.exp, audience, now)?;
        if audience == Audience::Game && claims.sub.as_deref().is_none_or(str::is_empty) {
            return Err(TicketError::NoPlayer);
        }
        Ok(claims)
    }

    /// Signs a hand-over.
    pub fn mint_handover(&self, handover: &Handover) -> String {
        self.sign(handover)
    }

    /// Checks a hand-over's signature, audience, time window, and that it names `server`.
    pub fn verify_handover(&self, token: &str, server: &str, now: i64) -> Result<Handover, TicketError> {
        let handover: Handover = self.open(token)?;
        check_window(&handover.aud, handover.iat, handover.exp, Audience::Handover, now)?;
        if handover.srv != server {
            return Err(TicketError::WrongServer);
        }
        Ok(handover)
    }

    /// The claims of a token whose header and signature check out.
    fn open<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, TicketError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TicketError::Malformed);
        };
        check_header(header)?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TicketError::Malformed)?;
        let mut mac = self.mac();
        mac.update(&token.as_bytes()[..header.len() + 1 + payload.len()]);
        mac.verify_slice(&signature).map_err(|_| TicketError::BadSignature)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TicketError::Malformed)?;
        serde_json::from_slice(&payload).map_err(|_| TicketError::Malformed)
    }
}

/// The audience and time window of a token whose signature checked out.
fn check_window(aud: &str, iat: i64, exp: i64, audience: Audience, now: i64) -> Result<(), TicketError> {
    if aud != audience.as_str() {
        return Err(TicketError::WrongAudience);
    }
    if iat > now + LEEWAY_SECONDS {
        return Err(TicketError::NotYetValid);
    }
    if exp + LEEWAY_SECONDS < now {
        return Err(TicketError::Expired);
    }
    Ok(())
}

/// How long a hand-over is valid: it is used the moment it is minted.
pub const HANDOVER_TTL_SECONDS: i64 = 30;

/// What the backend hands a warm server: its session, and where to report. Signed like a
/// ticket, for the audience `matchplane-handover` and one server (`srv`), so it passes for
/// no other server and as nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The warm server's id (its `WARM_SERVER_ID`).
    pub srv: String,
    /// The session id.
    pub sid: String,
    /// The roster.
    pub players: Vec<String>,
    /// The teams, when the session has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<Vec<String>>,
    /// Where the result report goes, and its bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_token: Option<String>,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

impl Handover {
    /// A hand-over of `session` (with `players`) to server `srv`, valid for
    /// [`HANDOVER_TTL_SECONDS`] from `now`.
    pub fn new(srv: &str, session: &str, players: Vec<String>, now: i64) -> Handover {
        Handover {
            srv: srv.to_owned(),
            sid: session.to_owned(),
            players,
            teams: Vec::new(),
            report_url: None,
            report_token: None,
            aud: Audience::Handover.as_str().to_owned(),
            iat: now,
            exp: now + HANDOVER_TTL_SECONDS,
        }
    }
}

fn check_header(header: &str) -> Result<(), TicketError> {
    if header == HEADER_B64 {
        return Ok(());
    }
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let raw = URL_SAFE_NO_PAD.decode(header).map_err(|_| TicketError::Malformed)?;
    let parsed: Header = serde_json::from_slice(&raw).map_err(|_| TicketError::Malformed)?;
    if parsed.alg == "HS256" {
        Ok(())
    } else {
        Err(TicketError::Malformed)
    }
}

impl fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TicketSecret(<{} bytes>)", self.0.len())
    }
}

/// Seconds since the Unix epoch, from the system clock.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn secret() -> TicketSecret {
        TicketSecret::new("test-secret-with-enough-bytes").unwrap()
    }

    #[test]
    fn valid_ticket_verifies() {
        let token = secret().mint(&Claims::game("alice", "s1", NOW, 600));
        let claims = secret().verify(&token, Audience::Game, NOW + 5).unwrap();
        assert_eq!(claims.sub.as_deref(), Some("alice"));
        assert_eq!(claims.sid, "s1");
    }

    #[test]
    fn forged_signature_is_refused() {
        let token = secret().mint(&Claims::game("alice", "s1", NOW, 600));
        let other = TicketSecret::new("another-secret")
            .unwrap()
            .mint(&Claims::game("alice", "s1", NOW, 600));
        assert_eq!(
            TicketSecret::new("another-secret")
                .unwrap()
                .verify(&token, Audience::Game, NOW),
            Err(TicketError::BadSignature)
        );
        assert_eq!(
            secret().verify(&other, Audience::Game, NOW),
            Err(TicketError::BadSignature)
        );
        // Swap the payload for one naming another player, keep the signature.
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Claims::game("mallory", "s1", NOW, 600)).unwrap());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(
            secret().verify(&forged, Audience::Game, NOW),
            Err(TicketError::BadSignature)
        );
    }

    #[test]
    fn expired_ticket_is_refused_after_leeway() {
        let token = secret().mint(&Claims::game("alice", "s1", NOW, 60));
        assert!(
            secret()
                .verify(&token, Audience::Game, NOW + 60 + LEEWAY_SECONDS)
                .is_ok()
        );
        assert_eq!(
            secret().verify(&token, Audience::Game, NOW + 61 + LEEWAY_SECONDS),
            Err(TicketError::Expired)
        );
    }

    #[test]
    fn future_ticket_is_refused() {
        let token = secret().mint(&Claims::game("alice", "s1", NOW + 3600, 600));
        assert_eq!(
            secret().verify(&token, Audience::Game, NOW),
            Err(TicketError::NotYetValid)
        );
    }

    #[test]
    fn wrong_audience_is_refused_both_ways() {
        let report = secret().mint(&Claims::report("s1", NOW, 600));
        let game = secret().mint(&Claims::game("alice", "s1", NOW, 600));
        assert_eq!(
            secret().verify(&report, Audience::Game, NOW),
            Err(TicketError::WrongAudience)
        );
        assert_eq!(
            secret().verify(&game, Audience::Report, NOW),
            Err(TicketError::WrongAudience)
        );
        assert!(secret().verify(&report, Audience::Report, NOW).is_ok());
    }

    #[test]
    fn alg_none_and_garbage_are_malformed() {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Claims::game("alice", "s1", NOW, 600)).unwrap());
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        for token in [
            format!("{none_header}.{payload}."),
            "garbage".into(),
            "a.b".into(),
            "a.b.c.d".into(),
            String::new(),
            "..".into(),
        ] {
            assert_eq!(
                secret().verify(&token, Audience::Game, NOW),
                Err(TicketError::Malformed),
                "{token}"
            );
        }
    }

    #[test]
    fn game_ticket_without_player_is_refused() {
        let mut claims = Claims::game("", "s1", NOW, 600);
        assert_eq!(
            secret().verify(&secret().mint(&claims), Audience::Game, NOW),
            Err(TicketError::NoPlayer)
        );
        claims.sub = None;
        assert_eq!(
            secret().verify(&secret().mint(&claims), Audience::Game, NOW),
            Err(TicketError::NoPlayer)
        );
    }

    #[test]
    fn empty_secret_is_refused_and_debug_hides_the_key() {
        assert!(TicketSecret::new("").is_err());
        assert!(!format!("{:?}", secret()).contains("test-secret"));
    }
}
