//! Runs WebAssembly programs for pods: one wasmtime engine per node, compiled
//! code cached on disk, each run sandboxed (WASI only, memory limit,
//! stoppable at any time by dropping its future).
//!
//! Call [`Runtime::load`] from a blocking context (`spawn_blocking`): compiling
//! is CPU-bound and takes tens of milliseconds or more. The node agent's
//! runtime ([`Runtime::for_node`]) compiles in a child process under memory
//! and time limits that a pod's stop cancels ([`compile`]); [`Runtime::new`]
//! compiles in-process. [`Runtime::run`] is a
//! well-behaved future: the guest yields to the executor every epoch tick
//! (10 ms), so even a guest spinning in a loop neither starves other tasks nor
//! outlives its future; a run with a CPU limit may be paused at those ticks
//! to hold it to its share of a core ([`cpu`]).

mod cache;
pub mod compile;
mod cpu;
pub mod device;
pub mod http;
pub mod interfaces;
mod limits;
mod serving;
mod stdio;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Precompiled, Store, Trap, WasmBacktrace};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::Command;
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use compile::CompileFailure;
pub use compile::CompileLimits;
use flotilla_api::objects::{CodeCounts, CodeTarget};
pub use interfaces::Deny;
use limits::Limiter;
pub use serving::DEFAULT_SLOTS as DEFAULT_HTTP_SLOTS;
use stdio::SinkOutput;

/// How often the epoch advances. A running guest yields to the executor at
/// every tick, so this bounds how long a guest can hold a worker thread and
/// how late a stop takes effect.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// The export of an http component (any 0.2 version).
const HTTP_HANDLER: &str = "wasi:http/incoming-handler@";
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
    /// Compiling needs more memory or time than the node's compile limits
    /// allow; `message` names the limit and the flag that sets it.
    #[error("{message}")]
    CompileLimit { message: String },
    /// The pod was stopped while its module compiled; nothing was cached.
    #[error("compilation stopped: the pod was stopped")]
    Cancelled,
    /// The compiler process failed for a reason of its own (it could not
    /// start, or crashed); worth another try.
    #[error("the compiler failed: {message}")]
    Compiler { message: String },
}

/// A loaded program, ready to run any number of times.
#[derive(Clone)]
pub enum Program {
    /// A WASI p2 command component (run through `wasi:cli/run`).
    Component(wasmtime::component::Component),
    /// A WASI p1 core module (run through `_start`).
    Module(wasmtime::Module),
}

impl Program {
    /// The engine the program was loaded into.
    fn engine(&self) -> &Engine {
        match self {
            Program::Component(c) => c.engine(),
            Program::Module(m) => m.engine(),
        }
    }
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
    /// The code was compiled by a master ([`Runtime::load_precompiled`]).
    pub precompiled: bool,
    /// Time spent compiling or loading from the cache.
    pub duration: Duration,
}

/// What to run a program with.
#[derive(Debug, Clone, Default)]
pub struct RunSpec {
    /// argv[0] as the guest sees it (`spec.argv0`, or the pod name).
    pub name: String,
    /// Arguments after argv[0].
    pub args: Vec<String>,
    /// Environment variables, in this order.
    pub env: Vec<(String, String)>,
    /// Cap on the total linear memory of the run, in bytes.
    pub memory_limit: Option<u64>,
    /// Cap on the CPU the run may use, in millicores of one core (1000 is
    /// a whole core, which a run never exceeds; 0 means no cap).
    pub cpu_limit: Option<u64>,
    /// Directories preopened for the guest (its volume mounts).
    pub mounts: Vec<crate::volumes::Mount>,
    /// What the guest may reach; nothing by default.
    pub network: Arc<crate::network::Allowance>,
    /// Where refused socket addresses are counted, and the pod they are
    /// logged under.
    pub refusals: Arc<crate::network::Refusals>,
    pub pod: String,
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
            .field("code", &self.inner.code)
            .field("fingerprint", &self.inner.fingerprint)
            .field("compiler", &self.inner.compiler)
            .finish_non_exhaustive()
    }
}

struct Inner {
    engine: Engine,
    cache_dir: PathBuf,
    /// What the engine's code is for ([`device`]).
    code: CodeTarget,
    fingerprint: String,
    /// How loaded programs came by their code, since the start.
    compiled: AtomicU64,
    precompiled: AtomicU64,
    cached: AtomicU64,
    compiler: Compiler,
    /// WASI as [`interfaces`] links it, less what `deny` withholds.
    p2_linker: wasmtime::component::Linker<P2State>,
    p1_linker: wasmtime::Linker<P1State>,
    /// WASI p2 and wasi:http as [`interfaces`] links them, for http pods
    /// served from `engine` (when there is no serving pool).
    http_linker: wasmtime::component::Linker<http::HttpState>,
    /// Instance slots of the serving pool (0: none).
    http_slots: u32,
    /// The engine with the pool http pods are served from, and its linker:
    /// set up when the first http pod is loaded; None when it cannot be.
    serving: OnceLock<Option<Serving>>,
    /// The serving engine's, for the epoch thread.
    serving_epoch: Arc<OnceLock<wasmtime::EngineWeak>>,
    /// What the operator withholds; a program importing it is refused
    /// before it is instantiated ([`Deny::refusal`]).
    deny: Deny,
    /// One compiler child at a time: each may use up to the compile memory
    /// limit, so two heavy modules compiling at once would use twice what
    /// the operator sized for the device.
    compile_turn: std::sync::Mutex<()>,
    /// Never sent on: dropping it (with the last `Runtime` clone) is what
    /// tells the epoch thread to stop.
    _epoch_stop: mpsc::Sender<()>,
}

