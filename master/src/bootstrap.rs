//! Bringing a master up to the point where it can serve: checks the
//! settings, prepares the data directory (this master's raft id, the marker of
//! a join in progress), fetches the cluster CA when joining, restores a backup
//! when founding from one, starts raft and binds the endpoint. [`start`] does
//! it all; [`Running::serve`](crate::Running::serve) takes over from there.

use crate::backup::{read_backup, restore};
use crate::{modules, pki, raft, store, JoinConfig, Master, MasterConfig, MasterError, Running};
use flotilla_api::identity;
use std::net::SocketAddr;
use std::sync::Arc;

/// The file in the data directory that keeps this master's raft id.
pub const NODE_ID_FILE: &str = "node-id";

/// Present while this master is joining a cluster (it holds the address it
/// joins through): a restart goes on joining instead of founding a cluster.
pub const JOINING_FILE: &str = "joining";

/// Changes kept for watches: enough for nodes and CLIs to resume after a short
/// disconnect without relisting.
const HISTORY_WINDOW: u64 = 10_000;

/// Opens the store and PKI and binds the endpoint; `serve` then runs it.
pub async fn start(config: MasterConfig) -> Result<(Master, Running), MasterError> {
    // Settings first: a bad one must not leave a half-made data directory.
    let (shortest, longest) = raft::ELECTION_TIMEOUT_RANGE;
    if !(shortest..=longest).contains(&config.election_timeout) {
        return Err(MasterError::Config(format!(
            "an election timeout of {:?} is outside {shortest:?}..={longest:?}; the default is {:?}",
            config.election_timeout,
            raft::DEFAULT_ELECTION_TIMEOUT
        )));
    }
    if config.module_grace < modules::MIN_GRACE {
        return Err(MasterError::Config(format!(
            "a module grace period of {:?} is shorter than the least, {:?}; the default is {:?}",
            config.module_grace,
            modules::MIN_GRACE,
            modules::DEFAULT_GRACE
        )));
    }
    if config.cert_lifetime < identity::MIN_CERT_LIFETIME {
        return Err(MasterError::Config(format!(
            "a certificate lifetime of {:?} is shorter than the least, {:?}; the default is a year (365d)",
            config.cert_lifetime,
            identity::MIN_CERT_LIFETIME
        )));
    }
    // The port next: one in use must fail before anything is made or started.
    let socket = flotilla_api::net::server_socket(config.listen)?;
    flotilla_api::perms::create_dir(&config.data_dir).map_err(|source| MasterError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    warn_exposed(&config.data_dir);
    let mut advertise = config.advertise.clone();
    if advertise.is_empty() {
        advertise.push(default_advertise(config.listen));
    }
    let mut cluster_name = config.cluster_name.clone();
    let backup = match &config.restore {
        None => None,
        Some(path) => Some(read_backup(path, &config)?),
    };
    let stored_id = read_node_id(&config.data_dir)?;
    if let (Some(stored), Some(asked)) = (stored_id, config.node_id) {
        if stored != asked {
            return Err(MasterError::Config(format!(
                "{} belongs to master {stored}, not {asked}; drop --node-id or use another --data-dir",
                config.data_dir.display()
            )));
        }
    }
    let pki_dir = config.data_dir.join("pki");
    let mut joined_id = None;
    if let Some(join) = &config.join {
        if !pki_dir.join("ca.crt").exists() {
            // Before anything else: from now on this data directory joins
            // and never founds a cluster of its own.
            write_joining(&config.data_dir, &join.addr)?;
            let (id, name) = fetch_cluster_ca(
                join,
                stored_id.or(config.node_id).unwrap_or(0),
                &advertise[0],
                &pki_dir,
            )
            .await?;
            joined_id = Some(id);
            cluster_name = name;
        }
    }
    let node_id = stored_id.or(joined_id).or(config.node_id).unwrap_or(1);
    if stored_id.is_none() {
        write_node_id(&config.data_dir, node_id)?;
    }
    // Whether (and through whom) this master is still joining: from the
    // flags on the first start, from the marker file on a restart until the
    // master is a voter.
    let joining = match (&config.join, read_joining(&config.data_dir)?) {
        (Some(join), marker) => marker.or(Some(join.addr.clone())),
        (None, marker) => marker,
    };
    let config = MasterConfig {
        join: joining.clone().map(|addr| JoinConfig {
            addr,
            token: config
                .join
                .as_ref()
                .map(|j| j.token.clone())
                .unwrap_or_default(),
        }),
        ..config
    };
    let config = MasterConfig {
        node_id: Some(node_id),
        cluster_name,
        ..config
    };
    let pki = Arc::new(pki::Pki::load_or_init(
        &pki_dir,
        &config.cluster_name,
        &advertise,
        config.cert_lifetime,
    )?);
    if let Some(path) = &config.admin_config {
        pki.check_admin_config(path, config.replace_config)?;
    }
    let store = store::Store::open(&config.data_dir.join("state.redb"), HISTORY_WINDOW)?;
    let (raft, network) = start_raft(&config, &pki, &store, &advertise).await?;
    let serving = async {
        if let Some(image) = backup {
            restore(&raft, image).await?;
        }
        let tls = pki.server_tls()?;
        let endpoint = flotilla_api::net::server_endpoint_on(socket, tls)?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| MasterError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        // Only now that the master listens: one that fails to start must not
        // leave a config pointing at a cluster that is not there.
        if let Some(path) = &config.admin_config {
            pki.write_admin_config(path, &advertise, config.replace_config)?;
        }
        Ok::<_, MasterError>((endpoint, local_addr))
    };
    let (endpoint, local_addr) = match serving.await {
        Ok(s) => s,
        Err(e) => {
            // Raft stops before the error is reported, so the error is the
            // last word, not raft's complaints about its tasks going away.
            if let Err(stop) = raft.shutdown().await {
                tracing::debug!(error = %stop, "raft did not shut down cleanly");
            }
            network.close();
            return Err(e);
        }
    };
    let cluster = raft::Cluster::new(raft.clone(), network.clone(), &config.cluster_name);
    let master = Master {
        store: store.clone(),
        pki: pki.clone(),
        local_addr,
        node_id,
        raft: raft.clone(),
        cluster: cluster.clone(),
    };
    Ok((
        master,
        Running {
            endpoint,
            store,
            pki,
            advertise,
            config,
            raft,
            network,
            cluster,
        },
    ))
}

/// Logs one warning, with the `chmod` to run, for each path in the data
/// directory that other users of the machine can reach: it holds the CA's
/// key and every pod's env values. Modes are reported, not changed: they may
/// be the operator's choice.
fn warn_exposed(dir: &std::path::Path) {
    for exposed in flotilla_api::perms::exposed(dir) {
        tracing::warn!("{exposed}");
    }
}

fn read_joining(dir: &std::path::Path) -> Result<Option<String>, MasterError> {
    let path = dir.join(JOINING_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string()).filter(|a| !a.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MasterError::DataDir { path, source }),
    }
}

