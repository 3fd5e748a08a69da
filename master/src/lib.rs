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
//! - [`modules`]: removes modules no pod has used for a grace period.
//! - [`nodes`]: live connections of nodes, for requests the master makes to them (logs).
//! - [`wasm`]: checks that an uploaded module is WebAssembly before it is stored.
//! - [`raft`]: openraft's storage over the store (log, state machine, snapshots),
//!   raft messages between masters over QUIC, and [`raft::propose`], through
//!   which every write of the running master goes.
//!
//! [`run`] wires them and runs until the shutdown token fires. A single master
//! is a one-member raft cluster, on the same path several masters will take.

pub mod authz;
pub mod binder;
pub mod lifecycle;
pub mod modules;
pub mod nodes;
pub mod pki;
pub mod raft;
pub mod service;
pub mod store;
pub mod wasm;

use flotilla_api::identity;
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
    /// own) live; at least [`identity::MIN_CERT_LIFETIME`].
    pub cert_lifetime: Duration,
}

/// How a new master joins an existing cluster.
#[derive(Debug, Clone)]
pub struct JoinConfig {
    /// Address of any master of the cluster.
    pub addr: String,
    /// A master join token (`flotilla token create --master`).
    pub token: String,
}

/// The file in the data directory that keeps this master's raft id.
pub const NODE_ID_FILE: &str = "node-id";

/// Present while this master is joining a cluster (it holds the address it
/// joins through): a restart goes on joining instead of founding a cluster.
pub const JOINING_FILE: &str = "joining";

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
    #[error("{0}")]
    Config(String),
    #[error("joining the cluster at {addr}: {message}")]
    Join { addr: String, message: String },
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
    if let Some(image) = backup {
        restore(&raft, image).await?;
    }
    let tls = pki.server_tls()?;
    let endpoint = flotilla_api::net::server_endpoint(config.listen, tls)?;
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

