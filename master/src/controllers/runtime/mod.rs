//! The control-loop runtime, in the shape of client-go's informers and
//! work queues: a shared list+watch [`Cache`] of the objects controllers
//! read, kept on the leader with indexes (by node, by owner, by label) and
//! relisted by itself when its watch falls behind (`TooOld`); and a
//! [`WorkQueue`] of object keys with de-duplication and per-key exponential
//! back-off. A controller is a pure plan over a snapshot of the cache and an
//! executor that writes the plan through the API core.
//!
//! Time is tokio's: tests run the queue and the informer on paused time
//! (`#[tokio::test(start_paused = true)]`) and never sleep.

mod drive;

pub use drive::{drive, Reconciler};

use crate::store::{Refusal, Store, StoreError};
use flotilla_api::protocol::{EventType, WatchEvent};
use flotilla_api::selector::Selector;
use flotilla_api::{Kind, Object};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a cache delivers to its subscribers: an object changed (its
/// state before and after), or the cache was refilled from a new list.
#[derive(Debug, Clone)]
pub enum Change {
    Event {
        kind: EventType,
        old: Option<Arc<Object>>,
        new: Arc<Object>,
    },
    /// The watch fell behind and the cache was listed anew: look at everything.
    Relisted,
}

/// The objects of some kinds as of one revision, with indexes.
#[derive(Debug, Default)]
pub struct CacheState {
    pub revision: u64,
    objects: BTreeMap<String, Arc<Object>>,
    by_node: HashMap<String, BTreeSet<String>>,
    by_owner: HashMap<String, BTreeSet<String>>,
    by_label: HashMap<(String, String), BTreeSet<String>>,
}

fn index_keys(o: &Object) -> (Option<String>, Vec<String>, Vec<(String, String)>) {
    let node = o.as_pod().and_then(|p| p.spec.node_name.clone());
    let owners = o
        .meta()
        .owner_references
        .iter()
        .map(|r| r.uid.clone())
        .collect();
    let labels = o
        .meta()
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (node, owners, labels)
}

impl CacheState {
    fn insert(&mut self, o: Arc<Object>) -> Option<Arc<Object>> {
        let key = o.key();
        let old = self.remove(&key);
        let (node, owners, labels) = index_keys(&o);
        if let Some(n) = node {
            self.by_node.entry(n).or_default().insert(key.clone());
        }
        for u in owners {
            self.by_owner.entry(u).or_default().insert(key.clone());
        }
        for l in labels {
            self.by_label.entry(l).or_default().insert(key.clone());
        }
        self.objects.insert(key, o);
        old
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Object>> {
        let old = self.objects.remove(key)?;
        let (node, owners, labels) = index_keys(&old);
        fn drop_from<K: std::hash::Hash + Eq>(
            index: &mut HashMap<K, BTreeSet<String>>,
            at: K,
            key: &str,
        ) {
            if let Some(set) = index.get_mut(&at) {
                set.remove(key);
                if set.is_empty() {
                    index.remove(&at);
                }
            }
        }
        if let Some(n) = node {
            drop_from(&mut self.by_node, n, key);
        }
        for u in owners {
            drop_from(&mut self.by_owner, u, key);
        }
        for l in labels {
            drop_from(&mut self.by_label, l, key);
        }
        Some(old)
    }

    /// One object by its store key (`Kind/namespace/name`).
    pub fn get(&self, key: &str) -> Option<&Arc<Object>> {
        self.objects.get(key)
    }

    /// Every object of a kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Arc<Object>> {
        let prefix = flotilla_api::objects::key_prefix(kind, None);
        self.objects
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, o)| o)
    }

    /// Every object of a kind in a namespace.
    pub fn in_namespace(&self, kind: Kind, namespace: &str) -> impl Iterator<Item = &Arc<Object>> {
        let prefix = flotilla_api::objects::key_prefix(kind, Some(namespace));
        self.objects
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, o)| o)
    }

    /// The pods bound to a node.
    pub fn on_node(&self, node: &str) -> impl Iterator<Item = &Arc<Object>> {
        self.lookup(self.by_node.get(node))
    }

    /// The objects an owner (by uid) owns.
    pub fn owned_by(&self, uid: &str) -> impl Iterator<Item = &Arc<Object>> {
        self.lookup(self.by_owner.get(uid))
    }

    /// The objects carrying a label.
    pub fn labelled(&self, key: &str, value: &str) -> impl Iterator<Item = &Arc<Object>> {
        self.lookup(self.by_label.get(&(key.to_string(), value.to_string())))
    }

    fn lookup<'a>(
        &'a self,
        keys: Option<&'a BTreeSet<String>>,
    ) -> impl Iterator<Item = &'a Arc<Object>> + 'a {
        keys.into_iter()
            .flatten()
            .filter_map(|k| self.objects.get(k))
    }

    /// How many objects the cache holds.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// A shared cache of some kinds, fed by [`Cache::run`].
