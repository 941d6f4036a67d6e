//! Frames: the messages peers exchange inside sealed records, and their MessagePack
//! encoding.
//!
//! A [`Frame`] is encoded with rmp-serde's compact form (structs as arrays, enum variants
//! as a one-entry map from the snake_case variant name to its fields). The record layer
//! ([`super::record`]) seals the bytes; on UDP (QUIC) each data frame travels on a stream of
//! its own. Peer actors build frames and call [`Frame::encode`]; transports
//! hand received plaintext to [`Frame::decode`], which also enforces the size limits of
//! [`super`] so that nothing a peer sends makes us store unbounded identities or lists.
//!
//! Adding a variant: add it to [`Frame`] (variants are keyed by name, so order does not
//! matter on the wire), then the compiler points at the two exhaustive matches to extend,
//! [`Frame::kind`] and [`Frame::check_limits`]. Any `Vec` a peer controls gets a
//! `deserialize_with` bound like `listen_addrs` below.

use std::fmt;
use std::io::Cursor;
use std::marker::PhantomData;

use bytes::Bytes;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    WireError, MAX_ADDRS_PER_NODE, MAX_ADDR_BYTES, MAX_DECODE_DEPTH, MAX_FRAME_BYTES,
    MAX_KNOWN_NODES, MAX_NAME_BYTES,
};

/// Version of the frame protocol carried in [`Hello::protocol`].
///
/// Bump it when a change is not backwards compatible; peers refuse a link whose version
/// they do not speak (with [`CloseReason::Protocol`]).
pub const PROTOCOL_VERSION: u16 = 5;

/// `{"chunk": [`: a one-entry map keyed by the variant name, then a two-element array.
const CHUNK_PREFIX: [u8; 8] = [0x81, 0xa5, b'c', b'h', b'u', b'n', b'k', 0x92];

/// One message on a link, after the Noise handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// First frame from the dialer: who it is and how to reach it.
    Hello(Hello),
    /// The listener's answer to a `Hello` it accepts.
    Welcome(Welcome),
    /// Liveness probe; the peer answers with a `Pong` carrying the same nonce.
    Ping {
        /// Echoed in the `Pong`, so the prober can match answers and measure round trips.
        nonce: u64,
    },
    /// Answer to a `Ping`.
    Pong {
        /// The nonce of the `Ping` being answered.
        nonce: u64,
    },
    /// Last frame before the sender drops the link, saying why.
    Close {
        /// Why the link is being closed; lets the other side decide whether to redial.
        reason: CloseReason,
    },
    /// An end-to-end sealed message travelling hop by hop (relays read only the header).
    Data(Envelope),
    /// A node's link-state advertisement, flooded to the whole network.
    LinkState(LinkState),
    /// To the relay this link leads to: please coordinate a UDP hole punch between us and
    /// `target`, a member the relay links to.
    PunchRequest {
        /// The member to punch toward; at most [`MAX_NAME_BYTES`].
        target: String,
    },
    /// From a relay: send punch datagrams (with `token`) to `peer` at `addr`, which does the
    /// same toward us.
    Punch(Punch),
    /// From a public node back toward a message's origin: the message was not relayed, its
    /// network's budget is spent and its queue full; the origin may retry after the delay.
    OverBudget(OverBudget),
    /// From a relay: it cannot coordinate the punch toward `target`, and why.
    PunchRefused {
        /// The member the request named; at most [`MAX_NAME_BYTES`].
        target: String,
        /// Why, for `/status`; at most [`MAX_ADDR_BYTES`].
        reason: String,
    },
    /// A piece of a larger encoded `data` frame on a stream link (TCP, WebSocket): such a frame
    /// travels as consecutive chunks (`crate::proto::link::CHUNK_BYTES` each), so control
    /// frames (pings, adverts) go out between them instead of waiting for the whole frame.
    Chunk {
        /// The frame's next bytes.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
        /// Whether this chunk completes the frame.
        last: bool,
    },
}

/// A public node's refusal of one message over its relay budget, routed back to the origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverBudget {
    /// The refused envelope's id.
    pub id: u64,
    /// Its source: where this frame goes.
    pub source: String,
    /// Its target.
    pub target: String,
    /// About when the relay's queue has room again.
    pub retry_after_ms: u32,
    /// Forwarding count (bounded by the hop limit).
    pub hops: u8,
}

/// A relay's instruction to punch toward a peer (see `crate::proto::punch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Punch {
    /// The peer's node id; at most [`MAX_NAME_BYTES`].
    pub peer: String,
    /// The peer's reflexive UDP address as the relay saw it (`ip:port`); at most
    /// [`MAX_ADDR_BYTES`].
    pub addr: String,
    /// Random per coordination; both sides put it in their punch datagrams, so a datagram
    /// from anyone else opens nothing.
    #[serde(with = "serde_bytes")]
    pub token: [u8; 16],
}

/// A node's introduction: sent by the dialer as its first frame, and embedded in the
/// listener's [`Welcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The node's id, unique in its network; at most [`MAX_NAME_BYTES`].
    pub node_id: String,
    /// Name of the network the node belongs to, so nodes of different networks that
    /// share a secret still refuse each other ([`CloseReason::Foreign`]); at most
    /// [`MAX_NAME_BYTES`].
    pub network: String,
    /// Software version, e.g. `"0.1.0"`, for operators and logs; at most
    /// [`MAX_NAME_BYTES`].
    pub version: String,
    /// Frame protocol version the node speaks ([`PROTOCOL_VERSION`]).
    pub protocol: u16,
    /// The node's long-term identity key (the Noise static key), so a peer can check it
    /// matches the one it was told about ([`CloseReason::KeyMismatch`]).
    #[serde(with = "serde_bytes")]
    pub public_key: [u8; 32],
    /// Random per process start; lets peers tell a restarted node (new `boot_id`) from a
    /// duplicate link to the same running node (same `boot_id`).
    pub boot_id: u64,
    /// URLs where the node accepts links, like `"tcp://127.0.0.1:6711"`; at most
    /// [`MAX_ADDRS_PER_NODE`] of at most [`MAX_ADDR_BYTES`] each.
    #[serde(deserialize_with = "de_addrs")]
    pub listen_addrs: Vec<String>,
    /// Membership MAC proving the node knows the network secret
    /// ([`CloseReason::WrongSecret`] otherwise).
    #[serde(with = "serde_bytes")]
    pub proof: [u8; 32],
    /// The node's certificate from its network's CA (`crate::proto::cert`), when the network
    /// has one; at most [`crate::proto::cert::MAX_CERT_BYTES`].
    #[serde(default, with = "serde_bytes")]
    pub certificate: Option<Vec<u8>>,
}

/// The listener's acceptance of a link: its own introduction plus what it knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The listener's introduction, same checks as a dialer's `Hello`.
    pub hello: Hello,
    /// The dialer's address as the listener saw it, so a node behind NAT learns its
    /// public address; at most [`MAX_ADDR_BYTES`].
    pub observed_addr: String,
    /// Other nodes the listener knows, to bootstrap the newcomer's discovery; at most
    /// [`MAX_KNOWN_NODES`].
    #[serde(deserialize_with = "de_known")]
    pub known: Vec<NodeInfo>,
}

/// What one node needs to know to dial another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's id; at most [`MAX_NAME_BYTES`].
    pub id: String,
    /// The node's identity key, checked against its `Hello` when we dial it.
    #[serde(with = "serde_bytes")]
    pub public_key: [u8; 32],
    /// Where the node listens; at most [`MAX_ADDRS_PER_NODE`] of at most
    /// [`MAX_ADDR_BYTES`] each.
    #[serde(deserialize_with = "de_addrs")]
    pub addrs: Vec<String>,
}

