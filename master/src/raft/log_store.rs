//! The raft log in its own append-only file ([`LOG_FILE`](super::LOG_FILE)):
//! entries, the vote, the committed log id and the last purged log id, as
//! checksummed records written one after another.
//!
//! File layout: an 8-byte magic ([`MAGIC`]), then records, each
//! `len: u32 LE | crc32(body): u32 LE | body` where `body` is a kind byte
//! and the postcard of the value:
//!
//! | kind | value | meaning when replayed |
//! | --- | --- | --- |
//! | 1 | `Entry` | the entry at its index |
//! | 2 | `Vote` | the vote |
//! | 3 | `Option<LogId>` | the committed log id |
//! | 4 | `u64` | entries at this index and after are gone (truncation) |
//! | 5 | `LogId` | entries up to this one are gone; it is the last purged |
//!
//! Appends are group-committed: an append writes its records into the file
//! (the page cache) at once, so readers find them, and hands its callback to
//! the flusher thread; the flusher `fdatasync`s once for every append that
//! arrived while it was busy and only then tells openraft, through the
//! callbacks, that those entries are on disk. The vote, truncations and
//! purges are synced before their call returns. A purge first waits until a
//! snapshot on disk covers the entries it drops ([`LogStore::guard_purges`]). The committed id is written
//! without a sync of its own: the next sync carries it, and raft only needs
//! it not to run ahead of the log.
//!
//! Opening replays the records. A bad record (cut short, failing its
//! checksum, a length no record has, zeros) is what a crash in the middle of
//! a write leaves, but only at the end of the file: when nothing whole
//! follows it, the file is cut back to the last whole record (nothing after
//! it was ever reported durable). When a whole record follows it, the file
//! was damaged after it was written (a disk or file-system fault) and
//! cutting would drop records raft was told are stored: opening fails with
//! [`StoreError::Corrupt`], naming the file and the offset, and leaves the
//! file as it is. A record that passes its checksum but does not decode is
//! not a torn write either, and opening fails rather than drop it.
//!
//! Memory holds where each entry's record is, not the entry: entries are read
//! back with positioned reads (recent ones come from the page cache). When
//! purges and truncations have left more dead bytes than live ones (and at
//! least [`COMPACT_AT`]), the live state is copied into a new file that
//! replaces the old one atomically (write, sync, rename, sync directory).
//!
//! A master whose data directory still has the earlier redb log
//! (`raft-log.redb`) has it copied into the new file on first open, after
//! which the redb file is removed.

use super::{blocking, failure, storage_error, Entry, LogId, RaftStoreError, TypeConfig};
use crate::store::tables::{decode, raft_log_meta, RAFT_LOG, RAFT_LOG_META};
use crate::store::StoreError;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader, StorageError, Vote,
};
use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt::{self, Debug};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};

/// The first bytes of a raft log file.
pub const MAGIC: &[u8; 8] = b"FLTRLOG1";

/// Bytes before a record's body: its length and its checksum.
const HEADER: u64 = 8;

/// No record is larger (a raft entry fits in a 4 MiB frame between masters).
const MAX_RECORD: u32 = 64 << 20;

/// Dead bytes in the file that make it worth rewriting (when they also
/// outweigh the live ones).
pub const COMPACT_AT: u64 = 64 << 20;

/// The earlier log format's file, migrated on first open.
const REDB_LOG_FILE: &str = "raft-log.redb";

const KIND_ENTRY: u8 = 1;
const KIND_VOTE: u8 = 2;
const KIND_COMMITTED: u8 = 3;
const KIND_TRUNCATE: u8 = 4;
const KIND_PURGE: u8 = 5;

/// The raft log; cheap to clone (clones share the file), which is also how
/// openraft gets its separate log readers.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Dead bytes that make a rewrite worth it ([`COMPACT_AT`]; less in tests).
    compact_at: u64,
    state: Mutex<State>,
    /// Appends waiting for the flusher's sync, in order.
    flushes: Mutex<mpsc::Sender<LogFlushed<TypeConfig>>>,
    /// How far a snapshot on disk covers the log, if purges must wait for
    /// one ([`LogStore::guard_purges`]).
    guard: Mutex<Option<super::PurgeGuard>>,
}

