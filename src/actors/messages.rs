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
//! two subscribers ([`LinkEvents`]).

use std::net::SocketAddr;

use actix::prelude::*;

use crate::config::Endpoint;
use crate::proto::router::LinkInfo;
use crate::wire::frame::Frame;
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
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct LinkDown {
    /// The link.
    pub link_id: u64,
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
