//! The Deployment controller: one ReplicaSet per version of the pod
//! template, and rollouts between them.
//!
//! [`plan`] is pure: from a Deployment and its ReplicaSets (with the
//! counts their controller reported) at a time, what to create, scale and
//! delete, and the status. It follows Kubernetes' arithmetic:
//!
//! - RollingUpdate: the new set grows while all sets together hold at most
//!   `replicas + maxSurge` pods; old sets shrink while at least
//!   `replicas − maxUnavailable` pods stay available — first the pods that
//!   are not available anyway, then available ones down to that floor.
//! - Recreate: every old set goes to 0 and its pods are gone before the
//!   new set grows.
//! - The set whose template is the Deployment's is the new one; a rollback
//!   copies an old set's template into the Deployment, so that set becomes
//!   the new one again, with the next revision number.
//! - Progressing turns False (ProgressDeadlineExceeded) when the rollout has
//!   not moved for `progressDeadlineSeconds`; it does not undo anything.

use crate::apiserver::{lost_race, unless_lost, ApiServer, Caller};
use crate::controllers::events::{Happening, Recorder};
use crate::controllers::replicaset::{
    controller_of, controller_ref, managed, owner_keys, see_own_writes, selected,
};
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use flotilla_api::objects::deployment::{condition, reason, DeploymentStatus, StrategyType};
use flotilla_api::objects::replica_set::ReplicaSetSpec;
use flotilla_api::objects::workload::{
    find_condition, set_condition, Condition, ConditionStatus, CHANGE_CAUSE, POD_TEMPLATE_HASH,
    REVISION,
};
use flotilla_api::objects::{Deployment, ReplicaSet};
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object, ObjectMeta};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const ME: Caller = Caller::Controller("deployment");

/// What to do for one Deployment.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// The new ReplicaSet, when the template has none yet.
    pub create: Option<ReplicaSet>,
    /// ReplicaSets to write (scaled, adopted, released, renumbered).
    pub update: Vec<ReplicaSet>,
    /// Old ReplicaSets beyond the history limit.
    pub delete: Vec<ReplicaSet>,
    /// The status to write, if it changed.
    pub status: Option<DeploymentStatus>,
    /// When to look again (the progress deadline).
    pub again_after: Option<Duration>,
}

