//! A deterministic network of [`Router`]s on a virtual clock, for tests (quinn-proto's `Pair`
//! idea, grown to a network).
//!
//! Nodes are routers; links are pairs of in-memory pipes with a latency; a frame sent on a link
//! arrives at the other end `latency` later, in order. Time only moves when the harness runs:
//! it jumps from one event (a frame arriving, a router's deadline) to the next, so a minute of
//! network life costs only the work done in it. Scripts "run" at once and answer
//! `ran <name>`; punch datagrams travel between the nodes' fake UDP addresses; dials are
//! recorded. Everything is seeded, so a failing run replays exactly.
//!
//! Used by the router's unit tests and by `tests/sim.rs`; not part of the node.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::addr::{Endpoint, Transport};
use crate::identity::Identity;
use crate::keys::KeyRing;
use crate::proto::handshake::NetworkKey;
use crate::wire::frame::Frame;

use crate::proto::durable::{InboxRecord, Op, OutboxRecord, Restored, SeenRecord, Status};

use super::{
    Action, Delivery, LinkInfo, LinkKind, Now, Randomness, RelayReport, Router, ScriptResult,
    SendError, Settings,
};

/// How often [`Net::run_until`] checks its condition, in virtual microseconds.
const CHECK_EVERY_US: u64 = 10_000;
/// The virtual clock's wall-clock origin (2026-01-01), so envelope timestamps look real.
const UNIX_BASE_MS: u64 = 1_767_225_600_000;
/// How long a simulated store takes to confirm a write, in virtual microseconds.
pub const STORE_LATENCY_US: u64 = 300;

/// A simulated node's disk: what its store holds (writes land at once; their confirmation
/// comes [`STORE_LATENCY_US`] later, and is lost in a crash).
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    /// Outbox records by id.
    pub outbox: BTreeMap<u64, OutboxRecord>,
    /// Seen records by (source, id).
    pub seen: BTreeMap<(String, u64), SeenRecord>,
    /// The inbox, oldest first.
    pub inbox: Vec<InboxRecord>,
    /// What it carries for others, by (source, id).
    pub carried: BTreeMap<(String, u64), crate::proto::durable::CarriedRecord>,
}

impl SimDisk {
    fn apply(&mut self, ops: Vec<Op>) {
        for op in ops {
            match op {
                Op::PutOutbox(id, r) => {
                    self.outbox.insert(id, r);
                }
                Op::DeleteOutbox(id) => {
                    self.outbox.remove(&id);
                }
                Op::PutSeen { source, id, record } => {
                    self.seen.insert((source, id), record);
                }
                Op::DeleteSeen { source, id } => {
                    self.seen.remove(&(source, id));
                }
                Op::Inbox(r) => self.inbox.push(r),
                Op::PutCarried { source, id, record } => {
                    self.carried.insert((source, id), record);
                }
                Op::DeleteCarried { source, id } => {
                    self.carried.remove(&(source, id));
                }
            }
        }
    }

    fn restored(&self) -> Restored {
        Restored {
            outbox: self.outbox.iter().map(|(k, v)| (*k, v.clone())).collect(),
            seen: self
                .seen
                .iter()
                .map(|((s, id), r)| (s.clone(), *id, r.clone()))
                .collect(),
            carried: self
                .carried
                .iter()
                .map(|((s, id), r)| (s.clone(), *id, r.clone()))
                .collect(),
        }
    }
}

/// One simulated node.
pub struct SimNode {
    /// Its id.
    pub id: String,
    /// Its network.
    pub network: String,
    /// Its router.
    pub router: Router,
    /// Outcomes of the requests it sent, by id.
    pub completed: HashMap<u64, Result<Delivery, SendError>>,
    /// Scripts it ran, as (name, source).
    pub scripts_run: Vec<(String, String)>,
    /// Addresses it was asked to dial.
    pub dials: Vec<Endpoint>,
    /// Its fake UDP address (for punching).
    pub udp: SocketAddr,
    /// Its identity key.
    pub public_key: [u8; 32],
    /// Its keys (identity and network key), so a test can play it gone bad.
    pub keys: Arc<KeyRing>,
    /// Its store.
    pub disk: SimDisk,
    /// Durable requests answered as queued (their `/send` timed out), with their status then.
    pub queued: HashMap<u64, Status>,
    /// Its settings, to restart it.
    settings: Settings,
    /// Bumped by a restart: confirmations of writes from before it are lost.
    generation: u64,
    /// While set, scripts do not end (a test crashes the node meanwhile).
    pub hold_scripts: bool,
    /// Data frames this node sends that are lost (a fault for tests), counting down.
    pub drop_data: u32,
    /// Every event its router reported, in order.
    pub events: Vec<crate::proto::event::Event>,
}

