//! Scores: how the nodes that passed every filter are ranked for a pod.
//! Each scorer gives every candidate node 0 to 100 (some relative to the
//! other candidates, so they see the whole list); the total is their
//! weighted sum ([`SCORERS`]), and the highest total wins; nodes tied for
//! it take turns from batch to batch, in the order of their names, so that
//! a decision is reproducible and pods that score the same everywhere
//! still spread.
//!
//! The weights, and why:
//! - 3 taint preference: an operator's PreferNoSchedule taint is an
//!   explicit wish about the node, as in Kubernetes (TaintToleration, 3).
//! - 2 preferred node affinity, 2 topology spread (ScheduleAnyway): the
//!   pod's author asked for them (Kubernetes' weights too).
//! - 2 owner spread: replicas of one owner on different nodes survive a
//!   node's loss. It must outweigh module locality, which pulls a
//!   ReplicaSet's pods (all running one module) onto the same node.
//! - 1 least allocated: headroom, a tie-breaker among otherwise equal nodes.
//! - 1 module locality: a node that has the module compiled starts the
//!   pod sooner (no fetch, no compile, which takes seconds on small
//!   boards), but that is worth less than any of the above.

use super::{NodeState, PodInfo};
use flotilla_api::objects::scheduling::{tolerated, TaintEffect};

/// The highest score of one scorer.
pub const MAX: u64 = 100;

/// One way of ranking candidate nodes.
#[derive(Debug, Clone, Copy)]
pub struct Scorer {
    pub name: &'static str,
    pub weight: u64,
    /// One score (0..=[`MAX`]) per node of the slice, in its order.
    pub score: fn(&[&NodeState], &PodInfo) -> Vec<u64>,
}

/// Every scorer with its weight (see the module's doc for why).
pub const SCORERS: &[Scorer] = &[
    Scorer {
        name: "TaintPreference",
        weight: 3,
        score: taint_preference,
    },
    Scorer {
        name: "NodeAffinity",
        weight: 2,
        score: preferred_affinity,
    },
    Scorer {
        name: "TopologySpread",
        weight: 2,
        score: topology_spread,
    },
    Scorer {
        name: "OwnerSpread",
        weight: 2,
        score: owner_spread,
    },
    Scorer {
        name: "LeastAllocated",
        weight: 1,
        score: least_allocated,
    },
    Scorer {
        name: "ModuleLocality",
        weight: 1,
        score: module_locality,
    },
];

/// Each candidate's total score, in the slice's order.
pub fn totals(nodes: &[&NodeState], pod: &PodInfo) -> Vec<u64> {
    let mut totals = vec![0u64; nodes.len()];
    for s in SCORERS {
        for (t, v) in totals.iter_mut().zip((s.score)(nodes, pod)) {
            *t = t.saturating_add(s.weight.saturating_mul(v.min(MAX)));
        }
    }
    totals
}

/// The best candidate, if any: of the nodes tied for the best total, the
/// (`turn` modulo ties)-th by name ([`super::Snapshot::turn`]).
pub fn best<'a>(nodes: &[&'a NodeState], pod: &PodInfo, turn: u64) -> Option<&'a NodeState> {
    let totals = totals(nodes, pod);
    let top = totals.iter().copied().max()?;
    let mut tied: Vec<&'a NodeState> = nodes
        .iter()
        .zip(&totals)
        .filter(|(_, t)| **t == top)
        .map(|(n, _)| *n)
        .collect();
    // Candidates come in name order from some node on, round to the first:
    // two sorted runs, which the sort merges in one pass.
    tied.sort_by(|a, b| a.name().cmp(b.name()));
    let pick = usize::try_from(turn % tied.len() as u64).unwrap_or(0);
    tied.get(pick).copied()
}

/// `MAX * part / whole` (0 when `whole` is 0).
fn scale(part: u64, whole: u64) -> u64 {
    MAX.saturating_mul(part.min(whole))
        .checked_div(whole)
        .unwrap_or(0)
}

/// Higher for a lower `raw`: `MAX` for 0, 0 for the highest among the
/// nodes; all `MAX` when every node is 0.
fn inverse(raw: Vec<u64>) -> Vec<u64> {
    let max = raw.iter().copied().max().unwrap_or(0);
    if max == 0 {
        return vec![MAX; raw.len()];
    }
    raw.into_iter()
        .map(|r| scale(max - r.min(max), max))
        .collect()
}

