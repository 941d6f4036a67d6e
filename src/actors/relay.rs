//! RelayActor: routing and the message path.
//!
//! - Routing: it knows every direct link (fed by the DiscoveryActor) and runs link-state routing
//!   ([`RoutingTable`]): it advertises its own links with their measured RTT as cost whenever they
//!   change and every [`ADVERT_REFRESH_MS`], floods the adverts it learns to its other
//!   neighbours, and picks next hops by shortest path (hop limit 16).
//! - Sending: an HTTP handler sends [`Send`]; the relay seals the message end to end for the
//!   target (key cached per peer: one X25519 per peer, not per message), remembers the pending
//!   request, and hands the envelope to the PeerActor of the best link to the next hop. The answer
//!   comes back as a sealed reply and completes the request; a timer sweep fails what was not
//!   answered in time.
//! - Receiving: envelopes for this node are opened, checked against replays, and dispatched: a
//!   body naming a configured script runs it through the ScriptActor; anything else is a plain
//!   message, logged and counted. The outcome goes back sealed.
//! - Forwarding: envelopes for other nodes are passed on unopened (the relay cannot read or alter
//!   them), with a hop counter and an id cache as the last guard against loops, and counted per
//!   origin network.
//!
//! - Public node: links from members of other networks it relays for (`Foreign` links) form
//!   one [`Domain`] per network, with its own routing table and adverts, never mixed with ours:
//!   foreign members see only their own network plus this node as a relay, and we see none of
//!   their messages (sealed under their network's keys). Data is forwarded within a domain
//!   under a token bucket per network; control frames are never limited.
//! - Hole punching: a member reached only through a relay gets a `punch_request` sent to that
//!   relay (by the side with the lower id); a relay coordinates requests between two members
//!   it links to over UDP; punch datagrams go out through the UDP listener socket and, once one
//!   comes back, the lower id dials the opened path (see [`crate::proto::punch`]).
//!
//! Everything happens on the node's one arbiter: a message costs no thread hop between the
//! relay and the links.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::Bytes;
use log::{debug, info, warn};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::actors::discovery::{Dial, DiscoveryActor};
use crate::actors::listener::{SendPunch, UdpEndpoint};
use crate::actors::peer::{PeerActor, PeerState, SendFrame, StatusCell};
use crate::actors::script::{RunScript, ScriptActor, ScriptError};
use crate::config::{Endpoint, Host, Transport};
use crate::node::NodeShared;
use crate::proto::e2e::{self, E2eError, Outcome, PairKey, Payload, ReplayCache};
use crate::proto::punch::{self, Action, Puncher};
use crate::proto::routing::{Advert, Applied, RoutingTable};
use crate::proto::token_bucket::TokenBucket;
use crate::wire::frame::{Envelope, Frame, LinkState, MessageKind, Neighbor, Punch};
use crate::wire::udp::PUNCH_TOKEN_BYTES;

/// Hop limit for envelopes and routes (EasyTier's and RIP's order of magnitude).
pub const MAX_HOPS: u8 = 16;
/// Requests awaiting an answer at once; beyond it `/send` answers 503.
pub const MAX_PENDING: usize = 65_536;
/// Re-advertise our links this often even without change (fresh RTT costs, and a bound on how
/// long a lost advert can leave others stale).
pub const ADVERT_REFRESH_MS: u64 = 30_000;
/// Link changes within this window go out as one advert: when a node joins a mesh, its links
/// come up one by one, and an advert per link would be flooded through the whole network each
/// time (the 50-node mesh benchmark spent its CPU there).
pub const ADVERT_COALESCE_MS: u64 = 100;
/// When to re-advertise after a new neighbour, so its measured cost replaces the default (the
/// first ping goes out as the link comes up; one second covers its pong on any sane path).
pub const FIRST_COST_READVERT_MS: u64 = 1_000;
/// Forget an advert not refreshed for this long (four refreshes).
pub const ADVERT_MAX_AGE_MS: u64 = 4 * ADVERT_REFRESH_MS;
/// Cost of a link before its first RTT sample: 10 ms, a pessimistic LAN figure.
pub const DEFAULT_LINK_COST_US: u32 = 10_000;
/// Envelope ids remembered for loop detection when forwarding.
pub const FORWARD_SEEN: usize = 16_384;
/// (source, id) pairs remembered against replays at the target.
pub const REPLAY_CACHE: usize = 65_536;
/// Inbound frames from links queued for the relay; beyond it they are dropped and counted.
pub const RELAY_MAILBOX: usize = 16_384;
/// Room kept in a reply frame for the envelope header, seal and payload fields around a
/// script's output (ids are at most 64 bytes each; 4 KiB is generous).
pub const REPLY_OVERHEAD_BYTES: usize = 4096;
/// Bytes of sealed requests kept by the origin to re-send them on another path when their
/// first hop's link is lost; requests beyond the budget are not re-sent (they time out).
pub const RESEND_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Sealed replies a target keeps, so a request re-sent after a link loss is answered again
/// instead of running its script twice; bounded by count and bytes, oldest evicted first.
pub const REPLY_CACHE_ENTRIES: usize = 4096;
/// Byte bound of the reply cache.
pub const REPLY_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Plain messages kept for `GET /messages` (newest last), and the most of each body kept.
pub const RECENT_MESSAGES: usize = 256;
/// Body bytes kept per stored message: 256 x 4 KiB bounds the store at 1 MiB.
pub const RECENT_BODY_BYTES: usize = 4096;
/// Added to the cost of a link to a public node of another network, in both directions, so a
/// path inside the network always wins and the public node carries traffic only when there is
/// none (one second: more than any sane path of 16 hops inside a network).
pub const RELAY_PENALTY_US: u32 = 1_000_000;
/// Punch attempts tracked at once (one per peer reached through a relay).
pub const MAX_PUNCHERS: usize = 256;
/// A relay coordinates at most one punch per requester and target in this time.
pub const PUNCH_COORDINATE_INTERVAL_MS: u64 = 1_000;
/// Coordinations remembered for that rate limit.
pub const MAX_PUNCH_COORDINATIONS: usize = 4096;
/// How often punch attempts are driven.
const PUNCH_TICK: Duration = Duration::from_millis(100);
/// How often unanswered requests are swept.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Send `body` to `target` and wait for the outcome (from an HTTP handler).
#[derive(Message)]
#[rtype(result = "Result<Delivery, SendError>")]
pub struct Send {
    /// Target node id (may be our own: loopback goes through the same seal and open).
    pub target: String,
    /// Message bytes.
    pub body: Bytes,
    /// How long to wait for the answer.
    pub timeout_ms: u64,
}

/// The answer to a [`Send`].
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Message id.
    pub id: u64,
    /// Links the request crossed (0 for loopback).
    pub hops: u8,
    /// What the target did.
    pub outcome: Outcome,
}

/// Why a [`Send`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No node of that id was ever heard of.
    #[error("no node {0:?} is known")]
    PeerNotFound(String),
    /// The node is known but unreachable now.
    #[error("no route to {0:?}")]
    NoRoute(String),
    /// No answer within the timeout.
    #[error("no answer from {0:?} within {1} ms")]
    Timeout(String, u64),
    /// Too many requests in flight, or a link's queue is full.
    #[error("too many messages in flight")]
    Busy,
    /// The target's key is unusable.
    #[error("cannot seal for {0:?}: {1}")]
    Crypto(String, String),
    /// The target is a public node of another network that relays for us: a path may go
    /// through it, but it cannot open our messages.
    #[error("{0:?} is a public node of another network (it relays for us but is not a member)")]
    NotMember(String),
}

/// A frame from a link for the relay (data or a link-state advert).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Inbound {
    pub link_id: u64,
    /// The peer's node id and network, from its hello: a dialer's link can deliver frames
    /// before its [`LinkReady`] (admission is still being answered), so the relay must not
    /// depend on knowing the link already.
    pub from: String,
    pub network: String,
    /// We dialled the link.
    pub dialed: bool,
    pub frame: Frame,
}

