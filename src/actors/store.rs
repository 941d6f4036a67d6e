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
/// Write-behind changes (`durable: false`) are gathered for this long, or up to
/// [`WRITE_BEHIND_OPS`], and go to the store thread as one write: a live message's inbox entry
/// costs the node a push, not a transaction.
pub const WRITE_BEHIND_MS: u64 = 20;
/// See [`WRITE_BEHIND_MS`].
pub const WRITE_BEHIND_OPS: usize = 4096;

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

/// Test-only: the next N writes fail as if the disk refused them.
#[cfg(feature = "fault-injection")]
#[derive(Message)]
#[rtype(result = "()")]
pub struct FailWrites(pub u32);

/// See the module docs.
pub struct StoreActor {
    jobs: mpsc::SyncSender<Job>,
    queued_bytes: Arc<AtomicUsize>,
    /// Write-behind changes gathered, not yet handed to the thread (they go before any later
    /// write, so the order of changes is kept).
    behind: Vec<Op>,
    /// A flush of `behind` is scheduled.
    flush_armed: bool,
    /// Test-only: writes still to fail.
    #[cfg(feature = "fault-injection")]
    fail_writes: u32,
}

#[cfg(feature = "fault-injection")]
impl Handler<FailWrites> for StoreActor {
    type Result = ();

    fn handle(&mut self, msg: FailWrites, _: &mut Self::Context) {
        self.fail_writes = msg.0;
    }
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
        Ok(StoreActor {
            jobs,
            queued_bytes,
            behind: Vec::new(),
            flush_armed: false,
            #[cfg(feature = "fault-injection")]
            fail_writes: 0,
        })
    }

    /// Hands the gathered write-behind changes to the thread as one write.
    fn flush_behind(&mut self) {
        if self.behind.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.behind);
        let bytes: usize = ops.iter().map(Op::size).sum();
        let (done, _) = oneshot::channel();
        if let Err(e) = self.submit(
            Job::Write {
                ops,
                durable: false,
                bytes,
                done,
            },
            bytes,
        ) {
            warn!("write-behind changes dropped: {e}");
        }
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

    fn stopped(&mut self, _: &mut Self::Context) {
        self.flush_behind();
    }
}

impl Handler<Persist> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreFailure>>;

    fn handle(&mut self, msg: Persist, ctx: &mut Self::Context) -> Self::Result {
        #[cfg(feature = "fault-injection")]
        if self.fail_writes > 0 {
            self.fail_writes -= 1;
            return Box::pin(async {
                Err(StoreFailure::Failed(
                    "fault injection: the disk refused the write".into(),
                ))
            });
        }
        if !msg.durable {
            self.behind.extend(msg.ops);
            if self.behind.len() >= WRITE_BEHIND_OPS {
                self.flush_behind();
            } else if !self.flush_armed {
                self.flush_armed = true;
                ctx.run_later(
                    std::time::Duration::from_millis(WRITE_BEHIND_MS),
                    |act, _| {
                        act.flush_armed = false;
                        act.flush_behind();
                    },
                );
            }
            return Box::pin(async { Ok(()) });
        }
        // Whatever was gathered goes first, in the same order.
        let mut ops = std::mem::take(&mut self.behind);
        ops.extend(msg.ops);
        let bytes: usize = ops.iter().map(Op::size).sum();
        let (done, rx) = oneshot::channel();
        let job = Job::Write {
            ops,
            durable: true,
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
        // A read sees every change asked for before it.
        self.flush_behind();
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
