//! DiscoveryActor: who is in the network, which links we keep, and whom to dial.
//!
//! - At start it creates a supervised dialer PeerActor for every configured peer.
//! - Every authenticated link asks it for admission ([`Admit`]): the [`PeerTable`] applies key
//!   pinning and the duplicate rule; the answer carries the node list a listener puts in its
//!   `welcome`. What a `welcome` teaches is merged into the table, and (with `auto_connect`) a
//!   dialer is started for every advertised address of a node we have no link to on that
//!   transport, so a chain of configured peers becomes a mesh.
//! - When a link goes ([`LinkDown`]) it wakes dialers that stood by for it and makes sure the
//!   lost node's known addresses are dialled again (the dialers back off on their own).
//! - A watchdog respawns dialers whose actor died outside the supervisor's reach (a panic that
//!   escaped the handler guard).
//! - It keeps the RelayActor's view of direct links current and answers `/status`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use log::{info, warn};
use serde::Serialize;

use crate::actors::listener::UdpEndpoint;
use crate::actors::messages::{Dial, LinkDown, RelayPorts};
use crate::actors::peer::{CloseLink, DialNow, PeerActor, PeerState, Redial, StatusCell};
use crate::config::{Endpoint, Transport};
use crate::node::NodeShared;
use crate::proto::link::WelcomeInfo;
use crate::proto::peer_table::{Admission, PeerTable};
use crate::wire::frame::{CloseReason, Hello, NodeInfo};

/// Most dialers kept at once (configured plus learned addresses): bounds sockets and actors
/// a large gossip could make us open.
pub const MAX_DIALERS: usize = 512;
/// Most reflexive (observed) addresses remembered.
pub const MAX_OBSERVED_ADDRS: usize = 16;
/// Most foreign networks a public node relays for at once; a hello from one more is refused.
pub const MAX_FOREIGN_NETWORKS: usize = 64;
/// How often the watchdog checks dialers.
const WATCHDOG_INTERVAL: Duration = Duration::from_secs(1);

/// An authenticated peer asks to keep its link. Answers the `welcome` node list, or a reason
/// to close.
#[derive(Message)]
#[rtype(result = "Result<Vec<NodeInfo>, CloseReason>")]
pub struct Admit {
    pub link_id: u64,
    pub peer: Addr<PeerActor>,
    pub dialed: bool,
    pub transport: Transport,
    pub remote: SocketAddr,
    pub hello: Box<Hello>,
    /// Dialer side: what the listener's welcome said.
    pub welcome: Option<WelcomeInfo>,
    pub status: StatusCell,
}

/// Everything `/status` shows except routes and counters.
#[derive(Message)]
#[rtype(result = "DiscoveryReport")]
pub struct GetReport;

/// Test-only: inject a fault into the dialer for `target`. Answers whether one was found.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "bool")]
pub struct InjectPeerFault {
    pub target: String,
    pub fault: crate::actors::peer::InjectFault,
}

/// The discovery part of `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct DiscoveryReport {
    pub observed_addrs: Vec<String>,
    pub peers: Vec<PeerReport>,
    pub dialers: Vec<DialerReport>,
}

/// One known node.
#[derive(Debug, Clone, Serialize)]
pub struct PeerReport {
    pub id: String,
    pub state: PeerState,
    /// Hex.
    pub public_key: String,
    /// Proven by the node on a direct link (false: only gossiped).
    pub key_verified: bool,
    pub version: Option<String>,
    pub addrs: Vec<String>,
    pub learned_from: Option<String>,
    pub links: Vec<LinkReport>,
    /// Filled in from the RelayActor's routes.
    pub next_hop: Option<String>,
    pub hops: Option<u32>,
    /// A public node of another network relaying for us: not a member, not addressable.
    pub public_relay: bool,
}

/// One link of a node.
#[derive(Debug, Clone, Serialize)]
pub struct LinkReport {
    pub transport: Transport,
    /// "outbound" (we dialled) or "inbound".
    pub direction: &'static str,
    pub local_addr: Option<String>,
    pub remote_addr: Option<String>,
    pub state: PeerState,
    pub rtt_ms: Option<RttReport>,
    pub last_heard_ms_ago: Option<u64>,
    pub last_error: Option<String>,
}

/// RTT in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct RttReport {
    pub last: f64,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub samples: u64,
}

/// One dialer (configured or learned address).
#[derive(Debug, Clone, Serialize)]
pub struct DialerReport {
    pub target: String,
    pub configured: bool,
    pub state: PeerState,
    /// Waiting because another link to the same node on this transport was preferred.
    pub standby: bool,
    pub node_id: Option<String>,
    pub attempts: u32,
    pub restarts: u32,
    pub last_error: Option<String>,
}

