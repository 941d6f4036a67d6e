//! The node's durable state on disk: one redb database, `store.redb` in the data directory.
//!
//! Blocking, one writer: the StoreActor ([`crate::actors::store`]) runs it on a thread of its
//! own and batches the writes of concurrent requests into one commit (one fsync). Every
//! commit that acknowledges something to someone (a `/send` with a ttl, a message taken for
//! delivery) is durable when [`Store::apply`] returns; write-behind commits (`durable: false`)
//! become durable with the next durable one.
//!
//! Tables (schema [`SCHEMA_VERSION`], in `meta`):
//! - `outbox`: message id (u64) -> [`OutboxRecord`];
//! - `seen`: id (8 bytes, big-endian) ++ source id -> [`SeenRecord`];
//! - `inbox`: arrival sequence (u64) -> [`InboxRecord`], trimmed to the [`Retention`] limits;
//! - `carried`: id ++ source, as for `seen` -> [`CarriedRecord`] (a carrier's custody).
//!
//! Values are rmp-serde encoded. A file that redb cannot open, a schema this build does not
//! know, or a record that does not decode is an error naming the file: the store is never
//! silently emptied or rewritten.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::proto::durable::{CarriedRecord, InboxRecord, Op, OutboxRecord, Restored, SeenRecord};

/// Name of the database file inside the data directory.
pub const STORE_FILE_NAME: &str = "store.redb";

/// Memory redb may use to cache pages (its default is 1 GiB; the node's working set is the
/// outbox, the seen table and the newest inbox pages).
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Version of the tables' layout and records; bumped with any incompatible change.
pub const SCHEMA_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
const SEEN: TableDefinition<&[u8], &[u8]> = TableDefinition::new("seen");
const INBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("inbox");
const CARRIED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("carried");

/// How much of the inbox is kept: the oldest messages go first once any limit is passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most messages kept.
    pub max_messages: u64,
    /// Most body bytes kept.
    pub max_bytes: u64,
    /// Oldest message kept, in milliseconds of age.
    pub max_age_ms: u64,
}

/// What `GET /messages` asks of the inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxQuery {
    /// At most this many, the newest.
    pub limit: usize,
    /// Only messages received at or after this time (unix ms).
    pub since_unix_ms: Option<u64>,
    /// Only messages from this node.
    pub from: Option<String>,
    /// Only messages published to a topic this filter (checked) matches.
    pub topic: Option<String>,
}

/// Failures of the store. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb could not open or create the file (also: another process holds it).
    #[error("cannot open the message store {}: {source}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: redb::DatabaseError,
    },
    /// The file was written by a build with another schema.
    #[error(
        "the message store {} has schema version {found}, this build reads version {SCHEMA_VERSION}; \
         run the msgtier version that wrote it, or move the file away to start empty",
        path.display()
    )]
    Schema {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: u64,
    },
    /// A record does not decode: the file is damaged (or was edited).
    #[error(
        "the message store {} is damaged: {what}; it was not changed: move it away to start \
         empty (its messages are then lost), or restore it from a backup",
        path.display()
    )]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// Which record.
        what: String,
    },
    /// A read or write failed (disk full, I/O error).
    #[error("message store {}: {detail}", path.display())]
    Io {
        /// The database file.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
}

/// See the module docs.
pub struct Store {
    db: Database,
    path: PathBuf,
    retention: Retention,
    /// Inbox rows and body bytes now, and the next arrival sequence number.
    inbox_count: u64,
    inbox_bytes: u64,
    next_seq: u64,
}

