//! Redis connections that survive restarts and follow failovers.
//!
//! [`RedisArgs`] names where Redis is: one address (`REDIS_URL`), or a primary watched by
//! Sentinels (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`). [`RedisLink`] keeps one shared
//! multiplexed connection to the current primary and replaces it when it breaks: after an
//! I/O error, a timeout, or an answer that says the node is no longer a writable primary
//! (`READONLY`, `MASTERDOWN`, `LOADING`). Every new connection looks the primary up again —
//! asks the Sentinels, or resolves the URL's host name anew — so a promoted replica and a
//! managed endpoint whose name moves to a new address are both followed. Reconnects back
//! off (100 ms doubling to 2 s); meanwhile calls fail at once with the last error, so callers
//! answer "Redis is down" instead of hanging, and retry as they see fit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionInfo, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, Value,
};
use tokio::time::Instant;

/// The port Sentinels listen on unless told otherwise.
const SENTINEL_PORT: u16 = 26379;
/// First and longest pause between reconnect attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Where Redis is.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL. With REDIS_SENTINELS, only its user name, password and database number
    /// are used (for the primary the Sentinels name).
    #[arg(
        long,
        env = "REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    pub redis_url: String,
    /// Redis Sentinels (comma-separated host:port, port 26379 if left out) watching the
    /// primary named REDIS_SENTINEL_MASTER: connections follow it through failovers.
    #[arg(long, env = "REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,
    /// The primary's name in the Sentinels' configuration.
    #[arg(long, env = "REDIS_SENTINEL_MASTER", default_value = "mymaster")]
    pub redis_sentinel_master: String,
}