/// A link became usable for traffic to `node_id`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkReady {
    pub link_id: u64,
    pub node_id: String,
    /// The peer's network (ours, or another when one side is a public node).
    pub network: String,
    /// We dialled it.
    pub dialed: bool,
    pub public_key: [u8; 32],
    pub transport: Transport,
    pub peer: Addr<PeerActor>,
    pub status: StatusCell,
}

/// A punch datagram arrived on a UDP listener socket (from the listener).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PunchIn {
    /// The listener socket's address.
    pub local: std::net::SocketAddr,
    pub from: std::net::SocketAddr,
    pub token: [u8; PUNCH_TOKEN_BYTES],
    pub ack: bool,
}

/// The node's other actors, once they exist (the relay starts first).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wire {
    pub discovery: Addr<DiscoveryActor>,
    pub udp: Vec<UdpEndpoint>,
}

/// A link is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkGone {
    pub link_id: u64,
}

/// The current route to every reachable node, and relay counters.
#[derive(Message)]
#[rtype(result = "RelayReport")]
pub struct GetRoutes;

/// How a node is reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteReport {
    /// The neighbour a frame for the node goes to.
    pub next_hop: String,
    /// Links on the path.
    pub hops: u32,
    /// Sum of link RTTs on the path, microseconds.
    pub cost_us: u64,
    /// The node's identity key as pinned here, hex.
    pub public_key: Option<String>,
}

/// Relay counters for one origin network.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayedCount {
    pub messages: u64,
    pub bytes: u64,
}

/// Message counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MessageCounters {
    /// Requests sent from this node (including loopback).
    pub sent: u64,
    /// Requests for this node delivered as plain messages.
    pub delivered: u64,
    /// Requests for this node that ran a script.
    pub scripts_run: u64,
    /// Answers that completed a request of ours.
    pub replies: u64,
    /// Envelopes dropped: replayed, expired, unopenable, unknown source, no route, hop limit, loop.
    pub dropped: u64,
    /// Requests that got no answer in time.
    pub timed_out: u64,
    /// Requests re-sent on another path after their first hop's link was lost.
    pub resent: u64,
}

/// What `/status` takes from the relay.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    #[serde(skip)]
    pub routes: HashMap<String, RouteReport>,
    /// Envelopes forwarded for others, by origin network.
    pub relayed: HashMap<String, RelayedCount>,
    pub messages: MessageCounters,
    /// As a public node: each foreign network we relay for.
    pub foreign: std::collections::BTreeMap<String, ForeignReport>,
    /// Nodes that are public nodes of other networks relaying for us (not members).
    pub public_relays: Vec<String>,
    /// Hole punching toward members reached through a relay, by peer id.
    pub punch: std::collections::BTreeMap<String, PunchReport>,
}

/// One foreign network on a public node's `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ForeignReport {
    /// Its members linked to us, sorted.
    pub members: Vec<String>,
    /// Whether only control traffic is relayed (admitted by `relay_all_peer_rpc`, not by the
    /// whitelist).
    pub control_only: bool,
    /// The token bucket's rate, bytes per second (0 = unlimited).
    pub bps_limit: u64,
    /// Data forwarded between its members.
    pub messages_relayed: u64,
    pub bytes_relayed: u64,
    /// Data dropped: over the budget, control-only, or addressed to us.
    pub messages_dropped: u64,
    pub bytes_dropped: u64,
    /// Punches coordinated between its members.
    pub punches_coordinated: u64,
}

/// One peer's hole punching on `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct PunchReport {
    /// "waiting", "requested", "punching", "open" or "gave_up".
    pub state: &'static str,
    /// The relay asked to coordinate.
    pub relay: String,
    /// The address punched toward, or the one that answered.
    pub addr: Option<String>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// Why the last attempt failed (e.g. a symmetric NAT), if one did.
    pub last_error: Option<String>,
}

/// The plain messages this node received most recently (newest last).
#[derive(Message)]
#[rtype(result = "Vec<ReceivedMessage>")]
pub struct GetMessages;

/// A plain message this node received.
#[derive(Debug, Clone, Serialize)]
pub struct ReceivedMessage {
    /// Message id (decimal string: JSON numbers lose u64 precision).
    pub id: String,
    /// Sender node id.
    pub source: String,
    /// When it arrived, unix ms.
    pub received_unix_ms: u64,
    /// Links it crossed.
    pub hops: u8,
    /// Body size in bytes.
    pub bytes: usize,
    /// The body as text (lossy UTF-8), at most [`RECENT_BODY_BYTES`].
    pub body: String,
    /// Whether `body` was cut.
    pub truncated: bool,
}

/// What a link is to us.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkKind {
    /// A member of our network.
    Member,
    /// A public node of another network that we dialled: it relays for us, it is not a member.
    Upstream,
    /// A member of the named foreign network that dialled us as its public node.
    Foreign(String),
}

impl LinkKind {
    /// The foreign network whose domain the link belongs to; `None` for our own.
    fn domain(&self) -> Option<&str> {
        match self {
            LinkKind::Foreign(n) => Some(n),
            LinkKind::Member | LinkKind::Upstream => None,
        }
    }
}

/// A direct link as the relay sees it.
struct Direct {
    node_id: String,
    kind: LinkKind,
    transport: Transport,
    peer: Addr<PeerActor>,
    status: StatusCell,
}

/// A foreign network we relay for, as a public node: its own routing and counters.
struct Domain {
    /// Its members' adverts and ours for it (we appear as a relay node).
    routing: RoutingTable,
    /// Identity keys by member id, as their adverts and links told us.
    keys: HashMap<String, [u8; 32]>,
    /// Admitted by `relay_all_peer_rpc` only: its data is dropped.
    control_only: bool,
    bucket: TokenBucket,
    relayed: RelayedCount,
    dropped: RelayedCount,
    punches: u64,
    advert_pending: bool,
}

/// Our punching toward one peer.
struct PunchEntry {
    puncher: Puncher,
    /// The relay asked (or that told us to punch).
    relay: String,
    /// The coordination's token, once the relay's `punch` arrived.
    token: Option<[u8; PUNCH_TOKEN_BYTES]>,
    /// The UDP socket to punch from (the one our link to the relay uses).
    socket: Option<std::net::SocketAddr>,
    /// When the path opened, to retry if no link comes up over it.
    opened_ms: Option<u64>,
}

/// A request awaiting its answer.
struct Pending {
    target: String,
    deadline_ms: u64,
    timeout_ms: u64,
    done: oneshot::Sender<Result<Delivery, SendError>>,
    /// The sealed request as first sent (hops 0), to re-send on another path; `None` when it
    /// did not fit [`RESEND_BUDGET_BYTES`].
    resend: Option<Envelope>,
    /// The neighbour it last went to.
    first_hop: String,
}

/// See the module docs.
pub struct RelayActor {
    node: Arc<NodeShared>,
    script: Addr<ScriptActor>,
    links: HashMap<u64, Direct>,
    /// Identity keys by node id: the operator's pinned keys, then pinned once seen (direct
    /// hello or advert).
    keys: HashMap<String, [u8; 32]>,
    /// End-to-end keys by node id, derived once.
    pair_keys: HashMap<String, Arc<PairKey>>,
    routing: RoutingTable,
    pending: HashMap<u64, Pending>,
    replay: ReplayCache,
    forwarded: HashSet<(String, u64)>,
    forwarded_order: VecDeque<(String, u64)>,
    relayed: HashMap<String, RelayedCount>,
    counters: MessageCounters,
    /// Recent plain messages, bounded by [`RECENT_MESSAGES`].
    recent: VecDeque<ReceivedMessage>,
    /// An advert is scheduled ([`ADVERT_COALESCE_MS`]).
    advert_pending: bool,
    /// Bytes held in `Pending::resend`.
    resend_bytes: usize,
    /// Sealed replies by (requester, request id), oldest first in `answered_order`.
    answered: HashMap<(String, u64), Envelope>,
    answered_order: VecDeque<(String, u64)>,
    answered_bytes: usize,
    /// Public nodes of other networks that relay for us (from links and adverts).
    relay_nodes: HashSet<String>,
    /// As a public node: one domain per foreign network.
    domains: HashMap<String, Domain>,
    /// Our punch attempts, by peer.
    punchers: HashMap<String, PunchEntry>,
    /// As a relay: when we last coordinated a punch per (domain, requester, target).
    coordinated: HashMap<(Option<String>, String, String), u64>,
    discovery: Option<Addr<DiscoveryActor>>,
    udp: Vec<UdpEndpoint>,
}

