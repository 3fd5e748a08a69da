//! The node agent (our kubelet). It keeps three loops:
//! - the connection loop: connect to a master (failing over among all known,
//!   with back-off), register the Node, heartbeat, list and watch the pods
//!   bound here, and reconcile the workers with them;
//! - the report loop: the latest status of each pod, sent when a master is
//!   connected and kept until one takes it;
//! - the log server: answers the master's log requests over the node's own
//!   connection.
//!
//! Workers are started from the local store before any master answers, so a
//! node restarted while the masters are down runs its pods again.

use crate::join;
use crate::local::LocalStore;
use crate::logs::{Follower, LogStore};
use crate::runtime::Runtime;
use crate::worker::{self, WorkerCtx, WorkerHandle};
use crate::NodeError;
use flotilla_api::config::ClientConfigFile;
use flotilla_api::identity::Validity;
use flotilla_api::net::{read_frame, write_frame, Client, NetError};
use flotilla_api::objects::{NodeCapacity, NodeEngine, NodeInfo, PodPhase};
use flotilla_api::protocol::{
    status_batches, ApiError, ErrorCode, EventType, ListCollector, ListOptions, ListStreamError,
    LogOptions, Request, Response, WatchOptions, ALPN,
};
use flotilla_api::time::Time;
use flotilla_api::{annotations, labels, Kind, Node, Object, ObjectMeta, Pod};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How a node is run.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub name: String,
    /// Master addresses given by the operator (more are learned at join).
    pub masters: Vec<String>,
    /// A join token, needed only the first time.
    pub token: Option<String>,
    /// Extra labels for the Node object.
    pub labels: BTreeMap<String, String>,
    /// How much of the modules no pod uses is kept, and for how long.
    pub module_cache: crate::ModuleCacheConfig,
    /// How much memory and time one module's compilation may take.
    pub compile: crate::runtime::CompileLimits,
    /// Interfaces withheld from guests (`--deny`): not linked, not reported.
    pub deny: crate::runtime::Deny,
    /// What of the machine the node keeps for itself, not for pods.
    pub reserve: crate::node_status::Reserve,
    /// Most pods bound here; None: [`crate::node_status::default_max_pods`].
    pub max_pods: Option<u32>,
    /// Host directories pods may mount as `hostPath` volumes (none: no
    /// host path at all).
    pub allowed_host_paths: Vec<PathBuf>,
    /// Where the node proxy listens; None: this node serves no Service
    /// (its http pods are still reached through other nodes' proxies).
    pub proxy: Option<crate::proxy::ProxyConfig>,
    /// The engine, pool and runtime threads for the device
    /// ([`crate::runtime::device`]).
    pub engine: crate::runtime::device::Profile,
    /// Ask the masters for modules' code compiled for this node's engine
    /// before compiling here (`--no-precompiled-code` turns it off).
    pub precompiled: bool,
    /// Once joined, give back the pages of the binary's code that only
    /// starting ran ([`crate::memory`]): for a process that is only a node,
    /// not one that is also a busy master.
    pub release_startup_code: bool,
    /// How much of each pod's output is kept on disk.
    pub logs: crate::logs::LogLimits,
}

/// How often the node tells the master it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// The reason the master gives a pod it evicted from a lost node without
/// an owner to replace it (and pods of a node not ready, while it is not).
const NODE_LOST: &str = "NodeLost";
/// Longest wait between reconnection attempts.
const MAX_RECONNECT: Duration = Duration::from_secs(5);
/// The first wait after a failure (before jitter), and the wait after a
/// session that ended having lasted.
const MIN_RECONNECT: Duration = Duration::from_millis(200);
/// A session that lasted this long was healthy: the back-off starts over.
/// A shorter one failed as surely as a connection that failed (its list or
/// watch refused, say): reconnecting at once would loop as fast as the
/// master answers, dozens of times a second.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// How long after a failed certificate renewal the next is tried.
const RENEW_RETRY: Duration = Duration::from_secs(60);
/// Most bytes of log text in one frame (frames stay far below `MAX_FRAME`).
const LOG_CHUNK: usize = 256 << 10;
/// How often undelivered status reports are retried.
const REPORT_RETRY: Duration = Duration::from_secs(1);

