//! What replication needs from the store: raft's bookkeeping (the last
//! applied log id, the last membership) written in the same redb transaction
//! as the command it accounts for, and whole-state [`Image`]s for raft
//! snapshots. The bookkeeping is opaque bytes here, so the store knows
//! nothing of openraft; `crate::raft` encodes and decodes it.

use super::command::{Command, Outcome, TokenRecord};
use super::error::{db, StoreError};
use super::machine::{read_counter, Machine};
use super::tables::{
    self, chunk_key, counters, decode_value, encode, encode_counter, encode_value, parse_chunk_key,
    raft_meta, seal, unseal, COUNTERS, HISTORY, MODULE_CHUNKS, OBJECTS, RAFT, TOKENS,
};
use super::watch::Live;
use super::Store;
use flotilla_api::objects::{module_name, object_key, Kind, Object};
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

/// Raft's bookkeeping for one applied log entry, encoded by the raft layer.
#[derive(Debug, Clone, Copy)]
pub struct RaftMark<'a> {
    /// The applied entry's log id.
    pub applied: &'a [u8],
    /// The membership config with the log id that carried it, when this
    /// entry changes it (`None`: the stored one stays).
    pub membership: Option<&'a [u8]>,
    /// Whether the commit waits for the disk. The raft log already holds
    /// the entry durably, so a commit that is lost in a crash is applied
    /// again from the log on restart; only some commits need to wait.
    pub durable: bool,
}

/// Raft's bookkeeping as stored with the state (`None` where never written).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMeta {
    pub applied: Option<Vec<u8>>,
    pub membership: Option<Vec<u8>>,
}

/// The whole state at one revision, as a raft snapshot carries it. The change
/// history is not included: a store that installs an image has no history
/// before the image's revision (watches from older revisions get `TooOld`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// The layout of the image (`tables::IMAGE_FORMAT`, 1); objects are
    /// postcard inside, so another layout cannot be installed. It holds
    /// values, not the file's bytes, so it does not change with the on-disk
    /// format.
    pub format: u64,
    /// The revision of the last write in the image.
    pub revision: u64,
    /// Every object, in key order.
    pub objects: Vec<Object>,
    /// Module digest → bytes, in digest order. (The store keeps them in
    /// chunks; an image holds each whole, the layout it always had.)
    pub modules: Vec<(String, Vec<u8>)>,
    /// Every join token, in id order.
    pub tokens: Vec<TokenRecord>,
    /// Chunks of uploads not committed yet, by key (`digest/offset`): a
    /// replica that installs the image mid-upload commits it like the others.
    pub uploads: Vec<(String, Vec<u8>)>,
    /// The raft bookkeeping of the same transaction as the data.
    pub raft: RaftMeta,
}

impl Store {
    /// Applies one command from the raft log together with its bookkeeping,
    /// in one redb write transaction (durable on return).
    ///
    /// The outer error is fatal (`Db`, `Corrupt`): nothing was written and the
    /// replica must stop. The inner result is the command's answer: a refusal
    /// (`Conflict`, `NotFound`, ...) is as deterministic as a success, so the
    /// entry still counts as applied: its partial writes, if any, are dropped
    /// and only the bookkeeping is committed.
    pub fn apply_raft(
        &self,
        mark: RaftMark<'_>,
        cmd: Command,
    ) -> Result<Result<Outcome, StoreError>, StoreError> {
        match self.apply_marked(mark, Some(cmd))? {
            Some(answer) => Ok(answer),
            // apply_marked answers every command it is given.
            None => Err(StoreError::Broken(
                "a raft command was applied without an answer".into(),
            )),
        }
    }

