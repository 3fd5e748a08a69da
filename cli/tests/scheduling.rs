//! The scheduler end to end: the real `flotilla` binary as master and
//! nodes on loopback, and what a user sees of each placement (`get pod -o
//! wide`, `describe`): resources, taints and cordons, what a module
//! imports, priority and preemption, and a CPU limit held on a real node.
//! The decisions themselves are tested as tables in `master/src/scheduler`.

mod common;

use common::{pod_yaml, wait_for, Cluster};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const MIB: u64 = 1 << 20;

/// `flotilla apply -f` a manifest written into the cluster's directory.
fn apply(c: &Cluster, file: &str, text: &str) -> String {
    let path = c.manifest(file, text);
    c.ok(&["apply", "-f", path.to_str().expect("utf8")])
}

/// The columns of `get pod POD -o wide`, by header (NAME, STATUS, NODE, ...).
fn wide(c: &Cluster, pod: &str) -> HashMap<String, String> {
    let out = c.ok(&["get", "pod", pod, "-o", "wide"]);
    let mut lines = out.lines();
    let header = lines.next().unwrap_or_default().split_whitespace();
    let row = lines.next().unwrap_or_default().split_whitespace();
    header
        .map(String::from)
        .zip(row.map(String::from))
        .collect()
}

/// The node a pod is bound to ("" while it is not).
fn node_of(c: &Cluster, pod: &str) -> String {
    c.get_json("pod", pod)
        .and_then(|v| v["spec"]["nodeName"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Waits until `pod` is Pending with reason Unschedulable; gives its message.
fn wait_unschedulable(c: &Cluster, pod: &str) -> String {
    wait_for(&format!("pod {pod} to be Unschedulable"), T, || {
        (c.pod_field(pod, "reason") == "Unschedulable").then(|| c.pod_field(pod, "message"))
    })
}

/// Waits until `pod` is Unschedulable with exactly `message`, and checks
/// that a user sees it: STATUS Unschedulable and no NODE in `get -o wide`,
/// the reason and message in `describe`.
fn assert_waits(c: &Cluster, pod: &str, message: &str) {
    wait_for(&format!("pod {pod} to say {message:?}"), T, || {
        (c.pod_field(pod, "reason") == "Unschedulable" && c.pod_field(pod, "message") == message)
            .then_some(())
    });
    assert_eq!(c.pod_field(pod, "phase"), "Pending", "{pod}");
    assert_eq!(node_of(c, pod), "", "{pod}");
    let row = wide(c, pod);
    assert_eq!(row["STATUS"], "Unschedulable", "{row:?}");
    assert_eq!(row["NODE"], "<none>", "{row:?}");
    let described = c.ok(&["describe", "pod", pod]);
    for (key, value) in [
        ("Status", "Unschedulable"),
        ("Node", "<none>"),
        ("Message", message),
    ] {
        assert_eq!(field(&described, key), value, "{described}");
    }
    let condition = pod_scheduled(c, pod);
    assert_eq!(condition["status"], false, "{condition}");
    assert_eq!(condition["reason"], "Unschedulable", "{condition}");
    assert_eq!(condition["message"], message, "{condition}");
}

/// The PodScheduled condition of a pod.
fn pod_scheduled(c: &Cluster, pod: &str) -> serde_json::Value {
    c.get_json("pod", pod).expect("pod")["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
        .unwrap_or_else(|| panic!("{pod} has no PodScheduled condition"))
}

/// Checks what a user sees of a pod that runs or ran on `node`.
fn assert_placed(c: &Cluster, pod: &str, node: &str) {
    assert_eq!(node_of(c, pod), node, "{pod}");
    let row = wide(c, pod);
    assert_eq!(row["NODE"], node, "{pod}: {row:?}");
    assert_ne!(row["STATUS"], "Unschedulable", "{pod}: {row:?}");
    let condition = pod_scheduled(c, pod);
    assert_eq!(condition["status"], true, "{condition}");
    assert_eq!(
        condition["message"],
        format!("bound to {node}"),
        "{condition}"
    );
    let described = c.ok(&["describe", "pod", pod]);
    assert_eq!(field(&described, "Node"), node, "{described}");
}

/// The value of a top-level `Key:  value` line of `describe`.
fn field<'a>(described: &'a str, key: &str) -> &'a str {
    described
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in:\n{described}"))
}

/// A node field of `status` (`capacity`, `allocatable`) as a number.
fn node_number(c: &Cluster, node: &str, field: &str, key: &str) -> u64 {
    c.get_json("node", node).expect("node")["status"][field][key]
        .as_u64()
        .unwrap_or(0)
}

/// Starts node `name` offering pods `allocatable` bytes of memory: the
/// machine's memory is what it is, so the node is started once to read its
/// capacity and again with `--reserve-memory` the rest.
fn start_small_node(c: &mut Cluster, name: &str, allocatable: u64) {
    c.start_node(name);
    c.wait_node_ready(name, "Ready", T);
    let capacity = node_number(c, name, "capacity", "memoryBytes");
    assert!(capacity > allocatable + 64 * MIB, "capacity {capacity}");
    c.kill_node(name);
    let reserve = (capacity - allocatable).to_string();
    c.start_node_args(name, &["--reserve-memory", &reserve]);
    wait_for(&format!("{name} to offer {allocatable} bytes"), T, || {
        let node = c.get_json("node", name)?;
        (node["status"]["ready"] == "Ready"
            && node["status"]["allocatable"]["memoryBytes"].as_u64() == Some(allocatable))
        .then_some(())
    });
}

/// A hello pod (exits at once) with more spec lines.
fn hello(name: &str, extra_spec: &str) -> String {
    pod_yaml(name, "hello", &[], "Never", extra_spec)
}

#[test]
fn a_pod_too_big_for_every_node_waits_until_one_joins() {
    let mut c = Cluster::start("10s");
    start_small_node(&mut c, "small", 256 * MIB);

    apply(
        &c,
        "big.yaml",
        &hello("big", "  resources:\n    requests: {memory: 1Gi}\n"),
    );
    assert_waits(&c, "big", "0/1 nodes are available: 1 Insufficient memory.");

    // A node with the machine's memory joins: the waiting pod is looked at
    // again and bound there, not on the small one.
    c.start_node("large");
    c.wait_phase("big", "Succeeded", T);
    assert_placed(&c, "big", "large");
    assert_eq!(c.pod_field("big", "reason"), "Completed");
    assert_eq!(c.pod_field("big", "message"), "");
    let logs = c.ok(&["logs", "big"]);
    assert!(logs.contains("hello from flotilla"), "{logs}");
}

#[test]
fn taints_and_cordons_keep_pods_off_a_node() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    c.start_node("n2");
    c.wait_node_ready("n1", "Ready", T);
    c.wait_node_ready("n2", "Ready", T);

    let out = c.ok(&["taint", "node", "n1", "dedicated=edge:NoSchedule"]);
    assert!(out.contains("node/n1 tainted"), "{out}");
    let yaml = c.ok(&["get", "node", "n1", "-o", "yaml"]);
    for want in [
        "taints:",
        "key: dedicated",
        "value: edge",
        "effect: NoSchedule",
    ] {
        assert!(yaml.contains(want), "{want:?} missing from:\n{yaml}");
    }

    // Pods without a toleration go to n2 only (untainted, n1 would win the
    // ties: equal nodes go to the name that sorts first).
    let free: Vec<String> = (0..4).map(|i| format!("free-{i}")).collect();
    let docs: Vec<String> = free.iter().map(|p| hello(p, "")).collect();
    apply(&c, "free.yaml", &docs.join("---\n"));
    for pod in &free {
        c.wait_phase(pod, "Succeeded", T);
        assert_placed(&c, pod, "n2");
    }

    // A tolerating pod may go to n1, and does when it asks for it.
    let to_n1 = "  nodeSelector: {flotilla.dev/hostname: n1}\n";
    let toleration =
        "  tolerations:\n    - {key: dedicated, operator: Equal, value: edge, effect: NoSchedule}\n";
    apply(
        &c,
        "tolerant.yaml",
        &hello("tolerant", &format!("{to_n1}{toleration}")),
    );
    c.wait_phase("tolerant", "Succeeded", T);
    assert_placed(&c, "tolerant", "n1");

    // One that asks for n1 without the toleration waits, saying why for each node.
    apply(&c, "intolerant.yaml", &hello("intolerant", to_n1));
    assert_waits(
        &c,
        "intolerant",
        "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
         1 node(s) had untolerated taint {dedicated: edge}.",
    );
    // Removing the taint lets it in.
    c.ok(&["taint", "node", "n1", "dedicated:NoSchedule-"]);
    let yaml = c.ok(&["get", "node", "n1", "-o", "yaml"]);
    assert!(!yaml.contains("dedicated"), "{yaml}");
    c.wait_phase("intolerant", "Succeeded", T);
    assert_placed(&c, "intolerant", "n1");

    // A cordoned node takes no new pods; the other one takes them all.
    let out = c.ok(&["cordon", "n1"]);
    assert!(out.contains("node/n1 cordoned"), "{out}");
    let nodes = c.ok(&["get", "nodes"]);
    assert!(nodes.contains("Ready,SchedulingDisabled"), "{nodes}");
    let spread: Vec<String> = (0..3).map(|i| format!("spread-{i}")).collect();
    let docs: Vec<String> = spread.iter().map(|p| hello(p, "")).collect();
    apply(&c, "spread.yaml", &docs.join("---\n"));
    for pod in &spread {
        c.wait_phase(pod, "Succeeded", T);
        assert_placed(&c, pod, "n2");
    }
    // With both cordoned a pod waits; uncordoned, n1 takes it.
    c.ok(&["cordon", "n2"]);
    apply(&c, "waiting.yaml", &hello("waiting", ""));
    assert_waits(
        &c,
        "waiting",
        "0/2 nodes are available: 2 node(s) were unschedulable.",
    );
    let out = c.ok(&["uncordon", "n1"]);
    assert!(out.contains("node/n1 uncordoned"), "{out}");
    c.wait_phase("waiting", "Succeeded", T);
    assert_placed(&c, "waiting", "n1");
    let nodes = c.ok(&["get", "nodes"]);
    assert_eq!(
        nodes.matches("SchedulingDisabled").count(),
        1,
        "only n2 is cordoned:\n{nodes}"
    );
}

#[test]
fn a_module_importing_sockets_goes_only_where_sockets_are_provided() {
    let mut c = Cluster::start("10s");
    c.start_node_args("closed", &["--deny", "wasi:sockets"]);
    c.wait_node_ready("closed", "Ready", T);

    // Only the node that withholds sockets: the pod waits, naming the interface.
    apply(
        &c,
        "net-0.yaml",
        &pod_yaml("net-0", "sockets", &[], "Never", ""),
    );
    let message = wait_unschedulable(&c, "net-0");
    assert!(
        message.starts_with("0/1 nodes are available: 1 node(s) do not provide wasi:sockets/")
            && message.ends_with("@0.2.x."),
        "{message}"
    );
    assert_waits(&c, "net-0", &message);

    // The upload recorded what the module imports, and the wide listing shows it.
    let digest = c.get_json("pod", "net-0").expect("pod")["spec"]["module"]
        .as_str()
        .expect("module digest")
        .to_string();
    // A Module is named by its digest with `-` for `:`.
    let module = c
        .get_json("module", &digest.replace(':', "-"))
        .expect("module");
    let imports: Vec<&str> = module["status"]["imports"]
        .as_array()
        .expect("imports")
        .iter()
        .filter_map(|i| i.as_str())
        .collect();
    assert!(
        imports
            .iter()
            .any(|i| i.starts_with("wasi:sockets/tcp@0.2.")),
        "{imports:?}"
    );
    let listing = c.ok(&["get", "modules", "-o", "wide"]);
    let row = listing
        .lines()
        .find(|l| digest.starts_with(l.split_whitespace().next().unwrap_or("-")))
        .unwrap_or_else(|| panic!("{digest} missing from:\n{listing}"));
    assert!(row.contains("wasi:sockets"), "{row}\n{listing}");

    // A node that provides sockets joins: the pod goes there and starts.
    c.start_node("open");
    c.wait_phase("net-0", "Succeeded", T);
    assert_placed(&c, "net-0", "open");
    let logs = c.ok(&["logs", "net-0"]);
    assert!(
        logs.contains("listening on ") || logs.contains("no network: "),
        "{logs}"
    );

    // With both nodes there, every such pod goes to the open one, though
    // the closed one would win ties ("closed" sorts first).
    let pods: Vec<String> = (1..4).map(|i| format!("net-{i}")).collect();
    let docs: Vec<String> = pods
        .iter()
        .map(|p| pod_yaml(p, "sockets", &[], "Never", ""))
        .collect();
    apply(&c, "net.yaml", &docs.join("---\n"));
    for pod in &pods {
        c.wait_phase(pod, "Succeeded", T);
        assert_placed(&c, pod, "open");
    }
    // One pinned to the closed node waits, and each node's reason is counted.
    apply(
        &c,
        "pinned.yaml",
        &pod_yaml(
            "pinned",
            "sockets",
            &[],
            "Never",
            "  nodeSelector: {flotilla.dev/hostname: closed}\n",
        ),
    );
    let message = wait_unschedulable(&c, "pinned");
    assert!(
        message.starts_with("0/2 nodes are available: ")
            && message.contains("1 node(s) didn't match Pod's node affinity/selector")
            && message.contains("1 node(s) do not provide wasi:sockets/"),
        "{message}"
    );
    // Other modules still run on the closed node.
    apply(
        &c,
        "plain.yaml",
        &hello("plain", "  nodeSelector: {flotilla.dev/hostname: closed}\n"),
    );
    c.wait_phase("plain", "Succeeded", T);
    assert_placed(&c, "plain", "closed");
}

/// A ticker pod (runs until deleted) of a priority class, requesting `memory`.
fn ticker(name: &str, class: &str, memory: &str) -> String {
    pod_yaml(
        name,
        "ticker",
        &[],
        "Always",
        &format!(
            "  priorityClassName: {class}\n  resources:\n    requests: {{memory: {memory}}}\n"
        ),
    )
}

fn exists(c: &Cluster, pod: &str) -> bool {
    c.get_json("pod", pod).is_some()
}

#[test]
fn a_higher_priority_pod_preempts_the_fewest_lower_priority_pods() {
    let mut c = Cluster::start("10s");
    start_small_node(&mut c, "n1", 256 * MIB);
    let class = |name: &str, value: u32, policy: &str| {
        format!(
            "apiVersion: flotilla.dev/v1\nkind: PriorityClass\nmetadata: {{name: {name}}}\n\
             value: {value}\npreemptionPolicy: {policy}\n"
        )
    };
    apply(
        &c,
        "classes.yaml",
        &[
            class("low", 10, "PreemptLowerPriority"),
            class("high", 1000, "PreemptLowerPriority"),
            class("patient", 1000, "Never"),
        ]
        .join("---\n"),
    );
    let classes = c.ok(&["get", "priorityclasses"]);
    for want in ["low", "high", "patient", "Never"] {
        assert!(classes.contains(want), "{want:?} missing from:\n{classes}");
    }

    // 256Mi: a pod of class high and three of class low, 64Mi each, fill it.
    apply(&c, "peer.yaml", &ticker("peer", "high", "64Mi"));
    c.wait_phase("peer", "Running", T);
    let lows = ["low-1", "low-2", "low-3"];
    for pod in lows {
        // One apply each, so each is newer than the one before.
        apply(&c, &format!("{pod}.yaml"), &ticker(pod, "low", "64Mi"));
        c.wait_phase(pod, "Running", T);
        assert_placed(&c, pod, "n1");
    }
    let priority = |pod: &str| c.get_json("pod", pod).expect("pod")["spec"]["priority"].clone();
    assert_eq!(priority("peer"), 1000);
    assert_eq!(priority("low-1"), 10);
    // Another low pod does not preempt pods of its own priority: it waits.
    apply(&c, "low-4.yaml", &ticker("low-4", "low", "64Mi"));
    assert_waits(
        &c,
        "low-4",
        "0/1 nodes are available: 1 Insufficient memory.",
    );

    // A high pod of 128Mi preempts two low pods, the newest, and runs.
    apply(&c, "urgent.yaml", &ticker("urgent", "high", "128Mi"));
    c.wait_phase("urgent", "Running", T);
    assert_placed(&c, "urgent", "n1");
    assert_eq!(c.pod_field("urgent", "nominatedNodeName"), "");
    assert!(
        !exists(&c, "low-3") && !exists(&c, "low-2"),
        "the victims are still there"
    );
    assert!(exists(&c, "low-1"), "one victim too many");
    assert_eq!(c.pod_field("low-1", "phase"), "Running");
    assert_eq!(c.pod_field("peer", "phase"), "Running", "equal priority");
    // The room freed was kept for the preemptor, not given to low-4.
    assert_eq!(c.pod_field("low-4", "phase"), "Pending");
    assert_eq!(node_of(&c, "low-4"), "");
    let log = c.node_log("master");
    assert!(
        log.contains("preempting lower-priority pods") && log.contains("victims=2"),
        "{log}"
    );
    c.ok(&["delete", "pod", "low-4"]);

    // Evicting every lower-priority pod would not be enough for 192Mi
    // (peer and urgent, of equal priority, hold 192Mi): nobody is evicted.
    apply(&c, "greedy.yaml", &ticker("greedy", "high", "192Mi"));
    assert_waits(
        &c,
        "greedy",
        "0/1 nodes are available: 1 Insufficient memory.",
    );
    assert_eq!(c.pod_field("low-1", "phase"), "Running", "evicted in vain");
    c.ok(&["delete", "pod", "greedy"]);

    // A pod whose class never preempts waits for room instead.
    apply(&c, "polite.yaml", &ticker("polite", "patient", "64Mi"));
    assert_waits(
        &c,
        "polite",
        "0/1 nodes are available: 1 Insufficient memory.",
    );
    assert_eq!(priority("polite"), 1000);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.pod_field("low-1", "phase"), "Running", "no preemption");
    assert_eq!(c.pod_field("polite", "nominatedNodeName"), "");
    // When room is made, it is bound.
    c.ok(&["delete", "pod", "low-1"]);
    c.wait_phase("polite", "Running", T);
    assert_placed(&c, "polite", "n1");
    for pod in ["peer", "urgent"] {
        assert_eq!(c.pod_field(pod, "phase"), "Running", "{pod}");
        assert_eq!(c.pod_field(pod, "restartCount"), "0", "{pod}");
    }
}

