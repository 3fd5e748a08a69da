//! The scheduler's decisions: where each pending pod goes, as pure functions
//! of a snapshot of the cluster. No store, no clock, no async: the caller
//! builds a [`Snapshot`], calls [`schedule`] with the pending pods and writes
//! the [`Decision`]s it gets back (bindings, nominations and evictions,
//! Unschedulable conditions).
//!
//! Layout:
//! - this file: the input ([`Snapshot`], [`NodeState`], [`PodState`]), what
//!   is worked out once per pod ([`PodInfo`]), the output ([`Decision`]) and
//!   [`schedule`], the batch decision.
//! - [`filters`]: which nodes may take a pod, and why the others may not
//!   ([`filters::Reason`], [`filters::unschedulable_message`]).
//! - [`scores`]: how the nodes that may are ranked (weights documented there).
//! - [`preemption`]: which lower-priority pods to evict when no node may.
//! - `fixtures` (builders of nodes and pods) and `tests` (whole batches):
//!   test only; each other module tests its own functions as tables.
//!
//! A batch is decided in order (highest priority first, then oldest) and
//! every binding is applied to the snapshot before the next pod is looked
//! at, so a batch never puts two pods into one node's last free memory.

pub mod filters;
pub mod preemption;
pub mod scores;

#[cfg(test)]
mod fixtures;

use flotilla_api::objects::scheduling::{
    PreemptionPolicy, TopologySpreadConstraint, UnsatisfiableConstraintAction,
};
use flotilla_api::time::Time;
use flotilla_api::{Module, Node, Pod};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// Kubernetes' default `maxPods`, used for a node that reports no pod limit.
pub const DEFAULT_MAX_PODS: u64 = 110;

/// Names a pod: its key (`namespace/name`) and the uid, so a write can check
/// it still concerns the same pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl PodRef {
    /// The reference of a pod object.
    pub fn of(pod: &Pod) -> PodRef {
        PodRef {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
        }
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the scheduler needs to know of a pod bound to a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// The uid of the controller owner reference (its ReplicaSet, Job...).
    pub owner_uid: Option<String>,
    pub priority: i32,
    /// Reserved: [`flotilla_api::objects::ResourceRequirements::reserved`].
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// The module digest (`spec.module`).
    pub module: String,
    /// Preemption evicts the newest of equal-priority pods first (they have
    /// lost the least work).
    pub created: Option<Time>,
    /// Its deletion has been asked for (a preemption victim, say) but it
    /// still holds its resources. It is never picked as a victim again, it
    /// does not count towards spreading, and a pod nominated to its node
    /// waits for it rather than preempting more.
    pub terminating: bool,
    /// The persistent volumes it mounts (`namespace/name`): its node holds them.
    pub volumes: Vec<String>,
}

impl PodState {
    /// The state of a pod object (`terminating` false: the caller knows).
    pub fn from_pod(pod: &Pod) -> PodState {
        let (cpu_millis, memory_bytes) = pod.spec.resources.reserved();
        PodState {
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            labels: pod.metadata.labels.clone(),
            owner_uid: controller_uid(pod).map(str::to_string),
            priority: priority(pod),
            cpu_millis,
            memory_bytes,
            module: pod.spec.module.clone(),
            created: pod.metadata.creation_timestamp,
            terminating: false,
            volumes: flotilla_api::objects::volume::persistent(
                &pod.metadata.namespace,
                &pod.spec.volumes,
            )
            .map(|(key, _)| key)
            .collect(),
        }
    }

    /// Its reference, for decisions.
    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
        }
    }
}

/// A node, the pods bound to it that have not ended, and the pending pods
/// nominated to it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeState {
    pub node: Node,
    pub pods: Vec<PodState>,
    /// Pending pods nominated to this node by a preemption
    /// (`status.nominatedNodeName`): the room their victims free is kept
    /// for them against pods of lower priority, as in Kubernetes, however
    /// the pending pods are split into batches.
    pub nominated: Vec<PodState>,
    /// Nodes with the same `status.interfaces` share a number
    /// ([`Snapshot::index_interfaces`]), so that whether a module's imports
    /// are provided is worked out once per pod and list, not per node.
    /// None: not indexed (the list is then compared on its own).
    pub interfaces_id: Option<u32>,
}

/// What a node's pods hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u64,
}

impl NodeState {
    pub fn name(&self) -> &str {
        &self.node.metadata.name
    }

    /// What the bound pods reserve, terminating ones included (they still run).
    pub fn used(&self) -> Usage {
        usage(self.pods.iter())
    }

