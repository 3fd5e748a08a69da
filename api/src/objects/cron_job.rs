//! CronJob: makes a Job from its template at the times of a cron schedule
//! (in a time zone), and keeps a few finished ones as history.

use super::job::JobSpec;
use super::workload::TemplateMeta;
use super::{merge_parts, Resource};
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use crate::time::Time;
use serde::{Deserialize, Serialize};

/// The annotation each Job a CronJob makes carries: the scheduled time it
/// was made for (RFC 3339).
pub const SCHEDULED_AT: &str = "cronjob.flotilla.dev/scheduled-at";

/// Jobs on a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CronJob {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: CronJobSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: CronJobStatus,
}

/// When to run, what, and what to keep.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CronJobSpec {
    /// Cron syntax: `minute hour day-of-month month day-of-week`, or the
    /// same with a seconds field first; `@hourly`, `@daily`, ...
    #[serde(skip_serializing_if = "crate::is_default")]
    pub schedule: String,
    /// The IANA time zone the schedule is read in (`Europe/Madrid`); UTC
    /// when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub time_zone: Option<String>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub concurrency_policy: ConcurrencyPolicy,
    /// A run missed by more than this many seconds (the master was down,
    /// or Forbid held it back) is skipped; no limit when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub starting_deadline_seconds: Option<u64>,
    /// Completed Jobs kept; 3 when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub successful_jobs_history_limit: Option<u32>,
    /// Failed Jobs kept; 1 when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub failed_jobs_history_limit: Option<u32>,
    /// A suspended CronJob makes no Jobs (those running go on).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub suspend: bool,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub job_template: JobTemplateSpec,
}

impl CronJobSpec {
    pub fn successful_jobs_history_limit(&self) -> u32 {
        self.successful_jobs_history_limit.unwrap_or(3)
    }

    pub fn failed_jobs_history_limit(&self) -> u32 {
        self.failed_jobs_history_limit.unwrap_or(1)
    }

    /// The zone's name as written, UTC when left out.
    pub fn time_zone(&self) -> &str {
        self.time_zone.as_deref().unwrap_or("UTC")
    }
}

/// What to do when a run is due while an earlier Job still runs.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum ConcurrencyPolicy {
    /// Run them side by side (the default).
    #[default]
    Allow,
    /// Skip the new run while the earlier one runs.
    Forbid,
    /// Delete the running Job and start the new one.
    Replace,
}

/// The Jobs a CronJob makes look like.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct JobTemplateSpec {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: TemplateMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: JobSpec,
}

/// What the controller observed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CronJobStatus {
    /// Names of the CronJob's Jobs that have not finished.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub active: Vec<String>,
    /// The scheduled time of the latest Job made.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_schedule_time: Option<Time>,
    /// When the latest of its Jobs to complete did.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub last_successful_time: Option<Time>,
}

impl Resource for CronJob {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let s = &self.spec;
        let mut errors = Vec::new();
        if s.schedule.trim().is_empty() {
            errors.push(fe(
                "spec.schedule",
                "required: when to run, in cron syntax, e.g. \"*/5 * * * *\" or \"@hourly\"",
            ));
        } else if let Err(e) = crate::cron::Schedule::parse(&s.schedule) {
            errors.push(fe("spec.schedule", e));
        }
        if let Some(zone) = &s.time_zone {
            if let Err(e) = crate::cron::Zone::named(zone) {
                errors.push(fe("spec.timeZone", e));
            }
        }
        // Jobs are named NAME-<time>: leave room for the suffix.
        if self.metadata.name.len() > 52 {
            errors.push(fe(
                "metadata.name",
                "at most 52 characters for a CronJob (its Jobs are named after it with a time \
                 appended)",
            ));
        }
        errors.extend(s.job_template.spec.validate("spec.jobTemplate.spec"));
        errors
    }

    fn module(&self) -> Option<&str> {
        Some(&self.spec.job_template.spec.template.spec.module)
    }

    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        Ok(merge_parts(stored, incoming, status_only, |c| {
            (&mut c.metadata, &mut c.spec, &mut c.status)
        }))
    }
}
