//! A pod's volumes on this node: the directories its mounts preopen.
//!
//! - `emptyDir`: `<data>/pods/<namespace>_<name>_<uid>/volumes/<volume>`,
//!   made when the pod first starts here (owner-only), kept across restarts
//!   of its program and of this agent, removed when the pod leaves the node.
//!   A `sizeLimit` is watched while the program runs ([`usage`]).
//! - `hostPath`: a directory of the node, only under a prefix the operator
//!   allows (`flotilla node --allow-host-path`); anything else is refused
//!   with a reason, never given in part. Prefixes and paths are compared
//!   after resolving symbolic links, so a link cannot lead out.
//! - `configMap`: the ConfigMap's keys as files, in
//!   `<pod dir>/volumes/<volume>`, laid out as kubelet lays them out: the
//!   files are in a directory named for the ConfigMap's version, `..data`
//!   links to it, and each file name links through `..data`. A new version
//!   is written beside the old and `..data` is swapped by one rename, so a
//!   program never reads half of an update ([`write_config_map`]). Always
//!   mounted read-only.
//! - `secret`: a Secret's keys as files, laid out and swapped as for a
//!   configMap, in the same owner-only pod directory. Always read-only.
//! - `persistent`: `<data>/persistent/<namespace>/<name>`, made by the
//!   first pod that mounts it and shared by every pod of the namespace that
//!   names it; it outlives them all (only the operator removes it). The
//!   node reports the volumes it holds ([`held`]) and the scheduler sends
//!   the pods that mount one here; a pod whose volume names another node
//!   is refused.
//! - A mount's `subPath` is a directory inside the volume (made if
//!   missing), checked the same way.

use flotilla_api::objects::volume::Volume;
use flotilla_api::Pod;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

/// Where pods' volumes live and which host paths pods may mount.
#[derive(Debug, Clone, Default)]
pub struct VolumeConfig {
    /// `<data dir>/pods`.
    pub pods_dir: PathBuf,
    /// `<data dir>/persistent`.
    pub persistent_dir: PathBuf,
    /// This node's name: a persistent volume that names another is refused.
    pub node_name: String,
    /// Host directories (and what is under them) pods may mount.
    pub allowed_host_paths: Vec<PathBuf>,
}

impl VolumeConfig {
    /// The volumes of node `node_name` in its data directory `data_dir`.
    pub fn new(data_dir: &Path, node_name: &str, allowed_host_paths: Vec<PathBuf>) -> VolumeConfig {
        VolumeConfig {
            pods_dir: data_dir.join("pods"),
            persistent_dir: data_dir.join("persistent"),
            node_name: node_name.to_string(),
            allowed_host_paths,
        }
    }
}

/// The persistent volumes this node holds, as `namespace/name`, sorted.
pub fn held(cfg: &VolumeConfig) -> Vec<String> {
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out: Vec<String> = names(&cfg.persistent_dir)
        .into_iter()
        .flat_map(|ns| {
            names(&cfg.persistent_dir.join(&ns))
                .into_iter()
                .map(move |name| format!("{ns}/{name}"))
        })
        .collect();
    out.sort();
    out
}

/// One preopened directory of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub host: PathBuf,
    /// The guest path of the preopen.
    pub guest: String,
    pub read_only: bool,
}

/// An emptyDir with a size limit, for the watch while the program runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub volume: String,
    pub dir: PathBuf,
    pub limit: u64,
}

/// Why a pod's volumes could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// The spec asks for what this node does not give: the pod's status
    /// shows `reason`.
    #[error("{message}")]
    Refused {
        reason: &'static str,
        message: String,
    },
    /// The node could not make or read a directory.
    #[error("{0}")]
    Io(String),
}

impl VolumeError {
    /// The reason a pod's status shows.
    pub fn reason(&self) -> &'static str {
        match self {
            VolumeError::Refused { reason, .. } => reason,
            VolumeError::Io(_) => "VolumeError",
        }
    }
}

