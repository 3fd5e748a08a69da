//! The pure rules of the state machine: which keys are acceptable, what
//! compare-and-swap accepts, how a create is stamped, how an update merges
//! into the stored object (and when `generation` grows), what a module upload
//! must look like. No I/O and no clock: `machine` reads and writes the tables
//! around these.

use super::error::StoreError;
use flotilla_api::objects::{self, Kind, Module, Object};
use flotilla_api::protocol::MAX_MODULE_SIZE;

/// A key as people read it: `pods/default/web`, `nodes/pi-1`.
pub(crate) fn display_key(kind: Kind, namespace: &str, name: &str) -> String {
    if namespace.is_empty() {
        format!("{}/{name}", kind.plural())
    } else {
        format!("{}/{namespace}/{name}", kind.plural())
    }
}

/// [`display_key`] of an object.
pub(crate) fn describe(object: &Object) -> String {
    let m = object.meta();
    display_key(object.kind(), &m.namespace, &m.name)
}

/// Refuses names and namespaces that would break the key space
/// (`Kind/namespace/name`, listed by prefix). Full validation of names is
/// the API's job (`flotilla_api::manifest::validate`); this only keeps keys unambiguous.
pub(crate) fn check_key(kind: Kind, namespace: &str, name: &str) -> Result<(), StoreError> {
    let plural = kind.plural();
    if name.is_empty() {
        return Err(StoreError::invalid(format!(
            "{plural}: metadata.name is required"
        )));
    }
    if name.contains('/') || namespace.contains('/') {
        return Err(StoreError::invalid(format!(
            "{}: names and namespaces cannot contain '/'",
            display_key(kind, namespace, name)
        )));
    }
    if kind.namespaced() && namespace.is_empty() {
        return Err(StoreError::invalid(format!(
            "{plural}/{name}: {kind} objects live in a namespace; set metadata.namespace (e.g. default)"
        )));
    }
    if !kind.namespaced() && !namespace.is_empty() {
        return Err(StoreError::invalid(format!(
            "{plural}/{name}: {kind} objects are not namespaced; remove metadata.namespace"
        )));
    }
    Ok(())
}

/// Compare-and-swap: `expected: None` accepts any stored resourceVersion.
pub(crate) fn check_cas(key: &str, expected: Option<u64>, actual: u64) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != actual => Err(StoreError::conflict(key, expected, actual)),
        _ => Ok(()),
    }
}

/// Checks a `Create` before the store looks at its key.
pub(crate) fn check_create(object: &Object) -> Result<(), StoreError> {
    let m = object.meta();
    check_key(object.kind(), &m.namespace, &m.name)?;
    if object.kind() == Kind::Module {
        return Err(StoreError::invalid(format!(
            "{}: modules are stored together with their bytes; upload the module (PutModule) instead of creating the object",
            describe(object)
        )));
    }
    Ok(())
}

/// A created object as stored: first written at `revision`, first generation.
pub(crate) fn stamp_create(mut object: Object, revision: u64) -> Object {
    let m = object.meta_mut();
    m.resource_version = revision;
    m.generation = 1;
    m.deletion_timestamp = None;
    object
}

/// The object an `Update` leaves in the store, before its new
/// resourceVersion is set (it keeps the stored one, so an update that
/// changes nothing returns an object equal to `stored`): each kind says how
/// ([`flotilla_api::objects::Resource::merge`]).
///
/// Spec update: spec, labels, annotations and ownerReferences come from
/// `incoming`; status, uid, creationTimestamp and everything else stay;
/// `generation` grows by one if the spec differs. Status update: only the
/// status comes from `incoming`.
pub(crate) fn merge_update(
    stored: &Object,
    incoming: Object,
    status_only: bool,
) -> Result<Object, StoreError> {
    let merged = Object::merge(stored, incoming, status_only)
        .map_err(|why| StoreError::invalid(format!("{}: {why}", describe(stored))))?;
    let (before, after) = (stored.meta(), merged.meta());
    if before.is_deleting() {
        if let Some(f) = after
            .finalizers
            .iter()
            .find(|f| !before.finalizers.contains(f))
        {
            return Err(StoreError::invalid(format!(
                "{}: finalizer {f:?} may not be added: the object is being deleted",
                describe(stored)
            )));
        }
    }
    Ok(merged)
}

