//! The client configuration file (`~/.flotilla/config`, like a kubeconfig):
//! where the masters are, the CA to trust, and the caller's certificate.
//! Nodes keep their own credentials in the same format.

use crate::identity::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Environment variable that points at another config file.
pub const CONFIG_ENV: &str = "FLOTILLA_CONFIG";

/// Contents of a config file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ClientConfigFile {
    pub cluster: String,
    /// Every master's `host:port`; clients try them in order.
    pub masters: Vec<String>,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The namespace commands use without `-n` (a user limited to one
    /// namespace gets a config that names it); empty: `default`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl ClientConfigFile {
    /// The caller's certificate and key, if the file has them.
    pub fn client_key(&self) -> Option<CertifiedKey> {
        (!self.cert_pem.is_empty() && !self.key_pem.is_empty()).then(|| CertifiedKey {
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        })
    }

    /// Parses the YAML text of a config file.
    pub fn parse(text: &str) -> Result<ClientConfigFile, String> {
        serde_yaml::from_str(text).map_err(|e| e.to_string())
    }

    /// Renders the file as YAML.
    pub fn render(&self) -> String {
        serde_yaml::to_string(self).unwrap_or_default()
    }
}

/// Where the config lives by default: `$FLOTILLA_CONFIG`, else `$HOME/.flotilla/config`.
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".flotilla").join("config")
}
