//! The HTTP layer's metrics: request durations by method, route and status. Registered by the
//! part; its statuses are not known ahead, so series appear with their first request.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use service::metrics::latency_histogram;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

/// The HTTP layer's metrics.
pub(crate) struct HttpMetrics {
    requests: Family<HttpLabels, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl HttpMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "mp_http_request_duration_seconds",
            "HTTP requests by method, route and status",
            self.requests.clone(),
        );
    }

    /// Records one HTTP request.
    pub(crate) fn http(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.requests
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .observe(took.as_secs_f64());
    }
}