/// The name of a pod's directory under `pods_dir`.
pub fn pod_dir_name(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!("{}_{}_{}", m.namespace, m.name, m.uid)
}

fn io(what: &str, path: &Path, e: std::io::Error) -> VolumeError {
    VolumeError::Io(format!("{what} {}: {e}", path.display()))
}

/// Makes an owner-only directory (and its parents).
fn make_dir(path: &Path) -> Result<(), VolumeError> {
    flotilla_api::perms::create_dir(path).map_err(|e| io("cannot create", path, e))
}

/// `path` resolved, if it is a directory inside `root` (itself resolved).
fn inside(root: &Path, path: &Path) -> Result<PathBuf, VolumeError> {
    let resolved = path
        .canonicalize()
        .map_err(|e| io("cannot resolve", path, e))?;
    if !resolved.starts_with(root) {
        return Err(VolumeError::Refused {
            reason: "SubPathOutsideVolume",
            message: format!(
                "{} leads outside its volume ({} resolves to {})",
                path.display(),
                path.display(),
                resolved.display()
            ),
        });
    }
    if !resolved.is_dir() {
        return Err(VolumeError::Refused {
            reason: "NotADirectory",
            message: format!("{} is not a directory", resolved.display()),
        });
    }
    Ok(resolved)
}

/// The host directory of `volume` for `pod`, made if it is an emptyDir.
fn volume_root(cfg: &VolumeConfig, pod: &Pod, volume: &Volume) -> Result<PathBuf, VolumeError> {
    if volume.empty_dir.is_some() || volume.config_map.is_some() || volume.secret.is_some() {
        let dir = cfg
            .pods_dir
            .join(pod_dir_name(pod))
            .join("volumes")
            .join(&volume.name);
        make_dir(&dir)?;
        return dir
            .canonicalize()
            .map_err(|e| io("cannot resolve", &dir, e));
    }
    if let Some(h) = &volume.host_path {
        let wanted = Path::new(&h.path);
        let allowed: Vec<PathBuf> = cfg
            .allowed_host_paths
            .iter()
            .filter_map(|p| p.canonicalize().ok())
            .collect();
        let refused = |why: String| VolumeError::Refused {
            reason: "HostPathNotAllowed",
            message: why,
        };
        if allowed.is_empty() {
            return Err(refused(format!(
                "volume {}: this node allows no host paths; its operator can allow some with \
                 `flotilla node --allow-host-path {}`",
                volume.name, h.path
            )));
        }
        let resolved = match wanted.canonicalize() {
            Ok(p) => p,
            Err(e) => {
                return Err(VolumeError::Refused {
                    reason: "HostPathMissing",
                    message: format!(
                        "volume {}: host path {} cannot be used on this node: {e}",
                        volume.name, h.path
                    ),
                })
            }
        };
        if !allowed.iter().any(|a| resolved.starts_with(a)) {
            let list: Vec<String> = cfg
                .allowed_host_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            return Err(refused(format!(
                "volume {}: host path {} (resolved {}) is not under a path this node allows \
                 ({})",
                volume.name,
                h.path,
                resolved.display(),
                list.join(", ")
            )));
        }
        if !resolved.is_dir() {
            return Err(VolumeError::Refused {
                reason: "HostPathMissing",
                message: format!(
                    "volume {}: host path {} is not a directory",
                    volume.name, h.path
                ),
            });
        }
        return Ok(resolved);
    }
    if let Some(p) = &volume.persistent {
        if !p.node.is_empty() && p.node != cfg.node_name {
            return Err(VolumeError::Refused {
                reason: "PersistentVolumeElsewhere",
                message: format!(
                    "volume {}: persistent volume {} is on node {}, not on {}; leave out \
                     spec.nodeName and the scheduler places the pod there",
                    volume.name, p.name, p.node, cfg.node_name
                ),
            });
        }
        // Names are DNS labels (validated by the master); checked again
        // here, as they become path parts.
        let plain = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
                && s != "."
                && s != ".."
        };
        if !plain(&pod.metadata.namespace) || !plain(&p.name) {
            return Err(VolumeError::Refused {
                reason: "VolumeError",
                message: format!("volume {}: {:?} is not a volume name", volume.name, p.name),
            });
        }
        let ns_dir = cfg.persistent_dir.join(&pod.metadata.namespace);
        make_dir(&cfg.persistent_dir)?;
        make_dir(&ns_dir)?;
        let dir = ns_dir.join(&p.name);
        make_dir(&dir)?;
        return dir
            .canonicalize()
            .map_err(|e| io("cannot resolve", &dir, e));
    }
    Err(VolumeError::Refused {
        reason: "VolumeError",
        message: format!("volume {} has no source", volume.name),
    })
}

