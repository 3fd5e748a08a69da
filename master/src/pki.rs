//! The master's PKI on disk: the cluster CA, the serving certificate and the
//! admin identity, created on first start under `<data-dir>/pki/`, and the
//! master's own client certificate for raft messages to other masters.

use flotilla_api::config::ClientConfigFile;
use flotilla_api::identity::{CertifiedKey, ClusterCa, Identity, IdentityError};
use flotilla_api::protocol::ALPN;
use std::path::{Path, PathBuf};

/// Why the PKI could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Tls(#[from] flotilla_api::tls::TlsError),
}

/// The CA and the master's own certificate.
#[derive(Debug)]
pub struct Pki {
    pub cluster: String,
    pub ca: ClusterCa,
    pub server: CertifiedKey,
    pub ca_hash: String,
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// Writes a file holding keys, atomically and readable only by its owner.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    flotilla_api::net::write_private_file(path, contents).map_err(|source| PkiError::Io {
        path: path.into(),
        source,
    })
}

impl Pki {
    /// Loads the PKI from `dir`, creating the CA and certificates on first start.
    /// The serving certificate is reissued when `hosts` holds a name it lacks.
    pub fn load_or_init(dir: &Path, cluster: &str, hosts: &[String]) -> Result<Pki, PkiError> {
        let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let ca = match (read(&ca_cert)?, read(&ca_key)?) {
            (Some(cert_pem), Some(key_pem)) => ClusterCa {
                key: CertifiedKey { cert_pem, key_pem },
            },
            _ => {
                let ca = ClusterCa::generate(cluster)?;
                write_private(&ca_key, &ca.key.key_pem)?;
                write_private(&ca_cert, &ca.key.cert_pem)?;
                tracing::info!(dir = %dir.display(), "created cluster CA");
                ca
            }
        };
        let (srv_cert, srv_key, srv_hosts) = (
            dir.join("master.crt"),
            dir.join("master.key"),
            dir.join("master.hosts"),
        );
        let known = read(&srv_hosts)?.unwrap_or_default();
        let mut wanted: Vec<String> = vec!["127.0.0.1".into(), "::1".into(), "localhost".into()];
        for h in hosts {
            let host = host_of(h);
            if !wanted.contains(&host) {
                wanted.push(host);
            }
        }
        let covered = wanted.iter().all(|h| known.lines().any(|k| k == h));
        let server = match (read(&srv_cert)?, read(&srv_key)?) {
            (Some(cert_pem), Some(key_pem)) if covered => CertifiedKey { cert_pem, key_pem },
            _ => {
                let s = ca.issue_server(&wanted)?;
                write_private(&srv_key, &s.key_pem)?;
                write_private(&srv_cert, &s.cert_pem)?;
                write_private(&srv_hosts, &wanted.join("\n"))?;
                s
            }
        };
        let ca_hash = ca.hash()?;
        Ok(Pki {
            cluster: cluster.to_string(),
            ca,
            server,
            ca_hash,
        })
    }

    /// The master's rustls server configuration.
    pub fn server_tls(&self) -> Result<rustls::ServerConfig, PkiError> {
        Ok(flotilla_api::tls::server_config(
            &self.server,
            &self.ca.key.cert_pem,
            ALPN,
        )?)
    }

    /// The client certificate this master presents to other masters as
    /// `Identity::Master(node_id)`, kept in `dir` (the pki directory) and
    /// issued on first use; per node id, so a renumbered master gets its own.
    pub fn master_client(&self, dir: &Path, node_id: u64) -> Result<CertifiedKey, PkiError> {
        let (cert, key) = (
            dir.join(format!("master-{node_id}-client.crt")),
            dir.join(format!("master-{node_id}-client.key")),
        );
        if let (Some(cert_pem), Some(key_pem)) = (read(&cert)?, read(&key)?) {
            return Ok(CertifiedKey { cert_pem, key_pem });
        }
        let issued = self.ca.issue_client(&Identity::Master(node_id))?;
        write_private(&key, &issued.key_pem)?;
        write_private(&cert, &issued.cert_pem)?;
        Ok(issued)
    }

    /// The client TLS configuration for raft messages to other masters:
    /// trusts the cluster CA and presents `client`.
    pub fn master_client_tls(
        &self,
        client: &CertifiedKey,
    ) -> Result<rustls::ClientConfig, PkiError> {
        Ok(flotilla_api::tls::client_config(
            &self.ca.key.cert_pem,
            Some(client),
            ALPN,
        )?)
    }

    /// Writes an admin client config to `path` unless one for this CA exists there.
    pub fn write_admin_config(&self, path: &Path, masters: &[String]) -> Result<(), PkiError> {
        if let Some(text) = read(path)? {
            if ClientConfigFile::parse(&text).is_ok_and(|c| c.ca_pem == self.ca.key.cert_pem) {
                return Ok(());
            }
            tracing::warn!(path = %path.display(), "replacing a client config that belongs to another cluster");
        }
        let admin = self.ca.issue_client(&Identity::Admin)?;
        let cfg = ClientConfigFile {
            cluster: self.cluster.clone(),
            masters: masters.to_vec(),
            ca_pem: self.ca.key.cert_pem.clone(),
            cert_pem: admin.cert_pem,
            key_pem: admin.key_pem,
        };
        write_private(path, &cfg.render())?;
        tracing::info!(path = %path.display(), "wrote admin client config");
        Ok(())
    }
}

fn host_of(addr: &str) -> String {
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return sa.ip().to_string();
    }
    match addr.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => {
            h.trim_matches(|c| c == '[' || c == ']').to_string()
        }
        _ => addr.to_string(),
    }
}
