//! The history's metrics: the outbox backlog, events written, failed writes, rows ended
//! `lost`. Registered by the part, at 0 from the start.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The history's metrics.
#[derive(Default)]
pub(crate) struct HistoryMetrics {
    outbox_backlog: Gauge,
    written: Counter,
    failures: Counter,
    lost: Counter,
}

impl HistoryMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "mp_history_outbox_backlog",
            "History events not yet written to PostgreSQL",
            self.outbox_backlog.clone(),
        );
        registry.register(
            "mp_history_events_written",
            "History events written to PostgreSQL",
            self.written.clone(),
        );
        registry.register(
            "mp_history_write_failures",
            "Failed history write attempts (retried)",
            self.failures.clone(),
        );
        registry.register(
            "mp_history_lost_sessions",
            "History rows ended `lost`: their session was gone from Redis",
            self.lost.clone(),
        );
    }

    pub(crate) fn set_outbox_backlog(&self, backlog: u64) {
        self.outbox_backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
    }

    pub(crate) fn history_written(&self, events: usize) {
        self.written.inc_by(events as u64);
    }

    pub(crate) fn history_failed(&self) {
        self.failures.inc();
    }

    pub(crate) fn history_lost(&self, rows: u64) {
        self.lost.inc_by(rows);
    }
}