/// How long a purge waits for the snapshot that covers it (a follower's
/// state machine installing a large snapshot on an SD card) before raft is
/// told the log cannot be purged.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// What the file holds, as replayed, and where the next record goes.
struct State {
    file: Arc<File>,
    /// Where the next record starts.
    end: u64,
    /// Where each entry's record is, by index.
    entries: BTreeMap<u64, Located>,
    /// Bytes of the entries' records in `entries`.
    live: u64,
    vote: Option<Vote<u64>>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    /// A write or sync failed: what the file holds is uncertain, so every
    /// later operation fails with this until the master restarts and
    /// replays the file.
    broken: Option<String>,
}

/// One entry's record in the file.
#[derive(Debug, Clone, Copy)]
struct Located {
    log_id: LogId,
    offset: u64,
    len: u64,
}

impl fmt::Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// A record: header and body, ready to write.
fn record<T: Serialize>(kind: u8, value: &T) -> Result<Vec<u8>, StoreError> {
    let body = postcard::to_extend(value, vec![kind])
        .map_err(|e| StoreError::invalid(format!("raft log: cannot encode a record: {e}")))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or_else(|| {
            StoreError::invalid(format!(
                "raft log: a record of {} bytes is larger than the {MAX_RECORD} allowed",
                body.len()
            ))
        })?;
    let mut out = Vec::with_capacity(HEADER as usize + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// What replaying one record does.
enum Replayed {
    Entry(Box<Entry>),
    Vote(Vote<u64>),
    Committed(Option<LogId>),
    Truncate(u64),
    Purge(LogId),
}

/// Decodes a record's body (checksum already checked).
fn decode_body(body: &[u8]) -> Result<Replayed, String> {
    let (kind, value) = body.split_first().ok_or("an empty record")?;
    fn value_of<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        match postcard::take_from_bytes(bytes) {
            Ok((v, [])) => Ok(v),
            Ok((_, rest)) => Err(format!("{} bytes after the value", rest.len())),
            Err(e) => Err(e.to_string()),
        }
    }
    Ok(match *kind {
        KIND_ENTRY => Replayed::Entry(Box::new(value_of(value)?)),
        KIND_VOTE => Replayed::Vote(value_of(value)?),
        KIND_COMMITTED => Replayed::Committed(value_of(value)?),
        KIND_TRUNCATE => Replayed::Truncate(value_of(value)?),
        KIND_PURGE => Replayed::Purge(value_of(value)?),
        other => return Err(format!("unknown record kind {other}")),
    })
}

/// The header's length and checksum.
fn parse_header(header: &[u8; HEADER as usize]) -> (u32, u32) {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    (len, crc)
}

fn io_err(doing: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io {
        doing: format!("raft log: {doing}").into(),
        source,
    }
}

impl State {
    fn empty(file: Arc<File>) -> State {
        State {
            file,
            end: MAGIC.len() as u64,
            entries: BTreeMap::new(),
            live: 0,
            vote: None,
            committed: None,
            last_purged: None,
            broken: None,
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        match &self.broken {
            Some(why) => Err(StoreError::Broken(format!(
                "raft log: an earlier write failed ({why}); restart the master to recover from the file"
            ))),
            None => Ok(()),
        }
    }

    /// What a record means for the state, at `offset` with `len` bytes.
    fn replay(&mut self, what: Replayed, offset: u64, len: u64) {
        match what {
            Replayed::Entry(entry) => self.put_entry(Located {
                log_id: entry.log_id,
                offset,
                len,
            }),
            Replayed::Vote(v) => self.vote = Some(v),
            Replayed::Committed(c) => self.committed = c,
            Replayed::Truncate(from) => self.drop_from(from),
            Replayed::Purge(upto) => self.purge_upto(upto),
        }
    }

    /// Records where an entry is; it replaces the entries at its index and
    /// after (raft truncates before it overwrites, so normally there are none).
    fn put_entry(&mut self, at: Located) {
        self.drop_from(at.log_id.index);
        self.entries.insert(at.log_id.index, at);
        self.live += at.len;
    }

    /// Forgets the entries up to `upto`, which becomes the last purged.
    fn purge_upto(&mut self, upto: LogId) {
        let kept = self.entries.split_off(&(upto.index + 1));
        let gone = std::mem::replace(&mut self.entries, kept);
        self.live -= gone.values().map(|l| l.len).sum::<u64>();
        self.last_purged = Some(upto);
    }

    /// Forgets the entries at `from` and after.
    fn drop_from(&mut self, from: u64) {
        let gone = self.entries.split_off(&from);
        self.live -= gone.values().map(|l| l.len).sum::<u64>();
    }

    /// Writes `bytes` at the end; on failure cuts the file back to the end
    /// (a partial record must not stay) or, failing that too, breaks.
    fn write(&mut self, bytes: &[u8]) -> Result<u64, StoreError> {
        self.check()?;
        let at = self.end;
        if let Err(e) = self.file.write_all_at(bytes, at) {
            if let Err(e2) = self.file.set_len(at) {
                self.broken = Some(format!("writing: {e}; cutting back: {e2}"));
            }
            return Err(io_err("writing")(e));
        }
        self.end += bytes.len() as u64;
        Ok(at)
    }
}

/// Syncs `file`'s data; a failure breaks the log (after a failed fsync the
/// kernel may have dropped the dirty pages, so the file cannot be trusted).
fn sync(inner: &Inner) -> Result<(), StoreError> {
    let file = {
        let state = lock(&inner.state);
        state.check()?;
        state.file.clone()
    };
    if let Err(e) = file.sync_data() {
        let mut state = lock(&inner.state);
        state.broken = Some(format!("syncing: {e}"));
        return Err(io_err("syncing")(e));
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Syncs the directory holding `path`, so that a file created or renamed
/// there survives a crash.
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing the data directory"))
}

/// Opens the log file for reading and writing, locked against a second
/// master on the same data directory.
fn open_locked(path: &Path) -> Result<File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    // The log holds every command, pod env values included: owner only.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_err("opening"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Broken(
            "raft log: the file is locked by another process".into(),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(io_err("locking")(e)),
    }
}

/// The start of a new log file: the magic, then the vote, the last purged
/// log id and the committed log id as records (entries follow).
fn head(
    vote: Option<&Vote<u64>>,
    last_purged: Option<&LogId>,
    committed: Option<LogId>,
) -> Result<Vec<u8>, StoreError> {
    let mut out = MAGIC.to_vec();
    if let Some(v) = vote {
        out.extend(record(KIND_VOTE, v)?);
    }
    if let Some(p) = last_purged {
        out.extend(record(KIND_PURGE, p)?);
    }
    out.extend(record(KIND_COMMITTED, &committed)?);
    Ok(out)
}

/// Where a new log file is written before it replaces `path`.
fn new_path(path: &Path) -> PathBuf {
    path.with_extension("wal.new")
}

/// An empty, locked file at [`new_path`] of `path`.
fn new_file(path: &Path) -> Result<File, StoreError> {
    let tmp = new_path(path);
    let _ = std::fs::remove_file(&tmp);
    open_locked(&tmp)
}

/// Syncs the new file written for `path` and renames it over `path`, durably.
fn put_in_place(file: &File, path: &Path) -> Result<(), StoreError> {
    file.sync_all()
        .map_err(io_err("syncing the new log file"))?;
    std::fs::rename(new_path(path), path).map_err(io_err("putting the new log file in place"))?;
    sync_dir(path)
}

/// Reads the whole file into a state: replays every whole record, and cuts
/// off a torn tail. Gives the state and how many bytes were cut off.
fn replay(file: File, path: &Path) -> Result<(State, u64), StoreError> {
    let size = file.metadata().map_err(io_err("reading its size"))?.len();
    let file = Arc::new(file);
    let mut state = State::empty(file.clone());
    if size == 0 {
        // A new file (or one whose magic never reached the disk).
        file.write_all_at(MAGIC, 0)
            .and_then(|()| file.sync_all())
            .map_err(io_err("writing the file's header"))?;
        sync_dir(path)?;
        return Ok((state, 0));
    }
    let mut reader = BufReader::with_capacity(1 << 20, &*file);
    let mut magic = [0u8; 8];
    if reader.read_exact(&mut magic).is_err() || &magic != MAGIC {
        return Err(StoreError::Corrupt(format!(
            "raft log {}: not a Flotilla raft log (the file does not start with {:?}); \
             restore this master from a snapshot or remove it from the cluster and join it anew",
            path.display(),
            String::from_utf8_lossy(MAGIC)
        )));
    }
    // Read errors are returned, not taken for a torn tail: the size says
    // the bytes are there, and cutting on an I/O error would drop records.
    let mut offset = MAGIC.len() as u64;
    let bad = loop {
        let mut header = [0u8; HEADER as usize];
        if offset + HEADER > size {
            // Part of a header at most: nothing can follow it.
            break None;
        }
        reader.read_exact(&mut header).map_err(io_err("reading"))?;
        let (len, crc) = parse_header(&header);
        // No record is empty (it has a kind byte): zeros are a torn write
        // when at the end (a file system may show a grown file's new blocks
        // as zeros).
        if len == 0 {
            break Some("has a length of 0 (zeros where a record should start)".to_string());
        }
        if len > MAX_RECORD {
            break Some(format!(
                "claims {len} bytes, more than the {MAX_RECORD} a record may have"
            ));
        }
        if offset + HEADER + u64::from(len) > size {
            break Some(format!(
                "claims {len} bytes, more than the file has after it"
            ));
        }
        let mut body = vec![0u8; len as usize];
        reader.read_exact(&mut body).map_err(io_err("reading"))?;
        if crc32fast::hash(&body) != crc {
            break Some("fails its checksum".to_string());
        }
        let what = decode_body(&body).map_err(|why| {
            StoreError::Corrupt(format!(
                "raft log {}: the record at byte {offset} is whole but does not decode ({why}); \
                 was the file written by a newer Flotilla?",
                path.display()
            ))
        })?;
        let total = HEADER + u64::from(len);
        state.replay(what, offset, total);
        offset += total;
    };
    if let Some(why) = bad {
        if let Some(next) = record_after(&file, offset, size)? {
            return Err(damaged(path, offset, &why, next));
        }
    }
    state.end = offset;
    let cut = size - offset;
    if cut > 0 {
        file.set_len(offset)
            .and_then(|()| file.sync_all())
            .map_err(io_err("cutting off a torn record at the end"))?;
    }
    Ok((state, cut))
}

/// The error for a bad record at `offset` that a whole record at `next`
/// follows: what happened, and the two ways to bring the master back.
fn damaged(path: &Path, offset: u64, why: &str, next: u64) -> StoreError {
    let dir = path.parent().unwrap_or(Path::new(".")).display();
    StoreError::Corrupt(format!(
        "raft log {}: the record at byte {offset} {why}, yet a whole record follows \
         at byte {next}: the file was damaged after it was written (a disk or file-system \
         fault), which is not what a crash leaves, and cutting it there would drop writes \
         this master acknowledged, so the master does not start; the file is left as it is. \
         Either let this master catch up from the other masters: remove it from the cluster \
         (`flotilla cluster remove ID`; its id is in {dir}/node-id), delete {dir}, and join \
         it anew (`flotilla token create --master`, then \
         `flotilla master --join ADDRESS --token TOKEN`); or, with no other master to catch \
         up from, restore a backup: move {dir} aside, copy its pki/ca.crt and pki/ca.key \
         into a new data directory, and start `flotilla master --restore BACKUP` on it. \
         docs/operations.md (\"A corruption error at start-up\") has the steps",
        path.display()
    ))
}

/// The reflected CRC-32 polynomial (IEEE), the checksum `crc32fast` computes.
const CRC_POLY: u32 = 0xEDB8_8320;

/// `c·x` modulo the CRC polynomial, in CRC-32's bit order (bit 31 is x⁰).
const fn crc_times_x(c: u32) -> u32 {
    (c >> 1) ^ (CRC_POLY & (c & 1).wrapping_neg())
}

/// The checksum register's step for each byte value, to update a checksum
/// one byte at a time.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = crc_times_x(c);
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// `a·b` modulo the CRC polynomial, in CRC-32's bit order.
pub(super) const fn crc_mul(a: u32, mut b: u32) -> u32 {
    let mut product = 0;
    let mut bit = 31;
    loop {
        if (a >> bit) & 1 == 1 {
            product ^= b;
        }
        if bit == 0 {
            return product;
        }
        b = crc_times_x(b);
        bit -= 1;
    }
}

/// `x^(8·2^k)` modulo the polynomial: what a checksum is multiplied by when
/// `2^k` bytes follow it.
const CRC_SHIFTS: [u32; 32] = {
    let mut shifts = [0u32; 32];
    shifts[0] = 1 << 23; // x⁸
    let mut k = 1;
    while k < 32 {
        shifts[k] = crc_mul(shifts[k - 1], shifts[k - 1]);
        k += 1;
    }
    shifts
};

/// `x^(8·len)` modulo the polynomial: crc(A‖B) = crc(A)·x^(8·|B|) ⊕ crc(B),
/// so this turns the checksums of a prefix and of the whole into the
/// checksum of the `len` bytes between (zlib's `crc32_combine`).
pub(super) fn crc_shift(len: u32) -> u32 {
    let mut shift = 1 << 31; // x⁰
    for (k, step) in CRC_SHIFTS.iter().enumerate() {
        if (len >> k) & 1 == 1 {
            shift = crc_mul(shift, *step);
        }
    }
    shift
}

/// A place after a bad record where a whole record might be.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    /// Where its body would end (first, so the heap gives the nearest end).
    end: u64,
    /// The running checksum at `end` if its body matches its checksum.
    running_at_end: u32,
    /// Where its header is.
    at: u64,
}