    /// Applies one raft entry that carries a batch of commands: in one write
    /// transaction, in order, each with the answer it would have had as an
    /// entry of its own. A refused command must leave no partial writes, so
    /// when one is refused the transaction is dropped and run again without
    /// it (the others see the same state either way, as a refusal changes
    /// nothing); the final run commits with the entry's bookkeeping. The
    /// same on every master: the runs depend only on the commands and the state.
    pub fn apply_raft_batch_command(
        &self,
        mark: RaftMark<'_>,
        cmds: Vec<Command>,
    ) -> Result<Vec<Result<Outcome, StoreError>>, StoreError> {
        let mut refused: std::collections::BTreeMap<usize, StoreError> = Default::default();
        loop {
            let (_serial, mut txn) = self.begin_write()?;
            set_durability(&mut txn, mark.durable)?;
            let mut machine = Machine::open(&txn)?;
            let mut answers: Vec<Option<Outcome>> = Vec::with_capacity(cmds.len());
            let mut newly_refused = None;
            for (i, cmd) in cmds.iter().enumerate() {
                if refused.contains_key(&i) {
                    answers.push(None);
                    continue;
                }
                match machine.apply(cmd.clone()) {
                    Ok(outcome) => answers.push(Some(outcome)),
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => {
                        newly_refused = Some((i, e));
                        break;
                    }
                }
            }
            if let Some((i, e)) = newly_refused {
                drop(machine);
                txn.abort().map_err(db("dropping a refused command"))?;
                refused.insert(i, e);
                continue;
            }
            let (_, events) = machine.finish(self.inner.history)?;
            write_mark(&txn, mark)?;
            txn.commit().map_err(db("committing a batch of commands"))?;
            for event in events {
                // An error only means nobody is watching right now.
                let _ = self
                    .inner
                    .live
                    .send(Live::Event(std::sync::Arc::new(event)));
            }
            return Ok(answers
                .into_iter()
                .enumerate()
                .map(|(i, a)| match a {
                    Some(outcome) => Ok(outcome),
                    None => Err(refused
                        .remove(&i)
                        .unwrap_or_else(|| StoreError::invalid("a batched command had no answer"))),
                })
                .collect());
        }
    }

