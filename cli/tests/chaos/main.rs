//! Chaos tests of the replicated control plane with real processes:
//!
//! - three masters and two nodes, each in its own network namespace, while
//!   clients write and read registers through every master: the leader is
//!   killed with SIGKILL, then partitioned away, then a master's link gets
//!   delay and loss. Afterwards every acknowledged create is on every master,
//!   the recorded register history is linearizable, the nodes' pods run and
//!   the masters agree on one leader again.
//! - one master killed with SIGKILL twenty times in the middle of writes and
//!   restarted on the same data directory: it rejoins every time and ends
//!   with the same state as the others.
//!
//! Needs root (network namespaces); CI runs as root.

#[path = "../common/mod.rs"]
mod common;
mod fleet;
mod linearizable;
mod netns;
mod workload;

use common::wait_for;
use fleet::Fleet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use workload::{ClientRun, Record};

/// The chaos tests run one at a time: each loads both cores on its own.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sleeps in a test thread without blocking the clients' runtime.
async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Starts `count` clients spread over the masters.
fn start_clients(
    fleet: &Fleet,
    count: usize,
    module: &str,
    epoch: Instant,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<ClientRun>> {
    let (addrs, tls) = workload::admin_tls(&fleet.config);
    (0..count)
        .map(|id| {
            tokio::spawn(workload::run_client(
                id,
                addrs.clone(),
                id,
                tls.clone(),
                module.to_string(),
                epoch,
                stop.clone(),
            ))
        })
        .collect()
}

/// Stops the clients and gathers what they did.
async fn finish(
    clients: Vec<tokio::task::JoinHandle<ClientRun>>,
    stop: &Arc<AtomicBool>,
) -> (Vec<Record>, Vec<String>, usize) {
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    let mut created = Vec::new();
    let mut errors = 0;
    for c in clients {
        let run = c.await.expect("client task");
        records.extend(run.records);
        created.extend(run.created);
        errors += run.errors.len();
    }
    (records, created, errors)
}

/// Every master holds every acknowledged create (after it caught up).
async fn every_master_has(fleet: &Fleet, created: &[String]) {
    let (_, tls) = workload::admin_tls(&fleet.config);
    for addr in &fleet.addrs {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let pods = workload::pods_on(addr, tls.clone())
                .await
                .unwrap_or_default();
            let missing: Vec<&String> = created.iter().filter(|c| !pods.contains(c)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "master {addr} lacks {} acknowledged pods, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(5)]
            );
            pause(200).await;
        }
    }
}

/// Checks the register history and prints what was checked.
fn check_history(records: &[Record]) {
    let ops: Vec<linearizable::Op> = records.iter().map(to_op).collect();
    let acknowledged = records
        .iter()
        .filter(|r| matches!(r.result, workload::Result_::Ok(_)))
        .count();
    let report = linearizable::check(&ops);
    eprintln!(
        "history: {} operations ({acknowledged} acknowledged) on {} registers: {:?}",
        report.ops, report.keys, report.verdict
    );
    assert!(
        acknowledged > 50,
        "too few operations succeeded to say anything ({acknowledged})"
    );
    match report.verdict {
        linearizable::Verdict::Linearizable => {}
        other => panic!("the register history is not linearizable: {other:?}"),
    }
}

fn to_op(r: &Record) -> linearizable::Op {
    use linearizable::{Op, OpKind, Outcome};
    use workload::{Action, Result_};
    let kind = match r.action {
        Action::Write(v) => OpKind::Write { value: v },
        Action::Read => OpKind::Read,
    };
    let (complete, outcome) = match (&r.result, &r.action) {
        (Result_::Ok(v), Action::Read) => (Some(r.complete), Outcome::Ok { read: *v }),
        (Result_::Ok(_), Action::Write(_)) => (Some(r.complete), Outcome::Ok { read: None }),
        (Result_::Failed, _) => (Some(r.complete), Outcome::Failed),
        (Result_::Unknown, _) => (None, Outcome::Unknown),
    };
    Op {
        client: r.client,
        key: r.key.clone(),
        kind,
        invoke: r.invoke,
        complete,
        outcome,
    }
}

