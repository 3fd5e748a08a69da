//! Benchmark: scheduling throughput at scale, with hollow nodes.
//!
//! For 1 master and for 3 masters (loopback, the `flotilla` binary next to
//! this program or `$FLOTILLA_BIN`):
//! 1. `flotilla hollow-nodes` registers `BENCH_NODES` simulated nodes
//!    (default 5,000) that heartbeat at the real interval and watch their
//!    pods; the master's RSS and CPU are taken while they idle;
//! 2. drain: every node is cordoned, `BENCH_PODS` pods (default 10,000)
//!    are created by 64 concurrent clients and wait, then every node is
//!    uncordoned: pods/s from the release to the last binding (each binding
//!    committed through raft), from the pods' PodScheduled timestamps;
//! 3. burst: `BENCH_BURST` more pods (default 2,000) created while the
//!    nodes take them: p50/p99 creation → bound;
//! 4. the leader's CPU over the drain and its peak RSS.
//!
//! Figures are printed with their ratio to the anchor (kube-scheduler's
//! scheduler_perf CI floor, 810 pods/s at 5,000 nodes) and to the goals
//! (5,000 pods/s; the leader's idle RSS ≤ 300 MiB at 5,000 nodes). Nothing is
//! asserted: timings on shared machines are noisy.
//!
//! Run: `cargo run --release -p flotilla --example bench_schedule`
//! (`BENCH_MASTERS=1` or `3` runs one setting; `BENCH_PERF=FILE` records
//! the leader's CPU profile over the drain with `perf record --call-graph dwarf`;
//! `BENCH_DIR=DIR` keeps the masters' data and logs, `BENCH_MASTER_LOG`
//! sets their `FLOTILLA_LOG`).

#[path = "common/procs.rs"]
mod procs;

use flotilla_api::config::ClientConfigFile;
use flotilla_api::net::Client;
use flotilla_api::objects::{condition, Node, Object, Pod};
use flotilla_api::protocol::{ListOptions, Request, Response, ALPN};
use flotilla_api::quantity::Quantity;
use procs::{bin, cpu_seconds, env_usize, memory_mib, spawn_logged, Proc};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// kube-scheduler's scheduler_perf CI floor at 5,000 nodes (pods/s).
const ANCHOR: f64 = 810.0;
const GOAL_RATE: f64 = 5000.0;
const GOAL_RSS_MIB: f64 = 300.0;
const CREATORS: usize = 64;

struct Cluster {
    dir: PathBuf,
    masters: Vec<Proc>,
    addrs: Vec<String>,
    config: PathBuf,
    hollow: Option<Proc>,
}

