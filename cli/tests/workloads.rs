//! Deployments and ReplicaSets end to end: the real `flotilla` binary as
//! master and nodes on loopback, driven the way a user drives them
//! (`apply`, `rollout status|history|undo`, `scale`, `delete --cascade`).
//! The planning functions are tested as tables in `master/src/controllers`.

mod common;

use common::{wait_for, Cluster};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// A Deployment of the `version` sample: `release` is `v1` or `v2`, `args`
/// its arguments, `extra` more lines of the spec (indented two spaces).
fn deployment(name: &str, replicas: u32, release: &str, args: &[&str], extra: &str) -> String {
    let module = flotilla_workloads::path(&format!("version-{release}"));
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  minReadySeconds: 1
{extra}  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      module: {}
      args: [{}]
      restartPolicy: Always
      resources:
        limits: {{memory: 32Mi}}
",
        module.display(),
        args.join(", ")
    )
}

fn apply(c: &Cluster, file: &str, text: &str) -> String {
    let path = c.manifest(file, text);
    c.ok(&["apply", "-f", path.to_str().expect("utf8")])
}

/// The pods of `app` as JSON objects.
fn pods(c: &Cluster, app: &str) -> Vec<serde_json::Value> {
    let out = c.run(&["get", "pods", "-l", &format!("app={app}"), "-o", "json"]);
    if !out.status.success() || out.stdout.is_empty() {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    items(v)
}

/// The objects of a `get -o json` answer: a list's items, or the one object.
fn items(v: serde_json::Value) -> Vec<serde_json::Value> {
    match v.get("items") {
        Some(serde_json::Value::Array(items)) => items.clone(),
        _ if v.get("kind").is_some() => vec![v],
        _ => Vec::new(),
    }
}

fn is_ready(p: &serde_json::Value) -> bool {
    p["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == true)
    })
}

