//! Filters: whether a node may take a pod, each a pure function of the
//! node's state and the pod ([`PodInfo`]) that says why not ([`Reason`]).
//! [`check`] runs them in [`FILTERS`] order and stops at the first that
//! fails, so each node contributes one reason (one or more texts) to the
//! message [`unschedulable_message`] writes in Kubernetes' shape.

use super::{NodeState, PodInfo};
use flotilla_api::objects::scheduling::{tolerated, TaintEffect};
use flotilla_api::{Node, Pod};
use std::collections::BTreeMap;
use std::fmt;

/// The message of a pod when no node has joined.
pub const NO_NODES: &str = "0/0 nodes are available: no nodes have joined the cluster; \
     create a join token with `flotilla token create`, then start a node with \
     `flotilla node --master <HOST:PORT> --token <TOKEN>`";

/// Why a node may not take a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    NotReady,
    /// Cordoned: `spec.unschedulable`.
    Unschedulable,
    /// The node's labels do not meet the pod's nodeSelector or required node affinity.
    NodeAffinity,
    /// The first NoSchedule or NoExecute taint the pod does not tolerate.
    Taint {
        key: String,
        value: String,
    },
    /// What the pod requests does not fit what is left (any of the three).
    Insufficient {
        cpu: bool,
        memory: bool,
        pods: bool,
    },
    /// The first import of the pod's module the node does not provide.
    MissingInterface(String),
    /// A DoNotSchedule spread constraint would be broken, or the node lacks its topology key.
    TopologySpread,
    /// A persistent volume the pod mounts is on another node.
    VolumeNode(String),
}

impl Reason {
    /// The texts this reason adds to the message (several when more than
    /// one resource is short, as Kubernetes counts each).
    pub fn texts(&self) -> Vec<String> {
        match self {
            Reason::NotReady => vec!["node(s) were not ready".into()],
            Reason::Unschedulable => vec!["node(s) were unschedulable".into()],
            Reason::NodeAffinity => {
                vec!["node(s) didn't match Pod's node affinity/selector".into()]
            }
            Reason::Taint { key, value } if value.is_empty() => {
                vec![format!("node(s) had untolerated taint {{{key}}}")]
            }
            Reason::Taint { key, value } => {
                vec![format!("node(s) had untolerated taint {{{key}: {value}}}")]
            }
            Reason::Insufficient { cpu, memory, pods } => [
                (*cpu, "Insufficient cpu"),
                (*memory, "Insufficient memory"),
                (*pods, "Too many pods"),
            ]
            .into_iter()
            .filter(|(short, _)| *short)
            .map(|(_, t)| t.to_string())
            .collect(),
            Reason::MissingInterface(i) => vec![format!("node(s) do not provide {i}")],
            Reason::TopologySpread => {
                vec!["node(s) didn't match pod topology spread constraints".into()]
            }
            Reason::VolumeNode(v) => {
                vec![format!("node(s) do not hold persistent volume {v}")]
            }
        }
    }
}

/// `0/N nodes are available: ` and each text with the number of nodes that
/// gave it, most frequent first, then alphabetically; `total` is every node
/// looked at.
pub fn unschedulable_message(total: usize, reasons: &[Reason]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for t in reasons.iter().flat_map(Reason::texts) {
        *counts.entry(t).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|(ta, a), (tb, b)| b.cmp(a).then_with(|| ta.cmp(tb)));
    let parts: Vec<String> = counts.iter().map(|(t, n)| format!("{n} {t}")).collect();
    format!("0/{total} nodes are available: {}.", parts.join(", "))
}

/// A filter: Ok if the node may take the pod as far as it is concerned.
pub type Filter = fn(&NodeState, &PodInfo) -> Result<(), Reason>;

/// Every filter, in the order they are tried: the cheap ones and those an
/// operator fixes first (readiness, cordons) come first, as their reason is
/// the one a node reports.
pub const FILTERS: &[Filter] = &[
    ready,
    schedulable,
    node_affinity,
    persistent_volumes,
    taints,
    resources,
    interfaces,
    topology_spread,
];

/// Runs every filter; the first failure is the node's reason.
pub fn check(node: &NodeState, pod: &PodInfo) -> Result<(), Reason> {
    FILTERS.iter().try_for_each(|f| f(node, pod))
}

