//! kubectl's JSONPath templates (`-o jsonpath=…`, `-o custom-columns=…`,
//! `--sort-by`), over objects in their manifest shape.
//!
//! The subset kubectl's documentation uses: text outside braces printed as
//! it is; in braces, `@` or `$` (the current object), `.field` (also
//! `['field']` and `.field\.with\.dots`), `[N]` (negative from the end),
//! `[*]` and `.*`, `[N:M]`, `..field` (at any depth), filters
//! `[?(@.path)]` and `[?(@.path OP literal)]` with `==`, `!=`, `<`, `<=`,
//! `>`, `>=`, `range EXPR` … `end`, and string literals (`{"\n"}`,
//! `{'\t'}`). Several results of one expression are printed separated by
//! spaces, as kubectl prints them.

use serde_json::Value;

/// Why a template cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct PathError {
    template: String,
    why: String,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} is not a JSONPath template kubectl would take: {}; e.g. {{.metadata.name}} or {{range .items[*]}}{{.metadata.name}}{{\"\\n\"}}{{end}}",
            self.template, self.why
        )
    }
}

impl std::error::Error for PathError {}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Path(Vec<Step>),
    Range(Vec<Step>, Vec<Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    AnyDepth(String),
    Index(i64),
    Slice(Option<i64>, Option<i64>),
    All,
    Filter(Filter),
}

#[derive(Debug, Clone, PartialEq)]
struct Filter {
    path: Vec<Step>,
    test: Option<(Op, Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Template {
    /// Parses a template; one without braces is taken as a single path
    /// (`.metadata.name` as `{.metadata.name}`), as kubectl does.
    pub fn parse(template: &str) -> Result<Template, PathError> {
        let err = |why: &str| PathError {
            template: template.to_string(),
            why: why.to_string(),
        };
        let text = if template.contains('{') {
            template.to_string()
        } else {
            format!("{{{template}}}")
        };
        // (nodes being filled, the path of the range that opened them)
        let mut stack: Vec<(Vec<Node>, Option<Vec<Step>>)> = vec![(Vec::new(), None)];
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                push(&mut stack, Node::Text(rest.to_string()));
                break;
            };
            if open > 0 {
                push(&mut stack, Node::Text(rest[..open].to_string()));
            }
            let close = closing_brace(&rest[open..]).ok_or_else(|| err("a `{` is not closed"))?;
            let expr = rest[open + 1..open + close].trim();
            rest = &rest[open + close + 1..];
            if let Some(path) = expr.strip_prefix("range ") {
                let steps = parse_path(path.trim()).map_err(|w| err(&w))?;
                stack.push((Vec::new(), Some(steps)));
            } else if expr == "end" {
                let (nodes, opened) = stack.pop().ok_or_else(|| err("`end` without `range`"))?;
                let steps = opened.ok_or_else(|| err("`end` without `range`"))?;
                if stack.is_empty() {
                    return Err(err("`end` without `range`"));
                }
                push(&mut stack, Node::Range(steps, nodes));
            } else if let Some(lit) = string_literal(expr) {
                push(&mut stack, Node::Text(lit));
            } else {
                push(
                    &mut stack,
                    Node::Path(parse_path(expr).map_err(|w| err(&w))?),
                );
            }
        }
        if stack.len() != 1 {
            return Err(err("a `range` has no `end`"));
        }
        let (nodes, _) = stack.pop().unwrap_or_default();
        Ok(Template { nodes })
    }

    /// The template printed against `value`. A path that finds nothing
    /// prints nothing.
    pub fn render(&self, value: &Value) -> String {
        let mut out = String::new();
        render_nodes(&self.nodes, value, &mut out);
        out
    }

    /// What the template's single path finds in `value` (for columns and
    /// sorting); the results of a template with text or several paths are
    /// those of its first path.
    pub fn find<'a>(&self, value: &'a Value) -> Vec<&'a Value> {
        self.nodes
            .iter()
            .find_map(|n| match n {
                Node::Path(steps) => Some(eval(steps, value)),
                _ => None,
            })
            .unwrap_or_default()
    }
}

fn push(stack: &mut [(Vec<Node>, Option<Vec<Step>>)], node: Node) {
    if let Some((nodes, _)) = stack.last_mut() {
        nodes.push(node);
    }
}

/// The offset of the `}` that closes the `{` at 0, skipping quoted text.
fn closing_brace(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '}' => return Some(i),
            None => {}
        }
    }
    None
}

/// `"…"` or `'…'` with `\n`, `\t`, `\\` and escaped quotes.
fn string_literal(expr: &str) -> Option<String> {
    let q = expr.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = expr.strip_prefix(q)?.strip_suffix(q)?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    Some(out)
}

