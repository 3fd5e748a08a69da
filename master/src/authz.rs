//! Who may do what. Pure functions of (caller, request[, stored object]):
//! admins may do anything, viewers may read, and a node may write only its
//! own Node object and the status of pods bound to it (Kubernetes'
//! NodeRestriction). A connection without a certificate may only join.
//! Raft messages come only from masters, which may otherwise do what admins
//! do (they will forward writes to the leader).

use flotilla_api::identity::Identity;
use flotilla_api::protocol::{ApiError, ErrorCode, Request};
use flotilla_api::{Object, Pod};
use std::fmt;

/// The caller of a request, from its connection's client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Known(Identity),
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Anonymous => f.write_str("anonymous"),
            Caller::Known(i) => i.fmt(f),
        }
    }
}

fn forbidden(msg: String) -> ApiError {
    ApiError::new(ErrorCode::Forbidden, msg)
}

/// Checks a request against the caller's role. Pod status writes by nodes
/// need the stored pod as well: see [`authorize_pod_status`].
pub fn authorize(caller: &Caller, req: &Request) -> Result<(), ApiError> {
    let read_only = matches!(
        req,
        Request::Hello { .. }
            | Request::Get { .. }
            | Request::List(_)
            | Request::ListStream(_)
            | Request::Watch(_)
            | Request::GetModule { .. }
            | Request::ClusterStatus
            | Request::Certificates
    );
    if let Request::Raft { .. } = req {
        // Whoever may send raft messages can rewrite the cluster's history:
        // only masters, whatever else a caller may do.
        return match caller {
            Caller::Known(Identity::Master(_)) => Ok(()),
            Caller::Anonymous => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "raft messages need a master's client certificate",
            )),
            Caller::Known(other) => Err(forbidden(format!(
                "{other} may not send raft messages; only masters may"
            ))),
        };
    }
    if let Request::Snapshot = req {
        // A backup holds every object and token record: admins (and masters) only.
        return match caller {
            Caller::Known(Identity::Admin) | Caller::Known(Identity::Master(_)) => Ok(()),
            other => Err(forbidden(format!(
                "{other} may not take a backup of the cluster state; use an admin config"
            ))),
        };
    }
    if let Request::RenewCertificate { .. } = req {
        // Renewal keeps the identity the caller already proved with a valid
        // certificate; it grants nothing new.
        return match caller {
            Caller::Known(_) => Ok(()),
            Caller::Anonymous => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "renewing a certificate needs a valid one of this cluster; an expired node joins again with a new token (`flotilla token create`)",
            )),
        };
    }
    match caller {
        Caller::Anonymous => match req {
            // Joins prove themselves with a token instead.
            Request::Hello { .. } | Request::Join { .. } | Request::JoinMaster { .. } => Ok(()),
            _ => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this connection presented no client certificate of this cluster; use the credentials in ~/.flotilla/config (or --config / FLOTILLA_CONFIG)",
            )),
        },
        Caller::Known(Identity::Admin) | Caller::Known(Identity::Master(_)) => Ok(()),
        Caller::Known(Identity::Viewer) => {
            if read_only || matches!(req, Request::Logs { .. }) {
                Ok(())
            } else {
                Err(forbidden("viewers may only read; ask an admin for credentials that may write".into()))
            }
        }
        Caller::Known(Identity::Node(me)) => {
            let own_node = |o: &Object| matches!(o, Object::Node(n) if n.metadata.name == *me);
            let ok = read_only
                || match req {
                    Request::Heartbeat { node } => node == me,
                    Request::Create(o) | Request::Update(o) => own_node(o),
                    Request::UpdateStatus(o) => own_node(o) || matches!(o, Object::Pod(_)),
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

/// Whether node `me` may read `obj` (Kubernetes' node authorizer): its own
/// Node, the pods bound to it, and the modules `used` says its pods run.
/// Everything else (other nodes' pods with their env values, every other
/// module) is not the node's business.
pub fn node_may_read(me: &str, obj: &Object, used: &dyn Fn(&str) -> bool) -> bool {
    match obj {
        Object::Node(n) => n.metadata.name == me,
        Object::Pod(p) => p.spec.node_name.as_deref() == Some(me),
        Object::Module(m) => used(&m.spec.digest),
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
    match want.iter().chain(have.iter()).find(|kv| want.contains(kv) != have.contains(kv)) {
        None => Ok(()),
        Some((k, _)) => Err(forbidden(format!(
            "node {me} may not set the label {k:?} on itself: labels under flotilla.dev/ and node-role. attract pods, so only an admin may set them"
        ))),
    }
}

/// A node may write the status of a pod only while the pod is bound to it.
pub fn authorize_pod_status(caller: &Caller, stored: &Pod) -> Result<(), ApiError> {
    match caller {
        Caller::Known(Identity::Node(me))
            if stored.spec.node_name.as_deref() != Some(me.as_str()) =>
        {
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
    use flotilla_api::objects::{Kind, Node};
    use flotilla_api::protocol::ListOptions;

    fn node_obj(name: &str) -> Object {
        let mut n = Node::default();
        n.metadata.name = name.into();
        Object::Node(n)
    }

    #[test]
    fn roles_table() {
        let admin = Caller::Known(Identity::Admin);
        let viewer = Caller::Known(Identity::Viewer);
        let n1 = Caller::Known(Identity::Node("n1".into()));
        let anon = Caller::Anonymous;
        let get = Request::Get {
            kind: Kind::Pod,
            namespace: "default".into(),
            name: "x".into(),
            stale: false,
        };
        let list = Request::List(ListOptions::default());
        let list_stream = Request::ListStream(ListOptions::default());
        let create_pod = Request::Create(Object::Pod(Pod::default()));
        let own = Request::UpdateStatus(node_obj("n1"));
        let other = Request::UpdateStatus(node_obj("n2"));
        let hb_other = Request::Heartbeat { node: "n2".into() };
        let token = Request::CreateToken {
            ttl_seconds: 60,
            description: String::new(),
            master: false,
        };
        let hello = Request::Hello {
            version: 1,
            agent: String::new(),
        };
        let m2 = Caller::Known(Identity::Master(2));
        let raft = Request::Raft {
            rpc: flotilla_api::protocol::RaftRpc::Vote,
            payload: Vec::new(),
        };
        let cases: Vec<(&Caller, &Request, Option<ErrorCode>)> = vec![
            (&m2, &raft, None),
            (&m2, &create_pod, None),
            (&m2, &token, None),
            (&m2, &hello, None),
            (&admin, &raft, Some(ErrorCode::Forbidden)),
            (&viewer, &raft, Some(ErrorCode::Forbidden)),
            (&n1, &raft, Some(ErrorCode::Forbidden)),
            (&anon, &raft, Some(ErrorCode::Unauthenticated)),
            (&admin, &create_pod, None),
            (&admin, &token, None),
            (&viewer, &get, None),
            (&viewer, &create_pod, Some(ErrorCode::Forbidden)),
            (&n1, &list, None),
            (&n1, &list_stream, None),
            (&viewer, &list_stream, None),
            (&anon, &list_stream, Some(ErrorCode::Unauthenticated)),
            (&n1, &own, None),
            (&n1, &other, Some(ErrorCode::Forbidden)),
            (&n1, &hb_other, Some(ErrorCode::Forbidden)),
            (&n1, &create_pod, Some(ErrorCode::Forbidden)),
            (&n1, &token, Some(ErrorCode::Forbidden)),
            (&anon, &get, Some(ErrorCode::Unauthenticated)),
            (&anon, &hello, None),
        ];
        for (caller, req, want) in cases {
            assert_eq!(
                authorize(caller, req).err().map(|e| e.code),
                want,
                "{caller} {req:?}"
            );
        }
    }

    #[test]
    fn pod_status_only_for_the_bound_node() {
        let mut pod = Pod::default();
        pod.spec.node_name = Some("n1".into());
        assert!(authorize_pod_status(&Caller::Known(Identity::Node("n1".into())), &pod).is_ok());
        assert!(authorize_pod_status(&Caller::Known(Identity::Node("n2".into())), &pod).is_err());
        assert!(authorize_pod_status(&Caller::Known(Identity::Admin), &pod).is_ok());
    }
}
