//! How many inbound handshakes a node takes on, node-wide and per source, lock-free.
//!
//! Every stranger's first handshake message costs the responder three X25519 operations on
//! the node's one actor thread, so handshakes are budgeted before any of that work starts
//! (WireGuard's "under load" stance, in a simpler form):
//! - at most [`MAX_IN_PROGRESS`] handshakes in progress node-wide, and
//!   [`MAX_IN_PROGRESS_PER_SOURCE`] per source;
//! - a rate per source ([`SOURCE_RATE_PER_S`], burst [`SOURCE_BURST`]) and node-wide
//!   ([`TOTAL_RATE_PER_S`], burst [`TOTAL_BURST`]), as GCRA ("virtual scheduling": one
//!   theoretical arrival time per bucket, updated with a compare-and-swap), so a flood spends
//!   a few percent of a core at most and pings keep flowing.
//!
//! A source is an IPv4 address or an IPv6 /64 (one host usually has a whole /64). Sources are
//! hashed with a per-process random key into [`SOURCE_BUCKETS`] buckets: memory is fixed, an
//! attacker cannot aim at a victim's bucket, and a collision only makes two sources share one
//! budget.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// Handshakes in progress at once, node-wide.
pub const MAX_IN_PROGRESS: usize = 256;
/// Handshakes in progress at once from one source.
pub const MAX_IN_PROGRESS_PER_SOURCE: u32 = 32;
/// New handshakes per second one source may start (after its burst).
pub const SOURCE_RATE_PER_S: u64 = 50;
/// Handshakes one source may start at once (a host starting 60 nodes links them at once).
pub const SOURCE_BURST: u64 = 64;
/// New handshakes per second node-wide (about 3 X25519 operations each, ~105 us apiece on a
/// small VM: at most ~15 % of a core for a flood).
pub const TOTAL_RATE_PER_S: u64 = 500;
/// Handshakes the node may start at once.
pub const TOTAL_BURST: u64 = 200;
/// Source buckets (a power of two).
pub const SOURCE_BUCKETS: usize = 4096;

/// Why a handshake was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many in progress node-wide.
    Busy,
    /// Too many in progress from this source.
    SourceBusy,
    /// This source started too many lately.
    SourceRate,
    /// The node started too many lately.
    Rate,
}

/// A GCRA limiter: the theoretical arrival time of the next conforming event.
#[derive(Debug, Default)]
struct Gcra {
    tat_us: AtomicU64,
}

impl Gcra {
    /// Takes one event at `now_us` if the rate (one per `interval_us`, `burst` at once) allows.
    fn take(&self, now_us: u64, interval_us: u64, burst: u64) -> bool {
        let mut tat = self.tat_us.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_us) + interval_us;
            if next - now_us > burst * interval_us {
                return false;
            }
            match self
                .tat_us
                .compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => tat = actual,
            }
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    in_progress: AtomicU32,
    rate: Gcra,
}

/// See the module docs.
#[derive(Debug)]
pub struct HandshakeBudget {
    in_progress: AtomicUsize,
    rate: Gcra,
    buckets: Box<[Bucket]>,
    hasher: RandomState,
}

