//! The DaemonSet controller: a pod on every node that suits the set.
//!
//! [`plan`] is pure: from a DaemonSet, the nodes and the set's pods, the
//! nodes to make a pod for, the pods to delete (extra ones, ones on nodes
//! that no longer suit, old ones during a rolling update) and the status.
//! A pod is made for one node: its nodeSelector names the node's hostname
//! label, so the scheduler places it there (checking its resources like any
//! pod's), and it tolerates the node being unreachable for good (its node
//! is the only place it can run, as Kubernetes does for daemon pods).

use crate::apiserver::{lost_race, unless_lost, ApiServer, Caller};
use crate::controllers::events::Happening;
use crate::controllers::eviction::UNREACHABLE;
use crate::controllers::replicaset::{
    controller_of, controller_ref, generate_name, is_active, is_available, managed, owner_keys,
    ready_since, see_own_writes,
};
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use crate::scheduler::filters::matches_node_selection;
use flotilla_api::objects::daemon_set::{DaemonSetStatus, DaemonSetStrategyType};
use flotilla_api::objects::scheduling::{tolerated, TolerationOperator};
use flotilla_api::objects::workload::POD_TEMPLATE_HASH;
use flotilla_api::objects::{DaemonSet, TaintEffect, Toleration};
use flotilla_api::protocol::ApiError;
use flotilla_api::time::Time;
use flotilla_api::{labels, Kind, Node, Object, ObjectMeta, Pod};
use std::collections::BTreeMap;
use std::time::Duration;

const ME: Caller = Caller::Controller("daemonset");

/// The pod `ds` runs on `node` (its name is chosen when it is written).
pub fn pod_for(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let t = &ds.spec.template;
    let mut labels = t.metadata.labels.clone();
    labels.insert(POD_TEMPLATE_HASH.into(), hash.into());
    let mut spec = t.spec.clone();
    spec.node_selector
        .insert(labels::HOSTNAME.into(), node.into());
    if !spec.tolerations.iter().any(|x| {
        x.key == UNREACHABLE || (x.key.is_empty() && x.operator == TolerationOperator::Exists)
    }) {
        spec.tolerations.push(Toleration {
            key: UNREACHABLE.into(),
            operator: TolerationOperator::Exists,
            effect: Some(TaintEffect::NoExecute),
            ..Toleration::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            namespace: ds.metadata.namespace.clone(),
            labels,
            annotations: t.metadata.annotations.clone(),
            owner_references: vec![controller_ref(Kind::DaemonSet, &ds.metadata)],
            ..ObjectMeta::default()
        },
        spec,
        ..Pod::default()
    }
}

/// Whether `ds`'s pod may run on `node`: its labels match the template's
/// node selection and its NoExecute taints are tolerated (the unreachable
/// taint aside: daemon pods stay on their node). A pod that may not is
/// deleted.
pub fn may_run(ds: &DaemonSet, node: &Node) -> bool {
    matches_node_selection(node, &template_pod(ds))
        && node.spec.taints.iter().all(|t| {
            t.effect != TaintEffect::NoExecute
                || t.key == UNREACHABLE
                || tolerated(&ds.spec.template.spec.tolerations, t)
        })
}

/// Whether a new pod of `ds` may be placed on `node`: it may run there, the
/// node is not cordoned, and its NoSchedule taints are tolerated. (A
/// cordoned node keeps the pod it has until it is drained.)
pub fn may_place(ds: &DaemonSet, node: &Node) -> bool {
    may_run(ds, node)
        && !node.spec.unschedulable
        && node.spec.taints.iter().all(|t| {
            t.effect != TaintEffect::NoSchedule || tolerated(&ds.spec.template.spec.tolerations, t)
        })
}

/// The template as a pod, for the node-selection rules.
fn template_pod(ds: &DaemonSet) -> Pod {
    Pod {
        spec: ds.spec.template.spec.clone(),
        ..Pod::default()
    }
}

/// The node a daemon pod is for: where it is bound, or the node its
/// nodeSelector names while it waits to be bound.
pub fn node_of(p: &Pod) -> Option<&str> {
    p.spec.node_name.as_deref().or_else(|| {
        p.spec
            .node_selector
            .get(labels::HOSTNAME)
            .map(String::as_str)
    })
}

/// What to do for one DaemonSet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Nodes to make a pod for.
    pub create: Vec<String>,
    pub delete: Vec<Pod>,
    pub status: Option<DaemonSetStatus>,
    /// When to look again: a ready pod becomes available.
    pub again_after: Option<Duration>,
}

