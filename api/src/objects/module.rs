//! Module: an uploaded Wasm binary, addressed by its digest, and what the
//! master read in it when it was uploaded.

use super::Resource;
use crate::manifest::FieldError;
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

/// An uploaded Wasm binary, addressed by its digest; the bytes are stored beside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Module {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub spec: ModuleSpec,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub status: ModuleStatus,
}

/// Digest, size and origin of a module.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ModuleSpec {
    /// `sha256:<64 hex>`.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub digest: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub size: u64,
    /// The file name it was uploaded from, for people.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub source: String,
}

/// What the master read in the binary when it was uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ModuleStatus {
    /// `component` or `module` (a core module); empty for modules uploaded
    /// before the master recorded it.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub format: String,
    /// The interfaces the binary imports: a component's WIT imports
    /// (`wasi:sockets/tcp@0.2.3`), a core module's import module names
    /// (`wasi_snapshot_preview1`).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub imports: Vec<String>,
    /// What the program does once started: `command` (runs to its end) or
    /// `http` (a component exporting `wasi:http/incoming-handler`, which
    /// serves requests until stopped); empty for modules uploaded before
    /// the master recorded it.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub workload: String,
}

/// The object name under which a module with this digest is stored
/// (`sha256-<hex>`: names cannot carry a colon).
pub fn module_name(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// `sha256:<hex>` of some bytes.
pub fn digest_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Whether a string is a well-formed `sha256:<64 lowercase hex>` digest.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
}

impl Resource for Module {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        Vec::new()
    }

    /// A module's spec and status are what its bytes are: only its labels
    /// and annotations change.
    fn merge(stored: &Module, incoming: Module, status_only: bool) -> Result<Module, String> {
        if status_only {
            return Err("modules have no status to update".into());
        }
        if stored.spec != incoming.spec {
            return Err(
                "a module's spec (digest, size, source) cannot change; upload a new module instead"
                    .into(),
            );
        }
        let mut out = stored.clone();
        out.metadata = super::merge_meta(&stored.metadata, incoming.metadata, false);
        Ok(out)
    }
}
