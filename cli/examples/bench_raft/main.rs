//! Benchmark: Flotilla's three-master control plane against etcd 3.4, with
//! the same load program, on loopback, values of 256 bytes.
//!
//! One three-member cluster of each system is started, and both stay up for:
//! 1. write latency with one client (sequential writes to the leader): p50,
//!    p99 of 2,000 writes taken in four rounds that alternate between the
//!    systems, so that a slow spell of this shared machine weighs on both;
//! 2. throughput with 64 and then 256 concurrent clients, each on its own
//!    connection to the leader, each writing its own key (etcd, then
//!    Flotilla, for each number of clients);
//! 3. then, on fresh clusters, failover: one client writes without pause (each attempt bounded to
//!    100 ms, moving to the next surviving member on failure) while the
//!    leader is killed with SIGKILL; the time from the kill to the first
//!    acknowledged write issued after it. Three trials, fresh clusters.
//!
//! A Flotilla write is an update of a pod's annotation carrying the value
//! (the pods are never scheduled); an etcd write is a put through etcd's
//! JSON gateway. Figures are printed with their ratios to etcd and the
//! project's goals (p50 ≤ 1.0× etcd, throughput ≥ 1.5×, failover ≤ 0.5×);
//! nothing is asserted.
//!
//! Needs etcd 3.4 (`apt-get install etcd-server`). Run:
//! `cargo run --release -p flotilla --example bench_raft`
//!
//! `BENCH_SYSTEMS=flotilla` (or `etcd`) measures one system only, and
//! `BENCH_PHASES=latency,throughput,failover` a subset of the phases, for
//! comparing builds of one system (`FLOTILLA_BIN` names the binary); the
//! ratios need both systems and all phases.

mod etcd;

#[path = "../common/procs.rs"]
mod procs;

use etcd::{EtcdClient, EtcdCluster};
use flotilla_api::config::ClientConfigFile;
use flotilla_api::net::Client;
use flotilla_api::objects::{Object, Pod};
use flotilla_api::protocol::{Request, Response, ALPN};
use procs::bin;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const VALUE_SIZE: usize = 256;
const LATENCY_WRITES: usize = 2000;
const LATENCY_ROUNDS: usize = 4;
const THROUGHPUT_RUN: Duration = Duration::from_secs(5);
const ATTEMPT: Duration = Duration::from_millis(100);
const TRIALS: usize = 3;