/// CPU time (user and system) that process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // The command name (field 2) may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("CLK_TCK")
}

/// Runs `hog spin` as `pod` with `extra_spec` on the cluster's one node and
/// gives the share of one core the node process used over `window` once it
/// runs; the pod is deleted after.
fn spin_share(c: &Cluster, pod: &str, extra_spec: &str, window: Duration) -> f64 {
    apply(
        c,
        &format!("{pod}.yaml"),
        &pod_yaml(pod, "hog", &["spin"], "Never", extra_spec),
    );
    c.wait_phase(pod, "Running", T);
    assert_placed(c, pod, "n1");
    let pid = c.node_pid("n1").expect("node runs");
    let (start, used) = (Instant::now(), cpu_time(pid));
    std::thread::sleep(window);
    let share = (cpu_time(pid) - used).as_secs_f64() / start.elapsed().as_secs_f64();
    assert_eq!(c.pod_field(pod, "phase"), "Running", "{pod} spins on");
    c.ok(&["delete", "pod", pod]);
    wait_for(&format!("{pod} to be gone"), T, || {
        (!exists(c, pod)).then_some(())
    });
    share
}

#[test]
fn a_cpu_limit_holds_a_spinning_pod_to_its_share() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let window = Duration::from_secs(4);

    let limited = spin_share(
        &c,
        "limited",
        "  resources:\n    limits: {cpu: 100m}\n",
        window,
    );
    let unlimited = spin_share(&c, "unlimited", "", window);
    eprintln!("node CPU: {limited:.2} of a core with limits.cpu 100m, {unlimited:.2} without");
    // Loose: 100m is a tenth of a core, the agent uses a little itself, and
    // the machine is shared.
    assert!(limited < 0.5, "limited: {limited:.2} of a core");
    assert!(
        limited < unlimited,
        "limited {limited:.2} vs unlimited {unlimited:.2}"
    );
}
