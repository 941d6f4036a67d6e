//! Sliding replay window over record counters.
//!
//! Used by [`super::record::Opener`] on every transport: a record's counter is checked
//! before decryption and marked after, so a record is accepted at most once even when
//! UDP reorders or duplicates datagrams. The design is WireGuard's, from RFC 6479: a ring
//! of 64-bit blocks with one block more than the window, so moving the window forward
//! only zeroes whole blocks and never shifts bits.

/// How many counters behind the highest one seen are still accepted.
///
/// 2048 is WireGuard's window (`COUNTER_WINDOW_SIZE`): enough for the reordering of a busy
/// link at gigabit rates, in under 300 bytes of state.
pub const WINDOW_COUNTERS: u64 = 2048;

/// Bits per ring block: one `u64`.
const BLOCK_BITS: u64 = u64::BITS as u64;

/// Blocks in the ring: the window's blocks plus one being recycled (RFC 6479 section 2).
const RING_BLOCKS: usize = (WINDOW_COUNTERS / BLOCK_BITS) as usize + 1;

/// Which record counters have been accepted, over the last [`WINDOW_COUNTERS`] counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Highest counter accepted so far; `None` until the first one.
    highest: Option<u64>,
    /// Bit `c % 64` of block `(c / 64) % RING_BLOCKS` is set when counter `c` (within the
    /// window) was accepted.
    ring: [u64; RING_BLOCKS],
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    /// An empty window: every counter is acceptable.
    pub fn new() -> Self {
        ReplayWindow {
            highest: None,
            ring: [0; RING_BLOCKS],
        }
    }

    /// Whether [`ReplayWindow::update`] would accept `counter`, without marking it.
    ///
    /// Cheap; the record layer calls it before spending time on decryption.
    pub fn check(&self, counter: u64) -> bool {
        let Some(highest) = self.highest else {
            return true;
        };
        if counter > highest {
            return true;
        }
        if highest - counter >= WINDOW_COUNTERS {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] & bit == 0
    }

    /// Accepts and marks `counter`; `false` if it is a duplicate or behind the window.
    ///
    /// A counter ahead of the highest moves the window forward, forgetting counters that
    /// fall out of it.
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        match self.highest {
            Some(highest) if counter <= highest => {}
            previous => {
                self.advance(previous, counter);
                self.highest = Some(counter);
            }
        }
        let (block, bit) = Self::position(counter);
        self.ring[block] |= bit;
        true
    }

    /// Zeroes the blocks that the window enters when its top moves from `previous` to
    /// `counter`.
    fn advance(&mut self, previous: Option<u64>, counter: u64) {
        let new_block = counter / BLOCK_BITS;
        let Some(previous) = previous else {
            // The ring is still all zeroes.
            return;
        };
        let old_block = previous / BLOCK_BITS;
        let entered = (new_block - old_block).min(RING_BLOCKS as u64);
        for step in 1..=entered {
            // `new_block - entered + step` never exceeds `new_block`: no overflow.
            let block = new_block - entered + step;
            self.ring[Self::ring_index(block)] = 0;
        }
    }

    /// Ring index and bit mask of `counter`.
    fn position(counter: u64) -> (usize, u64) {
        let block = Self::ring_index(counter / BLOCK_BITS);
        (block, 1 << (counter % BLOCK_BITS))
    }

    /// Ring index of absolute block number `block`.
    fn ring_index(block: u64) -> usize {
        // The remainder is below RING_BLOCKS (33), so it fits any usize.
        (block % RING_BLOCKS as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_is_accepted_once() {
        let mut w = ReplayWindow::new();
        for c in 0..10_000 {
            assert!(w.check(c));
            assert!(w.update(c), "{c}");
            assert!(!w.check(c));
            assert!(!w.update(c), "{c} twice");
        }
    }

    #[test]
    fn reordered_within_window_is_accepted() {
        let mut w = ReplayWindow::new();
        assert!(w.update(1000));
        for c in (0..1000).rev() {
            assert!(w.update(c), "{c}");
        }
        for c in 0..=1000 {
            assert!(!w.update(c), "{c} replayed");
        }
        assert!(w.update(1001));
    }

    #[test]
    fn duplicate_is_rejected() {
        let mut w = ReplayWindow::new();
        assert!(w.update(0));
        assert!(!w.update(0));
        assert!(w.update(5));
        assert!(w.update(3));
        assert!(!w.update(3));
        assert!(!w.update(5));
    }

    #[test]
    fn too_old_is_rejected() {
        let mut w = ReplayWindow::new();
        assert!(w.update(5000));
        assert!(!w.check(5000 - WINDOW_COUNTERS));
        assert!(!w.update(5000 - WINDOW_COUNTERS));
        assert!(w.update(5000 - WINDOW_COUNTERS + 1));
        assert!(!w.update(0));
    }

    #[test]
    fn big_jump_moves_the_window_and_forgets_old_bits() {
        let mut w = ReplayWindow::new();
        for c in 0..64 {
            assert!(w.update(c));
        }
        // Counter 33 * 64 lands in the same ring slot as block 0.
        let jump = RING_BLOCKS as u64 * BLOCK_BITS;
        assert!(w.update(jump));
        // Everything in the window below the jump is fresh, even where block 0's bits
        // used to be.
        for c in (jump - WINDOW_COUNTERS + 1)..jump {
            assert!(w.check(c), "{c}");
        }
        assert!(!w.check(0));
        // A jump far beyond the ring.
        assert!(w.update(1 << 40));
        for c in ((1 << 40) - WINDOW_COUNTERS + 1)..(1 << 40) {
            assert!(w.check(c), "{c}");
        }
        assert!(!w.check(jump));
    }

    #[test]
    fn u64_edges() {
        let mut w = ReplayWindow::new();
        assert!(w.update(0));
        assert!(w.update(u64::MAX));
        assert!(!w.update(u64::MAX));
        assert!(!w.update(0));
        assert!(!w.check(u64::MAX - WINDOW_COUNTERS));
        assert!(w.update(u64::MAX - WINDOW_COUNTERS + 1));
        assert!(w.update(u64::MAX - 1));
        assert!(!w.update(u64::MAX - 1));

        let mut w = ReplayWindow::new();
        assert!(w.update(u64::MAX));
        assert!(!w.update(u64::MAX));
        assert!(w.update(u64::MAX - 1));
    }

    #[test]
    fn first_counter_may_be_anything() {
        let mut w = ReplayWindow::new();
        assert!(w.update(77_777));
        assert!(w.update(77_776));
        assert!(!w.update(77_777 - WINDOW_COUNTERS));
    }

    proptest! {
        /// The window agrees with a plain set-plus-threshold model.
        #[test]
        fn matches_a_reference_model(
            steps in prop::collection::vec((0u64..6000, any::<bool>()), 1..400),
        ) {
            let mut w = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut highest: Option<u64> = None;
            for (c, mutate) in steps {
                let fresh = !seen.contains(&c)
                    && highest.is_none_or(|h| c > h || h - c < WINDOW_COUNTERS);
                prop_assert_eq!(w.check(c), fresh, "check {}", c);
                if mutate {
                    prop_assert_eq!(w.update(c), fresh, "update {}", c);
                    if fresh {
                        seen.insert(c);
                        highest = Some(highest.map_or(c, |h| h.max(c)));
                    }
                }
            }
        }
    }
}
