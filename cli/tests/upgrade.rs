//! A node one release behind its master, and its upgrade in place
//! (docs/operations.md, "Upgrading a fleet"). The node of release 0.1.0,
//! built from this repository's history by `scripts/test.sh --slow` (the
//! 0.1.0 before device classes and precompiled code, the requests and node
//! fields this release added), joins a master of this release beside a node
//! of this release: both report their versions, the old one no engine
//! profile, so the master compiles nothing for it and it compiles its pods
//! itself while the new node loads the master's code. Then the old node is
//! stopped and started again from the same data directory with this
//! release's binary, as an upgrade does: it keeps its certificate (no
//! token), reports the new version and its engine, and runs the module
//! again from the code it compiled before the upgrade, compiling nothing.

mod common;

use common::Cluster;
use std::path::PathBuf;
use std::time::Duration;

fn previous_release() -> PathBuf {
    let bin = std::env::var_os("FLOTILLA_PREVIOUS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/previous/debug/flotilla")
        });
    assert!(
        bin.exists(),
        "{} is missing: scripts/test.sh --slow builds the previous release's node",
        bin.display()
    );
    bin
}

/// The `VERSION` column of `get nodes -o wide` for `node`.
fn version_column(c: &Cluster, node: &str) -> String {
    let wide = c.ok(&["get", "nodes", "-o", "wide"]);
    let mut lines = wide.lines();
    let header = lines.next().expect("header");
    let at = header.find("VERSION").expect("a VERSION column");
    let row = lines
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or_else(|| panic!("{node} missing from {wide}"));
    row.get(at..)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string()
}

#[test]
#[ignore = "needs the previous release's node (a build from history): run by scripts/test.sh --slow"]
fn previous_release_node_runs_pods_beside_this_release_and_upgrades_in_place() {
    let old = previous_release();
    let old = old.to_str().expect("utf8");
    let version = env!("CARGO_PKG_VERSION");
    let out = std::process::Command::new(old)
        .arg("--version")
        .output()
        .expect("the previous release");
    let old_version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(old_version, "flotilla 0.1.0", "the node one release behind");

    let wait = Duration::from_secs(60);
    let mut c = Cluster::start("30s");
    c.start_node("new");
    c.start_node_with("old", &[old]);
    c.wait_node_ready("new", "Ready", wait);
    c.wait_node_ready("old", "Ready", wait);
    assert_eq!(version_column(&c, "new"), version);
    assert_eq!(version_column(&c, "old"), "0.1.0");
    let node = c.get_json("node", "old").expect("node");
    let engine = &node["status"]["nodeInfo"]["engine"];
    assert!(
        engine["fingerprint"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
            && engine["code"]["target"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
        "0.1.0 reports no engine profile: {node}"
    );

    // The old node compiles for itself; the new one loads the master's code.
    let message = c.hello_on("old", wait);
    assert!(!message.contains("precompiled"), "{message}");
    assert!(c.ok(&["logs", "hello-old"]).contains("hello from flotilla"));
    // Options the old node does not know: said, not an empty answer.
    let out = c.run(&["logs", "hello-old", "--timestamps"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "node old closed the log stream without answering; a node of a release before 0.2.0 answers only"
        ),
        "{out:?}"
    );
    let message = c.hello_on("new", wait);
    assert!(message.contains("precompiled by the master"), "{message}");
    let records = c.code_records("hello");
    assert_eq!(
        records.len(),
        1,
        "code for the new node's engine only: {records:?}"
    );

    // The upgrade: the same node, data directory and name, the new binary.
    c.kill_node("old");
    c.start_node("old");
    wait_for_version(&c, "old", version, wait);
    let node = c.get_json("node", "old").expect("node");
    assert!(
        node["status"]["nodeInfo"]["engine"]["code"]["target"].is_string(),
        "the upgraded node reports its engine: {node}"
    );
    c.ok(&["delete", "pod", "hello-old"]);
    common::wait_for("hello-old to go", wait, || {
        c.get_json("pod", "hello-old").is_none().then_some(())
    });
    // The code 0.1.0 compiled and kept is this release's engine's too:
    // loaded from the node's cache, nothing compiled or fetched again.
    let message = c.hello_on("old", wait);
    assert!(message.contains("(cached)"), "{message}");
    assert!(c.ok(&["logs", "hello-old"]).contains("hello from flotilla"));
    let code = common::wait_for("old to report its code", wait, || {
        let code = c.get_json("node", "old")?["status"]["code"].clone();
        (code["cached"].as_u64().unwrap_or(0) >= 1).then_some(code)
    });
    assert_eq!(code["compiled"].as_u64().unwrap_or(0), 0, "{code}");
}

fn wait_for_version(c: &Cluster, node: &str, version: &str, timeout: Duration) {
    common::wait_for(&format!("{node} to report {version}"), timeout, || {
        let n = c.get_json("node", node)?;
        (n["status"]["nodeInfo"]["agentVersion"] == version && n["status"]["ready"] == "Ready")
            .then_some(())
    });
}
