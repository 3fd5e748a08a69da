//! Tests of the store through its public interface, on real redb files in
//! temporary directories.

use super::*;
use flotilla_api::meta::ObjectMeta;
use flotilla_api::objects::{self, Module, ModuleSpec, Node, Pod, PodPhase};
use flotilla_api::protocol::EventType;
use flotilla_api::time::Time;
use std::collections::BTreeMap;
use std::sync::Barrier;
use std::time::Duration;

fn open(dir: &tempfile::TempDir, history: u64) -> Store {
    Store::open(&dir.path().join("state.redb"), history).expect("store opens")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(namespace: &str, name: &str, l: &[(&str, &str)]) -> Pod {
    let mut p = Pod {
        metadata: ObjectMeta::named(namespace, name),
        ..Pod::default()
    };
    p.metadata.uid = format!("uid-{namespace}-{name}");
    p.metadata.creation_timestamp = Some(Time(1_700_000_000_000));
    p.metadata.labels = labels(l);
    p.spec.module = "sha256:00".into();
    p
}

fn node(name: &str, l: &[(&str, &str)]) -> Node {
    let mut n = Node {
        metadata: ObjectMeta::named("", name),
        ..Node::default()
    };
    n.metadata.labels = labels(l);
    n
}

fn create(store: &Store, object: impl Into<ObjectArg>) -> Object {
    match store.apply(Command::Create {
        object: object.into().0,
    }) {
        Ok(Outcome::Object(o)) => o,
        other => panic!("create: {other:?}"),
    }
}

fn update(
    store: &Store,
    object: Object,
    expected_rv: Option<u64>,
    status_only: bool,
) -> Result<Object, StoreError> {
    match store.apply(Command::Update {
        object,
        expected_rv,
        status_only,
    })? {
        Outcome::Object(o) => Ok(o),
        other => panic!("update: {other:?}"),
    }
}

fn get_pod(store: &Store, namespace: &str, name: &str) -> Pod {
    match store.get(Kind::Pod, namespace, name) {
        Ok(Some(Object::Pod(p))) => p,
        other => panic!("get {namespace}/{name}: {other:?}"),
    }
}

fn names(objects: &[Object]) -> Vec<String> {
    objects
        .iter()
        .map(|o| format!("{}/{}", o.meta().namespace, o.meta().name))
        .collect()
}

/// Lets tests pass a Pod or a Node where an Object is meant.
struct ObjectArg(Object);
impl From<Pod> for ObjectArg {
    fn from(p: Pod) -> Self {
        ObjectArg(Object::Pod(p))
    }
}
impl From<Node> for ObjectArg {
    fn from(n: Node) -> Self {
        ObjectArg(Object::Node(n))
    }
}
impl From<Object> for ObjectArg {
    fn from(o: Object) -> Self {
        ObjectArg(o)
    }
}

/// The next event, failing the test instead of hanging.
async fn next(watch: &mut Watch) -> Result<WatchEvent, StoreError> {
    tokio::time::timeout(Duration::from_secs(30), watch.next())
        .await
        .expect("an event within 30s")
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

#[test]
fn create_get_and_list_with_label_selectors() {
    let dir = tmp();
    let store = open(&dir, 100);
    assert_eq!(store.revision().unwrap(), 0);
    let web1 = create(
        &store,
        pod("default", "web-1", &[("app", "web"), ("tier", "front")]),
    );
    create(&store, pod("other", "web-2", &[("app", "web")]));
    create(&store, pod("default", "db-1", &[("app", "db")]));
    create(&store, pod("def", "x", &[]));
    create(&store, node("pi-1", &[("flotilla.dev/arch", "arm64")]));
    assert_eq!(store.revision().unwrap(), 5);

    assert_eq!(web1.meta().resource_version, 1);
    assert_eq!(web1.meta().generation, 1);
    assert_eq!(
        web1.meta().uid,
        "uid-default-web-1",
        "the uid comes from the caller"
    );
    assert_eq!(
        store.get(Kind::Pod, "default", "web-1").unwrap(),
        Some(web1)
    );
    assert_eq!(store.get(Kind::Pod, "default", "nope").unwrap(), None);
    assert_eq!(
        store
            .get(Kind::Node, "", "pi-1")
            .unwrap()
            .map(|o| o.meta().resource_version),
        Some(5)
    );

    let sel = |s: &str| Selector::parse(s).expect("selector parses");
    let cases: &[(Kind, Option<&str>, &str, &[&str])] = &[
        (
            Kind::Pod,
            None,
            "app=web",
            &["default/web-1", "other/web-2"],
        ),
        (
            Kind::Pod,
            Some("default"),
            "",
            &["default/db-1", "default/web-1"],
        ),
        (Kind::Pod, Some("def"), "", &["def/x"]),
        (
            Kind::Pod,
            None,
            "!tier",
            &["def/x", "default/db-1", "other/web-2"],
        ),
        (Kind::Pod, None, "app in (db,web),tier", &["default/web-1"]),
        (Kind::Pod, Some("nowhere"), "", &[]),
        (Kind::Node, None, "flotilla.dev/arch=arm64", &["/pi-1"]),
        (Kind::Node, None, "flotilla.dev/arch=arm", &[]),
        (Kind::Module, None, "", &[]),
    ];
    for &(kind, ns, selector, want) in cases {
        let (revision, items) = store.list(kind, ns, &sel(selector)).unwrap();
        assert_eq!(revision, 5);
        assert_eq!(names(&items), want, "{kind} {ns:?} {selector:?}");
    }
}

#[test]
fn creates_are_checked() {
    let dir = tmp();
    let store = open(&dir, 100);
    create(&store, pod("default", "web", &[]));
    let err = store
        .apply(Command::Create {
            object: Object::Pod(pod("default", "web", &[])),
        })
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(Refusal::AlreadyExists(k)) if k == "pods/default/web"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "pods/default/web already exists: update it instead, or delete it first"
    );
    for bad in [
        Object::Pod(pod("", "web", &[])),
        Object::Pod(pod("default", "", &[])),
        Object::Pod(pod("default", "a/b", &[])),
        Object::Node(node("pi/1", &[])),
        Object::Module(module_with(b"x")),
    ] {
        let err = store
            .apply(Command::Create {
                object: bad.clone(),
            })
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(Refusal::Invalid(_))),
            "{bad:?}: {err:?}"
        );
    }
    assert_eq!(
        store.revision().unwrap(),
        1,
        "refused commands use no revision"
    );
}

