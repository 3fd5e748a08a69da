//! The kinds of object the cluster stores: Pod, Node and Module, each an
//! envelope ([`ObjectMeta`]) around a spec (what is wanted) and a status
//! (what is observed), and [`Object`], the sum type the store and the wire use.

use crate::meta::ObjectMeta;
use crate::quantity::Quantity;
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The kinds of object, as written in a manifest's `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Kind {
    Pod,
    Node,
    Module,
}

impl Kind {
    /// Every kind, for listings and help texts.
    pub const ALL: [Kind; 3] = [Kind::Pod, Kind::Node, Kind::Module];

    /// The name as written in manifests (`Pod`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::Module => "Module",
        }
    }

    /// The plural used by the CLI (`pods`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Node => "nodes",
            Kind::Module => "modules",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        matches!(self, Kind::Pod)
    }

    /// Parses a kind the way kubectl does: `pod`, `pods`, `po`, `Pod`.
    pub fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "pod" | "pods" | "po" => Some(Kind::Pod),
            "node" | "nodes" | "no" => Some(Kind::Node),
            "module" | "modules" | "mod" => Some(Kind::Module),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Wasm program scheduled onto a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Pod {
    pub metadata: ObjectMeta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

/// What the user wants a pod to be.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PodSpec {
    /// A local path (the CLI uploads it), `sha256:<hex>` once uploaded.
    pub module: String,
    pub args: Vec<String>,
    pub env: Vec<EnvVar>,
    pub resources: ResourceRequirements,
    /// Labels a node must carry, e.g. `flotilla.dev/arch: arm64`.
    pub node_selector: BTreeMap<String, String>,
    /// Set by the master when the pod is bound to a node.
    pub node_name: Option<String>,
    pub restart_policy: RestartPolicy,
}

/// One environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// Requests and limits; today the runtime enforces `limits.memory` (see docs/manifests.md).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ResourceRequirements {
    pub requests: ResourceList,
    pub limits: ResourceList,
}

/// CPU and memory quantities.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ResourceList {
    pub cpu: Option<Quantity>,
    pub memory: Option<Quantity>,
}

/// When a finished pod is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// The phase of a pod, as in Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PodPhase {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl PodPhase {
    /// Whether the pod will not run again.
    pub fn is_terminal(self) -> bool {
        matches!(self, PodPhase::Succeeded | PodPhase::Failed)
    }
}

impl fmt::Display for PodPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the node observed of a pod.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PodStatus {
    pub phase: PodPhase,
    /// A CamelCase word: `Preparing`, `ModuleBackOff`, `CrashLoopBackOff`, `OOMKilled`, `Trap`, `StartError`, `InvalidModule`, `Completed`, `Error`, `Unschedulable`, `NodeLost`.
    pub reason: String,
    pub message: String,
    pub restart_count: u32,
    /// The exit code of the last run that ended.
    pub exit_code: Option<i32>,
    pub start_time: Option<Time>,
    pub finish_time: Option<Time>,
    pub conditions: Vec<PodCondition>,
    /// Bumped by the node on every report it makes (a sequence number of the node's reports).
    pub observed_generation: u64,
}

/// A milestone in a pod's life, with when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PodCondition {
    /// `PodScheduled`, `ModuleReady` or `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    pub status: bool,
    pub last_transition_time: Option<Time>,
    pub reason: String,
    pub message: String,
}

impl PodStatus {
    /// The condition of a type, if set.
    pub fn condition(&self, type_: &str) -> Option<&PodCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Sets (or replaces) a condition.
    pub fn set_condition(&mut self, c: PodCondition) {
        match self.conditions.iter_mut().find(|x| x.type_ == c.type_) {
            Some(x) => *x = c,
            None => self.conditions.push(c),
        }
    }
}

/// Condition types used on pods.
pub mod condition {
    pub const POD_SCHEDULED: &str = "PodScheduled";
    pub const MODULE_READY: &str = "ModuleReady";
    pub const READY: &str = "Ready";
}

