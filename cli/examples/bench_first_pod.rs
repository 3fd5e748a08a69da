//! Benchmark: the first pod of a large module on an aarch64 node, with and
//! without code precompiled by the master.
//!
//! An x86_64 master on loopback (the `flotilla` binary next to this program
//! or `$FLOTILLA_BIN`) and an aarch64 node under qemu-user (the node-only
//! edge build, `dist/aarch64-unknown-linux-gnu/flotilla-node` from
//! `cross/build.sh aarch64-unknown-linux-gnu --node-only`, or
//! `$FLOTILLA_AARCH64_NODE`): qemu stands in for a Pi-class CPU, which
//! compiles slowly. The module is a WASI p1 command of `BENCH_MODULE_MB`
//! (default 5) MB of generated functions. Each round starts a fresh master
//! and node and times, from `flotilla apply` to the pod's Succeeded:
//!
//! - precompiled: the master compiles the module for the node's engine when
//!   it is uploaded, and the node loads that code;
//! - compiled on the node: the node runs with `--no-precompiled-code`.
//!
//! It prints each round's wall time and the node's own account (its
//! ModuleReady message: fetch, then code or compile), and the ratio.
//! Nothing is asserted: emulated timings on a shared machine are noisy.
//!
//! Run: `cargo run --release -p flotilla --example bench_first_pod`
//! (`BENCH_ROUNDS=N`, default 2; `BENCH_DIR=DIR` keeps the data and logs).

#[path = "common/procs.rs"]
mod procs;

use procs::{bin, env_usize, flotilla_cli, spawn_logged, start_master, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Appends `v` as unsigned LEB128.
fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends `v` as signed LEB128.
fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        if done {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn section(out: &mut Vec<u8>, id: u8, body: &[u8]) {
    out.push(id);
    uleb(out, body.len() as u64);
    out.extend_from_slice(body);
}

/// A WASI p1 command of about `bytes` bytes: functions of straight-line
/// integer arithmetic (about 2 KB each), which `_start` calls in a chain,
/// so all of it is live code the compiler must translate.
fn large_module(bytes: usize) -> Vec<u8> {
    const BODY: usize = 2048;
    let funcs = (bytes / BODY).max(1);
    let mut out = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 = () -> (), 1 = (i32) -> i32.
    section(&mut out, 1, &[2, 0x60, 0, 0, 0x60, 1, 0x7f, 1, 0x7f]);
    let mut f = Vec::new();
    uleb(&mut f, funcs as u64 + 1);
    f.push(0);
    f.extend(std::iter::repeat_n(1, funcs));
    section(&mut out, 3, &f);
    section(&mut out, 5, &[1, 0, 1]); // one memory of one page
    let mut e = vec![2];
    for (name, kind, index) in [("_start", 0u8, 0u64), ("memory", 2, 0)] {
        uleb(&mut e, name.len() as u64);
        e.extend_from_slice(name.as_bytes());
        e.push(kind);
        uleb(&mut e, index);
    }
    section(&mut out, 7, &e);
    let mut code = Vec::new();
    uleb(&mut code, funcs as u64 + 1);
    // _start: i32.const 1, call 1, call 2, ..., drop.
    let mut start = vec![0, 0x41, 1];
    for i in 1..=funcs {
        start.push(0x10);
        uleb(&mut start, i as u64);
    }
    start.extend_from_slice(&[0x1a, 0x0b]);
    uleb(&mut code, start.len() as u64);
    code.extend_from_slice(&start);
    for i in 0..funcs {
        let mut body = vec![0]; // no locals
        let mut k = i as i64;
        while body.len() < BODY - 16 {
            k = k
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            body.extend_from_slice(&[0x20, 0, 0x41]); // local.get 0, i32.const
            sleb(&mut body, (k >> 40) as i32 as i64);
            body.push([0x6a, 0x6c, 0x73, 0x6b][(k as usize >> 8) % 4]); // add, mul, xor, sub
            body.extend_from_slice(&[0x21, 0]); // local.set 0
        }
        body.extend_from_slice(&[0x20, 0, 0x0b]);
        uleb(&mut code, body.len() as u64);
        code.extend_from_slice(&body);
    }
    section(&mut out, 10, &code);
    out
}

fn aarch64_node() -> PathBuf {
    std::env::var_os("FLOTILLA_AARCH64_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../dist/aarch64-unknown-linux-gnu/flotilla-node")
        })
}