/// Checks a module upload of `size` bytes that hash to `actual`, and fills
/// in what follows from its bytes: the name (from the digest) and the size,
/// when the caller left them empty. The bytes themselves are the caller's:
/// a big module is hashed a chunk at a time, never held whole.
pub(crate) fn prepare_module(
    mut module: Module,
    size: u64,
    actual: &str,
) -> Result<Module, StoreError> {
    let digest = module.spec.digest.clone();
    if !objects::is_digest(&digest) {
        return Err(StoreError::invalid(format!(
            "module digest {digest:?} is not of the form sha256:<64 lowercase hex digits>"
        )));
    }
    if size > MAX_MODULE_SIZE {
        return Err(StoreError::invalid(format!(
            "module {digest} is {size} bytes; the cluster accepts modules up to {MAX_MODULE_SIZE} bytes"
        )));
    }
    if actual != digest {
        return Err(StoreError::invalid(format!(
            "module bytes have digest {actual}, not the {digest} they were sent with: upload the module again"
        )));
    }
    if module.spec.size == 0 {
        module.spec.size = size;
    } else if module.spec.size != size {
        return Err(StoreError::invalid(format!(
            "module {digest}: spec.size says {} bytes but {size} were sent",
            module.spec.size
        )));
    }
    let name = objects::module_name(&digest);
    let m = &mut module.metadata;
    if m.name.is_empty() {
        m.name = name;
    } else if m.name != name {
        return Err(StoreError::invalid(format!(
            "module {digest} must be named {name}, not {:?}",
            m.name
        )));
    }
    if !m.namespace.is_empty() {
        return Err(StoreError::invalid(format!(
            "module {digest}: modules are not namespaced; remove metadata.namespace"
        )));
    }
    Ok(module)
}

