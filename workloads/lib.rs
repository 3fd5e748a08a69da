//! Where the sample Wasm workloads are: the single place tests (and tools)
//! find the guest programs that `build.rs` compiled from `guests/`.
//!
//! See `README.md` beside this file for what each workload does.

use std::path::{Path, PathBuf};

/// Directory holding the WASI p2 command components (`<name>.wasm`).
pub const P2_DIR: &str = env!("FLOTILLA_GUESTS_P2_DIR");
/// Directory holding the WASI p1 core modules (`<name>.wasm`).
pub const P1_DIR: &str = env!("FLOTILLA_GUESTS_P1_DIR");
/// Every workload built as a WASI p2 component.
pub const NAMES: [&str; 11] = [
    "hello",
    "ticker",
    "crasher",
    "hog",
    "sockets",
    "version-v1",
    "version-v2",
    "files",
    "hello-http",
    "echo",
    "slow",
];
/// The workloads also built as WASI p1 core modules.
pub const P1_NAMES: [&str; 2] = ["hello", "files"];

/// Path of the WASI p2 component for `name` (one of [`NAMES`]).
///
/// An unknown name gives a path that does not exist, so reading it fails
/// with the path in the error rather than panicking here.
pub fn path(name: &str) -> PathBuf {
    Path::new(P2_DIR).join(format!("{name}.wasm"))
}

/// Path of the WASI p1 core module for `name` (one of [`P1_NAMES`]).
///
/// As with [`path`], an unknown name gives a path that does not exist.
pub fn path_p1(name: &str) -> PathBuf {
    Path::new(P1_DIR).join(format!("{name}.wasm"))
}

/// Path of `hello` built as a WASI p1 core module.
pub fn hello_p1() -> PathBuf {
    path_p1("hello")
}

/// Path of the pod manifest for `name` (`workloads/<name>/pod.yaml`).
pub fn manifest(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(name)
        .join("pod.yaml")
}
