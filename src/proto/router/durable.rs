//! Durable messages (`/send` with a ttl): the outbox, receipts, and the target's exactly-once
//! record. The store writes; this decides (sans-io: writes go out as [`Action::Persist`], and
//! what must wait for one, waits for [`Router::persisted`]).
//!
//! Origin: [`Router::send_durable`] puts the message in the outbox and asks for a durable
//! write; only once it is on disk is anything sent (and only then does `/send` answer). Each
//! attempt seals the body afresh for the target and signs the envelope
//! ([`e2e::seal_signed`]); the id and timestamp stay those of the first, so the target knows a
//! re-delivery. Attempts are retried on a backoff ([`crate::proto::backoff`]) until the
//! target's signed receipt comes back or the ttl runs out, and at once when a path to the
//! target appears.
//!
//! Target: a signed envelope is checked (signature of its source, expiry), opened, and looked
//! up in the seen table by (source, id). New: it is recorded on disk first (a plain message
//! together with its inbox entry; a script as running), then delivered or run, the outcome
//! recorded on disk, and only then the receipt sent. Seen: answered from the recorded outcome,
//! never run again. A script still recorded as running when the node starts was interrupted
//! by a crash: its outcome says so.

use std::collections::{BTreeSet, HashMap, HashSet};

use log::{debug, info, warn};

use super::{describe, Action, Delivery, Now, Router, SendError};
use crate::proto::backoff::Backoff;
use crate::proto::durable::{
    outcome_len, InboxRecord, Op, OutboxRecord, Restored, SeenRecord, SeenState, Status,
};
use crate::proto::e2e::{self, Outcome, Payload};
use crate::wire::frame::{Envelope, MessageKind};

/// First retry of an attempt that got no receipt, in ms (doubling, jittered, up to the max).
pub const RETRY_BASE_MS: u64 = 1_000;
/// Longest wait between attempts, in ms.
pub const RETRY_MAX_MS: u64 = 60_000;
/// How long after its expiry a final outbox record is kept for `GET /messages/{id}`.
pub const FINAL_RETENTION_MS: u64 = 24 * 3600 * 1000;
/// Final outbox records kept at most (the oldest are forgotten first).
pub const MAX_FINAL_RECORDS: usize = 100_000;
/// Durable messages a target remembers at once (each until its expiry); beyond it new ones are
/// not taken (their origins retry).
pub const MAX_SEEN: usize = 200_000;
/// Bytes of outcomes a target remembers at once.
pub const MAX_SEEN_BYTES: usize = 256 * 1024 * 1024;
/// After a path change, queued messages are tried again this soon (coalescing a burst of
/// adverts into one pass).
pub const KICK_DELAY_MS: u64 = 50;

/// Limits of the durable path, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableLimits {
    /// Messages not yet final in the outbox at most.
    pub outbox_max_messages: usize,
    /// Body bytes not yet final in the outbox at most.
    pub outbox_max_bytes: usize,
    /// Longest ttl this node takes (as origin and as target), in ms.
    pub max_ttl_ms: u64,
}

