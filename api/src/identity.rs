//! Who is who in a cluster: the cluster CA, the certificates it issues, the
//! identity a certificate carries, and join tokens that pin the CA.
//!
//! Every certificate's common name says who holds it: `flotilla:admin`,
//! `flotilla:viewer`, `flotilla:node:<name>`, `flotilla:master:<raft id>`
//! or `flotilla:user:<name>` (with the uid of the User object as its
//! organizational unit). The master reads it from the verified client
//! certificate of each connection; nothing else is trusted.

use crate::time::Time;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use sha2::Digest;
use std::fmt;
use std::time::Duration;

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
    /// A user made by `flotilla user create`: what they may do is read from
    /// the User object of this name and uid (a user deleted and made again
    /// has another uid, and the old certificates name nobody).
    User { name: String, uid: String },
}

/// The common name's prefix of a user's certificate.
const USER_PREFIX: &str = "flotilla:user:";

impl Identity {
    /// The common name written into the certificate.
    pub fn common_name(&self) -> String {
        match self {
            Identity::Admin => "flotilla:admin".into(),
            Identity::Viewer => "flotilla:viewer".into(),
            Identity::Node(n) => format!("flotilla:node:{n}"),
            Identity::Master(id) => format!("flotilla:master:{id}"),
            Identity::User { name, .. } => format!("{USER_PREFIX}{name}"),
        }
    }

    /// The organizational unit written into the certificate: a user's uid.
    fn unit(&self) -> Option<&str> {
        match self {
            Identity::User { uid, .. } => Some(uid),
            _ => None,
        }
    }

    /// Parses a common name (and, for users, the organizational unit) back
    /// into an identity.
    pub fn from_names(cn: &str, unit: Option<&str>) -> Option<Identity> {
        match cn.strip_prefix(USER_PREFIX) {
            Some(name) => {
                let uid = unit.filter(|u| {
                    !u.is_empty()
                        && u.len() <= 64
                        && u.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
                })?;
                crate::manifest::is_dns_label(name).then(|| Identity::User {
                    name: name.to_string(),
                    uid: uid.to_string(),
                })
            }
            None => Identity::from_common_name(cn),
        }
    }

    /// Parses a common name back into an identity (users need their unit
    /// too: [`Identity::from_names`]).
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
        let unit = cert
            .subject()
            .iter_organizational_unit()
            .next()
            .and_then(|a| a.as_str().ok());
        Identity::from_names(&cn, unit).ok_or(IdentityError::UnknownSubject(cn))
    }
}

/// The name a node's certificate is valid for as a server, which other
/// nodes' proxies verify when they connect to it.
pub fn node_server_name(node: &str) -> String {
    format!("{node}.node.flotilla")
}

/// Whether the first certificate of `pem` may serve as node `node` to
/// other nodes (it names [`node_server_name`]); certificates issued before
/// nodes served each other do not, and are renewed.
pub fn serves_as_node(pem: &str, node: &str) -> bool {
    let Ok(der) = crate::tls::parse_certs(pem) else {
        return false;
    };
    let Some(first) = der.first() else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(first.as_ref()) else {
        return false;
    };
    let want = node_server_name(node);
    let named = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(
                |n| matches!(n, x509_parser::extensions::GeneralName::DNSName(d) if *d == want),
            )
        });
    let serves = cert
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.server_auth);
    named && serves
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Admin => f.write_str("admin"),
            Identity::Viewer => f.write_str("viewer"),
            Identity::Node(n) => write!(f, "node {n}"),
            Identity::Master(id) => write!(f, "master {id}"),
            Identity::User { name, .. } => write!(f, "user {name}"),
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

/// One day, the unit certificate lifetimes are counted in.
const DAY: Duration = Duration::from_secs(86_400);

/// How far before its issue a certificate's validity starts. A Raspberry Pi
/// has no battery-backed clock: until NTP answers it runs on the time it
/// saved at shutdown or on its image's build date, often weeks or months
/// behind. A certificate valid only from "now" would be refused by such a
/// machine; one backdated by a year is not. Renewal reads the issue time back
/// from this fixed offset ([`Validity::issued`]).
pub const BACKDATE: Duration = Duration::from_secs(365 * 86_400);
/// Lifetime of node, master and user certificates unless the master is told
/// otherwise (`flotilla master --cert-lifetime`).
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Shortest lifetime a master accepts for the certificates it issues.
pub const MIN_CERT_LIFETIME: Duration = Duration::from_secs(60);
/// Lifetime of a new cluster CA.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Under this much validity left, the CLI and the logs warn.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86_400);