impl RelayActor {
    /// A relay for this node; `script` runs the scripts messages ask for.
    pub fn new(node: Arc<NodeShared>, script: Addr<ScriptActor>) -> RelayActor {
        let seq_base = unix_ms() * 1000;
        RelayActor {
            routing: RoutingTable::new(&node.local.node_id, seq_base),
            keys: node
                .config
                .pinned_keys
                .iter()
                .map(|(id, key)| (id.clone(), *key))
                .chain([(node.local.node_id.clone(), node.keys.identity.public())])
                .collect(),
            node,
            script,
            links: HashMap::new(),
            pair_keys: HashMap::new(),
            pending: HashMap::new(),
            replay: ReplayCache::new(REPLAY_CACHE),
            forwarded: HashSet::new(),
            forwarded_order: VecDeque::new(),
            relayed: HashMap::new(),
            counters: MessageCounters::default(),
            recent: VecDeque::new(),
            advert_pending: false,
            resend_bytes: 0,
            answered: HashMap::new(),
            answered_order: VecDeque::new(),
            answered_bytes: 0,
            relay_nodes: HashSet::new(),
            domains: HashMap::new(),
            punchers: HashMap::new(),
            coordinated: HashMap::new(),
            discovery: None,
            udp: Vec::new(),
        }
    }

    fn me(&self) -> &str {
        &self.node.local.node_id
    }

    /// What a link to a node of `network` is to us; `dialed`: we dialled it.
    fn link_kind(&self, network: &str, dialed: bool) -> LinkKind {
        if network == self.node.local.network {
            LinkKind::Member
        } else if dialed {
            LinkKind::Upstream
        } else {
            LinkKind::Foreign(network.to_string())
        }
    }

    /// Whether we dialled `id` and it turned out a public node of another network.
    fn is_upstream(&self, id: &str) -> bool {
        self.links
            .values()
            .any(|d| d.node_id == id && d.kind == LinkKind::Upstream)
    }

    /// The best Active link to a neighbour: lowest RTT, then LAN over public addresses, then
    /// UDP, TCP, WebSocket.
    fn best_link(&self, node_id: &str) -> Option<&Direct> {
        self.best_link_in(None, node_id)
    }

    /// [`RelayActor::best_link`] within a domain (`None`: our own network).
    fn best_link_in(&self, domain: Option<&str>, node_id: &str) -> Option<&Direct> {
        self.links
            .values()
            .filter(|d| d.node_id == node_id && d.kind.domain() == domain)
            .filter_map(|d| {
                let s = d.status.lock().ok()?;
                (s.state == PeerState::Active).then(|| {
                    let rtt = s.rtt.and_then(|r| r.avg_us()).unwrap_or(u64::MAX);
                    let public = s.remote_addr.is_some_and(|a| is_public(a.ip()));
                    ((rtt, public, transport_rank(d.transport)), d)
                })
            })
            .min_by_key(|(key, _)| *key)
            .map(|(_, d)| d)
    }

    /// Our neighbours in a domain with their link cost, for our advert there. Links to public
    /// nodes (ours to them, or theirs to us in a foreign domain) carry [`RELAY_PENALTY_US`].
    fn neighbours_in(&self, domain: Option<&str>) -> Vec<(String, u32)> {
        self.domain_neighbours(domain)
            .into_iter()
            .filter_map(|id| {
                let d = self.best_link_in(domain, id)?;
                let cost = d
                    .status
                    .lock()
                    .ok()
                    .and_then(|s| s.rtt.and_then(|r| r.avg_us()))
                    .map_or(DEFAULT_LINK_COST_US, |us| {
                        us.clamp(1, u32::MAX as u64) as u32
                    });
                let penalty = match d.kind {
                    LinkKind::Member => 0,
                    LinkKind::Upstream | LinkKind::Foreign(_) => RELAY_PENALTY_US,
                };
                Some((id.to_string(), cost.saturating_add(penalty)))
            })
            .collect()
    }

