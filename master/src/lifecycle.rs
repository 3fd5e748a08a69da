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

use crate::apiserver::{ApiServer, Caller};
use crate::store::StoreError;
use flotilla_api::objects::{condition, PodCondition, PodPhase, PodStatus, ReadyState};
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::selector::Selector;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object, Pod};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
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

/// How often nodes are re-examined; bounds how late past the grace period a node turns NotReady.
const TICK: Duration = Duration::from_millis(500);

/// Watches heartbeats and writes transitions until `shutdown` fires.
pub async fn run(api: ApiServer, grace: Duration, shutdown: CancellationToken) {
    let heartbeats = api.heartbeats.clone();
    // Heartbeats went to whichever master each node was connected to; a
    // master that just became leader has heard from nodes only since then
    // (through the other masters' relays): count from the start of its term.
    let leading_since = Instant::now();
    loop {
        if let Err(e) = examine(&api, grace, leading_since).await {
            tracing::warn!(error = %e, "node lifecycle pass failed");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
            _ = heartbeats.changed.notified() => {}
        }
    }
}

/// Why a pass stopped.
#[derive(Debug, thiserror::Error)]
enum PassError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Whether a refused write only lost a race (the next pass looks again).
fn lost_race(e: &ApiError) -> bool {
    matches!(e.code, ErrorCode::Conflict | ErrorCode::NotFound)
}

const ME: Caller = Caller::Controller("node-lifecycle");

async fn examine(
    api: &ApiServer,
    grace: Duration,
    leading_since: Instant,
) -> Result<(), PassError> {
    let heartbeats = &api.heartbeats;
    let (_, nodes) = api.store.list(Kind::Node, None, &Selector::default())?;
    let now = Instant::now();
    // Nodes NotReady after this pass, whose pods must show Unknown.
    let mut lost = Vec::new();
    for obj in nodes {
        let Object::Node(mut node) = obj else {
            continue;
        };
        let silence = heartbeats
            .silence(&node.metadata.name, now)
            .min(now.saturating_duration_since(leading_since));
        let registered = !node.status.node_info.architecture.is_empty();
        let Some(next) = transition(node.status.ready, silence, grace, registered) else {
            if node.status.ready == ReadyState::NotReady {
                lost.push(node.metadata.name);
            }
            continue;
        };
        let rv = node.metadata.resource_version;
        let at = Time::now();
        node.status.ready = next;
        node.status.last_transition_time = Some(at);
        if next == ReadyState::Ready {
            node.status.reason = "NodeReady".into();
            node.status.message = "the node's agent is sending heartbeats".into();
            node.status.last_heartbeat_time = Some(at);
        } else if next == ReadyState::Unknown {
            node.status.reason = "NodeRegistering".into();
            node.status.message = "the node has joined and has not registered yet".into();
        } else {
            node.status.reason = "NodeStatusUnknown".into();
            node.status.message = format!(
                "no heartbeat for {}s (grace period {}s)",
                silence.as_secs(),
                grace.as_secs()
            );
        }
        tracing::info!(node = %node.metadata.name, state = %next, "node transition");
        let name = node.metadata.name.clone();
        match api.update_status_at(&ME, Object::Node(node), rv).await {
            Ok(_) if next == ReadyState::NotReady => lost.push(name),
            Ok(_) => {}
            Err(e) if lost_race(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    mark_pods_lost(api, &lost).await
}

/// Writes the `Unknown` status of every pod bound to a `lost` node that does
/// not show it yet. Level-triggered: a write that lost a race (or a pass
/// that failed) is made again on the next pass, and a pod already marked
/// costs nothing.
async fn mark_pods_lost(api: &ApiServer, lost: &[String]) -> Result<(), PassError> {
    if lost.is_empty() {
        return Ok(());
    }
    let (_, pods) = api.store.list(Kind::Pod, None, &Selector::default())?;
    let now = Time::now();
    for obj in pods {
        let Object::Pod(mut pod) = obj else {
            continue;
        };
        let Some(status) = lost.iter().find_map(|node| lost_status(&pod, node, now)) else {
            continue;
        };
        let rv = pod.metadata.resource_version;
        tracing::info!(
            pod = %format!("{}/{}", pod.metadata.namespace, pod.metadata.name),
            node = pod.spec.node_name.as_deref().unwrap_or_default(),
            "node not ready: pod status Unknown"
        );
        pod.status = status;
        match api.update_status_at(&ME, Object::Pod(pod), rv).await {
            Ok(_) => {}
            // Changed meanwhile (a late report from the node) or deleted: the next pass looks again.
            Err(e) if lost_race(&e) => {}
            Err(e) => return Err(e.into()),
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
    fn unknown_nodes_count_from_master_start() {
        let hb = Heartbeats::new();
        let later = Instant::now() + Duration::from_secs(3);
        assert!(hb.silence("n1", later) >= Duration::from_secs(3));
        hb.beat("n1");
        assert!(hb.silence("n1", Instant::now()) < Duration::from_secs(1));
    }
}
