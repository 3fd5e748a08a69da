//! Node eviction, Kubernetes' taint-based eviction in our shape.
//!
//! - A node that is NotReady gets the taint `node.flotilla.dev/unreachable`
//!   with effect NoExecute (the time it was added is when its pods' clocks
//!   start); a node Ready again loses it. Tainting is rate-limited: nodes
//!   are tainted at [`RATE`] a second, slower ([`SLOW_RATE`]) once more
//!   than [`UNHEALTHY`] of the cluster is unreachable, and not at all when
//!   that happens in a cluster of at most [`SMALL_CLUSTER`] nodes (a
//!   partitioned site, or a master cut off from its nodes, must not empty
//!   the cluster: there would be nowhere to run the pods anyway).
//! - A pod on a node with NoExecute taints (this one, or one an admin set)
//!   is evicted once the taint has been there longer than the pod
//!   tolerates it: at once without a toleration, after `tolerationSeconds`
//!   with one, never with one that has no seconds. Every pod tolerates the
//!   unreachable taint for [`DEFAULT_TOLERATION`] unless it says otherwise.
//! - Evicting a pod that a controller owns deletes it (its owner makes
//!   another elsewhere); a pod nobody owns is kept, marked Failed with
//!   reason `NodeLost`, so that its end is visible. A node that comes back
//!   stops both: its deleted pods are no longer in its list, and it stops a
//!   pod the master shows Failed with reason NodeLost.

use crate::apiserver::{lost_race, ApiServer, Caller};
use crate::controllers::events::Happening;
use crate::controllers::node_lifecycle::NODE_LOST;
use crate::controllers::replicaset::controller_of;
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use flotilla_api::objects::scheduling::TolerationOperator;
use flotilla_api::objects::{
    condition, object_key, PodCondition, PodPhase, ReadyState, Taint, TaintEffect, Toleration,
};
use flotilla_api::protocol::ApiError;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Node, Object, Pod};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

const ME: Caller = Caller::Controller("node-eviction");

/// The taint of a node that is not ready.
pub const UNREACHABLE: &str = "node.flotilla.dev/unreachable";
/// How long a pod stays on an unreachable node unless its tolerations say.
pub const DEFAULT_TOLERATION: Duration = Duration::from_secs(30);
/// Nodes tainted a second while most of the cluster is reachable.
pub const RATE: f64 = 0.1;
/// Nodes tainted a second once more than [`UNHEALTHY`] is unreachable.
pub const SLOW_RATE: f64 = 0.01;
/// The share of unreachable nodes above which eviction slows down.
pub const UNHEALTHY: f64 = 0.55;
/// Clusters of at most this many nodes stop evicting instead of slowing down.
pub const SMALL_CLUSTER: usize = 50;

/// Nodes tainted a second, given how many there are and how many are
/// unreachable (Kubernetes' node eviction rates, per cluster).
pub fn taint_rate(nodes: usize, unreachable: usize) -> f64 {
    if nodes == 0 || (unreachable as f64) / (nodes as f64) <= UNHEALTHY {
        RATE
    } else if nodes <= SMALL_CLUSTER {
        0.0
    } else {
        SLOW_RATE
    }
}

