//! The master's PKI on disk: the cluster CA, the serving certificate and the
//! admin identity, created on first start under `<data-dir>/pki/`, and the
//! master's own client certificate for raft messages to other masters.
//!
//! Certificates live [`Pki::cert_lifetime`] from their issue (a year by
//! default). A master renews its own two when two thirds of their lifetime
//! have passed ([`Validity::renewal_due`]), at start-up and while it runs;
//! nodes and users renew theirs over their authenticated connection
//! ([`Pki::sign_for`]). The CA is not renewed: it lives ten years, and a new
//! CA is a new cluster.

use flotilla_api::config::ClientConfigFile;
use flotilla_api::identity::{CertifiedKey, ClusterCa, Identity, IdentityError, Validity};
use flotilla_api::protocol::{CertificateStatus, MASTER_ALPNS, RAFT_ALPN};
use flotilla_api::time::Time;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

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
    #[error(
        "{path} holds the client config of another cluster; it was left as it is. \
         Pass --config to write this cluster's admin config elsewhere, or \
         --replace-config to replace it"
    )]
    ForeignConfig { path: PathBuf },
}

/// The CA and the master's own certificates.
#[derive(Debug)]
pub struct Pki {
    pub cluster: String,
    pub ca: ClusterCa,
    pub ca_hash: String,
    /// How long the certificates this master issues live.
    pub cert_lifetime: Duration,
    /// Where the certificates are kept (None: in memory only, for tests).
    dir: Option<PathBuf>,
    /// The names the serving certificate covers.
    hosts: Vec<String>,
    /// The serving certificate in use (replaced when renewed).
    server: Mutex<CertifiedKey>,
    /// This master's raft client certificate in use, by node id.
    client: Mutex<Option<(u64, CertifiedKey)>>,
    /// The key Secrets are sealed with, derived from the CA's on first use.
    secret_key: std::sync::OnceLock<crate::secrets::SecretKey>,
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

/// A certificate that is unreadable counts as due: it is replaced.
fn due(cert: &CertifiedKey, now: Time) -> bool {
    Validity::of_pem(&cert.cert_pem).map_or(true, |v| v.renewal_due(now))
}

/// Which of a master's certificates were just renewed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Renewed {
    pub server: bool,
    pub client: bool,
}

impl Pki {
    /// Loads the PKI from `dir`, creating the CA and certificates on first
    /// start. The serving certificate is reissued when `hosts` holds a name
    /// it lacks or when its renewal is due.
    pub fn load_or_init(
        dir: &Path,
        cluster: &str,
        hosts: &[String],
        cert_lifetime: Duration,
    ) -> Result<Pki, PkiError> {
        let now = Time::now();
        let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let ca = match (read(&ca_cert)?, read(&ca_key)?) {
            (Some(cert_pem), Some(key_pem)) => ClusterCa {
                key: CertifiedKey { cert_pem, key_pem },
            },
            _ => {
                let ca = ClusterCa::generate_at(cluster, now)?;
                write_private(&ca_key, &ca.key.key_pem)?;
                write_private(&ca_cert, &ca.key.cert_pem)?;
                tracing::info!(dir = %dir.display(), "created cluster CA");
                ca
            }
        };
        let srv_hosts = dir.join("master.hosts");
        let known = read(&srv_hosts)?.unwrap_or_default();
        let mut wanted: Vec<String> = vec!["127.0.0.1".into(), "::1".into(), "localhost".into()];
        for h in hosts {
            let host = host_of(h);
            if !wanted.contains(&host) {
                wanted.push(host);
            }
        }
        let covered = wanted.iter().all(|h| known.lines().any(|k| k == h));
        let ca_hash = ca.hash()?;
        let stored = match (
            read(&dir.join("master.crt"))?,
            read(&dir.join("master.key"))?,
        ) {
            (Some(cert_pem), Some(key_pem)) if covered => Some(CertifiedKey { cert_pem, key_pem }),
            _ => None,
        };
        let pki = Pki {
            cluster: cluster.to_string(),
            ca,
            ca_hash,
            cert_lifetime,
            dir: Some(dir.to_path_buf()),
            hosts: wanted,
            server: Mutex::new(stored.clone().unwrap_or(CertifiedKey {
                cert_pem: String::new(),
                key_pem: String::new(),
            })),
            client: Mutex::new(None),
            secret_key: std::sync::OnceLock::new(),
        };
        match stored {
            Some(s) if !due(&s, now) => {}
            _ => pki.renew_server()?,
        }
        pki.warn_if_expiring(now);
        Ok(pki)
    }

