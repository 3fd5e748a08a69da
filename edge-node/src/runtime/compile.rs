//! Compiling Wasm to native code within limits.
//!
//! A hostile module can make cranelift use gigabytes and keep every core
//! busy for minutes, and a compile inside the node cannot be stopped or
//! capped. So the node agent compiles in a child process of its own
//! executable (the hidden `flotilla __compile` subcommand, which builds the
//! same engine with [`engine_config`]): the module goes in on stdin, the
//! serialized code goes to a temporary file in the code cache, from which
//! the node maps it (so the node's own memory does not grow with the code's
//! size). The parent caps the child's memory (`RLIMIT_DATA`, and the file's
//! size), gives it a wall-clock deadline, and kills it at once when the
//! pod's stop token fires; a child that was killed or failed leaves nothing
//! for the cache.
//!
//! The decisions — the default limit for a machine, what an ended child
//! means — are plain functions; [`compile_in_child`] is the thin shell.

use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use flotilla_api::objects::CodeTarget;
use tokio_util::sync::CancellationToken;
use wasmtime::{Config, Engine};

use super::{cache, classify, Kind};

/// The hidden subcommand of the `flotilla` binary that runs [`child_main`].
pub const SUBCOMMAND: &str = "__compile";
/// Longest a module may take to compile unless the node is told otherwise.
/// The 68 KB hello component compiles in a tenth of a second on x86_64 and
/// 5.6 MB of large functions in 10 to 14 s; a minute is room for large real
/// programs on slower devices while bounding what a hostile one costs.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default memory limit is half the machine's memory, at most this.
/// Measured on x86_64: the 68 KB hello component compiles within 74 MiB, a
/// 5.6 MB module of large functions within 270 MiB.
pub const MAX_DEFAULT_COMPILE_MEMORY: u64 = 1 << 30;
/// The smallest memory limit accepted: even the smallest component needs
/// about 74 MiB to compile (the allocator's per-thread segments, the
/// compiler's threads), so below this nothing would compile at all.
pub const MIN_COMPILE_MEMORY: u64 = 128 << 20;

/// How often the parent checks the child, the deadline and the stop token:
/// the bound on how late a `delete pod` stops a compile.
const POLL: Duration = Duration::from_millis(10);
/// How long the start-up check of the compiler subcommand may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of the child's stderr kept for messages.
const MAX_STDERR: usize = 8 * 1024;

/// Exit codes of the child (from sysexits.h, so they do not collide with a
/// panic's 101 or a signal).
const EXIT_INVALID: i32 = 65;
const EXIT_FAILED: i32 = 70;
const EXIT_MISMATCH: i32 = 78;

/// How much one module's compilation may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Most private memory (heap, thread stacks) the compiler may map, in bytes.
    pub memory: u64,
    /// Longest the compilation may take, from the start of the compiler.
    pub timeout: Duration,
}

impl CompileLimits {
    /// The defaults for this machine: [`default_memory_limit`] of its
    /// memory and [`DEFAULT_COMPILE_TIMEOUT`].
    pub fn for_this_machine() -> CompileLimits {
        CompileLimits {
            memory: default_memory_limit(total_memory()),
            timeout: DEFAULT_COMPILE_TIMEOUT,
        }
    }
}

/// Half of `total` bytes of memory, at most 1 GiB and at least
/// [`MIN_COMPILE_MEMORY`]; 1 GiB when the total is unknown. Half, because the
/// node's pods and the node itself need the rest.
pub fn default_memory_limit(total: Option<u64>) -> u64 {
    match total {
        Some(t) => (t / 2).clamp(MIN_COMPILE_MEMORY, MAX_DEFAULT_COMPILE_MEMORY),
        None => MAX_DEFAULT_COMPILE_MEMORY,
    }
}

