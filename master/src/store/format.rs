//! What opening `state.redb` checks before the store serves anything: the
//! format marker, that every table is there, that every value passes its
//! checksum and sits where a lookup finds it, that every module has all its
//! bytes; and the one-time move of a format 1 file (no checksums, `&str`
//! keys) or a format 2 file (each module one value) to the current format.
//!
//! The scan at open is what turns a byte changed on the disk into a refusal
//! to start instead of an object that is silently different, or missing: a
//! damaged key may move its row where no lookup reaches it, and only reading
//! every row finds that.

use super::error::{db, StoreError};
use super::tables::{
    self, chunk_key, corrupt, counters, encode_counter, format1, format2, format3, history_key,
    key_str, meta, parse_chunk_key, seal, unseal, ShowKey, COUNTERS, FORMAT_VERSION, HISTORY, META,
    MODULE_CHUNKS, OBJECTS, RAFT, STATE_TABLES, TOKENS,
};
use super::{TokenRecord, STORED_CHUNK};
use flotilla_api::objects::{is_digest, key_prefix, module_name, object_key, Kind, Object};
use flotilla_api::protocol::WatchEvent;
use redb::{
    Database, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, WriteTransaction,
};
use std::collections::{BTreeMap, BTreeSet};

/// What opening found, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The file was in format 1 and was rewritten in this format.
    pub(crate) migrated: bool,
    /// The file was new.
    pub(crate) created: bool,
}

/// Checks the format of `database`, creating the tables of a new file or
/// migrating a format 1 file (each in one write transaction); afterwards
/// every table of [`STATE_TABLES`] exists, in this format.
pub(crate) fn prepare(database: &Database) -> Result<Opened, StoreError> {
    let read = database
        .begin_read()
        .map_err(db("starting a read transaction"))?;
    let present: BTreeSet<String> = read
        .list_tables()
        .map_err(db("listing the tables"))?
        .map(|t| t.name().to_string())
        .collect();
    let format = if present.contains(META.name()) {
        read.open_table(META)
            .map_err(db("opening the meta table"))?
            .get(meta::FORMAT)
            .map_err(db("reading the format version"))?
            .map(|v| v.value())
    } else {
        None
    };
    match format {
        Some(FORMAT_VERSION) => {
            if let Some(missing) = STATE_TABLES.iter().find(|t| !present.contains(**t)) {
                return Err(StoreError::Corrupt(format!(
                    "the file is in format {FORMAT_VERSION} but has no {missing} table \
                     (its name in the file may be damaged)"
                )));
            }
            Ok(Opened::default())
        }
        Some(format3::FORMAT) => {
            drop(read);
            let txn = database
                .begin_write()
                .map_err(db("starting the migration"))?;
            migrate_from_3(&txn)?;
            txn.commit().map_err(db("committing the migration"))?;
            Ok(Opened {
                migrated: true,
                created: false,
            })
        }
        Some(format2::FORMAT) => {
            if let Some(missing) = format2::STATE_TABLES
                .iter()
                .find(|t| !present.contains(**t))
            {
                return Err(StoreError::Corrupt(format!(
                    "the file is in format {} but has no {missing} table \
                     (its name in the file may be damaged)",
                    format2::FORMAT
                )));
            }
            drop(read);
            let txn = database
                .begin_write()
                .map_err(db("starting the migration"))?;
            migrate_from_2(&txn)?;
            migrate_from_3(&txn)?;
            txn.commit().map_err(db("committing the migration"))?;
            Ok(Opened {
                migrated: true,
                created: false,
            })
        }
        Some(format1::FORMAT) => {
            drop(read);
            let txn = database
                .begin_write()
                .map_err(db("starting the migration"))?;
            migrate_from_1(&txn, &present)?;
            migrate_from_2(&txn)?;
            migrate_from_3(&txn)?;
            txn.commit().map_err(db("committing the migration"))?;
            Ok(Opened {
                migrated: true,
                created: false,
            })
        }
        Some(v) => Err(StoreError::Broken(format!(
            "the database is in format {v}, this master reads formats 1 to {FORMAT_VERSION}: \
             run the flotilla version that wrote it"
        ))),
        None => {
            // A new file, or one whose marker is lost: never take data for new.
            for name in present.iter().filter(|n| n.as_str() != META.name()) {
                let table = read
                    .open_untyped_table(TableDefinition::<&str, &[u8]>::new(name))
                    .map_err(db(format!("opening the {name} table")))?;
                if table.len().map_err(db("counting rows"))? > 0 {
                    return Err(StoreError::Corrupt(format!(
                        "the file holds a {name} table but no format marker (meta/format): \
                         the marker was damaged"
                    )));
                }
            }
            drop(read);
            let txn = database
                .begin_write()
                .map_err(db("starting to create the tables"))?;
            create_tables(&txn)?;
            txn.open_table(META)
                .map_err(db("opening the meta table"))?
                .insert(meta::FORMAT, FORMAT_VERSION)
                .map_err(db("writing the format version"))?;
            txn.commit().map_err(db("committing the new tables"))?;
            Ok(Opened {
                migrated: false,
                created: true,
            })
        }
    }
}

