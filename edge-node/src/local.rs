//! The node's local state on redb: the pods bound to this node (spec and last
//! status) and the modules they run. It is what lets a node keep, and after a
//! reboot restart, its pods while no master answers.
//!
//! Tables: `pods` (`namespace/name` → postcard `Pod`), `modules` (digest →
//! bytes), `module_use` (digest → (size in bytes, when last used in Unix
//! milliseconds)); a digest is in `modules` exactly when it is in
//! `module_use`. Every write is one durable transaction. What is deleted
//! when is [`crate::module_gc`]'s decision.

use flotilla_api::Pod;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::{Arc, RwLock, RwLockReadGuard};

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
/// Kept apart from the bytes so that listing the modules never reads them.
const MODULE_USE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("module_use");

/// Memory redb may use to cache pages. Its default (1 GiB) keeps every
/// module read or written in memory, which on a Pi is most of its RAM; the
/// node reads a module's bytes once per compile, so a cache buys nothing.
const CACHE_SIZE: usize = 4 << 20;

/// Why the local store failed.
#[derive(Debug, thiserror::Error)]
#[error("local node store: {0}")]
pub struct LocalError(String);

fn e(context: &str) -> impl Fn(&dyn std::fmt::Display) -> LocalError + '_ {
    move |err| LocalError(format!("{context}: {err}"))
}

/// A cached module as the store describes it (not its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModule {
    pub digest: String,
    /// Length of the module's bytes.
    pub size: u64,
    /// When it was stored, or when a pod last stopped using it (Unix ms).
    pub last_used_ms: u64,
}

impl StoredModule {
    /// About what the module takes in `node.redb`: redb keeps a value in a
    /// block of a power of two pages (an 8 MiB module takes 16 MiB), so
    /// budgets must count that, not the bytes.
    pub fn footprint(&self) -> u64 {
        self.size
            .saturating_add(PAGE)
            .checked_next_power_of_two()
            .unwrap_or(u64::MAX)
    }
}

/// redb's page size; a value's block holds a page header beside it.
const PAGE: u64 = 4096;

/// The node's redb database.
#[derive(Clone)]
pub struct LocalStore {
    /// Transactions hold the read side; only [`LocalStore::compact`], which
    /// redb lets run with no transaction open, takes the write side.
    db: Arc<RwLock<redb::Database>>,
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl LocalStore {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<LocalStore, LocalError> {
        // redb would create the file with the default mode; it holds pod env values.
        flotilla_api::perms::create_file(path).map_err(|x| e("create")(&x))?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_SIZE)
            .create(path)
            .map_err(|x| e("open")(&x))?;
        // Create the tables so readers never meet a missing one.
        let tx = db.begin_write().map_err(|x| e("begin")(&x))?;
        tx.open_table(PODS).map_err(|x| e("pods table")(&x))?;
        {
            // Modules stored by a node from before `module_use` count as
            // used now: they get the whole grace period.
            let modules = tx.open_table(MODULES).map_err(|x| e("modules table")(&x))?;
            let mut uses = tx
                .open_table(MODULE_USE)
                .map_err(|x| e("module_use table")(&x))?;
            let mut missing = Vec::new();
            for row in modules.iter().map_err(|x| e("iterate")(&x))? {
                let (k, v) = row.map_err(|x| e("read")(&x))?;
                if uses.get(k.value()).map_err(|x| e("get")(&x))?.is_none() {
                    missing.push((k.value().to_string(), v.value().len() as u64));
                }
            }
            let now = unix_ms_now();
            for (digest, size) in missing {
                uses.insert(digest.as_str(), (size, now))
                    .map_err(|x| e("insert")(&x))?;
            }
        }
        tx.commit().map_err(|x| e("commit")(&x))?;
        Ok(LocalStore {
            db: Arc::new(RwLock::new(db)),
        })
    }

