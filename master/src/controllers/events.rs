//! Events: what the scheduler, the controllers and the nodes saw happen,
//! recorded as Event objects on the leading master.
//!
//! - [`Recorder`] is what components call. It counts the same happening
//!   (same object, reason, type, message and source) as one Event, raising
//!   its `count` and `lastTimestamp`, and keeps what is waiting in memory.
//! - [`run`] writes what waits every [`FLUSH`], all at once (the raft
//!   batcher makes one log entry of them), so a crash-looping pod costs at
//!   most one write per flush however often it restarts; and deletes the
//!   Events older than the time to live (`--event-ttl`, 1 h) and the oldest
//!   beyond the cap (`--max-events`).
//! - What nodes report (a pod started, backed off, was OOM-killed; a node
//!   became ready) reaches the master as pod and node status; [`observe`]
//!   turns those changes into Events with the node as their source
//!   ([`pod_events`], [`node_events`], pure), as does a binding or a
//!   scheduling failure (the scheduler's).

use crate::apiserver::{store_err, unless_lost, ApiServer, Caller};
use crate::controllers::runtime::{Cache, Change};
use flotilla_api::meta::DEFAULT_NAMESPACE;
use flotilla_api::objects::event::{Event, EventSource, EventType, ObjectReference};
use flotilla_api::objects::{condition, module_name, Node, PodPhase, ReadyState};
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::selector::Selector;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object, ObjectMeta, Pod};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

const ME: Caller = Caller::Controller("events");

/// How often waiting events are written.
pub const FLUSH: Duration = Duration::from_secs(2);
/// How often old Events are looked for.
const SWEEP: Duration = Duration::from_secs(30);
/// Distinct happenings kept in memory; past it the least recently seen
/// written one is forgotten (its next occurrence makes a new Event), and
/// when all wait to be written a new one is dropped.
const TRACKED: usize = 4096;

/// How long Events live, and how many there may be.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub ttl: Duration,
    pub max_events: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            ttl: Duration::from_secs(3600),
            max_events: 10_000,
        }
    }
}

/// One happening, before it is an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Happening {
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
    pub component: &'static str,
    /// The node that reported it, if one did.
    pub host: String,
}

impl Happening {
    pub fn normal(component: &'static str, reason: &'static str, message: String) -> Happening {
        Happening {
            type_: EventType::Normal,
            reason,
            message,
            component,
            host: String::new(),
        }
    }

    pub fn warning(component: &'static str, reason: &'static str, message: String) -> Happening {
        Happening {
            type_: EventType::Warning,
            ..Happening::normal(component, reason, message)
        }
    }

    fn on(mut self, host: &str) -> Happening {
        self.host = host.to_string();
        self
    }
}

/// What makes two happenings the same one.
type Key = (ObjectReference, String, EventType, String, EventSource);

/// What one tracked happening is, and what of it is written.
#[derive(Debug, Clone)]
struct Tracked {
    key: Key,
    event: Event,
    /// The stored Event's name, once written.
    stored: bool,
    dirty: bool,
    seen: u64,
}

/// The happenings tracked, each under a number of its own. Every step is
/// a lookup, never a walk over all of them: while thousands of pods are
/// placed at once, each placement records an Event.
#[derive(Debug, Default)]
struct Pending {
    tracked: HashMap<u64, Tracked>,
    by_key: HashMap<Key, u64>,
    /// The tracked ones written and not seen since, as (seen, number):
    /// the first is the one forgotten to make room.
    clean: BTreeSet<(u64, u64)>,
    tick: u64,
    dropped: u64,
}

impl Pending {
    /// Marks happening `id` as waiting to be written.
    fn dirty(&mut self, id: u64) {
        if let Some(t) = self.tracked.get_mut(&id) {
            if !t.dirty {
                self.clean.remove(&(t.seen, id));
                t.dirty = true;
            }
        }
    }