struct Agent {
    name: String,
    ctx: Arc<WorkerCtx>,
    workers: HashMap<String, WorkerHandle>,
    logs: Arc<LogStore>,
    /// What is held, as this connection's registration reported it.
    reported: crate::node_status::Reported,
    /// Where other nodes reach this node's proxy (empty: no proxy).
    proxy_endpoint: String,
}

fn pod_key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace, p.metadata.name)
}

impl Agent {
    /// Makes sure a worker runs `pod` (replacing one for an older pod of the same name).
    fn ensure(&mut self, pod: Pod) {
        let key = pod_key(&pod);
        // Deleted, and waiting only for its finalizers: it runs no more.
        if pod.metadata.is_deleting() {
            self.remove(&key);
            return;
        }
        // Evicted while this node was out of reach (its owner-less pods are
        // marked Failed, NodeLost, by the master): stop it and keep it ended.
        let evicted = pod.status.phase == PodPhase::Failed && pod.status.reason == NODE_LOST;
        if let Some(w) = self
            .workers
            .get(&key)
            .filter(|w| w.uid == pod.metadata.uid && !w.task.is_finished() && !evicted)
        {
            // The master marked the pod Unknown while this node was out of
            // reach; nodes never report Unknown, so the real status is ours.
            if pod.status.phase == PodPhase::Unknown {
                w.report_again(&self.ctx.reports);
            }
            return;
        }
        if let Some(old) = self.workers.remove(&key) {
            old.stop.cancel();
            // A new pod of the same name: the old one's logs go once its
            // program has stopped writing them.
            if old.uid != pod.metadata.uid {
                let dir = self.logs.forget(&key);
                tokio::spawn(async move {
                    let _ = old.task.await;
                    if let Some(dir) = dir {
                        let _ = tokio::task::spawn_blocking(move || crate::logs::remove_dir(&dir))
                            .await;
                    }
                });
            }
        }
        if let Err(e) = self.ctx.local.put_pod(&pod) {
            tracing::warn!(pod = %key, error = %e, "cannot persist pod locally");
        }
        let logs = self.logs.for_pod(&key, &crate::volumes::pod_dir_name(&pod));
        tracing::info!(pod = %key, "starting worker");
        self.workers
            .insert(key, worker::spawn(pod, self.ctx.clone(), logs));
    }

    /// Stops and forgets a pod that is no longer bound here, and removes
    /// its volumes once its program has stopped.
    fn remove(&mut self, key: &str) {
        let stopped = self.workers.remove(key).map(|w| {
            tracing::info!(pod = %key, "stopping a pod no longer bound to this node");
            w.stop.cancel();
            w.task
        });
        if let Some((ns, name)) = key.split_once('/') {
            if let Err(e) = self.ctx.local.remove_pod(ns, name) {
                tracing::warn!(pod = %key, error = %e, "cannot remove pod from local store");
            }
            let (cfg, ns, name) = (self.ctx.volumes.clone(), ns.to_string(), name.to_string());
            let logs = self.logs.forget(key);
            tokio::spawn(async move {
                if let Some(task) = stopped {
                    let _ = task.await;
                }
                let _ = tokio::task::spawn_blocking(move || {
                    crate::volumes::remove_pod(&cfg, &ns, &name);
                    if let Some(dir) = logs {
                        crate::logs::remove_dir(&dir);
                    }
                })
                .await;
            });
        }
    }

    /// Brings the workers in line with the full list of pods bound here.
    fn reconcile(&mut self, desired: Vec<Pod>) {
        let keys: std::collections::HashSet<String> = desired.iter().map(pod_key).collect();
        // Volumes of pods no longer here (removed while this agent was
        // down, or replaced by a pod of the same name) go; running workers'
        // pods are all in `desired` or stopped below.
        let keep: std::collections::HashSet<String> = desired
            .iter()
            .filter(|p| !p.metadata.is_deleting())
            .map(crate::volumes::pod_dir_name)
            .collect();
        let (cfg, logs) = (self.ctx.volumes.clone(), self.logs.clone());
        tokio::task::spawn_blocking(move || {
            crate::volumes::remove_others(&cfg, &keep);
            logs.remove_others(&keep);
        });
        let gone: Vec<String> = self
            .workers
            .keys()
            .filter(|k| !keys.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.remove(&k);
        }
        for p in desired {
            // The master's copy may lag the node's own latest status; keep ours for a pod we already run.
            self.ensure(p);
        }
    }
}