#[derive(Clone)]
pub struct Cache {
    kinds: Arc<Vec<Kind>>,
    state: Arc<RwLock<CacheState>>,
    changes: broadcast::Sender<Change>,
    synced: Arc<tokio::sync::watch::Sender<bool>>,
    /// The revision the cache has reached, for [`Cache::caught_up`].
    revision: Arc<tokio::sync::watch::Sender<u64>>,
}

/// How many changes a slow subscriber may lag before it is told to look at
/// everything again ([`Change::Relisted`]).
const CHANGES: usize = 65_536;

impl Cache {
    pub fn new(kinds: &[Kind]) -> Cache {
        Cache {
            kinds: Arc::new(kinds.to_vec()),
            state: Arc::default(),
            changes: broadcast::channel(CHANGES).0,
            synced: Arc::new(tokio::sync::watch::channel(false).0),
            revision: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Waits until the cache has seen the store's `revision` (a write's
    /// resourceVersion): a controller that wrote something waits for it
    /// here before it plans the same object again, so it never plans from
    /// a view without its own writes (it would create the same pods twice).
    /// False if `limit` passed first.
    pub async fn caught_up(&self, revision: u64, limit: Duration) -> bool {
        let mut rx = self.revision.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Reads the cache.
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Waits until the first list is in.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Lists the kinds from `store`, then follows its watch, until
    /// `shutdown`; relists when the watch falls behind the store's history.
    pub async fn run(&self, store: Store, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.list_and_watch(&store) => r,
            };
            match result {
                Err(StoreError::Refused(Refusal::TooOld { .. })) => {
                    backoff.reset();
                    tracing::info!(kinds = ?self.kinds, "cache fell behind the store's history; listing again");
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "cache watch failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Ok(()) => return,
            }
        }
    }

    async fn list_and_watch(&self, store: &Store) -> Result<(), StoreError> {
        let revision = store.revision()?;
        let mut fresh = CacheState {
            revision,
            ..CacheState::default()
        };
        for kind in self.kinds.iter() {
            let (_, items) = store.list(*kind, None, &Selector::default())?;
            for o in items {
                fresh.insert(Arc::new(o));
            }
        }
        // The list and the revision come from one moment only if nothing was
        // written between them; the watch from `revision` replays whatever
        // was, and replaying an event the list already holds is harmless.
        let mut watch = store.watch(revision)?;
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.revision.send_if_modified(|r| bump(r, revision));
        let _ = self.changes.send(Change::Relisted);
        self.synced.send_replace(true);
        loop {
            let ev = watch.next().await?;
            self.apply(ev);
        }
    }

    /// Applies one store event (of any kind; others are skipped).
    pub fn apply(&self, ev: WatchEvent) {
        let relevant = self.kinds.contains(&ev.object.kind());
        let new = Arc::new(ev.object);
        let old = {
            let mut state = self.state.write().unwrap_or_else(|p| p.into_inner());
            state.revision = state.revision.max(ev.revision);
            if !relevant {
                drop(state);
                self.revision.send_if_modified(|r| bump(r, ev.revision));
                return;
            }
            match ev.kind {
                EventType::Deleted => state.remove(&new.key()),
                _ => state.insert(new.clone()),
            }
        };
        self.revision.send_if_modified(|r| bump(r, ev.revision));
        let _ = self.changes.send(Change::Event {
            kind: ev.kind,
            old,
            new,
        });
    }
}

fn bump(at: &mut u64, revision: u64) -> bool {
    let moved = revision > *at;
    *at = (*at).max(revision);
    moved
}

/// Exponential back-off: doubles from `base` to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            next: base,
        }
    }

    /// The wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    /// Back to the shortest wait (after a success).
    pub fn reset(&mut self) {
        self.next = self.base;
    }
}

