//! Manifests: multi-document YAML in Kubernetes shape, turned into objects,
//! and validation whose every error names the field path it is about
//! (`spec.resources.limits.memory: "12Q" is not a quantity`).

use crate::meta::DEFAULT_NAMESPACE;
use crate::objects::{Kind, Object};
use std::fmt;

/// One problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// Dotted field path, e.g. `spec.env[0].name`; empty for the whole document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "document {}: {}", self.document, self.message)
        } else {
            write!(
                f,
                "document {}: {}: {}",
                self.document, self.path, self.message
            )
        }
    }
}

/// A field-level validation error, without the document number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

pub(crate) fn fe(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.into(),
        message: message.into(),
    }
}

/// Kinds a user may apply.
pub const APPLYABLE: [Kind; 12] = [
    Kind::Namespace,
    Kind::ConfigMap,
    Kind::Secret,
    Kind::Service,
    Kind::Pod,
    Kind::PriorityClass,
    Kind::ReplicaSet,
    Kind::Deployment,
    Kind::DaemonSet,
    Kind::Job,
    Kind::CronJob,
    Kind::User,
];

/// Parses every document of a YAML file into objects, validating each.
///
/// Either every document is good and all objects are returned, or the list of
/// every problem found is: callers apply all or nothing. Two documents naming
/// the same object are found by [`duplicates`], over everything applied
/// together.
pub fn parse_manifests(text: &str) -> Result<Vec<Object>, Vec<ManifestError>> {
    parse_manifests_numbered(text).map(|objects| objects.into_iter().map(|(_, o)| o).collect())
}

/// [`parse_manifests`], with the 1-based number of the YAML document each
/// object came from (empty documents are skipped but counted).
pub fn parse_manifests_numbered(text: &str) -> Result<Vec<(usize, Object)>, Vec<ManifestError>> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                errors.push(ManifestError {
                    document,
                    path: String::new(),
                    message: format!("not valid YAML: {e}"),
                });
                // The YAML stream cannot be resynchronised after a syntax error.
                break;
            }
        };
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        match parse_document(value) {
            Ok(o) => objects.push((document, o)),
            Err(errs) => errors.extend(errs.into_iter().map(|e| ManifestError {
                document,
                path: e.path,
                message: e.message,
            })),
        }
    }
    if objects.is_empty() && errors.is_empty() {
        errors.push(ManifestError {
            document: 1,
            path: String::new(),
            message: "the file holds no objects".into(),
        });
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

/// Where an object of an apply came from: the file as the user named it
/// and the 1-based number of its YAML document there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub document: usize,
}

/// A document that names the same object (kind, namespace and name) as an
/// earlier document of the same apply. Applying both would create the object
/// from the first and overwrite it with the second, so neither is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    pub first: Source,
    pub again: Source,
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for Duplicate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = if self.namespace.is_empty() {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        };
        write!(
            f,
            "{}: document {} ({object}) has the same kind, namespace and name as document {}",
            self.again.file, self.again.document, self.first.document
        )?;
        if self.first.file != self.again.file {
            write!(f, " of {}", self.first.file)?;
        }
        f.write_str("; rename one")
    }
}

/// Every document that names the same object as an earlier one, in the
/// order given; each is paired with the first document naming its object.
/// Run it on everything applied together, after any namespace override.
pub fn duplicates<'a>(
    objects: impl IntoIterator<Item = (&'a Source, &'a Object)>,
) -> Vec<Duplicate> {
    let mut seen: std::collections::HashMap<(Kind, &str, &str), &Source> =
        std::collections::HashMap::new();
    let mut found = Vec::new();
    for (source, object) in objects {
        let meta = object.meta();
        let key = (object.kind(), meta.namespace.as_str(), meta.name.as_str());
        match seen.get(&key) {
            Some(first) => found.push(Duplicate {
                first: (*first).clone(),
                again: source.clone(),
                kind: object.kind(),
                namespace: meta.namespace.clone(),
                name: meta.name.clone(),
            }),
            None => {
                seen.insert(key, source);
            }
        }
    }
    found
}