/// A handshake in progress; its budget is given back when dropped (also when its actor dies).
#[derive(Debug)]
pub struct Slot {
    budget: Arc<HandshakeBudget>,
    bucket: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.in_progress.fetch_sub(1, Ordering::Relaxed);
        self.budget.buckets[self.bucket]
            .in_progress
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for HandshakeBudget {
    fn default() -> Self {
        HandshakeBudget {
            in_progress: AtomicUsize::new(0),
            rate: Gcra::default(),
            buckets: (0..SOURCE_BUCKETS).map(|_| Bucket::default()).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl HandshakeBudget {
    /// Starts a handshake from `source` at `now_us` (monotonic), or says why not. Nothing is
    /// taken from any budget when refused, except the rate tokens of the checks passed.
    pub fn try_start(self: &Arc<Self>, source: IpAddr, now_us: u64) -> Result<Slot, Refused> {
        let bucket = self.bucket_of(source);
        let b = &self.buckets[bucket];
        if self.in_progress.load(Ordering::Relaxed) >= MAX_IN_PROGRESS {
            return Err(Refused::Busy);
        }
        if b.in_progress.load(Ordering::Relaxed) >= MAX_IN_PROGRESS_PER_SOURCE {
            return Err(Refused::SourceBusy);
        }
        if !b
            .rate
            .take(now_us, 1_000_000 / SOURCE_RATE_PER_S, SOURCE_BURST)
        {
            return Err(Refused::SourceRate);
        }
        if !self
            .rate
            .take(now_us, 1_000_000 / TOTAL_RATE_PER_S, TOTAL_BURST)
        {
            return Err(Refused::Rate);
        }
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        b.in_progress.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            budget: self.clone(),
            bucket,
        })
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(Ordering::Relaxed)
    }

    fn bucket_of(&self, source: IpAddr) -> usize {
        let key: u128 = match source {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            // The /64: a host picks addresses within its prefix at will.
            IpAddr::V6(v6) => {
                if let Some(v4) = v6.to_ipv4_mapped() {
                    u128::from(u32::from(v4))
                } else {
                    (u128::from(v6) >> 64) | (1 << 127)
                }
            }
        };
        (self.hasher.hash_one(key) as usize) & (SOURCE_BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_source_is_limited_in_progress_and_in_rate_others_are_not() {
        let b = Arc::new(HandshakeBudget::default());
        let now = 10_000_000;
        let held: Vec<Slot> = (0..MAX_IN_PROGRESS_PER_SOURCE)
            .map(|_| b.try_start(ip("192.0.2.1"), now).expect("within limits"))
            .collect();
        assert_eq!(
            b.try_start(ip("192.0.2.1"), now).unwrap_err(),
            Refused::SourceBusy
        );
        // Another source (and another /64) is unaffected.
        b.try_start(ip("192.0.2.2"), now).expect("other source");
        b.try_start(ip("2001:db8:1::1"), now).expect("v6");
        drop(held);
        // In progress freed, but part of the burst is spent (the refusal took none).
        let ok = (0..SOURCE_BURST)
            .filter(|_| b.try_start(ip("192.0.2.1"), now).is_ok())
            .count();
        assert_eq!(
            ok,
            (SOURCE_BURST as usize) - MAX_IN_PROGRESS_PER_SOURCE as usize
        );
        assert_eq!(
            b.try_start(ip("192.0.2.1"), now).unwrap_err(),
            Refused::SourceRate
        );
        // One interval later, one more.
        let later = now + 1_000_000 / SOURCE_RATE_PER_S;
        b.try_start(ip("192.0.2.1"), later).expect("refilled");
        assert_eq!(b.in_progress(), 0, "every slot dropped");
    }

    #[test]
    fn addresses_of_one_v6_prefix_share_a_budget() {
        let b = Arc::new(HandshakeBudget::default());
        let held: Vec<Slot> = (0..MAX_IN_PROGRESS_PER_SOURCE)
            .map(|i| {
                b.try_start(ip(&format!("2001:db8:5:6::{:x}", i + 1)), 0)
                    .expect("ok")
            })
            .collect();
        assert_eq!(
            b.try_start(ip("2001:db8:5:6::ffff"), 0).unwrap_err(),
            Refused::SourceBusy
        );
        assert_eq!(held.len(), MAX_IN_PROGRESS_PER_SOURCE as usize);
    }

    #[test]
    fn the_node_wide_rate_holds_across_sources() {
        let b = Arc::new(HandshakeBudget::default());
        let mut ok = 0;
        for i in 0..1000u32 {
            let src = IpAddr::from((0x0a00_0000 + i).to_be_bytes());
            if let Ok(slot) = b.try_start(src, 0) {
                ok += 1;
                drop(slot);
            }
        }
        assert_eq!(ok, TOTAL_BURST as usize);
    }
}
