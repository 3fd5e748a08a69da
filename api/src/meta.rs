//! The envelope every object carries, as in Kubernetes' `ObjectMeta`.

use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Namespace used when a manifest names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Name, identity, labels and versioning of an object.
///
/// `uid`, `resourceVersion`, `generation` and `creationTimestamp` are set by
/// the master; values in a manifest are ignored on create. API clients that
/// send `resourceVersion` on update get compare-and-swap (`flotilla apply`
/// sends the version it just read).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ObjectMeta {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    /// Empty for cluster-scoped kinds (Node, Module).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub namespace: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub uid: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub annotations: BTreeMap<String, String>,
    /// The store revision of this object's last write; 0 before it is stored.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub resource_version: u64,
    /// Bumped on every change of the spec.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub generation: u64,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub creation_timestamp: Option<Time>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub owner_references: Vec<OwnerReference>,
    /// Set by the master when the object was deleted while it still had
    /// finalizers: it stays, marked, until they are all removed.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub deletion_timestamp: Option<Time>,
    /// What must happen before the object may go (`foregroundDeletion`:
    /// its dependents go first). Each is removed by whoever did it; a
    /// deleted object goes when none is left.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub finalizers: Vec<String>,
}

/// The finalizer of an owner deleted in the foreground: the garbage
/// collector removes it once the dependents that block it are gone.
pub const FOREGROUND_DELETION: &str = "foregroundDeletion";
/// The finalizer of a namespace being deleted: removed once it is empty.
pub const NAMESPACE_FINALIZER: &str = "flotilla.dev/namespace";

/// Points at the object that owns this one (set by controllers).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OwnerReference {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub kind: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub uid: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub controller: bool,
    /// An owner deleted in the foreground waits until this dependent is gone.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub block_owner_deletion: bool,
}

impl ObjectMeta {
    /// Whether the object was deleted and waits for its finalizers.
    pub fn is_deleting(&self) -> bool {
        self.deletion_timestamp.is_some()
    }

    /// Metadata with just a name and namespace.
    pub fn named(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: name.to_string(),
            namespace: namespace.to_string(),
            ..ObjectMeta::default()
        }
    }
}
