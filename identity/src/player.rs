//! Player tokens: JWTs from the studio's identity service, verified with the configured key.
//! The algorithm is the key's (HS256 for a secret; RS256, ES256 or EdDSA for a JWKS key),
//! never the token header's: a header naming another algorithm is refused before any
//! signature is checked, which rules out `alg: none` and algorithm confusion.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use crate::error::TokenError;
use crate::jwks::JwksCache;
use crate::{KeySource, PlayerAuthSettings};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 10;

/// A verified player token.
#[derive(Debug, Clone)]
pub struct PlayerClaims {
    /// The player id.
    pub sub: String,
    /// Every claim, for rules that read one (a skill claim, say).
    pub claims: Map<String, Value>,
}

enum Keys {
    Secret(DecodingKey),
    Jwks(Arc<JwksCache>),
}

/// Verifies player tokens against the configured key or key set.
pub struct PlayerVerifier {
    keys: Keys,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for PlayerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = match &self.keys {
            Keys::Secret(_) => "HS256 secret",
            Keys::Jwks(_) => "JWKS",
        };
        f.debug_struct("PlayerVerifier").field("keys", &keys).finish()
    }
}

impl PlayerVerifier {
    /// Loads the keys: a JWKS file must load now; a JWKS URL that cannot be reached yet is
    /// retried when tokens arrive. The error is one line naming the setting.
    pub async fn start(settings: &PlayerAuthSettings) -> Result<PlayerVerifier, String> {
        let keys = match &settings.keys {
            None => return Err("no player key is configured".into()),
            Some(KeySource::Secret(secret)) => Keys::Secret(DecodingKey::from_secret(secret)),
            Some(source) => Keys::Jwks(Arc::new(JwksCache::start(source).await?)),
        };
        Ok(PlayerVerifier {
            keys,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
        })
    }

    /// Makes the JWKS re-read at most once per `floor` when tokens name unknown keys
    /// (default: 10 s for a URL, 1 s for a file).
    pub fn with_refresh_floor(self, floor: std::time::Duration) -> PlayerVerifier {
        if let Keys::Jwks(cache) = &self.keys {
            cache.set_refresh_floor(floor);
        }
        self
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// The token's claims, if it is a valid player token.
    pub async fn verify(&self, token: &str) -> Result<PlayerClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => TokenError::Algorithm,
            _ => TokenError::Malformed,
        })?;
        let data = match &self.keys {
            Keys::Secret(key) => {
                if header.alg != Algorithm::HS256 {
                    return Err(TokenError::Algorithm);
                }
                jsonwebtoken::decode::<Map<String, Value>>(token, key, &self.validation(Algorithm::HS256))?
            }
            Keys::Jwks(cache) => {
                let key = cache.key_for(header.kid.as_deref()).await?;
                if header.alg != key.algorithm {
                    return Err(TokenError::Algorithm);
                }
                jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &self.validation(key.algorithm))?
            }
        };
        let claims = data.claims;
        let sub = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => return Err(TokenError::MissingClaim("sub".into())),
        };
        Ok(PlayerClaims { sub, claims })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// An HS256 player token for `player`, valid for `ttl_seconds`: what a studio's identity
/// service would issue, for the load generator, local trials and tests.
pub fn mint_hs256(
    secret: &[u8],
    player: &str,
    ttl_seconds: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> String {
    mint_hs256_with(secret, player, ttl_seconds, issuer, audience, Map::new())
}

/// [`mint_hs256`] with more claims (`mmr`, say, for a queue that reads skill from the token).
/// The registered claims (`sub`, `iat`, `exp`, `iss`, `aud`) are the function's own.
pub fn mint_hs256_with(
    secret: &[u8],
    player: &str,
    ttl_seconds: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
    extra: Map<String, serde_json::Value>,
) -> String {
    let now = unix_now();
    let mut claims = extra;
    claims.insert("sub".into(), player.into());
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), (now + ttl_seconds).into());
    if let Some(issuer) = issuer {
        claims.insert("iss".into(), issuer.into());
    }
    if let Some(audience) = audience {
        claims.insert("aud".into(), audience.into());
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("HS256 signing cannot fail")
}
