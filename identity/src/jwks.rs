//! A JWKS (a file or an https URL), cached. It is re-read when a token names a key it lacks
//! (at most once per refresh floor, so a flood of made-up key ids costs one read, not one per
//! request) and in the background when older than [`MAX_AGE`]. A failed read keeps the keys
//! already known.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::time::{Instant, timeout};

use crate::KeySource;
use crate::error::TokenError;

/// Keys older than this are re-read in the background.
const MAX_AGE: Duration = Duration::from_secs(300);
/// Longest wait for a JWKS URL.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest JWKS document read.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// One usable public key.
pub(crate) struct JwkKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The usable keys of one JWKS document.
#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<JwkKey>>,
}

/// A JWK's fields, as far as RS256, ES256 and EdDSA need them.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

impl RawJwk {
    /// The key and its one algorithm, or why it is skipped.
    fn usable(self) -> Result<JwkKey, String> {
        if self.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err("not a signing key".into());
        }
        let missing = |name: &str| format!("{} key without {name}", self.kty);
        let (algorithm, key) = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => {
                let (n, e) = (self.n.as_deref(), self.e.as_deref());
                let key =
                    DecodingKey::from_rsa_components(n.ok_or_else(|| missing("n"))?, e.ok_or_else(|| missing("e"))?);
                (Algorithm::RS256, key)
            }
            ("EC", Some("P-256")) => {
                let (x, y) = (self.x.as_deref(), self.y.as_deref());
                let key =
                    DecodingKey::from_ec_components(x.ok_or_else(|| missing("x"))?, y.ok_or_else(|| missing("y"))?);
                (Algorithm::ES256, key)
            }
            ("OKP", Some("Ed25519")) => {
                let key = DecodingKey::from_ed_components(self.x.as_deref().ok_or_else(|| missing("x"))?);
                (Algorithm::EdDSA, key)
            }
            (kty, crv) => return Err(format!("unsupported key type {kty} {}", crv.unwrap_or(""))),
        };
        let key = key.map_err(|e| format!("bad key material: {e}"))?;
        let wanted = match algorithm {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        };
        if let Some(alg) = self.alg.as_deref()
            && alg != wanted
        {
            return Err(format!("algorithm {alg} is not supported (RS256, ES256, EdDSA)"));
        }
        Ok(JwkKey {
            kid: self.kid,
            algorithm,
            key,
        })
    }
}

impl KeySet {
    fn parse(text: &[u8]) -> Result<KeySet, String> {
        let raw: RawJwks = serde_json::from_slice(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for (i, value) in raw.keys.into_iter().enumerate() {
            let usable = serde_json::from_value::<RawJwk>(value)
                .map_err(|e| e.to_string())
                .and_then(RawJwk::usable);
            match usable {
                Ok(key) => keys.push(Arc::new(key)),
                Err(why) => tracing::debug!(key = i, why, "JWKS key skipped"),
            }
        }
        if keys.is_empty() {
            return Err("the JWKS has no usable key (RSA, EC P-256 or Ed25519 signing keys)".into());
        }
        Ok(KeySet { keys })
    }

    /// The key a token's `kid` names; a token without one matches only a set of one key.
    fn find(&self, kid: Option<&str>) -> Option<Arc<JwkKey>> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).cloned(),
            None if self.keys.len() == 1 => self.keys.first().cloned(),
            None => None,
        }
    }
}

/// Reads and checks a JWKS file now, so a missing or broken one stops start-up at once.
pub(crate) fn check_file(path: &Path) -> Result<usize, String> {
    let text = std::fs::read(path).map_err(|e| format!("PLAYER_JWKS: {}: {e}", path.display()))?;
    KeySet::parse(&text)
        .map(|set| set.keys.len())
        .map_err(|e| format!("PLAYER_JWKS: {}: {e}", path.display()))
}

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>;

enum Source {
    File(PathBuf),
    Url { url: hyper::Uri, client: Box<HttpsClient> },
}

struct Refresh {
    /// When the last read began.
    attempted: Option<Instant>,
    /// When keys were last read successfully.
    loaded: Option<Instant>,
}

pub(crate) struct JwksCache {
    source: Source,
    keys: RwLock<Arc<KeySet>>,
    refresh: tokio::sync::Mutex<Refresh>,
    floor: Mutex<Duration>,
    background: AtomicBool,
}