/// The machine's memory from `/proc/meminfo`, if it can be read.
pub(crate) fn total_memory() -> Option<u64> {
    parse_mem_total(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// The `MemTotal:   1234 kB` line of `/proc/meminfo`, in bytes.
fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line
        .trim_start_matches("MemTotal:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// The engine configuration for code of `code`, used by the node, its
/// compiler child and the masters alike: code compiled by one must load in
/// the others. A target is named unless the code is for this CPU's
/// features (naming one makes cranelift assume only what every CPU of the
/// architecture has).
pub fn engine_config(code: &CodeTarget) -> Result<Config, String> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    if code.cpu != "native" {
        config
            .target(&code.target)
            .map_err(|e| format!("wasmtime cannot compile for {:?}: {e:#}", code.target))?;
    }
    config.memory_reservation(code.memory_reservation);
    config.memory_guard_size(code.memory_guard);
    Ok(config)
}

/// Compiles for engines of any code target this build can produce (with
/// wasmtime's `all-arch`, every architecture's; without, this machine's):
/// what masters compile nodes' code with. Keeps one engine per target.
#[derive(Default)]
pub struct CrossCompiler {
    /// By encoded code target: the engine and its fingerprint, or why
    /// there is none.
    engines: std::sync::Mutex<std::collections::HashMap<String, EngineFor>>,
    /// Compile in children of this program (`__compile`) under these
    /// limits; None: in this process.
    child: Option<(PathBuf, CompileLimits)>,
}

/// Most engines a [`CrossCompiler`] keeps.
const MAX_ENGINES: usize = 32;

/// An engine for a code target and its fingerprint, or why there is none.
type EngineFor = Result<(Engine, String), String>;

impl CrossCompiler {
    /// The engine for `code` and its fingerprint, made at the first call.
    fn engine(&self, code: &CodeTarget) -> EngineFor {
        let key = super::device::encode_code(code);
        let make = || {
            let engine = Engine::new(&engine_config(code)?)
                .map_err(|e| format!("this build cannot compile for {:?}: {e:#}", code.target))?;
            let fingerprint = cache::engine_fingerprint(&engine);
            Ok((engine, fingerprint))
        };
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(made) = engines.get(&key) {
            return made.clone();
        }
        let made = make();
        // Targets come from nodes: a cluster has a few; more are made each
        // time rather than kept.
        if engines.len() < MAX_ENGINES {
            engines.insert(key, made.clone());
        }
        made
    }

    /// A compiler that compiles each module in a child process of
    /// `program` (the `flotilla` binary's `__compile`) under `limits`, as
    /// nodes do: a module built to exhaust the compiler fails its compile,
    /// not the master.
    pub fn in_children(program: PathBuf, limits: CompileLimits) -> CrossCompiler {
        CrossCompiler {
            child: Some((program, limits)),
            ..CrossCompiler::default()
        }
    }

    /// The fingerprint of the engine for `code`.
    pub fn fingerprint(&self, code: &CodeTarget) -> Result<String, String> {
        self.engine(code).map(|(_, f)| f)
    }

    /// The serialized code of `wasm` (a component or a core module) for
    /// an engine for `code`: what that engine's `deserialize` loads.
    pub fn compile(&self, code: &CodeTarget, wasm: &[u8]) -> Result<Vec<u8>, String> {
        let (engine, fingerprint) = self.engine(code)?;
        if let Some((program, limits)) = &self.child {
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let out = std::env::temp_dir()
                .join(format!(".flotilla-code-{}-{n}.cwasm", std::process::id()));
            let done = compile_in_child(
                program,
                *limits,
                code,
                &fingerprint,
                wasm,
                &out,
                &CancellationToken::new(),
            );
            let bytes = match done {
                Ok(()) => {
                    std::fs::read(&out).map_err(|e| format!("cannot read the compiled code: {e}"))
                }
                Err(CompileFailure::TimeLimit { limit }) => Err(format!(
                    "compiling took longer than the master's limit of {}s",
                    limit.as_secs()
                )),
                Err(CompileFailure::MemoryLimit { limit, detail }) => Err(format!(
                    "compiling needed more than the master's limit of {} ({detail})",
                    human_bytes(limit)
                )),
                Err(other) => Err(other.to_string()),
            };
            let _ = std::fs::remove_file(&out);
            return bytes;
        }
        let compiled = match classify(wasm).map_err(|e| e.to_string())? {
            Kind::Component => engine.precompile_component(wasm),
            Kind::Module => engine.precompile_module(wasm),
        };
        compiled.map_err(|e| format!("{e:#}"))
    }
}

/// What the node asks of a `flotilla __compile` child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildRequest {
    /// Print the fingerprint of the engine for `code` and exit: the node
    /// checks at start that the subcommand works and builds the same engine
    /// as itself.
    Probe { code: CodeTarget },
    /// Compile the module or component on stdin for the engine for `code`,
    /// which must have this fingerprint, and write the serialized code to
    /// the new file `output`.
    Compile {
        code: CodeTarget,
        fingerprint: String,
        output: PathBuf,
    },
}

/// The child's side: runs `request` and returns the process exit code. Errors
/// go to stderr for the parent to quote.
pub fn child_main(request: ChildRequest) -> i32 {
    let code = match &request {
        ChildRequest::Probe { code } | ChildRequest::Compile { code, .. } => code,
    };
    let engine =
        match engine_config(code).and_then(|c| Engine::new(&c).map_err(|e| format!("{e:#}"))) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("cannot create the wasmtime engine: {e}");
                return EXIT_FAILED;
            }
        };
    let ours = cache::engine_fingerprint(&engine);
    let (fingerprint, output) = match request {
        ChildRequest::Probe { .. } => {
            println!("{ours}");
            return 0;
        }
        ChildRequest::Compile {
            fingerprint,
            output,
            ..
        } => (fingerprint, output),
    };
    if fingerprint != ours {
        eprintln!(
            "this executable's engine ({ours}) differs from the node's ({fingerprint}); \
             was it upgraded while the node runs? Restart the node"
        );
        return EXIT_MISMATCH;
    }
    let mut wasm = Vec::new();
    if let Err(e) = io::stdin().lock().read_to_end(&mut wasm) {
        eprintln!("cannot read the module from stdin: {e}");
        return EXIT_FAILED;
    }
    let compiled = match classify(&wasm) {
        Ok(Kind::Component) => engine.precompile_component(&wasm),
        Ok(Kind::Module) => engine.precompile_module(&wasm),
        Err(e) => {
            eprintln!("{e}");
            return EXIT_INVALID;
        }
    };
    drop(wasm);
    let bytes = match compiled {
        Ok(b) => b,
        Err(e) => {
            let message = format!("{e:#}");
            eprint!("{message}");
            // A mapping refused under the memory limit surfaces as an error,
            // not an abort; it says nothing about the module.
            return if out_of_memory(&message).is_some() {
                EXIT_FAILED
            } else {
                EXIT_INVALID
            };
        }
    };
    // A new file, owner-only like the cache it is in: code the node will run.
    let written = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(flotilla_api::perms::FILE_MODE)
        .open(&output)
        .and_then(|mut f| f.write_all(&bytes));
    if let Err(e) = written {
        eprintln!(
            "cannot write the compiled code to {}: {e}",
            output.display()
        );
        return EXIT_FAILED;
    }
    0
}

