//! The ReplicaSet controller: keeps each ReplicaSet's count of pods. It
//! adopts matching pods that have no controller, releases the ones it owns
//! that no longer match, creates pods from the template when there are too
//! few and deletes the least useful when there are too many, and reports
//! how many are ready and available.
//!
//! [`plan`] is pure (a ReplicaSet, the pods it may count, the nodes'
//! readiness and the time); [`ReplicaSets`] reads the shared cache, writes
//! the plan through the API core as `Caller::Controller("replicaset")`, and
//! waits for the cache to show its writes before it plans the same set
//! again, so a pod is never created twice for one missing replica.

use crate::apiserver::{lost_race, unless_lost, ApiServer, Caller};
use crate::controllers::events::{Happening, Recorder};
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use flotilla_api::meta::OwnerReference;
use flotilla_api::objects::replica_set::ReplicaSetStatus;
use flotilla_api::objects::scheduling::LabelSelector;
use flotilla_api::objects::{condition, object_key, PodPhase, ReplicaSet};
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object, ObjectMeta, Pod};
use std::cmp::Ordering;
use std::sync::Arc;
use std::time::Duration;

const ME: Caller = Caller::Controller("replicaset");

/// Pods created at once start with this many, doubling while they succeed
/// (Kubernetes' slow start): a set whose pods are all refused fails after a
/// few tries rather than hundreds.
const SLOW_START: usize = 1;
/// Most pods created or deleted in one pass; the rest in the next.
const BURST: usize = 500;

/// The owner reference of a pod's controller, if it has one.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().find(|r| r.controller)
}

/// An owner reference naming `meta` (of `kind`) as the controller.
pub fn controller_ref(kind: Kind, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        kind: kind.as_str().to_string(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        controller: true,
        // Deleted in the foreground, the owner waits for it.
        block_owner_deletion: true,
    }
}

/// Whether a pod has not ended and is not being deleted: it counts as a replica.
pub fn is_active(p: &Pod) -> bool {
    !p.status.phase.is_terminal() && !p.metadata.is_deleting()
}

/// Since when a pod has been ready, if it is.
pub fn ready_since(p: &Pod) -> Option<Time> {
    p.status
        .condition(condition::READY)
        .filter(|c| c.status)
        .map(|c| c.last_transition_time.unwrap_or_default())
}

/// Whether a pod has been ready for `min_ready_seconds`.
pub fn is_available(p: &Pod, min_ready_seconds: u32, now: Time) -> bool {
    ready_since(p).is_some_and(|t| now.since(t) >= i64::from(min_ready_seconds) * 1000)
}

/// What to do for one ReplicaSet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Pods to take as the set's own: they match and have no controller
    /// (each with the owner reference added).
    pub adopt: Vec<Pod>,
    /// Pods the set owns that no longer match (each without the reference).
    pub release: Vec<Pod>,
    /// How many pods to make from the template.
    pub create: usize,
    /// Pods to delete, the least useful first.
    pub delete: Vec<Pod>,
    /// The status to write, if it changed.
    pub status: Option<ReplicaSetStatus>,
    /// When to look again: a ready pod becomes available.
    pub again_after: Option<Duration>,
}

