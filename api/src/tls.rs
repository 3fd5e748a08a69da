//! rustls configurations for every hop. Masters require and verify client
//! certificates from the cluster CA (a connection without one may only join);
//! clients verify masters against the CA. A joining node, which has no CA
//! yet, verifies the master's chain against the CA whose hash its token pins.

use crate::identity::{CertifiedKey, MASTER_SERVER_NAME};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::Digest;
use std::sync::Arc;

/// Why a TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("PEM is not readable: {0}")]
    Pem(String),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("the private key is not the one the certificate was issued for")]
    KeyMismatch,
}

/// The crypto provider every configuration uses (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// All certificates in a PEM string.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate found".into()));
    }
    Ok(certs)
}

/// The private key in a PEM string.
pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem(e.to_string()))
}

/// A certificate chain and its private key (PEM) as a server presents
/// them: what a Service's TLS Secret holds. Fails when either does not
/// parse, or the key is not the certificate's.
pub fn serving_key(
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    let certs = parse_certs(cert_pem)?;
    let key = provider()
        .key_provider
        .load_private_key(parse_key(key_pem)?)?;
    let ck = rustls::sign::CertifiedKey::new(certs, key);
    ck.keys_match().map_err(|_| TlsError::KeyMismatch)?;
    Ok(Arc::new(ck))
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in parse_certs(ca_pem)? {
        roots.add(c)?;
    }
    Ok(Arc::new(roots))
}

/// A master's server configuration: its chain and key, client certificates
/// from the CA verified when presented (a caller without one may only join),
/// serving the protocols `alpns` (the client picks one).
pub fn server_config(
    server: &CertifiedKey,
    ca_pem: &str,
    alpns: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs(&server.cert_pem)?, parse_key(&server.key_pem)?)?;
    cfg.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    Ok(cfg)
}

/// A node proxy's server configuration for other nodes: its certificate,
/// and a client certificate from the CA required of every peer (the
/// caller checks that it names a node).
pub fn peer_server_config(
    own: &CertifiedKey,
    ca_pem: &str,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(parse_certs(&own.cert_pem)?, parse_key(&own.key_pem)?)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// A client configuration that trusts the cluster CA and presents `client` if given.
pub fn client_config(
    ca_pem: &str,
    client: Option<&CertifiedKey>,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?);
    let mut cfg = match client {
        Some(ck) => {
            builder.with_client_auth_cert(parse_certs(&ck.cert_pem)?, parse_key(&ck.key_pem)?)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// A client configuration for joining: the server's chain must contain a CA
/// certificate whose SHA-256 is `ca_hash`, and must verify against it.
pub fn pinned_client_config(ca_hash: &str, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsError> {
    let verifier = Arc::new(PinnedCaVerifier {
        ca_hash: ca_hash.to_ascii_lowercase(),
        provider: provider(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // a custom verifier, not a disabled one: see PinnedCaVerifier
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// The server name clients verify masters against.
pub fn master_server_name() -> &'static str {
    MASTER_SERVER_NAME
}

/// Full WebPKI verification of the server, with the trust anchor taken from
/// the presented chain only if it matches the pinned hash.
#[derive(Debug)]
struct PinnedCaVerifier {
    ca_hash: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .find(|c| hex::encode(sha2::Sha256::digest(c.as_ref())) == self.ca_hash)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the master's CA does not match the hash in the join token (wrong cluster, or a stale token)".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(pinned.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
