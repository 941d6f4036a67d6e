//! DiscoveryActor: who is in the network, which links we keep, and whom to dial.
//!
//! - At start it creates a supervised dialer PeerActor for every configured peer.
//! - Every authenticated link asks it for admission ([`Admit`]): the `PeerTable` applies key
//!   pinning and the duplicate rule; the answer carries the node list a listener puts in its
//!   `welcome`. What a `welcome` teaches is merged into the table, and (with `auto_connect`) a
//!   dialer is started for every advertised address of a node we have no link to on that
//!   transport, so a chain of configured peers becomes a mesh. A node of another network that
//!   dialled us is admitted into its network's own table (`proto::foreign_tables`) when we
//!   relay for it.
//! - When a link goes ([`LinkDown`]) it wakes dialers that stood by for it and makes sure the
//!   lost node's known addresses are dialled again (the dialers back off on their own).
//! - With `lan_discovery`, it announces this node to the LAN's multicast groups and dials the
//!   members it hears there (`actors::lan` holds the sockets, `proto::lan` the beacon rules).
//! - A watchdog respawns dialers whose actor died outside the supervisor's reach (a panic that
//!   escaped the handler guard).
//! - It answers `/status` for peers, links and dialers, asking each PeerActor for the status
//!   it owns ([`GetLinkStatus`]).
//! - On [`Shutdown`] it closes every link with `close(shutdown)`, so peers mark us
//!   Disconnected at once, and stops the dialers for good.
//!
//! Talks to: PeerActors it creates (dialers) and admits (acceptors, through their
//! [`PeerHandle`]); nothing else (the relay learns of links from the links themselves).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use log::{debug, info, warn};
use serde::Serialize;

use crate::actors::lan::{LanDatagram, LanSocket};
use crate::actors::messages::{
    Admit, CloseLink, Dial, GetLinkStatus, LinkDown, LinkStatus, PeerHandle, PeerPorts, UdpEndpoint,
};
use crate::actors::peer::{DialNow, PeerActor, PeerState, Redial};
use crate::addr::{Endpoint, Transport};
use crate::node::NodeShared;
use crate::proto::foreign_tables::{ForeignTables, Refusal, MAX_FOREIGN_NETWORKS};
use crate::proto::lan::{self, Beacon, BeaconKey};
use crate::proto::peer_table::{Admission, PeerTable};
use crate::wire::frame::{CloseReason, NodeInfo};

/// Most dialers kept at once (configured plus learned addresses): bounds sockets and actors
/// a large gossip could make us open.
pub const MAX_DIALERS: usize = 512;
/// Most reflexive (observed) addresses remembered.
pub const MAX_OBSERVED_ADDRS: usize = 16;
/// The actor's mailbox bound, for [`LanDatagram`]s from the LAN readers (they `try_send`).
const LAN_MAILBOX: usize = 256;
/// How often the watchdog checks dialers.
const WATCHDOG_INTERVAL: Duration = Duration::from_secs(1);
/// How long `/status` waits for one PeerActor's status before leaving it out.
const STATUS_WAIT: Duration = Duration::from_millis(1_000);

/// Close every link and stop dialling (the node is shutting down); answers once every link
/// was asked to close.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// The ids of every node this node knows of (linked or heard of), unsorted: what a fan-out to
/// `*` reaches, without asking each link for its status as [`GetReport`] does.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct GetKnownIds;

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
    /// Keys links proved that contradict the key held for their id (links refused); `/status`
    /// shows them with the router's under `key_conflicts`.
    #[serde(skip)]
    pub key_conflicts: Vec<crate::proto::key_book::Conflict>,
    pub observed_addrs: Vec<String>,
    pub peers: Vec<PeerReport>,
    pub dialers: Vec<DialerReport>,
    /// LAN discovery (null when `lan_discovery` is off).
    pub lan: Option<LanReport>,
}