fn parse_path(expr: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    let s: Vec<char> = expr.chars().collect();
    let mut i = 0;
    if matches!(s.first(), Some('$') | Some('@')) {
        i = 1;
    }
    while i < s.len() {
        match s[i] {
            '.' if s.get(i + 1) == Some(&'.') => {
                let (name, next) = field_name(&s, i + 2);
                if name.is_empty() {
                    return Err("`..` needs a field name after it".into());
                }
                steps.push(Step::AnyDepth(name));
                i = next;
            }
            '.' => {
                if s.get(i + 1) == Some(&'*') {
                    steps.push(Step::All);
                    i += 2;
                    continue;
                }
                let (name, next) = field_name(&s, i + 1);
                if name.is_empty() {
                    // A lone `.` (or a trailing one) is the current object.
                    i = next;
                    continue;
                }
                steps.push(Step::Field(name));
                i = next;
            }
            '[' => {
                let close = matching_bracket(&s, i).ok_or("a `[` is not closed")?;
                let inside: String = s[i + 1..close].iter().collect();
                steps.push(bracket(inside.trim())?);
                i = close + 1;
            }
            c if i == 0 => {
                // `metadata.name` without the leading dot.
                let (name, next) = field_name(&s, i);
                if name.is_empty() {
                    return Err(format!("unexpected {c:?}"));
                }
                steps.push(Step::Field(name));
                i = next;
            }
            c => return Err(format!("unexpected {c:?} at {i}")),
        }
    }
    Ok(steps)
}

/// A field name from `at`: up to `.` or `[`, with `\.` for a dot in it.
fn field_name(s: &[char], at: usize) -> (String, usize) {
    let mut name = String::new();
    let mut i = at;
    while i < s.len() {
        match s[i] {
            '\\' if i + 1 < s.len() => {
                name.push(s[i + 1]);
                i += 2;
            }
            '.' | '[' => break,
            c => {
                name.push(c);
                i += 1;
            }
        }
    }
    (name, i)
}

fn matching_bracket(s: &[char], open: usize) -> Option<usize> {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    for (i, c) in s.iter().enumerate().skip(open) {
        match quote {
            Some(q) if *c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(*c),
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(i);
                    }
                }
                _ => {}
            },
        }
    }
    None
}

fn bracket(inside: &str) -> Result<Step, String> {
    if inside == "*" {
        return Ok(Step::All);
    }
    if let Some(f) = inside.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
        return filter(f.trim()).map(Step::Filter);
    }
    if let Some(lit) = string_literal(inside) {
        return Ok(Step::Field(lit));
    }
    if let Some((a, b)) = inside.split_once(':') {
        let num = |t: &str| -> Result<Option<i64>, String> {
            let t = t.trim();
            if t.is_empty() {
                Ok(None)
            } else {
                t.parse()
                    .map(Some)
                    .map_err(|_| format!("{t:?} is not an index"))
            }
        };
        return Ok(Step::Slice(num(a)?, num(b)?));
    }
    inside
        .parse()
        .map(Step::Index)
        .map_err(|_| format!("[{inside}] is not an index, `*`, a slice or a filter"))
}

fn filter(f: &str) -> Result<Filter, String> {
    for (text, op) in [
        ("==", Op::Eq),
        ("!=", Op::Ne),
        ("<=", Op::Le),
        (">=", Op::Ge),
        ("<", Op::Lt),
        (">", Op::Gt),
    ] {
        if let Some((left, right)) = f.split_once(text) {
            let path = parse_path(left.trim())?;
            let right = right.trim();
            let value = match string_literal(right) {
                Some(s) => Value::String(s),
                None => serde_json::from_str(right)
                    .map_err(|_| format!("{right:?} is not a string or a number"))?,
            };
            return Ok(Filter {
                path,
                test: Some((op, value)),
            });
        }
    }
    Ok(Filter {
        path: parse_path(f)?,
        test: None,
    })
}

fn render_nodes(nodes: &[Node], value: &Value, out: &mut String) {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Path(steps) => {
                let found: Vec<String> = eval(steps, value).into_iter().map(scalar).collect();
                out.push_str(&found.join(" "));
            }
            Node::Range(steps, body) => {
                for item in eval(steps, value) {
                    render_nodes(body, item, out);
                }
            }
        }
    }
}

/// A value as kubectl prints it: strings bare, the rest as JSON.
pub fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn eval<'a>(steps: &[Step], root: &'a Value) -> Vec<&'a Value> {
    let mut current = vec![root];
    for step in steps {
        let mut next = Vec::new();
        for v in current {
            apply(step, v, &mut next);
        }
        current = next;
    }
    current
}

fn apply<'a>(step: &Step, v: &'a Value, out: &mut Vec<&'a Value>) {
    match step {
        Step::Field(name) => {
            if let Some(f) = v.get(name.as_str()) {
                out.push(f);
            }
        }
        Step::AnyDepth(name) => any_depth(name, v, out),
        Step::All => match v {
            Value::Array(a) => out.extend(a.iter()),
            Value::Object(m) => out.extend(m.values()),
            _ => {}
        },
        Step::Index(i) => {
            if let Value::Array(a) = v {
                let at = if *i < 0 { a.len() as i64 + i } else { *i };
                if let Some(x) = usize::try_from(at).ok().and_then(|at| a.get(at)) {
                    out.push(x);
                }
            }
        }
        Step::Slice(from, to) => {
            if let Value::Array(a) = v {
                let len = a.len() as i64;
                let clamp = |x: i64| (if x < 0 { len + x } else { x }).clamp(0, len) as usize;
                let (from, to) = (clamp(from.unwrap_or(0)), clamp(to.unwrap_or(len)));
                if from < to {
                    out.extend(a[from..to].iter());
                }
            }
        }
        Step::Filter(f) => {
            let items: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            out.extend(items.into_iter().filter(|item| passes(f, item)));
        }
    }
}