impl Default for DurableLimits {
    fn default() -> Self {
        DurableLimits {
            outbox_max_messages: 10_000,
            outbox_max_bytes: 64 * 1024 * 1024,
            max_ttl_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// A message of the outbox, as `GET /messages/{id}` and `GET /outbox` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageReport {
    /// The message id.
    pub id: u64,
    /// The stored record (its body is not shown).
    pub record: OutboxRecord,
}

/// Why a message could not be cancelled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelError {
    /// No such message was sent from here.
    #[error("no message {0} was sent from this node")]
    NotFound(u64),
    /// It is final already.
    #[error("message {id} is {} already", status.as_str())]
    Final {
        /// The message id.
        id: u64,
        /// Its status.
        status: Status,
    },
}

/// An outbox entry in memory.
#[derive(Debug)]
struct Entry {
    record: OutboxRecord,
    backoff: Backoff,
    /// When it is tried next (monotonic ms), if it is not final.
    due_ms: Option<u64>,
    /// The monotonic deadline of the `/send` still waiting for it, if any.
    waiter_ms: Option<u64>,
    /// On disk (a write not yet confirmed holds back every attempt).
    persisted: bool,
}

/// What waits for a write.
#[derive(Debug)]
enum AfterPersist {
    /// An outbox entry is on disk: try it, answer its `/send` later.
    Accepted(u64),
    /// A durable request from `source` is recorded as running: run its script.
    Run {
        source: String,
        id: u64,
        name: String,
    },
    /// An outcome is on disk: send the receipt.
    Answer { source: String, id: u64 },
}

/// The durable path's state.
#[derive(Debug, Default)]
pub(super) struct Durable {
    pub(super) limits: DurableLimits,
    outbox: HashMap<u64, Entry>,
    /// Entries not final: count and body bytes (what the limits bound).
    open_count: usize,
    open_bytes: usize,
    /// (due ms, id) of every entry not final.
    due: BTreeSet<(u64, u64)>,
    /// (forget at unix ms, id) of final entries.
    finals: BTreeSet<(u64, u64)>,
    /// When queued entries are tried after a path change.
    kick_at_ms: Option<u64>,
    /// What this node took as a target, by (source, id).
    seen: HashMap<(String, u64), SeenRecord>,
    seen_bytes: usize,
    /// (expires unix ms, source, id) of every seen record.
    seen_expiry: BTreeSet<(u64, String, u64)>,
    /// Seen records written but not yet on disk: re-deliveries wait.
    unpersisted: HashSet<(String, u64)>,
    /// Writes awaited, by token.
    awaiting: HashMap<u64, AfterPersist>,
    next_token: u64,
    /// Script jobs of durable requests: job -> (source, id).
    pub(super) jobs: HashMap<u64, (String, u64)>,
    /// When a re-delivered request was last answered (monotonic ms), rate-limiting answers.
    answered_at: HashMap<(String, u64), u64>,
}

impl Durable {
    /// An empty durable path under `limits`.
    pub(super) fn new(limits: DurableLimits) -> Durable {
        Durable {
            limits,
            ..Default::default()
        }
    }

    /// The earliest time something is due.
    pub(super) fn next_deadline(&self) -> Option<u64> {
        let due = self.due.first().map(|(t, _)| *t);
        let waiters = self.outbox.values().filter_map(|e| e.waiter_ms).min();
        [due, waiters, self.kick_at_ms].into_iter().flatten().min()
    }

    /// Outbox messages not final, and their body bytes.
    pub(super) fn open_size(&self) -> (usize, usize) {
        (self.open_count, self.open_bytes)
    }

    /// Durable messages remembered as a target.
    pub(super) fn seen_count(&self) -> usize {
        self.seen.len()
    }

    fn schedule(&mut self, id: u64, at_ms: u64) {
        if let Some(e) = self.outbox.get_mut(&id) {
            if let Some(old) = e.due_ms.take() {
                self.due.remove(&(old, id));
            }
            e.due_ms = Some(at_ms);
            self.due.insert((at_ms, id));
        }
    }

    fn token(&mut self, after: AfterPersist) -> u64 {
        self.next_token += 1;
        self.awaiting.insert(self.next_token, after);
        self.next_token
    }

