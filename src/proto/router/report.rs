//! What the router reports for `/status` and `GET /messages`: plain serialisable values.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::{Router, DEFAULT_LINK_COST_US};
use crate::addr::Transport;
use crate::proto::advert::Refusal;
use crate::proto::key_book::{Conflict, KeyBook};
use crate::proto::punch;

/// A refusal table with names for keys.
fn by_name(refused: &BTreeMap<Refusal, u64>) -> BTreeMap<&'static str, u64> {
    refused.iter().map(|(r, n)| (r.as_str(), *n)).collect()
}

/// The key and its source, as `/status` shows them.
fn key_of(keys: &KeyBook, id: &str) -> (Option<String>, Option<&'static str>) {
    (
        keys.get(id).map(hex::encode),
        keys.source(id).map(|s| s.as_str()),
    )
}

/// How a node is reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteReport {
    /// The neighbour a frame for the node goes to.
    pub next_hop: String,
    /// Links on the path.
    pub hops: u32,
    /// Sum of link RTTs on the path, microseconds.
    pub cost_us: u64,
    /// The node's identity key as held here, hex.
    pub public_key: Option<String>,
    /// Where that key came from: `pinned`, `proven` (on a direct link) or `unverified`
    /// (heard in its signed advert only).
    pub key: Option<&'static str>,
}

/// Relay counters for one origin network.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayedCount {
    /// Envelopes.
    pub messages: u64,
    /// Sealed bytes.
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
    /// `dropped` by reason ([`DROP_REASONS`]; one counter per reason ever seen).
    pub dropped_by_reason: BTreeMap<&'static str, u64>,
    /// Requests that got no answer in time.
    pub timed_out: u64,
    /// Requests re-sent on another path after their first hop's link was lost.
    pub resent: u64,
    /// Durable envelopes dropped because their signature was not their source's.
    pub forged: u64,
    /// Requests refused by this node's limits or a script's allow list (answered with why).
    pub refused: u64,
}

/// Every reason [`MessageCounters::drop`] is called with, for `/status` and the
/// `msgtier_messages_dropped_total{reason}` metric (a fixed set: bounded label values).
pub const DROP_REASONS: &[&str] = &[
    "not_direct",
    "no_route",
    "hop_limit",
    "loop",
    "unknown_network",
    "not_a_member",
    "control_only",
    "unknown_source",
    "unopenable",
    "duplicate",
    "replayed",
    "undecodable",
    "forged",
    "expired",
    "store_full",
    "queue_full",
    "other",
];

impl MessageCounters {
    /// Counts one dropped envelope, for `reason` (one of [`DROP_REASONS`]).
    pub fn drop(&mut self, reason: &'static str) {
        debug_assert!(DROP_REASONS.contains(&reason), "{reason}");
        self.dropped += 1;
        *self.dropped_by_reason.entry(reason).or_default() += 1;
    }
}

/// What the durable path holds, for `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DurableReport {
    /// Outbox messages not final yet.
    pub outbox_messages: usize,
    /// Their body bytes.
    pub outbox_bytes: usize,
    /// Durable messages remembered as a target (until their expiry).
    pub seen_messages: usize,
    /// This node carries messages for others (config `carrier`).
    pub carrier: bool,
    /// The carriers of the network this node knows (from their adverts).
    pub carriers: Vec<String>,
    /// As a carrier: envelopes held for others now, their bytes, and bytes by origin.
    pub carried_messages: usize,
    /// See `carried_messages`.
    pub carried_bytes: usize,
    /// See `carried_messages`.
    pub carried_by_origin: BTreeMap<String, usize>,
}

