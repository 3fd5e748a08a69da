//! HTTP Services end to end: the real `flotilla` binary as master and three
//! nodes, each node's proxy on a loopback address of its own. Requests to
//! any node's Service port reach every pod, in-process or across nodes over
//! QUIC, and keep flowing when a node dies or every master is down.

mod common;

use common::{http, wait_for, Cluster};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn apply(c: &Cluster, file: &str, text: &str) -> String {
    let path = c.manifest(file, text);
    c.ok(&["apply", "-f", path.to_str().expect("utf8")])
}

/// hello-http as a Deployment of `replicas` behind a Service on `port`.
fn hello(replicas: u32, port: u16) -> String {
    format!(
        "apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata:\n  name: hello\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: hello}}\n  template:\n    metadata:\n      labels: {{app: hello}}\n    spec:\n      module: {}\n      restartPolicy: Always\n      env:\n      - name: POD_NAME\n        valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}\n      - name: NODE_NAME\n        valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}\n      topologySpreadConstraints:\n      - {{maxSkew: 1, topologyKey: flotilla.dev/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: hello}}}}}}\n---\napiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  selector: {{app: hello}}\n  ports:\n  - {{name: http, port: {port}}}\n",
        flotilla_workloads::path("hello-http").display()
    )
}

/// The pod named in a hello-http answer.
fn pod_of(body: &str) -> Option<String> {
    body.strip_prefix("hello from ")?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// Ready endpoints of Service `name`.
fn ready_endpoints(c: &Cluster, name: &str) -> usize {
    c.get_json("endpoints", name)
        .and_then(|e| {
            e["endpoints"]
                .as_array()
                .map(|l| l.iter().filter(|x| x["ready"] == true).count())
        })
        .unwrap_or(0)
}

/// The pods that answer `n` requests to `addr`; panics on a failed one.
fn pods_answering(addr: &str, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|i| {
            let (status, body) = http(addr, "GET", "/", b"")
                .unwrap_or_else(|| panic!("request {i} to {addr} got no answer"));
            assert_eq!(status, 200, "request {i} to {addr}: {body}");
            pod_of(&body).unwrap_or_else(|| panic!("{body}"))
        })
        .collect()
}

#[test]
fn requests_to_any_node_reach_every_pod_and_survive_a_dead_node_and_no_master() {
    let mut c = Cluster::start("6s");
    for n in ["n1", "n2", "n3"] {
        c.start_node(n);
    }
    for n in ["n1", "n2", "n3"] {
        c.wait_node_ready(n, "Ready", T);
    }
    let port = common::free_port();
    apply(&c, "hello.yaml", &hello(3, port));
    wait_for("three ready endpoints", T, || {
        (ready_endpoints(&c, "hello") == 3).then_some(())
    });
    let nodes: Vec<String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| format!("{}:{port}", c.proxy_address(n)))
        .collect();
    // Every node's port reaches all three pods: the one beside it
    // in-process, the two others over QUIC.
    wait_for("the Service's port answering", T, || {
        http(&nodes[0], "GET", "/", b"").filter(|(s, _)| *s == 200)
    });
    let all = pods_answering(&nodes[0], 40);
    assert_eq!(all.len(), 3, "{all:?}");
    for addr in &nodes[1..] {
        assert_eq!(pods_answering(addr, 40), all, "through {addr}");
    }
    // A request names the node that ran it.
    let (_, body) = http(&nodes[0], "GET", "/", b"").expect("answer");
    assert!(body.contains(" on n"), "{body}");

    // n3 dies: requests through n1 keep succeeding (one sent to its pod
    // is tried again on another), before and after the master notices.
    c.kill_node("n3");
    let after = pods_answering(&nodes[0], 30);
    assert!(!after.is_empty(), "{after:?}");
    wait_for("n3's pod leaving the endpoints", T, || {
        (ready_endpoints(&c, "hello") == 2).then_some(())
    });
    pods_answering(&nodes[0], 10);

    // Every master down: the proxies serve from their last view.
    c.stop_master();
    let still = pods_answering(&nodes[1], 20);
    assert!(!still.is_empty(), "{still:?}");
    c.start_master();
    c.wait_node_ready("n1", "Ready", T);

    // Scaled to zero: a clear 503.
    c.ok(&["scale", "deployment", "hello", "--replicas", "0"]);
    wait_for("no endpoints", T, || {
        (ready_endpoints(&c, "hello") == 0).then_some(())
    });
    let (status, body) = wait_for("503 with no pods", T, || {
        http(&nodes[0], "GET", "/", b"").filter(|(s, _)| *s == 503)
    });
    assert_eq!(status, 503);
    assert!(
        body.contains("Service default/hello has no ready pods"),
        "{body}"
    );
}

