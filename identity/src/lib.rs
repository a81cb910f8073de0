//! Who is calling. Three kinds of caller carry a bearer token in `Authorization`:
//!
//! - a **player**: a JWT from the studio's identity service, verified with an HS256 secret or
//!   with the public keys of a JWKS (RS256, ES256, EdDSA); `sub` is the player id;
//! - a **service**: the studio's own backend services, with `SERVICE_TOKEN`;
//! - an **operator**: `ADMIN_TOKEN`.
//!
//! [`Authenticator::caller`] turns a request's `Authorization` header into a [`Caller`]; what
//! each caller may do is the API's to decide. No error message or log line here ever contains
//! a token.

mod error;
mod jwks;
mod player;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use sha2::{Digest, Sha256};

pub use error::TokenError;
pub use player::{PlayerClaims, PlayerVerifier, mint_hs256, mint_hs256_with};

/// Whether player endpoints need a player token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlayerAuthMode {
    /// Player endpoints need a player JWT (or a service or operator token).
    Jwt,
    /// Player endpoints are open, as in the original system: for local trials and its clients.
    None,
}

/// How player tokens are verified: the settings the backend and the proxy share.
#[derive(Debug, Clone, Args)]
pub struct PlayerAuthArgs {
    /// `jwt`: player endpoints need the player's token; `none`: they are open.
    #[arg(long, env = "PLAYER_AUTH", value_enum, default_value = "jwt")]
    pub player_auth: PlayerAuthMode,
    /// HS256 secret shared with the studio's identity service.
    #[arg(long, env = "PLAYER_TOKEN_SECRET", hide_env_values = true)]
    pub player_token_secret: Option<String>,
    /// The identity service's public keys: a JWKS file, or an https:// URL serving one.
    #[arg(long, env = "PLAYER_JWKS")]
    pub player_jwks: Option<String>,
    /// Extra certificate authorities (a PEM file) trusted for an https:// `PLAYER_JWKS`,
    /// beside the system's.
    #[arg(long, env = "PLAYER_JWKS_CA")]
    pub player_jwks_ca: Option<PathBuf>,
    /// Required `iss` of player tokens; unset: not checked.
    #[arg(long, env = "PLAYER_TOKEN_ISSUER")]
    pub player_token_issuer: Option<String>,
    /// Required `aud` of player tokens; unset: tokens must carry no `aud`.
    #[arg(long, env = "PLAYER_TOKEN_AUDIENCE")]
    pub player_token_audience: Option<String>,
}

/// Where player keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// One HS256 secret.
    Secret(Vec<u8>),
    /// A JWKS file, re-read when a token names a key it lacks.
    JwksFile(PathBuf),
    /// A JWKS served over https, cached and refreshed.
    JwksUrl {
        url: String,
        /// Extra trusted CAs (PEM).
        ca: Option<PathBuf>,
    },
}