/// A dialer we started.
struct Dialer {
    target: Endpoint,
    configured: bool,
    addr: Addr<PeerActor>,
    status: StatusCell,
}

/// Actor-side data of an admitted link (the table holds the pure part).
struct LinkHandle {
    peer: Addr<PeerActor>,
    status: StatusCell,
}

/// See the module docs.
pub struct DiscoveryActor {
    node: Arc<NodeShared>,
    relay: RelayPorts,
    udp: Vec<UdpEndpoint>,
    table: PeerTable,
    links: HashMap<u64, LinkHandle>,
    dialers: Vec<Dialer>,
    observed: BTreeSet<String>,
    /// As a public node: the members of each foreign network linked to us, one table per
    /// network, never mixed with ours (ids may repeat across networks).
    foreign: HashMap<String, PeerTable>,
    /// Foreign link id -> its network.
    foreign_links: HashMap<u64, String>,
}

impl DiscoveryActor {
    /// A discovery actor; `udp` are the sockets dialers may use for `udp://` peers.
    pub fn new(node: Arc<NodeShared>, relay: RelayPorts, udp: Vec<UdpEndpoint>) -> Self {
        DiscoveryActor {
            table: PeerTable::new(&node.local.node_id, node.config.pinned_keys.clone()),
            node,
            relay,
            udp,
            links: HashMap::new(),
            dialers: Vec::new(),
            observed: BTreeSet::new(),
            foreign: HashMap::new(),
            foreign_links: HashMap::new(),
        }
    }

    /// Remembers an admitted link and names its node on the link's status.
    fn keep_link(
        &mut self,
        node_id: &str,
        link_id: u64,
        peer: Addr<PeerActor>,
        status: StatusCell,
    ) {
        if let Ok(mut s) = status.lock() {
            s.node_id = Some(node_id.to_string());
        }
        self.links.insert(link_id, LinkHandle { peer, status });
    }

    /// A node of another network dialled us: admit it as a member of that network's domain
    /// if we relay for it (whitelist, or control only with `relay_all_peer_rpc`). Its welcome
    /// lists only members of its own network.
    fn admit_foreign(&mut self, msg: Admit) -> Result<Vec<NodeInfo>, CloseReason> {
        let config = &self.node.config;
        let network = msg.hello.network.clone();
        let whitelisted =
            crate::proto::whitelist::admits(&config.relay_network_whitelist, &network);
        if !whitelisted && !config.relay_all_peer_rpc {
            info!(
                "refusing {} of network {network:?}: not in relay_network_whitelist",
                msg.hello.node_id
            );
            return Err(CloseReason::Foreign);
        }
        if !self.foreign.contains_key(&network) && self.foreign.len() >= MAX_FOREIGN_NETWORKS {
            warn!("refusing network {network:?}: relaying for {MAX_FOREIGN_NETWORKS} already");
            return Err(CloseReason::Foreign);
        }
        let table = self
            .foreign
            .entry(network.clone())
            .or_insert_with(|| PeerTable::new(&self.node.local.node_id, Default::default()));
        let replaces = match table.admit(
            msg.link_id,
            &msg.hello,
            msg.remote.ip(),
            msg.transport,
            false,
        ) {
            Admission::Refuse(reason) => {
                // A table made for this refused link alone must not hold a slot.
                if !self.foreign_links.values().any(|n| *n == network) {
                    self.foreign.remove(&network);
                }
                return Err(reason);
            }
            Admission::Accept { replaces } => replaces,
        };
        if let Some(id) = replaces {
            self.foreign_links.remove(&id);
        }
        if let Some(old) = replaces.and_then(|id| self.links.remove(&id)) {
            old.peer.do_send(CloseLink {
                reason: CloseReason::Duplicate,
            });
        }
        info!(
            "relaying for {} of network {network:?}{}",
            msg.hello.node_id,
            if whitelisted {
                ""
            } else {
                " (control traffic only)"
            }
        );
        let known = table.known_for(&msg.hello.node_id);
        self.foreign_links.insert(msg.link_id, network);
        let node_id = msg.hello.node_id.clone();
        self.keep_link(&node_id, msg.link_id, msg.peer, msg.status);
        Ok(known)
    }

