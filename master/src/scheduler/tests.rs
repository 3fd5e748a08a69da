//! Batch decisions: whole batches as data (nodes, pending pods) → the
//! decisions in the order made.

use super::fixtures::*;
use super::*;
use flotilla_api::objects::scheduling::UnsatisfiableConstraintAction::*;
use flotilla_api::objects::PodPhase;

/// A decision in one line: `p -> a`, `p preempts [v] on a`, `p: message`.
fn show(d: &Decision) -> String {
    match d {
        Decision::Bind { pod, node } => format!("{} -> {node}", pod.name),
        Decision::Preempt { pod, node, victims } => {
            let v: Vec<&str> = victims.iter().map(|v| v.name.as_str()).collect();
            format!("{} preempts [{}] on {node}", pod.name, v.join(", "))
        }
        Decision::Unschedulable { pod, message } => format!("{}: {message}", pod.name),
    }
}

#[test]
fn pods_that_come_one_at_a_time_take_turns_among_tied_nodes() {
    let mut snapshot = Snapshot {
        nodes: ["a", "b", "c"].map(|n| node(n).state()).to_vec(),
        ..Snapshot::default()
    };
    let mut placed = Vec::new();
    for i in 0..4 {
        // Each pod alone in its batch, and gone (ended) before the next:
        // every node is idle again, all tie.
        let p = pod(&format!("p{i}")).build();
        let mut fresh = Snapshot {
            nodes: snapshot.nodes.clone(),
            turn: snapshot.turn,
            ..Snapshot::default()
        };
        for d in schedule(std::slice::from_ref(&p), &mut fresh) {
            placed.push(show(&d));
        }
        snapshot.turn = fresh.turn;
    }
    assert_eq!(placed, ["p0 -> a", "p1 -> b", "p2 -> c", "p3 -> a"]);
}

