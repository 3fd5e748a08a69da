//! The cluster's state on redb: objects under `Kind/namespace/name`, one
//! global revision, compare-and-swap on resourceVersion, lists filtered by
//! label selectors, watches from a revision, module bytes and join tokens.
//!
//! Every write is a [`Command`] applied by one deterministic state machine,
//! so that a replicated log can carry the commands and apply them on every
//! master in the same order. `docs/store.md` describes the on-disk format
//! and the guarantees.
//!
//! Layout:
//! - `command`: [`Command`], [`Outcome`], [`TokenRecord`]: the writes.
//! - `error`: [`StoreError`].
//! - `rules`: pure decisions (keys, compare-and-swap, how an update merges,
//!   when `generation` grows, what a module upload must be).
//! - `machine`: applies one command to the tables of one write transaction.
//! - `tables`: every redb table and how its values are encoded.
//! - `watch`: [`Watch`], history first, then live events.
//! - `replica`: what raft needs: bookkeeping applied with commands, whole-state
//!   [`Image`]s for snapshots.

mod command;
mod error;
mod machine;
mod replica;
mod rules;
pub(crate) mod tables;
#[cfg(test)]
mod tests;
mod watch;

pub use command::{Command, Outcome, TokenRecord, TokenUsage, UPLOAD_CHUNK};
pub use error::StoreError;
pub use replica::{decode_backup, encode_backup, Image, RaftMark, RaftMeta};
pub use watch::Watch;

use error::db;
use flotilla_api::objects::{key_prefix, object_key, Kind, Object};
use flotilla_api::protocol::WatchEvent;
use flotilla_api::selector::Selector;
use machine::{read_meta, Machine};
use redb::{Database, ReadTransaction, ReadableDatabase};
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tables::{decode, meta, HISTORY, META, MODULES, OBJECTS, RAFT, TOKENS};
use tokio::sync::broadcast;
use watch::Live;

/// Live events buffered for each watcher; one that falls further behind
/// catches up from the history table instead.
const LIVE_CAPACITY: usize = 1024;

