//! `flotilla hollow-nodes`, a testing tool (Kubernetes' kubemark): many
//! simulated nodes in one process, to load masters with the nodes,
//! heartbeats, watches and status reports of a large cluster from one
//! machine.
//!
//! A hollow node does on the wire what `flotilla node` does, with the
//! node's own code where it can: it joins with a token (`join::credentials`,
//! its credentials kept in `<data-dir>/<name>/`), opens its own mutual-TLS
//! connection (all of them share one UDP socket), registers its Node
//! (`agent::register_node`), heartbeats every `agent::HEARTBEAT`, lists
//! and watches the pods bound to it, and reports each Running at once and,
//! with `--succeed-after`, Succeeded later. It runs nothing: no module is
//! fetched, compiled or run, and there are no logs.
//!
//! Layout: [`PodBook`] is the pure core (what a hollow node says of its
//! pods, a function of the master's copies and the time); [`run`] and the
//! node loops below it are the I/O shell.

use flotilla_api::config::ClientConfigFile;
use flotilla_api::identity::{JoinToken, Validity};
use flotilla_api::net::{quic_client_config, read_frame, write_frame, Client, NetError};
use flotilla_api::objects::{
    condition, NodeCapacity, NodeInfo, PodCondition, PodPhase, PodStatus, RestartPolicy,
};
use flotilla_api::protocol::{
    status_batches, ApiError, ErrorCode, EventType, ListOptions, Request, Response, WatchOptions,
    ALPN,
};
use flotilla_api::time::Time;
use flotilla_api::{annotations, labels, Kind, Node, Object, ObjectMeta, Pod};
use flotilla_node::agent::{self, report_refused_for_good, HEARTBEAT};
use flotilla_node::join;
use flotilla_node::runtime::interfaces;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Joins and connections (handshake and registration) in flight at once:
/// thousands of key generations, handshakes and Node writes together would
/// stall the master, and a master restart would otherwise have every node
/// come back in the same instant.
const CONNECT_CONCURRENCY: usize = 64;
/// The first wait after a failure (before jitter).
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between attempts: longer than a real node's 5 s, as a
/// thousand hollow nodes retrying is a thousand nodes' load.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that lasted this long was healthy: the back-off starts over.
const STABLE_SESSION: Duration = Duration::from_secs(10);
/// Each wait between heartbeats is `HEARTBEAT` ± this fraction, so that
/// nodes that connected together do not beat together for ever.
const HEARTBEAT_JITTER: f64 = 0.1;
/// How long answering one request from the master may hold up a node's
/// session (a stalled stream is dropped after it).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the fleet's progress is logged (when it changed).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// The zone label each hollow node carries (`zone-<i % zones>`).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// `flotilla hollow-nodes` flags.
#[derive(clap::Args, Debug)]
pub struct HollowArgs {
    /// How many hollow nodes to run.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    count: u32,
    /// A master's host:port (repeatable); more are learned when joining.
    #[arg(long = "master")]
    masters: Vec<String>,
    /// Join token from `flotilla token create` (needed while a node has no
    /// credentials in --data-dir).
    #[arg(long, env = "FLOTILLA_TOKEN")]
    token: Option<String>,
    /// The nodes are named <PREFIX>-0 to <PREFIX>-<COUNT-1>.
    #[arg(long, default_value = "hollow")]
    name_prefix: String,
    /// CPU each node reports as capacity and allocatable, e.g. 4 or 3500m.
    #[arg(long, default_value = "4")]
    cpu: String,
    /// Memory each node reports as capacity and allocatable, e.g. 8Gi.
    #[arg(long, default_value = "8Gi")]
    memory: String,
    /// Most pods each node takes.
    #[arg(long, default_value_t = 110)]
    max_pods: u32,
    /// Zones the nodes are spread over: node i is labelled
    /// topology.kubernetes.io/zone=zone-<i % ZONES>.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    zones: u32,
    /// How long after it starts a pod ends Succeeded (exit code 0); 0s: pods
    /// run until deleted. Pods with restartPolicy Always run on regardless.
    #[arg(long, default_value = "0s")]
    succeed_after: String,
    /// Where each node keeps its credentials (<DIR>/<name>/credentials.yaml),
    /// so that a restart reuses them.
    #[arg(long, default_value = "./flotilla-hollow")]
    data_dir: PathBuf,
}

