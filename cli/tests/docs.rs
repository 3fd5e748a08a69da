//! The examples of docs/cli.md marked `<!-- tested -->` run against a real
//! cluster, and print what the page says they print: the page cannot drift
//! from the binary.
//!
//! A marked example is the fenced block after the marker: lines `$ flotilla
//! ARGS` (arguments split at spaces) each followed by the lines the command
//! prints, standard output then standard error. `…` in an expected line
//! stands for any text. `<!-- tested: n1 stopped -->` runs its block after
//! node n1 has been stopped. Every example runs in a cluster of one master
//! and node `n1`, where `workloads/hello/pod.yaml` has run to completion,
//! from a directory holding `hello-v2.yaml` (that pod with other `args`)
//! and `config/` (ConfigMaps `settings`, and `extra` in `config/more/`).

mod common;

use common::Cluster;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

/// One `$ flotilla …` line and what it prints.
#[derive(Debug)]
struct Example {
    args: Vec<String>,
    expected: Vec<String>,
}

/// The marked blocks of `page`: (the state after `tested:`, the examples).
fn tested_blocks(page: &str) -> Vec<(String, Vec<Example>)> {
    let mut blocks = Vec::new();
    let mut lines = page.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("<!-- tested") else {
            continue;
        };
        let state = rest
            .trim_end_matches("-->")
            .trim()
            .trim_start_matches(':')
            .trim()
            .to_string();
        assert_eq!(
            lines.next().map(str::trim),
            Some("```"),
            "a fence after {line:?}"
        );
        let mut examples: Vec<Example> = Vec::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            match l.strip_prefix("$ flotilla ") {
                Some(cmd) => examples.push(Example {
                    args: shell_words(cmd),
                    expected: Vec::new(),
                }),
                None => examples
                    .last_mut()
                    .unwrap_or_else(|| panic!("output before any command: {l:?}"))
                    .expected
                    .push(l.to_string()),
            }
        }
        blocks.push((state, examples));
    }
    blocks
}

/// A command line split as a shell splits it: at spaces, but not inside
/// single or double quotes, which are taken away (no escapes, no
/// expansion: the examples need none).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// Whether the lines printed are those the page shows: line by line, where
/// a line of just `…` stands for any number of lines.
fn lines_match(expected: &[String], got: &[String]) -> bool {
    match expected.split_first() {
        None => got.is_empty(),
        Some((e, rest)) if e == "…" => {
            (0..=got.len()).any(|skip| lines_match(rest, &got[skip..]))
        }
        Some((e, rest)) => got
            .split_first()
            .is_some_and(|(g, more)| matches(e, g) && lines_match(rest, more)),
    }
}

