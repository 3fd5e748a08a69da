//! The Job controller: runs each Job's pods until `completions` of them
//! have succeeded, at most `parallelism` at once; replaces failed pods
//! after an exponential back-off; and ends the Job Complete, or Failed
//! once its failures pass `backoffLimit` or it outlives
//! `activeDeadlineSeconds` (its running pods are then stopped). A finished
//! Job with `ttlSecondsAfterFinished` is deleted that long after, its pods
//! with it.
//!
//! [`plan`] is pure (a Job, the pods it owns, the time); [`Jobs`] reads
//! the shared cache and writes the plan through the API core as
//! `Caller::Controller("job")`, then waits to see its own writes, so a pod
//! is never made twice for one missing run.

use crate::apiserver::{unless_lost, ApiServer, Caller};
use crate::controllers::events::{Happening, Recorder};
use crate::controllers::replicaset::{
    controller_ref, deletion_order, generate_name, is_active, managed, owner_keys, ready_since,
    see_own_writes,
};
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use flotilla_api::objects::job::{condition, reason, JobStatus, JOB_NAME_LABEL};
use flotilla_api::objects::workload::{set_condition, Condition, ConditionStatus};
use flotilla_api::objects::{Job, PodPhase};
use flotilla_api::protocol::ApiError;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object, ObjectMeta, Pod};
use std::time::Duration;

const ME: Caller = Caller::Controller("job");

/// The wait before a failed pod is replaced: 10 s, doubling with each
/// failure, at most 6 minutes (Kubernetes' figures).
const BACKOFF_BASE_MS: i64 = 10_000;
const BACKOFF_MAX_MS: i64 = 360_000;
/// Most pods created in one pass; the rest in the next.
const BURST: usize = 500;

/// What to do for one Job.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Pods to make from the template.
    pub create: usize,
    /// Running pods to stop (the Job finished, or runs too many).
    pub delete: Vec<Pod>,
    /// The status to write, if it changed.
    pub status: Option<JobStatus>,
    /// The Job's time to live after finishing is over: delete it.
    pub delete_job: bool,
    /// When to look again (a back-off or a deadline ends).
    pub again_after: Option<Duration>,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn after_ms(ms: i64) -> Duration {
    Duration::from_millis(ms.max(1).unsigned_abs())
}

/// The wait before the next pod after `failures` failures.
pub fn backoff_ms(failures: u32) -> i64 {
    if failures == 0 {
        return 0;
    }
    let doublings = (failures - 1).min(10);
    (BACKOFF_BASE_MS << doublings).min(BACKOFF_MAX_MS)
}

fn finished(type_: &str, reason: &str, message: String, now: Time) -> Condition {
    Condition {
        type_: type_.into(),
        status: ConditionStatus::True,
        last_update_time: Some(now),
        last_transition_time: Some(now),
        reason: reason.into(),
        message,
    }
}

