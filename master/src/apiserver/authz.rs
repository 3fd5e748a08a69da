//! Who may do what: pure functions of (caller, verb[, stored object]).
//! Admins, masters and controllers may do anything; viewers may read; a
//! node may write only its own Node, its heartbeat and the status of pods
//! bound to it (Kubernetes' NodeRestriction), and read only its own Node,
//! its pods and their modules (the node authorizer). A caller without a
//! certificate may only join. Raft messages come only from masters. A user
//! made by `flotilla user create` may do what its role allows
//! ([`authorize_user`]), within its namespace if it has one.

use super::verb::{Action, Caller, Grant, Subresource, Target, Verb};
use flotilla_api::objects::Role;
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::{Kind, Object, Pod};

fn forbidden(msg: String) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, msg)
}

/// Checks a verb against the caller's role. What depends on the object
/// itself is checked apart: [`node_may_read`] for a node's reads,
/// [`authorize_pod_status`] for its pod status writes.
pub fn authorize(caller: &Caller, verb: &Verb) -> Result<(), ApiError> {
    if let Caller::User {
        name, grant: None, ..
    } = caller
    {
        return Err(unresolved(name));
    }
    match &verb.target {
        // Whoever may send raft messages can rewrite the cluster's history:
        // only masters, whatever else a caller may do.
        Target::Raft => {
            return match caller {
                Caller::Master(_) => Ok(()),
                Caller::Anonymous => Err(ApiError::new(
                    ErrorCode::Unauthenticated,
                    "raft messages need a master's client certificate",
                )),
                other => Err(forbidden(format!(
                    "{other} may not send raft messages; only masters may"
                ))),
            };
        }
        // A backup holds every object and token record.
        Target::Backup => {
            return match caller {
                Caller::Admin | Caller::Master(_) | Caller::Controller(_) => Ok(()),
                Caller::User {
                    grant:
                        Some(Grant {
                            role: Role::Admin,
                            namespace: None,
                        }),
                    ..
                } => Ok(()),
                other => Err(forbidden(format!(
                    "{other} may not take a backup of the cluster state; use an admin config"
                ))),
            };
        }
        Target::Certificate => {
            return match (verb.action, caller) {
                // Joins prove themselves with a token instead.
                (Action::Create, _) => Ok(()),
                // Renewal keeps the identity the caller already proved with
                // a valid certificate; it grants nothing new.
                (_, Caller::Anonymous) => Err(ApiError::new(
                    ErrorCode::Unauthenticated,
                    "renewing a certificate needs a valid one of this cluster; an expired node joins again with a new token (`flotilla token create`)",
                )),
                (_, c) if c.identity().is_some() => Ok(()),
                (_, other) => Err(forbidden(format!("{other} has no certificate to renew"))),
            };
        }
        _ => {}
    }
    match caller {
        Caller::Anonymous => Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "this connection presented no client certificate of this cluster; use the credentials in ~/.flotilla/config (or --config / FLOTILLA_CONFIG)",
        )),
        Caller::Admin | Caller::Master(_) | Caller::Controller(_) => Ok(()),
        Caller::Viewer => viewer_may(verb),
        Caller::User {
            name,
            grant: Some(grant),
            ..
        } => authorize_user(name, grant, verb),
        Caller::User {
            name, grant: None, ..
        } => Err(unresolved(name)),
        Caller::Node(me) => {
            let ok = match &verb.target {
                Target::Object {
                    kind,
                    name,
                    subresource,
                    ..
                } => {
                    let own_node = *kind == Some(Kind::Node) && name == me;
                    match (verb.action, subresource) {
                        // Other pods' logs are not a node's business.
                        (_, Some(Subresource::Log)) => false,
                        (a, _) if a.reads() => true,
                        (Action::Update, Some(Subresource::Heartbeat)) => own_node,
                        (Action::Create | Action::Update, None) => own_node,
                        (Action::Update, Some(Subresource::Status)) => {
                            own_node || *kind == Some(Kind::Pod)
                        }
                        _ => false,
                    }
                }
                Target::Cluster => verb.action.reads(),
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(forbidden(format!(
                    "node {me} may only write its own Node object and the status of pods bound to it"
                )))
            }
        }
    }
}

/// The front end reads a user's User object before any request
/// ([`super::ApiServer::resolve`]); without it, a user is nobody.
fn unresolved(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::Unauthenticated,
        format!("user {name}: what it may do was not read; try again"),
    )
}

