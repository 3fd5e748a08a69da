//! Joining a cluster: a node without credentials proves it holds a join token
//! over a connection that trusts only the CA the token pins, sends a CSR for a
//! key that never leaves the node, and keeps the signed certificate in
//! `<data-dir>/credentials.yaml` for every later (mutual TLS) connection.

use crate::NodeError;
use flotilla_api::config::ClientConfigFile;
use flotilla_api::identity::{new_csr, Identity, JoinToken};
use flotilla_api::net::{write_private_file, Client};
use flotilla_api::protocol::{Request, Response, ALPN};
use std::path::Path;

/// File in the data directory holding the node's credentials.
pub const CREDENTIALS_FILE: &str = "credentials.yaml";

/// Loads the node's credentials, joining the cluster first if it has none.
pub async fn credentials(
    data_dir: &Path,
    name: &str,
    masters: &[String],
    token: Option<&str>,
) -> Result<ClientConfigFile, NodeError> {
    let path = data_dir.join(CREDENTIALS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let mut creds = ClientConfigFile::parse(&text)
                .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))?;
            // Addresses given on the command line come first; the rest were learned at join.
            let mut all: Vec<String> = masters.to_vec();
            all.extend(
                creds
                    .masters
                    .iter()
                    .filter(|m| !masters.contains(m))
                    .cloned(),
            );
            creds.masters = all;
            return Ok(creds);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(NodeError::Config(format!("{}: {e}", path.display()))),
    }
    if masters.is_empty() {
        return Err(NodeError::Config(
            "no master address: pass --master host:port (e.g. --master 192.168.1.10:7443)".into(),
        ));
    }
    let token = token.ok_or_else(|| {
        NodeError::Config(format!(
            "this node has not joined a cluster yet ({} has no {CREDENTIALS_FILE}): pass --token from `flotilla token create`",
            data_dir.display()
        ))
    })?;
    let token = JoinToken::parse(token).map_err(|e| NodeError::Config(e.to_string()))?;
    let tls = flotilla_api::tls::pinned_client_config(&token.ca_hash, ALPN)
        .map_err(|e| NodeError::Config(e.to_string()))?;
    let client = Client::connect(masters, tls, "flotilla-node/join").await?;
    let (csr_pem, key_pem) =
        new_csr(&Identity::Node(name.to_string())).map_err(|e| NodeError::Config(e.to_string()))?;
    let req = Request::Join {
        token: token.to_string(),
        node_name: name.to_string(),
        csr_pem,
    };
    let (cert_pem, ca_pem, learned) = match client.call(&req).await? {
        Response::Joined {
            cert_pem,
            ca_pem,
            masters,
        } => (cert_pem, ca_pem, masters),
        other => {
            return Err(NodeError::Config(format!(
                "unexpected join answer: {other:?}"
            )))
        }
    };
    client.conn.close(0u32.into(), b"joined");
    let mut all: Vec<String> = masters.to_vec();
    all.extend(learned.into_iter().filter(|m| !masters.contains(m)));
    let creds = ClientConfigFile {
        cluster: String::new(),
        masters: all,
        ca_pem,
        cert_pem,
        key_pem,
        namespace: String::new(),
    };
    write_private_file(&path, &creds.render())
        .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))?;
    tracing::info!(node = name, "joined the cluster");
    Ok(creds)
}

/// The masters to fail over among after a master listed `told` (every
/// member's address): what we knew, then the new ones. None when nothing is new.
pub fn learn_masters(known: &[String], told: &[String]) -> Option<Vec<String>> {
    let new: Vec<&String> = told.iter().filter(|m| !known.contains(m)).collect();
    if new.is_empty() {
        return None;
    }
    let mut all = known.to_vec();
    all.extend(new.into_iter().cloned());
    Some(all)
}

/// Asks the master behind `client` (reached with the node's current,
/// still valid certificate) for a new certificate for a new key, and keeps
/// it in the credentials file. The old key is dropped with the old
/// certificate: a copied credentials file stops working at its expiry.
pub async fn renew(
    client: &Client,
    data_dir: &Path,
    name: &str,
    creds: &ClientConfigFile,
) -> Result<ClientConfigFile, NodeError> {
    let (csr_pem, key_pem) =
        new_csr(&Identity::Node(name.to_string())).map_err(|e| NodeError::Config(e.to_string()))?;
    let (cert_pem, ca_pem) = match client.call(&Request::RenewCertificate { csr_pem }).await? {
        Response::Renewed { cert_pem, ca_pem } => (cert_pem, ca_pem),
        other => {
            return Err(NodeError::Config(format!(
                "unexpected renewal answer: {other:?}"
            )))
        }
    };
    let renewed = ClientConfigFile {
        cert_pem,
        key_pem,
        ca_pem,
        ..creds.clone()
    };
    // A certificate this node cannot use would lock it out: check it first.
    flotilla_api::tls::client_config(&renewed.ca_pem, renewed.client_key().as_ref(), ALPN)
        .map_err(|e| NodeError::Config(format!("the renewed certificate is not usable: {e}")))?;
    save_credentials(data_dir, &renewed)?;
    Ok(renewed)
}

/// Rewrites the node's credentials file (e.g. with newly learned masters).
pub fn save_credentials(data_dir: &Path, creds: &ClientConfigFile) -> Result<(), NodeError> {
    let path = data_dir.join(CREDENTIALS_FILE);
    write_private_file(&path, &creds.render())
        .map_err(|e| NodeError::Config(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_masters_come_after_known_ones() {
        let known = vec!["a:1".to_string(), "b:1".to_string()];
        assert_eq!(learn_masters(&known, &["b:1".into(), "a:1".into()]), None);
        assert_eq!(
            learn_masters(&known, &["c:1".into(), "a:1".into()]),
            Some(vec!["a:1".into(), "b:1".into(), "c:1".into()])
        );
    }
}
