//! Who gets in: joins (a node or a master with a token), join tokens, and
//! certificate renewal.

use super::admission::invalid;
use super::{new_uid, store_err, ApiServer, Caller};
use super::{Action, Target, Verb};
use crate::store::{Command, StoreError, TokenRecord, TokenUsage};
use flotilla_api::identity::{Identity, JoinToken};
use flotilla_api::protocol::{ApiError, CertificateStatus, ErrorCode, Response};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object, ObjectMeta};
use std::time::Duration;

/// Join tokens live this long unless asked otherwise (as kubeadm's do).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

fn check_node_name(node_name: &str) -> Result<(), ApiError> {
    if flotilla_api::manifest::is_dns_subdomain(node_name) {
        Ok(())
    } else {
        Err(invalid(format!(
            "node name {node_name:?} must be lowercase letters, digits, '-' and '.'"
        )))
    }
}

impl ApiServer {
    /// A node joins with a token: it gets a certificate for its name.
    pub async fn join(
        &self,
        caller: &Caller,
        token: &str,
        node_name: &str,
        csr_pem: &str,
    ) -> Result<Response, ApiError> {
        super::authorize(caller, &Verb::on(Action::Create, Target::Certificate))?;
        check_node_name(node_name)?;
        let (token, usage) = self.check_token(token, TokenUsage::Node).await?;
        match usage {
            TokenUsage::NodeNamed(name) if name != node_name => {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("join refused: this token is for node {name:?}, not {node_name:?}; join with --name {name}, or create a token with `flotilla token create`"),
                ));
            }
            // The admin said this machine takes the name over.
            TokenUsage::NodeNamed(_) => {}
            TokenUsage::NodeCounted { name_prefix, .. } => {
                if !node_name.starts_with(&name_prefix) {
                    return Err(ApiError::new(
                        ErrorCode::Forbidden,
                        format!("join refused: this token is for node names that start with {name_prefix:?}, not {node_name:?}; join with a --name that does, or create another token with `flotilla token create`"),
                    ));
                }
                let claimed = self.claim_node_name(node_name).await?;
                self.count_use(&token.id, node_name, claimed).await?;
            }
            _ => {
                self.claim_node_name(node_name).await?;
            }
        }
        let cert_pem = self
            .pki
            .sign_for(csr_pem, &Identity::Node(node_name.to_string()))
            .map_err(|e| invalid(format!("certificate request: {e}")))?;
        tracing::info!(node = node_name, token = %token.id, "node joined");
        Ok(Response::Joined {
            cert_pem,
            ca_pem: self.pki.ca.key.cert_pem.clone(),
            masters: self.masters(),
        })
    }

    /// Binds `name` to the node that joins with it, by creating its Node
    /// object through raft: of two joins under one name, one creates it and
    /// the other is refused, and a name a node holds cannot be taken by
    /// another machine with a join token (it would receive that node's pods
    /// and their secrets). The name is free again once an admin deletes the
    /// Node.
    async fn claim_node_name(&self, name: &str) -> Result<Object, ApiError> {
        let node = flotilla_api::Node {
            metadata: ObjectMeta {
                name: name.to_string(),
                uid: new_uid(),
                creation_timestamp: Some(Time::now()),
                ..ObjectMeta::default()
            },
            ..Default::default()
        };
        let create = Command::Create {
            object: Object::Node(node),
        };
        match self.apply(create).await {
            Ok(crate::store::Outcome::Object(o)) => Ok(o),
            Ok(other) => Err(super::unexpected(other)),
            Err(e) if e.code == ErrorCode::AlreadyExists => Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "join refused: the name {name:?} belongs to a node that has joined already; \
                     pick another --name, or, if this machine replaces that node, delete the old one \
                     (`flotilla delete node {name}`) or create a token for the name \
                     (`flotilla token create --node {name}`)"
                ),
            )),
            Err(e) => Err(e),
        }
    }

    /// Counts a join with a counting token. A token that allows no more
    /// joins (another node took its last one first) refuses this one, and
    /// the name `claimed` for it is given back.
    async fn count_use(&self, id: &str, node_name: &str, claimed: Object) -> Result<(), ApiError> {
        let Err(e) = self.apply(Command::UseToken { id: id.to_string() }).await else {
            return Ok(());
        };
        let release = Command::Delete {
            kind: Kind::Node,
            namespace: String::new(),
            name: node_name.to_string(),
            expected_rv: Some(claimed.meta().resource_version),
        };
        if let Err(undo) = self.apply(release).await {
            tracing::warn!(node = node_name, error = %undo, "could not release the name of a refused join");
        }
        Err(match e.code {
            ErrorCode::Invalid | ErrorCode::NotFound => ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "join refused: {}; create a new token with `flotilla token create`",
                    e.message
                ),
            ),
            _ => e,
        })
    }

    /// Checks a join token against the store (linearizably: a token just
    /// created on another master counts) for `usage`; a node token for one
    /// name counts as a node token. Gives the token and what it was made for.
    async fn check_token(
        &self,
        token: &str,
        usage: TokenUsage,
    ) -> Result<(JoinToken, TokenUsage), ApiError> {
        let create = match usage {
            TokenUsage::Master => "`flotilla token create --master`",
            _ => "`flotilla token create`",
        };
        let deny = |why: &str| {
            ApiError::new(
                ErrorCode::Forbidden,
                format!("join refused: {why}; create a new token with {create}"),
            )
        };
        let token = JoinToken::parse(token).map_err(|e| invalid(e.to_string()))?;
        if token.ca_hash != self.pki.ca_hash {
            return Err(deny("the token belongs to another cluster"));
        }
        self.before_read(false).await?;
        let record = self
            .store
            .token(&token.id)
            .map_err(store_err)?
            .ok_or_else(|| deny("unknown token"))?;
        if record.secret_hash != token.secret_hash() {
            return Err(deny("wrong token secret"));
        }
        if record.expires < Time::now() {
            return Err(deny("the token has expired"));
        }
        if let TokenUsage::NodeCounted {
            max_uses: Some(max),
            uses,
            ..
        } = record.usage
        {
            if uses >= max {
                return Err(deny(&format!(
                    "the token has had all the joins it allows ({max})"
                )));
            }
        }
        let fits = record.usage.joins_nodes() == usage.joins_nodes();
        if !fits {
            return Err(deny(match usage {
                TokenUsage::Master => "this token is for joining nodes, not masters",
                _ => "this token is for joining masters, not nodes",
            }));
        }
        Ok((token, record.usage))
    }

    /// A master joins: with a master token it gets the cluster CA (key
    /// included, as every master signs node certificates) and its raft id.
    /// It becomes a member afterwards, once it serves, by asking the leader
    /// ([`crate::raft::Cluster::add_member`]).
    pub async fn join_master(
        &self,
        caller: &Caller,
        token: &str,
        node_id: u64,
        addr: &str,
    ) -> Result<Response, ApiError> {
        super::authorize(caller, &Verb::on(Action::Create, Target::Certificate))?;
        self.check_token(token, TokenUsage::Master).await?;
        if addr.trim().is_empty() {
            return Err(invalid(
                "the joining master gave no address; pass --advertise host:port",
            ));
        }
        let node_id = self
            .cluster
            .reserve_member(node_id, addr)
            .await
            .map_err(store_err)?;
        tracing::info!(node_id, addr, "master joining");
        Ok(Response::MasterJoined {
            node_id,
            cluster: self.pki.cluster.clone(),
            ca_cert_pem: self.pki.ca.key.cert_pem.clone(),
            ca_key_pem: self.pki.ca.key.key_pem.clone(),
            masters: self.masters(),
        })
    }

    /// Creates a join token for `usage` (a node, a named node, a master);
    /// gives it and when it expires. `ttl` zero: [`DEFAULT_TOKEN_TTL`].
    pub async fn create_token(
        &self,
        caller: &Caller,
        ttl: Duration,
        description: String,
        usage: TokenUsage,
    ) -> Result<(String, Time), ApiError> {
        super::authorize(caller, &Verb::on(Action::Create, Target::Token))?;
        match &usage {
            TokenUsage::NodeNamed(name) => check_node_name(name)?,
            TokenUsage::NodeCounted {
                name_prefix,
                max_uses,
                ..
            } => {
                if !name_prefix.is_empty() && !is_name_prefix(name_prefix) {
                    return Err(invalid(format!(
                        "name prefix {name_prefix:?}: lowercase letters, digits, '-' and '.', starting with a letter or digit"
                    )));
                }
                if *max_uses == Some(0) {
                    return Err(invalid(
                        "a token for 0 joins would join nothing; give --uses 1 or more, or leave it out",
                    ));
                }
            }
            _ => {}
        }
        let ttl = if ttl.is_zero() {
            DEFAULT_TOKEN_TTL
        } else {
            ttl
        };
        let (token, record) = new_token(&self.pki.ca_hash, description, ttl, usage);
        let expires = record.expires;
        self.apply(Command::PutToken { record }).await?;
        Ok((token.to_string(), expires))
    }

    /// The join tokens, without their secrets (admins only).
    pub async fn list_tokens(
        &self,
        caller: &Caller,
    ) -> Result<Vec<flotilla_api::protocol::TokenInfo>, ApiError> {
        super::authorize(caller, &Verb::on(Action::List, Target::Token))?;
        self.before_read(false).await?;
        let mut tokens: Vec<flotilla_api::protocol::TokenInfo> = self
            .store
            .tokens()
            .map_err(super::store_err)?
            .into_iter()
            .map(|t| {
                let (kind, uses, max_uses) = match t.usage {
                    TokenUsage::Node => ("node".into(), None, None),
                    TokenUsage::Master => ("master".into(), None, None),
                    TokenUsage::NodeNamed(n) => (format!("node {n}"), None, None),
                    TokenUsage::NodeCounted {
                        name_prefix,
                        max_uses,
                        uses,
                    } => {
                        let kind = if name_prefix.is_empty() {
                            "node".into()
                        } else {
                            format!("node {name_prefix}*")
                        };
                        (kind, Some(uses), max_uses)
                    }
                };
                flotilla_api::protocol::TokenInfo {
                    id: t.id,
                    kind,
                    description: t.description,
                    expires: t.expires,
                    uses,
                    max_uses,
                }
            })
            .collect();
        tokens.sort_by_key(|t| t.expires);
        Ok(tokens)
    }

    /// Revokes a join token: it joins nothing more.
    pub async fn revoke_token(&self, caller: &Caller, id: &str) -> Result<(), ApiError> {
        super::authorize(caller, &Verb::on(Action::Delete, Target::Token))?;
        match self.apply(Command::DeleteToken { id: id.to_string() }).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == ErrorCode::NotFound => Err(ApiError::new(
                ErrorCode::NotFound,
                format!("token {id:?} not found: `flotilla token list` shows the tokens there are (an expired one may have been removed)"),
            )),
            Err(e) => Err(e),
        }
    }

    /// Signs a new certificate for the caller's own identity, whatever the
    /// request asks; gives it and the CA.
    pub async fn renew(
        &self,
        caller: &Caller,
        csr_pem: &str,
    ) -> Result<(String, String), ApiError> {
        super::authorize(caller, &Verb::on(Action::Update, Target::Certificate))?;
        let identity = caller.identity().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "renewing a certificate needs a valid one of this cluster",
            )
        })?;
        let cert_pem = if let Caller::User { .. } = caller {
            self.renew_user(caller, csr_pem).await?
        } else {
            self.pki
                .sign_for(csr_pem, &identity)
                .map_err(|e| invalid(format!("certificate request: {e}")))?
        };
        tracing::info!(caller = %identity, "renewed a certificate");
        Ok((cert_pem, self.pki.ca.key.cert_pem.clone()))
    }

    /// The certificates that matter to the cluster, and when they expire.
    pub fn certificates(&self, caller: &Caller) -> Result<Vec<CertificateStatus>, ApiError> {
        super::authorize(caller, &Verb::on(Action::Get, Target::Cluster))?;
        let id = self.cluster.id();
        let mut all = self.pki.certificates(Some(id));
        for (peer, v) in self.cluster.network().peer_certificates() {
            if peer != id {
                all.push(CertificateStatus {
                    name: format!("master {peer} serving"),
                    not_before: v.not_before,
                    not_after: v.not_after,
                });
            }
        }
        Ok(all)
    }
}

/// Whether `p` can start a node name: what names are made of, from their
/// first character on.
fn is_name_prefix(p: &str) -> bool {
    p.len() <= 200
        && p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// A fresh token and the record the store keeps of it (only the secret's hash).
fn new_token(
    ca_hash: &str,
    description: String,
    ttl: Duration,
    usage: TokenUsage,
) -> (JoinToken, TokenRecord) {
    let token = JoinToken::generate(ca_hash);
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires = Time(Time::now().0.saturating_add(ttl_ms));
    let record = TokenRecord {
        id: token.id.clone(),
        secret_hash: token.secret_hash(),
        expires,
        description,
        usage,
    };
    (token, record)
}

/// Creates a join token without a request (for `flotilla up`, whose node joins its own master).
pub async fn local_token(
    master: &crate::Master,
    description: &str,
    ttl: Duration,
) -> Result<String, StoreError> {
    let (token, record) = new_token(
        &master.pki.ca_hash,
        description.to_string(),
        ttl,
        TokenUsage::Node,
    );
    crate::raft::propose(&master.raft, Command::PutToken { record }).await?;
    Ok(token.to_string())
}
