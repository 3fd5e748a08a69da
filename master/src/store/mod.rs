//! The cluster's state on redb: objects under `Kind/namespace/name`, one
//! global revision, compare-and-swap on resourceVersion, lists filtered by
//! label selectors, watches from a revision, module bytes (kept in chunks,
//! read back a chunk at a time: [`ModuleReader`]) and join tokens.
//!
//! Every write is a [`Command`] applied by one deterministic state machine,
//! so that a replicated log can carry the commands and apply them on every
//! master in the same order. `docs/store.md` describes the on-disk format
//! and the guarantees.
//!
//! Layout:
//! - `command`: [`Command`], [`Outcome`], [`TokenRecord`]: the writes.
//! - `error`: [`StoreError`], and [`Refusal`], its caller errors.
//! - `rules`: pure decisions (keys, compare-and-swap, how an update merges,
//!   when `generation` grows, what a module upload must be).
//! - `machine`: applies one command to the tables of one write transaction.
//! - `tables`: every redb table and how its keys and values are encoded
//!   (every value sealed with a checksum over its key and bytes).
//! - `format`: what opening checks (format, tables, every value) and the
//!   migration of format 1 files.
//! - `hash`: the state hash masters compare, and the mark of a master whose
//!   state differs ([`StateChecks`]).
//! - `watch`: [`Watch`], history first, then live events.
//! - `replica`: what raft needs: bookkeeping applied with commands, whole-state
//!   [`Image`]s for snapshots.

mod command;
mod error;
mod format;
mod hash;
mod machine;
mod replica;
mod rules;
pub(crate) mod tables;
#[cfg(test)]
mod tests;
mod watch;

pub use command::{
    Command, Outcome, TokenRecord, TokenUsage, STORED_CHUNK, UPLOAD_CHUNK, UPLOAD_PIECE,
};
pub use error::{Refusal, StoreError};
pub use hash::{HashAt, StateChecks, StateDigest, StateHash, StateHasher};
pub use replica::{decode_backup, encode_backup, Image, RaftMark, RaftMeta};
pub use watch::Watch;

use error::db;
use flotilla_api::objects::{key_prefix, module_name, object_key, Kind, Object};
use flotilla_api::protocol::WatchEvent;
use flotilla_api::selector::Selector;
use machine::{read_counter, Machine};
use redb::{Database, ReadTransaction, ReadableDatabase};
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tables::{
    chunk_key, counters, decode_value, history_key, unseal, COUNTERS, HISTORY, MODULE_CHUNKS,
    OBJECTS, TOKENS,
};
use tokio::sync::broadcast;
use watch::Live;

/// Live events buffered for each watcher; one that falls further behind
/// catches up from the history table instead.
const LIVE_CAPACITY: usize = 1024;

/// redb's page cache (reads and not yet written pages). redb's default, 1
/// GiB, let a master on a small machine grow by every module it stored or
/// served. The leader's controllers keep every object in memory already
/// (`controllers::runtime::Cache`), module chunks are read once per
/// download, and what the cache misses the kernel's page cache of the file
/// still holds (without counting in the master's RSS). At 32 MiB, a
/// master with 5,000 nodes kept 28 MiB of pages here, and scheduled 10,000
/// pods onto them no faster than at 8 (docs/testing.md, "Scheduling at
/// scale").
const CACHE_BYTES: usize = 8 << 20;

/// Free space in `state.redb` worth compacting at open: at least this many
/// bytes, and at least a quarter of the file. redb reuses freed pages for
/// new ones but never gives them back to the file system by itself.
const COMPACT_AT: u64 = 32 << 20;

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
    /// State hashes taken for the masters to compare, and whether this
    /// master's state was found to differ (then reads are refused).
    checks: StateChecks,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("history", &self.inner.history)
            .finish_non_exhaustive()
    }
}

/// An error found in the file at `path` while opening it: says where, and
/// what to do.
fn in_file(path: &Path, e: StoreError) -> StoreError {
    let dir = path
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| ".".into());
    match e {
        StoreError::Corrupt(m) => StoreError::Corrupt(format!(
            "{}: {m}. The master does not start on damaged data and leaves the file as it \
             is. Check the disk first (dmesg, smartctl). Then either let this master catch \
             up from the other masters: remove it from the cluster (`flotilla cluster remove \
             ID`; its id is in {dir}/node-id), move {dir} aside, and join it anew \
             (`flotilla token create --master`, then `flotilla master --join ADDRESS --token \
             TOKEN`); or, with no other master, restore a backup (`flotilla master --restore \
             BACKUP` on a new data directory holding only the cluster CA). \
             docs/operations.md (\"A corruption error at start-up\") has the steps",
            path.display()
        )),
        other => other,
    }
}

