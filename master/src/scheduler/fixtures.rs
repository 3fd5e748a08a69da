//! Builders of nodes and pods for the scheduler's table tests.

use super::{NodeState, PodState, Snapshot};
use flotilla_api::meta::OwnerReference;
use flotilla_api::objects::scheduling::{
    Affinity, LabelSelector, NodeAffinity, NodeSelector, NodeSelectorOperator,
    NodeSelectorRequirement, NodeSelectorTerm, PreemptionPolicy, PreferredSchedulingTerm, Taint,
    TaintEffect, Toleration, TolerationOperator, TopologySpreadConstraint,
    UnsatisfiableConstraintAction,
};
use flotilla_api::objects::{NodeCapacity, ReadyState};
use flotilla_api::quantity::{parse_bytes, parse_millicores, Quantity};
use flotilla_api::time::Time;
use flotilla_api::{Node, Pod};

pub const GI: u64 = 1 << 30;
pub const MI: u64 = 1 << 20;

/// A Ready node of 1 cpu, 1Gi and 110 pods, with its pods.
pub fn node(name: &str) -> NodeB {
    let mut n = Node::default();
    n.metadata.name = name.into();
    n.metadata
        .labels
        .insert(flotilla_api::labels::HOSTNAME.into(), name.into());
    n.status.ready = ReadyState::Ready;
    n.status.capacity = NodeCapacity {
        cpu_millis: 1000,
        memory_bytes: GI,
        pods: 110,
    };
    NodeB(NodeState {
        node: n,
        ..NodeState::default()
    })
}

pub struct NodeB(pub NodeState);

impl NodeB {
    pub fn state(self) -> NodeState {
        self.0
    }
    fn node(mut self, f: impl FnOnce(&mut Node)) -> Self {
        f(&mut self.0.node);
        self
    }
    pub fn not_ready(self) -> Self {
        self.node(|n| n.status.ready = ReadyState::NotReady)
    }
    pub fn cordoned(self) -> Self {
        self.node(|n| n.spec.unschedulable = true)
    }
    pub fn label(self, k: &str, v: &str) -> Self {
        self.node(|n| {
            n.metadata.labels.insert(k.into(), v.into());
        })
    }
    pub fn taint(self, key: &str, value: &str, effect: TaintEffect) -> Self {
        self.node(|n| {
            n.spec.taints.push(Taint {
                key: key.into(),
                value: value.into(),
                effect,
                time_added: None,
            })
        })
    }
    pub fn max_pods(self, pods: u32) -> Self {
        self.node(|n| n.status.capacity.pods = pods)
    }
    pub fn capacity(self, cpu: &str, mem: &str) -> Self {
        self.node(|n| {
            n.status.capacity.cpu_millis = parse_millicores(cpu).unwrap_or_default();
            n.status.capacity.memory_bytes = parse_bytes(mem).unwrap_or_default();
        })
    }
    pub fn allocatable(self, cpu: &str, mem: &str) -> Self {
        self.node(|n| {
            n.status.allocatable = NodeCapacity {
                cpu_millis: parse_millicores(cpu).unwrap_or_default(),
                memory_bytes: parse_bytes(mem).unwrap_or_default(),
                pods: 110,
            }
        })
    }
    pub fn interfaces(self, list: &[&str]) -> Self {
        self.node(|n| n.status.interfaces = list.iter().map(|s| s.to_string()).collect())
    }
    pub fn modules(self, list: &[&str]) -> Self {
        self.node(|n| n.status.modules = list.iter().map(|s| s.to_string()).collect())
    }
    pub fn volumes(self, list: &[&str]) -> Self {
        self.node(|n| n.status.volumes = list.iter().map(|s| s.to_string()).collect())
    }
    pub fn running(mut self, p: PodB) -> Self {
        self.0.pods.push(p.state());
        self
    }
    /// A pending pod nominated here by an earlier preemption.
    pub fn nominated(mut self, p: PodB) -> Self {
        self.0.nominated.push(p.state());
        self
    }
    pub fn running_terminating(mut self, p: PodB) -> Self {
        let mut s = p.state();
        s.terminating = true;
        self.0.pods.push(s);
        self
    }
}

/// A pod in `default` with uid `uid-<name>` and no requests.
pub fn pod(name: &str) -> PodB {
    let mut p = Pod::default();
    p.metadata.name = name.into();
    p.metadata.namespace = "default".into();
    p.metadata.uid = format!("uid-{name}");
    PodB(p)
}

pub struct PodB(pub Pod);

