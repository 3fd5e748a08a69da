//! What a pod reads from the cluster's data: the ConfigMaps and Secrets its
//! volumes mount and its environment names.
//!
//! Both are read from the master when the program starts (a Secret with its
//! values, which the master gives a node only for the pods bound to it), and
//! a running pod's volumes are read again every [`SYNC`] so that its files
//! follow the objects. Secret values are kept in memory only for as long as
//! a start takes; on disk they are only in the pod's secret volumes, in the
//! node's owner-only pods directory.
//!
//! Before a pod's first start, [`ready`] holds it Pending, with the reason
//! (`ConfigMapNotFound`, `SecretNotFound`, ...), until what it reads exists
//! — whatever its restart policy — as kubelet does.

use crate::volumes::{self, VolumeError};
use crate::worker::WorkerCtx;
use flotilla_api::net::Client;
use flotilla_api::objects::volume::KeyToPath;
use flotilla_api::protocol::{ErrorCode, Request, Response};
use flotilla_api::{Kind, Object, Pod};
use std::collections::{btree_map, BTreeMap};

/// How often a running pod's ConfigMap and Secret volumes are read again.
pub const SYNC: std::time::Duration = std::time::Duration::from_secs(2);

/// A ConfigMap or a Secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    ConfigMap,
    Secret,
}

impl Source {
    fn word(self) -> &'static str {
        match self {
            Source::ConfigMap => "configmap",
            Source::Secret => "secret",
        }
    }

    fn not_found(self) -> &'static str {
        match self {
            Source::ConfigMap => "ConfigMapNotFound",
            Source::Secret => "SecretNotFound",
        }
    }

    fn key_missing(self) -> &'static str {
        match self {
            Source::ConfigMap => "ConfigMapKeyMissing",
            Source::Secret => "SecretKeyMissing",
        }
    }

    fn create_hint(self, name: &str) -> String {
        match self {
            Source::ConfigMap => format!("flotilla create configmap {name} --from-file ..."),
            Source::Secret => format!("flotilla create secret generic {name} --from-literal ..."),
        }
    }
}

