//! Precompiled code: a master compiles each module for the engines of its
//! nodes (wasmtime cross-compiles: an x86_64 master makes aarch64 code and
//! Pulley bytecode), so that a Pi loads code instead of running the
//! compiler. What is shared and what is local:
//!
//! - The digest of the code for an engine fingerprint is recorded in the
//!   module's `status.code`, through raft: every master serves those bytes
//!   and no others for that fingerprint.
//! - The code itself is on each master's disk (`<data>/code/`), made when
//!   first wanted: ahead of time for the engines present when a module is
//!   uploaded ([`CodeShop::precompile_for_nodes`]), or when a node asks
//!   ([`ApiServer::get_code`]). A master whose disk lacks it compiles it
//!   again (compilation is deterministic) and serves it only if it hashes
//!   as recorded.
//!
//! The compiler is wasmtime's, which the master crate does not link: the
//! `flotilla` binary hands one in ([`CodeCompiler`]); a master without one
//! answers that it has no code, and nodes compile by themselves.

use crate::apiserver::{store_err, ApiServer, Caller};
use flotilla_api::objects::{digest_of, module_name, CodeTarget, ModuleCode};
use flotilla_api::protocol::{ApiError, ErrorCode};
use flotilla_api::{Kind, Object};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Compiles modules for engines other than (or the same as) this
/// machine's: the node runtime's, handed in by the binary.
pub trait CodeCompiler: Send + Sync + 'static {
    /// The fingerprint of the engine for `target` (compiled code loads only
    /// into an engine of the same), or why there is none.
    fn fingerprint(&self, target: &CodeTarget) -> Result<String, String>;
    /// The code of `wasm` (a module or a component) for `target`, or why
    /// it cannot be compiled.
    fn compile(&self, target: &CodeTarget, wasm: &[u8]) -> Result<Vec<u8>, String>;
}

/// A master's compiler, as its configuration carries it.
#[derive(Clone)]
pub struct Compiler(pub Arc<dyn CodeCompiler>);

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiler")
    }
}

/// Where a master keeps the code it compiled, and its compiler.
#[derive(Clone, Debug)]
pub struct CodeShop {
    compiler: Option<Compiler>,
    dir: PathBuf,
    /// One compile at a time: a large module takes hundreds of MiB to
    /// compile, and the master has its raft and its nodes to serve.
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// Most records of compiled code a write tries to add before giving up
/// (other masters adding theirs at the same moment).
const RECORD_TRIES: usize = 5;

impl CodeShop {
    /// A shop with its code in `dir` (made when first written).
    pub fn new(compiler: Option<Compiler>, dir: PathBuf) -> CodeShop {
        CodeShop {
            compiler,
            dir,
            turn: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    fn path(&self, digest: &str, fingerprint: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join(format!("{hex}-{fingerprint}.cwasm"))
    }

    /// Compiles `digest` ahead of time for every engine among the nodes
    /// that this master can compile for; what fails is logged and left to
    /// the node's own compiler.
    pub async fn precompile_for_nodes(&self, api: &ApiServer, digest: &str) {
        let Some(compiler) = &self.compiler else {
            return;
        };
        let targets = match engines_of_nodes(api) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the nodes' engines to precompile for");
                return;
            }
        };
        for (fingerprint, target) in targets {
            let theirs = fingerprint.clone();
            let c = compiler.clone();
            let t = target.clone();
            let ours = tokio::task::spawn_blocking(move || c.0.fingerprint(&t)).await;
            if !matches!(ours, Ok(Ok(f)) if f == theirs) {
                continue;
            }
            match self.code(api, digest, &target, &fingerprint).await {
                Ok((_, code)) => tracing::info!(
                    module = %digest,
                    target = %target.target,
                    bytes = code.len(),
                    "compiled for the nodes ahead of time"
                ),
                Err(e) => tracing::warn!(
                    module = %digest,
                    target = %target.target,
                    error = %e.message,
                    "cannot compile for the nodes ahead of time"
                ),
            }
        }
    }

    /// The code of `digest` for `target`, whose engine has `fingerprint`:
    /// from disk, or compiled now; recorded in the module's status if it
    /// was not. Returns its digest and its bytes.
    async fn code(
        &self,
        api: &ApiServer,
        digest: &str,
        target: &CodeTarget,
        fingerprint: &str,
    ) -> Result<(String, Vec<u8>), ApiError> {
        let compiler = self.compiler.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                "this master compiles no code for nodes (a build without the node runtime); the node compiles the module itself",
            )
        })?;
        let c = compiler.clone();
        let t = target.clone();
        let ours = tokio::task::spawn_blocking(move || c.0.fingerprint(&t))
            .await
            .map_err(|e| internal(format!("the compiler task failed: {e}")))?
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, e))?;
        if ours != fingerprint {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "this master's engine for {} has fingerprint {ours}, the node's {fingerprint} \
                     (another flotilla version, or CPU features this master's compiler does not assume); \
                     the node compiles the module itself",
                    target.target
                ),
            ));
        }
        let recorded = || -> Result<Option<ModuleCode>, ApiError> {
            Ok(module(api, digest)?.status.code_for(fingerprint).cloned())
        };
        let path = self.path(digest, fingerprint);
        let _turn = self.turn.lock().await;
        let (sha256, code) = match read_file(&path).await {
            Some(code) => (digest_of(&code), code),
            None => {
                let wasm = api
                    .store
                    .module_bytes(digest)
                    .map_err(store_err)?
                    .ok_or_else(|| not_stored(digest))?;
                let t = target.clone();
                let code = tokio::task::spawn_blocking(move || compiler.0.compile(&t, &wasm))
                    .await
                    .map_err(|e| internal(format!("the compiler task failed: {e}")))?
                    .map_err(|e| {
                        ApiError::new(
                            ErrorCode::Invalid,
                            format!("cannot compile module {digest} for {}: {e}", target.target),
                        )
                    })?;
                (digest_of(&code), code)
            }
        };
        match recorded()? {
            Some(r) if r.sha256 == sha256 => {}
            Some(r) => {
                let _ = std::fs::remove_file(&path);
                return Err(internal(format!(
                    "this master's code for module {digest} on engine {fingerprint} hashes to {sha256}, \
                     not the recorded {}; the node compiles the module itself",
                    r.sha256
                )));
            }
            None => {
                record(api, digest, fingerprint, target, &sha256, code.len() as u64).await?;
            }
        }
        if !path.exists() {
            if let Err(e) = write_file(&self.dir, &path, &code) {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep compiled code; it is compiled again when next wanted");
            }
        }
        Ok((sha256, code))
    }

    /// Deletes the code of modules no longer stored; gives how many files went.
    pub fn sweep(&self, stored: &std::collections::HashSet<String>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut gone = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(hex) = name.split('-').next() else {
                continue;
            };
            let ours = name.ends_with(".cwasm") || name.ends_with(".tmp");
            if ours
                && !stored.contains(&format!("sha256:{hex}"))
                && std::fs::remove_file(entry.path()).is_ok()
            {
                gone += 1;
            }
        }
        gone
    }
}

