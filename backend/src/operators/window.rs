//! Counts every replica shares for the console: each replica adds what it saw to 10-second
//! slots of its own memory, and a background task adds them to the slot's Redis hash once a
//! second (one round trip), so the operator's view covers every replica and survives a
//! replica's restart. Reading sums the slots of the last 1, 5 and 15 minutes: rates, and
//! latency percentiles from per-slot histograms.
//!
//! Fields of a slot: `in|<queue>` players joining, `out|<queue>` players placed in sessions,
//! `to|<queue>` tickets timed out, `failed` sessions failed, `ttm|<queue>|<bucket>` and
//! `ttp|<queue>|<bucket>` time to match and time to play, counted into
//! [`LATENCY_BOUNDS_MS`]'s buckets (the last one unbounded).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use matchmaking_core::store::{Store, now_ms};
use protocol::operators::{Latency, LatencyWindows, Rates};
use tokio_util::sync::CancellationToken;

/// A slot's length.
pub(crate) const SLOT_SECONDS: i64 = 10;
/// The windows read, in minutes.
const WINDOWS: [i64; 3] = [1, 5, 15];
/// Slots in the longest window.
pub(crate) const SLOTS: usize = (15 * 60 / SLOT_SECONDS) as usize;
/// The latency buckets' upper bounds (ms); a last bucket takes the rest.
pub(crate) const LATENCY_BOUNDS_MS: [f64; 26] = [
    5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 400.0, 500.0, 750.0, 1_000.0, 1_500.0, 2_000.0, 3_000.0,
    5_000.0, 7_500.0, 10_000.0, 15_000.0, 20_000.0, 30_000.0, 60_000.0, 120_000.0, 300_000.0, 600_000.0,
];
/// How often the counts go to Redis.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Counts kept while Redis does not take them: a slot's worth of fields for a few minutes.
const MAX_PENDING_FIELDS: usize = 50_000;

/// This replica's counts not yet in Redis, by slot and field.
#[derive(Default)]
pub(crate) struct Window {
    pending: Mutex<HashMap<(i64, String), i64>>,
}

/// The start (Unix second) of the slot holding `ms`.
fn slot_of(ms: i64) -> i64 {
    ms.div_euclid(1000).div_euclid(SLOT_SECONDS) * SLOT_SECONDS
}

fn bucket_of(ms: f64) -> usize {
    LATENCY_BOUNDS_MS
        .iter()
        .position(|bound| ms <= *bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

impl Window {
    fn add(&self, field: String, n: i64) {
        if n == 0 {
            return;
        }
        let mut pending = self.pending.lock().expect("window lock");
        if pending.len() >= MAX_PENDING_FIELDS {
            return;
        }
        *pending.entry((slot_of(now_ms()), field)).or_default() += n;
    }

    pub(crate) fn players_in(&self, queue: &str, players: usize) {
        self.add(format!("in|{queue}"), players as i64);
    }

    pub(crate) fn players_out(&self, queue: &str, players: usize) {
        self.add(format!("out|{queue}"), players as i64);
    }

    pub(crate) fn timed_out(&self, queue: &str, tickets: usize) {
        self.add(format!("to|{queue}"), tickets as i64);
    }

    pub(crate) fn failed(&self) {
        self.add("failed".to_owned(), 1);
    }

    pub(crate) fn time_to_match(&self, queue: &str, waited: Duration) {
        self.add(format!("ttm|{queue}|{}", bucket_of(waited.as_secs_f64() * 1000.0)), 1);
    }

    pub(crate) fn time_to_play(&self, queue: &str, waited: Duration) {
        self.add(format!("ttp|{queue}|{}", bucket_of(waited.as_secs_f64() * 1000.0)), 1);
    }

    /// Everything counted since the last take, by slot.
    fn take(&self) -> Vec<(i64, Vec<(String, i64)>)> {
        let pending = std::mem::take(&mut *self.pending.lock().expect("window lock"));
        let mut slots: HashMap<i64, Vec<(String, i64)>> = HashMap::new();
        for ((slot, field), n) in pending {
            slots.entry(slot).or_default().push((field, n));
        }
        slots.into_iter().collect()
    }

    /// Counts Redis did not take go back, to be sent with the next.
    fn put_back(&self, slots: Vec<(i64, Vec<(String, i64)>)>) {
        let mut pending = self.pending.lock().expect("window lock");
        for (slot, fields) in slots {
            for (field, n) in fields {
                if pending.len() >= MAX_PENDING_FIELDS {
                    return;
                }
                *pending.entry((slot, field)).or_default() += n;
            }
        }
    }

    /// Sends the counts to Redis now.
    pub(crate) async fn flush(&self, store: &Store) -> matchmaking_core::store::Result<()> {
        let slots = self.take();
        if slots.is_empty() {
            return Ok(());
        }
        let result = store.add_stats(&slots).await;
        if result.is_err() {
            self.put_back(slots);
        }
        result
    }

    /// Sends the counts to Redis every second until `stop` (and once more then).
    pub(crate) async fn run(self: std::sync::Arc<Self>, store: Store, stop: CancellationToken) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => {
                    let _ = self.flush(&store).await;
                    return;
                }
            }
            match self.flush(&store).await {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("the console's counts reach Redis again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "the console's counts cannot reach Redis; kept for later");
                }
                Err(_) => {}
            }
        }
    }
}

