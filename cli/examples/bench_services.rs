//! Benchmark: serving HTTP — Flotilla's node proxy and http pods against
//! `wasmtime serve` and nginx, on the same machine, the same component
//! (hello-http) and the same load tool (wrk), in one run.
//!
//! Targets, all on loopback:
//! - `wasmtime serve` of hello-http: the runtime anchor;
//! - nginx as a reverse proxy in front of that `wasmtime serve`: the
//!   proxy-overhead anchor;
//! - Flotilla, client → node proxy → local pod (in-process);
//! - Flotilla, client → node proxy → remote pod (one QUIC hop to the node
//!   that runs it).
//!
//! Each target is measured in rounds that alternate between targets, so
//! that the machine's noise falls on all of them; a target's figure is its
//! median round. Two shapes of load:
//! - throughput: `wrk -t2 -c32` (req/s);
//! - latency: `wrk -t1 -c1` (one request at a time: p50 and p99 are what
//!   each hop adds, without queueing).
//!
//! Then idle http pods: `BENCH_IDLE` (default 300) pods of hello-http on a
//! node of their own, and the node's RSS before and after.
//!
//! Needs `wrk` and `nginx` (Debian packages) and `wasmtime` 48.0.8
//! (`$WASMTIME_BIN`, else `target/bench-tools/bin/wasmtime`; install it with
//! `cargo install wasmtime-cli --version 48.0.8 --locked --root
//! target/bench-tools`). Nothing is asserted.
//!
//! Run: `cargo run --release -p flotilla --example bench_services`
//! (`BENCH_DIR=DIR` keeps the data and logs; `BENCH_ROUNDS`, default 5;
//! `BENCH_SECONDS` per round, default 5).

#[path = "common/procs.rs"]
mod procs;

use procs::{bin, env_usize, flotilla_cli, memory_mib, start_master, wait_until, Proc};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A process leading a group of its own (nginx and its workers): the
/// whole group is stopped when dropped.
struct Group(std::process::Child);

impl Drop for Group {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
        let _ = self.0.wait();
    }
}

/// One wrk run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Figures {
    rps: f64,
    /// Milliseconds.
    p50: f64,
    p99: f64,
    errors: u64,
}

/// Runs wrk against `url` and reads its summary.
fn wrk(url: &str, threads: usize, conns: usize, seconds: usize) -> Figures {
    let out = Command::new("wrk")
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &conns.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--latency",
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = Figures::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => f.rps = v.parse().unwrap_or(0.0),
            ["50%", v] => f.p50 = millis(v),
            ["99%", v] => f.p99 = millis(v),
            ["Non-2xx", "or", "3xx", "responses:", n] => f.errors += n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                f.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    f
}

/// wrk's `123.45us`, `1.20ms` or `1.01s` in milliseconds.
fn millis(v: &str) -> f64 {
    let split = v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// Whether `url` answers 200.
fn answers(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn wasmtime_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WASMTIME_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tools/bin/wasmtime");
    if !root.exists() {
        eprintln!(
            "bench_services needs wasmtime 48.0.8: cargo install wasmtime-cli --version 48.0.8 \
             --locked --root target/bench-tools (or set WASMTIME_BIN)"
        );
        std::process::exit(2);
    }
    root
}

struct Cluster {
    dir: PathBuf,
    config: PathBuf,
    addr: String,
    _master: Proc,
}

impl Cluster {
    fn cli(&self, args: &[&str]) -> Result<String, String> {
        flotilla_cli(&self.config, args)
    }

    /// A node whose proxy serves on `proxy` (an address of 127/8).
    fn node(&self, name: &str, proxy: &str, extra: &[&str]) -> Proc {
        let token = self.cli(&["token", "create"]).expect("token");
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).expect("log");
        let child = Command::new(bin())
            .args(["node", "--master", &self.addr, "--name", name])
            .args(["--token", token.trim(), "--proxy-address", proxy])
            .args(["--proxy-peer-port", "0", "--host-port", "0"])
            .args(["--host-tls-port", "0", "--label", &format!("bench={name}")])
            .args(extra)
            .arg("--data-dir")
            .arg(self.dir.join(name))
            .env("FLOTILLA_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("run flotilla node");
        Proc(child)
    }

    fn apply(&self, name: &str, text: &str) {
        let path = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).expect("manifest");
        self.cli(&["apply", "-f", path.to_str().expect("utf8")])
            .unwrap_or_else(|e| panic!("apply {name}: {e}"));
    }

    fn running(&self, selector: &str) -> usize {
        self.cli(&["get", "pods", "-l", selector, "--stale"])
            .map(|s| s.lines().filter(|l| l.contains(" Running ")).count())
            .unwrap_or(0)
    }
}

