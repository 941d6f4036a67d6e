//! What happened on this node, for the event stream (`GET /events`).
//!
//! The router reports the events it decides ([`Event::Message`], [`Event::Route`],
//! [`Event::Punch`], [`Event::Delivery`]) as [`crate::proto::router::Action::Event`]; the
//! RelayActor adds what only the actors see (a link's transport and why it closed, a script's
//! duration). The EventActor numbers them, keeps a bounded ring for resumption and renders
//! each one to JSON once (`actors::events`).

use bytes::Bytes;

use crate::addr::Transport;

/// Body bytes a `message` event carries (the rest is in the inbox).
pub const EVENT_BODY_BYTES: usize = 4096;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A plain message was delivered to this node.
    Message {
        /// The message's id.
        message_id: u64,
        /// Its origin.
        source: String,
        /// Relays it passed.
        hops: u8,
        /// Its whole size.
        bytes: usize,
        /// Its first [`EVENT_BODY_BYTES`].
        body: Bytes,
        /// Sent with a ttl (on this node's disk before it was acknowledged).
        durable: bool,
    },
    /// A message published to a topic this node subscribes to was delivered here.
    Publish {
        /// The publication's id (the same at every subscriber).
        message_id: u64,
        /// Its origin.
        source: String,
        /// The topic it was published to.
        topic: String,
        /// Relays it passed.
        hops: u8,
        /// Its whole size.
        bytes: usize,
        /// Its first [`EVENT_BODY_BYTES`].
        body: Bytes,
        /// Published with a ttl (on this node's disk before it was acknowledged).
        durable: bool,
    },
    /// A script ran here for a request.
    Script {
        /// The script's name.
        name: String,
        /// The requesting node.
        source: String,
        /// The request's id.
        message_id: u64,
        /// Its exit code (none when killed by a signal or when it could not run).
        exit_code: Option<i32>,
        /// Killed at `script_timeout_ms`.
        timed_out: bool,
        /// How long it ran, milliseconds.
        duration_ms: u64,
        /// Why it did not run, if it did not.
        error: Option<String>,
    },
    /// A link to a node became Active.
    PeerUp {
        /// The node.
        node: String,
        /// The link's transport.
        transport: Transport,
        /// The link's id (as on `/status`).
        link_id: u64,
        /// What the link is to us: `member`, `foreign` (a member of another network that
        /// uses us as a public node), `upstream` (a public node of another network).
        kind: &'static str,
    },
    /// A link to a node closed.
    PeerDown {
        /// The node.
        node: String,
        /// The link's transport.
        transport: Transport,
        /// The link's id.
        link_id: u64,
        /// Why it closed.
        reason: String,
    },
    /// A node of our network became reachable, unreachable, or its path changed.
    Route {
        /// The node.
        node: String,
        /// Whether it is reachable now.
        reachable: bool,
        /// The neighbour messages to it go through (itself when linked directly).
        next_hop: Option<String>,
        /// Links on the path.
        hops: Option<u32>,
    },
    /// A hole punch toward a node changed state.
    Punch {
        /// The node.
        node: String,
        /// `open` (a datagram came back; the lower id dials), `linked` (a link came up over
        /// the punched path), `failed` (one attempt), `gave_up`.
        outcome: &'static str,
        /// Why it failed, if it did.
        reason: Option<String>,
    },
    /// A message this node sent with a ttl changed status.
    Delivery {
        /// The message's id.
        message_id: u64,
        /// Its target.
        target: String,
        /// Its status now (as `GET /messages/{id}` names it).
        status: &'static str,
        /// The carrier holding a copy, for `in_custody`.
        custody: Option<String>,
        /// What went wrong last, if anything.
        error: Option<String>,
    },
}

impl Event {
    /// The event's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Message { .. } => "message",
            Event::Publish { .. } => "publish",
            Event::Script { .. } => "script",
            Event::PeerUp { .. } => "peer_up",
            Event::PeerDown { .. } => "peer_down",
            Event::Route { .. } => "route",
            Event::Punch { .. } => "punch",
            Event::Delivery { .. } => "delivery",
        }
    }

    /// The node the event is from or about (what `?from=` matches).
    pub fn node(&self) -> &str {
        match self {
            Event::Message { source, .. }
            | Event::Publish { source, .. }
            | Event::Script { source, .. } => source,
            Event::PeerUp { node, .. }
            | Event::PeerDown { node, .. }
            | Event::Route { node, .. }
            | Event::Punch { node, .. } => node,
            Event::Delivery { target, .. } => target,
        }
    }
}

/// Every `type` there is, for validating `?types=`.
pub const EVENT_TYPES: [&str; 8] = [
    "message",
    "publish",
    "script",
    "peer_up",
    "peer_down",
    "route",
    "punch",
    "delivery",
];
