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

    // Before the ConfigMap exists the pod waits, Pending, and says why
    // (whatever its restart policy); it starts once the ConfigMap is made.
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
    wait_for("the pod to wait for its configmap", T, || {
        let early = c.get_json("pod", "early")?;
        (early["status"]["reason"] == "ConfigMapNotFound").then_some(())
    });
    assert_eq!(c.pod_field("early", "phase"), "Pending");

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
    c.wait_phase("early", "Succeeded", T);
    assert_eq!(logs(&c, "early"), "1");
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
    wait_for("the pod to wait for its key", T, || {
        let pod = c.get_json("pod", "missing")?;
        (pod["status"]["reason"] == "CreateContainerConfigError").then_some(())
    });
    let pod = c.get_json("pod", "missing").expect("pod");
    assert_eq!(pod["status"]["phase"], "Pending", "{pod}");
    assert!(
        pod["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no key \"nope\""),
        "{pod}"
    );
}

#[test]
fn a_secret_is_sealed_at_rest_hidden_from_get_and_given_to_its_pods() {
    use base64::Engine as _;
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    // A value no other byte string of the cluster holds.
    let password = "hunter2-sealed-at-rest-7f3a";
    let encoded = base64::engine::general_purpose::STANDARD.encode(password);
    let token_file = c.path("token");
    std::fs::write(&token_file, "t0ken-from-a-file").expect("file");
    let out = c.ok(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal",
        &format!("password={password}"),
        "--from-file",
        token_file.to_str().expect("utf8"),
    ]);
    assert!(out.contains("secret/db created"), "{out}");
    let table = c.ok(&["get", "secrets"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("db") && l.contains("Opaque") && l.contains(" 2 ")),
        "{table}"
    );
    // Values are hidden unless an admin asks for them.
    let yaml = c.ok(&["get", "secret", "db", "-o", "yaml"]);
    assert!(yaml.contains("<hidden: 27 bytes>"), "{yaml}");
    assert!(
        !yaml.contains(&encoded) && !yaml.contains("sealed"),
        "{yaml}"
    );
    let shown = c.ok(&["get", "secret", "db", "-o", "yaml", "--show-secrets"]);
    assert!(shown.contains(&encoded), "{shown}");
    // What `get` printed, applied back, says what to do instead of losing values.
    let hidden = c.manifest("hidden.yaml", &yaml);
    let refused = c.run(&["apply", "-f", hidden.to_str().expect("utf8")]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--show-secrets"),
        "{refused:?}"
    );

    // A pod reads it as variables and as files.
    let spec = "  env:\n  - name: PASSWORD\n    valueFrom: {secretKeyRef: {name: db, key: password}}\n  envFrom:\n  - {secretRef: {name: db}, prefix: S_}\n";
    apply(
        &c,
        "env.yaml",
        &pod_yaml("env", "hello", &[], "Never", spec),
    );
    c.wait_phase("env", "Succeeded", T);
    let printed = logs(&c, "env");
    for line in [
        format!("PASSWORD={password}"),
        "S_token=t0ken-from-a-file".to_string(),
    ] {
        assert!(printed.lines().any(|l| l == line), "{line}: {printed}");
    }
    let mount = "  volumes:\n  - name: creds\n    secret: {secretName: db, items: [{key: password, path: db/pw}], defaultMode: 0400}\n  volumeMounts:\n  - {name: creds, mountPath: /run/secrets}\n";
    apply(
        &c,
        "file.yaml",
        &pod_yaml(
            "file",
            "files",
            &["read", "/run/secrets/db/pw"],
            "Never",
            mount,
        ),
    );
    c.wait_phase("file", "Succeeded", T);
    assert_eq!(logs(&c, "file"), password);
    let uid = c.get_json("pod", "file").expect("pod")["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let dir = c.path(&format!("n1/pods/default_file_{uid}/volumes/creds"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&dir)
        .expect("secret dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
    let pw = std::fs::metadata(dir.join("db/pw"))
        .expect("file")
        .permissions()
        .mode();
    assert_eq!(pw & 0o777, 0o400);

    // A pod whose Secret is missing waits for it.
    let absent = "  env:\n  - name: X\n    valueFrom: {secretKeyRef: {name: later, key: x}}\n";
    apply(
        &c,
        "absent.yaml",
        &pod_yaml("absent", "hello", &[], "Never", absent),
    );
    wait_for("the pod to wait for its secret", T, || {
        let pod = c.get_json("pod", "absent")?;
        (pod["status"]["reason"] == "CreateContainerConfigError").then_some(())
    });
    c.ok(&[
        "create",
        "secret",
        "generic",
        "later",
        "--from-literal",
        "x=1",
    ]);
    c.wait_phase("absent", "Succeeded", T);

    // Neither the master's data directory (raft log, store) nor a backup
    // holds the value, in the clear or base64.
    let backup = c.path("backup.snap");
    c.ok(&["cluster", "snapshot", backup.to_str().expect("utf8")]);
    let mut files = vec![backup];
    let mut dirs = vec![c.path("master")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("dir").flatten() {
            if e.file_type().expect("type").is_dir() {
                dirs.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    assert!(files.len() > 3, "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        for needle in [password.as_bytes(), encoded.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the secret in the clear",
                f.display()
            );
        }
    }
}

#[test]
fn a_pod_reaches_only_what_its_network_allows_and_refusals_are_counted() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr").to_string();
    let port = listener.local_addr().expect("addr").port();

    // No allowance: the connect fails in the guest and never reaches the listener.
    apply(
        &c,
        "closed.yaml",
        &pod_yaml("closed", "sockets", &["connect", &addr], "Never", ""),
    );
    // Allowed, but to another port: refused as well.
    let other = format!(
        "  network:\n    allow:\n    - {{host: 127.0.0.1, ports: [{}]}}\n",
        port.wrapping_add(1).max(1)
    );
    apply(
        &c,
        "elsewhere.yaml",
        &pod_yaml("elsewhere", "sockets", &["connect", &addr], "Never", &other),
    );
    for pod in ["closed", "elsewhere"] {
        c.wait_phase(pod, "Failed", T);
        assert!(logs(&c, pod).contains("refused: "), "{}", logs(&c, pod));
        let last = wait_for("the refusal in the pod's status", T, || {
            let pod = c.get_json("pod", pod)?;
            let r = &pod["status"]["networkRefusals"];
            (r["count"].as_u64()? >= 1).then(|| r["last"].as_str().unwrap_or_default().to_string())
        });
        assert_eq!(last, format!("TCP connect to {addr}"));
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a refused pod reached the listener: {other:?}"),
    }
    let events = wait_for("a NetworkRefused event", T, || {
        let events = c.ok(&["get", "events"]);
        events.contains("NetworkRefused").then_some(events)
    });
    assert!(
        events.contains(&format!("TCP connect to {addr}")),
        "{events}"
    );
    let described = c.ok(&["describe", "pod", "elsewhere"]);
    assert!(
        described.contains(&format!(
            "  to 127.0.0.1 port {}/TCP",
            port.wrapping_add(1).max(1)
        )) && described.contains(&format!("last: TCP connect to {addr}")),
        "{described}"
    );

    // Allowed: it connects and the listener hears it.
    let allow = format!("  network:\n    allow:\n    - {{host: 127.0.0.0/8, ports: [{port}]}}\n");
    apply(
        &c,
        "open.yaml",
        &pod_yaml("open", "sockets", &["connect", &addr], "Never", &allow),
    );
    let mut conn = wait_for("the allowed pod to connect", T, || {
        listener.accept().ok().map(|(s, _)| s)
    });
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut heard = String::new();
    std::io::Read::read_to_string(&mut conn, &mut heard).expect("read");
    assert_eq!(heard, "hello from open\n");
    c.wait_phase("open", "Succeeded", T);
    assert!(logs(&c, "open").contains(&format!("connected to {addr}")));
    assert!(c.get_json("pod", "open").expect("pod")["status"]["networkRefusals"].is_null());

    // An allowance that does not parse is refused at apply, saying what to write.
    let bad = "  network:\n    allow:\n    - {host: 10.0.0.0/40}\n";
    let out = c.run(&[
        "apply",
        "-f",
        c.manifest("bad.yaml", &pod_yaml("bad", "sockets", &[], "Never", bad))
            .to_str()
            .expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("spec.network.allow[0].host"),
        "{err}"
    );
}

#[test]
fn a_persistent_volume_outlives_its_pods_and_keeps_them_on_its_node() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.start_node("n2");
    c.wait_node_ready("n1", "Ready", T);
    c.wait_node_ready("n2", "Ready", T);
    let node_of = |c: &Cluster, pod: &str| {
        c.get_json("pod", pod)
            .and_then(|v| v["spec"]["nodeName"].as_str().map(String::from))
            .unwrap_or_default()
    };
    let db = |node: &str| {
        let node = if node.is_empty() {
            String::new()
        } else {
            format!(", node: {node}")
        };
        format!("  volumes:\n  - name: data\n    persistent: {{name: db{node}}}\n  volumeMounts:\n  - {{name: data, mountPath: /data}}\n")
    };
    let count = |c: &Cluster, pod: &str, volume: &str| {
        apply(
            c,
            &format!("{pod}.yaml"),
            &pod_yaml(pod, "files", &["count", "/data/n"], "Never", volume),
        );
    };

    count(&c, "first", &db(""));
    c.wait_phase("first", "Succeeded", T);
    assert!(
        logs(&c, "first").contains("count 1"),
        "{}",
        logs(&c, "first")
    );
    let home = node_of(&c, "first");
    let away = if home == "n1" { "n2" } else { "n1" };
    c.ok(&["delete", "pod", "first"]);
    wait_for("the node to report the volume it holds", T, || {
        let node = c.get_json("node", &home)?;
        node["status"]["volumes"]
            .as_array()?
            .iter()
            .any(|v| v == "default/db")
            .then_some(())
    });
    assert!(c.path(&format!("{home}/persistent/default/db/n")).exists());

    // Every later pod of the volume goes to its node and finds the data.
    for (i, pod) in ["second", "third", "fourth"].iter().enumerate() {
        count(&c, pod, &db(""));
        c.wait_phase(pod, "Succeeded", T);
        assert_eq!(node_of(&c, pod), home, "{pod}");
        let want = format!("count {}", i + 2);
        assert!(logs(&c, pod).contains(&want), "{pod}: {}", logs(&c, pod));
    }

    // A pod that says the volume is on the other node cannot be placed.
    count(&c, "astray", &db(away));
    let message = wait_for("astray to be unschedulable", T, || {
        let m = c.pod_field("astray", "message");
        m.contains("persistent volume default/db").then_some(m)
    });
    assert!(message.contains("0/2 nodes are available"), "{message}");
    assert_eq!(node_of(&c, "astray"), "");
    // Bound by hand to a node that does not hold it: that node refuses.
    let pinned = format!("  nodeName: {away}\n{}", db(&home));
    count(&c, "pinned", &pinned);
    c.wait_phase("pinned", "Failed", T);
    assert_eq!(c.pod_field("pinned", "reason"), "PersistentVolumeElsewhere");
    assert!(!c.path(&format!("{away}/persistent/default/db")).exists());
}
