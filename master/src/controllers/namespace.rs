//! The namespace controller: empties a namespace being deleted and then
//! lets it go. Deleting a Namespace marks it (finalizer
//! `flotilla.dev/namespace`, phase Terminating); admission then refuses
//! anything new in it, this controller deletes every object in it (the
//! workloads first, so that their pods are not made again), and once the
//! store holds none it removes the finalizer, which removes the namespace.
//!
//! When a master starts leading, [`ensure`] makes the `default` namespace
//! and a Namespace for every namespace that holds objects but has none
//! (objects made before namespaces were objects).

use crate::apiserver::{store_err, unless_lost, ApiServer, Caller};
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use flotilla_api::meta::{DEFAULT_NAMESPACE, NAMESPACE_FINALIZER};
use flotilla_api::objects::namespace::{NamespacePhase, NamespaceStatus};
use flotilla_api::objects::{object_key, Namespace};
use flotilla_api::protocol::{ApiError, ErrorCode, Propagation};
use flotilla_api::selector::Selector;
use flotilla_api::{Kind, Object};
use std::collections::BTreeSet;
use std::time::Duration;

const ME: Caller = Caller::Controller("namespace");

/// How often a namespace being emptied is looked at again, besides when
/// its objects change.
const RECHECK: Duration = Duration::from_secs(2);

/// The order in which a namespace's kinds are deleted: owners before what
/// they own, pods last.
pub fn deletion_order() -> Vec<Kind> {
    let mut kinds: Vec<Kind> = Kind::ALL
        .iter()
        .copied()
        .filter(|k| k.namespaced())
        .collect();
    kinds.sort_by_key(|k| match k {
        Kind::CronJob | Kind::Deployment | Kind::DaemonSet => 0,
        Kind::Job | Kind::ReplicaSet => 1,
        Kind::Pod => 3,
        _ => 2,
    });
    kinds
}

/// The namespace controller, for [`crate::controllers::runtime::drive`].
pub struct Namespaces {
    pub api: ApiServer,
    pub cache: Cache,
}

fn terminating(state: &CacheState, ns: &str) -> bool {
    state
        .get(&object_key(Kind::Namespace, "", ns))
        .is_some_and(|o| o.meta().is_deleting())
}

impl Reconciler for Namespaces {
    fn name(&self) -> &'static str {
        "namespace"
    }

    fn keys_for(
        &self,
        state: &CacheState,
        _old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    ) {
        if new.kind() == Kind::Namespace {
            out.push(new.key());
        } else if new.kind().namespaced() && terminating(state, &new.meta().namespace) {
            out.push(object_key(Kind::Namespace, "", &new.meta().namespace));
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        state.of_kind(Kind::Namespace).map(|o| o.key()).collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let ns = {
            let state = self.cache.read();
            match state.get(key).and_then(|o| o.as_kind::<Namespace>()) {
                Some(ns) if ns.metadata.is_deleting() => ns.clone(),
                _ => return Ok(None),
            }
        };
        let name = ns.metadata.name.clone();
        if ns.status.phase != NamespacePhase::Terminating {
            let mut with = ns.clone();
            with.status = NamespaceStatus {
                phase: NamespacePhase::Terminating,
            };
            unless_lost(self.api.update_status(&ME, Object::Namespace(with)).await)?;
        }
        // The store, not the cache: kinds the cache does not hold are
        // emptied too, and nothing the cache has not seen yet is missed.
        self.api.before_read(false).await?;
        let mut left = 0usize;
        for kind in deletion_order() {
            let (_, items) = self
                .api
                .store
                .list(kind, Some(&name), &Selector::default())
                .map_err(store_err)?;
            left += items.len();
            for o in items.iter().filter(|o| !o.meta().is_deleting()) {
                let m = o.meta();
                unless_lost(
                    self.api
                        .delete_with(
                            &ME,
                            kind,
                            &m.namespace,
                            &m.name,
                            m.resource_version,
                            Propagation::Background,
                        )
                        .await,
                )?;
            }
        }
        if left > 0 {
            tracing::info!(namespace = %name, objects = left, "emptying a namespace being deleted");
            return Ok(Some(RECHECK));
        }
        let Some(Object::Namespace(now)) = self
            .api
            .store
            .get(Kind::Namespace, "", &name)
            .map_err(store_err)?
        else {
            return Ok(None);
        };
        let mut done = now;
        done.metadata
            .finalizers
            .retain(|f| f != NAMESPACE_FINALIZER);
        tracing::info!(namespace = %name, "namespace empty: removing it");
        unless_lost(self.api.update(&ME, Object::Namespace(done)).await).map(|_| None)
    }
}

/// Makes the `default` namespace, and a Namespace for each namespace the
/// cache's objects are in that has none, once the cache is synced.
pub async fn ensure(api: ApiServer, cache: Cache) {
    cache.synced().await;
    let wanted: BTreeSet<String> = {
        let state = cache.read();
        let mut names: BTreeSet<String> = Kind::ALL
            .iter()
            .filter(|k| k.namespaced())
            .flat_map(|k| state.of_kind(*k))
            .map(|o| o.meta().namespace.clone())
            .collect();
        names.insert(DEFAULT_NAMESPACE.to_string());
        names.retain(|n| state.get(&object_key(Kind::Namespace, "", n)).is_none());
        names
    };
    for name in wanted {
        match api
            .create(&ME, Object::Namespace(Namespace::named(&name)))
            .await
        {
            Ok(_) => tracing::info!(namespace = %name, "created a namespace"),
            Err(e) if e.code == ErrorCode::AlreadyExists => {}
            Err(e) => tracing::warn!(namespace = %name, error = %e, "could not create a namespace"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_go_before_what_they_own() {
        let order = deletion_order();
        let at = |k: Kind| order.iter().position(|x| *x == k).expect("namespaced");
        assert!(at(Kind::Deployment) < at(Kind::ReplicaSet));
        assert!(at(Kind::CronJob) < at(Kind::Job));
        assert!(at(Kind::ReplicaSet) < at(Kind::Pod));
        assert!(at(Kind::Job) < at(Kind::Pod));
        assert_eq!(order.last(), Some(&Kind::Pod));
        assert!(!order.contains(&Kind::Node));
        assert!(!order.contains(&Kind::Namespace));
    }
}
