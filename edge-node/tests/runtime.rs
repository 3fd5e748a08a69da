//! End-to-end tests of the wasmtime runtime against the sample workloads.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_node::runtime::{
    LogSink, LogStream, Program, RunOutcome, RunSpec, Runtime, RuntimeError,
};

/// Collects everything a guest writes, per stream.
#[derive(Default)]
struct Capture {
    out: Mutex<Vec<u8>>,
    err: Mutex<Vec<u8>>,
}

impl LogSink for Capture {
    fn write(&self, stream: LogStream, bytes: &[u8]) {
        let buf = match stream {
            LogStream::Stdout => &self.out,
            LogStream::Stderr => &self.err,
        };
        buf.lock().unwrap().extend_from_slice(bytes);
    }
}

impl Capture {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }
}

fn runtime() -> (Runtime, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(&dir.path().join("cache")).unwrap();
    (rt, dir)
}

fn load(rt: &Runtime, path: &std::path::Path) -> Program {
    let wasm = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (program, info) = rt.load(&path.display().to_string(), &wasm).unwrap();
    assert!(!info.cached);
    program
}

fn spec(name: &str, args: &[&str]) -> RunSpec {
    RunSpec {
        name: name.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        ..RunSpec::default()
    }
}

async fn run(rt: &Runtime, program: &Program, spec: RunSpec) -> (RunOutcome, Arc<Capture>) {
    let capture = Arc::new(Capture::default());
    let outcome = rt.run(program, spec, capture.clone()).await;
    (outcome, capture)
}

const HELLO_EXPECTED: &str = "arg[0]=hello\narg[1]=world\narg[2]=two words\n\
                              A=1\nGREETING=hi\nhello from flotilla\n";

fn hello_spec() -> RunSpec {
    RunSpec {
        env: vec![("GREETING".into(), "hi".into()), ("A".into(), "1".into())],
        ..spec("hello", &["world", "two words"])
    }
}

#[tokio::test]
async fn hello_component_prints_args_and_env() {
    let (rt, _dir) = runtime();
    let program = load(&rt, &flotilla_workloads::path("hello"));
    assert!(matches!(program, Program::Component(_)));
    let (outcome, out) = run(&rt, &program, hello_spec()).await;
    assert_eq!(outcome, RunOutcome::Exited(0));
    assert_eq!(out.stdout(), HELLO_EXPECTED);
    assert_eq!(out.stderr(), "");
}

#[tokio::test]
async fn hello_p1_module_prints_args_and_env() {
    let (rt, _dir) = runtime();
    let program = load(&rt, &flotilla_workloads::hello_p1());
    assert!(matches!(program, Program::Module(_)));
    let (outcome, out) = run(&rt, &program, hello_spec()).await;
    assert_eq!(outcome, RunOutcome::Exited(0));
    assert_eq!(out.stdout(), HELLO_EXPECTED);
}

#[tokio::test]
async fn crasher_exits_1_with_stderr() {
    let (rt, _dir) = runtime();
    let program = load(&rt, &flotilla_workloads::path("crasher"));
    let (outcome, out) = run(&rt, &program, spec("crasher", &["0"])).await;
    assert_eq!(outcome, RunOutcome::Exited(1));
    assert_eq!(out.stderr(), "crashing now\n");
}

#[tokio::test]
async fn memory_hog_is_oom_killed() {
    let (rt, _dir) = runtime();
    let program = load(&rt, &flotilla_workloads::path("hog"));
    let limit = 32 << 20;
    let spec = RunSpec {
        memory_limit: Some(limit),
        ..spec("hog", &["memory"])
    };
    let (outcome, out) = tokio::time::timeout(Duration::from_secs(30), run(&rt, &program, spec))
        .await
        .expect("hog should hit its limit quickly");
    match outcome {
        RunOutcome::Failed { reason, message } => {
            assert_eq!(reason, "OOMKilled");
            assert!(
                message.starts_with(&format!(
                    "memory limit of {} exceeded",
                    flotilla_api::quantity::format_bytes(limit)
                )),
                "{message}"
            );
        }
        other => panic!("expected OOMKilled, got {other:?}"),
    }
    // It got well into its allowance before being stopped.
    assert!(
        out.stdout().contains("allocated 24 MiB"),
        "{}",
        out.stdout()
    );
    assert!(
        !out.stdout().contains("allocated 32 MiB"),
        "{}",
        out.stdout()
    );
}

