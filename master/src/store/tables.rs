//! Every redb table of the master and how its keys and values are encoded:
//! the on-disk format in one place. That is the store's file (`state.redb`)
//! and the old raft log's (`raft-log.redb`, read once by `crate::raft` to
//! move it into its own file). `docs/store.md` describes the same format for
//! people; change both together and bump [`FORMAT_VERSION`] when old files
//! can no longer be read (and migrate them in `store::format`).
//!
//! Every value of `state.redb` but the format marker is *sealed*: the value's
//! bytes followed by a CRC-32 of the table's name, the key and those bytes
//! ([`seal`]). redb does not check what it reads back, so a byte changed on
//! the disk would otherwise be served as a different object; with the key in
//! the checksum, a value found under a damaged key fails too, instead of
//! renaming its object. Keys are bytes (`&[u8]`), not `&str`: redb panics
//! when a `&str` key it reads back is not UTF-8, and a damaged key must be
//! reported, not crash the master.

use super::error::StoreError;
use redb::TableDefinition;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::{self, Display};

/// `Kind/namespace/name` (see `flotilla_api::objects::object_key`) → sealed postcard of `Object`.
pub(crate) const OBJECTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("objects");

/// The format marker alone ([`meta::FORMAT`]). It stays a plain `u64` under
/// `&str` keys in every format, so that any version can read it first and
/// refuse a file it does not know.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Store-wide counters, keyed by the names in [`counters`] → sealed `u64`
/// (8 bytes, little-endian).
pub(crate) const COUNTERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("counters");

/// Revision → sealed postcard of the `WatchEvent` written at that revision;
/// holds the revisions after `counters::COMPACTED` up to `counters::REVISION`,
/// one event each. The key in the checksum is the revision's 8 bytes, big-endian.
pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");

/// `<digest>/<offset, 20 digits>` → the module's bytes from that offset, at
/// most `STORED_CHUNK` of them, sealed. Module bytes live here once, from
/// the first staged chunk on: a module is committed when its Module object
/// exists (`Module//sha256-<hex>` in [`OBJECTS`]); without one, the rows are
/// an upload still being staged. No value is larger than a chunk, so redb
/// never needs a page of the module's size, and pages a deleted module
/// frees fit the next module's chunks.
pub(crate) const MODULE_CHUNKS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("module_chunks");

/// The key of the chunk of `digest` that starts at `offset`.
pub(crate) fn chunk_key(digest: &str, offset: u64) -> String {
    format!("{digest}/{offset:020}")
}

/// The key range holding every chunk of `digest` ('/' sorts just before '0').
pub(crate) fn chunk_range(digest: &str) -> (String, String) {
    (format!("{digest}/"), format!("{digest}0"))
}

/// The digest and offset a chunk key names; `Corrupt` for anything else.
pub(crate) fn parse_chunk_key(key: &[u8]) -> Result<(&str, u64), StoreError> {
    let text = key_str("module_chunks", key)?;
    text.rsplit_once('/')
        .filter(|(digest, offset)| offset.len() == 20 && flotilla_api::objects::is_digest(digest))
        .and_then(|(digest, offset)| Some((digest, offset.parse().ok()?)))
        .ok_or_else(|| {
            corrupt(
                "module_chunks",
                key,
                "the key is not <digest>/<offset, 20 digits>".into(),
            )
        })
}

/// Join token id → sealed postcard of `TokenRecord`.
pub(crate) const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");

/// Raft bookkeeping written in the same transaction as the state it
/// describes, keyed by the names in [`raft_meta`], sealed. The store does not
/// read the values; `crate::raft` encodes them (postcard of openraft types).
pub(crate) const RAFT: TableDefinition<&[u8], &[u8]> = TableDefinition::new("raft");

/// The tables of `state.redb` in this format, by name: a file in this format
/// holds exactly these. A table missing from it was lost (its name in the
/// file damaged, say) and is not silently made again empty.
pub(crate) const STATE_TABLES: [&str; 7] = [
    "counters",
    "history",
    "meta",
    "module_chunks",
    "objects",
    "raft",
    "tokens",
];

