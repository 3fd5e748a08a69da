//! Benchmark: pod start latency on one warm node, and idle memory.
//!
//! Starts a real master and node (the `flotilla` binary next to this
//! program, or `$FLOTILLA_BIN`), then:
//! 1. idle RSS of the master and of the node with one node joined;
//! 2. one hello pod on a fresh node: cold compile;
//! 3. 100 hello pods in one `apply`: p50/p99 from creation to Succeeded,
//!    split into scheduling, module preparation (fetch + compile) and run;
//! 4. 20 hello pods one at a time: creation to Succeeded;
//! 5. the node restarted: compiled code loaded from its disk cache;
//! 6. nine more nodes join and are warmed (one pod each, until each reports
//!    the compiled module in `status.modules`), then 1,000 hello
//!    pods in one `apply` over the ten: p50/p99 creation to Succeeded, split
//!    as in 3, and how many ran on each node.
//!
//! Figures are printed with their ratio to the project's goals; nothing is
//! asserted (timings on shared machines are noisy).
//!
//! Run: `cargo run --release -p flotilla --example bench_pods`

#[path = "common/procs.rs"]
mod procs;

use procs::{bin, Proc};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PODS: usize = 100;
const SINGLE: usize = 20;
const NODES: usize = 10;
const FLEET_PODS: usize = 1000;

fn flotilla(config: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin())
        .args(args)
        .env("FLOTILLA_CONFIG", config)
        .output()
        .expect("run flotilla");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn time_ms(v: &Value) -> Option<i64> {
    let s = v.as_str()?;
    // 2026-11-26T20:33:44.125Z → millis via the API's own parser semantics (UTC).
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let t = rest.trim_end_matches('Z');
    let mut p = t.split(':');
    let (h, mi) = (
        p.next()?.parse::<i64>().ok()?,
        p.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = p.next()?.parse().ok()?;
    let yy = if m <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + (sec * 1000.0).round() as i64)
}

fn condition<'a>(pod: &'a Value, ty: &str) -> Option<&'a Value> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
}

/// `fetch 3ms (master), compile 61ms (cold)` → (3, "master", 61, "cold")
fn module_timings(pod: &Value) -> Option<(i64, String, i64, String)> {
    let msg = condition(pod, "ModuleReady")?["message"].as_str()?;
    let mut it = msg.split([' ', ',', '(', ')']).filter(|s| !s.is_empty());
    let _ = it.next();
    let fetch = it.next()?.trim_end_matches("ms").parse().ok()?;
    let src = it.next()?.to_string();
    let _ = it.next();
    let compile = it.next()?.trim_end_matches("ms").parse().ok()?;
    let kind = it.next()?.to_string();
    Some((fetch, src, compile, kind))
}