/// Reads and checks a backup before anything is written.
fn read_backup(path: &std::path::Path, config: &MasterConfig) -> Result<store::Image, MasterError> {
    if config.join.is_some() {
        return Err(MasterError::Config(
            "--restore founds a new cluster; it cannot be combined with --join".into(),
        ));
    }
    if config.data_dir.join("state.redb").exists() {
        return Err(MasterError::Config(format!(
            "--restore needs a new data directory; {} already holds a cluster's state",
            config.data_dir.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(|source| MasterError::DataDir {
        path: path.to_path_buf(),
        source,
    })?;
    store::decode_backup(&bytes)
        .map_err(|e| MasterError::Config(format!("{}: {e}", path.display())))
}

/// Writes a backup's contents through raft into the new cluster this master
/// just founded: modules (in chunks when big), then every other object,
/// then the join tokens. Objects keep their uids and creation times; their
/// resourceVersions are new (clients relist after a restore).
async fn restore(raft: &raft::Raft, image: store::Image) -> Result<(), MasterError> {
    use flotilla_api::objects::module_name;
    use store::Command;
    let fail = |e: store::StoreError| MasterError::Raft(format!("restoring the backup: {e}"));
    let (mut modules, mut others) = (std::collections::HashMap::new(), Vec::new());
    for object in image.objects {
        match object {
            flotilla_api::Object::Module(m) => {
                modules.insert(m.metadata.name.clone(), m);
            }
            other => others.push(other),
        }
    }
    let count = (modules.len(), others.len(), image.tokens.len());
    for (digest, bytes) in image.modules {
        let Some(module) = modules.remove(&module_name(&digest)) else {
            continue;
        };
        if bytes.len() <= store::UPLOAD_CHUNK {
            raft::propose(raft, Command::PutModule { module, bytes })
                .await
                .map_err(fail)?;
            continue;
        }
        for (i, chunk) in bytes.chunks(store::UPLOAD_CHUNK).enumerate() {
            let cmd = Command::PutModuleChunk {
                digest: digest.clone(),
                offset: (i * store::UPLOAD_CHUNK) as u64,
                bytes: chunk.to_vec(),
            };
            raft::propose(raft, cmd).await.map_err(fail)?;
        }
        raft::propose(raft, Command::CommitModule { module })
            .await
            .map_err(fail)?;
    }
    for object in others {
        raft::propose(raft, Command::Create { object })
            .await
            .map_err(fail)?;
    }
    for record in image.tokens {
        raft::propose(raft, Command::PutToken { record })
            .await
            .map_err(fail)?;
    }
    tracing::info!(
        modules = count.0,
        objects = count.1,
        tokens = count.2,
        "restored the backup"
    );
    Ok(())
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
    let fail = |message: String| MasterError::Join {
        addr: join.addr.clone(),
        message,
    };
    let token = flotilla_api::identity::JoinToken::parse(&join.token).map_err(|e| {
        fail(format!(
            "{e}; pass the token `flotilla token create --master` printed"
        ))
    })?;
    let tls = flotilla_api::tls::pinned_client_config(&token.ca_hash, ALPN)
        .map_err(|e| fail(e.to_string()))?;
    let client = flotilla_api::net::Client::connect(
        std::slice::from_ref(&join.addr),
        tls,
        "flotilla-master/join",
    )
    .await
    .map_err(|e| fail(e.to_string()))?;
    let req = Request::JoinMaster {
        token: join.token.clone(),
        node_id,
        addr: advertise.to_string(),
    };
    let answer = client.call(&req).await.map_err(|e| fail(e.to_string()));
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
                return Err(fail("the master sent a CA other than the token's".into()));
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
        other => Err(fail(format!("unexpected answer {other:?}"))),
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
    let node_id = config.node_id.unwrap_or(1);
    let client = pki.master_client(node_id)?;
    let network = raft::Network::new(node_id, pki.master_client_tls(&client)?)?;
    let raft_config = raft::raft_config(&config.cluster_name, config.election_timeout)
        .map_err(|e| MasterError::Raft(format!("invalid configuration: {e}")))?;
    let raft = raft::Raft::new(node_id, Arc::new(raft_config), network.clone(), log, sm)
        .await
        .map_err(|e| MasterError::Raft(format!("cannot start: {e}")))?;
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| MasterError::Raft(format!("cannot read raft state: {e}")))?;
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
    cluster: raft::Cluster,
}

impl Running {
    /// Serves until `shutdown` fires, then closes connections and waits for tasks.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), MasterError> {
        let nodes = nodes::NodeConnections::default();
        let heartbeats = lifecycle::Heartbeats::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let node_id = self.cluster.id();
        let ctx = Arc::new(service::Context {
            store: self.store.clone(),
            pki: self.pki.clone(),
            advertise: self.advertise.clone(),
            nodes: nodes.clone(),
            heartbeats: heartbeats.clone(),
            cluster: self.cluster.clone(),
        });
        if let Some(join) = &self.config.join {
            tracker.spawn(become_member(
                self.cluster.clone(),
                self.pki.clone(),
                self.config.data_dir.clone(),
                join.addr.clone(),
                self.advertise[0].clone(),
                shutdown.clone(),
            ));
        }
        let removed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tracker.spawn(stop_when_removed(
            self.raft.clone(),
            self.cluster.removed(),
            node_id,
            self.config.data_dir.clone(),
            removed.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(leader_work(
            self.raft.clone(),
            node_id,
            self.store.clone(),
            heartbeats,
            self.config.node_grace,
            self.config.module_grace,
            shutdown.clone(),
            tracker.clone(),
        ));
        tracker.spawn(raft::check::run(
            self.cluster.clone(),
            self.store.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(renew_certificates(
            self.pki.clone(),
            node_id,
            self.endpoint.clone(),
            self.network.clone(),
            shutdown.clone(),
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
        if removed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(MasterError::Removed { id: node_id });
        }
        Ok(())
    }
}

/// Renews this master's serving and raft client certificates when due, and
/// puts the new ones in use: new connections get them, open ones go on
/// (TLS checks a certificate only at the handshake).
async fn renew_certificates(
    pki: Arc<pki::Pki>,
    node_id: u64,
    endpoint: quinn::Endpoint,
    network: raft::Network,
    shutdown: CancellationToken,
) {
    use flotilla_api::time::Time;
    // Checked at least hourly: a machine that slept or had its clock set
    // forward finds its certificates due without waiting out a long timer.
    const LONGEST_WAIT: Duration = Duration::from_secs(3600);
    const RETRY: Duration = Duration::from_secs(60);
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let now = Time::now();
        let result = (|| -> Result<(), String> {
            let renewed = pki.renew_due(node_id, now).map_err(|e| e.to_string())?;
            if renewed.server {
                let tls = pki.server_tls().map_err(|e| e.to_string())?;
                let quic = flotilla_api::net::quic_server_config(tls).map_err(|e| e.to_string())?;
                endpoint.set_server_config(Some(quic));
                tracing::info!("serving with the renewed certificate");
            }
            if renewed.client {
                let client = pki.master_client(node_id).map_err(|e| e.to_string())?;
                let tls = pki.master_client_tls(&client).map_err(|e| e.to_string())?;
                network.set_client_tls(tls).map_err(|e| e.to_string())?;
                tracing::info!("talking to the other masters with the renewed certificate");
            }
            Ok(())
        })();
        pki.warn_if_expiring(now);
        wait = match result {
            Ok(()) => {
                let until = pki.next_renewal(node_id).since(Time::now()).max(1000);
                Duration::from_millis(until.unsigned_abs()).min(LONGEST_WAIT)
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?RETRY, "cannot renew this master's certificates");
                RETRY
            }
        };
    }
}

/// Whether master `id` has been taken out of an applied membership (a
/// membership entry only applies once committed). An uninitialized raft has
/// no voters and is not "removed": it has not joined yet.
fn removed_from(metrics: &openraft::RaftMetrics<u64, openraft::BasicNode>, id: u64) -> bool {
    let stored = &metrics.membership_config;
    let membership = stored.membership();
    membership.voter_ids().next().is_some()
        && membership.get_node(&id).is_none()
        && stored.log_id().is_some()
        && *stored.log_id() <= metrics.last_applied
}

/// Stops this master once the cluster has removed it, as `flotilla cluster
/// remove` asks: a removed leader would otherwise go on heartbeating (so the
/// others keep following it), and a removed follower would go on calling
/// elections nobody answers. A leader sees it in its own membership; a
/// follower is told by the leader (`told`), which stops replicating to it. A
/// master still joining (its log replays older memberships without it) is
/// left alone.
async fn stop_when_removed(
    raft: raft::Raft,
    mut told: tokio::sync::watch::Receiver<bool>,
    node_id: u64,
    data_dir: PathBuf,
    removed: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut metrics = raft.metrics();
    loop {
        let gone = removed_from(&metrics.borrow_and_update(), node_id) || *told.borrow_and_update();
        if gone && !data_dir.join(JOINING_FILE).exists() {
            tracing::error!(
                node_id,
                "this master was removed from the cluster's membership; stopping"
            );
            removed.store(true, std::sync::atomic::Ordering::SeqCst);
            // A moment for the answer to the request that removed it (a
            // leader removing itself is serving it) to reach the client.
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            shutdown.cancel();
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            changed = told.changed() => if changed.is_err() { return },
        }
    }
}

/// Asks the cluster, through the master this one joined with, to make this
/// master a voting member, until it is one. Nothing to do once it is (a
/// restart of a member); a master that crashed half-way through joining
/// finishes here.
async fn become_member(
    cluster: raft::Cluster,
    pki: Arc<pki::Pki>,
    data_dir: PathBuf,
    join_addr: String,
    advertise: String,
    shutdown: CancellationToken,
) {
    use flotilla_api::protocol::{Request, Response};
    let id = cluster.id();
    let is_voter = |c: &raft::Cluster| {
        let m = c.raft().metrics().borrow().clone();
        let voter = m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        voter
    };
    let mut delay = Duration::from_millis(500);
    while !shutdown.is_cancelled() && !is_voter(&cluster) {
        let attempt = async {
            let client_cert = pki.master_client(id).map_err(|e| e.to_string())?;
            let tls = pki
                .master_client_tls(&client_cert)
                .map_err(|e| e.to_string())?;
            let mut addrs = vec![join_addr.clone()];
            addrs.extend(
                cluster
                    .masters()
                    .into_iter()
                    .filter(|a| *a != join_addr && *a != advertise),
            );
            let client = flotilla_api::net::Client::connect(&addrs, tls, "flotilla-master/member")
                .await
                .map_err(|e| e.to_string())?;
            let req = Request::AddMaster {
                node_id: id,
                addr: advertise.clone(),
            };
            let answer = client.call(&req).await;
            client.conn.close(0u32.into(), b"done");
            match answer {
                Ok(Response::Ok) => Ok(()),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        match attempt.await {
            Ok(()) => {
                tracing::info!(node_id = id, "this master is now a voting member");
                let _ = std::fs::remove_file(data_dir.join(JOINING_FILE));
                return;
            }
            Err(e) => {
                tracing::warn!(node_id = id, error = %e, retry_in = ?delay, "not a member yet");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
    if is_voter(&cluster) {
        // A voter already (a restart after the join finished).
        let _ = std::fs::remove_file(data_dir.join(JOINING_FILE));
    }
}

/// Runs the binder, the node lifecycle and module collection while this
/// master is the leader, and stops them when it is not: two leaders'
/// controllers would fight, and a follower's writes are refused anyway.
#[allow(clippy::too_many_arguments)]
async fn leader_work(
    raft: raft::Raft,
    node_id: u64,
    store: store::Store,
    heartbeats: lifecycle::Heartbeats,
    grace: Duration,
    module_grace: Duration,
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
                tracker.spawn(modules::run(
                    store.clone(),
                    raft.clone(),
                    module_grace,
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