/// A ReplicaSet's revision (0 if it has none).
pub fn revision(rs: &ReplicaSet) -> u64 {
    rs.metadata
        .annotations
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The ReplicaSet `d`'s template would make (before its replicas are set).
pub fn new_replica_set(d: &Deployment, hash: &str, revision: u64) -> ReplicaSet {
    let mut template = d.spec.template.clone();
    template
        .metadata
        .labels
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    let mut selector = d.spec.selector.clone();
    selector
        .match_labels
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(REVISION.to_string(), revision.to_string());
    if let Some(cause) = d.metadata.annotations.get(CHANGE_CAUSE) {
        annotations.insert(CHANGE_CAUSE.to_string(), cause.clone());
    }
    ReplicaSet {
        metadata: ObjectMeta {
            name: format!("{}-{hash}", d.metadata.name),
            namespace: d.metadata.namespace.clone(),
            labels: template.metadata.labels.clone(),
            annotations,
            owner_references: vec![controller_ref(Kind::Deployment, &d.metadata)],
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(0),
            selector,
            template,
            min_ready_seconds: d.spec.min_ready_seconds,
        },
        ..ReplicaSet::default()
    }
}

/// The plan for `d` over `sets` (the ReplicaSets in its namespace that it
/// owns or that its selector matches) at `now`.
pub fn plan(d: &Deployment, sets: &[&ReplicaSet], now: Time) -> Plan {
    let mut out = Plan::default();
    let uid = &d.metadata.uid;
    let mut changed: Vec<ReplicaSet> = Vec::new();
    // Adopt matching orphans, release owned sets that no longer match.
    let mut owned: Vec<ReplicaSet> = Vec::new();
    for rs in sets {
        let matches = d.spec.selector.matches(&rs.metadata.labels);
        match controller_of(&rs.metadata) {
            Some(r) if &r.uid == uid => {
                if matches {
                    owned.push((*rs).clone());
                } else {
                    let mut released = (*rs).clone();
                    released.metadata.owner_references.retain(|r| &r.uid != uid);
                    out.update.push(released);
                }
            }
            Some(_) => {}
            None if matches => {
                let mut adopted = (*rs).clone();
                adopted
                    .metadata
                    .owner_references
                    .push(controller_ref(Kind::Deployment, &d.metadata));
                owned.push(adopted.clone());
                changed.push(adopted);
            }
            None => {}
        }
    }
    owned.sort_by(|a, b| {
        revision(a)
            .cmp(&revision(b))
            .then(
                a.metadata
                    .creation_timestamp
                    .cmp(&b.metadata.creation_timestamp),
            )
            .then(a.metadata.name.cmp(&b.metadata.name))
    });
    let replicas = d.spec.replicas();
    let (surge, max_unavailable) = d.spec.surge_and_unavailable().unwrap_or((0, 1));
    let new_at = owned
        .iter()
        .position(|rs| rs.spec.template.same_as(&d.spec.template));
    let max_old_revision = owned
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_at)
        .map(|(_, rs)| revision(rs))
        .max()
        .unwrap_or(0);
    let mut created = false;
    let mut scaled = false;
    // The new set, made if the template has none (not while paused).
    let mut new_rs: Option<ReplicaSet> = match new_at {
        Some(i) => {
            let mut rs = owned.remove(i);
            // A set that becomes new again (a rollback) takes the next revision.
            if revision(&rs) <= max_old_revision {
                rs.metadata
                    .annotations
                    .insert(REVISION.into(), (max_old_revision + 1).to_string());
                changed.push(rs.clone());
            }
            if rs.spec.min_ready_seconds != d.spec.min_ready_seconds {
                rs.spec.min_ready_seconds = d.spec.min_ready_seconds;
                changed.push(rs.clone());
            }
            Some(rs)
        }
        None if d.spec.paused => None,
        None => {
            created = true;
            Some(new_replica_set(
                d,
                &d.spec.template.hash(),
                max_old_revision + 1,
            ))
        }
    };
    let mut old = owned;
    let spec = |rs: &ReplicaSet| rs.spec.replicas();
    let mut scale = |rs: &mut ReplicaSet, to: u32, changed: &mut Vec<ReplicaSet>| {
        if rs.spec.replicas() != to {
            rs.spec.replicas = Some(to);
            changed.push(rs.clone());
            scaled = true;
        }
    };
    if d.spec.paused {
        // Scaling only: the one active set (the new one, or the old one the
        // template has moved away from) takes the new count. With several
        // active (paused mid-rollout), nothing is scaled until resumed.
        let active: Vec<usize> = (0..old.len()).filter(|i| spec(&old[*i]) > 0).collect();
        match (new_rs.as_mut(), active.as_slice()) {
            (Some(rs), []) => scale(rs, replicas, &mut changed),
            (None, [only]) => scale(&mut old[*only], replicas, &mut changed),
            _ => {}
        }
    } else {
        match d.spec.strategy.type_ {
            StrategyType::Recreate => {
                let mut old_pods = 0;
                for rs in old.iter_mut() {
                    old_pods += rs.status.replicas;
                    scale(rs, 0, &mut changed);
                }
                if old_pods == 0 && old.iter().all(|o| spec(o) == 0) {
                    if let Some(rs) = new_rs.as_mut() {
                        scale(rs, replicas, &mut changed);
                    }
                }
            }
            StrategyType::RollingUpdate => {
                let new = new_rs.as_mut();
                if let Some(rs) = new {
                    let total: u32 = old.iter().map(spec).sum::<u32>() + spec(rs);
                    let allowed = replicas.saturating_add(surge);
                    let want = if spec(rs) > replicas {
                        replicas
                    } else if total < allowed {
                        (spec(rs) + (allowed - total)).min(replicas)
                    } else {
                        spec(rs)
                    };
                    scale(rs, want, &mut changed);
                    let new_spec = spec(rs);
                    let new_unavailable = new_spec.saturating_sub(rs.status.available_replicas);
                    let new_available = rs.status.available_replicas;
                    scale_down_old(
                        &mut old,
                        replicas,
                        max_unavailable,
                        new_spec,
                        new_unavailable,
                        new_available,
                        &mut scale,
                        &mut changed,
                    );
                }
            }
        }
    }
    // History: old sets scaled to 0 and empty, beyond the limit, oldest first.
    let empty: Vec<&ReplicaSet> = old
        .iter()
        .filter(|rs| spec(rs) == 0 && rs.status.replicas == 0)
        .collect();
    let limit = d.spec.revision_history_limit() as usize;
    let doomed: BTreeSet<String> = empty
        .iter()
        .take(empty.len().saturating_sub(limit))
        .map(|rs| rs.metadata.name.clone())
        .collect();
    out.delete = old
        .iter()
        .filter(|rs| doomed.contains(&rs.metadata.name))
        .cloned()
        .collect();
    // One write per set: the last version of each changed set.
    let mut seen = BTreeSet::new();
    for rs in changed.into_iter().rev() {
        if doomed.contains(&rs.metadata.name) || !seen.insert(rs.metadata.name.clone()) {
            continue;
        }
        if created
            && new_rs
                .as_ref()
                .is_some_and(|n| n.metadata.name == rs.metadata.name)
        {
            continue;
        }
        out.update.push(rs);
    }
    out.update.reverse();
    if created {
        out.create = new_rs.clone();
    }
    let (status, again) = status_of(
        d,
        new_rs.as_ref(),
        &old,
        (max_unavailable, created, scaled),
        now,
    );
    if status != d.status {
        out.status = Some(status);
    }
    out.again_after = again;
    out
}

