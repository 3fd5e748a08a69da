//! What the benchmark programs share: the `flotilla` binary they drive, the
//! processes they start (killed when dropped), and how much memory and CPU
//! a process has used, from /proc.

#![allow(dead_code)] // Each benchmark uses some of these.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `flotilla` binary next to this program (`$FLOTILLA_BIN` overrides).
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOTILLA_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .map(|d| d.join("flotilla"))
        .expect("binary path")
}

/// A whole number from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Fields of a process's /proc status given in kB (`VmRSS:`, ...), in MiB
/// (0 when absent).
pub fn status_mib<const N: usize>(pid: u32, names: [&str; N]) -> [f64; N] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    names.map(|name| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    })
}

/// Resident and peak memory of a process, in MiB.
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let [rss, peak] = status_mib(pid, ["VmRSS:", "VmHWM:"]);
    (rss, peak)
}

/// CPU seconds a process has used (user + system).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3 (state); utime is field 14 → index 11.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the `flotilla` CLI with the client config `config`: its standard
/// output, or its standard error when it fails.
pub fn flotilla_cli(config: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin())
        .args(args)
        .env("FLOTILLA_CONFIG", config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `f` every 200 ms until it holds: how long that took. Panics,
/// naming `what`, after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}

/// Runs the `flotilla` binary with `args`, logging at warn into `log`
/// (stdout and stderr), with no stdin.
pub fn spawn_logged(args: &mut Command, log: &Path) -> Proc {
    let file = std::fs::File::create(log).expect("log");
    let child = args
        .env("FLOTILLA_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .expect("run flotilla");
    Proc(child)
}

/// A master on a free loopback port, its data in `dir/master`, its log in
/// `dir/master.log` and the admin's client config at `dir/config`; returned
/// with its address once it answers.
pub fn start_master(dir: &Path) -> (Proc, String) {
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.join("config");
    let master = spawn_logged(
        Command::new(bin())
            .args(["master", "--listen", &addr, "--advertise", &addr])
            .arg("--data-dir")
            .arg(dir.join("master"))
            .env("FLOTILLA_CONFIG", &config),
        &dir.join("master.log"),
    );
    wait_until("the master", Duration::from_secs(60), || {
        config.exists() && flotilla_cli(&config, &["get", "nodes"]).is_ok()
    });
    (master, addr)
}
