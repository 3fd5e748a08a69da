//! Benchmark: the share of one core that a guest spinning forever gets under
//! `resources.limits.cpu` of 100m, 250m, 500m, and with no limit.
//!
//! Runs `hog spin` (workloads/) in the node's runtime for 3 s per limit, on
//! a current-thread tokio runtime so that the guest runs on this thread
//! only, and divides this thread's CPU time by the wall time. The figures
//! are printed, not asserted: on a shared machine a pod with no limit gets
//! what the other processes leave, and a limited one — charged for the wall
//! time it holds its thread — may get a little less than its limit.
//!
//! Run: `cargo run --release -p flotilla-node --example bench_cpu`
//! (`BENCH_SECONDS=10` for longer runs).

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_node::runtime::{LogSink, LogStream, RunSpec, Runtime};

/// Drops the guest's output (`hog spin` writes none).
struct Discard;

impl LogSink for Discard {
    fn write(&self, _: LogStream, _: &[u8]) {}
}

/// CPU time this thread has used: the scheduler's count in nanoseconds, or
/// else user + system time in 10 ms ticks (USER_HZ is 100 on Linux).
fn thread_cpu() -> Result<Duration, Box<dyn Error>> {
    let ns = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .filter(|&ns| ns > 0);
    if let Some(ns) = ns {
        return Ok(Duration::from_nanos(ns));
    }
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    let after = stat
        .rsplit_once(')')
        .ok_or("unexpected /proc stat format")?
        .1;
    let mut ticks = 0;
    for t in after.split_whitespace().skip(11).take(2) {
        ticks += t.parse::<u64>()?;
    }
    Ok(Duration::from_millis(ticks * 10))
}

fn main() -> Result<(), Box<dyn Error>> {
    let seconds: u64 = match std::env::var("BENCH_SECONDS") {
        Ok(s) => s.parse()?,
        Err(_) => 3,
    };
    let wall = Duration::from_secs(seconds);
    let dir = tempfile::tempdir()?;
    let rt = Runtime::new(&dir.path().join("compiled"))?;
    let wasm = std::fs::read(flotilla_workloads::path("hog"))?;
    let (spin, _) = rt.load("sha256:hog", &wasm)?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "hog spin, {seconds} s per limit, {} CPUs, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:>6}  {:>10}  {:>8}  {:>8}",
        "limit", "cpu used", "share", "of limit"
    );
    for limit in [Some(100), Some(250), Some(500), None] {
        let spec = RunSpec {
            name: "hog".into(),
            args: vec!["spin".into()],
            cpu_limit: limit,
            ..RunSpec::default()
        };
        let (cpu0, t0) = (thread_cpu()?, Instant::now());
        let ended = tokio.block_on(async {
            tokio::time::timeout(wall, rt.run(&spin, spec, Arc::new(Discard)))
                .await
                .ok()
        });
        if let Some(outcome) = ended {
            return Err(format!("hog spin ended: {outcome:?}").into());
        }
        let used = thread_cpu()? - cpu0;
        let share = used.as_secs_f64() / t0.elapsed().as_secs_f64();
        let (name, of_limit) = match limit {
            Some(m) => (format!("{m}m"), format!("{:.2}", share * 1000.0 / m as f64)),
            None => ("none".to_string(), "-".to_string()),
        };
        println!(
            "{name:>6}  {:>8}ms  {share:>8.3}  {of_limit:>8}",
            used.as_millis()
        );
    }
    Ok(())
}