/// The cluster's state; cheap to clone (all clones share one database).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// How many recent revisions the history table keeps for watches.
    history: u64,
    live: broadcast::Sender<Live>,
    /// Held from the start of a write until its events are sent, so that live
    /// events go out in revision order even when threads write concurrently.
    write: Mutex<()>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("history", &self.inner.history)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens or creates the redb database at `path`. `history` = how many of
    /// the most recent revisions of change history to keep for watches (e.g.
    /// 10_000); if it is smaller than last time, older history is dropped now.
    pub fn open(path: &Path, history: u64) -> Result<Store, StoreError> {
        if history == 0 {
            return Err(StoreError::Invalid(
                "the store must keep at least one revision of history".into(),
            ));
        }
        // redb would create the file with the default mode; it holds pod env values.
        flotilla_api::perms::create_file(path).map_err(|e| {
            StoreError::Db(format!(
                "creating {}: {e} (does this user own the data directory?)",
                path.display()
            ))
        })?;
        let database = Database::create(path).map_err(|e| {
            StoreError::Db(format!(
                "opening {}: {e} (is another master using this data directory?)",
                path.display()
            ))
        })?;
        let txn = database
            .begin_write()
            .map_err(db("starting the first write transaction"))?;
        {
            let mut machine = Machine::open(&txn)?;
            machine.check_format()?;
            machine.compact(history)?;
        }
        // Created up front so that reads of the raft bookkeeping never meet a
        // missing table (files written before raft have none).
        txn.open_table(RAFT).map_err(db("opening the raft table"))?;
        txn.commit().map_err(db("committing the opened tables"))?;
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Ok(Store {
            inner: Arc::new(Inner {
                db: database,
                path: path.to_path_buf(),
                history,
                live,
                write: Mutex::new(()),
            }),
        })
    }

    /// Starts a write transaction while holding the writer lock, so that
    /// transactions and the live events they send happen in revision order.
    pub(crate) fn begin_write(
        &self,
    ) -> Result<(std::sync::MutexGuard<'_, ()>, redb::WriteTransaction), StoreError> {
        let serial = self
            .inner
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(db("starting a write transaction"))?;
        Ok((serial, txn))
    }

    /// Applies one command in one redb write transaction (durable on return),
    /// bumps the global revision for each object written, records the changes
    /// in the history table, compacts history older than the window, then
    /// notifies live watchers. If it fails, nothing was written.
    ///
    /// Blocking (it waits for the disk): from async code call it in
    /// `spawn_blocking`, or directly if a short stall is acceptable.
    pub fn apply(&self, cmd: Command) -> Result<Outcome, StoreError> {
        // A poisoned lock guards no data: the state is in redb, whose
        // transaction the panicking writer never committed.
        let (_serial, txn) = self.begin_write()?;
        let (outcome, changed, events) = {
            let mut machine = Machine::open(&txn)?;
            let outcome = machine.apply(cmd)?;
            let (changed, events) = machine.finish(self.inner.history)?;
            (outcome, changed, events)
        };
        if changed {
            txn.commit().map_err(db("committing a write"))?;
        } else {
            txn.abort()
                .map_err(db("ending a write that changed nothing"))?;
        }
        for event in events {
            // An error only means nobody is watching right now.
            let _ = self.inner.live.send(Live::Event(event));
        }
        Ok(outcome)
    }

    /// One object, if it exists.
    pub fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Object>, StoreError> {
        let txn = self.read()?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(db("opening the objects table"))?;
        let key = object_key(kind, namespace, name);
        match objects.get(key.as_str()).map_err(db("reading an object"))? {
            Some(v) => decode("objects", &key, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Objects of a kind (namespace `None` = all), filtered by the selector on
    /// `metadata.labels`, sorted by key; plus the revision they were read at.
    pub fn list(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<(u64, Vec<Object>), StoreError> {
        let txn = self.read()?;
        let revision = read_meta(
            &txn.open_table(META).map_err(db("opening the meta table"))?,
            meta::REVISION,
        )?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(db("opening the objects table"))?;
        let prefix = key_prefix(kind, namespace);
        let mut out = Vec::new();
        for entry in objects
            .range(prefix.as_str()..)
            .map_err(db("listing objects"))?
        {
            let (k, v) = entry.map_err(db("listing objects"))?;
            let key = k.value();
            if !key.starts_with(&prefix) {
                break;
            }
            let object: Object = decode("objects", &key, v.value())?;
            if selector.matches(&object.meta().labels) {
                out.push(object);
            }
        }
        Ok((revision, out))
    }

    /// The revision of the last write (0 for a new store).
    pub fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        read_meta(
            &txn.open_table(META).map_err(db("opening the meta table"))?,
            meta::REVISION,
        )
    }

    /// Change events with revision > `from_revision` (0 = only changes after
    /// now), in revision order, for all kinds. `TooOld` if the history no
    /// longer reaches back to `from_revision` (list again, then watch from
    /// the list's revision).
    pub fn watch(&self, from_revision: u64) -> Result<Watch, StoreError> {
        // Subscribe before reading: every event committed from here on
        // reaches the channel, and every earlier one is in the history.
        let live = self.inner.live.subscribe();
        let txn = self.read()?;
        let meta_table = txn.open_table(META).map_err(db("opening the meta table"))?;
        let revision = read_meta(&meta_table, meta::REVISION)?;
        let compacted = read_meta(&meta_table, meta::COMPACTED)?;
        if from_revision != 0 && from_revision < compacted {
            return Err(StoreError::TooOld {
                requested: from_revision,
                oldest: compacted,
            });
        }
        let start = if from_revision == 0 {
            revision
        } else {
            from_revision
        };
        Ok(Watch::new(self.clone(), live, start))
    }

    /// Module bytes by digest (`sha256:<hex>`).
    pub fn module_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let modules = txn
            .open_table(MODULES)
            .map_err(db("opening the modules table"))?;
        let bytes = modules.get(digest).map_err(db("reading module bytes"))?;
        Ok(bytes.map(|v| v.value().to_vec()))
    }

    /// A join token by id.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let txn = self.read()?;
        let tokens = txn
            .open_table(TOKENS)
            .map_err(db("opening the tokens table"))?;
        match tokens.get(id).map_err(db("reading a token"))? {
            Some(v) => decode("tokens", &id, v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` history events after revision `after`, oldest first;
    /// `TooOld` if events after it were compacted away.
    fn history_after(&self, after: u64, limit: usize) -> Result<Vec<WatchEvent>, StoreError> {
        let txn = self.read()?;
        let compacted = read_meta(
            &txn.open_table(META).map_err(db("opening the meta table"))?,
            meta::COMPACTED,
        )?;
        if after < compacted {
            return Err(StoreError::TooOld {
                requested: after,
                oldest: compacted,
            });
        }
        let history = txn
            .open_table(HISTORY)
            .map_err(db("opening the history table"))?;
        let mut out = Vec::new();
        for entry in history
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map_err(db("reading the history"))?
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = entry.map_err(db("reading the history"))?;
            out.push(decode("history", &k.value(), v.value())?);
        }
        Ok(out)
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.inner
            .db
            .begin_read()
            .map_err(db("starting a read transaction"))
    }

    /// Writes raw bytes under an object key, bypassing the state machine, to
    /// test how damaged values are reported.
    #[cfg(test)]
    fn write_raw_object(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let txn = self
            .inner
            .db
            .begin_write()
            .map_err(db("starting a write transaction"))?;
        {
            let mut objects = txn
                .open_table(OBJECTS)
                .map_err(db("opening the objects table"))?;
            objects
                .insert(key, bytes)
                .map_err(db("writing raw bytes"))?;
        }
        txn.commit().map_err(db("committing raw bytes"))
    }
}