/// Checks that `program` runs the compiler subcommand with the same engine
/// as this process. `Err` says why not (the node then compiles in-process).
pub(super) fn probe(program: &Path, code: &CodeTarget, fingerprint: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args([
            SUBCOMMAND,
            "--probe",
            "--engine",
            &super::device::encode_code(code),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let stdout = child.stdout.take();
    let (status, kill) = watch(&mut child, PROBE_TIMEOUT, &CancellationToken::new());
    let mut answer = String::new();
    if let Some(mut s) = stdout {
        // The child has ended: this reads what it wrote and then EOF.
        let _ = s.read_to_string(&mut answer);
    }
    if kill.is_some() {
        return Err(format!(
            "{} did not answer within {PROBE_TIMEOUT:?}",
            program.display()
        ));
    }
    match status {
        Ok(s) if s.success() && answer.trim() == fingerprint => Ok(()),
        Ok(s) if s.success() => Err(format!(
            "{} builds a different engine ({}) than this process ({fingerprint})",
            program.display(),
            answer.trim()
        )),
        Ok(s) => Err(format!(
            "{} {SUBCOMMAND} --probe failed ({s}); it is not the flotilla binary",
            program.display()
        )),
        Err(e) => Err(format!("cannot wait for {}: {e}", program.display())),
    }
}

/// Why a compile in a child produced no code. The messages of the limits
/// become the pod's status message: they name the limit and its flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum CompileFailure {
    /// The stop token fired; the child was killed.
    #[error("the compile was stopped with its pod")]
    Cancelled,
    /// The deadline passed; the child was killed.
    #[error(
        "compiling the module took longer than this node's compile time limit of {}s and was stopped; \
         raise the limit with `flotilla node --compile-timeout` or make the module smaller",
        limit.as_secs_f64()
    )]
    TimeLimit { limit: Duration },
    /// The child ran out of its memory limit. `detail` is its last words.
    #[error(
        "compiling the module needed more than this node's compile memory limit of {} and was stopped ({detail}); \
         raise the limit with `flotilla node --compile-memory` if the device has the memory, or make the module smaller",
        human_bytes(*limit)
    )]
    MemoryLimit { limit: u64, detail: String },
    /// The compiler rejected the bytes.
    #[error("{message}")]
    Invalid { message: String },
    /// The child could not run or failed for another reason (worth a retry).
    #[error("{message}")]
    Failed { message: String },
}

