//! kubectl's verbs that work on any kind: `label`, `annotate`, `patch`,
//! `wait`, and what describes the cluster itself: `version`,
//! `api-resources`, `cluster-info`.

use crate::jsonpath::{self, Template};
use crate::listing;
use crate::workloads::{api_error, parse_target, update};
use anyhow::{anyhow, bail};
use flotilla_api::net::NetError;
use flotilla_api::protocol::{ErrorCode, Request, Response};
use flotilla_api::{Kind, Object};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `KIND NAME` or `KIND/NAME` at the start of `args`, and what follows.
fn split_target(args: &[String]) -> anyhow::Result<((Kind, String), &[String])> {
    let head = match args.first() {
        Some(one) if one.contains('/') => 1,
        _ => 2.min(args.len()),
    };
    Ok((parse_target(&args[..head])?, &args[head..]))
}

fn namespace_for(kind: Kind, namespace: &str) -> String {
    if kind.namespaced() {
        namespace.to_string()
    } else {
        String::new()
    }
}

/// One change a `label` or `annotate` argument asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Set(String, String),
    Remove(String),
}

/// `key=value` sets, `key-` removes; keys and (for labels) values checked.
pub fn parse_changes(args: &[String], labels: bool) -> anyhow::Result<Vec<Change>> {
    let what = if labels { "label" } else { "annotation" };
    if args.is_empty() {
        bail!("give at least one {what}: KEY=VALUE to set it, KEY- to remove it");
    }
    args.iter()
        .map(|a| {
            let change = match a.split_once('=') {
                Some((k, v)) => Change::Set(k.to_string(), v.to_string()),
                None => match a.strip_suffix('-') {
                    Some(k) => Change::Remove(k.to_string()),
                    None => bail!("{a:?}: write KEY=VALUE to set a {what}, KEY- to remove it"),
                },
            };
            let key = match &change {
                Change::Set(k, _) | Change::Remove(k) => k,
            };
            if !flotilla_api::manifest::is_label_key(key) {
                bail!("{key:?} is not a valid {what} key: a name of letters, digits, '-', '_' and '.', at most 63 characters, with an optional DNS prefix and '/' (example.com/tier)");
            }
            if let (true, Change::Set(_, v)) = (labels, &change) {
                if !flotilla_api::manifest::is_label_value(v) {
                    bail!("{v:?} is not a valid label value: at most 63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit (or empty)");
                }
            }
            Ok(change)
        })
        .collect()
}

/// Applies changes to a map of labels or annotations: whether anything
/// changed, or why not (a value there already, without `overwrite`).
pub fn apply_changes(
    map: &mut BTreeMap<String, String>,
    changes: &[Change],
    overwrite: bool,
) -> anyhow::Result<bool> {
    let mut changed = false;
    for c in changes {
        match c {
            Change::Set(k, v) => match map.get(k) {
                Some(old) if old == v => {}
                Some(old) if !overwrite => {
                    bail!("{k:?} already has a value ({old}); pass --overwrite to replace it")
                }
                _ => {
                    map.insert(k.clone(), v.clone());
                    changed = true;
                }
            },
            Change::Remove(k) => changed |= map.remove(k).is_some(),
        }
    }
    Ok(changed)
}

/// `flotilla label` and `flotilla annotate`.
pub async fn label_or_annotate(
    config: &Path,
    args: &[String],
    namespace: &str,
    overwrite: bool,
    labels: bool,
) -> anyhow::Result<ExitCode> {
    let ((kind, name), rest) = split_target(args)?;
    let changes = parse_changes(rest, labels)?;
    let client = crate::commands::connect(config).await?;
    let ns = namespace_for(kind, namespace);
    let changed = update(&client, kind, &ns, &name, &|o: &mut Object| {
        let meta = o.meta_mut();
        let map = if labels {
            &mut meta.labels
        } else {
            &mut meta.annotations
        };
        apply_changes(map, &changes, overwrite)
    })
    .await?;
    let done = if labels { "labeled" } else { "annotated" };
    let target = format!("{}/{name}", kind.as_str().to_lowercase());
    if changed {
        println!("{target} {done}");
    } else {
        println!("{target} not {done} (nothing to change)");
    }
    Ok(ExitCode::SUCCESS)
}