    /// Ids of the nodes linked to us in a domain, sorted, once each.
    fn domain_neighbours(&self, domain: Option<&str>) -> Vec<&str> {
        let mut ids: Vec<&str> = self
            .links
            .values()
            .filter(|d| d.kind.domain() == domain)
            .map(|d| d.node_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Re-advertises our links soon, coalescing changes that come in a burst.
    fn advertise_soon(&mut self, ctx: &mut Context<Self>) {
        if self.advert_pending {
            return;
        }
        self.advert_pending = true;
        ctx.run_later(Duration::from_millis(ADVERT_COALESCE_MS), |act, ctx| {
            act.advert_pending = false;
            act.advertise();
            act.resend_stranded(ctx);
        });
    }

    /// Re-advertises our links to every neighbour.
    fn advertise(&mut self) {
        let advert = self
            .routing
            .set_local(self.neighbours_in(None), self.node.now_ms());
        self.flood(&advert, None);
    }

    /// An advert of a domain as a frame: in a foreign domain, ours is flagged as a relay's.
    fn to_wire_in(&self, domain: Option<&str>, advert: &Advert) -> Option<LinkState> {
        let keys = match domain {
            None => &self.keys,
            Some(n) => &self.domains.get(n)?.keys,
        };
        let mine = advert.origin == self.me();
        let public_key = if mine {
            self.node.keys.identity.public()
        } else {
            *keys.get(&advert.origin)?
        };
        let addrs = if mine {
            self.node.local.listen_addrs.clone()
        } else {
            Vec::new()
        };
        let relay = match domain {
            Some(_) => mine,
            None => self.relay_nodes.contains(&advert.origin),
        };
        Some(LinkState {
            relay,
            origin: advert.origin.clone(),
            seq: advert.seq,
            public_key,
            addrs,
            neighbors: advert
                .neighbors
                .iter()
                .map(|(id, cost_us)| Neighbor {
                    id: id.clone(),
                    cost_us: *cost_us,
                })
                .collect(),
        })
    }

    /// Sends an advert to every neighbour but `except`.
    fn flood(&self, advert: &Advert, except: Option<&str>) {
        self.flood_in(None, advert, except)
    }

    /// Sends an advert to every neighbour of a domain but `except`.
    fn flood_in(&self, domain: Option<&str>, advert: &Advert, except: Option<&str>) {
        let Some(state) = self.to_wire_in(domain, advert) else {
            return;
        };
        for n in self.domain_neighbours(domain) {
            if Some(n) == except {
                continue;
            }
            if let Some(d) = self.best_link_in(domain, n) {
                let _ = d.peer.try_send(SendFrame {
                    frame: Frame::LinkState(state.clone()),
                });
            }
        }
    }

    /// Gives a neighbour that just linked up everything we know in its domain.
    fn sync_neighbour(&self, domain: Option<&str>, node_id: &str) {
        let Some(d) = self.best_link_in(domain, node_id) else {
            return;
        };
        let adverts = match domain {
            None => self.routing.adverts(),
            Some(n) => match self.domains.get(n) {
                Some(dom) => dom.routing.adverts(),
                None => return,
            },
        };
        for advert in adverts {
            if let Some(state) = self.to_wire_in(domain, &advert) {
                let _ = d.peer.try_send(SendFrame {
                    frame: Frame::LinkState(state),
                });
            }
        }
    }

    /// Pins a node's identity key; false (and a warning) if it contradicts the pinned one.
    fn learn_key(&mut self, id: &str, key: [u8; 32]) -> bool {
        match self.keys.get(id) {
            Some(k) if *k == key => true,
            Some(k) => {
                warn!(
                    "ignoring a new identity key for {id}: {} (pinned: {})",
                    hex::encode(key),
                    hex::encode(k)
                );
                false
            }
            None => {
                if self.keys.len() < crate::proto::peer_table::MAX_KNOWN_NODES {
                    self.keys.insert(id.to_string(), key);
                }
                true
            }
        }
    }

    fn pair_key(&mut self, id: &str) -> Result<Arc<PairKey>, SendError> {
        if let Some(k) = self.pair_keys.get(id) {
            return Ok(k.clone());
        }
        let public = *self
            .keys
            .get(id)
            .ok_or_else(|| SendError::PeerNotFound(id.to_string()))?;
        let keys = &self.node.keys;
        let key = PairKey::derive(&keys.identity, &public, &keys.network_key, self.me(), id)
            .map_err(|e| SendError::Crypto(id.to_string(), e.to_string()))?;
        let key = Arc::new(key);
        self.pair_keys.insert(id.to_string(), key.clone());
        Ok(key)
    }

    /// Builds and seals an envelope from us.
    fn seal(
        &mut self,
        target: &str,
        kind: MessageKind,
        ttl_ms: u64,
        payload: &Payload,
    ) -> Result<Envelope, SendError> {
        let key = self.pair_key(target)?;
        let mut envelope = Envelope {
            id: self.node.random_u64(),
            source: self.me().to_string(),
            target: target.to_string(),
            kind,
            timestamp_ms: unix_ms(),
            ttl_ms: ttl_ms.min(e2e::MAX_TTL_MS as u64) as u32,
            hops: 0,
            sealed: Vec::new(),
        };
        e2e::seal(&key, &mut envelope, &payload.encode())
            .map_err(|e| SendError::Crypto(target.to_string(), e.to_string()))?;
        Ok(envelope)
    }

    /// Sends an envelope toward its target (or handles it here for loopback); answers the
    /// neighbour it went to.
    fn route(
        &mut self,
        mut envelope: Envelope,
        ctx: &mut Context<Self>,
    ) -> Result<String, SendError> {
        if envelope.target == self.me() {
            self.on_envelope_for_me(envelope, ctx);
            return Ok(self.me().to_string());
        }
        // A node with an Active direct link gets the message directly (also before its
        // advert arrives, and even if link costs make a relayed path look cheaper: a relay
        // adds a hop of work and a point of failure); others go by the routing table.
        let next_hop = if self.best_link(&envelope.target).is_some() {
            envelope.target.clone()
        } else {
            match self.routing.route(&envelope.target) {
                Some(route) => route.next_hop,
                None => return Err(SendError::NoRoute(envelope.target.clone())),
            }
        };
        let link = self
            .best_link(&next_hop)
            .ok_or_else(|| SendError::NoRoute(envelope.target.clone()))?;
        envelope.hops = envelope.hops.saturating_add(1);
        link.peer
            .try_send(SendFrame {
                frame: Frame::Data(envelope),
            })
            .map_err(|_| SendError::Busy)?;
        Ok(next_hop)
    }

    /// Re-sends pending requests whose first hop is no longer linked, over whatever path the
    /// routing table has now. The target answers a duplicate from its reply cache, so a script
    /// never runs twice.
    fn resend_stranded(&mut self, ctx: &mut Context<Self>) {
        let stranded: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.resend.is_some())
            .filter(|(_, p)| self.best_link(&p.first_hop).is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in stranded {
            let Some(envelope) = self.pending.get(&id).and_then(|p| p.resend.clone()) else {
                continue;
            };
            match self.route(envelope, ctx) {
                Ok(next) => {
                    debug!("re-sent request {id} via {next} after losing its first hop");
                    self.counters.resent += 1;
                    if let Some(p) = self.pending.get_mut(&id) {
                        p.first_hop = next;
                    }
                }
                Err(e) => debug!("cannot re-send request {id} yet: {e}"),
            }
        }
    }

    /// Forgets a pending request, releasing its re-send copy.
    fn take_pending(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Some(e) = &p.resend {
            self.resend_bytes = self.resend_bytes.saturating_sub(e.sealed.len());
        }
        Some(p)
    }

    /// Remembers a sealed reply for re-sent duplicates of its request.
    fn remember_reply(&mut self, requester: &str, request_id: u64, reply: &Envelope) {
        let size = reply.sealed.len();
        if size > REPLY_CACHE_BYTES {
            return;
        }
        while self.answered_order.len() >= REPLY_CACHE_ENTRIES
            || self.answered_bytes + size > REPLY_CACHE_BYTES
        {
            let Some(old) = self.answered_order.pop_front() else {
                break;
            };
            if let Some(e) = self.answered.remove(&old) {
                self.answered_bytes -= e.sealed.len();
            }
        }
        let key = (requester.to_string(), request_id);
        self.answered_bytes += size;
        self.answered_order.push_back(key.clone());
        if let Some(old) = self.answered.insert(key, reply.clone()) {
            self.answered_bytes -= old.sealed.len();
        }
    }

    fn on_envelope(&mut self, envelope: Envelope, ctx: &mut Context<Self>) {
        if envelope.target == self.me() {
            self.on_envelope_for_me(envelope, ctx);
            return;
        }
        // Forward without opening.
        if envelope.hops >= MAX_HOPS {
            debug!(
                "dropping envelope {} from {}: hop limit",
                envelope.id, envelope.source
            );
            self.counters.dropped += 1;
            return;
        }
        let key = (envelope.source.clone(), envelope.id);
        if self.forwarded.contains(&key) {
            debug!(
                "dropping envelope {} from {}: seen (loop)",
                envelope.id, envelope.source
            );
            self.counters.dropped += 1;
            return;
        }
        if self.forwarded_order.len() >= FORWARD_SEEN {
            if let Some(old) = self.forwarded_order.pop_front() {
                self.forwarded.remove(&old);
            }
        }
        self.forwarded.insert(key.clone());
        self.forwarded_order.push_back(key);
        let bytes = envelope.sealed.len() as u64;
        let (source, target) = (envelope.source.clone(), envelope.target.clone());
        match self.route(envelope, ctx) {
            Ok(_) => {
                let c = self
                    .relayed
                    .entry(self.node.local.network.clone())
                    .or_default();
                c.messages += 1;
                c.bytes += bytes;
            }
            Err(e) => {
                debug!("cannot forward {source} -> {target}: {e}");
                self.counters.dropped += 1;
            }
        }
    }

    fn on_envelope_for_me(&mut self, envelope: Envelope, ctx: &mut Context<Self>) {
        let source = envelope.source.clone();
        let key = match self.pair_key(&source) {
            Ok(k) => k,
            Err(e) => {
                debug!("dropping envelope from {source}: {e}");
                self.counters.dropped += 1;
                return;
            }
        };
        let plaintext = match e2e::open(&key, &envelope) {
            Ok(p) => p,
            Err(e) => {
                warn!("dropping envelope {} from {source}: {e}", envelope.id);
                self.counters.dropped += 1;
                return;
            }
        };
        // Only authentic envelopes enter the replay cache, so forgeries cannot evict it.
        if let Err(e) = self.replay.check_and_insert(unix_ms(), &envelope) {
            let key = (source.clone(), envelope.id);
            if let (E2eError::Replayed, Some(reply)) = (&e, self.answered.get(&key)) {
                // The requester lost its path and re-sent: answer again, do not run again.
                debug!(
                    "answering re-sent request {} from {source} again",
                    envelope.id
                );
                let reply = reply.clone();
                if let Err(e) = self.route(reply, ctx) {
                    debug!("cannot answer {} at {source} again: {e}", envelope.id);
                }
                return;
            }
            debug!("dropping envelope {} from {source}: {e}", envelope.id);
            self.counters.dropped += 1;
            return;
        }
        let payload = match Payload::decode(&plaintext) {
            Ok(p) => p,
            Err(e) => {
                warn!("dropping envelope {} from {source}: {e}", envelope.id);
                self.counters.dropped += 1;
                return;
            }
        };
        match (envelope.kind, payload) {
            (MessageKind::Request, Payload::Message { body }) => {
                self.on_request(envelope, body, ctx)
            }
            (
                MessageKind::Response,
                Payload::Reply {
                    in_reply_to,
                    outcome,
                    request_hops,
                },
            ) => {
                // Only the node we asked may answer (a duplicate answer finds nothing pending).
                if self.pending.get(&in_reply_to).map(|p| p.target.as_str()) != Some(&source) {
                    debug!("late, unknown or misdirected reply {in_reply_to} from {source}");
                    return;
                }
                let Some(p) = self.take_pending(in_reply_to) else {
                    return;
                };
                self.counters.replies += 1;
                let _ = p.done.send(Ok(Delivery {
                    id: in_reply_to,
                    hops: request_hops,
                    outcome,
                }));
            }
            _ => {
                warn!(
                    "dropping envelope {} from {source}: kind and payload disagree",
                    envelope.id
                );
                self.counters.dropped += 1;
            }
        }
    }

    fn on_request(&mut self, envelope: Envelope, body: Vec<u8>, ctx: &mut Context<Self>) {
        let name = std::str::from_utf8(&body).map(str::trim).unwrap_or("");
        let is_script = self.node.config.scripts.contains_key(name);
        if !is_script {
            info!(
                "message {} from {} ({} bytes, {} hops)",
                envelope.id,
                envelope.source,
                body.len(),
                envelope.hops
            );
            self.counters.delivered += 1;
            if self.recent.len() >= RECENT_MESSAGES {
                self.recent.pop_front();
            }
            let kept = &body[..body.len().min(RECENT_BODY_BYTES)];
            self.recent.push_back(ReceivedMessage {
                id: envelope.id.to_string(),
                source: envelope.source.clone(),
                received_unix_ms: unix_ms(),
                hops: envelope.hops,
                bytes: body.len(),
                body: String::from_utf8_lossy(kept).into_owned(),
                truncated: kept.len() < body.len(),
            });
            self.reply(&envelope, Outcome::Delivered, ctx);
            return;
        }
        self.counters.scripts_run += 1;
        let run = RunScript {
            name: name.to_string(),
            source: envelope.source.clone(),
            message_id: envelope.id,
        };
        ctx.spawn(
            self.script
                .send(run)
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let outcome = match res {
                        Ok(Ok(mut out)) => {
                            // The reply must fit one frame: stderr gives way first, then stdout.
                            let budget = act
                                .node
                                .config
                                .max_frame_bytes
                                .saturating_sub(REPLY_OVERHEAD_BYTES);
                            let mut truncated = out.stdout_truncated || out.stderr_truncated;
                            if out.stdout.len() + out.stderr.len() > budget {
                                truncated = true;
                                out.stderr.truncate(budget.saturating_sub(out.stdout.len()));
                                out.stdout.truncate(budget);
                            }
                            Outcome::Script {
                                exit_code: out.exit_code,
                                stdout: out.stdout,
                                stderr: out.stderr,
                                timed_out: out.timed_out,
                                truncated,
                            }
                        }
                        Ok(Err(ScriptError::Busy)) => Outcome::Failed {
                            code: "script_busy".into(),
                            message: "too many scripts running or queued".into(),
                        },
                        Ok(Err(e)) => Outcome::Failed {
                            code: "script_failed".into(),
                            message: e.to_string(),
                        },
                        Err(e) => Outcome::Failed {
                            code: "script_failed".into(),
                            message: e.to_string(),
                        },
                    };
                    act.reply(&envelope, outcome, ctx);
                }),
        );
    }

