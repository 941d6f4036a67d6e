//! Node-wide counters, shown on `GET /status`.
//!
//! Every actor that moves bytes or refuses a link bumps a counter here. They are plain relaxed
//! atomics behind one `Arc`: counting must never cost a message hop or a lock on the data path.

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

/// All counters of one node.
#[derive(Debug, Default)]
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
        }
    }
}