/// What `/status` takes from the router.
#[derive(Debug, Clone, Serialize)]
pub struct RelayReport {
    /// Route per reachable node (merged into `/status` peers, not shown as such).
    #[serde(skip)]
    pub routes: HashMap<String, RouteReport>,
    /// Envelopes forwarded for others, by origin network.
    pub relayed: HashMap<String, RelayedCount>,
    /// Message counters.
    pub messages: MessageCounters,
    /// What the durable path holds.
    pub durable: DurableReport,
    /// As a public node: each foreign network we relay for.
    pub foreign: BTreeMap<String, ForeignReport>,
    /// Nodes that are public nodes of other networks relaying for us (not members).
    pub public_relays: Vec<String>,
    /// Hole punching toward members reached through a relay, by peer id.
    pub punch: BTreeMap<String, PunchReport>,
    /// `punch` frames dropped because we had not asked for them (see `punching`).
    pub punches_refused: u64,
    /// Requests of ours waiting for their answer now.
    pub pending: usize,
    /// Punch attempts by outcome: `open` (a path answered), `linked` (a link came up on it),
    /// `failed`, `gave_up`.
    pub punch_outcomes: BTreeMap<&'static str, u64>,
    /// Identity keys offered in adverts that contradict the key held (refused).
    pub key_conflicts: Vec<Conflict>,
    /// Adverts refused in our network, by reason (`bad_mac`, `bad_signature`, ...).
    pub adverts_refused: BTreeMap<&'static str, u64>,
    /// Subscriptions and publishing.
    pub topics: TopicReport,
}

/// Topics on `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct TopicReport {
    /// The filters this node subscribes to (config and open event streams).
    pub subscriptions: Vec<String>,
    /// The filters of the members that subscribe to any, by node (from their adverts).
    pub subscribers: BTreeMap<String, Vec<String>>,
    /// Counters.
    #[serde(flatten)]
    pub counters: super::TopicCounters,
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
    /// Bytes of it.
    pub bytes_relayed: u64,
    /// Data dropped: over the budget, control-only, or addressed to us.
    pub messages_dropped: u64,
    /// Bytes of it.
    pub bytes_dropped: u64,
    /// Punches coordinated between its members.
    pub punches_coordinated: u64,
    /// Adverts refused in its domain, by reason.
    pub adverts_refused: BTreeMap<&'static str, u64>,
    /// Data waiting for the budget now.
    pub messages_queued: usize,
    /// Bytes of it.
    pub bytes_queued: u64,
    /// Data refused over the budget (queue full), each answered with `over_budget`.
    pub messages_over_budget: u64,
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

/// The link-state graph for `GET /topology`: each network we route in, as routing sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    /// Our node id (a node of every graph).
    pub id: String,
    /// Our own network first, then each foreign network we relay for as a public node.
    pub networks: Vec<NetworkGraph>,
}

/// One network's nodes and links.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkGraph {
    pub network: String,
    /// Our own network (false: a foreign one we relay for).
    pub home: bool,
    /// Sorted by id; we are one of them.
    pub nodes: Vec<GraphNode>,
    /// Sorted by `(a, b)`.
    pub edges: Vec<GraphEdge>,
}

/// A node of a [`NetworkGraph`].
#[derive(Debug, Clone, Serialize)]
pub struct GraphNode {
    pub id: String,
    /// A public node of another network relaying for us, not a member.
    pub relay: bool,
    /// Links on our best path to it: 0 for us, `None` when it is unreachable.
    pub hops: Option<u32>,
}

/// A link of a [`NetworkGraph`], once per pair (`a` < `b`).
#[derive(Debug, Clone, Serialize)]
pub struct GraphEdge {
    pub a: String,
    pub b: String,
    /// What routing counts for it: the larger RTT its two ends advertise, microseconds, with
    /// the penalty for a link to a public node.
    pub cost_us: u64,
    /// One of our own links: its measured RTT (the best of its links), microseconds.
    pub rtt_us: Option<u64>,
    /// One of our own links: the transports of its links up now, sorted. Empty for others.
    pub transports: Vec<Transport>,
    /// One of our own links, on a UDP path hole punching opened.
    pub punched: bool,
}

