//! Modules through the core: an upload is checked (its digest, then that it
//! is WebAssembly, [`crate::wasm`]) before anything is stored, then written
//! through raft in one entry or staged in pieces; a download reads the store
//! a chunk at a time.

use super::admission::invalid;
use super::{new_uid, store_err, ApiServer, Caller, NodeView};
use super::{Action, Subresource, Verb};
use crate::store::{Command, ModuleReader, Outcome, UPLOAD_CHUNK, UPLOAD_PIECE};
use flotilla_api::objects::{is_digest, module_name, ModuleSpec};
use flotilla_api::protocol::{ApiError, ErrorCode, MAX_MODULE_SIZE};
use flotilla_api::time::Time;
use flotilla_api::{Kind, Module, ObjectMeta};
use tokio::io::{AsyncRead, AsyncReadExt};

/// What an upload asks of its sender next.
pub enum ModuleUpload {
    /// The module is stored already: no bytes needed.
    Stored,
    /// Send the bytes (then call [`PendingUpload::receive`]).
    Wanted(Box<PendingUpload>),
}

/// An upload waiting for its bytes.
pub struct PendingUpload {
    api: ApiServer,
    digest: String,
    size: u64,
    module: Module,
}

/// A module's bytes, a chunk at a time.
pub type ModuleDownload = ModuleReader;

impl ApiServer {
    /// Starts an upload of `size` bytes hashing to `digest`.
    pub fn put_module(
        &self,
        caller: &Caller,
        digest: &str,
        size: u64,
        source: String,
    ) -> Result<ModuleUpload, ApiError> {
        let name = module_name(digest);
        let verb = Verb::object(
            Action::Create,
            Kind::Module,
            "",
            &name,
            Some(Subresource::Bytes),
        );
        super::authorize(caller, &verb)?;
        if !is_digest(digest) {
            return Err(invalid(format!("{digest:?} is not a sha256:<hex> digest")));
        }
        if size > MAX_MODULE_SIZE {
            return Err(ApiError::new(
                ErrorCode::TooLarge,
                format!("module is {size} bytes; the limit is {MAX_MODULE_SIZE}"),
            ));
        }
        if self
            .store
            .get(Kind::Module, "", &name)
            .map_err(store_err)?
            .is_some()
        {
            return Ok(ModuleUpload::Stored);
        }
        let module = Module {
            metadata: ObjectMeta {
                name,
                uid: new_uid(),
                creation_timestamp: Some(Time::now()),
                ..ObjectMeta::default()
            },
            spec: ModuleSpec {
                digest: digest.to_string(),
                size,
                source,
            },
            status: Default::default(),
        };
        Ok(ModuleUpload::Wanted(Box::new(PendingUpload {
            api: self.clone(),
            digest: digest.to_string(),
            size,
            module,
        })))
    }

    /// Opens a module's bytes for download. A node may download only the
    /// modules of pods bound to it.
    pub fn get_module(&self, caller: &Caller, digest: &str) -> Result<ModuleDownload, ApiError> {
        self.may_read_module(caller, digest)?;
        self.store
            .module_reader(digest)
            .map_err(store_err)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("module {digest} is not stored on this master"),
                )
            })
    }
}