impl PodB {
    pub fn build(self) -> Pod {
        self.0
    }
    pub fn state(self) -> PodState {
        PodState::from_pod(&self.0)
    }
    fn pod(mut self, f: impl FnOnce(&mut Pod)) -> Self {
        f(&mut self.0);
        self
    }
    fn node_affinity(&mut self) -> &mut NodeAffinity {
        self.0
            .spec
            .affinity
            .get_or_insert_with(Affinity::default)
            .node_affinity
            .get_or_insert_with(NodeAffinity::default)
    }
    pub fn namespace(self, ns: &str) -> Self {
        self.pod(|p| p.metadata.namespace = ns.into())
    }
    pub fn label(self, k: &str, v: &str) -> Self {
        self.pod(|p| {
            p.metadata.labels.insert(k.into(), v.into());
        })
    }
    pub fn selector(self, k: &str, v: &str) -> Self {
        self.pod(|p| {
            p.spec.node_selector.insert(k.into(), v.into());
        })
    }
    /// Adds a required term of one requirement (terms are ORed).
    pub fn requires(mut self, key: &str, op: NodeSelectorOperator, values: &[&str]) -> Self {
        self.node_affinity()
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(NodeSelector::default)
            .node_selector_terms
            .push(term(key, op, values));
        self
    }
    pub fn prefers(
        mut self,
        weight: i32,
        key: &str,
        op: NodeSelectorOperator,
        values: &[&str],
    ) -> Self {
        self.node_affinity()
            .preferred_during_scheduling_ignored_during_execution
            .push(PreferredSchedulingTerm {
                weight,
                preference: term(key, op, values),
            });
        self
    }
    pub fn tolerate(
        self,
        key: &str,
        operator: TolerationOperator,
        value: &str,
        effect: Option<TaintEffect>,
    ) -> Self {
        self.pod(|p| {
            p.spec.tolerations.push(Toleration {
                key: key.into(),
                operator,
                value: value.into(),
                effect,
                toleration_seconds: None,
            })
        })
    }
    pub fn cpu(self, q: &str) -> Self {
        self.pod(|p| p.spec.resources.requests.cpu = Some(Quantity(q.into())))
    }
    pub fn mem(self, q: &str) -> Self {
        self.pod(|p| p.spec.resources.requests.memory = Some(Quantity(q.into())))
    }
    pub fn mem_limit(self, q: &str) -> Self {
        self.pod(|p| p.spec.resources.limits.memory = Some(Quantity(q.into())))
    }
    pub fn priority(self, v: i32) -> Self {
        self.pod(|p| p.spec.priority = Some(v))
    }
    pub fn never_preempt(self) -> Self {
        self.pod(|p| p.spec.preemption_policy = Some(PreemptionPolicy::Never))
    }
    pub fn owner(self, uid: &str) -> Self {
        self.pod(|p| {
            p.metadata.owner_references.push(OwnerReference {
                kind: "ReplicaSet".into(),
                name: uid.into(),
                uid: uid.into(),
                controller: true,
                ..Default::default()
            })
        })
    }
    pub fn module(self, m: &str) -> Self {
        self.pod(|p| p.spec.module = m.into())
    }
    pub fn created(self, millis: i64) -> Self {
        self.pod(|p| p.metadata.creation_timestamp = Some(Time(millis)))
    }
    pub fn nominated(self, node: &str) -> Self {
        self.pod(|p| p.status.nominated_node_name = Some(node.into()))
    }
    /// Mounts the persistent volume `name`, on `node` when not empty.
    pub fn persistent(self, name: &str, node: &str) -> Self {
        self.pod(|p| {
            p.spec.volumes.push(flotilla_api::objects::volume::Volume {
                name: format!("v-{name}"),
                persistent: Some(flotilla_api::objects::volume::PersistentVolume {
                    name: name.into(),
                    node: node.into(),
                }),
                ..Default::default()
            })
        })
    }
    pub fn bound(self, node: &str) -> Self {
        self.pod(|p| p.spec.node_name = Some(node.into()))
    }
    pub fn spread(
        self,
        key: &str,
        max_skew: i32,
        when: UnsatisfiableConstraintAction,
        selector: &[(&str, &str)],
    ) -> Self {
        self.pod(|p| {
            p.spec
                .topology_spread_constraints
                .push(TopologySpreadConstraint {
                    max_skew,
                    topology_key: key.into(),
                    when_unsatisfiable: when,
                    label_selector: Some(LabelSelector {
                        match_labels: selector
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        match_expressions: Vec::new(),
                    }),
                })
        })
    }
}

fn term(key: &str, op: NodeSelectorOperator, values: &[&str]) -> NodeSelectorTerm {
    NodeSelectorTerm {
        match_expressions: vec![NodeSelectorRequirement {
            key: key.into(),
            operator: op,
            values: values.iter().map(|v| v.to_string()).collect(),
        }],
    }
}

/// A snapshot of `nodes` in which `pod`'s module imports `imports`.
pub fn snapshot(nodes: Vec<NodeState>, pod: &Pod, imports: &[&str]) -> Snapshot {
    Snapshot {
        nodes,
        module_imports: [(
            pod.spec.module.clone(),
            imports.iter().map(|s| s.to_string()).collect(),
        )]
        .into_iter()
        .collect(),
        next_start: 0,
        turn: 0,
    }
}