impl GraphEdge {
    /// An edge as the adverts show it, before what we know of our own links.
    fn new(a: String, b: String, cost_us: u64) -> GraphEdge {
        GraphEdge {
            a,
            b,
            cost_us,
            rtt_us: None,
            transports: Vec::new(),
            punched: false,
        }
    }
}

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
    /// The body as text (lossy UTF-8), at most [`super::RECENT_BODY_BYTES`].
    pub body: String,
    /// Whether `body` was cut.
    pub truncated: bool,
    /// The topic it was published to, for a message published to a topic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

impl Router {
    /// Routes, counters, foreign domains and punching, for `/status`.
    pub fn report(&mut self) -> RelayReport {
        let keys = &self.home.keys;
        let mut routes: HashMap<String, RouteReport> = self
            .home
            .routing
            .routes()
            .iter()
            .map(|(id, r)| {
                let (public_key, key) = key_of(keys, id);
                let report = RouteReport {
                    next_hop: r.next_hop.clone(),
                    hops: r.hops,
                    cost_us: r.cost_us,
                    public_key,
                    key,
                };
                (id.clone(), report)
            })
            .collect();
        // Linked neighbours are reached directly (see `route`).
        let direct: Vec<String> = self
            .neighbours(None)
            .into_iter()
            .map(String::from)
            .collect();
        for id in direct {
            let Some(link) = self.best_link(None, &id) else {
                continue;
            };
            let cost_us = self.links[&link]
                .rtt_us
                .unwrap_or(DEFAULT_LINK_COST_US as u64);
            let (public_key, key) = key_of(&self.home.keys, &id);
            let route = RouteReport {
                next_hop: id.clone(),
                hops: 1,
                cost_us,
                public_key,
                key,
            };
            routes.insert(id, route);
        }
        let foreign = self
            .foreign
            .iter()
            .map(|(network, d)| {
                let queued = match &d.policy {
                    super::Policy::Foreign { shaper, .. } => shaper.queued(),
                    super::Policy::Home => (0, 0),
                };
                let (control_only, bps_limit) = match &d.policy {
                    super::Policy::Foreign {
                        control_only,
                        shaper,
                    } => (*control_only, shaper.rate()),
                    super::Policy::Home => (false, 0),
                };
                let report = ForeignReport {
                    members: self
                        .neighbours(Some(network))
                        .into_iter()
                        .map(String::from)
                        .collect(),
                    control_only,
                    bps_limit,
                    messages_relayed: d.relayed.messages,
                    bytes_relayed: d.relayed.bytes,
                    messages_dropped: d.dropped.messages,
                    bytes_dropped: d.dropped.bytes,
                    punches_coordinated: d.punches,
                    adverts_refused: by_name(&d.refused),
                    messages_queued: queued.0,
                    bytes_queued: queued.1,
                    messages_over_budget: d.over_budget.messages,
                };
                (network.clone(), report)
            })
            .collect();
        let punch = self
            .punch
            .entries
            .iter()
            .map(|(id, e)| (id.clone(), punch_report(e)))
            .collect();
        let mut public_relays: Vec<String> = self.home.relay_nodes.iter().cloned().collect();
        public_relays.sort();
        RelayReport {
            routes,
            relayed: self.relayed.clone(),
            messages: self.msgs.counters.clone(),
            durable: self.durable_report(),
            foreign,
            public_relays,
            punch,
            punches_refused: self.punch.refused,
            punch_outcomes: self.punch.outcomes.clone(),
            pending: self.msgs.pending_count(),
            key_conflicts: self.conflicts.list(),
            adverts_refused: by_name(&self.home.refused),
            topics: TopicReport {
                subscriptions: self.subscriptions(),
                subscribers: self.remote_subscriptions(),
                counters: self.topic_counters(),
            },
        }
    }

    /// The link-state graph of every domain, with what we know of our own links on top.
    pub fn topology(&mut self) -> Topology {
        let networks = self
            .domain_names()
            .into_iter()
            .filter_map(|dom| self.network_graph(dom.as_deref()))
            .collect();
        Topology {
            id: self.settings.node_id.clone(),
            networks,
        }
    }