/// The module the registers name: the ticker's, uploaded by applying pods.
fn ticker_digest() -> String {
    let bytes = std::fs::read(flotilla_workloads::path("ticker")).expect("ticker module");
    flotilla_api::objects::digest_of(&bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_masters_in_namespaces_survive_kill_partition_and_loss() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::netns(3, 2);
    fleet.start_all();
    fleet.start_node("edge-a", 3);
    fleet.start_node("edge-b", 4);
    for n in ["edge-a", "edge-b"] {
        wait_for(&format!("node {n} Ready"), Duration::from_secs(60), || {
            let out = fleet.cli(&["get", "node", n, "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["status"]["ready"] == "Ready").then_some(())
        });
    }
    let pods = format!(
        "{}---\n{}",
        common::pod_yaml("tick-a", "ticker", &[], "Always", ""),
        common::pod_yaml("tick-b", "ticker", &[], "Always", "")
    );
    let manifest = fleet.path("ticks.yaml");
    std::fs::write(&manifest, pods).expect("manifest");
    fleet.ok(&["apply", "-f", manifest.to_str().expect("path")]);
    let module = ticker_digest();
    let (addrs, tls) = workload::admin_tls(&fleet.config);
    workload::create_registers(&addrs, tls, &module).await;

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_clients(&fleet, 6, &module, epoch, &stop);
    pause(2000).await;

    // 1. The leader dies without a word, and comes back.
    let leader = fleet.leader();
    eprintln!("killing the leader, master {}", leader + 1);
    fleet.kill_master(leader);
    pause(3000).await;
    fleet.restart_master(leader);
    pause(2000).await;

    // 2. The (new) leader is cut off from everyone, then the link heals.
    let leader = fleet.leader();
    eprintln!("partitioning the leader, master {}", leader + 1);
    fleet.net.as_ref().expect("netns").cut(leader);
    pause(4000).await;
    fleet.net.as_ref().expect("netns").heal(leader);
    pause(2000).await;

    // 3. A follower's link gets slow and lossy.
    let leader = fleet.leader();
    let slow = (leader + 1) % 3;
    let how = fleet.net.as_ref().expect("netns").degrade(slow, 30, 5);
    eprintln!("slow, lossy link on master {}: {how}", slow + 1);
    pause(3000).await;
    fleet.net.as_ref().expect("netns").restore(slow);
    pause(1000).await;

    let (records, created, errors) = finish(clients, &stop).await;
    eprintln!(
        "{} register operations, {} creates acknowledged, {errors} errors seen by clients",
        records.len(),
        created.len()
    );
    fleet.wait_voters(3);
    every_master_has(&fleet, &created).await;
    check_history(&records);
    // The nodes' pods ran through it all and still run, and their logs
    // come through every master, whichever one the node is connected to.
    for p in ["tick-a", "tick-b"] {
        wait_for(&format!("pod {p} Running"), Duration::from_secs(60), || {
            let out = fleet.cli(&["get", "pod", p, "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["status"]["phase"] == "Running").then_some(())
        });
        for m in 0..3 {
            let config = single_master_config(&fleet, m);
            wait_for(
                &format!("logs of {p} through master {}", m + 1),
                Duration::from_secs(30),
                || {
                    let out = common::run_flotilla(&["logs", p, "--tail", "2"], &config);
                    String::from_utf8_lossy(&out.stdout)
                        .contains("tick ")
                        .then_some(())
                },
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_master_killed_twenty_times_rejoins_with_the_same_state() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::loopback(3);
    fleet.start_all();
    // The joined masters dropped their "still joining" marker: a restart
    // without flags is a plain restart of a member.
    for m in ["m1", "m2"] {
        wait_for(
            &format!("{m} done joining"),
            Duration::from_secs(30),
            || (!fleet.path(m).join("joining").exists()).then_some(()),
        );
    }
    let manifest = fleet.path("tick.yaml");
    std::fs::write(
        &manifest,
        common::pod_yaml("tick", "ticker", &[], "Never", ""),
    )
    .expect("manifest");
    fleet.ok(&["apply", "-f", manifest.to_str().expect("path")]);
    let module = ticker_digest();
    let (addrs, tls) = workload::admin_tls(&fleet.config);
    workload::create_registers(&addrs, tls.clone(), &module).await;

    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = start_clients(&fleet, 4, &module, epoch, &stop);
    // Master 3 (index 2), whether it leads or not at the time.
    for round in 0..20 {
        pause(300 + (round % 4) * 150).await;
        fleet.kill_master(2);
        pause(100 + (round % 3) * 200).await;
        fleet.restart_master(2);
        // It answers again before the next kill.
        wait_for("master 3 answers", Duration::from_secs(30), || {
            let out = common::run_flotilla(
                &["get", "pods", "--stale"],
                &single_master_config(&fleet, 2),
            );
            out.status.success().then_some(())
        });
    }
    let (records, created, _) = finish(clients, &stop).await;
    fleet.wait_voters(3);
    every_master_has(&fleet, &created).await;
    check_history(&records);
    // Every master ends with the same objects at the same revision (once the
    // last writes, e.g. the binder's, have reached all of them).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut views = Vec::new();
        for addr in &fleet.addrs {
            views.push(pods_and_revision(addr, tls.clone()).await);
        }
        if views.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the masters disagree after the restarts: {:?}",
            views.iter().map(|(r, p)| (r, p.len())).collect::<Vec<_>>()
        );
        pause(200).await;
    }
    let log = fleet.log_text("m2");
    assert!(!log.contains("panicked"), "master 3 panicked:\n{log}");
    // The masters compare state hashes when master 3 restarts (and every
    // minute): the same entries must have given the same state every time.
    for m in ["m0", "m1", "m2"] {
        let log = fleet.log_text(m);
        assert!(
            !log.contains("refuses reads") && !log.contains("differs from the other masters"),
            "a state hash alarm on {m}:\n{log}"
        );
    }
    // A master that is down shows as such in `cluster status`, not as a
    // follower with a lag.
    fleet.kill_master(2);
    let status = fleet.ok(&["cluster", "status"]);
    let row = status
        .lines()
        .find(|l| l.starts_with("3 "))
        .unwrap_or_else(|| panic!("no row for master 3:\n{status}"));
    assert!(row.contains("unreachable"), "{status}");
    fleet.restart_master(2);
    wait_for("master 3 answers again", Duration::from_secs(30), || {
        let out = common::run_flotilla(
            &["get", "pods", "--stale"],
            &single_master_config(&fleet, 2),
        );
        out.status.success().then_some(())
    });
    // The operator takes master 3 out: it stops by itself, saying why, and
    // the other two go on.
    let out = fleet.ok(&["cluster", "remove", "3"]);
    assert!(out.contains("master 3 removed"), "{out}");
    let status = fleet.wait_exit(2, Duration::from_secs(20));
    assert!(!status.success(), "a removed master exits with an error");
    let log = fleet.log_text("m2");
    assert!(
        log.contains("master 3 was removed from the cluster"),
        "master 3 does not say why it stopped:\n{log}"
    );
    fleet.wait_voters(2);
    fleet.ok(&["delete", "pod", "tick"]);
    // Then the leader itself: it stops too, and the one master left leads
    // alone and takes writes.
    let leader = fleet.leader();
    let out = fleet.ok(&["cluster", "remove", &(leader + 1).to_string()]);
    assert!(out.contains("removed"), "{out}");
    let status = fleet.wait_exit(leader, Duration::from_secs(20));
    assert!(!status.success(), "a removed leader exits with an error");
    let left = 1 - leader;
    assert_eq!(fleet.leader(), left, "the remaining master leads");
    fleet.wait_voters(1);
    fleet.ok(&["token", "create"]);
    let out = fleet.cli(&["cluster", "remove", "3"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a member"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One master's own copy: its revision and every pod with its resourceVersion.
async fn pods_and_revision(addr: &str, tls: rustls::ClientConfig) -> (u64, Vec<(String, u64)>) {
    let c = flotilla_api::net::Client::connect(&[addr.to_string()], tls, "check")
        .await
        .expect("connect");
    let req = flotilla_api::protocol::Request::List(flotilla_api::protocol::ListOptions {
        kind: Some(flotilla_api::Kind::Pod),
        stale: true,
        ..Default::default()
    });
    match c.call(&req).await.expect("list") {
        flotilla_api::protocol::Response::List { revision, items } => {
            let mut pods: Vec<(String, u64)> = items
                .iter()
                .map(|o| (o.meta().name.clone(), o.meta().resource_version))
                .collect();
            pods.sort();
            (revision, pods)
        }
        other => panic!("{other:?}"),
    }
}

/// A config naming only master `i`, to ask that one and no other.
fn single_master_config(fleet: &Fleet, i: usize) -> std::path::PathBuf {
    let path = fleet.path(&format!("config-m{i}"));
    if !path.exists() {
        let text = std::fs::read_to_string(&fleet.config).expect("config");
        let mut cfg = flotilla_api::config::ClientConfigFile::parse(&text).expect("parses");
        cfg.masters = vec![fleet.addrs[i].clone()];
        std::fs::write(&path, cfg.render()).expect("config");
    }
    path
}

/// The digest of a sample module, as the master names it.
fn digest_of(workload: &str) -> String {
    use sha2::Digest;
    let bytes = std::fs::read(flotilla_workloads::path(workload)).expect("module");
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)))
}

/// A Deployment of the `version` sample at `release`, rolling one pod at a time.
fn version_deployment(replicas: u32, release: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  minReadySeconds: 1
  strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      module: {}
      restartPolicy: Always
      resources: {{limits: {{memory: 32Mi}}}}
",
        flotilla_workloads::path(&format!("version-{release}")).display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_leader_killed_mid_rollout_the_new_leader_finishes_it_without_extra_pods() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::loopback(3);
    fleet.start_all();
    fleet.start_node("n1", 0);
    fleet.start_node("n2", 0);
    wait_for("two ready nodes", Duration::from_secs(60), || {
        let out = fleet.ok(&["get", "nodes"]);
        (out.matches(" Ready ").count() == 2).then_some(())
    });
    let manifest = fleet.path("web.yaml");
    std::fs::write(&manifest, version_deployment(6, "v1")).expect("manifest");
    let apply = |fleet: &Fleet| fleet.ok(&["apply", "-f", manifest.to_str().expect("path")]);
    apply(&fleet);
    let done = |fleet: &Fleet| {
        fleet
            .cli(&["rollout", "status", "deployment/web", "--timeout", "120s"])
            .status
            .success()
    };
    assert!(done(&fleet), "v1 rolled out");

    // Every pod event, as a master that stays up serves them.
    let leader = fleet.leader();
    let watcher_master = (leader + 1) % 3;
    let mut watch = std::process::Command::new(common::BIN)
        .args(["get", "pods", "-l", "app=web", "-w", "-o", "json"])
        .env(
            "FLOTILLA_CONFIG",
            single_master_config(&fleet, watcher_master),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("watch");

    std::fs::write(&manifest, version_deployment(6, "v2")).expect("manifest");
    apply(&fleet);
    let v2 = digest_of("version-v2");
    // Kill the leader once the rollout has started (the new set has pods).
    wait_for("the rollout to start", Duration::from_secs(60), || {
        let out = fleet.ok(&["get", "pods", "-l", "app=web", "-o", "json"]);
        (out.matches(v2.as_str()).count() >= 2).then_some(())
    });
    fleet.kill_master(leader);
    assert!(done(&fleet), "the new leader finished the rollout");
    let out = fleet.ok(&["get", "pods", "-l", "app=web", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let pods = v["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(pods.len(), 6, "{out}");
    assert!(pods.iter().all(|p| p["spec"]["module"] == v2.as_str()));

    let _ = watch.kill();
    let output = watch.wait_with_output().expect("watch output");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut names: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for value in serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>() {
        let Ok(value) = value else { break };
        let objects = match value.get("items") {
            Some(items) => items.as_array().cloned().unwrap_or_default(),
            None => vec![value],
        };
        for p in objects {
            names
                .entry(p["spec"]["module"].as_str().unwrap_or_default().to_string())
                .or_default()
                .insert(
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
        }
    }
    let made = names.get(&v2).map(|s| s.len()).unwrap_or(0);
    assert_eq!(
        made, 6,
        "each new replica made once across the change of leader: {names:?}"
    );
    let old = names
        .get(&digest_of("version-v1"))
        .map(|s| s.len())
        .unwrap_or(0);
    assert_eq!(old, 6, "no old replica made again: {names:?}");
    fleet.restart_master(leader);
    fleet.wait_voters(3);
}

/// A user revoked through one master is refused by every master, also by
/// one that was down when the revocation was written and catches up after.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_a_revoked_user_is_refused_by_every_master() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut fleet = Fleet::loopback(3);
    fleet.start_all();
    let alice = fleet.path("alice.config");
    fleet.ok(&[
        "user",
        "create",
        "alice",
        "--role",
        "viewer",
        "-o",
        alice.to_str().expect("path"),
    ]);
    // Alice's config, asking master `i` only.
    let alice_at = |i: usize| {
        let path = fleet.path(&format!("alice-m{i}"));
        let text = std::fs::read_to_string(&alice).expect("config");
        let mut cfg = flotilla_api::config::ClientConfigFile::parse(&text).expect("parses");
        cfg.masters = vec![fleet.addrs[i].clone()];
        std::fs::write(&path, cfg.render()).expect("config");
        path
    };
    let configs: Vec<_> = (0..3).map(alice_at).collect();
    let answer = |i: usize| common::run_flotilla(&["get", "nodes"], &configs[i]);
    for i in 0..3 {
        // A master that has not applied the User yet says it does not exist.
        wait_for(
            &format!("master {i} to know alice"),
            Duration::from_secs(30),
            || answer(i).status.success().then_some(()),
        );
    }
    let down = (fleet.leader() + 1) % 3;
    fleet.kill_master(down);
    fleet.ok(&["user", "revoke", "alice"]);
    fleet.restart_master(down);
    for i in 0..3 {
        let err = wait_for(
            &format!("master {i} to refuse alice"),
            Duration::from_secs(60),
            || {
                let out = answer(i);
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                (!out.status.success() && err.contains("user alice was revoked at")).then_some(err)
            },
        );
        assert!(err.contains("(Unauthenticated)"), "master {i}: {err}");
    }
}
