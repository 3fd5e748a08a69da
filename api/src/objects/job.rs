//! Job: runs pods of one template until a number of them have succeeded
//! (`completions`), at most `parallelism` at a time, and gives up after
//! `backoffLimit` failures or `activeDeadlineSeconds`. Its pods are the
//! ones it owns (ownerReferences), each labelled `job-name: NAME`.

use super::pod::RestartPolicy;
use super::workload::{validate_pod_template, Condition, ConditionStatus, PodTemplateSpec};
use super::{merge_parts, Resource};
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use crate::time::Time;
use serde::{Deserialize, Serialize};

/// The label every pod of a Job carries, naming the Job (as Kubernetes labels them).
pub const JOB_NAME_LABEL: &str = "job-name";

/// Most completions or parallel pods one Job may ask for.
pub const MAX_COMPLETIONS: u32 = 100_000;

/// Condition types of a Job.
pub mod condition {
    /// The Job reached its completions.
    pub const COMPLETE: &str = "Complete";
    /// The Job gave up (see the reasons).
    pub const FAILED: &str = "Failed";
    /// The Job is suspended: it runs no pods.
    pub const SUSPENDED: &str = "Suspended";
}

/// Reasons of a Job's conditions, as Kubernetes names them.
pub mod reason {
    pub const COMPLETIONS_REACHED: &str = "CompletionsReached";
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const SUSPENDED: &str = "JobSuspended";
}

/// Pods run to completion.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Job {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: JobSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: JobStatus,
}

/// How many pods must succeed, how many run at once, and when to give up.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct JobSpec {
    /// Pods that must succeed; 1 when left out (fixed once created).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub completions: Option<u32>,
    /// Most pods running at once; 1 when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub parallelism: Option<u32>,
    /// Failures (failed pods, and restarts under OnFailure) allowed before
    /// the Job fails; 6 when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub backoff_limit: Option<u32>,
    /// Seconds the Job may run, from its start, before it fails.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub active_deadline_seconds: Option<u64>,
    /// Seconds after the Job finishes (Complete or Failed) when it is
    /// deleted with its pods; kept until deleted when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub ttl_seconds_after_finished: Option<u32>,
    /// A suspended Job runs no pods (those running are stopped) and its
    /// deadline does not run.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub suspend: bool,
    /// The pods; restartPolicy must be Never or OnFailure (fixed once created).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub template: PodTemplateSpec,
}

impl JobSpec {
    pub fn completions(&self) -> u32 {
        self.completions.unwrap_or(1)
    }

    pub fn parallelism(&self) -> u32 {
        self.parallelism.unwrap_or(1)
    }

    pub fn backoff_limit(&self) -> u32 {
        self.backoff_limit.unwrap_or(6)
    }

    /// Checks with field paths under `prefix` (`spec`, or a CronJob's
    /// `spec.jobTemplate.spec`).
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors: Vec<FieldError> = validate_pod_template(&self.template)
            .into_iter()
            .map(|e| FieldError {
                path: format!("{prefix}.{}", e.path.trim_start_matches("spec.")),
                message: e.message,
            })
            .collect();
        if self.template.spec.restart_policy == RestartPolicy::Always {
            errors.push(fe(
                format!("{prefix}.template.spec.restartPolicy"),
                "a Job's pods must end: write Never (a failed pod is replaced by a new one) \
                 or OnFailure (it is restarted in place)",
            ));
        }
        for (field, v) in [
            ("completions", self.completions),
            ("parallelism", self.parallelism),
        ] {
            match v {
                Some(0) if field == "completions" => errors.push(fe(
                    format!("{prefix}.{field}"),
                    "must be at least 1 (leave it out for 1)",
                )),
                Some(n) if n > MAX_COMPLETIONS => errors.push(fe(
                    format!("{prefix}.{field}"),
                    format!("at most {MAX_COMPLETIONS}"),
                )),
                _ => {}
            }
        }
        if self.active_deadline_seconds == Some(0) {
            errors.push(fe(
                format!("{prefix}.activeDeadlineSeconds"),
                "must be at least 1 (leave it out for no deadline)",
            ));
        }
        errors
    }
}

/// What the controller observed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct JobStatus {
    /// Pods running or waiting to run.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub active: u32,
    /// Of those, the ones whose Ready condition is true.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub ready: u32,
    /// Pods that succeeded.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub succeeded: u32,
    /// Failures: failed pods, and restarts of pods under OnFailure.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub failed: u32,
    /// When the controller first ran the Job.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub start_time: Option<Time>,
    /// When the Job completed (not set when it failed).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub completion_time: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub conditions: Vec<Condition>,
}

impl JobStatus {
    fn holds(&self, type_: &str) -> Option<&Condition> {
        self.conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == ConditionStatus::True)
    }

    /// The condition that ended the Job (Complete or Failed), if it has.
    pub fn finished(&self) -> Option<&Condition> {
        self.holds(condition::COMPLETE)
            .or_else(|| self.holds(condition::FAILED))
    }

    /// Whether the Job completed.
    pub fn complete(&self) -> bool {
        self.holds(condition::COMPLETE).is_some()
    }

    /// Whether the Job failed.
    pub fn failed(&self) -> bool {
        self.holds(condition::FAILED).is_some()
    }

    /// "Running", "Complete", "Failed" or "Suspended", for listings.
    pub fn summary(&self) -> &'static str {
        if self.complete() {
            "Complete"
        } else if self.failed() {
            "Failed"
        } else if self.holds(condition::SUSPENDED).is_some() {
            "Suspended"
        } else {
            "Running"
        }
    }
}

impl Resource for Job {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        self.spec.validate("spec")
    }

    fn module(&self) -> Option<&str> {
        Some(&self.spec.template.spec.module)
    }

    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        if !status_only {
            if stored.spec.template != incoming.spec.template {
                return Err(
                    "spec.template of a Job may not change once created; delete the \
                            Job and create it again (or create a new one)"
                        .into(),
                );
            }
            if stored.spec.completions != incoming.spec.completions {
                return Err(
                    "spec.completions of a Job may not change once created; delete the Job \
                     and create it again"
                        .into(),
                );
            }
        }
        Ok(merge_parts(stored, incoming, status_only, |j| {
            (&mut j.metadata, &mut j.spec, &mut j.status)
        }))
    }
}
