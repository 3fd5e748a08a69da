//! Secret: small pieces of sensitive data (passwords, tokens, keys) that
//! pods read as files (a `secret` volume) or variables (`secretKeyRef`,
//! `envFrom.secretRef`).
//!
//! A Secret takes its values in `data` (base64) or `stringData` (text,
//! folded into `data` by the master). The master never stores them as
//! given: it seals `data` with the cluster's key into `sealed` before the
//! object enters raft, so the raft log, the store, its snapshots and
//! backups hold ciphertext only. Reads answer the keys with their values
//! hidden ([`Secret::redacted`]); the values leave a master only for an
//! admin who asks (`get --show-secrets`) and for a node whose pods use the
//! Secret.

use super::config_map::is_key;
use super::{merge_meta, Resource};
use crate::manifest::{fe, FieldError};
use crate::meta::ObjectMeta;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most bytes a Secret's values may hold together (Kubernetes' limit).
pub const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// The type given when a manifest leaves `type` out.
pub const OPAQUE: &str = "Opaque";

/// What a hidden value reads as: `<hidden: N bytes>`.
pub const HIDDEN_PREFIX: &str = "<hidden";

/// Sensitive data as keys and values.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Secret {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub metadata: ObjectMeta,
    /// What the data is for (`Opaque` when left out); not interpreted.
    #[serde(rename = "type", skip_serializing_if = "crate::is_default")]
    pub type_: String,
    /// The values, base64-encoded.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub data: BTreeMap<String, String>,
    /// Values as text, for writing only: the master folds them into
    /// `data` (a key in both takes this value).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub string_data: BTreeMap<String, String>,
    /// Once true, the data may not change.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub immutable: bool,
    /// `data` sealed with the cluster's key, as the master keeps it;
    /// written by the master only.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub sealed: String,
}

impl Secret {
    /// Folds `stringData` into `data` and sets the default type.
    pub fn normalize(&mut self) {
        for (k, v) in std::mem::take(&mut self.string_data) {
            self.data.insert(
                k,
                base64::engine::general_purpose::STANDARD.encode(v.as_bytes()),
            );
        }
        if self.type_.is_empty() {
            self.type_ = OPAQUE.to_string();
        }
    }

    /// What is wrong with a TLS Secret's certificate and key, if anything.
    fn tls_errors(&self) -> Vec<FieldError> {
        use super::service::{TLS_CERT_KEY, TLS_KEY_KEY};
        // Hidden values do not decode, so they are not checked here.
        let files = self.files();
        let value = |k: &str| {
            files
                .get(k)
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        let present = |k: &str| self.string_data.contains_key(k) || self.data.contains_key(k);
        let mut errors = Vec::new();
        for k in [TLS_CERT_KEY, TLS_KEY_KEY] {
            if !present(k) {
                errors.push(fe(
                    format!("data.{k}"),
                    format!(
                        "required in a Secret of type {}: the PEM certificate chain (tls.crt) \
                         and its key (tls.key)",
                        super::service::TLS_SECRET_TYPE
                    ),
                ));
            }
        }
        if let (Some(cert), Some(key)) = (value(TLS_CERT_KEY), value(TLS_KEY_KEY)) {
            if let Err(e) = crate::tls::serving_key(&cert, &key) {
                errors.push(fe(
                    format!("data.{TLS_CERT_KEY}"),
                    format!("not a usable certificate and key: {e}; give PEM files whose key is the certificate's"),
                ));
            }
        }
        errors
    }

    /// Every key with its bytes (`data` decoded).
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out: BTreeMap<String, Vec<u8>> = self
            .data
            .iter()
            .filter_map(|(k, v)| {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .ok()
                    .map(|b| (k.clone(), b))
            })
            .collect();
        for (k, v) in &self.string_data {
            out.insert(k.clone(), v.as_bytes().to_vec());
        }
        out
    }

