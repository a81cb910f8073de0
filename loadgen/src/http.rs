//! A small keep-alive HTTP/1.1 JSON client over hyper, shared by the swarm and the benchmarks.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use protocol::api::JoinRequest;
use serde::de::DeserializeOwned;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request timed out")]
    Timeout,
    #[error("transport: {0}")]
    Transport(String),
    #[error("status {status}: {body}")]
    Status { status: u16, body: String },
    #[error("bad response body: {0}")]
    Body(String),
}

/// How simulated players prove who they are: the settings the backend reads, so one
/// environment configures both.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CredentialArgs {
    /// Mint each player an HS256 token with this key, as the studio's identity service would.
    #[arg(long, env = "PLAYER_TOKEN_SECRET", hide_env_values = true)]
    pub player_token_secret: Option<String>,
    /// `iss` of minted player tokens.
    #[arg(long, env = "PLAYER_TOKEN_ISSUER")]
    pub player_token_issuer: Option<String>,
    /// `aud` of minted player tokens.
    #[arg(long, env = "PLAYER_TOKEN_AUDIENCE")]
    pub player_token_audience: Option<String>,
    /// Act as the studio's own service instead (used when no player key is given).
    #[arg(long, env = "SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: Option<String>,
}

impl CredentialArgs {
    /// The `Authorization` value `player` sends, if any: a fresh player token valid for
    /// `ttl`, else the service token, else none (for `PLAYER_AUTH=none`).
    pub fn authorization(&self, player: &str, ttl: Duration) -> Option<String> {
        if let Some(secret) = self.player_token_secret.as_deref().filter(|s| !s.is_empty()) {
            let token = identity::mint_hs256(
                secret.as_bytes(),
                player,
                ttl.as_secs().max(60),
                self.player_token_issuer.as_deref().filter(|s| !s.is_empty()),
                self.player_token_audience.as_deref().filter(|s| !s.is_empty()),
            );
            return Some(format!("Bearer {token}"));
        }
        self.service_token
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|token| format!("Bearer {token}"))
    }
}

/// A pooled client for one base URL.
#[derive(Clone)]
pub struct HttpClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    /// A client for `base` (`http://host:port`, optionally with a path prefix such as `/api`).
    pub fn new(base: &str, timeout: Duration) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4096)
            .build(connector);
        HttpClient {
            base: base.trim_end_matches('/').to_owned(),
            client,
            timeout,
        }
    }

    /// Sends one request (with this `Authorization`, if any) and returns the status and body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        authorization: Option<&str>,
    ) -> Result<(StatusCode, Bytes), HttpError> {
        let mut request = Request::builder().method(method).uri(format!("{}{path}", self.base));
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| HttpError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| HttpError::Transport(e.to_string()))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| HttpError::Transport(e.to_string()))?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout)?
    }

    /// Sends a request and decodes a 2xx JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&JoinRequest>,
        authorization: Option<&str>,
    ) -> Result<T, HttpError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("a join request encodes"));
        let (status, bytes) = self.send(method, path, body, authorization).await?;
        if !status.is_success() {
            return Err(HttpError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| HttpError::Body(e.to_string()))
    }

    /// The body of a `GET` as text (for `/metrics`).
    pub async fn text(&self, path: &str) -> Result<String, HttpError> {
        let (status, bytes) = self.send(Method::GET, path, None, None).await?;
        if !status.is_success() {
            return Err(HttpError::Status {
                status: status.as_u16(),
                body: String::new(),
            });
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
