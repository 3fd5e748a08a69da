//! The garbage collector: an object whose owners are all gone is deleted
//! (background cascading deletion: deleting a Deployment deletes its
//! ReplicaSets, and theirs their pods); a reference to one owner that is
//! gone, among others still there, is removed. Owners are known by uid: an
//! owner deleted and made again under the same name is another owner.
//!
//! Foreground deletion: an owner deleted with `--cascade=foreground` stays,
//! marked (`deletionTimestamp`, finalizer `foregroundDeletion`); the
//! collector deletes its dependents (those that own others in the
//! foreground too, so a Deployment's pods go before its ReplicaSets), and
//! removes the finalizer once no dependent with `blockOwnerDeletion` is
//! left, which removes the owner.
//!
//! Only owners of the kinds the controllers' cache holds are judged; a
//! reference to any other kind is left alone. Before it deletes anything,
//! the collector reads each owner from the store (linearizably), so an
//! owner the cache has not seen yet is never taken for gone.

use crate::apiserver::{unless_lost, ApiServer, Caller};
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use flotilla_api::meta::{OwnerReference, FOREGROUND_DELETION};
use flotilla_api::objects::object_key;
use flotilla_api::protocol::{ApiError, ErrorCode, Propagation};
use flotilla_api::selector::Selector;
use flotilla_api::{Kind, Object};
use std::time::Duration;

const ME: Caller = Caller::Controller("garbage-collector");

/// The kinds that own others (their dependents are collected).
pub const OWNER_KINDS: [Kind; 6] = [
    Kind::ReplicaSet,
    Kind::Deployment,
    Kind::DaemonSet,
    Kind::Job,
    Kind::CronJob,
    Kind::Service,
];
/// The kinds that may be owned.
pub const DEPENDENT_KINDS: [Kind; 4] = [Kind::Pod, Kind::ReplicaSet, Kind::Job, Kind::Endpoints];

/// What became of an owner a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// There (with that uid), and not being deleted in the foreground.
    Present,
    /// There, deleted in the foreground: its dependents go first.
    Foreground,
    Gone,
}

/// What to do with one dependent.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep,
    /// Every owner is gone or going: delete it, in the foreground if an
    /// owner waits for it.
    Delete(Propagation),
    /// Some owners are gone or going: keep these references.
    Trim(Vec<OwnerReference>),
}

/// The kind an owner reference names, if the collector judges it.
fn judged(r: &OwnerReference) -> Option<Kind> {
    OWNER_KINDS.iter().copied().find(|k| k.as_str() == r.kind)
}

/// What an owner object says of itself.
pub fn owner_state(o: &Object) -> Owner {
    let m = o.meta();
    if m.is_deleting() && m.finalizers.iter().any(|f| f == FOREGROUND_DELETION) {
        Owner::Foreground
    } else {
        Owner::Present
    }
}

/// Whether an object is an owner deleted in the foreground.
fn in_foreground(o: &Object) -> bool {
    OWNER_KINDS.contains(&o.kind()) && owner_state(o) == Owner::Foreground
}

/// Judges `o`'s owner references, `owner(kind, name, uid)` saying what
/// became of each (as Kubernetes' collector does: an owner that is there
/// keeps the object; otherwise it goes, in the foreground if an owner waits).
pub fn judge(o: &Object, owner: &dyn Fn(Kind, &str, &str) -> Owner) -> Verdict {
    let refs = &o.meta().owner_references;
    if refs.is_empty() {
        return Verdict::Keep;
    }
    let state =
        |r: &OwnerReference| judged(r).map_or(Owner::Present, |k| owner(k, &r.name, &r.uid));
    let states: Vec<Owner> = refs.iter().map(state).collect();
    let solid: Vec<OwnerReference> = refs
        .iter()
        .zip(&states)
        .filter(|(_, s)| **s == Owner::Present)
        .map(|(r, _)| r.clone())
        .collect();
    if solid.len() == refs.len() {
        Verdict::Keep
    } else if !solid.is_empty() {
        Verdict::Trim(solid)
    } else if states.contains(&Owner::Foreground) {
        Verdict::Delete(Propagation::Foreground)
    } else {
        Verdict::Delete(Propagation::Background)
    }
}

