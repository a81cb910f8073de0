//! Prometheus exposition shared by the servers: a registry rendered in the OpenMetrics text
//! format, the latency buckets every histogram uses, and a gauge that follows a guard.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Bucket upper bounds in seconds, for latencies from 100 µs to a minute.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 15.0, 60.0,
];

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A latency histogram with [`LATENCY_BUCKETS`]; a plain `fn` so families can build them.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The registry's metrics in the text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Holds a gauge one higher for as long as it lives, so a count of things in some state can
/// never drift from an early return or a panic.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub fn new(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabel {
    dependency: &'static str,
}

/// `mp_dependency_up{dependency}`: 1 while the last check of a dependency (Redis, PostgreSQL,
/// the backend) passed, 0 while it failed. Every dependency's series exists (at 0) from the
/// start, before its first check.
#[derive(Debug, Clone, Default)]
pub struct DependencyUp(Family<DependencyLabel, Gauge>);

impl DependencyUp {
    pub fn new(dependencies: &[&'static str]) -> DependencyUp {
        let up = DependencyUp::default();
        for dependency in dependencies {
            drop(up.0.get_or_create(&DependencyLabel { dependency }));
        }
        up
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "mp_dependency_up",
            "Whether the last check of each dependency passed (1) or failed (0)",
            self.0.clone(),
        );
    }

    pub fn set(&self, dependency: &'static str, up: bool) {
        self.0.get_or_create(&DependencyLabel { dependency }).set(i64::from(up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guard_holds_its_gauge_up_while_it_lives() {
        let gauge = Gauge::default();
        {
            let _a = GaugeGuard::new(&gauge);
            let _b = GaugeGuard::new(&gauge);
            assert_eq!(gauge.get(), 2);
        }
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn histograms_render_cumulative_buckets() {
        let mut registry = Registry::default();
        let h = latency_histogram();
        registry.register("x_seconds", "X.", h.clone());
        h.observe(0.003);
        h.observe(2.0);
        let text = render(&registry);
        assert!(text.contains("x_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("x_seconds_count 2"), "{text}");
    }
}