/// Opens (so creates) every table of the format.
fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    for def in [OBJECTS, COUNTERS, MODULE_CHUNKS, TOKENS, RAFT] {
        txn.open_table(def)
            .map_err(db(format!("creating the {} table", def.name())))?;
    }
    txn.open_table(HISTORY)
        .map_err(db("creating the history table"))?;
    txn.open_table(META)
        .map_err(db("creating the meta table"))?;
    Ok(())
}

/// Rewrites a format 1 file in format 2 within `txn` ([`migrate_from_2`]
/// then takes it to this one): every value
/// sealed, keys as bytes, the counters moved out of `meta`. Values are
/// checked on the way as far as they can be (objects and tokens decode and
/// sit under their own key, history events under their revision, module
/// bytes hash to their digest), so damage in the old file is refused rather
/// than sealed as good.
fn migrate_from_1(txn: &WriteTransaction, present: &BTreeSet<String>) -> Result<(), StoreError> {
    // redb panics on a `&str` key that is not UTF-8, which a damaged format
    // 1 file may hold; that must stop the open with an error, not a crash.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        migrate_tables(txn, present)
    }));
    match result {
        Ok(result) => result,
        Err(_) => Err(StoreError::Corrupt(
            "the format 1 file holds a key that is not UTF-8".into(),
        )),
    }
}

fn migrate_tables(txn: &WriteTransaction, present: &BTreeSet<String>) -> Result<(), StoreError> {
    {
        let mut meta_table = txn.open_table(META).map_err(db("opening the meta table"))?;
        let mut take = |key: &str| -> Result<u64, StoreError> {
            Ok(meta_table
                .remove(key)
                .map_err(db("reading the meta table"))?
                .map(|v| v.value())
                .unwrap_or(0))
        };
        let revision = take(format1::REVISION)?;
        let compacted = take(format1::COMPACTED)?;
        let mut counters_table = txn
            .open_table(COUNTERS)
            .map_err(db("creating the counters table"))?;
        for (key, value) in [
            (counters::REVISION, revision),
            (counters::COMPACTED, compacted),
        ] {
            counters_table
                .insert(key.as_bytes(), encode_counter(key, value).as_slice())
                .map_err(db("writing a counter"))?;
        }
        meta_table
            .insert(meta::FORMAT, format2::FORMAT)
            .map_err(db("writing the format version"))?;
    }
    let keyed: [Move; 5] = [
        (format1::OBJECTS, OBJECTS, check_object),
        (format1::MODULES, format2::MODULES, check_module),
        (format1::UPLOADS, format2::UPLOADS, check_nothing),
        (format1::TOKENS, TOKENS, check_token),
        (format1::RAFT, RAFT, check_nothing),
    ];
    for (old, new, check) in keyed {
        let name = new.name();
        if !present.contains(name) {
            txn.open_table(new)
                .map_err(db(format!("creating the {name} table")))?;
            continue;
        }
        let aside = format!("{name}-format1");
        let aside_def: TableDefinition<&str, &[u8]> = TableDefinition::new(&aside);
        txn.rename_table(old, aside_def)
            .map_err(db(format!("renaming the {name} table")))?;
        {
            let from = txn
                .open_table(aside_def)
                .map_err(db(format!("opening the old {name} table")))?;
            let mut to = txn
                .open_table(new)
                .map_err(db(format!("creating the {name} table")))?;
            for entry in from.iter().map_err(db("reading a format 1 table"))? {
                let (k, v) = entry.map_err(db("reading a format 1 table"))?;
                let key = k.value();
                check(key, v.value()).map_err(|why| {
                    StoreError::Corrupt(format!(
                        "migrating from format 1: table {name}, key {key}: {why}"
                    ))
                })?;
                to.insert(
                    key.as_bytes(),
                    seal(name, key.as_bytes(), v.value()).as_slice(),
                )
                .map_err(db("writing a migrated value"))?;
            }
        }
        txn.delete_table(aside_def)
            .map_err(db(format!("removing the old {name} table")))?;
    }
    if present.contains(HISTORY.name()) {
        let aside: TableDefinition<u64, &[u8]> = TableDefinition::new("history-format1");
        txn.rename_table(format1::HISTORY, aside)
            .map_err(db("renaming the history table"))?;
        {
            let from = txn
                .open_table(aside)
                .map_err(db("opening the old history table"))?;
            let mut to = txn
                .open_table(HISTORY)
                .map_err(db("creating the history table"))?;
            for entry in from.iter().map_err(db("reading the format 1 history"))? {
                let (k, v) = entry.map_err(db("reading the format 1 history"))?;
                let revision = k.value();
                let event: WatchEvent = tables::decode("history", &revision, v.value())?;
                if event.revision != revision {
                    return Err(StoreError::Corrupt(format!(
                        "migrating from format 1: table history, revision {revision}: \
                         holds the event of revision {}",
                        event.revision
                    )));
                }
                to.insert(
                    revision,
                    seal("history", &history_key(revision), v.value()).as_slice(),
                )
                .map_err(db("writing a migrated value"))?;
            }
        }
        txn.delete_table(aside)
            .map_err(db("removing the old history table"))?;
    } else {
        txn.open_table(HISTORY)
            .map_err(db("creating the history table"))?;
    }
    Ok(())
}

