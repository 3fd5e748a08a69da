//! openraft's state machine over the [`Store`]: each log entry's effects and
//! raft's bookkeeping (last applied log id, last membership) are written in
//! one redb transaction, so after a crash the state and `applied_state` agree.
//!
//! Snapshots are whole-state [`Image`]s (postcard) built from one read
//! transaction. The current one is kept in [`SNAPSHOT_FILE`](super::SNAPSHOT_FILE)
//! as a magic, a CRC-32 and postcard of [`SnapshotFile`] (its meta and its
//! bytes), replaced atomically (write a temporary file, fsync, rename, fsync
//! the directory).
//! An installed snapshot is written there *before* it replaces the state;
//! opening the state machine re-installs a snapshot file that is ahead of the
//! state, which finishes an install a crash interrupted.
//!
//! After applying a [`Command::CheckState`](crate::store::Command::CheckState)
//! entry, the state machine starts hashing the state as it is at that index
//! ([`Store::begin_state_hash`]), for the masters to compare (`super::check`).

use super::{
    blocking, encode, failure, storage_error, Entry, Failure, LogId, RaftResponse,
    RaftStorageError, RaftStoreError, TypeConfig,
};
use crate::store::tables::decode;
use crate::store::{Image, RaftMark, Store, StoreError};
use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::fs::{self, File};
use std::io::{Cursor, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Raft's view of the store.
pub struct StateMachine {
    store: Store,
    snapshots: Arc<Snapshots>,
    /// When an applied entry last waited for the disk.
    last_durable: std::time::Instant,
}

/// How often an applied entry waits for the disk. The raft log holds every
/// entry durably before it is applied, so the state need not: after a crash
/// the entries since its last durable commit are applied again from the log
/// (or the snapshot file, which is durable, when the log was purged behind
/// it). Waiting now and then bounds that replay and lets redb reuse pages.
const DURABLE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Builds snapshots of the store (openraft runs it beside the state machine).
pub struct SnapshotBuilder {
    store: Store,
    snapshots: Arc<Snapshots>,
}

/// The snapshot file, shared by the state machine and its builders.
struct Snapshots {
    path: PathBuf,
    /// The meta of the snapshot in the file. Held while the file is written
    /// or read, so that a builder finishing late cannot replace a newer
    /// snapshot (one installed meanwhile) with its older one.
    current: Mutex<Option<Meta>>,
    /// Makes snapshot ids unique within a process.
    built: AtomicU64,
    /// The last log id whose effects are on disk outside the raft log: the
    /// snapshot file's, or what the store held when it was opened. The log
    /// store purges no entry beyond it ([`StateMachine::purge_guard`]).
    covered: tokio::sync::watch::Sender<Option<LogId>>,
}

/// What lets the raft log drop entries: the last log id whose effects are
/// on disk outside it ([`StateMachine::purge_guard`]).
pub type PurgeGuard = tokio::sync::watch::Receiver<Option<LogId>>;

type Meta = SnapshotMeta<u64, BasicNode>;

/// The contents of the snapshot file.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: Meta,
    /// Postcard of an [`Image`].
    data: Vec<u8>,
}