/// LAN discovery on `/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LanReport {
    /// The groups joined.
    pub groups: Vec<String>,
    /// What our beacons carry: our listeners reachable from the LAN (none: we only listen).
    pub announced: Vec<String>,
    pub beacons_sent: u64,
    /// Beacons of our network taken.
    pub beacons_heard: u64,
    /// Dialers started for members heard on the LAN.
    pub dials: u64,
    /// Datagrams refused, by reason (`foreign`: another network's beacon or a forgery).
    pub refused: std::collections::BTreeMap<&'static str, u64>,
    /// Datagrams dropped unread because the node was busy (a flood).
    pub dropped: u64,
}

/// LAN discovery state.
struct Lan {
    /// Opens what we hear; its key seals what we send.
    listener: lan::Listener,
    sockets: Vec<LanSocket>,
    /// Random per start: lets others tell a restart from a replay.
    instance: u64,
    /// (transport, port) of our listeners not bound to loopback.
    ports: Vec<(String, u16)>,
    /// A beacon is scheduled soon (answering a new node).
    answer_due: bool,
    report: LanReport,
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
    /// Where its key came from: `pinned`, `proven` or `unverified`.
    pub key: Option<&'static str>,
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
    /// Named in its `Admit`s.
    id: u64,
    /// The address it dials.
    target: Endpoint,
    /// From the config (not learned).
    configured: bool,
    /// The supervised actor.
    addr: Addr<PeerActor>,
    /// The node it reached last (from its admissions): whom a standby dialer waits for.
    node_id: Option<String>,
}

/// See the module docs.
pub struct DiscoveryActor {
    node: Arc<NodeShared>,
    /// Handed to every dialer.
    ports: PeerPorts,
    udp: Vec<UdpEndpoint>,
    table: PeerTable,
    /// Admitted links (ours and foreign), by link id.
    links: HashMap<u64, PeerHandle>,
    dialers: Vec<Dialer>,
    /// Next dialer id.
    next_dialer: u64,
    /// Shutting down: no new dialers, no admissions.
    shut_down: bool,
    observed: BTreeSet<String>,
    /// As a public node: the members of each foreign network linked to us, one table per
    /// network, never mixed with ours (ids may repeat across networks).
    foreign: ForeignTables,
    /// Links refused because they proved another key than the one held for their id.
    conflicts: crate::proto::key_book::Conflicts,
    /// LAN discovery, when on.
    lan: Option<Lan>,
}

impl DiscoveryActor {
    /// A discovery actor; `udp` are the sockets dialers may use for `udp://` peers.
    pub fn new(node: Arc<NodeShared>, ports: PeerPorts, udp: Vec<UdpEndpoint>) -> Self {
        let config = &node.config;
        let foreign = ForeignTables::new(
            &node.local.node_id,
            config.relay_network_whitelist.clone(),
            config.relay_all_peer_rpc,
        );
        DiscoveryActor {
            table: PeerTable::new(&node.local.node_id, config.pinned_keys.clone()),
            foreign,
            conflicts: Default::default(),
            node,
            ports,
            udp,
            links: HashMap::new(),
            dialers: Vec::new(),
            next_dialer: 0,
            shut_down: false,
            observed: BTreeSet::new(),
            lan: None,
        }
    }

