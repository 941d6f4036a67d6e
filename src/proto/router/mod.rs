//! The router: routing, the message path, foreign domains and punch coordination, sans-io.
//!
//! The RelayActor drives one [`Router`] the way the PeerActor drives a [`crate::proto::link::Link`]
//! (quinn-proto's and boringtun's shape): it feeds events with the time ([`Now`]): a link up,
//! its RTT, a frame in, a frame a link could not take, a send request, a script's result, a
//! punch datagram, a timer; then it takes the [`Action`]s the router queued (send a frame on a
//! link, run a script, dial an address, send a punch datagram, complete a request) and arms one
//! timer for [`Router::next_timeout`]. No clock reads, no actors, no locks in here, so whole
//! networks of routers run in a deterministic simulation (`tests/sim.rs`).
//!
//! Inside:
//! - one `domain::Domain` per network: our own (home) and, as a public node, one per foreign
//!   network we relay for. A domain owns its routing table, key book, relay flags, loop guard
//!   and counters; its `domain::Policy` (home, or foreign with control-only and a byte
//!   budget) is the only difference between the two, so adverts, forwarding and punch
//!   coordination are one code path;
//! - `messages`: sealing, pending requests with their re-send copies, the target's replay and
//!   reply caches, the inbox of plain messages;
//! - `punching`: coordinating punches as a relay and our own attempts toward members reached
//!   through a relay.
//!
//! Links are learned from one event stream ([`Router::link_up`], [`Router::link_rtt`],
//! [`Router::link_down`]); a frame names only its link, whose kind the router knows from
//! `link_up` (the PeerActor holds frames back until its link is announced).

mod domain;
mod durable;
mod messages;
mod punching;
pub mod report;
pub mod sim;
mod topics;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use log::{debug, info};

use crate::addr::{Endpoint, Transport};
use crate::keys::KeyRing;
use crate::proto::advert::{self as signed, AdvertKey, Refusal};
use crate::proto::e2e::Outcome;
use crate::proto::event::Event;
use crate::proto::key_book::{Conflicts, Offer, Source};
use crate::proto::routing::{Advert, Applied};
use crate::proto::shaper::Shaper;
use crate::wire::frame::{self, Envelope, Frame, LinkState};
use crate::wire::udp::PUNCH_TOKEN_BYTES;

use domain::{Domain, Policy};
pub use durable::{CancelError, CarrierLimits, DurableLimits, MessageReport};
pub use topics::{PublishError, PublishLimits, Published, SubscribeError, TopicCounters};

pub use report::{
    DurableReport, ForeignReport, GraphEdge, GraphNode, MessageCounters, NetworkGraph, PunchReport,
    ReceivedMessage, RelayReport, RelayedCount, RouteReport, Topology,
};

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
/// Envelope ids remembered per domain for loop detection when forwarding.
pub const FORWARD_SEEN: usize = 16_384;
/// (source, id) pairs remembered against replays at the target.
pub const REPLAY_CACHE: usize = 65_536;
/// Room kept in a reply frame for the envelope header, seal and payload fields around a
/// script's output (ids are at most 64 bytes each; 4 KiB is generous).
pub const REPLY_OVERHEAD_BYTES: usize = 4096;
/// Bytes of sealed requests kept by the origin to re-send them on another path when their
/// first hop's link is lost; requests beyond the budget are not re-sent (they time out).
pub const RESEND_BUDGET_BYTES: usize = 64 * 1024 * 1024;
/// Sealed replies a target keeps, so a request re-sent after a link loss is answered again
/// instead of running its script twice; bounded by count and bytes, oldest evicted first.
pub const REPLY_CACHE_ENTRIES: usize = 4096;
/// A duplicate request is answered from the reply cache at most once per this interval.
pub const REANSWER_INTERVAL_MS: u64 = 250;
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
pub const PUNCH_TICK_MS: u64 = 100;
/// Most foreign networks a public node keeps a domain for (discovery refuses more).
pub const MAX_FOREIGN_DOMAINS: usize = 64;
/// An advert's seq starts at its origin's start time in unix microseconds; one dated more than
/// this far ahead of our clock is refused, so no origin can put its adverts out of reach of its
/// own later ones (generous: clocks of a day apart still route).
pub const MAX_SEQ_AHEAD_MS: u64 = 24 * 3600 * 1000;

/// The time, as the driver gives it with every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic microseconds since the node started: timers, token buckets, advert ages.
    pub us: u64,
    /// Wall clock, unix milliseconds: envelope timestamps, the replay window, the inbox.
    pub unix_ms: u64,
}

impl Now {
    /// Monotonic milliseconds since the node started.
    pub fn ms(&self) -> u64 {
        self.us / 1000
    }
}

/// What a link is to us.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// A member of our network.
    Member,
    /// A public node of another network that we dialled: it relays for us, it is not a member.
    Upstream,
    /// A member of the named foreign network that dialled us as its public node.
    Foreign(String),
}

impl LinkKind {
    /// Its name in events: `member`, `upstream` or `foreign`.
    pub fn name(&self) -> &'static str {
        match self {
            LinkKind::Member => "member",
            LinkKind::Upstream => "upstream",
            LinkKind::Foreign(_) => "foreign",
        }
    }

    /// What a link to a node of `peer_network` is to a node of `local_network`; `dialed`: we
    /// dialled it (a node of another network we dialled is a public node; one that dialled us
    /// is a member of a network we relay for).
    pub fn of(local_network: &str, peer_network: &str, dialed: bool) -> LinkKind {
        if peer_network == local_network {
            LinkKind::Member
        } else if dialed {
            LinkKind::Upstream
        } else {
            LinkKind::Foreign(peer_network.to_string())
        }
    }

    /// The foreign network whose domain the link belongs to; `None` for our own.
    pub fn domain(&self) -> Option<&str> {
        match self {
            LinkKind::Foreign(n) => Some(n),
            LinkKind::Member | LinkKind::Upstream => None,
        }
    }
}

