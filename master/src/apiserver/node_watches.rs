//! Node watches, routed: thousands of nodes each watch their own pods, and
//! a node's watch would otherwise look at (and be woken by) every event of
//! the cluster. One dispatcher reads the store's events once and hands
//! each to the watches of the node it concerns (a pod's `spec.nodeName`, a
//! Node's name), or to every node's (Services and Endpoints, which every
//! node's proxy routes); nothing else reaches a node.
//!
//! A watch that registers at some revision reads what happened since its
//! starting revision from the store's history, then the dispatcher's
//! events (those it has already read skipped by revision). A watch that
//! falls behind (its buffer full) is dropped and answered `TooOld`, as a
//! store watch that falls out of the history is: its node lists again.

use crate::store::{Store, StoreError};
use flotilla_api::protocol::WatchEvent;
use flotilla_api::Object;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Events buffered for one node watch before it counts as fallen behind.
const BUFFER: usize = 4096;

/// History events read per catch-up step.
const CATCH_UP_BATCH: usize = 256;

type Sender = mpsc::Sender<Arc<WatchEvent>>;

#[derive(Default)]
struct Routes {
    /// Node name → its watches (by id).
    watches: HashMap<String, Vec<(u64, Sender)>>,
    next_id: u64,
    /// The revision of the last event dispatched (0 before the dispatcher runs).
    last: u64,
    running: bool,
    /// Events buffered per watch ([`BUFFER`] unless a test says otherwise).
    buffer: usize,
}

/// The routes of node watches, shared by the API core.
#[derive(Clone, Default)]
pub struct NodeWatches {
    routes: Arc<Mutex<Routes>>,
}

/// Which nodes' watches an event goes to.
enum Route<'a> {
    One(&'a str),
    Every,
    Nobody,
}

/// The nodes an event concerns.
fn route_of(object: &Object) -> Route<'_> {
    match object {
        Object::Pod(p) => p
            .spec
            .node_name
            .as_deref()
            .map_or(Route::Nobody, Route::One),
        Object::Node(n) => Route::One(&n.metadata.name),
        Object::Service(_) | Object::Endpoints(_) => Route::Every,
        _ => Route::Nobody,
    }
}

impl NodeWatches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A watch of the events concerning `node` after revision `from`.
    pub fn watch(&self, store: &Store, node: &str, from: u64) -> Result<NodeWatch, StoreError> {
        let registered_at;
        let rx;
        {
            let mut r = self.lock();
            let (tx, receiver) = mpsc::channel(if r.buffer == 0 { BUFFER } else { r.buffer });
            rx = receiver;
            if !r.running {
                // The store's watch is made here, under the lock: the
                // revision it starts from and `last` are one.
                let first = store.watch(0)?;
                r.running = true;
                r.last = first.revision();
                let (routes, store) = (self.clone(), store.clone());
                tokio::spawn(async move { routes.dispatch(store, first).await });
            }
            let id = r.next_id;
            r.next_id += 1;
            r.watches
                .entry(node.to_string())
                .or_default()
                .push((id, tx));
            registered_at = r.last;
        }
        Ok(NodeWatch {
            store: store.clone(),
            rx,
            history: VecDeque::new(),
            last: from,
            catch_up_to: registered_at,
        })
    }

    /// Reads every store event once and routes it; on failure (the store's
    /// history outran it), drops every watch (they answer `TooOld`) and
    /// starts again from the present.
    async fn dispatch(self, store: Store, first: crate::store::Watch) {
        let mut watch = first;
        loop {
            match watch.next_shared().await {
                Ok(ev) => self.route(ev),
                Err(e) => {
                    tracing::warn!(error = %e, "node watches fell behind the store; their nodes list again");
                    loop {
                        match self.reset(&store) {
                            Ok(w) => {
                                watch = w;
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "node watches: cannot watch the store");
                                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                            }
                        }
                    }
                }
            }
        }
    }

    fn route(&self, ev: Arc<WatchEvent>) {
        let mut r = self.lock();
        r.last = ev.revision;
        // A watch whose buffer is full fell behind; one whose receiver is
        // gone ended. Both are dropped.
        match route_of(&ev.object) {
            Route::Nobody => {}
            Route::One(node) => {
                let Some(watches) = r.watches.get_mut(node) else {
                    return;
                };
                watches.retain(|(_, tx)| tx.try_send(ev.clone()).is_ok());
                if watches.is_empty() {
                    r.watches.remove(node);
                }
            }
            Route::Every => {
                r.watches.retain(|_, watches| {
                    watches.retain(|(_, tx)| tx.try_send(ev.clone()).is_ok());
                    !watches.is_empty()
                });
            }
        }
    }

    /// Drops every watch and goes on from the store's present revision.
    fn reset(&self, store: &Store) -> Result<crate::store::Watch, StoreError> {
        let mut r = self.lock();
        r.watches.clear();
        let watch = store.watch(0)?;
        r.last = watch.revision();
        Ok(watch)
    }
}

