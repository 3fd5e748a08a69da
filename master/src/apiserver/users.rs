//! Users: made with a certificate of their own (`flotilla user create`),
//! told apart from everyone else on every request by their User object
//! ([`ApiServer::resolve`]), renewed as long as they are not revoked, and
//! revoked for good (`flotilla user revoke`).

use super::admission::invalid;
use super::verb::Grant;
use super::{authorize, store_err, Action, ApiServer, Caller, Subresource, Verb};
use flotilla_api::identity::{check_csr, Identity, Validity};
use flotilla_api::objects::User;
use flotilla_api::protocol::{ApiError, ErrorCode, Response};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object};
use std::time::Duration;

/// The caller that records what was issued in a User's status.
const ISSUER: Caller = Caller::Controller("certificates");

/// Why a user's certificate no longer lets them in, or None if it does.
/// `stored` is the User object of the certificate's name, if there is one.
pub fn refusal(name: &str, uid: &str, stored: Option<&User>) -> Option<String> {
    let again = "ask an admin for a new config (`flotilla user create`)";
    match stored {
        None => Some(format!(
            "user {name} does not exist in this cluster (it was deleted); {again}"
        )),
        Some(u) if u.metadata.uid != uid => Some(format!(
            "this certificate belongs to an earlier user named {name}, deleted since; {again}"
        )),
        Some(u) => u.status.revoked.map(|at| {
            format!("user {name} was revoked at {at}; every certificate of it is refused; {again}")
        }),
    }
}

/// The certificate lifetime a User asks for (None: the master's).
fn lifetime(user: &User) -> Option<Duration> {
    (user.spec.expiration_seconds > 0).then(|| Duration::from_secs(user.spec.expiration_seconds))
}

impl ApiServer {
    /// The caller, with what its User object allows if it is a user: read
    /// from this master's own copy of the state, so that every master
    /// refuses a revoked or deleted user as soon as the revocation reaches
    /// it. Other callers are given back as they are.
    pub fn resolve(&self, caller: &Caller) -> Result<Caller, ApiError> {
        let Caller::User { name, uid, .. } = caller else {
            return Ok(caller.clone());
        };
        let stored = match self.store.get(Kind::User, "", name).map_err(store_err)? {
            Some(Object::User(u)) => Some(u),
            _ => None,
        };
        if let Some(why) = refusal(name, uid, stored.as_ref()) {
            return Err(ApiError::new(ErrorCode::Unauthenticated, why));
        }
        let spec = stored.map(|u| u.spec).unwrap_or_default();
        Ok(Caller::User {
            name: name.clone(),
            uid: uid.clone(),
            grant: Some(Grant {
                role: spec.role,
                namespace: (!spec.namespace.is_empty()).then_some(spec.namespace),
            }),
        })
    }