impl fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateMachine")
            .field("store", &self.store)
            .field("snapshot", &self.snapshots.path)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SnapshotBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotBuilder")
            .field("snapshot", &self.snapshots.path)
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// The state machine over `store`, keeping its current snapshot at
    /// `snapshot_path` (conventionally `<data dir>/raft-snapshot.bin`). If
    /// that snapshot is ahead of the store (a crash interrupted its install),
    /// it is installed now.
    pub fn open(store: Store, snapshot_path: &Path) -> Result<StateMachine, RaftStoreError> {
        let corrupt = |message: String| RaftStoreError::SnapshotCorrupt {
            path: snapshot_path.to_path_buf(),
            message,
        };
        let file = read_snapshot_file(snapshot_path)?;
        let applied = || -> Result<Option<LogId>, RaftStoreError> {
            Ok(applied_state(&store.raft_meta()?)
                .map_err(|m| RaftStoreError::Store(StoreError::Corrupt(m)))?
                .0)
        };
        let current = match file {
            None => None,
            Some(file) => {
                let image = checked_image(&file.meta, &file.data).map_err(corrupt)?;
                if file.meta.last_log_id > applied()? {
                    store.install(&image)?;
                }
                Some(file.meta)
            }
        };
        // Just read from the disk, the store's applied id is durable too.
        let covered = current.as_ref().and_then(|m| m.last_log_id).max(applied()?);
        Ok(StateMachine {
            store,
            snapshots: Arc::new(Snapshots {
                path: snapshot_path.to_path_buf(),
                current: Mutex::new(current),
                built: AtomicU64::new(0),
                covered: tokio::sync::watch::Sender::new(covered),
            }),
            last_durable: std::time::Instant::now(),
        })
    }

    /// What the raft log waits for before it drops entries
    /// ([`LogStore::guard_purges`](super::LogStore::guard_purges)). openraft
    /// purges a follower's log when it installs a snapshot from the leader,
    /// at the same time as the state machine's task installs it: a log
    /// purged first, and a crash before the snapshot file was written, would
    /// leave the master with neither the entries nor the snapshot, unable to
    /// start ("Failed to get log entries").
    pub fn purge_guard(&self) -> PurgeGuard {
        self.snapshots.covered.subscribe()
    }

    /// The store this state machine applies to.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl Snapshots {
    /// Makes `meta` and `data` the current snapshot, unless the file already
    /// holds a newer one.
    fn save(&self, meta: &Meta, data: &[u8]) -> Result<(), Failure> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = current.as_ref() {
            if held.last_log_id > meta.last_log_id {
                return Ok(());
            }
        }
        let fail = |e: String| {
            failure(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                format!("{}: {e}", self.path.display()),
            )
        };
        let file = SnapshotFile {
            meta: meta.clone(),
            data: data.to_vec(),
        };
        let body = encode("a snapshot", &file).map_err(|e| fail(e.to_string()))?;
        write_atomically(&self.path, &seal_snapshot(&body)).map_err(|e| fail(e.to_string()))?;
        *current = Some(meta.clone());
        self.covered.send_if_modified(|covered| {
            let further = meta.last_log_id > *covered;
            if further {
                *covered = meta.last_log_id;
            }
            further
        });
        Ok(())
    }

    /// The current snapshot, if any.
    fn load(&self) -> Result<Option<Snapshot<TypeConfig>>, Failure> {
        let _held = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let file = read_snapshot_file(&self.path)
            .map_err(|e| failure(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(file.map(|f| Snapshot {
            meta: f.meta,
            snapshot: Box::new(Cursor::new(f.data)),
        }))
    }
}

/// Reads and decodes the snapshot file; `None` if there is none.
fn read_snapshot_file(path: &Path) -> Result<Option<SnapshotFile>, RaftStoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RaftStoreError::SnapshotIo {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let corrupt = |message: String| RaftStoreError::SnapshotCorrupt {
        path: path.to_path_buf(),
        message,
    };
    let body = unseal_snapshot(&bytes).map_err(corrupt)?;
    decode("snapshot file", &path.display(), body)
        .map(Some)
        .map_err(|e| corrupt(e.to_string()))
}

/// The magic of a snapshot file whose body is checksummed. Files written
/// before it hold the body alone; postcard of a [`SnapshotFile`] starts with
/// 0 or 1 (the tag of `Option<LogId>`), never with this.
const SNAPSHOT_MAGIC: &[u8; 8] = b"FLTSNAP2";

/// The snapshot file's bytes for `body`: the magic, CRC-32 of the body
/// (u32 little-endian), the body. Without it a byte changed on the disk
/// could decode as a different state, installed when the master starts.
fn seal_snapshot(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 12);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// The body of a snapshot file, its checksum checked (a file from before
/// checksums is taken as it is).
fn unseal_snapshot(bytes: &[u8]) -> Result<&[u8], String> {
    let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC) else {
        return Ok(bytes);
    };
    if rest.len() < 4 {
        return Err("the file is cut short".into());
    }
    let (sum, body) = rest.split_at(4);
    let mut expected = [0u8; 4];
    expected.copy_from_slice(sum);
    if u32::from_le_bytes(expected) != crc32fast::hash(body) {
        return Err("the file fails its checksum: it changed on the disk".into());
    }
    Ok(body)
}