/// A message sealed end to end between two nodes, forwarded hop by hop.
///
/// Relays read the clear header (`target` to route, `hops` to bound the path) but cannot
/// open `sealed`: only `source` and `target` hold the pair key (see
/// `crate::proto::e2e`). Every header field except `hops` is authenticated as associated
/// data of the seal, so a relay can neither redirect, re-date nor re-label a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Random per message, unique per source; with `source` it keys the target's replay
    /// cache and matches a response to its request.
    pub id: u64,
    /// Id of the node that sealed the message; at most [`MAX_NAME_BYTES`].
    pub source: String,
    /// Id of the node the message is for; at most [`MAX_NAME_BYTES`].
    pub target: String,
    /// Whether this is a request or the response to one.
    pub kind: MessageKind,
    /// The source's unix time when it sealed the message, in milliseconds.
    pub timestamp_ms: u64,
    /// How long the message lives, in milliseconds: the target drops it after
    /// `timestamp_ms + ttl_ms` (plus the allowed clock skew).
    pub ttl_ms: u32,
    /// Forwarding count, incremented by every relay. Not authenticated: it changes en
    /// route, so an attacker on the path can alter it (at worst making a message look
    /// farther travelled and get dropped sooner).
    pub hops: u8,
    /// `sealed` holds the plaintext itself: set only by a source sending over its own direct
    /// member link to the target, whose Noise (or QUIC-bound) session already authenticates
    /// the source and encrypts the hop. A target accepts it only from that link; nobody
    /// forwards it. Authenticated as associated data when false.
    pub clear: bool,
    /// `nonce (24) || ciphertext || tag (16)` (XChaCha20-Poly1305), or the plaintext when
    /// `clear`; at most [`MAX_FRAME_BYTES`]. Shared, not copied, with the buffer a frame
    /// was decoded from by [`Frame::decode_shared`], and cheap to clone.
    #[serde(with = "super::shared")]
    pub sealed: Bytes,
    /// Set on a durable (store-and-forward) envelope only: the origin's Ed25519 signing key
    /// (32 bytes, bound to its identity key) and its signature (64 bytes) over
    /// `crate::proto::e2e::signed_bytes`, so a carrier or the target can check offline who
    /// sealed it. Its presence is authenticated as associated data of the seal.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "serde_bytes")]
    pub signature: Option<Vec<u8>>,
}

/// Length of [`Envelope::signature`]: the signing key and the signature.
pub const ENVELOPE_SIGNATURE_BYTES: usize = 32 + 64;

/// What an [`Envelope`] carries, as its routers and endpoints see it.
///
/// On the wire each kind is its snake_case name (`"request"`, `"response"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A message that expects a response from its target.
    Request,
    /// The answer to a request, travelling back to the request's source.
    Response,
}

/// A node's link-state advertisement as it travels: the origin's signed [`Advert`] bytes,
/// forwarded verbatim, so no relay can alter what the origin said.
///
/// `body` is the MessagePack of an [`Advert`] ([`LinkState::open`] decodes it under the same
/// limits as a frame); `signature` is the origin's Ed25519 signature over
/// [`ADVERT_SIGNING_CONTEXT`] `|| body`, with the signing key the body names (which must map
/// to the body's identity key, see `crate::identity::verify_bound`); `mac` is an
/// HMAC-SHA256 over `body || signature` keyed from the network key, so a node without the
/// network secret (a public node carrying adverts between members, or a stranger) can
/// neither forge nor alter a member's advert. A public node's own advert in a network it
/// relays for has no `mac` (it does not know the secret) and says `relay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// The encoded [`Advert`]; at most [`MAX_ADVERT_BYTES`].
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// Ed25519 signature by the origin.
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
    /// The network's MAC over `body || signature`; `None` on a public node's own advert.
    pub mac: Option<Mac>,
}

/// A 32-byte MAC as MessagePack bin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mac(#[serde(with = "serde_bytes")] pub [u8; 32]);

/// Prefix of the bytes an advert's signature covers (domain separation: an advert's
/// signature can never be taken for a signature over anything else the key signs).
pub const ADVERT_SIGNING_CONTEXT: &[u8] = b"msgtier advert v2\0";

/// Largest [`LinkState::body`]: [`MAX_KNOWN_NODES`] neighbours of the longest id, the
/// longest address list and the fixed fields fit in 96 KiB.
pub const MAX_ADVERT_BYTES: usize = 96 * 1024;

/// What a node says about itself in a [`LinkState`]: who it is, where it listens and which
/// nodes it has direct links to, at what cost. The highest `seq` from an origin replaces
/// older ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// The network the advert is for (a public node advertises itself in each network it
    /// relays for); at most [`MAX_NAME_BYTES`].
    pub network: String,
    /// Id of the node this advertisement describes; a valid id ([`valid_id`]).
    pub origin: String,
    /// Sequence number, increased by the origin for every new advertisement, so that
    /// receivers keep only the newest one. Starts at the origin's start time in unix
    /// microseconds; receivers refuse one too far in the future.
    pub seq: u64,
    /// The origin's identity (X25519) key, so that any node can seal end-to-end messages to it.
    #[serde(with = "serde_bytes")]
    pub public_key: [u8; 32],
    /// The origin's Ed25519 key that made `signature`, bound to `public_key`.
    #[serde(with = "serde_bytes")]
    pub signing_key: [u8; 32],
    /// URLs where the origin accepts links; at most [`MAX_ADDRS_PER_NODE`] of at most
    /// [`MAX_ADDR_BYTES`] each (as for [`NodeInfo::addrs`]).
    #[serde(deserialize_with = "de_addrs")]
    pub addrs: Vec<String>,
    /// The origin's direct links; at most [`MAX_KNOWN_NODES`].
    #[serde(deserialize_with = "de_neighbors")]
    pub neighbors: Vec<Neighbor>,
    /// The origin is a public node of another network relaying for this one: a path may go
    /// through it, but it is not a member (it cannot open this network's messages).
    pub relay: bool,
    /// The origin's certificate from the network CA, when the network has one.
    #[serde(default, with = "serde_bytes")]
    pub certificate: Option<Vec<u8>>,
    /// The origin carries durable messages for others (its config has `carrier`).
    #[serde(default)]
    pub carrier: bool,
    /// The topic filters the origin subscribes to (`crate::proto::topic`), so publishers send
    /// only towards nodes that want a topic; at most
    /// [`crate::proto::topic::MAX_SUBSCRIPTIONS`] valid filters. Taken from members' adverts
    /// only.
    #[serde(default, deserialize_with = "de_topics")]
    pub topics: Vec<String>,
}

/// One direct link of a [`LinkState`]'s origin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbor {
    /// The neighbour's node id; at most [`MAX_NAME_BYTES`].
    pub id: String,
    /// Cost of the link for route computation, in microseconds (e.g. its round-trip time).
    pub cost_us: u32,
}

/// Why a link is closed, sent in [`Frame::Close`].
///
/// On the wire each reason is its snake_case name, the same string as
/// [`CloseReason::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The peer's membership proof did not verify: it does not know the network secret.
    WrongSecret,
    /// The peer belongs to another network.
    Foreign,
    /// We already have a link to this node; this one is redundant.
    Duplicate,
    /// The peer's identity key differs from the one we know for its id.
    KeyMismatch,
    /// A frame failed to decode or broke a limit.
    BadFrame,
    /// The peer broke the protocol (wrong frame for the state, unsupported version).
    Protocol,
    /// The network has a CA and the peer's hello had no valid certificate for its id and key.
    Uncertified,
    /// The peer stopped answering.
    Timeout,
    /// The node is shutting down.
    Shutdown,
}

impl CloseReason {
    /// The reason's snake_case name, as sent on the wire and used in logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            CloseReason::WrongSecret => "wrong_secret",
            CloseReason::Foreign => "foreign",
            CloseReason::Duplicate => "duplicate",
            CloseReason::KeyMismatch => "key_mismatch",
            CloseReason::BadFrame => "bad_frame",
            CloseReason::Protocol => "protocol",
            CloseReason::Uncertified => "uncertified",
            CloseReason::Timeout => "timeout",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Frame {
    /// Encodes the frame as compact MessagePack (`rmp_serde::to_vec`).
    ///
    /// Does not check limits: a frame built locally is trusted; use
    /// [`Frame::check_limits`] first if its contents came from elsewhere.
    pub fn encode(&self) -> Vec<u8> {
        // rmp-serde fails only on a writer I/O error (a Vec never fails), a sequence of
        // unknown length (every field here has a known length), or msgpack extension
        // types (none used), so this cannot fail.
        rmp_serde::to_vec(self).expect("encoding a Frame into a Vec cannot fail")
    }

    /// Appends the encoding of `self` to `out` (the bytes [`Frame::encode`] returns).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        // As in `encode`: writing into a Vec cannot fail.
        rmp_serde::encode::write(out, self).expect("encoding a Frame into a Vec cannot fail");
    }

