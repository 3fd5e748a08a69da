//! Benchmark: scheduling throughput at scale, with hollow nodes.
//!
//! For 1 master and for 3 masters (loopback, the `flotilla` binary next to
//! this program or `$FLOTILLA_BIN`):
//! 1. `flotilla hollow-nodes` registers `BENCH_NODES` simulated nodes
//!    (default 5,000) that heartbeat at the real interval and watch their
//!    pods; the master's RSS and CPU are taken while they idle;
//! 2. `BENCH_PODS` pods (default 10,000) are created by 64 concurrent
//!    clients; every one is bound by the scheduler, each binding committed
//!    through raft;
//! 3. from the pods' own timestamps (creation, PodScheduled): pods/s from
//!    the first creation to the last binding, p50/p99 creation → bound; the
//!    leader's CPU and peak RSS over the run.
//!
//! Figures are printed with their ratio to the anchor (kube-scheduler's
//! scheduler_perf CI floor, 810 pods/s at 5,000 nodes) and to the goals
//! (5,000 pods/s; master RSS ≤ 300 MiB at 5,000 nodes). Nothing is
//! asserted: timings on shared machines are noisy.
//!
//! Run: `cargo run --release -p flotilla --example bench_schedule`
//! (`BENCH_MASTERS=1` or `3` runs one setting).

use flotilla_api::config::ClientConfigFile;
use flotilla_api::net::Client;
use flotilla_api::objects::{condition, Object, Pod};
use flotilla_api::protocol::{ListOptions, Request, Response, ALPN};
use flotilla_api::quantity::Quantity;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// kube-scheduler's scheduler_perf CI floor at 5,000 nodes (pods/s).
const ANCHOR: f64 = 810.0;
const GOAL_RATE: f64 = 5000.0;
const GOAL_RSS_MIB: f64 = 300.0;
const CREATORS: usize = 64;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOTILLA_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("flotilla"))
        .expect("binary path")
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident and peak memory of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// CPU seconds a process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3 (state); utime is field 14 → index 11.
    (ticks(11) + ticks(12)) / 100.0
}

struct Cluster {
    dir: PathBuf,
    masters: Vec<Proc>,
    addrs: Vec<String>,
    config: PathBuf,
    hollow: Option<Proc>,
}

impl Cluster {
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(bin())
            .args(args)
            .env("FLOTILLA_CONFIG", &self.config)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn spawn_master(dir: &Path, addrs: &[String], i: usize, join: Option<&str>) -> Proc {
        let log = std::fs::File::create(dir.join(format!("m{i}.log"))).expect("log");
        let mut cmd = Command::new(bin());
        cmd.args(["master", "--listen", &addrs[i], "--advertise", &addrs[i]])
            .args(["--node-id", &(i + 1).to_string(), "--data-dir"])
            .arg(dir.join(format!("m{i}")))
            .env("FLOTILLA_CONFIG", dir.join(format!("m{i}-config")))
            .env("RUST_LOG", "warn")
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

struct Figures {
    masters: usize,
    nodes: usize,
    pods: usize,
    rate: f64,
    p50: i64,
    p99: i64,
    idle_rss: f64,
    idle_cpu: f64,
    run_cpu: f64,
    peak_rss: f64,
}

async fn run(masters: usize, nodes: usize, pods: usize, base_port: u16) -> Figures {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Cluster::start(dir.path(), masters, base_port).await;
    let mut c = c;
    let token = c.cli(&["token", "create"]).expect("token");
    let hollow_log = std::fs::File::create(c.dir.join("hollow.log")).expect("log");
    let hollow = Command::new(bin())
        .args(["hollow-nodes", "--count", &nodes.to_string()])
        .args(c.addrs.iter().flat_map(|a| ["--master", a.as_str()]))
        .args([
            "--token",
            token.trim(),
            "--cpu",
            "4",
            "--memory",
            "8Gi",
            "--data-dir",
        ])
        .arg(c.dir.join("hollow"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(hollow_log.try_clone().expect("log"))
        .stderr(hollow_log)
        .spawn()
        .expect("run hollow-nodes");
    c.hollow = Some(Proc(hollow));
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

    let cpu0 = cpu_seconds(leader);
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let client = Arc::new(client);
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..CREATORS {
        let (client, next, module) = (client.clone(), next.clone(), module.clone());
        creators.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pods {
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
    while creators.join_next().await.is_some() {}
    let created_in = t0.elapsed();
    // Every pod bound?
    let opts = ListOptions {
        kind: Some(flotilla_api::Kind::Pod),
        namespace: Some("default".into()),
        stale: true,
        ..ListOptions::default()
    };
    let items = loop {
        let (_, items) = flotilla_node::agent::list_all(&client, &opts)
            .await
            .expect("list pods");
        let bound = items
            .iter()
            .filter_map(Object::as_pod)
            .filter(|p| p.metadata.name.starts_with("sched-") && p.spec.node_name.is_some())
            .count();
        if bound >= pods {
            break items;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "only {bound} of {pods} pods bound"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let run_secs = t0.elapsed().as_secs_f64();
    let run_cpu = (cpu_seconds(leader) - cpu0) / run_secs;
    let (_, peak_rss) = memory_mib(leader);
    let mut first_created = i64::MAX;
    let mut last_bound = i64::MIN;
    let mut latencies = Vec::with_capacity(pods);
    for p in items.iter().filter_map(Object::as_pod) {
        if !p.metadata.name.starts_with("sched-") {
            continue;
        }
        let (Some(created), Some(bound)) = (
            p.metadata.creation_timestamp,
            p.status
                .condition(condition::POD_SCHEDULED)
                .and_then(|c| c.last_transition_time),
        ) else {
            continue;
        };
        first_created = first_created.min(created.millis());
        last_bound = last_bound.max(bound.millis());
        latencies.push(bound.millis() - created.millis());
    }
    let window = (last_bound - first_created).max(1) as f64 / 1000.0;
    eprintln!(
        "{masters} master(s): {pods} pods created in {created_in:.1?}, all bound {window:.2}s after the first creation"
    );
    Figures {
        masters,
        nodes,
        pods,
        rate: pods as f64 / window,
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
    let settings: Vec<usize> = match std::env::var("BENCH_MASTERS").ok().as_deref() {
        Some("1") => vec![1],
        Some("3") => vec![3],
        _ => vec![1, 3],
    };
    let mut all = Vec::new();
    for (i, masters) in settings.into_iter().enumerate() {
        all.push(run(masters, nodes, pods, 27_400 + 10 * i as u16).await);
    }
    println!(
        "\nscheduling {} pods on {} hollow nodes (kube-scheduler scheduler_perf CI floor: {ANCHOR} pods/s at 5,000 nodes)",
        all[0].pods, all[0].nodes
    );
    println!(
        "| masters | pods/s | vs anchor | vs goal {GOAL_RATE} | creation→bound p50 | p99 | leader RSS idle | peak | vs goal {GOAL_RSS_MIB} MiB | leader CPU idle | during |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for f in &all {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} ms | {} ms | {:.0} MiB | {:.0} MiB | {:.2} | {:.0}% | {:.0}% |",
            f.masters,
            f.rate,
            f.rate / ANCHOR,
            f.rate / GOAL_RATE,
            f.p50,
            f.p99,
            f.idle_rss,
            f.peak_rss,
            f.peak_rss / GOAL_RSS_MIB,
            f.idle_cpu * 100.0,
            f.run_cpu * 100.0
        );
    }
}