/// Rewrites a format 2 file in this format within `txn`: each module's
/// bytes, one value in `modules`, and each staged upload piece in `uploads`
/// become values of at most [`STORED_CHUNK`] bytes in `module_chunks`, and
/// both old tables are dropped. Every value is checked against its checksum
/// on the way. Pieces staged for a module that is stored are dropped: the
/// module's bytes are the same, and format 3 keeps them once.
fn migrate_from_2(txn: &WriteTransaction) -> Result<(), StoreError> {
    let objects = txn
        .open_table(OBJECTS)
        .map_err(db("opening the objects table"))?;
    let mut chunks = txn
        .open_table(MODULE_CHUNKS)
        .map_err(db("creating the module_chunks table"))?;
    let mut put =
        |digest: &str, offset: u64, bytes: &[u8]| put_chunks(&mut chunks, digest, offset, bytes);
    {
        let modules = txn
            .open_table(format2::MODULES)
            .map_err(db("opening the format 2 modules table"))?;
        for entry in modules.iter().map_err(db("reading the format 2 modules"))? {
            let (k, v) = entry.map_err(db("reading the format 2 modules"))?;
            let key = k.value();
            let digest = key_str("modules", key)?;
            if !is_digest(digest) {
                return Err(corrupt("modules", key, "the key is not a digest".into()));
            }
            put(digest, 0, unseal("modules", key, v.value())?)?;
        }
        let uploads = txn
            .open_table(format2::UPLOADS)
            .map_err(db("opening the format 2 uploads table"))?;
        for entry in uploads.iter().map_err(db("reading the format 2 uploads"))? {
            let (k, v) = entry.map_err(db("reading the format 2 uploads"))?;
            let key = k.value();
            let (digest, offset) = parse_chunk_key(key)
                .map_err(|_| corrupt("uploads", key, "the key is not <digest>/<offset>".into()))?;
            let bytes = unseal("uploads", key, v.value())?;
            let object = object_key(Kind::Module, "", &module_name(digest));
            if objects
                .get(object.as_bytes())
                .map_err(db("reading an object"))?
                .is_none()
            {
                put(digest, offset, bytes)?;
            }
        }
    }
    drop(chunks);
    drop(objects);
    txn.delete_table(format2::MODULES)
        .map_err(db("removing the format 2 modules table"))?;
    txn.delete_table(format2::UPLOADS)
        .map_err(db("removing the format 2 uploads table"))?;
    txn.open_table(META)
        .map_err(db("opening the meta table"))?
        .insert(meta::FORMAT, FORMAT_VERSION)
        .map_err(db("writing the format version"))?;
    Ok(())
}