    fn reply(&mut self, request: &Envelope, outcome: Outcome, ctx: &mut Context<Self>) {
        let payload = Payload::Reply {
            in_reply_to: request.id,
            outcome,
            request_hops: request.hops,
        };
        let ttl = request.ttl_ms as u64;
        match self.seal(&request.source, MessageKind::Response, ttl, &payload) {
            Ok(envelope) => {
                self.remember_reply(&request.source, request.id, &envelope);
                if let Err(e) = self.route(envelope, ctx) {
                    debug!("cannot answer {} at {}: {e}", request.id, request.source);
                }
            }
            Err(e) => warn!("cannot answer {} at {}: {e}", request.id, request.source),
        }
    }

    fn sweep(&mut self) {
        let now = self.node.now_ms();
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_ms <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.take_pending(id) {
                self.counters.timed_out += 1;
                let _ = p.done.send(Err(SendError::Timeout(p.target, p.timeout_ms)));
            }
        }
    }
}

/// Public node: the foreign domains.
impl RelayActor {
    /// A member of a foreign network linked up to us (discovery admitted it).
    fn foreign_link_ready(&mut self, network: &str, msg: LinkReady, ctx: &mut Context<Self>) {
        let config = &self.node.config;
        let control_only =
            !crate::proto::whitelist::admits(&config.relay_network_whitelist, network);
        let (rate, now_us, me) = (
            config.foreign_relay_bps_limit,
            self.node.now_us(),
            self.me().to_string(),
        );
        let domain = self
            .domains
            .entry(network.to_string())
            .or_insert_with(|| Domain {
                routing: RoutingTable::new(&me, unix_ms() * 1000),
                keys: HashMap::new(),
                control_only,
                bucket: TokenBucket::new(rate, now_us),
                relayed: RelayedCount::default(),
                dropped: RelayedCount::default(),
                punches: 0,
                advert_pending: false,
            });
        // The link proved this key (Noise); it replaces whatever an advert claimed.
        domain.keys.insert(msg.node_id.clone(), msg.public_key);
        let first = self.best_link_in(Some(network), &msg.node_id).is_none();
        let node_id = msg.node_id.clone();
        self.links.insert(
            msg.link_id,
            Direct {
                node_id: msg.node_id,
                kind: LinkKind::Foreign(network.to_string()),
                transport: msg.transport,
                peer: msg.peer,
                status: msg.status,
            },
        );
        if first {
            self.advertise_domain_soon(network, ctx);
            self.sync_neighbour(Some(network), &node_id);
            let network = network.to_string();
            ctx.run_later(
                Duration::from_millis(FIRST_COST_READVERT_MS),
                move |act, ctx| act.advertise_domain_soon(&network, ctx),
            );
        }
    }

    /// Re-advertises our links in a foreign domain soon, coalescing bursts.
    fn advertise_domain_soon(&mut self, network: &str, ctx: &mut Context<Self>) {
        let Some(d) = self.domains.get_mut(network) else {
            return;
        };
        if d.advert_pending {
            return;
        }
        d.advert_pending = true;
        let network = network.to_string();
        ctx.run_later(Duration::from_millis(ADVERT_COALESCE_MS), move |act, _| {
            if let Some(d) = act.domains.get_mut(&network) {
                d.advert_pending = false;
            }
            act.advertise_domain(&network);
        });
    }

    /// Advertises ourselves (as a relay) to a foreign domain's members.
    fn advertise_domain(&mut self, network: &str) {
        let neighbours = self.neighbours_in(Some(network));
        let now = self.node.now_ms();
        let Some(d) = self.domains.get_mut(network) else {
            return;
        };
        let advert = d.routing.set_local(neighbours, now);
        self.flood_in(Some(network), &advert, None);
    }

    /// A frame from a member of a foreign network. Only its own domain ever sees it.
    fn on_foreign_frame(&mut self, network: &str, from: &str, frame: Frame, _: &mut Context<Self>) {
        match frame {
            Frame::LinkState(state) => {
                let now = self.node.now_ms();
                let Some(d) = self.domains.get_mut(network) else {
                    return;
                };
                if state.origin != self.node.local.node_id
                    && !d.keys.contains_key(&state.origin)
                    && d.keys.len() < crate::proto::peer_table::MAX_KNOWN_NODES
                {
                    d.keys.insert(state.origin.clone(), state.public_key);
                }
                let advert = advert_of(state);
                match d.routing.apply(advert.clone(), now) {
                    Applied::Newer => self.flood_in(Some(network), &advert, Some(from)),
                    Applied::Readvertise => {
                        let own = d.routing.local_advert();
                        self.flood_in(Some(network), &own, None);
                    }
                    Applied::Stale | Applied::TableFull => {}
                }
            }
            Frame::Data(envelope) => self.forward_foreign(network, envelope),
            Frame::PunchRequest { target } => self.coordinate_punch(Some(network), from, &target),
            other => debug!(
                "ignoring {} from {from} of network {network:?}",
                other.kind()
            ),
        }
    }