#[test]
fn update_compare_and_swap() {
    let dir = tmp();
    let store = open(&dir, 100);
    let created = create(&store, pod("default", "x", &[]));
    let mut p = get_pod(&store, "default", "x");
    p.spec.args = vec!["a".into()];
    let updated = update(&store, Object::Pod(p.clone()), Some(1), false).unwrap();
    assert_eq!(updated.meta().resource_version, 2);
    assert_eq!(updated.meta().uid, created.meta().uid);

    p.spec.args = vec!["b".into()];
    let err = update(&store, Object::Pod(p.clone()), Some(1), false).unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(Refusal::Conflict { key, expected: 1, actual: 2 }) if key == "pods/default/x"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "pods/default/x was changed (resourceVersion 2, you sent 1): read it again and retry"
    );
    assert!(!err.is_fatal());
    assert_eq!(
        get_pod(&store, "default", "x").spec.args,
        vec!["a".to_string()],
        "a conflict writes nothing"
    );

    let forced = update(&store, Object::Pod(p.clone()), None, false).unwrap();
    assert_eq!(forced.meta().resource_version, 3);

    let err = update(
        &store,
        Object::Pod(pod("default", "missing", &[])),
        None,
        false,
    )
    .unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(Refusal::NotFound(k)) if k == "pods/default/missing"),
        "{err:?}"
    );
    let err = store
        .apply(Command::Delete {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "x".into(),
            expected_rv: Some(2),
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Refused(Refusal::Conflict {
                expected: 2,
                actual: 3,
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(store.revision().unwrap(), 3);
}

#[test]
fn concurrent_compare_and_swap_has_one_winner() {
    let dir = tmp();
    let store = open(&dir, 100);
    create(&store, pod("default", "x", &[]));
    for round in 0..10 {
        let current = get_pod(&store, "default", "x");
        let rv = current.metadata.resource_version;
        let barrier = Arc::new(Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let (store, barrier, mut p) = (store.clone(), barrier.clone(), current.clone());
                std::thread::spawn(move || {
                    p.spec.args = vec![format!("round {round} thread {t}")];
                    barrier.wait();
                    update(&store, Object::Pod(p), Some(rv), false)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        let conflicts = results
            .iter()
            .filter(|r| matches!(r, Err(StoreError::Refused(Refusal::Conflict { expected, actual, .. })) if *expected == rv && *actual == rv + 1))
            .count();
        assert_eq!((wins, conflicts), (1, 1), "round {round}: {results:?}");
        assert_eq!(store.revision().unwrap(), rv + 1);
    }
}

#[test]
fn status_and_spec_updates_leave_each_other_alone() {
    let dir = tmp();
    let store = open(&dir, 100);
    create(&store, pod("default", "x", &[]));

    let mut from_node = get_pod(&store, "default", "x");
    from_node.status.phase = PodPhase::Running;
    from_node.spec.module = "sha256:ff".into(); // a node cannot change the spec through a status update
    from_node
        .metadata
        .labels
        .insert("sneaky".into(), "yes".into());
    update(&store, Object::Pod(from_node), Some(1), true).unwrap();
    let p = get_pod(&store, "default", "x");
    assert_eq!(p.status.phase, PodPhase::Running);
    assert_eq!(p.spec.module, "sha256:00");
    assert!(p.metadata.labels.is_empty());
    assert_eq!((p.metadata.resource_version, p.metadata.generation), (2, 1));

    let mut from_user = pod("default", "x", &[]); // a manifest knows nothing of the status
    from_user.spec.args = vec!["--v".into()];
    update(&store, Object::Pod(from_user), Some(2), false).unwrap();
    let p = get_pod(&store, "default", "x");
    assert_eq!(
        p.status.phase,
        PodPhase::Running,
        "a spec update keeps the status"
    );
    assert_eq!(p.spec.args, vec!["--v".to_string()]);
    assert_eq!((p.metadata.resource_version, p.metadata.generation), (3, 2));
}

#[test]
fn generation_grows_only_with_the_spec_and_no_op_updates_write_nothing() {
    let dir = tmp();
    let store = open(&dir, 100);
    create(&store, pod("default", "x", &[]));
    let mut watch = store.watch(0).unwrap();

    let relabelled = update(
        &store,
        Object::Pod(pod("default", "x", &[("a", "b")])),
        None,
        false,
    )
    .unwrap();
    assert_eq!(
        (
            relabelled.meta().resource_version,
            relabelled.meta().generation
        ),
        (2, 1)
    );

    let same = update(&store, relabelled.clone(), Some(2), false).unwrap();
    assert_eq!(same, relabelled);
    let same_status = update(&store, relabelled.clone(), Some(2), true).unwrap();
    assert_eq!(same_status, relabelled);
    assert_eq!(
        store.revision().unwrap(),
        2,
        "identical updates use no revision"
    );

    let mut respecced = pod("default", "x", &[("a", "b")]);
    respecced.spec.args = vec!["new".into()];
    let respecced = update(&store, Object::Pod(respecced), Some(2), false).unwrap();
    assert_eq!(
        (
            respecced.meta().resource_version,
            respecced.meta().generation
        ),
        (3, 2)
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let revisions: Vec<u64> = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..2 {
            out.push(next(&mut watch).await.unwrap().revision);
        }
        out
    });
    assert_eq!(revisions, [2, 3], "no event for the no-op updates");
}

#[tokio::test]
async fn delete_removes_and_emits_the_last_state() {
    let dir = tmp();
    let store = open(&dir, 100);
    create(&store, pod("default", "x", &[("app", "web")]));
    let mut watch = store.watch(0).unwrap();
    let outcome = store
        .apply(Command::Delete {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "x".into(),
            expected_rv: Some(1),
        })
        .unwrap();
    let Outcome::Deleted(gone) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        gone.meta().resource_version,
        2,
        "carries the delete's revision"
    );
    assert_eq!(gone.meta().labels, labels(&[("app", "web")]));
    assert_eq!(store.get(Kind::Pod, "default", "x").unwrap(), None);
    let event = next(&mut watch).await.unwrap();
    assert_eq!((event.revision, event.kind), (2, EventType::Deleted));
    assert_eq!(event.object, gone);
    let err = store
        .apply(Command::Delete {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "x".into(),
            expected_rv: None,
        })
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Refused(Refusal::NotFound(_))),
        "{err:?}"
    );
    // The name can be used again, as a new object.
    assert_eq!(
        create(&store, pod("default", "x", &[]))
            .meta()
            .resource_version,
        3
    );
}

/// Drains a watch up to `last`, checking that revisions follow one another
/// and that every event agrees with `seen` (what other watches delivered).
async fn drain(watch: &mut Watch, last: u64, seen: &mut BTreeMap<u64, WatchEvent>) {
    let mut expect = watch.revision() + 1;
    while expect <= last {
        let event = next(watch).await.unwrap();
        assert_eq!(event.revision, expect, "no gap, no duplicate");
        assert_eq!(event.object.meta().resource_version, event.revision);
        if let Some(other) = seen.get(&event.revision) {
            assert_eq!(
                other, &event,
                "every watch sees the same event at revision {expect}"
            );
        } else {
            seen.insert(event.revision, event);
        }
        expect += 1;
    }
    assert_eq!(watch.revision(), last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_replay_history_then_follow_live_without_gaps() {
    let dir = tmp();
    let store = open(&dir, 100_000);
    for i in 0..30 {
        create(&store, pod("default", &format!("seed-{i}"), &[]));
    }
    let mut early = store.watch(10).unwrap();

    let writers: Vec<_> = (0..3)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..60 {
                    let name = format!("w{t}-{i}");
                    create(&store, pod("default", &name, &[]));
                    let mut p = get_pod(&store, "default", &name);
                    p.status.phase = PodPhase::Running;
                    update(&store, Object::Pod(p), None, true).unwrap();
                    if i % 3 == 0 {
                        store
                            .apply(Command::Delete {
                                kind: Kind::Pod,
                                namespace: "default".into(),
                                name,
                                expected_rv: None,
                            })
                            .unwrap();
                    }
                }
            })
        })
        .collect();

    // Watches set up while the writers run: from now, and from a little while ago.
    let mut during = Vec::new();
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        during.push(store.watch(0).unwrap());
        let back = store.revision().unwrap().saturating_sub(7).max(1);
        during.push(store.watch(back).unwrap());
        // Read some events meanwhile, so live delivery is exercised too.
        let target = early.revision() + 15;
        drain(&mut early, target, &mut seen).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for w in writers {
        w.join().expect("writer");
    }
    let last = store.revision().unwrap();
    assert_eq!(last, 30 + 3 * (60 * 2 + 20));
    drain(&mut early, last, &mut seen).await;
    for w in &mut during {
        drain(w, last, &mut seen).await;
    }
    for kind in [EventType::Added, EventType::Modified, EventType::Deleted] {
        assert!(seen.values().any(|e| e.kind == kind), "some {kind:?} event");
    }

    // And the stream stays live afterwards.
    let late = create(&store, pod("default", "late", &[]));
    let event = next(&mut early).await.unwrap();
    assert_eq!(
        (event.revision, event.kind, event.object),
        (last + 1, EventType::Added, late)
    );
}

#[tokio::test]
async fn a_lagging_watch_catches_up_from_history() {
    let dir = tmp();
    let store = open(&dir, 100_000);
    create(&store, pod("default", "first", &[]));
    let mut watch = store.watch(0).unwrap();
    // Let it go live, then fall further behind than the live channel holds.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), watch.next())
            .await
            .is_err()
    );
    let n = LIVE_CAPACITY as u64 + 200;
    for i in 0..n {
        create(&store, pod("default", &format!("p-{i}"), &[]));
    }
    drain(&mut watch, 1 + n, &mut BTreeMap::new()).await;
}

#[tokio::test]
async fn watches_older_than_the_history_are_refused() {
    let dir = tmp();
    let store = open(&dir, 5);
    for i in 0..20 {
        create(&store, pod("default", &format!("p-{i}"), &[]));
    }
    let err = store.watch(3).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Refused(Refusal::TooOld {
                requested: 3,
                oldest: 15
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("list again"), "{err}");
    assert!(matches!(
        store.watch(14),
        Err(StoreError::Refused(Refusal::TooOld {
            requested: 14,
            oldest: 15
        }))
    ));
    let mut w = store.watch(15).unwrap();
    drain(&mut w, 20, &mut BTreeMap::new()).await;

    // A live watch that lags past the window finds its history gone.
    let mut live = store.watch(0).unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(50), live.next())
        .await
        .is_err());
    for i in 0..LIVE_CAPACITY + 10 {
        create(&store, pod("other", &format!("p-{i}"), &[]));
    }
    let err = next(&mut live).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Refused(Refusal::TooOld { requested: 20, .. })
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn state_and_history_survive_reopening() {
    let dir = tmp();
    let path = dir.path().join("state.redb");
    {
        let store = Store::open(&path, 100).unwrap();
        create(&store, pod("default", "x", &[]));
        create(&store, node("pi-1", &[]));
        update(
            &store,
            Object::Pod(pod("default", "x", &[("v", "2")])),
            Some(1),
            false,
        )
        .unwrap();
        store
            .apply(Command::PutToken {
                record: token("t1"),
            })
            .unwrap();
        assert!(
            matches!(Store::open(&path, 100), Err(StoreError::Db { .. })),
            "one store per file"
        );
    }
    let store = Store::open(&path, 100).unwrap();
    assert_eq!(store.revision().unwrap(), 3);
    let p = get_pod(&store, "default", "x");
    assert_eq!(
        (p.metadata.resource_version, p.metadata.labels.len()),
        (3, 1)
    );
    assert_eq!(store.token("t1").unwrap(), Some(token("t1")));
    let mut watch = store.watch(1).unwrap();
    assert_eq!(
        create(&store, pod("default", "y", &[]))
            .meta()
            .resource_version,
        4,
        "revisions are never reused"
    );
    drain(&mut watch, 4, &mut BTreeMap::new()).await;
    drop((store, watch));

    // A smaller window on reopening drops the older history at once.
    let store = Store::open(&path, 2).unwrap();
    assert!(matches!(
        store.watch(1),
        Err(StoreError::Refused(Refusal::TooOld {
            requested: 1,
            oldest: 2
        }))
    ));
    assert!(store.watch(2).is_ok());
}

