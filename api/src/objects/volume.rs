//! Volumes: directories a pod's program sees, each mounted as a WASI
//! preopened directory at its `mountPath` (p1 modules and p2 components
//! alike). A volume says where the directory comes from (`emptyDir`: a
//! fresh one per pod on its node; `hostPath`: a directory of the node that
//! its operator allows); a mount says where the guest sees it, and whether
//! it may write.

use crate::manifest::{fe, is_dns_label, FieldError};
use crate::quantity::{parse_bytes, Quantity};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Most volumes (and mounts) one pod may have.
pub const MAX_VOLUMES: usize = 32;

/// A named directory a pod may mount.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Volume {
    /// Mounts name it; a DNS label, unique in the pod.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub empty_dir: Option<EmptyDirVolume>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub host_path: Option<HostPathVolume>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub config_map: Option<ConfigMapVolume>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub secret: Option<SecretVolume>,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub persistent: Option<PersistentVolume>,
}

/// The keys of a Secret in the pod's namespace as files, always read-only,
/// in a directory only the node's user may enter, updated in place when
/// the Secret changes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct SecretVolume {
    /// The Secret's name (Kubernetes' field name).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub secret_name: String,
    /// As for a configMap volume.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub items: Vec<KeyToPath>,
    /// The files' mode (as for a configMap volume); 0644 when left out.
    #[serde(skip_serializing_if = "crate::is_default", with = "file_mode")]
    #[schemars(with = "Option<u32>")]
    pub default_mode: Option<u32>,
}

/// A named directory on one node that outlives the pods that mount it: the
/// first pod to use it makes it on its node, and every later pod that
/// mounts it is scheduled to that node (the node reports the volumes it
/// holds). Removed only by the node's operator.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct PersistentVolume {
    /// The volume's name in the pod's namespace; pods of the namespace
    /// that give the same name share the directory.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    /// The node that holds (or is to hold) it; when left out, the node
    /// that reports it, or any node for a volume not made yet.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub node: String,
}

/// The keys of a ConfigMap in the pod's namespace as files, always
/// read-only, updated in place (an atomic swap) when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ConfigMapVolume {
    /// The ConfigMap's name.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    /// The keys to mount and the file each becomes; every key, each as a
    /// file of its name, when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub items: Vec<KeyToPath>,
    /// The files' mode: a number is decimal, as Kubernetes takes it
    /// (`420` is 0644), a string with a leading zero is octal (`"0644"`,
    /// and `0644` unquoted, which YAML reads as a string); 0644 when left out.
    #[serde(skip_serializing_if = "crate::is_default", with = "file_mode")]
    #[schemars(with = "Option<u32>")]
    pub default_mode: Option<u32>,
}

/// One key, and the relative path of its file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct KeyToPath {
    #[serde(skip_serializing_if = "crate::is_default")]
    pub key: String,
    #[serde(skip_serializing_if = "crate::is_default")]
    pub path: String,
}

/// A directory made for the pod on its node, empty at first: kept while
/// the pod is on the node (across restarts of its program), removed with
/// the pod.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct EmptyDirVolume {
    /// Most bytes the directory may hold; past it the node stops the pod
    /// (reason `EmptyDirSizeLimit`). No limit when left out.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub size_limit: Option<Quantity>,
}

/// A directory of the node, under a prefix its operator allows
/// (`flotilla node --allow-host-path`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HostPathVolume {
    /// An absolute path on the node; it must exist and be a directory.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub path: String,
}

/// Where the program sees a volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct VolumeMount {
    /// The volume's name.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub name: String,
    /// The guest path of the preopened directory (`/data`, or `/` for the
    /// guest's root).
    #[serde(skip_serializing_if = "crate::is_default")]
    pub mount_path: String,
    /// The program may read, not write: writes fail with the WASI error
    /// for a read-only file system or a denied permission.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub read_only: bool,
    /// A directory inside the volume to mount instead of its root (made if
    /// missing); relative, without `..`.
    #[serde(skip_serializing_if = "crate::is_default")]
    pub sub_path: String,
}