/// The plan for `job` over the pods it owns, at `now`.
pub fn plan(job: &Job, pods: &[&Pod], now: Time) -> Plan {
    let mut out = Plan::default();
    let spec = &job.spec;
    let mut active: Vec<&Pod> = pods.iter().copied().filter(|p| is_active(p)).collect();
    let succeeded = pods
        .iter()
        .filter(|p| p.status.phase == PodPhase::Succeeded)
        .count();
    let failed_pods: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.status.phase == PodPhase::Failed)
        .collect();
    let restarts: u32 = pods.iter().map(|p| p.status.restart_count).sum();
    let failures = count(failed_pods.len()).saturating_add(restarts);

    let mut status = job.status.clone();
    status.active = count(active.len());
    status.ready = count(active.iter().filter(|p| ready_since(p).is_some()).count());
    status.succeeded = count(succeeded);
    status.failed = failures;

    if let Some(done) = job.status.finished() {
        // Finished: nothing runs any more; the Job waits for its TTL.
        out.delete = active.iter().map(|p| (*p).clone()).collect();
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let since = done.last_transition_time.unwrap_or(now);
            let left = i64::from(ttl) * 1000 - now.since(since);
            if left <= 0 {
                out.delete_job = true;
            } else {
                out.again_after = Some(after_ms(left));
            }
        }
    } else if failures > spec.backoff_limit() {
        let c = finished(
            condition::FAILED,
            reason::BACKOFF_LIMIT_EXCEEDED,
            format!(
                "the Job failed {failures} times, more than its backoffLimit of {}",
                spec.backoff_limit()
            ),
            now,
        );
        set_condition(&mut status.conditions, c);
        out.delete = active.iter().map(|p| (*p).clone()).collect();
        out.again_after = spec
            .ttl_seconds_after_finished
            .map(|t| after_ms(i64::from(t) * 1000));
    } else if succeeded >= spec.completions() as usize {
        let c = finished(
            condition::COMPLETE,
            reason::COMPLETIONS_REACHED,
            format!("{succeeded} of {} pods succeeded", spec.completions()),
            now,
        );
        set_condition(&mut status.conditions, c);
        status.completion_time = Some(now);
        out.delete = active.iter().map(|p| (*p).clone()).collect();
        out.again_after = spec
            .ttl_seconds_after_finished
            .map(|t| after_ms(i64::from(t) * 1000));
    } else if spec.suspend {
        set_condition(
            &mut status.conditions,
            Condition {
                type_: condition::SUSPENDED.into(),
                status: ConditionStatus::True,
                last_update_time: Some(now),
                last_transition_time: Some(now),
                reason: reason::SUSPENDED.into(),
                message: "the Job is suspended".into(),
            },
        );
        out.delete = active.iter().map(|p| (*p).clone()).collect();
    } else {
        let start = *status.start_time.get_or_insert(now);
        let deadline_left = spec
            .active_deadline_seconds
            .map(|d| i64::try_from(d.saturating_mul(1000)).unwrap_or(i64::MAX) - now.since(start));
        if deadline_left.is_some_and(|left| left <= 0) {
            let c = finished(
                condition::FAILED,
                reason::DEADLINE_EXCEEDED,
                format!(
                    "the Job ran longer than its activeDeadlineSeconds ({})",
                    spec.active_deadline_seconds.unwrap_or_default()
                ),
                now,
            );
            set_condition(&mut status.conditions, c);
            out.delete = active.iter().map(|p| (*p).clone()).collect();
            out.again_after = spec
                .ttl_seconds_after_finished
                .map(|t| after_ms(i64::from(t) * 1000));
        } else {
            if let Some(c) = status
                .conditions
                .iter_mut()
                .find(|c| c.type_ == condition::SUSPENDED && c.status == ConditionStatus::True)
            {
                c.status = ConditionStatus::False;
                c.last_transition_time = Some(now);
                c.reason = "JobResumed".into();
                c.message = "the Job was resumed".into();
            }
            let left = spec.completions() as usize - succeeded;
            let want = (spec.parallelism() as usize).min(left);
            if active.len() < want {
                // A failed pod is replaced after a back-off from its end.
                let last_failure = failed_pods
                    .iter()
                    .filter_map(|p| p.status.finish_time.or(p.metadata.creation_timestamp))
                    .max();
                let wait = last_failure
                    .map(|t| backoff_ms(count(failed_pods.len())) - now.since(t))
                    .unwrap_or(0);
                if wait > 0 {
                    out.again_after = Some(after_ms(wait));
                } else {
                    out.create = (want - active.len()).min(BURST);
                }
            } else if active.len() > want {
                active.sort_by(|a, b| deletion_order(a, b, &|_| true));
                out.delete = active[..active.len() - want]
                    .iter()
                    .map(|p| (*p).clone())
                    .collect();
            }
            if let Some(left) = deadline_left {
                let d = after_ms(left);
                out.again_after = Some(out.again_after.map_or(d, |a| a.min(d)));
            }
        }
    }
    if status != job.status {
        out.status = Some(status);
    }
    out
}

/// The event reason of a failed Job's condition reason.
fn reason_of(r: &str) -> &'static str {
    match r {
        reason::DEADLINE_EXCEEDED => reason::DEADLINE_EXCEEDED,
        _ => reason::BACKOFF_LIMIT_EXCEEDED,
    }
}

