//! The message path: sealing, pending requests, forwarding, the target's side (replays,
//! scripts, replies, the inbox).
//!
//! - Sending: [`Router::send`] seals the message end to end for the target (pair key cached per
//!   peer: one X25519 per peer, not per message), remembers the pending request (with a copy to
//!   re-send if its first hop's link goes) and queues it on the best link to the next hop. The
//!   sealed reply completes it ([`super::Action::Complete`]); a deadline fails what was not
//!   answered in time.
//! - Receiving: envelopes for us are opened, checked against replays, and dispatched: a body
//!   naming a configured script runs it ([`super::Action::RunScript`]); anything else is a plain
//!   message, kept in the inbox. The outcome goes back sealed, and is kept in a reply cache so a
//!   re-sent request is answered again instead of running twice.
//! - Forwarding: envelopes for others are passed on unopened within their domain's policy, with
//!   a hop counter and an id cache as the last guard against loops, and counted.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use log::{debug, info, warn};

use crate::proto::cache::BoundedCache;
use crate::proto::e2e::{self, E2eError, Outcome, PairKey, Payload, ReplayCache};
use crate::proto::shaper::Admit;
use crate::wire::frame::{Envelope, Frame, MessageKind, OverBudget};

/// What [`Router::forward`] did with an envelope.
enum Forwarded {
    /// Handed to a link.
    Sent,
    /// Waiting in a foreign domain's shaper.
    Queued,
}

use super::report::{MessageCounters, ReceivedMessage};

/// Longest body still read as a script name (a name is at most 64 bytes; whitespace around it
/// is trimmed).
const SCRIPT_NAME_PROBE_BYTES: usize = 256;
use super::{
    describe, Action, Delivery, Now, Policy, Router, ScriptResult, SendError, MAX_HOPS,
    MAX_PENDING, REANSWER_INTERVAL_MS, RECENT_BODY_BYTES, RECENT_MESSAGES, REPLAY_CACHE,
    REPLY_CACHE_BYTES, REPLY_CACHE_ENTRIES, REPLY_OVERHEAD_BYTES, RESEND_BUDGET_BYTES,
};

/// A request awaiting its answer.
#[derive(Debug)]
struct Pending {
    /// Who must answer.
    target: String,
    /// When it times out (monotonic ms).
    deadline_ms: u64,
    /// The timeout asked for, for the error.
    timeout_ms: u64,
    /// The sealed request as first sent (hops 0), to re-send on another path; `None` when it
    /// did not fit [`RESEND_BUDGET_BYTES`].
    resend: Option<Envelope>,
    /// The neighbour it last went to ("" while it waits for a path).
    first_hop: String,
    /// Times it was handed to a link.
    sends: u32,
}

/// The message path's state.
#[derive(Debug)]
pub(super) struct Messages {
    /// Requests awaiting an answer, by id.
    pending: HashMap<u64, Pending>,
    /// The same, ordered by deadline.
    deadlines: BTreeSet<(u64, u64)>,
    /// Bytes held in `Pending::resend`.
    resend_bytes: usize,
    /// End-to-end keys by node id, derived once.
    pair_keys: HashMap<String, Arc<PairKey>>,
    /// (source, id) of every envelope accepted here, against replays.
    replay: ReplayCache,
    /// Sealed replies by (requester, request id), for re-sent duplicates.
    answered: BoundedCache<(String, u64), Envelope>,
    /// When a duplicate was last answered from `answered` (monotonic ms), so replaying a
    /// request cannot make us send its reply more than a few times per second.
    reanswered: BoundedCache<(String, u64), u64>,
    /// Requests whose script is running, by job.
    running: HashMap<u64, Envelope>,
    /// Per-sender rate limits (bounded by the known-node limit).
    pub(super) sender_rates: HashMap<String, crate::proto::token_bucket::TokenBucket>,
    /// Next script job id.
    pub(super) next_job: u64,
    /// Counters for `/status`.
    pub counters: MessageCounters,
    /// Recent plain messages, bounded by [`RECENT_MESSAGES`].
    pub inbox: VecDeque<ReceivedMessage>,
}

impl Messages {
    /// The message path of a node started at `start_unix_ms` (envelopes dated before it are
    /// refused: the replay cache of an earlier run is gone).
    pub(super) fn new(start_unix_ms: u64) -> Messages {
        Messages {
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            resend_bytes: 0,
            pair_keys: HashMap::new(),
            replay: ReplayCache::new(REPLAY_CACHE, e2e::REPLAY_QUOTA_PER_SOURCE, start_unix_ms),
            answered: BoundedCache::new(REPLY_CACHE_ENTRIES, REPLY_CACHE_BYTES),
            reanswered: BoundedCache::with_entries(REPLY_CACHE_ENTRIES),
            running: HashMap::new(),
            sender_rates: HashMap::new(),
            next_job: 0,
            counters: MessageCounters::default(),
            inbox: VecDeque::new(),
        }
    }