    /// Applies several raft entries in one write transaction (one commit,
    /// one wait for the disk at most): `cmds` holds each entry's command
    /// (`None` for an entry without one), `last` the bookkeeping of the last
    /// entry. The answers come back in order.
    ///
    /// `Ok(None)` when one of the commands was refused: nothing is written
    /// then, and the caller applies the entries one by one with
    /// [`Store::apply_raft`], where a refusal drops only its own writes. So
    /// the state after a batch is always the state after the same entries
    /// applied one at a time.
    pub fn apply_raft_batch(
        &self,
        last: RaftMark<'_>,
        cmds: Vec<Option<Command>>,
    ) -> Result<Option<Vec<Option<Outcome>>>, StoreError> {
        let (_serial, mut txn) = self.begin_write()?;
        set_durability(&mut txn, last.durable)?;
        let mut machine = Machine::open(&txn)?;
        let mut answers = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            match cmd.map(|cmd| machine.apply(cmd)) {
                None => answers.push(None),
                Some(Ok(outcome)) => answers.push(Some(outcome)),
                Some(Err(e)) if e.is_fatal() => return Err(e),
                Some(Err(_)) => {
                    drop(machine);
                    txn.abort().map_err(db("dropping a refused batch"))?;
                    return Ok(None);
                }
            }
        }
        let (_, events) = machine.finish(self.inner.history)?;
        write_mark(&txn, last)?;
        txn.commit().map_err(db("committing raft entries"))?;
        for event in events {
            // An error only means nobody is watching right now.
            let _ = self
                .inner
                .live
                .send(Live::Event(std::sync::Arc::new(event)));
        }
        Ok(Some(answers))
    }

    /// Records a raft entry that carries no command (a leader's blank entry,
    /// a membership change): only the bookkeeping changes.
    pub fn mark_raft(&self, mark: RaftMark<'_>) -> Result<(), StoreError> {
        self.apply_marked(mark, None).map(|_| ())
    }

    /// The raft bookkeeping of the last committed transaction.
    pub fn raft_meta(&self) -> Result<RaftMeta, StoreError> {
        let txn = self.read()?;
        let raft = txn.open_table(RAFT).map_err(db("opening the raft table"))?;
        read_raft(&raft)
    }

    /// The whole state, read in one read transaction: the data and the raft
    /// bookkeeping belong to the same commit.
    pub fn export(&self) -> Result<Image, StoreError> {
        let txn = self.read()?;
        let revision = read_counter(
            &txn.open_table(COUNTERS)
                .map_err(db("opening the counters table"))?,
            counters::REVISION,
        )?;
        let mut objects = Vec::new();
        for entry in txn
            .open_table(OBJECTS)
            .map_err(db("opening the objects table"))?
            .iter()
            .map_err(db("reading the objects"))?
        {
            let (k, v) = entry.map_err(db("reading the objects"))?;
            objects.push(decode_value("objects", k.value(), v.value())?);
        }
        let objects_table = txn
            .open_table(OBJECTS)
            .map_err(db("opening the objects table"))?;
        // Chunks of a stored module are joined into its bytes; those of an
        // upload still staged stay pieces, as the image has always had them.
        let mut modules: Vec<(String, Vec<u8>)> = Vec::new();
        let mut uploads = Vec::new();
        for entry in txn
            .open_table(MODULE_CHUNKS)
            .map_err(db("opening the module_chunks table"))?
            .iter()
            .map_err(db("reading the module chunks"))?
        {
            let (k, v) = entry.map_err(db("reading the module chunks"))?;
            let key = k.value();
            let (digest, offset) = parse_chunk_key(key)?;
            let bytes = unseal("module_chunks", key, v.value())?;
            match modules.last_mut() {
                Some((last, joined)) if last == digest => joined.extend_from_slice(bytes),
                _ if offset == 0 && is_stored(&objects_table, digest)? => {
                    modules.push((digest.to_string(), bytes.to_vec()))
                }
                _ => uploads.push((chunk_key(digest, offset), bytes.to_vec())),
            }
        }
        let mut tokens = Vec::new();
        for entry in txn
            .open_table(TOKENS)
            .map_err(db("opening the tokens table"))?
            .iter()
            .map_err(db("reading the tokens"))?
        {
            let (k, v) = entry.map_err(db("reading the tokens"))?;
            tokens.push(decode_value("tokens", k.value(), v.value())?);
        }
        let raft = read_raft(&txn.open_table(RAFT).map_err(db("opening the raft table"))?)?;
        Ok(Image {
            format: tables::IMAGE_FORMAT,
            revision,
            objects,
            modules,
            tokens,
            uploads,
            raft,
        })
    }

    /// Replaces the whole state with `image` in one write transaction: the
    /// objects, modules, tokens, revision and raft bookkeeping become the
    /// image's, the history is emptied and `compacted` set to the image's
    /// revision. Live watchers are then told to check the history again: those
    /// that had not reached the image's revision get `TooOld` (list again)
    /// rather than silently missing what the image changed.
    ///
    /// `Invalid` if the image is of another format or older than the state
    /// (revisions never go back; raft only installs snapshots ahead of what a
    /// replica applied).
    pub fn install(&self, image: &Image) -> Result<(), StoreError> {
        if image.format != tables::IMAGE_FORMAT {
            return Err(StoreError::invalid(format!(
                "the snapshot is in store format {}, this master reads format {}: \
                 run the same flotilla version on every master",
                image.format,
                tables::IMAGE_FORMAT
            )));
        }
        let (_serial, txn) = self.begin_write()?;
        {
            let mut counters_table = txn
                .open_table(COUNTERS)
                .map_err(db("opening the counters table"))?;
            let revision = read_counter(&counters_table, counters::REVISION)?;
            if image.revision < revision {
                return Err(StoreError::invalid(format!(
                    "the snapshot is at revision {}, older than this store's {revision}",
                    image.revision
                )));
            }
            for key in [counters::REVISION, counters::COMPACTED] {
                counters_table
                    .insert(
                        key.as_bytes(),
                        encode_counter(key, image.revision).as_slice(),
                    )
                    .map_err(db("writing the revision"))?;
            }
        }
        // Deleting a table frees its pages at once, where removing every row
        // would rewrite them first.
        for (table, name) in [
            (OBJECTS, "objects"),
            (MODULE_CHUNKS, "module_chunks"),
            (TOKENS, "tokens"),
            (RAFT, "raft"),
        ] {
            txn.delete_table(table)
                .map_err(db(format!("clearing the {name} table")))?;
        }
        txn.delete_table(HISTORY)
            .map_err(db("clearing the history table"))?;
        write_image(&txn, image)?;
        txn.commit().map_err(db("committing a snapshot"))?;
        // An error only means nobody is watching right now.
        let _ = self.inner.live.send(Live::Reset);
        Ok(())
    }

    /// Applies `cmd` (if any) and writes `mark`; `None` when there was no command.
    fn apply_marked(
        &self,
        mark: RaftMark<'_>,
        cmd: Option<Command>,
    ) -> Result<Option<Result<Outcome, StoreError>>, StoreError> {
        // A poisoned lock guards no data (see `Store::apply`).
        let (_serial, mut txn) = self.begin_write()?;
        set_durability(&mut txn, mark.durable)?;
        let mut machine = Machine::open(&txn)?;
        let answer = cmd.map(|cmd| machine.apply(cmd));
        if let Some(Err(refused)) = answer {
            drop(machine);
            if refused.is_fatal() {
                return Err(refused);
            }
            // The command may have written part of itself before it was
            // refused: drop all of it, and record only that the entry was applied.
            txn.abort().map_err(db("dropping a refused command"))?;
            let mut txn = self
                .inner
                .db
                .begin_write()
                .map_err(db("starting a write transaction"))?;
            set_durability(&mut txn, mark.durable)?;
            write_mark(&txn, mark)?;
            txn.commit()
                .map_err(db("committing the raft bookkeeping"))?;
            return Ok(Some(Err(refused)));
        }
        let (_, events) = machine.finish(self.inner.history)?;
        write_mark(&txn, mark)?;
        // Always committed, even when the command changed no object: the
        // bookkeeping moved.
        txn.commit().map_err(db("committing a raft entry"))?;
        for event in events {
            // An error only means nobody is watching right now.
            let _ = self
                .inner
                .live
                .send(Live::Event(std::sync::Arc::new(event)));
        }
        Ok(answer)
    }
}