    /// Makes a User and signs `csr_pem` for it: its certificate, the CA and
    /// the masters (what a client config holds).
    pub async fn create_user(
        &self,
        caller: &Caller,
        user: User,
        csr_pem: &str,
    ) -> Result<Response, ApiError> {
        let name = user.metadata.name.clone();
        authorize(
            caller,
            &Verb::object(Action::Create, Kind::User, "", &name, None),
        )?;
        check_csr(csr_pem).map_err(|e| invalid(format!("certificate request: {e}")))?;
        let ns = user.spec.namespace.clone();
        if !ns.is_empty() && ns != flotilla_api::meta::DEFAULT_NAMESPACE {
            self.before_read(false).await?;
            if self
                .store
                .get(Kind::Namespace, "", &ns)
                .map_err(store_err)?
                .is_none()
            {
                return Err(invalid(format!(
                    "namespace {ns:?} does not exist; create it first (`flotilla create namespace {ns}`), then the user"
                )));
            }
        }
        let created = match self.create(caller, Object::User(user)).await {
            Ok(Object::User(u)) => u,
            Ok(other) => {
                return Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("creating a user stored a {}", other.kind()),
                ))
            }
            Err(e) if e.code == ErrorCode::AlreadyExists => {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "user {name} exists already; pick another name, or, to give {name} a new config, \
                         revoke and delete it first (`flotilla user revoke {name}`, `flotilla delete user {name}`)"
                    ),
                ))
            }
            Err(e) => return Err(e),
        };
        let cert_pem = self.sign_user(created, csr_pem).await?;
        tracing::info!(caller = %caller, user = %name, "created a user");
        Ok(Response::Joined {
            cert_pem,
            ca_pem: self.pki.ca.key.cert_pem.clone(),
            masters: self.masters(),
        })
    }

    /// Revokes user `name`: every master refuses its certificates from the
    /// moment the revocation reaches it. Revoking a revoked user changes
    /// nothing.
    pub async fn revoke_user(&self, caller: &Caller, name: &str) -> Result<Object, ApiError> {
        authorize(
            caller,
            &Verb::object(
                Action::Update,
                Kind::User,
                "",
                name,
                Some(Subresource::Status),
            ),
        )?;
        self.before_read(false).await?;
        let mut user = match self.store.get(Kind::User, "", name).map_err(store_err)? {
            Some(Object::User(u)) => u,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!(
                        "{}; `flotilla get users` lists them",
                        Kind::User.not_found("", name)
                    ),
                ))
            }
        };
        if user.is_revoked() {
            return Ok(Object::User(user));
        }
        user.status.revoked = Some(Time::now());
        let revoked = self.update_status(&ISSUER, Object::User(user)).await?;
        tracing::info!(caller = %caller, user = name, "revoked a user");
        Ok(revoked)
    }

    /// A new certificate for a user who still holds a valid one: as long
    /// as its User says, recorded in its status.
    pub(super) async fn renew_user(
        &self,
        caller: &Caller,
        csr_pem: &str,
    ) -> Result<String, ApiError> {
        let Caller::User { name, uid, .. } = caller else {
            return Err(ApiError::new(
                ErrorCode::Internal,
                "renew_user called for another caller",
            ));
        };
        let user = match self.store.get(Kind::User, "", name).map_err(store_err)? {
            Some(Object::User(u)) if u.metadata.uid == *uid && !u.is_revoked() => u,
            other => {
                let stored = other.and_then(|o| o.into_kind::<User>());
                let why = refusal(name, uid, stored.as_ref())
                    .unwrap_or_else(|| format!("user {name} may not renew"));
                return Err(ApiError::new(ErrorCode::Unauthenticated, why));
            }
        };
        check_csr(csr_pem).map_err(|e| invalid(format!("certificate request: {e}")))?;
        self.sign_user(user, csr_pem).await
    }

    /// Signs `csr_pem` for `user` and records the certificate's times.
    async fn sign_user(&self, mut user: User, csr_pem: &str) -> Result<String, ApiError> {
        let identity = Identity::User {
            name: user.metadata.name.clone(),
            uid: user.metadata.uid.clone(),
        };
        let cert_pem = self
            .pki
            .sign_lasting(csr_pem, &identity, lifetime(&user))
            .map_err(|e| invalid(format!("certificate request: {e}")))?;
        let validity = Validity::of_pem(&cert_pem)
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        user.status.issued = Some(validity.issued());
        user.status.expires = Some(validity.not_after);
        if let Err(e) = self.update_status(&ISSUER, Object::User(user)).await {
            // The certificate is good either way; only the record lags.
            tracing::warn!(error = %e, identity = %identity, "could not record an issued certificate");
        }
        Ok(cert_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_revoked_and_remade_users_are_refused() {
        let mut user = User::default();
        user.metadata.name = "alice".into();
        user.metadata.uid = "u1".into();
        assert_eq!(refusal("alice", "u1", Some(&user)), None);
        let gone = refusal("alice", "u1", None).expect("deleted");
        assert!(gone.contains("does not exist"), "{gone}");
        let remade = refusal("alice", "u0", Some(&user)).expect("another uid");
        assert!(remade.contains("earlier user named alice"), "{remade}");
        user.status.revoked = Some(Time(0));
        let revoked = refusal("alice", "u1", Some(&user)).expect("revoked");
        assert!(revoked.contains("was revoked at"), "{revoked}");
    }
}
