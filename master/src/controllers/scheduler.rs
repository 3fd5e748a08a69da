//! The scheduler's control loop: pending pods queue by key, are decided in
//! batches over a snapshot of the shared cache ([`crate::scheduler`], pure),
//! and the decisions are written through the API core as the `scheduler`
//! controller — bindings (`Command::Bind`, many per raft entry through the
//! leader's batcher), Unschedulable conditions, nominations and the
//! deletion of preempted pods.
//!
//! A pod that fits nowhere is parked, not retried in a loop: it is queued
//! again when something that could make room changes (a node appears,
//! becomes Ready or changes its labels, taints or resources; a pod ends or
//! is deleted), and at the latest after [`PARKED_FLUSH`].
//!
//! Bindings being written are *assumed*: counted on their node in the next
//! batches until the cache shows them, so that two batches never give the
//! same free memory away twice.

use super::runtime::{Cache, Change, WorkQueue};
use crate::apiserver::{ApiServer, Caller};
use crate::scheduler::{self, Decision, PodRef, PodState, Snapshot};
use flotilla_api::objects::{condition, PodCondition};
use flotilla_api::protocol::{ApiError, ErrorCode, EventType};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Module, Node, Object, Pod};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Who the scheduler's writes come from.
const ME: Caller = Caller::Controller("scheduler");

/// The most pods decided in one batch.
const BATCH: usize = 4096;

/// The pods decided together in one part of a batch: the part's writes
/// start while the next part is decided (the snapshot is built once per
/// batch; a part only has its own order and turn).
const PART: usize = 256;

/// The most writes in flight at once; the leader's batcher puts many of them
/// in one raft entry.
const IN_FLIGHT: usize = 1024;

/// Parked (unschedulable) pods are looked at again at least this often,
/// whatever changes.
pub const PARKED_FLUSH: Duration = Duration::from_secs(30);

/// After a change that may make room, parked pods wait this long before
/// they are queued again, so that a burst of changes wakes them once.
const FLUSH_DELAY: Duration = Duration::from_millis(50);

/// The kinds the scheduler's cache holds.
pub const KINDS: [Kind; 3] = [Kind::Pod, Kind::Node, Kind::Module];

/// The scheduler's state between batches.
struct State {
    /// Pods that fit nowhere, waiting for a change.
    parked: HashSet<String>,
    /// Bindings written (or being written) but not yet in the cache: pod
    /// key → its node and what it reserves.
    assumed: HashMap<String, (String, PodState)>,
    /// Where the scheduler's turns stand ([`Snapshot::next_start`] and
    /// [`Snapshot::turn`]), carried from batch to batch.
    next_start: usize,
    turn: u64,
}

/// The cache key of a pod.
fn key_of(namespace: &str, name: &str) -> String {
    flotilla_api::objects::object_key(Kind::Pod, namespace, name)
}

/// Whether a pod waits for the scheduler.
fn pending(pod: &Pod) -> bool {
    pod.spec.node_name.is_none() && !pod.status.phase.is_terminal()
}

/// Runs the scheduler until `shutdown`, reading `cache` (which must hold
/// [`KINDS`]) and writing through `api`.
pub async fn run(api: ApiServer, cache: Cache, shutdown: CancellationToken) {
    let queue = WorkQueue::new(Duration::from_millis(50), Duration::from_secs(30));
    let state = Arc::new(Mutex::new(State {
        parked: HashSet::new(),
        assumed: HashMap::new(),
        next_start: 0,
        turn: 0,
    }));
    let mut changes = cache.subscribe();
    cache.synced().await;
    enqueue_all(&cache, &queue);
    let watcher = {
        let (queue, state, cache) = (queue.clone(), state.clone(), cache.clone());
        async move {
            let mut flush = tokio::time::interval(PARKED_FLUSH);
            loop {
                tokio::select! {
                    change = changes.recv() => match change {
                        Ok(Change::Event { kind, old, new }) => {
                            on_change(&queue, &state, kind, old.as_deref(), &new)
                        }
                        // Lagged, or the cache relisted: look at everything.
                        Ok(Change::Relisted) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            enqueue_all(&cache, &queue);
                            unpark(&queue, &state, Duration::ZERO);
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    },
                    _ = flush.tick() => unpark(&queue, &state, Duration::ZERO),
                }
            }
        }
    };
    let worker = async {
        loop {
            let keys = queue.next_batch(BATCH).await;
            if keys.is_empty() {
                return;
            }
            decide_batch(&api, &cache, &queue, &state, &keys).await;
            for k in &keys {
                queue.done(k);
            }
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = watcher => {}
        _ = worker => {}
    }
    queue.shut_down();
}

/// Queues every pending pod of the cache.
fn enqueue_all(cache: &Cache, queue: &WorkQueue) {
    let keys: Vec<String> = cache
        .read()
        .of_kind(Kind::Pod)
        .filter_map(|o| o.as_pod())
        .filter(|p| pending(p))
        .map(|p| key_of(&p.metadata.namespace, &p.metadata.name))
        .collect();
    for k in keys {
        queue.add(k);
    }
}

/// Queues the parked pods again after `delay`.
fn unpark(queue: &WorkQueue, state: &Mutex<State>, delay: Duration) {
    let parked: Vec<String> = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.parked.drain().collect()
    };
    for k in parked {
        queue.add_after(k, delay);
    }
}