/// One round: a fresh master and emulated node, the pod applied and timed
/// to Succeeded. Gives the wall time and the node's ModuleReady message.
fn round(dir: &Path, module: &Path, precompiled: bool) -> (Duration, String) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("dir");
    let (_master, addr) = start_master(dir);
    let config = dir.join("config");
    let token = flotilla_cli(&config, &["token", "create"]).expect("token");
    let token = token.lines().next().unwrap_or_default().to_string();
    let node = aarch64_node();
    let mut cmd = Command::new("qemu-aarch64");
    cmd.args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(&node)
        .args(["node", "--name", "pi", "--master", &addr, "--token", &token])
        .args(["--no-proxy", "--http-slots", "4", "--data-dir"])
        .arg(dir.join("node"));
    if !precompiled {
        cmd.arg("--no-precompiled-code");
    }
    let _node = spawn_logged(&mut cmd, &dir.join("node.log"));
    wait_until("the node to be Ready", Duration::from_secs(180), || {
        flotilla_cli(&config, &["get", "nodes"]).is_ok_and(|o| o.contains(" Ready "))
    });
    let manifest = dir.join("pod.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: big\nspec:\n  module: {}\n  restartPolicy: Never\n  nodeName: pi\n",
            module.display()
        ),
    )
    .expect("manifest");
    let started = Instant::now();
    flotilla_cli(&config, &["apply", "-f", &manifest.to_string_lossy()]).expect("apply");
    let mut message = String::new();
    wait_until("the pod to succeed", Duration::from_secs(900), || {
        let Some(pod) = flotilla_cli(&config, &["get", "pod", "big", "-o", "json"])
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        else {
            return false;
        };
        let phase = pod["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_ne!(phase, "Failed", "the pod failed: {pod}");
        if let Some(m) = pod["status"]["conditions"].as_array().and_then(|cs| {
            cs.iter()
                .find(|c| c["type"] == "ModuleReady")
                .and_then(|c| c["message"].as_str())
        }) {
            message = m.to_string();
        }
        phase == "Succeeded"
    });
    (started.elapsed(), message)
}

fn main() {
    let node = aarch64_node();
    assert!(
        node.exists(),
        "{} is missing: run `cross/build.sh aarch64-unknown-linux-gnu --node-only`",
        node.display()
    );
    println!(
        "master: {}\nnode: {} (under qemu-aarch64)",
        bin().display(),
        node.display()
    );
    let keep = std::env::var_os("BENCH_DIR").map(PathBuf::from);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = keep.unwrap_or_else(|| tmp.path().to_path_buf());
    let mb = env_usize("BENCH_MODULE_MB", 5);
    let module = dir.join("big.wasm");
    std::fs::create_dir_all(&dir).expect("dir");
    let wasm = large_module(mb * 1_000_000);
    std::fs::write(&module, &wasm).expect("module");
    println!("module: {} bytes, generated\n", wasm.len());
    let rounds = env_usize("BENCH_ROUNDS", 2);
    let mut best = [Duration::MAX; 2];
    for r in 1..=rounds {
        for (i, precompiled) in [true, false].into_iter().enumerate() {
            let (took, message) = round(&dir.join(format!("round-{r}-{i}")), &module, precompiled);
            let mode = if precompiled {
                "precompiled by the master"
            } else {
                "compiled on the node"
            };
            println!(
                "round {r}, {mode:<26} apply → Succeeded {:>7.1} s   node: {message}",
                took.as_secs_f64()
            );
            best[i] = best[i].min(took);
        }
    }
    println!(
        "\nbest of {rounds}: precompiled {:.1} s, compiled on the node {:.1} s: {:.1}× faster",
        best[0].as_secs_f64(),
        best[1].as_secs_f64(),
        best[1].as_secs_f64() / best[0].as_secs_f64()
    );
}