/// RFC 7386: `patch` merged into `target`; `null` removes a key.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// `flotilla patch KIND NAME -p PATCH`: a JSON merge patch (YAML works too)
/// on the object's manifest, validated as `apply` validates, written with
/// compare-and-swap.
pub async fn patch(
    config: &Path,
    args: &[String],
    namespace: &str,
    patch_text: &str,
) -> anyhow::Result<ExitCode> {
    let ((kind, name), rest) = split_target(args)?;
    if !rest.is_empty() {
        bail!("patch takes one object; give the patch with -p");
    }
    let patch: Value = serde_yaml::from_str(patch_text).map_err(|e| {
        anyhow!("-p is not JSON or YAML: {e}; e.g. -p '{{\"spec\":{{\"replicas\":3}}}}'")
    })?;
    if !patch.is_object() {
        bail!("-p must be an object, e.g. '{{\"metadata\":{{\"labels\":{{\"tier\":\"db\"}}}}}}'");
    }
    let client = crate::commands::connect(config).await?;
    let ns = namespace_for(kind, namespace);
    let changed = update(&client, kind, &ns, &name, &|o: &mut Object| {
        let before = o.to_manifest_value();
        let mut value = before.clone();
        merge_patch(&mut value, &patch);
        if value == before {
            return Ok(false);
        }
        let yaml: serde_yaml::Value = serde_json::from_value(value)?;
        let mut patched = flotilla_api::manifest::parse_document(yaml).map_err(|errs| {
            let lines: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
            anyhow!(
                "the patched {} is not valid:\n  {}",
                kind.as_str().to_lowercase(),
                lines.join("\n  ")
            )
        })?;
        if patched.kind() != kind || patched.meta().name != name || patched.meta().namespace != ns {
            bail!("a patch cannot change an object's kind, name or namespace");
        }
        // Written over the version read, whatever the patch says of it.
        patched.meta_mut().resource_version = o.meta().resource_version;
        *o = patched;
        Ok(true)
    })
    .await?;
    let target = format!("{}/{name}", kind.as_str().to_lowercase());
    if changed {
        println!("{target} patched");
    } else {
        println!("{target} patched (no change)");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `wait --for` waits for.
#[derive(Debug, Clone, PartialEq)]
pub enum Until {
    /// A condition of `.status.conditions` with this status (`true`, `false`).
    Condition(String, bool),
    /// The object is gone.
    Delete,
    /// What the path finds printed as this text.
    JsonPath(Template, String),
}

impl Until {
    /// `condition=Ready`, `condition=Ready=false`, `delete`,
    /// `jsonpath={.status.phase}=Succeeded`.
    pub fn parse(s: &str) -> anyhow::Result<Until> {
        let hint = "write --for=condition=NAME[=true|false], --for=delete or --for=jsonpath='{.status.phase}'=VALUE";
        if s == "delete" {
            return Ok(Until::Delete);
        }
        if let Some(c) = s.strip_prefix("condition=") {
            let (name, want) = match c.split_once('=') {
                Some((n, v)) => match v.to_ascii_lowercase().as_str() {
                    "true" => (n, true),
                    "false" => (n, false),
                    _ => bail!("--for={s}: a condition is true or false; {hint}"),
                },
                None => (c, true),
            };
            if name.is_empty() {
                bail!("--for={s}: name the condition; {hint}");
            }
            return Ok(Until::Condition(name.to_string(), want));
        }
        if let Some(j) = s.strip_prefix("jsonpath=") {
            // The path ends where its braces do (or at the last `=`).
            let (path, want) = match j.rfind("}=") {
                Some(at) => (&j[..=at], &j[at + 2..]),
                None => j.rsplit_once('=').ok_or_else(|| {
                    anyhow!("--for={s}: give the value: jsonpath='{{.status.phase}}'=Succeeded")
                })?,
            };
            let t = Template::parse(path).map_err(|e| anyhow!("--for: {e}"))?;
            return Ok(Until::JsonPath(t, want.to_string()));
        }
        bail!("--for={s}: {hint}")
    }

    /// Whether the object (None: it is gone) is as waited for.
    pub fn holds(&self, obj: Option<&Object>) -> bool {
        let Some(o) = obj else {
            return *self == Until::Delete;
        };
        let m = listing::manifest(o);
        match self {
            Until::Delete => false,
            Until::Condition(name, want) => {
                let status = m["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| {
                        cs.iter().find(|c| {
                            c["type"]
                                .as_str()
                                .is_some_and(|t| t.eq_ignore_ascii_case(name))
                        })
                    })
                    .map(|c| match &c["status"] {
                        Value::Bool(b) => *b,
                        Value::String(s) => s.eq_ignore_ascii_case("true"),
                        // A pod's condition leaves out `status: false`.
                        _ => false,
                    });
                status.unwrap_or(false) == *want && (status.is_some() || !*want)
            }
            Until::JsonPath(t, want) => {
                let found: Vec<String> = t.find(&m).into_iter().map(jsonpath::scalar).collect();
                found.len() == 1 && found[0] == *want
            }
        }
    }

    fn met(&self) -> &'static str {
        match self {
            Until::Delete => "deleted",
            _ => "condition met",
        }
    }
}

