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

/// `flotilla hollow-nodes --count <count> --master <the cluster> <args>`,
/// its state under the cluster's directory and its output in hollow.log.
fn start_hollow(c: &Cluster, count: usize, args: &[&str]) -> Hollow {
    let log = std::fs::File::create(c.path("hollow.log")).expect("log file");
    Hollow(
        Command::new(BIN)
            .args(["hollow-nodes", "--count", &count.to_string()])
            .args(["--master", &c.addr])
            .args(args)
            .arg("--data-dir")
            .arg(c.path("hollow"))
            .env("FLOTILLA_CONFIG", &c.config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start hollow-nodes"),
    )
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
    let t0 = Instant::now();
    let hollow = start_hollow(&c, NODES, &["--token", &token, "--succeed-after", "1s"]);
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

/// Creates `pods` through the API from 32 concurrent clients (an apply
/// sends its pods one by one, too slowly for ten thousand).
fn create_concurrently(c: &Cluster, pods: Vec<flotilla_api::Pod>) {
    use flotilla_api::config::ClientConfigFile;
    use flotilla_api::net::Client;
    use flotilla_api::protocol::{Request, Response, ALPN};
    use std::sync::{Arc, Mutex};
    let cfg = ClientConfigFile::parse(&std::fs::read_to_string(&c.config).expect("config"))
        .expect("config");
    let tls = flotilla_api::tls::client_config(&cfg.ca_pem, cfg.client_key().as_ref(), ALPN)
        .expect("tls");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = Arc::new(
            Client::connect(&cfg.masters, tls, "hollow-test")
                .await
                .expect("connect"),
        );
        let queue = Arc::new(Mutex::new(pods));
        let mut creators = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (client, queue) = (client.clone(), queue.clone());
            creators.spawn(async move {
                loop {
                    let Some(pod) = queue.lock().expect("queue").pop() else {
                        return;
                    };
                    let name = pod.metadata.name.clone();
                    match client
                        .call(&Request::Create(flotilla_api::Object::Pod(pod)))
                        .await
                    {
                        Ok(Response::Object(_)) => {}
                        other => panic!("creating {name}: {other:?}"),
                    }
                }
            });
        }
        while let Some(r) = creators.join_next().await {
            r.expect("creator");
        }
    });
}

#[test]
fn a_thousand_hollow_nodes_take_ten_thousand_pods_within_allocatable_and_spread() {
    const NODES: usize = 1000;
    const PODS: usize = 10_000;
    /// Of the pods, these spread over the three zones with maxSkew 1.
    const SPREAD: usize = 600;
    let c = Cluster::start("20s");
    let token = c.token();
    let _hollow = start_hollow(
        &c,
        NODES,
        &[
            "--token", &token, "--cpu", "2", "--memory", "2Gi", "--zones", "3",
        ],
    );
    let t0 = Instant::now();
    wait_for("1000 hollow nodes Ready", Duration::from_secs(180), || {
        (count(&c, "nodes", |n| ready(n, "Ready")) == NODES).then_some(())
    });
    let nodes_ready = t0.elapsed();
    // The module, uploaded by applying one pod that names it.
    let hello = flotilla_workloads::path("hello");
    let seed = c.manifest(
        "seed.yaml",
        &format!(
            "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: seed\nspec:\n  module: {}\n  restartPolicy: Never\n",
            hello.display()
        ),
    );
    c.ok(&["apply", "-f", seed.to_str().expect("utf8")]);
    let module = flotilla_api::objects::digest_of(&std::fs::read(&hello).expect("hello"));
    let spread = flotilla_api::objects::TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "topology.kubernetes.io/zone".into(),
        label_selector: Some(flotilla_api::objects::LabelSelector {
            match_labels: [("app".to_string(), "spread".to_string())].into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pods: Vec<flotilla_api::Pod> = (0..PODS)
        .map(|i| {
            let mut p = flotilla_api::Pod::default();
            p.metadata.name = format!("w{i:05}");
            p.metadata.namespace = "default".into();
            p.spec.module = module.clone();
            p.spec.restart_policy = flotilla_api::objects::RestartPolicy::Never;
            // 100m and 128Mi: a 2-CPU, 2Gi node takes 16 (memory) of them,
            // the thousand nodes 16,000.
            p.spec.resources.requests.cpu = Some(flotilla_api::quantity::Quantity::new("100m"));
            p.spec.resources.requests.memory = Some(flotilla_api::quantity::Quantity::new("128Mi"));
            if i < SPREAD {
                p.metadata.labels.insert("app".into(), "spread".into());
                p.spec.topology_spread_constraints.push(spread.clone());
            }
            p
        })
        .collect();
    let t1 = Instant::now();
    create_concurrently(&c, pods);
    let created = t1.elapsed();
    let listed = wait_for("10,000 pods bound", Duration::from_secs(300), || {
        let out = c.run(&["get", "pods", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let items = v["items"].as_array()?.clone();
        let bound = items
            .iter()
            .filter(|p| {
                p["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with('w'))
            })
            .filter(|p| p["spec"]["nodeName"].is_string())
            .count();
        (bound == PODS).then_some(items)
    });
    let bound = t1.elapsed();
    // No node over its allocatable.
    let mut per_node: std::collections::HashMap<String, (u64, u64, u64)> = Default::default();
    let mut per_zone: std::collections::BTreeMap<String, u64> = Default::default();
    for p in listed.iter().filter(|p| {
        p["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with('w'))
    }) {
        let node = p["spec"]["nodeName"].as_str().expect("bound").to_string();
        let i: usize = p["metadata"]["name"].as_str().expect("name")[1..]
            .parse()
            .expect("index");
        let e = per_node.entry(node.clone()).or_default();
        e.0 += 100;
        e.1 += 128 << 20;
        e.2 += 1;
        if i < SPREAD {
            // hollow-<n> is in zone-<n % 3>.
            let n: usize = node
                .trim_start_matches("hollow-")
                .parse()
                .expect("hollow node");
            *per_zone.entry(format!("zone-{}", n % 3)).or_default() += 1;
        }
    }
    for (node, (cpu, mem, count)) in &per_node {
        assert!(
            *cpu <= 2000 && *mem <= 2 << 30 && *count <= 110,
            "{node} holds {cpu}m, {mem} bytes, {count} pods"
        );
    }
    let (min, max) = (
        per_zone.values().min().copied().unwrap_or(0),
        per_zone.values().max().copied().unwrap_or(0),
    );
    assert_eq!(per_zone.values().sum::<u64>(), SPREAD as u64);
    assert!(
        max - min <= 1,
        "the spread pods skew more than 1 over zones: {per_zone:?}"
    );
    eprintln!(
        "hollow scale: {NODES} nodes Ready in {nodes_ready:?}; {PODS} pods created in {created:?}, all bound {bound:?} after the first create; spread over zones {per_zone:?}; {} nodes used",
        per_node.len()
    );
}
