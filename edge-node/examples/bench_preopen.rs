//! Benchmark: what a preopened directory adds to a run's start.
//!
//! Runs the `files` sample (workloads/) in the node's runtime, p2 and p1,
//! `BENCH_RUNS` times each (default 200) doing as little as it can (`ls`
//! of an empty directory, or of `/` with no mount, which fails at once),
//! with no mount, with one emptyDir-like mount, and with four; and prints
//! the median and 90th percentile of a run's wall time from start to end,
//! and the ratio to the run without a mount. The anchor is a run with no
//! preopen: the difference is the cost of opening the directories and
//! handing them to the guest. Nothing is asserted.
//!
//! Run: `cargo run --release -p flotilla-node --example bench_preopen`

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_node::runtime::{LogSink, LogStream, RunSpec, Runtime};
use flotilla_node::volumes::Mount;

/// Drops the guest's output.
struct Discard;

impl LogSink for Discard {
    fn write(&self, _: LogStream, _: &[u8]) {}
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn main() -> Result<(), Box<dyn Error>> {
    let runs: usize = match std::env::var("BENCH_RUNS") {
        Ok(s) => s.parse()?,
        Err(_) => 200,
    };
    let dir = tempfile::tempdir()?;
    let rt = Runtime::new(&dir.path().join("compiled"))?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mounts: Vec<Mount> = (0..4)
        .map(|i| {
            let host = dir.path().join(format!("vol{i}"));
            std::fs::create_dir_all(&host)?;
            Ok(Mount {
                host,
                guest: format!("/v{i}"),
                read_only: i % 2 == 1,
            })
        })
        .collect::<Result<_, std::io::Error>>()?;
    println!("bench_preopen: {runs} runs each, median / p90 of a run's wall time");
    println!("| build | mounts | median | p90 | median vs no mount |");
    println!("| --- | --- | --- | --- | --- |");
    for (build, path) in [
        ("p2", flotilla_workloads::path("files")),
        ("p1", flotilla_workloads::path_p1("files")),
    ] {
        let wasm = std::fs::read(&path)?;
        let (program, _) = rt.load(&format!("files-{build}"), &wasm)?;
        let mut anchor = None;
        for count in [0usize, 1, 4] {
            let spec = RunSpec {
                name: "files".into(),
                args: vec![
                    "ls".into(),
                    if count == 0 { "/".into() } else { "/v0".into() },
                ],
                mounts: mounts[..count].to_vec(),
                ..RunSpec::default()
            };
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let started = Instant::now();
                let sink: Arc<dyn LogSink> = Arc::new(Discard);
                tokio.block_on(rt.run(&program, spec.clone(), sink));
                times.push(started.elapsed());
            }
            times.sort();
            let median = percentile(&times, 0.5);
            let base = *anchor.get_or_insert(median);
            println!(
                "| {build} | {count} | {:.0} µs | {:.0} µs | {:.2} |",
                median.as_secs_f64() * 1e6,
                percentile(&times, 0.9).as_secs_f64() * 1e6,
                median.as_secs_f64() / base.as_secs_f64().max(1e-9)
            );
        }
    }
    Ok(())
}