/// What a change in the cache means for the scheduler.
fn on_change(
    queue: &WorkQueue,
    state: &Mutex<State>,
    kind: EventType,
    old: Option<&Object>,
    new: &Object,
) {
    match new {
        Object::Pod(p) => {
            let key = key_of(&p.metadata.namespace, &p.metadata.name);
            // A parked pod whose spec did not change (its status, labels or
            // annotations did, the scheduler's own Unschedulable note
            // included) waits on: nothing about it asks for a new decision.
            let same_spec = old
                .and_then(Object::as_pod)
                .is_some_and(|o| o.spec == p.spec);
            let parked = same_spec
                && state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .parked
                    .contains(&key);
            if kind != EventType::Deleted && pending(p) && !parked {
                queue.add(key.clone());
            }
            // The cache shows the binding (or the pod is gone): no longer assumed.
            if kind == EventType::Deleted || p.spec.node_name.is_some() {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.assumed.remove(&key);
                if kind == EventType::Deleted {
                    s.parked.remove(&key);
                }
            }
            // A pod that leaves a node, or ends, makes room there.
            let was_holding = old
                .and_then(Object::as_pod)
                .is_some_and(|o| o.spec.node_name.is_some() && !o.status.phase.is_terminal());
            let holds = kind != EventType::Deleted
                && p.spec.node_name.is_some()
                && !p.status.phase.is_terminal();
            if was_holding && !holds {
                unpark(queue, state, FLUSH_DELAY);
            }
        }
        Object::Node(n) => {
            let relevant = match old.and_then(Object::as_node) {
                None => true,
                Some(o) => placement_changed(o, n),
            };
            if relevant && kind != EventType::Deleted {
                unpark(queue, state, FLUSH_DELAY);
            }
        }
        _ => {}
    }
}

/// Whether a node changed in a way that may let a parked pod in.
fn placement_changed(old: &Node, new: &Node) -> bool {
    old.status.ready != new.status.ready
        || old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || old.allocatable() != new.allocatable()
        || old.status.interfaces != new.status.interfaces
}

/// Decides the pods of `keys` over one snapshot and writes the decisions.
/// The decisions are made on a blocking thread, [`PART`] pods at a time,
/// and each part's writes start while the next part is decided.
async fn decide_batch(
    api: &ApiServer,
    cache: &Cache,
    queue: &Arc<WorkQueue>,
    state: &Arc<Mutex<State>>,
    keys: &[String],
) {
    let started = std::time::Instant::now();
    let (mut pods, mut snapshot) = {
        let c = cache.read();
        let s = state.lock().unwrap_or_else(|p| p.into_inner());
        let pods: Vec<Pod> = keys
            .iter()
            .filter(|k| !s.assumed.contains_key(*k))
            .filter_map(|k| c.get(k))
            .filter_map(|o| o.as_pod())
            .filter(|p| pending(p))
            .cloned()
            .collect();
        if pods.is_empty() {
            return;
        }
        let nodes = c.of_kind(Kind::Node).filter_map(|o| o.as_node()).cloned();
        let all_pods = c.of_kind(Kind::Pod).filter_map(|o| o.as_pod());
        let modules = c
            .of_kind(Kind::Module)
            .filter_map(|o| o.as_kind::<Module>());
        let mut snapshot = Snapshot::new(nodes, all_pods, modules);
        for (node, pod) in s.assumed.values() {
            snapshot.assume(node, pod.clone());
        }
        snapshot.next_start = s.next_start;
        snapshot.turn = s.turn;
        (pods, snapshot)
    };
    let built = started.elapsed();
    // The batch in the order it is decided, so that each part holds the
    // pods that come first.
    pods.sort_by(scheduler::queue_order);
    let pods = Arc::new(pods);
    let (parts, mut decided) = tokio::sync::mpsc::channel::<Vec<Decision>>(2);
    let decider = {
        let pods = pods.clone();
        tokio::task::spawn_blocking(move || {
            for part in pods.chunks(PART) {
                if parts
                    .blocking_send(scheduler::schedule(part, &mut snapshot))
                    .is_err()
                {
                    break;
                }
            }
            snapshot
        })
    };
    let by_ref: HashMap<&str, &Pod> = pods.iter().map(|p| (p.metadata.uid.as_str(), p)).collect();
    let mut writes = tokio::task::JoinSet::new();
    while let Some(decisions) = decided.recv().await {
        for decision in decisions {
            let Some(pod) = by_ref
                .get(decision.pod().uid.as_str())
                .map(|p| (*p).clone())
            else {
                continue;
            };
            let key = key_of(&pod.metadata.namespace, &pod.metadata.name);
            if let Decision::Bind { node, .. } = &decision {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.assumed
                    .insert(key.clone(), (node.clone(), PodState::from_pod(&pod)));
            }
            while writes.len() >= IN_FLIGHT {
                writes.join_next().await;
            }
            let (api, queue, state) = (api.clone(), queue.clone(), state.clone());
            writes.spawn(async move { execute(&api, &queue, &state, key, pod, decision).await });
        }
    }
    match decider.await {
        Ok(snapshot) => {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.next_start = snapshot.next_start;
            s.turn = snapshot.turn;
        }
        Err(e) => {
            // Pods left undecided are looked at again after their back-off.
            tracing::error!(error = %e, "the scheduler's decisions stopped; retrying the batch");
            for k in keys {
                queue.retry(k);
            }
        }
    }
    tracing::debug!(
        pods = pods.len(),
        snapshot_ms = built.as_millis() as u64,
        decided_and_sent_ms = started.elapsed().as_millis() as u64,
        "decided a batch"
    );
    while writes.join_next().await.is_some() {}
}