/// Bytes read at a time when looking past a bad record.
const SCAN_CHUNK: u64 = 1 << 20;

/// Where the first whole record after the bad one at `bad` is: a header at
/// any byte after `bad` whose length fits in the file, whose checksum matches
/// the body and whose body decodes. `None` means nothing whole follows: a
/// torn tail.
///
/// Any byte may start one, since a damaged length says nothing about where
/// the next record is. Checking each candidate's checksum in turn would read
/// up to [`MAX_RECORD`] bytes per candidate; instead one pass keeps the
/// checksum of everything from `bad + 1` to here, and a candidate's body
/// checksum follows from that running checksum at the body's start and end
/// ([`crc_shift`]). So the rest of the file is read once, each candidate costs
/// a few dozen multiplications, and memory holds only the candidates whose
/// end is still ahead. A checksum matching by chance at a random offset is
/// unlikely (about one in four billion); the body must also decode.
fn record_after(file: &File, bad: u64, size: u64) -> Result<Option<u64>, StoreError> {
    let from = bad + 1;
    if from + HEADER >= size {
        return Ok(None);
    }
    // The checksum register over the bytes from `from` up to `pos`.
    let mut running = !0u32;
    // The 8 bytes before `pos`: a candidate header whose body starts at `pos`.
    let mut header = [0u8; HEADER as usize];
    let mut pending = BinaryHeap::new();
    // Damage often repeats one length (a run of one byte value): its shift is
    // computed once.
    let mut last_shift = (0u32, 1u32 << 31);
    let mut chunk = vec![0u8; (size - from).min(SCAN_CHUNK) as usize];
    let mut pos = from;
    while pos < size {
        let n = (size - pos).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..n], pos)
            .map_err(io_err("reading past a bad record"))?;
        for &byte in &chunk[..n] {
            if let Some(at) = whole_ending_at(file, &mut pending, pos, !running)? {
                return Ok(Some(at));
            }
            if pos >= from + HEADER {
                let (len, crc) = parse_header(&header);
                // `byte` would be the kind: only known kinds decode.
                if (KIND_ENTRY..=KIND_PURGE).contains(&byte)
                    && (1..=MAX_RECORD).contains(&len)
                    && pos + u64::from(len) <= size
                {
                    if last_shift.0 != len {
                        last_shift = (len, crc_shift(len));
                    }
                    pending.push(Reverse(Candidate {
                        end: pos + u64::from(len),
                        running_at_end: crc ^ crc_mul(last_shift.1, !running),
                        at: pos - HEADER,
                    }));
                }
            }
            running = CRC_TABLE[((running ^ u32::from(byte)) & 0xff) as usize] ^ (running >> 8);
            header.copy_within(1.., 0);
            header[HEADER as usize - 1] = byte;
            pos += 1;
        }
    }
    whole_ending_at(file, &mut pending, size, !running)
}

