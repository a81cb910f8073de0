//! Prometheus metrics, rendered in the text exposition format at `/metrics`.
//!
//! A handful of counters, gauges and histograms, kept with atomics and short-held locks
//! (never across an await), so recording costs nothing next to a Redis round trip.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use protocol::prom::{Histogram, header, labeled_counter};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Every metric the backend exports.
#[derive(Default)]
pub struct Metrics {
    joins: Mutex<BTreeMap<&'static str, u64>>,
    sessions_formed: Mutex<BTreeMap<usize, u64>>,
    sessions_ended: Mutex<BTreeMap<&'static str, u64>>,
    pub sessions_allocating: AtomicI64,
    pub sessions_running: AtomicI64,
    pub queue_depth: AtomicI64,
    pub outbox_backlog: AtomicI64,
    pub history_written: AtomicU64,
    pub history_failures: AtomicU64,
    join_to_matched: Mutex<Histogram>,
    server_start: Mutex<Histogram>,
    http: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl Metrics {
    /// Counts a join by what happened to it.
    pub fn join(&self, result: &'static str) {
        *self.joins.lock().unwrap().entry(result).or_default() += 1;
    }

    /// Counts a formed session by its size.
    pub fn session_formed(&self, size: usize) {
        *self.sessions_formed.lock().unwrap().entry(size).or_default() += 1;
    }

    /// Counts an ended session by reason.
    pub fn session_ended(&self, reason: &'static str) {
        *self.sessions_ended.lock().unwrap().entry(reason).or_default() += 1;
    }

    /// Records how long a player waited from join to a ready server.
    pub fn join_to_matched(&self, waited: Duration) {
        self.join_to_matched.lock().unwrap().observe(waited.as_secs_f64());
    }

    /// Records how long a server took to become ready.
    pub fn server_start(&self, took: Duration) {
        self.server_start.lock().unwrap().observe(took.as_secs_f64());
    }

    /// Records one HTTP request.
    pub fn http(&self, method: &str, route: &str, status: u16, took: Duration) {
        self.http
            .lock()
            .unwrap()
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default()
            .observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        labeled_counter(
            &mut out,
            "mp_joins_total",
            "Join requests by result.",
            "result",
            self.joins.lock().unwrap().iter().map(|(k, n)| (k, *n)),
        );
        labeled_counter(
            &mut out,
            "mp_sessions_formed_total",
            "Sessions formed by this replica, by size.",
            "size",
            self.sessions_formed.lock().unwrap().iter().map(|(k, n)| (k, *n)),
        );
        labeled_counter(
            &mut out,
            "mp_sessions_ended_total",
            "Sessions ended through this replica, by reason.",
            "reason",
            self.sessions_ended.lock().unwrap().iter().map(|(k, n)| (k, *n)),
        );
        header(
            &mut out,
            "mp_sessions",
            "gauge",
            "Sessions supervised by this replica, by state.",
        );
        let _ = writeln!(
            out,
            "mp_sessions{{state=\"allocating\"}} {}",
            self.sessions_allocating.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "mp_sessions{{state=\"matched\"}} {}",
            self.sessions_running.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "mp_queue_depth",
            "gauge",
            "Players waiting in the queue (all replicas).",
        );
        let _ = writeln!(out, "mp_queue_depth {}", self.queue_depth.load(Ordering::Relaxed));
        header(
            &mut out,
            "mp_history_outbox_backlog",
            "gauge",
            "History events not yet written to PostgreSQL.",
        );
        let _ = writeln!(
            out,
            "mp_history_outbox_backlog {}",
            self.outbox_backlog.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "mp_history_events_written_total",
            "counter",
            "History events written to PostgreSQL.",
        );
        let _ = writeln!(
            out,
            "mp_history_events_written_total {}",
            self.history_written.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "mp_history_write_failures_total",
            "counter",
            "Failed history write attempts (retried).",
        );
        let _ = writeln!(
            out,
            "mp_history_write_failures_total {}",
            self.history_failures.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "mp_join_to_matched_seconds",
            "histogram",
            "Time from a player's join to a ready server.",
        );
        self.join_to_matched
            .lock()
            .unwrap()
            .render(&mut out, "mp_join_to_matched_seconds", "");
        header(
            &mut out,
            "mp_server_start_seconds",
            "histogram",
            "Time for a game server to become ready.",
        );
        self.server_start
            .lock()
            .unwrap()
            .render(&mut out, "mp_server_start_seconds", "");
        header(
            &mut out,
            "mp_http_request_duration_seconds",
            "histogram",
            "HTTP requests by method, route and status.",
        );
        for ((method, route, status), h) in self.http.lock().unwrap().iter() {
            let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
            h.render(&mut out, "mp_http_request_duration_seconds", &labels);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.join("queued");
        m.join("queued");
        m.server_start(Duration::from_millis(3));
        m.server_start(Duration::from_secs(2));
        let text = m.render();
        assert!(text.contains("mp_joins_total{result=\"queued\"} 2"));
        assert!(text.contains("mp_server_start_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("mp_server_start_seconds_count 2"));
    }
}
