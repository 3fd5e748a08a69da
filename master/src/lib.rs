//! The Flotilla master: keeps the cluster's desired state and serves it.
//!
//! Layout:
//! - [`store`]: objects, revisions, compare-and-swap and watches on redb; every
//!   write is a [`store::Command`] applied by one state machine.
//! - [`pki`]: the cluster CA, the master's serving certificate, the admin identity.
//! - [`service`]: the QUIC front end: identities, authorization, requests.
//! - [`authz`]: who may do what (admin, viewer, NodeRestriction for nodes).
//! - [`binder`]: places pending pods on Ready nodes that match their selector.
//! - [`lifecycle`]: turns nodes whose heartbeats stop NotReady.
//! - [`nodes`]: live connections of nodes, for requests the master makes to them (logs).
//! - [`raft`]: openraft's storage over the store (log, state machine, snapshots),
//!   raft messages between masters over QUIC, and [`raft::propose`], through
//!   which every write of the running master goes.
//!
//! [`run`] wires them and runs until the shutdown token fires. A single master
//! is a one-member raft cluster, on the same path several masters will take.

pub mod authz;
pub mod binder;
pub mod lifecycle;
pub mod nodes;
pub mod pki;
pub mod raft;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a master is run.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// This master's raft node id, unique among the cluster's masters.
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Addresses clients and nodes use to reach this master (put in its certificate and in hellos).
    pub advertise: Vec<String>,
    pub cluster_name: String,
    /// A node silent this long is NotReady.
    pub node_grace: Duration,
    /// Where to write the admin client config on first start (None: don't).
    pub admin_config: Option<PathBuf>,
}

/// Why the master stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MasterError {
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Net(#[from] flotilla_api::net::NetError),
    #[error(transparent)]
    RaftStore(#[from] raft::RaftStoreError),
    #[error("raft: {0}")]
    Raft(String),
}

/// A running master's handles, for `flotilla up` and tests.
#[derive(Clone)]
pub struct Master {
    /// The local copy of the state: reads only; writes go through [`Master::raft`].
    pub store: store::Store,
    pub pki: Arc<pki::Pki>,
    pub local_addr: SocketAddr,
    pub node_id: u64,
    /// This master's raft; write with [`raft::propose`].
    pub raft: raft::Raft,
}

/// Opens the store and PKI and binds the endpoint; `serve` then runs it.
pub async fn start(config: MasterConfig) -> Result<(Master, Running), MasterError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| MasterError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let mut advertise = config.advertise.clone();
    if advertise.is_empty() {
        advertise.push(default_advertise(config.listen));
    }
    let pki = Arc::new(pki::Pki::load_or_init(
        &config.data_dir.join("pki"),
        &config.cluster_name,
        &advertise,
    )?);
    if let Some(path) = &config.admin_config {
        pki.write_admin_config(path, &advertise)?;
    }
    let store = store::Store::open(&config.data_dir.join("state.redb"), HISTORY_WINDOW)?;
    let (raft, network) = start_raft(&config, &pki, &store, &advertise).await?;
    let tls = pki.server_tls()?;
    let endpoint = flotilla_api::net::server_endpoint(config.listen, tls)?;
    let local_addr = endpoint
        .local_addr()
        .map_err(|source| MasterError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    let master = Master {
        store: store.clone(),
        pki: pki.clone(),
        local_addr,
        node_id: config.node_id,
        raft: raft.clone(),
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
        },
    ))
}

