//! ARM from day one: the aarch64 build of `flotilla` (node feature only),
//! run under qemu-user, joins an x86_64 master beside an x86_64 node; a pod
//! for arm64 waits rather than land on the amd64 node, then runs on the
//! arm64 one, and a pod for amd64 never lands on it. An http pod on the
//! arm64 node serves a Service, reached through the amd64 node's proxy.
//! The emulated node compiles nothing: the master compiles both modules
//! for its engine, and its compile counter stays at zero.
//!
//! The armv7 build runs its pods through wasmtime's Pulley interpreter,
//! with bytecode the x86_64 master compiled for it. The static aarch64
//! build (musl) runs with no system libraries at all.
//!
//! Needs the cross builds (`scripts/test.sh` makes them) and qemu-user, so
//! they are ignored by a plain `cargo test`; run them with
//! `cargo test -p flotilla --test arm -- --ignored`.

mod common;

use common::{cross_binary, http, pod_yaml, wait_for, Cluster};
use std::path::PathBuf;
use std::time::Duration;

fn aarch64_binary() -> PathBuf {
    cross_binary("FLOTILLA_AARCH64_BIN", "aarch64-unknown-linux-gnu")
}

#[test]
#[ignore = "needs the armv7 cross build and qemu-user: run by scripts/test.sh"]
fn armv7_runs_pods_through_pulley_with_code_the_x86_master_compiled() {
    let bin = cross_binary("FLOTILLA_ARMV7_BIN", "armv7-unknown-linux-gnueabihf");
    let mut c = Cluster::start("30s");
    let bin = bin.to_string_lossy().into_owned();
    c.start_node_with_args(
        "pi2",
        &["qemu-arm", "-L", "/usr/arm-linux-gnueabihf", &bin],
        &[],
    );
    let slow = Duration::from_secs(180);
    c.wait_node_ready("pi2", "Ready", slow);
    let node = c.get_json("node", "pi2").expect("node");
    let info = &node["status"]["nodeInfo"];
    assert_eq!(info["architecture"], "arm", "{node}");
    assert_eq!(info["wasmEngine"], "pulley", "{node}");
    assert_eq!(info["engine"]["code"]["target"], "pulley32", "{node}");
    // A 32-bit machine has no address space for an instance pool.
    assert_eq!(
        info["engine"]["httpSlots"].as_u64().unwrap_or(0),
        0,
        "{node}"
    );
    let wide = c.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("pulley32"), "{wide}");
    let message = c.hello(
        "hello-v7",
        "from-armv7",
        "  nodeSelector: {flotilla.dev/arch: arm}\n",
        slow,
    );
    assert!(message.contains("precompiled by the master"), "{message}");
    let counts = c.code_counts("pi2", 1, slow);
    assert_eq!(counts["compiled"].as_u64().unwrap_or(0), 0, "{counts}");
}

#[test]
#[ignore = "needs the aarch64 musl cross build and qemu-user: run by scripts/test.sh"]
fn the_static_aarch64_node_joins_with_no_system_libraries() {
    let bin = cross_binary("FLOTILLA_AARCH64_MUSL_BIN", "aarch64-unknown-linux-musl");
    assert!(
        !asks_for_a_loader(&bin),
        "{} names a program interpreter: it is not static",
        bin.display()
    );
    let mut c = Cluster::start("30s");
    let bin = bin.to_string_lossy().into_owned();
    // No `-L`: this machine has no aarch64 loader or libc where a
    // dynamically linked binary looks for them, so only a static one runs.
    c.start_node_with_args("pi-musl", &["qemu-aarch64", &bin], &["--http-slots", "4"]);
    let slow = Duration::from_secs(180);
    c.wait_node_ready("pi-musl", "Ready", slow);
    let node = c.get_json("node", "pi-musl").expect("node");
    let info = &node["status"]["nodeInfo"];
    assert_eq!(info["architecture"], "arm64", "{node}");
    assert_eq!(
        info["engine"]["code"]["target"], "aarch64-unknown-linux-musl",
        "{node}"
    );
    let message = c.hello(
        "hello-musl",
        "from-musl",
        "  nodeSelector: {flotilla.dev/arch: arm64}\n",
        slow,
    );
    assert!(message.contains("precompiled by the master"), "{message}");
    let counts = c.code_counts("pi-musl", 1, slow);
    assert_eq!(counts["compiled"].as_u64().unwrap_or(0), 0, "{counts}");
}

/// Whether the 64-bit little-endian ELF file `path` has a program header
/// of type PT_INTERP: a dynamic loader to start it, so not static.
fn asks_for_a_loader(path: &std::path::Path) -> bool {
    let elf = std::fs::read(path).expect("the binary");
    assert!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "not a 64-bit little-endian ELF"
    );
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().expect("8 bytes"));
    let phoff = usize::try_from(phoff).expect("offset");
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().expect("4 bytes")) == 3
    })
}

/// The node a pod is bound to.
fn node_of(c: &Cluster, pod: &str) -> String {
    c.get_json("pod", pod)
        .and_then(|p| p["spec"]["nodeName"].as_str().map(String::from))
        .unwrap_or_default()
}

