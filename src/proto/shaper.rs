//! A byte-rate shaper on simulated time: a token bucket with a bounded queue in front of it.
//!
//! A public node relays each foreign network's data through one (`foreign_relay_bps_limit`).
//! Data within the budget goes at once; data over it waits in a queue of at most one second of
//! the budget and leaves as the budget refills, in order; data that would overflow the queue is
//! refused with how long the sender should wait, so that the origin can be told at once instead
//! of timing out. Dropping over-budget data instead (what the bucket alone does) wastes the
//! budget: each drop costs a closed-loop sender its whole timeout while the bucket refills.

use std::collections::VecDeque;

use crate::proto::token_bucket::TokenBucket;

/// What [`Shaper::offer`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Within the budget: send it now.
    Now(T),
    /// Queued: [`Shaper::release`] hands it back when the budget allows.
    Queued,
    /// The queue is full (or the item is larger than a second of budget): refused; the sender
    /// may try again after `retry_after_ms`.
    Refused {
        /// The item, back to the caller.
        item: T,
        /// About when the queue has room again.
        retry_after_ms: u64,
    },
}

/// See the module docs.
#[derive(Debug)]
pub struct Shaper<T> {
    bucket: TokenBucket,
    queue: VecDeque<(u64, T)>,
    queued_bytes: u64,
    max_queued_bytes: u64,
}

impl<T> Shaper<T> {
    /// A shaper for `rate` bytes per second (0 = unlimited) whose queue holds one second of it.
    pub fn new(rate: u64, now_us: u64) -> Shaper<T> {
        Shaper {
            bucket: TokenBucket::new(rate, now_us),
            queue: VecDeque::new(),
            queued_bytes: 0,
            max_queued_bytes: rate,
        }
    }

    /// Takes on a new rate (a config reload): a full bucket at the new rate, a queue of one
    /// second of it; what waits stays queued (released by the next [`Shaper::release`]).
    pub fn set_rate(&mut self, rate: u64, now_us: u64) {
        if rate != self.bucket.rate() {
            self.bucket = TokenBucket::new(rate, now_us);
            self.max_queued_bytes = rate;
        }
    }

    /// The rate, bytes per second (0 = unlimited).
    pub fn rate(&self) -> u64 {
        self.bucket.rate()
    }

    /// Items and bytes waiting.
    pub fn queued(&self) -> (usize, u64) {
        (self.queue.len(), self.queued_bytes)
    }

    /// Offers an item of `bytes` at `now_us`.
    pub fn offer(&mut self, now_us: u64, bytes: u64, item: T) -> Admit<T> {
        let rate = self.bucket.rate();
        if rate == 0 {
            return Admit::Now(item);
        }
        // Nothing may overtake what waits.
        if self.queue.is_empty() && self.bucket.try_take(now_us, bytes) {
            return Admit::Now(item);
        }
        if bytes <= rate && self.queued_bytes + bytes <= self.max_queued_bytes {
            self.queue.push_back((bytes, item));
            self.queued_bytes += bytes;
            return Admit::Queued;
        }
        // Room comes back as the queue drains: about its length at the rate.
        let retry_after_ms = (self.queued_bytes.max(bytes) * 1000).div_ceil(rate).max(1);
        Admit::Refused {
            item,
            retry_after_ms,
        }
    }

    /// Takes, in order, the queued items the budget allows at `now_us`.
    pub fn release(&mut self, now_us: u64) -> Vec<T> {
        let mut out = Vec::new();
        while let Some((bytes, _)) = self.queue.front() {
            if !self.bucket.try_take(now_us, *bytes) {
                break;
            }
            let (bytes, item) = self.queue.pop_front().expect("front exists");
            self.queued_bytes -= bytes;
            out.push(item);
        }
        out
    }

    /// When the first queued item can go (monotonic us), if anything waits.
    pub fn next_release_us(&self, now_us: u64) -> Option<u64> {
        let (bytes, _) = self.queue.front()?;
        Some(now_us + self.bucket.wait_us(now_us, *bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn within_the_budget_goes_at_once_then_queues_then_refuses() {
        let mut s = Shaper::new(1000, 0);
        assert_eq!(s.offer(0, 600, 'a'), Admit::Now('a'));
        assert_eq!(s.offer(0, 600, 'b'), Admit::Queued, "over the burst: waits");
        assert_eq!(s.offer(0, 400, 'c'), Admit::Queued);
        // The queue holds one second (1000 bytes): 1000 are queued, one more byte is refused.
        assert_eq!(
            s.offer(0, 1, 'd'),
            Admit::Refused {
                item: 'd',
                retry_after_ms: 1000
            }
        );
        assert_eq!(s.queued(), (2, 1000));
        // b needs 200 more bytes of budget: 200 ms.
        assert_eq!(s.next_release_us(0), Some(200_000));
        assert!(s.release(199_999).is_empty());
        assert_eq!(s.release(200_000), vec!['b']);
        assert_eq!(s.release(600_000), vec!['c']);
        assert_eq!(s.queued(), (0, 0));
        assert_eq!(s.next_release_us(600_000), None);
    }

    #[test]
    fn nothing_overtakes_the_queue_and_oversized_items_are_refused() {
        let mut s = Shaper::new(1000, 0);
        assert_eq!(s.offer(0, 1000, 1), Admit::Now(1));
        assert_eq!(s.offer(0, 500, 2), Admit::Queued);
        // 600 ms later the bucket holds 600: enough for a 100-byte item, but 2 waits first.
        assert_eq!(s.offer(600_000, 100, 3), Admit::Queued);
        assert_eq!(s.release(600_000), vec![2, 3]);
        assert!(matches!(
            s.offer(600_000, 1001, 4),
            Admit::Refused { item: 4, .. }
        ));
    }

    /// Offered at three times the rate for 20 s, what leaves is the rate (within 1 %) plus the
    /// burst, in order, and the queue never holds more than a second.
    #[test]
    fn a_long_overload_leaves_at_the_rate() {
        let rate = 200_000;
        let mut s = Shaper::new(rate, 0);
        let (mut sent, mut next, mut t) = (0u64, 0u64, 0u64);
        let mut order = Vec::new();
        while t < 20 * S {
            match s.offer(t, 8_000, next) {
                Admit::Now(i) => {
                    sent += 8_000;
                    order.push(i);
                }
                Admit::Queued => {}
                Admit::Refused { .. } => {}
            }
            next += 1;
            for i in s.release(t) {
                sent += 8_000;
                order.push(i);
            }
            assert!(s.queued().1 <= rate);
            t += 8_000 * S / (3 * rate);
        }
        let expected = rate * 21;
        let diff = sent.abs_diff(expected) as f64 / expected as f64;
        assert!(diff < 0.01, "sent {sent}, expected about {expected}");
        assert!(order.windows(2).all(|w| w[0] < w[1]), "in order");
    }

    #[test]
    fn unlimited_never_queues() {
        let mut s = Shaper::new(0, 0);
        assert_eq!(s.offer(0, u64::MAX, 'x'), Admit::Now('x'));
        assert_eq!(s.next_release_us(0), None);
    }
}