/// A link between two nodes.
#[derive(Debug, Clone)]
struct SimLink {
    /// The two ends (node indices); `a` dialled.
    ends: [usize; 2],
    /// One-way latency, microseconds.
    latency_us: u64,
    /// Frames sent but not yet delivered are lost when it goes down.
    up: bool,
}

/// Something that happens at a virtual time.
#[derive(Debug)]
enum Event {
    /// A frame reaches node `to` on `link`.
    Frame {
        to: usize,
        link: u64,
        frame: Box<Frame>,
    },
    /// A write of node `to` is confirmed.
    Persisted {
        to: usize,
        token: u64,
        generation: u64,
    },
    /// A punch datagram reaches node `to`.
    Punch {
        to: usize,
        from: SocketAddr,
        token: [u8; 16],
        ack: bool,
    },
}

/// See the module docs.
pub struct Net {
    /// Virtual monotonic time, microseconds.
    now_us: u64,
    /// The nodes, by index.
    pub nodes: Vec<SimNode>,
    /// Node index by id (ids may repeat across networks: the first wins here).
    by_id: HashMap<String, usize>,
    /// Links by id (the same id at both ends).
    links: BTreeMap<u64, SimLink>,
    /// Pending events: (time, sequence, event index).
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    /// Events by sequence number.
    events: HashMap<u64, Event>,
    /// Next event sequence number (ties keep sending order).
    seq: u64,
    /// Routers' deadlines: (time ms, node); stale entries are skipped.
    deadlines: BinaryHeap<Reverse<(u64, usize)>>,
    /// Next link id.
    next_link: u64,
    /// Seed for identities and router ids.
    seed: u64,
    /// Link-state frames delivered so far.
    pub adverts_delivered: u64,
    /// Data frames delivered so far.
    pub data_delivered: u64,
    /// With `tap` on, every data frame a node sends: (sender, link, envelope), for tests that
    /// capture and replay them.
    pub tapped: Vec<(usize, u64, crate::wire::frame::Envelope)>,
    /// Record data frames in `tapped`.
    pub tap: bool,
}

impl Net {
    /// An empty network; `seed` makes every identity and id reproducible.
    pub fn new(seed: u64) -> Net {
        Net {
            now_us: 0,
            nodes: Vec::new(),
            by_id: HashMap::new(),
            links: BTreeMap::new(),
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            deadlines: BinaryHeap::new(),
            next_link: 0,
            seed,
            adverts_delivered: 0,
            data_delivered: 0,
            tapped: Vec::new(),
            tap: false,
        }
    }

    /// A connected random graph of nodes `n0..n{count}` (node index = number): a random
    /// spanning tree, then `count` random extra links where none is yet (mean degree about 4),
    /// each with a one-way latency of 1-5 ms. Answers the network and its number of links.
    pub fn random_graph(count: usize, seed: u64) -> (Net, usize) {
        let mut net = Net::new(seed);
        let mut state = seed.wrapping_mul(7919) | 1;
        let mut below = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for i in 0..count {
            net.add(&format!("n{i}"));
        }
        let mut links = 0;
        for i in 1..count {
            let parent = below(i);
            net.connect(i, parent, 1 + below(5) as u64);
            links += 1;
        }
        for _ in 0..count {
            let (a, b) = (below(count), below(count));
            if a != b && net.links_between(a, b).is_empty() {
                net.connect(a, b, 1 + below(5) as u64);
                links += 1;
            }
        }
        (net, links)
    }

