//! The table of known nodes and admitted links, and the rules that decide over them, pure.
//!
//! Owned by the DiscoveryActor. It answers: may this authenticated peer have this link (key
//! pinning, the duplicate rule)? What do we gossip in `welcome`? What did a `welcome` teach us?
//! No actor types here, so every rule is unit-tested on plain values.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::addr::{Endpoint, Host, Transport};
use crate::proto::key_book::{KeyBook, Source};
use crate::wire::frame::{CloseReason, Hello, NodeInfo};

/// Most nodes remembered, so gossip cannot grow the table without bound. Matches the wire limit
/// on `welcome.known`.
pub const MAX_KNOWN_NODES: usize = 1024;

/// What we know about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Node id.
    pub id: String,
    /// Identity key.
    pub public_key: [u8; 32],
    /// Proven by the node itself on a direct link (not only gossiped). A verified key stays
    /// (the `proto::key_book` rule): another key for the same id is refused.
    pub key_verified: bool,
    /// Software version from its hello.
    pub version: Option<String>,
    /// Where it listens (advertised, with unspecified IPs replaced by the IP it was seen at).
    pub addrs: Vec<Endpoint>,
    /// Process instance of its last direct link.
    pub boot_id: Option<u64>,
    /// It has been Active on a direct link at least once.
    pub ever_active: bool,
    /// Who told us about it, for gossip-only nodes.
    pub learned_from: Option<String>,
}

/// An admitted link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord {
    /// The node at the other end.
    pub node_id: String,
    /// Its transport.
    pub transport: Transport,
    /// Whether this node dialled it.
    pub dialed_by_us: bool,
    /// The remote's process instance when the link was made.
    pub remote_boot: u64,
}

/// The table's verdict on a newly authenticated link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Keep it; if `replaces` is set, that older link must be closed as a duplicate.
    Accept { replaces: Option<u64> },
    /// Close it for this reason.
    Refuse(CloseReason),
}

/// Which of two links to the same node on the same transport survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Existing,
    New,
}

/// The duplicate rule, the same on both ends so both close the same link:
/// 1. a link to a newer process instance of the peer wins (the old one is stale: the peer
///    restarted and may never say goodbye over UDP);
/// 2. otherwise the link dialled by the node with the lower id wins;
/// 3. otherwise (same dialer twice, e.g. configured and learned address) the existing one stays.
pub fn duplicate_winner(local_id: &str, existing: &LinkRecord, new: &LinkRecord) -> Winner {
    if new.remote_boot != existing.remote_boot {
        return Winner::New;
    }
    let dialer = |l: &LinkRecord| {
        if l.dialed_by_us {
            local_id.to_string()
        } else {
            l.node_id.clone()
        }
    };
    let (de, dn) = (dialer(existing), dialer(new));
    if dn < de {
        Winner::New
    } else {
        Winner::Existing
    }
}

/// Parses an advertised listen URL; an unspecified IP (`0.0.0.0`, `::`) becomes `observed_ip`,
/// the address the node was actually seen at.
pub fn resolve_advertised(url: &str, observed_ip: IpAddr) -> Option<Endpoint> {
    let mut endpoint: Endpoint = url.parse().ok()?;
    if endpoint.port == 0 {
        return None;
    }
    if let Host::Ip(ip) = endpoint.host {
        if ip.is_unspecified() {
            endpoint.host = Host::Ip(observed_ip);
        }
    }
    Some(endpoint)
}

/// Known nodes and admitted links. See the module docs.
#[derive(Debug)]
pub struct PeerTable {
    local_id: String,
    /// Which key belongs to which id: pinned (config `pinned_keys`) > proven on a link >
    /// gossiped, the same rule the router uses.
    keys: KeyBook,
    nodes: HashMap<String, NodeRecord>,
    links: HashMap<u64, LinkRecord>,
}

