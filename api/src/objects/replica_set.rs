//! ReplicaSet: keeps a number of pods made from one template running. Its
//! controller (on the master) creates and deletes pods to match, adopts
//! matching pods that have no owner, and reports how many are ready and
//! available. Usually made and scaled by a Deployment, not by hand.

use super::scheduling::LabelSelector;
use super::workload::{selector_unchanged, validate_template, PodTemplateSpec};
use super::{merge_parts, Resource};
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Most replicas one object may ask for.
pub const MAX_REPLICAS: u32 = 100_000;

/// A set of identical pods, kept at a count.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ReplicaSet {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: ReplicaSetSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: ReplicaSetStatus,
}

/// How many pods, which ones, and made from what.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ReplicaSetSpec {
    /// How many pods; 1 when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub replicas: Option<u32>,
    /// The pods this set counts as its own (fixed once created).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub selector: LabelSelector,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub template: PodTemplateSpec,
    /// How long a pod must have been ready to count as available.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub min_ready_seconds: u32,
}

impl ReplicaSetSpec {
    /// The wanted number of pods.
    pub fn replicas(&self) -> u32 {
        self.replicas.unwrap_or(1)
    }
}

/// What the controller observed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ReplicaSetStatus {
    /// Pods the set owns that have not ended.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub replicas: u32,
    /// Of those, the ones whose Ready condition is true.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub ready_replicas: u32,
    /// Of those, the ones ready for at least `minReadySeconds`.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub available_replicas: u32,
    /// The generation of the spec these figures answer.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub observed_generation: u64,
}

impl Resource for ReplicaSet {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = validate_template(&self.spec.selector, &self.spec.template, true);
        if self.spec.replicas() > MAX_REPLICAS {
            errors.push(fe("spec.replicas", format!("at most {MAX_REPLICAS}")));
        }
        errors
    }

    fn module(&self) -> Option<&str> {
        Some(&self.spec.template.spec.module)
    }

    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        if !status_only {
            selector_unchanged(&stored.spec.selector, &incoming.spec.selector)?;
        }
        Ok(merge_parts(stored, incoming, status_only, |r| {
            (&mut r.metadata, &mut r.spec, &mut r.status)
        }))
    }
}