    /// The current time as the routers see it.
    pub fn now(&self) -> Now {
        Now {
            us: self.now_us,
            unix_ms: UNIX_BASE_MS + self.now_us / 1000,
        }
    }

    /// Virtual milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        self.now_us / 1000
    }

    /// Adds a node of network "sim" with scripts `echo` and `slow`.
    pub fn add(&mut self, id: &str) -> usize {
        self.add_with(id, "sim", |_| {})
    }

    /// Adds a node of `network`, letting `tweak` change its settings.
    pub fn add_with(
        &mut self,
        id: &str,
        network: &str,
        tweak: impl FnOnce(&mut Settings),
    ) -> usize {
        let index = self.nodes.len();
        let mut private = [0u8; 32];
        private[..8].copy_from_slice(&self.seed.to_le_bytes());
        private[8..16].copy_from_slice(&(index as u64).to_le_bytes());
        private[16] = 1;
        let identity = Identity::from_private(private);
        let public_key = identity.public();
        let keys = Arc::new(KeyRing {
            identity,
            network_key: NetworkKey::derive(network, "sim secret"),
        });
        let node_keys = keys.clone();
        let mut settings = Settings {
            node_id: id.to_string(),
            network: network.to_string(),
            keys,
            listen_addrs: Vec::new(),
            scripts: ["echo".to_string()].into_iter().collect(),
            max_frame_bytes: 1024 * 1024,
            hole_punching: false,
            relay_network_whitelist: Vec::new(),
            foreign_relay_bps_limit: 0,
            pinned_keys: BTreeMap::new(),
            seq_base: UNIX_BASE_MS * 1000,
            random: Randomness::Seeded(self.seed ^ ((index as u64 + 1) << 32)),
            network_ca: None,
            certificate: None,
            durable: super::DurableLimits::default(),
            incoming: super::IncomingLimits::default(),
            carrier: None,
            script_allow: BTreeMap::new(),
            subscriptions: Vec::new(),
            publish: super::PublishLimits::default(),
        };
        tweak(&mut settings);
        let router = Router::new(settings.clone(), self.now());
        let udp = SocketAddr::from(([127, 1, (index >> 8) as u8, index as u8], 40_000));
        self.nodes.push(SimNode {
            id: id.to_string(),
            network: network.to_string(),
            router,
            completed: HashMap::new(),
            scripts_run: Vec::new(),
            dials: Vec::new(),
            udp,
            public_key,
            keys: node_keys,
            disk: SimDisk::default(),
            queued: HashMap::new(),
            settings,
            generation: 0,
            hold_scripts: false,
            drop_data: 0,
            events: Vec::new(),
        });
        self.by_id.entry(id.to_string()).or_insert(index);
        self.schedule_deadline(index);
        index
    }

    /// A `link_state` frame carrying `advert`, signed by node `signer`'s identity and, with
    /// `mac`, MAC'd with `signer`'s network key: what that node could send if it turned
    /// hostile (a member knows its network's secret; a stranger does not know ours).
    pub fn forge(&self, signer: usize, advert: &crate::wire::frame::Advert, mac: bool) -> Frame {
        let keys = &self.nodes[signer].keys;
        let key = crate::proto::advert::AdvertKey::new(&keys.network_key);
        let body = advert.encode();
        let signature = keys
            .identity
            .sign(&crate::wire::frame::LinkState::signed_bytes(&body));
        Frame::LinkState(crate::wire::frame::LinkState {
            mac: mac.then(|| crate::wire::frame::Mac(key.mac(&body, &signature))),
            body,
            signature,
        })
    }

    /// Hands `frame` to node `at` as if it came in on `link` (an attacker's frame).
    pub fn inject(&mut self, at: usize, link: u64, frame: Frame) {
        let now = self.now();
        self.nodes[at].router.handle_frame(now, link, frame);
        self.drain(at);
    }

    /// An advert for `origin` in `network` with `signer`'s keys and the given neighbours, at a
    /// seq just above anything the simulation has used so far.
    pub fn advert_by(
        &self,
        signer: usize,
        network: &str,
        origin: &str,
        neighbors: &[(&str, u32)],
    ) -> crate::wire::frame::Advert {
        let identity = &self.nodes[signer].keys.identity;
        crate::wire::frame::Advert {
            network: network.to_string(),
            origin: origin.to_string(),
            seq: self.now().unix_ms * 1000 + 999,
            public_key: identity.public(),
            signing_key: identity.signing_public(),
            addrs: Vec::new(),
            neighbors: neighbors
                .iter()
                .map(|(id, cost_us)| crate::wire::frame::Neighbor {
                    id: id.to_string(),
                    cost_us: *cost_us,
                })
                .collect(),
            relay: false,
            certificate: None,
            carrier: false,
            topics: Vec::new(),
        }
    }

    /// The index of node `id`.
    pub fn index(&self, id: &str) -> usize {
        self.by_id[id]
    }

    /// Links `a` (the dialler) and `b` over TCP with a one-way latency; returns the link id.
    pub fn connect(&mut self, a: usize, b: usize, latency_ms: u64) -> u64 {
        self.connect_over(a, b, latency_ms, Transport::Tcp)
    }

    /// Links `a` (the dialler) and `b` over `transport`; a UDP link carries the ends' fake UDP
    /// addresses as their reflexive addresses.
    pub fn connect_over(
        &mut self,
        a: usize,
        b: usize,
        latency_ms: u64,
        transport: Transport,
    ) -> u64 {
        self.next_link += 1;
        let link = self.next_link;
        let latency_us = latency_ms * 1000;
        self.links.insert(
            link,
            SimLink {
                ends: [a, b],
                latency_us,
                up: true,
            },
        );
        let now = self.now();
        for (me, other, dialed) in [(a, b, true), (b, a, false)] {
            let (net_me, net_other) = (&self.nodes[me].network, &self.nodes[other].network);
            let udp = transport == Transport::Udp;
            let info = LinkInfo {
                node_id: self.nodes[other].id.clone(),
                kind: LinkKind::of(net_me, net_other, dialed),
                transport,
                public_key: self.nodes[other].public_key,
                remote: udp.then_some(self.nodes[other].udp),
                local: udp.then_some(self.nodes[me].udp),
            };
            let r = &mut self.nodes[me].router;
            r.link_up(now, link, info);
            r.link_rtt(link, 2 * latency_us);
            self.drain(me);
        }
        link
    }

    /// Takes a link down at both ends; frames in flight on it are lost.
    pub fn disconnect(&mut self, link: u64) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        if !l.up {
            return;
        }
        l.up = false;
        let ends = l.ends;
        let now = self.now();
        for end in ends {
            self.nodes[end].router.link_down(now, link);
            self.drain(end);
        }
    }

    /// The ids of the links between `a` and `b` that are up.
    pub fn links_between(&self, a: usize, b: usize) -> Vec<u64> {
        self.links
            .iter()
            .filter(|(_, l)| l.up && (l.ends == [a, b] || l.ends == [b, a]))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Node `from` sends `body` to `target`.
    pub fn send(
        &mut self,
        from: usize,
        target: &str,
        body: &str,
        timeout_ms: u64,
    ) -> Result<u64, SendError> {
        let now = self.now();
        let r = self.nodes[from]
            .router
            .send(now, target, body.as_bytes(), timeout_ms);
        self.drain(from);
        r
    }

    /// Node `from` publishes `body` to `topic` (live copies with `ttl_ms` 0).
    pub fn publish(
        &mut self,
        from: usize,
        topic: &str,
        body: &str,
        ttl_ms: u64,
    ) -> Result<super::Published, super::PublishError> {
        let now = self.now();
        let r = self.nodes[from]
            .router
            .publish(now, topic, body.as_bytes(), ttl_ms);
        self.drain(from);
        r
    }

    /// Node `at` subscribes to `filters` (as an event stream would).
    pub fn subscribe(&mut self, at: usize, filters: &[&str]) {
        let now = self.now();
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        self.nodes[at]
            .router
            .subscribe(now, &filters)
            .expect("valid filters");
        self.drain(at);
    }

    /// Node `from` sends `body` to `target` with a ttl (a durable message).
    pub fn send_durable(
        &mut self,
        from: usize,
        target: &str,
        body: &str,
        timeout_ms: u64,
        ttl_ms: u64,
    ) -> Result<u64, SendError> {
        let now = self.now();
        let r =
            self.nodes[from]
                .router
                .send_durable(now, target, body.as_bytes(), timeout_ms, ttl_ms);
        self.drain(from);
        r
    }

    /// Node `n` stops at once (its links go down, unconfirmed writes stay unconfirmed) and
    /// starts again from its disk. Its links must be connected again by the test.
    pub fn restart(&mut self, n: usize) {
        let links: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| l.up && l.ends.contains(&n))
            .map(|(id, _)| *id)
            .collect();
        for link in links {
            self.disconnect(link);
        }
        let now = self.now();
        let node = &mut self.nodes[n];
        node.generation += 1;
        node.router = Router::new(node.settings.clone(), now);
        let restored = node.disk.restored();
        node.router.restore(now, restored);
        self.drain(n);
    }

    /// The outcome of request `id` sent by `from`, once complete.
    pub fn outcome(&self, from: usize, id: u64) -> Option<&Result<Delivery, SendError>> {
        self.nodes[from].completed.get(&id)
    }

    /// A node's `/status` view of the router.
    pub fn report(&mut self, node: usize) -> RelayReport {
        self.nodes[node].router.report()
    }

    /// Whether every node of each network has a route to every other node of it.
    pub fn converged(&mut self) -> bool {
        let groups: Vec<(usize, String)> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (i, n.network.clone()))
            .collect();
        for (i, network) in &groups {
            let routes = self.nodes[*i].router.report().routes;
            for (j, other) in &groups {
                if i != j && network == other && !routes.contains_key(&self.nodes[*j].id) {
                    return false;
                }
            }
        }
        true
    }

    /// Runs the network for `ms` virtual milliseconds.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now_us + ms * 1000;
        self.run_until_us(until, &mut |_| false);
    }

    /// Runs until `done` holds (checked after every step) or `max_ms` pass; answers whether it
    /// held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        let until = self.now_us + max_ms * 1000;
        if done(self) {
            return true;
        }
        self.run_until_us(until, &mut done)
    }

    fn run_until_us(&mut self, until_us: u64, done: &mut dyn FnMut(&mut Net) -> bool) -> bool {
        // The condition is checked once per virtual CHECK_EVERY_US, not per event: checks such
        // as "every node routes to every other" cost far more than an event.
        let mut next_check = self.now_us + CHECK_EVERY_US;
        loop {
            let next_event = self.queue.peek().map(|Reverse((t, _))| *t);
            let next_deadline = self.next_live_deadline().map(|(t, _)| t * 1000);
            let next = match (next_event, next_deadline) {
                (Some(e), Some(d)) => e.min(d),
                (Some(e), None) => e,
                (None, Some(d)) => d,
                (None, None) => until_us,
            };
            if next > until_us {
                self.now_us = until_us;
                return done(self);
            }
            if next > next_check {
                // Nothing happens before the next check: look at the condition then.
                self.now_us = self.now_us.max(next_check);
                next_check = self.now_us + CHECK_EVERY_US;
                if done(self) {
                    return true;
                }
                continue;
            }
            self.now_us = self.now_us.max(next);
            if next_event == Some(next) {
                let Some(Reverse((_, seq))) = self.queue.pop() else {
                    continue;
                };
                if let Some(event) = self.events.remove(&seq) {
                    self.deliver(event);
                }
            } else if let Some((_, node)) = self.next_live_deadline() {
                self.deadlines.pop();
                let now = self.now();
                self.nodes[node].router.handle_timeout(now);
                self.drain(node);
            }
            if self.now_us >= next_check {
                next_check = self.now_us + CHECK_EVERY_US;
                if done(self) {
                    return true;
                }
            }
        }
    }

    /// The earliest deadline that is still a router's current one (stale entries dropped).
    fn next_live_deadline(&mut self) -> Option<(u64, usize)> {
        while let Some(Reverse((t, node))) = self.deadlines.peek().copied() {
            if self.nodes[node].router.next_timeout() == Some(t) {
                return Some((t, node));
            }
            self.deadlines.pop();
        }
        None
    }

    fn schedule_deadline(&mut self, node: usize) {
        if let Some(t) = self.nodes[node].router.next_timeout() {
            self.deadlines.push(Reverse((t, node)));
        }
    }

    fn push(&mut self, at_us: u64, event: Event) {
        self.seq += 1;
        self.events.insert(self.seq, event);
        self.queue.push(Reverse((at_us, self.seq)));
    }

    fn deliver(&mut self, event: Event) {
        let now = self.now();
        match event {
            Event::Frame { to, link, frame } => {
                if !self.links.get(&link).is_some_and(|l| l.up) {
                    return;
                }
                match &*frame {
                    Frame::LinkState(_) => self.adverts_delivered += 1,
                    Frame::Data(_) => self.data_delivered += 1,
                    _ => {}
                }
                self.nodes[to].router.handle_frame(now, link, *frame);
                self.drain(to);
            }
            Event::Persisted {
                to,
                token,
                generation,
            } => {
                if self.nodes[to].generation == generation {
                    self.nodes[to].router.persisted(now, token, Ok(()));
                    self.drain(to);
                }
            }
            Event::Punch {
                to,
                from,
                token,
                ack,
            } => {
                let local = self.nodes[to].udp;
                self.nodes[to]
                    .router
                    .punch_datagram(local, from, token, ack);
                self.drain(to);
            }
        }
    }

    /// Carries out a node's actions.
    fn drain(&mut self, node: usize) {
        while let Some(action) = self.nodes[node].router.poll_action() {
            match action {
                Action::Send { link, frame } => {
                    if let Frame::Data(_) = &frame {
                        let n = &mut self.nodes[node];
                        if n.drop_data > 0 {
                            n.drop_data -= 1;
                            continue;
                        }
                    }
                    let Some(l) = self.links.get(&link).filter(|l| l.up) else {
                        self.nodes[node].router.frame_refused(link, frame);
                        continue;
                    };
                    let to = if l.ends[0] == node {
                        l.ends[1]
                    } else {
                        l.ends[0]
                    };
                    let at = self.now_us + l.latency_us;
                    if let (true, Frame::Data(e)) = (self.tap, &frame) {
                        self.tapped.push((node, link, e.clone()));
                    }
                    let frame = Box::new(frame);
                    self.push(at, Event::Frame { to, link, frame });
                }
                Action::RunScript {
                    job, name, source, ..
                } => {
                    let now = self.now();
                    let n = &mut self.nodes[node];
                    n.scripts_run.push((name.clone(), source));
                    if n.hold_scripts {
                        continue;
                    }
                    let result = ScriptResult::Ran {
                        exit_code: Some(0),
                        stdout: format!("ran {name}").into_bytes(),
                        stderr: Vec::new(),
                        timed_out: false,
                        truncated: false,
                    };
                    n.router.script_done(now, job, result);
                }
                Action::Dial(endpoint) => self.nodes[node].dials.push(endpoint),
                Action::Punch { to, token, ack, .. } => {
                    let from = self.nodes[node].udp;
                    if let Some(target) = self.nodes.iter().position(|n| n.udp == to) {
                        let at = self.now_us + 1000;
                        self.push(
                            at,
                            Event::Punch {
                                to: target,
                                from,
                                token,
                                ack,
                            },
                        );
                    }
                }
                Action::Complete { id, result } => {
                    self.nodes[node].completed.insert(id, result);
                }
                Action::Persist { ops, token, .. } => {
                    let n = &mut self.nodes[node];
                    n.disk.apply(ops);
                    if let Some(token) = token {
                        let generation = n.generation;
                        let at = self.now_us + STORE_LATENCY_US;
                        self.push(
                            at,
                            Event::Persisted {
                                to: node,
                                token,
                                generation,
                            },
                        );
                    }
                }
                Action::Queued { id, status, .. } => {
                    self.nodes[node].queued.insert(id, status);
                }
                Action::Event(e) => self.nodes[node].events.push(e),
            }
        }
        self.schedule_deadline(node);
    }
}
