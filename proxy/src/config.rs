//! Proxy settings: each a flag with an environment variable.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use identity::{PlayerAuthArgs, PlayerAuthSettings};
use protocol::TicketSecret;
use service::cli::seconds;
use service::redis::{RedisArgs, RedisTarget};
use service::telemetry::LogArgs;

/// The raw command line and environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "proxy",
    version,
    about = "matchplane's public entry point: HTTP API and game traffic on one port"
)]
pub struct Config {
    /// The one public listener.
    #[arg(long, env = "BIND", default_value = "0.0.0.0:8080")]
    pub bind: SocketAddr,
    /// The backend that `/api/*` is forwarded to.
    #[arg(long, env = "BACKEND_URL", default_value = "http://127.0.0.1:8081")]
    pub backend_url: String,
    /// Redis holding the session records (session id → game server address).
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Prefix of the backend's Redis keys.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "mp")]
    pub redis_key_prefix: String,
    /// Shared HMAC secret: tickets are verified before any server is dialled.
    #[arg(long, env = "TICKET_SECRET", hide_env_values = true)]
    pub ticket_secret: Option<String>,
    /// Most connections open at once; more are closed at once. Unset: 20,000, or as many
    /// spliced game connections as the open-file limit holds when that is fewer.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// New connections per second allowed from one source address (0 disables the limit).
    #[arg(long, env = "RATE_LIMIT_PER_SECOND", default_value_t = 200.0)]
    pub rate_limit_per_second: f64,
    /// Burst of new connections allowed from one source address.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 1000.0)]
    pub rate_limit_burst: f64,
    /// Time a new connection has to send its first line.
    #[arg(long, env = "FIRST_LINE_TIMEOUT_SECONDS", default_value_t = 5.0)]
    pub first_line_timeout_seconds: f64,
    /// Largest request body forwarded to the backend.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,
    /// On SIGTERM, how long spliced game connections may go on.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 30.0)]
    pub drain_seconds: f64,
    /// On SIGTERM, how long to go on accepting and serving while `/health` already says not
    /// ready, so load balancers and Kubernetes' endpoints stop sending players here before
    /// the port closes. The drain follows it.
    #[arg(long, env = "SHUTDOWN_DELAY_SECONDS", default_value_t = 0.0)]
    pub shutdown_delay_seconds: f64,
    /// Joins and status polls per second allowed for one player (by the verified `sub` of
    /// the player's token; 0 disables the limit).
    #[arg(long, env = "PLAYER_RATE_LIMIT_PER_SECOND", default_value_t = 5.0)]
    pub player_rate_limit_per_second: f64,
    /// Burst of joins and status polls allowed for one player.
    #[arg(long, env = "PLAYER_RATE_LIMIT_BURST", default_value_t = 20.0)]
    pub player_rate_limit_burst: f64,
    /// A UDP flow (one player's datagrams in one session) ends after this long without a
    /// datagram from its client.
    #[arg(long, env = "UDP_IDLE_SECONDS", default_value_t = 30.0)]
    pub udp_idle_seconds: f64,
    /// Datagrams a second one UDP flow's client may send (and as many at once); more are
    /// dropped.
    #[arg(long, env = "UDP_FLOW_RATE_PER_SECOND", default_value_t = 2000.0)]
    pub udp_flow_rate_per_second: f64,
    /// A PEM certificate chain: with TLS_KEY_FILE the public TCP port speaks TLS 1.2/1.3
    /// (the files are read again every 2 s; a replaced pair is used for new connections).
    #[arg(long, env = "TLS_CERT_FILE")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of TLS_CERT_FILE (RSA, ECDSA or Ed25519).
    #[arg(long, env = "TLS_KEY_FILE")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// A listener of its own for TLS, when plain connections on BIND are wanted too; without
    /// it, BIND itself speaks TLS.
    #[arg(long, env = "TLS_BIND")]
    pub tls_bind: Option<SocketAddr>,
    /// Web origins (`https://game.example`, comma-separated) whose pages may call the API from
    /// a browser (CORS, preflight included) and open `/play`; unset: none.
    #[arg(long, env = "ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Serve the backend's operator console under `/api/console/` too (off: 404 there; the
    /// console is then reached on the backend's own address).
    #[arg(long, env = "PROXY_CONSOLE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub proxy_console: bool,
    #[command(flatten)]
    pub players: PlayerAuthArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Whether `origin` is a web origin as browsers send it: `http` or `https`, a host, maybe a
/// port, and nothing after.
fn is_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' ', '*'])
        && rest.parse::<hyper::http::uri::Authority>().is_ok()
}