#[test]
fn modules_are_stored_once_with_their_bytes() {
    let dir = tmp();
    let store = open(&dir, 100);
    let bytes = b"\0asm\x01\0\0\0 pretend program".to_vec();
    let module = module_with(&bytes);
    let digest = module.spec.digest.clone();
    let outcome = store
        .apply(Command::PutModule {
            module: module.clone(),
            bytes: bytes.clone(),
        })
        .unwrap();
    assert_eq!(outcome, Outcome::ModuleStored { existed: false });
    assert_eq!(store.revision().unwrap(), 1);
    assert_eq!(store.module_bytes(&digest).unwrap(), Some(bytes.clone()));
    let stored = store
        .get(Kind::Module, "", &objects::module_name(&digest))
        .unwrap();
    let Some(Object::Module(stored)) = stored else {
        panic!("{stored:?}")
    };
    assert_eq!(
        (stored.metadata.resource_version, stored.spec.size),
        (1, bytes.len() as u64)
    );

    let again = store
        .apply(Command::PutModule {
            module,
            bytes: bytes.clone(),
        })
        .unwrap();
    assert_eq!(again, Outcome::ModuleStored { existed: true });
    assert_eq!(
        store.revision().unwrap(),
        1,
        "a second upload uses no revision"
    );

    let mut lying = module_with(&bytes);
    lying.spec.digest = objects::digest_of(b"something else");
    let err = store
        .apply(Command::PutModule {
            module: lying,
            bytes: bytes.clone(),
        })
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(Refusal::Invalid(m)) if m.contains("digest")),
        "{err:?}"
    );
    assert_eq!(
        store
            .module_bytes(&objects::digest_of(b"something else"))
            .unwrap(),
        None
    );

    let name = objects::module_name(&digest);
    let outcome = store
        .apply(Command::Delete {
            kind: Kind::Module,
            namespace: String::new(),
            name,
            expected_rv: None,
        })
        .unwrap();
    assert!(
        matches!(outcome, Outcome::Deleted(Object::Module(_))),
        "{outcome:?}"
    );
    assert_eq!(
        store.module_bytes(&digest).unwrap(),
        None,
        "the bytes go with the object"
    );
}

/// Bytes that differ from one module to the next (`seed`), of length `len`.
fn module_bytes_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i % 251) as u8 ^ seed.wrapping_mul(31))
        .collect()
}

/// Stages `bytes` in pieces of `piece` bytes, as the service does.
fn stage(store: &Store, digest: &str, bytes: &[u8], piece: usize) {
    for (i, chunk) in bytes.chunks(piece).enumerate() {
        store
            .apply(Command::PutModuleChunk {
                digest: digest.to_string(),
                offset: (i * piece) as u64,
                bytes: chunk.to_vec(),
            })
            .unwrap();
    }
}

/// Reads a stored module through its reader: the chunks, in order.
fn read_chunks(store: &Store, digest: &str) -> Vec<Vec<u8>> {
    let mut reader = store.module_reader(digest).unwrap().expect("stored");
    let mut chunks = Vec::new();
    while let Some(chunk) = reader.next_chunk().unwrap() {
        chunks.push(chunk);
    }
    chunks
}

#[test]
fn big_modules_are_kept_once_in_chunks_and_read_a_chunk_at_a_time() {
    let dir = tmp();
    let store = open(&dir, 100);
    let bytes = module_bytes_of(2 * UPLOAD_CHUNK + 123, 1);
    let module = module_with(&bytes);
    let digest = module.spec.digest.clone();
    let chunk = |offset: usize| Command::PutModuleChunk {
        digest: digest.clone(),
        offset: offset as u64,
        bytes: bytes[offset..(offset + UPLOAD_CHUNK).min(bytes.len())].to_vec(),
    };
    // A gap (the middle piece missing) is refused, and nothing is stored.
    store.apply(chunk(0)).unwrap();
    store.apply(chunk(2 * UPLOAD_CHUNK)).unwrap();
    let err = store
        .apply(Command::CommitModule {
            module: module.clone(),
        })
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(Refusal::Invalid(m)) if m.contains("gap")),
        "{err:?}"
    );
    assert_eq!(store.module_bytes(&digest).unwrap(), None);
    assert_eq!(store.staged_uploads().unwrap(), vec![digest.clone()]);
    // Starting over at offset 0 drops what was staged; the pieces, of any
    // size up to UPLOAD_CHUNK, are kept as chunks of at most STORED_CHUNK.
    for offset in [0, UPLOAD_CHUNK, 2 * UPLOAD_CHUNK] {
        store.apply(chunk(offset)).unwrap();
    }
    let staged = store.export().unwrap().uploads;
    assert!(
        staged.iter().all(|(_, b)| b.len() <= STORED_CHUNK),
        "no value is bigger than a stored chunk"
    );
    assert_eq!(
        staged.iter().map(|(_, b)| b.len()).sum::<usize>(),
        bytes.len(),
        "staged chunks are part of the state (and of snapshots)"
    );
    let out = store
        .apply(Command::CommitModule {
            module: module.clone(),
        })
        .unwrap();
    assert_eq!(out, Outcome::ModuleStored { existed: false });
    assert!(store.staged_uploads().unwrap().is_empty());
    let chunks = read_chunks(&store, &digest);
    assert!(chunks.iter().all(|c| c.len() <= STORED_CHUNK));
    assert_eq!(chunks.concat(), bytes);
    // Snapshots hold the module whole, as they always have.
    let image = store.export().unwrap();
    assert!(image.uploads.is_empty());
    assert_eq!(image.modules, vec![(digest.clone(), bytes.clone())]);

    // Once stored, another upload of the same module changes nothing: its
    // pieces are not staged again, and discarding it keeps the module.
    let revision = store.revision().unwrap();
    store.apply(chunk(0)).unwrap();
    store
        .apply(Command::DiscardUpload {
            digest: digest.clone(),
        })
        .unwrap();
    assert_eq!(
        store
            .apply(Command::CommitModule {
                module: module.clone()
            })
            .unwrap(),
        Outcome::ModuleStored { existed: true }
    );
    assert_eq!(store.module_bytes(&digest).unwrap(), Some(bytes.clone()));
    assert_eq!(store.revision().unwrap(), revision);

    // Oversized pieces, pieces past the module limit and bad digests are refused.
    let too_big = Command::PutModuleChunk {
        digest: digest.clone(),
        offset: 0,
        bytes: vec![0; UPLOAD_CHUNK + 1],
    };
    assert!(matches!(
        store.apply(too_big),
        Err(StoreError::Refused(Refusal::Invalid(_)))
    ));
    let past = Command::PutModuleChunk {
        digest: digest.clone(),
        offset: flotilla_api::protocol::MAX_MODULE_SIZE,
        bytes: vec![0; 1],
    };
    assert!(matches!(
        store.apply(past),
        Err(StoreError::Refused(Refusal::Invalid(_)))
    ));
    let bad = Command::PutModuleChunk {
        digest: "sha256:nothex".into(),
        offset: 0,
        bytes: vec![0; 1],
    };
    assert!(matches!(
        store.apply(bad),
        Err(StoreError::Refused(Refusal::Invalid(_)))
    ));
    // A discarded upload leaves nothing behind.
    let other = module_bytes_of(UPLOAD_CHUNK + 5, 2);
    let other_digest = objects::digest_of(&other);
    stage(&store, &other_digest, &other, UPLOAD_PIECE);
    assert_eq!(store.staged_uploads().unwrap(), vec![other_digest.clone()]);
    store
        .apply(Command::DiscardUpload {
            digest: other_digest,
        })
        .unwrap();
    assert!(store.export().unwrap().uploads.is_empty());
    assert!(store.staged_uploads().unwrap().is_empty());
}

