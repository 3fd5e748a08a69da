//! Preemption: when no node can take a pod, which pods of strictly lower
//! priority to evict, and on which node, so that it fits. Only resources
//! (cpu, memory, pod count) are freed this way: a node must pass every other
//! filter as it is.
//!
//! On each such node the victims are the fewest lower-priority pods whose
//! removal makes the pod fit, taken lowest priority first and, among equals,
//! newest first (they have lost the least work); a second pass spares any
//! victim, highest priority first, whose removal turns out not to be needed.
//! The node with the fewest victims wins, then the one whose most important
//! victim has the lowest priority, then the first by name.

use super::filters::check_except_resources;
use super::{usage, NodeState, PodInfo, PodRef, Snapshot};
use std::cmp::Reverse;

/// Where a pod can go once `victims` are deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub node: String,
    pub victims: Vec<PodRef>,
}

/// The best node to preempt on for `pod`, if evicting lower-priority pods
/// makes it fit anywhere. It does not look at the preemption policy
/// ([`PodInfo::may_preempt`]).
pub fn plan(snapshot: &Snapshot, pod: &PodInfo) -> Option<Preemption> {
    snapshot
        .nodes
        .iter()
        .filter(|n| check_except_resources(n, pod).is_ok())
        .filter_map(|n| {
            let victims = victims_on(n, pod)?;
            let highest = victims.iter().map(|v| n.pods[*v].priority).max()?;
            Some((victims, highest, n))
        })
        .min_by(|a, b| (a.0.len(), a.1, a.2.name()).cmp(&(b.0.len(), b.1, b.2.name())))
        .map(|(victims, _, n)| Preemption {
            node: n.name().to_string(),
            victims: victims.iter().map(|v| n.pods[*v].pod_ref()).collect(),
        })
}

/// The victims (indexes into `node.pods`, in eviction order) that make room
/// for `pod` on `node`; None if evicting every lower-priority pod would not
/// be enough, or nothing needs evicting.
pub fn victims_on(node: &NodeState, pod: &PodInfo) -> Option<Vec<usize>> {
    let mut candidates: Vec<usize> = (0..node.pods.len())
        .filter(|i| {
            let p = &node.pods[*i];
            p.priority < pod.priority && !p.terminating
        })
        .collect();
    candidates.sort_by_key(|i| {
        let p = &node.pods[*i];
        (p.priority, Reverse(p.created), &p.namespace, &p.name)
    });
    let mut removed = vec![false; node.pods.len()];
    let mut victims = Vec::new();
    for i in candidates {
        if fits(node, pod, &removed) {
            break;
        }
        removed[i] = true;
        victims.push(i);
    }
    if victims.is_empty() || !fits(node, pod, &removed) {
        return None;
    }
    // Spare the most important victims whose removal was not needed after all.
    for &i in victims.iter().rev() {
        removed[i] = false;
        if !fits(node, pod, &removed) {
            removed[i] = true;
        }
    }
    victims.retain(|i| removed[*i]);
    Some(victims)
}

/// Whether `pod` fits `node` once the pods marked in `removed` are gone
/// (the room of pods nominated there of at least its priority stays taken).
fn fits(node: &NodeState, pod: &PodInfo, removed: &[bool]) -> bool {
    let used = usage(
        node.pods
            .iter()
            .zip(removed)
            .filter(|(_, r)| !**r)
            .map(|(p, _)| p)
            .chain(node.reserved_against(pod)),
    );
    let alloc = node.node.allocatable();
    let fits =
        |request: u64, used: u64, alloc: u64| request == 0 || used.saturating_add(request) <= alloc;
    fits(pod.cpu_millis, used.cpu_millis, alloc.cpu_millis)
        && fits(pod.memory_bytes, used.memory_bytes, alloc.memory_bytes)
        && used.pods < node.max_pods()
}

