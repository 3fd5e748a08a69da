//! The raft log on its own redb file ([`LOG_FILE`](super::LOG_FILE)):
//! entries by index, plus the vote, the committed log id and the last purged
//! log id.
//!
//! Appends are group-committed: an append puts its entries in a pending
//! buffer that readers see at once and returns; a flusher thread writes
//! everything pending in one durable redb transaction, then tells openraft,
//! through each append's callback, that those entries are on disk. Under
//! load many appends share one transaction and one fsync; raft's core never
//! waits for the disk to take the next client write. The vote, truncations
//! and purges are durable before their call returns; truncations and purges
//! first let the flusher write out everything before them.

use super::{
    blocking, encode, failure, storage_error, Entry, LogId, RaftStorageError, RaftStoreError,
    TypeConfig,
};
use crate::store::tables::{decode, raft_log_meta, RAFT_LOG, RAFT_LOG_META};
use crate::store::StoreError;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, StorageError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::{self, Debug};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The raft log; cheap to clone (clones share the file), which is also how
/// openraft gets its separate log readers.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Entries appended but not yet written to the file, by index.
    pending: std::sync::Mutex<std::collections::BTreeMap<u64, Entry>>,
    /// The committed log id raft last saved (None: not in this process); it
    /// reaches the file with the next flush of entries.
    committed: std::sync::Mutex<Option<Option<LogId>>>,
    /// Work for the flusher, in order.
    flushes: std::sync::Mutex<std::sync::mpsc::Sender<Flush>>,
}

