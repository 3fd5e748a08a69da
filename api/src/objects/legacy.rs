//! The layouts objects had on the wire and in the store up to protocol 2,
//! when objects were postcard structs (positional: a field added anywhere
//! moves every field after it). They are frozen here, only to read what
//! older masters and nodes wrote — raft log entries, snapshots, `state.redb`
//! rows, backups, a node's local pod store — and turn it into the current
//! types. Nothing writes them. Objects are written self-describing since
//! protocol 3 (see [`super::Object`]'s serialization), so new fields need
//! no frozen copy. (They derive `Serialize` only so that tests can write
//! what an old master wrote.)

use super::{PodPhase, ReadyState, RestartPolicy};
use crate::quantity::Quantity;
use crate::time::Time;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ObjectMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub resource_version: u64,
    pub generation: u64,
    pub creation_timestamp: Option<Time>,
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub controller: bool,
}

impl From<ObjectMeta> for crate::meta::ObjectMeta {
    fn from(m: ObjectMeta) -> Self {
        crate::meta::ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            labels: m.labels,
            annotations: m.annotations,
            resource_version: m.resource_version,
            generation: m.generation,
            creation_timestamp: m.creation_timestamp,
            owner_references: m
                .owner_references
                .into_iter()
                .map(|o| crate::meta::OwnerReference {
                    kind: o.kind,
                    name: o.name,
                    uid: o.uid,
                    controller: o.controller,
                    block_owner_deletion: false,
                })
                .collect(),
            deletion_timestamp: None,
            finalizers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct PodSpec {
    pub module: String,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub resources: ResourceRequirements,
    pub node_selector: BTreeMap<String, String>,
    pub node_name: Option<String>,
    pub restart_policy: RestartPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ResourceRequirements {
    pub requests: ResourceList,
    pub limits: ResourceList,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ResourceList {
    pub cpu: Option<Quantity>,
    pub memory: Option<Quantity>,
}

impl From<ResourceList> for super::ResourceList {
    fn from(r: ResourceList) -> Self {
        super::ResourceList {
            cpu: r.cpu,
            memory: r.memory,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct PodStatus {
    pub phase: PodPhase,
    pub reason: String,
    pub message: String,
    pub restart_count: u32,
    pub exit_code: Option<i32>,
    pub start_time: Option<Time>,
    pub finish_time: Option<Time>,
    pub conditions: Vec<PodCondition>,
    pub observed_generation: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct PodCondition {
    pub type_: String,
    pub status: bool,
    pub last_transition_time: Option<Time>,
    pub reason: String,
    pub message: String,
}

impl From<Pod> for super::Pod {
    fn from(p: Pod) -> Self {
        let (s, st) = (p.spec, p.status);
        super::Pod {
            metadata: p.metadata.into(),
            spec: super::PodSpec {
                module: s.module,
                args: s.args,
                env: s
                    .env
                    .into_iter()
                    .map(|e| super::EnvVar {
                        name: e.name,
                        value: e.value,
                        value_from: None,
                    })
                    .collect(),
                resources: super::ResourceRequirements {
                    requests: s.resources.requests.into(),
                    limits: s.resources.limits.into(),
                },
                node_selector: s.node_selector,
                node_name: s.node_name,
                restart_policy: s.restart_policy,
                ..Default::default()
            },
            status: super::PodStatus {
                phase: st.phase,
                reason: st.reason,
                message: st.message,
                restart_count: st.restart_count,
                exit_code: st.exit_code,
                start_time: st.start_time,
                finish_time: st.finish_time,
                conditions: st
                    .conditions
                    .into_iter()
                    .map(|c| super::PodCondition {
                        type_: c.type_,
                        status: c.status,
                        last_transition_time: c.last_transition_time,
                        reason: c.reason,
                        message: c.message,
                    })
                    .collect(),
                observed_generation: st.observed_generation,
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Node {
    pub metadata: ObjectMeta,
    pub spec: NodeSpec,
    pub status: NodeStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct NodeSpec {
    pub unschedulable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct NodeStatus {
    pub ready: ReadyState,
    pub reason: String,
    pub message: String,
    pub last_heartbeat_time: Option<Time>,
    pub last_transition_time: Option<Time>,
    pub capacity: NodeCapacity,
    pub node_info: NodeInfo,
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct NodeCapacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct NodeInfo {
    pub architecture: String,
    pub operating_system: String,
    pub agent_version: String,
    pub wasm_engine: String,
}

impl From<Node> for super::Node {
    fn from(n: Node) -> Self {
        let st = n.status;
        super::Node {
            metadata: n.metadata.into(),
            spec: super::NodeSpec {
                unschedulable: n.spec.unschedulable,
                ..Default::default()
            },
            status: super::NodeStatus {
                ready: st.ready,
                reason: st.reason,
                message: st.message,
                last_heartbeat_time: st.last_heartbeat_time,
                last_transition_time: st.last_transition_time,
                capacity: super::NodeCapacity {
                    cpu_millis: st.capacity.cpu_millis,
                    memory_bytes: st.capacity.memory_bytes,
                    pods: st.capacity.pods,
                },
                node_info: super::NodeInfo {
                    architecture: st.node_info.architecture,
                    operating_system: st.node_info.operating_system,
                    agent_version: st.node_info.agent_version,
                    wasm_engine: st.node_info.wasm_engine,
                    ..Default::default()
                },
                addresses: st.addresses,
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Module {
    pub metadata: ObjectMeta,
    pub spec: ModuleSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ModuleSpec {
    pub digest: String,
    pub size: u64,
    pub source: String,
}

impl From<Module> for super::Module {
    fn from(m: Module) -> Self {
        super::Module {
            metadata: m.metadata.into(),
            spec: super::ModuleSpec {
                digest: m.spec.digest,
                size: m.spec.size,
                source: m.spec.source,
            },
            ..Default::default()
        }
    }
}

impl Pod {
    /// A pod as a protocol-2 master wrote it, for tests of the readers.
    #[doc(hidden)]
    pub fn example() -> Pod {
        let meta = ObjectMeta {
            name: "web".into(),
            namespace: "default".into(),
            uid: "u-1".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            annotations: BTreeMap::new(),
            resource_version: 9,
            generation: 1,
            creation_timestamp: Some(Time(5)),
            owner_references: vec![OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web-1".into(),
                uid: "u-0".into(),
                controller: true,
            }],
        };
        Pod {
            metadata: meta,
            spec: PodSpec {
                module: "sha256:ab".into(),
                args: vec!["-v".into()],
                env: vec![EnvVar {
                    name: "A".into(),
                    value: "1".into(),
                }],
                resources: ResourceRequirements {
                    requests: ResourceList {
                        cpu: Some(Quantity::new("100m")),
                        memory: None,
                    },
                    limits: ResourceList {
                        cpu: None,
                        memory: Some(Quantity::new("64Mi")),
                    },
                },
                node_selector: BTreeMap::new(),
                node_name: Some("pi-1".into()),
                restart_policy: RestartPolicy::Never,
            },
            status: PodStatus {
                phase: PodPhase::Running,
                reason: String::new(),
                message: String::new(),
                restart_count: 2,
                exit_code: None,
                start_time: Some(Time(6)),
                finish_time: None,
                conditions: vec![PodCondition {
                    type_: "Ready".into(),
                    status: true,
                    last_transition_time: Some(Time(7)),
                    reason: String::new(),
                    message: String::new(),
                }],
                observed_generation: 3,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Object;

    /// What a protocol-2 master wrote for a pod is read as the same pod.
    #[test]
    fn protocol_2_objects_are_read() {
        let old = Pod::example();
        // Variant 0 of the old `Object` enum, then the positional pod.
        let bytes = postcard::to_allocvec(&(0u8, &old)).unwrap();
        let Object::Pod(p) = postcard::from_bytes::<Object>(&bytes).unwrap() else {
            panic!("not a pod")
        };
        assert_eq!(p.metadata.name, "web");
        assert_eq!(p.metadata.owner_references[0].name, "web-1");
        assert_eq!(p.spec.env[0].value, "1");
        assert_eq!(p.spec.resources.limits.memory, Some(Quantity::new("64Mi")));
        assert_eq!(p.spec.node_name.as_deref(), Some("pi-1"));
        assert_eq!(p.spec.restart_policy, RestartPolicy::Never);
        assert_eq!(p.status.restart_count, 2);
        assert_eq!(p.status.conditions[0].last_transition_time, Some(Time(7)));
        assert!(p.spec.tolerations.is_empty());
    }
}
