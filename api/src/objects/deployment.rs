//! Deployment: a ReplicaSet per version of a pod template, and rollouts
//! between them. Changing the template starts a rollout: a new ReplicaSet
//! grows while the old ones shrink, within `maxSurge` extra pods and
//! `maxUnavailable` missing ones (RollingUpdate), or all old pods go first
//! (Recreate). Old ReplicaSets, scaled to 0, are the revisions a rollback
//! returns to.

use super::replica_set::MAX_REPLICAS;
use super::scheduling::LabelSelector;
use super::workload::{
    selector_unchanged, validate_template, Condition, IntOrPercent, PodTemplateSpec,
};
use super::{merge_parts, Resource};
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

/// Condition types of a Deployment.
pub mod condition {
    /// At least `replicas − maxUnavailable` pods are available.
    pub const AVAILABLE: &str = "Available";
    /// The rollout moves (or is done); False once it has not moved for
    /// `progressDeadlineSeconds`.
    pub const PROGRESSING: &str = "Progressing";
}

/// Reasons of the Progressing condition, as Kubernetes names them.
pub mod reason {
    pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
    pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
    pub const RS_UPDATED: &str = "ReplicaSetUpdated";
    pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
    pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    pub const PAUSED: &str = "DeploymentPaused";
    pub const RESUMED: &str = "DeploymentResumed";
    pub const MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
    pub const MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";
}

/// A versioned set of identical pods.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Deployment {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: DeploymentSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: DeploymentStatus,
}

/// What the user wants.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DeploymentSpec {
    /// How many pods; 1 when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub replicas: Option<u32>,
    /// The pods this Deployment counts as its own (fixed once created).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub selector: LabelSelector,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub template: PodTemplateSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub strategy: DeploymentStrategy,
    /// How long a new pod must have been ready to count as available.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub min_ready_seconds: u32,
    /// Old ReplicaSets kept for rollbacks; 10 when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub revision_history_limit: Option<u32>,
    /// A paused Deployment scales but does not roll out template changes.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub paused: bool,
    /// A rollout that makes no progress for this long is reported failed
    /// (Progressing False, ProgressDeadlineExceeded); 600 when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub progress_deadline_seconds: Option<u32>,
}

impl DeploymentSpec {
    pub fn replicas(&self) -> u32 {
        self.replicas.unwrap_or(1)
    }

    pub fn revision_history_limit(&self) -> u32 {
        self.revision_history_limit.unwrap_or(10)
    }

    pub fn progress_deadline_seconds(&self) -> u32 {
        self.progress_deadline_seconds.unwrap_or(600)
    }

    /// maxSurge and maxUnavailable as counts of pods (RollingUpdate), as
    /// Kubernetes resolves them: surge rounded up, unavailable down, and
    /// never both 0 (then one pod may be unavailable). Recreate: (0, all).
    pub fn surge_and_unavailable(&self) -> Result<(u32, u32), String> {
        let replicas = self.replicas();
        match self.strategy.type_ {
            StrategyType::Recreate => Ok((0, replicas)),
            StrategyType::RollingUpdate => {
                let ru = self.strategy.rolling_update.clone().unwrap_or_default();
                let quarter = IntOrPercent::Str("25%".into());
                let surge = ru
                    .max_surge
                    .unwrap_or_else(|| quarter.clone())
                    .scaled(replicas, true)?;
                let unavailable = ru
                    .max_unavailable
                    .unwrap_or(quarter)
                    .scaled(replicas, false)?
                    .min(replicas);
                if surge == 0 && unavailable == 0 {
                    Ok((0, 1))
                } else {
                    Ok((surge, unavailable))
                }
            }
        }
    }
}

/// How old pods are replaced by new ones.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DeploymentStrategy {
    #[serde(rename = "type", skip_serializing_if = "crate::is_default")]
    pub type_: StrategyType,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub rolling_update: Option<RollingUpdate>,
}

/// RollingUpdate (the default) or Recreate.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum StrategyType {
    #[default]
    RollingUpdate,
    Recreate,
}

/// Bounds of a rolling update; 25% each when left out.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RollingUpdate {
    /// Pods above `replicas` while rolling out (a number or a percentage, rounded up).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub max_surge: Option<IntOrPercent>,
    /// Pods below `replicas` that may be unavailable (a number or a percentage, rounded down).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub max_unavailable: Option<IntOrPercent>,
}

/// What the controller observed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct DeploymentStatus {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub observed_generation: u64,
    /// Pods of every ReplicaSet of the Deployment that have not ended.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub replicas: u32,
    /// Of those, the ones made from the current template.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub updated_replicas: u32,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub ready_replicas: u32,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub available_replicas: u32,
    /// `replicas` wanted minus those available (never below 0).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub unavailable_replicas: u32,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub conditions: Vec<Condition>,
}

impl Resource for Deployment {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errors = validate_template(&s.selector, &s.template, true);
        if s.replicas() > MAX_REPLICAS {
            errors.push(fe("spec.replicas", format!("at most {MAX_REPLICAS}")));
        }
        if s.progress_deadline_seconds == Some(0) {
            errors.push(fe(
                "spec.progressDeadlineSeconds",
                "must be more than 0 (and more than minReadySeconds)",
            ));
        }
        if let Some(deadline) = s.progress_deadline_seconds {
            if deadline != 0 && deadline <= s.min_ready_seconds {
                errors.push(fe(
                    "spec.progressDeadlineSeconds",
                    format!(
                        "must be more than minReadySeconds ({})",
                        s.min_ready_seconds
                    ),
                ));
            }
        }
        match s.strategy.type_ {
            StrategyType::Recreate if s.strategy.rolling_update.is_some() => {
                errors.push(fe(
                    "spec.strategy.rollingUpdate",
                    "only for strategy type RollingUpdate; remove it or use that type",
                ));
            }
            _ => {
                let ru = s.strategy.rolling_update.clone().unwrap_or_default();
                for (field, v) in [
                    ("maxSurge", &ru.max_surge),
                    ("maxUnavailable", &ru.max_unavailable),
                ] {
                    if let Some(Err(e)) = v.as_ref().map(|v| v.scaled(100, true)) {
                        errors.push(fe(format!("spec.strategy.rollingUpdate.{field}"), e));
                    }
                }
                let zero = |v: &Option<IntOrPercent>| {
                    v.as_ref().is_some_and(|v| v.scaled(100, true) == Ok(0))
                };
                if zero(&ru.max_surge) && zero(&ru.max_unavailable) {
                    errors.push(fe(
                        "spec.strategy.rollingUpdate",
                        "maxSurge and maxUnavailable may not both be 0: the rollout could never move",
                    ));
                }
            }
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
        Ok(merge_parts(stored, incoming, status_only, |d| {
            (&mut d.metadata, &mut d.spec, &mut d.status)
        }))
    }
}