/// Gives `state.redb`'s free space back to the file system when there is
/// much of it (after a format 2 file was moved to chunks, or many modules
/// were collected). Only at open: redb compacts with no transaction open.
fn compact_file(path: &Path, database: &mut Database, free: u64) -> Result<(), StoreError> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if free < COMPACT_AT || free < size / 4 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    database
        .compact()
        .map_err(db(format!("compacting {}", path.display())))?;
    tracing::info!(
        path = %path.display(),
        before = size,
        after = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        took = ?started.elapsed(),
        "compacted the store: gave its free space back"
    );
    Ok(())
}

/// Space in `state.redb`, from [`Store::space`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes in pages that hold data.
    pub allocated: u64,
    /// Bytes of free pages inside the file.
    pub free: u64,
}

/// The bytes of one stored module, a chunk at a time
/// ([`Store::module_reader`]). Each chunk is read in a read transaction of
/// its own: a slow download holds no snapshot of the file open (which would
/// keep redb from reusing pages freed meanwhile), and never more than one
/// chunk in memory. A module's bytes never change (they are named by their
/// digest), so chunks read at different times belong together.
#[derive(Debug)]
pub struct ModuleReader {
    store: Store,
    digest: String,
    size: u64,
    offset: u64,
}

impl ModuleReader {
    /// The module's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The next chunk (at most [`STORED_CHUNK`] bytes), `None` after the
    /// last. `NotFound` if the module was deleted while being read.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        if self.offset >= self.size {
            return Ok(None);
        }
        let store = &self.store;
        store.inner.checks.serving()?;
        let txn = store.read()?;
        let chunks = txn
            .open_table(MODULE_CHUNKS)
            .map_err(db("opening the module_chunks table"))?;
        let key = chunk_key(&self.digest, self.offset);
        let Some(v) = chunks
            .get(key.as_bytes())
            .map_err(db("reading a module chunk"))?
        else {
            let object = object_key(Kind::Module, "", &module_name(&self.digest));
            let objects = txn
                .open_table(OBJECTS)
                .map_err(db("opening the objects table"))?;
            if objects
                .get(object.as_bytes())
                .map_err(db("reading an object"))?
                .is_none()
            {
                return Err(StoreError::not_found(format!(
                    "modules/{} (deleted while it was read)",
                    module_name(&self.digest)
                )));
            }
            return Err(tables::corrupt(
                "module_chunks",
                key.as_bytes(),
                format!(
                    "module {} has no chunk at byte {} of {}",
                    self.digest, self.offset, self.size
                ),
            ));
        };
        let bytes = unseal("module_chunks", key.as_bytes(), v.value())?;
        let end = self.offset + bytes.len() as u64;
        if bytes.is_empty() || end > self.size {
            return Err(tables::corrupt(
                "module_chunks",
                key.as_bytes(),
                format!(
                    "a chunk of {} bytes does not fit a module of {} bytes",
                    bytes.len(),
                    self.size
                ),
            ));
        }
        self.offset = end;
        Ok(Some(bytes.to_vec()))
    }
}