/// The pooled engine that http pods are served from ([`serving`]).
struct Serving {
    engine: Engine,
    linker: wasmtime::component::Linker<http::HttpState>,
}

/// Where modules are compiled.
#[derive(Debug, Clone)]
enum Compiler {
    /// In this process, without limits (tests, or no child can be started).
    InProcess,
    /// In a child running `program __compile`, under `limits`.
    Child {
        program: PathBuf,
        limits: CompileLimits,
    },
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
    /// The engine this machine's device class picks ([`device`]), with
    /// async support and epoch interruption; starts one background thread
    /// that advances the epoch every 10 ms until the last `Runtime` clone
    /// is dropped. `cache_dir` holds compiled code. Modules are compiled
    /// in-process, without limits. Http pods are served from a pool of
    /// [`DEFAULT_HTTP_SLOTS`].
    pub fn new(cache_dir: &Path) -> Result<Runtime, RuntimeError> {
        let profile = device::profile(&device::Machine::this(), &device::Overrides::default())
            .map_err(|message| RuntimeError::Engine { message })?;
        Runtime::build(
            cache_dir,
            &Deny::default(),
            &profile.code,
            DEFAULT_HTTP_SLOTS,
            |_| Compiler::InProcess,
        )
    }

    /// The node agent's runtime: as [`Runtime::new`], but with the engine
    /// and pool of `profile`, and modules are compiled by a child process
    /// of this executable (its hidden `__compile` subcommand) under
    /// `limits`, and a stopped pod's compile ends at once. Where that
    /// cannot work — the executable is not the `flotilla` binary, or cannot
    /// be started again (say, run by qemu-user without binfmt) — it
    /// compiles in-process and logs why. Guests get no interface that
    /// `deny` withholds ([`interfaces`]).
    pub fn for_node(
        cache_dir: &Path,
        limits: CompileLimits,
        deny: &Deny,
        profile: &device::Profile,
    ) -> Result<Runtime, RuntimeError> {
        let code = profile.code.clone();
        Runtime::build(
            cache_dir,
            deny,
            &profile.code,
            profile.http_slots,
            |fingerprint| {
                let checked = std::env::current_exe()
                    .map_err(|e| format!("cannot find this executable: {e}"))
                    .and_then(|program| {
                        compile::probe(&program, &code, fingerprint).map(|()| program)
                    });
                match checked {
                    Ok(program) => {
                        tracing::info!(
                            memory_limit = limits.memory,
                            time_limit = ?limits.timeout,
                            "modules compile in a child process under limits"
                        );
                        Compiler::Child { program, limits }
                    }
                    Err(why) => {
                        tracing::warn!(
                            reason = %why,
                            "modules compile inside the node, without compile memory or time limits"
                        );
                        Compiler::InProcess
                    }
                }
            },
        )
    }