/// A validated Redis location.
#[derive(Clone)]
pub enum RedisTarget {
    /// One address (a host name is resolved again at every connect).
    Direct(Box<ConnectionInfo>),
    /// The primary that these Sentinels name `master`.
    Sentinel {
        sentinels: Vec<ConnectionInfo>,
        master: String,
        /// User, password and database for the primary.
        node: Box<ConnectionInfo>,
    },
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl RedisTarget {
    /// Where it points, without credentials, for logs and error messages.
    pub fn describe(&self) -> String {
        match self {
            RedisTarget::Direct(info) => format!("Redis at {}", info.addr()),
            RedisTarget::Sentinel { sentinels, master, .. } => {
                let list: Vec<String> = sentinels.iter().map(|s| s.addr().to_string()).collect();
                format!("Redis primary {master:?} of Sentinels {}", list.join(","))
            }
        }
    }
}

impl RedisArgs {
    /// Checks the settings; the error is one line naming the setting.
    pub fn validate(&self) -> Result<RedisTarget, String> {
        let url = self
            .redis_url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("REDIS_URL is not a Redis URL ({}): {e}", redact(&self.redis_url)))?;
        let sentinels: Vec<&str> = self
            .redis_sentinels
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        if sentinels.is_empty() {
            return Ok(RedisTarget::Direct(Box::new(url)));
        }
        if self.redis_sentinel_master.trim().is_empty() {
            return Err("REDIS_SENTINEL_MASTER must name the primary the Sentinels watch".into());
        }
        let sentinels = sentinels
            .into_iter()
            .map(|s| {
                let (host, port) = match s.rsplit_once(':') {
                    Some((host, port)) if !host.ends_with(':') => (
                        host.trim_start_matches('[').trim_end_matches(']'),
                        port.parse::<u16>()
                            .map_err(|_| format!("REDIS_SENTINELS: {s:?} has no valid port"))?,
                    ),
                    _ => (s, SENTINEL_PORT),
                };
                if host.is_empty() {
                    return Err(format!("REDIS_SENTINELS: {s:?} has no host"));
                }
                format!("redis://{}:{port}", bracket(host))
                    .into_connection_info()
                    .map_err(|e| format!("REDIS_SENTINELS: {s:?}: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(RedisTarget::Sentinel {
            sentinels,
            master: self.redis_sentinel_master.trim().to_owned(),
            node: Box::new(url),
        })
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Whether `error` means the connection (or the node behind it) must be replaced.
pub fn needs_new_connection(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
        || matches!(error.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
}

/// A shared connection to the current primary. Cheap to clone.
#[derive(Clone)]
pub struct RedisLink {
    inner: Arc<Inner>,
}

struct Inner {
    target: RedisTarget,
    config: AsyncConnectionConfig,
    /// The connection in use and its generation.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while (re)connecting: one attempt at a time.
    connecting: tokio::sync::Mutex<Reconnect>,
    /// Asked for the primary's address (Sentinel targets only).
    sentinel: tokio::sync::Mutex<Option<SentinelClient>>,
}

#[derive(Default)]
struct Reconnect {
    generation: u64,
    /// No new attempt before this; calls fail with `last_error` meanwhile.
    not_before: Option<Instant>,
    backoff: Duration,
    last_error: Option<(ErrorKind, String)>,
}

impl RedisLink {
    /// A link whose first connection is made now: an error if Redis cannot be reached.
    /// `response_timeout` bounds each command.
    pub async fn connect(target: RedisTarget, response_timeout: Duration) -> RedisResult<RedisLink> {
        let link = RedisLink::lazy(target, response_timeout)?;
        link.connection().await?;
        Ok(link)
    }

    /// A link that connects at its first use.
    pub fn lazy(target: RedisTarget, response_timeout: Duration) -> RedisResult<RedisLink> {
        let sentinel = match &target {
            RedisTarget::Direct(_) => None,
            RedisTarget::Sentinel {
                sentinels,
                master,
                node,
                ..
            } => {
                let node_info =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(node.redis_settings().clone());
                Some(SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(node_info),
                    SentinelServerType::Master,
                )?)
            }
        };
        Ok(RedisLink {
            inner: Arc::new(Inner {
                target,
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(5)))
                    .set_response_timeout(Some(response_timeout)),
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(Reconnect::default()),
                sentinel: tokio::sync::Mutex::new(sentinel),
            }),
        })
    }

    /// Where it points.
    pub fn target(&self) -> &RedisTarget {
        &self.inner.target
    }

    /// A handle for commands, pipelines and scripts.
    pub fn conn(&self) -> LinkConnection {
        LinkConnection { link: self.clone() }
    }

    /// A client for the current primary, looked up now: for connections of a caller's own
    /// (pub/sub, blocking reads), which the caller replaces when they fail.
    pub async fn client(&self) -> RedisResult<redis::Client> {
        match &self.inner.target {
            RedisTarget::Direct(info) => redis::Client::open((**info).clone()),
            RedisTarget::Sentinel { .. } => {
                let mut sentinel = self.inner.sentinel.lock().await;
                let sentinel = sentinel.as_mut().expect("a Sentinel target has a Sentinel client");
                sentinel.async_get_client().await
            }
        }
    }

    /// The connection in use, or a new one.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(current) = self.inner.current.lock().unwrap().clone() {
            return Ok(current);
        }
        let mut state = self.inner.connecting.lock().await;
        // Someone else may have connected while we waited.
        if let Some(current) = self.inner.current.lock().unwrap().clone() {
            return Ok(current);
        }
        if let (Some(not_before), Some((kind, message))) = (state.not_before, &state.last_error)
            && Instant::now() < not_before
        {
            return Err(RedisError::from((*kind, "Redis unreachable", message.clone())));
        }
        let attempt = async {
            let client = self.client().await?;
            client
                .get_multiplexed_async_connection_with_config(&self.inner.config)
                .await
        };
        match attempt.await {
            Ok(conn) => {
                state.generation += 1;
                state.not_before = None;
                state.backoff = Duration::ZERO;
                if state.last_error.take().is_some() {
                    tracing::info!(redis = %self.inner.target.describe(), "Redis connection restored");
                }
                let current = (state.generation, conn);
                *self.inner.current.lock().unwrap() = Some(current.clone());
                Ok(current)
            }
            Err(e) => {
                state.backoff = (state.backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                state.not_before = Some(Instant::now() + state.backoff);
                // Said once per outage, and not at all before the first connection (the caller
                // of `connect` reports that itself).
                if state.last_error.is_none() && state.generation > 0 {
                    tracing::warn!(redis = %self.inner.target.describe(), error = %e, "cannot connect to Redis; retrying with backoff");
                }
                state.last_error = Some((e.kind(), e.to_string()));
                Err(e)
            }
        }
    }

    /// Drops connection `generation` after `error`, if the error calls for it.
    fn after_error(&self, generation: u64, error: &RedisError) {
        if !needs_new_connection(error) {
            return;
        }
        let mut current = self.inner.current.lock().unwrap();
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::warn!(redis = %self.inner.target.describe(), %error, "Redis connection lost; reconnecting");
            *current = None;
        }
    }
}

/// A command handle on a [`RedisLink`]; implements [`ConnectionLike`], so commands,
/// pipelines and scripts run on it as on any connection.
#[derive(Clone)]
pub struct LinkConnection {
    link: RedisLink,
}

