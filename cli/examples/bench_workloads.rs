//! Benchmark: the workload controllers at scale, with hollow nodes.
//!
//! One master on loopback (the `flotilla` binary next to this program or
//! `$FLOTILLA_BIN`) and `BENCH_NODES` hollow nodes (default 1,000), plus one
//! more hollow node, `lost-0`, in a process of its own, which runs the 20
//! pods of a small Deployment. Then, each timed from the command to the
//! state the Deployment's status reports:
//!
//! 1. create: a Deployment of `BENCH_REPLICAS` (default 1,000) → all
//!    available;
//! 2. rollout: a new template (maxSurge 25%, maxUnavailable 25%) →
//!    complete (every pod of the new ReplicaSet, all available);
//! 3. scale to 0 → no pod left;
//! 4. node loss: `lost-0` killed → its 20 pods available elsewhere, with
//!    the default grace period (20 s) and toleration (30 s).
//!
//! For each phase, the master's CPU (seconds, and share of one core) and
//! its RSS at the end and peak. Kubernetes' defaults are the anchor: its
//! controller manager talks to the API server at 20 requests a second
//! (burst 30), so creating or replacing 1,000 pods takes at least about
//! 50 s there; and it evicts a lost node's pods after a 40 s grace period
//! and a 300 s default toleration. Nothing is asserted: timings on shared
//! machines are noisy.
//!
//! Run: `cargo run --release -p flotilla --example bench_workloads`
//! (`BENCH_DIR=DIR` keeps the data and logs).

#[path = "common/procs.rs"]
mod procs;

use procs::{
    bin, cpu_seconds, env_usize, flotilla_cli, memory_mib, spawn_logged, start_master, wait_until,
    Proc,
};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

struct Bench {
    dir: PathBuf,
    config: PathBuf,
    addr: String,
    master: Proc,
}

impl Bench {
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        flotilla_cli(&self.config, args)
    }

    fn json(&self, args: &[&str]) -> Option<serde_json::Value> {
        self.cli(args)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
    }

    fn hollow(&self, prefix: &str, count: usize) -> Proc {
        let token = self.cli(&["token", "create"]).expect("token");
        spawn_logged(
            Command::new(bin())
                .args(["hollow-nodes", "--count", &count.to_string()])
                .args(["--master", &self.addr, "--token", token.trim()])
                .args(["--name-prefix", prefix, "--data-dir"])
                .arg(self.dir.join(prefix)),
            &self.dir.join(format!("{prefix}.log")),
        )
    }

    fn ready_nodes(&self) -> usize {
        self.cli(&["get", "nodes", "--stale"])
            .map(|s| s.lines().filter(|l| l.contains(" Ready ")).count())
            .unwrap_or(0)
    }

    fn pid(&self) -> u32 {
        self.master.0.id()
    }
}

/// A Deployment manifest of the `version` sample.
fn deployment(name: &str, replicas: usize, release: &str, extra: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  strategy: {{rollingUpdate: {{maxSurge: 25%, maxUnavailable: 25%}}}}
  progressDeadlineSeconds: 3600
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      module: {}
      restartPolicy: Always
      resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}
{extra}",
        flotilla_workloads::path(&format!("version-{release}")).display()
    )
}

/// Whether a Deployment's status says its rollout is done at `replicas`.
fn settled(d: &serde_json::Value, replicas: u64) -> bool {
    let s = &d["status"];
    let n = |f: &str| s[f].as_u64().unwrap_or(0);
    d["metadata"]["generation"].as_u64() <= s["observedGeneration"].as_u64()
        && n("updatedReplicas") == replicas
        && n("replicas") == replicas
        && n("availableReplicas") == replicas
}

struct Phase {
    name: &'static str,
    took: Duration,
    cpu: f64,
    rss: f64,
    peak: f64,
    anchor: &'static str,
}

fn measure(
    b: &Bench,
    name: &'static str,
    anchor: &'static str,
    run: impl FnOnce() -> Duration,
) -> Phase {
    let cpu0 = cpu_seconds(b.pid());
    let took = run();
    let cpu = cpu_seconds(b.pid()) - cpu0;
    let (rss, peak) = memory_mib(b.pid());
    let p = Phase {
        name,
        took,
        cpu,
        rss,
        peak,
        anchor,
    };
    println!("{}", p.row());
    p
}

impl Phase {
    /// The phase as a row of the summary table.
    fn row(&self) -> String {
        format!(
            "| {} | {:.1} s | {:.1} s ({:.0}% of a core) | {:.0} / {:.0} MiB | {} |",
            self.name,
            self.took.as_secs_f64(),
            self.cpu,
            100.0 * self.cpu / self.took.as_secs_f64().max(0.001),
            self.rss,
            self.peak,
            self.anchor
        )
    }
}