/// Rewrites a format 3 file in this format within `txn`: every object, and
/// every history event (which holds one), is read (protocol 2's positional
/// layout is still understood) and written self-describing. Every master of
/// a cluster does the same to the same rows, so their state hashes agree.
fn migrate_from_3(txn: &WriteTransaction) -> Result<(), StoreError> {
    {
        let mut objects = txn
            .open_table(OBJECTS)
            .map_err(db("opening the objects table"))?;
        let mut rows = Vec::new();
        for entry in objects.iter().map_err(db("reading the objects"))? {
            let (k, v) = entry.map_err(db("reading the objects"))?;
            let key = k.value().to_vec();
            let object: Object = tables::decode_value("objects", &key, v.value())?;
            rows.push((key, object));
        }
        for (key, object) in rows {
            let value = tables::encode_value("objects", &key, "an object", &object)?;
            objects
                .insert(key.as_slice(), value.as_slice())
                .map_err(db("writing an object"))?;
        }
        let mut history = txn
            .open_table(HISTORY)
            .map_err(db("opening the history table"))?;
        let mut events = Vec::new();
        for entry in history.iter().map_err(db("reading the history"))? {
            let (k, v) = entry.map_err(db("reading the history"))?;
            let revision = k.value();
            let event: WatchEvent =
                tables::decode_value("history", &history_key(revision), v.value())?;
            events.push((revision, event));
        }
        for (revision, event) in events {
            let value =
                tables::encode_value("history", &history_key(revision), "an event", &event)?;
            history
                .insert(revision, value.as_slice())
                .map_err(db("writing an event"))?;
        }
    }
    txn.open_table(META)
        .map_err(db("opening the meta table"))?
        .insert(meta::FORMAT, FORMAT_VERSION)
        .map_err(db("writing the format version"))?;
    Ok(())
}

/// A check of one format 1 row: why it is damaged, if it is.
type Check = fn(&str, &[u8]) -> Result<(), String>;

/// A table as format 1 had it, as this format has it, and the check of its rows.
type Move = (
    TableDefinition<'static, &'static str, &'static [u8]>,
    TableDefinition<'static, &'static [u8], &'static [u8]>,
    Check,
);

fn check_nothing(_: &str, _: &[u8]) -> Result<(), String> {
    Ok(())
}

fn check_object(key: &str, value: &[u8]) -> Result<(), String> {
    let object: Object = tables::decode("objects", &key, value).map_err(|e| e.to_string())?;
    same_key(key, &object.key())
}

fn check_token(key: &str, value: &[u8]) -> Result<(), String> {
    let token: TokenRecord = tables::decode("tokens", &key, value).map_err(|e| e.to_string())?;
    same_key(key, &token.id)
}

fn check_module(key: &str, value: &[u8]) -> Result<(), String> {
    same_key(key, &flotilla_api::objects::digest_of(value))
}

fn same_key(key: &str, own: &str) -> Result<(), String> {
    if key == own {
        Ok(())
    } else {
        Err(format!("holds the value of {own}"))
    }
}

/// What the scan at open counted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) rows: u64,
    pub(crate) bytes: u64,
}

/// Reads every row of every table in `txn` and checks it: the value passes
/// its checksum, keys come in strictly increasing order, a lookup of the key
/// finds the row (a key damaged in a branch page would hide its rows from
/// lookups while a scan still sees them), and objects and tokens decode and
/// sit under their own key. The first problem is [`StoreError::Corrupt`].
/// Stores `bytes` of module `digest`, starting at `offset`, as sealed chunks
/// of at most [`STORED_CHUNK`] bytes.
pub(crate) fn put_chunks(
    chunks: &mut redb::Table<&'static [u8], &'static [u8]>,
    digest: &str,
    offset: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    for (i, chunk) in bytes.chunks(STORED_CHUNK).enumerate() {
        let key = chunk_key(digest, offset + (i * STORED_CHUNK) as u64);
        chunks
            .insert(
                key.as_bytes(),
                seal("module_chunks", key.as_bytes(), chunk).as_slice(),
            )
            .map_err(db("writing a module chunk"))?;
    }
    Ok(())
}