/// How a fleet of hollow nodes is run.
#[derive(Debug, Clone)]
pub struct HollowConfig {
    pub count: usize,
    pub masters: Vec<String>,
    pub token: Option<String>,
    pub name_prefix: String,
    /// Capacity and allocatable of every node.
    pub capacity: NodeCapacity,
    pub zones: usize,
    /// None: pods run until deleted.
    pub succeed_after: Option<Duration>,
    pub data_dir: PathBuf,
}

impl HollowArgs {
    /// Checks the flags.
    pub fn config(self) -> anyhow::Result<HollowConfig> {
        let cpu_millis = flotilla_api::quantity::parse_millicores(&self.cpu)
            .map_err(|e| anyhow::anyhow!("--cpu: {e}"))?;
        let memory_bytes = flotilla_api::quantity::parse_bytes(&self.memory)
            .map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
        let succeed_after = crate::commands::parse_duration(&self.succeed_after)
            .map_err(|e| anyhow::anyhow!("--succeed-after: {e}"))?;
        let cfg = HollowConfig {
            count: self.count as usize,
            masters: self.masters,
            token: self.token,
            name_prefix: self.name_prefix,
            capacity: NodeCapacity {
                cpu_millis,
                memory_bytes,
                pods: self.max_pods,
            },
            zones: self.zones as usize,
            succeed_after: (!succeed_after.is_zero()).then_some(succeed_after),
            data_dir: self.data_dir,
        };
        let last = cfg.node_name(cfg.count - 1);
        if !flotilla_api::manifest::is_dns_subdomain(&last) {
            anyhow::bail!(
                "--name-prefix {:?} makes node names such as {last:?}, which are not valid node names (lowercase letters, digits, '-' and '.')",
                cfg.name_prefix
            );
        }
        Ok(cfg)
    }
}

impl HollowConfig {
    /// The name of node `index`.
    pub fn node_name(&self, index: usize) -> String {
        format!("{}-{index}", self.name_prefix)
    }