fn any_depth<'a>(name: &str, v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            if let Some(f) = m.get(name) {
                out.push(f);
            }
            for child in m.values() {
                any_depth(name, child, out);
            }
        }
        Value::Array(a) => {
            for child in a {
                any_depth(name, child, out);
            }
        }
        _ => {}
    }
}

fn passes(f: &Filter, item: &Value) -> bool {
    let found = eval(&f.path, item);
    let Some((op, want)) = &f.test else {
        return found
            .first()
            .is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)));
    };
    let Some(got) = found.first() else {
        return *op == Op::Ne;
    };
    let ord = compare(got, want);
    match op {
        Op::Eq => ord == Some(std::cmp::Ordering::Equal),
        Op::Ne => ord != Some(std::cmp::Ordering::Equal),
        Op::Lt => ord == Some(std::cmp::Ordering::Less),
        Op::Le => matches!(
            ord,
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        ),
        Op::Gt => ord == Some(std::cmp::Ordering::Greater),
        Op::Ge => matches!(
            ord,
            Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
        ),
    }
}

/// Numbers by value, strings by text, booleans false before true; values
/// of different types do not compare.
pub fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        // A quantity or a time written as text against a number: by text.
        (Value::Number(x), Value::String(y)) => Some(x.to_string().cmp(y)),
        (Value::String(x), Value::Number(y)) => Some(x.cmp(&y.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pods() -> Value {
        json!({"kind": "List", "items": [
            {"metadata": {"name": "a", "labels": {"app": "web", "app.kubernetes.io/name": "x"}},
             "spec": {"nodeName": "n1"},
             "status": {"phase": "Running", "restartCount": 2,
                        "conditions": [{"type": "Ready", "status": "True"}, {"type": "ModuleReady", "status": "True"}]}},
            {"metadata": {"name": "b"},
             "status": {"phase": "Pending", "restartCount": 0,
                        "conditions": [{"type": "Ready", "status": "False"}]}}
        ]})
    }

    fn run(t: &str) -> String {
        Template::parse(t).expect("parses").render(&pods())
    }

    #[test]
    fn the_templates_kubectl_documents() {
        assert_eq!(run("{.items[*].metadata.name}"), "a b");
        assert_eq!(run("{.items[0].metadata.name}"), "a");
        assert_eq!(run("{.items[-1].metadata.name}"), "b");
        assert_eq!(run("{.items[0:1].metadata.name}"), "a");
        assert_eq!(
            run(r#"{range .items[*]}{.metadata.name}{"\t"}{.status.phase}{"\n"}{end}"#),
            "a\tRunning\nb\tPending\n"
        );
        assert_eq!(
            run(r#"{.items[?(@.status.phase=="Running")].metadata.name}"#),
            "a"
        );
        assert_eq!(
            run("{.items[?(@.status.restartCount>1)].metadata.name}"),
            "a"
        );
        assert_eq!(run("{.items[?(@.spec.nodeName)].metadata.name}"), "a");
        assert_eq!(
            run(r#"{.items[0].status.conditions[?(@.type=="Ready")].status}"#),
            "True"
        );
        assert_eq!(
            run(r"{.items[0].metadata.labels.app\.kubernetes\.io/name}"),
            "x"
        );
        assert_eq!(
            run("{.items[0].metadata.labels['app.kubernetes.io/name']}"),
            "x"
        );
        assert_eq!(run("{..phase}"), "Running Pending");
        assert_eq!(run("names: {.items[*].metadata.name}!"), "names: a b!");
        // Without braces: one path.
        assert_eq!(run(".items[1].status.phase"), "Pending");
        // A path that finds nothing prints nothing.
        assert_eq!(run("{.items[5].metadata.name}{.nope}"), "");
        assert_eq!(run("{.items[0].status.restartCount}"), "2");
        assert_eq!(
            run("{.items[0].metadata.labels}"),
            r#"{"app":"web","app.kubernetes.io/name":"x"}"#
        );
    }

    #[test]
    fn bad_templates_say_what_to_write() {
        for bad in [
            "{.items[",
            "{range .items[*]}{.x}",
            "{end}",
            "{.a}}{",
            "{.items[x]}",
            "{.a[?(@.b==nope)]}",
        ] {
            let e = Template::parse(bad).expect_err(bad);
            assert!(
                e.to_string().contains("e.g. {.metadata.name}"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn finds_values_for_columns_and_sorting() {
        let t = Template::parse(".status.restartCount").expect("parses");
        let item = &pods()["items"][0];
        assert_eq!(t.find(item), [&json!(2)]);
        assert_eq!(
            compare(&json!(10), &json!(9)),
            Some(std::cmp::Ordering::Greater)
        );
        assert_eq!(compare(&json!("a"), &json!(true)), None);
    }
}