/// Runs the node until `shutdown` fires.
pub async fn run(cfg: NodeConfig, shutdown: CancellationToken) -> Result<(), NodeError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| NodeError::Config(format!("{}: {e}", cfg.data_dir.display())))?;
    let mut creds = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        c = join::credentials(&cfg.data_dir, &cfg.name, &cfg.masters, cfg.token.as_deref()) => c?,
    };
    let mut tls = client_tls(&creds)?;
    // When a renewal last failed, so that it is retried calmly, not on every connection.
    let mut renewal_failed: Option<tokio::time::Instant> = None;
    let local = LocalStore::open(&cfg.data_dir.join("node.redb"))?;
    let runtime = Runtime::for_node(
        &cfg.data_dir.join("compiled"),
        cfg.compile,
        &cfg.deny,
        &cfg.engine,
    )?;
    if !cfg.deny.prefixes().is_empty() {
        tracing::info!(deny = ?cfg.deny.prefixes(), "withholding these interfaces from guests");
    }
    let (client_tx, client_rx) = watch::channel(None::<Client>);
    let (report_tx, report_rx) = mpsc::unbounded_channel();
    let served = crate::proxy::served::Served::default();
    let proxy = match &cfg.proxy {
        Some(pc) => {
            let ck = creds
                .client_key()
                .ok_or_else(|| NodeError::Config("credentials hold no certificate".into()))?;
            let p = crate::proxy::Proxy::start(
                &cfg.name,
                pc.clone(),
                served.clone(),
                &ck,
                &creds.ca_pem,
                &creds.masters,
            )
            .map_err(NodeError::Config)?;
            Some(p)
        }
        None => None,
    };
    let proxy_stop = CancellationToken::new();
    if let Some(p) = &proxy {
        tokio::spawn(p.clone().follow(client_rx.clone(), proxy_stop.clone()));
        tokio::spawn(
            p.clone()
                .keep_certificates(client_rx.clone(), proxy_stop.clone()),
        );
    }
    let ctx = Arc::new(WorkerCtx {
        served,
        runtime,
        local: local.clone(),
        client: client_rx.clone(),
        programs: Mutex::default(),
        reports: report_tx,
        in_use: Default::default(),
        volumes: crate::volumes::VolumeConfig::new(
            &cfg.data_dir,
            &cfg.name,
            cfg.allowed_host_paths.clone(),
        ),
        precompiled: cfg.precompiled,
    });
    let mut agent = Agent {
        name: cfg.name.clone(),
        ctx,
        workers: HashMap::new(),
        logs: LogStore::new(&cfg.data_dir.join("logs"), cfg.logs),
        reported: Default::default(),
        proxy_endpoint: proxy
            .as_ref()
            .map(|p| p.endpoint().to_string())
            .unwrap_or_default(),
    };
    let restored = local.pods()?;
    if !restored.is_empty() {
        tracing::info!(
            count = restored.len(),
            "restarting pods from the local store"
        );
    }
    for p in restored {
        agent.ensure(p);
    }
    let reporter = tokio::spawn(report_loop(report_rx, client_rx.clone(), shutdown.clone()));
    let logs_stop = CancellationToken::new();
    let log_writer = tokio::spawn(agent.logs.clone().write_behind(logs_stop.clone()));
    let gc_stop = CancellationToken::new();
    let gc = tokio::spawn(crate::module_gc::run(
        local.clone(),
        agent.ctx.runtime.clone(),
        agent.ctx.in_use.clone(),
        cfg.module_cache,
        gc_stop.clone(),
    ));
    let status_stop = CancellationToken::new();
    let status = tokio::spawn(crate::node_status::report_held(
        cfg.name.clone(),
        local.clone(),
        agent.ctx.runtime.clone(),
        agent.ctx.volumes.clone(),
        client_rx.clone(),
        agent.reported.clone(),
        status_stop.clone(),
    ));
    let release = cfg
        .release_startup_code
        .then(|| tokio::spawn(release_startup_code(client_rx.clone(), shutdown.clone())));
    let mut delay = MIN_RECONNECT;
    while !shutdown.is_cancelled() {
        let client = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = Client::connect(&creds.masters, tls.clone(), "flotilla-node") => c,
        };
        let validity = Validity::of_pem(&creds.cert_pem).ok();
        let now = Time::now();
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                if let Some(v) = validity.filter(|v| v.expired(now)) {
                    tracing::error!(
                        not_after = %v.not_after,
                        "this node's certificate has expired, so no master accepts it; pods keep running. \
                         To rejoin: stop the node, remove {}, and start it again with --token from `flotilla token create`",
                        cfg.data_dir.join(join::CREDENTIALS_FILE).display()
                    );
                }
                let wait;
                (wait, delay) = back_off(delay, Ended::ConnectFailed, rand::random());
                tracing::warn!(error = %e, retry_in = ?wait, "no master reachable; pods keep running");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                continue;
            }
        };
        tracing::info!(master = %client.addr, "connected to master");
        let calm = renewal_failed.is_none_or(|t| t.elapsed() >= RENEW_RETRY);
        // A certificate from before nodes served each other cannot serve
        // this node's proxy: renewed now, whatever its age.
        let serves = flotilla_api::identity::serves_as_node(&creds.cert_pem, &cfg.name);
        if (validity.is_none_or(|v| v.renewal_due(now)) || !serves) && calm {
            match join::renew(&client, &cfg.data_dir, &cfg.name, &creds).await {
                Ok(renewed) => {
                    creds = renewed;
                    tls = client_tls(&creds)?;
                    if let (Some(p), Some(ck)) = (&proxy, creds.client_key()) {
                        if let Err(e) = p.set_credentials(&ck) {
                            tracing::warn!(error = %e, "the proxy keeps its former certificate");
                        }
                    }
                    renewal_failed = None;
                    tracing::info!(
                        not_after = %Validity::of_pem(&creds.cert_pem).map(|v| v.not_after.to_string()).unwrap_or_default(),
                        "renewed this node's certificate; reconnecting with it"
                    );
                    client.conn.close(0u32.into(), b"certificate renewed");
                    continue;
                }
                Err(e) => {
                    renewal_failed = Some(tokio::time::Instant::now());
                    tracing::warn!(error = %e, retry_in = ?RENEW_RETRY, "cannot renew this node's certificate");
                }
            }
        }
        if let Some(v) = validity.filter(|v| v.expires_soon(now)) {
            tracing::warn!(
                not_after = %v.not_after,
                "this node's certificate expires {}; it is renewed automatically while a master answers",
                v.left(now)
            );
        }
        // Wake up to renew while connected: at the renewal time, or for the
        // next attempt after a failed one.
        let renew_in = match validity {
            Some(v) if !v.renewal_due(now) => {
                Duration::from_millis(v.renew_at().since(now).unsigned_abs())
            }
            _ => RENEW_RETRY,
        };
        if let Some(all) = join::learn_masters(&creds.masters, &client.hello.masters) {
            tracing::info!(masters = ?all, "learned the cluster's masters");
            creds.masters = all;
            if let Err(e) = join::save_credentials(&cfg.data_dir, &creds) {
                tracing::warn!(error = %e, "cannot keep the learned masters; they are used until the node restarts");
            }
        }
        let conn_done = shutdown.child_token();
        client_tx.send_replace(Some(client.clone()));
        tokio::spawn(heartbeat_loop(
            client.clone(),
            cfg.name.clone(),
            conn_done.clone(),
        ));
        tokio::spawn(serve_master(
            client.conn.clone(),
            agent.logs.clone(),
            conn_done.clone(),
        ));
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => Ok(()),
            r = session(&client, &cfg, &creds, &mut agent) => r,
            _ = tokio::time::sleep(renew_in) => {
                tracing::info!("certificate renewal is due; reconnecting to renew it");
                Ok(())
            }
        };
        conn_done.cancel();
        client_tx.send_replace(None);
        // The next connection's registration reports the modules afresh.
        *agent.reported.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if shutdown.is_cancelled() {
            break;
        }
        let wait;
        (wait, delay) = back_off(delay, Ended::Session(started.elapsed()), rand::random());
        match result {
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "lost the master; pods keep running")
            }
            Ok(()) => tracing::debug!(retry_in = ?wait, "reconnecting"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    // Before the workers stop, or their going would look like release.
    gc_stop.cancel();
    let _ = gc.await;
    status_stop.cancel();
    let _ = status.await;
    proxy_stop.cancel();
    // Pods stop with the node but stay in the local store, to start again with it.
    for (_, w) in agent.workers.drain() {
        w.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), w.task).await;
    }
    // What the pods wrote last reaches their files.
    logs_stop.cancel();
    let _ = log_writer.await;
    reporter.abort();
    if let Some(release) = release {
        release.abort();
        let _ = release.await;
    }
    Ok(())
}

