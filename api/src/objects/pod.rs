//! Pod: a Wasm program the scheduler places on a node, and what the node
//! observed of it.

use super::scheduling::{Affinity, PreemptionPolicy, Toleration, TopologySpreadConstraint};
use super::{merge_parts, Resource};
use crate::manifest::{fe, is_dns_subdomain, is_label_key, is_label_value, FieldError};
use crate::meta::ObjectMeta;
use crate::quantity::{parse_bytes, parse_millicores, Quantity};
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// A Wasm program scheduled onto a node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Pod {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: PodSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: PodStatus,
}

/// What the user wants a pod to be.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PodSpec {
    /// A local path (the CLI uploads it), `sha256:<hex>` once uploaded.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub module: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub args: Vec<String>,
    /// The program's name as it sees it (`argv[0]`); the pod's name when
    /// left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub argv0: Option<String>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub env: Vec<EnvVar>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub resources: ResourceRequirements,
    /// Labels a node must carry, e.g. `flotilla.dev/arch: arm64`.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub node_selector: BTreeMap<String, String>,
    /// Set by the master when the pod is bound to a node.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub node_name: Option<String>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub restart_policy: RestartPolicy,
    /// Taints this pod accepts on its node.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub tolerations: Vec<Toleration>,
    /// Node affinity: required rules filter nodes, preferred ones score them.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub affinity: Option<Affinity>,
    /// How this pod and its siblings spread over a node label's values.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// A PriorityClass; the master sets `priority` from it.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub priority_class_name: String,
    /// Set by the master from `priorityClassName` (or the default class).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub priority: Option<i32>,
    /// Set by the master from the PriorityClass.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub preemption_policy: Option<PreemptionPolicy>,
    /// Every key of some ConfigMaps as variables (before `env`, which wins).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub env_from: Vec<EnvFromSource>,
    /// Directories the pod may mount ([`super::volume`]).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub volumes: Vec<super::volume::Volume>,
    /// Where the program sees them: each a WASI preopened directory.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub volume_mounts: Vec<super::volume::VolumeMount>,
    /// What the program may reach over the network; nothing when left
    /// out ([`super::network`]).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub network: super::network::NetworkSpec,
    /// Limits on an http pod's requests ([`super::http`]).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub http: super::http::HttpOptions,
    /// Whether the pod may get traffic: failing, it leaves its Services'
    /// endpoints until it passes again.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub readiness_probe: Option<super::http::Probe>,
    /// Whether the pod is alive: failing, its program is restarted.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub liveness_probe: Option<super::http::Probe>,
    /// Whether the pod has started: until it passes, the other probes
    /// wait; failing, the program is restarted.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub startup_probe: Option<super::http::Probe>,
}

impl PodSpec {
    /// Fills what the master sets on a pod and a manifest leaves out — the
    /// binding, the priority and its policy, the default class — from the
    /// stored spec, so that applying an unchanged manifest again changes
    /// nothing.
    pub fn keep_server_fields(&mut self, stored: &PodSpec) {
        if self.node_name.is_none() {
            self.node_name = stored.node_name.clone();
        }
        if self.priority_class_name.is_empty() {
            self.priority_class_name = stored.priority_class_name.clone();
        }
        if self.priority.is_none() {
            self.priority = stored.priority;
        }
        if self.preemption_policy.is_none() {
            self.preemption_policy = stored.preemption_policy;
        }
    }
}

/// One environment variable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EnvVar {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub value: String,
    /// Where the value comes from instead of `value`, read by the node
    /// each time the program starts.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub value_from: Option<EnvVarSource>,
}

/// A variable's value from a ConfigMap's or a Secret's key, or from the
/// pod itself.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EnvVarSource {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub config_map_key_ref: Option<KeySelector>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub secret_key_ref: Option<KeySelector>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub field_ref: Option<FieldSelector>,
}

/// A key of a ConfigMap or a Secret in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct KeySelector {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub key: String,
    /// A missing object or key leaves the variable unset instead of
    /// holding the program back.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub optional: bool,
}

