//! The CronJob controller: makes a Job from each CronJob's template when
//! its schedule comes due (read in its time zone), as its concurrency
//! policy allows, and deletes its finished Jobs beyond the history limits.
//!
//! A run's Job is named after the CronJob and the scheduled time
//! (`NAME-<minutes since the epoch>`, seconds for schedules with a seconds
//! field), so a run is made once even when two leaders in turn see it due:
//! the second create finds the name taken.
//!
//! [`plan`] is pure (a CronJob, its Jobs, its parsed schedule, the time);
//! [`CronJobs`] reads the shared cache, writes through the API core as
//! `Caller::Controller("cronjob")`, and asks to be woken at the next run.

use crate::apiserver::{lost_race, unless_lost, ApiServer, Caller};
use crate::controllers::events::{Happening, Recorder};
use crate::controllers::replicaset::{controller_ref, managed, owner_keys, see_own_writes};
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use flotilla_api::cron::{Schedule, Zone};
use flotilla_api::objects::cron_job::{ConcurrencyPolicy, CronJobStatus, SCHEDULED_AT};
use flotilla_api::objects::{CronJob, Job};
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object, ObjectMeta};
use std::time::Duration;

const ME: Caller = Caller::Controller("cronjob");

/// Missed runs counted at most; past this many the controller says so
/// (the master was down long, or the clock jumped) and runs the latest.
pub const MISSED_LIMIT: usize = 100;

/// What to do for one CronJob.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The Job of a run that is due.
    pub create: Option<Job>,
    /// Jobs to delete: beyond the history limits, or replaced.
    pub delete: Vec<Job>,
    /// The status to write, if it changed.
    pub status: Option<CronJobStatus>,
    /// When the next run is due.
    pub again_after: Option<Duration>,
    /// Something the owner should hear of (runs missed, a run skipped).
    pub note: Option<String>,
}

/// The name of the Job for the run scheduled at `at`.
pub fn job_name(cj: &CronJob, at: Time, seconds: bool) -> String {
    let unit = if seconds { 1_000 } else { 60_000 };
    format!("{}-{}", cj.metadata.name, at.millis().div_euclid(unit))
}

/// The Job of the run scheduled at `at`.
pub fn job_for(cj: &CronJob, at: Time, seconds: bool) -> Job {
    let t = &cj.spec.job_template;
    let mut annotations = t.metadata.annotations.clone();
    annotations.insert(SCHEDULED_AT.into(), at.to_string());
    Job {
        metadata: ObjectMeta {
            name: job_name(cj, at, seconds),
            namespace: cj.metadata.namespace.clone(),
            labels: t.metadata.labels.clone(),
            annotations,
            owner_references: vec![controller_ref(Kind::CronJob, &cj.metadata)],
            ..ObjectMeta::default()
        },
        spec: t.spec.clone(),
        ..Job::default()
    }
}

/// When a finished Job finished (for the order of the history).
fn finished_at(j: &Job) -> Option<Time> {
    j.status
        .completion_time
        .or_else(|| j.status.finished().and_then(|c| c.last_transition_time))
        .or(j.metadata.creation_timestamp)
}

/// The finished Jobs beyond `keep`, oldest first.
fn beyond(mut jobs: Vec<&Job>, keep: u32) -> impl Iterator<Item = &Job> {
    jobs.sort_by_key(|j| (finished_at(j), j.metadata.name.clone()));
    let extra = jobs.len().saturating_sub(keep as usize);
    jobs.into_iter().take(extra)
}