    fn remember_seen(&mut self, source: &str, id: u64, record: SeenRecord) {
        let key = (source.to_string(), id);
        if let Some(old) = self.seen.remove(&key) {
            self.seen_bytes -= seen_bytes(&old);
            self.seen_expiry
                .remove(&(old.expires_unix_ms, source.to_string(), id));
        }
        self.seen_bytes += seen_bytes(&record);
        self.seen_expiry
            .insert((record.expires_unix_ms, source.to_string(), id));
        self.seen.insert(key, record);
    }
}

fn seen_bytes(r: &SeenRecord) -> usize {
    96 + match &r.state {
        SeenState::Running => 0,
        SeenState::Done(o) => outcome_len(o),
    }
}

impl Router {
    /// Picks up the durable state of the last run: outbox entries not final are tried again
    /// (from now), seen records of scripts still running were interrupted (recorded so).
    pub fn restore(&mut self, now: Now, restored: Restored) {
        for (id, record) in restored.outbox {
            let open = !record.status.is_final();
            let mut record = record;
            if open {
                // Whatever was in flight is tried again; a carrier's custody stays.
                if record.status == Status::InFlight {
                    record.status = Status::Queued;
                }
                self.durable.open_count += 1;
                self.durable.open_bytes += record.body.len();
            } else {
                self.durable
                    .finals
                    .insert((record.expires_unix_ms + FINAL_RETENTION_MS, id));
            }
            self.durable.outbox.insert(
                id,
                Entry {
                    record,
                    backoff: Backoff::new(RETRY_BASE_MS, RETRY_MAX_MS),
                    due_ms: None,
                    waiter_ms: None,
                    persisted: true,
                },
            );
            if open {
                self.durable.schedule(id, now.ms());
            }
        }
        let mut ops = Vec::new();
        for (source, id, mut record) in restored.seen {
            if record.state == SeenState::Running {
                warn!("script for message {id} from {source} was interrupted by a stop of this node; it is not run again");
                record.state = SeenState::Done(Outcome::Script {
                    exit_code: None,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                    timed_out: false,
                    truncated: false,
                    interrupted: true,
                });
                ops.push(Op::PutSeen {
                    source: source.clone(),
                    id,
                    record: record.clone(),
                });
            }
            self.durable.remember_seen(&source, id, record);
        }
        if !ops.is_empty() {
            self.actions.push_back(Action::Persist {
                ops,
                durable: true,
                token: None,
            });
        }
        info!(
            "message store: {} outbox messages not final, {} durable messages remembered as a target",
            self.durable.open_count,
            self.durable.seen.len()
        );
    }

    /// Accepts `body` for `target` with a ttl: into the outbox, on disk before anything else.
    /// The returned id is answered through [`Action::Complete`] (its receipt came within
    /// `timeout_ms`) or [`Action::Queued`] (it did not; delivery goes on until the ttl runs
    /// out). A target not known yet is accepted: it may appear later.
    pub fn send_durable(
        &mut self,
        now: Now,
        target: &str,
        body: &[u8],
        timeout_ms: u64,
        ttl_ms: u64,
    ) -> Result<u64, SendError> {
        if self.home.relay_nodes.contains(target) {
            return Err(SendError::NotMember(target.to_string()));
        }
        let limits = self.durable.limits;
        if self.durable.open_count >= limits.outbox_max_messages
            || self.durable.open_bytes + body.len() > limits.outbox_max_bytes
        {
            return Err(SendError::OutboxFull);
        }
        let ttl_ms = ttl_ms.min(limits.max_ttl_ms).min(u64::from(u32::MAX));
        let id = self.random_u64();
        let mut record = OutboxRecord {
            target: target.to_string(),
            body: body.to_vec(),
            created_unix_ms: now.unix_ms,
            expires_unix_ms: now.unix_ms + ttl_ms,
            status: Status::Queued,
            attempts: 0,
            last_error: None,
            custody: None,
            outcome: None,
            hops: 0,
        };
        if !self.home.keys.contains(target) {
            record.last_error = Some(format!("no node {target:?} is known yet"));
        }
        self.durable.open_count += 1;
        self.durable.open_bytes += body.len();
        let token = self.durable.token(AfterPersist::Accepted(id));
        self.actions.push_back(Action::Persist {
            ops: vec![Op::PutOutbox(id, record.clone())],
            durable: true,
            token: Some(token),
        });
        self.durable.outbox.insert(
            id,
            Entry {
                record,
                backoff: Backoff::new(RETRY_BASE_MS, RETRY_MAX_MS),
                due_ms: None,
                waiter_ms: Some(now.ms() + timeout_ms),
                persisted: false,
            },
        );
        self.msgs.counters.sent += 1;
        Ok(id)
    }

