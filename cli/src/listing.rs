//! What `get` does with the objects it lists, the same way for every kind:
//! which objects the arguments name (`pod,node`, `pods/hello`, `pods a b`),
//! `--field-selector`, `--sort-by`, the output formats (`-o name`,
//! `-o jsonpath=…`, `-o custom-columns=…`) and the table's shape
//! (`NAMESPACE` only with `-A`, `--show-labels`, `-L`, `--no-headers`).
//! Pure: objects in, text out.

use crate::jsonpath::{self, Template};
use crate::output::Table;
use anyhow::{anyhow, bail};
use flotilla_api::{Kind, Object};
use serde_json::Value;
use std::collections::BTreeMap;

/// How `get` prints (`-o`).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Table,
    Wide,
    Json,
    Yaml,
    /// `KIND/NAME` per object.
    Name,
    JsonPath(Template),
    /// Header and path of each column.
    CustomColumns(Vec<(String, Template)>),
}

impl Output {
    /// `table`, `wide`, `json`, `yaml`, `name`, `jsonpath=TEMPLATE`,
    /// `custom-columns=HEADER:PATH,…`.
    pub fn parse(s: &str) -> Result<Output, String> {
        let (name, arg) = match s.split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let out = match (name, arg) {
            ("table", None) => Output::Table,
            ("wide", None) => Output::Wide,
            ("json", None) => Output::Json,
            ("yaml", None) => Output::Yaml,
            ("name", None) => Output::Name,
            ("jsonpath", Some(t)) => Output::JsonPath(Template::parse(t).map_err(|e| e.to_string())?),
            ("custom-columns", Some(spec)) => Output::CustomColumns(custom_columns(spec)?),
            ("jsonpath" | "custom-columns", None) => {
                return Err(format!("-o {name} needs its template: -o {name}=…, e.g. -o jsonpath='{{.items[*].metadata.name}}' or -o custom-columns=NAME:.metadata.name,NODE:.spec.nodeName"))
            }
            _ => {
                return Err(format!(
                    "-o {s}: use table, wide, json, yaml, name, jsonpath=TEMPLATE or custom-columns=HEADER:PATH,…"
                ))
            }
        };
        Ok(out)
    }

    /// Whether this prints a table with its rows (and can be watched row by row).
    pub fn tabular(&self) -> bool {
        matches!(self, Output::Table | Output::Wide)
    }

    /// The YAML or JSON format, if it is one.
    pub fn structured(&self) -> Option<crate::output::Format> {
        match self {
            Output::Json => Some(crate::output::Format::Json),
            Output::Yaml => Some(crate::output::Format::Yaml),
            _ => None,
        }
    }
}

fn custom_columns(spec: &str) -> Result<Vec<(String, Template)>, String> {
    let mut columns = Vec::new();
    for col in spec.split(',') {
        let (header, path) = col.split_once(':').ok_or_else(|| {
            format!("custom column {col:?} is not HEADER:PATH, e.g. NAME:.metadata.name")
        })?;
        if header.is_empty() {
            return Err(format!("custom column {col:?} has no header"));
        }
        columns.push((
            header.to_string(),
            Template::parse(path).map_err(|e| e.to_string())?,
        ));
    }
    Ok(columns)
}

/// What the arguments of `get` name: kinds, each with the names asked for
/// (none: all of that kind).
pub fn targets(args: &[String]) -> anyhow::Result<Vec<(Kind, Vec<String>)>> {
    let Some(first) = args.first() else {
        bail!("name a kind, e.g. `flotilla get pods`, `flotilla get pod,node`, `flotilla get pods/hello`");
    };
    if first.contains('/') {
        let mut groups: Vec<(Kind, Vec<String>)> = Vec::new();
        for a in args {
            let (kind, name) = a.split_once('/').ok_or_else(|| {
                anyhow!("{a:?}: after KIND/NAME, every argument is KIND/NAME too (e.g. pods/a nodes/n1)")
            })?;
            let kind = parse_kind(kind)?;
            if name.is_empty() {
                bail!("{a:?} names no object: write KIND/NAME, e.g. pod/hello");
            }
            match groups.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, names)) => names.push(name.to_string()),
                None => groups.push((kind, vec![name.to_string()])),
            }
        }
        return Ok(groups);
    }
    let kinds = first
        .split(',')
        .filter(|k| !k.is_empty())
        .map(parse_kind)
        .collect::<anyhow::Result<Vec<Kind>>>()?;
    let names: Vec<String> = args[1..].to_vec();
    if kinds.len() > 1 && !names.is_empty() {
        bail!(
            "names go with one kind: write `get {} NAME…`, or KIND/NAME for each",
            first.split(',').next().unwrap_or_default()
        );
    }
    if let Some(bad) = names.iter().find(|n| n.contains('/')) {
        bail!("{bad:?}: give either a kind and names, or KIND/NAME for each");
    }
    Ok(kinds.into_iter().map(|k| (k, names.clone())).collect())
}

