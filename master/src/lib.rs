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
//! - [`raft`]: openraft's storage over the store (log, state machine, snapshots)
//!   and raft messages between masters over QUIC; not wired into [`run`] yet.
//!
//! [`run`] wires them and runs until the shutdown token fires.

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
}

/// A running master's handles, for `flotilla up` and tests.
#[derive(Clone)]
pub struct Master {
    pub store: store::Store,
    pub pki: Arc<pki::Pki>,
    pub local_addr: SocketAddr,
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
    };
    Ok((
        master,
        Running {
            endpoint,
            store,
            pki,
            advertise,
            config,
        },
    ))
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
            // Raft is not wired into the running master yet.
            raft: None,
        });
        tracker.spawn(binder::run(self.store.clone(), shutdown.clone()));
        tracker.spawn(lifecycle::run(
            self.store.clone(),
            heartbeats,
            self.config.node_grace,
            shutdown.clone(),
        ));
        tracing::info!(addr = %self.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), "master serving");
        service::accept_loop(self.endpoint.clone(), ctx, shutdown.clone(), &tracker).await;
        self.endpoint.close(0u32.into(), b"master shutting down");
        tracker.close();
        // Give in-flight requests a moment; watches end when their connection closes.
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        self.endpoint.wait_idle().await;
        Ok(())
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