/// Once the node has first reached a master and settled
/// ([`crate::memory::SETTLE`]), hands the pages of its start-up code back
/// to the kernel ([`crate::memory`]).
async fn release_startup_code(
    mut client: watch::Receiver<Option<Client>>,
    shutdown: CancellationToken,
) {
    let joined = tokio::select! {
        _ = shutdown.cancelled() => false,
        r = client.wait_for(Option::is_some) => r.is_ok(),
    };
    if !joined {
        return;
    }
    tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = tokio::time::sleep(crate::memory::SETTLE) => {}
    }
    match tokio::task::spawn_blocking(crate::memory::release_startup_code).await {
        Ok(Ok(r)) => tracing::info!(
            resident_kib_before = r.before_kib,
            resident_kib_after = r.after_kib,
            "released start-up code pages"
        ),
        Ok(Err(e)) => tracing::debug!(error = %e, "start-up code pages stay resident"),
        Err(_) => {}
    }
}

/// How an attempt to hold a session with a master ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// No master answered.
    ConnectFailed,
    /// A session ended (it failed, or its master went away) after lasting this long.
    Session(Duration),
}

/// The back-off after an attempt, from the current one and `unit` (random,
/// in [0, 1)): the wait before the next attempt, and the back-off after it.
/// Every failure — a connection, or a session shorter than
/// [`STABLE_SESSION`] — doubles it up to [`MAX_RECONNECT`]; only a session
/// that lasted starts it over. The wait is jittered down to half, so nodes
/// cut off together do not come back in step.
fn back_off(current: Duration, ended: Ended, unit: f64) -> (Duration, Duration) {
    let lasted = matches!(ended, Ended::Session(l) if l >= STABLE_SESSION);
    jittered_back_off(current, lasted, unit, MIN_RECONNECT, MAX_RECONNECT)
}

