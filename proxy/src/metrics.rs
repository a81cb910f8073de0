//! The proxy's own `/metrics`: open connections by kind, bytes each way, routing outcomes by
//! reason, HTTP durations by status.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use service::metrics::{GaugeGuard, latency_histogram};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub(crate) outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

/// The directions bytes are spliced in.
const DIRECTIONS: [&str; 2] = ["client_to_server", "server_to_client"];

/// Every metric the proxy exports.
pub(crate) struct Metrics {
    registry: Registry,
    open: Family<KindLabel, Gauge>,
    bytes: Family<DirectionLabel, Counter>,
    routes: Family<OutcomeLabel, Counter>,
    http: Family<StatusLabel, Histogram, fn() -> Histogram>,
    /// Each status's histogram of `http` once it has been seen (100 to 599), so an answer is
    /// counted without a lock or a hash.
    http_by_status: Box<[std::sync::OnceLock<Histogram>]>,
    /// The UDP relay's.
    pub(crate) udp: UdpMetrics,
    tls_handshakes: Family<OutcomeLabel, Counter>,
    tls_reloads: Family<OutcomeLabel, Counter>,
    /// Redis and the backend as last checked: `mp_dependency_up`.
    pub(crate) dependencies: service::metrics::DependencyUp,
}

/// How a TLS handshake on a TLS port ended, as `mp_proxy_tls_handshakes_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    Ok,
    /// The client sent something else than a TLS handshake (plain HTTP, a `JOIN` line).
    NotTls,
    /// The handshake failed (no shared version or cipher, a bad record, an alert).
    Failed,
    /// It did not finish within the first-line timeout.
    TimedOut,
    /// The client went away before saying anything.
    Closed,
}

impl Handshake {
    const ALL: [Handshake; 5] = [
        Handshake::Ok,
        Handshake::NotTls,
        Handshake::Failed,
        Handshake::TimedOut,
        Handshake::Closed,
    ];

    fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::NotTls => "not_tls",
            Handshake::Failed => "failed",
            Handshake::TimedOut => "timed_out",
            Handshake::Closed => "closed",
        }
    }
}

/// What became of a replaced certificate, as `mp_proxy_tls_reloads_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reload {
    Loaded,
    /// It did not load; the previous one stays in use.
    Failed,
}

impl Reload {
    fn label(self) -> &'static str {
        match self {
            Reload::Loaded => "loaded",
            Reload::Failed => "failed",
        }
    }
}

/// How a connection was routed (or why not), as `mp_proxy_routes_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Routed,
    BadRequest,
    BadTicket,
    ExpiredTicket,
    UnknownSession,
    SessionOver,
    ServerUnreachable,
    FirstLineTimeout,
    LineTooLong,
    PlayerRateLimited,
    RateLimited,
    ServerFull,
    /// A client sent a PROXY protocol header of its own.
    ProxyHeader,
    /// A TLS handshake reached a plain port.
    TlsOnPlainPort,
    /// A valid ticket of a player no longer on its session's roster (released, its place
    /// given to backfill).
    NotInRoster,
    /// A latency probe (`PING` lines), answered.
    Probe,
}

impl Route {
    /// Every outcome, each counted from 0.
    pub(crate) const ALL: [Route; 16] = [
        Route::Routed,
        Route::BadRequest,
        Route::BadTicket,
        Route::ExpiredTicket,
        Route::UnknownSession,
        Route::SessionOver,
        Route::ServerUnreachable,
        Route::FirstLineTimeout,
        Route::LineTooLong,
        Route::PlayerRateLimited,
        Route::RateLimited,
        Route::ServerFull,
        Route::ProxyHeader,
        Route::TlsOnPlainPort,
        Route::NotInRoster,
        Route::Probe,
    ];

    fn label(self) -> &'static str {
        match self {
            Route::Routed => "routed",
            Route::BadRequest => "bad_request",
            Route::BadTicket => "bad_ticket",
            Route::ExpiredTicket => "expired_ticket",
            Route::UnknownSession => "unknown_session",
            Route::SessionOver => "session_over",
            Route::ServerUnreachable => "server_unreachable",
            Route::FirstLineTimeout => "first_line_timeout",
            Route::LineTooLong => "line_too_long",
            Route::PlayerRateLimited => "player_rate_limited",
            Route::RateLimited => "rate_limited",
            Route::ServerFull => "server_full",
            Route::ProxyHeader => "proxy_header",
            Route::TlsOnPlainPort => "tls_on_plain_port",
            Route::NotInRoster => "not_in_roster",
            Route::Probe => "probe",
        }
    }
}

