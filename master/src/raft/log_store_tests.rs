//! Tests of the raft log file beyond openraft's suite: what a crash leaves
//! at the end of the file, damage that is not a crash (a bad record with
//! whole records after it), rewriting the file after purges, the earlier
//! redb log's migration and a second process on the same file.

use super::log_store::{crc_mul, crc_shift, MAGIC};
use super::*;
use crate::store::tables::{raft_log_meta, RAFT_LOG, RAFT_LOG_META};
use crate::store::Command;
use flotilla_api::meta::ObjectMeta;
use flotilla_api::objects::{Object, Pod};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, Vote};
use std::path::Path;

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry {
    let pod = Pod {
        metadata: ObjectMeta {
            name: format!("p{index}"),
            namespace: "default".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::Create {
            object: Object::Pod(pod),
        }),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn indexes(rt: &tokio::runtime::Runtime, log: &mut LogStore) -> Vec<u64> {
    rt.block_on(log.try_get_log_entries(0..))
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect()
}

/// A log with entries 1..=n of term 1, closed again.
fn written(path: &Path, rt: &tokio::runtime::Runtime, n: u64) {
    let mut log = LogStore::open(path).unwrap();
    rt.block_on(log.blocking_append((1..=n).map(|i| entry(1, i))))
        .unwrap();
}

/// Where each record ends in a log file's bytes.
fn record_ends(bytes: &[u8]) -> Vec<usize> {
    let mut ends = vec![];
    let mut at = MAGIC.len();
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        at += 8 + len;
        ends.push(at);
    }
    ends
}

/// Where each record starts in a log file's bytes.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let ends = record_ends(bytes);
    std::iter::once(MAGIC.len())
        .chain(ends.iter().copied())
        .take(ends.len())
        .collect()
}

/// Writes `damaged` over the log at `path`, opens it, and checks that the
/// open is refused as damage at `offset` and leaves the file as it was.
/// Gives the message.
fn refused_at(path: &Path, damaged: &[u8], offset: usize) -> String {
    std::fs::write(path, damaged).unwrap();
    let err = LogStore::open(path).unwrap_err();
    assert!(
        matches!(err, RaftStoreError::Store(StoreError::Corrupt(_))),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("the record at byte {offset} ")),
        "{message}"
    );
    // Both ways out are named.
    assert!(message.contains("flotilla cluster remove"), "{message}");
    assert!(message.contains("flotilla master --restore"), "{message}");
    assert_eq!(
        std::fs::read(path).unwrap(),
        damaged,
        "the file must be left as it is"
    );
    message
}

/// Bytes that look like nothing in particular (xorshift), the same each run.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn a_checksum_of_a_range_follows_from_the_checksums_around_it() {
    // What the scan past a bad record relies on.
    let data = noise(5000);
    for (a, b) in [(0, 0), (0, 1), (3, 4), (17, 4000), (1, 5000), (4999, 5000)] {
        let before = crc32fast::hash(&data[..a]);
        let range = crc32fast::hash(&data[a..b]);
        let whole = crc32fast::hash(&data[..b]);
        let shift = crc_shift(u32::try_from(b - a).unwrap());
        assert_eq!(whole, crc_mul(shift, before) ^ range, "bytes {a}..{b}");
    }
}

#[test]
fn a_flipped_bit_with_records_after_it_stops_the_open() {
    // The old replay took any bad checksum for a torn tail and cut
    // everything from there: here 20 acknowledged entries.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    written(&path, &rt, 30);
    let bytes = std::fs::read(&path).unwrap();
    let start = record_starts(&bytes)[10];
    let end = record_ends(&bytes)[10];
    // In the checksum, the kind byte, the middle and the last byte of the body.
    for at in [start + 5, start + 8, (start + end) / 2, end - 1] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x08;
        let message = refused_at(&path, &damaged, start);
        assert!(message.contains("fails its checksum"), "{message}");
        assert!(
            message.contains(&format!("follows at byte {end}")),
            "{message}"
        );
    }
    // Put back, the file opens with every entry.
    std::fs::write(&path, &bytes).unwrap();
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&rt, &mut log), (1..=30).collect::<Vec<_>>());
}