/// The plan for `ds` over `nodes` and its own pods at `now`.
pub fn plan(ds: &DaemonSet, nodes: &[&Node], pods: &[&Pod], now: Time) -> Plan {
    let mut out = Plan::default();
    let hash = ds.spec.template.hash();
    let min_ready = ds.spec.min_ready_seconds;
    let mut by_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in pods.iter().filter(|p| is_active(p)) {
        if let Some(n) = node_of(p) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let updated = |p: &Pod| p.metadata.labels.get(POD_TEMPLATE_HASH) == Some(&hash);
    let mut status = DaemonSetStatus {
        observed_generation: ds.metadata.generation,
        ..DaemonSetStatus::default()
    };
    // Per node that runs (or should run) the pod: its one pod (the best
    // of several), and whether a replacement could be placed there.
    let mut kept: Vec<(&Pod, bool)> = Vec::new();
    let mut missing = 0u32;
    for node in nodes {
        let name = node.metadata.name.as_str();
        let mut here = by_node.remove(name).unwrap_or_default();
        if !may_run(ds, node) {
            if !here.is_empty() {
                status.number_misscheduled += 1;
            }
            out.delete.extend(here.into_iter().cloned());
            continue;
        }
        let placeable = may_place(ds, node);
        if here.is_empty() {
            if placeable {
                status.desired_number_scheduled += 1;
                out.create.push(name.to_string());
                missing += 1;
            }
            continue;
        }
        status.desired_number_scheduled += 1;
        // Keep the updated, ready, oldest one; the rest go.
        here.sort_by_key(|p| {
            (
                !updated(p),
                ready_since(p).is_none(),
                p.metadata.creation_timestamp,
                p.metadata.name.clone(),
            )
        });
        let best = here.remove(0);
        out.delete.extend(here.into_iter().cloned());
        status.current_number_scheduled += 1;
        if ready_since(best).is_some() {
            status.number_ready += 1;
        }
        if is_available(best, min_ready, now) {
            status.number_available += 1;
        }
        if updated(best) {
            status.updated_number_scheduled += 1;
        }
        kept.push((best, placeable));
    }
    // Pods for nodes that are gone.
    for (_, gone) in by_node {
        out.delete.extend(gone.into_iter().cloned());
    }
    // Rolling update: old pods that are not available go at once; available
    // ones while fewer than maxUnavailable nodes lack an available pod.
    if ds.spec.update_strategy.type_ == DaemonSetStrategyType::RollingUpdate {
        let desired = status.desired_number_scheduled;
        let mut unavailable = missing
            + kept
                .iter()
                .filter(|(p, _)| !is_available(p, min_ready, now))
                .count() as u32;
        let budget = ds.spec.max_unavailable(desired);
        // Old pods are replaced only where the new one can be placed.
        let mut old: Vec<&Pod> = kept
            .iter()
            .filter(|(p, placeable)| *placeable && !updated(p))
            .map(|(p, _)| *p)
            .collect();
        old.sort_by_key(|p| (is_available(p, min_ready, now), p.metadata.name.clone()));
        for p in old {
            if !is_available(p, min_ready, now) {
                out.delete.push(p.clone());
            } else if unavailable < budget {
                out.delete.push(p.clone());
                unavailable += 1;
            }
        }
    }
    if status != ds.status {
        out.status = Some(status);
    }
    out.again_after = kept
        .iter()
        .filter_map(|(p, _)| ready_since(p))
        .map(|t| i64::from(min_ready) * 1000 - now.since(t))
        .filter(|w| *w > 0)
        .min()
        .map(|ms| Duration::from_millis(ms.unsigned_abs()));
    out
}

/// The DaemonSet controller, for [`crate::controllers::runtime::drive`].
pub struct DaemonSets {
    pub api: ApiServer,
    pub cache: Cache,
    pub events: crate::controllers::events::Recorder,
}

impl Reconciler for DaemonSets {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    fn keys_for(
        &self,
        state: &CacheState,
        old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    ) {
        match new {
            Object::DaemonSet(_) => out.push(new.key()),
            // A node joined, left, or changed its labels, taints or cordon.
            Object::Node(n) => {
                let before = old.and_then(Object::as_node);
                let same = before
                    .is_some_and(|b| b.metadata.labels == n.metadata.labels && b.spec == n.spec)
                    && state.get(&new.key()).is_some();
                if !same {
                    out.extend(state.of_kind(Kind::DaemonSet).map(|d| d.key()));
                }
            }
            Object::Pod(_) => owner_keys(state, old, new, Kind::DaemonSet, false, out),
            _ => {}
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        state.of_kind(Kind::DaemonSet).map(|o| o.key()).collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let (ds, plan) = {
            let state = self.cache.read();
            let Some(ds) = managed::<DaemonSet>(&state, key) else {
                return Ok(None);
            };
            let nodes: Vec<&Node> = state
                .of_kind(Kind::Node)
                .filter_map(|o| o.as_node())
                .collect();
            let pods: Vec<&Pod> = state
                .owned_by(&ds.metadata.uid)
                .filter_map(|o| o.as_pod())
                .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == ds.metadata.uid))
                .collect();
            (ds.clone(), plan(ds, &nodes, &pods, Time::now()))
        };
        let mut revision = 0u64;
        let mut note = |o: &Object| revision = revision.max(o.meta().resource_version);
        let name = format!("{}/{}", ds.metadata.namespace, ds.metadata.name);
        let hash = ds.spec.template.hash();
        let creates = plan.create.iter().map(|node| {
            let mut pod = pod_for(&ds, node, &hash);
            pod.metadata.name = generate_name(&ds.metadata.name);
            self.api.create(&ME, Object::Pod(pod))
        });
        for r in futures_util::future::join_all(creates).await {
            match r {
                Ok(o) => {
                    note(&o);
                    self.events.record(
                        Kind::DaemonSet,
                        &ds.metadata,
                        Happening::normal(
                            "daemonset-controller",
                            "SuccessfulCreate",
                            format!("Created pod: {}", o.meta().name),
                        ),
                    );
                }
                Err(e) => {
                    tracing::warn!(daemonset = %name, error = %e, "creating a daemon pod failed");
                    self.events.record(
                        Kind::DaemonSet,
                        &ds.metadata,
                        Happening::warning(
                            "daemonset-controller",
                            "FailedCreate",
                            format!("Error creating: {}", e.message),
                        ),
                    );
                    return Err(e);
                }
            }
        }
        if !plan.create.is_empty() {
            tracing::info!(daemonset = %name, nodes = ?plan.create, "created daemon pods");
        }
        let deletes = plan.delete.iter().map(|p| {
            let m = &p.metadata;
            self.api
                .delete(&ME, Kind::Pod, &m.namespace, &m.name, m.resource_version)
        });
        for r in futures_util::future::join_all(deletes).await {
            match r {
                Ok(o) => {
                    note(&o);
                    self.events.record(
                        Kind::DaemonSet,
                        &ds.metadata,
                        Happening::normal(
                            "daemonset-controller",
                            "SuccessfulDelete",
                            format!("Deleted pod: {}", o.meta().name),
                        ),
                    );
                }
                Err(e) if lost_race(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(status) = plan.status.clone() {
            let mut with = ds.clone();
            with.status = status;
            if let Some(o) = unless_lost(
                self.api
                    .update_status_at(&ME, Object::DaemonSet(with), ds.metadata.resource_version)
                    .await,
            )? {
                note(&o);
            }
        }
        see_own_writes(&self.cache, revision).await?;
        Ok(plan.again_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::meta::OwnerReference;
    use flotilla_api::objects::workload::TemplateMeta;
    use flotilla_api::objects::{PodCondition, PodPhase, Taint};

    fn ds() -> DaemonSet {
        let mut d = DaemonSet {
            metadata: ObjectMeta {
                name: "agent".into(),
                namespace: "default".into(),
                uid: "ds-uid".into(),
                generation: 2,
                ..ObjectMeta::default()
            },
            ..DaemonSet::default()
        };
        d.spec.selector.match_labels = [("app".to_string(), "agent".to_string())].into();
        d.spec.template.metadata = TemplateMeta {
            labels: d.spec.selector.match_labels.clone(),
            ..TemplateMeta::default()
        };
        d.spec.template.spec.module = "sha256:aa".into();
        d
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> Node {
        let mut n = Node::default();
        n.metadata.name = name.into();
        n.metadata.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        n
    }

    /// A pod of the set on `node`, of the current template or not, ready or not.
    fn pod(d: &DaemonSet, name: &str, node: &str, current: bool, ready: bool) -> Pod {
        let hash = if current {
            d.spec.template.hash()
        } else {
            "old".into()
        };
        let mut p = pod_for(d, node, &hash);
        p.metadata.name = name.into();
        p.metadata.owner_references = vec![OwnerReference {
            kind: "DaemonSet".into(),
            name: "agent".into(),
            uid: "ds-uid".into(),
            controller: true,
            ..Default::default()
        }];
        p.spec.node_name = Some(node.into());
        p.status.phase = PodPhase::Running;
        if ready {
            p.status.set_condition(PodCondition {
                type_: "Ready".into(),
                status: true,
                last_transition_time: Some(Time(0)),
                ..PodCondition::default()
            });
        }
        p
    }

    fn names(v: &[Pod]) -> Vec<&str> {
        v.iter().map(|p| p.metadata.name.as_str()).collect()
    }

    #[test]
    fn a_pod_for_every_suitable_node_and_none_elsewhere() {
        let mut d = ds();
        d.spec.template.spec.node_selector = [("sensor".to_string(), "yes".to_string())].into();
        let a = node("a", &[("sensor", "yes")]);
        let b = node("b", &[("sensor", "yes")]);
        let plain = node("plain", &[]);
        let mut cordoned = node("cordoned", &[("sensor", "yes")]);
        cordoned.spec.unschedulable = true;
        let mut tainted = node("tainted", &[("sensor", "yes")]);
        tainted.spec.taints.push(Taint {
            key: "dedicated".into(),
            effect: TaintEffect::NoSchedule,
            ..Taint::default()
        });
        let on_a = pod(&d, "on-a", "a", true, true);
        let on_plain = pod(&d, "on-plain", "plain", true, true);
        let on_cordoned = pod(&d, "on-cordoned", "cordoned", true, true);
        let for_gone = pod(&d, "for-gone", "gone", true, true);
        let p = plan(
            &d,
            &[&a, &b, &plain, &cordoned, &tainted],
            &[&on_a, &on_plain, &on_cordoned, &for_gone],
            Time(10_000),
        );
        assert_eq!(p.create, ["b"], "not on the cordoned or tainted node");
        let mut deleted = names(&p.delete);
        deleted.sort();
        // A cordoned node keeps its pod until it is drained.
        assert_eq!(deleted, ["for-gone", "on-plain"]);
        let s = p.status.expect("status");
        assert_eq!(
            (
                s.desired_number_scheduled,
                s.current_number_scheduled,
                s.number_misscheduled,
                s.number_ready,
                s.observed_generation
            ),
            (3, 2, 1, 2, 2)
        );
        // The pod made for b is pinned there and stays when b is unreachable.
        let made = pod_for(&d, "b", "h");
        assert_eq!(
            made.spec
                .node_selector
                .get(labels::HOSTNAME)
                .map(String::as_str),
            Some("b")
        );
        assert!(made
            .spec
            .tolerations
            .iter()
            .any(|t| t.key == UNREACHABLE && t.toleration_seconds.is_none()));
    }

    #[test]
    fn one_pod_per_node_the_best_kept() {
        let d = ds();
        let a = node("a", &[]);
        let old = pod(&d, "old", "a", false, true);
        let new_ready = pod(&d, "new-ready", "a", true, true);
        let new_waiting = pod(&d, "new-waiting", "a", true, false);
        let p = plan(&d, &[&a], &[&old, &new_ready, &new_waiting], Time(10_000));
        let mut deleted = names(&p.delete);
        deleted.sort();
        assert_eq!(deleted, ["new-waiting", "old"]);
        assert!(p.create.is_empty());
    }

    #[test]
    fn a_rolling_update_replaces_at_most_max_unavailable_nodes_at_a_time() {
        let d = ds();
        let nodes: Vec<Node> = (0..4).map(|i| node(&format!("n{i}"), &[])).collect();
        let refs: Vec<&Node> = nodes.iter().collect();
        // Every pod old and available: one goes (maxUnavailable 1).
        let old: Vec<Pod> = (0..4)
            .map(|i| pod(&d, &format!("p{i}"), &format!("n{i}"), false, true))
            .collect();
        let pods: Vec<&Pod> = old.iter().collect();
        let p = plan(&d, &refs, &pods, Time(10_000));
        assert_eq!(names(&p.delete), ["p0"]);
        // n0's new pod is not ready yet: nothing more goes.
        let mut now = old.clone();
        now[0] = pod(&d, "new0", "n0", true, false);
        let pods: Vec<&Pod> = now.iter().collect();
        assert!(plan(&d, &refs, &pods, Time(10_000)).delete.is_empty());
        // An old pod that is not available goes regardless.
        now[2] = pod(&d, "p2", "n2", false, false);
        let pods: Vec<&Pod> = now.iter().collect();
        assert_eq!(names(&plan(&d, &refs, &pods, Time(10_000)).delete), ["p2"]);
        // With maxUnavailable 50%, two at once.
        let mut wide = d.clone();
        wide.spec.update_strategy.rolling_update =
            Some(flotilla_api::objects::daemon_set::RollingUpdateDaemonSet {
                max_unavailable: Some(flotilla_api::objects::workload::IntOrPercent::Str(
                    "50%".into(),
                )),
            });
        let pods: Vec<&Pod> = old.iter().collect();
        assert_eq!(plan(&wide, &refs, &pods, Time(10_000)).delete.len(), 2);
        // OnDelete: old pods stay.
        let mut manual = d.clone();
        manual.spec.update_strategy.type_ = DaemonSetStrategyType::OnDelete;
        assert!(plan(&manual, &refs, &pods, Time(10_000)).delete.is_empty());
    }
}