    /// A write the router asked for with `token` is done (or failed).
    pub fn persisted(&mut self, now: Now, token: u64, result: Result<(), String>) {
        let Some(after) = self.durable.awaiting.remove(&token) else {
            return;
        };
        match (after, result) {
            (AfterPersist::Accepted(id), Ok(())) => {
                if let Some(e) = self.durable.outbox.get_mut(&id) {
                    e.persisted = true;
                    self.attempt(now, id);
                }
            }
            (AfterPersist::Accepted(id), Err(e)) => {
                // Never on disk: as if never accepted.
                if let Some(entry) = self.durable.outbox.remove(&id) {
                    self.durable.open_count -= 1;
                    self.durable.open_bytes -= entry.record.body.len();
                }
                self.actions.push_back(Action::Complete {
                    id,
                    result: Err(SendError::Store(e)),
                });
            }
            (AfterPersist::Run { source, id, name }, Ok(())) => {
                self.durable.unpersisted.remove(&(source.clone(), id));
                self.msgs.counters.scripts_run += 1;
                self.msgs.next_job += 1;
                let job = self.msgs.next_job;
                self.durable.jobs.insert(job, (source.clone(), id));
                self.actions.push_back(Action::RunScript {
                    job,
                    name,
                    source,
                    message_id: id,
                });
            }
            (AfterPersist::Answer { source, id }, Ok(())) => {
                self.durable.unpersisted.remove(&(source.clone(), id));
                self.send_receipt(now, &source, id);
            }
            (
                AfterPersist::Run { source, id, .. } | AfterPersist::Answer { source, id },
                Err(e),
            ) => {
                // Not taken: forget it, so the origin's next attempt is taken afresh.
                warn!("cannot record message {id} from {source}: {e}; it is not taken now");
                let key = (source.clone(), id);
                self.durable.unpersisted.remove(&key);
                if let Some(old) = self.durable.seen.remove(&key) {
                    self.durable.seen_bytes -= seen_bytes(&old);
                    self.durable
                        .seen_expiry
                        .remove(&(old.expires_unix_ms, source, id));
                }
            }
        }
    }

    /// Tries an outbox entry now: seal, sign, route; reschedules it either way.
    fn attempt(&mut self, now: Now, id: u64) {
        let Some(e) = self.durable.outbox.get(&id) else {
            return;
        };
        if e.record.status.is_final() || !e.persisted {
            return;
        }
        let target = e.record.target.clone();
        let result = self.durable_envelope(now, id).and_then(|envelope| {
            let me = self.settings.node_id.clone();
            if target == me {
                self.on_data(now, None, envelope, false);
                Ok(me)
            } else {
                self.route(now, envelope)
            }
        });
        let random = self.random_u64();
        let Some(e) = self.durable.outbox.get_mut(&id) else {
            return;
        };
        match result {
            Ok(next) => {
                e.record.attempts += 1;
                if e.record.status == Status::Queued {
                    e.record.status = Status::InFlight;
                }
                e.record.last_error = None;
                debug!("durable message {id} for {target} sent via {next}");
            }
            Err(err) => {
                if e.record.status == Status::InFlight {
                    e.record.status = Status::Queued;
                }
                e.record.last_error = Some(err.to_string());
                debug!("durable message {id} for {target} waits: {err}");
            }
        }
        let delay = e.backoff.next_delay_ms(random);
        if e.record.status.is_final() {
            return;
        }
        self.durable.schedule(id, now.ms() + delay);
    }

