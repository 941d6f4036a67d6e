//! Hole punching in the router: coordinating as a relay, and our own attempts.
//!
//! - As a relay (any domain): `from` asks for a punch toward `target`, both linked to us; we
//!   answer both with `punch` frames carrying the other's reflexive UDP address and a fresh
//!   token ([`crate::proto::punch::coordinate`]), at most once per pair per
//!   [`PUNCH_COORDINATE_INTERVAL_MS`].
//! - Our own (home only): a member reached through exactly one relay gets a `punch_request`
//!   sent to that relay by the side with the lower id; the relay's `punch` starts a
//!   [`Puncher`], whose datagrams go out through the UDP listener socket
//!   ([`super::Action::Punch`]); once one comes back, the lower id dials the opened path
//!   ([`super::Action::Dial`]).
//! - A `punch` frame is obeyed only when we expect it: as the requester, from the relay we
//!   asked while our request is outstanding; as the target, from the relay that is our route's
//!   next hop to a lower-id member two hops away (the side that requests), at most once per
//!   [`PUNCH_COORDINATE_INTERVAL_MS`] per peer. Anything else is dropped and counted, so no
//!   member or upstream can make us send datagrams to an address of its choice, and attempts
//!   toward peers we have no route to any more are forgotten.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use log::{debug, info, warn};

use crate::addr::{Endpoint, Host, Transport};
use crate::proto::cache::BoundedCache;
use crate::proto::event::Event;
use crate::proto::punch::{self, Puncher};
use crate::wire::frame::{Frame, Punch};
use crate::wire::udp::PUNCH_TOKEN_BYTES;

use super::{
    in_network, Action, Now, Router, MAX_PUNCHERS, MAX_PUNCH_COORDINATIONS,
    PUNCH_COORDINATE_INTERVAL_MS,
};

/// Our punching toward one peer.
#[derive(Debug)]
pub(super) struct PunchEntry {
    /// The attempt's state machine.
    pub puncher: Puncher,
    /// The relay asked (or that told us to punch).
    pub relay: String,
    /// The coordination's token, once the relay's `punch` arrived.
    pub token: Option<[u8; PUNCH_TOKEN_BYTES]>,
    /// The UDP socket to punch from (the one our link to the relay uses).
    pub socket: Option<SocketAddr>,
    /// When the path opened, to retry if no link comes up over it.
    pub opened_ms: Option<u64>,
    /// When a relay last told us to punch toward this peer.
    pub told_ms: Option<u64>,
}

impl PunchEntry {
    fn new(now_ms: u64, relay: &str) -> PunchEntry {
        PunchEntry {
            puncher: Puncher::new(now_ms),
            relay: relay.to_string(),
            token: None,
            socket: None,
            opened_ms: None,
            told_ms: None,
        }
    }
}

/// Punch state of the router.
#[derive(Debug)]
pub(super) struct Punching {
    /// Our attempts, by peer.
    pub entries: HashMap<String, PunchEntry>,
    /// As a relay: when we last coordinated a punch per (domain, requester, target).
    coordinated: BoundedCache<(Option<String>, String, String), u64>,
    /// `punch` frames dropped because we did not expect them.
    pub refused: u64,
    /// Punch events by outcome (`open`, `linked`, `failed`, `gave_up`): what the `punch`
    /// events said, counted.
    pub outcomes: BTreeMap<&'static str, u64>,
}

impl Default for Punching {
    fn default() -> Self {
        Punching {
            entries: HashMap::new(),
            coordinated: BoundedCache::with_entries(MAX_PUNCH_COORDINATIONS),
            refused: 0,
            outcomes: BTreeMap::new(),
        }
    }
}

impl Router {
    /// A punch datagram arrived on our UDP socket bound at `local`: answer it, and let the
    /// lower id dial the opened path.
    pub fn punch_datagram(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        token: [u8; PUNCH_TOKEN_BYTES],
        ack: bool,
    ) {
        let me = self.settings.node_id.clone();
        let Some((peer, e)) = self
            .punch
            .entries
            .iter_mut()
            .find(|(_, e)| e.token == Some(token))
        else {
            debug!("punch datagram from {from} with an unknown token");
            return;
        };
        let peer = peer.clone();
        let was_open = matches!(e.puncher.state(), punch::State::Open { .. });
        let action = e.puncher.on_datagram(from, me < peer);
        if !was_open && matches!(e.puncher.state(), punch::State::Open { .. }) {
            let event = Event::Punch {
                node: peer.clone(),
                outcome: "open",
                reason: None,
            };
            count_outcome(&mut self.punch.outcomes, &event);
            self.actions.push_back(Action::Event(event));
        }
        if !ack {
            self.actions.push_back(Action::Punch {
                from: Some(local),
                to: from,
                token,
                ack: true,
            });
        }
        if let Some(punch::Action::Dial(addr)) = action {
            info!("punched a path to {peer} at {addr}; dialling it");
            self.actions.push_back(Action::Dial(Endpoint {
                transport: Transport::Udp,
                host: Host::Ip(addr.ip()),
                port: addr.port(),
            }));
        } else if action.is_none() && !ack {
            debug!("punch datagram from {peer} at {from}");
        }
    }

