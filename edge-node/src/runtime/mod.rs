//! Runs WebAssembly programs for pods: one wasmtime engine per node, compiled
//! code cached on disk, each run sandboxed (WASI only, memory limit,
//! stoppable at any time by dropping its future).
//!
//! Call [`Runtime::load`] from a blocking context (`spawn_blocking`): compiling
//! is CPU-bound and takes tens of milliseconds or more. [`Runtime::run`] is a
//! well-behaved future: the guest yields to the executor every epoch tick
//! (10 ms), so even a guest spinning in a loop neither starves other tasks nor
//! outlives its future.

mod cache;
mod limits;
mod stdio;

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{Config, Engine, Precompiled, Store, Trap, WasmBacktrace};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use limits::Limiter;
use stdio::SinkOutput;

/// How often the epoch advances. A running guest yields to the executor at
/// every tick, so this bounds how long a guest can hold a worker thread and
/// how late a stop takes effect.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Most backtrace frames quoted in a trap message.
const MAX_TRAP_FRAMES: usize = 8;
/// Longest trap or compile-error message kept; guest-controlled names could make it huge.
const MAX_TRAP_MESSAGE: usize = 4096;

/// Why the runtime could not be set up or a program not loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// wasmtime refused the engine configuration.
    #[error("cannot create the wasmtime engine: {message}")]
    Engine { message: String },
    /// The compiled-code cache directory cannot be created.
    #[error("cannot create the code cache directory {}: {source}", path.display())]
    CacheDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The background thread that drives epochs cannot be started.
    #[error("cannot start the epoch thread: {0}")]
    EpochThread(#[source] std::io::Error),
    /// The bytes are not a valid Wasm module or component.
    #[error("invalid program: {message}")]
    InvalidModule { message: String },
}

/// A loaded program, ready to run any number of times.
#[derive(Clone)]
pub enum Program {
    /// A WASI p2 command component (run through `wasi:cli/run`).
    Component(wasmtime::component::Component),
    /// A WASI p1 core module (run through `_start`).
    Module(wasmtime::Module),
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Program::Component(_) => f.write_str("Program::Component"),
            Program::Module(_) => f.write_str("Program::Module"),
        }
    }
}

/// How a [`Runtime::load`] went.
#[derive(Debug, Clone, Copy)]
pub struct CompileInfo {
    /// The native code came from the disk cache rather than the compiler.
    pub cached: bool,
    /// Time spent compiling or loading from the cache.
    pub duration: Duration,
}

/// What to run a program with.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// argv[0] as the guest sees it (the pod name).
    pub name: String,
    /// Arguments after argv[0].
    pub args: Vec<String>,
    /// Environment variables, in this order.
    pub env: Vec<(String, String)>,
    /// Cap on the total linear memory of the run, in bytes.
    pub memory_limit: Option<u64>,
}

/// Receives a guest's output as it writes it. Called synchronously from the
/// guest's execution, so it must be cheap and must not block.
pub trait LogSink: Send + Sync {
    fn write(&self, stream: LogStream, bytes: &[u8]);
}

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The guest finished with this exit code (0 for a normal return).
    Exited(i32),
    /// The guest was stopped by the runtime: `reason` is a short machine
    /// word (`OOMKilled`, `Trap`, `StartError`), `message` says what happened.
    Failed { reason: String, message: String },
}

/// The node's WebAssembly runtime. Cheap to clone; all clones share one
/// engine and one epoch thread.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cache_dir", &self.inner.cache_dir)
            .field("fingerprint", &self.inner.fingerprint)
            .finish_non_exhaustive()
    }
}

struct Inner {
    engine: Engine,
    cache_dir: PathBuf,
    fingerprint: String,
    p2_linker: wasmtime::component::Linker<P2State>,
    p1_linker: wasmtime::Linker<P1State>,
    /// Never sent on: dropping it (with the last `Runtime` clone) is what
    /// tells the epoch thread to stop.
    _epoch_stop: mpsc::Sender<()>,
}

/// Store data for a component run.
struct P2State {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
}

impl WasiView for P2State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Store data for a core-module run.
struct P1State {
    wasi: WasiP1Ctx,
    limiter: Limiter,
}

