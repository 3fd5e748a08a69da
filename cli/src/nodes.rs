//! `flotilla taint`, `cordon`, `uncordon` and `drain`: what an admin
//! changes on a node's spec. Each reads the Node, changes it and writes it
//! back with compare-and-swap, trying again if the node changed meanwhile;
//! `drain` then evicts the node's pods.

use crate::commands::connect;
use anyhow::{anyhow, bail};
use flotilla_api::net::{Client, NetError};
use flotilla_api::objects::{Taint, TaintEffect};
use flotilla_api::protocol::{ApiError, ErrorCode, ListOptions, Request, Response};
use flotilla_api::{Kind, Node, Object, Pod};
use std::path::Path;
use std::process::ExitCode;

/// One argument of `flotilla taint`: a taint to add, or taints to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaintChange {
    /// `key=value:Effect` or `key:Effect`.
    Add(Taint),
    /// `key:Effect-` (that effect) or `key-` (every effect).
    Remove {
        key: String,
        effect: Option<TaintEffect>,
    },
}

fn effect(s: &str) -> anyhow::Result<TaintEffect> {
    match s {
        "NoSchedule" => Ok(TaintEffect::NoSchedule),
        "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
        "NoExecute" => Ok(TaintEffect::NoExecute),
        other => {
            bail!("{other:?} is not a taint effect; use NoSchedule, PreferNoSchedule or NoExecute")
        }
    }
}

/// Parses a taint argument as kubectl writes them.
pub fn parse_taint(arg: &str) -> anyhow::Result<TaintChange> {
    let usage = || {
        anyhow!("{arg:?} is not a taint; write key=value:Effect (or key:Effect) to add one, key:Effect- or key- to remove")
    };
    if let Some(rest) = arg.strip_suffix('-') {
        let (key, effect) = match rest.split_once(':') {
            Some((k, e)) => (k, Some(effect(e)?)),
            None => (rest, None),
        };
        if key.is_empty() || key.contains('=') {
            return Err(usage());
        }
        return Ok(TaintChange::Remove {
            key: key.to_string(),
            effect,
        });
    }
    let (kv, e) = arg.rsplit_once(':').ok_or_else(usage)?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        return Err(usage());
    }
    Ok(TaintChange::Add(Taint {
        key: key.to_string(),
        value: value.to_string(),
        effect: effect(e)?,
        time_added: Some(flotilla_api::time::Time::now()),
    }))
}

/// Applies taint changes to a node's taints; gives what happened, for people.
pub fn apply_taints(taints: &mut Vec<Taint>, changes: &[TaintChange]) -> anyhow::Result<()> {
    for c in changes {
        match c {
            TaintChange::Add(t) => {
                taints.retain(|x| !(x.key == t.key && x.effect == t.effect));
                taints.push(t.clone());
            }
            TaintChange::Remove { key, effect } => {
                let before = taints.len();
                taints.retain(|x| !(&x.key == key && effect.is_none_or(|e| e == x.effect)));
                if taints.len() == before {
                    bail!(
                        "the node has no taint {key}{}",
                        effect.map(|e| format!(":{e}")).unwrap_or_default()
                    );
                }
            }
        }
    }
    Ok(())
}

/// Reads node `name`, changes it with `change`, writes it back; tries again
/// when the node changed between the read and the write.
async fn update_node(
    client: &Client,
    name: &str,
    change: &dyn Fn(&mut Node) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    for _ in 0..5 {
        let get = Request::Get {
            kind: Kind::Node,
            namespace: String::new(),
            name: name.to_string(),
            stale: false,
        };
        let mut node = match client.call(&get).await {
            Ok(Response::Object(Object::Node(n))) => n,
            Ok(other) => bail!("unexpected answer {other:?}"),
            Err(NetError::Api(e)) => bail!("{} ({:?})", e.message, e.code),
            Err(e) => bail!("{e}"),
        };
        change(&mut node)?;
        match client.call(&Request::Update(Object::Node(node))).await {
            Ok(_) => return Ok(()),
            Err(NetError::Api(ApiError {
                code: ErrorCode::Conflict,
                ..
            })) => continue,
            Err(NetError::Api(e)) => bail!("{} ({:?})", e.message, e.code),
            Err(e) => bail!("{e}"),
        }
    }
    bail!("node {name} kept changing while it was updated; try again")
}