    /// The Secret as readers without its values see it: each value
    /// replaced by `<hidden: N bytes>`, the sealed form left out.
    pub fn redacted(&self) -> Secret {
        let sizes = self.files();
        Secret {
            data: sizes
                .iter()
                .map(|(k, v)| (k.clone(), format!("{HIDDEN_PREFIX}: {} bytes>", v.len())))
                .collect(),
            string_data: BTreeMap::new(),
            sealed: String::new(),
            ..self.clone()
        }
    }
}

impl Resource for Secret {
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }

    fn validate(&self) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let key_error = "not a valid key (letters, digits, '-', '_', '.'; it becomes a file name)";
        let mut total = 0usize;
        for (k, v) in &self.data {
            if !is_key(k) {
                errors.push(fe(format!("data.{k}"), key_error));
            }
            if v.starts_with(HIDDEN_PREFIX) {
                errors.push(fe(
                    format!("data.{k}"),
                    "a value hidden by `get`: give the base64 value (`get secret NAME -o yaml \
                     --show-secrets` prints them) or leave the key out",
                ));
                continue;
            }
            match base64::engine::general_purpose::STANDARD.decode(v) {
                Ok(bytes) => total += bytes.len(),
                Err(_) => errors.push(fe(
                    format!("data.{k}"),
                    "not base64 (encode the bytes, e.g. with `base64 -w0 FILE`, or give the \
                     text in stringData)",
                )),
            }
        }
        for (k, v) in &self.string_data {
            if !is_key(k) {
                errors.push(fe(format!("stringData.{k}"), key_error));
            }
            total += v.len();
        }
        if self.type_ == super::service::TLS_SECRET_TYPE {
            errors.extend(self.tls_errors());
        }
        if total > MAX_SECRET_BYTES {
            errors.push(fe(
                "data",
                format!("{total} bytes of values; a Secret holds at most {MAX_SECRET_BYTES}"),
            ));
        }
        errors
    }

    /// A Secret has no spec or status: an update replaces its data (unless
    /// it is immutable) and the user-owned metadata. Both sides are in the
    /// clear here: the master opens the stored one first.
    fn merge(stored: &Self, incoming: Self, status_only: bool) -> Result<Self, String> {
        if status_only {
            return Err("a Secret has no status".into());
        }
        let changed = stored.data != incoming.data
            || stored.sealed != incoming.sealed
            || stored.type_ != incoming.type_;
        if stored.immutable && (changed || !incoming.immutable) {
            return Err(
                "the Secret is immutable: its data may not change; delete it and create it again"
                    .into(),
            );
        }
        let mut out = incoming;
        let meta = std::mem::take(&mut out.metadata);
        out.metadata = merge_meta(&stored.metadata, meta, changed);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_folds_into_data_and_redaction_hides_every_value() {
        let mut s = Secret {
            data: [("a".to_string(), "aGk=".to_string())].into(),
            string_data: [("b".to_string(), "pw".to_string())].into(),
            ..Default::default()
        };
        s.normalize();
        assert_eq!(s.type_, OPAQUE);
        assert!(s.string_data.is_empty());
        assert_eq!(s.files()["b"], b"pw");
        let r = s.redacted();
        assert_eq!(r.data["a"], "<hidden: 2 bytes>");
        assert_eq!(r.data["b"], "<hidden: 2 bytes>");
        // Applying what `get` printed says what to do instead.
        let errors = r.validate();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].to_string().contains("--show-secrets"));
    }

    #[test]
    fn bad_keys_values_and_sizes_are_refused() {
        let s = Secret {
            data: [("bad/key".to_string(), "***".to_string())].into(),
            string_data: [("big".to_string(), "x".repeat(MAX_SECRET_BYTES + 1))].into(),
            ..Default::default()
        };
        let text: Vec<String> = s.validate().iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text.iter().any(|t| t.contains("not base64")));
        assert!(text.iter().any(|t| t.contains("at most")));
    }
}