pub fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Kind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        anyhow!("unknown kind {s:?}; use one of {}", all.join(", "))
    })
}

/// `--field-selector`: terms `PATH=VALUE`, `PATH==VALUE`, `PATH!=VALUE`,
/// all of which must hold. A path is a field of the object's manifest
/// (`metadata.name`, `spec.nodeName`, `status.phase`…); one it does not
/// have counts as empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector(Vec<(Vec<String>, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> anyhow::Result<FieldSelector> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, equal, value) = if let Some((p, v)) = term.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = term.split_once("==") {
                (p, true, v)
            } else if let Some((p, v)) = term.split_once('=') {
                (p, true, v)
            } else {
                bail!("--field-selector term {term:?} is not FIELD=VALUE or FIELD!=VALUE, e.g. status.phase=Running,spec.nodeName=pi-1");
            };
            let path: Vec<String> = path.trim().split('.').map(String::from).collect();
            if path.iter().any(String::is_empty) {
                bail!("--field-selector term {term:?}: the field is a dotted path such as metadata.name");
            }
            terms.push((path, equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the object (as its manifest) is selected.
    pub fn matches(&self, manifest: &Value) -> bool {
        self.0.iter().all(|(path, equal, want)| {
            let got = path
                .iter()
                .try_fold(manifest, |v, p| v.get(p.as_str()))
                .map(jsonpath::scalar)
                .unwrap_or_default();
            (got == *want) == *equal
        })
    }
}

/// An object in its manifest shape (what YAML, JSON and JSONPath see).
pub fn manifest(o: &Object) -> Value {
    crate::output::prune(o.to_manifest_value()).unwrap_or_default()
}

/// Sorts objects by what `by` finds in each (`--sort-by`): numbers by
/// value, text by text; objects where it finds nothing come first, as
/// kubectl puts them.
pub fn sort_by(objs: &mut [Object], by: &Template) {
    let mut keyed: Vec<(Option<Value>, Object)> = objs
        .iter()
        .map(|o| {
            (
                by.find(&manifest(o)).first().map(|v| (*v).clone()),
                o.clone(),
            )
        })
        .collect();
    keyed.sort_by(|(a, _), (b, _)| match (a, b) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(a), Some(b)) => jsonpath::compare(a, b).unwrap_or(std::cmp::Ordering::Equal),
    });
    for (slot, (_, o)) in objs.iter_mut().zip(keyed) {
        *slot = o;
    }
}

/// `KIND/NAME`, as `-o name` prints an object.
pub fn name_of(o: &Object) -> String {
    format!("{}/{}", o.kind().as_str().to_lowercase(), o.meta().name)
}

/// The shape of a table beyond its kind's columns.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Keep the NAMESPACE column (`-A`).
    pub namespace: bool,
    /// A LABELS column (`--show-labels`).
    pub show_labels: bool,
    /// A column per label key (`-L`).
    pub label_columns: Vec<String>,
    /// NAME cells as `kind/name` (several kinds in one `get`).
    pub kind_prefix: Option<Kind>,
}