    /// The runtime, with the compiler that `compiler` picks for the engine's fingerprint.
    fn build(
        cache_dir: &Path,
        deny: &Deny,
        code: &CodeTarget,
        http_slots: u32,
        compiler: impl FnOnce(&str) -> Compiler,
    ) -> Result<Runtime, RuntimeError> {
        let config =
            compile::engine_config(code).map_err(|message| RuntimeError::Engine { message })?;
        let engine = Engine::new(&config).map_err(|e| RuntimeError::Engine {
            message: format!("{e:#}"),
        })?;

        std::fs::create_dir_all(cache_dir).map_err(|source| RuntimeError::CacheDir {
            path: cache_dir.to_path_buf(),
            source,
        })?;
        restrict_permissions(cache_dir);

        let mut p2_linker = wasmtime::component::Linker::new(&engine);
        interfaces::add_p2_to_linker(&mut p2_linker, deny).map_err(|e| RuntimeError::Engine {
            message: format!("cannot link WASI p2: {e:#}"),
        })?;
        let mut http_linker = wasmtime::component::Linker::new(&engine);
        interfaces::add_http_to_linker(&mut http_linker, deny).map_err(|e| {
            RuntimeError::Engine {
                message: format!("cannot link wasi:http: {e:#}"),
            }
        })?;
        let mut p1_linker = wasmtime::Linker::new(&engine);
        interfaces::add_p1_to_linker(&mut p1_linker, deny, |s: &mut P1State| &mut s.wasi).map_err(
            |e| RuntimeError::Engine {
                message: format!("cannot link WASI p1: {e:#}"),
            },
        )?;

        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        // Weak handles: the thread must not keep the engines alive by itself.
        let weak = engine.weak();
        let serving_epoch = Arc::new(OnceLock::<wasmtime::EngineWeak>::new());
        let serving_weak = serving_epoch.clone();
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
                    if let Some(serving) = serving_weak.get().and_then(|w| w.upgrade()) {
                        serving.increment_epoch();
                    }
                }
            })
            .map_err(RuntimeError::EpochThread)?;

        let fingerprint = cache::engine_fingerprint(&engine);
        let compiler = compiler(&fingerprint);
        Ok(Runtime {
            inner: Arc::new(Inner {
                code: code.clone(),
                compiled: AtomicU64::new(0),
                precompiled: AtomicU64::new(0),
                cached: AtomicU64::new(0),
                fingerprint,
                engine,
                cache_dir: cache_dir.to_path_buf(),
                compiler,
                p2_linker,
                p1_linker,
                http_linker,
                http_slots,
                serving: OnceLock::new(),
                serving_epoch,
                deny: deny.clone(),
                compile_turn: std::sync::Mutex::new(()),
                _epoch_stop: stop_tx,
            }),
        })
    }

    /// The wasmtime engine shared by all runs.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// What the engine's code is for.
    pub fn code_target(&self) -> &CodeTarget {
        &self.inner.code
    }

    /// The fingerprint of the engine's code (see [`cache`]).
    pub fn fingerprint(&self) -> &str {
        &self.inner.fingerprint
    }

    /// How loaded programs came by their code since the runtime started.
    pub fn code_counts(&self) -> CodeCounts {
        CodeCounts {
            compiled: self.inner.compiled.load(Ordering::Relaxed),
            precompiled: self.inner.precompiled.load(Ordering::Relaxed),
            cached: self.inner.cached.load(Ordering::Relaxed),
        }
    }

    /// Whether the disk cache holds code for `digest` (loading it then
    /// needs no compiler and no master).
    pub fn has_compiled(&self, digest: &str) -> bool {
        cache::entry_path(&self.inner.cache_dir, digest, &self.inner.fingerprint).exists()
    }

    /// Loads code that a master compiled from the module `digest` for this
    /// node's engine, and keeps it in the disk cache as if compiled here.
    /// `sha256` is the digest the module's `status.code` records for this
    /// engine (the master sends it ahead of the bytes): bytes that hash
    /// otherwise, are not wasmtime's code, or that wasmtime finds made by
    /// another version or configuration, are refused, and nothing is kept:
    /// the caller then compiles, as without a master. Blocking; call from
    /// `spawn_blocking`.
    pub fn load_precompiled(
        &self,
        digest: &str,
        code: &[u8],
        sha256: &str,
    ) -> Result<(Program, CompileInfo), String> {
        let start = Instant::now();
        let actual = flotilla_api::objects::digest_of(code);
        if actual != sha256 {
            return Err(format!(
                "the code hashes to {actual}, not the {sha256} its master recorded"
            ));
        }
        let kind = match Engine::detect_precompiled(code) {
            Some(Precompiled::Component) => Kind::Component,
            Some(Precompiled::Module) => Kind::Module,
            None => return Err("the bytes are not code compiled by wasmtime".into()),
        };
        let path = cache::entry_path(&self.inner.cache_dir, digest, &self.inner.fingerprint);
        let tmp = cache::temp_path(&path)
            .map_err(|e| format!("cannot name a file in the code cache: {e}"))?;
        let result = cache::write_new(&tmp, code)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))
            .and_then(|()| self.deserialize_file(&self.inner.engine, &tmp, kind))
            .and_then(|program| {
                cache::publish(&tmp, &path, &|| false)
                    .map_err(|e| format!("cannot keep the code in the cache: {e}"))?;
                Ok(program)
            });
        let _ = std::fs::remove_file(&tmp);
        let program = result?;
        self.inner.precompiled.fetch_add(1, Ordering::Relaxed);
        let info = CompileInfo {
            cached: false,
            precompiled: true,
            duration: start.elapsed(),
        };
        Ok((self.for_serving(program, &path), info))
    }

    /// Compiles `wasm` (a component or a core module), or loads its code from
    /// `cache_dir/<digest>-<engine fingerprint>.cwasm` when present.
    ///
    /// `digest` must identify the bytes (the node uses their SHA-256): the
    /// cache trusts it. Blocking and CPU-bound; call from `spawn_blocking`.
    pub fn load(&self, digest: &str, wasm: &[u8]) -> Result<(Program, CompileInfo), RuntimeError> {
        self.load_cancellable(digest, wasm, &CancellationToken::new())
    }

    /// As [`Runtime::load`], but gives up with [`RuntimeError::Cancelled`]
    /// once `cancel` fires (the pod's stop token): a compile in a child is
    /// killed at once, one in-process runs to its end; either way nothing it
    /// produced is cached.
    pub fn load_cancellable(
        &self,
        digest: &str,
        wasm: &[u8],
        cancel: &CancellationToken,
    ) -> Result<(Program, CompileInfo), RuntimeError> {
        let start = Instant::now();
        let kind = classify(wasm)?;
        let path = cache::entry_path(&self.inner.cache_dir, digest, &self.inner.fingerprint);

        if let Some(program) = self.load_cached(&path, kind) {
            self.inner.cached.fetch_add(1, Ordering::Relaxed);
            let info = CompileInfo {
                cached: true,
                precompiled: false,
                duration: start.elapsed(),
            };
            return Ok((self.for_serving(program, &path), info));
        }
        if cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }

        let program = match &self.inner.compiler {
            Compiler::InProcess => self.compile_here(kind, wasm, &path, cancel)?,
            Compiler::Child { program, limits } => {
                self.compile_in_child(program, *limits, kind, wasm, &path, cancel)?
            }
        };
        self.inner.compiled.fetch_add(1, Ordering::Relaxed);
        Ok((
            self.for_serving(program, &path),
            CompileInfo {
                cached: false,
                precompiled: false,
                duration: start.elapsed(),
            },
        ))
    }

    /// Compiles in a child under `limits` straight into a temporary file of
    /// the cache, loads the code from there and makes it the cache entry at
    /// `path`, unless the pod was stopped meanwhile; else the file goes.
    fn compile_in_child(
        &self,
        program: &Path,
        limits: CompileLimits,
        kind: Kind,
        wasm: &[u8],
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<Program, RuntimeError> {
        let tmp = cache::temp_path(path).map_err(|e| RuntimeError::Compiler {
            message: format!("cannot name a file in the code cache: {e}"),
        })?;
        // Waiting ends early when the pod is stopped; the compile below
        // then returns at once as cancelled.
        let _turn = wait_for_turn(&self.inner.compile_turn, cancel);
        let result = compile::compile_in_child(
            program,
            limits,
            &self.inner.code,
            &self.inner.fingerprint,
            wasm,
            &tmp,
            cancel,
        )
        .map_err(runtime_error)
        .and_then(|()| {
            self.deserialize_file(&self.inner.engine, &tmp, kind)
                .map_err(|message| RuntimeError::Compiler { message })
        })
        .and_then(|loaded| {
            self.store(cancel, || {
                cache::publish(&tmp, path, &|| cancel.is_cancelled())
            })?;
            Ok(loaded)
        });
        // After a publish the name is gone already; a mapped file stays
        // readable after its name goes.
        let _ = std::fs::remove_file(&tmp);
        result
    }

    /// Stores compiled code with `write` unless the pod was stopped: a
    /// hostile module must not get its code cached by being deleted while
    /// it compiles. A cache that cannot be written only costs a recompile
    /// next time.
    fn store(
        &self,
        cancel: &CancellationToken,
        write: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<(), RuntimeError> {
        if cancel.is_cancelled() {
            return Err(RuntimeError::Cancelled);
        }
        match write() {
            Ok(()) => Ok(()),
            Err(_) if cancel.is_cancelled() => Err(RuntimeError::Cancelled),
            Err(e) => {
                tracing::warn!(dir = %self.inner.cache_dir.display(), error = %e, "cannot write code cache");
                Ok(())
            }
        }
    }

    /// Compiles in this process, without limits, and caches the code at
    /// `path` unless the pod was stopped meanwhile (the compile itself cannot
    /// be stopped).
    fn compile_here(
        &self,
        kind: Kind,
        wasm: &[u8],
        path: &Path,
        cancel: &CancellationToken,
    ) -> Result<Program, RuntimeError> {
        let engine = &self.inner.engine;
        let invalid = |e: wasmtime::Error| invalid_module(format!("{e:#}"));
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
        match serialized {
            Ok(bytes) => self.store(cancel, || {
                cache::write_atomic(path, &bytes, &|| cancel.is_cancelled())
            })?,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot serialize compiled code"),
        }
        Ok(program)
    }

    /// `program`, which was loaded from or cached at `path`, in the serving
    /// engine if it serves HTTP and the pool can be had; else as it is.
    fn for_serving(&self, program: Program, path: &Path) -> Program {
        if !self.is_http(&program) {
            return program;
        }
        let Some(serving) = self.serving() else {
            return program;
        };
        match self.deserialize_file(&serving.engine, path, Kind::Component) {
            Ok(pooled) => pooled,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot load code into the serving pool; serving from the node's engine");
                program
            }
        }
    }

    /// The serving engine, set up at the first call; None if it cannot be.
    fn serving(&self) -> Option<&Serving> {
        self.inner
            .serving
            .get_or_init(|| {
                let made = compile::engine_config(&self.inner.code)
                    .and_then(|base| {
                        serving::engine(
                            base,
                            self.inner.http_slots,
                            self.inner.code.memory_reservation,
                            &self.inner.fingerprint,
                        )
                    })
                    .and_then(|engine| {
                        let mut linker = wasmtime::component::Linker::new(&engine);
                        interfaces::add_http_to_linker(&mut linker, &self.inner.deny)
                            .map_err(|e| format!("cannot link wasi:http: {e:#}"))?;
                        Ok(Serving { engine, linker })
                    });
                match made {
                    Ok(s) => {
                        tracing::info!(
                            slots = self.inner.http_slots,
                            "http pods are served from a pool of instance slots"
                        );
                        let _ = self.inner.serving_epoch.set(s.engine.weak());
                        Some(s)
                    }
                    Err(why) => {
                        tracing::warn!(reason = %why, "http requests allocate their own instances");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The cached program at `path`, or `None` if absent, stale or unusable.
    fn load_cached(&self, path: &Path, kind: Kind) -> Option<Program> {
        if !path.exists() {
            return None;
        }
        match self.deserialize_file(&self.inner.engine, path, kind) {
            Ok(program) => Some(program),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cache entry");
                None
            }
        }
    }

    /// Loads code of `kind` that this node compiled, from the file at `path`
    /// (a cache entry, or its compiler child's output), into `engine` (the
    /// node's, or the serving engine, which has the same fingerprint). The
    /// file is mapped, not read: the node's memory does not grow with the
    /// code's size, and the kernel may drop its pages under pressure and
    /// read them again.
    #[allow(unsafe_code)]
    fn deserialize_file(
        &self,
        engine: &Engine,
        path: &Path,
        kind: Kind,
    ) -> Result<Program, String> {
        let detected = Engine::detect_precompiled_file(path).map_err(|e| format!("{e:#}"))?;
        let loaded = match (detected, kind) {
            // SAFETY: `deserialize_file` runs native code from the file, so
            // it must have been produced by wasmtime for this engine, and
            // must not change while mapped. Both hold: the file is in the
            // node's own cache directory (owner-only), where files get only
            // through `write_atomic` of `serialize()` output, from the
            // node's compiler child (this same executable run with
            // `__compile`, which checked that its engine has this
            // fingerprint), or from a master of the cluster over the
            // node's mutually authenticated connection, after its bytes
            // hashed to the digest the replicated store records for this
            // engine (`load_precompiled`); names carry the engine
            // fingerprint; files are replaced by rename and deleted, never
            // rewritten in place. wasmtime re-checks the version and
            // configuration recorded in the file.
            (Some(Precompiled::Component), Kind::Component) => {
                unsafe { wasmtime::component::Component::deserialize_file(engine, path) }
                    .map(Program::Component)
            }
            // SAFETY: as above.
            (Some(Precompiled::Module), Kind::Module) => {
                unsafe { wasmtime::Module::deserialize_file(engine, path) }.map(Program::Module)
            }
            _ => return Err("compiled code of the wrong kind".into()),
        };
        loaded.map_err(|e| format!("{e:#}"))
    }

    /// Whether `program` serves HTTP (a component exporting
    /// `wasi:http/incoming-handler`) rather than running as a command.
    pub fn is_http(&self, program: &Program) -> bool {
        let Program::Component(c) = program else {
            return false;
        };
        let ty = c.component_type();
        let mut exports = ty.exports(c.engine());
        exports.any(|(name, _)| name.starts_with(HTTP_HANDLER))
    }

    /// Makes an http program ready to serve requests: pre-instantiated,
    /// with `spec` for every request's instance and `limits` on them. Fails
    /// as a run fails to start (`StartError`) when the program cannot be
    /// served here.
    pub fn serve(
        &self,
        program: &Program,
        spec: RunSpec,
        sink: Arc<dyn LogSink>,
        limits: http::HttpLimits,
    ) -> Result<http::HttpPod, RunOutcome> {
        let start_error = |message: String| RunOutcome::Failed {
            reason: "StartError".into(),
            message,
        };
        if let Some(message) = self.inner.deny.refusal(program, program.engine()) {
            return Err(start_error(message));
        }
        let Program::Component(component) = program else {
            return Err(start_error(
                "a core module cannot serve HTTP; build a component that exports \
                 wasi:http/incoming-handler"
                    .into(),
            ));
        };
        // The mounts are checked once here, so that a missing directory
        // fails the pod rather than every request.
        wasi_builder(&spec, sink.clone()).map_err(start_error)?;
        let linker = match self.inner.serving.get() {
            Some(Some(s)) if Engine::same(&s.engine, component.engine()) => &s.linker,
            _ => &self.inner.http_linker,
        };
        let pre = linker
            .instantiate_pre(component)
            .and_then(wasmtime_wasi_http::p2::bindings::ProxyPre::new)
            .map_err(|e| start_error(format!("cannot prepare the http component: {e:#}")))?;
        Ok(http::HttpPod::new(pre, spec, sink, limits))
    }

    /// Runs one instance of `program` to completion (or until the future is
    /// dropped, which stops the guest at its next epoch tick at the latest).
    pub async fn run(
        &self,
        program: &Program,
        spec: RunSpec,
        sink: Arc<dyn LogSink>,
    ) -> RunOutcome {
        if !Engine::same(program.engine(), &self.inner.engine) {
            return RunOutcome::Failed {
                reason: "StartError".into(),
                message: "an http component cannot run as a command; serve it (it exports \
                          wasi:http/incoming-handler)"
                    .into(),
            };
        }
        if let Some(message) = self.inner.deny.refusal(program, &self.inner.engine) {
            return RunOutcome::Failed {
                reason: "StartError".into(),
                message,
            };
        }
        let wasi = match wasi_builder(&spec, sink) {
            Ok(w) => w,
            Err(message) => {
                return RunOutcome::Failed {
                    reason: "StartError".into(),
                    message,
                }
            }
        };
        let limiter = Limiter::new(spec.memory_limit);
        let engine = &self.inner.engine;

        match program {
            Program::Component(component) => {
                let mut wasi = wasi;
                let state = P2State {
                    wasi: wasi.build(),
                    table: ResourceTable::new(),
                    limiter,
                };
                let mut store = Store::new(engine, state);
                store.limiter(|s| &mut s.limiter);
                let meter = prepare_epochs(&mut store, spec.cpu_limit);
                let run = run_component(&mut store, component, &self.inner.p2_linker);
                let result = cpu::metered(meter, run).await;
                outcome(result, store.data().limiter.denial())
            }
            Program::Module(module) => {
                let mut wasi = wasi;
                let state = P1State {
                    wasi: wasi.build_p1(),
                    limiter,
                };
                let mut store = Store::new(engine, state);
                store.limiter(|s| &mut s.limiter);
                let meter = prepare_epochs(&mut store, spec.cpu_limit);
                let run = run_module(&mut store, module, &self.inner.p1_linker);
                let result = cpu::metered(meter, run).await;
                outcome(result, store.data().limiter.denial())
            }
        }
    }
}

/// The WASI context of a run of `spec`: its arguments, environment,
/// output to `sink`, sockets through the pod's allowance and its volume
/// mounts as preopened directories.
fn wasi_builder(spec: &RunSpec, sink: Arc<dyn LogSink>) -> Result<WasiCtxBuilder, String> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.arg(&spec.name)
        .args(&spec.args)
        .envs(&spec.env)
        .stdout(SinkOutput::new(sink.clone(), LogStream::Stdout))
        .stderr(SinkOutput::new(sink, LogStream::Stderr))
        // Sockets are there for every guest, and every address one uses
        // goes through the pod's allowance (nothing when it has none), so
        // a refusal is the guest's `access-denied` and is counted.
        .allow_tcp(true)
        .allow_udp(true)
        .allow_ip_name_lookup(spec.network.lookups);
    {
        let (allowance, refusals, pod) = (
            spec.network.clone(),
            spec.refusals.clone(),
            spec.pod.clone(),
        );
        wasi.socket_addr_check(move |addr, how| {
            let how = socket_use(how);
            let allowed = allowance.permits(addr, how);
            if !allowed {
                refusals.record(&pod, addr, how);
            }
            Box::pin(std::future::ready(allowed))
        });
    }
    // Files: only the pod's volume mounts, each a preopened directory.
    for m in &spec.mounts {
        let perms = if m.read_only {
            wasmtime_wasi::FsPerms::ReadOnly
        } else {
            wasmtime_wasi::FsPerms::ReadWrite
        };
        wasi.preopened_dir(&m.host, &m.guest, perms)
            .map_err(|e| format!("cannot mount {} at {}: {e:#}", m.host.display(), m.guest))?;
    }
    Ok(wasi)
}

/// wasmtime-wasi's name for what a guest does with an address, as the
/// allowance knows it.
fn socket_use(how: wasmtime_wasi::sockets::SocketAddrUse) -> crate::network::Use {
    use crate::network::Use;
    use flotilla_api::objects::network::Protocol;
    use wasmtime_wasi::sockets::SocketAddrUse as S;
    match how {
        S::TcpBind => Use::Bind(Protocol::Tcp),
        S::TcpListen => Use::Listen,
        S::TcpAccept => Use::Accept,
        S::TcpConnect => Use::Connect,
        S::UdpBind => Use::Bind(Protocol::Udp),
        S::UdpSend => Use::Send,
        S::UdpReceive => Use::Receive,
    }
}

/// An `InvalidModule` error; the message becomes the pod's status message,
/// so it is kept bounded.
fn invalid_module(mut message: String) -> RuntimeError {
    truncate(&mut message, MAX_TRAP_MESSAGE);
    RuntimeError::InvalidModule { message }
}

/// What a failed compile in a child means for the caller.
fn runtime_error(failure: CompileFailure) -> RuntimeError {
    match failure {
        CompileFailure::Cancelled => RuntimeError::Cancelled,
        CompileFailure::Invalid { message } => invalid_module(message),
        CompileFailure::Failed { mut message } => {
            truncate(&mut message, MAX_TRAP_MESSAGE);
            RuntimeError::Compiler { message }
        }
        limit @ (CompileFailure::TimeLimit { .. } | CompileFailure::MemoryLimit { .. }) => {
            let mut message = limit.to_string();
            truncate(&mut message, MAX_TRAP_MESSAGE);
            RuntimeError::CompileLimit { message }
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
/// the future, which is how a pod is stopped. Under a CPU limit the yield
/// may be a pause ([`cpu::throttle`]); the run's future must then be
/// [`cpu::metered`] with the meter returned.
fn prepare_epochs<T>(store: &mut Store<T>, cpu_limit: Option<u64>) -> Option<Arc<cpu::Meter>> {
    store.set_epoch_deadline(1);
    let meter = cpu_limit.and_then(|millicores| cpu::throttle(store, millicores));
    if meter.is_none() {
        store.epoch_deadline_async_yield_and_update(1);
    }
    meter
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
                "memory limit of {} exceeded (the guest tried to grow its linear memory and tables to {})",
                flotilla_api::quantity::format_bytes(d.limit),
                flotilla_api::quantity::format_bytes(d.requested)
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
        // Rust names demangled, without their hash (`{:#}`); others (C,
        // names a module gave itself) print as they are.
        let names: Vec<String> = bt
            .frames()
            .iter()
            .map(|f| {
                f.func_name().map_or_else(
                    || "<unknown>".to_string(),
                    |n| format!("{:#}", rustc_demangle::demangle(n)),
                )
            })
            .collect();
        if !names.is_empty() {
            msg.push_str("\nwasm backtrace:");
            // A panic's first frames are the standard library raising it and
            // aborting: summed up in a line, so the frames shown are the
            // program's own.
            let skip = match names.iter().take_while(|n| panic_machinery(n)).count() {
                n if n == names.len() => 0,
                n => n,
            };
            if skip > 0 {
                msg.push_str(&format!(
                    "\n  0-{}: the standard library's panic and abort",
                    skip - 1
                ));
            }
            for (i, name) in names.iter().enumerate().skip(skip).take(MAX_TRAP_FRAMES) {
                msg.push_str(&format!("\n  {i}: {name}"));
            }
            let shown = skip + MAX_TRAP_FRAMES;
            if names.len() > shown {
                msg.push_str(&format!("\n  ... {} more", names.len() - shown));
            }
        }
    }
    truncate(&mut msg, MAX_TRAP_MESSAGE);
    msg
}

/// Whether a (demangled) frame is the standard library's panic or abort
/// path rather than the program's own code.
fn panic_machinery(name: &str) -> bool {
    name == "abort"
        || [
            "std::",
            "core::",
            "alloc::",
            "<std::",
            "<core::",
            "<alloc::",
            "__rustc::",
            "__rust_",
            "rust_panic",
            "panic_abort::",
        ]
        .iter()
        .any(|p| name.starts_with(p))
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

/// Takes `turn`, waiting for it (blocking, checking `cancel` every 10 ms),
/// or gives up with None once `cancel` fires.
fn wait_for_turn<'a>(
    turn: &'a std::sync::Mutex<()>,
    cancel: &CancellationToken,
) -> Option<std::sync::MutexGuard<'a, ()>> {
    loop {
        match turn.try_lock() {
            Ok(guard) => return Some(guard),
            Err(std::sync::TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        if cancel.is_cancelled() {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_take_turns_and_a_stopped_pod_stops_waiting() {
        let turn = std::sync::Mutex::new(());
        let cancel = CancellationToken::new();
        let held = wait_for_turn(&turn, &cancel).expect("free turn");
        std::thread::scope(|s| {
            let waiter = s.spawn(|| wait_for_turn(&turn, &cancel).is_some());
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished(), "a second compile waits its turn");
            drop(held);
            assert!(waiter.join().expect("waiter"), "and gets it once free");
        });
        let held = wait_for_turn(&turn, &cancel).expect("free again");
        let stopped = CancellationToken::new();
        stopped.cancel();
        assert!(wait_for_turn(&turn, &stopped).is_none());
        drop(held);
    }

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
    fn a_stopped_pods_code_is_not_cached() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let cache = dir.path().join("cache");
        let rt = Runtime::new(&cache).unwrap_or_else(|e| panic!("runtime: {e}"));
        let wasm = std::fs::read(flotilla_workloads::path("hello"))
            .unwrap_or_else(|e| panic!("hello: {e}"));
        let stopped = CancellationToken::new();
        stopped.cancel();
        // Stopped before the compile: none happens.
        assert!(matches!(
            rt.load_cancellable("sha256:hello", &wasm, &stopped),
            Err(RuntimeError::Cancelled)
        ));
        // Stopped while compiling in-process (which cannot be interrupted):
        // the code is not stored.
        let path = cache::entry_path(&cache, "sha256:hello", &rt.inner.fingerprint);
        assert!(matches!(
            rt.compile_here(Kind::Component, &wasm, &path, &stopped),
            Err(RuntimeError::Cancelled)
        ));
        let files = std::fs::read_dir(&cache).map(|d| d.count()).unwrap_or(0);
        assert_eq!(files, 0, "nothing in the cache");
        // Not stopped: compiled, cached, and loaded from the cache next time.
        let go = CancellationToken::new();
        let (_, first) = rt
            .load_cancellable("sha256:hello", &wasm, &go)
            .unwrap_or_else(|e| panic!("load: {e}"));
        assert!(!first.cached && path.exists());
        let (_, second) = rt
            .load_cancellable("sha256:hello", &wasm, &stopped)
            .unwrap_or_else(|e| panic!("load: {e}"));
        assert!(second.cached, "a cached program needs no compile to stop");
    }

    #[test]
    fn code_from_a_master_loads_only_if_it_is_what_was_recorded_for_this_engine() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let rt = Runtime::new(&dir.path().join("cache")).unwrap_or_else(|e| panic!("runtime: {e}"));
        let wasm = std::fs::read(flotilla_workloads::path("hello"))
            .unwrap_or_else(|e| panic!("hello: {e}"));
        let masters = compile::CrossCompiler::default();
        assert_eq!(
            masters.fingerprint(rt.code_target()).as_deref(),
            Ok(rt.fingerprint())
        );
        let code = masters
            .compile(rt.code_target(), &wasm)
            .unwrap_or_else(|e| panic!("compile: {e}"));
        let sha = flotilla_api::objects::digest_of(&code);
        let refused = |r: Result<(Program, CompileInfo), String>| match r {
            Ok(_) => panic!("loaded code it should have refused"),
            Err(e) => e,
        };
        // Not the recorded bytes.
        let e = refused(rt.load_precompiled("sha256:hello", &code, "sha256:00"));
        assert!(e.contains("not the sha256:00 its master recorded"), "{e}");
        // Recorded, but not wasmtime's code.
        let garbage = b"\0asm-but-not-code".to_vec();
        let e = refused(rt.load_precompiled(
            "sha256:hello",
            &garbage,
            &flotilla_api::objects::digest_of(&garbage),
        ));
        assert!(e.contains("not code compiled by wasmtime"), "{e}");
        // wasmtime's code, for another engine (another memory layout).
        let other = CodeTarget {
            memory_reservation: rt.code_target().memory_reservation / 2,
            ..rt.code_target().clone()
        };
        let foreign = masters
            .compile(&other, &wasm)
            .unwrap_or_else(|e| panic!("compile: {e}"));
        refused(rt.load_precompiled(
            "sha256:hello",
            &foreign,
            &flotilla_api::objects::digest_of(&foreign),
        ));
        assert!(!rt.has_compiled("sha256:hello"), "refused code is not kept");
        assert_eq!(rt.code_counts(), CodeCounts::default());
        // What was recorded for this engine: loaded, kept, counted.
        let (_, info) = rt
            .load_precompiled("sha256:hello", &code, &sha)
            .unwrap_or_else(|e| panic!("load: {e}"));
        assert!(info.precompiled && !info.cached);
        assert!(rt.has_compiled("sha256:hello"));
        let (_, again) = rt
            .load("sha256:hello", &wasm)
            .unwrap_or_else(|e| panic!("load: {e}"));
        assert!(again.cached);
        assert_eq!(
            rt.code_counts(),
            CodeCounts {
                compiled: 0,
                precompiled: 1,
                cached: 1
            }
        );
    }

    #[test]
    fn masters_compile_the_same_bytes_for_an_engine_every_time() {
        let wasm = std::fs::read(flotilla_workloads::path("hello"))
            .unwrap_or_else(|e| panic!("hello: {e}"));
        let target = device::for_this_machine()
            .unwrap_or_else(|e| panic!("profile: {e}"))
            .code;
        let one = compile::CrossCompiler::default().compile(&target, &wasm);
        let two = compile::CrossCompiler::default().compile(&target, &wasm);
        assert!(one.is_ok());
        assert_eq!(
            one, two,
            "a master that compiles again serves the recorded bytes"
        );
    }

    #[test]
    fn truncates_on_char_boundary() {
        let mut s = "ééé".to_string();
        truncate(&mut s, 3);
        assert_eq!(s, "é ...");
    }
}
