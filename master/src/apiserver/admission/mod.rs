//! What the core admits, beyond who may ask: validation and size, the
//! stamps of a create, immutable fields, the rules a node's writes follow,
//! priorities from PriorityClasses. Pure functions of the caller, the
//! incoming object and what [`Lookup`] finds of other objects; table tests
//! need no store and no sockets.

use super::authz::{authorize_pod_status, check_node_labels};
use super::verb::Caller;
use flotilla_api::manifest::{self, check_size, ObjectTooLarge};
use flotilla_api::objects::{is_digest, module_name, priority_class, PreemptionPolicy};
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object, Pod};

/// Other objects, as admission needs to see them.
pub trait Lookup {
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Object>, ApiError>;
    fn list(&self, kind: Kind) -> Result<Vec<Object>, ApiError>;
}

/// A lookup that also finds modules a client is about to upload
/// (`apply --dry-run=server`), as uploaded modules with no more than their
/// digest.
pub struct WithModules<'a> {
    pub inner: &'a dyn Lookup,
    pub digests: &'a [String],
}

impl Lookup for WithModules<'_> {
    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Result<Option<Object>, ApiError> {
        if kind == Kind::Module {
            if let Some(d) = self.digests.iter().find(|d| module_name(d) == name) {
                let mut m = flotilla_api::Module::default();
                m.metadata.name = name.to_string();
                m.spec.digest = d.clone();
                return Ok(Some(Object::Module(m)));
            }
        }
        self.inner.get(kind, namespace, name)
    }

    fn list(&self, kind: Kind) -> Result<Vec<Object>, ApiError> {
        self.inner.list(kind)
    }
}

pub(crate) fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::Invalid, msg)
}

fn too_large(e: ObjectTooLarge) -> ApiError {
    ApiError::new(ErrorCode::TooLarge, e.to_string())
}

/// Validation of the whole object (metadata and the kind's own), every
/// problem in one message.
pub fn check_valid(obj: &Object) -> Result<(), ApiError> {
    let errs = manifest::validate(obj);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(invalid(
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
        ))
    }
}

/// Admits a write by size: the object sent (a raft entry carries it) and
/// the object the store would keep must both be within
/// [`manifest::MAX_OBJECT_SIZE`], so that one object always fits in one
/// frame — as a `Get` answer, a watch event, a raft entry.
pub fn check_sizes(
    stored: Option<&Object>,
    incoming: &Object,
    status_only: bool,
) -> Result<(), ApiError> {
    check_size(incoming).map_err(too_large)?;
    if let Some(stored) = stored {
        if let Ok(merged) = Object::merge(stored, incoming.clone(), status_only) {
            check_size(&merged).map_err(too_large)?;
        }
    }
    Ok(())
}

/// A namespaced object is made only in a namespace that exists and is not
/// being deleted; `default` always exists.
pub fn check_namespace(lookup: &dyn Lookup, obj: &Object) -> Result<(), ApiError> {
    if !obj.kind().namespaced() {
        return Ok(());
    }
    let ns = &obj.meta().namespace;
    match lookup.get(Kind::Namespace, "", ns)? {
        None if ns == flotilla_api::meta::DEFAULT_NAMESPACE => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::NotFound,
            format!(
                "namespace {ns:?} not found: create it first (`flotilla create namespace {ns}`), \
                 or apply with --create-namespace"
            ),
        )),
        Some(n) if n.meta().is_deleting() => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "namespace {ns:?} is being deleted: nothing new may be made in it; wait until \
                 it is gone (`flotilla get ns {ns}`) and create it again"
            ),
        )),
        Some(_) => Ok(()),
    }
}

/// The object a create stores: validated, stamped with `uid` and `now`,
/// its status cleared, and the kind's rules applied.
pub fn admit_create(
    caller: &Caller,
    mut obj: Object,
    lookup: &dyn Lookup,
    uid: String,
    now: Time,
) -> Result<Object, ApiError> {
    check_valid(&obj)?;
    check_namespace(lookup, &obj)?;
    check_module(lookup, &obj)?;
    match &mut obj {
        Object::Pod(p) => {
            resolve_priority(p, lookup)?;
            p.status = Default::default();
        }
        Object::Node(n) => {
            if let Some(me) = caller.node() {
                check_node_labels(me, n, None)?;
            }
        }
        Object::Module(_) => {
            return Err(invalid(
                "modules are created by uploading them (`flotilla apply` does it)",
            ))
        }
        Object::PriorityClass(c) if c.global_default => {
            one_global_default(lookup, &c.metadata.name)?;
        }
        Object::Service(svc) => ports_free(lookup, svc)?,
        // What the masters record of a user's certificates starts empty.
        Object::User(u) => u.status = Default::default(),
        _ => {}
    }
    let m = obj.meta_mut();
    m.uid = uid;
    m.creation_timestamp = Some(now);
    m.resource_version = 0;
    m.generation = 0;
    m.deletion_timestamp = None;
    check_sizes(None, &obj, false)?;
    Ok(obj)
}