/// What the flusher is asked to do.
enum Flush {
    /// Write what is pending; then report this append as flushed.
    Append(LogFlushed<TypeConfig>),
    /// Write what is pending, then say so (before a truncation or purge).
    Barrier(std::sync::mpsc::SyncSender<Result<(), String>>),
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens or creates the raft log at `path` (conventionally
    /// `<data dir>/raft-log.redb`).
    pub fn open(path: &Path) -> Result<LogStore, RaftStoreError> {
        let fail = |message: String| RaftStoreError::Log {
            path: path.to_path_buf(),
            message,
        };
        let db = Database::create(path).map_err(|e| fail(format!("opening: {e}")))?;
        let txn = db
            .begin_write()
            .map_err(|e| fail(format!("starting the first write transaction: {e}")))?;
        // Created up front so that reads never meet a missing table.
        txn.open_table(RAFT_LOG)
            .map_err(|e| fail(format!("opening the log table: {e}")))?;
        txn.open_table(RAFT_LOG_META)
            .map_err(|e| fail(format!("opening the log meta table: {e}")))?;
        txn.commit()
            .map_err(|e| fail(format!("committing the opened tables: {e}")))?;
        let (flushes, pending) = std::sync::mpsc::channel();
        let store = LogStore {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
                pending: std::sync::Mutex::default(),
                committed: std::sync::Mutex::default(),
                flushes: std::sync::Mutex::new(flushes),
            }),
        };
        // The flusher holds the store weakly: it ends when the store is dropped
        // (the channel closes with the last clone).
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(weak, pending))
            .map_err(|e| fail(format!("starting the flusher thread: {e}")))?;
        Ok(store)
    }

    /// Writes every pending entry in one durable transaction, then drops
    /// them from the buffer (readers find them in the file from then on).
    fn flush(&self) -> Result<(), StoreError> {
        // The committed id first: it names entries appended before it was
        // saved, which the batch gathered next holds (or an earlier flush
        // wrote), so the file never has it ahead of its entries.
        let committed = *self
            .inner
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let batch: Vec<Entry> = self.pending().values().cloned().collect();
        let Some(last) = batch.last().map(|e| e.log_id.index) else {
            // Nothing pending (a barrier before a truncation or purge): the
            // committed id alone, if raft saved one.
            return match committed {
                Some(_) => self.append_now(&[], committed),
                None => Ok(()),
            };
        };
        self.append_now(&batch, committed)?;
        self.pending().retain(|index, _| *index > last);
        Ok(())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, Entry>> {
        self.inner
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits until the flusher has written everything appended before.
    fn drain(&self) -> Result<(), StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let sent = self
            .inner
            .flushes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(Flush::Barrier(tx));
        if sent.is_err() {
            return Err(StoreError::Db("raft log: the flusher has stopped".into()));
        }
        rx.recv()
            .map_err(|_| StoreError::Db("raft log: the flusher has stopped".into()))?
            .map_err(StoreError::Db)
    }

    /// A value of the meta table.
    fn read_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db("starting a read"))?;
        let table = txn
            .open_table(RAFT_LOG_META)
            .map_err(db("opening the log meta table"))?;
        let value = table.get(key).map_err(db("reading the log meta table"))?;
        match value {
            Some(v) => decode("raft_log_meta", &key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Writes one value of the meta table, durably unless `durability` says otherwise.
    fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = encode(key, value)?;
        let mut txn = self
            .inner
            .db
            .begin_write()
            .map_err(db("starting a write"))?;
        txn.set_durability(durability)
            .map_err(db("choosing the durability of a write"))?;
        {
            let mut table = txn
                .open_table(RAFT_LOG_META)
                .map_err(db("opening the log meta table"))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(db("writing the log meta table"))?;
        }
        txn.commit().map_err(db("committing the log meta table"))
    }

    /// The entries whose index is in `range`, in order.
    /// The entries in `range`: from the file, and those still pending. The
    /// pending ones are looked at first: the flusher writes an entry to the
    /// file before it drops it from the buffer, so it is in one or the other.
    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StoreError> {
        let pending: Vec<Entry> = self
            .pending()
            .range(range)
            .map(|(_, e)| e.clone())
            .collect();
        let txn = self.inner.db.begin_read().map_err(db("starting a read"))?;
        let table = txn
            .open_table(RAFT_LOG)
            .map_err(db("opening the log table"))?;
        let mut out = std::collections::BTreeMap::new();
        for row in table.range(range).map_err(db("reading the log"))? {
            let (k, v) = row.map_err(db("reading the log"))?;
            out.insert(k.value(), decode("raft_log", &k.value(), v.value())?);
        }
        for e in pending {
            out.insert(e.log_id.index, e);
        }
        Ok(out.into_values().collect())
    }

    /// The log id of the last entry in the table, if any.
    fn last_entry_id(&self) -> Result<Option<LogId>, StoreError> {
        if let Some((_, e)) = self.pending().last_key_value() {
            return Ok(Some(e.log_id));
        }
        let txn = self.inner.db.begin_read().map_err(db("starting a read"))?;
        let table = txn
            .open_table(RAFT_LOG)
            .map_err(db("opening the log table"))?;
        let last = match table.last().map_err(db("reading the log"))? {
            Some((k, v)) => {
                let entry: Entry = decode("raft_log", &k.value(), v.value())?;
                Some(entry.log_id)
            }
            None => None,
        };
        Ok(last)
    }

    /// Writes `entries` in one durable transaction.
    /// With them, the committed log id raft saved last, if any.
    fn append_now(
        &self,
        entries: &[Entry],
        committed: Option<Option<LogId>>,
    ) -> Result<(), StoreError> {
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(db("starting a write"))?;
        if let Some(committed) = committed {
            let bytes = encode("the committed log id", &committed)?;
            let mut meta = txn
                .open_table(RAFT_LOG_META)
                .map_err(db("opening the log meta table"))?;
            meta.insert(raft_log_meta::COMMITTED, bytes.as_slice())
                .map_err(db("writing the committed log id"))?;
        }
        {
            let mut table = txn
                .open_table(RAFT_LOG)
                .map_err(db("opening the log table"))?;
            for entry in entries {
                let bytes = encode("a log entry", entry)?;
                table
                    .insert(entry.log_id.index, bytes.as_slice())
                    .map_err(db("writing a log entry"))?;
            }
        }
        txn.commit().map_err(db("committing log entries"))
    }

    /// Removes the entries with index ≥ `from`.
    fn truncate_now(&self, from: u64) -> Result<(), StoreError> {
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(db("starting a write"))?;
        {
            let mut table = txn
                .open_table(RAFT_LOG)
                .map_err(db("opening the log table"))?;
            table
                .retain_in(from.., |_, _| false)
                .map_err(db("truncating the log"))?;
        }
        txn.commit().map_err(db("committing a truncation"))
    }

    /// Records `upto` as purged and removes the entries up to it, together.
    fn purge_now(&self, upto: LogId) -> Result<(), StoreError> {
        let bytes = encode("the last purged log id", &upto)?;
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(db("starting a write"))?;
        {
            let mut meta = txn
                .open_table(RAFT_LOG_META)
                .map_err(db("opening the log meta table"))?;
            meta.insert(raft_log_meta::LAST_PURGED, bytes.as_slice())
                .map_err(db("writing the last purged log id"))?;
            let mut table = txn
                .open_table(RAFT_LOG)
                .map_err(db("opening the log table"))?;
            table
                .retain_in(..=upto.index, |_, _| false)
                .map_err(db("purging the log"))?;
        }
        txn.commit().map_err(db("committing a purge"))
    }
}