#[test]
fn a_damaged_length_with_records_after_it_stops_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    written(&path, &rt, 30);
    let bytes = std::fs::read(&path).unwrap();
    let start = record_starts(&bytes)[10];
    let len = u32::from_le_bytes(bytes[start..start + 4].try_into().unwrap());
    // Each was a torn tail to the old replay. The scan for later records must
    // start right after the bad one, not where its length points.
    let cases = [
        (
            len ^ 0x8000_0000,
            "more than the 67108864 a record may have",
        ),
        (len ^ 0x0010_0000, "more than the file has after it"),
        (len + 1, "fails its checksum"),
        (len + 200, "fails its checksum"),
        (len - 1, "fails its checksum"),
        (0, "has a length of 0"),
    ];
    for (damaged_len, why) in cases {
        let mut damaged = bytes.clone();
        damaged[start..start + 4].copy_from_slice(&damaged_len.to_le_bytes());
        let message = refused_at(&path, &damaged, start);
        assert!(message.contains(why), "length {damaged_len}: {message}");
    }
}

#[test]
fn zeros_with_records_after_them_stop_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    written(&path, &rt, 200);
    let bytes = std::fs::read(&path).unwrap();
    let starts = record_starts(&bytes);
    let ends = record_ends(&bytes);
    // Three whole records zeroed, then a 4 KiB block zeroed wherever it
    // falls (the record it starts in fails its checksum).
    let block = ends.iter().position(|e| *e > 4096).unwrap();
    for (from, to, bad) in [
        (starts[50], ends[52], starts[50]),
        (4096, 8192, starts[block]),
    ] {
        assert!(to < bytes.len() - 1000, "records must follow the zeros");
        let mut damaged = bytes.clone();
        damaged[from..to].fill(0);
        refused_at(&path, &damaged, bad);
    }
}

#[test]
fn a_long_torn_tail_of_noise_is_cut_off() {
    // Nothing whole in 2 MiB of noise after the last record: the scan reads
    // it once and finds no record, so it is a torn tail.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    written(&path, &rt, 5);
    let whole = std::fs::metadata(&path).unwrap().len();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(noise(2 << 20));
    std::fs::write(&path, &bytes).unwrap();
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&rt, &mut log), vec![1, 2, 3, 4, 5]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
}

#[test]
fn a_record_torn_by_a_crash_is_cut_off_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    written(&path, &rt, 5);
    let bytes = std::fs::read(&path).unwrap();
    let end = bytes.len();
    // A header announcing 100 bytes, and only 10 of them.
    let mut torn = bytes.clone();
    torn.extend(100u32.to_le_bytes());
    torn.extend([7u8; 14]);
    std::fs::write(&path, &torn).unwrap();

    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&rt, &mut log), vec![1, 2, 3, 4, 5]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), end as u64);
    rt.block_on(log.blocking_append([entry(1, 6)])).unwrap();
    drop(log);
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&rt, &mut log), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn zeros_where_a_record_should_start_are_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    written(&path, &rt, 4);
    let whole = std::fs::metadata(&path).unwrap().len();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend([0u8; 300]);
    std::fs::write(&path, &bytes).unwrap();
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&rt, &mut log), vec![1, 2, 3, 4]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), whole);
}

#[test]
fn a_last_record_failing_its_checksum_is_a_torn_write() {
    // Nothing whole follows it, so it cannot be told from a write cut short:
    // cut off, the records before it kept.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    written(&path, &rt, 3);
    let bytes = std::fs::read(&path).unwrap();
    let last = *record_starts(&bytes).last().unwrap();
    let end = bytes.len();
    // A bit of the body, then of the length (the body's rest is left over).
    for at in [end - 1, last] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x01;
        std::fs::write(&path, &damaged).unwrap();

        let mut log = LogStore::open(&path).unwrap();
        assert_eq!(indexes(&rt, &mut log), vec![1, 2]);
        let state = rt.block_on(log.get_log_state()).unwrap();
        assert_eq!(state.last_log_id, Some(log_id(1, 2)));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), last as u64);
    }
}