/// Takes the candidates whose body ends at `pos` (`checksum` being the
/// running checksum there) and gives the first that is a whole record.
fn whole_ending_at(
    file: &File,
    pending: &mut BinaryHeap<Reverse<Candidate>>,
    pos: u64,
    checksum: u32,
) -> Result<Option<u64>, StoreError> {
    while pending.peek().is_some_and(|Reverse(c)| c.end == pos) {
        let Some(Reverse(c)) = pending.pop() else {
            break;
        };
        if c.running_at_end != checksum {
            continue;
        }
        let mut body = vec![0u8; (c.end - c.at - HEADER) as usize];
        file.read_exact_at(&mut body, c.at + HEADER)
            .map_err(io_err("reading past a bad record"))?;
        if decode_body(&body).is_ok() {
            return Ok(Some(c.at));
        }
    }
    Ok(None)
}

impl LogStore {
    /// Opens or creates the raft log at `path` (conventionally
    /// `<data dir>/raft-log.wal`), replaying it; an earlier redb log beside
    /// it is migrated first.
    pub fn open(path: &Path) -> Result<LogStore, RaftStoreError> {
        Self::open_compacting_at(path, COMPACT_AT)
    }

    /// [`open`](Self::open), rewriting the file once `compact_at` dead bytes
    /// (and more dead than live ones) have gathered.
    pub(crate) fn open_compacting_at(
        path: &Path,
        compact_at: u64,
    ) -> Result<LogStore, RaftStoreError> {
        // Damage to the file is reported as such, without the hint about a
        // second master that `Log` adds to failures to open or lock it.
        let fail = |e: StoreError| match e {
            StoreError::Corrupt(_) => RaftStoreError::Store(e),
            source => RaftStoreError::Log {
                path: path.to_path_buf(),
                source,
            },
        };
        let old = path.with_file_name(REDB_LOG_FILE);
        if !path.exists() && old.exists() {
            migrate(&old, path).map_err(fail)?;
        }
        let file = open_locked(path).map_err(fail)?;
        let (state, cut) = replay(file, path).map_err(fail)?;
        if cut > 0 {
            tracing::warn!(
                path = %path.display(),
                at = state.end,
                bytes = cut,
                "raft log: cut off a record torn by a crash (it was never reported written)"
            );
        }
        let (flushes, work) = mpsc::channel();
        let store = LogStore {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                compact_at,
                state: Mutex::new(state),
                flushes: Mutex::new(flushes),
                guard: Mutex::new(None),
            }),
        };
        // The flusher holds the store weakly: it ends when the store is dropped
        // (the channel closes with the last clone).
        let weak = Arc::downgrade(&store.inner);
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || flusher(weak, work))
            .map_err(|e| fail(io_err("starting the flusher thread")(e)))?;
        Ok(store)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.inner.state)
    }

    /// The entries whose index is in `range`, in order.
    fn entries(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<Entry>, StoreError> {
        self.entries_within(range, u64::MAX)
    }

    /// The entries in `range`, stopping before the one whose record would
    /// take the total past `budget` bytes (the first is always given).
    fn entries_within(
        &self,
        range: (Bound<u64>, Bound<u64>),
        budget: u64,
    ) -> Result<Vec<Entry>, StoreError> {
        let (file, located): (Arc<File>, Vec<Located>) = {
            let state = self.state();
            state.check()?;
            let mut total = 0u64;
            (
                state.file.clone(),
                state
                    .entries
                    .range(range)
                    .map(|(_, l)| *l)
                    .take_while(|l| {
                        let first = total == 0;
                        total = total.saturating_add(l.len);
                        first || total <= budget
                    })
                    .collect(),
            )
        };
        // Read outside the lock. A rewrite of the file meanwhile leaves this
        // handle on the old file, where these offsets still hold.
        located
            .iter()
            .map(|l| {
                let mut buf = vec![0u8; l.len as usize];
                file.read_exact_at(&mut buf, l.offset)
                    .map_err(io_err("reading an entry"))?;
                let (header, body) = buf.split_at(HEADER as usize);
                let (_, crc) = parse_header(header.try_into().unwrap_or(&[0; 8]));
                let bad = |why: String| {
                    StoreError::Corrupt(format!(
                        "raft log {}: entry {} at byte {} {why}",
                        self.inner.path.display(),
                        l.log_id.index,
                        l.offset
                    ))
                };
                if crc32fast::hash(body) != crc {
                    return Err(bad("fails its checksum (the disk changed it)".into()));
                }
                match decode_body(body).map_err(|e| bad(format!("does not decode: {e}")))? {
                    Replayed::Entry(e) if e.log_id == l.log_id => Ok(*e),
                    _ => Err(bad("is not the entry expected there".into())),
                }
            })
            .collect()
    }

    /// Writes a record and syncs the file before returning.
    fn write_synced(&self, bytes: &[u8], then: impl FnOnce(&mut State)) -> Result<(), StoreError> {
        {
            let mut state = self.state();
            state.write(bytes)?;
            then(&mut state);
        }
        sync(&self.inner)
    }

    /// Rewrites the file with only what is live, if dead records outweigh
    /// live ones by enough to be worth it.
    fn compact_if_worth_it(&self) -> Result<(), StoreError> {
        let mut state = self.state();
        let dead = state.end.saturating_sub(state.live + MAGIC.len() as u64);
        if dead < self.inner.compact_at || dead < state.live {
            return Ok(());
        }
        self.rewrite(&mut state)
    }

    /// Writes the live state into a new file beside the log and renames it
    /// over the log. Appends wait (the state stays locked) meanwhile.
    fn rewrite(&self, state: &mut State) -> Result<(), StoreError> {
        state.check()?;
        let mut fresh = State::empty(Arc::new(new_file(&self.inner.path)?));
        fresh.end = 0; // the head starts with the magic
        fresh.write(&head(
            state.vote.as_ref(),
            state.last_purged.as_ref(),
            state.committed,
        )?)?;
        fresh.vote = state.vote;
        fresh.last_purged = state.last_purged;
        fresh.committed = state.committed;
        for l in state.entries.values() {
            let mut buf = vec![0u8; l.len as usize];
            state
                .file
                .read_exact_at(&mut buf, l.offset)
                .map_err(io_err("copying an entry"))?;
            let offset = fresh.write(&buf)?;
            fresh.put_entry(Located { offset, ..*l });
        }
        put_in_place(&fresh.file, &self.inner.path)?;
        *state = fresh;
        Ok(())
    }
}

