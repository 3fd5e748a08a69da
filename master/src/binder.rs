//! Binding: puts each pending pod on a Ready node whose labels match its
//! `nodeSelector`, spreading pods over the fewest-loaded nodes. The decision
//! is [`pick_node`], a pure function; [`run`] feeds it from a watch and
//! writes the binding with compare-and-swap through the API core (as a
//! controller), so a pod is never bound twice. It runs only on the leader.

use crate::apiserver::{ApiServer, Caller};
use crate::store::{Store, StoreError};
use flotilla_api::objects::{condition, PodCondition};
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::selector::Selector;
use flotilla_api::time::Time;
use flotilla_api::{Kind, Node, Object, Pod};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why no node fits a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable(pub String);

/// Picks a node for `pod`: Ready, schedulable, matching the selector; among
/// those the one with the fewest pods (ties by name, for determinism).
pub fn pick_node(
    pod: &Pod,
    nodes: &[Node],
    pods_per_node: &BTreeMap<String, usize>,
) -> Result<String, Unschedulable> {
    let selector = Selector::from_map(&pod.spec.node_selector);
    let (mut not_ready, mut cordoned, mut mismatch) = (0, 0, 0);
    let mut best: Option<(&str, usize)> = None;
    for n in nodes {
        if !n.is_ready() {
            not_ready += 1;
            continue;
        }
        if n.spec.unschedulable {
            cordoned += 1;
            continue;
        }
        if !selector.matches(&n.metadata.labels) {
            mismatch += 1;
            continue;
        }
        let load = pods_per_node.get(&n.metadata.name).copied().unwrap_or(0);
        if best.is_none_or(|(name, l)| (load, n.metadata.name.as_str()) < (l, name)) {
            best = Some((&n.metadata.name, load));
        }
    }
    match best {
        Some((name, _)) => Ok(name.to_string()),
        None if nodes.is_empty() => Err(Unschedulable("no nodes have joined the cluster (`flotilla token create`, then `flotilla node --token ...`)".into())),
        None => Err(Unschedulable(format!(
            "0/{} nodes are available: {not_ready} not ready, {cordoned} unschedulable, {mismatch} do not match the pod's nodeSelector",
            nodes.len()
        ))),
    }
}

/// Binds pending pods until `shutdown` fires. Level-triggered: every change
/// (or a periodic tick) re-examines all unbound pods.
pub async fn run(api: ApiServer, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = bind_loop(&api, &shutdown) => r,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "binder failed; restarting");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Pending pods are re-examined at least this often, so that one whose
/// node appears later (or becomes Ready) is bound without another event.
const RESYNC: Duration = Duration::from_secs(1);