/// A pod made from `job`'s template (its name is chosen when it is written).
pub fn pod_from_template(job: &Job) -> Pod {
    let t = &job.spec.template;
    let mut labels = t.metadata.labels.clone();
    labels.insert(JOB_NAME_LABEL.into(), job.metadata.name.clone());
    Pod {
        metadata: ObjectMeta {
            namespace: job.metadata.namespace.clone(),
            labels,
            annotations: t.metadata.annotations.clone(),
            owner_references: vec![controller_ref(Kind::Job, &job.metadata)],
            ..ObjectMeta::default()
        },
        spec: t.spec.clone(),
        ..Pod::default()
    }
}

/// The pods `job` owns.
fn owned_pods<'a>(state: &'a CacheState, job: &Job) -> Vec<&'a Pod> {
    state
        .owned_by(&job.metadata.uid)
        .filter_map(|o| o.as_pod())
        .filter(|p| p.metadata.namespace == job.metadata.namespace)
        .collect()
}

/// The Job controller, for [`crate::controllers::runtime::drive`].
pub struct Jobs {
    pub api: ApiServer,
    pub cache: Cache,
    pub events: crate::controllers::events::Recorder,
}

impl Reconciler for Jobs {
    fn name(&self) -> &'static str {
        "job"
    }

    fn keys_for(
        &self,
        state: &CacheState,
        old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    ) {
        match new {
            Object::Job(_) => out.push(new.key()),
            Object::Pod(_) => owner_keys(state, old, new, Kind::Job, false, out),
            _ => {}
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        state.of_kind(Kind::Job).map(|o| o.key()).collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let (job, plan) = {
            let state = self.cache.read();
            let Some(job) = managed::<Job>(&state, key) else {
                return Ok(None);
            };
            let pods = owned_pods(&state, job);
            (job.clone(), plan(job, &pods, Time::now()))
        };
        let written = execute(&self.api, &self.events, &job, plan.clone()).await?;
        see_own_writes(&self.cache, written).await?;
        Ok(plan.again_after)
    }
}