/// TLS on the public TCP port.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub(crate) certificates: std::sync::Arc<crate::tls::Certificates>,
    /// A listener of its own (`TLS_BIND`); `None`: `BIND` speaks TLS.
    pub bind: Option<SocketAddr>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub backend_url: String,
    pub redis: RedisTarget,
    pub key_prefix: String,
    pub secret: TicketSecret,
    /// `MAX_CONNECTIONS` as set; [`crate::connection_limit`] gives the limit in force.
    pub max_connections: Option<usize>,
    pub rate_per_second: f64,
    pub rate_burst: f64,
    pub first_line_timeout: Duration,
    pub max_body_bytes: usize,
    pub drain: Duration,
    pub shutdown_delay: Duration,
    pub player_rate_per_second: f64,
    pub player_rate_burst: f64,
    pub udp_idle: Duration,
    pub udp_flow_rate: f64,
    /// Player-token keys, to rate-limit per verified player.
    pub players: PlayerAuthSettings,
    /// TLS, when `TLS_CERT_FILE` and `TLS_KEY_FILE` are set.
    pub tls: Option<TlsSettings>,
    /// Web origins allowed to call the API from a browser and to open `/play`.
    pub allowed_origins: Vec<String>,
    /// Whether `/api/console/` reaches the backend's console.
    pub console: bool,
}

impl Config {
    /// Checks every setting; the error is one line naming the setting.
    pub fn validate(&self) -> Result<Settings, String> {
        let secret = TicketSecret::from_setting(self.ticket_secret.as_deref())?;
        let backend_url = self.backend_url.trim_end_matches('/').to_owned();
        if !backend_url.starts_with("http://") || backend_url.parse::<hyper::Uri>().is_err() {
            return Err(format!("BACKEND_URL must be an http:// URL, got {backend_url:?}"));
        }
        if self.max_connections == Some(0) {
            return Err("MAX_CONNECTIONS must be at least 1".into());
        }
        if !(self.rate_limit_per_second >= 0.0 && self.rate_limit_burst >= 1.0) {
            return Err("RATE_LIMIT_PER_SECOND must be >= 0 and RATE_LIMIT_BURST >= 1".into());
        }
        if !(self.player_rate_limit_per_second >= 0.0 && self.player_rate_limit_burst >= 1.0) {
            return Err("PLAYER_RATE_LIMIT_PER_SECOND must be >= 0 and PLAYER_RATE_LIMIT_BURST >= 1".into());
        }
        let players = self.players.validate()?;
        let udp_idle = seconds("UDP_IDLE_SECONDS", self.udp_idle_seconds)?;
        if udp_idle.is_zero() {
            return Err("UDP_IDLE_SECONDS must be > 0".into());
        }
        if !(self.udp_flow_rate_per_second.is_finite() && self.udp_flow_rate_per_second >= 1.0) {
            return Err("UDP_FLOW_RATE_PER_SECOND must be at least 1".into());
        }
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                certificates: std::sync::Arc::new(crate::tls::Certificates::open(crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                })?),
                bind: self.tls_bind,
            }),
            (None, None) if self.tls_bind.is_some() => {
                return Err("TLS_BIND needs TLS_CERT_FILE and TLS_KEY_FILE".into());
            }
            (None, None) => None,
            _ => return Err("TLS_CERT_FILE and TLS_KEY_FILE come together".into()),
        };
        let allowed_origins: Vec<String> = self
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if let Some(bad) = allowed_origins.iter().find(|o| !is_origin(o)) {
            return Err(format!(
                "ALLOWED_ORIGINS: {bad:?} is not an origin (http[s]://host[:port], nothing after it)"
            ));
        }
        let first_line_timeout = seconds("FIRST_LINE_TIMEOUT_SECONDS", self.first_line_timeout_seconds)?;
        if first_line_timeout.is_zero() {
            return Err("FIRST_LINE_TIMEOUT_SECONDS must be > 0".into());
        }
        Ok(Settings {
            backend_url,
            redis: self.redis.validate()?,
            key_prefix: self.redis_key_prefix.clone(),
            secret,
            max_connections: self.max_connections,
            rate_per_second: self.rate_limit_per_second,
            rate_burst: self.rate_limit_burst,
            first_line_timeout,
            max_body_bytes: self.max_body_bytes,
            drain: seconds("DRAIN_SECONDS", self.drain_seconds)?,
            shutdown_delay: seconds("SHUTDOWN_DELAY_SECONDS", self.shutdown_delay_seconds)?,
            player_rate_per_second: self.player_rate_limit_per_second,
            player_rate_burst: self.player_rate_limit_burst,
            udp_idle,
            udp_flow_rate: self.udp_flow_rate_per_second,
            players,
            tls,
            allowed_origins,
            console: self.proxy_console,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_url_must_be_a_valid_http_uri() {
        let parse = |url: &str| {
            service::cli::parse_without_env::<Config, _, _>([
                "proxy",
                "--ticket-secret",
                "proxy-config-test-secret-0123456789",
                "--player-auth",
                "none",
                "--backend-url",
                url,
            ])
            .unwrap()
            .validate()
        };
        assert!(parse("http://backend:8081").is_ok());
        for bad in ["https://backend", "backend:8081", "http://bad host:80", ""] {
            assert!(parse(bad).unwrap_err().contains("BACKEND_URL"), "{bad}");
        }
    }
}