    /// The encoding of `Frame::Data(envelope)` in three pieces, the frame up to its message,
    /// the message ([`Envelope::sealed`] itself, shared) and what follows it, whose
    /// concatenation is that frame's [`Frame::encode`]: lets a sender hand a large message
    /// to a stream without copying it into the frame.
    pub fn encode_data_parts(envelope: &Envelope) -> [Bytes; 3] {
        // The frame with an empty message ends with that message's `bin` (`c4 00`) and, when
        // signed, the signature's `bin`; around it, the bytes are the same for any message.
        let empty = Envelope {
            sealed: Bytes::new(),
            ..envelope.clone()
        };
        let frame = Frame::Data(empty).encode();
        let after = envelope.signature.as_ref().map_or(0, |sig| {
            let mut header = Vec::new();
            super::write_bin_header(&mut header, sig.len());
            header.len() + sig.len()
        });
        let at = frame.len() - after - 2;
        debug_assert_eq!(frame[at..at + 2], [0xc4, 0x00], "the empty message's bin");
        let mut head = frame[..at].to_vec();
        super::write_bin_header(&mut head, envelope.sealed.len());
        let tail = Bytes::copy_from_slice(&frame[at + 2..]);
        [head.into(), envelope.sealed.clone(), tail]
    }

    /// Appends the encoding of `Frame::Chunk { bytes: piece, last }` to `out` without building
    /// the frame (the same bytes as its [`Frame::encode`]): `{"chunk": [bin, bool]}`. `piece`
    /// may be in several parts (a chunk of [`Frame::encode_data_parts`]' pieces, chained).
    pub fn encode_chunk_into(out: &mut Vec<u8>, piece: impl bytes::Buf, last: bool) {
        out.extend_from_slice(&CHUNK_PREFIX);
        super::write_bin_header(out, piece.remaining());
        bytes::BufMut::put(out, piece);
        out.push(if last { 0xc3 } else { 0xc2 });
    }

    /// The bytes and `last` of an encoded `chunk` frame, borrowed, if `bytes` is exactly one
    /// (as [`Frame::encode_chunk_into`] writes it); `None` for anything else, which the
    /// caller decodes the ordinary way. Lets a receiver append a chunk without copying it twice.
    pub fn chunk_parts(bytes: &[u8]) -> Option<(&[u8], bool)> {
        let rest = bytes.strip_prefix(&CHUNK_PREFIX)?;
        match super::split_bin(rest)? {
            (piece, [0xc2]) => Some((piece, false)),
            (piece, [0xc3]) => Some((piece, true)),
            _ => None,
        }
    }

    /// Decodes one frame that must span all of `bytes`, then checks the limits.
    ///
    /// Errors: [`WireError::Oversize`] for more than [`MAX_FRAME_BYTES`] of input,
    /// [`WireError::Decode`] for anything that is not a frame (including a truncated
    /// one), [`WireError::TrailingBytes`] if bytes follow the frame, [`WireError::Limit`]
    /// if a field is over its limit. Never panics; memory used is bounded by the input
    /// length and the limits (over-long lists stop being stored one entry past their
    /// limit). A data frame's [`Envelope::sealed`] is copied out of `bytes`; see
    /// [`Frame::decode_shared`].
    pub fn decode(bytes: &[u8]) -> Result<Frame, WireError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(WireError::Oversize {
                len: bytes.len(),
                max: MAX_FRAME_BYTES,
            });
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
        de.set_max_depth(MAX_DECODE_DEPTH);
        let frame = Frame::deserialize(&mut de)?;
        // The borrowing reader does not tell how far it got: nothing may follow, so reading
        // one more value must fail on its very first byte, for want of it. (A `bool` visitor
        // stops at the marker of anything else; a skipping one could hit the end of the
        // input later, inside trailing bytes, and fail the same way.)
        match bool::deserialize(&mut de) {
            Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
            _ => {
                return Err(WireError::TrailingBytes {
                    trailing: trailing_after_frame(bytes),
                })
            }
        }
        frame.check_limits()?;
        Ok(frame)
    }

    /// [`Frame::decode`], with a data frame's [`Envelope::sealed`] a slice of `bytes` (shared,
    /// not copied; see [`super::shared`]): for frames that carry large messages.
    pub fn decode_shared(bytes: &Bytes) -> Result<Frame, WireError> {
        super::shared::within(bytes, || Frame::decode(bytes))
    }

    /// Short lowercase name of the variant (`"hello"`, `"ping"`, ...) for logs and
    /// metrics; the same name keys the variant on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Ping { .. } => "ping",
            Frame::Pong { .. } => "pong",
            Frame::Close { .. } => "close",
            Frame::Data(_) => "data",
            Frame::LinkState(_) => "link_state",
            Frame::PunchRequest { .. } => "punch_request",
            Frame::Punch(_) => "punch",
            Frame::PunchRefused { .. } => "punch_refused",
            Frame::OverBudget(_) => "over_budget",
            Frame::Chunk { .. } => "chunk",
        }
    }

    /// Checks every field against the limits of [`super`]; [`Frame::decode`] calls it.
    pub fn check_limits(&self) -> Result<(), WireError> {
        match self {
            Frame::Hello(hello) => hello.check_limits(),
            Frame::Welcome(welcome) => welcome.check_limits(),
            Frame::Data(envelope) => envelope.check_limits(),
            Frame::LinkState(link_state) => link_state.check_limits(),
            Frame::PunchRequest { target } => check_id(target, "punch.target"),
            Frame::Punch(p) => {
                check_id(&p.peer, "punch.peer")?;
                check_len(&p.addr, MAX_ADDR_BYTES, "punch.addr")
            }
            Frame::OverBudget(o) => {
                check_id(&o.source, "over_budget.source")?;
                check_id(&o.target, "over_budget.target")
            }
            Frame::PunchRefused { target, reason } => {
                check_id(target, "punch.target")?;
                check_len(reason, MAX_ADDR_BYTES, "punch.reason")
            }
            // A chunk is bounded by the record it came in; its frame by the reassembler.
            Frame::Ping { .. } | Frame::Pong { .. } | Frame::Close { .. } | Frame::Chunk { .. } => {
                Ok(())
            }
        }
    }
}

impl Hello {
    /// Checks the name lengths and the address list against the limits of [`super`].
    pub fn check_limits(&self) -> Result<(), WireError> {
        check_certificate(&self.certificate, "hello.certificate")?;
        check_id(&self.node_id, "hello.node_id")?;
        check_id(&self.network, "hello.network")?;
        check_len(&self.version, MAX_NAME_BYTES, "hello.version")?;
        check_addrs(
            &self.listen_addrs,
            "hello.listen_addrs",
            "hello.listen_addr",
        )
    }
}

impl Welcome {
    /// Checks the embedded `Hello`, the observed address and every known node.
    pub fn check_limits(&self) -> Result<(), WireError> {
        self.hello.check_limits()?;
        check_len(&self.observed_addr, MAX_ADDR_BYTES, "welcome.observed_addr")?;
        if self.known.len() > MAX_KNOWN_NODES {
            return Err(WireError::Limit {
                what: "welcome.known",
            });
        }
        self.known.iter().try_for_each(NodeInfo::check_limits)
    }
}

impl NodeInfo {
    /// Checks the id length and the address list against the limits of [`super`].
    pub fn check_limits(&self) -> Result<(), WireError> {
        check_id(&self.id, "node.id")?;
        check_addrs(&self.addrs, "node.addrs", "node.addr")
    }
}

impl Envelope {
    /// Checks the ids and the sealed payload against the limits of [`super`].
    pub fn check_limits(&self) -> Result<(), WireError> {
        check_id(&self.source, "data.source")?;
        check_id(&self.target, "data.target")?;
        if self.sealed.len() > MAX_FRAME_BYTES {
            return Err(WireError::Limit {
                what: "data.sealed",
            });
        }
        if self
            .signature
            .as_ref()
            .is_some_and(|s| s.len() != ENVELOPE_SIGNATURE_BYTES)
        {
            return Err(WireError::Limit {
                what: "data.signature",
            });
        }
        Ok(())
    }
}

