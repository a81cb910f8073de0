//! The Prometheus text format pieces every binary's `/metrics` shares: a fixed-bucket
//! latency histogram and the `# HELP`/`# TYPE` header.

use std::fmt::Write as _;

/// Bucket upper bounds in seconds, for latencies from 100 µs to a minute.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 15.0, 60.0,
];

/// A latency histogram; wrap it in a mutex held only to observe or render.
#[derive(Debug, Default, Clone)]
pub struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Records one sample, in seconds.
    pub fn observe(&mut self, seconds: f64) {
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(self.buckets.iter_mut()) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// Appends `name_bucket`, `name_sum` and `name_count` lines with `labels` (`k="v",...`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in LATENCY_BUCKETS.iter().zip(self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", self.count);
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// Appends the `# HELP` and `# TYPE` lines of a metric.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends a counter family with one label: its header, then a sample per `(value, count)`.
pub fn labeled_counter<V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (V, u64)>,
) {
    header(out, name, "counter", help);
    for (value, n) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_labeled_counter_has_its_header_and_a_line_per_value() {
        let mut out = String::new();
        labeled_counter(&mut out, "mp_x_total", "Things.", "kind", [("a", 1), ("b", 20)]);
        assert_eq!(
            out,
            "# HELP mp_x_total Things.\n# TYPE mp_x_total counter\nmp_x_total{kind=\"a\"} 1\nmp_x_total{kind=\"b\"} 20\n"
        );
    }

    #[test]
    fn buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(2.0);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 1"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"2.5\"} 2"));
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 2"));
        assert!(out.contains("x_count{a=\"b\"} 2"));
    }
}