impl Cluster {
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        procs::flotilla_cli(&self.config, args)
    }

    fn spawn_master(dir: &Path, addrs: &[String], i: usize, join: Option<&str>) -> Proc {
        let log = std::fs::File::create(dir.join(format!("m{i}.log"))).expect("log");
        let mut cmd = Command::new(bin());
        cmd.args(["master", "--listen", &addrs[i], "--advertise", &addrs[i]])
            .args(["--node-id", &(i + 1).to_string(), "--data-dir"])
            .arg(dir.join(format!("m{i}")))
            .env("FLOTILLA_CONFIG", dir.join(format!("m{i}-config")))
            .env(
                "FLOTILLA_LOG",
                std::env::var("BENCH_MASTER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        if let Some(token) = join {
            cmd.args(["--join", &addrs[0], "--token", token]);
        }
        Proc(cmd.spawn().expect("run flotilla master"))
    }

    async fn start(dir: &Path, masters: usize, base_port: u16) -> Cluster {
        let addrs: Vec<String> = (0..masters)
            .map(|i| format!("127.0.0.1:{}", base_port + i as u16))
            .collect();
        let mut c = Cluster {
            dir: dir.to_path_buf(),
            masters: vec![Self::spawn_master(dir, &addrs, 0, None)],
            addrs: addrs.clone(),
            config: dir.join("config"),
            hollow: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::copy(dir.join("m0-config"), &c.config).is_err()
            || c.cli(&["get", "nodes"]).is_err()
        {
            assert!(Instant::now() < deadline, "the first master did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if masters > 1 {
            let mut cfg =
                ClientConfigFile::parse(&std::fs::read_to_string(&c.config).expect("config"))
                    .expect("config");
            cfg.masters = addrs.clone();
            std::fs::write(&c.config, cfg.render()).expect("config");
            let token = c.cli(&["token", "create", "--master"]).expect("token");
            for i in 1..masters {
                c.masters
                    .push(Self::spawn_master(dir, &addrs, i, Some(token.trim())));
            }
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let voters = c
                    .cli(&["cluster", "status", "-o", "json"])
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .and_then(|s| s["members"].as_array().cloned())
                    .map(|m| m.iter().filter(|m| m["voter"] == true).count())
                    .unwrap_or(0);
                if voters == masters {
                    break;
                }
                assert!(Instant::now() < deadline, "the masters did not all join");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        c
    }

    /// The pid of the leading master (the first if the status cannot tell).
    fn leader_pid(&self) -> u32 {
        let leader = self
            .cli(&["cluster", "status", "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|s| s["leader"].as_u64())
            .unwrap_or(1) as usize;
        self.masters
            .get(leader.saturating_sub(1))
            .map(|p| p.0.id())
            .unwrap_or_else(|| self.masters[0].0.id())
    }

    async fn client(&self) -> Client {
        let cfg = ClientConfigFile::parse(&std::fs::read_to_string(&self.config).expect("config"))
            .expect("config");
        let tls = flotilla_api::tls::client_config(&cfg.ca_pem, cfg.client_key().as_ref(), ALPN)
            .expect("tls");
        Client::connect(&self.addrs, tls, "bench-schedule")
            .await
            .expect("connect")
    }

    async fn ready_nodes(&self, client: &Client) -> usize {
        let opts = ListOptions {
            kind: Some(flotilla_api::Kind::Node),
            stale: true,
            ..ListOptions::default()
        };
        match flotilla_node::agent::list_all(client, &opts).await {
            Ok((_, items)) => items
                .iter()
                .filter_map(Object::as_node)
                .filter(|n| n.is_ready())
                .count(),
            Err(_) => 0,
        }
    }
}

fn pct(v: &mut [i64], p: f64) -> i64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// A pod of the benchmark: small requests, so thousands fit.
fn bench_pod(i: usize, module: &str) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = format!("sched-{i:05}");
    p.metadata.namespace = "default".into();
    p.spec.module = module.to_string();
    p.spec.restart_policy = flotilla_api::objects::RestartPolicy::Never;
    p.spec.resources.requests.cpu = Some(Quantity::new("10m"));
    p.spec.resources.requests.memory = Some(Quantity::new("16Mi"));
    p
}

/// When the scheduler bound a pod (its PodScheduled condition), in ms.
fn scheduled_at(p: &Pod) -> Option<i64> {
    p.status
        .condition(condition::POD_SCHEDULED)
        .filter(|c| c.status)
        .and_then(|c| c.last_transition_time)
        .map(|t| t.millis())
}

/// Every node, as the leader has it now.
async fn list_nodes(client: &Client) -> Vec<Node> {
    let opts = ListOptions {
        kind: Some(flotilla_api::Kind::Node),
        ..ListOptions::default()
    };
    let (_, items) = flotilla_node::agent::list_all(client, &opts)
        .await
        .expect("list nodes");
    items
        .into_iter()
        .filter_map(|o| o.into_kind::<Node>())
        .collect()
}

/// After a failed call about node `name`: a loaded machine may time a call
/// out, so say so and wait a little, up to ten times in a row.
async fn pause_or_give_up(
    failures: &mut u32,
    doing: &str,
    name: &str,
    e: flotilla_api::net::NetError,
) {
    *failures += 1;
    assert!(*failures < 10, "{doing} node {name}: {e}");
    eprintln!("{doing} node {name} (retrying): {e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
}

/// Cordons (or uncordons) every node of `nodes`, 256 at a time: each is
/// written from the listed copy (no read first, so the release is quick),
/// and read again only if it changed meanwhile.
async fn set_unschedulable(client: &Arc<Client>, nodes: Vec<Node>, on: bool) {
    let queue = Arc::new(std::sync::Mutex::new(nodes));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..4 * CREATORS {
        let (client, queue) = (client.clone(), queue.clone());
        workers.spawn(async move {
            loop {
                let Some(mut node) = queue.lock().expect("queue").pop() else {
                    return;
                };
                let name = node.metadata.name.clone();
                let mut failures = 0;
                loop {
                    node.spec.unschedulable = on;
                    match client
                        .call(&Request::Update(Object::Node(node.clone())))
                        .await
                    {
                        Ok(_) => break,
                        // Changed meanwhile (its status): read it again.
                        Err(flotilla_api::net::NetError::Api(e))
                            if e.code == flotilla_api::protocol::ErrorCode::Conflict => {}
                        Err(e) => pause_or_give_up(&mut failures, "cordoning", &name, e).await,
                    }
                    let get = Request::Get {
                        kind: flotilla_api::Kind::Node,
                        namespace: String::new(),
                        name: name.clone(),
                        stale: false,
                    };
                    match client.call(&get).await {
                        Ok(Response::Object(Object::Node(n))) => node = n,
                        Ok(other) => panic!("reading node {name}: unexpected answer {other:?}"),
                        Err(e) => pause_or_give_up(&mut failures, "reading", &name, e).await,
                    }
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("a cordoning worker failed");
    }
}

/// Creates pods `from..to`, 64 at a time.
async fn create(client: &Arc<Client>, module: &str, from: usize, to: usize) {
    let next = Arc::new(AtomicUsize::new(from));
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..CREATORS {
        let (client, next, module) = (client.clone(), next.clone(), module.to_string());
        creators.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    return;
                }
                let req = Request::Create(Object::Pod(bench_pod(i, &module)));
                match client.call(&req).await {
                    Ok(Response::Object(_)) => {}
                    other => panic!("creating pod {i}: {other:?}"),
                }
            }
        });
    }
    while let Some(done) = creators.join_next().await {
        done.expect("a creating worker failed");
    }
}

/// Waits until the first `count` benchmark pods all satisfy `done`; gives
/// them in name order.
async fn wait_until(
    client: &Client,
    count: usize,
    what: &str,
    done: impl Fn(&Pod) -> bool,
) -> Vec<Pod> {
    let opts = ListOptions {
        kind: Some(flotilla_api::Kind::Pod),
        namespace: Some("default".into()),
        stale: true,
        ..ListOptions::default()
    };
    let t = Instant::now();
    loop {
        let (_, items) = flotilla_node::agent::list_all(client, &opts)
            .await
            .expect("list pods");
        let mut pods: Vec<Pod> = items
            .into_iter()
            .filter_map(|o| o.into_kind::<Pod>())
            .filter(|p| p.metadata.name.starts_with("sched-"))
            .collect();
        pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        pods.truncate(count);
        let n = pods.iter().filter(|p| done(p)).count();
        if n >= count {
            return pods;
        }
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "only {n} of {count} pods {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Figures {
    masters: usize,
    nodes: usize,
    pods: usize,
    burst: usize,
    rate: f64,
    p50: i64,
    p99: i64,
    idle_rss: f64,
    idle_cpu: f64,
    run_cpu: f64,
    peak_rss: f64,
}

async fn run(masters: usize, nodes: usize, pods: usize, burst: usize, base_port: u16) -> Figures {
    let tmp = tempfile::tempdir().expect("tmp");
    // BENCH_DIR keeps the masters' data and logs there.
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(d) => PathBuf::from(d).join(format!("{masters}-masters")),
        None => tmp.path().to_path_buf(),
    };
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut c = Cluster::start(&dir, masters, base_port).await;
    let token = c.cli(&["token", "create"]).expect("token");
    c.hollow = Some(spawn_logged(
        Command::new(bin())
            .args(["hollow-nodes", "--count", &nodes.to_string()])
            .args(c.addrs.iter().flat_map(|a| ["--master", a.as_str()]))
            .args(["--token", token.trim(), "--cpu", "4", "--memory", "8Gi"])
            .arg("--data-dir")
            .arg(c.dir.join("hollow")),
        &c.dir.join("hollow.log"),
    ));
    let client = c.client().await;
    let started = Instant::now();
    loop {
        let ready = c.ready_nodes(&client).await;
        if ready >= nodes {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "only {ready} of {nodes} hollow nodes are Ready"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "{masters} master(s): {nodes} hollow nodes Ready after {:.0?}",
        started.elapsed()
    );
    // Idle with every node heartbeating.
    let leader = c.leader_pid();
    let cpu0 = cpu_seconds(leader);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (cpu_seconds(leader) - cpu0) / 10.0;
    let (idle_rss, _) = memory_mib(leader);

    // The pods' module, uploaded by applying a pod that names it.
    let hello = flotilla_workloads::path("hello");
    let manifest = c.dir.join("seed.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: seed\nspec:\n  module: {}\n  nodeSelector:\n    bench.flotilla.dev/never: \"true\"\n",
            hello.display()
        ),
    )
    .expect("manifest");
    c.cli(&["apply", "-f", manifest.to_str().unwrap_or_default()])
        .expect("seed");
    let module = flotilla_api::objects::digest_of(&std::fs::read(&hello).expect("hello"));

    let client = Arc::new(client);

    // 1. Drain: every node cordoned, the pods created (they wait, parked),
    //    then every node uncordoned: the scheduler places them all.
    set_unschedulable(&client, list_nodes(&client).await, true).await;
    create(&client, &module, 0, pods).await;
    wait_until(&client, pods, "parked", |p| {
        p.status
            .condition(condition::POD_SCHEDULED)
            .is_some_and(|c| !c.status)
    })
    .await;
    let cordoned = list_nodes(&client).await;
    let profile = std::env::var_os("BENCH_PERF").map(|out| {
        Proc(
            Command::new("perf")
                .args([
                    "record",
                    "--call-graph",
                    "dwarf",
                    "-F",
                    "499",
                    "-p",
                    &leader.to_string(),
                    "-o",
                ])
                .arg(out)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run perf record"),
        )
    });
    let cpu0 = cpu_seconds(leader);
    let t0 = Instant::now();
    let released = flotilla_api::time::Time::now().millis();
    set_unschedulable(&client, cordoned, false).await;
    let uncordoned = t0.elapsed();
    let items = wait_until(&client, pods, "bound", |p| p.spec.node_name.is_some()).await;
    let run_secs = t0.elapsed().as_secs_f64();
    if let Some(mut perf) = profile {
        // perf writes its file when interrupted.
        let _ = Command::new("kill")
            .args(["-INT", &perf.0.id().to_string()])
            .status();
        let _ = perf.0.wait();
    }
    let run_cpu = (cpu_seconds(leader) - cpu0) / run_secs;
    let last_bound = items
        .iter()
        .filter_map(scheduled_at)
        .max()
        .unwrap_or(released);
    let rate = pods as f64 / ((last_bound - released).max(1) as f64 / 1000.0);
    let first_bound = items
        .iter()
        .filter_map(scheduled_at)
        .min()
        .unwrap_or(released);
    eprintln!(
        "{masters} master(s): {pods} pending pods all bound {:.2}s after the nodes were released \
         (the first {:.2}s after; every node uncordoned after {:.2}s)",
        (last_bound - released) as f64 / 1000.0,
        (first_bound - released) as f64 / 1000.0,
        uncordoned.as_secs_f64()
    );
    // 2. Burst: pods created while the nodes take them; creation → bound.
    create(&client, &module, pods, pods + burst).await;
    let items = wait_until(&client, pods + burst, "bound", |p| {
        p.spec.node_name.is_some()
    })
    .await;
    let mut latencies: Vec<i64> = items
        .iter()
        .skip(pods)
        .filter_map(|p| Some(scheduled_at(p)? - p.metadata.creation_timestamp?.millis()))
        .collect();
    let (_, peak_rss) = memory_mib(leader);
    Figures {
        masters,
        nodes,
        pods,
        burst,
        rate,
        p50: pct(&mut latencies, 0.50),
        p99: pct(&mut latencies, 0.99),
        idle_rss,
        idle_cpu,
        run_cpu,
        peak_rss,
    }
}

#[tokio::main]
async fn main() {
    let nodes = env_usize("BENCH_NODES", 5000);
    let pods = env_usize("BENCH_PODS", 10_000);
    let burst = env_usize("BENCH_BURST", 2_000);
    let settings: Vec<usize> = match std::env::var("BENCH_MASTERS").ok().as_deref() {
        Some("1") => vec![1],
        Some("3") => vec![3],
        _ => vec![1, 3],
    };
    let mut all = Vec::new();
    for (i, masters) in settings.into_iter().enumerate() {
        all.push(run(masters, nodes, pods, burst, 27_400 + 10 * i as u16).await);
    }
    println!(
        "\nscheduling {} pending pods on {} hollow nodes, then a burst of {} created while they are placed (kube-scheduler scheduler_perf CI floor: {ANCHOR} pods/s at 5,000 nodes)",
        all[0].pods, all[0].nodes, all[0].burst
    );
    println!(
        "| masters | pods/s | vs anchor | vs goal {GOAL_RATE} | burst creation→bound p50 | p99 | leader RSS idle | idle vs goal {GOAL_RSS_MIB} MiB | peak | leader CPU idle | during |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in &all {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} ms | {} ms | {:.0} MiB | {:.2} | {:.0} MiB | {:.0}% | {:.0}% |",
            f.masters,
            f.rate,
            f.rate / ANCHOR,
            f.rate / GOAL_RATE,
            f.p50,
            f.p99,
            f.idle_rss,
            f.idle_rss / GOAL_RSS_MIB,
            f.peak_rss,
            f.idle_cpu * 100.0,
            f.run_cpu * 100.0
        );
    }
}
