//! Tests of the raft storage: openraft's conformance suite on real redb files
//! in temporary directories, then what the suite cannot know about Flotilla:
//! commands through raft answer as `Store::apply` does, the applied log id
//! stays with the data across reopening, and snapshots move the whole state.

use super::*;
use crate::store::{Command, Image, Store, StoreError, TokenRecord, TokenUsage};
use flotilla_api::meta::ObjectMeta;
use flotilla_api::objects::{self, Kind, Module, ModuleSpec, Node, Object, Pod, PodPhase};
use flotilla_api::time::Time;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder,
    StoredMembership, Vote,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tempfile::TempDir;

/// History window of the stores under test.
const HISTORY: u64 = 100;

/// A log store and a state machine in a fresh directory, as the suite wants them.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), RaftStorageError> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (log, sm) = open_both(&dir);
        Ok((dir, log, sm))
    }
}

fn open_store(dir: &TempDir) -> Store {
    Store::open(&dir.path().join("state.redb"), HISTORY).expect("store opens")
}

fn open_sm(dir: &TempDir) -> StateMachine {
    StateMachine::open(open_store(dir), &dir.path().join(SNAPSHOT_FILE))
        .expect("state machine opens")
}

fn open_both(dir: &TempDir) -> (LogStore, StateMachine) {
    let log = LogStore::open(&dir.path().join(LOG_FILE)).expect("log opens");
    (log, open_sm(dir))
}

#[test]
fn openraft_storage_suite() {
    // The suite runs each case on its own tokio runtime, so this test has none.
    Suite::test_all(Builder).expect("the storage suite passes");
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn command_entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn membership_entry(index: u64, voters: &[u64]) -> Entry {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(Membership::new(vec![voters], ())),
    }
}

fn pod(name: &str) -> Pod {
    let mut p = Pod {
        metadata: ObjectMeta::named("default", name),
        ..Pod::default()
    };
    p.metadata.uid = format!("uid-{name}");
    p.metadata.creation_timestamp = Some(Time(1_700_000_000_000));
    p.spec.module = "sha256:00".into();
    p
}

fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta::named("", name),
        ..Node::default()
    }
}

fn module_with(bytes: &[u8]) -> Module {
    Module {
        spec: ModuleSpec {
            digest: objects::digest_of(bytes),
            size: bytes.len() as u64,
            source: "app.wasm".into(),
        },
        ..Module::default()
    }
}

fn token(id: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        secret_hash: "hash".into(),
        expires: Time(1_800_000_000_000),
        description: "a test token".into(),
        usage: TokenUsage::Node,
    }
}

/// Commands that succeed, are refused, and change nothing, in one log.
fn commands() -> Vec<Command> {
    let mut moved = pod("a");
    moved.spec.node_name = Some("pi-1".into());
    let mut running = pod("a");
    running.status.phase = PodPhase::Running;
    vec![
        Command::Create {
            object: Object::Pod(pod("a")),
        },
        Command::Create {
            object: Object::Pod(pod("a")),
        }, // AlreadyExists
        Command::Create {
            object: Object::Node(node("pi-1")),
        },
        Command::Update {
            object: Object::Pod(moved),
            expected_rv: Some(1),
            status_only: false,
        },
        Command::Update {
            object: Object::Pod(running.clone()),
            expected_rv: Some(1),
            status_only: true,
        }, // Conflict
        Command::Update {
            object: Object::Pod(running),
            expected_rv: Some(3),
            status_only: true,
        },
        Command::PutModule {
            module: module_with(b"module"),
            bytes: b"module".to_vec(),
        },
        Command::PutModule {
            module: module_with(b"module"),
            bytes: b"module".to_vec(),
        }, // already there: no revision
        Command::Delete {
            kind: Kind::Node,
            namespace: String::new(),
            name: "pi-1".into(),
            expected_rv: None,
        },
        Command::DeleteToken { id: "nope".into() }, // NotFound
        Command::PutToken { record: token("t") },
    ]
}

/// The state without raft's bookkeeping.
fn state(store: &Store) -> Image {
    let mut image = store.export().expect("export");
    image.raft = Default::default();
    image
}

/// Applies `entries` through the state machine, returning the responses.
fn apply_all(sm: &mut StateMachine, entries: Vec<Entry>) -> Vec<RaftResponse> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(sm.apply(entries)).expect("entries apply")
}

