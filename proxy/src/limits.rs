//! Rate limiting with token buckets: new connections per source address, and joins and
//! status polls per verified player.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use service::bucket::TokenBucket;

/// Token buckets keyed by `K` (a source address, a player id); idle buckets are forgotten.
pub struct RateLimiter<K> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq> RateLimiter<K> {
    /// `per_second` of 0 allows everything.
    pub fn new(per_second: f64, burst: f64) -> Self {
        RateLimiter {
            per_second,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`; false when it has none left.
    pub fn allow(&self, key: K) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let (rate, burst) = (self.per_second, self.burst);
        let mut buckets = self.buckets.lock().unwrap();
        if buckets.len() > 100_000 {
            // Forget buckets that have refilled anyway.
            buckets.retain(|_, bucket| !bucket.refilled(rate, burst));
        }
        buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::full(burst))
            .take(1.0, rate, burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refills_per_source() {
        let limiter = RateLimiter::new(10.0, 3.0);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| limiter.allow(a)));
        assert!(!limiter.allow(a));
        assert!(limiter.allow(b), "another source has its own bucket");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.allow(a));
        assert!(!limiter.allow(a));
        assert!(RateLimiter::new(0.0, 1.0).allow(a));
    }

    #[tokio::test(start_paused = true)]
    async fn players_have_a_bucket_each() {
        let limiter = RateLimiter::new(2.0, 4.0);
        assert!((0..4).all(|_| limiter.allow("alice".to_owned())));
        assert!(!limiter.allow("alice".to_owned()), "burst spent");
        assert!(limiter.allow("bob".to_owned()));
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!limiter.allow("alice".to_owned()), "not a whole token yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(limiter.allow("alice".to_owned()), "2 per second: one every 500 ms");
        assert!(!limiter.allow("alice".to_owned()));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..10).filter(|_| limiter.allow("alice".to_owned())).count(),
            4,
            "refills to the burst, no more"
        );
    }
}
