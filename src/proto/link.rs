//! One link's protocol, sans-io: Noise handshake, membership proof, hello/welcome, heartbeat.
//!
//! A [`Link`] is driven by the PeerActor that owns the socket. The actor feeds it what arrived
//! ([`Link::handle_stream_message`]: a TCP or WebSocket message, or a QUIC stream's) and the
//! current time ([`Link::handle_timeout`]), then drains what the link wants sent
//! ([`Link::poll_transmit`]) and what happened ([`Link::poll_event`]). The link never touches a
//! socket or a clock, so everything here is tested on byte vectors and simulated time. Time is
//! microseconds on the owner's monotonic clock (`now_us`), fine enough for loopback RTTs.
//!
//! Lifecycle (see `docs/PROTOCOL.md`):
//! 1. `Handshaking`: Noise XX, three messages; nothing else is accepted.
//! 2. `Proving`: transport keys are up; the dialer sends `hello`, the listener checks it, asks its
//!    owner to admit the peer ([`Event::HelloVerified`]) and answers `welcome`, which the dialer
//!    checks the same way. Each side's proof is a MAC over the handshake hash and its role.
//! 3. `Active`: pings every heartbeat, RTT from pongs, closed when nothing is heard for the timeout.
//! 4. `Closed`: terminal; the cause comes out as [`Event::Closed`].
//!
//! Over QUIC ([`Params::channel`]) the same protocol runs on the connection's control stream,
//! bound to the connection, and frames after the handshake are not sealed again.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Buf, Bytes};

use crate::keys::KeyRing;
use crate::proto::handshake::{Handshake, Role, MAX_HANDSHAKE_MSG_BYTES};
use crate::wire::frame::{CloseReason, Frame, Hello, NodeInfo, Welcome, PROTOCOL_VERSION};
use crate::wire::record::{Opener, Sealer, COUNTER_BYTES, RECORD_OVERHEAD};
use crate::wire::MAX_HELLO_BYTES;

/// A listener waits this long for a dialer's first handshake message (then closes): an idle
/// connection from a stranger holds a handshake slot for seconds, not the whole handshake
/// timeout. A real dialer sends it as soon as its connection is up.
pub const FIRST_MESSAGE_TIMEOUT_MS: u64 = 3_000;

/// Largest piece of a `data` frame in one record on a stream link (a larger frame is sent as
/// [`Frame::Chunk`]s): a ping waits at most about one chunk behind bulk data, 8 ms at 64 Mbit/s.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Pings awaiting their pong at most; beyond it the oldest is forgotten (its pong, should it
/// still come, gives no sample).
pub const MAX_OUTSTANDING_PINGS: usize = 8;

/// Timing and size parameters of a link, taken from the node's config.
#[derive(Debug, Clone)]
pub struct Params {
    /// Send a ping this often once Active.
    pub heartbeat_interval_ms: u64,
    /// Close when nothing authenticated was heard for this long.
    pub peer_timeout_ms: u64,
    /// Give up if the handshake and hello/welcome are not done within this time.
    pub handshake_timeout_ms: u64,
    /// Largest encoded frame accepted or sent.
    pub max_frame_bytes: usize,
    /// The link runs inside an authenticated, encrypted channel (a QUIC connection) whose
    /// exporter is this: the Noise handshake is bound to it (appended to the prologue), and
    /// frames after the handshake are not sealed a second time (the channel protects them, and
    /// the binding proves its other end is the peer the handshake authenticated).
    pub channel: Option<[u8; 32]>,
    /// Let a peer of another network come up without a membership proof (we cannot check
    /// one made with another network's secret); the owner decides at admission whether to
    /// keep it. A dialer sets it to take a public node's `welcome`; a listener sets it when
    /// it relays for other networks. Such a link rests on the Noise authentication alone.
    pub accept_foreign: bool,
}

/// What this node says about itself in `hello` and `welcome`.
#[derive(Debug, Clone)]
pub struct LocalInfo {
    /// This node's id.
    pub node_id: String,
    /// This node's network name.
    pub network: String,
    /// Software version.
    pub version: String,
    /// Random per process start.
    pub boot_id: u64,
    /// Listener URLs to advertise.
    pub listen_addrs: Vec<String>,
    /// This node's certificate from the network CA (encoded), sent in every hello.
    pub certificate: Option<Vec<u8>>,
}

/// A message, classified by the phase it arrived in.
#[derive(Debug)]
enum Packet<'a> {
    /// Noise handshake message number `step` (1, 2 or 3).
    Handshake { step: u8, bytes: &'a [u8] },
    /// A record (sealed, or inside a bound channel the encoded frame).
    Record(&'a mut [u8]),
}

/// Bytes the link wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// Noise handshake message number `step` (1, 2 or 3).
    Handshake { step: u8, bytes: Vec<u8> },
    /// A sealed record of control traffic (pings, adverts, punch frames...): the owner sends it
    /// before any waiting [`Transmit::Data`].
    Record(Vec<u8>),
    /// A sealed record carrying a `data` frame: it may wait behind control records.
    Data(Vec<u8>),
    /// Inside a bound channel, a `data` frame as the pieces of [`Frame::encode_data_parts`]
    /// (its message shared, not copied), for a stream of its own: the concatenation is the
    /// frame. Like [`Transmit::Data`] it may wait behind control records.
    DataParts([Bytes; 3]),
}

impl Transmit {
    /// The bytes it puts on the wire.
    pub(crate) fn len(&self) -> usize {
        match self {
            Transmit::Handshake { bytes, .. } | Transmit::Record(bytes) | Transmit::Data(bytes) => {
                bytes.len()
            }
            Transmit::DataParts(parts) => parts.iter().map(Bytes::len).sum(),
        }
    }

    /// The bytes it puts on the wire, in one buffer (copied, for [`Transmit::DataParts`]).
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Transmit::Handshake { bytes, .. } | Transmit::Record(bytes) | Transmit::Data(bytes) => {
                bytes
            }
            Transmit::DataParts(parts) => parts.concat(),
        }
    }
}

/// What the welcome told the dialer besides the listener's own hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WelcomeInfo {
    /// The address the listener saw us come from.
    pub observed_addr: String,
    /// Nodes the listener knows.
    pub known: Vec<NodeInfo>,
}

/// Why a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// We refused or closed the link and told the peer why.
    Refused(CloseReason),
    /// The peer closed the link and told us why.
    ClosedByPeer(CloseReason),
    /// A record failed to open or a frame failed to decode.
    BadFrame(String),
    /// A frame was larger than `max_frame_bytes`.
    Oversize,
    /// The Noise handshake failed.
    Handshake(String),
    /// The handshake or the peer went silent for too long.
    Timeout,
    /// The socket closed under us.
    TransportClosed,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Refused(r) => write!(f, "refused by us: {}", r.as_str()),
            Cause::ClosedByPeer(r) => write!(f, "closed by peer: {}", r.as_str()),
            Cause::BadFrame(d) => write!(f, "bad frame: {d}"),
            Cause::Oversize => write!(f, "oversized frame"),
            Cause::Handshake(d) => write!(f, "handshake failed: {d}"),
            Cause::Timeout => write!(f, "timed out"),
            Cause::TransportClosed => write!(f, "connection closed"),
        }
    }
}