#[test]
fn commands_through_raft_answer_as_store_apply_does() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let direct = open_store(&d1);
    let mut sm = open_sm(&d2);
    let log = commands();
    let expected: Vec<String> = log
        .iter()
        .map(|c| format!("{:?}", direct.apply(c.clone())))
        .collect();
    let entries: Vec<Entry> = log
        .into_iter()
        .enumerate()
        .map(|(i, c)| command_entry(i as u64 + 1, c))
        .collect();
    let last = entries.last().map(|e| e.log_id).unwrap();
    let responses = apply_all(&mut sm, entries);
    let got: Vec<String> = responses
        .into_iter()
        .map(|r| format!("{:?}", r.into_store_result().expect("a command's answer")))
        .collect();
    assert_eq!(got, expected);
    assert!(got[1].contains("AlreadyExists") && got[4].contains("Conflict"));
    assert_eq!(state(sm.store()), state(&direct));
    assert_eq!(sm.store().revision().unwrap(), 6);
    // Refused commands are applied entries all the same.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (applied, _) = rt.block_on(sm.applied_state()).unwrap();
    assert_eq!(applied, Some(last));
}

#[test]
fn a_refusal_round_trips_and_reads_as_the_store_error() {
    let refusal = Refusal::Conflict {
        key: "pods/default/a".into(),
        expected: 1,
        actual: 3,
    };
    let response = RaftResponse::Command(Err(refusal.clone()));
    let bytes = postcard::to_allocvec(&response).unwrap();
    assert_eq!(
        postcard::from_bytes::<RaftResponse>(&bytes).unwrap(),
        response
    );
    assert_eq!(
        refusal.to_string(),
        StoreError::from(refusal.clone()).to_string()
    );
    let fatal = StoreError::Broken("disk".into());
    assert!(matches!(fatal.into_refusal(), Err(StoreError::Broken(_))));
}

/// Refusals travel in raft responses between masters of different
/// versions: their encoding (variant order, fields) must not change.
#[test]
fn refusals_keep_their_wire_form() {
    let cases: [(Refusal, &[u8]); 5] = [
        (
            Refusal::NotFound("pods/default/a".into()),
            &[
                1, 1, 0, 14, 112, 111, 100, 115, 47, 100, 101, 102, 97, 117, 108, 116, 47, 97,
            ],
        ),
        (
            Refusal::AlreadyExists("nodes/pi-1".into()),
            &[1, 1, 1, 10, 110, 111, 100, 101, 115, 47, 112, 105, 45, 49],
        ),
        (
            Refusal::Conflict {
                key: "k".into(),
                expected: 1,
                actual: 300,
            },
            &[1, 1, 2, 1, 107, 1, 172, 2],
        ),
        (
            Refusal::TooOld {
                requested: 2,
                oldest: 7,
            },
            &[1, 1, 3, 2, 7],
        ),
        (Refusal::Invalid("bad".into()), &[1, 1, 4, 3, 98, 97, 100]),
    ];
    for (refusal, wire) in cases {
        let response = RaftResponse::Command(Err(refusal.clone()));
        assert_eq!(
            postcard::to_allocvec(&response).unwrap(),
            wire,
            "{refusal:?}"
        );
        assert_eq!(
            postcard::from_bytes::<RaftResponse>(wire).unwrap(),
            response
        );
    }
}

#[test]
fn reopening_keeps_the_applied_log_id_with_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    {
        let mut sm = open_sm(&dir);
        let mut entries = vec![membership_entry(1, &[1, 2, 3])];
        entries.extend(
            commands()
                .into_iter()
                .enumerate()
                .map(|(i, c)| command_entry(i as u64 + 2, c)),
        );
        entries.push(Entry {
            log_id: log_id(2, 13),
            payload: EntryPayload::Blank,
        });
        rt.block_on(sm.apply(entries)).unwrap();
    }
    let mut sm = open_sm(&dir);
    let (applied, membership) = rt.block_on(sm.applied_state()).unwrap();
    assert_eq!(applied, Some(log_id(2, 13)));
    assert_eq!(
        membership,
        StoredMembership::new(
            Some(log_id(1, 1)),
            Membership::new(vec![[1, 2, 3].into_iter().collect()], ())
        )
    );
    let store = sm.store();
    assert_eq!(store.revision().unwrap(), 6);
    assert!(store.get(Kind::Pod, "default", "a").unwrap().is_some());
    assert!(store.token("t").unwrap().is_some());
    // Applying the next entry after reopening continues from the same state.
    let more = vec![command_entry(
        14,
        Command::Create {
            object: Object::Pod(pod("b")),
        },
    )];
    let responses = rt.block_on(sm.apply(more)).unwrap();
    assert!(matches!(
        &responses[0],
        RaftResponse::Command(Ok(crate::store::Outcome::Object(o))) if o.meta().resource_version == 7
    ));
}

