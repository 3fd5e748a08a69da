//! The kinds of object the cluster stores, each an envelope
//! ([`ObjectMeta`]) around what is wanted and what is observed, and
//! [`Object`], the sum type the store and the wire use.
//!
//! A kind is one module here (its type, its validation, how an update merges
//! into the stored object: the [`Resource`] trait) and one line in the
//! [`kinds!`] registration below, which derives [`Kind`], [`Object`] and
//! every per-kind dispatch from it. The master's admission of a kind (checks
//! against other objects) is one module under `master/src/apiserver/kinds/`.
//!
//! On the wire and in the store (postcard frames) an object is its kind and
//! its JSON, fields at their default left out: self-describing, so a field added to a kind needs no new
//! format — an older reader refuses it by name, a newer one defaults a
//! missing field. The positional layouts of protocol 2 are still read
//! ([`legacy`]).

pub mod config_map;
pub mod cron_job;
pub mod daemon_set;
pub mod deployment;
pub mod event;
pub mod http;
pub mod job;
pub mod legacy;
pub mod module;
pub mod namespace;
pub mod network;
pub mod node;
pub mod pod;
pub mod priority_class;
pub mod replica_set;
pub mod scheduling;
pub mod secret;
pub mod service;
pub mod user;
pub mod volume;
pub mod workload;

pub use config_map::ConfigMap;
pub use cron_job::CronJob;
pub use daemon_set::DaemonSet;
pub use deployment::Deployment;
pub use job::Job;
pub use module::{
    digest_of, is_digest, module_name, Module, ModuleCode, ModuleSpec, ModuleStatus,
    MAX_MODULE_CODE,
};
pub use namespace::Namespace;
pub use node::{
    CodeCounts, CodeTarget, Node, NodeCapacity, NodeEngine, NodeInfo, NodeSpec, NodeStatus,
    ReadyState,
};
pub use pod::{
    condition, EnvVar, LastState, Pod, PodCondition, PodPhase, PodSpec, PodStatus, ResourceList,
    ResourceRequirements, RestartPolicy,
};
pub use priority_class::PriorityClass;
pub use replica_set::ReplicaSet;
pub use scheduling::{
    Affinity, LabelSelector, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm,
    PreemptionPolicy, Taint, TaintEffect, Toleration, TopologySpreadConstraint,
};
pub use secret::Secret;
pub use user::{Role, User};

use crate::manifest::FieldError;
use crate::meta::ObjectMeta;
use serde::de::{self, DeserializeOwned};
use serde::ser::{self, SerializeTupleVariant};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// What every kind provides; [`kinds!`] dispatches to it from [`Object`].
pub trait Resource:
    Clone + fmt::Debug + PartialEq + Default + Serialize + DeserializeOwned + Into<Object>
{
    fn metadata(&self) -> &ObjectMeta;
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
    /// Checks beyond the metadata (which every kind gets): field paths and
    /// messages that say what to write instead.
    fn validate(&self) -> Vec<FieldError>;
    /// The object an update leaves in the store (before its new
    /// resourceVersion is set). Spec update: what users own comes from
    /// `incoming`, the status and the identity stay. Status update: only the
    /// status comes from `incoming`. An error says what may not change.
    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String>;
    /// The module this object runs, or has its pods run (a template's):
    /// the master keeps that module while the object exists.
    fn module(&self) -> Option<&str> {
        None
    }
}

/// Merges an object made of metadata, spec and status; `parts` borrows the
/// three. A spec update bumps `generation` when the spec changes.
pub(crate) fn merge_parts<O: Clone, S: PartialEq, T>(
    stored: &O,
    mut incoming: O,
    status_only: bool,
    parts: fn(&mut O) -> (&mut ObjectMeta, &mut S, &mut T),
) -> O {
    let mut out = stored.clone();
    let (meta, spec, status) = parts(&mut out);
    let (new_meta, new_spec, new_status) = parts(&mut incoming);
    if status_only {
        std::mem::swap(status, new_status);
    } else {
        let spec_changed = *spec != *new_spec;
        *meta = merge_meta(meta, std::mem::take(new_meta), spec_changed);
        std::mem::swap(spec, new_spec);
    }
    out
}

