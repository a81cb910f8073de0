//! TLS on the public TCP port (rustls): the certificate and key from `TLS_CERT_FILE` and
//! `TLS_KEY_FILE` (PEM; RSA, ECDSA or Ed25519 keys), TLS 1.2 and 1.3, ALPN `http/1.1`.
//!
//! **Rotation.** The files are read again every [`RELOAD_EVERY`]; when either changed (as
//! cert-manager replaces a Secret's files), the new pair is loaded and used for every new
//! connection from then on, while open connections carry on with the one they started with.
//! A replacement that does not load (unreadable, not PEM, a key that does not match the
//! certificate) keeps the pair in use: the failure is logged once per change and counted as
//! `mp_proxy_tls_reloads_total{outcome="failed"}`.
//!
//! **Handshakes.** A connection to a TLS port must start with a TLS handshake record: anything
//! else (plain HTTP, a `JOIN` line) is answered with one line saying the port speaks TLS and
//! closed; a handshake must finish within the first-line timeout, as a plain connection must
//! send its first line. Each outcome is counted in `mp_proxy_tls_handshakes_total{outcome}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Handshake, Metrics, Reload};

/// How often the certificate files are read for a replacement.
pub(crate) const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// The first byte of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Where the certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A loaded pair, and the bytes it was loaded from (to notice a change).
struct Loaded {
    key: Arc<CertifiedKey>,
    source: (Vec<u8>, Vec<u8>),
}

/// The certificate new handshakes get; replaced when the files change.
pub(crate) struct Certificates {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' bytes last loaded or last found broken (a broken replacement is reported
    /// once, not at every look), and a broken pair seen once: reported only if the next look
    /// finds it unchanged, as a certificate and its key may be replaced a moment apart.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    settled: (Vec<u8>, Vec<u8>),
    broken_once: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

/// Reads and checks the pair in `files`: one line saying what is wrong otherwise.
fn load(files: &TlsFiles) -> Result<Loaded, String> {
    let read = |path: &Path, what: &str| std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()));
    let (cert_pem, key_pem) = (read(&files.cert, "TLS_CERT_FILE")?, read(&files.key, "TLS_KEY_FILE")?);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("TLS_CERT_FILE {}: not PEM certificates: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!("TLS_CERT_FILE {}: no certificate in it", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("TLS_KEY_FILE {}: no PEM private key: {e}", files.key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider.key_provider.load_private_key(key).map_err(|e| {
        format!(
            "TLS_KEY_FILE {}: not a usable key (RSA, ECDSA or Ed25519): {e}",
            files.key.display()
        )
    })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "TLS_KEY_FILE {} does not match TLS_CERT_FILE {}: {e}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        source: (cert_pem, key_pem),
    })
}

impl Certificates {
    /// Loads the pair in `files`, or says what is wrong with it.
    pub(crate) fn open(files: TlsFiles) -> Result<Certificates, String> {
        let loaded = load(&files)?;
        Ok(Certificates {
            files,
            current: RwLock::new(loaded.key),
            seen: Mutex::new(Seen {
                settled: loaded.source,
                broken_once: None,
            }),
        })
    }

    /// Looks at the files once: a changed pair that loads replaces the one in use; one that
    /// does not is reported once it has stayed so for two looks.
    fn reload(&self, metrics: &Metrics) {
        let read = (std::fs::read(&self.files.cert), std::fs::read(&self.files.key));
        let (Ok(cert), Ok(key)) = read else {
            // Mid-replacement (a Secret's files are swapped by a symlink), or gone: the
            // next look decides.
            return;
        };
        let now = (cert, key);
        if self.seen.lock().expect("seen lock").settled == now {
            return;
        }
        match load(&self.files) {
            Ok(loaded) if loaded.source == now => {
                *self.current.write().expect("certificate lock") = loaded.key;
                *self.seen.lock().expect("seen lock") = Seen {
                    settled: now,
                    broken_once: None,
                };
                metrics.tls_reload(Reload::Loaded);
                tracing::info!(cert = %self.files.cert.display(), "a replaced TLS certificate is in use for new connections");
            }
            // Changed again between the two reads: the next look loads it.
            Ok(_) => {}
            Err(e) => {
                let mut seen = self.seen.lock().expect("seen lock");
                if seen.broken_once.as_ref() == Some(&now) {
                    *seen = Seen {
                        settled: now,
                        broken_once: None,
                    };
                    metrics.tls_reload(Reload::Failed);
                    tracing::error!(error = %e, "the replaced TLS certificate does not load; the previous one stays in use");
                } else {
                    seen.broken_once = Some(now);
                }
            }
        }
    }
}