/// `1073741824` as `1024 MiB`, exact byte counts otherwise.
fn human_bytes(n: u64) -> String {
    if n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// Why the parent killed the child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Cancelled,
    Deadline,
}

/// How a child ended, as the parent saw it: the input of [`judge`].
#[derive(Debug)]
struct Ended {
    /// `None` if waiting for the child failed.
    status: Option<Termination>,
    killed: Option<Kill>,
    /// The start of its stderr.
    stderr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Termination {
    Exited(i32),
    Signaled(i32),
}

impl From<ExitStatus> for Termination {
    fn from(s: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(code), _) => Termination::Exited(code),
            (None, Some(sig)) => Termination::Signaled(sig),
            // Neither a code nor a signal (stopped): report it as a failure.
            (None, None) => Termination::Exited(-1),
        }
    }
}

/// The line of the child's last words that says it ran out of memory, if
/// one does. Rust aborts with "memory allocation of N bytes failed"; a
/// failed `mmap` or thread start shows as ENOMEM or EAGAIN.
fn out_of_memory(stderr: &str) -> Option<&str> {
    const SIGNS: [&str; 5] = [
        "memory allocation of",
        "Cannot allocate memory",
        "out of memory",
        "failed to spawn thread",
        "Resource temporarily unavailable",
    ];
    stderr
        .lines()
        .find(|line| SIGNS.iter().any(|sign| line.contains(sign)))
        .map(str::trim)
}

