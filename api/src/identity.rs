//! Who is who in a cluster: the cluster CA, the certificates it issues, the
//! identity a certificate carries, and join tokens that pin the CA.
//!
//! Every certificate's common name says who holds it: `flotilla:admin`,
//! `flotilla:viewer`, `flotilla:node:<name>` or `flotilla:master:<raft id>`. The master reads it from the
//! verified client certificate of each connection; nothing else is trusted.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::Digest;
use std::fmt;

/// DNS name every master certificate carries and every client checks, so
/// that masters can be reached by any address (IP, name) and still verified.
pub const MASTER_SERVER_NAME: &str = "master.flotilla.internal";

/// Why an identity operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("certificate operation failed: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("certificate is not readable: {0}")]
    Parse(String),
    #[error(
        "certificate names no Flotilla identity ({0:?}); it was not issued by this cluster's CA"
    )]
    UnknownSubject(String),
    #[error("malformed join token: {0} (tokens look like flt1.<ca hash>.<id>.<secret>; create one with `flotilla token create`)")]
    Token(&'static str),
}

/// The role a certificate grants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// May do anything.
    Admin,
    /// May read anything.
    Viewer,
    /// An edge node: may write its own Node and the status of its pods.
    Node(String),
    /// A master, by its raft node id: may exchange raft messages with the
    /// other masters (and do what admins do, to forward writes).
    Master(u64),
}

impl Identity {
    /// The common name written into the certificate.
    pub fn common_name(&self) -> String {
        match self {
            Identity::Admin => "flotilla:admin".into(),
            Identity::Viewer => "flotilla:viewer".into(),
            Identity::Node(n) => format!("flotilla:node:{n}"),
            Identity::Master(id) => format!("flotilla:master:{id}"),
        }
    }

    /// Parses a common name back into an identity.
    pub fn from_common_name(cn: &str) -> Option<Identity> {
        match cn {
            "flotilla:admin" => Some(Identity::Admin),
            "flotilla:viewer" => Some(Identity::Viewer),
            _ => {
                if let Some(id) = cn.strip_prefix("flotilla:master:") {
                    // Only the canonical decimal form: `+1` or `01` would give
                    // one master two names.
                    return id
                        .parse::<u64>()
                        .ok()
                        .filter(|n| n.to_string() == id)
                        .map(Identity::Master);
                }
                cn.strip_prefix("flotilla:node:")
                    .filter(|n| crate::manifest::is_dns_subdomain(n))
                    .map(|n| Identity::Node(n.to_string()))
            }
        }
    }

    /// Reads the identity out of a DER certificate (already verified by TLS).
    pub fn from_cert_der(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or_default()
            .to_string();
        Identity::from_common_name(&cn).ok_or(IdentityError::UnknownSubject(cn))
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Admin => f.write_str("admin"),
            Identity::Viewer => f.write_str("viewer"),
            Identity::Node(n) => write!(f, "node {n}"),
            Identity::Master(id) => write!(f, "master {id}"),
        }
    }
}

/// A certificate (PEM, leaf first) and its private key (PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The cluster's certificate authority.
#[derive(Clone, Debug)]
pub struct ClusterCa {
    pub key: CertifiedKey,
}

fn validity(params: &mut CertificateParams, years: i32) {
    let now = crate::time::Time::now().to_string();
    let year: i32 = now.get(..4).and_then(|y| y.parse().ok()).unwrap_or(2026);
    // A day of slack on the start absorbs small clock differences between machines.
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

impl ClusterCa {
    /// Creates a new CA for a cluster.
    pub fn generate(cluster: &str) -> Result<ClusterCa, IdentityError> {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("flotilla-ca:{cluster}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "flotilla");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 10);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            key: CertifiedKey {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            },
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, IdentityError> {
        let key = KeyPair::from_pem(&self.key.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.key.cert_pem, key)?)
    }

    /// The CA's hash, as pinned by join tokens.
    pub fn hash(&self) -> Result<String, IdentityError> {
        ca_hash(&self.key.cert_pem)
    }

    /// Issues a master's serving certificate, valid for `hosts` (IPs or DNS names) and [`MASTER_SERVER_NAME`].
    /// The returned chain holds the leaf then the CA, so that joining nodes can pin the CA.
    pub fn issue_server(&self, hosts: &[String]) -> Result<CertifiedKey, IdentityError> {
        let mut params = CertificateParams::new(vec![MASTER_SERVER_NAME.to_string()])?;
        for h in hosts {
            let san = match h.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(h.clone().try_into()?),
            };
            if !params.subject_alt_names.contains(&san) {
                params.subject_alt_names.push(san);
            }
        }
        params
            .distinguished_name
            .push(DnType::CommonName, "flotilla:master");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, 2);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(CertifiedKey {
            cert_pem: format!("{}{}", cert.pem(), self.key.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a client certificate for an identity, with a fresh key.
    pub fn issue_client(&self, identity: &Identity) -> Result<CertifiedKey, IdentityError> {
        let key = KeyPair::generate()?;
        let cert = client_params(identity)?.signed_by(&key, &self.issuer()?)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs the public key of a CSR for an identity the master chose; nothing
    /// else of the CSR (its names, its extensions) is taken over.
    pub fn sign_csr(&self, csr_pem: &str, identity: &Identity) -> Result<String, IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let cert = client_params(identity)?.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }
}

fn client_params(identity: &Identity) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, identity.common_name());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "flotilla");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, 1);
    Ok(params)
}