/// The preopens of `pod`'s mounts, its volumes made or checked; and its
/// emptyDirs with size limits.
pub fn prepare(cfg: &VolumeConfig, pod: &Pod) -> Result<(Vec<Mount>, Vec<Limited>), VolumeError> {
    let mut roots = std::collections::BTreeMap::new();
    let mut limited = Vec::new();
    for v in &pod.spec.volumes {
        let root = volume_root(cfg, pod, v)?;
        if let Some(limit) = v.empty_dir.as_ref().and_then(|e| e.size_limit_bytes()) {
            limited.push(Limited {
                volume: v.name.clone(),
                dir: root.clone(),
                limit,
            });
        }
        roots.insert(v.name.clone(), root);
    }
    let mut mounts = Vec::new();
    for m in &pod.spec.volume_mounts {
        let Some(root) = roots.get(&m.name) else {
            return Err(VolumeError::Refused {
                reason: "VolumeError",
                message: format!("mount {}: no volume of that name", m.mount_path),
            });
        };
        let host = if m.sub_path.is_empty() {
            root.clone()
        } else {
            let dir = root.join(&m.sub_path);
            if !dir.exists() {
                make_dir(&dir)?;
            }
            inside(root, &dir)?
        };
        let config = pod
            .spec
            .volumes
            .iter()
            .any(|v| v.name == m.name && v.always_read_only());
        mounts.push(Mount {
            host,
            guest: m.mount_path.clone(),
            read_only: m.read_only || config,
        });
    }
    Ok((mounts, limited))
}

/// The directory of `pod`'s volume `volume`.
pub fn volume_dir(cfg: &VolumeConfig, pod: &Pod, volume: &str) -> PathBuf {
    cfg.pods_dir
        .join(pod_dir_name(pod))
        .join("volumes")
        .join(volume)
}

/// The link every version's files are reached through.
pub const DATA_LINK: &str = "..data";

/// Writes `files` (relative path → bytes) into `dir` as version `version`
/// and makes it the one `..data` links to, in one rename; the older
/// versions and the links of files no longer there go. Answers whether
/// anything changed (false when `version` is the one shown already).
pub fn write_config_map(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    mode: u32,
    version: u64,
) -> Result<bool, VolumeError> {
    use std::os::unix::fs::PermissionsExt;
    make_dir(dir)?;
    let name = format!("..{version}");
    let link = dir.join(DATA_LINK);
    if std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&name)) {
        return Ok(false);
    }
    let staged = dir.join(format!("{name}.tmp"));
    let _ = std::fs::remove_dir_all(&staged);
    make_dir(&staged)?;
    for (path, bytes) in files {
        let file = staged.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io("cannot create", parent, e))?;
        }
        std::fs::write(&file, bytes).map_err(|e| io("cannot write", &file, e))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(|e| io("cannot set the mode of", &file, e))?;
    }
    let version_dir = dir.join(&name);
    let _ = std::fs::remove_dir_all(&version_dir);
    std::fs::rename(&staged, &version_dir).map_err(|e| io("cannot rename", &staged, e))?;
    let new_link = dir.join(format!("{DATA_LINK}.tmp"));
    let _ = std::fs::remove_file(&new_link);
    std::os::unix::fs::symlink(&name, &new_link).map_err(|e| io("cannot link", &new_link, e))?;
    std::fs::rename(&new_link, &link).map_err(|e| io("cannot swap", &link, e))?;
    // Each top-level name links through ..data; names gone are unlinked.
    let tops: BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(String::from))
        .collect();
    let entries = std::fs::read_dir(dir).map_err(|e| io("cannot list", dir, e))?;
    for e in entries.flatten() {
        let entry = e.file_name().to_string_lossy().into_owned();
        if entry.starts_with("..") {
            if entry != name && entry != DATA_LINK {
                let _ = std::fs::remove_dir_all(e.path());
            }
        } else if !tops.contains(&entry) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    for top in &tops {
        let at = dir.join(top);
        if std::fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink(Path::new(DATA_LINK).join(top), &at)
                .map_err(|e| io("cannot link", &at, e))?;
        }
    }
    Ok(true)
}