fn main() {
    let nodes = env_usize("BENCH_NODES", 1000);
    let replicas = env_usize("BENCH_REPLICAS", 1000);
    let keep = std::env::var_os("BENCH_DIR").map(PathBuf::from);
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = keep.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("dir");
    let (master, addr) = start_master(&dir);
    let b = Bench {
        dir: dir.clone(),
        config: dir.join("config"),
        addr,
        master,
    };
    println!("bench_workloads: {nodes} hollow nodes, a Deployment of {replicas}, one master");

    // The node to lose, alone first, so that the small Deployment's pods all go there.
    let lost = b.hollow("lost", 1);
    wait_until("lost-0", Duration::from_secs(60), || b.ready_nodes() == 1);
    let apply = |name: &str, text: &str| {
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).expect("manifest");
        b.cli(&["apply", "-f", path.to_str().expect("utf8")])
            .expect("apply");
    };
    apply("pinned", &deployment("pinned", 20, "v1", ""));
    wait_until("the pinned pods", Duration::from_secs(120), || {
        b.json(&["get", "deploy", "pinned", "-o", "json"])
            .is_some_and(|d| settled(&d, 20))
    });
    let _fleet = b.hollow("hollow", nodes);
    let joined = wait_until("the hollow nodes", Duration::from_secs(600), || {
        b.ready_nodes() == nodes + 1
    });
    println!("{} nodes Ready in {:.1} s", nodes + 1, joined.as_secs_f64());
    std::thread::sleep(Duration::from_secs(5));
    let (idle_rss, _) = memory_mib(b.pid());
    println!("master RSS idle: {idle_rss:.0} MiB");

    let r = replicas as u64;
    let web = || b.json(&["get", "deploy", "web", "-o", "json"]);
    let mut phases = Vec::new();
    phases.push(measure(
        &b,
        "create → all available",
        "Kubernetes ≥ ~48 s (20 creates/s, burst 30)",
        || {
            let start = Instant::now();
            apply("web-v1", &deployment("web", replicas, "v1", ""));
            wait_until("the Deployment", Duration::from_secs(1200), || {
                web().is_some_and(|d| settled(&d, r))
            });
            start.elapsed()
        },
    ));
    phases.push(measure(
        &b,
        "rollout v1 → v2 complete",
        "Kubernetes ≥ ~98 s (1,000 creates and deletes at 20/s)",
        || {
            let start = Instant::now();
            apply("web-v2", &deployment("web", replicas, "v2", ""));
            wait_until("the rollout", Duration::from_secs(1200), || {
                web().is_some_and(|d| settled(&d, r))
            });
            start.elapsed()
        },
    ));
    phases.push(measure(
        &b,
        "scale to 0 → no pod",
        "Kubernetes ≥ ~48 s (1,000 deletes at 20/s)",
        || {
            let start = Instant::now();
            b.cli(&["scale", "deploy/web", "--replicas", "0"])
                .expect("scale");
            wait_until("scale to 0", Duration::from_secs(1200), || {
                web().is_some_and(|d| settled(&d, 0))
                    && b.cli(&["get", "pods", "-l", "app=web"])
                        .is_ok_and(|s| s.lines().count() <= 1)
            });
            start.elapsed()
        },
    ));
    let mut lost = Some(lost);
    phases.push(measure(
        &b,
        "node lost → pods elsewhere",
        "Kubernetes ≥ 340 s (40 s grace + 300 s toleration)",
        || {
            let start = Instant::now();
            drop(lost.take());
            wait_until(
                "the pinned pods elsewhere",
                Duration::from_secs(600),
                || {
                    let moved = b
                        .json(&["get", "pods", "-l", "app=pinned", "-o", "json"])
                        .and_then(|v| v["items"].as_array().cloned())
                        .is_some_and(|pods| {
                            pods.len() == 20
                                && pods.iter().all(|p| {
                                    p["spec"]["nodeName"]
                                        .as_str()
                                        .is_some_and(|n| n != "lost-0")
                                        && p["status"]["phase"] == "Running"
                                })
                        });
                    moved
                        && b.json(&["get", "deploy", "pinned", "-o", "json"])
                            .is_some_and(|d| settled(&d, 20))
                },
            );
            start.elapsed()
        },
    ));
    println!();
    println!("| phase | time | master CPU | master RSS end / peak | anchor |");
    println!("| --- | --- | --- | --- | --- |");
    for p in &phases {
        println!("{}", p.row());
    }
}