/// Shrinks old sets within the availability floor (Kubernetes'
/// `reconcileOldReplicaSets`): first by the pods of each that are not
/// available, then by available ones while more than
/// `replicas − maxUnavailable` stay available, oldest set first.
#[allow(clippy::too_many_arguments)]
fn scale_down_old(
    old: &mut [ReplicaSet],
    replicas: u32,
    max_unavailable: u32,
    new_spec: u32,
    new_unavailable: u32,
    new_available: u32,
    scale: &mut impl FnMut(&mut ReplicaSet, u32, &mut Vec<ReplicaSet>),
    changed: &mut Vec<ReplicaSet>,
) {
    let min_available = i64::from(replicas.saturating_sub(max_unavailable));
    let all_pods: i64 = old
        .iter()
        .map(|rs| i64::from(rs.spec.replicas()))
        .sum::<i64>()
        + i64::from(new_spec);
    let mut budget = all_pods - min_available - i64::from(new_unavailable);
    if budget <= 0 {
        return;
    }
    // The pods of old sets that are not available go first.
    for rs in old.iter_mut() {
        if budget <= 0 {
            break;
        }
        let have = rs.spec.replicas();
        let unhealthy = i64::from(have.saturating_sub(rs.status.available_replicas));
        let by = unhealthy.min(budget);
        if by > 0 {
            let to = have - u32::try_from(by).unwrap_or(have);
            scale(rs, to, changed);
            budget -= by;
        }
    }
    // Then available ones, while the floor holds.
    let available: i64 = old
        .iter()
        .map(|rs| i64::from(rs.status.available_replicas.min(rs.spec.replicas())))
        .sum::<i64>()
        + i64::from(new_available);
    let mut down = available - min_available;
    for rs in old.iter_mut() {
        if down <= 0 {
            break;
        }
        let have = rs.spec.replicas();
        let by = i64::from(have).min(down);
        if by > 0 {
            scale(rs, have - u32::try_from(by).unwrap_or(have), changed);
            down -= by;
        }
    }
}

