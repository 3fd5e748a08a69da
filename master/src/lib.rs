//! The Flotilla master: keeps the cluster's desired state and serves it.
//!
//! Layout:
//! - [`store`]: objects, revisions, compare-and-swap and watches on redb; every
//!   write is a [`store::Command`] applied by one state machine.
//! - [`pki`]: the cluster CA, the master's serving certificate, the admin identity.
//! - [`apiserver`]: the API core every front end and every controller goes
//!   through: typed verbs taking a caller, authorization, admission.
//! - [`frontend`]: thin translators from a wire to the core (QUIC today).
//! - [`scheduler`]: where pending pods go (filters, scores, preemption), pure.
//! - `controllers::node_lifecycle`: turns nodes whose heartbeats stop NotReady.
//! - [`modules`]: removes modules no pod has used for a grace period.
//! - [`nodes`]: live connections of nodes, for requests the master makes to them (logs).
//! - [`wasm`]: checks that an uploaded module is WebAssembly before it is stored.
//! - [`raft`]: openraft's storage over the store (log, state machine, snapshots),
//!   raft messages between masters over QUIC, and [`raft::propose`], through
//!   which every write of the running master goes.
//! - `bootstrap`: [`start`]: checks the settings, prepares the data directory
//!   (this master's id, the marker of a join in progress), fetches the cluster
//!   CA when joining, starts raft and binds the endpoint.
//! - `backup`: founds the cluster from a backup (`--restore`).
//! - `membership`: a joining master asks to become a voter; a removed one stops.
//! - `controllers`: the controller manager (the scheduler's loop, the node
//!   lifecycle and module collection while this master leads) and the
//!   control-loop runtime (shared cache, work queue).
//! - `renewal`: renews this master's own certificates and puts them in use.
//! - this file: [`MasterConfig`], [`MasterError`], the [`Master`] handles,
//!   [`Running::serve`] and [`run`].
//!
//! [`run`] wires them and runs until the shutdown token fires. A single master
//! is a one-member raft cluster, on the same path several masters will take.

pub mod apiserver;
mod backup;
mod bootstrap;
pub mod code;
pub mod controllers;
pub mod frontend;
mod membership;
pub mod modules;
pub mod nodes;
pub mod pki;
pub mod raft;
mod renewal;
pub mod scheduler;
pub mod secrets;
pub mod store;
pub mod wasm;

pub use bootstrap::{start, JOINING_FILE, NODE_ID_FILE};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a master is run.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// This master's raft node id, unique among the cluster's masters. None:
    /// the id kept in the data directory, else 1 for a founding master or
    /// one the cluster picks for a joining one.
    pub node_id: Option<u64>,
    /// Join the cluster of the master at this address instead of founding one.
    pub join: Option<JoinConfig>,
    /// Found the cluster from this backup (`flotilla cluster snapshot`); the
    /// data directory must be new.
    pub restore: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Addresses clients and nodes use to reach this master (put in its certificate and in hellos).
    pub advertise: Vec<String>,
    pub cluster_name: String,
    /// A node silent this long is NotReady.
    pub node_grace: Duration,
    /// A module no pod has used for this long is removed (at least
    /// [`modules::MIN_GRACE`]; [`modules::DEFAULT_GRACE`] unless told).
    pub module_grace: Duration,
    /// Raft's election timeout (see [`raft::raft_config`]); within
    /// [`raft::ELECTION_TIMEOUT_RANGE`].
    pub election_timeout: Duration,
    /// Where to write the admin client config on first start (None: don't).
    pub admin_config: Option<PathBuf>,
    /// Replace a client config at `admin_config` that belongs to another
    /// cluster (otherwise the master refuses to start rather than lose it).
    pub replace_config: bool,
    /// How long the certificates this master issues (nodes', users', its
    /// own) live; at least
    /// [`identity::MIN_CERT_LIFETIME`](flotilla_api::identity::MIN_CERT_LIFETIME).
    pub cert_lifetime: Duration,
    /// How long Events are kept, and how many at most.
    pub event_retention: controllers::events::Retention,
    /// Compiles modules for the nodes' engines ([`code`]); None: nodes
    /// compile by themselves.
    pub code_compiler: Option<code::Compiler>,
}