    fn network_graph(&mut self, dom: Option<&str>) -> Option<NetworkGraph> {
        let me = self.settings.node_id.clone();
        let (ids, advertised, hops, relays) = {
            let d = self.domain_mut(dom)?;
            let (ids, edges) = d.routing.graph();
            let hops: HashMap<String, u32> = d
                .routing
                .routes()
                .iter()
                .map(|(id, r)| (id.clone(), r.hops))
                .collect();
            (ids, edges, hops, d.relay_nodes.clone())
        };
        let mut edges: BTreeMap<(String, String), GraphEdge> = advertised
            .into_iter()
            .map(|(a, b, cost_us)| ((a.clone(), b.clone()), GraphEdge::new(a, b, cost_us)))
            .collect();
        let mut nodes: BTreeMap<String, GraphNode> = ids
            .into_iter()
            .map(|id| {
                let node = GraphNode {
                    hops: if id == me {
                        Some(0)
                    } else {
                        hops.get(&id).copied()
                    },
                    relay: relays.contains(&id),
                    id: id.clone(),
                };
                (id, node)
            })
            .collect();
        // Our links count before the neighbour's advert arrives (a direct link is used at once).
        for peer in self.neighbours(dom) {
            let links: Vec<&super::Link> = self.node_links(dom, peer).map(|(_, l)| l).collect();
            let rtt_us = links.iter().filter_map(|l| l.rtt_us).min();
            let mut transports: Vec<Transport> = links.iter().map(|l| l.info.transport).collect();
            transports.sort();
            transports.dedup();
            let punched =
                dom.is_none() && transports.contains(&Transport::Udp) && self.punched_to(peer);
            let key = if me.as_str() < peer {
                (me.clone(), peer.to_string())
            } else {
                (peer.to_string(), me.clone())
            };
            let cost = rtt_us.unwrap_or(DEFAULT_LINK_COST_US as u64);
            let edge = edges
                .entry(key.clone())
                .or_insert_with(|| GraphEdge::new(key.0, key.1, cost));
            edge.rtt_us = rtt_us;
            edge.transports = transports;
            edge.punched = punched;
            let node = nodes.entry(peer.to_string()).or_insert_with(|| GraphNode {
                id: peer.to_string(),
                relay: relays.contains(peer),
                hops: None,
            });
            node.hops = Some(1);
        }
        Some(NetworkGraph {
            network: dom.map_or_else(|| self.settings.network.clone(), str::to_string),
            home: dom.is_none(),
            nodes: nodes.into_values().collect(),
            edges: edges.into_values().collect(),
        })
    }

    /// The plain messages received most recently, newest last.
    pub fn durable_report(&self) -> DurableReport {
        let (outbox_messages, outbox_bytes) = self.durable.open_size();
        let (carried_messages, carried_bytes, carried_by_origin) = self.durable.carried_size();
        let (carrier, carriers) = self.carrier_report();
        DurableReport {
            outbox_messages,
            outbox_bytes,
            seen_messages: self.durable.seen_count(),
            carrier,
            carriers,
            carried_messages,
            carried_bytes,
            carried_by_origin,
        }
    }

    /// The plain messages received most recently, in memory (the simulation's view; the
    /// node's `GET /messages` reads the durable inbox).
    pub fn inbox(&self) -> Vec<ReceivedMessage> {
        self.msgs.inbox.iter().cloned().collect()
    }
}

fn punch_report(e: &super::punching::PunchEntry) -> PunchReport {
    let (state, addr) = match e.puncher.state() {
        punch::State::Waiting { .. } => ("waiting", None),
        punch::State::Requested { .. } => ("requested", None),
        punch::State::Punching { addr, .. } => ("punching", Some(addr.to_string())),
        punch::State::Open { addr } => ("open", Some(addr.to_string())),
        punch::State::GaveUp { .. } => ("gave_up", None),
    };
    PunchReport {
        state,
        relay: e.relay.clone(),
        addr,
        failures: e.puncher.failures(),
        last_error: match e.puncher.state() {
            punch::State::GaveUp { reason } => Some(reason.clone()),
            _ => e.puncher.last_error().map(String::from),
        },
    }
}
