//! TLS on the host port: Services that name a Secret in `spec.tls` have
//! their hosts served over TLS on the node's TLS host port (443 by
//! default), with the certificate and key of that Secret, picked by the
//! name the client asks for (SNI). HTTP/2 and HTTP/1.1 are offered (ALPN).
//!
//! Every node reads those Secrets from the masters (a node may read the
//! Secrets that Services name for TLS) when they first appear in its
//! routing table and every [`RESYNC`] after, so a renewed certificate is
//! served within that time. The keys are kept in memory only. A Secret
//! that cannot be read while no master answers stays as last read; one
//! that is gone, or no longer holds a usable certificate, stops being
//! served (a client then fails its handshake) and the node logs why.

use super::Inner;
use crate::data::Source;
use flotilla_api::net::Client;
use flotilla_api::objects::service::{TLS_CERT_KEY, TLS_KEY_KEY};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the certificates served are read again.
pub const RESYNC: Duration = Duration::from_secs(10);

/// The certificates of the TLS host port, by Secret (`namespace/name`).
#[derive(Default)]
pub(super) struct Certificates {
    /// Each with the version of the Secret it was read from.
    by_secret: std::sync::RwLock<HashMap<String, (u64, Arc<CertifiedKey>)>>,
    /// Woken when the table names a Secret not read yet.
    wanted: tokio::sync::Notify,
}

impl Certificates {
    fn get(&self, secret: &str) -> Option<Arc<CertifiedKey>> {
        self.by_secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(secret)
            .map(|(_, ck)| ck.clone())
    }

    /// The version of `secret` read last, if it is served.
    fn version(&self, secret: &str) -> Option<u64> {
        self.by_secret
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(secret)
            .map(|(v, _)| *v)
    }

    /// Called with each new table: wakes the reader if it names a Secret
    /// not read yet.
    pub(super) fn table_changed(&self, secrets: &std::collections::BTreeSet<&str>) {
        let known = self.by_secret.read().unwrap_or_else(|p| p.into_inner());
        if secrets.iter().any(|s| !known.contains_key(*s)) {
            self.wanted.notify_one();
        }
    }
}

/// Picks the certificate for a client's server name from the current table.
struct Resolver(Weak<Inner>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let inner = self.0.upgrade()?;
        let name = hello.server_name()?;
        let table = inner
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let secret = table.secret_for(name)?;
        inner.certificates.get(secret)
    }
}

/// The TLS configuration of the TLS host port.
pub(super) fn acceptor(inner: &Arc<Inner>) -> Result<tokio_rustls::TlsAcceptor, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(flotilla_api::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(Arc::downgrade(inner))));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// What reading a Secret gave.
enum Read {
    /// A certificate, from this version of the Secret.
    Usable(u64, Arc<CertifiedKey>),
    /// The version already served.
    Unchanged,
    /// Gone, or not a certificate: why, for the log.
    Unusable(String),
    /// No answer: keep what there is.
    Unknown(String),
}

/// Reads `secret` (`namespace/name`) over `client`; its certificate is
/// parsed only when its version is not the one `served`.
async fn read(client: &Client, secret: &str, served: Option<u64>) -> Read {
    let (namespace, name) = secret.split_once('/').unwrap_or(("default", secret));
    let data = match crate::data::fetch(client, Source::Secret, namespace, name).await {
        Ok(Some(data)) => data,
        Ok(None) => return Read::Unusable("no such Secret".into()),
        Err(e) => return Read::Unknown(e),
    };
    if served == Some(data.version) {
        return Read::Unchanged;
    }
    let text = |k: &str| {
        data.files
            .get(k)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    match (text(TLS_CERT_KEY), text(TLS_KEY_KEY)) {
        (Some(cert), Some(key)) => match flotilla_api::tls::serving_key(&cert, &key) {
            Ok(ck) => Read::Usable(data.version, ck),
            Err(e) => Read::Unusable(format!("not a usable certificate and key: {e}")),
        },
        _ => Read::Unusable(format!(
            "it needs the keys {TLS_CERT_KEY} and {TLS_KEY_KEY} \
             (flotilla create secret tls NAME --cert FILE --key FILE)"
        )),
    }
}

/// Keeps the certificates of the Secrets the table names, until `stop`.
pub(super) async fn keep(
    inner: Arc<Inner>,
    mut client: watch::Receiver<Option<Client>>,
    stop: CancellationToken,
) {
    // What was last logged for each Secret, so a lasting problem is
    // logged once.
    let mut said: HashMap<String, String> = HashMap::new();
    loop {
        let current = client.borrow_and_update().clone();
        if let Some(c) = current {
            let table = inner
                .table
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let wanted: Vec<String> = table.secrets().into_iter().map(str::to_string).collect();
            inner
                .certificates
                .by_secret
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|k, _| wanted.contains(k));
            said.retain(|k, _| wanted.contains(k));
            for secret in wanted {
                let served = inner.certificates.version(&secret);
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = read(&c, &secret, served) => r,
                };
                let mut certs = inner
                    .certificates
                    .by_secret
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Read::Usable(version, ck) => {
                        said.remove(&secret);
                        tracing::info!(%secret, version, "serving TLS with the certificate of a Secret");
                        certs.insert(secret, (version, ck));
                    }
                    Read::Unchanged => {}
                    Read::Unusable(why) => {
                        certs.remove(&secret);
                        if said.get(&secret) != Some(&why) {
                            tracing::warn!(%secret, reason = %why, "a Service's TLS Secret cannot be served; its hosts fail TLS handshakes");
                            said.insert(secret, why);
                        }
                    }
                    Read::Unknown(why) => {
                        tracing::debug!(%secret, reason = %why, "cannot read a TLS Secret now; serving the last one read");
                    }
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RESYNC) => {}
            _ = inner.certificates.wanted.notified() => {}
            changed = client.changed() => if changed.is_err() { return },
        }
    }
}