/// Copies a raft log of the earlier redb format at `old` into a new file at
/// `path`, then removes the old file.
fn migrate(old: &Path, path: &Path) -> Result<(), StoreError> {
    let db = redb::Database::open(old).map_err(|e| StoreError::Db {
        doing: format!("raft log: opening the earlier log {}", old.display()).into(),
        source: Box::new(e.into()),
    })?;
    let redb_err = |e: redb::Error| StoreError::Db {
        doing: format!("raft log: reading the earlier log {}", old.display()).into(),
        source: Box::new(e),
    };
    let txn = db.begin_read().map_err(|e| redb_err(e.into()))?;
    let meta = txn
        .open_table(RAFT_LOG_META)
        .map_err(|e| redb_err(e.into()))?;
    let read_meta = |key: &'static str| -> Result<Option<Vec<u8>>, StoreError> {
        Ok(meta
            .get(key)
            .map_err(|e| redb_err(e.into()))?
            .map(|v| v.value().to_vec()))
    };
    let vote: Option<Vote<u64>> = read_meta(raft_log_meta::VOTE)?
        .map(|b| decode("raft_log_meta", &raft_log_meta::VOTE, &b))
        .transpose()?;
    let purged: Option<LogId> = read_meta(raft_log_meta::LAST_PURGED)?
        .map(|b| decode("raft_log_meta", &raft_log_meta::LAST_PURGED, &b))
        .transpose()?;
    let committed: Option<Option<LogId>> = read_meta(raft_log_meta::COMMITTED)?
        .map(|b| decode("raft_log_meta", &raft_log_meta::COMMITTED, &b))
        .transpose()?;
    let mut out = head(vote.as_ref(), purged.as_ref(), committed.flatten())?;
    let table = txn.open_table(RAFT_LOG).map_err(|e| redb_err(e.into()))?;
    for row in table.iter().map_err(|e| redb_err(e.into()))? {
        let (k, v) = row.map_err(|e| redb_err(e.into()))?;
        let entry: Entry = decode("raft_log", &k.value(), v.value())?;
        out.extend(record(KIND_ENTRY, &entry)?);
    }
    drop((table, meta, txn, db));
    let file = new_file(path)?;
    file.write_all_at(&out, 0)
        .map_err(io_err("writing the migrated log"))?;
    put_in_place(&file, path)?;
    std::fs::remove_file(old).map_err(io_err("removing the earlier log after migrating it"))?;
    tracing::info!(from = %old.display(), to = %path.display(), "raft log migrated to its own file format");
    Ok(())
}

