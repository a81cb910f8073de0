//! The backend's Prometheus registry, exposed at `/metrics` through `prometheus-client`.
//!
//! Each part owns its metrics and registers them here at start (matchmaking, sessions,
//! history, http, the warm pool, the retry policy), every series whose labels are known at
//! start at 0, so rates and alerts have something to read before the first event. Counters
//! and histograms are lock-free or hold a lock only to record.

use std::sync::Mutex;

use prometheus_client::registry::Registry;

/// The registry every part registers into.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Held to register (at start) and to render (a scrape).
    registry: Mutex<Registry>,
}

impl Metrics {
    /// Lets a part register the metrics it owns.
    pub(crate) fn register(&self, part: impl FnOnce(&mut Registry)) {
        part(&mut self.registry.lock().expect("registry lock"));
    }

    /// The text exposition format.
    pub(crate) fn render(&self) -> String {
        service::metrics::render(&self.registry.lock().expect("registry lock"))
    }
}