    /// What is taken as far as `pod` is concerned: the bound pods, and the
    /// pods nominated here of at least its priority (other than itself).
    pub fn used_for(&self, pod: &PodInfo) -> Usage {
        usage(self.pods.iter().chain(self.reserved_against(pod)))
    }

    /// The nominated pods whose room `pod` may not take.
    pub(crate) fn reserved_against<'a>(
        &'a self,
        pod: &'a PodInfo,
    ) -> impl Iterator<Item = &'a PodState> + 'a {
        self.nominated
            .iter()
            .filter(|n| n.priority >= pod.priority && n.uid != pod.pod.metadata.uid)
    }

    /// How many pods the node takes. A node that reports no limit (0) gets
    /// Kubernetes' default of 110, rather than no limit: every pod costs a
    /// node some memory and a task beyond what it requests.
    pub fn max_pods(&self) -> u64 {
        match self.node.allocatable().pods {
            0 => DEFAULT_MAX_PODS,
            n => u64::from(n),
        }
    }

    /// Whether a pod running `module` would find it here already: compiled
    /// in the node's cache, or run by a pod bound here.
    pub fn has_module(&self, module: &str) -> bool {
        !module.is_empty()
            && (self.node.status.modules.iter().any(|m| m == module)
                || self.pods.iter().any(|p| p.module == module))
    }
}

/// The sum of what `pods` reserve.
pub(crate) fn usage<'a>(pods: impl Iterator<Item = &'a PodState>) -> Usage {
    pods.fold(Usage::default(), |u, p| Usage {
        cpu_millis: u.cpu_millis.saturating_add(p.cpu_millis),
        memory_bytes: u.memory_bytes.saturating_add(p.memory_bytes),
        pods: u.pods.saturating_add(1),
    })
}

/// The cluster as the scheduler sees it for one batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub nodes: Vec<NodeState>,
    /// Module digest → the interfaces it imports ([`Module`]'s
    /// `status.imports`). A digest missing here, or with no imports, asks
    /// nothing of a node.
    pub module_imports: HashMap<String, Vec<String>>,
    /// Where the next pod's search for feasible nodes starts (see
    /// [`feasible_wanted`]): it moves on with every pod, so that in a large
    /// cluster every node gets its turn.
    pub next_start: usize,
    /// Which of the nodes tied for the best score a pod takes: the
    /// (`turn` modulo ties)-th by name ([`scores::best`]). It moves on by
    /// one with each call of [`schedule`] (the controller carries it over
    /// from batch to batch), so that pods that score the same everywhere
    /// and come one at a time (short-lived pods on idle nodes) spread
    /// rather than all go to the node whose name sorts first. Within one
    /// call it stays put: each placement lowers its node's score, which is
    /// enough to spread the pods, and a node then takes a few of them
    /// together. Kubernetes breaks such ties at random; turns keep a
    /// decision reproducible.
    pub turn: u64,
}

/// How many feasible nodes a pod's search stops at, of `total`: all of them
/// in a small cluster; in a large one a share that falls from half at 100
/// nodes to 5% at 5,625 and more, but never fewer than 100 — Kubernetes'
/// `percentageOfNodesToScore` rule. Filtering and scoring every node for
/// every pod would make a batch's cost grow with nodes × pods; a hundred or
/// more good candidates are enough to place a pod well.
pub fn feasible_wanted(total: usize) -> usize {
    const MIN: usize = 100;
    if total <= MIN {
        return total;
    }
    let percent = 50usize.saturating_sub(total / 125).max(5);
    (total * percent / 100).max(MIN)
}