/// The table of `objs` from their rows (one per object, in order) and the
/// kind's header, shaped as asked.
pub fn shape(header: &[String], rows: Vec<Vec<String>>, objs: &[Object], s: &Shape) -> Table {
    let ns = header
        .iter()
        .position(|h| h == "NAMESPACE")
        .filter(|_| !s.namespace);
    let name = header.iter().position(|h| h == "NAME");
    let mut header: Vec<String> = header.to_vec();
    let mut rows = rows;
    if let Some(k) = s.kind_prefix {
        if let Some(at) = name {
            let prefix = k.as_str().to_lowercase();
            for r in &mut rows {
                if let Some(cell) = r.get_mut(at) {
                    *cell = format!("{prefix}/{cell}");
                }
            }
        }
    }
    for key in &s.label_columns {
        header.push(label_header(key));
    }
    if s.show_labels {
        header.push("LABELS".into());
    }
    for (r, o) in rows.iter_mut().zip(objs) {
        let labels: &BTreeMap<String, String> = &o.meta().labels;
        for key in &s.label_columns {
            r.push(labels.get(key).cloned().unwrap_or_default());
        }
        if s.show_labels {
            r.push(if labels.is_empty() {
                "<none>".into()
            } else {
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            });
        }
    }
    if let Some(at) = ns {
        header.remove(at);
        for r in &mut rows {
            if at < r.len() {
                r.remove(at);
            }
        }
    }
    Table { header, rows }
}

/// A label column's header: the key's name part, in capitals (`-L app`
/// gives `APP`, `-L app.kubernetes.io/name` gives `NAME`).
fn label_header(key: &str) -> String {
    key.rsplit('/').next().unwrap_or(key).to_uppercase()
}

/// `-o custom-columns`: a header of the given names, a row per object, a
/// cell per path (several values joined by commas, `<none>` for none).
pub fn custom_table(columns: &[(String, Template)], objs: &[Object]) -> Table {
    let header: Vec<String> = columns.iter().map(|(h, _)| h.clone()).collect();
    let rows = objs
        .iter()
        .map(|o| {
            let m = manifest(o);
            columns
                .iter()
                .map(|(_, t)| {
                    let found: Vec<String> = t.find(&m).into_iter().map(jsonpath::scalar).collect();
                    if found.is_empty() {
                        "<none>".to_string()
                    } else {
                        found.join(",")
                    }
                })
                .collect()
        })
        .collect();
    Table { header, rows }
}

/// What `-o jsonpath` reads: the object itself when one was named, else a
/// `List` of them, as kubectl does.
pub fn jsonpath_input(objs: &[Object], single: bool) -> Value {
    let items: Vec<Value> = objs.iter().map(manifest).collect();
    if single && items.len() == 1 {
        items.into_iter().next().unwrap_or_default()
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
    }
}

