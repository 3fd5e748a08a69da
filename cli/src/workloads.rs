//! `flotilla scale` and `flotilla rollout`: what people do to Deployments
//! (and ReplicaSets) besides applying them. Each change reads the object,
//! changes it and writes it back with compare-and-swap, trying again if it
//! changed meanwhile (its controller writes its status often).

use crate::commands::connect;
use anyhow::{anyhow, bail};
use flotilla_api::net::{Client, NetError};
use flotilla_api::objects::deployment::{condition, reason};
use flotilla_api::objects::workload::{
    find_condition, ConditionStatus, CHANGE_CAUSE, POD_TEMPLATE_HASH, RESTARTED_AT, REVISION,
};
use flotilla_api::objects::{Deployment, ReplicaSet};
use flotilla_api::protocol::{ApiError, ErrorCode, ListOptions, Propagation, Request, Response};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Object};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `delete --cascade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Cascade {
    Background,
    Foreground,
    Orphan,
}

impl From<Cascade> for Propagation {
    fn from(c: Cascade) -> Propagation {
        match c {
            Cascade::Background => Propagation::Background,
            Cascade::Foreground => Propagation::Foreground,
            Cascade::Orphan => Propagation::Orphan,
        }
    }
}

/// `flotilla rollout ...`
#[derive(clap::Subcommand, Debug)]
pub enum RolloutCommand {
    /// Wait until the rollout is done, printing its progress; exits 1 if it
    /// missed its progress deadline (or `--timeout` passed).
    Status {
        /// `deployment/NAME`, or `deployment NAME`.
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Give up after this long (e.g. 90s, 5m); by default wait for the
        /// rollout's own progress deadline.
        #[arg(long)]
        timeout: Option<String>,
    },
    /// The revisions kept (old ReplicaSets), with their change causes.
    History {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Show this revision's pod template.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Go back to the previous revision (or `--to-revision N`).
    Undo {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Stop rolling out template changes (scaling goes on).
    Pause {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Roll out again after `pause`.
    Resume {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Replace every pod, one rollout step at a time (the template gets a
    /// `flotilla.dev/restartedAt` annotation).
    Restart {
        #[arg(required = true, num_args = 1..=2)]
        target: Vec<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

/// `deploy/web` or `deploy web`: the kind and name.
pub fn parse_target(target: &[String]) -> anyhow::Result<(Kind, String)> {
    let (kind, name) = match target {
        [one] => one
            .split_once('/')
            .ok_or_else(|| anyhow!("{one:?}: write KIND/NAME (deploy/web) or KIND NAME"))?,
        [kind, name] => (kind.as_str(), name.as_str()),
        _ => bail!("write KIND/NAME (deploy/web) or KIND NAME"),
    };
    let kind = crate::listing::parse_kind(kind)?;
    if name.is_empty() {
        bail!("name the {}", kind.as_str().to_lowercase());
    }
    Ok((kind, name.to_string()))
}

pub(crate) fn api_error(e: NetError) -> anyhow::Error {
    match e {
        NetError::Api(e) => anyhow!("{} ({:?})", e.message, e.code),
        e => anyhow!("{e}"),
    }
}

pub(crate) async fn get(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Object> {
    let req = Request::Get {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        stale: false,
    };
    match client.call(&req).await.map_err(api_error)? {
        Response::Object(o) => Ok(o),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Reads an object, lets `change` change it (false: nothing to write) and
/// writes it back with compare-and-swap, again if it changed meanwhile.
pub(crate) async fn update(
    client: &Client,
    kind: Kind,
    namespace: &str,
    name: &str,
    change: &dyn Fn(&mut Object) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    for _ in 0..10 {
        let mut o = get(client, kind, namespace, name).await?;
        if !change(&mut o)? {
            return Ok(false);
        }
        match client.call(&Request::Update(o)).await {
            Ok(_) => return Ok(true),
            Err(NetError::Api(ApiError {
                code: ErrorCode::Conflict,
                ..
            })) => continue,
            Err(e) => return Err(api_error(e)),
        }
    }
    bail!("{kind} {name} kept changing while it was updated; try again")
}

fn deployment_only(kind: Kind, what: &str) -> anyhow::Result<()> {
    if kind != Kind::Deployment {
        bail!("{what} works on deployments: `flotilla rollout {what} deployment/NAME`");
    }
    Ok(())
}

/// `flotilla scale KIND/NAME --replicas N`.
pub async fn scale(
    config: &Path,
    target: &[String],
    replicas: u32,
    namespace: &str,
) -> anyhow::Result<ExitCode> {
    let (kind, name) = parse_target(target)?;
    if !matches!(kind, Kind::Deployment | Kind::ReplicaSet) {
        bail!("only deployments and replicasets scale: `flotilla scale deploy/{name} --replicas {replicas}`");
    }
    let client = connect(config).await?;
    update(&client, kind, namespace, &name, &|o| {
        Ok(match o {
            Object::Deployment(d) => d.spec.replicas.replace(replicas) != Some(replicas),
            Object::ReplicaSet(rs) => rs.spec.replicas.replace(replicas) != Some(replicas),
            _ => false,
        })
    })
    .await?;
    println!("{}/{name} scaled", kind.as_str().to_lowercase());
    Ok(ExitCode::SUCCESS)
}

/// The Service `expose` makes for `obj` (a Deployment, ReplicaSet,
/// DaemonSet or Pod): its pods' labels as the selector, one port.
pub fn service_for(
    obj: &Object,
    name: Option<&str>,
    port: u16,
    target_port: Option<u16>,
) -> anyhow::Result<flotilla_api::objects::service::Service> {
    use flotilla_api::objects::service::{Service, ServicePort, ServiceSpec};
    let m = obj.meta();
    let selector = match obj {
        Object::Deployment(d) => Some(&d.spec.selector),
        Object::ReplicaSet(r) => Some(&r.spec.selector),
        Object::DaemonSet(d) => Some(&d.spec.selector),
        Object::Pod(_) => None,
        other => bail!(
            "cannot expose a {}: expose a deployment, replicaset, daemonset or pod",
            other.kind().as_str().to_lowercase()
        ),
    };
    let labels = match selector {
        Some(s) if !s.match_expressions.is_empty() => bail!(
            "{} selects its pods with matchExpressions, which a Service's selector cannot say; write a Service manifest",
            obj.describe()
        ),
        Some(s) => s.match_labels.clone(),
        None => m.labels.clone(),
    };
    if labels.is_empty() {
        bail!(
            "{} has no labels to select its pods by; label it, or write a Service manifest",
            obj.describe()
        );
    }
    Ok(Service {
        metadata: flotilla_api::ObjectMeta::named(&m.namespace, name.unwrap_or(&m.name)),
        spec: ServiceSpec {
            selector: labels,
            ports: vec![ServicePort {
                port,
                target_port: target_port.filter(|t| *t != port),
                ..ServicePort::default()
            }],
            ..ServiceSpec::default()
        },
    })
}

/// `expose KIND/NAME --port P`: a Service for the object's pods.
pub async fn expose(
    config: &Path,
    target: &[String],
    port: u16,
    target_port: Option<u16>,
    name: Option<&str>,
    namespace: &str,
) -> anyhow::Result<ExitCode> {
    let (kind, obj_name) = parse_target(target)?;
    let client = connect(config).await?;
    let obj = match client
        .call(&Request::Get {
            kind,
            namespace: namespace.to_string(),
            name: obj_name.clone(),
            stale: false,
        })
        .await
        .map_err(api_error)?
    {
        Response::Object(o) => o,
        other => bail!("unexpected answer {other:?}"),
    };
    let svc = service_for(&obj, name, port, target_port)?;
    let svc_name = svc.metadata.name.clone();
    crate::commands::create_on(
        &client,
        Object::Service(svc),
        "service",
        &svc_name,
        "exposed",
    )
    .await
}

/// Where a rollout stands, as `rollout status` says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RolloutState {
    Done(String),
    Waiting(String),
    Failed(String),
}

/// The state of `d`'s rollout, in kubectl's words.
pub fn rollout_state(d: &Deployment) -> RolloutState {
    let name = &d.metadata.name;
    let s = &d.status;
    if s.observed_generation < d.metadata.generation {
        return RolloutState::Waiting(
            "Waiting for deployment spec update to be observed...".to_string(),
        );
    }
    if let Some(c) = find_condition(&s.conditions, condition::PROGRESSING) {
        if c.status == ConditionStatus::False && c.reason == reason::DEADLINE_EXCEEDED {
            return RolloutState::Failed(format!(
                "deployment \"{name}\" exceeded its progress deadline"
            ));
        }
    }
    let want = d.spec.replicas();
    if s.updated_replicas < want {
        return RolloutState::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} out of {want} new replicas have been updated...",
            s.updated_replicas
        ));
    }
    if s.replicas > s.updated_replicas {
        return RolloutState::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
            s.replicas - s.updated_replicas
        ));
    }
    if s.available_replicas < s.updated_replicas {
        return RolloutState::Waiting(format!(
            "Waiting for deployment \"{name}\" rollout to finish: {} of {} updated replicas are available...",
            s.available_replicas, s.updated_replicas
        ));
    }
    RolloutState::Done(format!("deployment \"{name}\" successfully rolled out"))
}

/// The ReplicaSets a Deployment owns, oldest revision first.
async fn owned_sets(client: &Client, d: &Deployment) -> anyhow::Result<Vec<ReplicaSet>> {
    let list = Request::List(ListOptions {
        kind: Some(Kind::ReplicaSet),
        namespace: Some(d.metadata.namespace.clone()),
        label_selector: String::new(),
        node_name: None,
        stale: false,
    });
    let items = match client.call(&list).await.map_err(api_error)? {
        Response::List { items, .. } => items,
        other => bail!("unexpected answer {other:?}"),
    };
    let mut sets: Vec<ReplicaSet> = items
        .into_iter()
        .filter_map(|o| o.into_kind::<ReplicaSet>())
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .any(|r| r.controller && r.uid == d.metadata.uid)
        })
        .collect();
    sets.sort_by_key(revision);
    Ok(sets)
}

fn revision(rs: &ReplicaSet) -> u64 {
    rs.metadata
        .annotations
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

/// The revision `undo` goes back to: `to`, or the newest below the
/// current one (the set whose template is the Deployment's).
pub fn undo_target<'a>(
    d: &Deployment,
    sets: &'a [ReplicaSet],
    to: Option<u64>,
) -> anyhow::Result<&'a ReplicaSet> {
    let current = sets
        .iter()
        .find(|rs| rs.spec.template.same_as(&d.spec.template))
        .map(revision);
    match to {
        Some(n) => sets
            .iter()
            .find(|rs| revision(rs) == n)
            .ok_or_else(|| anyhow!("no revision {n} of deployment/{}; `flotilla rollout history deployment/{}` lists them", d.metadata.name, d.metadata.name)),
        None => sets
            .iter()
            .filter(|rs| Some(revision(rs)) != current)
            .filter(|rs| current.is_none_or(|c| revision(rs) < c))
            .max_by_key(|rs| revision(rs))
            .ok_or_else(|| anyhow!("deployment/{} has no previous revision to go back to", d.metadata.name)),
    }
}

/// `flotilla rollout ...`.
pub async fn rollout(config: &Path, cmd: RolloutCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RolloutCommand::Status {
            target,
            namespace,
            timeout,
        } => {
            let (kind, name) = parse_target(&target)?;
            deployment_only(kind, "status")?;
            let limit = timeout
                .map(|t| crate::commands::parse_duration(&t))
                .transpose()?;
            status(config, &namespace, &name, limit).await
        }
        RolloutCommand::History {
            target,
            namespace,
            revision: shown,
        } => {
            let (kind, name) = parse_target(&target)?;
            deployment_only(kind, "history")?;
            let client = connect(config).await?;
            let d = as_deployment(get(&client, kind, &namespace, &name).await?)?;
            let sets = owned_sets(&client, &d).await?;
            if let Some(n) = shown {
                let rs = sets
                    .iter()
                    .find(|rs| revision(rs) == n)
                    .ok_or_else(|| anyhow!("no revision {n} of deployment/{name}"))?;
                let mut template = rs.spec.template.clone();
                template.metadata.labels.remove(POD_TEMPLATE_HASH);
                println!("deployment/{name} with revision #{n}");
                print!("{}", serde_yaml::to_string(&template)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("deployment/{name}");
            let rows: Vec<Vec<String>> = sets
                .iter()
                .map(|rs| {
                    vec![
                        revision(rs).to_string(),
                        rs.metadata
                            .annotations
                            .get(CHANGE_CAUSE)
                            .cloned()
                            .unwrap_or_else(|| "<none>".into()),
                    ]
                })
                .collect();
            print!(
                "{}",
                crate::output::table(&["REVISION", "CHANGE-CAUSE"], &rows)
            );
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Undo {
            target,
            namespace,
            to_revision,
        } => {
            let (kind, name) = parse_target(&target)?;
            deployment_only(kind, "undo")?;
            let client = connect(config).await?;
            let d = as_deployment(get(&client, kind, &namespace, &name).await?)?;
            let sets = owned_sets(&client, &d).await?;
            let back = undo_target(&d, &sets, to_revision)?;
            let n = revision(back);
            let mut template = back.spec.template.clone();
            template.metadata.labels.remove(POD_TEMPLATE_HASH);
            let changed = update(&client, kind, &namespace, &name, &|o| {
                let Object::Deployment(d) = o else {
                    return Ok(false);
                };
                if d.spec.template == template {
                    return Ok(false);
                }
                d.spec.template = template.clone();
                Ok(true)
            })
            .await?;
            if changed {
                println!("deployment/{name} rolled back (to revision {n})");
            } else {
                println!(
                    "deployment/{name} skipped rollback (its template is already revision {n}'s)"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        RolloutCommand::Pause { target, namespace } => {
            set_paused(config, &target, &namespace, true).await
        }
        RolloutCommand::Resume { target, namespace } => {
            set_paused(config, &target, &namespace, false).await
        }
        RolloutCommand::Restart { target, namespace } => {
            let (kind, name) = parse_target(&target)?;
            deployment_only(kind, "restart")?;
            let client = connect(config).await?;
            let at = Time::now().to_string();
            update(&client, kind, &namespace, &name, &|o| {
                let Object::Deployment(d) = o else {
                    return Ok(false);
                };
                if d.spec.paused {
                    bail!("deployment/{name} is paused; resume it first (`flotilla rollout resume deployment/{name}`)");
                }
                d.spec
                    .template
                    .metadata
                    .annotations
                    .insert(RESTARTED_AT.into(), at.clone());
                Ok(true)
            })
            .await?;
            println!("deployment/{name} restarted");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn as_deployment(o: Object) -> anyhow::Result<Deployment> {
    o.into_kind::<Deployment>()
        .ok_or_else(|| anyhow!("not a deployment"))
}

async fn set_paused(
    config: &Path,
    target: &[String],
    namespace: &str,
    paused: bool,
) -> anyhow::Result<ExitCode> {
    let (kind, name) = parse_target(target)?;
    deployment_only(kind, if paused { "pause" } else { "resume" })?;
    let client = connect(config).await?;
    let changed = update(&client, kind, namespace, &name, &|o| {
        Ok(match o {
            Object::Deployment(d) => std::mem::replace(&mut d.spec.paused, paused) != paused,
            _ => false,
        })
    })
    .await?;
    let what = if paused { "paused" } else { "resumed" };
    if changed {
        println!("deployment/{name} {what}");
    } else {
        println!("deployment/{name} is already {what}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows a rollout until it is done, printing each new state. A master
/// that goes away, or a leader being elected, is waited out (connecting
/// again, to any master): the rollout goes on without them.
async fn status(
    config: &Path,
    namespace: &str,
    name: &str,
    limit: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let mut last = String::new();
    let mut client = Some(connect(config).await?);
    let req = Request::Get {
        kind: Kind::Deployment,
        namespace: namespace.to_string(),
        name: name.to_string(),
        stale: false,
    };
    loop {
        let answer = match &client {
            Some(c) => c.call(&req).await,
            None => match connect(config).await {
                Ok(c) => {
                    let answer = c.call(&req).await;
                    client = Some(c);
                    answer
                }
                Err(e) => Err(NetError::Connect(e.to_string())),
            },
        };
        match answer {
            Ok(Response::Object(o)) => match rollout_state(&as_deployment(o)?) {
                RolloutState::Done(m) => {
                    println!("{m}");
                    return Ok(ExitCode::SUCCESS);
                }
                RolloutState::Failed(m) => {
                    eprintln!("error: {m}");
                    return Ok(ExitCode::FAILURE);
                }
                RolloutState::Waiting(m) => {
                    if m != last {
                        println!("{m}");
                        last = m;
                    }
                }
            },
            Ok(other) => bail!("unexpected answer {other:?}"),
            Err(NetError::Api(e)) if e.code != ErrorCode::Unavailable => {
                bail!("{} ({:?})", e.message, e.code)
            }
            // The masters are changing leader, or this one went: again.
            Err(e) => {
                eprintln!("warning: {e}; trying again");
                if !matches!(e, NetError::Api(_)) {
                    client = None;
                }
            }
        }
        if limit.is_some_and(|l| start.elapsed() >= l) {
            eprintln!("error: timed out waiting for the rollout of deployment/{name}");
            return Ok(ExitCode::FAILURE);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_selects_by_the_workloads_match_labels_or_the_pods_labels() {
        let d: Object = flotilla_api::manifest::parse_manifests(
            "apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web, tier: front}}\n    spec: {module: sha256:0000000000000000000000000000000000000000000000000000000000000000}\n",
        )
        .expect("manifest")
        .remove(0);
        let s = service_for(&d, None, 8080, Some(80)).expect("service");
        assert_eq!(s.metadata.name, "web");
        assert_eq!(
            s.spec.selector,
            [("app".to_string(), "web".to_string())].into()
        );
        assert_eq!(
            (s.spec.ports[0].port, s.spec.ports[0].target_port),
            (8080, Some(80))
        );
        let s = service_for(&d, Some("front"), 8080, Some(8080)).expect("service");
        assert_eq!(
            (s.metadata.name.as_str(), s.spec.ports[0].target_port),
            ("front", None)
        );
        let mut bare = flotilla_api::Pod::default();
        bare.metadata.name = "p".into();
        let err = service_for(&Object::Pod(bare), None, 80, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no labels"), "{err}");
        let err = service_for(&Object::Namespace(Default::default()), None, 80, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot expose a namespace"), "{err}");
    }
    use flotilla_api::objects::deployment::DeploymentStatus;
    use flotilla_api::objects::workload::Condition;

    #[test]
    fn targets() {
        let t = |v: &[&str]| parse_target(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            t(&["deploy/web"]).ok(),
            Some((Kind::Deployment, "web".into()))
        );
        assert_eq!(
            t(&["rs", "web-1"]).ok(),
            Some((Kind::ReplicaSet, "web-1".into()))
        );
        assert!(t(&["web"]).is_err());
        assert!(t(&["nothing/web"]).is_err());
        assert!(t(&["deploy/"]).is_err());
    }

    #[test]
    fn rollout_states_in_kubectl_words() {
        let d = |generation, observed, replicas, updated, total, available, failed: bool| {
            let mut d = Deployment::default();
            d.metadata.name = "web".into();
            d.metadata.generation = generation;
            d.spec.replicas = Some(replicas);
            d.status = DeploymentStatus {
                observed_generation: observed,
                replicas: total,
                updated_replicas: updated,
                available_replicas: available,
                ..DeploymentStatus::default()
            };
            if failed {
                d.status.conditions.push(Condition {
                    type_: condition::PROGRESSING.into(),
                    status: ConditionStatus::False,
                    reason: reason::DEADLINE_EXCEEDED.into(),
                    ..Condition::default()
                });
            }
            rollout_state(&d)
        };
        let waiting = |m: &str| RolloutState::Waiting(m.into());
        assert_eq!(
            d(2, 1, 3, 3, 3, 3, false),
            waiting("Waiting for deployment spec update to be observed...")
        );
        assert_eq!(d(1, 1, 3, 1, 4, 3, false), waiting("Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."));
        assert_eq!(d(1, 1, 3, 3, 4, 3, false), waiting("Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination..."));
        assert_eq!(d(1, 1, 3, 3, 3, 2, false), waiting("Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available..."));
        assert_eq!(
            d(1, 1, 3, 3, 3, 3, false),
            RolloutState::Done("deployment \"web\" successfully rolled out".into())
        );
        assert!(matches!(d(1, 1, 3, 1, 4, 3, true), RolloutState::Failed(_)));
    }
}
