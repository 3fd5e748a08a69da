//! The state hash: one SHA-256 over everything raft replicates, so that
//! masters can tell whether they hold the same state at the same log index
//! (as etcd's corruption check compares the hash of its key-value store).
//! Also the place where those hashes wait to be compared ([`StateChecks`])
//! and where a master found to differ is marked, so that it stops serving
//! reads.
//!
//! What is hashed: the revision, then every row of `objects`, `modules`,
//! `tokens`, `uploads` and `raft` (the applied log id and membership), table
//! by table in key order, each as its key and its value's bytes (without the
//! checksum). Left out is what each master keeps for itself: the history
//! (a master that installed a snapshot has none before it), the compacted
//! revision, and the format marker.
//!
//! `modules` and `uploads` are the tables of format 2, which the store no
//! longer has: a stored module is hashed as one row, its digest and all its
//! bytes (streamed from its chunks), and each chunk of an upload still
//! staged as a row of `uploads`. So a master of format 3 and one of format 2
//! agree on the same state while a cluster is being upgraded.
//!
//! The hash is framed so that no two different states feed SHA-256 the same
//! bytes: a tag per table and per row, and lengths before keys and values.

use super::error::{db, StoreError};
use super::tables::{
    chunk_range, corrupt, counters, decode_value, parse_chunk_key, unseal, COUNTERS, MODULE_CHUNKS,
    OBJECTS, RAFT, TOKENS,
};
use flotilla_api::objects::{module_name, object_key, Kind, Object};
use redb::{ReadOnlyTable, ReadTransaction, ReadableTable};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// A state hash.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct StateHash(pub [u8; 32]);

impl fmt::Display for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight bytes tell hashes apart in a log line; all 32 are compared.
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StateHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateHash({self})")
    }
}

/// The hash of a state and the raft bookkeeping it was taken at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDigest {
    /// Postcard of the applied log id (`None` before anything was applied).
    pub applied: Option<Vec<u8>>,
    pub hash: StateHash,
}

/// Feeds tables and rows, in order, into SHA-256. Pure: the same rows in the
/// same order give the same hash on every machine.
pub struct StateHasher {
    sha: Sha256,
}

/// Tags the framing; a new framing gets a new tag.
const HASH_TAG: &[u8] = b"flotilla state hash 1\0";

impl Default for StateHasher {
    fn default() -> Self {
        let mut sha = Sha256::new();
        sha.update(HASH_TAG);
        StateHasher { sha }
    }
}

impl StateHasher {
    /// Starts the rows of table `name`.
    pub fn table(&mut self, name: &str) {
        self.sha.update(b"T");
        self.sha.update((name.len() as u64).to_le_bytes());
        self.sha.update(name.as_bytes());
    }

    /// One row of the current table.
    pub fn row(&mut self, key: &[u8], value: &[u8]) {
        self.row_start(key, value.len() as u64);
        self.row_bytes(value);
    }

    /// Starts a row whose value of `len` bytes follows in pieces
    /// ([`row_bytes`](Self::row_bytes)); hashes as [`row`](Self::row) does.
    pub fn row_start(&mut self, key: &[u8], len: u64) {
        self.sha.update(b"R");
        self.sha.update((key.len() as u64).to_le_bytes());
        self.sha.update(key);
        self.sha.update(len.to_le_bytes());
    }

    /// The next bytes of the value of the row started last.
    pub fn row_bytes(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
    }

    pub fn finish(mut self) -> StateHash {
        self.sha.update(b"E");
        StateHash(self.sha.finalize().into())
    }
}

/// The state hash of the state `txn` sees, every value checked on the way
/// (a value that fails its checksum is an error, never hashed).
pub(crate) fn hash_state(txn: &ReadTransaction) -> Result<StateDigest, StoreError> {
    let mut hasher = StateHasher::default();
    let counters_table = txn
        .open_table(COUNTERS)
        .map_err(db("opening the counters table"))?;
    hasher.table("revision");
    if let Some(v) = counters_table
        .get(counters::REVISION.as_bytes())
        .map_err(db("reading the revision"))?
    {
        let key = counters::REVISION.as_bytes();
        hasher.row(key, unseal("counters", key, v.value())?);
    }
    let mut applied = None;
    let chunks = txn
        .open_table(MODULE_CHUNKS)
        .map_err(db("opening the module_chunks table"))?;
    let objects = txn
        .open_table(OBJECTS)
        .map_err(db("opening the objects table"))?;
    let (stored, staged) = chunked_digests(&chunks, &objects)?;
    for name in ["objects", "modules", "tokens", "uploads", "raft"] {
        hasher.table(name);
        let def = match name {
            "modules" => {
                for (digest, size) in &stored {
                    hash_module(&mut hasher, &chunks, digest, *size)?;
                }
                continue;
            }
            "uploads" => {
                for digest in &staged {
                    let (from, to) = chunk_range(digest);
                    for entry in chunks
                        .range(from.as_bytes()..to.as_bytes())
                        .map_err(db("reading a table to hash it"))?
                    {
                        let (k, v) = entry.map_err(db("reading a table to hash it"))?;
                        hasher.row(k.value(), unseal("module_chunks", k.value(), v.value())?);
                    }
                }
                continue;
            }
            "objects" => OBJECTS,
            "tokens" => TOKENS,
            _ => RAFT,
        };
        let table = txn
            .open_table(def)
            .map_err(db(format!("opening the {name} table")))?;
        for entry in table.iter().map_err(db("reading a table to hash it"))? {
            let (k, v) = entry.map_err(db("reading a table to hash it"))?;
            let payload = unseal(name, k.value(), v.value())?;
            hasher.row(k.value(), payload);
            if name == "raft" && k.value() == super::tables::raft_meta::APPLIED.as_bytes() {
                applied = Some(payload.to_vec());
            }
        }
    }
    Ok(StateDigest {
        applied,
        hash: hasher.finish(),
    })
}

