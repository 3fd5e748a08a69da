//! The on-disk cache of compiled native code: file naming, the engine
//! fingerprint that keeps stale code out, atomic writes, and the upkeep
//! that deletes what is no longer wanted (which files, the caller decides:
//! see [`crate::module_gc`]).

use std::collections::HashSet;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Digests longer than this (after escaping) are hashed to keep file names
/// well under the usual 255-byte limit.
const MAX_ENCODED_DIGEST: usize = 150;
/// A temporary file older than this is left over from a crash, not a write
/// in progress: compiles end within `--compile-timeout` (a minute by default).
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// What [`super::Runtime::sweep_compiled`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub files: usize,
    pub bytes: u64,
}

/// The upkeep of the cache, as methods of the runtime that owns it, so
/// callers deal in digests and never in its paths or file names.
impl super::Runtime {
    /// Bytes of compiled code on disk for `digest` (0 if none).
    pub fn compiled_size(&self, digest: &str) -> u64 {
        let path = entry_path(&self.inner.cache_dir, digest, &self.inner.fingerprint);
        fs::metadata(path).map_or(0, |m| m.len())
    }

    /// Deletes every file in the cache but the code of the digests in
    /// `keep` for this engine: code of other digests, code compiled by
    /// another wasmtime or configuration (never loadable again), and
    /// temporary files left by a crash. A file that cannot be deleted is
    /// skipped with a warning; the next sweep tries again.
    pub fn sweep_compiled(&self, keep: &HashSet<String>) -> io::Result<Swept> {
        let dir = &self.inner.cache_dir;
        let wanted: HashSet<PathBuf> = keep
            .iter()
            .map(|d| entry_path(dir, d, &self.inner.fingerprint))
            .collect();
        let mut swept = Swept::default();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if !meta.is_file() || !is_unwanted(&path, &wanted, &meta) {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {
                    swept.files += 1;
                    swept.bytes += meta.len();
                }
                // Another sweep, or the node's own rename, got there first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete compiled code")
                }
            }
        }
        Ok(swept)
    }
}

/// Whether the sweep deletes `path`: code not wanted, or a stale temporary
/// file. Anything else (not ours) is left alone.
fn is_unwanted(path: &Path, wanted: &HashSet<PathBuf>, meta: &fs::Metadata) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if name.starts_with('.') && name.ends_with(".tmp") {
        let age = meta.modified().ok().and_then(|m| m.elapsed().ok());
        return age.is_some_and(|a| a >= STALE_TEMP);
    }
    name.ends_with(".cwasm") && !wanted.contains(path)
}

/// A short hex fingerprint of everything in `engine` that affects the
/// compiled code (target, flags, tunables, features, wasmtime version).
///
/// Hashed with SHA-256 rather than `DefaultHasher`, whose algorithm may change
/// between Rust releases and would silently empty the cache on every upgrade;
/// and the same on 32- and 64-bit machines, since masters compile code for
/// nodes of both.
pub(super) fn engine_fingerprint(engine: &wasmtime::Engine) -> String {
    let mut hasher = Sha256Hasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let digest = hasher.0.finalize();
    hex::encode(&digest[..8])
}

/// Feeds `Hash` output into SHA-256.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    // Sizes and lengths as 8 bytes on every machine: a 32-bit node and the
    // 64-bit master that compiles its code must get the same fingerprint
    // for the same engine (on 64-bit machines this is what `write` gets).
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    fn write_isize(&mut self, i: isize) {
        self.write_i64(i as i64);
    }

    // Only the SHA-256 result is used; `finish` exists to satisfy the trait.
    fn finish(&self) -> u64 {
        0
    }
}

/// Where the compiled code for `digest` lives in `dir`.
pub(super) fn entry_path(dir: &Path, digest: &str, fingerprint: &str) -> PathBuf {
    dir.join(format!("{}-{fingerprint}.cwasm", encode_digest(digest)))
}

/// Turns a caller-supplied digest into a safe, injective file-name part:
/// `[A-Za-z0-9-]` stay, every other byte becomes `_XX` (upper-case hex).
/// Overlong results become `_h` + SHA-256 of the digest, which no escaped
/// name can equal (`_` is always followed by two hex digits there).
fn encode_digest(digest: &str) -> String {
    let mut out = String::with_capacity(digest.len());
    for b in digest.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    if out.len() > MAX_ENCODED_DIGEST {
        return format!("_h{}", hex::encode(Sha256::digest(digest.as_bytes())));
    }
    out
}