/// Validated player-token settings.
#[derive(Clone, PartialEq, Eq)]
pub struct PlayerAuthSettings {
    /// `None` with `PLAYER_AUTH=none` and no key configured.
    pub keys: Option<KeySource>,
    pub mode: PlayerAuthMode,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

impl std::fmt::Debug for PlayerAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            None => "none".to_owned(),
            Some(KeySource::Secret(_)) => "HS256 secret".to_owned(),
            Some(KeySource::JwksFile(path)) => format!("JWKS file {}", path.display()),
            Some(KeySource::JwksUrl { url, .. }) => format!("JWKS {url}"),
        };
        f.debug_struct("PlayerAuthSettings")
            .field("mode", &self.mode)
            .field("keys", &keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Shortest `PLAYER_TOKEN_SECRET` accepted: an HS256 key shorter than its hash is guessable.
pub const MIN_PLAYER_SECRET_BYTES: usize = 32;

impl PlayerAuthArgs {
    /// Checks the settings; the error is one line naming the setting.
    pub fn validate(&self) -> Result<PlayerAuthSettings, String> {
        let secret = self.player_token_secret.as_deref().filter(|s| !s.is_empty());
        let jwks = self.player_jwks.as_deref().map(str::trim).filter(|s| !s.is_empty());
        let keys = match (secret, jwks) {
            (Some(_), Some(_)) => {
                return Err("set one of PLAYER_TOKEN_SECRET and PLAYER_JWKS, not both".into());
            }
            (Some(secret), None) => {
                if secret.len() < MIN_PLAYER_SECRET_BYTES {
                    return Err(format!(
                        "PLAYER_TOKEN_SECRET must be at least {MIN_PLAYER_SECRET_BYTES} bytes"
                    ));
                }
                Some(KeySource::Secret(secret.as_bytes().to_vec()))
            }
            (None, Some(jwks)) if jwks.contains("://") => {
                if !jwks.starts_with("https://") || jwks.parse::<hyper::Uri>().is_err() {
                    return Err(format!(
                        "PLAYER_JWKS must be a file path or an https:// URL, got {jwks:?}"
                    ));
                }
                Some(KeySource::JwksUrl {
                    url: jwks.to_owned(),
                    ca: self.player_jwks_ca.clone().filter(|p| !p.as_os_str().is_empty()),
                })
            }
            (None, Some(jwks)) => {
                let path = PathBuf::from(jwks);
                jwks::check_file(&path)?;
                Some(KeySource::JwksFile(path))
            }
            (None, None) => None,
        };
        if self.player_auth == PlayerAuthMode::Jwt && keys.is_none() {
            return Err(
                "PLAYER_AUTH=jwt needs PLAYER_TOKEN_SECRET or PLAYER_JWKS (or PLAYER_AUTH=none for open player endpoints)"
                    .into(),
            );
        }
        let text = |value: &Option<String>| {
            value
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        Ok(PlayerAuthSettings {
            keys,
            mode: self.player_auth,
            issuer: text(&self.player_token_issuer),
            audience: text(&self.player_token_audience),
        })
    }
}

/// A static bearer token (service or operator), compared in constant time: both sides are
/// hashed first, so neither where they differ nor their lengths show in the time taken.
#[derive(Clone)]
pub struct StaticToken([u8; 32]);

impl std::fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticToken(..)")
    }
}

impl StaticToken {
    pub fn new(token: &str) -> StaticToken {
        StaticToken(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `given` is this token.
    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        given.iter().zip(&self.0).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// Who sent a request.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No `Authorization` header.
    Anonymous,
    /// A verified player token.
    Player(PlayerClaims),
    /// `SERVICE_TOKEN`.
    Service,
    /// `ADMIN_TOKEN`.
    Operator,
}

impl Caller {
    /// The kind, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Player(_) => "player",
            Caller::Service => "service",
            Caller::Operator => "operator",
        }
    }
}

/// Why a request's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not `Bearer <token>`.
    #[error("the Authorization header must be `Bearer <token>`")]
    NotBearer,
    /// A token that is none of the known static tokens and no valid player token.
    #[error("{0}")]
    Token(#[from] TokenError),
}

impl AuthError {
    /// True when the token could not be checked at all (the keys are unreachable): the
    /// caller should hear "unavailable", not "unauthorized".
    pub fn keys_unavailable(&self) -> bool {
        matches!(self, AuthError::Token(TokenError::KeysUnavailable))
    }
}

/// Resolves callers from bearer tokens.
#[derive(Debug, Clone)]
pub struct Authenticator {
    mode: PlayerAuthMode,
    players: Option<Arc<PlayerVerifier>>,
    service: Option<StaticToken>,
    operator: Option<StaticToken>,
}

impl Authenticator {
    pub fn new(
        mode: PlayerAuthMode,
        players: Option<Arc<PlayerVerifier>>,
        service: Option<&str>,
        operator: Option<&str>,
    ) -> Authenticator {
        Authenticator {
            mode,
            players,
            service: service.map(StaticToken::new),
            operator: operator.map(StaticToken::new),
        }
    }

    /// Whether player endpoints need a token.
    pub fn mode(&self) -> PlayerAuthMode {
        self.mode
    }