/// What happened on the link, for its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Listener side: the dialer proved membership. Call [`Link::admit`] or [`Link::refuse`].
    HelloVerified(Box<Hello>),
    /// The link is Active. `welcome` is set on the dialer's side.
    Up {
        hello: Box<Hello>,
        welcome: Option<WelcomeInfo>,
    },
    /// A frame for the layers above (none in this protocol version besides the link's own).
    Frame(Box<Frame>),
    /// The link is closed; nothing more will happen.
    Closed(Cause),
}

/// Round-trip statistics from pongs, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rtt {
    pub last_us: u64,
    pub min_us: u64,
    pub max_us: u64,
    pub sum_us: u64,
    pub samples: u64,
}

impl Rtt {
    fn record(&mut self, us: u64) {
        if self.samples == 0 || us < self.min_us {
            self.min_us = us;
        }
        self.max_us = self.max_us.max(us);
        self.last_us = us;
        self.sum_us = self.sum_us.saturating_add(us);
        self.samples += 1;
    }

    /// Mean RTT, if any sample was taken.
    pub fn avg_us(&self) -> Option<u64> {
        self.sum_us.checked_div(self.samples)
    }
}

/// Coarse state, as shown on `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Handshaking,
    Proving,
    Active,
    Closed,
}

/// Keys and facts from a finished Noise handshake.
#[derive(Debug)]
struct Session {
    sealer: Sealer,
    opener: Opener,
    remote_static: [u8; 32],
    handshake_hash: [u8; 32],
}

/// What the proving phase is waiting for.
#[derive(Debug)]
enum Awaiting {
    /// Dialer: the listener's welcome.
    Welcome,
    /// Listener: the dialer's hello.
    Hello,
    /// Listener: the owner's decision on a verified hello.
    Admission(Box<Hello>),
}

#[derive(Debug)]
enum State {
    Handshaking {
        hs: Box<Handshake>,
        /// Whether we sent our handshake message (the listener: message 2).
        sent: bool,
    },
    Proving {
        session: Session,
        awaiting: Awaiting,
    },
    Active {
        session: Session,
        peer: Box<Hello>,
        last_heard_us: u64,
        next_ping_us: u64,
        /// Nonce and send time of the ping we await a pong for.
        /// Pings not answered yet, oldest first (at most [`MAX_OUTSTANDING_PINGS`]): a pong
        /// slower than the heartbeat (a link busy with bulk data) still gives its sample.
        outstanding: VecDeque<(u64, u64)>,
        next_nonce: u64,
        rtt: Rtt,
    },
    Closed,
}

/// The protocol of one link. See the module docs.
#[derive(Debug)]
pub struct Link {
    params: Params,
    local: Arc<LocalInfo>,
    keys: Arc<KeyRing>,
    role: Role,
    state: State,
    /// When the link was created; bounds the handshake.
    created_us: u64,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// The chunks of a large frame received so far (at most `max_frame_bytes`).
    partial: Vec<u8>,
    /// Frames decoded / sealed since the owner last asked ([`Link::take_frame_counts`]).
    frames_in: u64,
    frames_out: u64,
}

impl Link {
    /// Starts the dialer's side; the first handshake message is ready in the outbox.
    pub fn dial(
        params: Params,
        local: Arc<LocalInfo>,
        keys: Arc<KeyRing>,
        now_us: u64,
    ) -> Result<Link, Cause> {
        let binding = params.channel.unwrap_or_default();
        let binding = if params.channel.is_some() {
            &binding[..]
        } else {
            &[]
        };
        let (hs, msg1) = Handshake::initiator_bound(&keys.identity, binding)
            .map_err(|e| Cause::Handshake(e.to_string()))?;
        let first = Transmit::Handshake {
            step: 1,
            bytes: msg1,
        };
        let mut link = Link::new(params, local, keys, Role::Initiator, now_us, hs);
        link.outbox.push_back(first);
        if let State::Handshaking { sent, .. } = &mut link.state {
            *sent = true;
        }
        Ok(link)
    }

    /// Starts the listener's side; it waits for the dialer's first message.
    pub fn accept(
        params: Params,
        local: Arc<LocalInfo>,
        keys: Arc<KeyRing>,
        now_us: u64,
    ) -> Result<Link, Cause> {
        let binding = params.channel.unwrap_or_default();
        let binding = if params.channel.is_some() {
            &binding[..]
        } else {
            &[]
        };
        let hs = Handshake::responder_bound(&keys.identity, binding)
            .map_err(|e| Cause::Handshake(e.to_string()))?;
        Ok(Link::new(params, local, keys, Role::Responder, now_us, hs))
    }

    fn new(
        params: Params,
        local: Arc<LocalInfo>,
        keys: Arc<KeyRing>,
        role: Role,
        now_us: u64,
        hs: Handshake,
    ) -> Link {
        Link {
            params,
            local,
            keys,
            role,
            state: State::Handshaking {
                hs: Box::new(hs),
                sent: false,
            },
            created_us: now_us,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            partial: Vec::new(),
            frames_in: 0,
            frames_out: 0,
        }
    }