/// Opens the raft log and state machine, starts raft and, on a fresh data
/// directory, makes this master the one member of its cluster.
async fn start_raft(
    config: &MasterConfig,
    pki: &pki::Pki,
    store: &store::Store,
    advertise: &[String],
) -> Result<(raft::Raft, raft::Network), MasterError> {
    let log = raft::LogStore::open(&config.data_dir.join(raft::LOG_FILE))?;
    let sm = raft::StateMachine::open(store.clone(), &config.data_dir.join(raft::SNAPSHOT_FILE))?;
    let client = pki.master_client(&config.data_dir.join("pki"), config.node_id)?;
    let network = raft::Network::new(config.node_id, pki.master_client_tls(&client)?)?;
    let raft_config = raft::raft_config(&config.cluster_name)
        .map_err(|e| MasterError::Raft(format!("invalid configuration: {e}")))?;
    let raft = raft::Raft::new(
        config.node_id,
        Arc::new(raft_config),
        network.clone(),
        log,
        sm,
    )
    .await
    .map_err(|e| MasterError::Raft(format!("cannot start: {e}")))?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| MasterError::Raft(format!("cannot read raft state: {e}")))?;
    // A restarted master keeps the membership in its log; only a fresh one
    // founds its cluster (initializing twice is refused by openraft anyway).
    if !initialized {
        let addr = advertise
            .first()
            .cloned()
            .unwrap_or_else(|| default_advertise(config.listen));
        let members =
            std::collections::BTreeMap::from([(config.node_id, openraft::BasicNode::new(addr))]);
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(
                node_id = config.node_id,
                "founded a one-master raft cluster"
            ),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => {}
            Err(e) => {
                return Err(MasterError::Raft(format!(
                    "cannot initialize membership: {e}"
                )))
            }
        }
    }
    Ok((raft, network))
}

/// Changes kept for watches: enough for nodes and CLIs to resume after a short
/// disconnect without relisting.
const HISTORY_WINDOW: u64 = 10_000;

/// A bound master, ready to serve.
pub struct Running {
    endpoint: quinn::Endpoint,
    store: store::Store,
    pki: Arc<pki::Pki>,
    advertise: Vec<String>,
    config: MasterConfig,
    raft: raft::Raft,
    network: raft::Network,
}

impl Running {
    /// Serves until `shutdown` fires, then closes connections and waits for tasks.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), MasterError> {
        let nodes = nodes::NodeConnections::default();
        let heartbeats = lifecycle::Heartbeats::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let ctx = Arc::new(service::Context {
            store: self.store.clone(),
            pki: self.pki.clone(),
            masters: self.advertise.clone(),
            nodes: nodes.clone(),
            heartbeats: heartbeats.clone(),
            raft: Some(self.raft.clone()),
        });
        tracker.spawn(leader_work(
            self.raft.clone(),
            self.config.node_id,
            self.store.clone(),
            heartbeats,
            self.config.node_grace,
            shutdown.clone(),
            tracker.clone(),
        ));
        tracing::info!(addr = %self.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), "master serving");
        service::accept_loop(self.endpoint.clone(), ctx, shutdown.clone(), &tracker).await;
        self.endpoint.close(0u32.into(), b"master shutting down");
        tracker.close();
        // Give in-flight requests a moment; watches end when their connection closes.
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        self.endpoint.wait_idle().await;
        // After the service: no request is left waiting on raft.
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not shut down cleanly");
        }
        self.network.close();
        Ok(())
    }
}

/// Runs the binder and the node lifecycle while this master is the leader,
/// and stops them when it is not: two leaders' controllers would fight, and a
/// follower's writes are refused anyway.
async fn leader_work(
    raft: raft::Raft,
    node_id: u64,
    store: store::Store,
    heartbeats: lifecycle::Heartbeats,
    grace: Duration,
    shutdown: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
) {
    let mut metrics = raft.metrics();
    let mut leading: Option<CancellationToken> = None;
    loop {
        let is_leader = {
            let m = metrics.borrow_and_update();
            m.current_leader == Some(node_id) && m.state == openraft::ServerState::Leader
        };
        match (is_leader, &leading) {
            (true, None) => {
                tracing::info!(node_id, "leading: starting the binder and node lifecycle");
                let child = shutdown.child_token();
                tracker.spawn(binder::run(store.clone(), raft.clone(), child.clone()));
                tracker.spawn(lifecycle::run(
                    store.clone(),
                    raft.clone(),
                    heartbeats.clone(),
                    grace,
                    child.clone(),
                ));
                leading = Some(child);
            }
            (false, Some(child)) => {
                tracing::info!(
                    node_id,
                    "no longer leading: stopping the binder and node lifecycle"
                );
                child.cancel();
                leading = None;
            }
            _ => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// Runs a master until `shutdown` fires.
pub async fn run(config: MasterConfig, shutdown: CancellationToken) -> Result<(), MasterError> {
    let (_, running) = start(config).await?;
    running.serve(shutdown).await
}

fn default_advertise(listen: SocketAddr) -> String {
    if listen.ip().is_unspecified() {
        format!("127.0.0.1:{}", listen.port())
    } else {
        listen.to_string()
    }
}
