//! The on-disk cache of compiled native code: file naming, the engine
//! fingerprint that keeps stale code out, and atomic writes.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Digests longer than this (after escaping) are hashed to keep file names
/// well under the usual 255-byte limit.
const MAX_ENCODED_DIGEST: usize = 150;

/// A short hex fingerprint of everything in `engine` that affects the
/// compiled code (target, flags, tunables, features, wasmtime version).
///
/// Hashed with SHA-256 rather than `DefaultHasher`, whose algorithm may change
/// between Rust releases and would silently empty the cache on every upgrade.
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

/// Writes `bytes` to `path` so that readers see either the old file, no file
/// or the whole new one: write a temporary file beside it, sync, rename.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("cache path has no parent directory"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("cache path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        // Owner-only like the directory: this is code the node will run.
        let mut file = fs::File::options()
            .write(true)
            .create_new(true)
            .mode(flotilla_api::perms::FILE_MODE)
            .open(&tmp)?;
        file.write_all(bytes)?;
        // Edge devices lose power: without the sync a rename could expose a
        // truncated file after a crash.
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: a stray temp file only wastes space.
        let _ = fs::remove_file(&tmp);
    }
    result
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
    fn atomic_write_replaces_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("a.cwasm");
        write_atomic(&path, b"one")?;
        write_atomic(&path, b"two")?;
        assert_eq!(fs::read(&path)?, b"two");
        assert_eq!(fs::read_dir(dir.path())?.count(), 1);
        Ok(())
    }
}