    /// Joins the LAN groups and starts announcing (at once, then every
    /// [`lan::ANNOUNCE_INTERVAL_MS`]).
    fn start_lan(&mut self, ctx: &mut Context<Self>) {
        let config = &self.node.config;
        if !config.lan_discovery || config.lan_discovery_group.is_empty() {
            return;
        }
        let sockets: Vec<LanSocket> = config
            .lan_discovery_group
            .iter()
            .filter_map(|g| LanSocket::open(*g, ctx.address()))
            .collect();
        if sockets.is_empty() {
            return;
        }
        let ports: Vec<(String, u16)> = self
            .node
            .local
            .listen_addrs
            .iter()
            .filter_map(|url| url.parse::<Endpoint>().ok())
            .filter(|e| match &e.host {
                crate::addr::Host::Ip(ip) => !ip.is_loopback(),
                crate::addr::Host::Name(n) => n != "localhost",
            })
            .map(|e| (e.transport.as_str().to_string(), e.port))
            .take(lan::MAX_PORTS)
            .collect();
        let mut instance = [0u8; 8];
        if getrandom::fill(&mut instance).is_err() {
            warn!("LAN discovery is off: no randomness for the instance id");
            return;
        }
        let key = BeaconKey::new(&self.node.keys.network_key);
        let report = LanReport {
            groups: sockets.iter().map(|s| s.group.to_string()).collect(),
            ..Default::default()
        };
        if ports.is_empty() {
            info!(
                "LAN discovery: listening only (every listener is on loopback, so there is \
                 nothing to announce)"
            );
        }
        self.lan = Some(Lan {
            listener: lan::Listener::new(key, &self.node.local.node_id),
            sockets,
            instance: u64::from_le_bytes(instance),
            ports,
            answer_due: false,
            report,
        });
        self.announce();
        ctx.run_interval(
            Duration::from_millis(lan::ANNOUNCE_INTERVAL_MS),
            |act, _| act.announce(),
        );
    }

    /// Sends our beacon to every group (nothing when we have no LAN listener).
    fn announce(&mut self) {
        let now = self.node.now_unix_ms();
        let Some(lan) = self.lan.as_mut() else {
            return;
        };
        lan.answer_due = false;
        if lan.ports.is_empty() || self.shut_down {
            return;
        }
        let beacon = Beacon {
            id: self.node.local.node_id.clone(),
            instance: lan.instance,
            sent_unix_ms: now,
            ports: lan.ports.clone(),
        };
        let mut nonce = [0u8; 24];
        if getrandom::fill(&mut nonce).is_err() {
            return;
        }
        let Some(datagram) = lan.listener.key().seal(&beacon, nonce) else {
            return;
        };
        for socket in &mut lan.sockets {
            socket.send(&datagram);
        }
        lan.report.beacons_sent += 1;
    }

    /// A node of another network dialled us: admit it as a member of that network's domain
    /// if we relay for it (whitelist, or control only with `relay_all_peer_rpc`). Its welcome
    /// lists only members of its own network.
    fn admit_foreign(&mut self, msg: Admit) -> Result<Vec<NodeInfo>, CloseReason> {
        let (node, network) = (&msg.hello.node_id, &msg.hello.network);
        match self
            .foreign
            .admit(msg.link_id, &msg.hello, msg.remote.ip(), msg.transport)
        {
            Err(refusal) => {
                match &refusal {
                    Refusal::NotRelayed => info!(
                        "refusing {node} of network {network:?}: not in relay_network_whitelist"
                    ),
                    Refusal::TooManyNetworks => warn!(
                        "refusing network {network:?}: relaying for {MAX_FOREIGN_NETWORKS} already"
                    ),
                    Refusal::Table(_) => {}
                }
                Err(refusal.reason())
            }
            Ok(admitted) => {
                if let Some(old) = admitted.replaces.and_then(|id| self.links.remove(&id)) {
                    old.close.do_send(CloseLink {
                        reason: CloseReason::Duplicate,
                    });
                }
                let only = if admitted.control_only {
                    " (control traffic only)"
                } else {
                    ""
                };
                info!("relaying for {node} of network {network:?}{only}");
                self.links.insert(msg.link_id, msg.peer);
                Ok(admitted.known)
            }
        }
    }

    fn spawn_dialer(&mut self, target: Endpoint, configured: bool, ctx: &mut Context<Self>) {
        if self.shut_down {
            return;
        }
        if self.dialers.len() >= MAX_DIALERS {
            warn!("not dialling {target}: {MAX_DIALERS} dialers already");
            return;
        }
        if target.transport == Transport::Udp && self.udp.is_empty() {
            return;
        }
        let _ = ctx;
        self.next_dialer += 1;
        let id = self.next_dialer;
        let actor = PeerActor::dialer(
            self.node.clone(),
            self.ports.clone(),
            id,
            target.clone(),
            self.udp.clone(),
        );
        let addr = Supervisor::start(move |_| actor);
        self.dialers.push(Dialer {
            id,
            target,
            configured,
            addr,
            node_id: None,
        });
    }

