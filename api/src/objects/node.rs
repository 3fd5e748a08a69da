//! Node: an edge machine that runs pods, what the operator wants of it
//! (cordon, taints) and what it reports of itself.

use super::scheduling::{Taint, TaintEffect};
use super::{merge_parts, Resource};
use crate::manifest::{fe, is_label_key, is_label_value, FieldError};
use crate::meta::ObjectMeta;
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::fmt;

/// An edge machine that runs pods.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Node {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: NodeSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: NodeStatus,
}

/// What the operator wants of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeSpec {
    /// No new pods are bound to an unschedulable node.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub unschedulable: bool,
    /// Marks that repel pods without a matching toleration.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub taints: Vec<Taint>,
}

/// What a node reports of itself, plus the master's view of its liveness.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeStatus {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub ready: ReadyState,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub reason: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub message: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_heartbeat_time: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_transition_time: Option<Time>,
    /// What the machine has.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub capacity: NodeCapacity,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub node_info: NodeInfo,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub addresses: Vec<String>,
    /// What pods may use: capacity less what the node keeps for itself.
    /// All zero from a node that does not report it: the scheduler then
    /// takes the capacity.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub allocatable: NodeCapacity,
    /// The interfaces the node's runtime links for guests, e.g.
    /// `wasi:cli/environment@0.2.6` or `wasi_snapshot_preview1`, less those
    /// the operator withholds (`flotilla node --deny`).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub interfaces: Vec<String>,
    /// Digests of the modules whose compiled code the node holds (as
    /// Kubernetes' `status.images`): the scheduler prefers a node that
    /// need not fetch and compile a pod's module.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub modules: Vec<String>,
    /// The persistent volumes the node holds, as `namespace/name`: the
    /// scheduler sends every pod that mounts one to this node.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub volumes: Vec<String>,
    /// Where other nodes' proxies reach this node's proxy over QUIC
    /// (`IP:PORT`).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub proxy_endpoint: String,
    /// How the node came by the code of the modules it ran.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub code: CodeCounts,
}

/// Whether a node is fit to run pods.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ReadyState {
    #[default]
    Unknown,
    Ready,
    NotReady,
}

impl fmt::Display for ReadyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Resources of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeCapacity {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub cpu_millis: u64,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub memory_bytes: u64,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub pods: u32,
}

/// Facts about the node's machine and agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeInfo {
    /// `amd64`, `arm64`, `arm`.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub architecture: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub operating_system: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub agent_version: String,
    /// `cranelift` or `pulley`.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub wasm_engine: String,
    /// How the node's wasmtime engine is set up for its device; empty from
    /// nodes older than device classes.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub engine: NodeEngine,
}

/// A node's engine profile: what it chose for its device class (or was
/// told by its flags), and the fingerprint of the code its engine runs.
/// Masters compile modules for the profiles their nodes report
/// ([`NodeEngine::code`]), so that a node loads code instead of compiling.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeEngine {
    /// `tiny`, `small` or `standard`, from the machine's memory.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub class: String,
    /// The code the engine runs, which a master must reproduce.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub code: CodeTarget,
    /// A short hex digest of everything in the engine that compiled code
    /// depends on (target, CPU features, tunables, wasmtime's version).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub fingerprint: String,
    /// Instance slots of the pool http pods are served from (0: none).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub http_slots: u32,
    /// Worker threads of the node's async runtime, which runs its pods.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub runtime_threads: u32,
}

/// What compiled code is for: enough for a master to set up the same
/// engine and check it by the fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CodeTarget {
    /// A target triple (`aarch64-unknown-linux-gnu`), or `pulley32` /
    /// `pulley64` for wasmtime's interpreter.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub target: String,
    /// `baseline`: code for any CPU of the architecture, which any master
    /// can produce; `native`: code for this machine's CPU features, which
    /// only a master on the same CPU can.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub cpu: String,
    /// Address space reserved for each linear memory, in bytes.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub memory_reservation: u64,
    /// Guard region after each linear memory, in bytes.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub memory_guard: u64,
}

/// How a node came by its compiled code since it started.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CodeCounts {
    /// Modules the node compiled itself.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub compiled: u64,
    /// Modules whose code a master compiled for it.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub precompiled: u64,
    /// Modules whose code was in its disk cache already.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub cached: u64,
}

impl Node {
    /// Whether the master currently considers the node Ready.
    pub fn is_ready(&self) -> bool {
        self.status.ready == ReadyState::Ready
    }

    /// What pods may use: the allocatable the node reports, else its capacity.
    pub fn allocatable(&self) -> &NodeCapacity {
        if self.status.allocatable == NodeCapacity::default() {
            &self.status.capacity
        } else {
            &self.status.allocatable
        }
    }
}

impl Resource for Node {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut seen: Vec<(&str, TaintEffect)> = Vec::new();
        for (i, t) in self.spec.taints.iter().enumerate() {
            if !is_label_key(&t.key) {
                errors.push(fe(
                    format!("spec.taints[{i}].key"),
                    format!("{:?} is not a valid taint key (a label key)", t.key),
                ));
            }
            if !is_label_value(&t.value) {
                errors.push(fe(
                    format!("spec.taints[{i}].value"),
                    format!("{:?} is not a valid taint value (a label value)", t.value),
                ));
            }
            if seen.contains(&(t.key.as_str(), t.effect)) {
                errors.push(fe(
                    format!("spec.taints[{i}]"),
                    format!("the taint {}:{} is set twice", t.key, t.effect),
                ));
            }
            seen.push((&t.key, t.effect));
        }
        errors
    }

    fn merge(stored: &Node, incoming: Node, status_only: bool) -> Result<Node, String> {
        Ok(merge_parts(stored, incoming, status_only, |n| {
            (&mut n.metadata, &mut n.spec, &mut n.status)
        }))
    }
}