/// [`FILTERS`] less [`resources`], in the same order.
const FILTERS_EXCEPT_RESOURCES: &[Filter] = &[
    ready,
    schedulable,
    node_affinity,
    persistent_volumes,
    taints,
    interfaces,
    topology_spread,
];

/// Runs every filter but [`resources`]: the nodes where evicting pods could
/// make room.
pub fn check_except_resources(node: &NodeState, pod: &PodInfo) -> Result<(), Reason> {
    FILTERS_EXCEPT_RESOURCES
        .iter()
        .try_for_each(|f| f(node, pod))
}

/// The node is Ready.
pub fn ready(node: &NodeState, _: &PodInfo) -> Result<(), Reason> {
    if node.node.is_ready() {
        Ok(())
    } else {
        Err(Reason::NotReady)
    }
}

/// The node is not cordoned.
pub fn schedulable(node: &NodeState, _: &PodInfo) -> Result<(), Reason> {
    if node.node.spec.unschedulable {
        Err(Reason::Unschedulable)
    } else {
        Ok(())
    }
}

/// The node's labels meet the pod's nodeSelector and required node affinity.
pub fn node_affinity(node: &NodeState, pod: &PodInfo) -> Result<(), Reason> {
    if matches_node_selection(&node.node, pod.pod) {
        Ok(())
    } else {
        Err(Reason::NodeAffinity)
    }
}

/// The node holds every persistent volume of the pod that is somewhere
/// already, and is the node each names (a volume made by no pod yet may go
/// anywhere).
pub fn persistent_volumes(node: &NodeState, pod: &PodInfo) -> Result<(), Reason> {
    match pod
        .volume_nodes
        .iter()
        .find(|(_, holders)| !holders.contains(node.name()))
    {
        Some((volume, _)) => Err(Reason::VolumeNode(volume.clone())),
        None => Ok(()),
    }
}

/// Whether `node` meets `pod`'s nodeSelector (every pair) and its required
/// node affinity (some term); also which nodes count for spreading.
pub fn matches_node_selection(node: &Node, pod: &Pod) -> bool {
    let labels = &node.metadata.labels;
    let selector = pod
        .spec
        .node_selector
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let required = pod
        .spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    selector && required.is_none_or(|r| r.matches(labels))
}

/// Every NoSchedule and NoExecute taint is tolerated (PreferNoSchedule ones
/// only lower the score).
pub fn taints(node: &NodeState, pod: &PodInfo) -> Result<(), Reason> {
    match node.node.spec.taints.iter().find(|t| {
        t.effect != TaintEffect::PreferNoSchedule && !tolerated(&pod.pod.spec.tolerations, t)
    }) {
        None => Ok(()),
        Some(t) => Err(Reason::Taint {
            key: t.key.clone(),
            value: t.value.clone(),
        }),
    }
}

/// The pod's cpu and memory requests fit the node's allocatable less what
/// its pods reserve (and the pods nominated there of at least its
/// priority: [`NodeState::used_for`]), and one more pod fits its pod limit.
/// A pod that requests none of a resource fits however full the node is in it.
pub fn resources(node: &NodeState, pod: &PodInfo) -> Result<(), Reason> {
    let used = node.used_for(pod);
    let alloc = node.node.allocatable();
    let short =
        |request: u64, used: u64, alloc: u64| request > 0 && used.saturating_add(request) > alloc;
    let cpu = short(pod.cpu_millis, used.cpu_millis, alloc.cpu_millis);
    let memory = short(pod.memory_bytes, used.memory_bytes, alloc.memory_bytes);
    let pods = used.pods >= node.max_pods();
    if cpu || memory || pods {
        Err(Reason::Insufficient { cpu, memory, pods })
    } else {
        Ok(())
    }
}

/// Every import of the pod's module is among the node's `status.interfaces`
/// (see [`provides`]). A node that reports no interfaces at all is taken
/// to be an agent from before they were reported, and is not checked.
pub fn interfaces(node: &NodeState, pod: &PodInfo) -> Result<(), Reason> {
    let offered = &node.node.status.interfaces;
    if offered.is_empty() || pod.imports.is_empty() {
        return Ok(());
    }
    let missing = || {
        pod.imports
            .iter()
            .find(|want| !offered.iter().any(|have| provides(have, want)))
            .map(|m| wanted_range(m))
    };
    let missing = match node.interfaces_id {
        Some(id) => pod
            .interfaces_checked
            .borrow_mut()
            .entry(id)
            .or_insert_with(missing)
            .clone(),
        None => missing(),
    };
    match missing {
        None => Ok(()),
        Some(m) => Err(Reason::MissingInterface(m)),
    }
}

