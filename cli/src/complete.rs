//! Completion that knows kinds and object names: the shell asks the binary
//! (`COMPLETE=bash flotilla -- WORDS`), which completes commands and flags
//! from its own definition and, for the arguments that name objects, kinds
//! (`po` → `pods`) and the names the master lists (`get pods we` → `web`).
//! Asking the master is bounded in time; when it does not answer, names
//! are simply not offered.

use clap_complete::engine::{CompletionCandidate, ValueCompleter};
use flotilla_api::protocol::ListOptions;
use flotilla_api::Kind;
use std::ffi::OsStr;
use std::time::Duration;

/// How long completion waits for the master.
const ASK_FOR: Duration = Duration::from_secs(2);

/// The words of the command line being completed (after `--`), with the
/// program's name first.
fn words() -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--") {
        Some(i) => args[i + 1..].to_vec(),
        None => Vec::new(),
    }
}

/// Whether `flag` (`-n`, `--namespace`) of `command` (or a global flag)
/// takes a value, so that the next word is no argument: read from the
/// command line's own definition.
fn takes_value(cli: &clap::Command, command: &str, flag: &str) -> bool {
    let is = |a: &clap::Arg| {
        let named = match flag.strip_prefix("--") {
            Some(long) => a.get_long() == Some(long),
            None => flag.strip_prefix('-').and_then(|s| s.chars().next()) == a.get_short(),
        };
        named && a.get_action().takes_values()
    };
    cli.get_arguments().any(is)
        || cli
            .find_subcommand(command)
            .is_some_and(|sub| sub.get_arguments().any(is))
}

/// The positional words after the command (flags and their values left
/// out), and the namespace and config the line gives.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Line {
    pub command: String,
    pub positionals: Vec<String>,
    pub namespace: Option<String>,
    pub config: Option<String>,
}

/// Reads a command line (without the word being completed) of `cli`.
pub fn parse_line(cli: &clap::Command, words: &[String]) -> Line {
    let mut line = Line::default();
    let mut i = 1;
    while i < words.len() {
        let w = &words[i];
        let value = |i: usize| words.get(i + 1).cloned();
        if let Some((flag, v)) = w.split_once('=').filter(|(f, _)| f.starts_with('-')) {
            match flag {
                "-n" | "--namespace" => line.namespace = Some(v.to_string()),
                "--config" => line.config = Some(v.to_string()),
                _ => {}
            }
        } else if w.starts_with('-') && takes_value(cli, &line.command, w) {
            match w.as_str() {
                "-n" | "--namespace" => line.namespace = value(i),
                "--config" => line.config = value(i),
                _ => {}
            }
            i += 1;
        } else if !w.starts_with('-') {
            if line.command.is_empty() {
                line.command = w.clone();
            } else {
                line.positionals.push(w.clone());
            }
        }
        i += 1;
    }
    line
}

/// What to offer for `current`, the word at `index` of the command's
/// positional arguments: kinds where a kind goes, `KIND/NAME` after a
/// slash, names where a name goes. `names` lists a kind's names.
pub fn candidates(
    line: &Line,
    index: usize,
    current: &str,
    names: &dyn Fn(Kind) -> Vec<String>,
) -> Vec<String> {
    let kinds = || -> Vec<String> {
        let mut all: Vec<String> = Kind::ALL
            .iter()
            .flat_map(|k| {
                std::iter::once(k.plural().to_string())
                    .chain(k.short_names().iter().map(|s| s.to_string()))
            })
            .collect();
        if line.command == "get" {
            all.push("all".into());
        }
        all
    };
    let named = |kind: Kind, prefix: &str| -> Vec<String> {
        names(kind)
            .into_iter()
            .map(|n| format!("{prefix}{n}"))
            .collect()
    };
    let offered: Vec<String> = if let Some((kind, _)) = current.split_once('/') {
        match Kind::parse(kind) {
            Some(k) => named(k, &format!("{kind}/")),
            None => Vec::new(),
        }
    } else {
        match line.command.as_str() {
            // A pod, or KIND/NAME of a workload.
            "logs" => named(Kind::Pod, ""),
            "cordon" | "uncordon" | "drain" => named(Kind::Node, ""),
            "taint" if index == 0 => vec!["node".into(), "nodes".into(), "no".into()],
            "taint" if index == 1 => named(Kind::Node, ""),
            _ if index == 0 => kinds(),
            // After KIND NAME come labels, annotations or nothing.
            "label" | "annotate" | "patch" | "edit" | "describe" if index >= 2 => Vec::new(),
            _ => match line.positionals.first().and_then(|k| Kind::parse(k)) {
                // `get pod,node NAME` names nothing; `KIND/NAME` lines go on so.
                Some(k) if !line.positionals[0].contains([',', '/']) => named(k, ""),
                _ => Vec::new(),
            },
        }
    };
    offered
        .into_iter()
        .filter(|c| c.starts_with(current))
        .collect()
}

