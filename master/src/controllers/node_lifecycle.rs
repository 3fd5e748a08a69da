//! Node lifecycle: a node whose heartbeats stop is NotReady after a grace
//! period, and Ready again once they resume. Heartbeats are kept in memory
//! (they are too frequent to be writes); only transitions reach the store,
//! through raft, from the leader.
//! While a node is NotReady, the pods bound to it that had not ended show
//! phase `Unknown` (reason `NodeLost`, condition Ready false), as the
//! Kubernetes node controller marks them: their programs may still run, but
//! nobody can tell. The node restores their real status when it is back
//! (it reports again any pod the master shows as Unknown).
//! A master that just started, or just became the leader, counts every node
//! as seen at that moment, so a restart or a change of leader does not turn
//! the whole cluster NotReady. Followers relay the heartbeats they receive to
//! the leader.

use crate::apiserver::{lost_race, ApiServer, Caller};
use crate::controllers::runtime::{Cache, Change, WorkQueue};
use flotilla_api::objects::{condition, PodCondition, PodPhase, PodStatus, ReadyState};
use flotilla_api::protocol::ApiError;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Node, Object, Pod};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Last heartbeat per node, shared with the API service.
#[derive(Clone, Debug)]
pub struct Heartbeats {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    started: Instant,
    changed: Arc<tokio::sync::Notify>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeats {
    pub fn new() -> Heartbeats {
        Heartbeats {
            seen: Arc::default(),
            started: Instant::now(),
            changed: Arc::default(),
        }
    }

    /// Records a heartbeat from `node`.
    pub fn beat(&self, node: &str) {
        let first = {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.insert(node.to_string(), Instant::now()).is_none()
        };
        if first {
            self.changed.notify_one();
        }
    }

    /// How long `node` has been silent (since this master started, if never heard).
    pub fn silence(&self, node: &str, now: Instant) -> Duration {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        now.saturating_duration_since(seen.get(node).copied().unwrap_or(self.started))
    }
}

/// The transition a node should make, if any, given how long it has been
/// silent and whether it has registered (reported its capacity and
/// architecture). A node that joined but has not registered yet stays
/// `Unknown`: its Node exists from the join on, to hold its name, and
/// nothing may be placed on it before the scheduler knows what it is.
pub fn transition(
    current: ReadyState,
    silence: Duration,
    grace: Duration,
    registered: bool,
) -> Option<ReadyState> {
    let want = if silence > grace {
        ReadyState::NotReady
    } else if registered {
        ReadyState::Ready
    } else {
        ReadyState::Unknown
    };
    (want != current).then_some(want)
}

/// The reason of pods whose node is not ready.
pub const NODE_LOST: &str = "NodeLost";

/// The status `pod` shows while `node`, the node it is bound to, is not
/// ready; None if the pod is not bound there, has ended, or already shows it.
/// Everything the node reported stays (restarts, exit code, times) except
/// the phase, the reason and the Ready condition.
pub fn lost_status(pod: &Pod, node: &str, now: Time) -> Option<PodStatus> {
    let bound_here = pod.spec.node_name.as_deref() == Some(node);
    let st = &pod.status;
    if !bound_here || st.phase.is_terminal() || st.phase == PodPhase::Unknown {
        return None;
    }
    let mut status = st.clone();
    status.phase = PodPhase::Unknown;
    status.reason = NODE_LOST.into();
    status.message = format!("node {node} is not ready; its pods may still run");
    status.set_condition(PodCondition {
        type_: condition::READY.into(),
        status: false,
        last_transition_time: Some(now),
        reason: NODE_LOST.into(),
        message: status.message.clone(),
    });
    Some(status)
}

/// How often every node is examined; bounds how late past the grace period
/// a node turns NotReady.
const TICK: Duration = Duration::from_millis(500);

/// What node lifecycle writes for one node: its new readiness (if it
/// changes) and the status of each of its pods that must show `Unknown`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub node: Option<Node>,
    pub lost_pods: Vec<Pod>,
}