impl PeerTable {
    /// Takes on new pinned keys (a config reload; see [`KeyBook::repin`]).
    pub fn repin(&mut self, pinned: &BTreeMap<String, [u8; 32]>) {
        self.keys.repin(pinned);
    }

    /// An empty table for the node `local_id`, with the operator's pinned keys.
    pub fn new(local_id: &str, pinned: BTreeMap<String, [u8; 32]>) -> PeerTable {
        PeerTable {
            local_id: local_id.to_string(),
            keys: KeyBook::new(&pinned, MAX_KNOWN_NODES),
            nodes: HashMap::new(),
            links: HashMap::new(),
        }
    }

    /// The key held for `id` and where it came from.
    pub fn held_key(&self, id: &str) -> Option<([u8; 32], Source)> {
        Some((*self.keys.get(id)?, self.keys.source(id)?))
    }

    /// Decides on an authenticated link and records it when accepted.
    pub fn admit(
        &mut self,
        link_id: u64,
        hello: &Hello,
        remote_ip: IpAddr,
        transport: Transport,
        dialed_by_us: bool,
    ) -> Admission {
        if hello.node_id == self.local_id {
            return Admission::Refuse(CloseReason::Protocol);
        }
        // A pinned key decides alone; a proven one stays; a gossiped one gives way.
        if self
            .keys
            .would_refuse(&hello.node_id, &hello.public_key, Source::Proven)
        {
            return Admission::Refuse(CloseReason::KeyMismatch);
        }
        if !self.nodes.contains_key(&hello.node_id)
            && self.nodes.len() >= MAX_KNOWN_NODES
            && !self.evict_one()
        {
            return Admission::Refuse(CloseReason::Shutdown);
        }
        let new = LinkRecord {
            node_id: hello.node_id.clone(),
            transport,
            dialed_by_us,
            remote_boot: hello.boot_id,
        };
        let mut replaces = None;
        if let Some((&old_id, old)) = self
            .links
            .iter()
            .find(|(_, l)| l.node_id == new.node_id && l.transport == transport)
        {
            match duplicate_winner(&self.local_id, old, &new) {
                Winner::Existing => return Admission::Refuse(CloseReason::Duplicate),
                Winner::New => replaces = Some(old_id),
            }
        }
        if let Some(old) = replaces {
            self.links.remove(&old);
        }
        self.keys
            .offer(&hello.node_id, hello.public_key, Source::Proven);
        let addrs: Vec<Endpoint> = hello
            .listen_addrs
            .iter()
            .filter_map(|a| resolve_advertised(a, remote_ip))
            .collect();
        let record = self
            .nodes
            .entry(hello.node_id.clone())
            .or_insert_with(|| NodeRecord {
                id: hello.node_id.clone(),
                public_key: hello.public_key,
                key_verified: true,
                version: None,
                addrs: Vec::new(),
                boot_id: None,
                ever_active: false,
                learned_from: None,
            });
        record.public_key = hello.public_key;
        record.key_verified = true;
        record.version = Some(hello.version.clone());
        record.addrs = addrs;
        record.boot_id = Some(hello.boot_id);
        record.ever_active = true;
        record.learned_from = None;
        self.links.insert(link_id, new);
        Admission::Accept { replaces }
    }

    /// Forgets a link; returns it if it was admitted.
    pub fn link_down(&mut self, link_id: u64) -> Option<LinkRecord> {
        self.links.remove(&link_id)
    }