/// The server side of TLS: TLS 1.2 and 1.3, ALPN `http/1.1`, the current certificate.
pub(crate) fn acceptor(certificates: Arc<Certificates>) -> TlsAcceptor {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Looks at the certificate files every [`RELOAD_EVERY`] until `stop`.
pub(crate) async fn watch(certificates: Arc<Certificates>, ctx: Arc<crate::Context>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (certificates, ctx) = (certificates.clone(), ctx.clone());
        // Reading files blocks; it is done off the runtime's workers.
        let _ = tokio::task::spawn_blocking(move || certificates.reload(&ctx.metrics)).await;
    }
}

/// The answer to a plain request on a TLS port, then the connection is closed.
const NOT_TLS: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 41\r\nConnection: close\r\n\r\nThis port speaks TLS: connect with https\n";

/// Completes the TLS handshake on `stream` within `limit`, counting its outcome; `None` when
/// there is no TLS connection to go on with.
pub(crate) async fn handshake(
    acceptor: &TlsAcceptor,
    mut stream: TcpStream,
    limit: Duration,
    metrics: &Metrics,
) -> Option<TlsStream<TcpStream>> {
    // One deadline for the first byte and the whole handshake.
    let deadline = tokio::time::Instant::now() + limit;
    let mut first = [0u8; 1];
    match timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => {
            metrics.tls_handshake(Handshake::TimedOut);
            return None;
        }
        Ok(Ok(0) | Err(_)) => {
            metrics.tls_handshake(Handshake::Closed);
            return None;
        }
        Ok(Ok(_)) if first[0] != HANDSHAKE_RECORD => {
            metrics.tls_handshake(Handshake::NotTls);
            let _ = timeout(Duration::from_secs(2), async {
                stream.write_all(NOT_TLS).await?;
                stream.shutdown().await
            })
            .await;
            return None;
        }
        Ok(Ok(_)) => {}
    }
    match timeout_at(deadline, acceptor.accept(stream)).await {
        Err(_) => {
            metrics.tls_handshake(Handshake::TimedOut);
            None
        }
        Ok(Err(e)) => {
            metrics.tls_handshake(Handshake::Failed);
            tracing::debug!(error = %e, "a TLS handshake failed");
            None
        }
        Ok(Ok(tls)) => {
            metrics.tls_handshake(Handshake::Ok);
            Some(tls)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key of `algorithm`: generated, but for RSA (which ring cannot generate) the test key
    /// of the identity crate's tests.
    fn key_for(algorithm: &'static rcgen::SignatureAlgorithm) -> rcgen::KeyPair {
        if algorithm == &rcgen::PKCS_RSA_SHA256 {
            let pem = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../identity/tests/keys/rsa.pem"))
                .unwrap();
            rcgen::KeyPair::from_pem_and_sign_algo(&pem, algorithm).unwrap()
        } else {
            rcgen::KeyPair::generate_for(algorithm).unwrap()
        }
    }

    fn pair(dir: &Path, name: &str, algorithm: &'static rcgen::SignatureAlgorithm) -> TlsFiles {
        let key = key_for(algorithm);
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mp-tls-{}-{}", std::process::id(), fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn rsa_and_ecdsa_pairs_load_and_a_broken_one_says_why() {
        let dir = scratch();
        for (name, algorithm) in [
            ("ecdsa", &rcgen::PKCS_ECDSA_P256_SHA256),
            ("rsa", &rcgen::PKCS_RSA_SHA256),
        ] {
            let files = pair(&dir, name, algorithm);
            assert!(Certificates::open(files).is_ok(), "{name}");
        }
        let ecdsa = pair(&dir, "ecdsa", &rcgen::PKCS_ECDSA_P256_SHA256);
        let other = pair(&dir, "other", &rcgen::PKCS_ECDSA_P256_SHA256);
        let mismatched = TlsFiles {
            cert: ecdsa.cert.clone(),
            key: other.key.clone(),
        };
        assert!(Certificates::open(mismatched).unwrap_err().contains("does not match"));
        std::fs::write(dir.join("garbage.crt"), "not pem").unwrap();
        let garbage = TlsFiles {
            cert: dir.join("garbage.crt"),
            key: ecdsa.key.clone(),
        };
        assert!(Certificates::open(garbage).unwrap_err().contains("no certificate"));
        let missing = TlsFiles {
            cert: dir.join("nowhere.crt"),
            key: ecdsa.key,
        };
        assert!(Certificates::open(missing).unwrap_err().starts_with("TLS_CERT_FILE"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