impl Volume {
    /// ConfigMap and Secret volumes are mounted read-only whatever the
    /// mount says: the node rewrites them.
    pub fn always_read_only(&self) -> bool {
        self.config_map.is_some() || self.secret.is_some()
    }
}

impl EmptyDirVolume {
    /// The size limit in bytes, if any (validation has checked it parses).
    pub fn size_limit_bytes(&self) -> Option<u64> {
        self.size_limit
            .as_ref()
            .and_then(|q| parse_bytes(&q.0).ok())
    }
}

/// Whether `p` is an absolute guest path made of plain parts (no `.`,
/// `..` or empty parts), or `/`.
fn plain_absolute(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && !p.ends_with('/')
            && p[1..].split('/').all(|part| {
                !part.is_empty() && part != "." && part != ".." && !part.contains('\0')
            }))
}

/// Whether `p` is a relative path of plain parts.
fn plain_relative(p: &str) -> bool {
    !p.starts_with('/')
        && p.split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\0'))
}

/// The persistent volumes `volumes` mounts in `namespace`: their keys
/// (`namespace/name`, as nodes report them) and the node each names, if any.
pub fn persistent<'a>(
    namespace: &str,
    volumes: &'a [Volume],
) -> impl Iterator<Item = (String, &'a str)> + 'a {
    let namespace = namespace.to_string();
    volumes.iter().filter_map(move |v| {
        v.persistent
            .as_ref()
            .map(|p| (format!("{namespace}/{}", p.name), p.node.as_str()))
    })
}

/// A file mode as a manifest writes it; always a plain number on the wire.
mod file_mode {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match mode {
            Some(m) => s.serialize_some(m),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Option<u32>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a file mode: decimal like 420 or octal like \"0644\"")
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                if d.is_human_readable() {
                    d.deserialize_any(self)
                } else {
                    d.deserialize_u32(self)
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(Some)
                    .map_err(|_| E::custom("a file mode from 0 to 0777"))
            }
            fn visit_u32<E: de::Error>(self, v: u32) -> Result<Self::Value, E> {
                Ok(Some(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("a file mode from 0 to 0777"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                let octal = v.strip_prefix("0o").or_else(|| v.strip_prefix('0'));
                let parsed = match octal {
                    Some("") => Ok(0),
                    Some(digits) => u32::from_str_radix(digits, 8),
                    None => v.parse(),
                };
                parsed.map(Some).map_err(|_| {
                    E::custom(format!(
                        "{v:?} is not a file mode: write it as octal with a leading zero (\"0644\") or as a decimal number (420)"
                    ))
                })
            }
        }
        d.deserialize_option(V)
    }
}

/// Checks the `items` and `defaultMode` of a configMap or secret volume.
fn validate_files(
    field: &str,
    items: &[KeyToPath],
    default_mode: Option<u32>,
    errors: &mut Vec<FieldError>,
) {
    for (j, item) in items.iter().enumerate() {
        if !super::config_map::is_key(&item.key) {
            errors.push(fe(
                format!("{field}.items[{j}].key"),
                format!("{:?} is not a valid key", item.key),
            ));
        }
        if !plain_relative(&item.path) || item.path.split('/').any(|p| p.starts_with("..")) {
            errors.push(fe(
                format!("{field}.items[{j}].path"),
                format!(
                    "{:?} must be a relative path without '.' or '..' parts",
                    item.path
                ),
            ));
        }
    }
    if default_mode.is_some_and(|m| m > 0o777) {
        errors.push(fe(
            format!("{field}.defaultMode"),
            "a file mode from 0 to 0777",
        ));
    }
}

/// Checks a pod's volumes and mounts; paths start at `spec`.
pub fn validate(volumes: &[Volume], mounts: &[VolumeMount]) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if volumes.len() > MAX_VOLUMES || mounts.len() > MAX_VOLUMES {
        errors.push(fe(
            "spec.volumes",
            format!("at most {MAX_VOLUMES} volumes and {MAX_VOLUMES} mounts"),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let at = |f: &str| format!("spec.volumes[{i}]{f}");
        if !is_dns_label(&v.name) {
            errors.push(fe(
                at(".name"),
                format!(
                    "{:?} must be a DNS label (lowercase letters, digits, '-')",
                    v.name
                ),
            ));
        } else if !names.insert(v.name.as_str()) {
            errors.push(fe(at(".name"), format!("{:?} is named twice", v.name)));
        }
        let sources = usize::from(v.empty_dir.is_some())
            + usize::from(v.host_path.is_some())
            + usize::from(v.config_map.is_some())
            + usize::from(v.secret.is_some())
            + usize::from(v.persistent.is_some());
        if sources != 1 {
            errors.push(fe(
                at(""),
                "give exactly one source: emptyDir: {}, hostPath: {path: /srv/data}, \
                 configMap: {name: NAME}, secret: {secretName: NAME} or persistent: {name: NAME}",
            ));
        }
        if let Some(c) = &v.config_map {
            let field = at(".configMap");
            if !crate::manifest::is_dns_subdomain(&c.name) {
                errors.push(fe(
                    format!("{field}.name"),
                    format!("{:?} is not a valid ConfigMap name", c.name),
                ));
            }
            validate_files(&field, &c.items, c.default_mode, &mut errors);
        }
        if let Some(c) = &v.secret {
            let field = at(".secret");
            if !crate::manifest::is_dns_subdomain(&c.secret_name) {
                errors.push(fe(
                    format!("{field}.secretName"),
                    format!("{:?} is not a valid Secret name", c.secret_name),
                ));
            }
            validate_files(&field, &c.items, c.default_mode, &mut errors);
        }
        if let Some(p) = &v.persistent {
            if !is_dns_label(&p.name) {
                errors.push(fe(
                    at(".persistent.name"),
                    format!(
                        "{:?} must be a DNS label (lowercase letters, digits, '-')",
                        p.name
                    ),
                ));
            }
            if !p.node.is_empty() && !crate::manifest::is_dns_subdomain(&p.node) {
                errors.push(fe(
                    at(".persistent.node"),
                    format!("{:?} is not a valid node name", p.node),
                ));
            }
        }
        if let Some(e) = &v.empty_dir {
            if let Some(q) = &e.size_limit {
                match parse_bytes(&q.0) {
                    Ok(0) => errors.push(fe(at(".emptyDir.sizeLimit"), "must be more than 0")),
                    Ok(_) => {}
                    Err(e) => errors.push(fe(at(".emptyDir.sizeLimit"), e.to_string())),
                }
            }
        }
        if let Some(h) = &v.host_path {
            if !plain_absolute(&h.path) || h.path == "/" {
                errors.push(fe(
                    at(".hostPath.path"),
                    format!(
                        "{:?} must be an absolute directory path without '.' or '..' parts \
                         (and not / itself)",
                        h.path
                    ),
                ));
            }
        }
    }
    let mut paths = BTreeSet::new();
    for (i, m) in mounts.iter().enumerate() {
        let at = |f: &str| format!("spec.volumeMounts[{i}]{f}");
        if !names.contains(m.name.as_str()) {
            errors.push(fe(
                at(".name"),
                format!(
                    "{:?} is not a volume of this pod (list it in spec.volumes)",
                    m.name
                ),
            ));
        }
        if !plain_absolute(&m.mount_path) {
            errors.push(fe(
                at(".mountPath"),
                format!(
                    "{:?} must be an absolute guest path without '.' or '..' parts, e.g. /data \
                     (or / for the root)",
                    m.mount_path
                ),
            ));
        } else if !paths.insert(m.mount_path.as_str()) {
            errors.push(fe(
                at(".mountPath"),
                format!("{:?} is mounted twice", m.mount_path),
            ));
        }
        if !m.sub_path.is_empty() && !plain_relative(&m.sub_path) {
            errors.push(fe(
                at(".subPath"),
                format!(
                    "{:?} must be a relative path inside the volume, without '.' or '..' parts",
                    m.sub_path
                ),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(name: &str) -> Volume {
        Volume {
            name: name.into(),
            empty_dir: Some(EmptyDirVolume::default()),
            ..Volume::default()
        }
    }

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..VolumeMount::default()
        }
    }

    #[test]
    fn a_file_mode_reads_as_octal_with_a_leading_zero_and_decimal_without() {
        let mode = |yaml: &str| {
            serde_yaml::from_str::<SecretVolume>(&format!("{{secretName: s, defaultMode: {yaml}}}"))
                .map(|v| v.default_mode)
                .map_err(|e| e.to_string())
        };
        assert_eq!(mode("0400"), Ok(Some(0o400)));
        assert_eq!(mode("\"0644\""), Ok(Some(0o644)));
        assert_eq!(mode("0o600"), Ok(Some(0o600)));
        assert_eq!(mode("420"), Ok(Some(0o644)));
        assert_eq!(mode("0"), Ok(Some(0)));
        assert!(mode("0999").unwrap_err().contains("leading zero"));
        assert!(mode("-1").is_err());
        let wire = SecretVolume {
            secret_name: "s".into(),
            default_mode: Some(0o440),
            ..SecretVolume::default()
        };
        let bytes = postcard::to_allocvec(&wire).unwrap();
        assert_eq!(postcard::from_bytes::<SecretVolume>(&bytes).unwrap(), wire);
        let json = serde_json::to_string(&wire).unwrap();
        assert_eq!(serde_json::from_str::<SecretVolume>(&json).unwrap(), wire);
    }

    #[test]
    fn volumes_and_mounts_say_what_is_wrong() {
        assert!(validate(&[empty("data")], &[mount("data", "/data")]).is_empty());
        assert!(validate(&[empty("root")], &[mount("root", "/")]).is_empty());
        let host = |p: &str| Volume {
            name: "h".into(),
            host_path: Some(HostPathVolume { path: p.into() }),
            ..Volume::default()
        };
        let cases: Vec<(Vec<Volume>, Vec<VolumeMount>, &str)> = vec![
            (vec![empty("Data")], vec![], "spec.volumes[0].name"),
            (vec![empty("a"), empty("a")], vec![], "named twice"),
            (
                vec![Volume {
                    name: "x".into(),
                    ..Volume::default()
                }],
                vec![],
                "exactly one source",
            ),
            (vec![host("relative/dir")], vec![], "hostPath.path"),
            (vec![host("/srv/../etc")], vec![], "hostPath.path"),
            (vec![host("/")], vec![], "hostPath.path"),
            (vec![empty("a")], vec![mount("b", "/b")], "not a volume"),
            (vec![empty("a")], vec![mount("a", "data")], "mountPath"),
            (vec![empty("a")], vec![mount("a", "/data/")], "mountPath"),
            (
                vec![empty("a")],
                vec![mount("a", "/d"), mount("a", "/d")],
                "mounted twice",
            ),
            (
                vec![empty("a")],
                vec![VolumeMount {
                    sub_path: "../up".into(),
                    ..mount("a", "/d")
                }],
                "subPath",
            ),
            (
                vec![Volume {
                    empty_dir: Some(EmptyDirVolume {
                        size_limit: Some(Quantity("lots".into())),
                    }),
                    ..empty("a")
                }],
                vec![],
                "sizeLimit",
            ),
        ];
        for (volumes, mounts, want) in cases {
            let errors = validate(&volumes, &mounts);
            assert!(
                errors.iter().any(|e| e.to_string().contains(want)),
                "{want}: {errors:?}"
            );
        }
    }
}