/// The object a spec update writes, and the resourceVersion it must find
/// (None: any). `stored` is the object as it is now.
pub fn admit_update(
    caller: &Caller,
    mut obj: Object,
    stored: Option<&Object>,
    lookup: &dyn Lookup,
) -> Result<(Object, Option<u64>), ApiError> {
    check_valid(&obj)?;
    check_sizes(stored, &obj, false)?;
    if let (Some(me), Object::Node(n)) = (caller.node(), &mut obj) {
        let Some(Object::Node(stored)) = stored else {
            return Err(not_found(Kind::Node, "", &n.metadata.name));
        };
        check_node_labels(me, n, Some(stored))?;
        // The check holds for the version it read: write only over that one.
        if n.metadata.resource_version == 0 {
            n.metadata.resource_version = stored.metadata.resource_version;
        }
    }
    check_module(lookup, &obj)?;
    if let Object::Service(svc) = &obj {
        ports_free(lookup, svc)?;
    }
    if let Object::Pod(p) = &mut obj {
        if let Some(Object::Pod(stored)) = stored {
            p.spec.keep_server_fields(&stored.spec);
            check_pod_update(stored, p)?;
        }
    }
    let rv = obj.meta().resource_version;
    Ok((obj, (rv != 0).then_some(rv)))
}

/// The object a status update writes over `stored` (the write is then a
/// compare-and-swap on `stored`'s resourceVersion).
pub fn admit_status(caller: &Caller, obj: Object, stored: &Object) -> Result<Object, ApiError> {
    let m = obj.meta().clone();
    check_sizes(Some(stored), &obj, true)?;
    Ok(match (obj, stored) {
        (Object::Pod(mut new), Object::Pod(old)) => {
            authorize_pod_status(caller, old)?;
            if caller.node().is_some() && m.uid.is_empty() {
                // Without a uid the report could land on a new pod of the same name.
                return Err(invalid(format!(
                    "metadata.uid: a node's status report for pod {}/{} must carry the pod's uid",
                    m.namespace, m.name
                )));
            }
            if !m.uid.is_empty() && m.uid != old.metadata.uid {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "pod {}/{} was replaced (uid changed); drop this status",
                        m.namespace, m.name
                    ),
                ));
            }
            // An ended pod stays ended: a node that was out of reach while
            // the master evicted its pod (Failed, NodeLost) may still report
            // it running when it comes back.
            if caller.node().is_some()
                && old.status.phase.is_terminal()
                && new.status.phase != old.status.phase
            {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!(
                        "pod {}/{} has ended ({}{}); its phase no longer changes: drop this status and stop the pod",
                        m.namespace,
                        m.name,
                        old.status.phase,
                        if old.status.reason.is_empty() {
                            String::new()
                        } else {
                            format!(", {}", old.status.reason)
                        }
                    ),
                ));
            }
            // Conditions the master set (PodScheduled) survive a node's report that lacks them.
            for c in &old.status.conditions {
                if new.status.condition(&c.type_).is_none() {
                    new.status.conditions.push(c.clone());
                }
            }
            if caller.node().is_some() {
                // The scheduler's nomination is not the node's to change.
                new.status.nominated_node_name = old.status.nominated_node_name.clone();
            }
            Object::Pod(new)
        }
        (Object::Node(mut new), Object::Node(old)) => {
            if caller.node().is_some() {
                // Readiness is the master's judgement, not the node's claim.
                new.status.ready = old.status.ready;
                new.status.reason = old.status.reason.clone();
                new.status.message = old.status.message.clone();
                new.status.last_transition_time = old.status.last_transition_time;
            }
            Object::Node(new)
        }
        (o, _) => o,
    })
}

/// A pod's spec is fixed once created, as in Kubernetes, except that an
/// unbound pod may be bound once (that is how the scheduler places it).
pub fn check_pod_update(stored: &Pod, new: &Pod) -> Result<(), ApiError> {
    let mut before = stored.spec.clone();
    if before.node_name.is_none() {
        before.node_name = new.spec.node_name.clone();
    }
    if before == new.spec {
        Ok(())
    } else {
        Err(invalid(format!(
            "spec: the spec of pod {}/{} cannot change once created (only labels and annotations can); delete it and apply it again, or run it from a Deployment, which replaces its pods when its template changes",
            stored.metadata.namespace, stored.metadata.name
        )))
    }
}