#[test]
fn a_deleted_module_frees_its_space_for_the_next_and_the_file_is_compacted_at_open() {
    const SIZE: usize = 40 << 20;
    let dir = tmp();
    let path = dir.path().join("state.redb");
    let file_size = || std::fs::metadata(&path).unwrap().len();
    let store = open(&dir, 100);
    let store_module = |seed: u8| {
        let bytes = module_bytes_of(SIZE, seed);
        let module = module_with(&bytes);
        stage(&store, &module.spec.digest, &bytes, UPLOAD_PIECE);
        store
            .apply(Command::CommitModule {
                module: module.clone(),
            })
            .unwrap();
        module
    };
    let delete = |module: &Module| {
        store
            .apply(Command::Delete {
                kind: Kind::Module,
                namespace: String::new(),
                name: objects::module_name(&module.spec.digest),
                expected_rv: None,
            })
            .unwrap();
    };
    let first = store_module(1);
    let used = store.space().unwrap();
    // The bytes are kept once: no staged copy beside the module, no page
    // twice the size of a chunk.
    assert!(
        used.allocated < SIZE as u64 * 11 / 10,
        "{} bytes allocated for a module of {SIZE}",
        used.allocated
    );
    // redb grows the file ahead of its pages, by up to twice what it holds.
    let grown = file_size();
    assert!(grown < SIZE as u64 * 2, "the file grew to {grown}");
    delete(&first);
    assert_eq!(store.module_bytes(&first.spec.digest).unwrap(), None);
    let freed = store.space().unwrap();
    assert!(
        freed.allocated < 1 << 20 && freed.free >= SIZE as u64,
        "{freed:?}"
    );
    // The next module takes the pages the first left: the file does not grow.
    let second = store_module(2);
    assert_eq!(file_size(), grown);
    delete(&second);
    drop(store);
    // Reopened with most of the file free: compacted.
    let store = open(&dir, 100);
    assert!(
        file_size() < grown / 4,
        "{} bytes after compaction, {grown} before",
        file_size()
    );
    assert_eq!(store.revision().unwrap(), 4);
}

#[test]
fn a_module_a_pod_uses_cannot_be_deleted() {
    let dir = tmp();
    let store = open(&dir, 100);
    let bytes = b"\0asm\x01\0\0\0 used".to_vec();
    let module = module_with(&bytes);
    store
        .apply(Command::PutModule {
            module: module.clone(),
            bytes,
        })
        .unwrap();
    let mut p = pod("default", "user", &[]);
    p.spec.module = module.spec.digest.clone();
    p.status.phase = PodPhase::Succeeded;
    create(&store, p);
    let delete = Command::Delete {
        kind: Kind::Module,
        namespace: String::new(),
        name: objects::module_name(&module.spec.digest),
        expected_rv: None,
    };
    // Even a pod that has ended holds its module: it may be restarted.
    let err = store.apply(delete.clone()).unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(Refusal::Invalid(m)) if m.contains("default/user") && m.contains("delete them first")),
        "{err}"
    );
    assert!(store.module_bytes(&module.spec.digest).unwrap().is_some());
    store
        .apply(Command::Delete {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "user".into(),
            expected_rv: None,
        })
        .unwrap();
    store.apply(delete).unwrap();
    assert_eq!(store.module_bytes(&module.spec.digest).unwrap(), None);
}

#[test]
fn a_module_that_lost_a_chunk_is_refused_at_open() {
    let bytes = module_bytes_of(3 * STORED_CHUNK, 7);
    let module = module_with(&bytes);
    for (lost, why) in [
        (STORED_CHUNK, "its bytes miss the chunk at byte 261120"),
        (2 * STORED_CHUNK, "its bytes end at byte 522240 of 783360"),
    ] {
        let dir = tmp();
        let path = dir.path().join("state.redb");
        let store = open(&dir, 100);
        stage(&store, &module.spec.digest, &bytes, UPLOAD_PIECE);
        store
            .apply(Command::CommitModule {
                module: module.clone(),
            })
            .unwrap();
        drop(store);
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let key = tables::chunk_key(&module.spec.digest, lost as u64);
        txn.open_table(tables::MODULE_CHUNKS)
            .unwrap()
            .remove(key.as_bytes())
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        let err = Store::open(&path, 100).unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains(why) && m.contains("module_chunks")),
            "{err}"
        );
    }
}

#[test]
fn a_module_deleted_while_it_is_read_ends_the_read() {
    let dir = tmp();
    let store = open(&dir, 100);
    let bytes = module_bytes_of(3 * STORED_CHUNK, 3);
    let module = module_with(&bytes);
    stage(&store, &module.spec.digest, &bytes, UPLOAD_PIECE);
    store
        .apply(Command::CommitModule {
            module: module.clone(),
        })
        .unwrap();
    let mut reader = store.module_reader(&module.spec.digest).unwrap().unwrap();
    assert_eq!(reader.size(), bytes.len() as u64);
    assert_eq!(
        reader.next_chunk().unwrap().as_deref(),
        Some(&bytes[..STORED_CHUNK])
    );
    store
        .apply(Command::Delete {
            kind: Kind::Module,
            namespace: String::new(),
            name: objects::module_name(&module.spec.digest),
            expected_rv: None,
        })
        .unwrap();
    let err = reader.next_chunk().unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(Refusal::NotFound(m)) if m.contains("deleted while it was read")),
        "{err}"
    );
    assert!(store.module_reader(&module.spec.digest).unwrap().is_none());
}

#[test]
fn a_batch_of_raft_entries_is_all_or_nothing_and_equals_one_by_one() {
    use super::replica::RaftMark;
    let (a, b) = (tmp(), tmp());
    let (batched, single) = (open(&a, 100), open(&b, 100));
    let cmds = vec![
        Command::Create {
            object: Object::Pod(pod("default", "one", &[])),
        },
        Command::Create {
            object: Object::Pod(pod("default", "two", &[])),
        },
    ];
    let mark = |durable| RaftMark {
        applied: b"opaque",
        membership: None,
        durable,
    };
    let answers = batched
        .apply_raft_batch(mark(false), cmds.iter().cloned().map(Some).collect())
        .unwrap()
        .expect("no refusal");
    for cmd in &cmds {
        single.apply_raft(mark(true), cmd.clone()).unwrap().unwrap();
    }
    assert_eq!(answers.len(), 2);
    assert_eq!(snapshot(&batched), snapshot(&single));
    // A refused command leaves the whole batch unwritten.
    let refused = vec![
        Some(Command::Create {
            object: Object::Pod(pod("default", "three", &[])),
        }),
        Some(cmds[0].clone()),
    ];
    assert_eq!(batched.apply_raft_batch(mark(true), refused).unwrap(), None);
    assert!(batched
        .get(Kind::Pod, "default", "three")
        .unwrap()
        .is_none());
    assert_eq!(batched.revision().unwrap(), 2);
}

#[test]
fn a_batch_command_answers_each_command_as_if_alone() {
    use super::replica::RaftMark;
    let (a, b) = (tmp(), tmp());
    let (batched, single) = (open(&a, 100), open(&b, 100));
    let create = |name: &str| Command::Create {
        object: Object::Pod(pod("default", name, &[])),
    };
    let mut stale = pod("default", "one", &[]);
    stale.metadata.labels.insert("x".into(), "y".into());
    let cmds = vec![
        create("one"),
        create("one"),
        Command::Update {
            object: Object::Pod(stale),
            expected_rv: Some(99),
            status_only: false,
        },
        Command::Batch(vec![create("nested")]),
        create("two"),
    ];
    let mark = RaftMark {
        applied: b"opaque",
        membership: None,
        durable: false,
    };
    let answers = batched
        .apply_raft_batch_command(mark, cmds.clone())
        .unwrap();
    let kinds: Vec<&str> = answers
        .iter()
        .map(|a| match a {
            Ok(_) => "ok",
            Err(StoreError::Refused(Refusal::AlreadyExists(_))) => "exists",
            Err(StoreError::Refused(Refusal::Conflict { .. })) => "conflict",
            Err(StoreError::Refused(Refusal::Invalid(_))) => "invalid",
            Err(_) => "other",
        })
        .collect();
    assert_eq!(kinds, ["ok", "exists", "conflict", "invalid", "ok"]);
    for cmd in cmds {
        let _ = single.apply_raft(mark, cmd).unwrap();
    }
    assert_eq!(snapshot(&batched), snapshot(&single));
    assert_eq!(batched.revision().unwrap(), 2);
}

fn token(id: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        secret_hash: "sha256:beef".into(),
        expires: Time(1_800_000_000_000),
        description: "for pi-1".into(),
        usage: TokenUsage::Node,
    }
}

#[test]
fn tokens_are_kept_and_removed() {
    let dir = tmp();
    let store = open(&dir, 100);
    assert_eq!(
        store
            .apply(Command::PutToken { record: token("a") })
            .unwrap(),
        Outcome::Done
    );
    let mut replaced = token("a");
    replaced.description = "renamed".into();
    store
        .apply(Command::PutToken {
            record: replaced.clone(),
        })
        .unwrap();
    assert_eq!(store.token("a").unwrap(), Some(replaced));
    assert_eq!(store.token("b").unwrap(), None);
    assert_eq!(
        store.revision().unwrap(),
        0,
        "tokens are not watched objects"
    );
    assert_eq!(
        store
            .apply(Command::DeleteToken { id: "a".into() })
            .unwrap(),
        Outcome::Done
    );
    assert_eq!(store.token("a").unwrap(), None);
    let err = store
        .apply(Command::DeleteToken { id: "a".into() })
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(Refusal::NotFound(m)) if m == "token a"),
        "{err:?}"
    );
    assert!(matches!(
        store.apply(Command::PutToken { record: token("") }),
        Err(StoreError::Refused(Refusal::Invalid(_)))
    ));
}

