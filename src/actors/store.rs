//! StoreActor: the node's durable state ([`crate::store::Store`], redb) behind typed messages.
//!
//! redb blocks on every commit (an fsync), so the store lives on a thread of its own, never on
//! the node's arbiter: the actor hands each request to that thread over a bounded queue and
//! answers when the thread is done. The thread takes everything queued at once and commits it
//! as one transaction (group commit: a burst of queued `/send`s pays one fsync, not one each),
//! durable if any request in the group needs it. Requests are served in order, so a read sees
//! every write asked for before it.
//!
//! Bounded: at most [`MAX_QUEUED_JOBS`] requests and [`MAX_QUEUED_BYTES`] bytes wait for the
//! thread; beyond that a request fails at once with [`StoreFailure::Busy`] (the caller answers
//! 503 rather than wait or pretend).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use actix::prelude::*;
use log::{error, warn};
use tokio::sync::oneshot;

use crate::proto::durable::{InboxRecord, Op};
use crate::store::{InboxQuery, Store};

/// Requests waiting for the store thread at most.
pub const MAX_QUEUED_JOBS: usize = 8192;
/// Bytes of writes waiting for the store thread at most.
pub const MAX_QUEUED_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes of writes committed in one transaction (a group commit's size).
pub const MAX_GROUP_BYTES: usize = 8 * 1024 * 1024;

/// Why the store did not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreFailure {
    /// Its queue is full.
    #[error("the message store is busy")]
    Busy,
    /// The write or read failed (disk full, I/O error), or the store thread is gone.
    #[error("{0}")]
    Failed(String),
}

/// Apply `ops` in order, in one transaction with whatever else is queued; `durable`: answer only
/// once they are fsync'd.
#[derive(Message)]
#[rtype(result = "Result<(), StoreFailure>")]
pub struct Persist {
    /// The changes.
    pub ops: Vec<Op>,
    /// Whether the answer waits for the fsync.
    pub durable: bool,
}

/// The newest inbox messages matching a query, oldest first.
#[derive(Message)]
#[rtype(result = "Result<Vec<InboxRecord>, StoreFailure>")]
pub struct QueryInbox(pub InboxQuery);

enum Job {
    Write {
        ops: Vec<Op>,
        durable: bool,
        bytes: usize,
        done: oneshot::Sender<Result<(), StoreFailure>>,
    },
    Inbox {
        query: InboxQuery,
        done: oneshot::Sender<Result<Vec<InboxRecord>, StoreFailure>>,
    },
}

/// See the module docs.
pub struct StoreActor {
    jobs: mpsc::SyncSender<Job>,
    queued_bytes: Arc<AtomicUsize>,
}

impl StoreActor {
    /// Moves `store` onto its own thread (named `msgtier-store`) and serves it.
    pub fn new(store: Store) -> std::io::Result<StoreActor> {
        let (jobs, rx) = mpsc::sync_channel(MAX_QUEUED_JOBS);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let counter = queued_bytes.clone();
        std::thread::Builder::new()
            .name("msgtier-store".into())
            .spawn(move || serve(store, rx, counter))?;
        Ok(StoreActor { jobs, queued_bytes })
    }

    fn submit(&self, job: Job, bytes: usize) -> Result<(), StoreFailure> {
        if self.queued_bytes.load(Ordering::Relaxed) + bytes > MAX_QUEUED_BYTES {
            return Err(StoreFailure::Busy);
        }
        self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.jobs.try_send(job).map_err(|e| {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            match e {
                mpsc::TrySendError::Full(_) => StoreFailure::Busy,
                mpsc::TrySendError::Disconnected(_) => {
                    StoreFailure::Failed("the message store thread is gone".into())
                }
            }
        })
    }
}

impl Actor for StoreActor {
    type Context = Context<Self>;
}

impl Handler<Persist> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreFailure>>;

    fn handle(&mut self, msg: Persist, _: &mut Self::Context) -> Self::Result {
        let bytes: usize = msg.ops.iter().map(Op::size).sum();
        let (done, rx) = oneshot::channel();
        let job = Job::Write {
            ops: msg.ops,
            durable: msg.durable,
            bytes,
            done,
        };
        let submitted = self.submit(job, bytes);
        Box::pin(async move {
            submitted?;
            rx.await.unwrap_or_else(|_| {
                Err(StoreFailure::Failed(
                    "the message store thread is gone".into(),
                ))
            })
        })
    }
}

impl Handler<QueryInbox> for StoreActor {
    type Result = ResponseFuture<Result<Vec<InboxRecord>, StoreFailure>>;

    fn handle(&mut self, msg: QueryInbox, _: &mut Self::Context) -> Self::Result {
        let (done, rx) = oneshot::channel();
        let submitted = self.submit(Job::Inbox { query: msg.0, done }, 0);
        Box::pin(async move {
            submitted?;
            rx.await.unwrap_or_else(|_| {
                Err(StoreFailure::Failed(
                    "the message store thread is gone".into(),
                ))
            })
        })
    }
}

/// The store thread: takes what is queued, commits the writes as one group, answers.
fn serve(mut store: Store, rx: mpsc::Receiver<Job>, queued_bytes: Arc<AtomicUsize>) {
    let mut next: Option<Job> = None;
    loop {
        let first = match next.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        match first {
            Job::Inbox { query, done } => {
                let _ = done.send(store.inbox(&query).map_err(failed));
            }
            Job::Write {
                ops,
                durable,
                bytes,
                done,
            } => {
                // The group: this write and the writes queued behind it, up to a read.
                let mut group_ops = ops;
                let mut group_bytes = bytes;
                let mut group_durable = durable;
                let mut waiting = vec![done];
                while group_bytes < MAX_GROUP_BYTES {
                    match rx.try_recv() {
                        Ok(Job::Write {
                            ops,
                            durable,
                            bytes,
                            done,
                        }) => {
                            group_ops.extend(ops);
                            group_bytes += bytes;
                            group_durable |= durable;
                            waiting.push(done);
                        }
                        Ok(read) => {
                            next = Some(read);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let result = store
                    .apply(&group_ops, group_durable, crate::node::unix_ms())
                    .map_err(failed);
                if let Err(e) = &result {
                    error!("{e}");
                }
                queued_bytes.fetch_sub(group_bytes, Ordering::Relaxed);
                for done in waiting {
                    let _ = done.send(result.clone());
                }
            }
        }
    }
}

fn failed(e: crate::store::StoreError) -> StoreFailure {
    warn!("{e}");
    StoreFailure::Failed(e.to_string())
}