/// The last non-empty line of `s`, for a short message.
fn last_line(s: &str) -> &str {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

/// What an ended child means. A compile that did not end with exit 0 by
/// itself produces no code, whatever else happened.
fn judge(e: &Ended, limits: CompileLimits) -> Result<(), CompileFailure> {
    match e.killed {
        Some(Kill::Cancelled) => return Err(CompileFailure::Cancelled),
        Some(Kill::Deadline) => {
            return Err(CompileFailure::TimeLimit {
                limit: limits.timeout,
            })
        }
        None => {}
    }
    let Some(status) = e.status else {
        return Err(CompileFailure::Failed {
            message: "lost track of the compiler process".into(),
        });
    };
    match (status, out_of_memory(&e.stderr)) {
        (Termination::Exited(0), _) => Ok(()),
        (Termination::Exited(EXIT_INVALID), _) => Err(CompileFailure::Invalid {
            message: e.stderr.trim().to_string(),
        }),
        (_, Some(line)) => Err(CompileFailure::MemoryLimit {
            limit: limits.memory,
            detail: line.to_string(),
        }),
        // The file size limit is the memory limit too (see `limit_child`).
        (Termination::Signaled(libc::SIGXFSZ), None) => Err(CompileFailure::MemoryLimit {
            limit: limits.memory,
            detail: "the compiled code is larger than the limit".into(),
        }),
        (Termination::Exited(code), None) => Err(CompileFailure::Failed {
            message: format!("the compiler exited with {code}: {}", last_line(&e.stderr)),
        }),
        (Termination::Signaled(sig), None) => Err(CompileFailure::Failed {
            message: format!(
                "the compiler was killed by signal {sig} (by the kernel's OOM killer if 9): {}",
                last_line(&e.stderr)
            ),
        }),
    }
}

/// Compiles `wasm` in a child running `program __compile`, under `limits`,
/// killed at once if `cancel` fires. On success the serialized code is in
/// the new file `output`, for an engine of the same `fingerprint`; on
/// failure `output` may exist, and the caller removes it. Blocking; call
/// from a blocking thread.
pub(super) fn compile_in_child(
    program: &Path,
    limits: CompileLimits,
    code: &CodeTarget,
    fingerprint: &str,
    wasm: &[u8],
    output: &Path,
    cancel: &CancellationToken,
) -> Result<(), CompileFailure> {
    if cancel.is_cancelled() {
        return Err(CompileFailure::Cancelled);
    }
    let mut cmd = Command::new(program);
    cmd.args([SUBCOMMAND, "--engine", &super::device::encode_code(code)])
        .args(["--fingerprint", fingerprint, "--output"])
        .arg(output)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    limit_child(&mut cmd, limits.memory);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        // The limit is applied between fork and exec: too small a limit
        // makes the exec itself fail.
        Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
            return Err(CompileFailure::MemoryLimit {
                limit: limits.memory,
                detail: format!("the compiler cannot start: {e}"),
            })
        }
        Err(e) => {
            return Err(CompileFailure::Failed {
                message: format!("cannot start the compiler {}: {e}", program.display()),
            })
        }
    };
    let (stdin, stderr) = (child.stdin.take(), child.stderr.take());
    let ended = std::thread::scope(|s| {
        // The pipes are served by their own threads, so a child that stops
        // reading or writing cannot block the parent past the deadline.
        s.spawn(move || {
            if let Some(mut stdin) = stdin {
                // A child killed or failed early closes the pipe: its exit status says why.
                let _ = stdin.write_all(wasm);
            }
        });
        let err = s.spawn(move || read_capped(stderr, MAX_STDERR as u64));
        let (status, killed) = watch(&mut child, limits.timeout, cancel);
        // The child is gone, so its pipes are closed and the reader ends.
        let stderr = err.join().unwrap_or_default();
        Ended {
            status: status.ok().map(Termination::from),
            killed,
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    });
    judge(&ended, limits)
}

/// Waits for `child` to exit, killing it when `cancel` fires or `timeout`
/// has passed. Returns its exit status and whether (and why) it was killed.
fn watch(
    child: &mut Child,
    timeout: Duration,
    cancel: &CancellationToken,
) -> (io::Result<ExitStatus>, Option<Kill>) {
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return (Ok(status), None),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return (Err(e), None);
            }
        }
        let kill = if cancel.is_cancelled() {
            Some(Kill::Cancelled)
        } else if started.elapsed() >= timeout {
            Some(Kill::Deadline)
        } else {
            None
        };
        if kill.is_some() {
            kill_group(child);
            return (child.wait(), kill);
        }
        std::thread::sleep(POLL);
    }
}