/// Why a datagram was dropped, or what was done with it, as `mp_proxy_udp_datagrams_total`
/// counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UdpOutcome {
    ToServer,
    ToClient,
    Welcomed,
    Refused,
    Malformed,
    UnknownFlow,
    RateLimited,
    JoinRateLimited,
    SendFailed,
    ProbeAnswered,
    ProbeRateLimited,
}

impl UdpOutcome {
    pub(crate) const ALL: [UdpOutcome; 11] = [
        UdpOutcome::ToServer,
        UdpOutcome::ToClient,
        UdpOutcome::Welcomed,
        UdpOutcome::Refused,
        UdpOutcome::Malformed,
        UdpOutcome::UnknownFlow,
        UdpOutcome::RateLimited,
        UdpOutcome::JoinRateLimited,
        UdpOutcome::SendFailed,
        UdpOutcome::ProbeAnswered,
        UdpOutcome::ProbeRateLimited,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            UdpOutcome::ToServer => "relayed_to_server",
            UdpOutcome::ToClient => "relayed_to_client",
            UdpOutcome::Welcomed => "join_welcomed",
            UdpOutcome::Refused => "join_refused",
            UdpOutcome::Malformed => "malformed",
            UdpOutcome::UnknownFlow => "unknown_flow",
            UdpOutcome::RateLimited => "rate_limited",
            UdpOutcome::JoinRateLimited => "join_rate_limited",
            UdpOutcome::SendFailed => "send_failed",
            UdpOutcome::ProbeAnswered => "probe_answered",
            UdpOutcome::ProbeRateLimited => "probe_rate_limited",
        }
    }
}

/// The UDP relay's counters, created once (a datagram's count is one atomic add).
pub(crate) struct UdpMetrics {
    outcomes: Vec<Counter>,
    pub(crate) flows: Gauge,
    pub(crate) rebinds: Counter,
}

impl UdpMetrics {
    pub(crate) fn new(family: &Family<crate::metrics::OutcomeLabel, Counter>, flows: Gauge, rebinds: Counter) -> Self {
        UdpMetrics {
            outcomes: UdpOutcome::ALL
                .iter()
                .map(|o| {
                    family
                        .get_or_create(&crate::metrics::OutcomeLabel { outcome: o.label() })
                        .clone()
                })
                .collect(),
            flows,
            rebinds,
        }
    }

    pub(crate) fn count(&self, outcome: UdpOutcome) {
        self.outcomes[outcome as usize].inc();
    }
}

/// Which connections [`Metrics::open`] counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ConnKind {
    /// Not yet classified.
    Pending,
    Http,
    Game,
}

impl Metrics {
    /// Every metric, each with known labels at 0; `retries`: the retry policies of the proxy.
    pub(crate) fn new(retries: &[service::backoff::Policy]) -> Metrics {
        let mut registry = Registry::default();
        let open = Family::<KindLabel, Gauge>::default();
        let bytes = Family::<DirectionLabel, Counter>::default();
        let routes = Family::<OutcomeLabel, Counter>::default();
        let http = Family::<StatusLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("mp_proxy_open_connections", "Open connections by kind", open.clone());
        registry.register("mp_proxy_game_bytes", "Bytes spliced, by direction", bytes.clone());
        registry.register(
            "mp_proxy_routes",
            "Connection routing outcomes by reason",
            routes.clone(),
        );
        registry.register(
            "mp_proxy_http_request_duration_seconds",
            "HTTP requests by status",
            http.clone(),
        );
        for kind in [ConnKind::Pending, ConnKind::Http, ConnKind::Game] {
            drop(open.get_or_create(&KindLabel { kind: kind.label() }));
        }
        for direction in DIRECTIONS {
            drop(bytes.get_or_create(&DirectionLabel { direction }));
        }
        for outcome in Route::ALL {
            drop(routes.get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            }));
        }
        service::backoff::register(&mut registry, retries);
        let datagrams = Family::<OutcomeLabel, Counter>::default();
        let (flows, rebinds) = (Gauge::default(), Counter::default());
        registry.register(
            "mp_proxy_udp_datagrams",
            "UDP datagrams on the public port by what became of them",
            datagrams.clone(),
        );
        registry.register("mp_proxy_udp_flows", "UDP flows open", flows.clone());
        registry.register(
            "mp_proxy_udp_rebinds",
            "UDP flows whose client moved to a new address",
            rebinds.clone(),
        );
        let tls_handshakes = Family::<OutcomeLabel, Counter>::default();
        let tls_reloads = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "mp_proxy_tls_handshakes",
            "TLS handshakes on a TLS port by outcome",
            tls_handshakes.clone(),
        );
        registry.register(
            "mp_proxy_tls_reloads",
            "Replaced TLS certificates: loaded, or failed (the previous one stays in use)",
            tls_reloads.clone(),
        );
        for outcome in Handshake::ALL {
            drop(tls_handshakes.get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            }));
        }
        for outcome in [Reload::Loaded, Reload::Failed] {
            drop(tls_reloads.get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            }));
        }
        let dependencies = service::metrics::DependencyUp::new(&["redis", "backend"]);
        dependencies.register(&mut registry);
        Metrics {
            registry,
            open,
            bytes,
            routes,
            http,
            http_by_status: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
            udp: UdpMetrics::new(&datagrams, flows, rebinds),
            tls_handshakes,
            tls_reloads,
            dependencies,
        }
    }
}

