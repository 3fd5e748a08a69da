//! Edge devices with the real binary: a node's engine profile (its device
//! class, its code target, its pool and threads) as the flags set it, and
//! code the master compiles for the nodes' engines, which a node loads
//! instead of compiling, and only if it is the code the cluster recorded.

mod common;

use common::{wait_for, Cluster, BIN};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// `flotilla node` with `args` (and no master to reach): its error.
fn node_refuses(args: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(BIN)
        .args([
            "node",
            "--master",
            "127.0.0.1:9",
            "--token",
            "t",
            "--data-dir",
        ])
        .arg(dir.path())
        .args(args)
        .output()
        .expect("run flotilla node");
    assert!(!out.status.success(), "{args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_node_reports_its_engine_profile_and_flags_override_every_choice() {
    for (args, says) in [
        (&["--device-class", "huge"][..], "--device-class"),
        (&["--engine-cpu", "fast"][..], "--engine-cpu"),
        (&["--runtime-threads", "0"][..], "--runtime-threads"),
        (&["--memory-reservation", "100"][..], "--memory-reservation"),
        (&["--memory-guard", "lots"][..], "--memory-guard"),
    ] {
        let err = node_refuses(args);
        assert!(err.contains(says), "{args:?}: {err}");
    }

    let mut c = Cluster::start("30s");
    c.start_node_args("std", &["--no-precompiled-code"]);
    c.start_node_args(
        "pi",
        &[
            "--device-class",
            "tiny",
            "--engine-cpu",
            "baseline",
            "--memory-reservation",
            "256Mi",
            "--memory-guard",
            "1Mi",
            "--http-slots",
            "8",
        ],
    );
    c.wait_node_ready("std", "Ready", WAIT);
    c.wait_node_ready("pi", "Ready", WAIT);
    let engine = |name: &str| {
        c.get_json("node", name).expect("node")["status"]["nodeInfo"]["engine"].clone()
    };
    let pi = engine("pi");
    assert_eq!(pi["class"], "tiny", "{pi}");
    assert_eq!(pi["code"]["cpu"], "baseline", "{pi}");
    assert_eq!(pi["code"]["memoryReservation"], 256u64 << 20, "{pi}");
    assert_eq!(pi["code"]["memoryGuard"], 1u64 << 20, "{pi}");
    assert_eq!(pi["httpSlots"], 8, "{pi}");
    // A tiny device runs its pods on one thread (the count is the
    // process's own runtime's).
    assert_eq!(pi["runtimeThreads"], 1, "{pi}");
    let std = engine("std");
    assert_eq!(std["code"]["cpu"], "native", "{std}");
    assert_ne!(
        pi["fingerprint"], std["fingerprint"],
        "another engine, other code"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let by_class = match std["class"].as_str() {
        Some("standard") => cores,
        Some("small") => cores.min(2),
        _ => 1,
    };
    assert_eq!(std["runtimeThreads"], by_class, "{std}");

    let wide = c.ok(&["get", "nodes", "-o", "wide"]);
    let line = wide
        .lines()
        .find(|l| l.starts_with("pi "))
        .expect("pi's line");
    for column in ["tiny", "cranelift-baseline", " 8 ", " 1 "] {
        assert!(line.contains(column), "{column:?} in {wide}");
    }

    // Both engines run what they are given.
    let own = c.hello_on("std", WAIT);
    let given = c.hello_on("pi", WAIT);
    // The node told to compile everything itself did; the other loaded the
    // code the master compiled for its engine.
    assert!(own.contains("(cold)"), "{own}");
    assert!(given.contains("precompiled by the master"), "{given}");
}

fn count(v: &serde_json::Value, what: &str) -> u64 {
    v[what].as_u64().unwrap_or(0)
}

#[test]
fn nodes_load_the_code_the_cluster_recorded_and_compile_when_a_master_has_other_bytes() {
    let mut c = Cluster::start("30s");
    for n in ["a", "b", "c"] {
        c.start_node_args(n, &["--engine-cpu", "baseline"]);
    }
    for n in ["a", "b", "c"] {
        c.wait_node_ready(n, "Ready", WAIT);
    }

    // The master compiled the module for the nodes' engine (one, as all
    // three set baseline), recorded the code's digest, and node a loaded it.
    let message = c.hello_on("a", WAIT);
    assert!(message.contains("precompiled by the master"), "{message}");
    let fingerprint = c.get_json("node", "a").expect("node")["status"]["nodeInfo"]["engine"]
        ["fingerprint"]
        .clone();
    let records = c.code_records("hello");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["fingerprint"], fingerprint, "{records:?}");
    let a = c.code_counts("a", 1, WAIT);
    assert_eq!(count(&a, "compiled"), 0, "{a}");

    // The master's copy is damaged: it no longer hashes as recorded, so it
    // is not served, and node b compiles the module itself.
    let code_dir = c.path("master").join("code");
    let files: Vec<_> = std::fs::read_dir(&code_dir)
        .expect("the master's code directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let mut damaged = std::fs::read(&files[0]).expect("code");
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&files[0], &damaged).expect("damage the code");
    let message = c.hello_on("b", WAIT);
    assert!(message.contains("(cold)"), "{message}");
    let b = wait_for("b to report its compile", WAIT, || {
        let code = c.get_json("node", "b")?["status"]["code"].clone();
        (count(&code, "compiled") == 1).then_some(code)
    });
    assert_eq!(count(&b, "precompiled"), 0, "{b}");
    assert!(
        c.node_log("b")
            .contains("no precompiled code from the master"),
        "{}",
        c.node_log("b")
    );

    // The master dropped the damaged copy and compiles again when next
    // asked: the same bytes as recorded, which node c loads.
    let message = c.hello_on("c", WAIT);
    assert!(message.contains("precompiled by the master"), "{message}");
    let cc = c.code_counts("c", 1, WAIT);
    assert_eq!(count(&cc, "compiled"), 0, "{cc}");
    let records = c.code_records("hello");
    assert_eq!(records.len(), 1, "{records:?}");
}