    /// The signed, sealed request of an outbox entry.
    fn durable_envelope(&mut self, _now: Now, id: u64) -> Result<Envelope, SendError> {
        let e = self.durable.outbox.get(&id).ok_or(SendError::Busy)?;
        let (target, created, expires) = (
            e.record.target.clone(),
            e.record.created_unix_ms,
            e.record.expires_unix_ms,
        );
        let plaintext = Payload::encode_message(&e.record.body);
        let key = self.pair_key(&target)?;
        let mut envelope = Envelope {
            id,
            source: self.settings.node_id.clone(),
            target: target.clone(),
            kind: MessageKind::Request,
            timestamp_ms: created,
            ttl_ms: (expires - created).min(u64::from(u32::MAX)) as u32,
            hops: 0,
            clear: false,
            sealed: Vec::new(),
            signature: None,
        };
        e2e::seal_signed(
            &key,
            &self.settings.keys.identity,
            &mut envelope,
            &plaintext,
        )
        .map_err(|e| SendError::Crypto(target, e.to_string()))?;
        Ok(envelope)
    }

    /// Runs what is due in the durable path: attempts, expiries, answers to waiting `/send`s,
    /// forgetting what is past its time.
    pub(super) fn durable_timeout(&mut self, now: Now) {
        let ms = now.ms();
        if self.durable.kick_at_ms.is_some_and(|t| t <= ms) {
            self.durable.kick_at_ms = None;
            let queued: Vec<u64> = self
                .durable
                .outbox
                .iter()
                .filter(|(_, e)| e.persisted && e.record.status == Status::Queued)
                .map(|(id, _)| *id)
                .collect();
            for id in queued {
                let target = self.durable.outbox[&id].record.target.clone();
                if self.home.keys.contains(&target) && self.next_hop(None, &target).is_some() {
                    self.durable.schedule(id, ms);
                }
            }
        }
        // Waiting `/send`s whose timeout passed: queued (202).
        let late: Vec<u64> = self
            .durable
            .outbox
            .iter()
            .filter(|(_, e)| e.waiter_ms.is_some_and(|t| t <= ms) && e.persisted)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            let e = self.durable.outbox.get_mut(&id).expect("listed above");
            e.waiter_ms = None;
            self.actions.push_back(Action::Queued {
                id,
                status: e.record.status,
                expires_unix_ms: e.record.expires_unix_ms,
            });
        }
        // Expiries, then attempts due.
        let expired: Vec<u64> = self
            .durable
            .outbox
            .iter()
            .filter(|(_, e)| !e.record.status.is_final() && e.record.expires_unix_ms <= now.unix_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            info!("durable message {id} expired undelivered");
            self.finish(now, id, Status::Expired, None, 0);
        }
        while let Some(&(t, id)) = self.durable.due.first() {
            if t > ms {
                break;
            }
            self.durable.due.remove(&(t, id));
            if let Some(e) = self.durable.outbox.get_mut(&id) {
                e.due_ms = None;
            }
            self.attempt(now, id);
        }
        self.forget_old(now);
    }

    /// Something changed in the paths of our network: queued messages are tried soon.
    pub(super) fn durable_kick(&mut self, now: Now) {
        if self.durable.open_count > 0 && self.durable.kick_at_ms.is_none() {
            self.durable.kick_at_ms = Some(now.ms() + KICK_DELAY_MS);
        }
    }

    /// Makes an outbox entry final: on disk, out of the schedule, its `/send` answered.
    fn finish(&mut self, now: Now, id: u64, status: Status, outcome: Option<Outcome>, hops: u8) {
        let Some(e) = self.durable.outbox.get_mut(&id) else {
            return;
        };
        if e.record.status.is_final() {
            return;
        }
        self.durable.open_count -= 1;
        self.durable.open_bytes -= e.record.body.len();
        e.record.status = status;
        e.record.body = Vec::new();
        e.record.outcome = outcome.clone();
        e.record.hops = hops;
        if let Some(t) = e.due_ms.take() {
            self.durable.due.remove(&(t, id));
        }
        let waiting = e.waiter_ms.take().is_some();
        let record = e.record.clone();
        self.durable
            .finals
            .insert((record.expires_unix_ms + FINAL_RETENTION_MS, id));
        self.actions.push_back(Action::Persist {
            ops: vec![Op::PutOutbox(id, record.clone())],
            durable: true,
            token: None,
        });
        if waiting {
            let result = match (status, outcome) {
                (Status::Delivered, Some(outcome)) => Ok(Delivery { id, hops, outcome }),
                _ => Err(SendError::Timeout(
                    record.target.clone(),
                    record.expires_unix_ms.saturating_sub(now.unix_ms),
                )),
            };
            self.actions.push_back(Action::Complete { id, result });
        }
    }