/// hello-http pods that read their health from `flags` (a host directory),
/// with a readiness probe on /healthz and a liveness probe on /livez.
fn probed_hello(flags: &std::path::Path, port: u16, extra_service: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata:\n  name: probed\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: probed}}\n  template:\n    metadata:\n      labels: {{app: probed}}\n    spec:\n      module: {}\n      restartPolicy: Always\n      env:\n      - name: POD_NAME\n        valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}\n      - {{name: UNHEALTHY_DIR, value: /flags}}\n      volumes:\n      - name: flags\n        hostPath: {{path: {}}}\n      volumeMounts:\n      - {{name: flags, mountPath: /flags, readOnly: true}}\n      readinessProbe: {{httpGet: {{path: /healthz}}, periodSeconds: 1, failureThreshold: 1}}\n      livenessProbe: {{httpGet: {{path: /livez}}, periodSeconds: 1, failureThreshold: 2}}\n---\napiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: probed\nspec:\n  selector: {{app: probed}}\n  ports:\n  - {{name: http, port: {port}}}\n{extra_service}",
        flotilla_workloads::path("hello-http").display(),
        flags.display()
    )
}

/// The pods of Service `name` in its Endpoints, with their readiness.
fn endpoint_pods(c: &Cluster, name: &str) -> Vec<(String, bool)> {
    c.get_json("endpoints", name)
        .and_then(|e| {
            e["endpoints"].as_array().map(|l| {
                l.iter()
                    .map(|x| {
                        (
                            x["pod"].as_str().unwrap_or_default().to_string(),
                            x["ready"] == true,
                        )
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The most memory a process has held (its peak RSS), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn probes_affinity_host_names_and_large_bodies() {
    let mut c = Cluster::start("20s");
    let flags = c.path("flags");
    std::fs::create_dir_all(&flags).expect("flags dir");
    let flags_arg = flags.to_str().expect("utf8").to_string();
    let host_port = common::free_port().to_string();
    let tls_port = common::free_port().to_string();
    c.start_node_args(
        "n1",
        &[
            "--allow-host-path",
            &flags_arg,
            "--host-port",
            &host_port,
            "--host-tls-port",
            &tls_port,
        ],
    );
    c.start_node_args("n2", &["--allow-host-path", &flags_arg]);
    c.wait_node_ready("n1", "Ready", T);
    c.wait_node_ready("n2", "Ready", T);
    let port = common::free_port();
    let sticky_port = common::free_port();
    let sticky = format!("---\napiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: sticky\nspec:\n  selector: {{app: probed}}\n  sessionAffinity: ClientIP\n  hosts: [hello.test]\n  ports:\n  - {{name: http, port: {sticky_port}}}\n");
    apply(&c, "probed.yaml", &probed_hello(&flags, port, &sticky));
    let addr = format!("{}:{port}", c.proxy_address("n1"));
    wait_for("two ready endpoints", T, || {
        let e = endpoint_pods(&c, "probed");
        (e.len() == 2 && e.iter().all(|(_, r)| *r)).then_some(())
    });
    let pods: Vec<String> = endpoint_pods(&c, "probed")
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    wait_for("both pods answering", T, || {
        (pods_answering(&addr, 30).len() == 2).then_some(())
    });

    // Readiness fails: the pod leaves the endpoints and gets no traffic...
    std::fs::write(flags.join(&pods[0]), b"").expect("flag");
    wait_for("the flagged pod not ready", T, || {
        endpoint_pods(&c, "probed")
            .iter()
            .any(|(p, r)| *p == pods[0] && !r)
            .then_some(())
    });
    wait_for("traffic only to the ready pod", T, || {
        (pods_answering(&addr, 20) == BTreeSet::from([pods[1].clone()])).then_some(())
    });
    wait_for("an Unhealthy event for readiness", T, || {
        c.ok(&["get", "events"])
            .contains("readiness probe failed")
            .then_some(())
    });
    // ...and gets it again once it passes.
    std::fs::remove_file(flags.join(&pods[0])).expect("unflag");
    wait_for("both pods answering again", T, || {
        (pods_answering(&addr, 30).len() == 2).then_some(())
    });

    // Liveness fails: the program is restarted, with an event.
    std::fs::write(flags.join(format!("{}.dead", pods[1])), b"").expect("flag");
    wait_for("a restart for liveness", T, || {
        let restarts = c.get_json("pod", &pods[1])?["status"]["restartCount"].as_u64()?;
        (restarts >= 1).then_some(())
    });
    std::fs::remove_file(flags.join(format!("{}.dead", pods[1]))).expect("unflag");
    wait_for("an Unhealthy event for liveness", T, || {
        c.ok(&["get", "events"])
            .contains("liveness probe failed")
            .then_some(())
    });

    // ClientIP affinity: one client, one pod, through every node.
    let sticky_addr = format!("{}:{sticky_port}", c.proxy_address("n1"));
    wait_for("the sticky service answering", T, || {
        http(&sticky_addr, "GET", "/", b"").filter(|(s, _)| *s == 200)
    });
    wait_for("both pods ready again", T, || {
        let e = endpoint_pods(&c, "sticky");
        (e.len() == 2 && e.iter().all(|(_, r)| *r)).then_some(())
    });
    let seen = pods_answering(&sticky_addr, 20);
    assert_eq!(seen.len(), 1, "{seen:?}");
    let via_n2 = pods_answering(&format!("{}:{sticky_port}", c.proxy_address("n2")), 20);
    assert_eq!(via_n2, seen, "every node sends a client to the same pod");

    // Host routing: the shared port sends by Host header.
    let host_addr = format!("{}:{host_port}", c.proxy_address("n1"));
    let by_host = wait_for("host routing", T, || {
        let mut s = TcpStream::connect(&host_addr).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: hello.test\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains("200 OK").then_some(out)
    });
    assert!(by_host.contains("hello from probed-"), "{by_host}");
    let mut s = TcpStream::connect(&host_addr).expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nHost: nobody.test\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(
        out.starts_with("HTTP/1.0 404") || out.starts_with("HTTP/1.1 404"),
        "{out}"
    );

    // A large body crosses nodes streamed: n1's proxy to echo on n2 and back.
    // echo also takes the path /echo of secure.test, over TLS too.
    let echo_port = common::free_port();
    let echo = format!(
        "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: echo\n  labels: {{app: echo}}\nspec:\n  module: {}\n  restartPolicy: Always\n  nodeSelector: {{flotilla.dev/hostname: n2}}\n---\napiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: echo\nspec:\n  selector: {{app: echo}}\n  hosts: [secure.test/echo]\n  tls: {{secretName: secure-tls}}\n  ports:\n  - {{port: {echo_port}}}\n",
        flotilla_workloads::path("echo").display()
    );
    apply(&c, "echo.yaml", &echo);
    let echo_addr = format!("{}:{echo_port}", c.proxy_address("n1"));
    wait_for("echo answering", T, || {
        http(&echo_addr, "POST", "/", b"x").filter(|(s, _)| *s == 200)
    });
    let pid = c.node_pid("n1").expect("n1 runs");
    let pass = |mib: usize| {
        let body = vec![b'z'; mib << 20];
        let (status, back) = http(&echo_addr, "POST", "/big", &body).expect("echo answers");
        assert_eq!(status, 200);
        let (_, echoed) = back.split_once("\n\n").expect("head then body");
        assert_eq!(echoed.len(), body.len(), "the whole body came back");
    };
    // The node's peak memory after an 8 MiB body each way, then after a
    // 64 MiB one: a proxy that held bodies whole would peak at least 56 MiB
    // higher the second time; one that streams them stays put.
    pass(8);
    let small = peak_rss(pid);
    pass(64);
    let grown = peak_rss(pid).saturating_sub(small);
    assert!(
        grown < 24 << 20,
        "n1's peak grew by {grown} bytes from an 8 MiB to a 64 MiB body: bodies must stream"
    );

    tls_and_path_prefixes(
        &c,
        &host_addr,
        &format!("{}:{tls_port}", c.proxy_address("n1")),
    );
}

/// The host ports of n1 (`plain`, `tls`): a path prefix of a name goes to
/// its own Service; Services with `spec.tls` are served over TLS with the
/// certificate of their Secret, HTTP/2 included.
fn tls_and_path_prefixes(c: &Cluster, plain: &str, tls: &str) {
    // Plain HTTP: /echo of secure.test is echo's, the rest the secure Service's.
    let secure = "apiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: secure\nspec:\n  selector: {app: probed}\n  hosts: [secure.test]\n  tls: {secretName: secure-tls}\n  ports:\n  - {name: http, port: 30999}\n";
    apply(c, "secure.yaml", secure);
    let get = |path: &str| {
        let mut s = TcpStream::connect(plain).ok()?;
        let head = format!("GET {path} HTTP/1.0\r\nHost: secure.test\r\n\r\n");
        s.write_all(head.as_bytes()).ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains("200 OK").then_some(out)
    };
    let echoed = wait_for("/echo of secure.test to echo", T, || get("/echo/x?y=1"));
    assert!(echoed.contains("GET /echo/x?y=1"), "{echoed}");
    let root = wait_for("/ of secure.test to hello", T, || get("/"));
    assert!(root.contains("hello from probed-"), "{root}");

    // A key that is not the certificate's is refused before it is stored.
    let now = flotilla_api::time::Time::now();
    let validity = flotilla_api::identity::Validity::new(now, Duration::from_secs(86_400));
    let ca = flotilla_api::identity::ClusterCa::generate("tls-test").expect("ca");
    let issued = ca
        .issue_server(&["secure.test".to_string()], validity)
        .expect("certificate");
    let other = ca
        .issue_server(&["other.test".to_string()], validity)
        .expect("certificate");
    let file = |name: &str, text: &str| {
        let p = c.path(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().expect("utf8").to_string()
    };
    let (cert, key) = (
        file("tls.crt", &issued.cert_pem),
        file("tls.key", &issued.key_pem),
    );
    let wrong_key = file("other.key", &other.key_pem);
    let ca_file = file("ca.crt", &ca.key.cert_pem);
    let fail = |args: &[&str]| {
        let out = c.run(args);
        assert!(!out.status.success(), "{args:?} must fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = fail(&[
        "create",
        "secret",
        "tls",
        "secure-tls",
        "--cert",
        &cert,
        "--key",
        &wrong_key,
    ]);
    assert!(err.contains("not a usable pair"), "{err}");
    let garbage = "apiVersion: flotilla.dev/v1\nkind: Secret\nmetadata:\n  name: secure-tls\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: nonsense\n  tls.key: nonsense\n";
    let path = c.manifest("garbage-tls.yaml", garbage);
    let err = fail(&["apply", "-f", path.to_str().expect("utf8")]);
    assert!(err.contains("data.tls.crt"), "{err}");

    // With the Secret, HTTPS on the TLS host port, HTTP/2 by ALPN.
    c.ok(&[
        "create",
        "secret",
        "tls",
        "secure-tls",
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    let (ip, port) = tls.rsplit_once(':').expect("address");
    // curl over HTTP/2 to `name` at n1's TLS host port: whether it
    // succeeded, and its output with the HTTP version and status at the end.
    let curl = |name: &str, path: &str| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2", "--max-time", "10", "--cacert", &ca_file])
            .args(["--resolve", &format!("{name}:{port}:{ip}")])
            .args(["-w", "\n%{http_version} %{response_code}"])
            .arg(format!("https://{name}:{port}{path}"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), text)
    };
    let ok = |path: &str| Some(curl("secure.test", path).1).filter(|t| t.ends_with(" 200"));
    let hello = wait_for("HTTPS to secure.test", T, || ok("/"));
    assert!(hello.contains("hello from probed-"), "{hello}");
    assert!(hello.ends_with("\n2 200"), "HTTP/2 over TLS: {hello}");
    let echoed = ok("/echo/tls").expect("HTTPS to /echo");
    assert!(echoed.contains("/echo/tls"), "{echoed}");
    // A name no Service serves over TLS gets no certificate.
    let (succeeded, out) = curl("hello.test", "/");
    assert!(!succeeded, "no certificate for hello.test: {out}");
}

#[test]
fn tcp_services_forward_connections_to_command_pods_across_nodes() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.start_node("n2");
    c.wait_node_ready("n1", "Ready", T);
    c.wait_node_ready("n2", "Ready", T);
    let (port, target) = (common::free_port(), common::free_port());
    let manifest = format!(
        "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: lines\n  labels: {{app: lines}}\nspec:\n  module: {}\n  args: [serve, \"{target}\"]\n  restartPolicy: Always\n  nodeSelector: {{flotilla.dev/hostname: n2}}\n  network:\n    listen: [{{port: {target}}}]\n---\napiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: lines\nspec:\n  selector: {{app: lines}}\n  ports:\n  - {{port: {port}, targetPort: {target}}}\n",
        flotilla_workloads::path("sockets").display()
    );
    apply(&c, "lines.yaml", &manifest);
    wait_for("a ready endpoint", T, || {
        (ready_endpoints(&c, "lines") == 1).then_some(())
    });
    // Through n1 (over QUIC to n2) and through n2 (to its own pod).
    for node in ["n1", "n2"] {
        let addr = format!("{}:{port}", c.proxy_address(node));
        let got = wait_for(&format!("a TCP answer through {node}"), T, || {
            let mut s = TcpStream::connect(&addr).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            s.write_all(b"ping\nsecond line\n").ok()?;
            s.shutdown(std::net::Shutdown::Write).ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.contains("second line").then_some(out)
        });
        assert_eq!(
            got, "hello from lines\nping\nsecond line\n",
            "through {node}"
        );
    }
}