/// What viewers may do: read anything but a Secret's values and the join tokens.
fn viewer_may(verb: &Verb) -> Result<(), ApiError> {
    if matches!(
        verb.target,
        Target::Object {
            subresource: Some(Subresource::Data),
            ..
        }
    ) {
        Err(forbidden(
            "viewers may not read a Secret's values (they see its keys and sizes); ask an admin"
                .into(),
        ))
    } else if verb.action.reads() && !matches!(verb.target, Target::Token) {
        Ok(())
    } else {
        Err(forbidden(
            "viewers may only read; ask an admin for credentials that may write".into(),
        ))
    }
}

/// What user `name` may do with `grant`: first its namespace (a user of one
/// namespace reaches the objects of that namespace, reads what is not in
/// any namespace but users, and uploads modules), then its role (admins
/// anything, operators the objects of namespaces and modules, viewers
/// reads but Secret values and tokens).
pub fn authorize_user(name: &str, grant: &Grant, verb: &Verb) -> Result<(), ApiError> {
    if let Some(ns) = &grant.namespace {
        within_namespace(name, ns, verb)?;
    }
    match grant.role {
        Role::Admin => Ok(()),
        Role::Viewer => viewer_may(verb),
        Role::Operator => {
            let ok = match &verb.target {
                Target::Object { .. } | Target::Cluster if verb.action.reads() => true,
                Target::Object {
                    kind: Some(kind),
                    subresource,
                    ..
                } => match kind {
                    Kind::Module => verb.action == Action::Create,
                    Kind::User | Kind::Node | Kind::Namespace | Kind::PriorityClass => false,
                    k => k.namespaced() && subresource.is_none(),
                },
                _ => false,
            };
            if ok {
                Ok(())
            } else {
                Err(forbidden(format!(
                    "user {name} is an operator: it reads everything and writes the objects of namespaces \
                     and modules; {} is an admin's (ask one)",
                    what_of(verb)
                )))
            }
        }
    }
}

/// A user limited to namespace `ns`.
fn within_namespace(name: &str, ns: &str, verb: &Verb) -> Result<(), ApiError> {
    let refuse = |why: String| {
        Err(forbidden(format!(
            "user {name} works in namespace {ns} only: {why}"
        )))
    };
    match &verb.target {
        Target::Object {
            kind, namespace, ..
        } if kind.is_none_or(|k| k.namespaced()) => {
            if namespace == ns {
                Ok(())
            } else if namespace.is_empty() {
                refuse(format!(
                    "it may not reach every namespace at once; add -n {ns}"
                ))
            } else {
                refuse(format!("{namespace} is not its namespace; add -n {ns}"))
            }
        }
        Target::Object {
            kind: Some(kind), ..
        } => match kind {
            Kind::User => refuse("users are for admins of every namespace".into()),
            Kind::Module if verb.action == Action::Create => Ok(()),
            _ if verb.action.reads() => Ok(()),
            k => refuse(format!(
                "{} are not in any namespace, so they are for admins of every namespace",
                k.plural()
            )),
        },
        Target::Cluster if verb.action.reads() => Ok(()),
        _ => refuse(format!(
            "{} is for admins of every namespace",
            what_of(verb)
        )),
    }
}

/// How a refusal names what was asked: `writing nodes`, `managing join tokens`.
fn what_of(verb: &Verb) -> String {
    match &verb.target {
        Target::Object {
            kind: Some(kind), ..
        } => format!(
            "{} {}",
            if verb.action.reads() {
                "reading"
            } else {
                "writing"
            },
            kind.plural()
        ),
        Target::Object { kind: None, .. } => "reaching every kind at once".into(),
        Target::Token => "managing join tokens".into(),
        Target::Certificate => "renewing certificates".into(),
        Target::Cluster => "changing the cluster's membership".into(),
        Target::Backup => "taking a backup of the cluster state".into(),
        Target::Raft => "sending raft messages".into(),
    }
}

/// Whether node `me` may read `obj` (Kubernetes' node authorizer): its own
/// Node, the pods bound to it, the modules `used` says its pods run, and
/// every Service and Endpoints (its proxy routes them all, as kube-proxy
/// reads them; they hold no secrets). Everything else (other nodes' pods
/// with their env values, every other module, every other kind) is not
/// the node's business.
pub fn node_may_read(me: &str, obj: &Object, used: &dyn Fn(&str) -> bool) -> bool {
    match obj {
        Object::Node(n) => n.metadata.name == me,
        Object::Pod(p) => p.spec.node_name.as_deref() == Some(me),
        Object::Module(m) => used(&m.spec.digest),
        Object::Service(_) | Object::Endpoints(_) => true,
        _ => false,
    }
}