    /// Forgets final outbox records past their retention and seen records past their expiry.
    fn forget_old(&mut self, now: Now) {
        let mut ops = Vec::new();
        while let Some(&(t, id)) = self.durable.finals.first() {
            if t > now.unix_ms && self.durable.finals.len() <= MAX_FINAL_RECORDS {
                break;
            }
            self.durable.finals.remove(&(t, id));
            self.durable.outbox.remove(&id);
            ops.push(Op::DeleteOutbox(id));
        }
        let horizon = now.unix_ms.saturating_sub(e2e::MAX_CLOCK_SKEW_MS);
        while let Some((t, source, id)) = self.durable.seen_expiry.first().cloned() {
            if t > horizon {
                break;
            }
            self.durable.seen_expiry.remove(&(t, source.clone(), id));
            let key = (source, id);
            if let Some(old) = self.durable.seen.remove(&key) {
                self.durable.seen_bytes -= seen_bytes(&old);
            }
            self.durable.answered_at.remove(&key);
            let (source, id) = key;
            ops.push(Op::DeleteSeen { source, id });
        }
        if !ops.is_empty() {
            self.actions.push_back(Action::Persist {
                ops,
                durable: false,
                token: None,
            });
        }
    }

    /// What `GET /messages/{id}` says of a message this node sent.
    pub fn message_status(&self, id: u64) -> Option<MessageReport> {
        self.durable.outbox.get(&id).map(|e| report(id, e))
    }

    /// `GET /outbox`: messages not final, oldest first, after `after` (an id of the previous
    /// page), at most `limit`.
    pub fn outbox_page(&self, after: Option<u64>, limit: usize) -> Vec<MessageReport> {
        let mut open: Vec<(u64, u64)> = self
            .durable
            .outbox
            .iter()
            .filter(|(_, e)| !e.record.status.is_final())
            .map(|(id, e)| (e.record.created_unix_ms, *id))
            .collect();
        open.sort_unstable();
        let start = match after {
            Some(a) => open
                .iter()
                .position(|(_, id)| *id == a)
                .map_or(0, |p| p + 1),
            None => 0,
        };
        open[start.min(open.len())..]
            .iter()
            .take(limit)
            .map(|(_, id)| report(*id, &self.durable.outbox[id]))
            .collect()
    }

    /// `DELETE /messages/{id}`: cancels a message not delivered yet.
    pub fn cancel(&mut self, now: Now, id: u64) -> Result<MessageReport, CancelError> {
        let status = self
            .durable
            .outbox
            .get(&id)
            .ok_or(CancelError::NotFound(id))?
            .record
            .status;
        if status.is_final() {
            return Err(CancelError::Final { id, status });
        }
        self.finish(now, id, Status::Cancelled, None, 0);
        Ok(report(id, &self.durable.outbox[&id]))
    }

