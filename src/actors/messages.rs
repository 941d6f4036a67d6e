//! The typed messages that cross between the node's actors, and the handles they hold of each
//! other.
//!
//! Every actor imports this module and none of its peers' modules for talking (only the
//! composition root and the actors that *create* others name concrete actor types), so the
//! actor graph has no import cycle: back-edges are `Recipient<M>` of a message defined here,
//! as in actix's chat example. `tests/actor_graph.rs` checks it.
//!
//! A link's life reaches the rest of the node as one event stream from its PeerActor:
//! `Admit` (authenticated; discovery decides) -> [`LinkUp`] (Active, with its kind) ->
//! [`Inbound`] frames and [`LinkRtt`] samples -> [`LinkDown`]. Discovery and the relay are its
//! two subscribers (through [`PeerPorts`] and [`RelayPorts`]).

use std::net::SocketAddr;

use actix::prelude::*;

use crate::addr::{Endpoint, Transport};
use crate::proto::link::{Rtt, WelcomeInfo};
use crate::proto::peer_state::PeerState;
use crate::proto::router::LinkInfo;
use crate::wire::frame::{CloseReason, Frame, Hello, NodeInfo};
use crate::wire::udp::PUNCH_TOKEN_BYTES;

/// Seal and send a frame on a link (relay -> PeerActor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendFrame {
    /// The frame.
    pub frame: Frame,
}

/// A frame from an Active link for the relay (PeerActor -> relay). Frames that arrive before
/// the link's [`LinkUp`] are held by the PeerActor, so the relay always knows the link.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound {
    /// The link it came on.
    pub link_id: u64,
    /// The frame (data, a link-state advert or a punch frame).
    pub frame: Frame,
}

/// A link became Active (PeerActor -> relay).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkUp {
    /// Identifies the link in every later event.
    pub link_id: u64,
    /// Who is at the other end and what the link is to us.
    pub info: LinkInfo,
    /// Where frames for the link go.
    pub send: Recipient<SendFrame>,
}

/// A link measured a new average RTT (PeerActor -> relay, when it changed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkRtt {
    /// The link.
    pub link_id: u64,
    /// Average pong RTT, microseconds.
    pub avg_us: u64,
}

/// An admitted link closed (PeerActor -> discovery and relay).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct LinkDown {
    /// The link.
    pub link_id: u64,
    /// Why it closed (as `/status` shows it in `last_error`).
    pub reason: String,
}

/// The relay's inboxes: where a PeerActor reports its link's life, and where a UDP listener
/// hands punch datagrams.
#[derive(Clone)]
pub struct RelayPorts {
    /// [`LinkUp`].
    pub up: Recipient<LinkUp>,
    /// [`LinkRtt`].
    pub rtt: Recipient<LinkRtt>,
    /// [`Inbound`].
    pub frames: Recipient<Inbound>,
    /// [`LinkDown`].
    pub down: Recipient<LinkDown>,
    /// [`PunchIn`].
    pub punches: Recipient<PunchIn>,
}

/// Dial an address (a path a hole punch opened); no-op if a dialer for it exists
/// (relay -> discovery).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dial {
    /// The address.
    pub target: Endpoint,
}

/// A punch datagram arrived on a UDP listener socket (listener -> relay).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PunchIn {
    /// The listener socket's address.
    pub local: SocketAddr,
    /// Its source.
    pub from: SocketAddr,
    /// The coordination's token.
    pub token: [u8; PUNCH_TOKEN_BYTES],
    /// An answer to our own punch datagram.
    pub ack: bool,
}

/// Send one hole-punch datagram from a UDP listener socket, so it leaves through the same NAT
/// mapping as our links (relay -> listener).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SendPunch {
    /// The destination.
    pub to: SocketAddr,
    /// The coordination's token.
    pub token: [u8; PUNCH_TOKEN_BYTES],
    /// An answer to a punch datagram.
    pub ack: bool,
}

// ---- PeerActor <-> DiscoveryActor ----

/// What `/status` shows about one link; owned by its PeerActor, asked for with
/// [`GetLinkStatus`].
#[derive(Debug, Clone)]
pub struct LinkStatus {
    /// The current connection's id (new per attempt; matches [`Admit::link_id`]).
    pub link_id: u64,
    /// The link's transport.
    pub transport: Transport,
    /// Did this node dial it?
    pub dialed: bool,
    /// The address dialled (dialers only).
    pub target: Option<Endpoint>,
    /// Local socket address of the current connection.
    pub local_addr: Option<SocketAddr>,
    /// Remote socket address of the current connection.
    pub remote_addr: Option<SocketAddr>,
    /// Init -> Active -> Disconnected.
    pub state: PeerState,
    /// The remote node, once it was admitted (kept while Disconnected).
    pub node_id: Option<String>,
    /// Pong RTT statistics of the current connection.
    pub rtt: Option<Rtt>,
    /// Node-clock microseconds when the peer was last heard.
    pub last_heard_us: Option<u64>,
    /// Why the last connection ended.
    pub last_error: Option<String>,
    /// Times the supervisor restarted this actor (dialers).
    pub restarts: u32,
    /// Dial attempts since the last success.
    pub attempts: u32,
    /// A dialer waiting because another link to the same node was preferred.
    pub standby: bool,
}

/// Asks a PeerActor for its [`LinkStatus`] (discovery, for `/status`).
#[derive(Message)]
#[rtype(result = "LinkStatus")]
pub struct GetLinkStatus;

/// Close the link (discovery -> PeerActor: it lost the duplicate rule, or the node shuts
/// down). With [`CloseReason::Shutdown`] a dialer also stops re-dialling.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct CloseLink {
    /// Sent to the peer in the `close` frame.
    pub reason: CloseReason,
}

/// How discovery reaches a link it admitted.
#[derive(Clone)]
pub struct PeerHandle {
    /// Closes it.
    pub close: Recipient<CloseLink>,
    /// Reads its status.
    pub status: Recipient<GetLinkStatus>,
}

/// An authenticated peer asks to keep its link (PeerActor -> discovery). Answers the
/// `welcome` node list, or a reason to close.
#[derive(Message)]
#[rtype(result = "Result<Vec<NodeInfo>, CloseReason>")]
pub struct Admit {
    /// The connection's id.
    pub link_id: u64,
    /// How to reach the PeerActor.
    pub peer: PeerHandle,
    /// The dialer's id in discovery, when we dialled.
    pub dialer: Option<u64>,
    /// The link's transport.
    pub transport: Transport,
    /// The peer's socket address.
    pub remote: SocketAddr,
    /// The peer's verified hello.
    pub hello: Box<Hello>,
    /// Dialer side: what the listener's welcome said.
    pub welcome: Option<WelcomeInfo>,
}

/// Everything a PeerActor reports to: discovery (admission, link down) and the relay.
#[derive(Clone)]
pub struct PeerPorts {
    /// [`Admit`].
    pub admit: Recipient<Admit>,
    /// [`LinkDown`] for discovery.
    pub down: Recipient<LinkDown>,
    /// The relay's inboxes.
    pub relay: RelayPorts,
}

// ---- UDP (QUIC) endpoints ----

/// A UDP listener's QUIC endpoint that dialers may use, with the address it is bound to.
/// Dialling from the listening socket is what makes hole punching work: the punch opened the
/// NAT mapping of that socket.
#[derive(Clone)]
pub struct UdpEndpoint {
    /// Bound address (its family and loopback-ness decide which remotes it can reach).
    pub local: SocketAddr,
    /// The endpoint on that socket.
    pub endpoint: quinn::Endpoint,
}
