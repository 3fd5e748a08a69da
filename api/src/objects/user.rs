//! User: a person (or a script) that reaches the cluster with a client
//! config of their own, made by `flotilla user create`. Their certificate
//! names only the user and the uid of this object; what they may do is
//! read from here on every request, so a changed role applies at once, and
//! a revoked or deleted user is refused by every master whatever
//! certificates they still hold.

use super::Resource;
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A user of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct User {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: UserSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: UserStatus,
}

/// What the user may do.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct UserSpec {
    /// `admin`, `operator` or `viewer` (see [`Role`]).
    pub role: Role,
    /// The one namespace the user may work in; empty: every namespace.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub namespace: String,
    /// How long each certificate of the user lives, in seconds; 0: the
    /// master's `--cert-lifetime`. Renewals keep it.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub expiration_seconds: u64,
}

/// What the masters recorded of the user's certificates.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct UserStatus {
    /// When the user was revoked (`flotilla user revoke`): from then on
    /// every certificate of the user is refused. A revoked user stays so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Time>,
    /// When the newest certificate of the user was issued (created or renewed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issued: Option<Time>,
    /// When that certificate expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
}

/// What a user may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Anything, as the cluster's admin config: tokens, users, nodes,
    /// backups, masters (within its namespace only, if it has one).
    Admin,
    /// Runs workloads: reads everything (a Secret's values too), writes
    /// the objects of namespaces (pods, workloads, services, config,
    /// secrets) and uploads modules; nodes, namespaces, priority classes,
    /// users, tokens and the cluster are an admin's.
    Operator,
    /// Reads everything but a Secret's values and the join tokens.
    #[default]
    Viewer,
}

impl Role {
    /// Every role, as written in manifests and on the command line.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Viewer];

    /// The role's name: `admin`, `operator`, `viewer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a role's name.
    pub fn parse(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}; the roles are admin, operator and viewer"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The shortest and longest certificate lifetimes a user may be given.
pub const MIN_EXPIRATION_SECONDS: u64 = 60;
pub const MAX_EXPIRATION_SECONDS: u64 = 10 * 365 * 86_400;

impl User {
    /// Whether the user was revoked: every certificate of it is refused.
    pub fn is_revoked(&self) -> bool {
        self.status.revoked.is_some()
    }
}

impl Resource for User {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if !crate::manifest::is_dns_label(&self.metadata.name) {
            errors.push(fe(
                "metadata.name",
                format!(
                    "{:?}: a user name is a DNS label (lowercase letters, digits, '-', at most 63)",
                    self.metadata.name
                ),
            ));
        }
        let ns = &self.spec.namespace;
        if !ns.is_empty() && !crate::manifest::is_dns_label(ns) {
            errors.push(fe(
                "spec.namespace",
                format!("{ns:?} is not a namespace name (a DNS label); leave it out for every namespace"),
            ));
        }
        let secs = self.spec.expiration_seconds;
        if secs != 0 && !(MIN_EXPIRATION_SECONDS..=MAX_EXPIRATION_SECONDS).contains(&secs) {
            errors.push(fe(
                "spec.expirationSeconds",
                format!(
                    "{secs}: between {MIN_EXPIRATION_SECONDS} (a minute) and {MAX_EXPIRATION_SECONDS} (ten years), or 0 for the master's --cert-lifetime"
                ),
            ));
        }
        errors
    }

    /// The role, namespace and lifetime may change (they apply to the
    /// next request); the status is the masters', and a revocation is
    /// never taken back.
    fn merge(stored: &User, incoming: User, status_only: bool) -> Result<User, String> {
        let mut out = stored.clone();
        if status_only {
            if stored.is_revoked() && incoming.status.revoked != stored.status.revoked {
                return Err(format!(
                    "user {} was revoked at {}, and a revocation is never taken back; delete the user \
                     and create it again (`flotilla user create`) for a new config",
                    stored.metadata.name,
                    stored.status.revoked.unwrap_or_default()
                ));
            }
            out.status = incoming.status;
        } else {
            let changed = stored.spec != incoming.spec;
            out.metadata = super::merge_meta(&stored.metadata, incoming.metadata, changed);
            out.spec = incoming.spec;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> User {
        User {
            metadata: ObjectMeta::named("", name),
            ..User::default()
        }
    }

    #[test]
    fn names_namespaces_and_lifetimes_are_checked() {
        assert!(user("alice").validate().is_empty());
        let mut bad = user("Alice");
        bad.spec.namespace = "Team A".into();
        bad.spec.expiration_seconds = 5;
        let paths: Vec<String> = bad.validate().into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            ["metadata.name", "spec.namespace", "spec.expirationSeconds"]
        );
        assert_eq!(Role::parse("operator"), Ok(Role::Operator));
        assert!(Role::parse("root")
            .unwrap_err()
            .contains("admin, operator and viewer"));
    }

    #[test]
    fn a_revocation_is_never_taken_back() {
        let mut revoked = user("bob");
        revoked.status.revoked = Some(Time(1_000));
        let mut cleared = revoked.clone();
        cleared.status.revoked = None;
        let err = User::merge(&revoked, cleared, true).unwrap_err();
        assert!(err.contains("never taken back"), "{err}");
        // A spec update keeps the status, revocation included.
        let mut promoted = revoked.clone();
        promoted.spec.role = Role::Admin;
        promoted.status = UserStatus::default();
        let out = User::merge(&revoked, promoted, false).expect("spec update");
        assert_eq!(out.spec.role, Role::Admin);
        assert!(out.is_revoked());
        assert_eq!(out.metadata.generation, 1);
    }
}