/// Bytes under `dir` (files, not following links).
pub fn usage(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                pending.push(e.path());
            } else {
                total = total.saturating_add(meta.len());
            }
        }
    }
    total
}

/// Removes the directories of pods not in `keep` (names from
/// [`pod_dir_name`]): their volumes go with them.
pub fn remove_others(cfg: &VolumeConfig, keep: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(&cfg.pods_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            remove_dir(&e.path());
        }
    }
}

/// Removes the directories of the pod `namespace/name` (any uid).
pub fn remove_pod(cfg: &VolumeConfig, namespace: &str, name: &str) {
    let prefix = format!("{namespace}_{name}_");
    let Ok(entries) = std::fs::read_dir(&cfg.pods_dir) else {
        return;
    };
    for e in entries.flatten() {
        let entry = e.file_name().to_string_lossy().into_owned();
        // Names and namespaces have no '_': the uid is what follows.
        if entry
            .strip_prefix(&prefix)
            .is_some_and(|uid| !uid.contains('_'))
        {
            remove_dir(&e.path());
        }
    }
}

fn remove_dir(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => tracing::info!(dir = %path.display(), "removed a pod's volumes"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %path.display(), error = %e, "cannot remove a pod's volumes")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::objects::volume::{EmptyDirVolume, HostPathVolume, VolumeMount};
    use flotilla_api::quantity::Quantity;

    fn pod(volumes: Vec<Volume>, mounts: Vec<VolumeMount>) -> Pod {
        let mut p = Pod::default();
        p.metadata.namespace = "default".into();
        p.metadata.name = "web".into();
        p.metadata.uid = "u1".into();
        p.spec.volumes = volumes;
        p.spec.volume_mounts = mounts;
        p
    }

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..VolumeMount::default()
        }
    }

    fn host(name: &str, path: &Path) -> Volume {
        Volume {
            name: name.into(),
            host_path: Some(HostPathVolume {
                path: path.display().to_string(),
            }),
            ..Volume::default()
        }
    }

    #[test]
    fn empty_dirs_are_made_kept_and_removed_with_their_pod() {
        let tmp = tempfile::tempdir().expect("tmp");
        let cfg = VolumeConfig::new(tmp.path(), "n1", vec![]);
        let scratch = Volume {
            name: "scratch".into(),
            empty_dir: Some(EmptyDirVolume {
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Volume::default()
        };
        let p = pod(
            vec![scratch],
            vec![
                mount("scratch", "/tmp"),
                VolumeMount {
                    sub_path: "logs/app".into(),
                    read_only: true,
                    ..mount("scratch", "/logs")
                },
            ],
        );
        let (mounts, limited) = prepare(&cfg, &p).expect("prepared");
        assert_eq!(mounts.len(), 2);
        assert!(mounts[0].host.ends_with("default_web_u1/volumes/scratch"));
        assert!(mounts[1].host.ends_with("scratch/logs/app") && mounts[1].read_only);
        assert_eq!(limited[0].limit, 1 << 20);
        std::fs::write(mounts[0].host.join("f"), b"12345").expect("write");
        assert_eq!(usage(&mounts[0].host), 5);
        // Prepared again (a restart): the same directory, its file kept.
        let (again, _) = prepare(&cfg, &p).expect("again");
        assert!(again[0].host.join("f").exists());
        // Another pod's directory goes; this one's stays until it goes.
        let mut other = p.clone();
        other.metadata.uid = "u0".into();
        prepare(&cfg, &other).expect("other");
        remove_others(&cfg, &[pod_dir_name(&p)].into_iter().collect());
        assert!(!cfg.pods_dir.join("default_web_u0").exists());
        assert!(cfg.pods_dir.join("default_web_u1").exists());
        remove_pod(&cfg, "default", "web");
        assert!(!cfg.pods_dir.join("default_web_u1").exists());
    }

    #[test]
    fn config_map_versions_are_swapped_whole() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("cfg");
        let v1: BTreeMap<String, Vec<u8>> = [
            ("app.conf".to_string(), b"level=1".to_vec()),
            ("extra/notes".to_string(), b"n".to_vec()),
        ]
        .into();
        assert!(write_config_map(&dir, &v1, 0o644, 7).expect("v1"));
        assert_eq!(
            std::fs::read(dir.join("app.conf")).expect("read"),
            b"level=1"
        );
        assert_eq!(std::fs::read(dir.join("extra/notes")).expect("read"), b"n");
        assert!(
            !write_config_map(&dir, &v1, 0o644, 7).expect("again"),
            "unchanged"
        );
        let v2: BTreeMap<String, Vec<u8>> = [("app.conf".to_string(), b"level=2".to_vec())].into();
        assert!(write_config_map(&dir, &v2, 0o600, 9).expect("v2"));
        assert_eq!(
            std::fs::read(dir.join("app.conf")).expect("read"),
            b"level=2"
        );
        assert!(!dir.join("extra").exists(), "a name gone is unlinked");
        assert!(!dir.join("..7").exists(), "the old version goes");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["..9", "..data", "app.conf"]);
    }

    #[test]
    fn host_paths_only_under_allowed_prefixes_and_no_way_out() {
        let tmp = tempfile::tempdir().expect("tmp");
        let allowed = tmp.path().join("srv");
        let other = tmp.path().join("etc");
        std::fs::create_dir_all(allowed.join("data")).expect("dir");
        std::fs::create_dir_all(&other).expect("dir");
        let mut cfg = VolumeConfig::new(tmp.path(), "n1", vec![]);
        let refused = |cfg: &VolumeConfig, p: &Pod| match prepare(cfg, p) {
            Err(e) => e,
            Ok(m) => panic!("allowed: {m:?}"),
        };
        let data = pod(
            vec![host("d", &allowed.join("data"))],
            vec![mount("d", "/data")],
        );
        let e = refused(&cfg, &data);
        assert_eq!(e.reason(), "HostPathNotAllowed");
        assert!(e.to_string().contains("--allow-host-path"), "{e}");
        cfg.allowed_host_paths = vec![allowed.clone()];
        let (mounts, _) = prepare(&cfg, &data).expect("allowed");
        assert_eq!(mounts[0].guest, "/data");
        let e = refused(&cfg, &pod(vec![host("e", &other)], vec![]));
        assert_eq!(e.reason(), "HostPathNotAllowed");
        // A link under the allowed prefix that leads out is refused too.
        std::os::unix::fs::symlink(&other, allowed.join("sneaky")).expect("link");
        let e = refused(&cfg, &pod(vec![host("s", &allowed.join("sneaky"))], vec![]));
        assert_eq!(e.reason(), "HostPathNotAllowed");
        let e = refused(
            &cfg,
            &pod(vec![host("m", &allowed.join("missing"))], vec![]),
        );
        assert_eq!(e.reason(), "HostPathMissing");
        // A subPath that is a link out of the volume.
        std::os::unix::fs::symlink(&other, allowed.join("data/out")).expect("link");
        let e = refused(
            &cfg,
            &pod(
                vec![host("d", &allowed.join("data"))],
                vec![VolumeMount {
                    sub_path: "out".into(),
                    ..mount("d", "/x")
                }],
            ),
        );
        assert_eq!(e.reason(), "SubPathOutsideVolume");
    }
}