    /// Starts dialers for learned addresses of nodes we lack a link to on that transport.
    fn ensure_dialers(&mut self, ctx: &mut Context<Self>) {
        if !self.node.config.auto_connect || self.shut_down {
            return;
        }
        let wanted: Vec<Endpoint> = self
            .table
            .unlinked_addrs()
            .into_iter()
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
            if d.target.transport == transport && d.node_id.as_deref() == Some(node_id) {
                d.addr.do_send(Redial);
            }
        }
    }

    /// The report, from the link statuses the PeerActors answered (by link id, and by dialer
    /// id); a PeerActor that did not answer in time is left out.
    fn report(
        &self,
        link_status: &HashMap<u64, LinkStatus>,
        dialer_status: &HashMap<u64, LinkStatus>,
    ) -> DiscoveryReport {
        let now = self.node.now_us();
        let link_report = |s: &LinkStatus| LinkReport {
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
            let mut ids: Vec<&u64> = self.links.keys().collect();
            ids.sort_unstable();
            for id in ids {
                if self.table.link(*id).is_some_and(|l| l.node_id == n.id) {
                    if let Some(s) = link_status.get(id) {
                        links.push(link_report(s));
                    }
                }
            }
            // Dialers to this node that are not currently carrying an admitted link.
            for d in &self.dialers {
                if let Some(s) = dialer_status.get(&d.id) {
                    let admitted = self.links.contains_key(&s.link_id);
                    if s.node_id.as_deref() == Some(&n.id) && !admitted && !s.standby {
                        links.push(link_report(s));
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
            // The key the book holds is the one links are checked against (after a reload
            // that pinned another, the node's record still has the old one).
            let held = self.table.held_key(&n.id);
            peers.push(PeerReport {
                id: n.id.clone(),
                state,
                public_key: hex::encode(held.map_or(n.public_key, |(k, _)| k)),
                key_verified: n.key_verified,
                key: held.map(|(_, s)| s.as_str()),
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
                let s = dialer_status.get(&d.id)?;
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
            key_conflicts: self.conflicts.list(),
            observed_addrs: self.observed.iter().cloned().collect(),
            peers,
            dialers,
            lan: self.lan.as_ref().map(|l| LanReport {
                announced: l.ports.iter().map(|(t, p)| format!("{t}:{p}")).collect(),
                dropped: l.sockets.iter().map(LanSocket::dropped).sum(),
                ..l.report.clone()
            }),
        }
    }
}

impl Actor for DiscoveryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for target in self.node.config.peers.clone() {
            self.spawn_dialer(target, true, ctx);
        }
        // Room for a burst of LAN datagrams (the LAN reader drops what does not fit).
        ctx.set_mailbox_capacity(LAN_MAILBOX);
        self.start_lan(ctx);
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
        if self.shut_down {
            return MessageResult(Err(CloseReason::Shutdown));
        }
        let dialed = msg.dialer.is_some();
        if msg.hello.network != self.node.local.network && !dialed {
            return MessageResult(self.admit_foreign(msg));
        }
        let node_id = msg.hello.node_id.clone();
        // With a network CA, a member's link needs the CA's certificate for its id and key.
        if let (Some(ca), true) = (
            &self.node.config.network_ca,
            msg.hello.network == self.node.local.network,
        ) {
            let checked = crate::proto::cert::check_encoded(
                msg.hello.certificate.as_deref(),
                ca,
                &msg.hello.network,
                &node_id,
                &msg.hello.public_key,
                self.node.now_unix_ms() / 1000,
            );
            if let Err(e) = checked {
                debug!("refusing {node_id}: certificate {e}");
                return MessageResult(Err(CloseReason::Uncertified));
            }
        }
        let verdict = self.table.admit(
            msg.link_id,
            &msg.hello,
            msg.remote.ip(),
            msg.transport,
            dialed,
        );
        // The dialer now knows whom it reaches: a standby one waits for that node's link.
        if !matches!(verdict, Admission::Refuse(ref r) if *r != CloseReason::Duplicate) {
            if let Some(d) = self.dialers.iter_mut().find(|d| Some(d.id) == msg.dialer) {
                d.node_id = Some(node_id.clone());
            }
        }
        let replaces = match verdict {
            Admission::Refuse(reason) => {
                if reason == CloseReason::KeyMismatch {
                    if let Some(held) = self.table.held_key(&node_id) {
                        let first = self.conflicts.record(
                            &node_id,
                            held,
                            msg.hello.public_key,
                            "link".into(),
                            self.node.now_unix_ms(),
                        );
                        if first {
                            warn!(
                                "refusing {node_id}: it proved identity key {}, but we hold {} ({}); \
                                 pin the new key to accept a regenerated identity",
                                hex::encode(msg.hello.public_key),
                                hex::encode(held.0),
                                held.1.as_str()
                            );
                        }
                    }
                }
                return MessageResult(Err(reason));
            }
            Admission::Accept { replaces } => replaces,
        };
        if let Some(old) = replaces.and_then(|id| self.links.remove(&id)) {
            old.close.do_send(CloseLink {
                reason: CloseReason::Duplicate,
            });
        }
        let welcome = msg.welcome.clone();
        self.links.insert(msg.link_id, msg.peer);
        if let Some(welcome) = &welcome {
            // Only a member's word on who else is out there: a public node of another network
            // (or anyone who is not a proven member) could make us dial whatever it likes.
            if msg.hello.network == self.node.local.network {
                let added = self.table.learn(&node_id, &welcome.known);
                if added > 0 {
                    info!("learned {added} node(s) from {node_id}");
                }
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
        if self.foreign.link_down(msg.link_id) {
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

impl Handler<LanDatagram> for DiscoveryActor {
    type Result = ();

    /// A datagram on a LAN group: a member's beacon makes us dial it (once per address; a
    /// restarted member's dialer skips its backoff), and a member we had not heard makes us
    /// answer with our own beacon soon, so it learns us without waiting for the interval.
    fn handle(&mut self, msg: LanDatagram, ctx: &mut Self::Context) {
        let (now_unix, now) = (self.node.now_unix_ms(), self.node.now_ms());
        let Some(lan) = self.lan.as_mut() else {
            return;
        };
        let heard = match lan.listener.on_datagram(msg.src, &msg.data, now_unix, now) {
            Ok(Some(heard)) => heard,
            Ok(None) => return,
            Err(refusal) => {
                debug!("LAN datagram from {} refused: {refusal}", msg.src);
                *lan.report.refused.entry(refusal.as_str()).or_default() += 1;
                return;
            }
        };
        lan.report.beacons_heard += 1;
        if heard.new && !lan.answer_due {
            lan.answer_due = true;
            ctx.run_later(Duration::from_millis(lan::ANSWER_DELAY_MS), |act, _| {
                if act.lan.as_ref().is_some_and(|l| l.answer_due) {
                    act.announce();
                }
            });
        }
        if !self.node.config.auto_connect || self.shut_down {
            return;
        }
        let targets: Vec<Endpoint> = heard.urls.iter().filter_map(|u| u.parse().ok()).collect();
        let dialing: Vec<&Dialer> = self
            .dialers
            .iter()
            .filter(|d| targets.contains(&d.target))
            .collect();
        if !dialing.is_empty() {
            if heard.restarted {
                for d in dialing {
                    d.addr.do_send(DialNow);
                }
            }
            return;
        }
        if self.table.is_linked(&heard.id) {
            return;
        }
        // The best transport first; the others come from its welcome once linked.
        let Some(target) = targets
            .into_iter()
            .find(|t| t.transport != Transport::Udp || !self.udp.is_empty())
        else {
            return;
        };
        info!("heard {} on the LAN; dialling {target}", heard.id);
        if let Some(lan) = self.lan.as_mut() {
            lan.report.dials += 1;
        }
        self.spawn_dialer(target, false, ctx);
    }
}

impl Handler<GetKnownIds> for DiscoveryActor {
    type Result = MessageResult<GetKnownIds>;

    fn handle(&mut self, _: GetKnownIds, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.table.ids())
    }
}

impl Handler<GetReport> for DiscoveryActor {
    type Result = ResponseActFuture<Self, DiscoveryReport>;

    fn handle(&mut self, _: GetReport, _: &mut Self::Context) -> Self::Result {
        let ask = |handle: Recipient<GetLinkStatus>| async move {
            handle.send(GetLinkStatus).timeout(STATUS_WAIT).await.ok()
        };
        let links: Vec<_> = self
            .links
            .iter()
            .map(|(id, h)| (*id, ask(h.status.clone())))
            .collect();
        let dialers: Vec<_> = self
            .dialers
            .iter()
            .map(|d| (d.id, ask(d.addr.clone().recipient())))
            .collect();
        let gather = |asks: Vec<(u64, _)>| async move {
            let (ids, futs): (Vec<u64>, Vec<_>) = asks.into_iter().unzip();
            let answers = futures_util::future::join_all(futs).await;
            ids.into_iter()
                .zip(answers)
                .filter_map(|(id, s)| Some((id, s?)))
                .collect::<HashMap<u64, LinkStatus>>()
        };
        let fut = async move { (gather(links).await, gather(dialers).await) };
        Box::pin(
            fut.into_actor(self)
                .map(|(links, dialers), act, _| act.report(&links, &dialers)),
        )
    }
}

/// A config reload: the configured peers and the foreign-network policy.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Reconfigure {
    pub peers: Vec<Endpoint>,
    pub relay_network_whitelist: Vec<String>,
    pub relay_all_peer_rpc: bool,
    pub pinned_keys: std::collections::BTreeMap<String, [u8; 32]>,
}

impl Handler<Reconfigure> for DiscoveryActor {
    type Result = ();

    /// New configured peers get a dialer; a configured peer no longer listed loses its dialer
    /// (and with it the link that dialer carries); every other link stays.
    fn handle(&mut self, msg: Reconfigure, ctx: &mut Self::Context) {
        self.foreign
            .set_policy(msg.relay_network_whitelist, msg.relay_all_peer_rpc);
        self.table.repin(&msg.pinned_keys);
        let removed: Vec<usize> = self
            .dialers
            .iter()
            .enumerate()
            .filter(|(_, d)| d.configured && !msg.peers.contains(&d.target))
            .map(|(i, _)| i)
            .collect();
        for i in removed.into_iter().rev() {
            let d = self.dialers.remove(i);
            info!("config reload: no longer dialling {}", d.target);
            d.addr.do_send(CloseLink {
                reason: CloseReason::Shutdown,
            });
        }
        for target in msg.peers {
            match self.dialers.iter().position(|d| d.target == target) {
                // A learned address now configured: the same dialer, kept for good.
                Some(i) => self.dialers[i].configured = true,
                None => {
                    info!("config reload: dialling {target}");
                    self.spawn_dialer(target, true, ctx);
                }
            }
        }
    }
}

impl Handler<Shutdown> for DiscoveryActor {
    type Result = ();

    fn handle(&mut self, _: Shutdown, _: &mut Self::Context) {
        self.shut_down = true;
        let close = CloseLink {
            reason: CloseReason::Shutdown,
        };
        for link in self.links.values() {
            link.close.do_send(close);
        }
        // Dialers stop re-dialling; one carrying a link closes it (if not closed above).
        for d in &self.dialers {
            d.addr.do_send(close);
        }
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