/// Whether `line` is `pattern`, where `…` stands for any text (the spaces
/// around it too, so that `…` can stand for a cell of any width).
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let first = parts[0].trim_end();
    let Some(mut rest) = line.strip_prefix(first) else {
        return false;
    };
    for (i, part) in parts.iter().enumerate().skip(1) {
        let part = if i + 1 == parts.len() {
            part.trim_start()
        } else {
            part.trim()
        };
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// What `flotilla ARGS` prints, run from `dir`.
fn printed(c: &Cluster, dir: &Path, args: &[String]) -> Vec<String> {
    let out = Command::new(common::BIN)
        .args(args)
        .current_dir(dir)
        .env("FLOTILLA_CONFIG", &c.config)
        .output()
        .expect("run flotilla");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(|l| l.trim_end().to_string()).collect()
}

/// The first example of `block` that does not print what the page says.
fn mismatch(c: &Cluster, dir: &Path, block: &[Example]) -> Option<String> {
    for e in block {
        let got = printed(c, dir, &e.args);
        if !lines_match(&e.expected, &got) {
            return Some(format!(
                "$ flotilla {}\nthe page says:\n{}\nit prints:\n{}",
                e.args.join(" "),
                e.expected.join("\n"),
                got.join("\n")
            ));
        }
    }
    None
}

#[test]
fn the_pattern_matcher_takes_ellipses_as_any_text() {
    assert!(matches("a … b", "a x y b"));
    assert!(matches("a…", "abc"));
    assert!(matches("exact", "exact"));
    assert!(!matches("exact", "exactly"));
    assert!(!matches("a … b", "a x y c"));
    assert!(matches("…(NotFound)", "error: x (NotFound)"));
    assert!(matches("a   …     b", "a   12m   b"));
    assert!(!matches("a   …     b", "a   12m   c"));
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(lines_match(&v(&["a", "…", "z"]), &v(&["a", "b", "c", "z"])));
    assert!(lines_match(&v(&["a", "…"]), &v(&["a"])));
    assert!(!lines_match(&v(&["a", "…", "z"]), &v(&["a", "b"])));
    assert_eq!(
        shell_words(r#"get pods -o jsonpath='{.items[*]}' "a b"  c"#),
        ["get", "pods", "-o", "jsonpath={.items[*]}", "a b", "c"]
    );
}

#[test]
fn the_documented_examples_print_what_docs_cli_md_says() {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md"))
        .expect("docs/cli.md");
    let blocks = tested_blocks(&page);
    assert!(blocks.len() >= 4, "marked examples: {blocks:?}");

    let mut c = Cluster::start("10s");
    c.start_node("n1");
    c.wait_node_ready("n1", "Ready", T);
    let hello = Path::new(env!("CARGO_MANIFEST_DIR")).join("../workloads/hello/pod.yaml");
    c.ok(&["apply", "-f", hello.to_str().expect("utf8")]);
    c.wait_phase("hello", "Succeeded", T);
    let dir = tempfile::tempdir().expect("tmp");
    let module = std::fs::canonicalize(flotilla_workloads::path("hello")).expect("hello.wasm");
    let v2 = std::fs::read_to_string(&hello)
        .expect("manifest")
        .replace(
            "../../target/guests/wasm32-wasip2/release/hello.wasm",
            module.to_str().expect("utf8"),
        )
        .replace(r#"args: ["world"]"#, r#"args: ["v2"]"#);
    assert!(v2.contains(r#"["v2"]"#), "{v2}");
    std::fs::write(dir.path().join("hello-v2.yaml"), v2).expect("write");
    // A directory of manifests, one of them a level down (`apply -f DIR -R`).
    let cm = |name: &str| {
        format!("apiVersion: flotilla.dev/v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  level: \"2\"\n")
    };
    std::fs::create_dir_all(dir.path().join("config/more")).expect("mkdir");
    std::fs::write(dir.path().join("config/settings.yaml"), cm("settings")).expect("write");
    std::fs::write(dir.path().join("config/more/extra.yaml"), cm("extra")).expect("write");
    std::fs::write(dir.path().join("config/README.txt"), "not a manifest").expect("write");

    // Completion knows kinds and asks the master for names.
    let complete = |words: &str| -> Vec<String> {
        let out = Command::new(common::BIN)
            .arg("--")
            .args(words.split(' '))
            .env("COMPLETE", "fish")
            .env("FLOTILLA_CONFIG", &c.config)
            .output()
            .expect("complete");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(complete("flotilla get po"), ["pods", "po"]);
    assert_eq!(complete("flotilla get pods he"), ["hello"]);
    assert_eq!(complete("flotilla describe pod/"), ["pod/hello"]);
    // An empty word is offered the names first, then the flags.
    assert_eq!(
        complete("flotilla logs ").first().map(String::as_str),
        Some("hello")
    );
    assert_eq!(
        complete("flotilla describe nodes ")
            .first()
            .map(String::as_str),
        Some("n1")
    );
    assert!(complete("flotilla get ").contains(&"deployments".to_string()));
    assert!(complete("flotilla lo").contains(&"logs".to_string()));

    let (now, later): (Vec<_>, Vec<_>) = blocks.into_iter().partition(|(s, _)| s.is_empty());
    for (_, block) in &now {
        if let Some(m) = mismatch(&c, dir.path(), block) {
            panic!("{m}");
        }
    }
    for (state, block) in &later {
        match state.as_str() {
            "n1 stopped" => c.signal_node("n1", "TERM"),
            other => panic!("unknown state {other:?} in docs/cli.md"),
        }
        // The master learns of the change when it happens: wait for it.
        let mut last = None;
        let done = std::time::Instant::now() + T;
        while std::time::Instant::now() < done {
            last = mismatch(&c, dir.path(), block);
            if last.is_none() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if let Some(m) = last {
            panic!("{state}: {m}");
        }
    }
}

#[test]
fn the_readme_manifest_is_the_sample_pod_that_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let block = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a yaml block in README.md");
    let sample =
        std::fs::read_to_string(root.join("workloads/hello/pod.yaml")).expect("the sample");
    assert_eq!(
        block.trim(),
        sample.trim(),
        "README.md shows workloads/hello/pod.yaml"
    );
}