/// The plan for `cj` over the Jobs it owns, at `now`.
pub fn plan(cj: &CronJob, jobs: &[&Job], schedule: &Schedule, zone: &Zone, now: Time) -> Plan {
    let mut out = Plan::default();
    let spec = &cj.spec;
    let (finished, mut active): (Vec<&Job>, Vec<&Job>) = jobs
        .iter()
        .copied()
        .partition(|j| j.status.finished().is_some());
    active.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));

    let mut status = cj.status.clone();
    let complete: Vec<&Job> = finished
        .iter()
        .copied()
        .filter(|j| j.status.complete())
        .collect();
    let failed: Vec<&Job> = finished
        .iter()
        .copied()
        .filter(|j| !j.status.complete())
        .collect();
    if let Some(t) = complete
        .iter()
        .filter_map(|j| j.status.completion_time)
        .max()
    {
        status.last_successful_time = status.last_successful_time.max(Some(t));
    }
    out.delete.extend(
        beyond(complete, spec.successful_jobs_history_limit())
            .chain(beyond(failed, spec.failed_jobs_history_limit()))
            .cloned(),
    );

    if !spec.suspend {
        let seconds = schedule.has_seconds();
        let mut earliest = status
            .last_schedule_time
            .or(cj.metadata.creation_timestamp)
            .unwrap_or(now);
        if let Some(d) = spec.starting_deadline_seconds {
            let d = i64::try_from(d.saturating_mul(1000)).unwrap_or(i64::MAX);
            earliest = earliest.max(Time(now.millis().saturating_sub(d)));
        }
        let (missed, latest) = schedule.missed_since(earliest, now, zone, MISSED_LIMIT + 1);
        if let Some(at) = latest {
            if missed > MISSED_LIMIT {
                out.note = Some(format!(
                    "more than {MISSED_LIMIT} runs were missed (the master was down or the \
                     clock moved); running only the latest, of {at}. Set \
                     startingDeadlineSeconds to bound how late a run may start"
                ));
            }
            let name = job_name(cj, at, seconds);
            let made = jobs.iter().any(|j| j.metadata.name == name);
            let blocked =
                !made && spec.concurrency_policy == ConcurrencyPolicy::Forbid && !active.is_empty();
            if blocked {
                out.note = Some(format!(
                    "the run of {at} waits: concurrencyPolicy is Forbid and {} still runs",
                    active[0].metadata.name
                ));
            } else {
                if !made {
                    if spec.concurrency_policy == ConcurrencyPolicy::Replace {
                        out.delete.extend(active.iter().map(|j| (*j).clone()));
                        active.clear();
                    }
                    out.create = Some(job_for(cj, at, seconds));
                }
                status.last_schedule_time = Some(at);
            }
        }
        if let Some(next) = schedule.next_after(now, zone) {
            // A moment past the time, so that the run is due when looked at.
            out.again_after = Some(Duration::from_millis(
                now.since(next).unsigned_abs().saturating_add(5),
            ));
        }
    }
    let mut names: Vec<String> = active.iter().map(|j| j.metadata.name.clone()).collect();
    if let Some(j) = &out.create {
        names.push(j.metadata.name.clone());
    }
    names.sort();
    status.active = names;
    if status != cj.status {
        out.status = Some(status);
    }
    out
}

/// The CronJob controller, for [`crate::controllers::runtime::drive`].
pub struct CronJobs {
    pub api: ApiServer,
    pub cache: Cache,
    pub events: crate::controllers::events::Recorder,
}

impl Reconciler for CronJobs {
    fn name(&self) -> &'static str {
        "cronjob"
    }

    fn keys_for(
        &self,
        state: &CacheState,
        old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    ) {
        match new {
            Object::CronJob(_) => out.push(new.key()),
            Object::Job(_) => owner_keys(state, old, new, Kind::CronJob, false, out),
            _ => {}
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        state.of_kind(Kind::CronJob).map(|o| o.key()).collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let (cj, plan) = {
            let state = self.cache.read();
            let Some(cj) = managed::<CronJob>(&state, key) else {
                return Ok(None);
            };
            // Admission checked both; a master with an older zone
            // database than the one that admitted the object can still
            // refuse the zone.
            let schedule = Schedule::parse(&cj.spec.schedule)
                .map_err(|e| ApiError::new(ErrorCode::Invalid, format!("spec.schedule: {e}")))?;
            let zone = Zone::named(cj.spec.time_zone())
                .map_err(|e| ApiError::new(ErrorCode::Invalid, format!("spec.timeZone: {e}")))?;
            let jobs: Vec<&Job> = state
                .owned_by(&cj.metadata.uid)
                .filter_map(|o| o.as_kind::<Job>())
                .filter(|j| j.metadata.namespace == cj.metadata.namespace)
                .collect();
            (cj.clone(), plan(cj, &jobs, &schedule, &zone, Time::now()))
        };
        let written = execute(&self.api, &self.events, &cj, plan.clone()).await?;
        see_own_writes(&self.cache, written).await?;
        Ok(plan.again_after)
    }
}