/// Digests of stored modules with their size, and digests of staged uploads.
type Chunked = (Vec<(String, u64)>, Vec<String>);

/// The digests that have chunks: those of stored modules with their size
/// (from the Module object), and those of uploads still staged. Reads the
/// first chunk of each digest only.
pub(crate) fn chunked_digests(
    chunks: &ReadOnlyTable<&'static [u8], &'static [u8]>,
    objects: &ReadOnlyTable<&'static [u8], &'static [u8]>,
) -> Result<Chunked, StoreError> {
    let (mut stored, mut staged) = (Vec::new(), Vec::new());
    let mut from: Vec<u8> = Vec::new();
    loop {
        let Some(entry) = chunks
            .range(from.as_slice()..)
            .map_err(db("reading module chunks"))?
            .next()
        else {
            break;
        };
        let (k, _) = entry.map_err(db("reading a table to hash it"))?;
        let (digest, _) = parse_chunk_key(k.value())?;
        let key = object_key(Kind::Module, "", &module_name(digest));
        match objects
            .get(key.as_bytes())
            .map_err(db("reading a table to hash it"))?
        {
            Some(v) => match decode_value("objects", key.as_bytes(), v.value())? {
                Object::Module(m) => stored.push((digest.to_string(), m.spec.size)),
                _ => staged.push(digest.to_string()),
            },
            None => staged.push(digest.to_string()),
        }
        from = format!("{digest}0").into_bytes();
    }
    Ok((stored, staged))
}

/// Hashes a stored module as one row, its digest and its `size` bytes,
/// streamed a chunk at a time; `Corrupt` if its chunks do not join up to `size`.
fn hash_module(
    hasher: &mut StateHasher,
    chunks: &ReadOnlyTable<&'static [u8], &'static [u8]>,
    digest: &str,
    size: u64,
) -> Result<(), StoreError> {
    hasher.row_start(digest.as_bytes(), size);
    let (from, to) = chunk_range(digest);
    let mut len = 0u64;
    for entry in chunks
        .range(from.as_bytes()..to.as_bytes())
        .map_err(db("reading a table to hash it"))?
    {
        let (k, v) = entry.map_err(db("reading a table to hash it"))?;
        let (_, offset) = parse_chunk_key(k.value())?;
        let bytes = unseal("module_chunks", k.value(), v.value())?;
        if offset != len {
            return Err(corrupt(
                "module_chunks",
                k.value(),
                format!("module {digest} misses its bytes from {len} on"),
            ));
        }
        hasher.row_bytes(bytes);
        len += bytes.len() as u64;
    }
    if len != size {
        return Err(StoreError::Corrupt(format!(
            "table module_chunks: module {digest} holds {len} bytes, its object says {size}"
        )));
    }
    Ok(())
}

/// How many recent hashes a master keeps for the leader to ask about.
const KEPT: usize = 16;

/// A hash at a log index, as far as this master got with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashAt {
    /// Being computed (it started right after the entry was applied).
    Computing,
    /// The hash of the state right after the entry at that index.
    Done(StateDigest),
    /// The state could not be hashed (the message says why: a damaged value).
    Failed(String),
}

/// Hashes taken at log indexes, and whether this master was found to hold a
/// state that differs from the others'. Shared by the raft state machine,
/// which takes the hashes, and whoever compares them.
#[derive(Debug)]
pub struct StateChecks {
    hashes: Mutex<BTreeMap<u64, HashAt>>,
    /// Bumped whenever a hash is added or finished.
    changed: tokio::sync::watch::Sender<u64>,
    /// Why this master no longer serves reads; `None` while it does.
    diverged: Mutex<Option<String>>,
    /// Whether `diverged` holds a reason: read on every watch event of every
    /// watcher, so without taking the lock.
    is_diverged: std::sync::atomic::AtomicBool,
    /// Asks the leader's checker to run now (a master that just started wants
    /// to know early).
    pub wake: tokio::sync::Notify,
}