impl Snapshot {
    /// A snapshot from listed objects: every node, each with the pods bound
    /// to it that have not ended and the unbound ones nominated to it (pods
    /// of a node not listed, other unbound pods and ended pods are left
    /// out), and the imports of every module.
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
        modules: impl IntoIterator<Item = &'a Module>,
    ) -> Snapshot {
        let mut nodes: Vec<NodeState> = nodes
            .into_iter()
            .map(|node| NodeState {
                node,
                ..NodeState::default()
            })
            .collect();
        nodes.sort_by(|a, b| a.name().cmp(b.name()));
        for pod in pods {
            if pod.status.phase.is_terminal() {
                continue;
            }
            let (name, nominated) = match (&pod.spec.node_name, &pod.status.nominated_node_name) {
                (Some(name), _) => (name, false),
                (None, Some(name)) => (name, true),
                (None, None) => continue,
            };
            if let Ok(i) = nodes.binary_search_by(|n| n.name().cmp(name)) {
                let state = PodState::from_pod(pod);
                if nominated {
                    nodes[i].nominated.push(state);
                } else {
                    nodes[i].pods.push(state);
                }
            }
        }
        let module_imports = modules
            .into_iter()
            .map(|m| (m.spec.digest.clone(), m.status.imports.clone()))
            .collect();
        Snapshot {
            nodes,
            module_imports,
            next_start: 0,
            turn: 0,
        }
    }

    /// The node of that name.
    /// Numbers the nodes' interface lists, equal lists alike (see
    /// [`NodeState::interfaces_id`]).
    pub fn index_interfaces(&mut self) {
        let mut ids: HashMap<&[String], u32> = HashMap::new();
        let mut assigned = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let next = ids.len() as u32;
            assigned.push(
                *ids.entry(n.node.status.interfaces.as_slice())
                    .or_insert(next),
            );
        }
        for (n, id) in self.nodes.iter_mut().zip(assigned) {
            n.interfaces_id = Some(id);
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeState> {
        self.nodes.iter().find(|n| n.name() == name)
    }

    fn node_mut(&mut self, name: &str) -> Option<&mut NodeState> {
        // Sorted by name when built by `new`; searched in order otherwise.
        match self.nodes.binary_search_by(|n| n.name().cmp(name)) {
            Ok(i) => self.nodes.get_mut(i),
            Err(_) => self.nodes.iter_mut().find(|n| n.name() == name),
        }
    }

    /// Counts `pod` as bound to `node` (a binding decided, or written and
    /// not yet listed): added to the node's pods unless there already (by
    /// uid), and no longer nominated anywhere.
    pub fn assume(&mut self, node: &str, pod: PodState) {
        self.forget_nomination(&pod.uid);
        if let Some(n) = self.node_mut(node) {
            if !n.pods.iter().any(|p| p.uid == pod.uid) {
                n.pods.push(pod);
            }
        }
    }

    /// Counts `pod` as nominated to `node`, and to no other node.
    pub fn nominate(&mut self, node: &str, pod: PodState) {
        self.forget_nomination(&pod.uid);
        if let Some(n) = self.node_mut(node) {
            n.nominated.push(pod);
        }
    }

    fn forget_nomination(&mut self, uid: &str) {
        for n in &mut self.nodes {
            n.nominated.retain(|p| p.uid != uid);
        }
    }
}

/// What to do with one pending pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Set `spec.nodeName` to `node` (compare-and-swap on the pod).
    Bind { pod: PodRef, node: String },
    /// No node can take the pod until `victims` (all of lower priority, on
    /// `node`) are deleted: nominate the pod to `node`
    /// (`status.nominatedNodeName`), delete the victims, and let a later
    /// batch bind it. The victims still count in this batch, as terminating.
    Preempt {
        pod: PodRef,
        node: String,
        victims: Vec<PodRef>,
    },
    /// No node can take the pod: `message` says why, in Kubernetes' shape
    /// (`0/5 nodes are available: 2 Insufficient memory, ...`).
    Unschedulable { pod: PodRef, message: String },
}

impl Decision {
    /// The pod the decision is about.
    pub fn pod(&self) -> &PodRef {
        match self {
            Decision::Bind { pod, .. }
            | Decision::Preempt { pod, .. }
            | Decision::Unschedulable { pod, .. } => pod,
        }
    }
}

/// A pod's priority (`spec.priority`, 0 when the master set none).
pub fn priority(pod: &Pod) -> i32 {
    pod.spec.priority.unwrap_or(0)
}

/// The uid of the pod's controller owner reference.
pub fn controller_uid(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .iter()
        .find(|o| o.controller)
        .map(|o| o.uid.as_str())
}

/// The order in which a batch is decided: highest priority first, then the
/// oldest, then by key.
pub fn queue_order(a: &Pod, b: &Pod) -> std::cmp::Ordering {
    priority(b)
        .cmp(&priority(a))
        .then_with(|| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        })
        .then_with(|| a.metadata.namespace.cmp(&b.metadata.namespace))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// Decides where each of `pending` goes, in [`queue_order`]. Each binding