/// Whether an interface a node offers (`wasi:sockets/tcp@0.2.6`) provides
/// one a module imports (`wasi:sockets/tcp@0.2.3`): the same name (package
/// and interface; a core module's import module such as
/// `wasi_snapshot_preview1` by exact name) and a compatible version, as
/// semver's caret: the same major and, for 0.x, the same minor; the node's
/// version not older. A side without a version matches any version; a
/// version that is not `major.minor.patch` (a pre-release, say) must be
/// the same string.
pub fn provides(offered: &str, wanted: &str) -> bool {
    let (have_name, have_version) = split_version(offered);
    let (want_name, want_version) = split_version(wanted);
    if have_name != want_name {
        return false;
    }
    let (Some(have), Some(want)) = (have_version, want_version) else {
        return true;
    };
    match (parse_version(have), parse_version(want)) {
        (Some(h), Some(w)) if h.0 == w.0 && w.0 > 0 => (h.1, h.2) >= (w.1, w.2),
        (Some(h), Some(w)) if h.0 == w.0 => h.1 == w.1 && h.2 >= w.2,
        (Some(_), Some(_)) => false,
        _ => have == want,
    }
}

/// An import as a message names it: the range of versions that would do
/// (`wasi:sockets/tcp@0.2.x`).
pub fn wanted_range(wanted: &str) -> String {
    match split_version(wanted) {
        (name, Some(v)) => match parse_version(v) {
            Some((major, minor, _)) => format!("{name}@{major}.{minor}.x"),
            None => wanted.to_string(),
        },
        _ => wanted.to_string(),
    }
}

fn split_version(interface: &str) -> (&str, Option<&str>) {
    match interface.rsplit_once('@') {
        Some((name, version)) => (name, Some(version)),
        None => (interface, None),
    }
}

fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut parts = v.split('.');
    let mut next = || parts.next().and_then(|p| p.parse::<u64>().ok());
    let version = (next()?, next()?, next()?);
    parts.next().is_none().then_some(version)
}

