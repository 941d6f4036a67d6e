//! Exponential re-dial backoff with jitter.
//!
//! The peer actors keep one [`Backoff`] per configured peer: after a failed dial
//! or a dropped link they ask [`Backoff::next_delay_ms`] how long to wait before
//! dialling again, call [`Backoff::reset`] once a link is up, and
//! [`Backoff::saturate`] after an authentication refusal. Pure: the caller owns
//! the timer and supplies the randomness for the jitter.

/// Delay before the first re-dial, in milliseconds. The spec's floor: a
/// restarted peer should be back within about a second (250 + 500 ms, jittered).
pub const DEFAULT_BACKOFF_BASE_MS: u64 = 250;

/// Ceiling of the delay, in milliseconds: an unreachable peer is still retried
/// twice a minute, which is cheap and bounds how long a returning peer waits.
pub const DEFAULT_BACKOFF_MAX_MS: u64 = 30_000;

/// Jitter spreads a delay `d` over `[d * 4/5, d * 6/5]` (±20 %), so peers that
/// lost each other at the same moment do not re-dial in lockstep.
const JITTER_LOW_NUMERATOR: u128 = 4;
/// Width of the jitter range as a fraction of `d`: `d * 2/5`.
const JITTER_SPAN_NUMERATOR: u128 = 2;
/// Common denominator of the jitter fractions.
const JITTER_DENOMINATOR: u128 = 5;

/// Doublings beyond which `base * 2^attempt` exceeds any `u64`, whatever the base.
const MAX_DOUBLINGS: u32 = u64::BITS;