    /// A signed envelope for us: a durable request, or the receipt of one of ours.
    pub(super) fn on_durable_for_me(&mut self, now: Now, envelope: Envelope) {
        let source = envelope.source.clone();
        let Some(identity) = self.home.keys.get(&source).copied() else {
            debug!("dropping {}: unknown source", describe(&envelope));
            self.msgs.counters.dropped += 1;
            return;
        };
        if !e2e::verify_signature(&envelope, &identity) {
            warn!(
                "dropping {}: its signature is not its source's",
                describe(&envelope)
            );
            self.msgs.counters.dropped += 1;
            self.msgs.counters.forged += 1;
            return;
        }
        let expires = envelope.timestamp_ms + u64::from(envelope.ttl_ms);
        if expires < now.unix_ms || envelope.timestamp_ms > now.unix_ms + e2e::MAX_CLOCK_SKEW_MS {
            debug!(
                "dropping {}: expired or dated in the future",
                describe(&envelope)
            );
            self.msgs.counters.dropped += 1;
            return;
        }
        let key = match self.pair_key(&source) {
            Ok(k) => k,
            Err(e) => {
                debug!("dropping {}: {e}", describe(&envelope));
                self.msgs.counters.dropped += 1;
                return;
            }
        };
        let payload = e2e::open(&key, &envelope).and_then(|p| Payload::decode(&p));
        match (envelope.kind, payload) {
            (MessageKind::Request, Ok(Payload::Message { body })) => {
                self.on_durable_request(now, &envelope, &body, expires)
            }
            (
                MessageKind::Response,
                Ok(Payload::Reply {
                    in_reply_to,
                    outcome,
                    request_hops,
                }),
            ) => self.on_receipt(now, &source, in_reply_to, outcome, request_hops),
            (_, Err(e)) => {
                warn!("dropping {}: {e}", describe(&envelope));
                self.msgs.counters.dropped += 1;
            }
            _ => {
                warn!(
                    "dropping {}: kind and payload disagree",
                    describe(&envelope)
                );
                self.msgs.counters.dropped += 1;
            }
        }
    }

    /// A durable request for us, authentic and in date.
    fn on_durable_request(&mut self, now: Now, envelope: &Envelope, body: &[u8], expires: u64) {
        let (source, id) = (envelope.source.clone(), envelope.id);
        let key = (source.clone(), id);
        if self.durable.unpersisted.contains(&key) {
            return; // being recorded: its receipt follows
        }
        if let Some(seen) = self.durable.seen.get(&key) {
            match seen.state {
                SeenState::Running => {}
                SeenState::Done(_) => {
                    let ms = now.ms();
                    let last = self.durable.answered_at.get(&key).copied();
                    if last.is_none_or(|t| ms >= t + super::REANSWER_INTERVAL_MS) {
                        debug!("answering re-delivered message {id} from {source} from its record");
                        self.durable.answered_at.insert(key, ms);
                        self.send_receipt(now, &source, id);
                    }
                }
            }
            return;
        }
        if self.durable.seen.len() >= MAX_SEEN || self.durable.seen_bytes >= MAX_SEEN_BYTES {
            warn!("not taking message {id} from {source}: {MAX_SEEN} durable messages remembered already");
            self.msgs.counters.dropped += 1;
            return;
        }
        let name = self.script_name(body).map(String::from);
        let hops = envelope.hops;
        match name {
            None => {
                info!(
                    "durable message {id} from {source} ({} bytes, {hops} hops)",
                    body.len()
                );
                self.msgs.counters.delivered += 1;
                let record = SeenRecord {
                    expires_unix_ms: expires,
                    request_hops: hops,
                    state: SeenState::Done(Outcome::Delivered),
                };
                self.durable.remember_seen(&source, id, record.clone());
                self.durable.unpersisted.insert(key);
                let token = self.durable.token(AfterPersist::Answer {
                    source: source.clone(),
                    id,
                });
                self.actions.push_back(Action::Persist {
                    ops: vec![
                        Op::PutSeen {
                            source: source.clone(),
                            id,
                            record,
                        },
                        Op::Inbox(InboxRecord::new(id, &source, now.unix_ms, hops, body)),
                    ],
                    durable: true,
                    token: Some(token),
                });
            }
            Some(name) => {
                let record = SeenRecord {
                    expires_unix_ms: expires,
                    request_hops: hops,
                    state: SeenState::Running,
                };
                self.durable.remember_seen(&source, id, record.clone());
                self.durable.unpersisted.insert(key);
                let token = self.durable.token(AfterPersist::Run {
                    source: source.clone(),
                    id,
                    name,
                });
                self.actions.push_back(Action::Persist {
                    ops: vec![Op::PutSeen { source, id, record }],
                    durable: true,
                    token: Some(token),
                });
            }
        }
    }

