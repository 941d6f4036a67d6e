//! A public node's admission of foreign networks, pure: one [`PeerTable`] per network it relays
//! for, and the rules around them.
//!
//! Owned by the DiscoveryActor next to its own network's table. A node of another network that
//! dials us is admitted only when we relay for that network (the whitelist, or control traffic
//! only with `relay_all_peer_rpc`), into that network's own table, so ids may repeat across
//! networks and never mix with ours. At most [`MAX_FOREIGN_NETWORKS`] networks hold a table at
//! once; a network's table goes when its last member unlinks (or when the link that made it was
//! refused), so its slot is free again.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::addr::Transport;
use crate::proto::peer_table::{Admission, PeerTable};
use crate::proto::whitelist;
use crate::wire::frame::{CloseReason, Hello, NodeInfo};

/// Most foreign networks a public node relays for at once; a hello from one more is refused.
pub const MAX_FOREIGN_NETWORKS: usize = 64;

/// Why a foreign node was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its network is not whitelisted and `relay_all_peer_rpc` is off.
    NotRelayed,
    /// [`MAX_FOREIGN_NETWORKS`] other networks hold a table already.
    TooManyNetworks,
    /// Its network's table refused the link (duplicate, key mismatch, ...).
    Table(CloseReason),
}

impl Refusal {
    /// The `close` reason sent to the node.
    pub fn reason(&self) -> CloseReason {
        match self {
            Refusal::NotRelayed | Refusal::TooManyNetworks => CloseReason::Foreign,
            Refusal::Table(r) => *r,
        }
    }
}

/// An admitted foreign link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// An older link of the same node and transport to close as a duplicate.
    pub replaces: Option<u64>,
    /// The `welcome` list: that network's members we know, the node itself excluded.
    pub known: Vec<NodeInfo>,
    /// Admitted by `relay_all_peer_rpc` only: its data will be dropped.
    pub control_only: bool,
}

/// See the module docs.
#[derive(Debug)]
pub struct ForeignTables {
    /// Our node id (each table refuses a link to itself).
    local_id: String,
    /// Whitelisted network name patterns.
    whitelist: Vec<String>,
    /// Admit other networks for control traffic only.
    relay_all_peer_rpc: bool,
    /// One table per network with a member linked.
    tables: HashMap<String, PeerTable>,
    /// Admitted foreign link id -> its network.
    links: HashMap<u64, String>,
}

impl ForeignTables {
    /// Tables for node `local_id` relaying for `whitelist` (and, with `relay_all_peer_rpc`,
    /// for any network's control traffic).
    pub fn new(local_id: &str, whitelist: Vec<String>, relay_all_peer_rpc: bool) -> Self {
        ForeignTables {
            local_id: local_id.to_string(),
            whitelist,
            relay_all_peer_rpc,
            tables: HashMap::new(),
            links: HashMap::new(),
        }
    }

    /// Takes on a new relay policy (a config reload): it decides the hellos from now on; links
    /// admitted before stay until they close.
    pub fn set_policy(&mut self, whitelist: Vec<String>, relay_all_peer_rpc: bool) {
        self.whitelist = whitelist;
        self.relay_all_peer_rpc = relay_all_peer_rpc;
    }

    /// Decides on a node of another network that dialled us, and records it when admitted.
    pub fn admit(
        &mut self,
        link_id: u64,
        hello: &Hello,
        remote_ip: IpAddr,
        transport: Transport,
    ) -> Result<Admitted, Refusal> {
        let network = &hello.network;
        let whitelisted = whitelist::admits(&self.whitelist, network);
        if !whitelisted && !self.relay_all_peer_rpc {
            return Err(Refusal::NotRelayed);
        }
        if !self.tables.contains_key(network) && self.tables.len() >= MAX_FOREIGN_NETWORKS {
            return Err(Refusal::TooManyNetworks);
        }
        let local_id = &self.local_id;
        let table = self
            .tables
            .entry(network.clone())
            .or_insert_with(|| PeerTable::new(local_id, Default::default()));
        let replaces = match table.admit(link_id, hello, remote_ip, transport, false) {
            Admission::Refuse(reason) => {
                // A table made for this refused link alone must not hold a slot.
                if !self.links.values().any(|n| n == network) {
                    self.tables.remove(network);
                }
                return Err(Refusal::Table(reason));
            }
            Admission::Accept { replaces } => replaces,
        };
        if let Some(id) = replaces {
            self.links.remove(&id);
        }
        let known = table.known_for(&hello.node_id);
        self.links.insert(link_id, network.clone());
        Ok(Admitted {
            replaces,
            known,
            control_only: !whitelisted,
        })
    }