/// Turns one YAML document into a validated object.
pub fn parse_document(value: serde_yaml::Value) -> Result<Object, Vec<FieldError>> {
    let serde_yaml::Value::Mapping(mut map) = value else {
        return Err(vec![fe(
            "",
            "expected a mapping with apiVersion, kind, metadata and spec",
        )]);
    };
    let mut errors = Vec::new();
    let text = |m: &mut serde_yaml::Mapping, k: &str| -> Option<String> {
        m.remove(k).map(|v| match v {
            serde_yaml::Value::String(s) => s,
            other => serde_yaml::to_string(&other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        })
    };
    match text(&mut map, "apiVersion") {
        Some(v) if v == crate::API_VERSION => {}
        Some(v) => errors.push(fe(
            "apiVersion",
            format!("{v:?} is not supported; use {}", crate::API_VERSION),
        )),
        None => errors.push(fe(
            "apiVersion",
            format!("required; use {}", crate::API_VERSION),
        )),
    }
    let kind_text = text(&mut map, "kind");
    let kind = match kind_text.as_deref().map(|k| (k, Kind::parse(k))) {
        Some((k, Some(kind))) if APPLYABLE.contains(&kind) && k == kind.as_str() => Some(kind),
        Some((k, _)) => {
            let list: Vec<&str> = APPLYABLE.iter().map(|k| k.as_str()).collect();
            errors.push(fe(
                "kind",
                format!(
                    "{k:?} cannot be applied; supported kinds: {}",
                    list.join(", ")
                ),
            ));
            None
        }
        None => {
            errors.push(fe("kind", "required, e.g. kind: Pod"));
            None
        }
    };
    let Some(kind) = kind else {
        return Err(errors);
    };
    let value = serde_yaml::Value::Mapping(map);
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(value, &mut track);
    let mut object = match Object::deserialize_body(kind, tracked) {
        Ok(o) => o,
        Err(e) => {
            let path = track.path().to_string();
            let path = if path == "." { String::new() } else { path };
            errors.push(fe(path, e.to_string()));
            return Err(errors);
        }
    };
    if object.meta().namespace.is_empty() && kind.namespaced() {
        object.meta_mut().namespace = DEFAULT_NAMESPACE.to_string();
    }
    errors.extend(validate(&object));
    // Checked here too, so that `apply` refuses before it uploads anything.
    if let Err(e) = check_size(&object) {
        errors.push(fe("", e.to_string()));
    }
    if errors.is_empty() {
        Ok(object)
    } else {
        Err(errors)
    }
}

/// Largest an object may be, encoded as the store keeps it and the wire
/// carries it (postcard): 1.5 MiB, as Kubernetes allows in etcd. One object
/// then always fits in one 4 MiB frame with room to spare — as a `Get`
/// answer, a watch event or a raft entry — and lists stream in frames of
/// several objects each (see `Request::ListStream`).
pub const MAX_OBJECT_SIZE: usize = 1536 << 10;

/// An object larger than [`MAX_OBJECT_SIZE`]; the master answers it with
/// `ErrorCode::TooLarge`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{object} is {size} bytes encoded; an object may be at most {MAX_OBJECT_SIZE} bytes (1.5 MiB): \
     keep large data out of annotations, labels, args and env, and put it in a module or a file"
)]
pub struct ObjectTooLarge {
    /// Which object, as [`Object::describe`] names it.
    pub object: String,
    pub size: usize,
}

/// The size of an object as the store keeps it (postcard), counted without
/// encoding it.
pub fn encoded_size(object: &Object) -> usize {
    // Counting cannot run out of room; should it fail all the same, the
    // object counts as too large rather than slipping through.
    postcard::serialize_with_flavor(object, postcard::ser_flavors::Size::default())
        .unwrap_or(usize::MAX)
}

/// Refuses an object larger than [`MAX_OBJECT_SIZE`]; gives its encoded
/// size otherwise. The master checks every object it is asked to store
/// (create, update and status update of every kind); `apply` checks
/// manifests before it sends anything.
pub fn check_size(object: &Object) -> Result<usize, ObjectTooLarge> {
    let size = encoded_size(object);
    if size > MAX_OBJECT_SIZE {
        return Err(ObjectTooLarge {
            object: object.describe(),
            size,
        });
    }
    Ok(size)
}

