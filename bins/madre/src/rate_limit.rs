//! Per-principal rate limit (`MADRE_RATE_LIMIT_PER_S`): a token bucket per
//! principal holding up to one second's worth of requests, refilled
//! continuously. Off when the rate is 0. `/health` and `/openapi.json` need
//! no principal and are never limited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Bucket {
    tokens: f64,
    refreshed: Instant,
}

/// The buckets of every principal seen.
pub struct RateLimiter {
    per_second: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// A limiter allowing `per_second` requests per principal (0: unlimited).
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `principal`; when none is left, answers how long
    /// until one is.
    pub fn check(&self, principal: &str, now: Instant) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(principal.to_owned()).or_insert(Bucket {
            tokens: self.per_second,
            refreshed: now,
        });
        let elapsed = now
            .saturating_duration_since(bucket.refreshed)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.per_second);
        bucket.refreshed = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - bucket.tokens) / self.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_then_the_refill_rate() {
        let limiter = RateLimiter::new(5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limiter.check("alice", t0).is_ok());
        }
        let wait = limiter.check("alice", t0).unwrap_err();
        assert!(wait <= Duration::from_millis(200) && wait > Duration::ZERO);
        assert!(
            limiter.check("bob", t0).is_ok(),
            "buckets are per principal"
        );
        assert!(
            limiter
                .check("alice", t0 + Duration::from_millis(210))
                .is_ok()
        );
        assert!(RateLimiter::new(0).check("x", t0).is_ok());
    }
}