/// A queue of keys to reconcile. A key is queued at most once; a key added
/// while a worker holds it is queued again when the worker is done (so no
/// change is missed and no key is worked on twice at once). Failures back
/// off per key, exponentially.
pub struct WorkQueue {
    inner: Mutex<Queue>,
    ready: Notify,
    base: Duration,
    max: Duration,
}

#[derive(Default)]
struct Queue {
    order: VecDeque<String>,
    queued: HashSet<String>,
    active: HashSet<String>,
    /// Added while active: queued again on `done`.
    dirty: HashSet<String>,
    /// Keys waiting out a delay, and when each is due.
    waiting: BTreeMap<String, Instant>,
    failures: HashMap<String, u32>,
    shut: bool,
}

impl WorkQueue {
    /// A queue whose per-key back-off goes from `base` up to `max`.
    pub fn new(base: Duration, max: Duration) -> Arc<WorkQueue> {
        Arc::new(WorkQueue {
            inner: Mutex::default(),
            ready: Notify::new(),
            base,
            max,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` (once, however often it is added).
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut q = self.lock();
        q.waiting.remove(&key);
        if q.active.contains(&key) {
            q.dirty.insert(key);
        } else if q.queued.insert(key.clone()) {
            q.order.push_back(key);
            drop(q);
            self.ready.notify_one();
        }
    }

    /// Queues `key` after `delay` (sooner if it is added meanwhile).
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        let key = key.into();
        let due = Instant::now() + delay;
        let mut q = self.lock();
        if q.queued.contains(&key) {
            return;
        }
        let at = q.waiting.entry(key).or_insert(due);
        *at = (*at).min(due);
        drop(q);
        self.ready.notify_one();
    }

    /// Queues `key` again after its back-off, which doubles with each
    /// failure in a row.
    pub fn retry(&self, key: &str) {
        let delay = {
            let mut q = self.lock();
            let n = q.failures.entry(key.to_string()).or_default();
            let delay = self
                .base
                .saturating_mul(2u32.saturating_pow(*n))
                .min(self.max);
            *n = n.saturating_add(1);
            delay
        };
        self.add_after(key, delay);
    }

    /// Forgets `key`'s failures (after a success).
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    /// How many failures in a row `key` has had.
    pub fn failures(&self, key: &str) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Ends the queue: [`WorkQueue::next`] answers None from now on.
    pub fn shut_down(&self) {
        self.lock().shut = true;
        self.ready.notify_waiters();
        self.ready.notify_one();
    }

    /// Waits for a key to work on; None once the queue is shut down.
    pub async fn next(&self) -> Option<String> {
        loop {
            let wake = {
                let mut q = self.lock();
                if q.shut {
                    return None;
                }
                let now = Instant::now();
                let due: Vec<String> = q
                    .waiting
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in due {
                    q.waiting.remove(&k);
                    if q.active.contains(&k) {
                        q.dirty.insert(k);
                    } else if q.queued.insert(k.clone()) {
                        q.order.push_back(k);
                    }
                }
                if let Some(key) = q.order.pop_front() {
                    q.queued.remove(&key);
                    q.active.insert(key.clone());
                    return Some(key);
                }
                q.waiting.values().min().copied()
            };
            let notified = self.ready.notified();
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Takes up to `max` keys at once (waiting for the first): for
    /// controllers that decide a batch together, as the scheduler does.
    pub async fn next_batch(&self, max: usize) -> Vec<String> {
        let Some(first) = self.next().await else {
            return Vec::new();
        };
        let mut batch = vec![first];
        let mut q = self.lock();
        while batch.len() < max {
            let Some(key) = q.order.pop_front() else {
                break;
            };
            q.queued.remove(&key);
            q.active.insert(key.clone());
            batch.push(key);
        }
        batch
    }

    /// A worker is done with `key`; queued again if it was added meanwhile.
    pub fn done(&self, key: &str) {
        let mut q = self.lock();
        q.active.remove(key);
        if q.dirty.remove(key) && q.queued.insert(key.to_string()) {
            q.order.push_back(key.to_string());
            drop(q);
            self.ready.notify_one();
        }
    }

    /// How many keys wait to be worked on (queued, not delayed).
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// Whether no key waits to be worked on.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
