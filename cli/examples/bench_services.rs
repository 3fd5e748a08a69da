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
//! - latency: one request at a time (p50 and p99 are what each hop adds,
//!   without queueing), from this program's own client, which asks the
//!   four targets in turn, request by request: a stall of the machine
//!   (this is a shared virtual machine) falls on all targets alike, so
//!   differences of p99 are the hops' and not the noise's. A fifth
//!   measure takes its turn with them: a UDP datagram to another process
//!   and back, the floor under any hop between two processes here (each
//!   round prints its p99 beside what the hop added).
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

use procs::{
    bin, env_usize, flotilla_cli, memory_mib, spawn_logged, start_master, wait_until, Proc,
};
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

/// The `q` quantile of sorted `v`.
fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// One request at a time to each of `addrs` in turn, for `period`: each
/// target's latencies in milliseconds, and how many requests failed. The
/// targets take turns request by request (the first of each turn
/// rotating), so that a stall of the machine falls on all of them alike
/// rather than on whichever ran during it.
fn interleaved(
    addrs: &[&str],
    echo: &std::net::UdpSocket,
    period: Duration,
) -> (Vec<Vec<f64>>, usize) {
    let mut clients: Vec<Option<Client>> = addrs.iter().map(|_| None).collect();
    let n = addrs.len() + 1;
    let mut out: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut failed = 0;
    let started = Instant::now();
    let mut turn = 0usize;
    // Bounded in time and in count.
    while started.elapsed() < period && turn < 1_000_000 {
        for k in 0..n {
            let i = (turn + k) % n;
            let begun = Instant::now();
            if i == addrs.len() {
                match udp_round_trip(echo) {
                    Ok(()) => out[i].push(begun.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => failed += 1,
                }
                continue;
            }
            let client = match clients[i].take() {
                Some(c) => Ok(c),
                None => Client::connect(addrs[i]),
            };
            match client.and_then(|mut c| c.get().map(|keep| (c, keep))) {
                Ok((c, keep)) => {
                    out[i].push(begun.elapsed().as_secs_f64() * 1000.0);
                    // A connection the server closes (nginx does after
                    // 1,000 requests) is made again by the next request.
                    clients[i] = keep.then_some(c);
                }
                Err(e) => {
                    if failed < 3 {
                        eprintln!("a request to {} failed: {e}", addrs[i]);
                    }
                    failed += 1;
                }
            }
        }
        turn += 1;
    }
    (out, failed)
}

/// One datagram to the echo process and back: the floor under any hop
/// between two processes of this machine (two wake-ups, two trips through
/// loopback), with no QUIC, TLS or HTTP.
fn udp_round_trip(echo: &std::net::UdpSocket) -> std::io::Result<()> {
    let mut buf = [0u8; 256];
    echo.send(&[7u8; 200])?;
    let n = echo.recv(&mut buf)?;
    if n == 200 {
        Ok(())
    } else {
        Err(std::io::Error::other("short echo"))
    }
}

/// Runs as the echo process (`bench_services udp-echo`): prints its port,
/// then sends every datagram back, until its parent goes.
fn udp_echo() {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    println!("{}", sock.local_addr().expect("addr").port());
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = sock.recv_from(&mut buf) {
        let _ = sock.send_to(&buf[..n], from);
    }
}

/// Starts the echo process and a socket connected to it.
fn start_echo() -> (Proc, std::net::UdpSocket) {
    use std::io::BufRead;
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .arg("udp-echo")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the echo process");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("echo port");
    let port: u16 = line.trim().parse().expect("echo port");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    (Proc(child), sock)
}

/// A kept-alive HTTP/1.1 connection that asks `GET /` and reads each
/// answer whole (a `Content-Length` body or a chunked one).
struct Client {
    conn: std::io::BufReader<std::net::TcpStream>,
}

impl Client {
    fn connect(addr: &str) -> std::io::Result<Client> {
        let s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Client {
            conn: std::io::BufReader::new(s),
        })
    }

    /// Asks once; whether the connection may be used again.
    fn get(&mut self) -> std::io::Result<bool> {
        use std::io::{BufRead, Read, Write};
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
        self.conn
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut line = String::new();
        self.conn.read_line(&mut line)?;
        if !line.starts_with("HTTP/1.1 200") {
            return Err(bad(&format!("answered {:?}", line.trim_end())));
        }
        let (mut length, mut chunked, mut keep) = (None, false, true);
        loop {
            line.clear();
            if self.conn.read_line(&mut line)? == 0 {
                return Err(bad("closed in the head"));
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            } else if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            } else if l.starts_with("connection:") && l.contains("close") {
                keep = false;
            }
        }
        let skip = |n: usize, conn: &mut std::io::BufReader<std::net::TcpStream>| {
            std::io::copy(&mut conn.by_ref().take(n as u64), &mut std::io::sink())
        };
        if chunked {
            loop {
                line.clear();
                self.conn.read_line(&mut line)?;
                let size =
                    usize::from_str_radix(line.trim_end().split(';').next().unwrap_or(""), 16)
                        .map_err(|_| bad("bad chunk size"))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        line.clear();
                        if self.conn.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                            return Ok(keep);
                        }
                    }
                }
                skip(size + 2, &mut self.conn)?;
            }
        }
        skip(length.ok_or_else(|| bad("no length"))?, &mut self.conn)?;
        Ok(keep)
    }
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
        spawn_logged(
            Command::new(bin())
                .args(["node", "--master", &self.addr, "--name", name])
                .args(["--token", token.trim(), "--proxy-address", proxy])
                .args(["--proxy-peer-port", "0", "--host-port", "0"])
                .args(["--host-tls-port", "0", "--label", &format!("bench={name}")])
                .args(extra)
                .arg("--data-dir")
                .arg(self.dir.join(name)),
            &self.dir.join(format!("{name}.log")),
        )
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
    if std::env::args().nth(1).as_deref() == Some("udp-echo") {
        return udp_echo();
    }
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
         wrk -t2 -c32 (throughput), one request at a time to each target in turn (latency)"
    );
    // Warm every target up (compiled code, connections).
    for (_, a) in &targets {
        wrk(&format!("http://{a}/"), 1, 4, 1);
    }
    let mut thr: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); targets.len() + 1];
    let addrs: Vec<&str> = targets.iter().map(|(_, a)| a.as_str()).collect();
    let (_echo, echo) = start_echo();
    // Each round's floor p99 and what the hop added at p99.
    let mut hop_p99: Vec<(f64, f64)> = Vec::new();
    for round in 0..rounds {
        for (i, (name, a)) in targets.iter().enumerate() {
            let t = wrk(&format!("http://{a}/"), 2, 32, seconds);
            println!(
                "round {}: {name}: {:.0} req/s (errors {})",
                round + 1,
                t.rps,
                t.errors
            );
            thr[i].push(t);
        }
        let (taken, failed) = interleaved(&addrs, &echo, Duration::from_secs(seconds as u64));
        let p99_of = |v: &Vec<f64>| {
            let mut v = v.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            quantile(&v, 0.99)
        };
        let round_p99: Vec<f64> = taken.iter().map(p99_of).collect();
        println!(
            "round {}: one at a time, interleaved: {} requests per target, {failed} failed; \
             p99: floor {:.3}, local {:.3}, remote {:.3} ms; the hop adds {:.3} ms",
            round + 1,
            taken.first().map_or(0, Vec::len),
            round_p99[4],
            round_p99[2],
            round_p99[3],
            round_p99[3] - round_p99[2]
        );
        hop_p99.push((round_p99[4], round_p99[3] - round_p99[2]));
        for (all, new) in samples.iter_mut().zip(taken) {
            all.extend(new);
        }
    }
    let med = |v: &[Figures], f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
    let rps: Vec<f64> = thr.iter().map(|v| med(v, |f| f.rps)).collect();
    let loaded_p50: Vec<f64> = thr.iter().map(|v| med(v, |f| f.p50)).collect();
    let loaded_p99: Vec<f64> = thr.iter().map(|v| med(v, |f| f.p99)).collect();
    for s in &mut samples {
        s.sort_by(|a, b| a.total_cmp(b));
    }
    let p50: Vec<f64> = samples.iter().map(|s| quantile(s, 0.50)).collect();
    let p99: Vec<f64> = samples.iter().map(|s| quantile(s, 0.99)).collect();
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
    let names = targets
        .iter()
        .map(|(name, _)| *name)
        .chain(["UDP to another process and back (the floor)"]);
    for (i, name) in names.enumerate() {
        let q = |x| quantile(&samples[i], x);
        println!(
            "{name}: p50 {:.3} p90 {:.3} p95 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms",
            q(0.5),
            q(0.9),
            q(0.95),
            q(0.99),
            q(0.999),
            q(1.0)
        );
    }
    let udp = &samples[targets.len()];
    let quiet: Vec<String> = hop_p99
        .iter()
        .filter(|(floor, _)| *floor < 0.5)
        .map(|(_, hop)| format!("{hop:.3}"))
        .collect();
    println!(
        "cross-node hop adds at p99, by round: median {:.3} ms; in the {} rounds whose floor p99 was under 0.5 ms: [{}] ms",
        median(hop_p99.iter().map(|(_, h)| *h).collect()),
        quiet.len(),
        quiet.join(", ")
    );
    println!(
        "cross-node hop adds, one at a time, all rounds together: p50 {:.3} ms, p99 {:.3} ms (goal p99 < 1 ms); \
         beyond the floor: p50 {:.3} ms, p99 {:.3} ms",
        p50[3] - p50[2],
        p99[3] - p99[2],
        p50[3] - p50[2] - quantile(udp, 0.5),
        p99[3] - p99[2] - quantile(udp, 0.99),
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