/// Millicores a pod that requests no cpu counts for when nodes are scored
/// (Kubernetes' `DefaultMilliCPURequest`): best-effort pods still load a
/// node, and without it they would all score the same on every node and
/// pile onto one.
pub const SCORING_CPU_MILLIS: u64 = 100;

/// Bytes a pod that requests no memory counts for when nodes are scored
/// (Kubernetes' `DefaultMemoryRequest`, 200 MiB).
pub const SCORING_MEMORY_BYTES: u64 = 200 << 20;

/// What a pod counts for when nodes are scored: its requests, or the
/// defaults above for what it does not request. Filters use the requests
/// alone.
fn scoring_request(cpu_millis: u64, memory_bytes: u64) -> (u64, u64) {
    let or = |v: u64, default: u64| if v == 0 { default } else { v };
    (
        or(cpu_millis, SCORING_CPU_MILLIS),
        or(memory_bytes, SCORING_MEMORY_BYTES),
    )
}

/// What is left free once the pod is placed, as a share of allocatable:
/// the mean over cpu and memory (a resource the node has none of scores 0).
/// Every pod, the one placed included, counts at least
/// [`SCORING_CPU_MILLIS`] and [`SCORING_MEMORY_BYTES`].
pub fn least_allocated(nodes: &[&NodeState], pod: &PodInfo) -> Vec<u64> {
    let (cpu, memory) = scoring_request(pod.cpu_millis, pod.memory_bytes);
    nodes
        .iter()
        .map(|n| {
            let (used_cpu, used_memory) = n
                .pods
                .iter()
                .chain(n.reserved_against(pod))
                .map(|p| scoring_request(p.cpu_millis, p.memory_bytes))
                .fold((0u64, 0u64), |(c, m), (pc, pm)| {
                    (c.saturating_add(pc), m.saturating_add(pm))
                });
            let alloc = n.node.allocatable();
            let free = |used: u64, request: u64, alloc: u64| {
                scale(alloc.saturating_sub(used.saturating_add(request)), alloc)
            };
            (free(used_cpu, cpu, alloc.cpu_millis) + free(used_memory, memory, alloc.memory_bytes))
                / 2
        })
        .collect()
}

/// Fewer pods of the same controller owner on the node score higher
/// (relative to the node that has the most); every node scores the same
/// for a pod without an owner.
pub fn owner_spread(nodes: &[&NodeState], pod: &PodInfo) -> Vec<u64> {
    let Some(owner) = pod.owner_uid else {
        return vec![MAX; nodes.len()];
    };
    inverse(
        nodes
            .iter()
            .map(|n| {
                n.pods
                    .iter()
                    .filter(|p| !p.terminating && p.owner_uid.as_deref() == Some(owner))
                    .count() as u64
            })
            .collect(),
    )
}

/// For ScheduleAnyway constraints: the lower the skew placing the pod here
/// leaves (summed over the constraints), the higher; a node lacking one
/// of their topology keys scores 0. Every node scores the same for a pod
/// without such constraints.
pub fn topology_spread(nodes: &[&NodeState], pod: &PodInfo) -> Vec<u64> {
    let soft: Vec<_> = pod.spread.iter().filter(|s| !s.is_hard()).collect();
    if soft.is_empty() {
        return vec![MAX; nodes.len()];
    }
    let skews: Vec<Option<u64>> = nodes
        .iter()
        .map(|n| {
            soft.iter().try_fold(0u64, |sum, s| {
                let value = n.node.metadata.labels.get(&s.constraint.topology_key)?;
                Some(sum.saturating_add(s.skew_if_placed(value)))
            })
        })
        .collect();
    let max = skews.iter().flatten().copied().max().unwrap_or(0);
    skews
        .into_iter()
        .map(|s| match s {
            None => 0,
            Some(_) if max == 0 => MAX,
            Some(s) => scale(max - s.min(max), max),
        })
        .collect()
}

/// The summed weights of the preferred node affinity terms the node
/// matches, relative to the best-matching node.
pub fn preferred_affinity(nodes: &[&NodeState], pod: &PodInfo) -> Vec<u64> {
    let terms = pod
        .pod
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .map(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .as_slice()
        })
        .unwrap_or_default();
    let sums: Vec<u64> = nodes
        .iter()
        .map(|n| {
            terms
                .iter()
                .filter(|t| t.preference.matches(&n.node.metadata.labels))
                .map(|t| u64::from(t.weight.max(0).unsigned_abs()))
                .sum()
        })
        .collect();
    let max = sums.iter().copied().max().unwrap_or(0);
    sums.into_iter().map(|s| scale(s, max)).collect()
}