impl Runtime {
    /// Engine with cranelift, async support and epoch interruption; starts
    /// one background thread that advances the epoch every 10 ms until the
    /// last `Runtime` clone is dropped. `cache_dir` holds compiled code.
    pub fn new(cache_dir: &Path) -> Result<Runtime, RuntimeError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine {
            message: format!("{e:#}"),
        })?;

        std::fs::create_dir_all(cache_dir).map_err(|source| RuntimeError::CacheDir {
            path: cache_dir.to_path_buf(),
            source,
        })?;
        restrict_permissions(cache_dir);

        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut p2_linker).map_err(|e| {
            RuntimeError::Engine {
                message: format!("cannot link WASI p2: {e:#}"),
            }
        })?;
        let mut p1_linker = wasmtime::Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut p1_linker, |s: &mut P1State| &mut s.wasi)
            .map_err(|e| RuntimeError::Engine {
                message: format!("cannot link WASI p1: {e:#}"),
            })?;

        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        // A weak handle: the thread must not keep the engine alive by itself.
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("flotilla-epoch".into())
            .spawn(move || {
                // Nothing is ever sent: the channel only disconnects, when the
                // last Runtime clone drops its sender.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stop_rx.recv_timeout(EPOCH_TICK) {
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(RuntimeError::EpochThread)?;

        Ok(Runtime {
            inner: Arc::new(Inner {
                fingerprint: cache::engine_fingerprint(&engine),
                engine,
                cache_dir: cache_dir.to_path_buf(),
                p2_linker,
                p1_linker,
                _epoch_stop: stop_tx,
            }),
        })
    }

    /// The wasmtime engine shared by all runs.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compiles `wasm` (a component or a core module), or loads its code from
    /// `cache_dir/<digest>-<engine fingerprint>.cwasm` when present.
    ///
    /// `digest` must identify the bytes (the node uses their SHA-256): the
    /// cache trusts it. Blocking and CPU-bound; call from `spawn_blocking`.
    pub fn load(&self, digest: &str, wasm: &[u8]) -> Result<(Program, CompileInfo), RuntimeError> {
        let start = Instant::now();
        let kind = classify(wasm)?;
        let path = cache::entry_path(&self.inner.cache_dir, digest, &self.inner.fingerprint);

        if let Some(program) = self.load_cached(&path, kind) {
            let info = CompileInfo {
                cached: true,
                duration: start.elapsed(),
            };
            return Ok((program, info));
        }

        let engine = &self.inner.engine;
        // The message becomes the pod's status message: keep it bounded.
        let invalid = |e: wasmtime::Error| {
            let mut message = format!("{e:#}");
            truncate(&mut message, MAX_TRAP_MESSAGE);
            RuntimeError::InvalidModule { message }
        };
        let (program, serialized) = match kind {
            Kind::Component => {
                let c = wasmtime::component::Component::new(engine, wasm).map_err(invalid)?;
                let bytes = c.serialize();
                (Program::Component(c), bytes)
            }
            Kind::Module => {
                let m = wasmtime::Module::new(engine, wasm).map_err(invalid)?;
                let bytes = m.serialize();
                (Program::Module(m), bytes)
            }
        };
        let duration = start.elapsed();

        // A cache that cannot be written only costs a recompile next time.
        match serialized {
            Ok(bytes) => {
                if let Err(e) = cache::write_atomic(&path, &bytes) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write code cache");
                }
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot serialize compiled code"),
        }
        Ok((
            program,
            CompileInfo {
                cached: false,
                duration,
            },
        ))
    }

    /// The cached program at `path`, or `None` if absent, stale or unusable.
    #[allow(unsafe_code)]
    fn load_cached(&self, path: &Path, kind: Kind) -> Option<Program> {
        let bytes = std::fs::read(path).ok()?;
        let engine = &self.inner.engine;
        let loaded = match (Engine::detect_precompiled(&bytes), kind) {
            // SAFETY: `deserialize` runs native code from the file, so it
            // must have been produced by wasmtime for this engine. It was:
            // the cache directory is the node's own (owner-only), files get
            // there only through `write_atomic` of `serialize()` output, the
            // name carries the engine fingerprint, and wasmtime re-checks
            // the version and configuration recorded in the file.
            (Some(Precompiled::Component), Kind::Component) => {
                unsafe { wasmtime::component::Component::deserialize(engine, &bytes) }
                    .map(Program::Component)
            }
            // SAFETY: as above.
            (Some(Precompiled::Module), Kind::Module) => {
                unsafe { wasmtime::Module::deserialize(engine, &bytes) }.map(Program::Module)
            }
            _ => {
                tracing::warn!(path = %path.display(), "ignoring cache entry of the wrong kind");
                return None;
            }
        };
        match loaded {
            Ok(program) => Some(program),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "ignoring unusable cache entry");
                None
            }
        }
    }

    /// Runs one instance of `program` to completion (or until the future is
    /// dropped, which stops the guest at its next epoch tick at the latest).
    pub async fn run(
        &self,
        program: &Program,
        spec: RunSpec,
        sink: Arc<dyn LogSink>,
    ) -> RunOutcome {
        let mut wasi = WasiCtxBuilder::new();
        wasi.arg(&spec.name)
            .args(&spec.args)
            .envs(&spec.env)
            .stdout(SinkOutput::new(sink.clone(), LogStream::Stdout))
            .stderr(SinkOutput::new(sink, LogStream::Stderr))
            // Pods get no network, and no files (no preopens), until the pod
            // spec can ask for them; say so explicitly rather than rely on
            // wasmtime-wasi's defaults.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let limiter = Limiter::new(spec.memory_limit);
        let engine = &self.inner.engine;

        match program {
            Program::Component(component) => {
                let state = P2State {
                    wasi: wasi.build(),
                    table: ResourceTable::new(),
                    limiter,
                };
                let mut store = Store::new(engine, state);
                store.limiter(|s| &mut s.limiter);
                prepare_epochs(&mut store);
                let result = run_component(&mut store, component, &self.inner.p2_linker).await;
                outcome(result, store.data().limiter.denial())
            }
            Program::Module(module) => {
                let state = P1State {
                    wasi: wasi.build_p1(),
                    limiter,
                };
                let mut store = Store::new(engine, state);
                store.limiter(|s| &mut s.limiter);
                prepare_epochs(&mut store);
                let result = run_module(&mut store, module, &self.inner.p1_linker).await;
                outcome(result, store.data().limiter.denial())
            }
        }
    }
}