/// How a new master joins an existing cluster.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// Address of any master of the cluster.
    pub addr: String,
    /// A master join token (`flotilla token create --master`).
    pub token: String,
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
    /// Raft could not be set up, started or given its first membership, or
    /// could not write a restored backup; `doing` says which.
    #[error("raft: {doing}: {source}")]
    Raft {
        doing: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The flags contradict each other or the data directory.
    #[error("{0}")]
    Config(String),
    /// The backup given to `--restore` is not one this master can restore.
    #[error("{}: {source}", path.display())]
    Backup {
        path: PathBuf,
        #[source]
        source: store::StoreError,
    },
    /// The join token given with `--join` does not parse.
    #[error("joining the cluster at {addr}: {source}; pass the token `flotilla token create --master` printed")]
    JoinToken {
        addr: String,
        #[source]
        source: flotilla_api::identity::IdentityError,
    },
    /// The master at `addr` could not be reached or asked for the cluster CA.
    #[error("joining the cluster at {addr}: {source}")]
    Join {
        addr: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The master at `addr` answered, but not as a master of the token's
    /// cluster does (the message says how).
    #[error("joining the cluster at {addr}: {message}")]
    JoinAnswer { addr: String, message: String },
    /// This master is no longer in the cluster's membership.
    #[error(
        "master {id} was removed from the cluster (`flotilla cluster remove {id}`) and has stopped; \
         its data directory belongs to the old membership: delete it, and join this machine \
         anew (`flotilla token create --master`, then `flotilla master --join`) if it should serve again"
    )]
    Removed { id: u64 },
}

/// A running master's handles, for `flotilla up` and tests.
#[derive(Clone)]
pub struct Master {
    /// The local copy of the state: reads only; writes go through [`Master::raft`].
    pub store: store::Store,
    pub pki: Arc<pki::Pki>,
    pub local_addr: SocketAddr,
    pub node_id: u64,
    /// This master's raft; the leader's own loops write with [`raft::propose`].
    pub raft: raft::Raft,
    /// Writes and reads that reach the leader from any master.
    pub cluster: raft::Cluster,
}

/// A bound master, ready to serve.
pub struct Running {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) store: store::Store,
    pub(crate) pki: Arc<pki::Pki>,
    pub(crate) advertise: Vec<String>,
    pub(crate) config: MasterConfig,
    pub(crate) raft: raft::Raft,
    pub(crate) network: raft::Network,
    pub(crate) cluster: raft::Cluster,
}

impl Running {
    /// Serves until `shutdown` fires, then closes connections and waits for tasks.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), MasterError> {
        let nodes = nodes::NodeConnections::default();
        let heartbeats = controllers::node_lifecycle::Heartbeats::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let node_id = self.cluster.id();
        let api = apiserver::ApiServer {
            store: self.store.clone(),
            pki: self.pki.clone(),
            advertise: self.advertise.clone(),
            nodes,
            heartbeats,
            cluster: self.cluster.clone(),
            node_watches: apiserver::NodeWatches::default(),
            code: code::CodeShop::new(
                self.config.code_compiler.clone(),
                self.config.data_dir.join("code"),
            ),
        };
        tracker.spawn(code::sweep_loop(api.clone(), shutdown.clone()));
        if let Some(join) = &self.config.join {
            tracker.spawn(membership::become_member(
                self.cluster.clone(),
                self.pki.clone(),
                self.config.data_dir.clone(),
                join.addr.clone(),
                self.advertise[0].clone(),
                shutdown.clone(),
            ));
        }
        let removed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tracker.spawn(membership::stop_when_removed(
            self.raft.clone(),
            self.cluster.removed(),
            node_id,
            self.config.data_dir.clone(),
            removed.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(controllers::run_while_leading(
            api.clone(),
            self.config.node_grace,
            self.config.module_grace,
            self.config.event_retention,
            shutdown.clone(),
            tracker.clone(),
        ));
        tracker.spawn(raft::check::run(
            self.cluster.clone(),
            self.store.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(renewal::renew_certificates(
            self.pki.clone(),
            node_id,
            self.endpoint.clone(),
            self.network.clone(),
            shutdown.clone(),
        ));
        tracing::info!(addr = %self.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(), "master serving");
        frontend::quic::accept_loop(self.endpoint.clone(), api, shutdown.clone(), &tracker).await;
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
        if removed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(MasterError::Removed { id: node_id });
        }
        Ok(())
    }
}

/// Runs a master until `shutdown` fires.
pub async fn run(config: MasterConfig, shutdown: CancellationToken) -> Result<(), MasterError> {
    let (_, running) = start(config).await?;
    running.serve(shutdown).await
}