    /// Forgets happening `id`.
    fn forget(&mut self, id: u64) {
        if let Some(t) = self.tracked.remove(&id) {
            self.clean.remove(&(t.seen, id));
            self.by_key.remove(&t.key);
        }
    }
}

/// What became of one Event's write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Done,
    /// Deleted meanwhile (or its name taken): write it anew, under a new name.
    Gone,
    /// Refused for good (its namespace is being deleted): forget it.
    Drop,
    /// Try again at the next flush.
    Retry,
}

/// Where components report happenings; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pending: Arc<Mutex<Pending>>,
}

/// A name for a new Event about `about` (as Kubernetes names them).
fn event_name(about: &ObjectReference) -> String {
    let base: String = about.name.chars().take(230).collect();
    format!("{base}.{:016x}", rand::random::<u64>())
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Records that `h` happened to the object (`kind`, `meta`) now.
    pub fn record(&self, kind: Kind, meta: &ObjectMeta, h: Happening) {
        self.record_at(ObjectReference::to(kind, meta), h, Time::now());
    }

    /// Records that `h` happened to `about` at `at`.
    pub fn record_at(&self, about: ObjectReference, h: Happening, at: Time) {
        let message = Event::cut(&h.message);
        let source = EventSource {
            component: h.component.to_string(),
            host: h.host,
        };
        let key = (
            about.clone(),
            h.reason.to_string(),
            h.type_,
            message.clone(),
            source.clone(),
        );
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.tick += 1;
        let tick = p.tick;
        if let Some(id) = p.by_key.get(&key).copied() {
            p.dirty(id);
            if let Some(t) = p.tracked.get_mut(&id) {
                t.event.count = t.event.count.saturating_add(1);
                t.event.last_timestamp = Some(at);
                t.seen = tick;
            }
            return;
        }
        if p.tracked.len() >= TRACKED {
            match p.clean.first().copied() {
                Some((_, oldest)) => p.forget(oldest),
                None => {
                    p.dropped += 1;
                    return;
                }
            }
        }
        let namespace = if about.namespace.is_empty() {
            DEFAULT_NAMESPACE.to_string()
        } else {
            about.namespace.clone()
        };
        let event = Event {
            metadata: ObjectMeta::named(&namespace, &event_name(&about)),
            involved_object: about,
            reason: h.reason.to_string(),
            message,
            type_: h.type_,
            count: 1,
            first_timestamp: Some(at),
            last_timestamp: Some(at),
            source,
        };
        // Numbered by the tick of its first sighting, which no other shares.
        p.by_key.insert(key.clone(), tick);
        p.tracked.insert(
            tick,
            Tracked {
                key,
                event,
                stored: false,
                dirty: true,
                seen: tick,
            },
        );
    }

    /// The Events waiting to be written (new, or counted again), each with
    /// whether it is stored already and its number for
    /// [`Recorder::written`]; they count as written until that says
    /// otherwise.
    fn take_dirty(&self) -> Vec<(Event, bool, u64)> {
        let mut guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let p = &mut *guard;
        let mut batch = Vec::new();
        for (id, t) in p.tracked.iter_mut().filter(|(_, t)| t.dirty) {
            t.dirty = false;
            p.clean.insert((t.seen, *id));
            let was = t.stored;
            t.stored = true;
            batch.push((t.event.clone(), was, *id));
        }
        batch
    }

    /// What became of the write of happening `id`'s Event (`was_stored`:
    /// whether it was an update).
    fn written(&self, id: u64, was_stored: bool, outcome: Written) {
        let mut p = self.pending.lock().unwrap_or_else(|x| x.into_inner());
        match outcome {
            Written::Done => {}
            Written::Drop => p.forget(id),
            Written::Gone => {
                p.dirty(id);
                if let Some(t) = p.tracked.get_mut(&id) {
                    t.stored = false;
                    t.event.metadata.name = event_name(&t.event.involved_object);
                }
            }
            Written::Retry => {
                p.dirty(id);
                if let Some(t) = p.tracked.get_mut(&id) {
                    t.stored = was_stored;
                }
            }
        }
    }

    /// Happenings dropped because too many waited at once.
    pub fn dropped(&self) -> u64 {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .dropped
    }
}