    /// The caller behind `authorization` (the header's value, if any).
    pub async fn caller(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        let Some(value) = authorization else {
            return Ok(Caller::Anonymous);
        };
        let token = bearer_token(value).ok_or(AuthError::NotBearer)?;
        // The static tokens are checked first and both always (no early exit that times
        // which one matched).
        let operator = self.operator.as_ref().is_some_and(|t| t.matches(token));
        let service = self.service.as_ref().is_some_and(|t| t.matches(token));
        if operator {
            return Ok(Caller::Operator);
        }
        if service {
            return Ok(Caller::Service);
        }
        match &self.players {
            Some(verifier) => Ok(Caller::Player(verifier.verify(token).await?)),
            None => Err(AuthError::Token(TokenError::Unknown)),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header value (the scheme in any case).
pub fn bearer_token(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> PlayerAuthArgs {
        #[derive(Debug, clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            auth: PlayerAuthArgs,
        }
        let mut all = vec!["x"];
        all.extend_from_slice(list);
        let matches = <Wrapper as clap::CommandFactory>::command()
            .mut_args(|a| a.env(None))
            .try_get_matches_from(all)
            .unwrap();
        <Wrapper as clap::FromArgMatches>::from_arg_matches(&matches)
            .unwrap()
            .auth
    }

    #[test]
    fn jwt_mode_needs_a_key_and_none_does_not() {
        let err = args(&[]).validate().unwrap_err();
        assert!(
            err.contains("PLAYER_TOKEN_SECRET") && err.contains("PLAYER_JWKS"),
            "{err}"
        );
        assert_eq!(args(&["--player-auth", "none"]).validate().unwrap().keys, None);
        let secret = "s".repeat(32);
        assert!(matches!(
            args(&["--player-token-secret", &secret]).validate().unwrap().keys,
            Some(KeySource::Secret(_))
        ));
        assert!(
            args(&["--player-token-secret", "short"])
                .validate()
                .unwrap_err()
                .contains("32")
        );
        let both = args(&["--player-token-secret", &secret, "--player-jwks", "/x"]).validate();
        assert!(both.unwrap_err().contains("not both"));
    }

    #[test]
    fn a_jwks_is_a_file_or_an_https_url() {
        assert!(matches!(
            args(&["--player-jwks", "https://id.example.com/.well-known/jwks.json"])
                .validate()
                .unwrap()
                .keys,
            Some(KeySource::JwksUrl { .. })
        ));
        let err = args(&["--player-jwks", "/nonexistent/jwks.json"])
            .validate()
            .unwrap_err();
        assert!(err.starts_with("PLAYER_JWKS: /nonexistent/jwks.json: "), "{err}");
        let err = args(&["--player-jwks", "http://id.example.com/jwks"])
            .validate()
            .unwrap_err();
        assert!(err.contains("https://"), "{err}");
    }

    #[test]
    fn static_tokens_match_exactly() {
        let token = StaticToken::new("service-token-0123456789-0123456789");
        assert!(token.matches("service-token-0123456789-0123456789"));
        assert!(!token.matches("service-token-0123456789-012345678"));
        assert!(!token.matches("service-token-0123456789-0123456780"));
        assert!(!token.matches("Service-token-0123456789-0123456789"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "StaticToken(..)");
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(bearer_token(b"Bearer \xff"), None);
    }

    #[tokio::test]
    async fn callers_are_told_apart() {
        let secret = b"player-secret-0123456789-0123456789".to_vec();
        let verifier = PlayerVerifier::start(&PlayerAuthSettings {
            keys: Some(KeySource::Secret(secret.clone())),
            mode: PlayerAuthMode::Jwt,
            issuer: None,
            audience: None,
        })
        .await
        .unwrap();
        let auth = Authenticator::new(
            PlayerAuthMode::Jwt,
            Some(Arc::new(verifier)),
            Some("service-token-0123456789-0123456789"),
            Some("admin-token"),
        );
        let caller = |h: &'static str| {
            let auth = auth.clone();
            async move { auth.caller(Some(h.as_bytes())).await }
        };
        assert!(matches!(auth.caller(None).await, Ok(Caller::Anonymous)));
        assert!(matches!(caller("Bearer admin-token").await, Ok(Caller::Operator)));
        assert!(matches!(
            caller("Bearer service-token-0123456789-0123456789").await,
            Ok(Caller::Service)
        ));
        assert!(matches!(caller("Bearer admin-tokeN").await, Err(AuthError::Token(_))));
        assert_eq!(caller("Token admin-token").await.unwrap_err(), AuthError::NotBearer);
        let token = mint_hs256(&secret, "alice", 60, None, None);
        let header = format!("Bearer {token}");
        match auth.caller(Some(header.as_bytes())).await {
            Ok(Caller::Player(claims)) => assert_eq!(claims.sub, "alice"),
            other => panic!("{other:?}"),
        }
        // With a claim more, which a verified token carries to the rules that read it.
        let extra = serde_json::Map::from_iter([("mmr".to_owned(), serde_json::json!(1650))]);
        let token = mint_hs256_with(&secret, "bob", 60, None, None, extra);
        let header = format!("Bearer {token}");
        match auth.caller(Some(header.as_bytes())).await {
            Ok(Caller::Player(claims)) => {
                assert_eq!(claims.sub, "bob");
                assert_eq!(claims.claims["mmr"], 1650);
            }
            other => panic!("{other:?}"),
        }
    }
}