/// is added to `snapshot` ([`Snapshot::assume`]) before the next pod is
/// decided; a preempting pod is nominated there ([`Snapshot::nominate`]) and
/// its victims stay, marked terminating (they hold their resources until
/// really deleted, and no later pod picks them again). Pods that already
/// name a node are skipped. One decision per other pod, in the order made.
pub fn schedule(pending: &[Pod], snapshot: &mut Snapshot) -> Vec<Decision> {
    let mut queue: Vec<&Pod> = pending
        .iter()
        .filter(|p| p.spec.node_name.is_none())
        .collect();
    queue.sort_by(|a, b| queue_order(a, b));
    // Once per snapshot: the controller decides a snapshot's pods in parts.
    if snapshot.nodes.iter().any(|n| n.interfaces_id.is_none()) {
        snapshot.index_interfaces();
    }
    let mut decisions = Vec::with_capacity(queue.len());
    for pod in queue {
        let (decision, looked_at) = decide_counting(pod, snapshot);
        // The next pod's search starts where this one's stopped, so that
        // every node of a large cluster gets its turn (as Kubernetes does).
        snapshot.next_start = snapshot.next_start.wrapping_add(looked_at);
        match &decision {
            Decision::Bind { node, .. } => snapshot.assume(node, PodState::from_pod(pod)),
            // The victims keep their resources until they are deleted; as
            // terminating, no later pod of the batch picks them again.
            Decision::Preempt { node, victims, .. } => {
                snapshot.nominate(node, PodState::from_pod(pod));
                if let Some(n) = snapshot.node_mut(node) {
                    for p in &mut n.pods {
                        if victims.iter().any(|v| {
                            v.uid == p.uid && v.name == p.name && v.namespace == p.namespace
                        }) {
                            p.terminating = true;
                        }
                    }
                }
            }
            Decision::Unschedulable { .. } => {}
        }
        decisions.push(decision);
    }
    snapshot.turn = snapshot.turn.wrapping_add(1);
    decisions
}

/// The decision for one pod against the snapshot as it is.
pub fn decide(pod: &Pod, snapshot: &Snapshot) -> Decision {
    decide_counting(pod, snapshot).0
}

/// [`decide`], with how many nodes were looked at.
fn decide_counting(pod: &Pod, snapshot: &Snapshot) -> (Decision, usize) {
    let me = PodRef::of(pod);
    if snapshot.nodes.is_empty() {
        let message = filters::NO_NODES.to_string();
        return (Decision::Unschedulable { pod: me, message }, 0);
    }
    let info = PodInfo::new(pod, snapshot);
    let mut feasible = Vec::new();
    let mut reasons = Vec::new();
    let total = snapshot.nodes.len();
    let wanted = feasible_wanted(total);
    let start = snapshot.next_start % total;
    let mut looked_at = 0;
    for i in 0..total {
        let n = &snapshot.nodes[(start + i) % total];
        looked_at += 1;
        match filters::check(n, &info) {
            Ok(()) => feasible.push(n),
            Err(r) => reasons.push(r),
        }
        if feasible.len() >= wanted {
            break;
        }
    }
    if let Some(best) = scores::best(&feasible, &info, snapshot.turn) {
        let node = best.name().to_string();
        return (Decision::Bind { pod: me, node }, looked_at);
    }
    let mut message = filters::unschedulable_message(snapshot.nodes.len(), &reasons);
    if let Some(node) = preemption::waiting_on(snapshot, &info) {
        message.push_str(&format!(
            " Waiting for preempted pods to stop on node {node}."
        ));
        return (Decision::Unschedulable { pod: me, message }, looked_at);
    }
    if info.may_preempt() {
        if let Some(p) = preemption::plan(snapshot, &info) {
            let decision = Decision::Preempt {
                pod: me,
                node: p.node,
                victims: p.victims,
            };
            return (decision, looked_at);
        }
    }
    (Decision::Unschedulable { pod: me, message }, looked_at)
}

/// What the filters and scores need of one pending pod, worked out once
/// per decision.
#[derive(Debug, Clone)]
pub struct PodInfo<'a> {
    pub pod: &'a Pod,
    pub priority: i32,
    /// Reserved millicores and bytes.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// What the pod's module imports (empty: asks nothing).
    pub imports: &'a [String],
    pub owner_uid: Option<&'a str>,
    /// One per topology spread constraint, in the pod's order.
    pub spread: Vec<SpreadCounts<'a>>,
    /// Per [`NodeState::interfaces_id`]: the first import the list lacks
    /// (None: all provided), worked out the first time it is asked.
    pub interfaces_checked: std::cell::RefCell<HashMap<u32, Option<String>>>,
    /// Per persistent volume the pod mounts that is somewhere already (or
    /// names its node): the volume and the nodes that hold it.
    pub volume_nodes: Vec<(String, BTreeSet<&'a str>)>,
}