    /// Forwards a foreign network's data between its members, unopened, within its budget,
    /// and counts what it relayed or dropped.
    fn forward_foreign(&mut self, network: &str, envelope: Envelope) {
        let bytes = envelope.sealed.len() as u64;
        let (source, target) = (envelope.source.clone(), envelope.target.clone());
        let result = self.pass_foreign(network, envelope);
        let Some(d) = self.domains.get_mut(network) else {
            return;
        };
        match result {
            Ok(()) => {
                d.relayed.messages += 1;
                d.relayed.bytes += bytes;
                let c = self.relayed.entry(network.to_string()).or_default();
                c.messages += 1;
                c.bytes += bytes;
            }
            Err(why) => {
                debug!("dropping {source} -> {target} of network {network:?}: {why}");
                d.dropped.messages += 1;
                d.dropped.bytes += bytes;
            }
        }
    }

    /// Passes one envelope of a foreign network on toward its target, or says why not.
    fn pass_foreign(&mut self, network: &str, mut envelope: Envelope) -> Result<(), &'static str> {
        let control_only = self
            .domains
            .get(network)
            .ok_or("unknown network")?
            .control_only;
        if envelope.target == self.node.local.node_id {
            // We are not a member: we cannot open it, and our scripts are not theirs.
            return Err("addressed to us, not a member");
        }
        if control_only {
            return Err("network admitted for control traffic only");
        }
        if envelope.hops >= MAX_HOPS {
            return Err("hop limit");
        }
        let next_hop = if self.best_link_in(Some(network), &envelope.target).is_some() {
            Some(envelope.target.clone())
        } else {
            self.domains
                .get_mut(network)
                .and_then(|d| d.routing.route(&envelope.target))
                .map(|r| r.next_hop)
        };
        let peer = next_hop
            .and_then(|n| self.best_link_in(Some(network), &n))
            .map(|l| l.peer.clone())
            .ok_or("no route")?;
        let now_us = self.node.now_us();
        let d = self.domains.get_mut(network).ok_or("unknown network")?;
        if !d.bucket.try_take(now_us, envelope.sealed.len() as u64) {
            return Err("over the relay budget");
        }
        envelope.hops = envelope.hops.saturating_add(1);
        peer.try_send(SendFrame {
            frame: Frame::Data(envelope),
        })
        .map_err(|_| "link queue full")
    }
}

/// Hole punching: the relay's coordination and our own attempts.
impl RelayActor {
    /// Sends a frame to a directly linked node of a domain; false if there is no link.
    fn send_in(&self, domain: Option<&str>, node_id: &str, frame: Frame) -> bool {
        self.best_link_in(domain, node_id)
            .is_some_and(|d| d.peer.try_send(SendFrame { frame }).is_ok())
    }

    /// The reflexive UDP address of a node linked to us over UDP in a domain.
    fn udp_remote(&self, domain: Option<&str>, node_id: &str) -> Option<std::net::SocketAddr> {
        self.links
            .values()
            .filter(|d| {
                d.node_id == node_id && d.kind.domain() == domain && d.transport == Transport::Udp
            })
            .find_map(|d| {
                // The source address of its datagrams: its reflexive address.
                let s = d.status.lock().ok()?;
                (s.state == PeerState::Active)
                    .then_some(s.remote_addr)
                    .flatten()
            })
    }

    /// As a relay: `from` asks for a punch toward `target`; both must be linked to us.
    fn coordinate_punch(&mut self, domain: Option<&str>, from: &str, target: &str) {
        let now = self.node.now_ms();
        let key = (
            domain.map(String::from),
            from.to_string(),
            target.to_string(),
        );
        if self
            .coordinated
            .get(&key)
            .is_some_and(|t| now < t + PUNCH_COORDINATE_INTERVAL_MS)
        {
            debug!("punch request {from} -> {target}: too soon after the last one");
            return;
        }
        if self.coordinated.len() >= MAX_PUNCH_COORDINATIONS {
            self.coordinated
                .retain(|_, t| now < *t + PUNCH_COORDINATE_INTERVAL_MS);
            if self.coordinated.len() >= MAX_PUNCH_COORDINATIONS {
                return;
            }
        }
        self.coordinated.insert(key, now);
        let result = punch::coordinate(
            self.udp_remote(domain, from),
            self.udp_remote(domain, target),
        );
        match result {
            Ok(p) => {
                let mut token = [0u8; PUNCH_TOKEN_BYTES];
                token[..8].copy_from_slice(&self.node.random_u64().to_le_bytes());
                token[8..].copy_from_slice(&self.node.random_u64().to_le_bytes());
                info!(
                    "coordinating a punch between {from} ({}) and {target} ({}){}",
                    p.to_target,
                    p.to_requester,
                    domain
                        .map(|n| format!(" of network {n:?}"))
                        .unwrap_or_default()
                );
                let to_requester = Frame::Punch(Punch {
                    peer: target.to_string(),
                    addr: p.to_requester.to_string(),
                    token,
                });
                let to_target = Frame::Punch(Punch {
                    peer: from.to_string(),
                    addr: p.to_target.to_string(),
                    token,
                });
                self.send_in(domain, target, to_target);
                self.send_in(domain, from, to_requester);
                if let Some(d) = domain.and_then(|n| self.domains.get_mut(n)) {
                    d.punches += 1;
                }
            }
            Err(e) => {
                debug!("cannot coordinate a punch {from} -> {target}: {e}");
                let refused = Frame::PunchRefused {
                    target: target.to_string(),
                    reason: e.to_string(),
                };
                self.send_in(domain, from, refused);
            }
        }
    }

    /// Starts punching toward members reached through exactly one relay (we request when our
    /// id is the lower one), and drives every attempt.
    fn drive_punching(&mut self) {
        let now = self.node.now_ms();
        let me = self.node.local.node_id.clone();
        let relays = &self.relay_nodes;
        let candidates: Vec<(String, String)> = self
            .routing
            .routes()
            .iter()
            .filter(|(id, r)| r.hops == 2 && me.as_str() < id.as_str() && !relays.contains(*id))
            .map(|(id, r)| (id.clone(), r.next_hop.clone()))
            .collect();
        for (peer, relay) in candidates {
            if self.punchers.len() >= MAX_PUNCHERS || self.best_link(&peer).is_some() {
                continue;
            }
            self.punchers.entry(peer).or_insert_with(|| PunchEntry {
                puncher: Puncher::new(now),
                relay,
                token: None,
                socket: None,
                opened_ms: None,
            });
        }
        let peers: Vec<String> = self.punchers.keys().cloned().collect();
        for peer in peers {
            let direct = self.best_link(&peer).is_some();
            let route = self.routing.route(&peer);
            let Some(e) = self.punchers.get_mut(&peer) else {
                continue;
            };
            if direct {
                e.opened_ms = None;
                continue;
            }
            if let punch::State::Open { .. } = e.puncher.state() {
                // The path opened but no link came up over it: try again later.
                let opened = *e.opened_ms.get_or_insert(now);
                if now > opened + 2 * punch::PUNCH_WINDOW_MS {
                    e.puncher.on_link_lost(now);
                    e.opened_ms = None;
                    e.token = None;
                }
                continue;
            }
            match e.puncher.poll(now) {
                Some(Action::Request) => {
                    let Some(route) = route.filter(|r| r.hops == 2) else {
                        continue; // reached directly or not at all now; the next poll retries
                    };
                    e.relay = route.next_hop.clone();
                    e.token = None;
                    debug!(
                        "asking {} to coordinate a punch toward {peer}",
                        route.next_hop
                    );
                    let frame = Frame::PunchRequest {
                        target: peer.clone(),
                    };
                    self.send_in(None, &route.next_hop, frame);
                }
                Some(Action::Send(addr)) => {
                    if let Some(token) = e.token {
                        let socket = e.socket;
                        self.send_punch(socket, addr, token, false);
                    }
                }
                Some(Action::Dial(_)) | None => {}
            }
        }
    }

