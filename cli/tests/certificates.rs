//! Certificate lifetimes and renewal, with the real binary and a faked wall
//! clock (libfaketime): a cluster started today keeps working after the
//! next 1 January and after its first certificates have expired, because
//! the master and the node renew theirs by themselves and a user renews
//! with `flotilla config renew`.

mod common;

use common::{faketime, wait_for, Cluster};
use flotilla_api::identity::Validity;
use flotilla_api::time::Time;
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);
const DAY_MS: i64 = 86_400_000;

fn cert_of(file: &Path) -> Validity {
    let text = std::fs::read_to_string(file).expect("read");
    let pem = if text.contains("certPem") {
        flotilla_api::config::ClientConfigFile::parse(&text)
            .expect("config")
            .cert_pem
    } else {
        text
    };
    Validity::of_pem(&pem).expect("certificate")
}

/// Restarts the master and node `n1` with the wall clock at `at`, and waits
/// until the node is Ready and its pod's logs come through the master.
fn restart_at(c: &mut Cluster, at: Time) {
    c.kill_node("n1");
    c.kill_master();
    c.fake_time = Some(faketime(at));
    c.start_master();
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    wait_for("ticker's logs through the master", T, || {
        let out = c.run(&["logs", "ticker", "--tail", "1"]);
        (out.status.success() && !out.stdout.is_empty()).then_some(())
    });
}

#[test]
fn a_cluster_outlives_its_first_certificates() {
    let mut c = Cluster::with_ticker("20s");

    let today = Time::now();
    let creds = c.path("n1").join("credentials.yaml");
    let serving = c.path("master").join("pki").join("master.crt");
    let first_node = cert_of(&creds);
    let first_admin = cert_of(&c.config);
    let first_serving = cert_of(&serving);
    // A year from the issue, not 1 January.
    for v in [first_node, first_admin, first_serving] {
        assert!(
            (v.not_after.since(today) - 365 * DAY_MS).abs() < DAY_MS,
            "{v:?}"
        );
    }

    // The day after the next 1 January: nothing has expired, nothing is renewed yet.
    let year: i64 = today.to_string()[..4].parse().expect("year");
    let jan2 = Time::parse_rfc3339(&format!("{}-01-02T12:00:00Z", year + 1)).expect("time");
    restart_at(&mut c, jan2);
    let wide = c.ok(&["get", "nodes", "-o", "wide"]);
    assert!(wide.contains("CERT-EXPIRES"), "{wide}");
    assert!(
        wide.contains(&first_node.not_after.to_string()[..10]),
        "{wide}"
    );
    let status = c.ok(&["cluster", "status"]);
    for row in ["cluster CA", "master 1 serving", "this client (admin)"] {
        assert!(status.contains(row), "{status}");
    }
    // A user renews by hand: a new key, a certificate a year from (faked) now.
    let out = c.ok(&["config", "renew"]);
    assert!(out.contains("renewed the certificate of admin"), "{out}");
    let renewed_admin = cert_of(&c.config);
    assert!(
        (renewed_admin.not_after.since(jan2) - 365 * DAY_MS).abs() < DAY_MS,
        "{renewed_admin:?}"
    );
    assert!(c.ok(&["config", "view"]).contains("identity: admin"));
    assert_eq!(cert_of(&creds), first_node, "renewed before it was due");

    // Three hundred days in, renewal is due (two thirds of a year): the node
    // renews over its connection, the master renews its own at start-up.
    let due = Time(today.0 + 300 * DAY_MS);
    restart_at(&mut c, due);
    let renewed_node = wait_for("the node to renew its certificate", T, || {
        let v = cert_of(&creds);
        (v.not_after > first_node.not_after).then_some(v)
    });
    assert!(
        (renewed_node.not_after.since(due) - 365 * DAY_MS).abs() < DAY_MS,
        "{renewed_node:?}"
    );
    assert!(cert_of(&serving).not_after > first_serving.not_after);
    assert!(c.node_log("n1").contains("renewed this node's certificate"));
    wait_for("the node's new expiry in get nodes -o wide", T, || {
        c.ok(&["get", "nodes", "-o", "wide"])
            .contains(&renewed_node.not_after.to_string()[..10])
            .then_some(())
    });

    // Past the first certificates' expiry: the renewed ones carry the cluster.
    let later = Time(today.0 + 375 * DAY_MS);
    assert!(first_node.expired(later) && first_serving.expired(later));
    restart_at(&mut c, later);
    assert!(c.ok(&["get", "pods"]).contains("Running"));
}

#[test]
fn an_expired_client_certificate_is_refused_with_advice() {
    let mut c = Cluster::start("20s");
    let first_admin = cert_of(&c.config);
    // The CLI alone runs two years ahead: its certificate has expired.
    c.fake_time = Some(faketime(Time(first_admin.not_after.0 + 30 * DAY_MS)));
    let out = c.run(&["get", "nodes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired on"), "{err}");
    // A week before expiry, the CLI warns and says what to run.
    c.fake_time = Some(faketime(Time(first_admin.not_after.0 - 7 * DAY_MS)));
    let out = c.run(&["config", "view"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("flotilla config renew"), "{err}");
}