/// An object that runs a module (a pod, or a template's pods) names an
/// uploaded one, by its digest.
fn check_module(lookup: &dyn Lookup, obj: &Object) -> Result<(), ApiError> {
    let Some(module) = obj.module() else {
        return Ok(());
    };
    let field = if obj.kind() == Kind::Pod {
        "spec.module"
    } else {
        "spec.template.spec.module"
    };
    if !is_digest(module) {
        return Err(invalid(format!(
            "{field}: {module:?} is not an uploaded module digest; `flotilla apply` uploads local .wasm files and rewrites the path"
        )));
    }
    match lookup.get(Kind::Module, "", &module_name(module))? {
        Some(_) => Ok(()),
        None => Err(invalid(format!("{field}: module {module} is not uploaded; apply the manifest with a local path so the CLI uploads it"))),
    }
}

/// Sets a new pod's priority from its PriorityClass (a built-in one, one
/// of the cluster's, or the cluster's default class), as Kubernetes'
/// Priority admission does. A priority the pod states must agree.
fn resolve_priority(p: &mut Pod, lookup: &dyn Lookup) -> Result<(), ApiError> {
    let name = p.spec.priority_class_name.clone();
    let (value, policy) = if name.is_empty() {
        let default = lookup
            .list(Kind::PriorityClass)?
            .into_iter()
            .filter_map(|o| o.into_kind::<flotilla_api::objects::PriorityClass>())
            .find(|c| c.global_default);
        match default {
            Some(c) => {
                p.spec.priority_class_name = c.metadata.name.clone();
                (c.value, c.preemption_policy)
            }
            None => (0, PreemptionPolicy::default()),
        }
    } else if let Some(v) = priority_class::builtin(&name) {
        (v, PreemptionPolicy::default())
    } else {
        match lookup.get(Kind::PriorityClass, "", &name)? {
            Some(Object::PriorityClass(c)) => (c.value, c.preemption_policy),
            _ => {
                return Err(invalid(format!(
                    "spec.priorityClassName: no PriorityClass {name:?}; create it first (`flotilla get priorityclasses` lists them)"
                )))
            }
        }
    };
    if let Some(stated) = p.spec.priority {
        if stated != value {
            return Err(invalid(format!(
                "spec.priority: {stated} differs from {value}, the value of its PriorityClass; leave spec.priority out (the master sets it)"
            )));
        }
    }
    p.spec.priority = Some(value);
    p.spec.preemption_policy = Some(policy);
    Ok(())
}

/// Every node serves every Service's ports, so a port belongs to one
/// Service in the whole cluster.
fn ports_free(
    lookup: &dyn Lookup,
    svc: &flotilla_api::objects::service::Service,
) -> Result<(), ApiError> {
    use flotilla_api::objects::service::Service;
    let me = (&svc.metadata.namespace, &svc.metadata.name);
    for other in lookup
        .list(Kind::Service)?
        .into_iter()
        .filter_map(|o| o.into_kind::<Service>())
        .filter(|o| (&o.metadata.namespace, &o.metadata.name) != me)
    {
        for (i, p) in svc.spec.ports.iter().enumerate() {
            if other.spec.ports.iter().any(|q| q.port == p.port) {
                return Err(invalid(format!(
                    "spec.ports[{i}].port: {} is taken by service {}/{} (every node serves every Service's ports); choose another port",
                    p.port, other.metadata.namespace, other.metadata.name
                )));
            }
        }
    }
    Ok(())
}

/// At most one PriorityClass is the default.
fn one_global_default(lookup: &dyn Lookup, name: &str) -> Result<(), ApiError> {
    let other = lookup
        .list(Kind::PriorityClass)?
        .into_iter()
        .filter_map(|o| o.into_kind::<flotilla_api::objects::PriorityClass>())
        .find(|c| c.global_default && c.metadata.name != name);
    match other {
        Some(c) => Err(invalid(format!(
            "globalDefault: {} is the default class already; only one class may be",
            c.metadata.name
        ))),
        None => Ok(()),
    }
}

/// `NotFound`, naming the object as people write it.
pub fn not_found(kind: Kind, namespace: &str, name: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, kind.not_found(namespace, name))
}

#[cfg(test)]
mod tests;
