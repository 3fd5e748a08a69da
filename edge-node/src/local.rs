//! The node's local state on redb: the pods bound to this node (spec and last
//! status) and the modules they run. It is what lets a node keep, and after a
//! reboot restart, its pods while no master answers.
//!
//! Tables: `pods` (`namespace/name` → postcard `Pod`), `modules` (digest →
//! bytes). Every write is one durable transaction.

use flotilla_api::Pod;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

const PODS: TableDefinition<&str, &[u8]> = TableDefinition::new("pods");
const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");

/// Why the local store failed.
#[derive(Debug, thiserror::Error)]
#[error("local node store: {0}")]
pub struct LocalError(String);

fn e(context: &str) -> impl Fn(&dyn std::fmt::Display) -> LocalError + '_ {
    move |err| LocalError(format!("{context}: {err}"))
}

/// The node's redb database.
#[derive(Clone)]
pub struct LocalStore {
    db: Arc<redb::Database>,
}

impl LocalStore {
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<LocalStore, LocalError> {
        // redb would create the file with the default mode; it holds pod env values.
        flotilla_api::perms::create_file(path).map_err(|x| e("create")(&x))?;
        let db = redb::Database::create(path).map_err(|x| e("open")(&x))?;
        let s = LocalStore { db: Arc::new(db) };
        // Create the tables so readers never meet a missing one.
        let tx = s.db.begin_write().map_err(|x| e("begin")(&x))?;
        tx.open_table(PODS).map_err(|x| e("pods table")(&x))?;
        tx.open_table(MODULES).map_err(|x| e("modules table")(&x))?;
        tx.commit().map_err(|x| e("commit")(&x))?;
        Ok(s)
    }

    /// Every pod this node was last told to run, with the status it last had.
    /// Entries that no longer decode are skipped with a warning rather than stopping the node.
    pub fn pods(&self) -> Result<Vec<Pod>, LocalError> {
        let tx = self.db.begin_read().map_err(|x| e("begin")(&x))?;
        let t = tx.open_table(PODS).map_err(|x| e("pods table")(&x))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|x| e("iterate")(&x))? {
            let (k, v) = row.map_err(|x| e("read")(&x))?;
            match postcard::from_bytes::<Pod>(v.value()) {
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
        let bytes = postcard::to_stdvec(pod).map_err(|x| e("encode")(&x))?;
        let tx = self.db.begin_write().map_err(|x| e("begin")(&x))?;
        tx.open_table(PODS)
            .map_err(|x| e("pods table")(&x))?
            .insert(key.as_str(), bytes.as_slice())
            .map_err(|x| e("insert")(&x))?;
        tx.commit().map_err(|x| e("commit")(&x))
    }

    /// Forgets a pod.
    pub fn remove_pod(&self, namespace: &str, name: &str) -> Result<(), LocalError> {
        let key = format!("{namespace}/{name}");
        let tx = self.db.begin_write().map_err(|x| e("begin")(&x))?;
        tx.open_table(PODS)
            .map_err(|x| e("pods table")(&x))?
            .remove(key.as_str())
            .map_err(|x| e("remove")(&x))?;
        tx.commit().map_err(|x| e("commit")(&x))
    }

    /// A module's bytes, if cached.
    pub fn module(&self, digest: &str) -> Result<Option<Vec<u8>>, LocalError> {
        let tx = self.db.begin_read().map_err(|x| e("begin")(&x))?;
        let t = tx.open_table(MODULES).map_err(|x| e("modules table")(&x))?;
        Ok(t.get(digest)
            .map_err(|x| e("get")(&x))?
            .map(|v| v.value().to_vec()))
    }

    /// Caches a module's bytes.
    pub fn put_module(&self, digest: &str, bytes: &[u8]) -> Result<(), LocalError> {
        let tx = self.db.begin_write().map_err(|x| e("begin")(&x))?;
        tx.open_table(MODULES)
            .map_err(|x| e("modules table")(&x))?
            .insert(digest, bytes)
            .map_err(|x| e("insert")(&x))?;
        tx.commit().map_err(|x| e("commit")(&x))
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
}
