//! Builds the sample guests in `guests/` for WASI p2 (all of them) and p1
//! (`hello` and `files`) with a nested cargo, and tells `lib.rs` where the
//! modules are.
//!
//! The nested build uses its own target dir (`<target>/guests`): building into
//! the outer target dir would wait forever on the lock the outer cargo holds.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every guest package; each becomes `<name>.wasm` for wasm32-wasip2.
/// The wasi:http ones are libraries (`cdylib`), which cargo names with
/// underscores; they are copied to `<name>.wasm` beside the others.
const GUESTS: [&str; 11] = [
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
/// Guests that are also built as WASI p1 core modules (`files` because p1
/// and p2 reach preopened directories through different host code).
const P1_GUESTS: [&str; 2] = ["hello", "files"];

fn main() {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR"));
    let guests_dir = manifest_dir.join("guests");
    let target_dir = main_target_dir(&manifest_dir).join("guests");

    println!(
        "cargo:rerun-if-changed={}",
        guests_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        guests_dir.join("Cargo.lock").display()
    );
    for name in GUESTS {
        let pkg = guests_dir.join(name);
        println!(
            "cargo:rerun-if-changed={}",
            pkg.join("Cargo.toml").display()
        );
        // A directory is scanned recursively by cargo.
        println!("cargo:rerun-if-changed={}", pkg.join("src").display());
    }
    // Shared by the two releases of the `version` sample.
    println!(
        "cargo:rerun-if-changed={}",
        guests_dir.join("version.rs").display()
    );
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    cargo_build(&guests_dir, &target_dir, "wasm32-wasip2", &GUESTS);
    cargo_build(&guests_dir, &target_dir, "wasm32-wasip1", &P1_GUESTS);

    let p2_dir = target_dir.join("wasm32-wasip2").join("release");
    let p1_dir = target_dir.join("wasm32-wasip1").join("release");
    for name in GUESTS {
        let library = p2_dir.join(format!("{}.wasm", name.replace('-', "_")));
        if name.contains('-') && library.is_file() {
            let wasm = p2_dir.join(format!("{name}.wasm"));
            std::fs::copy(&library, &wasm).unwrap_or_else(|e| {
                panic!(
                    "cannot copy {} to {}: {e}",
                    library.display(),
                    wasm.display()
                )
            });
        }
    }
    for (dir, names) in [(&p2_dir, &GUESTS[..]), (&p1_dir, &P1_GUESTS[..])] {
        for name in names {
            let wasm = dir.join(format!("{name}.wasm"));
            assert!(
                wasm.is_file(),
                "nested cargo build succeeded but {} is missing",
                wasm.display()
            );
        }
    }
    println!(
        "cargo:rustc-env=FLOTILLA_GUESTS_P2_DIR={}",
        p2_dir.display()
    );
    println!(
        "cargo:rustc-env=FLOTILLA_GUESTS_P1_DIR={}",
        p1_dir.display()
    );
}

fn env_var(key: &str) -> OsString {
    env::var_os(key).unwrap_or_else(|| panic!("cargo did not set {key}"))
}

/// The outer build's target dir: `CARGO_TARGET_DIR` if set, else the
/// ancestor of `OUT_DIR` named `target`, else the dir four levels above
/// `OUT_DIR` (`<target>[/<triple>]/<profile>/build/<pkg>-<hash>/out`).
fn main_target_dir(manifest_dir: &Path) -> PathBuf {
    if let Some(dir) = env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        // Cargo resolves a relative value against its working directory,
        // which a build script cannot see; the workspace root is the usual one.
        return if dir.is_absolute() {
            dir
        } else {
            manifest_dir.parent().unwrap_or(manifest_dir).join(dir)
        };
    }
    let out_dir = PathBuf::from(env_var("OUT_DIR"));
    if let Some(target) = out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "target"))
    {
        return target.to_path_buf();
    }
    out_dir.ancestors().nth(4).unwrap_or(&out_dir).to_path_buf()
}

/// Is this variable one that the outer cargo set for us (or for rustc) and
/// that would change how the nested cargo builds?
fn leaks_from_outer_cargo(key: &str) -> bool {
    (key.starts_with("CARGO_") && key != "CARGO_HOME")
        || key.starts_with("__CARGO")
        || matches!(
            key,
            "CARGO"
                | "RUSTFLAGS"
                | "RUSTDOCFLAGS"
                | "RUSTC"
                | "RUSTDOC"
                | "RUSTC_WRAPPER"
                | "RUSTC_WORKSPACE_WRAPPER"
                | "RUSTC_LINKER"
                | "TARGET"
                | "HOST"
                | "OUT_DIR"
                | "OPT_LEVEL"
                | "PROFILE"
                | "DEBUG"
                | "NUM_JOBS"
        )
}

fn cargo_build(guests_dir: &Path, target_dir: &Path, target: &str, packages: &[&str]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(guests_dir)
        .args(["build", "--release", "--target", target, "--target-dir"])
        .arg(target_dir);
    for pkg in packages {
        cmd.args(["-p", pkg]);
    }
    for (key, _) in env::vars_os() {
        if key.to_str().is_none_or(leaks_from_outer_cargo) {
            cmd.env_remove(&key);
        }
    }
    let output = cmd.output().unwrap_or_else(|e| {
        panic!(
            "could not run {} to build the sample guests: {e}",
            Path::new(&cargo).display()
        )
    });
    if !output.status.success() {
        panic!(
            "building the sample guests for {target} failed ({}).\n\
             If the target is missing, run `rustup target add wasm32-wasip2 wasm32-wasip1`.\n\
             --- cargo output ---\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
}