    /// A relay tells us to punch toward `p.peer`.
    fn on_punch(&mut self, relay: &str, p: Punch) {
        if !self.node.config.hole_punching {
            debug!("ignoring a punch toward {} (hole_punching is off)", p.peer);
            return;
        }
        let Ok(addr) = p.addr.parse::<std::net::SocketAddr>() else {
            warn!("ignoring a punch from {relay}: bad address {:?}", p.addr);
            return;
        };
        if p.peer == self.me()
            || self.relay_nodes.contains(&p.peer)
            || self.best_link(&p.peer).is_some()
        {
            return;
        }
        // Punch from the socket our UDP link to the relay uses: its mapping is the address the
        // relay gave the peer.
        let socket = self
            .links
            .values()
            .filter(|d| d.node_id == relay && d.kind.domain().is_none())
            .filter(|d| d.transport == Transport::Udp)
            .find_map(|d| d.status.lock().ok().and_then(|s| s.local_addr));
        let now = self.node.now_ms();
        if !self.punchers.contains_key(&p.peer) && self.punchers.len() >= MAX_PUNCHERS {
            return;
        }
        let e = self
            .punchers
            .entry(p.peer.clone())
            .or_insert_with(|| PunchEntry {
                puncher: Puncher::new(now),
                relay: relay.to_string(),
                token: None,
                socket: None,
                opened_ms: None,
            });
        e.relay = relay.to_string();
        e.token = Some(p.token);
        e.socket = socket;
        if let Some(Action::Send(to)) = e.puncher.on_punch(addr, now) {
            info!(
                "punching toward {} at {to} (coordinated by {relay})",
                p.peer
            );
            self.send_punch(socket, to, p.token, false);
        }
    }

    /// A punch datagram arrived: answer it, and let the lower id dial the opened path.
    fn on_punch_datagram(&mut self, msg: PunchIn) {
        let me = self.node.local.node_id.clone();
        let Some((peer, e)) = self
            .punchers
            .iter_mut()
            .find(|(_, e)| e.token == Some(msg.token))
        else {
            debug!("punch datagram from {} with an unknown token", msg.from);
            return;
        };
        let peer = peer.clone();
        let we_dial = me < peer;
        let action = e.puncher.on_datagram(msg.from, we_dial);
        if !msg.ack {
            self.send_punch(Some(msg.local), msg.from, msg.token, true);
        }
        if let Some(Action::Dial(addr)) = action {
            info!("punched a path to {peer} at {addr}; dialling it");
            let target = Endpoint {
                transport: Transport::Udp,
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            };
            if let Some(discovery) = &self.discovery {
                discovery.do_send(Dial { target });
            }
        } else if action.is_none() && !msg.ack {
            debug!("punch datagram from {peer} at {}", msg.from);
        }
    }

    /// Sends a punch datagram from our UDP socket `socket` (or any of the right family).
    fn send_punch(
        &self,
        socket: Option<std::net::SocketAddr>,
        to: std::net::SocketAddr,
        token: [u8; PUNCH_TOKEN_BYTES],
        ack: bool,
    ) {
        let endpoint = self
            .udp
            .iter()
            .find(|u| Some(u.local) == socket)
            .or_else(|| self.udp.iter().find(|u| u.local.is_ipv4() == to.is_ipv4()));
        match endpoint {
            Some(u) => u.addr.do_send(SendPunch { to, token, ack }),
            None => debug!("no UDP socket to punch toward {to} from"),
        }
    }
}

impl PunchEntry {
    fn report(&self) -> PunchReport {
        let (state, addr) = match self.puncher.state() {
            punch::State::Waiting { .. } => ("waiting", None),
            punch::State::Requested { .. } => ("requested", None),
            punch::State::Punching { addr, .. } => ("punching", Some(addr.to_string())),
            punch::State::Open { addr } => ("open", Some(addr.to_string())),
            punch::State::GaveUp { .. } => ("gave_up", None),
        };
        PunchReport {
            state,
            relay: self.relay.clone(),
            addr,
            failures: self.puncher.failures(),
            last_error: match self.puncher.state() {
                punch::State::GaveUp { reason } => Some(reason.clone()),
                _ => self.puncher.last_error().map(String::from),
            },
        }
    }
}

impl Actor for RelayActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(RELAY_MAILBOX);
        ctx.run_interval(SWEEP_INTERVAL, |act, _| act.sweep());
        if self.node.config.hole_punching {
            ctx.run_interval(PUNCH_TICK, |act, _| act.drive_punching());
        }
        ctx.run_interval(Duration::from_millis(ADVERT_REFRESH_MS), |act, _| {
            let now = act.node.now_ms();
            for gone in act.routing.expire(now, ADVERT_MAX_AGE_MS) {
                debug!("advert of {gone} expired");
                if !act.is_upstream(&gone) {
                    act.relay_nodes.remove(&gone);
                }
            }
            act.advertise();
            let networks: Vec<String> = act.domains.keys().cloned().collect();
            for network in networks {
                if let Some(d) = act.domains.get_mut(&network) {
                    for gone in d.routing.expire(now, ADVERT_MAX_AGE_MS) {
                        debug!("advert of {gone} (network {network:?}) expired");
                    }
                }
                act.advertise_domain(&network);
            }
        });
    }
}

impl Handler<Wire> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: Wire, _: &mut Self::Context) {
        self.discovery = Some(msg.discovery);
        self.udp = msg.udp;
    }
}

impl Handler<PunchIn> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: PunchIn, _: &mut Self::Context) {
        self.on_punch_datagram(msg);
    }
}

impl Handler<Send> for RelayActor {
    type Result = ResponseFuture<Result<Delivery, SendError>>;

    fn handle(&mut self, msg: Send, ctx: &mut Self::Context) -> Self::Result {
        let target = msg.target.clone();
        let timeout_ms = msg.timeout_ms;
        let started = (|| {
            if self.pending.len() >= MAX_PENDING {
                return Err(SendError::Busy);
            }
            if self.relay_nodes.contains(&target) {
                return Err(SendError::NotMember(target.clone()));
            }
            if !self.keys.contains_key(&target) {
                return Err(SendError::PeerNotFound(target.clone()));
            }
            let payload = Payload::Message {
                body: msg.body.to_vec(),
            };
            let envelope = self.seal(&target, MessageKind::Request, timeout_ms, &payload)?;
            let (tx, rx) = oneshot::channel();
            let id = envelope.id;
            let size = envelope.sealed.len();
            let resend = (target != self.me() && self.resend_bytes + size <= RESEND_BUDGET_BYTES)
                .then(|| envelope.clone());
            if resend.is_some() {
                self.resend_bytes += size;
            }
            self.pending.insert(
                id,
                Pending {
                    target: target.clone(),
                    deadline_ms: self.node.now_ms() + timeout_ms,
                    timeout_ms,
                    done: tx,
                    resend,
                    first_hop: String::new(),
                },
            );
            self.counters.sent += 1;
            match self.route(envelope, ctx) {
                Ok(next) => {
                    if let Some(p) = self.pending.get_mut(&id) {
                        p.first_hop = next;
                    }
                }
                Err(e) => {
                    self.take_pending(id);
                    return Err(e);
                }
            }
            Ok(rx)
        })();
        Box::pin(async move {
            match started {
                Err(e) => Err(e),
                Ok(rx) => rx
                    .await
                    .unwrap_or(Err(SendError::Timeout(target, timeout_ms))),
            }
        })
    }
}