/// Syncs the file whenever appends are reported, once for all that arrived
/// meanwhile, and answers their callbacks after. Runs until the store is
/// gone.
fn flusher(store: std::sync::Weak<Inner>, work: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = work.recv() {
        let mut batch = vec![first];
        batch.extend(work.try_iter());
        let result = match store.upgrade() {
            Some(inner) => sync(&inner).map_err(|e| e.to_string()),
            None => Err("raft log: closed before a sync".to_string()),
        };
        for callback in batch {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

fn read_logs(e: StoreError) -> StorageError<u64> {
    storage_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn write_logs(e: StoreError) -> StorageError<u64> {
    storage_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let range = (range.start_bound().cloned(), range.end_bound().cloned());
        self.entries(range).map_err(read_logs)
    }

    /// What replication sends in one AppendEntries: entries up to
    /// [`REPLICATION_BUDGET`] bytes, so that a message never outgrows a
    /// frame (and takes a bounded time on a slow link) however large the
    /// entries are.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        self.entries_within(
            (Bound::Included(start), Bound::Excluded(end)),
            REPLICATION_BUDGET,
        )
        .map_err(read_logs)
    }
}

/// Bytes of entry records one replication message carries at most (a single
/// entry always goes): objects are at most 1.5 MiB and a frame 4 MiB.
pub(crate) const REPLICATION_BUDGET: u64 = 2 << 20;

impl LogStore {
    /// Makes purges wait until `guard` says a snapshot on disk (or the
    /// store, durably) holds what the purged entries did, so that a crash
    /// never finds entries gone that nothing else holds
    /// ([`StateMachine::purge_guard`](super::StateMachine::purge_guard)).
    pub fn guard_purges(&self, guard: super::PurgeGuard) {
        *lock(&self.inner.guard) = Some(guard);
    }

    /// Waits until the entries up to `upto` may go (at once without a guard).
    async fn wait_covered(&self, upto: LogId) -> Result<(), StorageError<u64>> {
        let Some(mut guard) = lock(&self.inner.guard).clone() else {
            return Ok(());
        };
        let covered = tokio::time::timeout(
            PURGE_WAIT,
            guard.wait_for(|c| c.is_some_and(|c| c.index >= upto.index)),
        )
        .await
        .map(|r| r.map(drop));
        match covered {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(write_logs(StoreError::Broken(
                "raft log: the state machine is gone; no snapshot will cover a purge".into(),
            ))),
            Err(_) => Err(write_logs(StoreError::Broken(format!(
                "raft log: no snapshot on disk covered the entries up to {upto} within {}s, \
                 so they were kept; restart the master",
                PURGE_WAIT.as_secs()
            )))),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let state = self.state();
        state.check().map_err(read_logs)?;
        // With every entry purged the log ends where the purge did.
        let last_log_id = state
            .entries
            .last_key_value()
            .map(|(_, l)| l.log_id)
            .or(state.last_purged);
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        let vote = *vote;
        blocking(ErrorSubject::Vote, move || {
            record(KIND_VOTE, &vote)
                .and_then(|bytes| this.write_synced(&bytes, |s| s.vote = Some(vote)))
                .map_err(|e| failure(ErrorSubject::Vote, ErrorVerb::Write, e))
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.state().vote)
    }

    // Saving `committed` lets a restarted master re-apply committed entries
    // at once instead of waiting to hear from a leader. It is written without
    // a sync of its own (it changes with every commit, and raft only needs it
    // not to run ahead of the log): the next sync carries it, and an older
    // one after a crash only means applying fewer entries before the leader
    // says more.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        let bytes = record(KIND_COMMITTED, &committed).map_err(write_logs)?;
        let mut state = self.state();
        state.write(&bytes).map_err(write_logs)?;
        state.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        Ok(self.state().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Encoded outside the lock; written in one go, readable at once; the
        // callback, which tells raft the entries are durable, fires after
        // the flusher's next sync.
        let mut bytes = Vec::new();
        let mut located = Vec::new();
        for entry in entries {
            let rec = record(KIND_ENTRY, &entry).map_err(write_logs)?;
            located.push(Located {
                log_id: entry.log_id,
                offset: bytes.len() as u64,
                len: rec.len() as u64,
            });
            bytes.extend(rec);
        }
        {
            let mut state = self.state();
            let at = state.write(&bytes).map_err(write_logs)?;
            for l in located {
                state.put_entry(Located {
                    offset: at + l.offset,
                    ..l
                });
            }
        }
        let sent = lock(&self.inner.flushes).send(callback);
        if let Err(mpsc::SendError(callback)) = sent {
            callback.log_io_completed(Err(std::io::Error::other(
                "the raft log's flusher has stopped",
            )));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let this = self.clone();
        blocking(ErrorSubject::Logs, move || {
            record(KIND_TRUNCATE, &log_id.index)
                .and_then(|bytes| this.write_synced(&bytes, |s| s.drop_from(log_id.index)))
                .and_then(|()| this.compact_if_worth_it())
                .map_err(|e| Box::new(write_logs(e)))
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        self.wait_covered(log_id).await?;
        let this = self.clone();
        blocking(ErrorSubject::Logs, move || {
            record(KIND_PURGE, &log_id)
                .and_then(|bytes| this.write_synced(&bytes, |s| s.purge_upto(log_id)))
                .and_then(|()| this.compact_if_worth_it())
                .map_err(|e| Box::new(write_logs(e)))
        })
        .await
    }
}