impl Store {
    /// Opens (or creates) `dir/store.redb` and reads what the router needs back.
    pub fn open(dir: &Path, retention: Retention) -> Result<(Store, Restored), StoreError> {
        let path = dir.join(STORE_FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
        let mut store = Store {
            db,
            path,
            retention,
            inbox_count: 0,
            inbox_bytes: 0,
            next_seq: 0,
        };
        store.check_schema()?;
        let restored = store.restore()?;
        Ok((store, restored))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn corrupt(&self, what: String) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    /// Writes the schema version into a new file, or checks the one found.
    fn check_schema(&mut self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.io(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.io(e))?;
            let found = meta
                .get("schema")
                .map_err(|e| self.io(e))?
                .map(|v| v.value());
            match found {
                Some(SCHEMA_VERSION) => {}
                Some(found) => {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        found,
                    })
                }
                None => {
                    meta.insert("schema", SCHEMA_VERSION)
                        .map_err(|e| self.io(e))?;
                }
            }
            // Create the tables, so readers find them.
            txn.open_table(OUTBOX).map_err(|e| self.io(e))?;
            txn.open_table(SEEN).map_err(|e| self.io(e))?;
            txn.open_table(INBOX).map_err(|e| self.io(e))?;
            txn.open_table(CARRIED).map_err(|e| self.io(e))?;
        }
        txn.commit().map_err(|e| self.io(e))
    }

    /// Reads the outbox and the seen records; counts the inbox.
    fn restore(&mut self) -> Result<Restored, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let mut restored = Restored::default();
        let outbox = txn.open_table(OUTBOX).map_err(|e| self.io(e))?;
        for row in outbox.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let id = k.value();
            let record: OutboxRecord =
                decode(v.value()).map_err(|e| self.corrupt(format!("outbox record {id}: {e}")))?;
            restored.outbox.push((id, record));
        }
        let seen = txn.open_table(SEEN).map_err(|e| self.io(e))?;
        for row in seen.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let (id, source) = split_seen_key(k.value())
                .ok_or_else(|| self.corrupt("a seen record's key".into()))?;
            let record: SeenRecord = decode(v.value())
                .map_err(|e| self.corrupt(format!("seen record {source}/{id}: {e}")))?;
            restored.seen.push((source, id, record));
        }
        let carried = txn.open_table(CARRIED).map_err(|e| self.io(e))?;
        for row in carried.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let (id, source) = split_seen_key(k.value())
                .ok_or_else(|| self.corrupt("a carried record's key".into()))?;
            let record: CarriedRecord = decode(v.value())
                .map_err(|e| self.corrupt(format!("carried record {source}/{id}: {e}")))?;
            restored.carried.push((source, id, record));
        }
        let inbox = txn.open_table(INBOX).map_err(|e| self.io(e))?;
        self.inbox_count = inbox.len().map_err(|e| self.io(e))?;
        for row in inbox.iter().map_err(|e| self.io(e))? {
            let (k, v) = row.map_err(|e| self.io(e))?;
            let seq = k.value();
            let record: InboxRecord =
                decode(v.value()).map_err(|e| self.corrupt(format!("inbox message {seq}: {e}")))?;
            self.inbox_bytes += record.body.len() as u64;
            self.next_seq = seq + 1;
        }
        Ok(restored)
    }

    /// Applies `ops` in one transaction, in order; `durable`: fsync'd before this returns
    /// (otherwise with the next durable commit). `now_unix_ms` ages the inbox.
    pub fn apply(&mut self, ops: &[Op], durable: bool, now_unix_ms: u64) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(|e| self.io(e))?;
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| self.io(e))?;
        }
        let (mut count, mut bytes, mut seq) = (self.inbox_count, self.inbox_bytes, self.next_seq);
        {
            let mut outbox = txn.open_table(OUTBOX).map_err(|e| self.io(e))?;
            let mut seen = txn.open_table(SEEN).map_err(|e| self.io(e))?;
            let mut inbox = txn.open_table(INBOX).map_err(|e| self.io(e))?;
            let mut carried = txn.open_table(CARRIED).map_err(|e| self.io(e))?;
            for op in ops {
                match op {
                    Op::PutOutbox(id, record) => {
                        outbox
                            .insert(*id, encode(record).as_slice())
                            .map_err(|e| self.io(e))?;
                    }
                    Op::DeleteOutbox(id) => {
                        outbox.remove(*id).map_err(|e| self.io(e))?;
                    }
                    Op::PutSeen { source, id, record } => {
                        seen.insert(seen_key(*id, source).as_slice(), encode(record).as_slice())
                            .map_err(|e| self.io(e))?;
                    }
                    Op::DeleteSeen { source, id } => {
                        seen.remove(seen_key(*id, source).as_slice())
                            .map_err(|e| self.io(e))?;
                    }
                    Op::PutCarried { source, id, record } => {
                        carried
                            .insert(seen_key(*id, source).as_slice(), encode(record).as_slice())
                            .map_err(|e| self.io(e))?;
                    }
                    Op::DeleteCarried { source, id } => {
                        carried
                            .remove(seen_key(*id, source).as_slice())
                            .map_err(|e| self.io(e))?;
                    }
                    Op::Inbox(record) => {
                        inbox
                            .insert(seq, encode(record).as_slice())
                            .map_err(|e| self.io(e))?;
                        seq += 1;
                        count += 1;
                        bytes += record.body.len() as u64;
                    }
                }
            }
            // Retention: oldest first, while over any limit.
            let min_time = now_unix_ms.saturating_sub(self.retention.max_age_ms);
            loop {
                let over = count > self.retention.max_messages || bytes > self.retention.max_bytes;
                let Some((k, v)) = inbox.first().map_err(|e| self.io(e))? else {
                    break;
                };
                let (seq_old, value) = (k.value(), v.value().to_vec());
                drop((k, v));
                let record: InboxRecord = decode(&value)
                    .map_err(|e| self.corrupt(format!("inbox message {seq_old}: {e}")))?;
                if !over && record.received_unix_ms >= min_time {
                    break;
                }
                inbox.remove(seq_old).map_err(|e| self.io(e))?;
                count -= 1;
                bytes = bytes.saturating_sub(record.body.len() as u64);
            }
        }
        txn.commit().map_err(|e| self.io(e))?;
        (self.inbox_count, self.inbox_bytes, self.next_seq) = (count, bytes, seq);
        Ok(())
    }

    /// The newest inbox messages matching `q`, oldest first.
    pub fn inbox(&self, q: &InboxQuery) -> Result<Vec<InboxRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io(e))?;
        let inbox = txn.open_table(INBOX).map_err(|e| self.io(e))?;
        let mut out = Vec::new();
        for row in inbox.iter().map_err(|e| self.io(e))?.rev() {
            if out.len() >= q.limit {
                break;
            }
            let (k, v) = row.map_err(|e| self.io(e))?;
            let record: InboxRecord = decode(v.value())
                .map_err(|e| self.corrupt(format!("inbox message {}: {e}", k.value())))?;
            if q.since_unix_ms.is_some_and(|t| record.received_unix_ms < t) {
                break;
            }
            if q.from.as_ref().is_some_and(|f| *f != record.source) {
                continue;
            }
            if let Some(f) = &q.topic {
                if !record
                    .topic
                    .as_ref()
                    .is_some_and(|t| crate::proto::topic::matches(f, t))
                {
                    continue;
                }
            }
            out.push(record);
        }
        out.reverse();
        Ok(out)
    }

    /// Inbox rows and body bytes held now.
    pub fn inbox_size(&self) -> (u64, u64) {
        (self.inbox_count, self.inbox_bytes)
    }
}

