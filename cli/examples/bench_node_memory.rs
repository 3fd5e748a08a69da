//! Benchmark: a node's memory idle and with 1, 10 and 100 idle pods.
//!
//! A master on loopback and one node (the `flotilla` binary next to this
//! program, or `$FLOTILLA_BIN`; the node alone may be another build, e.g.
//! the node-only edge build, with `$FLOTILLA_NODE_BIN`), no proxy. The node
//! runs a copy of its binary, as on a device, where no master maps the
//! same file. The node's RSS (anonymous and file-backed, from /proc) is read once it has
//! been Ready for 10 s, then after each step of ticker pods (a p2 command
//! that prints a line a second) has been Running for 10 s: 1, 10, 100 in
//! all. Prints each step and the RSS each pod adds. The goal of issue 13
//! is an idle node of at most 15 MiB. Nothing is asserted.
//!
//! Run: `cargo run --release -p flotilla --example bench_node_memory`
//! (`BENCH_DIR=DIR` keeps the data and logs).

#[path = "common/procs.rs"]
mod procs;

use procs::{bin, flotilla_cli, spawn_logged, start_master, status_mib, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// RSS, anonymous and file-backed memory of `pid`, in MiB.
fn rss(pid: u32) -> (f64, f64, f64) {
    let [rss, anon, file] = status_mib(pid, ["VmRSS:", "RssAnon:", "RssFile:"]);
    (rss, anon, file)
}

/// How many of the node's pods are Running.
fn running(config: &Path) -> usize {
    flotilla_cli(config, &["get", "pods"])
        .map(|o| o.lines().filter(|l| l.contains(" Running ")).count())
        .unwrap_or(0)
}

fn main() {
    let keep = std::env::var_os("BENCH_DIR").map(PathBuf::from);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("dir");
    // A copy: on a device no master maps the node's binary, and a node
    // gives back only the pages of its code no other process shares
    // (docs/edge.md, "A node's memory").
    let node_bin = dir.join("flotilla-node");
    std::fs::copy(
        std::env::var_os("FLOTILLA_NODE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(bin),
        &node_bin,
    )
    .expect("a copy of the node's binary");
    println!("master: {}\nnode: {}", bin().display(), node_bin.display());
    let (_master, addr) = start_master(&dir);
    let config = dir.join("config");
    let token = flotilla_cli(&config, &["token", "create"]).expect("token");
    let token = token.lines().next().unwrap_or_default().to_string();
    let node = spawn_logged(
        Command::new(&node_bin)
            .args(["node", "--name", "n1", "--master", &addr, "--token", &token])
            .args(["--no-proxy", "--data-dir"])
            .arg(dir.join("node")),
        &dir.join("node.log"),
    );
    let pid = node.0.id();
    wait_until("the node to be Ready", Duration::from_secs(60), || {
        flotilla_cli(&config, &["get", "nodes"]).is_ok_and(|o| o.contains(" Ready "))
    });
    let settle = || std::thread::sleep(Duration::from_secs(10));
    settle();
    let idle = rss(pid);
    println!(
        "\n{:>5} pods: RSS {:6.1} MiB (anonymous {:5.1}, file {:5.1})",
        0, idle.0, idle.1, idle.2
    );
    let ticker = flotilla_workloads::path("ticker");
    let mut made = 0;
    for total in [1usize, 10, 100] {
        let mut manifest = String::new();
        for i in made..total {
            manifest.push_str(&format!(
                "---\napiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: tick-{i}\nspec:\n  module: {}\n  restartPolicy: Always\n",
                ticker.display()
            ));
        }
        let file = dir.join(format!("pods-{total}.yaml"));
        std::fs::write(&file, manifest).expect("manifest");
        flotilla_cli(&config, &["apply", "-f", &file.to_string_lossy()]).expect("apply");
        made = total;
        wait_until("the pods to run", Duration::from_secs(300), || {
            running(&config) == total
        });
        settle();
        let now = rss(pid);
        println!(
            "{total:>5} pods: RSS {:6.1} MiB (anonymous {:5.1}, file {:5.1}), {:5.0} KiB a pod over idle",
            now.0,
            now.1,
            now.2,
            (now.0 - idle.0) * 1024.0 / total as f64
        );
    }
    println!(
        "\nidle node {:.1} MiB against the goal of 15 MiB: {:.2}×",
        idle.0,
        idle.0 / 15.0
    );
}
