use super::*;
use crate::store::Command;
use flotilla_api::{ObjectMeta, Pod};

fn pod(name: &str, node: Option<&str>, owner: &str) -> Object {
    let mut p = Pod {
        metadata: ObjectMeta::named("default", name),
        ..Pod::default()
    };
    p.metadata.uid = format!("uid-{name}");
    p.metadata.labels.insert("app".into(), "web".into());
    p.metadata
        .owner_references
        .push(flotilla_api::meta::OwnerReference {
            kind: "ReplicaSet".into(),
            name: "rs".into(),
            uid: owner.into(),
            controller: true,
            ..Default::default()
        });
    p.spec.module = "sha256:x".into();
    p.spec.node_name = node.map(String::from);
    Object::Pod(p)
}

fn event(kind: EventType, revision: u64, o: Object) -> WatchEvent {
    WatchEvent {
        revision,
        kind,
        object: o,
    }
}

#[tokio::test(start_paused = true)]
async fn queued_keys_are_deduplicated_and_requeued_once_done() {
    let q = WorkQueue::new(Duration::from_millis(100), Duration::from_secs(10));
    q.add("a");
    q.add("a");
    q.add("b");
    assert_eq!(q.len(), 2, "a once, b once");
    let a = q.next().await.unwrap();
    assert_eq!(a, "a");
    // Added while a worker holds it: not handed out twice at once...
    q.add("a");
    assert_eq!(q.next().await.as_deref(), Some("b"));
    assert!(q.is_empty());
    // ...but queued again when the worker is done.
    q.done("a");
    assert_eq!(q.next().await.as_deref(), Some("a"));
    q.done("a");
    q.done("b");
    assert!(q.is_empty());
}

#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_per_key_until_forgotten() {
    let q = WorkQueue::new(Duration::from_millis(100), Duration::from_secs(1));
    let start = Instant::now();
    let mut waits = Vec::new();
    for _ in 0..6 {
        q.retry("k");
        let before = Instant::now();
        assert_eq!(q.next().await.as_deref(), Some("k"));
        waits.push(before.elapsed().as_millis());
        q.done("k");
    }
    assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
    assert_eq!(q.failures("k"), 6);
    q.forget("k");
    q.retry("k");
    let before = Instant::now();
    assert_eq!(q.next().await.as_deref(), Some("k"));
    assert_eq!(before.elapsed().as_millis(), 100);
    // Another key's back-off is its own.
    q.done("k");
    q.retry("other");
    let before = Instant::now();
    assert_eq!(q.next().await.as_deref(), Some("other"));
    assert_eq!(before.elapsed().as_millis(), 100);
    assert!(start.elapsed() >= Duration::from_millis(3600));
}

#[tokio::test(start_paused = true)]
async fn a_delayed_key_comes_sooner_when_added_and_batches_take_what_is_queued() {
    let q = WorkQueue::new(Duration::from_millis(100), Duration::from_secs(10));
    q.add_after("late", Duration::from_secs(60));
    q.add("now");
    let before = Instant::now();
    assert_eq!(q.next_batch(10).await, vec!["now".to_string()]);
    q.done("now");
    q.add("late");
    assert_eq!(q.next().await.as_deref(), Some("late"));
    assert!(before.elapsed() < Duration::from_secs(1), "not the minute");
    q.done("late");
    for k in ["a", "b", "c"] {
        q.add(k);
    }
    assert_eq!(q.next_batch(2).await.len(), 2);
    assert_eq!(q.next_batch(2).await, vec!["c".to_string()]);
    q.shut_down();
    assert_eq!(q.next().await, None);
}

#[test]
fn the_cache_indexes_by_node_owner_and_label() {
    let cache = Cache::new(&[Kind::Pod]);
    cache.apply(event(EventType::Added, 1, pod("a", Some("n1"), "rs-1")));
    cache.apply(event(EventType::Added, 2, pod("b", None, "rs-1")));
    cache.apply(event(EventType::Modified, 3, pod("b", Some("n2"), "rs-1")));
    let mut node = flotilla_api::Node::default();
    node.metadata.name = "n1".into();
    // A kind the cache does not hold moves its revision only.
    cache.apply(event(EventType::Added, 4, Object::Node(node)));
    {
        let s = cache.read();
        assert_eq!(s.revision, 4);
        assert_eq!(s.len(), 2);
        let names = |it: &mut dyn Iterator<Item = &Arc<Object>>| {
            it.map(|o| o.meta().name.clone()).collect::<Vec<_>>()
        };
        assert_eq!(names(&mut s.on_node("n1")), ["a"]);
        assert_eq!(names(&mut s.on_node("n2")), ["b"]);
        assert_eq!(names(&mut s.owned_by("rs-1")), ["a", "b"]);
        assert_eq!(names(&mut s.labelled("app", "web")), ["a", "b"]);
        assert_eq!(names(&mut s.of_kind(Kind::Pod)), ["a", "b"]);
    }
    cache.apply(event(EventType::Deleted, 5, pod("a", Some("n1"), "rs-1")));
    let s = cache.read();
    assert_eq!(s.on_node("n1").count(), 0);
    assert_eq!(s.owned_by("rs-1").count(), 1);
    assert!(s.get("Pod/default/a").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_cache_that_falls_behind_the_history_lists_again_by_itself() {
    let dir = tempfile::tempdir().expect("tmp");
    // A history of 5 revisions: a watcher that misses more must relist.
    let store = Store::open(&dir.path().join("state.redb"), 5).expect("store");
    let cache = Cache::new(&[Kind::Pod]);
    let mut changes = cache.subscribe();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn({
        let (cache, store, shutdown) = (cache.clone(), store.clone(), shutdown.clone());
        async move { cache.run(store, shutdown).await }
    });
    cache.synced().await;
    assert!(matches!(changes.recv().await, Ok(Change::Relisted)));
    // Many writes while the cache's task cannot run (one thread, no yield):
    // its watch falls out of the history window.
    // (More than the store's live channel holds, 1024.)
    for i in 0..1100 {
        store
            .apply(Command::Create {
                object: pod(&format!("p{i:04}"), None, "rs"),
            })
            .expect("create");
    }
    let mut relisted = false;
    while cache.read().len() < 1100 {
        match tokio::time::timeout(Duration::from_secs(30), changes.recv()).await {
            Ok(Ok(Change::Relisted)) => relisted = true,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            other => panic!("the cache never caught up: {other:?}"),
        }
    }
    assert!(relisted, "the watch fell behind, so the cache listed again");
    assert_eq!(cache.read().revision, store.revision().expect("revision"));
    shutdown.cancel();
    task.await.expect("cache task");
}