/// The wait before the next attempt and the back-off after it: starts over
/// at `shortest` after a session that `lasted`, else doubles `current` up
/// to `longest`; the wait is jittered down to half by `unit` (random, in
/// [0, 1); anything else counts as 0). Shared by the agent and the hollow
/// nodes of `flotilla hollow-nodes`.
pub fn jittered_back_off(
    current: Duration,
    lasted: bool,
    unit: f64,
    shortest: Duration,
    longest: Duration,
) -> (Duration, Duration) {
    let base = if lasted { shortest } else { current };
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    (base.mul_f64(0.5 + unit / 2.0), (base * 2).min(longest))
}

/// The TLS configuration that presents the node's certificate.
fn client_tls(creds: &ClientConfigFile) -> Result<rustls::ClientConfig, NodeError> {
    let client_key = creds
        .client_key()
        .ok_or_else(|| NodeError::Config("credentials hold no certificate".into()))?;
    flotilla_api::tls::client_config(&creds.ca_pem, Some(&client_key), ALPN)
        .map_err(|e| NodeError::Config(e.to_string()))
}

/// One connected period: register, list, then follow the watch.
async fn session(
    client: &Client,
    cfg: &NodeConfig,
    creds: &ClientConfigFile,
    agent: &mut Agent,
) -> Result<(), NetError> {
    let (local, runtime, volumes) = (
        agent.ctx.local.clone(),
        agent.ctx.runtime.clone(),
        agent.ctx.volumes.clone(),
    );
    let held =
        tokio::task::spawn_blocking(move || crate::node_status::held(&local, &runtime, &volumes))
            .await
            .unwrap_or_default();
    register(
        client,
        cfg,
        &agent.ctx.runtime,
        creds,
        held.clone(),
        &agent.proxy_endpoint,
    )
    .await?;
    *agent.reported.lock().unwrap_or_else(|p| p.into_inner()) = Some(held);
    let list = ListOptions {
        kind: Some(Kind::Pod),
        namespace: None,
        label_selector: String::new(),
        node_name: Some(agent.name.clone()),
        stale: false,
    };
    let (revision, items) = list_all(client, &list).await?;
    agent.reconcile(
        items
            .into_iter()
            .filter_map(|o| o.as_pod().cloned())
            .collect(),
    );
    let (_send, mut recv) = client
        .open(&Request::Watch(WatchOptions {
            list,
            from_revision: revision,
        }))
        .await?;
    loop {
        let ev = match read_frame::<Response>(&mut recv).await? {
            Some(Response::Event(ev)) => ev,
            Some(Response::Error(e)) => return Err(NetError::Api(e)),
            Some(_) => continue,
            None => return Err(NetError::Closed),
        };
        let Object::Pod(pod) = ev.object else {
            continue;
        };
        match ev.kind {
            EventType::Deleted => agent.remove(&pod_key(&pod)),
            EventType::Added | EventType::Modified => agent.ensure(pod),
            EventType::Bookmark => {}
        }
    }
}

