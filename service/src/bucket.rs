//! A token bucket: `rate` tokens a second, at most `burst` held, on tokio's clock (so tests
//! pause and advance it). The one rate limit behind the proxy's per-address and per-player
//! limits, a UDP flow's datagrams, and a local game server's output.

use tokio::time::Instant;

/// One bucket; the rate and burst are its owner's, passed on each take.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens.
    pub fn full(burst: f64) -> TokenBucket {
        TokenBucket {
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Refills for the time since the last take, then takes `n` tokens if there are that many.
    pub fn take(&mut self, n: f64, rate: f64, burst: f64) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full again by now (it may be forgotten).
    pub fn refilled(&self, rate: f64, burst: f64) -> bool {
        Instant::now().duration_since(self.at).as_secs_f64() * rate >= burst
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn takes_up_to_the_burst_then_refills_at_the_rate_never_past_the_burst() {
        let mut bucket = TokenBucket::full(4.0);
        assert!((0..4).all(|_| bucket.take(1.0, 2.0, 4.0)));
        assert!(!bucket.take(1.0, 2.0, 4.0), "burst spent");
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!bucket.take(1.0, 2.0, 4.0), "not a whole token yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(bucket.take(1.0, 2.0, 4.0), "2 a second: one every 500 ms");
        assert!(!bucket.refilled(2.0, 4.0));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(bucket.refilled(2.0, 4.0));
        assert!(
            bucket.take(4.0, 2.0, 4.0) && !bucket.take(1.0, 2.0, 4.0),
            "refills to the burst, no more"
        );
        assert!(!bucket.take(5.0, 2.0, 4.0), "never more than the burst at once");
    }
}