fn value() -> Vec<u8> {
    (0..VALUE_SIZE).map(|i| b'a' + (i % 26) as u8).collect()
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One connection of the load program to one member of either system.
enum Conn {
    Etcd(EtcdClient),
    Flotilla { client: Client, module: String },
}

impl Conn {
    async fn put(&mut self, key: usize, value: &[u8]) -> Result<(), String> {
        match self {
            Conn::Etcd(c) => c.put(&format!("bench-{key}"), value).await,
            Conn::Flotilla { client, module } => {
                let mut pod = register(key, module);
                pod.metadata
                    .annotations
                    .insert("v".into(), String::from_utf8_lossy(value).into_owned());
                match client.call(&Request::Update(Object::Pod(pod))).await {
                    Ok(Response::Object(_)) => Ok(()),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }
}

/// The pod holding key `key` of the benchmark (never scheduled).
fn register(key: usize, module: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = format!("bench-{key}");
    p.metadata.namespace = "default".into();
    p.spec.module = module.to_string();
    p.spec
        .node_selector
        .insert("bench.flotilla.dev/never".into(), "true".into());
    p
}

/// A system under test: how to reach its members and kill its leader.
trait System {
    fn name(&self) -> &'static str;
    async fn leader(&self) -> Option<usize>;
    async fn connect(&self, member: usize) -> Result<Conn, String>;
    fn kill(&mut self, member: usize);
}

struct Etcd {
    cluster: EtcdCluster,
}

impl System for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }
    async fn leader(&self) -> Option<usize> {
        self.cluster.leader().await
    }
    async fn connect(&self, member: usize) -> Result<Conn, String> {
        let addr = self.cluster.client_addrs()[member];
        let mut c = EtcdClient::connect(addr).await?;
        c.set_timeout(Duration::from_secs(5));
        Ok(Conn::Etcd(c))
    }
    fn kill(&mut self, member: usize) {
        self.cluster.kill(member);
    }
}

struct Flotilla {
    dir: PathBuf,
    addrs: Vec<String>,
    procs: Vec<Option<Child>>,
    tls: rustls::ClientConfig,
    module: String,
}

impl Flotilla {
    /// Three masters on loopback (the first founds the cluster, the others
    /// join it) and the benchmark's pods.
    async fn start(dir: &Path, base_port: u16, keys: usize) -> Result<Flotilla, String> {
        let addrs: Vec<String> = (0..3)
            .map(|i| format!("127.0.0.1:{}", base_port + i))
            .collect();
        let config = dir.join("config");
        let spawn = |i: usize, join: Option<&str>| -> Result<Child, String> {
            let log =
                std::fs::File::create(dir.join(format!("m{i}.log"))).map_err(|e| e.to_string())?;
            let mut cmd = Command::new(bin());
            cmd.args(["master", "--listen", &addrs[i], "--advertise", &addrs[i]])
                .args(["--node-id", &(i + 1).to_string(), "--data-dir"])
                .arg(dir.join(format!("m{i}")))
                .env("FLOTILLA_CONFIG", dir.join(format!("m{i}-config")))
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log);
            if let Some(token) = join {
                cmd.args(["--join", &addrs[0], "--token", token]);
            }
            cmd.spawn()
                .map_err(|e| format!("cannot run {}: {e}", bin().display()))
        };
        let cli = |args: &[&str]| procs::flotilla_cli(&config, args);
        let mut procs = vec![Some(spawn(0, None)?)];
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::copy(dir.join("m0-config"), &config).is_err()
            || cli(&["get", "nodes"]).is_err()
        {
            if Instant::now() > deadline {
                return Err("the first master did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut cfg =
            ClientConfigFile::parse(&std::fs::read_to_string(&config).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        cfg.masters = addrs.clone();
        std::fs::write(&config, cfg.render()).map_err(|e| e.to_string())?;
        let token = cli(&["token", "create", "--master"])?.trim().to_string();
        procs.push(Some(spawn(1, Some(&token))?));
        procs.push(Some(spawn(2, Some(&token))?));
        // The pods' module, uploaded by applying a pod that names it.
        let hello = flotilla_workloads::path("hello");
        let manifest = dir.join("seed.yaml");
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: seed\nspec:\n  module: {}\n  nodeSelector:\n    bench.flotilla.dev/never: \"true\"\n",
                hello.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        cli(&["apply", "-f", manifest.to_str().unwrap_or_default()])?;
        let module =
            flotilla_api::objects::digest_of(&std::fs::read(&hello).map_err(|e| e.to_string())?);
        let tls = flotilla_api::tls::client_config(&cfg.ca_pem, cfg.client_key().as_ref(), ALPN)
            .map_err(|e| e.to_string())?;
        let fl = Flotilla {
            dir: dir.to_path_buf(),
            addrs,
            procs,
            tls,
            module,
        };
        // Every master a voter before measuring.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = cli(&["cluster", "status", "-o", "json"])
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
            let voters = status
                .as_ref()
                .and_then(|s| s["members"].as_array().cloned())
                .map(|m| {
                    m.iter()
                        .filter(|m| m["voter"] == true && m["lag"] == 0)
                        .count()
                })
                .unwrap_or(0);
            if voters == 3 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the masters did not all join: {status:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let client = Client::connect(&fl.addrs, fl.tls.clone(), "bench")
            .await
            .map_err(|e| e.to_string())?;
        for key in 0..keys {
            client
                .call(&Request::Create(Object::Pod(register(key, &fl.module))))
                .await
                .map_err(|e| format!("creating key {key}: {e}"))?;
        }
        Ok(fl)
    }
}

impl System for Flotilla {
    fn name(&self) -> &'static str {
        "flotilla"
    }
    async fn leader(&self) -> Option<usize> {
        for (i, addr) in self.addrs.iter().enumerate() {
            if self.procs[i].is_none() {
                continue;
            }
            let Ok(Ok(c)) = tokio::time::timeout(
                Duration::from_millis(500),
                Client::connect(std::slice::from_ref(addr), self.tls.clone(), "bench"),
            )
            .await
            else {
                continue;
            };
            if let Ok(Ok(Response::ClusterStatus(s))) =
                tokio::time::timeout(Duration::from_millis(500), c.call(&Request::ClusterStatus))
                    .await
            {
                if s.leader.is_some() && s.leader == Some(s.reported_by) {
                    return s.leader.map(|l| l as usize - 1);
                }
            }
        }
        None
    }
    async fn connect(&self, member: usize) -> Result<Conn, String> {
        let client = Client::connect(
            std::slice::from_ref(&self.addrs[member]),
            self.tls.clone(),
            "bench",
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Conn::Flotilla {
            client,
            module: self.module.clone(),
        })
    }
    fn kill(&mut self, member: usize) {
        if let Some(mut c) = self.procs[member].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Flotilla {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
        let _ = &self.dir;
    }
}

async fn leader_of(sys: &impl System) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = sys.leader().await {
            return l;
        }
        assert!(Instant::now() < deadline, "{}: no leader", sys.name());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Times of `n` sequential writes by one client on the leader (after a
/// short warm-up on a fresh connection).
async fn latency_samples(sys: &impl System, n: usize) -> Vec<Duration> {
    let leader = leader_of(sys).await;
    let mut conn = sys.connect(leader).await.expect("connect");
    let v = value();
    for i in 0..50 {
        conn.put(i % 8, &v).await.expect("warm-up write");
    }
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        conn.put(i % 8, &v).await.expect("write");
        times.push(t.elapsed());
    }
    times
}

/// Acknowledged writes per second with `clients` concurrent clients on the leader.
async fn throughput(sys: &impl System, clients: usize) -> f64 {
    let leader = leader_of(sys).await;
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(sys.connect(leader).await.expect("connect"));
    }
    let acked = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (key, mut conn) in conns.into_iter().enumerate() {
        let (acked, measuring, stop) = (acked.clone(), measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let v = value();
            let mut errors = 0u32;
            while !stop.load(Ordering::Relaxed) && errors < 100 {
                match conn.put(key, &v).await {
                    Ok(()) if measuring.load(Ordering::Relaxed) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(()) => {}
                    Err(_) => errors += 1,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(THROUGHPUT_RUN).await;
    let n = acked.load(Ordering::Relaxed);
    let elapsed = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    n as f64 / elapsed.as_secs_f64()
}

/// From a SIGKILL of the leader to the first acknowledged write issued after it.
async fn failover(sys: &mut impl System) -> Duration {
    let leader = leader_of(sys).await;
    let survivors: Vec<usize> = (0..3).filter(|m| *m != leader).collect();
    let mut conns = Vec::new();
    for m in &survivors {
        conns.push(sys.connect(*m).await.expect("connect"));
    }
    let v = value();
    // Writing before the kill, as a live client would.
    for _ in 0..20 {
        let _ = tokio::time::timeout(ATTEMPT, conns[0].put(0, &v)).await;
    }
    let killed = Instant::now();
    sys.kill(leader);
    let mut next = 0;
    loop {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "{}: no write after the kill",
            sys.name()
        );
        let at = next % conns.len();
        match tokio::time::timeout(ATTEMPT, conns[at].put(0, &v)).await {
            Ok(Ok(())) => return killed.elapsed(),
            // A failed exchange may leave the connection unusable: make a
            // new one (bounded like an attempt) before coming back to it.
            _ => {
                if let Ok(Ok(c)) = tokio::time::timeout(ATTEMPT, sys.connect(survivors[at])).await {
                    conns[at] = c;
                }
            }
        }
        next += 1;
    }
}

fn ratio(ours: f64, theirs: f64) -> f64 {
    if theirs == 0.0 {
        f64::NAN
    } else {
        ours / theirs
    }
}

#[derive(Default, Debug)]
struct Figures {
    p50: Duration,
    p99: Duration,
    tput64: f64,
    tput256: f64,
    failover: Vec<Duration>,
}

/// Whether `name` is in the comma-separated list of environment variable
/// `var` (all names when it is unset).
fn chosen(var: &str, name: &str) -> bool {
    std::env::var(var).map_or(true, |v| v.split(',').any(|x| x.trim() == name))
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    pct(&mut v, 0.5)
}

async fn start_etcd(root: &Path, run: usize) -> Etcd {
    let dir = root.join(format!("etcd-{run}"));
    std::fs::create_dir_all(&dir).expect("dir");
    Etcd {
        cluster: EtcdCluster::start(&dir, 23790 + (run as u16 % 4) * 20)
            .await
            .unwrap_or_else(|e| panic!("etcd: {e} (is etcd-server installed?)")),
    }
}

async fn start_flotilla(root: &Path, run: usize) -> Flotilla {
    let dir = root.join(format!("flotilla-{run}"));
    std::fs::create_dir_all(&dir).expect("dir");
    Flotilla::start(&dir, 27440 + (run as u16) * 10, 256)
        .await
        .unwrap_or_else(|e| panic!("flotilla: {e}"))
}

/// The latency and throughput phases, on one cluster of each system kept
/// up together. Latency is taken in rounds that alternate between the
/// systems, so that a slow spell of a shared machine weighs on both alike.
async fn steady(root: &Path, etcd: &mut Figures, ours: &mut Figures) {
    let e = match chosen("BENCH_SYSTEMS", "etcd") {
        true => Some(start_etcd(root, 0).await),
        false => None,
    };
    let f = match chosen("BENCH_SYSTEMS", "flotilla") {
        true => Some(start_flotilla(root, 0).await),
        false => None,
    };
    if chosen("BENCH_PHASES", "latency") {
        let (mut es, mut fs) = (Vec::new(), Vec::new());
        for _ in 0..LATENCY_ROUNDS {
            if let Some(e) = &e {
                es.extend(latency_samples(e, LATENCY_WRITES / LATENCY_ROUNDS).await);
            }
            if let Some(f) = &f {
                fs.extend(latency_samples(f, LATENCY_WRITES / LATENCY_ROUNDS).await);
            }
        }
        for (name, samples, figures) in [
            ("etcd", &mut es, &mut *etcd),
            ("flotilla", &mut fs, &mut *ours),
        ] {
            if samples.is_empty() {
                continue;
            }
            figures.p50 = pct(samples, 0.5);
            figures.p99 = pct(samples, 0.99);
            println!(
                "  {name}: 1 client p50 {:.2} ms, p99 {:.2} ms ({} writes)",
                ms(figures.p50),
                ms(figures.p99),
                samples.len()
            );
        }
    }
    if chosen("BENCH_PHASES", "throughput") {
        for clients in [64, 256] {
            if let Some(e) = &e {
                run_throughput(e, clients, etcd).await;
            }
            if let Some(f) = &f {
                run_throughput(f, clients, ours).await;
            }
        }
    }
}

/// Measures and prints the throughput of `sys` with `clients` clients, into
/// its figure for that many.
async fn run_throughput(sys: &impl System, clients: usize, figures: &mut Figures) {
    let t = throughput(sys, clients).await;
    println!("  {}: {clients} clients {t:.0} writes/s", sys.name());
    if clients == 64 {
        figures.tput64 = t;
    } else {
        figures.tput256 = t;
    }
}

/// One failover trial on a fresh cluster.
async fn failover_trial(sys: &mut impl System, trial: usize) -> Duration {
    let d = failover(sys).await;
    println!(
        "  {}: failover trial {} {:.0} ms",
        sys.name(),
        trial + 1,
        ms(d)
    );
    d
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = tempfile::Builder::new()
        .prefix("flotilla-bench-raft")
        .tempdir_in("/tmp")
        .expect("temporary directory");
    println!(
        "raft benchmark: 3 members on loopback, {VALUE_SIZE}-byte values, binary {}",
        bin().display()
    );
    let (mut etcd, mut ours) = (Figures::default(), Figures::default());
    if chosen("BENCH_PHASES", "latency") || chosen("BENCH_PHASES", "throughput") {
        steady(root.path(), &mut etcd, &mut ours).await;
    }
    if chosen("BENCH_PHASES", "failover") {
        for trial in 0..TRIALS {
            if chosen("BENCH_SYSTEMS", "etcd") {
                let mut e = start_etcd(root.path(), trial + 1).await;
                etcd.failover.push(failover_trial(&mut e, trial).await);
            }
            if chosen("BENCH_SYSTEMS", "flotilla") {
                let mut f = start_flotilla(root.path(), trial + 1).await;
                ours.failover.push(failover_trial(&mut f, trial).await);
            }
        }
    }
    if !(chosen("BENCH_SYSTEMS", "etcd") && chosen("BENCH_SYSTEMS", "flotilla")) {
        return;
    }
    let (fe, ff) = (median(&etcd.failover), median(&ours.failover));
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>8} {:>8}",
        "", "flotilla", "etcd 3.4", "ratio", "goal"
    );
    println!(
        "{:<28} {:>9.2} ms {:>9.2} ms {:>8.2} {:>8}",
        "write p50, 1 client",
        ms(ours.p50),
        ms(etcd.p50),
        ratio(ms(ours.p50), ms(etcd.p50)),
        "≤ 1.0"
    );
    println!(
        "{:<28} {:>9.2} ms {:>9.2} ms {:>8.2} {:>8}",
        "write p99, 1 client",
        ms(ours.p99),
        ms(etcd.p99),
        ratio(ms(ours.p99), ms(etcd.p99)),
        ""
    );
    println!(
        "{:<28} {:>10.0}/s {:>10.0}/s {:>8.2} {:>8}",
        "throughput, 64 clients",
        ours.tput64,
        etcd.tput64,
        ratio(ours.tput64, etcd.tput64),
        "≥ 1.5"
    );
    println!(
        "{:<28} {:>10.0}/s {:>10.0}/s {:>8.2} {:>8}",
        "throughput, 256 clients",
        ours.tput256,
        etcd.tput256,
        ratio(ours.tput256, etcd.tput256),
        "≥ 1.5"
    );
    println!(
        "{:<28} {:>9.0} ms {:>9.0} ms {:>8.2} {:>8}",
        "leader kill → write (median)",
        ms(ff),
        ms(fe),
        ratio(ms(ff), ms(fe)),
        "≤ 0.5"
    );
}
