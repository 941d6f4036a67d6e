//! The pure wire layer: every byte layout msgtier puts on a link, and nothing else.
//!
//! Links run a Noise XX handshake (done elsewhere) that yields a send key and a receive
//! key. From then on every message on a TCP or WebSocket link is a *record*: one
//! [`frame::Frame`] encoded with MessagePack ([`frame`]) and sealed with ChaCha20-Poly1305
//! ([`record`], with a sliding [`replay`] window: control records may overtake data). UDP links
//! are QUIC connections (`crate::quic`) that carry the same frames on streams; the only
//! datagrams of our own on a UDP socket are hole-punch probes ([`udp::Datagram`]).
//!
//! Everything here is pure: no sockets, no clocks (time comes in as `now_ms` arguments),
//! no actors. The transports and peer actors call into it; the fuzz targets in `fuzz/`
//! feed it arbitrary bytes.
//!
//! The limits below are enforced by [`frame::Frame::decode`] so that a peer can never
//! make us hold oversized identities or address lists.

pub mod frame;

/// Appends a MessagePack `bin` header for `len` bytes in its shortest form (bin8, bin16 or
/// bin32), as rmp-serde writes it; the bytes follow.
pub(crate) fn write_bin_header(out: &mut Vec<u8>, len: usize) {
    match len {
        n if n <= usize::from(u8::MAX) => out.extend_from_slice(&[0xc4, n as u8]),
        n if n <= usize::from(u16::MAX) => {
            out.push(0xc5);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0xc6);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

/// Splits a MessagePack `bin` value (any width) off the front of `bytes`: its contents and
/// what follows; `None` if `bytes` does not start with a whole one.
pub(crate) fn split_bin(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&marker, rest) = bytes.split_first()?;
    let (len, rest) = match marker {
        0xc4 => {
            let (&n, r) = rest.split_first()?;
            (usize::from(n), r)
        }
        0xc5 => {
            let (n, r) = rest.split_first_chunk::<2>()?;
            (usize::from(u16::from_be_bytes(*n)), r)
        }
        0xc6 => {
            let (n, r) = rest.split_first_chunk::<4>()?;
            (u32::from_be_bytes(*n) as usize, r)
        }
        _ => return None,
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}
pub mod record;
pub mod replay;
pub mod shared;
pub mod udp;

/// Longest node id, network name or software version, in bytes (UTF-8).
///
/// 64 bytes fits a hex-encoded 32-byte key or any human-chosen name with room to spare
/// while keeping a `Hello` small.
pub const MAX_NAME_BYTES: usize = 64;

/// Longest address URL (`tcp://[v6 address]:port`, `ws://host:port/path`), in bytes.
///
/// A bracketed IPv6 literal with port is under 60 bytes; 128 leaves room for a DNS name
/// and a short WebSocket path.
pub const MAX_ADDR_BYTES: usize = 128;

/// Most addresses one node may advertise (`Hello::listen_addrs`, `NodeInfo::addrs`).
///
/// One per transport per interface family is a handful; 16 covers multi-homed hosts.
pub const MAX_ADDRS_PER_NODE: usize = 16;

/// Most entries in `Welcome::known`, the peer list handed to a newcomer.
///
/// 1024 typical entries (id, key, two addresses: about 100 bytes) make a ~100 KiB
/// `Welcome`; larger networks gossip the rest.
pub const MAX_KNOWN_NODES: usize = 1024;

/// Largest encoded frame [`frame::Frame::decode`] accepts, in bytes; transports use it as
/// their length cap.
///
/// A `Welcome` with every field at its limit encodes to 2,238,921 bytes (checked by a
/// test in `frame.rs`); 4 MiB covers it with room for future variants.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Largest `hello` frame (every field at its limit, a certificate included, encodes to under
/// 3 KB; checked by `largest_frame_fits_max_frame_bytes` in `frame.rs`): what a listener accepts from a dialer before it proved membership, so a
/// stranger cannot make it buffer megabytes per connection.
pub const MAX_HELLO_BYTES: usize = 4096;

/// Deepest MessagePack nesting [`frame::Frame::decode`] follows.
///
/// The deepest valid frame (`Welcome` -> `known` -> `NodeInfo` -> `addrs`) nests 5
/// levels; 16 leaves room for future variants while bounding the decoder's recursion on
/// hostile input (rmp-serde's default is 1024).
pub const MAX_DECODE_DEPTH: usize = 16;

/// Every way the wire layer can refuse bytes or refuse to produce them.
///
/// Each variant names one failure, so callers can choose a `CloseReason` or a log level
/// per case instead of parsing messages.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes are not a MessagePack encoding of a [`frame::Frame`] (bad marker, wrong
    /// type, unknown variant, input ended early, nesting too deep).
    #[error("malformed frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),

    /// A frame decoded but did not use all the input; a record holds exactly one frame.
    #[error("{trailing} trailing bytes after the frame")]
    TrailingBytes {
        /// How many bytes were left over.
        trailing: usize,
    },

    /// A frame decoded but one of its fields breaks a limit from this module.
    #[error("frame field over its limit: {what}")]
    Limit {
        /// Which field, e.g. `"hello.listen_addrs"`.
        what: &'static str,
    },

    /// Input shorter than the fixed header of its layout.
    #[error("{what} truncated: {len} bytes, need at least {min}")]
    Truncated {
        /// Which layout: `"record"` or `"datagram"`.
        what: &'static str,
        /// Bytes received.
        len: usize,
        /// Bytes the layout needs at minimum.
        min: usize,
    },

    /// The record's counter was already seen or is behind the replay window.
    #[error("record {counter} replayed or too old")]
    Replayed {
        /// The rejected counter.
        counter: u64,
    },

    /// The record failed authentication: wrong key, or bytes altered in transit.
    #[error("record failed to decrypt")]
    Decrypt,

    /// The plaintext is longer than ChaCha20-Poly1305 can seal (about 256 GiB); no
    /// caller should get near it.
    #[error("plaintext of {len} bytes too long to seal")]
    Encrypt {
        /// Plaintext length that was refused.
        len: usize,
    },

    /// The sealer used every counter value; the link must rekey (handshake again).
    #[error("record counter exhausted; the link must rekey")]
    CounterExhausted,

    /// Input or a message being reassembled is longer than the allowed maximum.
    #[error("{len} bytes exceeds the maximum of {max}")]
    Oversize {
        /// Length seen, or the least length the message can have.
        len: usize,
        /// The allowed maximum.
        max: usize,
    },

    /// Byte 0 of a UDP datagram is not a known datagram type.
    #[error("unknown datagram type {0}")]
    UnknownDatagramType(u8),
}