/// Whether [`plan`] would write anything for `node` (pure, and cheap for
/// the usual node, which is Ready and heard from: nothing is cloned and its
/// pods are looked at only while it is NotReady).
pub fn due<'a>(
    node: &Node,
    pods: impl IntoIterator<Item = &'a Pod>,
    silence: Duration,
    grace: Duration,
    now: Time,
) -> bool {
    let registered = !node.status.node_info.architecture.is_empty();
    match transition(node.status.ready, silence, grace, registered) {
        Some(_) => true,
        None => {
            node.status.ready == ReadyState::NotReady
                && pods
                    .into_iter()
                    .any(|p| lost_status(p, &node.metadata.name, now).is_some())
        }
    }
}

/// The plan for `node` (pure): its transition given how long it has been
/// silent, and, while it is (or becomes) NotReady, the pods bound to it
/// (`pods`) that do not show `Unknown` yet.
pub fn plan(node: &Node, pods: &[&Pod], silence: Duration, grace: Duration, now: Time) -> Plan {
    let registered = !node.status.node_info.architecture.is_empty();
    let next = transition(node.status.ready, silence, grace, registered);
    let changed = next.map(|next| {
        let mut node = node.clone();
        node.status.ready = next;
        node.status.last_transition_time = Some(now);
        let (reason, message) = match next {
            ReadyState::Ready => {
                node.status.last_heartbeat_time = Some(now);
                (
                    "NodeReady",
                    "the node's agent is sending heartbeats".to_string(),
                )
            }
            ReadyState::Unknown => (
                "NodeRegistering",
                "the node has joined and has not registered yet".to_string(),
            ),
            ReadyState::NotReady => (
                "NodeStatusUnknown",
                format!(
                    "no heartbeat for {}s (grace period {}s)",
                    silence.as_secs(),
                    grace.as_secs()
                ),
            ),
        };
        node.status.reason = reason.into();
        node.status.message = message;
        node
    });
    let lost = next.unwrap_or(node.status.ready) == ReadyState::NotReady;
    let lost_pods = if lost {
        pods.iter()
            .filter_map(|p| {
                lost_status(p, &node.metadata.name, now).map(|status| Pod {
                    status,
                    ..(*p).clone()
                })
            })
            .collect()
    } else {
        Vec::new()
    };
    Plan {
        node: changed,
        lost_pods,
    }
}

const ME: Caller = Caller::Controller("node-lifecycle");

/// Examines nodes (every [`TICK`], when a node is first heard of, when a
/// node or one of its pods changes) and writes their transitions through
/// the API core, until `shutdown` fires. Reads the shared `cache` (nodes
/// and pods).
pub async fn run(api: ApiServer, cache: Cache, grace: Duration, shutdown: CancellationToken) {
    let heartbeats = api.heartbeats.clone();
    // Heartbeats went to whichever master each node was connected to; a
    // master that just became leader has heard from nodes only since then
    // (through the other masters' relays): count from the start of its term.
    let leading_since = Instant::now();
    let queue = WorkQueue::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut changes = cache.subscribe();
    cache.synced().await;
    let silence = |name: &str, now: Instant| {
        heartbeats
            .silence(name, now)
            .min(now.saturating_duration_since(leading_since))
    };
    // Every node is looked at each tick, in place: only those with
    // something to write are queued (at thousands of nodes, queueing each
    // one to find nothing cost a twentieth of the leader's CPU while pods
    // were being placed).
    let enqueue_due = |queue: &WorkQueue| {
        let (now, wall) = (Instant::now(), Time::now());
        let names: Vec<String> = {
            let c = cache.read();
            c.of_kind(Kind::Node)
                .filter_map(|o| o.as_node())
                .filter(|n| {
                    let name = &n.metadata.name;
                    let pods = c.on_node(name).filter_map(|o| o.as_pod());
                    due(n, pods, silence(name, now), grace, wall)
                })
                .map(|n| n.metadata.name.clone())
                .collect()
        };
        for n in names {
            queue.add(n);
        }
    };
    // A pod's change matters here only on a node that is not Ready (it may
    // have to show Unknown); a Ready node's transitions come with the tick.
    let on_not_ready_node = |node: &str| {
        let key = flotilla_api::objects::object_key(Kind::Node, "", node);
        cache
            .read()
            .get(&key)
            .and_then(|o| o.as_node())
            .is_some_and(|n| n.status.ready != ReadyState::Ready)
    };
    let watcher = async {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = tick.tick() => enqueue_due(&queue),
                _ = heartbeats.changed.notified() => enqueue_due(&queue),
                change = changes.recv() => match change {
                    Ok(Change::Event { new, .. }) => match &*new {
                        Object::Node(n) => queue.add(n.metadata.name.clone()),
                        Object::Pod(p) => if let Some(n) = &p.spec.node_name {
                            if on_not_ready_node(n) {
                                queue.add(n.clone());
                            }
                        },
                        _ => {}
                    },
                    Ok(Change::Relisted) | Err(broadcast::error::RecvError::Lagged(_)) => enqueue_due(&queue),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    };
    let worker = async {
        while let Some(name) = queue.next().await {
            let planned = {
                let c = cache.read();
                let key = flotilla_api::objects::object_key(Kind::Node, "", &name);
                c.get(&key).and_then(|o| o.as_node()).map(|node| {
                    let pods: Vec<&Pod> = c.on_node(&name).filter_map(|o| o.as_pod()).collect();
                    plan(
                        node,
                        &pods,
                        silence(&name, Instant::now()),
                        grace,
                        Time::now(),
                    )
                })
            };
            if let Some(p) = planned {
                match execute(&api, p).await {
                    Ok(()) => queue.forget(&name),
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "node lifecycle write failed; retrying");
                        queue.retry(&name);
                    }
                }
            }
            queue.done(&name);
        }
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = watcher => {}
        _ = worker => {}
    }
    queue.shut_down();
}