/// Metadata after a spec update: the user-owned fields (labels,
/// annotations, ownerReferences, finalizers) from `incoming`, the rest
/// (identity, timestamps, versions, the deletion mark, and any field added
/// later) as stored.
pub(crate) fn merge_meta(
    stored: &ObjectMeta,
    incoming: ObjectMeta,
    spec_changed: bool,
) -> ObjectMeta {
    let mut out = stored.clone();
    out.labels = incoming.labels;
    out.annotations = incoming.annotations;
    out.owner_references = incoming.owner_references;
    out.finalizers = incoming.finalizers;
    if spec_changed {
        out.generation = stored.generation.saturating_add(1);
    }
    out
}

/// The index of the self-describing variant in an object's postcard
/// encoding; 0 to 2 are protocol 2's positional Pod, Node and Module.
const ENCODED: u32 = 3;

/// Registers the kinds. Each line: the variant (also the manifest's
/// `kind`), its type, its plural and short names for the CLI, and whether
/// it lives in a namespace. Append only: a kind's position is its number on
/// the wire and in the store.
macro_rules! kinds {
    ($( $variant:ident($ty:ty), $plural:literal, [$($short:literal),*], $namespaced:literal; )*) => {
        /// The kinds of object, as written in a manifest's `kind`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[non_exhaustive]
        pub enum Kind {
            $($variant,)*
        }

        impl Kind {
            /// Every kind, for listings and help texts.
            pub const ALL: &'static [Kind] = &[$(Kind::$variant,)*];

            /// The name as written in manifests (`Pod`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Kind::$variant => stringify!($variant),)*
                }
            }

            /// The plural used by the CLI (`pods`).
            pub fn plural(self) -> &'static str {
                match self {
                    $(Kind::$variant => $plural,)*
                }
            }

            /// Short names the CLI accepts (`po`).
            pub fn short_names(self) -> &'static [&'static str] {
                match self {
                    $(Kind::$variant => &[$($short,)*],)*
                }
            }

            /// The JSON Schema of the kind's manifests, derived from the
            /// type that reads them (its serde attributes and its fields'
            /// doc comments): what `flotilla explain` shows.
            pub fn schema(self) -> schemars::Schema {
                match self {
                    $(Kind::$variant => schemars::schema_for!($ty),)*
                }
            }

            /// Whether objects of this kind live in a namespace.
            pub fn namespaced(self) -> bool {
                match self {
                    $(Kind::$variant => $namespaced,)*
                }
            }
        }

        /// Any stored object.
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[non_exhaustive]
        pub enum Object {
            $($variant($ty),)*
        }

        $(
            impl From<$ty> for Object {
                fn from(o: $ty) -> Object {
                    Object::$variant(o)
                }
            }

            impl Typed for $ty {
                const KIND: Kind = Kind::$variant;

                fn from_object(o: Object) -> Option<Self> {
                    match o {
                        Object::$variant(x) => Some(x),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }

                fn from_object_ref(o: &Object) -> Option<&Self> {
                    match o {
                        Object::$variant(x) => Some(x),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            }
        )*

        impl Object {
            /// The object's kind.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Object::$variant(_) => Kind::$variant,)*
                }
            }

            /// The object's metadata.
            pub fn meta(&self) -> &ObjectMeta {
                match self {
                    $(Object::$variant(o) => o.metadata(),)*
                }
            }

            /// The object's metadata, mutably.
            pub fn meta_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Object::$variant(o) => o.metadata_mut(),)*
                }
            }

            /// The module the object runs or has its pods run ([`Resource::module`]).
            pub fn module(&self) -> Option<&str> {
                match self {
                    $(Object::$variant(o) => o.module(),)*
                }
            }

            /// The kind's own validation (see [`crate::manifest::validate`] for all of it).
            pub fn validate_kind(&self) -> Vec<FieldError> {
                match self {
                    $(Object::$variant(o) => o.validate(),)*
                }
            }

            /// The object an update of `stored` with `incoming` leaves (see
            /// [`Resource::merge`]); an error says what may not change.
            pub fn merge(stored: &Object, incoming: Object, status_only: bool) -> Result<Object, String> {
                match (stored, incoming) {
                    $((Object::$variant(old), Object::$variant(new)) => {
                        <$ty as Resource>::merge(old, new, status_only).map(Object::$variant)
                    })*
                    #[allow(unreachable_patterns)]
                    (old, new) => Err(format!("cannot replace a {} with a {}", old.kind(), new.kind())),
                }
            }

            /// The object's body (no kind) as JSON.
            fn body_json(&self) -> serde_json::Result<String> {
                match self {
                    $(Object::$variant(o) => serde_json::to_string(o),)*
                }
            }

            /// The object's body as a JSON value.
            fn body_value(&self) -> serde_json::Result<serde_json::Value> {
                match self {
                    $(Object::$variant(o) => serde_json::to_value(o),)*
                }
            }

            /// An object of `kind` from its JSON body.
            fn from_body_json(kind: Kind, json: &str) -> serde_json::Result<Object> {
                match kind {
                    $(Kind::$variant => serde_json::from_str::<$ty>(json).map(Object::$variant),)*
                }
            }

            /// An object of `kind` read from any deserializer (manifests read
            /// YAML through one that tracks field paths).
            pub fn deserialize_body<'de, D: Deserializer<'de>>(kind: Kind, d: D) -> Result<Object, D::Error> {
                match kind {
                    $(Kind::$variant => <$ty>::deserialize(d).map(Object::$variant),)*
                }
            }

            fn serialize_tagged<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Object::$variant(o) => s.serialize_newtype_variant(
                        "Object",
                        Kind::$variant as u32,
                        stringify!($variant),
                        o,
                    ),)*
                }
            }
        }

        /// An object as people's formats (JSON, YAML) tag it: `{"Pod": {...}}`.
        #[derive(Deserialize)]
        enum Tagged {
            $($variant($ty),)*
        }

        impl From<Tagged> for Object {
            fn from(t: Tagged) -> Object {
                match t {
                    $(Tagged::$variant(o) => Object::$variant(o),)*
                }
            }
        }
    };
}