/// Which kind of Wasm binary some bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Component,
    Module,
}

/// Reads the Wasm header: `\0asm`, a 16-bit version, a 16-bit layer
/// (0 = core module, 1 = component).
fn classify(wasm: &[u8]) -> Result<Kind, RuntimeError> {
    if Engine::detect_precompiled(wasm).is_some() {
        // Precompiled code is native code: accepting it from outside would
        // let anyone who can submit a pod run arbitrary code on the node.
        return Err(RuntimeError::InvalidModule {
            message: "precompiled native code (.cwasm) is not accepted; send the .wasm".into(),
        });
    }
    match wasm {
        [0x00, b'a', b's', b'm', _, _, 0x00, 0x00, ..] => Ok(Kind::Module),
        [0x00, b'a', b's', b'm', _, _, 0x01, 0x00, ..] => Ok(Kind::Component),
        [0x00, b'a', b's', b'm', ..] => Err(RuntimeError::InvalidModule {
            message: "not a WebAssembly module or component: unknown or truncated header".into(),
        }),
        _ => Err(RuntimeError::InvalidModule {
            message: "not a WebAssembly module or component: missing the \\0asm magic".into(),
        }),
    }
}

/// Keeps other users out of the cache: whoever can write there can make the
/// node execute native code.
fn restrict_permissions(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot restrict code cache permissions");
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Make the guest yield to the executor at every epoch tick. Yielding (not
/// trapping) keeps long-running pods alive while letting the executor drop
/// the future, which is how a pod is stopped.
fn prepare_epochs<T>(store: &mut Store<T>) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
}

/// Where a run failed, which decides how a non-trap error is reported.
enum RunError {
    /// Linking or instantiating failed: the guest's entry point never ran.
    Start(wasmtime::Error),
    /// The guest's entry point failed.
    Run(wasmtime::Error),
}

async fn run_component(
    store: &mut Store<P2State>,
    component: &wasmtime::component::Component,
    linker: &wasmtime::component::Linker<P2State>,
) -> Result<i32, RunError> {
    let command = Command::instantiate_async(&mut *store, component, linker)
        .await
        .map_err(RunError::Start)?;
    match command.wasi_cli_run().call_run(&mut *store).await {
        Ok(Ok(())) => Ok(0),
        // `wasi:cli/run` has no exit code, only success or failure.
        Ok(Err(())) => Ok(1),
        Err(e) => Err(RunError::Run(e)),
    }
}

async fn run_module(
    store: &mut Store<P1State>,
    module: &wasmtime::Module,
    linker: &wasmtime::Linker<P1State>,
) -> Result<i32, RunError> {
    let instance = linker
        .instantiate_async(&mut *store, module)
        .await
        .map_err(RunError::Start)?;
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(|e| {
            RunError::Start(e.context("the module has no `_start` command entry point"))
        })?;
    start
        .call_async(&mut *store, ())
        .await
        .map(|()| 0)
        .map_err(RunError::Run)
}

/// Turns the result of a run into what the pod reports.
fn outcome(result: Result<i32, RunError>, denial: Option<limits::MemoryDenial>) -> RunOutcome {
    let (err, started) = match result {
        Ok(code) => return RunOutcome::Exited(code),
        Err(RunError::Start(e)) => (e, false),
        Err(RunError::Run(e)) => (e, true),
    };
    // The limiter trapped the guest; whatever error came out is a consequence.
    if let Some(d) = denial {
        return RunOutcome::Failed {
            reason: "OOMKilled".into(),
            message: format!(
                "memory limit of {} bytes exceeded (the guest tried to grow its linear memory and tables to {} bytes)",
                d.limit, d.requested
            ),
        };
    }
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return RunOutcome::Exited(exit.0);
    }
    let reason = if started || err.downcast_ref::<Trap>().is_some() {
        "Trap"
    } else {
        "StartError"
    };
    RunOutcome::Failed {
        reason: reason.into(),
        message: trap_message(&err),
    }
}