/// An authenticated, admitted link, as its PeerActor announces it.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    /// The node at the other end.
    pub node_id: String,
    /// What it is to us.
    pub kind: LinkKind,
    /// Its transport.
    pub transport: Transport,
    /// The identity key the node proved in the Noise handshake.
    pub public_key: [u8; 32],
    /// The remote socket address (for a UDP link: the peer's reflexive address).
    pub remote: Option<SocketAddr>,
    /// Our socket address (for a UDP link: the listener socket to punch from).
    pub local: Option<SocketAddr>,
}

/// A link as the router holds it.
#[derive(Debug, Clone)]
struct Link {
    info: LinkInfo,
    /// Average pong RTT, once measured.
    rtt_us: Option<u64>,
}

/// What the router needs to know about its node.
#[derive(Clone)]
pub struct Settings {
    /// Our node id.
    pub node_id: String,
    /// Our network.
    pub network: String,
    /// Identity and network key (sealing end to end).
    pub keys: Arc<KeyRing>,
    /// Our listen URLs, put in our adverts.
    pub listen_addrs: Vec<String>,
    /// Names of the configured scripts: a body naming one runs it.
    pub scripts: BTreeSet<String>,
    /// Largest frame: a script's reply is cut to fit one.
    pub max_frame_bytes: usize,
    /// Try to punch direct UDP paths to members reached through a relay.
    pub hole_punching: bool,
    /// Foreign networks relayed with data (the rest admitted are control-only).
    pub relay_network_whitelist: Vec<String>,
    /// Relay budget per foreign network, bytes per second (0 = unlimited).
    pub foreign_relay_bps_limit: u64,
    /// Operator-pinned identity keys.
    pub pinned_keys: BTreeMap<String, [u8; 32]>,
    /// First advert sequence number (unix ms at start * 1000, so a restarted node's adverts
    /// supersede its old ones everywhere).
    pub seq_base: u64,
    /// Where message ids and punch tokens come from.
    pub random: Randomness,
    /// The network CA's key: members' adverts must carry a certificate it signed, and only
    /// keys certified (or proven on a link, which admission checked) are sealed to.
    pub network_ca: Option<[u8; 32]>,
    /// Our certificate (encoded), put in our adverts.
    pub certificate: Option<Vec<u8>>,
    /// Limits of durable messages (outbox size, longest ttl).
    pub durable: DurableLimits,
    /// What this node takes from others.
    pub incoming: IncomingLimits,
    /// This node carries durable messages for others, within these limits.
    pub carrier: Option<CarrierLimits>,
    /// Script name -> the only senders that may run it (absent: every member).
    pub script_allow: BTreeMap<String, BTreeSet<String>>,
    /// Topic filters from the config.
    pub subscriptions: Vec<String>,
    /// What this node may publish.
    pub publish: PublishLimits,
}

/// What a node takes from others (its own messages to itself pass too: one code path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncomingLimits {
    /// Largest body, in bytes.
    pub max_bytes: usize,
    /// Most links crossed.
    pub max_hops: u8,
    /// Messages per second from one sender, with a second of burst (0: no limit).
    pub per_sender_per_s: u64,
}

impl Default for IncomingLimits {
    fn default() -> Self {
        IncomingLimits {
            max_bytes: usize::MAX,
            max_hops: MAX_HOPS,
            per_sender_per_s: 0,
        }
    }
}

/// Random numbers drawn from the OS generator at once (see `Router::random_u64`).
const RANDOM_BATCH: usize = 32;

/// The router's source of message ids and punch tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Randomness {
    /// The operating system's generator (`getrandom`): what a node uses, so neither ids nor
    /// tokens can be predicted from others seen on the wire.
    Os,
    /// A seeded xorshift: deterministic, for simulations.
    Seeded(u64),
}

/// The answer to a send request.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Message id.
    pub id: u64,
    /// Links the request crossed (0 for loopback).
    pub hops: u8,
    /// What the target did.
    pub outcome: Outcome,
}

/// Why a send request failed.
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The outbox is at its limit (messages or bytes): nothing more is accepted with a ttl
    /// until some are delivered or expire.
    #[error("the outbox is full")]
    OutboxFull,
    /// The message store could not write (the message was not accepted).
    #[error("the message store cannot write: {0}")]
    Store(String),
    /// A public node on the path refused the message: our network's relay budget there is spent
    /// and its queue is full.
    #[error("relay {relay:?} is over this network's budget; retry after {retry_after_ms} ms")]
    OverBudget {
        /// The public node (our first hop toward it).
        relay: String,
        /// About when it has room again.
        retry_after_ms: u64,
    },
}

/// How a script the router asked for ended (the driver's report of [`Action::RunScript`]).
#[derive(Debug, Clone)]
pub enum ScriptResult {
    /// It ran to an end (or was killed on timeout).
    Ran {
        /// Exit code; `None` when killed by a signal.
        exit_code: Option<i32>,
        /// Its stdout (already capped by the script runner).
        stdout: Vec<u8>,
        /// Its stderr (already capped).
        stderr: Vec<u8>,
        /// Killed on timeout.
        timed_out: bool,
        /// Output was cut by the runner.
        truncated: bool,
    },
    /// Every slot and the queue were full.
    Busy,
    /// It could not run; why.
    Failed(String),
}

