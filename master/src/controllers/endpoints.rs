//! The Endpoints controller: for every Service, an Endpoints object of the
//! same name listing the pods its selector picks that are bound to a node,
//! each with its node and whether it is ready (only ready pods get
//! traffic). Every node's proxy watches the Endpoints.
//!
//! [`wanted`] is pure: the Endpoints a Service and the pods of its
//! namespace call for. The reconciler writes it when it differs from what
//! is stored; the Endpoints are owned by the Service, so the garbage
//! collector removes them with it.

use crate::apiserver::{unless_lost, ApiServer, Caller};
use crate::controllers::replicaset::{
    controller_ref, is_active, managed, ready_since, see_own_writes,
};
use crate::controllers::runtime::{Cache, CacheState, Reconciler};
use flotilla_api::objects::service::{Endpoint, EndpointPort, Endpoints, Service};
use flotilla_api::objects::{object_key, PodPhase};
use flotilla_api::protocol::ApiError;
use flotilla_api::{Kind, Object, ObjectMeta, Pod};
use std::time::Duration;

const ME: Caller = Caller::Controller("endpoints");

/// Whether `pod` is one of `svc`'s: same namespace, every selector label.
pub fn selects(svc: &Service, pod: &Pod) -> bool {
    pod.metadata.namespace == svc.metadata.namespace
        && !svc.spec.selector.is_empty()
        && svc
            .spec
            .selector
            .iter()
            .all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
}

/// Whether a pod takes traffic: Ready, and its node not lost.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status.phase == PodPhase::Running && ready_since(pod).is_some()
}

/// What the Endpoints controller looks up beside pods: where a node's
/// proxy is reached, and what a module's program is (empty when unknown).
pub struct Lookups<'a> {
    pub proxy_of: &'a dyn Fn(&str) -> String,
    pub workload_of: &'a dyn Fn(&str) -> String,
}

/// The Endpoints `svc` calls for, given `pods` (any pods; those it selects
/// that are bound and have not ended are listed) and `look` for their nodes
/// and modules.
pub fn wanted(svc: &Service, pods: &[&Pod], look: &Lookups<'_>) -> Endpoints {
    let mut endpoints: Vec<Endpoint> = pods
        .iter()
        .filter(|p| selects(svc, p) && is_active(p))
        .filter_map(|p| {
            let node = p.spec.node_name.clone()?;
            Some(Endpoint {
                pod: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
                proxy: (look.proxy_of)(&node),
                workload: (look.workload_of)(&p.spec.module),
                node,
                ready: is_ready(p),
            })
        })
        .collect();
    endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
    Endpoints {
        metadata: ObjectMeta {
            namespace: svc.metadata.namespace.clone(),
            name: svc.metadata.name.clone(),
            labels: svc.metadata.labels.clone(),
            owner_references: vec![controller_ref(Kind::Service, &svc.metadata)],
            ..ObjectMeta::default()
        },
        endpoints,
        ports: svc
            .spec
            .ports
            .iter()
            .map(|p| EndpointPort {
                name: p.name.clone(),
                port: p.target(),
                protocol: p.protocol,
            })
            .collect(),
    }
}

/// What to write: nothing when the stored Endpoints say what is wanted.
pub fn plan(wanted: Endpoints, stored: Option<&Endpoints>) -> Option<Endpoints> {
    match stored {
        Some(s)
            if s.endpoints == wanted.endpoints
                && s.ports == wanted.ports
                && s.metadata.labels == wanted.metadata.labels
                && s.metadata.owner_references == wanted.metadata.owner_references =>
        {
            None
        }
        Some(s) => {
            let mut update = wanted;
            let meta = &mut update.metadata;
            meta.uid = s.metadata.uid.clone();
            meta.resource_version = s.metadata.resource_version;
            meta.annotations = s.metadata.annotations.clone();
            meta.finalizers = s.metadata.finalizers.clone();
            Some(update)
        }
        None => Some(wanted),
    }
}

/// The Endpoints controller, for [`crate::controllers::runtime::drive`].
pub struct EndpointsController {
    pub api: ApiServer,
    pub cache: Cache,
}

fn service_key(namespace: &str, name: &str) -> String {
    object_key(Kind::Service, namespace, name)
}

impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints"
    }

    fn keys_for(
        &self,
        state: &CacheState,
        old: Option<&Object>,
        new: &Object,
        out: &mut Vec<String>,
    ) {
        match new {
            Object::Service(s) => out.push(service_key(&s.metadata.namespace, &s.metadata.name)),
            Object::Endpoints(e) => out.push(service_key(&e.metadata.namespace, &e.metadata.name)),
            // Where a node's proxy is reached is in every Endpoints that
            // lists one of its pods.
            Object::Node(n) => {
                let before = old.and_then(|o| o.as_node());
                if before.is_none_or(|b| b.status.proxy_endpoint != n.status.proxy_endpoint) {
                    out.extend(self.all_keys(state));
                }
            }
            Object::Pod(p) => {
                let before = old.and_then(|o| o.as_pod());
                for o in state.in_namespace(Kind::Service, &p.metadata.namespace) {
                    if let Some(svc) = o.as_kind::<Service>() {
                        if selects(svc, p) || before.is_some_and(|b| selects(svc, b)) {
                            out.push(o.key());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn all_keys(&self, state: &CacheState) -> Vec<String> {
        state.of_kind(Kind::Service).map(|o| o.key()).collect()
    }

    async fn reconcile(&self, key: &str) -> Result<Option<Duration>, ApiError> {
        let write = {
            let state = self.cache.read();
            let Some(svc) = managed::<Service>(&state, key) else {
                return Ok(None);
            };
            let ns = &svc.metadata.namespace;
            let pods: Vec<&Pod> = state
                .in_namespace(Kind::Pod, ns)
                .filter_map(|o| o.as_pod())
                .collect();
            let stored = state
                .get(&object_key(Kind::Endpoints, ns, &svc.metadata.name))
                .and_then(|o| o.as_kind::<Endpoints>());
            let proxy_of = |node: &str| {
                state
                    .get(&object_key(Kind::Node, "", node))
                    .and_then(|o| o.as_node())
                    .map(|n| n.status.proxy_endpoint.clone())
                    .unwrap_or_default()
            };
            let workload_of = |digest: &str| {
                state
                    .get(&object_key(
                        Kind::Module,
                        "",
                        &flotilla_api::objects::module_name(digest),
                    ))
                    .and_then(|o| o.as_kind::<flotilla_api::objects::Module>())
                    .map(|m| m.status.workload.clone())
                    .unwrap_or_default()
            };
            let look = Lookups {
                proxy_of: &proxy_of,
                workload_of: &workload_of,
            };
            plan(wanted(svc, &pods, &look), stored).map(|e| (e, stored.is_some()))
        };
        let Some((endpoints, exists)) = write else {
            return Ok(None);
        };
        let name = format!(
            "{}/{}",
            endpoints.metadata.namespace, endpoints.metadata.name
        );
        let ready = endpoints.endpoints.iter().filter(|e| e.ready).count();
        let result = if exists {
            // Compare-and-swap on the version the plan was made from.
            self.api.update(&ME, Object::Endpoints(endpoints)).await
        } else {
            self.api.create(&ME, Object::Endpoints(endpoints)).await
        };
        if let Some(o) = unless_lost(result)? {
            tracing::debug!(service = %name, ready, "endpoints written");
            see_own_writes(&self.cache, o.meta().resource_version).await?;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::objects::{condition, PodCondition};

    fn nothing(_: &str) -> String {
        String::new()
    }

    const NO_LOOKUPS: Lookups<'static> = Lookups {
        proxy_of: &nothing,
        workload_of: &nothing,
    };

    fn service() -> Service {
        let mut s: Service = serde_yaml::from_str(
            "metadata: {name: web, namespace: default, uid: svc-uid}\nspec: {selector: {app: web}, ports: [{name: http, port: 8080, targetPort: 80}]}",
        )
        .expect("yaml");
        s.metadata.labels.insert("tier".into(), "front".into());
        s
    }

    fn pod(name: &str, app: &str, node: Option<&str>, ready: bool) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = name.into();
        p.metadata.namespace = "default".into();
        p.metadata.uid = format!("uid-{name}");
        p.metadata.labels.insert("app".into(), app.into());
        p.spec.node_name = node.map(str::to_string);
        p.status.phase = if node.is_some() {
            PodPhase::Running
        } else {
            PodPhase::Pending
        };
        p.status.set_condition(PodCondition {
            type_: condition::READY.into(),
            status: ready,
            ..PodCondition::default()
        });
        p
    }

    #[test]
    fn the_bound_pods_of_the_selector_with_their_node_and_readiness() {
        let svc = service();
        let b = pod("web-b", "web", Some("n2"), false);
        let a = pod("web-a", "web", Some("n1"), true);
        let pending = pod("web-c", "web", None, false);
        let other = pod("db", "db", Some("n1"), true);
        let mut ended = pod("web-d", "web", Some("n1"), false);
        ended.status.phase = PodPhase::Succeeded;
        let mut elsewhere = pod("web-e", "web", Some("n1"), true);
        elsewhere.metadata.namespace = "lab".into();
        let mut lost = pod("web-f", "web", Some("n3"), true);
        lost.status.phase = PodPhase::Unknown;
        let got = wanted(
            &svc,
            &[&b, &a, &pending, &other, &ended, &elsewhere, &lost],
            &NO_LOOKUPS,
        );
        let rows: Vec<(&str, &str, bool)> = got
            .endpoints
            .iter()
            .map(|e| (e.pod.as_str(), e.node.as_str(), e.ready))
            .collect();
        assert_eq!(
            rows,
            [
                ("web-a", "n1", true),
                ("web-b", "n2", false),
                ("web-f", "n3", false)
            ]
        );
        assert_eq!(got.ports[0].port, 80);
        assert_eq!(got.ports[0].name, "http");
        assert_eq!(got.metadata.owner_references[0].uid, "svc-uid");
        assert_eq!(got.metadata.name, "web");
    }

    #[test]
    fn written_only_when_it_changes() {
        let svc = service();
        let a = pod("web-a", "web", Some("n1"), true);
        let first = plan(wanted(&svc, &[&a], &NO_LOOKUPS), None).expect("create");
        let mut stored = first.clone();
        stored.metadata.uid = "ep-uid".into();
        stored.metadata.resource_version = 7;
        assert_eq!(plan(wanted(&svc, &[&a], &NO_LOOKUPS), Some(&stored)), None);
        let not_ready = pod("web-a", "web", Some("n1"), false);
        let update = plan(wanted(&svc, &[&not_ready], &NO_LOOKUPS), Some(&stored)).expect("update");
        assert!(!update.endpoints[0].ready);
        assert_eq!(
            (
                update.metadata.uid.as_str(),
                update.metadata.resource_version
            ),
            ("ep-uid", 7)
        );
        let mut relabelled = svc.clone();
        relabelled.spec.selector.insert("tier".into(), "x".into());
        assert!(plan(wanted(&relabelled, &[&a], &NO_LOOKUPS), Some(&stored))
            .expect("update")
            .endpoints
            .is_empty());
    }
}
