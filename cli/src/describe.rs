//! `describe` as kubectl lays it out: `Key:  value` lines, nested blocks
//! indented, for any kind (its manifest, keys written as words:
//! `restartPolicy` as `Restart Policy`), with what kubectl says first of
//! pods (state, last state, conditions) and nodes (their pods and what is
//! allocated). Pure: objects in, text out.

use crate::output::pod_status;
use flotilla_api::objects::{condition, LastState, Node, Pod, PodPhase};
use flotilla_api::quantity::format_bytes;
use flotilla_api::time::age;
use flotilla_api::time::Time;
use flotilla_api::Object;
use serde_json::Value;
use std::collections::BTreeMap;

/// `restartPolicy` as `Restart Policy`, `nodeName` as `Node Name`.
pub fn words(key: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for (i, c) in key.chars().enumerate() {
        if i == 0 {
            out.extend(c.to_uppercase());
        } else if c.is_uppercase() && prev_lower {
            out.push(' ');
            out.push(c);
        } else {
            out.push(c);
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
    }
    out
}

/// Lists longer than this (joined) print an item a line.
const LONG_LIST: usize = 100;

/// Maps whose keys are people's own (printed as they are).
const FREE_FORM: &[&str] = &[
    "labels",
    "annotations",
    "matchLabels",
    "nodeSelector",
    "data",
    "binaryData",
    "stringData",
    "limits",
    "requests",
];

/// Whether the map under `key` holds people's own keys: one of
/// [`FREE_FORM`], or a selector of labels (`{app: web}`, not
/// `{matchLabels: ...}`).
fn free_form(key: &str, v: &Value) -> bool {
    FREE_FORM.contains(&key)
        || (key == "selector"
            && v.as_object()
                .is_some_and(|m| m.values().all(Value::is_string)))
}

/// Lines `Key:  value`, the values of a block lined up.
#[derive(Default)]
struct Block {
    lines: Vec<(usize, String, Entry)>,
}

/// What a line of a [`Block`] is.
enum Entry {
    /// `Key:  value`.
    Field(String),
    /// `Key:`, with what is under it on the next lines.
    Heading,
    /// A bare item of a long list.
    Item,
}

impl Block {
    fn field(&mut self, indent: usize, key: &str, value: impl Into<String>) {
        self.lines
            .push((indent, key.to_string(), Entry::Field(value.into())));
    }

    fn heading(&mut self, indent: usize, key: &str) {
        self.lines.push((indent, key.to_string(), Entry::Heading));
    }

    /// A JSON value under `key`, recursively. The keys of maps that hold
    /// people's own keys (labels, data, selectors) are printed as they
    /// are (`verbatim`); the others as words.
    fn value_in(&mut self, indent: usize, key: &str, v: &Value, verbatim: bool) {
        let child_key = |k: &str| if verbatim { k.to_string() } else { words(k) };
        match v {
            Value::Object(m) if m.is_empty() => self.field(indent, key, "<none>"),
            Value::Object(m) => {
                self.heading(indent, key);
                for (k, v) in m {
                    self.value_in(indent + 1, &child_key(k), v, free_form(k, v));
                }
            }
            Value::Array(a) if a.is_empty() => self.field(indent, key, "<none>"),
            Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
                let items: Vec<String> = a.iter().map(crate::jsonpath::scalar).collect();
                let line = items.join(", ");
                if line.chars().count() <= LONG_LIST {
                    self.field(indent, key, line);
                } else {
                    // A long list (a node's interfaces): an item a line.
                    self.heading(indent, key);
                    for item in items {
                        self.lines.push((indent + 1, item, Entry::Item));
                    }
                }
            }
            Value::Array(a) => {
                self.heading(indent, key);
                for item in a {
                    match item {
                        Value::Object(m) => {
                            // Each item starts with `- `, its name or type first.
                            let mut keys: Vec<&String> = m.keys().collect();
                            keys.sort_by_key(|k| !matches!(k.as_str(), "name" | "type"));
                            for (i, k) in keys.into_iter().enumerate() {
                                let mark = if i == 0 { "- " } else { "  " };
                                let label = format!("{mark}{}", words(k));
                                self.value_in(indent + 1, &label, &m[k], free_form(k, &m[k]));
                            }
                        }
                        other => self.field(indent + 1, "-", crate::jsonpath::scalar(other)),
                    }
                }
            }
            Value::Null => self.field(indent, key, "<none>"),
            other => self.field(indent, key, crate::jsonpath::scalar(other)),
        }
    }

    /// The text: the values of the fields at one indentation lined up
    /// after the longest key at that indentation.
    fn render(&self) -> String {
        let mut widths: BTreeMap<usize, usize> = BTreeMap::new();
        for (ind, key, entry) in &self.lines {
            if matches!(entry, Entry::Field(_)) {
                let w = widths.entry(*ind).or_default();
                *w = (*w).max(key.chars().count());
            }
        }
        let mut out = String::new();
        for (ind, key, entry) in &self.lines {
            let indent = "  ".repeat(*ind);
            match entry {
                Entry::Heading => out.push_str(&format!("{indent}{key}:\n")),
                Entry::Item => out.push_str(&format!("{indent}{key}\n")),
                Entry::Field(v) => {
                    let pad = widths.get(ind).copied().unwrap_or(0) - key.chars().count();
                    let line = format!("{indent}{key}:{}  {v}", " ".repeat(pad));
                    out.push_str(line.trim_end());
                    out.push('\n');
                }
            }
        }
        out
    }
}