fn seen_key(id: u64, source: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + source.len());
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(source.as_bytes());
    k
}

fn split_seen_key(k: &[u8]) -> Option<(u64, String)> {
    let (id, source) = k.split_first_chunk::<8>()?;
    let source = std::str::from_utf8(source).ok()?;
    crate::wire::frame::valid_id(source).then(|| (u64::from_be_bytes(*id), source.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Records are plain structs of strings, integers and bytes: encoding into a Vec cannot fail.
    rmp_serde::to_vec(value).expect("encoding a store record cannot fail")
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, rmp_serde::decode::Error> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    de.set_max_depth(crate::wire::MAX_DECODE_DEPTH);
    let value = T::deserialize(&mut de)?;
    if (de.position() as usize) < bytes.len() {
        return Err(rmp_serde::decode::Error::Syntax("trailing bytes".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::durable::{SeenState, Status};
    use crate::proto::e2e::Outcome;

    const RETAIN: Retention = Retention {
        max_messages: 3,
        max_bytes: 1 << 20,
        max_age_ms: 3_600_000,
    };

    fn outbox_record(target: &str) -> OutboxRecord {
        OutboxRecord {
            target: target.into(),
            body: b"hello".to_vec(),
            created_unix_ms: 1_000,
            expires_unix_ms: 61_000,
            status: Status::Queued,
            attempts: 0,
            last_error: None,
            custody: None,
            outcome: None,
            hops: 0,
            publication: None,
        }
    }

    fn inbox_record(n: u64, at: u64) -> InboxRecord {
        InboxRecord {
            message_id: n,
            source: if n.is_multiple_of(2) { "even" } else { "odd" }.into(),
            received_unix_ms: at,
            hops: 1,
            bytes: n,
            body: vec![b'x'; n as usize],
            topic: None,
        }
    }

    #[test]
    fn what_is_written_is_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, restored) = Store::open(dir.path(), RETAIN).unwrap();
            assert!(restored.outbox.is_empty() && restored.seen.is_empty());
            store
                .apply(
                    &[
                        Op::PutOutbox(7, outbox_record("b")),
                        Op::PutOutbox(8, outbox_record("c")),
                        Op::DeleteOutbox(8),
                        Op::PutSeen {
                            source: "a".into(),
                            id: 9,
                            record: SeenRecord {
                                expires_unix_ms: 5,
                                request_hops: 2,
                                state: SeenState::Done(Outcome::Delivered),
                            },
                        },
                        Op::Inbox(inbox_record(1, 100)),
                    ],
                    true,
                    200,
                )
                .unwrap();
        }
        let (store, restored) = Store::open(dir.path(), RETAIN).unwrap();
        assert_eq!(restored.outbox, vec![(7, outbox_record("b"))]);
        assert_eq!(restored.seen.len(), 1);
        assert_eq!(restored.seen[0].0, "a");
        assert_eq!(restored.seen[0].1, 9);
        let all = store
            .inbox(&InboxQuery {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all, vec![inbox_record(1, 100)]);
    }

    #[test]
    fn the_inbox_keeps_the_newest_within_its_limits_and_answers_queries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = Store::open(dir.path(), RETAIN).unwrap();
        for n in 1..=5 {
            store
                .apply(&[Op::Inbox(inbox_record(n, n * 1000))], n % 2 == 0, 5_000)
                .unwrap();
        }
        let q = |limit, since, from: Option<&str>| InboxQuery {
            limit,
            since_unix_ms: since,
            from: from.map(String::from),
            topic: None,
        };
        let ids = |v: Vec<InboxRecord>| v.iter().map(|r| r.message_id).collect::<Vec<_>>();
        assert_eq!(ids(store.inbox(&q(10, None, None)).unwrap()), vec![3, 4, 5]);
        assert_eq!(ids(store.inbox(&q(2, None, None)).unwrap()), vec![4, 5]);
        assert_eq!(
            ids(store.inbox(&q(10, Some(4000), None)).unwrap()),
            vec![4, 5]
        );
        assert_eq!(
            ids(store.inbox(&q(10, None, Some("odd"))).unwrap()),
            vec![3, 5]
        );
        assert_eq!(store.inbox_size(), (3, 12));
        // Age: an hour later, only what arrives now is kept.
        store
            .apply(&[Op::Inbox(inbox_record(6, 3_700_000))], true, 3_700_000)
            .unwrap();
        assert_eq!(ids(store.inbox(&q(10, None, None)).unwrap()), vec![6]);
        drop(store);
        let (store, _) = Store::open(dir.path(), RETAIN).unwrap();
        assert_eq!(store.inbox_size(), (1, 6));
    }

    /// Crash recovery: a writer killed (SIGKILL) in the middle of writing loses no record whose
    /// commit returned, three times over; the store reopens each time. The writer is this test
    /// binary run again as a child.
    #[test]
    fn a_writer_killed_while_writing_loses_no_acknowledged_record() {
        use std::io::{BufRead, Write};
        const CHILD: &str = "MSGTIER_STORE_WRITER_DIR";
        if let Ok(dir) = std::env::var(CHILD) {
            let (mut store, restored) = Store::open(Path::new(&dir), RETAIN).unwrap();
            let mut out = std::io::stdout().lock();
            for id in restored.outbox.len() as u64.. {
                store
                    .apply(&[Op::PutOutbox(id, outbox_record("t"))], true, 0)
                    .unwrap();
                writeln!(out, "acked {id}").unwrap();
                out.flush().unwrap();
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut acked = 0u64;
        for round in 1..=3u64 {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "store::tests::a_writer_killed_while_writing_loses_no_acknowledged_record",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD, dir.path())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
            for line in lines {
                if let Some(n) = line.unwrap().strip_prefix("acked ") {
                    acked = acked.max(n.parse::<u64>().unwrap() + 1);
                    if acked >= 150 * round {
                        break;
                    }
                }
            }
            child.kill().unwrap(); // SIGKILL, in the middle of its next commit or so
            child.wait().unwrap();
            let (_, restored) = Store::open(dir.path(), RETAIN).expect("reopens after a kill");
            let ids: std::collections::BTreeSet<u64> =
                restored.outbox.iter().map(|(id, _)| *id).collect();
            assert!(
                (0..acked).all(|id| ids.contains(&id)),
                "round {round}: {acked} acknowledged, {} on disk",
                ids.len()
            );
        }
    }

    #[test]
    fn a_second_process_cannot_open_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), RETAIN).unwrap();
        let err = Store::open(dir.path(), RETAIN)
            .err()
            .expect("second open refused");
        let text = err.to_string();
        assert!(text.contains(STORE_FILE_NAME), "{text}");
    }

    #[test]
    fn a_store_of_another_schema_or_with_a_damaged_record_is_refused_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut store, _) = Store::open(dir.path(), RETAIN).unwrap();
            store
                .apply(&[Op::PutOutbox(1, outbox_record("b"))], true, 0)
                .unwrap();
            let txn = store.db.begin_write().unwrap();
            txn.open_table(OUTBOX)
                .unwrap()
                .insert(2, &[0xc1u8][..])
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path(), RETAIN)
            .err()
            .expect("damaged record refused");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("outbox record 2"), "{err}");
        // Nothing was removed: the good record is still there.
        {
            let db = Database::create(dir.path().join(STORE_FILE_NAME)).unwrap();
            let txn = db.begin_read().unwrap();
            assert_eq!(txn.open_table(OUTBOX).unwrap().len().unwrap(), 2);
            drop(txn);
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("schema", 99).unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path(), RETAIN)
            .err()
            .expect("other schema refused");
        assert!(matches!(err, StoreError::Schema { found: 99, .. }), "{err}");
    }
}