kinds! {
    Pod(Pod), "pods", ["po"], true;
    Node(Node), "nodes", ["no"], false;
    Module(Module), "modules", ["mod"], false;
    PriorityClass(PriorityClass), "priorityclasses", ["pc"], false;
    ReplicaSet(ReplicaSet), "replicasets", ["rs"], true;
    Deployment(Deployment), "deployments", ["deploy"], true;
    DaemonSet(DaemonSet), "daemonsets", ["ds"], true;
    Job(Job), "jobs", ["job"], true;
    CronJob(CronJob), "cronjobs", ["cj"], true;
    Namespace(Namespace), "namespaces", ["ns"], false;
    Event(event::Event), "events", ["ev"], true;
    ConfigMap(config_map::ConfigMap), "configmaps", ["cm"], true;
    Secret(secret::Secret), "secrets", [], true;
    Service(service::Service), "services", ["svc"], true;
    Endpoints(service::Endpoints), "endpoints", ["ep"], true;
    User(user::User), "users", [], false;
}

/// The kinds whose objects run a module or make pods that do
/// ([`Object::module`]): the master keeps a module while one names it.
pub const MODULE_USERS: [Kind; 6] = [
    Kind::Pod,
    Kind::ReplicaSet,
    Kind::Deployment,
    Kind::DaemonSet,
    Kind::Job,
    Kind::CronJob,
];

/// The kind's number and its object, for generic code.
pub trait Typed: Resource {
    const KIND: Kind;
    fn from_object(o: Object) -> Option<Self>;
    fn from_object_ref(o: &Object) -> Option<&Self>;
}

impl Kind {
    /// How every side words a missing object: `pod "web" not found in
    /// namespace default` (`node "pi-1" not found` for cluster-scoped kinds).
    pub fn not_found(self, namespace: &str, name: &str) -> String {
        let where_ = if namespace.is_empty() {
            String::new()
        } else {
            format!(" in namespace {namespace}")
        };
        format!(
            "{} {name:?} not found{where_}",
            self.as_str().to_lowercase()
        )
    }

