//! Node-wide counters and histograms, shown on `GET /status` and `GET /metrics`.
//!
//! Every actor that moves bytes or refuses a link bumps a counter here. They are plain relaxed
//! atomics behind one `Arc`: counting must never cost a message hop or a lock on the data path.
//! The two histograms (script run time, `/send` latency) are atomics too: fixed buckets, one
//! relaxed add per observation.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// One monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why a link was refused or closed by this node; one counter each.
#[derive(Debug, Default)]
pub struct Refused {
    /// The peer's membership proof did not verify: it does not know the network secret.
    pub wrong_secret: Counter,
    /// The peer belongs to another network and this node does not relay for it.
    pub foreign: Counter,
    /// A frame failed to decrypt or decode, or the bytes were not our protocol at all.
    pub bad_frame: Counter,
    /// A frame was larger than `max_frame_bytes`.
    pub oversize: Counter,
    /// The Noise handshake failed or timed out.
    pub handshake: Counter,
    /// A node presented an identity key other than the one known for its id.
    pub key_mismatch: Counter,
    /// The peer's protocol version or hello was unacceptable (including a node dialling itself).
    pub protocol: Counter,
    /// A second link to the same node on the same transport lost the duplicate rule.
    pub duplicate: Counter,
    /// The network has a CA and the node had no valid certificate for its id and key.
    pub uncertified: Counter,
    /// Too many connections were still handshaking; the newest was dropped.
    pub overload: Counter,
}