/// The garbage collector, for [`crate::controllers::runtime::drive`].
pub struct Collector {
    pub api: ApiServer,
    pub cache: Cache,
}

impl Reconciler for Collector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn keys_for(
        &self,
        state: &CacheState,
        _old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    ) {
        let m = new.meta();
        if DEPENDENT_KINDS.contains(&new.kind()) && !m.owner_references.is_empty() {
            out.push(new.key());
            // A dependent went or changed: an owner deleted in the
            // foreground may now go.
            for r in &m.owner_references {
                if let Some(k) = judged(r) {
                    let key = object_key(k, &m.namespace, &r.name);
                    if state.get(&key).is_some_and(|o| in_foreground(o)) {
                        out.push(key);
                    }
                }
            }
        }
        if !OWNER_KINDS.contains(&new.kind()) {
            return;
        }
        // An owner went (the cache, which has applied the change, no longer
        // holds it), or is deleted in the foreground: its dependents are
        // judged again, found by its uid. An owner that only changed
        // leaves them be (a ReplicaSet's status changes often, and it may
        // own thousands of pods).
        let now = state.get(&new.key()).filter(|o| o.meta().uid == m.uid);
        let foreground = now.is_some_and(|o| in_foreground(o));
        if now.is_none() || foreground {
            out.extend(state.owned_by(&m.uid).map(|o| o.key()));
        }
        if foreground {
            out.push(new.key());
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        let dependents = DEPENDENT_KINDS
            .iter()
            .flat_map(|k| state.of_kind(*k))
            .filter(|o| !o.meta().owner_references.is_empty());
        let owners = OWNER_KINDS
            .iter()
            .flat_map(|k| state.of_kind(*k))
            .filter(|o| in_foreground(o));
        dependents.chain(owners).map(|o| o.key()).collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let (object, verdict) = {
            let state = self.cache.read();
            let Some(o) = state.get(key) else {
                return Ok(None);
            };
            let ns = o.meta().namespace.clone();
            let owner = |k: Kind, name: &str, uid: &str| match state.get(&object_key(k, &ns, name))
            {
                Some(x) if x.meta().uid == uid => owner_state(x),
                _ => Owner::Gone,
            };
            ((**o).clone(), judge(o, &owner))
        };
        if verdict != Verdict::Keep {
            self.collect(&object).await?;
        }
        if in_foreground(&object) {
            return self.finish_foreground(&object).await;
        }
        Ok(None)
    }
}

impl Collector {
    /// Judges `object` again from the store (the cache may lag), and
    /// deletes or trims it.
    async fn collect(&self, object: &Object) -> Result<(), ApiError> {
        let m = object.meta();
        let mut states = Vec::new();
        for r in &m.owner_references {
            let state = match judged(r) {
                Some(k) => match self.api.get(&ME, k, &m.namespace, &r.name, false).await {
                    Ok(owner) if owner.meta().uid == r.uid => owner_state(&owner),
                    Ok(_) => Owner::Gone,
                    Err(e) if e.code == ErrorCode::NotFound => Owner::Gone,
                    Err(e) => return Err(e),
                },
                None => Owner::Present,
            };
            states.push((r.uid.clone(), state));
        }
        let from_store = |_: Kind, _: &str, uid: &str| {
            states
                .iter()
                .find(|(u, _)| u == uid)
                .map_or(Owner::Present, |(_, s)| *s)
        };
        let rv = m.resource_version;
        match judge(object, &from_store) {
            Verdict::Keep => {}
            // Marked already: its own finalizers run.
            Verdict::Delete(_) if m.is_deleting() => {}
            Verdict::Delete(propagation) => {
                // Pods own nothing: deleting them in the foreground would
                // only add a step.
                let propagation = if OWNER_KINDS.contains(&object.kind()) {
                    propagation
                } else {
                    Propagation::Background
                };
                tracing::info!(object = %object.describe(), ?propagation, "its owners are gone or going: deleting it");
                unless_lost(
                    self.api
                        .delete_with(&ME, object.kind(), &m.namespace, &m.name, rv, propagation)
                        .await,
                )?;
            }
            Verdict::Trim(left) => {
                let mut kept = object.clone();
                kept.meta_mut().owner_references = left;
                unless_lost(self.api.update(&ME, kept).await)?;
            }
        }
        Ok(())
    }