/// A table without its header (`--no-headers`).
pub fn without_header(t: &Table) -> String {
    let text = t.to_string();
    text.split_once('\n')
        .map(|(_, rest)| rest.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_api::objects::PodPhase;
    use flotilla_api::Pod;

    fn pod(
        ns: &str,
        name: &str,
        node: Option<&str>,
        phase: PodPhase,
        labels: &[(&str, &str)],
    ) -> Object {
        let mut p = Pod::default();
        p.metadata.namespace = ns.into();
        p.metadata.name = name.into();
        p.metadata.labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        p.spec.node_name = node.map(String::from);
        p.status.phase = phase;
        Object::Pod(p)
    }

    #[test]
    fn arguments_name_kinds_and_objects_as_kubectl_takes_them() {
        let a = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(targets(&a(&["pods"])).expect("ok"), [(Kind::Pod, vec![])]);
        assert_eq!(
            targets(&a(&["pod,node"])).expect("ok"),
            [(Kind::Pod, vec![]), (Kind::Node, vec![])]
        );
        assert_eq!(
            targets(&a(&["pods", "a", "b"])).expect("ok"),
            [(Kind::Pod, a(&["a", "b"]))]
        );
        assert_eq!(
            targets(&a(&["pods/a", "no/n1", "po/b"])).expect("ok"),
            [(Kind::Pod, a(&["a", "b"])), (Kind::Node, a(&["n1"]))]
        );
        for bad in [
            &["pods/a", "b"][..],
            &["pod,node", "a"],
            &["pods", "node/a"],
            &["pods/"],
            &["potatoes"],
            &[],
        ] {
            assert!(targets(&a(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn field_selectors_compare_manifest_fields() {
        let on = manifest(&pod("default", "a", Some("n1"), PodPhase::Running, &[]));
        let off = manifest(&pod("default", "b", None, PodPhase::Pending, &[]));
        let sel = |s: &str| FieldSelector::parse(s).expect(s);
        assert!(sel("spec.nodeName=n1").matches(&on));
        assert!(!sel("spec.nodeName=n1").matches(&off));
        assert!(sel("spec.nodeName=").matches(&off), "unbound: empty");
        assert!(sel("status.phase!=Running,metadata.name==b").matches(&off));
        assert!(sel("metadata.namespace=default,metadata.name=a").matches(&on));
        for bad in ["phase", "status..phase=x", "=x"] {
            assert!(FieldSelector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn outputs_parse_with_a_hint_when_wrong() {
        assert_eq!(Output::parse("name"), Ok(Output::Name));
        assert!(matches!(
            Output::parse("jsonpath={.metadata.name}"),
            Ok(Output::JsonPath(_))
        ));
        assert!(matches!(
            Output::parse("custom-columns=NAME:.metadata.name,NODE:.spec.nodeName"),
            Ok(Output::CustomColumns(c)) if c.len() == 2
        ));
        for bad in ["jsonpath", "xml", "custom-columns=NAME", "jsonpath={.a"] {
            assert!(Output::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tables_drop_namespace_unless_all_and_add_labels() {
        let objs = [
            pod(
                "default",
                "a",
                Some("n1"),
                PodPhase::Running,
                &[("app", "web"), ("tier", "db")],
            ),
            pod("default", "b", None, PodPhase::Pending, &[]),
        ];
        let header: Vec<String> = ["NAMESPACE", "NAME", "STATUS"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let rows = vec![
            vec!["default".into(), "a".into(), "Running".into()],
            vec!["default".into(), "b".into(), "Pending".into()],
        ];
        let t = shape(
            &header,
            rows.clone(),
            &objs,
            &Shape {
                show_labels: true,
                label_columns: vec!["app".into()],
                ..Shape::default()
            },
        );
        assert_eq!(
            t.to_string(),
            "NAME   STATUS    APP   LABELS\na      Running   web   app=web,tier=db\nb      Pending         <none>\n"
        );
        let all = shape(
            &header,
            rows.clone(),
            &objs,
            &Shape {
                namespace: true,
                kind_prefix: Some(Kind::Pod),
                ..Shape::default()
            },
        );
        assert_eq!(
            all.to_string(),
            "NAMESPACE   NAME    STATUS\ndefault     pod/a   Running\ndefault     pod/b   Pending\n"
        );
        assert_eq!(
            without_header(&all),
            "default     pod/a   Running\ndefault     pod/b   Pending\n"
        );
    }

    #[test]
    fn custom_columns_sorting_and_names() {
        let mut objs = vec![
            pod("default", "b", None, PodPhase::Pending, &[]),
            pod("default", "a", Some("n1"), PodPhase::Running, &[]),
        ];
        let Ok(Output::CustomColumns(cols)) =
            Output::parse("custom-columns=POD:.metadata.name,NODE:.spec.nodeName")
        else {
            panic!("parses")
        };
        assert_eq!(
            custom_table(&cols, &objs).to_string(),
            "POD   NODE\nb     <none>\na     n1\n"
        );
        sort_by(&mut objs, &Template::parse(".metadata.name").expect("t"));
        assert_eq!(
            objs.iter().map(name_of).collect::<Vec<_>>(),
            ["pod/a", "pod/b"]
        );
        // Objects where the path finds nothing come first.
        sort_by(&mut objs, &Template::parse("{.spec.nodeName}").expect("t"));
        assert_eq!(
            objs.iter().map(name_of).collect::<Vec<_>>(),
            ["pod/b", "pod/a"]
        );
        let single = jsonpath_input(&objs[..1], true);
        assert_eq!(single["metadata"]["name"], "b");
        assert_eq!(
            jsonpath_input(&objs, false)["items"][1]["metadata"]["name"],
            "a"
        );
    }
}
