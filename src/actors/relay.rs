//! RelayActor: where a message for a node goes next.
//!
//! It keeps the table of direct links (fed by the DiscoveryActor as links are admitted and
//! lost) and picks, per node, the best Active link: lowest measured RTT, then the transport
//! order UDP, TCP, WebSocket. Multi-hop routes, forwarding of sealed messages and bandwidth
//! limits for foreign networks build on this table in later protocol versions; today every
//! reachable node is a direct neighbour (`hops: 1`).

use std::collections::HashMap;

use actix::prelude::*;
use serde::Serialize;

use crate::actors::peer::{PeerActor, PeerState, StatusCell};
use crate::config::Transport;

/// A link became usable for traffic to `node_id`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkReady {
    pub link_id: u64,
    pub node_id: String,
    pub transport: Transport,
    pub peer: Addr<PeerActor>,
    pub status: StatusCell,
}

/// A link is gone.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LinkGone {
    pub link_id: u64,
}

/// The current route to every reachable node.
#[derive(Message)]
#[rtype(result = "HashMap<String, Route>")]
pub struct GetRoutes;

/// How a node is reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    /// The neighbour a frame for the node goes to.
    pub next_hop: String,
    /// Links on the path.
    pub hops: u32,
    /// Transport of the chosen first link.
    pub transport: Transport,
}

/// A direct link as the relay sees it.
struct Direct {
    node_id: String,
    transport: Transport,
    /// Kept for forwarding frames on this link.
    #[allow(dead_code)]
    peer: Addr<PeerActor>,
    status: StatusCell,
}

/// See the module docs.
#[derive(Default)]
pub struct RelayActor {
    links: HashMap<u64, Direct>,
}

impl Actor for RelayActor {
    type Context = Context<Self>;
}

impl Handler<LinkReady> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: LinkReady, _: &mut Self::Context) {
        self.links.insert(
            msg.link_id,
            Direct {
                node_id: msg.node_id,
                transport: msg.transport,
                peer: msg.peer,
                status: msg.status,
            },
        );
    }
}

impl Handler<LinkGone> for RelayActor {
    type Result = ();

    fn handle(&mut self, msg: LinkGone, _: &mut Self::Context) {
        self.links.remove(&msg.link_id);
    }
}

impl Handler<GetRoutes> for RelayActor {
    type Result = MessageResult<GetRoutes>;

    fn handle(&mut self, _: GetRoutes, _: &mut Self::Context) -> Self::Result {
        let mut best: HashMap<String, (u64, u8, Transport)> = HashMap::new();
        for d in self.links.values() {
            let Ok(s) = d.status.lock() else { continue };
            if s.state != PeerState::Active {
                continue;
            }
            let rtt = s.rtt.map_or(u64::MAX, |r| r.avg_us().unwrap_or(u64::MAX));
            let key = (rtt, transport_rank(d.transport), d.transport);
            best.entry(d.node_id.clone())
                .and_modify(|b| {
                    if (key.0, key.1) < (b.0, b.1) {
                        *b = key;
                    }
                })
                .or_insert(key);
        }
        MessageResult(
            best.into_iter()
                .map(|(id, (_, _, transport))| {
                    let route = Route {
                        next_hop: id.clone(),
                        hops: 1,
                        transport,
                    };
                    (id, route)
                })
                .collect(),
        )
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
