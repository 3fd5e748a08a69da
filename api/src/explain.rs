//! `flotilla explain KIND[.field]...`: the fields of a kind's manifests and
//! what they mean, read from the JSON Schema that [`Kind::schema`] derives
//! from the very types that read manifests (their serde names and defaults,
//! their doc comments), so the page cannot drift from what `apply` takes.

use crate::objects::Kind;
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// How deep `--recursive` goes (the object types nest far less).
const MAX_DEPTH: usize = 12;

/// Where a path leads in a kind's schema.
struct Walked {
    kind: Kind,
    walker: Walker,
    root: Value,
    /// What the path names, its references followed.
    node: Value,
    /// The last field of the path and its schema (None for the kind itself).
    field: Option<(String, Value)>,
}

/// Follows `KIND[.field]...` through the kind's schema.
fn walk(path: &str) -> Result<Walked, String> {
    let mut parts = path.trim().split('.');
    let kind_word = parts.next().unwrap_or_default();
    let kind = Kind::parse(kind_word).ok_or_else(|| {
        let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        format!(
            "unknown kind {kind_word:?}; explain one of: {}",
            kinds.join(", ")
        )
    })?;
    let root = kind.schema().to_value();
    let walker = Walker {
        defs: root
            .get("$defs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    };
    let mut node = walker.resolve(&root);
    let mut field: Option<(String, Value)> = None;
    let mut walked = kind.as_str().to_string();
    for name in parts {
        let props = walker.properties(&node);
        let Some(found) = props.get(name) else {
            let names: Vec<&str> = props.keys().map(String::as_str).collect();
            return Err(if names.is_empty() {
                format!("{walked} has no fields; {name:?} is not one")
            } else {
                format!(
                    "field {name:?} does not exist in {walked}; its fields are: {}",
                    names.join(", ")
                )
            });
        };
        walked = format!("{walked}.{name}");
        field = Some((name.to_string(), found.clone()));
        node = walker.resolve(&walker.element(found));
    }
    Ok(Walked {
        kind,
        walker,
        root,
        node,
        field,
    })
}

/// The fields under `KIND[.field]...`, for completion (none if the path
/// leads nowhere).
pub fn field_names(path: &str) -> Vec<String> {
    walk(path)
        .map(|w| w.walker.properties(&w.node).keys().cloned().collect())
        .unwrap_or_default()
}

/// The text `flotilla explain PATH` prints, or what is wrong with `PATH`.
pub fn explain(path: &str, recursive: bool) -> Result<String, String> {
    let Walked {
        kind,
        walker,
        root,
        node,
        field,
    } = walk(path)?;
    let mut out = String::new();
    let _ = writeln!(out, "KIND:       {}", kind.as_str());
    let _ = writeln!(out, "VERSION:    {}", crate::API_VERSION);
    let description = match &field {
        Some((name, schema)) => {
            let _ = writeln!(out, "\nFIELD:      {name} <{}>", walker.type_name(schema));
            walker.description(schema)
        }
        None => walker.description(&root),
    };
    out.push_str("\nDESCRIPTION:\n");
    write_text(&mut out, &description, 4);
    if let Some(values) = walker.allowed(&node) {
        let _ = writeln!(out, "    Allowed values: {}", values.join(", "));
    }
    let props = walker.properties(&node);
    if props.is_empty() && field.is_none() {
        return Ok(out);
    }
    if !props.is_empty() || field.is_none() {
        out.push_str("\nFIELDS:\n");
    }
    if field.is_none() {
        // What every manifest says first, though the types leave it to the parser.
        let _ = writeln!(out, "  apiVersion\t<string>");
        write_text(&mut out, &format!("Always {}.", crate::API_VERSION), 4);
        out.push('\n');
        let _ = writeln!(out, "  kind\t<string>");
        write_text(&mut out, &format!("Always {}.", kind.as_str()), 4);
        out.push('\n');
    }
    if recursive {
        walker.tree(&mut out, &node, 1, 0);
    } else {
        for (name, schema) in &props {
            let _ = writeln!(out, "  {name}\t<{}>", walker.type_name(schema));
            let first = first_paragraph(&walker.description(schema));
            if !first.is_empty() {
                write_text(&mut out, &first, 4);
            }
            out.push('\n');
        }
    }
    Ok(out.trim_end().to_string() + "\n")
}

/// Reads the schema of one kind, following its `$ref`s.
struct Walker {
    defs: Map<String, Value>,
}

impl Walker {
    /// `schema` itself, or the definition it refers to, or the one
    /// alternative of an optional (`anyOf [X, null]`).
    fn resolve(&self, schema: &Value) -> Value {
        let mut v = schema.clone();
        for _ in 0..MAX_DEPTH {
            if let Some(target) = v
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .and_then(|name| self.defs.get(name))
            {
                v = target.clone();
                continue;
            }
            if let Some(one) = non_null_alternative(&v) {
                v = one;
                continue;
            }
            break;
        }
        v
    }

    /// What a field holds, seen through lists and maps: `containers` is
    /// explained by its items, `labels` by its values.
    fn element(&self, schema: &Value) -> Value {
        let v = self.resolve(schema);
        match v.get("type").and_then(Value::as_str) {
            Some("array") => v.get("items").cloned().unwrap_or(Value::Null),
            Some("object") if v.get("properties").is_none() => v
                .get("additionalProperties")
                .filter(|a| a.is_object())
                .cloned()
                .unwrap_or(v),
            _ => v,
        }
    }

    /// The fields of an object schema, sorted by name.
    fn properties(&self, schema: &Value) -> Map<String, Value> {
        let mut props: Vec<(String, Value)> = schema
            .get("properties")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        props.sort_by(|a, b| a.0.cmp(&b.0));
        props.into_iter().collect()
    }

    /// kubectl's way of naming a type: `string`, `integer`, `boolean`,
    /// `PodSpec`, `[]Container`, `map[string]string`.
    fn type_name(&self, schema: &Value) -> String {
        if let Some(name) = ref_name(schema) {
            return self
                .defs
                .get(name)
                .filter(|d| is_scalar(d))
                .map(|d| self.type_name(d))
                .unwrap_or_else(|| name.to_string());
        }
        if let Some(one) = non_null_alternative(schema) {
            return self.type_name(&one);
        }
        let ty = match schema.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap_or("string")
                .to_string(),
            _ if schema.get("oneOf").is_some() || schema.get("enum").is_some() => "string".into(),
            _ => "Object".into(),
        };
        match ty.as_str() {
            "array" => format!(
                "[]{}",
                schema
                    .get("items")
                    .map(|i| self.type_name(i))
                    .unwrap_or_else(|| "Object".into())
            ),
            "object" => match schema.get("additionalProperties") {
                Some(values) if values.is_object() => {
                    format!("map[string]{}", self.type_name(values))
                }
                _ => "Object".into(),
            },
            "number" => "number".into(),
            other => other.to_string(),
        }
    }

    /// A field's description, else its type's.
    fn description(&self, schema: &Value) -> String {
        if let Some(d) = schema.get("description").and_then(Value::as_str) {
            return d.to_string();
        }
        let resolved = self.resolve(schema);
        if resolved != *schema {
            return self.description(&resolved);
        }
        String::new()
    }

    /// The values an enumeration allows, if `schema` is one.
    fn allowed(&self, schema: &Value) -> Option<Vec<String>> {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return Some(values.iter().map(text).collect());
        }
        let alternatives = schema.get("oneOf").and_then(Value::as_array)?;
        let mut values = Vec::new();
        for a in alternatives {
            if let Some(c) = a.get("const") {
                values.push(text(c));
            } else if let Some(e) = a.get("enum").and_then(Value::as_array) {
                values.extend(e.iter().map(text));
            } else {
                return None;
            }
        }
        Some(values)
    }

    /// `--recursive`: every field under `schema`, indented by depth.
    fn tree(&self, out: &mut String, schema: &Value, depth: usize, seen: usize) {
        if seen > MAX_DEPTH {
            return;
        }
        for (name, field) in self.properties(schema) {
            let _ = writeln!(
                out,
                "{}{name}\t<{}>",
                "  ".repeat(depth),
                self.type_name(&field)
            );
            let inner = self.resolve(&self.element(&field));
            self.tree(out, &inner, depth + 1, seen + 1);
        }
    }
}