/// What the driver must do for the router.
#[derive(Debug)]
pub enum Action {
    /// Send a frame on a link; if the link cannot take it, report [`Router::frame_refused`].
    Send {
        /// The link's id.
        link: u64,
        /// The frame.
        frame: Frame,
    },
    /// Run a configured script and report [`Router::script_done`] with `job`.
    RunScript {
        /// Identifies the run in `script_done`.
        job: u64,
        /// The script's name.
        name: String,
        /// The requesting node (`MSGTIER_SOURCE`).
        source: String,
        /// The request's id (`MSGTIER_MESSAGE_ID`).
        message_id: u64,
    },
    /// Dial an address (a path a hole punch opened).
    Dial(Endpoint),
    /// Send a punch datagram from our UDP socket bound at `from` (or any of `to`'s family).
    Punch {
        /// Our socket to send from, if a particular one is needed.
        from: Option<SocketAddr>,
        /// The destination.
        to: SocketAddr,
        /// The coordination's token.
        token: [u8; PUNCH_TOKEN_BYTES],
        /// An answer to a punch datagram (no answer is expected to an ack).
        ack: bool,
    },
    /// Write to the message store, in order; `durable`: fsync'd before it is reported done.
    /// With a `token`, report [`Router::persisted`] with it once written (or failed).
    Persist {
        /// The changes.
        ops: Vec<crate::proto::durable::Op>,
        /// Wait for the fsync.
        durable: bool,
        /// What the router waits on, if anything.
        token: Option<u64>,
    },
    /// A durable send request was not answered within its timeout: answer it as queued (its
    /// delivery goes on).
    Queued {
        /// The id [`Router::send_durable`] answered.
        id: u64,
        /// Where it stands.
        status: crate::proto::durable::Status,
        /// When it expires (unix ms).
        expires_unix_ms: u64,
    },
    /// Something happened that the event stream reports.
    Event(crate::proto::event::Event),
    /// A send request ended.
    Complete {
        /// The id [`Router::send`] answered.
        id: u64,
        /// Its outcome.
        result: Result<Delivery, SendError>,
    },
}

/// See the module docs.
pub struct Router {
    /// Who we are.
    settings: Settings,
    /// Active links by id.
    links: HashMap<u64, Link>,
    /// Our own network.
    home: Domain,
    /// As a public node: one domain per foreign network with a member linked.
    foreign: HashMap<String, Domain>,
    /// Relay counters by origin network (kept when a foreign domain goes).
    relayed: HashMap<String, RelayedCount>,
    /// The message path's state.
    msgs: messages::Messages,
    /// Durable messages: the outbox and what we took as a target.
    durable: durable::Durable,
    /// Punch attempts and coordinations.
    punch: punching::Punching,
    /// Subscriptions and publishing.
    topics: topics::Topics,
    /// Actions for the driver, in order.
    actions: VecDeque<Action>,
    /// When every domain re-advertises and expires old adverts.
    refresh_at_ms: u64,
    /// When punch attempts are driven next.
    punch_at_ms: u64,
    /// xorshift state for ids and tokens under [`Randomness::Seeded`].
    rng: u64,
    /// Numbers drawn from the OS generator and not used yet (one system call per
    /// [`RANDOM_BATCH`], not per message; each is handed out once).
    random_pool: Vec<u64>,
    /// Our network's advert MAC key.
    advert_key: AdvertKey,
    /// Keys offered in adverts that contradict the one held (never taken), for `/status`.
    conflicts: Conflicts,
    /// The home routes the last `route` events described: (next hop, hops) by node.
    reported_routes: HashMap<String, (String, u32)>,
    /// The routing generation they were computed at.
    reported_generation: u64,
    /// When they were computed (route events are coalesced to one diff per
    /// [`ROUTE_EVENT_COALESCE_MS`]).
    reported_at_ms: u64,
}

/// Longest a `route` event waits for the graph to settle (adverts come in bursts).
pub const ROUTE_EVENT_COALESCE_MS: u64 = 100;

impl Router {
    /// A router for the node `settings` describe, at time `now`.
    pub fn new(settings: Settings, now: Now) -> Router {
        let mut home = Domain::new(
            &settings.node_id,
            Policy::Home,
            settings.seq_base,
            &settings.pinned_keys,
        );
        home.keys.offer(
            &settings.node_id,
            settings.keys.identity.public(),
            Source::Proven,
        );
        Router {
            msgs: messages::Messages::new(now.unix_ms),
            durable: durable::Durable::new(settings.durable),
            punch: punching::Punching::default(),
            topics: topics::Topics::new(settings.subscriptions.clone(), settings.publish),
            home,
            foreign: HashMap::new(),
            relayed: HashMap::new(),
            links: HashMap::new(),
            actions: VecDeque::new(),
            refresh_at_ms: now.ms() + ADVERT_REFRESH_MS,
            punch_at_ms: now.ms() + PUNCH_TICK_MS,
            rng: match settings.random {
                Randomness::Seeded(seed) => seed | 1,
                Randomness::Os => 0,
            },
            random_pool: Vec::new(),
            advert_key: AdvertKey::new(&settings.keys.network_key),
            conflicts: Conflicts::default(),
            reported_routes: HashMap::new(),
            reported_generation: 0,
            reported_at_ms: now.ms(),
            settings,
        }
    }