/// Replaces the file at `path` with `bytes` so that a crash leaves either the
/// old file or the new one, never a mix.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(flotilla_api::perms::FILE_MODE)
        .open(&tmp)?;
    // A temporary file left by a crash keeps its old mode when reopened.
    file.set_permissions(std::fs::Permissions::from_mode(
        flotilla_api::perms::FILE_MODE,
    ))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is.
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Decodes a snapshot's data and checks it is the state `meta` describes.
fn checked_image(meta: &Meta, data: &[u8]) -> Result<Image, String> {
    let image: Image = decode("snapshot", &meta.snapshot_id, data).map_err(|e| e.to_string())?;
    let (applied, membership) = applied_state(&image.raft)?;
    if applied != meta.last_log_id || membership != meta.last_membership {
        return Err(format!(
            "the data was taken at {applied:?} with {membership:?}, its meta says {:?} with {:?}",
            meta.last_log_id, meta.last_membership
        ));
    }
    Ok(image)
}

/// Decodes raft's bookkeeping as the store keeps it.
fn applied_state(
    raft: &crate::store::RaftMeta,
) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), String> {
    let applied = match &raft.applied {
        Some(bytes) => Some(decode::<LogId>("raft", &"applied", bytes).map_err(|e| e.to_string())?),
        None => None,
    };
    let membership = match &raft.membership {
        Some(bytes) => decode("raft", &"membership", bytes).map_err(|e| e.to_string())?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

fn read_state_machine(e: impl fmt::Display) -> RaftStorageError {
    storage_error(ErrorSubject::StateMachine, ErrorVerb::Read, e)
}

/// Applies one entry in one store transaction.
/// Applies `entries` in one transaction; `None` when they must be applied
/// one by one instead (a single entry, a membership change, a refusal).
fn apply_batch(
    store: &Store,
    entries: &[Entry],
    durable: bool,
) -> Result<Option<Vec<RaftResponse>>, Failure> {
    let Some(last) = entries.last() else {
        return Ok(Some(Vec::new()));
    };
    // A state check is hashed right after its own commit, which must not
    // hold the entries after it.
    if entries.len() < 2
        || entries.iter().any(|e| {
            matches!(
                e.payload,
                EntryPayload::Membership(_)
                    | EntryPayload::Normal(
                        crate::store::Command::Batch(_) | crate::store::Command::CheckState
                    )
            )
        })
    {
        return Ok(None);
    }
    let log_id = last.log_id;
    let fail = |e: StoreError| failure(ErrorSubject::Apply(log_id), ErrorVerb::Write, e);
    let applied = encode("a log id", &log_id).map_err(fail)?;
    let cmds = entries
        .iter()
        .map(|e| match &e.payload {
            EntryPayload::Normal(cmd) => Some(cmd.clone()),
            _ => None,
        })
        .collect();
    let mark = RaftMark {
        applied: &applied,
        membership: None,
        durable,
    };
    Ok(store
        .apply_raft_batch(mark, cmds)
        .map_err(fail)?
        .map(|answers| {
            answers
                .into_iter()
                .map(|a| match a {
                    Some(outcome) => RaftResponse::Command(Ok(outcome)),
                    None => RaftResponse::Bookkeeping,
                })
                .collect()
        }))
}

fn apply_entry(store: &Store, entry: Entry, durable: bool) -> Result<RaftResponse, Failure> {
    let log_id = entry.log_id;
    let fail = |e: StoreError| failure(ErrorSubject::Apply(log_id), ErrorVerb::Write, e);
    let applied = encode("a log id", &log_id).map_err(fail)?;
    match entry.payload {
        EntryPayload::Blank => {
            store
                .mark_raft(RaftMark {
                    applied: &applied,
                    membership: None,
                    durable,
                })
                .map_err(fail)?;
            Ok(RaftResponse::Bookkeeping)
        }
        EntryPayload::Membership(membership) => {
            let stored = StoredMembership::new(Some(log_id), membership);
            let membership = encode("a membership", &stored).map_err(fail)?;
            store
                .mark_raft(RaftMark {
                    applied: &applied,
                    membership: Some(&membership),
                    // Rare, and worth having on disk at once.
                    durable: true,
                })
                .map_err(fail)?;
            Ok(RaftResponse::Bookkeeping)
        }
        EntryPayload::Normal(crate::store::Command::Batch(cmds)) => {
            let answers = store
                .apply_raft_batch_command(
                    RaftMark {
                        applied: &applied,
                        membership: None,
                        durable,
                    },
                    cmds,
                )
                .map_err(fail)?;
            let answers = answers
                .into_iter()
                .map(|a| match a {
                    Ok(outcome) => Ok(Ok(outcome)),
                    Err(refused) => refused.into_refusal().map(Err),
                })
                .collect::<Result<Vec<_>, StoreError>>()
                .map_err(fail)?;
            Ok(RaftResponse::Batch(answers))
        }
        EntryPayload::Normal(cmd) => {
            let check = cmd == crate::store::Command::CheckState;
            let answer = store.apply_raft(
                RaftMark {
                    applied: &applied,
                    membership: None,
                    durable,
                },
                cmd,
            );
            let answer = answer.map_err(fail)?;
            if check {
                // Committed just now and nothing applied since: the state
                // every master holds after this entry.
                store.begin_state_hash(log_id.index);
            }
            match answer {
                Ok(outcome) => Ok(RaftResponse::Command(Ok(outcome))),
                Err(refused) => {
                    let refusal = refused.into_refusal().map_err(fail)?;
                    Ok(RaftResponse::Command(Err(refusal)))
                }
            }
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let raft = self.store.raft_meta().map_err(read_state_machine)?;
        applied_state(&raft).map_err(read_state_machine)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<RaftResponse>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = self.store.clone();
        // The last entry of a batch waits for the disk if none did lately.
        let durable_last = self.last_durable.elapsed() >= DURABLE_EVERY;
        if durable_last {
            self.last_durable = std::time::Instant::now();
        }
        let last = entries.len().saturating_sub(1);
        blocking(ErrorSubject::StateMachine, move || {
            // Several entries at once (clients writing concurrently): one
            // transaction for all, unless a command is refused or the
            // membership changes.
            if let Some(answers) = apply_batch(&store, &entries, durable_last)? {
                return Ok(answers);
            }
            // One transaction per entry: a refused command must not undo the
            // entries around it, and each commit leaves a consistent state.
            entries
                .into_iter()
                .enumerate()
                .map(|(i, entry)| apply_entry(&store, entry, durable_last && i == last))
                .collect()
        })
        .await
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let meta = meta.clone();
        let data = snapshot.into_inner();
        let store = self.store.clone();
        let snapshots = self.snapshots.clone();
        blocking(ErrorSubject::Snapshot(Some(meta.signature())), move || {
            let subject = || ErrorSubject::Snapshot(Some(meta.signature()));
            let image =
                checked_image(&meta, &data).map_err(|e| failure(subject(), ErrorVerb::Read, e))?;
            // The file first: if a crash comes before the state is replaced,
            // opening the state machine finishes the install from the file.
            snapshots.save(&meta, &data)?;
            store
                .install(&image)
                .map_err(|e| failure(subject(), ErrorVerb::Write, e))
        })
        .await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let snapshots = self.snapshots.clone();
        blocking(ErrorSubject::Snapshot(None), move || snapshots.load()).await
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let store = self.store.clone();
        let snapshots = self.snapshots.clone();
        blocking(ErrorSubject::Snapshot(None), move || {
            let fail = |e: String| failure(ErrorSubject::Snapshot(None), ErrorVerb::Read, e);
            // One read transaction: the data and the applied log id agree.
            let image = store.export().map_err(|e| fail(e.to_string()))?;
            let (last_log_id, last_membership) = applied_state(&image.raft).map_err(fail)?;
            let data = encode("a snapshot", &image).map_err(|e| fail(e.to_string()))?;
            let seq = snapshots.built.fetch_add(1, Ordering::Relaxed);
            let snapshot_id = match &last_log_id {
                Some(id) => format!("{id}-{seq}"),
                None => format!("empty-{seq}"),
            };
            let meta = SnapshotMeta {
                last_log_id,
                last_membership,
                snapshot_id,
            };
            snapshots.save(&meta, &data)?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(data)),
            })
        })
        .await
    }
}