/// A histogram of durations over fixed bucket bounds (seconds), lock-free.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds, ascending; the `+Inf` bucket is implicit.
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds` (`+Inf`).
    buckets: Box<[AtomicU64]>,
    /// Sum of observations, microseconds.
    sum_us: AtomicU64,
}

/// Bucket bounds of [`Metrics::send_duration`]: 0.5 ms to a minute (a relayed round trip is
/// well under a millisecond on a LAN, a remote script may run for its whole timeout).
pub const SEND_DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Bucket bounds of [`Metrics::script_duration`]: 5 ms (an `echo`) to 5 minutes.
pub const SCRIPT_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

impl Histogram {
    /// An empty histogram over `bounds` (ascending, in seconds).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let s = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < s);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(
            d.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Sum (seconds), count, and the buckets `(upper bound, observations in it)` (not
    /// cumulative: the encoder sums them) ending with the `+Inf` one, as `prometheus-client`
    /// takes them.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            total += n;
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, total, buckets)
    }
}

/// Script runs by outcome.
#[derive(Debug, Default)]
pub struct ScriptRuns {
    /// Exited with status 0.
    pub success: Counter,
    /// Exited with another status (or a signal).
    pub failure: Counter,
    /// Killed at `script_timeout_ms`.
    pub timed_out: Counter,
    /// Not run: refused (busy, not allowed) or could not start.
    pub error: Counter,
}

impl ScriptRuns {
    /// `(outcome label, count)` for each outcome.
    pub fn by_outcome(&self) -> [(&'static str, u64); 4] {
        [
            ("success", self.success.get()),
            ("failure", self.failure.get()),
            ("timed_out", self.timed_out.get()),
            ("error", self.error.get()),
        ]
    }
}

/// All counters of one node.
#[derive(Debug)]
pub struct Metrics {
    /// Authenticated frames received on links.
    pub frames_in: Counter,
    /// Records sent on links (each chunk of a large frame counts).
    pub frames_out: Counter,
    /// Bytes received on links (as on the wire, including framing and handshakes).
    pub bytes_in: Counter,
    /// Bytes sent on links.
    pub bytes_out: Counter,
    /// Links that reached Active.
    pub links_established: Counter,
    /// Links that were closed for any reason after or during set-up.
    pub links_closed: Counter,
    /// UDP datagrams of ours (not QUIC) dropped: unparseable, unknown type, or a full queue.
    pub datagrams_dropped: Counter,
    /// Data or link-state frames dropped because the relay's queue or a link's data queue was
    /// full.
    pub frames_dropped: Counter,
    /// QUIC Retry packets (address validation) sent to new connections while under load.
    pub cookies_sent: Counter,
    /// Links refused or closed by this node, by reason.
    pub refused: Refused,
    /// Links the remote side refused, by the reason it gave (we learn it from its `close`).
    pub refused_by_peer: Refused,
    /// Scripts this node ran for others (and itself), by outcome.
    pub script_runs: ScriptRuns,
    /// How long scripts ran, start to exit (or kill).
    pub script_duration: Histogram,
    /// How long `POST /send` took to answer, whatever the answer.
    pub send_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            links_established: Counter::default(),
            links_closed: Counter::default(),
            datagrams_dropped: Counter::default(),
            frames_dropped: Counter::default(),
            cookies_sent: Counter::default(),
            refused: Refused::default(),
            refused_by_peer: Refused::default(),
            script_runs: ScriptRuns::default(),
            script_duration: Histogram::new(SCRIPT_DURATION_BUCKETS),
            send_duration: Histogram::new(SEND_DURATION_BUCKETS),
        }
    }
}

/// A point-in-time copy of [`Metrics`] for the status endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub frames_in: u64,
    pub frames_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub links_established: u64,
    pub links_closed: u64,
    pub datagrams_dropped: u64,
    pub frames_dropped: u64,
    pub cookies_sent: u64,
    pub links_refused: RefusedSnapshot,
    pub links_refused_by_peer: RefusedSnapshot,
    /// Script runs by outcome (`success`, `failure`, `timed_out`, `error`).
    pub script_runs: std::collections::BTreeMap<&'static str, u64>,
}

/// Copy of [`Refused`].
#[derive(Debug, Clone, Serialize)]
pub struct RefusedSnapshot {
    pub wrong_secret: u64,
    pub foreign: u64,
    pub bad_frame: u64,
    pub oversize: u64,
    pub handshake: u64,
    pub key_mismatch: u64,
    pub protocol: u64,
    pub duplicate: u64,
    pub uncertified: u64,
    pub overload: u64,
}

impl RefusedSnapshot {
    /// `(reason label, count)` for each reason.
    pub fn by_reason(&self) -> [(&'static str, u64); 10] {
        [
            ("wrong_secret", self.wrong_secret),
            ("foreign", self.foreign),
            ("bad_frame", self.bad_frame),
            ("oversize", self.oversize),
            ("handshake", self.handshake),
            ("key_mismatch", self.key_mismatch),
            ("protocol", self.protocol),
            ("duplicate", self.duplicate),
            ("uncertified", self.uncertified),
            ("overload", self.overload),
        ]
    }
}

impl Refused {
    fn snapshot(&self) -> RefusedSnapshot {
        RefusedSnapshot {
            wrong_secret: self.wrong_secret.get(),
            foreign: self.foreign.get(),
            bad_frame: self.bad_frame.get(),
            oversize: self.oversize.get(),
            handshake: self.handshake.get(),
            key_mismatch: self.key_mismatch.get(),
            protocol: self.protocol.get(),
            duplicate: self.duplicate.get(),
            uncertified: self.uncertified.get(),
            overload: self.overload.get(),
        }
    }
}

impl Metrics {
    /// Copies every counter.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            frames_in: self.frames_in.get(),
            frames_out: self.frames_out.get(),
            bytes_in: self.bytes_in.get(),
            bytes_out: self.bytes_out.get(),
            links_established: self.links_established.get(),
            links_closed: self.links_closed.get(),
            datagrams_dropped: self.datagrams_dropped.get(),
            frames_dropped: self.frames_dropped.get(),
            cookies_sent: self.cookies_sent.get(),
            links_refused: self.refused.snapshot(),
            links_refused_by_peer: self.refused_by_peer.snapshot(),
            script_runs: self.script_runs.by_outcome().into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_count_per_bucket_and_end_at_inf() {
        let h = Histogram::new(&[0.01, 0.1]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(10)); // on a bound: that bucket (le)
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(3));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert!((sum - 3.065).abs() < 1e-9, "{sum}");
        assert_eq!(buckets, vec![(0.01, 2), (0.1, 1), (f64::INFINITY, 1)]);
    }
}