    /// A PKI kept in memory only (tests): the CA and a serving certificate.
    pub fn in_memory(cluster: &str, ca: ClusterCa, server: CertifiedKey) -> Result<Pki, PkiError> {
        Ok(Pki {
            cluster: cluster.to_string(),
            ca_hash: ca.hash()?,
            ca,
            cert_lifetime: flotilla_api::identity::DEFAULT_CERT_LIFETIME,
            dir: None,
            hosts: Vec::new(),
            server: Mutex::new(server),
            client: Mutex::new(None),
            secret_key: std::sync::OnceLock::new(),
        })
    }

    /// The cluster's key for Secrets at rest (see [`crate::secrets`]).
    pub fn secret_key(&self) -> &crate::secrets::SecretKey {
        self.secret_key
            .get_or_init(|| crate::secrets::SecretKey::derive(&self.ca.key.key_pem))
    }

    fn validity(&self, now: Time) -> Validity {
        Validity::new(now, self.cert_lifetime)
    }

    /// The serving certificate in use.
    pub fn server(&self) -> CertifiedKey {
        self.server
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn renew_server(&self) -> Result<(), PkiError> {
        let s = self
            .ca
            .issue_server(&self.hosts, self.validity(Time::now()))?;
        if let Some(dir) = &self.dir {
            write_private(&dir.join("master.key"), &s.key_pem)?;
            write_private(&dir.join("master.crt"), &s.cert_pem)?;
            write_private(&dir.join("master.hosts"), &self.hosts.join("\n"))?;
        }
        tracing::info!(
            not_after = %Validity::of_pem(&s.cert_pem)?.not_after,
            "issued this master's serving certificate"
        );
        *self.server.lock().unwrap_or_else(|p| p.into_inner()) = s;
        Ok(())
    }

    /// The master's rustls server configuration, with the serving certificate in use.
    pub fn server_tls(&self) -> Result<rustls::ServerConfig, PkiError> {
        Ok(flotilla_api::tls::server_config(
            &self.server(),
            &self.ca.key.cert_pem,
            &MASTER_ALPNS,
        )?)
    }

    /// The client certificate this master presents to other masters as
    /// `Identity::Master(node_id)`, kept in the pki directory and issued on
    /// first use (or when due for renewal); per node id, so a renumbered
    /// master gets its own.
    pub fn master_client(&self, node_id: u64) -> Result<CertifiedKey, PkiError> {
        if let Some((id, cert)) = &*self.client.lock().unwrap_or_else(|p| p.into_inner()) {
            if *id == node_id {
                return Ok(cert.clone());
            }
        }
        let files = self.dir.as_ref().map(|dir| {
            (
                dir.join(format!("master-{node_id}-client.crt")),
                dir.join(format!("master-{node_id}-client.key")),
            )
        });
        if let Some((cert, key)) = &files {
            if let (Some(cert_pem), Some(key_pem)) = (read(cert)?, read(key)?) {
                let stored = CertifiedKey { cert_pem, key_pem };
                if !due(&stored, Time::now()) {
                    *self.client.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((node_id, stored.clone()));
                    return Ok(stored);
                }
            }
        }
        let issued = self
            .ca
            .issue_client(&Identity::Master(node_id), self.validity(Time::now()))?;
        if let Some((cert, key)) = &files {
            write_private(key, &issued.key_pem)?;
            write_private(cert, &issued.cert_pem)?;
            tracing::info!(node_id, "issued this master's raft client certificate");
        }
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some((node_id, issued.clone()));
        Ok(issued)
    }

    /// Renews this master's certificates whose renewal is due at `now`.
    pub fn renew_due(&self, node_id: u64, now: Time) -> Result<Renewed, PkiError> {
        let mut renewed = Renewed::default();
        if due(&self.server(), now) {
            self.renew_server()?;
            renewed.server = true;
        }
        let before = self.master_client(node_id)?;
        if due(&before, now) {
            *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if let Some(dir) = &self.dir {
                // Forces a new one on the next read.
                let _ = std::fs::remove_file(dir.join(format!("master-{node_id}-client.crt")));
            }
            self.master_client(node_id)?;
            renewed.client = true;
        }
        Ok(renewed)
    }

    /// When the next of this master's certificates is due for renewal.
    pub fn next_renewal(&self, node_id: u64) -> Time {
        let at =
            |c: &CertifiedKey| Validity::of_pem(&c.cert_pem).map_or(Time::now(), |v| v.renew_at());
        let server = at(&self.server());
        match self.master_client(node_id) {
            Ok(c) => server.min(at(&c)),
            Err(_) => server,
        }
    }

    /// Logs a warning for the CA or a certificate of this master that
    /// expires soon.
    pub fn warn_if_expiring(&self, now: Time) {
        for c in self.certificates(None) {
            let v = Validity {
                not_before: c.not_before,
                not_after: c.not_after,
            };
            if v.expires_soon(now) {
                tracing::warn!(
                    certificate = %c.name,
                    not_after = %c.not_after,
                    "certificate expires {}",
                    v.left(now)
                );
            }
        }
    }

    /// The CA's and this master's certificates, with their validity.
    pub fn certificates(&self, node_id: Option<u64>) -> Vec<CertificateStatus> {
        let mut out = Vec::new();
        let mut add = |name: String, pem: &str| {
            if let Ok(v) = Validity::of_pem(pem) {
                out.push(CertificateStatus {
                    name,
                    not_before: v.not_before,
                    not_after: v.not_after,
                });
            }
        };
        add("cluster CA".into(), &self.ca.key.cert_pem);
        let who = node_id.map_or("this master".to_string(), |id| format!("master {id}"));
        add(format!("{who} serving"), &self.server().cert_pem);
        if let Some(id) = node_id {
            if let Ok(c) = self.master_client(id) {
                add(format!("{who} raft client"), &c.cert_pem);
            }
        }
        out
    }

    /// The client TLS configuration for messages to other masters (on
    /// their own protocol, [`RAFT_ALPN`]): trusts the cluster CA and
    /// presents `client`.
    pub fn master_client_tls(
        &self,
        client: &CertifiedKey,
    ) -> Result<rustls::ClientConfig, PkiError> {
        Ok(flotilla_api::tls::client_config(
            &self.ca.key.cert_pem,
            Some(client),
            RAFT_ALPN,
        )?)
    }

    /// Signs a CSR for `identity` with this master's certificate lifetime
    /// (joins and renewals).
    pub fn sign_for(&self, csr_pem: &str, identity: &Identity) -> Result<String, IdentityError> {
        self.ca
            .sign_csr(csr_pem, identity, self.validity(Time::now()))
    }

    /// Signs a CSR for `identity` to live `lifetime` (None: this master's
    /// certificate lifetime): a user's certificates live as long as its
    /// User object says.
    pub fn sign_lasting(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: Option<Duration>,
    ) -> Result<String, IdentityError> {
        let validity = Validity::new(Time::now(), lifetime.unwrap_or(self.cert_lifetime));
        self.ca.sign_csr(csr_pem, identity, validity)
    }

    /// Writes an admin client config to `path`: a new one when there is
    /// none, a renewed certificate in the one there when its renewal is
    /// due. A config of another cluster is replaced only when `replace`
    /// says so: it may be the only way its owner reaches that cluster.
    pub fn write_admin_config(
        &self,
        path: &Path,
        masters: &[String],
        replace: bool,
    ) -> Result<(), PkiError> {
        let mut cfg = ClientConfigFile {
            cluster: self.cluster.clone(),
            masters: masters.to_vec(),
            ca_pem: self.ca.key.cert_pem.clone(),
            ..ClientConfigFile::default()
        };
        if let Some(text) = read(path)? {
            match ClientConfigFile::parse(&text) {
                Ok(existing) if existing.ca_pem == self.ca.key.cert_pem => {
                    let fresh = Validity::of_pem(&existing.cert_pem)
                        .is_ok_and(|v| !v.renewal_due(Time::now()));
                    if fresh {
                        return Ok(());
                    }
                    // Keep what the user has (masters learned, edits), renew the certificate.
                    cfg = existing;
                }
                _ if replace => tracing::warn!(
                    path = %path.display(),
                    "replacing a client config that belongs to another cluster (--replace-config)"
                ),
                _ => return Err(PkiError::ForeignConfig { path: path.into() }),
            }
        }
        let admin = self
            .ca
            .issue_client(&Identity::Admin, self.validity(Time::now()))?;
        cfg.cert_pem = admin.cert_pem;
        cfg.key_pem = admin.key_pem;
        write_private(path, &cfg.render())?;
        tracing::info!(path = %path.display(), "wrote admin client config");
        Ok(())
    }

    /// Whether `path` holds a config this master may write: none, or one of
    /// this cluster, or any when `replace`. Checked before the master binds
    /// its port, so that a master that cannot start touches no config.
    pub fn check_admin_config(&self, path: &Path, replace: bool) -> Result<(), PkiError> {
        match read(path)? {
            None => Ok(()),
            Some(_) if replace => Ok(()),
            Some(text) => match ClientConfigFile::parse(&text) {
                Ok(c) if c.ca_pem == self.ca.key.cert_pem => Ok(()),
                _ => Err(PkiError::ForeignConfig { path: path.into() }),
            },
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_renews_its_own_certificates_when_due() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lifetime = Duration::from_secs(90);
        let pki = Pki::load_or_init(dir.path(), "t", &[], lifetime).expect("pki");
        let (server, client) = (pki.server(), pki.master_client(1).expect("client"));
        let now = Time::now();
        assert_eq!(pki.renew_due(1, now).expect("renew"), Renewed::default());
        assert!(pki.next_renewal(1) > now);
        // Two thirds of 90 s later, both are due.
        let later = Time(now.0 + 61_000);
        assert_eq!(
            pki.renew_due(1, later).expect("renew"),
            Renewed {
                server: true,
                client: true
            }
        );
        assert_ne!(pki.server(), server);
        assert_ne!(pki.master_client(1).expect("client"), client);
        // What is in use is what a restart reads back.
        let again = Pki::load_or_init(dir.path(), "t", &[], lifetime).expect("reload");
        assert_eq!(again.server(), pki.server());
        assert_eq!(
            again.master_client(1).expect("client"),
            pki.master_client(1).expect("client")
        );
        let names: Vec<String> = pki
            .certificates(Some(1))
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(
            names,
            ["cluster CA", "master 1 serving", "master 1 raft client"]
        );
    }

    #[test]
    fn an_admin_config_of_another_cluster_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Pki::load_or_init(&dir.path().join("a"), "a", &[], DEFAULT).expect("a");
        let b = Pki::load_or_init(&dir.path().join("b"), "b", &[], DEFAULT).expect("b");
        let config = dir.path().join("config");
        a.write_admin_config(&config, &["x:1".into()], false)
            .expect("write");
        let written = std::fs::read_to_string(&config).expect("read");
        // Written again by its own cluster while fresh: unchanged.
        a.write_admin_config(&config, &["y:1".into()], false)
            .expect("again");
        assert_eq!(std::fs::read_to_string(&config).expect("read"), written);
        assert!(a.check_admin_config(&config, false).is_ok());
        assert!(matches!(
            b.check_admin_config(&config, false),
            Err(PkiError::ForeignConfig { .. })
        ));
        assert!(matches!(
            b.write_admin_config(&config, &[], false),
            Err(PkiError::ForeignConfig { .. })
        ));
        assert_eq!(std::fs::read_to_string(&config).expect("read"), written);
        b.write_admin_config(&config, &[], true).expect("replace");
        assert_ne!(std::fs::read_to_string(&config).expect("read"), written);
    }

    const DEFAULT: Duration = flotilla_api::identity::DEFAULT_CERT_LIFETIME;
}
