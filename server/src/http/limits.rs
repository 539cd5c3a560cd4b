//! Token-bucket rate limits, per key (an IP address, a widget site), and the back-off after
//! failed sign-ins (per account and per address).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Token buckets: `per_minute` requests a minute per key, in bursts of up to `per_minute`.
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_minute: u32,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: std::hash::Hash + Eq + Clone> RateLimiter<K> {
    /// `per_minute` 0 switches the limit off.
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `key`'s bucket, or says how long until one is available.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let rate = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > 100_000 {
            // Forget the keys whose buckets have refilled: they lose nothing.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < capacity
            });
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

/// Failed sign-ins per key: after `free` failures in a row each further failure locks the key
/// for twice as long as the last (1 s, 2 s, 4 s … up to [`MAX_LOCK`]); a success clears it.
/// A locked key is refused before any password is checked.
#[derive(Debug)]
pub struct LoginThrottle<K> {
    free: u32,
    failures: Mutex<HashMap<K, (u32, Instant)>>,
}

/// The longest a key stays locked after failed sign-ins.
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);

impl<K: std::hash::Hash + Eq + Clone> LoginThrottle<K> {
    pub fn new(free: u32) -> Self {
        Self {
            free,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock_after(&self, failures: u32) -> Duration {
        match failures.checked_sub(self.free) {
            None | Some(0) => Duration::ZERO,
            Some(extra) => Duration::from_secs(1u64 << (extra - 1).min(20)).min(MAX_LOCK),
        }
    }

    /// `Err(wait)` while `key` is locked.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match failures.get(key) {
            Some(&(count, at)) => {
                let until = at + self.lock_after(count);
                let now = Instant::now();
                if until > now {
                    Err(until - now)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Counts a failed sign-in for `key`.
    pub fn failed(&self, key: &K) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if failures.len() > 100_000 {
            // Forget keys whose last failure is older than the longest lock.
            failures.retain(|_, (_, at)| now.duration_since(*at) < MAX_LOCK);
        }
        let entry = failures.entry(key.clone()).or_insert((0, now));
        if now.duration_since(entry.1) > MAX_LOCK {
            entry.0 = 0;
        }
        *entry = (entry.0.saturating_add(1), now);
    }

    /// A successful sign-in clears `key`.
    pub fn succeeded(&self, key: &K) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_sign_ins_lock_a_key_for_longer_and_longer() {
        let throttle = LoginThrottle::new(3);
        for _ in 0..3 {
            assert!(throttle.check(&"ann").is_ok());
            throttle.failed(&"ann");
        }
        // Three free failures; the fourth locks for 1 s, the fifth for 2 s.
        assert!(throttle.check(&"ann").is_ok());
        throttle.failed(&"ann");
        let wait = throttle.check(&"ann").unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::from_millis(500));
        throttle.failed(&"ann");
        let wait = throttle.check(&"ann").unwrap_err();
        assert!(wait > Duration::from_millis(1500), "{wait:?}");
        assert!(throttle.check(&"bob").is_ok());
        for _ in 0..100 {
            throttle.failed(&"ann");
        }
        assert!(throttle.check(&"ann").unwrap_err() <= MAX_LOCK);
        throttle.succeeded(&"ann");
        assert!(throttle.check(&"ann").is_ok());
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_how_long_to_wait() {
        let limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert!(limiter.check(&"a").is_ok());
        }
        let wait = limiter.check(&"a").unwrap_err();
        assert!(
            wait > Duration::from_secs(15) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another key has its own bucket; 0 means no limit.
        assert!(limiter.check(&"b").is_ok());
        let off = RateLimiter::new(0);
        for _ in 0..1000 {
            assert!(off.check(&"a").is_ok());
        }
    }
}