/// The error's own message (trap code or host error) followed by the first
/// frames of the wasm backtrace, bounded in length.
fn trap_message(err: &wasmtime::Error) -> String {
    let backtrace = err.downcast_ref::<WasmBacktrace>();
    // The backtrace is attached as context, so it appears in the chain as a
    // long multi-line message of its own; leave it out and summarise below.
    let bt_text = backtrace.map(|bt| bt.to_string());
    let mut msg = err
        .chain()
        .map(|e| e.to_string())
        .filter(|m| Some(m) != bt_text.as_ref())
        .collect::<Vec<_>>()
        .join(": ");
    if let Some(bt) = backtrace {
        let frames = bt.frames();
        if !frames.is_empty() {
            msg.push_str("\nwasm backtrace:");
            for (i, frame) in frames.iter().take(MAX_TRAP_FRAMES).enumerate() {
                let name = frame.func_name().unwrap_or("<unknown>");
                msg.push_str(&format!("\n  {i}: {name}"));
            }
            if frames.len() > MAX_TRAP_FRAMES {
                msg.push_str(&format!("\n  ... {} more", frames.len() - MAX_TRAP_FRAMES));
            }
        }
    }
    truncate(&mut msg, MAX_TRAP_MESSAGE);
    msg
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" ...");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_headers() {
        assert_eq!(classify(b"\0asm\x01\0\0\0").ok(), Some(Kind::Module));
        assert_eq!(classify(b"\0asm\x0d\0\x01\0").ok(), Some(Kind::Component));
        assert!(matches!(
            classify(b"\0asm"),
            Err(RuntimeError::InvalidModule { .. })
        ));
        assert!(matches!(
            classify(b"hello world"),
            Err(RuntimeError::InvalidModule { .. })
        ));
        assert!(matches!(
            classify(b""),
            Err(RuntimeError::InvalidModule { .. })
        ));
    }

    #[test]
    fn truncates_on_char_boundary() {
        let mut s = "ééé".to_string();
        truncate(&mut s, 3);
        assert_eq!(s, "é ...");
    }
}