/// Whether a commit of `txn` waits for the disk (see [`RaftMark::durable`]).
fn set_durability(txn: &mut WriteTransaction, durable: bool) -> Result<(), StoreError> {
    txn.set_durability(if durable {
        redb::Durability::Immediate
    } else {
        redb::Durability::None
    })
    .map_err(db("choosing the durability of a write"))
}

/// Writes the bookkeeping of one applied entry.
fn write_mark(txn: &WriteTransaction, mark: RaftMark<'_>) -> Result<(), StoreError> {
    let mut raft = txn.open_table(RAFT).map_err(db("opening the raft table"))?;
    put_raft(&mut raft, raft_meta::APPLIED, mark.applied)?;
    if let Some(membership) = mark.membership {
        put_raft(&mut raft, raft_meta::MEMBERSHIP, membership)?;
    }
    Ok(())
}

/// Writes one value of the raft table, sealed.
fn put_raft(
    raft: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
    key: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    let key = key.as_bytes();
    raft.insert(key, seal("raft", key, value).as_slice())
        .map_err(db("writing the raft bookkeeping"))?;
    Ok(())
}

/// Writes the rows of an image into freshly emptied tables.
fn write_image(txn: &WriteTransaction, image: &Image) -> Result<(), StoreError> {
    let mut objects = txn
        .open_table(OBJECTS)
        .map_err(db("opening the objects table"))?;
    for object in &image.objects {
        let key = object.key();
        let value = encode_value("objects", key.as_bytes(), "an object", object)?;
        objects
            .insert(key.as_bytes(), value.as_slice())
            .map_err(db("writing an object"))?;
    }
    let mut chunks = txn
        .open_table(MODULE_CHUNKS)
        .map_err(db("opening the module_chunks table"))?;
    let mut put = |digest: &str, offset: u64, bytes: &[u8]| {
        super::format::put_chunks(&mut chunks, digest, offset, bytes)
    };
    for (digest, bytes) in &image.modules {
        if !flotilla_api::objects::is_digest(digest) {
            return Err(StoreError::invalid(format!(
                "the snapshot holds a module under {digest:?}, which is not a digest"
            )));
        }
        put(digest, 0, bytes)?;
    }
    let stored: std::collections::BTreeSet<&str> =
        image.modules.iter().map(|(d, _)| d.as_str()).collect();
    for (key, bytes) in &image.uploads {
        let (digest, offset) = parse_chunk_key(key.as_bytes()).map_err(|_| {
            StoreError::invalid(format!(
                "the snapshot holds an upload chunk under {key:?}, not <digest>/<offset>"
            ))
        })?;
        // An image of format 2 may stage pieces of a module it holds: the
        // same bytes, which the store keeps once (and cut differently, they
        // would overlap the module's chunks).
        if !stored.contains(digest) {
            put(digest, offset, bytes)?;
        }
    }
    let mut tokens = txn
        .open_table(TOKENS)
        .map_err(db("opening the tokens table"))?;
    for token in &image.tokens {
        let key = token.id.as_bytes();
        let value = encode_value("tokens", key, "a token", token)?;
        tokens
            .insert(key, value.as_slice())
            .map_err(db("writing a token"))?;
    }
    // Recreated empty: the history starts after the image's revision.
    txn.open_table(HISTORY)
        .map_err(db("opening the history table"))?;
    let mut raft = txn.open_table(RAFT).map_err(db("opening the raft table"))?;
    if let Some(applied) = &image.raft.applied {
        put_raft(&mut raft, raft_meta::APPLIED, applied)?;
    }
    if let Some(membership) = &image.raft.membership {
        put_raft(&mut raft, raft_meta::MEMBERSHIP, membership)?;
    }
    Ok(())
}