/// How many bytes follow the one frame at the start of `bytes` (which [`Frame::decode`] found
/// to be followed by something): decoded again with a reader that counts. Error path only.
fn trailing_after_frame(bytes: &[u8]) -> usize {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    de.set_max_depth(MAX_DECODE_DEPTH);
    match Frame::deserialize(&mut de) {
        Ok(_) => bytes
            .len()
            .saturating_sub(usize::try_from(de.position()).unwrap_or(usize::MAX)),
        Err(_) => 0,
    }
}

impl LinkState {
    /// Checks the body's size (its contents are checked by [`LinkState::open`]).
    pub fn check_limits(&self) -> Result<(), WireError> {
        if self.body.len() > MAX_ADVERT_BYTES {
            return Err(WireError::Limit {
                what: "link_state.body",
            });
        }
        Ok(())
    }

    /// Decodes the body into an [`Advert`] under the limits of a frame: bounded size, depth
    /// and lists, no trailing bytes, valid ids. Does not check the signature or the MAC.
    pub fn open(&self) -> Result<Advert, WireError> {
        self.check_limits()?;
        let mut de = rmp_serde::Deserializer::new(Cursor::new(self.body.as_slice()));
        de.set_max_depth(MAX_DECODE_DEPTH);
        let advert = Advert::deserialize(&mut de)?;
        let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
        let trailing = self.body.len().saturating_sub(used);
        if trailing != 0 {
            return Err(WireError::TrailingBytes { trailing });
        }
        advert.check_limits()?;
        Ok(advert)
    }

    /// The bytes the origin's signature covers.
    pub fn signed_bytes(body: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(ADVERT_SIGNING_CONTEXT.len() + body.len());
        m.extend_from_slice(ADVERT_SIGNING_CONTEXT);
        m.extend_from_slice(body);
        m
    }
}

impl Advert {
    /// Encodes the advert (the bytes an origin signs and puts in [`LinkState::body`]).
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("encoding an Advert into a Vec cannot fail")
    }

    /// Checks the network, the ids, the address list, the neighbours and the certificate size.
    pub fn check_limits(&self) -> Result<(), WireError> {
        check_certificate(&self.certificate, "link_state.certificate")?;
        check_len(&self.network, MAX_NAME_BYTES, "link_state.network")?;
        check_id(&self.origin, "link_state.origin")?;
        check_addrs(&self.addrs, "link_state.addrs", "link_state.addr")?;
        if self.neighbors.len() > MAX_KNOWN_NODES {
            return Err(WireError::Limit {
                what: "link_state.neighbors",
            });
        }
        self.neighbors
            .iter()
            .try_for_each(|n| check_id(&n.id, "link_state.neighbor.id"))?;
        if self.topics.len() > crate::proto::topic::MAX_SUBSCRIPTIONS {
            return Err(WireError::Limit {
                what: "link_state.topics",
            });
        }
        if self
            .topics
            .iter()
            .any(|t| crate::proto::topic::check_filter(t).is_err())
        {
            return Err(WireError::Limit {
                what: "link_state.topic",
            });
        }
        Ok(())
    }
}

/// Whether `s` is a valid node id: 1 to [`MAX_NAME_BYTES`] letters, digits, `.`, `_` or
/// `-`, not starting with `-` (the same rule as the config's `id`). Ids reach scripts as
/// `MSGTIER_SOURCE` and logs, so nothing else is accepted from the wire.
pub fn valid_id(s: &str) -> bool {
    (1..=MAX_NAME_BYTES).contains(&s.len())
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `Limit { what }` for a certificate over [`crate::proto::cert::MAX_CERT_BYTES`].
fn check_certificate(cert: &Option<Vec<u8>>, what: &'static str) -> Result<(), WireError> {
    if cert
        .as_ref()
        .is_some_and(|c| c.len() > crate::proto::cert::MAX_CERT_BYTES)
    {
        return Err(WireError::Limit { what });
    }
    Ok(())
}

/// `Limit { what }` unless `s` is a valid node id ([`valid_id`]).
fn check_id(s: &str, what: &'static str) -> Result<(), WireError> {
    if !valid_id(s) {
        return Err(WireError::Limit { what });
    }
    Ok(())
}

/// `Limit { what }` if `s` is longer than `max` bytes.
fn check_len(s: &str, max: usize, what: &'static str) -> Result<(), WireError> {
    if s.len() > max {
        return Err(WireError::Limit { what });
    }
    Ok(())
}

/// Checks an address list: its length, then each address's length.
fn check_addrs(
    addrs: &[String],
    list_what: &'static str,
    addr_what: &'static str,
) -> Result<(), WireError> {
    if addrs.len() > MAX_ADDRS_PER_NODE {
        return Err(WireError::Limit { what: list_what });
    }
    addrs
        .iter()
        .try_for_each(|addr| check_len(addr, MAX_ADDR_BYTES, addr_what))
}

/// Deserializes an address list, storing at most one entry past [`MAX_ADDRS_PER_NODE`].
fn de_addrs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    bounded_seq(deserializer, MAX_ADDRS_PER_NODE)
}

/// Deserializes `Advert::topics`, storing at most one entry past
/// [`crate::proto::topic::MAX_SUBSCRIPTIONS`].
fn de_topics<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    bounded_seq(deserializer, crate::proto::topic::MAX_SUBSCRIPTIONS)
}

/// Deserializes `Welcome::known`, storing at most one entry past [`MAX_KNOWN_NODES`].
fn de_known<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<NodeInfo>, D::Error> {
    bounded_seq(deserializer, MAX_KNOWN_NODES)
}

/// Deserializes `LinkState::neighbors`, storing at most one entry past
/// [`MAX_KNOWN_NODES`].
fn de_neighbors<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Neighbor>, D::Error> {
    bounded_seq(deserializer, MAX_KNOWN_NODES)
}