    /// Keeps a delivered message in the recent inbox (bounded by [`RECENT_MESSAGES`], bodies
    /// by [`RECENT_BODY_BYTES`]).
    pub(super) fn keep(
        &mut self,
        id: u64,
        source: &str,
        now: Now,
        hops: u8,
        body: &[u8],
        topic: Option<&str>,
    ) {
        if self.inbox.len() >= RECENT_MESSAGES {
            self.inbox.pop_front();
        }
        let kept = &body[..body.len().min(RECENT_BODY_BYTES)];
        self.inbox.push_back(ReceivedMessage {
            id: id.to_string(),
            source: source.to_string(),
            received_unix_ms: now.unix_ms,
            hops,
            bytes: body.len(),
            body: String::from_utf8_lossy(kept).into_owned(),
            truncated: kept.len() < body.len(),
            topic: topic.map(String::from),
        });
    }

    /// Requests waiting for their answer.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The earliest pending deadline.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Drops a cached pair key (the node's key changed).
    pub(super) fn forget_pair_key(&mut self, id: &str) {
        self.pair_keys.remove(id);
    }

    /// Forgets a pending request, releasing its re-send copy.
    fn take(&mut self, id: u64) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.deadlines.remove(&(p.deadline_ms, id));
        if let Some(e) = &p.resend {
            self.resend_bytes = self.resend_bytes.saturating_sub(e.sealed.len());
        }
        Some(p)
    }
}