    /// A link closed; true if it was a foreign one (its network's table goes with its last
    /// member).
    pub fn link_down(&mut self, link_id: u64) -> bool {
        let Some(network) = self.links.remove(&link_id) else {
            return false;
        };
        if let Some(table) = self.tables.get_mut(&network) {
            table.link_down(link_id);
        }
        if !self.links.values().any(|n| *n == network) {
            self.tables.remove(&network);
        }
        true
    }

    /// Networks holding a table.
    #[cfg(test)]
    pub fn networks(&self) -> usize {
        self.tables.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::PROTOCOL_VERSION;

    fn hello(id: &str, network: &str, key: u8) -> Hello {
        Hello {
            node_id: id.into(),
            network: network.into(),
            version: "1".into(),
            protocol: PROTOCOL_VERSION,
            public_key: [key; 32],
            boot_id: 1,
            listen_addrs: vec![],
            proof: [0; 32],
            certificate: None,
        }
    }

    fn ip() -> IpAddr {
        "10.0.0.1".parse().unwrap()
    }

    #[test]
    fn only_relayed_networks_are_admitted() {
        let mut t = ForeignTables::new("p", vec!["home*".into()], false);
        assert_eq!(
            t.admit(1, &hello("a", "other", 1), ip(), Transport::Tcp),
            Err(Refusal::NotRelayed)
        );
        assert_eq!(t.networks(), 0);
        let ok = t
            .admit(2, &hello("a", "home1", 1), ip(), Transport::Tcp)
            .unwrap();
        assert!(!ok.control_only);
        let mut all = ForeignTables::new("p", Vec::new(), true);
        let ok = all
            .admit(3, &hello("a", "any", 1), ip(), Transport::Tcp)
            .unwrap();
        assert!(
            ok.control_only,
            "relay_all_peer_rpc admits for control only"
        );
    }

    #[test]
    fn networks_are_kept_apart_and_learn_of_their_own_members_only() {
        let mut t = ForeignTables::new("p", vec!["*".into()], false);
        t.admit(1, &hello("x", "alpha", 1), ip(), Transport::Tcp)
            .unwrap();
        // The same id in another network is another node, not a duplicate.
        let beta = t
            .admit(2, &hello("x", "beta", 2), ip(), Transport::Tcp)
            .unwrap();
        assert_eq!(beta.replaces, None);
        assert!(beta.known.is_empty());
        let alpha2 = t
            .admit(3, &hello("y", "alpha", 3), ip(), Transport::Tcp)
            .unwrap();
        let ids: Vec<String> = alpha2.known.into_iter().map(|n| n.id).collect();
        assert_eq!(ids, ["x"]);
    }

    #[test]
    fn the_number_of_networks_is_bounded_and_slots_free_up() {
        let mut t = ForeignTables::new("p", vec!["*".into()], false);
        for i in 0..MAX_FOREIGN_NETWORKS as u64 {
            t.admit(i, &hello("m", &format!("n{i}"), 1), ip(), Transport::Tcp)
                .unwrap();
        }
        assert_eq!(
            t.admit(999, &hello("m", "one-more", 1), ip(), Transport::Tcp),
            Err(Refusal::TooManyNetworks)
        );
        assert!(t.link_down(0), "n0's last member unlinks");
        assert!(!t.link_down(0));
        assert!(t
            .admit(999, &hello("m", "one-more", 1), ip(), Transport::Tcp)
            .is_ok());
    }

    #[test]
    fn a_refused_link_does_not_keep_a_table_of_its_own() {
        let mut t = ForeignTables::new("p", vec!["*".into()], false);
        // A link claiming our own id is refused by the table made for it.
        let refused = t.admit(1, &hello("p", "alpha", 1), ip(), Transport::Tcp);
        assert_eq!(refused, Err(Refusal::Table(CloseReason::Protocol)));
        assert_eq!(t.networks(), 0);
    }

    #[test]
    fn a_duplicate_in_a_foreign_network_replaces_the_old_link() {
        let mut t = ForeignTables::new("p", vec!["*".into()], false);
        t.admit(1, &hello("x", "alpha", 1), ip(), Transport::Tcp)
            .unwrap();
        let mut again = hello("x", "alpha", 1);
        again.boot_id = 2; // the member restarted
        let ok = t.admit(2, &again, ip(), Transport::Tcp).unwrap();
        assert_eq!(ok.replaces, Some(1));
        assert!(!t.link_down(1), "the replaced link is no longer recorded");
        assert!(t.link_down(2));
        assert_eq!(t.networks(), 0);
    }
}