/// The taint `node` should gain (`Some(true)`), lose (`Some(false)`), or
/// neither.
pub fn taint_change(node: &Node) -> Option<bool> {
    let tainted = node.spec.taints.iter().any(|t| t.key == UNREACHABLE);
    match (node.status.ready == ReadyState::NotReady, tainted) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// The unreachable taint, added at `now`.
pub fn unreachable_taint(now: Time) -> Taint {
    Taint {
        key: UNREACHABLE.into(),
        value: String::new(),
        effect: TaintEffect::NoExecute,
        time_added: Some(now),
    }
}

/// When `pod` must leave a node with `taints` (None: it may stay), from
/// the NoExecute taints and the pod's tolerations (with the default one for
/// the unreachable taint if the pod has none for it).
pub fn eviction_time(pod: &Pod, taints: &[Taint], default: Duration) -> Option<Time> {
    let default = Toleration {
        key: UNREACHABLE.into(),
        operator: TolerationOperator::Exists,
        value: String::new(),
        effect: Some(TaintEffect::NoExecute),
        toleration_seconds: Some(i64::try_from(default.as_secs()).unwrap_or(i64::MAX)),
    };
    taints
        .iter()
        .filter(|t| t.effect == TaintEffect::NoExecute)
        .filter_map(|t| {
            let added = t.time_added.unwrap_or_default();
            let mut matching: Vec<&Toleration> = pod
                .spec
                .tolerations
                .iter()
                .filter(|x| x.tolerates(t))
                .collect();
            if matching.is_empty() && default.tolerates(t) {
                matching.push(&default);
            }
            if matching.is_empty() {
                return Some(added);
            }
            // The longest toleration counts; one without seconds is for good.
            let seconds = matching
                .iter()
                .map(|x| x.toleration_seconds)
                .try_fold(0i64, |m, s| s.map(|s| m.max(s.max(0))))?;
            Some(Time(added.0.saturating_add(seconds.saturating_mul(1000))))
        })
        .min()
}

/// What to do with one pod on a tainted node.
#[derive(Debug, Clone, PartialEq)]
pub enum Eviction {
    /// Nothing yet; look again after this long.
    Wait(Duration),
    /// Delete it: its owner replaces it.
    Delete,
    /// Mark it Failed (NodeLost): nobody would replace it.
    Fail,
}

/// The eviction of `pod` at `now` on a node with `taints` (None: it stays).
pub fn plan_pod(pod: &Pod, taints: &[Taint], default: Duration, now: Time) -> Option<Eviction> {
    if pod.status.phase.is_terminal() {
        return None;
    }
    let due = eviction_time(pod, taints, default)?;
    let left = due.since(now);
    Some(if left > 0 {
        Eviction::Wait(Duration::from_millis(left.unsigned_abs()))
    } else if controller_of(&pod.metadata).is_some() {
        Eviction::Delete
    } else {
        Eviction::Fail
    })
}

/// A token bucket for tainting nodes (one token = one node), refilled at
/// the rate of the moment.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn new(now: Instant) -> Bucket {
        Bucket {
            tokens: 1.0,
            at: now,
        }
    }

    /// Takes a token at `rate` (a burst of one), or says how long until one.
    pub fn take(&mut self, rate: f64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * rate).min(1.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate <= 0.0 {
            Err(Duration::from_secs(5))
        } else {
            Err(Duration::from_secs_f64(
                ((1.0 - self.tokens) / rate).clamp(0.01, 300.0),
            ))
        }
    }
}

/// The eviction controller, keyed by node name.
pub struct Evictions {
    pub api: ApiServer,
    pub cache: Cache,
    pub default_toleration: Duration,
    pub bucket: Mutex<Bucket>,
    pub events: crate::controllers::events::Recorder,
}