#[test]
fn batch_cases() {
    let p400 = |n: &str| pod(n).mem("400Mi");
    let p600 = |n: &str| pod(n).mem("600Mi");
    let web = |n: &str| pod(n).label("app", "web");
    let zone = |n: &str, z: &str| node(n).label("zone", z);
    // (name, nodes, pending pods, decisions in the order made)
    type Case<'a> = (&'a str, Vec<NodeB>, Vec<PodB>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "earlier placements count: 2+1, not 3 on one",
            vec![node("a"), node("b")],
            vec![
                p400("p1").created(1),
                p400("p2").created(2),
                p400("p3").created(3),
            ],
            vec!["p1 -> a", "p2 -> b", "p3 -> a"],
        ),
        (
            "pods without requests spread too, the module's nodes first",
            vec![
                node("a").modules(&["m"]),
                node("b").modules(&["m"]),
                node("c"),
            ],
            (1..=4)
                .map(|i| pod(&format!("p{i}")).module("m").created(i))
                .collect(),
            vec!["p1 -> a", "p2 -> b", "p3 -> a", "p4 -> b"],
        ),
        (
            "never two pods into one node's last free memory",
            vec![node("a"), node("b")],
            vec![
                p600("p1").created(1),
                p600("p2").created(2),
                p600("p3").created(3),
            ],
            vec![
                "p1 -> a",
                "p2 -> b",
                "p3: 0/2 nodes are available: 2 Insufficient memory.",
            ],
        ),
        (
            "highest priority first, whatever the order given",
            vec![node("a")],
            vec![p600("low").created(1), p600("high").priority(10).created(2)],
            vec![
                "high -> a",
                "low: 0/1 nodes are available: 1 Insufficient memory.",
            ],
        ),
        (
            "then the oldest, then the name",
            vec![node("a")],
            vec![
                p600("young").created(5),
                p600("b-old").created(1),
                p600("a-old").created(1),
            ],
            vec![
                "a-old -> a",
                "b-old: 0/1 nodes are available: 1 Insufficient memory.",
                "young: 0/1 nodes are available: 1 Insufficient memory.",
            ],
        ),
        (
            "bound pods are skipped",
            vec![node("a")],
            vec![pod("done").bound("a"), pod("p")],
            vec!["p -> a"],
        ),
        (
            "no nodes",
            vec![],
            vec![pod("p")],
            vec![
                "p: 0/0 nodes are available: no nodes have joined the cluster; create a join \
                 token with `flotilla token create`, then start a node with \
                 `flotilla node --master <HOST:PORT> --token <TOKEN>`",
            ],
        ),
        (
            "reasons from every node",
            vec![
                node("a").not_ready(),
                node("b").label("disk", "hdd"),
                node("c").label("disk", "ssd").running(p600("q")),
                node("d").label("disk", "ssd").cordoned(),
            ],
            vec![p600("p").selector("disk", "ssd")],
            vec![
                "p: 0/4 nodes are available: 1 Insufficient memory, \
                 1 node(s) didn't match Pod's node affinity/selector, \
                 1 node(s) were not ready, 1 node(s) were unschedulable.",
            ],
        ),
        (
            "replicas spread even where the module is cached",
            vec![node("a").modules(&["sha256:m"]), node("b"), node("c")],
            (1..=3)
                .map(|i| {
                    pod(&format!("r{i}"))
                        .owner("rs")
                        .module("sha256:m")
                        .created(i)
                })
                .collect(),
            vec!["r1 -> a", "r2 -> b", "r3 -> c"],
        ),
        (
            "hard spread over zones",
            vec![zone("a1", "1"), zone("a2", "1"), zone("b1", "2")],
            (1..=4)
                .map(|i| {
                    web(&format!("w{i}")).mem("100Mi").created(i).spread(
                        "zone",
                        1,
                        DoNotSchedule,
                        &[("app", "web")],
                    )
                })
                .collect(),
            vec!["w1 -> a1", "w2 -> b1", "w3 -> a2", "w4 -> b1"],
        ),
        (
            "preempts lower priority",
            vec![node("a").running(pod("low").mem("900Mi"))],
            vec![p600("high").priority(100)],
            vec!["high preempts [low] on a"],
        ),
        (
            "Never waits instead",
            vec![node("a").running(pod("low").mem("900Mi"))],
            vec![p600("high").priority(100).never_preempt()],
            vec!["high: 0/1 nodes are available: 1 Insufficient memory."],
        ),
        (
            // Without victims h2 would preempt low too, and tiny would fit
            // beside h1's room.
            "victims still count, and are not picked twice",
            vec![node("a")
                .capacity("1", "2Gi")
                .running(pod("low").mem("1900Mi"))],
            vec![
                p600("h1").priority(100).created(1),
                p600("h2").priority(100).created(2),
                pod("tiny").mem("100Mi").created(3),
            ],
            vec![
                "h1 preempts [low] on a",
                "h2: 0/1 nodes are available: 1 Insufficient memory.",
                "tiny: 0/1 nodes are available: 1 Insufficient memory.",
            ],
        ),
        (
            "the room of a nominated pod outside the batch is kept from lower priorities",
            vec![node("a").nominated(p600("n").priority(100))],
            vec![
                p600("low").priority(10).created(1),
                p600("higher").priority(200).created(2),
            ],
            vec![
                "higher -> a",
                "low: 0/1 nodes are available: 1 Insufficient memory.",
            ],
        ),
        (
            "a nominated pod waits for its victims",
            vec![node("a")
                .running_terminating(pod("low").mem("900Mi"))
                .running(pod("other").mem("100Mi"))],
            vec![p600("high").priority(100).nominated("a")],
            vec![
                "high: 0/1 nodes are available: 1 Insufficient memory. \
                 Waiting for preempted pods to stop on node a.",
            ],
        ),
        (
            "a nominated pod binds once its victims are gone",
            vec![node("a").running(pod("other").mem("100Mi"))],
            vec![p600("high").priority(100).nominated("a")],
            vec!["high -> a"],
        ),
    ];
    for (name, nodes, pending, want) in cases {
        let pending: Vec<Pod> = pending.into_iter().map(PodB::build).collect();
        let mut snapshot = Snapshot {
            nodes: nodes.into_iter().map(NodeB::state).collect(),
            ..Snapshot::default()
        };
        let got: Vec<String> = schedule(&pending, &mut snapshot).iter().map(show).collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn nominations_follow_decisions() {
    // n is nominated to a but fits on b; p may only go to c, by preempting.
    let mut snapshot = Snapshot {
        nodes: vec![
            node("a")
                .running(pod("x").mem("900Mi"))
                .nominated(pod("n").priority(50).mem("600Mi"))
                .state(),
            node("b").state(),
            node("c").running(pod("v").mem("900Mi")).state(),
        ],
        ..Snapshot::default()
    };
    let pending = vec![
        pod("n").priority(50).mem("600Mi").nominated("a").build(),
        pod("p")
            .priority(100)
            .mem("600Mi")
            .selector(flotilla_api::labels::HOSTNAME, "c")
            .build(),
    ];
    let got: Vec<String> = schedule(&pending, &mut snapshot).iter().map(show).collect();
    assert_eq!(got, ["p preempts [v] on c", "n -> b"]);
    let nominated: Vec<Vec<&str>> = snapshot
        .nodes
        .iter()
        .map(|n| n.nominated.iter().map(|p| p.name.as_str()).collect())
        .collect();
    assert_eq!(nominated, [vec![], vec![], vec!["p"]]);
    assert!(snapshot.nodes[2].pods.iter().all(|p| p.terminating));
    let bound: Vec<&str> = snapshot.nodes[1]
        .pods
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(bound, ["n"]);
}

#[test]
fn bindings_are_applied_to_the_snapshot() {
    let mut snapshot = Snapshot {
        nodes: vec![node("a").state()],
        ..Snapshot::default()
    };
    let pending = vec![pod("p").mem("100Mi").owner("rs").module("sha256:m").build()];
    schedule(&pending, &mut snapshot);
    let placed = &snapshot.nodes[0].pods;
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].memory_bytes, 100 * MI);
    assert_eq!(placed[0].owner_uid.as_deref(), Some("rs"));
    assert!(snapshot.nodes[0].has_module("sha256:m"));
}

