//! Player-token verification against real keys: an HS256 secret, a JWKS file with RSA, EC
//! P-256 and Ed25519 keys, and a JWKS served over https by a server with its own CA.
//! The keys under `tests/keys/` are test-only keys, generated for these tests.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use identity::{KeySource, PlayerAuthMode, PlayerAuthSettings, PlayerVerifier, TokenError, mint_hs256};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &[u8] = b"player-secret-for-tests-0123456789abcdef";

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)).unwrap()
}

/// A signing key of the studio's identity service, and its public JWK.
struct Signer {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
}

impl Signer {
    fn new(file: &str, algorithm: Algorithm, kid: &str) -> Signer {
        let pem = key_file(file);
        let key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
            _ => EncodingKey::from_ed_pem(&pem),
        }
        .unwrap();
        Signer {
            kid: kid.to_owned(),
            algorithm,
            key,
        }
    }

    fn jwk(&self) -> Value {
        let mut jwk = serde_json::to_value(Jwk::from_encoding_key(&self.key, self.algorithm).unwrap()).unwrap();
        jwk["kid"] = json!(self.kid);
        jwk["use"] = json!("sig");
        jwk
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "iat": now(), "exp": now() + 300 })
}

fn settings(keys: KeySource) -> PlayerAuthSettings {
    PlayerAuthSettings {
        keys: Some(keys),
        mode: PlayerAuthMode::Jwt,
        issuer: None,
        audience: None,
    }
}

async fn hs256(issuer: Option<&str>, audience: Option<&str>) -> PlayerVerifier {
    let mut settings = settings(KeySource::Secret(SECRET.to_vec()));
    settings.issuer = issuer.map(str::to_owned);
    settings.audience = audience.map(str::to_owned);
    PlayerVerifier::start(&settings).await.unwrap()
}