#[test]
fn damaged_values_are_reported_not_panicked_on() {
    let dir = tmp();
    let store = open(&dir, 100);
    create(&store, pod("default", "good", &[]));
    store
        .write_raw_object("Pod/default/garbage", &[0xff, 0xff, 0xff, 0xff, 0x0f, 0x01])
        .unwrap();
    let err = store.get(Kind::Pod, "default", "garbage").unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("Pod/default/garbage")),
        "{err:?}"
    );
    assert!(err.is_fatal());
    assert!(matches!(
        store.list(Kind::Pod, None, &Selector::default()),
        Err(StoreError::Corrupt(_))
    ));
    let err = update(
        &store,
        Object::Pod(pod("default", "garbage", &[])),
        None,
        false,
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert_eq!(store.revision().unwrap(), 1);

    let mut trailing =
        postcard::to_allocvec(&Object::Pod(pod("default", "trailing", &[]))).unwrap();
    trailing.push(0);
    store
        .write_raw_object("Pod/default/trailing", &trailing)
        .unwrap();
    assert!(matches!(
        store.get(Kind::Pod, "default", "trailing"),
        Err(StoreError::Corrupt(_))
    ));
    // Other objects stay readable.
    assert_eq!(
        get_pod(&store, "default", "good").metadata.resource_version,
        1
    );
}

#[test]
fn commands_and_outcomes_round_trip_through_postcard() {
    let commands = vec![
        Command::Create {
            object: Object::Pod(pod("default", "x", &[("a", "b")])),
        },
        Command::Update {
            object: Object::Node(node("n", &[])),
            expected_rv: Some(7),
            status_only: true,
        },
        Command::Delete {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "x".into(),
            expected_rv: None,
        },
        Command::PutModule {
            module: module_with(b"m"),
            bytes: b"m".to_vec(),
        },
        Command::PutToken { record: token("t") },
        Command::DeleteToken { id: "t".into() },
    ];
    for c in commands {
        let bytes = postcard::to_allocvec(&c).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), c);
    }
    let outcomes = vec![
        Outcome::Object(Object::Pod(pod("default", "x", &[]))),
        Outcome::Deleted(Object::Node(node("n", &[]))),
        Outcome::ModuleStored { existed: true },
        Outcome::Done,
    ];
    for o in outcomes {
        let bytes = postcard::to_allocvec(&o).unwrap();
        assert_eq!(postcard::from_bytes::<Outcome>(&bytes).unwrap(), o);
    }
}

/// What a replica would hold: every object, the revision and the history.
fn snapshot(store: &Store) -> (u64, Vec<Object>, Vec<WatchEvent>) {
    let mut objects = Vec::new();
    for kind in Kind::ALL {
        objects.extend(store.list(*kind, None, &Selector::default()).unwrap().1);
    }
    (
        store.revision().unwrap(),
        objects,
        store.history_after(0, usize::MAX).unwrap(),
    )
}

#[test]
fn the_same_commands_give_the_same_state() {
    let mut moved = pod("default", "a", &[]);
    moved.spec.node_name = Some("pi-1".into());
    let mut running = pod("default", "a", &[]);
    running.status.phase = PodPhase::Running;
    let log = vec![
        Command::Create {
            object: Object::Pod(pod("default", "a", &[])),
        },
        Command::Create {
            object: Object::Pod(pod("default", "a", &[])),
        }, // refused
        Command::Create {
            object: Object::Node(node("pi-1", &[])),
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
        }, // conflict
        Command::Update {
            object: Object::Pod(running),
            expected_rv: Some(3),
            status_only: true,
        },
        Command::PutModule {
            module: module_with(b"m"),
            bytes: b"m".to_vec(),
        },
        Command::PutModule {
            module: module_with(b"m"),
            bytes: b"m".to_vec(),
        },
        Command::Delete {
            kind: Kind::Node,
            namespace: String::new(),
            name: "pi-1".into(),
            expected_rv: None,
        },
        Command::PutToken { record: token("t") },
    ];
    let (d1, d2) = (tmp(), tmp());
    let (s1, s2) = (open(&d1, 100), open(&d2, 100));
    let o1: Vec<String> = log
        .iter()
        .map(|c| format!("{:?}", s1.apply(c.clone())))
        .collect();
    let o2: Vec<String> = log
        .iter()
        .map(|c| format!("{:?}", s2.apply(c.clone())))
        .collect();
    assert_eq!(o1, o2);
    assert_eq!(snapshot(&s1), snapshot(&s2));
    assert_eq!(snapshot(&s1).0, 6);
    assert_eq!(s1.token("t").unwrap(), s2.token("t").unwrap());
}

// ---- Integrity: checksums, the check at open, migration, the state hash ----

/// The pods and token the damage tests write, with strings easy to find in
/// the file.
fn damage_fixture(path: &std::path::Path) -> (Vec<Object>, TokenRecord) {
    let store = Store::open(path, 100).unwrap();
    let mut objects = Vec::new();
    for name in ["alpha-web", "bravo-db", "charlie-cache"] {
        let mut p = pod("default", name, &[("app", name)]);
        p.metadata.uid = format!("uid-0c6f9a1e-{name}");
        objects.push(create(&store, p));
    }
    objects.push(create(&store, node("pi-7", &[])));
    store
        .apply(Command::PutModule {
            module: module_with(b"\0asm module bytes"),
            bytes: b"\0asm module bytes".to_vec(),
        })
        .unwrap();
    let t = token("tok-4b1d");
    store
        .apply(Command::PutToken { record: t.clone() })
        .unwrap();
    (objects, t)
}

/// Every offset at which `needle` occurs in `haystack`.
fn offsets(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

/// Opens the damaged file and reads everything back: each read must give
/// the original, or an error. Returns whether anything was refused.
fn reads_original_or_fail(
    path: &std::path::Path,
    objects: &[Object],
    t: &TokenRecord,
) -> Result<(), String> {
    let store = match Store::open(path, 100) {
        Ok(store) => store,
        Err(e) => return Err(format!("open: {e}")),
    };
    let mut refused = Vec::new();
    for o in objects {
        let m = o.meta();
        match store.get(o.kind(), &m.namespace, &m.name) {
            Ok(Some(found)) => assert_eq!(&found, o, "a changed object was served"),
            Ok(None) => panic!("{} vanished without an error", o.describe()),
            Err(e) => refused.push(format!("get: {e}")),
        }
    }
    for kind in [Kind::Pod, Kind::Node] {
        match store.list(kind, None, &Selector::default()) {
            Ok((_, found)) => {
                let expected: Vec<&Object> = objects.iter().filter(|o| o.kind() == kind).collect();
                assert_eq!(found.iter().collect::<Vec<_>>(), expected, "a list changed");
            }
            Err(e) => refused.push(format!("list: {e}")),
        }
    }
    match store.token(&t.id) {
        Ok(found) => assert_eq!(found.as_ref(), Some(t), "a changed token was served"),
        Err(e) => refused.push(format!("token: {e}")),
    }
    if refused.is_empty() {
        Ok(())
    } else {
        Err(refused.join("; "))
    }
}

/// The finding this answers: one byte changed in `state.redb` made pods
/// vanish, renamed one or changed its uid, and the store served it. Every
/// occurrence of a key, a name and a uid in a closed store's file (current
/// pages and stale copies alike) is damaged in turn, in a fresh copy, in
/// several ways (one bit, a byte no UTF-8 text has); every read afterwards
/// gives the original object or an error, and damage to a live page is
/// always refused.
#[test]
fn flipped_bytes_in_keys_names_and_uids_are_refused_never_served() {
    let dir = tmp();
    let path = dir.path().join("state.redb");
    let (objects, t) = damage_fixture(&path);
    let clean = std::fs::read(&path).unwrap();
    let needles: [&[u8]; 5] = [
        b"Pod/default/bravo-db",
        b"charlie-cache",
        b"uid-0c6f9a1e-alpha-web",
        b"tok-4b1d",
        b"for pi-1",
    ];
    let mut cases = 0;
    let mut refused = 0;
    for needle in needles {
        let found = offsets(&clean, needle);
        assert!(
            !found.is_empty(),
            "{:?} is in the file",
            String::from_utf8_lossy(needle)
        );
        for at in found {
            // The last byte (a key's last byte changes its sort position
            // least, the worst case for lookups), and one in the middle.
            for (pos, flip) in [(needle.len() - 1, 0x01u8), (needle.len() / 2, 0x80)] {
                let mut damaged = clean.clone();
                damaged[at + pos] ^= flip;
                let copy = dir.path().join(format!("damaged-{cases}.redb"));
                std::fs::write(&copy, &damaged).unwrap();
                cases += 1;
                if let Err(why) = reads_original_or_fail(&copy, &objects, &t) {
                    assert!(
                        why.contains("fails its checksum")
                            || why.contains("not UTF-8")
                            || why.contains("out of order")
                            || why.contains("does not find its row"),
                        "{why}"
                    );
                    assert!(
                        why.contains("restore") || why.contains("rejoin"),
                        "the error says what to do: {why}"
                    );
                    refused += 1;
                }
                std::fs::remove_file(&copy).unwrap();
            }
        }
    }
    // Stale copies may be changed harmlessly; the live ones are refused.
    assert!(refused >= needles.len() * 2, "{refused} of {cases} refused");
}

/// The same at the level of one value: a sealed value stored under a
/// changed key, or changed itself, fails; it never decodes as another.
#[test]
fn a_value_moved_to_another_key_or_changed_fails_its_checksum() {
    let dir = tmp();
    let store = open(&dir, 100);
    let original = create(&store, pod("default", "web", &[]));
    let value =
        tables::encode_value("objects", b"Pod/default/web", "an object", &original).unwrap();
    // Moved: the bytes of web's value under the key of web2.
    store
        .write_unsealed_object("Pod/default/web2", &value)
        .unwrap();
    let err = store.get(Kind::Pod, "default", "web2").unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("Pod/default/web2") && m.contains("checksum")),
        "{err:?}"
    );
    // Changed: one byte of the uid.
    let mut changed = value.clone();
    let at = offsets(&changed, b"uid-default-web")[0];
    changed[at] ^= 0x01;
    store
        .write_unsealed_object("Pod/default/web", &changed)
        .unwrap();
    assert!(matches!(
        store.get(Kind::Pod, "default", "web"),
        Err(StoreError::Corrupt(_))
    ));
    // Nothing at all, or too short to hold a checksum.
    store.write_unsealed_object("Pod/default/web", b"").unwrap();
    assert!(matches!(
        store.get(Kind::Pod, "default", "web"),
        Err(StoreError::Corrupt(_))
    ));
    // And the whole store is refused at open while it holds such a value.
    drop(store);
    let err = Store::open(&dir.path().join("state.redb"), 100).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("state.redb")),
        "{err}"
    );
}