/// The node a pod nominated by an earlier preemption waits on: its
/// nominated node still holds lower-priority pods being deleted. Such a pod
/// does not preempt again (it would evict more than needed); it is retried
/// once they are gone.
pub fn waiting_on<'a>(snapshot: &'a Snapshot, pod: &PodInfo) -> Option<&'a str> {
    let nominated = pod.pod.status.nominated_node_name.as_deref()?;
    let node = snapshot.node(nominated)?;
    node.pods
        .iter()
        .any(|p| p.terminating && p.priority < pod.priority)
        .then(|| node.name())
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    fn victims(nodes: Vec<NodeB>, p: PodB) -> Option<(String, Vec<String>)> {
        let p = p.build();
        let snapshot = snapshot(nodes.into_iter().map(NodeB::state).collect(), &p, &[]);
        let plan = plan(&snapshot, &PodInfo::new(&p, &snapshot))?;
        Some((
            plan.node,
            plan.victims.into_iter().map(|v| v.name).collect(),
        ))
    }

    #[test]
    fn victim_cases() {
        // Nodes of 1 cpu and 1Gi; the incoming pod has priority 100 and wants 600Mi.
        let me = || pod("p").priority(100).mem("600Mi");
        let low = |name: &str, prio: i32, mem: &str| pod(name).priority(prio).mem(mem);
        let want = |node: &str, v: &[&str]| {
            Some((node.to_string(), v.iter().map(|s| s.to_string()).collect()))
        };
        // (name, nodes, pod, (node, victims))
        type Case<'a> = (&'a str, Vec<NodeB>, PodB, Option<(String, Vec<String>)>);
        let cases: Vec<Case> = vec![
            (
                "lowest priority first, only until it fits",
                vec![node("a")
                    .running(low("l1", 10, "300Mi"))
                    .running(low("l0", 0, "300Mi"))
                    .running(low("l2", 20, "300Mi"))],
                me(),
                want("a", &["l0", "l1"]),
            ),
            (
                "newest first among equal priorities",
                vec![node("a")
                    .running(low("old", 0, "400Mi").created(1))
                    .running(low("new", 0, "400Mi").created(2))],
                me(),
                want("a", &["new"]),
            ),
            (
                "equal and higher priorities are never victims",
                vec![node("a")
                    .running(low("same", 100, "500Mi"))
                    .running(low("higher", 200, "500Mi"))],
                me(),
                None,
            ),
            (
                "not enough lower-priority room",
                vec![node("a")
                    .running(low("l", 0, "200Mi"))
                    .running(low("same", 100, "800Mi"))],
                me(),
                None,
            ),
            (
                "fewest victims wins over lower priorities",
                vec![
                    node("a")
                        .running(low("a1", 0, "300Mi"))
                        .running(low("a2", 0, "300Mi"))
                        .running(low("a3", 0, "300Mi")),
                    node("b").running(low("b1", 50, "900Mi")),
                ],
                me(),
                want("b", &["b1"]),
            ),
            (
                "then the lowest highest victim priority",
                vec![
                    node("a").running(low("a1", 50, "900Mi")),
                    node("b").running(low("b1", 10, "900Mi")),
                ],
                me(),
                want("b", &["b1"]),
            ),
            (
                "then the name",
                vec![
                    node("b").running(low("b1", 10, "900Mi")),
                    node("a").running(low("a1", 10, "900Mi")),
                ],
                me(),
                want("a", &["a1"]),
            ),
            (
                "a victim not needed after all is spared",
                vec![node("a")
                    .running(low("small", 0, "100Mi"))
                    .running(low("big", 5, "800Mi"))],
                me(),
                want("a", &["big"]),
            ),
            (
                "nodes failing other filters are not used",
                vec![
                    node("a").not_ready().running(low("a1", 0, "900Mi")),
                    node("b").cordoned().running(low("b1", 0, "900Mi")),
                ],
                me(),
                None,
            ),
            (
                "cpu and pod count too",
                vec![node("a")
                    .max_pods(2)
                    .running(low("c", 0, "1").cpu("900m"))
                    .running(low("other", 200, "1"))],
                pod("p").priority(100).cpu("200m"),
                want("a", &["c"]),
            ),
            (
                "pod count alone",
                vec![node("a").max_pods(1).running(low("l", 0, "1"))],
                pod("p").priority(100),
                want("a", &["l"]),
            ),
            (
                "terminating pods are not picked again",
                vec![node("a")
                    .running_terminating(low("going", 0, "300Mi"))
                    .running(low("l", 1, "500Mi"))],
                me(),
                want("a", &["l"]),
            ),
            (
                "negative priorities give way to 0",
                vec![node("a").running(low("neg", -5, "900Mi"))],
                pod("p").mem("600Mi"),
                want("a", &["neg"]),
            ),
        ];
        for (name, nodes, p, expected) in cases {
            assert_eq!(victims(nodes, p), expected, "{name}");
        }
    }

    #[test]
    fn waiting_cases() {
        let me = || pod("p").priority(100);
        let cases: Vec<(&str, NodeB, PodB, Option<&str>)> = vec![
            (
                "nominated, victims still stopping",
                node("a").running_terminating(pod("v").priority(0)),
                me().nominated("a"),
                Some("a"),
            ),
            (
                "not nominated",
                node("a").running_terminating(pod("v")),
                me(),
                None,
            ),
            (
                "victims gone",
                node("a").running(pod("v")),
                me().nominated("a"),
                None,
            ),
            (
                "a stopping pod of higher priority is no victim of ours",
                node("a").running_terminating(pod("v").priority(500)),
                me().nominated("a"),
                None,
            ),
            ("nominated node gone", node("b"), me().nominated("a"), None),
        ];
        for (name, n, p, want) in cases {
            let p = p.build();
            let snapshot = snapshot(vec![n.state()], &p, &[]);
            assert_eq!(
                waiting_on(&snapshot, &PodInfo::new(&p, &snapshot)),
                want,
                "{name}"
            );
        }
    }
}