/// An edge machine that runs pods.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Node {
    pub metadata: ObjectMeta,
    pub spec: NodeSpec,
    pub status: NodeStatus,
}

/// What the operator wants of a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeSpec {
    /// No new pods are bound to an unschedulable node.
    pub unschedulable: bool,
}

/// What a node reports of itself, plus the master's view of its liveness.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
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

/// Whether a node is fit to run pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeCapacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u32,
}

/// Facts about the node's machine and agent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NodeInfo {
    /// `amd64`, `arm64`, `arm`.
    pub architecture: String,
    pub operating_system: String,
    pub agent_version: String,
    /// `cranelift` or `pulley`.
    pub wasm_engine: String,
}

impl Node {
    /// Whether the master currently considers the node Ready.
    pub fn is_ready(&self) -> bool {
        self.status.ready == ReadyState::Ready
    }
}

/// An uploaded Wasm binary, addressed by its digest; the bytes are stored beside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Module {
    pub metadata: ObjectMeta,
    pub spec: ModuleSpec,
}

/// Digest, size and origin of a module.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ModuleSpec {
    /// `sha256:<64 hex>`.
    pub digest: String,
    pub size: u64,
    /// The file name it was uploaded from, for people.
    pub source: String,
}

/// The object name under which a module with this digest is stored
/// (`sha256-<hex>`: names cannot carry a colon).
pub fn module_name(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Whether a string is a well-formed `sha256:<64 lowercase hex>` digest.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

/// Any stored object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Object {
    Pod(Pod),
    Node(Node),
    Module(Module),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Node(_) => Kind::Node,
            Object::Module(_) => Kind::Module,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Pod(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Module(o) => &o.metadata,
        }
    }

    /// The object's metadata, mutably.
    pub fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Pod(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Module(o) => &mut o.metadata,
        }
    }

    /// The store key: `Kind/namespace/name`.
    pub fn key(&self) -> String {
        object_key(self.kind(), &self.meta().namespace, &self.meta().name)
    }

    /// `kind/name` or `kind/namespace/name` for messages.
    pub fn describe(&self) -> String {
        let m = self.meta();
        if m.namespace.is_empty() {
            format!("{}/{}", self.kind().plural(), m.name)
        } else {
            format!(
                "{}/{} in namespace {}",
                self.kind().plural(),
                m.name,
                m.namespace
            )
        }
    }

    /// The object as a JSON value in manifest shape (`apiVersion`, `kind` first).
    pub fn to_manifest_value(&self) -> serde_json::Value {
        let body = match self {
            Object::Pod(o) => serde_json::to_value(o),
            Object::Node(o) => serde_json::to_value(o),
            Object::Module(o) => serde_json::to_value(o),
        };
        let mut out = serde_json::Map::new();
        out.insert("apiVersion".into(), crate::API_VERSION.into());
        out.insert("kind".into(), self.kind().as_str().into());
        if let Ok(serde_json::Value::Object(m)) = body {
            out.extend(m);
        }
        serde_json::Value::Object(out)
    }

    /// Borrows the pod inside, if this is one.
    pub fn as_pod(&self) -> Option<&Pod> {
        match self {
            Object::Pod(p) => Some(p),
            _ => None,
        }
    }

    /// Borrows the node inside, if this is one.
    pub fn as_node(&self) -> Option<&Node> {
        match self {
            Object::Node(n) => Some(n),
            _ => None,
        }
    }
}

/// The store key of an object: `Kind/namespace/name` (namespace empty for cluster-scoped kinds).
pub fn object_key(kind: Kind, namespace: &str, name: &str) -> String {
    format!("{}/{}/{}", kind.as_str(), namespace, name)
}

/// The prefix of all keys of a kind (and namespace, if given).
pub fn key_prefix(kind: Kind, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{}/{}/", kind.as_str(), ns),
        None => format!("{}/", kind.as_str()),
    }
}