    /// Merges a `welcome`'s node list from `from`. Returns how many nodes were new.
    pub fn learn(&mut self, from: &str, known: &[NodeInfo]) -> usize {
        let mut added = 0;
        for info in known {
            if info.id == self.local_id || info.id == from {
                continue;
            }
            if self
                .keys
                .would_refuse(&info.id, &info.public_key, Source::Gossiped)
            {
                continue; // another key is held for it (pinned, proven or gossiped first)
            }
            let addrs: Vec<Endpoint> = info.addrs.iter().filter_map(|a| a.parse().ok()).collect();
            match self.nodes.get_mut(&info.id) {
                // A node's own word (a direct link) beats gossip about it.
                Some(n) if n.key_verified => {}
                Some(n) => {
                    n.addrs = addrs;
                    n.learned_from = Some(from.to_string());
                }
                None => {
                    if self.nodes.len() >= MAX_KNOWN_NODES {
                        continue;
                    }
                    self.keys.offer(&info.id, info.public_key, Source::Gossiped);
                    added += 1;
                    self.nodes.insert(
                        info.id.clone(),
                        NodeRecord {
                            id: info.id.clone(),
                            public_key: info.public_key,
                            key_verified: false,
                            version: None,
                            addrs,
                            boot_id: None,
                            ever_active: false,
                            learned_from: Some(from.to_string()),
                        },
                    );
                }
            }
        }
        added
    }