    /// Reports the home routes that appeared, went or changed since the last report, as
    /// `route` events.
    fn report_routes(&mut self, ms: u64) {
        self.reported_generation = self.home.routing.generation();
        self.reported_at_ms = ms;
        let now: HashMap<String, (String, u32)> = self
            .home
            .routing
            .routes()
            .iter()
            .map(|(id, r)| (id.clone(), (r.next_hop.clone(), r.hops)))
            .collect();
        let mut events = Vec::new();
        for (id, (next_hop, hops)) in &now {
            if self.reported_routes.get(id) != Some(&(next_hop.clone(), *hops)) {
                events.push(Event::Route {
                    node: id.clone(),
                    reachable: true,
                    next_hop: Some(next_hop.clone()),
                    hops: Some(*hops),
                });
            }
        }
        for id in self.reported_routes.keys() {
            if !now.contains_key(id) {
                events.push(Event::Route {
                    node: id.clone(),
                    reachable: false,
                    next_hop: None,
                    hops: None,
                });
            }
        }
        events.sort_by(|a, b| a.node().cmp(b.node()));
        self.actions.extend(events.into_iter().map(Action::Event));
        self.reported_routes = now;
    }

    /// Our node id.
    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    /// The next queued action.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Router::handle_timeout`] must run next (monotonic ms), if ever.
    pub fn next_timeout(&self) -> Option<u64> {
        let mut next = self.refresh_at_ms;
        let mut at = |t: Option<u64>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        for d in std::iter::once(&self.home).chain(self.foreign.values()) {
            at(d.advert_due_ms);
            at(d.readvert_at_ms);
            at(d.release_at_ms);
        }
        at(self.msgs.next_deadline());
        at(self.durable.next_deadline());
        if self.settings.hole_punching {
            at(Some(self.punch_at_ms));
        }
        if self.home.routing.generation() != self.reported_generation {
            at(Some(self.reported_at_ms + ROUTE_EVENT_COALESCE_MS));
        }
        Some(next)
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        let ms = now.ms();
        if ms >= self.refresh_at_ms {
            self.refresh_at_ms = ms + ADVERT_REFRESH_MS;
            self.forget_old(now);
            for dom in self.domain_names() {
                let gone = match self.domain_mut(dom.as_deref()) {
                    Some(d) => d.routing.expire(ms, ADVERT_MAX_AGE_MS),
                    None => continue,
                };
                for origin in gone {
                    debug!("advert of {origin} expired{}", in_network(dom.as_deref()));
                    self.advert_expired(dom.as_deref(), &origin);
                }
                self.advertise(now, dom.as_deref());
            }
        }
        for dom in self.domain_names() {
            let Some(d) = self.domain_mut(dom.as_deref()) else {
                continue;
            };
            if d.readvert_at_ms.is_some_and(|t| t <= ms) {
                d.readvert_at_ms = None;
                d.advert_due_ms.get_or_insert(ms + ADVERT_COALESCE_MS);
            }
            if d.advert_due_ms.is_some_and(|t| t <= ms) {
                d.advert_due_ms = None;
                self.advertise(now, dom.as_deref());
                if dom.is_none() {
                    self.resend_stranded(now);
                }
            }
        }
        self.release_shaped(now);
        self.expire_pending(now);
        self.durable_timeout(now);
        if self.settings.hole_punching && ms >= self.punch_at_ms {
            self.punch_at_ms = ms + PUNCH_TICK_MS;
            self.drive_punching(now);
        }
        if self.home.routing.generation() != self.reported_generation
            && ms >= self.reported_at_ms + ROUTE_EVENT_COALESCE_MS
        {
            self.report_routes(ms);
        }
    }

    /// Takes on what a config reload changed: the scripts (names and allow lists), which
    /// foreign networks get data relayed and at what budget. Foreign domains already here
    /// switch at once (their queued data is kept); nothing else moves.
    pub fn reconfigure(
        &mut self,
        now: Now,
        scripts: BTreeSet<String>,
        script_allow: BTreeMap<String, BTreeSet<String>>,
        relay_network_whitelist: Vec<String>,
        foreign_relay_bps_limit: u64,
        pinned_keys: BTreeMap<String, [u8; 32]>,
    ) {
        self.home.keys.repin(&pinned_keys);
        self.settings.pinned_keys = pinned_keys;
        self.settings.scripts = scripts;
        self.settings.script_allow = script_allow;
        self.settings.relay_network_whitelist = relay_network_whitelist;
        self.settings.foreign_relay_bps_limit = foreign_relay_bps_limit;
        for (network, d) in self.foreign.iter_mut() {
            if let Policy::Foreign {
                control_only,
                shaper,
            } = &mut d.policy
            {
                *control_only = !crate::proto::whitelist::admits(
                    &self.settings.relay_network_whitelist,
                    network,
                );
                shaper.set_rate(foreign_relay_bps_limit, now.us);
            }
        }
    }

    // ---- links ----