impl Reconciler for Evictions {
    fn name(&self) -> &'static str {
        "node-eviction"
    }

    fn keys_for(
        &self,
        _state: &CacheState,
        old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    ) {
        match new {
            Object::Node(n) => out.push(n.metadata.name.clone()),
            Object::Pod(p) => {
                let was = old
                    .and_then(Object::as_pod)
                    .and_then(|p| p.spec.node_name.clone());
                out.extend(p.spec.node_name.clone().or(was));
            }
            _ => {}
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        state
            .of_kind(Kind::Node)
            .map(|o| o.meta().name.clone())
            .collect()
    }

    async fn reconcile(&self, name: &str) -> Result<Option<Duration>, ApiError> {
        let now = Time::now();
        let (node, pods, rate) = {
            let state = self.cache.read();
            let Some(node) = state
                .get(&object_key(Kind::Node, "", name))
                .and_then(|o| o.as_node())
            else {
                return Ok(None);
            };
            // Most changes concern nodes with nothing to evict: stop here.
            let no_execute = node
                .spec
                .taints
                .iter()
                .any(|t| t.effect == TaintEffect::NoExecute);
            if !no_execute && taint_change(node).is_none() {
                return Ok(None);
            }
            let nodes: Vec<&Node> = state
                .of_kind(Kind::Node)
                .filter_map(|o| o.as_node())
                .collect();
            let unreachable = nodes
                .iter()
                .filter(|n| n.status.ready == ReadyState::NotReady)
                .count();
            let pods: Vec<Pod> = state
                .on_node(name)
                .filter_map(|o| o.as_pod())
                .cloned()
                .collect();
            (node.clone(), pods, taint_rate(nodes.len(), unreachable))
        };
        let mut node = node;
        match taint_change(&node) {
            Some(true) => {
                let taken = self
                    .bucket
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(rate, Instant::now());
                if let Err(wait) = taken {
                    tracing::info!(node = name, retry_in = ?wait, rate, "node unreachable; eviction is rate-limited");
                    return Ok(Some(wait));
                }
                node.spec.taints.push(unreachable_taint(now));
                tracing::info!(node = name, "node unreachable: tainted NoExecute");
                match self.api.update(&ME, Object::Node(node)).await {
                    // The cache shows the taint soon; pods are planned then.
                    Ok(_) => return Ok(None),
                    Err(e) if lost_race(&e) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Some(false) => {
                node.spec.taints.retain(|t| t.key != UNREACHABLE);
                tracing::info!(node = name, "node ready again: unreachable taint removed");
                match self.api.update(&ME, Object::Node(node)).await {
                    Ok(_) => return Ok(None),
                    Err(e) if lost_race(&e) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            None => {}
        }
        let mut again: Option<Duration> = None;
        for pod in pods {
            let Some(action) = plan_pod(&pod, &node.spec.taints, self.default_toleration, now)
            else {
                continue;
            };
            let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
            let written = match action {
                Eviction::Wait(d) => {
                    again = Some(again.map_or(d, |a| a.min(d)));
                    continue;
                }
                Eviction::Delete => {
                    tracing::info!(pod = %key, node = name, "evicting pod from a tainted node");
                    self.events.record(
                        Kind::Pod,
                        &pod.metadata,
                        Happening::normal(
                            "node-eviction",
                            "TaintManagerEviction",
                            format!("deleting the pod: node {name} is unreachable for longer than it tolerates"),
                        ),
                    );
                    let m = &pod.metadata;
                    self.api
                        .delete(&ME, Kind::Pod, &m.namespace, &m.name, m.resource_version)
                        .await
                        .map(|_| ())
                }
                Eviction::Fail => {
                    tracing::info!(pod = %key, node = name, "pod on a lost node has no owner: marking it Failed");
                    self.events.record(
                        Kind::Pod,
                        &pod.metadata,
                        Happening::warning(
                            "node-eviction",
                            NODE_LOST,
                            format!(
                                "node {name} is lost and no controller owns the pod: marked Failed"
                            ),
                        ),
                    );
                    let rv = pod.metadata.resource_version;
                    let mut failed = pod;
                    let message = format!(
                        "node {name} was unreachable for longer than the pod tolerates; no controller owns the pod, so it is not made again elsewhere"
                    );
                    failed.status.phase = PodPhase::Failed;
                    failed.status.reason = NODE_LOST.into();
                    failed.status.message = message.clone();
                    failed.status.finish_time = Some(now);
                    failed.status.set_condition(PodCondition {
                        type_: condition::READY.into(),
                        status: false,
                        last_transition_time: Some(now),
                        reason: NODE_LOST.into(),
                        message,
                    });
                    self.api
                        .update_status_at(&ME, Object::Pod(failed), rv)
                        .await
                        .map(|_| ())
                }
            };
            match written {
                Ok(()) => {}
                Err(e) if lost_race(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::meta::OwnerReference;

    fn pod(owned: bool, tolerations: Vec<Toleration>) -> Pod {
        let mut p = Pod::default();
        p.spec.tolerations = tolerations;
        if owned {
            p.metadata.owner_references.push(OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: "u".into(),
                controller: true,
                ..Default::default()
            });
        }
        p
    }

    fn toleration(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: key.into(),
            operator: TolerationOperator::Exists,
            effect: Some(TaintEffect::NoExecute),
            toleration_seconds: seconds,
            ..Toleration::default()
        }
    }

    fn taint(key: &str, effect: TaintEffect, at: i64) -> Taint {
        Taint {
            key: key.into(),
            value: String::new(),
            effect,
            time_added: Some(Time(at)),
        }
    }

    #[test]
    fn eviction_times() {
        let d = DEFAULT_TOLERATION;
        let unreachable = taint(UNREACHABLE, TaintEffect::NoExecute, 1_000);
        let cases = [
            // The default toleration: 30 s after the taint.
            (pod(true, vec![]), vec![unreachable.clone()], Some(31_000)),
            // The pod's own seconds.
            (
                pod(true, vec![toleration(UNREACHABLE, Some(2))]),
                vec![unreachable.clone()],
                Some(3_000),
            ),
            // A toleration without seconds: for good.
            (
                pod(true, vec![toleration(UNREACHABLE, None)]),
                vec![unreachable.clone()],
                None,
            ),
            // An admin's NoExecute taint without a toleration: at once.
            (
                pod(true, vec![]),
                vec![taint("maintenance", TaintEffect::NoExecute, 5_000)],
                Some(5_000),
            ),
            // NoSchedule taints never evict.
            (
                pod(true, vec![]),
                vec![taint("dedicated", TaintEffect::NoSchedule, 5_000)],
                None,
            ),
            // The earliest of several.
            (
                pod(true, vec![]),
                vec![
                    unreachable.clone(),
                    taint("maintenance", TaintEffect::NoExecute, 9_000),
                ],
                Some(9_000),
            ),
            // A toleration of every taint, for 10 s, covers the unreachable one too.
            (
                pod(true, vec![toleration("", Some(10))]),
                vec![unreachable],
                Some(11_000),
            ),
        ];
        for (p, taints, want) in cases {
            assert_eq!(
                eviction_time(&p, &taints, d),
                want.map(Time),
                "{:?} {taints:?}",
                p.spec.tolerations
            );
        }
    }

    #[test]
    fn owned_pods_are_deleted_and_others_marked_failed_when_due() {
        let taints = [taint(UNREACHABLE, TaintEffect::NoExecute, 0)];
        let d = Duration::from_secs(30);
        assert_eq!(
            plan_pod(&pod(true, vec![]), &taints, d, Time(10_000)),
            Some(Eviction::Wait(Duration::from_secs(20)))
        );
        assert_eq!(
            plan_pod(&pod(true, vec![]), &taints, d, Time(30_000)),
            Some(Eviction::Delete)
        );
        assert_eq!(
            plan_pod(&pod(false, vec![]), &taints, d, Time(30_000)),
            Some(Eviction::Fail)
        );
        let mut ended = pod(false, vec![]);
        ended.status.phase = PodPhase::Succeeded;
        assert_eq!(plan_pod(&ended, &taints, d, Time(30_000)), None);
    }

    #[test]
    fn eviction_slows_down_and_stops_when_much_of_the_cluster_is_unreachable() {
        assert_eq!(taint_rate(3, 1), RATE);
        assert_eq!(taint_rate(100, 55), RATE);
        assert_eq!(taint_rate(100, 56), SLOW_RATE);
        assert_eq!(
            taint_rate(10, 6),
            0.0,
            "a small cluster mostly cut off stops"
        );
        assert_eq!(taint_rate(1, 1), 0.0);
        let start = Instant::now();
        let mut b = Bucket::new(start);
        assert!(b.take(RATE, start).is_ok(), "a burst of one");
        let wait = b.take(RATE, start).expect_err("then the rate");
        assert!(
            wait <= Duration::from_secs(10) && wait > Duration::from_secs(9),
            "{wait:?}"
        );
        assert!(b.take(RATE, start + Duration::from_secs(10)).is_ok());
        assert!(
            b.take(0.0, start + Duration::from_secs(100)).is_err(),
            "rate 0: none"
        );
    }

    #[test]
    fn taints_follow_readiness() {
        let mut n = Node::default();
        n.status.ready = ReadyState::NotReady;
        assert_eq!(taint_change(&n), Some(true));
        n.spec.taints.push(unreachable_taint(Time(1)));
        assert_eq!(taint_change(&n), None);
        n.status.ready = ReadyState::Ready;
        assert_eq!(taint_change(&n), Some(false));
        n.spec.taints.clear();
        assert_eq!(taint_change(&n), None);
        n.status.ready = ReadyState::Unknown;
        assert_eq!(
            taint_change(&n),
            None,
            "a node still registering is not unreachable"
        );
    }
}
