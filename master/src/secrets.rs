//! Secrets at rest: the master seals a Secret's `data` with the cluster's
//! secret key before the object enters raft, so the raft log, the store,
//! raft snapshots and backups hold only ciphertext, and opens it for the
//! callers who may see the values (admins who ask, nodes whose pods use the
//! Secret).
//!
//! The key is derived (HKDF-SHA256) from the cluster CA's private key: every
//! master has it (a joining master receives the CA), it is kept where the CA
//! key is and with its protection (`pki/ca.key`, owner-only), and a backup
//! is readable by a cluster restored with the same CA. Whoever holds the CA
//! key can mint an admin certificate and read the Secrets anyway, so a
//! separate key would protect nothing more, and could be lost apart.
//!
//! The cipher is ChaCha20-Poly1305 (ring, which TLS already links), with a
//! random 96-bit nonce per seal and the Secret's `namespace/name` as
//! associated data: a sealed value cannot be moved to another Secret.

use base64::Engine as _;
use flotilla_api::objects::Secret;
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::Object;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::BTreeMap;

/// The sealed form's prefix: the key and format it was sealed with.
const VERSION: &str = "v1:";

/// The cluster's key for Secrets at rest.
pub struct SecretKey {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

fn internal(msg: String) -> ApiError {
    ApiError::new(ErrorCode::Internal, msg)
}

impl SecretKey {
    /// The key derived from the cluster CA's private key (its PEM text).
    pub fn derive(ca_key_pem: &str) -> SecretKey {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"flotilla secrets at rest");
        let prk = salt.extract(ca_key_pem.trim().as_bytes());
        let okm = prk
            .expand(&[b"v1"], &CHACHA20_POLY1305)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        SecretKey {
            key: LessSafeKey::new(UnboundKey::from(okm)),
            rng: SystemRandom::new(),
        }
    }

    /// The Secret as the store keeps it: `stringData` folded into `data`,
    /// then `data` sealed into `sealed` and cleared.
    pub fn seal(&self, mut s: Secret) -> Result<Secret, ApiError> {
        if !s.sealed.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                "sealed: written by the master only; give the values in data or stringData",
            ));
        }
        s.normalize();
        let mut plain = postcard::to_allocvec(&s.data)
            .map_err(|e| internal(format!("encoding the Secret's data: {e}")))?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| internal("no randomness for a nonce".into()))?;
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&s).as_bytes()),
                &mut plain,
            )
            .map_err(|_| internal("sealing the Secret failed".into()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&plain);
        s.sealed = format!(
            "{VERSION}{}",
            base64::engine::general_purpose::STANDARD.encode(blob)
        );
        s.data = BTreeMap::new();
        Ok(s)
    }

    /// The Secret with its values in `data` (and `sealed` cleared). One
    /// that was never sealed is returned as it is.
    pub fn open(&self, s: &Secret) -> Result<Secret, ApiError> {
        let mut out = s.clone();
        if s.sealed.is_empty() {
            return Ok(out);
        }
        let key = format!("{}/{}", s.metadata.namespace, s.metadata.name);
        let unreadable = |why: &str| {
            internal(format!(
                "secret {key} cannot be opened ({why}): it was sealed with another cluster's \
                 key (a backup restored into a cluster with another CA?); delete it and create \
                 it again"
            ))
        };
        let blob = s
            .sealed
            .strip_prefix(VERSION)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|b| b.len() >= NONCE_LEN + CHACHA20_POLY1305.tag_len())
            .ok_or_else(|| unreadable("not in the sealed format"))?;
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| unreadable("not in the sealed format"))?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(s).as_bytes()), &mut buf)
            .map_err(|_| unreadable("authentication failed"))?;
        out.data = postcard::from_bytes(plain).map_err(|_| unreadable("not a key list"))?;
        out.sealed = String::new();
        Ok(out)
    }

    /// An object as a reader without a Secret's values gets it: a Secret
    /// with its values hidden; any other object as it is.
    pub fn outward(&self, o: Object) -> Object {
        match o {
            Object::Secret(s) => match self.open(&s) {
                Ok(plain) => Object::Secret(plain.redacted()),
                Err(e) => {
                    tracing::warn!(error = %e.message, "serving a Secret without its keys");
                    Object::Secret(Secret {
                        sealed: String::new(),
                        ..s
                    })
                }
            },
            other => other,
        }
    }
}

fn aad(s: &Secret) -> String {
    format!("{}/{}", s.metadata.namespace, s.metadata.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::ObjectMeta;

    fn secret(name: &str) -> Secret {
        Secret {
            metadata: ObjectMeta::named("default", name),
            string_data: [("password".to_string(), "hunter2".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn sealed_data_holds_no_plaintext_and_opens_to_the_values() {
        let key = SecretKey::derive("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----");
        let sealed = key.seal(secret("db")).expect("seal");
        assert!(sealed.data.is_empty() && sealed.string_data.is_empty());
        assert!(sealed.sealed.starts_with(VERSION));
        assert!(!sealed.sealed.contains("hunter2"));
        let encoded = postcard::to_allocvec(&Object::Secret(sealed.clone())).expect("encode");
        assert!(!encoded.windows(7).any(|w| w == b"hunter2"));
        let opened = key.open(&sealed).expect("open");
        assert_eq!(opened.files()["password"], b"hunter2");
        assert!(opened.sealed.is_empty());
        // Two seals of the same data differ (a fresh nonce each).
        assert_ne!(key.seal(secret("db")).expect("seal").sealed, sealed.sealed);
        // What readers get hides the value.
        let Object::Secret(out) = key.outward(Object::Secret(sealed.clone())) else {
            panic!("a secret");
        };
        assert_eq!(out.data["password"], "<hidden: 7 bytes>");
    }

    #[test]
    fn another_key_another_name_or_a_forged_seal_do_not_open() {
        let key = SecretKey::derive("one CA key");
        let sealed = key.seal(secret("db")).expect("seal");
        let other = SecretKey::derive("another CA key");
        let e = other.open(&sealed).expect_err("another key");
        assert!(e.message.contains("another cluster's key"), "{}", e.message);
        let mut moved = sealed.clone();
        moved.metadata.name = "other".into();
        assert!(key.open(&moved).is_err(), "bound to its name");
        let mut garbage = sealed;
        garbage.sealed = "v1:!!!".into();
        assert!(key.open(&garbage).is_err());
        garbage.sealed = "v1:AAAA".into();
        assert!(key.open(&garbage).is_err());
        // A caller may not hand in a sealed form of its own.
        let mut forged = secret("db");
        forged.sealed = "v1:AAAA".into();
        assert_eq!(
            key.seal(forged).expect_err("forged").code,
            ErrorCode::Invalid
        );
    }
}