/// A field of the pod: one of [`FIELD_PATHS`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FieldSelector {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub field_path: String,
}

/// The pod fields a variable may hold (Kubernetes' names).
pub const FIELD_PATHS: [&str; 4] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
];

/// All the keys of a ConfigMap or a Secret as variables.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EnvFromSource {
    /// Put before each key's name.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub prefix: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub config_map_ref: Option<EnvSourceRef>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub secret_ref: Option<EnvSourceRef>,
}

/// A ConfigMap or Secret in the pod's namespace whose keys become variables.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EnvSourceRef {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub optional: bool,
}

impl PodSpec {
    /// The ConfigMaps the pod uses (volumes, env, envFrom), by name.
    pub fn config_maps(&self) -> std::collections::BTreeSet<&str> {
        let mut out = std::collections::BTreeSet::new();
        for v in &self.volumes {
            if let Some(c) = &v.config_map {
                out.insert(c.name.as_str());
            }
        }
        for e in &self.env {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|f| f.config_map_key_ref.as_ref())
            {
                out.insert(r.name.as_str());
            }
        }
        for e in &self.env_from {
            if let Some(r) = &e.config_map_ref {
                out.insert(r.name.as_str());
            }
        }
        out
    }

    /// The Secrets the pod uses (volumes, env, envFrom), by name.
    pub fn secrets(&self) -> std::collections::BTreeSet<&str> {
        let mut out = std::collections::BTreeSet::new();
        for v in &self.volumes {
            if let Some(s) = &v.secret {
                out.insert(s.secret_name.as_str());
            }
        }
        for e in &self.env {
            if let Some(r) = e
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            {
                out.insert(r.name.as_str());
            }
        }
        for e in &self.env_from {
            if let Some(r) = &e.secret_ref {
                out.insert(r.name.as_str());
            }
        }
        out
    }
}

/// Requests (what the scheduler reserves) and limits (what the node
/// enforces); see docs/manifests.md.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ResourceRequirements {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub requests: ResourceList,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub limits: ResourceList,
}

/// CPU and memory quantities.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ResourceList {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub cpu: Option<Quantity>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub memory: Option<Quantity>,
}

impl ResourceRequirements {
    /// What the scheduler reserves: the request, else the limit (as
    /// Kubernetes defaults a missing request to the limit), else nothing.
    /// Millicores and bytes; validation guarantees the quantities parse.
    pub fn reserved(&self) -> (u64, u64) {
        let pick = |r: &Option<Quantity>, l: &Option<Quantity>, f: fn(&str) -> Result<u64, _>| {
            r.as_ref()
                .or(l.as_ref())
                .and_then(|q| f(&q.0).ok())
                .unwrap_or(0)
        };
        (
            pick(&self.requests.cpu, &self.limits.cpu, parse_millicores),
            pick(&self.requests.memory, &self.limits.memory, parse_bytes),
        )
    }
}

/// When a finished pod is started again.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// The phase of a pod, as in Kubernetes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PodStatus {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub phase: PodPhase,
    /// A CamelCase word: `Preparing`, `ModuleBackOff`, `CrashLoopBackOff`, `OOMKilled`, `Trap`, `StartError`, `InvalidModule`, `Completed`, `Error`, `Unschedulable`, `NodeLost`, `Preempted`.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub reason: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub message: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub restart_count: u32,
    /// The exit code of the last run that ended.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub start_time: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub finish_time: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub conditions: Vec<PodCondition>,
    /// Bumped by the node on every report it makes (a sequence number of the node's reports).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub observed_generation: u64,
    /// The node on which the scheduler evicted lower-priority pods to make
    /// room for this one, while they stop.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub nominated_node_name: Option<String>,
    /// Set by the node: what the program tried to reach outside
    /// `spec.network`, refused.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub network_refusals: Option<super::network::NetworkRefusals>,
    /// How the last run that was followed by a restart ended (kubectl's
    /// Last State): set once the program has been restarted.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_state: Option<LastState>,
}