/// Lists in as many frames as it takes (`ListStream`), so that pods of any
/// number and size (up to the 1.5 MiB object limit each) reach the node.
pub async fn list_all(client: &Client, list: &ListOptions) -> Result<(u64, Vec<Object>), NetError> {
    let (_send, mut recv) = client.open(&Request::ListStream(list.clone())).await?;
    let mut collector = ListCollector::default();
    loop {
        let frame = read_frame::<Response>(&mut recv)
            .await?
            .ok_or(NetError::Closed)?;
        match collector.take(frame) {
            Ok(Some(list)) => return Ok(list),
            Ok(None) => {}
            Err(ListStreamError::Api(e)) => return Err(NetError::Api(e)),
            Err(e) => return Err(NetError::Unexpected(e.to_string())),
        }
    }
}

/// Creates or refreshes this node's Node object.
async fn register(
    client: &Client,
    cfg: &NodeConfig,
    runtime: &Runtime,
    creds: &ClientConfigFile,
    held: crate::node_status::Held,
    proxy_endpoint: &str,
) -> Result<(), NetError> {
    let mut node = describe_node(cfg, runtime);
    node.status.proxy_endpoint = proxy_endpoint.to_string();
    node.status.modules = held.modules;
    node.status.volumes = held.volumes;
    node.status.code = held.code;
    if let Ok(v) = Validity::of_pem(&creds.cert_pem) {
        node.metadata.annotations.insert(
            annotations::CERTIFICATE_EXPIRES.into(),
            v.not_after.to_string(),
        );
    }
    register_node(client, node).await
}