fn map_text(m: &BTreeMap<String, String>) -> String {
    if m.is_empty() {
        return "<none>".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn when(t: Option<Time>, now: Time) -> String {
    match t {
        Some(t) => format!("{t} ({} ago)", age(t, now)),
        None => "<none>".into(),
    }
}

/// Name, namespace, labels, annotations and age, as every kind starts.
fn metadata(b: &mut Block, o: &Object, now: Time) {
    let m = o.meta();
    b.field(0, "Name", m.name.clone());
    if !m.namespace.is_empty() {
        b.field(0, "Namespace", m.namespace.clone());
    }
    b.field(0, "Labels", map_text(&m.labels));
    b.field(0, "Annotations", map_text(&m.annotations));
    b.field(0, "Created", when(m.creation_timestamp, now));
    if let Some(t) = m.deletion_timestamp {
        b.field(0, "Deleting Since", when(Some(t), now));
    }
    if !m.owner_references.is_empty() {
        let owners: Vec<String> = m
            .owner_references
            .iter()
            .map(|r| format!("{}/{}", r.kind, r.name))
            .collect();
        b.field(0, "Controlled By", owners.join(", "));
    }
}

/// Any object: its metadata, then its manifest's other parts as blocks.
pub fn generic(o: &Object, now: Time) -> String {
    let mut b = Block::default();
    metadata(&mut b, o, now);
    let v = crate::listing::manifest(o);
    if let Value::Object(top) = v {
        for (k, v) in top {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            let verbatim = free_form(&k, &v);
            b.value_in(0, &words(&k), &v, verbatim);
        }
    }
    b.render()
}

/// How a run ended, under `State` or `Last State`: its reason
/// (`default_reason` when it gave none), exit code, the first line of its
/// message, when it started (`with_start`) and when it finished.
fn terminated(b: &mut Block, run: &LastState, default_reason: &str, with_start: bool, now: Time) {
    let reason = if run.reason.is_empty() {
        default_reason
    } else {
        &run.reason
    };
    b.field(1, "Reason", reason);
    if let Some(code) = run.exit_code {
        b.field(1, "Exit Code", code.to_string());
    }
    if let Some(first) = run.message.lines().next() {
        b.field(1, "Message", first);
    }
    if with_start {
        b.field(1, "Started", when(run.started_at, now));
    }
    b.field(1, "Finished", when(run.finished_at, now));
}

/// A pod as kubectl describes one.
pub fn pod(p: &Pod, now: Time) -> String {
    let mut b = Block::default();
    metadata(&mut b, &Object::Pod(p.clone()), now);
    b.field(0, "Priority", p.spec.priority.unwrap_or(0).to_string());
    if !p.spec.priority_class_name.is_empty() {
        b.field(0, "Priority Class Name", p.spec.priority_class_name.clone());
    }
    b.field(
        0,
        "Node",
        p.spec.node_name.clone().unwrap_or_else(|| "<none>".into()),
    );
    b.field(0, "Start Time", when(p.status.start_time, now));
    b.field(0, "Status", pod_status(p));
    let st = &p.status;
    if !st.reason.is_empty() {
        b.field(0, "Reason", st.reason.clone());
    }
    if !st.message.is_empty() {
        b.field(0, "Message", st.message.clone());
    }
    b.field(0, "Module", p.spec.module.clone());
    if !p.spec.args.is_empty() {
        b.field(0, "Args", p.spec.args.join(" "));
    }
    b.field(0, "Restart Policy", format!("{:?}", p.spec.restart_policy));
    // The program's state, as kubectl says a container's.
    match st.phase {
        PodPhase::Running if st.reason == "CrashLoopBackOff" => {
            b.field(0, "State", "Waiting");
            b.field(1, "Reason", "CrashLoopBackOff");
        }
        PodPhase::Running => {
            b.field(0, "State", "Running");
        }
        PodPhase::Succeeded | PodPhase::Failed => {
            b.field(0, "State", "Terminated");
            // The message is the pod's, printed above.
            let run = LastState {
                exit_code: st.exit_code,
                reason: st.reason.clone(),
                finished_at: st.finish_time,
                ..LastState::default()
            };
            terminated(&mut b, &run, "Completed", false, now);
        }
        _ => {
            b.field(0, "State", "Waiting");
            if !st.reason.is_empty() {
                b.field(1, "Reason", st.reason.clone());
            }
        }
    }
    if let Some(l) = &st.last_state {
        b.field(0, "Last State", "Terminated");
        terminated(&mut b, l, "Error", true, now);
    }
    let ready = st.condition(condition::READY).is_some_and(|c| c.status);
    b.field(0, "Ready", if ready { "True" } else { "False" });
    b.field(0, "Restart Count", st.restart_count.to_string());
    let resources = |b: &mut Block, title: &str, list: &flotilla_api::objects::ResourceList| {
        let mut items = Vec::new();
        if let Some(c) = &list.cpu {
            items.push(("cpu", c.to_string()));
        }
        if let Some(m) = &list.memory {
            items.push(("memory", m.to_string()));
        }
        if !items.is_empty() {
            b.heading(0, title);
            for (k, v) in items {
                b.field(1, k, v);
            }
        }
    };
    resources(&mut b, "Limits", &p.spec.resources.limits);
    resources(&mut b, "Requests", &p.spec.resources.requests);
    if p.spec.env.is_empty() {
        b.field(0, "Environment", "<none>");
    } else {
        b.heading(0, "Environment");
        for e in &p.spec.env {
            let value = if e.value_from.is_some() {
                "<from a ConfigMap, Secret or field>".to_string()
            } else {
                e.value.clone()
            };
            b.field(1, &e.name, value);
        }
    }
    let mut out = b.render();
    out.push_str(&crate::output::describe_pod_capabilities(p));
    if st.conditions.is_empty() {
        out.push_str("Conditions:  <none>\n");
    } else {
        out.push_str("Conditions:\n");
        let rows: Vec<Vec<String>> = st
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    if c.status {
                        "True".into()
                    } else {
                        "False".into()
                    },
                    if c.reason.is_empty() {
                        String::new()
                    } else {
                        c.reason.clone()
                    },
                ]
            })
            .collect();
        out.push_str(&indented(&["Type", "Status", "Reason"], &rows));
    }
    out
}