#[test]
fn a_lost_table_or_format_marker_is_refused_not_recreated_empty() {
    let dir = tmp();
    let path = dir.path().join("state.redb");
    damage_fixture(&path);
    {
        // The objects table's name damaged: the table seems gone.
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.rename_table(
            tables::OBJECTS,
            redb::TableDefinition::<&[u8], &[u8]>::new("objectz"),
        )
        .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&path, 100).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("no objects table")),
        "{err}"
    );

    let path = dir.path().join("marker.redb");
    damage_fixture(&path);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(tables::META)
            .unwrap()
            .remove(tables::meta::FORMAT)
            .unwrap();
        txn.commit().unwrap();
    }
    let err = Store::open(&path, 100).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("no format marker")),
        "{err}"
    );
}

/// Writes a store the way format 1 did: `&str` keys, plain postcard values,
/// the counters in `meta`.
fn write_format_1(path: &std::path::Path, objects: &[Object], events: &[WatchEvent]) {
    use tables::format1;
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(tables::META).unwrap();
        meta.insert(tables::meta::FORMAT, 1).unwrap();
        meta.insert(format1::REVISION, objects.len() as u64 + 1)
            .unwrap();
        meta.insert(format1::COMPACTED, 1).unwrap();
        let mut table = txn.open_table(format1::OBJECTS).unwrap();
        for o in objects {
            table
                .insert(
                    o.key().as_str(),
                    postcard::to_allocvec(o).unwrap().as_slice(),
                )
                .unwrap();
        }
        let mut history = txn.open_table(format1::HISTORY).unwrap();
        for e in events {
            history
                .insert(e.revision, postcard::to_allocvec(e).unwrap().as_slice())
                .unwrap();
        }
        let bytes = b"\0asm old module".as_slice();
        let mut module = Object::Module(module_with(bytes));
        module.meta_mut().name = objects::module_name(&objects::digest_of(bytes));
        module.meta_mut().resource_version = 1;
        table
            .insert(
                module.key().as_str(),
                postcard::to_allocvec(&module).unwrap().as_slice(),
            )
            .unwrap();
        txn.open_table(format1::MODULES)
            .unwrap()
            .insert(objects::digest_of(bytes).as_str(), bytes)
            .unwrap();
        txn.open_table(format1::TOKENS)
            .unwrap()
            .insert(
                "t-old",
                postcard::to_allocvec(&token("t-old")).unwrap().as_slice(),
            )
            .unwrap();
        txn.open_table(format1::UPLOADS)
            .unwrap()
            .insert(
                tables::chunk_key(&objects::digest_of(b"chunk"), 0).as_str(),
                b"chunk".as_slice(),
            )
            .unwrap();
        txn.open_table(format1::RAFT)
            .unwrap()
            .insert(tables::raft_meta::APPLIED, b"opaque applied".as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_format_1_store_is_migrated_to_checksums_on_open() {
    let dir = tmp();
    let path = dir.path().join("state.redb");
    let mut pods = Vec::new();
    let mut events = Vec::new();
    for (i, name) in ["old-a", "old-b"].into_iter().enumerate() {
        let mut p = pod("default", name, &[("gen", "1")]);
        p.metadata.resource_version = i as u64 + 2;
        p.metadata.generation = 1;
        let o = Object::Pod(p);
        events.push(WatchEvent {
            revision: i as u64 + 2,
            kind: EventType::Added,
            object: o.clone(),
        });
        pods.push(o);
    }
    write_format_1(&path, &pods, &events);

    let store = Store::open(&path, 100).expect("a format 1 store opens");
    assert_eq!(store.revision().unwrap(), 3);
    assert_eq!(
        store.list(Kind::Pod, None, &Selector::default()).unwrap().1,
        pods
    );
    assert_eq!(store.history_after(1, 10).unwrap(), events);
    assert_eq!(store.token("t-old").unwrap(), Some(token("t-old")));
    assert_eq!(
        store
            .module_bytes(&objects::digest_of(b"\0asm old module"))
            .unwrap()
            .as_deref(),
        Some(b"\0asm old module".as_slice())
    );
    assert_eq!(
        store.raft_meta().unwrap().applied.as_deref(),
        Some(b"opaque applied".as_slice())
    );
    // Writes go on from the old revision; the staged chunk commits.
    let created = create(&store, pod("default", "new", &[]));
    assert_eq!(created.meta().resource_version, 4);
    let staged = module_with(b"chunk");
    assert_eq!(
        store
            .apply(Command::CommitModule {
                module: staged.clone()
            })
            .unwrap(),
        Outcome::ModuleStored { existed: false }
    );
    assert_eq!(
        store.module_bytes(&staged.spec.digest).unwrap().as_deref(),
        Some(b"chunk".as_slice())
    );
    let mut watch = store.watch(1).unwrap();
    assert_eq!(next(&mut watch).await.unwrap(), events[0]);
    drop((store, watch));

    // Now in this format: the marker says so, and a byte changed is caught.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let format = txn
            .open_table(tables::META)
            .unwrap()
            .get(tables::meta::FORMAT)
            .unwrap()
            .map(|v| v.value());
        assert_eq!(format, Some(tables::FORMAT_VERSION));
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        assert!(names.iter().all(|n| !n.contains("format1")), "{names:?}");
    }
    let store = Store::open(&path, 100).expect("reopens in this format");
    assert_eq!(
        store.get(Kind::Pod, "default", "old-a").unwrap(),
        Some(pods[0].clone())
    );
}

#[test]
fn a_damaged_format_1_store_is_refused_and_left_as_it_was() {
    let dir = tmp();
    let path = dir.path().join("state.redb");
    let p = Object::Pod(pod("default", "renamed", &[]));
    write_format_1(&path, std::slice::from_ref(&p), &[]);
    // The key of the one object damaged: it no longer matches its value.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let mut table = txn.open_table(tables::format1::OBJECTS).unwrap();
        let value = table
            .remove("Pod/default/renamed")
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        table
            .insert("Pod/default/renamef", value.as_slice())
            .unwrap();
        drop(table);
        txn.commit().unwrap();
    }
    let err = Store::open(&path, 100).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("Pod/default/renamef") && m.contains("format 1")),
        "{err}"
    );
    // The migration was dropped whole: still format 1.
    let db = redb::Database::open(&path).unwrap();
    let format = db
        .begin_read()
        .unwrap()
        .open_table(tables::META)
        .unwrap()
        .get(tables::meta::FORMAT)
        .unwrap()
        .map(|v| v.value());
    assert_eq!(format, Some(1));
}