/// The plan for `rs` over `pods` (those in its namespace that it owns or
/// that match its selector), given which nodes are ready, at `now`.
pub fn plan(rs: &ReplicaSet, pods: &[&Pod], node_ready: &dyn Fn(&str) -> bool, now: Time) -> Plan {
    let mut out = Plan::default();
    let uid = &rs.metadata.uid;
    let selector = &rs.spec.selector;
    let mut owned: Vec<&Pod> = Vec::new();
    for p in pods {
        let matches = selector.matches(&p.metadata.labels);
        match controller_of(&p.metadata) {
            Some(r) if &r.uid == uid => {
                if matches {
                    owned.push(p);
                } else {
                    let mut released = (*p).clone();
                    released.metadata.owner_references.retain(|r| &r.uid != uid);
                    out.release.push(released);
                }
            }
            Some(_) => {}
            None if matches && is_active(p) => {
                let mut adopted = (*p).clone();
                adopted
                    .metadata
                    .owner_references
                    .push(controller_ref(Kind::ReplicaSet, &rs.metadata));
                out.adopt.push(adopted);
                owned.push(p);
            }
            None => {}
        }
    }
    let mut active: Vec<&Pod> = owned.into_iter().filter(|p| is_active(p)).collect();
    let want = rs.spec.replicas() as usize;
    if active.len() < want {
        out.create = (want - active.len()).min(BURST);
    } else if active.len() > want {
        active.sort_by(|a, b| deletion_order(a, b, node_ready));
        out.delete = active[..(active.len() - want).min(BURST)]
            .iter()
            .map(|p| (*p).clone())
            .collect();
    }
    let min_ready = rs.spec.min_ready_seconds;
    let status = ReplicaSetStatus {
        replicas: count(active.len()),
        ready_replicas: count(active.iter().filter(|p| ready_since(p).is_some()).count()),
        available_replicas: count(
            active
                .iter()
                .filter(|p| is_available(p, min_ready, now))
                .count(),
        ),
        observed_generation: rs.metadata.generation,
    };
    if status != rs.status {
        out.status = Some(status);
    }
    out.again_after = active
        .iter()
        .filter_map(|p| ready_since(p))
        .map(|t| i64::from(min_ready) * 1000 - now.since(t))
        .filter(|wait| *wait > 0)
        .min()
        .map(|ms| Duration::from_millis(ms.unsigned_abs()));
    out
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The order in which a set gives up pods: not yet placed before placed;
/// Pending before Unknown before Running; on a node that is not ready
/// before on one that is; not ready before ready; ready for less time
/// before longer; restarted more before less; newer before older (as
/// Kubernetes ranks them). Ties go by name, so the plan is one.
pub fn deletion_order(a: &Pod, b: &Pod, node_ready: &dyn Fn(&str) -> bool) -> Ordering {
    let placed = |p: &Pod| p.spec.node_name.is_some();
    let phase = |p: &Pod| match p.status.phase {
        PodPhase::Pending => 0,
        PodPhase::Unknown => 1,
        _ => 2,
    };
    let on_ready_node = |p: &Pod| p.spec.node_name.as_deref().is_some_and(node_ready);
    let ready = |p: &Pod| ready_since(p).is_some();
    placed(a)
        .cmp(&placed(b))
        .then(phase(a).cmp(&phase(b)))
        .then(on_ready_node(a).cmp(&on_ready_node(b)))
        .then(ready(a).cmp(&ready(b)))
        // Ready longer (an earlier time) is kept: later times first.
        .then(ready_since(b).cmp(&ready_since(a)))
        .then(b.status.restart_count.cmp(&a.status.restart_count))
        .then(
            b.metadata
                .creation_timestamp
                .cmp(&a.metadata.creation_timestamp),
        )
        .then(a.metadata.name.cmp(&b.metadata.name))
}

/// A pod made from `rs`'s template (its name is chosen when it is written).
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let t = &rs.spec.template;
    Pod {
        metadata: ObjectMeta {
            namespace: rs.metadata.namespace.clone(),
            labels: t.metadata.labels.clone(),
            annotations: t.metadata.annotations.clone(),
            owner_references: vec![controller_ref(Kind::ReplicaSet, &rs.metadata)],
            ..ObjectMeta::default()
        },
        spec: t.spec.clone(),
        ..Pod::default()
    }
}

/// The letters of generated name suffixes (no vowels, no look-alikes, as
/// Kubernetes uses).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `base` and a random suffix of five letters: a name for an object a
/// controller makes (the base cut to leave room, as Kubernetes does).
pub fn generate_name(base: &str) -> String {
    let base: String = base.chars().take(57).collect();
    let base = base.trim_end_matches(['-', '.']);
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect();
    format!("{base}-{suffix}")
}

/// The pods a set may count: those it owns, and those in its namespace
/// its selector matches.
pub fn candidates<'a>(state: &'a CacheState, rs: &'a ReplicaSet) -> Vec<&'a Pod> {
    let mut keys = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    let mut take = |o: &'a Arc<Object>| {
        if let Some(p) = o.as_pod() {
            if keys.insert(o.key()) {
                out.push(p);
            }
        }
    };
    for o in state.owned_by(&rs.metadata.uid) {
        take(o);
    }
    for o in selected(state, Kind::Pod, &rs.metadata.namespace, &rs.spec.selector) {
        take(o);
    }
    out
}

/// The objects of `kind` in `namespace` that `selector` matches, through
/// the label index when the selector names a label.
pub fn selected<'a>(
    state: &'a CacheState,
    kind: Kind,
    namespace: &'a str,
    selector: &'a LabelSelector,
) -> Vec<&'a Arc<Object>> {
    let of_kind = |o: &&Arc<Object>| {
        o.kind() == kind && o.meta().namespace == namespace && selector.matches(&o.meta().labels)
    };
    match selector.match_labels.iter().next() {
        Some((k, v)) => state.labelled(k, v).filter(of_kind).collect(),
        None => state
            .in_namespace(kind, namespace)
            .filter(of_kind)
            .collect(),
    }
}