/// Ready pods of `app` by module digest.
fn ready_by_module(c: &Cluster, app: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in pods(c, app).iter().filter(|p| is_ready(p)) {
        *out.entry(p["spec"]["module"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    out
}

fn digest_of(release: &str) -> String {
    use sha2::Digest;
    let bytes =
        std::fs::read(flotilla_workloads::path(&format!("version-{release}"))).expect("module");
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
}

/// Waits until `app` has exactly `n` pods, all ready, all of `release`.
fn wait_settled(c: &Cluster, app: &str, n: usize, release: &str) {
    let digest = digest_of(release);
    wait_for(&format!("{n} ready pods of {app} at {release}"), T, || {
        let all = pods(c, app);
        (all.len() == n
            && all
                .iter()
                .all(|p| is_ready(p) && p["spec"]["module"] == digest.as_str()))
        .then_some(())
    });
}

fn rollout_status(c: &Cluster, name: &str) -> std::process::Output {
    c.run(&[
        "rollout",
        "status",
        &format!("deployment/{name}"),
        "--timeout",
        "90s",
    ])
}

#[test]
fn a_deployment_spreads_rolls_out_without_dipping_below_its_floor_rolls_back_and_scales() {
    let mut c = Cluster::start("20s");
    for n in ["n1", "n2", "n3"] {
        c.start_node(n);
    }
    for n in ["n1", "n2", "n3"] {
        c.wait_node_ready(n, "Ready", T);
    }
    let strategy = "  strategy:\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}\n";
    let out = apply(&c, "v1.yaml", &deployment("web", 6, "v1", &[], strategy));
    assert!(out.contains("deployment/web created"), "{out}");
    let status = rollout_status(&c, "web");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        String::from_utf8_lossy(&status.stdout)
            .contains("deployment \"web\" successfully rolled out"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    wait_settled(&c, "web", 6, "v1");
    // Spread: two on each node (the scheduler spreads one owner's pods).
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods(&c, "web") {
        *per_node
            .entry(p["spec"]["nodeName"].as_str().unwrap_or("").to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );
    let table = c.ok(&["get", "deploy"]);
    assert!(table.contains("web") && table.contains("6/6"), "{table}");
    let rs = c.ok(&["get", "rs"]);
    assert_eq!(rs.lines().count(), 2, "{rs}");

    // Roll out v2 while another thread counts ready pods the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let lowest = Arc::new(AtomicU64::new(u64::MAX));
    let samples = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, lowest, samples) = (stop.clone(), lowest.clone(), samples.clone());
        let config = c.config.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let out =
                    common::run_flotilla(&["get", "pods", "-l", "app=web", "-o", "json"], &config);
                if out.status.success() && !out.stdout.is_empty() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
                    let ready = items(v).iter().filter(|p| is_ready(p)).count();
                    lowest.fetch_min(ready as u64, Ordering::SeqCst);
                    samples.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let out = apply(&c, "v2.yaml", &deployment("web", 6, "v2", &[], strategy));
    assert!(out.contains("deployment/web configured"), "{out}");
    let status = rollout_status(&c, "web");
    stop.store(true, Ordering::SeqCst);
    watcher.join().expect("watcher");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    wait_settled(&c, "web", 6, "v2");
    let lowest = lowest.load(Ordering::SeqCst);
    assert!(
        samples.load(Ordering::SeqCst) > 5,
        "the watcher saw the rollout"
    );
    assert!(
        lowest >= 5,
        "at most maxUnavailable = 1 of 6 pods may be missing; saw {lowest} ready"
    );
    let pod = pods(&c, "web")[0]["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_string();
    wait_for("the v2 pod's log", T, || {
        c.ok(&["logs", &pod]).contains("version v2").then_some(())
    });

    // History and undo.
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let out = c.ok(&["rollout", "undo", "deployment/web"]);
    assert!(out.contains("rolled back (to revision 1)"), "{out}");
    assert!(rollout_status(&c, "web").status.success());
    wait_settled(&c, "web", 6, "v1");
    let history = c.ok(&["rollout", "history", "deployment/web"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        revisions,
        ["2", "3"],
        "the old set comes back as revision 3: {history}"
    );

    // Scale down and up.
    for n in [2, 8] {
        c.ok(&["scale", "deploy/web", "--replicas", &n.to_string()]);
        wait_settled(&c, "web", n, "v1");
    }
    assert!(rollout_status(&c, "web").status.success());
    let all = c.ok(&["get", "all"]);
    assert!(
        all.contains("deployment/web") && all.contains("pod/web-"),
        "{all}"
    );
}

#[test]
fn a_bad_release_stops_at_its_progress_deadline_with_the_old_pods_serving() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let extra = "  progressDeadlineSeconds: 8\n  strategy:\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 1}\n";
    apply(&c, "good.yaml", &deployment("api", 4, "v1", &[], extra));
    assert!(rollout_status(&c, "api").status.success());
    wait_settled(&c, "api", 4, "v1");
    apply(
        &c,
        "bad.yaml",
        &deployment("api", 4, "v2", &["exit", "1"], extra),
    );
    let status = rollout_status(&c, "api");
    assert!(
        !status.status.success(),
        "a crashing release must not succeed"
    );
    let err = String::from_utf8_lossy(&status.stderr);
    assert!(
        err.contains("deployment \"api\" exceeded its progress deadline"),
        "{err}"
    );
    let ready = ready_by_module(&c, "api");
    assert_eq!(
        ready.get(&digest_of("v1")),
        Some(&3),
        "4 − maxUnavailable old pods still serve: {ready:?}"
    );
    let d = c.get_json("deploy", "api").expect("deployment");
    let progressing = d["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing").cloned())
        .expect("Progressing");
    assert_eq!(progressing["status"], "False", "{progressing}");
    assert_eq!(
        progressing["reason"], "ProgressDeadlineExceeded",
        "{progressing}"
    );
    // Undo brings the good release back.
    c.ok(&["rollout", "undo", "deployment/api"]);
    assert!(rollout_status(&c, "api").status.success());
    wait_settled(&c, "api", 4, "v1");
}

#[test]
fn deleting_an_owner_deletes_what_it_owns_unless_told_to_orphan_it() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    apply(&c, "a.yaml", &deployment("keep", 2, "v1", &[], ""));
    apply(&c, "b.yaml", &deployment("gone", 2, "v1", &[], ""));
    wait_settled(&c, "keep", 2, "v1");
    wait_settled(&c, "gone", 2, "v1");

    // Background (the default): the ReplicaSet and the pods follow.
    let out = c.ok(&["delete", "deploy", "gone"]);
    assert!(out.contains("deployment \"gone\" deleted"), "{out}");
    wait_for("the pods of a deleted deployment to go", T, || {
        pods(&c, "gone").is_empty().then_some(())
    });
    wait_for("its replica set to go", T, || {
        let rs = c.ok(&["get", "rs", "-o", "json"]);
        (!rs.contains("\"gone-")).then_some(())
    });

    // Orphan: the ReplicaSet stays, without its owner, and keeps its pods.
    let before: Vec<String> = pods(&c, "keep")
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    c.ok(&["delete", "deploy", "keep", "--cascade=orphan"]);
    std::thread::sleep(Duration::from_secs(3));
    let after: Vec<String> = pods(&c, "keep")
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(before, after, "orphaned pods stay as they were");
    let rs = c.ok(&["get", "rs", "-o", "json"]);
    let sets = items(serde_json::from_str(&rs).expect("json"));
    assert_eq!(sets.len(), 1, "{rs}");
    let set = sets[0].clone();
    assert!(
        set["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .starts_with("keep-"),
        "{set}"
    );
    assert!(
        set["metadata"]["ownerReferences"].is_null(),
        "no owner left: {set}"
    );
    // The orphaned set still keeps its count: a pod deleted is replaced.
    let victim = after[0].clone();
    c.ok(&["delete", "pod", &victim]);
    wait_for("the orphaned set to replace its pod", T, || {
        let now = pods(&c, "keep");
        (now.len() == 2 && now.iter().all(|p| p["metadata"]["name"] != victim.as_str()))
            .then_some(())
    });
}

#[test]
fn a_lost_nodes_pods_run_elsewhere_after_their_toleration_and_it_stops_them_when_back() {
    let mut c = Cluster::start("3s");
    for n in ["n1", "n2"] {
        c.start_node(n);
    }
    for n in ["n1", "n2"] {
        c.wait_node_ready(n, "Ready", T);
    }
    // Two replicas, one on each node (spread by owner), that leave an
    // unreachable node after 2 s; and a pod without an owner on n2.
    let tolerate = "      tolerations:\n        - {key: node.flotilla.dev/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}\n";
    let yaml = deployment("web", 2, "v1", &[], "").replace(
        "      restartPolicy: Always\n",
        &format!("      restartPolicy: Always\n{tolerate}"),
    );
    apply(&c, "web.yaml", &yaml);
    wait_settled(&c, "web", 2, "v1");
    let lone = format!(
        "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: lone\nspec:\n  module: {}\n  restartPolicy: Always\n  nodeSelector: {{flotilla.dev/hostname: n2}}\n  tolerations:\n    - {{key: node.flotilla.dev/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}\n",
        flotilla_workloads::path("version-v1").display()
    );
    apply(&c, "lone.yaml", &lone);
    c.wait_phase("lone", "Running", T);
    let on_n2: Vec<String> = pods(&c, "web")
        .iter()
        .filter(|p| p["spec"]["nodeName"] == "n2")
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(on_n2.len(), 1, "one replica on each node");

    c.kill_node("n2");
    let killed = std::time::Instant::now();
    // NotReady after the 3 s grace, tainted, evicted 2 s later, replaced on n1.
    wait_for("the replica of n2 to run on n1", T, || {
        let all = pods(&c, "web");
        (all.len() == 2
            && all
                .iter()
                .all(|p| is_ready(p) && p["spec"]["nodeName"] == "n1"))
        .then_some(())
    });
    let moved_in = killed.elapsed();
    let node = c.get_json("node", "n2").expect("node");
    let taints = node["spec"]["taints"].to_string();
    assert!(
        taints.contains("node.flotilla.dev/unreachable") && taints.contains("NoExecute"),
        "{taints}"
    );
    wait_for("the pod without an owner to be marked Failed", T, || {
        (c.pod_field("lone", "phase") == "Failed" && c.pod_field("lone", "reason") == "NodeLost")
            .then_some(())
    });
    eprintln!("replaced {moved_in:?} after the kill (grace 3 s + toleration 2 s)");

    // n2 comes back: it stops its stale copies, and its taint goes.
    c.start_node("n2");
    c.wait_node_ready("n2", "Ready", T);
    wait_for("n2 to stop the evicted replica", T, || {
        let log = c.node_log("n2");
        on_n2
            .iter()
            .all(|p| {
                log.contains(&format!(
                    "stopping a pod no longer bound to this node pod=default/{p}"
                ))
            })
            .then_some(())
    });
    wait_for("n2's taint to go", T, || {
        let node = c.get_json("node", "n2").expect("node");
        (!node["spec"]["taints"].to_string().contains("unreachable")).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        c.pod_field("lone", "phase"),
        "Failed",
        "n2 does not bring the evicted pod back"
    );
    assert_eq!(pods(&c, "web").len(), 2, "nothing runs twice");
}

#[test]
fn drain_moves_a_nodes_pods_and_refuses_pods_without_an_owner_unless_forced() {
    let mut c = Cluster::start("20s");
    for n in ["n1", "n2"] {
        c.start_node(n);
    }
    for n in ["n1", "n2"] {
        c.wait_node_ready(n, "Ready", T);
    }
    apply(&c, "web.yaml", &deployment("web", 4, "v1", &[], ""));
    wait_settled(&c, "web", 4, "v1");
    let lone = format!(
        "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: lone\nspec:\n  module: {}\n  restartPolicy: Always\n  nodeSelector: {{flotilla.dev/hostname: n2}}\n",
        flotilla_workloads::path("version-v1").display()
    );
    apply(&c, "lone.yaml", &lone);
    c.wait_phase("lone", "Running", T);

    // Logs by owner and by label.
    let one = c.ok(&["logs", "deploy/web"]);
    assert_eq!(one, "version v1\n");
    let all = c.ok(&["logs", "-l", "app=web"]);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 4, "{all}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("[pod/web-") && l.ends_with("] version v1")),
        "{all}"
    );

    let refused = c.run(&["drain", "n2"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("default/lone") && err.contains("--force"),
        "{err}"
    );
    let node = c.get_json("node", "n2").expect("node");
    assert_ne!(
        node["spec"]["unschedulable"], true,
        "a refused drain changes nothing"
    );

    let out = c.ok(&["drain", "n2", "--force"]);
    assert!(
        out.contains("node/n2 cordoned")
            && out.contains("pod/lone evicted")
            && out.contains("node/n2 drained"),
        "{out}"
    );
    wait_for("every replica on n1", T, || {
        let all = pods(&c, "web");
        (all.len() == 4
            && all
                .iter()
                .all(|p| is_ready(p) && p["spec"]["nodeName"] == "n1"))
        .then_some(())
    });
    assert!(
        c.get_json("pod", "lone").is_none(),
        "forced: the pod without an owner is gone"
    );
    let nodes = c.ok(&["get", "nodes"]);
    assert!(nodes.contains("Ready,SchedulingDisabled"), "{nodes}");
    c.ok(&["uncordon", "n2"]);
}

/// A DaemonSet of the `version` sample at `release`.
fn daemon_set(release: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      module: {}
      restartPolicy: Always
",
        flotilla_workloads::path(&format!("version-{release}")).display()
    )
}

/// The nodes the ready pods of `app` run on, and their modules.
fn placed(c: &Cluster, app: &str) -> BTreeMap<String, String> {
    pods(c, app)
        .iter()
        .filter(|p| is_ready(p))
        .map(|p| {
            (
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["spec"]["module"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Whether the agent's pods are exactly one ready pod of `digest` on each of `nodes`.
fn runs_on(c: &Cluster, nodes: &[&str], digest: &str) -> Option<()> {
    let want: BTreeMap<String, String> = nodes
        .iter()
        .map(|n| (n.to_string(), digest.to_string()))
        .collect();
    (placed(c, "agent") == want && pods(c, "agent").len() == want.len()).then_some(())
}

#[test]
fn a_daemon_set_follows_the_nodes_and_rolls_out_node_by_node() {
    let mut c = Cluster::start("20s");
    for n in ["n1", "n2"] {
        c.start_node(n);
        c.wait_node_ready(n, "Ready", T);
    }
    apply(&c, "ds.yaml", &daemon_set("v1"));
    let v1 = digest_of("v1");
    wait_for("a pod on n1 and n2", T, || runs_on(&c, &["n1", "n2"], &v1));

    // A node that joins gets its pod.
    c.start_node("n3");
    c.wait_node_ready("n3", "Ready", T);
    wait_for("a pod on n3 too", T, || {
        runs_on(&c, &["n1", "n2", "n3"], &v1)
    });
    let table = c.ok(&["get", "ds"]);
    assert!(
        table.contains("agent") && table.contains("   3   "),
        "{table}"
    );

    // A cordoned and drained node loses it, and gets none back.
    let out = c.ok(&["drain", "n2"]);
    assert!(out.contains("evicted"), "{out}");
    wait_for("no pod on n2", T, || runs_on(&c, &["n1", "n3"], &v1));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        pods(&c, "agent").len(),
        2,
        "none made again on the cordoned node"
    );

    // A new template: replaced node by node, ending with v2 everywhere.
    apply(&c, "ds2.yaml", &daemon_set("v2"));
    let v2 = digest_of("v2");
    wait_for("v2 on n1 and n3", T, || runs_on(&c, &["n1", "n3"], &v2));
    let ds = c.get_json("ds", "agent").expect("daemonset");
    let s = &ds["status"];
    assert_eq!(
        (
            s["desiredNumberScheduled"].as_u64(),
            s["updatedNumberScheduled"].as_u64()
        ),
        (Some(2), Some(2)),
        "{s}"
    );

    // Uncordoned: n2 gets its pod again.
    c.ok(&["uncordon", "n2"]);
    wait_for("v2 on every node", T, || {
        runs_on(&c, &["n1", "n2", "n3"], &v2)
    });
    // Deleting the set deletes its pods.
    c.ok(&["delete", "ds", "agent"]);
    wait_for("the daemon pods to go", T, || {
        pods(&c, "agent").is_empty().then_some(())
    });
}

/// A Job of the `version` sample with `args`; `extra` more lines of its
/// spec (indented two spaces).
fn job(name: &str, args: &[&str], extra: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: flotilla.dev/v1
kind: Job
metadata: {{name: {name}}}
spec:
{extra}  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      module: {}
      args: [{}]
      restartPolicy: Never
      resources:
        limits: {{memory: 32Mi}}
",
        flotilla_workloads::path("version-v1").display(),
        args.join(", ")
    )
}

/// The `get -o json` items of a kind.
fn list(c: &Cluster, kind: &str) -> Vec<serde_json::Value> {
    let out = c.ok(&["get", kind, "-o", "json"]);
    if out.trim().is_empty() {
        return Vec::new();
    }
    items(serde_json::from_str(&out).expect("json"))
}

/// The condition of `type_` that holds on an object, with its reason.
fn holds(o: &serde_json::Value, type_: &str) -> Option<String> {
    o["status"]["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["type"] == type_ && c["status"] == "True")
            .map(|c| c["reason"].as_str().unwrap_or_default().to_string())
    })
}

#[test]
fn jobs_complete_or_fail_at_their_backoff_limit_and_cron_jobs_run_on_schedule_keeping_history() {
    let mut c = Cluster::start("20s");
    for n in ["n1", "n2"] {
        c.start_node(n);
        c.wait_node_ready(n, "Ready", T);
    }
    // Five completions, two at a time; a doomed Job that fails each pod.
    apply(
        &c,
        "five.yaml",
        &job(
            "five",
            &["exit-after", "1", "0"],
            "  completions: 5\n  parallelism: 2\n",
        ),
    );
    apply(
        &c,
        "doomed.yaml",
        &job("doomed", &["exit", "3"], "  backoffLimit: 1\n"),
    );
    let mut most_running = 0;
    let five = wait_for("the five-completion job to complete", T, || {
        let running = pods(&c, "five")
            .iter()
            .filter(|p| p["status"]["phase"] != "Succeeded" && p["status"]["phase"] != "Failed")
            .count();
        most_running = most_running.max(running);
        let j = c.get_json("job", "five")?;
        holds(&j, "Complete").map(|_| j)
    });
    assert!(
        most_running <= 2,
        "parallelism 2, saw {most_running} at once"
    );
    assert_eq!(five["status"]["succeeded"], 5, "{five}");
    let done = pods(&c, "five");
    assert_eq!(done.len(), 5, "one pod per completion, none failed");
    assert!(done.iter().all(|p| p["status"]["phase"] == "Succeeded"));
    let table = c.ok(&["get", "jobs"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("five") && l.contains("Complete") && l.contains("5/5")),
        "{table}"
    );
    let log = c.ok(&["logs", "job/five"]);
    assert!(log.contains("version v1"), "{log}");

    // backoffLimit 1: the second failure (after a 10 s back-off) ends it.
    let doomed = wait_for("the failing job to fail", T, || {
        let j = c.get_json("job", "doomed")?;
        holds(&j, "Failed").map(|reason| (j, reason))
    });
    assert_eq!(doomed.1, "BackoffLimitExceeded", "{}", doomed.0);
    assert_eq!(doomed.0["status"]["failed"], 2, "{}", doomed.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pods(&c, "doomed").len(), 2, "no pod after the job failed");

    // A CronJob every two seconds (the seconds field) keeps two of its
    // completed Jobs.
    let cron = format!(
        "apiVersion: flotilla.dev/v1
kind: CronJob
metadata: {{name: tick}}
spec:
  schedule: \"*/2 * * * * *\"
  timeZone: Europe/Madrid
  successfulJobsHistoryLimit: 2
  jobTemplate:
    spec:
      template:
        metadata: {{labels: {{app: tick}}}}
        spec:
          module: {}
          args: [exit, \"0\"]
          restartPolicy: Never
",
        flotilla_workloads::path("version-v1").display()
    );
    apply(&c, "tick.yaml", &cron);
    let mut seen = std::collections::BTreeSet::new();
    wait_for("the cron job to make five jobs", T, || {
        for j in list(&c, "jobs") {
            let name = j["metadata"]["name"].as_str().unwrap_or_default();
            if name.starts_with("tick-") {
                seen.insert(name.to_string());
            }
        }
        (seen.len() >= 5).then_some(())
    });
    wait_for("the history to keep two completed jobs", T, || {
        let ticks: Vec<serde_json::Value> = list(&c, "jobs")
            .into_iter()
            .filter(|j| {
                j["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("tick-")
            })
            .collect();
        let complete = ticks
            .iter()
            .filter(|j| holds(j, "Complete").is_some())
            .count();
        (complete == 2 && ticks.len() <= 3).then_some(())
    });
    let cj = c.ok(&["get", "cj"]);
    assert!(
        cj.lines()
            .any(|l| l.contains("tick") && l.contains("Europe/Madrid")),
        "{cj}"
    );
    // Suspended, it makes no more.
    apply(
        &c,
        "tick.yaml",
        &cron.replace(
            "  successfulJobsHistoryLimit",
            "  suspend: true\n  successfulJobsHistoryLimit",
        ),
    );
    std::thread::sleep(Duration::from_secs(1));
    let before = c.get_json("cj", "tick").expect("cronjob")["status"]["lastScheduleTime"].clone();
    std::thread::sleep(Duration::from_secs(5));
    let after = c.get_json("cj", "tick").expect("cronjob")["status"]["lastScheduleTime"].clone();
    assert_eq!(before, after, "a suspended cron job runs nothing");

    // Deleting the CronJob deletes its Jobs and their pods.
    c.ok(&["delete", "cj", "tick"]);
    wait_for("the cron job's jobs and pods to go", T, || {
        (list(&c, "jobs").iter().all(|j| {
            !j["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .starts_with("tick-")
        }) && pods(&c, "tick").is_empty())
        .then_some(())
    });
}

/// The names of the `get -o json` items of a kind in a namespace.
fn names_in(c: &Cluster, kind: &str, ns: &str) -> Vec<String> {
    let out = c.run(&["get", kind, "-n", ns, "-o", "json"]);
    if !out.status.success() || out.stdout.is_empty() {
        return Vec::new();
    }
    items(serde_json::from_slice(&out.stdout).expect("json"))
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

#[test]
fn namespaces_are_emptied_when_deleted_and_foreground_deletion_and_finalizers_hold_the_owner() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let table = c.ok(&["get", "ns"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("default") && l.contains("Active")),
        "{table}"
    );

    // A namespace must exist: apply says how to make it.
    let path = c.manifest("lab.yaml", &deployment("lab", 2, "v1", &[], ""));
    let path = path.to_str().expect("utf8");
    let out = c.run(&["apply", "-n", "lab", "-f", path]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--create-namespace"), "{err}");
    let out = c.ok(&["apply", "-n", "lab", "--create-namespace", "-f", path]);
    assert!(out.contains("namespace/lab created"), "{out}");
    c.ok(&["create", "namespace", "spare"]);
    wait_for("the lab deployment's pods", T, || {
        (names_in(&c, "pods", "lab").len() == 2).then_some(())
    });

    // Foreground: `delete` returns once the pods and the ReplicaSet are gone.
    apply(&c, "fg.yaml", &deployment("fg", 2, "v1", &[], ""));
    wait_settled(&c, "fg", 2, "v1");
    let out = c.ok(&[
        "delete",
        "deploy",
        "fg",
        "--cascade=foreground",
        "--timeout",
        "60s",
    ]);
    assert!(out.contains("deployment \"fg\" deleted"), "{out}");
    assert!(pods(&c, "fg").is_empty(), "pods gone before the owner");
    assert!(
        !names_in(&c, "rs", "default")
            .iter()
            .any(|n| n.starts_with("fg-")),
        "replica set gone before the owner"
    );
    assert!(c.get_json("deploy", "fg").is_none());

    // A finalizer of the user's holds a deleted owner (and its pods) until
    // a manifest without it is applied.
    let held = deployment("held", 1, "v1", &[], "").replace(
        "metadata:\n  name: held\n",
        "metadata:\n  name: held\n  finalizers: [example.com/hold]\n",
    );
    apply(&c, "held.yaml", &held);
    wait_settled(&c, "held", 1, "v1");
    c.ok(&["delete", "deploy", "held", "--wait=false"]);
    std::thread::sleep(Duration::from_secs(3));
    let d = c.get_json("deploy", "held").expect("still there");
    assert!(d["metadata"]["deletionTimestamp"].is_string(), "{d}");
    assert_eq!(pods(&c, "held").len(), 1, "its pod stays while it does");
    apply(&c, "held.yaml", &deployment("held", 1, "v1", &[], ""));
    wait_for("the released deployment and its pod to go", T, || {
        (c.get_json("deploy", "held").is_none() && pods(&c, "held").is_empty()).then_some(())
    });

    // The default namespace stays; another is emptied, then goes.
    let out = c.run(&["delete", "ns", "default"]);
    assert!(!out.status.success());
    let out = c.ok(&["delete", "ns", "lab", "--timeout", "60s"]);
    assert!(out.contains("namespace \"lab\" deleted"), "{out}");
    assert!(names_in(&c, "pods", "lab").is_empty());
    assert!(names_in(&c, "deploy", "lab").is_empty());
    let table = c.ok(&["get", "ns"]);
    assert!(!table.contains("lab"), "{table}");
    assert!(table.contains("spare"), "{table}");
}

#[test]
fn events_tell_what_happened_count_repeats_and_end_describe() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let mut watch = std::process::Command::new(common::BIN)
        .args(["get", "events", "--watch"])
        .env("FLOTILLA_CONFIG", &c.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("watch events");

    // A release that crashes: it backs off, and each crash counts.
    apply(
        &c,
        "crashy.yaml",
        &deployment("crashy", 1, "v1", &["exit", "1"], ""),
    );
    let pod = wait_for("the crashing pod", T, || {
        pods(&c, "crashy")
            .first()
            .and_then(|p| p["metadata"]["name"].as_str().map(String::from))
    });
    let backoff = wait_for("its BackOff event to count two crashes", T, || {
        list(&c, "events")
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == pod.as_str() && e["reason"] == "BackOff")
            .find(|e| e["count"].as_u64().is_some_and(|n| n >= 2))
    });
    assert_eq!(backoff["type"], "Warning", "{backoff}");
    assert_eq!(backoff["source"]["host"], "n1", "{backoff}");
    let same: Vec<serde_json::Value> = list(&c, "events")
        .into_iter()
        .filter(|e| e["involvedObject"]["name"] == pod.as_str() && e["reason"] == "BackOff")
        .collect();
    assert_eq!(same.len(), 1, "one Event, counted: {same:?}");

    // describe ends with the object's events.
    let described = c.ok(&["describe", "pod", &pod]);
    let events = described
        .split("\nEvents:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no Events section: {described}"));
    for reason in ["Scheduled", "Started", "BackOff"] {
        assert!(events.contains(reason), "{reason}: {events}");
    }
    assert!(
        events.contains("(x"),
        "a repeated event shows its count: {events}"
    );
    let deploy = c.ok(&["describe", "deploy", "crashy"]);
    assert!(deploy.contains("ScalingReplicaSet"), "{deploy}");
    let rs_name = names_in(&c, "rs", "default")
        .into_iter()
        .find(|n| n.starts_with("crashy-"))
        .expect("its replica set");
    let rs = c.ok(&["describe", "rs", &rs_name]);
    assert!(rs.contains("SuccessfulCreate"), "{rs}");
    let table = c.ok(&["get", "ev"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("Scheduled") && l.contains(&format!("pod/{pod}"))),
        "{table}"
    );

    // The watch printed them as they came.
    std::thread::sleep(Duration::from_secs(1));
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("watch output");
    let seen = String::from_utf8_lossy(&out.stdout);
    for reason in ["Scheduled", "BackOff", "SuccessfulCreate"] {
        assert!(seen.contains(reason), "{reason} in the watch: {seen}");
    }
}
