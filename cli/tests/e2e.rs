//! End to end with the real `flotilla` binary: a master and nodes as
//! processes on loopback, driven through the CLI as a user would.

mod common;

use common::{pod_yaml, wait_for, Cluster};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

#[test]
fn pods_run_restart_fail_and_stop_on_two_nodes() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    // n2 withholds sockets from its guests; no sample workload uses them.
    c.start_node_args("n2", &["--deny", "wasi:sockets", "--max-pods", "20"]);
    c.wait_node_ready("n1", "Ready", T);
    c.wait_node_ready("n2", "Ready", T);
    let nodes = c.ok(&["get", "nodes", "-o", "wide"]);
    assert!(nodes.starts_with("NAME"), "{nodes}");
    assert_eq!(nodes.matches("Ready").count(), 2, "{nodes}");
    // A node process runs with mimalloc's lean options: it executed itself
    // again with them, keeping its PID.
    let pid = c.node_pid("n1").expect("n1 runs");
    let environ = environ(pid);
    for want in ["MIMALLOC_ARENA_EAGER_COMMIT=0", "MIMALLOC_PURGE_DELAY=0"] {
        assert!(
            environ.iter().any(|v| v == want),
            "{want} not in {environ:?}"
        );
    }
    // The master keeps its heap off transparent huge pages, where a few
    // objects per 2 MiB page would hold the whole page resident.
    let master = c.master_pid().expect("the master runs");
    assert_eq!(thp_enabled(master), "0", "the master may use huge pages");
    // Once joined and settled, it hands back the pages of its start-up
    // code (docs/edge.md, "A node's memory"), and fewer stay resident.
    let line = wait_for("n1 to release its start-up code", T, || {
        c.node_log("n1")
            .lines()
            .find(|l| l.contains("released start-up code pages"))
            .map(String::from)
    });
    let kib = |key: &str| -> u64 {
        line.split_once(&format!("{key}="))
            .and_then(|(_, rest)| rest.split(|ch: char| !ch.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    let (before, after) = (kib("resident_kib_before"), kib("resident_kib_after"));
    assert!(after < before, "{line}");
    // Each node reports the interfaces its runtime links and what pods may
    // use; n2 leaves out the sockets it withholds.
    for (node, sockets) in [("n1", true), ("n2", false)] {
        let yaml = c.ok(&["get", "node", node, "-o", "yaml"]);
        for want in [
            "interfaces:",
            "- wasi:cli/environment@0.2.",
            "- wasi:io/streams@0.2.",
            "- wasi_snapshot_preview1",
            "allocatable:",
            "cpuMillis:",
            "memoryBytes:",
        ] {
            assert!(
                yaml.contains(want),
                "{node}: {want:?} missing from:\n{yaml}"
            );
        }
        for withheld in [
            "- wasi:sockets/tcp@",
            "- wasi:sockets/udp@",
            "- wasi:sockets\n",
        ] {
            assert_eq!(
                yaml.contains(withheld),
                sockets,
                "{node}: {withheld:?} in:\n{yaml}"
            );
        }
        let status = &c.get_json("node", node).expect("node")["status"];
        let (capacity, allocatable) = (&status["capacity"], &status["allocatable"]);
        let cpu = |v: &serde_json::Value| v["cpuMillis"].as_u64().unwrap_or(0);
        let memory = |v: &serde_json::Value| v["memoryBytes"].as_u64().unwrap_or(0);
        // The default reserve: 100m and 64Mi.
        assert_eq!(cpu(capacity) - cpu(allocatable), 100, "{node}: {status}");
        assert_eq!(
            memory(capacity) - memory(allocatable),
            64 << 20,
            "{node}: {status}"
        );
        let pods = allocatable["pods"].as_u64().unwrap_or(0);
        if node == "n2" {
            assert_eq!(pods, 20, "--max-pods");
        } else {
            assert!((1..=110).contains(&pods), "{node}: {status}");
        }
    }

    // hello (p2 component, from the manifest beside the program) succeeds with its output in the log.
    let hello = flotilla_workloads::manifest("hello");
    let out = c.ok(&["apply", "-f", hello.to_str().expect("utf8")]);
    assert!(out.contains("pod/hello created"), "{out}");
    c.wait_phase("hello", "Succeeded", T);
    let logs = c.ok(&["logs", "hello"]);
    for want in [
        "arg[0]=hello",
        "arg[1]=world",
        "GREETING=hi",
        "hello from flotilla",
    ] {
        assert!(logs.contains(want), "{want:?} missing from:\n{logs}");
    }
    // The master read the module's imports; its node reports holding its
    // code (within a few seconds of compiling it).
    let digest = c.get_json("pod", "hello").expect("hello")["spec"]["module"]
        .as_str()
        .expect("digest")
        .to_string();
    let modules = c.ok(&["get", "modules", "-o", "wide"]);
    assert!(
        modules.contains("IMPORTS") && modules.contains("wasi:cli"),
        "{modules}"
    );
    let ran_on = c.get_json("pod", "hello").expect("hello")["spec"]["nodeName"]
        .as_str()
        .expect("bound")
        .to_string();
    wait_for("the node to report the module it compiled", T, || {
        let node = c.get_json("node", &ran_on)?;
        let held = node["status"]["modules"].as_array()?.clone();
        held.iter().any(|m| m == digest.as_str()).then_some(())
    });
    let wide = c.ok(&["get", "pods", "-o", "wide"]);
    assert!(
        wide.lines().any(|l| l.contains("hello")
            && l.contains("Completed")
            && (l.contains("n1") || l.contains("n2"))),
        "{wide}"
    );
    // Applying the same manifest again changes nothing.
    assert!(c
        .ok(&["apply", "-f", hello.to_str().expect("utf8")])
        .contains("unchanged"));

    // A changed label is applied and keeps the binding; a changed spec is refused.
    let bound = c.get_json("pod", "hello").expect("hello")["spec"]["nodeName"].clone();
    let text = std::fs::read_to_string(&hello).expect("manifest");
    let module = hello
        .parent()
        .expect("dir")
        .join("../../target/guests/wasm32-wasip2/release/hello.wasm");
    let relabeled = c.manifest(
        "hello-relabeled.yaml",
        &text.replace("app: hello", "app: hello2").replace(
            "../../target/guests/wasm32-wasip2/release/hello.wasm",
            module.to_str().expect("utf8"),
        ),
    );
    assert!(c
        .ok(&["apply", "-f", relabeled.to_str().expect("utf8")])
        .contains("pod/hello configured"));
    let after = c.get_json("pod", "hello").expect("hello");
    assert_eq!(after["spec"]["nodeName"], bound);
    assert_eq!(after["metadata"]["labels"]["app"], "hello2");
    let changed = c.manifest(
        "hello-changed.yaml",
        &std::fs::read_to_string(&relabeled)
            .expect("read")
            .replace("world", "moon"),
    );
    let out = c.run(&["apply", "-f", changed.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot change once created"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A new module for it is refused before it is uploaded, with what to do.
    let other = flotilla_workloads::path("echo");
    let remoduled = c.manifest(
        "hello-remoduled.yaml",
        &std::fs::read_to_string(&relabeled).expect("read").replace(
            module.to_str().expect("utf8"),
            other.to_str().expect("utf8"),
        ),
    );
    let out = c.run(&["apply", "-f", remoduled.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("nothing was applied and no module uploaded")
            && stderr
                .contains("pod/hello (namespace default): its spec cannot change once created")
            && stderr.contains("flotilla delete pod hello -n default && flotilla apply -f")
            && stderr.contains("Deployment")
            && !stderr.contains("uploaded ("),
        "{stderr}"
    );
    let digest = flotilla_api::objects::digest_of(&std::fs::read(&other).expect("echo"));
    assert!(
        c.get_json("module", &flotilla_api::objects::module_name(&digest))
            .is_none(),
        "the refused pod's module was uploaded"
    );

    // The same program as a WASI p1 module.
    let p1 = c.manifest(
        "p1.yaml",
        &pod_yaml("hello-p1", "hello", &["x"], "Never", "").replace(
            flotilla_workloads::path("hello").to_str().expect("utf8"),
            flotilla_workloads::hello_p1().to_str().expect("utf8"),
        ),
    );
    c.ok(&["apply", "-f", p1.to_str().expect("utf8")]);
    c.wait_phase("hello-p1", "Succeeded", T);
    assert!(c.ok(&["logs", "hello-p1"]).contains("arg[1]=x"));

    // ticker runs, and `logs -f` streams its lines as they come.
    let ticker = c.manifest(
        "ticker.yaml",
        &pod_yaml("ticker", "ticker", &[], "Always", ""),
    );
    c.ok(&["apply", "-f", ticker.to_str().expect("utf8")]);
    c.wait_phase("ticker", "Running", T);
    let mut follow = Command::new(common::BIN)
        .args(["logs", "-f", "ticker"])
        .env("FLOTILLA_CONFIG", &c.config)
        .stdout(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let mut lines = BufReader::new(follow.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("utf8");
    let t0 = Instant::now();
    let mut later = String::new();
    while t0.elapsed() < Duration::from_secs(20) {
        later = lines.next().expect("more lines").expect("utf8");
        if t0.elapsed() > Duration::from_millis(1500) {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        first.starts_with("tick ") && later.starts_with("tick ") && first != later,
        "{first:?} then {later:?}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1500),
        "lines kept arriving while the pod ran"
    );

    // crasher exits 1 after a moment; OnFailure restarts it with a growing back-off.
    let crasher = c.manifest(
        "crasher.yaml",
        &pod_yaml("crasher", "crasher", &["0.2"], "OnFailure", ""),
    );
    c.ok(&["apply", "-f", crasher.to_str().expect("utf8")]);
    let mut backoffs: Vec<u64> = Vec::new();
    wait_for(
        "back-offs of 1s, 2s and 4s",
        Duration::from_secs(40),
        || {
            let msg = c.pod_field("crasher", "message");
            if let Some(secs) = msg
                .strip_prefix("back-off ")
                .and_then(|m| m.split('s').next())
                .and_then(|n| n.parse().ok())
            {
                if backoffs.last() != Some(&secs) {
                    backoffs.push(secs);
                }
            }
            (backoffs.len() >= 3).then_some(())
        },
    );
    assert_eq!(&backoffs[..3], &[1, 2, 4], "back-off doubles: {backoffs:?}");
    assert_eq!(c.pod_field("crasher", "reason"), "CrashLoopBackOff");
    assert!(
        c.pod_field("crasher", "restartCount")
            .parse::<u32>()
            .expect("count")
            >= 2
    );
    // The run that crashed last, or if the next has just started, the one before.
    let last = c.ok(&["logs", "crasher"]) + &c.ok(&["logs", "crasher", "--previous"]);
    assert!(last.contains("crashing now"), "{last}");

    // hog grows memory past its limit: it fails with a clear reason, and ticker keeps running.
    let hog = c.manifest(
        "hog.yaml",
        &pod_yaml(
            "hog",
            "hog",
            &["memory"],
            "Never",
            "  resources:\n    limits: {memory: 32Mi}\n",
        ),
    );
    c.ok(&["apply", "-f", hog.to_str().expect("utf8")]);
    c.wait_phase("hog", "Failed", T);
    assert_eq!(c.pod_field("hog", "reason"), "OOMKilled");
    assert!(
        c.pod_field("hog", "message")
            .contains("memory limit of 32Mi exceeded (the guest tried to grow its linear memory and tables to "),
        "{}",
        c.pod_field("hog", "message")
    );
    assert_eq!(
        c.pod_field("hog", "exitCode"),
        "137",
        "as the kubelet reports an OOM kill"
    );
    // A Rust panic traps: the backtrace names the program's functions as its
    // source does, and the pod exits 134, as wasmtime's command line does.
    let panics = c.manifest(
        "panics.yaml",
        &pod_yaml("panics", "crasher", &["panic"], "Never", ""),
    );
    c.ok(&["apply", "-f", panics.to_str().expect("utf8")]);
    c.wait_phase("panics", "Failed", T);
    assert_eq!(c.pod_field("panics", "reason"), "Trap");
    assert_eq!(c.pod_field("panics", "exitCode"), "134");
    let message = c.pod_field("panics", "message");
    assert!(message.contains(": crasher::give_up\n"), "{message}");
    assert!(
        message.contains("the standard library's panic and abort"),
        "{message}"
    );
    assert!(c.ok(&["logs", "panics"]).contains("crasher gives up"));
    let spin = c.manifest(
        "spin.yaml",
        &pod_yaml("spin", "hog", &["spin"], "Never", ""),
    );
    c.ok(&["apply", "-f", spin.to_str().expect("utf8")]);
    c.wait_phase("spin", "Running", T);
    let before = c.ok(&["logs", "ticker", "--tail", "1"]);
    wait_for("ticker to keep ticking", T, || {
        (c.ok(&["logs", "ticker", "--tail", "1"]) != before).then_some(())
    });
    assert_eq!(c.pod_field("ticker", "phase"), "Running");

    // delete stops a pod on its node (even one spinning forever).
    let node = c.get_json("pod", "spin").expect("spin")["spec"]["nodeName"]
        .as_str()
        .expect("bound")
        .to_string();
    assert!(c
        .ok(&["delete", "pod", "spin"])
        .contains("pod \"spin\" deleted"));
    wait_for("the node to stop the pod", T, || {
        c.node_log(&node)
            .contains("stopped pod pod=default/spin")
            .then_some(())
    });
    assert!(c.get_json("pod", "spin").is_none());
    let missing = c.run(&["delete", "pod", "spin"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    // A pod no node can take stays Pending and says why.
    let arm = c.manifest(
        "arm.yaml",
        &pod_yaml(
            "arm-only",
            "hello",
            &[],
            "Never",
            "  nodeSelector: {flotilla.dev/arch: riscv64}\n",
        ),
    );
    c.ok(&["apply", "-f", arm.to_str().expect("utf8")]);
    wait_for("an Unschedulable reason", T, || {
        (c.pod_field("arm-only", "reason") == "Unschedulable").then_some(())
    });
    let message = c.pod_field("arm-only", "message");
    assert!(
        message.starts_with(
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector"
        ),
        "{message}"
    );
}

#[test]
fn nodes_survive_their_own_and_the_masters_failures() {
    let mut c = Cluster::with_ticker("3s");

    // A killed node turns NotReady after the grace period, and Ready again when it returns.
    c.kill_node("n1");
    c.wait_node_ready("n1", "NotReady", T);
    let nodes = c.ok(&["get", "nodes"]);
    assert!(nodes.contains("NotReady"), "{nodes}");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);

    // With the master gone, a node restarted from scratch runs its pods again from its local store.
    c.kill_master();
    c.kill_node("n1");
    let before = c
        .node_log("n1")
        .matches("started pod pod=default/ticker")
        .count();
    c.start_node("n1");
    wait_for("the node to restart ticker with no master", T, || {
        let log = c.node_log("n1");
        (log.matches("started pod pod=default/ticker").count() > before).then_some(())
    });
    wait_for("the node to notice the master is gone", T, || {
        c.node_log("n1")
            .contains("no master reachable; pods keep running")
            .then_some(())
    });
    // When the master is back, the node reconnects and its status flows again.
    c.start_master();
    // What was written before the kill -9 is all there: the restarted master
    // leads its one-member raft cluster again over the same state.
    let pods = c.ok(&["get", "pods"]);
    assert!(pods.contains("ticker"), "{pods}");
    let nodes = c.ok(&["get", "nodes"]);
    assert!(nodes.contains("n1"), "{nodes}");
    c.wait_node_ready("n1", "Ready", T);
    c.wait_phase("ticker", "Running", T);
    // The master may answer before the node has reconnected to it: poll.
    wait_for("ticker's logs through the master", T, || {
        let out = c.run(&["logs", "ticker"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("tick")
            .then_some(())
    });
}

#[test]
fn broken_input_changes_nothing() {
    let c = Cluster::start("10s");
    let good = pod_yaml("good", "hello", &[], "Never", "");
    let bad = pod_yaml(
        "bad",
        "hello",
        &[],
        "Never",
        "  resources:\n    limits: {memory: 12Q}\n",
    );
    let file = c.manifest("mixed.yaml", &format!("{good}---\n{bad}"));
    let out = c.run(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("document 2: spec.resources.limits.memory: \"12Q\" is not a quantity"),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");

    let typo = c.manifest("typo.yaml", &good.replace("restartPolicy", "restartPolcy"));
    let err =
        String::from_utf8_lossy(&c.run(&["apply", "-f", typo.to_str().expect("utf8")]).stderr)
            .into_owned();
    assert!(err.contains("spec.restartPolcy: unknown field"), "{err}");

    let missing = c.manifest(
        "missing.yaml",
        &good.replace(
            flotilla_workloads::path("hello").to_str().expect("utf8"),
            "nowhere.wasm",
        ),
    );
    let err = String::from_utf8_lossy(
        &c.run(&["apply", "-f", missing.to_str().expect("utf8")])
            .stderr,
    )
    .into_owned();
    assert!(err.contains("spec.module: cannot read"), "{err}");

    std::fs::write(c.path("notwasm.wasm"), b"#!/bin/sh\necho hi\n").expect("write");
    let notwasm = c.manifest(
        "notwasm.yaml",
        &good.replace(
            flotilla_workloads::path("hello").to_str().expect("utf8"),
            "notwasm.wasm",
        ),
    );
    let err = String::from_utf8_lossy(
        &c.run(&["apply", "-f", notwasm.to_str().expect("utf8")])
            .stderr,
    )
    .into_owned();
    assert!(err.contains("is not a WebAssembly file"), "{err}");

    let out = c.run(&["get", "pods"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("No pods found"),
        "nothing was created"
    );
    let modules = c.run(&["get", "modules"]);
    assert!(
        String::from_utf8_lossy(&modules.stderr).contains("No modules found"),
        "nothing was uploaded"
    );

    // Usage errors say what to do and exit non-zero.
    let out = c.run(&["get", "widgets"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("unknown kind \"widgets\"; use one of pods, nodes, modules"));
    let out = c.run(&["get", "pods", "-l", "bad key=1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid label selector"));
}

#[test]
fn two_documents_naming_one_object_change_nothing() {
    let c = Cluster::start("10s");
    let web = pod_yaml("web", "hello", &[], "Never", "");
    let db = pod_yaml("db", "hello", &[], "Never", "");
    let again = web.replace("restartPolicy: Never", "restartPolicy: Always");
    let file = c.manifest("twice.yaml", &format!("{web}---\n{db}---\n{again}"));
    let out = c.run(&["apply", "-f", file.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: document 3 (Pod default/web) has the same kind, namespace and name as document 1; rename one",
            file.display()
        )),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");

    // Across files too, and where --namespace makes two namespaces one.
    let prod = c.manifest(
        "prod.yaml",
        &web.replace("metadata:\n", "metadata:\n  namespace: prod\n"),
    );
    let single = c.manifest("web.yaml", &web);
    let out = c.run(&[
        "apply",
        "-n",
        "prod",
        "-f",
        single.to_str().expect("utf8"),
        "-f",
        prod.to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: document 1 (Pod prod/web) has the same kind, namespace and name as document 1 of {}; rename one",
            prod.display(),
            single.display()
        )),
        "{err}"
    );

    let pods = c.run(&["get", "pods", "-A"]);
    assert!(pods.status.success());
    assert!(
        String::from_utf8_lossy(&pods.stderr).contains("No pods found"),
        "nothing was created: {}",
        String::from_utf8_lossy(&pods.stdout)
    );
    let modules = c.run(&["get", "modules"]);
    assert!(
        String::from_utf8_lossy(&modules.stderr).contains("No modules found"),
        "nothing was uploaded"
    );
}

#[test]
fn no_master_gives_advice() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(common::BIN)
        .args(["get", "pods"])
        .env("FLOTILLA_CONFIG", dir.path().join("none"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("start a master"));
    // A config pointing at a port where nothing listens.
    let c = Cluster::start("10s");
    let text = std::fs::read_to_string(&c.config)
        .expect("config")
        .replace(&c.addr, &format!("127.0.0.1:{}", common::free_port()));
    let other = c.path("other-config");
    std::fs::write(&other, text).expect("write");
    let out = c.run_with(&["get", "pods"], &other);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no master answers at 127.0.0.1:")
            && err.contains("is `flotilla master` running"),
        "{err}"
    );
}

#[test]
fn up_runs_master_and_node_in_one_process() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("config");
    let addr = format!("127.0.0.1:{}", common::free_port());
    let log = std::fs::File::create(dir.path().join("up.log")).expect("log");
    let mut up = Command::new(common::BIN)
        .args(["up", "--listen", &addr, "--name", "laptop", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(common::proxy_args(&[]))
        .env("FLOTILLA_CONFIG", &config)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("up");
    let run = |args: &[&str]| {
        Command::new(common::BIN)
            .args(args)
            .env("FLOTILLA_CONFIG", &config)
            .output()
            .expect("run")
    };
    wait_for("the node of `up` to be Ready", T, || {
        let out = run(&["get", "nodes"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("laptop   Ready")
            .then_some(())
    });
    let hello = flotilla_workloads::manifest("hello");
    assert!(run(&["apply", "-f", hello.to_str().expect("utf8")])
        .status
        .success());
    wait_for("hello to succeed", T, || {
        String::from_utf8_lossy(&run(&["get", "pods"]).stdout)
            .contains("Completed")
            .then_some(())
    });
    assert!(
        String::from_utf8_lossy(&run(&["logs", "hello"]).stdout).contains("hello from flotilla")
    );
    // A master keeps mimalloc's defaults, which its throughput was measured
    // with, but not transparent huge pages.
    assert!(
        !environ(up.id()).iter().any(|v| v.starts_with("MIMALLOC_")),
        "up runs with lean allocator options"
    );
    assert_eq!(thp_enabled(up.id()), "0", "up's master may use huge pages");
    // SIGTERM stops both cleanly.
    let _ = Command::new("kill").arg(up.id().to_string()).status();
    let status = wait_for("up to exit", T, || up.try_wait().expect("wait"));
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_backup_founds_a_new_cluster_with_the_same_objects() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let hello = flotilla_workloads::manifest("hello");
    c.ok(&["apply", "-f", hello.to_str().expect("utf8")]);
    c.wait_phase("hello", "Succeeded", T);
    let uid = c.get_json("pod", "hello").expect("pod")["metadata"]["uid"].clone();
    let backup = c.path("backup.bin");
    let out = c.ok(&["cluster", "snapshot", backup.to_str().expect("utf8")]);
    assert!(out.contains("saved"), "{out}");

    // Every master disk is lost but the backup and the CA (pki/) are kept.
    c.kill_master();
    let restored = c.path("restored");
    std::fs::create_dir_all(restored.join("pki")).expect("dir");
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(c.path("master/pki").join(f), restored.join("pki").join(f)).expect("copy");
    }
    let master = |extra: &[&str], dir: &std::path::Path, log: &str| {
        let log = std::fs::File::create(c.path(log)).expect("log");
        Command::new(common::BIN)
            .args(["master", "--listen", &c.addr, "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("FLOTILLA_CONFIG", &c.config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("master")
    };
    // Garbage, and a directory that holds a cluster already, are refused at once.
    let junk = c.path("junk.bin");
    std::fs::write(&junk, b"not a backup").expect("junk");
    let refused = master(
        &["--restore", junk.to_str().expect("utf8")],
        &c.path("fresh"),
        "junk.log",
    )
    .wait_with_output()
    .expect("exit");
    assert!(!refused.status.success());
    assert!(std::fs::read_to_string(c.path("junk.log"))
        .unwrap_or_default()
        .contains("not a Flotilla backup"));
    let refused = master(
        &["--restore", backup.to_str().expect("utf8")],
        &c.path("master"),
        "busy.log",
    )
    .wait_with_output()
    .expect("exit");
    assert!(!refused.status.success());
    assert!(std::fs::read_to_string(c.path("busy.log"))
        .unwrap_or_default()
        .contains("needs a new data directory"));

    // Killed when the test ends, passed or failed.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _restored = Reaped(master(
        &["--restore", backup.to_str().expect("utf8")],
        &restored,
        "restored.log",
    ));
    let pod = wait_for("the restored pod", T, || c.get_json("pod", "hello"));
    assert_eq!(pod["metadata"]["uid"], uid, "the pod keeps its uid");
    let status = c.ok(&["cluster", "status"]);
    assert!(status.contains("leader 1"), "{status}");
    // The node's certificate is from the same CA: it reconnects and serves
    // the pod's logs again.
    wait_for("the node to reconnect", T, || {
        let out = c.run(&["logs", "hello"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("hello from flotilla")
            .then_some(())
    });
}

/// Every directory and file at or under `root` whose group or other users
/// have a permission bit, with its mode; and every path seen.
fn open_to_others(root: &std::path::Path) -> (Vec<String>, Vec<std::path::PathBuf>) {
    use std::os::unix::fs::PermissionsExt;
    let (mut open, mut seen) = (Vec::new(), Vec::new());
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            open.push(format!("{} {mode:o}", path.display()));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                pending.push(entry.expect("entry").path());
            }
        }
        seen.push(path);
    }
    (open, seen)
}

#[test]
fn data_files_and_backups_are_private_to_their_owner() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    // hello carries an env value: what these files must not show to others.
    let hello = flotilla_workloads::manifest("hello");
    c.ok(&["apply", "-f", hello.to_str().expect("utf8")]);
    c.wait_phase("hello", "Succeeded", T);
    let backup = c.path("backups/cluster.bin");
    c.ok(&["cluster", "snapshot", backup.to_str().expect("utf8")]);

    let mut open = Vec::new();
    let mut seen = Vec::new();
    for root in [
        c.path("master"),
        c.path("n1"),
        c.path("backups"),
        c.config.clone(),
    ] {
        let (o, s) = open_to_others(&root);
        open.extend(o);
        seen.extend(s);
    }
    assert!(
        open.is_empty(),
        "open to group or others:\n{}",
        open.join("\n")
    );
    for want in [
        "master/state.redb",
        "master/raft-log.wal",
        "master/pki/ca.key",
        "n1/node.redb",
        "n1/credentials.yaml",
        "n1/compiled",
        "backups/cluster.bin",
    ] {
        assert!(seen.contains(&c.path(want)), "{want} was not checked");
    }
    assert!(
        seen.iter()
            .any(|p| p.extension().is_some_and(|e| e == "cwasm")),
        "no compiled code was checked: {seen:?}"
    );

    // A file opened up by hand is reported at the next start, with the fix.
    c.kill_master();
    let state = c.path("master/state.redb");
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .expect("chmod");
    c.start_master();
    let log = std::fs::read_to_string(c.path("master.log")).expect("master log");
    assert!(
        log.contains(&format!("run `chmod 600 {}`", state.display())),
        "{log}"
    );
}

/// The `THP_enabled` field of process `pid`'s status: "0" once it turned
/// transparent huge pages off for itself.
fn thp_enabled(pid: u32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no THP_enabled in the status of {pid}: {status}"))
}

/// The environment process `pid` runs with.
fn environ(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .expect("environ")
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// The `get pods` cells of one pod (NAME READY STATUS RESTARTS AGE), split
/// at spaces.
fn pod_row(c: &Cluster, pod: &str) -> Vec<String> {
    c.ok(&["get", "pods"])
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cols| cols.first().map(String::as_str) == Some(pod))
        .unwrap_or_default()
}

/// Waits until `get pods` shows `pod` with STATUS `status`.
fn wait_status(c: &Cluster, pod: &str, status: &str) {
    wait_for(&format!("pod {pod} to show {status}"), T, || {
        (pod_row(c, pod).get(2).map(String::as_str) == Some(status)).then_some(())
    });
}

/// Runs `flotilla logs -f POD`; it must exit within `limit` (else it is
/// killed and the test fails). Gives its exit status and output.
fn follow_logs(c: &Cluster, pod: &str, limit: Duration) -> (bool, String) {
    let mut child = Command::new(common::BIN)
        .args(["logs", "-f", pod])
        .env("FLOTILLA_CONFIG", &c.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("logs -f");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`logs -f {pod}` was still following after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn logs_follow_ends_when_the_pod_has_ended() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);

    // A pod that already ended: `logs -f` prints what there is and exits 0.
    let hello = c.manifest("hello.yaml", &pod_yaml("hello", "hello", &[], "Never", ""));
    c.ok(&["apply", "-f", hello.to_str().expect("utf8")]);
    c.wait_phase("hello", "Succeeded", T);
    let (ok, out) = follow_logs(&c, "hello", Duration::from_secs(15));
    assert!(ok && out.contains("hello from flotilla"), "{out}");

    // A running pod that then ends: the stream ends with it.
    let crasher = c.manifest(
        "crasher.yaml",
        &pod_yaml("crasher", "crasher", &["3"], "Never", ""),
    );
    c.ok(&["apply", "-f", crasher.to_str().expect("utf8")]);
    c.wait_phase("crasher", "Running", T);
    let (ok, out) = follow_logs(&c, "crasher", Duration::from_secs(20));
    assert!(ok && out.contains("crashing now"), "{out}");
    assert_eq!(c.pod_field("crasher", "phase"), "Failed");
}

#[test]
fn a_restarted_node_agent_counts_a_restart_and_keeps_the_logs() {
    let mut c = Cluster::start("10s");
    c.start_node_args("n1", &["--log-max-size", "64Ki", "--log-max-files", "3"]);
    c.wait_node_ready("n1", "Ready", T);
    let ticker = c.manifest(
        "ticker.yaml",
        &pod_yaml("ticker", "ticker", &[], "Always", ""),
    );
    c.ok(&["apply", "-f", ticker.to_str().expect("utf8")]);
    let hello = c.manifest("hello.yaml", &pod_yaml("hello", "hello", &[], "Never", ""));
    c.ok(&["apply", "-f", hello.to_str().expect("utf8")]);
    c.wait_phase("ticker", "Running", T);
    c.wait_phase("hello", "Succeeded", T);
    assert_eq!(c.pod_field("ticker", "restartCount"), "0");
    wait_for("ticker's second tick", T, || {
        c.ok(&["logs", "ticker"]).contains("tick 2\n").then_some(())
    });
    let err = c.run(&["logs", "ticker", "--previous"]);
    assert!(!err.status.success());
    assert!(
        String::from_utf8_lossy(&err.stderr)
            .contains("pod default/ticker: it has not restarted on this node: there is no previous run to show (leave out --previous)"),
        "{err:?}"
    );

    // Each restart of the agent runs the pod again from the node's local
    // store, and that run counts, as a kubelet restart does; the count
    // itself survives in the local store.
    for want in ["1", "2"] {
        c.kill_node("n1");
        c.start_node_args("n1", &["--log-max-size", "64Ki", "--log-max-files", "3"]);
        wait_for(&format!("ticker running with {want} restarts"), T, || {
            (c.pod_field("ticker", "restartCount") == want
                && c.pod_field("ticker", "phase") == "Running")
                .then_some(())
        });
        wait_for("the new run's second tick", T, || {
            c.ok(&["logs", "ticker"]).contains("tick 2\n").then_some(())
        });
    }
    let row = pod_row(&c, "ticker");
    assert_eq!(&row[2..4], ["Running", "2"], "{row:?}");

    // The logs outlived the node's process: the finished pod's output is
    // still there, the running pod's current run is shown, and the run
    // before the last restart with --previous.
    wait_for("hello's logs after the node restarted", T, || {
        let out = c.run(&["logs", "hello"]);
        String::from_utf8_lossy(&out.stdout)
            .contains("hello from flotilla")
            .then_some(())
    });
    let previous = c.ok(&["logs", "ticker", "-p"]);
    assert!(previous.starts_with("tick 1\ntick 2\n"), "{previous}");
    let current = c.ok(&["logs", "ticker"]);
    assert!(current.starts_with("tick 1\n"), "{current}");

    // --timestamps, --since, --since-time, --tail and --prefix.
    let stamped = c.ok(&["logs", "ticker", "--timestamps", "--tail", "2"]);
    let lines: Vec<&str> = stamped.lines().collect();
    assert_eq!(lines.len(), 2, "{stamped}");
    for l in &lines {
        let (stamp, text) = l.split_once(' ').expect("a stamped line");
        assert!(
            stamp.len() == 30 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{l}"
        );
        assert!(text.starts_with("tick "), "{l}");
    }
    assert!(c
        .ok(&["logs", "ticker", "--since", "1h"])
        .contains("tick 1\n"));
    assert_eq!(
        c.ok(&["logs", "ticker", "--since-time", "2100-01-01T00:00:00Z"]),
        ""
    );
    let prefixed = c.ok(&["logs", "ticker", "--prefix", "--tail", "1"]);
    assert!(prefixed.starts_with("[pod/ticker] tick "), "{prefixed}");

    // Bad flags say what to write, before anything is asked of the cluster.
    for (args, want) in [
        (
            &["logs", "ticker", "--since", "soon"][..],
            "--since: \"soon\" is not a duration",
        ),
        (
            &["logs", "ticker", "--since-time", "today"][..],
            "is not a time; write it as RFC 3339",
        ),
        (
            &["logs", "ticker", "-p", "-f"][..],
            "--previous shows a run that has ended: leave out -f",
        ),
    ] {
        let out = c.run(args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }

    // They are files on the node, a directory per pod and a file per run;
    // deleting the pod deletes them.
    let dir = c.path("n1").join("logs");
    let ticker_dir = std::fs::read_dir(&dir)
        .expect("the node's log directory")
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("default_ticker_")
        })
        .expect("ticker's logs")
        .path();
    let mut runs: Vec<String> = std::fs::read_dir(&ticker_dir)
        .expect("runs")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    runs.sort();
    assert_eq!(
        runs,
        ["1.log", "2.log"],
        "the current run and the one before"
    );
    c.ok(&["delete", "pod", "ticker"]);
    wait_for("ticker's logs to go with it", T, || {
        (!ticker_dir.exists()).then_some(())
    });
}

#[test]
fn a_master_that_cannot_listen_or_stops_says_so_in_one_line() {
    let mut c = Cluster::with_ticker("10s");

    // A second master on the same port: one line saying what to do, and
    // nothing made (no data directory, no config).
    let data = c.path("second");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["master", "--listen", &c.addr, "--data-dir"])
        .arg(&data)
        .arg("--config")
        .arg(c.path("second-config"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("error: cannot listen on {}: ", c.addr))
            && err.contains("another program (another master, or `flotilla up`) listens there; stop it or choose another address with --listen"),
        "{err}"
    );
    assert!(!data.exists() && !c.path("second-config").exists());

    // A master stopped with its node connected and its loops writing says
    // it is shutting down, and the raft library adds no complaint.
    c.stop_master();
    let log = std::fs::read_to_string(c.path("master.log")).expect("log");
    assert!(log.contains("shutting down"), "{log}");
    let raft_noise: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("openraft") && (l.contains(" WARN ") || l.contains(" ERROR ")))
        .collect();
    assert!(raft_noise.is_empty(), "{raft_noise:#?}");
}

/// `flotilla ARGS` with the editor `script` (a shell command run with the
/// file as `$1`).
fn edit_with(c: &Cluster, args: &[&str], script: &str) -> std::process::Output {
    let editor = c.path(&format!("editor-{}.sh", script.len()));
    std::fs::write(&editor, format!("#!/bin/sh\n{script}\n")).expect("editor");
    let mut perms = std::fs::metadata(&editor).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&editor, perms).expect("chmod");
    Command::new(common::BIN)
        .args(args)
        .env("FLOTILLA_CONFIG", &c.config)
        .env("EDITOR", &editor)
        .env_remove("FLOTILLA_EDITOR")
        .env_remove("KUBE_EDITOR")
        .output()
        .expect("run")
}

#[test]
fn edit_saves_a_good_edit_brings_back_a_bad_one_and_keeps_it() {
    let c = Cluster::start("10s");
    c.ok(&["create", "configmap", "app", "--from-literal", "level=1"]);
    let level = || c.ok(&["get", "cm", "app", "-o", "jsonpath={.data.level}"]);

    // Nothing changed: nothing written.
    let out = edit_with(&c, &["edit", "cm", "app"], "true");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Edit cancelled, no changes made."),
        "{out:?}"
    );

    // A good edit is saved.
    let out = edit_with(
        &c,
        &["edit", "configmap/app"],
        r#"sed -i "s/level: .*/level: '2'/" "$1""#,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "configmap/app edited\n"
    );
    assert_eq!(level(), "2");

    // A bad one (a new name) comes back in the editor with the reason on
    // top; closed unchanged, it is kept in a file and nothing is written.
    let out = edit_with(
        &c,
        &["edit", "cm", "app"],
        r#"sed -i "s/name: app/name: other/" "$1""#,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: configmap/app cannot be saved: kind, name and namespace cannot change in an edit"),
        "{err}"
    );
    let kept = err
        .split("your edit is kept in ")
        .nth(1)
        .map(str::trim)
        .unwrap_or_else(|| panic!("where the edit is kept: {err}"));
    let text = std::fs::read_to_string(kept).expect("the kept edit");
    assert!(
        text.contains("# configmap/app cannot be saved:") && text.contains("name: other"),
        "{text}"
    );
    let _ = std::fs::remove_file(kept);
    assert_eq!(level(), "2");
    assert!(c.get_json("configmap", "other").is_none());

    // A refusal of the master comes back the same way: an immutable
    // ConfigMap's data cannot change.
    c.ok(&["patch", "cm", "app", "-p", r#"{"immutable":true}"#]);
    let out = edit_with(
        &c,
        &["edit", "cm", "app"],
        r#"sed -i "s/level: .*/level: '3'/" "$1""#,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: configmap/app cannot be saved: "),
        "{err}"
    );
    assert_eq!(level(), "2");

    // A Secret is edited with its values, so they survive the save.
    c.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal",
        "pw=abc",
    ]);
    let out = edit_with(
        &c,
        &["edit", "secret", "db"],
        r#"sed -i "s/^  name: db$/  name: db\n  labels: {tier: db}/" "$1""#,
    );
    assert!(out.status.success(), "{out:?}");
    let pw = c.ok(&[
        "get",
        "secret",
        "db",
        "--show-secrets",
        "-o",
        "jsonpath={.data.pw} {.metadata.labels.tier}",
    ]);
    assert_eq!(pw, "YWJj db", "abc, base64");
}

#[test]
fn a_revoked_token_joins_nothing_and_listing_shows_no_secret() {
    let c = Cluster::start("10s");
    let token = c
        .ok(&["token", "create", "--description", "rack 2"])
        .trim()
        .to_string();
    let parts: Vec<&str> = token.split('.').collect();
    let (id, secret) = (parts[2], parts[3]);
    let list = c.ok(&["token", "list"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{id} missing from:\n{list}"));
    assert!(
        row.contains(" node ") && row.contains("rack 2") && row.contains("(in 23h)"),
        "{row}"
    );
    assert!(!list.contains(secret), "the secret is never shown:\n{list}");

    // Revoked by its id (the whole token works too), it joins nothing.
    assert_eq!(
        c.ok(&["token", "revoke", &token]),
        format!("token {id} revoked\n")
    );
    assert!(!c.ok(&["token", "list"]).contains(id));
    let out = c.run(&["token", "revoke", id]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not found"),
        "{out:?}"
    );
    let node = std::process::Command::new(common::BIN)
        .args([
            "node",
            "--master",
            &c.addr,
            "--name",
            "late",
            "--token",
            &token,
            "--data-dir",
        ])
        .arg(c.path("late"))
        .output()
        .expect("node");
    assert!(!node.status.success());
    let err = String::from_utf8_lossy(&node.stderr);
    assert!(err.contains("join refused: unknown token"), "{err}");
}

#[test]
fn get_watch_prints_aligned_rows_for_changes_and_marks_deletions() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let mut watch = Command::new(common::BIN)
        .args(["get", "pods", "-w"])
        .env("FLOTILLA_CONFIG", &c.config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("get -w");
    let stdout = watch.stdout.take().expect("stdout");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                lines.lock().expect("lines").push(l);
            }
        })
    };
    let hello = c.manifest(
        "hello.yaml",
        &pod_yaml("hello-with-a-long-name", "hello", &[], "Never", ""),
    );
    c.ok(&["apply", "-f", hello.to_str().expect("utf8")]);
    c.wait_phase("hello-with-a-long-name", "Succeeded", T);
    c.ok(&["delete", "pod", "hello-with-a-long-name"]);
    wait_for("the watch to show the deletion", T, || {
        let lines = lines.lock().expect("lines");
        lines.iter().any(|l| l.ends_with("(deleted)")).then_some(())
    });
    let _ = watch.kill();
    let _ = watch.wait();
    let _ = reader.join();
    let lines = lines.lock().expect("lines").clone();
    let text = lines.join("\n");

    // Nothing listed at first: the header comes with the first row.
    assert!(lines[0].starts_with("NAME   "), "{text}");
    // Every row's columns start where those of the header above it do (a
    // wider cell prints the header again, widened).
    let mut starts = Vec::new();
    let mut rows = Vec::new();
    for line in &lines {
        if line.starts_with("NAME ") {
            starts = ["READY", "STATUS", "RESTARTS", "AGE"]
                .iter()
                .map(|h| line.find(&format!(" {h}")).expect("column") + 1)
                .collect();
            continue;
        }
        rows.push(line.clone());
        for &at in &starts {
            let b = line.as_bytes();
            assert!(
                b.get(at - 1) == Some(&b' ') && b.get(at).is_some_and(|c| *c != b' '),
                "column at {at} misaligned in {line:?}:\n{text}"
            );
        }
    }
    // The statuses a pod goes through fit the STATUS column as first printed.
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("NAME ")).count(),
        1,
        "{text}"
    );
    // A row only when it changes (its age aside): never the same row twice running.
    let shown = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    for pair in rows.windows(2).filter(|p| !p[1].ends_with("(deleted)")) {
        assert_ne!(shown(&pair[0]), shown(&pair[1]), "a repeated row:\n{text}");
    }
    assert!(lines.iter().any(|l| l.contains(" Completed ")), "{text}");
    let last = lines.last().expect("rows");
    assert!(
        last.contains("hello-with-a-long-name") && last.ends_with("(deleted)"),
        "{text}"
    );
}

#[test]
fn pods_of_a_lost_node_show_unknown_until_it_returns() {
    let mut c = Cluster::with_ticker("3s");

    // A paused node: NotReady after the grace period, its pod Unknown.
    c.signal_node("n1", "STOP");
    c.wait_node_ready("n1", "NotReady", T);
    wait_status(&c, "ticker", "Unknown");
    let described = c.ok(&["describe", "pod", "ticker"]);
    for (key, want) in [
        ("Status", "Unknown"),
        ("Reason", "NodeLost"),
        ("Message", "node n1 is not ready; its pods may still run"),
        ("Node", "n1"),
    ] {
        let got = described
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .map(str::trim);
        assert_eq!(got, Some(want), "{key} in:\n{described}");
    }
    // Resumed, the node reports the pod's real status again: still the
    // same run, never restarted.
    c.signal_node("n1", "CONT");
    c.wait_node_ready("n1", "Ready", T);
    wait_status(&c, "ticker", "Running");
    assert_eq!(c.pod_field("ticker", "reason"), "");
    assert_eq!(c.pod_field("ticker", "restartCount"), "0");

    // A killed node: the same, and its agent, started again, runs the pod again.
    c.kill_node("n1");
    c.wait_node_ready("n1", "NotReady", T);
    wait_status(&c, "ticker", "Unknown");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    wait_status(&c, "ticker", "Running");
    assert_eq!(c.pod_field("ticker", "restartCount"), "1");
}

#[test]
fn modules_that_are_not_wasm_are_refused_and_those_that_do_not_compile_fail() {
    let mut c = Cluster::start("10s");
    c.start_node("n1");
    let hello = flotilla_workloads::path("hello");
    let hello = hello.to_str().expect("utf8");
    let pod_with = |name: &str, file: &str, policy: &str| {
        c.manifest(
            &format!("{name}.yaml"),
            &pod_yaml(name, "hello", &[], policy, "").replace(hello, file),
        )
    };

    // WebAssembly's magic, then garbage: past the CLI's check of the first
    // bytes, refused by the master, small (one write) or large (chunked).
    let header = b"\0asm\x01\0\0\0".to_vec();
    let small = [header.clone(), b"this is not a section".to_vec()].concat();
    let large = [header, vec![0x5a; 1536 << 10]].concat();
    for (file, bytes) in [("garbage.wasm", small), ("big-garbage.wasm", large)] {
        std::fs::write(c.path(file), bytes).expect("write");
        let manifest = pod_with("garbage", file, "Never");
        let out = c.run(&["apply", "-f", manifest.to_str().expect("utf8")]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        for want in [
            format!("{file} is not a WebAssembly module or component: "),
            "build it with cargo build --target wasm32-wasip2".to_string(),
        ] {
            assert!(err.contains(&want), "{want:?} missing from: {err}");
        }
    }
    let modules = c.run(&["get", "modules"]);
    assert!(
        String::from_utf8_lossy(&modules.stderr).contains("No modules found"),
        "nothing was stored"
    );
    let pods = c.run(&["get", "pods"]);
    assert!(
        String::from_utf8_lossy(&pods.stderr).contains("No pods found"),
        "nothing was created"
    );

    // Valid WebAssembly that the node's engine does not compile (a proposal
    // wasmtime leaves off): the pod fails with InvalidModule, even with
    // restartPolicy Always, and is not tried again.
    const CUSTOM_PAGE_SIZE_MODULE: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
        0x05, 0x04, 0x01, 0x08, 0x00, 0x00, // memory: min 0, page size 2^0 bytes
    ];
    std::fs::write(c.path("unsupported.wasm"), CUSTOM_PAGE_SIZE_MODULE).expect("write");
    c.wait_node_ready("n1", "Ready", T);
    let manifest = pod_with("unsupported", "unsupported.wasm", "Always");
    c.ok(&["apply", "-f", manifest.to_str().expect("utf8")]);
    c.wait_phase("unsupported", "Failed", T);
    assert_eq!(c.pod_field("unsupported", "reason"), "InvalidModule");
    let message = c.pod_field("unsupported", "message");
    assert!(message.contains("custom page sizes"), "{message}");
    wait_status(&c, "unsupported", "InvalidModule");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(c.pod_field("unsupported", "phase"), "Failed");
    assert_eq!(c.pod_field("unsupported", "restartCount"), "0");
    assert!(!c.node_log("n1").contains("module not ready"), "no retries");
}

/// A byte of a pod's uid changed in a stopped master's `state.redb` (every
/// copy of it in the file, so the live one too): the master refuses to
/// start, naming the damage and the ways out, instead of serving the pod
/// with another uid; the way out it names (a backup) brings the pod back
/// as it was.
#[test]
fn a_damaged_state_file_stops_the_master_instead_of_serving_changed_data() {
    let mut c = Cluster::start("10s");
    let pod = c.manifest("keep.yaml", &pod_yaml("keep", "hello", &[], "Never", ""));
    c.ok(&["apply", "-f", pod.to_str().expect("utf8")]);
    let uid = c.get_json("pod", "keep").expect("pod")["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string();
    let backup = c.path("backup.bin");
    c.ok(&["cluster", "snapshot", backup.to_str().expect("utf8")]);
    c.stop_master();

    let state = c.path("master/state.redb");
    let mut bytes = std::fs::read(&state).expect("state.redb");
    let copies: Vec<usize> = bytes
        .windows(uid.len())
        .enumerate()
        .filter(|(_, w)| *w == uid.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert!(!copies.is_empty(), "the uid is in state.redb");
    for at in copies {
        bytes[at + uid.len() - 1] ^= 0x01;
    }
    std::fs::write(&state, &bytes).expect("write state.redb");

    let log_path = c.path("damaged.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut master = Command::new(common::BIN)
        .args(["master", "--listen", &c.addr, "--data-dir"])
        .arg(c.path("master"))
        .env("FLOTILLA_CONFIG", &c.config)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("master");
    let exited = wait_for("the damaged master to stop", T, || {
        master.try_wait().expect("wait")
    });
    assert!(!exited.success(), "the master refused to start");
    let log = std::fs::read_to_string(&log_path).expect("log");
    for says in [
        "stored data is damaged",
        "state.redb",
        "fails its checksum",
        "flotilla cluster remove",
        "--restore",
        "A corruption error at start-up",
    ] {
        assert!(log.contains(says), "the error says {says:?}:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");

    // The way out it names: a new data directory with the CA, from the backup.
    let restored = c.path("restored");
    std::fs::create_dir_all(restored.join("pki")).expect("dir");
    for f in ["ca.crt", "ca.key"] {
        std::fs::copy(c.path("master/pki").join(f), restored.join("pki").join(f)).expect("copy");
    }
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let log = std::fs::File::create(c.path("restored.log")).expect("log");
    let _restored = Reaped(
        Command::new(common::BIN)
            .args(["master", "--listen", &c.addr, "--data-dir"])
            .arg(&restored)
            .args(["--restore", backup.to_str().expect("utf8")])
            .env("FLOTILLA_CONFIG", &c.config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("master"),
    );
    let pod = wait_for("the restored pod", T, || c.get_json("pod", "keep"));
    assert_eq!(
        pod["metadata"]["uid"],
        uid.as_str(),
        "the pod keeps its uid"
    );
}

/// The IN-USE cell of module `digest` in `get modules` (None: not listed).
fn module_in_use(c: &Cluster, digest: &str) -> Option<String> {
    let out = c.run(&["get", "modules"]);
    assert!(out.status.success(), "get modules failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| digest.starts_with(cells[0]))
        .map(|cells| cells[3].to_string())
}

/// The digest of a pod's module (`spec.module` after `apply` rewrote it).
fn module_of(c: &Cluster, pod: &str) -> String {
    let pod = c.get_json("pod", pod).expect("pod");
    pod["spec"]["module"].as_str().expect("digest").to_string()
}

/// A module no pod uses any more is removed once `--module-grace` has
/// passed, object and bytes; one a pod uses stays, even when that pod has
/// ended. `get modules` shows which is which, and a module in use cannot be
/// deleted by hand.
#[test]
fn modules_no_pod_uses_are_removed_after_the_grace_period() {
    let mut c = Cluster::start_with("20s", &["--module-grace", "2s"]);
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let kept = c.manifest("kept.yaml", &pod_yaml("kept", "hello", &[], "Never", ""));
    let gone = c.manifest("gone.yaml", &pod_yaml("gone", "ticker", &[], "Never", ""));
    for m in [&kept, &gone] {
        c.ok(&["apply", "-f", m.to_str().expect("utf8")]);
    }
    let (kept_module, gone_module) = (module_of(&c, "kept"), module_of(&c, "gone"));
    c.wait_phase("kept", "Succeeded", T);
    assert_eq!(module_in_use(&c, &kept_module).as_deref(), Some("1"));
    assert_eq!(module_in_use(&c, &gone_module).as_deref(), Some("1"));
    let wide = c.ok(&["get", "modules", "-o", "wide"]);
    assert!(
        wide.contains("PODS") && wide.contains("default/kept"),
        "{wide}"
    );

    let name = format!("sha256-{}", &gone_module["sha256:".len()..]);
    let refused = c.run(&["delete", "module", &name]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("default/gone") && err.contains("delete them first"),
        "{err}"
    );

    let removed = Instant::now();
    c.ok(&["delete", "pod", "gone"]);
    assert_eq!(module_in_use(&c, &gone_module).as_deref(), Some("no"));
    wait_for("the unused module to go", T, || {
        module_in_use(&c, &gone_module).is_none().then_some(())
    });
    assert!(
        removed.elapsed() >= Duration::from_secs(2),
        "removed before its grace period"
    );
    // Bytes too: its digest is not served any more, so a pod naming it
    // again is refused until the CLI uploads the module anew.
    let orphan = pod_yaml("again", "ticker", &[], "Never", "");
    let orphan = orphan.replace(
        flotilla_workloads::path("ticker").to_str().expect("utf8"),
        &gone_module,
    );
    let out = c.run(&[
        "apply",
        "-f",
        c.manifest("again.yaml", &orphan).to_str().expect("utf8"),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not uploaded"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The module of the pod that ended stays, however long it waits.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(module_in_use(&c, &kept_module).as_deref(), Some("1"));
    c.ok(&["apply", "-f", gone.to_str().expect("utf8")]);
    assert_eq!(
        module_in_use(&c, &module_of(&c, "gone")).as_deref(),
        Some("1")
    );
}

/// A core module that cranelift takes long and much memory to compile: an
/// empty `_start` and `functions` large functions, each pushing 200 values
/// and multiplying them together, ten times over (14 KB of code each). 400
/// of them (5.6 MB) took 10 to 14 s and 200 to 270 MiB to compile on two
/// cores, in a debug build of flotilla too (its dependencies are optimised).
fn code_heavy_module(functions: u32) -> Vec<u8> {
    fn leb(mut n: u64, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len() as u64, out);
        out.extend_from_slice(body);
    }
    const WIDTH: u64 = 200;
    const REPEATS: u64 = 10;
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 is () -> (), 1 is (i32) -> i32.
    section(
        1,
        &[0x02, 0x60, 0x00, 0x00, 0x60, 0x01, 0x7f, 0x01, 0x7f],
        &mut m,
    );
    let mut funcs = Vec::new();
    leb(u64::from(functions) + 1, &mut funcs);
    funcs.push(0x00);
    funcs.extend(std::iter::repeat_n(0x01, functions as usize));
    section(3, &funcs, &mut m);
    section(7, b"\x01\x06_start\x00\x00", &mut m);
    let mut code = Vec::new();
    leb(u64::from(functions) + 1, &mut code);
    code.extend_from_slice(&[0x02, 0x00, 0x0b]);
    for i in 0..u64::from(functions) {
        let mut body = vec![0x00]; // no locals but the parameter
        for r in 0..REPEATS {
            for k in 0..WIDTH {
                // local.get 0; i32.const (small, positive: one or two bytes); i32.add
                body.extend_from_slice(&[0x20, 0x00, 0x41]);
                let c = (k * 7 + r + i) % 8192;
                if c < 64 {
                    body.push(c as u8);
                } else {
                    body.extend_from_slice(&[(c & 0x7f) as u8 | 0x80, (c >> 7) as u8]);
                }
                body.push(0x6a);
            }
            body.extend(std::iter::repeat_n(0x6c, WIDTH as usize - 1)); // i32.mul
            body.extend_from_slice(&[0x21, 0x00]); // local.set 0
        }
        body.extend_from_slice(&[0x20, 0x00, 0x0b]);
        leb(body.len() as u64, &mut code);
        code.extend_from_slice(&body);
    }
    section(10, &code, &mut m);
    m
}

/// A pod manifest (written into the cluster's directory) running the
/// module file `file` there, with more spec lines.
fn module_pod(c: &Cluster, name: &str, file: &str, policy: &str, extra_spec: &str) -> String {
    let hello = flotilla_workloads::path("hello");
    let yaml = pod_yaml(name, "hello", &[], policy, extra_spec)
        .replace(hello.to_str().expect("utf8"), file);
    let path = c.manifest(&format!("{name}.yaml"), &yaml);
    path.to_str().expect("utf8").to_string()
}

/// Pids of the compiler processes (`flotilla __compile`) writing into `cache`.
fn compilers_into(cache: &std::path::Path) -> Vec<u32> {
    use std::os::unix::ffi::OsStrExt;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    procs
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            let ours = args.contains(&&b"__compile"[..])
                && args.iter().any(|a| {
                    std::path::Path::new(std::ffi::OsStr::from_bytes(a)).starts_with(cache)
                });
            ours.then_some(pid)
        })
        .collect()
}

/// The names of the files in a node's code cache (temporary ones too).
fn cache_files(cache: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(cache)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A pod deleted while its module compiles stops the compile at once — the
/// compiler is a child process of the node, killed with the pod — and
/// leaves no code in the node's cache; the node compiles and caches other
/// modules as before.
#[test]
fn deleting_a_pod_stops_its_compile_and_caches_nothing() {
    let mut c = Cluster::start("10s");
    // The node's own compile is what is stopped: no code from the master.
    c.start_node_args("n1", &["--no-precompiled-code"]);
    c.wait_node_ready("n1", "Ready", T);
    std::fs::write(c.path("heavy.wasm"), code_heavy_module(400)).expect("write");
    let heavy = module_pod(&c, "heavy", "heavy.wasm", "Never", "");
    c.ok(&["apply", "-f", &heavy]);
    let cache = c.path("n1").join("compiled");
    wait_for("the node to start compiling in a child", T, || {
        (!compilers_into(&cache).is_empty()).then_some(())
    });
    // Well into a compile that takes several seconds.
    std::thread::sleep(Duration::from_secs(1));
    assert!(!compilers_into(&cache).is_empty(), "still compiling");
    let deleted = Instant::now();
    c.ok(&["delete", "pod", "heavy"]);
    wait_for("the compiler to be killed", Duration::from_secs(5), || {
        compilers_into(&cache).is_empty().then_some(())
    });
    eprintln!("compiler gone {:?} after delete", deleted.elapsed());
    // Anything the node would still store would be there by now.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cache_files(&cache), Vec::<String>::new(), "nothing cached");
    assert!(!c.node_log("n1").contains("cannot write code cache"));

    let hello = c.manifest("hello.yaml", &pod_yaml("hello", "hello", &[], "Never", ""));
    c.ok(&["apply", "-f", hello.to_str().expect("utf8")]);
    c.wait_phase("hello", "Succeeded", T);
    let files = cache_files(&cache);
    assert!(
        files.len() == 1 && files[0].ends_with(".cwasm"),
        "hello's code is cached: {files:?}"
    );
}

/// A module that needs more time or memory to compile than its node allows
/// (`--compile-timeout`, `--compile-memory`) fails its pod with reason
/// `CompileLimit` and a message naming the limit and the flag, even with
/// restartPolicy Always; it is not tried again, and nothing is cached.
#[test]
fn modules_over_the_compile_limits_fail_their_pods() {
    let mut c = Cluster::start("10s");
    // The nodes' own compiler is what is tested: no code from the master.
    c.start_node_args(
        "slow",
        &["--compile-timeout", "1s", "--no-precompiled-code"],
    );
    c.start_node_args(
        "small",
        &["--compile-memory", "128Mi", "--no-precompiled-code"],
    );
    std::fs::write(c.path("heavy.wasm"), code_heavy_module(400)).expect("write");
    let cases = [
        (
            "timeout",
            "slow",
            "compile time limit of 1s",
            "--compile-timeout",
        ),
        (
            "memory",
            "small",
            "compile memory limit of 128 MiB",
            "--compile-memory",
        ),
    ];
    for (pod, node, _, _) in cases {
        c.wait_node_ready(node, "Ready", T);
        let selector = format!("  nodeSelector: {{flotilla.dev/hostname: {node}}}\n");
        let manifest = module_pod(&c, pod, "heavy.wasm", "Always", &selector);
        c.ok(&["apply", "-f", &manifest]);
    }
    for (pod, node, limit, flag) in cases {
        c.wait_phase(pod, "Failed", Duration::from_secs(60));
        assert_eq!(c.pod_field(pod, "reason"), "CompileLimit", "{pod}");
        let message = c.pod_field(pod, "message");
        assert!(
            message.contains(limit) && message.contains(flag),
            "{message}"
        );
        wait_status(&c, pod, "CompileLimit");
        let condition = c.get_json("pod", pod).expect("pod")["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "ModuleReady").cloned())
            .expect("a ModuleReady condition");
        assert_eq!(condition["reason"], "CompileLimit", "{condition}");
        assert_eq!(condition["status"], false, "{condition}");
        assert!(compilers_into(&c.path(node).join("compiled")).is_empty());
    }
    std::thread::sleep(Duration::from_secs(3));
    for (pod, node, _, _) in cases {
        assert_eq!(c.pod_field(pod, "phase"), "Failed", "{pod}");
        assert_eq!(c.pod_field(pod, "restartCount"), "0", "{pod}");
        assert!(!c.node_log(node).contains("module not ready"), "no retries");
        let cache = c.path(node).join("compiled");
        assert_eq!(cache_files(&cache), Vec::<String>::new(), "{node}");
    }
}

/// The hello workload made distinct, and `pad` bytes larger, by a custom
/// section: another digest, the same program.
fn padded_hello(tag: &str, pad: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    let mut body = Vec::new();
    leb(tag.len(), &mut body);
    body.extend_from_slice(tag.as_bytes());
    body.resize(body.len() + pad, 0);
    let mut wasm = std::fs::read(flotilla_workloads::path("hello")).expect("hello");
    wasm.push(0);
    leb(body.len(), &mut wasm);
    wasm.extend(body);
    wasm
}

/// The compiled code files (`*.cwasm`) in node `node`'s cache.
fn node_code_files(c: &Cluster, node: &str) -> Vec<String> {
    let dir = c.path(node).join("compiled");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("code cache")
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    names.sort();
    names
}

/// A node keeps a module's bytes and code while a pod uses it, and for
/// `--module-cache-grace` after (a pod deleted and applied again neither
/// fetches nor compiles); then both go, and `node.redb` gives the space back.
#[test]
fn a_node_deletes_modules_no_pod_uses_after_its_grace_period() {
    let mut c = Cluster::start("10s");
    // Compiling by itself, so that "compiles anew" shows.
    c.start_node_args(
        "n1",
        &["--module-cache-grace", "10s", "--no-precompiled-code"],
    );
    c.wait_node_ready("n1", "Ready", T);
    // Two pods share ticker's module; a third runs an 8 MiB module once.
    for name in ["keeper", "leaver"] {
        let m = c.manifest(
            &format!("{name}.yaml"),
            &pod_yaml(name, "ticker", &[], "Always", ""),
        );
        c.ok(&["apply", "-f", m.to_str().expect("utf8")]);
    }
    std::fs::write(c.path("big.wasm"), padded_hello("big", 8 << 20)).expect("write");
    let once = c.manifest(
        "once.yaml",
        &format!(
            "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: once\nspec:\n  module: {}\n  restartPolicy: Never\n",
            c.path("big.wasm").display()
        ),
    );
    let once = once.to_str().expect("utf8");
    c.ok(&["apply", "-f", once]);
    c.wait_phase("once", "Succeeded", T);
    c.wait_phase("keeper", "Running", T);
    c.wait_phase("leaver", "Running", T);
    let digest = |pod: &str| {
        c.get_json("pod", pod).expect("pod")["spec"]["module"]
            .as_str()
            .expect("module")
            .to_string()
    };
    let (ticker, big) = (digest("keeper"), digest("once"));
    let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
    let redb = c.path("n1").join("node.redb");
    let redb_size = || std::fs::metadata(&redb).expect("node.redb").len();
    assert!(c.module_ready_message("once").contains("(master)"));
    assert_eq!(node_code_files(&c, "n1").len(), 2);
    assert!(redb_size() > 8 << 20, "{}", redb_size());

    // Deleted and applied again within the grace period: the bytes and the
    // code are still there (the program in memory is not: the pod had ended).
    c.ok(&["delete", "pod", "once"]);
    wait_for("once to be deleted", T, || {
        c.get_json("pod", "once").is_none().then_some(())
    });
    c.ok(&["apply", "-f", once]);
    c.wait_phase("once", "Succeeded", T);
    let message = c.module_ready_message("once");
    assert!(
        message.contains("(local)") && message.contains("(cached)"),
        "{message}"
    );

    // No pod uses it any more: after the grace period its bytes and code go,
    // and the file shrinks. Ticker's stays: keeper still uses it.
    c.ok(&["delete", "pod", "once"]);
    c.ok(&["delete", "pod", "leaver"]);
    let gone = Instant::now();
    wait_for(
        "the big module to leave n1",
        Duration::from_secs(60),
        || {
            let files = node_code_files(&c, "n1");
            // The file shrinks while it is compacted, before the line
            // that says so is written.
            let log = c.node_log("n1");
            (files.len() == 1
                && files[0].contains(&hex(&ticker))
                && log.contains(&big)
                && log.contains("compacted node.redb")
                && redb_size() < 4 << 20)
                .then_some(())
        },
    );
    assert!(
        gone.elapsed() >= Duration::from_secs(8),
        "{:?}",
        gone.elapsed()
    );
    let log = c.node_log("n1");
    assert!(
        log.contains("deleted a module no pod on this node uses")
            && log.contains("compacted node.redb"),
        "{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("deleted a module") && l.contains(&ticker)),
        "{log}"
    );
    assert_eq!(c.pod_field("keeper", "phase"), "Running");

    // Applied now, it comes from the master again and compiles anew.
    c.ok(&["apply", "-f", once]);
    c.wait_phase("once", "Succeeded", T);
    let message = c.module_ready_message("once");
    assert!(
        message.contains("(master)") && message.contains("(cold)"),
        "{message}"
    );
}

#[test]
fn a_bare_pod_without_restart_policy_is_applied_with_a_hint() {
    let c = Cluster::start("10s");
    let bare = c.manifest(
        "bare.yaml",
        &format!(
            "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: bare\nspec:\n  module: {}\n",
            flotilla_workloads::path("hello").display()
        ),
    );
    let out = c.run(&["apply", "-f", bare.to_str().expect("utf8")]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("pod/bare created"), "{stdout}");
    assert!(
        stderr.contains("bare.yaml: document 1: pod/bare sets no restartPolicy, so it is Always")
            && stderr.contains("set `restartPolicy: Never` (or `OnFailure`)"),
        "{stderr}"
    );
    // Applied as written: Always.
    let pod = c.get_json("pod", "bare").expect("pod");
    assert_eq!(pod["spec"]["restartPolicy"], "Always", "{pod}");
    // A pod that says its policy gets no hint.
    let never = c.manifest("never.yaml", &pod_yaml("never", "hello", &[], "Never", ""));
    let out = c.run(&["apply", "-f", never.to_str().expect("utf8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("hint:"), "{stderr}");
}
