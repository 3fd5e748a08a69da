//! Namespace: a named group of namespaced objects. Objects can be made
//! only in a namespace that exists and is not being deleted (`default`
//! always exists); deleting a namespace deletes everything in it, and the
//! namespace goes last.

use super::{merge_parts, Resource};
use crate::manifest::FieldError;
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Namespace {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: NamespaceSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: NamespaceStatus,
}

/// Nothing to say yet: a namespace is its name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NamespaceSpec {}

/// Active, or Terminating while its contents are deleted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct NamespaceStatus {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub phase: NamespacePhase,
}

/// The phase of a namespace.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum NamespacePhase {
    #[default]
    Active,
    Terminating,
}

impl fmt::Display for NamespacePhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NamespacePhase::Active => "Active",
            NamespacePhase::Terminating => "Terminating",
        })
    }
}

impl Namespace {
    /// A namespace of this name.
    pub fn named(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta::named("", name),
            ..Namespace::default()
        }
    }

    /// Its phase: Terminating once deleted.
    pub fn phase(&self) -> NamespacePhase {
        if self.metadata.is_deleting() {
            NamespacePhase::Terminating
        } else {
            self.status.phase
        }
    }
}

impl Resource for Namespace {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !crate::manifest::is_dns_label(&self.metadata.name) {
            errors.push(crate::manifest::fe(
                "metadata.name",
                format!(
                    "{:?}: a namespace name is a DNS label (lowercase letters, digits, '-', \
                     at most 63)",
                    self.metadata.name
                ),
            ));
        }
        errors
    }

    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        Ok(merge_parts(stored, incoming, status_only, |n| {
            (&mut n.metadata, &mut n.spec, &mut n.status)
        }))
    }
}