async fn bind_loop(api: &ApiServer, shutdown: &CancellationToken) -> Result<(), BindError> {
    let store = &api.store;
    let mut watch = store.watch(store.revision()?)?;
    let mut last_reason: BTreeMap<String, String> = BTreeMap::new();
    loop {
        bind_pending(api, &mut last_reason).await?;
        // Wait for a relevant change, then drain whatever else arrived.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ev = watch.next() => { ev?; }
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
}

/// Why a pass of the binder stopped.
#[derive(Debug, thiserror::Error)]
enum BindError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// Whether a refused write only lost a race (the next pass looks again).
fn lost_race(e: &ApiError) -> bool {
    matches!(e.code, ErrorCode::Conflict | ErrorCode::NotFound)
}

const ME: Caller = Caller::Controller("binder");

async fn bind_pending(
    api: &ApiServer,
    last_reason: &mut BTreeMap<String, String>,
) -> Result<(), BindError> {
    let store: &Store = &api.store;
    let everything = Selector::default();
    let (_, pods) = store.list(Kind::Pod, None, &everything)?;
    let pending: Vec<Pod> = pods
        .iter()
        .filter_map(Object::as_pod)
        .filter(|p| p.spec.node_name.is_none())
        .cloned()
        .collect();
    if pending.is_empty() {
        last_reason.clear();
        return Ok(());
    }
    let (_, nodes) = store.list(Kind::Node, None, &everything)?;
    let nodes: Vec<Node> = nodes.iter().filter_map(Object::as_node).cloned().collect();
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for p in pods.iter().filter_map(Object::as_pod) {
        if let (Some(n), false) = (&p.spec.node_name, p.status.phase.is_terminal()) {
            *load.entry(n.clone()).or_default() += 1;
        }
    }
    for mut pod in pending {
        let key = format!("{}/{}", pod.metadata.namespace, pod.metadata.name);
        match pick_node(&pod, &nodes, &load) {
            Ok(node) => {
                let rv = pod.metadata.resource_version;
                pod.spec.node_name = Some(node.clone());
                pod.metadata.resource_version = rv;
                match api.update(&ME, Object::Pod(pod.clone())).await {
                    Ok(_) => {
                        *load.entry(node.clone()).or_default() += 1;
                        last_reason.remove(&key);
                        // Record when it was scheduled, for `describe` and latency figures.
                        if let Ok(Some(Object::Pod(mut bound))) =
                            store.get(Kind::Pod, &pod.metadata.namespace, &pod.metadata.name)
                        {
                            let rv = bound.metadata.resource_version;
                            bound.status.set_condition(PodCondition {
                                type_: condition::POD_SCHEDULED.into(),
                                status: true,
                                last_transition_time: Some(Time::now()),
                                reason: "Scheduled".into(),
                                message: format!("bound to {node}"),
                            });
                            let _ = api.update_status_at(&ME, Object::Pod(bound), rv).await;
                        }
                        tracing::info!(pod = %key, %node, "bound pod");
                    }
                    // Someone changed it meanwhile; the next pass sees the new version.
                    Err(e) if lost_race(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(Unschedulable(reason)) => {
                if last_reason.get(&key) != Some(&reason) {
                    let rv = pod.metadata.resource_version;
                    pod.status.set_condition(PodCondition {
                        type_: condition::POD_SCHEDULED.into(),
                        status: false,
                        last_transition_time: Some(Time::now()),
                        reason: "Unschedulable".into(),
                        message: reason.clone(),
                    });
                    pod.status.reason = "Unschedulable".into();
                    pod.status.message = reason.clone();
                    match api.update_status_at(&ME, Object::Pod(pod), rv).await {
                        Ok(_) => {}
                        Err(e) if lost_race(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                    last_reason.insert(key, reason);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::objects::ReadyState;

    fn node(name: &str, ready: bool, arch: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = name.into();
        n.metadata
            .labels
            .insert(flotilla_api::labels::ARCH.into(), arch.into());
        n.status.ready = if ready {
            ReadyState::Ready
        } else {
            ReadyState::NotReady
        };
        n
    }

    fn pod(selector: &[(&str, &str)]) -> Pod {
        let mut p = Pod::default();
        p.spec.node_selector = selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p
    }

    #[test]
    fn placement_cases() {
        let arch = flotilla_api::labels::ARCH;
        let nodes = vec![
            node("a", true, "amd64"),
            node("b", true, "arm64"),
            node("c", false, "arm64"),
        ];
        let mut cordoned = node("d", true, "arm64");
        cordoned.spec.unschedulable = true;
        let with_cordoned: Vec<Node> = nodes.iter().cloned().chain([cordoned]).collect();
        let load = |pairs: &[(&str, usize)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        // (pod selector, nodes, load, expected node or error fragment)
        type Case<'a> = (
            Vec<(&'a str, &'a str)>,
            &'a [Node],
            BTreeMap<String, usize>,
            Result<&'a str, &'a str>,
        );
        let cases: Vec<Case> = vec![
            (vec![], &nodes, load(&[]), Ok("a")),
            (vec![], &nodes, load(&[("a", 2)]), Ok("b")),
            (vec![(arch, "arm64")], &nodes, load(&[("b", 9)]), Ok("b")),
            (
                vec![(arch, "arm")],
                &nodes,
                load(&[]),
                Err("2 do not match"),
            ),
            (vec![(arch, "arm64")], &with_cordoned, load(&[]), Ok("b")),
            (vec![], &[], load(&[]), Err("no nodes have joined")),
            (vec![], &nodes[2..], load(&[]), Err("1 not ready")),
        ];
        for (sel, nodes, load, want) in cases {
            let got = pick_node(&pod(&sel), nodes, &load);
            match want {
                Ok(n) => assert_eq!(got, Ok(n.to_string()), "{sel:?}"),
                Err(frag) => assert!(
                    got.as_ref().is_err_and(|e| e.0.contains(frag)),
                    "{sel:?}: {got:?}"
                ),
            }
        }
    }
}