#[tokio::test]
async fn spinning_guest_stops_when_future_dropped() {
    let (rt, _dir) = runtime();
    let spin = load(&rt, &flotilla_workloads::path("hog"));
    let capture = Arc::new(Capture::default());
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_millis(200),
        rt.run(&spin, spec("hog", &["spin"]), capture),
    )
    .await;
    assert!(result.is_err(), "spin should still be running: {result:?}");
    // The timeout could only fire because the guest yields; it must not have
    // held the (single-threaded) executor much past the deadline.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );

    // The runtime is unaffected.
    let hello = load(&rt, &flotilla_workloads::path("hello"));
    let (outcome, out) = run(&rt, &hello, spec("hello", &[])).await;
    assert_eq!(outcome, RunOutcome::Exited(0));
    assert!(out.stdout().ends_with("hello from flotilla\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_run_can_be_aborted() {
    let (rt, _dir) = runtime();
    let spin = load(&rt, &flotilla_workloads::path("hog"));
    let task = {
        let rt = rt.clone();
        tokio::spawn(async move {
            rt.run(&spin, spec("hog", &["spin"]), Arc::new(Capture::default()))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    task.abort();
    let joined = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("abort should take effect at the next epoch tick");
    assert!(joined.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn output_is_streamed_while_running() {
    let (rt, _dir) = runtime();
    let ticker = load(&rt, &flotilla_workloads::path("ticker"));
    let capture = Arc::new(Capture::default());
    let result = tokio::time::timeout(
        Duration::from_millis(300),
        rt.run(&ticker, spec("ticker", &[]), capture.clone()),
    )
    .await;
    assert!(result.is_err());
    assert_eq!(capture.stdout(), "tick 1\n");
}

#[test]
fn garbage_is_invalid_module() {
    let (rt, _dir) = runtime();
    for bytes in [&b"definitely not wasm"[..], b"", b"\0asm\x01\0\0\0\xff\xff"] {
        match rt.load("sha256:garbage", bytes) {
            Err(RuntimeError::InvalidModule { message }) => {
                assert!(!message.is_empty());
            }
            other => panic!("expected InvalidModule, got {:?}", other.map(|(_, i)| i)),
        }
    }
    match rt.load("sha256:garbage", b"not wasm") {
        Err(e) => assert!(
            e.to_string()
                .contains("not a WebAssembly module or component"),
            "{e}"
        ),
        Ok(_) => panic!("garbage loaded"),
    }
}

/// A valid core module (wasmparser accepts it with every proposal enabled,
/// as the master's upload check does) that this engine does not compile: its
/// memory uses the custom-page-sizes proposal, which wasmtime leaves off.
const UNSUPPORTED_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
    0x05, 0x04, 0x01, 0x08, 0x00, 0x00, // memory: min 0, page size 2^0 bytes
];

#[test]
fn valid_but_unsupported_is_invalid_module() {
    let (rt, _dir) = runtime();
    match rt.load("sha256:unsupported", UNSUPPORTED_MODULE) {
        Err(RuntimeError::InvalidModule { message }) => {
            assert!(message.contains("custom page sizes"), "{message}");
        }
        other => panic!("expected InvalidModule, got {:?}", other.map(|(_, i)| i)),
    }
}

#[tokio::test]
async fn second_load_comes_from_cache_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let wasm = std::fs::read(flotilla_workloads::path("hello")).unwrap();

    let rt = Runtime::new(&cache).unwrap();
    let (_, first) = rt.load("sha256:hello", &wasm).unwrap();
    assert!(!first.cached);
    let (program, second) = rt.load("sha256:hello", &wasm).unwrap();
    assert!(second.cached);
    let started = Instant::now();
    let (outcome, out) = run(&rt, &program, spec("hello", &[])).await;
    let ran = started.elapsed();
    assert_eq!(outcome, RunOutcome::Exited(0));
    assert!(out.stdout().ends_with("hello from flotilla\n"));
    eprintln!(
        "hello component: compile {:?}, cached load {:?}, instantiate + run {ran:?}",
        first.duration, second.duration
    );

    // A new runtime (a node restart) with the same engine config uses the cache too.
    drop(rt);
    let rt = Runtime::new(&cache).unwrap();
    let (_, third) = rt.load("sha256:hello", &wasm).unwrap();
    assert!(third.cached);

    // A p1 module under a different digest is not confused with the component.
    let p1 = std::fs::read(flotilla_workloads::hello_p1()).unwrap();
    let (program, info) = rt.load("sha256:hello-p1", &p1).unwrap();
    assert!(!info.cached);
    assert!(matches!(program, Program::Module(_)));
}

#[tokio::test]
async fn run_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let (rt, _dir) = runtime();
    let hello = load(&rt, &flotilla_workloads::path("hello"));
    let fut = rt.run(&hello, RunSpec::default(), Arc::new(Capture::default()));
    assert_send(&fut);
    assert_eq!(fut.await, RunOutcome::Exited(0));
}

/// A core module whose `_start` executes `unreachable`.
const TRAPPING_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
    0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
    0x03, 0x02, 0x01, 0x00, // one function of type 0
    0x07, 0x0a, 0x01, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x00, // export _start
    0x0a, 0x05, 0x01, 0x03, 0x00, 0x00, 0x0b, // body: unreachable
];

/// A core module (with the memory WASI p1 needs) whose `_start` calls
/// WASI p1 `proc_exit(3)`.
const EXIT_3_MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
    0x01, 0x08, 0x02, 0x60, 0x01, 0x7f, 0x00, 0x60, 0x00, 0x00, // types: (i32)->(), ()->()
    0x02, 0x24, 0x01, 0x16, b'w', b'a', b's', b'i', b'_', b's', b'n', b'a', b'p', b's', b'h', b'o',
    b't', b'_', b'p', b'r', b'e', b'v', b'i', b'e', b'w', b'1', 0x09, b'p', b'r', b'o', b'c', b'_',
    b'e', b'x', b'i', b't', 0x00, 0x00, // import proc_exit
    0x03, 0x02, 0x01, 0x01, // one function of type 1
    0x05, 0x03, 0x01, 0x00, 0x01, // one memory of one page (WASI p1 requires it)
    0x07, 0x13, 0x02, 0x06, b'_', b's', b't', b'a', b'r', b't', 0x00, 0x01, // export _start
    0x06, b'm', b'e', b'm', b'o', b'r', b'y', 0x02, 0x00, // export memory
    0x0a, 0x08, 0x01, 0x06, 0x00, 0x41, 0x03, 0x10, 0x00, 0x0b, // body: call proc_exit(3)
];

#[tokio::test]
async fn trap_is_reported_with_backtrace() {
    let (rt, _dir) = runtime();
    let (program, _) = rt.load("sha256:trap", TRAPPING_MODULE).unwrap();
    let (outcome, _) = run(&rt, &program, spec("trap", &[])).await;
    match outcome {
        RunOutcome::Failed { reason, message } => {
            eprintln!("trap message: {message}");
            assert_eq!(reason, "Trap");
            assert!(message.contains("unreachable"), "{message}");
            assert!(message.contains("wasm backtrace:"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn a_rust_panic_traps_with_the_functions_named_as_in_the_source() {
    let (rt, _dir) = runtime();
    let program = load(&rt, &flotilla_workloads::path("crasher"));
    let (outcome, out) = run(&rt, &program, spec("crasher", &["panic"])).await;
    assert!(
        out.stderr().contains("crasher gives up"),
        "{}",
        out.stderr()
    );
    match outcome {
        RunOutcome::Failed { reason, message } => {
            assert_eq!(reason, "Trap");
            assert!(message.contains("wasm backtrace:"), "{message}");
            eprintln!("trap message: {message}");
            assert!(message.contains("crasher::give_up"), "{message}");
            assert!(
                message.contains("the standard library's panic and abort"),
                "{message}"
            );
            // Demangled, without the symbol's hash.
            assert!(!message.contains("_ZN"), "{message}");
            assert!(!message.contains("17h"), "{message}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
}

#[tokio::test]
async fn p1_proc_exit_code_is_the_exit_code() {
    let (rt, _dir) = runtime();
    let (program, _) = rt.load("sha256:exit3", EXIT_3_MODULE).unwrap();
    let (outcome, _) = run(&rt, &program, spec("exit3", &[])).await;
    assert_eq!(outcome, RunOutcome::Exited(3));
}

#[tokio::test]
async fn module_without_start_is_a_start_error() {
    // Export the function as `main` instead of `_start`.
    let mut bytes = TRAPPING_MODULE.to_vec();
    let at = bytes.windows(6).position(|w| w == b"_start").unwrap();
    bytes[at..at + 6].copy_from_slice(b"main__");
    let (rt, _dir) = runtime();
    let (program, _) = rt.load("sha256:nostart", &bytes).unwrap();
    let (outcome, _) = run(&rt, &program, spec("nostart", &[])).await;
    match outcome {
        RunOutcome::Failed { reason, message } => {
            eprintln!("start error: {message}");
            assert_eq!(reason, "StartError");
            assert!(message.contains("_start"), "{message}");
        }
        other => panic!("expected a start error, got {other:?}"),
    }
}

/// A p1 module with `tables` tables of a million funcref elements each and an
/// empty `_start`, assembled by hand (the node needs no text-format parser).
fn many_tables(tables: u8) -> Vec<u8> {
    let mut table_sec = vec![tables];
    for _ in 0..tables {
        // funcref, min only, min = 2^20 (LEB128: 80 80 40).
        table_sec.extend_from_slice(&[0x70, 0x00, 0x80, 0x80, 0x40]);
    }
    let mut m = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    m.extend_from_slice(&[0x01, 0x04, 0x01, 0x60, 0x00, 0x00]); // type () -> ()
    m.extend_from_slice(&[0x03, 0x02, 0x01, 0x00]); // one function of type 0
    let len = table_sec.len();
    assert!(len < 1 << 14);
    m.push(0x04);
    m.extend_from_slice(&[(len as u8 & 0x7f) | 0x80, (len >> 7) as u8]);
    m.extend_from_slice(&table_sec);
    m.extend_from_slice(&[0x07, 0x0a, 0x01, 0x06]);
    m.extend_from_slice(b"_start");
    m.extend_from_slice(&[0x00, 0x00]); // export func 0
    m.extend_from_slice(&[0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b]); // empty body
    m
}

/// Tables count against the pod's memory limit: 64 tables of a million
/// elements under 16 MiB once took the node from 82 to 694 MB.
#[tokio::test]
async fn tables_count_against_the_memory_limit() {
    let (rt, _dir) = runtime();
    let (program, _) = rt.load("tables", &many_tables(64)).expect("loads");
    let limit = 16 << 20;
    let limited = RunSpec {
        memory_limit: Some(limit),
        ..spec("tables", &[])
    };
    let (outcome, _) = tokio::time::timeout(Duration::from_secs(30), run(&rt, &program, limited))
        .await
        .expect("bounded");
    match outcome {
        RunOutcome::Failed { reason, message } => {
            assert_eq!(reason, "OOMKilled", "{message}");
            assert!(message.contains("linear memory and tables"), "{message}");
        }
        other => panic!("expected OOMKilled, got {other:?}"),
    }
    // One table of a million elements fits in 16 MiB and runs.
    let (program, _) = rt.load("table", &many_tables(1)).expect("loads");
    let one = RunSpec {
        memory_limit: Some(limit),
        ..spec("table", &[])
    };
    let (outcome, _) = run(&rt, &program, one).await;
    assert_eq!(outcome, RunOutcome::Exited(0));
}

/// CPU time this thread has used: the scheduler's count in nanoseconds
/// (`/proc/thread-self/schedstat`), or else user + system time in 10 ms
/// ticks (`/proc/thread-self/stat`; USER_HZ is 100 on Linux).
fn thread_cpu() -> Duration {
    if let Some(ns) = std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .filter(|&ns| ns > 0)
    {
        return Duration::from_nanos(ns);
    }
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("thread stat");
    // Fields after the `(comm)`, which may hold spaces: utime and stime are
    // the 12th and 13th.
    let after = stat.rsplit_once(')').expect("stat format").1;
    let ticks: u64 = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|t| t.parse::<u64>().expect("ticks"))
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Share of a core that `hog spin` got in `wall` under `cpu_limit`. Run it
/// on a current-thread runtime: the guest then runs on the calling thread
/// only, and other tests' threads do not count.
async fn spin_share(rt: &Runtime, spin: &Program, cpu_limit: Option<u64>, wall: Duration) -> f64 {
    let spec = RunSpec {
        cpu_limit,
        ..spec("hog", &["spin"])
    };
    let (cpu0, t0) = (thread_cpu(), Instant::now());
    let result = tokio::time::timeout(wall, rt.run(spin, spec, Arc::new(Capture::default()))).await;
    assert!(result.is_err(), "spin ended: {result:?}");
    (thread_cpu() - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64()
}

/// `limits.cpu: 100m` holds a guest that never stops to about a tenth of a
/// core. The bounds are loose: the machine running the tests is shared.
#[tokio::test]
async fn cpu_limit_holds_a_spinning_guest_to_its_share() {
    let (rt, _dir) = runtime();
    let spin = load(&rt, &flotilla_workloads::path("hog"));
    let wall = Duration::from_secs(2);
    let limited = spin_share(&rt, &spin, Some(100), wall).await;
    let unlimited = spin_share(&rt, &spin, None, wall).await;
    eprintln!("hog spin: 100m got {limited:.3} of a core, no limit {unlimited:.3}");
    assert!(limited < 0.4, "100m got {limited:.3} of a core");
    assert!(limited > 0.01, "100m barely ran: {limited:.3} of a core");
    assert!(
        unlimited > 2.0 * limited,
        "no limit got {unlimited:.3} of a core, 100m {limited:.3}"
    );
}

/// Only running counts against the limit: a guest that sleeps between short
/// bursts of work is not paused for its sleeps.
#[tokio::test]
async fn cpu_limit_does_not_charge_waiting() {
    let (rt, _dir) = runtime();
    let ticker = load(&rt, &flotilla_workloads::path("ticker"));
    let capture = Arc::new(Capture::default());
    let limited = RunSpec {
        cpu_limit: Some(100),
        ..spec("ticker", &[])
    };
    let result = tokio::time::timeout(
        Duration::from_millis(2500),
        rt.run(&ticker, limited, capture.clone()),
    )
    .await;
    assert!(result.is_err());
    // Ticks at 0, 1 and 2 s; charged for its 1 s sleeps, it would have been
    // paused 9 s after the first.
    assert!(
        capture.stdout().contains("tick 2\n"),
        "{}",
        capture.stdout()
    );
}

/// A guest paused for its CPU limit stops as soon as its future is dropped,
/// not when the pause would end (about 10 s at 1m).
#[tokio::test]
async fn paused_guest_stops_at_once() {
    let (rt, _dir) = runtime();
    let spin = load(&rt, &flotilla_workloads::path("hog"));
    let limited = RunSpec {
        cpu_limit: Some(1),
        ..spec("hog", &["spin"])
    };
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_millis(300),
        rt.run(&spin, limited, Arc::new(Capture::default())),
    )
    .await;
    assert!(result.is_err(), "spin ended: {result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// The `files` guest as a p2 component and as a p1 module.
fn files_builds() -> [(&'static str, std::path::PathBuf); 2] {
    [
        ("p2", flotilla_workloads::path("files")),
        ("p1", flotilla_workloads::path_p1("files")),
    ]
}

fn files_spec(args: &[&str], mounts: &[flotilla_node::volumes::Mount]) -> RunSpec {
    RunSpec {
        mounts: mounts.to_vec(),
        ..spec("files", args)
    }
}

fn mount(host: &std::path::Path, guest: &str, read_only: bool) -> flotilla_node::volumes::Mount {
    flotilla_node::volumes::Mount {
        host: host.to_path_buf(),
        guest: guest.into(),
        read_only,
    }
}

#[tokio::test]
async fn mounts_are_read_and_written_and_read_only_where_asked() {
    for (build, path) in files_builds() {
        let (rt, dir) = runtime();
        let program = load(&rt, &path);
        let data = dir.path().join("data");
        let config = dir.path().join("config");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("app.conf"), "threshold=3").unwrap();
        let mounts = [
            mount(&data, "/data", false),
            mount(&config, "/etc/app", true),
        ];
        let ok = |(o, c): (RunOutcome, Arc<Capture>)| {
            assert_eq!(o, RunOutcome::Exited(0), "{build}: {}", c.stderr());
            c.stdout()
        };
        ok(run(
            &rt,
            &program,
            files_spec(&["write", "/data/x", "kept"], &mounts),
        )
        .await);
        // Another run of the program finds what the first wrote.
        let read = ok(run(&rt, &program, files_spec(&["read", "/data/x"], &mounts)).await);
        assert_eq!(read, "kept", "{build}");
        assert_eq!(std::fs::read_to_string(data.join("x")).unwrap(), "kept");
        let conf = ok(run(
            &rt,
            &program,
            files_spec(&["read", "/etc/app/app.conf"], &mounts),
        )
        .await);
        assert_eq!(conf, "threshold=3", "{build}");
        let denied = ok(run(
            &rt,
            &program,
            files_spec(&["expect-denied", "/etc/app/new.conf"], &mounts),
        )
        .await);
        assert!(denied.contains("denied"), "{build}: {denied}");
        assert!(!config.join("new.conf").exists(), "{build}");
        // Nothing outside the mounts, and none at all without them.
        let (o, _) = run(&rt, &program, files_spec(&["read", "/etc/passwd"], &mounts)).await;
        assert_ne!(o, RunOutcome::Exited(0), "{build}: read outside the mounts");
        let (o, _) = run(&rt, &program, files_spec(&["read", "/data/x"], &[])).await;
        assert_ne!(o, RunOutcome::Exited(0), "{build}: read without a mount");
    }
}

#[tokio::test]
async fn the_file_system_suite_passes_in_a_mount_and_at_the_root() {
    for (build, path) in files_builds() {
        let (rt, dir) = runtime();
        let program = load(&rt, &path);
        let host = dir.path().join("vol");
        std::fs::create_dir_all(&host).unwrap();
        for (guest, suite_dir) in [("/data", "/data"), ("/", "/")] {
            let mounts = [mount(&host, guest, false)];
            // Twice: the suite cleans up after itself.
            for _ in 0..2 {
                let (o, c) = run(&rt, &program, files_spec(&["suite", suite_dir], &mounts)).await;
                assert_eq!(
                    o,
                    RunOutcome::Exited(0),
                    "{build} at {guest}:\n{}{}",
                    c.stdout(),
                    c.stderr()
                );
                assert!(!c.stdout().contains("FAIL"), "{build}: {}", c.stdout());
            }
        }
    }
}