/// `flotilla wait`: until each named object is as `--for` says, or the
/// timeout. Prints `pod/hello condition met` for each.
pub async fn wait(
    config: &Path,
    args: &[String],
    namespace: &str,
    until: &str,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let until = Until::parse(until)?;
    let groups = listing::targets(args)?;
    let mut objects = Vec::new();
    for (kind, names) in groups {
        if names.is_empty() {
            bail!("name what to wait for: KIND NAME or KIND/NAME, e.g. `flotilla wait --for=condition=Ready pod/hello`");
        }
        objects.extend(names.into_iter().map(|n| (kind, n)));
    }
    let client = crate::commands::connect(config).await?;
    let deadline = Instant::now() + timeout;
    for (kind, name) in objects {
        let ns = namespace_for(kind, namespace);
        let target = format!("{}/{name}", kind.as_str().to_lowercase());
        loop {
            let now = crate::commands::lookup(&client, kind, &ns, &name).await?;
            if now.is_none() && until != Until::Delete {
                bail!("{target} not found in namespace {namespace}: nothing to wait for");
            }
            if until.holds(now.as_ref()) {
                println!("{target} {}", until.met());
                break;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "error: timed out after {}s waiting for {target} ({})",
                    timeout.as_secs(),
                    describe_until(&until)
                );
                return Ok(ExitCode::FAILURE);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe_until(u: &Until) -> String {
    match u {
        Until::Delete => "to be deleted".into(),
        Until::Condition(c, true) => format!("condition {c}"),
        Until::Condition(c, false) => format!("condition {c} to be false"),
        Until::JsonPath(_, v) => format!("the path to be {v:?}"),
    }
}

/// `flotilla api-resources`: every kind, as kubectl lists them.
pub fn api_resources() -> String {
    let rows: Vec<Vec<String>> = Kind::ALL
        .iter()
        .map(|k| {
            vec![
                k.plural().to_string(),
                k.short_names().join(","),
                flotilla_api::API_VERSION.to_string(),
                k.namespaced().to_string(),
                k.as_str().to_string(),
            ]
        })
        .collect();
    crate::output::table(
        &["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"],
        &rows,
    )
}

/// `flotilla version`: this client's, and the master's it reaches.
pub async fn version(config: &Path) -> anyhow::Result<ExitCode> {
    println!(
        "Client Version: {} (protocol {})",
        env!("CARGO_PKG_VERSION"),
        flotilla_api::protocol::PROTOCOL_VERSION
    );
    let client = crate::commands::connect(config).await?;
    match client.call(&Request::Version).await {
        Ok(Response::Version { version, protocol }) => {
            println!(
                "Master Version: {version} (protocol {protocol}) at {}",
                client.addr
            )
        }
        Ok(other) => bail!("unexpected answer {other:?}"),
        // A master older than the version request.
        Err(NetError::Api(e)) if e.code == ErrorCode::Invalid => println!(
            "Master Version: older than 0.2.0 (protocol {}) at {}: it does not say",
            flotilla_api::protocol::PROTOCOL_VERSION,
            client.addr
        ),
        Err(e) => return Err(api_error(e)),
    }
    Ok(ExitCode::SUCCESS)
}

/// `flotilla cluster-info`: where the masters are, which leads, and the nodes.
pub async fn cluster_info(config: &Path) -> anyhow::Result<ExitCode> {
    let client = crate::commands::connect(config).await?;
    let status = match client
        .call(&Request::ClusterStatus)
        .await
        .map_err(api_error)?
    {
        Response::ClusterStatus(s) => s,
        other => bail!("unexpected answer {other:?}"),
    };
    println!(
        "Cluster {} (masters answer at {})",
        status.cluster, client.addr
    );
    for m in &status.members {
        let role = match (Some(m.node_id) == status.leader, m.voter) {
            (true, _) => "leader",
            (false, true) => "follower",
            (false, false) => "learner",
        };
        println!("  master {} at {} ({role})", m.node_id, m.addr);
    }
    let (_, nodes) = crate::commands::list_all(
        &client,
        flotilla_api::protocol::ListOptions {
            kind: Some(Kind::Node),
            ..Default::default()
        },
    )
    .await?;
    let ready = nodes
        .iter()
        .filter_map(|o| o.as_node())
        .filter(|n| n.is_ready())
        .count();
    println!("Nodes: {} ({ready} Ready)", nodes.len());
    println!("\nFor more: `flotilla cluster status`, `flotilla get nodes -o wide`.");
    Ok(ExitCode::SUCCESS)
}

/// The editor `edit` runs: `FLOTILLA_EDITOR`, `KUBE_EDITOR` or `EDITOR`
/// (split at spaces, so `code --wait` works), else `vi`.
fn editor() -> Vec<String> {
    ["FLOTILLA_EDITOR", "KUBE_EDITOR", "EDITOR"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()))
        .unwrap_or_else(|| "vi".into())
        .split_whitespace()
        .map(String::from)
        .collect()
}

const EDIT_HEADER: &str = "# Edit the object below and save to apply it; lines starting with '#' are\n# left out. Save an empty file (or change nothing) to cancel.\n";

/// The text without `#` comment lines (what is compared and applied).
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What an edited text asks for: the object, or why it cannot be applied.
pub fn edited_object(text: &str, kind: Kind, ns: &str, name: &str) -> Result<Object, String> {
    let objects = flotilla_api::manifest::parse_manifests(text).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let [obj] = objects.as_slice() else {
        return Err(format!(
            "the file holds {} objects; keep the one being edited",
            objects.len()
        ));
    };
    let m = obj.meta();
    if obj.kind() != kind || m.name != name || m.namespace != ns {
        return Err(format!(
            "kind, name and namespace cannot change in an edit (it was {} {name}{}); create another object with `flotilla apply`",
            kind.as_str().to_lowercase(),
            if ns.is_empty() { String::new() } else { format!(" in namespace {ns}") }
        ));
    }
    Ok(obj.clone())
}

/// `flotilla edit KIND NAME`: the object as YAML in an editor; what is
/// saved is validated and written with compare-and-swap. A save that
/// fails comes back in the editor with the reason at the top; closing it
/// unchanged gives up and keeps the edit in a file.
pub async fn edit(config: &Path, args: &[String], namespace: &str) -> anyhow::Result<ExitCode> {
    let ((kind, name), rest) = split_target(args)?;
    if !rest.is_empty() {
        bail!("edit takes one object: KIND NAME or KIND/NAME");
    }
    let ns = namespace_for(kind, namespace);
    let client = crate::commands::connect(config).await?;
    let current = crate::commands::lookup(&client, kind, &ns, &name)
        .await?
        .ok_or_else(|| anyhow!("{} (NotFound)", kind.not_found(&ns, &name)))?;
    // A Secret is edited with its values (admins only), or saving would
    // write the placeholders `get` shows in their place.
    let current = if kind == Kind::Secret {
        crate::commands::reveal_secrets(&client, vec![current], false)
            .await?
            .pop()
            .ok_or_else(|| anyhow!("the master returned no secret"))?
    } else {
        current
    };
    let original = crate::output::structured(
        std::slice::from_ref(&current),
        crate::output::Format::Yaml,
        true,
    )?;
    let path = std::env::temp_dir().join(format!(
        "flotilla-edit-{}-{}-{}.yaml",
        kind.as_str().to_lowercase(),
        name,
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    flotilla_api::perms::create_file(&path)
        .map_err(|e| anyhow!("cannot create {}: {e}", path.display()))?;
    let mut shown = format!("{EDIT_HEADER}{original}");
    let target = format!("{}/{name}", kind.as_str().to_lowercase());
    loop {
        std::fs::write(&path, &shown)
            .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
        let cmd = editor();
        let status = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .arg(&path)
            .status()
            .map_err(|e| {
                anyhow!(
                    "cannot run the editor {:?}: {e}; set EDITOR (or FLOTILLA_EDITOR)",
                    cmd[0]
                )
            })?;
        if !status.success() {
            bail!(
                "the editor {:?} failed ({status}); your edit is kept in {}",
                cmd[0],
                path.display()
            );
        }
        let saved = std::fs::read_to_string(&path)
            .map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
        let body = without_comments(&saved);
        if body.trim().is_empty() || body == without_comments(&original) {
            let _ = std::fs::remove_file(&path);
            println!("Edit cancelled, no changes made.");
            return Ok(ExitCode::SUCCESS);
        }
        if saved == shown {
            // Closed without a change after an error: give up, keep the edit.
            bail!(
                "{target} was not edited; your edit is kept in {}",
                path.display()
            );
        }
        let reason = match edited_object(&body, kind, &ns, &name) {
            Err(why) => why,
            Ok(obj) => match client.call(&Request::Update(obj)).await {
                Ok(_) => {
                    let _ = std::fs::remove_file(&path);
                    println!("{target} edited");
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => api_error(e).to_string(),
            },
        };
        eprintln!("error: {target} cannot be saved: {reason}");
        let comments: String = reason.lines().map(|l| format!("# {l}\n")).collect();
        shown = format!("{EDIT_HEADER}#\n# {target} cannot be saved:\n{comments}#\n{body}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_changes_set_remove_and_refuse_to_overwrite() {
        let a = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let changes = parse_changes(&a(&["tier=db", "old-"]), true).expect("ok");
        let mut m: BTreeMap<String, String> =
            [("old".to_string(), "x".to_string())].into_iter().collect();
        assert!(apply_changes(&mut m, &changes, false).expect("ok"));
        assert_eq!(
            m,
            [("tier".to_string(), "db".to_string())]
                .into_iter()
                .collect()
        );
        assert!(
            !apply_changes(&mut m, &changes, false).expect("same"),
            "no change"
        );
        let other = parse_changes(&a(&["tier=web"]), true).expect("ok");
        let e = apply_changes(&mut m, &other, false).expect_err("no overwrite");
        assert!(e.to_string().contains("--overwrite"), "{e}");
        assert!(apply_changes(&mut m, &other, true).expect("overwrite"));
        for bad in [&["x"][..], &["bad key=1"], &["k=not valid"], &[]] {
            assert!(parse_changes(&a(bad), true).is_err(), "{bad:?}");
        }
        // Annotation values may be anything.
        assert!(parse_changes(&a(&["note=any text, really"]), false).is_ok());
    }

    #[test]
    fn merge_patches_as_rfc_7386_says() {
        let mut v = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut v, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(v, json!({"a": "z", "c": {"d": "e"}}));
        let mut v = json!({"a": [1, 2]});
        merge_patch(&mut v, &json!({"a": [3], "n": {"m": 1}}));
        assert_eq!(v, json!({"a": [3], "n": {"m": 1}}));
    }

    #[test]
    fn wait_conditions_parse_and_hold() {
        let mut p = flotilla_api::Pod::default();
        p.metadata.name = "hello".into();
        p.status.phase = flotilla_api::objects::PodPhase::Succeeded;
        p.status.set_condition(flotilla_api::objects::PodCondition {
            type_: "PodScheduled".into(),
            status: true,
            ..Default::default()
        });
        p.status.set_condition(flotilla_api::objects::PodCondition {
            type_: "Ready".into(),
            status: false,
            ..Default::default()
        });
        let o = Object::Pod(p);
        let holds = |s: &str| Until::parse(s).expect(s).holds(Some(&o));
        assert!(holds("condition=podscheduled"));
        assert!(!holds("condition=Ready"));
        assert!(holds("condition=Ready=false"));
        assert!(!holds("condition=Nope"));
        assert!(holds("jsonpath={.status.phase}=Succeeded"));
        assert!(!holds("jsonpath={.status.phase}=Running"));
        assert!(!holds("delete"));
        assert!(Until::parse("delete").expect("d").holds(None));
        for bad in [
            "ready",
            "condition=",
            "condition=Ready=maybe",
            "jsonpath={.a",
        ] {
            assert!(Until::parse(bad).is_err(), "{bad}");
        }
    }
}