impl Store {
    /// Opens or creates the redb database at `path`. `history` = how many of
    /// the most recent revisions of change history to keep for watches (e.g.
    /// 10_000); if it is smaller than last time, older history is dropped now.
    pub fn open(path: &Path, history: u64) -> Result<Store, StoreError> {
        if history == 0 {
            return Err(StoreError::invalid(
                "the store must keep at least one revision of history",
            ));
        }
        // redb would create the file with the default mode; it holds pod env values.
        flotilla_api::perms::create_file(path).map_err(|source| StoreError::Io {
            doing: format!(
                "creating {} (does this user own the data directory?)",
                path.display()
            )
            .into(),
            source,
        })?;
        let mut database = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| StoreError::Db {
                doing: format!(
                    "opening {} (is another master using this data directory?)",
                    path.display()
                )
                .into(),
                source: Box::new(e.into()),
            })?;
        let opened = format::prepare(&database).map_err(|e| in_file(path, e))?;
        if opened.migrated {
            tracing::info!(
                path = %path.display(),
                "moved the store to format {}: every value carries a checksum, module bytes are kept in chunks, objects are self-describing",
                tables::FORMAT_VERSION
            );
        }
        // Every row is read and checked before anything is served: a byte
        // changed on the disk stops the master here rather than reach a client.
        let started = std::time::Instant::now();
        let verified = format::verify(
            &database
                .begin_read()
                .map_err(db("starting a read transaction"))?,
        )
        .map_err(|e| in_file(path, e))?;
        tracing::debug!(
            rows = verified.rows,
            bytes = verified.bytes,
            took = ?started.elapsed(),
            "checked every value of the store"
        );
        let txn = database
            .begin_write()
            .map_err(db("starting the first write transaction"))?;
        {
            let mut machine = Machine::open(&txn)?;
            machine.compact(history)?;
        }
        let stats = txn.stats().map_err(db("reading the file's statistics"))?;
        txn.commit().map_err(db("committing the opened tables"))?;
        compact_file(path, &mut database, stats.fragmented_bytes())?;
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Ok(Store {
            inner: Arc::new(Inner {
                db: database,
                path: path.to_path_buf(),
                history,
                live,
                write: Mutex::new(()),
                checks: StateChecks::default(),
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
            let _ = self.inner.live.send(Live::Event(Arc::new(event)));
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
        self.inner.checks.serving()?;
        let txn = self.read()?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(db("opening the objects table"))?;
        let key = object_key(kind, namespace, name);
        match objects
            .get(key.as_bytes())
            .map_err(db("reading an object"))?
        {
            Some(v) => decode_value("objects", key.as_bytes(), v.value()).map(Some),
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
        self.inner.checks.serving()?;
        let txn = self.read()?;
        let revision = read_counter(&self.counters(&txn)?, counters::REVISION)?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(db("opening the objects table"))?;
        let prefix = key_prefix(kind, namespace);
        let mut out = Vec::new();
        for entry in objects
            .range(prefix.as_bytes()..)
            .map_err(db("listing objects"))?
        {
            let (k, v) = entry.map_err(db("listing objects"))?;
            let key = k.value();
            if !key.starts_with(prefix.as_bytes()) {
                break;
            }
            let object: Object = decode_value("objects", key, v.value())?;
            if selector.matches(&object.meta().labels) {
                out.push(object);
            }
        }
        Ok((revision, out))
    }

    /// The revision of the last write (0 for a new store).
    pub fn revision(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        read_counter(&self.counters(&txn)?, counters::REVISION)
    }

    /// Change events with revision > `from_revision` (0 = only changes after
    /// now), in revision order, for all kinds. `TooOld` if the history no
    /// longer reaches back to `from_revision` (list again, then watch from
    /// the list's revision).
    pub fn watch(&self, from_revision: u64) -> Result<Watch, StoreError> {
        // Subscribe before reading: every event committed from here on
        // reaches the channel, and every earlier one is in the history.
        self.inner.checks.serving()?;
        let live = self.inner.live.subscribe();
        let txn = self.read()?;
        let counters_table = self.counters(&txn)?;
        let revision = read_counter(&counters_table, counters::REVISION)?;
        let compacted = read_counter(&counters_table, counters::COMPACTED)?;
        if from_revision != 0 && from_revision < compacted {
            return Err(StoreError::too_old(from_revision, compacted));
        }
        let start = if from_revision == 0 {
            revision
        } else {
            from_revision
        };
        Ok(Watch::new(self.clone(), live, start))
    }

    /// A stored module's bytes by digest (`sha256:<hex>`), whole. For
    /// tests and small modules; downloads read a chunk at a time
    /// ([`Store::module_reader`]).
    pub fn module_bytes(&self, digest: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(mut reader) = self.module_reader(digest)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        while let Some(chunk) = reader.next_chunk()? {
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(bytes))
    }

    /// Reads the bytes of the stored module `digest` a chunk at a time
    /// (`None` if no such module is stored; staged uploads are not served).
    pub fn module_reader(&self, digest: &str) -> Result<Option<ModuleReader>, StoreError> {
        let Some(Object::Module(m)) = self.get(Kind::Module, "", &module_name(digest))? else {
            return Ok(None);
        };
        Ok(Some(ModuleReader {
            store: self.clone(),
            digest: digest.to_string(),
            size: m.spec.size,
            offset: 0,
        }))
    }

    /// The digests of uploads staged but not committed (chunks without a
    /// Module object), in order: a master that fails mid-upload leaves them.
    /// Reads one chunk per digest, stored modules included, not every chunk.
    pub fn staged_uploads(&self) -> Result<Vec<String>, StoreError> {
        self.inner.checks.serving()?;
        let txn = self.read()?;
        let chunks = txn
            .open_table(MODULE_CHUNKS)
            .map_err(db("opening the module_chunks table"))?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(db("opening the objects table"))?;
        let (_, staged) = hash::chunked_digests(&chunks, &objects)?;
        Ok(staged)
    }

    /// A join token by id.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.checks.serving()?;
        let txn = self.read()?;
        let tokens = txn
            .open_table(TOKENS)
            .map_err(db("opening the tokens table"))?;
        match tokens.get(id.as_bytes()).map_err(db("reading a token"))? {
            Some(v) => decode_value("tokens", id.as_bytes(), v.value()).map(Some),
            None => Ok(None),
        }
    }

    /// Every join token, by id.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        use redb::ReadableTable;
        self.inner.checks.serving()?;
        let txn = self.read()?;
        let tokens = txn
            .open_table(TOKENS)
            .map_err(db("opening the tokens table"))?;
        let mut out = Vec::new();
        for entry in tokens.iter().map_err(db("reading the tokens"))? {
            let (k, v) = entry.map_err(db("reading a token"))?;
            out.push(decode_value("tokens", k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Up to `limit` history events after revision `after`, oldest first;
    /// `TooOld` if events after it were compacted away.
    pub fn history_after(&self, after: u64, limit: usize) -> Result<Vec<WatchEvent>, StoreError> {
        self.inner.checks.serving()?;
        let txn = self.read()?;
        let compacted = read_counter(&self.counters(&txn)?, counters::COMPACTED)?;
        if after < compacted {
            return Err(StoreError::too_old(after, compacted));
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
            out.push(decode_value("history", &history_key(k.value()), v.value())?);
        }
        Ok(out)
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        self.inner
            .db
            .begin_read()
            .map_err(db("starting a read transaction"))
    }

    fn counters(
        &self,
        txn: &ReadTransaction,
    ) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        txn.open_table(COUNTERS)
            .map_err(db("opening the counters table"))
    }

    /// What redb says of the file: bytes allocated to live pages, and bytes
    /// free inside the file (reused for new pages, given back to the file
    /// system only by the compaction at open).
    pub fn space(&self) -> Result<Space, StoreError> {
        let (_serial, txn) = self.begin_write()?;
        let stats = txn.stats().map_err(db("reading the file's statistics"))?;
        txn.abort().map_err(db("ending a read of the statistics"))?;
        Ok(Space {
            allocated: stats.allocated_pages() * stats.page_size() as u64,
            free: stats.fragmented_bytes(),
        })
    }

    /// The state hashes taken for comparison, and this master's mark if its
    /// state was found to differ from the others'.
    pub fn checks(&self) -> &StateChecks {
        &self.inner.checks
    }

    /// The state hash of the last committed state (see [`StateHasher`]):
    /// reads the whole state, checking every value on the way.
    pub fn state_hash(&self) -> Result<StateDigest, StoreError> {
        hash::hash_state(&self.read()?)
    }

    /// Starts hashing the state as it is now, which the caller knows to be
    /// the state right after the raft entry at `index` (the raft state
    /// machine calls this between entries). The read transaction is taken
    /// here; the hashing runs on a thread of its own, so applying goes on
    /// meanwhile, and its result lands in [`checks`](Store::checks).
    pub fn begin_state_hash(&self, index: u64) {
        let checks_of = self.clone();
        let txn = match self.read() {
            Ok(txn) => txn,
            Err(e) => {
                self.inner.checks.set(index, HashAt::Failed(e.to_string()));
                return;
            }
        };
        self.inner.checks.set(index, HashAt::Computing);
        let spawned = std::thread::Builder::new()
            .name("state-hash".into())
            .spawn(move || {
                let at = match hash::hash_state(&txn) {
                    Ok(digest) => HashAt::Done(digest),
                    Err(e) => HashAt::Failed(e.to_string()),
                };
                drop(txn);
                checks_of.inner.checks.set(index, at);
            });
        if let Err(e) = spawned {
            self.inner.checks.set(
                index,
                HashAt::Failed(format!("cannot start a thread to hash the state: {e}")),
            );
        }
    }

    /// Writes `bytes`, sealed, under an object key, bypassing the state
    /// machine, to test how values that pass their checksum but do not
    /// decode are reported.
    #[cfg(test)]
    fn write_raw_object(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let sealed = tables::seal("objects", key.as_bytes(), bytes);
        self.write_unsealed_object(key, &sealed)
    }

    /// Writes `bytes` as they are under an object key (no checksum added).
    #[cfg(test)]
    fn write_unsealed_object(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
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
                .insert(key.as_bytes(), bytes)
                .map_err(db("writing raw bytes"))?;
        }
        txn.commit().map_err(db("committing raw bytes"))
    }
}
