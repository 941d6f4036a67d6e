//! Durable messages: the records the router keeps on disk, and the operations that change them.
//!
//! The router decides (sans-io, [`crate::proto::router`]); the store writes
//! ([`crate::store`]). Three kinds of record:
//! - [`OutboxRecord`]: a message this node sent with a ttl, from the moment `/send` accepted it
//!   until its receipt came back, it expired, or it was cancelled (kept a while longer so
//!   `GET /messages/{id}` can still say what became of it);
//! - [`SeenRecord`]: at a target, a durable message it took, by (source, id), with the outcome
//!   once there is one, until the message's expiry: a re-delivered message is answered from it
//!   and never run twice;
//! - [`InboxRecord`]: a plain message received, for `GET /messages`.
//!
//! Records are rmp-serde encoded (field arrays, like frames) and carry no version of their own:
//! the store's schema version covers them.

use serde::{Deserialize, Serialize};

use crate::proto::e2e::Outcome;

/// Where a message this node sent stands (what `GET /messages/{id}` says).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for a path to its target.
    Queued,
    /// Sent; no receipt yet.
    InFlight,
    /// A carrier has taken it.
    InCustody,
    /// Its target's receipt came back.
    Delivered,
    /// Its ttl ran out before a receipt came back.
    Expired,
    /// Cancelled by `DELETE /messages/{id}`.
    Cancelled,
    /// Refused for good (the reason is in `last_error`).
    Failed,
}

impl Status {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::InFlight => "in_flight",
            Status::InCustody => "in_custody",
            Status::Delivered => "delivered",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
            Status::Failed => "failed",
        }
    }

    /// Whether nothing more will happen to the message.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Delivered | Status::Expired | Status::Cancelled | Status::Failed
        )
    }
}

/// A message this node sent with a ttl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// Its target's node id.
    pub target: String,
    /// The message body (emptied once the message is final: nothing will send it again).
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// When `/send` accepted it (unix ms); also the envelope's timestamp on every attempt.
    pub created_unix_ms: u64,
    /// When it expires (unix ms): `created_unix_ms` plus its ttl.
    pub expires_unix_ms: u64,
    /// Where it stands.
    pub status: Status,
    /// Times it was handed to a link.
    pub attempts: u32,
    /// Why the last attempt did not get through, if it did not.
    pub last_error: Option<String>,
    /// The carrier holding it, when `in_custody`.
    pub custody: Option<String>,
    /// What the target did, once delivered.
    pub outcome: Option<Outcome>,
    /// Links the request crossed to its target, once delivered.
    pub hops: u8,
    /// Set when this is one subscriber's copy of a message published to a topic: what the
    /// origin (this node) signed, sent with `body` in every attempt.
    #[serde(default)]
    pub publication: Option<crate::proto::publication::Publication>,
}

/// What a target did with a durable message it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeenState {
    /// Its script was started and has not ended (after a restart: it was interrupted).
    Running,
    /// Handled, with this outcome (what every re-delivery is answered with).
    Done(Outcome),
}

/// A durable message a target took, by (source, id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenRecord {
    /// The message's expiry (unix ms): the record is kept until then (plus the clock skew
    /// allowed), as long as the source could still re-deliver it.
    pub expires_unix_ms: u64,
    /// Links the message crossed on its first delivery (reported in the receipt).
    pub request_hops: u8,
    /// What became of it.
    pub state: SeenState,
}

/// A plain message received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRecord {
    /// The message id (unique per source).
    pub message_id: u64,
    /// Its source node.
    pub source: String,
    /// When it arrived (unix ms).
    pub received_unix_ms: u64,
    /// Links it crossed.
    pub hops: u8,
    /// Its length, in bytes.
    pub bytes: u64,
    /// The body, or its first [`INBOX_BODY_BYTES`] when longer.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The topic it was published to, for a message published to a topic.
    #[serde(default)]
    pub topic: Option<String>,
}