    /// An owner deleted in the foreground goes (its finalizer removed)
    /// once the store holds no dependent that blocks it; until then it is
    /// looked at again as its dependents go, and every few seconds.
    async fn finish_foreground(&self, owner: &Object) -> Result<Option<Duration>, ApiError> {
        let m = owner.meta();
        self.api.before_read(false).await?;
        let mut blocking = 0usize;
        for kind in DEPENDENT_KINDS {
            let (_, items) = self
                .api
                .store
                .list(kind, Some(&m.namespace), &Selector::default())
                .map_err(crate::apiserver::store_err)?;
            blocking += items
                .iter()
                .filter(|o| {
                    o.meta()
                        .owner_references
                        .iter()
                        .any(|r| r.uid == m.uid && r.block_owner_deletion)
                })
                .count();
        }
        if blocking > 0 {
            return Ok(Some(Duration::from_secs(5)));
        }
        let mut done = owner.clone();
        done.meta_mut()
            .finalizers
            .retain(|f| f != FOREGROUND_DELETION);
        tracing::info!(object = %owner.describe(), "its dependents are gone: removing it");
        unless_lost(self.api.update(&ME, done).await).map(|_| None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::{ObjectMeta, Pod};

    fn owned_by(refs: &[(&str, &str)]) -> Object {
        Object::Pod(Pod {
            metadata: ObjectMeta {
                name: "p".into(),
                namespace: "default".into(),
                owner_references: refs
                    .iter()
                    .map(|(kind, uid)| OwnerReference {
                        kind: (*kind).into(),
                        name: format!("owner-{uid}"),
                        uid: (*uid).into(),
                        controller: false,
                        ..Default::default()
                    })
                    .collect(),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
    }

    #[test]
    fn verdicts() {
        // Owners that exist: uids "a" and "b" (kind ReplicaSet); "f" is
        // being deleted in the foreground.
        let exists = |k: Kind, _: &str, uid: &str| match (k, uid) {
            (Kind::ReplicaSet, "a" | "b") => Owner::Present,
            (Kind::ReplicaSet, "f") => Owner::Foreground,
            _ => Owner::Gone,
        };
        let gone = Verdict::Delete(Propagation::Background);
        let cases: Vec<(&[(&str, &str)], Verdict)> = vec![
            (&[], Verdict::Keep),
            (&[("ReplicaSet", "a")], Verdict::Keep),
            (&[("ReplicaSet", "x")], gone.clone()),
            // A Deployment "a" is not the ReplicaSet "a".
            (&[("Deployment", "a")], gone.clone()),
            // An owner that waits for it: deleted in the foreground.
            (
                &[("ReplicaSet", "f"), ("ReplicaSet", "x")],
                Verdict::Delete(Propagation::Foreground),
            ),
            // Another owner keeps it: the going one's reference goes.
            (
                &[("ReplicaSet", "f"), ("ReplicaSet", "a")],
                Verdict::Trim(vec![]),
            ),
            (
                &[("ReplicaSet", "a"), ("ReplicaSet", "x")],
                Verdict::Trim(vec![]),
            ),
            // A Service owns its Endpoints: gone, they go.
            (&[("Service", "x")], gone.clone()),
            // Kinds the collector does not judge are left alone.
            (&[("ConfigMap", "x")], Verdict::Keep),
            (
                &[("ConfigMap", "x"), ("ReplicaSet", "y")],
                Verdict::Trim(vec![]),
            ),
        ];
        for (refs, want) in cases {
            let o = owned_by(refs);
            let got = judge(&o, &exists);
            match (&got, &want) {
                (Verdict::Trim(kept), Verdict::Trim(_)) => {
                    assert_eq!(kept.len(), 1, "{refs:?}");
                }
                _ => assert_eq!(got, want, "{refs:?}"),
            }
        }
    }
}