/// Writes a format 2 file: one stored module of `module` bytes (each module
/// one value), the pieces of an upload of `staged` bytes, and a piece staged
/// for the stored module too (format 2 kept such pieces beside the module).
fn write_format_2(path: &std::path::Path, module: &[u8], staged: &[u8]) {
    use tables::{format2, seal};
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        txn.open_table(tables::META)
            .unwrap()
            .insert(tables::meta::FORMAT, 2)
            .unwrap();
        let mut counters = txn.open_table(tables::COUNTERS).unwrap();
        for (key, value) in [
            (tables::counters::REVISION, 1),
            (tables::counters::COMPACTED, 0),
        ] {
            counters
                .insert(
                    key.as_bytes(),
                    tables::encode_counter(key, value).as_slice(),
                )
                .unwrap();
        }
        let digest = objects::digest_of(module);
        let mut object = module_with(module);
        object.metadata.name = objects::module_name(&digest);
        object.metadata.resource_version = 1;
        let object = Object::Module(object);
        let key = object.key();
        txn.open_table(tables::OBJECTS)
            .unwrap()
            .insert(
                key.as_bytes(),
                tables::encode_value("objects", key.as_bytes(), "", &object)
                    .unwrap()
                    .as_slice(),
            )
            .unwrap();
        txn.open_table(format2::MODULES)
            .unwrap()
            .insert(
                digest.as_bytes(),
                seal("modules", digest.as_bytes(), module).as_slice(),
            )
            .unwrap();
        let mut uploads = txn.open_table(format2::UPLOADS).unwrap();
        let staged_digest = objects::digest_of(staged);
        let mut pieces: Vec<(String, &[u8])> = staged
            .chunks(UPLOAD_CHUNK)
            .enumerate()
            .map(|(i, c)| {
                (
                    tables::chunk_key(&staged_digest, (i * UPLOAD_CHUNK) as u64),
                    c,
                )
            })
            .collect();
        pieces.push((tables::chunk_key(&digest, 0), &module[..1000]));
        for (key, piece) in pieces {
            uploads
                .insert(
                    key.as_bytes(),
                    seal("uploads", key.as_bytes(), piece).as_slice(),
                )
                .unwrap();
        }
        for def in [tables::TOKENS, tables::RAFT] {
            txn.open_table(def).unwrap();
        }
        txn.open_table(tables::HISTORY).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn a_format_2_store_moves_its_modules_into_chunks_on_open() {
    use redb::ReadableTable;
    let dir = tmp();
    let path = dir.path().join("state.redb");
    let module = module_bytes_of(3 * STORED_CHUNK + 17, 4);
    let staged = module_bytes_of(UPLOAD_CHUNK + 99, 5);
    write_format_2(&path, &module, &staged);
    // What a master of format 2 would hash: the same as after the move.
    let before = {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let mut h = StateHasher::default();
        h.table("revision");
        h.row(tables::counters::REVISION.as_bytes(), &1u64.to_le_bytes());
        let objects_table = txn.open_table(tables::OBJECTS).unwrap();
        h.table("objects");
        for e in objects_table.iter().unwrap() {
            let (k, v) = e.unwrap();
            h.row(
                k.value(),
                tables::unseal("objects", k.value(), v.value()).unwrap(),
            );
        }
        h.table("modules");
        h.row(objects::digest_of(&module).as_bytes(), &module);
        h.table("tokens");
        h.table("uploads");
        h.table("raft");
        h.finish()
    };

    let store = Store::open(&path, 100).expect("a format 2 store opens");
    let digest = objects::digest_of(&module);
    let chunks = read_chunks(&store, &digest);
    assert_eq!(chunks.len(), 4);
    assert!(chunks.iter().all(|c| c.len() <= STORED_CHUNK));
    assert_eq!(chunks.concat(), module);
    // The upload staged before goes on: it commits.
    let staged_module = module_with(&staged);
    assert_eq!(
        store.staged_uploads().unwrap(),
        vec![staged_module.spec.digest.clone()]
    );
    let out = store
        .apply(Command::CommitModule {
            module: staged_module.clone(),
        })
        .unwrap();
    assert_eq!(out, Outcome::ModuleStored { existed: false });
    assert_eq!(
        store.module_bytes(&staged_module.spec.digest).unwrap(),
        Some(staged.clone())
    );
    drop(store);
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let format = txn
            .open_table(tables::META)
            .unwrap()
            .get(tables::meta::FORMAT)
            .unwrap()
            .map(|v| v.value());
        assert_eq!(format, Some(tables::FORMAT_VERSION));
        let names: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_string())
            .collect();
        assert!(
            !names.iter().any(|n| n == "modules" || n == "uploads"),
            "{names:?}"
        );
    }
    // A fresh copy, moved without the commit above, hashes as format 2 did.
    let again = tmp();
    let path = again.path().join("state.redb");
    write_format_2(&path, &module, &[]);
    let store = Store::open(&path, 100).unwrap();
    assert_eq!(store.state_hash().unwrap().hash, before);
}

#[test]
fn a_damaged_format_2_store_is_refused_and_left_as_it_was() {
    use redb::ReadableTable;
    let dir = tmp();
    let path = dir.path().join("state.redb");
    let module = module_bytes_of(STORED_CHUNK + 1, 6);
    write_format_2(&path, &module, b"staged");
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        let mut table = txn.open_table(tables::format2::MODULES).unwrap();
        let digest = objects::digest_of(&module);
        let mut value = table
            .get(digest.as_bytes())
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        value[10] ^= 1;
        table.insert(digest.as_bytes(), value.as_slice()).unwrap();
        drop(table);
        txn.commit().unwrap();
    }
    let err = Store::open(&path, 100).unwrap_err();
    assert!(
        matches!(&err, StoreError::Corrupt(m) if m.contains("table modules") && m.contains("checksum")),
        "{err}"
    );
    let db = redb::Database::open(&path).unwrap();
    let format = db
        .begin_read()
        .unwrap()
        .open_table(tables::META)
        .unwrap()
        .get(tables::meta::FORMAT)
        .unwrap()
        .map(|v| v.value());
    assert_eq!(format, Some(2));
}

#[test]
fn state_hashes_agree_on_the_same_state_and_ignore_local_history() {
    let (d1, d2, d3) = (tmp(), tmp(), tmp());
    // Different history windows: history is each master's own.
    let (s1, s2) = (open(&d1, 100), open(&d2, 1));
    for s in [&s1, &s2] {
        create(s, pod("default", "a", &[]));
        create(s, pod("default", "b", &[]));
        s.apply(Command::PutToken { record: token("t") }).unwrap();
        s.apply(Command::PutModule {
            module: module_with(b"m"),
            bytes: b"m".to_vec(),
        })
        .unwrap();
    }
    let h1 = s1.state_hash().unwrap();
    assert_eq!(h1, s2.state_hash().unwrap());
    // A snapshot installed elsewhere holds the same state, sealed: the
    // store reopens (every value checked) with the same hash.
    let s3 = open(&d3, 100);
    s3.install(&s1.export().unwrap()).unwrap();
    assert_eq!(s3.state_hash().unwrap(), h1);
    drop(s3);
    assert_eq!(open(&d3, 100).state_hash().unwrap(), h1);
    // A state check changes nothing; any write changes the hash.
    s2.apply(Command::CheckState).unwrap();
    assert_eq!(s2.state_hash().unwrap(), h1);
    s2.apply(Command::DeleteToken { id: "t".into() }).unwrap();
    assert_ne!(s2.state_hash().unwrap(), h1);
}

#[tokio::test]
async fn a_store_marked_diverged_refuses_reads() {
    let dir = tmp();
    let store = open(&dir, 100);
    create(&store, pod("default", "a", &[]));
    let mut watch = store.watch(0).unwrap();
    store
        .checks()
        .mark_diverged("differs from the leader's".into());
    let refused = |r: Result<(), StoreError>| {
        assert!(
            matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("differs")),
            "{r:?}"
        )
    };
    refused(store.get(Kind::Pod, "default", "a").map(|_| ()));
    refused(
        store
            .list(Kind::Pod, None, &Selector::default())
            .map(|_| ()),
    );
    refused(store.watch(1).map(|_| ()));
    refused(store.module_bytes("sha256:00").map(|_| ()));
    refused(store.token("t").map(|_| ()));
    refused(next(&mut watch).await.map(|_| ()));
    // Raft's own reads go on (it may still need to apply and send snapshots).
    assert_eq!(store.revision().unwrap(), 1);
    assert!(store.export().is_ok());
}

/// A format 3 file holds objects in protocol 2's positional layout; opening
/// it rewrites them (and the history events holding them) self-describing,
/// with the same content.
#[test]
fn a_format_3_store_rewrites_its_objects_self_describing() {
    use redb::ReadableDatabase;
    let dir = tmp();
    let path = dir.path().join("state.redb");
    let old = objects::legacy::Pod::example();
    let want = Object::Pod(Pod::from(old.clone()));
    let key = want.key();
    {
        drop(Store::open(&path, 100).unwrap());
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            // Variant 0 of protocol 2's `Object`, then the positional pod.
            let legacy = (0u8, &old);
            let value = tables::encode_value("objects", key.as_bytes(), "a pod", &legacy).unwrap();
            txn.open_table(tables::OBJECTS)
                .unwrap()
                .insert(key.as_bytes(), value.as_slice())
                .unwrap();
            let event = (9u64, EventType::Added, &legacy);
            let value =
                tables::encode_value("history", &tables::history_key(9), "an event", &event)
                    .unwrap();
            txn.open_table(tables::HISTORY)
                .unwrap()
                .insert(9, value.as_slice())
                .unwrap();
            let mut counters = txn.open_table(tables::COUNTERS).unwrap();
            for (name, v) in [
                (tables::counters::REVISION, 9),
                (tables::counters::COMPACTED, 8),
            ] {
                counters
                    .insert(name.as_bytes(), tables::encode_counter(name, v).as_slice())
                    .unwrap();
            }
            txn.open_table(tables::META)
                .unwrap()
                .insert(tables::meta::FORMAT, tables::format3::FORMAT)
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path, 100).expect("a format 3 store opens");
    assert_eq!(
        store.get(Kind::Pod, "default", "web").unwrap(),
        Some(want.clone())
    );
    let events = store.history_after(8, 10).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].object, want);
    drop(store);
    // Written anew: the stored bytes are the self-describing encoding.
    let db = redb::Database::open(&path).unwrap();
    let read = db.begin_read().unwrap();
    let table = read.open_table(tables::OBJECTS).unwrap();
    let stored = table.get(key.as_bytes()).unwrap().unwrap();
    let payload = tables::unseal("objects", key.as_bytes(), stored.value()).unwrap();
    assert_eq!(payload, postcard::to_allocvec(&want).unwrap().as_slice());
    let format = read.open_table(tables::META).unwrap();
    assert_eq!(
        format.get(tables::meta::FORMAT).unwrap().unwrap().value(),
        tables::FORMAT_VERSION
    );
}

