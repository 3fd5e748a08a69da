//! The raft log on its own redb file ([`LOG_FILE`](super::LOG_FILE)):
//! entries by index, plus the vote, the committed log id and the last purged
//! log id. Every write is one redb transaction with `Immediate` durability,
//! so whatever a call reports done is on disk.

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
        Ok(LogStore {
            inner: Arc::new(Inner {
                db,
                path: path.to_path_buf(),
            }),
        })
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
    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db("starting a read"))?;
        let table = txn
            .open_table(RAFT_LOG)
            .map_err(db("opening the log table"))?;
        let mut out = Vec::new();
        for row in table.range(range).map_err(db("reading the log"))? {
            let (k, v) = row.map_err(db("reading the log"))?;
            out.push(decode("raft_log", &k.value(), v.value())?);
        }
        Ok(out)
    }

    /// The log id of the last entry in the table, if any.
    fn last_entry_id(&self) -> Result<Option<LogId>, StoreError> {
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
    fn append_now(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(db("starting a write"))?;
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
        let this = self.clone();
        blocking(ErrorSubject::Store, move || {
            this.write_meta(raft_log_meta::COMMITTED, &committed, Durability::None)
                .map_err(|e| failure(ErrorSubject::Store, ErrorVerb::Write, e))
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        let this = self.clone();
        blocking(ErrorSubject::Logs, move || {
            // The callback is what tells raft the entries are durable, so it
            // fires only once the transaction has committed.
            match this.append_now(&entries) {
                Ok(()) => {
                    callback.log_io_completed(Ok(()));
                    Ok(())
                }
                Err(e) => {
                    callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                    Err(Box::new(write_logs(e)))
                }
            }
        })
        .await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        blocking(ErrorSubject::Logs, move || {
            this.truncate_now(log_id.index)
                .map_err(|e| Box::new(write_logs(e)))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        blocking(ErrorSubject::Logs, move || {
            this.purge_now(log_id).map_err(|e| Box::new(write_logs(e)))
        })
        .await
    }
}
