//! One network as the router sees it: our own (home) or a foreign network we relay for.
//!
//! The two differ only in their [`Policy`]; everything else (routing table, key book, relay
//! flags, loop guard, counters, advert timers) is the same structure driven by the same code in
//! the router, so a public node's foreign path is the home path with a policy check.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::proto::advert::Refusal;
use crate::proto::cache::BoundedCache;
use crate::proto::key_book::KeyBook;
use crate::proto::peer_table::MAX_KNOWN_NODES;
use crate::proto::routing::RoutingTable;
use crate::proto::shaper::Shaper;
use crate::wire::frame::{Envelope, LinkState};

use super::report::RelayedCount;
use super::FORWARD_SEEN;

/// What a domain's data may do.
#[derive(Debug)]
pub enum Policy {
    /// Our own network: we are a member, messages for us are opened here.
    Home,
    /// A foreign network we relay for as a public node: we cannot open its messages.
    Foreign {
        /// Admitted by `relay_all_peer_rpc` only: its data is dropped, control flows.
        control_only: bool,
        /// Its relay budget (data only; control frames are never limited): over-budget data
        /// waits here, up to a second of the budget.
        shaper: Shaper<Envelope>,
    },
}

impl Policy {
    /// Whether this is our own network.
    pub fn is_home(&self) -> bool {
        matches!(self, Policy::Home)
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Domain {
    /// What its data may do.
    pub policy: Policy,
    /// Our Active links in it: node id -> link ids (sorted by id, so neighbour lists need no
    /// sort, and a hub with many links finds one node's links without a scan).
    pub links: BTreeMap<String, Vec<u64>>,
    /// Its members' adverts and ours for it.
    pub routing: RoutingTable,
    /// Identity keys by node id (pinned > proven on a link > gossiped).
    pub keys: KeyBook,
    /// Each origin's newest advert as it signed it, forwarded verbatim (same origins as
    /// `routing`).
    pub signed: HashMap<String, LinkState>,
    /// Our own advert for this domain, signed, with the seq it was signed for.
    pub own: Option<(u64, LinkState)>,
    /// Adverts refused, by reason.
    pub refused: BTreeMap<Refusal, u64>,
    /// Origins flagged as relays, not members (home: public nodes of other networks that relay
    /// for us, from our links and their adverts).
    pub relay_nodes: HashSet<String>,
    /// (source, id) of envelopes forwarded, against loops.
    pub seen: BoundedCache<(String, u64), ()>,
    /// Data forwarded for its members (foreign) or for others (home).
    pub relayed: RelayedCount,
    /// Data dropped instead of forwarded.
    pub dropped: RelayedCount,
    /// Punches coordinated between its members.
    pub punches: u64,
    /// A coalesced advert is due at this time (ms).
    pub advert_due_ms: Option<u64>,
    /// Re-advertise after a new neighbour's first RTT, at this time (ms).
    pub readvert_at_ms: Option<u64>,
    /// When the shaper's first queued envelope may leave (ms).
    pub release_at_ms: Option<u64>,
    /// Data refused over the budget with an `over_budget` answer to its origin.
    pub over_budget: RelayedCount,
}

impl Domain {
    /// A domain as seen by node `me`, whose adverts start at `seq_base`.
    pub fn new(
        me: &str,
        policy: Policy,
        seq_base: u64,
        pinned: &BTreeMap<String, [u8; 32]>,
    ) -> Domain {
        Domain {
            policy,
            links: BTreeMap::new(),
            routing: RoutingTable::new(me, seq_base),
            keys: KeyBook::new(pinned, MAX_KNOWN_NODES),
            signed: HashMap::new(),
            own: None,
            refused: BTreeMap::new(),
            relay_nodes: HashSet::new(),
            seen: BoundedCache::with_entries(FORWARD_SEEN),
            relayed: RelayedCount::default(),
            dropped: RelayedCount::default(),
            punches: 0,
            advert_due_ms: None,
            readvert_at_ms: None,
            release_at_ms: None,
            over_budget: RelayedCount::default(),
        }
    }
}
