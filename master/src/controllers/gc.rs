//! The garbage collector: an object whose owners are all gone is deleted
//! (background cascading deletion: deleting a Deployment deletes its
//! ReplicaSets, and theirs their pods); a reference to one owner that is
//! gone, among others still there, is removed. Owners are known by uid: an
//! owner deleted and made again under the same name is another owner.
//!
//! Only owners of the kinds the controllers' cache holds are judged; a
//! reference to any other kind is left alone. Before it deletes anything,
//! the collector reads each owner from the store (linearizably), so an
//! owner the cache has not seen yet is never taken for gone.

use crate::apiserver::{lost_race, ApiServer, Caller};
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use flotilla_api::meta::OwnerReference;
use flotilla_api::objects::object_key;
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::{Kind, Object};
use std::time::Duration;

const ME: Caller = Caller::Controller("garbage-collector");

/// The kinds that own others (their dependents are collected).
pub const OWNER_KINDS: [Kind; 5] = [
    Kind::ReplicaSet,
    Kind::Deployment,
    Kind::DaemonSet,
    Kind::Job,
    Kind::CronJob,
];
/// The kinds that may be owned.
pub const DEPENDENT_KINDS: [Kind; 3] = [Kind::Pod, Kind::ReplicaSet, Kind::Job];

/// What to do with one dependent.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Keep,
    /// Every owner is gone.
    Delete,
    /// Some owners are gone: keep these references.
    Trim(Vec<OwnerReference>),
}

/// The kind an owner reference names, if the collector judges it.
fn judged(r: &OwnerReference) -> Option<Kind> {
    OWNER_KINDS.iter().copied().find(|k| k.as_str() == r.kind)
}

/// Judges `o`'s owner references, `exists(kind, name, uid)` saying whether
/// an owner is there.
pub fn judge(o: &Object, exists: &dyn Fn(Kind, &str, &str) -> bool) -> Verdict {
    let refs = &o.meta().owner_references;
    if refs.is_empty() {
        return Verdict::Keep;
    }
    let gone = |r: &OwnerReference| judged(r).is_some_and(|k| !exists(k, &r.name, &r.uid));
    let left: Vec<OwnerReference> = refs.iter().filter(|r| !gone(r)).cloned().collect();
    if left.is_empty() {
        Verdict::Delete
    } else if left.len() < refs.len() {
        Verdict::Trim(left)
    } else {
        Verdict::Keep
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
        if DEPENDENT_KINDS.contains(&new.kind()) && !new.meta().owner_references.is_empty() {
            out.push(new.key());
        }
        // An owner went (the cache, which has applied the change, no longer
        // holds it): its dependents are judged again, found by its uid. An
        // owner that only changed leaves them be (a ReplicaSet's status
        // changes often, and it may own thousands of pods).
        let gone = || {
            state
                .get(&new.key())
                .is_none_or(|o| o.meta().uid != new.meta().uid)
        };
        if OWNER_KINDS.contains(&new.kind()) && gone() {
            out.extend(state.owned_by(&new.meta().uid).map(|o| o.key()));
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        DEPENDENT_KINDS
            .iter()
            .flat_map(|k| state.of_kind(*k))
            .filter(|o| !o.meta().owner_references.is_empty())
            .map(|o| o.key())
            .collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let (object, verdict) = {
            let state = self.cache.read();
            let Some(o) = state.get(key) else {
                return Ok(None);
            };
            let ns = o.meta().namespace.clone();
            let exists = |k: Kind, name: &str, uid: &str| {
                state
                    .get(&object_key(k, &ns, name))
                    .is_some_and(|owner| owner.meta().uid == uid)
            };
            ((**o).clone(), judge(o, &exists))
        };
        if verdict == Verdict::Keep {
            return Ok(None);
        }
        // The cache may lag: ask the store, linearizably, before acting.
        let m = object.meta();
        let mut left = Vec::new();
        for r in &m.owner_references {
            let gone = match judged(r) {
                Some(k) => match self.api.get(&ME, k, &m.namespace, &r.name, false).await {
                    Ok(owner) => owner.meta().uid != r.uid,
                    Err(e) if e.code == ErrorCode::NotFound => true,
                    Err(e) => return Err(e),
                },
                None => false,
            };
            if !gone {
                left.push(r.clone());
            }
        }
        let rv = m.resource_version;
        if left.is_empty() {
            tracing::info!(object = %object.describe(), "its owners are gone: deleting it");
            match self
                .api
                .delete(&ME, object.kind(), &m.namespace, &m.name, rv)
                .await
            {
                Ok(_) => {}
                Err(e) if lost_race(&e) => {}
                Err(e) => return Err(e),
            }
        } else if left.len() < m.owner_references.len() {
            let mut kept = object.clone();
            kept.meta_mut().owner_references = left;
            match self.api.update(&ME, kept).await {
                Ok(_) => {}
                Err(e) if lost_race(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
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
                    })
                    .collect(),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        })
    }

    #[test]
    fn verdicts() {
        // Owners that exist: uids "a" and "b" (kind ReplicaSet).
        let exists =
            |k: Kind, _: &str, uid: &str| k == Kind::ReplicaSet && (uid == "a" || uid == "b");
        let cases: Vec<(&[(&str, &str)], Verdict)> = vec![
            (&[], Verdict::Keep),
            (&[("ReplicaSet", "a")], Verdict::Keep),
            (&[("ReplicaSet", "x")], Verdict::Delete),
            // A Deployment "a" is not the ReplicaSet "a".
            (&[("Deployment", "a")], Verdict::Delete),
            (
                &[("ReplicaSet", "a"), ("ReplicaSet", "x")],
                Verdict::Trim(vec![]),
            ),
            // Kinds the collector does not judge are left alone.
            (&[("Service", "x")], Verdict::Keep),
            (
                &[("Service", "x"), ("ReplicaSet", "y")],
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