/// Creates or refreshes a Node object as its node describes it (also used
/// by `flotilla hollow-nodes`): labels and annotations by update, what the
/// node reports of itself by status update.
pub async fn register_node(client: &Client, node: Node) -> Result<(), NetError> {
    match client
        .call(&Request::Create(Object::Node(node.clone())))
        .await
    {
        Ok(_) => Ok(()),
        Err(NetError::Api(ApiError {
            code: ErrorCode::AlreadyExists,
            ..
        })) => {
            let stored = match client
                .call(&Request::Get {
                    kind: Kind::Node,
                    namespace: String::new(),
                    name: node.metadata.name.clone(),
                    stale: false,
                })
                .await?
            {
                Response::Object(Object::Node(n)) => n,
                other => return Err(NetError::Unexpected(format!("{other:?}"))),
            };
            let mut updated = stored.clone();
            // Labels an admin set that attract pods stay; the node's own replace the rest.
            let mut labels: BTreeMap<String, String> = stored
                .metadata
                .labels
                .iter()
                .filter(|(k, _)| labels::is_restricted_node_label(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.extend(node.metadata.labels.clone());
            updated.metadata.labels = labels;
            updated
                .metadata
                .annotations
                .extend(node.metadata.annotations.clone());
            updated.metadata.resource_version = 0;
            client
                .call(&Request::Update(Object::Node(updated.clone())))
                .await?;
            updated.status.capacity = node.status.capacity;
            updated.status.node_info = node.status.node_info;
            updated.status.addresses = node.status.addresses;
            updated.status.allocatable = node.status.allocatable;
            updated.status.interfaces = node.status.interfaces;
            updated.status.modules = node.status.modules;
            updated.status.volumes = node.status.volumes;
            updated.status.code = node.status.code;
            updated.status.proxy_endpoint = node.status.proxy_endpoint;
            client
                .call(&Request::UpdateStatus(Object::Node(updated)))
                .await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// `amd64`, `arm64` or `arm`, as Kubernetes names architectures.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        other => other,
    }
}

fn describe_node(cfg: &NodeConfig, runtime: &Runtime) -> Node {
    let mut labels = cfg.labels.clone();
    labels.retain(|k, _| {
        let keep = !labels::is_restricted_node_label(k);
        if !keep {
            tracing::warn!(label = %k, "ignoring --label {k}: labels under flotilla.dev/ and node-role. attract pods, so only an admin may set them");
        }
        keep
    });
    labels.insert(labels::ARCH.into(), arch().into());
    labels.insert(labels::OS.into(), std::env::consts::OS.into());
    labels.insert(labels::HOSTNAME.into(), cfg.name.clone());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let mut node = Node {
        metadata: ObjectMeta {
            name: cfg.name.clone(),
            labels,
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    let machine = NodeCapacity {
        cpu_millis: cpus * 1000,
        memory_bytes: crate::runtime::compile::total_memory().unwrap_or(0),
        pods: 0,
    };
    (node.status.capacity, node.status.allocatable) =
        crate::node_status::resources(machine, cfg.reserve, cfg.max_pods);
    node.status.interfaces = crate::runtime::interfaces::provided(&cfg.deny);
    node.status.node_info = NodeInfo {
        architecture: arch().into(),
        operating_system: std::env::consts::OS.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        wasm_engine: if cfg.engine.is_pulley() {
            "pulley"
        } else {
            "cranelift"
        }
        .into(),
        engine: NodeEngine {
            class: cfg.engine.class.as_str().into(),
            code: runtime.code_target().clone(),
            fingerprint: runtime.fingerprint().into(),
            http_slots: cfg.engine.http_slots,
            // What the process runs with, which `main` set from the profile.
            runtime_threads: tokio::runtime::Handle::try_current()
                .map(|h| u32::try_from(h.metrics().num_workers()).unwrap_or(u32::MAX))
                .unwrap_or(cfg.engine.runtime_threads),
        },
    };
    node
}

async fn heartbeat_loop(client: Client, name: String, done: CancellationToken) {
    loop {
        if let Err(e) = client
            .call(&Request::Heartbeat { node: name.clone() })
            .await
        {
            tracing::debug!(error = %e, "heartbeat failed");
        }
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

/// Whether the master refused a status report for good: the pod is gone or
/// no longer this node's, or the status would take the pod past the size
/// limit. Sending it again would be refused again and hold up the others.
pub fn report_refused_for_good(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotFound
            | ErrorCode::Forbidden
            | ErrorCode::Conflict
            | ErrorCode::Invalid
            | ErrorCode::TooLarge
    )
}

/// Sends the newest status of each pod to the master, keeping what could
/// not be delivered. The reports that are waiting go together, in as few
/// requests as they fit ([`status_batches`]), so that pods that change
/// together share raft entries.
async fn report_loop(
    mut rx: mpsc::UnboundedReceiver<Pod>,
    client: watch::Receiver<Option<Client>>,
    shutdown: CancellationToken,
) {
    let mut pending: BTreeMap<String, Pod> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            p = rx.recv() => match p {
                Some(p) => { pending.insert(pod_key(&p), p); }
                None => return,
            },
            _ = tokio::time::sleep(REPORT_RETRY), if !pending.is_empty() => {}
        }
        while let Ok(p) = rx.try_recv() {
            pending.insert(pod_key(&p), p);
        }
        let Some(c) = client.borrow().clone() else {
            continue;
        };
        let reports = pending.values().cloned().map(Object::Pod).collect();
        for batch in status_batches(reports) {
            let keys: Vec<String> = batch
                .iter()
                .filter_map(Object::as_pod)
                .map(pod_key)
                .collect();
            let results = match c.call(&Request::UpdateStatuses(batch)).await {
                Ok(Response::Statuses(results)) => results,
                Ok(other) => {
                    tracing::debug!(answer = ?other, "unexpected answer to status reports; will retry");
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "status reports failed; will retry");
                    break;
                }
            };
            for (k, result) in keys.iter().zip(results) {
                match result {
                    Ok(_) => {
                        pending.remove(k);
                    }
                    Err(e) if report_refused_for_good(e.code) => {
                        tracing::debug!(pod = %k, message = %e.message, "dropping status report");
                        pending.remove(k);
                    }
                    // Kept for the next round (the master is busy or changing leader).
                    Err(e) => {
                        tracing::debug!(pod = %k, error = %e, "status report failed; will retry")
                    }
                }
            }
        }
    }
}

/// Answers the master's requests on this node's connection (pod logs).
async fn serve_master(conn: quinn::Connection, logs: Arc<LogStore>, done: CancellationToken) {
    loop {
        let (mut send, mut recv) = tokio::select! {
            _ = done.cancelled() => return,
            s = conn.accept_bi() => match s { Ok(s) => s, Err(_) => return },
        };
        let logs = logs.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let req = match read_frame::<Request>(&mut recv).await {
                Ok(Some(r)) => r,
                _ => return,
            };
            let Some(opts) = LogOptions::of(&req) else {
                let err = ApiError::new(ErrorCode::Invalid, "nodes answer only log requests");
                let _ = write_frame(&mut send, &Response::Error(err)).await;
                return;
            };
            let key = format!("{}/{}", opts.namespace, opts.name);
            let Some(log) = logs.get(&key) else {
                let err = ApiError::new(
                    ErrorCode::NotFound,
                    format!("pod {key} has no logs on this node (it has not started here)"),
                );
                let _ = write_frame(&mut send, &Response::Error(err)).await;
                return;
            };
            let read = {
                let opts = opts.clone();
                tokio::task::spawn_blocking(move || log.read(&opts, std::time::SystemTime::now()))
                    .await
            };
            let (text, rx) = match read {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    let code = match e {
                        crate::logs::ReadError::NoPrevious => ErrorCode::NotFound,
                        crate::logs::ReadError::Io(_) => ErrorCode::Internal,
                    };
                    let err = ApiError::new(code, format!("pod {key}: {e}"));
                    let _ = write_frame(&mut send, &Response::Error(err)).await;
                    return;
                }
                Err(_) => return,
            };
            let mut follower = Follower::new(&opts, &text);
            for piece in text.chunks(LOG_CHUNK) {
                if write_frame(&mut send, &Response::Chunk(piece.to_vec()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(mut rx) = rx {
                loop {
                    let msg = tokio::select! {
                        _ = done.cancelled() => break,
                        _ = send.stopped() => return,
                        m = rx.recv() => m,
                    };
                    let bytes = match msg {
                        Ok(event) => match follower.format(&event) {
                            Some(bytes) => bytes,
                            // The pod's program ended for good: so does the stream.
                            None => break,
                        },
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            format!("[flotilla: {n} log chunks dropped: the reader was too slow]\n")
                                .into_bytes()
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    };
                    if write_frame(&mut send, &Response::Chunk(bytes))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            let _ = write_frame(&mut send, &Response::End).await;
            let _ = send.finish();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn every_failed_session_backs_off_with_jitter() {
        let quick = Ended::Session(Duration::from_millis(30));
        let lasted = Ended::Session(STABLE_SESSION);
        // (back-off now, how the attempt ended, random unit, wait, back-off after)
        let cases = [
            (200 * MS, Ended::ConnectFailed, 0.0, 100 * MS, 400 * MS),
            (200 * MS, Ended::ConnectFailed, 0.5, 150 * MS, 400 * MS),
            // A session that fails at once backs off like a failed connection...
            (200 * MS, quick, 1.0, 200 * MS, 400 * MS),
            (400 * MS, quick, 1.0, 400 * MS, 800 * MS),
            (3200 * MS, quick, 1.0, 3200 * MS, MAX_RECONNECT),
            (MAX_RECONNECT, quick, 1.0, MAX_RECONNECT, MAX_RECONNECT),
            // ...and only one that lasted starts it over.
            (MAX_RECONNECT, lasted, 1.0, MIN_RECONNECT, 400 * MS),
            // Nonsense randomness still gives a wait within bounds.
            (400 * MS, quick, f64::NAN, 200 * MS, 800 * MS),
            (400 * MS, quick, 7.0, 400 * MS, 800 * MS),
            (400 * MS, quick, -1.0, 200 * MS, 800 * MS),
        ];
        for (current, ended, unit, wait, next) in cases {
            assert_eq!(
                back_off(current, ended, unit),
                (wait, next),
                "{current:?} {ended:?} {unit}"
            );
        }
    }

    #[test]
    fn a_session_failing_at_once_never_loops_fast() {
        // The review's case: every session fails right after connecting.
        // Whatever the jitter, the attempts slow to at least one every
        // MAX_RECONNECT / 2 within a few tries.
        let mut delay = MIN_RECONNECT;
        let mut total = Duration::ZERO;
        for i in 0..20 {
            let wait;
            (wait, delay) = back_off(delay, Ended::Session(MS), 0.0);
            total += wait;
            if i >= 5 {
                assert!(wait >= MAX_RECONNECT / 2, "attempt {i} waits {wait:?}");
            }
        }
        assert!(total >= Duration::from_secs(30), "{total:?}");
    }
}
