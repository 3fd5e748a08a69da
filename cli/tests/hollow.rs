//! `flotilla hollow-nodes` against a real master: fifty simulated nodes
//! join and turn Ready, run two hundred pods to Succeeded, and turn
//! NotReady when their process dies.

mod common;

use common::{wait_for, Cluster, BIN};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const NODES: usize = 50;
const PODS: usize = 200;
/// Short, so that the killed nodes turn NotReady soon; still twice the
/// hollow nodes' 2 s (± 10%) heartbeat.
const GRACE: &str = "5s";

/// Kills the hollow-nodes process when the test ends, however it ends.
struct Hollow(Child);

impl Drop for Hollow {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many items of a `get KIND -o json` list satisfy `pred`.
fn count(c: &Cluster, kind: &str, pred: impl Fn(&serde_json::Value) -> bool) -> usize {
    let out = c.run(&["get", kind, "-o", "json"]);
    if !out.status.success() {
        return 0;
    }
    // No objects print nothing.
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return 0;
    };
    v["items"]
        .as_array()
        .map_or(0, |items| items.iter().filter(|i| pred(i)).count())
}

fn ready(node: &serde_json::Value, state: &str) -> bool {
    node["metadata"]["name"]
        .as_str()
        .is_some_and(|n| n.starts_with("hollow-"))
        && node["status"]["ready"] == state
}

#[test]
fn fifty_hollow_nodes_run_two_hundred_pods_and_turn_not_ready_when_killed() {
    let c = Cluster::start(GRACE);
    let token = c.token();
    let log = std::fs::File::create(c.path("hollow.log")).expect("log file");
    let t0 = Instant::now();
    let hollow = Hollow(
        Command::new(BIN)
            .args([
                "hollow-nodes",
                "--count",
                &NODES.to_string(),
                "--master",
                &c.addr,
                "--token",
                &token,
                "--succeed-after",
                "1s",
                "--data-dir",
            ])
            .arg(c.path("hollow"))
            .env("FLOTILLA_CONFIG", &c.config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start hollow-nodes"),
    );
    wait_for("50 hollow nodes Ready", Duration::from_secs(30), || {
        (count(&c, "nodes", |n| ready(n, "Ready")) == NODES).then_some(())
    });
    let nodes_ready = t0.elapsed();

    // A hollow node registers as a real one does, with its zone and the flags' capacity.
    let n = c.get_json("node", "hollow-7").expect("hollow-7");
    assert_eq!(
        n["metadata"]["labels"]["topology.kubernetes.io/zone"],
        "zone-1"
    );
    assert_eq!(n["metadata"]["labels"]["flotilla.dev/hostname"], "hollow-7");
    assert!(
        n["metadata"]["labels"]["flotilla.dev/arch"].is_string(),
        "{n}"
    );
    assert_eq!(n["status"]["nodeInfo"]["wasmEngine"], "hollow");
    assert_eq!(n["status"]["capacity"]["cpuMillis"], 4000);
    assert_eq!(n["status"]["capacity"]["pods"], 110);
    assert_eq!(n["status"]["allocatable"], n["status"]["capacity"]);
    assert!(
        n["status"]["interfaces"]
            .as_array()
            .is_some_and(|i| !i.is_empty()),
        "{n}"
    );

    // Two hundred pods of a real (uploaded, never fetched) module, in one apply.
    let module = flotilla_workloads::path("hello");
    let manifest: String = (0..PODS)
        .map(|i| {
            format!(
                "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: p{i}\nspec:\n  module: {}\n  restartPolicy: Never\n---\n",
                module.display()
            )
        })
        .collect();
    let file = c.manifest("pods.yaml", &manifest);
    let t1 = Instant::now();
    c.ok(&["apply", "-f", file.to_str().expect("utf8")]);
    wait_for("200 pods Succeeded", Duration::from_secs(40), || {
        (count(&c, "pods", |p| p["status"]["phase"] == "Succeeded") == PODS).then_some(())
    });
    let pods_succeeded = t1.elapsed();

    let p = c.get_json("pod", "p42").expect("p42");
    let status = &p["status"];
    assert_eq!(status["exitCode"], 0, "{p}");
    assert!(status["startTime"].is_string(), "{p}");
    assert!(status["finishTime"].is_string(), "{p}");
    let holds = |t: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .map(|c| c["status"] == true)
    };
    assert_eq!(holds("PodScheduled"), Some(true), "{p}");
    assert_eq!(holds("ModuleReady"), Some(true), "{p}");
    assert_eq!(holds("Ready"), Some(false), "{p}");
    assert!(
        p["spec"]["nodeName"]
            .as_str()
            .is_some_and(|n| n.starts_with("hollow-")),
        "{p}"
    );

    // The process dies: every node turns NotReady after the grace period.
    drop(hollow);
    let t2 = Instant::now();
    wait_for("50 hollow nodes NotReady", Duration::from_secs(30), || {
        (count(&c, "nodes", |n| ready(n, "NotReady")) == NODES).then_some(())
    });
    eprintln!(
        "hollow nodes: {NODES} Ready {nodes_ready:?} after start; {PODS} pods Succeeded {pods_succeeded:?} after apply; NotReady {:?} after the kill (grace {GRACE})",
        t2.elapsed()
    );
}