/// Validates an object as the master does before storing it (the size
/// limit is checked apart, by [`check_size`], as it has its own error code).
pub fn validate(object: &Object) -> Vec<FieldError> {
    let mut errors = validate_meta(object.meta(), object.kind());
    errors.extend(object.validate_kind());
    errors
}

fn validate_meta(m: &crate::meta::ObjectMeta, kind: Kind) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if m.name.is_empty() {
        errors.push(fe("metadata.name", "required"));
    } else if !is_dns_subdomain(&m.name) {
        errors.push(fe("metadata.name", format!("{:?} must be lowercase letters, digits, '-' and '.', start and end with a letter or digit, at most 253 characters", m.name)));
    }
    if kind.namespaced() && !is_dns_label(&m.namespace) {
        errors.push(fe(
            "metadata.namespace",
            format!(
                "{:?} must be a DNS label (lowercase letters, digits, '-', at most 63)",
                m.namespace
            ),
        ));
    }
    if !kind.namespaced() && !m.namespace.is_empty() {
        errors.push(fe(
            "metadata.namespace",
            format!("{} objects are not namespaced; remove the namespace", kind),
        ));
    }
    for (k, v) in &m.labels {
        if !is_label_key(k) {
            errors.push(fe(
                format!("metadata.labels.{k}"),
                "not a valid label key (name or prefix/name, alphanumerics, '-', '_', '.')",
            ));
        }
        if !is_label_value(v) {
            errors.push(fe(
                format!("metadata.labels.{k}"),
                format!(
                    "{v:?} is not a valid label value (at most 63 alphanumerics, '-', '_', '.')"
                ),
            ));
        }
    }
    for k in m.annotations.keys() {
        if !is_label_key(k) {
            errors.push(fe(
                format!("metadata.annotations.{k}"),
                "not a valid annotation key",
            ));
        }
    }
    for (i, f) in m.finalizers.iter().enumerate() {
        if !is_label_key(f) {
            errors.push(fe(
                format!("metadata.finalizers[{i}]"),
                format!("{f:?} is not a valid finalizer (a name or prefix/name, like a label key)"),
            ));
        }
    }
    errors
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Dot-separated DNS labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `[prefix/]name` where name is a label value that is not empty.
pub fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// At most 63 of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric (or empty).
pub fn is_label_value(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric())
}