/// The object of type `T` at `key` for its controller to manage: None
/// when it is gone, or being deleted (the garbage collector takes its
/// dependents then, and making more would only undo that).
pub fn managed<'a, T: flotilla_api::objects::Typed>(
    state: &'a CacheState,
    key: &str,
) -> Option<&'a T> {
    state
        .get(key)
        .and_then(|o| o.as_kind::<T>())
        .filter(|o| !o.metadata().is_deleting())
}

/// The ReplicaSet controller, for [`crate::controllers::runtime::drive`].
pub struct ReplicaSets {
    pub api: ApiServer,
    pub cache: Cache,
    pub events: crate::controllers::events::Recorder,
}

/// How long a controller waits for the cache to show its own writes.
pub const CATCH_UP: Duration = Duration::from_secs(10);

/// The selector of a workload object (the kinds that own by selector).
fn selector_of(o: &Object) -> Option<&LabelSelector> {
    match o {
        Object::ReplicaSet(x) => Some(&x.spec.selector),
        Object::Deployment(x) => Some(&x.spec.selector),
        Object::DaemonSet(x) => Some(&x.spec.selector),
        _ => None,
    }
}

/// Appends the keys of the `owner`-kind objects a change of a dependent
/// (`old` → `new`) concerns: its controller before and after the change,
/// and, for an orphan when `adopting`, every object of that kind in its
/// namespace whose selector matches it (one would adopt it).
pub fn owner_keys(
    state: &CacheState,
    old: Option<&Object>,
    new: &Object,
    owner: Kind,
    adopting: bool,
    out: &mut Vec<String>,
) {
    for o in [old, Some(new)].into_iter().flatten() {
        let m = o.meta();
        match controller_of(m) {
            Some(r) if r.kind == owner.as_str() => {
                out.push(object_key(owner, &m.namespace, &r.name));
            }
            Some(_) => {}
            None if adopting => out.extend(
                state
                    .in_namespace(owner, &m.namespace)
                    .filter(|x| selector_of(x).is_some_and(|s| s.matches(&m.labels)))
                    .map(|x| x.key()),
            ),
            None => {}
        }
    }
}

/// Waits until the cache shows a controller's own writes (up to
/// `revision`), so that its next plan counts them.
pub async fn see_own_writes(cache: &Cache, revision: u64) -> Result<(), ApiError> {
    if revision > 0 && !cache.caught_up(revision, CATCH_UP).await {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the controllers' cache did not show this controller's writes in time",
        ));
    }
    Ok(())
}

