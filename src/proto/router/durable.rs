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

use bytes::Bytes;
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

/// What a carrier keeps for others (`None` in the settings: this node carries nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CarrierLimits {
    /// Bytes of sealed envelopes held at most.
    pub quota_bytes: usize,
    /// Bytes held for one origin at most.
    pub per_origin_quota_bytes: usize,
    /// Longest remaining lifetime taken, in ms.
    pub max_ttl_ms: u64,
}

/// How long a custody hand-over waits for its answer, in ms.
pub const CUSTODY_TIMEOUT_MS: u64 = 30_000;
/// How long a receipt handed to its origin waits for the origin's answer before it goes to a
/// carrier, in ms (a receipt is small; the origin answers once it is on its disk).
pub const RECEIPT_TIMEOUT_MS: u64 = 5_000;
/// How often a carrier tries to hand on what it holds (besides at once on a path change).
pub const CARRY_TICK_MS: u64 = 5_000;

/// What a custody hand-over of ours was for.
#[derive(Debug, Clone)]
enum Offer {
    /// An outbox entry of ours, to a carrier.
    Outbox { id: u64, carrier: String },
    /// Something we carry, handed on toward its target.
    Carried { source: String, id: u64 },
    /// A receipt of ours, to its origin: if the origin does not take it, to a carrier.
    ReceiptToOrigin { receipt: Box<Envelope> },
    /// A receipt of ours for an origin we cannot reach, to a carrier.
    ReceiptToCarrier,
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

impl Entry {
    /// An entry for `record`; `waiter_ms`: the deadline of the `/send` waiting for it.
    fn new(record: OutboxRecord, waiter_ms: Option<u64>, persisted: bool) -> Entry {
        Entry {
            record,
            backoff: Backoff::new(RETRY_BASE_MS, RETRY_MAX_MS),
            due_ms: None,
            waiter_ms,
            persisted,
        }
    }
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
    /// A durable request's first record (plain message, or a refusal) is on disk: answer.
    Answer { source: String, id: u64 },
    /// A script's outcome is on disk: send the receipt.
    Outcome { source: String, id: u64 },
    /// Everything asked for before is on disk: answer the hand-over `outer` (a receipt taken).
    Ack { outer: Box<Envelope> },
    /// An envelope we carry for others (`source`, `id`) is on disk: accept its custody
    /// (answer the hand-over request `outer`, kept without its body).
    Carried {
        outer: Box<Envelope>,
        source: String,
        id: u64,
    },
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
    /// Custody hand-overs to answer once the durable message they carry is on disk, by its
    /// (source, id): the hand-over requests.
    acks: HashMap<(String, u64), Vec<Envelope>>,
    /// Our custody hand-overs awaiting their answer, by the id of the hand-over request.
    offers: HashMap<u64, Offer>,
    /// Outbox entries and carried envelopes with a hand-over in flight.
    offering: HashSet<(String, u64)>,
    /// The carriers of our network (from their adverts).
    pub(super) carriers: BTreeSet<String>,
    /// As a carrier: what we hold for others, by (source, id).
    carried: HashMap<(String, u64), crate::proto::durable::CarriedRecord>,
    /// Carried envelopes not yet on disk (neither acknowledged nor handed on before).
    carried_unpersisted: HashSet<(String, u64)>,
    /// Bytes held, in total and by origin.
    carried_bytes: usize,
    carried_by_origin: HashMap<String, usize>,
    /// When a carrier tries to hand on what it holds next.
    carry_at_ms: Option<u64>,
    /// When the outbox is next scanned for expiries (while it holds anything not final): a
    /// scan is O(outbox), so not on every event.
    scan_at_ms: Option<u64>,
    /// Receipts their origin did not take, to hand to a carrier at the next timer.
    unreceived: Vec<Envelope>,
    /// (deadline ms, id) of every `/send` waiting for its message's receipt.
    waiters: BTreeSet<(u64, u64)>,
    /// By target: outbox entries sent and not answered yet (the window), and entries due but
    /// waiting for room in it.
    inflight: HashMap<String, HashSet<u64>>,
    ready: HashMap<String, std::collections::VecDeque<u64>>,
    /// The ids in `ready` (an entry scheduled again while it waits is not queued twice).
    in_ready: HashSet<u64>,
}

/// Durable messages sent to one target and not answered yet, at most: a queue of thousands
/// drains at the pace of receipts instead of overflowing the link's queue (whose refusals
/// would cost each message a retry delay).
pub const MAX_IN_FLIGHT_PER_TARGET: usize = 256;

/// How often the outbox is scanned for expiries, in ms: a message is marked expired at most
/// this late.
pub const SCAN_INTERVAL_MS: u64 = 1_000;

/// What became of a durable envelope offered to this node for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Taken {
    /// On disk already (a re-delivery, or a receipt that was taken).
    Recorded,
    /// Being recorded: the answer follows the write.
    Pending,
    /// Refused, with the outcome that says why.
    Refused(Outcome),
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
        let waiter = self.waiters.first().map(|(t, _)| *t);
        let unreceived = (!self.unreceived.is_empty()).then_some(0);
        [
            due,
            waiter,
            unreceived,
            self.scan_at_ms,
            self.kick_at_ms,
            self.carry_at_ms,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Outbox messages not final, and their body bytes.
    pub(super) fn open_size(&self) -> (usize, usize) {
        (self.open_count, self.open_bytes)
    }

    /// Durable messages remembered as a target.
    pub(super) fn seen_count(&self) -> usize {
        self.seen.len()
    }

    /// As a carrier: envelopes held for others, their bytes, and bytes by origin.
    pub(super) fn carried_size(&self) -> (usize, usize, std::collections::BTreeMap<String, usize>) {
        (
            self.carried.len(),
            self.carried_bytes,
            self.carried_by_origin
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        )
    }

    fn hold(&mut self, source: &str, id: u64, record: crate::proto::durable::CarriedRecord) {
        let bytes = record.envelope.sealed.len();
        if let Some(old) = self.carried.insert((source.to_string(), id), record) {
            self.release_bytes(source, old.envelope.sealed.len());
        }
        self.carried_bytes += bytes;
        *self
            .carried_by_origin
            .entry(source.to_string())
            .or_default() += bytes;
    }

    fn release(&mut self, source: &str, id: u64) -> bool {
        match self.carried.remove(&(source.to_string(), id)) {
            Some(old) => {
                self.release_bytes(source, old.envelope.sealed.len());
                true
            }
            None => false,
        }
    }

    fn release_bytes(&mut self, source: &str, bytes: usize) {
        self.carried_bytes -= bytes;
        if let Some(b) = self.carried_by_origin.get_mut(source) {
            *b -= bytes;
            if *b == 0 {
                self.carried_by_origin.remove(source);
            }
        }
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
            self.durable
                .outbox
                .insert(id, Entry::new(record, None, true));
            if open {
                self.durable.schedule(id, now.ms());
            }
        }
        for (source, id, record) in restored.carried {
            self.durable.hold(&source, id, record);
        }
        if !self.durable.carried.is_empty() {
            self.durable.carry_at_ms = Some(now.ms() + CARRY_TICK_MS);
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
        self.send_durable_record(now, target, body, timeout_ms, ttl_ms, None)
    }

    /// [`Router::send_durable`] of a plain message (`publication` `None`) or of one
    /// subscriber's copy of a publish.
    pub(super) fn send_durable_record(
        &mut self,
        now: Now,
        target: &str,
        body: &[u8],
        timeout_ms: u64,
        ttl_ms: u64,
        publication: Option<crate::proto::publication::Publication>,
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
            publication,
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
        let deadline = now.ms() + timeout_ms;
        self.durable
            .outbox
            .insert(id, Entry::new(record, Some(deadline), false));
        self.durable.waiters.insert((deadline, id));
        self.msgs.counters.sent += 1;
        if self.durable.scan_at_ms.is_none() {
            self.durable.scan_at_ms = Some(now.ms() + SCAN_INTERVAL_MS);
        }
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
                    let event = delivery_event(id, &e.record);
                    self.actions.push_back(Action::Event(event));
                    self.try_attempt(now, id);
                    // A write slower than the `/send`'s timeout: answer it now.
                    if let Some(e) = self.durable.outbox.get_mut(&id) {
                        if e.waiter_ms.is_some_and(|t| t <= now.ms()) {
                            e.waiter_ms = None;
                            self.actions.push_back(Action::Queued {
                                id,
                                status: e.record.status,
                                expires_unix_ms: e.record.expires_unix_ms,
                            });
                        }
                    }
                }
            }
            (AfterPersist::Accepted(id), Err(e)) => {
                // Never on disk: as if never accepted.
                if let Some(entry) = self.durable.outbox.remove(&id) {
                    if let Some(t) = entry.waiter_ms {
                        self.durable.waiters.remove(&(t, id));
                    }
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
                self.send_acks(now, &source, id, Outcome::Delivered);
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
            (AfterPersist::Outcome { source, id }, result) => {
                // The script ran: its record stays either way (on disk it says running, so a
                // crash before the outcome is written reads as interrupted, never as a re-run).
                if let Err(e) = result {
                    warn!("cannot record the outcome of {id} from {source}: {e}");
                }
                self.durable.unpersisted.remove(&(source.clone(), id));
                self.send_receipt(now, &source, id);
            }
            (AfterPersist::Answer { source, id }, Ok(())) => {
                self.durable.unpersisted.remove(&(source.clone(), id));
                self.send_acks(now, &source, id, Outcome::Delivered);
                self.send_receipt(now, &source, id);
            }
            (AfterPersist::Ack { outer }, result) => {
                let outcome = match result {
                    Ok(()) => Outcome::Delivered,
                    Err(e) => store_failed(e),
                };
                self.reply(now, &outer, outcome);
            }
            (AfterPersist::Carried { outer, source, id }, result) => {
                self.durable
                    .carried_unpersisted
                    .remove(&(source.clone(), id));
                let outcome = match result {
                    Ok(()) => {
                        self.carry_soon(now);
                        Outcome::Delivered
                    }
                    Err(e) => {
                        self.durable.release(&source, id);
                        store_failed(e)
                    }
                };
                self.reply(now, &outer, outcome);
            }
            (
                AfterPersist::Run { source, id, .. } | AfterPersist::Answer { source, id },
                Err(e),
            ) => {
                // Not taken: forget it, so the origin's next attempt is taken afresh.
                warn!("cannot record message {id} from {source}: {e}; it is not taken now");
                let key = (source.clone(), id);
                self.durable.unpersisted.remove(&key);
                self.send_acks(now, &source, id, store_failed(e.clone()));
                if let Some(old) = self.durable.seen.remove(&key) {
                    self.durable.seen_bytes -= seen_bytes(&old);
                    self.durable
                        .seen_expiry
                        .remove(&(old.expires_unix_ms, source, id));
                }
            }
        }
    }

