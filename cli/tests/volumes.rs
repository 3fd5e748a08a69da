//! Volumes end to end: the real `flotilla` binary as master and node on
//! loopback, pods of the `files` sample mounting an emptyDir and a hostPath.
//! The runtime side (preopens, read-only mounts, a file-system suite on p1
//! and p2) is tested in `edge-node/tests/runtime.rs`.

mod common;

use common::{pod_yaml, wait_for, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn apply(c: &Cluster, file: &str, text: &str) {
    let path = c.manifest(file, text);
    c.ok(&["apply", "-f", path.to_str().expect("utf8")]);
}

fn logs(c: &Cluster, pod: &str) -> String {
    String::from_utf8_lossy(&c.run(&["logs", pod]).stdout).into_owned()
}

#[test]
fn an_empty_dir_outlives_restarts_goes_with_its_pod_and_keeps_to_its_size() {
    let mut c = Cluster::start("20s");
    let allowed = c.path("srv");
    std::fs::create_dir_all(allowed.join("readings")).expect("dir");
    std::fs::write(allowed.join("readings/today"), "21.5C").expect("file");
    c.start_node_args(
        "n1",
        &["--allow-host-path", allowed.to_str().expect("utf8")],
    );
    c.wait_node_ready("n1", "Ready", T);

    // Each run counts in the emptyDir, then fails: the count goes on.
    let scratch = "  volumes:\n  - name: scratch\n    emptyDir: {}\n  volumeMounts:\n  - {name: scratch, mountPath: /scratch}\n";
    apply(
        &c,
        "counter.yaml",
        &pod_yaml(
            "counter",
            "files",
            &["count", "/scratch/n", "1"],
            "OnFailure",
            scratch,
        ),
    );
    wait_for("the second run to count 2", T, || {
        logs(&c, "counter").contains("count 2").then_some(())
    });
    let pods_dir = c.path("n1/pods");
    let dirs = || -> Vec<String> {
        std::fs::read_dir(&pods_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        dirs().iter().any(|d| d.starts_with("default_counter_")),
        "{:?}",
        dirs()
    );
    c.ok(&["delete", "pod", "counter"]);
    wait_for("its emptyDir to go with it", T, || {
        (!dirs().iter().any(|d| d.starts_with("default_counter_"))).then_some(())
    });

    // A hostPath the node allows is read; one it does not is refused.
    let host = |path: &str| {
        format!(
            "  volumes:\n  - name: h\n    hostPath: {{path: {path}}}\n  volumeMounts:\n  - {{name: h, mountPath: /data, readOnly: true}}\n"
        )
    };
    let readings = allowed.join("readings");
    apply(
        &c,
        "reader.yaml",
        &pod_yaml(
            "reader",
            "files",
            &["read", "/data/today"],
            "Never",
            &host(readings.to_str().expect("utf8")),
        ),
    );
    c.wait_phase("reader", "Succeeded", T);
    assert_eq!(logs(&c, "reader"), "21.5C");
    apply(
        &c,
        "snoop.yaml",
        &pod_yaml("snoop", "files", &["ls", "/data"], "Never", &host("/etc")),
    );
    c.wait_phase("snoop", "Failed", T);
    let snoop = c.get_json("pod", "snoop").expect("pod");
    assert_eq!(snoop["status"]["reason"], "HostPathNotAllowed", "{snoop}");
    let message = snoop["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(allowed.to_str().expect("utf8")),
        "{message}"
    );

    // Past its sizeLimit, the pod is stopped.
    let limited = "  volumes:\n  - name: scratch\n    emptyDir: {sizeLimit: 1Mi}\n  volumeMounts:\n  - {name: scratch, mountPath: /scratch}\n";
    apply(
        &c,
        "filler.yaml",
        &pod_yaml(
            "filler",
            "files",
            &["fill", "/scratch/big", "4"],
            "Never",
            limited,
        ),
    );
    c.wait_phase("filler", "Failed", T);
    let filler = c.get_json("pod", "filler").expect("pod");
    assert_eq!(filler["status"]["reason"], "EmptyDirSizeLimit", "{filler}");
}

#[test]
fn a_config_map_is_mounted_read_only_and_its_changes_reach_the_files() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let mount = "  volumes:\n  - name: cfg\n    configMap: {name: app}\n  volumeMounts:\n  - {name: cfg, mountPath: /etc/app}\n";

    // Before the ConfigMap exists the pod says why it waits.
    apply(
        &c,
        "early.yaml",
        &pod_yaml(
            "early",
            "files",
            &["read", "/etc/app/level"],
            "Never",
            mount,
        ),
    );
    c.wait_phase("early", "Failed", T);
    let early = c.get_json("pod", "early").expect("pod");
    assert_eq!(early["status"]["reason"], "ConfigMapNotFound", "{early}");

    let greeting = c.path("greeting.txt");
    std::fs::write(&greeting, "hello from a file").expect("file");
    let out = c.ok(&[
        "create",
        "configmap",
        "app",
        "--from-literal",
        "level=1",
        "--from-file",
        greeting.to_str().expect("utf8"),
    ]);
    assert!(out.contains("configmap/app created"), "{out}");
    let table = c.ok(&["get", "cm"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("app") && l.contains(" 2 ")),
        "{table}"
    );

    apply(
        &c,
        "reader.yaml",
        &pod_yaml(
            "reader",
            "files",
            &["read", "/etc/app/greeting.txt"],
            "Never",
            mount,
        ),
    );
    c.wait_phase("reader", "Succeeded", T);
    assert_eq!(logs(&c, "reader"), "hello from a file");
    apply(
        &c,
        "writer.yaml",
        &pod_yaml(
            "writer",
            "files",
            &["expect-denied", "/etc/app/level"],
            "Never",
            mount,
        ),
    );
    c.wait_phase("writer", "Succeeded", T);
    assert!(logs(&c, "writer").contains("denied"));

    // A running pod's files follow the ConfigMap.
    apply(
        &c,
        "sleeper.yaml",
        &pod_yaml("sleeper", "files", &["sleep"], "Always", mount),
    );
    c.wait_phase("sleeper", "Running", T);
    let uid = c.get_json("pod", "sleeper").expect("pod")["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let file = c.path(&format!("n1/pods/default_sleeper_{uid}/volumes/cfg/level"));
    wait_for("the mounted file", T, || {
        (std::fs::read_to_string(&file).ok()? == "1").then_some(())
    });
    let changed = "apiVersion: flotilla.dev/v1\nkind: ConfigMap\nmetadata: {name: app}\ndata:\n  level: \"2\"\n  greeting.txt: hello from a file\n";
    let started = std::time::Instant::now();
    apply(&c, "app.yaml", changed);
    wait_for("the change to reach the mounted file", T, || {
        (std::fs::read_to_string(&file).ok()? == "2").then_some(())
    });
    eprintln!(
        "configmap update reached the mounted file in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Variables from the ConfigMap and from the pod, read at start; the
    // program's name as it expects it.
    let env = "  argv0: sensor-reader\n  env:\n  - name: LEVEL\n    valueFrom: {configMapKeyRef: {name: app, key: level}}\n  - name: NODE\n    valueFrom: {fieldRef: {fieldPath: spec.nodeName}}\n  envFrom:\n  - {configMapRef: {name: app}, prefix: CM_}\n";
    apply(&c, "env.yaml", &pod_yaml("env", "hello", &[], "Never", env));
    c.wait_phase("env", "Succeeded", T);
    let printed = logs(&c, "env");
    for line in ["arg[0]=sensor-reader", "LEVEL=2", "NODE=n1", "CM_level=2"] {
        assert!(printed.lines().any(|l| l == line), "{line}: {printed}");
    }
    let missing =
        "  env:\n  - name: NOPE\n    valueFrom: {configMapKeyRef: {name: app, key: nope}}\n";
    apply(
        &c,
        "missing.yaml",
        &pod_yaml("missing", "hello", &[], "Never", missing),
    );
    c.wait_phase("missing", "Failed", T);
    let pod = c.get_json("pod", "missing").expect("pod");
    assert_eq!(
        pod["status"]["reason"], "CreateContainerConfigError",
        "{pod}"
    );
    assert!(
        pod["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no key \"nope\""),
        "{pod}"
    );
}
