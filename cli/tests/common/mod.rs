//! Test harness: real `flotilla` processes (a master and nodes) on loopback,
//! each cluster in its own temporary directory, killed when dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");

/// A free UDP port on loopback (QUIC listens on UDP).
pub fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub addr: String,
    pub grace: String,
    master: Option<Child>,
    nodes: HashMap<String, Child>,
    /// The proxy address each node was last started with.
    proxies: HashMap<String, String>,
    /// When set, every process this cluster starts (master, nodes, CLI)
    /// runs with its wall clock at this time (libfaketime, `@YYYY-MM-DD hh:mm:ss`).
    pub fake_time: Option<String>,
    /// More flags for the master, e.g. `--module-grace 2s`.
    pub master_args: Vec<String>,
}

/// libfaketime from Debian's `faketime` package (installed by scripts/setup.sh).
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// libfaketime's absolute form of a time: `@YYYY-MM-DD hh:mm:ss`.
pub fn faketime(t: flotilla_api::time::Time) -> String {
    let s = t.to_string();
    format!("@{}", s.get(..19).unwrap_or(&s).replace('T', " "))
}

/// Makes `cmd` run with its wall clock starting at `at` (`@YYYY-MM-DD
/// hh:mm:ss`); timers and timeouts (the monotonic clock) stay real.
pub fn fake_clock(cmd: &mut Command, at: &str) {
    assert!(
        Path::new(LIBFAKETIME).exists(),
        "{LIBFAKETIME} is missing: run scripts/setup.sh (it installs Debian's faketime)"
    );
    cmd.env("LD_PRELOAD", LIBFAKETIME)
        .env("FAKETIME", at)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .env("FAKETIME_NO_CACHE", "1");
}

impl Cluster {
    /// Starts a master and waits until it answers.
    pub fn start(grace: &str) -> Cluster {
        Cluster::start_with(grace, &[])
    }

    /// A master, node `n1` and the pod `ticker` running on it.
    pub fn with_ticker(grace: &str) -> Cluster {
        let timeout = Duration::from_secs(60);
        let mut c = Cluster::start(grace);
        c.start_node("n1");
        c.wait_node_ready("n1", "Ready", timeout);
        let ticker = c.manifest(
            "ticker.yaml",
            &pod_yaml("ticker", "ticker", &[], "Always", ""),
        );
        c.ok(&["apply", "-f", ticker.to_str().expect("utf8")]);
        c.wait_phase("ticker", "Running", timeout);
        c
    }

    /// Starts a master with more flags and waits until it answers.
    pub fn start_with(grace: &str, master_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config");
        let addr = format!("127.0.0.1:{}", free_port());
        let mut c = Cluster {
            dir,
            config,
            addr,
            grace: grace.into(),
            master: None,
            nodes: HashMap::new(),
            proxies: HashMap::new(),
            fake_time: None,
            master_args: master_args.iter().map(|a| a.to_string()).collect(),
        };
        c.start_master();
        c
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{name}.log")))
            .expect("log file")
    }