/// The names of `kind` the master lists (in the line's namespace), or none
/// if it does not answer in time.
fn ask_master(line: &Line, kind: Kind) -> Vec<String> {
    let config = line
        .config
        .clone()
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("FLOTILLA_CONFIG").map(std::path::PathBuf::from))
        .unwrap_or_else(flotilla_api::config::default_path);
    let namespace = line.namespace.clone().unwrap_or_else(|| "default".into());
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    rt.block_on(async {
        let listed = tokio::time::timeout(ASK_FOR, async {
            let client = crate::commands::connect_quietly(&config).await.ok()?;
            let (_, objs) = crate::commands::list_all(
                &client,
                ListOptions {
                    kind: Some(kind),
                    namespace: kind.namespaced().then(|| namespace.clone()),
                    stale: true,
                    ..ListOptions::default()
                },
            )
            .await
            .ok()?;
            Some(
                objs.iter()
                    .map(|o| o.meta().name.clone())
                    .collect::<Vec<_>>(),
            )
        })
        .await;
        listed.ok().flatten().unwrap_or_default()
    })
}

/// The completer of arguments that name kinds and objects.
#[derive(Debug, Clone, Copy)]
pub struct Objects;

impl ValueCompleter for Objects {
    fn complete(&self, current: &OsStr) -> Vec<CompletionCandidate> {
        self.complete_at(0, current)
    }

    fn complete_at(&self, _arg_index: usize, current: &OsStr) -> Vec<CompletionCandidate> {
        let mut words = words();
        let current = current.to_string_lossy().into_owned();
        // The word being completed is the last; what comes before says where it is.
        words.pop();
        let line = parse_line(&<crate::Cli as clap::CommandFactory>::command(), &words);
        let index = line.positionals.len();
        candidates(&line, index, &current, &|k| ask_master(&line, k))
            .into_iter()
            .map(CompletionCandidate::new)
            .collect()
    }
}

/// The completer of `explain`'s path: kinds, then the fields under them.
#[derive(Debug, Clone, Copy)]
pub struct Fields;

impl ValueCompleter for Fields {
    fn complete(&self, current: &OsStr) -> Vec<CompletionCandidate> {
        explain_candidates(&current.to_string_lossy())
            .into_iter()
            .map(CompletionCandidate::new)
            .collect()
    }
}

/// What may follow `current` in `explain KIND.field...`: a kind before the
/// first dot, then the fields under what comes before the last one.
fn explain_candidates(current: &str) -> Vec<String> {
    match current.rsplit_once('.') {
        None => Kind::ALL
            .iter()
            .map(|k| k.as_str().to_lowercase())
            .filter(|k| k.starts_with(current))
            .collect(),
        Some((path, partial)) => flotilla_api::explain::field_names(path)
            .into_iter()
            .filter(|f| f.starts_with(partial))
            .map(|f| format!("{path}.{f}"))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_completes_kinds_then_fields() {
        assert_eq!(explain_candidates("dep"), ["deployment"]);
        assert_eq!(explain_candidates("pod.spec.mo"), ["pod.spec.module"]);
        assert!(explain_candidates("pod.").contains(&"pod.spec".to_string()));
        assert!(explain_candidates("pod.nope.").is_empty());
    }

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn parse_line(words: &[String]) -> Line {
        super::parse_line(&<crate::Cli as clap::CommandFactory>::command(), words)
    }

    #[test]
    fn lines_say_the_command_its_arguments_and_namespace() {
        let l = parse_line(&w("flotilla --config c.yaml get -n lab pods -o wide"));
        assert_eq!(l.command, "get");
        assert_eq!(l.positionals, ["pods"]);
        assert_eq!(l.namespace.as_deref(), Some("lab"));
        assert_eq!(l.config.as_deref(), Some("c.yaml"));
        let l = parse_line(&w("flotilla logs --namespace=x -f"));
        assert_eq!(
            (l.command.as_str(), l.namespace.as_deref()),
            ("logs", Some("x"))
        );
    }

    #[test]
    fn kinds_then_names_then_kind_slash_names() {
        let names = |k: Kind| match k {
            Kind::Pod => vec!["web-1".to_string(), "web-2".into(), "hello".into()],
            Kind::Node => vec!["pi-1".to_string()],
            _ => Vec::new(),
        };
        let offer = |line: &str, current: &str| {
            let l = parse_line(&w(line));
            candidates(&l, l.positionals.len(), current, &names)
        };
        assert_eq!(offer("flotilla get", "po"), ["pods", "po"]);
        assert!(offer("flotilla get", "").contains(&"all".to_string()));
        assert!(!offer("flotilla describe", "").contains(&"all".to_string()));
        assert_eq!(offer("flotilla get pods", "web"), ["web-1", "web-2"]);
        assert_eq!(offer("flotilla delete po", ""), ["web-1", "web-2", "hello"]);
        assert_eq!(offer("flotilla describe", "pod/h"), ["pod/hello"]);
        assert_eq!(offer("flotilla logs -f", "he"), ["hello"]);
        assert_eq!(offer("flotilla cordon", ""), ["pi-1"]);
        assert_eq!(offer("flotilla taint node", "p"), ["pi-1"]);
        assert!(offer("flotilla get pod,node", "").is_empty());
        assert!(offer("flotilla label pod web-1", "").is_empty());
        assert!(offer("flotilla get potatoes", "").is_empty());
        assert!(offer("flotilla get", "potato/x").is_empty());
    }
}