/// How one run of a pod's program ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LastState {
    /// The program's exit code, or the code of how it was ended (see `exitCode`).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub exit_code: Option<i32>,
    /// Empty for a plain exit; `OOMKilled`, `Trap`, `Unhealthy`… otherwise.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub reason: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub message: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub started_at: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub finished_at: Option<Time>,
}

/// A milestone in a pod's life, with when it happened.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PodCondition {
    /// `PodScheduled`, `ModuleReady` or `Ready`.
    #[serde(rename = "type")]
    #[serde(skip_serializing_if = "crate::is_default")]
    pub type_: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: bool,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_transition_time: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub reason: String,
    #[serde(skip_serializing_if = "crate::is_default")]
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

/// Maximum number of args, env vars and their total size, so one pod cannot bloat the store.
const MAX_ARGS: usize = 1024;
const MAX_SPEC_TEXT: usize = 256 * 1024;

impl Resource for Pod {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = validate_spec(&self.spec);
        errors.extend(super::scheduling::validate_placement(
            &self.spec.tolerations,
            self.spec.affinity.as_ref(),
            &self.spec.topology_spread_constraints,
        ));
        errors
    }

    fn module(&self) -> Option<&str> {
        Some(&self.spec.module)
    }

    fn merge(stored: &Pod, incoming: Pod, status_only: bool) -> Result<Pod, String> {
        Ok(merge_parts(stored, incoming, status_only, |p| {
            (&mut p.metadata, &mut p.spec, &mut p.status)
        }))
    }
}