#[test]
fn the_log_vote_and_committed_id_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let rt = tokio::runtime::Runtime::new().unwrap();
    {
        let mut log = LogStore::open(&path).unwrap();
        let entries: Vec<Entry> = commands()
            .into_iter()
            .enumerate()
            .map(|(i, c)| command_entry(i as u64 + 1, c))
            .collect();
        rt.block_on(log.blocking_append(entries)).unwrap();
        rt.block_on(log.save_vote(&Vote::new(3, 2))).unwrap();
        rt.block_on(log.save_committed(Some(log_id(1, 5)))).unwrap();
        rt.block_on(log.purge(log_id(1, 2))).unwrap();
    }
    let mut log = LogStore::open(&path).unwrap();
    assert_eq!(rt.block_on(log.read_vote()).unwrap(), Some(Vote::new(3, 2)));
    assert_eq!(
        rt.block_on(log.read_committed()).unwrap(),
        Some(log_id(1, 5))
    );
    let state = rt.block_on(log.get_log_state()).unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 11)));
    let entries = rt.block_on(log.try_get_log_entries(0..)).unwrap();
    assert_eq!(entries.len(), 9);
    assert_eq!(entries[0].log_id, log_id(1, 3));
    assert!(matches!(
        &entries[0].payload,
        EntryPayload::Normal(Command::Create { .. })
    ));
}

/// A leader's state machine with some state, and its snapshot.
fn leader_with_snapshot(
    dir: &TempDir,
    rt: &tokio::runtime::Runtime,
) -> (StateMachine, openraft::Snapshot<TypeConfig>) {
    let mut sm = open_sm(dir);
    let mut entries = vec![membership_entry(1, &[1, 2])];
    entries.extend(
        commands()
            .into_iter()
            .enumerate()
            .map(|(i, c)| command_entry(i as u64 + 2, c)),
    );
    rt.block_on(sm.apply(entries)).unwrap();
    let snapshot = rt.block_on(async {
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await
    });
    (sm, snapshot.unwrap())
}

#[test]
fn a_snapshot_moves_the_whole_state_and_resets_watches() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (dl, df) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, snapshot) = leader_with_snapshot(&dl, &rt);
    assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 12)));

    let mut follower = open_sm(&df);
    let store = follower.store().clone();
    store
        .apply(Command::Create {
            object: Object::Pod(pod("only-on-the-follower")),
        })
        .unwrap();
    let mut live = store.watch(0).unwrap();
    rt.block_on(follower.install_snapshot(&snapshot.meta, snapshot.snapshot.clone()))
        .unwrap();

    // The whole state is the leader's, bookkeeping included.
    assert_eq!(store.export().unwrap(), leader.store().export().unwrap());
    assert_eq!(
        store.module_bytes(&objects::digest_of(b"module")).unwrap(),
        Some(b"module".to_vec())
    );
    assert!(store
        .get(Kind::Pod, "default", "only-on-the-follower")
        .unwrap()
        .is_none());
    // A live watcher that had not reached the snapshot's revision is told to
    // list again rather than left waiting for events it will never get.
    let next =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), live.next()).await });
    assert!(
        matches!(
            next,
            Ok(Err(StoreError::Refused(Refusal::TooOld { oldest: 6, .. })))
        ),
        "{next:?}"
    );
    assert!(matches!(
        store.watch(5),
        Err(StoreError::Refused(Refusal::TooOld { .. }))
    ));
    assert!(store.watch(6).is_ok());
    // Every handle on the database goes, as when the master stops.
    drop((follower, store, live));

    // The current snapshot survives reopening.
    let mut follower = open_sm(&df);
    let current = rt
        .block_on(follower.get_current_snapshot())
        .unwrap()
        .expect("a current snapshot");
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(
        current.snapshot.into_inner(),
        snapshot.snapshot.into_inner()
    );
}