/// Maps a redb error to [`StoreError::Db`], saying what the log was doing.
/// Writes what is pending whenever appends are reported, in batches, and
/// answers each append's callback (and each barrier) once its entries are on
/// disk. Runs until the store is gone.
fn flusher(store: std::sync::Weak<Inner>, work: std::sync::mpsc::Receiver<Flush>) {
    while let Ok(first) = work.recv() {
        let mut batch = vec![first];
        batch.extend(work.try_iter());
        let result = match store.upgrade() {
            Some(inner) => LogStore { inner }.flush().map_err(|e| e.to_string()),
            None => Err("raft log: closed before a flush".to_string()),
        };
        for item in batch {
            match item {
                Flush::Append(callback) => callback.log_io_completed(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| std::io::Error::other(e.clone())),
                ),
                Flush::Barrier(done) => {
                    let _ = done.send(result.clone());
                }
            }
        }
    }
}

fn db<E: fmt::Display>(doing: &'static str) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Db(format!("raft log: {doing}: {e}"))
}

fn read_logs(e: StoreError) -> RaftStorageError {
    storage_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_logs(e: StoreError) -> RaftStorageError {
    storage_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        self.entries(range).map_err(read_logs)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged_log_id: Option<LogId> = self
            .read_meta(raft_log_meta::LAST_PURGED)
            .map_err(read_logs)?;
        // With every entry purged the log ends where the purge did.
        let last_log_id = self
            .last_entry_id()
            .map_err(read_logs)?
            .or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        let vote = *vote;
        blocking(ErrorSubject::Vote, move || {
            this.write_meta(raft_log_meta::VOTE, &vote, Durability::Immediate)
                .map_err(|e| failure(ErrorSubject::Vote, ErrorVerb::Write, e))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        self.read_meta(raft_log_meta::VOTE)
            .map_err(|e| storage_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    // Saving `committed` lets a restarted master re-apply committed entries
    // at once instead of waiting to hear from a leader. It is written without
    // an fsync of its own (it changes with every commit, and raft only needs
    // it not to run ahead of the log): redb makes it durable with the next
    // durable commit of this file, and a stale value only means re-learning it.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        // Kept in memory and written with the next entries: raft only needs
        // it not to run ahead of the log, and an older one after a restart
        // only means applying fewer entries before the leader says more.
        *self
            .inner
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        if let Some(committed) = *self
            .inner
            .committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
        {
            return Ok(committed);
        }
        let committed: Option<Option<LogId>> = self
            .read_meta(raft_log_meta::COMMITTED)
            .map_err(|e| storage_error(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Readable at once from the buffer; the callback, which tells raft
        // the entries are durable, fires once the flusher has written them.
        {
            let mut pending = self.pending();
            for entry in entries {
                pending.insert(entry.log_id.index, entry);
            }
        }
        let sent = self
            .inner
            .flushes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(Flush::Append(callback));
        if let Err(std::sync::mpsc::SendError(Flush::Append(callback))) = sent {
            callback.log_io_completed(Err(std::io::Error::other(
                "the raft log's flusher has stopped",
            )));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        blocking(ErrorSubject::Logs, move || {
            this.drain()
                .and_then(|()| this.truncate_now(log_id.index))
                .map_err(|e| Box::new(write_logs(e)))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        blocking(ErrorSubject::Logs, move || {
            this.drain()
                .and_then(|()| this.purge_now(log_id))
                .map_err(|e| Box::new(write_logs(e)))
        })
        .await
    }
}