/// A table under a heading, indented by two spaces.
fn indented(header: &[&str], rows: &[Vec<String>]) -> String {
    crate::output::table(header, rows)
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// A node as kubectl describes one: the generic part, then the pods bound
/// to it and what their requests and limits take of what it allocates.
pub fn node(n: &Node, pods: &[Pod], now: Time) -> String {
    let mut out = generic(&Object::Node(n.clone()), now);
    let running: Vec<&Pod> = pods
        .iter()
        .filter(|p| !p.status.phase.is_terminal())
        .collect();
    out.push_str(&format!(
        "Non-terminated Pods:  ({} in total)\n",
        running.len()
    ));
    let cpu = |q: &Option<flotilla_api::quantity::Quantity>| {
        q.as_ref().and_then(|q| q.millicores().ok()).unwrap_or(0)
    };
    let mem = |q: &Option<flotilla_api::quantity::Quantity>| {
        q.as_ref().and_then(|q| q.bytes().ok()).unwrap_or(0)
    };
    let alloc_cpu = n.status.allocatable.cpu_millis;
    let alloc_mem = n.status.allocatable.memory_bytes;
    let pct = |part: u64, whole: u64| {
        let share = part.saturating_mul(100).checked_div(whole).unwrap_or(0);
        format!("{share}%")
    };
    let mut sums = [0u64; 4];
    let mut rows = Vec::new();
    for p in &running {
        let r = &p.spec.resources;
        let v = [
            cpu(&r.requests.cpu),
            cpu(&r.limits.cpu),
            mem(&r.requests.memory),
            mem(&r.limits.memory),
        ];
        for (s, x) in sums.iter_mut().zip(v) {
            *s += x;
        }
        rows.push(vec![
            p.metadata.namespace.clone(),
            p.metadata.name.clone(),
            format!("{}m ({})", v[0], pct(v[0], alloc_cpu)),
            format!("{}m ({})", v[1], pct(v[1], alloc_cpu)),
            format!("{} ({})", format_bytes(v[2]), pct(v[2], alloc_mem)),
            format!("{} ({})", format_bytes(v[3]), pct(v[3], alloc_mem)),
            p.metadata
                .creation_timestamp
                .map(|t| age(t, now))
                .unwrap_or_default(),
        ]);
    }
    if !rows.is_empty() {
        let header = [
            "Namespace",
            "Name",
            "CPU Requests",
            "CPU Limits",
            "Memory Requests",
            "Memory Limits",
            "Age",
        ];
        out.push_str(&indented(&header, &rows));
    }
    out.push_str("Allocated resources:\n");
    let rows = vec![
        vec![
            "cpu".to_string(),
            format!("{}m ({})", sums[0], pct(sums[0], alloc_cpu)),
            format!("{}m ({})", sums[1], pct(sums[1], alloc_cpu)),
        ],
        vec![
            "memory".to_string(),
            format!("{} ({})", format_bytes(sums[2]), pct(sums[2], alloc_mem)),
            format!("{} ({})", format_bytes(sums[3]), pct(sums[3], alloc_mem)),
        ],
        vec![
            "pods".to_string(),
            format!("{} of {}", running.len(), n.status.allocatable.pods),
            String::new(),
        ],
    ];
    out.push_str(&indented(&["Resource", "Requests", "Limits"], &rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_words() {
        assert_eq!(words("restartPolicy"), "Restart Policy");
        assert_eq!(words("nodeName"), "Node Name");
        assert_eq!(words("cpuMillis"), "Cpu Millis");
        assert_eq!(words("phase"), "Phase");
        assert_eq!(words("maxSurge"), "Max Surge");
    }

    #[test]
    fn blocks_line_up_their_values() {
        let mut b = Block::default();
        b.field(0, "Name", "web");
        b.field(0, "Restart Policy", "Never");
        b.value_in(
            0,
            "Spec",
            &serde_json::json!({"replicas": 3, "selector": {"matchLabels": {"app": "web"}}, "args": ["a", "b"], "empty": [], "conditions": [{"status": "True", "type": "Ready"}]}),
            false,
        );
        assert_eq!(
            b.render(),
            "Name:            web\nRestart Policy:  Never\nSpec:\n  Args:      a, b\n  Conditions:\n    - Type:    Ready\n      Status:  True\n  Empty:     <none>\n  Replicas:  3\n  Selector:\n    Match Labels:\n      app:  web\n"
        );
    }

    #[test]
    fn long_lists_print_an_item_a_line() {
        let mut b = Block::default();
        let many: Vec<String> = (0..20)
            .map(|i| format!("wasi:cli/thing-{i}@0.2.6"))
            .collect();
        b.value_in(0, "Interfaces", &serde_json::json!(many), false);
        let text = b.render();
        assert!(
            text.starts_with("Interfaces:\n  wasi:cli/thing-0@0.2.6\n  wasi:cli/thing-1@0.2.6\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 21);
    }

    #[test]
    fn a_restarted_pod_shows_its_last_state_and_conditions() {
        let mut p = Pod::default();
        p.metadata.name = "crasher".into();
        p.metadata.namespace = "default".into();
        p.spec.node_name = Some("n1".into());
        p.spec.module = "sha256:abc".into();
        p.status.phase = PodPhase::Running;
        p.status.reason = "CrashLoopBackOff".into();
        p.status.message = "back-off 2s restarting pod (last run: exit code 1)".into();
        p.status.restart_count = 2;
        p.status.last_state = Some(flotilla_api::objects::LastState {
            exit_code: Some(1),
            started_at: Some(Time(1_000)),
            finished_at: Some(Time(2_000)),
            ..Default::default()
        });
        p.status.set_condition(flotilla_api::objects::PodCondition {
            type_: "PodScheduled".into(),
            status: true,
            ..Default::default()
        });
        let text = pod(&p, Time(62_000));
        for want in [
            "\nNode:            n1\n",
            "\nStatus:          CrashLoopBackOff\n",
            "\nMessage:         back-off 2s restarting pod (last run: exit code 1)\n",
            "\nState:           Waiting\n  Reason:     CrashLoopBackOff\n",
            "\nLast State:      Terminated\n  Reason:     Error\n  Exit Code:  1\n  Started:    1970-01-01T00:00:01.000Z (61s ago)\n  Finished:   1970-01-01T00:00:02.000Z (60s ago)\n",
            "\nRestart Count:   2\n",
            "Conditions:\n  Type           Status   Reason\n  PodScheduled   True\n",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
    }
}