pub(crate) fn verify(txn: &ReadTransaction) -> Result<Verified, StoreError> {
    let mut seen = Verified::default();
    // Per digest: the bytes its chunks hold from offset 0, or where they miss one.
    let mut lengths: BTreeMap<String, Result<u64, u64>> = BTreeMap::new();
    for def in [OBJECTS, COUNTERS, MODULE_CHUNKS, TOKENS, RAFT] {
        let name = def.name();
        let table = txn
            .open_table(def)
            .map_err(db(format!("opening the {name} table")))?;
        let mut last: Option<Vec<u8>> = None;
        for entry in table.iter().map_err(db("reading a table to check it"))? {
            let (k, v) = entry.map_err(db("reading a table to check it"))?;
            let key = k.value();
            if last.as_deref().is_some_and(|l| l >= key) {
                return Err(corrupt(
                    name,
                    key,
                    "the keys of the table are out of order".into(),
                ));
            }
            let payload = unseal(name, key, v.value())?;
            match table.get(key).map_err(db("looking a key up to check it"))? {
                Some(found) if found.value().len() == v.value().len() => {}
                _ => {
                    return Err(corrupt(
                        name,
                        key,
                        "a lookup of the key does not find its row".into(),
                    ))
                }
            }
            check_row(name, key, payload)?;
            if name == MODULE_CHUNKS.name() {
                let (digest, offset) = parse_chunk_key(key)?;
                let len = lengths.entry(digest.to_string()).or_insert(Ok(0));
                if let Ok(n) = *len {
                    *len = if n == offset {
                        Ok(n + payload.len() as u64)
                    } else {
                        Err(n)
                    };
                }
            }
            seen.rows += 1;
            seen.bytes += v.value().len() as u64;
            last = Some(key.to_vec());
        }
    }
    let history = txn
        .open_table(HISTORY)
        .map_err(db("opening the history table"))?;
    let mut last = None;
    for entry in history
        .iter()
        .map_err(db("reading the history to check it"))?
    {
        let (k, v) = entry.map_err(db("reading the history to check it"))?;
        let revision = k.value();
        let key = history_key(revision);
        if last.is_some_and(|l| l >= revision) {
            return Err(corrupt(
                "history",
                &key,
                "the revisions are out of order".into(),
            ));
        }
        unseal("history", &key, v.value())?;
        if history
            .get(revision)
            .map_err(db("looking a revision up to check it"))?
            .is_none()
        {
            return Err(corrupt(
                "history",
                &key,
                "a lookup of the revision does not find its row".into(),
            ));
        }
        seen.rows += 1;
        seen.bytes += v.value().len() as u64;
        last = Some(revision);
    }
    check_module_bytes(txn, &lengths)?;
    Ok(seen)
}

/// Checks that every Module object has all its bytes: chunks from offset 0
/// on, without a gap, as many bytes as its `spec.size`. A module whose
/// bytes were lost would otherwise be served cut short (and fail on every
/// node that fetches it).
fn check_module_bytes(
    txn: &ReadTransaction,
    lengths: &BTreeMap<String, Result<u64, u64>>,
) -> Result<(), StoreError> {
    let objects = txn
        .open_table(OBJECTS)
        .map_err(db("opening the objects table"))?;
    let prefix = key_prefix(Kind::Module, None);
    for entry in objects
        .range(prefix.as_bytes()..)
        .map_err(db("reading the modules to check them"))?
    {
        let (k, v) = entry.map_err(db("reading the modules to check them"))?;
        let key = k.value();
        if !key.starts_with(prefix.as_bytes()) {
            break;
        }
        let Object::Module(m) = tables::decode_value::<Object>("objects", key, v.value())? else {
            continue;
        };
        let digest = &m.spec.digest;
        let why = match lengths.get(digest.as_str()) {
            Some(Ok(n)) if *n == m.spec.size => continue,
            Some(Ok(n)) => format!("its bytes end at byte {n} of {}", m.spec.size),
            Some(Err(at)) => format!("its bytes miss the chunk at byte {at}"),
            None => "its bytes are missing".to_string(),
        };
        return Err(corrupt(
            "objects",
            key,
            format!("module {digest}: {why} (table module_chunks)"),
        ));
    }
    Ok(())
}

/// The checks of one row beyond its checksum.
fn check_row(table: &str, key: &[u8], payload: &[u8]) -> Result<(), StoreError> {
    let own = match table {
        "objects" => tables::decode::<Object>(table, &ShowKey(key), payload)?.key(),
        "tokens" => tables::decode::<TokenRecord>(table, &ShowKey(key), payload)?.id,
        "module_chunks" => {
            parse_chunk_key(key)?;
            return Ok(());
        }
        _ => {
            key_str(table, key)?;
            return Ok(());
        }
    };
    if own.as_bytes() != key {
        return Err(corrupt(table, key, format!("holds the value of {own}")));
    }
    Ok(())
}