    /// Held for the length of a transaction, so a compaction never meets one.
    fn db(&self) -> RwLockReadGuard<'_, redb::Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every pod this node was last told to run, with the status it last had.
    /// Entries that no longer decode are skipped with a warning rather than stopping the node.
    pub fn pods(&self) -> Result<Vec<Pod>, LocalError> {
        let db = self.db();
        let tx = db.begin_read().map_err(|x| e("begin")(&x))?;
        let t = tx.open_table(PODS).map_err(|x| e("pods table")(&x))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|x| e("iterate")(&x))? {
            let (k, v) = row.map_err(|x| e("read")(&x))?;
            match decode_pod(v.value()) {
                Ok(p) => out.push(p),
                Err(err) => {
                    tracing::warn!(key = k.value(), error = %err, "skipping unreadable pod in local store")
                }
            }
        }
        Ok(out)
    }

    /// Records (or replaces) a pod.
    pub fn put_pod(&self, pod: &Pod) -> Result<(), LocalError> {
        let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
        // As an Object: self-describing, so a pod written by this agent is
        // read by the next one whatever fields pods gain.
        let bytes = postcard::to_stdvec(&flotilla_api::Object::Pod(pod.clone()))
            .map_err(|x| e("encode")(&x))?;
        let db = self.db();
        let tx = db.begin_write().map_err(|x| e("begin")(&x))?;
        tx.open_table(PODS)
            .map_err(|x| e("pods table")(&x))?
            .insert(key.as_str(), bytes.as_slice())
            .map_err(|x| e("insert")(&x))?;
        tx.commit().map_err(|x| e("commit")(&x))
    }

    /// Forgets a pod.
    pub fn remove_pod(&self, namespace: &str, name: &str) -> Result<(), LocalError> {
        let key = format!("{namespace}/{name}");
        let db = self.db();
        let tx = db.begin_write().map_err(|x| e("begin")(&x))?;
        tx.open_table(PODS)
            .map_err(|x| e("pods table")(&x))?
            .remove(key.as_str())
            .map_err(|x| e("remove")(&x))?;
        tx.commit().map_err(|x| e("commit")(&x))
    }

    /// A module's bytes, if cached.
    pub fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, LocalError> {
        let db = self.db();
        let tx = db.begin_read().map_err(|x| e("begin")(&x))?;
        let t = tx.open_table(MODULES).map_err(|x| e("modules table")(&x))?;
        Ok(t.get(digest)
            .map_err(|x| e("get")(&x))?
            .map(|v| v.value().to_vec()))
    }

    /// Caches a module's bytes, as used now.
    pub fn put_module(&self, digest: &str, bytes: &[u8]) -> Result<(), LocalError> {
        let db = self.db();
        let tx = db.begin_write().map_err(|x| e("begin")(&x))?;
        tx.open_table(MODULES)
            .map_err(|x| e("modules table")(&x))?
            .insert(digest, bytes)
            .map_err(|x| e("insert")(&x))?;
        tx.open_table(MODULE_USE)
            .map_err(|x| e("module_use table")(&x))?
            .insert(digest, (bytes.len() as u64, unix_ms_now()))
            .map_err(|x| e("insert")(&x))?;
        tx.commit().map_err(|x| e("commit")(&x))
    }

    /// Every cached module, without its bytes.
    pub fn modules(&self) -> Result<Vec<StoredModule>, LocalError> {
        let db = self.db();
        let tx = db.begin_read().map_err(|x| e("begin")(&x))?;
        let t = tx
            .open_table(MODULE_USE)
            .map_err(|x| e("module_use table")(&x))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|x| e("iterate")(&x))? {
            let (k, v) = row.map_err(|x| e("read")(&x))?;
            let (size, last_used_ms) = v.value();
            out.push(StoredModule {
                digest: k.value().to_string(),
                size,
                last_used_ms,
            });
        }
        Ok(out)
    }

    /// Records that no pod uses these modules since `at_ms`: their grace
    /// period starts. Digests not cached are ignored.
    pub fn mark_released(&self, digests: &[String], at_ms: u64) -> Result<(), LocalError> {
        if digests.is_empty() {
            return Ok(());
        }
        let db = self.db();
        let tx = db.begin_write().map_err(|x| e("begin")(&x))?;
        {
            let mut t = tx
                .open_table(MODULE_USE)
                .map_err(|x| e("module_use table")(&x))?;
            for d in digests {
                let size = t
                    .get(d.as_str())
                    .map_err(|x| e("get")(&x))?
                    .map(|v| v.value().0);
                if let Some(size) = size {
                    t.insert(d.as_str(), (size, at_ms))
                        .map_err(|x| e("insert")(&x))?;
                }
            }
        }
        tx.commit().map_err(|x| e("commit")(&x))
    }

    /// Deletes these modules' bytes in one transaction; returns how many
    /// bytes that freed (within the file: see [`LocalStore::compact`]).
    pub fn remove_modules(&self, digests: &[String]) -> Result<u64, LocalError> {
        if digests.is_empty() {
            return Ok(0);
        }
        let db = self.db();
        let tx = db.begin_write().map_err(|x| e("begin")(&x))?;
        let mut freed = 0;
        {
            let mut modules = tx.open_table(MODULES).map_err(|x| e("modules table")(&x))?;
            let mut uses = tx
                .open_table(MODULE_USE)
                .map_err(|x| e("module_use table")(&x))?;
            for d in digests {
                modules.remove(d.as_str()).map_err(|x| e("remove")(&x))?;
                if let Some(v) = uses.remove(d.as_str()).map_err(|x| e("remove")(&x))? {
                    freed += v.value().0;
                }
            }
        }
        tx.commit().map_err(|x| e("commit")(&x))?;
        Ok(freed)
    }

    /// Gives the space of deleted data back to the file system: redb reuses
    /// freed pages but shrinks its file only from the end. Waits for the
    /// transactions in progress, and holds up new ones while it runs (it
    /// rewrites what lies behind free space: seconds for hundreds of MiB on
    /// an SD card), so call it from a blocking context and only when
    /// worthwhile. Returns whether the file changed.
    pub fn compact(&self) -> Result<bool, LocalError> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        db.compact().map_err(|x| e("compact")(&x))
    }
}

