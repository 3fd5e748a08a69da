//! Every redb table of the store and how its keys and values are encoded:
//! the on-disk format in one place. `docs/store.md` describes the same
//! format for people; change both together and bump [`FORMAT_VERSION`] when
//! old files can no longer be read.

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

/// Join token id → postcard of `TokenRecord`.
pub(crate) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");

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