#[test]
fn a_whole_record_that_does_not_decode_stops_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    written(&path, &rt, 2);
    // Checksummed, so not torn: a kind this version does not know.
    let body = [99u8, 1, 2, 3];
    let mut bytes = std::fs::read(&path).unwrap();
    let end = *record_ends(&bytes).last().unwrap();
    bytes.truncate(end);
    bytes.extend((body.len() as u32).to_le_bytes());
    bytes.extend(crc32fast::hash(&body).to_le_bytes());
    bytes.extend(body);
    std::fs::write(&path, &bytes).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();

    let err = LogStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("does not decode"), "{err}");
    assert!(err.contains("newer Flotilla"), "{err}");
    // Nothing was cut.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
}

#[test]
fn a_file_that_is_not_a_raft_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    std::fs::write(&path, b"SQLite format 3\0 and more").unwrap();
    let err = LogStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("not a Flotilla raft log"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"SQLite format 3\0 and more".to_vec()
    );
}

#[test]
fn truncations_and_votes_are_replayed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    {
        let mut log = LogStore::open(&path).unwrap();
        rt.block_on(log.blocking_append((1..=6).map(|i| entry(1, i))))
            .unwrap();
        rt.block_on(log.save_vote(&Vote::new(2, 3))).unwrap();
        rt.block_on(log.truncate(log_id(1, 4))).unwrap();
        rt.block_on(log.blocking_append((4..=5).map(|i| entry(2, i))))
            .unwrap();
        rt.block_on(log.save_committed(Some(log_id(2, 4)))).unwrap();
        rt.block_on(log.save_vote(&Vote::new(3, 1))).unwrap();
    }
    let mut log = LogStore::open(&path).unwrap();
    let entries = rt.block_on(log.try_get_log_entries(0..)).unwrap();
    let ids: Vec<LogId> = entries.iter().map(|e| e.log_id).collect();
    assert_eq!(
        ids,
        vec![
            log_id(1, 1),
            log_id(1, 2),
            log_id(1, 3),
            log_id(2, 4),
            log_id(2, 5)
        ]
    );
    assert_eq!(rt.block_on(log.read_vote()).unwrap(), Some(Vote::new(3, 1)));
    assert_eq!(
        rt.block_on(log.read_committed()).unwrap(),
        Some(log_id(2, 4))
    );
}

#[test]
fn purges_rewrite_the_file_once_dead_bytes_outweigh_live_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    {
        let mut log = LogStore::open_compacting_at(&path, 4096).unwrap();
        rt.block_on(log.blocking_append((1..=200).map(|i| entry(1, i))))
            .unwrap();
        rt.block_on(log.save_vote(&Vote::new(1, 1))).unwrap();
        rt.block_on(log.save_committed(Some(log_id(1, 190))))
            .unwrap();
        let before = *record_ends(&std::fs::read(&path).unwrap()).last().unwrap();
        rt.block_on(log.purge(log_id(1, 180))).unwrap();
        let after = *record_ends(&std::fs::read(&path).unwrap()).last().unwrap();
        assert!(after * 5 < before, "{before} bytes before, {after} after");
        // Reads and appends go on in the rewritten file.
        assert_eq!(indexes(&rt, &mut log), (181..=200).collect::<Vec<_>>());
        rt.block_on(log.blocking_append([entry(1, 201)])).unwrap();
    }
    assert!(!path.with_extension("wal.new").exists());
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&rt, &mut log), (181..=201).collect::<Vec<_>>());
    let state = rt.block_on(log.get_log_state()).unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 180)));
    assert_eq!(rt.block_on(log.read_vote()).unwrap(), Some(Vote::new(1, 1)));
    assert_eq!(
        rt.block_on(log.read_committed()).unwrap(),
        Some(log_id(1, 190))
    );
}

