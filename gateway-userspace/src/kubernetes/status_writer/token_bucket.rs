//! A token bucket, because kube has no client-side rate limiter: a flapping config makes
//! the writer wait instead of hammering the API server.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens, refilled at `per_second`.
    pub(super) fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        TokenBucket {
            per_second: per_second.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            refilled: now,
        }
    }

    /// Takes a token, or says how long until there is one.
    pub(super) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled = self.refilled.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_writes_are_spaced_at_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20, start);
        for _ in 0..20 {
            assert_eq!(bucket.take(start), Ok(()));
        }
        let wait = bucket.take(start).expect_err("the burst is spent");
        assert!(
            wait > Duration::from_millis(99) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(bucket.take(start + wait), Ok(()));
        // One second refills ten tokens, not more.
        let later = start + wait + Duration::from_secs(1);
        for _ in 0..10 {
            assert_eq!(bucket.take(later), Ok(()));
        }
        assert!(bucket.take(later).is_err());
    }

    #[test]
    fn an_idle_bucket_refills_only_up_to_its_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20, start);
        let much_later = start + Duration::from_secs(3600);
        for _ in 0..20 {
            assert_eq!(bucket.take(much_later), Ok(()));
        }
        assert!(bucket.take(much_later).is_err());
    }
}