    fn spawn_dialer(&mut self, target: Endpoint, configured: bool, ctx: &mut Context<Self>) {
        if self.dialers.len() >= MAX_DIALERS {
            warn!("not dialling {target}: {MAX_DIALERS} dialers already");
            return;
        }
        if target.transport == Transport::Udp && self.udp.is_empty() {
            return;
        }
        let (actor, status) = PeerActor::dialer(
            self.node.clone(),
            ctx.address(),
            self.relay.clone(),
            target.clone(),
            self.udp.clone(),
        );
        let addr = Supervisor::start(move |_| actor);
        self.dialers.push(Dialer {
            target,
            configured,
            addr,
            status,
        });
    }

    /// Starts dialers for learned addresses of nodes we lack a link to on that transport.
    fn ensure_dialers(&mut self, ctx: &mut Context<Self>) {
        if !self.node.config.auto_connect {
            return;
        }
        let wanted: Vec<Endpoint> = self
            .table
            .nodes()
            .into_iter()
            .flat_map(|n| {
                n.addrs
                    .iter()
                    .filter(|a| !self.table.has_link(&n.id, a.transport))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .filter(|a| !self.dialers.iter().any(|d| &d.target == a))
            .filter(|a| !self.is_own_address(a))
            .collect();
        for target in wanted {
            info!("discovered {target}; dialling");
            self.spawn_dialer(target, false, ctx);
        }
    }

    fn is_own_address(&self, a: &Endpoint) -> bool {
        let url = a.to_string();
        self.node.local.listen_addrs.contains(&url)
    }

    /// Wakes standby dialers to `node_id` on `transport` now that no link is left there.
    fn wake_standby(&self, node_id: &str, transport: Transport) {
        for d in &self.dialers {
            if d.target.transport != transport {
                continue;
            }
            let matches = d
                .status
                .lock()
                .map(|s| s.node_id.as_deref() == Some(node_id))
                .unwrap_or(false);
            if matches {
                d.addr.do_send(Redial);
            }
        }
    }

    fn report(&self) -> DiscoveryReport {
        let now = self.node.now_us();
        let link_report = |s: &crate::actors::peer::LinkStatus| LinkReport {
            transport: s.transport,
            direction: if s.dialed { "outbound" } else { "inbound" },
            local_addr: s.local_addr.map(|a| a.to_string()),
            remote_addr: s.remote_addr.map(|a| a.to_string()),
            state: s.state,
            rtt_ms: s.rtt.map(|r| RttReport {
                last: r.last_us as f64 / 1000.0,
                min: r.min_us as f64 / 1000.0,
                max: r.max_us as f64 / 1000.0,
                avg: r.avg_us().unwrap_or(0) as f64 / 1000.0,
                samples: r.samples,
            }),
            last_heard_ms_ago: s.last_heard_us.map(|t| now.saturating_sub(t) / 1000),
            last_error: s.last_error.clone(),
        };
        let mut peers = Vec::new();
        for n in self.table.nodes() {
            let mut links: Vec<LinkReport> = Vec::new();
            let mut linked_ids = Vec::new();
            for (id, h) in &self.links {
                if self.table.link(*id).is_some_and(|l| l.node_id == n.id) {
                    if let Ok(s) = h.status.lock() {
                        links.push(link_report(&s));
                    }
                    linked_ids.push(*id);
                }
            }
            // Dialers to this node that are not currently carrying an admitted link.
            for d in &self.dialers {
                if let Ok(s) = d.status.lock() {
                    let admitted = self
                        .links
                        .values()
                        .any(|h| Arc::ptr_eq(&h.status, &d.status));
                    if s.node_id.as_deref() == Some(&n.id) && !admitted && !s.standby {
                        links.push(link_report(&s));
                    }
                }
            }
            let state = if links.iter().any(|l| l.state == PeerState::Active) {
                PeerState::Active
            } else if n.ever_active {
                PeerState::Disconnected
            } else {
                PeerState::Init
            };
            peers.push(PeerReport {
                id: n.id.clone(),
                state,
                public_key: hex::encode(n.public_key),
                key_verified: n.key_verified,
                version: n.version.clone(),
                addrs: n.addrs.iter().map(|a| a.to_string()).collect(),
                learned_from: n.learned_from.clone(),
                links,
                next_hop: None,
                hops: None,
                public_relay: false,
            });
        }
        let dialers = self
            .dialers
            .iter()
            .filter_map(|d| {
                let s = d.status.lock().ok()?;
                Some(DialerReport {
                    target: d.target.to_string(),
                    configured: d.configured,
                    state: s.state,
                    standby: s.standby,
                    node_id: s.node_id.clone(),
                    attempts: s.attempts,
                    restarts: s.restarts,
                    last_error: s.last_error.clone(),
                })
            })
            .collect();
        DiscoveryReport {
            observed_addrs: self.observed.iter().cloned().collect(),
            peers,
            dialers,
        }
    }
}

impl Actor for DiscoveryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for target in self.node.config.peers.clone() {
            self.spawn_dialer(target, true, ctx);
        }
        ctx.run_interval(WATCHDOG_INTERVAL, |act, ctx| {
            let dead: Vec<usize> = act
                .dialers
                .iter()
                .enumerate()
                .filter(|(_, d)| !d.addr.connected())
                .map(|(i, _)| i)
                .collect();
            for i in dead.into_iter().rev() {
                let d = act.dialers.remove(i);
                warn!("dialer for {} died; starting a new one", d.target);
                act.spawn_dialer(d.target, d.configured, ctx);
            }
        });
    }
}