/// When a certificate is valid, and when it should be renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: Time,
    pub not_after: Time,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Validity {
    /// The validity of a certificate issued at `now` for `lifetime`.
    pub fn new(now: Time, lifetime: Duration) -> Validity {
        Validity {
            not_before: Time(now.0.saturating_sub(millis(BACKDATE))),
            not_after: Time(now.0.saturating_add(millis(lifetime))),
        }
    }

    /// The validity of the first certificate in a PEM chain.
    pub fn of_pem(pem: &str) -> Result<Validity, IdentityError> {
        let der = crate::tls::parse_certs(pem).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let first = der
            .first()
            .ok_or_else(|| IdentityError::Parse("no certificate in PEM".into()))?;
        Validity::of_der(first.as_ref())
    }

    /// The validity of a DER certificate (as a TLS peer presents it).
    pub fn of_der(der: &[u8]) -> Result<Validity, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Parse(e.to_string()))?;
        let v = cert.validity();
        Ok(Validity {
            not_before: Time(v.not_before.timestamp().saturating_mul(1000)),
            not_after: Time(v.not_after.timestamp().saturating_mul(1000)),
        })
    }

    /// When the certificate was issued: its start is backdated by [`BACKDATE`].
    pub fn issued(&self) -> Time {
        Time(self.not_before.0.saturating_add(millis(BACKDATE)))
    }

    /// When renewal is due: two thirds into the lifetime, as kubelet renews
    /// (between 70% and 90%), so a year's certificate is renewed four months
    /// before it expires and a node that is offline for a while still has
    /// time to come back.
    pub fn renew_at(&self) -> Time {
        let issued = self.issued().0.min(self.not_after.0);
        Time(issued + (self.not_after.0 - issued) / 3 * 2)
    }

    /// Whether a certificate should be renewed at `now`.
    pub fn renewal_due(&self, now: Time) -> bool {
        now >= self.renew_at()
    }

    /// Whether the certificate is no longer valid at `now`.
    pub fn expired(&self, now: Time) -> bool {
        now > self.not_after
    }

    /// Whether fewer than [`EXPIRY_WARNING`] (or, for short lifetimes, a
    /// sixth of the lifetime) remain at `now`.
    pub fn expires_soon(&self, now: Time) -> bool {
        let lifetime = self.not_after.since(self.issued());
        let margin = millis(EXPIRY_WARNING).min(lifetime / 6);
        self.not_after.since(now) < margin
    }

    /// "in 12 days", "in 3h", "expired 2 days ago": how long is left at `now`.
    pub fn left(&self, now: Time) -> String {
        let ms = self.not_after.since(now);
        let span = human_span(ms.unsigned_abs());
        if ms < 0 {
            format!("expired {span} ago")
        } else {
            format!("in {span}")
        }
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), IdentityError> {
        let at = |t: Time| {
            time::OffsetDateTime::from_unix_timestamp(t.0.div_euclid(1000))
                .map_err(|e| IdentityError::Parse(format!("certificate time {t}: {e}")))
        };
        params.not_before = at(self.not_before)?;
        params.not_after = at(self.not_after)?;
        Ok(())
    }
}

