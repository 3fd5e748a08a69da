//! DaemonSet: one pod on every node that suits it — the usual way to run
//! something on every Pi (a sensor reader, a log shipper). A node suits it
//! when it is not cordoned, matches the template's nodeSelector and
//! required node affinity, and its NoSchedule and NoExecute taints are
//! tolerated. New nodes get their pod as they join; a template change
//! replaces the pods node by node, at most `maxUnavailable` at a time.

use super::scheduling::LabelSelector;
use super::workload::{selector_unchanged, validate_template, IntOrPercent, PodTemplateSpec};
use super::{merge_parts, Resource};
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A pod on every suitable node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DaemonSet {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: DaemonSetSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: DaemonSetStatus,
}

/// Which pods, made from what, replaced how.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DaemonSetSpec {
    /// The pods this DaemonSet counts as its own (fixed once created).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub selector: LabelSelector,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub template: PodTemplateSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub update_strategy: DaemonSetUpdateStrategy,
    /// How long a new pod must have been ready to count as available.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub min_ready_seconds: u32,
}

/// How pods of an old template are replaced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DaemonSetUpdateStrategy {
    #[serde(rename = "type", skip_serializing_if = "crate::is_default")]
    pub type_: DaemonSetStrategyType,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub rolling_update: Option<RollingUpdateDaemonSet>,
}

/// RollingUpdate (the default): old pods are replaced node by node.
/// OnDelete: only when someone deletes them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum DaemonSetStrategyType {
    #[default]
    RollingUpdate,
    OnDelete,
}

/// Bounds of a DaemonSet's rolling update.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RollingUpdateDaemonSet {
    /// Nodes whose pod may be missing or not available during the update
    /// (a number or a percentage of the nodes, rounded up); 1 when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub max_unavailable: Option<IntOrPercent>,
}

impl DaemonSetSpec {
    /// maxUnavailable as a count of nodes out of `desired` (at least 1).
    pub fn max_unavailable(&self, desired: u32) -> u32 {
        self.update_strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.max_unavailable.as_ref())
            .map(|v| v.scaled(desired, true).unwrap_or(1))
            .unwrap_or(1)
            .max(1)
    }
}

/// What the controller observed, in nodes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DaemonSetStatus {
    /// Nodes that should run the pod.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub desired_number_scheduled: u32,
    /// Of those, the ones that have it.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub current_number_scheduled: u32,
    /// Nodes that run it but should not.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub number_misscheduled: u32,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub number_ready: u32,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub number_available: u32,
    /// Nodes whose pod is of the current template.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub updated_number_scheduled: u32,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub observed_generation: u64,
}

impl Resource for DaemonSet {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errors = validate_template(&s.selector, &s.template, true);
        let strategy = &s.update_strategy;
        match (&strategy.type_, &strategy.rolling_update) {
            (DaemonSetStrategyType::OnDelete, Some(_)) => errors.push(fe(
                "spec.updateStrategy.rollingUpdate",
                "only for type RollingUpdate; remove it or use that type",
            )),
            (_, Some(r)) => {
                if let Some(Err(e)) = r.max_unavailable.as_ref().map(|v| v.scaled(100, true)) {
                    errors.push(fe("spec.updateStrategy.rollingUpdate.maxUnavailable", e));
                }
            }
            _ => {}
        }
        errors
    }

    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        if !status_only {
            selector_unchanged(&stored.spec.selector, &incoming.spec.selector)?;
        }
        Ok(merge_parts(stored, incoming, status_only, |d| {
            (&mut d.metadata, &mut d.spec, &mut d.status)
        }))
    }

    fn module(&self) -> Option<&str> {
        Some(&self.spec.template.spec.module)
    }
}