impl Reconciler for ReplicaSets {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    fn keys_for(
        &self,
        state: &CacheState,
        old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    ) {
        match new {
            Object::ReplicaSet(_) => out.push(new.key()),
            Object::Pod(_) => owner_keys(state, old, new, Kind::ReplicaSet, true, out),
            _ => {}
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        state.of_kind(Kind::ReplicaSet).map(|o| o.key()).collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let planned = {
            let state = self.cache.read();
            let Some(rs) = managed::<ReplicaSet>(&state, key) else {
                return Ok(None);
            };
            let pods = candidates(&state, rs);
            let node_ready = |n: &str| {
                state
                    .get(&object_key(Kind::Node, "", n))
                    .and_then(|o| o.as_node())
                    .is_some_and(|n| n.status.ready == flotilla_api::objects::ReadyState::Ready)
            };
            (rs.clone(), plan(rs, &pods, &node_ready, Time::now()))
        };
        let (rs, plan) = planned;
        let written = execute(&self.api, &self.events, &rs, plan.clone()).await?;
        see_own_writes(&self.cache, written).await?;
        Ok(plan.again_after)
    }
}

/// Writes a plan; answers the highest revision it wrote (0 if none).
async fn execute(
    api: &ApiServer,
    events: &Recorder,
    rs: &ReplicaSet,
    plan: Plan,
) -> Result<u64, ApiError> {
    let mut revision = 0u64;
    let mut note = |o: &Object| revision = revision.max(o.meta().resource_version);
    let set = format!("{}/{}", rs.metadata.namespace, rs.metadata.name);
    for p in plan.adopt.into_iter().chain(plan.release) {
        if let Some(o) = unless_lost(api.update(&ME, Object::Pod(p)).await)? {
            note(&o);
        }
    }
    let mut left = plan.create;
    let mut batch = SLOW_START;
    while left > 0 {
        let n = batch.min(left);
        let creates = (0..n).map(|_| {
            let mut pod = pod_from_template(rs);
            pod.metadata.name = generate_name(&rs.metadata.name);
            api.create(&ME, Object::Pod(pod))
        });
        let results = futures_util::future::join_all(creates).await;
        let mut failed = None;
        for r in results {
            match r {
                Ok(o) => {
                    note(&o);
                    events.record(
                        Kind::ReplicaSet,
                        &rs.metadata,
                        Happening::normal(
                            "replicaset-controller",
                            "SuccessfulCreate",
                            format!("Created pod: {}", o.meta().name),
                        ),
                    );
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            tracing::warn!(replicaset = %set, error = %e, "creating pods failed");
            events.record(
                Kind::ReplicaSet,
                &rs.metadata,
                Happening::warning(
                    "replicaset-controller",
                    "FailedCreate",
                    format!("Error creating: {}", e.message),
                ),
            );
            return Err(e);
        }
        left -= n;
        batch = batch.saturating_mul(2);
    }
    if plan.create > 0 {
        tracing::info!(replicaset = %set, count = plan.create, "created pods");
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
        match r {
            // Its resourceVersion is the delete's revision.
            Ok(o) => {
                note(&o);
                events.record(
                    Kind::ReplicaSet,
                    &rs.metadata,
                    Happening::normal(
                        "replicaset-controller",
                        "SuccessfulDelete",
                        format!("Deleted pod: {}", o.meta().name),
                    ),
                );
            }
            Err(e) if lost_race(&e) => {}
            Err(e) => return Err(e),
        }
    }
    if !plan.delete.is_empty() {
        tracing::info!(replicaset = %set, count = plan.delete.len(), "deleted pods");
    }
    if let Some(status) = plan.status {
        let mut with = rs.clone();
        with.status = status;
        if let Some(o) = unless_lost(
            api.update_status_at(&ME, Object::ReplicaSet(with), rs.metadata.resource_version)
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
    use flotilla_api::objects::workload::PodTemplateSpec;
    use flotilla_api::objects::PodCondition;
    use std::collections::BTreeMap;

    fn labels(app: &str) -> BTreeMap<String, String> {
        [("app".to_string(), app.to_string())].into()
    }

    fn rs(replicas: u32) -> ReplicaSet {
        let mut r = ReplicaSet {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                uid: "rs-uid".into(),
                generation: 3,
                ..ObjectMeta::default()
            },
            ..ReplicaSet::default()
        };
        r.spec.replicas = Some(replicas);
        r.spec.selector.match_labels = labels("web");
        r.spec.template = PodTemplateSpec {
            metadata: flotilla_api::objects::workload::TemplateMeta {
                labels: labels("web"),
                ..Default::default()
            },
            ..Default::default()
        };
        r
    }

    /// A pod: name, owner uid ("" for none), app label, node, phase, ready since (ms), created (ms).
    fn pod(
        name: &str,
        owner: &str,
        app: &str,
        node: Option<&str>,
        phase: PodPhase,
        ready: Option<i64>,
        created: i64,
    ) -> Pod {
        let mut p = Pod {
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                labels: labels(app),
                creation_timestamp: Some(Time(created)),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        };
        if !owner.is_empty() {
            p.metadata.owner_references.push(OwnerReference {
                kind: "ReplicaSet".into(),
                name: "web".into(),
                uid: owner.into(),
                controller: true,
                ..Default::default()
            });
        }
        p.spec.node_name = node.map(String::from);
        p.status.phase = phase;
        if let Some(t) = ready {
            p.status.set_condition(PodCondition {
                type_: condition::READY.into(),
                status: true,
                last_transition_time: Some(Time(t)),
                ..PodCondition::default()
            });
        }
        p
    }

    const NOW: Time = Time(100_000);

    fn ready_nodes(n: &str) -> bool {
        n != "lost"
    }

    #[test]
    fn creates_what_is_missing_and_counts_what_is_there() {
        let r = rs(3);
        let a = pod(
            "a",
            "rs-uid",
            "web",
            Some("n1"),
            PodPhase::Running,
            Some(1_000),
            1,
        );
        let done = pod(
            "b",
            "rs-uid",
            "web",
            Some("n1"),
            PodPhase::Succeeded,
            None,
            2,
        );
        let p = plan(&r, &[&a, &done], &ready_nodes, NOW);
        assert_eq!(p.create, 2, "an ended pod is not a replica");
        assert!(p.delete.is_empty());
        let s = p.status.expect("status changed");
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.available_replicas,
                s.observed_generation
            ),
            (1, 1, 1, 3)
        );
    }

    #[test]
    fn deletes_the_least_useful_pods_first() {
        let r = rs(2);
        let pods = [
            pod(
                "ready-old",
                "rs-uid",
                "web",
                Some("n1"),
                PodPhase::Running,
                Some(1_000),
                1,
            ),
            pod(
                "ready-new",
                "rs-uid",
                "web",
                Some("n1"),
                PodPhase::Running,
                Some(5_000),
                5,
            ),
            pod("unbound", "rs-uid", "web", None, PodPhase::Pending, None, 1),
            pod(
                "pending",
                "rs-uid",
                "web",
                Some("n1"),
                PodPhase::Pending,
                None,
                1,
            ),
            pod(
                "lost",
                "rs-uid",
                "web",
                Some("lost"),
                PodPhase::Unknown,
                None,
                1,
            ),
            pod(
                "not-ready",
                "rs-uid",
                "web",
                Some("n1"),
                PodPhase::Running,
                None,
                1,
            ),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&r, &refs, &ready_nodes, NOW);
        let names: Vec<&str> = p.delete.iter().map(|p| p.metadata.name.as_str()).collect();
        assert_eq!(names, ["unbound", "pending", "lost", "not-ready"]);
        // Of two ready pods, the one ready for less time goes first.
        let p = plan(&rs(1), &refs[..2], &ready_nodes, NOW);
        assert_eq!(p.delete[0].metadata.name, "ready-new");
    }

    #[test]
    fn adopts_orphans_and_releases_pods_that_no_longer_match() {
        let r = rs(2);
        let orphan = pod("orphan", "", "web", Some("n1"), PodPhase::Running, None, 1);
        let other_owner = pod(
            "theirs",
            "other-uid",
            "web",
            Some("n1"),
            PodPhase::Running,
            None,
            1,
        );
        let relabelled = pod(
            "moved",
            "rs-uid",
            "db",
            Some("n1"),
            PodPhase::Running,
            None,
            1,
        );
        let ended_orphan = pod("ended", "", "web", Some("n1"), PodPhase::Failed, None, 1);
        let p = plan(
            &r,
            &[&orphan, &other_owner, &relabelled, &ended_orphan],
            &ready_nodes,
            NOW,
        );
        assert_eq!(p.adopt.len(), 1);
        assert_eq!(p.adopt[0].metadata.name, "orphan");
        assert_eq!(
            controller_of(&p.adopt[0].metadata).map(|r| r.uid.as_str()),
            Some("rs-uid")
        );
        assert_eq!(p.release.len(), 1);
        assert!(p.release[0].metadata.owner_references.is_empty());
        assert_eq!(
            p.create, 1,
            "the adopted pod counts; another pod's does not"
        );
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let mut r = rs(2);
        r.spec.min_ready_seconds = 10;
        let long = pod(
            "long",
            "rs-uid",
            "web",
            Some("n1"),
            PodPhase::Running,
            Some(50_000),
            1,
        );
        let fresh = pod(
            "fresh",
            "rs-uid",
            "web",
            Some("n1"),
            PodPhase::Running,
            Some(96_000),
            1,
        );
        let p = plan(&r, &[&long, &fresh], &ready_nodes, NOW);
        let s = p.status.expect("status");
        assert_eq!((s.ready_replicas, s.available_replicas), (2, 1));
        assert_eq!(p.again_after, Some(Duration::from_secs(6)));
    }

    #[test]
    fn an_unchanged_status_is_not_written() {
        let mut r = rs(1);
        let a = pod(
            "a",
            "rs-uid",
            "web",
            Some("n1"),
            PodPhase::Running,
            Some(1_000),
            1,
        );
        r.status = plan(&r, &[&a], &ready_nodes, NOW).status.expect("first");
        let p = plan(&r, &[&a], &ready_nodes, NOW);
        assert_eq!(p, Plan::default());
    }

    #[test]
    fn generated_names_are_valid_and_differ() {
        let long = "x".repeat(80);
        let a = generate_name(&long);
        assert!(a.len() <= 63, "{a}");
        assert!(flotilla_api::manifest::is_dns_subdomain(&a));
        assert_ne!(generate_name("web"), generate_name("web"));
    }
}