fn write_joining(dir: &std::path::Path, addr: &str) -> Result<(), MasterError> {
    let path = dir.join(JOINING_FILE);
    flotilla_api::net::write_private_file(&path, &format!("{addr}\n"))
        .map_err(|source| MasterError::DataDir { path, source })
}

fn read_node_id(dir: &std::path::Path) -> Result<Option<u64>, MasterError> {
    let path = dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            MasterError::Config(format!(
                "{} does not hold a master id ({:?}); it should hold the number this master was given",
                path.display(),
                text.trim()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(MasterError::DataDir { path, source }),
    }
}

fn write_node_id(dir: &std::path::Path, id: u64) -> Result<(), MasterError> {
    let path = dir.join(NODE_ID_FILE);
    flotilla_api::net::write_private_file(&path, &format!("{id}\n"))
        .map_err(|source| MasterError::DataDir { path, source })
}

/// Asks a master of the cluster for the cluster CA with a master join token,
/// over a connection that trusts only the CA the token pins, and keeps it in
/// `pki_dir`. Gives back this master's id and the cluster's name.
async fn fetch_cluster_ca(
    join: &JoinConfig,
    node_id: u64,
    advertise: &str,
    pki_dir: &std::path::Path,
) -> Result<(u64, String), MasterError> {
    use flotilla_api::protocol::{Request, Response, ALPN};
    let fail = |e: Box<dyn std::error::Error + Send + Sync>| MasterError::Join {
        addr: join.addr.clone(),
        source: e,
    };
    let refuse = |message: String| MasterError::JoinAnswer {
        addr: join.addr.clone(),
        message,
    };
    let token = flotilla_api::identity::JoinToken::parse(&join.token).map_err(|source| {
        MasterError::JoinToken {
            addr: join.addr.clone(),
            source,
        }
    })?;
    let tls = flotilla_api::tls::pinned_client_config(&token.ca_hash, ALPN)
        .map_err(|e| fail(e.into()))?;
    let client = flotilla_api::net::Client::connect(
        std::slice::from_ref(&join.addr),
        tls,
        "flotilla-master/join",
    )
    .await
    .map_err(|e| fail(e.into()))?;
    let req = Request::JoinMaster {
        token: join.token.clone(),
        node_id,
        addr: advertise.to_string(),
    };
    let answer = client.call(&req).await.map_err(|e| fail(e.into()));
    client.conn.close(0u32.into(), b"joined");
    match answer? {
        Response::MasterJoined {
            node_id,
            cluster,
            ca_cert_pem,
            ca_key_pem,
            ..
        } => {
            if flotilla_api::identity::ca_hash(&ca_cert_pem)
                .ok()
                .as_deref()
                != Some(token.ca_hash.as_str())
            {
                return Err(refuse("the master sent a CA other than the token's".into()));
            }
            // The key first: a CA certificate without its key would read as
            // a half-written directory.
            pki::write_private(&pki_dir.join("ca.key"), &ca_key_pem)?;
            pki::write_private(&pki_dir.join("ca.crt"), &ca_cert_pem)?;
            tracing::info!(
                node_id,
                cluster,
                "received the cluster CA; joining as master {node_id}"
            );
            Ok((node_id, cluster))
        }
        other => Err(refuse(format!("unexpected answer {other:?}"))),
    }
}

/// Opens the raft log and state machine, starts raft and, on a fresh data
/// directory, makes this master the one member of its cluster.
async fn start_raft(
    config: &MasterConfig,
    pki: &pki::Pki,
    store: &store::Store,
    advertise: &[String],
) -> Result<(raft::Raft, raft::Network), MasterError> {
    let log_path = config.data_dir.join(raft::LOG_FILE);
    let new_log = !log_path.exists();
    let log = raft::LogStore::open(&log_path)?;
    // The log store creates its file with the default mode.
    if new_log {
        flotilla_api::perms::restrict_file(&log_path).map_err(|source| MasterError::DataDir {
            path: log_path.clone(),
            source,
        })?;
    }
    let sm = raft::StateMachine::open(store.clone(), &config.data_dir.join(raft::SNAPSHOT_FILE))?;
    log.guard_purges(sm.purge_guard());
    let node_id = config.node_id.unwrap_or(1);
    let client = pki.master_client(node_id)?;
    let network = raft::Network::new(node_id, pki.master_client_tls(&client)?)?;
    let raft_config = raft::raft_config(&config.cluster_name, config.election_timeout)
        .map_err(|e| raft_failed("invalid configuration", e))?;
    let raft = raft::Raft::new(node_id, Arc::new(raft_config), network.clone(), log, sm)
        .await
        .map_err(|e| raft_failed("cannot start", e))?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| raft_failed("cannot read raft state", e))?;
    // A restarted master keeps the membership in its log; only a fresh one
    // founds its cluster (initializing twice is refused by openraft anyway),
    // and one that joins waits to be added by the leader instead.
    if !initialized && config.join.is_none() {
        let addr = advertise
            .first()
            .cloned()
            .unwrap_or_else(|| default_advertise(config.listen));
        let members = std::collections::BTreeMap::from([(node_id, openraft::BasicNode::new(addr))]);
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(node_id, "founded a one-master raft cluster"),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => {}
            Err(e) => return Err(raft_failed("cannot initialize membership", e)),
        }
    }
    Ok((raft, network))
}

/// [`MasterError::Raft`], saying what raft was doing.
fn raft_failed(
    doing: &'static str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> MasterError {
    MasterError::Raft {
        doing,
        source: e.into(),
    }
}

fn default_advertise(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("127.0.0.1:{}", listen.port())
    } else {
        listen.to_string()
    }
}
