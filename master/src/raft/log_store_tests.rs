//! Tests of the raft log file beyond openraft's suite: what a crash leaves
//! at the end of the file, damage that is not a crash, rewriting the file
//! after purges, the earlier redb log's migration and a second process on
//! the same file.

use super::log_store::MAGIC;
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = rt();
    written(&path, &rt, 3);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = record_ends(&bytes).last().unwrap() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(indexes(&rt, &mut log), vec![1, 2]);
    let state = rt.block_on(log.get_log_state()).unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 2)));
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