/// A new key and a CSR for it (what a joining node sends).
pub fn new_csr(identity: &Identity) -> Result<(String, String), IdentityError> {
    let key = KeyPair::generate()?;
    let csr = client_params(identity)?.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// SHA-256 of the CA certificate's DER, hex, as pinned by tokens.
pub fn ca_hash(ca_pem: &str) -> Result<String, IdentityError> {
    let der = crate::tls::parse_certs(ca_pem).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let first = der
        .first()
        .ok_or_else(|| IdentityError::Parse("no certificate in PEM".into()))?;
    Ok(hex::encode(sha2::Sha256::digest(first.as_ref())))
}

/// A join token: which CA to trust, and a secret the master checks.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub ca_hash: String,
    pub id: String,
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

const TOKEN_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

impl JoinToken {
    /// A fresh random token for a CA.
    pub fn generate(ca_hash: &str) -> JoinToken {
        use rand::Rng;
        let mut rng = rand::rng();
        let mut word = |n: usize| -> String {
            (0..n)
                .map(|_| TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())] as char)
                .collect()
        };
        JoinToken {
            ca_hash: ca_hash.to_string(),
            id: word(6),
            secret: word(16),
        }
    }

    /// Parses `flt1.<ca hash>.<id>.<secret>`.
    pub fn parse(s: &str) -> Result<JoinToken, IdentityError> {
        let mut parts = s.trim().split('.');
        if parts.next() != Some("flt1") {
            return Err(IdentityError::Token("it does not start with flt1."));
        }
        let (Some(ca_hash), Some(id), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::Token("expected four dot-separated parts"));
        };
        if ca_hash.len() != 64 || !ca_hash.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(IdentityError::Token("the CA hash is not 64 hex digits"));
        }
        let ok = |w: &str, n: usize| w.len() == n && w.bytes().all(|c| TOKEN_ALPHABET.contains(&c));
        if !ok(id, 6) || !ok(secret, 16) {
            return Err(IdentityError::Token(
                "the id or secret has the wrong length or characters",
            ));
        }
        Ok(JoinToken {
            ca_hash: ca_hash.to_ascii_lowercase(),
            id: id.into(),
            secret: secret.into(),
        })
    }

    /// SHA-256 of the secret, which is all the master keeps.
    pub fn secret_hash(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.secret.as_bytes()))
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "flt1.{}.{}.{}", self.ca_hash, self.id, self.secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_certificates() {
        let ca = ClusterCa::generate("test").expect("ca");
        for id in [
            Identity::Admin,
            Identity::Viewer,
            Identity::Node("n1".into()),
            Identity::Master(3),
        ] {
            let ck = ca.issue_client(&id).expect("issue");
            let der = crate::tls::parse_certs(&ck.cert_pem).expect("pem");
            assert_eq!(
                Identity::from_cert_der(der[0].as_ref()).expect("identity"),
                id
            );
        }
    }

    #[test]
    fn csr_signing_uses_the_masters_identity() {
        let ca = ClusterCa::generate("test").expect("ca");
        // The node asks to be admin; the master signs it as node n2 anyway.
        let (csr, _key) = new_csr(&Identity::Admin).expect("csr");
        let pem = ca
            .sign_csr(&csr, &Identity::Node("n2".into()))
            .expect("sign");
        let der = crate::tls::parse_certs(&pem).expect("pem");
        assert_eq!(
            Identity::from_cert_der(der[0].as_ref()).expect("id"),
            Identity::Node("n2".into())
        );
        assert!(ca.sign_csr("garbage", &Identity::Admin).is_err());
    }

    #[test]
    fn tokens() {
        let t = JoinToken::generate(&"ab".repeat(32));
        assert_eq!(JoinToken::parse(&t.to_string()).expect("parses"), t);
        for bad in [
            "",
            "flt1.x.y.z",
            "flt2.a.b.c",
            &format!("flt1.{}.abc.def", "ab".repeat(32)),
            &format!("{t}.extra"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Identity::from_common_name("flotilla:node:../x"), None);
    }

    #[test]
    fn master_names() {
        assert_eq!(
            Identity::from_common_name("flotilla:master:7"),
            Some(Identity::Master(7))
        );
        assert_eq!(Identity::Master(7).common_name(), "flotilla:master:7");
        assert_eq!(Identity::Master(7).to_string(), "master 7");
        // The serving certificate's name is no client identity.
        for bad in [
            "flotilla:master",
            "flotilla:master:",
            "flotilla:master:+7",
            "flotilla:master:07",
            "flotilla:master:x",
            "flotilla:master:18446744073709551616",
        ] {
            assert_eq!(Identity::from_common_name(bad), None, "{bad}");
        }
    }
}