/// A pod as this store keeps it: an [`flotilla_api::Object`], or a bare pod
/// in the positional layout agents of protocol 2 wrote.
fn decode_pod(bytes: &[u8]) -> Result<Pod, postcard::Error> {
    match postcard::from_bytes::<flotilla_api::Object>(bytes) {
        Ok(flotilla_api::Object::Pod(p)) => Ok(p),
        Ok(_) => Err(postcard::Error::SerdeDeCustom),
        Err(first) => postcard::from_bytes::<flotilla_api::objects::legacy::Pod>(bytes)
            .map(Pod::from)
            .map_err(|_| first),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_and_modules_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("node.redb");
        let mut pod = Pod::default();
        pod.metadata.namespace = "default".into();
        pod.metadata.name = "p".into();
        {
            let s = LocalStore::open(&path).expect("open");
            s.put_pod(&pod).expect("put");
            s.put_module("sha256:x", b"abc").expect("module");
        }
        let s = LocalStore::open(&path).expect("reopen");
        assert_eq!(s.pods().expect("pods"), vec![pod]);
        assert_eq!(s.module("sha256:x").expect("get"), Some(b"abc".to_vec()));
        s.remove_pod("default", "p").expect("remove");
        assert!(s.pods().expect("pods").is_empty());
    }

    #[test]
    fn modules_are_listed_released_and_removed() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("node.redb");
        let s = LocalStore::open(&path).expect("open");
        let before = unix_ms_now();
        s.put_module("a", b"aaaa").expect("a");
        s.put_module("b", b"bb").expect("b");
        let listed = s.modules().expect("list");
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].digest.as_str(), listed[0].size), ("a", 4));
        assert!(listed[0].last_used_ms >= before);
        s.mark_released(&["a".into(), "unknown".into()], 7)
            .expect("release");
        let a = &s.modules().expect("list")[0];
        assert_eq!((a.size, a.last_used_ms), (4, 7));
        assert_eq!(
            s.remove_modules(&["a".into(), "unknown".into()])
                .expect("remove"),
            4
        );
        assert_eq!(s.module("a").expect("get"), None);
        drop(s);
        let s = LocalStore::open(&path).expect("reopen");
        let left: Vec<String> = s
            .modules()
            .expect("list")
            .into_iter()
            .map(|m| m.digest)
            .collect();
        assert_eq!(left, vec!["b".to_string()]);
        assert_eq!(s.module("b").expect("get"), Some(b"bb".to_vec()));
    }

    #[test]
    fn modules_stored_before_their_use_was_recorded_are_adopted() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("node.redb");
        {
            // The layout of a node from before `module_use`.
            let db = redb::Database::create(&path).expect("create");
            let tx = db.begin_write().expect("begin");
            tx.open_table(MODULES)
                .expect("table")
                .insert("old", b"xyz".as_slice())
                .expect("insert");
            tx.commit().expect("commit");
        }
        let before = unix_ms_now();
        let s = LocalStore::open(&path).expect("open");
        let m = s.modules().expect("list");
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].digest.as_str(), m[0].size), ("old", 3));
        // Counted as used when adopted: it gets the whole grace period.
        assert!(m[0].last_used_ms >= before);
    }

    #[test]
    fn deleted_modules_give_their_disk_space_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("node.redb");
        let s = LocalStore::open(&path).expect("open");
        let size = || std::fs::metadata(&path).expect("stat").len();
        let mib = |n: u8| vec![n; 8 << 20];
        for (d, n) in [("a", 1), ("b", 2), ("c", 3)] {
            s.put_module(d, &mib(n)).expect("put");
        }
        let full = size();
        assert!(full >= 24 << 20, "{full}");
        // The oldest two go; the newest, stored behind them, stays.
        s.remove_modules(&["a".into(), "b".into()]).expect("remove");
        s.compact().expect("compact");
        let compacted = size();
        assert!(
            compacted < full - (12 << 20),
            "{full} bytes before, {compacted} after"
        );
        assert_eq!(s.module("c").expect("get"), Some(mib(3)));
        s.put_pod(&Pod::default())
            .expect("writes go on after a compaction");
    }

    #[test]
    fn footprints_round_up_to_redb_blocks() {
        let m = |size| StoredModule {
            digest: String::new(),
            size,
            last_used_ms: 0,
        };
        assert_eq!(m(0).footprint(), 4096);
        assert_eq!(m(100 << 10).footprint(), 128 << 10);
        assert_eq!(m(8 << 20).footprint(), 16 << 20);
        assert_eq!(m(60 << 20).footprint(), 64 << 20);
        assert_eq!(m(u64::MAX).footprint(), u64::MAX);
    }
}