impl Handler<Admit> for DiscoveryActor {
    type Result = MessageResult<Admit>;

    fn handle(&mut self, msg: Admit, ctx: &mut Self::Context) -> Self::Result {
        if msg.hello.network != self.node.local.network && !msg.dialed {
            return MessageResult(self.admit_foreign(msg));
        }
        let node_id = msg.hello.node_id.clone();
        let verdict = self.table.admit(
            msg.link_id,
            &msg.hello,
            msg.remote.ip(),
            msg.transport,
            msg.dialed,
        );
        let replaces = match verdict {
            Admission::Refuse(reason) => {
                if reason == CloseReason::KeyMismatch {
                    warn!(
                        "refusing {node_id}: its identity key changed (was {}, now {})",
                        self.table
                            .node(&node_id)
                            .map(|n| hex::encode(n.public_key))
                            .unwrap_or_default(),
                        hex::encode(msg.hello.public_key)
                    );
                }
                return MessageResult(Err(reason));
            }
            Admission::Accept { replaces } => replaces,
        };
        if let Some(old) = replaces.and_then(|id| self.links.remove(&id)) {
            old.peer.do_send(CloseLink {
                reason: CloseReason::Duplicate,
            });
        }
        let welcome = msg.welcome.clone();
        self.keep_link(&node_id, msg.link_id, msg.peer, msg.status);
        if let Some(welcome) = &welcome {
            let added = self.table.learn(&node_id, &welcome.known);
            if added > 0 {
                info!("learned {added} node(s) from {node_id}");
            }
            if self.observed.len() < MAX_OBSERVED_ADDRS {
                self.observed.insert(welcome.observed_addr.clone());
            }
        }
        self.ensure_dialers(ctx);
        MessageResult(Ok(self.table.known_for(&node_id)))
    }
}

impl Handler<LinkDown> for DiscoveryActor {
    type Result = ();

    fn handle(&mut self, msg: LinkDown, ctx: &mut Self::Context) {
        self.links.remove(&msg.link_id);
        if let Some(network) = self.foreign_links.remove(&msg.link_id) {
            if let Some(table) = self.foreign.get_mut(&network) {
                table.link_down(msg.link_id);
            }
            // A network with no member linked any more frees its slot.
            if !self.foreign_links.values().any(|n| *n == network) {
                self.foreign.remove(&network);
            }
            return;
        }
        if let Some(link) = self.table.link_down(msg.link_id) {
            if !self.table.has_link(&link.node_id, link.transport) {
                self.wake_standby(&link.node_id, link.transport);
            }
            self.ensure_dialers(ctx);
        }
    }
}

impl Handler<Dial> for DiscoveryActor {
    type Result = ();

    fn handle(&mut self, msg: Dial, ctx: &mut Self::Context) {
        if self.dialers.iter().any(|d| d.target == msg.target) {
            // Cut its backoff short: the path it failed on is open now.
            for d in self.dialers.iter().filter(|d| d.target == msg.target) {
                d.addr.do_send(DialNow);
            }
            return;
        }
        info!("dialling {} (opened by a hole punch)", msg.target);
        self.spawn_dialer(msg.target, false, ctx);
    }
}

impl Handler<GetReport> for DiscoveryActor {
    type Result = MessageResult<GetReport>;

    fn handle(&mut self, _: GetReport, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.report())
    }
}

#[cfg(feature = "fault-injection")]
impl Handler<InjectPeerFault> for DiscoveryActor {
    type Result = bool;

    fn handle(&mut self, msg: InjectPeerFault, _: &mut Self::Context) -> bool {
        let Some(d) = self
            .dialers
            .iter()
            .find(|d| d.target.to_string() == msg.target)
        else {
            return false;
        };
        d.addr.do_send(msg.fault);
        true
    }
}