#[test]
fn a_purge_of_everything_leaves_the_log_ending_at_the_purge() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    {
        let mut log = LogStore::open(&path).unwrap();
        rt.block_on(log.blocking_append((1..=3).map(|i| entry(1, i))))
            .unwrap();
        // A snapshot installed from the leader can reach past the log.
        rt.block_on(log.purge(log_id(1, 9))).unwrap();
    }
    let mut log = LogStore::open(&path).unwrap();
    let state = rt.block_on(log.get_log_state()).unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 9)));
    assert_eq!(state.last_log_id, Some(log_id(1, 9)));
    assert!(indexes(&rt, &mut log).is_empty());
}

#[test]
fn the_earlier_redb_log_is_migrated_on_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("raft-log.redb");
    {
        let db = redb::Database::create(&old).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(RAFT_LOG_META).unwrap();
            let vote = postcard::to_allocvec(&Vote::<u64>::new(4, 2)).unwrap();
            meta.insert(raft_log_meta::VOTE, vote.as_slice()).unwrap();
            let committed = postcard::to_allocvec(&Some(log_id(4, 6))).unwrap();
            meta.insert(raft_log_meta::COMMITTED, committed.as_slice())
                .unwrap();
            let purged = postcard::to_allocvec(&log_id(1, 2)).unwrap();
            meta.insert(raft_log_meta::LAST_PURGED, purged.as_slice())
                .unwrap();
            let mut table = txn.open_table(RAFT_LOG).unwrap();
            for i in 3..=7 {
                let e = postcard::to_allocvec(&entry(4, i)).unwrap();
                table.insert(i, e.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let rt = rt();
    let path = dir.path().join(LOG_FILE);
    let mut log = LogStore::open(&path).unwrap();
    assert!(!old.exists(), "the redb log is removed once migrated");
    assert_eq!(indexes(&rt, &mut log), vec![3, 4, 5, 6, 7]);
    assert_eq!(rt.block_on(log.read_vote()).unwrap(), Some(Vote::new(4, 2)));
    assert_eq!(
        rt.block_on(log.read_committed()).unwrap(),
        Some(log_id(4, 6))
    );
    let state = rt.block_on(log.get_log_state()).unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(4, 7)));
    assert!(std::fs::read(&path).unwrap().starts_with(MAGIC));
}

#[test]
fn a_second_process_on_the_same_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let _first = LogStore::open(&path).unwrap();
    let err = LogStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("locked by another process"), "{err}");
    assert!(err.contains("another master"), "{err}");
}

/// Replication reads entries up to a byte budget: big entries go a few at a
/// time, a single one always goes.
#[test]
fn replication_reads_are_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut log = LogStore::open(&dir.path().join(LOG_FILE)).unwrap();
    let big = |index: u64| {
        let mut e = entry(1, index);
        if let EntryPayload::Normal(Command::Create {
            object: Object::Pod(p),
        }) = &mut e.payload
        {
            p.metadata
                .annotations
                .insert("a".into(), "x".repeat(900 << 10));
        }
        e
    };
    rt.block_on(log.blocking_append((1..=5).map(big))).unwrap();
    let got = rt.block_on(log.limited_get_log_entries(1, 6)).unwrap();
    assert_eq!(got.len(), 2, "two 900 KiB entries fit in 2 MiB, not three");
    let got = rt.block_on(log.limited_get_log_entries(5, 6)).unwrap();
    assert_eq!(got.len(), 1);
    rt.block_on(log.blocking_append((6..=9).map(|i| entry(1, i))))
        .unwrap();
    let got = rt.block_on(log.limited_get_log_entries(6, 10)).unwrap();
    assert_eq!(got.len(), 4, "small entries all go");
}