    /// Parses a kind the way kubectl does: `pod`, `pods`, `po`, `Pod`.
    pub fn parse(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        Kind::ALL.iter().copied().find(|k| {
            k.as_str().eq_ignore_ascii_case(&s)
                || k.plural() == s
                || k.short_names().contains(&s.as_str())
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How postcard carries an object: protocol 2's positional layouts (read
/// only), or the kind and its JSON.
#[derive(Deserialize)]
enum Wire {
    Pod(legacy::Pod),
    Node(legacy::Node),
    Module(legacy::Module),
    Encoded(Kind, String),
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return self.serialize_tagged(s);
        }
        let json = crate::compact(|| self.body_json()).map_err(ser::Error::custom)?;
        let mut v = s.serialize_tuple_variant("Object", ENCODED, "Encoded", 2)?;
        v.serialize_field(&self.kind())?;
        v.serialize_field(&json)?;
        v.end()
    }
}

impl<'de> Deserialize<'de> for Object {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Object, D::Error> {
        if d.is_human_readable() {
            return Tagged::deserialize(d).map(Object::from);
        }
        Ok(match Wire::deserialize(d)? {
            Wire::Pod(p) => Object::Pod(p.into()),
            Wire::Node(n) => Object::Node(n.into()),
            Wire::Module(m) => Object::Module(m.into()),
            Wire::Encoded(kind, json) => Object::from_body_json(kind, &json).map_err(|e| {
                de::Error::custom(format!(
                    "{kind} object: {e} (written by a newer Flotilla? upgrade this one)"
                ))
            })?,
        })
    }
}

impl Object {
    /// Borrows the object inside if it is of type `T`.
    pub fn as_kind<T: Typed>(&self) -> Option<&T> {
        T::from_object_ref(self)
    }

    /// The object inside if it is of type `T`.
    pub fn into_kind<T: Typed>(self) -> Option<T> {
        T::from_object(self)
    }

    /// Borrows the pod inside, if this is one.
    pub fn as_pod(&self) -> Option<&Pod> {
        self.as_kind()
    }

    /// Borrows the node inside, if this is one.
    pub fn as_node(&self) -> Option<&Node> {
        self.as_kind()
    }

    /// The store key: `Kind/namespace/name`.
    pub fn key(&self) -> String {
        object_key(self.kind(), &self.meta().namespace, &self.meta().name)
    }

    /// `kind/name` or `kind/namespace/name` for messages.
    pub fn describe(&self) -> String {
        let m = self.meta();
        if m.namespace.is_empty() {
            format!("{}/{}", self.kind().plural(), m.name)
        } else {
            format!(
                "{}/{} in namespace {}",
                self.kind().plural(),
                m.name,
                m.namespace
            )
        }
    }

    /// The object as a JSON value in manifest shape (`apiVersion`, `kind` first).
    pub fn to_manifest_value(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        out.insert("apiVersion".into(), crate::API_VERSION.into());
        out.insert("kind".into(), self.kind().as_str().into());
        if let Ok(serde_json::Value::Object(m)) = self.body_value() {
            out.extend(m);
        }
        serde_json::Value::Object(out)
    }
}

/// Serializes a field of one kind the way [`Object`] is serialized
/// (`#[serde(with = "flotilla_api::objects::as_object")]`), so that the
/// field, too, is self-describing where it is stored.
pub mod as_object {
    use super::{Object, Typed};
    use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Typed, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        let object: Object = value.clone().into();
        object.serialize(s)
    }

    pub fn deserialize<'de, T: Typed, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let object = Object::deserialize(d)?;
        let kind = object.kind();
        object
            .into_kind()
            .ok_or_else(|| de::Error::custom(format!("expected a {}, found a {kind}", T::KIND)))
    }
}

/// The store key of an object: `Kind/namespace/name` (namespace empty for cluster-scoped kinds).
pub fn object_key(kind: Kind, namespace: &str, name: &str) -> String {
    format!("{}/{}/{}", kind.as_str(), namespace, name)
}

/// The prefix of all keys of a kind (and namespace, if given).
pub fn key_prefix(kind: Kind, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) => format!("{}/{}/", kind.as_str(), ns),
        None => format!("{}/", kind.as_str()),
    }
}

#[cfg(test)]
mod tests;