/// Writes a plan: the node's transition, then its lost pods (each a
/// compare-and-swap on the version the plan was made from).
async fn execute(api: &ApiServer, plan: Plan) -> Result<(), ApiError> {
    if let Some(node) = plan.node {
        let rv = node.metadata.resource_version;
        tracing::info!(node = %node.metadata.name, state = %node.status.ready, "node transition");
        match api.update_status_at(&ME, Object::Node(node), rv).await {
            Ok(_) => {}
            // The node changed meanwhile: planned again from the new version.
            Err(e) if lost_race(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    for pod in plan.lost_pods {
        let rv = pod.metadata.resource_version;
        tracing::info!(
            pod = %format!("{}/{}", pod.metadata.namespace, pod.metadata.name),
            node = pod.spec.node_name.as_deref().unwrap_or_default(),
            "node not ready: pod status Unknown"
        );
        match api.update_status_at(&ME, Object::Pod(pod), rv).await {
            // Changed meanwhile (a late report from the node) or deleted: planned again.
            Ok(_) => {}
            Err(e) if lost_race(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let g = Duration::from_secs(10);
        let s = Duration::from_secs;
        let cases = [
            (ReadyState::Unknown, s(0), true, Some(ReadyState::Ready)),
            (ReadyState::Ready, s(5), true, None),
            (ReadyState::Ready, s(10), true, None),
            (ReadyState::Ready, s(11), true, Some(ReadyState::NotReady)),
            (ReadyState::NotReady, s(30), true, None),
            (ReadyState::NotReady, s(1), true, Some(ReadyState::Ready)),
            (ReadyState::Unknown, s(60), true, Some(ReadyState::NotReady)),
            // Joined, not registered yet: never Ready, lost after the grace period.
            (ReadyState::Unknown, s(0), false, None),
            (
                ReadyState::Unknown,
                s(11),
                false,
                Some(ReadyState::NotReady),
            ),
            (ReadyState::NotReady, s(1), false, Some(ReadyState::Unknown)),
        ];
        for (cur, silence, registered, want) in cases {
            assert_eq!(
                transition(cur, silence, g, registered),
                want,
                "{cur:?} {silence:?} {registered}"
            );
        }
    }

    #[test]
    fn pods_of_a_lost_node_show_unknown() {
        let pod = |node: Option<&str>, phase: PodPhase, reason: &str| {
            let mut p = Pod::default();
            p.spec.node_name = node.map(String::from);
            p.status.phase = phase;
            p.status.reason = reason.into();
            p.status.restart_count = 4;
            p.status.set_condition(PodCondition {
                type_: condition::READY.into(),
                status: true,
                ..PodCondition::default()
            });
            p
        };
        // (pod, marked Unknown while n1 is not ready)
        let cases = [
            (pod(Some("n1"), PodPhase::Running, ""), true),
            (pod(Some("n1"), PodPhase::Running, "CrashLoopBackOff"), true),
            (pod(Some("n1"), PodPhase::Pending, "ModuleBackOff"), true),
            // Ended pods stay as they ended: nothing of theirs can change.
            (pod(Some("n1"), PodPhase::Succeeded, "Completed"), false),
            (pod(Some("n1"), PodPhase::Failed, "OOMKilled"), false),
            // Already marked: no write.
            (pod(Some("n1"), PodPhase::Unknown, NODE_LOST), false),
            // Elsewhere or unbound: not this node's business.
            (pod(Some("n2"), PodPhase::Running, ""), false),
            (pod(None, PodPhase::Pending, ""), false),
        ];
        for (p, marked) in cases {
            let got = lost_status(&p, "n1", Time(7));
            assert_eq!(got.is_some(), marked, "{:?}", p.status);
            let Some(st) = got else { continue };
            assert_eq!(st.phase, PodPhase::Unknown);
            assert_eq!(st.reason, NODE_LOST);
            assert_eq!(st.message, "node n1 is not ready; its pods may still run");
            assert_eq!(st.restart_count, 4, "what the node reported stays");
            let ready = st.condition(condition::READY).expect("Ready");
            assert!(!ready.status);
            assert_eq!(ready.reason, NODE_LOST);
            assert_eq!(ready.last_transition_time, Some(Time(7)));
        }
    }

    #[test]
    fn plans_table() {
        let g = Duration::from_secs(10);
        let node = |state: ReadyState, registered: bool| {
            let mut n = Node::default();
            n.metadata.name = "n1".into();
            n.status.ready = state;
            if registered {
                n.status.node_info.architecture = "arm64".into();
            }
            n
        };
        let running = {
            let mut p = Pod::default();
            p.metadata.name = "p".into();
            p.spec.node_name = Some("n1".into());
            p.status.phase = PodPhase::Running;
            p
        };
        let marked = Pod {
            status: lost_status(&running, "n1", Time(1)).expect("lost"),
            ..running.clone()
        };
        // (node, its pods, silence, new readiness, pods marked Unknown)
        let cases = [
            (node(ReadyState::Ready, true), vec![&running], 1, None, 0),
            (
                node(ReadyState::Ready, true),
                vec![&running],
                11,
                Some(ReadyState::NotReady),
                1,
            ),
            (
                node(ReadyState::NotReady, true),
                vec![&running],
                30,
                None,
                1,
            ),
            (node(ReadyState::NotReady, true), vec![&marked], 30, None, 0),
            (
                node(ReadyState::NotReady, true),
                vec![&running],
                1,
                Some(ReadyState::Ready),
                0,
            ),
            (node(ReadyState::Unknown, false), vec![], 1, None, 0),
        ];
        for (i, (n, pods, silence, want, lost)) in cases.into_iter().enumerate() {
            let p = plan(&n, &pods, Duration::from_secs(silence), g, Time(5));
            // What the tick looks at says the same, without making the plan.
            let looked = due(
                &n,
                pods.iter().copied(),
                Duration::from_secs(silence),
                g,
                Time(5),
            );
            assert_eq!(looked, p != Plan::default(), "case {i}: due");
            assert_eq!(p.node.as_ref().map(|n| n.status.ready), want, "case {i}");
            assert_eq!(p.lost_pods.len(), lost, "case {i}");
            if let Some(changed) = &p.node {
                assert_eq!(changed.status.last_transition_time, Some(Time(5)));
                assert!(!changed.status.reason.is_empty());
            }
            for pod in &p.lost_pods {
                assert_eq!(pod.status.phase, PodPhase::Unknown);
            }
        }
    }

    #[test]
    fn unknown_nodes_count_from_master_start() {
        let hb = Heartbeats::new();
        let later = Instant::now() + Duration::from_secs(3);
        assert!(hb.silence("n1", later) >= Duration::from_secs(3));
        hb.beat("n1");
        assert!(hb.silence("n1", Instant::now()) < Duration::from_secs(1));
    }
}