#[test]
fn an_interrupted_install_is_finished_when_opening() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (dl, df) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (leader, snapshot) = leader_with_snapshot(&dl, &rt);
    // As if the follower wrote the snapshot file and crashed before the
    // state transaction committed.
    std::fs::copy(dl.path().join(SNAPSHOT_FILE), df.path().join(SNAPSHOT_FILE)).unwrap();
    let mut follower = open_sm(&df);
    assert_eq!(
        rt.block_on(follower.applied_state()).unwrap(),
        (
            snapshot.meta.last_log_id,
            snapshot.meta.last_membership.clone()
        )
    );
    assert_eq!(
        follower.store().export().unwrap(),
        leader.store().export().unwrap()
    );
}

#[test]
fn a_snapshot_that_does_not_match_its_meta_is_refused() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (dl, df) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_leader, snapshot) = leader_with_snapshot(&dl, &rt);
    let mut meta = snapshot.meta.clone();
    meta.last_log_id = Some(log_id(1, 99));
    let mut follower = open_sm(&df);
    assert!(rt
        .block_on(follower.install_snapshot(&meta, snapshot.snapshot.clone()))
        .is_err());
    let garbage = Box::new(std::io::Cursor::new(vec![0xff; 16]));
    assert!(rt
        .block_on(follower.install_snapshot(&snapshot.meta, garbage))
        .is_err());
    assert_eq!(follower.store().revision().unwrap(), 0);
    assert!(rt
        .block_on(follower.get_current_snapshot())
        .unwrap()
        .is_none());
}

#[test]
fn basic_nodes_and_entries_round_trip_through_postcard() {
    let nodes: BTreeMap<u64, BasicNode> = [(1, BasicNode::new("10.0.0.1:7443"))].into();
    let entry = Entry {
        log_id: log_id(4, 9),
        payload: EntryPayload::Membership(Membership::new(vec![[1].into()], nodes)),
    };
    let bytes = postcard::to_allocvec(&entry).unwrap();
    let back: Entry = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back.log_id, entry.log_id);
    assert_eq!(
        format!("{:?}", back.payload),
        format!("{:?}", entry.payload)
    );
}

/// openraft purges a follower's log when it installs a snapshot from the
/// leader, while the state machine's own task installs it: the purge waits
/// until the snapshot is on disk, so that a crash between the two never
/// leaves a master with neither (it could not start again).
#[test]
fn a_purge_waits_for_a_snapshot_on_disk_that_covers_it() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (dl, df) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_leader, snapshot) = leader_with_snapshot(&dl, &rt);
    let upto = snapshot
        .meta
        .last_log_id
        .expect("the snapshot's last log id");
    let (log, mut follower) = open_both(&df);
    log.guard_purges(follower.purge_guard());
    let entries: Vec<Entry> = commands()
        .into_iter()
        .enumerate()
        .map(|(i, c)| command_entry(i as u64 + 1, c))
        .collect();
    let mut appending = log.clone();
    rt.block_on(appending.blocking_append(entries)).unwrap();
    let mut purging = log.clone();
    let purge = rt.spawn(async move { purging.purge(upto).await });
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    assert!(
        !purge.is_finished(),
        "the log was purged before a snapshot on disk held its entries"
    );
    let mut reading = log.clone();
    let state = rt.block_on(reading.get_log_state()).unwrap();
    assert_eq!(state.last_purged_log_id, None, "nothing is gone yet");
    rt.block_on(follower.install_snapshot(&snapshot.meta, snapshot.snapshot.clone()))
        .unwrap();
    rt.block_on(purge).unwrap().unwrap();
    let state = rt.block_on(reading.get_log_state()).unwrap();
    assert_eq!(state.last_purged_log_id, Some(upto));
    drop((log, appending, reading, follower));

    // Reopened, the store's applied id is on disk: purges up to it go at once.
    let (mut log, follower) = open_both(&df);
    log.guard_purges(follower.purge_guard());
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), log.purge(upto))
            .await
            .expect("no wait")
    })
    .unwrap();
}