pub(crate) fn validate_spec(s: &PodSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if s.module.trim().is_empty() {
        errors.push(fe(
            "spec.module",
            "required: a path to a .wasm file, or a sha256: digest",
        ));
    } else if s.module.starts_with("sha256:") && !super::is_digest(&s.module) {
        errors.push(fe(
            "spec.module",
            format!("{:?} is not a sha256:<64 hex digits> digest", s.module),
        ));
    }
    if s.argv0
        .as_deref()
        .is_some_and(|a| a.is_empty() || a.len() > 4096 || a.contains('\0'))
    {
        errors.push(fe(
            "spec.argv0",
            "1 to 4096 bytes without NUL (leave it out for the pod's name)",
        ));
    }
    if s.args.len() > MAX_ARGS {
        errors.push(fe("spec.args", format!("at most {MAX_ARGS} arguments")));
    }
    let text: usize = s.args.iter().map(String::len).sum::<usize>()
        + s.env
            .iter()
            .map(|e| e.name.len() + e.value.len())
            .sum::<usize>();
    if text > MAX_SPEC_TEXT {
        errors.push(fe(
            "spec",
            format!("args and env add up to {text} bytes; the limit is {MAX_SPEC_TEXT}"),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in s.env.iter().enumerate() {
        if e.name.is_empty() || e.name.contains('=') || e.name.contains('\0') {
            errors.push(fe(
                format!("spec.env[{i}].name"),
                format!(
                    "{:?} is not a valid variable name (non-empty, no '=')",
                    e.name
                ),
            ));
        } else if !seen.insert(&e.name) {
            errors.push(fe(
                format!("spec.env[{i}].name"),
                format!("{:?} is set twice", e.name),
            ));
        }
        if let Some(from) = &e.value_from {
            let at = format!("spec.env[{i}].valueFrom");
            if !e.value.is_empty() {
                errors.push(fe(&at, "give value or valueFrom, not both"));
            }
            let key_ref = |field: &str, what: &str, r: &KeySelector, errors: &mut Vec<_>| {
                if !is_dns_subdomain(&r.name) {
                    errors.push(fe(
                        format!("{at}.{field}.name"),
                        format!("{:?} is not a valid {what} name", r.name),
                    ));
                }
                if !super::config_map::is_key(&r.key) {
                    errors.push(fe(
                        format!("{at}.{field}.key"),
                        format!("{:?} is not a valid key", r.key),
                    ));
                }
            };
            match (
                &from.config_map_key_ref,
                &from.secret_key_ref,
                &from.field_ref,
            ) {
                (Some(r), None, None) => key_ref("configMapKeyRef", "ConfigMap", r, &mut errors),
                (None, Some(r), None) => key_ref("secretKeyRef", "Secret", r, &mut errors),
                (None, None, Some(f)) => {
                    if !FIELD_PATHS.contains(&f.field_path.as_str()) {
                        errors.push(fe(
                            format!("{at}.fieldRef.fieldPath"),
                            format!("{:?}: use one of {}", f.field_path, FIELD_PATHS.join(", ")),
                        ));
                    }
                }
                _ => errors.push(fe(
                    &at,
                    "give exactly one of configMapKeyRef: {name, key}, secretKeyRef: {name, key} \
                     or fieldRef: {fieldPath}",
                )),
            }
        }
    }
    for (i, e) in s.env_from.iter().enumerate() {
        match (&e.config_map_ref, &e.secret_ref) {
            (Some(r), None) | (None, Some(r)) if is_dns_subdomain(&r.name) => {}
            (Some(r), None) => errors.push(fe(
                format!("spec.envFrom[{i}].configMapRef.name"),
                format!("{:?} is not a valid ConfigMap name", r.name),
            )),
            (None, Some(r)) => errors.push(fe(
                format!("spec.envFrom[{i}].secretRef.name"),
                format!("{:?} is not a valid Secret name", r.name),
            )),
            _ => errors.push(fe(
                format!("spec.envFrom[{i}]"),
                "give exactly one of configMapRef: {name: NAME} or secretRef: {name: NAME}",
            )),
        }
    }
    let mut amounts = [[None; 2]; 2];
    for (j, (section, list)) in [
        ("requests", &s.resources.requests),
        ("limits", &s.resources.limits),
    ]
    .into_iter()
    .enumerate()
    {
        if let Some(q) = &list.cpu {
            match parse_millicores(&q.0) {
                Ok(v) => amounts[j][0] = Some(v),
                Err(e) => errors.push(fe(format!("spec.resources.{section}.cpu"), e.to_string())),
            }
        }
        if let Some(q) = &list.memory {
            match parse_bytes(&q.0) {
                Ok(0) => errors.push(fe(
                    format!("spec.resources.{section}.memory"),
                    "must be more than 0",
                )),
                Ok(v) => amounts[j][1] = Some(v),
                Err(e) => errors.push(fe(
                    format!("spec.resources.{section}.memory"),
                    e.to_string(),
                )),
            }
        }
    }
    for (i, name) in ["cpu", "memory"].iter().enumerate() {
        if let (Some(req), Some(lim)) = (amounts[0][i], amounts[1][i]) {
            if req > lim {
                errors.push(fe(
                    format!("spec.resources.requests.{name}"),
                    format!("must not exceed spec.resources.limits.{name}"),
                ));
            }
        }
    }
    for (k, v) in &s.node_selector {
        if !is_label_key(k) || !is_label_value(v) {
            errors.push(fe(
                format!("spec.nodeSelector.{k}"),
                "not a valid label key and value",
            ));
        }
    }
    if let Some(n) = &s.node_name {
        if !is_dns_subdomain(n) {
            errors.push(fe(
                "spec.nodeName",
                format!("{n:?} is not a valid node name"),
            ));
        }
    }
    errors.extend(super::volume::validate(&s.volumes, &s.volume_mounts));
    errors.extend(super::network::validate(&s.network));
    errors.extend(super::http::validate_http(&s.http));
    for (at, probe) in [
        ("spec.readinessProbe", &s.readiness_probe),
        ("spec.livenessProbe", &s.liveness_probe),
        ("spec.startupProbe", &s.startup_probe),
    ] {
        if let Some(p) = probe {
            errors.extend(super::http::validate_probe(at, p));
        }
    }
    if !s.priority_class_name.is_empty() && !is_dns_subdomain(&s.priority_class_name) {
        errors.push(fe(
            "spec.priorityClassName",
            format!(
                "{:?} is not a valid PriorityClass name",
                s.priority_class_name
            ),
        ));
    }
    errors
}