    pub fn start_master(&mut self) {
        let log = self.log_file("master");
        let mut cmd = Command::new(BIN);
        if let Some(at) = &self.fake_time {
            fake_clock(&mut cmd, at);
        }
        let child = cmd
            .args([
                "master",
                "--listen",
                &self.addr,
                "--node-grace",
                &self.grace,
                "--data-dir",
            ])
            .arg(self.path("master"))
            .args(&self.master_args)
            .env("FLOTILLA_CONFIG", &self.config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start master");
        self.master = Some(child);
        wait_for("the master to answer", Duration::from_secs(20), || {
            self.run(&["get", "nodes"]).status.success().then_some(())
        });
    }

    /// Kills the master (SIGKILL).
    pub fn kill_master(&mut self) {
        if let Some(mut m) = self.master.take() {
            let _ = m.kill();
            let _ = m.wait();
        }
    }

    /// Stops the master as an operator does (SIGTERM) and waits until it
    /// has exited: its files are closed cleanly.
    pub fn stop_master(&mut self) {
        if let Some(mut m) = self.master.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &m.id().to_string()])
                .status();
            let start = Instant::now();
            while m.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = m.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = m.wait();
        }
    }

    /// `flotilla ARGS` with this cluster's config.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &self.config)
    }

    pub fn run_with(&self, args: &[&str], config: &Path) -> Output {
        let mut cmd = Command::new(BIN);
        if let Some(at) = &self.fake_time {
            fake_clock(&mut cmd, at);
        }
        cmd.args(args)
            .env("FLOTILLA_CONFIG", config)
            .stdin(Stdio::null())
            .output()
            .expect("run flotilla")
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "flotilla {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn token(&self) -> String {
        self.ok(&["token", "create"]).trim().to_string()
    }

    /// Starts (or restarts) node `name`; joins with a fresh token the first time.
    pub fn start_node(&mut self, name: &str) {
        self.start_node_with(name, &[BIN]);
    }

    /// Starts node `name` with another program line, e.g. the aarch64 build under qemu-user.
    pub fn start_node_with(&mut self, name: &str, program: &[&str]) {
        self.start_node_with_args(name, program, &[]);
    }

    /// Starts node `name` with more node flags, e.g. `--compile-timeout 1s`.
    pub fn start_node_args(&mut self, name: &str, args: &[&str]) {
        self.start_node_with_args(name, &[BIN], args);
    }

    /// Starts node `name` with another program line and more node flags.
    pub fn start_node_with_args(&mut self, name: &str, program: &[&str], args: &[&str]) {
        let data = self.path(name);
        let mut cmd = Command::new(program[0]);
        if let Some(at) = &self.fake_time {
            fake_clock(&mut cmd, at);
        }
        cmd.args(&program[1..]);
        cmd.args(["node", "--master", &self.addr, "--name", name, "--data-dir"])
            .arg(&data);
        if !data.join("credentials.yaml").exists() {
            cmd.args(["--token", &self.token()]);
        }
        cmd.args(args);
        let proxy = proxy_args(args);
        if let Some(i) = proxy.iter().position(|a| a == "--proxy-address") {
            self.proxies.insert(name.to_string(), proxy[i + 1].clone());
        }
        cmd.args(proxy);
        let log = self.log_file(name);
        let child = cmd
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start node");
        self.nodes.insert(name.to_string(), child);
    }

    /// The address node `name`'s proxy serves Service ports on.
    pub fn proxy_address(&self, name: &str) -> String {
        self.proxies
            .get(name)
            .cloned()
            .unwrap_or_else(|| "127.0.0.1".into())
    }

    pub fn kill_node(&mut self, name: &str) {
        if let Some(mut n) = self.nodes.remove(name) {
            let _ = n.kill();
            let _ = n.wait();
        }
    }

    /// Sends a signal to node `name`'s process with kill(1): `STOP` pauses
    /// it (its heartbeats stop while its state stays), `CONT` resumes it.
    pub fn signal_node(&self, name: &str, signal: &str) {
        let pid = self.nodes.get(name).expect("node started").id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// The process id of the master, while this cluster runs it.
    pub fn master_pid(&self) -> Option<u32> {
        self.master.as_ref().map(Child::id)
    }

    /// The process id of node `name`'s agent, while this cluster runs it.
    pub fn node_pid(&self, name: &str) -> Option<u32> {
        self.nodes.get(name).map(Child::id)
    }

    pub fn node_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default()
    }

    /// One object as JSON (`get KIND NAME -o json`), or None if it does not exist.
    pub fn get_json(&self, kind: &str, name: &str) -> Option<serde_json::Value> {
        let out = self.run(&["get", kind, name, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).expect("json"))
    }

    /// How node `name` came by its code (`status.code`: `compiled`,
    /// `precompiled`, `cached`), once `precompiled` is at least `least`
    /// (waits up to `timeout`: the node reports it every few seconds).
    pub fn code_counts(&self, name: &str, least: u64, timeout: Duration) -> serde_json::Value {
        wait_for(&format!("{name} to report its code"), timeout, || {
            let code = self.get_json("node", name)?["status"]["code"].clone();
            (code["precompiled"].as_u64().unwrap_or(0) >= least).then_some(code)
        })
    }

    /// The code records of the sample `workload`'s Module (`status.code`):
    /// one per engine the masters compiled it for.
    pub fn code_records(&self, workload: &str) -> Vec<serde_json::Value> {
        self.module_of(workload)["status"]["code"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The Module object of the sample `workload`, as JSON.
    pub fn module_of(&self, workload: &str) -> serde_json::Value {
        let bytes = std::fs::read(flotilla_workloads::path(workload)).expect("sample workload");
        let digest = flotilla_api::objects::digest_of(&bytes);
        self.get_json("module", &flotilla_api::objects::module_name(&digest))
            .expect("module")
    }

    /// Runs the sample `hello` as pod `hello-NODE` on `node` to Succeeded:
    /// its ModuleReady message.
    pub fn hello_on(&self, node: &str, timeout: Duration) -> String {
        self.hello(
            &format!("hello-{node}"),
            "",
            &format!("  nodeName: {node}\n"),
            timeout,
        )
    }

    /// Runs the sample `hello` as pod `name` with the argument `arg` (none
    /// if empty), placed by `placement` (spec lines, e.g. a nodeSelector),
    /// to Succeeded; checks what it printed and returns its ModuleReady
    /// message.
    pub fn hello(&self, name: &str, arg: &str, placement: &str, timeout: Duration) -> String {
        let args: &[&str] = if arg.is_empty() { &[] } else { &[arg] };
        let pod = self.manifest(
            &format!("{name}.yaml"),
            &pod_yaml(name, "hello", args, "Never", placement),
        );
        self.ok(&["apply", "-f", pod.to_str().expect("utf8")]);
        self.wait_phase(name, "Succeeded", timeout);
        let logs = self.ok(&["logs", name]);
        assert!(
            logs.contains("hello from flotilla")
                && (arg.is_empty() || logs.contains(&format!("arg[1]={arg}"))),
            "{name}: {logs}"
        );
        self.module_ready_message(name)
    }

    /// The message of a pod's ModuleReady condition, e.g.
    /// `fetch 3ms (master), compile 61ms (cold)`.
    pub fn module_ready_message(&self, pod: &str) -> String {
        let pod = self.get_json("pod", pod).expect("pod");
        pod["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "ModuleReady"))
            .and_then(|c| c["message"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// A status field of a pod (`phase`, `reason`, ...) as a string ("" if absent).
    pub fn pod_field(&self, pod: &str, field: &str) -> String {
        self.get_json("pod", pod)
            .and_then(|v| {
                v["status"][field]
                    .as_str()
                    .map(String::from)
                    .or_else(|| v["status"][field].as_u64().map(|n| n.to_string()))
            })
            .unwrap_or_default()
    }

    pub fn wait_node_ready(&self, name: &str, ready: &str, timeout: Duration) {
        wait_for(&format!("node {name} to be {ready}"), timeout, || {
            self.get_json("node", name)
                .filter(|v| v["status"]["ready"] == ready)
                .map(|_| ())
        });
    }

    pub fn wait_phase(&self, pod: &str, phase: &str, timeout: Duration) {
        wait_for(&format!("pod {pod} to be {phase}"), timeout, || {
            (self.pod_field(pod, "phase") == phase).then_some(())
        });
    }

    /// Writes a manifest into the cluster's directory and returns its path.
    pub fn manifest(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write manifest");
        p
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut n) in self.nodes.drain() {
            let _ = n.kill();
            let _ = n.wait();
        }
        self.kill_master();
        // A failing test keeps its cluster's directory (logs, data) when
        // FLOTILLA_TEST_KEEP is set, and says where.
        if std::thread::panicking() && std::env::var_os("FLOTILLA_TEST_KEEP").is_some() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("kept the cluster's files in {}", dir.keep().display());
        }
    }
}

/// A pod manifest running a sample workload.
pub fn pod_yaml(
    name: &str,
    workload: &str,
    args: &[&str],
    policy: &str,
    extra_spec: &str,
) -> String {
    let module = flotilla_workloads::path(workload);
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: flotilla.dev/v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  module: {}\n  args: [{}]\n  restartPolicy: {policy}\n{extra_spec}",
        module.display(),
        args.join(", ")
    )
}

/// `flotilla ARGS` with the client config at `config`.
pub fn run_flotilla(args: &[&str], config: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .env("FLOTILLA_CONFIG", config)
        .stdin(Stdio::null())
        .output()
        .expect("run flotilla")
}

/// Proxy flags for a node of a test, less those `given`: an address of its
/// own on loopback (127.P.N.N, P from the test process, N counting nodes),
/// any free peer port, no host port, so that nodes of tests running at
/// once never contend for a port.
pub fn proxy_args(given: &[&str]) -> Vec<String> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut out = Vec::new();
    let has = |flag: &str| {
        given
            .iter()
            .any(|a| *a == flag || a.starts_with(&format!("{flag}=")))
    };
    if !has("--proxy-address") && !has("--no-proxy") {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let p = std::process::id() % 250 + 1;
        out.push("--proxy-address".into());
        out.push(format!("127.{p}.{}.{}", (n / 250) % 250, n % 250 + 2));
    }
    if !has("--proxy-peer-port") && !has("--no-proxy") {
        out.extend(["--proxy-peer-port".into(), "0".into()]);
    }
    if !has("--host-port") && !has("--no-proxy") {
        out.extend(["--host-port".into(), "0".into()]);
    }
    if !has("--host-tls-port") && !has("--no-proxy") {
        out.extend(["--host-tls-port".into(), "0".into()]);
    }
    out
}

/// One HTTP/1.0 request (so the answer ends with the connection): the
/// status and body, or None if no answer came.
pub fn http(addr: &str, method: &str, path: &str, body: &[u8]) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    std::io::Write::write_all(&mut s, head.as_bytes()).ok()?;
    // Written beside the reading: an echo answers while the body still
    // comes, and neither side may wait for the other to finish.
    let mut writer = s.try_clone().ok()?;
    let body = body.to_vec();
    let sent = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &body).is_ok());
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut out).ok()?;
    if !sent.join().unwrap_or(false) {
        return None;
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The node-only build for `triple` that `scripts/test.sh` makes (the
/// `cross-test` profile), or the file the environment variable `env`
/// names. Panics with the command that builds it when there is none.
pub fn cross_binary(env: &str, triple: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let built = target.join(triple).join("cross-test/flotilla");
    assert!(
        built.exists(),
        "{} is missing: build it with `cargo build -p flotilla --no-default-features --features node --profile cross-test --target {triple}`",
        built.display()
    );
    built
}