/// Fewer PreferNoSchedule taints the pod does not tolerate score higher
/// (relative to the node with the most).
pub fn taint_preference(nodes: &[&NodeState], pod: &PodInfo) -> Vec<u64> {
    inverse(
        nodes
            .iter()
            .map(|n| {
                n.node
                    .spec
                    .taints
                    .iter()
                    .filter(|t| {
                        t.effect == TaintEffect::PreferNoSchedule
                            && !tolerated(&pod.pod.spec.tolerations, t)
                    })
                    .count() as u64
            })
            .collect(),
    )
}

/// `MAX` on a node that has the pod's module (compiled in its cache, or run
/// by a pod bound there), else 0.
pub fn module_locality(nodes: &[&NodeState], pod: &PodInfo) -> Vec<u64> {
    nodes
        .iter()
        .map(|n| {
            if n.has_module(&pod.pod.spec.module) {
                MAX
            } else {
                0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::super::Snapshot;
    use super::*;
    use flotilla_api::objects::scheduling::NodeSelectorOperator::{Exists, In};
    use flotilla_api::objects::scheduling::TaintEffect::*;
    use flotilla_api::objects::scheduling::TolerationOperator;
    use flotilla_api::objects::scheduling::UnsatisfiableConstraintAction::*;

    type Score = fn(&[&NodeState], &PodInfo) -> Vec<u64>;

    fn run(f: Score, nodes: Vec<NodeB>, pod: PodB) -> Vec<u64> {
        let pod = pod.build();
        let snapshot = Snapshot {
            nodes: nodes.into_iter().map(NodeB::state).collect(),
            ..Snapshot::default()
        };
        let refs: Vec<&NodeState> = snapshot.nodes.iter().collect();
        f(&refs, &PodInfo::new(&pod, &snapshot))
    }

    #[test]
    fn score_cases() {
        let web = || pod("w").label("app", "web");
        let zone = |n: &str, z: &str| node(n).label("zone", z);
        // (name, scorer, nodes, pod, scores)
        type Case<'a> = (&'a str, Score, Vec<NodeB>, PodB, Vec<u64>);
        let cases: Vec<Case> = vec![
            // Least allocated: nodes of 1 cpu and 1Gi.
            (
                "least allocated after placing",
                least_allocated,
                vec![
                    node("a"),
                    node("b").running(pod("q").cpu("500m").mem("512Mi")),
                    node("c").running(pod("q").cpu("1").mem("1Gi")),
                ],
                pod("p").cpu("250m").mem("256Mi"),
                vec![75, 25, 0],
            ),
            (
                "least allocated mixes cpu and memory",
                least_allocated,
                vec![
                    node("a").running(pod("q").mem("1Gi")),
                    node("b").capacity("0", "1Gi"),
                ],
                pod("p"),
                // Node a: 200m of 1 cpu free 80, memory full 0; node b: no
                // cpu 0, 200Mi of 1Gi free 80.
                vec![40, 40],
            ),
            (
                "pods without requests count as Kubernetes' defaults",
                least_allocated,
                vec![node("a").running(pod("q")).running(pod("r")), node("b")],
                pod("p"),
                // Node a: 300m and 600Mi with p; node b: 100m and 200Mi.
                vec![55, 85],
            ),
            // Owner spread.
            (
                "fewer siblings higher",
                owner_spread,
                vec![
                    node("a")
                        .running(pod("r1").owner("rs"))
                        .running(pod("r2").owner("rs")),
                    node("b").running(pod("r3").owner("rs")),
                    node("c").running(pod("x").owner("other")),
                ],
                pod("p").owner("rs"),
                vec![0, 50, 100],
            ),
            (
                "terminating siblings do not count",
                owner_spread,
                vec![
                    node("a").running_terminating(pod("r1").owner("rs")),
                    node("b"),
                ],
                pod("p").owner("rs"),
                vec![100, 100],
            ),
            (
                "no owner: all equal",
                owner_spread,
                vec![node("a").running(pod("r1").owner("rs")), node("b")],
                pod("p"),
                vec![100, 100],
            ),
            // Topology spread, ScheduleAnyway.
            (
                "lower skew higher",
                topology_spread,
                vec![
                    zone("a", "1").running(web()).running(web()),
                    zone("b", "2").running(web()),
                    zone("c", "3"),
                    node("d"),
                ],
                web().spread("zone", 1, ScheduleAnyway, &[("app", "web")]),
                // Skews once placed: 3, 2, 1; d lacks the key.
                vec![0, 33, 66, 0],
            ),
            (
                "skews add up over constraints",
                topology_spread,
                vec![
                    zone("a", "1").label("rack", "x").running(web()),
                    zone("b", "2").label("rack", "x"),
                    zone("c", "2").label("rack", "y"),
                ],
                web()
                    .spread("zone", 1, ScheduleAnyway, &[("app", "web")])
                    .spread("rack", 1, ScheduleAnyway, &[("app", "web")]),
                // zone skews 2, 1, 1; rack skews 2, 2, 1.
                vec![0, 25, 50],
            ),
            (
                "DoNotSchedule does not score",
                topology_spread,
                vec![zone("a", "1").running(web()), zone("b", "2")],
                web().spread("zone", 1, DoNotSchedule, &[("app", "web")]),
                vec![100, 100],
            ),
            // Preferred node affinity.
            (
                "weights of matching terms",
                preferred_affinity,
                vec![
                    zone("a", "1").label("disk", "ssd"),
                    zone("b", "1"),
                    node("c").label("disk", "ssd"),
                    node("d"),
                ],
                pod("p")
                    .prefers(60, "zone", In, &["1"])
                    .prefers(20, "disk", Exists, &[]),
                vec![100, 75, 25, 0],
            ),
            (
                "no preference",
                preferred_affinity,
                vec![node("a")],
                pod("p"),
                vec![0],
            ),
            // PreferNoSchedule taints.
            (
                "untolerated PreferNoSchedule lowers",
                taint_preference,
                vec![
                    node("a")
                        .taint("x", "", PreferNoSchedule)
                        .taint("y", "", PreferNoSchedule),
                    node("b").taint("x", "", PreferNoSchedule),
                    node("c").taint("z", "", NoSchedule),
                ],
                pod("p").tolerate("z", TolerationOperator::Exists, "", None),
                vec![0, 50, 100],
            ),
            (
                "tolerated PreferNoSchedule is fine",
                taint_preference,
                vec![node("a").taint("x", "", PreferNoSchedule), node("b")],
                pod("p").tolerate("x", TolerationOperator::Exists, "", None),
                vec![100, 100],
            ),
            // Module locality.
            (
                "cached or running the module",
                module_locality,
                vec![
                    node("a").modules(&["sha256:m"]),
                    node("b").running(pod("q").module("sha256:m")),
                    node("c").modules(&["sha256:other"]),
                ],
                pod("p").module("sha256:m"),
                vec![100, 100, 0],
            ),
        ];
        for (name, f, nodes, p, want) in cases {
            assert_eq!(run(f, nodes, p), want, "{name}");
        }
    }

    #[test]
    fn ranking_cases() {
        let cases: Vec<(&str, Vec<NodeB>, PodB, &str)> = vec![
            (
                "ties go to the first name",
                vec![node("b"), node("a")],
                pod("p"),
                "a",
            ),
            (
                "least allocated",
                vec![node("a").running(pod("q").mem("512Mi")), node("b")],
                pod("p"),
                "b",
            ),
            (
                "owner spread beats module locality",
                vec![
                    node("a").running(pod("r1").owner("rs").module("sha256:m")),
                    node("b"),
                ],
                pod("p").owner("rs").module("sha256:m"),
                "b",
            ),
            (
                "module locality beats a little headroom",
                vec![
                    node("a"),
                    node("b")
                        .modules(&["sha256:m"])
                        .running(pod("q").mem("100Mi")),
                ],
                pod("p").module("sha256:m"),
                "b",
            ),
            (
                "a PreferNoSchedule taint beats headroom",
                vec![
                    node("a").taint("x", "", PreferNoSchedule),
                    node("b").running(pod("q").mem("900Mi").cpu("900m")),
                ],
                pod("p"),
                "b",
            ),
            (
                "preferred affinity",
                vec![node("a"), node("b").label("disk", "ssd")],
                pod("p").prefers(1, "disk", In, &["ssd"]),
                "b",
            ),
        ];
        for (name, nodes, p, want) in cases {
            let p = p.build();
            let snapshot = Snapshot {
                nodes: nodes.into_iter().map(NodeB::state).collect(),
                ..Snapshot::default()
            };
            let refs: Vec<&NodeState> = snapshot.nodes.iter().collect();
            let got = best(&refs, &PodInfo::new(&p, &snapshot), 0).map(NodeState::name);
            assert_eq!(got, Some(want), "{name}");
        }
    }
}