fn human_span(ms: u64) -> String {
    let secs = ms / 1000;
    let day = DAY.as_secs();
    if secs >= 2 * day {
        format!("{} days", secs / day)
    } else if secs >= 3600 {
        format!("{}h", secs / 3600)
    } else if secs >= 60 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

impl ClusterCa {
    /// Creates a new CA for a cluster, valid for [`CA_LIFETIME`].
    pub fn generate(cluster: &str) -> Result<ClusterCa, IdentityError> {
        ClusterCa::generate_at(cluster, Time::now())
    }

    /// Creates a new CA for a cluster as of `now`.
    pub fn generate_at(cluster: &str, now: Time) -> Result<ClusterCa, IdentityError> {
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
        Validity::new(now, CA_LIFETIME).apply(&mut params)?;
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

    /// When the CA itself expires (it is not renewed: a new CA is a new cluster).
    pub fn validity(&self) -> Result<Validity, IdentityError> {
        Validity::of_pem(&self.key.cert_pem)
    }

    /// `validity`, ending no later than the CA: a certificate cannot
    /// outlive the authority that vouches for it.
    fn within(&self, validity: Validity) -> Result<Validity, IdentityError> {
        let ca = self.validity()?;
        Ok(Validity {
            not_before: validity.not_before,
            not_after: validity.not_after.min(ca.not_after),
        })
    }

    /// The CA's hash, as pinned by join tokens.
    pub fn hash(&self) -> Result<String, IdentityError> {
        ca_hash(&self.key.cert_pem)
    }

    /// Issues a master's serving certificate, valid for `hosts` (IPs or DNS names) and [`MASTER_SERVER_NAME`].
    /// The returned chain holds the leaf then the CA, so that joining nodes can pin the CA.
    pub fn issue_server(
        &self,
        hosts: &[String],
        validity: Validity,
    ) -> Result<CertifiedKey, IdentityError> {
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
        self.within(validity)?.apply(&mut params)?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(CertifiedKey {
            cert_pem: format!("{}{}", cert.pem(), self.key.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a client certificate for an identity, with a fresh key.
    pub fn issue_client(
        &self,
        identity: &Identity,
        validity: Validity,
    ) -> Result<CertifiedKey, IdentityError> {
        let key = KeyPair::generate()?;
        let cert =
            client_params(identity, self.within(validity)?)?.signed_by(&key, &self.issuer()?)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs the public key of a CSR for an identity the master chose; nothing
    /// else of the CSR (its names, its extensions) is taken over.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        validity: Validity,
    ) -> Result<String, IdentityError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let cert = client_params(identity, self.within(validity)?)?
            .signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }
}

fn client_params(
    identity: &Identity,
    validity: Validity,
) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, identity.common_name());
    params
        .distinguished_name
        .push(DnType::OrganizationName, "flotilla");
    if let Some(unit) = identity.unit() {
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, unit);
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    // A node's proxy also serves the other nodes' proxies, under its name.
    if let Identity::Node(n) = identity {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        params
            .subject_alt_names
            .push(SanType::DnsName(node_server_name(n).try_into()?));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity.apply(&mut params)?;
    Ok(params)
}

/// Whether `csr_pem` is a certificate request the CA can sign.
pub fn check_csr(csr_pem: &str) -> Result<(), IdentityError> {
    CertificateSigningRequestParams::from_pem(csr_pem)?;
    Ok(())
}

/// A new key and a CSR for it (what a joining node sends).
pub fn new_csr(identity: &Identity) -> Result<(String, String), IdentityError> {
    let key = KeyPair::generate()?;
    // A CSR carries no validity; the signer chooses it.
    let csr = client_params(identity, Validity::new(Time::now(), DEFAULT_CERT_LIFETIME))?
        .serialize_request(&key)?;
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

    fn year_from_now() -> Validity {
        Validity::new(Time::now(), DEFAULT_CERT_LIFETIME)
    }

    fn at(s: &str) -> Time {
        Time::parse_rfc3339(s).expect("time")
    }

    /// The finding this guards against: every certificate ended on 1 January
    /// of the next year, whatever the day it was issued.
    #[test]
    fn lifetimes_count_from_the_issue_time() {
        let issued = at("2026-12-31T23:00:00Z");
        let ca = ClusterCa::generate_at("test", issued).expect("ca");
        let ck = ca
            .issue_client(
                &Identity::Node("n1".into()),
                Validity::new(issued, DEFAULT_CERT_LIFETIME),
            )
            .expect("issue");
        let v = Validity::of_pem(&ck.cert_pem).expect("validity");
        assert_eq!(v.not_after, at("2027-12-31T23:00:00Z"));
        // Backdated a year for Pis that boot with a stale clock.
        assert_eq!(v.not_before, at("2025-12-31T23:00:00Z"));
        assert_eq!(v.issued(), issued);
        assert!(!v.expired(at("2027-01-02T00:00:00Z")));
        assert!(v.expired(at("2028-01-01T00:00:00Z")));
        let server = ca
            .issue_server(
                &["10.0.0.1".into()],
                Validity::new(issued, DEFAULT_CERT_LIFETIME),
            )
            .expect("server");
        assert_eq!(
            Validity::of_pem(&server.cert_pem).expect("v").not_after,
            at("2027-12-31T23:00:00Z")
        );
        let ca_v = ca.validity().expect("ca validity");
        assert_eq!(ca_v.not_after, at("2036-12-28T23:00:00Z"));
    }

    #[test]
    fn no_certificate_outlives_its_ca() {
        let now = at("2026-06-01T00:00:00Z");
        let ca = ClusterCa::generate_at("test", now).expect("ca");
        let long = Validity::new(now, Duration::from_secs(20 * 365 * 86_400));
        let ck = ca.issue_client(&Identity::Admin, long).expect("issue");
        assert_eq!(
            Validity::of_pem(&ck.cert_pem).expect("v").not_after,
            ca.validity().expect("ca").not_after
        );
    }

    #[test]
    fn renewal_is_due_two_thirds_into_the_lifetime() {
        let issued = at("2026-12-01T00:00:00Z");
        let v = Validity::new(issued, DEFAULT_CERT_LIFETIME);
        assert!(!v.renewal_due(at("2027-06-01T00:00:00Z")));
        assert!(v.renewal_due(at("2027-08-15T00:00:00Z")));
        assert!(!v.expires_soon(at("2027-08-15T00:00:00Z")));
        assert!(v.expires_soon(at("2027-11-15T00:00:00Z")));
        // Short lifetimes (tests, short-lived users) scale the same way.
        let short = Validity::new(issued, Duration::from_secs(90));
        assert!(!short.renewal_due(Time(issued.0 + 59_000)));
        assert!(short.renewal_due(Time(issued.0 + 60_000)));
        assert!(short.expires_soon(Time(issued.0 + 80_000)));
        assert!(!short.expires_soon(Time(issued.0 + 30_000)));
        // A certificate of the old scheme (start on 1 January of the year
        // before, end on 1 January of the next) is due at once.
        let old = Validity {
            not_before: at("2025-01-01T00:00:00Z"),
            not_after: at("2027-01-01T00:00:00Z"),
        };
        assert!(old.renewal_due(at("2026-12-01T00:00:00Z")));
        assert!(!old.expires_soon(at("2026-12-01T00:00:00Z")));
        assert!(old.expires_soon(at("2026-12-05T00:00:00Z")));
        assert_eq!(v.left(at("2027-11-21T00:00:00Z")), "in 10 days");
        assert_eq!(v.left(at("2027-12-03T00:00:00Z")), "expired 2 days ago");
    }

    #[test]
    fn identities_round_trip_through_certificates() {
        let ca = ClusterCa::generate("test").expect("ca");
        for id in [
            Identity::Admin,
            Identity::Viewer,
            Identity::Node("n1".into()),
            Identity::Master(3),
            Identity::User {
                name: "alice".into(),
                uid: "0123abcd-4567-89ef-0123-456789abcdef".into(),
            },
        ] {
            let ck = ca.issue_client(&id, year_from_now()).expect("issue");
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
            .sign_csr(&csr, &Identity::Node("n2".into()), year_from_now())
            .expect("sign");
        let der = crate::tls::parse_certs(&pem).expect("pem");
        assert_eq!(
            Identity::from_cert_der(der[0].as_ref()).expect("id"),
            Identity::Node("n2".into())
        );
        assert!(ca
            .sign_csr("garbage", &Identity::Admin, year_from_now())
            .is_err());
        // A node's certificate serves other nodes under its own name only.
        assert!(serves_as_node(&pem, "n2"));
        assert!(!serves_as_node(&pem, "n3"));
        let admin = ca
            .issue_client(&Identity::Admin, year_from_now())
            .expect("admin");
        assert!(!serves_as_node(&admin.cert_pem, "n2"));
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
        // A user's name alone is no identity: the uid says which user.
        assert_eq!(Identity::from_common_name("flotilla:user:alice"), None);
        assert_eq!(Identity::from_names("flotilla:user:alice", None), None);
        assert_eq!(
            Identity::from_names("flotilla:user:Al ice", Some("ab")),
            None
        );
        assert_eq!(
            Identity::from_names("flotilla:user:alice", Some("a/b")),
            None
        );
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