    /// The Node that node `index` registers, as a real node describes itself.
    fn describe(&self, index: usize, creds: &ClientConfigFile) -> Node {
        let name = self.node_name(index);
        let labels = BTreeMap::from([
            (labels::ARCH.to_string(), agent::arch().to_string()),
            (labels::OS.to_string(), std::env::consts::OS.to_string()),
            (labels::HOSTNAME.to_string(), name.clone()),
            (
                ZONE_LABEL.to_string(),
                format!("zone-{}", index % self.zones),
            ),
        ]);
        let mut node = Node {
            metadata: ObjectMeta {
                name,
                labels,
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        if let Ok(v) = Validity::of_pem(&creds.cert_pem) {
            node.metadata.annotations.insert(
                annotations::CERTIFICATE_EXPIRES.into(),
                v.not_after.to_string(),
            );
        }
        node.status.capacity = self.capacity.clone();
        node.status.allocatable = self.capacity.clone();
        node.status.node_info = NodeInfo {
            architecture: agent::arch().into(),
            operating_system: std::env::consts::OS.into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            wasm_engine: "hollow".into(),
            ..NodeInfo::default()
        };
        // What a real node's runtime links, none withheld; nothing is linked here.
        node.status.interfaces = interfaces::all();
        node
    }
}

// ---------------------------------------------------------------------------
// The pure core: what a hollow node says of its pods.

/// What a hollow node knows of one of its pods.
#[derive(Debug, Clone)]
struct Entry {
    /// The master's latest copy; its metadata (uid included) go with every report.
    pod: Pod,
    /// What this node says of the pod: the status it reports.
    status: PodStatus,
    /// The resourceVersion the master gave this node's last delivered
    /// report: events older than it predate the report, not contradict it.
    reported_rv: u64,
    /// When the pod ends Succeeded, if it does and has not yet.
    ends_at: Option<Time>,
}

/// A hollow node's pods and what it says of them. Every method is a pure
/// function of the master's copies and `now`, returning the status reports
/// to send (pods carrying this node's status): the shell sends them.
#[derive(Debug, Default)]
pub struct PodBook {
    succeed_after: Option<Duration>,
    pods: HashMap<String, Entry>,
}

fn pod_key(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace, p.metadata.name)
}

fn add(t: Time, d: Duration) -> Time {
    Time(t.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
}

/// Sets a condition unless it already holds with that status.
fn condition_holds(
    status: &mut PodStatus,
    type_: &str,
    holds: bool,
    reason: &str,
    msg: &str,
    now: Time,
) {
    if status.condition(type_).is_some_and(|c| c.status == holds) {
        return;
    }
    status.set_condition(PodCondition {
        type_: type_.into(),
        status: holds,
        last_transition_time: Some(now),
        reason: reason.into(),
        message: msg.into(),
    });
}

impl PodBook {
    pub fn new(succeed_after: Option<Duration>) -> PodBook {
        PodBook {
            succeed_after,
            pods: HashMap::new(),
        }
    }

    /// A pod as the master has it now (listed, added or modified); gives
    /// the report to send, if any.
    pub fn observe(&mut self, pod: Pod, now: Time) -> Option<Pod> {
        let key = pod_key(&pod);
        if let Some(e) = self
            .pods
            .get_mut(&key)
            .filter(|e| e.pod.metadata.uid == pod.metadata.uid)
        {
            let rv = pod.metadata.resource_version;
            let disagrees = rv >= e.reported_rv && pod.status.phase != e.status.phase;
            if rv >= e.pod.metadata.resource_version {
                e.pod = pod;
            }
            // The master lost the report (the connection broke before it
            // arrived), or marked the pod Unknown while this node was away:
            // what the node says is the truth, as with a real node.
            return disagrees.then(|| e.report());
        }
        let (entry, report) = self.start(pod, now);
        self.pods.insert(key, entry);
        report
    }

    /// A pod that is new to this node (or a new pod under an old name).
    fn start(&self, pod: Pod, now: Time) -> (Entry, Option<Pod>) {
        let st = &pod.status;
        let mut entry = Entry {
            status: st.clone(),
            reported_rv: 0,
            ends_at: None,
            pod: pod.clone(),
        };
        if st.phase.is_terminal() {
            // It ended before this process knew of it: it stays ended.
            return (entry, None);
        }
        // A pod that ran here before this process restarted goes on from
        // when it started, as if its program had kept running.
        let resumed = st.start_time.filter(|_| st.phase != PodPhase::Pending);
        let started = resumed.unwrap_or(now);
        let mut status = PodStatus {
            phase: PodPhase::Running,
            start_time: Some(started),
            restart_count: st.restart_count,
            conditions: st.conditions.clone(),
            observed_generation: st.observed_generation,
            ..PodStatus::default()
        };
        condition_holds(
            &mut status,
            condition::MODULE_READY,
            true,
            "Hollow",
            "a hollow node neither fetches nor compiles modules",
            now,
        );
        condition_holds(&mut status, condition::READY, true, "", "", now);
        entry.status = status;
        // Restarted programs exit again; a hollow node does not simulate restarts.
        entry.ends_at = self
            .succeed_after
            .filter(|_| pod.spec.restart_policy != RestartPolicy::Always)
            .map(|d| add(started, d));
        let report = (resumed.is_none() || st.phase != PodPhase::Running).then(|| entry.report());
        (entry, report)
    }

    /// The master gave a delivered report of pod `key` (of `uid`) this resourceVersion.
    pub fn delivered(&mut self, key: &str, uid: &str, rv: u64) {
        if let Some(e) = self.pods.get_mut(key).filter(|e| e.pod.metadata.uid == uid) {
            e.reported_rv = e.reported_rv.max(rv);
        }
    }

    /// The pod was deleted.
    pub fn forget(&mut self, key: &str) {
        self.pods.remove(key);
    }

    /// Brings the book in line with a full list of the node's pods: pods
    /// not in it are forgotten, the others observed.
    pub fn resync(&mut self, pods: Vec<Pod>, now: Time) -> Vec<Pod> {
        let keys: HashSet<String> = pods.iter().map(pod_key).collect();
        self.pods.retain(|k, _| keys.contains(k));
        pods.into_iter()
            .filter_map(|p| self.observe(p, now))
            .collect()
    }

    /// When the next pod ends.
    pub fn next_end(&self) -> Option<Time> {
        self.pods.values().filter_map(|e| e.ends_at).min()
    }

    /// Ends the pods due by `now` (Succeeded, exit code 0); gives their reports.
    pub fn end_due(&mut self, now: Time) -> Vec<Pod> {
        let mut reports = Vec::new();
        for e in self.pods.values_mut() {
            let Some(at) = e.ends_at.filter(|at| *at <= now) else {
                continue;
            };
            e.ends_at = None;
            let s = &mut e.status;
            s.phase = PodPhase::Succeeded;
            s.reason = "Completed".into();
            s.exit_code = Some(0);
            s.finish_time = Some(at);
            condition_holds(s, condition::READY, false, "Completed", "", at);
            reports.push(e.report());
        }
        reports
    }

    #[cfg(test)]
    fn status(&self, key: &str) -> Option<&PodStatus> {
        self.pods.get(key).map(|e| &e.status)
    }
}

impl Entry {
    /// The pod with this node's status, as the next report in sequence.
    fn report(&mut self) -> Pod {
        self.status.observed_generation = self
            .status
            .observed_generation
            .max(self.pod.status.observed_generation)
            + 1;
        let mut p = self.pod.clone();
        p.status = self.status.clone();
        p
    }
}

/// The wait before the next attempt and the back-off after it, given how
/// long the session lasted (None: it never started) and `unit`, random in
/// [0, 1). Every failure doubles the back-off up to [`MAX_BACKOFF`]; a
/// session that lasted [`STABLE_SESSION`] starts it over. The wait is
/// jittered down to half, so that nodes cut off together come back spread.
fn back_off(current: Duration, lasted: Option<Duration>, unit: f64) -> (Duration, Duration) {
    let lasted = lasted.is_some_and(|d| d >= STABLE_SESSION);
    flotilla_node::agent::jittered_back_off(current, lasted, unit, MIN_BACKOFF, MAX_BACKOFF)
}

/// The wait until the next heartbeat: [`HEARTBEAT`] ± [`HEARTBEAT_JITTER`].
fn heartbeat_wait(unit: f64) -> Duration {
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.5
    };
    HEARTBEAT.mul_f64(1.0 - HEARTBEAT_JITTER + 2.0 * HEARTBEAT_JITTER * unit)
}

// ---------------------------------------------------------------------------
// The I/O shell.

/// What the node loops share.
struct Fleet {
    cfg: HollowConfig,
    /// One UDP socket for every node's connection (each with its own TLS).
    endpoint: quinn::Endpoint,
    /// Bounds joins and connections in flight ([`CONNECT_CONCURRENCY`]).
    gate: tokio::sync::Semaphore,
    /// Nodes connected and registered now.
    connected: AtomicUsize,
    running_reports: AtomicU64,
    succeeded_reports: AtomicU64,
}

/// Runs `cfg.count` hollow nodes until `shutdown` fires.
pub async fn run(cfg: HollowConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(t) = &cfg.token {
        JoinToken::parse(t).map_err(|e| anyhow::anyhow!("--token: {e}"))?;
    }
    flotilla_api::perms::create_dir(&cfg.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the data directory {}: {e}",
            cfg.data_dir.display()
        )
    })?;
    if cfg.token.is_none() || cfg.masters.is_empty() {
        if let Some(missing) = (0..cfg.count)
            .map(|i| cfg.data_dir.join(cfg.node_name(i)))
            .find(|d| !d.join(join::CREDENTIALS_FILE).exists())
        {
            anyhow::bail!(
                "{} has no {}: the nodes that have not joined yet need --master and --token (from `flotilla token create`)",
                missing.display(),
                join::CREDENTIALS_FILE
            );
        }
    }
    let endpoint = quinn::Endpoint::client(([0, 0, 0, 0], 0).into())
        .map_err(|e| anyhow::anyhow!("cannot open a UDP socket: {e}"))?;
    let fleet = Arc::new(Fleet {
        cfg,
        endpoint,
        gate: tokio::sync::Semaphore::new(CONNECT_CONCURRENCY),
        connected: AtomicUsize::new(0),
        running_reports: AtomicU64::new(0),
        succeeded_reports: AtomicU64::new(0),
    });
    tracing::info!(
        count = fleet.cfg.count,
        data_dir = %fleet.cfg.data_dir.display(),
        "starting hollow nodes (a testing tool: they run no pods)"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..fleet.cfg.count {
        tasks.spawn(node_loop(fleet.clone(), index, shutdown.clone()));
    }
    tasks.spawn(progress(fleet.clone(), shutdown.clone()));
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            tracing::error!(error = %e, "a hollow node task failed");
        }
    }
    fleet.endpoint.close(0u32.into(), b"hollow nodes stopped");
    let _ = tokio::time::timeout(Duration::from_secs(2), fleet.endpoint.wait_idle()).await;
    Ok(())
}

