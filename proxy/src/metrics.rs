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
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

/// Every metric the proxy exports.
pub(crate) struct Metrics {
    registry: Registry,
    open: Family<KindLabel, Gauge>,
    bytes: Family<DirectionLabel, Counter>,
    routes: Family<OutcomeLabel, Counter>,
    http: Family<StatusLabel, Histogram, fn() -> Histogram>,
}

/// Which connections [`Metrics::open`] counts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ConnKind {
    /// Not yet classified.
    Pending,
    Http,
    Game,
}

impl Default for Metrics {
    fn default() -> Self {
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
        Metrics {
            registry,
            open,
            bytes,
            routes,
            http,
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
    pub(crate) fn route(&self, outcome: &'static str) {
        self.routes.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// Records one forwarded or served HTTP request.
    pub(crate) fn http(&self, status: u16, took: Duration) {
        self.http
            .get_or_create(&StatusLabel { status })
            .observe(took.as_secs_f64());
    }

    /// Counts bytes spliced each way.
    pub(crate) fn spliced(&self, client_to_server: u64, server_to_client: u64) {
        for (direction, n) in [
            ("client_to_server", client_to_server),
            ("server_to_client", server_to_client),
        ] {
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