/// Writes what the recorder holds every [`FLUSH`] and sweeps old Events,
/// until `shutdown`.
pub async fn run(
    api: ApiServer,
    recorder: Recorder,
    retention: Retention,
    shutdown: CancellationToken,
) {
    let mut flush = tokio::time::interval(FLUSH);
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = flush.tick() => write(&api, &recorder).await,
            _ = sweep.tick() => {
                if let Err(e) = expire(&api, retention, Time::now()).await {
                    tracing::warn!(error = %e, "cannot delete old events");
                }
            }
        }
    }
}

async fn write(api: &ApiServer, recorder: &Recorder) {
    let batch = recorder.take_dirty();
    if batch.is_empty() {
        return;
    }
    let writes = batch.into_iter().map(|(event, stored, id)| async move {
        let result = if stored {
            api.update(&ME, Object::Event(event)).await
        } else {
            api.create(&ME, Object::Event(event)).await
        };
        (id, stored, result)
    });
    for (id, stored, result) in futures_util::future::join_all(writes).await {
        let outcome = match result {
            Ok(_) => Written::Done,
            Err(e) if stored && e.code == ErrorCode::NotFound => Written::Gone,
            Err(e) if !stored && e.code == ErrorCode::AlreadyExists => Written::Gone,
            // A namespace being deleted takes no new events; nor does a
            // refused one get better by trying again.
            Err(e) if matches!(e.code, ErrorCode::Forbidden | ErrorCode::Invalid) => {
                tracing::debug!(error = %e, "an event was refused; dropping it");
                Written::Drop
            }
            Err(e) => {
                tracing::debug!(error = %e, "writing an event failed; trying again");
                Written::Retry
            }
        };
        recorder.written(id, stored, outcome);
    }
}