/// Writes a plan; answers the highest revision it wrote (0 if none).
async fn execute(
    api: &ApiServer,
    events: &Recorder,
    cj: &CronJob,
    plan: Plan,
) -> Result<u64, ApiError> {
    let record = |h: Happening| events.record(Kind::CronJob, &cj.metadata, h);
    let mut revision = 0u64;
    let mut note = |o: &Object| revision = revision.max(o.meta().resource_version);
    let name = format!("{}/{}", cj.metadata.namespace, cj.metadata.name);
    if let Some(n) = &plan.note {
        tracing::warn!(cronjob = %name, "{n}");
        let reason = if n.contains("Forbid") {
            "JobAlreadyActive"
        } else {
            "TooManyMissedTimes"
        };
        record(Happening::warning("cronjob-controller", reason, n.clone()));
    }
    for j in &plan.delete {
        match api
            .delete(
                &ME,
                Kind::Job,
                &j.metadata.namespace,
                &j.metadata.name,
                j.metadata.resource_version,
            )
            .await
        {
            Ok(o) => {
                note(&o);
                record(Happening::normal(
                    "cronjob-controller",
                    "SuccessfulDelete",
                    format!("Deleted job {}", j.metadata.name),
                ));
            }
            Err(e) if lost_race(&e) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(job) = plan.create {
        let job_name = job.metadata.name.clone();
        match api.create(&ME, Object::Job(job)).await {
            Ok(o) => {
                tracing::info!(cronjob = %name, job = %job_name, "created a job");
                note(&o);
                record(Happening::normal(
                    "cronjob-controller",
                    "SuccessfulCreate",
                    format!("Created job {job_name}"),
                ));
            }
            // An earlier pass (or leader) made this run's Job.
            Err(e) if e.code == ErrorCode::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(status) = plan.status {
        let mut with = cj.clone();
        with.status = status;
        if let Some(o) = unless_lost(
            api.update_status_at(&ME, Object::CronJob(with), cj.metadata.resource_version)
                .await,
        )? {
            note(&o);
        }
    }
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::meta::OwnerReference;
    use flotilla_api::objects::job::condition;
    use flotilla_api::objects::workload::{Condition, ConditionStatus};

    /// 2026-12-02T10:00:00Z.
    fn at(rfc: &str) -> Time {
        Time::parse_rfc3339(rfc).expect("time")
    }

    fn cron(schedule: &str, policy: ConcurrencyPolicy) -> CronJob {
        let mut c = CronJob {
            metadata: ObjectMeta {
                name: "tick".into(),
                namespace: "default".into(),
                uid: "cj-uid".into(),
                creation_timestamp: Some(at("2026-12-02T09:00:00Z")),
                ..ObjectMeta::default()
            },
            ..CronJob::default()
        };
        c.spec.schedule = schedule.into();
        c.spec.concurrency_policy = policy;
        c
    }

    /// A Job of the CronJob: its name, and whether it finished (and how) at `end`.
    fn job(name: &str, done: Option<(&str, Time)>) -> Job {
        let mut j = Job {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                owner_references: vec![OwnerReference {
                    kind: "CronJob".into(),
                    name: "tick".into(),
                    uid: "cj-uid".into(),
                    controller: true,
                    ..Default::default()
                }],
                ..ObjectMeta::default()
            },
            ..Job::default()
        };
        if let Some((type_, t)) = done {
            j.status.conditions.push(Condition {
                type_: type_.into(),
                status: ConditionStatus::True,
                last_transition_time: Some(t),
                ..Condition::default()
            });
            if type_ == condition::COMPLETE {
                j.status.completion_time = Some(t);
            }
        }
        j
    }

    fn run(c: &CronJob, jobs: &[Job], now: Time) -> Plan {
        let schedule = Schedule::parse(&c.spec.schedule).expect("schedule");
        let refs: Vec<&Job> = jobs.iter().collect();
        plan(c, &refs, &schedule, &Zone::utc(), now)
    }

    #[test]
    fn a_due_run_makes_one_job_named_for_its_time() {
        let c = cron("*/5 * * * *", ConcurrencyPolicy::Allow);
        let now = at("2026-12-02T10:01:00Z");
        let p = run(&c, &[], now);
        let made = p.create.expect("a job");
        let due = at("2026-12-02T10:00:00Z");
        assert_eq!(
            made.metadata.name,
            format!("tick-{}", due.millis() / 60_000)
        );
        assert_eq!(
            made.metadata
                .annotations
                .get(SCHEDULED_AT)
                .map(String::as_str),
            Some("2026-12-02T10:00:00.000Z")
        );
        assert!(made.metadata.owner_references[0].controller);
        let s = p.status.expect("status");
        assert_eq!(s.last_schedule_time, Some(due));
        assert_eq!(s.active, vec![made.metadata.name.clone()]);
        // Woken just after the next run, 10:05.
        assert_eq!(p.again_after, Some(Duration::from_millis(4 * 60_000 + 5)));
        // The Job exists already (made by an earlier pass): not made again.
        let p = run(&c, &[made], now);
        assert!(p.create.is_none());
    }

    #[test]
    fn forbid_waits_replace_deletes_allow_runs_side_by_side() {
        let now = at("2026-12-02T10:00:30Z");
        let running = [job("tick-old", None)];
        let p = run(
            &cron("*/5 * * * *", ConcurrencyPolicy::Forbid),
            &running,
            now,
        );
        assert!(p.create.is_none());
        assert!(p.note.is_some_and(|n| n.contains("Forbid")));
        assert!(p.status.is_none_or(|s| s.last_schedule_time.is_none()));
        let p = run(
            &cron("*/5 * * * *", ConcurrencyPolicy::Replace),
            &running,
            now,
        );
        assert!(p.create.is_some());
        assert_eq!(p.delete.len(), 1);
        let p = run(
            &cron("*/5 * * * *", ConcurrencyPolicy::Allow),
            &running,
            now,
        );
        assert!(p.create.is_some());
        assert!(p.delete.is_empty());
        assert_eq!(p.status.expect("status").active.len(), 2);
    }

    #[test]
    fn history_keeps_the_newest_finished_jobs_within_the_limits() {
        let mut c = cron("0 0 1 1 *", ConcurrencyPolicy::Allow);
        c.spec.successful_jobs_history_limit = Some(2);
        c.status.last_schedule_time = Some(at("2026-12-02T09:30:00Z"));
        let t = |m: u32| at(&format!("2026-12-02T09:{m:02}:00Z"));
        let jobs = [
            job("a", Some((condition::COMPLETE, t(1)))),
            job("b", Some((condition::COMPLETE, t(2)))),
            job("c", Some((condition::COMPLETE, t(3)))),
            job("d", Some((condition::FAILED, t(4)))),
            job("e", Some((condition::FAILED, t(5)))),
            job("f", None),
        ];
        let p = run(&c, &jobs, at("2026-12-02T10:00:00Z"));
        let mut gone: Vec<&str> = p.delete.iter().map(|j| j.metadata.name.as_str()).collect();
        gone.sort();
        assert_eq!(
            gone,
            ["a", "d"],
            "oldest complete beyond 2, failed beyond 1"
        );
        let s = p.status.expect("status");
        assert_eq!(s.last_successful_time, Some(t(3)));
        assert_eq!(s.active, ["f"]);
        assert!(p.create.is_none(), "nothing due");
    }

    #[test]
    fn suspended_or_too_late_runs_are_not_made() {
        let mut c = cron("* * * * *", ConcurrencyPolicy::Allow);
        c.spec.suspend = true;
        let p = run(&c, &[], at("2026-12-02T10:00:30Z"));
        assert!(p.create.is_none());
        assert!(p.again_after.is_none());
        // Due at 10:00, looked at 10:00:30 with a 10 s starting deadline: skipped.
        let mut c = cron("0 * * * *", ConcurrencyPolicy::Allow);
        c.spec.starting_deadline_seconds = Some(10);
        let p = run(&c, &[], at("2026-12-02T10:00:30Z"));
        assert!(p.create.is_none());
        let p = run(&c, &[], at("2026-12-02T10:00:05Z"));
        assert!(p.create.is_some());
    }

    #[test]
    fn many_missed_runs_make_only_the_latest_and_say_so() {
        let mut c = cron("* * * * *", ConcurrencyPolicy::Allow);
        c.status.last_schedule_time = Some(at("2026-12-01T00:00:00Z"));
        let p = run(&c, &[], at("2026-12-02T10:00:30Z"));
        let made = p.create.expect("the latest run");
        assert_eq!(
            made.metadata
                .annotations
                .get(SCHEDULED_AT)
                .map(String::as_str),
            Some("2026-12-02T10:00:00.000Z")
        );
        assert!(p.note.is_some_and(|n| n.contains("missed")));
    }

    #[test]
    fn seconds_schedules_name_jobs_by_the_second() {
        let c = cron("*/2 * * * * *", ConcurrencyPolicy::Allow);
        let p = run(&c, &[], at("2026-12-02T10:00:03Z"));
        let due = at("2026-12-02T10:00:02Z");
        assert_eq!(
            p.create.expect("a job").metadata.name,
            format!("tick-{}", due.millis() / 1000)
        );
        assert_eq!(p.again_after, Some(Duration::from_millis(1_005)));
    }
}