/// Most body bytes the inbox keeps of a message (the rest is cut, and the record says how long
/// the message was): bounds what one message costs the store.
pub const INBOX_BODY_BYTES: usize = 64 * 1024;

impl InboxRecord {
    /// The record of a plain message received now.
    pub fn new(
        message_id: u64,
        source: &str,
        received_unix_ms: u64,
        hops: u8,
        body: &[u8],
    ) -> Self {
        InboxRecord {
            message_id,
            source: source.to_string(),
            received_unix_ms,
            hops,
            bytes: body.len() as u64,
            body: body[..body.len().min(INBOX_BODY_BYTES)].to_vec(),
            topic: None,
        }
    }

    /// The same record for a message published to `topic`.
    pub fn with_topic(mut self, topic: &str) -> Self {
        self.topic = Some(topic.to_string());
        self
    }
}

/// A durable envelope a carrier holds for others, by (its source, its id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarriedRecord {
    /// The origin's envelope, sealed for its target and signed, exactly as received.
    pub envelope: crate::wire::frame::Envelope,
    /// The node that handed it over.
    pub from: String,
    /// When it was taken (unix ms).
    pub taken_unix_ms: u64,
}

impl CarriedRecord {
    /// When it expires (unix ms).
    pub fn expires_unix_ms(&self) -> u64 {
        self.envelope.timestamp_ms + u64::from(self.envelope.ttl_ms)
    }
}

/// A change to the durable state, as the router asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace an outbox record.
    PutOutbox(u64, OutboxRecord),
    /// Forget an outbox record.
    DeleteOutbox(u64),
    /// Insert or replace what a target took from `source`.
    PutSeen {
        /// The message's source.
        source: String,
        /// The message id.
        id: u64,
        /// The record.
        record: SeenRecord,
    },
    /// Forget what a target took from `source` (expired).
    DeleteSeen {
        /// The message's source.
        source: String,
        /// The message id.
        id: u64,
    },
    /// Append a plain message to the inbox (the store applies the retention limits).
    Inbox(InboxRecord),
    /// A carrier takes an envelope for others.
    PutCarried {
        /// The envelope's source.
        source: String,
        /// Its id.
        id: u64,
        /// The record.
        record: CarriedRecord,
    },
    /// A carrier no longer holds it (handed on, or expired).
    DeleteCarried {
        /// The envelope's source.
        source: String,
        /// Its id.
        id: u64,
    },
}

impl Op {
    /// Bytes the operation writes, about (for batching and budgets).
    pub fn size(&self) -> usize {
        match self {
            Op::PutOutbox(_, r) => 64 + r.target.len() + r.body.len(),
            Op::PutSeen { source, record, .. } => 64 + source.len() + record_outcome_len(record),
            Op::Inbox(r) => 64 + r.source.len() + r.body.len(),
            Op::PutCarried { record, .. } => 256 + record.envelope.sealed.len(),
            Op::DeleteOutbox(_) | Op::DeleteSeen { .. } | Op::DeleteCarried { .. } => 16,
        }
    }
}

/// Bytes of a seen record's outcome (what dominates its size).
pub fn record_outcome_len(record: &SeenRecord) -> usize {
    match &record.state {
        SeenState::Running => 0,
        SeenState::Done(o) => outcome_len(o),
    }
}

/// Bytes of an outcome's variable fields.
pub fn outcome_len(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Delivered => 0,
        Outcome::Script { stdout, stderr, .. } => stdout.len() + stderr.len(),
        Outcome::Failed { code, message } => code.len() + message.len(),
    }
}

/// What the store holds at start, for the router to pick up where the last run stopped.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// Every outbox record, by id.
    pub outbox: Vec<(u64, OutboxRecord)>,
    /// Every seen record (source, id, record).
    pub seen: Vec<(String, u64, SeenRecord)>,
    /// Every envelope carried for others (source, id, record).
    pub carried: Vec<(String, u64, CarriedRecord)>,
}