/// The slots of the last 15 minutes, newest first, as of `now_ms`.
pub(crate) fn recent_slots(now_ms: i64) -> Vec<i64> {
    let newest = slot_of(now_ms);
    (0..SLOTS as i64).map(|i| newest - i * SLOT_SECONDS).collect()
}

/// What every replica counted in the last 15 minutes, read from Redis.
pub(crate) struct Counted {
    /// Newest first, as [`recent_slots`].
    slots: Vec<HashMap<String, i64>>,
    now_ms: i64,
}

impl Counted {
    pub(crate) fn new(slots: Vec<HashMap<String, i64>>, now_ms: i64) -> Counted {
        Counted { slots, now_ms }
    }

    /// How many slots a window of `minutes` reads, and the seconds they span up to now.
    fn span(&self, minutes: i64) -> (usize, f64) {
        let n = usize::try_from(minutes * 60 / SLOT_SECONDS)
            .unwrap_or(SLOTS)
            .min(self.slots.len());
        let oldest = slot_of(self.now_ms) - (n as i64 - 1) * SLOT_SECONDS;
        let seconds = (self.now_ms as f64 / 1000.0 - oldest as f64).max(1.0);
        (n, seconds)
    }

    fn sum(&self, n: usize, field: &str) -> i64 {
        self.slots[..n].iter().filter_map(|s| s.get(field)).sum()
    }

    /// `field` per second over each window.
    pub(crate) fn rates(&self, field: &str) -> Rates {
        let [m1, m5, m15] = WINDOWS.map(|minutes| {
            let (n, seconds) = self.span(minutes);
            round3(self.sum(n, field) as f64 / seconds)
        });
        Rates { m1, m5, m15 }
    }