/// The status of a pod just bound to `node` at `at`: PodScheduled, its
/// nomination and any Unschedulable reason gone.
pub(crate) fn mark_scheduled(
    status: &mut flotilla_api::objects::PodStatus,
    node: &str,
    at: flotilla_api::time::Time,
) {
    use flotilla_api::objects::{condition, PodCondition};
    status.set_condition(PodCondition {
        type_: condition::POD_SCHEDULED.into(),
        status: true,
        last_transition_time: Some(at),
        reason: "Scheduled".into(),
        message: format!("bound to {node}"),
    });
    status.nominated_node_name = None;
    if status.reason == "Unschedulable" {
        status.reason.clear();
        status.message.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Refusal;
    use flotilla_api::meta::ObjectMeta;
    use flotilla_api::objects::{ModuleSpec, Node, Pod, PodPhase};

    fn pod(name: &str) -> Pod {
        let mut p = Pod {
            metadata: ObjectMeta::named("default", name),
            ..Pod::default()
        };
        p.metadata.uid = "uid-1".into();
        p.metadata.resource_version = 4;
        p.metadata.generation = 2;
        p.spec.module = "sha256:aa".into();
        p.status.phase = PodPhase::Running;
        p
    }

    #[test]
    fn keys_read_like_kubectl_paths() {
        assert_eq!(display_key(Kind::Pod, "default", "x"), "pods/default/x");
        assert_eq!(display_key(Kind::Node, "", "pi-1"), "nodes/pi-1");
    }

    #[test]
    fn key_checks() {
        let cases: &[(Kind, &str, &str, bool)] = &[
            (Kind::Pod, "default", "web", true),
            (Kind::Pod, "", "web", false),
            (Kind::Pod, "default", "", false),
            (Kind::Pod, "a/b", "web", false),
            (Kind::Pod, "default", "we/b", false),
            (Kind::Node, "", "pi-1", true),
            (Kind::Node, "default", "pi-1", false),
        ];
        for &(kind, ns, name, ok) in cases {
            assert_eq!(
                check_key(kind, ns, name).is_ok(),
                ok,
                "{kind} {ns:?} {name:?}"
            );
        }
    }

    #[test]
    fn cas_accepts_only_the_stored_version() {
        assert!(check_cas("pods/default/x", None, 7).is_ok());
        assert!(check_cas("pods/default/x", Some(7), 7).is_ok());
        let err = check_cas("pods/default/x", Some(5), 7).unwrap_err();
        assert!(matches!(
            err,
            StoreError::Refused(Refusal::Conflict {
                expected: 5,
                actual: 7,
                ..
            })
        ));
        assert_eq!(
            err.to_string(),
            "pods/default/x was changed (resourceVersion 7, you sent 5): read it again and retry"
        );
    }

    #[test]
    fn create_is_stamped_with_its_revision_and_generation_one() {
        let mut p = pod("x");
        p.metadata.resource_version = 99;
        p.metadata.generation = 42;
        let out = stamp_create(Object::Pod(p), 8);
        assert_eq!(out.meta().resource_version, 8);
        assert_eq!(out.meta().generation, 1);
        assert_eq!(out.meta().uid, "uid-1");
    }

    #[test]
    fn spec_update_keeps_status_and_identity() {
        let old = pod("x");
        let mut new = pod("x");
        new.metadata.uid = "someone-elses".into();
        new.metadata.labels.insert("app".into(), "web".into());
        new.spec.args = vec!["--fast".into()];
        new.status.phase = PodPhase::Failed;
        let Object::Pod(out) =
            merge_update(&Object::Pod(old.clone()), Object::Pod(new), false).unwrap()
        else {
            panic!("not a pod")
        };
        assert_eq!(out.spec.args, vec!["--fast".to_string()]);
        assert_eq!(out.status, old.status);
        assert_eq!(out.metadata.uid, "uid-1");
        assert_eq!(
            out.metadata.labels.get("app").map(String::as_str),
            Some("web")
        );
        assert_eq!(out.metadata.generation, 3);
        assert_eq!(
            out.metadata.resource_version, 4,
            "the machine sets the new revision"
        );
    }

    #[test]
    fn generation_grows_only_when_the_spec_changes() {
        let old = Object::Pod(pod("x"));
        let mut labels_only = pod("x");
        labels_only.metadata.labels.insert("a".into(), "b".into());
        let out = merge_update(&old, Object::Pod(labels_only), false).unwrap();
        assert_eq!(out.meta().generation, 2);
        let same = merge_update(&old, old.clone(), false).unwrap();
        assert_eq!(same, old, "an identical update changes nothing");
    }

    #[test]
    fn status_update_keeps_spec_and_metadata() {
        let old = pod("x");
        let mut new = pod("x");
        new.spec.module = "sha256:bb".into();
        new.metadata.labels.insert("a".into(), "b".into());
        new.status.phase = PodPhase::Succeeded;
        let Object::Pod(out) =
            merge_update(&Object::Pod(old.clone()), Object::Pod(new), true).unwrap()
        else {
            panic!("not a pod")
        };
        assert_eq!(out.spec, old.spec);
        assert_eq!(out.metadata, old.metadata);
        assert_eq!(out.status.phase, PodPhase::Succeeded);
    }

    #[test]
    fn nodes_merge_like_pods() {
        let mut old = Node {
            metadata: ObjectMeta::named("", "pi-1"),
            ..Node::default()
        };
        old.metadata.generation = 1;
        let mut new = old.clone();
        new.spec.unschedulable = true;
        new.status.reason = "ignored".into();
        let Object::Node(out) =
            merge_update(&Object::Node(old.clone()), Object::Node(new), false).unwrap()
        else {
            panic!("not a node")
        };
        assert!(out.spec.unschedulable);
        assert_eq!(out.status, old.status);
        assert_eq!(out.metadata.generation, 2);
    }

    #[test]
    fn modules_are_immutable_but_their_labels_are_not() {
        let bytes = b"\0asm";
        let mut m = Module::default();
        m.spec.digest = objects::digest_of(bytes);
        let m = prepare_module(m, 4, &objects::digest_of(bytes)).unwrap();
        let old = Object::Module(m.clone());
        let mut relabelled = m.clone();
        relabelled
            .metadata
            .labels
            .insert("team".into(), "edge".into());
        let out = merge_update(&old, Object::Module(relabelled), false).unwrap();
        assert_eq!(out.meta().labels.len(), 1);
        let mut respecced = m.clone();
        respecced.spec.source = "other.wasm".into();
        assert!(matches!(
            merge_update(&old, Object::Module(respecced), false),
            Err(StoreError::Refused(Refusal::Invalid(_)))
        ));
        // Its status is what its bytes are; only records of compiled code
        // may be added to it.
        let mut reformatted = m.clone();
        reformatted.status.format = "component".into();
        assert!(matches!(
            merge_update(&old, Object::Module(reformatted), true),
            Err(StoreError::Refused(Refusal::Invalid(_)))
        ));
        let mut compiled = m;
        compiled.status.code.push(objects::ModuleCode {
            fingerprint: "ab12".into(),
            target: "pulley32".into(),
            sha256: objects::digest_of(b"code"),
            size: 4,
        });
        let out = merge_update(&old, Object::Module(compiled), true).unwrap();
        let Object::Module(out) = out else {
            panic!("a module")
        };
        assert_eq!(out.status.code.len(), 1);
    }

    #[test]
    fn kinds_cannot_be_swapped() {
        let n = Node {
            metadata: ObjectMeta::named("default", "x"),
            ..Node::default()
        };
        assert!(matches!(
            merge_update(&Object::Pod(pod("x")), Object::Node(n), false),
            Err(StoreError::Refused(Refusal::Invalid(_)))
        ));
    }

    #[test]
    fn modules_are_checked_against_their_bytes() {
        let bytes = b"\0asm\x01\0\0\0";
        let digest = objects::digest_of(bytes);
        let good = Module {
            spec: ModuleSpec {
                digest: digest.clone(),
                size: 0,
                source: "a.wasm".into(),
            },
            ..Module::default()
        };
        let size = bytes.len() as u64;
        let out = prepare_module(good.clone(), size, &digest).unwrap();
        assert_eq!(out.metadata.name, objects::module_name(&digest));
        assert_eq!(out.spec.size, bytes.len() as u64);

        let mut wrong_digest = good.clone();
        wrong_digest.spec.digest = objects::digest_of(b"other");
        let mut wrong_size = good.clone();
        wrong_size.spec.size = 3;
        let mut wrong_name = good.clone();
        wrong_name.metadata.name = "mine".into();
        let mut namespaced = good.clone();
        namespaced.metadata.namespace = "default".into();
        let mut malformed = good;
        malformed.spec.digest = "sha256:XYZ".into();
        for bad in [wrong_digest, wrong_size, wrong_name, namespaced, malformed] {
            assert!(
                matches!(
                    prepare_module(bad.clone(), size, &digest),
                    Err(StoreError::Refused(Refusal::Invalid(_)))
                ),
                "{bad:?}"
            );
        }
    }
}