    /// Tries an outbox entry now if its target's window has room; queues it for room otherwise.
    fn try_attempt(&mut self, now: Now, id: u64) {
        let Some(e) = self.durable.outbox.get(&id) else {
            return;
        };
        let target = e.record.target.clone();
        let window = self.durable.inflight.get(&target);
        let inside = window.is_some_and(|w| w.contains(&id));
        if !inside && window.is_some_and(|w| w.len() >= MAX_IN_FLIGHT_PER_TARGET) {
            if self.durable.in_ready.insert(id) {
                self.durable.ready.entry(target).or_default().push_back(id);
            }
            return;
        }
        self.attempt(now, id);
    }

    /// Sends what waits for room in `target`'s window, as far as there is room.
    fn fill_window(&mut self, now: Now, target: &str) {
        loop {
            let used = self.durable.inflight.get(target).map_or(0, HashSet::len);
            if used >= MAX_IN_FLIGHT_PER_TARGET {
                return;
            }
            let Some(id) = self
                .durable
                .ready
                .get_mut(target)
                .and_then(|q| q.pop_front())
            else {
                self.durable.ready.remove(target);
                return;
            };
            self.durable.in_ready.remove(&id);
            if self
                .durable
                .outbox
                .get(&id)
                .is_some_and(|e| !e.record.status.is_final())
            {
                self.attempt(now, id);
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
                // (In custody stays so: the carrier's copy is still on its way too.)
                e.record.last_error = None;
                debug!("durable message {id} for {target} sent via {next}");
                self.durable
                    .inflight
                    .entry(target.clone())
                    .or_default()
                    .insert(id);
            }
            Err(err) => {
                if e.record.status == Status::InFlight {
                    e.record.status = Status::Queued;
                }
                if let Some(w) = self.durable.inflight.get_mut(&target) {
                    w.remove(&id);
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
        self.hand_to_carrier(now, id);
    }

    /// The signed, sealed request of an outbox entry.
    fn durable_envelope(&mut self, _now: Now, id: u64) -> Result<Envelope, SendError> {
        let e = self.durable.outbox.get(&id).ok_or(SendError::Busy)?;
        let (target, created, expires) = (
            e.record.target.clone(),
            e.record.created_unix_ms,
            e.record.expires_unix_ms,
        );
        let plaintext = match &e.record.publication {
            None => Payload::encode_message(&e.record.body),
            Some(p) => Payload::Publish {
                publication: p.clone(),
                body: e.record.body.clone(),
            }
            .encode(),
        };
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
            sealed: Bytes::new(),
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
        for receipt in std::mem::take(&mut self.durable.unreceived) {
            self.receipt_to_carrier(now, receipt);
        }
        if self.durable.carry_at_ms.is_some_and(|t| t <= ms) {
            self.carry_on(now);
        }
        if self.durable.kick_at_ms.is_some_and(|t| t <= ms) {
            self.durable.kick_at_ms = None;
            self.carry_soon(now);
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
        self.answer_late_waiters(now);
        if self.durable.scan_at_ms.is_some_and(|t| t <= ms) {
            self.durable.scan_at_ms = None;
            self.scan_outbox(now);
        }
        while let Some(&(t, id)) = self.durable.due.first() {
            if t > ms {
                break;
            }
            self.durable.due.remove(&(t, id));
            if let Some(e) = self.durable.outbox.get_mut(&id) {
                e.due_ms = None;
            }
            self.try_attempt(now, id);
        }
        if self.durable.open_count > 0 && self.durable.scan_at_ms.is_none() {
            self.durable.scan_at_ms = Some(ms + SCAN_INTERVAL_MS);
        }
    }

    /// Answers `/send`s whose timeout passed as queued, expires what is past its ttl, forgets
    /// what is past its retention.
    fn scan_outbox(&mut self, now: Now) {
        // Expiries.
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
        self.forget_old(now);
    }

    /// Answers the `/send`s whose timeout passed (and whose message is on disk) as queued (202).
    fn answer_late_waiters(&mut self, now: Now) {
        let ms = now.ms();
        while let Some(&(t, id)) = self.durable.waiters.first() {
            if t > ms {
                break;
            }
            self.durable.waiters.remove(&(t, id));
            let Some(e) = self.durable.outbox.get_mut(&id) else {
                continue;
            };
            if !e.persisted {
                continue; // answered by `persisted` once on disk
            }
            e.waiter_ms = None;
            self.actions.push_back(Action::Queued {
                id,
                status: e.record.status,
                expires_unix_ms: e.record.expires_unix_ms,
            });
        }
    }

    /// Something changed in the paths of our network: queued messages are tried soon.
    pub(super) fn durable_kick(&mut self, now: Now) {
        if (self.durable.open_count > 0 || !self.durable.carried.is_empty())
            && self.durable.kick_at_ms.is_none()
        {
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
        if status == Status::Delivered {
            e.record.last_error = None;
        }
        e.record.body = Vec::new();
        e.record.outcome = outcome.clone();
        e.record.hops = hops;
        if let Some(t) = e.due_ms.take() {
            self.durable.due.remove(&(t, id));
        }
        let waiter = e.waiter_ms.take();
        if let Some(t) = waiter {
            self.durable.waiters.remove(&(t, id));
        }
        let target = e.record.target.clone();
        let waiting = waiter.is_some();
        let record = e.record.clone();
        self.actions
            .push_back(Action::Event(delivery_event(id, &record)));
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
                (Status::Delivered | Status::Failed, Some(outcome)) => {
                    Ok(Delivery { id, hops, outcome })
                }
                _ => Err(SendError::Timeout(
                    record.target.clone(),
                    record.expires_unix_ms.saturating_sub(now.unix_ms),
                )),
            };
            self.actions.push_back(Action::Complete { id, result });
        }
        if let Some(w) = self.durable.inflight.get_mut(&target) {
            w.remove(&id);
            if w.is_empty() {
                self.durable.inflight.remove(&target);
            }
        }
        self.fill_window(now, &target);
    }

    /// Forgets final outbox records past their retention and seen records past their expiry.
    pub(super) fn forget_old(&mut self, now: Now) {
        let mut ops = Vec::new();
        while let Some(&(t, id)) = self.durable.finals.first() {
            if t > now.unix_ms && self.durable.finals.len() <= MAX_FINAL_RECORDS {
                break;
            }
            self.durable.finals.remove(&(t, id));
            self.durable.outbox.remove(&id);
            ops.push(Op::DeleteOutbox(id));
        }
        let expired: Vec<(String, u64)> = self
            .durable
            .carried
            .iter()
            .filter(|(_, r)| r.expires_unix_ms() <= now.unix_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for (source, id) in expired {
            info!("carried {id} of {source} expired undelivered");
            self.durable.release(&source, id);
            ops.push(Op::DeleteCarried { source, id });
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

    /// A signed envelope for us: a durable request, or the receipt of one of ours. `ack`: the
    /// custody hand-over it came in (answered once it is on disk, or with why not).
    pub(super) fn on_durable_for_me(
        &mut self,
        now: Now,
        envelope: Envelope,
        ack: Option<Envelope>,
    ) {
        let taken = self.take_durable(now, &envelope);
        let Some(outer) = ack else {
            return;
        };
        match taken {
            Taken::Recorded if envelope.kind == MessageKind::Response => {
                // A receipt taken: its message's final state is being written; answer once
                // that write (and all before it) is on disk.
                let token = self.durable.token(AfterPersist::Ack {
                    outer: Box::new(stripped(&outer)),
                });
                self.actions.push_back(Action::Persist {
                    ops: Vec::new(),
                    durable: true,
                    token: Some(token),
                });
            }
            Taken::Recorded => self.reply(now, &outer, Outcome::Delivered),
            Taken::Refused(why) => self.reply(now, &outer, why),
            Taken::Pending => {
                let key = (envelope.source.clone(), envelope.id);
                let acks = self.durable.acks.entry(key).or_default();
                if acks.len() < 4 {
                    acks.push(stripped(&outer));
                }
            }
        }
    }

    /// [`Router::on_durable_for_me`] without the hand-over: what became of the envelope.
    fn take_durable(&mut self, now: Now, envelope: &Envelope) -> Taken {
        let refused = |code: &str, message: String| {
            Taken::Refused(Outcome::Failed {
                code: code.into(),
                message,
            })
        };
        let source = envelope.source.clone();
        let Some(identity) = self.home.keys.get(&source).copied() else {
            debug!("dropping {}: unknown source", describe(envelope));
            self.msgs.counters.drop("unknown_source");
            return refused("unknown_source", format!("{source} is not known here"));
        };
        if !e2e::verify_signature(envelope, &identity) {
            warn!(
                "dropping {}: its signature is not its source's",
                describe(envelope)
            );
            self.msgs.counters.drop("forged");
            self.msgs.counters.forged += 1;
            return refused("forged", "the signature is not its source's".into());
        }
        let expires = envelope.timestamp_ms + u64::from(envelope.ttl_ms);
        if expires < now.unix_ms || envelope.timestamp_ms > now.unix_ms + e2e::MAX_CLOCK_SKEW_MS {
            debug!(
                "dropping {}: expired or dated in the future",
                describe(envelope)
            );
            self.msgs.counters.drop("expired");
            return refused("expired", "expired or dated in the future".into());
        }
        let key = match self.pair_key(&source) {
            Ok(k) => k,
            Err(e) => {
                debug!("dropping {}: {e}", describe(envelope));
                self.msgs.counters.drop("unopenable");
                return refused("crypto", e.to_string());
            }
        };
        let payload = e2e::open(&key, envelope).and_then(|p| Payload::decode(&p));
        match (envelope.kind, payload) {
            (MessageKind::Request, Ok(Payload::Message { body })) => {
                self.on_durable_request(now, envelope, &body, expires)
            }
            (MessageKind::Request, Ok(Payload::Publish { publication, body })) => {
                self.on_durable_publish(now, envelope, &publication, &body, expires)
            }
            (
                MessageKind::Response,
                Ok(Payload::Reply {
                    in_reply_to,
                    outcome,
                    request_hops,
                }),
            ) => {
                self.on_receipt(now, &source, in_reply_to, outcome, request_hops);
                Taken::Recorded
            }
            (_, Err(e)) => {
                warn!("dropping {}: {e}", describe(envelope));
                self.msgs.counters.drop("undecodable");
                refused("undecodable", e.to_string())
            }
            _ => {
                warn!("dropping {}: kind and payload disagree", describe(envelope));
                self.msgs.counters.drop("undecodable");
                refused("undecodable", "kind and payload disagree".into())
            }
        }
    }

    /// What became of durable message `id` from `source` if it was taken (or is being) before,
    /// or why none can be taken now; `None` to take it.
    fn durable_taken_before(&mut self, now: Now, source: &str, id: u64) -> Option<Taken> {
        let key = (source.to_string(), id);
        if self.durable.unpersisted.contains(&key) {
            return Some(Taken::Pending); // being recorded: its receipt follows
        }
        if let Some(seen) = self.durable.seen.get(&key) {
            if let SeenState::Done(_) = seen.state {
                let ms = now.ms();
                let last = self.durable.answered_at.get(&key).copied();
                if last.is_none_or(|t| ms >= t + super::REANSWER_INTERVAL_MS) {
                    debug!("answering re-delivered message {id} from {source} from its record");
                    self.durable.answered_at.insert(key, ms);
                    self.send_receipt(now, source, id);
                }
            }
            return Some(Taken::Recorded);
        }
        if self.durable.seen.len() >= MAX_SEEN || self.durable.seen_bytes >= MAX_SEEN_BYTES {
            warn!("not taking message {id} from {source}: {MAX_SEEN} durable messages remembered already");
            self.msgs.counters.drop("store_full");
            return Some(Taken::Refused(Outcome::Failed {
                code: "busy".into(),
                message: "too many durable messages remembered; retry later".into(),
            }));
        }
        None
    }

    /// A durable publish copy for us, authentic and in date: delivered like a durable plain
    /// message (recorded, then answered), as a `publish` event with its topic.
    fn on_durable_publish(
        &mut self,
        now: Now,
        envelope: &Envelope,
        publication: &crate::proto::publication::Publication,
        body: &[u8],
        expires: u64,
    ) -> Taken {
        let (source, id) = (envelope.source.clone(), envelope.id);
        if let Some(taken) = self.durable_taken_before(now, &source, id) {
            return taken;
        }
        let hops = envelope.hops;
        let (outcome, inbox) =
            match self.take_publication(now, &source, hops, publication, body, true) {
                Ok(inbox) => (Outcome::Delivered, inbox),
                Err((outcome, true)) => {
                    self.msgs.counters.refused += 1;
                    return Taken::Refused(outcome); // worth a retry: not recorded
                }
                Err((outcome, false)) => {
                    self.msgs.counters.refused += 1;
                    (outcome, None)
                }
            };
        let record = SeenRecord {
            expires_unix_ms: expires,
            request_hops: hops,
            state: SeenState::Done(outcome),
        };
        let after = AfterPersist::Answer {
            source: source.clone(),
            id,
        };
        self.record_seen(&source, id, record, inbox.into_iter().collect(), after);
        Taken::Pending
    }

    /// A durable request for us, authentic and in date.
    fn on_durable_request(
        &mut self,
        now: Now,
        envelope: &Envelope,
        body: &[u8],
        expires: u64,
    ) -> Taken {
        let (source, id) = (envelope.source.clone(), envelope.id);
        if let Some(taken) = self.durable_taken_before(now, &source, id) {
            return taken;
        }
        let name = self.script_name(body).map(String::from);
        let hops = envelope.hops;
        let mut refusal = self.admit(now, &source, body, hops, name.as_deref()).err();
        let ttl_ms = u64::from(envelope.ttl_ms);
        if refusal.is_none() && ttl_ms > self.durable.limits.max_ttl_ms {
            refusal = Some((
                Outcome::Failed {
                    code: "ttl_too_long".into(),
                    message: format!(
                        "{} keeps messages at most {} s; this one asks for {} s",
                        self.settings.node_id,
                        self.durable.limits.max_ttl_ms / 1000,
                        ttl_ms / 1000
                    ),
                },
                false,
            ));
        }
        if let Some((outcome, retry)) = refusal {
            self.msgs.counters.refused += 1;
            if retry {
                debug!("not taking durable message {id} from {source} now: {outcome:?}");
                return Taken::Refused(outcome);
            }
            debug!("refusing durable message {id} from {source}: {outcome:?}");
            // Final: recorded like an outcome, so every re-delivery gets the same answer.
            let record = SeenRecord {
                expires_unix_ms: expires,
                request_hops: hops,
                state: SeenState::Done(outcome),
            };
            let after = AfterPersist::Answer {
                source: source.clone(),
                id,
            };
            self.record_seen(&source, id, record, Vec::new(), after);
            return Taken::Pending;
        }
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
                self.actions
                    .push_back(Action::Event(super::messages::message_event(
                        &source, id, hops, body, true,
                    )));
                let inbox = Op::Inbox(InboxRecord::new(id, &source, now.unix_ms, hops, body));
                let after = AfterPersist::Answer {
                    source: source.clone(),
                    id,
                };
                self.record_seen(&source, id, record, vec![inbox], after);
            }
            Some(name) => {
                let record = SeenRecord {
                    expires_unix_ms: expires,
                    request_hops: hops,
                    state: SeenState::Running,
                };
                let after = AfterPersist::Run {
                    source: source.clone(),
                    id,
                    name,
                };
                self.record_seen(&source, id, record, Vec::new(), after);
            }
        }
        Taken::Pending
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
        let after = AfterPersist::Outcome {
            source: source.clone(),
            id,
        };
        self.record_seen(&source, id, record, Vec::new(), after);
    }

    /// Records what this node took from `source` (with `extra` changes in the same write) and
    /// does `after` once it is on disk; until then re-deliveries wait.
    fn record_seen(
        &mut self,
        source: &str,
        id: u64,
        record: SeenRecord,
        extra: Vec<Op>,
        after: AfterPersist,
    ) {
        self.durable.remember_seen(source, id, record.clone());
        self.durable.unpersisted.insert((source.to_string(), id));
        let token = self.durable.token(after);
        let mut ops = vec![Op::PutSeen {
            source: source.to_string(),
            id,
            record,
        }];
        ops.extend(extra);
        self.actions.push_back(Action::Persist {
            ops,
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
            sealed: Bytes::new(),
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
            return;
        }
        // Handed over in custody, so we learn whether the origin took it: if it does not (no
        // path, or no answer), a carrier brings it when the origin is back, also if we are gone
        // by then (the origin also re-sends until it hears, answered from the record).
        if self.next_hop(None, source).is_none() {
            debug!("no path to {source} for the receipt of {id}: to a carrier");
            self.receipt_to_carrier(now, envelope);
            return;
        }
        let offer = Offer::ReceiptToOrigin {
            receipt: Box::new(envelope.clone()),
        };
        if let Err(e) = self.offer_custody(now, source, envelope.clone(), offer) {
            debug!("cannot hand the receipt of {id} to {source} now ({e}): to a carrier");
            self.receipt_to_carrier(now, envelope);
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
        let status = match &outcome {
            Outcome::Failed { code, message } => {
                info!("durable message {id} refused by {from}: {code}: {message}");
                if let Some(e) = self.durable.outbox.get_mut(&id) {
                    e.record.last_error = Some(format!("{code}: {message}"));
                }
                Status::Failed
            }
            _ => {
                info!("durable message {id} delivered to {from}");
                Status::Delivered
            }
        };
        self.finish(now, id, status, Some(outcome), hops);
    }
}

impl Router {
    /// Answers the custody hand-overs waiting for `(source, id)` to be on disk.
    fn send_acks(&mut self, now: Now, source: &str, id: u64, outcome: Outcome) {
        if let Some(acks) = self.durable.acks.remove(&(source.to_string(), id)) {
            for outer in acks {
                self.reply(now, &outer, outcome.clone());
            }
        }
    }

    /// A custody hand-over for us (`outer`, from its source) of the durable envelope `inner`:
    /// ours to take (we are its target), or to carry (we are a carrier).
    pub(super) fn on_custody(&mut self, now: Now, outer: Envelope, inner: Envelope) {
        let me = self.settings.node_id.clone();
        if inner.target == me && inner.signature.is_some() {
            return self.on_durable_for_me(now, inner, Some(outer));
        }
        let outcome = self.carry(now, &outer, inner);
        if let Some(outcome) = outcome {
            self.reply(now, &outer, outcome);
        }
    }

    /// As a carrier: takes `inner` for others, or says why not (`None`: the answer follows the
    /// write).
    fn carry(&mut self, now: Now, outer: &Envelope, inner: Envelope) -> Option<Outcome> {
        let refuse = |code: &str, message: String| {
            Some(Outcome::Failed {
                code: code.into(),
                message,
            })
        };
        let me = self.settings.node_id.clone();
        let Some(limits) = self.settings.carrier else {
            return refuse("not_a_carrier", format!("{me} does not carry messages"));
        };
        if inner.check_limits().is_err() || inner.signature.is_none() || inner.clear {
            return refuse("undecodable", "not a durable envelope".into());
        }
        let Some(identity) = self.home.keys.get(&inner.source).copied() else {
            return refuse(
                "unknown_source",
                format!("{} is not known here", inner.source),
            );
        };
        if !e2e::verify_signature(&inner, &identity) {
            warn!(
                "refusing to carry {}: its signature is not its source's",
                describe(&inner)
            );
            self.msgs.counters.forged += 1;
            return refuse("forged", "the signature is not its source's".into());
        }
        let expires = inner.timestamp_ms + u64::from(inner.ttl_ms);
        if expires <= now.unix_ms {
            return refuse("expired", "the message has expired".into());
        }
        if expires - now.unix_ms > limits.max_ttl_ms {
            return refuse(
                "ttl_too_long",
                format!(
                    "{me} carries messages for at most {} s",
                    limits.max_ttl_ms / 1000
                ),
            );
        }
        let key = (inner.source.clone(), inner.id);
        if self.durable.carried_unpersisted.contains(&key) {
            return refuse("busy", "being stored; retry".into());
        }
        if self.durable.carried.contains_key(&key) {
            return Some(Outcome::Delivered); // held already, on disk
        }
        let bytes = inner.sealed.len();
        let by_origin = self
            .durable
            .carried_by_origin
            .get(&inner.source)
            .copied()
            .unwrap_or(0);
        if self.durable.carried_bytes + bytes > limits.quota_bytes
            || by_origin + bytes > limits.per_origin_quota_bytes
        {
            return refuse(
                "carrier_full",
                format!("{me} has no room for this message now"),
            );
        }
        let record = crate::proto::durable::CarriedRecord {
            envelope: inner,
            from: outer.source.clone(),
            taken_unix_ms: now.unix_ms,
        };
        info!(
            "carrying {} for {} ({} bytes)",
            describe(&record.envelope),
            record.envelope.target,
            bytes
        );
        let (source, id) = key.clone();
        self.durable.hold(&source, id, record.clone());
        // Not handed on before it is on disk (the hand-over answer waits for the write too).
        self.durable.carried_unpersisted.insert(key);
        let token = self.durable.token(AfterPersist::Carried {
            outer: Box::new(stripped(outer)),
            source: source.clone(),
            id,
        });
        self.actions.push_back(Action::Persist {
            ops: vec![Op::PutCarried { source, id, record }],
            durable: true,
            token: Some(token),
        });
        None
    }

    /// Hands `inner` over in custody to `to` (a carrier, or its target): a request whose
    /// answer [`Router::custody_answered`] gets.
    fn offer_custody(
        &mut self,
        now: Now,
        to: &str,
        inner: Envelope,
        offer: Offer,
    ) -> Result<u64, SendError> {
        let payload = Payload::Custody { envelope: inner }.encode();
        let timeout = match offer {
            Offer::ReceiptToOrigin { .. } => RECEIPT_TIMEOUT_MS,
            _ => CUSTODY_TIMEOUT_MS,
        };
        let id = self.send_payload(now, to, payload, timeout)?;
        self.msgs.counters.sent = self.msgs.counters.sent.saturating_sub(1);
        self.durable.offers.insert(id, offer);
        Ok(id)
    }

    /// A pending request ended: a custody hand-over of ours, or a `/send`'s.
    pub(super) fn complete(&mut self, id: u64, result: Result<Delivery, SendError>) {
        let delivered = matches!(&result, Ok(d) if d.outcome == Outcome::Delivered);
        if self.topics.copy_answered(id, delivered) {
            return;
        }
        match self.durable.offers.remove(&id) {
            Some(offer) => self.custody_answered(offer, result),
            None => self.actions.push_back(Action::Complete { id, result }),
        }
    }

    /// The answer to a custody hand-over of ours.
    fn custody_answered(&mut self, offer: Offer, result: Result<Delivery, SendError>) {
        let accepted = matches!(&result, Ok(d) if d.outcome == Outcome::Delivered);
        let why = match &result {
            Ok(Delivery {
                outcome: Outcome::Failed { code, message },
                ..
            }) => Some((code.clone(), message.clone())),
            Ok(_) => None,
            Err(e) => Some(("unanswered".to_string(), e.to_string())),
        };
        match offer {
            Offer::Outbox { id, carrier } => {
                let me = self.settings.node_id.clone();
                self.durable.offering.remove(&(me, id));
                let Some(e) = self.durable.outbox.get_mut(&id) else {
                    return;
                };
                if e.record.status.is_final() {
                    return;
                }
                if accepted {
                    info!("durable message {id} in the custody of {carrier}");
                    e.record.status = Status::InCustody;
                    e.record.custody = Some(carrier);
                    e.record.last_error = None;
                    let record = e.record.clone();
                    self.actions
                        .push_back(Action::Event(delivery_event(id, &record)));
                    self.actions.push_back(Action::Persist {
                        ops: vec![Op::PutOutbox(id, record)],
                        durable: true,
                        token: None,
                    });
                } else if let Some((code, message)) = why {
                    debug!("carrier {carrier} did not take {id}: {code}: {message}");
                    e.record.last_error = Some(format!("carrier {carrier}: {code}: {message}"));
                }
            }
            Offer::Carried { source, id } => {
                self.durable.offering.remove(&(source.clone(), id));
                let final_refusal = why.as_ref().is_some_and(|(code, _)| {
                    !matches!(
                        code.as_str(),
                        "unanswered" | "busy" | "rate_limited" | "carrier_full" | "store_failed"
                    )
                });
                if accepted || final_refusal {
                    if accepted {
                        info!("handed {id} of {source} on: no longer carried here");
                    } else {
                        warn!("dropping carried {id} of {source}: {why:?}");
                    }
                    if self.durable.release(&source, id) {
                        self.actions.push_back(Action::Persist {
                            ops: vec![Op::DeleteCarried { source, id }],
                            durable: true,
                            token: None,
                        });
                    }
                }
            }
            Offer::ReceiptToOrigin { receipt } => {
                if !accepted {
                    debug!("the origin did not take a receipt ({why:?}): to a carrier");
                    self.durable.unreceived.push(*receipt);
                }
            }
            Offer::ReceiptToCarrier => {}
        }
    }

    /// Hands on what we carry soon (a path changed, or something new is held).
    fn carry_soon(&mut self, now: Now) {
        if !self.durable.carried.is_empty() {
            let at = now.ms() + KICK_DELAY_MS;
            if self.durable.carry_at_ms.is_none_or(|t| t > at) {
                self.durable.carry_at_ms = Some(at);
            }
        }
    }

    /// As a carrier: offers every envelope held whose target has a path now, to the target.
    fn carry_on(&mut self, now: Now) {
        self.forget_old(now);
        self.durable.carry_at_ms =
            (!self.durable.carried.is_empty()).then_some(now.ms() + CARRY_TICK_MS);
        let ready: Vec<(String, u64, String)> = self
            .durable
            .carried
            .iter()
            .filter(|(k, _)| {
                !self.durable.offering.contains(*k)
                    && !self.durable.carried_unpersisted.contains(*k)
            })
            .map(|((s, id), r)| (s.clone(), *id, r.envelope.target.clone()))
            .collect();
        for (source, id, target) in ready {
            if !self.home.keys.contains(&target) || self.next_hop(None, &target).is_none() {
                continue;
            }
            let Some(record) = self.durable.carried.get(&(source.clone(), id)) else {
                continue;
            };
            let mut inner = record.envelope.clone();
            inner.hops = 0;
            let offer = Offer::Carried {
                source: source.clone(),
                id,
            };
            match self.offer_custody(now, &target, inner, offer) {
                Ok(_) => {
                    debug!("handing carried {id} of {source} to {target}");
                    self.durable.offering.insert((source, id));
                }
                Err(e) => debug!("cannot hand carried {id} of {source} to {target}: {e}"),
            }
        }
    }

    /// The reachable carrier with the cheapest path, if any (never ourselves).
    fn best_carrier(&mut self) -> Option<String> {
        let me = self.settings.node_id.clone();
        let carriers: Vec<String> = self.durable.carriers.iter().cloned().collect();
        let mut best: Option<(u64, String)> = None;
        for c in carriers {
            if c == me || !self.home.keys.contains(&c) {
                continue;
            }
            let cost = if self.best_link(None, &c).is_some() {
                0
            } else {
                match self.home.routing.route(&c) {
                    Some(r) => r.cost_us,
                    None => continue,
                }
            };
            if best.as_ref().is_none_or(|(b, _)| cost < *b) {
                best = Some((cost, c));
            }
        }
        best.map(|(_, c)| c)
    }

    /// An outbox entry without a path to its target: hand it to a carrier, if there is one and
    /// it is not in custody or being handed over already.
    fn hand_to_carrier(&mut self, now: Now, id: u64) {
        let me = self.settings.node_id.clone();
        let Some(e) = self.durable.outbox.get(&id) else {
            return;
        };
        if e.record.status != Status::Queued
            || self.durable.offering.contains(&(me.clone(), id))
            || !self.home.keys.contains(&e.record.target)
        {
            return;
        }
        let Some(carrier) = self.best_carrier() else {
            return;
        };
        let Ok(inner) = self.durable_envelope(now, id) else {
            return;
        };
        let offer = Offer::Outbox {
            id,
            carrier: carrier.clone(),
        };
        match self.offer_custody(now, &carrier, inner, offer) {
            Ok(_) => {
                debug!("offering durable message {id} to carrier {carrier}");
                self.durable.offering.insert((me, id));
            }
            Err(e) => debug!("cannot offer {id} to carrier {carrier}: {e}"),
        }
    }

    /// A receipt for an origin we cannot reach: to a carrier (the origin would also learn it by
    /// re-sending, answered from our record, but it may come back when we are gone).
    fn receipt_to_carrier(&mut self, now: Now, receipt: Envelope) {
        if let Some(carrier) = self.best_carrier() {
            if let Err(e) = self.offer_custody(now, &carrier, receipt, Offer::ReceiptToCarrier) {
                debug!("cannot hand a receipt to carrier {carrier}: {e}");
            }
        }
    }

    /// What the durable path holds, for `/status` (carrier part).
    pub(super) fn carrier_report(&self) -> (bool, Vec<String>) {
        (
            self.settings.carrier.is_some(),
            self.durable.carriers.iter().cloned().collect(),
        )
    }
}

/// A copy of a hand-over request without its body (only its header is needed to answer it).
fn stripped(outer: &Envelope) -> Envelope {
    Envelope {
        sealed: Bytes::new(),
        ..outer.clone()
    }
}

/// The outcome that says the store could not write.
fn store_failed(e: String) -> Outcome {
    Outcome::Failed {
        code: "store_failed".into(),
        message: e,
    }
}

fn report(id: u64, e: &Entry) -> MessageReport {
    let mut record = e.record.clone();
    record.body = Vec::new();
    MessageReport { id, record }
}

/// The `delivery` event of an outbox record's status now.
fn delivery_event(id: u64, r: &OutboxRecord) -> crate::proto::event::Event {
    let error = match &r.outcome {
        Some(Outcome::Failed { code, message }) => Some(format!("{code}: {message}")),
        _ => r.last_error.clone(),
    };
    crate::proto::event::Event::Delivery {
        message_id: id,
        target: r.target.clone(),
        status: r.status.as_str(),
        custody: r.custody.clone(),
        error,
    }
}