/// Whether the Module object of `digest` is in `objects`.
fn is_stored(
    objects: &impl ReadableTable<&'static [u8], &'static [u8]>,
    digest: &str,
) -> Result<bool, StoreError> {
    let key = object_key(Kind::Module, "", &module_name(digest));
    Ok(objects
        .get(key.as_bytes())
        .map_err(db("reading an object"))?
        .is_some())
}

fn read_raft(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
) -> Result<RaftMeta, StoreError> {
    let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.as_bytes();
        match table.get(key).map_err(db("reading the raft table"))? {
            Some(v) => Ok(Some(unseal("raft", key, v.value())?.to_vec())),
            None => Ok(None),
        }
    };
    Ok(RaftMeta {
        applied: get(raft_meta::APPLIED)?,
        membership: get(raft_meta::MEMBERSHIP)?,
    })
}

/// The magic at the start of a backup file (`flotilla cluster snapshot`).
const BACKUP_MAGIC: &[u8; 8] = b"FLTBKUP1";

/// A backup file's bytes: a magic, then postcard of the [`Image`].
pub fn encode_backup(image: &Image) -> Result<Vec<u8>, StoreError> {
    let mut out = BACKUP_MAGIC.to_vec();
    out.extend(encode("a backup", image)?);
    Ok(out)
}

/// The image in a backup file; `Invalid`, saying what is wrong, for anything
/// else (another file, a damaged or truncated backup, another store format).
pub fn decode_backup(bytes: &[u8]) -> Result<Image, StoreError> {
    let body = bytes.strip_prefix(BACKUP_MAGIC).ok_or_else(|| {
        StoreError::invalid(
            "this is not a Flotilla backup (make one with `flotilla cluster snapshot FILE`)",
        )
    })?;
    let image: Image = match postcard::take_from_bytes(body) {
        Ok((image, [])) => image,
        Ok(_) | Err(_) => {
            return Err(StoreError::invalid(
                "the backup is damaged or truncated; use another copy",
            ))
        }
    };
    if image.format != tables::IMAGE_FORMAT {
        return Err(StoreError::invalid(format!(
            "the backup is in store format {}, this master reads format {}",
            image.format,
            tables::IMAGE_FORMAT
        )));
    }
    Ok(image)
}
