//! ConfigMap: named pieces of configuration (text in `data`, bytes in
//! `binaryData`) that pods mount as files (a `configMap` volume, updated in
//! place when the ConfigMap changes).

use super::{merge_meta, Resource};
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Configuration as keys and values.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ConfigMap {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    /// UTF-8 values.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub data: BTreeMap<String, String>,
    /// Other bytes, base64-encoded.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub binary_data: BTreeMap<String, String>,
    /// Once true, `data` and `binaryData` may not change.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub immutable: bool,
}

/// Whether `k` may name a key: letters, digits, `-`, `_`, `.`, at most 253,
/// not `.` or `..` (each key becomes a file name).
pub fn is_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && !k.starts_with("..")
        && k.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

impl ConfigMap {
    /// Every key with its bytes (`data` as UTF-8, `binaryData` decoded).
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out: BTreeMap<String, Vec<u8>> = self
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        for (k, v) in &self.binary_data {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(v) {
                out.insert(k.clone(), bytes);
            }
        }
        out
    }
}

impl Resource for ConfigMap {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for k in self.data.keys() {
            if !is_key(k) {
                errors.push(fe(
                    format!("data.{k}"),
                    "not a valid key (letters, digits, '-', '_', '.'; it becomes a file name)",
                ));
            }
        }
        for (k, v) in &self.binary_data {
            if !is_key(k) {
                errors.push(fe(
                    format!("binaryData.{k}"),
                    "not a valid key (letters, digits, '-', '_', '.'; it becomes a file name)",
                ));
            }
            if self.data.contains_key(k) {
                errors.push(fe(
                    format!("binaryData.{k}"),
                    "also in data: a key is in one or the other",
                ));
            }
            if base64::engine::general_purpose::STANDARD.decode(v).is_err() {
                errors.push(fe(
                    format!("binaryData.{k}"),
                    "not base64 (encode the bytes, e.g. with `base64 -w0 FILE`)",
                ));
            }
        }
        errors
    }

    /// A ConfigMap has no spec or status: an update replaces its data
    /// (unless it is immutable) and the user-owned metadata.
    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        if status_only {
            return Err("a ConfigMap has no status".into());
        }
        let changed = stored.data != incoming.data || stored.binary_data != incoming.binary_data;
        if stored.immutable && (changed || !incoming.immutable) {
            return Err(
                "the ConfigMap is immutable: its data may not change; delete it and create it again"
                    .into(),
            );
        }
        let mut out = incoming;
        let meta = std::mem::take(&mut out.metadata);
        out.metadata = merge_meta(&stored.metadata, meta, changed);
        Ok(out)
    }
}