    /// Which side of the handshake we are.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Coarse state.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Handshaking { .. } => Phase::Handshaking,
            State::Proving { .. } => Phase::Proving,
            State::Active { .. } => Phase::Active,
            State::Closed => Phase::Closed,
        }
    }

    /// RTT statistics once Active.
    pub fn rtt(&self) -> Option<Rtt> {
        match &self.state {
            State::Active { rtt, .. } if rtt.samples > 0 => Some(*rtt),
            _ => None,
        }
    }

    /// When something authenticated was last heard (us), once Active.
    pub fn last_heard_us(&self) -> Option<u64> {
        match &self.state {
            State::Active { last_heard_us, .. } => Some(*last_heard_us),
            _ => None,
        }
    }

    /// The peer's hello once Active.
    pub fn peer(&self) -> Option<&Hello> {
        match &self.state {
            State::Active { peer, .. } => Some(peer),
            _ => None,
        }
    }

    /// Frames received and sent since the last call, for the node's counters.
    pub fn take_frame_counts(&mut self) -> (u64, u64) {
        let counts = (self.frames_in, self.frames_out);
        self.frames_in = 0;
        self.frames_out = 0;
        counts
    }

    /// Next thing to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When the handshake must be done: [`FIRST_MESSAGE_TIMEOUT_MS`] after the start while a
    /// listener has heard nothing, else the handshake timeout.
    fn handshake_deadline_us(&self) -> u64 {
        let mut ms = self.params.handshake_timeout_ms;
        if let (Role::Responder, State::Handshaking { sent: false, .. }) = (self.role, &self.state)
        {
            ms = ms.min(FIRST_MESSAGE_TIMEOUT_MS);
        }
        self.created_us + ms * 1000
    }

    /// The earliest time [`Link::handle_timeout`] must be called.
    pub fn next_timeout(&self) -> Option<u64> {
        let handshake_deadline = self.handshake_deadline_us();
        match &self.state {
            State::Handshaking { .. } | State::Proving { .. } => Some(handshake_deadline),
            State::Active {
                last_heard_us,
                next_ping_us,
                ..
            } => Some((*next_ping_us).min(last_heard_us + self.params.peer_timeout_ms * 1000)),
            State::Closed => None,
        }
    }

    /// Drives timers: handshake deadline, pings, peer timeout.
    pub fn handle_timeout(&mut self, now_us: u64) {
        let handshake_expired = now_us >= self.handshake_deadline_us();
        match &mut self.state {
            State::Handshaking { .. } | State::Proving { .. } if handshake_expired => {
                self.close_silently(Cause::Timeout);
            }
            State::Active {
                last_heard_us,
                next_ping_us,
                outstanding,
                next_nonce,
                ..
            } => {
                if now_us >= *last_heard_us + self.params.peer_timeout_ms * 1000 {
                    self.close_silently(Cause::Timeout);
                    return;
                }
                if now_us >= *next_ping_us {
                    let nonce = *next_nonce;
                    *next_nonce += 1;
                    if outstanding.len() == MAX_OUTSTANDING_PINGS {
                        outstanding.pop_front();
                    }
                    outstanding.push_back((nonce, now_us));
                    *next_ping_us = now_us + self.params.heartbeat_interval_ms * 1000;
                    self.send_frame_internal(&Frame::Ping { nonce });
                }
            }
            _ => {}
        }
    }

    /// The largest message the link accepts now, in bytes: a handshake message while
    /// handshaking; on the listener's side a hello record until the dialer is admitted (nothing
    /// larger goes to a peer that has not proven membership); a full record after. The owner
    /// gives it to its stream codec as the length-prefix limit.
    pub fn read_limit(&self) -> usize {
        match (&self.state, self.role) {
            (State::Handshaking { .. }, _) => MAX_HANDSHAKE_MSG_BYTES,
            (State::Proving { .. }, Role::Responder) => {
                self.params.max_frame_bytes.min(MAX_HELLO_BYTES) + RECORD_OVERHEAD
            }
            _ => self.params.max_frame_bytes + RECORD_OVERHEAD,
        }
    }

    /// A message from a stream transport (TCP, WebSocket, a QUIC stream): handshake messages
    /// first, records after. The buffer is the caller's to give: a record is opened in place.
    pub fn handle_stream_message(&mut self, now_us: u64, bytes: &mut [u8]) {
        if bytes.len() > self.read_limit() {
            self.close_with_cause(CloseReason::BadFrame, Cause::Oversize);
            return;
        }
        let packet = match &self.state {
            State::Handshaking { sent, .. } => {
                // On a stream each message arrives once and in order.
                let step = match (self.role, sent) {
                    (Role::Initiator, _) => 2,
                    (Role::Responder, false) => 1,
                    (Role::Responder, true) => 3,
                };
                Packet::Handshake { step, bytes }
            }
            _ => Packet::Record(bytes),
        };
        match packet {
            Packet::Handshake { step, bytes } => self.on_handshake(step, bytes),
            Packet::Record(record) => self.on_record(now_us, record),
        }
    }

    /// One frame from a QUIC link's data stream (inside the bound channel a data stream carries
    /// exactly one encoded frame), as received: a data frame's message stays a slice of
    /// `frame` ([`crate::wire::shared`]) instead of being copied out of it.
    pub fn handle_data_stream(&mut self, now_us: u64, frame: Bytes) {
        if frame.len() > self.read_limit() {
            self.close_with_cause(CloseReason::BadFrame, Cause::Oversize);
            return;
        }
        if self.params.channel.is_none() {
            // Data streams exist only on QUIC, whose links are always bound.
            self.close_with_cause(
                CloseReason::Protocol,
                Cause::BadFrame("a data stream outside a bound channel".into()),
            );
            return;
        }
        match self.state {
            State::Proving { .. } | State::Active { .. } => {}
            State::Handshaking { .. } | State::Closed => return,
        }
        crate::wire::shared::within(&frame, || self.on_frame_bytes(now_us, &frame));
    }

    /// The owner admits the peer whose hello was verified: send `welcome`, go Active.
    pub fn admit(&mut self, now_us: u64, observed_addr: String, known: Vec<NodeInfo>) {
        let State::Proving {
            awaiting: Awaiting::Admission(_),
            ..
        } = &self.state
        else {
            return;
        };
        let State::Proving {
            session,
            awaiting: Awaiting::Admission(hello),
        } = std::mem::replace(&mut self.state, State::Closed)
        else {
            unreachable!("checked above");
        };
        let welcome = Frame::Welcome(Welcome {
            hello: self.own_hello_for(&session),
            observed_addr,
            known,
        });
        self.state = Link::active(
            session,
            hello.clone(),
            now_us,
            self.params.heartbeat_interval_ms * 1000,
        );
        if !self.send_frame_internal(&welcome) {
            return;
        }
        self.events.push_back(Event::Up {
            hello,
            welcome: None,
        });
        self.ping_now(now_us);
    }

    /// Closes the link, telling the peer why (if keys are up).
    pub fn refuse(&mut self, reason: CloseReason) {
        self.close_with(reason);
    }

    /// Seals and queues a frame for the peer. Only once Active.
    pub fn send_frame(&mut self, frame: &Frame) -> Result<(), Cause> {
        if self.phase() != Phase::Active {
            return Err(Cause::TransportClosed);
        }
        if self.send_frame_internal(frame) {
            Ok(())
        } else {
            Err(Cause::Oversize)
        }
    }

    /// The transport under the link closed.
    pub fn transport_closed(&mut self) {
        self.close_silently(Cause::TransportClosed);
    }

    /// Reports a transport-level failure (e.g. an oversized length prefix) and closes.
    pub fn transport_error(&mut self, cause: Cause) {
        self.close_silently(cause);
    }

    // ---- handshake ----

    fn on_handshake(&mut self, step: u8, msg: &[u8]) {
        let State::Handshaking { hs, sent } = &mut self.state else {
            return;
        };
        let expected = match (self.role, *sent) {
            (Role::Initiator, _) => 2,
            (Role::Responder, false) => 1,
            (Role::Responder, true) => 3,
        };
        if step != expected {
            return;
        }
        let reply = match hs.read_message(msg) {
            Ok(reply) => reply,
            Err(e) => {
                self.close_silently(Cause::Handshake(e.to_string()));
                return;
            }
        };
        if let Some(bytes) = reply {
            let step = if self.role == Role::Initiator { 3 } else { 2 };
            self.outbox.push_back(Transmit::Handshake { step, bytes });
            *sent = true;
        }
        if !hs.is_finished() {
            return;
        }
        let State::Handshaking { hs, .. } = std::mem::replace(&mut self.state, State::Closed)
        else {
            unreachable!("matched above");
        };
        let est = match hs.finish() {
            Ok(est) => est,
            Err(e) => {
                self.close_silently(Cause::Handshake(e.to_string()));
                return;
            }
        };
        let session = Session {
            sealer: Sealer::new(*est.send_key),
            opener: Opener::new(*est.recv_key),
            remote_static: est.remote_static,
            handshake_hash: est.handshake_hash,
        };
        match self.role {
            Role::Initiator => {
                let hello = Frame::Hello(self.own_hello_for(&session));
                self.state = State::Proving {
                    session,
                    awaiting: Awaiting::Welcome,
                };
                self.send_frame_internal(&hello);
            }
            Role::Responder => {
                self.state = State::Proving {
                    session,
                    awaiting: Awaiting::Hello,
                };
            }
        }
    }

    // ---- records ----

    fn on_record(&mut self, now_us: u64, record: &mut [u8]) {
        let session = match &mut self.state {
            State::Proving { session, .. } | State::Active { session, .. } => session,
            // Records before the handshake finished (UDP reordering) or after close: drop.
            State::Handshaking { .. } | State::Closed => return,
        };
        if self.params.channel.is_some() {
            // Inside a bound channel a record is the encoded frame itself.
            self.on_frame_bytes(now_us, record);
            return;
        }
        let plaintext = match session.opener.open_in_place(record) {
            Ok(p) => p,
            Err(e) => {
                self.close_with_cause(CloseReason::BadFrame, Cause::BadFrame(e.to_string()));
                return;
            }
        };
        self.on_frame_bytes(now_us, plaintext);
    }

    fn on_frame_bytes(&mut self, now_us: u64, frame_bytes: &[u8]) {
        if frame_bytes.len() > self.params.max_frame_bytes {
            self.close_with_cause(CloseReason::BadFrame, Cause::Oversize);
            return;
        }
        // A chunk of a large frame, Active: appended straight from the record.
        if let (State::Active { .. }, Some((piece, last))) =
            (&self.state, Frame::chunk_parts(frame_bytes))
        {
            self.frames_in += 1;
            self.mark_heard(now_us);
            self.on_chunk(now_us, piece, last);
            return;
        }
        let frame = match Frame::decode(frame_bytes) {
            Ok(f) => f,
            Err(e) => {
                self.close_with_cause(CloseReason::BadFrame, Cause::BadFrame(e.to_string()));
                return;
            }
        };
        self.frames_in += 1;
        self.mark_heard(now_us);
        self.on_frame(now_us, frame);
    }

    fn mark_heard(&mut self, now_us: u64) {
        if let State::Active { last_heard_us, .. } = &mut self.state {
            *last_heard_us = now_us;
        }
    }

    fn on_frame(&mut self, now_us: u64, frame: Frame) {
        if let Frame::Close { reason } = frame {
            self.close_silently(Cause::ClosedByPeer(reason));
            return;
        }
        match &mut self.state {
            State::Proving {
                awaiting: Awaiting::Hello,
                ..
            } => match frame {
                Frame::Hello(hello) => self.on_hello(hello),
                other => self.protocol_violation(&other, "hello"),
            },
            State::Proving {
                awaiting: Awaiting::Welcome,
                ..
            } => match frame {
                Frame::Welcome(welcome) => self.on_welcome(now_us, welcome),
                other => self.protocol_violation(&other, "welcome"),
            },
            // Nothing may arrive while the owner decides on a verified hello.
            State::Proving {
                awaiting: Awaiting::Admission(_),
                ..
            } => self.protocol_violation(&frame, "nothing before welcome"),
            State::Active {
                outstanding, rtt, ..
            } => match frame {
                Frame::Ping { nonce } => {
                    self.send_frame_internal(&Frame::Pong { nonce });
                }
                Frame::Pong { nonce } => {
                    if let Some(at) = outstanding.iter().position(|(n, _)| *n == nonce) {
                        let (_, sent_us) = outstanding[at];
                        // Pongs come back in order: older pings still waiting were lost.
                        outstanding.drain(..=at);
                        rtt.record(now_us.saturating_sub(sent_us));
                    }
                }
                Frame::Hello(_) | Frame::Welcome(_) => {
                    self.protocol_violation(&frame, "no second hello or welcome")
                }
                Frame::Chunk { bytes, last } => self.on_chunk(now_us, &bytes, last),
                other => self.events.push_back(Event::Frame(Box::new(other))),
            },
            State::Handshaking { .. } | State::Closed => {}
        }
    }

    /// One chunk of a large frame: appended; the last one completes and delivers the frame.
    fn on_chunk(&mut self, now_us: u64, bytes: &[u8], last: bool) {
        if self.partial.len() + bytes.len() > self.params.max_frame_bytes {
            self.close_with_cause(CloseReason::BadFrame, Cause::Oversize);
            return;
        }
        self.partial.extend_from_slice(bytes);
        if !last {
            return;
        }
        // The message is shared with the reassembled bytes, not copied out of them.
        let whole = Bytes::from(std::mem::take(&mut self.partial));
        match Frame::decode_shared(&whole) {
            Ok(frame @ Frame::Chunk { .. }) => self.protocol_violation(&frame, "a whole frame"),
            Ok(frame) => self.on_frame(now_us, frame),
            Err(e) => self.close_with_cause(CloseReason::BadFrame, Cause::BadFrame(e.to_string())),
        }
    }

    fn protocol_violation(&mut self, got: &Frame, expected: &str) {
        let detail = format!("expected {expected}, got {}", got.kind());
        self.close_with_cause(CloseReason::Protocol, Cause::BadFrame(detail));
    }

    /// Checks a peer's hello (ours to verify: its proof is for the peer's role).
    fn verify_hello(&self, session: &Session, hello: &Hello) -> Result<(), CloseReason> {
        if hello.protocol != PROTOCOL_VERSION {
            return Err(CloseReason::Protocol);
        }
        let foreign = hello.network != self.local.network;
        if foreign && !self.params.accept_foreign {
            return Err(CloseReason::Foreign);
        }
        if !foreign
            && !self.keys.network_key.verify(
                self.role.peer(),
                &session.handshake_hash,
                &hello.proof,
            )
        {
            return Err(CloseReason::WrongSecret);
        }
        if hello.public_key != session.remote_static {
            return Err(CloseReason::KeyMismatch);
        }
        if hello.node_id == self.local.node_id {
            return Err(CloseReason::Protocol);
        }
        Ok(())
    }

    fn on_hello(&mut self, hello: Hello) {
        let State::Proving { session, .. } = &self.state else {
            return;
        };
        if let Err(reason) = self.verify_hello(session, &hello) {
            self.close_with(reason);
            return;
        }
        let hello = Box::new(hello);
        if let State::Proving { awaiting, .. } = &mut self.state {
            *awaiting = Awaiting::Admission(hello.clone());
        }
        self.events.push_back(Event::HelloVerified(hello));
    }

    fn on_welcome(&mut self, now_us: u64, welcome: Welcome) {
        let State::Proving { session, .. } = &self.state else {
            return;
        };
        if let Err(reason) = self.verify_hello(session, &welcome.hello) {
            self.close_with(reason);
            return;
        }
        let State::Proving { session, .. } = std::mem::replace(&mut self.state, State::Closed)
        else {
            unreachable!("matched above");
        };
        let hello = Box::new(welcome.hello);
        self.state = Link::active(
            session,
            hello.clone(),
            now_us,
            self.params.heartbeat_interval_ms * 1000,
        );
        self.events.push_back(Event::Up {
            hello,
            welcome: Some(WelcomeInfo {
                observed_addr: welcome.observed_addr,
                known: welcome.known,
            }),
        });
        self.ping_now(now_us);
    }

    fn active(session: Session, peer: Box<Hello>, now_us: u64, heartbeat_us: u64) -> State {
        State::Active {
            session,
            peer,
            last_heard_us: now_us,
            next_ping_us: now_us + heartbeat_us,
            outstanding: VecDeque::new(),
            next_nonce: 0,
            rtt: Rtt::default(),
        }
    }

    /// First ping right away, so an RTT shows up without waiting a heartbeat.
    fn ping_now(&mut self, now_us: u64) {
        if let State::Active { next_ping_us, .. } = &mut self.state {
            *next_ping_us = now_us;
        }
        self.handle_timeout(now_us);
    }

    /// Our hello for the current session (tests forge with it).
    #[cfg(test)]
    fn own_hello(&self) -> Hello {
        match &self.state {
            State::Proving { session, .. } | State::Active { session, .. } => {
                self.own_hello_for(session)
            }
            _ => self.own_hello_with_hash(&[0; 32]),
        }
    }

    fn own_hello_for(&self, session: &Session) -> Hello {
        self.own_hello_with_hash(&session.handshake_hash)
    }

    fn own_hello_with_hash(&self, handshake_hash: &[u8; 32]) -> Hello {
        Hello {
            node_id: self.local.node_id.clone(),
            network: self.local.network.clone(),
            version: self.local.version.clone(),
            protocol: PROTOCOL_VERSION,
            public_key: self.keys.identity.public(),
            boot_id: self.local.boot_id,
            listen_addrs: self.local.listen_addrs.clone(),
            proof: self.keys.network_key.proof(self.role, handshake_hash),
            certificate: self.local.certificate.clone(),
        }
    }

    /// Encodes and seals a frame into the outbox. False if it could not be sent
    /// (too large, or no keys yet); a failure to seal closes the link.
    fn send_frame_internal(&mut self, frame: &Frame) -> bool {
        let data = matches!(frame, Frame::Data(_));
        if self.params.channel.is_some() {
            // A large message goes in pieces around it (not copied into the frame); a small one
            // is cheaper encoded whole.
            return self.send_plain(match frame {
                Frame::Data(envelope) if envelope.sealed.len() >= CHUNK_BYTES => {
                    Transmit::DataParts(Frame::encode_data_parts(envelope))
                }
                Frame::Data(_) => Transmit::Data(frame.encode()),
                _ => Transmit::Record(frame.encode()),
            });
        }
        // A large message is chunked straight from the frame's pieces, not encoded whole first.
        if let Frame::Data(envelope) = frame {
            if envelope.sealed.len() >= CHUNK_BYTES {
                let [head, message, tail] = Frame::encode_data_parts(envelope);
                let whole = head.chain(message).chain(tail);
                if whole.remaining() > self.params.max_frame_bytes {
                    return false;
                }
                return self.send_chunks(whole);
            }
        }
        // The frame is encoded behind room for the record's counter and sealed in place.
        let mut buf = vec![0u8; COUNTER_BYTES];
        frame.encode_into(&mut buf);
        let len = buf.len() - COUNTER_BYTES;
        if len > self.params.max_frame_bytes {
            return false;
        }
        if !data || len <= CHUNK_BYTES {
            return self.send_record(buf, data);
        }
        self.send_chunks(&buf[COUNTER_BYTES..])
    }

    /// Sends a large data frame, the bytes of `frame` (possibly several parts chained), as
    /// consecutive `chunk` frames of [`CHUNK_BYTES`] in data records; each record is built
    /// straight from `frame`, so the message is copied once, into the records that seal it.
    fn send_chunks(&mut self, mut frame: impl Buf) -> bool {
        let mut records = Vec::with_capacity(frame.remaining().div_ceil(CHUNK_BYTES));
        while frame.has_remaining() {
            let size = frame.remaining().min(CHUNK_BYTES);
            let last = size == frame.remaining();
            let mut record = Vec::with_capacity(COUNTER_BYTES + 16 + size + RECORD_OVERHEAD);
            record.resize(COUNTER_BYTES, 0);
            Frame::encode_chunk_into(&mut record, (&mut frame).take(size), last);
            records.push(record);
        }
        records.into_iter().all(|r| self.send_record(r, true))
    }

    /// Inside a bound channel: queues the encoded frame as it is (see [`Params::channel`]).
    fn send_plain(&mut self, transmit: Transmit) -> bool {
        if transmit.len() > self.params.max_frame_bytes
            || !matches!(self.state, State::Proving { .. } | State::Active { .. })
        {
            return false;
        }
        self.frames_out += 1;
        self.outbox.push_back(transmit);
        true
    }

    /// Seals a record in place (`buf`: counter room, then the encoded frame) into the outbox,
    /// a data record when `data`. False if there are no keys yet; a failure to seal closes.
    fn send_record(&mut self, mut buf: Vec<u8>, data: bool) -> bool {
        let session = match &mut self.state {
            State::Proving { session, .. } | State::Active { session, .. } => session,
            _ => return false,
        };
        if session.sealer.seal_in_place(&mut buf).is_err() {
            self.close_silently(Cause::Refused(CloseReason::Protocol));
            return false;
        }
        self.frames_out += 1;
        self.outbox.push_back(if data {
            Transmit::Data(buf)
        } else {
            Transmit::Record(buf)
        });
        true
    }

    /// Sends `close` (when keys are up) and ends the link, reporting it as our refusal.
    fn close_with(&mut self, reason: CloseReason) {
        self.close_with_cause(reason, Cause::Refused(reason));
    }

    fn close_with_cause(&mut self, reason: CloseReason, cause: Cause) {
        if matches!(self.state, State::Proving { .. } | State::Active { .. }) {
            self.send_frame_internal(&Frame::Close { reason });
        }
        self.close_silently(cause);
    }

    fn close_silently(&mut self, cause: Cause) {
        if matches!(self.state, State::Closed) {
            return;
        }
        self.state = State::Closed;
        self.events.push_back(Event::Closed(cause));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::proto::handshake::NetworkKey;

    const MS: u64 = 1_000;

    fn params() -> Params {
        Params {
            heartbeat_interval_ms: 1_000,
            peer_timeout_ms: 3_000,
            handshake_timeout_ms: 5_000,
            max_frame_bytes: 1 << 20,
            channel: None,
            accept_foreign: false,
        }
    }

    fn node(id: &str, network: &str, secret: &str) -> (Arc<LocalInfo>, Arc<KeyRing>) {
        let local = Arc::new(LocalInfo {
            node_id: id.into(),
            network: network.into(),
            version: "test".into(),
            boot_id: 7,
            listen_addrs: vec![format!("tcp://127.0.0.1:{}", 1000 + id.len())],
            certificate: None,
        });
        let keys = Arc::new(KeyRing {
            identity: Identity::generate().expect("rng"),
            network_key: NetworkKey::derive(network, secret),
        });
        (local, keys)
    }

    struct Pair {
        a: Link,
        b: Link,
        now: u64,
    }

    fn pair(b_network: &str, b_secret: &str) -> Pair {
        let (la, ka) = node("a", "net", "s3cret");
        let (lb, kb) = node("b", b_network, b_secret);
        Pair {
            a: Link::dial(params(), la, ka, 0).expect("dial"),
            b: Link::accept(params(), lb, kb, 0).expect("accept"),
            now: 0,
        }
    }

    fn deliver(from: &mut Link, to: &mut Link, now: u64) -> usize {
        let mut n = 0;
        while let Some(t) = from.poll_transmit() {
            n += 1;
            match t {
                Transmit::Handshake { mut bytes, .. }
                | Transmit::Record(mut bytes)
                | Transmit::Data(mut bytes) => to.handle_stream_message(now, &mut bytes),
                // A data stream of its own, as QUIC carries it.
                Transmit::DataParts(parts) => to.handle_data_stream(now, parts.concat().into()),
            }
        }
        n
    }

    /// Pumps both directions until quiet, admitting the dialer when asked.
    fn run(p: &mut Pair) -> (Vec<Event>, Vec<Event>) {
        let (mut ea, mut eb) = (Vec::new(), Vec::new());
        loop {
            let moved = deliver(&mut p.a, &mut p.b, p.now) + deliver(&mut p.b, &mut p.a, p.now);
            while let Some(e) = p.b.poll_event() {
                if let Event::HelloVerified(_) = e {
                    p.b.admit(p.now, "tcp://10.0.0.1:5".into(), vec![]);
                }
                eb.push(e);
            }
            while let Some(e) = p.a.poll_event() {
                ea.push(e);
            }
            if moved == 0 {
                return (ea, eb);
            }
        }
    }

    #[test]
    fn right_secret_comes_up_on_both_sides() {
        {
            let mut p = pair("net", "s3cret");
            let (ea, eb) = run(&mut p);
            assert_eq!(p.a.phase(), Phase::Active);
            assert_eq!(p.b.phase(), Phase::Active);
            let Some(Event::Up {
                hello,
                welcome: Some(w),
            }) = ea.iter().find(|e| matches!(e, Event::Up { .. }))
            else {
                panic!("dialer got no Up: {ea:?}");
            };
            assert_eq!(hello.node_id, "b");
            assert_eq!(w.observed_addr, "tcp://10.0.0.1:5");
            assert!(eb
                .iter()
                .any(|e| matches!(e, Event::Up { welcome: None, .. })));
            // The first ping/pong already gave an RTT sample on both sides.
            assert!(p.a.rtt().is_some() && p.b.rtt().is_some());
        }
    }

    /// Before it admitted the dialer, a listener takes a handshake message and then a hello,
    /// nothing larger (the length limit says so); the dialer (which chose its peer) takes a full
    /// welcome.
    #[test]
    fn a_listener_takes_no_more_than_a_hello_before_admitting() {
        let full = (1 << 20) + RECORD_OVERHEAD;
        let hello_limit = MAX_HELLO_BYTES + RECORD_OVERHEAD;
        let closed = |l: &mut Link| {
            std::iter::from_fn(|| l.poll_event()).any(|e| e == Event::Closed(Cause::Oversize))
        };

        // Stream: the limits by phase, and an oversized message in the hello phase.
        let mut p = pair("net", "s3cret");
        assert_eq!(p.b.read_limit(), MAX_HANDSHAKE_MSG_BYTES);
        assert_eq!(p.a.read_limit(), MAX_HANDSHAKE_MSG_BYTES);
        deliver(&mut p.a, &mut p.b, 0); // msg1
        deliver(&mut p.b, &mut p.a, 0); // msg2; a queues msg3 and its hello
        assert_eq!(p.a.read_limit(), full, "the dialer awaits a welcome");
        let Some(Transmit::Handshake { step: 3, bytes }) = p.a.poll_transmit() else {
            panic!("msg3 expected");
        };
        p.b.handle_stream_message(0, &mut bytes.clone());
        assert_eq!(p.b.read_limit(), hello_limit);
        p.b.handle_stream_message(0, &mut vec![0u8; hello_limit + 1]);
        assert!(closed(&mut p.b), "oversized before admission");

        // Admitted: the full limit.
        let mut p = pair("net", "s3cret");
        run(&mut p);
        assert_eq!(p.b.read_limit(), full);
    }

    /// A connection that never sends its first handshake message is closed after
    /// FIRST_MESSAGE_TIMEOUT_MS, long before the handshake timeout; one that did gets the rest.
    #[test]
    fn a_silent_dialer_is_dropped_after_the_first_message_timeout() {
        let mut p = pair("net", "s3cret");
        p.a.params.handshake_timeout_ms = 10_000;
        p.b.params.handshake_timeout_ms = 10_000;
        assert_eq!(p.b.next_timeout(), Some(FIRST_MESSAGE_TIMEOUT_MS * MS));
        p.b.handle_timeout(FIRST_MESSAGE_TIMEOUT_MS * MS);
        assert_eq!(p.b.poll_event(), Some(Event::Closed(Cause::Timeout)));

        let mut p = pair("net", "s3cret");
        p.b.params.handshake_timeout_ms = 10_000;
        deliver(&mut p.a, &mut p.b, 0); // msg1 arrives
        p.b.handle_timeout(FIRST_MESSAGE_TIMEOUT_MS * MS);
        assert_eq!(p.b.poll_event(), None, "still handshaking");
        assert_eq!(p.b.next_timeout(), Some(10_000 * MS));
    }

    fn bound_pair(a_channel: [u8; 32], b_channel: [u8; 32], b_secret: &str) -> Pair {
        let (la, ka) = node("a", "net", "s3cret");
        let (lb, kb) = node("b", "net", b_secret);
        let with = |c| Params {
            channel: Some(c),
            ..params()
        };
        Pair {
            a: Link::dial(with(a_channel), la, ka, 0).expect("dial"),
            b: Link::accept(with(b_channel), lb, kb, 0).expect("accept"),
            now: 0,
        }
    }

    /// Inside a bound channel (QUIC) the link comes up the same way and frames travel as
    /// their plain encoding: the channel protects them.
    #[test]
    fn a_bound_link_comes_up_and_sends_frames_unsealed() {
        let mut p = bound_pair([7; 32], [7; 32], "s3cret");
        let (ea, eb) = run(&mut p);
        assert!(ea.iter().any(|e| matches!(e, Event::Up { .. })), "{ea:?}");
        assert!(eb.iter().any(|e| matches!(e, Event::Up { .. })), "{eb:?}");
        let frame = Frame::Ping { nonce: 99 };
        p.a.send_frame(&frame).unwrap();
        assert_eq!(p.a.poll_transmit(), Some(Transmit::Record(frame.encode())));

        // A data frame goes out in pieces around its message, which is not copied, and
        // arrives whole on its own stream.
        let data = envelope(100_000);
        let Frame::Data(sent) = &data else {
            unreachable!()
        };
        p.a.send_frame(&data).unwrap();
        let Some(Transmit::DataParts(parts)) = p.a.poll_transmit() else {
            panic!("data in pieces")
        };
        assert_eq!(parts[1].as_ptr(), sent.sealed.as_ptr());
        assert_eq!(parts.concat(), data.encode());
        p.b.handle_data_stream(p.now, parts.concat().into());
        let got = std::iter::from_fn(|| p.b.poll_event()).find_map(|e| match e {
            Event::Frame(f) => Some(*f),
            _ => None,
        });
        assert_eq!(got, Some(data));
    }

    /// A handshake relayed between two different channels (a man in the middle terminating
    /// QUIC on both sides) fails: each side's prologue carries its own channel's exporter. So
    /// does a wrong secret inside one channel, exactly as on TCP.
    #[test]
    fn a_handshake_relayed_across_channels_fails_and_a_wrong_secret_is_refused() {
        let mut p = bound_pair([1; 32], [2; 32], "s3cret");
        let (ea, eb) = run(&mut p);
        assert!(
            ea.iter()
                .chain(&eb)
                .any(|e| matches!(e, Event::Closed(Cause::Handshake(_)))),
            "{ea:?} {eb:?}"
        );
        assert!(!ea.iter().chain(&eb).any(|e| matches!(e, Event::Up { .. })));

        let mut p = bound_pair([3; 32], [3; 32], "other");
        let (ea, eb) = run(&mut p);
        assert!(eb.contains(&Event::Closed(Cause::Refused(CloseReason::WrongSecret))));
        assert!(ea.contains(&Event::Closed(Cause::ClosedByPeer(
            CloseReason::WrongSecret
        ))));
    }

    #[test]
    fn wrong_secret_is_refused_by_the_listener_and_reported_to_the_dialer() {
        let mut p = pair("net", "other");
        let (ea, eb) = run(&mut p);
        assert!(eb.contains(&Event::Closed(Cause::Refused(CloseReason::WrongSecret))));
        assert!(ea.contains(&Event::Closed(Cause::ClosedByPeer(
            CloseReason::WrongSecret
        ))));
        // The listener never revealed its welcome.
        assert!(!ea.iter().any(|e| matches!(e, Event::Up { .. })));
    }

    #[test]
    fn other_network_is_foreign() {
        let mut p = pair("elsewhere", "s3cret");
        let (ea, eb) = run(&mut p);
        assert!(eb.contains(&Event::Closed(Cause::Refused(CloseReason::Foreign))));
        assert!(ea.contains(&Event::Closed(Cause::ClosedByPeer(CloseReason::Foreign))));
    }

    #[test]
    fn a_foreign_peer_comes_up_without_proof_only_where_both_sides_accept_foreign() {
        // A public node (listener, relaying for others) and a home node that dialled it: the
        // link rests on Noise alone, each side sees the other's network in its hello.
        let mut p = pair("public", "other-secret");
        p.a.params.accept_foreign = true;
        p.b.params.accept_foreign = true;
        let (ea, eb) = run(&mut p);
        let up = |events: &[Event], network: &str| {
            events
                .iter()
                .any(|e| matches!(e, Event::Up { hello, .. } if hello.network == network))
        };
        assert!(up(&ea, "public"), "{ea:?}");
        assert!(up(&eb, "net"), "{eb:?}");

        // A listener that does not relay refuses, even when the dialer would accept it.
        let mut p = pair("public", "other-secret");
        p.a.params.accept_foreign = true;
        let (ea, _) = run(&mut p);
        assert!(ea.contains(&Event::Closed(Cause::ClosedByPeer(CloseReason::Foreign))));

        // Same network, wrong secret: accept_foreign changes nothing.
        let mut p = pair("net", "wrong");
        p.a.params.accept_foreign = true;
        p.b.params.accept_foreign = true;
        let (_, eb) = run(&mut p);
        assert!(eb.contains(&Event::Closed(Cause::Refused(CloseReason::WrongSecret))));
    }

    #[test]
    fn hello_replayed_from_another_link_is_refused() {
        // Capture a's hello record on link 1, then replay its frame on link 2 between the same
        // identities: the proof covers link 1's handshake hash, so link 2 refuses it.
        let (la, ka) = node("a", "net", "s3cret");
        let (lb, kb) = node("b", "net", "s3cret");
        let mut a1 = Link::dial(params(), la.clone(), ka.clone(), 0).unwrap();
        let mut b1 = Link::accept(params(), lb.clone(), kb.clone(), 0).unwrap();
        deliver(&mut a1, &mut b1, 0);
        deliver(&mut b1, &mut a1, 0);
        let stolen = a1.own_hello();
        let mut a2 = Link::dial(params(), la, ka, 0).unwrap();
        let mut b2 = Link::accept(params(), lb, kb, 0).unwrap();
        deliver(&mut a2, &mut b2, 0);
        deliver(&mut b2, &mut a2, 0);
        // a2 sent msg3 and its own hello; replace the hello with the stolen one.
        let msg3 = a2.poll_transmit().unwrap();
        let _own_hello = a2.poll_transmit().unwrap();
        let State::Proving { session, .. } = &mut a2.state else {
            panic!("a2 not proving");
        };
        let mut forged = Vec::new();
        session
            .sealer
            .seal(&Frame::Hello(stolen).encode(), &mut forged)
            .unwrap();
        let Transmit::Handshake { step, bytes } = msg3 else {
            panic!()
        };
        assert_eq!(step, 3);
        b2.handle_stream_message(0, &mut bytes.clone());
        b2.handle_stream_message(0, &mut forged);
        assert_eq!(
            b2.poll_event(),
            Some(Event::Closed(Cause::Refused(CloseReason::WrongSecret)))
        );
    }

    #[test]
    fn a_garbage_record_closes_the_link() {
        let mut p = pair("net", "s3cret");
        run(&mut p);
        p.b.handle_stream_message(
            1,
            &mut b"\x00\x00\x00\x00\x00\x00\x00\x09garbage-garbage-garbage".to_vec(),
        );
        assert!(matches!(
            p.b.poll_event(),
            Some(Event::Closed(Cause::BadFrame(_)))
        ));
    }

    /// Inside a bound channel nothing is sealed, so garbage is a frame that fails to decode:
    /// the same close.
    #[test]
    fn garbage_in_a_bound_channel_closes_the_link() {
        let mut p = bound_pair([5; 32], [5; 32], "s3cret");
        run(&mut p);
        p.b.handle_stream_message(1, &mut b"\xc1garbage".to_vec());
        assert!(matches!(
            p.b.poll_event(),
            Some(Event::Closed(Cause::BadFrame(_)))
        ));
    }

    #[test]
    fn silent_peer_times_out_and_pings_go_out_every_heartbeat() {
        let mut p = pair("net", "s3cret");
        run(&mut p);
        // Heartbeats flow while both answer.
        for t in [1_000 * MS, 2_000 * MS, 3_000 * MS, 4_000 * MS] {
            p.now = t;
            p.a.handle_timeout(t);
            p.b.handle_timeout(t);
            run(&mut p);
        }
        assert_eq!(p.a.phase(), Phase::Active);
        assert_eq!(p.a.rtt().unwrap().samples, 5);
        // b goes silent: a sends pings but hears nothing for the timeout.
        let mut t = 4_000 * MS;
        let mut pings = 0;
        while p.a.phase() == Phase::Active {
            t = p.a.next_timeout().unwrap();
            p.a.handle_timeout(t);
            while p.a.poll_transmit().is_some() {
                pings += 1;
            }
        }
        assert_eq!(t, (4_000 + 3_000) * MS);
        // One ping per heartbeat: at 5 s and 6 s; at 7 s the timeout closes the link first.
        assert_eq!(pings, 2);
        assert!(matches!(
            std::iter::from_fn(|| p.a.poll_event()).last(),
            Some(Event::Closed(Cause::Timeout))
        ));
    }

    /// A pong slower than the heartbeat (a link busy with bulk data) still gives its sample:
    /// the RTT statistics must not hide exactly the delays they are for.
    #[test]
    fn a_pong_slower_than_the_heartbeat_still_counts() {
        let mut p = pair("net", "s3cret");
        run(&mut p);
        let before = p.a.rtt().unwrap().samples;
        // Two heartbeats pass before b's answer to the first ping arrives.
        p.a.handle_timeout(1_000 * MS);
        p.a.handle_timeout(2_000 * MS);
        deliver(&mut p.a, &mut p.b, 2_500 * MS);
        deliver(&mut p.b, &mut p.a, 2_500 * MS);
        let rtt = p.a.rtt().unwrap();
        assert_eq!(rtt.samples, before + 2, "both pongs counted");
        assert!(rtt.max_us >= 1_500 * MS, "{rtt:?}");
    }

    fn envelope(len: usize) -> Frame {
        Frame::Data(crate::wire::frame::Envelope {
            id: 1,
            source: "a".into(),
            target: "b".into(),
            kind: crate::wire::frame::MessageKind::Request,
            timestamp_ms: 0,
            ttl_ms: 1000,
            hops: 0,
            clear: false,
            sealed: vec![7; len].into(),
            signature: None,
        })
    }

    /// On a stream a large data frame goes out as 64 KiB chunks in data records, so a control
    /// frame queued after it can overtake all but the chunks already written; the receiver
    /// delivers the whole frame once its last chunk is in, and the ping in between on time.
    #[test]
    fn a_large_data_frame_travels_in_chunks_that_control_frames_can_pass() {
        let mut p = pair("net", "s3cret");
        run(&mut p);
        let big = envelope(300_000);
        p.a.send_frame(&big).unwrap();
        p.a.send_frame(&Frame::Ping { nonce: 42 }).unwrap();
        let out: Vec<Transmit> = std::iter::from_fn(|| p.a.poll_transmit()).collect();
        let chunks = out
            .iter()
            .filter(|t| matches!(t, Transmit::Data(_)))
            .count();
        assert_eq!(chunks, big.encode().len().div_ceil(CHUNK_BYTES));
        assert!(out.iter().all(
            |t| matches!(t, Transmit::Data(r) | Transmit::Record(r) if r.len() <= CHUNK_BYTES + 64)
        ));
        // Deliver the ping first (the writer's control lane), then the chunks.
        let (control, data): (Vec<_>, Vec<_>) = out
            .into_iter()
            .partition(|t| matches!(t, Transmit::Record(_)));
        for t in control.into_iter().chain(data) {
            let (Transmit::Record(r) | Transmit::Data(r)) = t else {
                panic!()
            };
            p.b.handle_stream_message(0, &mut r.clone());
        }
        let frames: Vec<Frame> = std::iter::from_fn(|| p.b.poll_event())
            .filter_map(|e| match e {
                Event::Frame(f) => Some(*f),
                _ => None,
            })
            .collect();
        assert_eq!(frames, vec![big]);
        assert_eq!(p.b.phase(), Phase::Active);
    }

    /// Data frames of every length around the chunk size, signed or not (a signature follows
    /// the message, so a chunk may span the message and what follows it), arrive whole.
    #[test]
    fn data_frames_around_the_chunk_size_arrive_whole() {
        let mut p = pair("net", "s3cret");
        run(&mut p);
        for len in [
            CHUNK_BYTES - 200,
            CHUNK_BYTES - 1,
            CHUNK_BYTES,
            CHUNK_BYTES + 1,
            2 * CHUNK_BYTES - 40,
            2 * CHUNK_BYTES,
            300_001,
        ] {
            for signed in [false, true] {
                let Frame::Data(mut e) = envelope(len) else {
                    unreachable!()
                };
                e.sealed = (0..len)
                    .map(|i| (i % 251) as u8)
                    .collect::<Vec<u8>>()
                    .into();
                e.signature =
                    signed.then(|| vec![0x5c; crate::wire::frame::ENVELOPE_SIGNATURE_BYTES]);
                let frame = Frame::Data(e);
                p.a.send_frame(&frame).unwrap();
                deliver(&mut p.a, &mut p.b, 0);
                let got: Vec<Frame> = std::iter::from_fn(|| p.b.poll_event())
                    .filter_map(|e| match e {
                        Event::Frame(f) => Some(*f),
                        _ => None,
                    })
                    .collect();
                assert!(got == vec![frame], "{len} bytes, signed: {signed}");
            }
        }
        assert_eq!(p.b.phase(), Phase::Active);
    }

    /// Chunks adding up to more than `max_frame_bytes` close the link (oversize), as one such
    /// record would.
    #[test]
    fn chunks_beyond_the_frame_limit_close_the_link() {
        let mut p = pair("net", "s3cret");
        run(&mut p);
        for _ in 0..(1 << 20) / CHUNK_BYTES + 1 {
            let chunk = Frame::Chunk {
                bytes: vec![0; CHUNK_BYTES],
                last: false,
            };
            let mut record = vec![0u8; COUNTER_BYTES];
            chunk.encode_into(&mut record);
            p.a.send_record(record, true);
        }
        deliver(&mut p.a, &mut p.b, 0);
        let closed: Vec<Event> = std::iter::from_fn(|| p.b.poll_event()).collect();
        assert!(
            closed.contains(&Event::Closed(Cause::Oversize)),
            "{closed:?}"
        );
    }

    #[test]
    fn handshake_times_out_when_nobody_answers() {
        let (la, ka) = node("a", "net", "s3cret");
        let mut a = Link::dial(params(), la, ka, 0).unwrap();
        let mut sent = 0;
        while a.phase() != Phase::Closed {
            let t = a.next_timeout().unwrap();
            a.handle_timeout(t);
            while a.poll_transmit().is_some() {
                sent += 1;
            }
        }
        // msg1 only (streams retransmit for us), then the 5 s deadline.
        assert_eq!(sent, 1);
        assert_eq!(a.poll_event(), Some(Event::Closed(Cause::Timeout)));
    }
}
