//! Node eviction, Kubernetes' taint-based eviction in our shape.
//!
//! - A node that is NotReady gets the taint `node.flotilla.dev/unreachable`
//!   with effect NoExecute (the time it was added is when its pods' clocks
//!   start); a node Ready again loses it. Tainting is rate-limited per
//!   zone (the node label [`ZONE_LABEL`]; nodes without it share one zone),
//!   as Kubernetes limits it: a zone's nodes are tainted at [`RATE`] a
//!   second; slower ([`SLOW_RATE`]) once more than [`UNHEALTHY`] of the
//!   zone is unreachable, and not at all then in a zone of at most
//!   [`SMALL_CLUSTER`] nodes (a partitioned site must not be emptied: there
//!   would be nowhere to run its pods anyway); and not at all anywhere when
//!   every zone has lost all its nodes (the master is the one cut off).
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
/// Zones of at most this many nodes stop evicting instead of slowing down.
pub const SMALL_CLUSTER: usize = 50;
/// The node label that names a node's zone (a site, a room, a rack).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The zone a node is in ("" for nodes without the label).
pub fn zone_of(node: &Node) -> &str {
    node.metadata
        .labels
        .get(ZONE_LABEL)
        .map(String::as_str)
        .unwrap_or("")
}

/// How a zone is, from its nodes (Kubernetes' zone states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneState {
    Normal,
    /// More than [`UNHEALTHY`] of its nodes (and at least two) unreachable.
    PartialDisruption,
    /// None of its nodes reachable.
    FullDisruption,
}

/// The state of a zone of `nodes` nodes, `unreachable` of them unreachable.
pub fn zone_state(nodes: usize, unreachable: usize) -> ZoneState {
    if nodes > 0 && unreachable >= nodes {
        ZoneState::FullDisruption
    } else if unreachable >= 2 && (unreachable as f64) / (nodes as f64) > UNHEALTHY {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

/// Nodes of a zone tainted a second, given its size and state and whether
/// every zone has lost all its nodes.
pub fn taint_rate(nodes: usize, state: ZoneState, all_zones_down: bool) -> f64 {
    match state {
        _ if all_zones_down => 0.0,
        ZoneState::Normal | ZoneState::FullDisruption => RATE,
        ZoneState::PartialDisruption if nodes <= SMALL_CLUSTER => 0.0,
        ZoneState::PartialDisruption => SLOW_RATE,
    }
}

/// The taint rate for the zone `zone`, from every node's zone and readiness.
pub fn zone_rate<'a>(nodes: impl Iterator<Item = &'a Node>, zone: &str) -> f64 {
    let mut zones: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for n in nodes {
        let z = zones.entry(zone_of(n)).or_default();
        z.0 += 1;
        if n.status.ready == ReadyState::NotReady {
            z.1 += 1;
        }
    }
    let all_down = !zones.is_empty()
        && zones
            .values()
            .all(|(n, u)| zone_state(*n, *u) == ZoneState::FullDisruption);
    let (n, u) = zones.get(zone).copied().unwrap_or_default();
    taint_rate(n, zone_state(n, u), all_down)
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
    /// A token bucket per zone.
    pub buckets: Mutex<std::collections::HashMap<String, Bucket>>,
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
        let (node, pods, rate, zone) = {
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
            let zone = zone_of(node).to_string();
            let rate = zone_rate(state.of_kind(Kind::Node).filter_map(|o| o.as_node()), &zone);
            let pods: Vec<Pod> = state
                .on_node(name)
                .filter_map(|o| o.as_pod())
                .cloned()
                .collect();
            (node.clone(), pods, rate, zone)
        };
        let mut node = node;
        match taint_change(&node) {
            Some(true) => {
                let now_i = Instant::now();
                let taken = self
                    .buckets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(zone.clone())
                    .or_insert_with(|| Bucket::new(now_i))
                    .take(rate, now_i);
                if let Err(wait) = taken {
                    tracing::info!(node = name, zone = %zone, retry_in = ?wait, rate, "node unreachable; eviction is rate-limited");
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
    fn eviction_slows_down_and_stops_when_much_of_a_zone_is_unreachable() {
        let rate = |n, u| taint_rate(n, zone_state(n, u), false);
        assert_eq!(rate(3, 1), RATE);
        assert_eq!(rate(100, 55), RATE);
        assert_eq!(rate(100, 56), SLOW_RATE);
        assert_eq!(rate(10, 6), 0.0, "a small zone mostly cut off stops");
        assert_eq!(rate(2, 1), RATE, "one node of two is not a disruption");
        assert_eq!(zone_state(4, 4), ZoneState::FullDisruption);
        assert_eq!(rate(4, 4), RATE, "a zone all gone, others up: evict");
        assert_eq!(
            taint_rate(4, ZoneState::FullDisruption, true),
            0.0,
            "every zone gone: the master is the one cut off"
        );
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
    fn each_zone_has_its_own_rate() {
        let node = |zone: &str, ready: bool| {
            let mut n = Node::default();
            if !zone.is_empty() {
                n.metadata.labels.insert(ZONE_LABEL.into(), zone.into());
            }
            n.status.ready = if ready {
                ReadyState::Ready
            } else {
                ReadyState::NotReady
            };
            n
        };
        // Site a is cut off (3 of 4), site b is fine, one node has no zone.
        let mut nodes = vec![node("a", true)];
        nodes.extend((0..3).map(|_| node("a", false)));
        nodes.extend((0..4).map(|_| node("b", true)));
        nodes.push(node("", false));
        assert_eq!(
            zone_rate(nodes.iter(), "a"),
            0.0,
            "a partitioned site stays"
        );
        assert_eq!(zone_rate(nodes.iter(), "b"), RATE);
        assert_eq!(zone_rate(nodes.iter(), ""), RATE, "its own zone, all gone");
        // Every zone gone: no eviction anywhere.
        let down: Vec<Node> = ["a", "b", ""].iter().map(|z| node(z, false)).collect();
        for z in ["a", "b", ""] {
            assert_eq!(zone_rate(down.iter(), z), 0.0, "{z}");
        }
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