/// Kills `child` and its process group with SIGKILL (the child holds
/// nothing that needs a clean exit): anything it started goes too, so no
/// process is left holding its pipes open.
#[allow(unsafe_code)]
fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) has no memory-safety preconditions. The group is
        // the child's own (`process_group(0)`), led by a child not yet
        // waited for, so its id cannot have been reused by another group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    // In case it is not in a group of its own.
    let _ = child.kill();
}

/// Reads `r` to its end, keeping at most `cap` bytes. Reading on past the
/// cap keeps the writer from blocking.
fn read_capped(r: Option<impl Read>, cap: u64) -> Vec<u8> {
    let Some(r) = r else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut limited = r.take(cap);
    if limited.read_to_end(&mut kept).is_ok() {
        let _ = io::copy(&mut limited.into_inner(), &mut io::sink());
    }
    kept
}

/// Makes the child's memory limit (for its data and, as a backstop, for the
/// file it writes) and its death with the node part of `cmd`.
#[allow(unsafe_code)]
fn limit_child(cmd: &mut Command, memory: u64) {
    let bytes = libc::rlim_t::try_from(memory).unwrap_or(libc::RLIM_INFINITY);
    // RLIMIT_DATA, not RLIMIT_AS: it counts what the compiler allocates
    // (heap, anonymous mappings, thread stacks) but not the executable's
    // mapped code or address space reserved and never used, so the limit
    // means the same for a 20 MB and a 90 MB build of the binary.
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe calls are allowed: it makes system calls (setrlimit,
    // prctl) on a value copied into it, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_DATA, &limit) != 0
                || libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // A node killed mid-compile must not leave its compiler running.
            #[cfg(target_os = "linux")]
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CompileLimits = CompileLimits {
        memory: 256 << 20,
        timeout: Duration::from_secs(60),
    };

    #[test]
    fn default_memory_is_half_the_machine_within_bounds() {
        let gib = 1u64 << 30;
        let cases = [
            // (machine memory, default limit)
            (Some(512 << 20), 256 << 20), // Pi Zero 2 W
            (Some(gib), 512 << 20),       // Pi 3
            (Some(2 * gib), gib),         // Pi 4 2 GB
            (Some(8 * gib), gib),         // Pi 5 8 GB: capped
            (Some(128 << 20), MIN_COMPILE_MEMORY),
            (None, gib),
        ];
        for (total, want) in cases {
            assert_eq!(default_memory_limit(total), want, "{total:?}");
        }
    }

    #[test]
    fn reads_mem_total() {
        let meminfo = "MemTotal:        3884192 kB\nMemFree:  1 kB\n";
        assert_eq!(parse_mem_total(meminfo), Some(3_884_192 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }

    fn ended(status: Option<Termination>, killed: Option<Kill>, stderr: &str) -> Ended {
        Ended {
            status,
            killed,
            stderr: stderr.into(),
        }
    }

    #[test]
    fn judges_how_the_child_ended() {
        use Termination::*;
        let oom = "memory allocation of 268435456 bytes failed\n\
                   skipping backtrace printing to avoid potential recursion\n";
        let cases: Vec<(Ended, Result<(), CompileFailure>)> = vec![
            (ended(Some(Exited(0)), None, ""), Ok(())),
            // Killed by us: whatever it said, the kill decides.
            (
                ended(Some(Signaled(9)), Some(Kill::Cancelled), ""),
                Err(CompileFailure::Cancelled),
            ),
            (
                ended(Some(Exited(0)), Some(Kill::Cancelled), ""),
                Err(CompileFailure::Cancelled),
            ),
            (
                ended(Some(Signaled(9)), Some(Kill::Deadline), ""),
                Err(CompileFailure::TimeLimit {
                    limit: LIMITS.timeout,
                }),
            ),
            (
                ended(Some(Exited(EXIT_INVALID)), None, "invalid input at offset 8\n"),
                Err(CompileFailure::Invalid {
                    message: "invalid input at offset 8".into(),
                }),
            ),
            (
                ended(Some(Signaled(libc::SIGABRT)), None, oom),
                Err(CompileFailure::MemoryLimit {
                    limit: LIMITS.memory,
                    detail: "memory allocation of 268435456 bytes failed".into(),
                }),
            ),
            (
                ended(
                    Some(Exited(101)),
                    None,
                    "thread 'main' panicked at ...:\nfailed to spawn thread: Os { code: 11, kind: WouldBlock, message: \"Resource temporarily unavailable\" }\n",
                ),
                Err(CompileFailure::MemoryLimit {
                    limit: LIMITS.memory,
                    detail: "failed to spawn thread: Os { code: 11, kind: WouldBlock, message: \"Resource temporarily unavailable\" }".into(),
                }),
            ),
            (
                ended(Some(Exited(EXIT_MISMATCH)), None, "engine differs\n"),
                Err(CompileFailure::Failed {
                    message: "the compiler exited with 78: engine differs".into(),
                }),
            ),
            (
                ended(Some(Signaled(9)), None, ""),
                Err(CompileFailure::Failed {
                    message: "the compiler was killed by signal 9 (by the kernel's OOM killer if 9): ".into(),
                }),
            ),
            (
                ended(Some(Signaled(libc::SIGXFSZ)), None, ""),
                Err(CompileFailure::MemoryLimit {
                    limit: LIMITS.memory,
                    detail: "the compiled code is larger than the limit".into(),
                }),
            ),
            (
                ended(None, None, ""),
                Err(CompileFailure::Failed {
                    message: "lost track of the compiler process".into(),
                }),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(judge(&e, LIMITS), want, "{e:?}");
        }
    }

    #[test]
    fn limit_messages_name_the_limit_and_the_flag() {
        let t = CompileFailure::TimeLimit {
            limit: Duration::from_secs(60),
        }
        .to_string();
        assert!(t.contains("60s") && t.contains("--compile-timeout"), "{t}");
        let m = CompileFailure::MemoryLimit {
            limit: 1 << 30,
            detail: "x".into(),
        }
        .to_string();
        assert!(
            m.contains("1024 MiB") && m.contains("--compile-memory"),
            "{m}"
        );
    }

    #[test]
    fn capped_reads_keep_the_start() {
        assert_eq!(read_capped(Some(&b"hello world"[..]), 5), b"hello");
        assert_eq!(read_capped(Some(&b"hi"[..]), 5), b"hi");
        assert!(read_capped(None::<&[u8]>, 5).is_empty());
    }

    #[test]
    fn a_program_without_the_subcommand_fails_the_probe() {
        // `true` exits 0 and prints nothing: not our compiler.
        let e = probe(Path::new("true"), &code(), "abc").unwrap_err();
        assert!(e.contains("different engine"), "{e}");
        let e = probe(Path::new("/nonexistent/flotilla"), &code(), "abc").unwrap_err();
        assert!(e.contains("cannot start"), "{e}");
        // A binary for another machine, as under qemu-user without binfmt.
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let foreign = fake_compiler(dir.path(), "");
        std::fs::write(
            &foreign,
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\xb7\0",
        )
        .unwrap_or_else(|e| panic!("write: {e}"));
        let e = probe(&foreign, &code(), "abc").unwrap_err();
        assert!(e.contains("cannot start"), "{e}");
    }

    fn code() -> CodeTarget {
        CodeTarget {
            target: "x86_64-unknown-linux-gnu".into(),
            cpu: "baseline".into(),
            memory_reservation: 1 << 16,
            memory_guard: 0,
        }
    }

    /// A stand-in for `flotilla __compile`: a shell script that reads the
    /// module and then does `body`.
    fn fake_compiler(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-flotilla");
        let script = format!("#!/bin/sh\ncat > /dev/null\n{body}\n");
        std::fs::write(&path, script).unwrap_or_else(|e| panic!("write: {e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod: {e}"));
        path
    }

    #[test]
    fn the_child_runs_under_its_limits_and_ends_as_judged() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let out = dir.path().join("out.cwasm");
        let run = |body: &str, limits: CompileLimits, cancel: &CancellationToken| {
            let program = fake_compiler(dir.path(), body);
            let _ = std::fs::remove_file(&out);
            compile_in_child(&program, limits, &code(), "f00", b"\0asm", &out, cancel)
        };
        let never = CancellationToken::new();
        // It gets its arguments, and its output is where it was told.
        let ok = run(
            r#"[ "$1 $2 $3 $4 $5 $6" = "__compile --engine x86_64-unknown-linux-gnu,baseline,65536,0 --fingerprint f00 --output" ] && echo code > "$7""#,
            LIMITS,
            &never,
        );
        assert_eq!(ok, Ok(()));
        assert_eq!(std::fs::read(&out).ok().as_deref(), Some(&b"code\n"[..]));
        // The data limit is the one asked for.
        let ok = run(
            r#"[ "$(ulimit -d)" = "262144" ] && [ "$(ulimit -f)" = "524288" ]"#,
            LIMITS,
            &never,
        );
        assert_eq!(ok, Ok(()), "ulimit -d is in KiB, -f in 512-byte blocks");
        let invalid = run("echo 'bad magic' >&2; exit 65", LIMITS, &never);
        assert_eq!(
            invalid,
            Err(CompileFailure::Invalid {
                message: "bad magic".into()
            })
        );
        let oom = run(
            "echo 'memory allocation of 64 bytes failed' >&2; kill -ABRT $$",
            LIMITS,
            &never,
        );
        assert!(
            matches!(oom, Err(CompileFailure::MemoryLimit { .. })),
            "{oom:?}"
        );

        let quick = CompileLimits {
            timeout: Duration::from_millis(300),
            ..LIMITS
        };
        let started = Instant::now();
        let slow = run("sleep 30", quick, &never);
        assert_eq!(
            slow,
            Err(CompileFailure::TimeLimit {
                limit: quick.timeout
            })
        );
        assert!(started.elapsed() < Duration::from_secs(10));

        let cancel = CancellationToken::new();
        let stopper = cancel.clone();
        let started = Instant::now();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            stopper.cancel();
        });
        let stopped = run("sleep 30", LIMITS, &cancel);
        assert_eq!(stopped, Err(CompileFailure::Cancelled));
        assert!(started.elapsed() < Duration::from_secs(10));
        // Already stopped: no child at all.
        assert_eq!(
            run("echo code > \"$7\"", LIMITS, &cancel),
            Err(CompileFailure::Cancelled)
        );
        assert!(!out.exists());
    }

    #[test]
    fn a_stop_kills_the_child_at_once() {
        // `sleep` stands in for a compiler that takes long.
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap_or_else(|e| panic!("sleep: {e}"));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let started = Instant::now();
        let (status, kill) = watch(&mut child, Duration::from_secs(60), &cancel);
        assert_eq!(kill, Some(Kill::Cancelled));
        assert!(status.is_ok_and(|s| !s.success()));
        assert!(started.elapsed() < Duration::from_secs(5));

        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap_or_else(|e| panic!("sleep: {e}"));
        let (_, kill) = watch(
            &mut child,
            Duration::from_millis(50),
            &CancellationToken::new(),
        );
        assert_eq!(kill, Some(Kill::Deadline));
    }
}