fn hs256_token(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// `header.payload.` with the given header: what an attacker can write without any key.
fn unsigned(header: &Value, claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", b64(header), b64(claims))
}

#[tokio::test]
async fn hs256_tokens_are_checked_claim_by_claim() {
    let verifier = hs256(None, None).await;
    let ok = verifier
        .verify(&mint_hs256(SECRET, "alice", 60, None, None))
        .await
        .unwrap();
    assert_eq!(ok.sub, "alice");

    let forged = hs256_token(&claims("alice"), b"another-secret-entirely-0123456789abc");
    assert_eq!(verifier.verify(&forged).await.unwrap_err(), TokenError::Signature);

    let expired = json!({ "sub": "alice", "exp": now() - 60 });
    assert_eq!(
        verifier.verify(&hs256_token(&expired, SECRET)).await.unwrap_err(),
        TokenError::Expired
    );
    // Within the leeway a just-expired token still passes.
    let just_expired = json!({ "sub": "alice", "exp": now() - 2 });
    assert!(verifier.verify(&hs256_token(&just_expired, SECRET)).await.is_ok());

    let early = json!({ "sub": "alice", "exp": now() + 600, "nbf": now() + 300 });
    assert_eq!(
        verifier.verify(&hs256_token(&early, SECRET)).await.unwrap_err(),
        TokenError::NotYetValid
    );

    let no_exp = json!({ "sub": "alice" });
    assert_eq!(
        verifier.verify(&hs256_token(&no_exp, SECRET)).await.unwrap_err(),
        TokenError::MissingClaim("exp".into())
    );
    let no_sub = json!({ "exp": now() + 60 });
    assert_eq!(
        verifier.verify(&hs256_token(&no_sub, SECRET)).await.unwrap_err(),
        TokenError::MissingClaim("sub".into())
    );

    let none = unsigned(&json!({ "alg": "none", "typ": "JWT" }), &claims("alice"));
    assert!(matches!(
        verifier.verify(&none).await.unwrap_err(),
        TokenError::Algorithm | TokenError::Malformed
    ));
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &claims("alice"),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    assert_eq!(verifier.verify(&hs512).await.unwrap_err(), TokenError::Algorithm);

    for garbage in ["", "a.b", "a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9.%%%.x"] {
        assert!(verifier.verify(garbage).await.is_err(), "{garbage:?}");
    }
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let verifier = hs256(Some("https://id.studio.example"), Some("matchplane")).await;
    let good = mint_hs256(SECRET, "bob", 60, Some("https://id.studio.example"), Some("matchplane"));
    assert_eq!(verifier.verify(&good).await.unwrap().sub, "bob");
    let wrong_iss = mint_hs256(SECRET, "bob", 60, Some("https://evil.example"), Some("matchplane"));
    assert_eq!(verifier.verify(&wrong_iss).await.unwrap_err(), TokenError::Issuer);
    let wrong_aud = mint_hs256(SECRET, "bob", 60, Some("https://id.studio.example"), Some("other-game"));
    assert_eq!(verifier.verify(&wrong_aud).await.unwrap_err(), TokenError::Audience);
    let neither = mint_hs256(SECRET, "bob", 60, None, None);
    assert!(matches!(
        verifier.verify(&neither).await.unwrap_err(),
        TokenError::MissingClaim(_)
    ));
    // Unconfigured, neither is required.
    assert!(hs256(None, None).await.verify(&good).await.is_ok());
}

fn write_jwks(path: &std::path::Path, signers: &[&Signer]) {
    let keys: Vec<Value> = signers.iter().map(|s| s.jwk()).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json!({ "keys": keys }).to_string()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mp-identity-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_jwks_file_verifies_rs256_es256_and_eddsa_and_follows_rotation() {
    let rsa = Signer::new("rsa.pem", Algorithm::RS256, "rsa-1");
    let ec = Signer::new("ec.pem", Algorithm::ES256, "ec-1");
    let ed = Signer::new("ed.pem", Algorithm::EdDSA, "ed-1");
    let dir = temp_dir("rotation");
    let path = dir.join("jwks.json");
    write_jwks(&path, &[&rsa, &ec, &ed]);
    let verifier = PlayerVerifier::start(&settings(KeySource::JwksFile(path.clone())))
        .await
        .unwrap()
        .with_refresh_floor(Duration::ZERO);

    for signer in [&rsa, &ec, &ed] {
        let claims = verifier.verify(&signer.sign(&claims("carol"))).await.unwrap();
        assert_eq!(claims.sub, "carol", "{:?}", signer.algorithm);
    }

    // Algorithm confusion: HS256 "signed" with the RSA public key as the HMAC secret.
    let public_pem = key_file("rsa.pub.pem");
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(&header, &claims("carol"), &EncodingKey::from_secret(&public_pem)).unwrap();
    assert_eq!(verifier.verify(&confused).await.unwrap_err(), TokenError::Algorithm);
    // A header claiming another asymmetric algorithm for the RSA key.
    let mut header = Header::new(Algorithm::RS512);
    header.kid = Some("rsa-1".into());
    let rs512 = jsonwebtoken::encode(&header, &claims("carol"), &rsa.key).unwrap();
    assert_eq!(verifier.verify(&rs512).await.unwrap_err(), TokenError::Algorithm);
    // `alg: none` naming a real key.
    let none = unsigned(&json!({ "alg": "none", "kid": "rsa-1" }), &claims("carol"));
    assert!(verifier.verify(&none).await.is_err());
    // An EC signature under the RSA key's id.
    let mut swapped = Signer::new("ec.pem", Algorithm::ES256, "rsa-1");
    swapped.kid = "rsa-1".into();
    assert_eq!(
        verifier.verify(&swapped.sign(&claims("carol"))).await.unwrap_err(),
        TokenError::Algorithm
    );

    // A key the identity service has not published (yet).
    let next = Signer::new("rsa2.pem", Algorithm::RS256, "rsa-2");
    let early = next.sign(&claims("carol"));
    assert_eq!(verifier.verify(&early).await.unwrap_err(), TokenError::UnknownKey);
    // Rotation: rsa-2 published, rsa-1 withdrawn, while running.
    write_jwks(&path, &[&next, &ec, &ed]);
    assert_eq!(verifier.verify(&early).await.unwrap().sub, "carol");
    assert_eq!(
        verifier.verify(&rsa.sign(&claims("carol"))).await.unwrap_err(),
        TokenError::UnknownKey,
        "a withdrawn key no longer verifies"
    );
    // A token signed by an unpublished key under a published key's id.
    let mut impostor = Signer::new("rsa.pem", Algorithm::RS256, "rsa-2");
    impostor.kid = "rsa-2".into();
    assert_eq!(
        verifier.verify(&impostor.sign(&claims("carol"))).await.unwrap_err(),
        TokenError::Signature
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_broken_jwks_file_is_refused_at_start_and_kept_past_a_bad_rewrite() {
    let dir = temp_dir("broken");
    let path = dir.join("jwks.json");
    let err = PlayerVerifier::start(&settings(KeySource::JwksFile(path.clone())))
        .await
        .unwrap_err();
    assert!(err.starts_with("PLAYER_JWKS: "), "{err}");
    std::fs::write(&path, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
    let err = PlayerVerifier::start(&settings(KeySource::JwksFile(path.clone())))
        .await
        .unwrap_err();
    assert!(err.contains("no usable key"), "{err}");

    let rsa = Signer::new("rsa.pem", Algorithm::RS256, "rsa-1");
    write_jwks(&path, &[&rsa]);
    let verifier = PlayerVerifier::start(&settings(KeySource::JwksFile(path.clone())))
        .await
        .unwrap()
        .with_refresh_floor(Duration::ZERO);
    std::fs::write(&path, "not json").unwrap();
    let other = Signer::new("ec.pem", Algorithm::ES256, "ec-9");
    assert_eq!(
        verifier.verify(&other.sign(&claims("dan"))).await.unwrap_err(),
        TokenError::UnknownKey
    );
    assert!(
        verifier.verify(&rsa.sign(&claims("dan"))).await.is_ok(),
        "the last good keys stay"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// An https server on loopback with a certificate from a CA of its own, serving whatever
/// JWKS `document` holds and counting requests.
struct JwksServer {
    url: String,
    ca_file: PathBuf,
    document: Arc<std::sync::Mutex<String>>,
    requests: Arc<std::sync::atomic::AtomicUsize>,
}

async fn jwks_server(dir: &std::path::Path) -> JwksServer {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &ca_issuer).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let document = Arc::new(std::sync::Mutex::new(String::new()));
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (doc, count) = (document.clone(), requests.clone());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, doc, count) = (acceptor.clone(), doc.clone(), count.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = doc.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    JwksServer {
        url: format!("https://localhost:{port}/.well-known/jwks.json"),
        ca_file,
        document,
        requests,
    }
}

fn jwks_document(signers: &[&Signer]) -> String {
    let keys: Vec<Value> = signers.iter().map(|s| s.jwk()).collect();
    json!({ "keys": keys }).to_string()
}

#[tokio::test]
async fn a_jwks_url_is_fetched_over_https_cached_and_refreshed_on_an_unknown_kid() {
    let dir = temp_dir("https");
    let server = jwks_server(&dir).await;
    let ec = Signer::new("ec.pem", Algorithm::ES256, "ec-1");
    *server.document.lock().unwrap() = jwks_document(&[&ec]);
    let source = KeySource::JwksUrl {
        url: server.url.clone(),
        ca: Some(server.ca_file.clone()),
    };
    let verifier = PlayerVerifier::start(&settings(source.clone())).await.unwrap();
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    for _ in 0..5 {
        assert_eq!(verifier.verify(&ec.sign(&claims("erin"))).await.unwrap().sub, "erin");
    }
    assert_eq!(
        server.requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "known keys are served from the cache"
    );

    // Rotation: a new key is fetched when a token names it.
    let ed = Signer::new("ed.pem", Algorithm::EdDSA, "ed-2");
    *server.document.lock().unwrap() = jwks_document(&[&ec, &ed]);
    let verifier = verifier.with_refresh_floor(Duration::ZERO);
    assert_eq!(verifier.verify(&ed.sign(&claims("erin"))).await.unwrap().sub, "erin");
    assert_eq!(server.requests.load(std::sync::atomic::Ordering::SeqCst), 2);

    // Made-up key ids cost at most one fetch per refresh floor.
    let verifier = verifier.with_refresh_floor(Duration::from_secs(3600));
    let mut stranger = Signer::new("rsa.pem", Algorithm::RS256, "x");
    for i in 0..20 {
        stranger.kid = format!("made-up-{i}");
        assert!(verifier.verify(&stranger.sign(&claims("erin"))).await.is_err());
    }
    assert!(server.requests.load(std::sync::atomic::Ordering::SeqCst) <= 3);

    // Without the CA, the server's certificate is not trusted: no keys, so tokens are
    // "unavailable" rather than wrongly refused as forged.
    let untrusted = KeySource::JwksUrl {
        url: server.url.clone(),
        ca: None,
    };
    let blind = PlayerVerifier::start(&settings(untrusted)).await.unwrap();
    assert_eq!(
        blind.verify(&ec.sign(&claims("erin"))).await.unwrap_err(),
        TokenError::KeysUnavailable
    );
    std::fs::remove_dir_all(dir).unwrap();
}