/// `flotilla taint node NAME TAINT...`
pub async fn taint(
    config: &Path,
    kind: &str,
    name: &str,
    args: &[String],
) -> anyhow::Result<ExitCode> {
    if Kind::parse(kind) != Some(Kind::Node) {
        bail!("only nodes have taints: `flotilla taint node NAME key=value:NoSchedule`");
    }
    if args.is_empty() {
        bail!(
            "name at least one taint, e.g. `flotilla taint node {name} dedicated=gpu:NoSchedule`"
        );
    }
    let changes = args
        .iter()
        .map(|a| parse_taint(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let client = connect(config).await?;
    update_node(&client, name, &|n| {
        apply_taints(&mut n.spec.taints, &changes)
    })
    .await?;
    let only_removals = changes
        .iter()
        .all(|c| matches!(c, TaintChange::Remove { .. }));
    println!(
        "node/{name} {}",
        if only_removals {
            "untainted"
        } else {
            "tainted"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// `flotilla cordon NAME` / `uncordon NAME`: whether new pods may go there.
pub async fn cordon(config: &Path, name: &str, unschedulable: bool) -> anyhow::Result<ExitCode> {
    let client = connect(config).await?;
    update_node(&client, name, &|n| {
        n.spec.unschedulable = unschedulable;
        Ok(())
    })
    .await?;
    println!(
        "node/{name} {}",
        if unschedulable {
            "cordoned"
        } else {
            "uncordoned"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The pods `drain` evicts, and the ones it refuses to (no controller
/// would make them again) unless forced. Pods that ended are left alone.
pub fn drain_plan(pods: &[Pod], force: bool) -> (Vec<&Pod>, Vec<&Pod>) {
    let active = pods.iter().filter(|p| !p.status.phase.is_terminal());
    let (owned, unowned): (Vec<&Pod>, Vec<&Pod>) =
        active.partition(|p| p.metadata.owner_references.iter().any(|r| r.controller));
    if force {
        (owned.into_iter().chain(unowned).collect(), Vec::new())
    } else {
        (owned, unowned)
    }
}

/// `flotilla drain NAME`: cordons the node, then evicts its pods (deletes
/// them: their owners make them again on other nodes). Pods no controller
/// owns would be gone for good: it refuses them, and evicts nothing,
/// unless `force`.
pub async fn drain(config: &Path, name: &str, force: bool) -> anyhow::Result<ExitCode> {
    let client = connect(config).await?;
    let list = Request::List(ListOptions {
        kind: Some(Kind::Pod),
        namespace: None,
        label_selector: String::new(),
        node_name: Some(name.to_string()),
        stale: false,
    });
    let pods: Vec<Pod> = match client.call(&list).await {
        Ok(Response::List { items, .. }) => {
            items.into_iter().filter_map(|o| o.into_kind()).collect()
        }
        Ok(other) => bail!("unexpected answer {other:?}"),
        Err(NetError::Api(e)) => bail!("{} ({:?})", e.message, e.code),
        Err(e) => bail!("{e}"),
    };
    let (evict, refused) = drain_plan(&pods, force);
    if !refused.is_empty() {
        let names: Vec<String> = refused
            .iter()
            .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
            .collect();
        bail!(
            "cannot drain node/{name}: these pods have no controller to make them again elsewhere: {}; \
             delete them, or drain with --force to delete them too",
            names.join(", ")
        );
    }
    update_node(&client, name, &|n| {
        n.spec.unschedulable = true;
        Ok(())
    })
    .await?;
    println!("node/{name} cordoned");
    let mut failed = false;
    for p in evict {
        let m = &p.metadata;
        let req = Request::Delete {
            kind: Kind::Pod,
            namespace: m.namespace.clone(),
            name: m.name.clone(),
            resource_version: m.resource_version,
        };
        match client.call(&req).await {
            Ok(_) => println!("pod/{} evicted", m.name),
            // Gone or changed meanwhile (it ended, or was replaced): nothing to evict.
            Err(NetError::Api(ApiError {
                code: ErrorCode::NotFound | ErrorCode::Conflict,
                ..
            })) => {}
            Err(e) => {
                eprintln!("error: evicting pod/{}: {e}", m.name);
                failed = true;
            }
        }
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    println!("node/{name} drained");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_evicts_owned_pods_and_refuses_the_others_unless_forced() {
        let pod = |name: &str, owned: bool, phase| {
            let mut p = Pod::default();
            p.metadata.name = name.into();
            p.status.phase = phase;
            if owned {
                p.metadata
                    .owner_references
                    .push(flotilla_api::meta::OwnerReference {
                        kind: "ReplicaSet".into(),
                        name: "web".into(),
                        uid: "u".into(),
                        controller: true,
                        ..Default::default()
                    });
            }
            p
        };
        use flotilla_api::objects::PodPhase::{Running, Succeeded};
        let pods = [
            pod("owned", true, Running),
            pod("lone", false, Running),
            pod("done", false, Succeeded),
        ];
        let names = |v: &[&Pod]| {
            v.iter()
                .map(|p| p.metadata.name.clone())
                .collect::<Vec<_>>()
        };
        let (evict, refused) = drain_plan(&pods, false);
        assert_eq!(
            (names(&evict), names(&refused)),
            (vec!["owned".to_string()], vec!["lone".to_string()])
        );
        let (evict, refused) = drain_plan(&pods, true);
        assert_eq!(names(&evict), ["owned", "lone"]);
        assert!(refused.is_empty());
    }

    #[test]
    fn taint_arguments_table() {
        let add = |k: &str, v: &str, e| {
            TaintChange::Add(Taint {
                key: k.into(),
                value: v.into(),
                effect: e,
                time_added: None,
            })
        };
        let cases: Vec<(&str, Option<TaintChange>)> = vec![
            (
                "dedicated=gpu:NoSchedule",
                Some(add("dedicated", "gpu", TaintEffect::NoSchedule)),
            ),
            (
                "edge:PreferNoSchedule",
                Some(add("edge", "", TaintEffect::PreferNoSchedule)),
            ),
            (
                "example.com/x=1:NoExecute",
                Some(add("example.com/x", "1", TaintEffect::NoExecute)),
            ),
            (
                "dedicated:NoSchedule-",
                Some(TaintChange::Remove {
                    key: "dedicated".into(),
                    effect: Some(TaintEffect::NoSchedule),
                }),
            ),
            (
                "dedicated-",
                Some(TaintChange::Remove {
                    key: "dedicated".into(),
                    effect: None,
                }),
            ),
            ("dedicated=gpu", None),
            ("dedicated=gpu:Sometimes", None),
            (":NoSchedule", None),
            ("-", None),
        ];
        for (arg, want) in cases {
            let got = parse_taint(arg).ok().map(|c| match c {
                TaintChange::Add(mut t) => {
                    t.time_added = None;
                    TaintChange::Add(t)
                }
                other => other,
            });
            assert_eq!(got, want, "{arg}");
        }
    }

    #[test]
    fn taints_replace_by_key_and_effect_and_removals_must_match() {
        let mut taints = Vec::new();
        let changes = |args: &[&str]| {
            args.iter()
                .map(|a| parse_taint(a).unwrap())
                .collect::<Vec<_>>()
        };
        apply_taints(
            &mut taints,
            &changes(&["a=1:NoSchedule", "a=2:NoSchedule", "a:NoExecute"]),
        )
        .unwrap();
        let shown: Vec<String> = taints.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a=2:NoSchedule", "a:NoExecute"]);
        apply_taints(&mut taints, &changes(&["a:NoExecute-"])).unwrap();
        assert_eq!(taints.len(), 1);
        assert!(apply_taints(&mut taints, &changes(&["b-"])).is_err());
        apply_taints(&mut taints, &changes(&["a-"])).unwrap();
        assert!(taints.is_empty());
    }
}