/// A new temporary file name beside `path`, for a write that becomes `path`
/// by a rename ([`write_atomic`], [`publish`]).
pub(super) fn temp_path(path: &Path) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("cache path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("cache path has no file name"))?;
    Ok(dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Writes `bytes` to `path` so that readers see either the old file, no file
/// or the whole new one: write a temporary file beside it, then [`publish`].
/// `abandon` is asked last, just before the rename: when it says so (the pod
/// whose module this is was stopped meanwhile) nothing is stored and the
/// error is `Interrupted`.
pub(super) fn write_atomic(
    path: &Path,
    bytes: &[u8],
    abandon: &dyn Fn() -> bool,
) -> io::Result<()> {
    let tmp = temp_path(path)?;
    let result = write_new(&tmp, bytes).and_then(|()| publish(&tmp, path, abandon));
    if result.is_err() {
        // Best effort: a stray temp file only wastes space.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to the new file `path` (a [`temp_path`]), owner-only
/// like the directory: this is code the node will run.
pub(super) fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::File::options()
        .write(true)
        .create_new(true)
        .mode(flotilla_api::perms::FILE_MODE)
        .open(path)?;
    file.write_all(bytes)
}

/// Makes the complete file `tmp` (from [`temp_path`]) the entry at `path`:
/// sync, ask `abandon` (see [`write_atomic`]), rename. The compiler child
/// writes its code to such a file, which comes here once it has exited.
/// The caller removes `tmp` if this fails.
pub(super) fn publish(tmp: &Path, path: &Path, abandon: &dyn Fn() -> bool) -> io::Result<()> {
    // Edge devices lose power: without the sync a rename could expose a
    // truncated file after a crash.
    fs::File::open(tmp)?.sync_all()?;
    if abandon() {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "abandoned: the pod was stopped",
        ));
    }
    fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_encode_safely_and_distinctly() {
        assert_eq!(encode_digest("sha256-ab12"), "sha256-ab12");
        assert_eq!(encode_digest("sha256:ab12"), "sha256_3Aab12");
        assert_eq!(encode_digest("../etc/passwd"), "_2E_2E_2Fetc_2Fpasswd");
        assert_ne!(encode_digest("a:b"), encode_digest("a_3Ab"));
        let long = "x".repeat(400);
        let enc = encode_digest(&long);
        assert!(enc.starts_with("_h") && enc.len() == 66);
    }

    #[test]
    fn sweeps_keep_only_the_code_of_kept_digests_for_this_engine() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let cache = dir.path().join("compiled");
        let rt = crate::runtime::Runtime::new(&cache).expect("runtime");
        let wasm = fs::read(flotilla_workloads::path("hello"))?;
        rt.load("sha256:hello", &wasm).expect("compile");
        let code = rt.compiled_size("sha256:hello");
        assert!(code > 0);
        assert_eq!(rt.compiled_size("sha256:other"), 0);
        // Code from another wasmtime, a write in progress, a crash's leftover, not ours.
        let stale_engine = cache.join("sha256_3Ahello-0000000000000000.cwasm");
        let writing = cache.join(".x.cwasm.1.1.tmp");
        let crashed = cache.join(".y.cwasm.1.2.tmp");
        let foreign = cache.join("README");
        for p in [&stale_engine, &writing, &crashed, &foreign] {
            fs::write(p, b"x")?;
        }
        fs::File::options()
            .write(true)
            .open(&crashed)?
            .set_modified(std::time::SystemTime::now() - 2 * STALE_TEMP)?;

        let keep: HashSet<String> = ["sha256:hello".to_string()].into();
        let swept = rt.sweep_compiled(&keep)?;
        assert_eq!(swept, Swept { files: 2, bytes: 2 });
        assert!(!stale_engine.exists() && !crashed.exists());
        assert!(writing.exists() && foreign.exists());
        assert_eq!(rt.compiled_size("sha256:hello"), code);

        let swept = rt.sweep_compiled(&HashSet::new())?;
        assert_eq!(
            swept,
            Swept {
                files: 1,
                bytes: code
            }
        );
        assert_eq!(rt.compiled_size("sha256:hello"), 0);
        assert!(writing.exists() && foreign.exists());
        Ok(())
    }

    #[test]
    fn atomic_write_replaces_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.cwasm");
        write_atomic(&path, b"one", &|| false)?;
        write_atomic(&path, b"two", &|| false)?;
        assert_eq!(fs::read(&path)?, b"two");
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        // An abandoned write leaves the old file and no temporary one.
        let err = write_atomic(&path, b"three", &|| true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::Interrupted);
        assert_eq!(fs::read(&path)?, b"two");
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