    /// A link became Active (authenticated and admitted by discovery).
    pub fn link_up(&mut self, now: Now, link: u64, info: LinkInfo) {
        let dom = info.kind.domain().map(String::from);
        if let Some(network) = &dom {
            if !self.foreign.contains_key(network) {
                if self.foreign.len() >= MAX_FOREIGN_DOMAINS {
                    return;
                }
                let control_only = !crate::proto::whitelist::admits(
                    &self.settings.relay_network_whitelist,
                    network,
                );
                let policy = Policy::Foreign {
                    control_only,
                    shaper: Shaper::new(self.settings.foreign_relay_bps_limit, now.us),
                };
                let d = Domain::new(
                    &self.settings.node_id,
                    policy,
                    now.unix_ms * 1000,
                    &BTreeMap::new(),
                );
                self.foreign.insert(network.clone(), d);
            }
        }
        let Some(d) = self.domain_mut(dom.as_deref()) else {
            return;
        };
        // The link proved this key (Noise); it replaces whatever an advert claimed first.
        match d.keys.offer(&info.node_id, info.public_key, Source::Proven) {
            Offer::Same => {}
            Offer::Changed => {
                if dom.is_none() {
                    self.msgs.forget_pair_key(&info.node_id);
                }
            }
            Offer::Refused => {
                // Only a pinned key can disagree here, and discovery refused such a link.
                debug!("link {link} to {}: key refused", info.node_id);
                return;
            }
        }
        if info.kind == LinkKind::Upstream {
            self.home.relay_nodes.insert(info.node_id.clone());
        }
        let node_id = info.node_id.clone();
        let transport = info.transport;
        let punched = dom.is_none() && transport == Transport::Udp && self.punched_to(&node_id);
        if punched {
            let event = Event::Punch {
                node: node_id.clone(),
                outcome: "linked",
                reason: None,
            };
            punching::count_outcome(&mut self.punch.outcomes, &event);
            self.actions.push_back(Action::Event(event));
        }
        let Some(d) = self.domain_mut(dom.as_deref()) else {
            return;
        };
        let ids = d.links.entry(node_id.clone()).or_default();
        let first = ids.is_empty();
        ids.push(link);
        self.links.insert(link, Link { info, rtt_us: None });
        if first {
            let ms = now.ms();
            if let Some(d) = self.domain_mut(dom.as_deref()) {
                d.advert_due_ms.get_or_insert(ms + ADVERT_COALESCE_MS);
                // The first advert carries a default cost; re-advertise once the link's first
                // pongs have measured it, instead of waiting for the periodic refresh.
                d.readvert_at_ms = Some(ms + FIRST_COST_READVERT_MS);
            }
            self.sync_neighbour(dom.as_deref(), &node_id);
            if dom.is_none() {
                self.durable_kick(now);
            }
        }
    }

    /// What the router holds about an Active link.
    pub fn link_info(&self, link: u64) -> Option<&LinkInfo> {
        self.links.get(&link).map(|l| &l.info)
    }

    /// A link measured a new average RTT.
    pub fn link_rtt(&mut self, link: u64, avg_us: u64) {
        if let Some(l) = self.links.get_mut(&link) {
            l.rtt_us = Some(avg_us);
        }
    }