impl Handler<Inbound> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) {
        let kind = self.link_kind(&msg.network, msg.dialed);
        if let LinkKind::Foreign(network) = kind {
            // Only an admitted member's frames enter its network's domain (an acceptor's
            // LinkReady always precedes its frames).
            if self
                .links
                .get(&msg.link_id)
                .is_some_and(|d| d.kind.domain() == Some(network.as_str()))
            {
                self.on_foreign_frame(&network, &msg.from, msg.frame, ctx);
            }
            return;
        }
        let from = Some(msg.from);
        match msg.frame {
            Frame::Data(envelope) => self.on_envelope(envelope, ctx),
            Frame::LinkState(state) => {
                if !self.learn_key(&state.origin, state.public_key) {
                    return;
                }
                let relay = state.relay && state.origin != self.me();
                let advert = advert_of(state);
                match self.routing.apply(advert.clone(), self.node.now_ms()) {
                    Applied::Newer => {
                        // The flag follows the origin's newest advert, except for a public
                        // node we dialled ourselves: we know what it is.
                        if relay {
                            // Bounded like the adverts themselves (expired ones leave).
                            if self.relay_nodes.len() < crate::proto::routing::MAX_ORIGINS {
                                self.relay_nodes.insert(advert.origin.clone());
                            }
                        } else if !self.is_upstream(&advert.origin) {
                            self.relay_nodes.remove(&advert.origin);
                        }
                        self.flood(&advert, from.as_deref());
                        // A new path may have appeared for requests stranded by a lost link.
                        self.resend_stranded(ctx);
                    }
                    Applied::Readvertise => {
                        let own = self.routing.local_advert();
                        self.flood(&own, None);
                    }
                    Applied::Stale | Applied::TableFull => {}
                }
            }
            Frame::PunchRequest { target } => {
                self.coordinate_punch(None, from.as_deref().unwrap_or(""), &target)
            }
            Frame::Punch(p) => self.on_punch(from.as_deref().unwrap_or(""), p),
            Frame::PunchRefused { target, reason } => {
                let now = self.node.now_ms();
                if let Some(e) = self.punchers.get_mut(&target) {
                    e.puncher.on_refused(now, &reason);
                }
            }
            other => debug!("relay ignores {} frame", other.kind()),
        }
    }
}

impl Handler<LinkReady> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: LinkReady, ctx: &mut Self::Context) {
        let kind = self.link_kind(&msg.network, msg.dialed);
        if let LinkKind::Foreign(network) = &kind {
            self.foreign_link_ready(network, msg, ctx);
            return;
        }
        // Keys of our own network's nodes only: a foreign member never reaches this point.
        if !self.learn_key(&msg.node_id, msg.public_key) {
            return;
        }
        if kind == LinkKind::Upstream {
            self.relay_nodes.insert(msg.node_id.clone());
        }
        let node_id = msg.node_id.clone();
        let first = self.best_link(&node_id).is_none()
            && !self
                .links
                .values()
                .any(|d| d.node_id == node_id && d.kind.domain().is_none());
        self.links.insert(
            msg.link_id,
            Direct {
                node_id: msg.node_id,
                kind,
                transport: msg.transport,
                peer: msg.peer,
                status: msg.status,
            },
        );
        if first {
            self.advertise_soon(ctx);
            self.sync_neighbour(None, &node_id);
            // The first advert carries a default cost; re-advertise once the link's first
            // pongs have measured it, instead of waiting for the periodic refresh.
            ctx.run_later(Duration::from_millis(FIRST_COST_READVERT_MS), |act, ctx| {
                act.advertise_soon(ctx)
            });
        }
    }
}

impl Handler<LinkGone> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: LinkGone, ctx: &mut Self::Context) {
        if let Some(d) = self.links.remove(&msg.link_id) {
            let domain = d.kind.domain();
            let still = self
                .links
                .values()
                .any(|l| l.node_id == d.node_id && l.kind.domain() == domain);
            if still {
                return;
            }
            match domain {
                None => {
                    self.advertise_soon(ctx);
                    let now = self.node.now_ms();
                    if let Some(e) = self.punchers.get_mut(&d.node_id) {
                        e.puncher.on_link_lost(now);
                        e.token = None;
                    }
                }
                Some(network) => {
                    let network = network.to_string();
                    if self.domain_neighbours(Some(&network)).is_empty() {
                        info!("no member of network {network:?} is linked any more");
                        self.domains.remove(&network);
                    } else {
                        self.advertise_domain_soon(&network, ctx);
                    }
                }
            }
        }
    }
}

impl Handler<GetMessages> for RelayActor {
    type Result = MessageResult<GetMessages>;

    fn handle(&mut self, _: GetMessages, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.recent.iter().cloned().collect())
    }
}

impl Handler<GetRoutes> for RelayActor {
    type Result = MessageResult<GetRoutes>;

    fn handle(&mut self, _: GetRoutes, _: &mut Self::Context) -> Self::Result {
        let mut routes: HashMap<String, RouteReport> = self
            .routing
            .routes()
            .iter()
            .map(|(id, r)| {
                (
                    id.clone(),
                    RouteReport {
                        next_hop: r.next_hop.clone(),
                        hops: r.hops,
                        cost_us: r.cost_us,
                        public_key: self.keys.get(id).map(hex::encode),
                    },
                )
            })
            .collect();
        // Linked neighbours are reached directly (see `route`).
        let direct: Vec<String> = self
            .domain_neighbours(None)
            .into_iter()
            .map(String::from)
            .collect();
        for id in direct {
            let Some(link) = self.best_link(&id) else {
                continue;
            };
            let cost_us = link
                .status
                .lock()
                .ok()
                .and_then(|s| s.rtt.and_then(|r| r.avg_us()))
                .unwrap_or(DEFAULT_LINK_COST_US as u64);
            let route = RouteReport {
                next_hop: id.clone(),
                hops: 1,
                cost_us,
                public_key: self.keys.get(&id).map(hex::encode),
            };
            routes.insert(id, route);
        }
        let foreign = self
            .domains
            .iter()
            .map(|(network, d)| {
                let report = ForeignReport {
                    members: self
                        .domain_neighbours(Some(network))
                        .into_iter()
                        .map(String::from)
                        .collect(),
                    control_only: d.control_only,
                    bps_limit: d.bucket.rate(),
                    messages_relayed: d.relayed.messages,
                    bytes_relayed: d.relayed.bytes,
                    messages_dropped: d.dropped.messages,
                    bytes_dropped: d.dropped.bytes,
                    punches_coordinated: d.punches,
                };
                (network.clone(), report)
            })
            .collect();
        let punch = self
            .punchers
            .iter()
            .map(|(id, e)| (id.clone(), e.report()))
            .collect();
        let mut public_relays: Vec<String> = self.relay_nodes.iter().cloned().collect();
        public_relays.sort();
        MessageResult(RelayReport {
            routes,
            relayed: self.relayed.clone(),
            messages: self.counters.clone(),
            foreign,
            public_relays,
            punch,
        })
    }
}

/// The routing table's view of a `link_state` frame.
fn advert_of(state: LinkState) -> Advert {
    Advert {
        origin: state.origin,
        seq: state.seq,
        neighbors: state
            .neighbors
            .into_iter()
            .map(|n| (n.id, n.cost_us))
            .collect(),
    }
}

/// Tie-break between links of equal RTT: datagrams avoid head-of-line blocking, TCP is cheaper
/// than WebSocket framing.
fn transport_rank(t: Transport) -> u8 {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Ws => 2,
    }
}

/// Whether an address is on the public internet (not loopback, private, link-local or ULA).
fn is_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified())
        }
        std::net::IpAddr::V6(v6) => {
            let seg = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || (seg & 0xfe00) == 0xfc00
                || (seg & 0xffc0) == 0xfe80)
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_and_loopback_addresses_are_not_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.9",
            "172.16.5.5",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["198.51.100.7", "8.8.8.8", "2001:db8::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