/// The Events to delete at `now`: those last seen before the time to
/// live, and the oldest beyond the cap.
pub fn expired<'a>(events: &'a [&'a Event], retention: Retention, now: Time) -> Vec<&'a Event> {
    let ttl = i64::try_from(retention.ttl.as_millis()).unwrap_or(i64::MAX);
    let last = |e: &Event| {
        e.last_timestamp
            .or(e.metadata.creation_timestamp)
            .unwrap_or_default()
    };
    let mut keep: Vec<&Event> = Vec::new();
    let mut out: Vec<&Event> = Vec::new();
    for e in events {
        if now.since(last(e)) >= ttl {
            out.push(e);
        } else {
            keep.push(e);
        }
    }
    if keep.len() > retention.max_events {
        keep.sort_by_key(|e| (last(e), e.metadata.name.clone()));
        let extra = keep.len() - retention.max_events;
        out.extend(keep.into_iter().take(extra));
    }
    out
}

async fn expire(api: &ApiServer, retention: Retention, now: Time) -> Result<(), ApiError> {
    let (_, items) = api
        .store
        .list(Kind::Event, None, &Selector::default())
        .map_err(store_err)?;
    let events: Vec<&Event> = items.iter().filter_map(|o| o.as_kind::<Event>()).collect();
    let old = expired(&events, retention, now);
    if old.is_empty() {
        return Ok(());
    }
    tracing::debug!(count = old.len(), "deleting old events");
    let deletes = old.iter().map(|e| {
        let m = &e.metadata;
        api.delete(&ME, Kind::Event, &m.namespace, &m.name, m.resource_version)
    });
    for r in futures_util::future::join_all(deletes).await {
        unless_lost(r)?;
    }
    Ok(())
}

/// A short name of a module digest, as `get modules` shows it.
fn short_module(digest: &str) -> String {
    module_name(digest).chars().take(19).collect()
}

/// What a pod's change (`old` → `new`) says happened: bindings and
/// scheduling failures (the scheduler's), and what its node reported.
pub fn pod_events(old: &Pod, new: &Pod) -> Vec<Happening> {
    let mut out = Vec::new();
    let (o, n) = (&old.status, &new.status);
    let node = new.spec.node_name.as_deref().unwrap_or_default();
    if old.spec.node_name.is_none() {
        if let Some(node) = &new.spec.node_name {
            out.push(Happening::normal(
                "scheduler",
                "Scheduled",
                format!(
                    "Successfully assigned {}/{} to {node}",
                    new.metadata.namespace, new.metadata.name
                ),
            ));
        }
    }
    let unschedulable = |s: &flotilla_api::objects::PodStatus| {
        s.condition(condition::POD_SCHEDULED)
            .filter(|c| !c.status)
            .map(|c| c.message.clone())
    };
    if let Some(why) = unschedulable(n) {
        if unschedulable(o).as_ref() != Some(&why) || o.nominated_node_name != n.nominated_node_name
        {
            out.push(Happening::warning("scheduler", "FailedScheduling", why));
        }
    }
    if node.is_empty() {
        return out;
    }
    let reason_now = |r: &str| n.reason == r && o.reason != r;
    if reason_now("Preparing") {
        out.push(
            Happening::normal(
                "node",
                "Pulling",
                format!(
                    "fetching and compiling module {}",
                    short_module(&new.spec.module)
                ),
            )
            .on(node),
        );
    }
    let module_ready = |s: &flotilla_api::objects::PodStatus| {
        s.condition(condition::MODULE_READY)
            .is_some_and(|c| c.status)
    };
    if module_ready(n) && !module_ready(o) {
        out.push(
            Happening::normal(
                "node",
                "Pulled",
                format!("module {} is ready", short_module(&new.spec.module)),
            )
            .on(node),
        );
    }
    if [
        "ModuleBackOff",
        "InvalidModule",
        "ConfigMapNotFound",
        "SecretNotFound",
        "CreateContainerConfigError",
    ]
    .iter()
    .any(|r| reason_now(r))
    {
        out.push(Happening::warning("node", "Failed", n.message.clone()).on(node));
    }
    let refused =
        |s: &flotilla_api::objects::PodStatus| s.network_refusals.as_ref().map_or(0, |r| r.count);
    if let Some(r) = n
        .network_refusals
        .as_ref()
        .filter(|_| refused(n) > refused(o))
    {
        out.push(
            Happening::warning(
                "node",
                "NetworkRefused",
                format!("refused {}: not in the pod's spec.network", r.last),
            )
            .on(node),
        );
    }
    let restarted = n.restart_count > o.restart_count;
    // Each run: the first (the pod turns Running, even if it has already
    // crashed by the time the node reports), and each restart.
    let started = (n.phase == PodPhase::Running && o.phase != PodPhase::Running) || restarted;
    if started {
        out.push(Happening::normal("node", "Started", "started the program".into()).on(node));
    }
    let oom = |s: &flotilla_api::objects::PodStatus| {
        s.reason == "OOMKilled" || s.message.contains("OOMKilled")
    };
    if oom(n) && (!oom(o) || restarted || n.phase != o.phase) {
        out.push(
            Happening::warning(
                "node",
                "OOMKilled",
                "the program went over its memory limit and was stopped".into(),
            )
            .on(node),
        );
    }
    // Probes: a failed liveness or startup probe ends the run as
    // `Unhealthy`; a failed readiness probe turns Ready false.
    let unhealthy_run = |s: &flotilla_api::objects::PodStatus| {
        s.reason == "CrashLoopBackOff" && s.message.contains("(last run: Unhealthy: ")
    };
    if unhealthy_run(n) && (!unhealthy_run(o) || restarted) {
        let why = n
            .message
            .split_once("(last run: Unhealthy: ")
            .map(|(_, w)| w.trim_end_matches(')'))
            .unwrap_or_default();
        out.push(
            Happening::warning(
                "node",
                "Unhealthy",
                format!("{why}; restarting the program"),
            )
            .on(node),
        );
    }
    let unready = |s: &flotilla_api::objects::PodStatus| {
        s.condition(condition::READY)
            .filter(|c| !c.status && c.message.starts_with("readiness probe failed"))
            .map(|c| c.message.clone())
    };
    if let Some(why) = unready(n).filter(|w| unready(o).as_ref() != Some(w)) {
        out.push(Happening::warning("node", "Unhealthy", why).on(node));
    }
    if n.reason == "CrashLoopBackOff" && (o.reason != "CrashLoopBackOff" || restarted) {
        out.push(
            Happening::warning(
                "node",
                "BackOff",
                "back-off restarting the failed program".into(),
            )
            .on(node),
        );
    }
    if n.phase != o.phase {
        match n.phase {
            PodPhase::Succeeded => out.push(
                Happening::normal(
                    "node",
                    "Completed",
                    "the program ended with exit code 0".into(),
                )
                .on(node),
            ),
            PodPhase::Failed if n.reason != "OOMKilled" => {
                let what = if n.message.is_empty() {
                    n.reason.clone()
                } else {
                    format!("{}: {}", n.reason, n.message)
                };
                out.push(Happening::warning("node", "Failed", what).on(node));
            }
            _ => {}
        }
    }
    out
}

/// What a node's change says happened: it became ready, or not.
pub fn node_events(old: &Node, new: &Node) -> Vec<Happening> {
    let (o, n) = (old.status.ready, new.status.ready);
    if o == n {
        return Vec::new();
    }
    let name = &new.metadata.name;
    match n {
        ReadyState::Ready => vec![Happening::normal(
            "node-lifecycle",
            "NodeReady",
            format!("node {name} is now Ready"),
        )],
        ReadyState::NotReady => vec![Happening::warning(
            "node-lifecycle",
            "NodeNotReady",
            format!("node {name} is now NotReady: it stopped sending heartbeats"),
        )],
        _ => Vec::new(),
    }
}

/// Turns the cache's pod and node changes into Events until `shutdown`.
pub async fn observe(cache: Cache, recorder: Recorder, shutdown: CancellationToken) {
    let mut changes = cache.subscribe();
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = changes.recv() => c,
        };
        match change {
            Ok(Change::Event {
                old: Some(old),
                new,
                kind: flotilla_api::protocol::EventType::Modified,
            }) => match (&*old, &*new) {
                (Object::Pod(o), Object::Pod(n)) => {
                    for h in pod_events(o, n) {
                        recorder.record(Kind::Pod, &n.metadata, h);
                    }
                }
                (Object::Node(o), Object::Node(n)) => {
                    for h in node_events(o, n) {
                        recorder.record(Kind::Node, &n.metadata, h);
                    }
                }
                _ => {}
            },
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::objects::PodCondition;

    fn pod() -> Pod {
        let mut p = Pod {
            metadata: ObjectMeta::named("default", "web"),
            ..Pod::default()
        };
        p.metadata.uid = "pod-uid".into();
        p.spec.module = format!("sha256:{}", "a".repeat(64));
        p
    }

    fn reasons(h: &[Happening]) -> Vec<&str> {
        h.iter().map(|h| h.reason).collect()
    }

    #[test]
    fn failing_probes_read_as_unhealthy() {
        let mut running = pod();
        running.spec.node_name = Some("n1".into());
        running.status.phase = PodPhase::Running;
        let mut unready = running.clone();
        unready.status.set_condition(PodCondition {
            type_: condition::READY.into(),
            status: false,
            reason: "ReadinessProbeFailed".into(),
            message: "readiness probe failed: GET /healthz answered 503".into(),
            ..PodCondition::default()
        });
        let got = pod_events(&running, &unready);
        assert_eq!(reasons(&got), ["Unhealthy"]);
        assert_eq!(
            got[0].message,
            "readiness probe failed: GET /healthz answered 503"
        );
        assert!(pod_events(&unready, &unready).is_empty());
        let mut restarting = running.clone();
        restarting.status.reason = "CrashLoopBackOff".into();
        restarting.status.message = "back-off 10s restarting pod (last run: Unhealthy: liveness probe failed 3 times: GET /healthz answered 503)".into();
        restarting.status.restart_count = 1;
        let got = pod_events(&running, &restarting);
        assert!(reasons(&got).contains(&"Unhealthy"), "{got:?}");
        let h = got
            .iter()
            .find(|h| h.reason == "Unhealthy")
            .expect("unhealthy");
        assert_eq!(
            h.message,
            "liveness probe failed 3 times: GET /healthz answered 503; restarting the program"
        );
    }

    #[test]
    fn a_pods_life_reads_as_events() {
        let pending = pod();
        let mut bound = pending.clone();
        bound.spec.node_name = Some("n1".into());
        let got = pod_events(&pending, &bound);
        assert_eq!(reasons(&got), ["Scheduled"]);
        assert_eq!(got[0].message, "Successfully assigned default/web to n1");

        let mut preparing = bound.clone();
        preparing.status.reason = "Preparing".into();
        assert_eq!(reasons(&pod_events(&bound, &preparing)), ["Pulling"]);

        let mut running = preparing.clone();
        running.status.reason.clear();
        running.status.phase = PodPhase::Running;
        running.status.set_condition(PodCondition {
            type_: condition::MODULE_READY.into(),
            status: true,
            ..PodCondition::default()
        });
        let got = pod_events(&preparing, &running);
        assert_eq!(reasons(&got), ["Pulled", "Started"]);
        assert!(got.iter().all(|h| h.host == "n1" && h.component == "node"));
        assert!(
            pod_events(&running, &running).is_empty(),
            "no change, no event"
        );

        // A crash, then a restart: BackOff, then Started again.
        let mut backoff = running.clone();
        backoff.status.reason = "CrashLoopBackOff".into();
        backoff.status.message = "back-off 10s restarting pod (last run: exit code 1)".into();
        backoff.status.restart_count = 1;
        let got = pod_events(&running, &backoff);
        assert_eq!(reasons(&got), ["Started", "BackOff"]);
        assert_eq!(got[1].type_, EventType::Warning);
        let mut again = backoff.clone();
        again.status.reason.clear();
        again.status.message.clear();
        assert!(
            pod_events(&backoff, &again).is_empty(),
            "the run was counted"
        );

        // Killed for its memory, and restarted.
        let mut oom = again.clone();
        oom.status.reason = "CrashLoopBackOff".into();
        oom.status.message = "back-off 20s restarting pod (last run: OOMKilled: over 64Mi)".into();
        oom.status.restart_count = 2;
        assert_eq!(
            reasons(&pod_events(&again, &oom)),
            ["Started", "OOMKilled", "BackOff"]
        );

        let mut done = again.clone();
        done.status.phase = PodPhase::Succeeded;
        done.status.reason = "Completed".into();
        assert_eq!(reasons(&pod_events(&again, &done)), ["Completed"]);
        let mut failed = again.clone();
        failed.status.phase = PodPhase::Failed;
        failed.status.reason = "Error".into();
        failed.status.message = "exit code 3".into();
        let got = pod_events(&again, &failed);
        assert_eq!(reasons(&got), ["Failed"]);
        assert_eq!(got[0].message, "Error: exit code 3");
    }

    #[test]
    fn network_refusals_and_missing_data_read_as_warnings() {
        let mut bound = pod();
        bound.spec.node_name = Some("n1".into());
        let mut waiting = bound.clone();
        waiting.status.reason = "SecretNotFound".into();
        waiting.status.message = "secret \"db\" not found".into();
        assert_eq!(reasons(&pod_events(&bound, &waiting)), ["Failed"]);
        assert!(pod_events(&waiting, &waiting).is_empty());
        let mut refused = bound.clone();
        refused.status.network_refusals = Some(flotilla_api::objects::network::NetworkRefusals {
            count: 3,
            last: "TCP connect to 127.0.0.1:9".into(),
            last_time: None,
        });
        let got = pod_events(&bound, &refused);
        assert_eq!(reasons(&got), ["NetworkRefused"]);
        assert!(
            got[0].message.contains("TCP connect to 127.0.0.1:9"),
            "{}",
            got[0].message
        );
        assert!(pod_events(&refused, &refused).is_empty());
    }

    #[test]
    fn scheduling_failures_are_told_once_per_reason() {
        let p = pod();
        let mut waiting = p.clone();
        waiting.status.set_condition(PodCondition {
            type_: condition::POD_SCHEDULED.into(),
            status: false,
            message: "0/3 nodes are available: 3 Insufficient memory".into(),
            ..PodCondition::default()
        });
        let got = pod_events(&p, &waiting);
        assert_eq!(reasons(&got), ["FailedScheduling"]);
        assert_eq!(got[0].component, "scheduler");
        assert!(pod_events(&waiting, &waiting).is_empty());
    }

    #[test]
    fn nodes_going_and_coming_back() {
        let mut ready = Node::default();
        ready.metadata.name = "n1".into();
        ready.status.ready = ReadyState::Ready;
        let mut lost = ready.clone();
        lost.status.ready = ReadyState::NotReady;
        let got = node_events(&ready, &lost);
        assert_eq!(reasons(&got), ["NodeNotReady"]);
        assert_eq!(got[0].type_, EventType::Warning);
        assert_eq!(reasons(&node_events(&lost, &ready)), ["NodeReady"]);
        assert!(node_events(&ready, &ready).is_empty());
    }

    #[test]
    fn the_same_happening_is_counted_not_repeated() {
        let r = Recorder::new();
        let p = pod();
        let backoff = || {
            Happening::warning(
                "node",
                "BackOff",
                "back-off restarting the failed program".into(),
            )
            .on("n1")
        };
        r.record_at(
            ObjectReference::to(Kind::Pod, &p.metadata),
            backoff(),
            Time(1_000),
        );
        r.record_at(
            ObjectReference::to(Kind::Pod, &p.metadata),
            backoff(),
            Time(5_000),
        );
        let batch = r.take_dirty();
        assert_eq!(batch.len(), 1);
        let (e, stored, _) = &batch[0];
        assert!(!stored);
        assert_eq!(e.count, 2);
        assert_eq!(e.first_timestamp, Some(Time(1_000)));
        assert_eq!(e.last_timestamp, Some(Time(5_000)));
        assert_eq!(e.metadata.namespace, "default");
        assert!(e.metadata.name.starts_with("web."));
        assert!(
            flotilla_api::manifest::validate(&Object::Event(e.clone())).is_empty(),
            "a valid object"
        );
        // Nothing new: nothing to write.
        assert!(r.take_dirty().is_empty());
        // Once more: an update of the same Event.
        r.record_at(
            ObjectReference::to(Kind::Pod, &p.metadata),
            backoff(),
            Time(9_000),
        );
        let batch = r.take_dirty();
        assert_eq!((batch[0].0.count, batch[0].1), (3, true));
        assert_eq!(batch[0].0.metadata.name, e.metadata.name);
        // Another message is another Event.
        r.record_at(
            ObjectReference::to(Kind::Pod, &p.metadata),
            Happening::normal("node", "Started", "started the program".into()).on("n1"),
            Time(9_500),
        );
        assert_eq!(r.take_dirty().len(), 1);
        // Deleted meanwhile: written again as a new Event.
        let name = batch[0].0.metadata.name.clone();
        r.written(batch[0].2, true, Written::Gone);
        let batch = r.take_dirty();
        assert_eq!(batch.len(), 1);
        assert!(!batch[0].1);
        assert_ne!(batch[0].0.metadata.name, name);
    }

    #[test]
    fn the_recorder_holds_a_bounded_number() {
        let r = Recorder::new();
        let p = pod();
        for i in 0..TRACKED + 10 {
            r.record_at(
                ObjectReference::to(Kind::Pod, &p.metadata),
                Happening::normal("node", "Started", format!("run {i}")),
                Time(1),
            );
        }
        assert_eq!(r.dropped(), 10, "all waiting: the newest are dropped");
        assert_eq!(r.take_dirty().len(), TRACKED);
        // Written ones make room.
        r.record_at(
            ObjectReference::to(Kind::Pod, &p.metadata),
            Happening::normal("node", "Started", "one more".into()),
            Time(2),
        );
        assert_eq!(r.take_dirty().len(), 1);
        assert_eq!(r.dropped(), 10);
    }

    #[test]
    fn the_least_recently_seen_written_happening_is_forgotten_first() {
        let r = Recorder::new();
        let p = pod();
        let record = |what: &str, at: i64| {
            r.record_at(
                ObjectReference::to(Kind::Pod, &p.metadata),
                Happening::normal("node", "Started", what.to_string()),
                Time(at),
            )
        };
        for i in 0..TRACKED {
            record(&format!("run {i}"), 1);
        }
        let first = r.take_dirty();
        assert_eq!(first.len(), TRACKED);
        // run 0 is seen again (so run 1 is now the least recently seen);
        // a new happening makes room by forgetting run 1.
        record("run 0", 2);
        record("new", 2);
        let batch = r.take_dirty();
        let mut counted: Vec<(String, u32, bool)> = batch
            .iter()
            .map(|(e, stored, _)| (e.message.clone(), e.count, *stored))
            .collect();
        counted.sort();
        assert_eq!(
            counted,
            [
                ("new".to_string(), 1, false),
                ("run 0".to_string(), 2, true)
            ]
        );
        assert_eq!(r.dropped(), 0);
        // run 1 was forgotten: seen again, it is a new Event (and run 3,
        // the least recently seen by then, makes room); run 2 was not.
        record("run 2", 3);
        record("run 1", 3);
        let mut again: Vec<(String, bool)> = r
            .take_dirty()
            .into_iter()
            .map(|(e, stored, _)| (e.message, stored))
            .collect();
        again.sort();
        assert_eq!(
            again,
            [("run 1".to_string(), false), ("run 2".to_string(), true)]
        );
        // A write refused for good forgets the happening; one to retry
        // waits to be written again.
        let (_, _, id) = first
            .iter()
            .find(|(e, _, _)| e.message == "run 10")
            .expect("run 10")
            .clone();
        r.written(id, false, Written::Retry);
        let retried = r.take_dirty();
        assert_eq!(retried.len(), 1);
        assert_eq!(
            (retried[0].0.message.as_str(), retried[0].1),
            ("run 10", false)
        );
        r.written(id, false, Written::Drop);
        record("run 10", 4);
        assert!(!r.take_dirty()[0].1, "dropped: a new Event");
    }

    #[test]
    fn old_events_and_those_beyond_the_cap_expire() {
        let event = |name: &str, last: i64| Event {
            metadata: ObjectMeta::named("default", name),
            last_timestamp: Some(Time(last)),
            ..Event::default()
        };
        let all = [
            event("a", 0),
            event("b", 3_000_000),
            event("c", 3_500_000),
            event("d", 3_600_000),
        ];
        let refs: Vec<&Event> = all.iter().collect();
        let r = Retention {
            ttl: Duration::from_secs(3600),
            max_events: 10,
        };
        let names =
            |v: Vec<&Event>| -> Vec<String> { v.iter().map(|e| e.metadata.name.clone()).collect() };
        assert_eq!(names(expired(&refs, r, Time(3_600_000))), ["a"]);
        let capped = Retention { max_events: 2, ..r };
        assert_eq!(
            names(expired(&refs, capped, Time(3_600_000))),
            ["a", "b"],
            "past the cap, the oldest go"
        );
    }
}