/// Keys of the [`RAFT`] table.
pub(crate) mod raft_meta {
    /// The log id of the last entry applied to the state.
    pub(crate) const APPLIED: &str = "applied";
    /// The last membership config applied (with the log id that carried it).
    pub(crate) const MEMBERSHIP: &str = "membership";
}

/// Format 2, with each module in one value: kept to migrate its files
/// (`store::format`). Its other tables are this format's.
pub(crate) mod format2 {
    use redb::TableDefinition;

    /// The format number of these files.
    pub(crate) const FORMAT: u64 = 2;
    /// `sha256:<hex>` digest → the module's bytes, sealed.
    pub(crate) const MODULES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("modules");
    /// `<digest>/<offset, 20 digits>` → one staged chunk of an upload, sealed.
    pub(crate) const UPLOADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("uploads");
    /// The tables of a format 2 file.
    pub(crate) const STATE_TABLES: [&str; 8] = [
        "counters", "history", "meta", "modules", "objects", "raft", "tokens", "uploads",
    ];
}

/// Format 1, without checksums: kept to migrate its files (`store::format`).
pub(crate) mod format1 {
    use redb::TableDefinition;

    /// The format number of these files.
    pub(crate) const FORMAT: u64 = 1;
    pub(crate) const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
    pub(crate) const MODULES: TableDefinition<&str, &[u8]> = TableDefinition::new("modules");
    pub(crate) const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
    pub(crate) const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
    pub(crate) const RAFT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft");
    pub(crate) const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("history");
    /// The counters lived in `meta` beside the format, as plain `u64`s.
    pub(crate) const REVISION: &str = "revision";
    pub(crate) const COMPACTED: &str = "compacted";
}

// The raft log lives in its own file (`raft-log.wal`, see
// `crate::raft::log_store`). Data directories from before it have the log in
// `raft-log.redb`, whose tables are defined here so that every table of the
// master is in one place; the first start copies them into the new file.

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
    /// The on-disk format the file was written in.
    pub(crate) const FORMAT: &str = "format";
}

/// Keys of the [`COUNTERS`] table.
pub(crate) mod counters {
    /// The last revision written (0 in a new store).
    pub(crate) const REVISION: &str = "revision";
    /// Every history entry at or below this revision has been removed.
    pub(crate) const COMPACTED: &str = "compacted";
}

/// The on-disk format this code reads and writes: 4 = sealed values, byte
/// keys, module bytes in chunks, objects self-describing (their kind and
/// JSON, see `flotilla_api::objects::Object`). Format 1 to 3 files are
/// migrated when opened.
pub(crate) const FORMAT_VERSION: u64 = 4;

/// Format 3, with objects in protocol 2's positional layout: its tables are
/// this format's; only the objects (and the history events holding them)
/// are written anew.
pub(crate) mod format3 {
    /// The format number of these files.
    pub(crate) const FORMAT: u64 = 3;
}

/// The layout of an [`Image`](super::Image) (raft snapshots and backups):
/// decoded values, not the file's bytes, so it does not change with the
/// on-disk format. Backups made by earlier versions are of this layout.
pub(crate) const IMAGE_FORMAT: u64 = 1;

/// The bytes of the checksum at the end of every sealed value.
const SEAL_LEN: usize = 4;

/// The checksum of a sealed value: CRC-32 (IEEE, as zlib) of the table's
/// name, a 0 byte, the key's length (u32 little-endian), the key, then the
/// value's bytes. The length keeps key and value apart, so no bytes moved
/// from one to the other keep the sum.
fn checksum(table: &str, key: &[u8], payload: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(table.as_bytes());
    crc.update(&[0]);
    crc.update(&(key.len() as u32).to_le_bytes());
    crc.update(key);
    crc.update(payload);
    crc.finalize()
}