/// One node's watch: the history since its start, then routed events.
pub struct NodeWatch {
    store: Store,
    rx: mpsc::Receiver<Arc<WatchEvent>>,
    history: VecDeque<WatchEvent>,
    /// The revision of the last event delivered (at first, the start).
    last: u64,
    /// Events up to this revision come from the history; later ones from
    /// the dispatcher.
    catch_up_to: u64,
}

impl NodeWatch {
    /// The next event concerning the node (or that its filter may want:
    /// the history is not routed, the caller filters).
    pub async fn next(&mut self) -> Result<Arc<WatchEvent>, StoreError> {
        loop {
            self.store.checks().serving()?;
            if let Some(ev) = self.history.pop_front() {
                self.last = ev.revision;
                if self.history.is_empty() {
                    self.history.shrink_to_fit();
                }
                return Ok(Arc::new(ev));
            }
            if self.last < self.catch_up_to {
                let batch = self.store.history_after(self.last, CATCH_UP_BATCH)?;
                let upto = self.catch_up_to;
                self.history
                    .extend(batch.into_iter().filter(|e| e.revision <= upto));
                if self.history.is_empty() {
                    self.last = self.catch_up_to;
                }
                continue;
            }
            match self.rx.recv().await {
                Some(ev) if ev.revision <= self.last => {}
                Some(ev) => {
                    self.last = ev.revision;
                    return Ok(ev);
                }
                None => return Err(StoreError::too_old(self.last, self.last + 1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Command;
    use flotilla_api::{ObjectMeta, Pod};
    use std::time::Duration;

    fn pod(name: &str, node: &str) -> Object {
        let mut p = Pod {
            metadata: ObjectMeta::named("default", name),
            ..Pod::default()
        };
        p.spec.module = "sha256:x".into();
        p.spec.node_name = Some(node.into());
        Object::Pod(p)
    }

    fn create(store: &Store, o: Object) {
        store.apply(Command::Create { object: o }).expect("create");
    }

    async fn next_name(w: &mut NodeWatch) -> String {
        let ev = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("an event in time")
            .expect("an event");
        ev.object.meta().name.clone()
    }

    #[tokio::test]
    async fn a_node_gets_its_own_events_from_history_then_live() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("state.redb"), 1000).expect("store");
        create(&store, pod("old-mine", "n1"));
        let start = store.revision().expect("revision");
        create(&store, pod("before-mine", "n1"));
        create(&store, pod("before-theirs", "n2"));
        let hub = NodeWatches::default();
        // Registered after two writes, watching from before them: the
        // history brings them (the watch's filter would drop n2's).
        let mut w = hub.watch(&store, "n1", start).expect("watch");
        assert_eq!(next_name(&mut w).await, "before-mine");
        assert_eq!(next_name(&mut w).await, "before-theirs");
        create(&store, pod("live-theirs", "n2"));
        create(&store, pod("live-mine", "n1"));
        // Live, only n1's events reach it.
        assert_eq!(next_name(&mut w).await, "live-mine");
        let mut other = hub
            .watch(&store, "n2", store.revision().expect("rev"))
            .expect("watch");
        create(&store, pod("later-theirs", "n2"));
        assert_eq!(next_name(&mut other).await, "later-theirs");
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.next())
                .await
                .is_err(),
            "n1 gets nothing of n2's"
        );
    }

    #[tokio::test]
    async fn services_and_endpoints_reach_every_node() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("state.redb"), 1000).expect("store");
        let hub = NodeWatches::default();
        let now = store.revision().expect("rev");
        let mut n1 = hub.watch(&store, "n1", now).expect("watch");
        let mut n2 = hub.watch(&store, "n2", now).expect("watch");
        let svc: flotilla_api::objects::service::Service =
            serde_yaml::from_str("metadata: {name: web, namespace: default}\nspec: {selector: {app: web}, ports: [{port: 30080}]}")
                .expect("service");
        create(&store, Object::Service(svc));
        let eps = flotilla_api::objects::service::Endpoints {
            metadata: ObjectMeta::named("default", "web-eps"),
            ..Default::default()
        };
        create(&store, Object::Endpoints(eps));
        for w in [&mut n1, &mut n2] {
            assert_eq!(next_name(w).await, "web");
            assert_eq!(next_name(w).await, "web-eps");
        }
    }

    #[tokio::test]
    async fn a_watch_that_falls_behind_is_told_to_list_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Store::open(&dir.path().join("state.redb"), 100_000).expect("store");
        let hub = NodeWatches::default();
        hub.lock().buffer = 8;
        let mut w = hub
            .watch(&store, "n1", store.revision().expect("rev"))
            .expect("watch");
        // More events than the watch buffers, none read until every one
        // was dispatched.
        for i in 0..20 {
            create(&store, pod(&format!("p{i}"), "n1"));
        }
        let end = store.revision().expect("rev");
        while hub.lock().last < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut outcome = Ok(());
        for _ in 0..20 {
            match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    outcome = Err(e);
                    break;
                }
                Err(_) => panic!("no event and no error"),
            }
        }
        assert!(
            matches!(
                outcome,
                Err(StoreError::Refused(crate::store::Refusal::TooOld { .. }))
            ),
            "{outcome:?}"
        );
    }
}