/// A node writing its own Node may not add, change or remove restricted
/// labels (`stored` is None on create).
pub fn check_node_labels(
    me: &str,
    new: &flotilla_api::Node,
    stored: Option<&flotilla_api::Node>,
) -> Result<(), ApiError> {
    let restricted = |n: Option<&flotilla_api::Node>| -> Vec<(String, String)> {
        n.map(|n| {
            n.metadata
                .labels
                .iter()
                .filter(|(k, _)| flotilla_api::labels::is_restricted_node_label(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
    };
    let (want, have) = (restricted(Some(new)), restricted(stored));
    match want
        .iter()
        .chain(have.iter())
        .find(|kv| want.contains(kv) != have.contains(kv))
    {
        None => Ok(()),
        Some((k, _)) => Err(forbidden(format!(
            "node {me} may not set the label {k:?} on itself: labels under flotilla.dev/ and node-role. attract pods, so only an admin may set them"
        ))),
    }
}

/// A node may write the status of a pod only while the pod is bound to it.
pub fn authorize_pod_status(caller: &Caller, stored: &Pod) -> Result<(), ApiError> {
    match caller {
        Caller::Node(me) if stored.spec.node_name.as_deref() != Some(me.as_str()) => {
            Err(forbidden(format!(
                "node {me} may not write the status of pod {}/{}: it is bound to {}",
                stored.metadata.namespace,
                stored.metadata.name,
                stored.spec.node_name.as_deref().unwrap_or("no node")
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::objects::Node;

    #[test]
    fn roles_table() {
        let admin = Caller::Admin;
        let viewer = Caller::Viewer;
        let n1 = Caller::Node("n1".into());
        let m2 = Caller::Master(2);
        let ctl = Caller::Controller("scheduler");
        let anon = Caller::Anonymous;
        let obj = |a, k, n: &str, s| Verb::object(a, k, "", n, s);
        let get_pod = Verb::object(Action::Get, Kind::Pod, "default", "x", None);
        let list = Verb::collection(Action::List, None, None);
        let watch_pods = Verb::collection(Action::Watch, Some(Kind::Pod), Some("default"));
        let create_pod = Verb::object(Action::Create, Kind::Pod, "default", "x", None);
        let own_status = obj(Action::Update, Kind::Node, "n1", Some(Subresource::Status));
        let other_status = obj(Action::Update, Kind::Node, "n2", Some(Subresource::Status));
        let pod_status = Verb::object(
            Action::Update,
            Kind::Pod,
            "default",
            "x",
            Some(Subresource::Status),
        );
        let own_node = obj(Action::Update, Kind::Node, "n1", None);
        let own_beat = obj(
            Action::Update,
            Kind::Node,
            "n1",
            Some(Subresource::Heartbeat),
        );
        let other_beat = obj(
            Action::Update,
            Kind::Node,
            "n2",
            Some(Subresource::Heartbeat),
        );
        let logs = Verb::object(
            Action::Get,
            Kind::Pod,
            "default",
            "x",
            Some(Subresource::Log),
        );
        let module_bytes = obj(
            Action::Get,
            Kind::Module,
            "sha256-x",
            Some(Subresource::Bytes),
        );
        let token = Verb::on(Action::Create, Target::Token);
        let join = Verb::on(Action::Create, Target::Certificate);
        let renew = Verb::on(Action::Update, Target::Certificate);
        let raft = Verb::on(Action::Update, Target::Raft);
        let backup = Verb::on(Action::Get, Target::Backup);
        let status = Verb::on(Action::Get, Target::Cluster);
        let remove_master = Verb::on(Action::Delete, Target::Cluster);
        use ErrorCode::{Forbidden as F, Unauthenticated as U};
        let cases: Vec<(&Caller, &Verb, Option<ErrorCode>)> = vec![
            (&m2, &raft, None),
            (&m2, &create_pod, None),
            (&m2, &token, None),
            (&admin, &raft, Some(F)),
            (&viewer, &raft, Some(F)),
            (&n1, &raft, Some(F)),
            (&ctl, &raft, Some(F)),
            (&anon, &raft, Some(U)),
            (&admin, &create_pod, None),
            (&admin, &token, None),
            (&admin, &backup, None),
            (&admin, &remove_master, None),
            (&ctl, &create_pod, None),
            (&ctl, &pod_status, None),
            (&viewer, &get_pod, None),
            (&viewer, &logs, None),
            (&viewer, &status, None),
            (&viewer, &create_pod, Some(F)),
            (&viewer, &backup, Some(F)),
            (&viewer, &token, Some(F)),
            (&viewer, &remove_master, Some(F)),
            (&n1, &list, None),
            (&n1, &watch_pods, None),
            (&n1, &module_bytes, None),
            (&n1, &status, None),
            (&n1, &own_status, None),
            (&n1, &own_node, None),
            (&n1, &own_beat, None),
            (&n1, &pod_status, None),
            (&n1, &other_status, Some(F)),
            (&n1, &other_beat, Some(F)),
            (&n1, &create_pod, Some(F)),
            (&n1, &token, Some(F)),
            (&n1, &logs, Some(F)),
            (&n1, &backup, Some(F)),
            (&n1, &remove_master, Some(F)),
            (&anon, &get_pod, Some(U)),
            (&anon, &list, Some(U)),
            (&anon, &join, None),
            (&anon, &renew, Some(U)),
            (&n1, &renew, None),
            (&ctl, &renew, Some(F)),
        ];
        for (caller, verb, want) in cases {
            assert_eq!(
                authorize(caller, verb).err().map(|e| e.code),
                want,
                "{caller} {verb:?}"
            );
        }
    }

    #[test]
    fn users_do_what_their_role_allows_within_their_namespace() {
        let user = |role, namespace: Option<&str>| Caller::User {
            name: "u".into(),
            uid: "1".into(),
            grant: Some(Grant {
                role,
                namespace: namespace.map(String::from),
            }),
        };
        let admin = user(Role::Admin, None);
        let team_admin = user(Role::Admin, Some("team"));
        let op = user(Role::Operator, None);
        let team_op = user(Role::Operator, Some("team"));
        let viewer = user(Role::Viewer, None);
        let unresolved = Caller::User {
            name: "u".into(),
            uid: "1".into(),
            grant: None,
        };
        let pod = |a, ns: &str| Verb::object(a, Kind::Pod, ns, "x", None);
        let cluster = |a, k| Verb::object(a, k, "", "x", None);
        let secret_data = Verb::object(
            Action::Get,
            Kind::Secret,
            "team",
            "s",
            Some(Subresource::Data),
        );
        let upload = Verb::object(
            Action::Create,
            Kind::Module,
            "",
            "sha256-x",
            Some(Subresource::Bytes),
        );
        let every_ns = Verb::collection(Action::List, Some(Kind::Pod), None);
        let every_kind_team = Verb::collection(Action::Watch, None, Some("team"));
        let token = Verb::on(Action::Create, Target::Token);
        let renew = Verb::on(Action::Update, Target::Certificate);
        let status = Verb::on(Action::Get, Target::Cluster);
        let remove_master = Verb::on(Action::Delete, Target::Cluster);
        let pod_status = Verb::object(
            Action::Update,
            Kind::Pod,
            "team",
            "x",
            Some(Subresource::Status),
        );
        use ErrorCode::{Forbidden as F, Unauthenticated as U};
        let cases: Vec<(&Caller, Verb, Option<ErrorCode>)> = vec![
            (&unresolved, pod(Action::Get, "team"), Some(U)),
            (&unresolved, renew.clone(), Some(U)),
            (&admin, token.clone(), None),
            (&admin, Verb::on(Action::Get, Target::Backup), None),
            (&team_admin, Verb::on(Action::Get, Target::Backup), Some(F)),
            (&op, Verb::on(Action::Get, Target::Backup), Some(F)),
            (&admin, Verb::on(Action::Update, Target::Raft), Some(F)),
            (&admin, remove_master.clone(), None),
            (&admin, cluster(Action::Create, Kind::User), None),
            (&team_admin, pod(Action::Delete, "team"), None),
            (&team_admin, pod(Action::Get, "other"), Some(F)),
            (&team_admin, every_ns.clone(), Some(F)),
            (&team_admin, every_kind_team.clone(), None),
            (&team_admin, token.clone(), Some(F)),
            (&team_admin, cluster(Action::Update, Kind::Node), Some(F)),
            (&team_admin, cluster(Action::Get, Kind::Node), None),
            (&team_admin, cluster(Action::Get, Kind::User), Some(F)),
            (&team_admin, upload.clone(), None),
            (&team_admin, status.clone(), None),
            (&team_admin, renew.clone(), None),
            (&op, pod(Action::Create, "any"), None),
            (&op, every_ns.clone(), None),
            (&op, secret_data.clone(), None),
            (&op, upload.clone(), None),
            (&op, pod_status.clone(), Some(F)),
            (&op, cluster(Action::Update, Kind::Node), Some(F)),
            (&op, cluster(Action::Create, Kind::Namespace), Some(F)),
            (&op, cluster(Action::Create, Kind::PriorityClass), Some(F)),
            (&op, cluster(Action::Create, Kind::User), Some(F)),
            (&op, cluster(Action::Get, Kind::User), None),
            (&op, token.clone(), Some(F)),
            (&op, remove_master.clone(), Some(F)),
            (&op, status.clone(), None),
            (&team_op, pod(Action::Update, "team"), None),
            (&team_op, pod(Action::Update, "default"), Some(F)),
            (&viewer, pod(Action::Get, "any"), None),
            (&viewer, pod(Action::Create, "any"), Some(F)),
            (&viewer, secret_data.clone(), Some(F)),
            (&viewer, token.clone(), Some(F)),
            (&viewer, upload.clone(), Some(F)),
            (&viewer, renew.clone(), None),
        ];
        for (caller, verb, want) in cases {
            assert_eq!(
                authorize(caller, &verb).err().map(|e| e.code),
                want,
                "{caller:?} {verb:?}"
            );
        }
        let err = authorize(&team_op, &pod(Action::Get, "default")).unwrap_err();
        assert_eq!(
            err.message,
            "user u works in namespace team only: default is not its namespace; add -n team"
        );
    }

    #[test]
    fn nodes_read_only_their_own() {
        let mut mine = flotilla_api::Pod::default();
        mine.spec.node_name = Some("n1".into());
        mine.spec.module = "sha256:m".into();
        let mut theirs = mine.clone();
        theirs.spec.node_name = Some("n2".into());
        let node = |name: &str| {
            let mut n = Node::default();
            n.metadata.name = name.into();
            Object::Node(n)
        };
        let mut module = flotilla_api::Module::default();
        module.spec.digest = "sha256:m".into();
        let mut other_module = module.clone();
        other_module.spec.digest = "sha256:o".into();
        let used = |d: &str| d == "sha256:m";
        let cases = [
            (Object::Pod(mine), true),
            (Object::Pod(theirs), false),
            (node("n1"), true),
            (node("n2"), false),
            (Object::Module(module), true),
            (Object::Module(other_module), false),
            (
                Object::PriorityClass(flotilla_api::objects::PriorityClass::default()),
                false,
            ),
            (Object::Service(Default::default()), true),
            (Object::Endpoints(Default::default()), true),
            (Object::ConfigMap(Default::default()), false),
        ];
        for (o, want) in cases {
            assert_eq!(node_may_read("n1", &o, &used), want, "{}", o.describe());
        }
    }

    #[test]
    fn pod_status_only_for_the_bound_node() {
        let mut pod = Pod::default();
        pod.spec.node_name = Some("n1".into());
        assert!(authorize_pod_status(&Caller::Node("n1".into()), &pod).is_ok());
        assert!(authorize_pod_status(&Caller::Node("n2".into()), &pod).is_err());
        assert!(authorize_pod_status(&Caller::Admin, &pod).is_ok());
        assert!(authorize_pod_status(&Caller::Controller("lifecycle"), &pod).is_ok());
    }

    #[test]
    fn nodes_may_not_set_restricted_labels() {
        let with = |labels: &[(&str, &str)]| {
            let mut n = Node::default();
            n.metadata.name = "n1".into();
            for (k, v) in labels {
                n.metadata.labels.insert(k.to_string(), v.to_string());
            }
            n
        };
        let arch = (flotilla_api::labels::ARCH, "arm64");
        let role = ("node-role.flotilla.dev/gpu", "");
        let zone = ("flotilla.dev/zone", "a");
        let cases = [
            (with(&[arch]), None, true),
            (with(&[arch, ("team", "edge")]), None, true),
            (with(&[role]), None, false),
            (with(&[zone]), Some(with(&[])), false),
            // Keeping what an admin set is fine; removing or changing it is not.
            (with(&[zone]), Some(with(&[zone])), true),
            (with(&[]), Some(with(&[zone])), false),
            (
                with(&[("flotilla.dev/zone", "b")]),
                Some(with(&[zone])),
                false,
            ),
        ];
        for (new, stored, ok) in cases {
            assert_eq!(
                check_node_labels("n1", &new, stored.as_ref()).is_ok(),
                ok,
                "{:?} over {:?}",
                new.metadata.labels,
                stored.map(|s| s.metadata.labels)
            );
        }
    }
}