fn pct(v: &mut [i64], p: f64) -> i64 {
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn pod_yaml(name: &str, module: &Path) -> String {
    format!("apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  module: {}\n  args: [bench]\n  restartPolicy: Never\n", module.display())
}

/// Creation → Succeeded of the pods whose names start with `prefix`, split
/// into scheduling, module ready and run, in ms; and the node of each.
struct Split {
    total: Vec<i64>,
    sched: Vec<i64>,
    prep: Vec<i64>,
    run: Vec<i64>,
    nodes: std::collections::BTreeMap<String, usize>,
}

/// Prints the p50 and p99 of `v` in ms; gives them.
fn show(label: &str, v: &mut [i64]) -> (i64, i64) {
    let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
    println!("  {label:<34} p50 {p50:>5} ms   p99 {p99:>5} ms");
    (p50, p99)
}

/// Prints a split, and the ratio of its p99 to the goal.
fn show_split(s: &mut Split) {
    let (_, p99) = show("creation → Succeeded", &mut s.total);
    show("  scheduling (creation → bound)", &mut s.sched);
    show("  module ready (bound → compiled)", &mut s.prep);
    show("  run (start → exit)", &mut s.run);
    println!("  p99 goal ≤ 50 ms warm: ratio {:.2}", p99 as f64 / 50.0);
}

fn split(all: &Value, prefix: &str) -> Split {
    let mut s = Split {
        total: vec![],
        sched: vec![],
        prep: vec![],
        run: vec![],
        nodes: Default::default(),
    };
    for p in all["items"].as_array().expect("items").iter().filter(|p| {
        p["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(prefix))
    }) {
        let created = time_ms(&p["metadata"]["creationTimestamp"]).unwrap_or(0);
        let scheduled = condition(p, "PodScheduled")
            .and_then(|c| time_ms(&c["lastTransitionTime"]))
            .unwrap_or(created);
        let prepared = condition(p, "ModuleReady")
            .and_then(|c| time_ms(&c["lastTransitionTime"]))
            .unwrap_or(scheduled);
        let started = time_ms(&p["status"]["startTime"]).unwrap_or(prepared);
        let finished = time_ms(&p["status"]["finishTime"]).unwrap_or(started);
        s.total.push(finished - created);
        s.sched.push(scheduled - created);
        s.prep.push(prepared - scheduled);
        s.run.push(finished - started);
        let node = p["spec"]["nodeName"].as_str().unwrap_or("").to_string();
        *s.nodes.entry(node).or_default() += 1;
    }
    s
}

fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("config");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let hello = flotilla_workloads::path("hello");
    println!("flotilla pod benchmark — binary {}", bin().display());

    let master = Proc(
        Command::new(bin())
            .args(["master", "--listen", &addr, "--data-dir"])
            .arg(dir.path().join("m"))
            .env("FLOTILLA_CONFIG", &config)
            .stderr(Stdio::null())
            .spawn()
            .expect("master"),
    );
    wait("master", Duration::from_secs(20), || {
        flotilla(&config, &["get", "nodes"]).0
    });
    let token = flotilla(&config, &["token", "create"]).1.trim().to_string();
    let start_named = |name: &str, token: Option<&str>| {
        let mut c = Command::new(bin());
        c.args(["node", "--master", &addr, "--name", name, "--data-dir"])
            .arg(dir.path().join(name));
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        Proc(c.stderr(Stdio::null()).spawn().expect("node"))
    };
    let start_node = |token: Option<&str>| start_named("bench", token);
    let mut node = start_node(Some(&token));
    let ready = || flotilla(&config, &["get", "nodes"]).1.contains(" Ready ");
    wait("node Ready", Duration::from_secs(30), ready);
    std::thread::sleep(Duration::from_secs(3));
    let (m_rss, n_rss) = (rss_kib(master.0.id()), rss_kib(node.0.id()));

    let get = |name: &str| -> Option<Value> {
        let (ok, out) = flotilla(&config, &["get", "pod", name, "-o", "json"]);
        if ok {
            serde_json::from_str(&out).ok()
        } else {
            None
        }
    };
    let apply = |name: &str, text: &str| {
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&f, text).expect("write");
        let t = Instant::now();
        let (ok, _) = flotilla(&config, &["apply", "-f", f.to_str().expect("utf8")]);
        assert!(ok, "apply failed");
        t.elapsed()
    };
    let succeeded = |p: &Value| p["status"]["phase"] == "Succeeded";

    // Cold: the first pod on the node compiles the module.
    apply("cold", &pod_yaml("cold", &hello));
    wait("cold pod", Duration::from_secs(60), || {
        get("cold").is_some_and(|p| succeeded(&p))
    });
    let cold = get("cold").expect("cold");
    let cold_t = module_timings(&cold);

    let all_succeeded = |prefix: &str, n: usize| {
        let (_, out) = flotilla(&config, &["get", "pods", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap_or_default();
        v["items"].as_array().is_some_and(|a| {
            a.iter()
                .filter(|p| {
                    succeeded(p)
                        && p["metadata"]["name"]
                            .as_str()
                            .is_some_and(|name| name.starts_with(prefix))
                })
                .count()
                == n
        })
    };

    // Warm: 100 pods in one apply.
    let text: String = (0..PODS)
        .map(|i| pod_yaml(&format!("warm-{i}"), &hello))
        .collect::<Vec<_>>()
        .join("---\n");
    let t0 = Instant::now();
    let apply_wall = apply("warm", &text);
    wait("100 pods", Duration::from_secs(300), || {
        all_succeeded("warm-", PODS)
    });
    let batch_wall = t0.elapsed();
    let (_, out) = flotilla(&config, &["get", "pods", "-o", "json"]);
    let all: Value = serde_json::from_str(&out).expect("json");
    let mut warm = split(&all, "warm-");

    // One at a time: each pod alone on the warm node.
    let mut single = vec![];
    for i in 0..SINGLE {
        let name = format!("single-{i}");
        apply(&name, &pod_yaml(&name, &hello));
        wait("single pod", Duration::from_secs(60), || {
            get(&name).is_some_and(|p| succeeded(&p))
        });
        let p = get(&name).expect("pod");
        let created = time_ms(&p["metadata"]["creationTimestamp"]).unwrap_or(0);
        single.push(time_ms(&p["status"]["finishTime"]).unwrap_or(created) - created);
    }

    // Restart the node: compiled code comes from its disk cache.
    drop(node);
    node = start_node(None);
    wait("node Ready again", Duration::from_secs(30), ready);
    apply("after-restart", &pod_yaml("after-restart", &hello));
    wait("pod after restart", Duration::from_secs(60), || {
        get("after-restart").is_some_and(|p| succeeded(&p))
    });
    let disk_t = get("after-restart").as_ref().and_then(module_timings);

    // Ten warm nodes: nine more join, each compiles hello for a first pod.
    let fleet: Vec<Proc> = (1..NODES)
        .map(|i| start_named(&format!("bench-{i}"), Some(&token)))
        .collect();
    wait("ten nodes Ready", Duration::from_secs(60), || {
        flotilla(&config, &["get", "nodes"])
            .1
            .matches(" Ready ")
            .count()
            == NODES
    });
    let text: String = (1..NODES)
        .map(|i| {
            pod_yaml(&format!("warmup-{i}"), &hello)
                + &format!("  nodeSelector: {{flotilla.dev/hostname: bench-{i}}}\n")
        })
        .collect::<Vec<_>>()
        .join("---\n");
    apply("warmup", &text);
    wait("nodes warmed", Duration::from_secs(120), || {
        all_succeeded("warmup-", NODES - 1)
    });
    // Warm as the scheduler sees it: every node reports the compiled code
    // it holds (`status.modules`, every few seconds).
    let digest = get("warmup-1")
        .and_then(|p| p["spec"]["module"].as_str().map(String::from))
        .expect("the warm-up pod's module");
    wait(
        "nodes to report hello compiled",
        Duration::from_secs(60),
        || {
            let (_, out) = flotilla(&config, &["get", "nodes", "-o", "json"]);
            let v: Value = serde_json::from_str(&out).unwrap_or_default();
            v["items"].as_array().is_some_and(|nodes| {
                nodes
                    .iter()
                    .filter(|n| {
                        n["status"]["modules"]
                            .as_array()
                            .is_some_and(|m| m.iter().any(|d| d == digest.as_str()))
                    })
                    .count()
                    == NODES
            })
        },
    );
    let text: String = (0..FLEET_PODS)
        .map(|i| pod_yaml(&format!("fleet-{i:04}"), &hello))
        .collect::<Vec<_>>()
        .join("---\n");
    let t0 = Instant::now();
    let fleet_apply = apply("fleet", &text);
    wait("1,000 pods", Duration::from_secs(600), || {
        // Listing 1,000 pods costs the machine too: not too often.
        std::thread::sleep(Duration::from_millis(500));
        all_succeeded("fleet-", FLEET_PODS)
    });
    let fleet_wall = t0.elapsed();
    let (_, out) = flotilla(&config, &["get", "pods", "-o", "json"]);
    let mut spread = split(&serde_json::from_str(&out).expect("json"), "fleet-");
    drop(fleet);
    drop(node);
    drop(master);

    println!("\nidle memory (RSS, one node joined, 3 s after Ready)");
    println!(
        "  master {:>6.1} MiB   goal ≤ 50 MiB   ratio {:.2}",
        m_rss as f64 / 1024.0,
        m_rss as f64 / 1024.0 / 50.0
    );
    println!(
        "  node   {:>6.1} MiB   goal ≤ 15 MiB   ratio {:.2}",
        n_rss as f64 / 1024.0,
        n_rss as f64 / 1024.0 / 15.0
    );
    println!(
        "\nmodule preparation (hello, {} bytes)",
        std::fs::metadata(&hello).map(|m| m.len()).unwrap_or(0)
    );
    if let Some((f, s, c, k)) = cold_t {
        println!("  first pod on a fresh node          fetch {f} ms ({s}), compile {c} ms ({k})");
    }
    if let Some((f, s, c, k)) = disk_t {
        println!("  after a node restart               fetch {f} ms ({s}), compile {c} ms ({k})");
    }
    println!("\n{PODS} hello pods in one apply to one warm node (apply took {} ms, all Succeeded after {} ms)", apply_wall.as_millis(), batch_wall.as_millis());
    show_split(&mut warm);
    println!("\n{SINGLE} hello pods applied one at a time to the warm node");
    let (_, p99) = show("creation → Succeeded", &mut single);
    println!("  p99 goal ≤ 50 ms warm: ratio {:.2}", p99 as f64 / 50.0);
    println!(
        "\n{FLEET_PODS} hello pods in one apply over {NODES} warm nodes (apply took {} ms, all Succeeded after {} ms)",
        fleet_apply.as_millis(),
        fleet_wall.as_millis()
    );
    show_split(&mut spread);
    let per_node: Vec<String> = spread
        .nodes
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect();
    println!("  pods per node: {}", per_node.join(", "));
}