/// Re-dial delay state for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// First delay, in milliseconds (at least 1).
    base_ms: u64,
    /// Delay ceiling, in milliseconds (at least `base_ms`).
    max_ms: u64,
    /// Attempts since the last reset: the exponent of the next delay.
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base_ms` and capped at `max_ms`. A zero base is
    /// raised to 1 ms (a zero delay would re-dial in a tight loop forever), and a
    /// ceiling below the base is raised to the base.
    pub fn new(base_ms: u64, max_ms: u64) -> Backoff {
        let base_ms = base_ms.max(1);
        Backoff {
            base_ms,
            max_ms: max_ms.max(base_ms),
            attempt: 0,
        }
    }

    /// Delay before the next attempt, in milliseconds: `d = min(max, base * 2^attempt)`
    /// (no overflow for any attempt count), jittered to
    /// `d*0.8 + (random % (d*0.4 + 1))` (integer arithmetic, rounding down) and
    /// capped at `max`; increments the attempt count. `random` is any uniformly
    /// random `u64` the caller draws.
    pub fn next_delay_ms(&mut self, random: u64) -> u64 {
        let d = u128::from(self.unjittered_ms(self.attempt));
        let low = d * JITTER_LOW_NUMERATOR / JITTER_DENOMINATOR;
        let span = d * JITTER_SPAN_NUMERATOR / JITTER_DENOMINATOR + 1;
        let jittered = low + u128::from(random) % span;
        self.attempt = self.attempt.saturating_add(1);
        // The cap keeps the value at most `max_ms`, so it fits a u64.
        u64::try_from(jittered.min(u128::from(self.max_ms))).unwrap_or(self.max_ms)
    }

    /// Back to the base delay, after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts since the last reset.
    #[cfg(test)]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Jump to the ceiling: the next delays are in `[max*0.8, max]`. Used after
    /// an authentication refusal, so a wrong-secret peer is not re-dialled in a
    /// tight loop. Never lowers the attempt count; [`Backoff::reset`] undoes it.
    pub fn saturate(&mut self) {
        self.attempt = self.attempt.max(self.ceiling_attempt());
    }

    /// `min(max, base * 2^attempt)`, without overflow.
    fn unjittered_ms(&self, attempt: u32) -> u64 {
        if attempt >= MAX_DOUBLINGS {
            return self.max_ms;
        }
        self.base_ms
            .checked_mul(1u64 << attempt)
            .map_or(self.max_ms, |d| d.min(self.max_ms))
    }

    /// The smallest attempt number whose unjittered delay is the ceiling.
    fn ceiling_attempt(&self) -> u32 {
        (0..MAX_DOUBLINGS)
            .find(|&n| self.unjittered_ms(n) >= self.max_ms)
            .unwrap_or(MAX_DOUBLINGS)
    }
}

impl Default for Backoff {
    /// [`DEFAULT_BACKOFF_BASE_MS`] up to [`DEFAULT_BACKOFF_MAX_MS`].
    fn default() -> Backoff {
        Backoff::new(DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_MAX_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Bounds of a jittered delay around an unjittered `d`, capped at `max`.
    fn bounds(d: u64, max: u64) -> (u64, u64) {
        let d = u128::from(d);
        let low = d * 4 / 5;
        let high = (low + d * 2 / 5).min(u128::from(max));
        (low as u64, high as u64)
    }

    #[test]
    fn doubles_from_base_within_jitter_bounds() {
        let expected = [
            250, 500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000,
        ];
        for random in [0, 1, 7, 12_345, u64::MAX / 3, u64::MAX] {
            let mut backoff = Backoff::default();
            for (i, &d) in expected.iter().enumerate() {
                assert_eq!(backoff.attempt(), i as u32);
                let delay = backoff.next_delay_ms(random);
                let (low, high) = bounds(d, DEFAULT_BACKOFF_MAX_MS);
                assert!(
                    (low..=high).contains(&delay),
                    "attempt {i} random {random}: {delay} not in {low}..={high}"
                );
            }
        }
    }

    #[test]
    fn jitter_extremes() {
        // random = 0 gives the low end, random = span - 1 the high end.
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next_delay_ms(0), 200);
        backoff.reset();
        assert_eq!(backoff.next_delay_ms(100), 300);
        backoff.reset();
        assert_eq!(backoff.next_delay_ms(101), 200);
        // At the ceiling the upper half of the range is cut off.
        let mut backoff = Backoff::default();
        backoff.saturate();
        assert_eq!(backoff.next_delay_ms(0), 24_000);
        assert_eq!(backoff.next_delay_ms(12_000), 30_000);
        assert_eq!(backoff.next_delay_ms(6_000), 30_000);
    }

    #[test]
    fn capped_at_max() {
        let mut backoff = Backoff::default();
        for _ in 0..100 {
            assert!(backoff.next_delay_ms(u64::MAX) <= DEFAULT_BACKOFF_MAX_MS);
        }
        assert_eq!(backoff.attempt(), 100);
    }

    #[test]
    fn reset_returns_to_base() {
        let mut backoff = Backoff::default();
        for _ in 0..10 {
            backoff.next_delay_ms(3);
        }
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        let (low, high) = bounds(DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_MAX_MS);
        assert!((low..=high).contains(&backoff.next_delay_ms(99)));
    }

    #[test]
    fn saturate_gives_max_range_delays() {
        let mut backoff = Backoff::default();
        backoff.saturate();
        // 250 * 2^7 = 32000 is the first doubling past 30000.
        assert_eq!(backoff.attempt(), 7);
        for random in [0, 1, 5_000, u64::MAX] {
            let delay = backoff.next_delay_ms(random);
            assert!((24_000..=30_000).contains(&delay), "{delay}");
        }
        // Saturating never moves the attempt count backwards.
        let before = backoff.attempt();
        backoff.saturate();
        assert_eq!(backoff.attempt(), before);
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
    }

    #[test]
    fn degenerate_parameters() {
        let mut zero = Backoff::new(0, 0);
        assert!((0..=1).contains(&zero.next_delay_ms(1)));
        let mut inverted = Backoff::new(1000, 10);
        assert!((800..=1000).contains(&inverted.next_delay_ms(u64::MAX)));
        let mut huge = Backoff::new(u64::MAX, u64::MAX);
        let delay = huge.next_delay_ms(u64::MAX);
        assert!(delay >= u64::MAX / 5 * 4);
        huge.saturate();
        assert_eq!(huge.attempt(), 1);
    }

    #[test]
    fn no_overflow_after_many_attempts() {
        let mut backoff = Backoff::new(1, u64::MAX);
        for i in 0..1000u32 {
            let delay = backoff.next_delay_ms(u64::MAX);
            if i >= 64 {
                assert!(delay >= u64::MAX / 5 * 4);
            }
        }
        assert_eq!(backoff.attempt(), 1000);
        let mut at_end = Backoff {
            attempt: u32::MAX,
            ..Backoff::default()
        };
        assert!(at_end.next_delay_ms(0) <= DEFAULT_BACKOFF_MAX_MS);
        assert_eq!(at_end.attempt(), u32::MAX);
    }

    proptest! {
        #[test]
        fn delays_stay_within_bounds(
            base in 0u64..=100_000,
            max in 0u64..=10_000_000,
            randoms in proptest::collection::vec(any::<u64>(), 1..1000),
            saturate_at in proptest::option::of(0usize..1000),
        ) {
            let mut backoff = Backoff::new(base, max);
            let (base, max) = (base.max(1), max.max(base.max(1)));
            for (i, &random) in randoms.iter().enumerate() {
                if saturate_at == Some(i) {
                    backoff.saturate();
                }
                let attempt = backoff.attempt();
                let d = if attempt >= 64 {
                    max
                } else {
                    base.checked_mul(1 << attempt).map_or(max, |d| d.min(max))
                };
                let delay = backoff.next_delay_ms(random);
                prop_assert!(delay <= max);
                let (low, high) = bounds(d, max);
                prop_assert!((low..=high).contains(&delay), "{} not in {}..={}", delay, low, high);
                if saturate_at.is_some_and(|s| i >= s) {
                    // The jitter floor rounds down: d * 4 / 5.
                    prop_assert!(delay >= max * 4 / 5);
                }
            }
        }

        #[test]
        fn extreme_parameters_never_panic(
            base in any::<u64>(),
            max in any::<u64>(),
            attempt in any::<u32>(),
            random in any::<u64>(),
        ) {
            let mut backoff = Backoff::new(base, max);
            backoff.attempt = attempt;
            let delay = backoff.next_delay_ms(random);
            prop_assert!(delay <= max.max(base).max(1));
            backoff.saturate();
            prop_assert!(backoff.next_delay_ms(random) <= max.max(base).max(1));
        }
    }
}