impl Default for StateChecks {
    fn default() -> Self {
        StateChecks {
            hashes: Mutex::default(),
            changed: tokio::sync::watch::channel(0).0,
            diverged: Mutex::default(),
            is_diverged: std::sync::atomic::AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        }
    }
}

impl StateChecks {
    /// Records where the hash at `index` stands.
    pub fn set(&self, index: u64, at: HashAt) {
        let mut hashes = self.hashes.lock().unwrap_or_else(PoisonError::into_inner);
        hashes.insert(index, at);
        while hashes.len() > KEPT {
            hashes.pop_first();
        }
        drop(hashes);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Where the hash at `index` stands; `None` if this master has not
    /// started it (it has not applied the entry yet, or skipped it by
    /// installing a snapshot past it, or forgot it among older ones).
    pub fn get(&self, index: u64) -> Option<HashAt> {
        self.hashes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&index)
            .cloned()
    }

    /// Wakes on every change of the hashes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Marks this master as holding a state that differs from the others';
    /// `why` is what reads are refused with from now on. The first reason stays.
    pub fn mark_diverged(&self, why: String) {
        let mut diverged = self.diverged.lock().unwrap_or_else(PoisonError::into_inner);
        if diverged.is_none() {
            *diverged = Some(why);
            self.is_diverged
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Why this master no longer serves reads, if it does not.
    pub fn diverged(&self) -> Option<String> {
        self.diverged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `Unavailable`, with the reason, if this master was marked.
    pub fn serving(&self) -> Result<(), StoreError> {
        if !self.is_diverged.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        match self.diverged() {
            None => Ok(()),
            Some(why) => Err(StoreError::Unavailable(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as (key, value).
    type Rows<'a> = &'a [(&'a [u8], &'a [u8])];

    fn hash(tables: &[(&str, Rows<'_>)]) -> StateHash {
        let mut h = StateHasher::default();
        for (name, rows) in tables {
            h.table(name);
            for (k, v) in *rows {
                h.row(k, v);
            }
        }
        h.finish()
    }

    #[test]
    fn the_hash_depends_on_every_byte_and_on_where_it_is() {
        let base = hash(&[("objects", &[(b"a", b"1"), (b"b", b"2")]), ("tokens", &[])]);
        // Deterministic.
        assert_eq!(
            base,
            hash(&[("objects", &[(b"a", b"1"), (b"b", b"2")]), ("tokens", &[])])
        );
        let others = [
            // A changed value, a changed key, a changed table name.
            hash(&[("objects", &[(b"a", b"1"), (b"b", b"3")]), ("tokens", &[])]),
            hash(&[("objects", &[(b"a", b"1"), (b"c", b"2")]), ("tokens", &[])]),
            hash(&[("objectz", &[(b"a", b"1"), (b"b", b"2")]), ("tokens", &[])]),
            // Rows in another order, a row missing.
            hash(&[("objects", &[(b"b", b"2"), (b"a", b"1")]), ("tokens", &[])]),
            hash(&[("objects", &[(b"a", b"1")]), ("tokens", &[])]),
            // A byte moved from a key to its value, or from a value to the next key.
            hash(&[("objects", &[(b"", b"a1"), (b"b", b"2")]), ("tokens", &[])]),
            hash(&[("objects", &[(b"a", b"1b"), (b"", b"2")]), ("tokens", &[])]),
            // A row moved to the next table, a table missing.
            hash(&[("objects", &[(b"a", b"1")]), ("tokens", &[(b"b", b"2")])]),
            hash(&[("objects", &[(b"a", b"1"), (b"b", b"2")])]),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(base, *other, "case {i}");
        }
        let distinct: std::collections::HashSet<_> = others.iter().collect();
        assert_eq!(distinct.len(), others.len());
    }

    #[test]
    fn checks_keep_recent_hashes_and_the_first_reason() {
        let checks = StateChecks::default();
        let changed = checks.subscribe();
        for i in 0..40 {
            checks.set(i, HashAt::Computing);
        }
        assert!(changed.has_changed().unwrap());
        assert_eq!(checks.get(39), Some(HashAt::Computing));
        assert_eq!(checks.get(40 - KEPT as u64 - 1), None);
        assert!(checks.serving().is_ok());
        checks.mark_diverged("first".into());
        checks.mark_diverged("second".into());
        assert!(matches!(checks.serving(), Err(StoreError::Unavailable(m)) if m == "first"));
    }
}