/// Deserializes a sequence but keeps only its first `max + 1` items, skipping the rest
/// without storing them.
///
/// The extra item makes [`Frame::check_limits`] report [`WireError::Limit`] afterwards,
/// while a list of a million tiny entries costs no more memory than `max + 1` of them.
fn bounded_seq<'de, D, T>(deserializer: D, max: usize) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    /// Visitor carrying the bound.
    struct BoundedSeq<T> {
        /// Items stored at most (the limit plus one).
        keep: usize,
        /// The item type.
        item: PhantomData<T>,
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            let mut items = Vec::with_capacity(hint.min(self.keep));
            while items.len() < self.keep {
                match seq.next_element()? {
                    Some(item) => items.push(item),
                    None => return Ok(items),
                }
            }
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(items)
        }
    }

    deserializer.deserialize_seq(BoundedSeq {
        keep: max.saturating_add(1),
        item: PhantomData,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `good` with its first 32-byte key (bin8 `c4 20`) cut to 31 bytes.
    fn key_shortened_to_31(good: &[u8]) -> Vec<u8> {
        let key_at = good
            .windows(2)
            .position(|w| w == [0xc4, 32])
            .expect("bin8 marker of the key");
        let mut bad = good[..key_at].to_vec();
        bad.extend_from_slice(&[0xc4, 31]);
        bad.extend_from_slice(&good[key_at + 2..key_at + 2 + 31]);
        bad.extend_from_slice(&good[key_at + 2 + 32..]);
        bad
    }
    use proptest::collection::vec;
    use proptest::prelude::*;

    const ALL_REASONS: [CloseReason; 9] = [
        CloseReason::WrongSecret,
        CloseReason::Foreign,
        CloseReason::Duplicate,
        CloseReason::KeyMismatch,
        CloseReason::BadFrame,
        CloseReason::Protocol,
        CloseReason::Uncertified,
        CloseReason::Timeout,
        CloseReason::Shutdown,
    ];

    /// Names within `MAX_NAME_BYTES`: 16 chars of at most 4 UTF-8 bytes each.
    /// Valid node ids (the wire refuses any other).
    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._][A-Za-z0-9._-]{0,15}"
    }

    /// Addresses within `MAX_ADDR_BYTES`: 32 chars of at most 4 bytes each.
    fn addr() -> impl Strategy<Value = String> {
        "\\PC{0,32}"
    }

    fn hello() -> impl Strategy<Value = Hello> {
        (
            name(),
            name(),
            name(),
            any::<u16>(),
            any::<[u8; 32]>(),
            any::<u64>(),
            vec(addr(), 0..=MAX_ADDRS_PER_NODE),
            any::<[u8; 32]>(),
        )
            .prop_map(
                |(
                    node_id,
                    network,
                    version,
                    protocol,
                    public_key,
                    boot_id,
                    listen_addrs,
                    proof,
                )| {
                    Hello {
                        node_id,
                        network,
                        version,
                        protocol,
                        public_key,
                        boot_id,
                        listen_addrs,
                        proof,
                        certificate: None,
                    }
                },
            )
    }

    fn node_info() -> impl Strategy<Value = NodeInfo> {
        (name(), any::<[u8; 32]>(), vec(addr(), 0..=4)).prop_map(|(id, public_key, addrs)| {
            NodeInfo {
                id,
                public_key,
                addrs,
            }
        })
    }

    fn message_kind() -> impl Strategy<Value = MessageKind> {
        prop_oneof![Just(MessageKind::Request), Just(MessageKind::Response)]
    }

    fn envelope() -> impl Strategy<Value = Envelope> {
        (
            any::<u64>(),
            name(),
            name(),
            message_kind(),
            any::<u64>(),
            any::<u32>(),
            any::<u8>(),
            vec(any::<u8>(), 0..300),
        )
            .prop_map(
                |(id, source, target, kind, timestamp_ms, ttl_ms, hops, sealed)| Envelope {
                    id,
                    source,
                    target,
                    kind,
                    timestamp_ms,
                    ttl_ms,
                    hops,
                    clear: false,
                    sealed: sealed.into(),
                    signature: None,
                },
            )
    }

    fn advert() -> impl Strategy<Value = Advert> {
        (
            (name(), name(), any::<u64>()),
            (any::<[u8; 32]>(), any::<[u8; 32]>()),
            vec(addr(), 0..=MAX_ADDRS_PER_NODE),
            vec(
                (name(), any::<u32>()).prop_map(|(id, cost_us)| Neighbor { id, cost_us }),
                0..6,
            ),
            any::<bool>(),
        )
            .prop_map(
                |((network, origin, seq), (public_key, signing_key), addrs, neighbors, relay)| {
                    Advert {
                        network,
                        origin,
                        seq,
                        public_key,
                        signing_key,
                        addrs,
                        neighbors,
                        relay,
                        certificate: None,
                        carrier: false,
                        topics: Vec::new(),
                    }
                },
            )
    }

    fn link_state() -> impl Strategy<Value = LinkState> {
        (
            advert(),
            vec(any::<u8>(), 64),
            prop::option::of(any::<[u8; 32]>()),
        )
            .prop_map(|(advert, sig, mac)| LinkState {
                body: advert.encode(),
                signature: sig.try_into().expect("64 bytes"),
                mac: mac.map(Mac),
            })
    }

    /// Any frame within the limits (short `known` and `neighbors` lists to keep cases
    /// fast; the 1024-entry boundaries have their own tests).
    pub(crate) fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            hello().prop_map(Frame::Hello),
            (hello(), addr(), vec(node_info(), 0..6)).prop_map(|(hello, observed_addr, known)| {
                Frame::Welcome(Welcome {
                    hello,
                    observed_addr,
                    known,
                })
            }),
            any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
            prop::sample::select(ALL_REASONS.to_vec()).prop_map(|reason| Frame::Close { reason }),
            envelope().prop_map(Frame::Data),
            link_state().prop_map(Frame::LinkState),
            name().prop_map(|target| Frame::PunchRequest { target }),
            (name(), addr(), any::<[u8; 16]>())
                .prop_map(|(peer, addr, token)| Frame::Punch(Punch { peer, addr, token })),
            (name(), addr()).prop_map(|(target, reason)| Frame::PunchRefused { target, reason }),
            (any::<u64>(), name(), name(), any::<u32>(), any::<u8>()).prop_map(
                |(id, source, target, retry_after_ms, hops)| Frame::OverBudget(OverBudget {
                    id,
                    source,
                    target,
                    retry_after_ms,
                    hops,
                })
            ),
        ]
    }

    fn sample_hello() -> Hello {
        Hello {
            node_id: "node-a".into(),
            network: "home".into(),
            version: "0.1.0".into(),
            protocol: PROTOCOL_VERSION,
            public_key: [7; 32],
            boot_id: 42,
            listen_addrs: vec!["tcp://127.0.0.1:6711".into()],
            proof: [9; 32],
            certificate: None,
        }
    }

    fn sample_node(i: usize) -> NodeInfo {
        NodeInfo {
            id: format!("n{i}"),
            public_key: [1; 32],
            addrs: vec![format!("udp://10.0.0.1:{i}")],
        }
    }

    fn sample_welcome() -> Welcome {
        Welcome {
            hello: sample_hello(),
            observed_addr: "tcp://192.0.2.1:5000".into(),
            known: vec![sample_node(1), sample_node(2)],
        }
    }

    fn sample_envelope() -> Envelope {
        Envelope {
            id: 1,
            source: "a".into(),
            target: "b".into(),
            kind: MessageKind::Request,
            timestamp_ms: 2,
            ttl_ms: 3,
            hops: 4,
            clear: false,
            sealed: vec![0xee].into(),
            signature: None,
        }
    }

    fn sample_advert() -> Advert {
        Advert {
            network: "home".into(),
            origin: "o".into(),
            seq: 7,
            public_key: [0x11; 32],
            signing_key: [0x12; 32],
            addrs: vec!["x".into()],
            neighbors: vec![Neighbor {
                id: "n".into(),
                cost_us: 300,
            }],
            relay: false,
            certificate: None,
            carrier: false,
            topics: Vec::new(),
        }
    }

    fn sample_link_state() -> LinkState {
        LinkState {
            body: sample_advert().encode(),
            signature: [0x13; 64],
            mac: Some(Mac([0x14; 32])),
        }
    }

    #[test]
    fn a_link_state_opens_to_its_advert_and_refuses_bad_bodies() {
        let ls = sample_link_state();
        assert_eq!(ls.open().unwrap(), sample_advert());
        let mut trailing = ls.clone();
        trailing.body.push(0);
        assert!(matches!(
            trailing.open(),
            Err(WireError::TrailingBytes { .. })
        ));
        let mut bad_id = sample_advert();
        bad_id.origin = "-rf".into();
        let ls = LinkState {
            body: bad_id.encode(),
            ..sample_link_state()
        };
        assert!(matches!(ls.open(), Err(WireError::Limit { .. })));
        let huge = LinkState {
            body: vec![0; MAX_ADVERT_BYTES + 1],
            ..sample_link_state()
        };
        assert!(matches!(
            Frame::decode(&Frame::LinkState(huge).encode()),
            Err(WireError::Limit { .. })
        ));
    }

    /// Ids reach scripts (`MSGTIER_SOURCE`) and logs: only the config's character set
    /// passes the wire.
    #[test]
    fn ids_outside_the_id_charset_are_refused_on_the_wire() {
        for bad in [
            "",
            "a b",
            "a;rm -rf",
            "-x",
            "a\nb",
            "\u{e9}",
            &"a".repeat(65),
        ] {
            let mut e = sample_envelope();
            e.source = bad.to_string();
            assert!(
                matches!(
                    Frame::decode(&Frame::Data(e).encode()),
                    Err(WireError::Limit { .. })
                ),
                "{bad:?}"
            );
            let mut h = sample_hello();
            h.node_id = bad.to_string();
            assert!(Frame::decode(&Frame::Hello(h).encode()).is_err(), "{bad:?}");
        }
        for good in ["a", "node-1", "n.x_y", &"a".repeat(64)] {
            let mut e = sample_envelope();
            e.target = good.to_string();
            assert!(Frame::decode(&Frame::Data(e).encode()).is_ok(), "{good:?}");
        }
    }

    fn limit_of(frame: &Frame) -> Option<&'static str> {
        match Frame::decode(&frame.encode()) {
            Err(WireError::Limit { what }) => Some(what),
            _ => None,
        }
    }

    /// Trailing bytes that start a value and end inside it (here an array of 15 whose third
    /// element, a map, is cut short) are trailing bytes, not the end of the input.
    #[test]
    fn trailing_bytes_that_end_inside_a_value_are_counted() {
        for extra in [&[0x9f, 9, 55, 0x87][..], &[0xc4, 9], &[0x81], &[0xc0]] {
            let mut bytes = Frame::Data(sample_envelope()).encode();
            bytes.extend_from_slice(extra);
            assert!(
                matches!(
                    Frame::decode(&bytes),
                    Err(WireError::TrailingBytes { trailing }) if trailing == extra.len()
                ),
                "{extra:x?}"
            );
        }
    }

    /// `decode_shared` leaves a data frame's message inside the buffer it decoded (no copy);
    /// `decode` copies it; both give the same frame.
    #[test]
    fn decode_shared_slices_the_message_out_of_the_frame() {
        let mut envelope = sample_envelope();
        envelope.sealed = vec![0x5a; 64 * 1024].into();
        let bytes = Bytes::from(Frame::Data(envelope.clone()).encode());
        let range = bytes.as_ptr_range();
        let within = |e: &Envelope| range.contains(&e.sealed.as_ptr());
        let Ok(Frame::Data(shared)) = Frame::decode_shared(&bytes) else {
            panic!("a data frame")
        };
        let Ok(Frame::Data(copied)) = Frame::decode(&bytes) else {
            panic!("a data frame")
        };
        assert!(within(&shared), "shared with the frame's bytes");
        assert!(!within(&copied), "copied out of them");
        assert_eq!(shared, envelope);
        assert_eq!(copied, envelope);
    }

    proptest! {
        #[test]
        fn round_trip(frame in frame()) {
            let bytes = frame.encode();
            prop_assert_eq!(Frame::decode(&bytes).ok(), Some(frame));
        }

        #[test]
        fn every_strict_prefix_is_rejected(frame in frame()) {
            let bytes = frame.encode();
            for len in 0..bytes.len() {
                prop_assert!(Frame::decode(&bytes[..len]).is_err(), "prefix {} accepted", len);
            }
        }

        #[test]
        fn data_parts_are_the_data_frame_in_pieces(mut e in envelope(), len in prop_oneof![
            Just(0usize), 1..300usize, Just(255), Just(256), Just(65_535), Just(65_536), Just(70_000),
        ], signed in any::<bool>()) {
            e.sealed = vec![0xab; len].into();
            e.signature = signed.then(|| vec![0x5c; crate::wire::frame::ENVELOPE_SIGNATURE_BYTES]);
            let whole = Frame::Data(e.clone()).encode();
            let parts = Frame::encode_data_parts(&e);
            prop_assert_eq!(parts.concat(), whole);
            prop_assert_eq!(parts[1].as_ptr(), e.sealed.as_ptr(), "the message itself, not a copy");
        }

        #[test]
        fn trailing_bytes_are_rejected(frame in frame(), extra in vec(any::<u8>(), 1..8)) {
            let mut bytes = frame.encode();
            bytes.extend_from_slice(&extra);
            let trailing = match Frame::decode(&bytes) {
                Err(WireError::TrailingBytes { trailing }) => Some(trailing),
                _ => None,
            };
            prop_assert_eq!(trailing, Some(extra.len()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
            if let Ok(frame) = Frame::decode(&bytes) {
                prop_assert_eq!(Frame::decode(&frame.encode()).ok(), Some(frame));
            }
        }

        #[test]
        fn mutated_encodings_never_panic(
            frame in frame(),
            edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = frame.encode();
            for (at, byte) in edits {
                let i = at.index(bytes.len());
                bytes[i] = byte;
            }
            if let Ok(frame) = Frame::decode(&bytes) {
                prop_assert_eq!(Frame::decode(&frame.encode()).ok(), Some(frame));
            }
        }
    }

    /// The hand-written chunk encoding is the derived one, at every bin width, and parses
    /// back; anything else is left to the decoder.
    #[test]
    fn chunk_frames_encode_and_parse_without_the_derive() {
        for len in [0usize, 1, 255, 256, 65_535, 65_536, 70_000] {
            for last in [false, true] {
                let piece = vec![0x5a; len];
                let mut out = Vec::new();
                Frame::encode_chunk_into(&mut out, &piece[..], last);
                let derived = Frame::Chunk {
                    bytes: piece.clone(),
                    last,
                }
                .encode();
                assert_eq!(out, derived, "len {len}");
                assert_eq!(Frame::chunk_parts(&out), Some((&piece[..], last)));
                assert_eq!(
                    Frame::decode(&out).ok(),
                    Some(Frame::Chunk { bytes: piece, last })
                );
                assert_eq!(Frame::chunk_parts(&out[..out.len() - 1]), None);
            }
        }
        assert_eq!(Frame::chunk_parts(&Frame::Ping { nonce: 1 }.encode()), None);
    }

    #[test]
    fn wire_format_is_pinned() {
        // {"ping": [5]}: a one-entry map keyed by the variant name, fields as an array.
        let ping = Frame::Ping { nonce: 5 }.encode();
        assert_eq!(ping, [0x81, 0xa4, b'p', b'i', b'n', b'g', 0x91, 0x05]);
        // {"close": ["timeout"]}
        let close = Frame::Close {
            reason: CloseReason::Timeout,
        }
        .encode();
        let mut want = vec![0x81, 0xa5];
        want.extend_from_slice(b"close");
        want.extend_from_slice(&[0x91, 0xa7]);
        want.extend_from_slice(b"timeout");
        assert_eq!(close, want);

        // {"data": [1, "a", "b", "request", 2, 3, 4, false, bin8(0xee)]}
        let data = Frame::Data(sample_envelope()).encode();
        let mut want = vec![0x81, 0xa4];
        want.extend_from_slice(b"data");
        want.extend_from_slice(&[0x99, 0x01, 0xa1, b'a', 0xa1, b'b', 0xa7]);
        want.extend_from_slice(b"request");
        want.extend_from_slice(&[0x02, 0x03, 0x04, 0xc2, 0xc4, 0x01, 0xee]);
        assert_eq!(data, want);
        let mut response = sample_envelope();
        response.kind = MessageKind::Response;
        let response = Frame::Data(response).encode();
        assert!(response.windows(9).any(|w| w == b"\xa8response"));

        // {"link_state": [bin(body), bin8(64 x 0x13), bin8(32 x 0x14)]}, the body being
        // ["home", "o", 7, bin8(32 x 0x11), bin8(32 x 0x12), ["x"], [["n", uint16(300)]], false,
        // nil, false, []]
        let link_state = Frame::LinkState(sample_link_state()).encode();
        let mut body = vec![0x9b, 0xa4];
        body.extend_from_slice(b"home");
        body.extend_from_slice(&[0xa1, b'o', 0x07, 0xc4, 0x20]);
        body.extend_from_slice(&[0x11; 32]);
        body.extend_from_slice(&[0xc4, 0x20]);
        body.extend_from_slice(&[0x12; 32]);
        body.extend_from_slice(&[0x91, 0xa1, b'x', 0x91, 0x92, 0xa1, b'n', 0xcd, 0x01, 0x2c]);
        body.extend_from_slice(&[0xc2, 0xc0, 0xc2, 0x90]);
        let mut want = vec![0x81, 0xaa];
        want.extend_from_slice(b"link_state");
        want.extend_from_slice(&[0x93, 0xc4, body.len() as u8]);
        want.extend_from_slice(&body);
        want.extend_from_slice(&[0xc4, 0x40]);
        want.extend_from_slice(&[0x13; 64]);
        want.extend_from_slice(&[0xc4, 0x20]);
        want.extend_from_slice(&[0x14; 32]);
        assert_eq!(link_state, want);

        // {"punch": ["b", "198.51.100.7:4000", bin8(16 x 0x05)]}
        let punch = Frame::Punch(Punch {
            peer: "b".into(),
            addr: "198.51.100.7:4000".into(),
            token: [5; 16],
        })
        .encode();
        let mut want = vec![0x81, 0xa5];
        want.extend_from_slice(b"punch");
        want.extend_from_slice(&[0x93, 0xa1, b'b', 0xb1]);
        want.extend_from_slice(b"198.51.100.7:4000");
        want.extend_from_slice(&[0xc4, 0x10]);
        want.extend_from_slice(&[5; 16]);
        assert_eq!(punch, want);
        // {"punch_request": ["b"]}
        let request = Frame::PunchRequest { target: "b".into() }.encode();
        let mut want = vec![0x81, 0xad];
        want.extend_from_slice(b"punch_request");
        want.extend_from_slice(&[0x91, 0xa1, b'b']);
        assert_eq!(request, want);
    }

    #[test]
    fn close_reason_wire_name_is_as_str() {
        for reason in ALL_REASONS {
            let wire = rmp_serde::to_vec(&reason).expect("encode");
            let name = rmp_serde::to_vec(reason.as_str()).expect("encode");
            assert_eq!(wire, name, "{reason:?}");
            assert_eq!(reason.to_string(), reason.as_str());
        }
    }

    #[test]
    fn kind_names_every_variant() {
        let frames = [
            (Frame::Hello(sample_hello()), "hello"),
            (Frame::Welcome(sample_welcome()), "welcome"),
            (Frame::Ping { nonce: 1 }, "ping"),
            (Frame::Pong { nonce: 1 }, "pong"),
            (
                Frame::Close {
                    reason: CloseReason::Shutdown,
                },
                "close",
            ),
            (Frame::Data(sample_envelope()), "data"),
            (Frame::LinkState(sample_link_state()), "link_state"),
            (
                Frame::Chunk {
                    bytes: vec![1, 2],
                    last: true,
                },
                "chunk",
            ),
        ];
        for (frame, kind) in frames {
            assert_eq!(frame.kind(), kind);
            // The kind is also the variant's key on the wire.
            let bytes = frame.encode();
            assert_eq!(&bytes[2..2 + kind.len()], kind.as_bytes());
        }
    }

    #[test]
    fn names_at_limit_pass_and_one_byte_more_fails() {
        let at = "x".repeat(MAX_NAME_BYTES);
        let over = "x".repeat(MAX_NAME_BYTES + 1);
        let mut hello = sample_hello();
        hello.node_id = at.clone();
        hello.network = at.clone();
        hello.version = at.clone();
        assert!(Frame::decode(&Frame::Hello(hello.clone()).encode()).is_ok());

        type SetName = fn(&mut Hello, String);
        let cases: [(SetName, &str); 3] = [
            (|h, s| h.node_id = s, "hello.node_id"),
            (|h, s| h.network = s, "hello.network"),
            (|h, s| h.version = s, "hello.version"),
        ];
        for (set, what) in cases {
            let mut h = hello.clone();
            set(&mut h, over.clone());
            assert_eq!(limit_of(&Frame::Hello(h)), Some(what));
        }
    }

    #[test]
    fn multibyte_names_are_limited_in_bytes() {
        // Ids are ASCII only (see `ids_outside_the_id_charset_are_refused_on_the_wire`); the
        // version string is free text, limited in bytes.
        let mut hello = sample_hello();
        hello.version = "é".repeat(MAX_NAME_BYTES / 2); // 2 bytes each: exactly 64
        assert!(Frame::decode(&Frame::Hello(hello.clone()).encode()).is_ok());
        hello.version.push('a');
        assert_eq!(limit_of(&Frame::Hello(hello)), Some("hello.version"));
    }

    #[test]
    fn listen_addr_limits() {
        let mut hello = sample_hello();
        hello.listen_addrs = vec!["a".repeat(MAX_ADDR_BYTES); MAX_ADDRS_PER_NODE];
        assert!(Frame::decode(&Frame::Hello(hello.clone()).encode()).is_ok());

        let mut long = hello.clone();
        long.listen_addrs[3].push('a');
        assert_eq!(limit_of(&Frame::Hello(long)), Some("hello.listen_addr"));

        let mut many = hello;
        many.listen_addrs.push("b".into());
        assert_eq!(limit_of(&Frame::Hello(many)), Some("hello.listen_addrs"));
    }

    #[test]
    fn welcome_limits() {
        let mut welcome = sample_welcome();
        welcome.observed_addr = "a".repeat(MAX_ADDR_BYTES);
        welcome.known = (0..MAX_KNOWN_NODES).map(sample_node).collect();
        let frame = Frame::Welcome(welcome.clone());
        assert_eq!(Frame::decode(&frame.encode()).ok(), Some(frame));

        let mut w = welcome.clone();
        w.known.push(sample_node(0));
        assert_eq!(limit_of(&Frame::Welcome(w)), Some("welcome.known"));

        let mut w = welcome.clone();
        w.observed_addr.push('a');
        assert_eq!(limit_of(&Frame::Welcome(w)), Some("welcome.observed_addr"));

        let mut w = welcome.clone();
        w.hello.network = "n".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(limit_of(&Frame::Welcome(w)), Some("hello.network"));

        let mut w = welcome.clone();
        w.known[7].id = "i".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(limit_of(&Frame::Welcome(w)), Some("node.id"));

        let mut w = welcome.clone();
        w.known[9].addrs = vec!["a".into(); MAX_ADDRS_PER_NODE + 1];
        assert_eq!(limit_of(&Frame::Welcome(w)), Some("node.addrs"));

        let mut w = welcome;
        w.known[9].addrs = vec!["a".repeat(MAX_ADDR_BYTES + 1)];
        assert_eq!(limit_of(&Frame::Welcome(w)), Some("node.addr"));
    }

    #[test]
    fn envelope_limits() {
        let mut envelope = sample_envelope();
        envelope.source = "s".repeat(MAX_NAME_BYTES);
        envelope.target = "t".repeat(MAX_NAME_BYTES);
        let frame = Frame::Data(envelope.clone());
        assert_eq!(Frame::decode(&frame.encode()).ok(), Some(frame));

        let mut e = envelope.clone();
        e.source.push('s');
        assert_eq!(limit_of(&Frame::Data(e)), Some("data.source"));

        let mut e = envelope.clone();
        e.target.push('t');
        assert_eq!(limit_of(&Frame::Data(e)), Some("data.target"));

        // `sealed` at MAX_FRAME_BYTES passes the field check, though the whole frame is
        // then too large to decode; one byte more breaks the field limit.
        let mut e = envelope;
        e.sealed = vec![0; MAX_FRAME_BYTES].into();
        assert!(e.check_limits().is_ok());
        assert!(matches!(
            Frame::decode(&Frame::Data(e.clone()).encode()),
            Err(WireError::Oversize { .. })
        ));
        e.sealed = vec![0; MAX_FRAME_BYTES + 1].into();
        assert!(matches!(
            Frame::Data(e).check_limits(),
            Err(WireError::Limit {
                what: "data.sealed"
            })
        ));
    }

    #[test]
    fn largest_envelope_that_decodes() {
        // A Data frame with maximal ids and integers: its length with an empty `sealed`
        // (bin8 marker and length: 2 bytes) plus 3 (a bin32 marker and length: 5 bytes).
        let mut envelope = Envelope {
            id: u64::MAX,
            source: "s".repeat(MAX_NAME_BYTES),
            target: "t".repeat(MAX_NAME_BYTES),
            kind: MessageKind::Response,
            timestamp_ms: u64::MAX,
            ttl_ms: u32::MAX,
            hops: u8::MAX,
            clear: false,
            sealed: Bytes::new(),
            signature: None,
        };
        let header = Frame::Data(envelope.clone()).encode().len() + 3;
        envelope.sealed = vec![0xab; MAX_FRAME_BYTES - header].into();
        let bytes = Frame::Data(envelope.clone()).encode();
        assert_eq!(bytes.len(), MAX_FRAME_BYTES);
        assert_eq!(Frame::decode(&bytes).ok(), Some(Frame::Data(envelope)));
    }

    /// An advert's limit, as `LinkState::open` reports it.
    fn advert_limit(advert: &Advert) -> Option<&'static str> {
        let ls = LinkState {
            body: advert.encode(),
            ..sample_link_state()
        };
        match ls.open() {
            Err(WireError::Limit { what }) => Some(what),
            _ => None,
        }
    }

    #[test]
    fn link_state_limits() {
        let mut ad = sample_advert();
        ad.origin = "o".repeat(MAX_NAME_BYTES);
        ad.addrs = vec!["a".repeat(MAX_ADDR_BYTES); MAX_ADDRS_PER_NODE];
        ad.neighbors = (0..MAX_KNOWN_NODES)
            .map(|i| Neighbor {
                id: format!("{i:0>64}"),
                cost_us: u32::MAX,
            })
            .collect();
        let ls = LinkState {
            body: ad.encode(),
            ..sample_link_state()
        };
        assert!(ls.body.len() <= MAX_ADVERT_BYTES, "{}", ls.body.len());
        let frame = Frame::LinkState(ls.clone());
        assert_eq!(Frame::decode(&frame.encode()).ok(), Some(frame));
        assert_eq!(ls.open().ok(), Some(ad.clone()));

        let mut l = ad.clone();
        l.origin.push('o');
        assert_eq!(advert_limit(&l), Some("link_state.origin"));

        let mut l = ad.clone();
        l.addrs.push("b".into());
        assert_eq!(advert_limit(&l), Some("link_state.addrs"));

        let mut l = ad.clone();
        l.addrs[5].push('a');
        assert_eq!(advert_limit(&l), Some("link_state.addr"));

        let mut l = ad.clone();
        l.neighbors.push(Neighbor {
            id: "extra".into(),
            cost_us: 1,
        });
        assert_eq!(advert_limit(&l), Some("link_state.neighbors"));

        let mut l = ad;
        l.neighbors[100].id.push('i');
        assert_eq!(advert_limit(&l), Some("link_state.neighbor.id"));
    }

    #[test]
    fn huge_neighbor_lists_are_cut_off_not_stored() {
        // 20 000 neighbours of 4 bytes each on the wire (fixarray, 1-byte id, cost 0): within
        // the body's byte limit, far over the list limit.
        let mut ad = sample_advert();
        ad.neighbors = vec![
            Neighbor {
                id: "n".into(),
                cost_us: 0,
            };
            20_000
        ];
        assert_eq!(advert_limit(&ad), Some("link_state.neighbors"));
    }

    #[test]
    fn new_variants_reject_wrong_shapes() {
        // A Data frame with 7 fields (no `sealed`).
        let good = Frame::Data(sample_envelope()).encode();
        let mut bad = good.clone();
        bad[6] = 0x97;
        bad.truncate(bad.len() - 3);
        assert!(matches!(Frame::decode(&bad), Err(WireError::Decode(_))));
        // An unknown message kind.
        let at = good
            .windows(8)
            .position(|w| w == b"\xa7request")
            .expect("kind");
        let mut bad = good.clone();
        bad[at + 1..at + 8].copy_from_slice(b"rEquest");
        assert!(matches!(Frame::decode(&bad), Err(WireError::Decode(_))));
        // `hops` over u8.
        let mut bad = good[..at + 8 + 2].to_vec();
        bad.extend_from_slice(&[0xcd, 0x01, 0x00]);
        bad.extend_from_slice(&good[at + 8 + 3..]);
        assert!(matches!(Frame::decode(&bad), Err(WireError::Decode(_))));
        // A LinkState public key of 31 bytes.
        let good = Frame::LinkState(sample_link_state()).encode();
        let bad = key_shortened_to_31(&good);
        assert!(matches!(Frame::decode(&bad), Err(WireError::Decode(_))));
    }

    #[test]
    fn largest_frame_fits_max_frame_bytes() {
        let name = "n".repeat(MAX_NAME_BYTES);
        let addrs = vec!["a".repeat(MAX_ADDR_BYTES); MAX_ADDRS_PER_NODE];
        let hello = Hello {
            node_id: name.clone(),
            network: name.clone(),
            version: name.clone(),
            protocol: u16::MAX,
            public_key: [0xff; 32],
            boot_id: u64::MAX,
            listen_addrs: addrs.clone(),
            proof: [0xff; 32],
            certificate: Some(vec![0xff; crate::proto::cert::MAX_CERT_BYTES]),
        };
        let node = NodeInfo {
            id: name,
            public_key: [0xff; 32],
            addrs,
        };
        // The largest hello is what a listener takes before admitting the dialer.
        let hello_bytes = Frame::Hello(hello.clone()).encode().len();
        assert!(hello_bytes <= crate::wire::MAX_HELLO_BYTES, "{hello_bytes}");
        let frame = Frame::Welcome(Welcome {
            hello,
            observed_addr: "o".repeat(MAX_ADDR_BYTES),
            known: vec![node; MAX_KNOWN_NODES],
        });
        let bytes = frame.encode();
        assert_eq!(bytes.len(), 2_239_436);
        assert!(bytes.len() <= MAX_FRAME_BYTES);
        assert_eq!(Frame::decode(&bytes).ok(), Some(frame));
    }

    #[test]
    fn input_over_max_frame_bytes_is_rejected() {
        let bytes = vec![0u8; MAX_FRAME_BYTES + 1];
        assert!(matches!(
            Frame::decode(&bytes),
            Err(WireError::Oversize { .. })
        ));
    }

    #[test]
    fn huge_lists_are_cut_off_not_stored() {
        // A Hello whose listen_addrs holds 100 000 empty strings: one byte each on the
        // wire. Decoding keeps 17 of them and reports the limit.
        let mut hello = sample_hello();
        hello.listen_addrs = vec![String::new(); 100_000];
        assert_eq!(limit_of(&Frame::Hello(hello)), Some("hello.listen_addrs"));
    }

    #[test]
    fn declared_lengths_beyond_the_input_are_rejected() {
        // {"hello": [<array32 of 4 billion entries>]}
        let mut bytes = vec![0x81, 0xa5];
        bytes.extend_from_slice(b"hello");
        bytes.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(Frame::decode(&bytes), Err(WireError::Decode(_))));
        // {"ping": [<str32 of 4 GiB>]}
        let mut bytes = vec![0x81, 0xa4];
        bytes.extend_from_slice(b"ping");
        bytes.extend_from_slice(&[0x91, 0xdb, 0xff, 0xff, 0xff, 0xff, b'x']);
        assert!(matches!(Frame::decode(&bytes), Err(WireError::Decode(_))));
    }

    #[test]
    fn deep_nesting_is_rejected_without_overflowing_the_stack() {
        // {"hello": {"x": [[[[...]]]]}}: the unknown field is skipped, which recurses.
        let mut bytes = vec![0x81, 0xa5];
        bytes.extend_from_slice(b"hello");
        bytes.extend_from_slice(&[0x81, 0xa1, b'x']);
        bytes.extend(std::iter::repeat_n(0x91, 200_000));
        bytes.push(0xc0);
        assert!(matches!(Frame::decode(&bytes), Err(WireError::Decode(_))));
    }

    #[test]
    fn unknown_variant_and_wrong_types_are_rejected() {
        let mut bytes = vec![0x81, 0xa4];
        bytes.extend_from_slice(b"pong");
        bytes.extend_from_slice(&[0x91, 0xa1, b'x']); // nonce as a string
        assert!(matches!(Frame::decode(&bytes), Err(WireError::Decode(_))));

        let mut bytes = vec![0x81, 0xa4];
        bytes.extend_from_slice(b"zzzz");
        bytes.extend_from_slice(&[0x91, 0x01]);
        assert!(matches!(Frame::decode(&bytes), Err(WireError::Decode(_))));

        // A public key of 31 bytes.
        let mut hello = sample_hello();
        hello.listen_addrs.clear();
        let good = Frame::Hello(hello).encode();
        let bad = key_shortened_to_31(&good);
        assert!(matches!(Frame::decode(&bad), Err(WireError::Decode(_))));
    }

    #[test]
    fn empty_input_is_rejected() {
        assert!(matches!(Frame::decode(&[]), Err(WireError::Decode(_))));
    }
}