#[test]
#[ignore = "needs the aarch64 cross build and qemu-user: run by scripts/test.sh"]
fn arm64_pods_run_on_the_aarch64_node_under_qemu_and_never_on_amd64() {
    let bin = aarch64_binary();
    let mut c = Cluster::start("30s");
    c.start_node("amd");
    c.wait_node_ready("amd", "Ready", Duration::from_secs(60));
    // Only an amd64 node yet: the arm64 pod waits, and says why.
    let pod = c.manifest(
        "hello-arm.yaml",
        &pod_yaml(
            "hello-arm",
            "hello",
            &["from-arm"],
            "Never",
            "  nodeSelector: {flotilla.dev/arch: arm64}\n",
        ),
    );
    c.ok(&["apply", "-f", pod.to_str().expect("utf8")]);
    let message = wait_for("the arm64 pod to wait", Duration::from_secs(60), || {
        (c.pod_field("hello-arm", "reason") == "Unschedulable")
            .then(|| c.pod_field("hello-arm", "message"))
    });
    assert_eq!(
        message,
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    );
    let bin = bin.to_string_lossy().into_owned();
    // qemu-user tracks every page of the address space a process reserves,
    // so the 4 TiB of a default instance pool would cost it real memory
    // (it was OOM-killed): a few slots under emulation.
    c.start_node_with_args(
        "pi",
        &["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", &bin],
        &["--http-slots", "4"],
    );
    // Emulated start-up and the first compile are slow: be patient, not flaky.
    let slow = Duration::from_secs(180);
    c.wait_node_ready("pi", "Ready", slow);
    let node = c.get_json("node", "pi").expect("node");
    assert_eq!(
        node["status"]["nodeInfo"]["architecture"], "arm64",
        "{node}"
    );
    assert_eq!(node["metadata"]["labels"]["flotilla.dev/arch"], "arm64");
    // The waiting pod is retried when the arm64 node joins, and runs there.
    c.wait_phase("hello-arm", "Succeeded", slow);
    let logs = c.ok(&["logs", "hello-arm"]);
    assert!(
        logs.contains("arg[1]=from-arm") && logs.contains("hello from flotilla"),
        "{logs}"
    );
    assert_eq!(node_of(&c, "hello-arm"), "pi");
    // The emulated node compiled nothing: the x86_64 master compiled the
    // module for its engine (baseline aarch64 code), and the node loaded it.
    let node = c.get_json("node", "pi").expect("node");
    let engine = &node["status"]["nodeInfo"]["engine"];
    assert_eq!(
        engine["code"]["target"], "aarch64-unknown-linux-gnu",
        "{engine}"
    );
    assert_eq!(engine["code"]["cpu"], "baseline", "{engine}");
    let fingerprint = engine["fingerprint"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!fingerprint.is_empty(), "{engine}");
    let message = c.module_ready_message("hello-arm");
    assert!(message.contains("precompiled by the master"), "{message}");
    let records = c.code_records("hello");
    assert!(
        records
            .iter()
            .any(|r| r["fingerprint"] == fingerprint.as_str()
                && r["target"] == "aarch64-unknown-linux-gnu"),
        "{records:?}"
    );
    let counts = c.code_counts("pi", 1, slow);
    assert_eq!(counts["compiled"].as_u64().unwrap_or(0), 0, "{counts}");
    // And a pod for amd64 lands on the amd64 node, never on the arm64 one.
    let pod = c.manifest(
        "hello-amd.yaml",
        &pod_yaml(
            "hello-amd",
            "hello",
            &[],
            "Never",
            "  nodeSelector: {flotilla.dev/arch: amd64}\n",
        ),
    );
    c.ok(&["apply", "-f", pod.to_str().expect("utf8")]);
    c.wait_phase("hello-amd", "Succeeded", slow);
    assert_eq!(node_of(&c, "hello-amd"), "amd");
    let wide = c.ok(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.lines()
            .any(|l| l.contains("hello-arm") && l.contains("pi")),
        "{wide}"
    );

    // An http pod on the arm64 node, behind a Service: the amd64 node's
    // proxy reaches it over QUIC, the arm64 node's in-process.
    let port = common::free_port();
    let web = format!(
        "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: web-arm\n  labels: {{app: web-arm}}\nspec:\n  module: {}\n  restartPolicy: Always\n  nodeSelector: {{flotilla.dev/arch: arm64}}\n  env:\n  - name: NODE_NAME\n    valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}\n---\napiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: web-arm\nspec:\n  selector: {{app: web-arm}}\n  ports:\n  - {{port: {port}}}\n",
        flotilla_workloads::path("hello-http").display()
    );
    let web = c.manifest("web-arm.yaml", &web);
    c.ok(&["apply", "-f", web.to_str().expect("utf8")]);
    for node in ["amd", "pi"] {
        let addr = format!("{}:{port}", c.proxy_address(node));
        let (_, body) = wait_for(&format!("web-arm answering through {node}"), slow, || {
            http(&addr, "GET", "/", b"").filter(|(s, _)| *s == 200)
        });
        assert!(
            body.starts_with("hello from web-arm on pi (request "),
            "{body}"
        );
    }
    // The http component too came compiled from the master.
    let counts = c.code_counts("pi", 2, slow);
    assert_eq!(counts["compiled"].as_u64().unwrap_or(0), 0, "{counts}");
}