impl ConnKind {
    fn label(self) -> &'static str {
        match self {
            ConnKind::Pending => "pending",
            ConnKind::Http => "http",
            ConnKind::Game => "game",
        }
    }
}

impl Metrics {
    /// Counts one routing decision.
    pub(crate) fn route(&self, outcome: Route) {
        self.routes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts one TLS handshake's outcome.
    pub(crate) fn tls_handshake(&self, outcome: Handshake) {
        self.tls_handshakes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Counts what became of one replaced certificate.
    pub(crate) fn tls_reload(&self, outcome: Reload) {
        self.tls_reloads
            .get_or_create(&OutcomeLabel {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// Records one forwarded or served HTTP request.
    pub(crate) fn http(&self, status: u16, took: Duration) {
        let seconds = took.as_secs_f64();
        match self.http_by_status.get(usize::from(status).wrapping_sub(100)) {
            Some(slot) => slot
                .get_or_init(|| self.http.get_or_create(&StatusLabel { status }).clone())
                .observe(seconds),
            None => self.http.get_or_create(&StatusLabel { status }).observe(seconds),
        }
    }

    /// Counts bytes spliced each way.
    pub(crate) fn spliced(&self, client_to_server: u64, server_to_client: u64) {
        for (direction, n) in DIRECTIONS.into_iter().zip([client_to_server, server_to_client]) {
            self.bytes.get_or_create(&DirectionLabel { direction }).inc_by(n);
        }
    }

    /// Counts a connection of `kind` as open while the guard lives.
    pub(crate) fn open(&self, kind: ConnKind) -> GaugeGuard {
        GaugeGuard::new(&self.open.get_or_create(&KindLabel { kind: kind.label() }))
    }

    /// Game connections open now.
    pub(crate) fn open_game(&self) -> i64 {
        self.open.get_or_create(&KindLabel { kind: "game" }).get()
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        service::metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_with_known_labels_exists_at_zero_from_the_start() {
        let lookup = service::backoff::Policy::new("test_lookup", Duration::from_millis(1), Duration::from_millis(2));
        let text = Metrics::new(&[lookup]).render();
        let mut lines = vec![
            "mp_proxy_open_connections{kind=\"pending\"} 0".to_owned(),
            "mp_proxy_open_connections{kind=\"game\"} 0".to_owned(),
            "mp_proxy_game_bytes_total{direction=\"client_to_server\"} 0".to_owned(),
            "mp_proxy_game_bytes_total{direction=\"server_to_client\"} 0".to_owned(),
            "mp_retries_total{op=\"test_lookup\"} 0".to_owned(),
        ];
        lines.extend(
            Route::ALL
                .iter()
                .map(|r| format!("mp_proxy_routes_total{{outcome=\"{}\"}} 0", r.label())),
        );
        lines.extend(
            UdpOutcome::ALL
                .iter()
                .map(|o| format!("mp_proxy_udp_datagrams_total{{outcome=\"{}\"}} 0", o.label())),
        );
        lines.push("mp_proxy_udp_flows 0".to_owned());
        lines.extend(
            Handshake::ALL
                .iter()
                .map(|o| format!("mp_proxy_tls_handshakes_total{{outcome=\"{}\"}} 0", o.label())),
        );
        lines.push("mp_proxy_tls_reloads_total{outcome=\"failed\"} 0".to_owned());
        lines.push("mp_dependency_up{dependency=\"redis\"} 0".to_owned());
        lines.push("mp_dependency_up{dependency=\"backend\"} 0".to_owned());
        for line in lines {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }
}