/// How the pods one spread constraint selects are spread now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadCounts<'a> {
    pub constraint: &'a TopologySpreadConstraint,
    /// Value of the topology key → selected pods on the nodes with that
    /// value; over the nodes that have the key and match the pod's
    /// nodeSelector and required affinity (a domain with no pod is 0).
    pub counts: BTreeMap<&'a str, u64>,
    /// Whether the pod itself is selected (placing it adds one).
    pub self_match: bool,
}

impl SpreadCounts<'_> {
    /// The count of the least-populated domain (0 when there is none).
    pub fn min(&self) -> u64 {
        self.counts.values().copied().min().unwrap_or(0)
    }

    /// How far above the least-populated domain placing the pod in domain
    /// `value` leaves that domain.
    pub fn skew_if_placed(&self, value: &str) -> u64 {
        let count = self.counts.get(value).copied().unwrap_or(0) + u64::from(self.self_match);
        count.saturating_sub(self.min())
    }

    /// The constraint's `maxSkew` (at least 1, as validation requires).
    pub fn max_skew(&self) -> u64 {
        u64::from(self.constraint.max_skew.max(1).unsigned_abs())
    }

    pub fn is_hard(&self) -> bool {
        self.constraint.when_unsatisfiable == UnsatisfiableConstraintAction::DoNotSchedule
    }
}

impl<'a> PodInfo<'a> {
    /// Works out what the pod asks for against `snapshot`.
    pub fn new(pod: &'a Pod, snapshot: &'a Snapshot) -> PodInfo<'a> {
        let (cpu_millis, memory_bytes) = pod.spec.resources.reserved();
        let imports = snapshot
            .module_imports
            .get(&pod.spec.module)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let spread = pod
            .spec
            .topology_spread_constraints
            .iter()
            .map(|c| spread_counts(c, pod, &snapshot.nodes))
            .collect();
        let volume_nodes =
            flotilla_api::objects::volume::persistent(&pod.metadata.namespace, &pod.spec.volumes)
                .filter_map(|(key, named)| {
                    let holders = volume_holders(&key, &snapshot.nodes);
                    // A volume that names its node is there, or is made there: a
                    // copy of it elsewhere would be another volume of the same name.
                    let holders: BTreeSet<&str> = match named {
                        "" => holders,
                        named if holders.is_empty() || holders.contains(named) => {
                            BTreeSet::from([named])
                        }
                        _ => BTreeSet::new(),
                    };
                    (!named.is_empty() || !holders.is_empty()).then_some((key, holders))
                })
                .collect();
        PodInfo {
            volume_nodes,
            pod,
            priority: priority(pod),
            cpu_millis,
            memory_bytes,
            imports,
            owner_uid: controller_uid(pod),
            spread,
            interfaces_checked: Default::default(),
        }
    }

    /// Whether the pod may evict lower-priority pods to fit.
    pub fn may_preempt(&self) -> bool {
        self.pod.spec.preemption_policy != Some(PreemptionPolicy::Never)
    }
}

/// The nodes that hold the persistent volume `key`: those that report it,
/// and those with a pod (bound, or nominated) that mounts it.
fn volume_holders<'a>(key: &str, nodes: &'a [NodeState]) -> BTreeSet<&'a str> {
    nodes
        .iter()
        .filter(|n| {
            n.node.status.volumes.iter().any(|v| v == key)
                || n.pods
                    .iter()
                    .chain(&n.nominated)
                    .any(|p| p.volumes.iter().any(|v| v == key))
        })
        .map(NodeState::name)
        .collect()
}

fn spread_counts<'a>(
    c: &'a TopologySpreadConstraint,
    pod: &Pod,
    nodes: &'a [NodeState],
) -> SpreadCounts<'a> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for n in nodes {
        let Some(value) = n.node.metadata.labels.get(&c.topology_key) else {
            continue;
        };
        if !filters::matches_node_selection(&n.node, pod) {
            continue;
        }
        let selected = match &c.label_selector {
            // As in Kubernetes, no selector selects no pod.
            None => 0,
            Some(sel) => n
                .pods
                .iter()
                .filter(|q| {
                    !q.terminating
                        && q.namespace == pod.metadata.namespace
                        && sel.matches(&q.labels)
                })
                .count() as u64,
        };
        *counts.entry(value.as_str()).or_default() += selected;
    }
    SpreadCounts {
        constraint: c,
        counts,
        self_match: c
            .label_selector
            .as_ref()
            .is_some_and(|s| s.matches(&pod.metadata.labels)),
    }
}

#[cfg(test)]
mod tests;
