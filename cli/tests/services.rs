//! Services end to end: the real `flotilla` binary as master and nodes on
//! loopback. A Service's Endpoints follow its pods (bound, ready, gone) and
//! go with it.

mod common;

use common::{wait_for, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn apply(c: &Cluster, file: &str, text: &str) -> String {
    let path = c.manifest(file, text);
    c.ok(&["apply", "-f", path.to_str().expect("utf8")])
}

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        "apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      module: {}\n      restartPolicy: Always\n      resources:\n        limits: {{memory: 32Mi}}\n",
        flotilla_workloads::path("version-v1").display()
    )
}

/// (pod, node, ready) of the Endpoints `name`, sorted by pod.
fn endpoints(c: &Cluster, name: &str) -> Option<Vec<(String, String, bool)>> {
    let e = c.get_json("endpoints", name)?;
    Some(
        e["endpoints"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|x| {
                        (
                            x["pod"].as_str().unwrap_or_default().to_string(),
                            x["node"].as_str().unwrap_or_default().to_string(),
                            x["ready"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

#[test]
fn a_services_endpoints_follow_its_ready_pods_and_go_with_it() {
    let mut c = Cluster::start("20s");
    c.start_node("n1");
    c.start_node("n2");
    c.wait_node_ready("n1", "Ready", T);
    c.wait_node_ready("n2", "Ready", T);

    let svc = "apiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports:\n  - {name: http, port: 18080, targetPort: 80}\n";
    assert!(apply(&c, "svc.yaml", svc).contains("service/web created"));
    // No pod yet: Endpoints with none.
    wait_for("empty endpoints", T, || {
        endpoints(&c, "web").filter(|e| e.is_empty()).map(|_| ())
    });
    apply(&c, "web.yaml", &deployment("web", 3));
    let three = wait_for("three ready endpoints", T, || {
        endpoints(&c, "web").filter(|e| e.len() == 3 && e.iter().all(|(_, _, r)| *r))
    });
    for (pod, node, _) in &three {
        let bound = c
            .get_json("pod", pod)
            .and_then(|p| p["spec"]["nodeName"].as_str().map(String::from));
        assert_eq!(bound.as_deref(), Some(node.as_str()), "{pod}");
    }
    let table = c.ok(&["get", "svc"]);
    assert!(
        table.contains("18080:80/TCP") && table.contains("app=web"),
        "{table}"
    );
    let table = c.ok(&["get", "ep"]);
    assert!(
        table.contains(&format!("{}@{}", three[0].0, three[0].1)),
        "{table}"
    );
    let described = c.ok(&["describe", "service", "web"]);
    assert!(
        described.contains("Endpoints:  3 ready of 3"),
        "{described}"
    );

    // A pod that goes is replaced, and the Endpoints follow.
    c.ok(&["delete", "pod", &three[0].0]);
    wait_for("the replacement in the endpoints", T, || {
        endpoints(&c, "web")
            .filter(|e| e.len() == 3 && e.iter().all(|(p, _, r)| *r && *p != three[0].0))
    });
    // Scaled down: one left.
    c.ok(&["scale", "deployment", "web", "--replicas", "1"]);
    wait_for("one endpoint", T, || {
        endpoints(&c, "web").filter(|e| e.len() == 1).map(|_| ())
    });

    // expose makes a Service from the Deployment's selector.
    let out = c.ok(&[
        "expose",
        "deployment",
        "web",
        "--port",
        "18081",
        "--name",
        "web-alt",
    ]);
    assert!(out.contains("service/web-alt exposed"), "{out}");
    wait_for("the exposed service's endpoint", T, || {
        endpoints(&c, "web-alt")
            .filter(|e| e.len() == 1 && e[0].2)
            .map(|_| ())
    });
    let out = c.run(&["expose", "deployment", "nothing", "--port", "18082"]);
    assert!(!out.status.success());

    // A bad Service is refused, saying what to write.
    let bad =
        "apiVersion: flotilla.dev/v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports: [{port: 0}]\n";
    let out = c.run(&[
        "apply",
        "-f",
        c.manifest("bad.yaml", bad).to_str().expect("utf8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("spec.selector")
            && err.contains("spec.ports[0].port"),
        "{err}"
    );

    // The Endpoints go with their Service.
    c.ok(&["delete", "service", "web"]);
    wait_for("the endpoints to be collected", T, || {
        endpoints(&c, "web").is_none().then_some(())
    });
}