    /// A durable request's script ended: record the outcome, then answer.
    pub(super) fn durable_script_done(&mut self, source: String, id: u64, outcome: Outcome) {
        let key = (source.clone(), id);
        let Some(record) = self.durable.seen.get(&key).cloned() else {
            return;
        };
        let record = SeenRecord {
            state: SeenState::Done(outcome),
            ..record
        };
        self.durable.remember_seen(&source, id, record.clone());
        self.durable.unpersisted.insert(key);
        let token = self.durable.token(AfterPersist::Answer {
            source: source.clone(),
            id,
        });
        self.actions.push_back(Action::Persist {
            ops: vec![Op::PutSeen { source, id, record }],
            durable: true,
            token: Some(token),
        });
    }

    /// A durable request whose script could not start (every slot and the queue full): its
    /// record goes, so a later attempt of its origin is taken afresh (flow control by retry).
    pub(super) fn durable_not_taken(&mut self, source: &str, id: u64) {
        debug!("durable message {id} from {source}: scripts busy, not taken now");
        let key = (source.to_string(), id);
        if let Some(old) = self.durable.seen.remove(&key) {
            self.durable.seen_bytes -= seen_bytes(&old);
            self.durable
                .seen_expiry
                .remove(&(old.expires_unix_ms, source.to_string(), id));
        }
        self.msgs.counters.scripts_run = self.msgs.counters.scripts_run.saturating_sub(1);
        self.actions.push_back(Action::Persist {
            ops: vec![Op::DeleteSeen {
                source: source.to_string(),
                id,
            }],
            durable: false,
            token: None,
        });
    }

    /// Sends the signed receipt of a recorded durable request to its source.
    fn send_receipt(&mut self, now: Now, source: &str, id: u64) {
        let Some(record) = self.durable.seen.get(&(source.to_string(), id)) else {
            return;
        };
        let SeenState::Done(outcome) = &record.state else {
            return;
        };
        let payload = Payload::Reply {
            in_reply_to: id,
            outcome: outcome.clone(),
            request_hops: record.request_hops,
        };
        let ttl = record
            .expires_unix_ms
            .saturating_sub(now.unix_ms)
            .max(1_000);
        let key = match self.pair_key(source) {
            Ok(k) => k,
            Err(e) => {
                debug!("cannot answer {id} at {source}: {e}");
                return;
            }
        };
        let mut envelope = Envelope {
            id: self.random_u64(),
            source: self.settings.node_id.clone(),
            target: source.to_string(),
            kind: MessageKind::Response,
            timestamp_ms: now.unix_ms,
            ttl_ms: ttl.min(u64::from(u32::MAX)) as u32,
            hops: 0,
            clear: false,
            sealed: Vec::new(),
            signature: None,
        };
        if let Err(e) = e2e::seal_signed(
            &key,
            &self.settings.keys.identity,
            &mut envelope,
            &payload.encode(),
        ) {
            warn!("cannot seal the receipt of {id} for {source}: {e}");
            return;
        }
        if source == self.settings.node_id {
            self.on_data(now, None, envelope, false);
        } else if let Err(e) = self.route(now, envelope) {
            // The origin re-sends until it hears; the record answers it then.
            debug!("cannot send the receipt of {id} to {source} now: {e}");
        }
    }

    /// The receipt of one of our durable messages.
    fn on_receipt(&mut self, now: Now, from: &str, id: u64, outcome: Outcome, hops: u8) {
        let ours = self
            .durable
            .outbox
            .get(&id)
            .is_some_and(|e| e.record.target == from);
        if !ours {
            debug!("receipt for {id} from {from}: not a message of ours to it");
            return;
        }
        self.msgs.counters.replies += 1;
        info!("durable message {id} delivered to {from}");
        self.finish(now, id, Status::Delivered, Some(outcome), hops);
    }
}

fn report(id: u64, e: &Entry) -> MessageReport {
    let mut record = e.record.clone();
    record.body = Vec::new();
    MessageReport { id, record }
}
