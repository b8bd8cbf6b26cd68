//! Per-principal rate limit (`MADRE_RATE_LIMIT_PER_S`): a token bucket per
//! principal holding up to one second's worth of requests, refilled
//! continuously. Off when the rate is 0. `/health` and `/openapi.json` need
//! no principal and are never limited.
//!
//! Failed authentications have no principal: [`AuthFailureLimiter`] counts
//! them per client address (`MADRE_AUTH_FAILURES_PER_MIN`), in a table of
//! bounded size.

use std::collections::HashMap;
use std::net::IpAddr;
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

/// Addresses [`AuthFailureLimiter`] tracks at most: about 1 MiB.
pub const MAX_TRACKED_ADDRESSES: usize = 16_384;

/// Failed authentications per client address: a bucket of
/// `per_minute` failures per address, refilled continuously over a minute.
/// An address whose bucket is empty is refused (429) before its token is
/// checked, until one failure's worth has refilled. IPv6 addresses count
/// per /64 (one host's usual share), so a host cannot dodge the limit by
/// cycling through its own addresses. The table holds at most
/// [`MAX_TRACKED_ADDRESSES`]: when it is full, addresses that have fully
/// recovered are forgotten first (they are as good as new), then the one
/// closest to recovery.
pub struct AuthFailureLimiter {
    per_minute: f64,
    max_addresses: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl AuthFailureLimiter {
    /// A limiter allowing `per_minute` failures per address (0: unlimited).
    pub fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_TRACKED_ADDRESSES)
    }

    /// As [`AuthFailureLimiter::new`], tracking at most `max_addresses`.
    pub fn with_capacity(per_minute: u32, max_addresses: usize) -> Self {
        Self {
            per_minute: f64::from(per_minute),
            max_addresses: max_addresses.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn refill_per_second(&self) -> f64 {
        self.per_minute / 60.0
    }

    /// `bucket`'s failures left at `now`.
    fn left(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now
            .saturating_duration_since(bucket.refreshed)
            .as_secs_f64();
        (bucket.tokens + elapsed * self.refill_per_second()).min(self.per_minute)
    }

    /// Ok while `address` may still fail; else how long until it may try
    /// again.
    pub fn check(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.per_minute <= 0.0 {
            return Ok(());
        }
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get(&key(address)) {
            Some(bucket) => {
                let left = self.left(bucket, now);
                if left >= 1.0 {
                    Ok(())
                } else {
                    Err(Duration::from_secs_f64(
                        (1.0 - left) / self.refill_per_second(),
                    ))
                }
            }
            None => Ok(()),
        }
    }

    /// Counts one failed authentication from `address`.
    pub fn record_failure(&self, address: IpAddr, now: Instant) {
        if self.per_minute <= 0.0 {
            return;
        }
        let address = key(address);
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&address) && buckets.len() >= self.max_addresses {
            self.make_room(&mut buckets, now);
        }
        let full = self.per_minute;
        let bucket = buckets.entry(address).or_insert(Bucket {
            tokens: full,
            refreshed: now,
        });
        bucket.tokens = (self.left(bucket, now) - 1.0).max(0.0);
        bucket.refreshed = now;
    }

    /// Forgets the addresses that fully recovered; if none did, the one
    /// closest to recovery.
    fn make_room(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.left(b, now) < self.per_minute);
        if buckets.len() >= self.max_addresses {
            let closest = buckets
                .iter()
                .max_by(|a, b| self.left(a.1, now).total_cmp(&self.left(b.1, now)))
                .map(|(address, _)| *address);
            if let Some(address) = closest {
                buckets.remove(&address);
            }
        }
    }

    /// How many addresses are tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The key an address counts under: IPv4 as is (an IPv4-mapped IPv6
/// address too), IPv6 by its /64.
fn key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
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

    #[test]
    fn failed_authentications_are_limited_per_address() {
        let limiter = AuthFailureLimiter::new(3);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(a, t0).is_ok());
            limiter.record_failure(a, t0);
        }
        let wait = limiter.check(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limiter.check(b, t0).is_ok(), "per address");
        assert!(
            limiter.check(a, t0 + Duration::from_secs(20)).is_ok(),
            "one refilled"
        );
        assert!(AuthFailureLimiter::new(0).check(a, t0).is_ok());

        // IPv6 counts per /64; a mapped IPv4 address as the IPv4 one.
        let limiter = AuthFailureLimiter::new(1);
        limiter.record_failure("2001:db8::1".parse().unwrap(), t0);
        assert!(
            limiter
                .check("2001:db8::ffff:2".parse().unwrap(), t0)
                .is_err()
        );
        assert!(
            limiter
                .check("2001:db8:0:1::1".parse().unwrap(), t0)
                .is_ok()
        );
        limiter.record_failure(a, t0);
        assert!(
            limiter
                .check("::ffff:192.0.2.1".parse().unwrap(), t0)
                .is_err()
        );
    }

    /// A flood of addresses never grows the table past its bound; the
    /// addresses still locked out stay tracked when recovered ones can go.
    #[test]
    fn the_address_table_is_bounded() {
        let limiter = AuthFailureLimiter::with_capacity(2, 100);
        let t0 = Instant::now();
        let locked: IpAddr = "198.51.100.7".parse().unwrap();
        limiter.record_failure(locked, t0);
        limiter.record_failure(locked, t0);
        for i in 0..10_000u32 {
            let address = IpAddr::V4((0x0A00_0000 + i).into());
            limiter.record_failure(address, t0 + Duration::from_secs(61));
            assert!(limiter.tracked() <= 100);
        }
        assert_eq!(limiter.tracked(), 100);
        let later = t0 + Duration::from_secs(1);
        let limiter = AuthFailureLimiter::with_capacity(2, 3);
        limiter.record_failure(locked, t0);
        limiter.record_failure(locked, t0);
        for i in 0..3u32 {
            limiter.record_failure(IpAddr::V4((0x0A00_0000 + i).into()), later);
        }
        assert!(
            limiter.check(locked, later).is_err(),
            "the most limited stays"
        );
    }
}