#[test]
fn snapshot_from_objects() {
    let nodes = vec![node("b").state().node, node("a").state().node];
    let mut ended = pod("ended").bound("a").build();
    ended.status.phase = PodPhase::Succeeded;
    let mut failed = pod("failed").bound("a").build();
    failed.status.phase = PodPhase::Failed;
    let pods = [
        pod("p1").bound("a").mem("1Mi").build(),
        pod("waiting").nominated("b").build(),
        pod("p2").bound("b").build(),
        pod("pending").build(),
        pod("lost").bound("gone").build(),
        ended,
        failed,
    ];
    let mut module = Module::default();
    module.spec.digest = "sha256:m".into();
    module.status.imports = vec!["wasi:cli/environment@0.2.0".into()];
    let s = Snapshot::new(nodes, &pods, [&module]);
    let names = |n: &NodeState| n.pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let got: Vec<(&str, Vec<String>)> = s.nodes.iter().map(|n| (n.name(), names(n))).collect();
    assert_eq!(
        got,
        vec![("a", vec!["p1".to_string()]), ("b", vec!["p2".to_string()])]
    );
    assert_eq!(s.nodes[0].used().memory_bytes, MI);
    let nominated: Vec<&str> = s.nodes[1]
        .nominated
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(nominated, ["waiting"]);
    assert_eq!(
        s.module_imports.get("sha256:m"),
        Some(&vec!["wasi:cli/environment@0.2.0".to_string()])
    );
}

#[test]
fn pod_state_cases() {
    let cases: Vec<(PodB, PodState)> = vec![
        (
            pod("p"),
            PodState {
                namespace: "default".into(),
                name: "p".into(),
                uid: "uid-p".into(),
                ..PodState::default()
            },
        ),
        (
            pod("p")
                .priority(7)
                .cpu("250m")
                .mem_limit("1Ki")
                .owner("rs")
                .label("app", "web")
                .module("sha256:m")
                .created(9),
            PodState {
                namespace: "default".into(),
                name: "p".into(),
                uid: "uid-p".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                owner_uid: Some("rs".into()),
                priority: 7,
                cpu_millis: 250,
                memory_bytes: 1024,
                module: "sha256:m".into(),
                created: Some(Time(9)),
                terminating: false,
                volumes: vec![],
            },
        ),
    ];
    for (p, want) in cases {
        assert_eq!(p.state(), want);
    }
}

#[test]
fn large_clusters_search_a_share_of_their_nodes() {
    // (nodes, feasible nodes a search stops at)
    let cases = [
        (0, 0),
        (5, 5),
        (100, 100),
        (101, 100),
        (500, 230),
        (1000, 420),
        (5000, 500),
        (10_000, 500),
    ];
    for (total, want) in cases {
        assert_eq!(feasible_wanted(total), want, "{total} nodes");
    }
}

#[test]
fn successive_pods_search_from_where_the_last_stopped() {
    // 300 equal nodes: each pod looks at its share (144), starting where
    // the previous pod stopped, so every node gets its turn.
    let nodes: Vec<NodeState> = (0..300)
        .map(|i| node(&format!("n{i:03}")).state())
        .collect();
    let mut snapshot = Snapshot {
        nodes,
        ..Snapshot::default()
    };
    let pending: Vec<Pod> = (0..2)
        .map(|i| pod(&format!("p{i}")).mem("1Mi").build())
        .collect();
    let decisions = schedule(&pending, &mut snapshot);
    let bound: Vec<&str> = decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Bind { node, .. } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    // Equal scores go to the first name of the window searched.
    assert_eq!(bound, ["n000", "n144"], "{decisions:?}");
    assert_eq!(snapshot.next_start, 2 * feasible_wanted(300));
}
