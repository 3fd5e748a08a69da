//! Every redb table of the master and how its keys and values are encoded:
//! the on-disk format in one place. That is the store's file (`state.redb`)
//! and the raft log's (`raft-log.redb`, used by `crate::raft`).
//! `docs/store.md` describes the same format for people; change both together
//! and bump [`FORMAT_VERSION`] when old files can no longer be read.

use super::error::StoreError;
use redb::TableDefinition;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Display;

/// `Kind/namespace/name` (see `flotilla_api::objects::object_key`) → postcard of `Object`.
pub(crate) const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

/// Store-wide counters, keyed by the names in [`meta`].
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Revision → postcard of the `WatchEvent` written at that revision; holds the
/// revisions after `meta::COMPACTED` up to `meta::REVISION`, one event each.
pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");

/// `sha256:<hex>` digest → the module's raw bytes.
pub(crate) const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");

/// `<digest>/<offset, 20 digits>` → one staged chunk of a module being
/// uploaded in several raft entries (see `Command::PutModuleChunk`); emptied
/// for a digest when its upload is committed or discarded.
pub(crate) const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");

/// The key of a staged upload chunk.
pub(crate) fn upload_key(digest: &str, offset: u64) -> String {
    format!("{digest}/{offset:020}")
}

/// The key range holding every staged chunk of `digest` ('/' sorts just before '0').
pub(crate) fn upload_range(digest: &str) -> (String, String) {
    (format!("{digest}/"), format!("{digest}0"))
}

/// Join token id → postcard of `TokenRecord`.
pub(crate) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

/// Raft bookkeeping written in the same transaction as the state it
/// describes, keyed by the names in [`raft_meta`]. The store does not read the
/// values; `crate::raft` encodes them (postcard of openraft types).
pub(crate) const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");

/// Keys of the [`RAFT`] table.
pub(crate) mod raft_meta {
    /// The log id of the last entry applied to the state.
    pub(crate) const APPLIED: &str = "applied";
    /// The last membership config applied (with the log id that carried it).
    pub(crate) const MEMBERSHIP: &str = "membership";
}

// The raft log lives in its own file (`raft-log.redb`, see
// `crate::raft::log_store`): it is written far more often than the state and
// purged behind snapshots, and keeping it apart lets either file be replaced
// (restored, resent by a peer) without the other. Its tables are defined here
// so that every table of the master is in one place.

/// Raft log index → postcard of `openraft::Entry<crate::raft::TypeConfig>`.
pub(crate) const RAFT_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");

/// Raft's own durable state beside the log, keyed by the names in [`raft_log_meta`].
pub(crate) const RAFT_LOG_META: TableDefinition<&str, &[u8]> =
    TableDefinition::new("raft_log_meta");

/// Keys of the [`RAFT_LOG_META`] table.
pub(crate) mod raft_log_meta {
    /// Postcard of `openraft::Vote<u64>`: the term and vote to survive restarts.
    pub(crate) const VOTE: &str = "vote";
    /// Postcard of `Option<openraft::LogId<u64>>`: the last log id known committed.
    pub(crate) const COMMITTED: &str = "committed";
    /// Postcard of `openraft::LogId<u64>`: every entry at or below it was removed.
    pub(crate) const LAST_PURGED: &str = "last_purged";
}

/// Keys of the [`META`] table.
pub(crate) mod meta {
    /// The last revision written (0 in a new store).
    pub(crate) const REVISION: &str = "revision";
    /// Every history entry at or below this revision has been removed.
    pub(crate) const COMPACTED: &str = "compacted";
    /// The on-disk format the file was written in.
    pub(crate) const FORMAT: &str = "format";
}

/// The on-disk format this code reads and writes.
pub(crate) const FORMAT_VERSION: u64 = 1;

/// Encodes a value as postcard.
pub(crate) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value)
        .map_err(|e| StoreError::Invalid(format!("cannot encode {what}: {e}")))
}

/// Decodes a postcard value read from `table` at `key`; any damage, trailing
/// bytes included, is [`StoreError::Corrupt`] naming where it was found.
pub(crate) fn decode<T: DeserializeOwned>(
    table: &str,
    key: &dyn Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(StoreError::Corrupt(format!(
            "table {table}, key {key}: {} trailing bytes after the value",
            rest.len()
        ))),
        Err(e) => Err(StoreError::Corrupt(format!(
            "table {table}, key {key}: {e}"
        ))),
    }
}