/// How often a master deletes the code of modules no longer stored.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Deletes the code of modules gone from the store, every [`SWEEP_EVERY`],
/// until `stop` fires.
pub async fn sweep_loop(api: ApiServer, stop: tokio_util::sync::CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let Ok((_, modules)) = api.store.list(Kind::Module, None, &Default::default()) else {
            continue;
        };
        let stored = modules
            .iter()
            .filter_map(|o| match o {
                Object::Module(m) => Some(m.spec.digest.clone()),
                _ => None,
            })
            .collect();
        let shop = api.code.clone();
        if let Ok(gone) = tokio::task::spawn_blocking(move || shop.sweep(&stored)).await {
            if gone > 0 {
                tracing::info!(files = gone, "deleted the code of modules no longer stored");
            }
        }
    }
}

impl ApiServer {
    /// The code of module `digest` for a node's engine (`target`, with
    /// `fingerprint`): its digest, as the module's status records it, and
    /// its bytes. A node gets only the code of modules its pods use.
    pub async fn get_code(
        &self,
        caller: &Caller,
        digest: &str,
        target: &CodeTarget,
        fingerprint: &str,
    ) -> Result<(String, Vec<u8>), ApiError> {
        self.may_read_module(caller, digest)?;
        self.code.code(self, digest, target, fingerprint).await
    }
}

/// The engines of the nodes, by fingerprint.
fn engines_of_nodes(api: &ApiServer) -> Result<BTreeMap<String, CodeTarget>, ApiError> {
    let (_, nodes) = api
        .store
        .list(Kind::Node, None, &Default::default())
        .map_err(store_err)?;
    Ok(nodes
        .into_iter()
        .filter_map(|o| match o {
            Object::Node(n) => Some(n.status.node_info.engine),
            _ => None,
        })
        .filter(|e| !e.fingerprint.is_empty() && !e.code.target.is_empty())
        .map(|e| (e.fingerprint, e.code))
        .collect())
}

fn module(api: &ApiServer, digest: &str) -> Result<flotilla_api::Module, ApiError> {
    match api
        .store
        .get(Kind::Module, "", &module_name(digest))
        .map_err(store_err)?
    {
        Some(Object::Module(m)) => Ok(m),
        _ => Err(not_stored(digest)),
    }
}

/// Adds the record of code for `fingerprint` to the module's status, unless
/// another master recorded the same meanwhile; fails if it recorded other
/// bytes.
async fn record(
    api: &ApiServer,
    digest: &str,
    fingerprint: &str,
    target: &CodeTarget,
    sha256: &str,
    size: u64,
) -> Result<(), ApiError> {
    let caller = Caller::Controller("code");
    let mut last = None;
    for _ in 0..RECORD_TRIES {
        let mut m = module(api, digest)?;
        match m.status.code_for(fingerprint) {
            Some(r) if r.sha256 == sha256 => return Ok(()),
            Some(r) => {
                return Err(internal(format!(
                    "another master recorded code {} for module {digest} on engine {fingerprint}, not {sha256}",
                    r.sha256
                )))
            }
            None => {}
        }
        m.status.code.push(ModuleCode {
            fingerprint: fingerprint.to_string(),
            target: target.target.clone(),
            sha256: sha256.to_string(),
            size,
        });
        let rv = m.metadata.resource_version;
        match api.update_status_at(&caller, Object::Module(m), rv).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code == ErrorCode::Conflict => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| internal("cannot record the compiled code".into())))
}

async fn read_file(path: &Path) -> Option<Vec<u8>> {
    tokio::fs::read(path).await.ok()
}

/// Writes `code` to `path` in `dir` by a rename, owner-only.
fn write_file(dir: &Path, path: &Path, code: &[u8]) -> std::io::Result<()> {
    // Owner-only, as the rest of the master's data directory.
    flotilla_api::perms::create_dir(dir)?;
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(flotilla_api::perms::FILE_MODE)
            .open(&tmp)?;
        f.write_all(code)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

fn not_stored(digest: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("module {digest} is not stored on this master"),
    )
}

fn internal(message: String) -> ApiError {
    ApiError::new(ErrorCode::Internal, message)
}