/// What `apply` says beside applying a file's documents, for a user who
/// may not expect what a manifest does: (document number, the hint).
///
/// A bare Pod without `restartPolicy` gets the default, `Always`, as in
/// Kubernetes: its program is started again each time it exits, even with
/// 0, so a program that runs to completion ends in CrashLoopBackOff. The
/// pod is still applied; the hint says how to have it finish instead.
/// Documents that are not valid YAML are left to [`parse_manifests`].
pub fn hints(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let Ok(value) = <serde_yaml::Value as serde::Deserialize>::deserialize(doc) else {
            break;
        };
        if value.get("kind").and_then(|k| k.as_str()) != Some("Pod") {
            continue;
        }
        let spec = value.get("spec");
        if spec.and_then(|s| s.get("restartPolicy")).is_some() {
            continue;
        }
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        out.push((
            i + 1,
            format!(
                "pod/{name} sets no restartPolicy, so it is Always: its program is started again \
                 each time it exits, even with 0. For a program that runs to completion, set \
                 `restartPolicy: Never` (or `OnFailure`) in its spec"
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample manifests users copy from are valid as written.
    #[test]
    fn every_sample_manifest_parses_and_validates() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads");
        let mut seen = 0;
        for dir in std::fs::read_dir(&root).expect("workloads/").flatten() {
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let path = f.path();
                if path.extension().is_some_and(|e| e == "yaml") {
                    let text = std::fs::read_to_string(&path).expect("read");
                    if let Err(e) = parse_manifests(&text) {
                        panic!("{}: {e:?}", path.display());
                    }
                    seen += 1;
                }
            }
        }
        assert!(
            seen >= 8,
            "only {seen} sample manifests found under {}",
            root.display()
        );
    }
    use crate::objects::Pod;

    const GOOD: &str = "apiVersion: flotilla.dev/v1
kind: Pod
metadata:
  name: hello
  labels: {app: hello}
spec:
  module: ./hello.wasm
  args: [a, b]
  env: [{name: X, value: '1'}]
  restartPolicy: Never
  resources:
    limits: {memory: 64Mi, cpu: 1}
";

    /// A pod whose one annotation holds `bytes` bytes.
    fn pod_with_annotation(bytes: usize) -> Object {
        let mut p = Pod::default();
        p.metadata.name = "big".into();
        p.metadata.namespace = "default".into();
        p.spec.module = "sha256:00".into();
        p.metadata
            .annotations
            .insert("example.com/blob".into(), "x".repeat(bytes));
        Object::Pod(p)
    }

    #[test]
    fn objects_are_limited_in_size() {
        let overhead = encoded_size(&pod_with_annotation(0));
        assert!(overhead < 200, "{overhead}");
        // (annotation bytes, accepted?)
        let cases = [
            (0, true),
            (1 << 20, true),
            (MAX_OBJECT_SIZE - overhead - 8, true),
            (MAX_OBJECT_SIZE, false),
            (3 << 20, false),
        ];
        for (bytes, accepted) in cases {
            let pod = pod_with_annotation(bytes);
            match check_size(&pod) {
                Ok(size) => {
                    assert!(accepted, "{bytes} bytes were accepted");
                    assert_eq!(size, postcard::to_allocvec(&pod).expect("encodes").len());
                }
                Err(e) => {
                    assert!(!accepted, "{bytes} bytes were refused: {e}");
                    assert_eq!(e.object, "pods/big in namespace default");
                    assert!(e.size > MAX_OBJECT_SIZE);
                    let message = e.to_string();
                    for part in [
                        "pods/big in namespace default",
                        &e.size.to_string(),
                        &MAX_OBJECT_SIZE.to_string(),
                        "keep large data out of annotations",
                    ] {
                        assert!(message.contains(part), "{message:?} lacks {part:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn manifests_over_the_size_limit_are_refused() {
        let text = GOOD.replace(
            "  labels: {app: hello}\n",
            &format!(
                "  labels: {{app: hello}}\n  annotations: {{example.com/blob: {}}}\n",
                "x".repeat(MAX_OBJECT_SIZE)
            ),
        );
        let errors = errors_of(&text);
        assert!(
            errors
                .iter()
                .any(|e| e.contains("an object may be at most")),
            "{errors:?}"
        );
        assert!(errors_of(GOOD).is_empty());
    }

    fn errors_of(text: &str) -> Vec<String> {
        parse_manifests(text)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn parses_a_pod() {
        let objs = parse_manifests(GOOD).expect("valid");
        let Object::Pod(p) = &objs[0] else {
            panic!("not a pod")
        };
        assert_eq!(p.metadata.namespace, "default");
        assert_eq!(p.spec.args, ["a", "b"]);
        assert_eq!(
            p.spec
                .resources
                .limits
                .memory
                .as_ref()
                .and_then(|q| q.bytes().ok()),
            Some(64 << 20)
        );
        assert_eq!(
            p.spec
                .resources
                .limits
                .cpu
                .as_ref()
                .and_then(|q| q.millicores().ok()),
            Some(1000)
        );
    }

    #[test]
    fn multi_document_files() {
        let two = format!(
            "{GOOD}---\n{}\n---\n",
            GOOD.replace("name: hello", "name: hello2")
        );
        assert_eq!(parse_manifests(&two).map(|v| v.len()), Ok(2));
    }

    #[test]
    fn errors_name_the_field_path() {
        let cases: &[(&str, &str)] = &[
            (
                &GOOD.replace("64Mi", "12Q"),
                "document 1: spec.resources.limits.memory: \"12Q\" is not a quantity",
            ),
            (
                &GOOD.replace("cpu: 1", "cpu: lots"),
                "spec.resources.limits.cpu: \"lots\" is not a quantity",
            ),
            (
                &GOOD.replace("Never", "Sometimes"),
                "spec.restartPolicy: unknown variant `Sometimes`",
            ),
            (
                &GOOD.replace("name: hello", "name: Hello_World"),
                "metadata.name: \"Hello_World\" must be lowercase",
            ),
            (&GOOD.replace("name: X", "name: ''"), "spec.env[0].name:"),
            (
                &GOOD.replace("args: [a, b]", "args: 7"),
                "spec.args: invalid type",
            ),
            (
                &GOOD.replace("restartPolicy", "restartPolcy"),
                "spec.restartPolcy: unknown field `restartPolcy`, expected one of",
            ),
            (
                &GOOD.replace("kind: Pod", "kind: StatefulSet"),
                "kind: \"StatefulSet\" cannot be applied",
            ),
            (
                &GOOD.replace("flotilla.dev/v1", "v1"),
                "apiVersion: \"v1\" is not supported",
            ),
            (
                &GOOD.replace("module: ./hello.wasm", "module: sha256:abc"),
                "spec.module: \"sha256:abc\" is not a sha256",
            ),
            ("just a string", "document 1: expected a mapping"),
            ("a: [unclosed", "not valid YAML"),
            ("", "holds no objects"),
        ];
        for (text, want) in cases {
            let errs = errors_of(text);
            assert!(
                errs.iter().any(|e| e.contains(want)),
                "want {want:?} in {errs:?}"
            );
        }
    }

    #[test]
    fn one_bad_document_fails_the_file() {
        let text = format!("{GOOD}---\n{}", GOOD.replace("64Mi", "12Q"));
        let errs = errors_of(&text);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with("document 2: spec.resources.limits.memory"),
            "{errs:?}"
        );
    }

    #[test]
    fn duplicate_objects_name_both_documents() {
        let pod = |ns: &str, name: &str| {
            let mut p = Pod::default();
            p.metadata.namespace = ns.into();
            p.metadata.name = name.into();
            Object::Pod(p)
        };
        let at = |file: &str, document| Source {
            file: file.into(),
            document,
        };
        // (source, object) in apply order → the expected errors.
        type Case = (Vec<(Source, Object)>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                vec![
                    (at("a.yaml", 1), pod("default", "web")),
                    (at("a.yaml", 2), pod("default", "db")),
                    (at("a.yaml", 3), pod("default", "web")),
                ],
                vec!["a.yaml: document 3 (Pod default/web) has the same kind, namespace and name as document 1; rename one"],
            ),
            (
                vec![
                    (at("a.yaml", 1), pod("default", "web")),
                    (at("b.yaml", 2), pod("default", "web")),
                    (at("b.yaml", 4), pod("default", "web")),
                ],
                vec![
                    "b.yaml: document 2 (Pod default/web) has the same kind, namespace and name as document 1 of a.yaml; rename one",
                    "b.yaml: document 4 (Pod default/web) has the same kind, namespace and name as document 1 of a.yaml; rename one",
                ],
            ),
            // Another namespace or another name is another object.
            (
                vec![
                    (at("a.yaml", 1), pod("default", "web")),
                    (at("a.yaml", 2), pod("prod", "web")),
                    (at("a.yaml", 3), pod("default", "web2")),
                ],
                vec![],
            ),
        ];
        for (objects, want) in cases {
            let got: Vec<String> = duplicates(objects.iter().map(|(s, o)| (s, o)))
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn documents_are_numbered_as_in_the_file() {
        let text = format!(
            "---\n{GOOD}---\n---\n{}",
            GOOD.replace("name: hello", "name: hello2")
        );
        let numbers: Vec<usize> = parse_manifests_numbered(&text)
            .expect("valid")
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(numbers, [1, 3]);
    }

    #[test]
    fn names_and_labels() {
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("-a"));
        assert!(is_label_key("flotilla.dev/arch"));
        assert!(!is_label_key("/x"));
        assert!(is_label_value(""));
        assert!(!is_label_value("a b"));
    }

    #[test]
    fn a_bare_pod_without_restart_policy_gets_a_hint() {
        let text = "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata: {name: a}\nspec: {module: m.wasm}\n---\n\
                    apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata: {name: b}\nspec: {module: m.wasm, restartPolicy: Always}\n---\n\
                    apiVersion: flotilla.dev/v1\nkind: Deployment\nmetadata: {name: c}\nspec: {}\n";
        let got = hints(text);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, 1);
        assert!(
            got[0]
                .1
                .starts_with("pod/a sets no restartPolicy, so it is Always"),
            "{got:?}"
        );
        // Broken YAML: no hint, and no panic (parse_manifests reports it).
        assert!(hints("kind: Pod\n  bad: [").is_empty());
    }
}