/// Whether a refused write only lost a race: the pod changed, went or was
/// bound meanwhile (the cache's next event says what to do).
fn lost_race(e: &ApiError) -> bool {
    // A binding to a pod bound meanwhile is refused as Invalid.
    crate::apiserver::lost_race(e) || e.code == ErrorCode::Invalid
}

async fn execute(
    api: &ApiServer,
    queue: &WorkQueue,
    state: &Mutex<State>,
    key: String,
    pod: Pod,
    decision: Decision,
) {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    match decision {
        Decision::Bind { pod: r, node } => {
            match api.bind(&ME, &r.namespace, &r.name, &r.uid, &node).await {
                Ok(_) => {
                    queue.forget(&key);
                    tracing::debug!(pod = %r, %node, "bound pod");
                }
                Err(e) => {
                    lock().assumed.remove(&key);
                    if !lost_race(&e) {
                        tracing::warn!(pod = %r, %node, error = %e, "binding failed; retrying");
                        queue.retry(&key);
                    }
                }
            }
        }
        Decision::Unschedulable { pod: r, message } => {
            lock().parked.insert(key.clone());
            let shown = pod
                .status
                .condition(condition::POD_SCHEDULED)
                .is_some_and(|c| !c.status && c.message == message);
            if !shown {
                let rv = pod.metadata.resource_version;
                let mut pod = pod;
                set_unschedulable(&mut pod, &message, None);
                if let Err(e) = api.update_status_at(&ME, Object::Pod(pod), rv).await {
                    if !lost_race(&e) {
                        tracing::warn!(pod = %r, error = %e, "cannot record why the pod waits");
                    }
                }
                tracing::info!(pod = %r, %message, "pod is unschedulable");
            }
        }
        Decision::Preempt {
            pod: r,
            node,
            victims,
        } => {
            lock().parked.insert(key.clone());
            tracing::info!(pod = %r, %node, victims = victims.len(), "preempting lower-priority pods");
            for v in &victims {
                evict(api, v, &r, &node).await;
            }
            let rv = pod.metadata.resource_version;
            let mut pod = pod;
            let message = format!(
                "preempting {} lower-priority pod(s) on node {node}",
                victims.len()
            );
            set_unschedulable(&mut pod, &message, Some(node));
            if let Err(e) = api.update_status_at(&ME, Object::Pod(pod), rv).await {
                if !lost_race(&e) {
                    tracing::warn!(pod = %r, error = %e, "cannot record the nomination");
                }
            }
        }
    }
}

/// The status of a pod that waits: PodScheduled false with why, and the
/// node it is nominated to while its victims stop.
fn set_unschedulable(pod: &mut Pod, message: &str, nominated: Option<String>) {
    pod.status.set_condition(PodCondition {
        type_: condition::POD_SCHEDULED.into(),
        status: false,
        last_transition_time: Some(Time::now()),
        reason: "Unschedulable".into(),
        message: message.to_string(),
    });
    pod.status.reason = "Unschedulable".into();
    pod.status.message = message.to_string();
    pod.status.nominated_node_name = nominated;
}

/// Deletes a preempted pod, if it is still the one decided about.
async fn evict(api: &ApiServer, victim: &PodRef, for_pod: &PodRef, node: &str) {
    let current = api.store.get(Kind::Pod, &victim.namespace, &victim.name);
    let Ok(Some(Object::Pod(p))) = current else {
        return;
    };
    if p.metadata.uid != victim.uid {
        return;
    }
    match api
        .delete(
            &ME,
            Kind::Pod,
            &victim.namespace,
            &victim.name,
            p.metadata.resource_version,
        )
        .await
    {
        Ok(_) => tracing::info!(victim = %victim, pod = %for_pod, %node, "preempted"),
        Err(e) if lost_race(&e) => {}
        Err(e) => tracing::warn!(victim = %victim, error = %e, "cannot preempt"),
    }
}