    /// The node list a `welcome` to `requester` carries: everyone we know but the requester.
    pub fn known_for(&self, requester: &str) -> Vec<NodeInfo> {
        let mut list: Vec<NodeInfo> = self
            .nodes
            .values()
            .filter(|n| n.id != requester)
            .map(|n| NodeInfo {
                id: n.id.clone(),
                public_key: n.public_key,
                addrs: n.addrs.iter().map(|a| a.to_string()).collect(),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Every advertised address of a known node we have no link to on that address's
    /// transport: what `auto_connect` dials (the caller skips addresses it dials already).
    pub fn unlinked_addrs(&self) -> Vec<Endpoint> {
        self.nodes()
            .into_iter()
            .flat_map(|n| {
                n.addrs
                    .iter()
                    .filter(|a| !self.has_link(&n.id, a.transport))
                    .cloned()
            })
            .collect()
    }

    /// Whether any admitted link to `node_id` exists.
    pub fn is_linked(&self, node_id: &str) -> bool {
        self.links.values().any(|l| l.node_id == node_id)
    }

    /// Ids of every known node.
    pub fn ids(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// Whether an admitted link to `node_id` on `transport` exists.
    pub fn has_link(&self, node_id: &str, transport: Transport) -> bool {
        self.links
            .values()
            .any(|l| l.node_id == node_id && l.transport == transport)
    }

    /// An admitted link.
    pub fn link(&self, link_id: u64) -> Option<&LinkRecord> {
        self.links.get(&link_id)
    }

    /// One node.
    #[cfg(test)]
    pub fn node(&self, id: &str) -> Option<&NodeRecord> {
        self.nodes.get(id)
    }

    /// All nodes, sorted by id.
    pub fn nodes(&self) -> Vec<&NodeRecord> {
        let mut v: Vec<&NodeRecord> = self.nodes.values().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Makes room by forgetting one gossip-only node that was never linked; false if none.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .nodes
            .values()
            .find(|n| !n.ever_active && !self.links.values().any(|l| l.node_id == n.id))
            .map(|n| n.id.clone());
        let Some(id) = victim else {
            return false;
        };
        self.keys.forget_gossiped(&id);
        self.nodes.remove(&id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::PROTOCOL_VERSION;

    fn hello(id: &str, key: u8, boot: u64) -> Hello {
        Hello {
            node_id: id.into(),
            network: "net".into(),
            version: "1".into(),
            protocol: PROTOCOL_VERSION,
            public_key: [key; 32],
            boot_id: boot,
            listen_addrs: vec!["tcp://0.0.0.0:7000".into(), "udp://10.0.0.9:7001".into()],
            proof: [0; 32],
            certificate: None,
        }
    }

    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    #[test]
    fn admits_and_resolves_unspecified_listen_addresses() {
        let mut t = PeerTable::new("a", BTreeMap::new());
        let verdict = t.admit(1, &hello("b", 1, 9), ip(), Transport::Tcp, true);
        assert_eq!(verdict, Admission::Accept { replaces: None });
        let b = t.node("b").unwrap();
        let addrs: Vec<String> = b.addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["tcp://192.0.2.7:7000", "udp://10.0.0.9:7001"]);
        assert!(b.key_verified && b.ever_active);
        assert!(t.has_link("b", Transport::Tcp) && !t.has_link("b", Transport::Udp));
    }

    #[test]
    fn a_changed_key_for_a_verified_id_is_refused() {
        let mut t = PeerTable::new("a", BTreeMap::new());
        t.admit(1, &hello("b", 1, 9), ip(), Transport::Tcp, true);
        let verdict = t.admit(2, &hello("b", 2, 9), ip(), Transport::Udp, true);
        assert_eq!(verdict, Admission::Refuse(CloseReason::KeyMismatch));
    }

    #[test]
    fn a_pinned_key_is_the_only_one_accepted_and_overrides_a_learned_one() {
        let mut t = PeerTable::new("a", BTreeMap::from([("b".to_string(), [2; 32])]));
        let refused = t.admit(1, &hello("b", 1, 9), ip(), Transport::Tcp, true);
        assert_eq!(refused, Admission::Refuse(CloseReason::KeyMismatch));
        let accepted = t.admit(2, &hello("b", 2, 9), ip(), Transport::Tcp, true);
        assert_eq!(accepted, Admission::Accept { replaces: None });
        // Without a pin, a verified key would block the change; the pin lets the operator
        // accept a peer whose identity was regenerated.
        let mut t = PeerTable::new("a", BTreeMap::new());
        t.admit(1, &hello("b", 1, 9), ip(), Transport::Tcp, true);
        t.link_down(1);
        assert_eq!(
            t.admit(2, &hello("b", 2, 10), ip(), Transport::Tcp, true),
            Admission::Refuse(CloseReason::KeyMismatch)
        );
    }

    #[test]
    fn self_connection_is_refused() {
        let mut t = PeerTable::new("a", BTreeMap::new());
        let verdict = t.admit(1, &hello("a", 1, 9), ip(), Transport::Tcp, true);
        assert_eq!(verdict, Admission::Refuse(CloseReason::Protocol));
    }

    #[test]
    fn duplicate_rule_is_the_same_on_both_ends() {
        // a < b. Both dial each other over TCP at once; each end sees the two links in either
        // order, and both must keep the one a dialled.
        for a_sees_own_first in [true, false] {
            let mut at_a = PeerTable::new("a", BTreeMap::new());
            let mut at_b = PeerTable::new("b", BTreeMap::new());
            let (a_dialed_at_a, b_dialed_at_a) = (true, false);
            let order_a = if a_sees_own_first {
                [(10, a_dialed_at_a), (11, b_dialed_at_a)]
            } else {
                [(11, b_dialed_at_a), (10, a_dialed_at_a)]
            };
            let mut kept_a = None;
            for (id, dialed) in order_a {
                if let Admission::Accept { .. } =
                    at_a.admit(id, &hello("b", 2, 5), ip(), Transport::Tcp, dialed)
                {
                    kept_a = Some(id);
                }
            }
            let mut kept_b = None;
            for (id, dialed) in [(11, true), (10, false)] {
                if let Admission::Accept { .. } =
                    at_b.admit(id, &hello("a", 1, 5), ip(), Transport::Tcp, dialed)
                {
                    kept_b = Some(id);
                }
            }
            assert_eq!(kept_a, Some(10), "a keeps the link a dialled");
            assert_eq!(kept_b, Some(10), "b keeps the link a dialled");
            assert!(at_a.link(11).is_none() && at_b.link(11).is_none());
        }
    }

    #[test]
    fn a_restarted_peer_replaces_its_stale_link() {
        let mut t = PeerTable::new("a", BTreeMap::new());
        t.admit(1, &hello("b", 1, 100), ip(), Transport::Udp, true);
        // b restarted (new boot id) and dialled us: the old link is stale even though a < b.
        let verdict = t.admit(2, &hello("b", 1, 200), ip(), Transport::Udp, false);
        assert_eq!(verdict, Admission::Accept { replaces: Some(1) });
        assert!(t.link(1).is_none());
        // Links on other transports are not duplicates.
        let other = t.admit(3, &hello("b", 1, 200), ip(), Transport::Tcp, false);
        assert_eq!(other, Admission::Accept { replaces: None });
    }

    #[test]
    fn gossip_learns_new_nodes_but_never_overrides_a_verified_key() {
        let mut t = PeerTable::new("a", BTreeMap::new());
        t.admit(1, &hello("b", 1, 9), ip(), Transport::Tcp, true);
        let known = vec![
            NodeInfo {
                id: "c".into(),
                public_key: [3; 32],
                addrs: vec!["ws://10.0.0.3:80".into(), "bogus".into()],
            },
            NodeInfo {
                id: "b".into(),
                public_key: [66; 32],
                addrs: vec![],
            },
            NodeInfo {
                id: "a".into(),
                public_key: [0; 32],
                addrs: vec![],
            },
        ];
        assert_eq!(t.learn("b", &known), 1);
        let c = t.node("c").unwrap();
        assert!(!c.key_verified && c.addrs.len() == 1);
        assert_eq!(c.learned_from.as_deref(), Some("b"));
        assert_eq!(t.node("b").unwrap().public_key, [1; 32]);
        assert!(t.node("a").is_none());
        // What we tell c about: b (not c itself).
        let told: Vec<String> = t.known_for("c").into_iter().map(|n| n.id).collect();
        assert_eq!(told, ["b"]);
    }

    #[test]
    fn gossip_does_not_replace_gossip_but_a_link_replaces_it() {
        // One key book rule: the first gossiped key holds until the node proves its own.
        let mut t = PeerTable::new("a", BTreeMap::new());
        let told = |key: u8| NodeInfo {
            id: "c".into(),
            public_key: [key; 32],
            addrs: vec!["tcp://10.0.0.3:80".into()],
        };
        t.learn("b", &[told(3)]);
        t.learn("x", &[told(4)]);
        assert_eq!(t.node("c").unwrap().public_key, [3; 32]);
        assert_eq!(t.node("c").unwrap().learned_from.as_deref(), Some("b"));
        let verdict = t.admit(1, &hello("c", 5, 1), ip(), Transport::Tcp, true);
        assert_eq!(verdict, Admission::Accept { replaces: None });
        let c = t.node("c").unwrap();
        assert_eq!((c.public_key, c.key_verified), ([5; 32], true));
    }

    #[test]
    fn unlinked_addresses_are_those_of_transports_without_a_link() {
        let mut t = PeerTable::new("a", BTreeMap::new());
        t.admit(1, &hello("b", 1, 9), ip(), Transport::Tcp, true);
        let want: Vec<String> = t.unlinked_addrs().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            want,
            ["udp://10.0.0.9:7001"],
            "b's tcp address is linked already"
        );
        t.link_down(1);
        assert_eq!(t.unlinked_addrs().len(), 2);
    }

    #[test]
    fn the_table_is_bounded() {
        let mut t = PeerTable::new("a", BTreeMap::new());
        let known: Vec<NodeInfo> = (0..MAX_KNOWN_NODES + 50)
            .map(|i| NodeInfo {
                id: format!("n{i}"),
                public_key: [0; 32],
                addrs: vec![],
            })
            .collect();
        t.learn("x", &known);
        assert_eq!(t.nodes().len(), MAX_KNOWN_NODES);
        // A direct link still gets in by evicting a gossip-only node.
        let verdict = t.admit(1, &hello("direct", 9, 1), ip(), Transport::Tcp, true);
        assert_eq!(verdict, Admission::Accept { replaces: None });
        assert_eq!(t.nodes().len(), MAX_KNOWN_NODES);
    }
}