impl ApiServer {
    /// Whether `caller` may read what a module's bytes make (the bytes,
    /// their compiled code): a node only those of pods bound to it.
    pub(crate) fn may_read_module(&self, caller: &Caller, digest: &str) -> Result<(), ApiError> {
        let verb = Verb::object(
            Action::Get,
            Kind::Module,
            "",
            &module_name(digest),
            Some(Subresource::Bytes),
        );
        super::authorize(caller, &verb)?;
        if let Some(view) = NodeView::of(&self.store, caller) {
            if !view.uses(digest)? {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "node {} may download only the modules of pods bound to it",
                        view.me
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl PendingUpload {
    /// Receives the module's bytes from `bytes`, checks them and stores
    /// them: in one raft entry when small, else staged in [`UPLOAD_PIECE`]s
    /// and committed, so no raft entry (nor message between masters)
    /// outgrows a frame. Refused bytes leave nothing behind. Gives whether
    /// the module was stored already (a concurrent upload won).
    pub async fn receive(
        self: Box<Self>,
        bytes: &mut (impl AsyncRead + Unpin),
    ) -> Result<bool, ApiError> {
        use sha2::Digest;
        let PendingUpload {
            api,
            digest,
            size,
            mut module,
        } = *self;
        // One copy of the module in memory, the only one: wasmparser
        // validates a whole binary, and nothing is staged before it passes.
        // Reserved once (size is at most MAX_MODULE_SIZE), so growing never
        // copies it; the memory is touched only as bytes arrive, so it
        // follows what the client sends, not the size it claimed. Hashed as
        // it arrives.
        let mut buf = Vec::with_capacity(size as usize);
        let mut sha = sha2::Sha256::new();
        while (buf.len() as u64) < size {
            let start = buf.len();
            let n = (size - start as u64).min(UPLOAD_PIECE as u64) as usize;
            buf.resize(start + n, 0);
            bytes
                .read_exact(&mut buf[start..])
                .await
                .map_err(|e| invalid(format!("upload ended early: {e}")))?;
            sha.update(&buf[start..]);
        }
        let actual = format!("sha256:{}", hex::encode(sha.finalize()));
        if actual != digest {
            return Err(invalid(format!(
                "uploaded bytes hash to {actual}, not {digest}; the file changed during upload?"
            )));
        }
        let (buf, read) = check_wasm(&module.spec.source, &digest, buf).await?;
        module.status = read;
        let outcome = if buf.len() <= UPLOAD_CHUNK {
            api.apply(Command::PutModule { module, bytes: buf }).await
        } else {
            stage(&api, &digest, module, &buf).await
        }?;
        Ok(matches!(outcome, Outcome::ModuleStored { existed: true }))
    }
}

/// Stores a big module in pieces, then commits it; drops the pieces if
/// that fails.
async fn stage(
    api: &ApiServer,
    digest: &str,
    module: Module,
    buf: &[u8],
) -> Result<Outcome, ApiError> {
    let staged = async {
        // Pieces of whole stored chunks: the store keeps them as they come.
        for (i, chunk) in buf.chunks(UPLOAD_PIECE).enumerate() {
            let cmd = Command::PutModuleChunk {
                digest: digest.to_string(),
                offset: (i * UPLOAD_PIECE) as u64,
                bytes: chunk.to_vec(),
            };
            api.apply(cmd).await?;
        }
        api.apply(Command::CommitModule { module }).await
    };
    let result = staged.await;
    if result.is_err() {
        // Best effort: a later upload of the same module starts over anyway.
        let _ = api
            .apply(Command::DiscardUpload {
                digest: digest.to_string(),
            })
            .await;
    }
    result
}

/// Refuses bytes that are not a WebAssembly module or component, naming the
/// file they came from and how to build one; gives what the master read in
/// them (format, imports). Validation is CPU-bound, so it runs off the
/// async threads; the bytes are handed back.
async fn check_wasm(
    source: &str,
    digest: &str,
    bytes: Vec<u8>,
) -> Result<(Vec<u8>, flotilla_api::objects::ModuleStatus), ApiError> {
    let (bytes, checked) = tokio::task::spawn_blocking(move || {
        let checked = crate::wasm::check(&bytes);
        (bytes, checked)
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, format!("checking the module: {e}")))?;
    match checked {
        Ok(checked) => {
            let format = match checked.kind {
                crate::wasm::WasmKind::Module => "module",
                crate::wasm::WasmKind::Component => "component",
            };
            let read = flotilla_api::objects::ModuleStatus {
                format: format.into(),
                imports: checked.imports,
                workload: checked.workload.as_str().into(),
                code: Vec::new(),
            };
            Ok((bytes, read))
        }
        Err(e) => {
            let name = if source.is_empty() { digest } else { source };
            Err(invalid(format!(
                "{name} is not a WebAssembly module or component: {e}; \
                 build it with cargo build --target wasm32-wasip2"
            )))
        }
    }
}