/// The name a `$ref` points at.
fn ref_name(schema: &Value) -> Option<&str> {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/$defs/"))
}

/// The one schema of `anyOf [X, {type: null}]`.
fn non_null_alternative(schema: &Value) -> Option<Value> {
    let alts = schema.get("anyOf").and_then(Value::as_array)?;
    let mut rest = alts
        .iter()
        .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"));
    let one = rest.next()?;
    rest.next().is_none().then(|| one.clone())
}

/// Whether a definition is a plain value (a time, a quantity, an enumeration).
fn is_scalar(def: &Value) -> bool {
    def.get("properties").is_none()
        && matches!(
            def.get("type").and_then(Value::as_str),
            Some("string" | "integer" | "boolean" | "number")
        )
}

/// The first paragraph of a doc comment, on one line.
fn first_paragraph(text: &str) -> String {
    text.split("\n\n")
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` wrapped at 76 columns, each line indented by `indent`, its
/// paragraphs kept apart.
fn write_text(out: &mut String, text: &str, indent: usize) {
    let pad = " ".repeat(indent);
    if text.trim().is_empty() {
        let _ = writeln!(out, "{pad}<empty>");
        return;
    }
    for (i, para) in text.split("\n\n").enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && indent + line.len() + 1 + word.len() > 76 {
                let _ = writeln!(out, "{pad}{line}");
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            let _ = writeln!(out, "{pad}{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_lists_its_fields_with_their_types() {
        let pod = explain("pods", false).expect("pod");
        assert!(
            pod.starts_with("KIND:       Pod\nVERSION:    flotilla.dev/v1\n"),
            "{pod}"
        );
        for line in [
            "  apiVersion\t<string>",
            "  metadata\t<ObjectMeta>",
            "  spec\t<PodSpec>",
        ] {
            assert!(pod.contains(line), "{line} in {pod}");
        }
    }

    #[test]
    fn fields_are_followed_through_lists_maps_and_optionals() {
        let module = explain("pod.spec.module", false).expect("module");
        assert!(module.contains("FIELD:      module <string>"), "{module}");
        let labels = explain("pod.metadata.labels", false).expect("labels");
        assert!(labels.contains("<map[string]string>"), "{labels}");
        let created = explain("pod.metadata.creationTimestamp", false).expect("time");
        assert!(created.contains("creationTimestamp <string>"), "{created}");
        let owners = explain("deploy.metadata.ownerReferences", false).expect("owners");
        assert!(owners.contains("<[]OwnerReference>"), "{owners}");
        assert!(owners.contains("FIELDS:"), "{owners}");
        let role = explain("user.spec.role", false).expect("role");
        assert!(
            role.contains("Allowed values: admin, operator, viewer"),
            "{role}"
        );
        let tree = explain("user", true).expect("tree");
        assert!(
            tree.contains("  spec\t<UserSpec>\n    expirationSeconds\t<integer>"),
            "{tree}"
        );
    }

    #[test]
    fn a_wrong_path_says_what_there_is() {
        let err = explain("pod.spec.containers", false).unwrap_err();
        assert!(
            err.starts_with("field \"containers\" does not exist in Pod.spec; its fields are: "),
            "{err}"
        );
        assert!(err.contains("module"), "{err}");
        assert!(explain("statefulset", false)
            .unwrap_err()
            .contains("unknown kind"));
        assert!(explain("pod.spec.module.x", false)
            .unwrap_err()
            .contains("has no fields"));
    }

    /// Every kind's schema has every field the kind's type writes: the
    /// schema is the type's.
    #[test]
    fn every_kind_explains() {
        for kind in Kind::ALL {
            let text = explain(kind.as_str(), false).expect("explains");
            assert!(text.contains("  metadata\t<ObjectMeta>"), "{kind}: {text}");
            explain(kind.as_str(), true).expect("recursive");
        }
    }
}