/// Logs how many nodes are connected when it changes (at most every
/// [`PROGRESS_EVERY`]), and once when all are.
async fn progress(fleet: Arc<Fleet>, shutdown: CancellationToken) {
    let started = Instant::now();
    let mut all_once = false;
    let mut last = (usize::MAX, 0, 0);
    let mut logged = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let now = (
            fleet.connected.load(Ordering::Relaxed),
            fleet.running_reports.load(Ordering::Relaxed),
            fleet.succeeded_reports.load(Ordering::Relaxed),
        );
        if !all_once && now.0 == fleet.cfg.count {
            all_once = true;
            tracing::info!(
                count = now.0,
                took = ?started.elapsed(),
                "all hollow nodes are connected and registered"
            );
        }
        if now != last && logged.elapsed() >= PROGRESS_EVERY {
            tracing::info!(
                connected = now.0,
                of = fleet.cfg.count,
                running_reports = now.1,
                succeeded_reports = now.2,
                "hollow nodes"
            );
            last = now;
            logged = Instant::now();
        }
    }
}

/// A hollow node's credentials: the file's contents and the QUIC client
/// configuration that presents its certificate.
struct Credentials {
    file: ClientConfigFile,
    quic: quinn::ClientConfig,
}

/// One hollow node: joins, then holds sessions with a master, backing off
/// after each failure, until `shutdown` fires.
async fn node_loop(fleet: Arc<Fleet>, index: usize, shutdown: CancellationToken) {
    let name = fleet.cfg.node_name(index);
    let mut book = PodBook::new(fleet.cfg.succeed_after);
    let mut creds: Option<Credentials> = None;
    let mut delay = MIN_BACKOFF;
    // Consecutive failures: the first of a run is a warning, the rest debug
    // (a thousand nodes losing their master would say it a thousand times).
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let mut lasted = None;
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = attempt(&fleet, index, &name, &mut creds, &mut book, &mut lasted) => r,
        };
        let wait;
        (wait, delay) = back_off(delay, lasted, rand::random());
        match result {
            Ok(()) => {}
            Err(e) => {
                if lasted.is_some_and(|d| d >= STABLE_SESSION) {
                    failures = 0;
                }
                failures += 1;
                if failures == 1 {
                    tracing::warn!(node = %name, error = %crate::report(&e), retry_in = ?wait, "hollow node failed; retrying with back-off");
                } else {
                    tracing::debug!(node = %name, error = %crate::report(&e), retry_in = ?wait, failures, "hollow node failed again");
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Joins if need be, connects and registers (within the gate), then holds
/// a session; `lasted` is set once the session has started.
async fn attempt(
    fleet: &Fleet,
    index: usize,
    name: &str,
    creds: &mut Option<Credentials>,
    book: &mut PodBook,
    lasted: &mut Option<Duration>,
) -> anyhow::Result<()> {
    let client = {
        let _permit = fleet.gate.acquire().await?;
        let c = match creds {
            Some(c) => c,
            None => {
                let dir = fleet.cfg.data_dir.join(name);
                let file =
                    join::credentials(&dir, name, &fleet.cfg.masters, fleet.cfg.token.as_deref())
                        .await?;
                let tls = flotilla_api::tls::client_config(
                    &file.ca_pem,
                    file.client_key().as_ref(),
                    ALPN,
                )
                .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
                let quic = quic_client_config(tls)?;
                creds.insert(Credentials { file, quic })
            }
        };
        let client = Client::connect_on(
            &fleet.endpoint,
            Some(c.quic.clone()),
            &c.file.masters,
            "flotilla-hollow-node",
        )
        .await?;
        if let Some(all) = join::learn_masters(&c.file.masters, &client.hello.masters) {
            c.file.masters = all;
        }
        agent::register_node(&client, fleet.cfg.describe(index, &c.file)).await?;
        client
    };
    let started = Instant::now();
    fleet.connected.fetch_add(1, Ordering::Relaxed);
    let result = session(fleet, &client, name, book).await;
    fleet.connected.fetch_sub(1, Ordering::Relaxed);
    *lasted = Some(started.elapsed());
    client.conn.close(0u32.into(), b"hollow node session ended");
    result
}

/// One connected period: heartbeat, list, then follow the watch, beat and
/// end pods that are due.
async fn session(
    fleet: &Fleet,
    client: &Client,
    name: &str,
    book: &mut PodBook,
) -> anyhow::Result<()> {
    // At once: the node is Ready as soon as it has registered.
    heartbeat(client, name).await;
    let list = ListOptions {
        kind: Some(Kind::Pod),
        namespace: None,
        label_selector: String::new(),
        node_name: Some(name.to_string()),
        stale: false,
    };
    let (revision, items) = agent::list_all(client, &list).await?;
    let pods = items
        .into_iter()
        .filter_map(|o| match o {
            Object::Pod(p) => Some(p),
            _ => None,
        })
        .collect();
    let reports = book.resync(pods, Time::now());
    send_reports(fleet, client, book, reports).await?;
    let (_send, recv) = client
        .open(&Request::Watch(WatchOptions {
            list,
            from_revision: revision,
        }))
        .await?;
    // The read in flight is kept across the loop's turns: a frame is never
    // cut in half by a timer firing.
    let mut frame = Box::pin(next_frame(recv));
    let mut beat_at = Instant::now() + heartbeat_wait(rand::random());
    loop {
        let end_in = book
            .next_end()
            .map(|t| Duration::from_millis(t.since(Time::now()).max(0).unsigned_abs()));
        tokio::select! {
            (recv, read) = &mut frame => {
                frame = Box::pin(next_frame(recv));
                let ev = match read? {
                    Some(Response::Event(ev)) => ev,
                    Some(Response::Error(e)) => return Err(NetError::Api(e).into()),
                    Some(_) => continue,
                    None => return Err(NetError::Closed.into()),
                };
                let Object::Pod(pod) = ev.object else {
                    continue;
                };
                match ev.kind {
                    EventType::Deleted => book.forget(&pod_key(&pod)),
                    EventType::Added | EventType::Modified => {
                        let reports = book.observe(pod, Time::now()).into_iter().collect();
                        send_reports(fleet, client, book, reports).await?;
                    }
                    EventType::Bookmark => {}
                }
            }
            // The master asks nodes for logs over their own connection.
            stream = client.conn.accept_bi() => {
                let (send, recv) = stream?;
                answer_no_logs(send, recv).await;
            }
            _ = tokio::time::sleep_until(beat_at) => {
                heartbeat(client, name).await;
                beat_at = Instant::now() + heartbeat_wait(rand::random());
            }
            _ = tokio::time::sleep(end_in.unwrap_or_default()), if end_in.is_some() => {
                let reports = book.end_due(Time::now());
                send_reports(fleet, client, book, reports).await?;
            }
        }
    }
}

/// Reads the next frame of a stream, handing the stream back with it.
async fn next_frame(
    mut recv: quinn::RecvStream,
) -> (quinn::RecvStream, Result<Option<Response>, NetError>) {
    let read = read_frame(&mut recv).await;
    (recv, read)
}

/// A hollow node runs nothing, so it has no logs: it says so at once
/// rather than leave the master's request (and `flotilla logs`) waiting.
async fn answer_no_logs(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let answer = async {
        let _ = read_frame::<Request>(&mut recv).await;
        let err = ApiError::new(
            ErrorCode::NotFound,
            "this is a hollow node (`flotilla hollow-nodes`): it runs no programs, so it has no logs",
        );
        let _ = write_frame(&mut send, &Response::Error(err)).await;
        let _ = send.finish();
    };
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, answer).await;
}

/// A failed heartbeat is not an error: the watch notices a lost connection.
async fn heartbeat(client: &Client, name: &str) {
    if let Err(e) = client
        .call(&Request::Heartbeat {
            node: name.to_string(),
        })
        .await
    {
        tracing::debug!(node = name, error = %e, "heartbeat failed");
    }
}

/// Sends status reports, together as a node sends them
/// (`Request::UpdateStatuses`). One the master refuses for good (the pod is
/// gone, replaced or not this node's) is dropped, as a real node drops it;
/// any other failure ends the session, and the next list makes the report
/// again.
async fn send_reports(
    fleet: &Fleet,
    client: &Client,
    book: &mut PodBook,
    reports: Vec<Pod>,
) -> Result<(), NetError> {
    let sent: Vec<(String, String, PodPhase)> = reports
        .iter()
        .map(|p| (pod_key(p), p.metadata.uid.clone(), p.status.phase))
        .collect();
    let mut sent = sent.into_iter();
    for batch in status_batches(reports.into_iter().map(Object::Pod).collect()) {
        let results = match client.call(&Request::UpdateStatuses(batch)).await? {
            Response::Statuses(results) => results,
            other => {
                return Err(NetError::Unexpected(format!(
                    "the master answered status reports with {other:?}"
                )))
            }
        };
        for ((key, uid, phase), result) in sent.by_ref().zip(results) {
            match result {
                Ok(resource_version) => {
                    book.delivered(&key, &uid, resource_version);
                    let counter = match phase {
                        PodPhase::Succeeded => &fleet.succeeded_reports,
                        _ => &fleet.running_reports,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if report_refused_for_good(e.code) => {
                    tracing::debug!(pod = %key, message = %e.message, "dropping status report");
                }
                Err(e) => return Err(NetError::Api(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    fn pod(name: &str, uid: &str, rv: u64, policy: RestartPolicy) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = "default".into();
        p.metadata.name = name.into();
        p.metadata.uid = uid.into();
        p.metadata.resource_version = rv;
        p.spec.node_name = Some("hollow-0".into());
        p.spec.restart_policy = policy;
        p.status.conditions.push(PodCondition {
            type_: condition::POD_SCHEDULED.into(),
            status: true,
            ..PodCondition::default()
        });
        p
    }

    /// The master's copy after a report was stored at `rv`.
    fn stored(report: &Pod, rv: u64) -> Pod {
        let mut p = report.clone();
        p.metadata.resource_version = rv;
        p
    }

    #[test]
    fn a_new_pod_runs_at_once_and_succeeds_after_the_delay() {
        let mut book = PodBook::new(Some(Duration::from_secs(1)));
        let r = book
            .observe(pod("a", "u1", 5, RestartPolicy::Never), Time(10 * S))
            .expect("a report");
        assert_eq!(r.metadata.uid, "u1");
        assert_eq!(r.status.phase, PodPhase::Running);
        assert_eq!(r.status.start_time, Some(Time(10 * S)));
        assert_eq!(r.status.observed_generation, 1);
        for (c, want) in [
            (condition::POD_SCHEDULED, true),
            (condition::MODULE_READY, true),
            (condition::READY, true),
        ] {
            assert_eq!(r.status.condition(c).map(|c| c.status), Some(want), "{c}");
        }
        assert_eq!(book.next_end(), Some(Time(11 * S)));
        book.delivered("default/a", "u1", 6);
        // The echo of the report, and an event from before it, say nothing new.
        assert_eq!(book.observe(stored(&r, 6), Time(10 * S + 5)), None);
        assert_eq!(
            book.observe(pod("a", "u1", 5, RestartPolicy::Never), Time(10 * S + 6)),
            None
        );
        assert!(book.end_due(Time(11 * S - 1)).is_empty());
        let done = book.end_due(Time(11 * S + 40));
        assert_eq!(done.len(), 1);
        let s = &done[0].status;
        assert_eq!(
            (s.phase, s.exit_code, s.reason.as_str()),
            (PodPhase::Succeeded, Some(0), "Completed")
        );
        assert_eq!(s.start_time, Some(Time(10 * S)));
        assert_eq!(s.finish_time, Some(Time(11 * S)));
        assert_eq!(s.condition(condition::READY).map(|c| c.status), Some(false));
        assert_eq!(s.observed_generation, 2);
        assert_eq!(book.next_end(), None);
        assert!(book.end_due(Time(20 * S)).is_empty());
    }

    #[test]
    fn what_the_node_says_wins_over_a_master_that_lost_it() {
        let mut book = PodBook::new(None);
        let r = book
            .observe(pod("a", "u1", 5, RestartPolicy::Always), Time(S))
            .expect("running");
        // The report never arrived: the next list still shows Pending.
        let again = book
            .resync(vec![pod("a", "u1", 5, RestartPolicy::Always)], Time(3 * S))
            .pop()
            .expect("reported again");
        assert_eq!(again.status.phase, PodPhase::Running);
        assert_eq!(again.status.start_time, r.status.start_time);
        book.delivered("default/a", "u1", 7);
        // The master marked it Unknown while the node was away.
        let mut lost = stored(&again, 9);
        lost.status.phase = PodPhase::Unknown;
        let back = book.observe(lost, Time(9 * S)).expect("reported again");
        assert_eq!(back.status.phase, PodPhase::Running);
        // Always: it runs on, without an end.
        assert_eq!(book.next_end(), None);
    }

    #[test]
    fn pods_that_ran_before_a_restart_go_on_and_ended_ones_stay_ended() {
        let mut book = PodBook::new(Some(Duration::from_secs(5)));
        let mut running = pod("a", "u1", 8, RestartPolicy::Never);
        running.status.phase = PodPhase::Running;
        running.status.start_time = Some(Time(100 * S));
        let mut ended = pod("b", "u2", 9, RestartPolicy::Never);
        ended.status.phase = PodPhase::Succeeded;
        let reports = book.resync(vec![running, ended], Time(102 * S));
        assert!(reports.is_empty(), "{reports:?}");
        assert_eq!(book.next_end(), Some(Time(105 * S)));
        assert_eq!(
            book.status("default/b").map(|s| s.phase),
            Some(PodPhase::Succeeded)
        );
    }

    #[test]
    fn a_new_pod_under_an_old_name_starts_afresh_and_deleted_pods_are_forgotten() {
        let mut book = PodBook::new(Some(Duration::from_secs(1)));
        book.observe(pod("a", "u1", 5, RestartPolicy::Never), Time(S));
        book.forget("default/a");
        assert_eq!(book.next_end(), None);
        book.observe(pod("a", "u1", 5, RestartPolicy::Never), Time(S));
        let r = book
            .observe(pod("a", "u2", 12, RestartPolicy::Never), Time(4 * S))
            .expect("the new pod runs");
        assert_eq!(r.metadata.uid, "u2");
        assert_eq!(r.status.start_time, Some(Time(4 * S)));
        assert_eq!(book.next_end(), Some(Time(5 * S)));
        // A list without it forgets it.
        assert!(book.resync(vec![], Time(4 * S)).is_empty());
        assert_eq!(book.next_end(), None);
    }

    #[test]
    fn back_off_doubles_to_its_cap_jitters_and_starts_over_after_a_good_session() {
        let ms = Duration::from_millis;
        // (back-off now, session lasted, unit, wait, back-off after)
        let cases = [
            (MIN_BACKOFF, None, 0.0, ms(250), ms(1000)),
            (MIN_BACKOFF, None, 1.0, ms(500), ms(1000)),
            (ms(20_000), Some(ms(50)), 1.0, ms(20_000), MAX_BACKOFF),
            (MAX_BACKOFF, None, 0.5, ms(22_500), MAX_BACKOFF),
            (
                MAX_BACKOFF,
                Some(STABLE_SESSION),
                1.0,
                MIN_BACKOFF,
                ms(1000),
            ),
            (ms(4000), None, f64::NAN, ms(2000), ms(8000)),
        ];
        for (current, lasted, unit, wait, next) in cases {
            assert_eq!(
                back_off(current, lasted, unit),
                (wait, next),
                "{current:?} {lasted:?} {unit}"
            );
        }
    }

    #[test]
    fn heartbeats_stay_within_their_jitter() {
        for unit in [0.0, 0.5, 0.999, 7.0, f64::NAN] {
            let w = heartbeat_wait(unit);
            // ± 10% of 2 s, give or take float rounding.
            assert!(
                (Duration::from_millis(1799)..=Duration::from_millis(2201)).contains(&w),
                "{unit}: {w:?}"
            );
        }
    }

    #[test]
    fn nodes_are_described_with_their_zone_capacity_and_engine() {
        let cfg = HollowConfig {
            count: 5,
            masters: vec![],
            token: None,
            name_prefix: "hollow".into(),
            capacity: NodeCapacity {
                cpu_millis: 4000,
                memory_bytes: 8 << 30,
                pods: 110,
            },
            zones: 3,
            succeed_after: None,
            data_dir: PathBuf::new(),
        };
        let n = cfg.describe(4, &ClientConfigFile::default());
        assert_eq!(n.metadata.name, "hollow-4");
        assert_eq!(n.metadata.labels[ZONE_LABEL], "zone-1");
        assert_eq!(n.metadata.labels[labels::HOSTNAME], "hollow-4");
        assert!(n
            .metadata
            .labels
            .keys()
            .all(|k| !labels::is_restricted_node_label(k)));
        assert_eq!(n.status.capacity, n.status.allocatable);
        assert_eq!(n.status.capacity.pods, 110);
        assert_eq!(n.status.node_info.wasm_engine, "hollow");
        assert!(n.status.interfaces.contains(&format!(
            "wasi:cli/environment@{}",
            interfaces::WASI_P2_VERSION
        )));
    }
}