impl Router {
    /// Sends `body` to `target`, answering within `timeout_ms` through
    /// [`Action::Complete`] with the returned id; an error here means it was not sent.
    pub fn send(
        &mut self,
        now: Now,
        target: &str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, SendError> {
        self.send_payload(now, target, Payload::encode_message(body), timeout_ms)
    }

    /// [`Router::send`] of an encoded payload.
    pub(super) fn send_payload(
        &mut self,
        now: Now,
        target: &str,
        plaintext: Vec<u8>,
        timeout_ms: u64,
    ) -> Result<u64, SendError> {
        if self.msgs.pending.len() >= MAX_PENDING {
            return Err(SendError::Busy);
        }
        if self.home.relay_nodes.contains(target) {
            return Err(SendError::NotMember(target.to_string()));
        }
        if !self.home.keys.contains(target) {
            return Err(SendError::PeerNotFound(target.to_string()));
        }
        let envelope = self.envelope(now, target, MessageKind::Request, timeout_ms, plaintext)?;
        let id = envelope.id;
        let size = envelope.sealed.len();
        let me = self.settings.node_id.clone();
        let resend = (target != me && self.msgs.resend_bytes + size <= RESEND_BUDGET_BYTES)
            .then(|| envelope.clone());
        if resend.is_some() {
            self.msgs.resend_bytes += size;
        }
        let deadline_ms = now.ms() + timeout_ms;
        self.msgs.pending.insert(
            id,
            Pending {
                target: target.to_string(),
                deadline_ms,
                timeout_ms,
                resend,
                first_hop: String::new(),
                sends: 1,
            },
        );
        self.msgs.deadlines.insert((deadline_ms, id));
        self.msgs.counters.sent += 1;
        match self.route(now, envelope) {
            Ok(next) => {
                if let Some(p) = self.msgs.pending.get_mut(&id) {
                    p.first_hop = next;
                }
                Ok(id)
            }
            // No path now, but the node is known: wait for one until the timeout (a link
            // that is re-dialling is back in well under a second); the next path change re-sends
            // it (`resend_stranded`).
            Err(SendError::NoRoute(_))
                if self
                    .msgs
                    .pending
                    .get(&id)
                    .is_some_and(|p| p.resend.is_some()) =>
            {
                debug!("request {id} for {target} waits for a route");
                if let Some(p) = self.msgs.pending.get_mut(&id) {
                    p.sends = 0;
                }
                Ok(id)
            }
            Err(e) => {
                self.msgs.take(id);
                Err(e)
            }
        }
    }

    /// A script the router asked for ended: answer its request.
    pub fn script_done(&mut self, now: Now, job: u64, result: ScriptResult) {
        let durable = self.durable.jobs.remove(&job);
        let request = self.msgs.running.remove(&job);
        if durable.is_none() && request.is_none() {
            return;
        }
        if let (Some((source, id)), ScriptResult::Busy) = (&durable, &result) {
            // It never started: not taken after all; the origin's next attempt is.
            self.durable_not_taken(source, *id);
            return;
        }
        let outcome = match result {
            ScriptResult::Ran {
                exit_code,
                mut stdout,
                mut stderr,
                timed_out,
                truncated,
            } => {
                // The reply must fit one frame: stderr gives way first, then stdout.
                let budget = self
                    .settings
                    .max_frame_bytes
                    .saturating_sub(REPLY_OVERHEAD_BYTES);
                let mut truncated = truncated;
                if stdout.len() + stderr.len() > budget {
                    truncated = true;
                    stderr.truncate(budget.saturating_sub(stdout.len()));
                    stdout.truncate(budget);
                }
                Outcome::Script {
                    exit_code,
                    stdout,
                    stderr,
                    timed_out,
                    truncated,
                    interrupted: false,
                }
            }
            ScriptResult::Busy => Outcome::Failed {
                code: "script_busy".into(),
                message: "too many scripts running or queued".into(),
            },
            ScriptResult::Failed(message) => Outcome::Failed {
                code: "script_failed".into(),
                message,
            },
        };
        match (durable, request) {
            (Some((source, id)), _) => self.durable_script_done(source, id, outcome),
            (None, Some(request)) => self.reply(now, &request, outcome),
            (None, None) => {}
        }
    }

    /// Whether this node takes a request from `source` (its size, hops, sender rate and the
    /// script's allow list); the refusal's outcome otherwise, and whether it is worth a retry
    /// (a rate limit passes; the others do not).
    pub(super) fn admit(
        &mut self,
        now: Now,
        source: &str,
        body: &[u8],
        hops: u8,
        script: Option<&str>,
    ) -> Result<(), (Outcome, bool)> {
        let limits = self.settings.incoming;
        let refuse = |code: &str, message: String, retry: bool| {
            Err((
                Outcome::Failed {
                    code: code.into(),
                    message,
                },
                retry,
            ))
        };
        if body.len() > limits.max_bytes {
            return refuse(
                "too_large",
                format!(
                    "{} takes messages of at most {} bytes; this one has {}",
                    self.settings.node_id,
                    limits.max_bytes,
                    body.len()
                ),
                false,
            );
        }
        if hops > limits.max_hops {
            return refuse(
                "too_many_hops",
                format!(
                    "{} takes messages that crossed at most {} links; this one crossed {hops}",
                    self.settings.node_id, limits.max_hops
                ),
                false,
            );
        }
        if let Some(name) = script {
            if let Some(allowed) = self.settings.script_allow.get(name) {
                if !allowed.contains(source) {
                    return refuse(
                        "forbidden",
                        format!(
                            "{source} may not run script {name:?} on {}",
                            self.settings.node_id
                        ),
                        false,
                    );
                }
            }
        }
        if limits.per_sender_per_s > 0 {
            let full = self.msgs.sender_rates.len() >= crate::proto::peer_table::MAX_KNOWN_NODES;
            let bucket = match self.msgs.sender_rates.get_mut(source) {
                Some(b) => Some(b),
                None if !full => Some(
                    self.msgs
                        .sender_rates
                        .entry(source.to_string())
                        .or_insert_with(|| {
                            crate::proto::token_bucket::TokenBucket::new(
                                limits.per_sender_per_s,
                                now.us,
                            )
                        }),
                ),
                None => None,
            };
            if !bucket.is_some_and(|b| b.try_take(now.us, 1)) {
                return refuse(
                    "rate_limited",
                    format!(
                        "{} takes at most {} messages per second from {source}; retry later",
                        self.settings.node_id, limits.per_sender_per_s
                    ),
                    true,
                );
            }
        }
        Ok(())
    }

    /// The script a message body names, if any: an id (at most 64 bytes) with whitespace
    /// around it; a longer body is a plain message and is not scanned as text.
    pub(super) fn script_name<'a>(&self, body: &'a [u8]) -> Option<&'a str> {
        if body.len() > SCRIPT_NAME_PROBE_BYTES {
            return None;
        }
        let name = std::str::from_utf8(body).ok()?.trim();
        self.settings.scripts.contains(name).then_some(name)
    }

    /// Fails requests whose deadline passed.
    pub(super) fn expire_pending(&mut self, now: Now) {
        let ms = now.ms();
        while let Some(&(deadline, id)) = self.msgs.deadlines.first() {
            if deadline > ms {
                break;
            }
            if let Some(p) = self.msgs.take(id) {
                self.msgs.counters.timed_out += 1;
                // Never sent: no route came in time.
                let error = if p.sends == 0 {
                    SendError::NoRoute(p.target)
                } else {
                    SendError::Timeout(p.target, p.timeout_ms)
                };
                self.complete(id, Err(error));
            } else {
                self.msgs.deadlines.remove(&(deadline, id));
            }
        }
    }

    /// A link could not take an envelope we sealed.
    pub(super) fn own_envelope_refused(&mut self, envelope: &Envelope) {
        if envelope.kind != MessageKind::Request {
            debug!("reply {} dropped: link queue full", describe(envelope));
            return;
        }
        let id = envelope.id;
        let first = self.msgs.pending.get(&id).is_some_and(|p| p.sends <= 1);
        if first {
            // As before it was sent: the caller hears at once that the node is busy.
            self.msgs.take(id);
            self.complete(id, Err(SendError::Busy));
        } else if let Some(p) = self.msgs.pending.get_mut(&id) {
            // A re-send: wait for the next path change and try again.
            p.first_hop.clear();
        }
    }

    /// Builds an envelope from us, still clear: [`Router::route`] seals it unless it goes over
    /// our direct member link to its target (whose session already authenticates us to the
    /// target and encrypts the hop), so a message never crosses a relay unsealed and a direct
    /// one is not sealed twice. The pair key is derived here (an error means it cannot be).
    fn envelope(
        &mut self,
        now: Now,
        target: &str,
        kind: MessageKind,
        ttl_ms: u64,
        plaintext: Vec<u8>,
    ) -> Result<Envelope, SendError> {
        self.pair_key(target)?;
        let envelope = Envelope {
            id: self.random_u64(),
            source: self.settings.node_id.clone(),
            target: target.to_string(),
            kind,
            timestamp_ms: now.unix_ms,
            ttl_ms: ttl_ms.min(e2e::MAX_TTL_MS as u64) as u32,
            hops: 0,
            clear: true,
            sealed: plaintext.into(),
            signature: None,
        };
        if envelope.sealed.len() > e2e::MAX_PLAINTEXT_BYTES {
            return Err(SendError::Crypto(
                target.to_string(),
                E2eError::Oversize {
                    len: envelope.sealed.len(),
                    max: e2e::MAX_PLAINTEXT_BYTES,
                }
                .to_string(),
            ));
        }
        Ok(envelope)
    }

    pub(super) fn pair_key(&mut self, id: &str) -> Result<Arc<PairKey>, SendError> {
        if let Some(k) = self.msgs.pair_keys.get(id) {
            return Ok(k.clone());
        }
        let public = *self
            .home
            .keys
            .get(id)
            .ok_or_else(|| SendError::PeerNotFound(id.to_string()))?;
        // With a network CA, never seal to a key that is only gossiped.
        if self.settings.network_ca.is_some()
            && self.home.keys.source(id) == Some(crate::proto::key_book::Source::Gossiped)
        {
            return Err(SendError::Crypto(
                id.to_string(),
                "its key has no certificate from the network CA".into(),
            ));
        }
        let keys = &self.settings.keys;
        let me = &self.settings.node_id;
        let key = PairKey::derive(&keys.identity, &public, &keys.network_key, me, id)
            .map_err(|e| SendError::Crypto(id.to_string(), e.to_string()))?;
        let key = Arc::new(key);
        if self.msgs.pair_keys.len() < crate::proto::peer_table::MAX_KNOWN_NODES {
            self.msgs.pair_keys.insert(id.to_string(), key.clone());
        }
        Ok(key)
    }

    /// Sends an envelope of ours toward its target (or handles it here for loopback); answers
    /// the neighbour it went to.
    pub(super) fn route(&mut self, now: Now, mut envelope: Envelope) -> Result<String, SendError> {
        let me = self.settings.node_id.clone();
        if envelope.target == me {
            self.on_envelope_for_me(now, envelope);
            return Ok(me);
        }
        let next_hop = self
            .next_hop(None, &envelope.target)
            .ok_or_else(|| SendError::NoRoute(envelope.target.clone()))?;
        let link = self
            .best_link(None, &next_hop)
            .ok_or_else(|| SendError::NoRoute(envelope.target.clone()))?;
        let direct = next_hop == envelope.target
            && self
                .links
                .get(&link)
                .is_some_and(|l| l.info.kind == super::LinkKind::Member);
        if envelope.clear && !direct {
            let key = self.pair_key(&envelope.target)?;
            let plaintext = std::mem::take(&mut envelope.sealed);
            e2e::seal(&key, &mut envelope, &plaintext)
                .map_err(|e| SendError::Crypto(envelope.target.clone(), e.to_string()))?;
        }
        envelope.hops = envelope.hops.saturating_add(1);
        self.actions.push_back(Action::Send {
            link,
            frame: Frame::Data(envelope),
        });
        Ok(next_hop)
    }

    /// The neighbour to hand a frame for `target` to in a domain. A node with a direct link
    /// gets it directly (also before its advert arrives, and even if link costs make a relayed
    /// path look cheaper: a relay adds a hop of work and a point of failure); others go by the
    /// routing table.
    pub(super) fn next_hop(&mut self, dom: Option<&str>, target: &str) -> Option<String> {
        if self.best_link(dom, target).is_some() {
            return Some(target.to_string());
        }
        self.domain_mut(dom)?
            .routing
            .route(target)
            .map(|r| r.next_hop)
    }

    /// Re-sends pending requests whose first hop is no longer linked, over whatever path the
    /// routing table has now. The target answers a duplicate from its reply cache, so a script
    /// never runs twice.
    pub(super) fn resend_stranded(&mut self, now: Now) {
        let stranded: Vec<u64> = self
            .msgs
            .pending
            .iter()
            .filter(|(_, p)| p.resend.is_some())
            .filter(|(_, p)| self.best_link(None, &p.first_hop).is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in stranded {
            let Some(envelope) = self.msgs.pending.get(&id).and_then(|p| p.resend.clone()) else {
                continue;
            };
            match self.route(now, envelope) {
                Ok(next) => {
                    debug!("re-sent request {id} via {next} after losing its first hop");
                    self.msgs.counters.resent += 1;
                    if let Some(p) = self.msgs.pending.get_mut(&id) {
                        p.first_hop = next;
                        p.sends += 1;
                    }
                }
                Err(e) => debug!("cannot re-send request {id} yet: {e}"),
            }
        }
    }

    /// A data frame in a domain: ours to open, or to forward under the domain's policy.
    /// `from_source`: it came over a member link to its own source (the only way a clear
    /// envelope is taken; nobody forwards one).
    pub(super) fn on_data(
        &mut self,
        now: Now,
        dom: Option<&str>,
        envelope: Envelope,
        from_source: bool,
    ) {
        let mine = dom.is_none() && envelope.target == self.settings.node_id;
        if envelope.clear && !(mine && from_source) {
            debug!(
                "dropping clear {}: not over its source's own link to us",
                describe(&envelope)
            );
            if let Some(d) = self.domain_mut(dom) {
                d.dropped.messages += 1;
            }
            self.msgs.counters.drop("not_direct");
            return;
        }
        if mine {
            self.on_envelope_for_me(now, envelope);
            return;
        }
        let bytes = envelope.sealed.len() as u64;
        // Only for the log line of a drop: not formatted for every relayed message.
        let what = log::log_enabled!(log::Level::Debug).then(|| describe(&envelope));
        match self.forward(now, dom, envelope) {
            Ok(Forwarded::Sent) => self.count_relayed(dom, bytes),
            Ok(Forwarded::Queued) => {}
            Err(why) => {
                if let Some(what) = what {
                    debug!("dropping {what}{}: {why}", super::in_network(dom));
                }
                if let Some(d) = self.domain_mut(dom) {
                    d.dropped.messages += 1;
                    d.dropped.bytes += bytes;
                }
                if dom.is_none() {
                    self.msgs.counters.drop(drop_reason(why));
                }
            }
        }
    }

    /// Counts an envelope relayed for others in a domain.
    fn count_relayed(&mut self, dom: Option<&str>, bytes: u64) {
        let network = dom.unwrap_or(&self.settings.network);
        let c = match self.relayed.get_mut(network) {
            Some(c) => c,
            None => self.relayed.entry(network.to_string()).or_default(),
        };
        c.messages += 1;
        c.bytes += bytes;
        if let Some(d) = self.domain_mut(dom) {
            d.relayed.messages += 1;
            d.relayed.bytes += bytes;
        }
    }

    /// Passes one envelope on toward its target in its domain, unopened (or queues it in a
    /// foreign domain's shaper), or says why not.
    fn forward(
        &mut self,
        now: Now,
        dom: Option<&str>,
        envelope: Envelope,
    ) -> Result<Forwarded, &'static str> {
        let me = self.settings.node_id.clone();
        let d = self.domain_mut(dom).ok_or("unknown network")?;
        if let Policy::Foreign { control_only, .. } = d.policy {
            if envelope.target == me {
                // We are not a member: we cannot open it, and our scripts are not theirs.
                return Err("addressed to us, not a member");
            }
            if control_only {
                return Err("network admitted for control traffic only");
            }
        }
        if envelope.hops >= MAX_HOPS {
            return Err("hop limit");
        }
        let key = (envelope.source.clone(), envelope.id);
        if d.seen.contains(&key) {
            return Err("seen (loop)");
        }
        d.seen.insert(key, (), 0);
        let next_hop = self.next_hop(dom, &envelope.target).ok_or("no route")?;
        let d = self.domain_mut(dom).ok_or("unknown network")?;
        let envelope = match &mut d.policy {
            Policy::Home => envelope,
            Policy::Foreign { shaper, .. } => {
                let bytes = envelope.sealed.len() as u64;
                match shaper.offer(now.us, bytes, envelope) {
                    Admit::Now(e) => e,
                    Admit::Queued => {
                        d.release_at_ms =
                            shaper.next_release_us(now.us).map(|us| us.div_ceil(1000));
                        return Ok(Forwarded::Queued);
                    }
                    Admit::Refused {
                        item,
                        retry_after_ms,
                    } => {
                        d.over_budget.messages += 1;
                        d.over_budget.bytes += bytes;
                        self.refuse_over_budget(dom, &item, retry_after_ms);
                        return Err("over the relay budget, queue full");
                    }
                }
            }
        };
        self.send_via(dom, &next_hop, envelope)
            .map(|()| Forwarded::Sent)
    }

    /// Sends an envelope to its next hop in a domain (one more hop), routing it now.
    fn send_on(&mut self, dom: Option<&str>, envelope: Envelope) -> Result<(), &'static str> {
        let next_hop = self.next_hop(dom, &envelope.target).ok_or("no route")?;
        self.send_via(dom, &next_hop, envelope)
    }

    /// Sends an envelope to `next_hop` in a domain (one more hop).
    fn send_via(
        &mut self,
        dom: Option<&str>,
        next_hop: &str,
        mut envelope: Envelope,
    ) -> Result<(), &'static str> {
        let link = self.best_link(dom, next_hop).ok_or("no route")?;
        envelope.hops = envelope.hops.saturating_add(1);
        self.actions.push_back(Action::Send {
            link,
            frame: Frame::Data(envelope),
        });
        Ok(())
    }

    /// Sends what the foreign domains' shapers let go now.
    pub(super) fn release_shaped(&mut self, now: Now) {
        let ms = now.ms();
        let due: Vec<String> = self
            .foreign
            .iter()
            .filter(|(_, d)| d.release_at_ms.is_some_and(|t| t <= ms))
            .map(|(n, _)| n.clone())
            .collect();
        for network in due {
            let Some(d) = self.foreign.get_mut(&network) else {
                continue;
            };
            let Policy::Foreign { shaper, .. } = &mut d.policy else {
                continue;
            };
            let out = shaper.release(now.us);
            d.release_at_ms = shaper.next_release_us(now.us).map(|us| us.div_ceil(1000));
            for envelope in out {
                let bytes = envelope.sealed.len() as u64;
                match self.send_on(Some(&network), envelope) {
                    Ok(()) => self.count_relayed(Some(&network), bytes),
                    Err(why) => {
                        debug!("dropping a queued envelope of network {network:?}: {why}");
                        if let Some(d) = self.foreign.get_mut(&network) {
                            d.dropped.messages += 1;
                            d.dropped.bytes += bytes;
                        }
                    }
                }
            }
        }
    }

    /// Tells an envelope's origin that we refused it over the budget (an `over_budget` frame
    /// routed back toward its source in the domain).
    fn refuse_over_budget(&mut self, dom: Option<&str>, envelope: &Envelope, retry_after_ms: u64) {
        let frame = Frame::OverBudget(OverBudget {
            id: envelope.id,
            source: envelope.source.clone(),
            target: envelope.target.clone(),
            retry_after_ms: retry_after_ms.min(u64::from(u32::MAX)) as u32,
            hops: 0,
        });
        self.send_toward(dom, &envelope.source, frame);
    }

    /// Sends a control frame to the next hop toward `node` in a domain; false without a route.
    fn send_toward(&mut self, dom: Option<&str>, node: &str, frame: Frame) -> bool {
        let Some(next) = self.next_hop(dom, node) else {
            return false;
        };
        let Some(link) = self.best_link(dom, &next) else {
            return false;
        };
        self.actions.push_back(Action::Send { link, frame });
        true
    }

    /// An `over_budget` frame from neighbour `from`: ours (it completes the request at once,
    /// if `from` is where the request went), or passed on toward its source.
    pub(super) fn on_over_budget(&mut self, dom: Option<&str>, from: &str, mut o: OverBudget) {
        if dom.is_none() && o.source == self.settings.node_id {
            let ours = self
                .msgs
                .pending
                .get(&o.id)
                .is_some_and(|p| p.target == o.target && p.first_hop == from);
            if !ours {
                debug!(
                    "over_budget for {} from {from}: not a request of ours sent there",
                    o.id
                );
                return;
            }
            if self.msgs.take(o.id).is_some() {
                self.complete(
                    o.id,
                    Err(SendError::OverBudget {
                        relay: from.to_string(),
                        retry_after_ms: u64::from(o.retry_after_ms),
                    }),
                );
            }
            return;
        }
        if o.hops >= MAX_HOPS {
            return;
        }
        o.hops += 1;
        let source = o.source.clone();
        self.send_toward(dom, &source, Frame::OverBudget(o));
    }

    fn on_envelope_for_me(&mut self, now: Now, mut envelope: Envelope) {
        if envelope.signature.is_some() {
            self.on_durable_for_me(now, envelope, None);
            return;
        }
        let source = envelope.source.clone();
        let key = match self.pair_key(&source) {
            Ok(k) => k,
            Err(e) => {
                debug!("dropping envelope from {source}: {e}");
                self.msgs.counters.drop("unknown_source");
                return;
            }
        };
        let opened = if envelope.clear {
            // Only from the source itself over its member link (checked by `on_data`) or
            // from us: the link's session authenticated it.
            Ok(std::mem::take(&mut envelope.sealed))
        } else {
            e2e::open(&key, &envelope).map(Bytes::from)
        };
        let plaintext = match opened {
            Ok(p) => p,
            Err(e) => {
                warn!("dropping envelope {} from {source}: {e}", envelope.id);
                self.msgs.counters.drop("unopenable");
                return;
            }
        };
        // Only authentic envelopes enter the replay cache, so forgeries cannot evict it.
        if let Err(e) = self.msgs.replay.check_and_insert(now.unix_ms, &envelope) {
            let key = (source.clone(), envelope.id);
            if let (E2eError::Replayed, Some(reply)) = (&e, self.msgs.answered.get(&key)) {
                // The requester lost its path and re-sent: answer again, do not run again;
                // at most once per REANSWER_INTERVAL_MS, so replays cannot amplify.
                let ms = now.ms();
                if self
                    .msgs
                    .reanswered
                    .get(&key)
                    .is_some_and(|t| ms < t + REANSWER_INTERVAL_MS)
                {
                    debug!("duplicate {} from {source} answered just now", envelope.id);
                    self.msgs.counters.drop("duplicate");
                    return;
                }
                let reply = reply.clone();
                self.msgs.reanswered.insert(key, ms, 0);
                debug!(
                    "answering re-sent request {} from {source} again",
                    envelope.id
                );
                if let Err(e) = self.route(now, reply) {
                    debug!("cannot answer {} at {source} again: {e}", envelope.id);
                }
                return;
            }
            debug!("dropping envelope {} from {source}: {e}", envelope.id);
            self.msgs.counters.drop("replayed");
            return;
        }
        if envelope.kind == MessageKind::Request {
            // The common case, without copying the body out of the plaintext.
            if let Some(body) = Payload::message_body(&plaintext) {
                self.on_request(now, envelope, body);
                return;
            }
        }
        let payload = match Payload::decode(&plaintext) {
            Ok(p) => p,
            Err(e) => {
                warn!("dropping envelope {} from {source}: {e}", envelope.id);
                self.msgs.counters.drop("undecodable");
                return;
            }
        };
        match (envelope.kind, payload) {
            (MessageKind::Request, Payload::Message { body }) => {
                self.on_request(now, envelope, &body)
            }
            (
                MessageKind::Response,
                Payload::Reply {
                    in_reply_to,
                    outcome,
                    request_hops,
                },
            ) => {
                // Only the node we asked may answer (a duplicate answer finds nothing pending).
                let asked = self
                    .msgs
                    .pending
                    .get(&in_reply_to)
                    .map(|p| p.target.as_str());
                if asked != Some(&source) {
                    debug!("late, unknown or misdirected reply {in_reply_to} from {source}");
                    return;
                }
                if self.msgs.take(in_reply_to).is_none() {
                    return;
                }
                self.msgs.counters.replies += 1;
                self.complete(
                    in_reply_to,
                    Ok(Delivery {
                        id: in_reply_to,
                        hops: request_hops,
                        outcome,
                    }),
                );
            }
            (MessageKind::Request, Payload::Custody { envelope: inner }) => {
                self.on_custody(now, envelope, inner)
            }
            (MessageKind::Request, Payload::Publish { publication, body }) => {
                self.on_publish(now, envelope, &publication, &body)
            }
            _ => {
                warn!(
                    "dropping envelope {} from {source}: kind and payload disagree",
                    envelope.id
                );
                self.msgs.counters.drop("undecodable");
            }
        }
    }

    fn on_request(&mut self, now: Now, envelope: Envelope, body: &[u8]) {
        let script = self.script_name(body).map(String::from);
        if let Err((outcome, _)) = self.admit(
            now,
            &envelope.source,
            body,
            envelope.hops,
            script.as_deref(),
        ) {
            debug!(
                "refusing request {} from {}: {outcome:?}",
                envelope.id, envelope.source
            );
            self.msgs.counters.refused += 1;
            self.reply(now, &envelope, outcome);
            return;
        }
        let Some(name) = script else {
            info!(
                "message {} from {} ({} bytes, {} hops)",
                envelope.id,
                envelope.source,
                body.len(),
                envelope.hops
            );
            self.msgs.counters.delivered += 1;
            self.msgs.keep(
                envelope.id,
                &envelope.source,
                now,
                envelope.hops,
                body,
                None,
            );
            self.actions.push_back(Action::Event(message_event(
                &envelope.source,
                envelope.id,
                envelope.hops,
                body,
                false,
            )));
            // Into the durable inbox too, behind the answer: a live message promises no more
            // than delivery to this node (a ttl makes it wait for the disk).
            self.actions.push_back(Action::Persist {
                ops: vec![crate::proto::durable::Op::Inbox(
                    crate::proto::durable::InboxRecord::new(
                        envelope.id,
                        &envelope.source,
                        now.unix_ms,
                        envelope.hops,
                        body,
                    ),
                )],
                durable: false,
                token: None,
            });
            self.reply(now, &envelope, Outcome::Delivered);
            return;
        };
        self.msgs.counters.scripts_run += 1;
        self.msgs.next_job += 1;
        let job = self.msgs.next_job;
        self.actions.push_back(Action::RunScript {
            job,
            name: name.to_string(),
            source: envelope.source.clone(),
            message_id: envelope.id,
        });
        self.msgs.running.insert(job, envelope);
    }

    pub(super) fn reply(&mut self, now: Now, request: &Envelope, outcome: Outcome) {
        let payload = Payload::Reply {
            in_reply_to: request.id,
            outcome,
            request_hops: request.hops,
        };
        let ttl = request.ttl_ms as u64;
        match self.envelope(
            now,
            &request.source,
            MessageKind::Response,
            ttl,
            payload.encode(),
        ) {
            Ok(envelope) => {
                let size = envelope.sealed.len();
                let key = (request.source.clone(), request.id);
                self.msgs.answered.insert(key, envelope.clone(), size);
                if let Err(e) = self.route(now, envelope) {
                    debug!("cannot answer {} at {}: {e}", request.id, request.source);
                }
            }
            Err(e) => warn!("cannot answer {} at {}: {e}", request.id, request.source),
        }
    }
}

/// The `message` event of a plain message delivered here.
pub(super) fn message_event(
    source: &str,
    id: u64,
    hops: u8,
    body: &[u8],
    durable: bool,
) -> crate::proto::event::Event {
    crate::proto::event::Event::Message {
        message_id: id,
        source: source.to_string(),
        hops,
        bytes: body.len(),
        body: bytes::Bytes::copy_from_slice(
            &body[..body.len().min(crate::proto::event::EVENT_BODY_BYTES)],
        ),
        durable,
    }
}

/// The [`super::report::DROP_REASONS`] label of a `forward` error.
fn drop_reason(why: &str) -> &'static str {
    match why {
        "no route" => "no_route",
        "hop limit" => "hop_limit",
        "seen (loop)" => "loop",
        "unknown network" => "unknown_network",
        "addressed to us, not a member" => "not_a_member",
        "network admitted for control traffic only" => "control_only",
        _ => "other",
    }
}