impl ConnectionLike for LinkConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.link.connection().await?;
            let result = conn.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.link.after_error(generation, e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.link.connection().await?;
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            match &result {
                Err(e) => self.link.after_error(generation, e),
                Ok(values) => {
                    // A pipeline's errors come back per command.
                    if let Some(Value::ServerError(e)) = values.iter().find(|v| matches!(v, Value::ServerError(_))) {
                        let e: RedisError = e.clone().into();
                        self.link.after_error(generation, &e);
                    }
                }
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        match &self.link.inner.target {
            RedisTarget::Direct(info) => info.redis_settings().db(),
            RedisTarget::Sentinel { node, .. } => node.redis_settings().db(),
        }
    }
}

/// How often a quiet subscription is checked, and how long its `PING`, or subscribing, may
/// take.
///
/// A subscriber only reads, so a connection whose Redis went silent (its host lost power or
/// dropped off the network, a failover that moved its address: no FIN, no RST) would look
/// like a quiet channel for ever. A `PING` on it every few seconds finds out, and the
/// subscription is made anew (on whatever Redis the link resolves to now).
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub every: Duration,
    pub patience: Duration,
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness {
            every: Duration::from_secs(5),
            patience: Duration::from_secs(3),
        }
    }
}

/// Listens on `channel` through `link` until `stop`, handing each message's payload to
/// `on_message`; subscribes anew (with `retries`' backoff) whenever the subscription fails or
/// goes silent, calling `on_subscribed` each time it is made (messages may have been missed).
pub async fn subscribe(
    link: &RedisLink,
    channel: &str,
    retries: crate::backoff::Policy,
    liveness: Liveness,
    stop: &tokio_util::sync::CancellationToken,
    mut on_subscribed: impl FnMut(),
    mut on_message: impl FnMut(&[u8]),
) {
    use futures_util::StreamExt as _;
    let mut backoff = retries.start();
    while !stop.is_cancelled() {
        // Bounded too: subscribing while Redis is still silent would otherwise wait for ever.
        let subscribed = tokio::time::timeout(liveness.patience, async {
            let mut pubsub = link.client().await?.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, RedisError>(pubsub)
        });
        let (mut sink, mut messages) = match subscribed.await {
            Ok(Ok(pubsub)) => pubsub.split(),
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", liveness.patience),
                };
                if !backoff.pause(&why, stop).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        on_subscribed();
        let mut check = tokio::time::interval(liveness.every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.reset();
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = messages.next() => message,
                _ = check.tick() => {
                    match tokio::time::timeout(liveness.patience, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => tracing::warn!(channel, error = %e, "the subscription failed its check; subscribing anew"),
                        Err(_) => tracing::warn!(
                            channel,
                            patience = ?liveness.patience,
                            "Redis did not answer the subscription's check; subscribing anew"
                        ),
                    }
                    break;
                }
            };
            let Some(message) = message else {
                tracing::warn!(channel, "subscription lost; subscribing anew");
                break;
            };
            on_message(message.get_payload_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str, sentinels: &[&str]) -> RedisArgs {
        RedisArgs {
            redis_url: url.into(),
            redis_sentinels: sentinels.iter().map(|s| (*s).to_owned()).collect(),
            redis_sentinel_master: "mymaster".into(),
        }
    }

    #[test]
    fn settings_are_checked_with_one_line_per_mistake() {
        assert!(matches!(
            args("redis://127.0.0.1:6379/2", &[]).validate(),
            Ok(RedisTarget::Direct(_))
        ));
        let e = args("http://x:1", &[]).validate().unwrap_err();
        assert!(e.starts_with("REDIS_URL is not a Redis URL"), "{e}");
        let e = args("redis://:secret-pw@h:1", &["nope:port"]).validate().unwrap_err();
        assert!(e.contains("REDIS_SENTINELS") && !e.contains("secret-pw"), "{e}");
        let e = args("redis://:secret-pw@", &[]).validate();
        if let Err(e) = e {
            assert!(!e.contains("secret-pw"), "{e}");
        }
        match args("redis://:pw@ignored:1/3", &["10.0.0.1", "s2:5000", "[::1]:26380"]).validate() {
            Ok(RedisTarget::Sentinel {
                sentinels,
                master,
                node,
            }) => {
                let addrs: Vec<String> = sentinels.iter().map(|s| s.addr().to_string()).collect();
                assert_eq!(addrs, ["10.0.0.1:26379", "s2:5000", "::1:26380"]);
                assert_eq!(master, "mymaster");
                assert_eq!(node.redis_settings().db(), 3);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(redact("redis://user:pw@h:1/0"), "redis://***@h:1/0");
    }
}