/// A Deployment of hello-http on the node labelled `bench=node`, and (with
/// `port`) its Service.
fn hello(name: &str, replicas: usize, node: &str, port: Option<u16>) -> String {
    let mut text = format!(
        "apiVersion: flotilla.dev/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      module: {}
      restartPolicy: Always
      nodeSelector: {{bench: {node}}}
      http: {{concurrency: 256, timeoutSeconds: 10}}
      resources: {{requests: {{cpu: 1m, memory: 1Mi}}, limits: {{memory: 64Mi}}}}
",
        flotilla_workloads::path("hello-http").display()
    );
    if let Some(port) = port {
        text.push_str(&format!(
            "---
apiVersion: flotilla.dev/v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: {port}}}]
"
        ));
    }
    text
}

fn main() {
    let rounds = env_usize("BENCH_ROUNDS", 5);
    let seconds = env_usize("BENCH_SECONDS", 5);
    let idle = env_usize("BENCH_IDLE", 300);
    let keep = std::env::var_os("BENCH_DIR").map(PathBuf::from);
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = keep.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("dir");
    let wasm = flotilla_workloads::path("hello-http");

    // The anchors: wasmtime serve, and nginx in front of it.
    let serve_port = free_port();
    let serve_log = std::fs::File::create(dir.join("wasmtime.log")).expect("log");
    let _serve = Proc(
        Command::new(wasmtime_bin())
            .args([
                "serve",
                "-Scli",
                "--addr",
                &format!("127.0.0.1:{serve_port}"),
            ])
            .arg(&wasm)
            .stdin(Stdio::null())
            .stdout(serve_log.try_clone().expect("log"))
            .stderr(serve_log)
            .spawn()
            .expect("run wasmtime serve"),
    );
    let serve_addr = format!("127.0.0.1:{serve_port}");
    wait_until("wasmtime serve", Duration::from_secs(60), || {
        answers(&serve_addr)
    });

    let nginx_port = free_port();
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream serve {{ server {serve_addr}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{nginx_port};
    location / {{
      proxy_pass http://serve;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }}
  }}
}}
",
            dir = dir.display()
        ),
    )
    .expect("nginx.conf");
    let _nginx = Group(
        Command::new("nginx")
            .args(["-e", "stderr", "-g", "daemon off;", "-c"])
            .arg(&nginx_conf)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run nginx (apt-get install nginx-light)"),
    );
    let nginx_addr = format!("127.0.0.1:{nginx_port}");
    wait_until("nginx", Duration::from_secs(30), || answers(&nginx_addr));

    // Flotilla: one master, a node that runs the pod, a node that only
    // forwards, and a node for idle pods.
    let (master, addr) = start_master(&dir);
    let c = Cluster {
        dir: dir.clone(),
        config: dir.join("config"),
        addr,
        _master: master,
    };
    let _local = c.node("local", "127.0.0.2", &[]);
    let _remote = c.node("remote", "127.0.0.3", &[]);
    let svc_port = free_port();
    c.apply("hello", &hello("hello", 1, "local", Some(svc_port)));
    let local_addr = format!("127.0.0.2:{svc_port}");
    let remote_addr = format!("127.0.0.3:{svc_port}");
    wait_until("the hello pod", Duration::from_secs(120), || {
        answers(&local_addr) && answers(&remote_addr)
    });

    let targets = [
        ("wasmtime serve", serve_addr.clone()),
        ("nginx → wasmtime serve", nginx_addr.clone()),
        ("flotilla proxy → local pod", local_addr.clone()),
        ("flotilla proxy → QUIC → remote pod", remote_addr.clone()),
    ];
    println!(
        "bench_services: hello-http, {rounds} rounds of {seconds} s per target and load; \
         wrk -t2 -c32 (throughput), wrk -t1 -c1 (latency)"
    );
    // Warm every target up (compiled code, connections).
    for (_, a) in &targets {
        wrk(&format!("http://{a}/"), 1, 4, 1);
    }
    let mut thr: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    let mut lat: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, (name, a)) in targets.iter().enumerate() {
            let url = format!("http://{a}/");
            let t = wrk(&url, 2, 32, seconds);
            let l = wrk(&url, 1, 1, seconds);
            println!(
                "round {}: {name}: {:.0} req/s (errors {}); one at a time p50 {:.3} ms p99 {:.3} ms",
                round + 1,
                t.rps,
                t.errors + l.errors,
                l.p50,
                l.p99
            );
            thr[i].push(t);
            lat[i].push(l);
        }
    }
    let med = |v: &[Figures], f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
    let rps: Vec<f64> = thr.iter().map(|v| med(v, |f| f.rps)).collect();
    let p50: Vec<f64> = lat.iter().map(|v| med(v, |f| f.p50)).collect();
    let p99: Vec<f64> = lat.iter().map(|v| med(v, |f| f.p99)).collect();
    let loaded_p50: Vec<f64> = thr.iter().map(|v| med(v, |f| f.p50)).collect();
    let loaded_p99: Vec<f64> = thr.iter().map(|v| med(v, |f| f.p99)).collect();
    println!();
    println!("| target | req/s (c32) | p50 / p99 at c32 | p50 / p99 one at a time |");
    println!("|---|---|---|---|");
    for (i, (name, _)) in targets.iter().enumerate() {
        println!(
            "| {name} | {:.0} | {:.2} / {:.2} ms | {:.3} / {:.3} ms |",
            rps[i], loaded_p50[i], loaded_p99[i], p50[i], p99[i]
        );
    }
    println!();
    println!(
        "local pod vs wasmtime serve: {:.2}× req/s (goal ≥ 0.90×)",
        rps[2] / rps[0]
    );
    println!(
        "latency added, one at a time, p50 / p99: nginx {:.3} / {:.3} ms; flotilla proxy (with its runtime) {:.3} / {:.3} ms (goal ≤ nginx's)",
        p50[1] - p50[0],
        p99[1] - p99[0],
        p50[2] - p50[0],
        p99[2] - p99[0]
    );
    // The hop also paired within each round (remote minus local, measured
    // seconds apart), then the median round: less open to a noisy round.
    let paired = |f: fn(&Figures) -> f64| {
        median(
            lat[3]
                .iter()
                .zip(&lat[2])
                .map(|(r, l)| f(r) - f(l))
                .collect(),
        )
    };
    println!(
        "cross-node hop adds, one at a time: p50 {:.3} ms, p99 {:.3} ms; paired by round: p50 {:.3} ms, p99 {:.3} ms (goal p99 < 1 ms)",
        p50[3] - p50[2],
        p99[3] - p99[2],
        paired(|f| f.p50),
        paired(|f| f.p99)
    );

    // Idle http pods on a node of their own.
    let max = (idle + 10).to_string();
    let idle_node = c.node("idle", "127.0.0.4", &["--max-pods", &max]);
    wait_until("the idle node", Duration::from_secs(60), || {
        c.cli(&["get", "nodes", "--stale"]).is_ok_and(|s| {
            s.lines()
                .any(|l| l.starts_with("idle ") && l.contains(" Ready "))
        })
    });
    std::thread::sleep(Duration::from_secs(3));
    let (before, _) = memory_mib(idle_node.0.id());
    let started = Instant::now();
    c.apply("idle", &hello("idle", idle, "idle", None));
    wait_until("the idle pods", Duration::from_secs(900), || {
        c.running("app=idle") == idle
    });
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let (after, peak) = memory_mib(idle_node.0.id());
    let per_pod = (after - before) / idle as f64;
    println!(
        "idle http pods: {idle} Running in {:.1} s; node RSS {before:.1} → {after:.1} MiB (peak {peak:.1}); \
         {:.0} KiB per pod; {:.0} pods per GiB (goal ≥ 1,000)",
        took.as_secs_f64(),
        per_pod * 1024.0,
        1024.0 / per_pod
    );
}