/// Every DoNotSchedule spread constraint holds once the pod is placed
/// here: the node has the topology key, and its domain ends at most
/// `maxSkew` above the least-populated domain. As in Kubernetes, only the
/// placement's own domain is compared with the minimum, so a placement that
/// brings an already skewed spread back towards balance is allowed.
pub fn topology_spread(node: &NodeState, pod: &PodInfo) -> Result<(), Reason> {
    for s in pod.spread.iter().filter(|s| s.is_hard()) {
        let Some(value) = node.node.metadata.labels.get(&s.constraint.topology_key) else {
            return Err(Reason::TopologySpread);
        };
        if s.skew_if_placed(value) > s.max_skew() {
            return Err(Reason::TopologySpread);
        }
    }
    Ok(())
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.texts().join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use flotilla_api::objects::scheduling::UnsatisfiableConstraintAction::*;
    use flotilla_api::objects::scheduling::{NodeSelectorOperator, TaintEffect::*};

    /// Runs one filter on the first node of `nodes` (the others only shape
    /// the spread counts).
    fn run(f: Filter, nodes: Vec<NodeState>, pod: &Pod, imports: &[&str]) -> Result<(), Reason> {
        let snapshot = snapshot(nodes, pod, imports);
        let info = PodInfo::new(pod, &snapshot);
        f(&snapshot.nodes[0], &info)
    }

    #[test]
    fn ready_and_schedulable() {
        let cases: Vec<(&str, Filter, NodeB, Result<(), Reason>)> = vec![
            ("ready", ready, node("a"), Ok(())),
            (
                "not ready",
                ready,
                node("a").not_ready(),
                Err(Reason::NotReady),
            ),
            (
                "cordoned is still ready",
                ready,
                node("a").cordoned(),
                Ok(()),
            ),
            ("schedulable", schedulable, node("a"), Ok(())),
            (
                "cordoned",
                schedulable,
                node("a").cordoned(),
                Err(Reason::Unschedulable),
            ),
        ];
        for (name, f, n, want) in cases {
            assert_eq!(
                run(f, vec![n.state()], &pod("p").build(), &[]),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn node_affinity_cases() {
        use NodeSelectorOperator::*;
        let zone_a = || node("a").label("zone", "a").label("cores", "4");
        let cases: Vec<(&str, NodeB, PodB, bool)> = vec![
            ("no constraint", zone_a(), pod("p"), true),
            (
                "selector matches",
                zone_a(),
                pod("p").selector("zone", "a"),
                true,
            ),
            (
                "selector value differs",
                zone_a(),
                pod("p").selector("zone", "b"),
                false,
            ),
            (
                "selector key missing",
                node("a"),
                pod("p").selector("zone", "a"),
                false,
            ),
            (
                "selector and affinity both needed",
                zone_a(),
                pod("p").selector("zone", "a").requires("cores", Gt, &["8"]),
                false,
            ),
            (
                "In",
                zone_a(),
                pod("p").requires("zone", In, &["a", "b"]),
                true,
            ),
            (
                "In misses",
                zone_a(),
                pod("p").requires("zone", In, &["b"]),
                false,
            ),
            (
                "NotIn",
                zone_a(),
                pod("p").requires("zone", NotIn, &["b"]),
                true,
            ),
            (
                "NotIn hits",
                zone_a(),
                pod("p").requires("zone", NotIn, &["a"]),
                false,
            ),
            (
                "Exists",
                zone_a(),
                pod("p").requires("zone", Exists, &[]),
                true,
            ),
            (
                "Exists misses",
                node("a"),
                pod("p").requires("zone", Exists, &[]),
                false,
            ),
            (
                "DoesNotExist",
                node("a"),
                pod("p").requires("zone", DoesNotExist, &[]),
                true,
            ),
            (
                "DoesNotExist hits",
                zone_a(),
                pod("p").requires("zone", DoesNotExist, &[]),
                false,
            ),
            ("Gt", zone_a(), pod("p").requires("cores", Gt, &["2"]), true),
            (
                "Gt equal",
                zone_a(),
                pod("p").requires("cores", Gt, &["4"]),
                false,
            ),
            ("Lt", zone_a(), pod("p").requires("cores", Lt, &["8"]), true),
            (
                "Lt not a number",
                zone_a(),
                pod("p").requires("zone", Lt, &["8"]),
                false,
            ),
        ];
        for (name, n, p, fits) in cases {
            let want = if fits {
                Ok(())
            } else {
                Err(Reason::NodeAffinity)
            };
            assert_eq!(
                run(node_affinity, vec![n.state()], &p.build(), &[]),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn persistent_volume_cases() {
        let cases: Vec<(&str, Vec<NodeState>, PodB, Vec<&str>)> = vec![
            (
                "a volume no pod made yet may go anywhere",
                vec![node("a").state(), node("b").state()],
                pod("p").persistent("db", ""),
                vec!["a", "b"],
            ),
            (
                "a volume a node reports pins the pod there",
                vec![
                    node("a").state(),
                    node("b").volumes(&["default/db"]).state(),
                ],
                pod("p").persistent("db", ""),
                vec!["b"],
            ),
            (
                "the same name in another namespace is another volume",
                vec![node("a").state(), node("b").volumes(&["other/db"]).state()],
                pod("p").persistent("db", ""),
                vec!["a", "b"],
            ),
            (
                "a pod that mounts it (even nominated) holds it before its node reports it",
                vec![
                    node("a").nominated(pod("q").persistent("db", "")).state(),
                    node("b").running(pod("r").persistent("db", "")).state(),
                    node("c").state(),
                ],
                pod("p").persistent("db", ""),
                vec!["a", "b"],
            ),
            (
                "a volume that names its node goes there only",
                vec![node("a").state(), node("b").state()],
                pod("p").persistent("db", "b"),
                vec!["b"],
            ),
            (
                "a volume that names a node it is not on: nowhere",
                vec![
                    node("a").volumes(&["default/db"]).state(),
                    node("b").state(),
                ],
                pod("p").persistent("db", "b"),
                vec![],
            ),
            (
                "two volumes on two nodes: nowhere",
                vec![
                    node("a").volumes(&["default/x"]).state(),
                    node("b").volumes(&["default/y"]).state(),
                ],
                pod("p").persistent("x", "").persistent("y", ""),
                vec![],
            ),
        ];
        for (what, nodes, p, want) in cases {
            let p = p.build();
            let snapshot = snapshot(nodes, &p, &[]);
            let info = PodInfo::new(&p, &snapshot);
            let got: Vec<&str> = snapshot
                .nodes
                .iter()
                .filter(|n| persistent_volumes(n, &info).is_ok())
                .map(NodeState::name)
                .collect();
            assert_eq!(got, want, "{what}");
        }
        let p = pod("p").persistent("db", "").build();
        let snapshot = snapshot(
            vec![
                node("a").state(),
                node("b").volumes(&["default/db"]).state(),
            ],
            &p,
            &[],
        );
        assert_eq!(
            persistent_volumes(&snapshot.nodes[0], &PodInfo::new(&p, &snapshot)),
            Err(Reason::VolumeNode("default/db".into()))
        );
        assert_eq!(
            Reason::VolumeNode("default/db".into()).texts(),
            ["node(s) do not hold persistent volume default/db"]
        );
    }

    #[test]
    fn taint_cases() {
        use flotilla_api::objects::scheduling::TolerationOperator::*;
        let taint = |k: &str, v: &str| Reason::Taint {
            key: k.into(),
            value: v.into(),
        };
        let gpu = || node("a").taint("dedicated", "gpu", NoSchedule);
        let cases: Vec<(&str, NodeB, PodB, Result<(), Reason>)> = vec![
            ("no taint", node("a"), pod("p"), Ok(())),
            (
                "NoSchedule",
                gpu(),
                pod("p"),
                Err(taint("dedicated", "gpu")),
            ),
            (
                "NoExecute",
                node("a").taint("x", "", NoExecute),
                pod("p"),
                Err(taint("x", "")),
            ),
            (
                "PreferNoSchedule only scores",
                node("a").taint("x", "y", PreferNoSchedule),
                pod("p"),
                Ok(()),
            ),
            (
                "tolerated by Equal",
                gpu(),
                pod("p").tolerate("dedicated", Equal, "gpu", None),
                Ok(()),
            ),
            (
                "Equal with another value",
                gpu(),
                pod("p").tolerate("dedicated", Equal, "tpu", None),
                Err(taint("dedicated", "gpu")),
            ),
            (
                "tolerated by Exists",
                gpu(),
                pod("p").tolerate("dedicated", Exists, "", Some(NoSchedule)),
                Ok(()),
            ),
            (
                "toleration of another effect",
                gpu(),
                pod("p").tolerate("dedicated", Exists, "", Some(NoExecute)),
                Err(taint("dedicated", "gpu")),
            ),
            (
                "the first untolerated one is named",
                gpu().taint("zone", "edge", NoExecute),
                pod("p").tolerate("dedicated", Exists, "", None),
                Err(taint("zone", "edge")),
            ),
            (
                "tolerate everything",
                gpu().taint("zone", "edge", NoExecute),
                pod("p").tolerate("", Exists, "", None),
                Ok(()),
            ),
        ];
        for (name, n, p, want) in cases {
            assert_eq!(
                run(taints, vec![n.state()], &p.build(), &[]),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn resource_cases() {
        let short = |cpu, memory, pods| Err(Reason::Insufficient { cpu, memory, pods });
        // Nodes of 1 cpu and 1Gi unless told.
        let cases: Vec<(&str, NodeB, PodB, Result<(), Reason>)> = vec![
            (
                "empty node",
                node("a"),
                pod("p").mem("1Gi").cpu("1"),
                Ok(()),
            ),
            (
                "no requests",
                node("a").running(pod("q").mem("1Gi").cpu("1")),
                pod("p"),
                Ok(()),
            ),
            (
                "memory exactly fills",
                node("a").running(pod("q").mem("600Mi")),
                pod("p").mem("424Mi"),
                Ok(()),
            ),
            (
                "memory short",
                node("a").running(pod("q").mem("600Mi")),
                pod("p").mem("425Mi"),
                short(false, true, false),
            ),
            (
                "cpu short",
                node("a").running(pod("q").cpu("700m")),
                pod("p").cpu("301m"),
                short(true, false, false),
            ),
            (
                "both short",
                node("a").running(pod("q").cpu("1").mem("1Gi")),
                pod("p").cpu("1m").mem("1"),
                short(true, true, false),
            ),
            (
                "limit counts when no request",
                node("a").running(pod("q").mem_limit("900Mi")),
                pod("p").mem("200Mi"),
                short(false, true, false),
            ),
            (
                "pod limit",
                node("a").max_pods(1).running(pod("q")),
                pod("p"),
                short(false, false, true),
            ),
            (
                "0 pods reported means 110",
                node("a").max_pods(0).running(pod("q")),
                pod("p"),
                Ok(()),
            ),
            (
                "room kept for a nominated pod of higher priority",
                node("a").nominated(pod("n").priority(10).mem("600Mi")),
                pod("p").priority(5).mem("600Mi"),
                short(false, true, false),
            ),
            (
                "and of equal priority",
                node("a").nominated(pod("n").priority(5).mem("600Mi")),
                pod("p").priority(5).mem("600Mi"),
                short(false, true, false),
            ),
            (
                "not for one of lower priority",
                node("a").nominated(pod("n").priority(1).mem("600Mi")),
                pod("p").priority(5).mem("600Mi"),
                Ok(()),
            ),
            (
                "nor against the nominated pod itself",
                node("a").nominated(pod("p").priority(5).mem("600Mi")),
                pod("p").priority(5).mem("600Mi"),
                Ok(()),
            ),
            (
                "allocatable before capacity",
                node("a").allocatable("500m", "1Gi"),
                pod("p").cpu("600m"),
                short(true, false, false),
            ),
        ];
        for (name, n, p, want) in cases {
            assert_eq!(
                run(resources, vec![n.state()], &p.build(), &[]),
                want,
                "{name}"
            );
        }
        // 110 pods when the node says 0.
        let full = (0..110).fold(node("a").max_pods(0), |n, i| {
            n.running(pod(&format!("q{i}")))
        });
        assert_eq!(
            run(resources, vec![full.state()], &pod("p").build(), &[]),
            short(false, false, true)
        );
    }

    #[test]
    fn provides_cases() {
        let cases = [
            ("wasi:sockets/tcp@0.2.6", "wasi:sockets/tcp@0.2.3", true),
            ("wasi:sockets/tcp@0.2.3", "wasi:sockets/tcp@0.2.3", true),
            ("wasi:sockets/tcp@0.2.2", "wasi:sockets/tcp@0.2.3", false),
            ("wasi:sockets/tcp@0.3.0", "wasi:sockets/tcp@0.2.3", false),
            ("wasi:sockets/tcp@0.1.9", "wasi:sockets/tcp@0.2.3", false),
            ("wasi:sockets/udp@0.2.6", "wasi:sockets/tcp@0.2.3", false),
            ("wasi:sockets/tcp@0.2.6", "wasi:sockets/tcp", true),
            ("wasi:sockets/tcp", "wasi:sockets/tcp@0.2.3", true),
            ("wasi:http/types@1.4.0", "wasi:http/types@1.2.7", true),
            ("wasi:http/types@1.2.0", "wasi:http/types@1.2.7", false),
            ("wasi:http/types@2.0.0", "wasi:http/types@1.2.7", false),
            (
                "wasi:io/poll@0.2.0-rc-2023-11-10",
                "wasi:io/poll@0.2.0-rc-2023-11-10",
                true,
            ),
            (
                "wasi:io/poll@0.2.0",
                "wasi:io/poll@0.2.0-rc-2023-11-10",
                false,
            ),
            ("wasi_snapshot_preview1", "wasi_snapshot_preview1", true),
            ("wasi_snapshot_preview1", "wasi_unstable", false),
            (
                "wasi:cli/environment@0.2.6",
                "wasi_snapshot_preview1",
                false,
            ),
        ];
        for (have, want, ok) in cases {
            assert_eq!(provides(have, want), ok, "{have} provides {want}");
        }
        let ranges = [
            ("wasi:sockets/tcp@0.2.3", "wasi:sockets/tcp@0.2.x"),
            ("wasi:http/types@1.2.7", "wasi:http/types@1.2.x"),
            ("wasi_snapshot_preview1", "wasi_snapshot_preview1"),
            ("wasi:io/poll@0.2.0-rc-1", "wasi:io/poll@0.2.0-rc-1"),
        ];
        for (import, range) in ranges {
            assert_eq!(wanted_range(import), range, "{import}");
        }
    }

    #[test]
    fn interface_cases() {
        let p2 = &["wasi:cli/environment@0.2.6", "wasi:sockets/tcp@0.2.6"][..];
        let missing = |i: &str| Err(Reason::MissingInterface(i.into()));
        // (name, node's interfaces, module's imports, result)
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], Result<(), Reason>);
        let cases: Vec<Case> = vec![
            ("no imports", p2, &[], Ok(())),
            (
                "all provided",
                p2,
                &["wasi:cli/environment@0.2.0", "wasi:sockets/tcp@0.2.3"],
                Ok(()),
            ),
            (
                "first missing is named",
                &["wasi:cli/environment@0.2.6"],
                &["wasi:io/poll@0.2.0", "wasi:sockets/tcp@0.2.3"],
                missing("wasi:io/poll@0.2.x"),
            ),
            (
                "too old",
                &["wasi:sockets/tcp@0.2.0"],
                &["wasi:sockets/tcp@0.2.3"],
                missing("wasi:sockets/tcp@0.2.x"),
            ),
            (
                "core module",
                &["wasi_snapshot_preview1"],
                &["wasi_snapshot_preview1"],
                Ok(()),
            ),
            (
                "core module denied",
                p2,
                &["wasi_snapshot_preview1"],
                missing("wasi_snapshot_preview1"),
            ),
            (
                "a node that reports nothing is not checked",
                &[],
                &["wasi:sockets/tcp@0.2.3"],
                Ok(()),
            ),
        ];
        for (name, offered, imports, want) in cases {
            let n = node("a").interfaces(offered).state();
            let p = pod("p").module("sha256:m").build();
            assert_eq!(run(interfaces, vec![n], &p, imports), want, "{name}");
        }
        // A module the snapshot does not know asks nothing.
        let n = node("a").interfaces(p2).state();
        let p = pod("p").module("sha256:unknown").build();
        let snapshot = snapshot(vec![n], &pod("x").module("sha256:m").build(), &["nope"]);
        assert_eq!(
            interfaces(&snapshot.nodes[0], &PodInfo::new(&p, &snapshot)),
            Ok(())
        );
    }

    #[test]
    fn topology_spread_cases() {
        let web = || pod("w").label("app", "web");
        let zone = |n: &str, z: &str| node(n).label("zone", z);
        // The pod spreads app=web over zones with maxSkew 1.
        let me = || web().spread("zone", 1, DoNotSchedule, &[("app", "web")]);
        let bad = Err(Reason::TopologySpread);
        // (name, nodes (the first is filtered), pod, result)
        type Case<'a> = (&'a str, Vec<NodeB>, PodB, Result<(), Reason>);
        let cases: Vec<Case> = vec![
            (
                "empty zones",
                vec![zone("a", "1"), zone("b", "2")],
                me(),
                Ok(()),
            ),
            (
                "into the fuller zone",
                vec![zone("a", "1").running(web()), zone("b", "2")],
                me(),
                bad.clone(),
            ),
            (
                "into the emptier zone",
                vec![zone("b", "2"), zone("a", "1").running(web())],
                me(),
                Ok(()),
            ),
            (
                "maxSkew 2 allows it",
                vec![zone("a", "1").running(web()), zone("b", "2")],
                web().spread("zone", 2, DoNotSchedule, &[("app", "web")]),
                Ok(()),
            ),
            (
                "other labels do not count",
                vec![
                    zone("a", "1").running(pod("db").label("app", "db")),
                    zone("b", "2"),
                ],
                me(),
                Ok(()),
            ),
            (
                "other namespaces do not count",
                vec![
                    zone("a", "1").running(web().namespace("other")),
                    zone("b", "2"),
                ],
                me(),
                Ok(()),
            ),
            (
                "terminating pods do not count",
                vec![zone("a", "1").running_terminating(web()), zone("b", "2")],
                me(),
                Ok(()),
            ),
            (
                "a node without the key is filtered",
                vec![node("a"), zone("b", "2")],
                me(),
                bad.clone(),
            ),
            (
                "a domain the pod may not use does not count as the minimum",
                vec![
                    zone("a", "1").label("ok", "y").running(web()),
                    zone("b", "2"),
                ],
                me().selector("ok", "y"),
                Ok(()),
            ),
            (
                "the pod not selected by its own constraint adds nothing",
                vec![zone("a", "1").running(web()), zone("b", "2")],
                pod("w").spread("zone", 1, DoNotSchedule, &[("app", "web")]),
                Ok(()),
            ),
            (
                "ScheduleAnyway does not filter",
                vec![zone("a", "1").running(web()).running(web()), zone("b", "2")],
                web().spread("zone", 1, ScheduleAnyway, &[("app", "web")]),
                Ok(()),
            ),
            (
                "a skewed spread may move towards balance",
                vec![
                    zone("b", "2").running(web()),
                    zone("a", "1")
                        .running(web())
                        .running(web())
                        .running(web())
                        .running(web()),
                ],
                me(),
                Ok(()),
            ),
        ];
        for (name, nodes, p, want) in cases {
            let nodes = nodes.into_iter().map(NodeB::state).collect();
            assert_eq!(run(topology_spread, nodes, &p.build(), &[]), want, "{name}");
        }
    }

    #[test]
    fn check_takes_the_first_failure() {
        let cases: Vec<(&str, NodeB, PodB, Result<(), Reason>)> = vec![
            ("fits", node("a"), pod("p"), Ok(())),
            (
                "not ready before cordoned",
                node("a").not_ready().cordoned(),
                pod("p"),
                Err(Reason::NotReady),
            ),
            (
                "selector before resources",
                node("a"),
                pod("p").selector("x", "y").mem("2Gi"),
                Err(Reason::NodeAffinity),
            ),
            (
                "resources before interfaces",
                node("a").interfaces(&["wasi:cli/environment@0.2.6"]),
                pod("p").mem("2Gi").module("sha256:m"),
                Err(Reason::Insufficient {
                    cpu: false,
                    memory: true,
                    pods: false,
                }),
            ),
        ];
        for (name, n, p, want) in cases {
            let p = p.build();
            assert_eq!(
                run(check, vec![n.state()], &p, &["wasi:io/poll@0.2.0"]),
                want,
                "{name}"
            );
        }
        // Without the resources filter the interface check is reached.
        let p = pod("p").mem("2Gi").module("sha256:m").build();
        let n = node("a")
            .interfaces(&["wasi:cli/environment@0.2.6"])
            .state();
        assert_eq!(
            run(check_except_resources, vec![n], &p, &["wasi:io/poll@0.2.0"]),
            Err(Reason::MissingInterface("wasi:io/poll@0.2.x".into()))
        );
    }

    #[test]
    fn message_cases() {
        let gpu = Reason::Taint {
            key: "dedicated".into(),
            value: "gpu".into(),
        };
        let mem = Reason::Insufficient {
            cpu: false,
            memory: true,
            pods: false,
        };
        let both = Reason::Insufficient {
            cpu: true,
            memory: true,
            pods: false,
        };
        let cases: Vec<(usize, Vec<Reason>, &str)> = vec![
            (
                5,
                vec![
                    Reason::NodeAffinity,
                    mem.clone(),
                    gpu.clone(),
                    mem.clone(),
                    Reason::NodeAffinity,
                ],
                "0/5 nodes are available: 2 Insufficient memory, \
                 2 node(s) didn't match Pod's node affinity/selector, \
                 1 node(s) had untolerated taint {dedicated: gpu}.",
            ),
            (
                3,
                vec![both, mem, Reason::NotReady],
                "0/3 nodes are available: 2 Insufficient memory, 1 Insufficient cpu, \
                 1 node(s) were not ready.",
            ),
            (
                4,
                vec![
                    Reason::Unschedulable,
                    Reason::TopologySpread,
                    Reason::MissingInterface("wasi:sockets/tcp@0.2.x".into()),
                    Reason::Insufficient {
                        cpu: false,
                        memory: false,
                        pods: true,
                    },
                ],
                "0/4 nodes are available: 1 Too many pods, \
                 1 node(s) didn't match pod topology spread constraints, \
                 1 node(s) do not provide wasi:sockets/tcp@0.2.x, \
                 1 node(s) were unschedulable.",
            ),
            (
                1,
                vec![Reason::Taint {
                    key: "x".into(),
                    value: String::new(),
                }],
                "0/1 nodes are available: 1 node(s) had untolerated taint {x}.",
            ),
        ];
        for (total, reasons, want) in cases {
            assert_eq!(unschedulable_message(total, &reasons), want);
        }
    }
}
