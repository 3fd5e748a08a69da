//! Module: an uploaded Wasm binary, addressed by its digest, and what the
//! master read in it when it was uploaded.

use super::Resource;
use crate::manifest::FieldError;
use crate::meta::ObjectMeta;
use serde::{Deserialize, Serialize};

/// An uploaded Wasm binary, addressed by its digest; the bytes are stored beside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// Native code the masters compiled from the binary, one record per
    /// engine fingerprint of the cluster's nodes: every master serves those
    /// bytes and no others for that fingerprint (it compiles them again
    /// if its disk lacks them, and serves them only if they hash the same).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub code: Vec<ModuleCode>,
}

/// Most compiled-code records a module keeps: one per engine profile
/// among the nodes, and a cluster has few (an architecture, a CPU
/// setting, a memory layout each).
pub const MAX_MODULE_CODE: usize = 32;

/// Code a master compiled from a module for one engine.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ModuleCode {
    /// The fingerprint of the engine the code is for (a node's
    /// `status.nodeInfo.engine.fingerprint`).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub fingerprint: String,
    /// The target it was compiled for, for people (`aarch64-unknown-linux-gnu`).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub target: String,
    /// `sha256:<hex>` of the serialized code.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub sha256: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub size: u64,
}

impl ModuleStatus {
    /// The record of code for `fingerprint`, if any.
    pub fn code_for(&self, fingerprint: &str) -> Option<&ModuleCode> {
        self.code.iter().find(|c| c.fingerprint == fingerprint)
    }
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
    /// and annotations change, and its status gains records of compiled
    /// code (a record, once written, pins those bytes for good).
    fn merge(stored: &Module, incoming: Module, status_only: bool) -> Result<Module, String> {
        if status_only {
            return merge_code(stored, incoming.status);
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

/// `stored` with the code records of `incoming` added: the rest of the
/// status is what the bytes are and cannot change, and a record already
/// written cannot change or go.
fn merge_code(stored: &Module, incoming: ModuleStatus) -> Result<Module, String> {
    let ModuleStatus {
        format,
        imports,
        workload,
        code,
    } = incoming;
    let st = &stored.status;
    if (format, imports, workload) != (st.format.clone(), st.imports.clone(), st.workload.clone()) {
        return Err(
            "a module's format, imports and workload are read from its bytes and cannot change"
                .into(),
        );
    }
    for old in &st.code {
        if !code.contains(old) {
            return Err(format!(
                "the record of code for engine {} cannot change or go",
                old.fingerprint
            ));
        }
    }
    if code.len() > MAX_MODULE_CODE {
        return Err(format!(
            "{} records of compiled code; a module keeps at most {MAX_MODULE_CODE}",
            code.len()
        ));
    }
    for (i, c) in code.iter().enumerate() {
        let hex_ok = !c.fingerprint.is_empty()
            && c.fingerprint.len() <= 64
            && c.fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex_ok {
            return Err(format!(
                "status.code[{i}].fingerprint {:?} is not a hex fingerprint",
                c.fingerprint
            ));
        }
        if !is_digest(&c.sha256) {
            return Err(format!(
                "status.code[{i}].sha256 {:?} is not a sha256:<hex> digest",
                c.sha256
            ));
        }
        if c.target.len() > 128 {
            return Err(format!("status.code[{i}].target is longer than 128 bytes"));
        }
        if code[..i].iter().any(|o| o.fingerprint == c.fingerprint) {
            return Err(format!("two records of code for engine {}", c.fingerprint));
        }
    }
    let mut out = stored.clone();
    out.status.code = code;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(fingerprint: &str, sha: char) -> ModuleCode {
        ModuleCode {
            fingerprint: fingerprint.into(),
            target: "aarch64-unknown-linux-gnu".into(),
            sha256: format!("sha256:{}", sha.to_string().repeat(64)),
            size: 10,
        }
    }

    fn with(status: ModuleStatus) -> Module {
        Module {
            status,
            ..Module::default()
        }
    }

    #[test]
    fn a_status_update_only_adds_records_of_code() {
        let stored = with(ModuleStatus {
            format: "component".into(),
            code: vec![code("aa", 'a')],
            ..ModuleStatus::default()
        });
        let mut added = stored.status.clone();
        added.code.push(code("bb", 'b'));
        let merged = Module::merge(&stored, with(added.clone()), true).expect("adds");
        assert_eq!(merged.status.code.len(), 2);

        let mut changed = added.clone();
        changed.code[0].sha256 = code("aa", 'c').sha256;
        let e = Module::merge(&stored, with(changed), true).unwrap_err();
        assert!(e.contains("cannot change or go"), "{e}");
        let mut dropped = added.clone();
        dropped.code.remove(0);
        assert!(Module::merge(&stored, with(dropped), true).is_err());
        let mut reformatted = added.clone();
        reformatted.format = "module".into();
        assert!(Module::merge(&stored, with(reformatted), true).is_err());
        let mut twice = added.clone();
        twice.code.push(code("bb", 'b'));
        assert!(Module::merge(&stored, with(twice), true).is_err());
        let mut bad = added.clone();
        bad.code[1].fingerprint = "not hex!".into();
        assert!(Module::merge(&stored, with(bad), true).is_err());
        let mut bad = added;
        bad.code[1].sha256 = "md5:x".into();
        assert!(Module::merge(&stored, with(bad), true).is_err());
        let many = ModuleStatus {
            format: "component".into(),
            code: (0..=MAX_MODULE_CODE)
                .map(|i| code(&format!("{i:x}"), 'a'))
                .collect(),
            ..ModuleStatus::default()
        };
        let e = Module::merge(
            &with(ModuleStatus {
                format: "component".into(),
                ..ModuleStatus::default()
            }),
            with(many),
            true,
        )
        .unwrap_err();
        assert!(e.contains("at most"), "{e}");
    }
}