#[test]
fn a_binding_places_a_pod_and_marks_it_scheduled_in_one_write() {
    let dir = tmp();
    let store = Store::open(&dir.path().join("state.redb"), 100).unwrap();
    let mut p = pod("default", "web", &[]);
    p.metadata.uid = "u-1".into();
    p.status.reason = "Unschedulable".into();
    p.status.nominated_node_name = Some("n1".into());
    let created = create(&store, p);
    let bind = |uid: &str, node: &str| Command::Bind {
        namespace: "default".into(),
        name: "web".into(),
        uid: uid.into(),
        node: node.into(),
        at: Time(42),
    };
    let Outcome::Object(Object::Pod(bound)) = store.apply(bind("u-1", "n1")).unwrap() else {
        panic!("not a pod")
    };
    assert_eq!(bound.spec.node_name.as_deref(), Some("n1"));
    assert_eq!(
        bound.metadata.resource_version,
        created.meta().resource_version + 1,
        "one revision"
    );
    let scheduled = bound.status.condition("PodScheduled").expect("condition");
    assert!(scheduled.status);
    assert_eq!(scheduled.last_transition_time, Some(Time(42)));
    assert_eq!(bound.status.nominated_node_name, None);
    assert_eq!(bound.status.reason, "");
    // Again to the same node: nothing changes; elsewhere, or another uid: refused.
    let rv = store.revision().unwrap();
    store.apply(bind("u-1", "n1")).unwrap();
    assert_eq!(store.revision().unwrap(), rv);
    assert!(
        matches!(store.apply(bind("u-1", "n2")), Err(StoreError::Refused(Refusal::Invalid(m))) if m.contains("bound to n1"))
    );
    assert!(matches!(
        store.apply(bind("u-2", "n1")),
        Err(StoreError::Refused(Refusal::NotFound(_)))
    ));
}

#[test]
fn deleting_with_orphans_keeps_the_dependents_without_the_reference() {
    use flotilla_api::meta::OwnerReference;
    let dir = tmp();
    let store = open(&dir, 100);
    let mut rs = objects::ReplicaSet {
        metadata: ObjectMeta::named("default", "web-1"),
        ..Default::default()
    };
    rs.metadata.uid = "rs-uid".into();
    create(&store, Object::ReplicaSet(rs));
    let owned = |name: &str, ns: &str, uids: &[&str]| {
        let mut p = pod(ns, name, &[]);
        p.metadata.owner_references = uids
            .iter()
            .map(|u| OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web-1".into(),
                uid: (*u).into(),
                controller: *u == "rs-uid",
                ..Default::default()
            })
            .collect();
        create(&store, p);
    };
    owned("a", "default", &["rs-uid"]);
    owned("b", "default", &["rs-uid", "other"]);
    owned("c", "default", &["other"]);
    owned("d", "elsewhere", &["rs-uid"]);
    let before = store.revision().unwrap();
    let out = store.apply(Command::DeleteOrphaning {
        kind: Kind::ReplicaSet,
        namespace: "default".into(),
        name: "web-1".into(),
        expected_rv: None,
    });
    assert!(matches!(out, Ok(Outcome::Deleted(_))), "{out:?}");
    assert!(store
        .get(Kind::ReplicaSet, "default", "web-1")
        .unwrap()
        .is_none());
    let refs = |ns: &str, name: &str| -> Vec<String> {
        store
            .get(Kind::Pod, ns, name)
            .unwrap()
            .expect("kept")
            .meta()
            .owner_references
            .iter()
            .map(|r| r.uid.clone())
            .collect()
    };
    assert!(refs("default", "a").is_empty());
    assert_eq!(refs("default", "b"), ["other"]);
    assert_eq!(refs("default", "c"), ["other"]);
    assert_eq!(
        refs("elsewhere", "d"),
        ["rs-uid"],
        "only the owner's namespace"
    );
    // The delete, then one write per dependent changed.
    assert_eq!(store.revision().unwrap(), before + 3);
}

fn delete_at(
    store: &Store,
    kind: Kind,
    namespace: &str,
    name: &str,
    propagation: flotilla_api::protocol::Propagation,
) -> Result<Outcome, StoreError> {
    store.apply(Command::DeleteAt {
        kind,
        namespace: namespace.into(),
        name: name.into(),
        expected_rv: None,
        propagation,
        at: Time(1_800_000_000_000),
    })
}

#[test]
fn finalizers_hold_a_deleted_object_until_the_last_is_removed() {
    use flotilla_api::protocol::Propagation;
    let dir = tmp();
    let store = open(&dir, 100);
    // No finalizer: removed at once.
    create(&store, pod("default", "plain", &[]));
    let out = delete_at(
        &store,
        Kind::Pod,
        "default",
        "plain",
        Propagation::Background,
    );
    assert!(matches!(out, Ok(Outcome::Deleted(_))), "{out:?}");
    // A finalizer: marked, kept, and idempotent.
    let mut held = pod("default", "held", &[]);
    held.metadata.finalizers = vec!["example.com/hold".into()];
    create(&store, held);
    let Ok(Outcome::Object(marked)) = delete_at(
        &store,
        Kind::Pod,
        "default",
        "held",
        Propagation::Background,
    ) else {
        panic!("marked")
    };
    assert_eq!(
        marked.meta().deletion_timestamp,
        Some(Time(1_800_000_000_000))
    );
    let rv = store.revision().unwrap();
    delete_at(
        &store,
        Kind::Pod,
        "default",
        "held",
        Propagation::Background,
    )
    .unwrap();
    assert_eq!(
        store.revision().unwrap(),
        rv,
        "deleting again writes nothing"
    );
    // No finalizer may be added while it is deleted.
    let mut more = marked.clone();
    more.meta_mut().finalizers.push("example.com/other".into());
    let err = update(&store, more, None, false).expect_err("refused");
    assert!(err.to_string().contains("may not be added"), "{err}");
    // Removing the last one removes the object.
    let mut done = marked.clone();
    done.meta_mut().finalizers.clear();
    let out = store.apply(Command::Update {
        object: done,
        expected_rv: None,
        status_only: false,
    });
    assert!(matches!(out, Ok(Outcome::Deleted(_))), "{out:?}");
    assert!(store.get(Kind::Pod, "default", "held").unwrap().is_none());
    // A new object of the same name starts unmarked.
    let mut again = pod("default", "held", &[]);
    again.metadata.deletion_timestamp = Some(Time(5));
    let o = create(&store, again);
    assert!(!o.meta().is_deleting());
}

#[test]
fn foreground_deletion_and_namespaces_mark_rather_than_remove() {
    use flotilla_api::meta::{FOREGROUND_DELETION, NAMESPACE_FINALIZER};
    use flotilla_api::protocol::Propagation;
    let dir = tmp();
    let store = open(&dir, 100);
    let mut web = objects::ReplicaSet {
        metadata: ObjectMeta::named("default", "web"),
        ..Default::default()
    };
    web.metadata.uid = "rs-uid".into();
    create(&store, Object::ReplicaSet(web));
    let Ok(Outcome::Object(rs)) = delete_at(
        &store,
        Kind::ReplicaSet,
        "default",
        "web",
        Propagation::Foreground,
    ) else {
        panic!("marked")
    };
    assert_eq!(rs.meta().finalizers, [FOREGROUND_DELETION]);
    assert!(rs.meta().is_deleting());
    create(&store, Object::Namespace(objects::Namespace::named("lab")));
    let Ok(Outcome::Object(ns)) =
        delete_at(&store, Kind::Namespace, "", "lab", Propagation::Background)
    else {
        panic!("marked")
    };
    assert_eq!(ns.meta().finalizers, [NAMESPACE_FINALIZER]);
    // Orphaning a marked owner still frees its dependents.
    let mut p = pod("default", "p", &[]);
    p.metadata.owner_references = vec![flotilla_api::meta::OwnerReference {
        kind: "ReplicaSet".into(),
        name: "web".into(),
        uid: rs.meta().uid.clone(),
        controller: true,
        ..Default::default()
    }];
    create(&store, p);
    delete_at(
        &store,
        Kind::ReplicaSet,
        "default",
        "web",
        Propagation::Orphan,
    )
    .unwrap();
    assert!(get_pod(&store, "default", "p")
        .metadata
        .owner_references
        .is_empty());
}