    /// The reflexive UDP address of a node linked to us over UDP in a domain.
    fn udp_remote(&self, dom: Option<&str>, node_id: &str) -> Option<SocketAddr> {
        self.node_links(dom, node_id)
            .filter(|(_, l)| l.info.transport == Transport::Udp)
            .find_map(|(_, l)| l.info.remote)
    }

    /// Sends a frame to a directly linked node of a domain; false if there is no link.
    fn send_to(&mut self, dom: Option<&str>, node_id: &str, frame: Frame) -> bool {
        match self.best_link(dom, node_id) {
            Some(link) => {
                self.actions.push_back(Action::Send { link, frame });
                true
            }
            None => false,
        }
    }

    /// As a relay: `from` asks for a punch toward `target`; both must be linked to us.
    pub(super) fn coordinate_punch(
        &mut self,
        now: Now,
        dom: Option<&str>,
        from: &str,
        target: &str,
    ) {
        let ms = now.ms();
        let key = (dom.map(String::from), from.to_string(), target.to_string());
        let recent = |t: &u64| ms < t + PUNCH_COORDINATE_INTERVAL_MS;
        if self.punch.coordinated.get(&key).is_some_and(recent) {
            debug!("punch request {from} -> {target}: too soon after the last one");
            return;
        }
        if self.punch.coordinated.is_full() {
            self.punch.coordinated.retain(|_, t| recent(t));
        }
        self.punch.coordinated.insert(key, ms, 0);
        let result = punch::coordinate(self.udp_remote(dom, from), self.udp_remote(dom, target));
        match result {
            Ok(p) => {
                let mut token = [0u8; PUNCH_TOKEN_BYTES];
                token[..8].copy_from_slice(&self.random_u64().to_le_bytes());
                token[8..].copy_from_slice(&self.random_u64().to_le_bytes());
                info!(
                    "coordinating a punch between {from} ({}) and {target} ({}){}",
                    p.to_target,
                    p.to_requester,
                    in_network(dom)
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
                self.send_to(dom, target, to_target);
                self.send_to(dom, from, to_requester);
                if let Some(d) = self.domain_mut(dom) {
                    d.punches += 1;
                }
            }
            Err(e) => {
                debug!("cannot coordinate a punch {from} -> {target}: {e}");
                let refused = Frame::PunchRefused {
                    target: target.to_string(),
                    reason: e.to_string(),
                };
                self.send_to(dom, from, refused);
            }
        }
    }

    /// Starts punching toward members reached through exactly one relay (we request when our
    /// id is the lower one), and drives every attempt.
    pub(super) fn drive_punching(&mut self, now: Now) {
        let ms = now.ms();
        let me = self.settings.node_id.clone();
        let relays = self.home.relay_nodes.clone();
        let candidates: Vec<(String, String)> = self
            .home
            .routing
            .routes()
            .iter()
            .filter(|(id, r)| r.hops == 2 && me.as_str() < id.as_str() && !relays.contains(*id))
            .map(|(id, r)| (id.clone(), r.next_hop.clone()))
            .collect();
        for (peer, relay) in candidates {
            if self.punch.entries.len() >= MAX_PUNCHERS || self.best_link(None, &peer).is_some() {
                continue;
            }
            self.punch
                .entries
                .entry(peer)
                .or_insert_with(|| PunchEntry::new(ms, &relay));
        }
        // Attempts toward peers we cannot reach at all any more are forgotten (they come back
        // when the peer is two hops away again).
        let routes = self.home.routing.routes();
        let gone: Vec<String> = self
            .punch
            .entries
            .keys()
            .filter(|p| !routes.contains_key(*p))
            .cloned()
            .collect();
        for peer in gone {
            if self.best_link(None, &peer).is_none() {
                self.punch.entries.remove(&peer);
            }
        }
        let peers: Vec<String> = self.punch.entries.keys().cloned().collect();
        for peer in peers {
            let direct = self.best_link(None, &peer).is_some();
            let route = self.home.routing.route(&peer);
            let Some(e) = self.punch.entries.get_mut(&peer) else {
                continue;
            };
            if direct {
                e.opened_ms = None;
                continue;
            }
            if let punch::State::Open { .. } = e.puncher.state() {
                // The path opened but no link came up over it: try again later.
                let opened = *e.opened_ms.get_or_insert(ms);
                if ms > opened + 2 * punch::PUNCH_WINDOW_MS {
                    e.puncher.on_link_lost(ms);
                    e.opened_ms = None;
                    e.token = None;
                }
                continue;
            }
            let failures = e.puncher.failures();
            let polled = e.puncher.poll(ms);
            if e.puncher.failures() != failures {
                let event = punch_failed(&peer, &e.puncher);
                count_outcome(&mut self.punch.outcomes, &event);
                self.actions.push_back(Action::Event(event));
            }
            match polled {
                Some(punch::Action::Request) => {
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
                    self.send_to(None, &route.next_hop, frame);
                }
                Some(punch::Action::Send(addr)) => {
                    if let Some(token) = e.token {
                        let from = e.socket;
                        self.actions.push_back(Action::Punch {
                            from,
                            to: addr,
                            token,
                            ack: false,
                        });
                    }
                }
                Some(punch::Action::Dial(_)) | None => {}
            }
        }
    }

    /// A relay tells us to punch toward `p.peer`.
    pub(super) fn on_punch(&mut self, now: Now, relay: &str, p: Punch) {
        if !self.settings.hole_punching {
            debug!("ignoring a punch toward {} (hole_punching is off)", p.peer);
            return;
        }
        let Ok(addr) = p.addr.parse::<SocketAddr>() else {
            warn!("ignoring a punch from {relay}: bad address {:?}", p.addr);
            return;
        };
        if p.peer == self.settings.node_id
            || self.home.relay_nodes.contains(&p.peer)
            || self.best_link(None, &p.peer).is_some()
        {
            return;
        }
        let ms = now.ms();
        let expected = match self.punch.entries.get(&p.peer) {
            // Our request is outstanding: only the relay we asked answers it.
            Some(e) if matches!(e.puncher.state(), punch::State::Requested { .. }) => {
                e.relay == relay
            }
            // Unrequested: we are the target of the lower id's request through this relay.
            other => {
                let via_relay = self
                    .home
                    .routing
                    .route(&p.peer)
                    .is_some_and(|r| r.hops == 2 && r.next_hop == relay);
                let too_soon = other
                    .and_then(|e| e.told_ms)
                    .is_some_and(|t| ms < t + PUNCH_COORDINATE_INTERVAL_MS);
                p.peer.as_str() < self.settings.node_id.as_str() && via_relay && !too_soon
            }
        };
        if !expected {
            debug!(
                "ignoring an unexpected punch toward {} from {relay}",
                p.peer
            );
            self.punch.refused += 1;
            return;
        }
        // Punch from the socket our UDP link to the relay uses: its mapping is the address the
        // relay gave the peer.
        let socket = self
            .node_links(None, relay)
            .filter(|(_, l)| l.info.transport == Transport::Udp)
            .find_map(|(_, l)| l.info.local);
        if !self.punch.entries.contains_key(&p.peer) && self.punch.entries.len() >= MAX_PUNCHERS {
            return;
        }
        let e = self
            .punch
            .entries
            .entry(p.peer.clone())
            .or_insert_with(|| PunchEntry::new(ms, relay));
        e.relay = relay.to_string();
        e.token = Some(p.token);
        e.socket = socket;
        e.told_ms = Some(ms);
        if let Some(punch::Action::Send(to)) = e.puncher.on_punch(addr, ms) {
            info!(
                "punching toward {} at {to} (coordinated by {relay})",
                p.peer
            );
            self.actions.push_back(Action::Punch {
                from: socket,
                to,
                token: p.token,
                ack: false,
            });
        }
    }

    /// The relay cannot coordinate our punch toward `target`.
    pub(super) fn on_punch_refused(&mut self, now: Now, target: &str, reason: &str) {
        if let Some(e) = self.punch.entries.get_mut(target) {
            let failures = e.puncher.failures();
            e.puncher.on_refused(now.ms(), reason);
            if e.puncher.failures() != failures {
                let event = punch_failed(target, &e.puncher);
                count_outcome(&mut self.punch.outcomes, &event);
                self.actions.push_back(Action::Event(event));
            }
        }
    }

    /// Our last link to `peer` went: punch again later.
    pub(super) fn punch_link_lost(&mut self, now: Now, peer: &str) {
        if let Some(e) = self.punch.entries.get_mut(peer) {
            e.puncher.on_link_lost(now.ms());
            e.token = None;
        }
    }
}

/// Counts a `punch` event by its outcome.
pub(super) fn count_outcome(outcomes: &mut BTreeMap<&'static str, u64>, event: &Event) {
    if let Event::Punch { outcome, .. } = event {
        *outcomes.entry(outcome).or_default() += 1;
    }
}

/// The `punch` event of a failed attempt (or of giving up).
fn punch_failed(peer: &str, p: &punch::Puncher) -> Event {
    Event::Punch {
        node: peer.to_string(),
        outcome: if matches!(p.state(), punch::State::GaveUp { .. }) {
            "gave_up"
        } else {
            "failed"
        },
        reason: p.last_error().map(String::from),
    }
}
