//! A token bucket on simulated time: `foreign_relay_bps_limit` per foreign network.
//!
//! EasyTier's semantics: relayed data of one foreign network may use `rate` bytes per second
//! with about one second of burst; data over the budget is dropped (the caller counts it);
//! control traffic never goes through the bucket. Small enough to own rather than pull in a
//! crate (governor counts cells, not bytes, and wants a clock of its own).

/// Bytes allowed per second, refilled continuously.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Refill rate, bytes per second (0 = unlimited).
    rate: u64,
    /// Bucket size: one second of traffic.
    capacity: u64,
    /// Current tokens in millionths of a byte, so refilling at any rate over any number of
    /// microseconds is exact.
    micro_tokens: u128,
    /// When tokens were last added, microseconds.
    last_us: u64,
}

impl TokenBucket {
    /// A full bucket for `rate` bytes per second (0 means unlimited), at time `now_us`.
    pub fn new(rate: u64, now_us: u64) -> TokenBucket {
        TokenBucket {
            rate,
            capacity: rate,
            micro_tokens: u128::from(rate) * 1_000_000,
            last_us: now_us,
        }
    }

    /// Takes `bytes` if the budget allows at `now_us`; false means drop.
    pub fn try_take(&mut self, now_us: u64, bytes: u64) -> bool {
        if self.rate == 0 {
            return true;
        }
        let elapsed = now_us.saturating_sub(self.last_us);
        self.last_us = self.last_us.max(now_us);
        let cap = u128::from(self.capacity) * 1_000_000;
        self.micro_tokens =
            (self.micro_tokens + u128::from(elapsed) * u128::from(self.rate)).min(cap);
        let need = u128::from(bytes) * 1_000_000;
        if need <= self.micro_tokens {
            self.micro_tokens -= need;
            true
        } else {
            false
        }
    }

    /// Microseconds from `now_us` until `bytes` could be taken (0 if now; unlimited: 0). A
    /// request larger than the bucket waits for a full bucket.
    pub fn wait_us(&self, now_us: u64, bytes: u64) -> u64 {
        if self.rate == 0 {
            return 0;
        }
        let elapsed = now_us.saturating_sub(self.last_us);
        let cap = u128::from(self.capacity) * 1_000_000;
        let have = (self.micro_tokens + u128::from(elapsed) * u128::from(self.rate)).min(cap);
        let need = (u128::from(bytes) * 1_000_000).min(cap);
        // Tokens grow by `rate` millionths of a byte per microsecond.
        need.saturating_sub(have).div_ceil(u128::from(self.rate)) as u64
    }

    /// The configured rate (bytes per second; 0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn unlimited_takes_everything() {
        let mut b = TokenBucket::new(0, 0);
        assert!(b.try_take(0, u64::MAX));
    }

    #[test]
    fn one_second_of_burst_then_the_rate() {
        let mut b = TokenBucket::new(1000, 0);
        assert!(b.try_take(0, 1000));
        assert!(!b.try_take(0, 1));
        // Half a second refills half the budget.
        assert!(b.try_take(S / 2, 500));
        assert!(!b.try_take(S / 2, 1));
    }

    #[test]
    fn long_runs_hold_the_rate_within_a_percent() {
        // Offer 1200-byte packets at 3x the rate for 20 s; what passes is rate x 20 s plus the
        // initial burst.
        let rate = 200_000;
        let mut b = TokenBucket::new(rate, 0);
        let mut passed = 0u64;
        let mut t = 0;
        while t < 20 * S {
            if b.try_take(t, 1200) {
                passed += 1200;
            }
            t += 1200 * S / (3 * rate);
        }
        let expected = rate * 21;
        let diff = passed.abs_diff(expected) as f64 / expected as f64;
        assert!(diff < 0.01, "passed {passed}, expected about {expected}");
    }

    #[test]
    fn the_bucket_never_exceeds_one_second() {
        let mut b = TokenBucket::new(1000, 0);
        assert!(b.try_take(100 * S, 1000));
        assert!(!b.try_take(100 * S, 1));
    }

    #[test]
    fn wait_is_the_time_until_enough_tokens() {
        let mut b = TokenBucket::new(1000, 0);
        assert_eq!(b.wait_us(0, 1000), 0);
        assert!(b.try_take(0, 1000));
        assert_eq!(b.wait_us(0, 250), S / 4);
        assert_eq!(b.wait_us(S / 8, 250), S / 8);
        assert_eq!(b.wait_us(0, 5000), S, "more than the bucket: a full bucket");
        assert_eq!(TokenBucket::new(0, 0).wait_us(0, u64::MAX), 0);
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let mut b = TokenBucket::new(1000, 10 * S);
        assert!(b.try_take(10 * S, 1000));
        assert!(!b.try_take(5 * S, 1));
    }
}
