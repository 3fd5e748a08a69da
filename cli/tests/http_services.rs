//! HTTP Services end to end: the real `flotilla` binary as master and three
//! nodes, each node's proxy on a loopback address of its own. Requests to
//! any node's Service port reach every pod, in-process or across nodes over
//! QUIC, and keep flowing when a node dies or every master is down.

mod common;

use common::{wait_for, Cluster};
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

/// One HTTP/1.0 request (so the answer ends with the connection): the
/// status and body, or None if no answer came.
fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
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