    /// The percentiles of histogram `kind` (`ttm`, `ttp`) over each window: of one queue's,
    /// or of every queue's together when `queue` is `None`.
    pub(crate) fn latency(&self, kind: &str, queue: Option<&str>) -> LatencyWindows {
        let [m1, m5, m15] = WINDOWS.map(|minutes| {
            let (n, _) = self.span(minutes);
            let mut buckets = [0u64; LATENCY_BOUNDS_MS.len() + 1];
            for slot in &self.slots[..n] {
                for (field, count) in slot {
                    let mut parts = field.splitn(3, '|');
                    let (Some(k), Some(q), Some(b)) = (parts.next(), parts.next(), parts.next()) else {
                        continue;
                    };
                    if k != kind || queue.is_some_and(|want| want != q) {
                        continue;
                    }
                    if let Ok(b) = b.parse::<usize>()
                        && let Some(bucket) = buckets.get_mut(b)
                    {
                        *bucket += u64::try_from(*count).unwrap_or(0);
                    }
                }
            }
            latency_of(&buckets)
        });
        LatencyWindows { m1, m5, m15 }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// p50 and p99 of a histogram, interpolated within the bucket the rank falls in (as
/// Prometheus's `histogram_quantile`); the unbounded bucket answers its lower bound.
pub(crate) fn latency_of(buckets: &[u64; LATENCY_BOUNDS_MS.len() + 1]) -> Latency {
    let count: u64 = buckets.iter().sum();
    let quantile = |q: f64| -> Option<f64> {
        if count == 0 {
            return None;
        }
        let rank = q * count as f64;
        let mut below = 0u64;
        for (i, n) in buckets.iter().enumerate() {
            if *n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { LATENCY_BOUNDS_MS[i - 1] };
                let Some(upper) = LATENCY_BOUNDS_MS.get(i) else {
                    return Some(lower);
                };
                let within = (rank - below as f64) / *n as f64;
                return Some(round3(lower + (upper - lower) * within));
            }
            below += n;
        }
        None
    };
    Latency {
        count,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_within_their_bucket() {
        let mut buckets = [0u64; LATENCY_BOUNDS_MS.len() + 1];
        // 100 observations in (50, 75] ms.
        buckets[4] = 100;
        let l = latency_of(&buckets);
        assert_eq!(l.count, 100);
        assert_eq!(l.p50_ms, Some(62.5));
        assert_eq!(l.p99_ms, Some(74.75));
        // One slow outlier beyond every bound answers the last bound.
        buckets[LATENCY_BOUNDS_MS.len()] = 10;
        let l = latency_of(&buckets);
        assert_eq!(l.p99_ms, Some(600_000.0));
        assert_eq!(latency_of(&[0; LATENCY_BOUNDS_MS.len() + 1]).p50_ms, None);
    }

    #[test]
    fn buckets_hold_their_upper_bound() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(5.0), 0);
        assert_eq!(bucket_of(5.1), 1);
        assert_eq!(bucket_of(1e9), LATENCY_BOUNDS_MS.len());
    }

    #[test]
    fn windows_sum_their_own_slots_and_divide_by_the_time_they_span() {
        // Now is 5 s into a slot: the 1-minute window is 6 slots spanning 55 s.
        let now = 1_700_000_005_000;
        assert_eq!(slot_of(now), 1_700_000_000);
        let mut slots = vec![HashMap::new(); SLOTS];
        slots[0].insert("in|ranked".to_owned(), 11);
        slots[5].insert("in|ranked".to_owned(), 44);
        // Outside the 1- and 5-minute windows.
        slots[60].insert("in|ranked".to_owned(), 840);
        slots[1].insert("ttm|ranked|4".to_owned(), 10);
        slots[1].insert("ttm|casual|0".to_owned(), 10);
        let counted = Counted::new(slots, now);
        let rates = counted.rates("in|ranked");
        assert_eq!(rates.m1, 1.0);
        assert_eq!(rates.m5, round3(55.0 / 295.0));
        assert_eq!(rates.m15, 1.0);
        assert_eq!(counted.rates("in|casual").m15, 0.0);
        let ranked = counted.latency("ttm", Some("ranked"));
        assert_eq!(ranked.m1.count, 10);
        assert_eq!(ranked.m1.p50_ms, Some(62.5));
        let all = counted.latency("ttm", None);
        assert_eq!(all.m15.count, 20);
        assert_eq!(all.m1.p50_ms, Some(5.0));
        assert_eq!(counted.latency("ttp", None).m1.count, 0);
    }
}