/// The Deployment's status from its sets: counts, Available, Progressing;
/// and when to look again for the progress deadline.
fn status_of(
    d: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
    (max_unavailable, created, scaled): (u32, bool, bool),
    now: Time,
) -> (DeploymentStatus, Option<Duration>) {
    let replicas = d.spec.replicas();
    let all = new_rs.into_iter().chain(old.iter());
    let mut s = DeploymentStatus {
        observed_generation: d.metadata.generation,
        conditions: d.status.conditions.clone(),
        ..DeploymentStatus::default()
    };
    for rs in all {
        s.replicas += rs.status.replicas;
        s.ready_replicas += rs.status.ready_replicas;
        s.available_replicas += rs.status.available_replicas;
    }
    s.updated_replicas = new_rs.map(|rs| rs.status.replicas).unwrap_or(0);
    s.unavailable_replicas = replicas.saturating_sub(s.available_replicas);
    let floor = replicas.saturating_sub(max_unavailable);
    let available = if s.available_replicas >= floor {
        (
            ConditionStatus::True,
            reason::MIN_AVAILABLE,
            "Deployment has minimum availability.".to_string(),
        )
    } else {
        (
            ConditionStatus::False,
            reason::MIN_UNAVAILABLE,
            format!(
                "{} of the at least {floor} wanted pods are available.",
                s.available_replicas
            ),
        )
    };
    let cond = |type_: &str, (status, why, message): (ConditionStatus, &str, String)| Condition {
        type_: type_.into(),
        status,
        last_update_time: Some(now),
        last_transition_time: Some(now),
        reason: why.into(),
        message,
    };
    let same = |type_: &str, status: ConditionStatus, why: &str| {
        find_condition(&s.conditions, type_).is_some_and(|c| c.status == status && c.reason == why)
    };
    if !same(condition::AVAILABLE, available.0, available.1) {
        set_condition(&mut s.conditions, cond(condition::AVAILABLE, available));
    }
    let name = new_rs
        .map(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let complete = new_rs.is_some()
        && s.updated_replicas == replicas
        && s.replicas == replicas
        && s.available_replicas == replicas
        && new_rs.is_some_and(|rs| rs.spec.replicas() == replicas)
        && old.iter().all(|rs| rs.spec.replicas() == 0);
    let moved = created
        || scaled
        || s.updated_replicas > d.status.updated_replicas
        || s.available_replicas > d.status.available_replicas
        || s.ready_replicas > d.status.ready_replicas
        || s.replicas != d.status.replicas;
    let deadline_ms = i64::from(d.spec.progress_deadline_seconds()) * 1000;
    let mut again = None;
    let progressing = find_condition(&s.conditions, condition::PROGRESSING).cloned();
    let next = if d.spec.paused {
        Some((
            ConditionStatus::Unknown,
            reason::PAUSED,
            "Deployment is paused".to_string(),
        ))
    } else if complete {
        Some((
            ConditionStatus::True,
            reason::NEW_RS_AVAILABLE,
            format!("ReplicaSet \"{name}\" has successfully progressed."),
        ))
    } else if created {
        Some((
            ConditionStatus::True,
            reason::NEW_RS_CREATED,
            format!("Created new replica set \"{name}\""),
        ))
    } else if moved
        || progressing
            .as_ref()
            .is_none_or(|c| c.reason == reason::PAUSED)
    {
        Some((
            ConditionStatus::True,
            reason::RS_UPDATED,
            format!("ReplicaSet \"{name}\" is progressing."),
        ))
    } else {
        let c = progressing.clone().unwrap_or_default();
        let since = c.last_update_time.unwrap_or(now);
        let left = deadline_ms - now.since(since);
        if c.status == ConditionStatus::True && left <= 0 {
            Some((
                ConditionStatus::False,
                reason::DEADLINE_EXCEEDED,
                format!("ReplicaSet \"{name}\" has timed out progressing."),
            ))
        } else {
            if c.status == ConditionStatus::True {
                again = Some(Duration::from_millis(left.unsigned_abs()));
            }
            None
        }
    };
    if let Some((status, why, message)) = next {
        let unchanged = progressing
            .as_ref()
            .is_some_and(|c| c.status == status && c.reason == why && c.message == message);
        // Progress moves the update time; a standing state keeps it.
        if !unchanged || moved {
            set_condition(
                &mut s.conditions,
                cond(condition::PROGRESSING, (status, why, message)),
            );
        }
        if status == ConditionStatus::True && !complete {
            again = Some(Duration::from_millis(deadline_ms.unsigned_abs()));
        }
    }
    (s, again)
}

/// The Deployment controller, for [`crate::controllers::runtime::drive`].
pub struct Deployments {
    pub api: ApiServer,
    pub cache: Cache,
    pub events: crate::controllers::events::Recorder,
}

impl Reconciler for Deployments {
    fn name(&self) -> &'static str {
        "deployment"
    }

    fn keys_for(
        &self,
        state: &CacheState,
        old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    ) {
        match new {
            Object::Deployment(_) => out.push(new.key()),
            Object::ReplicaSet(_) => owner_keys(state, old, new, Kind::Deployment, true, out),
            _ => {}
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        state.of_kind(Kind::Deployment).map(|o| o.key()).collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let (d, plan, replicas) = {
            let state = self.cache.read();
            let Some(d) = managed::<Deployment>(&state, key) else {
                return Ok(None);
            };
            let mut keys = BTreeSet::new();
            let sets: Vec<&ReplicaSet> = state
                .owned_by(&d.metadata.uid)
                .chain(selected(
                    &state,
                    Kind::ReplicaSet,
                    &d.metadata.namespace,
                    &d.spec.selector,
                ))
                .filter(|o| keys.insert(o.key()))
                .filter_map(|o| o.as_kind::<ReplicaSet>())
                .collect();
            // The counts the plan started from, for its ScalingReplicaSet events.
            let replicas: HashMap<String, u32> = sets
                .iter()
                .map(|rs| (rs.metadata.name.clone(), rs.spec.replicas()))
                .collect();
            (d.clone(), plan(d, &sets, Time::now()), replicas)
        };
        let written = execute(&self.api, &self.events, &d, plan.clone(), &replicas).await?;
        see_own_writes(&self.cache, written).await?;
        Ok(plan.again_after)
    }
}

/// Writes a plan; answers the highest revision it wrote.
async fn execute(
    api: &ApiServer,
    events: &Recorder,
    d: &Deployment,
    plan: Plan,
    replicas_before: &HashMap<String, u32>,
) -> Result<u64, ApiError> {
    let scaled = |rs: &ReplicaSet, from: Option<u32>| {
        let (to, name) = (rs.spec.replicas(), &rs.metadata.name);
        let message = match from {
            Some(f) if f == to => return,
            Some(f) if f > to => format!("Scaled down replica set {name} from {f} to {to}"),
            Some(f) => format!("Scaled up replica set {name} from {f} to {to}"),
            None => format!("Scaled up replica set {name} to {to}"),
        };
        events.record(
            Kind::Deployment,
            &d.metadata,
            Happening::normal("deployment-controller", "ScalingReplicaSet", message),
        );
    };
    let mut revision = 0u64;
    let mut note = |o: &Object| revision = revision.max(o.meta().resource_version);
    let name = format!("{}/{}", d.metadata.namespace, d.metadata.name);
    if let Some(rs) = plan.create {
        tracing::info!(deployment = %name, replicaset = %rs.metadata.name, replicas = rs.spec.replicas(), "creating the new replica set");
        let made = rs.clone();
        match api.create(&ME, Object::ReplicaSet(rs)).await {
            Ok(o) => {
                note(&o);
                scaled(&made, None);
            }
            // Made by a previous pass whose answer was lost, or a name
            // taken by a set that is not this template's: planned again.
            Err(e) if e.code == ErrorCode::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    for rs in plan.update {
        tracing::info!(deployment = %name, replicaset = %rs.metadata.name, replicas = rs.spec.replicas(), "updating replica set");
        let before = replicas_before.get(&rs.metadata.name).copied();
        let after = rs.clone();
        match api.update(&ME, Object::ReplicaSet(rs)).await {
            Ok(o) => {
                note(&o);
                if before.is_some() {
                    scaled(&after, before);
                }
            }
            Err(e) if lost_race(&e) => {}
            Err(e) => return Err(e),
        }
    }
    for rs in plan.delete {
        let m = &rs.metadata;
        if let Some(o) = unless_lost(
            api.delete(
                &ME,
                Kind::ReplicaSet,
                &m.namespace,
                &m.name,
                m.resource_version,
            )
            .await,
        )? {
            note(&o);
        }
    }
    if let Some(status) = plan.status {
        let mut with = d.clone();
        with.status = status;
        if let Some(o) = unless_lost(
            api.update_status_at(&ME, Object::Deployment(with), d.metadata.resource_version)
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
    use flotilla_api::objects::deployment::{RollingUpdate, StrategyType};
    use flotilla_api::objects::workload::{IntOrPercent, PodTemplateSpec, TemplateMeta};
    use std::collections::BTreeMap;

    fn template(version: &str) -> PodTemplateSpec {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let mut t = PodTemplateSpec {
            metadata: TemplateMeta {
                labels,
                ..Default::default()
            },
            ..Default::default()
        };
        t.spec.module = format!(
            "sha256:{}",
            version.repeat(64).chars().take(64).collect::<String>()
        );
        t
    }

    fn deployment(replicas: u32, version: &str, surge: &str, unavailable: &str) -> Deployment {
        let mut d = Deployment {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                uid: "d-uid".into(),
                generation: 1,
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        };
        d.spec.replicas = Some(replicas);
        d.spec.selector.match_labels = [("app".to_string(), "web".to_string())].into();
        d.spec.template = template(version);
        let n = |s: &str| {
            Some(match s.parse::<u32>() {
                Ok(n) => IntOrPercent::Int(n),
                Err(_) => IntOrPercent::Str(s.into()),
            })
        };
        d.spec.strategy.rolling_update = Some(RollingUpdate {
            max_surge: n(surge),
            max_unavailable: n(unavailable),
        });
        d
    }

    /// The sets a plan leaves (created, updated, deleted), with stored metadata.
    fn apply(sets: &mut Vec<ReplicaSet>, p: &Plan) {
        if let Some(rs) = &p.create {
            let mut rs = rs.clone();
            rs.metadata.uid = format!("uid-{}", rs.metadata.name);
            sets.push(rs);
        }
        for u in &p.update {
            if let Some(s) = sets.iter_mut().find(|s| s.metadata.name == u.metadata.name) {
                let status = s.status.clone();
                *s = u.clone();
                s.status = status;
            }
        }
        sets.retain(|s| !p.delete.iter().any(|d| d.metadata.name == s.metadata.name));
    }

    #[test]
    fn a_new_deployment_makes_its_first_replica_set() {
        let d = deployment(3, "a", "25%", "25%");
        let p = plan(&d, &[], Time(1));
        let rs = p.create.expect("a new set");
        assert_eq!(rs.spec.replicas, Some(3));
        assert_eq!(revision(&rs), 1);
        let hash = d.spec.template.hash();
        assert_eq!(rs.metadata.name, format!("web-{hash}"));
        assert_eq!(
            rs.spec.selector.match_labels.get(POD_TEMPLATE_HASH),
            Some(&hash)
        );
        assert!(rs.spec.selector.matches(&rs.spec.template.metadata.labels));
        assert_eq!(
            controller_of(&rs.metadata).map(|r| r.uid.as_str()),
            Some("d-uid")
        );
        let s = p.status.expect("status");
        let c = find_condition(&s.conditions, condition::PROGRESSING).expect("progressing");
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::True, reason::NEW_RS_CREATED)
        );
    }

    /// Plays a rollout: the plan, then a ReplicaSet controller whose pods
    /// of `good` templates become available one pass after they are made
    /// (pods of other templates never do), until nothing changes. Checks at
    /// every pass that at least `replicas − maxUnavailable` pods are
    /// available and at most `replicas + maxSurge` exist. Answers the sets.
    fn roll(d: &Deployment, sets: &mut Vec<ReplicaSet>, good: &[&str], check: bool) -> i64 {
        let (surge, unavailable) = d.spec.surge_and_unavailable().expect("valid");
        let replicas = d.spec.replicas();
        let mut d = d.clone();
        for pass in 0..200 {
            let refs: Vec<&ReplicaSet> = sets.iter().collect();
            let p = plan(&d, &refs, Time(pass));
            if let Some(s) = &p.status {
                d.status = s.clone();
            }
            let quiet = p.create.is_none() && p.update.is_empty() && p.delete.is_empty();
            apply(sets, &p);
            // The ReplicaSet controller: pods follow spec at once, those
            // of a good template that existed a pass ago are available, and
            // a shrinking set gives up its unavailable pods first.
            let mut changed = false;
            for rs in sets.iter_mut() {
                let want = rs.spec.replicas();
                let is_good = good.iter().any(|v| template(v).same_as(&rs.spec.template));
                let before = (rs.status.replicas, rs.status.available_replicas);
                rs.status.available_replicas = if is_good {
                    rs.status.replicas.min(want)
                } else {
                    0
                };
                rs.status.ready_replicas = rs.status.available_replicas;
                rs.status.replicas = want;
                changed |= before != (rs.status.replicas, rs.status.available_replicas);
            }
            let available: u32 = sets.iter().map(|rs| rs.status.available_replicas).sum();
            let pods: u32 = sets.iter().map(|rs| rs.spec.replicas()).sum();
            let floor = replicas.saturating_sub(unavailable);
            if check {
                assert!(
                    available >= floor,
                    "pass {pass}: {available} available < {floor}: {sets:#?}"
                );
            }
            assert!(
                pods <= replicas + surge,
                "pass {pass}: {pods} pods > {replicas} + {surge}"
            );
            if quiet && !changed {
                return pass;
            }
        }
        panic!("the rollout did not settle: {sets:#?}");
    }

    #[test]
    fn rolling_updates_keep_availability_within_bounds() {
        // (replicas, maxSurge, maxUnavailable)
        let shapes = [
            (1, "25%", "25%"),
            (3, "25%", "25%"),
            (4, "1", "1"),
            (6, "0", "1"),
            (6, "2", "0"),
            (10, "30%", "10%"),
            (10, "100%", "0%"),
            (5, "0%", "100%"),
        ];
        for (replicas, surge, unavailable) in shapes {
            let v1 = deployment(replicas, "a", surge, unavailable);
            let mut sets = Vec::new();
            roll(&v1, &mut sets, &["a"], false);
            assert_eq!(sets.len(), 1);
            assert_eq!(sets[0].status.available_replicas, replicas);
            let mut v2 = v1.clone();
            v2.spec.template = template("b");
            roll(&v2, &mut sets, &["a", "b"], true);
            let new = sets
                .iter()
                .find(|rs| rs.spec.template.same_as(&v2.spec.template))
                .expect("new set");
            assert_eq!(
                new.spec.replicas(),
                replicas,
                "{replicas} {surge} {unavailable}"
            );
            assert_eq!(revision(new), 2);
            for old in sets
                .iter()
                .filter(|rs| rs.metadata.name != new.metadata.name)
            {
                assert_eq!(old.spec.replicas(), 0);
            }
        }
    }

    #[test]
    fn a_bad_version_stops_the_rollout_with_the_old_pods_serving() {
        let v1 = deployment(4, "a", "25%", "25%");
        let mut sets = Vec::new();
        roll(&v1, &mut sets, &["a"], false);
        let mut v2 = v1.clone();
        v2.spec.template = template("b");
        roll(&v2, &mut sets, &["a"], true);
        let old = sets
            .iter()
            .find(|rs| rs.spec.template.same_as(&v1.spec.template))
            .expect("old set");
        // 4 − 25% = 3 stay available; the new set holds the surge and the
        // one pod that may be missing.
        assert_eq!(old.spec.replicas(), 3);
        assert_eq!(old.status.available_replicas, 3);
    }

    #[test]
    fn recreate_removes_old_pods_before_it_starts_new_ones() {
        let mut d = deployment(3, "a", "1", "1");
        d.spec.strategy.type_ = StrategyType::Recreate;
        d.spec.strategy.rolling_update = None;
        let mut old = new_replica_set(&d, &d.spec.template.hash(), 1);
        old.spec.replicas = Some(3);
        old.status.replicas = 3;
        old.status.available_replicas = 3;
        d.spec.template = template("b");
        let p = plan(&d, &[&old], Time(1));
        let new = p.create.clone().expect("the new set");
        assert_eq!(new.spec.replicas(), 0, "no new pod while old ones run");
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].spec.replicas(), 0);
        // The old pods are gone: the new set grows.
        let mut old0 = p.update[0].clone();
        old0.status = Default::default();
        let mut new = new;
        new.metadata.uid = "n".into();
        let p = plan(&d, &[&old0, &new], Time(2));
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].spec.replicas(), 3);
    }

    #[test]
    fn a_rollback_takes_the_old_set_back_with_the_next_revision() {
        let v1 = deployment(2, "a", "25%", "25%");
        let mut sets = Vec::new();
        roll(&v1, &mut sets, &["a"], false);
        let mut v2 = v1.clone();
        v2.spec.template = template("b");
        roll(&v2, &mut sets, &["a", "b"], true);
        roll(&v1, &mut sets, &["a", "b"], true);
        assert_eq!(sets.len(), 2, "no third set for a template seen before");
        let back = sets
            .iter()
            .find(|rs| rs.spec.template.same_as(&v1.spec.template))
            .expect("v1's set");
        assert_eq!(revision(back), 3);
        assert_eq!(back.spec.replicas(), 2);
    }

    #[test]
    fn old_sets_beyond_the_history_limit_are_deleted_oldest_first() {
        let mut d = deployment(1, "a", "25%", "25%");
        d.spec.revision_history_limit = Some(1);
        let mut sets = Vec::new();
        for v in ["a", "b", "c", "d"] {
            d.spec.template = template(v);
            let check = !sets.is_empty();
            roll(&d, &mut sets, &["a", "b", "c", "d"], check);
        }
        let mut revisions: Vec<u64> = sets.iter().map(revision).collect();
        revisions.sort();
        assert_eq!(revisions, [3, 4]);
    }

    #[test]
    fn a_rollout_that_stands_still_misses_its_deadline() {
        let mut d = deployment(2, "a", "25%", "25%");
        d.spec.progress_deadline_seconds = Some(10);
        let mut sets = Vec::new();
        roll(&d, &mut sets, &["a"], false);
        d.spec.template = template("b");
        let refs: Vec<&ReplicaSet> = sets.iter().collect();
        let p = plan(&d, &refs, Time(1_000));
        d.status = p.status.clone().expect("status");
        apply(&mut sets, &p);
        let refs: Vec<&ReplicaSet> = sets.iter().collect();
        // Nothing moves: before the deadline the plan asks to look again at it.
        let p = plan(&d, &refs, Time(5_000));
        assert_eq!(p.again_after, Some(Duration::from_secs(6)));
        let p = plan(&d, &refs, Time(11_500));
        let s = p.status.expect("status");
        let c = find_condition(&s.conditions, condition::PROGRESSING).expect("progressing");
        assert_eq!(
            (c.status, c.reason.as_str()),
            (ConditionStatus::False, reason::DEADLINE_EXCEEDED)
        );
    }

    #[test]
    fn a_paused_deployment_scales_but_does_not_roll_out() {
        let mut d = deployment(2, "a", "25%", "25%");
        let mut sets = Vec::new();
        roll(&d, &mut sets, &["a"], false);
        d.spec.paused = true;
        d.spec.template = template("b");
        d.spec.replicas = Some(5);
        let refs: Vec<&ReplicaSet> = sets.iter().collect();
        let p = plan(&d, &refs, Time(1));
        assert!(p.create.is_none());
        assert_eq!(p.update.len(), 1);
        assert_eq!(p.update[0].spec.replicas(), 5);
        let c = find_condition(
            &p.status.expect("status").conditions,
            condition::PROGRESSING,
        )
        .cloned()
        .expect("progressing");
        assert_eq!(c.reason, reason::PAUSED);
    }

    #[test]
    fn scaling_a_finished_deployment_scales_its_set() {
        let mut d = deployment(6, "a", "25%", "25%");
        let mut sets = Vec::new();
        roll(&d, &mut sets, &["a"], false);
        for n in [2, 8] {
            d.spec.replicas = Some(n);
            roll(&d, &mut sets, &["a"], false);
            assert_eq!(sets[0].spec.replicas(), n);
        }
    }
}