fn https_client(ca: Option<&Path>) -> Result<HttpsClient, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(ca) = ca {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(ca).map_err(|e| format!("PLAYER_JWKS_CA: cannot read {}: {e}", ca.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("PLAYER_JWKS_CA: {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("PLAYER_JWKS_CA: {}: {e}", ca.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("PLAYER_JWKS_CA: {} holds no PEM certificate", ca.display()));
        }
    }
    if roots.is_empty() {
        return Err(
            "PLAYER_JWKS: no trusted certificate authority (install ca-certificates or set PLAYER_JWKS_CA)".into(),
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

impl JwksCache {
    pub(crate) async fn start(source: &KeySource) -> Result<JwksCache, String> {
        let (source, floor) = match source {
            KeySource::JwksFile(path) => (Source::File(path.clone()), Duration::from_secs(1)),
            KeySource::JwksUrl { url, ca } => {
                let url = url.parse().map_err(|e| format!("PLAYER_JWKS: {e}"))?;
                let client = https_client(ca.as_deref())?;
                (
                    Source::Url {
                        url,
                        client: Box::new(client),
                    },
                    Duration::from_secs(10),
                )
            }
            KeySource::Secret(_) => return Err("an HS256 secret is not a JWKS".into()),
        };
        let cache = JwksCache {
            source,
            keys: RwLock::new(Arc::new(KeySet::default())),
            refresh: tokio::sync::Mutex::new(Refresh {
                attempted: None,
                loaded: None,
            }),
            floor: Mutex::new(floor),
            background: AtomicBool::new(false),
        };
        let first = cache.load().await;
        match (&cache.source, first) {
            (_, Ok(set)) => {
                tracing::info!(keys = set.keys.len(), "player keys loaded");
                *cache.keys.write().unwrap() = Arc::new(set);
                *cache.refresh.lock().await = Refresh {
                    attempted: Some(Instant::now()),
                    loaded: Some(Instant::now()),
                };
            }
            // A file is ours to get right: refuse to start.
            (Source::File(path), Err(e)) => return Err(format!("PLAYER_JWKS: {}: {e}", path.display())),
            // The identity service may come up later: retried when tokens arrive.
            (Source::Url { .. }, Err(e)) => tracing::warn!(error = e, "player keys not loaded yet; retrying on demand"),
        }
        Ok(cache)
    }

    pub(crate) fn set_refresh_floor(&self, floor: Duration) {
        *self.floor.lock().unwrap() = floor;
    }

    async fn load(&self) -> Result<KeySet, String> {
        match &self.source {
            Source::File(path) => {
                let text = tokio::fs::read(path).await.map_err(|e| e.to_string())?;
                KeySet::parse(&text)
            }
            Source::Url { url, client } => {
                let fetch = async {
                    let response = client.get(url.clone()).await.map_err(|e| format!("{url}: {e}"))?;
                    if !response.status().is_success() {
                        return Err(format!("{url}: HTTP {}", response.status()));
                    }
                    let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
                        .collect()
                        .await
                        .map_err(|e| format!("{url}: {e}"))?
                        .to_bytes();
                    KeySet::parse(&body)
                };
                timeout(FETCH_TIMEOUT, fetch)
                    .await
                    .unwrap_or_else(|_| Err(format!("{url}: no answer within {FETCH_TIMEOUT:?}")))
            }
        }
    }

    /// Reads the keys again unless a read began less than the refresh floor ago; concurrent
    /// callers wait for one read. False when nothing was ever loaded.
    async fn reload(&self) -> bool {
        let mut state = self.refresh.lock().await;
        let floor = *self.floor.lock().unwrap();
        if state.attempted.is_none_or(|at| at.elapsed() >= floor) {
            state.attempted = Some(Instant::now());
            match self.load().await {
                Ok(set) => {
                    tracing::info!(keys = set.keys.len(), "player keys reloaded");
                    *self.keys.write().unwrap() = Arc::new(set);
                    state.loaded = Some(Instant::now());
                }
                Err(e) => tracing::warn!(error = e, "player keys could not be reloaded; keeping the last ones"),
            }
        }
        state.loaded.is_some()
    }

    fn snapshot(&self) -> Arc<KeySet> {
        self.keys.read().unwrap().clone()
    }

    /// The key a token names, reading the JWKS again if it is unknown.
    pub(crate) async fn key_for(self: &Arc<Self>, kid: Option<&str>) -> Result<Arc<JwkKey>, TokenError> {
        if let Some(key) = self.snapshot().find(kid) {
            self.refresh_if_old();
            return Ok(key);
        }
        if !self.reload().await {
            return Err(TokenError::KeysUnavailable);
        }
        self.snapshot().find(kid).ok_or(TokenError::UnknownKey)
    }

    /// Starts a background read when the keys are older than [`MAX_AGE`].
    fn refresh_if_old(self: &Arc<Self>) {
        let old = self
            .refresh
            .try_lock()
            .is_ok_and(|state| state.loaded.is_some_and(|at| at.elapsed() >= MAX_AGE));
        if old && !self.background.swap(true, Ordering::AcqRel) {
            let cache = self.clone();
            tokio::spawn(async move {
                cache.reload().await;
                cache.background.store(false, Ordering::Release);
            });
        }
    }
}
