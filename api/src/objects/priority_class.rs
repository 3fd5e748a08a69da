//! PriorityClass: a name for a pod priority, as in Kubernetes. A pod names
//! one in `priorityClassName`; the master writes its value into the pod's
//! `priority` when the pod is created, and the scheduler places pending
//! pods by priority and lets a higher one preempt lower ones.

use super::scheduling::PreemptionPolicy;
use super::Resource;
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A named priority for pods.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PriorityClass {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    /// Higher runs first; user classes are at most [`HIGHEST_USER_PRIORITY`].
    #[serde(skip_serializing_if = "crate::is_default")]
    pub value: i32,
    /// Pods that name no class get this one's value (at most one class is the default).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub global_default: bool,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub description: String,
    /// `Never`: pods of this class wait rather than preempt others.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub preemption_policy: PreemptionPolicy,
}

/// The highest value a user-made class may have; above it, up to
/// [`SYSTEM_CRITICAL`], are the built-in `system-` classes.
pub const HIGHEST_USER_PRIORITY: i32 = 1_000_000_000;
/// `system-cluster-critical`.
pub const SYSTEM_CLUSTER_CRITICAL: i32 = 2_000_000_000;
/// `system-node-critical`, the highest priority.
pub const SYSTEM_CRITICAL: i32 = 2_000_001_000;

/// The classes every cluster has, as in Kubernetes.
pub fn builtin(name: &str) -> Option<i32> {
    match name {
        "system-cluster-critical" => Some(SYSTEM_CLUSTER_CRITICAL),
        "system-node-critical" => Some(SYSTEM_CRITICAL),
        _ => None,
    }
}

impl Resource for PriorityClass {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.metadata.name.starts_with("system-") {
            errors.push(fe(
                "metadata.name",
                "names starting with system- are reserved for the built-in classes \
                 (system-cluster-critical, system-node-critical)",
            ));
        }
        if self.value > HIGHEST_USER_PRIORITY {
            errors.push(fe(
                "value",
                format!("at most {HIGHEST_USER_PRIORITY} (higher values are reserved for system classes)"),
            ));
        }
        if self.description.len() > 4096 {
            errors.push(fe("description", "at most 4096 bytes"));
        }
        errors
    }

    /// The value is fixed once created (pods already carry it): change the
    /// description, labels and annotations only.
    fn merge(
        stored: &PriorityClass,
        incoming: PriorityClass,
        status_only: bool,
    ) -> Result<PriorityClass, String> {
        if status_only {
            return Err("priority classes have no status to update".into());
        }
        if (
            stored.value,
            stored.global_default,
            stored.preemption_policy,
        ) != (
            incoming.value,
            incoming.global_default,
            incoming.preemption_policy,
        ) {
            return Err(
                "value, globalDefault and preemptionPolicy cannot change once created; \
                 create a new class and move pods to it"
                    .into(),
            );
        }
        let mut out = stored.clone();
        out.description = incoming.description;
        out.metadata = super::merge_meta(&stored.metadata, incoming.metadata, false);
        Ok(out)
    }
}