/// Writes a plan; answers the highest revision it wrote (0 if none).
async fn execute(
    api: &ApiServer,
    events: &Recorder,
    job: &Job,
    plan: Plan,
) -> Result<u64, ApiError> {
    let record = |h: Happening| events.record(Kind::Job, &job.metadata, h);
    let mut revision = 0u64;
    let mut note = |o: &Object| revision = revision.max(o.meta().resource_version);
    let name = format!("{}/{}", job.metadata.namespace, job.metadata.name);
    let creates = (0..plan.create).map(|_| {
        let mut pod = pod_from_template(job);
        pod.metadata.name = generate_name(&job.metadata.name);
        api.create(&ME, Object::Pod(pod))
    });
    for r in futures_util::future::join_all(creates).await {
        match r {
            Ok(o) => {
                note(&o);
                record(Happening::normal(
                    "job-controller",
                    "SuccessfulCreate",
                    format!("Created pod: {}", o.meta().name),
                ));
            }
            Err(e) => {
                tracing::warn!(job = %name, error = %e, "creating a pod failed");
                record(Happening::warning(
                    "job-controller",
                    "FailedCreate",
                    format!("Error creating: {}", e.message),
                ));
                return Err(e);
            }
        }
    }
    if plan.create > 0 {
        tracing::info!(job = %name, count = plan.create, "created pods");
    }
    let deletes = plan.delete.iter().map(|p| {
        api.delete(
            &ME,
            Kind::Pod,
            &p.metadata.namespace,
            &p.metadata.name,
            p.metadata.resource_version,
        )
    });
    for r in futures_util::future::join_all(deletes).await {
        if let Some(o) = unless_lost(r)? {
            note(&o);
        }
    }
    if let Some(status) = plan.status {
        if let (Some(c), None) = (status.finished(), job.status.finished()) {
            tracing::info!(job = %name, condition = %c.type_, reason = %c.reason, "job finished");
            let h = if c.type_ == condition::COMPLETE {
                Happening::normal("job-controller", "Completed", "Job completed".into())
            } else {
                Happening::warning("job-controller", reason_of(&c.reason), c.message.clone())
            };
            record(h);
        }
        let mut with = job.clone();
        with.status = status;
        if let Some(o) = unless_lost(
            api.update_status_at(&ME, Object::Job(with), job.metadata.resource_version)
                .await,
        )? {
            note(&o);
        }
    }
    if plan.delete_job {
        tracing::info!(job = %name, "deleting a finished job whose time to live is over");
        if let Some(o) = unless_lost(
            api.delete(
                &ME,
                Kind::Job,
                &job.metadata.namespace,
                &job.metadata.name,
                job.metadata.resource_version,
            )
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
    use flotilla_api::objects::job::JobSpec;
    use flotilla_api::objects::RestartPolicy;

    fn job(completions: u32, parallelism: u32, backoff: u32) -> Job {
        let mut j = Job {
            metadata: ObjectMeta {
                name: "pi".into(),
                namespace: "default".into(),
                uid: "job-uid".into(),
                ..ObjectMeta::default()
            },
            spec: JobSpec {
                completions: Some(completions),
                parallelism: Some(parallelism),
                backoff_limit: Some(backoff),
                ..JobSpec::default()
            },
            ..Job::default()
        };
        j.spec.template.spec.restart_policy = RestartPolicy::Never;
        j
    }

    /// A pod of the Job: name, phase, restarts, finished at (ms).
    fn pod(name: &str, phase: PodPhase, restarts: u32, finished: Option<i64>) -> Pod {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                creation_timestamp: Some(Time(1)),
                owner_references: vec![OwnerReference {
                    kind: "Job".into(),
                    name: "pi".into(),
                    uid: "job-uid".into(),
                    controller: true,
                    ..Default::default()
                }],
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        p.status.phase = phase;
        p.status.restart_count = restarts;
        p.status.finish_time = finished.map(Time);
        p
    }

    const NOW: Time = Time(1_000_000);

    fn refs(pods: &[Pod]) -> Vec<&Pod> {
        pods.iter().collect()
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let j = job(5, 2, 6);
        // Nothing yet: two pods, the start time set.
        let p = plan(&j, &[], NOW);
        assert_eq!(p.create, 2);
        let s = p.status.expect("status");
        assert_eq!(s.start_time, Some(NOW));
        // Four succeeded, one running: only one more is needed, none made.
        let pods = [
            pod("a", PodPhase::Succeeded, 0, Some(10)),
            pod("b", PodPhase::Succeeded, 0, Some(10)),
            pod("c", PodPhase::Succeeded, 0, Some(10)),
            pod("d", PodPhase::Succeeded, 0, Some(10)),
            pod("e", PodPhase::Running, 0, None),
        ];
        let p = plan(&j, &refs(&pods), NOW);
        assert_eq!((p.create, p.delete.len()), (0, 0));
        // Three succeeded: two more, both at once.
        let p = plan(&j, &refs(&pods[..3]), NOW);
        assert_eq!(p.create, 2);
    }

    #[test]
    fn completes_when_completions_succeed_and_stops_leftovers() {
        let j = job(2, 3, 6);
        let pods = [
            pod("a", PodPhase::Succeeded, 0, Some(10)),
            pod("b", PodPhase::Succeeded, 0, Some(10)),
            pod("c", PodPhase::Running, 0, None),
        ];
        let p = plan(&j, &refs(&pods), NOW);
        let s = p.status.expect("status");
        assert!(s.complete());
        assert_eq!(s.completion_time, Some(NOW));
        assert_eq!(s.succeeded, 2);
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.create, 0);
        // Once complete, the next pass writes nothing more.
        let mut done = j.clone();
        done.status = s;
        let p = plan(&done, &refs(&pods[..2]), Time(NOW.0 + 5_000));
        assert!(p.status.is_none_or(|s| s.complete() && s.active == 0));
        assert_eq!(p.create, 0);
    }

    #[test]
    fn fails_past_the_backoff_limit_counting_restarts() {
        let j = job(1, 1, 2);
        // Two failed pods: at the limit, not past it; the third waits 20 s.
        let pods = [
            pod("a", PodPhase::Failed, 0, Some(NOW.0 - 30_000)),
            pod("b", PodPhase::Failed, 0, Some(NOW.0 - 5_000)),
        ];
        let p = plan(&j, &refs(&pods), NOW);
        assert_eq!(p.create, 0, "the back-off of the second failure is 20 s");
        assert_eq!(p.again_after, Some(Duration::from_secs(15)));
        let p = plan(&j, &refs(&pods), Time(NOW.0 + 15_000));
        assert_eq!(p.create, 1);
        // A third failure, here a restart under OnFailure: past the limit.
        let mut running = pod("c", PodPhase::Running, 1, None);
        running.spec.restart_policy = RestartPolicy::OnFailure;
        let all = [pods[0].clone(), pods[1].clone(), running];
        let p = plan(&j, &refs(&all), NOW);
        let s = p.status.expect("status");
        assert!(s.failed());
        assert_eq!(s.failed, 3);
        let c = s.finished().expect("finished");
        assert_eq!(c.reason, reason::BACKOFF_LIMIT_EXCEEDED);
        assert_eq!(p.delete.len(), 1, "the running pod is stopped");
        assert_eq!(p.create, 0);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let cases = [(0, 0), (1, 10_000), (2, 20_000), (3, 40_000), (6, 320_000)];
        for (failures, want) in cases {
            assert_eq!(backoff_ms(failures), want, "{failures} failures");
        }
        assert_eq!(backoff_ms(7), BACKOFF_MAX_MS);
        assert_eq!(backoff_ms(u32::MAX), BACKOFF_MAX_MS);
    }

    #[test]
    fn the_deadline_fails_the_job_and_stops_its_pods() {
        let mut j = job(3, 1, 6);
        j.spec.active_deadline_seconds = Some(60);
        j.status.start_time = Some(Time(NOW.0 - 50_000));
        let pods = [pod("a", PodPhase::Running, 0, None)];
        let p = plan(&j, &refs(&pods), NOW);
        assert_eq!(p.again_after, Some(Duration::from_secs(10)));
        assert!(p.delete.is_empty());
        let p = plan(&j, &refs(&pods), Time(NOW.0 + 10_000));
        let s = p.status.expect("status");
        assert_eq!(
            s.finished().map(|c| c.reason.as_str()),
            Some(reason::DEADLINE_EXCEEDED)
        );
        assert_eq!(p.delete.len(), 1);
    }

    #[test]
    fn a_finished_job_is_deleted_after_its_ttl() {
        let mut j = job(1, 1, 6);
        j.spec.ttl_seconds_after_finished = Some(30);
        let pods = [pod("a", PodPhase::Succeeded, 0, Some(NOW.0))];
        let p = plan(&j, &refs(&pods), NOW);
        assert_eq!(p.again_after, Some(Duration::from_secs(30)));
        j.status = p.status.expect("status");
        let p = plan(&j, &refs(&pods), Time(NOW.0 + 29_000));
        assert!(!p.delete_job);
        assert_eq!(p.again_after, Some(Duration::from_secs(1)));
        let p = plan(&j, &refs(&pods), Time(NOW.0 + 30_000));
        assert!(p.delete_job);
    }

    #[test]
    fn a_suspended_job_runs_nothing_and_lowered_parallelism_stops_extras() {
        let mut j = job(10, 3, 6);
        let pods = [
            pod("a", PodPhase::Running, 0, None),
            pod("b", PodPhase::Running, 0, None),
            pod("c", PodPhase::Pending, 0, None),
        ];
        j.spec.parallelism = Some(1);
        let p = plan(&j, &refs(&pods), NOW);
        assert_eq!(p.delete.len(), 2);
        assert_eq!(p.delete[0].metadata.name, "c", "a pending pod goes first");
        j.spec.suspend = true;
        let p = plan(&j, &refs(&pods), NOW);
        assert_eq!(p.delete.len(), 3);
        assert_eq!(p.create, 0);
        assert_eq!(p.status.expect("status").summary(), "Suspended");
    }

    #[test]
    fn pods_carry_the_job_name_and_its_owner() {
        let j = job(1, 1, 6);
        let p = pod_from_template(&j);
        assert_eq!(
            p.metadata.labels.get(JOB_NAME_LABEL).map(String::as_str),
            Some("pi")
        );
        assert_eq!(p.metadata.owner_references[0].uid, "job-uid");
        assert!(p.metadata.owner_references[0].controller);
    }
}
