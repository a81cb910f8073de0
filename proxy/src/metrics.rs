//! The proxy's own `/metrics`: open connections by kind, bytes each way, routing outcomes by
//! reason, HTTP durations by status.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use protocol::prom::{Histogram, header, labeled_counter};

/// Every metric the proxy exports.
#[derive(Default)]
pub struct Metrics {
    pub open_pending: AtomicI64,
    pub open_http: AtomicI64,
    pub open_game: AtomicI64,
    pub bytes_client_to_server: AtomicU64,
    pub bytes_server_to_client: AtomicU64,
    routes: Mutex<BTreeMap<&'static str, u64>>,
    http: Mutex<BTreeMap<u16, Histogram>>,
}

impl Metrics {
    /// Counts one routing decision.
    pub fn route(&self, outcome: &'static str) {
        *self.routes.lock().unwrap().entry(outcome).or_default() += 1;
    }

    /// Records one forwarded or served HTTP request.
    pub fn http(&self, status: u16, took: Duration) {
        self.http
            .lock()
            .unwrap()
            .entry(status)
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        header(
            &mut out,
            "mp_proxy_open_connections",
            "gauge",
            "Open connections by kind.",
        );
        for (kind, gauge) in [
            ("pending", &self.open_pending),
            ("http", &self.open_http),
            ("game", &self.open_game),
        ] {
            let _ = writeln!(
                out,
                "mp_proxy_open_connections{{kind=\"{kind}\"}} {}",
                gauge.load(Ordering::Relaxed)
            );
        }
        labeled_counter(
            &mut out,
            "mp_proxy_game_bytes_total",
            "Bytes spliced, by direction.",
            "direction",
            [
                ("client_to_server", self.bytes_client_to_server.load(Ordering::Relaxed)),
                ("server_to_client", self.bytes_server_to_client.load(Ordering::Relaxed)),
            ],
        );
        labeled_counter(
            &mut out,
            "mp_proxy_routes_total",
            "Connection routing outcomes by reason.",
            "outcome",
            self.routes.lock().unwrap().iter().map(|(k, n)| (k, *n)),
        );
        header(
            &mut out,
            "mp_proxy_http_request_duration_seconds",
            "histogram",
            "HTTP requests by status.",
        );
        for (status, h) in self.http.lock().unwrap().iter() {
            h.render(
                &mut out,
                "mp_proxy_http_request_duration_seconds",
                &format!("status=\"{status}\""),
            );
        }
        out
    }
}

/// Keeps a gauge up while alive.
pub struct Open<'a>(&'a AtomicI64);

impl<'a> Open<'a> {
    pub fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Open(gauge)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