/// `payload` as stored in `table` under `key`: followed by its checksum.
pub(crate) fn seal(table: &str, key: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + SEAL_LEN);
    out.extend_from_slice(payload);
    out.extend_from_slice(&checksum(table, key, payload).to_le_bytes());
    out
}

/// The value's bytes of a sealed value read from `table` under `key`;
/// [`StoreError::Corrupt`] naming both if the checksum does not match (the
/// value, or the key it was found under, changed on the disk).
pub(crate) fn unseal<'v>(
    table: &str,
    key: &[u8],
    stored: &'v [u8],
) -> Result<&'v [u8], StoreError> {
    let Some(split) = stored.len().checked_sub(SEAL_LEN) else {
        return Err(corrupt(
            table,
            key,
            format!(
                "a value of {} bytes is too short to hold its checksum",
                stored.len()
            ),
        ));
    };
    let (payload, sum) = stored.split_at(split);
    let mut expected = [0u8; SEAL_LEN];
    expected.copy_from_slice(sum);
    if u32::from_le_bytes(expected) != checksum(table, key, payload) {
        return Err(corrupt(
            table,
            key,
            "the value fails its checksum: it, or the key it is stored under, changed on the disk"
                .into(),
        ));
    }
    Ok(payload)
}

/// A [`StoreError::Corrupt`] about the value at `key` of `table`.
pub(crate) fn corrupt(table: &str, key: &[u8], why: String) -> StoreError {
    match <[u8; 8]>::try_from(key) {
        Ok(revision) if table == "history" => StoreError::Corrupt(format!(
            "table history, revision {}: {why}",
            u64::from_be_bytes(revision)
        )),
        _ => StoreError::Corrupt(format!("table {table}, key {}: {why}", ShowKey(key))),
    }
}

/// A key as people read it: text where it is text, escapes elsewhere (a
/// damaged key need not be UTF-8).
pub(crate) struct ShowKey<'k>(pub(crate) &'k [u8]);

impl Display for ShowKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    write!(f, "{c}")?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// The key bytes a history entry is sealed with.
pub(crate) fn history_key(revision: u64) -> [u8; 8] {
    revision.to_be_bytes()
}

/// A key read back as text; `Corrupt` if it is not UTF-8 (every key this
/// store writes is).
pub(crate) fn key_str<'k>(table: &str, key: &'k [u8]) -> Result<&'k str, StoreError> {
    std::str::from_utf8(key).map_err(|_| corrupt(table, key, "the key is not UTF-8".into()))
}

/// Encodes a value as postcard.
pub(crate) fn encode<T: Serialize>(what: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value)
        .map_err(|e| StoreError::invalid(format!("cannot encode {what}: {e}")))
}

/// Encodes a value as postcard, sealed for `table` under `key`.
pub(crate) fn encode_value<T: Serialize>(
    table: &str,
    key: &[u8],
    what: &str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    Ok(seal(table, key, &encode(what, value)?))
}

/// Decodes a sealed postcard value read from `table` at `key`: the checksum
/// first, then the value; see [`decode`].
pub(crate) fn decode_value<T: DeserializeOwned>(
    table: &str,
    key: &[u8],
    stored: &[u8],
) -> Result<T, StoreError> {
    let payload = unseal(table, key, stored)?;
    match postcard::take_from_bytes(payload) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(corrupt(
            table,
            key,
            format!("{} trailing bytes after the value", rest.len()),
        )),
        Err(e) => Err(corrupt(table, key, e.to_string())),
    }
}

/// A sealed `u64` counter.
pub(crate) fn encode_counter(key: &str, value: u64) -> Vec<u8> {
    seal("counters", key.as_bytes(), &value.to_le_bytes())
}

/// The `u64` of a sealed counter.
pub(crate) fn decode_counter(key: &[u8], stored: &[u8]) -> Result<u64, StoreError> {
    let bytes = unseal("counters", key, stored)?;
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt("counters", key, format!("{} bytes, not 8", bytes.len())))?;
    Ok(u64::from_le_bytes(bytes))
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
