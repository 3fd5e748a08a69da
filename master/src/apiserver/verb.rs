//! What a request asks, as authorization and admission see it: an action
//! on a target (`{kind, namespace, name, subresource}` for objects), and who
//! asks ([`Caller`]). Front ends turn their wire requests into these; the
//! rules never see a wire type.

use flotilla_api::identity::Identity;
use flotilla_api::objects::Role;
use flotilla_api::Kind;
use std::fmt;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No client certificate of this cluster: may only join (with a token).
    Anonymous,
    /// May do anything.
    Admin,
    /// May read anything.
    Viewer,
    /// An edge node: its own Node, the pods bound to it and their modules.
    Node(String),
    /// Another master, by its raft id: raft messages, and what admins do
    /// (it forwards its clients' requests).
    Master(u64),
    /// A controller of this master (the scheduler, node lifecycle, ...),
    /// calling in-process: what admins do, through the same admission.
    Controller(&'static str),
    /// A user made by `flotilla user create`, by the name and uid its
    /// certificate carries; `grant` is what its User object allows, read
    /// for each request ([`super::ApiServer::resolve`]). Until then, none.
    User {
        name: String,
        uid: String,
        grant: Option<Grant>,
    },
}

/// What a User object allows its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    /// The one namespace the user may work in; None: every namespace.
    pub namespace: Option<String>,
}

impl From<Identity> for Caller {
    fn from(id: Identity) -> Caller {
        match id {
            Identity::Admin => Caller::Admin,
            Identity::Viewer => Caller::Viewer,
            Identity::Node(n) => Caller::Node(n),
            Identity::Master(m) => Caller::Master(m),
            Identity::User { name, uid } => Caller::User {
                name,
                uid,
                grant: None,
            },
        }
    }
}

impl Caller {
    /// The node this caller is, if it is one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Caller::Node(n) => Some(n),
            _ => None,
        }
    }

    /// The identity a certificate would carry for this caller (what a
    /// renewal keeps); None for anonymous callers and controllers.
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Caller::Admin => Some(Identity::Admin),
            Caller::Viewer => Some(Identity::Viewer),
            Caller::Node(n) => Some(Identity::Node(n.clone())),
            Caller::Master(m) => Some(Identity::Master(*m)),
            Caller::User { name, uid, .. } => Some(Identity::User {
                name: name.clone(),
                uid: uid.clone(),
            }),
            Caller::Anonymous | Caller::Controller(_) => None,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Anonymous => f.write_str("anonymous"),
            Caller::Controller(name) => write!(f, "controller {name}"),
            other => match other.identity() {
                Some(id) => id.fmt(f),
                None => f.write_str("unknown"),
            },
        }
    }
}

/// What is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Get,
    List,
    Watch,
    Create,
    Update,
    Delete,
}

impl Action {
    /// Whether the action changes nothing.
    pub fn reads(self) -> bool {
        matches!(self, Action::Get | Action::List | Action::Watch)
    }
}

/// A part of an object with its own rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// What is observed (written by nodes and controllers).
    Status,
    /// A pod's output, read from its node.
    Log,
    /// A module's bytes.
    Bytes,
    /// A node's liveness signal.
    Heartbeat,
    /// A pod's placement on a node (spec.nodeName and its PodScheduled condition).
    Binding,
    /// A Secret's values (every other read hides them).
    Data,
}

/// What is acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Objects of a kind (all of them for lists and watches without a kind).
    Object {
        kind: Option<Kind>,
        namespace: String,
        name: String,
        subresource: Option<Subresource>,
    },
    /// Join tokens.
    Token,
    /// Certificates: joining (anonymous, with a token) and renewing.
    Certificate,
    /// The cluster's health, membership and certificates.
    Cluster,
    /// A backup of the whole state (every object and token record).
    Backup,
    /// Raft messages between masters.
    Raft,
}

/// A request as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verb {
    pub action: Action,
    pub target: Target,
}

impl Verb {
    /// A verb on one object (or its subresource).
    pub fn object(
        action: Action,
        kind: Kind,
        namespace: &str,
        name: &str,
        subresource: Option<Subresource>,
    ) -> Verb {
        Verb {
            action,
            target: Target::Object {
                kind: Some(kind),
                namespace: namespace.to_string(),
                name: name.to_string(),
                subresource,
            },
        }
    }

    /// A list or watch over `kind` (every kind if None).
    pub fn collection(action: Action, kind: Option<Kind>, namespace: Option<&str>) -> Verb {
        Verb {
            action,
            target: Target::Object {
                kind,
                namespace: namespace.unwrap_or_default().to_string(),
                name: String::new(),
                subresource: None,
            },
        }
    }

    /// A verb on a target that is not an object.
    pub fn on(action: Action, target: Target) -> Verb {
        Verb { action, target }
    }
}