/// An object's keys and bytes, and its version.
#[derive(Debug, Clone)]
pub struct Data {
    pub version: u64,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Reads `name` of `pod`'s namespace from the master: None if it does not
/// exist; an error when no master answers.
pub async fn read(
    ctx: &WorkerCtx,
    pod: &Pod,
    source: Source,
    name: &str,
) -> Result<Option<Data>, VolumeError> {
    let client = ctx.client.borrow().clone();
    let Some(client) = client else {
        return Err(VolumeError::Io(format!(
            "{} {name} is needed and no master is connected",
            source.word()
        )));
    };
    fetch(&client, source, &pod.metadata.namespace, name)
        .await
        .map_err(VolumeError::Io)
}

/// Reads `namespace/name` over `client` (a Secret with its values, which
/// the master gives a node only for what it may read): None if it does not
/// exist; why not when there is no answer.
pub async fn fetch(
    client: &Client,
    source: Source,
    namespace: &str,
    name: &str,
) -> Result<Option<Data>, String> {
    let word = source.word();
    let (namespace, name_s) = (namespace.to_string(), name.to_string());
    let req = match source {
        Source::ConfigMap => Request::Get {
            kind: Kind::ConfigMap,
            namespace,
            name: name_s,
            stale: true,
        },
        Source::Secret => Request::RevealSecret {
            namespace,
            name: name_s,
            stale: true,
        },
    };
    match client.call(&req).await {
        Ok(Response::Object(Object::ConfigMap(cm))) if source == Source::ConfigMap => {
            Ok(Some(Data {
                version: cm.metadata.resource_version,
                files: cm.files(),
            }))
        }
        Ok(Response::Object(Object::Secret(s))) if source == Source::Secret => Ok(Some(Data {
            version: s.metadata.resource_version,
            files: s.files(),
        })),
        Ok(_) => Err(format!("unexpected answer for {word} {name}")),
        Err(flotilla_api::net::NetError::Api(e)) if e.code == ErrorCode::NotFound => Ok(None),
        Err(e) => Err(format!("reading {word} {name}: {e}")),
    }
}

/// The files a volume shows of `data`: its `items` (key → path), or every
/// key under its own name.
pub fn picked(
    source: Source,
    name: &str,
    data: &Data,
    items: &[KeyToPath],
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    if items.is_empty() {
        return Ok(data.files.clone());
    }
    let mut out = BTreeMap::new();
    for item in items {
        let Some(bytes) = data.files.get(&item.key) else {
            return Err(VolumeError::Refused {
                reason: source.key_missing(),
                message: format!(
                    "{} {name} has no key {:?} (it has: {})",
                    source.word(),
                    item.key,
                    data.files.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        };
        out.insert(item.path.clone(), bytes.clone());
    }
    Ok(out)
}

/// Writes the files of `pod`'s configMap and secret volumes from the
/// master's objects. With no master connected, a volume written before is
/// used as it is (the node runs its pods on its own); otherwise the error
/// says why (`ConfigMapNotFound`, `SecretNotFound`, ...).
pub async fn sync_volumes(ctx: &WorkerCtx, pod: &Pod) -> Result<(), VolumeError> {
    for v in &pod.spec.volumes {
        let (source, name, items, mode) = match (&v.config_map, &v.secret) {
            (Some(c), _) => (Source::ConfigMap, &c.name, &c.items, c.default_mode),
            (None, Some(s)) => (Source::Secret, &s.secret_name, &s.items, s.default_mode),
            (None, None) => continue,
        };
        let dir = volumes::volume_dir(&ctx.volumes, pod, &v.name);
        let written_before = dir.join(volumes::DATA_LINK).exists();
        let data = match read(ctx, pod, source, name).await {
            Ok(Some(data)) => data,
            Ok(None) => return Err(missing(source, name, pod)),
            // No master, or no answer: the files written before serve.
            Err(_) if written_before => continue,
            Err(e) => return Err(e),
        };
        let files = picked(source, name, &data, items)?;
        let mode = mode.unwrap_or(0o644);
        let version = data.version;
        let changed = tokio::task::spawn_blocking(move || {
            volumes::write_config_map(&dir, &files, mode, version)
        })
        .await
        .map_err(|e| VolumeError::Io(e.to_string()))??;
        if changed {
            tracing::info!(pod = %format!("{}/{}", pod.metadata.namespace, pod.metadata.name), source = source.word(), %name, version, "wrote volume files");
        }
    }
    Ok(())
}

/// Keeps a running pod's configMap and secret volumes up to date; never
/// returns.
pub async fn keep_volumes(ctx: &WorkerCtx, pod: &Pod) -> std::convert::Infallible {
    let any = pod
        .spec
        .volumes
        .iter()
        .any(|v| v.config_map.is_some() || v.secret.is_some());
    if !any {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(SYNC).await;
        if let Err(e) = sync_volumes(ctx, pod).await {
            tracing::debug!(error = %e, "volume not updated; keeping the files as they are");
        }
    }
}

fn missing(source: Source, name: &str, pod: &Pod) -> VolumeError {
    VolumeError::Refused {
        reason: source.not_found(),
        message: format!(
            "{} {name:?} not found in namespace {}: create it (`{}`); the pod starts once it \
             exists",
            source.word(),
            pod.metadata.namespace,
            source.create_hint(name)
        ),
    }
}

/// Whether everything `pod` reads is there: its volumes written and its
/// environment resolvable. Checked before the first start.
pub async fn ready(ctx: &WorkerCtx, pod: &Pod) -> Result<(), VolumeError> {
    sync_volumes(ctx, pod).await?;
    resolve_env(ctx, pod).await.map(drop)
}

/// The program's environment: `envFrom` first, then `env` (which wins),
/// values from ConfigMaps, Secrets and the pod's own fields resolved now.
pub async fn resolve_env(ctx: &WorkerCtx, pod: &Pod) -> Result<Vec<(String, String)>, VolumeError> {
    let refused = |message: String| VolumeError::Refused {
        reason: "CreateContainerConfigError",
        message,
    };
    let spec = &pod.spec;
    // Every object the environment names, read once.
    let mut wanted: Vec<(Source, &str)> = Vec::new();
    for from in &spec.env_from {
        if let Some(r) = &from.config_map_ref {
            wanted.push((Source::ConfigMap, &r.name));
        }
        if let Some(r) = &from.secret_ref {
            wanted.push((Source::Secret, &r.name));
        }
    }
    for e in &spec.env {
        if let Some(f) = &e.value_from {
            if let Some(r) = &f.config_map_key_ref {
                wanted.push((Source::ConfigMap, &r.name));
            }
            if let Some(r) = &f.secret_key_ref {
                wanted.push((Source::Secret, &r.name));
            }
        }
    }
    let mut read_ = BTreeMap::new();
    for (source, name) in wanted {
        if let btree_map::Entry::Vacant(slot) = read_.entry((source, name)) {
            slot.insert(read(ctx, pod, source, name).await?);
        }
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut out: Vec<(String, String)> = Vec::new();
    let set = |k: String, v: String, out: &mut Vec<(String, String)>| {
        out.retain(|(name, _)| *name != k);
        out.push((k, v));
    };
    let ns = &pod.metadata.namespace;
    for from in &spec.env_from {
        let (source, r) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(r), _) => (Source::ConfigMap, r),
            (None, Some(r)) => (Source::Secret, r),
            (None, None) => continue,
        };
        match read_
            .get(&(source, r.name.as_str()))
            .and_then(Option::as_ref)
        {
            Some(data) => {
                for (k, v) in &data.files {
                    set(format!("{}{k}", from.prefix), text(v), &mut out);
                }
            }
            None if r.optional => {}
            None => {
                return Err(refused(format!(
                    "envFrom: {} {:?} not found in namespace {ns}",
                    source.word(),
                    r.name
                )))
            }
        }
    }
    for e in &spec.env {
        let value = match &e.value_from {
            None => Some(e.value.clone()),
            Some(from) => {
                let key_ref = match (&from.config_map_key_ref, &from.secret_key_ref) {
                    (Some(r), _) => Some((Source::ConfigMap, r)),
                    (None, Some(r)) => Some((Source::Secret, r)),
                    (None, None) => None,
                };
                match (key_ref, &from.field_ref) {
                    (Some((source, r)), _) => {
                        match read_
                            .get(&(source, r.name.as_str()))
                            .and_then(Option::as_ref)
                        {
                            Some(data) => match data.files.get(&r.key) {
                                Some(v) => Some(text(v)),
                                None if r.optional => None,
                                None => {
                                    return Err(refused(format!(
                                        "env {}: {} {:?} has no key {:?}",
                                        e.name,
                                        source.word(),
                                        r.name,
                                        r.key
                                    )))
                                }
                            },
                            None if r.optional => None,
                            None => {
                                return Err(refused(format!(
                                    "env {}: {} {:?} not found in namespace {ns}",
                                    e.name,
                                    source.word(),
                                    r.name
                                )))
                            }
                        }
                    }
                    (None, Some(f)) => Some(match f.field_path.as_str() {
                        "metadata.name" => pod.metadata.name.clone(),
                        "metadata.namespace" => pod.metadata.namespace.clone(),
                        "metadata.uid" => pod.metadata.uid.clone(),
                        "spec.nodeName" => pod.spec.node_name.clone().unwrap_or_default(),
                        other => {
                            return Err(refused(format!(
                                "env {}: fieldRef {other:?} is not known to this node",
                                e.name
                            )))
                        }
                    }),
                    (None, None) => None,
                }
            }
        };
        if let Some(v) = value {
            set(e.name.clone(), v, &mut out);
        }
    }
    Ok(out)
}
