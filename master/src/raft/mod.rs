//! Raft for the master: openraft's log in a file of its own and its state
//! machine on redb, so that a replicated log can carry [`store::Command`]s
//! and every master apply them in the same order; the raft messages between
//! masters; and [`Cluster`], which routes requests to the leader and changes
//! the membership.
//!
//! Layout:
//! - this file: [`TypeConfig`] (what the log carries), [`RaftResponse`] (what
//!   applying an entry answers, with the store's [`Refusal`]),
//!   [`RaftStoreError`].
//! - `log_store`: [`LogStore`], the raft log, vote and committed id in their
//!   own append-only file of checksummed records ([`LOG_FILE`]).
//! - `state_machine`: [`StateMachine`] and [`SnapshotBuilder`] over the
//!   [`Store`](crate::store::Store): each entry's effects and raft's
//!   bookkeeping in one transaction; snapshots are whole-state images kept in
//!   [`SNAPSHOT_FILE`].
//! - `network`: [`Network`], the sending side of raft messages over QUIC with
//!   mutual TLS, with a [`Hook`] for tests to drop or delay messages.
//! - `rpc`: the receiving side, [`rpc::handle`], which the API core calls.
//! - `rpc_server`: what travels on the masters' own protocol (ALPN
//!   `flotilla-raft/1`) and who may open it.
//! - `check`: the leader compares the masters' state hashes at one log
//!   index and marks a master that differs (it then refuses reads).
//!
//! `docs/store.md` ("Raft storage") describes the files and what is atomic
//! with what.

mod batcher;
pub mod check;
mod cluster;
#[cfg(test)]
mod cluster_tests;
mod log_store;
#[cfg(test)]
mod log_store_tests;
mod network;
mod propose;
pub mod rpc;
pub mod rpc_server;
mod state_machine;
#[cfg(test)]
mod tests;

pub use cluster::{Cluster, LeaderAnswer, MembershipChange};
pub use log_store::LogStore;
pub use network::{CallError, Hook, Network, Peer, RaftNetError, Verdict};
pub use propose::{propose, raft_config, Raft, DEFAULT_ELECTION_TIMEOUT, ELECTION_TIMEOUT_RANGE};
pub use state_machine::{PurgeGuard, SnapshotBuilder, StateMachine};

use crate::store::{self, Outcome, StoreError};
// Raft responses carry the store's refusals as they are; the store defines
// them, beside the errors that hold them.
pub use crate::store::Refusal;
use openraft::{AnyError, BasicNode, ErrorSubject, ErrorVerb, StorageError, StorageIOError};
use serde::{Deserialize, Serialize};
use std::fmt;
// `declare_raft_types!` names `Cursor` in its defaults; it is our snapshot data too.
use std::io::Cursor;
use std::path::PathBuf;

/// The raft log's file in the data directory.
pub const LOG_FILE: &str = "raft-log.wal";

/// The current snapshot's file in the data directory.
pub const SNAPSHOT_FILE: &str = "raft-snapshot.bin";

openraft::declare_raft_types!(
    /// Flotilla's raft types: the log carries store commands between masters
    /// named by number and reached at an address.
    pub TypeConfig:
        D = store::Command,
        R = RaftResponse,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A raft log entry of Flotilla.
pub type Entry = openraft::Entry<TypeConfig>;

/// The raft log id of an entry.
pub type LogId = openraft::LogId<u64>;

/// What openraft's storage traits fail with.
pub type RaftStorageError = StorageError<u64>;

/// What applying one log entry answered, for whoever proposed it.
// Boxing the outcome would cost an allocation per entry to shrink a value
// that is moved once, to the proposer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RaftResponse {
    /// A blank or membership entry: only raft's bookkeeping changed.
    Bookkeeping,
    /// A command's answer. A refusal is a normal outcome, the same on every
    /// master; the entry is applied all the same (nothing of the command is
    /// written).
    Command(Result<Outcome, Refusal>),
    /// The answers to the commands of a `Command::Batch`, in order.
    Batch(Vec<Result<Outcome, Refusal>>),
}

impl RaftResponse {
    /// The command's answer as [`Store::apply`](crate::store::Store::apply)
    /// gives it; `None` for an entry that carried no command.
    pub fn into_store_result(self) -> Option<Result<Outcome, StoreError>> {
        match self {
            RaftResponse::Bookkeeping | RaftResponse::Batch(_) => None,
            RaftResponse::Command(answer) => Some(answer.map_err(StoreError::Refused)),
        }
    }
}

/// Why the raft storage could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftStoreError {
    /// The raft log file could not be opened or prepared.
    #[error("raft log {path}: {source} (is another master using this data directory?)")]
    Log {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
    /// The state store failed while recovering from the snapshot file.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The snapshot file could not be read.
    #[error("raft snapshot {path}: {source}")]
    SnapshotIo {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The snapshot file does not decode or does not match its own meta.
    #[error("raft snapshot {path} is damaged ({message}): remove it; the leader sends a new one")]
    SnapshotCorrupt { path: PathBuf, message: String },
}

/// A storage error of openraft about `subject`, from anything displayable.
fn storage_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl fmt::Display,
) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::error(e)).into()
}

/// A storage error on its way out of a blocking task or helper: boxed, as
/// openraft's error is large and would bloat every `Result` it passes through.
type Failure = Box<RaftStorageError>;

/// [`storage_error`], boxed.
fn failure(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl fmt::Display) -> Failure {
    Box::new(storage_error(subject, verb, e))
}

/// Encodes a value as postcard for the raft tables and files.
fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value)
        .map_err(|e| StoreError::invalid(format!("cannot encode {what}: {e}")))
}

/// Runs blocking storage work (redb commits wait for fsync) off the async
/// workers, so a slow disk stalls no other task of the runtime.
async fn blocking<T, F>(subject: ErrorSubject<u64>, f: F) -> Result<T, RaftStorageError>
where
    F: FnOnce() -> Result<T, Failure> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| *e),
        Err(e) => Err(storage_error(
            subject,
            ErrorVerb::Write,
            format!("the storage task failed: {e}"),
        )),
    }
}