    /// A link is gone.
    pub fn link_down(&mut self, now: Now, link: u64) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        let dom = l.info.kind.domain();
        let Some(d) = self.domain_mut(dom) else {
            return;
        };
        if let Some(ids) = d.links.get_mut(&l.info.node_id) {
            ids.retain(|id| *id != link);
            if !ids.is_empty() {
                return; // another link to the node is still up
            }
            d.links.remove(&l.info.node_id);
        }
        let ms = now.ms();
        match dom {
            None => {
                self.home
                    .advert_due_ms
                    .get_or_insert(ms + ADVERT_COALESCE_MS);
                self.punch_link_lost(now, &l.info.node_id);
            }
            Some(network) => {
                if self.neighbours(Some(network)).is_empty() {
                    info!("no member of network {network:?} is linked any more");
                    self.foreign.remove(network);
                } else if let Some(d) = self.foreign.get_mut(network) {
                    d.advert_due_ms.get_or_insert(ms + ADVERT_COALESCE_MS);
                }
            }
        }
    }

    /// A frame arrived on a link.
    pub fn handle_frame(&mut self, now: Now, link: u64, frame: Frame) {
        let Some(l) = self.links.get(&link) else {
            debug!("frame {} from unknown link {link} dropped", frame.kind());
            return;
        };
        let dom = l.info.kind.domain().map(String::from);
        let dom = dom.as_deref();
        if let Frame::Data(envelope) = frame {
            // The hot path: data needs the link's domain, and whether it is its source's link.
            let from_source = l.info.kind == LinkKind::Member && l.info.node_id == envelope.source;
            return self.on_data(now, dom, envelope, from_source);
        }
        let from = l.info.node_id.clone();
        let kind = l.info.kind.clone();
        match frame {
            Frame::Data(_) => {}
            Frame::LinkState(state) => self.on_advert(now, dom, &kind, &from, state),
            Frame::PunchRequest { target } => self.coordinate_punch(now, dom, &from, &target),
            Frame::Punch(p) if dom.is_none() => self.on_punch(now, &from, p),
            Frame::PunchRefused { target, reason } if dom.is_none() => {
                self.on_punch_refused(now, &target, &reason)
            }
            Frame::OverBudget(o) => self.on_over_budget(dom, &from, o),
            other => debug!(
                "router ignores {} from {from}{}",
                other.kind(),
                in_network(dom)
            ),
        }
    }

    /// A link could not take a frame the router asked it to send (its queue is full).
    pub fn frame_refused(&mut self, link: u64, frame: Frame) {
        let Frame::Data(envelope) = frame else {
            return; // adverts and punch frames are refreshed or retried on their own
        };
        let dom = self
            .links
            .get(&link)
            .and_then(|l| l.info.kind.domain().map(String::from));
        if envelope.source == self.settings.node_id {
            self.own_envelope_refused(&envelope);
            return;
        }
        let bytes = envelope.sealed.len() as u64;
        let network = dom.clone().unwrap_or_else(|| self.settings.network.clone());
        if let Some(c) = self.relayed.get_mut(&network) {
            c.messages = c.messages.saturating_sub(1);
            c.bytes = c.bytes.saturating_sub(bytes);
        }
        if let Some(d) = self.domain_mut(dom.as_deref()) {
            d.relayed.messages = d.relayed.messages.saturating_sub(1);
            d.relayed.bytes = d.relayed.bytes.saturating_sub(bytes);
            d.dropped.messages += 1;
            d.dropped.bytes += bytes;
        }
        if dom.is_none() {
            self.msgs.counters.drop("queue_full");
        }
    }

    // ---- adverts ----

    /// A `link_state` frame from `from` (a link of `kind`), in a domain.
    fn on_advert(
        &mut self,
        now: Now,
        dom: Option<&str>,
        kind: &LinkKind,
        from: &str,
        state: LinkState,
    ) {
        let (mut advert, member) = match self.check_advert(now, dom, kind, from, &state) {
            Ok(Some(checked)) => checked,
            Ok(None) => return, // stale: nothing new, nothing to check
            Err(refusal) => {
                debug!(
                    "advert from {from}{} refused: {}",
                    in_network(dom),
                    refusal.as_str()
                );
                if let Some(d) = self.domain_mut(dom) {
                    *d.refused.entry(refusal).or_default() += 1;
                }
                return;
            }
        };
        let me = self.settings.node_id.clone();
        let origin = advert.origin.clone();
        // Checked above: with a CA, the key in a member's advert is certified.
        let source = if dom.is_none() && member && self.settings.network_ca.is_some() {
            Source::Certified
        } else {
            Source::Gossiped
        };
        let Some(d) = self.domain_mut(dom) else {
            return;
        };
        if origin != me {
            match d.keys.offer(&origin, advert.public_key, source) {
                // A key for an id that had none (or whose gossiped key expired): a pair key
                // derived from an older one must go.
                Offer::Changed if dom.is_none() => self.msgs.forget_pair_key(&origin),
                // The book is full of gossip: the advert still counts (its origin stays
                // unsealable until a key is known), as the routing table bounds origins.
                Offer::Refused | Offer::Same | Offer::Changed => {}
            }
        }
        // Only a relay's own advert comes without the network's MAC.
        let relay = !member && origin != me;
        let topics = std::mem::take(&mut advert.topics);
        let carrier = advert.carrier && member && dom.is_none() && origin != me;
        let routed = Advert {
            origin: origin.clone(),
            seq: advert.seq,
            neighbors: advert
                .neighbors
                .into_iter()
                .map(|n| (n.id, n.cost_us))
                .collect(),
        };
        let Some(d) = self.domain_mut(dom) else {
            return;
        };
        match d.routing.apply(routed, now.ms()) {
            Applied::Newer => {
                d.signed.insert(origin.clone(), state.clone());
                if d.policy.is_home() && origin != me {
                    // Subscriptions count from members only.
                    let filters = if member { topics } else { Vec::new() };
                    self.topics.set_remote(&origin, filters);
                }
                let Some(d) = self.domain_mut(dom) else {
                    return;
                };
                if d.policy.is_home() {
                    // The flag follows the origin's newest advert, except for a public node we
                    // dialled ourselves: we know what it is.
                    let upstream = self.is_upstream(&origin);
                    let d = &mut self.home;
                    if relay {
                        // Bounded like the adverts themselves (expired ones leave).
                        if d.relay_nodes.len() < crate::proto::routing::MAX_ORIGINS {
                            d.relay_nodes.insert(origin.clone());
                        }
                    } else if !upstream {
                        d.relay_nodes.remove(&origin);
                    }
                    if carrier {
                        if self.durable.carriers.len() < crate::proto::routing::MAX_ORIGINS {
                            self.durable.carriers.insert(origin.clone());
                        }
                    } else {
                        self.durable.carriers.remove(&origin);
                    }
                }
                self.flood_signed(dom, &state, Some(from));
                if dom.is_none() {
                    // A new path may have appeared for requests stranded by a lost link.
                    self.resend_stranded(now);
                    self.durable_kick(now);
                }
            }
            Applied::Readvertise => {
                let own = d.routing.local_advert();
                self.flood(dom, &own, None);
            }
            Applied::Stale | Applied::TableFull => {}
        }
    }

    /// Decides whether an advert may enter a domain: `Ok(Some((advert, member)))` to apply it
    /// (`member`: it carries our network's MAC, or, in a foreign domain, a MAC we cannot
    /// check), `Ok(None)` when it is no newer than what we hold, or why it is refused.
    ///
    /// The rules: the body decodes and names the domain's network; in our own network a
    /// member's advert carries a valid MAC (nobody without the secret can make one), and one
    /// without a MAC is accepted only as a public node's own relay advert, from that public
    /// node's link or from a member; in a foreign domain every member advert has a MAC (its
    /// members check it); the seq is not too far ahead of our clock; the identity key is the
    /// one we hold for the origin, if any (else a conflict, recorded and never taken); and the
    /// signature is the origin's, by the signing key bound to that identity key.
    fn check_advert(
        &mut self,
        now: Now,
        dom: Option<&str>,
        kind: &LinkKind,
        from: &str,
        state: &LinkState,
    ) -> Result<Option<(frame::Advert, bool)>, Refusal> {
        let advert = state.open().map_err(|_| Refusal::Malformed)?;
        if advert.network != dom.unwrap_or(&self.settings.network) {
            return Err(Refusal::WrongNetwork);
        }
        let member = match (dom, &state.mac) {
            (None, Some(_)) if self.advert_key.verify(state) => true,
            (None, Some(_)) => return Err(Refusal::BadMac),
            (Some(_), Some(_)) => true,
            (None, None) => {
                // A public node's own advert: from its own link, or passed on by a member.
                let from_itself = *kind == LinkKind::Upstream && from == advert.origin;
                if !advert.relay || !(from_itself || *kind == LinkKind::Member) {
                    return Err(Refusal::NoMac);
                }
                false
            }
            (Some(_), None) => return Err(Refusal::NoMac),
        };
        if member && advert.relay {
            return Err(Refusal::Malformed); // a member is never a relay
        }
        if advert.seq / 1000 > now.unix_ms.saturating_add(MAX_SEQ_AHEAD_MS) {
            return Err(Refusal::SeqAhead);
        }
        let d = self.domain(dom).ok_or(Refusal::WrongNetwork)?;
        if d.routing.seq_of(&advert.origin) >= Some(advert.seq)
            && advert.origin != self.settings.node_id
        {
            return Ok(None);
        }
        let held = if advert.origin == self.settings.node_id {
            Some((self.settings.keys.identity.public(), Source::Proven))
        } else {
            d.keys.get(&advert.origin).map(|k| {
                (
                    *k,
                    d.keys.source(&advert.origin).unwrap_or(Source::Gossiped),
                )
            })
        };
        if let Some((key, source)) = held {
            if key != advert.public_key {
                let first = self.conflicts.record(
                    &advert.origin,
                    (key, source),
                    advert.public_key,
                    format!("advert from {from}"),
                    now.unix_ms,
                );
                if first {
                    log::warn!(
                        "refusing adverts for {}{} with identity key {} from {from}: we hold {} ({})",
                        advert.origin,
                        in_network(dom),
                        hex::encode(advert.public_key),
                        hex::encode(key),
                        source.as_str()
                    );
                }
                return Err(Refusal::KeyConflict);
            }
        }
        if !signed::signed_by_origin(state, &advert) {
            return Err(Refusal::BadSignature);
        }
        // With a network CA, a member's advert carries the CA's certificate for its id and key
        // (in our own network; a public node's relay advert is never sealed to).
        if let (None, true, Some(ca)) = (dom, member, &self.settings.network_ca) {
            crate::proto::cert::check_encoded(
                advert.certificate.as_deref(),
                ca,
                &self.settings.network,
                &advert.origin,
                &advert.public_key,
                now.unix_ms / 1000,
            )
            .map_err(|_| Refusal::Uncertified)?;
        }
        Ok(Some((advert, member)))
    }

    /// An origin's advert expired in a domain.
    fn advert_expired(&mut self, dom: Option<&str>, origin: &str) {
        let upstream = self.is_upstream(origin);
        let linked = self.node_links(dom, origin).next().is_some();
        if let Some(d) = self.domain_mut(dom) {
            d.signed.remove(origin);
            if !upstream {
                d.relay_nodes.remove(origin);
            }
            if !linked {
                d.keys.forget_gossiped(origin);
            }
        }
        if dom.is_none() {
            self.durable.carriers.remove(origin);
            self.topics.forget(origin);
        }
    }

    /// Re-advertises our links in a domain to every neighbour there.
    fn advertise(&mut self, now: Now, dom: Option<&str>) {
        let neighbours = self.neighbour_costs(dom);
        let Some(d) = self.domain_mut(dom) else {
            return;
        };
        let advert = d.routing.set_local(neighbours, now.ms());
        self.flood(dom, &advert, None);
    }

    /// Sends our advert to every neighbour of a domain but `except`.
    fn flood(&mut self, dom: Option<&str>, advert: &Advert, except: Option<&str>) {
        let Some(state) = self.signed_own(dom, advert) else {
            return;
        };
        self.flood_signed(dom, &state, except);
    }

    /// Sends a signed advert to every neighbour of a domain but `except`.
    fn flood_signed(&mut self, dom: Option<&str>, state: &LinkState, except: Option<&str>) {
        let links: Vec<u64> = self
            .neighbours(dom)
            .into_iter()
            .filter(|n| Some(*n) != except)
            .filter_map(|n| self.best_link(dom, n))
            .collect();
        for link in links {
            self.actions.push_back(Action::Send {
                link,
                frame: Frame::LinkState(state.clone()),
            });
        }
    }

    /// Gives a neighbour that just linked up everything we know in its domain.
    fn sync_neighbour(&mut self, dom: Option<&str>, node_id: &str) {
        let Some(link) = self.best_link(dom, node_id) else {
            return;
        };
        let own = self
            .domain(dom)
            .map(|d| d.routing.local_advert())
            .and_then(|a| self.signed_own(dom, &a));
        let Some(d) = self.domain(dom) else {
            return;
        };
        let mut origins: Vec<&String> = d.signed.keys().collect();
        origins.sort();
        let frames: Vec<Frame> = origins
            .into_iter()
            .map(|o| Frame::LinkState(d.signed[o].clone()))
            .chain(own.map(Frame::LinkState))
            .collect();
        for frame in frames {
            self.actions.push_back(Action::Send { link, frame });
        }
    }

    /// Our advert of a domain, signed (and in our own network, MAC'd); cached per seq. In a
    /// foreign domain ours is a relay's: no MAC (we do not know that network's secret).
    fn signed_own(&mut self, dom: Option<&str>, advert: &Advert) -> Option<LinkState> {
        debug_assert_eq!(advert.origin, self.settings.node_id);
        let keys = self.settings.keys.clone();
        let listen_addrs = self.settings.listen_addrs.clone();
        let certificate = self.settings.certificate.clone();
        let network = dom.unwrap_or(&self.settings.network).to_string();
        let advert_key = &self.advert_key;
        let topics = if dom.is_none() {
            self.topics.local()
        } else {
            Vec::new()
        };
        let d = match dom {
            None => &mut self.home,
            Some(n) => self.foreign.get_mut(n)?,
        };
        if let Some((seq, state)) = &d.own {
            if *seq == advert.seq {
                return Some(state.clone());
            }
        }
        let home = d.policy.is_home();
        let body = frame::Advert {
            network,
            origin: advert.origin.clone(),
            seq: advert.seq,
            public_key: keys.identity.public(),
            signing_key: keys.identity.signing_public(),
            addrs: listen_addrs,
            neighbors: advert
                .neighbors
                .iter()
                .map(|(id, cost_us)| frame::Neighbor {
                    id: id.clone(),
                    cost_us: *cost_us,
                })
                .collect(),
            relay: !home,
            certificate: if home { certificate } else { None },
            carrier: home && self.settings.carrier.is_some(),
            topics,
        };
        let state = signed::seal(&keys.identity, home.then_some(advert_key), &body);
        d.own = Some((advert.seq, state.clone()));
        Some(state)
    }

    // ---- links and domains, read side ----

    fn domain(&self, dom: Option<&str>) -> Option<&Domain> {
        match dom {
            None => Some(&self.home),
            Some(n) => self.foreign.get(n),
        }
    }

    fn domain_mut(&mut self, dom: Option<&str>) -> Option<&mut Domain> {
        match dom {
            None => Some(&mut self.home),
            Some(n) => self.foreign.get_mut(n),
        }
    }

    /// Every domain: `None` (home) first, then the foreign ones.
    fn domain_names(&self) -> Vec<Option<String>> {
        std::iter::once(None)
            .chain(self.foreign.keys().cloned().map(Some))
            .collect()
    }

    /// The best link to a neighbour in a domain: lowest RTT, then LAN over public addresses,
    /// then UDP, TCP, WebSocket.
    fn best_link(&self, dom: Option<&str>, node_id: &str) -> Option<u64> {
        self.node_links(dom, node_id)
            .min_by_key(|(id, l)| {
                let public = l.info.remote.is_some_and(|a| is_public(a.ip()));
                (
                    l.rtt_us.unwrap_or(u64::MAX),
                    public,
                    transport_rank(l.info.transport),
                    *id,
                )
            })
            .map(|(id, _)| id)
    }

    /// Whether hole punching opened a path to `node_id` (its UDP link runs on it).
    fn punched_to(&self, node_id: &str) -> bool {
        self.punch
            .entries
            .get(node_id)
            .is_some_and(|e| matches!(e.puncher.state(), crate::proto::punch::State::Open { .. }))
    }

    /// Our Active links to one node in a domain.
    fn node_links<'a>(
        &'a self,
        dom: Option<&str>,
        node_id: &str,
    ) -> impl Iterator<Item = (u64, &'a Link)> + 'a {
        self.domain(dom)
            .and_then(|d| d.links.get(node_id))
            .into_iter()
            .flatten()
            .filter_map(|id| Some((*id, self.links.get(id)?)))
    }

    /// Ids of the nodes linked to us in a domain, sorted, once each.
    fn neighbours(&self, dom: Option<&str>) -> Vec<&str> {
        self.domain(dom)
            .map(|d| d.links.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Our neighbours in a domain with their link cost, for our advert there. Links to public
    /// nodes (ours to them, or theirs to us in a foreign domain) carry [`RELAY_PENALTY_US`].
    fn neighbour_costs(&self, dom: Option<&str>) -> Vec<(String, u32)> {
        self.neighbours(dom)
            .into_iter()
            .filter_map(|id| {
                let l = &self.links[&self.best_link(dom, id)?];
                let cost = l.rtt_us.map_or(DEFAULT_LINK_COST_US, |us| {
                    us.clamp(1, u32::MAX as u64) as u32
                });
                let penalty = match l.info.kind {
                    LinkKind::Member => 0,
                    LinkKind::Upstream | LinkKind::Foreign(_) => RELAY_PENALTY_US,
                };
                Some((id.to_string(), cost.saturating_add(penalty)))
            })
            .collect()
    }

    /// Whether `node_id` is linked to us as a public node we dialled.
    fn is_upstream(&self, node_id: &str) -> bool {
        self.node_links(None, node_id)
            .any(|(_, l)| l.info.kind == LinkKind::Upstream)
    }

    /// A random number for message ids and punch tokens (see [`Randomness`]).
    fn random_u64(&mut self) -> u64 {
        if self.settings.random == Randomness::Os {
            if let Some(x) = self.random_pool.pop() {
                return x;
            }
            let mut b = [0u8; 8 * RANDOM_BATCH];
            // The OS generator does not fail on a supported system once the node started
            // (identity creation needed it); should it, fall back to the seeded sequence.
            if getrandom::fill(&mut b).is_ok() {
                self.random_pool.extend(
                    b.chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))),
                );
                if let Some(x) = self.random_pool.pop() {
                    return x;
                }
            }
        }
        let mut x = self.rng | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// " of network {n:?}" for a foreign domain, "" for ours (log lines).
fn in_network(dom: Option<&str>) -> String {
    dom.map(|n| format!(" of network {n:?}"))
        .unwrap_or_default()
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

/// An envelope's route-independent identity, for logs.
fn describe(e: &Envelope) -> String {
    format!("{} ({} -> {})", e.id, e.source, e.target)
}

#[cfg(test)]
mod tests;
